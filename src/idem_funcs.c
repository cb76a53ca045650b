/*-------------------------------------------------------------------------
 *
 * idem_funcs.c
 *	  The SQL-callable functions of the idempotency extension.
 *
 * idem_reserve decides, for one (scope, key), between four outcomes: a
 * fresh reservation, a replay of the committed response, a takeover of a
 * reservation whose owner is gone, and a wait for the live owner.  The
 * record is authoritative; the key's lock only orders writers and carries
 * waiters.  Every write to a record happens while holding its lock, and
 * the lock is released only once the write is visible (idem_lock.c), so a
 * session that holds the lock and reads the latest snapshot sees the truth.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_reserve);
PG_FUNCTION_INFO_V1(idem_commit);
PG_FUNCTION_INFO_V1(idem_release);
PG_FUNCTION_INFO_V1(idem_extend);
PG_FUNCTION_INFO_V1(idem_shard_reserve);
PG_FUNCTION_INFO_V1(idem_shard_commit);
PG_FUNCTION_INFO_V1(idem_shard_release);
PG_FUNCTION_INFO_V1(idem_shard_get);
PG_FUNCTION_INFO_V1(idem_shard_extend);
PG_FUNCTION_INFO_V1(idem_get);
PG_FUNCTION_INFO_V1(idem_purge);
PG_FUNCTION_INFO_V1(idem_derive_key);
PG_FUNCTION_INFO_V1(idem_request_hash);
PG_FUNCTION_INFO_V1(idem_set_logged);

/* How a record stands, for a session that is not necessarily its owner */
typedef enum RecordState
{
	REC_ABSENT,					/* no record, or an expired one */
	REC_COMMITTED,				/* a response to replay */
	REC_MINE,					/* in flight, owned by the caller */
	REC_OTHER,					/* in flight, another live owner's */
	REC_ORPHAN,					/* in flight, its owner gone (abandoned) */
	REC_OTHER_TOKEN				/* in flight, owned by this session, but
								 * reserved with another owner token */
} RecordState;

static bool
hashes_differ(const char *stored, const char *given)
{
	return stored != NULL && given != NULL && strcmp(stored, given) != 0;
}

static void
check_hash(const IdemKey *k, const IdemRecord *rec, const char *given)
{
	if (hashes_differ(rec->request_hash, given))
	{
		idem_count(IDEM_C_MISMATCHES, 1);
		user_error(
				(errcode(ERRCODE_IDEM_HASH_MISMATCH),
				 errmsg("idempotency key was used with a different request"),
				 KEY_DETAIL(k, " was reserved with request hash \"%s\", not \"%s\".",
							rec->request_hash, given),
				 errhint("Use a new idempotency key for a different request.")));
	}
}

static bool
tokens_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == NULL && b == NULL;
	return strcmp(a, b) == 0;
}

/*
 * Classifies a record for a caller holding token (NULL: none).  A lock
 * holder passes check_owner = true to learn whether another session's
 * in-flight record has a live owner; without it, such a record is
 * REC_OTHER.  A lease owner is alive while its lease runs, on this
 * server's clock, whichever sessions come and go.
 */
static RecordState
classify(const IdemRecord *rec, TimestampTz now, bool check_owner,
		 const char *token)
{
	if (!rec->found)
		return REC_ABSENT;
	if (rec->committed)
		return rec->expires_at <= now ? REC_ABSENT : REC_COMMITTED;
	if (rec->has_lease)
	{
		bool		live = idem_lease_alive(rec->lease_expires_at);

		/* a lease that ran out: ttl applies as to a gone owner's record */
		if (!live && rec->expires_at <= now)
			return REC_ABSENT;
		if (token != NULL && rec->owner_token != NULL &&
			strcmp(token, rec->owner_token) == 0)
			return REC_MINE;
		return live ? REC_OTHER : REC_ORPHAN;
	}
	if (rec->has_owner && idem_owner_is_me(rec->owner_pid, rec->owner_started))
		return tokens_equal(rec->owner_token, token) ? REC_MINE :
			REC_OTHER_TOKEN;
	/*
	 * Another session's reservation.  Without check_owner its owner is
	 * assumed alive, unless the record has expired: then whether it counts
	 * as absent depends on the owner, so look.  A standby cannot see the
	 * primary's sessions: there the owner is assumed alive.
	 */
	if (rec->has_owner &&
		(RecoveryInProgress() ||
		 (!check_owner && rec->expires_at > now) ||
		 idem_owner_alive(rec->owner_pid, rec->owner_started, true)))
		return REC_OTHER;
	/* owner gone: an expired reservation counts as absent */
	return rec->expires_at <= now ? REC_ABSENT : REC_ORPHAN;
}

/*
 * Is token a lease owner that a takeover of the record replaced?  Its
 * commit, release and extend then fail with IK409, also once the new owner
 * has committed.
 */
static bool
fenced(const IdemRecord *rec, const char *token)
{
	if (token == NULL)
		return false;
	for (int i = 0; i < rec->nfenced; i++)
	{
		if (strcmp(token, rec->fenced_tokens[i]) == 0)
			return true;
	}
	return false;
}

static void
prevent_in_recovery(const IdemKey *k, const char *what)
{
	if (RecoveryInProgress())
		user_error(
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s an idempotency key during recovery", what),
				 KEY_DETAIL(k, "."),
				 errhint("Send the request to the primary server.")));
}

/*
 * This session reserved k with another owner token: another client shares
 * the session, as a transaction-mode pooler hands one server session to
 * many clients.
 */
static void
report_other_token(const IdemKey *k)
{
	user_error(
			(errcode(ERRCODE_IDEM_IN_FLIGHT),
			 errmsg("idempotency key is reserved in this session under another owner token"),
			 KEY_DETAIL(k, " was reserved by a session owner with another token."),
			 errhint("Several clients share this server session, as behind a transaction-mode connection pooler: use lease owners there (the lease argument of idem_reserve, or the setting idem.lease).")));
}

/*
 * The caller is not the owner of k's in-flight record (IK409).  For a
 * lease-owned record that is also what a fenced owner gets: its lease ran
 * out and another request took the key over.
 */
