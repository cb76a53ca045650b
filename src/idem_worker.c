/*-------------------------------------------------------------------------
 *
 * idem_worker.c
 *	  Background workers that purge expired records, when preloaded.
 *
 * A launcher, connected to no database, wakes every idem.purge_interval
 * seconds, lists the databases that allow connections (templates only
 * when idem.purge_database names one; a name there restricts purging to
 * that database) and starts one short-lived purge worker per database, at
 * most idem.purge_max_workers at a time.  A purge worker connects to its
 * database and, when the extension is installed there, deletes expired
 * records in batches of idem.purge_batch_size, one transaction per batch,
 * so that no lock or snapshot is held for long and autovacuum can keep up;
 * then it exits.  A database created while the server runs is purged from
 * the next round on.
 *
 * A purge worker stays out of the way of DROP DATABASE, ALTER DATABASE
 * RENAME or SET TABLESPACE, and CREATE DATABASE from it as a template:
 * those take a lock on the database that conflicts with the one each batch
 * takes first (the lock a connecting backend takes), and a batch that
 * cannot have it at once ends the worker.  The command waits for one batch
 * at most instead of failing with "is being accessed by other users".
 *
 * Without preloading, schedule SELECT idem_purge(...) with cron or pg_cron
 * instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "idempotency.h"

char	   *idem_purge_database = NULL;
int			idem_purge_interval = 60;
int			idem_purge_batch_size = 1000;
int			idem_purge_max_workers = 2;

#define LAUNCHER_TYPE	"idempotency purge launcher"
#define WORKER_TYPE		"idempotency purge worker"

/* bgw_extra[0] of a purge worker: log a missing extension at LOG */
#define WORKER_WARN		'w'

/* A database to purge, as listed by the launcher */
typedef struct PurgeTarget
{
	Oid			oid;
	NameData	name;
	bool		warn;			/* named by idem.purge_database */
} PurgeTarget;

PGDLLEXPORT void idem_purge_launcher_main(Datum main_arg);
PGDLLEXPORT void idem_purge_worker_main(Datum main_arg);

/*
 * The launcher's memory of what it logged: a misconfiguration is logged
 * once, not every round.  warn_named: the next worker for the database
 * idem.purge_database names logs a missing extension at LOG.
 */
static bool warned_no_database = false;
static bool warned_no_slot = false;
static bool warn_named = true;

/*
 * Whether a purge worker may connect to a database, from its pg_database
 * row.  Templates only when named, since a template is usually copied
 * rather than used.
 */
static bool
purgeable(Form_pg_database db, bool named)
{
	if (!db->datallowconn)
		return false;
#if PG_VERSION_NUM >= 150004
	if (database_is_invalid_form(db))
		return false;
#endif
	return named || !db->datistemplate;
}

static bool
purge_database_is_set(void)
{
	return idem_purge_database != NULL && idem_purge_database[0] != '\0';
}

/*
 * The databases of this round, palloc'd in cxt: every purgeable one, or
 * the one idem.purge_database names.  The launcher reads pg_database, a
 * shared catalog, while connected to no database, as autovacuum's launcher
 * does.
 */
static PurgeTarget *
list_databases(MemoryContext cxt, int *n)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	PurgeTarget *targets;
	int			size = 16;
	bool		named = purge_database_is_set();

	*n = 0;
	targets = MemoryContextAlloc(cxt, sizeof(PurgeTarget) * size);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (named && strcmp(NameStr(db->datname), idem_purge_database) != 0)
			continue;
		if (!purgeable(db, named))
			continue;
		if (*n == size)
		{
			size *= 2;
			targets = repalloc(targets, sizeof(PurgeTarget) * size);
		}
		targets[*n].oid = db->oid;
		targets[*n].name = db->datname;
		targets[*n].warn = named && warn_named;
		(*n)++;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	CommitTransactionCommand();
	return targets;
}

/*
 * Takes, for the current transaction, the lock a connecting backend takes
 * on its database, unless a command that needs the database to itself
 * (DROP DATABASE and the like) holds or awaits a conflicting one.
 */
static bool
database_available(Oid dboid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, dboid, 0);
	return LockAcquire(&tag, RowExclusiveLock, false, true) !=
		LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Whether a database listed at the start of the round may still be
 * purged: it may have been dropped, or closed to connections, meanwhile,
 * or a DROP DATABASE may be under way.
 */
