/*-------------------------------------------------------------------------
 *
 * idem_wake.c
 *	  Waking the waiters of lease-owned keys.
 *
 * A session owner holds its key's lock until it commits, so its waiters
 * queue in the lock manager.  A lease owner holds no lock between its
 * statements (it may come back through another server connection), so its
 * waiters cannot: they wait inside their own idem_reserve statement for the
 * record to change.
 *
 * With shared_preload_libraries they sleep on one of WAKE_SLOTS condition
 * variables in shared memory, chosen by the key's hash.  The commit or
 * release of a lease-owned record broadcasts on its key's slot once the
 * transaction has committed, so that every woken waiter sees the change
 * (a waiter joins the slot's wait list before it reads the record, so a
 * broadcast between its read and its sleep is not lost).  Keys sharing a
 * slot only cost a spurious wake-up.
 *
 * Without preloading there is no shared memory: waiters read the record
 * again after a short back-off, 1 ms doubling to MAX_BACKOFF_MS.
 *
 * Either way a waiter sleeps at most until the owner's lease runs out or
 * its own wait_timeout passes, whichever comes first, and wakes for
 * interrupts (cancel, statement_timeout, termination).  A woken waiter also
 * looks again after MAX_SLEEP_MS: a prepared transaction's COMMIT PREPARED
 * runs in another session, which has nobody to wake.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/wait_event.h"

#include "idempotency.h"

#define WAKE_SLOTS		1024	/* condition variables; a power of 2 */
#define MAX_BACKOFF_MS	8		/* re-read period without shared memory */
#define MAX_PENDING		64		/* slots remembered per transaction */
#define MAX_SLEEP_MS	1000	/* a woken waiter's longest sleep: a commit
								 * that wakes nobody (COMMIT PREPARED, made by
								 * another session) is seen this late */

typedef struct IdemWakeShared
{
	ConditionVariable cv[WAKE_SLOTS];
} IdemWakeShared;

static IdemWakeShared *wake_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * Slots to broadcast on when the current transaction commits; more than
 * MAX_PENDING distinct ones and every slot is woken.
 */
static uint32 pending[MAX_PENDING];
static int	npending = 0;
static bool pending_all = false;

static void
wake_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(IdemWakeShared)));
}

static void
wake_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	wake_shared = ShmemInitStruct("idempotency wake-ups",
								  sizeof(IdemWakeShared), &found);
	if (!found)
	{
		for (int i = 0; i < WAKE_SLOTS; i++)
			ConditionVariableInit(&wake_shared->cv[i]);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init while shared_preload_libraries is processed.
 */
void
idem_wake_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = wake_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = wake_shmem_startup;
}

static uint32
key_slot(const IdemKey *k)
{
	return (uint32) (idem_key_hash64(k) & (WAKE_SLOTS - 1));
}

void
idem_waiter_init(IdemWaiter *w, const IdemKey *k)
{
	w->slot = key_slot(k);
	w->prepared = false;
	w->backoff_ms = 1;
}

/*
 * Gets ready to sleep.  Returns true when the waiter has just joined its
 * slot's wait list: the caller must then read the record again before it
 * sleeps, so that a change made before it joined is not slept through.
 */
bool
idem_waiter_prepare(IdemWaiter *w)
{
	if (wake_shared == NULL || w->prepared)
		return false;
	ConditionVariablePrepareToSleep(&wake_shared->cv[w->slot]);
	w->prepared = true;
	return true;
}

/*
 * Sleeps until woken or timeout_ms (> 0) has passed.
 */
void
idem_waiter_sleep(IdemWaiter *w, int timeout_ms)
{
	Assert(timeout_ms > 0);

	if (wake_shared != NULL)
	{
		Assert(w->prepared);
		(void) ConditionVariableTimedSleep(&wake_shared->cv[w->slot],
										   Min(timeout_ms, MAX_SLEEP_MS),
										   PG_WAIT_EXTENSION);
		return;
	}

	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Min(timeout_ms, w->backoff_ms), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	w->backoff_ms = Min(w->backoff_ms * 2, MAX_BACKOFF_MS);
}

/*
 * Leaves the wait list.  An error does it too (the abort of the
 * transaction cancels any condition variable sleep).
 */
void
idem_waiter_done(IdemWaiter *w)
{
	if (w->prepared)
		ConditionVariableCancelSleep();
	w->prepared = false;
}

/*
 * The lease-owned record of k was committed or released: wake its waiters
 * once the current transaction has committed.
 */
void
idem_wake_at_commit(const IdemKey *k)
{
	uint32		slot;

	if (wake_shared == NULL || pending_all)
		return;
	slot = key_slot(k);
	for (int i = 0; i < npending; i++)
	{
		if (pending[i] == slot)
			return;
	}
	if (npending == MAX_PENDING)
		pending_all = true;
	else
		pending[npending++] = slot;
}

static void
wake_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* the change is visible now */
			if (pending_all)
			{
				for (int i = 0; i < WAKE_SLOTS; i++)
					ConditionVariableBroadcast(&wake_shared->cv[i]);
			}
			else
			{
				for (int i = 0; i < npending; i++)
					ConditionVariableBroadcast(&wake_shared->cv[pending[i]]);
			}
			npending = 0;
			pending_all = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			npending = 0;
			pending_all = false;
			break;
		default:
			break;
	}
}

void
idem_wake_init(void)
{
	RegisterXactCallback(wake_xact_callback, NULL);
}
