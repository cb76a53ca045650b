/*-------------------------------------------------------------------------
 *
 * idem.h
 *	  libidem: the C client library of the idempotency extension.
 *
 * Runs a side effect at most once per idempotency key, with the keys kept
 * in PostgreSQL by the idempotency extension.  Built on libpq.
 *
 * Objects.  Every object the library returns is opaque and has exactly one
 * free function:
 *
 *	idem_conn		a connection handle		idem_free()
 *	idem_record		a reservation or stored response	idem_record_free()
 *	idem_response	a response being built by a handler	idem_response_free()
 *	idem_http		an HTTP policy (methods, exclusions)	idem_http_free()
 *
 * Strings returned by accessors (const char *) belong to the object they
 * came from and stay valid as long as it does, unless said otherwise.
 * Strings and buffers passed in are copied when the library keeps them;
 * the caller keeps ownership of everything it passes.
 *
 * Threads.  The library has no global mutable state.  An idem_conn, like a
 * PGconn, must be used by one thread at a time: give each thread its own
 * handle (or lock around a shared one).  An idem_record is immutable and may
 * be read from any thread.  An idem_http policy may be shared by any number
 * of threads once it is fully configured (idem_http_decide and idem_http_run
 * only read it).  The hash functions are thread-safe.
 *
 * While a runner (idem_run, idem_step, idem_http_run) runs the handler of a
 * lease-owned reservation, the library renews the lease from a thread of
 * its own, started before the handler is called and joined before the
 * commit, so that no thread of the library outlives the call.  That thread
 * uses a connection of its own, never the handle's PGconn and never the
 * handle's error state: the handler may go on using the handle (and a
 * wrapped PGconn) as usual.  The renewal connection is opened from the
 * handle's connection parameters (PQconninfo, so a wrapped PGconn works
 * too) the first time a lease is renewed (a handler shorter than a third
 * of its lease needs none), belongs to the handle and is closed by
 * idem_free().  The thread blocks every signal, so signals reach the
 * application's threads as before.  A handler that forks while the renewal
 * thread runs should only exec in the child (as idem exec does).
 *
 * Errors.  Calls return a status (an idem_outcome, or -1 / NULL); the
 * details live on the handle until the next call on it: idem_errcode(),
 * idem_errmsg(), idem_errdetail() and idem_sqlstate(), like PQerrorMessage.
 *
 * Observing.  idem_set_observer gives a handle a callback that the library
 * calls once at the end of every reserve, commit, release, get, extend and
 * purge, and of every runner, with what the call did and how long it took
 * (an idem_event), for logs, metrics and traces.  Without one, a call costs
 * one NULL check more, and reads no clock.
 *
 * Owners: sessions and leases.  Every handle has an owner token of its own
 * (128 random bits as hex, from OpenSSL's RAND_bytes, made by idem_connect
 * or idem_wrap, never shared), sent with every reserve, commit, release and
 * extend.  A reservation is owned by one of two kinds of owner:
 *
 *	a session	the server session (connection) that made it, the default on
 *				a direct connection.  Keep the handle, and its connection,
 *				between idem_reserve and idem_commit / idem_release; if the
 *				connection dies, the reservation goes to the next caller (who
 *				sees attempt + 1), unless this handle reconnects first and
 *				commits (a commit adopts a reservation whose owner is gone).
 *				The token keeps two handles on one server session apart: a
 *				second handle on the same PGconn (or, behind a transaction
 *				pooler, another client on the same server connection) gets
 *				IDEM_IN_FLIGHT, never the other's reservation.
 *	a lease		the handle's token, valid until the lease runs out: any
 *				connection may commit, so it works through transaction-mode
 *				poolers.  The runners renew the lease while the handler runs;
 *				a lease that ran out and was taken over is fenced: its commit
 *				is refused, and reported as IDEM_LEASE_LOST.
 *
 * A handle uses leases when idem_set_lease gave it a positive lease, when
 * the server's idem.lease is positive, or, when neither says, when its
 * connection goes through a proxy (the backend PID libpq reports differs
 * from the server's pg_backend_pid(), as behind PgBouncer, RDS Proxy or
 * Supavisor): then with a lease of 30 seconds.  idem_set_lease(conn, "0")
 * forces session owners.  The library finds these out with two small
 * queries at the first call on each connection (and after a reconnect).
 * Servers with an extension older than 1.2 have no leases: the handle then
 * uses session owners, without tokens, as before.
 *
 * Poolers.  Behind a proxy the library sends unnamed statements (named
 * prepared statements do not survive from one transaction to the next in
 * PgBouncer's transaction mode), and waits for a key in flight in slices of
 * at most a second, backing off when the pool queues it (see
 * idem_reserve), so that waiters never starve the owner of the pool's
 * connections.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_H
#define IDEM_H

#include <stddef.h>
#include <stdint.h>

#define IDEM_VERSION_MAJOR 1
#define IDEM_VERSION_MINOR 3
#define IDEM_VERSION_PATCH 0

/* lowercase hex SHA-256: 64 characters plus the terminating NUL */
#define IDEM_HASH_SIZE 65

/* the longest key the server accepts, in bytes */
#define IDEM_MAX_KEY_BYTES 255

#if defined(__GNUC__) && __GNUC__ >= 4
#define IDEM_API __attribute__((visibility("default")))
#else
#define IDEM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* libpq's connection type; include <libpq-fe.h> to use it as PGconn */
struct pg_conn;

typedef struct idem_conn idem_conn;
typedef struct idem_record idem_record;
typedef struct idem_response idem_response;
typedef struct idem_http idem_http;

