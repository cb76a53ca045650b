/*-------------------------------------------------------------------------
 *
 * idem_lock.c
 *	  Key locks, the session's owned keys, and when their locks go.
 *
 * The owner of an in-flight reservation holds a session-level advisory lock
 * on the key, in a lock class of our own (IDEM_LOCKTAG_CLASS), until the
 * transaction that commits or releases the reservation has committed, or
 * until its session ends.  Waiters block on that lock in the lock manager,
 * so they wake as soon as it is released, and the deadlock detector,
 * statement_timeout and pg_cancel_backend() all apply to them.
 *
 * The lock alone does not say who owns a key: pg_advisory_unlock_all() and
 * DISCARD ALL drop it too.  The record names its owner, and idem_owner.c
 * tells a live owner from a gone one and abandons the session's records
 * at DISCARD ALL before their locks go.  This file neither reads nor
 * writes records.
 *
 * Each key this session has locked is remembered in OwnedKeys with the
 * (sub)transaction that acquired it and the one that finished it (commit or
 * release).  At the end of a transaction:
 *	- commit: finished keys are unlocked and forgotten;
 *	- abort: keys acquired in it are unlocked and forgotten (the record
 *	  went with the transaction); finished keys stay owned, since their
 *	  commit or release never happened.
 * Subtransactions do the same at their own level.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "idempotency.h"

/* Hash key of OwnedKeys: the scope and the key, NUL-terminated */
typedef struct OwnedKeyTag
{
	char		scope[IDEM_MAX_KEY_BYTES + 1];
	char		key[IDEM_MAX_KEY_BYTES + 1];
} OwnedKeyTag;

typedef struct OwnedKey
{
	OwnedKeyTag tag;			/* hash key: must be first */
	LOCKTAG		locktag;
	SubTransactionId acquired;	/* lock taken in this transaction, or
								 * InvalidSubTransactionId */
	SubTransactionId finished;	/* committed or released in this
								 * transaction, or InvalidSubTransactionId */
	bool		xact_only;		/* taken for this transaction's writes only
								 * (a lease owner's key), never owned */
} OwnedKey;

static HTAB *OwnedKeys = NULL;

/* true while some entry has acquired or finished set */
static bool xact_pending = false;

static void
owned_tag(const IdemKey *k, OwnedKeyTag *tag)
{
	/* the argument checkers keep longer ones out; never trust that here */
	if (k->scope_len < 0 || k->scope_len > IDEM_MAX_KEY_BYTES ||
		k->key_len < 0 || k->key_len > IDEM_MAX_KEY_BYTES)
		elog(ERROR, "idempotency key of %d bytes in a scope of %d bytes does not fit a lock tag",
			 k->key_len, k->scope_len);
	memset(tag, 0, sizeof(OwnedKeyTag));
	memcpy(tag->scope, k->scope, k->scope_len);
	memcpy(tag->key, k->key, k->key_len);
}

void
idem_key_locktag(const IdemKey *k, LOCKTAG *tag)
{
	uint64		h = idem_key_hash64(k);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 IDEM_LOCKTAG_CLASS);
}

/*
 * Takes the lock if it is free now.
 */
bool
idem_lock_try(const LOCKTAG *tag, LOCKMODE mode)
{
	return LockAcquire(tag, mode, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Waits at most timeout_ms for the lock.  Returns false on timeout.
 *
 * The lock manager has no timed acquire, but it honours lock_timeout: we
 * set it for this one wait and catch its error in a subtransaction, which
 * also cleans up the wait queue.  Any other error (cancel,
 * statement_timeout, deadlock) propagates.
 *
 * The lock may be granted at the very moment the timeout (or a cancel)
 * fires: LockErrorCleanup() then records the grant and the error is raised
 * all the same.  Ours is a session lock, which the subtransaction's abort
 * does not release, so we look: after a timeout a granted lock is simply
 * ours; before another error propagates it is given back, or it would stay
 * held, unowned, until the session ends and block the key for everybody.
 */
bool
idem_lock_wait(const LOCKTAG *tag, LOCKMODE mode, int timeout_ms)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	int			save_lock_timeout = LockTimeout;
	volatile bool acquired = false;

	Assert(timeout_ms > 0);
	Assert(!LockHeldByMe(tag, mode));

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);

	PG_TRY();
	{
		LockTimeout = timeout_ms;
		(void) LockAcquire(tag, mode, true, false);
		LockTimeout = save_lock_timeout;
		acquired = true;

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		LockTimeout = save_lock_timeout;
		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();

		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;

		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
		{
			if (LockHeldByMe(tag, mode))
				LockRelease(tag, mode, true);
			ReThrowError(edata);
		}
		FreeErrorData(edata);
		/* granted as the timeout fired */
		acquired = LockHeldByMe(tag, mode);
	}
	PG_END_TRY();

	return acquired;
}