static void
report_not_owner(const IdemKey *k, const IdemRecord *rec)
{
	if (rec->has_lease)
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("idempotency key is owned by another owner"),
				 KEY_DETAIL(k, " is in flight, attempt %d, under another owner's lease until %s.",
							rec->attempt,
							timestamptz_to_str(rec->lease_expires_at)),
				 errhint("If this owner's lease ran out, another request has taken the key over: this owner's work must not be committed.")));
	user_error(
			(errcode(ERRCODE_IDEM_IN_FLIGHT),
			 errmsg("idempotency key is owned by another session"),
			 rec->has_owner ?
			 KEY_DETAIL(k, " is in flight in the session with PID %d.",
						rec->owner_pid) :
			 KEY_DETAIL(k, " is being taken over by another session.")));
}

/* The caller's reservation was taken over and committed by another owner */
static void
report_fenced(const IdemKey *k, const IdemRecord *rec)
{
	user_error(
			(errcode(ERRCODE_IDEM_IN_FLIGHT),
			 errmsg("idempotency key was committed by another owner"),
			 KEY_DETAIL(k, " was committed by another owner token, attempt %d.",
						rec->attempt),
			 errhint("If this owner's lease ran out, another request took the key over and committed it: this owner's work must not be committed.")));
}

/*
 * A fenced token (a lease owner taken over) changes nothing, whatever has
 * become of the record since: IK409.
 */
static void
refuse_fenced(const IdemKey *k, const IdemRecord *rec, RecordState st,
			  const char *token)
{
	if (!fenced(rec, token))
		return;
	if (st == REC_COMMITTED)
		report_fenced(k, rec);
	report_not_owner(k, rec);
}

/*
 * The row type of idem_reservation, looked up once per call site.  A
 * reserve looks it up before it waits: the function may be dropped and
 * made anew meanwhile (ALTER EXTENSION UPDATE), and its old pg_proc row is
 * then gone.
 *
 * The executor makes a function's FmgrInfo anew each time it starts a query
 * that calls it in FROM, so fn_extra keeps the row type only for the rows
 * of one execution.  The copy of the last row type seen is therefore kept
 * for the backend as well, with the type cache's identifier of that version
 * of the type: a call finds it again with one type cache look-up instead of
 * a catalog look-up and a copy.  (A copy that the type outgrew is not
 * freed: a call that waits may still use it.)
 */
static TupleDesc last_tupdesc = NULL;
static uint64 last_tupdesc_id = 0;

TupleDesc
idem_reservation_tupdesc(FunctionCallInfo fcinfo)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	Oid			typid;
	TypeCacheEntry *type = NULL;
	MemoryContext oldcxt;

	if (tupdesc != NULL)
		return tupdesc;
	typid = get_fn_expr_rettype(fcinfo->flinfo);
	if (OidIsValid(typid) && typid != RECORDOID)
	{
		type = lookup_type_cache(typid, TYPECACHE_TUPDESC);
		if (type->tupDesc != NULL && last_tupdesc != NULL &&
			last_tupdesc->tdtypeid == typid &&
			type->tupDesc_identifier == last_tupdesc_id)
		{
			fcinfo->flinfo->fn_extra = last_tupdesc;
			return last_tupdesc;
		}
	}
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != 8 && tupdesc->natts != 10)
		elog(ERROR, "idem_reservation has %d columns, expected 8 or 10",
			 tupdesc->natts);
	if (type != NULL && type->tupDesc != NULL && tupdesc->tdtypeid == typid)
	{
		/* the type cache's version of the type, for the calls to come */
		oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		last_tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(oldcxt);
		last_tupdesc_id = type->tupDesc_identifier;
		fcinfo->flinfo->fn_extra = last_tupdesc;
		return last_tupdesc;
	}
	oldcxt = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
	MemoryContextSwitchTo(oldcxt);
	fcinfo->flinfo->fn_extra = tupdesc;
	return tupdesc;
}

/*
 * Builds an idem_reservation row: 8 columns before version 1.2, 10 since.
 * The owner token is given only to the owner.
 */
static Datum
make_reservation(FunctionCallInfo fcinfo, bool fresh, const IdemRecord *rec)
{
	TupleDesc	tupdesc = idem_reservation_tupdesc(fcinfo);
	TypeCacheEntry *type;
	Datum		values[10];
	bool		nulls[10];
	bool		done = rec->committed;

	/*
	 * The row type changed since the call began (ALTER EXTENSION UPDATE
	 * added columns while it waited): answer in the shape the caller's
	 * query expects, as an anonymous row type.
	 */
	type = lookup_type_cache(tupdesc->tdtypeid, TYPECACHE_TUPDESC);
	if (type->tupDesc == NULL || type->tupDesc->natts != tupdesc->natts)
	{
		tupdesc = CreateTupleDescCopy(tupdesc);
		tupdesc->tdtypeid = RECORDOID;
		tupdesc->tdtypmod = -1;
		tupdesc = BlessTupleDesc(tupdesc);
	}

	memset(nulls, 0, sizeof(nulls));
	values[0] = BoolGetDatum(fresh);
	values[1] = CStringGetTextDatum(done ? "committed" : "in_flight");
	values[2] = Int32GetDatum(rec->status);
	nulls[2] = !done || rec->status_null;
	values[3] = JsonbPGetDatum(rec->headers);
	nulls[3] = !done || rec->headers == NULL;
	values[4] = PointerGetDatum(rec->body);
	nulls[4] = !done || rec->body == NULL;
	values[5] = Int32GetDatum(rec->attempt);
	values[6] = TimestampTzGetDatum(rec->created_at);
	values[7] = TimestampTzGetDatum(rec->expires_at);
	nulls[8] = !fresh || rec->owner_token == NULL;
	values[8] = nulls[8] ? (Datum) 0 : CStringGetTextDatum(rec->owner_token);
	nulls[9] = done || !rec->has_lease;
	values[9] = TimestampTzGetDatum(rec->lease_expires_at);

	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

static void
report_in_flight(const IdemKey *k, const IdemRecord *rec, int waited_ms)
{
	idem_count(IDEM_C_WAIT_TIMEOUTS, 1);
	if (waited_ms > 0)
	{
		idem_count(IDEM_C_WAITS, 1);
		idem_count(IDEM_C_WAIT_US, (uint64) waited_ms * 1000);
	}
	if (waited_ms > 0 && rec->has_lease)
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("timed out waiting for in-flight idempotency key"),
				 KEY_DETAIL(k, " is still in flight after %d ms, under a lease until %s.",
							waited_ms,
							timestamptz_to_str(rec->lease_expires_at)),
				 errhint("Retry later, or raise wait_timeout.")));
	if (waited_ms > 0)
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("timed out waiting for in-flight idempotency key"),
				 rec->has_owner ?
				 KEY_DETAIL(k, " is still in flight in the session with PID %d after %d ms.",
							rec->owner_pid, waited_ms) :
				 KEY_DETAIL(k, " is still in flight after %d ms.", waited_ms),
				 errhint("Retry later, or raise wait_timeout.")));
	if (rec->has_lease)
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("idempotency key is in flight"),
				 KEY_DETAIL(k, " is in flight under a lease until %s.",
							timestamptz_to_str(rec->lease_expires_at)),
				 errhint("Retry later, or wait with a wait_timeout above zero.")));
	user_error(
			(errcode(ERRCODE_IDEM_IN_FLIGHT),
			 errmsg("idempotency key is in flight"),
			 rec->has_owner ?
			 KEY_DETAIL(k, " is in flight in the session with PID %d.",
						rec->owner_pid) :
			 KEY_DETAIL(k, " is being reserved by another session."),
			 errhint("Retry later, or wait with a wait_timeout above zero.")));
}

