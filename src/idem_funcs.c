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

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_reserve);
PG_FUNCTION_INFO_V1(idem_commit);
PG_FUNCTION_INFO_V1(idem_release);
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
	REC_MINE,					/* in flight, owned by this session */
	REC_OTHER,					/* in flight, owned by another session */
	REC_ORPHAN					/* in flight, its owner gone (abandoned) */
} RecordState;

/* an error the caller caused: counted, then raised */
#define user_error(rest) \
	do { \
		idem_count(IDEM_C_ERRORS, 1); \
		ereport(ERROR, rest); \
	} while (0)

#define KEY_DETAIL(k) \
	errdetail("Key \"%s\" in scope \"%s\".", (k)->key, (k)->scope)

/*
 * Validates and extracts the key and scope arguments.
 */
static void
get_key_args(FunctionCallInfo fcinfo, int keyarg, int scopearg, IdemKey *k)
{
	text	   *t;

	if (PG_ARGISNULL(keyarg))
		user_error(
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency key must not be null"),
				 PG_ARGISNULL(scopearg) ? 0 :
				 errdetail("The key given in scope \"%s\" is null.",
						   text_to_cstring(PG_GETARG_TEXT_PP(scopearg)))));
	if (PG_ARGISNULL(scopearg))
		user_error(
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency scope must not be null"),
				 errdetail("The scope given for key \"%s\" is null.",
						   text_to_cstring(PG_GETARG_TEXT_PP(keyarg))),
				 errhint("Use the empty string for the default scope.")));

	t = PG_GETARG_TEXT_PP(scopearg);
	k->scope = text_to_cstring(t);
	k->scope_len = VARSIZE_ANY_EXHDR(t);
	t = PG_GETARG_TEXT_PP(keyarg);
	k->key = text_to_cstring(t);
	k->key_len = VARSIZE_ANY_EXHDR(t);

	if (k->key_len == 0)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key must not be empty"),
				 errdetail("Key \"\" in scope \"%s\".", k->scope)));
	if (k->key_len > IDEM_MAX_KEY_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency key is too long"),
				 errdetail("Key \"%.*s...\" in scope \"%s\" is %d bytes; the limit is %d bytes.",
						   pg_mbcliplen(k->key, k->key_len, 32), k->key,
						   k->scope, k->key_len, IDEM_MAX_KEY_BYTES)));
	if (k->scope_len > IDEM_MAX_KEY_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency scope is too long"),
				 errdetail("Scope \"%.*s...\" of key \"%s\" is %d bytes; the limit is %d bytes.",
						   pg_mbcliplen(k->scope, k->scope_len, 32), k->scope,
						   k->key, k->scope_len, IDEM_MAX_KEY_BYTES)));

	idem_check_scope(k->scope);
}

static char *
get_hash_arg(FunctionCallInfo fcinfo, int arg, const IdemKey *k)
{
	text	   *t;

	if (PG_ARGISNULL(arg))
		return NULL;
	t = PG_GETARG_TEXT_PP(arg);
	if (VARSIZE_ANY_EXHDR(t) > IDEM_MAX_HASH_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("request hash is too long"),
				 errdetail("Key \"%s\" in scope \"%s\" was given a request hash of %d bytes; the limit is %d bytes.",
						   k->key, k->scope, (int) VARSIZE_ANY_EXHDR(t),
						   IDEM_MAX_HASH_BYTES)));
	return text_to_cstring(t);
}

/* Microseconds of an interval, months counted as 30 days */
static int64
interval_usecs(const Interval *iv)
{
	int128		us;

	us = (int128) iv->time +
		(int128) iv->day * USECS_PER_DAY +
		(int128) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (us > PG_INT64_MAX)
		return PG_INT64_MAX;
	if (us < PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) us;
}

static TimestampTz
add_interval(TimestampTz ts, const Interval *iv)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(ts),
												   IntervalPGetDatum(iv)));
}

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
				 errdetail("Key \"%s\" in scope \"%s\" was reserved with request hash \"%s\", not \"%s\".",
						   k->key, k->scope, rec->request_hash, given),
				 errhint("Use a new idempotency key for a different request.")));
	}
}

/*
 * Classifies a record.  A lock holder passes check_owner = true to learn
 * whether another session's in-flight record has a live owner; without it,
 * such a record is REC_OTHER.
 */
