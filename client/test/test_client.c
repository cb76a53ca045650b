/*-------------------------------------------------------------------------
 *
 * test_client.c
 *	  libidem against a live server: every call and outcome, the runners
 *	  (32 threads on one key), steps, the HTTP middleware, the local hashes
 *	  against the SQL functions over random inputs, and the error paths
 *	  (server gone, connection lost, extension missing, SQLSTATE mapping).
 *
 * The server comes from libpq's environment (PGHOST, PGPORT, PGDATABASE,
 * PGUSER), and must have the idempotency extension; the user must be able
 * to create a database (for the "extension missing" case) and to
 * terminate its own backends.  IDEM_TEST_THREADS (default 32) sets the
 * number of racing threads.
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "idem.h"
#include "tinytest.h"

static char prefix[64];			/* keeps keys apart between runs */
static PGconn *admin;			/* plain libpq, for SQL the tests check */

static const char *
key_of(const char *name)
{
	static char buf[8][160];
	static int	next;
	char	   *k = buf[next++ % 8];

	snprintf(k, sizeof(buf[0]), "%s-%s", prefix, name);
	return k;
}

static idem_conn *
open_conn(void)
{
	idem_conn  *conn = idem_connect(NULL);

	if (conn == NULL || !idem_connected(conn))
	{
		fprintf(stderr, "cannot connect: %s\n", idem_errmsg(conn));
		exit(2);
	}
	return conn;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static int
admin_exec(const char *sql)
{
	PGresult   *res = PQexec(admin, sql);
	int			ok = PQresultStatus(res) == PGRES_COMMAND_OK ||
		PQresultStatus(res) == PGRES_TUPLES_OK;

	if (!ok)
		fprintf(stderr, "admin: %s: %s", sql, PQerrorMessage(admin));
	PQclear(res);
	return ok ? 0 : -1;
}

/* ends the backend behind conn and waits until it is gone */
static void
kill_backend(idem_conn *conn)
{
	char		sql[256];
	int			pid = PQbackendPID(idem_pgconn(conn));
	int			i;

	snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", pid);
	admin_exec(sql);
	for (i = 0; i < 500; i++)
	{
		PGresult   *res;
		int			gone;

		snprintf(sql, sizeof(sql),
				 "SELECT 1 FROM pg_stat_activity WHERE pid = %d", pid);
		res = PQexec(admin, sql);
		gone = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 0;
		PQclear(res);
		if (gone)
			return;
		sleep_ms(10);
	}
}

static int
body_is(const idem_record *rec, const void *want, size_t want_len)
{
	size_t		len;
	const void *body;

	if (rec == NULL)
		return 0;
	body = idem_record_body(rec, &len);
	if (want == NULL)
		return body == NULL && len == 0;
	return body != NULL && len == want_len &&
		(want_len == 0 || memcmp(body, want, want_len) == 0);
}

/* ---- the calls and their outcomes ---------------------------------------- */

static void
test_calls(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	idem_opts	opts = {NULL, NULL, NULL, NULL};
	idem_opts	nowait = {NULL, NULL, NULL, "0"};
	static const unsigned char body[] = {'o', 'k', 0, 0xff, 0x80, '\n', 0, 'z'};
	const char *k = key_of("calls");
	int64_t		t0 = (int64_t) time(NULL) * 1000000;
	idem_outcome o;

	opts.request_hash = "h1";
	opts.ttl = "1 hour";

	o = idem_reserve(a, k, &opts, &rec);
	CHECK(o == IDEM_FRESH && rec && idem_record_fresh(rec) &&
		  strcmp(idem_record_state(rec), "in_flight") == 0 &&
		  idem_record_attempt(rec) == 1 && idem_record_status(rec) == -1 &&
		  idem_record_body(rec, NULL) == NULL &&
		  idem_record_headers_json(rec) == NULL,
		  "reserve a new key: fresh, in_flight, attempt 1");
	CHECK(rec && idem_record_created_at(rec) > t0 - 60000000 &&
		  idem_record_created_at(rec) < t0 + 60000000 &&
		  idem_record_expires_at(rec) - idem_record_created_at(rec) > 3500000000LL &&
		  idem_record_expires_at(rec) - idem_record_created_at(rec) <= 3600000000LL,
		  "created_at is now, expires_at = created_at + ttl (1 hour)");
	CHECK(idem_errcode(a) == IDEM_OK && *idem_errmsg(a) == '\0' &&
		  *idem_sqlstate(a) == '\0', "no error after a success");
	idem_record_free(rec);

	o = idem_reserve(a, k, &opts, &rec);
	CHECK(o == IDEM_FRESH && rec && idem_record_attempt(rec) == 1,
		  "the owner reserving again is fresh again (re-entrant)");
	idem_record_free(rec);

	o = idem_reserve(b, k, &nowait, &rec);
	CHECK(o == IDEM_IN_FLIGHT && rec == NULL &&
		  idem_errcode(b) == IDEM_ERR_IN_FLIGHT &&
		  strcmp(idem_sqlstate(b), "IK409") == 0 && *idem_errmsg(b),
		  "another session, wait 0: IDEM_IN_FLIGHT, IK409 (%s)", idem_errmsg(b));

	nowait.request_hash = "other";
	o = idem_reserve(b, k, &nowait, &rec);
	CHECK(o == IDEM_MISMATCH && rec == NULL &&
		  idem_errcode(b) == IDEM_ERR_MISMATCH &&
		  strcmp(idem_sqlstate(b), "IK422") == 0,
		  "another hash while in flight: IDEM_MISMATCH, IK422 (%s)", idem_errmsg(b));
	nowait.request_hash = NULL;

	o = idem_get(b, k, NULL, &rec);
	CHECK(o == IDEM_IN_FLIGHT && rec && !idem_record_fresh(rec) &&
		  strcmp(idem_record_state(rec), "in_flight") == 0 &&
		  idem_record_attempt(rec) == 1,
		  "get of an in-flight key: IDEM_IN_FLIGHT with the reservation");
	idem_record_free(rec);

	o = idem_commit(b, k, &opts, 200, "x", 1, NULL);
	CHECK(o == IDEM_IN_FLIGHT && idem_errcode(b) == IDEM_ERR_IN_FLIGHT &&
		  strcmp(idem_sqlstate(b), "IK409") == 0,
		  "commit on another live session's reservation: IK409");
	CHECK(idem_release(b, k, NULL) == IDEM_IN_FLIGHT &&
		  strcmp(idem_sqlstate(b), "IK409") == 0,
		  "release of another live session's reservation: IK409");

	opts.request_hash = "h2";
	CHECK(idem_commit(a, k, &opts, 200, body, sizeof(body), NULL) == IDEM_MISMATCH &&
		  strcmp(idem_sqlstate(a), "IK422") == 0,
		  "commit with another hash: IK422");
	opts.request_hash = "h1";

	o = idem_commit(a, k, &opts, 201, body, sizeof(body),
					"{\"Content-Type\": [\"application/octet-stream\"]}");
	CHECK(o == IDEM_FRESH && idem_errcode(a) == IDEM_OK, "commit stores: IDEM_FRESH");
	o = idem_commit(a, k, &opts, 500, "other", 5, NULL);
	CHECK(o == IDEM_REPLAY, "second commit: IDEM_REPLAY, the first response stands");

	o = idem_reserve(b, k, &opts, &rec);
	CHECK(o == IDEM_REPLAY && rec && !idem_record_fresh(rec) &&
		  strcmp(idem_record_state(rec), "committed") == 0 &&
		  idem_record_status(rec) == 201 && body_is(rec, body, sizeof(body)),
		  "reserve of a committed key: IDEM_REPLAY, status and body byte for byte");
	CHECK(rec && idem_record_header_count(rec) == 1 &&
		  strcmp(idem_record_header(rec, "content-type"), "application/octet-stream") == 0,
		  "stored headers come back");
	idem_record_free(rec);

	o = idem_reserve(b, k, NULL, &rec);
	CHECK(o == IDEM_REPLAY && body_is(rec, body, sizeof(body)),
		  "reserve without a hash replays too");
	idem_record_free(rec);

	o = idem_get(b, k, NULL, &rec);
	CHECK(o == IDEM_REPLAY && idem_record_status(rec) == 201 &&
		  body_is(rec, body, sizeof(body)), "get of a committed key: IDEM_REPLAY");
	idem_record_free(rec);

	opts.request_hash = "h2";
	CHECK(idem_reserve(b, k, &opts, &rec) == IDEM_MISMATCH && rec == NULL,
		  "another hash on a committed key: IDEM_MISMATCH");
	opts.request_hash = "h1";

	CHECK(idem_release(a, k, NULL) == IDEM_NOT_FOUND,
		  "release of a committed key: IDEM_NOT_FOUND, never dropped");
	CHECK(idem_reserve(b, k, NULL, NULL) == IDEM_REPLAY,
		  "still committed after the release attempt (out may be NULL)");

	/* commit without a reservation */
	CHECK(idem_commit(a, key_of("never-reserved"), NULL, 200, "x", 1, NULL) == IDEM_NOT_FOUND &&
		  idem_errcode(a) == IDEM_ERR_NOT_FOUND &&
		  strcmp(idem_sqlstate(a), "IK404") == 0,
		  "commit without a reservation: IDEM_NOT_FOUND, IK404 (%s)", idem_errmsg(a));
	CHECK(idem_release(a, key_of("never-reserved"), NULL) == IDEM_NOT_FOUND &&
		  idem_errcode(a) == IDEM_OK, "release of nothing: IDEM_NOT_FOUND, no error");
	CHECK(idem_get(a, key_of("never-reserved"), NULL, &rec) == IDEM_NOT_FOUND &&
		  rec == NULL, "get of nothing: IDEM_NOT_FOUND");

	/* release: own reservation dropped, then the key is new again */
	k = key_of("release");
	CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_FRESH, "reserve to release");
	CHECK(idem_release(a, k, NULL) == IDEM_FRESH, "release: IDEM_FRESH (dropped)");
	CHECK(idem_release(a, k, NULL) == IDEM_NOT_FOUND, "release again: IDEM_NOT_FOUND");
	CHECK(idem_reserve(b, k, &nowait, &rec) == IDEM_FRESH && idem_record_attempt(rec) >= 1,
		  "after a release another session owns the key at once");
	idem_record_free(rec);
	idem_release(b, k, NULL);

	/* scopes are independent */
	k = key_of("scoped");
	{
		idem_opts	s1 = {"tenant-1", NULL, NULL, NULL};
		idem_opts	s2 = {"tenant-2", NULL, NULL, NULL};

		CHECK(idem_reserve(a, k, &s1, NULL) == IDEM_FRESH &&
			  idem_commit(a, k, &s1, 200, "one", 3, NULL) == IDEM_FRESH,
			  "commit in scope tenant-1");
		CHECK(idem_reserve(b, k, &s2, &rec) == IDEM_FRESH,
			  "the same key in scope tenant-2 is a new key");
		idem_record_free(rec);
		CHECK(idem_get(b, k, NULL, &rec) == IDEM_NOT_FOUND,
			  "and absent in the default scope");
		CHECK(idem_commit(b, k, &s2, 200, "two", 3, NULL) == IDEM_FRESH &&
			  idem_get(a, k, &s1, &rec) == IDEM_REPLAY && body_is(rec, "one", 3),
			  "each scope keeps its own response");
		idem_record_free(rec);
	}

	/* NULL body and empty body differ */
	k = key_of("null-body");
	CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_FRESH &&
		  idem_commit(a, k, NULL, 204, NULL, 0, NULL) == IDEM_FRESH &&
		  idem_get(b, k, NULL, &rec) == IDEM_REPLAY &&
		  idem_record_status(rec) == 204 && body_is(rec, NULL, 0) &&
		  strcmp(idem_record_headers_json(rec), "{}") == 0,
		  "a NULL body is stored as NULL, headers default to {}");
	idem_record_free(rec);
	k = key_of("empty-body");
	CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_FRESH &&
		  idem_commit(a, k, NULL, 200, "", 0, NULL) == IDEM_FRESH &&
		  idem_get(b, k, NULL, &rec) == IDEM_REPLAY && body_is(rec, "", 0),
		  "an empty body is stored as empty");
	idem_record_free(rec);

	/* a large binary body */
	{
		size_t		n = 512 * 1024;
		unsigned char *big = malloc(n);
		size_t		i;

		for (i = 0; i < n; i++)
			big[i] = (unsigned char) (i * 131 + (i >> 9));
		k = key_of("big-body");
		CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_FRESH &&
			  idem_commit(a, k, NULL, 200, big, n, NULL) == IDEM_FRESH &&
			  idem_reserve(b, k, NULL, &rec) == IDEM_REPLAY && body_is(rec, big, n),
			  "a 512 kB binary body comes back byte for byte");
		idem_record_free(rec);
		free(big);
	}

	idem_free(a);
	idem_free(b);
}

static void
test_expiry_and_purge(void)
{
	idem_conn  *a = open_conn();
	idem_opts	shortttl = {NULL, NULL, "50ms", NULL};
	idem_record *rec = NULL;
	int64_t		n;
	int			i;

	for (i = 0; i < 3; i++)
	{
		char		name[32];
		const char *k;

		snprintf(name, sizeof(name), "expire-%d", i);
		k = key_of(name);
		idem_reserve(a, k, &shortttl, NULL);
		idem_commit(a, k, NULL, 200, "old", 3, NULL);
	}
	sleep_ms(200);
	CHECK(idem_get(a, key_of("expire-0"), NULL, &rec) == IDEM_NOT_FOUND && rec == NULL,
		  "an expired key is absent for get");
	CHECK(idem_reserve(a, key_of("expire-0"), NULL, &rec) == IDEM_FRESH,
		  "an expired key is new for reserve");
	idem_record_free(rec);
	idem_release(a, key_of("expire-0"), NULL);

	n = idem_purge(a, 1);
	CHECK(n == 1, "purge with a limit of 1 deletes 1 (%lld)", (long long) n);
	n = idem_purge(a, 0);
	CHECK(n >= 1, "purge without a limit deletes the rest (%lld)", (long long) n);
	CHECK(idem_purge(a, 0) == 0 && idem_errcode(a) == IDEM_OK,
		  "nothing left to purge: 0");
	idem_free(a);
}

