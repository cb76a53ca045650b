/*-------------------------------------------------------------------------
 *
 * idem_owner.c
 *	  Whether the owner of an in-flight record is still there, and what
 *	  becomes of this session's records when its client leaves.
 *
 * A record names its owner.  A session owner is a backend, by PID and
 * start time: it is there while a backend with both runs in this database.
 * A lease owner is a token with a lease: it is there while the lease runs,
 * on this server's clock, whichever sessions come and go.
 *
 * DISCARD ALL ends the logical session of a connection pooler's client
 * and drops every advisory lock of the session, our key locks with them:
 * the session's in-flight records are marked as abandoned first (they lose
 * their owner), so that waiters take them over at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/procarray.h"
#include "utils/backend_status.h"
#include "utils/timestamp.h"

#include "idempotency.h"

/*
 * Is this session the session owner pid, started?
 */
bool
idem_owner_is_me(int32 pid, TimestampTz started)
{
	return pid == MyProcPid && started == MyStartTimestamp;
}

/*
 * Is the session that made a reservation still there?  A backend with that
 * PID and that start time must exist.  refresh = false lets a caller that
 * checks many owners in a row (the purge) reuse one snapshot of the
 * backend status array.
 */
bool
idem_owner_alive(int32 pid, TimestampTz started, bool refresh)
{
	int			n;

	if (pid == MyProcPid)
		return started == MyStartTimestamp;
	if (BackendPidGetProc(pid) == NULL)
		return false;

	if (refresh)
		pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);

		/*
		 * The same backend, and in this database: a copy of the record
		 * restored into another database is not owned by the session that
		 * still works on the original.
		 */
		if (local != NULL && local->backendStatus.st_procpid == pid)
			return local->backendStatus.st_proc_start_timestamp == started &&
				local->backendStatus.st_databaseid == MyDatabaseId;
	}
	return false;
}

/*
 * Is a lease owner whose lease ends at lease_expires_at still there?
 */
bool
idem_lease_alive(TimestampTz lease_expires_at)
{
	return lease_expires_at > GetCurrentTimestamp();
}

/*
 * DISCARD ALL is about to drop every advisory lock of this session: a
 * connection pooler's client has left, so the session's reservations are
 * given up.  Mark them abandoned so that waiters take them over at once.
 */
void
idem_abandon_all(void)
{
	IdemKey    *keys;
	int			n;

	keys = idem_own_keys(&n);
	if (n == 0)
		return;
	for (int i = 0; i < n; i++)
		idem_storage_abandon(&keys[i]);
	idem_own_release_all();
}
