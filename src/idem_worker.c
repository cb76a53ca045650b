/*-------------------------------------------------------------------------
 *
 * idem_worker.c
 *	  Background worker that purges expired records, when preloaded.
 *
 * Every idem.purge_interval seconds the worker connects to
 * idem.purge_database and deletes expired records in batches of
 * idem.purge_batch_size, one transaction per batch, so that no lock or
 * snapshot is held for long and autovacuum can keep up.  Without
 * preloading, schedule SELECT idem_purge(...) with cron or pg_cron instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "idempotency.h"

char	   *idem_purge_database = NULL;
int			idem_purge_interval = 60;
int			idem_purge_batch_size = 1000;

PGDLLEXPORT void idem_purge_worker_main(Datum main_arg);

/*
 * One batch in its own transaction.  Returns how many records went, or -1
 * when the extension is not installed in the database.
 */
static int64
purge_batch(void)
{
	int64		n = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "idempotency: purging expired keys");

	if (!OidIsValid(get_extension_oid("idempotency", true)))
		n = -1;
	else
		n = idem_storage_purge(idem_purge_batch_size,
							   GetCurrentTransactionStartTimestamp(), NULL);

	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	if (n > 0)
		idem_count(IDEM_C_PURGED, (uint64) n);
	return n;
}

void
idem_purge_worker_main(Datum main_arg)
{
	bool		warned = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(idem_purge_database, NULL, 0);
	pgstat_report_appname("idempotency purge worker");

	for (;;)
	{
		int			interval_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (idem_purge_interval > 0)
		{
			int64		n;
			int64		total = 0;

			/* batches until one comes back short */
			do
			{
				n = purge_batch();
				if (n > 0)
					total += n;
				CHECK_FOR_INTERRUPTS();
				if (n >= idem_purge_batch_size && idem_purge_delay > 0)
					pg_usleep((long) idem_purge_delay * 1000L);
			} while (n >= idem_purge_batch_size);

			if (n < 0 && !warned)
			{
				ereport(LOG,
						(errmsg("idempotency purge worker: extension \"idempotency\" is not installed in database \"%s\"",
								idem_purge_database),
						 errhint("Run CREATE EXTENSION idempotency there, or set idem.purge_database.")));
				warned = true;
			}
			else if (n >= 0)
				warned = false;
			if (total > 0)
				ereport(DEBUG1,
						(errmsg("idempotency purge worker deleted %lld expired records",
								(long long) total)));
		}

		interval_ms = idem_purge_interval > 0 ?
			idem_purge_interval * 1000 : 60 * 1000;
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 interval_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
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
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotency purge worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotency purge worker");
	RegisterBackgroundWorker(&worker);
}
