/*-------------------------------------------------------------------------
 *
 * model.c
 *	  Randomized model test of the idempotency contract (README.md, the SQL reference and guarantees).
 *
 *	  model [--seed N | --first-seed N --seeds N] [--steps N] [--sessions N]
 *			[--strict] [-v]
 *
 * Several libpq sessions (4) issue random operations, one at a time, in an
 * interleaving drawn from a seeded PRNG, on a few keys in two scopes; every
 * answer is compared with what a small in-memory model of the contract
 * predicts, and after every step the whole key space is read back with
 * idem_get from a control session and compared too.  Nothing blocks but
 * one operation of the timed step below: every other reserve uses
 * wait_timeout 0.
 *
 * Operations: reserve (hash NULL, "h1" or "h2"; ttl 1 hour or 1
 * microsecond; owner token NULL, "ta", "tb", "tc", a token the server made
 * or a fenced one; lease NULL, 0, 1 microsecond or 1 hour), commit (status,
 * body or NULL body), release, extend (lease NULL, 1 microsecond or 1
 * hour), each with an owner token or none, get, purge, disconnect (the
 * session closes and reconnects: its reservations' owner is gone),
 * terminate (pg_terminate_backend of the session's backend: the same, the
 * hard way), DISCARD ALL (counts as the owner's session ending, and resets
 * idem.lease), pg_advisory_unlock_all() (must NOT cost a live owner its
 * key), SET / RESET idem.lease = '1h', a session owner that gave a
 * token followed by a call from the same session with another token or
 * none, and a reserve, commit, release, extend or purge inside BEGIN ...
 * COMMIT or ROLLBACK (a rolled-back transaction leaves no trace).  Lease
 * owners are independent of sessions: any session may act for any token.
 *
 * Leases and time.  A lease of 1 hour never runs out during a run, and one
 * of 1 microsecond has run out by the next statement, so the model knows
 * exactly which lease owners are alive: a lease runs out when its owner
 * renews it (extend, or reserve again) with 1 microsecond, and comes back
 * to life when renewed with 1 hour before anybody took it over.  One step
 * in a hundred is timed, on the wall clock (the server's, on this machine):
 * token A reserves under a 40 ms lease; another client tries the key
 * (reserve with wait 0, commit, release or extend), which must find the
 * owner alive when its answer came back within 40 ms of the reserve being
 * sent (later, either answer is accepted and the model follows the one
 * given); then a waiter (wait_timeout 10 s) must take the key over, not
 * before the lease ran out and within 2 s of it; then, half the time, A
 * comes back late.
 *
 * The model, from the contract (README.md and doc/):
 *	- a record is absent when it is not there or has expired: a committed
 *	  record with the 1 microsecond ttl is expired at the next statement;
 *	  an in-flight one expires only once its owner is gone;
 *	- owners: a session owner is alive while its session lasts (not after
 *	  DISCARD ALL); a lease owner while its lease runs, whatever sessions
 *	  do; a session owner that gave a token is "mine" only to its session
 *	  with that same token (another token, or none, from that session:
 *	  IK409);
 *	- reserve: IK422 when both hashes are non-NULL and differ (for any
 *	  live record); committed: replay; own in-flight: fresh again, same
 *	  attempt (a lease owner's lease renewed, by the lease given or else
 *	  as long as it was); another live owner's: IK409 (wait 0); owner
 *	  gone: takeover, attempt + 1, and a lease owner taken over is fenced;
 *	  absent: fresh, attempt 1.  A positive lease (argument, else
 *	  idem.lease) makes a lease owner with the given token or a new one;
 *	  lease_expires_at = now() + lease;
 *	- commit: absent: IK404; hash differs: IK422; a fenced token: IK409;
 *	  committed: false (the first response stands); another live owner's:
 *	  IK409; a lease owner's, without its token: IK409 (even when the
 *	  lease ran out); own or a gone session owner's: stored, true;
 *	- release: absent or committed: false (a fenced token: IK409);
 *	  otherwise as commit, and dropped, true;
 *	- extend: no token: class 22; absent or committed: IK404 (a fenced
 *	  token: IK409); not the owner: IK409; a session owner's: 55000; the
 *	  owner's: lease renewed, also after it ran out, returns now() + lease;
 *	- purge: deletes the expired records (in flight only when the owner is
 *	  gone) and returns how many.
 * Where the contract is silent the model follows the README / implementation
 * choice and says so: a takeover without a hash keeps the stored hash; a
 * commit with a hash on a reservation without one stores it; the ttl of a
 * committed record is the one given by the reserve that made the
 * reservation (the takeover's, after a takeover); a session owner that
 * gave no token is not "mine" to its session with a token; a lease owner
 * reserving again after its lease ran out (nobody took over) is
 * re-entrant, same attempt; extend of a session owner's own reservation
 * is 55000 (it has no lease); a reserve with a lease but no token is a new
 * client (the server makes its token before it looks at the key), never
 * the owner of anything yet.
 *
 * Known deviations.  Where the server's answer differs from the contract
 * in a way listed in dev_text below, the model accepts it (and follows
 * the server's state), counts it, and reports the counts in its summary;
 * --strict makes each a divergence.  A server without a deviation simply
 * never shows it: the contract's answer is always accepted first.
 *
 * On a divergence it prints the seed, the step, the trace of the seed so
 * far (operations, answers, and what the model expected) and a command
 * line that replays it, and exits 1.  (A timed step replays exactly unless
 * the machine is slow enough to move an answer past its 40 ms.)
 * Connection: libpq's environment.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define MAX_SESSIONS 8
#define NKEYS 3
#define NSCOPES 2
#define NREC (NKEYS * NSCOPES)
#define TOKEN_SIZE 40			/* ours are short, the server's 32 hex digits */
#define MAX_FENCED 12
#define TIMED_LEASE_MS 40
#define TIMED_WAKE_SLACK_MS 2000

static const char *const key_names[NKEYS] = {"k0", "k1", "k2"};
static const char *const scope_names[NSCOPES] = {"", "t1"};
static const char *const pool_tokens[] = {"ta", "tb", "tc"};

/*
 * Lease lengths: what a lease owner was given, and what a renewal without
 * a length repeats.  As an argument, LEN_NONE is '0' (a session owner) and
 * LEASE_NULL is SQL NULL.
 */
enum
{
	LEN_NONE, LEN_TINY, LEN_LONG, LEN_TIMED
};
#define LEASE_NULL (-1)
static const char *const len_arg[] = {"0", "1 microsecond", "1 hour", "40 milliseconds"};
static const char *const len_text[] = {"", "00:00:00.000001", "01:00:00", "00:00:00.04"};
static const char *const len_name[] = {"0", "1us", "1h", "40ms"};

/* ---- PRNG (splitmix64) ------------------------------------------------- */

static uint64_t rng;

static uint64_t
rnext(void)
{
	uint64_t	z = (rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static int
rint_(int n)
{
	return (int) (rnext() % (uint64_t) n);
}

static double
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double) ts.tv_sec * 1000.0 + (double) ts.tv_nsec / 1e6;
}

/* ---- the model --------------------------------------------------------- */

typedef struct mrec
{
	int			present;		/* a row exists (maybe expired) */
	int			committed;
	char		hash[4];		/* "" = NULL */
	int			owner;			/* session owner, or -1: none or abandoned */
	int			owner_inc;		/* the owner's incarnation */
	int			lease;			/* in flight under a lease */
	int			lease_len;		/* LEN_*: the lease it was last given */
	int			lease_live;		/* LEN_TIMED: not known to have run out */
	char		token[TOKEN_SIZE];	/* owner token ("" = NULL); committed:
									 * the last owner's */
	int			attempt;
	int			tiny;			/* ttl 1 microsecond, else 1 hour */
	int			status;			/* -1 = NULL */
	char		body[24];		/* "" with body_null */
	int			body_null;
	int			lock_lost;		/* session owner: pg_advisory_unlock_all() */
	int			untracked;		/* ... and then the server forgot it (D5) */
	int			nfenced;		/* lease owners taken over since the record */
	char		fenced[MAX_FENCED][TOKEN_SIZE];	/* ... was made, oldest first */
} mrec;

typedef struct model
{
	mrec		rec[NREC];
} model;