/* Milliseconds left until deadline (at least 1), or 0 when it has passed */
static int
ms_left(TimestampTz deadline)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		us;

	if (now >= deadline)
		return 0;
	us = deadline - now;
	if (us / 1000 >= INT_MAX)
		return INT_MAX;
	return Max(1, (int) ((us + 999) / 1000));
}

/* Microseconds since a moment */
static int64
elapsed_us(TimestampTz since)
{
	return Max(GetCurrentTimestamp() - since, 0);
}

/* Milliseconds since a moment, for messages */
static int
waited_ms(TimestampTz since)
{
	return (int) Min(elapsed_us(since) / 1000, INT_MAX);
}

/*
 * A new reservation made in a transaction of its own may skip the wait for
 * its WAL flush when idem.async_reserve is on: after a server crash such a
 * reservation may be lost, and the key comes back absent (attempt 1)
 * instead of taken over (attempt 2); either way the handler runs again,
 * and committed responses are as durable as ever.
 */
static void
maybe_commit_async(void)
{
	if (idem_async_reserve && !IsTransactionBlock())
		(void) set_config_option("synchronous_commit", "off",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Makes the reservation whose key's lock this session has just taken: a new
 * record, a new start over an expired one, or a takeover (attempt + 1) of
 * one whose owner is gone.  Fills rec with the result.  Returns false when
 * the record changed meanwhile (created, or deleted by a purge), for the
 * caller to read it again.
 */
static bool
make_fresh(const IdemKey *k, const char *hash, const Interval *ttl,
		   TimestampTz now, RecordState st, IdemOwner *owner,
		   IdemRecord *rec)
{
	if (owner->lease && owner->token == NULL)
		owner->token = idem_new_token();

	if (!rec->found)
	{
		if (!idem_storage_insert(k, hash, ttl, now, owner, rec))
			return false;
	}
	else
	{
		int32		attempt = (st == REC_ORPHAN) ? rec->attempt + 1 : 1;

		/* a takeover keeps the first request's hash unless given one */
		const char *newhash = hash;

		if (st == REC_ORPHAN && newhash == NULL)
			newhash = rec->request_hash;
		if (!idem_storage_renew(k, newhash, attempt, ttl, now, owner, rec))
			return false;
	}
	maybe_commit_async();
	return true;
}

/*
 * Counts a reserve that returned: what it returned (a counter, or -1 for a
 * re-entrant reserve), and whether and how long it waited.
 */
static void
count_reserve(int outcome, TimestampTz first_wait)
{
	idem_count(IDEM_C_RESERVES, 1);
	if (outcome >= 0)
		idem_count((IdemCounter) outcome, 1);
	if (first_wait != 0)
	{
		idem_count(IDEM_C_WAITS, 1);
		idem_count(IDEM_C_WAIT_US, (uint64) elapsed_us(first_wait));
	}
}

/*
 * The lock of a lease owner's key is held only for the write at hand: it
 * goes when the transaction ends, commit or abort.  This one takes it
 * (unless the transaction holds it already), waiting at most wait_ms.
 * Returns false when it is not free in time.
 */
static bool
lock_for_transaction(const IdemKey *k, const LOCKTAG *tag, int wait_ms)
{
	if (LockHeldByMe(tag, ExclusiveLock))
		return true;
	if (!idem_lock_try(tag, ExclusiveLock) &&
		(wait_ms <= 0 || !idem_lock_wait(tag, ExclusiveLock, wait_ms)))
		return false;
	idem_own_acquired(k, tag, true);
	idem_own_for_transaction(k);
	return true;
}

/*
 * How long idem_commit, idem_release and idem_extend wait for the lock of
 * a lease owner's key, which other calls hold only for a moment (or for
 * the rest of a transaction that wrote the key): idem.wait_timeout, at
 * least one second.
 */
static int
write_lock_wait_ms(void)
{
	return Max(idem_wait_timeout, 1000);
}

/* Bounds of a reserve's loop */
#define RESERVE_MAX_RETRIES		3	/* reads again of a record that changed
									 * under our lock */
#define RESERVE_MAX_PASSING		1000	/* wait 0: tries again when only
										 * waiters passing through held the
										 * lock */
#define RESERVE_MAX_BACKOFF_MS	50	/* longest sleep for a live owner whose
									 * lock is gone */

/* Whether a reserve holds the key's lock */
typedef enum KeyLock
{
	KEY_UNLOCKED,
	KEY_HELD,					/* held when the call began: this transaction
								 * committed or released the key, or wrote a
								 * lease owner's record of it */
	KEY_TAKEN					/* taken in this call */
} KeyLock;

/* What a reserve does after a look at the record */
typedef enum ReserveStep
{
	STEP_LOOK_AGAIN,			/* read the record again */
	STEP_REPLAY,				/* answer the committed response */
	STEP_REENTERED,				/* answer the caller's own reservation */
	STEP_FRESH,					/* answer a new reservation */
	STEP_TAKEN_OVER				/* answer a reservation taken over */
} ReserveStep;

/* One call of idem_reserve, from its arguments to its answer */
typedef struct ReserveCall
{
	FunctionCallInfo fcinfo;
	IdemKey		k;
	char	   *hash;
	Interval	ttl;
	int64		wait_us;
	IdemOwner	owner;
	TimestampTz now;			/* the transaction's start */
	TimestampTz began;			/* when the call began: wait_timeout runs
								 * from here */
	TimestampTz deadline;		/* ... until here */
	TimestampTz first_wait;		/* when it first waited, or 0 */
	bool		prepared;		/* tag, lock and waiter set up */
	LOCKTAG		tag;
	KeyLock		lock;
	IdemWaiter	waiter;
	IdemRecord	rec;
	int			retries;		/* reads again under our lock */
	int			passing;		/* see RESERVE_MAX_PASSING */
	int			backoff_ms;		/* next sleep for an owner with no lock */
} ReserveCall;

/* The call waits from now on, if it did not before */
static void
start_waiting(ReserveCall *rc)
{
	if (rc->first_wait == 0)
		rc->first_wait = GetCurrentTimestamp();
}

/* The call's wait_timeout is over: IK409, with how long it waited */
static void
wait_is_over(ReserveCall *rc)
{
	report_in_flight(&rc->k, &rc->rec,
					 rc->wait_us > 0 ? waited_ms(rc->began) : 0);
}

/*
 * Milliseconds left of the call's wait_timeout (at least 1); when none is
 * left, the wait is over.
 */
static int
wait_left(ReserveCall *rc)
{
	int			left = ms_left(rc->deadline);

	if (left == 0)
		wait_is_over(rc);
	return left;
}

/* A record that changed under our lock: read it again, a few times */
static ReserveStep
look_again_under_lock(ReserveCall *rc, bool lease)
{
	if (++rc->retries > RESERVE_MAX_RETRIES)
	{
		if (lease)
			elog(ERROR, "lease of key \"%s\" in scope \"%s\" changed under its lock",
				 rc->k.key, rc->k.scope);
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access to idempotency key"),
				 KEY_DETAIL(&rc->k, "."),
				 errhint("The transaction might succeed if retried.")));
	}
	return STEP_LOOK_AGAIN;
}

