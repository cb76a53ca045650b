/*-------------------------------------------------------------------------
 *
 * soak.c
 *	  The soak test's load: many libidem clients on an overlapping keyspace,
 *	  killed and cut off at random, logging what they see.
 *
 *	  soak run DIR     the master: forks CLIENTS clients and one monitor,
 *	                   and until the deadline kills a random client with
 *	                   SIGKILL every KILL_MS (and starts a new one in its
 *	                   slot) and terminates a random client's backend with
 *	                   pg_terminate_backend every TERM_MS; then waits for
 *	                   the clients to stop by themselves.
 *
 * Settings come from the environment (soak.sh sets them): SOAK_SECONDS,
 * SOAK_CLIENTS (100), SOAK_KEYS (200), SOAK_KILL_MS (400), SOAK_TERM_MS
 * (600), SOAK_SEED, SOAK_MEM_MS (1000), SOAK_LEASE_PCT (30); the
 * connection from libpq's environment (PGHOST, PGPORT, PGDATABASE ...).
 *
 * Owners.  SOAK_LEASE_PCT percent of the client slots (those whose number
 * ends in 0, 1, 2 for 30) are lease owners: each client there sets a lease
 * of 1, 2 or 3 seconds on its handle (idem_set_lease) and records its
 * handle's token in soak_owners, so that the master can find the owners
 * of in-flight keys; the others, and the monitor, are session owners.  A
 * lease owner's handler is usually short as below; one in seven works for
 * half to twice its lease and renews it with idem_extend every third of
 * it; one in sixteen stalls (a frozen process) for longer than its lease
 * without renewing, so that its key is taken over and its commit fenced
 * (or, when nobody came, its commit adopts the reservation).  A lease
 * owner's commit, release or renewal that is refused (IDEM_LEASE_LOST,
 * IDEM_NOT_FOUND) is an expected outcome only once its lease, as it last
 * renewed it, has run out when the answer comes back; before that it is a
 * violation.
 *
 * A client loops until the deadline over random operations on keys
 * "soak-0" .. "soak-<KEYS-1>" with ttls of 0.5 to 2 seconds, so that keys
 * expire and are reserved again many times over:
 *
 *	request (70%)	idem_reserve with the key's request hash (or none),
 *					wait 0, 100ms or 500ms.  Fresh: the handler "works" for
 *					5-65 ms (lease owners: see above), then either releases
 *					(1 in 10) or runs its side effect and the commit in one
 *					transaction:
 *						BEGIN; idem_commit(...); INSERT INTO soak_effects
 *						... FROM idem_get(key); COMMIT
 *					so that an effect row exists exactly when a response was
 *					committed: an owner killed before its COMMIT leaves
 *					neither.  A release goes the same way, with a row in
 *					soak_releases:
 *						BEGIN; idem_release(...); INSERT INTO soak_releases
 *						...; COMMIT
 *					Replay: the body must name the key.
 *	get (12%)		idem_get; a committed body must name the key
 *	probe (5%)		idem_reserve with another request hash, wait 0: IK422
 *					when the key is live with a hash, a replay when it was
 *					committed without one, fresh when it is absent (then
 *					it is released at once, and logged, since requests with
 *					the right hash may see IK422 meanwhile)
 *	purge (3%)		idem_purge(20)
 *	idle (10%)		a few milliseconds of nothing
 *
 * When its connection is lost (its backend terminated), a client
 * reconnects; if it owned a key whose handler had run, it retries the
 * commit transaction on the new session, which adopts the reservation
 * if nobody took it over (the documented adoption; an IK409, IK404 or
 * replay answer then rolls the effect back).  A lease owner keeps its
 * reservation across the new session: its retry is its own commit.
 *
 * The monitor is a client that is never killed and also samples, every
 * SOAK_MEM_MS, the memory of its own backend:
 *	SELECT sum(total_bytes) FROM pg_backend_memory_contexts
 *
 * Every process appends one line per event to DIR/<name>.log, written with
 * one write(2) each so that a SIGKILL loses at most the event in progress:
 *	kind TAB slot TAB gen TAB key TAB uid TAB attempt TAB sqlstate TAB detail
 * kinds: start, fresh, replay, in_flight, mismatch, released, committed,
 * adopted, rolled_back, get, probe, probe_fresh, purge, conn_lost, notice, error,
 * violation, mem, stop, and for lease owners extended, stall, lease_lost,
 * fenced (clients); kill, terminate, exit, done (master).  A lease
 * owner's fresh, extended, stall, lease_lost and fenced events carry
 * lease_end=<microseconds since 1970> in their detail: when its lease
 * runs out as far as it knows.  soak.sh loads them into tables and checks
 * them against soak_effects.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "idem.h"

/* ---- settings ---------------------------------------------------------- */

static int	n_seconds;
static int	n_clients;
static int	n_keys;
static int	kill_ms;
static int	term_ms;
static int	mem_ms;
static int	lease_pct;
static unsigned long seed;
static const char *dir;
static double deadline;			/* CLOCK_REALTIME seconds */

