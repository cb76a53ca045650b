/*-------------------------------------------------------------------------
 *
 * wakebench.c
 *	  Wake latency of the waiters of one in-flight key.
 *
 *	wakebench --owner lease|session [--waiters 32] [--rounds 50]
 *			[--lease 30s] [--out FILE]
 *
 * Per round, an owner reserves a new key (a lease owner: with a token and
 * a lease; a session owner: without), W waiters, each on its own
 * connection and thread, reserve the same key with a wait_timeout of 30 s
 * and block; once all W are seen inside their statement for 20 ms
 * (pg_stat_activity: a lease owner's waiters sleep in their statement and
 * hold no lock, a session owner's queue in the lock manager), the owner
 * commits.  A waiter's latency is the time its reserve returned minus the
 * time the owner's commit returned, both read from CLOCK_MONOTONIC in this
 * one process (negative: the waiter had its answer before the owner had
 * its own).  Every waiter must replay the commit (fresh = false).
 *
 * stdout: one line, "owner=... waiters=... rounds=... samples=...
 * p50_us=... p95_us=... p99_us=... max_us=... sent_p50_us=... sent_p99_us=...
 * sent_max_us=... failed=... wait_event=..." (p*: from the commit
 * returning; sent_*: from the commit being sent; wait_event: what the
 * waiters were seen waiting on in the first round).
 * FILE: one line per sample, the latency from the commit returning and
 * from the commit being sent, in microseconds.
 *
 * Connections use libpq's environment (PGHOST, PGPORT, ...).  Exits 1 when
 * it cannot run (a connection, a failed call, a waiter that got no replay),
 * never because of a figure.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define WAITER_APP "wakebench-waiter"
#define BLOCKED_MS "20"		/* in the statement this long (ms): blocked */

typedef struct waiter
{
	pthread_t	th;
	int			id;
	PGconn	   *conn;
	pthread_barrier_t *start;
	pthread_barrier_t *done;
	const char *volatile key;
	volatile int quit;
	double		t_done;
	int			ok;
	char		err[256];
} waiter;

static int	lease_owner;
static const char *lease = "30s";