static void
test_bad_input(void)
{
	idem_conn  *a = open_conn();
	char		long_key[300];
	idem_opts	o = {NULL, NULL, NULL, NULL};
	idem_record *rec = NULL;

	CHECK(idem_reserve(a, "", NULL, &rec) == IDEM_ERROR && rec == NULL &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT &&
		  strncmp(idem_sqlstate(a), "22", 2) == 0,
		  "empty key: IDEM_ERR_BAD_INPUT, class 22 (%s %s)", idem_sqlstate(a), idem_errmsg(a));
	memset(long_key, 'k', 256);
	long_key[256] = '\0';
	CHECK(idem_reserve(a, long_key, NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT,
		  "256-byte key: bad input (%s)", idem_errmsg(a));
	CHECK(*idem_errdetail(a) != '\0', "the server's detail is kept: %s", idem_errdetail(a));
	long_key[255] = '\0';
	CHECK(idem_reserve(a, long_key, NULL, NULL) == IDEM_FRESH &&
		  idem_release(a, long_key, NULL) == IDEM_FRESH, "255-byte key is fine");
	o.ttl = "-1 second";
	CHECK(idem_reserve(a, key_of("badttl"), &o, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT, "negative ttl: bad input");
	o.ttl = "0";
	CHECK(idem_reserve(a, key_of("badttl"), &o, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT, "zero ttl: bad input");
	o.ttl = NULL;
	o.wait = "-1s";
	CHECK(idem_reserve(a, key_of("badwait"), &o, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT, "negative wait: bad input");
	o.wait = "soon";
	CHECK(idem_reserve(a, key_of("badwait"), &o, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT &&
		  strcmp(idem_sqlstate(a), "22007") == 0,
		  "unparsable interval: bad input, 22007");
	CHECK(idem_commit(a, NULL, NULL, 200, NULL, 0, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT && *idem_sqlstate(a) == '\0',
		  "NULL key: bad input without a round trip");
	CHECK(idem_connected(a), "errors leave the connection usable");
	CHECK(idem_reserve(a, key_of("after-errors"), NULL, NULL) == IDEM_FRESH,
		  "the next call works");
	idem_free(a);
}

/* ---- wrapped connections, session state, SQLSTATE mapping --------------- */

static void
test_wrapped(void)
{
	PGconn	   *pg = PQconnectdb("");
	idem_conn  *w = idem_wrap(pg);
	idem_conn  *w2;
	idem_record *rec = NULL;
	PGresult   *res;
	const char *k = key_of("wrapped");
	char	   *big;

	CHECK(w != NULL && idem_pgconn(w) == pg && idem_connected(w),
		  "wrap an application's PGconn");
	CHECK(idem_reserve(w, k, NULL, NULL) == IDEM_FRESH, "reserve on a wrapped connection");

	/* a transaction of the application's own: the reservation follows it */
	res = PQexec(pg, "BEGIN");
	PQclear(res);
	CHECK(idem_reserve(w, key_of("wrapped-tx"), NULL, NULL) == IDEM_FRESH,
		  "reserve inside the application's BEGIN");
	res = PQexec(pg, "ROLLBACK");
	PQclear(res);
	CHECK(idem_get(w, key_of("wrapped-tx"), NULL, &rec) == IDEM_NOT_FOUND,
		  "rolled back: the reservation never happened");

	/* DEALLOCATE ALL (or a pooler's DISCARD ALL) drops prepared statements */
	res = PQexec(pg, "DEALLOCATE ALL");
	PQclear(res);
	CHECK(idem_reserve(w, k, NULL, NULL) == IDEM_FRESH,
		  "statements deallocated behind the handle's back are prepared again");
	CHECK(idem_commit(w, k, NULL, 200, "w", 1, NULL) == IDEM_FRESH,
		  "commit on the wrapped connection");

	w2 = idem_wrap(pg);
	CHECK(idem_get(w2, k, NULL, &rec) == IDEM_REPLAY && body_is(rec, "w", 1),
		  "a second handle on the same PGconn shares its statements");
	idem_record_free(rec);
	idem_free(w2);

	CHECK(idem_reconnect(w) == -1 && idem_errcode(w) == IDEM_ERR_NOT_OWNER,
		  "reconnect of a wrapped connection: IDEM_ERR_NOT_OWNER");

	/* 54000: larger than idem.max_body_bytes */
	k = key_of("too-large");
	res = PQexec(pg, "SET idem.max_body_bytes = 1024");
	PQclear(res);
	big = calloc(1, 2000);
	CHECK(idem_reserve(w, k, NULL, NULL) == IDEM_FRESH &&
		  idem_commit(w, k, NULL, 200, big, 2000, NULL) == IDEM_ERROR &&
		  idem_errcode(w) == IDEM_ERR_TOO_LARGE &&
		  strcmp(idem_sqlstate(w), "54000") == 0,
		  "a body over idem.max_body_bytes: IDEM_ERR_TOO_LARGE, 54000 (%s)",
		  idem_errmsg(w));
	CHECK(idem_commit(w, k, NULL, 200, big, 1024, NULL) == IDEM_FRESH,
		  "a body of exactly idem.max_body_bytes is stored");
	free(big);
	res = PQexec(pg, "RESET idem.max_body_bytes");
	PQclear(res);

	/* 25006: writes in a read-only transaction (as on a standby) */
	res = PQexec(pg, "SET default_transaction_read_only = on");
	PQclear(res);
	CHECK(idem_reserve(w, key_of("read-only"), NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(w) == IDEM_ERR_READ_ONLY &&
		  strcmp(idem_sqlstate(w), "25006") == 0,
		  "reserve in a read-only session: IDEM_ERR_READ_ONLY, 25006");
	CHECK(idem_get(w, key_of("wrapped"), NULL, &rec) == IDEM_REPLAY,
		  "get works read-only");
	idem_record_free(rec);
	CHECK(idem_reserve(w, key_of("wrapped"), NULL, &rec) == IDEM_REPLAY,
		  "reserve of a committed key replays read-only");
	idem_record_free(rec);
	res = PQexec(pg, "RESET default_transaction_read_only");
	PQclear(res);

	idem_free(w);
	CHECK(PQstatus(pg) == CONNECTION_OK, "idem_free leaves a wrapped PGconn open");
	PQfinish(pg);
}

/* server gone, connection lost, extension missing */
static void
test_error_paths(void)
{
	idem_conn  *a = open_conn();
	idem_record *rec = NULL;
	char		sql[256];
	char		dsn[256];
	idem_conn  *noext;

	/* the server ends our session */
	CHECK(idem_reserve(a, key_of("killed"), NULL, NULL) == IDEM_FRESH, "reserve, then lose the session");
	kill_backend(a);
	CHECK(idem_get(a, key_of("killed"), NULL, &rec) == IDEM_ERROR && rec == NULL &&
		  idem_errcode(a) == IDEM_ERR_CONNECTION,
		  "a call after the backend died: IDEM_ERR_CONNECTION (%s)", idem_errmsg(a));
	CHECK(!idem_connected(a), "the handle knows it is disconnected");
	CHECK(idem_get(a, key_of("killed"), NULL, &rec) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_CONNECTION, "and says so again without hanging");
	CHECK(idem_reconnect(a) == 0 && idem_connected(a), "idem_reconnect");
	CHECK(idem_reserve(a, key_of("killed"), NULL, &rec) == IDEM_FRESH &&
		  idem_record_attempt(rec) == 2,
		  "the dead session's reservation is taken over: attempt 2");
	idem_record_free(rec);
	idem_free(a);

	/* a database without the extension */
	snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s-noext\"", prefix);
	if (admin_exec(sql) == 0)
	{
		snprintf(dsn, sizeof(dsn), "dbname=%s-noext", prefix);
		noext = idem_connect(dsn);
		CHECK(idem_connected(noext), "connect to a database without the extension");
		CHECK(idem_reserve(noext, "k", NULL, &rec) == IDEM_ERROR && rec == NULL &&
			  idem_errcode(noext) == IDEM_ERR_NO_EXTENSION &&
			  strcmp(idem_sqlstate(noext), "42883") == 0 &&
			  strstr(idem_errdetail(noext), "CREATE EXTENSION") != NULL,
			  "extension missing: IDEM_ERR_NO_EXTENSION, 42883 (%s / %s)",
			  idem_errmsg(noext), idem_errdetail(noext));
		CHECK(idem_purge(noext, 0) == -1 &&
			  idem_errcode(noext) == IDEM_ERR_NO_EXTENSION,
			  "purge without the extension");
		idem_free(noext);
		snprintf(sql, sizeof(sql), "DROP DATABASE \"%s-noext\"", prefix);
		admin_exec(sql);
	}
	else
		CHECK(0, "CREATE DATABASE for the extension-missing case");

	/* a server that is not there */
	a = idem_connect("host=127.0.0.1 port=1 connect_timeout=2");
	CHECK(a && !idem_connected(a) && idem_errcode(a) == IDEM_ERR_CONNECTION,
		  "nothing listening: IDEM_ERR_CONNECTION (%s)", idem_errmsg(a));
	CHECK(idem_reserve(a, "k", NULL, &rec) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_CONNECTION, "calls fail fast");
	idem_free(a);
}

/* a waiter wakes when the owner commits, or takes over when it releases */
typedef struct waiter
{
	const char *key;
	idem_outcome outcome;
	idem_record *rec;
	double		done_ms;
} waiter;

static void *
wait_for_key(void *arg)
{
	waiter	   *w = arg;
	idem_conn  *c = open_conn();
	idem_opts	o = {NULL, NULL, NULL, "10s"};

	w->outcome = idem_reserve(c, w->key, &o, &w->rec);
	w->done_ms = now_ms();
	if (w->outcome == IDEM_FRESH)
		idem_release(c, w->key, NULL);
	idem_free(c);
	return NULL;
}

static void
test_waiting(void)
{
	idem_conn  *a = open_conn();
	waiter		w = {key_of("wait-commit"), IDEM_ERROR, NULL, 0};
	pthread_t	th;
	double		commit_ms;

	idem_reserve(a, w.key, NULL, NULL);
	pthread_create(&th, NULL, wait_for_key, &w);
	sleep_ms(300);
	commit_ms = now_ms();
	idem_commit(a, w.key, NULL, 200, "done", 4, NULL);
	pthread_join(th, NULL);
	CHECK(w.outcome == IDEM_REPLAY && body_is(w.rec, "done", 4),
		  "a waiter gets the committed response");
	CHECK(w.done_ms - commit_ms < 1000,
		  "and wakes within %.0f ms of the commit (no polling)", w.done_ms - commit_ms);
	idem_record_free(w.rec);

	w.key = key_of("wait-release");
	w.rec = NULL;
	idem_reserve(a, w.key, NULL, NULL);
	pthread_create(&th, NULL, wait_for_key, &w);
	sleep_ms(300);
	idem_release(a, w.key, NULL);
	pthread_join(th, NULL);
	CHECK(w.outcome == IDEM_FRESH, "a waiter becomes the owner after a release");
	idem_record_free(w.rec);

	/* a timed-out wait */
	{
		idem_conn  *b = open_conn();
		idem_opts	o = {NULL, NULL, NULL, "200ms"};
		double		t = now_ms();

		idem_reserve(a, key_of("wait-timeout"), NULL, NULL);
		CHECK(idem_reserve(b, key_of("wait-timeout"), &o, NULL) == IDEM_IN_FLIGHT &&
			  strcmp(idem_sqlstate(b), "IK409") == 0 && now_ms() - t >= 150,
			  "waiting past the timeout: IDEM_IN_FLIGHT after %.0f ms", now_ms() - t);
		idem_free(b);
	}
	idem_free(a);
}

/* ---- runners ------------------------------------------------------------- */

static atomic_int charges;

typedef struct charge_ctx
{
	int			thread;
	int			sleep_ms;
} charge_ctx;

static int
charge_handler(idem_response *resp, void *arg)
{
	charge_ctx *ctx = arg;
	char		body[128];

	atomic_fetch_add(&charges, 1);
	sleep_ms(ctx->sleep_ms);
	snprintf(body, sizeof(body), "charged once, by thread %d, attempt %d",
			 ctx->thread, idem_response_attempt(resp));
	idem_response_set_status(resp, 201);
	idem_response_add_header(resp, "Content-Type", "text/plain");
	return idem_response_set_body(resp, body, strlen(body));
}

typedef struct racer
{
	int			id;
	const char *key;
	pthread_barrier_t *start;
	idem_outcome outcome;
	char		body[128];
	int			status;
} racer;

static void *
race(void *arg)
{
	racer	   *r = arg;
	idem_conn  *c = open_conn();
	idem_record *rec = NULL;
	charge_ctx	ctx = {r->id, 300};
	idem_opts	o = {NULL, "charge-hash", NULL, "60s"};

	pthread_barrier_wait(r->start);
	r->outcome = idem_run(c, r->key, &o, charge_handler, &ctx, &rec);
	if (rec)
	{
		snprintf(r->body, sizeof(r->body), "%s",
				 (const char *) idem_record_body(rec, NULL));
		r->status = idem_record_status(rec);
	}
	else
		snprintf(r->body, sizeof(r->body), "error: %s", idem_errmsg(c));
	idem_record_free(rec);
	idem_free(c);
	return NULL;
}

static void
test_run_threads(void)
{
	const char *env = getenv("IDEM_TEST_THREADS");
	int			n = env ? atoi(env) : 32;
	racer	   *r;
	pthread_t  *th;
	pthread_barrier_t start;
	int			i,
				fresh = 0,
				replay = 0,
				same = 1;

	if (n < 2)
		n = 2;
	r = calloc((size_t) n, sizeof(racer));
	th = calloc((size_t) n, sizeof(pthread_t));
	atomic_store(&charges, 0);
	pthread_barrier_init(&start, NULL, (unsigned) n);
	for (i = 0; i < n; i++)
	{
		r[i].id = i;
		r[i].key = key_of("race");
		r[i].start = &start;
		pthread_create(&th[i], NULL, race, &r[i]);
	}
	for (i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&start);
	for (i = 0; i < n; i++)
	{
		fresh += r[i].outcome == IDEM_FRESH;
		replay += r[i].outcome == IDEM_REPLAY;
		if (strcmp(r[i].body, r[0].body) != 0 || r[i].status != 201)
			same = 0;
	}
	CHECK(atomic_load(&charges) == 1,
		  "%d threads, one handle each, one key: the handler ran %d time(s)",
		  n, atomic_load(&charges));
	CHECK(fresh == 1 && replay == n - 1, "1 fresh and %d replays (got %d and %d)",
		  n - 1, fresh, replay);
	CHECK(same && strncmp(r[0].body, "charged once", 12) == 0,
		  "all %d got the same status and body: \"%s\"", n, r[0].body);
	free(r);
	free(th);
}

static atomic_int failing_runs;

static int
fail_first_handler(idem_response *resp, void *arg)
{
	(void) arg;
	if (atomic_fetch_add(&failing_runs, 1) == 0)
		return 1;
	idem_response_set_status(resp, 200);
	return 0;					/* no body: stored as NULL */
}

static int
kill_self_handler(idem_response *resp, void *arg)
{
	idem_conn  *self = arg;

	atomic_fetch_add(&charges, 1);
	kill_backend(self);
	idem_response_set_status(resp, 200);
	return idem_response_set_body(resp, "survived", 8);
}

static void
test_run(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	const char *k = key_of("run-fail");
	idem_stats	st;
	charge_ctx	ctx = {0, 0};
	idem_outcome o;

	atomic_store(&failing_runs, 0);
	o = idem_run(a, k, NULL, fail_first_handler, NULL, &rec);
	CHECK(o == IDEM_ERROR && rec == NULL && idem_errcode(a) == IDEM_ERR_HANDLER,
		  "a failing handler: IDEM_ERROR / IDEM_ERR_HANDLER (%s)", idem_errmsg(a));
	CHECK(idem_get(b, k, NULL, &rec) == IDEM_NOT_FOUND, "and its key was released");
	o = idem_run(b, k, NULL, fail_first_handler, NULL, &rec);
	CHECK(o == IDEM_FRESH && rec && idem_record_fresh(rec) &&
		  strcmp(idem_record_state(rec), "committed") == 0 &&
		  idem_record_status(rec) == 200 && body_is(rec, NULL, 0),
		  "the retry runs it again and stores it (no body: NULL)");
	idem_record_free(rec);
	o = idem_run(a, k, NULL, fail_first_handler, NULL, &rec);
	CHECK(o == IDEM_REPLAY && !idem_record_fresh(rec) &&
		  atomic_load(&failing_runs) == 2,
		  "then it replays: the handler ran twice in all (once failed)");
	idem_record_free(rec);

	/* mismatch and in flight reach the runner's caller */
	{
		idem_opts	o1 = {NULL, "one", NULL, NULL};
		idem_opts	o2 = {NULL, "two", NULL, "0"};

		atomic_store(&charges, 0);
		k = key_of("run-mismatch");
		CHECK(idem_run(a, k, &o1, charge_handler, &ctx, &rec) == IDEM_FRESH, "run");
		idem_record_free(rec);
		CHECK(idem_run(b, k, &o2, charge_handler, &ctx, &rec) == IDEM_MISMATCH &&
			  rec == NULL && atomic_load(&charges) == 1,
			  "run with another hash: IDEM_MISMATCH, handler not run");
		k = key_of("run-inflight");
		idem_reserve(a, k, NULL, NULL);
		o2.request_hash = NULL;
		CHECK(idem_run(b, k, &o2, charge_handler, &ctx, &rec) == IDEM_IN_FLIGHT &&
			  rec == NULL && atomic_load(&charges) == 1,
			  "run on an in-flight key with wait 0: IDEM_IN_FLIGHT");
		idem_release(a, k, NULL);
	}

	/* the handler ran, then the connection died before the commit */
	{
		idem_conn  *c = open_conn();

		atomic_store(&charges, 0);
		k = key_of("run-reconnect");
		o = idem_run(c, k, NULL, kill_self_handler, c, &rec);
		CHECK(o == IDEM_FRESH && body_is(rec, "survived", 8),
			  "connection lost before the commit: reconnected and committed");
		idem_record_free(rec);
		CHECK(idem_run(b, k, NULL, kill_self_handler, b, &rec) == IDEM_REPLAY &&
			  body_is(rec, "survived", 8) && atomic_load(&charges) == 1,
			  "and a retry replays: the handler ran once");
		idem_record_free(rec);
		idem_free(c);
	}

	idem_counters(a, &st);
	CHECK(st.reserves >= 4 && st.fresh >= 2 && st.replays >= 1 &&
		  st.handler_runs == 2 && st.commits == 1 && st.releases >= 1 &&
		  st.errors >= 1,
		  "counters: %llu reserves, %llu fresh, %llu replays, %llu runs, "
		  "%llu commits, %llu releases, %llu errors",
		  (unsigned long long) st.reserves, (unsigned long long) st.fresh,
		  (unsigned long long) st.replays, (unsigned long long) st.handler_runs,
		  (unsigned long long) st.commits, (unsigned long long) st.releases,
		  (unsigned long long) st.errors);
	idem_free(a);
	idem_free(b);
}

/* ---- observing calls ------------------------------------------------------ */

/* what an observer saw: copies, since the event is gone after the call */
typedef struct obs_event
{
	idem_op		op;
	idem_outcome outcome;
	idem_error	error;
	char		sqlstate[6];
	char		key[200];		/* "(null)" for NULL */
	char		scope[64];		/* "(null)" for NULL */
	int			attempt;
	int			waited;
	int			leased;
	int64_t		duration_us;
	int			status;
	int64_t		count;
	char		state[16];		/* "" for NULL */
	int			other_thread;	/* not called on the calling thread */
} obs_event;

typedef struct obs_log
{
	int			n;
	obs_event	ev[64];
	pthread_t	caller;
} obs_log;

static atomic_int observed_anywhere;

static void
log_observer(const idem_event *ev, void *arg)
{
	obs_log    *log = arg;
	obs_event  *e;

	atomic_fetch_add(&observed_anywhere, 1);
	if (log->n >= 64)
	{
		log->n++;
		return;
	}
	e = &log->ev[log->n++];
	e->op = ev->op;
	e->outcome = ev->outcome;
	e->error = ev->error;
	snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", ev->sqlstate);
	snprintf(e->key, sizeof(e->key), "%s", ev->key ? ev->key : "(null)");
	snprintf(e->scope, sizeof(e->scope), "%s", ev->scope ? ev->scope : "(null)");
	e->attempt = ev->attempt;
	e->waited = ev->waited;
	e->leased = ev->leased;
	e->duration_us = ev->duration_us;
	e->status = ev->status;
	e->count = ev->count;
	snprintf(e->state, sizeof(e->state), "%s", ev->state ? ev->state : "");
	e->other_thread = !pthread_equal(pthread_self(), log->caller);
}

/* the one event since log->n was mark, or NULL when there is not one */
static const obs_event *
only_event(const obs_log *log, int mark)
{
	return log->n == mark + 1 ? &log->ev[mark] : NULL;
}

static int
slow_handler(idem_response *resp, void *arg)
{
	sleep_ms(*(const int *) arg);
	idem_response_set_status(resp, 201);
	return idem_response_set_body(resp, "slow", 4);
}

static int
refusing_handler(idem_response *resp, void *arg)
{
	(void) resp;
	(void) arg;
	return 7;
}

typedef struct commit_later
{
	idem_conn  *conn;
	const char *key;
	int			after_ms;
} commit_later;

static void *
commit_after(void *arg)
{
	commit_later *c = arg;

	sleep_ms(c->after_ms);
	idem_commit(c->conn, c->key, NULL, 200, "late", 4, NULL);
	return NULL;
}

static void
test_observer(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	idem_opts	opts = {"obs-scope", "h1", NULL, NULL};
	idem_opts	nowait = {"obs-scope", NULL, NULL, "0"};
	idem_opts	wait200 = {"obs-scope", NULL, NULL, "200ms"};
	obs_log    *log = calloc(1, sizeof(obs_log));
	const obs_event *e;
	const char *k = key_of("obs-1");
	char		kcopy[160];
	int			mark,
				sleep_for = 150;
	int			before;
	int64_t		purged;
	idem_outcome o;

	log->caller = pthread_self();
	snprintf(kcopy, sizeof(kcopy), "%s", k);
	k = kcopy;

	/* never set, then set: nothing until set */
	before = atomic_load(&observed_anywhere);
	idem_reserve(a, k, &opts, NULL);
	idem_release(a, k, &opts);
	idem_get(a, k, &opts, NULL);
	CHECK(atomic_load(&observed_anywhere) == before,
		  "a handle without an observer calls none");
	CHECK(idem_set_observer(a, log_observer, log) == 0, "idem_set_observer");

	/* fresh */
	mark = log->n;
	o = idem_reserve(a, k, &opts, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_FRESH && e && e->op == IDEM_OP_RESERVE &&
		  e->outcome == IDEM_FRESH && e->error == IDEM_OK &&
		  e->sqlstate[0] == '\0' && strcmp(e->key, k) == 0 &&
		  strcmp(e->scope, "obs-scope") == 0 && e->attempt == 1 &&
		  e->leased == 0 && strcmp(e->state, "in_flight") == 0 &&
		  e->duration_us > 0 && e->duration_us < 10000000 && !e->other_thread,
		  "reserve, fresh: one event on the calling thread: fresh, no "
		  "SQLSTATE, key, scope, attempt 1, in_flight, %lld us",
		  e ? (long long) e->duration_us : -1LL);
	CHECK(e && e->waited == -1,
		  "waited: a wait in one piece in the server cannot tell (%d)",
		  e ? e->waited : -9);

	/* in flight */
	mark = log->n;
	idem_set_observer(b, log_observer, log);
	o = idem_reserve(b, k, &nowait, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_IN_FLIGHT && e && e->outcome == IDEM_IN_FLIGHT &&
		  e->error == IDEM_ERR_IN_FLIGHT && strcmp(e->sqlstate, "IK409") == 0 &&
		  e->waited == 0 && e->attempt == 0 && e->state[0] == '\0',
		  "reserve of a key in flight, wait 0: in_flight, IK409, did not wait");
	mark = log->n;
	o = idem_reserve(b, k, &wait200, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_IN_FLIGHT && e && strcmp(e->sqlstate, "IK409") == 0 &&
		  e->waited == 1 && e->duration_us >= 150000,
		  "... wait 200ms: in_flight, IK409, waited, %lld us",
		  e ? (long long) e->duration_us : -1LL);

	/* mismatch */
	mark = log->n;
	o = idem_reserve(b, k, &(idem_opts) {"obs-scope", "h2", NULL, NULL}, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_MISMATCH && e && e->outcome == IDEM_MISMATCH &&
		  e->error == IDEM_ERR_MISMATCH && strcmp(e->sqlstate, "IK422") == 0 &&
		  e->waited == 0,
		  "reserve with another hash: mismatch, IK422, did not wait");

	/* commit, then replay */
	mark = log->n;
	o = idem_commit(a, k, &opts, 200, "body", 4, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_FRESH && e && e->op == IDEM_OP_COMMIT &&
		  e->outcome == IDEM_FRESH && e->sqlstate[0] == '\0' &&
		  strcmp(e->key, k) == 0 && e->attempt == 0,
		  "commit: one event, fresh");
	mark = log->n;
	o = idem_reserve(b, k, &opts, &rec);
	e = only_event(log, mark);
	CHECK(o == IDEM_REPLAY && e && e->outcome == IDEM_REPLAY &&
		  e->sqlstate[0] == '\0' && e->status == 200 && e->attempt == 1 &&
		  strcmp(e->state, "committed") == 0,
		  "reserve of a committed key: replay, status 200, committed");
	idem_record_free(rec);
	mark = log->n;
	o = idem_commit(a, k, &opts, 500, "again", 5, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_REPLAY && e && e->outcome == IDEM_REPLAY,
		  "commit of a committed key: one event, replay");

	/* not found */
	mark = log->n;
	o = idem_get(a, key_of("obs-absent"), &opts, &rec);
	e = only_event(log, mark);
	CHECK(o == IDEM_NOT_FOUND && e && e->op == IDEM_OP_GET &&
		  e->outcome == IDEM_NOT_FOUND && e->sqlstate[0] == '\0' &&
		  e->state[0] == '\0', "get of an absent key: not_found, no SQLSTATE");
	mark = log->n;
	o = idem_commit(a, key_of("obs-absent"), &opts, 200, "x", 1, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_NOT_FOUND && e && e->outcome == IDEM_NOT_FOUND &&
		  e->error == IDEM_ERR_NOT_FOUND && strcmp(e->sqlstate, "IK404") == 0,
		  "commit without a reservation: not_found, IK404");
	mark = log->n;
	o = idem_release(a, key_of("obs-absent"), &opts);
	e = only_event(log, mark);
	CHECK(o == IDEM_NOT_FOUND && e && e->op == IDEM_OP_RELEASE &&
		  e->outcome == IDEM_NOT_FOUND, "release of nothing: not_found");
	mark = log->n;
	o = idem_get(a, k, &opts, &rec);
	e = only_event(log, mark);
	CHECK(o == IDEM_REPLAY && e && e->status == 200 && e->attempt == 1 &&
		  strcmp(e->state, "committed") == 0, "get of a committed key: replay, 200");
	idem_record_free(rec);
	mark = log->n;
	o = idem_extend(a, k, &opts, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_NOT_FOUND && e && e->op == IDEM_OP_EXTEND &&
		  strcmp(e->sqlstate, "IK404") == 0, "extend of a committed key: IK404");
	mark = log->n;
	purged = idem_purge(a, 1);
	e = only_event(log, mark);
	CHECK(purged >= 0 && e && e->count == purged &&
		  e->op == IDEM_OP_PURGE && e->outcome == IDEM_FRESH &&
		  strcmp(e->key, "(null)") == 0 && strcmp(e->scope, "(null)") == 0 &&
		  e->count >= 0,
		  "purge: one event, fresh, no key, no scope, count %lld",
		  e ? (long long) e->count : -1LL);
	mark = log->n;
	o = idem_reserve(a, NULL, NULL, NULL);
	e = only_event(log, mark);
	CHECK(o == IDEM_ERROR && e && e->error == IDEM_ERR_BAD_INPUT &&
		  strcmp(e->key, "(null)") == 0,
		  "a NULL key, decided by the library: one event, bad input");

	/* runners: their own calls, then one event of their own */
	k = key_of("obs-run");
	snprintf(kcopy, sizeof(kcopy), "%s", k);
	k = kcopy;
	mark = log->n;
	o = idem_run(a, k, &(idem_opts) {"obs-scope", NULL, NULL, NULL},
				 slow_handler, &sleep_for, &rec);
	idem_record_free(rec);
	CHECK(o == IDEM_FRESH && log->n == mark + 3 &&
		  log->ev[mark].op == IDEM_OP_RESERVE &&
		  log->ev[mark + 1].op == IDEM_OP_COMMIT &&
		  log->ev[mark + 2].op == IDEM_OP_RUN,
		  "idem_run, fresh: reserve, commit, then run (%d events)", log->n - mark);
	e = log->n == mark + 3 ? &log->ev[mark + 2] : NULL;
	CHECK(e && e->outcome == IDEM_FRESH && strcmp(e->key, k) == 0 &&
		  strcmp(e->scope, "obs-scope") == 0 && e->attempt == 1 &&
		  e->status == 201 && strcmp(e->state, "committed") == 0 &&
		  e->duration_us >= sleep_for * 1000 &&
		  e->duration_us >= log->ev[mark].duration_us + log->ev[mark + 1].duration_us,
		  "the run event: fresh, attempt 1, 201, committed, %lld us (with the "
		  "handler's %d ms and its calls)", e ? (long long) e->duration_us : -1LL,
		  sleep_for);
	mark = log->n;
	o = idem_run(b, k, &(idem_opts) {"obs-scope", NULL, NULL, NULL},
				 slow_handler, &sleep_for, &rec);
	idem_record_free(rec);
	CHECK(o == IDEM_REPLAY && log->n == mark + 2 &&
		  log->ev[mark].op == IDEM_OP_RESERVE && log->ev[mark + 1].op == IDEM_OP_RUN &&
		  log->ev[mark + 1].outcome == IDEM_REPLAY && log->ev[mark + 1].status == 201,
		  "idem_run, replay: reserve, then run (replay, 201)");
	mark = log->n;
	o = idem_run(a, key_of("obs-refused"), NULL, refusing_handler, NULL, &rec);
	CHECK(o == IDEM_ERROR && log->n == mark + 3 &&
		  log->ev[mark + 1].op == IDEM_OP_RELEASE &&
		  log->ev[mark + 1].outcome == IDEM_FRESH &&
		  log->ev[mark + 2].op == IDEM_OP_RUN &&
		  log->ev[mark + 2].outcome == IDEM_ERROR &&
		  log->ev[mark + 2].error == IDEM_ERR_HANDLER &&
		  log->ev[mark + 2].sqlstate[0] == '\0',
		  "idem_run, handler failed: reserve, release, then run (error, handler)");
	mark = log->n;
	idem_set_run_id(a, key_of("obs-steps"));
	o = idem_step(a, "one", NULL, slow_handler, &sleep_for, &rec);
	idem_record_free(rec);
	{
		char		sk[IDEM_HASH_SIZE];

		idem_step_key(a, "one", sk);
		CHECK(o == IDEM_FRESH && log->n == mark + 3 &&
			  log->ev[mark + 2].op == IDEM_OP_STEP &&
			  strcmp(log->ev[mark + 2].key, sk) == 0 &&
			  strcmp(log->ev[mark].key, sk) == 0,
			  "idem_step: reserve, commit, step, under the derived key");
	}
	idem_set_run_id(a, NULL);

	/* the HTTP middleware */
	{
		idem_http  *http = idem_http_new();
		idem_header h = {"Idempotency-Key", key_of("obs-http")};
		idem_http_request req;
		int			status;

		memset(&req, 0, sizeof(req));
		req.method = "POST";
		req.path = "/v1/obs";
		req.headers = &h;
		req.nheaders = 1;
		req.scope = "obs-scope";
		mark = log->n;
		o = idem_http_run(a, http, &req, slow_handler, &sleep_for, &rec, &status);
		idem_record_free(rec);
		e = log->n == mark + 3 ? &log->ev[mark + 2] : NULL;
		CHECK(o == IDEM_FRESH && e && e->op == IDEM_OP_HTTP_RUN && e->status == 201 &&
			  strcmp(e->key, h.value) == 0 && strcmp(e->scope, "obs-scope") == 0 &&
			  strcmp(e->state, "committed") == 0,
			  "idem_http_run: reserve, commit, http_run (201, committed)");
		req.body = "other";
		req.body_len = 5;
		mark = log->n;
		o = idem_http_run(b, http, &req, slow_handler, &sleep_for, &rec, &status);
		e = log->n == mark + 2 ? &log->ev[mark + 1] : NULL;
		CHECK(o == IDEM_MISMATCH && e && e->op == IDEM_OP_HTTP_RUN && e->status == 422 &&
			  strcmp(e->sqlstate, "IK422") == 0,
			  "idem_http_run, another body: reserve, http_run (422, IK422)");
		idem_http_free(http);
	}

	/* leases: a wait in slices is known */
	{
		commit_later cl;
		pthread_t	th;

		k = key_of("obs-lease");
		snprintf(kcopy, sizeof(kcopy), "%s", k);
		k = kcopy;
		idem_set_lease(a, "5s");
		idem_set_lease(b, "5s");
		mark = log->n;
		o = idem_reserve(a, k, NULL, NULL);
		e = only_event(log, mark);
		CHECK(o == IDEM_FRESH && e && e->leased == 1 && e->waited == 0,
			  "a lease-owned reservation: leased, did not wait (in slices: known)");
		/* the owner commits from another thread, unobserved */
		idem_set_observer(a, NULL, NULL);
		cl.conn = a;
		cl.key = k;
		cl.after_ms = 300;
		mark = log->n;
		pthread_create(&th, NULL, commit_after, &cl);
		o = idem_reserve(b, k, &(idem_opts) {NULL, NULL, NULL, "5s"}, NULL);
		pthread_join(th, NULL);
		e = only_event(log, mark);
		CHECK(o == IDEM_REPLAY && e && !e->other_thread &&
			  e->outcome == IDEM_REPLAY && e->waited == 1 && e->leased == 0 &&
			  e->duration_us >= 200000,
			  "a wait in slices for the owner's commit: replay, waited, %lld us",
			  e ? (long long) e->duration_us : -1LL);
		idem_set_lease(a, NULL);
		idem_set_lease(b, NULL);
	}

	/* removed: no call */
	idem_set_observer(a, NULL, log);
	idem_set_observer(b, NULL, NULL);
	mark = log->n;
	before = atomic_load(&observed_anywhere);
	idem_get(a, k, NULL, NULL);
	idem_run(a, k, NULL, slow_handler, &sleep_for, &rec);
	idem_record_free(rec);
	idem_purge(b, 1);
	CHECK(log->n == mark && atomic_load(&observed_anywhere) == before,
		  "observer set to NULL: no call");
	CHECK(log->n <= 64, "no more than 64 events in this test (%d)", log->n);

	free(log);
	idem_free(a);
	idem_free(b);
}

/* ---- steps --------------------------------------------------------------- */

static atomic_int step_runs;

static int
step_charge(idem_response *resp, void *arg)
{
	const char *ref = arg;

	atomic_fetch_add(&step_runs, 1);
	return idem_response_set_body(resp, ref, strlen(ref));
}

static void
test_steps(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	char		run[128];
	char		key[IDEM_HASH_SIZE];
	char		sql[512];
	PGresult   *res;

	atomic_store(&step_runs, 0);
	CHECK(idem_step(a, "charge", NULL, step_charge, "ch_1", &rec) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_NO_RUN && atomic_load(&step_runs) == 0,
		  "a step without a run id: IDEM_ERR_NO_RUN, nothing runs");

	snprintf(run, sizeof(run), "%s-run-1", prefix);
	idem_set_run_id(a, run);
	CHECK(idem_step(a, "charge", NULL, step_charge, "ch_1", &rec) == IDEM_FRESH &&
		  body_is(rec, "ch_1", 4), "first step runs");
	idem_record_free(rec);
	CHECK(idem_step(a, "email", NULL, step_charge, "mail_1", &rec) == IDEM_FRESH,
		  "another step of the same run runs");
	idem_record_free(rec);
	CHECK(idem_step(a, "charge", NULL, step_charge, "ch_2", &rec) == IDEM_REPLAY &&
		  body_is(rec, "ch_1", 4), "the same step again: the cached result");
	idem_record_free(rec);

	/* the run is retried by another worker (another handle) */
	idem_set_run_id(b, run);
	CHECK(idem_step(b, "charge", NULL, step_charge, "ch_3", &rec) == IDEM_REPLAY &&
		  body_is(rec, "ch_1", 4) && atomic_load(&step_runs) == 2,
		  "a retried run replays its steps (step fn ran %d times)",
		  atomic_load(&step_runs));
	idem_record_free(rec);

	snprintf(run, sizeof(run), "%s-run-2", prefix);
	idem_set_run_id(b, run);
	CHECK(idem_step(b, "charge", NULL, step_charge, "ch_4", &rec) == IDEM_FRESH &&
		  body_is(rec, "ch_4", 4), "a new run runs the step again");
	idem_record_free(rec);

	/* the key is idem_derive_key(run id, step), computed locally */
	idem_step_key(b, "charge", key);
	snprintf(sql, sizeof(sql), "SELECT idem_derive_key('%s', 'charge')", run);
	res = PQexec(admin, sql);
	CHECK(PQresultStatus(res) == PGRES_TUPLES_OK &&
		  strcmp(PQgetvalue(res, 0, 0), key) == 0,
		  "the step key equals SELECT idem_derive_key(run id, step)");
	PQclear(res);
	CHECK(idem_get(b, key, NULL, &rec) == IDEM_REPLAY && body_is(rec, "ch_4", 4),
		  "and the step's record is under that key");
	idem_record_free(rec);

	idem_set_run_id(a, NULL);
	CHECK(idem_step(a, "charge", NULL, step_charge, "x", &rec) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_NO_RUN, "cleared run id: an error again");
	idem_free(a);
	idem_free(b);
}

/* ---- HTTP ---------------------------------------------------------------- */

static atomic_int http_runs;

typedef struct http_ctx
{
	int			status;
	const char *body;
} http_ctx;

static int
http_handler(idem_response *resp, void *arg)
{
	http_ctx   *ctx = arg;

	atomic_fetch_add(&http_runs, 1);
	idem_response_set_status(resp, ctx->status);
	idem_response_add_header(resp, "Content-Type", "application/json");
	idem_response_add_header(resp, "Set-Cookie", "session=abc");
	idem_response_add_header(resp, "Location", "/v1/charges/ch_1");
	return idem_response_set_body(resp, ctx->body, strlen(ctx->body));
}

static void
test_http(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_http  *http = idem_http_new();
	idem_record *rec = NULL;
	idem_header h = {"Idempotency-Key", key_of("http-1")};
	idem_http_request req;
	http_ctx	created = {201, "{\"id\": \"ch_1\"}"};
	http_ctx	broken = {503, "{\"error\": \"down\"}"};
	int			status;
	idem_outcome o;

	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.path = "/v1/charges";
	req.headers = &h;
	req.nheaders = 1;
	req.body = "amount=100";
	req.body_len = 10;
	req.scope = "org-1";
	atomic_store(&http_runs, 0);

	o = idem_http_run(a, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 201 &&
		  strcmp(idem_record_state(rec), "committed") == 0 &&
		  idem_record_header(rec, "Set-Cookie") == NULL &&
		  strcmp(idem_record_header(rec, "Location"), "/v1/charges/ch_1") == 0,
		  "POST with a key: handler runs, 201 stored without Set-Cookie");
	idem_record_free(rec);
	o = idem_http_run(b, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_REPLAY && status == 201 && atomic_load(&http_runs) == 1 &&
		  body_is(rec, created.body, strlen(created.body)) &&
		  strcmp(idem_record_header(rec, "content-type"), "application/json") == 0,
		  "the retry replays status, headers and body; the handler ran once");
	idem_record_free(rec);

	{
		idem_opts	scoped = {"org-1", NULL, NULL, NULL};
		char		hash[IDEM_HASH_SIZE];

		CHECK(idem_get(a, h.value, NULL, &rec) == IDEM_NOT_FOUND &&
			  idem_get(a, h.value, &scoped, &rec) == IDEM_REPLAY,
			  "stored in the request's scope");
		idem_record_free(rec);
		idem_request_hash(hash, "POST", "/v1/charges", "amount=100", 10);
		scoped.request_hash = hash;
		CHECK(idem_reserve(a, h.value, &scoped, &rec) == IDEM_REPLAY,
			  "under the request hash of (method, path, body)");
		idem_record_free(rec);
	}

	req.body = "amount=999";
	o = idem_http_run(b, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_MISMATCH && status == 422 && rec == NULL,
		  "same key, another body: 422");
	req.body = "amount=100";

	/* in flight: 409 with a zero wait */
	h.value = key_of("http-2");
	idem_reserve(a, h.value, &(idem_opts) {"org-1", NULL, NULL, NULL}, NULL);
	idem_http_set_wait(http, "0");
	o = idem_http_run(b, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_IN_FLIGHT && status == 409 && rec == NULL,
		  "in flight elsewhere: 409");
	idem_release(a, h.value, &(idem_opts) {"org-1", NULL, NULL, NULL});
	idem_http_set_wait(http, NULL);

	/* 5xx is served but released */
	h.value = key_of("http-3");
	atomic_store(&http_runs, 0);
	o = idem_http_run(a, http, &req, http_handler, &broken, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 503 &&
		  strcmp(idem_record_state(rec), "released") == 0,
		  "a 503 is served, state released");
	idem_record_free(rec);
	o = idem_http_run(b, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 201 && atomic_load(&http_runs) == 2,
		  "so the retry runs the handler again");
	idem_record_free(rec);

	/* unless failures are cached */
	h.value = key_of("http-4");
	idem_http_set_cache_failures(http, 1);
	o = idem_http_run(a, http, &req, http_handler, &broken, &rec, &status);
	idem_record_free(rec);
	o = idem_http_run(b, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_REPLAY && status == 503 && atomic_load(&http_runs) == 3,
		  "cache_failures: the 503 is stored and replayed");
	idem_record_free(rec);
	idem_http_set_cache_failures(http, 0);

	/* bypass and required */
	req.nheaders = 0;
	o = idem_http_run(a, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 201 &&
		  strcmp(idem_record_state(rec), "bypassed") == 0,
		  "no key header: bypass");
	idem_record_free(rec);
	idem_http_set_required(http, 1);
	o = idem_http_run(a, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_ERROR && status == 400 && rec == NULL,
		  "no key header where required: 400");
	idem_http_exclude(http, "POST /v1/charges");
	o = idem_http_run(a, http, &req, http_handler, &created, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 201 &&
		  strcmp(idem_record_state(rec), "bypassed") == 0,
		  "an excluded route bypasses even where the key is required");
	idem_record_free(rec);

	idem_http_free(http);
	idem_free(a);
	idem_free(b);
}

/* ---- owners and leases ------------------------------------------------- */

static int64_t
wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* the first value of a query of admin's, copied, or NULL */
static char *
admin_value(const char *fmt, const char *arg)
{
	char		sql[1024];
	PGresult   *res;
	char	   *v = NULL;

	snprintf(sql, sizeof(sql), fmt, arg);
	res = PQexec(admin, sql);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
		!PQgetisnull(res, 0, 0))
		v = strdup(PQgetvalue(res, 0, 0));
	else if (PQresultStatus(res) != PGRES_TUPLES_OK)
		fprintf(stderr, "admin: %s: %s", sql, PQerrorMessage(admin));
	PQclear(res);
	return v;
}

static int
is_token(const char *s)
{
	size_t		n = s ? strlen(s) : 0;
	size_t		i;

	if (n < 32)
		return 0;
	for (i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

static void
test_owners(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	PGconn	   *pg = PQconnectdb("");
	idem_conn  *w1 = idem_wrap(pg);
	idem_conn  *w2 = idem_wrap(pg);
	idem_record *rec = NULL;
	idem_opts	nowait = {NULL, NULL, NULL, "0"};
	idem_opts	wait300 = {NULL, NULL, NULL, "300ms"};
	const char *k = key_of("owner-token");
	char	   *v;
	idem_outcome o;

	CHECK(is_token(idem_owner(a)) && is_token(idem_owner(w1)) &&
		  strcmp(idem_owner(a), idem_owner(b)) != 0 &&
		  strcmp(idem_owner(w1), idem_owner(w2)) != 0,
		  "every handle has its own owner token of 128 bits or more, in hex (%s)",
		  idem_owner(a));
	CHECK(idem_proxied(a) == 0 && idem_uses_leases(a) == 0 && idem_lease(a) == NULL,
		  "a direct connection: not proxied, session owners by default");

	o = idem_reserve(a, k, NULL, &rec);
	CHECK(o == IDEM_FRESH && idem_record_owner(rec) &&
		  strcmp(idem_record_owner(rec), idem_owner(a)) == 0 &&
		  idem_record_lease_expires_at(rec) == 0,
		  "a session-owned reservation: the record names the handle's token, no lease");
	idem_record_free(rec);
	v = admin_value("SELECT owner_token FROM idem_keys WHERE key = '%s'", k);
	CHECK(v && strcmp(v, idem_owner(a)) == 0,
		  "the token was sent with the reserve: the server recorded it");
	free(v);
	CHECK(idem_commit(a, k, NULL, 200, "a", 1, NULL) == IDEM_FRESH,
		  "commit with the token");
	CHECK(idem_get(b, k, NULL, &rec) == IDEM_REPLAY && idem_record_owner(rec) == NULL,
		  "the token is given to its owner only (get: none)");
	idem_record_free(rec);

	/* two handles on one PGconn share a server session, as behind a pooler */
	k = key_of("shared-session");
	CHECK(idem_reserve(w1, k, NULL, NULL) == IDEM_FRESH,
		  "handle 1 on a shared PGconn reserves");
	o = idem_reserve(w2, k, &nowait, &rec);
	CHECK(o == IDEM_IN_FLIGHT && rec == NULL && strcmp(idem_sqlstate(w2), "IK409") == 0,
		  "handle 2 on the same PGconn (same server session): IDEM_IN_FLIGHT, "
		  "never FRESH (%s)", idem_errmsg(w2));
	o = idem_reserve(w2, k, &wait300, &rec);
	CHECK(o == IDEM_IN_FLIGHT && rec == NULL,
		  "with a wait too: IDEM_IN_FLIGHT (%s)", idem_outcome_name(o));
	CHECK(idem_commit(w2, k, NULL, 200, "two", 3, NULL) == IDEM_IN_FLIGHT &&
		  idem_release(w2, k, NULL) == IDEM_IN_FLIGHT &&
		  strcmp(idem_sqlstate(w2), "IK409") == 0,
		  "handle 2 can neither commit nor release handle 1's reservation (IK409)");
	o = idem_reserve(w1, k, NULL, &rec);
	CHECK(o == IDEM_FRESH && idem_record_attempt(rec) == 1,
		  "handle 1 still owns it (re-entrant, attempt 1)");
	idem_record_free(rec);
	CHECK(idem_commit(w1, k, NULL, 200, "one", 3, NULL) == IDEM_FRESH &&
		  idem_reserve(w2, k, NULL, &rec) == IDEM_REPLAY && body_is(rec, "one", 3),
		  "handle 1 commits, handle 2 replays its response");
	idem_record_free(rec);

	idem_free(w1);
	idem_free(w2);
	PQfinish(pg);
	idem_free(a);
	idem_free(b);
}

static void
test_leases(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	idem_opts	nowait = {NULL, NULL, NULL, "0"};
	const char *k = key_of("lease-30s");
	int64_t		t0 = wall_us();
	int64_t		first = 0,
				until = 0;
	idem_outcome o;

	CHECK(idem_set_lease(a, "30s") == 0 && strcmp(idem_lease(a), "30s") == 0 &&
		  idem_uses_leases(a) == 1, "idem_set_lease(\"30s\"): the handle uses leases");
	o = idem_reserve(a, k, NULL, &rec);
	if (rec)
		first = idem_record_lease_expires_at(rec);
	CHECK(o == IDEM_FRESH && first > t0 + 25000000 && first < t0 + 35000000 &&
		  strcmp(idem_record_owner(rec), idem_owner(a)) == 0,
		  "its reservation is lease-owned: lease_expires_at = now + 30 s (%+.1f s)",
		  (first - t0) / 1e6);
	idem_record_free(rec);
	CHECK(idem_reserve(b, k, &nowait, &rec) == IDEM_IN_FLIGHT && rec == NULL,
		  "another handle: in flight");

	/* the owner is the token, not the session */
	kill_backend(a);
	CHECK(idem_reserve(b, k, &nowait, NULL) == IDEM_IN_FLIGHT,
		  "the owner's session ended: a live lease is not taken over");
	sleep_ms(20);
	CHECK(idem_reconnect(a) == 0 && idem_extend(a, k, NULL, &until) == IDEM_FRESH &&
		  until >= first, "from a new session the token renews its lease (idem_extend)");
	CHECK(idem_extend(b, k, NULL, &until) == IDEM_LEASE_LOST && until == 0 &&
		  idem_errcode(b) == IDEM_ERR_LEASE_LOST &&
		  strcmp(idem_sqlstate(b), "IK409") == 0,
		  "idem_extend with another token: IDEM_LEASE_LOST, IK409 (%s)", idem_errmsg(b));
	CHECK(idem_commit(a, k, NULL, 201, "leased", 6, NULL) == IDEM_FRESH,
		  "and commits from the new session");
	CHECK(idem_extend(a, k, NULL, NULL) == IDEM_NOT_FOUND &&
		  strcmp(idem_sqlstate(a), "IK404") == 0, "extend of a committed key: IK404");
	o = idem_reserve(b, k, NULL, &rec);
	CHECK(o == IDEM_REPLAY && body_is(rec, "leased", 6) &&
		  idem_record_lease_expires_at(rec) == 0, "the response replays");
	idem_record_free(rec);

	/* "0" forces session owners, NULL is automatic again */
	k = key_of("lease-zero");
	idem_set_lease(a, "0");
	o = idem_reserve(a, k, NULL, &rec);
	CHECK(idem_uses_leases(a) == 0 && o == IDEM_FRESH &&
		  idem_record_lease_expires_at(rec) == 0,
		  "idem_set_lease(\"0\"): session owners");
	idem_record_free(rec);
	idem_release(a, k, NULL);
	idem_set_lease(a, "soon");
	CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT,
		  "a lease that is not an interval: bad input (%s)", idem_errmsg(a));
	idem_set_lease(a, "-1s");
	CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(a) == IDEM_ERR_BAD_INPUT && idem_uses_leases(a) == -1,
		  "a negative lease: bad input (%s)", idem_errmsg(a));
	idem_set_lease(a, NULL);
	CHECK(idem_lease(a) == NULL && idem_uses_leases(a) == 0,
		  "a NULL lease: automatic, session owners on a direct connection");

	/* the server's idem.lease decides when the handle does not */
	{
		PGconn	   *pg = PQconnectdb("options='-c idem.lease=5s'");
		idem_conn  *w = idem_wrap(pg);

		t0 = wall_us();
		k = key_of("lease-setting");
		CHECK(idem_uses_leases(w) == 1,
			  "idem.lease = 5s on the server: the handle uses leases");
		o = idem_reserve(w, k, NULL, &rec);
		CHECK(o == IDEM_FRESH && idem_record_lease_expires_at(rec) > t0 + 3000000 &&
			  idem_record_lease_expires_at(rec) < t0 + 7000000,
			  "and its reservations are lease-owned, for 5 s");
		idem_record_free(rec);
		idem_set_lease(w, "0");
		o = idem_reserve(w, key_of("lease-setting-0"), NULL, &rec);
		CHECK(o == IDEM_FRESH && idem_record_lease_expires_at(rec) == 0,
			  "idem_set_lease(\"0\") wins over idem.lease");
		idem_record_free(rec);
		idem_commit(w, k, NULL, 200, NULL, 0, NULL);
		idem_release(w, key_of("lease-setting-0"), NULL);
		idem_free(w);
		PQfinish(pg);
	}
	idem_free(a);
	idem_free(b);
}

/* a handler that sleeps, watching its lease; records what it saw */
typedef struct lease_ctx
{
	int			sleep_ms;
	int			runs;
	int			saw_lost;
	double		lost_after_ms;	/* since the handler started */
	const char *fence_key;		/* expire this key's lease, then take it over */
	idem_conn  *thief;
	idem_outcome theft;
	int			theft_attempt;
} lease_ctx;

static int
lease_handler(idem_response *resp, void *arg)
{
	lease_ctx  *ctx = arg;
	double		start = now_ms();
	char		body[64];

	ctx->runs++;
	if (ctx->fence_key)
	{
		idem_opts	nowait = {NULL, NULL, NULL, "0"};
		idem_record *rec = NULL;
		char		sql[512];

		/* the owner stalled: its lease ran out, and another caller came */
		sleep_ms(100);
		snprintf(sql, sizeof(sql),
				 "UPDATE idem_keys SET lease_expires_at = now() - interval '1s' "
				 "WHERE key = '%s'", ctx->fence_key);
		admin_exec(sql);
		ctx->theft = idem_reserve(ctx->thief, ctx->fence_key, &nowait, &rec);
		ctx->theft_attempt = rec ? idem_record_attempt(rec) : 0;
		idem_record_free(rec);
	}
	while (now_ms() - start < ctx->sleep_ms)
	{
		if (!ctx->saw_lost && idem_response_lease_lost(resp))
		{
			ctx->saw_lost = 1;
			ctx->lost_after_ms = now_ms() - start;
		}
		sleep_ms(20);
	}
	snprintf(body, sizeof(body), "attempt %d", idem_response_attempt(resp));
	idem_response_set_status(resp, 200);
	return idem_response_set_body(resp, body, strlen(body));
}

typedef struct run_arg
{
	idem_conn  *conn;
	const char *key;
	lease_ctx  *ctx;
	idem_outcome outcome;
	idem_record *rec;
	int			step;
} run_arg;

static void *
run_in_thread(void *arg)
{
	run_arg    *r = arg;

	if (r->step)
		r->outcome = idem_step(r->conn, r->key, NULL, lease_handler, r->ctx, &r->rec);
	else
		r->outcome = idem_run(r->conn, r->key, NULL, lease_handler, r->ctx, &r->rec);
	return NULL;
}

static void
test_lease_renewal(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	idem_opts	nowait = {NULL, NULL, NULL, "0"};
	lease_ctx	ctx;
	run_arg		r;
	pthread_t	th;
	int			probes = 0,
				taken = 0;
	int64_t		first_end = 0,
				last_end = 0;
	double		t0;
	idem_outcome o_tx;

	/* a lease of 1 s, a handler of 2.5 s: renewed, never taken over */
	memset(&ctx, 0, sizeof(ctx));
	ctx.sleep_ms = 2500;
	memset(&r, 0, sizeof(r));
	r.conn = a;
	r.key = key_of("renewed");
	r.ctx = &ctx;
	idem_set_lease(a, "1s");
	t0 = now_ms();
	pthread_create(&th, NULL, run_in_thread, &r);
	sleep_ms(150);
	while (now_ms() - t0 < 2300)
	{
		idem_outcome o = idem_reserve(b, r.key, &nowait, &rec);

		probes++;
		if (o == IDEM_FRESH)
		{
			taken++;
			idem_release(b, r.key, NULL);
		}
		idem_record_free(rec);
		if (idem_get(b, r.key, NULL, &rec) == IDEM_IN_FLIGHT)
		{
			if (first_end == 0)
				first_end = idem_record_lease_expires_at(rec);
			last_end = idem_record_lease_expires_at(rec);
		}
		idem_record_free(rec);
		sleep_ms(200);
	}
	pthread_join(th, NULL);
	CHECK(taken == 0 && probes >= 8,
		  "lease 1 s, handler 2.5 s: %d attempts by another handle to take it "
		  "over, %d succeeded", probes, taken);
	CHECK(first_end != 0 && last_end - first_end > 1000000,
		  "the lease was renewed while the handler ran (its end moved %.1f s)",
		  (last_end - first_end) / 1e6);
	CHECK(r.outcome == IDEM_FRESH && body_is(r.rec, "attempt 1", 9) &&
		  ctx.runs == 1 && !ctx.saw_lost,
		  "idem_run: fresh, attempt 1, the handler ran once and never saw "
		  "its lease lost (%s)", idem_errmsg(a));
	idem_record_free(r.rec);
	CHECK(idem_get(b, r.key, NULL, &rec) == IDEM_REPLAY && idem_record_attempt(rec) == 1,
		  "committed by its first and only owner");
	idem_record_free(rec);

	/* the step helper renews too */
	memset(&ctx, 0, sizeof(ctx));
	ctx.sleep_ms = 1200;
	idem_set_run_id(a, key_of("renewed-run"));
	idem_set_lease(a, "500ms");
	CHECK(idem_step(a, "slow-step", NULL, lease_handler, &ctx, &rec) == IDEM_FRESH &&
		  body_is(rec, "attempt 1", 9) && !ctx.saw_lost,
		  "idem_step with a lease of 500 ms and a step of 1.2 s: renewed, attempt 1");
	idem_record_free(rec);
	idem_set_run_id(a, NULL);

	/*
	 * Inside the application's transaction nobody else sees the
	 * reservation until COMMIT, and the runner commits in that same
	 * transaction: no renewal, which would not find the row and take the
	 * lease for lost.
	 */
	{
		PGconn	   *pg = PQconnectdb("");
		idem_conn  *w = idem_wrap(pg);
		PGresult   *res;
		const char *k = key_of("lease-in-tx");

		memset(&ctx, 0, sizeof(ctx));
		ctx.sleep_ms = 900;
		idem_set_lease(w, "600ms");
		PQclear(PQexec(pg, "BEGIN"));
		o_tx = idem_run(w, k, NULL, lease_handler, &ctx, &rec);
		res = PQexec(pg, "COMMIT");
		CHECK(o_tx == IDEM_FRESH && !ctx.saw_lost && ctx.runs == 1 &&
			  PQresultStatus(res) == PGRES_COMMAND_OK,
			  "inside a transaction block, a lease of 600 ms and a handler of "
			  "900 ms: fresh, never taken for lost (%s)", idem_errmsg(w));
		PQclear(res);
		idem_record_free(rec);
		CHECK(idem_get(b, k, NULL, &rec) == IDEM_REPLAY &&
			  body_is(rec, "attempt 1", 9),
			  "and committed with the transaction");
		idem_record_free(rec);
		idem_free(w);
		PQfinish(pg);
	}

	idem_free(a);
	idem_free(b);
}

static void
test_lease_lost(void)
{
	idem_conn  *a = open_conn();
	idem_conn  *b = open_conn();
	idem_record *rec = NULL;
	idem_opts	nowait = {NULL, NULL, NULL, "0"};
	const char *k = key_of("fenced");
	lease_ctx	ctx;
	idem_outcome o;

	/* reserve and commit by hand, no renewal: the lease runs out */
	idem_set_lease(a, "300ms");
	idem_set_lease(b, "30s");
	CHECK(idem_reserve(a, k, NULL, NULL) == IDEM_FRESH, "a lease of 300 ms, not renewed");
	sleep_ms(400);
	o = idem_reserve(b, k, &nowait, &rec);
	CHECK(o == IDEM_FRESH && idem_record_attempt(rec) == 2,
		  "once it ran out, another handle takes the key over at once (attempt 2)");
	idem_record_free(rec);
	CHECK(idem_commit(a, k, NULL, 200, "late", 4, NULL) == IDEM_LEASE_LOST &&
		  idem_errcode(a) == IDEM_ERR_LEASE_LOST &&
		  strcmp(idem_sqlstate(a), "IK409") == 0,
		  "the late owner's commit is fenced: IDEM_LEASE_LOST, IK409 (%s)",
		  idem_errmsg(a));
	CHECK(idem_release(a, k, NULL) == IDEM_LEASE_LOST &&
		  idem_extend(a, k, NULL, NULL) == IDEM_LEASE_LOST,
		  "and so are its release and extend");
	CHECK(idem_commit(b, k, NULL, 200, "new owner", 9, NULL) == IDEM_FRESH &&
		  idem_get(a, k, NULL, &rec) == IDEM_REPLAY && body_is(rec, "new owner", 9),
		  "the new owner's response is the one stored");
	idem_record_free(rec);

	/* a runner: its lease runs out while the handler runs, another takes over */
	memset(&ctx, 0, sizeof(ctx));
	ctx.sleep_ms = 2000;
	ctx.fence_key = k = key_of("fenced-run");
	ctx.thief = b;
	idem_set_lease(a, "1s");
	o = idem_run(a, k, NULL, lease_handler, &ctx, &rec);
	CHECK(ctx.theft == IDEM_FRESH && ctx.theft_attempt == 2,
		  "the lease ran out while the handler ran: another handle took it over "
		  "(attempt %d)", ctx.theft_attempt);
	CHECK(ctx.saw_lost && ctx.lost_after_ms < 1000,
		  "the renewal found it fenced, and the handler saw it "
		  "(idem_response_lease_lost after %.0f ms)", ctx.lost_after_ms);
	CHECK(o == IDEM_LEASE_LOST && rec == NULL &&
		  idem_errcode(a) == IDEM_ERR_LEASE_LOST && ctx.runs == 1,
		  "idem_run: IDEM_LEASE_LOST, never a success (%s / %s)",
		  idem_errmsg(a), idem_errdetail(a));
	CHECK(idem_get(b, k, NULL, &rec) == IDEM_IN_FLIGHT && idem_record_attempt(rec) == 2,
		  "nothing of the first run was stored: the key is the new owner's");
	idem_record_free(rec);
	CHECK(idem_commit(b, k, NULL, 200, "second", 6, NULL) == IDEM_FRESH,
		  "the new owner commits");
	CHECK(idem_http_error_status(IDEM_LEASE_LOST, IDEM_ERR_LEASE_LOST) == 409 &&
		  strcmp(idem_outcome_name(IDEM_LEASE_LOST), "lease_lost") == 0 &&
		  strcmp(idem_error_name(IDEM_ERR_LEASE_LOST), "lease_lost") == 0 &&
		  IDEM_LEASE_LOST == IDEM_ERROR + 1,
		  "IDEM_LEASE_LOST comes after IDEM_ERROR; HTTP 409");

	idem_free(a);
	idem_free(b);
}

/* ---- waiting in slices ---------------------------------------------------- */

typedef struct slice_waiter
{
	const char *key;
	const char *lease;
	const char *wait;
	idem_conn  *conn;
	idem_outcome outcome;
	idem_record *rec;
	double		done_ms;
} slice_waiter;

static void *
slice_wait(void *arg)
{
	slice_waiter *w = arg;
	idem_opts	o = {NULL, NULL, NULL, w->wait};

	idem_set_lease(w->conn, w->lease);
	w->outcome = idem_reserve(w->conn, w->key, &o, &w->rec);
	w->done_ms = now_ms();
	return NULL;
}

/* when the backend behind conn started its current statement */
static char *
query_start(idem_conn *conn)
{
	char		pid[16];

	snprintf(pid, sizeof(pid), "%d", PQbackendPID(idem_pgconn(conn)));
	return admin_value("SELECT query_start FROM pg_stat_activity WHERE pid = %s", pid);
}

static void
test_slices(void)
{
	idem_conn  *a = open_conn();
	slice_waiter w = {key_of("slices"), "30s", "10s", open_conn(), IDEM_ERROR, NULL, 0};
	slice_waiter s = {w.key, NULL, "10s", open_conn(), IDEM_ERROR, NULL, 0};
	pthread_t	th,
				th2;
	char	   *q1,
			   *q2,
			   *s1,
			   *s2;
	double		commit_ms,
				t;
	idem_stats	st;

	/* a lease handle waits in slices; a session handle in one piece */
	idem_reserve(a, w.key, NULL, NULL);
	pthread_create(&th, NULL, slice_wait, &w);
	pthread_create(&th2, NULL, slice_wait, &s);
	sleep_ms(400);
	q1 = query_start(w.conn);
	s1 = query_start(s.conn);
	sleep_ms(1300);
	q2 = query_start(w.conn);
	s2 = query_start(s.conn);
	commit_ms = now_ms();
	idem_commit(a, w.key, NULL, 200, "sliced", 6, NULL);
	pthread_join(th, NULL);
	pthread_join(th2, NULL);
	CHECK(q1 && q2 && strcmp(q1, q2) != 0,
		  "a waiter with a lease reserves again slice after slice (statements "
		  "started at %s, then %s)", q1 ? q1 : "?", q2 ? q2 : "?");
	CHECK(s1 && s2 && strcmp(s1, s2) == 0,
		  "a direct session-owner waiter waits in one statement");
	CHECK(w.outcome == IDEM_REPLAY && body_is(w.rec, "sliced", 6) &&
		  w.done_ms - commit_ms < 1000,
		  "the lease waiter gets the committed response, %.0f ms after the commit",
		  w.done_ms - commit_ms);
	CHECK(s.outcome == IDEM_REPLAY && body_is(s.rec, "sliced", 6),
		  "and so does the session waiter");
	idem_counters(w.conn, &st);
	CHECK(st.reserves == 1 && st.in_flight == 0 && st.replays == 1,
		  "the slices count as one reserve (%llu), no in-flight outcome",
		  (unsigned long long) st.reserves);
	free(q1);
	free(q2);
	free(s1);
	free(s2);
	idem_record_free(w.rec);
	idem_record_free(s.rec);
	w.rec = s.rec = NULL;

	/* the owner's lease runs out: the waiter takes over */
	w.key = key_of("slices-takeover");
	idem_set_lease(a, "1s");
	idem_reserve(a, w.key, NULL, NULL);
	t = now_ms();
	slice_wait(&w);
	CHECK(w.outcome == IDEM_FRESH && idem_record_attempt(w.rec) == 2 &&
		  w.done_ms - t > 700 && w.done_ms - t < 2500,
		  "the owner's lease of 1 s ran out: the waiter took over after %.0f ms "
		  "(attempt %d)", w.done_ms - t, w.rec ? idem_record_attempt(w.rec) : 0);
	idem_record_free(w.rec);
	w.rec = NULL;
	idem_release(w.conn, w.key, NULL);

	/* the wait timeout holds, and the timeout is one in-flight outcome */
	w.key = key_of("slices-timeout");
	w.wait = "700ms";
	idem_set_lease(a, "30s");
	idem_reserve(a, w.key, NULL, NULL);
	idem_counters(w.conn, &st);
	t = now_ms();
	slice_wait(&w);
	{
		idem_stats	st2;

		idem_counters(w.conn, &st2);
		CHECK(w.outcome == IDEM_IN_FLIGHT && w.rec == NULL &&
			  w.done_ms - t >= 600 && w.done_ms - t < 1600 &&
			  st2.in_flight == st.in_flight + 1,
			  "a wait of 700 ms in slices: IDEM_IN_FLIGHT after %.0f ms, counted once",
			  w.done_ms - t);
	}
	idem_release(a, w.key, NULL);

	/* inside a transaction block the wait is one statement */
	{
		PGresult   *res = PQexec(idem_pgconn(w.conn), "BEGIN");

		PQclear(res);
		w.key = key_of("slices-tx");
		w.wait = "300ms";
		idem_reserve(a, w.key, NULL, NULL);
		slice_wait(&w);
		CHECK(w.outcome == IDEM_IN_FLIGHT &&
			  PQtransactionStatus(idem_pgconn(w.conn)) == PQTRANS_INERROR,
			  "in a transaction block: one wait, IK409 aborts the transaction");
		res = PQexec(idem_pgconn(w.conn), "ROLLBACK");
		PQclear(res);
		idem_release(a, w.key, NULL);
	}

	idem_free(w.conn);
	idem_free(s.conn);
	idem_free(a);
}

/* ---- a server whose extension predates owners -------------------------- */

static void
test_old_extension(void)
{
	char		sql[256];
	char		dsn[256];
	idem_conn  *c;
	idem_record *rec = NULL;
	idem_outcome o;

	snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s-v11\"", prefix);
	if (admin_exec(sql) < 0)
	{
		CHECK(0, "CREATE DATABASE for the extension 1.1 case");
		return;
	}
	snprintf(dsn, sizeof(dsn), "dbname=%s-v11", prefix);
	c = idem_connect(dsn);
	{
		PGresult   *res = PQexec(idem_pgconn(c),
								 "CREATE EXTENSION idempotency VERSION '1.1'");

		CHECK(PQresultStatus(res) == PGRES_COMMAND_OK,
			  "a database with the extension at version 1.1");
		PQclear(res);
	}
	o = idem_reserve(c, "old-k", NULL, &rec);
	CHECK(o == IDEM_FRESH && idem_record_owner(rec) == NULL &&
		  idem_record_lease_expires_at(rec) == 0 && idem_uses_leases(c) == 0,
		  "version 1.1: reserve works, session owner, no token (%s)", idem_errmsg(c));
	idem_record_free(rec);
	CHECK(idem_commit(c, "old-k", NULL, 200, "old", 3, NULL) == IDEM_FRESH &&
		  idem_get(c, "old-k", NULL, &rec) == IDEM_REPLAY && body_is(rec, "old", 3),
		  "commit and get with the old statements");
	idem_record_free(rec);
	CHECK(idem_reserve(c, "old-r", NULL, NULL) == IDEM_FRESH &&
		  idem_release(c, "old-r", NULL) == IDEM_FRESH && idem_purge(c, 0) >= 0,
		  "release and purge too");
	CHECK(idem_extend(c, "old-k", NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(c) == IDEM_ERR_NO_EXTENSION,
		  "idem_extend needs 1.2: IDEM_ERR_NO_EXTENSION (%s)", idem_errmsg(c));
	idem_set_lease(c, "30s");
	CHECK(idem_reserve(c, "old-l", NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(c) == IDEM_ERR_NO_EXTENSION &&
		  strstr(idem_errdetail(c), "ALTER EXTENSION") != NULL,
		  "a lease asked of 1.1: IDEM_ERR_NO_EXTENSION (%s)", idem_errmsg(c));
	idem_set_lease(c, "0");
	CHECK(idem_reserve(c, "old-l", NULL, NULL) == IDEM_FRESH,
		  "a lease of \"0\" (session owners) works on 1.1");
	idem_free(c);

	/*
	 * Updated to 1.2, the first version with owners: the reserve and the
	 * get return its idem_reservation as one composite value, the
	 * attributes 1.2 has, read by position.
	 */
	c = idem_connect(dsn);
	{
		PGresult   *res = PQexec(idem_pgconn(c),
								 "ALTER EXTENSION idempotency UPDATE TO '1.2'");

		CHECK(PQresultStatus(res) == PGRES_COMMAND_OK, "updated to 1.2 (%s)",
			  PQresultErrorMessage(res));
		PQclear(res);
	}
	idem_set_lease(c, "30s");
	o = idem_reserve(c, "v12-l", NULL, &rec);
	CHECK(o == IDEM_FRESH && idem_record_owner(rec) != NULL &&
		  idem_record_lease_expires_at(rec) > idem_record_created_at(rec) &&
		  idem_record_attempt(rec) == 1 &&
		  strcmp(idem_record_state(rec), "in_flight") == 0,
		  "version 1.2: a leased reserve, decoded from the composite (%s)",
		  idem_errmsg(c));
	idem_record_free(rec);
	rec = NULL;
	CHECK(idem_commit(c, "v12-l", NULL, 201, "v12", 3, NULL) == IDEM_FRESH &&
		  idem_get(c, "v12-l", NULL, &rec) == IDEM_REPLAY && body_is(rec, "v12", 3) &&
		  idem_record_status(rec) == 201 && idem_record_owner(rec) == NULL,
		  "version 1.2: committed, got back as stored (%s)", idem_errmsg(c));
	idem_record_free(rec);
	rec = NULL;
	CHECK(idem_get(c, "v12-absent", NULL, &rec) == IDEM_NOT_FOUND && rec == NULL,
		  "version 1.2: an absent key (a NULL composite) is not found (%s)",
		  idem_errmsg(c));
	idem_free(c);
	snprintf(sql, sizeof(sql), "DROP DATABASE \"%s-v11\" WITH (FORCE)", prefix);
	admin_exec(sql);
}

/* ---- runners in a transaction block of their own (idem_set_transaction) -- */

typedef struct tx_ctx
{
	idem_conn  *conn;
	const char *sql;			/* run in the handler, or NULL */
	int			rc;				/* what the handler returns */
	int			status;
	int			runs;
	int			in_block;		/* the handler ran inside a block */
} tx_ctx;

static int
tx_handler(idem_response *resp, void *arg)
{
	tx_ctx	   *t = arg;
	PGconn	   *pg = idem_pgconn(t->conn);

	t->runs++;
	t->in_block = PQtransactionStatus(pg) == PQTRANS_INTRANS;
	if (t->sql)
		PQclear(PQexec(pg, t->sql));
	idem_response_set_status(resp, t->status);
	idem_response_add_header(resp, "Content-Type", "text/plain");
	if (t->rc == 0 && idem_response_set_body(resp, "tx", 2) < 0)
		return -1;
	return t->rc;
}

/* rows of idem_tx_test with this tag */
static int
tx_rows(const char *tag)
{
	char		sql[256];
	PGresult   *res;
	int			n;

	snprintf(sql, sizeof(sql),
			 "SELECT count(*) FROM idem_tx_test WHERE tag = '%s'", tag);
	res = PQexec(admin, sql);
	n = PQresultStatus(res) == PGRES_TUPLES_OK ? atoi(PQgetvalue(res, 0, 0)) : -1;
	PQclear(res);
	return n;
}

static int
idle(idem_conn *c)
{
	return PQtransactionStatus(idem_pgconn(c)) == PQTRANS_IDLE;
}

static void
test_transaction(void)
{
	idem_conn  *c = open_conn();
	idem_conn  *other = open_conn();
	idem_record *rec = NULL;
	idem_opts	o1 = {NULL, "hash-1", NULL, NULL};
	idem_opts	o2 = {NULL, "hash-2", NULL, "0"};
	tx_ctx		t;
	char		sql[512];
	idem_outcome o;
	idem_http  *http = idem_http_new();
	idem_http_request req;
	idem_header h;
	int			status;

	admin_exec("CREATE TABLE IF NOT EXISTS idem_tx_test (tag text, n int)");
	admin_exec("CREATE TABLE IF NOT EXISTS idem_tx_parent (id int PRIMARY KEY)");
	admin_exec("CREATE TABLE IF NOT EXISTS idem_tx_child (id int REFERENCES "
			   "idem_tx_parent DEFERRABLE INITIALLY DEFERRED)");
	CHECK(idem_transaction(c) == 0 && idem_set_transaction(c, 1) == 0 &&
		  idem_transaction(c) == 1 && idem_set_transaction(NULL, 1) == -1,
		  "idem_set_transaction / idem_transaction");

	memset(&t, 0, sizeof(t));
	t.conn = c;
	t.status = 201;
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 1)",
			 key_of("tx-1"));
	t.sql = sql;
	o = idem_run(c, key_of("tx-1"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_FRESH && t.runs == 1 && t.in_block && idle(c) &&
		  tx_rows(key_of("tx-1")) == 1 && rec &&
		  strcmp(idem_record_state(rec), "committed") == 0,
		  "a run in a block of its own: the handler inside it, its row and the "
		  "response committed together, the session idle after (%s)",
		  idem_errmsg(c));
	idem_record_free(rec);
	rec = NULL;
	o = idem_run(c, key_of("tx-1"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_REPLAY && t.runs == 1 && idle(c) && body_is(rec, "tx", 2),
		  "its replay: the handler does not run, the block is ended");
	idem_record_free(rec);
	rec = NULL;
	CHECK(idem_run(c, key_of("tx-1"), &o2, tx_handler, &t, &rec) == IDEM_MISMATCH &&
		  rec == NULL && idle(c) && t.runs == 1,
		  "another request with the key: IDEM_MISMATCH, the block rolled back");

	/* a failing handler: its writes and the reservation roll back */
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 1)",
			 key_of("tx-2"));
	t.rc = 1;
	o = idem_run(c, key_of("tx-2"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_ERROR && idem_errcode(c) == IDEM_ERR_HANDLER && idle(c) &&
		  tx_rows(key_of("tx-2")) == 0 &&
		  idem_get(other, key_of("tx-2"), NULL, NULL) == IDEM_NOT_FOUND,
		  "a handler that fails: its row and the reservation rolled back (%s)",
		  idem_errmsg(c));
	t.rc = 0;
	o = idem_run(c, key_of("tx-2"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_FRESH && tx_rows(key_of("tx-2")) == 1 && t.runs == 3,
		  "so that a retry runs it again");
	idem_record_free(rec);
	rec = NULL;

	/* a key in flight elsewhere */
	CHECK(idem_reserve(other, key_of("tx-3"), NULL, NULL) == IDEM_FRESH,
		  "another handle holds a key");
	{
		idem_opts	nowait = {NULL, NULL, NULL, "0"};

		o = idem_run(c, key_of("tx-3"), &nowait, tx_handler, &t, &rec);
		CHECK(o == IDEM_IN_FLIGHT && idle(c) && t.runs == 3,
			  "a run on it: IDEM_IN_FLIGHT, the block rolled back, the "
			  "connection ready (%s)", idem_errmsg(c));
	}
	idem_release(other, key_of("tx-3"), NULL);

	/* the handler leaves the block failed: the commit fails in the pipeline */
	t.sql = "SELECT 1/0";
	o = idem_run(c, key_of("tx-4"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_ERROR && strcmp(idem_sqlstate(c), "25P02") == 0 && idle(c) &&
		  idem_get(other, key_of("tx-4"), NULL, NULL) == IDEM_NOT_FOUND,
		  "a block the handler left failed: the commit fails (%s), all of it "
		  "rolled back", idem_errmsg(c));

	/* COMMIT itself fails: a deferred foreign key */
	t.sql = "INSERT INTO idem_tx_child VALUES (42)";
	o = idem_run(c, key_of("tx-5"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_ERROR && strcmp(idem_sqlstate(c), "23503") == 0 && idle(c) &&
		  rec == NULL && idem_get(other, key_of("tx-5"), NULL, NULL) == IDEM_NOT_FOUND,
		  "a COMMIT that fails after the commit: IDEM_ERROR (%s), nothing stored",
		  idem_errmsg(c));

	/* statements deallocated behind the handle's back, BEGIN in front */
	t.sql = NULL;
	PQclear(PQexec(idem_pgconn(c), "DEALLOCATE ALL"));
	o = idem_run(c, key_of("tx-6"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_FRESH && idle(c),
		  "prepared statements gone: prepared again, the block made anew (%s)",
		  idem_errmsg(c));
	idem_record_free(rec);
	rec = NULL;

	/* the statements stay prepared: none is prepared again per call */
	{
		const char *q = "SELECT string_agg(name || ' ' || prepare_time, ',' "
			"ORDER BY name) FROM pg_prepared_statements";
		PGresult   *r1 = PQexec(idem_pgconn(c), q);
		PGresult   *r2;
		int			i,
					fresh = 0;

		for (i = 0; i < 5; i++)
		{
			char		k[32];

			snprintf(k, sizeof(k), "tx-p%d", i);
			fresh += idem_run(c, key_of(k), &o1, tx_handler, &t, &rec) == IDEM_FRESH;
			idem_record_free(rec);
			rec = NULL;
		}
		r2 = PQexec(idem_pgconn(c), q);
		CHECK(fresh == 5 && PQresultStatus(r1) == PGRES_TUPLES_OK &&
			  PQresultStatus(r2) == PGRES_TUPLES_OK &&
			  strstr(PQgetvalue(r1, 0, 0), "libidem1_owner_reserve_in_block2") != NULL &&
			  strstr(PQgetvalue(r1, 0, 0), "libidem1_begin ") != NULL &&
			  strstr(PQgetvalue(r1, 0, 0), "libidem1_end ") != NULL &&
			  strcmp(PQgetvalue(r1, 0, 0), PQgetvalue(r2, 0, 0)) == 0,
			  "five more runs: the same prepared statements, prepared at the "
			  "same times, the reserve's the one for blocks, BEGIN and "
			  "COMMIT prepared too (%s)",
			  PQgetvalue(r2, 0, 0));
		PQclear(r1);
		PQclear(r2);
	}

	/*
	 * The reserve inside a block asks for the function's value alone: a
	 * Result calling it, no function scan, no computed column.
	 */
	{
		PGresult   *r = PQexec(idem_pgconn(c),
							   "EXPLAIN (VERBOSE, COSTS OFF) EXECUTE "
							   "libidem1_owner_reserve_in_block2('tx-plan', NULL, "
							   "NULL, NULL, '', NULL, NULL)");
		int			ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) >= 2;
		int			i;

		for (i = 0; ok && i < PQntuples(r); i++)
			if (strstr(PQgetvalue(r, i, 0), "extract") != NULL ||
				strstr(PQgetvalue(r, i, 0), "now()") != NULL ||
				strstr(PQgetvalue(r, i, 0), "Function Scan") != NULL)
				ok = 0;
		CHECK(ok && strncmp(PQgetvalue(r, 0, 0), "Result", 6) == 0 &&
			  strstr(PQgetvalue(r, 1, 0), "idem_reserve(") != NULL,
			  "the reserve for blocks calls the function from a Result (%s)",
			  PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 1 ?
			  PQgetvalue(r, 1, 0) : PQresultErrorMessage(r));
		PQclear(r);
	}

	/* a block of the application's: joined, not ended */
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 1)",
			 key_of("tx-7"));
	t.sql = sql;
	PQclear(PQexec(idem_pgconn(c), "BEGIN"));
	o = idem_run(c, key_of("tx-7"), &o1, tx_handler, &t, &rec);
	CHECK(o == IDEM_FRESH &&
		  PQtransactionStatus(idem_pgconn(c)) == PQTRANS_INTRANS &&
		  idem_get(other, key_of("tx-7"), NULL, NULL) == IDEM_NOT_FOUND,
		  "inside the application's block: joined, left open (%s)",
		  idem_errmsg(c));
	idem_record_free(rec);
	rec = NULL;
	PQclear(PQexec(idem_pgconn(c), "ROLLBACK"));
	CHECK(tx_rows(key_of("tx-7")) == 0 &&
		  idem_get(other, key_of("tx-7"), NULL, NULL) == IDEM_NOT_FOUND,
		  "and its rollback takes all of it back");

	/* the HTTP runner: guarded and bypassed requests */
	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.path = "/tx";
	req.body = "{}";
	req.body_len = 2;
	h.name = "Idempotency-Key";
	h.value = key_of("tx-http");
	req.headers = &h;
	req.nheaders = 1;
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 1)",
			 key_of("tx-http"));
	o = idem_http_run(c, http, &req, tx_handler, &t, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 201 && idle(c) && t.in_block &&
		  tx_rows(key_of("tx-http")) == 1,
		  "idem_http_run: the same (%s)", idem_errmsg(c));
	idem_record_free(rec);
	rec = NULL;
	o = idem_http_run(c, http, &req, tx_handler, &t, &rec, &status);
	CHECK(o == IDEM_REPLAY && status == 201 && idle(c) &&
		  tx_rows(key_of("tx-http")) == 1, "and its replay");
	idem_record_free(rec);
	rec = NULL;
	h.value = key_of("tx-http-500");
	t.status = 500;
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 1)",
			 key_of("tx-http-500"));
	o = idem_http_run(c, http, &req, tx_handler, &t, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 500 && idle(c) &&
		  tx_rows(key_of("tx-http-500")) == 0 &&
		  strcmp(idem_record_state(rec), "released") == 0 &&
		  idem_get(other, key_of("tx-http-500"), NULL, NULL) == IDEM_NOT_FOUND,
		  "a 500: served, rolled back, the key free again");
	idem_record_free(rec);
	rec = NULL;
	req.nheaders = 0;
	t.status = 201;
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 1)",
			 key_of("tx-bypass"));
	o = idem_http_run(c, http, &req, tx_handler, &t, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 201 && t.in_block && idle(c) &&
		  tx_rows(key_of("tx-bypass")) == 1,
		  "a bypassed request: its handler in a block, committed");
	idem_record_free(rec);
	rec = NULL;
	t.status = 503;
	snprintf(sql, sizeof(sql), "INSERT INTO idem_tx_test VALUES ('%s', 2)",
			 key_of("tx-bypass"));
	o = idem_http_run(c, http, &req, tx_handler, &t, &rec, &status);
	CHECK(o == IDEM_FRESH && status == 503 && idle(c) &&
		  tx_rows(key_of("tx-bypass")) == 1,
		  "a bypassed 503: rolled back");
	idem_record_free(rec);
	rec = NULL;

	/* the connection lost while the handler runs: no retry of the commit */
	h.value = key_of("tx-kill");
	req.nheaders = 1;
	t.status = 201;
	t.sql = NULL;
	{
		idem_conn  *k = open_conn();
		tx_ctx		tk = t;

		idem_set_transaction(k, 1);
		tk.conn = k;
		tk.sql = "SELECT pg_terminate_backend(pg_backend_pid())";
		o = idem_http_run(k, http, &req, tx_handler, &tk, &rec, &status);
		CHECK(o == IDEM_ERROR && idem_errcode(k) == IDEM_ERR_CONNECTION &&
			  status == 503 && rec == NULL &&
			  idem_get(other, key_of("tx-kill"), NULL, NULL) == IDEM_NOT_FOUND,
			  "the connection lost in the handler: IDEM_ERR_CONNECTION, 503, "
			  "nothing stored (%s)", idem_errmsg(k));
		tk.sql = NULL;
		CHECK(idem_reconnect(k) == 0 &&
			  idem_http_run(k, http, &req, tx_handler, &tk, &rec, &status) ==
			  IDEM_FRESH && idle(k),
			  "after a reconnect the same request runs (%s)", idem_errmsg(k));
		idem_record_free(rec);
		rec = NULL;
		idem_free(k);
	}

	idem_http_free(http);
	idem_free(other);
	idem_free(c);
	admin_exec("DROP TABLE idem_tx_test, idem_tx_child, idem_tx_parent");
}