/*
 * What a call did.  Each function below says which values it returns.
 *
 *	IDEM_FRESH		this call changed the key: reserve made you the owner
 *					(run the handler), commit stored the response, release
 *					dropped the reservation, a runner ran the handler
 *	IDEM_REPLAY		a committed response exists and is returned (reserve, get,
 *					runners); for commit: already committed, the first
 *					response stands and nothing was written
 *	IDEM_MISMATCH	the key was used with another request hash (IK422)
 *	IDEM_IN_FLIGHT	another live session holds the key: the wait timed out
 *					or was zero (IK409); get: the key is in flight
 *	IDEM_NOT_FOUND	no such key (get), nothing to release, or commit without
 *					a live reservation (IK404)
 *	IDEM_ERROR		anything else: see idem_errcode() and idem_errmsg()
 *	IDEM_LEASE_LOST	this handle's lease ran out and another caller took the
 *					key over (the token is fenced, IK409): nothing was stored
 *					or dropped; from a runner, the handler ran but its
 *					response was not stored (the new owner's will be).  Never
 *					a success.  (Added in 1.1, after IDEM_ERROR.)
 */
typedef enum idem_outcome
{
	IDEM_FRESH = 0,
	IDEM_REPLAY,
	IDEM_MISMATCH,
	IDEM_IN_FLIGHT,
	IDEM_NOT_FOUND,
	IDEM_ERROR,
	IDEM_LEASE_LOST
} idem_outcome;

/*
 * The kind of the last error on a handle (IDEM_OK after a call that
 * succeeded).  The server's SQLSTATE, when there was one, is mapped here.
 */
typedef enum idem_error
{
	IDEM_OK = 0,
	IDEM_ERR_CONNECTION,		/* cannot connect, or the connection was lost
								 * (class 08, 57P01..57P03) */
	IDEM_ERR_NO_EXTENSION,		/* the idempotency extension is not installed
								 * in this database (42883, 42704, 3F000) */
	IDEM_ERR_BAD_INPUT,			/* bad argument: NULL/empty/too long key, bad
								 * ttl or wait, NULL part (class 22 or caught
								 * before sending) */
	IDEM_ERR_MISMATCH,			/* IK422: request hash differs */
	IDEM_ERR_IN_FLIGHT,			/* IK409: in flight, wait timed out, or owned
								 * by another live session */
	IDEM_ERR_NOT_FOUND,			/* IK404: commit without a live reservation */
	IDEM_ERR_TOO_LARGE,			/* 54000: body above idem.max_body_bytes */
	IDEM_ERR_READ_ONLY,			/* 25006: a write on a hot standby */
	IDEM_ERR_HANDLER,			/* the callback reported failure; the
								 * reservation was released */
	IDEM_ERR_NO_RUN,			/* idem_step without a run id on the handle */
	IDEM_ERR_NOT_OWNER,			/* the operation needs a connection the handle
								 * owns (idem_reconnect on a wrapped PGconn) */
	IDEM_ERR_SERVER,			/* any other server error: see idem_sqlstate() */
	IDEM_ERR_PROTOCOL,			/* the server answered in an unexpected shape */
	IDEM_ERR_NOMEM,				/* out of memory */
	IDEM_ERR_LEASE_LOST			/* IK409 on a lease of this handle: it ran
								 * out and another caller took the key over
								 * (outcome IDEM_LEASE_LOST) */
} idem_error;

/*
 * Options of a call.  Zero-initialise and set what you need; a NULL
 * idem_opts pointer means all defaults.  The library copies nothing it does
 * not need after the call returns.
 */
typedef struct idem_opts
{
	const char *scope;			/* tenant / namespace; NULL or "" = the
								 * default scope '' */
	const char *request_hash;	/* fingerprint of the request, usually from
								 * idem_request_hash(); NULL = not checked */
	const char *ttl;			/* how long a committed response is kept, as
								 * a PostgreSQL interval ("24h", "7 days");
								 * NULL = the setting idem.default_ttl */
	const char *wait;			/* how long to wait for an in-flight key, as
								 * an interval ("30s", "250ms"); "0" = never
								 * wait; NULL = the setting idem.wait_timeout */
} idem_opts;

/* Counters of what a handle has done since it was made (see idem_counters). */
typedef struct idem_stats
{
	uint64_t	reserves;		/* idem_reserve calls that reached the server */
	uint64_t	fresh;			/* ... that made this handle the owner */
	uint64_t	takeovers;		/* ... of those, with attempt > 1 */
	uint64_t	replays;		/* ... that returned a committed response */
	uint64_t	mismatches;		/* IDEM_MISMATCH outcomes, all calls */
	uint64_t	in_flight;		/* IDEM_IN_FLIGHT outcomes, all calls */
	uint64_t	handler_runs;	/* callbacks run by the runners */
	uint64_t	commits;		/* responses stored by this handle */
	uint64_t	releases;		/* reservations dropped by this handle */
	uint64_t	errors;			/* IDEM_ERROR outcomes */
} idem_stats;

/* ---- version ---------------------------------------------------------- */

/* The library's version as MAJOR * 10000 + MINOR * 100 + PATCH. */
IDEM_API int idem_version(void);

/* Static names of the enum values ("fresh", "in_flight", ...), never NULL. */
IDEM_API const char *idem_outcome_name(idem_outcome outcome);
IDEM_API const char *idem_error_name(idem_error err);

/* ---- connections ------------------------------------------------------ */

/*
 * Opens a connection.  conninfo is a libpq connection string or URI
 * ("host=db1 dbname=shop", "postgresql://db1/shop"), or a bare database
 * name; NULL or "" uses libpq's environment (PGHOST, PGPORT, PGDATABASE,
 * PGSERVICE, ...), like psql.  application_name defaults to "libidem".
 * Returns a new handle with a new owner token, or NULL only when out of
 * memory (or when OpenSSL cannot produce random bytes for the token).
 * The connection may have failed: check idem_connected() or idem_errcode()
 * (IDEM_ERR_CONNECTION).  The handle owns its connection; free it with
 * idem_free().  Whether the extension is installed is found out at the
 * first call (IDEM_ERR_NO_EXTENSION).
 */