static bool
still_purgeable(const PurgeTarget *t)
{
	HeapTuple	tup;
	bool		result = false;

	StartTransactionCommand();
	if (!database_available(t->oid))
	{
		CommitTransactionCommand();
		return false;
	}
	/* see a drop committed before the lock was granted */
	AcceptInvalidationMessages();
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(t->oid));
	if (HeapTupleIsValid(tup))
	{
		result = purgeable((Form_pg_database) GETSTRUCT(tup),
						   purge_database_is_set());
		ReleaseSysCache(tup);
	}
	CommitTransactionCommand();
	return result;
}

/*
 * Starts the purge worker of one database, which tells the launcher when
 * it stops.  False when no background worker slot is free.
 */
static bool
start_worker(const PurgeTarget *t, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotency");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s for database %s",
			 WORKER_TYPE, NameStr(t->name));
	snprintf(worker.bgw_type, BGW_MAXLEN, WORKER_TYPE);
	worker.bgw_main_arg = ObjectIdGetDatum(t->oid);
	worker.bgw_extra[0] = t->warn ? WORKER_WARN : '\0';
	worker.bgw_notify_pid = MyProcPid;

	return RegisterDynamicBackgroundWorker(&worker, handle);
}

/*
 * SIGTERM and SIGHUP.  A new idem.purge_database is warned about anew.
 */
static void
launcher_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		char	   *before = pstrdup(purge_database_is_set() ?
									 idem_purge_database : "");

		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		if (strcmp(before, purge_database_is_set() ?
				   idem_purge_database : "") != 0)
		{
			warned_no_database = false;
			warn_named = true;
		}
		pfree(before);
	}
}

/*
 * One round: a purge worker for each database, idem.purge_max_workers at
 * a time; returns when the last one has stopped.  The postmaster tells the
 * launcher when one of its workers starts or stops (bgw_notify_pid) by
 * setting its latch.
 */
static void
purge_round(MemoryContext cxt)
{
	PurgeTarget *targets;
	BackgroundWorkerHandle **running;
	int			ntargets;
	int			nslots = idem_purge_max_workers;
	int			nrunning = 0;
	int			next = 0;

	targets = list_databases(cxt, &ntargets);
	if (ntargets == 0 && purge_database_is_set() && !warned_no_database)
	{
		ereport(LOG,
				(errmsg("idempotency purge launcher: database \"%s\" named by \"idem.purge_database\" does not exist or does not allow connections",
						idem_purge_database),
				 errhint("Set \"idem.purge_database\" to an existing database, or to an empty string for every database.")));
		warned_no_database = true;
	}
	if (ntargets > 0)
		warned_no_database = false;
	warn_named = false;

	running = MemoryContextAllocZero(cxt,
									 sizeof(BackgroundWorkerHandle *) * nslots);
	for (;;)
	{
		/* reap the workers that stopped */
		for (int i = 0; i < nslots; i++)
		{
			pid_t		pid;

			if (running[i] == NULL)
				continue;
			switch (GetBackgroundWorkerPid(running[i], &pid))
			{
				case BGWH_STOPPED:
					pfree(running[i]);
					running[i] = NULL;
					nrunning--;
					break;
				case BGWH_POSTMASTER_DIED:
					proc_exit(1);
					break;
				default:
					break;
			}
		}

		/* start more, into the free slots */
		while (nrunning < nslots && next < ntargets)
		{
			PurgeTarget *t = &targets[next];
			MemoryContext oldcxt;
			int			slot = 0;
			bool		started;

			if (!still_purgeable(t))
			{
				ereport(DEBUG1,
						(errmsg("idempotency purge launcher: database \"%s\" skipped this round: dropped, closed to connections, or locked by another command",
								NameStr(t->name))));
				next++;
				continue;
			}

			while (running[slot] != NULL)
				slot++;
			oldcxt = MemoryContextSwitchTo(cxt);
			started = start_worker(t, &running[slot]);
			MemoryContextSwitchTo(oldcxt);
			if (!started)
			{
				running[slot] = NULL;
				if (nrunning == 0)
				{
					/* none of ours will free a slot: try next round */
					if (!warned_no_slot)
						ereport(LOG,
								(errmsg("idempotency purge launcher: no background worker slot free to purge database \"%s\"",
										NameStr(t->name)),
								 errhint("Raise \"max_worker_processes\".")));
					warned_no_slot = true;
					next = ntargets;
				}
				break;
			}
			warned_no_slot = false;
			nrunning++;
			next++;
		}

		if (nrunning == 0 && next >= ntargets)
			break;

		/* the timeout is only a safety net for a lost notification */
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		launcher_interrupts();
	}
}