/* ---- an extension outside the session's search_path ------------------------ */

typedef struct schema_run
{
	const char *dsn;
	const char *key;
	int64_t		lease_at_start;
	int64_t		lease_at_end;
} schema_run;

/* waits past a renewal and reads the lease from another handle */
static int
schema_handler(idem_response *resp, void *arg)
{
	schema_run *s = arg;
	idem_conn  *other = idem_connect(s->dsn);
	idem_record *rec = NULL;

	if (idem_get(other, s->key, NULL, &rec) == IDEM_IN_FLIGHT)
		s->lease_at_start = idem_record_lease_expires_at(rec);
	idem_record_free(rec);
	sleep_ms(900);
	rec = NULL;
	if (idem_get(other, s->key, NULL, &rec) == IDEM_IN_FLIGHT)
		s->lease_at_end = idem_record_lease_expires_at(rec);
	idem_record_free(rec);
	idem_free(other);
	idem_response_set_status(resp, 201);
	idem_response_add_header(resp, "Location", "/x/1");
	idem_response_add_header(resp, "Vary", "a");
	idem_response_add_header(resp, "vary", "b");
	return idem_response_set_body(resp, "made", 4);
}

static void
test_schema(void)
{
	/* one of each kind of value, in the order jsonb keeps the keys */
	static const char *const stored =
		"{\"B\": [\"2\", \"3\"], \"A\": \"x\", \"Num\": [1, {\"k\": \"v\"}, "
		"null, true], \"Esc\": [\"a\\\"b\\n\\u00e9\"], \"Empty\": []}";
	static const char *const want_json =
		"{\"A\": \"x\", \"B\": [\"2\", \"3\"], \"Esc\": [\"a\\\"b\\n\xc3\xa9\"], "
		"\"Num\": [1, {\"k\": \"v\"}, null, true], \"Empty\": []}";
	static const char *const want[][2] = {
		{"A", "x"}, {"B", "2"}, {"B", "3"}, {"Esc", "a\"b\n\xc3\xa9"},
		{"Num", "1"}, {"Num", "{\"k\": \"v\"}"}, {"Num", "null"},
		{"Num", "true"},
	};
	size_t		nwant = sizeof(want) / sizeof(want[0]);
	char		sql[256];
	char		dsn[256];
	idem_conn  *c;
	idem_record *rec = NULL;
	schema_run	run;
	size_t		i;
	int			same;

	snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s-schema\"", prefix);
	if (admin_exec(sql) < 0)
	{
		CHECK(0, "CREATE DATABASE for the schema case");
		return;
	}
	snprintf(dsn, sizeof(dsn), "dbname=%s-schema", prefix);
	c = idem_connect(dsn);
	{
		PGresult   *res = PQexec(idem_pgconn(c),
								 "CREATE SCHEMA \"Idem S\"; "
								 "CREATE EXTENSION idempotency SCHEMA \"Idem S\"");

		CHECK(PQresultStatus(res) == PGRES_COMMAND_OK,
			  "the extension in a schema of its own");
		PQclear(res);
	}
	idem_free(c);

	/* sessions whose search_path does not name it */
	snprintf(dsn, sizeof(dsn),
			 "dbname=%s-schema options='-csearch_path=public'", prefix);
	c = idem_connect(dsn);
	CHECK(idem_reserve(c, "s-k", NULL, &rec) == IDEM_FRESH &&
		  idem_record_owner(rec) != NULL,
		  "reserve with the extension off the search_path (%s)", idem_errmsg(c));
	idem_record_free(rec);
	CHECK(idem_commit(c, "s-k", NULL, 200, "ok", 2, stored) == IDEM_FRESH,
		  "commit too (%s)", idem_errmsg(c));
	rec = NULL;
	CHECK(idem_reserve(c, "s-k", NULL, &rec) == IDEM_REPLAY && body_is(rec, "ok", 2),
		  "a replay (%s)", idem_errmsg(c));
	CHECK(rec && strcmp(idem_record_headers_json(rec), want_json) == 0,
		  "the headers' JSON as the server writes it: %s",
		  rec ? idem_record_headers_json(rec) : "(none)");
	same = rec && idem_record_header_count(rec) == nwant;
	for (i = 0; same && i < nwant; i++)
		same = strcmp(idem_record_header_name(rec, i), want[i][0]) == 0 &&
			strcmp(idem_record_header_value(rec, i), want[i][1]) == 0;
	CHECK(same, "the headers one by one: every value of a name, strings "
		  "unescaped, other values as JSON, in the stored order (%zu)",
		  rec ? idem_record_header_count(rec) : 0);
	CHECK(rec && idem_record_header(rec, "num") != NULL &&
		  strcmp(idem_record_header(rec, "num"), "1") == 0 &&
		  idem_record_header(rec, "Empty") == NULL,
		  "the first value by name; a name without values has none");
	idem_record_free(rec);
	rec = NULL;
	CHECK(idem_get(c, "s-k", NULL, &rec) == IDEM_REPLAY && rec &&
		  idem_record_header_count(rec) == nwant,
		  "get (%s)", idem_errmsg(c));
	idem_record_free(rec);
	CHECK(idem_reserve(c, "s-r", NULL, NULL) == IDEM_FRESH &&
		  idem_release(c, "s-r", NULL) == IDEM_FRESH && idem_purge(c, 0) >= 0,
		  "release and purge (%s)", idem_errmsg(c));

	/* a lease renewed from the renewal's own connection */
	idem_set_lease(c, "600ms");
	memset(&run, 0, sizeof(run));
	run.dsn = dsn;
	run.key = "s-run";
	rec = NULL;
	CHECK(idem_run(c, "s-run", NULL, schema_handler, &run, &rec) == IDEM_FRESH &&
		  idem_extend(c, "s-run", NULL, NULL) == IDEM_NOT_FOUND,
		  "a lease-owned run (%s)", idem_errmsg(c));
	CHECK(run.lease_at_start != 0 && run.lease_at_end > run.lease_at_start,
		  "its lease renewed while the handler ran");
	CHECK(rec && idem_record_header_count(rec) == 3 &&
		  strcmp(idem_record_header_value(rec, 1), "a") == 0 &&
		  strcmp(idem_record_header_name(rec, 2), "Vary") == 0 &&
		  strcmp(idem_record_header_value(rec, 2), "b") == 0,
		  "the runner's record: values of a name together, first spelling");
	idem_record_free(rec);
	rec = NULL;
	CHECK(idem_get(c, "s-run", NULL, &rec) == IDEM_REPLAY && rec &&
		  idem_record_header_count(rec) == 3 &&
		  strcmp(idem_record_header(rec, "location"), "/x/1") == 0,
		  "and its replay");
	idem_record_free(rec);
	idem_free(c);
	snprintf(sql, sizeof(sql), "DROP DATABASE \"%s-schema\" WITH (FORCE)", prefix);
	admin_exec(sql);
}

