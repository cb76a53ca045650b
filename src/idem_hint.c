/*-------------------------------------------------------------------------
 *
 * idem_hint.c
 *	  Where a key's record was last seen in the heap: hints that let a
 *	  look-up skip the descent of the primary key.
 *
 * A hint maps a hash of (database, relation file, scope, key) to the tid of
 * the root of the record's HOT chain, the tid its primary key entry points
 * to.  A look-up that finds a hint fetches the tuple there as an index scan
 * would (following the HOT chain, with the same snapshot) and takes it only
 * if it is visible and has the same scope and key.  At most one version of
 * a key is visible to that snapshot, so that tuple is the one the primary
 * key would have given.  Anything else is a miss and the caller probes the
 * index: a chain pruned away, a record updated to another page, deleted or
 * purged, or another key's hint in the same slot.  A hint is therefore never
 * trusted, only checked, and needs no invalidation.
 *
 * The hints are a direct-mapped table of 64-bit words, each read and written
 * as a whole without a lock (16 bits of the hash beyond the slot's, the
 * block and the offset): a hint overwritten or stale costs one fetch at
 * most.  With shared_preload_libraries the table is in shared memory,
 * idem.location_hints entries, so that a retry served by another connection
 * finds the hint its first request left; without, each backend keeps a
 * small table of its own.
 *
 * The tid's block may lie past the end of the relation: VACUUM truncates
 * empty pages at the end of a heap.  It does so holding an AccessExclusive
 * lock and tells every backend to close the relation's smgr before it
 * truncates the file (smgrtruncate); a look-up runs under a lock that
 * conflicts with it, taken before the look-up, so the number of blocks the
 * backend's smgr last saw is a lower bound that no truncation has passed.
 * A block beyond it is checked against the file's size first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relscan.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "port/pg_bitutils.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/smgr.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "idempotency.h"

/* entries of a backend's own table, when not preloaded */
#define LOCAL_HINTS		4096

/* the 16 bits of a key's hash, or of a hint word, that a slot's index leaves */
#define HINT_TAG(h)		((uint64) ((h) >> 48))

static int	idem_location_hints = 262144;

static pg_atomic_uint64 *hints = NULL;
static uint64 hint_mask = 0;
static bool preloaded = false;	/* the shared table, or none, is decided */

/* look-ups of this backend that probed the index and found the record */
static uint32 lookups_probed = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* the GUC rounded down to a power of two; 0 when off */
static uint64
shared_entries(void)
{
	if (idem_location_hints <= 0)
		return 0;
	return pg_prevpower2_64((uint64) idem_location_hints);
}

static void
hint_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(pg_atomic_uint64) * shared_entries()));
}