IDEM_API idem_conn *idem_connect(const char *conninfo);

/*
 * Wraps a connection the application owns.  The handle borrows conn:
 * idem_free() does not close it, and the application must not close it
 * while the handle lives.  The library prepares its statements on conn
 * (named "libidem1_*"; unnamed statements behind a proxy) and otherwise
 * leaves its session state alone; calls run inside the application's
 * transaction when one is open (and then wait for a key in flight in one
 * piece, in the server).  If the application drops the statements
 * (DEALLOCATE ALL, DISCARD ALL), the next call prepares them again, and
 * when they vanish again at once (an undetected transaction pooler) the
 * handle switches to unnamed statements; inside a transaction block such a
 * call fails with SQLSTATE 26000 (IDEM_ERR_SERVER), and calls work again
 * once that transaction has ended.  Each wrapped handle has its own owner
 * token, even on the same PGconn.  Returns NULL when conn is NULL or out
 * of memory.
 */
IDEM_API idem_conn *idem_wrap(struct pg_conn *conn);

/*
 * Frees the handle: closes the connection if the handle opened it (which
 * releases any reservation it still holds), leaves a wrapped one open.
 * NULL is allowed.
 */
IDEM_API void idem_free(idem_conn *conn);

/* 1 when the connection is up, else 0. */
IDEM_API int idem_connected(const idem_conn *conn);

/*
 * Closes and reopens a connection the handle owns (after the server
 * restarted, or a network failure).  Reservations of the old session are
 * gone or will be taken over; a commit after reconnecting adopts one
 * nobody has taken over yet.  Returns 0, or -1 (IDEM_ERR_CONNECTION;
 * IDEM_ERR_NOT_OWNER on a wrapped connection).
 */
IDEM_API int idem_reconnect(idem_conn *conn);

/* The underlying libpq connection, owned by whoever owned it before. */
IDEM_API struct pg_conn *idem_pgconn(const idem_conn *conn);

/* ---- owners and leases ------------------------------------------------ */

/*
 * Sets the lease of the handle's reservations from now on, as a PostgreSQL
 * interval (copied): "30s", "2 min" makes them lease-owned; "0" forces
 * session owners, whatever idem.lease and proxies say (behind a
 * transaction pooler that works only when reserve and commit run in one
 * transaction of the application's); NULL (the default) is automatic: the
 * server's idem.lease, else 30 seconds behind a proxy, else session
 * owners.  The value is checked by the server at the next
 * reserve (IDEM_ERR_BAD_INPUT when it is not an interval, or negative).  A
 * positive lease on a server whose extension is older than 1.2 makes
 * reserves fail with IDEM_ERR_NO_EXTENSION (ALTER EXTENSION idempotency
 * UPDATE).  Returns 0, or -1 when out of memory.
 */
IDEM_API int idem_set_lease(idem_conn *conn, const char *lease);

/* The lease given to idem_set_lease (owned by the handle), or NULL. */
IDEM_API const char *idem_lease(const idem_conn *conn);

/*
 * The handle's owner token: 32 lowercase hex characters, fixed for the
 * handle's life (across reconnects), owned by the handle.
 */
IDEM_API const char *idem_owner(const idem_conn *conn);

/*
 * 1 when the handle's connection goes through a proxy (PQbackendPID is not
 * the server's pg_backend_pid()), 0 when it is direct, -1 on error (the
 * first call on a connection asks the server).
 */
IDEM_API int idem_proxied(idem_conn *conn);

/*
 * 1 when the handle's reservations are lease-owned (see "Owners" above:
 * idem_set_lease, idem.lease, a proxy, or a reservation of this handle came
 * back lease-owned, as on a distributed key table), 0 when session-owned,
 * -1 on error (e.g. a lease that is not an interval).
 */
IDEM_API int idem_uses_leases(idem_conn *conn);

/* ---- errors (valid until the next call on the same handle) ------------- */

/* The kind of the last error; IDEM_OK if the last call succeeded. */
IDEM_API idem_error idem_errcode(const idem_conn *conn);

/* Its message (the server's primary message when the server sent one),
 * "" when none.  Never NULL, no trailing newline. */
IDEM_API const char *idem_errmsg(const idem_conn *conn);

/* The server's detail line, "" when none.  Never NULL. */
IDEM_API const char *idem_errdetail(const idem_conn *conn);

/* The server's five-character SQLSTATE, "" when the error did not come
 * from the server.  Never NULL. */
IDEM_API const char *idem_sqlstate(const idem_conn *conn);

/* Copies the handle's counters into *out. */
IDEM_API void idem_counters(const idem_conn *conn, idem_stats *out);

/* ---- observing calls (added in 1.2) ------------------------------------ */

/* The call an event reports. */
typedef enum idem_op
{
	IDEM_OP_RESERVE = 0,		/* idem_reserve */
	IDEM_OP_COMMIT,				/* idem_commit */
	IDEM_OP_RELEASE,			/* idem_release */
	IDEM_OP_GET,				/* idem_get */
	IDEM_OP_EXTEND,				/* idem_extend */
	IDEM_OP_PURGE,				/* idem_purge */
	IDEM_OP_RUN,				/* idem_run */
	IDEM_OP_STEP,				/* idem_step */
	IDEM_OP_HTTP_RUN			/* idem_http_run */
} idem_op;