static int
env_int(const char *name, int dflt)
{
	const char *v = getenv(name);

	return v && *v ? atoi(v) : dflt;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* the same clock as the server's timestamps, in their unit */
static int64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
sleep_ms(double ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = (time_t) (ms / 1000);
	ts.tv_nsec = (long) ((ms - (double) ts.tv_sec * 1000) * 1e6);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- a small PRNG (xorshift64*) ---------------------------------------- */

static uint64_t rng_state;

static void
rng_seed(uint64_t s)
{
	rng_state = s ? s : 0x9e3779b97f4a7c15ULL;
}

static uint64_t
rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static int
rng_int(int n)
{
	return (int) (rng_next() % (uint64_t) n);
}

/* ---- the event log ----------------------------------------------------- */

static int log_fd = -1;
static int my_slot;
static int my_gen;

/* one line, one write(2); tabs and newlines in fields become spaces */
static void
event(const char *kind, const char *key, const char *uid, int attempt,
	  const char *sqlstate, const char *fmt,...)
{
	char		detail[512] = "";
	char		line[1024];
	int			n;
	char	   *p;

	if (fmt)
	{
		va_list		ap;

		va_start(ap, fmt);
		vsnprintf(detail, sizeof(detail), fmt, ap);
		va_end(ap);
		for (p = detail; *p; p++)
			if (*p == '\t' || *p == '\n' || *p == '\r' || *p == '\\')
				*p = ' ';
	}
	n = snprintf(line, sizeof(line), "%s\t%d\t%d\t%s\t%s\t%d\t%s\t%s\n",
				 kind, my_slot, my_gen, key ? key : "", uid ? uid : "",
				 attempt, sqlstate ? sqlstate : "", detail);
	if (n >= (int) sizeof(line))
	{
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(log_fd, line, (size_t) n) < 0)
		_exit(3);
}

static void
open_log(const char *name)
{
	char		path[4096];

	snprintf(path, sizeof(path), "%s/%s.log", dir, name);
	log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (log_fd < 0)
	{
		perror(path);
		exit(2);
	}
}

/* ---- a client ---------------------------------------------------------- */

typedef struct client
{
	idem_conn  *conn;
	PGconn	   *pg;
	int			pid;			/* its backend */
	long		seq;
	int			monitor;
	double		next_mem;
	long		ops;
	int			lease_ms;		/* a lease owner's lease, or 0: session owner */
	char		lease[16];
} client;

static void
key_name(char *buf, size_t size, int k)
{
	snprintf(buf, size, "soak-%d", k);
}

static void
hash_of(char out[IDEM_HASH_SIZE], const char *key, int wrong)
{
	char		path[64];

	snprintf(path, sizeof(path), "/soak/%s", key);
	idem_request_hash(out, "POST", path, wrong ? "other" : "", wrong ? 5 : 0);
}

/* the body of a response: it names its key and the handler's uid */
static int
body_names(const void *body, size_t len, const char *key, char *uid, size_t uidsz)
{
	char		want[300];
	const char *b = body;
	size_t		wl;

	snprintf(want, sizeof(want), "key=%s uid=", key);
	wl = strlen(want);
	if (body == NULL || len <= wl || memcmp(b, want, wl) != 0)
		return 0;
	snprintf(uid, uidsz, "%.*s", (int) (len - wl), b + wl);
	return 1;
}

/* libpq's notices (e.g. the FATAL of a terminated backend) go to the log */
static void
on_notice(void *arg, const char *message)
{
	(void) arg;
	event("notice", NULL, NULL, 0, NULL, "%s", message);
}

static int
connect_client(client *c)
{
	if (c->conn == NULL)
		c->conn = idem_connect(NULL);
	else
		idem_reconnect(c->conn);
	if (c->conn == NULL)
		return -1;
	c->pg = idem_pgconn(c->conn);
	if (!idem_connected(c->conn))
		return -1;
	PQsetNoticeProcessor(c->pg, on_notice, NULL);
	c->pid = PQbackendPID(c->pg);
	if (c->lease_ms > 0)
	{
		/* the master finds a lease's owner by its token */
		const char *params[3];
		char		slot_s[16],
					gen_s[16];
		PGresult   *res;

		if (idem_set_lease(c->conn, c->lease) < 0)
			return -1;
		snprintf(slot_s, sizeof(slot_s), "%d", my_slot);
		snprintf(gen_s, sizeof(gen_s), "%d", my_gen);
		params[0] = idem_owner(c->conn);
		params[1] = slot_s;
		params[2] = gen_s;
		res = PQexecParams(c->pg, "INSERT INTO soak_owners (token, slot, gen) "
						   "VALUES ($1, $2::int, $3::int) ON CONFLICT DO NOTHING",
						   3, NULL, params, NULL, NULL, 0);
		if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			PQclear(res);
			return -1;
		}
		PQclear(res);
	}
	event("start", NULL, NULL, 0, NULL, "pid=%d lease=%s token=%s", c->pid,
		  c->lease_ms > 0 ? c->lease : "0", idem_owner(c->conn));
	return 0;
}

/* reconnects until it works or the deadline passes; 0 or -1 */
static int
reconnect(client *c, const char *why_state, const char *why)
{
	int			tries = 0;

	event("conn_lost", NULL, NULL, 0, why_state, "pid=%d %s", c->pid, why);
	while (now_s() < deadline + 5)
	{
		if (connect_client(c) == 0)
			return 0;
		if (++tries % 20 == 1)
			event("error", NULL, NULL, 0, idem_sqlstate(c->conn),
				  "reconnect failed: %s", idem_errmsg(c->conn));
		sleep_ms(50);
	}
	return -1;
}

static int
lost(client *c)
{
	return idem_errcode(c->conn) == IDEM_ERR_CONNECTION ||
		PQstatus(c->pg) != CONNECTION_OK;
}

/* logs an error that is not an outcome of its own */
static void
log_error(client *c, const char *op, const char *key)
{
	event("error", key, NULL, 0, idem_sqlstate(c->conn), "%s: %s: %s", op,
		  idem_error_name(idem_errcode(c->conn)), idem_errmsg(c->conn));
}

/*
 * A lease owner's call was refused (lease lost, not found, in flight):
 * expected once its lease (as it last renewed it, lease_end) has run out
 * when the answer came back, when it is logged as kind; else a violation.
 */
static void
lease_refused(client *c, const char *kind, const char *what, const char *key,
			  const char *uid, int attempt, idem_outcome o, int64_t lease_end)
{
	int64_t		late = now_us() - lease_end;

	if (late > 0)
		event(kind, key, uid, attempt, idem_sqlstate(c->conn),
			  "%s answered %s %lld us after the lease ran out; lease_end=%lld",
			  what, idem_outcome_name(o), (long long) late, (long long) lease_end);
	else
		event("violation", key, uid, attempt, idem_sqlstate(c->conn),
			  "the lease owner's %s answered %s while its lease ran (%lld us left): %s; lease_end=%lld",
			  what, idem_outcome_name(o), (long long) -late, idem_errmsg(c->conn),
			  (long long) lease_end);
}

static int
lease_refusal(idem_outcome o)
{
	/*
	 * IDEM_REPLAY: after the lease ran out the key was taken over, released
	 * and made anew by another request, which committed; the old token
	 * never owned that record, so its commit is the usual no-op.
	 * IDEM_MISMATCH: the same, but the request that made it anew is a
	 * probe's, with another hash, still in flight or committed
	 */
	return o == IDEM_LEASE_LOST || o == IDEM_NOT_FOUND ||
		o == IDEM_IN_FLIGHT || o == IDEM_REPLAY || o == IDEM_MISMATCH;
}

/* runs sql on the raw connection; 0, or -1 (the error in state and msg) */
static int
exec_ok(client *c, const char *sql, ExecStatusType want, char *state, char *msg, size_t msgsz)
{
	PGresult   *res = PQexec(c->pg, sql);
	int			rc = 0;

	state[0] = '\0';
	msg[0] = '\0';
	if (res == NULL || PQresultStatus(res) != want)
	{
		const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

		snprintf(state, 6, "%s", s ? s : "");
		snprintf(msg, msgsz, "%s", res ? PQresultErrorMessage(res) : PQerrorMessage(c->pg));
		rc = -1;
	}
	PQclear(res);
	return rc;
}

/*
 * The side effect and the commit in one transaction.  Returns 1 committed,
 * 0 not committed (rolled back: outcome logged), -1 connection lost.
 * adopting: a retry on a new session (IK409, IK404 and replay are then
 * expected answers, else they are violations: a live owner lost its key).
 * lease_end: a lease owner's, else 0 (see lease_refused).
 */
static int
commit_effect(client *c, const char *key, const idem_opts *opts,
			  const char *uid, int attempt, int adopting, int64_t lease_end)
{
	char		body[300];
	char		state[6],
				msg[512];
	char		sql[1024];
	idem_outcome o;
	PGresult   *res;
	const char *params[5];
	char		slot_s[16],
				gen_s[16];

	snprintf(body, sizeof(body), "key=%s uid=%s", key, uid);
	if (exec_ok(c, "BEGIN", PGRES_COMMAND_OK, state, msg, sizeof(msg)) < 0)
	{
		if (PQstatus(c->pg) != CONNECTION_OK)
			return -1;
		event("error", key, uid, attempt, state, "BEGIN: %s", msg);
		return 0;
	}

	o = idem_commit(c->conn, key, opts, 200, body, strlen(body), "{\"X-Soak\": [\"1\"]}");
	if (o != IDEM_FRESH)
	{
		if (lost(c))
			return -1;
		if (o == IDEM_ERROR)
			log_error(c, "commit", key);
		else if (lease_end > 0 && lease_refusal(o))
			lease_refused(c, o == IDEM_LEASE_LOST ? "fenced" : "rolled_back", "commit",
						  key, uid, attempt, o, lease_end);
		else if (adopting)
			event("rolled_back", key, uid, attempt, idem_sqlstate(c->conn),
				  "adoption answered %s", idem_outcome_name(o));
		else
			event("violation", key, uid, attempt, idem_sqlstate(c->conn),
				  "the live owner's commit answered %s: %s",
				  idem_outcome_name(o), idem_errmsg(c->conn));
		exec_ok(c, "ROLLBACK", PGRES_COMMAND_OK, state, msg, sizeof(msg));
		return PQstatus(c->pg) == CONNECTION_OK ? 0 : -1;
	}

	/* the effect: one row per committed response, with its record's times */
	snprintf(slot_s, sizeof(slot_s), "%d", my_slot);
	snprintf(gen_s, sizeof(gen_s), "%d", my_gen);
	params[0] = key;
	params[1] = uid;
	params[2] = slot_s;
	params[3] = gen_s;
	params[4] = opts->scope ? opts->scope : "";
	snprintf(sql, sizeof(sql),
			 "INSERT INTO soak_effects (key, uid, slot, gen, attempt, created_at, expires_at, state) "
			 "SELECT $1, $2, $3::int, $4::int, g.attempt, g.created_at, g.expires_at, g.state "
			 "FROM idem_get($1, $5) g");
	res = PQexecParams(c->pg, sql, 5, NULL, params, NULL, NULL, 0);
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK ||
		strcmp(PQcmdTuples(res), "1") != 0)
	{
		int			gone = PQstatus(c->pg) != CONNECTION_OK;

		if (!gone)
			event("violation", key, uid, attempt,
				  res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "",
				  "effect insert after a commit: %s (rows %s)",
				  res ? PQresultErrorMessage(res) : "", res ? PQcmdTuples(res) : "");
		PQclear(res);
		if (gone)
			return -1;
		exec_ok(c, "ROLLBACK", PGRES_COMMAND_OK, state, msg, sizeof(msg));
		return 0;
	}
	PQclear(res);
	if (exec_ok(c, "COMMIT", PGRES_COMMAND_OK, state, msg, sizeof(msg)) < 0)
	{
		if (PQstatus(c->pg) != CONNECTION_OK)
			return -1;
		event("error", key, uid, attempt, state, "COMMIT: %s", msg);
		return 0;
	}
	event(adopting ? "adopted" : "committed", key, uid, attempt, NULL, NULL);
	return 1;
}