/*
 * Releases a session lock if we still hold it: pg_advisory_unlock_all() may
 * have taken it already, and releasing a lock we do not hold would warn.
 */
void
idem_lock_release(const LOCKTAG *tag, LOCKMODE mode)
{
	if (LockHeldByMe(tag, mode))
		LockRelease(tag, mode, true);
}

static OwnedKey *
owned_lookup(const IdemKey *k, HASHACTION action, bool *found)
{
	OwnedKeyTag tag;

	owned_tag(k, &tag);
	return (OwnedKey *) hash_search(OwnedKeys, &tag, action, found);
}

/*
 * Records that this session now holds the lock of k.  newly: it was just
 * taken, in the current subtransaction, so an abort of it releases the lock
 * (call this right after the lock is granted, before anything can fail);
 * otherwise the lock belongs to a reservation this session already owns.
 */
void
idem_own_acquired(const IdemKey *k, const LOCKTAG *tag, bool newly)
{
	OwnedKey   *entry;
	bool		found;

	entry = owned_lookup(k, HASH_ENTER, &found);
	if (!found)
	{
		entry->locktag = *tag;
		entry->acquired = InvalidSubTransactionId;
		entry->finished = InvalidSubTransactionId;
		entry->xact_only = false;
	}
	/* a new reservation supersedes a commit or release made earlier */
	entry->finished = InvalidSubTransactionId;
	if (newly && entry->acquired == InvalidSubTransactionId)
	{
		entry->acquired = GetCurrentSubTransactionId();
		xact_pending = true;
	}
}

/*
 * The reservation of k was committed or released: unlock once the current
 * transaction commits.
 */
void
idem_own_finished(const IdemKey *k)
{
	OwnedKey   *entry;
	bool		found;

	entry = owned_lookup(k, HASH_FIND, &found);
	if (entry == NULL)
		return;
	if (entry->finished == InvalidSubTransactionId)
		entry->finished = GetCurrentSubTransactionId();
	xact_pending = true;
}

/*
 * k's lock was taken for this transaction's writes to a lease owner's
 * record: it goes when the transaction ends, whatever happens, and the
 * session never owns the key.
 */
void
idem_own_for_transaction(const IdemKey *k)
{
	OwnedKey   *entry;
	bool		found;

	entry = owned_lookup(k, HASH_FIND, &found);
	if (entry == NULL)
		return;
	if (entry->acquired != InvalidSubTransactionId)
		entry->xact_only = true;
	if (entry->finished == InvalidSubTransactionId)
		entry->finished = GetCurrentSubTransactionId();
	xact_pending = true;
}

/*
 * Drops k's lock now (it was taken only to look, e.g. the key turned out
 * to be committed already).  Only for a key acquired in this transaction
 * and not owned before.
 */
void
idem_own_forget(const IdemKey *k)
{
	OwnedKey   *entry;
	bool		found;

	entry = owned_lookup(k, HASH_FIND, &found);
	if (entry == NULL)
		return;
	idem_lock_release(&entry->locktag, ExclusiveLock);
	hash_search(OwnedKeys, &entry->tag, HASH_REMOVE, NULL);
}

/*
 * Does this session hold k's lock for a reservation it owns (and has not
 * committed or released in this transaction)?  Only a hint: the record
 * decides.
 */
bool
idem_own_holds(const IdemKey *k)
{
	OwnedKey   *entry;
	bool		found;

	entry = owned_lookup(k, HASH_FIND, &found);
	return entry != NULL && entry->finished == InvalidSubTransactionId;
}

/*
 * The keys this session holds the lock of, palloc'd in the caller's memory
 * context: *n of them.
 */
