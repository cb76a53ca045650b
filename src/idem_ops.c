/*-------------------------------------------------------------------------
 *
 * idem_ops.c
 *	  Functions for operators: evicting a committed key, and telling
 *	  whether a reservation's owner is alive.
 *
 * Listing keys and finding hung handlers are plain SQL over the key table
 * (see the 1.1 install script); what needs the module's own knowledge
 * (owner identity, key locks) is here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_evict);
PG_FUNCTION_INFO_V1(idem_owner_alive_sql);

/*
 * idem_evict(key text, scope text DEFAULT '') RETURNS boolean
 *
 * Deletes one committed record, so that the next request with the key runs
 * the handler again; the evicted response is written to the server log as
 * evidence.  In-flight records are not evicted: release them from the
 * owner's session, or end that session (pg_terminate_backend) so that the
 * next request takes the key over.
 */
Datum
idem_evict(PG_FUNCTION_ARGS)
{
	IdemKey		k;
	IdemRecord	rec;
	LOCKTAG		tag;

	idem_arg_key(fcinfo, 0, 1, &k);

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot evict an idempotency key during recovery")));

	/* hold the key's lock so that no reserve decides on it meanwhile */
	idem_key_locktag(&k, &tag);
	if (!LockHeldByMe(&tag, ExclusiveLock))
	{
		if (!idem_lock_try(&tag, ExclusiveLock))
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_IN_FLIGHT),
					 errmsg("idempotency key is in use"),
					 KEY_DETAIL(&k, " is locked by another session."),
					 errhint("Try again; an in-flight key cannot be evicted.")));
		idem_own_acquired(&k, &tag, true);
		idem_own_finished(&k);
	}

	idem_storage_read(&k, &rec);
	if (!rec.found)
		PG_RETURN_BOOL(false);
	if (!rec.committed && rec.has_lease)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("cannot evict an in-flight idempotency key"),
				 KEY_DETAIL(&k, " is in flight under a lease until %s.",
							timestamptz_to_str(rec.lease_expires_at)),
				 errhint("Release it with its owner token, or let its lease run out so that the next request takes it over.")));
	if (!rec.committed)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_IN_FLIGHT),
				 errmsg("cannot evict an in-flight idempotency key"),
				 KEY_DETAIL(&k, " is in flight%s.",
							rec.has_owner ? psprintf(" in the session with PID %d",
													rec.owner_pid) : ""),
				 errhint("Release it from its session, or end that session with pg_terminate_backend() so that the next request takes it over.")));

	if (!idem_storage_evict(&k))
		PG_RETURN_BOOL(false);

	ereport(LOG,
			(errmsg("idempotency key \"%s\" in scope \"%s\" evicted by role \"%s\"",
					k.key, k.scope, GetUserNameFromId(GetUserId(), false)),
			 errdetail("The evicted response had status %s, %zu body bytes, request hash %s, attempt %d; it was created at %s and would have expired at %s.",
					   rec.status_null ? "NULL" : psprintf("%d", rec.status),
					   rec.body ? VARSIZE_ANY_EXHDR(rec.body) : (size_t) 0,
					   rec.request_hash ? rec.request_hash : "NULL",
					   rec.attempt,
					   timestamptz_to_str(rec.created_at),
					   timestamptz_to_str(rec.expires_at))));
	idem_count(IDEM_C_EVICTED, 1);
	PG_RETURN_BOOL(true);
}

/*
 * idem_owner_alive(pid integer, started timestamptz) RETURNS boolean
 */
Datum
idem_owner_alive_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(idem_owner_alive(PG_GETARG_INT32(0),
									PG_GETARG_TIMESTAMPTZ(1), true));
}