/*
 * One call that has ended, as the observer sees it.  The library makes it
 * (on the stack) and the observer only reads it, so that later versions may
 * add fields at the end.  Strings are never NULL unless said so.
 *
 *	op			the call
 *	outcome		what it returned; idem_purge, which returns a count:
 *				IDEM_FRESH when it succeeded, IDEM_ERROR when not
 *	error		idem_errcode() after the call (IDEM_OK on success)
 *	sqlstate	idem_sqlstate(): the server's SQLSTATE, "" when none (e.g.
 *				"IK409" for IDEM_IN_FLIGHT, "" for a fresh reserve)
 *	message		idem_errmsg(): "" when none
 *	key			the key as given (a runner's: idem_step's derived key, the
 *				HTTP request's header value, even one refused as too long);
 *				NULL for idem_purge and for an HTTP request without the
 *				header
 *	scope		"" for the default scope; NULL for idem_purge
 *	attempt		the reservation's attempt (1, n + 1 after takeovers) for a
 *				reserve, get or runner that saw one; 0 when unknown (commit,
 *				release, extend, purge, and calls that failed before)
 *	waited		reserve and runners: 1 when the call waited for a key in
 *				flight under another owner, 0 when it did not, -1 when the
 *				library cannot tell: a wait in one piece in the server (a
 *				direct connection with session owners, or inside a
 *				transaction block) that ended with the key or its response
 *				looks the same as no wait (duration_us tells how long it
 *				took).  A wait in slices (leases, proxies) is always known,
 *				and so is a wait that timed out.  0 for the other calls.
 *	leased		1 when the reservation the call made, renewed or ran under
 *				is lease-owned (a fresh reserve, an extend that renewed, a
 *				runner whose reserve saw a lease), else 0
 *	duration_us	the call's time, on the monotonic clock, in microseconds;
 *				a runner's includes its handler and its own calls
 *	status		the response's status when the call returned one (reserve
 *				and get of a committed key, runners); idem_http_run: the
 *				HTTP status it set (400, 409, ...); else 0
 *	count		idem_purge: the records deleted; else 0
 *	state		the state of the record the call returned (idem_record_state:
 *				"committed", "in_flight", "released", "bypassed"); NULL when
 *				it returned none
 *
 * A runner's own calls (its reserve, commit or release, and the get after
 * a commit someone else made first) are reported as events of their own,
 * before the runner's, and so are the calls its handler makes on the same
 * handle.  The lease renewal (see "Threads") is not reported: it runs on
 * a thread of its own, with a connection of its own; a lease it lost shows
 * as the runner's outcome IDEM_LEASE_LOST.
 */
typedef struct idem_event
{
	idem_op		op;
	idem_outcome outcome;
	idem_error	error;
	const char *sqlstate;
	const char *message;
	const char *key;
	const char *scope;
	int			attempt;
	int			waited;
	int			leased;
	int64_t		duration_us;
	int			status;
	int64_t		count;
	const char *state;
} idem_event;

/*
 * An observer.  ev and every string in it belong to the library and are
 * valid only during the call: copy what you keep.  arg is the one given to
 * idem_set_observer, passed through.
 */
typedef void (*idem_observer_fn) (const idem_event *ev, void *arg);

/*
 * Sets the handle's observer (NULL removes it; the last one set wins).
 * From then on, every call of idem_reserve, idem_commit, idem_release,
 * idem_get, idem_extend and idem_purge on the handle, and every runner
 * (idem_run, idem_step, idem_http_run), calls it exactly once when the
 * call ends, whether it reached the server or was decided by the library
 * (bad input, an HTTP request refused or bypassed), after the handle's
 * error state is final.
 *
 * Thread: the observer runs on the thread making the call, inside it, so
 * that it delays the call by its own time.  It must not call back into the
 * same handle (no call, no idem_set_*, no idem_free), except for the
 * accessors that only read it (idem_errcode, idem_errmsg, idem_errdetail,
 * idem_sqlstate, idem_owner, idem_lease, idem_run_id, idem_counters); other
 * handles are fine.  An observer shared by several handles used from
 * several threads must be thread-safe itself.
 *
 * Cost: without an observer a call makes one NULL check more and reads no
 * clock; with one, two clock reads and the callback.
 * Returns 0, or -1 when conn is NULL.
 */
IDEM_API int idem_set_observer(idem_conn *conn, idem_observer_fn observer,
							   void *arg);

/* Static names of the operations ("reserve", ..., "http_run"), never NULL. */
IDEM_API const char *idem_op_name(idem_op op);

/* ---- the calls -------------------------------------------------------- */

/*
 * Reserves key (idem_reserve in SQL): opts gives scope, request_hash, ttl
 * and wait; the handle gives the owner token and the lease.  Waiting for an
 * in-flight key blocks this call up to the wait timeout (opts->wait, else
 * the server's idem.wait_timeout).  On a direct connection with session
 * owners the server does the whole wait.  A handle that uses leases or is
 * behind a proxy waits in slices: each reserve waits at most a quarter of
 * the owner's remaining lease and at most a second, and the library
 * reserves again until the wait timeout, so that the connections of a pool
 * are free between slices.  Behind a proxy, a waiter whose statements were
 * queued by the pool shortens its slices and pauses between them (at most
 * a slice), so that many waiters on a small pool leave the owner room to
 * renew and commit; it then sees the commit up to a pause late.  Inside a
 * transaction block the wait is in one piece, since an IK409 aborts the
 * transaction.
 *
 *	IDEM_FRESH		you own the key: run the handler, then idem_commit or
 *					idem_release on this same handle.  *out (if out is not
 *					NULL) gets the reservation (attempt, created_at, ...)
 *	IDEM_REPLAY		*out gets the committed response: do not run the handler
 *	IDEM_MISMATCH	the key was used with another request hash
 *	IDEM_IN_FLIGHT	the wait timed out (or was "0")
 *	IDEM_ERROR		see idem_errcode()
 *
 * *out is set to NULL for every other outcome.  The caller owns *out and
 * frees it with idem_record_free().
 */