static RecordState
classify(const IdemRecord *rec, TimestampTz now, bool check_owner)
{
	if (!rec->found)
		return REC_ABSENT;
	if (rec->committed)
		return rec->expires_at <= now ? REC_ABSENT : REC_COMMITTED;
	if (rec->has_owner && rec->owner_pid == MyProcPid &&
		rec->owner_started == MyStartTimestamp)
		return REC_MINE;
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

static void
prevent_in_recovery(const IdemKey *k, const char *what)
{
	if (RecoveryInProgress())
		user_error(
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s an idempotency key during recovery", what),
				 KEY_DETAIL(k),
				 errhint("Send the request to the primary server.")));
}

/*
 * Builds an idem_reservation row.
 */
static Datum
make_reservation(FunctionCallInfo fcinfo, bool fresh, const IdemRecord *rec)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	Datum		values[8];
	bool		nulls[8];
	bool		done = rec->committed;

	/* the row type, looked up once per call site */
	if (tupdesc == NULL)
	{
		MemoryContext oldcxt;

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		oldcxt = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(oldcxt);
		fcinfo->flinfo->fn_extra = tupdesc;
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
	if (waited_ms > 0)
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("timed out waiting for in-flight idempotency key"),
				 rec->has_owner ?
				 errdetail("Key \"%s\" in scope \"%s\" is still in flight in the session with PID %d after %d ms.",
						   k->key, k->scope, rec->owner_pid, waited_ms) :
				 errdetail("Key \"%s\" in scope \"%s\" is still in flight after %d ms.",
						   k->key, k->scope, waited_ms),
				 errhint("Retry later, or raise wait_timeout.")));
	user_error(
			(errcode(ERRCODE_IDEM_IN_FLIGHT),
			 errmsg("idempotency key is in flight"),
			 rec->has_owner ?
			 errdetail("Key \"%s\" in scope \"%s\" is in flight in the session with PID %d.",
					   k->key, k->scope, rec->owner_pid) :
			 errdetail("Key \"%s\" in scope \"%s\" is being reserved by another session.",
					   k->key, k->scope),
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
		   TimestampTz now, RecordState st, IdemRecord *rec)
{
	TimestampTz expires_at = add_interval(now, ttl);
	int32		attempt = (st == REC_ORPHAN) ? rec->attempt + 1 : 1;

	if (!rec->found)
	{
		if (!idem_storage_insert(k, hash, ttl, now, expires_at))
			return false;
	}
	else
	{
		/* a takeover keeps the first request's hash unless given one */
		const char *newhash = hash;

		if (st == REC_ORPHAN && newhash == NULL)
			newhash = rec->request_hash;
		if (!idem_storage_renew(k, newhash, attempt, ttl, now, expires_at))
			return false;
	}

	memset(rec, 0, sizeof(IdemRecord));
	rec->found = true;
	rec->attempt = attempt;
	rec->created_at = now;
	rec->expires_at = expires_at;
	maybe_commit_async();
	return true;
}

/*
 * Counts a reserve that returned: what it returned (a counter, or -1 for a
 * re-entrant reserve), and whether and how long it waited.
 */
static void
count_reserve(int outcome, TimestampTz wait_started)
{
	idem_count(IDEM_C_RESERVES, 1);
	if (outcome >= 0)
		idem_count((IdemCounter) outcome, 1);
	if (wait_started != 0)
	{
		idem_count(IDEM_C_WAITS, 1);
		idem_count(IDEM_C_WAIT_US,
				   (uint64) Max(0, GetCurrentTimestamp() - wait_started));
	}
}

/*
 * idem_reserve(key text, request_hash text DEFAULT NULL,
 *				ttl interval DEFAULT NULL, wait_timeout interval DEFAULT NULL,
 *				scope text DEFAULT '') RETURNS idem_reservation
 */
Datum
idem_reserve(PG_FUNCTION_ARGS)
{
	IdemKey		k;
	char	   *hash;
	Interval	ttl;
	int64		wait_us;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz started_waiting = GetCurrentTimestamp();
	TimestampTz deadline;
	LOCKTAG		tag;
	IdemRecord	rec;
	bool		held;			/* we hold the key's lock */
	bool		took = false;	/* ... and took it in this call */
	int			backoff_ms = 1;
	TimestampTz wait_started = 0;	/* when we first waited, or 0 */
	int			retries = 0;
	int			passing = 0;	/* wait 0: times only waiters held the lock */

	get_key_args(fcinfo, 0, 4, &k);
	hash = get_hash_arg(fcinfo, 1, &k);

	if (PG_ARGISNULL(2))
	{
		memset(&ttl, 0, sizeof(ttl));
		ttl.time = (int64) idem_default_ttl * USECS_PER_SEC;
	}
	else
		ttl = *PG_GETARG_INTERVAL_P(2);
	if (interval_usecs(&ttl) > (int64) idem_max_ttl * USECS_PER_SEC)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl is longer than idem.max_ttl"),
				 errdetail("Key \"%s\" in scope \"%s\" was given ttl %s; idem.max_ttl is %d seconds.",
						   k.key, k.scope,
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(&ttl))),
						   idem_max_ttl)));
	if (add_interval(now, &ttl) <= now)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl must be positive"),
				 errdetail("Key \"%s\" in scope \"%s\" was given ttl %s.",
						   k.key, k.scope,
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(&ttl))))));

	if (PG_ARGISNULL(3))
		wait_us = (int64) idem_wait_timeout * 1000;
	else
	{
		Interval   *w = PG_GETARG_INTERVAL_P(3);

		wait_us = interval_usecs(w);
		if (wait_us < 0)
			user_error(
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("wait_timeout must not be negative"),
					 errdetail("Key \"%s\" in scope \"%s\" was given wait_timeout %s.",
							   k.key, k.scope,
							   DatumGetCString(DirectFunctionCall1(interval_out,
																   IntervalPGetDatum(w))))));
	}
	deadline = started_waiting + Min(wait_us, PG_INT64_MAX - started_waiting);

	idem_key_locktag(&k, &tag);

	/*
	 * We may hold the lock already: this transaction committed or released
	 * the key, and the lock goes when the transaction does.
	 */
	held = LockHeldByMe(&tag, ExclusiveLock);

	for (;;)
	{
		RecordState st;
		int			left;

		CHECK_FOR_INTERRUPTS();

		idem_storage_read(&k, &rec);
		st = classify(&rec, now, held);

		if (st != REC_ABSENT)
			check_hash(&k, &rec, hash);

		if (st == REC_COMMITTED)
		{
			if (took)
				idem_own_forget(&k);
			count_reserve(IDEM_C_REPLAYS, wait_started);
			PG_RETURN_DATUM(make_reservation(fcinfo, false, &rec));
		}

		/* on a standby only a committed response can be answered */
		prevent_in_recovery(&k, "reserve");

		if (st == REC_MINE)
		{
			/* re-entrant; take the lock back if something dropped it */
			if (!held)
				(void) LockAcquire(&tag, ExclusiveLock, true, false);
			idem_own_acquired(&k, &tag, false);
			count_reserve(-1, wait_started);
			PG_RETURN_DATUM(make_reservation(fcinfo, true, &rec));
		}

		if (held && st != REC_OTHER)
		{
			if (make_fresh(&k, hash, &ttl, now, st, &rec))
			{
				idem_own_acquired(&k, &tag, false);
				count_reserve(st == REC_ORPHAN ? IDEM_C_TAKEOVERS : IDEM_C_FRESH,
							  wait_started);
				PG_RETURN_DATUM(make_reservation(fcinfo, true, &rec));
			}
			/* the record changed under us (a purge): read it again */
			if (++retries > 3)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access to idempotency key"),
						 KEY_DETAIL(&k),
						 errhint("The transaction might succeed if retried.")));
			continue;
		}

		if (held && !took)
			elog(ERROR, "key \"%s\" in scope \"%s\" is locked by this session but owned by another",
				 k.key, k.scope);

		if (held)
		{
			/*
			 * In flight with a live owner whose lock is gone: a stray
			 * pg_advisory_unlock_all() in the owner's session, or a DISCARD
			 * ALL whose abandoning is not committed yet.  There is no lock
			 * to wait on; look again shortly.
			 */
			idem_own_forget(&k);
			held = took = false;
			left = ms_left(deadline);
			if (left == 0)
				report_in_flight(&k, &rec, wait_us > 0 ?
								 (int) ((GetCurrentTimestamp() - started_waiting) / 1000) : 0);
			if (wait_started == 0)
				wait_started = GetCurrentTimestamp();
			pg_usleep(Min(backoff_ms, left) * 1000L);
			backoff_ms = Min(backoff_ms * 2, 50);
			continue;
		}

		/* Not holding the lock: take it if it is free, else wait */
		if (idem_lock_try(&tag, ExclusiveLock))
		{
			idem_own_acquired(&k, &tag, true);
			held = took = true;

			/*
			 * The common case, a new key: insert at once, without reading
			 * again.  If a record appeared between our read and the lock,
			 * the insert does nothing and we read it under the lock.
			 */
			if (st == REC_ABSENT && !rec.found &&
				make_fresh(&k, hash, &ttl, now, st, &rec))
			{
				count_reserve(IDEM_C_FRESH, wait_started);
				PG_RETURN_DATUM(make_reservation(fcinfo, true, &rec));
			}
			continue;
		}

		left = ms_left(deadline);
		if (left == 0)
		{
			/*
			 * Only other waiters passing through hold it in share mode?
			 * Then nobody owns the key; try again at once, a bounded number
			 * of times.
			 */
			if (wait_us == 0 && ++passing <= 1000 &&
				idem_lock_try(&tag, ShareLock))
			{
				idem_lock_release(&tag, ShareLock);
				continue;
			}
			report_in_flight(&k, &rec, wait_us > 0 ?
							 (int) ((GetCurrentTimestamp() - started_waiting) / 1000) : 0);
		}

		/*
		 * Wait for the owner.  Waiters for a known owner queue in share mode,
		 * so that a commit wakes them all at once; when the record looked
		 * absent or orphaned, whoever is ahead is about to create or take it
		 * over, and we queue for the exclusive lock behind them.
		 */
		if (wait_started == 0)
			wait_started = GetCurrentTimestamp();
		if (st == REC_OTHER)
		{
			if (idem_lock_wait(&tag, ShareLock, left))
				idem_lock_release(&tag, ShareLock);
		}
		else if (idem_lock_wait(&tag, ExclusiveLock, left))
		{
			idem_own_acquired(&k, &tag, true);
			held = took = true;
		}
	}
}

