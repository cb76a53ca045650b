/*-------------------------------------------------------------------------
 *
 * idempotency.c
 *	  Module initialization: settings, hooks, transaction callbacks.
 *
 * The module needs no shared_preload_libraries: it is loaded by the first
 * call of one of its functions, and a session that owns a key has called
 * one, so the DISCARD ALL hook is in place wherever it matters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/memutils.h"

#include "idempotency.h"

PG_MODULE_MAGIC;

int			idem_default_ttl = 24 * 60 * 60;
int			idem_wait_timeout = 30 * 1000;
int			idem_max_body_bytes = 1024 * 1024;
bool		idem_async_reserve = false;
int			idem_max_ttl = 366 * 24 * 60 * 60;
int			idem_max_header_bytes = 64 * 1024;
int			idem_purge_delay = 5;
int			idem_lease = 0;		/* idem.lease, in milliseconds */
static char *idem_lease_text = NULL;

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

void		_PG_init(void);

/*
 * idem.lease is an interval, as the lease argument of idem_reserve is:
 * '30s', '30 seconds', '1 min 30 s', '0'.  It must be zero or positive and
 * at most a little under 25 days (milliseconds in an int).
 */
static bool
check_lease(char **newval, void **extra, GucSource source)
{
	Interval   *iv = NULL;
	int64		ms;
	int		   *result;

	PG_TRY();
	{
		iv = DatumGetIntervalP(DirectFunctionCall3(interval_in,
												   CStringGetDatum(*newval),
												   ObjectIdGetDatum(InvalidOid),
												   Int32GetDatum(-1)));
	}
	PG_CATCH();
	{
		FlushErrorState();
		iv = NULL;
	}
	PG_END_TRY();
	if (iv == NULL)
	{
		GUC_check_errdetail("\"%s\" is not an interval.", *newval);
		return false;
	}
	ms = idem_interval_usecs(iv) / 1000;
	if (ms < 0 || ms > INT_MAX)
	{
		GUC_check_errdetail("A lease must be zero or positive and shorter than 24 days.");
		return false;
	}
	/* the GUC machinery frees extra with free() */
	result = (int *) malloc(sizeof(int));
	if (result == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		return false;
	}
	*result = (int) ms;
	*extra = result;
	return true;
}

static void
assign_lease(const char *newval, void *extra)
{
	idem_lease = *(int *) extra;
}

/*
 * DISCARD ALL drops every advisory lock of the session, ours included.  A
 * connection pooler runs it when its client leaves, so the client's
 * reservations are abandoned first, for waiters to take over.
 */
static void
idem_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DiscardStmt) &&
		((DiscardStmt *) parsetree)->target == DISCARD_ALL)
		idem_abandon_all();

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

void
_PG_init(void)
{
	DefineCustomIntVariable("idem.default_ttl",
							"How long a record is kept when idem_reserve is given no ttl.",
							"Committed responses are replayed until this long after the commit.",
							&idem_default_ttl,
							24 * 60 * 60, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idem.wait_timeout",
							"How long idem_reserve waits for an in-flight key when given no wait_timeout.",
							"Zero means do not wait: fail at once with IK409 while a live owner holds the key.",
							&idem_wait_timeout,
							30 * 1000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idem.max_body_bytes",
							"Largest response body idem_commit stores.",
							NULL,
							&idem_max_body_bytes,
							1024 * 1024, 0, MaxAllocSize - VARHDRSZ,
							PGC_USERSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idem.max_ttl",
							"Longest ttl idem_reserve accepts.",
							NULL,
							&idem_max_ttl,
							366 * 24 * 60 * 60, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idem.max_header_bytes",
							"Largest response headers idem_commit stores, as jsonb.",
							NULL,
							&idem_max_header_bytes,
							64 * 1024, 0, MaxAllocSize - VARHDRSZ,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idem.purge_delay",
							"Pause of idem_purge and the purge workers after each 1000 records deleted.",
							"Spreads a large purge over time so that it takes less from concurrent requests, as vacuum_cost_delay does for VACUUM.",
							&idem_purge_delay,
							5, 0, 1000,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("idem.lease",
							   "Lease of the reservations idem_reserve makes when given no lease.",
							   "An interval ('30s', '30 seconds', '1 min'); zero makes session owners: a reservation belongs to the session that made it. A positive lease makes lease owners, which work through transaction-mode connection poolers: the reservation belongs to the owner token until the lease runs out, unless renewed with idem_extend.",
							   &idem_lease_text,
							   "0",
							   PGC_USERSET, 0,
							   check_lease, assign_lease, NULL);

	DefineCustomBoolVariable("idem.async_reserve",
							 "Commits new reservations made in autocommit mode without waiting for the WAL flush.",
							 "Saves one WAL flush per request; after a server crash a reservation may be lost, so its key is absent (attempt 1) instead of taken over (attempt 2). Committed responses stay durable.",
							 &idem_async_reserve,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	/* counters and the purge worker need shared_preload_libraries */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("idem.purge_interval",
								"Seconds between two rounds of the purge workers.",
								"Each round purges every database where the extension is installed, or the one idem.purge_database names. The workers run only when idempotency is in shared_preload_libraries; 0 stops them.",
								&idem_purge_interval,
								60, 0, 7 * 24 * 60 * 60,
								PGC_SIGHUP, GUC_UNIT_S,
								NULL, NULL, NULL);

		DefineCustomIntVariable("idem.purge_batch_size",
								"Records a purge worker deletes per transaction.",
								NULL,
								&idem_purge_batch_size,
								1000, 1, 1000000,
								PGC_SIGHUP, 0,
								NULL, NULL, NULL);

		DefineCustomStringVariable("idem.purge_database",
								   "The only database the purge workers purge; empty for every database.",
								   "Empty: every database that allows connections, templates excepted, where the extension is installed. A name: that database only, a template too.",
								   &idem_purge_database,
								   "",
								   PGC_SIGHUP, 0,
								   NULL, NULL, NULL);

		DefineCustomIntVariable("idem.purge_max_workers",
								"Purge workers running at the same time, one per database.",
								"Each takes a background worker slot (max_worker_processes) while it runs, besides the one of the purge launcher.",
								&idem_purge_max_workers,
								2, 1, 1024,
								PGC_SIGHUP, 0,
								NULL, NULL, NULL);

		idem_stats_init();
		idem_wake_shmem_init();
		idem_hint_shmem_init();
		idem_worker_register();
	}

	MarkGUCPrefixReserved("idem");

	idem_lock_init();
	idem_wake_init();

	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = idem_ProcessUtility;
}