IdemKey *
idem_own_keys(int *n)
{
	HASH_SEQ_STATUS status;
	OwnedKey   *entry;
	IdemKey    *keys;
	int			i = 0;

	*n = OwnedKeys == NULL ? 0 : (int) hash_get_num_entries(OwnedKeys);
	if (*n == 0)
		return NULL;
	keys = palloc(sizeof(IdemKey) * *n);
	hash_seq_init(&status, OwnedKeys);
	while ((entry = (OwnedKey *) hash_seq_search(&status)) != NULL)
	{
		keys[i].scope = pstrdup(entry->tag.scope);
		keys[i].scope_len = strlen(entry->tag.scope);
		keys[i].key = pstrdup(entry->tag.key);
		keys[i].key_len = strlen(entry->tag.key);
		i++;
	}
	return keys;
}

/*
 * Drops every lock of this session's keys now, and forgets them.
 */
void
idem_own_release_all(void)
{
	HASH_SEQ_STATUS status;
	OwnedKey   *entry;

	if (OwnedKeys == NULL)
		return;
	hash_seq_init(&status, OwnedKeys);
	while ((entry = (OwnedKey *) hash_seq_search(&status)) != NULL)
	{
		idem_lock_release(&entry->locktag, ExclusiveLock);
		hash_search(OwnedKeys, &entry->tag, HASH_REMOVE, NULL);
	}
	xact_pending = false;
}

static void
at_end_of_xact(bool commit)
{
	HASH_SEQ_STATUS status;
	OwnedKey   *entry;

	if (!xact_pending)
		return;
	xact_pending = false;

	hash_seq_init(&status, OwnedKeys);
	while ((entry = (OwnedKey *) hash_seq_search(&status)) != NULL)
	{
		bool		drop;

		if (commit)
			drop = entry->finished != InvalidSubTransactionId;
		else
			drop = entry->acquired != InvalidSubTransactionId;

		if (drop)
		{
			idem_lock_release(&entry->locktag, ExclusiveLock);
			hash_search(OwnedKeys, &entry->tag, HASH_REMOVE, NULL);
		}
		else
		{
			entry->acquired = InvalidSubTransactionId;
			entry->finished = InvalidSubTransactionId;
		}
	}
}

/*
 * Can the transaction be prepared (two-phase commit)?  Only when every key
 * it locked was locked for its own writes to lease owners' records: a
 * session owner's lock would have to outlive the transaction in this
 * session, which a prepared transaction leaves.  Citus prepares the
 * transactions that wrote on several workers.
 */
static bool
pending_xact_only(void)
{
	HASH_SEQ_STATUS status;
	OwnedKey   *entry;
	bool		all = true;

	hash_seq_init(&status, OwnedKeys);
	while ((entry = (OwnedKey *) hash_seq_search(&status)) != NULL)
	{
		if ((entry->acquired != InvalidSubTransactionId ||
			 entry->finished != InvalidSubTransactionId) && !entry->xact_only)
			all = false;
	}
	return all;
}

static void
idem_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (xact_pending && !pending_xact_only())
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has reserved, committed or released idempotency keys of session owners"),
						 errhint("Use lease owners in transactions that are prepared.")));
			break;
		case XACT_EVENT_PREPARE:

			/*
			 * The prepared transaction holds its rows; the locks for its
			 * writes are this session's, and go now.  Its waiters are not
			 * woken by its COMMIT PREPARED (another session runs it):
			 * they look again after a while (idem_wake.c).
			 */
			at_end_of_xact(true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* the commit is visible to others now: wake the waiters */
			at_end_of_xact(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			at_end_of_xact(false);
			break;
		default:
			break;
	}
}

static void
idem_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	OwnedKey   *entry;

	if (!xact_pending)
		return;
	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;

	hash_seq_init(&status, OwnedKeys);
	while ((entry = (OwnedKey *) hash_seq_search(&status)) != NULL)
	{
		if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			if (entry->acquired == mySubid)
				entry->acquired = parentSubid;
			if (entry->finished == mySubid)
				entry->finished = parentSubid;
		}
		else
		{
			if (entry->acquired == mySubid)
			{
				idem_lock_release(&entry->locktag, ExclusiveLock);
				hash_search(OwnedKeys, &entry->tag, HASH_REMOVE, NULL);
				continue;
			}
			if (entry->finished == mySubid)
				entry->finished = InvalidSubTransactionId;
		}
	}
}

void
idem_lock_init(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(OwnedKeyTag);
	ctl.entrysize = sizeof(OwnedKey);
	ctl.hcxt = TopMemoryContext;
	OwnedKeys = hash_create("idempotency owned keys", 16, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	RegisterXactCallback(idem_xact_callback, NULL);
	RegisterSubXactCallback(idem_subxact_callback, NULL);
}