IDEM_API idem_outcome idem_reserve(idem_conn *conn, const char *key,
								   const idem_opts *opts, idem_record **out);

/*
 * Stores the response on the caller's reservation (idem_commit in SQL).
 * opts gives scope and request_hash (ttl and wait are not used: the ttl is
 * the one given at reserve).  body NULL stores SQL NULL; body_len 0 with a
 * non-NULL body stores an empty body.  headers_json is a JSON object (see
 * idem_response_headers_json); NULL stores '{}'.
 *
 *	IDEM_FRESH		stored
 *	IDEM_REPLAY		already committed: the first response stands (no write)
 *	IDEM_MISMATCH	request_hash differs from the reservation's
 *	IDEM_IN_FLIGHT	another live owner holds the reservation
 *	IDEM_LEASE_LOST	IK409 on a handle that holds lease-owned reservations:
 *					this handle's lease ran out and another caller took the
 *					key over; nothing was written
 *	IDEM_NOT_FOUND	no live reservation (never made, released, or expired)
 *	IDEM_ERROR		e.g. IDEM_ERR_TOO_LARGE
 */
IDEM_API idem_outcome idem_commit(idem_conn *conn, const char *key,
								  const idem_opts *opts, int status,
								  const void *body, size_t body_len,
								  const char *headers_json);

/*
 * Drops an in-flight reservation without storing a response, so that a
 * retry runs the handler again (idem_release in SQL).  opts gives scope.
 *
 *	IDEM_FRESH		dropped; one waiter becomes the new owner
 *	IDEM_NOT_FOUND	nothing to drop (absent, or already committed: a
 *					committed response is never dropped)
 *	IDEM_IN_FLIGHT	another live owner holds it
 *	IDEM_LEASE_LOST	as for idem_commit: our lease was taken over
 *	IDEM_ERROR
 */
IDEM_API idem_outcome idem_release(idem_conn *conn, const char *key,
								   const idem_opts *opts);

/*
 * Renews this handle's lease on its in-flight reservation of key
 * (idem_extend in SQL) by the handle's lease (idem_set_lease), or, without
 * one, by the length it was reserved with.  opts gives scope.  The runners
 * do this themselves while the handler runs; call it when you reserve and
 * commit yourself and the work may outlast the lease.  *lease_expires_at
 * (if not NULL) gets the new end of the lease, as microseconds since
 * 1970-01-01 UTC (0 unless FRESH).
 *
 *	IDEM_FRESH		renewed
 *	IDEM_LEASE_LOST	the token is not the owner (IK409): the lease was taken
 *					over, or the key is session-owned or another's
 *	IDEM_NOT_FOUND	the key is absent or already committed (IK404)
 *	IDEM_ERROR		e.g. IDEM_ERR_NO_EXTENSION before extension 1.2
 */
IDEM_API idem_outcome idem_extend(idem_conn *conn, const char *key,
								  const idem_opts *opts,
								  int64_t *lease_expires_at);

/*
 * Looks at key without reserving or waiting (idem_get in SQL).  opts gives
 * scope.
 *
 *	IDEM_REPLAY		committed: *out holds the response
 *	IDEM_IN_FLIGHT	in flight: *out holds the reservation (attempt, times)
 *	IDEM_NOT_FOUND	absent or expired; *out = NULL
 *	IDEM_ERROR
 *
 * The caller owns *out (idem_record_free).
 */
IDEM_API idem_outcome idem_get(idem_conn *conn, const char *key,
							   const idem_opts *opts, idem_record **out);

/*
 * Deletes expired records, at most batch_limit of them (0 or negative: no
 * limit).  Returns how many, or -1 on error.
 */
IDEM_API int64_t idem_purge(idem_conn *conn, int batch_limit);

/* ---- records ---------------------------------------------------------- */

/*
 * An idem_record is what idem_reserve, idem_get and the runners return: a
 * reservation or a stored response.  Owned by the caller, freed with
 * idem_record_free (NULL allowed); immutable.
 */
IDEM_API void idem_record_free(idem_record *rec);

/* 1 when the call that returned it ran (or must run) the handler. */
IDEM_API int idem_record_fresh(const idem_record *rec);

/*
 * "in_flight" or "committed" as the server reports it; from the runners
 * also "released" (the handler's response was served but, by policy, not
 * stored) and "bypassed" (idem_http_run: the request was not guarded).
 */
IDEM_API const char *idem_record_state(const idem_record *rec);

/* The stored status, or -1 while in flight. */
IDEM_API int idem_record_status(const idem_record *rec);

/*
 * The stored body and its length in *len (len may be NULL).  NULL (and
 * *len = 0) while in flight or when committed as NULL.  The buffer has one
 * extra NUL byte after the body, not counted in *len, so that a text body
 * can be used as a C string.
 */
IDEM_API const void *idem_record_body(const idem_record *rec, size_t *len);

/* The stored headers as JSON text, NULL while in flight. */
IDEM_API const char *idem_record_headers_json(const idem_record *rec);

/*
 * The stored headers one by one, i in [0, count): a header stored with
 * several values appears once per value.  Values of the JSON object that
 * are neither strings nor arrays of strings are given as their JSON text.
 */
IDEM_API size_t idem_record_header_count(const idem_record *rec);
IDEM_API const char *idem_record_header_name(const idem_record *rec, size_t i);
IDEM_API const char *idem_record_header_value(const idem_record *rec, size_t i);

/* The first value of header name (case-insensitive), or NULL. */
IDEM_API const char *idem_record_header(const idem_record *rec,
										const char *name);

/* 1 for the first owner, n + 1 for each takeover; 0 when unknown. */
IDEM_API int idem_record_attempt(const idem_record *rec);