/* ---- through a transaction pooler (IDEM_TEST_PROXY) --------------------- */

typedef struct pooled
{
	const char *dsn;
	const char *key;
	int			id;
	int			sleep_ms;
	idem_outcome outcome;
	char		body[64];
	int			attempt;
} pooled;

static atomic_int pooled_runs;

static int
pooled_handler(idem_response *resp, void *arg)
{
	pooled	   *p = arg;
	char		body[64];

	atomic_fetch_add(&pooled_runs, 1);
	sleep_ms(p->sleep_ms);
	snprintf(body, sizeof(body), "by %d", p->id);
	idem_response_set_status(resp, 200);
	return idem_response_set_body(resp, body, strlen(body));
}

static void *
pooled_run(void *arg)
{
	pooled	   *p = arg;
	idem_conn  *c = idem_connect(p->dsn);
	idem_record *rec = NULL;
	idem_opts	o = {NULL, NULL, NULL, "30s"};

	p->outcome = idem_run(c, p->key, &o, pooled_handler, p, &rec);
	if (rec)
	{
		snprintf(p->body, sizeof(p->body), "%s", (const char *) idem_record_body(rec, NULL));
		p->attempt = idem_record_attempt(rec);
	}
	idem_record_free(rec);
	idem_free(c);
	return NULL;
}

