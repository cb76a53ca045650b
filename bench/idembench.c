/*-------------------------------------------------------------------------
 *
 * idembench.c
 *	  The benchmark's C load generator, for what pgbench cannot express.
 *
 *	idembench hotkey --impl I [--waiters 32] [--rounds 25] --out FILE
 *		Workload 3.  Per round, one owner reserves a new key; W waiters, each
 *		on its own connection, reserve the same key and block; once all W
 *		are seen waiting in pg_locks, the owner commits.  For each waiter
 *		FILE gets one line: the time from the owner's commit returning to
 *		the waiter's reserve returning, and from the commit being sent, in
 *		microseconds (the first can be negative: a waiter may get its answer
 *		before the owner gets its own).
 *
 *	idembench ops --impl I --op fresh|replay --nkeys N [--clients 8]
 *			[--seconds 5] [--out FILE] [--redis-port P]
 *		Workloads 4 (and 1, 2 for Redis).  C clients, one thread and one
 *		connection each, for S seconds: "fresh" = reserve + commit of a new
 *		key between the N stored ones, "replay" = reserve of a stored key.
 *		FILE gets each operation's latency in microseconds; stdout one line
 *		"ops=... seconds=... tps=... errors=...".
 *
 *	idembench redis-load --redis-port P --nkeys N
 *		Stores N committed keys in Redis.
 *
 * Implementations (I): ext (the extension, through libidem), plpgsql (the
 * hand-written baseline, bench/plpgsql_baseline.sql), raw (plain SQL on a
 * table of the same shape, no locking), redis (SET NX / SET XX / GET).
 * Key n is "k" followed by n in 15 digits; stored keys are multiples of
 * 100000 (bench_load in bench/setup.sql).  PostgreSQL connections use
 * libpq's environment (PGHOST, PGPORT, ...).
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "idem.h"

#define HASH "6d1f1b6bbf2f5a3c4a7e0a5f2b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708"
#define BODY "{\"id\":\"ch_000000000001\",\"amount\":100,\"cur\":\"eur\"}"
#define HEADERS "{\"content-type\": [\"application/json\"]}"
#define KEY_STEP 100000ULL

typedef enum
{
	IMPL_EXT,
	IMPL_PLPGSQL,
	IMPL_RAW,
	IMPL_REDIS
} impl_t;

static impl_t impl;
static const char *impl_name;
static int	redis_port = 0;

static void
die(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "idembench: ");
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

static uint64_t
rnd(uint64_t *s)
{
	/* xorshift64* */
	uint64_t	x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void
key_of(char *buf, uint64_t n)
{
	snprintf(buf, 32, "k%015" PRIu64, n);
}

/* ---- a minimal Redis client (RESP over TCP) ---------------------------- */

typedef struct redis
{
	int			fd;
	char		buf[65536];
	size_t		len;
	size_t		pos;
} redis;

static redis *
redis_connect(int port)
{
	redis	   *r = calloc(1, sizeof(redis));
	struct sockaddr_in sa;
	int			one = 1;

	r->fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t) port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(r->fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
		die("cannot connect to redis on port %d: %s", port, strerror(errno));
	setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return r;
}