/*
 * Timestamps as microseconds since 1970-01-01 UTC; 0 when unknown;
 * infinity and -infinity (or values beyond the range) saturate to INT64_MAX
 * and INT64_MIN.
 */
IDEM_API int64_t idem_record_created_at(const idem_record *rec);
IDEM_API int64_t idem_record_expires_at(const idem_record *rec);

/*
 * When the lease of an in-flight reservation ends (same units as above);
 * 0 for a session-owned reservation, a committed response, or a server
 * without leases.  Non-zero on a fresh reservation means it is lease-owned
 * (by idem_set_lease, by a proxy, or by the server's idem.lease).
 */
IDEM_API int64_t idem_record_lease_expires_at(const idem_record *rec);

/*
 * The owner token of the reservation, given only to its owner: this
 * handle's token (idem_owner) on a fresh reservation from a server with
 * owners, NULL otherwise.
 */
IDEM_API const char *idem_record_owner(const idem_record *rec);

/* ---- responses (what a handler produces) ------------------------------- */

/*
 * A response being built: status (default 0), headers, body.  The runners
 * make one and pass it to the handler; an application calling idem_commit
 * itself may make its own to encode headers.  Freed with
 * idem_response_free (NULL allowed).
 */
IDEM_API idem_response *idem_response_new(void);
IDEM_API void idem_response_free(idem_response *resp);

IDEM_API void idem_response_set_status(idem_response *resp, int status);

/* Replaces / appends to the body (copied).  0, or -1 when out of memory or
 * data is NULL with a non-zero len. */
IDEM_API int idem_response_set_body(idem_response *resp, const void *body,
									size_t len);
IDEM_API int idem_response_append_body(idem_response *resp, const void *data,
									   size_t len);

/*
 * Adds a header (name and value copied).  Headers that must never be
 * replayed to another client are dropped here, silently: Set-Cookie,
 * Set-Cookie2, Authorization, Proxy-Authorization (any case).  Repeated
 * names (compared without case) keep every value, in order, under the first
 * spelling.  Returns 0, or -1 when out of memory or name is empty.
 */
IDEM_API int idem_response_add_header(idem_response *resp, const char *name,
									  const char *value);

/*
 * The headers encoded for idem_commit: a JSON object mapping each name to
 * an array of its values, e.g. {"Content-Type": ["text/plain"]}.  Owned by
 * resp, valid until resp changes or is freed; NULL when out of memory.
 */
IDEM_API const char *idem_response_headers_json(idem_response *resp);

/* Within a handler: the reservation's attempt (1, or n+1 after takeovers)
 * and key.  0 / NULL outside a runner. */
IDEM_API int idem_response_attempt(const idem_response *resp);
IDEM_API const char *idem_response_key(const idem_response *resp);

/*
 * Within a handler of a lease-owned reservation: 1 once the renewal found
 * the lease lost (it ran out and another caller took the key over), so
 * that a long handler may stop early; its response will not be stored and
 * the runner returns IDEM_LEASE_LOST.  0 otherwise, and outside a runner.
 * May be called from any thread while the handler runs.
 */
IDEM_API int idem_response_lease_lost(const idem_response *resp);

/* ---- runners ---------------------------------------------------------- */

/*
 * A handler: does the side effect, fills resp (status, headers, body), and
 * returns 0 to have the response stored, or non-zero when it failed in a
 * way that must not be cached (the reservation is released, so that a retry
 * runs it again).  arg is the caller's, passed through.
 */
typedef int (*idem_handler_fn) (idem_response *resp, void *arg);

/*
 * Runs handler at most once for key: reserve; when fresh, run the handler,
 * then commit its response (return 0) or release (non-zero); when a
 * response is already committed, return it without running the handler.
 * Concurrent callers with the same key wait for the one in flight (see
 * idem_reserve) and all get its response.  When the reservation is
 * lease-owned, the lease is renewed every third of its length while the
 * handler runs, from a thread with its own connection (see "Threads"),
 * stopped and joined when the handler returns; except inside a
 * transaction block of the application's (a wrapped PGconn after BEGIN),
 * where nobody else sees the reservation before that transaction ends and
 * the commit goes into the same transaction, so it needs no renewal.
 *
 *	IDEM_FRESH		the handler ran and its response was stored; *out holds
 *					it, exactly as a replay will return it
 *	IDEM_REPLAY		*out holds the stored response; the handler did not run
 *	IDEM_MISMATCH, IDEM_IN_FLIGHT: as for idem_reserve, handler not run
 *	IDEM_ERROR		IDEM_ERR_HANDLER: the handler returned non-zero and the
 *					key was released; other codes: the reserve failed (the
 *					handler did not run) or the commit failed (the handler
 *					ran: its response is lost, the key is released or left
 *					to the next caller)
 *	IDEM_LEASE_LOST	the reservation was lease-owned, and while the handler
 *					ran the lease ran out and another caller took the key
 *					over: the handler ran, its response was not stored (the
 *					renewal found it fenced, or the commit was refused)
 *
 * When the commit fails because the connection was lost and the handle owns
 * its connection, the runner reconnects once and commits again, adopting
 * its own reservation, so that a handler that ran is not run again.
 * The caller owns *out (idem_record_free); *out = NULL unless FRESH/REPLAY.
 */
IDEM_API idem_outcome idem_run(idem_conn *conn, const char *key,
							   const idem_opts *opts, idem_handler_fn handler,
							   void *arg, idem_record **out);