/*
 * Shared by idem_commit and idem_release for a record owned by another
 * session: take its lock and check that the owner is gone.  Returns the
 * record as re-read under the lock, or raises IK409.
 */
static RecordState
adopt_orphan(const IdemKey *k, IdemRecord *rec, TimestampTz now)
{
	LOCKTAG		tag;
	RecordState st;

	idem_key_locktag(k, &tag);
	if (!idem_lock_try(&tag, ExclusiveLock))
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("idempotency key is owned by another session"),
				 rec->has_owner ?
				 errdetail("Key \"%s\" in scope \"%s\" is in flight in the session with PID %d.",
						   k->key, k->scope, rec->owner_pid) :
				 errdetail("Key \"%s\" in scope \"%s\" is being taken over by another session.",
						   k->key, k->scope)));
	idem_own_acquired(k, &tag, true);

	idem_storage_read(k, rec);
	st = classify(rec, now, true);
	if (st == REC_OTHER)
		user_error(
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("idempotency key is owned by another session"),
				 errdetail("Key \"%s\" in scope \"%s\" is in flight in the session with PID %d.",
						   k->key, k->scope, rec->owner_pid)));
	return st;
}

/*
 * idem_commit(key text, request_hash text, status integer, body bytea,
 *			   headers jsonb DEFAULT '{}', scope text DEFAULT '')
 *	RETURNS boolean
 */