static void
sample_memory(client *c)
{
	PGresult   *res = PQexec(c->pg, "SELECT sum(total_bytes)::bigint, count(*) FROM pg_backend_memory_contexts");

	if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		event("mem", NULL, NULL, 0, NULL, "%s %s %ld", PQgetvalue(res, 0, 0),
			  PQgetvalue(res, 0, 1), c->ops);
	else
		event("error", NULL, NULL, 0, res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "",
			  "memory sample: %s", res ? PQresultErrorMessage(res) : "");
	PQclear(res);
}

/*
 * A lease owner's long handler: works for ms, renewing its lease every
 * third of it (across a lost connection too: the lease is not the
 * session's).  Returns 1 (go on to commit), 0 (the lease was lost: the
 * handler gives up, logged) or -1 (the connection is gone for good).
 */
static int
work_renewing(client *c, const char *key, const idem_opts *opts, const char *uid,
			  int attempt, double ms, int64_t *lease_end)
{
	double		until = now_s() + ms / 1000.0;

	for (;;)
	{
		double		left = (until - now_s()) * 1000.0;
		int64_t		end;
		idem_outcome o;

		if (left <= 0)
			return 1;
		sleep_ms(left < c->lease_ms / 3.0 ? left : c->lease_ms / 3.0);
		if (now_s() >= until)
			return 1;
		o = idem_extend(c->conn, key, opts, &end);
		if (o == IDEM_FRESH)
		{
			*lease_end = end;
			event("extended", key, uid, attempt, NULL, "lease_end=%lld", (long long) end);
		}
		else if (lost(c))
		{
			if (reconnect(c, idem_sqlstate(c->conn), idem_errmsg(c->conn)) < 0)
				return -1;
		}
		else if (lease_refusal(o))
		{
			lease_refused(c, "lease_lost", "extend", key, uid, attempt, o, *lease_end);
			return 0;
		}
		else
			log_error(c, "extend", key);
	}
}