/*
 * The one-transaction pattern, done by the runners (since 1.3): with on
 * non-zero, idem_run and idem_http_run run each call in a transaction
 * block of their own, so that what the handler writes on the handle's
 * connection commits with its stored response, or not at all.  The BEGIN
 * goes to the server with the reserve and the COMMIT with the commit, in
 * one round trip each (libpq's pipeline mode), where an application that
 * opens and ends the block itself costs two more.  The block commits when
 * the response is stored; it rolls back when the handler fails or its
 * response is not stored (which releases the key: nothing else is sent),
 * on a replay and on every error.  A request that idem_http_run bypasses
 * runs its handler in a block too (BEGIN, the handler, COMMIT when
 * idem_http_cacheable would store its status, else ROLLBACK); one it
 * rejects runs nothing.  A call made while the application has a block
 * open joins it, as without this setting.  A lease-owned reservation is
 * not renewed inside the block (see idem_run), and its COMMIT waits for
 * the commit's answer.  idem_step is not affected: a step's result must
 * outlive the run's transaction.  Returns 0, or -1 when conn is NULL.
 */
IDEM_API int idem_set_transaction(idem_conn *conn, int on);

/* 1 when the runners open blocks of their own (idem_set_transaction). */
IDEM_API int idem_transaction(const idem_conn *conn);

/*
 * Durable steps: at most once per (run id, step name).  Set the run id
 * (a job run, a workflow execution; copied) on the handle before the steps
 * of a run, and clear it (NULL) after.  Returns 0, or -1 when out of memory.
 */
IDEM_API int idem_set_run_id(idem_conn *conn, const char *run_id);

/* The handle's run id, or NULL. */
IDEM_API const char *idem_run_id(const idem_conn *conn);

/*
 * Runs step_fn at most once for (run id, step): the key is
 * idem_derive_key(run_id, step), computed locally; opts gives scope, ttl and
 * wait (request_hash is not used).  On a retry of the same run the stored
 * result is returned in *out and step_fn does not run.  Outcomes as for
 * idem_run; without a run id on the handle: IDEM_ERROR, IDEM_ERR_NO_RUN.
 */
IDEM_API idem_outcome idem_step(idem_conn *conn, const char *step,
								const idem_opts *opts, idem_handler_fn step_fn,
								void *arg, idem_record **out);

/*
 * The deterministic key of (run id, step) for a downstream API's own
 * idempotency header (e.g. a payment provider), the same key idem_step
 * uses.  Writes IDEM_HASH_SIZE bytes to out.  Returns 0, or -1 without a
 * run id (IDEM_ERR_NO_RUN) or when step is NULL (IDEM_ERR_BAD_INPUT).
 */
IDEM_API int idem_step_key(idem_conn *conn, const char *step,
						   char out[IDEM_HASH_SIZE]);

/* ---- keys and hashes (local, no round trip) ----------------------------- */

/*
 * idem_derive_key(VARIADIC parts) of SQL, bit for bit: the lowercase hex
 * SHA-256 over, for each part, its length in bytes as an 8-byte big-endian
 * integer followed by its bytes (the parts as UTF-8 / database-encoding
 * bytes).  Writes IDEM_HASH_SIZE bytes (NUL-terminated) to out.  Returns 0,
 * or -1 when a part is NULL or parts is NULL with nparts > 0.
 */
IDEM_API int idem_derive_key(char out[IDEM_HASH_SIZE], size_t nparts,
							 const char *const *parts);

/*
 * idem_request_hash(method, path, body) of SQL, bit for bit: the framing
 * above over exactly these three parts, as given (no normalisation); body
 * NULL or body_len 0 is the empty body.  Returns 0, or -1 when method or
 * path is NULL.
 */
IDEM_API int idem_request_hash(char out[IDEM_HASH_SIZE], const char *method,
							   const char *path, const void *body,
							   size_t body_len);

/* ---- HTTP ------------------------------------------------------------- */

typedef struct idem_header
{
	const char *name;
	const char *value;
} idem_header;

/* An incoming request, as the application's HTTP server parsed it.  All
 * memory stays the caller's. */
typedef struct idem_http_request
{
	const char *method;			/* "POST" ... (compared without case) */
	const char *path;			/* "/v1/charges?x=1": hashed as given;
								 * exclusions ignore the query string */
	const idem_header *headers;
	size_t		nheaders;
	const void *body;
	size_t		body_len;
	const char *scope;			/* tenant (org id ...); NULL = '' */
} idem_http_request;

typedef enum idem_http_action
{
	IDEM_HTTP_BYPASS = 0,		/* not guarded: run the handler as usual */
	IDEM_HTTP_GUARD,			/* run it under the key */
	IDEM_HTTP_REJECT			/* answer with the given status (400) */
} idem_http_action;

/*
 * An HTTP policy.  Defaults: guarded methods POST, PUT, PATCH, DELETE;
 * header "Idempotency-Key"; a request without the header bypasses; 5xx
 * and 429 responses are released, not stored; ttl and wait from the
 * server settings.  Configure it before sharing it between threads.
 * Returns NULL when out of memory; free with idem_http_free (NULL allowed).
 */
IDEM_API idem_http *idem_http_new(void);
IDEM_API void idem_http_free(idem_http *http);

/* The request header carrying the key (compared without case; copied).
 * 0, or -1 when name is NULL/empty or out of memory. */
IDEM_API int idem_http_set_header_name(idem_http *http, const char *name);

/* 1: a guarded request without the header is rejected with 400.
 * 0 (default): it bypasses. */
IDEM_API void idem_http_set_required(idem_http *http, int required);

/* 1: store 5xx and 429 responses too.  0 (default): release them, so that
 * the client's retry runs the handler again. */
IDEM_API void idem_http_set_cache_failures(idem_http *http, int cache);

/* ttl and wait of the reservations, as intervals (see idem_opts; copied;
 * NULL = server setting).  0, or -1 when out of memory. */
IDEM_API int idem_http_set_ttl(idem_http *http, const char *ttl);
IDEM_API int idem_http_set_wait(idem_http *http, const char *wait);