static void
test_proxy(const char *dsn)
{
	idem_conn  *a = idem_connect(dsn);
	idem_conn  *b = idem_connect(dsn);
	idem_record *rec = NULL;
	idem_opts	nowait = {NULL, NULL, NULL, "0"};
	const char *k = key_of("proxy");
	pooled		p[20];
	pthread_t	th[20];
	int			i,
				fresh = 0,
				replay = 0,
				same = 1,
				n = 20;
	idem_outcome o;

	CHECK(idem_connected(a) && idem_proxied(a) == 1 && idem_uses_leases(a) == 1,
		  "behind the pooler: proxied, leases by default (%s)", idem_errmsg(a));
	o = idem_reserve(a, k, NULL, &rec);
	CHECK(o == IDEM_FRESH && idem_record_lease_expires_at(rec) > wall_us() + 25000000,
		  "a reservation through the pooler is lease-owned, 30 s");
	idem_record_free(rec);
	CHECK(idem_reserve(b, k, &nowait, NULL) == IDEM_IN_FLIGHT,
		  "another client through the pooler: in flight");
	for (i = 0; i < 50; i++)
		if (idem_get(a, k, NULL, NULL) != IDEM_IN_FLIGHT ||
			idem_reserve(a, k, NULL, NULL) != IDEM_FRESH)
			break;
	CHECK(i == 50, "100 calls across pooled server connections, none fails "
		  "(no vanished prepared statement: %s)", idem_errmsg(a));
	CHECK(idem_commit(a, k, NULL, 200, "pooled", 6, NULL) == IDEM_FRESH &&
		  idem_reserve(b, k, NULL, &rec) == IDEM_REPLAY && body_is(rec, "pooled", 6),
		  "commit through the pooler, replayed by another client");
	idem_record_free(rec);
	{
		tx_ctx		t;
		idem_record *r2 = NULL;

		memset(&t, 0, sizeof(t));
		t.conn = a;
		t.status = 201;
		idem_set_transaction(a, 1);
		o = idem_run(a, key_of("proxy-tx"), NULL, tx_handler, &t, &r2);
		CHECK(o == IDEM_FRESH && t.in_block && idle(a) &&
			  idem_uses_leases(a) == 1,
			  "a run in a block of its own through the pooler, lease-owned, "
			  "its COMMIT after the commit's answer (%s)", idem_errmsg(a));
		idem_record_free(r2);
		r2 = NULL;
		o = idem_run(a, key_of("proxy-tx"), NULL, tx_handler, &t, &r2);
		CHECK(o == IDEM_REPLAY && t.runs == 1 && idle(a) && body_is(r2, "tx", 2) &&
			  idem_reserve(b, key_of("proxy-tx"), NULL, NULL) == IDEM_REPLAY,
			  "its replay, also from another client (%s)", idem_errmsg(a));
		idem_record_free(r2);
		idem_set_transaction(a, 0);
	}
	idem_set_lease(a, "0");
	CHECK(idem_uses_leases(a) == 0, "idem_set_lease(\"0\") still forces session owners");

	/* more callers than the pool has connections, one key */
	atomic_store(&pooled_runs, 0);
	for (i = 0; i < n; i++)
	{
		p[i].dsn = dsn;
		p[i].key = key_of("proxy-race");
		p[i].id = i;
		p[i].sleep_ms = 1500;
		p[i].body[0] = '\0';
		pthread_create(&th[i], NULL, pooled_run, &p[i]);
	}
	for (i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < n; i++)
	{
		fresh += p[i].outcome == IDEM_FRESH;
		replay += p[i].outcome == IDEM_REPLAY;
		same &= strcmp(p[i].body, p[0].body) == 0;
	}
	CHECK(atomic_load(&pooled_runs) == 1 && fresh == 1 && replay == n - 1 && same,
		  "%d callers, one key, a pool of few connections: the handler ran %d "
		  "time(s), %d fresh, %d replays, all got \"%s\"", n,
		  atomic_load(&pooled_runs), fresh, replay, p[0].body);
	idem_free(a);
	idem_free(b);
}