/*
 * A session owner reserving again: re-entrant; take the lock back if
 * something dropped it.
 */
static ReserveStep
reenter_session(ReserveCall *rc)
{
	if (rc->lock == KEY_UNLOCKED)
		(void) LockAcquire(&rc->tag, ExclusiveLock, true, false);
	idem_own_acquired(&rc->k, &rc->tag, false);
	return STEP_REENTERED;
}

/*
 * A lease owner reserving again, under the key's lock: re-entrant, with its
 * lease renewed (for as long as it was taken, unless given a lease).
 */
static ReserveStep
reenter_lease(ReserveCall *rc)
{
	IdemOwner	renewed = rc->owner;

	renewed.lease = true;
	if (!rc->owner.lease)
		renewed.lease_len = rc->rec.lease;
	if (!idem_storage_extend(&rc->k, &renewed, rc->now))
	{
		/* cannot change under our lock, but read it again to be sure */
		return look_again_under_lock(rc, true);
	}
	if (rc->lock == KEY_TAKEN)
		idem_own_for_transaction(&rc->k);
	rc->rec.lease = renewed.lease_len;
	rc->rec.lease_expires_at = renewed.lease_expires_at;
	return STEP_REENTERED;
}

/*
 * Under the key's lock, a record that is absent or whose owner is gone:
 * make the reservation.
 */
static ReserveStep
reserve_fresh(ReserveCall *rc, RecordState st)
{
	if (!make_fresh(&rc->k, rc->hash, &rc->ttl, rc->now, st, &rc->owner,
					&rc->rec))
	{
		/* the record changed under us (a purge): read it again */
		return look_again_under_lock(rc, false);
	}
	if (rc->owner.lease)
		idem_own_for_transaction(&rc->k);
	else
		idem_own_acquired(&rc->k, &rc->tag, false);
	return st == REC_ORPHAN ? STEP_TAKEN_OVER : STEP_FRESH;
}

/*
 * A live lease owner holds no lock to queue on: sleep until its commit or
 * release wakes us, its lease runs out, or our wait does.  When this
 * transaction holds the lock, it wrote the record itself, under another
 * token: nobody else can change it before we are done.
 */
static ReserveStep
wait_for_lease(ReserveCall *rc)
{
	int			left;

	if (rc->lock == KEY_HELD)
		report_in_flight(&rc->k, &rc->rec, 0);
	if (rc->lock == KEY_TAKEN)
	{
		idem_own_forget(&rc->k);
		rc->lock = KEY_UNLOCKED;
	}
	left = wait_left(rc);
	if (idem_waiter_prepare(&rc->waiter))
		return STEP_LOOK_AGAIN; /* on the wait list now: look once more */
	start_waiting(rc);
	idem_waiter_sleep(&rc->waiter,
					  Min(left, Max(1, ms_left(rc->rec.lease_expires_at))));
	return STEP_LOOK_AGAIN;
}

/*
 * In flight with a live owner whose lock is gone: a stray
 * pg_advisory_unlock_all() in the owner's session, or a DISCARD ALL whose
 * abandoning is not committed yet.  There is no lock to wait on; look
 * again shortly.
 */
