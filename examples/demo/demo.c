/*
 * demo.c: what the idempotency extension does, shown with libidem.
 *
 * Built only on libidem's public header (idem.h) and libpq's client header,
 * like an application.  Against a database where CREATE EXTENSION
 * idempotency has run (libpq's environment, or the conninfo argument):
 *
 *   1. N concurrent "charge" requests (one thread and one connection each)
 *      with the same idempotency key and the same request body: one runs the
 *      handler (300 ms of "card network", then a row in the charges table
 *      and the stored response, in one transaction), the others wait in the
 *      server and get its response byte for byte.
 *   2. A handler that dies mid-flight: a child process reserves a key,
 *      writes its charge row and is killed (SIGKILL) before it commits.  The
 *      retry takes the key over at once (attempt 2) and completes; the
 *      killed handler's row was never committed, so there is one charge.
 *   3. The same key with another body: a mismatch (HTTP 422), the handler
 *      does not run.
 *
 * Prints a report; exits 0 when every check passed, 1 when one failed,
 * 2 when it could not run (usage, connection, extension missing).
 *
 * usage: demo [-n REQUESTS] [-s HANDLER_MS] [CONNINFO]
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>

#include <libpq-fe.h>
#include <idem.h>

#define MAX_REQUESTS 100
#define BODY_MAX 512
#define SCOPE "demo"
#define METHOD "POST"
#define PATH "/v1/charges"

static const char *conninfo = "";	/* "" = libpq's environment */
static int	n_requests = 20;
static int	handler_ms = 300;

static int	checks_passed;
static int	checks_failed;