static void
die(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "wakebench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static PGconn *
connect_as(const char *app)
{
	const char *keys[] = {"application_name", "fallback_application_name", NULL};
	const char *vals[] = {app, "wakebench", NULL};
	PGconn	   *c = PQconnectdbParams(keys, vals, 0);

	if (PQstatus(c) != CONNECTION_OK)
		die("cannot connect: %s", PQerrorMessage(c));
	return c;
}

/*
 * idem_reserve of key: for a lease owner with token and lease, else as a
 * session owner.  Returns the result (the caller clears it), or NULL with
 * the error in err.
 */
static PGresult *
reserve(PGconn *c, const char *key, const char *wait, const char *token,
		char *err, size_t errlen)
{
	PGresult   *res;

	if (lease_owner)
	{
		const char *v[4] = {key, wait, token, lease};

		res = PQexecParams(c,
						   "SELECT fresh, state FROM idem_reserve($1, NULL, NULL, "
						   "$2::interval, '', $3, $4::interval)",
						   4, NULL, v, NULL, NULL, 0);
	}
	else
	{
		const char *v[2] = {key, wait};

		res = PQexecParams(c,
						   "SELECT fresh, state FROM idem_reserve($1, NULL, NULL, "
						   "$2::interval)",
						   2, NULL, v, NULL, NULL, 0);
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
	{
		snprintf(err, errlen, "%s", PQerrorMessage(c));
		PQclear(res);
		return NULL;
	}
	return res;
}

static void *
waiter_thread(void *arg)
{
	waiter	   *w = arg;
	char		token[32];

	snprintf(token, sizeof(token), "waiter-%d", w->id);
	for (;;)
	{
		PGresult   *res;

		pthread_barrier_wait(w->start);
		if (w->quit)
			break;
		res = reserve(w->conn, w->key, "30s", token, w->err, sizeof(w->err));
		w->t_done = now_us();
		w->ok = res != NULL &&
			strcmp(PQgetvalue(res, 0, 0), "f") == 0 &&
			strcmp(PQgetvalue(res, 0, 1), "committed") == 0;
		if (res != NULL && !w->ok)
			snprintf(w->err, sizeof(w->err), "fresh=%s state=%s",
					 PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
		PQclear(res);
		pthread_barrier_wait(w->done);
	}
	return NULL;
}

/* How many waiters have been in their idem_reserve for BLOCKED_MS ms */
static int
count_blocked(PGconn *mon, char *wait_event, size_t len)
{
	PGresult   *res = PQexec(mon,
							 "SELECT count(*), coalesce(string_agg(DISTINCT "
							 "coalesce(wait_event_type || ':' || wait_event, 'none'), ' '), '') "
							 "FROM pg_catalog.pg_stat_activity "
							 "WHERE application_name = '" WAITER_APP "' "
							 "AND state = 'active' AND query LIKE '%idem_reserve%' "
							 "AND clock_timestamp() - query_start >= "
							 "interval '" BLOCKED_MS " ms'");
	int			n;

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("pg_stat_activity: %s", PQerrorMessage(mon));
	n = atoi(PQgetvalue(res, 0, 0));
	if (wait_event)
		snprintf(wait_event, len, "%s", PQgetvalue(res, 0, 1));
	PQclear(res);
	return n;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

/* nearest rank */
static double
pct(const double *v, size_t n, double p)
{
	size_t		i = (size_t) ceil(p * (double) n);

	if (n == 0)
		return 0;
	return v[i == 0 ? 0 : i - 1];
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: wakebench --owner lease|session [--waiters N] [--rounds N]\n"
			"                 [--lease INTERVAL] [--out FILE]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"owner", required_argument, NULL, 'o'},
		{"waiters", required_argument, NULL, 'w'},
		{"rounds", required_argument, NULL, 'r'},
		{"lease", required_argument, NULL, 'l'},
		{"out", required_argument, NULL, 'f'},
		{NULL, 0, NULL, 0}
	};
	const char *owner_kind = NULL,
			   *out = NULL;
	int			nwaiters = 32,
				rounds = 50,
				opt,
				failed = 0;
	waiter	   *w;
	pthread_barrier_t start,
				done;
	PGconn	   *owner,
			   *mon;
	FILE	   *f = NULL;
	double	   *lat,
			   *lat_send;
	size_t		n = 0;
	char		wait_event[256] = "";

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'o':
				owner_kind = optarg;
				break;
			case 'w':
				nwaiters = atoi(optarg);
				break;
			case 'r':
				rounds = atoi(optarg);
				break;
			case 'l':
				lease = optarg;
				break;
			case 'f':
				out = optarg;
				break;
			default:
				usage();
		}
	}
	if (optind != argc || owner_kind == NULL || nwaiters < 1 || rounds < 1)
		usage();
	if (strcmp(owner_kind, "lease") == 0)
		lease_owner = 1;
	else if (strcmp(owner_kind, "session") != 0)
		usage();
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (out != NULL && (f = fopen(out, "w")) == NULL)
		die("cannot write %s: %s", out, strerror(errno));
	lat = malloc(sizeof(double) * (size_t) nwaiters * (size_t) rounds);
	lat_send = malloc(sizeof(double) * (size_t) nwaiters * (size_t) rounds);
	w = calloc((size_t) nwaiters, sizeof(waiter));
	if (lat == NULL || lat_send == NULL || w == NULL)
		die("out of memory");
	owner = connect_as("wakebench-owner");
	mon = connect_as("wakebench-monitor");
	pthread_barrier_init(&start, NULL, (unsigned) nwaiters + 1);
	pthread_barrier_init(&done, NULL, (unsigned) nwaiters + 1);
	for (int i = 0; i < nwaiters; i++)
	{
		w[i].id = i;
		w[i].conn = connect_as(WAITER_APP);
		w[i].start = &start;
		w[i].done = &done;
		pthread_create(&w[i].th, NULL, waiter_thread, &w[i]);
	}

	for (int r = 0; r < rounds; r++)
	{
		char		key[64],
					err[256];
		double		t0,
					t_send,
					t_ack;
		PGresult   *res;
		struct timespec settle = {0, 5 * 1000 * 1000};

		snprintf(key, sizeof(key), "wake-%s-%d-%d", owner_kind, (int) getpid(), r);
		res = reserve(owner, key, "0", "owner", err, sizeof(err));
		if (res == NULL || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
			die("the owner's reserve of %s was not fresh: %s", key,
				res ? "a replay" : err);
		PQclear(res);

		for (int i = 0; i < nwaiters; i++)
			w[i].key = key;
		pthread_barrier_wait(&start);
		t0 = now_us();
		while (count_blocked(mon, r == 0 ? wait_event : NULL,
							 sizeof(wait_event)) < nwaiters)
		{
			struct timespec poll = {0, 2 * 1000 * 1000};

			if (now_us() - t0 > 20e6)
				die("the waiters did not all block within 20 s (%d of %d)",
					count_blocked(mon, NULL, 0), nwaiters);
			nanosleep(&poll, NULL);
		}
		nanosleep(&settle, NULL);

		t_send = now_us();
		if (lease_owner)
		{
			const char *v[1] = {key};

			res = PQexecParams(owner,
							   "SELECT idem_commit($1, NULL, 201, '\\x7b7d'::bytea, "
							   "'{}', '', 'owner')", 1, NULL, v, NULL, NULL, 0);
		}
		else
		{
			const char *v[1] = {key};

			res = PQexecParams(owner,
							   "SELECT idem_commit($1, NULL, 201, '\\x7b7d'::bytea)",
							   1, NULL, v, NULL, NULL, 0);
		}
		t_ack = now_us();
		if (PQresultStatus(res) != PGRES_TUPLES_OK ||
			strcmp(PQgetvalue(res, 0, 0), "t") != 0)
			die("the owner's commit of %s failed: %s", key, PQerrorMessage(owner));
		PQclear(res);

		pthread_barrier_wait(&done);
		for (int i = 0; i < nwaiters; i++)
		{
			if (!w[i].ok)
			{
				fprintf(stderr, "wakebench: round %d, waiter %d: %s\n", r, i, w[i].err);
				failed++;
				continue;
			}
			lat_send[n] = w[i].t_done - t_send;
			lat[n++] = w[i].t_done - t_ack;
			if (f)
				fprintf(f, "%.1f %.1f\n", w[i].t_done - t_ack, w[i].t_done - t_send);
		}
	}

	for (int i = 0; i < nwaiters; i++)
		w[i].quit = 1;
	pthread_barrier_wait(&start);
	for (int i = 0; i < nwaiters; i++)
	{
		pthread_join(w[i].th, NULL);
		PQfinish(w[i].conn);
	}
	PQfinish(owner);
	PQfinish(mon);
	if (f)
		fclose(f);

	qsort(lat, n, sizeof(double), cmp_double);
	qsort(lat_send, n, sizeof(double), cmp_double);
	printf("owner=%s waiters=%d rounds=%d samples=%zu p50_us=%.1f p95_us=%.1f "
		   "p99_us=%.1f max_us=%.1f sent_p50_us=%.1f sent_p99_us=%.1f "
		   "sent_max_us=%.1f failed=%d wait_event=%s\n",
		   owner_kind, nwaiters, rounds, n, pct(lat, n, 0.50), pct(lat, n, 0.95),
		   pct(lat, n, 0.99), n ? lat[n - 1] : 0, pct(lat_send, n, 0.50),
		   pct(lat_send, n, 0.99), n ? lat_send[n - 1] : 0, failed,
		   wait_event[0] ? wait_event : "-");
	free(lat);
	free(lat_send);
	free(w);
	return failed ? 1 : 0;
}