static ReserveStep
wait_for_lockless_owner(ReserveCall *rc)
{
	int			left;

	idem_own_forget(&rc->k);
	rc->lock = KEY_UNLOCKED;
	left = wait_left(rc);
	start_waiting(rc);
	pg_usleep(Min(rc->backoff_ms, left) * 1000L);
	rc->backoff_ms = Min(rc->backoff_ms * 2, RESERVE_MAX_BACKOFF_MS);
	return STEP_LOOK_AGAIN;
}

/*
 * Not holding the key's lock: take it if it is free, else wait for it.
 */
static ReserveStep
lock_or_wait(ReserveCall *rc, RecordState st)
{
	int			left;

	if (idem_lock_try(&rc->tag, ExclusiveLock))
	{
		idem_own_acquired(&rc->k, &rc->tag, true);
		rc->lock = KEY_TAKEN;

		/*
		 * The common case, a new key: insert at once, without reading
		 * again.  If a record appeared between our read and the lock, the
		 * insert does nothing and we read it under the lock.
		 */
		if (st == REC_ABSENT && !rc->rec.found &&
			make_fresh(&rc->k, rc->hash, &rc->ttl, rc->now, st, &rc->owner,
					   &rc->rec))
		{
			if (rc->owner.lease)
				idem_own_for_transaction(&rc->k);
			return STEP_FRESH;
		}
		return STEP_LOOK_AGAIN;
	}

	left = ms_left(rc->deadline);
	if (left == 0)
	{
		/*
		 * Only other waiters passing through hold it in share mode?  Then
		 * nobody owns the key; try again at once, a bounded number of times.
		 */
		if (rc->wait_us == 0 && ++rc->passing <= RESERVE_MAX_PASSING &&
			idem_lock_try(&rc->tag, ShareLock))
		{
			idem_lock_release(&rc->tag, ShareLock);
			return STEP_LOOK_AGAIN;
		}
		wait_is_over(rc);
	}

	/*
	 * Wait for the owner.  Waiters for a known owner queue in share mode, so
	 * that a commit wakes them all at once; when the record looked absent or
	 * orphaned (or is a lease owner's own, to be renewed), whoever is ahead
	 * is about to write it, and we queue for the exclusive lock behind them.
	 */
	start_waiting(rc);
	if (st == REC_OTHER)
	{
		if (idem_lock_wait(&rc->tag, ShareLock, left))
			idem_lock_release(&rc->tag, ShareLock);
	}
	else if (idem_lock_wait(&rc->tag, ExclusiveLock, left))
	{
		idem_own_acquired(&rc->k, &rc->tag, true);
		rc->lock = KEY_TAKEN;
	}
	return STEP_LOOK_AGAIN;
}

/*
 * The key's lock tag and waiter, and whether this transaction holds the
 * lock already: it committed or released the key, or wrote a lease owner's
 * record of it, and the lock goes when the transaction does.
 */
static void
prepare_to_lock(ReserveCall *rc)
{
	idem_key_locktag(&rc->k, &rc->tag);
	idem_waiter_init(&rc->waiter, &rc->k);
	if (LockHeldByMe(&rc->tag, ExclusiveLock))
		rc->lock = KEY_HELD;
	rc->prepared = true;
}

/*
 * One look at the record, and what follows from it.
 */
static ReserveStep
reserve_look(ReserveCall *rc)
{
	bool		locked;
	RecordState st;

	CHECK_FOR_INTERRUPTS();

	idem_storage_read(&rc->k, &rc->rec);
	if (!rc->prepared)
	{
		/*
		 * The first look.  A replay, the common call, is answered before
		 * the key's lock and waiting are set up: a committed record is
		 * committed whatever we hold.
		 */
		if (rc->rec.found && rc->rec.committed &&
			classify(&rc->rec, rc->now, false, rc->owner.token) == REC_COMMITTED)
		{
			check_hash(&rc->k, &rc->rec, rc->hash);
			return STEP_REPLAY;
		}
		prepare_to_lock(rc);
	}
	locked = (rc->lock != KEY_UNLOCKED);
	st = classify(&rc->rec, rc->now, locked, rc->owner.token);
	if (st != REC_ABSENT)
		check_hash(&rc->k, &rc->rec, rc->hash);
	if (st == REC_COMMITTED)
		return STEP_REPLAY;

	/* on a standby only a committed response can be answered */
	prevent_in_recovery(&rc->k, "reserve");
	if (st == REC_OTHER_TOKEN)
		report_other_token(&rc->k);

	if (st == REC_MINE && !rc->rec.has_lease)
		return reenter_session(rc);
	if (st == REC_MINE && locked)
		return reenter_lease(rc);
	if (locked && (st == REC_ABSENT || st == REC_ORPHAN))
		return reserve_fresh(rc, st);
	if (st == REC_OTHER && rc->rec.has_lease)
		return wait_for_lease(rc);
	if (rc->lock == KEY_HELD)
		elog(ERROR, "key \"%s\" in scope \"%s\" is locked by this session but owned by another",
			 rc->k.key, rc->k.scope);
	if (locked)
		return wait_for_lockless_owner(rc);
	return lock_or_wait(rc, st);
}

/*
 * The answer of a reserve, counted.
 */
static Datum
reserve_answer(ReserveCall *rc, ReserveStep step)
{
	int			outcome = -1;	/* re-entrant: counted as a reserve only */

	if (step == STEP_REPLAY && rc->lock == KEY_TAKEN)
		idem_own_forget(&rc->k);
	idem_waiter_done(&rc->waiter);
	if (step == STEP_REPLAY)
		outcome = IDEM_C_REPLAYS;
	else if (step == STEP_FRESH)
		outcome = IDEM_C_FRESH;
	else if (step == STEP_TAKEN_OVER)
		outcome = IDEM_C_TAKEOVERS;
	count_reserve(outcome, rc->first_wait);
	return make_reservation(rc->fcinfo, step != STEP_REPLAY, &rc->rec);
}

/*
 * idem_reserve, and idem_shard_reserve (may_route = false) on the node of
 * the key's shard.
 */
