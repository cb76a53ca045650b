/*-------------------------------------------------------------------------
 *
 * model.c
 *	  Randomized model test of the idempotency contract (SPEC.md).
 *
 *	  model [--seed N] [--seeds N] [--steps N] [--sessions N] [-v]
 *
 * Several libpq sessions (4) issue random operations, one at a time, in an
 * interleaving drawn from a seeded PRNG, on a few keys in two scopes; every
 * answer is compared with what a small in-memory model of the contract
 * predicts, and after every step the whole key space is read back with
 * idem_get from a control session and compared too.  Nothing ever blocks:
 * every reserve uses wait_timeout 0.
 *
 * Operations: reserve (hash NULL, "h1" or "h2"; ttl 1 hour or 1
 * microsecond), commit (status, body or NULL body), release, get, purge,
 * disconnect (the session closes and reconnects: its reservations' owner
 * is gone), terminate (pg_terminate_backend of the session's backend: the
 * same, the hard way), DISCARD ALL (counts as the owner's session ending),
 * pg_advisory_unlock_all() (must NOT cost a live owner its key), and a
 * reserve, commit, release or purge inside BEGIN ... COMMIT or ROLLBACK
 * (a rolled-back transaction leaves no trace).
 *
 * The model, from SPEC.md:
 *	- a record is absent when it is not there or has expired: a committed
 *	  record with the 1 microsecond ttl is expired at the next statement;
 *	  an in-flight one expires only once its owner is gone;
 *	- reserve: IK422 when both hashes are non-NULL and differ (for any
 *	  live record); committed: replay; own in-flight: fresh again, same
 *	  attempt; another live owner's: IK409 (wait 0); owner gone: takeover,
 *	  attempt + 1; absent: fresh, attempt 1;
 *	- commit: absent: IK404; hash differs: IK422; committed: false (the
 *	  first response stands); another live owner's: IK409; own or owner
 *	  gone: stored, true;
 *	- release: absent or committed: false; another live owner's: IK409;
 *	  own or owner gone: dropped, true;
 *	- purge: deletes the expired records (in flight only when the owner is
 *	  gone) and returns how many.
 * Where SPEC.md is silent the model follows the README / implementation
 * choice and says so: a takeover without a hash keeps the stored hash; a
 * commit with a hash on a reservation without one stores it; the ttl of a
 * committed record is the one given by the reserve that made the
 * reservation (the takeover's, after a takeover).
 *
 * On a divergence it prints the seed, the step, the trace of the seed so
 * far (operations, answers, and what the model expected) and a command
 * line that replays it, and exits 1.  Connection: libpq's environment.
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

static const char *const key_names[NKEYS] = {"k0", "k1", "k2"};
static const char *const scope_names[NSCOPES] = {"", "t1"};

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

/* ---- the model --------------------------------------------------------- */

typedef struct mrec
{
	int			present;		/* a row exists (maybe expired) */
	int			committed;
	char		hash[4];		/* "" = NULL */
	int			owner;			/* session, or -1: abandoned (DISCARD ALL) */
	int			owner_inc;		/* the owner's incarnation */
	int			attempt;
	int			tiny;			/* ttl 1 microsecond, else 1 hour */
	int			status;			/* -1 = NULL */
	char		body[24];		/* "" with body_null */
	int			body_null;
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
	char		warning[256];	/* the last WARNING the server sent, if any */
} session;

static model M;
static session S[MAX_SESSIONS];
static int	nsess = 4;
static PGconn *ctl;
static int	verbose;
static int	nwarnings;


typedef enum
{
	ST_ABSENT, ST_COMMITTED, ST_MINE, ST_OTHER, ST_ORPHAN
} mstate;

static int
owner_alive(const mrec *r)
{
	return r->owner >= 0 && S[r->owner].inc == r->owner_inc;
}

static int
expired(const mrec *r)
{
	if (r->committed)
		return r->tiny;
	return r->tiny && !owner_alive(r);
}

