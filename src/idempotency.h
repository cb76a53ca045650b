/*-------------------------------------------------------------------------
 *
 * idempotency.h
 *	  Declarations shared by the files of the idempotency server module.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEMPOTENCY_H
#define IDEMPOTENCY_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "storage/block.h"
#include "storage/itemptr.h"
#include "storage/lock.h"
#include "access/tupdesc.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

/* SQLSTATEs of the contract */
#define ERRCODE_IDEM_HASH_MISMATCH	MAKE_SQLSTATE('I','K','4','2','2')
#define ERRCODE_IDEM_IN_FLIGHT		MAKE_SQLSTATE('I','K','4','0','9')
#define ERRCODE_IDEM_NOT_FOUND		MAKE_SQLSTATE('I','K','4','0','4')

/* Longest key and scope, and longest request hash, in bytes */
#define IDEM_MAX_KEY_BYTES		255
#define IDEM_MAX_HASH_BYTES		1024

/*
 * The field4 of our advisory lock tags.  pg_advisory_lock() and friends use
 * 1 and 2, so the application's advisory locks never collide with ours.
 */
#define IDEM_LOCKTAG_CLASS		0x4944	/* 'I' 'D' */

/* settings (idempotency.c) */
extern int	idem_default_ttl;		/* seconds */
extern int	idem_wait_timeout;		/* milliseconds, 0 = do not wait */
extern int	idem_max_body_bytes;	/* bytes */
extern bool idem_async_reserve;
extern int	idem_max_ttl;			/* seconds */
extern int	idem_max_header_bytes;	/* bytes */
extern int	idem_purge_delay;		/* milliseconds */
extern int	idem_lease;				/* milliseconds, 0 = session owners */

/* A (scope, key) pair, already validated */
typedef struct IdemKey
{
	const char *scope;
	const char *key;
	int			scope_len;
	int			key_len;
} IdemKey;

/* One row of the key table, as read by idem_storage_read() */
typedef struct IdemRecord
{
	bool		found;
	bool		committed;		/* state = 'committed', else in flight */
	char	   *request_hash;	/* NULL when none */
	bool		status_null;
	int32		status;
	Jsonb	   *headers;		/* NULL when none */
	bytea	   *body;			/* NULL when none */
	int32		attempt;
	Interval	ttl;
	TimestampTz created_at;
	TimestampTz expires_at;
	bool		has_owner;		/* owner_pid / owner_started are set */
	int32		owner_pid;
	TimestampTz owner_started;
	char	   *owner_token;	/* NULL when none */
	char	  **fenced_tokens;	/* lease owners that takeovers replaced */
	int			nfenced;
	bool		has_lease;		/* lease-owned: lease, lease_expires_at set */
	Interval	lease;
	TimestampTz lease_expires_at;
} IdemRecord;

/*
 * Who a reservation is made for: the calling session (lease = false), or
 * the holder of a token until lease_expires_at.  A session owner may carry
 * a token too, which its later calls must repeat.
 */
typedef struct IdemOwner
{
	const char *token;			/* NULL when none */
	bool		lease;			/* lease-owned, else session-owned */
	Interval	lease_len;		/* when lease-owned */
	TimestampTz lease_expires_at;	/* when lease-owned: set by the write
									 * that takes or renews the lease */
} IdemOwner;

/* The lease on a key table distributed by Citus when none is given */
#define IDEM_DISTRIBUTED_LEASE_US	(30 * USECS_PER_SEC)

/* Longest owner token, in bytes */
#define IDEM_MAX_TOKEN_BYTES	255

/* an error the caller caused: counted, then raised */
#define user_error(rest) \
	do { \
		idem_count(IDEM_C_ERRORS, 1); \
		ereport(ERROR, rest); \
	} while (0)

/*
 * The detail of an error about one key: "Key "k" in scope "s"", then the
 * rest of the sentence (a format, "." for none) with its arguments.
 */