Datum
idem_commit(PG_FUNCTION_ARGS)
{
	IdemKey		k;
	char	   *hash;
	bytea	   *body = NULL;
	Jsonb	   *headers = NULL;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;
	RecordState st;

	get_key_args(fcinfo, 0, 5, &k);
	hash = get_hash_arg(fcinfo, 1, &k);

	if (!PG_ARGISNULL(3))
	{
		body = PG_GETARG_BYTEA_P(3);
		if (VARSIZE_ANY_EXHDR(body) > (Size) idem_max_body_bytes)
			user_error(
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("response body is too large"),
					 errdetail("Key \"%s\" in scope \"%s\": the body is %zu bytes; idem.max_body_bytes is %d bytes.",
							   k.key, k.scope, VARSIZE_ANY_EXHDR(body),
							   idem_max_body_bytes)));
	}
	if (!PG_ARGISNULL(4))
	{
		headers = PG_GETARG_JSONB_P(4);
		if (VARSIZE(headers) - VARHDRSZ > (Size) idem_max_header_bytes)
			user_error(
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("response headers are too large"),
					 errdetail("Key \"%s\" in scope \"%s\": the headers take %zu bytes; idem.max_header_bytes is %d bytes.",
							   k.key, k.scope, (Size) (VARSIZE(headers) - VARHDRSZ),
							   idem_max_header_bytes)));
		if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
			user_error(
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response headers must be a JSON object"),
					 KEY_DETAIL(&k)));
	}
	else
		headers = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													 CStringGetDatum("{}")));

	/* the common case: our own reservation, in one query */
	if (idem_own_holds(&k) && !RecoveryInProgress() &&
		idem_storage_commit_mine(&k, hash, PG_ARGISNULL(2), PG_GETARG_INT32(2),
								 headers, body, now))
	{
		idem_own_finished(&k);
		idem_count(IDEM_C_COMMITS, 1);
		PG_RETURN_BOOL(true);
	}

	idem_storage_read(&k, &rec);
	st = classify(&rec, now, false);
	if (st == REC_ABSENT)
		user_error(
				(errcode(ERRCODE_IDEM_NOT_FOUND),
				 errmsg("idempotency key has no live reservation"),
				 errdetail("Key \"%s\" in scope \"%s\" is absent or expired.",
						   k.key, k.scope),
				 errhint("Call idem_reserve before idem_commit.")));
	check_hash(&k, &rec, hash);
	if (st == REC_COMMITTED)
		PG_RETURN_BOOL(false);
	prevent_in_recovery(&k, "commit");

	if (st != REC_MINE)
	{
		st = adopt_orphan(&k, &rec, now);
		if (st == REC_ABSENT)
			user_error(
					(errcode(ERRCODE_IDEM_NOT_FOUND),
					 errmsg("idempotency key has no live reservation"),
					 errdetail("Key \"%s\" in scope \"%s\" is absent or expired.",
							   k.key, k.scope)));
		check_hash(&k, &rec, hash);
		if (st == REC_COMMITTED)
		{
			idem_own_forget(&k);
			PG_RETURN_BOOL(false);
		}
	}

	if (!idem_storage_commit(&k, hash, PG_ARGISNULL(2), PG_GETARG_INT32(2),
							 headers, body, now, add_interval(now, &rec.ttl)))
		elog(ERROR, "in-flight record of key \"%s\" in scope \"%s\" vanished",
			 k.key, k.scope);
	idem_own_finished(&k);
	idem_count(IDEM_C_COMMITS, 1);
	PG_RETURN_BOOL(true);
}