/*
 * A handler run's release, in one transaction with its row in
 * soak_releases, as its commit is with its effect: the row exists exactly
 * when the release does, wherever the client is killed (a "released" event
 * alone, written once the answer is back, is lost when the kill comes
 * first, and the reservation would look held until its lease ran out).
 * Returns 0 with the release's outcome in *o, or -1 when the transaction
 * did not end: the connection is lost, or an error was logged.
 */
static int
release_marked(client *c, const char *key, const idem_opts *opts,
			   const char *uid, idem_outcome *o)
{
	char		state[6],
				msg[512];
	const char *params[2];
	PGresult   *res;
	int			inserted;

	if (exec_ok(c, "BEGIN", PGRES_COMMAND_OK, state, msg, sizeof(msg)) < 0)
	{
		if (PQstatus(c->pg) == CONNECTION_OK)
			event("error", key, uid, 0, state, "BEGIN: %s", msg);
		return -1;
	}
	*o = idem_release(c->conn, key, opts);
	if (*o != IDEM_FRESH)
	{
		if (lost(c))
			return -1;
		exec_ok(c, "ROLLBACK", PGRES_COMMAND_OK, state, msg, sizeof(msg));
		return PQstatus(c->pg) == CONNECTION_OK ? 0 : -1;
	}
	params[0] = uid;
	params[1] = key;
	res = PQexecParams(c->pg, "INSERT INTO soak_releases (uid, key) VALUES ($1, $2)",
					   2, NULL, params, NULL, NULL, 0);
	inserted = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
	if (!inserted && PQstatus(c->pg) == CONNECTION_OK)
		event("error", key, uid, 0, res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "",
			  "release row: %s", res ? PQresultErrorMessage(res) : "");
	PQclear(res);
	if (!inserted)
	{
		exec_ok(c, "ROLLBACK", PGRES_COMMAND_OK, state, msg, sizeof(msg));
		return -1;
	}
	if (exec_ok(c, "COMMIT", PGRES_COMMAND_OK, state, msg, sizeof(msg)) < 0)
	{
		if (PQstatus(c->pg) == CONNECTION_OK)
			event("error", key, uid, 0, state, "COMMIT: %s", msg);
		return -1;
	}
	return 0;
}