/* ---- local hashes == SQL functions ------------------------------------- */

static unsigned int seed = 12345;

static unsigned
rnd(void)
{
	seed = seed * 1103515245u + 12345u;
	return (seed >> 8) & 0xffffff;
}

/* random UTF-8 text without NUL: ASCII and 2-, 3-, 4-byte characters */
static size_t
random_text(char *buf, size_t max_chars)
{
	size_t		n = rnd() % (max_chars + 1);
	size_t		len = 0;
	size_t		i;

	for (i = 0; i < n; i++)
	{
		switch (rnd() % 6)
		{
			case 0:
				memcpy(buf + len, "\xc3\xa9", 2);
				len += 2;
				break;
			case 1:
				memcpy(buf + len, "\xe6\x97\xa5", 3);
				len += 3;
				break;
			case 2:
				memcpy(buf + len, "\xf0\x9f\x98\x80", 4);
				len += 4;
				break;
			default:
				buf[len++] = (char) (1 + rnd() % 127);
				break;
		}
	}
	buf[len] = '\0';
	return len;
}

static void
append_array_element(char *arr, size_t *len, const char *s)
{
	if (arr[*len - 1] != '{')
		arr[(*len)++] = ',';
	arr[(*len)++] = '"';
	for (; *s; s++)
	{
		if (*s == '"' || *s == '\\')
			arr[(*len)++] = '\\';
		arr[(*len)++] = *s;
	}
	arr[(*len)++] = '"';
	arr[*len] = '\0';
}