static Datum
reserve(FunctionCallInfo fcinfo, bool may_route)
{
	ReserveCall rc;
	ReserveStep step;

	memset(&rc, 0, sizeof(rc));
	rc.fcinfo = fcinfo;
	rc.now = GetCurrentTransactionStartTimestamp();
	rc.began = GetCurrentTimestamp();
	idem_arg_key(fcinfo, 0, 4, &rc.k);
	rc.hash = idem_arg_hash(fcinfo, 1, &rc.k);
	idem_arg_ttl(fcinfo, 2, &rc.k, rc.now, &rc.ttl);
	rc.wait_us = idem_arg_wait(fcinfo, 3, &rc.k);
	idem_arg_owner(fcinfo, 5, 6, &rc.k, rc.now, &rc.owner);
	if (may_route && idem_storage_is_remote(&rc.k))
		return idem_route_reserve(fcinfo, &rc.k, rc.hash, &rc.ttl, rc.wait_us,
								  &rc.owner);

	rc.deadline = rc.began + Min(rc.wait_us, PG_INT64_MAX - rc.began);
	rc.backoff_ms = 1;
	(void) idem_reservation_tupdesc(fcinfo);

	do
		step = reserve_look(&rc);
	while (step == STEP_LOOK_AGAIN);
	return reserve_answer(&rc, step);
}

/*
 * idem_reserve(key text, request_hash text DEFAULT NULL,
 *				ttl interval DEFAULT NULL, wait_timeout interval DEFAULT NULL,
 *				scope text DEFAULT '', owner text DEFAULT NULL,
 *				lease interval DEFAULT NULL) RETURNS idem_reservation
 */
Datum
idem_reserve(PG_FUNCTION_ARGS)
{
	return reserve(fcinfo, true);
}

/*
 * idem_shard_reserve(key text, request_hash text, ttl interval,
 *					  wait_timeout interval, scope text, owner text,
 *					  lease interval) RETURNS idem_reservation
 *
 * The same, on the node of the key's shard, to which Citus delegates it
 * (see idem_route.c).
 */
Datum
idem_shard_reserve(PG_FUNCTION_ARGS)
{
	return reserve(fcinfo, false);
}

/*
 * Shared by idem_commit and idem_release for a record they may not write
 * without its lock: another session's (whose owner may be gone) or a lease
 * owner's.  Takes the lock for the rest of the transaction, the caller's
 * own lease waiting a moment for it, and reads the record again under it.
 * Returns its state, or raises IK409 when another live owner has it.
 */
static RecordState
lock_record(const IdemKey *k, IdemRecord *rec, TimestampTz now,
			const char *token, RecordState st)
{
	LOCKTAG		tag;

	idem_key_locktag(k, &tag);
	if (!lock_for_transaction(k, &tag,
							  st == REC_MINE ? write_lock_wait_ms() : 0))
		report_not_owner(k, rec);

	idem_storage_read(k, rec);
	st = classify(rec, now, true, token);
	if (st == REC_OTHER || (st == REC_ORPHAN && rec->has_lease))
		report_not_owner(k, rec);
	if (st == REC_OTHER_TOKEN)
		report_other_token(k);
	return st;
}

static void
report_no_reservation(const IdemKey *k)
{
	user_error(
			(errcode(ERRCODE_IDEM_NOT_FOUND),
			 errmsg("idempotency key has no live reservation"),
			 KEY_DETAIL(k, " is absent or expired."),
			 errhint("Call idem_reserve before idem_commit.")));
}

static Datum
commit(FunctionCallInfo fcinfo, bool may_route)
{
	IdemKey		k;
	char	   *hash;
	char	   *token;
	bytea	   *body = NULL;
	Jsonb	   *headers = NULL;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;
	RecordState st;
	bool		was_lease;

	idem_arg_key(fcinfo, 0, 5, &k);
	hash = idem_arg_hash(fcinfo, 1, &k);
	token = idem_arg_token(fcinfo, 6, &k, false);

	if (!PG_ARGISNULL(3))
	{
		body = PG_GETARG_BYTEA_P(3);
		if (VARSIZE_ANY_EXHDR(body) > (Size) idem_max_body_bytes)
			user_error(
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("response body is too large"),
					 KEY_DETAIL(&k, ": the body is %zu bytes; idem.max_body_bytes is %d bytes.",
								VARSIZE_ANY_EXHDR(body),
								idem_max_body_bytes)));
	}
	if (!idem_arg_isnull(fcinfo, 4))
	{
		headers = PG_GETARG_JSONB_P(4);
		if (VARSIZE(headers) - VARHDRSZ > (Size) idem_max_header_bytes)
			user_error(
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("response headers are too large"),
					 KEY_DETAIL(&k, ": the headers take %zu bytes; idem.max_header_bytes is %d bytes.",
								(Size) (VARSIZE(headers) - VARHDRSZ),
								idem_max_header_bytes)));
		if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
			user_error(
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response headers must be a JSON object"),
					 KEY_DETAIL(&k, ".")));
	}
	else
		headers = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													 CStringGetDatum("{}")));
	if (may_route && idem_storage_is_remote(&k))
		return idem_route_commit(fcinfo, &k, hash, PG_ARGISNULL(2),
								 PG_GETARG_INT32(2), body, headers, token);

	/*
	 * The common case, in one probe: our own reservation, whose lock we
	 * hold (a session owner's), or may take at once (a lease owner's).
	 */
	if (!RecoveryInProgress())
	{
		bool		locked = idem_own_holds(&k);

		if (!locked && token != NULL && idem_storage_has_leases())
		{
			LOCKTAG		tag;

			idem_key_locktag(&k, &tag);
			locked = lock_for_transaction(&k, &tag, 0);
		}
		if (locked &&
			idem_storage_commit_mine(&k, hash, token, PG_ARGISNULL(2),
									 PG_GETARG_INT32(2), headers, body, now,
									 &was_lease))
		{
			if (was_lease)
				idem_wake_at_commit(&k);
			idem_own_finished(&k);
			idem_count(IDEM_C_COMMITS, 1);
			PG_RETURN_BOOL(true);
		}
	}

	idem_storage_read(&k, &rec);
	st = classify(&rec, now, false, token);
	if (st == REC_ABSENT)
		report_no_reservation(&k);
	check_hash(&k, &rec, hash);
	refuse_fenced(&k, &rec, st, token);
	if (st == REC_COMMITTED)
		PG_RETURN_BOOL(false);
	prevent_in_recovery(&k, "commit");
	if (st == REC_OTHER_TOKEN)
		report_other_token(&k);
	/* only its token adopts a lease that ran out; others take it over */
	if (st == REC_ORPHAN && rec.has_lease)
		report_not_owner(&k, &rec);

	if (st != REC_MINE || rec.has_lease)
	{
		st = lock_record(&k, &rec, now, token, st);
		if (st == REC_ABSENT)
			report_no_reservation(&k);
		check_hash(&k, &rec, hash);
		refuse_fenced(&k, &rec, st, token);
		if (st == REC_COMMITTED)
			PG_RETURN_BOOL(false);
	}

	if (!idem_storage_commit(&k, hash, token, PG_ARGISNULL(2),
							 PG_GETARG_INT32(2), headers, body, now))
		elog(ERROR, "in-flight record of key \"%s\" in scope \"%s\" vanished",
			 k.key, k.scope);
	if (rec.has_lease)
		idem_wake_at_commit(&k);
	idem_own_finished(&k);
	idem_count(IDEM_C_COMMITS, 1);
	PG_RETURN_BOOL(true);
}