/* Did an earlier try of uid's release commit (its answer lost)? */
static int
release_committed(client *c, const char *uid)
{
	const char *params[1] = {uid};
	PGresult   *res = PQexecParams(c->pg, "SELECT FROM soak_releases WHERE uid = $1",
								   1, NULL, params, NULL, NULL, 0);
	int			found = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK &&
		PQntuples(res) == 1;

	PQclear(res);
	return found;
}

/*
 * The owner releases its reservation (uid NULL: a probe's, outside a
 * transaction block; a handler run's goes with its row in soak_releases).
 * A session owner whose connection is lost has lost its reservation with
 * it; a lease owner's outlives the session, so it releases again once
 * reconnected, unless the release it sent committed.  Returns 0, or -1
 * when the connection is gone for good.
 */
static int
release_key(client *c, const char *key, const idem_opts *opts, const char *uid,
			int attempt, int64_t lease_end)
{
	int			tries;

	for (tries = 0;; tries++)
	{
		idem_outcome o = IDEM_ERROR;

		if (uid == NULL)
			o = idem_release(c->conn, key, opts);
		else if (tries > 0 && release_committed(c, uid))
			o = IDEM_FRESH;
		else if (release_marked(c, key, opts, uid, &o) < 0)
		{
			if (!lost(c))
				return 0;		/* the error is logged */
			o = IDEM_ERROR;
		}

		if (o == IDEM_FRESH)
		{
			if (uid)
				event("released", key, uid, attempt, NULL, NULL);
		}
		else if (lost(c))
		{
			if (reconnect(c, idem_sqlstate(c->conn), idem_errmsg(c->conn)) < 0)
				return -1;
			if (c->lease_ms > 0 && tries < 3)
				continue;
		}
		else if (lease_end > 0 && lease_refusal(o))
			lease_refused(c, "lease_lost", "release", key, uid, attempt, o, lease_end);
		else
			event("violation", key, uid, attempt, idem_sqlstate(c->conn),
				  "the live owner's release answered %s: %s",
				  idem_outcome_name(o), idem_errmsg(c->conn));
		return 0;
	}
}

static const char *const ttls[] = {"500ms", "1s", "2s"};
static const char *const waits[] = {"0", "0", "100ms", "500ms"};

/* one request on key; returns -1 when the connection was lost for good */
static int
do_request(client *c, const char *key, int hashed)
{
	char		hash[IDEM_HASH_SIZE];
	idem_opts	opts = {NULL, NULL, NULL, NULL};
	idem_record *rec = NULL;
	idem_outcome o;
	char		uid[64],
				got[300];
	int			attempt,
				rc;
	long long	returned;
	int64_t		lease_end;

	hash_of(hash, key, 0);
	opts.request_hash = hashed ? hash : NULL;
	opts.ttl = ttls[rng_int(3)];
	opts.wait = waits[rng_int(4)];

	o = idem_reserve(c->conn, key, &opts, &rec);
	returned = (long long) (now_s() * 1e6);
	switch (o)
	{
		case IDEM_FRESH:
			break;
		case IDEM_REPLAY:
			{
				size_t		len;
				const void *b = idem_record_body(rec, &len);

				if (body_names(b, len, key, got, sizeof(got)))
					event("replay", key, got, idem_record_attempt(rec), NULL, NULL);
				else
					event("violation", key, NULL, idem_record_attempt(rec), NULL,
						  "replayed body does not name the key: %.100s",
						  b ? (const char *) b : "(null)");
				idem_record_free(rec);
				return 0;
			}
		case IDEM_IN_FLIGHT:
			event("in_flight", key, NULL, 0, idem_sqlstate(c->conn), "wait %s", opts.wait);
			return 0;
		case IDEM_MISMATCH:
			event("mismatch", key, NULL, 0, idem_sqlstate(c->conn), "hashed=%d", hashed);
			return 0;
		default:
			if (lost(c))
				return reconnect(c, idem_sqlstate(c->conn), idem_errmsg(c->conn));
			log_error(c, "reserve", key);
			return 0;
	}

	/*
	 * fresh: we own the key.  created: the reservation's created_at (the
	 * start of the reserve's statement, server clock); returned: when the
	 * call returned (client clock, the same machine's).  The reservation
	 * was made somewhere in between.
	 */
	attempt = idem_record_attempt(rec);
	lease_end = idem_record_lease_expires_at(rec);
	snprintf(uid, sizeof(uid), "%d.%d.%ld", my_slot, my_gen, ++c->seq);
	if (c->lease_ms > 0)
		event("fresh", key, uid, attempt, NULL, "created=%lld returned=%lld ttl=%s lease_end=%lld",
			  (long long) idem_record_created_at(rec), returned, opts.ttl,
			  (long long) lease_end);
	else
		event("fresh", key, uid, attempt, NULL, "created=%lld returned=%lld ttl=%s",
			  (long long) idem_record_created_at(rec), returned, opts.ttl);
	idem_record_free(rec);
	if ((c->lease_ms > 0) != (lease_end != 0))
		event("violation", key, uid, attempt, NULL, "a %s owner's reservation came back %s",
			  c->lease_ms > 0 ? "lease" : "session",
			  lease_end != 0 ? "lease-owned" : "without a lease");

	/* the handler's work */
	if (c->lease_ms > 0 && rng_int(7) == 0)
	{
		rc = work_renewing(c, key, &opts, uid, attempt,
						   c->lease_ms * (0.5 + rng_int(1501) / 1000.0), &lease_end);
		if (rc <= 0)
			return rc;
	}
	else if (c->lease_ms > 0 && rng_int(16) == 0)
	{
		int			ms = c->lease_ms + 50 + rng_int(600);

		event("stall", key, uid, attempt, NULL, "ms=%d lease_end=%lld", ms, (long long) lease_end);
		sleep_ms(ms);
	}
	else
		sleep_ms(5 + rng_int(60));

	if (rng_int(10) == 0)
		return release_key(c, key, &opts, uid, attempt, lease_end);

	rc = commit_effect(c, key, &opts, uid, attempt, 0, lease_end);
	if (rc >= 0)
		return 0;

	/* connection lost around the commit: reconnect, then adopt */
	if (reconnect(c, "", PQerrorMessage(c->pg)) < 0)
		return -1;
	rc = commit_effect(c, key, &opts, uid, attempt, 1, lease_end);
	if (rc < 0)
		return reconnect(c, "", PQerrorMessage(c->pg));
	return 0;
}