/*
 * Excludes a route: "METHOD /path".  METHOD is a method or "*" (any);
 * /path matches the request path (without its query string) exactly, or,
 * when it ends in '*', every path that starts with what comes before the
 * '*': "POST /v1/auth/" followed by '*' matches /v1/auth/login, not
 * /v1/auth.  Returns 0,
 * or -1 when the rule is malformed or out of memory.
 */
IDEM_API int idem_http_exclude(idem_http *http, const char *rule);

/*
 * Decides what to do with req:
 *	BYPASS	method not guarded, route excluded, or no key header (and not
 *			required)
 *	GUARD	*key (if key is not NULL) points at the header value, in req
 *	REJECT	*status = 400: the header is required and missing, or the key
 *			is empty or longer than IDEM_MAX_KEY_BYTES
 * *reason (if not NULL) gets a static, human-readable reason.
 */
IDEM_API idem_http_action idem_http_decide(const idem_http *http,
										   const idem_http_request *req,
										   const char **key, int *status,
										   const char **reason);

/* 1 when a response with this status is stored under the policy. */
IDEM_API int idem_http_cacheable(const idem_http *http, int status);

/*
 * The HTTP status to answer with when a call ended in outcome (with the
 * handle's error code err): 409 in flight or lease lost (another request
 * took over: the client's retry gets its response), 422 mismatch, 503
 * database unreachable, 400 bad input, 500 other errors; 0 for FRESH and
 * REPLAY (answer with the record's status).
 */
IDEM_API int idem_http_error_status(idem_outcome outcome, idem_error err);

/*
 * Problem details (RFC 9457, as the IETF Idempotency-Key draft answers its
 * errors; added in 1.2).  For each answer of the HTTP helper that is not
 * the handler's response, a JSON object with "type", "title", "status"
 * and "detail", to be sent with Content-Type IDEM_HTTP_PROBLEM_CONTENT_TYPE.
 * The types, all under IDEM_HTTP_PROBLEM_BASE, are stable:
 *
 *	type (after the base)	status	when
 *	missing-key				400		a required key header is absent
 *	invalid-key				400		the key is empty, longer than
 *									IDEM_MAX_KEY_BYTES, or refused by the
 *									server as bad input
 *	in-flight				409		a request with the key is in flight
 *	lease-lost				409		the request ran past its lease and
 *									another one took the key over
 *	key-reused				422		the key was used with another request
 *	store-unavailable		503		the database is unreachable or read-only
 *	handler-failed			500		the handler failed (the key was released)
 *	store-failed			500		any other failure of the store
 */
#define IDEM_HTTP_PROBLEM_BASE "https://idempotency.dev/problems/"
#define IDEM_HTTP_PROBLEM_CONTENT_TYPE "application/problem+json"
/* a buffer of this size always holds the body, whatever the key */
#define IDEM_HTTP_PROBLEM_SIZE 2048

/*
 * Writes the problem details of an answer to buf (size bytes), NUL
 * terminated: outcome and err as idem_http_run left them (idem_errcode);
 * status the HTTP status it set, or 0 for idem_http_error_status(outcome,
 * err); key the request's key header value, NULL when it had none (the
 * missing-key problem).  The type follows outcome and err (above), the
 * "status" member is status.  The detail names the key (a key longer than
 * IDEM_MAX_KEY_BYTES by its first 64 bytes and "..."), escaped for JSON:
 * quotes, backslashes and control characters, and every character beyond
 * ASCII as \uXXXX (a pair for those beyond U+FFFF), so the body is ASCII;
 * a byte that is not part of valid UTF-8 becomes U+FFFD.  Nothing else of
 * the request is echoed.
 *
 * Returns the body's length (without the NUL) when it fits in size; when
 * it does not, the length it needs (>= size) and buf holds "" (never a
 * truncated body); -1 and "" when outcome is IDEM_FRESH or IDEM_REPLAY and
 * status is below 400 (no problem to report).  buf is the caller's;
 * thread-safe.
 */
IDEM_API int idem_http_problem_json(idem_outcome outcome, idem_error err,
									int status, const char *key, char *buf,
									size_t size);

/*
 * 1 when the request's Accept header (every one it has, compared without
 * case) names the media type application/problem+json with a q-value
 * other than 0.  Wildcard ranges (any type, or any subtype of application)
 * do not count, so that a client that asks for nothing in particular keeps
 * the application's own error format.  Else 0.
 */
IDEM_API int idem_http_wants_problem(const idem_http_request *req);

/*
 * The whole middleware: decide, then for a guarded request hash it
 * (idem_request_hash of method, path, body), reserve the key in
 * req->scope, run handler when fresh, store its response or (5xx/429 by
 * default, or handler failure) release the key, and replay a stored one.
 * Always sets *status to the HTTP status to answer with.
 *
 *	IDEM_FRESH		handler ran; *out is its response, state "committed",
 *					"released" (not stored by policy) or "bypassed"
 *	IDEM_REPLAY		*out is the stored response; handler did not run
 *	IDEM_MISMATCH	*status = 422;  IDEM_IN_FLIGHT, IDEM_LEASE_LOST: 409
 *	IDEM_ERROR		*status = 400 (rejected: IDEM_ERR_BAD_INPUT), 500 (the
 *					handler failed: IDEM_ERR_HANDLER, or the store failed) or
 *					503 (database unreachable)
 * The caller owns *out (idem_record_free).  Stored headers exclude
 * Set-Cookie and Authorization (see idem_response_add_header).
 */
IDEM_API idem_outcome idem_http_run(idem_conn *conn, const idem_http *http,
									const idem_http_request *req,
									idem_handler_fn handler, void *arg,
									idem_record **out, int *status);

#ifdef __cplusplus
}
#endif

#endif							/* IDEM_H */