static void
test_hash_parity(void)
{
	const int	rounds = 300;
	int			i,
				req_ok = 0,
				derive_ok = 0,
				binary_bodies = 0,
				empty_parts = 0;
	char		method[256],
				path[256];
	unsigned char body[600];
	char		parts[10][256];
	char		arr[8192];
	PGresult   *res;

	res = PQprepare(admin, "rh", "SELECT idem_request_hash($1, $2, $3::bytea)", 0, NULL);
	PQclear(res);
	res = PQprepare(admin, "dk", "SELECT idem_derive_key(VARIADIC $1::text[])", 0, NULL);
	PQclear(res);

	for (i = 0; i < rounds; i++)
	{
		char		local[IDEM_HASH_SIZE];
		size_t		body_len = rnd() % 600;
		size_t		j;
		const char *values[3];
		int			lengths[3] = {0, 0, 0};
		int			formats[3] = {0, 0, 1};
		int			with_nul = 0;

		random_text(method, 10);
		random_text(path, 40);
		if (i % 10 == 0)
			body_len = 0;
		for (j = 0; j < body_len; j++)
		{
			body[j] = (unsigned char) rnd();
			with_nul |= body[j] == 0 || body[j] >= 0x80;
		}
		binary_bodies += with_nul;
		idem_request_hash(local, method, path, i % 20 == 1 ? NULL : body,
						  i % 20 == 1 ? 0 : body_len);
		values[0] = method;
		values[1] = path;
		values[2] = i % 20 == 1 ? NULL : (const char *) body;
		lengths[2] = (int) body_len;
		res = PQexecPrepared(admin, "rh", 3, values, lengths, formats, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK &&
			strcmp(PQgetvalue(res, 0, 0), local) == 0)
			req_ok++;
		else if (req_ok == i)
			printf("# request_hash differs at round %d: local %s, sql %s %s\n",
				   i, local, PQgetvalue(res, 0, 0), PQerrorMessage(admin));
		PQclear(res);
	}
	CHECK(req_ok == rounds,
		  "idem_request_hash: local == SQL for %d/%d random requests "
		  "(%d binary bodies with NUL or high bytes, empty and NULL bodies)",
		  req_ok, rounds, binary_bodies);

	for (i = 0; i < rounds; i++)
	{
		char		local[IDEM_HASH_SIZE];
		const char *p[10];
		size_t		n = rnd() % 10;
		size_t		j,
					len = 1;
		const char *values[1];

		strcpy(arr, "{");
		for (j = 0; j < n; j++)
		{
			if (rnd() % 4 == 0)
			{
				parts[j][0] = '\0';
				empty_parts++;
			}
			else
				random_text(parts[j], 30);
			p[j] = parts[j];
			append_array_element(arr, &len, parts[j]);
		}
		arr[len++] = '}';
		arr[len] = '\0';
		idem_derive_key(local, n, p);
		values[0] = arr;
		res = PQexecPrepared(admin, "dk", 1, values, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK &&
			strcmp(PQgetvalue(res, 0, 0), local) == 0)
			derive_ok++;
		else if (derive_ok == i)
			printf("# derive_key differs at round %d (%zu parts): local %s, sql %s %s\n",
				   i, n, local, PQgetvalue(res, 0, 0), PQerrorMessage(admin));
		PQclear(res);
	}
	CHECK(derive_ok == rounds,
		  "idem_derive_key: local == SQL for %d/%d random part lists "
		  "(0-9 parts, %d empty parts, multi-byte UTF-8)",
		  derive_ok, rounds, empty_parts);
}

int
main(void)
{
	snprintf(prefix, sizeof(prefix), "libidem-test-%ld-%ld",
			 (long) getpid(), (long) time(NULL));
	admin = PQconnectdb("");
	if (PQstatus(admin) != CONNECTION_OK)
	{
		fprintf(stderr, "test_client: cannot connect (set PGHOST, PGPORT ...): %s",
				PQerrorMessage(admin));
		printf("0 passed, 1 failed\n");
		return 1;
	}

	test_hash_parity();
	test_calls();
	test_expiry_and_purge();
	test_bad_input();
	test_wrapped();
	test_error_paths();
	test_waiting();
	test_run();
	test_run_threads();
	test_observer();
	test_steps();
	test_http();
	test_owners();
	test_leases();
	test_lease_renewal();
	test_lease_lost();
	test_slices();
	test_old_extension();
	test_schema();
	test_transaction();
	if (getenv("IDEM_TEST_PROXY"))
		test_proxy(getenv("IDEM_TEST_PROXY"));

	PQfinish(admin);
	return tt_finish();
}