static int
do_get(client *c, const char *key)
{
	idem_record *rec = NULL;
	idem_outcome o = idem_get(c->conn, key, NULL, &rec);
	char		got[300];

	if (o == IDEM_REPLAY)
	{
		size_t		len;
		const void *b = idem_record_body(rec, &len);

		if (body_names(b, len, key, got, sizeof(got)))
			event("get", key, got, idem_record_attempt(rec), NULL, "committed");
		else
			event("violation", key, NULL, 0, NULL, "get: body does not name the key");
	}
	else if (o == IDEM_IN_FLIGHT)
		event("get", key, NULL, idem_record_attempt(rec), NULL, "in_flight");
	else if (o == IDEM_NOT_FOUND)
		event("get", key, NULL, 0, NULL, "absent");
	else if (lost(c))
	{
		idem_record_free(rec);
		return reconnect(c, idem_sqlstate(c->conn), idem_errmsg(c->conn));
	}
	else
		log_error(c, "get", key);
	idem_record_free(rec);
	return 0;
}

static int
do_probe(client *c, const char *key)
{
	char		hash[IDEM_HASH_SIZE];
	idem_opts	opts = {NULL, NULL, "1s", "0"};
	idem_record *rec = NULL;
	idem_outcome o;

	hash_of(hash, key, 1);
	opts.request_hash = hash;
	/* logged first: a client killed before it logs the outcome leaves it
	 * unfinished, and its reservation (if any) in flight with this hash */
	event("probe", key, NULL, 0, NULL, NULL);
	o = idem_reserve(c->conn, key, &opts, &rec);
	if (o == IDEM_MISMATCH)
		event("mismatch", key, NULL, 0, idem_sqlstate(c->conn), "probe");
	else if (o == IDEM_IN_FLIGHT)
		event("in_flight", key, NULL, 0, idem_sqlstate(c->conn), "probe");
	else if (o == IDEM_FRESH)
	{
		int64_t		lease_end = idem_record_lease_expires_at(rec);

		/* the key was absent: give it back at once */
		idem_record_free(rec);
		event("probe_fresh", key, NULL, 0, NULL, NULL);
		return release_key(c, key, &opts, NULL, 0, lease_end);
	}
	else if (o == IDEM_REPLAY)
	{
		/* committed without a hash: nothing to differ from */
		char		got[300];
		size_t		len;
		const void *b;

		idem_record_free(rec);
		rec = NULL;
		o = idem_get(c->conn, key, NULL, &rec);
		b = rec ? idem_record_body(rec, &len) : NULL;
		if (o == IDEM_REPLAY && !body_names(b, len, key, got, sizeof(got)))
			event("violation", key, NULL, 0, NULL, "probe: body does not name the key");
		else
			event("replay", key, o == IDEM_REPLAY ? got : "", 0, NULL, "probe");
		idem_record_free(rec);
	}
	else if (lost(c))
		return reconnect(c, idem_sqlstate(c->conn), idem_errmsg(c->conn));
	else
		log_error(c, "probe", key);
	return 0;
}

static int
do_purge(client *c)
{
	int64_t		n = idem_purge(c->conn, 20);

	if (n >= 0)
		event("purge", NULL, NULL, 0, NULL, "%lld", (long long) n);
	else if (lost(c))
		return reconnect(c, idem_sqlstate(c->conn), idem_errmsg(c->conn));
	else
		log_error(c, "purge", NULL);
	return 0;
}

