/*-------------------------------------------------------------------------
 *
 * idem_purge.c
 *	  Deleting expired records: where a scan starts, the batches, the
 *	  pause between them.
 *
 * A record goes once it has expired: a committed one, and an in-flight one
 * whose owner is gone (a session that ended, a lease that ran out).  Both
 * idem_purge() and the purge worker delete in batches with a pause of
 * idem.purge_delay between two of them (idem_purge_batches), so that
 * purging a large backlog takes little from concurrent requests: the SQL
 * function fetches and deletes a batch at a time within its call, the
 * worker runs one transaction per batch (idem_worker.c).
 *
 * The scan of a table starts where this backend's last purge of it
 * stopped, the block after the last one an earlier call looked at, and
 * wraps around at the end of the table, by TID range (a TID range scan
 * reads only the blocks in range): a purge in batches (idem_purge(10000)
 * in a loop, the purge worker) then walks the table once instead of
 * reading again, every call, the blocks whose records earlier calls
 * deleted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "idempotency.h"

/* Records fetched and deleted at a time within one call */
#define PURGE_BATCH 1000

/* Where the next purge of a table starts, by the table's OID */
typedef struct ScanPosition
{
	Oid			relid;			/* hash key */
	BlockNumber next;
} ScanPosition;

static HTAB *positions = NULL;

static BlockNumber *
scan_position(const IdemTable *t)
{
	Oid			relid = idem_storage_table_relid(t);
	ScanPosition *pos;
	bool		found;

	if (positions == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ScanPosition);
		ctl.hcxt = TopMemoryContext;
		positions = hash_create("idempotency purge positions", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	pos = (ScanPosition *) hash_search(positions, &relid, HASH_ENTER, &found);
	if (!found)
		pos->next = 0;
	return &pos->next;
}

/*
 * idem.purge_delay, giving the CPU and the WAL back to the requests.
 */
static void
purge_pause(void)
{
	TimestampTz end;

	if (idem_purge_delay <= 0)
		return;
	end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), idem_purge_delay);
	for (;;)
	{
		long		ms;

		CHECK_FOR_INTERRUPTS();
		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end);
		if (ms <= 0)
			break;
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * The loop of every purge: batch(want, arg, deleted) deletes up to want
 * records, adds them to *deleted and returns whether there may be more;
 * batches follow one another, at most batch_size each, with a pause
 * between two of them once something was deleted (*deleted counts what
 * earlier loops of the same purge deleted too), until limit records went
 * (limit < 0: no limit).  Returns true when a batch said there were no
 * more.
 */
bool
idem_purge_batches(int64 limit, int batch_size, IdemPurgeBatch batch,
				   void *arg, int64 *deleted)
{
	while (limit < 0 || *deleted < limit)
	{
		int			want = batch_size;

		if (*deleted > 0)
			purge_pause();
		if (limit >= 0 && limit - *deleted < want)
			want = (int) (limit - *deleted);
		if (!batch(want, arg, deleted))
			return true;
	}
	return false;
}

/* A scan of one table's expired records, batch by batch */
typedef struct RangeScan
{
	IdemTable  *table;
	BlockNumber *position;
	struct PortalData *scan;
	TimestampTz now;
	bool		first_check;	/* no owner looked up yet */
	IdemExpired *rows;
	ItemPointerData *tids;
} RangeScan;

/* Whether an expired record goes: its owner, if any, must be gone */
static bool
purgeable(RangeScan *rs, const IdemExpired *row)
{
	bool		alive;

	if (row->committed)
		return true;
	/* a lease owner is alive while its lease runs */
	if (row->has_lease)
		return !idem_lease_alive(row->lease_expires_at);
	if (!row->has_owner)
	{
		rs->first_check = false;
		return true;
	}
	alive = idem_owner_alive(row->owner_pid, row->owner_started,
							 rs->first_check);
	rs->first_check = false;
	return !alive;
}

/* An IdemPurgeBatch: the next batch of a RangeScan */
static bool
range_batch(int want, void *arg, int64 *deleted)
{
	RangeScan  *rs = (RangeScan *) arg;
	int			nrows;
	int			ntids = 0;

	nrows = idem_storage_expired_fetch(rs->scan, want, rs->rows);
	if (nrows == 0)
		return false;
	for (int i = 0; i < nrows; i++)
	{
		/* the next call goes on from here */
		*rs->position = ItemPointerGetBlockNumber(&rs->rows[i].tid);
		if (purgeable(rs, &rs->rows[i]))
			rs->tids[ntids++] = rs->rows[i].tid;
	}
	if (ntids > 0)
		*deleted += idem_storage_delete_expired(rs->table, rs->tids, ntids,
												rs->now);
	return true;
}

/*
 * Deletes up to limit (< 0: all) expired records of the given scopes whose
 * tuples lie in blocks [from, to).  Adds what it deleted to *deleted;
 * returns true when it ran out of records.
 */
static bool
purge_range(RangeScan *rs, BlockNumber from, BlockNumber to, int64 limit,
			ArrayType *scopes, int64 *deleted)
{
	bool		exhausted;

	rs->scan = idem_storage_expired_open(rs->table, rs->now, scopes, from, to);
	exhausted = idem_purge_batches(limit, PURGE_BATCH, range_batch, rs,
								   deleted);
	idem_storage_expired_close(rs->scan);
	rs->scan = NULL;
	return exhausted;
}

/*
 * Purges one table (or shard): from where the last purge stopped to the
 * end, then the beginning.
 */
static void
purge_table(RangeScan *rs, int64 limit, ArrayType *scopes, int64 *deleted)
{
	BlockNumber start;

	rs->position = scan_position(rs->table);
	start = *rs->position;
	if (purge_range(rs, start, InvalidBlockNumber, limit, scopes, deleted))
	{
		*rs->position = 0;
		if (start > 0 &&
			purge_range(rs, 0, start, limit, scopes, deleted))
			*rs->position = start;
	}
}

/*
 * Deletes up to limit (< 0: all) expired records of the given scopes (NULL:
 * all): committed ones, and in-flight ones whose owner is gone.  When
 * Citus distributes the key table, this purges the shards placed on this
 * node.
 */
int64
idem_purge_expired(int64 limit, TimestampTz now, ArrayType *scopes)
{
	IdemStorageCall call;
	RangeScan	rs;
	int64		deleted = 0;
	int			ntables = idem_storage_ntables();

	memset(&rs, 0, sizeof(rs));
	rs.now = now;
	rs.first_check = true;
	idem_storage_begin(&call);
	rs.rows = palloc(sizeof(IdemExpired) * PURGE_BATCH);
	rs.tids = palloc(sizeof(ItemPointerData) * PURGE_BATCH);

	for (int i = 0; i < ntables && (limit < 0 || deleted < limit); i++)
	{
		rs.table = idem_storage_table(i);
		if (rs.table != NULL)
			purge_table(&rs, limit, scopes, &deleted);
	}

	pfree(rs.tids);
	pfree(rs.rows);
	idem_storage_end(&call);
	return deleted;
}