/*
 * idem_commit(key text, request_hash text, status integer, body bytea,
 *			   headers jsonb DEFAULT '{}', scope text DEFAULT '',
 *			   owner text DEFAULT NULL) RETURNS boolean
 */
Datum
idem_commit(PG_FUNCTION_ARGS)
{
	return commit(fcinfo, true);
}

/*
 * idem_shard_commit(key text, request_hash text, status integer, body bytea,
 *					 headers jsonb, scope text, owner text) RETURNS boolean
 */
Datum
idem_shard_commit(PG_FUNCTION_ARGS)
{
	return commit(fcinfo, false);
}

static Datum
release(FunctionCallInfo fcinfo, bool may_route)
{
	IdemKey		k;
	char	   *token;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;
	RecordState st;

	idem_arg_key(fcinfo, 0, 1, &k);
	token = idem_arg_token(fcinfo, 2, &k, false);
	if (may_route && idem_storage_is_remote(&k))
		return idem_route_release(fcinfo, &k, token);

	idem_storage_read(&k, &rec);
	st = classify(&rec, now, false, token);
	if (st != REC_ABSENT)
		refuse_fenced(&k, &rec, st, token);
	if (st == REC_ABSENT || st == REC_COMMITTED)
		PG_RETURN_BOOL(false);
	prevent_in_recovery(&k, "release");
	if (st == REC_OTHER_TOKEN)
		report_other_token(&k);
	if (st == REC_ORPHAN && rec.has_lease)
		report_not_owner(&k, &rec);

	if (st != REC_MINE || rec.has_lease)
	{
		st = lock_record(&k, &rec, now, token, st);
		if (st != REC_ABSENT)
			refuse_fenced(&k, &rec, st, token);
		if (st == REC_ABSENT || st == REC_COMMITTED)
			PG_RETURN_BOOL(false);
	}

	if (!idem_storage_delete(&k))
		PG_RETURN_BOOL(false);
	if (rec.has_lease)
		idem_wake_at_commit(&k);
	idem_own_finished(&k);
	idem_count(IDEM_C_RELEASES, 1);
	PG_RETURN_BOOL(true);
}

/*
 * idem_release(key text, scope text DEFAULT '', owner text DEFAULT NULL)
 *	RETURNS boolean
 */
Datum
idem_release(PG_FUNCTION_ARGS)
{
	return release(fcinfo, true);
}

/*
 * idem_shard_release(key text, scope text, owner text) RETURNS boolean
 */
Datum
idem_shard_release(PG_FUNCTION_ARGS)
{
	return release(fcinfo, false);
}

/*
 * Raises the error of an idem_extend whose record is not a lease owned by
 * token: absent or committed (IK404), fenced or another owner's (IK409),
 * owned by this session rather than a lease (55000).
 */
static void
check_extendable(const IdemKey *k, const IdemRecord *rec, RecordState st,
				 const char *token)
{
	if (st != REC_ABSENT)
		refuse_fenced(k, rec, st, token);
	if (st == REC_ABSENT || st == REC_COMMITTED)
		user_error(
				(errcode(ERRCODE_IDEM_NOT_FOUND),
				 errmsg("idempotency key has no reservation to extend"),
				 KEY_DETAIL(k, " is %s.",
							st == REC_COMMITTED ? "committed" :
							"absent or expired")));
	if (st == REC_OTHER_TOKEN)
		report_other_token(k);
	if (st != REC_MINE)
		report_not_owner(k, rec);
	if (!rec->has_lease)
		user_error(
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency key is not reserved under a lease"),
				 KEY_DETAIL(k, " is owned by this session, not by a lease."),
				 errhint("A session owner keeps its reservation while its session lasts; reserve with a lease to have one to extend.")));
}

/*
 * Renews a lease owner's lease to now() + lease (NULL: as long as it was
 * taken), also after it ran out as long as nobody has taken the key over.
 */