typedef struct session
{
	PGconn	   *conn;
	int			inc;			/* bumped when the session ends */
	int			pid;
	int			lease_setting;	/* idem.lease = '1 hour' in this session */
	char		warning[256];	/* the last WARNING the server sent, if any */
} session;

static model M;
static session S[MAX_SESSIONS];
static int	nsess = 4;
static PGconn *ctl;
static int	verbose;
static int	strict;
static int	nwarnings;

typedef enum
{
	ST_ABSENT, ST_COMMITTED, ST_MINE, ST_OTHER, ST_ORPHAN, ST_OTHER_TOKEN
} mstate;

static int
lease_alive(const mrec *m)
{
	return m->lease_len == LEN_LONG || (m->lease_len == LEN_TIMED && m->lease_live);
}

static int
owner_alive(const mrec *m)
{
	if (m->lease)
		return lease_alive(m);
	return m->owner >= 0 && S[m->owner].inc == m->owner_inc;
}

static int
expired(const mrec *m)
{
	if (m->committed)
		return m->tiny;
	return m->tiny && !owner_alive(m);
}

/* what record m is to session s calling with token t ("" = none) */
static mstate
classify(const mrec *m, int s, const char *t)
{
	if (!m->present || expired(m))
		return ST_ABSENT;
	if (m->committed)
		return ST_COMMITTED;
	if (m->lease)
	{
		if (t[0] && strcmp(t, m->token) == 0)
			return ST_MINE;
		return lease_alive(m) ? ST_OTHER : ST_ORPHAN;
	}
	if (!owner_alive(m))
		return ST_ORPHAN;
	if (m->owner != s)
		return ST_OTHER;
	return strcmp(m->token, t) == 0 ? ST_MINE : ST_OTHER_TOKEN;
}

static int
hashes_differ(const char *stored, const char *given)
{
	return stored[0] && given[0] && strcmp(stored, given) != 0;
}

static int
is_fenced(const mrec *m, const char *t)
{
	int			i;

	if (!t[0])
		return 0;
	for (i = 0; i < m->nfenced; i++)
		if (strcmp(m->fenced[i], t) == 0)
			return 1;
	return 0;
}

static void
remove_fenced(mrec *m, const char *t)
{
	int			i;

	for (i = 0; i < m->nfenced; i++)
		if (strcmp(m->fenced[i], t) == 0)
		{
			memmove(m->fenced[i], m->fenced[i + 1],
					sizeof(m->fenced[0]) * (size_t) (m->nfenced - i - 1));
			m->nfenced--;
			return;
		}
}

/*
 * A lease owner was taken over: its token is fenced.  When the list is
 * full the oldest goes; the model then never picks it again (only our
 * three fixed tokens come back, and those are never dropped while one of
 * the server's is there to drop).
 */
static void
add_fenced(mrec *m, const char *t)
{
	int			i;

	if (!t[0] || is_fenced(m, t))
		return;
	if (m->nfenced == MAX_FENCED)
	{
		for (i = 0; i < m->nfenced && strlen(m->fenced[i]) < 8; i++)
			;
		if (i == m->nfenced)
			i = 0;
		remove_fenced(m, m->fenced[i]);
	}
	snprintf(m->fenced[m->nfenced++], TOKEN_SIZE, "%s", t);
}

/* ---- known deviations of the server from the contract ------------------------ */

enum
{
	DEV_NONE,
	DEV_EXPIRED_LEASE_ADOPTED,	/* D1 */
	DEV_FENCE_FORGOTTEN,		/* D2 */
	DEV_ABSENT_COMMITTED,		/* D3 */
	DEV_NEVER_OWNER_FENCED,		/* D4 */
	DEV_DISCARD_FORGETS,		/* D5 */
	NDEV
};

static const char *const dev_text[NDEV] = {
	"",
	"D1: a commit or release with another token (or none) adopts or drops a lease owner's record whose lease ran out (contract: IK409, only the owner token may)",
	"D2: a fenced token is not fenced once the key's new owner has no token or is gone too (commit/release answer false or adopt, extend IK404; contract: IK409)",
	"D3: the owner token's commit stores a response on its record after both its lease and its ttl ran out, when the record counts as absent (contract: IK404)",
	"D4: a token that never owned the key gets IK409 from commit, release or extend of a response committed by another token (contract: false, false, IK404)",
	"D5: after pg_advisory_unlock_all() in a session owner's session, an idem_extend of the key there (which fails) makes the session forget its reservation: DISCARD ALL leaves it owned (contract: DISCARD ALL counts as the owner's session ending)",
};

static int	server_rules;		/* predict the server's deviations */
static int	dev_hit;			/* the deviation the prediction took */
static int	gen_pending;		/* record whose token the server makes */
static long dev_count[NDEV];

/* what a prediction did, counted for the summary once it is chosen */
typedef struct tally
{
	int			lease_fresh;	/* a reserve made or renewed a lease owner */
	int			lease_takeover; /* ... took over a lease owner */
	int			fenced;			/* a fenced token got IK409 */
	int			other_token;	/* IK409 for a session owner's other token */
} tally;

static tally T;
static long n_lease_fresh,
			n_lease_takeovers,
			n_fenced,
			n_other_token,
			n_timed;

/* the server's stand-in for a fenced token, on a committed record */
static int
last_owner_differs(const mrec *m, const char *t)
{
	return t[0] && m->token[0] && strcmp(t, m->token) != 0;
}

/* ---- what an operation returned (or the model expects) ----------------- */

typedef struct answer
{
	char		err[6];			/* SQLSTATE, "" = none */
	int			kind;			/* 0 nothing, 1 row, 2 bool, 3 count, 4 null
								 * row, 5 interval text */
	int			fresh;
	char		state[12];
	int			status;			/* -1 = NULL */
	char		body[24];
	int			body_null;
	int			attempt;
	int			owner_null;
	char		owner[TOKEN_SIZE];
	int			owner_any;		/* expected: a token the server made */
	char		lease[32];		/* reserve and extend: lease_expires_at -
								 * now(); get: whether the lease runs; ""
								 * = NULL */
	long		n;				/* bool or count */
} answer;

static void
answer_str(const answer *a, char *buf, size_t size)
{
	if (a->err[0])
		snprintf(buf, size, "error %s", a->err);
	else if (a->kind == 1)
	{
		char		status[16];
		char		owner[TOKEN_SIZE + 40] = "";
		char		lease[48] = "";

		snprintf(status, sizeof(status), "%d", a->status);
		if (a->owner_any)
			snprintf(owner, sizeof(owner), " owner=(made by the server)");
		else if (!a->owner_null)
			snprintf(owner, sizeof(owner), " owner=%s", a->owner);
		if (a->lease[0])
			snprintf(lease, sizeof(lease), " lease=%s", a->lease);
		snprintf(buf, size, "fresh=%s state=%s status=%s body=%s attempt=%d%s%s",
				 a->fresh ? "t" : "f", a->state, a->status < 0 ? "NULL" : status,
				 a->body_null ? "NULL" : a->body, a->attempt, owner, lease);
	}
	else if (a->kind == 2)
		snprintf(buf, size, "%s", a->n ? "true" : "false");
	else if (a->kind == 3)
		snprintf(buf, size, "%ld", a->n);
	else if (a->kind == 4)
		snprintf(buf, size, "(absent)");
	else if (a->kind == 5)
		snprintf(buf, size, "now() + %s", a->lease[0] ? a->lease : "NULL");
	else
		snprintf(buf, size, "ok");
}

/* a token idem_reserve made: 32 lowercase hex digits */
static int
server_token(const char *t)
{
	int			i;

	for (i = 0; t[i]; i++)
		if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
			return 0;
	return i == 32;
}

static int
answers_match(const answer *want, const answer *got)
{
	if (strcmp(want->err, got->err) != 0)
		return 0;
	if (want->err[0])
		return 1;
	if (want->kind != got->kind)
		return 0;
	switch (want->kind)
	{
		case 1:
			if (want->owner_any ? got->owner_null || !server_token(got->owner) :
				want->owner_null != got->owner_null ||
				(!want->owner_null && strcmp(want->owner, got->owner) != 0))
				return 0;
			return want->fresh == got->fresh && strcmp(want->state, got->state) == 0 &&
				want->status == got->status && want->body_null == got->body_null &&
				(want->body_null || strcmp(want->body, got->body) == 0) &&
				want->attempt == got->attempt && strcmp(want->lease, got->lease) == 0;
		case 2:
		case 3:
			return want->n == got->n;
		case 5:
			return strcmp(want->lease, got->lease) == 0;
		default:
			return 1;
	}
}