/* ---- small helpers ----------------------------------------------------- */

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void
sleep_ms(int ms)
{
	struct timespec ts;

	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (long) (ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void
die(const char *fmt,...)
{
	va_list		ap;

	fflush(stdout);
	fprintf(stderr, "demo: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(2);
}

/* One check of the demo: prints "[ok]" or "[FAILED]" after the line. */
static void
check(int cond, const char *fmt,...)
{
	va_list		ap;
	char		line[256];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	printf("    %-66s %s\n", line, cond ? "[ok]" : "[FAILED]");
	if (cond)
		checks_passed++;
	else
		checks_failed++;
}

static PGconn *
connect_db(void)
{
	PGconn	   *pg = PQconnectdb(conninfo);

	if (pg == NULL || PQstatus(pg) != CONNECTION_OK)
		die("cannot connect to the database: %s",
			pg ? PQerrorMessage(pg) : "out of memory");
	return pg;
}

/* Runs sql; returns the result (caller clears) or NULL with msg in err. */
static PGresult *
sql(PGconn *pg, char *err, size_t errsz, const char *query,
	int nparams, const char *const *params)
{
	PGresult   *res = PQexecParams(pg, query, nparams, NULL, params,
								   NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);

	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return res;
	snprintf(err, errsz, "%s", PQresultErrorMessage(res));
	err[strcspn(err, "\n")] = '\0';
	PQclear(res);
	return NULL;
}

/* Runs a command that must succeed (setup, counts). */
static long
sql_long(PGconn *pg, const char *query, int nparams, const char *const *params)
{
	char		err[256];
	PGresult   *res = sql(pg, err, sizeof(err), query, nparams, params);
	long		v;

	if (res == NULL)
		die("%s: %s", query, err);
	v = PQntuples(res) > 0 ? atol(PQgetvalue(res, 0, 0)) : 0;
	PQclear(res);
	return v;
}

static long
charges_for(PGconn *pg, const char *key)
{
	const char *p[1] = {key};

	return sql_long(pg, "SELECT count(*) FROM charges WHERE idem_key = $1",
					1, p);
}

static void
short_hash(char out[16], const char *hash)
{
	snprintf(out, 16, "%.12s…", hash);
}

/*
 * The request body of a charge, and its fingerprint (computed locally, the
 * same value as SELECT idem_request_hash('POST', '/v1/charges', body)).
 */
static void
request_of(char *body, size_t bodysz, const char *order, int amount,
		   char hash[IDEM_HASH_SIZE])
{
	snprintf(body, bodysz,
			 "{\"order\":\"%s\",\"amount\":%d,\"currency\":\"eur\","
			 "\"card\":\"tok_visa\"}", order, amount);
	if (idem_request_hash(hash, METHOD, PATH, body, strlen(body)) < 0)
		die("idem_request_hash failed");
}

/*
 * The handler's transaction, on the request's own connection, after the
 * card network said yes: the charge row and the stored response commit
 * together (exactly once for what lives in the database).  Fills body with
 * the response.  Returns 0, or -1 with err set (rolled back).  When
 * commit_sent is not NULL it gets the time COMMIT was sent.
 */
static int
record_charge(PGconn *pg, idem_conn *ic, const char *key,
			  const idem_opts *opts, int amount, int attempt,
			  const char *who, char *body, size_t bodysz,
			  double *commit_sent, char *err, size_t errsz)
{
	PGresult   *res;
	idem_response *resp;
	idem_outcome oc;
	char		attempt_s[16];
	char		amount_s[16];
	const char *p[3];

	snprintf(attempt_s, sizeof(attempt_s), "%d", attempt);
	snprintf(amount_s, sizeof(amount_s), "%d", amount);
	p[0] = key;
	p[1] = amount_s;
	p[2] = attempt_s;

	if ((res = sql(pg, err, errsz, "BEGIN", 0, NULL)) == NULL)
		return -1;
	PQclear(res);
	res = sql(pg, err, errsz,
			  "INSERT INTO charges (idem_key, amount, attempt) "
			  "VALUES ($1, $2, $3) RETURNING id, "
			  "to_char(created_at AT TIME ZONE 'UTC', "
			  "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')", 3, p);
	if (res == NULL)
		goto fail;
	snprintf(body, bodysz,
			 "{\"id\":\"ch_%06ld\",\"amount\":%d,\"currency\":\"eur\","
			 "\"status\":\"succeeded\",\"attempt\":%d,\"handled_by\":\"%s\","
			 "\"created\":\"%s\"}",
			 atol(PQgetvalue(res, 0, 0)), amount, attempt, who,
			 PQgetvalue(res, 0, 1));
	PQclear(res);

	resp = idem_response_new();
	if (resp == NULL ||
		idem_response_add_header(resp, "Content-Type", "application/json") < 0 ||
		idem_response_headers_json(resp) == NULL)
	{
		idem_response_free(resp);
		snprintf(err, errsz, "out of memory");
		goto fail;
	}
	oc = idem_commit(ic, key, opts, 201, body, strlen(body),
					 idem_response_headers_json(resp));
	idem_response_free(resp);
	if (oc != IDEM_FRESH)
	{
		snprintf(err, errsz, "idem_commit: %s: %s", idem_outcome_name(oc),
				 idem_errmsg(ic));
		goto fail;
	}
	if (commit_sent)
		*commit_sent = now_ms();
	if ((res = sql(pg, err, errsz, "COMMIT", 0, NULL)) == NULL)
		goto fail;
	PQclear(res);
	return 0;

fail:
	PQclear(PQexec(pg, "ROLLBACK"));
	return -1;
}

/* ---- 1. concurrent duplicates ----------------------------------------- */

typedef struct request
{
	int			idx;			/* 1-based */
	PGconn	   *pg;
	idem_conn  *ic;
	const char *key;
	const char *hash;
	idem_outcome outcome;
	int			attempt;
	int			status;
	char		body[BODY_MAX];
	size_t		body_len;
	char		headers[128];
	double		t_answer;		/* when the request had its answer */
	double		t_commit_sent;	/* owner: when it sent COMMIT */
	double		t_commit_done;	/* owner: when COMMIT returned */
	char		err[256];
} request;

static pthread_barrier_t start_line;
static double t_start;

static void *
request_thread(void *arg)
{
	request    *r = arg;
	idem_opts	opts = {0};
	idem_record *rec = NULL;

	opts.scope = SCOPE;
	opts.request_hash = r->hash;
	opts.wait = "30s";

	pthread_barrier_wait(&start_line);
	r->outcome = idem_reserve(r->ic, r->key, &opts, &rec);
	if (r->outcome == IDEM_FRESH)
	{
		char		who[32];

		/* the owner runs the handler: the card network, then the charge */
		r->attempt = idem_record_attempt(rec);
		sleep_ms(handler_ms);
		snprintf(who, sizeof(who), "request %d", r->idx);
		if (record_charge(r->pg, r->ic, r->key, &opts, 4200, r->attempt, who,
						  r->body, sizeof(r->body), &r->t_commit_sent,
						  r->err, sizeof(r->err)) < 0)
		{
			r->outcome = IDEM_ERROR;
			idem_release(r->ic, r->key, &opts);
		}
		else
		{
			r->t_commit_done = now_ms();
			r->status = 201;
			r->body_len = strlen(r->body);
		}
	}
	else if (r->outcome == IDEM_REPLAY)
	{
		const void *b = idem_record_body(rec, &r->body_len);
		const char *h = idem_record_headers_json(rec);

		r->attempt = idem_record_attempt(rec);
		r->status = idem_record_status(rec);
		if (r->body_len > sizeof(r->body))
			r->body_len = sizeof(r->body);
		if (b)
			memcpy(r->body, b, r->body_len);
		snprintf(r->headers, sizeof(r->headers), "%s", h ? h : "");
	}
	else
		snprintf(r->err, sizeof(r->err), "%s (SQLSTATE %s)",
				 idem_errmsg(r->ic), idem_sqlstate(r->ic));
	r->t_answer = now_ms();
	idem_record_free(rec);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

static void
scenario_concurrent(PGconn *main_pg, idem_conn *main_ic, const char *key,
					const char *order)
{
	request    *reqs = calloc((size_t) n_requests, sizeof(request));
	pthread_t  *threads = calloc((size_t) n_requests, sizeof(pthread_t));
	char		body[BODY_MAX];
	char		hash[IDEM_HASH_SIZE];
	char		hs[16];
	idem_opts	opts = {0};
	idem_record *stored = NULL;
	const void *sbody;
	size_t		sbody_len = 0;
	const char *sheaders;
	int			fresh = 0,
				replays = 0,
				errors = 0,
				identical = 0,
				owner = -1;
	double	   *wakes;
	int			nwakes = 0;
	double		t_done;

	if (reqs == NULL || threads == NULL)
		die("out of memory");
	wakes = calloc((size_t) n_requests, sizeof(double));
	if (wakes == NULL)
		die("out of memory");

	request_of(body, sizeof(body), order, 4200, hash);
	short_hash(hs, hash);
	printf("1. %d concurrent charge requests, same key, same body\n",
		   n_requests);
	printf("    key %s   request hash %s (%s %s, %zu-byte body)\n",
		   key, hs, METHOD, PATH, strlen(body));
	printf("    handler: %d ms of card network, then the charge row and the "
		   "response in one transaction\n", handler_ms);

	/* one connection per request, all open before the start line */
	for (int i = 0; i < n_requests; i++)
	{
		reqs[i].idx = i + 1;
		reqs[i].pg = connect_db();
		reqs[i].ic = idem_wrap(reqs[i].pg);
		if (reqs[i].ic == NULL)
			die("out of memory");
		reqs[i].key = key;
		reqs[i].hash = hash;
	}
	if (pthread_barrier_init(&start_line, NULL, (unsigned) n_requests + 1))
		die("pthread_barrier_init failed");
	for (int i = 0; i < n_requests; i++)
		if (pthread_create(&threads[i], NULL, request_thread, &reqs[i]))
			die("pthread_create failed");
	pthread_barrier_wait(&start_line);
	t_start = now_ms();
	for (int i = 0; i < n_requests; i++)
		pthread_join(threads[i], NULL);
	t_done = now_ms();
	pthread_barrier_destroy(&start_line);

	/* what was stored, as any later request will get it */
	opts.scope = SCOPE;
	if (idem_get(main_ic, key, &opts, &stored) != IDEM_REPLAY)
		printf("    idem_get: %s\n", idem_errmsg(main_ic));
	sbody = stored ? idem_record_body(stored, &sbody_len) : NULL;
	sheaders = stored ? idem_record_headers_json(stored) : NULL;

	for (int i = 0; i < n_requests; i++)
	{
		request    *r = &reqs[i];
		int			same;

		if (r->outcome == IDEM_FRESH)
		{
			fresh++;
			owner = i;
		}
		else if (r->outcome == IDEM_REPLAY)
			replays++;
		else
			errors++;
		same = stored && sbody &&
			(r->outcome == IDEM_FRESH || r->outcome == IDEM_REPLAY) &&
			r->status == idem_record_status(stored) &&
			r->body_len == sbody_len &&
			memcmp(r->body, sbody, sbody_len) == 0 &&
			(r->outcome == IDEM_FRESH ||
			 (sheaders && strcmp(r->headers, sheaders) == 0));
		identical += same;
	}

	/* the requests, four to a line: outcome, and when the waiters woke */
	printf("    requests (waiters: woke N ms after the owner sent COMMIT):\n");
	for (int i = 0; i < n_requests; i++)
	{
		request    *r = &reqs[i];
		char		cell[40];
		int			w_idx = n_requests > 99 ? 3 : 2;

		if (r->outcome == IDEM_FRESH)
			snprintf(cell, sizeof(cell), "#%0*d fresh  ran it", w_idx, r->idx);
		else if (r->outcome == IDEM_REPLAY && owner >= 0)
		{
			double		w = r->t_answer - reqs[owner].t_commit_sent;

			wakes[nwakes++] = w;
			snprintf(cell, sizeof(cell), "#%0*d replay %5.1f ms", w_idx, r->idx,
					 w);
		}
		else
			snprintf(cell, sizeof(cell), "#%0*d %-6s", w_idx, r->idx,
					 idem_outcome_name(r->outcome));
		if (i % 4 == 3 || i == n_requests - 1)
			printf("%s%s\n", i % 4 == 0 ? "      " : "", cell);
		else
			printf("%s%-22s", i % 4 == 0 ? "      " : "", cell);
	}
	for (int i = 0; i < n_requests; i++)
		if (reqs[i].err[0])
			printf("    #%0*d: %s\n", n_requests > 99 ? 3 : 2, reqs[i].idx,
				   reqs[i].err);

	if (owner >= 0)
	{
		request    *o = &reqs[owner];

		printf("    owner #%0*d: answered at %.0f ms (handler %d ms + "
			   "reserve, insert, commit); COMMIT took %.1f ms\n",
			   n_requests > 99 ? 3 : 2, o->idx, o->t_answer - t_start, handler_ms,
			   o->t_commit_done - o->t_commit_sent);
	}
	if (nwakes > 0)
	{
		qsort(wakes, (size_t) nwakes, sizeof(double), cmp_double);
		printf("    waiters: %d woke %.1f ms (median) / %.1f ms (max) after "
			   "the COMMIT; all %d answered in %.0f ms\n",
			   nwakes, wakes[nwakes / 2], wakes[nwakes - 1], n_requests,
			   t_done - t_start);
	}
	if (sbody)
		printf("    response: %d %.*s\n", idem_record_status(stored),
			   (int) sbody_len, (const char *) sbody);

	check(fresh == 1 && errors == 0,
		  "handler ran once: %d fresh, %d replays, %d errors", fresh, replays,
		  errors);
	check(identical == n_requests,
		  "identical responses (status, headers, %zu body bytes): %d of %d",
		  sbody_len, identical, n_requests);
	{
		long		rows = charges_for(main_pg, key);

		check(rows == 1, "charge rows for the key in the database: %ld", rows);
	}
	printf("\n");

	idem_record_free(stored);
	for (int i = 0; i < n_requests; i++)
	{
		idem_free(reqs[i].ic);
		PQfinish(reqs[i].pg);
	}
	free(wakes);
	free(threads);
	free(reqs);
}

/* ---- 2. a handler killed mid-flight ------------------------------------ */

/*
 * The child: reserves the key, starts its transaction and writes its
 * charge row, tells the parent (its backend's PID) and waits for the card
 * network, which never answers: the parent kills it here.
 */
static void
doomed_handler(int fd, const char *key, const char *hash)
{
	PGconn	   *pg = PQconnectdb(conninfo);
	idem_conn  *ic;
	idem_opts	opts = {0};
	idem_record *rec = NULL;
	char		err[256];
	char		msg[64];
	PGresult   *res;
	const char *p[1] = {key};
	pid_t		parent = getppid();
	int			len;

	if (PQstatus(pg) != CONNECTION_OK)
		_exit(3);
	ic = idem_wrap(pg);
	opts.scope = SCOPE;
	opts.request_hash = hash;
	opts.wait = "30s";
	if (idem_reserve(ic, key, &opts, &rec) != IDEM_FRESH)
		_exit(4);
	if ((res = sql(pg, err, sizeof(err), "BEGIN", 0, NULL)) == NULL)
		_exit(5);
	PQclear(res);
	res = sql(pg, err, sizeof(err),
			  "INSERT INTO charges (idem_key, amount, attempt) "
			  "VALUES ($1, 1500, 1)", 1, p);
	if (res == NULL)
		_exit(6);
	PQclear(res);
	len = snprintf(msg, sizeof(msg), "%d %d\n", idem_record_attempt(rec),
				   PQbackendPID(pg));
	if (write(fd, msg, (size_t) len) != len)
		_exit(7);
	/* waiting for the card network; never more than 30 s, nor orphaned */
	for (int i = 0; i < 300 && getppid() == parent; i++)
		sleep_ms(100);
	_exit(8);
}

static void
scenario_killed(PGconn *main_pg, idem_conn *main_ic, const char *key,
				const char *order)
{
	char		body[BODY_MAX];
	char		hash[IDEM_HASH_SIZE];
	char		msg[64] = "";
	int			fds[2];
	pid_t		pid;
	int			wstatus;
	int			child_attempt = 0,
				child_backend = 0;
	idem_opts	opts = {0};
	idem_record *rec = NULL;
	idem_outcome oc;
	double		t_kill,
				t_took,
				t_retry_done;
	int			attempt = 0;
	char		resp[BODY_MAX];
	char		err[256] = "";
	long		rows;
	int			committed_ok = 0;
	struct pollfd pfd;
	ssize_t		n;

	request_of(body, sizeof(body), order, 1500, hash);
	opts.scope = SCOPE;
	opts.request_hash = hash;
	opts.wait = "30s";

	printf("2. A handler killed mid-flight, then a retry\n");
	printf("    key %s\n", key);

	if (pipe(fds) < 0)
		die("pipe: %s", strerror(errno));
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0)
	{
		close(fds[0]);
		doomed_handler(fds[1], key, hash);
	}
	close(fds[1]);
	pfd.fd = fds[0];
	pfd.events = POLLIN;
	if (poll(&pfd, 1, 15000) == 1 &&
		(n = read(fds[0], msg, sizeof(msg) - 1)) > 0)
	{
		msg[n] = '\0';
		sscanf(msg, "%d %d", &child_attempt, &child_backend);
	}
	close(fds[0]);

	/* the key as anyone sees it now: in flight, attempt 1 */
	oc = idem_get(main_ic, key, &opts, &rec);
	printf("    child %d reserved it (attempt %d), wrote its charge row "
		   "(not committed), now waits on the card network\n",
		   (int) pid, child_attempt);
	printf("    key now: %s, attempt %d, owned by backend %d (the child's "
		   "session)\n",
		   oc == IDEM_IN_FLIGHT ? "in flight" : idem_outcome_name(oc),
		   rec ? idem_record_attempt(rec) : 0, child_backend);
	check(child_attempt == 1 && oc == IDEM_IN_FLIGHT,
		  "the child owns the key, attempt 1, in flight");
	idem_record_free(rec);
	rec = NULL;

	kill(pid, SIGKILL);
	t_kill = now_ms();
	waitpid(pid, &wstatus, 0);
	printf("    kill -9 %d: %s\n", (int) pid,
		   WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL ?
		   "killed before its commit" : "the child had already ended");

	/* the retry: same key, same body; takes the key over at once */
	oc = idem_reserve(main_ic, key, &opts, &rec);
	t_took = now_ms() - t_kill;
	if (oc == IDEM_FRESH)
	{
		attempt = idem_record_attempt(rec);
		printf("    retry: reserve -> fresh, attempt %d, %.1f ms after the "
			   "kill (no timer to run out)\n", attempt, t_took);
		sleep_ms(handler_ms);
		committed_ok = record_charge(main_pg, main_ic, key, &opts, 1500,
									 attempt, "the retry", resp, sizeof(resp),
									 NULL, err, sizeof(err)) == 0;
		if (!committed_ok)
		{
			printf("    retry: %s\n", err);
			idem_release(main_ic, key, &opts);
		}
	}
	else
		printf("    retry: reserve -> %s: %s\n", idem_outcome_name(oc),
			   idem_errmsg(main_ic));
	t_retry_done = now_ms() - t_kill;
	idem_record_free(rec);
	rec = NULL;
	check(oc == IDEM_FRESH && attempt == 2,
		  "the retry took over: attempt %d", attempt);

	oc = idem_get(main_ic, key, &opts, &rec);
	printf("    final record: %s, attempt %d, status %d, %.0f ms after the "
		   "kill\n",
		   oc == IDEM_REPLAY ? "committed" : idem_outcome_name(oc),
		   rec ? idem_record_attempt(rec) : 0,
		   rec ? idem_record_status(rec) : 0, t_retry_done);
	check(committed_ok && oc == IDEM_REPLAY && rec &&
		  idem_record_attempt(rec) == 2 && idem_record_status(rec) == 201,
		  "final record committed by attempt 2");
	idem_record_free(rec);
	rec = NULL;

	{
		const char *p[1] = {key};

		rows = charges_for(main_pg, key);
		attempt = (int) sql_long(main_pg,
								 "SELECT coalesce(max(attempt), 0) FROM charges "
								 "WHERE idem_key = $1", 1, p);
	}
	check(rows == 1 && attempt == 2,
		  "charge rows for the key: %ld (attempt %d; the killed one rolled "
		  "back)", rows, attempt);

	/* one more retry of the same request: a replay of attempt 2 */
	oc = idem_reserve(main_ic, key, &opts, &rec);
	check(oc == IDEM_REPLAY && rec && idem_record_attempt(rec) == 2,
		  "a later retry replays attempt 2's response");
	idem_record_free(rec);
	printf("\n");
}

/* ---- 3. same key, another body ---------------------------------------- */

static void
scenario_mismatch(PGconn *main_pg, idem_conn *main_ic, const char *key,
				  const char *order)
{
	char		body[BODY_MAX],
				body2[BODY_MAX];
	char		hash[IDEM_HASH_SIZE],
				hash2[IDEM_HASH_SIZE];
	char		hs[16],
				hs2[16];
	idem_opts	opts = {0};
	idem_record *rec = NULL;
	idem_outcome oc;
	long		rows;

	request_of(body, sizeof(body), order, 4200, hash);
	request_of(body2, sizeof(body2), order, 9900, hash2);
	short_hash(hs, hash);
	short_hash(hs2, hash2);
	opts.scope = SCOPE;
	opts.request_hash = hash2;
	opts.wait = "30s";

	printf("3. The key of scenario 1 with another body (amount 9900, not "
		   "4200)\n");
	printf("    request hash %s, stored %s\n", hs2, hs);
	oc = idem_reserve(main_ic, key, &opts, &rec);
	printf("    reserve -> %s, SQLSTATE %s, HTTP %d: %s\n",
		   idem_outcome_name(oc), idem_sqlstate(main_ic),
		   idem_http_error_status(oc, idem_errcode(main_ic)),
		   idem_errmsg(main_ic));
	idem_record_free(rec);
	rows = charges_for(main_pg, key);
	check(oc == IDEM_MISMATCH && strcmp(idem_sqlstate(main_ic), "IK422") == 0,
		  "mismatch (IK422 -> 422), the handler did not run");
	check(rows == 1, "charge rows for the key still: %ld", rows);
	printf("\n");
}

/* ---- main -------------------------------------------------------------- */

static void
usage(FILE *f)
{
	fprintf(f,
			"usage: demo [-n REQUESTS] [-s HANDLER_MS] [CONNINFO]\n"
			"  -n  concurrent requests in scenario 1 (default 20, at most %d)\n"
			"  -s  how long the handler's card network takes, in ms "
			"(default 300)\n"
			"  CONNINFO  libpq connection string; default: libpq's "
			"environment (PGHOST ...)\n"
			"The database needs CREATE EXTENSION idempotency; the demo "
			"creates a table charges.\n", MAX_REQUESTS);
}

int
main(int argc, char **argv)
{
	int			c;
	PGconn	   *pg;
	idem_conn  *ic;
	idem_opts	opts = {0};
	idem_record *rec = NULL;
	char		run[32],
				key1[64],
				key2[64],
				order1[48],
				order2[48];
	double		t0;

	while ((c = getopt(argc, argv, "n:s:h")) != -1)
	{
		switch (c)
		{
			case 'n':
				n_requests = atoi(optarg);
				break;
			case 's':
				handler_ms = atoi(optarg);
				break;
			case 'h':
				usage(stdout);
				return 0;
			default:
				usage(stderr);
				return 2;
		}
	}
	if (optind < argc)
		conninfo = argv[optind++];
	if (optind < argc || n_requests < 2 || n_requests > MAX_REQUESTS ||
		handler_ms < 0 || handler_ms > 10000)
	{
		usage(stderr);
		return 2;
	}

	/* the report comes line by line, also through a pipe */
	setvbuf(stdout, NULL, _IOLBF, 0);

	t0 = now_ms();
	pg = connect_db();
	ic = idem_wrap(pg);
	if (ic == NULL)
		die("out of memory");

	/* the extension must be there: a look at some key tells */
	opts.scope = SCOPE;
	if (idem_get(ic, "demo-probe", &opts, &rec) == IDEM_ERROR)
	{
		if (idem_errcode(ic) == IDEM_ERR_NO_EXTENSION)
			die("the idempotency extension is not installed in database %s "
				"(%s): run CREATE EXTENSION idempotency there", PQdb(pg),
				idem_errmsg(ic));
		die("%s", idem_errmsg(ic));
	}
	idem_record_free(rec);

	/* the application's own table, beside the keys */
	PQclear(PQexec(pg, "SET client_min_messages = warning"));
	sql_long(pg,
			 "CREATE TABLE IF NOT EXISTS charges ("
			 " id bigserial PRIMARY KEY,"
			 " idem_key text NOT NULL,"
			 " amount integer NOT NULL,"
			 " attempt integer NOT NULL,"
			 " created_at timestamptz NOT NULL DEFAULT now())", 0, NULL);

	/* keys of this run, so that the demo can run again in the same database */
	snprintf(run, sizeof(run), "%lx%04x", (unsigned long) time(NULL),
			 (unsigned) getpid() & 0xffff);
	snprintf(order1, sizeof(order1), "order-%s-1", run);
	snprintf(order2, sizeof(order2), "order-%s-2", run);
	snprintf(key1, sizeof(key1), "charge-%s-1", run);
	snprintf(key2, sizeof(key2), "charge-%s-2", run);

	printf("idempotency demo: libidem %d.%d.%d, PostgreSQL %d.%d, "
		   "database %s, scope '%s'\n\n",
		   idem_version() / 10000, idem_version() / 100 % 100,
		   idem_version() % 100, PQserverVersion(pg) / 10000,
		   PQserverVersion(pg) % 10000, PQdb(pg), SCOPE);

	scenario_concurrent(pg, ic, key1, order1);
	scenario_killed(pg, ic, key2, order2);
	scenario_mismatch(pg, ic, key1, order1);

	if (checks_failed == 0)
		printf("demo: all %d checks passed in %.1f s\n", checks_passed,
			   (now_ms() - t0) / 1000.0);
	else
		printf("demo: %d of %d checks FAILED\n", checks_failed,
			   checks_passed + checks_failed);

	idem_free(ic);
	PQfinish(pg);
	return checks_failed == 0 ? 0 : 1;
}