static int
client_main(int slot, int gen, int monitor)
{
	client		c;
	char		name[64],
				appname[64];
	int			rc = 0;

	memset(&c, 0, sizeof(c));
	my_slot = slot;
	my_gen = gen;
	c.monitor = monitor;
	rng_seed(seed * 1000003ULL + (uint64_t) slot * 7919ULL + (uint64_t) gen * 104729ULL + 1);
	if (!monitor && slot % 10 < lease_pct / 10)
	{
		c.lease_ms = 1000 * (1 + rng_int(3));
		snprintf(c.lease, sizeof(c.lease), "%ds", c.lease_ms / 1000);
	}
	if (monitor)
		snprintf(name, sizeof(name), "monitor");
	else
		snprintf(name, sizeof(name), "client-%d-%d", slot, gen);
	open_log(name);
	snprintf(appname, sizeof(appname), monitor ? "soak-monitor" : "soak-client-%d-%d", slot, gen);
	setenv("PGAPPNAME", appname, 1);

	while (connect_client(&c) < 0)
	{
		event("error", NULL, NULL, 0, c.conn ? idem_sqlstate(c.conn) : "",
			  "connect failed: %s", c.conn ? idem_errmsg(c.conn) : "out of memory");
		if (now_s() > deadline)
		{
			idem_free(c.conn);
			return 1;
		}
		sleep_ms(100);
	}
	if (monitor)
	{
		sample_memory(&c);
		c.next_mem = now_s() + mem_ms / 1000.0;
	}

	while (now_s() < deadline)
	{
		char		key[32];
		int			r = rng_int(100);

		key_name(key, sizeof(key), rng_int(n_keys));
		if (r < 70)
			rc = do_request(&c, key, rng_int(5) != 0);
		else if (r < 82)
			rc = do_get(&c, key);
		else if (r < 87)
			rc = do_probe(&c, key);
		else if (r < 90)
			rc = do_purge(&c);
		else
			sleep_ms(1 + rng_int(5));
		if (rc < 0)
			break;
		c.ops++;
		if (monitor && now_s() >= c.next_mem)
		{
			sample_memory(&c);
			c.next_mem += mem_ms / 1000.0;
		}
	}
	if (monitor && rc == 0)
		sample_memory(&c);
	{
		idem_stats	st;

		idem_counters(c.conn, &st);
		event("stop", NULL, NULL, 0, NULL,
			  "ops=%ld reserves=%llu fresh=%llu takeovers=%llu replays=%llu commits=%llu releases=%llu",
			  c.ops, (unsigned long long) st.reserves, (unsigned long long) st.fresh,
			  (unsigned long long) st.takeovers, (unsigned long long) st.replays,
			  (unsigned long long) st.commits, (unsigned long long) st.releases);
	}
	idem_free(c.conn);
	return rc < 0 ? 1 : 0;
}

/* ---- the master -------------------------------------------------------- */

static pid_t
spawn(int slot, int gen, int monitor)
{
	pid_t		pid = fork();

	if (pid < 0)
	{
		perror("fork");
		return -1;
	}
	if (pid == 0)
	{
		if (log_fd >= 0)
			close(log_fd);
		log_fd = -1;
		_exit(client_main(slot, gen, monitor));
	}
	return pid;
}