/* the row idem_reserve (get = 0) or idem_get (get = 1) returns for r */
static void
row_of(const mrec *r, int fresh, int get, answer *a)
{
	a->kind = 1;
	a->fresh = fresh;
	snprintf(a->state, sizeof(a->state), "%s", r->committed ? "committed" : "in_flight");
	a->status = r->committed ? r->status : -1;
	a->body_null = !r->committed || r->body_null;
	snprintf(a->body, sizeof(a->body), "%s", a->body_null ? "" : r->body);
	a->attempt = r->attempt;
	a->owner_null = !fresh || !r->token[0];
	snprintf(a->owner, sizeof(a->owner), "%s", a->owner_null ? "" : r->token);
	a->owner_any = 0;
	if (r->committed || !r->lease)
		a->lease[0] = '\0';
	else if (get)
		snprintf(a->lease, sizeof(a->lease), "%s", lease_alive(r) ? "true" : "false");
	else
		snprintf(a->lease, sizeof(a->lease), "%s", len_text[r->lease_len]);
}

/* ---- the trace --------------------------------------------------------- */

static char *trace;
static size_t trace_len,
			trace_cap;

static void
tracef(const char *fmt,...)
{
	va_list		ap;
	char		line[1536];
	int			n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t) n >= sizeof(line))
		n = sizeof(line) - 1;
	if (trace_len + (size_t) n + 2 > trace_cap)
	{
		trace_cap = (trace_cap + (size_t) n + 2) * 2;
		trace = realloc(trace, trace_cap);
		if (trace == NULL)
			exit(2);
	}
	memcpy(trace + trace_len, line, (size_t) n);
	trace_len += (size_t) n;
	trace[trace_len++] = '\n';
	trace[trace_len] = '\0';
	if (verbose)
		fprintf(stderr, "%s\n", line);
}

static unsigned long cur_seed;
static int	cur_step;
static int	cur_steps;

static void
diverged(const char *what)
{
	fprintf(stdout, "DIVERGENCE at seed %lu, step %d: %s\n", cur_seed, cur_step, what);
	fprintf(stdout, "trace of seed %lu (%d sessions):\n%s", cur_seed, nsess, trace ? trace : "");
	fprintf(stdout, "replay: test/model/build/model --seed %lu --steps %d --sessions %d%s -v\n",
			cur_seed, cur_steps, nsess, strict ? " --strict" : "");
	fflush(stdout);
	exit(1);
}

/* ---- sessions ---------------------------------------------------------- */

static void
on_notice(void *arg, const PGresult *res)
{
	session    *s = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

	if (sev && strcmp(sev, "WARNING") == 0)
		snprintf(s->warning, sizeof(s->warning), "%s",
				 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
}

static PGconn *
connect_or_die(const char *appname)
{
	const char *k[] = {"dbname", "application_name", NULL};
	const char *v[] = {"", appname, NULL};
	PGconn	   *c = PQconnectdbParams(k, v, 1);

	if (PQstatus(c) != CONNECTION_OK)
	{
		fprintf(stdout, "model: cannot connect: %s", PQerrorMessage(c));
		exit(2);
	}
	return c;
}

static void
wait_gone(int pid)
{
	char		sql[128];
	int			i;

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
	for (i = 0; i < 2000; i++)
	{
		PGresult   *res = PQexec(ctl, sql);
		int			n = res && PQresultStatus(res) == PGRES_TUPLES_OK ? atoi(PQgetvalue(res, 0, 0)) : -1;

		PQclear(res);
		if (n == 0)
			return;
		usleep(2000);
	}
	diverged("a closed session's backend did not exit within 4 s");
}

static void simple(int s, const char *sql);

/*
 * Should idem_extend wait for the key's lock, which a live session owner
 * holds, it waits idem.wait_timeout (at least 1 s): keep that short.
 */
static void
session_settings(int i)
{
	simple(i, "SET idem.wait_timeout = '0'");
	S[i].lease_setting = 0;
}

static void
open_session(int i)
{
	char		app[32];

	snprintf(app, sizeof(app), "model-s%d", i);
	S[i].conn = connect_or_die(app);
	S[i].pid = PQbackendPID(S[i].conn);
	S[i].warning[0] = '\0';
	PQsetNoticeReceiver(S[i].conn, on_notice, &S[i]);
	session_settings(i);
}

/* the session ends (its backend is gone) and a new one takes its place */
static void
end_session(int i, int terminate)
{
	int			pid = S[i].pid;

	if (terminate)
	{
		char		sql[64];
		PGresult   *res;

		snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", pid);
		res = PQexec(ctl, sql);
		if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
			diverged("pg_terminate_backend failed");
		PQclear(res);
	}
	else
	{
		PQfinish(S[i].conn);
		S[i].conn = NULL;
	}
	wait_gone(pid);
	if (S[i].conn)
		PQfinish(S[i].conn);
	S[i].inc++;
	open_session(i);
}

/* ---- running SQL ------------------------------------------------------- */

#define ROW_SQL "fresh, state, status, convert_from(body, 'UTF8'), attempt, owner"

/* runs sql with params on session s (or ctl when s < 0), fills a */
static void
run(int s, const char *sql, int nparams, const char *const *params, int kind, answer *a)
{
	PGconn	   *c = s >= 0 ? S[s].conn : ctl;
	PGresult   *res = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

	memset(a, 0, sizeof(*a));
	if (st == PGRES_FATAL_ERROR)
	{
		const char *e = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

		snprintf(a->err, sizeof(a->err), "%s", e ? e : "?????");
		if (verbose || !e)
			tracef("      (%s)", res ? PQresultErrorMessage(res) : PQerrorMessage(c));
		PQclear(res);
		return;
	}
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
	{
		snprintf(a->err, sizeof(a->err), "?????");
		PQclear(res);
		return;
	}
	a->kind = kind;
	if (kind == 1 && PQntuples(res) == 1)
	{
		if (PQgetisnull(res, 0, 1))
			a->kind = 4;
		else
		{
			a->fresh = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
			snprintf(a->state, sizeof(a->state), "%s", PQgetvalue(res, 0, 1));
			a->status = PQgetisnull(res, 0, 2) ? -1 : atoi(PQgetvalue(res, 0, 2));
			a->body_null = PQgetisnull(res, 0, 3);
			snprintf(a->body, sizeof(a->body), "%s", PQgetvalue(res, 0, 3));
			a->attempt = atoi(PQgetvalue(res, 0, 4));
			a->owner_null = PQgetisnull(res, 0, 5);
			snprintf(a->owner, sizeof(a->owner), "%s", PQgetvalue(res, 0, 5));
			snprintf(a->lease, sizeof(a->lease), "%s", PQgetvalue(res, 0, 6));
		}
	}
	else if ((kind == 2 || kind == 3) && PQntuples(res) == 1)
		a->n = kind == 2 ? strcmp(PQgetvalue(res, 0, 0), "t") == 0 : atol(PQgetvalue(res, 0, 0));
	else if (kind == 5 && PQntuples(res) == 1)
		snprintf(a->lease, sizeof(a->lease), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
}

static void
simple(int s, const char *sql)
{
	PGresult   *res = PQexec(s >= 0 ? S[s].conn : ctl, sql);

	if (!res || (PQresultStatus(res) != PGRES_COMMAND_OK &&
				 PQresultStatus(res) != PGRES_TUPLES_OK))
	{
		char		buf[512];

		snprintf(buf, sizeof(buf), "%s failed: %s", sql,
				 res ? PQresultErrorMessage(res) : "no result");
		diverged(buf);
	}
	PQclear(res);
}

/* ---- operations -------------------------------------------------------- */

typedef enum
{
	OP_RESERVE, OP_COMMIT, OP_RELEASE, OP_EXTEND, OP_GET, OP_PURGE
} opkind;

typedef struct op
{
	opkind		kind;
	int			s;				/* the session */
	int			r;				/* the record */
	char		hash[4];		/* "" = NULL */
	int			tiny;			/* reserve: ttl 1 microsecond */
	char		token[TOKEN_SIZE];	/* "" = NULL */
	int			lease;			/* reserve, extend: LEASE_NULL or LEN_* */
	const char *wait;			/* reserve: wait_timeout */
	int			status;			/* commit: -1 = NULL */
	int			body_null;		/* commit */
	char		body[24];
} op;

static void
set_err(answer *a, const char *state)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->err, sizeof(a->err), "%s", state);
}