static mstate
classify(const mrec *r, int s)
{
	if (!r->present || expired(r))
		return ST_ABSENT;
	if (r->committed)
		return ST_COMMITTED;
	if (owner_alive(r))
		return r->owner == s ? ST_MINE : ST_OTHER;
	return ST_ORPHAN;
}

static int
hashes_differ(const char *stored, const char *given)
{
	return stored[0] && given[0] && strcmp(stored, given) != 0;
}

/* ---- what an operation returned (or the model expects) ----------------- */

typedef struct answer
{
	char		err[6];			/* SQLSTATE, "" = none */
	int			kind;			/* 0 nothing, 1 row, 2 bool, 3 count, 4 null row */
	int			fresh;
	char		state[12];
	int			status;			/* -1 = NULL */
	char		body[24];
	int			body_null;
	int			attempt;
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

		snprintf(status, sizeof(status), "%d", a->status);
		snprintf(buf, size, "fresh=%s state=%s status=%s body=%s attempt=%d",
				 a->fresh ? "t" : "f", a->state, a->status < 0 ? "NULL" : status,
				 a->body_null ? "NULL" : a->body, a->attempt);
	}
	else if (a->kind == 2)
		snprintf(buf, size, "%s", a->n ? "true" : "false");
	else if (a->kind == 3)
		snprintf(buf, size, "%ld", a->n);
	else if (a->kind == 4)
		snprintf(buf, size, "(absent)");
	else
		snprintf(buf, size, "ok");
}

static int
answers_equal(const answer *a, const answer *b)
{
	if (strcmp(a->err, b->err) != 0)
		return 0;
	if (a->err[0])
		return 1;
	if (a->kind != b->kind)
		return 0;
	switch (a->kind)
	{
		case 1:
			return a->fresh == b->fresh && strcmp(a->state, b->state) == 0 &&
				a->status == b->status && a->body_null == b->body_null &&
				(a->body_null || strcmp(a->body, b->body) == 0) &&
				a->attempt == b->attempt;
		case 2:
		case 3:
			return a->n == b->n;
		default:
			return 1;
	}
}

static void
row_of(const mrec *r, int fresh, answer *a)
{
	a->kind = 1;
	a->fresh = fresh;
	snprintf(a->state, sizeof(a->state), "%s", r->committed ? "committed" : "in_flight");
	a->status = r->committed ? r->status : -1;
	a->body_null = !r->committed || r->body_null;
	snprintf(a->body, sizeof(a->body), "%s", a->body_null ? "" : r->body);
	a->attempt = r->attempt;
}

/* ---- the trace --------------------------------------------------------- */

static char *trace;
static size_t trace_len,
			trace_cap;

static void
tracef(const char *fmt,...)
{
	va_list		ap;
	char		line[1024];
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
	fprintf(stdout, "replay: test/model/build/model --seed %lu --steps %d --sessions %d -v\n",
			cur_seed, cur_steps, nsess);
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

static void
open_session(int i)
{
	char		app[32];

	snprintf(app, sizeof(app), "model-s%d", i);
	S[i].conn = connect_or_die(app);
	S[i].pid = PQbackendPID(S[i].conn);
	S[i].warning[0] = '\0';
	PQsetNoticeReceiver(S[i].conn, on_notice, &S[i]);
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
	wait_gone(pid);				/* (after PQfinish when not terminating) */
	PQfinish(S[i].conn);
	S[i].inc++;
	open_session(i);
}

/* ---- running SQL ------------------------------------------------------- */

#define ROW_SQL "fresh, state, status, convert_from(body, 'UTF8'), attempt"

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
		}
	}
	else if ((kind == 2 || kind == 3) && PQntuples(res) == 1)
		a->n = kind == 2 ? strcmp(PQgetvalue(res, 0, 0), "t") == 0 : atol(PQgetvalue(res, 0, 0));
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

/* ---- operations: each predicts with the model, runs, compares ----------- */