/*
 * idem_release(key text, scope text DEFAULT '') RETURNS boolean
 */
Datum
idem_release(PG_FUNCTION_ARGS)
{
	IdemKey		k;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;
	RecordState st;

	get_key_args(fcinfo, 0, 1, &k);

	idem_storage_read(&k, &rec);
	st = classify(&rec, now, false);
	if (st == REC_ABSENT || st == REC_COMMITTED)
		PG_RETURN_BOOL(false);
	prevent_in_recovery(&k, "release");

	if (st != REC_MINE)
	{
		st = adopt_orphan(&k, &rec, now);
		if (st == REC_ABSENT || st == REC_COMMITTED)
		{
			idem_own_forget(&k);
			PG_RETURN_BOOL(false);
		}
	}

	if (!idem_storage_delete(&k))
		PG_RETURN_BOOL(false);
	idem_own_finished(&k);
	idem_count(IDEM_C_RELEASES, 1);
	PG_RETURN_BOOL(true);
}

/*
 * idem_get(key text, scope text DEFAULT '') RETURNS idem_reservation
 */
Datum
idem_get(PG_FUNCTION_ARGS)
{
	IdemKey		k;
	IdemRecord	rec;

	get_key_args(fcinfo, 0, 1, &k);
	idem_storage_read(&k, &rec);
	if (classify(&rec, GetCurrentTransactionStartTimestamp(), true) == REC_ABSENT)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(make_reservation(fcinfo, false, &rec));
}

/*
 * idem_purge(batch_limit integer DEFAULT NULL) RETURNS bigint
 */
Datum
idem_purge(PG_FUNCTION_ARGS)
{
	int64		limit = -1;
	int64		n;

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
	n = idem_storage_purge(limit, GetCurrentTransactionStartTimestamp(),
						   idem_confined_scopes());
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