static void
set_bool(answer *a, int v)
{
	memset(a, 0, sizeof(*a));
	a->kind = 2;
	a->n = v;
}

/* who a new or taken-over reservation belongs to: a lease or session s */
static void
set_owner(mrec *m, int r, int s, const char *t, int len)
{
	m->owner = -1;
	m->owner_inc = 0;
	m->lock_lost = m->untracked = 0;
	snprintf(m->token, sizeof(m->token), "%s", t);
	if (len != LEN_NONE)
	{
		m->lease = 1;
		m->lease_len = len;
		m->lease_live = 1;
		if (!t[0])
			gen_pending = r;
	}
	else
	{
		m->lease = 0;
		m->lease_len = LEN_NONE;
		m->owner = s;
		m->owner_inc = S[s].inc;
	}
	remove_fenced(m, t);
}

static void
predict_reserve(const op *o, answer *want)
{
	mrec	   *m = &M.rec[o->r];
	int			len = o->lease;
	mstate		st;

	if (len == LEASE_NULL)
		len = S[o->s].lease_setting ? LEN_LONG : LEN_NONE;
	/*
	 * a lease without a token: the server makes the token with the
	 * reservation, so until then the caller is recognised by its session
	 * alone
	 */
	st = classify(m, o->s, o->token);
	memset(want, 0, sizeof(*want));
	if (st != ST_ABSENT && hashes_differ(m->hash, o->hash))
		set_err(want, "IK422");
	else if (st == ST_COMMITTED)
		row_of(m, 0, 0, want);
	else if (st == ST_OTHER_TOKEN)
	{
		set_err(want, "IK409");
		T.other_token = 1;
	}
	else if (st == ST_OTHER)
		set_err(want, "IK409");
	else if (st == ST_MINE)
	{
		/* re-entrant; a lease owner's lease is renewed */
		if (m->lease)
		{
			if (len != LEN_NONE)
				m->lease_len = len;
			m->lease_live = 1;
			T.lease_fresh = 1;
		}
		else
			m->lock_lost = m->untracked = 0;	/* the lock taken back */
		row_of(m, 1, 0, want);
	}
	else
	{
		if (st == ST_ORPHAN)
		{
			if (m->lease)
			{
				add_fenced(m, m->token);
				T.lease_takeover = 1;
			}
			m->attempt++;
			if (o->hash[0])
				snprintf(m->hash, sizeof(m->hash), "%s", o->hash);
		}
		else
		{
			memset(m, 0, sizeof(*m));
			m->present = 1;
			m->attempt = 1;
			m->status = -1;
			snprintf(m->hash, sizeof(m->hash), "%s", o->hash);
		}
		m->tiny = o->tiny;
		set_owner(m, o->r, o->s, o->token, len);
		T.lease_fresh = m->lease;
		row_of(m, 1, 0, want);
		if (gen_pending == o->r)
		{
			want->owner_null = 0;
			want->owner_any = 1;
		}
	}
}

static void
store_response(mrec *m, const op *o)
{
	m->committed = 1;
	if (!m->hash[0])
		snprintf(m->hash, sizeof(m->hash), "%s", o->hash);
	m->status = o->status;
	m->body_null = o->body_null;
	snprintf(m->body, sizeof(m->body), "%s", o->body_null ? "" : o->body);
	m->owner = -1;
	/* another token adopting a lease owner's record displaces it */
	if (m->lease && o->token[0] && strcmp(o->token, m->token) != 0)
		add_fenced(m, m->token);
	if (o->token[0])
		snprintf(m->token, sizeof(m->token), "%s", o->token);
	m->lease = 0;
	m->lease_len = LEN_NONE;
}

/*
 * For a commit or release that the contract refuses but the server lets
 * through on a record that is not the caller's own: which deviation.
 */
static int
adoption_deviation(const mrec *m, mstate st, const char *t)
{
	if (is_fenced(m, t))
		return DEV_FENCE_FORGOTTEN;
	if (st == ST_ORPHAN && m->lease)
		return DEV_EXPIRED_LEASE_ADOPTED;
	return DEV_NONE;
}

static void
predict_commit(const op *o, answer *want)
{
	mrec	   *m = &M.rec[o->r];
	mstate		st = classify(m, o->s, o->token);

	memset(want, 0, sizeof(*want));
	if (st == ST_ABSENT)
	{
		/* the server's commit of its own lease finds it in one probe */
		if (server_rules && m->present && !m->committed && m->lease &&
			o->token[0] && strcmp(o->token, m->token) == 0 &&
			!hashes_differ(m->hash, o->hash))
		{
			dev_hit = DEV_ABSENT_COMMITTED;
			store_response(m, o);
			set_bool(want, 1);
		}
		else
			set_err(want, "IK404");
	}
	else if (hashes_differ(m->hash, o->hash))
		set_err(want, "IK422");
	else if (!server_rules && is_fenced(m, o->token))
	{
		set_err(want, "IK409");
		T.fenced = 1;
	}
	else if (st == ST_COMMITTED)
	{
		if (server_rules && last_owner_differs(m, o->token))
		{
			set_err(want, "IK409");
			if (!is_fenced(m, o->token))
				dev_hit = DEV_NEVER_OWNER_FENCED;
		}
		else
		{
			set_bool(want, 0);
			if (server_rules && is_fenced(m, o->token))
				dev_hit = DEV_FENCE_FORGOTTEN;
		}
	}
	else if (st == ST_OTHER_TOKEN)
	{
		set_err(want, "IK409");
		T.other_token = 1;
	}
	else if (st == ST_OTHER)
		set_err(want, "IK409");
	else if (!server_rules && st == ST_ORPHAN && m->lease)
		set_err(want, "IK409");	/* only the token may adopt its lease */
	else
	{
		if (server_rules)
			dev_hit = adoption_deviation(m, st, o->token);
		store_response(m, o);
		set_bool(want, 1);
	}
}

static void
predict_release(const op *o, answer *want)
{
	mrec	   *m = &M.rec[o->r];
	mstate		st = classify(m, o->s, o->token);

	memset(want, 0, sizeof(*want));
	if (st == ST_ABSENT)
		set_bool(want, 0);
	else if (!server_rules && is_fenced(m, o->token))
	{
		set_err(want, "IK409");
		T.fenced = 1;
	}
	else if (st == ST_COMMITTED)
	{
		if (server_rules && last_owner_differs(m, o->token))
		{
			set_err(want, "IK409");
			if (!is_fenced(m, o->token))
				dev_hit = DEV_NEVER_OWNER_FENCED;
		}
		else
		{
			set_bool(want, 0);
			if (server_rules && is_fenced(m, o->token))
				dev_hit = DEV_FENCE_FORGOTTEN;
		}
	}
	else if (st == ST_OTHER_TOKEN)
	{
		set_err(want, "IK409");
		T.other_token = 1;
	}
	else if (st == ST_OTHER)
		set_err(want, "IK409");
	else if (!server_rules && st == ST_ORPHAN && m->lease)
		set_err(want, "IK409");
	else
	{
		if (server_rules)
			dev_hit = adoption_deviation(m, st, o->token);
		memset(m, 0, sizeof(*m));
		set_bool(want, 1);
	}
}