static void
compare(const char *op, const answer *want, const answer *got)
{
	char		w[200],
				g[200];

	answer_str(want, w, sizeof(w));
	answer_str(got, g, sizeof(g));
	if (answers_equal(want, got))
		tracef("%4d  %-62s -> %s", cur_step, op, g);
	else
	{
		char		buf[600];

		tracef("%4d  %-62s -> %s   <== model expects %s", cur_step, op, g, w);
		snprintf(buf, sizeof(buf), "%s returned %s, the model expects %s", op, g, w);
		diverged(buf);
	}
}

static void
set_err(answer *a, const char *state)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->err, sizeof(a->err), "%s", state);
}

static void
op_reserve(int s, int r, const char *hash, int tiny, answer *want, char *desc, size_t dsz)
{
	mrec	   *m = &M.rec[r];
	mstate		st = classify(m, s);

	snprintf(desc, dsz, "s%d reserve(%s, scope '%s', hash %s, ttl %s)", s,
			 key_names[r % NKEYS], scope_names[r / NKEYS], hash[0] ? hash : "NULL",
			 tiny ? "1us" : "1h");
	memset(want, 0, sizeof(*want));
	if (st != ST_ABSENT && hashes_differ(m->hash, hash))
		set_err(want, "IK422");
	else if (st == ST_COMMITTED)
		row_of(m, 0, want);
	else if (st == ST_MINE)
		row_of(m, 1, want);
	else if (st == ST_OTHER)
		set_err(want, "IK409");
	else if (st == ST_ORPHAN)
	{
		m->attempt++;
		m->owner = s;
		m->owner_inc = S[s].inc;
		if (hash[0])
			snprintf(m->hash, sizeof(m->hash), "%s", hash);
		m->tiny = tiny;
		row_of(m, 1, want);
	}
	else
	{
		memset(m, 0, sizeof(*m));
		m->present = 1;
		m->owner = s;
		m->owner_inc = S[s].inc;
		m->attempt = 1;
		snprintf(m->hash, sizeof(m->hash), "%s", hash);
		m->tiny = tiny;
		m->status = -1;
		row_of(m, 1, want);
	}
}

static void
exec_reserve(int s, int r, const char *hash, int tiny, answer *got)
{
	const char *params[4];

	params[0] = key_names[r % NKEYS];
	params[1] = hash[0] ? hash : NULL;
	params[2] = tiny ? "1 microsecond" : "1 hour";
	params[3] = scope_names[r / NKEYS];
	run(s, "SELECT " ROW_SQL " FROM idem_reserve($1, $2, $3::interval, '0', $4)",
		4, params, 1, got);
}

static void
op_commit(int s, int r, const char *hash, int status, const char *body, answer *want,
		  char *desc, size_t dsz)
{
	mrec	   *m = &M.rec[r];
	mstate		st = classify(m, s);
	char		sts[16];

	snprintf(sts, sizeof(sts), "%d", status);
	snprintf(desc, dsz, "s%d commit(%s, scope '%s', hash %s, %s, %s)", s,
			 key_names[r % NKEYS], scope_names[r / NKEYS], hash[0] ? hash : "NULL",
			 status < 0 ? "NULL" : sts, body ? body : "NULL");
	memset(want, 0, sizeof(*want));
	if (st == ST_ABSENT)
		set_err(want, "IK404");
	else if (hashes_differ(m->hash, hash))
		set_err(want, "IK422");
	else if (st == ST_COMMITTED)
	{
		want->kind = 2;
		want->n = 0;
	}
	else if (st == ST_OTHER)
		set_err(want, "IK409");
	else
	{
		/* own, or adopted from a gone owner */
		m->committed = 1;
		if (!m->hash[0])
			snprintf(m->hash, sizeof(m->hash), "%s", hash);
		m->status = status;
		m->body_null = body == NULL;
		snprintf(m->body, sizeof(m->body), "%s", body ? body : "");
		m->owner = -1;
		want->kind = 2;
		want->n = 1;
	}
}