void
idem_purge_launcher_main(Datum main_arg)
{
	MemoryContext round_cxt;
	TimestampTz last_round = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: shared catalogs only, which is all the launcher reads */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname(LAUNCHER_TYPE);

	round_cxt = AllocSetContextCreate(TopMemoryContext,
									  "idempotency purge round",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;
		long		wait_ms = 0;

		launcher_interrupts();

		if (idem_purge_interval > 0)
		{
			TimestampTz due;

			due = TimestampTzPlusMilliseconds(last_round,
											  idem_purge_interval * 1000L);
			if (GetCurrentTimestamp() >= due)
			{
				last_round = GetCurrentTimestamp();
				purge_round(round_cxt);
				MemoryContextReset(round_cxt);
				due = TimestampTzPlusMilliseconds(last_round,
												  idem_purge_interval * 1000L);
			}
			wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													  due);
			events |= WL_TIMEOUT;
		}

		/* idem.purge_interval = 0: sleep until a reload */
		(void) WaitLatch(MyLatch, events, wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

typedef enum BatchResult
{
	BATCH_DONE,					/* deleted what it returned */
	BATCH_NO_EXTENSION,
	BATCH_DATABASE_BUSY
} BatchResult;

/*
 * One batch in its own transaction; *n is how many records went.
 */
static BatchResult
purge_batch(int64 *n)
{
	BatchResult result = BATCH_DONE;

	*n = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "idempotency: purging expired keys");

	if (!database_available(MyDatabaseId))
		result = BATCH_DATABASE_BUSY;
	else if (!OidIsValid(get_extension_oid("idempotency", true)))
		result = BATCH_NO_EXTENSION;
	else
		*n = idem_purge_expired(idem_purge_batch_size,
								GetCurrentTransactionStartTimestamp(), NULL);

	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	if (*n > 0)
		idem_count(IDEM_C_PURGED, (uint64) *n);
	return result;
}

/*
 * An IdemPurgeBatch: one batch of a purge worker, in its own transaction.
 * There may be more after a full batch, unless a reload turned the purge
 * off.
 */
static bool
worker_batch(int want, void *arg, int64 *deleted)
{
	BatchResult *result = (BatchResult *) arg;
	int64		n;

	*result = purge_batch(&n);
	*deleted += n;
	if (*result != BATCH_DONE || n < want)
		return false;

	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		if (idem_purge_interval == 0)
			return false;
	}
	return true;
}

/*
 * A purge worker: the database's OID in main_arg.  Started by the
 * launcher, never restarted: a failure waits for the next round.
 */
void
idem_purge_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	bool		warn = MyBgworkerEntry->bgw_extra[0] == WORKER_WARN;
	BatchResult result = BATCH_DONE;
	int64		total = 0;
	char	   *dbname;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* a database dropped since the launcher looked: FATAL, and no retry */
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(WORKER_TYPE);

	StartTransactionCommand();
	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL)
		elog(ERROR, "cache lookup failed for database %u", MyDatabaseId);
	dbname = MemoryContextStrdup(TopMemoryContext, dbname);
	CommitTransactionCommand();

	/* batches until one comes back short */
	(void) idem_purge_batches(-1, idem_purge_batch_size, worker_batch,
							  &result, &total);

	if (result == BATCH_NO_EXTENSION)
		ereport(warn ? LOG : DEBUG1,
				(errmsg("idempotency purge worker: extension \"idempotency\" is not installed in database \"%s\"",
						dbname),
				 warn ? errhint("Run CREATE EXTENSION idempotency there, or set \"idem.purge_database\" to an empty string for every database where it is installed.") : 0));
	else if (result == BATCH_DATABASE_BUSY)
		ereport(DEBUG1,
				(errmsg("idempotency purge worker: another command needs database \"%s\" to itself, the rest of its purge waits for the next round",
						dbname)));
	if (total > 0)
		ereport(DEBUG1,
				(errmsg("idempotency purge worker deleted %lld expired records in database \"%s\"",
						(long long) total, dbname)));

	proc_exit(0);
}

/*
 * Called from _PG_init while shared_preload_libraries is processed.
 */
void
idem_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotency");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, LAUNCHER_TYPE);
	snprintf(worker.bgw_type, BGW_MAXLEN, LAUNCHER_TYPE);
	RegisterBackgroundWorker(&worker);
}