static void
predict_extend(const op *o, answer *want)
{
	mrec	   *m = &M.rec[o->r];
	mstate		st = classify(m, o->s, o->token);

	memset(want, 0, sizeof(*want));
	/*
	 * A server whose idem_extend takes the key's lock before it looks at
	 * the record forgets, in the session owner's own session after
	 * pg_advisory_unlock_all(), that the session owns the key (the extend
	 * fails, as it must, and its abort drops the session's note of the
	 * key): D5.  DISCARD ALL then looks which happened.
	 */
	if (o->token[0] && !m->lease && owner_alive(m) && m->owner == o->s && m->lock_lost)
		m->untracked = 1;
	if (!o->token[0])
		set_err(want, "22004");
	else if (st == ST_ABSENT)
		set_err(want, "IK404");
	else if (!server_rules && is_fenced(m, o->token))
	{
		set_err(want, "IK409");
		T.fenced = 1;
	}
	else if (st == ST_COMMITTED)
	{
		if (server_rules && last_owner_differs(m, o->token))
		{
			set_err(want, "IK409");
			if (!is_fenced(m, o->token))
				dev_hit = DEV_NEVER_OWNER_FENCED;
		}
		else
		{
			set_err(want, "IK404");
			if (server_rules && is_fenced(m, o->token))
				dev_hit = DEV_FENCE_FORGOTTEN;
		}
	}
	else if (st == ST_OTHER_TOKEN)
	{
		set_err(want, "IK409");
		T.other_token = 1;
	}
	else if (st != ST_MINE)
		set_err(want, "IK409");
	else if (!m->lease)
		set_err(want, "55000");
	else
	{
		if (o->lease != LEASE_NULL)
			m->lease_len = o->lease;
		m->lease_live = 1;
		want->kind = 5;
		snprintf(want->lease, sizeof(want->lease), "%s", len_text[m->lease_len]);
	}
}

static void
predict_purge(answer *want)
{
	int			r;

	memset(want, 0, sizeof(*want));
	want->kind = 3;
	for (r = 0; r < NREC; r++)
		if (M.rec[r].present && expired(&M.rec[r]))
		{
			memset(&M.rec[r], 0, sizeof(mrec));
			want->n++;
		}
}

static void
predict(const op *o, answer *want)
{
	switch (o->kind)
	{
		case OP_RESERVE:
			predict_reserve(o, want);
			break;
		case OP_COMMIT:
			predict_commit(o, want);
			break;
		case OP_RELEASE:
			predict_release(o, want);
			break;
		case OP_EXTEND:
			predict_extend(o, want);
			break;
		case OP_GET:
			memset(want, 0, sizeof(*want));
			if (classify(&M.rec[o->r], o->s, "") == ST_ABSENT)
				want->kind = 4;
			else
				row_of(&M.rec[o->r], 0, 1, want);
			break;
		case OP_PURGE:
			predict_purge(want);
			break;
	}
}

static const char *
null_or(const char *s)
{
	return s[0] ? s : "NULL";
}

static void
describe(const op *o, char *desc, size_t dsz)
{
	const char *key = key_names[o->r % NKEYS];
	const char *scope = scope_names[o->r / NKEYS];
	const char *lease = o->lease == LEASE_NULL ? "NULL" : len_name[o->lease];

	switch (o->kind)
	{
		case OP_RESERVE:
			snprintf(desc, dsz, "s%d reserve(%s, scope '%s', hash %s, ttl %s, wait %s, owner %s, lease %s)",
					 o->s, key, scope, null_or(o->hash), o->tiny ? "1us" : "1h",
					 o->wait, null_or(o->token), lease);
			break;
		case OP_COMMIT:
			{
				char		sts[16];

				snprintf(sts, sizeof(sts), "%d", o->status);
				snprintf(desc, dsz, "s%d commit(%s, scope '%s', hash %s, %s, %s, owner %s)",
						 o->s, key, scope, null_or(o->hash),
						 o->status < 0 ? "NULL" : sts, o->body_null ? "NULL" : o->body,
						 null_or(o->token));
				break;
			}
		case OP_RELEASE:
			snprintf(desc, dsz, "s%d release(%s, scope '%s', owner %s)", o->s, key, scope,
					 null_or(o->token));
			break;
		case OP_EXTEND:
			snprintf(desc, dsz, "s%d extend(%s, scope '%s', owner %s, lease %s)", o->s, key,
					 scope, null_or(o->token), lease);
			break;
		case OP_GET:
			snprintf(desc, dsz, "s%d get(%s, scope '%s')", o->s, key, scope);
			break;
		case OP_PURGE:
			snprintf(desc, dsz, "s%d purge()", o->s);
			break;
	}
}

static double last_sent,
			last_received;		/* wall clock around the last execute() */

static void
execute(const op *o, answer *got)
{
	const char *params[7];
	const char *key = key_names[o->r % NKEYS];
	const char *scope = scope_names[o->r / NKEYS];
	const char *token = o->token[0] ? o->token : NULL;
	const char *lease = o->lease == LEASE_NULL ? NULL : len_arg[o->lease];
	char		sts[16];

	last_sent = wall_ms();
	switch (o->kind)
	{
		case OP_RESERVE:
			params[0] = key;
			params[1] = o->hash[0] ? o->hash : NULL;
			params[2] = o->tiny ? "1 microsecond" : "1 hour";
			params[3] = o->wait;
			params[4] = scope;
			params[5] = token;
			params[6] = lease;
			run(o->s, "SELECT " ROW_SQL ", (lease_expires_at - now())::text "
				"FROM idem_reserve($1, $2, $3::interval, $4::interval, $5, $6, $7::interval)",
				7, params, 1, got);
			break;
		case OP_COMMIT:
			snprintf(sts, sizeof(sts), "%d", o->status);
			params[0] = key;
			params[1] = o->hash[0] ? o->hash : NULL;
			params[2] = o->status < 0 ? NULL : sts;
			params[3] = o->body_null ? NULL : o->body;
			params[4] = scope;
			params[5] = token;
			run(o->s, "SELECT idem_commit($1, $2, $3::int, convert_to($4, 'UTF8'), '{}', $5, $6)",
				6, params, 2, got);
			break;
		case OP_RELEASE:
			params[0] = key;
			params[1] = scope;
			params[2] = token;
			run(o->s, "SELECT idem_release($1, $2, $3)", 3, params, 2, got);
			break;
		case OP_EXTEND:
			params[0] = key;
			params[1] = token;
			params[2] = lease;
			params[3] = scope;
			run(o->s, "SELECT (idem_extend($1, $2, $3::interval, $4) - now())::text",
				4, params, 5, got);
			break;
		case OP_GET:
			params[0] = key;
			params[1] = scope;
			run(o->s, "SELECT " ROW_SQL ", (lease_expires_at > clock_timestamp())::text "
				"FROM idem_get($1, $2)", 2, params, 1, got);
			break;
		case OP_PURGE:
			run(o->s, "SELECT idem_purge()", 0, NULL, 3, got);
			break;
	}
	last_received = wall_ms();
}

/*
 * A possible outcome of an operation: the answer and the model after it,
 * under the contract (dev = 0) or under one of the server's known
 * deviations, with a timed lease still running or already run out.
 */
typedef struct cand
{
	answer		a;
	model		m;
	tally		t;
	int			dev;
	int			gen;			/* record whose token the server makes, or -1 */
	int			ran_out;		/* predicted with the timed lease run out */
} cand;

static void
predict_into(cand *c, const op *o, int srv, int ran_out)
{
	model		before = M;

	if (ran_out)
		M.rec[o->r].lease_live = 0;
	server_rules = srv;
	dev_hit = DEV_NONE;
	gen_pending = -1;
	memset(&T, 0, sizeof(T));
	predict(o, &c->a);
	c->m = M;
	c->t = T;
	c->dev = srv ? dev_hit : DEV_NONE;
	c->gen = gen_pending;
	c->ran_out = ran_out;
	server_rules = 0;
	M = before;
}

static long n_ops;

/*
 * Predicts o, runs it and compares.  timed_live_until > 0: o's record has
 * a timed lease that certainly runs while an answer comes back before that
 * wall-clock time; after it, the lease may have run out.  Returns the
 * outcome taken (the model follows it).
 */