static void
exec_commit(int s, int r, const char *hash, int status, const char *body, answer *got)
{
	const char *params[5];
	char		sts[16];

	snprintf(sts, sizeof(sts), "%d", status);
	params[0] = key_names[r % NKEYS];
	params[1] = hash[0] ? hash : NULL;
	params[2] = status < 0 ? NULL : sts;
	params[3] = body;
	params[4] = scope_names[r / NKEYS];
	run(s, "SELECT idem_commit($1, $2, $3::int, convert_to($4, 'UTF8'), '{}', $5)",
		5, params, 2, got);
}

static void
op_release(int s, int r, answer *want, char *desc, size_t dsz)
{
	mrec	   *m = &M.rec[r];
	mstate		st = classify(m, s);

	snprintf(desc, dsz, "s%d release(%s, scope '%s')", s, key_names[r % NKEYS],
			 scope_names[r / NKEYS]);
	memset(want, 0, sizeof(*want));
	want->kind = 2;
	if (st == ST_ABSENT || st == ST_COMMITTED)
		want->n = 0;
	else if (st == ST_OTHER)
		set_err(want, "IK409");
	else
	{
		memset(m, 0, sizeof(*m));
		want->n = 1;
	}
}

static void
exec_release(int s, int r, answer *got)
{
	const char *params[2] = {key_names[r % NKEYS], scope_names[r / NKEYS]};

	run(s, "SELECT idem_release($1, $2)", 2, params, 2, got);
}

static void
op_purge(answer *want)
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
exec_purge(int s, answer *got)
{
	run(s, "SELECT idem_purge()", 0, NULL, 3, got);
}

/* the whole key space, read back from the control session in one query */
static void
check_all(void)
{
	static const char *sql =
		"SELECT v.i, g.fresh, g.state, g.status, convert_from(g.body, 'UTF8'), g.attempt "
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
		char		w[200],
					g[200];

		memset(&want, 0, sizeof(want));
		if (classify(m, -1) == ST_ABSENT)
			want.kind = 4;
		else
			row_of(m, 0, &want);
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
		}
		if (!answers_equal(&want, &got))
		{
			char		buf[600];

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

static const char *
pick_hash(void)
{
	int			x = rint_(10);

	return x < 4 ? "" : x < 8 ? "h1" : "h2";
}

/* a record this session owns, if any (for likelier commits and releases) */
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
			mstate		st = classify(&M.rec[i], s);

			if (st == ST_MINE || (st == ST_ORPHAN && rint_(3) == 0))
				return i;
		}
	}
	return rint_(NREC);
}

static long n_ops;

