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