static void
hint_shmem_startup(void)
{
	uint64		n = shared_entries();
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	preloaded = true;
	if (n == 0)
		return;					/* off: no local table either */

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	hints = ShmemInitStruct("idempotency location hints",
							sizeof(pg_atomic_uint64) * n, &found);
	if (!found)
	{
		for (uint64 i = 0; i < n; i++)
			pg_atomic_init_u64(&hints[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
	hint_mask = n - 1;
}

/*
 * Called from _PG_init while shared_preload_libraries is processed.
 */
void
idem_hint_shmem_init(void)
{
	DefineCustomIntVariable("idem.location_hints",
							"Entries of the shared table of where records were last seen.",
							"A replay whose key is found there fetches its record without descending the primary key; each entry takes 8 bytes of shared memory. 0 turns the hints off.",
							&idem_location_hints,
							262144, 0, 64 * 1024 * 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = hint_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = hint_shmem_startup;
}

/* the table, made for this backend on first use when not preloaded */
static bool
hint_table(void)
{
	if (hints != NULL)
		return true;
	if (preloaded)
		return false;			/* with idem.location_hints = 0 */

	hints = MemoryContextAlloc(TopMemoryContext,
							   sizeof(pg_atomic_uint64) * LOCAL_HINTS);
	for (int i = 0; i < LOCAL_HINTS; i++)
		pg_atomic_init_u64(&hints[i], 0);
	hint_mask = LOCAL_HINTS - 1;
	return true;
}

static uint64
hint_hash(Relation rel, const IdemKey *k)
{
	uint64		h;

	h = ((uint64) MyDatabaseId << 32) | rel->rd_node.relNode;
	h = hash_bytes_extended((const unsigned char *) k->scope, k->scope_len, h);
	return hash_bytes_extended((const unsigned char *) k->key, k->key_len, h);
}

/*
 * Remembers that the HOT chain of k's record starts at tid.  A write of the
 * record (written) takes the slot whatever it held: the keys just written
 * are the ones whose retries come next.  A look-up that had to probe the
 * index takes it when it is empty or holds k's own hint (gone stale), and
 * otherwise one time in eight: reading more keys than the table holds then
 * writes a shared cache line on few look-ups and pushes few hints of
 * others out, while hints of a dropped table or of keys long gone are still
 * replaced in time.
 */
void
idem_hint_set(Relation rel, const IdemKey *k, ItemPointer tid, bool written)
{
	uint64		h;
	uint64		word;
	uint64		old;

	if (!hint_table())
		return;
	h = hint_hash(rel, k);
	word = (HINT_TAG(h) << 48) |
		((uint64) ItemPointerGetBlockNumberNoCheck(tid) << 16) |
		ItemPointerGetOffsetNumberNoCheck(tid);
	old = pg_atomic_read_u64(&hints[h & hint_mask]);
	if (old == word)
		return;
	if (written || old == 0 || HINT_TAG(old) == HINT_TAG(h) ||
		(++lookups_probed & 7) == 0)
		pg_atomic_write_u64(&hints[h & hint_mask], word);
}

/*
 * Whether blkno exists in rel, which the caller has locked.
 */
static bool
block_exists(Relation rel, BlockNumber blkno)
{
	SMgrRelation smgr = RelationGetSmgr(rel);
	BlockNumber seen = smgr->smgr_cached_nblocks[MAIN_FORKNUM];

	if (seen != InvalidBlockNumber && blkno < seen)
		return true;
	/* asks the file, and keeps the answer in smgr_cached_nblocks */
	return blkno < RelationGetNumberOfBlocks(rel);
}

/*
 * Fetches into slot the tuple that the hint for k leads to, the member of
 * the HOT chain there that the latest snapshot sees (plus the caller's own
 * changes), as the primary key's entry for that chain would.  rel is the
 * key table, open and locked by the caller, who must check that the tuple
 * has k's scope and key.  A false return says nothing about whether k has
 * a record.
 *
 * Not under SERIALIZABLE, where the probe of the index also takes the
 * predicate lock on the index page that a record created later conflicts
 * with.
 */
bool
idem_hint_fetch(Relation rel, const IdemKey *k, TupleTableSlot *slot)
{
	uint64		h;
	uint64		word;
	ItemPointerData tid;
	IndexFetchTableData *fetch;
	Snapshot	snapshot;
	bool		call_again = false;
	bool		all_dead = false;
	bool		found;

	if (IsolationIsSerializable() || !hint_table())
		return false;
	h = hint_hash(rel, k);
	word = pg_atomic_read_u64(&hints[h & hint_mask]);
	if (word == 0 || HINT_TAG(word) != HINT_TAG(h))
		return false;
	ItemPointerSet(&tid, (BlockNumber) ((word >> 16) & 0xFFFFFFFF),
				   (OffsetNumber) (word & 0xFFFF));
	if (!OffsetNumberIsValid(ItemPointerGetOffsetNumber(&tid)) ||
		!block_exists(rel, ItemPointerGetBlockNumber(&tid)))
		return false;

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	fetch = table_index_fetch_begin(rel);
	found = table_index_fetch_tuple(fetch, &tid, snapshot, slot,
									&call_again, &all_dead);
	table_index_fetch_end(fetch);
	UnregisterSnapshot(snapshot);
	return found;
}
