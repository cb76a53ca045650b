/*-------------------------------------------------------------------------
 *
 * idem_stats.c
 *	  Counters in shared memory, when the module is preloaded.
 *
 * With shared_preload_libraries = 'idempotency' the counters live in a
 * small shared struct of atomics, cheap enough to bump on every call.
 * Without preloading there is no shared memory to put them in; idem_stats
 * then reports only what the key table itself can tell.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "idempotency.h"

typedef struct IdemShared
{
	pg_atomic_uint64 counters[IDEM_NUM_COUNTERS];
	pg_atomic_uint64 reset_at;	/* TimestampTz */
} IdemShared;

static IdemShared *idem_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(idem_stats_counters);
PG_FUNCTION_INFO_V1(idem_stats_reset);

void
idem_count(IdemCounter counter, uint64 n)
{
	if (idem_shared != NULL)
		pg_atomic_fetch_add_u64(&idem_shared->counters[counter], n);
}

static void
idem_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(IdemShared)));
}

static void
idem_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	idem_shared = ShmemInitStruct("idempotency", sizeof(IdemShared), &found);
	if (!found)
	{
		for (int i = 0; i < IDEM_NUM_COUNTERS; i++)
			pg_atomic_init_u64(&idem_shared->counters[i], 0);
		pg_atomic_init_u64(&idem_shared->reset_at,
						   (uint64) GetCurrentTimestamp());
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init while shared_preload_libraries is processed.
 */
void
idem_stats_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = idem_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = idem_shmem_startup;
}

/*
 * The counters of every worker, summed into sums (a worker that is not
 * preloaded counts nothing), read with run_command_on_workers.
 */
static void
add_workers_counters(int64 *sums)
{
	static const char *const names[IDEM_NUM_COUNTERS] = {
		"reserves", "fresh", "takeovers", "replays", "waits", "wait_time_us",
		"wait_timeouts", "mismatches", "commits", "releases", "purged",
		"evicted", "errors"
	};
	StringInfoData cmd;
	StringInfoData sql;
	int			rc;

	memset(sums, 0, sizeof(int64) * IDEM_NUM_COUNTERS);
	initStringInfo(&cmd);
	appendStringInfoString(&cmd, "SELECT concat_ws(' '");
	for (int i = 0; i < IDEM_NUM_COUNTERS; i++)
		appendStringInfo(&cmd, ", coalesce(%s, 0)", names[i]);
	appendStringInfo(&cmd, ") FROM %s.idem_stats_counters()",
					 idem_storage_schema());
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT result FROM pg_catalog.run_command_on_workers(%s)"
					 " WHERE success",
					 quote_literal_cstr(cmd.data));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(sql.data, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read the counters of the workers: %s",
			 SPI_result_code_string(rc));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		char	   *line = SPI_getvalue(SPI_tuptable->vals[r],
										SPI_tuptable->tupdesc, 1);
		char	   *p = line;

		for (int i = 0; p != NULL && *p != '\0' && i < IDEM_NUM_COUNTERS; i++)
		{
			char	   *end;

			sums[i] += strtoll(p, &end, 10);
			p = end;
		}
	}
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
}

/*
 * idem_stats_counters(OUT counters_available boolean, OUT reserves bigint,
 *		..., OUT stats_reset timestamptz)
 */
Datum
idem_stats_counters(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[IDEM_NUM_COUNTERS + 2];
	bool		nulls[IDEM_NUM_COUNTERS + 2];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != IDEM_NUM_COUNTERS + 2)
		elog(ERROR, "idem_stats_counters returns %d columns, expected %d",
			 tupdesc->natts, IDEM_NUM_COUNTERS + 2);

	values[0] = BoolGetDatum(idem_shared != NULL);
	nulls[0] = false;
	for (int i = 0; i < IDEM_NUM_COUNTERS; i++)
	{
		nulls[i + 1] = (idem_shared == NULL);
		values[i + 1] = nulls[i + 1] ? (Datum) 0 :
			Int64GetDatum((int64) pg_atomic_read_u64(&idem_shared->counters[i]));
	}

	/* on Citus's coordinator, the workers' counters are added */
	if (idem_shared != NULL && idem_storage_coordinator())
	{
		int64		sums[IDEM_NUM_COUNTERS];

		add_workers_counters(sums);
		for (int i = 0; i < IDEM_NUM_COUNTERS; i++)
			values[i + 1] = Int64GetDatum(DatumGetInt64(values[i + 1]) + sums[i]);
	}
	nulls[IDEM_NUM_COUNTERS + 1] = (idem_shared == NULL);
	values[IDEM_NUM_COUNTERS + 1] = nulls[IDEM_NUM_COUNTERS + 1] ? (Datum) 0 :
		TimestampTzGetDatum((TimestampTz) pg_atomic_read_u64(&idem_shared->reset_at));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * idem_stats_reset() RETURNS void
 */
Datum
idem_stats_reset(PG_FUNCTION_ARGS)
{
	if (idem_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency counters are not available"),
				 errhint("Add idempotency to shared_preload_libraries and restart the server.")));

	for (int i = 0; i < IDEM_NUM_COUNTERS; i++)
		pg_atomic_write_u64(&idem_shared->counters[i], 0);
	pg_atomic_write_u64(&idem_shared->reset_at, (uint64) GetCurrentTimestamp());
	PG_RETURN_VOID();
}