static const cand *
check_op(const op *o, double timed_live_until)
{
	static cand c[4];
	int			n = 0,
				i,
				chosen = -1;
	answer		got;
	char		desc[400],
				w[300],
				g[300];

	describe(o, desc, sizeof(desc));
	predict_into(&c[n++], o, 0, 0);
	predict_into(&c[n++], o, 1, 0);
	if (timed_live_until > 0)
	{
		predict_into(&c[n++], o, 0, 1);
		predict_into(&c[n++], o, 1, 1);
	}
	execute(o, &got);
	if (timed_live_until > 0 && last_received < timed_live_until)
		n = 2;					/* answered while the lease certainly ran */

	for (i = 0; i < n && chosen < 0; i++)
		if (c[i].dev == DEV_NONE && answers_match(&c[i].a, &got))
			chosen = i;
	for (i = 0; i < n && chosen < 0; i++)
		if (answers_match(&c[i].a, &got))
			chosen = i;

	answer_str(&got, g, sizeof(g));
	answer_str(&c[0].a, w, sizeof(w));
	if (chosen < 0 || (strict && c[chosen].dev != DEV_NONE))
	{
		char		buf[1200];

		if (chosen >= 0)
		{
			tracef("%4d  %-62s -> %s   <== known deviation %s", cur_step, desc, g,
				   dev_text[c[chosen].dev]);
			snprintf(buf, sizeof(buf), "%s returned %s, the model expects %s (%s)",
					 desc, g, w, dev_text[c[chosen].dev]);
		}
		else
		{
			tracef("%4d  %-62s -> %s   <== model expects %s", cur_step, desc, g, w);
			snprintf(buf, sizeof(buf), "%s returned %s, the model expects %s", desc, g, w);
		}
		diverged(buf);
	}
	if (c[chosen].dev != DEV_NONE)
	{
		dev_count[c[chosen].dev]++;
		tracef("%4d  %-62s -> %s   (known deviation D%d; contract: %s)", cur_step, desc, g,
			   c[chosen].dev, w);
	}
	else
		tracef("%4d  %-62s -> %s%s", cur_step, desc, g,
			   c[chosen].ran_out ? "   (the 40 ms lease had run out)" : "");

	M = c[chosen].m;
	if (c[chosen].gen >= 0)
		snprintf(M.rec[c[chosen].gen].token, TOKEN_SIZE, "%s", got.owner);
	n_lease_fresh += c[chosen].t.lease_fresh;
	n_lease_takeovers += c[chosen].t.lease_takeover;
	n_fenced += c[chosen].t.fenced;
	n_other_token += c[chosen].t.other_token;
	n_ops++;
	return &c[chosen];
}

/* the whole key space, read back from the control session in one query */
static void
check_all(void)
{
	static const char *sql =
		"SELECT v.i, g.fresh, g.state, g.status, convert_from(g.body, 'UTF8'), g.attempt, "
		"g.owner, (g.lease_expires_at > clock_timestamp())::text "
		"FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(k, s, i) "
		"LEFT JOIN LATERAL idem_get(v.k, v.s) g ON true ORDER BY v.i";
	static char keys[200],
				scopes[200];
	const char *params[2] = {keys, scopes};
	PGresult   *res;
	int			r;

	if (keys[0] == '\0')
	{
		size_t		kl = 0,
					sl = 0;

		for (r = 0; r < NREC; r++)
		{
			kl += (size_t) snprintf(keys + kl, sizeof(keys) - kl, "%s\"%s\"",
									r ? "," : "{", key_names[r % NKEYS]);
			sl += (size_t) snprintf(scopes + sl, sizeof(scopes) - sl, "%s\"%s\"",
									r ? "," : "{", scope_names[r / NKEYS]);
		}
		snprintf(keys + kl, sizeof(keys) - kl, "}");
		snprintf(scopes + sl, sizeof(scopes) - sl, "}");
	}
	res = PQexecParams(ctl, sql, 2, NULL, params, NULL, NULL, 0);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != NREC)
	{
		char		buf[600];

		snprintf(buf, sizeof(buf), "reading the key space failed: %s",
				 res ? PQresultErrorMessage(res) : PQerrorMessage(ctl));
		diverged(buf);
	}
	for (r = 0; r < NREC; r++)
	{
		const mrec *m = &M.rec[r];
		answer		want,
					got;
		char		w[300],
					g[300];

		memset(&want, 0, sizeof(want));
		if (classify(m, -1, "") == ST_ABSENT)
			want.kind = 4;
		else
			row_of(m, 0, 1, &want);
		memset(&got, 0, sizeof(got));
		if (PQgetisnull(res, r, 2))
			got.kind = 4;
		else
		{
			got.kind = 1;
			got.fresh = strcmp(PQgetvalue(res, r, 1), "t") == 0;
			snprintf(got.state, sizeof(got.state), "%s", PQgetvalue(res, r, 2));
			got.status = PQgetisnull(res, r, 3) ? -1 : atoi(PQgetvalue(res, r, 3));
			got.body_null = PQgetisnull(res, r, 4);
			snprintf(got.body, sizeof(got.body), "%s", PQgetvalue(res, r, 4));
			got.attempt = atoi(PQgetvalue(res, r, 5));
			got.owner_null = PQgetisnull(res, r, 6);
			snprintf(got.owner, sizeof(got.owner), "%s", PQgetvalue(res, r, 6));
			snprintf(got.lease, sizeof(got.lease), "%s", PQgetvalue(res, r, 7));
		}
		if (!answers_match(&want, &got))
		{
			char		buf[800];

			answer_str(&want, w, sizeof(w));
			answer_str(&got, g, sizeof(g));
			tracef("      state check: get(%s, scope '%s') -> %s   <== model expects %s",
				   key_names[r % NKEYS], scope_names[r / NKEYS], g, w);
			snprintf(buf, sizeof(buf), "after the step, idem_get(%s, scope '%s') returned %s, the model expects %s",
					 key_names[r % NKEYS], scope_names[r / NKEYS], g, w);
			PQclear(res);
			diverged(buf);
		}
	}
	PQclear(res);
}

/* ---- choosing operations ----------------------------------------------- */

static const char *
pick_hash(void)
{
	int			x = rint_(10);

	return x < 4 ? "" : x < 8 ? "h1" : "h2";
}

/* a reserve's lease argument */
static int
pick_lease(void)
{
	int			x = rint_(20);

	return x < 7 ? LEASE_NULL : x < 10 ? LEN_NONE : x < 14 ? LEN_TINY : LEN_LONG;
}

/*
 * An owner token for an operation of session s on record r: mostly the
 * record's owner's (a lease's, or s's own), else a fenced one, none, or one
 * of ours.
 */
static void
pick_token(int r, int s, char *out)
{
	const mrec *m = &M.rec[r];
	int			x = rint_(20);

	if (x < 9 && m->present && m->token[0] &&
		(m->lease || m->owner == s || rint_(3) == 0))
		snprintf(out, TOKEN_SIZE, "%s", m->token);
	else if (x < 12 && m->nfenced > 0)
		snprintf(out, TOKEN_SIZE, "%s", m->fenced[rint_(m->nfenced)]);
	else if (x < 15)
		out[0] = '\0';
	else
		snprintf(out, TOKEN_SIZE, "%s", pool_tokens[rint_(3)]);
}

/* a record session s may act for, if any (for likelier commits and releases) */
static int
pick_rec(int s)
{
	int			r;

	if (rint_(10) < 7)
	{
		int			start = rint_(NREC);

		for (r = 0; r < NREC; r++)
		{
			int			i = (start + r) % NREC;
			const mrec *m = &M.rec[i];
			mstate		st = classify(m, s, m->token);

			if (st == ST_MINE || (st == ST_ORPHAN && rint_(3) == 0) ||
				(m->present && !m->committed && m->lease && rint_(2) == 0))
				return i;
		}
	}
	return rint_(NREC);
}

/* another live session owns r, and holds its lock */
static int
locked_by_other(int r, int s)
{
	const mrec *m = &M.rec[r];

	return m->present && !m->committed && !m->lease && owner_alive(m) &&
		m->owner != s;
}

/*
 * idem_extend on a key that another live session owns answers IK409 at
 * once now; a server that waited for the owner's lock first took a second
 * here (idem.wait_timeout, at least 1 s), so such picks are kept to one
 * extend in five.
 */
static int
pick_rec_extend(int s)
{
	int			blocking_ok = rint_(5) == 0;
	int			tries,
				r;

	for (tries = 0; tries < 10; tries++)
	{
		r = pick_rec(s);
		if (blocking_ok || !locked_by_other(r, s))
			return r;
	}
	for (r = 0; r < NREC - 1 && locked_by_other(r, s); r++)
		;
	return r;
}

/* for a reserve: often a key in flight, else any */
static int
pick_rec_reserve(void)
{
	int			r = rint_(NREC),
				i;

	if (rint_(4) == 0)
		for (i = 0; i < NREC; i++)
		{
			const mrec *m = &M.rec[(r + i) % NREC];

			if (m->present && !m->committed)
				return (r + i) % NREC;
		}
	return r;
}