/* one random step */
static void
step(void)
{
	int			s = rint_(nsess);
	int			x = rint_(100);
	answer		want,
				got;
	char		desc[400];
	model		saved;

	if (x < 34)
	{
		int			r = rint_(NREC);
		const char *h = pick_hash();
		int			tiny = rint_(10) < 3;

		op_reserve(s, r, h, tiny, &want, desc, sizeof(desc));
		exec_reserve(s, r, h, tiny, &got);
		compare(desc, &want, &got);
	}
	else if (x < 56)
	{
		int			r = pick_rec(s);
		char		h[4];
		int			status = rint_(20) == 0 ? -1 : (int[]) {200, 201, 409, 500}[rint_(4)];
		char		body[24];
		const char *b;

		snprintf(h, sizeof(h), "%s", rint_(4) == 0 ? pick_hash() : M.rec[r].hash);
		snprintf(body, sizeof(body), "b%d", cur_step);
		b = rint_(10) == 0 ? NULL : body;
		op_commit(s, r, h, status, b, &want, desc, sizeof(desc));
		exec_commit(s, r, h, status, b, &got);
		compare(desc, &want, &got);
	}
	else if (x < 64)
	{
		int			r = pick_rec(s);

		op_release(s, r, &want, desc, sizeof(desc));
		exec_release(s, r, &got);
		compare(desc, &want, &got);
	}
	else if (x < 71)
	{
		int			r = rint_(NREC);
		const char *params[2] = {key_names[r % NKEYS], scope_names[r / NKEYS]};

		snprintf(desc, sizeof(desc), "s%d get(%s, scope '%s')", s, params[0], params[1]);
		memset(&want, 0, sizeof(want));
		if (classify(&M.rec[r], s) == ST_ABSENT)
			want.kind = 4;
		else
			row_of(&M.rec[r], 0, &want);
		run(s, "SELECT " ROW_SQL " FROM idem_get($1, $2)", 2, params, 1, &got);
		compare(desc, &want, &got);
	}
	else if (x < 75)
	{
		snprintf(desc, sizeof(desc), "s%d purge()", s);
		op_purge(&want);
		exec_purge(s, &got);
		compare(desc, &want, &got);
	}
	else if (x < 79)
	{
		snprintf(desc, sizeof(desc), "s%d disconnects (reconnects as a new session)", s);
		PQfinish(S[s].conn);
		S[s].conn = NULL;
		{
			int			pid = S[s].pid;

			wait_gone(pid);
			S[s].inc++;
			open_session(s);
		}
		tracef("%4d  %s", cur_step, desc);
	}
	else if (x < 82)
	{
		snprintf(desc, sizeof(desc), "s%d is terminated (pg_terminate_backend; reconnects)", s);
		end_session(s, 1);
		tracef("%4d  %s", cur_step, desc);
	}
	else if (x < 87)
	{
		int			r;

		snprintf(desc, sizeof(desc), "s%d DISCARD ALL", s);
		simple(s, "DISCARD ALL");
		for (r = 0; r < NREC; r++)
			if (classify(&M.rec[r], s) == ST_MINE)
				M.rec[r].owner = -1;
		tracef("%4d  %s", cur_step, desc);
	}
	else if (x < 90)
	{
		snprintf(desc, sizeof(desc), "s%d SELECT pg_advisory_unlock_all()", s);
		simple(s, "SELECT pg_advisory_unlock_all()");
		tracef("%4d  %s", cur_step, desc);
	}
	else
	{
		/* one operation in a transaction that commits or rolls back */
		int			commit = rint_(2);
		int			which = rint_(4);
		int			r = which == 0 ? rint_(NREC) : pick_rec(s);
		char		inner[300];

		saved = M;
		simple(s, "BEGIN");
		if (which == 0)
		{
			const char *h = pick_hash();
			int			tiny = rint_(10) < 3;

			op_reserve(s, r, h, tiny, &want, inner, sizeof(inner));
			exec_reserve(s, r, h, tiny, &got);
		}
		else if (which == 1)
		{
			char		body[24];
			char		h[4];

			snprintf(h, sizeof(h), "%s", M.rec[r].hash);

			snprintf(body, sizeof(body), "b%d", cur_step);
			op_commit(s, r, h, 200, body, &want, inner, sizeof(inner));
			exec_commit(s, r, h, 200, body, &got);
		}
		else if (which == 2)
		{
			op_release(s, r, &want, inner, sizeof(inner));
			exec_release(s, r, &got);
		}
		else
		{
			snprintf(inner, sizeof(inner), "s%d purge()", s);
			op_purge(&want);
			exec_purge(s, &got);
		}
		snprintf(desc, sizeof(desc), "BEGIN; %s; %s", inner,
				 commit && !got.err[0] ? "COMMIT" : "ROLLBACK");
		compare(desc, &want, &got);
		if (commit && !got.err[0])
			simple(s, "COMMIT");
		else
		{
			simple(s, "ROLLBACK");
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
	n_ops++;
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
		else if (strcmp(argv[i], "-v") == 0)
			verbose = 1;
		else
		{
			fprintf(stderr, "usage: model [--seed N | --first-seed N --seeds N] [--steps N] [--sessions N] [-v]\n");
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
	printf("model: %d seeds (%lu..%lu) x %d steps, %d sessions: %ld operations, each checked, and the key space after each; no divergence (%.1f s)\n",
		   seeds, first, first + (unsigned long) seeds - 1, steps, nsess, n_ops,
		   (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9);
	for (i = 0; i < nsess; i++)
		PQfinish(S[i].conn);
	PQfinish(ctl);
	return 0;
}