static Datum
extend(FunctionCallInfo fcinfo, bool may_route)
{
	IdemKey		k;
	IdemOwner	renewed;
	bool		lease_given;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	LOCKTAG		tag;
	IdemRecord	rec;

	idem_arg_key(fcinfo, 0, 3, &k);
	memset(&renewed, 0, sizeof(renewed));
	renewed.lease = true;
	renewed.token = idem_arg_token(fcinfo, 1, &k, true);
	lease_given = idem_arg_lease(fcinfo, 2, &k, now, &renewed.lease_len);
	if (may_route && idem_storage_is_remote(&k))
		return idem_route_extend(fcinfo, &k, renewed.token,
								 lease_given ? &renewed.lease_len : NULL);
	idem_require_leases(&k);
	prevent_in_recovery(&k, "extend");

	/*
	 * Only the lease owner waits for the key's lock, which others hold for a
	 * moment: anyone else is answered at once, from a first look, since a
	 * session owner holds the lock for as long as its reservation lasts.
	 * The answer is checked again under the lock.
	 */
	idem_storage_read(&k, &rec);
	check_extendable(&k, &rec, classify(&rec, now, true, renewed.token),
					 renewed.token);
	idem_key_locktag(&k, &tag);
	if (!lock_for_transaction(&k, &tag, write_lock_wait_ms()))
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("idempotency key is being changed by another session"),
				 KEY_DETAIL(&k, "."),
				 errhint("Try again.")));
	idem_storage_read(&k, &rec);
	check_extendable(&k, &rec, classify(&rec, now, true, renewed.token),
					 renewed.token);

	if (!lease_given)
		renewed.lease_len = rec.lease;
	if (!idem_storage_extend(&k, &renewed, now))
		elog(ERROR, "lease of key \"%s\" in scope \"%s\" vanished",
			 k.key, k.scope);
	PG_RETURN_TIMESTAMPTZ(renewed.lease_expires_at);
}

/*
 * idem_extend(key text, owner text, lease interval DEFAULT NULL,
 *			   scope text DEFAULT '') RETURNS timestamptz
 */
Datum
idem_extend(PG_FUNCTION_ARGS)
{
	return extend(fcinfo, true);
}

/*
 * idem_shard_extend(key text, owner text, lease interval, scope text)
 *	RETURNS timestamptz
 */
Datum
idem_shard_extend(PG_FUNCTION_ARGS)
{
	return extend(fcinfo, false);
}

static Datum
get(FunctionCallInfo fcinfo, bool may_route)
{
	IdemKey		k;
	IdemRecord	rec;

	idem_arg_key(fcinfo, 0, 1, &k);
	if (may_route && idem_storage_is_remote(&k))
	{
		bool		isnull;
		Datum		d = idem_route_get(fcinfo, &k, &isnull);

		if (isnull)
			PG_RETURN_NULL();
		return d;
	}
	idem_storage_read(&k, &rec);
	if (classify(&rec, GetCurrentTransactionStartTimestamp(), true, NULL) == REC_ABSENT)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(make_reservation(fcinfo, false, &rec));
}

/*
 * idem_get(key text, scope text DEFAULT '') RETURNS idem_reservation
 */
Datum
idem_get(PG_FUNCTION_ARGS)
{
	return get(fcinfo, true);
}

/*
 * idem_shard_get(key text, scope text) RETURNS idem_reservation
 */
Datum
idem_shard_get(PG_FUNCTION_ARGS)
{
	return get(fcinfo, false);
}

/*
 * idem_purge(batch_limit integer DEFAULT NULL) RETURNS bigint
 */
Datum
idem_purge(PG_FUNCTION_ARGS)
{
	int64		limit = -1;
	int64		n;
	ArrayType  *scopes;

	if (!PG_ARGISNULL(0))
	{
		int32		l = PG_GETARG_INT32(0);

		if (l < 0)
			user_error(
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batch_limit must not be negative"),
					 errdetail("batch_limit was %d.", l)));
		limit = l;
	}
	if (limit == 0)
		PG_RETURN_INT64(0);
	if (RecoveryInProgress())
		user_error(
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot purge idempotency keys during recovery")));

	/* a confined role purges its own scopes only */
	scopes = idem_confined_scopes();
	n = idem_purge_expired(limit, GetCurrentTransactionStartTimestamp(),
						   scopes);

	/* on Citus's coordinator, the workers purge their shards too */
	if (idem_storage_coordinator() && (limit < 0 || n < limit))
	{
		if (scopes != NULL)
			user_error(
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a role confined to scopes cannot purge a distributed key table"),
					 errhint("Purge as an unconfined role, or let the purge worker of each node do it.")));
		n += idem_route_purge_workers(limit < 0 ? -1 : limit - n);
	}
	idem_count(IDEM_C_PURGED, (uint64) n);
	PG_RETURN_INT64(n);
}

/*
 * idem_derive_key(VARIADIC parts text[]) RETURNS text
 */
Datum
idem_derive_key(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	const char **parts;
	size_t	   *lens;

	if (PG_ARGISNULL(0))
		user_error(
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("parts of a derived key must not be null")));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);

	parts = palloc(sizeof(char *) * Max(n, 1));
	lens = palloc(sizeof(size_t) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		text	   *t;

		if (nulls[i])
			user_error(
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("parts of a derived key must not be null"),
					 errdetail("Part %d of %d is null.", i + 1, n)));
		t = DatumGetTextPP(elems[i]);
		parts[i] = VARDATA_ANY(t);
		lens[i] = VARSIZE_ANY_EXHDR(t);
	}
	PG_RETURN_TEXT_P(cstring_to_text(idem_sha256_framed(n, parts, lens)));
}

/*
 * idem_request_hash(method text, path text, body bytea) RETURNS text
 */
Datum
idem_request_hash(PG_FUNCTION_ARGS)
{
	const char *parts[3];
	size_t		lens[3];

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		user_error(
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request %s must not be null",
						PG_ARGISNULL(0) ? "method" : "path")));

	for (int i = 0; i < 3; i++)
	{
		if (PG_ARGISNULL(i))
		{
			parts[i] = "";
			lens[i] = 0;
		}
		else
		{
			struct varlena *v = PG_GETARG_VARLENA_PP(i);

			parts[i] = VARDATA_ANY(v);
			lens[i] = VARSIZE_ANY_EXHDR(v);
		}
	}
	PG_RETURN_TEXT_P(cstring_to_text(idem_sha256_framed(3, parts, lens)));
}

/*
 * idem_set_logged(logged boolean) RETURNS void
 */
Datum
idem_set_logged(PG_FUNCTION_ARGS)
{
	idem_storage_set_logged(PG_GETARG_BOOL(0));
	PG_RETURN_VOID();
}