static int
master(void)
{
	pid_t	   *pids = calloc((size_t) n_clients, sizeof(pid_t));
	int		   *gens = calloc((size_t) n_clients, sizeof(int));
	pid_t		monitor_pid;
	PGconn	   *ctl;
	double		next_kill,
				next_term;
	int			i,
				kills = 0,
				terms = 0,
				bad_exits = 0,
				alive;

	if (pids == NULL || gens == NULL)
		return 2;
	my_slot = -1;
	open_log("master");
	setenv("PGAPPNAME", "soak-master", 1);
	ctl = PQconnectdb("");
	if (PQstatus(ctl) != CONNECTION_OK)
	{
		fprintf(stderr, "soak: cannot connect: %s", PQerrorMessage(ctl));
		return 2;
	}
	rng_seed(seed);

	monitor_pid = spawn(n_clients, 0, 1);
	for (i = 0; i < n_clients; i++)
		pids[i] = spawn(i, 0, 0);

	next_kill = now_s() + (kill_ms > 0 ? kill_ms / 1000.0 : 1e9);
	next_term = now_s() + (term_ms > 0 ? term_ms / 1000.0 : 1e9);
	while (now_s() < deadline - 1.0)
	{
		pid_t		p;
		int			status;

		/* clients that ended by themselves before the deadline */
		while ((p = waitpid(-1, &status, WNOHANG)) > 0)
		{
			for (i = 0; i < n_clients && pids[i] != p; i++)
				;
			if (p == monitor_pid)
				monitor_pid = 0;
			event("exit", NULL, NULL, 0, NULL, "slot=%d pid=%d status=%d early", i,
				  (int) p, status);
			bad_exits++;
			if (i < n_clients)
				pids[i] = spawn(i, ++gens[i], 0);
		}

		if (now_s() >= next_kill)
		{
			int			s = rng_int(n_clients);
			char		victim[16] = "any";

			/*
			 * every other kill hits a client that owns a key: a session
			 * owner by its backend, a lease owner by its token (unless its
			 * slot has a new client by now)
			 */
			if (rng_int(2) == 0)
			{
				PGresult   *res = PQexec(ctl,
										 "SELECT slot, gen, kind FROM ("
										 "SELECT split_part(a.application_name, '-', 3)::int AS slot, "
										 "split_part(a.application_name, '-', 4)::int AS gen, 'session' AS kind "
										 "FROM idem_keys k JOIN pg_stat_activity a ON a.pid = k.owner_pid "
										 "WHERE k.state = 'in_flight' "
										 "AND a.application_name LIKE 'soak-client-%' "
										 "UNION ALL "
										 "SELECT o.slot, o.gen, 'lease' FROM idem_keys k "
										 "JOIN soak_owners o ON o.token = k.owner_token "
										 "WHERE k.state = 'in_flight' AND k.lease_expires_at > clock_timestamp()) x "
										 "ORDER BY random() LIMIT 1");

				if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
				{
					int			o = atoi(PQgetvalue(res, 0, 0));

					if (o >= 0 && o < n_clients && gens[o] == atoi(PQgetvalue(res, 0, 1)))
					{
						s = o;
						snprintf(victim, sizeof(victim), "%s", PQgetvalue(res, 0, 2));
					}
				}
				else if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
					event("error", NULL, NULL, 0, NULL, "kill: %s",
						  res ? PQresultErrorMessage(res) : PQerrorMessage(ctl));
				PQclear(res);
			}

			if (pids[s] > 0 && kill(pids[s], SIGKILL) == 0)
			{
				waitpid(pids[s], &status, 0);
				event("kill", NULL, NULL, 0, NULL, "slot=%d gen=%d pid=%d owner=%s", s, gens[s],
					  (int) pids[s], victim);
				kills++;
				pids[s] = spawn(s, ++gens[s], 0);
			}
			next_kill += (kill_ms / 2 + rng_int(kill_ms + 1)) / 1000.0;
		}
		if (now_s() >= next_term)
		{
			/*
			 * every other termination hits the backend of a key's owner (a
			 * lease owner's is the one its client is connected by)
			 */
			PGresult   *res = PQexec(ctl, rng_int(2) == 0 ?
									 "SELECT pid, application_name, pg_terminate_backend(pid) "
									 "FROM (SELECT pid, application_name FROM pg_stat_activity "
									 "WHERE application_name LIKE 'soak-client-%' "
									 "AND (pid IN (SELECT owner_pid FROM idem_keys WHERE state = 'in_flight') "
									 "OR application_name IN (SELECT format('soak-client-%s-%s', o.slot, o.gen) "
									 "FROM idem_keys k JOIN soak_owners o ON o.token = k.owner_token "
									 "WHERE k.state = 'in_flight' AND k.lease_expires_at IS NOT NULL)) "
									 "ORDER BY random() LIMIT 1) a" :
									 "SELECT pid, application_name, pg_terminate_backend(pid) "
									 "FROM (SELECT pid, application_name FROM pg_stat_activity "
									 "WHERE application_name LIKE 'soak-client-%' "
									 "ORDER BY random() LIMIT 1) a");

			if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
			{
				event("terminate", NULL, NULL, 0, NULL, "pid=%s app=%s ok=%s",
					  PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
				terms++;
			}
			else if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
				event("error", NULL, NULL, 0, NULL, "terminate: %s",
					  res ? PQresultErrorMessage(res) : PQerrorMessage(ctl));
			PQclear(res);
			next_term += (term_ms / 2 + rng_int(term_ms + 1)) / 1000.0;
		}
		sleep_ms(10);
	}

	/* the clients stop at the deadline by themselves */
	alive = n_clients + (monitor_pid > 0);
	while (alive > 0 && now_s() < deadline + 30)
	{
		int			status;
		pid_t		p = waitpid(-1, &status, WNOHANG);

		if (p > 0)
		{
			alive--;
			for (i = 0; i < n_clients; i++)
				if (pids[i] == p)
					pids[i] = 0;
			if (p == monitor_pid)
				monitor_pid = 0;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			{
				event("exit", NULL, NULL, 0, NULL, "pid=%d status=%d", (int) p, status);
				bad_exits++;
			}
		}
		else if (p < 0 && errno == ECHILD)
			break;
		else
			sleep_ms(20);
	}
	if (alive > 0)
	{
		event("exit", NULL, NULL, 0, NULL, "%d clients still running 30 s after the deadline", alive);
		bad_exits += alive;
		for (i = 0; i < n_clients; i++)
			if (pids[i] > 0)
			{
				printf("soak: client %d (generation %d, pid %d) still running\n",
					   i, gens[i], (int) pids[i]);
				kill(pids[i], SIGKILL);
			}
		if (monitor_pid > 0)
		{
			printf("soak: the monitor (pid %d) still running\n", (int) monitor_pid);
			kill(monitor_pid, SIGKILL);
		}
		while (waitpid(-1, NULL, 0) > 0)
			;
	}
	event("done", NULL, NULL, 0, NULL, "kills=%d terminations=%d bad_exits=%d", kills,
		  terms, bad_exits);
	printf("soak: %d clients (%d%% of them lease owners) + monitor for %d s: %d kills, %d terminations, %d unexpected exits\n",
		   n_clients, lease_pct, n_seconds, kills, terms, bad_exits);
	PQfinish(ctl);
	free(pids);
	free(gens);
	return bad_exits > 0 ? 1 : 0;
}

int
main(int argc, char **argv)
{
	if (argc != 3 || strcmp(argv[1], "run") != 0)
	{
		fprintf(stderr, "usage: soak run DIR\n");
		return 2;
	}
	dir = argv[2];
	n_seconds = env_int("SOAK_SECONDS", 30);
	n_clients = env_int("SOAK_CLIENTS", 100);
	n_keys = env_int("SOAK_KEYS", 200);
	kill_ms = env_int("SOAK_KILL_MS", 400);
	term_ms = env_int("SOAK_TERM_MS", 600);
	mem_ms = env_int("SOAK_MEM_MS", 1000);
	lease_pct = env_int("SOAK_LEASE_PCT", 30);
	seed = (unsigned long) env_int("SOAK_SEED", (int) time(NULL));
	if (n_clients < 1 || n_keys < 1 || n_seconds < 1)
	{
		fprintf(stderr, "soak: bad settings\n");
		return 2;
	}
	deadline = now_s() + n_seconds;
	signal(SIGPIPE, SIG_IGN);
	return master();
}