static void
redis_append(char **out, size_t *len, size_t *cap, int argc, const char **argv)
{
	size_t		need = 32;

	for (int i = 0; i < argc; i++)
		need += strlen(argv[i]) + 32;
	if (*len + need > *cap)
	{
		*cap = (*len + need) * 2;
		*out = realloc(*out, *cap);
	}
	*len += sprintf(*out + *len, "*%d\r\n", argc);
	for (int i = 0; i < argc; i++)
		*len += sprintf(*out + *len, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
}

static void
redis_send(redis *r, const char *data, size_t len)
{
	while (len > 0)
	{
		ssize_t		n = write(r->fd, data, len);

		if (n < 0)
		{
			if (errno == EINTR)
				continue;
			die("redis write: %s", strerror(errno));
		}
		data += n;
		len -= (size_t) n;
	}
}

static int
redis_getc(redis *r)
{
	if (r->pos == r->len)
	{
		ssize_t		n;

		do
			n = read(r->fd, r->buf, sizeof(r->buf));
		while (n < 0 && errno == EINTR);
		if (n <= 0)
			die("redis read: %s", n == 0 ? "connection closed" : strerror(errno));
		r->len = (size_t) n;
		r->pos = 0;
	}
	return (unsigned char) r->buf[r->pos++];
}

/* reads one line (without CRLF) into line */
static void
redis_line(redis *r, char *line, size_t size)
{
	size_t		n = 0;
	int			c;

	while ((c = redis_getc(r)) != '\n')
		if (c != '\r' && n + 1 < size)
			line[n++] = (char) c;
	line[n] = '\0';
}

/*
 * Reads one reply.  Returns 1 for a value (+OK, :n, a bulk string), 0 for
 * a nil, -1 for an error.
 */
static int
redis_reply(redis *r)
{
	char		line[256];
	long		len;

	redis_line(r, line, sizeof(line));
	switch (line[0])
	{
		case '+':
		case ':':
			return 1;
		case '-':
			fprintf(stderr, "idembench: redis: %s\n", line);
			return -1;
		case '$':
			len = strtol(line + 1, NULL, 10);
			if (len < 0)
				return 0;
			for (long i = 0; i < len + 2; i++)
				(void) redis_getc(r);
			return 1;
		default:
			die("redis: unexpected reply \"%s\"", line);
	}
	return -1;
}

static int
redis_cmd(redis *r, int argc, const char **argv)
{
	char	   *out = NULL;
	size_t		len = 0,
				cap = 0;
	int			rc;

	redis_append(&out, &len, &cap, argc, argv);
	redis_send(r, out, len);
	free(out);
	rc = redis_reply(r);
	return rc;
}

/* ---- PostgreSQL clients ------------------------------------------------ */

/* a connection of whichever kind the implementation needs */
typedef struct client
{
	idem_conn  *idem;			/* ext */
	PGconn	   *pg;				/* plpgsql, raw (and ext's underlying one) */
	redis	   *rds;			/* redis */
} client;

static PGconn *
pg_connect(void)
{
	PGconn	   *pg = PQconnectdb("");

	if (PQstatus(pg) != CONNECTION_OK)
		die("cannot connect: %s", PQerrorMessage(pg));
	return pg;
}

static void
pg_prepare(PGconn *pg, const char *name, const char *sql)
{
	PGresult   *res = PQprepare(pg, name, sql, 0, NULL);

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die("prepare %s: %s", name, PQerrorMessage(pg));
	PQclear(res);
}

static void
pg_exec_ok(PGconn *pg, const char *sql)
{
	PGresult   *res = PQexec(pg, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK &&
		PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s: %s", sql, PQerrorMessage(pg));
	PQclear(res);
}

#define RES_COLS "fresh, state, status, headers, body, attempt, created_at, expires_at"

static client *
client_new(void)
{
	client	   *c = calloc(1, sizeof(client));

	switch (impl)
	{
		case IMPL_EXT:
			c->idem = idem_connect(NULL);
			if (c->idem == NULL || !idem_connected(c->idem))
				die("cannot connect: %s", c->idem ? idem_errmsg(c->idem) : "out of memory");
			c->pg = idem_pgconn(c->idem);
			break;
		case IMPL_PLPGSQL:
			c->pg = pg_connect();
			/* the same statements, parameters and binary results as libidem */
			pg_prepare(c->pg, "reserve",
					   "SELECT " RES_COLS " FROM bl_reserve($1::text, $2::text, "
					   "$3::interval, $4::interval, $5::text)");
			pg_prepare(c->pg, "commit",
					   "SELECT bl_commit($1::text, $2::text, $3::integer, $4::bytea, "
					   "$5::jsonb, $6::text)");
			break;
		case IMPL_RAW:
			c->pg = pg_connect();
			pg_prepare(c->pg, "insert",
					   "INSERT INTO raw_keys (scope, key, state, request_hash, attempt, "
					   "ttl, created_at, expires_at, owner_pid, owner_started) "
					   "VALUES ($2::text, $1::text, 'in_flight', $3::text, 1, "
					   "interval '24 hours', now(), now() + interval '24 hours', "
					   "pg_backend_pid(), now()) ON CONFLICT DO NOTHING");
			pg_prepare(c->pg, "update",
					   "UPDATE raw_keys SET state = 'committed', status = $2::integer, "
					   "headers = $4::jsonb, body = $3::bytea, committed_at = now(), "
					   "expires_at = now() + ttl, owner_pid = NULL, owner_started = NULL "
					   "WHERE scope = $5::text AND key = $1::text");
			pg_prepare(c->pg, "select",
					   "SELECT state = 'committed' AS replay, state, status, headers, "
					   "body, attempt, created_at, expires_at FROM raw_keys "
					   "WHERE scope = $2::text AND key = $1::text");
			break;
		case IMPL_REDIS:
			c->rds = redis_connect(redis_port);
			break;
	}
	return c;
}

static void
client_free(client *c)
{
	if (c->idem)
		idem_free(c->idem);
	else if (c->pg)
		PQfinish(c->pg);
	if (c->rds)
	{
		close(c->rds->fd);
		free(c->rds);
	}
	free(c);
}

/* runs a prepared statement; returns its result or dies */
static PGresult *
pg_run(PGconn *pg, const char *stmt, int n, const char *const *values,
	   ExecStatusType want)
{
	PGresult   *res = PQexecPrepared(pg, stmt, n, values, NULL, NULL, 1);

	if (PQresultStatus(res) != want)
	{
		fprintf(stderr, "idembench: %s: %s", stmt, PQerrorMessage(pg));
		PQclear(res);
		return NULL;
	}
	return res;
}

typedef enum
{
	R_FRESH,
	R_REPLAY,
	R_ERROR
} result_t;

/* reserve key (wait up to wait, an interval, NULL = default) */
static result_t
do_reserve(client *c, const char *key, const char *wait)
{
	switch (impl)
	{
		case IMPL_EXT:
			{
				idem_opts	o = {.request_hash = HASH,.wait = wait};
				idem_record *rec = NULL;
				idem_outcome oc = idem_reserve(c->idem, key, &o, &rec);

				idem_record_free(rec);
				if (oc == IDEM_FRESH)
					return R_FRESH;
				if (oc == IDEM_REPLAY)
					return R_REPLAY;
				fprintf(stderr, "idembench: reserve %s: %s %s\n", key,
						idem_outcome_name(oc), idem_errmsg(c->idem));
				return R_ERROR;
			}
		case IMPL_PLPGSQL:
			{
				const char *v[5] = {key, HASH, NULL, wait, ""};
				PGresult   *res = pg_run(c->pg, "reserve", 5, v, PGRES_TUPLES_OK);
				result_t	r;

				if (res == NULL || PQntuples(res) != 1)
				{
					PQclear(res);
					return R_ERROR;
				}
				r = *PQgetvalue(res, 0, 0) ? R_FRESH : R_REPLAY;
				PQclear(res);
				return r;
			}
		case IMPL_RAW:
			{
				/*
				 * The floor: a fresh key is inserted (ON CONFLICT DO
				 * NOTHING), a replay is a primary-key select.
				 */
				const char *v[3] = {key, "", HASH};
				PGresult   *res;
				result_t	r;

				if (wait != NULL)
				{
					res = pg_run(c->pg, "select", 2, v, PGRES_TUPLES_OK);
					if (res == NULL)
						return R_ERROR;
					r = PQntuples(res) == 1 && *PQgetvalue(res, 0, 0) ? R_REPLAY : R_ERROR;
					PQclear(res);
					return r;
				}
				res = pg_run(c->pg, "insert", 3, v, PGRES_COMMAND_OK);
				if (res == NULL)
					return R_ERROR;
				r = strcmp(PQcmdTuples(res), "1") == 0 ? R_FRESH : R_REPLAY;
				PQclear(res);
				return r;
			}
		case IMPL_REDIS:
			{
				const char *get[2] = {"GET", key};
				const char *set[6] = {"SET", key, "in_flight", "NX", "EX", "86400"};
				int			rc;

				if (wait != NULL)	/* a replay is expected: GET */
				{
					rc = redis_cmd(c->rds, 2, get);
					return rc == 1 ? R_REPLAY : R_ERROR;
				}
				rc = redis_cmd(c->rds, 6, set);
				return rc == 1 ? R_FRESH : rc == 0 ? R_REPLAY : R_ERROR;
			}
	}
	return R_ERROR;
}

static int
do_commit(client *c, const char *key)
{
	switch (impl)
	{
		case IMPL_EXT:
			{
				idem_opts	o = {.request_hash = HASH};
				idem_outcome oc = idem_commit(c->idem, key, &o, 201, BODY,
											  strlen(BODY), HEADERS);

				if (oc != IDEM_FRESH)
				{
					fprintf(stderr, "idembench: commit %s: %s %s\n", key,
							idem_outcome_name(oc), idem_errmsg(c->idem));
					return -1;
				}
				return 0;
			}
		case IMPL_PLPGSQL:
		case IMPL_RAW:
			{
				PGresult   *res;
				char		hex[2 * sizeof(BODY) + 3];

				strcpy(hex, "\\x");
				for (size_t i = 0; i < strlen(BODY); i++)
					sprintf(hex + 2 + 2 * i, "%02x", (unsigned char) BODY[i]);
				if (impl == IMPL_PLPGSQL)
				{
					const char *v[6] = {key, HASH, "201", hex, HEADERS, ""};

					res = pg_run(c->pg, "commit", 6, v, PGRES_TUPLES_OK);
				}
				else
				{
					const char *v[5] = {key, "201", hex, HEADERS, ""};

					res = pg_run(c->pg, "update", 5, v, PGRES_COMMAND_OK);
				}
				if (res == NULL)
					return -1;
				PQclear(res);
				return 0;
			}
		case IMPL_REDIS:
			{
				const char *set[6] = {"SET", key, BODY, "XX", "EX", "86400"};

				return redis_cmd(c->rds, 6, set) == 1 ? 0 : -1;
			}
	}
	return -1;
}

/* ---- ops: throughput and per-operation latency ------------------------- */

typedef struct worker
{
	pthread_t	th;
	int			id;
	int			fresh;
	uint64_t	nkeys;
	double		seconds;
	double	   *lat;
	size_t		nlat;
	size_t		cap;
	uint64_t	errors;
	double		start;
	double		end;
	pthread_barrier_t *barrier;
} worker;

static void *
ops_thread(void *arg)
{
	worker	   *w = arg;
	client	   *c = client_new();
	uint64_t	seed = 0x9E3779B97F4A7C15ULL * (uint64_t) (w->id + 1) ^ (uint64_t) getpid() ^ (uint64_t) now_us();
	char		key[32];
	double		stop;

	for (int i = 0; i < 10; i++)
		(void) rnd(&seed);
	pthread_barrier_wait(w->barrier);
	w->start = now_us();
	stop = w->start + w->seconds * 1e6;
	for (;;)
	{
		double		t0 = now_us(),
					t1;
		int			ok;

		if (t0 >= stop)
			break;
		if (w->fresh)
		{
			/* a new key between the stored ones (k * 100000) */
			uint64_t	n = 1 + rnd(&seed) % (w->nkeys * KEY_STEP);

			if (n % KEY_STEP == 0)
				n++;
			key_of(key, n);
			ok = do_reserve(c, key, NULL) == R_FRESH && do_commit(c, key) == 0;
		}
		else
		{
			key_of(key, (1 + rnd(&seed) % w->nkeys) * KEY_STEP);
			ok = do_reserve(c, key, "0") == R_REPLAY;
		}
		t1 = now_us();
		if (!ok)
		{
			/* a random fresh key may collide with an earlier one: rare */
			w->errors++;
			if (w->errors > 1000)
				die("too many errors");
			continue;
		}
		if (w->nlat == w->cap)
		{
			w->cap = w->cap ? w->cap * 2 : 65536;
			w->lat = realloc(w->lat, w->cap * sizeof(double));
		}
		w->lat[w->nlat++] = t1 - t0;
	}
	w->end = now_us();
	client_free(c);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return x < y ? -1 : x > y;
}

static void
run_ops(int fresh, uint64_t nkeys, int clients, double seconds, const char *out)
{
	worker	   *w = calloc((size_t) clients, sizeof(worker));
	pthread_barrier_t barrier;
	uint64_t	ops = 0,
				errors = 0;
	double		start = 0,
				end = 0;
	FILE	   *f = NULL;
	double	   *all;
	size_t		n = 0;

	pthread_barrier_init(&barrier, NULL, (unsigned) clients);
	for (int i = 0; i < clients; i++)
	{
		w[i].id = i;
		w[i].fresh = fresh;
		w[i].nkeys = nkeys;
		w[i].seconds = seconds;
		w[i].barrier = &barrier;
		pthread_create(&w[i].th, NULL, ops_thread, &w[i]);
	}
	for (int i = 0; i < clients; i++)
	{
		pthread_join(w[i].th, NULL);
		ops += w[i].nlat;
		errors += w[i].errors;
		if (i == 0 || w[i].start < start)
			start = w[i].start;
		if (w[i].end > end)
			end = w[i].end;
	}
	all = malloc((ops + 1) * sizeof(double));
	if (out)
	{
		f = fopen(out, "w");
		if (f == NULL)
			die("cannot write %s: %s", out, strerror(errno));
	}
	for (int i = 0; i < clients; i++)
		for (size_t j = 0; j < w[i].nlat; j++)
		{
			all[n++] = w[i].lat[j];
			if (f)
				fprintf(f, "%.1f\n", w[i].lat[j]);
		}
	if (f)
		fclose(f);
	qsort(all, n, sizeof(double), cmp_double);
	printf("impl=%s op=%s nkeys=%" PRIu64 " clients=%d ops=%" PRIu64
		   " seconds=%.3f tps=%.1f p50_us=%.1f p99_us=%.1f errors=%" PRIu64 "\n",
		   impl_name, fresh ? "fresh" : "replay", nkeys, clients, ops,
		   (end - start) / 1e6, ops / ((end - start) / 1e6),
		   n ? all[n / 2] : 0, n ? all[(size_t) (n * 0.99)] : 0, errors);
}

/* ---- hotkey: waiter wake latency --------------------------------------- */

typedef struct waiter
{
	pthread_t	th;
	int			id;
	client	   *c;
	pthread_barrier_t *start;
	pthread_barrier_t *done;
	const char *volatile key;
	volatile int quit;
	double		t_done;
	int			ok;
	int			raw_two_step;
} waiter;

static void *
waiter_thread(void *arg)
{
	waiter	   *w = arg;

	for (;;)
	{
		pthread_barrier_wait(w->start);
		if (w->quit)
			break;
		if (impl == IMPL_RAW)
		{
			/*
			 * The row lock design: the insert blocks on the owner's open
			 * transaction, finds the row once it commits, and a select reads
			 * the response.
			 */
			const char *v[3] = {w->key, "", HASH};
			PGresult   *res = pg_run(w->c->pg, "insert", 3, v, PGRES_COMMAND_OK);

			w->ok = res != NULL && strcmp(PQcmdTuples(res), "0") == 0;
			PQclear(res);
			if (w->ok)
			{
				res = pg_run(w->c->pg, "select", 2, v, PGRES_TUPLES_OK);
				w->ok = res != NULL && PQntuples(res) == 1 &&
					strcmp(PQgetvalue(res, 0, 1), "committed") == 0;
				PQclear(res);
			}
		}
		else
			w->ok = do_reserve(w->c, w->key, "30s") == R_REPLAY;
		w->t_done = now_us();
		pthread_barrier_wait(w->done);
	}
	return NULL;
}

static int
count_waiting(PGconn *mon)
{
	PGresult   *res = PQexec(mon,
							 "SELECT count(*) FROM pg_catalog.pg_locks "
							 "WHERE NOT granted AND pid <> pg_backend_pid()");
	int			n;

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("pg_locks: %s", PQerrorMessage(mon));
	n = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	return n;
}

static void
run_hotkey(int nwaiters, int rounds, const char *out)
{
	waiter	   *w = calloc((size_t) nwaiters, sizeof(waiter));
	pthread_barrier_t start,
				done;
	client	   *owner = client_new();
	PGconn	   *mon = pg_connect();
	FILE	   *f = fopen(out, "w");
	char		key[64];
	double	   *acks = malloc(sizeof(double) * (size_t) (nwaiters * rounds + 1));
	size_t		nacks = 0;
	int			bad = 0;
	struct timespec settle = {0, 5 * 1000 * 1000};

	if (f == NULL)
		die("cannot write %s: %s", out, strerror(errno));
	pthread_barrier_init(&start, NULL, (unsigned) nwaiters + 1);
	pthread_barrier_init(&done, NULL, (unsigned) nwaiters + 1);
	for (int i = 0; i < nwaiters; i++)
	{
		w[i].id = i;
		w[i].c = client_new();
		w[i].start = &start;
		w[i].done = &done;
		pthread_create(&w[i].th, NULL, waiter_thread, &w[i]);
	}

	for (int r = 0; r < rounds; r++)
	{
		double		t_send,
					t_ack,
					t_wait0;

		snprintf(key, sizeof(key), "hot-%d-%d", (int) getpid(), r);

		/* the owner reserves */
		if (impl == IMPL_RAW)
		{
			const char *v[3] = {key, "", HASH};
			PGresult   *res;

			pg_exec_ok(owner->pg, "BEGIN");
			res = pg_run(owner->pg, "insert", 3, v, PGRES_COMMAND_OK);
			if (res == NULL)
				die("owner insert failed");
			PQclear(res);
		}
		else if (do_reserve(owner, key, "0") != R_FRESH)
			die("the owner's reserve of %s was not fresh", key);

		/* the waiters reserve and block */
		for (int i = 0; i < nwaiters; i++)
			w[i].key = key;
		pthread_barrier_wait(&start);
		t_wait0 = now_us();
		while (count_waiting(mon) < nwaiters)
		{
			struct timespec poll = {0, 2 * 1000 * 1000};

			if (now_us() - t_wait0 > 20e6)
				die("the waiters did not all block within 20 s (%d of %d)",
					count_waiting(mon), nwaiters);
			nanosleep(&poll, NULL);
		}
		nanosleep(&settle, NULL);

		/* the owner commits */
		t_send = now_us();
		if (impl == IMPL_RAW)
		{
			char		sql[1024];

			snprintf(sql, sizeof(sql),
					 "UPDATE raw_keys SET state = 'committed', status = 201, "
					 "headers = '%s', body = convert_to('%s', 'UTF8'), "
					 "committed_at = now(), expires_at = now() + ttl, "
					 "owner_pid = NULL, owner_started = NULL "
					 "WHERE scope = '' AND key = '%s'; COMMIT", HEADERS, BODY, key);
			pg_exec_ok(owner->pg, sql);
		}
		else if (do_commit(owner, key) != 0)
			die("the owner's commit of %s failed", key);
		t_ack = now_us();

		pthread_barrier_wait(&done);
		for (int i = 0; i < nwaiters; i++)
		{
			if (!w[i].ok)
			{
				bad++;
				continue;
			}
			fprintf(f, "%.1f %.1f\n", w[i].t_done - t_ack, w[i].t_done - t_send);
			acks[nacks++] = w[i].t_done - t_ack;
		}
	}
	for (int i = 0; i < nwaiters; i++)
		w[i].quit = 1;
	pthread_barrier_wait(&start);
	for (int i = 0; i < nwaiters; i++)
	{
		pthread_join(w[i].th, NULL);
		client_free(w[i].c);
	}
	fclose(f);
	client_free(owner);
	PQfinish(mon);
	qsort(acks, nacks, sizeof(double), cmp_double);
	printf("impl=%s waiters=%d rounds=%d samples=%zu p50_us=%.1f p99_us=%.1f max_us=%.1f failed=%d\n",
		   impl_name, nwaiters, rounds, nacks,
		   nacks ? acks[nacks / 2] : 0, nacks ? acks[(size_t) (nacks * 0.99)] : 0,
		   nacks ? acks[nacks - 1] : 0, bad);
	if (bad)
		exit(1);
}

/* ---- redis-load -------------------------------------------------------- */

static void
redis_load(uint64_t nkeys)
{
	redis	   *r = redis_connect(redis_port);
	const uint64_t batch = 1000;

	for (uint64_t i = 1; i <= nkeys; i += batch)
	{
		char	   *out = NULL;
		size_t		len = 0,
					cap = 0;
		uint64_t	n = 0;

		for (uint64_t j = i; j < i + batch && j <= nkeys; j++, n++)
		{
			char		key[32];
			const char *argv[5] = {"SET", key, BODY, "EX", "86400"};

			key_of(key, j * KEY_STEP);
			redis_append(&out, &len, &cap, 5, argv);
		}
		redis_send(r, out, len);
		free(out);
		for (uint64_t j = 0; j < n; j++)
			if (redis_reply(r) != 1)
				die("redis-load failed");
	}
	close(r->fd);
	free(r);
}

/* ---- main -------------------------------------------------------------- */

static void
usage(void)
{
	fprintf(stderr,
			"usage: idembench hotkey --impl ext|plpgsql|raw [--waiters N] [--rounds N] --out FILE\n"
			"       idembench ops --impl ext|plpgsql|raw|redis --op fresh|replay --nkeys N\n"
			"                 [--clients N] [--seconds S] [--out FILE] [--redis-port P]\n"
			"       idembench redis-load --redis-port P --nkeys N\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *mode,
			   *op = "fresh",
			   *out = NULL;
	int			waiters = 32,
				rounds = 25,
				clients = 8;
	double		seconds = 5;
	uint64_t	nkeys = 10000;

	if (argc < 2)
		usage();
	mode = argv[1];
	impl_name = "ext";
	for (int i = 2; i < argc; i++)
	{
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (v == NULL)
			usage();
		i++;
		if (strcmp(a, "--impl") == 0)
			impl_name = v;
		else if (strcmp(a, "--op") == 0)
			op = v;
		else if (strcmp(a, "--out") == 0)
			out = v;
		else if (strcmp(a, "--waiters") == 0)
			waiters = atoi(v);
		else if (strcmp(a, "--rounds") == 0)
			rounds = atoi(v);
		else if (strcmp(a, "--clients") == 0)
			clients = atoi(v);
		else if (strcmp(a, "--seconds") == 0)
			seconds = atof(v);
		else if (strcmp(a, "--nkeys") == 0)
			nkeys = strtoull(v, NULL, 10);
		else if (strcmp(a, "--redis-port") == 0)
			redis_port = atoi(v);
		else
			usage();
	}
	if (strcmp(impl_name, "ext") == 0)
		impl = IMPL_EXT;
	else if (strcmp(impl_name, "plpgsql") == 0)
		impl = IMPL_PLPGSQL;
	else if (strcmp(impl_name, "raw") == 0)
		impl = IMPL_RAW;
	else if (strcmp(impl_name, "redis") == 0)
		impl = IMPL_REDIS;
	else
		usage();
	if (nkeys < 1 || clients < 1 || waiters < 1 || rounds < 1 || seconds <= 0)
		usage();
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (strcmp(mode, "hotkey") == 0)
	{
		if (out == NULL || impl == IMPL_REDIS)
			usage();
		run_hotkey(waiters, rounds, out);
	}
	else if (strcmp(mode, "ops") == 0)
	{
		if (strcmp(op, "fresh") != 0 && strcmp(op, "replay") != 0)
			usage();
		if (impl == IMPL_REDIS && redis_port == 0)
			usage();
		run_ops(strcmp(op, "fresh") == 0, nkeys, clients, seconds, out);
	}
	else if (strcmp(mode, "redis-load") == 0)
	{
		impl = IMPL_REDIS;
		if (redis_port == 0)
			usage();
		redis_load(nkeys);
	}
	else
		usage();
	return 0;
}