static void
init_op(op *o, opkind kind, int s, int r)
{
	memset(o, 0, sizeof(*o));
	o->kind = kind;
	o->s = s;
	o->r = r;
	o->lease = LEASE_NULL;
	o->wait = "0";
	o->status = 200;
}

static void
random_reserve(op *o, int s, int r)
{
	init_op(o, OP_RESERVE, s, r);
	snprintf(o->hash, sizeof(o->hash), "%s", pick_hash());
	o->tiny = rint_(10) < 3;
	pick_token(r, s, o->token);
	o->lease = pick_lease();
}

static void
random_commit(op *o, int s, int r)
{
	init_op(o, OP_COMMIT, s, r);
	snprintf(o->hash, sizeof(o->hash), "%s", rint_(4) == 0 ? pick_hash() : M.rec[r].hash);
	o->status = rint_(20) == 0 ? -1 : (int[]) {200, 201, 409, 500}[rint_(4)];
	snprintf(o->body, sizeof(o->body), "b%d", cur_step);
	o->body_null = rint_(10) == 0;
	pick_token(r, s, o->token);
}

static void
random_release(op *o, int s, int r)
{
	init_op(o, OP_RELEASE, s, r);
	pick_token(r, s, o->token);
}

static void
random_extend(op *o, int s, int r)
{
	int			x = rint_(20);

	init_op(o, OP_EXTEND, s, r);
	pick_token(r, s, o->token);
	if (!o->token[0] && rint_(10) != 0)
		snprintf(o->token, sizeof(o->token), "%s", pool_tokens[rint_(3)]);
	o->lease = x < 8 ? LEASE_NULL : x < 13 ? LEN_TINY : LEN_LONG;
}

/* a token other than t: one of ours, or none */
static void
other_token(const char *t, char *out)
{
	do
	{
		int			x = rint_(4);

		snprintf(out, TOKEN_SIZE, "%s", x == 3 ? "" : pool_tokens[x]);
	} while (strcmp(out, t) == 0);
}

/* the record is still in flight under t's 40 ms lease */
static int
timed_lease_of(int r, const char *t)
{
	const mrec *m = &M.rec[r];

	return m->present && !m->committed && m->lease && m->lease_len == LEN_TIMED &&
		strcmp(m->token, t) == 0;
}

/*
 * The timed step: a lease that runs out on the wall clock, another client
 * while it runs, a waiter that must take the key over once it ran out (and
 * not before), and the old owner coming back late.
 */
static void
step_timed(int s)
{
	int			r = rint_(NREC);
	char		a_token[TOKEN_SIZE];
	op			o;
	double		t0,
				t1;
	mrec	   *m = &M.rec[r];

	snprintf(a_token, sizeof(a_token), "%s", pool_tokens[rint_(3)]);
	init_op(&o, OP_RESERVE, s, r);
	snprintf(o.hash, sizeof(o.hash), "%s", pick_hash());
	o.tiny = rint_(10) < 3;
	snprintf(o.token, sizeof(o.token), "%s", a_token);
	o.lease = LEN_TIMED;
	check_op(&o, 0);
	t0 = last_sent;
	t1 = last_received;
	if (!timed_lease_of(r, a_token))
		return;					/* a replay, IK409 or IK422: nothing timed */

	/* another client while the lease runs */
	if (rint_(10) < 7)
	{
		int			s2 = rint_(nsess);
		int			which = rint_(4);

		if (which == 0)
		{
			init_op(&o, OP_RESERVE, s2, r);
			snprintf(o.hash, sizeof(o.hash), "%s", rint_(2) ? m->hash : "");
			o.lease = (int[]) {LEN_NONE, LEN_TINY, LEN_LONG}[rint_(3)];
		}
		else if (which == 1)
		{
			init_op(&o, OP_COMMIT, s2, r);
			snprintf(o.hash, sizeof(o.hash), "%s", m->hash);
			snprintf(o.body, sizeof(o.body), "b%d", cur_step);
		}
		else if (which == 2)
			init_op(&o, OP_RELEASE, s2, r);
		else
		{
			init_op(&o, OP_EXTEND, s2, r);
			o.lease = LEN_LONG;
		}
		other_token(a_token, o.token);
		if (which == 3 && !o.token[0])
			snprintf(o.token, sizeof(o.token), "%s", strcmp(a_token, "ta") ? "ta" : "tb");
		check_op(&o, t0 + TIMED_LEASE_MS);
		if (!timed_lease_of(r, a_token))
			return;
	}

	/* a waiter: it must take over once the lease ran out, not before */
	init_op(&o, OP_RESERVE, rint_(nsess), r);
	snprintf(o.hash, sizeof(o.hash), "%s", rint_(2) ? m->hash : "");
	o.wait = "10s";
	other_token(a_token, o.token);
	o.lease = (int[]) {LEASE_NULL, LEN_NONE, LEN_TINY, LEN_LONG}[rint_(4)];
	m->lease_live = 0;
	check_op(&o, 0);
	if (last_received < t0 + TIMED_LEASE_MS)
	{
		char		buf[200];

		snprintf(buf, sizeof(buf), "the waiter took the key %.1f ms after the 40 ms lease was reserved",
				 last_received - t0);
		diverged(buf);
	}
	if (last_received > t1 + TIMED_LEASE_MS + TIMED_WAKE_SLACK_MS)
	{
		char		buf[200];

		snprintf(buf, sizeof(buf), "the waiter woke %.0f ms after the 40 ms lease ran out",
				 last_received - t1 - TIMED_LEASE_MS);
		diverged(buf);
	}
	n_timed++;

	/* the old owner comes back late */
	if (rint_(2) == 0)
	{
		int			s4 = rint_(nsess);
		int			which = rint_(locked_by_other(r, s4) ? 2 : 3);

		init_op(&o, which == 0 ? OP_COMMIT : which == 1 ? OP_RELEASE : OP_EXTEND, s4, r);
		snprintf(o.hash, sizeof(o.hash), "%s", m->hash);
		snprintf(o.body, sizeof(o.body), "late%d", cur_step);
		snprintf(o.token, sizeof(o.token), "%s", a_token);
		check_op(&o, 0);
	}
}

/*
 * A session owner that gave a token, then a call from the same session
 * with another token or none (another client sharing the session: IK409),
 * and sometimes one with the right token.
 */
static void
step_shared_session(int s)
{
	int			r = rint_(NREC);
	char		t[TOKEN_SIZE];
	op			o;
	int			which = rint_(4);

	init_op(&o, OP_RESERVE, s, r);
	snprintf(o.hash, sizeof(o.hash), "%s", M.rec[r].hash);
	snprintf(o.token, sizeof(o.token), "%s", pool_tokens[rint_(3)]);
	snprintf(t, sizeof(t), "%s", o.token);
	o.lease = rint_(2) ? LEN_NONE : LEASE_NULL;
	check_op(&o, 0);
	if (M.rec[r].lease || classify(&M.rec[r], s, t) != ST_MINE)
		return;					/* not this session's with t: nothing to share */

	if (which == 0)
	{
		init_op(&o, OP_RESERVE, s, r);
		o.lease = rint_(2) ? LEN_NONE : LEASE_NULL;
	}
	else if (which == 1)
	{
		init_op(&o, OP_COMMIT, s, r);
		snprintf(o.body, sizeof(o.body), "b%d", cur_step);
	}
	else if (which == 2)
		init_op(&o, OP_RELEASE, s, r);
	else
		init_op(&o, OP_EXTEND, s, r);
	other_token(t, o.token);
	check_op(&o, 0);

	if (rint_(3) == 0)
	{
		init_op(&o, rint_(2) ? OP_COMMIT : OP_RELEASE, s, r);
		snprintf(o.body, sizeof(o.body), "b%d", cur_step);
		snprintf(o.token, sizeof(o.token), "%s", t);
		check_op(&o, 0);
	}
}

static void
session_event(const char *fmt, int s)
{
	char		desc[200];

	snprintf(desc, sizeof(desc), fmt, s);
	tracef("%4d  %s", cur_step, desc);
	n_ops++;
}

/*
 * Whether DISCARD ALL marked r's reservation abandoned (a look at the key
 * table: the model cannot tell an abandoned reservation from a live
 * session owner's by the functions' answers until another call comes).
 */