#define KEY_DETAIL(k, rest, ...) \
	errdetail("Key \"%s\" in scope \"%s\"" rest, (k)->key, (k)->scope, \
			  ##__VA_ARGS__)

/* idem_stats.c: counters in shared memory (only when preloaded) */
typedef enum IdemCounter
{
	IDEM_C_RESERVES,			/* idem_reserve calls that returned */
	IDEM_C_FRESH,				/* ... fresh, attempt 1 */
	IDEM_C_TAKEOVERS,			/* ... fresh, taken over from a gone owner */
	IDEM_C_REPLAYS,				/* ... a committed response */
	IDEM_C_WAITS,				/* reserves that waited for an owner */
	IDEM_C_WAIT_US,				/* total time they waited, microseconds */
	IDEM_C_WAIT_TIMEOUTS,		/* IK409 raised by reserve */
	IDEM_C_MISMATCHES,			/* IK422 */
	IDEM_C_COMMITS,				/* responses stored */
	IDEM_C_RELEASES,			/* reservations released */
	IDEM_C_PURGED,				/* records deleted by purge */
	IDEM_C_EVICTED,				/* records evicted by an operator */
	IDEM_C_ERRORS,				/* calls that raised an error */
	IDEM_NUM_COUNTERS
} IdemCounter;

extern void idem_stats_init(void);
extern void idem_count(IdemCounter counter, uint64 n);

/* idem_worker.c: the purge launcher and its purge workers */
extern char *idem_purge_database;	/* "" = every database */
extern int	idem_purge_interval;	/* seconds */
extern int	idem_purge_batch_size;
extern int	idem_purge_max_workers;
extern void idem_worker_register(void);

/* idem_args.c: arguments of the SQL-callable functions */

/*
 * Is argument i NULL, or left out of the call (and so its default)?  See
 * idem_args.c.
 */
static inline bool
idem_arg_isnull(FunctionCallInfo fcinfo, int i)
{
	return i >= PG_NARGS() || PG_ARGISNULL(i);
}

extern void idem_arg_key(FunctionCallInfo fcinfo, int keyarg, int scopearg,
						 IdemKey *k);
extern char *idem_arg_hash(FunctionCallInfo fcinfo, int arg, const IdemKey *k);
extern char *idem_arg_token(FunctionCallInfo fcinfo, int arg, const IdemKey *k,
							bool required);
extern void idem_arg_ttl(FunctionCallInfo fcinfo, int arg, const IdemKey *k,
						 TimestampTz now, Interval *ttl);
extern int64 idem_arg_wait(FunctionCallInfo fcinfo, int arg, const IdemKey *k);
extern void idem_arg_owner(FunctionCallInfo fcinfo, int tokenarg, int leasearg,
						   const IdemKey *k, TimestampTz now, IdemOwner *owner);
extern bool idem_arg_lease(FunctionCallInfo fcinfo, int arg, const IdemKey *k,
						   TimestampTz now, Interval *lease);
extern void idem_require_leases(const IdemKey *k);
extern char *idem_new_token(void);
extern int64 idem_interval_usecs(const Interval *iv);
extern TimestampTz idem_add_interval(TimestampTz ts, const Interval *iv);
extern char *idem_interval_text(const Interval *iv);

/* idem_hash.c */
extern char *idem_sha256_framed(int nparts, const char *const *parts,
								const size_t *lens);
extern uint64 idem_key_hash64(const IdemKey *k);

/* idem_storage.c */
extern bool idem_storage_has_leases(void);
extern bool idem_storage_distributed(void);
extern bool idem_storage_coordinator(void);
extern bool idem_storage_is_remote(const IdemKey *k);
extern const char *idem_storage_schema(void);
extern void idem_storage_read(const IdemKey *k, IdemRecord *rec);
extern bool idem_storage_insert(const IdemKey *k, const char *request_hash,
								const Interval *ttl, TimestampTz now,
								IdemOwner *owner, IdemRecord *rec);
extern bool idem_storage_renew(const IdemKey *k, const char *request_hash,
							   int32 attempt, const Interval *ttl,
							   TimestampTz now, IdemOwner *owner,
							   IdemRecord *rec);
extern bool idem_storage_extend(const IdemKey *k, IdemOwner *owner,
								TimestampTz now);
extern bool idem_storage_commit(const IdemKey *k, const char *request_hash,
								const char *token, bool status_null, int32 status,
								Jsonb *headers, bytea *body, TimestampTz now);
extern bool idem_storage_commit_mine(const IdemKey *k, const char *request_hash,
									 const char *token,
									 bool status_null, int32 status,
									 Jsonb *headers, bytea *body,
									 TimestampTz now, bool *was_lease);
extern bool idem_storage_delete(const IdemKey *k);
extern bool idem_storage_evict(const IdemKey *k);
extern void idem_storage_abandon(const IdemKey *k);
extern char **idem_storage_confined_scopes(Oid role, int *n,
										  Oid *confinement_relid);
extern void idem_storage_set_logged(bool logged);

/* idem_storage.c, for the purge: the tables, their expired records */
typedef struct KeyTable IdemTable;

/* SPI connected, running as the owner of the key table */
typedef struct IdemStorageCall
{
	Oid			save_userid;
	int			save_sec_context;
} IdemStorageCall;

/* A record that expired, as the purge sees it */
typedef struct IdemExpired
{
	ItemPointerData tid;
	bool		committed;
	bool		has_owner;		/* owner_pid / owner_started are set */
	int32		owner_pid;
	TimestampTz owner_started;
	bool		has_lease;		/* lease_expires_at is set */
	TimestampTz lease_expires_at;
} IdemExpired;

extern void idem_storage_begin(IdemStorageCall *call);
extern void idem_storage_end(IdemStorageCall *call);
extern int	idem_storage_ntables(void);
extern IdemTable *idem_storage_table(int i);
extern Oid	idem_storage_table_relid(const IdemTable *t);
extern struct PortalData *idem_storage_expired_open(IdemTable *t,
													TimestampTz now,
													struct ArrayType *scopes,
													BlockNumber from,
													BlockNumber to);
extern int	idem_storage_expired_fetch(struct PortalData *scan, int want,
									   IdemExpired *rows);
extern void idem_storage_expired_close(struct PortalData *scan);
extern uint64 idem_storage_delete_expired(IdemTable *t,
										  const ItemPointerData *tids,
										  int ntids, TimestampTz now);

/* idem_purge.c: deleting expired records, in batches */
typedef bool (*IdemPurgeBatch) (int want, void *arg, int64 *deleted);
extern bool idem_purge_batches(int64 limit, int batch_size,
							   IdemPurgeBatch batch, void *arg,
							   int64 *deleted);
extern int64 idem_purge_expired(int64 limit, TimestampTz now,
								struct ArrayType *scopes);
/* idem_tenant.c */
extern void idem_check_scope(const char *scope);
extern struct ArrayType *idem_confined_scopes(void);

/* idem_lock.c */
extern void idem_lock_init(void);
extern void idem_key_locktag(const IdemKey *k, LOCKTAG *tag);
extern bool idem_lock_try(const LOCKTAG *tag, LOCKMODE mode);
extern bool idem_lock_wait(const LOCKTAG *tag, LOCKMODE mode, int timeout_ms);
extern void idem_lock_release(const LOCKTAG *tag, LOCKMODE mode);
extern void idem_own_acquired(const IdemKey *k, const LOCKTAG *tag,
							  bool newly);
extern void idem_own_finished(const IdemKey *k);
extern void idem_own_for_transaction(const IdemKey *k);
extern void idem_own_forget(const IdemKey *k);
extern bool idem_own_holds(const IdemKey *k);
extern IdemKey *idem_own_keys(int *n);
extern void idem_own_release_all(void);

/* idem_owner.c: whether owners are there; DISCARD ALL */
extern bool idem_owner_is_me(int32 pid, TimestampTz started);
extern bool idem_owner_alive(int32 pid, TimestampTz started, bool refresh);
extern bool idem_lease_alive(TimestampTz lease_expires_at);
extern void idem_abandon_all(void);

/* idem_funcs.c */
extern TupleDesc idem_reservation_tupdesc(FunctionCallInfo fcinfo);

/* idem_route.c: calls routed to the node of a key's shard (Citus) */
extern Datum idem_route_reserve(FunctionCallInfo fcinfo, const IdemKey *k,
								const char *hash, const Interval *ttl,
								int64 wait_us, const IdemOwner *owner);
extern Datum idem_route_commit(FunctionCallInfo fcinfo, const IdemKey *k,
							   const char *hash, bool status_null,
							   int32 status, bytea *body, Jsonb *headers,
							   const char *token);
extern Datum idem_route_release(FunctionCallInfo fcinfo, const IdemKey *k,
								const char *token);
extern Datum idem_route_get(FunctionCallInfo fcinfo, const IdemKey *k,
							bool *isnull);
extern Datum idem_route_extend(FunctionCallInfo fcinfo, const IdemKey *k,
							   const char *token, const Interval *lease);
extern int64 idem_route_purge_workers(int64 limit);

/* idem_wake.c: waiters of lease-owned keys */
typedef struct IdemWaiter
{
	uint32		slot;			/* condition variable of the key */
	bool		prepared;		/* on its wait list */
	int			backoff_ms;		/* without shared memory */
} IdemWaiter;

extern void idem_wake_shmem_init(void);

extern void idem_wake_init(void);
extern void idem_waiter_init(IdemWaiter *w, const IdemKey *k);
extern bool idem_waiter_prepare(IdemWaiter *w);
extern void idem_waiter_sleep(IdemWaiter *w, int timeout_ms);
extern void idem_waiter_done(IdemWaiter *w);
extern void idem_wake_at_commit(const IdemKey *k);

/* idem_hint.c: where records were last seen in the heap */
struct TupleTableSlot;
extern void idem_hint_shmem_init(void);
extern void idem_hint_set(Relation rel, const IdemKey *k, ItemPointer tid,
						  bool written);
extern bool idem_hint_fetch(Relation rel, const IdemKey *k,
							struct TupleTableSlot *slot);

#endif							/* IDEMPOTENCY_H */