static int
abandoned(int r)
{
	const char *params[2] = {key_names[r % NKEYS], scope_names[r / NKEYS]};
	PGresult   *res = PQexecParams(ctl, "SELECT owner_pid IS NULL FROM idem_keys "
									"WHERE key = $1 AND scope = $2",
									2, NULL, params, NULL, NULL, 0);
	int			yes;

	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		diverged("reading the owner of a discarded reservation failed");
	yes = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return yes;
}

/* one random step */
static void
step(void)
{
	int			s = rint_(nsess);
	int			x = rint_(100);
	op			o;

	if (x < 30)
	{
		random_reserve(&o, s, pick_rec_reserve());
		check_op(&o, 0);
	}
	else if (x < 49)
	{
		random_commit(&o, s, pick_rec(s));
		check_op(&o, 0);
	}
	else if (x < 57)
	{
		random_release(&o, s, pick_rec(s));
		check_op(&o, 0);
	}
	else if (x < 63)
	{
		random_extend(&o, s, pick_rec_extend(s));
		check_op(&o, 0);
	}
	else if (x < 68)
	{
		init_op(&o, OP_GET, s, rint_(NREC));
		check_op(&o, 0);
	}
	else if (x < 71)
	{
		init_op(&o, OP_PURGE, s, 0);
		check_op(&o, 0);
	}
	else if (x < 74)
	{
		end_session(s, 0);
		session_event("s%d disconnects (reconnects as a new session)", s);
	}
	else if (x < 77)
	{
		end_session(s, 1);
		session_event("s%d is terminated (pg_terminate_backend; reconnects)", s);
	}
	else if (x < 81)
	{
		int			r;

		simple(s, "DISCARD ALL");
		session_event("s%d DISCARD ALL", s);
		for (r = 0; r < NREC; r++)
		{
			mrec	   *m = &M.rec[r];

			if (m->lease || classify(m, s, m->token) != ST_MINE)
				continue;
			if (m->untracked && !abandoned(r))
			{
				char		buf[300];

				snprintf(buf, sizeof(buf), "%s in scope '%s' stays owned by s%d after its DISCARD ALL (%s)",
						 key_names[r % NKEYS], scope_names[r / NKEYS], s,
						 dev_text[DEV_DISCARD_FORGETS]);
				if (strict)
					diverged(buf);
				dev_count[DEV_DISCARD_FORGETS]++;
				tracef("      (known deviation: %s)", buf);
			}
			else
				m->owner = -1;
		}
		session_settings(s);
	}
	else if (x < 83)
	{
		int			r;

		simple(s, "SELECT pg_advisory_unlock_all()");
		session_event("s%d SELECT pg_advisory_unlock_all()", s);
		for (r = 0; r < NREC; r++)
			if (!M.rec[r].lease && owner_alive(&M.rec[r]) && M.rec[r].owner == s)
				M.rec[r].lock_lost = 1;
	}
	else if (x < 85)
	{
		if (S[s].lease_setting)
		{
			simple(s, "RESET idem.lease");
			session_event("s%d RESET idem.lease", s);
		}
		else
		{
			simple(s, "SET idem.lease = '1h'");
			session_event("s%d SET idem.lease = '1h'", s);
		}
		S[s].lease_setting = !S[s].lease_setting;
	}
	else if (x < 89)
		step_shared_session(s);
	else if (x < 90)
		step_timed(s);
	else
	{
		/* one operation in a transaction that commits or rolls back */
		int			commit = rint_(2);
		int			which = rint_(5);
		model		saved = M;
		const cand *c;

		simple(s, "BEGIN");
		tracef("%4d  s%d BEGIN", cur_step, s);
		if (which == 0)
			random_reserve(&o, s, rint_(NREC));
		else if (which == 1)
		{
			random_commit(&o, s, pick_rec(s));
			o.status = 200;
			o.body_null = 0;
		}
		else if (which == 2)
			random_release(&o, s, pick_rec(s));
		else if (which == 3)
			random_extend(&o, s, pick_rec_extend(s));
		else
			init_op(&o, OP_PURGE, s, 0);
		c = check_op(&o, 0);
		if (commit && !c->a.err[0])
		{
			simple(s, "COMMIT");
			tracef("%4d  s%d COMMIT", cur_step, s);
		}
		else
		{
			int			r;

			simple(s, "ROLLBACK");
			tracef("%4d  s%d ROLLBACK", cur_step, s);
			/* what the server forgot at the abort (D5) stays forgotten */
			for (r = 0; r < NREC; r++)
				saved.rec[r].untracked |= M.rec[r].untracked;
			M = saved;
		}
	}
	if (S[s].conn && S[s].warning[0])
	{
		char		buf[400];

		nwarnings++;
		snprintf(buf, sizeof(buf), "the server sent a WARNING to s%d: %s", s, S[s].warning);
		tracef("      %s", buf);
		diverged(buf);
	}
	check_all();
}

static void
run_seed(unsigned long seed, int steps)
{
	int			i;

	cur_seed = seed;
	cur_steps = steps;
	rng = seed * 0x2545f4914f6cdd1dULL + 12345;
	trace_len = 0;
	if (trace)
		trace[0] = '\0';
	memset(&M, 0, sizeof(M));

	/* a clean start: new sessions, an empty key table */
	for (i = 0; i < nsess; i++)
	{
		if (S[i].conn)
		{
			int			pid = S[i].pid;

			PQfinish(S[i].conn);
			wait_gone(pid);
		}
		S[i].inc = 0;
		open_session(i);
	}
	simple(-1, "DELETE FROM idem_keys");

	for (cur_step = 1; cur_step <= steps; cur_step++)
		step();
}

int
main(int argc, char **argv)
{
	unsigned long first = 1;
	int			seeds = 20,
				steps = 200,
				i;
	int			one = 0;
	long		ndev = 0;
	char		devs[200] = "";
	size_t		dl = 0;
	struct timespec t0,
				t1;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
		{
			first = strtoul(argv[++i], NULL, 10);
			one = 1;
		}
		else if (strcmp(argv[i], "--first-seed") == 0 && i + 1 < argc)
			first = strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--seeds") == 0 && i + 1 < argc)
			seeds = atoi(argv[++i]);
		else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
			steps = atoi(argv[++i]);
		else if (strcmp(argv[i], "--sessions") == 0 && i + 1 < argc)
			nsess = atoi(argv[++i]);
		else if (strcmp(argv[i], "--strict") == 0)
			strict = 1;
		else if (strcmp(argv[i], "-v") == 0)
			verbose = 1;
		else
		{
			fprintf(stderr, "usage: model [--seed N | --first-seed N --seeds N] [--steps N] [--sessions N] [--strict] [-v]\n");
			return 2;
		}
	}
	if (one)
		seeds = 1;
	if (nsess < 1 || nsess > MAX_SESSIONS || steps < 1 || seeds < 1)
	{
		fprintf(stderr, "model: bad arguments\n");
		return 2;
	}
	ctl = connect_or_die("model-control");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < seeds; i++)
		run_seed(first + (unsigned long) i, steps);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	for (i = 1; i < NDEV; i++)
	{
		ndev += dev_count[i];
		if (dev_count[i] > 0)
			dl += (size_t) snprintf(devs + dl, sizeof(devs) - dl, "%sD%d x%ld",
									dl ? ", " : "", i, dev_count[i]);
	}
	for (i = 1; i < NDEV; i++)
		if (dev_count[i] > 0)
			printf("model: known deviation %s: seen %ld times\n", dev_text[i], dev_count[i]);
	printf("model: %d seeds (%lu..%lu) x %d steps, %d sessions: %ld operations, each checked, and the key space after each; "
		   "%ld lease reservations, %ld lease takeovers (%ld timed on the clock), %ld fenced tokens refused, %ld other tokens of a session owner refused; "
		   "no divergence, %ld known deviations%s%s%s (%.1f s)\n",
		   seeds, first, first + (unsigned long) seeds - 1, steps, nsess, n_ops,
		   n_lease_fresh, n_lease_takeovers, n_timed, n_fenced, n_other_token,
		   ndev, ndev ? " (" : "", devs, ndev ? ")" : "",
		   (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9);
	for (i = 0; i < nsess; i++)
		PQfinish(S[i].conn);
	PQfinish(ctl);
	return 0;
}
