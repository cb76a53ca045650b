/*
 * service.c: a JSON HTTP service protected by libidem, Stripe style.
 *
 *   POST /charges              creates a charge: a row in http_example.charges,
 *                              written in the same transaction as the
 *                              reservation of the Idempotency-Key and the
 *                              stored response, so it happens exactly once
 *   POST /charges-unprotected  the same work without the middleware (an
 *                              excluded route), for the load comparison
 *   POST /emails               sends an email through an external mail API
 *                              (mailsink.c), as a durable step whose derived
 *                              key is sent downstream as its Idempotency-Key
 *   GET  /charges/{id}         reads a charge: GET is not guarded
 *   GET  /healthz              200 when the service runs
 *
 * Semantics (Stripe, IETF draft-ietf-httpapi-idempotency-key-header):
 *   - POST, PUT, PATCH and DELETE are guarded; POST /charges-unprotected is
 *     excluded.  A guarded request without Idempotency-Key gets 400 (unless
 *     --optional-key: it then runs unprotected).
 *   - Keys are scoped by tenant: the API key of "Authorization: Bearer
 *     sk_..." mapped to its tenant (--api-key TOKEN=TENANT), else the
 *     X-Tenant header, else the tenant "default".
 *   - A replay returns the stored status, headers and body byte for byte,
 *     plus "Idempotent-Replayed: true".  Set-Cookie and Authorization are
 *     sent only to the client whose request ran the handler: never stored,
 *     never replayed.
 *   - A concurrent duplicate waits for the request in flight and gets its
 *     response (up to --wait); with waiting disabled (--no-wait, or the
 *     request header "X-Idempotency-Wait: 0") it gets 409 at once.
 *   - The same key with another body (or path) gets 422.
 *   - 5xx and 429 responses are not stored: a retry runs the handler again.
 *   - Requests that fail validation (bad JSON, bad amount) get 400 before
 *     the key is looked at, so nothing is stored for them (as Stripe).
 *
 * Threads: libmicrohttpd's internal polling thread pool (--io-threads,
 * default 2) only reads requests and writes responses.  Each complete
 * request is suspended (MHD_suspend_connection) and queued to a pool of
 * worker threads (--threads, default 16).  Each worker opens its own
 * PostgreSQL connection (libpq's environment, or --dsn) and wraps it in its
 * own libidem handle (idem_wrap): one handle per thread, as libidem
 * requires, and the application's SQL and the library's calls share that
 * session and its transaction.  The worker builds the response and resumes
 * the connection.  So a duplicate that waits in the database for the
 * request in flight holds one worker, never the other connections.
 *
 * Errors of the idempotency layer (400 missing or bad key, 409 in flight
 * or lease lost, 422 key reused, 503 database unreachable, 500) have the
 * Stripe shape {"error": {...}}, or, when the request's Accept header asks
 * for application/problem+json, RFC 9457 problem details from libidem
 * (idem_http_problem_json), as the IETF draft answers them.
 *
 * Every libidem call of a worker (reserve, commit, release, get, the
 * runners) is logged as one logfmt line by the handle's observer
 * (idem_set_observer): on stderr, or in the file given by --call-log.
 *
 * Test hooks (only with --test-hooks): X-Test-Sleep-Ms: N sleeps N ms in
 * the handler after its side effect (POST /emails: X-Test-Sleep-At:
 * in-step sleeps between the mail API's answer and the step's commit,
 * after-step between the step's commit and the request's), printing
 * "service: test hook: sleeping ..." on stderr first; X-Test-Status: N
 * makes the handler answer N after its side effect (e.g. 500 or 429);
 * X-Test-Handler-Fail: 1 makes the charge handler fail after its insert
 * (returns non-zero: the helper releases the key and answers 500).
 *
 * Build: make -C examples/http.  Run: ./examples/http/service --help.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <microhttpd.h>

#include "idem.h"
#include "json.h"

#define MAX_BODY (64 * 1024)
#define MAX_HEADERS 100
#define MAX_MAIL_RESPONSE (256 * 1024)

/* ---- configuration ------------------------------------------------------ */

typedef struct api_key
{
	const char *token;
	const char *tenant;
} api_key;

static struct config
{
	const char *listen;
	long		port;
	const char *port_file;
	unsigned	threads;
	unsigned	io_threads;
	const char *dsn;
	char		mail_host[256];
	char		mail_port[16];
	const char *wait;
	const char *ttl;
	const char *lease;
	int			no_wait;
	int			optional_key;
	int			test_hooks;
	int			quiet;
	const char *call_log;		/* --call-log FILE; NULL: stderr */
	api_key    *keys;
	size_t		nkeys;
}			cfg = {
	.listen = "127.0.0.1",
	.port = 8080,
	.threads = 16,
	.io_threads = 2,
	.mail_host = "127.0.0.1",
	.mail_port = "8025",
};

/* two policies, identical but for waiting; read-only once built */
static idem_http *policy_wait;
static idem_http *policy_nowait;

/* where the call log goes: stderr, or --call-log; -1 when off (--quiet) */
static int	call_log_fd = 2;

/* ---- per-thread database session ---------------------------------------- */

typedef struct worker
{
	int			id;				/* 1, 2, ... for the logs */
	PGconn	   *pg;
	idem_conn  *idem;			/* wraps pg: the same session */
	const char *method;			/* the request in hand, for the call log */
	const char *url;
} worker;

/* appends v to sb as a logfmt value: quoted, with \" \\ and controls escaped */
static void
logfmt_quoted(strbuf *sb, const char *v)
{
	const unsigned char *p;

	sb_append(sb, "\"", 1);
	for (p = (const unsigned char *) v; *p; p++)
	{
		if (*p == '"' || *p == '\\')
		{
			sb_append(sb, "\\", 1);
			sb_append(sb, (const char *) p, 1);
		}
		else if (*p == '\n')
			sb_puts(sb, "\\n");
		else if (*p < 0x20 || *p == 0x7f)
			sb_printf(sb, "\\x%02x", *p);
		else
			sb_append(sb, (const char *) p, 1);
	}
	sb_append(sb, "\"", 1);
}

/*
 * The observer of every worker's libidem handle: one logfmt line per call,
 * written whole (O_APPEND), so that the lines of the workers never mix:
 *
 *   ts=2026-12-01T18:18:38.412Z worker=3 req="POST /charges" op=reserve
 *   outcome=fresh error=ok sqlstate="" key="order-1001" scope="acme"
 *   attempt=1 waited=unknown leased=false status=0 state=in_flight
 *   duration_us=812
 *
 * (one line), plus msg="..." when the call failed.  It runs on the worker's
 * thread, inside the call, and reads only the event.
 */
static void
log_call(const idem_event *ev, void *arg)
{
	const worker *w = arg;
	strbuf		sb = {0};
	struct timespec ts;
	struct tm	tm;
	char		when[32];

	if (call_log_fd < 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	sb_printf(&sb, "ts=%s.%03ldZ worker=%d req=", when, ts.tv_nsec / 1000000,
			  w->id);
	{
		char		req[512];

		snprintf(req, sizeof(req), "%s %s", w->method ? w->method : "-",
				 w->url ? w->url : "-");
		logfmt_quoted(&sb, req);
	}
	sb_printf(&sb, " op=%s outcome=%s error=%s sqlstate=\"%s\" key=",
			  idem_op_name(ev->op), idem_outcome_name(ev->outcome),
			  idem_error_name(ev->error), ev->sqlstate);
	if (ev->key)
		logfmt_quoted(&sb, ev->key);
	sb_puts(&sb, " scope=");
	if (ev->scope)
		logfmt_quoted(&sb, ev->scope);
	sb_printf(&sb, " attempt=%d waited=%s leased=%s status=%d state=%s "
			  "duration_us=%lld", ev->attempt,
			  ev->waited > 0 ? "true" : ev->waited == 0 ? "false" : "unknown",
			  ev->leased ? "true" : "false", ev->status,
			  ev->state ? ev->state : "-", (long long) ev->duration_us);
	if (ev->message[0])
	{
		sb_puts(&sb, " msg=");
		logfmt_quoted(&sb, ev->message);
	}
	sb_append(&sb, "\n", 1);
	if (!sb.oom)
	{
		size_t		off = 0;

		while (off < sb.len)
		{
			ssize_t		n = write(call_log_fd, sb.buf + off, sb.len - off);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			off += (size_t) n;
		}
	}
	free(sb.buf);
}

static void
worker_close(worker *w)
{
	idem_free(w->idem);
	w->idem = NULL;
	if (w->pg)
		PQfinish(w->pg);
	w->pg = NULL;
}

static PGconn *
db_connect(void)
{
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *vals[] = {cfg.dsn ? cfg.dsn : "", "idem-http-example", NULL};

	/* an empty dbname with expand_dbname takes everything from the
	 * environment, like psql */
	return PQconnectdbParams(keys, vals, 1);
}

/* Connects the worker's session (again) when needed; -1 with errbuf set
 * when the database cannot be reached. */
static int
worker_ready(worker *w, char *errbuf, size_t errlen)
{
	if (w->pg && PQstatus(w->pg) != CONNECTION_OK)
		worker_close(w);
	if (w->pg)
		return 0;
	w->pg = db_connect();
	if (w->pg == NULL || PQstatus(w->pg) != CONNECTION_OK)
	{
		snprintf(errbuf, errlen, "%s",
				 w->pg ? PQerrorMessage(w->pg) : "out of memory");
		errbuf[strcspn(errbuf, "\n")] = '\0';
		worker_close(w);
		return -1;
	}
	w->idem = idem_wrap(w->pg);
	if (w->idem == NULL || idem_set_lease(w->idem, cfg.lease) < 0 ||
		(call_log_fd >= 0 && idem_set_observer(w->idem, log_call, w) < 0))
	{
		snprintf(errbuf, errlen, "out of memory");
		worker_close(w);
		return -1;
	}
	return 0;
}

/* Runs a statement without parameters; 0 when it succeeded. */
static int
exec_simple(PGconn *pg, const char *sql, char *errbuf, size_t errlen)
{
	PGresult   *r = PQexec(pg, sql);
	int			ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK ||
						   PQresultStatus(r) == PGRES_TUPLES_OK);

	if (!ok && errbuf)
	{
		snprintf(errbuf, errlen, "%s", PQerrorMessage(pg));
		errbuf[strcspn(errbuf, "\n")] = '\0';
	}
	PQclear(r);
	return ok ? 0 : -1;
}

/* ---- one request -------------------------------------------------------- */

typedef enum route
{
	ROUTE_CHARGE_CREATE,
	ROUTE_CHARGE_UNPROTECTED,
	ROUTE_CHARGE_GET,
	ROUTE_EMAIL
} route;

/* what libmicrohttpd keeps for us between the calls of one request */
/* one request, from its first byte to its response */
typedef enum job_state
{
	JOB_RECEIVING,				/* libmicrohttpd is reading it */
	JOB_QUEUED,					/* suspended, queued or with a worker */
	JOB_DONE,					/* the worker left a response */
	JOB_SENT
} job_state;

typedef struct job
{
	struct MHD_Connection *conn;
	char	   *method;
	char	   *url;
	strbuf		body;
	int			too_large;
	idem_header *headers;		/* copies, owned */
	size_t		nheaders;
	job_state	state;			/* under queue_lock */
	int			orphaned;		/* the connection went while queued */
	unsigned	status;
	struct MHD_Response *response;
	struct job *next;
} job;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static job *queue_head;
static job *queue_tail;
static int	stopping;

/* everything a handler needs: passed as the handler's arg */
typedef struct call
{
	job		   *j;
	worker	   *w;
	route		route;
	const char *tenant;
	const char *method;
	const char *url;
	json_object json;

	/* request fields */
	long long	amount;
	char		currency[4];
	const char *description;
	const char *card;
	int			remember;
	const char *to;
	const char *subject;
	const char *text;
	long long	charge_id;

	/* test hooks */
	long		sleep_ms;
	const char *sleep_at;
	int			forced_status;
	int			handler_fails;

	/* what the handler did */
	int			ran;
	char		set_cookie[128];	/* for this client only: never stored */
	char		authorization[128];
	char		step_key[IDEM_HASH_SIZE];
} call;

static void
logf_(const char *fmt,...) __attribute__((format(printf, 1, 2)));

static void
logf_(const char *fmt,...)
{
	va_list		ap;
	char		line[1024];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "service: %s\n", line);
}

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
test_sleep(call *c, const char *where)
{
	if (c->sleep_ms <= 0)
		return;
	logf_("test hook: sleeping %ld ms %s (pid %d)", c->sleep_ms, where, (int) getpid());
	sleep_ms(c->sleep_ms);
}

static void
random_token(char *out, size_t outlen, const char *prefix)
{
	static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
	unsigned char raw[16];
	size_t		i,
				n;
	FILE	   *f = fopen("/dev/urandom", "rb");

	if (f == NULL || fread(raw, 1, sizeof(raw), f) != sizeof(raw))
	{
		struct timeval tv;

		gettimeofday(&tv, NULL);
		for (i = 0; i < sizeof(raw); i++)
			raw[i] = (unsigned char) ((tv.tv_usec >> (i % 8)) ^ (i * 131) ^ rand());
	}
	if (f)
		fclose(f);
	n = (size_t) snprintf(out, outlen, "%s", prefix);
	for (i = 0; i < sizeof(raw) && n + 1 < outlen; i++, n++)
		out[n] = digits[raw[i] % 36];
	out[n < outlen ? n : outlen - 1] = '\0';
}

/* JSON error body of the Stripe shape */
static void
error_body(strbuf *sb, const char *type, const char *code, const char *message)
{
	sb_puts(sb, "{\"error\": {\"type\": ");
	sb_json_string(sb, type);
	if (code)
	{
		sb_puts(sb, ", \"code\": ");
		sb_json_string(sb, code);
	}
	sb_puts(sb, ", \"message\": ");
	sb_json_string(sb, message);
	sb_puts(sb, "}}\n");
}

static int
set_error(idem_response *resp, int status, const char *type, const char *code,
		  const char *message)
{
	strbuf		sb = {0};
	int			rc;

	error_body(&sb, type, code, message);
	idem_response_set_status(resp, status);
	idem_response_add_header(resp, "Content-Type", "application/json");
	rc = sb.oom ? -1 : idem_response_set_body(resp, sb.buf, sb.len);
	free(sb.buf);
	return rc;
}

static void
charge_json(strbuf *sb, const char *id, const char *tenant, long long amount,
			const char *currency, const char *description, const char *created)
{
	sb_puts(sb, "{\"id\": ");
	sb_json_string(sb, id);
	sb_puts(sb, ", \"object\": \"charge\", \"tenant\": ");
	sb_json_string(sb, tenant);
	sb_printf(sb, ", \"amount\": %lld, \"currency\": ", amount);
	sb_json_string(sb, currency);
	sb_puts(sb, ", \"description\": ");
	if (description)
		sb_json_string(sb, description);
	else
		sb_puts(sb, "null");
	sb_printf(sb, ", \"created\": %s, \"status\": \"succeeded\"}\n", created);
}

/* ---- handlers (the side effects) ---------------------------------------- */

/*
 * POST /charges and POST /charges-unprotected: insert the charge.  It runs
 * inside the transaction the dispatcher opened, after the reservation: the
 * row, the reservation and the stored response commit or roll back
 * together.
 */
static int
charge_create(idem_response *resp, void *arg)
{
	call	   *c = arg;
	const char *key = idem_response_key(resp);	/* NULL when unprotected */
	char		amount[32];
	const char *params[5];
	PGresult   *r;
	strbuf		sb = {0};
	char		id[40];
	int			rc;

	c->ran = 1;
	if (c->card && strcmp(c->card, "tok_chargeDeclined") == 0)
		/* a 4xx the handler decided: stored and replayed like a success */
		return set_error(resp, 402, "card_error", "card_declined",
						 "Your card was declined.");

	snprintf(amount, sizeof(amount), "%lld", c->amount);
	params[0] = c->tenant;
	params[1] = key;
	params[2] = amount;
	params[3] = c->currency;
	params[4] = c->description;
	r = PQexecParams(c->w->pg,
					 "INSERT INTO http_example.charges (tenant, idempotency_key, amount, currency, description) "
					 "VALUES ($1, $2, $3::bigint, $4, $5) "
					 "RETURNING id, extract(epoch FROM created_at)::bigint",
					 5, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logf_("insert failed: %s", PQerrorMessage(c->w->pg));
		PQclear(r);
		/* 500: not stored, the transaction rolls back, a retry runs again */
		return set_error(resp, 500, "api_error", NULL, "could not record the charge");
	}
	snprintf(id, sizeof(id), "ch_%s", PQgetvalue(r, 0, 0));
	charge_json(&sb, id, c->tenant, c->amount, c->currency, c->description,
				PQgetvalue(r, 0, 1));
	PQclear(r);

	test_sleep(c, "in the charge handler, after the insert");
	if (c->handler_fails)
	{
		/* a failure not to be cached: the key is released, the insert
		 * rolls back, and the helper answers 500 */
		free(sb.buf);
		return 1;
	}
	if (c->forced_status)
	{
		free(sb.buf);
		return set_error(resp, c->forced_status, "api_error", "test_failure",
						 "failure forced by X-Test-Status");
	}

	if (c->remember)
	{
		/* per-client secrets: sent to this client, never stored */
		char		tok[64];

		random_token(tok, sizeof(tok), "sid_");
		snprintf(c->set_cookie, sizeof(c->set_cookie),
				 "session=%s; Path=/; HttpOnly; SameSite=Strict", tok);
		random_token(tok, sizeof(tok), "tok_");
		snprintf(c->authorization, sizeof(c->authorization), "Bearer %s", tok);
		/* also given to the library, which drops them: shown for the record */
		idem_response_add_header(resp, "Set-Cookie", c->set_cookie);
		idem_response_add_header(resp, "Authorization", c->authorization);
	}

	idem_response_set_status(resp, 201);
	{
		char		loc[64];

		snprintf(loc, sizeof(loc), "/charges/%s", id);
		idem_response_add_header(resp, "Location", loc);
	}
	idem_response_add_header(resp, "Content-Type", "application/json");
	rc = sb.oom ? -1 : idem_response_set_body(resp, sb.buf, sb.len);
	free(sb.buf);
	return rc;
}

/* GET /charges/{id}: not guarded, runs as is */
static int
charge_get(idem_response *resp, void *arg)
{
	call	   *c = arg;
	char		idtext[32];
	const char *params[2];
	PGresult   *r;
	strbuf		sb = {0};
	char		id[40];
	int			rc;

	c->ran = 1;
	snprintf(idtext, sizeof(idtext), "%lld", c->charge_id);
	params[0] = idtext;
	params[1] = c->tenant;
	r = PQexecParams(c->w->pg,
					 "SELECT amount, currency, description, "
					 "extract(epoch FROM created_at)::bigint "
					 "FROM http_example.charges WHERE id = $1::bigint AND tenant = $2",
					 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logf_("select failed: %s", PQerrorMessage(c->w->pg));
		PQclear(r);
		return set_error(resp, 500, "api_error", NULL, "could not read the charge");
	}
	if (PQntuples(r) == 0)
	{
		PQclear(r);
		return set_error(resp, 404, "invalid_request_error", "resource_missing",
						 "No such charge.");
	}
	snprintf(id, sizeof(id), "ch_%lld", c->charge_id);
	charge_json(&sb, id, c->tenant, strtoll(PQgetvalue(r, 0, 0), NULL, 10),
				PQgetvalue(r, 0, 1),
				PQgetisnull(r, 0, 2) ? NULL : PQgetvalue(r, 0, 2),
				PQgetvalue(r, 0, 3));
	PQclear(r);
	idem_response_set_status(resp, 200);
	idem_response_add_header(resp, "Content-Type", "application/json");
	rc = sb.oom ? -1 : idem_response_set_body(resp, sb.buf, sb.len);
	free(sb.buf);
	return rc;
}

/*
 * A minimal HTTP/1.1 client for the mail API: POST path with an
 * Idempotency-Key, read the whole answer (Connection: close).  Returns the
 * status and fills body, or -1 with errbuf set.
 */
static int
http_post(const char *host, const char *port, const char *path,
		  const char *idem_key, const char *payload, strbuf *body,
		  char *errbuf, size_t errlen)
{
	struct addrinfo hints = {0},
			   *ai = NULL,
			   *a;
	struct timeval tv = {10, 0};
	int			fd = -1,
				gai,
				status;
	strbuf		req = {0},
				raw = {0};
	size_t		off;
	char		buf[8192];
	const char *sep;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	gai = getaddrinfo(host, port, &hints, &ai);
	if (gai != 0)
	{
		snprintf(errbuf, errlen, "%.100s:%.15s: %.100s", host, port, gai_strerror(gai));
		return -1;
	}
	for (a = ai; a; a = a->ai_next)
	{
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
	{
		snprintf(errbuf, errlen, "cannot connect to %.100s:%.15s: %.100s", host, port, strerror(errno));
		return -1;
	}

	sb_printf(&req, "POST %s HTTP/1.1\r\nHost: %s:%s\r\n"
			  "Content-Type: application/json\r\nIdempotency-Key: %s\r\n"
			  "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
			  path, host, port, idem_key, strlen(payload), payload);
	if (req.oom)
	{
		close(fd);
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	for (off = 0; off < req.len;)
	{
		ssize_t		n = send(fd, req.buf + off, req.len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			snprintf(errbuf, errlen, "send to the mail API: %s", strerror(errno));
			free(req.buf);
			close(fd);
			return -1;
		}
		off += (size_t) n;
	}
	free(req.buf);
	for (;;)
	{
		ssize_t		n = recv(fd, buf, sizeof(buf), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			snprintf(errbuf, errlen, "read from the mail API: %s", strerror(errno));
			free(raw.buf);
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		if (raw.len + (size_t) n > MAX_MAIL_RESPONSE)
		{
			snprintf(errbuf, errlen, "the mail API's answer is too large");
			free(raw.buf);
			close(fd);
			return -1;
		}
		sb_append(&raw, buf, (size_t) n);
	}
	close(fd);
	if (raw.oom || raw.len < 12 || strncmp(raw.buf, "HTTP/1.", 7) != 0 ||
		(sep = strstr(raw.buf, "\r\n\r\n")) == NULL)
	{
		snprintf(errbuf, errlen, "the mail API answered something that is not HTTP");
		free(raw.buf);
		return -1;
	}
	status = atoi(raw.buf + 9);
	sb_append(body, sep + 4, raw.len - (size_t) (sep + 4 - raw.buf));
	free(raw.buf);
	return status;
}

/*
 * The durable step of POST /emails: call the mail API with the step's
 * derived key as its Idempotency-Key and store its answer.  If the process
 * dies after the call and before the step's commit, the retry calls again
 * with the same key and the mail API does not send twice; once the step is
 * committed, a retry does not call at all.
 */
static int
send_step(idem_response *resp, void *arg)
{
	call	   *c = arg;
	strbuf		payload = {0},
				answer = {0};
	char		err[256];
	int			status;

	sb_puts(&payload, "{\"to\": ");
	sb_json_string(&payload, c->to);
	sb_puts(&payload, ", \"subject\": ");
	sb_json_string(&payload, c->subject);
	sb_puts(&payload, ", \"text\": ");
	sb_json_string(&payload, c->text ? c->text : "");
	sb_puts(&payload, "}");
	if (payload.oom)
		return -1;
	status = http_post(cfg.mail_host, cfg.mail_port, "/send", c->step_key,
					   payload.buf, &answer, err, sizeof(err));
	free(payload.buf);
	if (status < 200 || status > 299)
	{
		if (status < 0)
			logf_("mail API: %s", err);
		else
			logf_("mail API answered %d", status);
		free(answer.buf);
		return 1;				/* released: a retry calls again */
	}
	idem_response_set_status(resp, status);
	idem_response_add_header(resp, "Content-Type", "application/json");
	if (answer.oom || idem_response_set_body(resp, answer.buf ? answer.buf : "",
											 answer.len) < 0)
	{
		free(answer.buf);
		return -1;
	}
	free(answer.buf);
	if (c->sleep_at == NULL || strcmp(c->sleep_at, "in-step") == 0)
		test_sleep(c, "in the send step, after the mail API answered");
	return 0;
}

/* POST /emails */
static int
email_send(idem_response *resp, void *arg)
{
	call	   *c = arg;
	const char *key = idem_response_key(resp);
	char		run_id[IDEM_HASH_SIZE];
	char		rnd[40];
	const char *parts[3];
	idem_opts	opts = {0};
	idem_record *step = NULL;
	idem_outcome o;
	json_object mail = {0};
	const json_field *mid;
	strbuf		sb = {0};
	char		err[160];
	int			rc;

	c->ran = 1;
	/* the run is the request: same tenant and key, same run, same steps */
	if (key == NULL)
	{
		random_token(rnd, sizeof(rnd), "unprotected-");
		key = rnd;
	}
	parts[0] = "emails";
	parts[1] = c->tenant;
	parts[2] = key;
	if (idem_derive_key(run_id, 3, parts) < 0 ||
		idem_set_run_id(c->w->idem, run_id) < 0 ||
		idem_step_key(c->w->idem, "send", c->step_key) < 0)
	{
		idem_set_run_id(c->w->idem, NULL);
		return -1;
	}
	opts.scope = c->tenant;
	o = idem_step(c->w->idem, "send", &opts, send_step, c, &step);
	idem_set_run_id(c->w->idem, NULL);
	if (o != IDEM_FRESH && o != IDEM_REPLAY)
	{
		snprintf(err, sizeof(err), "the mail service failed (%s: %s)",
				 idem_outcome_name(o), idem_error_name(idem_errcode(c->w->idem)));
		idem_record_free(step);
		/* 502: not stored, so a retry tries again */
		return set_error(resp, 502, "api_error", "mail_failed", err);
	}
	{
		size_t		len;
		const char *b = idem_record_body(step, &len);

		if (b == NULL || json_parse_object(b, len, &mail, err, sizeof(err)) < 0)
			mail.nfields = 0;
	}
	mid = json_get(&mail, "id");

	if (c->sleep_at && strcmp(c->sleep_at, "after-step") == 0)
		test_sleep(c, "after the send step committed");

	sb_puts(&sb, "{\"id\": ");
	{
		char		eid[24];

		snprintf(eid, sizeof(eid), "em_%.16s", run_id);
		sb_json_string(&sb, eid);
	}
	sb_puts(&sb, ", \"object\": \"email\", \"tenant\": ");
	sb_json_string(&sb, c->tenant);
	sb_puts(&sb, ", \"to\": ");
	sb_json_string(&sb, c->to);
	sb_puts(&sb, ", \"subject\": ");
	sb_json_string(&sb, c->subject);
	sb_puts(&sb, ", \"message_id\": ");
	if (mid && mid->type == JSON_STRING)
		sb_json_string(&sb, mid->value);
	else
		sb_puts(&sb, "null");
	sb_puts(&sb, ", \"downstream_key\": ");
	sb_json_string(&sb, c->step_key);
	sb_printf(&sb, ", \"attempt\": %d, \"status\": \"queued\"}\n",
			  idem_response_attempt(resp));
	json_object_free(&mail);
	idem_record_free(step);

	if (c->forced_status)
	{
		free(sb.buf);
		return set_error(resp, c->forced_status, "api_error", "test_failure",
						 "failure forced by X-Test-Status");
	}
	idem_response_set_status(resp, 202);
	idem_response_add_header(resp, "Content-Type", "application/json");
	rc = sb.oom ? -1 : idem_response_set_body(resp, sb.buf, sb.len);
	free(sb.buf);
	return rc;
}

/* ---- responses (built by the workers) ------------------------------------ */

static const char *
job_header(const job *j, const char *name)
{
	size_t		i;

	for (i = 0; i < j->nheaders; i++)
		if (strcasecmp(j->headers[i].name, name) == 0)
			return j->headers[i].value;
	return NULL;
}

static void
respond_typed(job *j, unsigned status, const char *content_type,
			  const char *body, size_t len, const char *const *extra)
{
	struct MHD_Response *r;

	r = MHD_create_response_from_buffer(len, (void *) body, MHD_RESPMEM_MUST_COPY);
	if (r)
	{
		MHD_add_response_header(r, "Content-Type", content_type);
		for (; extra && extra[0]; extra += 2)
			MHD_add_response_header(r, extra[0], extra[1]);
	}
	j->status = status;
	j->response = r;
}

static void
respond_buffer(job *j, unsigned status, const char *body, size_t len,
			   const char *const *extra)
{
	respond_typed(j, status, "application/json", body, len, extra);
}

/*
 * An answer of the idempotency layer as RFC 9457 problem details (libidem
 * builds them), for a client whose Accept header asks for them.
 */
static void
respond_problem(job *j, idem_outcome o, idem_error err, unsigned status,
				const char *key, const char *const *extra)
{
	char		body[IDEM_HTTP_PROBLEM_SIZE];
	int			n = idem_http_problem_json(o, err, (int) status, key, body,
										   sizeof(body));

	if (n < 0 || (size_t) n >= sizeof(body))
	{
		j->response = NULL;
		return;
	}
	respond_typed(j, status, IDEM_HTTP_PROBLEM_CONTENT_TYPE, body, (size_t) n,
				  extra);
}

static void
respond_error(job *j, unsigned status, const char *type, const char *code,
			  const char *message, const char *const *extra)
{
	strbuf		sb = {0};

	error_body(&sb, type, code, message);
	if (sb.oom)
	{
		free(sb.buf);
		j->response = NULL;
		return;
	}
	respond_buffer(j, status, sb.buf, sb.len, extra);
	free(sb.buf);
}

typedef struct hdr_ref
{
	const char *name;
	const char *value;
	size_t		pos;
} hdr_ref;

static int
cmp_hdr(const void *a, const void *b)
{
	const hdr_ref *x = a,
			   *y = b;
	int			c = strcasecmp(x->name, y->name);

	if (c)
		return c;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/*
 * The response the middleware produced, fresh or replayed.  Headers go out
 * sorted by name (values of one name in their order), so a fresh response
 * and its replays are byte for byte the same whatever order the store
 * keeps them in.
 */
static void
respond_record(call *c, const idem_record *rec, unsigned status, int replayed)
{
	struct MHD_Response *r;
	size_t		len = 0,
				n = idem_record_header_count(rec),
				i;
	const void *body = idem_record_body(rec, &len);
	hdr_ref    *h = calloc(n ? n : 1, sizeof(hdr_ref));

	c->j->response = NULL;
	if (h == NULL)
		return;
	r = MHD_create_response_from_buffer(len, (void *) (body ? body : ""),
										MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
	{
		free(h);
		return;
	}
	for (i = 0; i < n; i++)
	{
		h[i].name = idem_record_header_name(rec, i);
		h[i].value = idem_record_header_value(rec, i);
		h[i].pos = i;
	}
	qsort(h, n, sizeof(hdr_ref), cmp_hdr);
	for (i = 0; i < n; i++)
		MHD_add_response_header(r, h[i].name, h[i].value);
	free(h);
	if (replayed)
		MHD_add_response_header(r, "Idempotent-Replayed", "true");
	else if (c->ran)
	{
		/* the client whose request ran the handler, and only it */
		if (c->set_cookie[0])
			MHD_add_response_header(r, "Set-Cookie", c->set_cookie);
		if (c->authorization[0])
			MHD_add_response_header(r, "Authorization", c->authorization);
	}
	c->j->status = status;
	c->j->response = r;
}

/* ---- dispatch (in a worker) ----------------------------------------------- */

static int
valid_tenant(const char *t)
{
	size_t		n = 0;

	for (; t[n]; n++)
		if (!isalnum((unsigned char) t[n]) && t[n] != '-' && t[n] != '_' && t[n] != '.')
			return 0;
	return n > 0 && n <= 64;
}

/* The tenant of the request; NULL after answering 400/401. */
static const char *
resolve_tenant(job *j)
{
	const char *auth = job_header(j, "Authorization");
	const char *t = job_header(j, "X-Tenant");
	static const char *const bearer[] = {"WWW-Authenticate", "Bearer", NULL};

	if (auth)
	{
		size_t		i;

		if (strncasecmp(auth, "Bearer ", 7) == 0)
			for (i = 0; i < cfg.nkeys; i++)
				if (strcmp(auth + 7, cfg.keys[i].token) == 0)
					return cfg.keys[i].tenant;
		respond_error(j, 401, "authentication_error", "invalid_api_key",
					  "Invalid API key provided.", bearer);
		return NULL;
	}
	if (t == NULL)
		return "default";
	if (!valid_tenant(t))
	{
		respond_error(j, 400, "invalid_request_error", "tenant_invalid",
					  "X-Tenant must be 1 to 64 letters, digits, '.', '-' or '_'.",
					  NULL);
		return NULL;
	}
	return t;
}

static const char *
json_string_field(call *c, const char *name, int required, size_t maxlen,
				  const char **problem)
{
	const json_field *f = json_get(&c->json, name);

	if (f == NULL || f->type == JSON_NULL)
	{
		if (required)
			*problem = name;
		return NULL;
	}
	if (f->type != JSON_STRING || strlen(f->value) > maxlen ||
		(required && f->value[0] == '\0'))
	{
		*problem = name;
		return NULL;
	}
	return f->value;
}

/* Validates the body of a POST; 0, or -1 with a message in msg. */
static int
validate(call *c, const char *body, size_t len, char *msg, size_t msglen)
{
	char		err[128];
	const char *problem = NULL;
	const json_field *f;

	if (json_parse_object(body, len, &c->json, err, sizeof(err)) < 0)
	{
		snprintf(msg, msglen, "The body must be a JSON object: %s.", err);
		return -1;
	}
	if (c->route == ROUTE_EMAIL)
	{
		c->to = json_string_field(c, "to", 1, 320, &problem);
		if (!problem)
			c->subject = json_string_field(c, "subject", 1, 998, &problem);
		if (!problem)
			c->text = json_string_field(c, "text", 0, 32768, &problem);
		if (problem)
		{
			snprintf(msg, msglen, "Invalid or missing parameter: %s.", problem);
			return -1;
		}
		if (strchr(c->to, '@') == NULL)
		{
			snprintf(msg, msglen, "Invalid email address: to.");
			return -1;
		}
		return 0;
	}

	f = json_get(&c->json, "amount");
	if (f == NULL || f->type != JSON_NUMBER || f->value[0] == '-' ||
		strspn(f->value, "0123456789") != strlen(f->value) ||
		strlen(f->value) > 10 || (c->amount = strtoll(f->value, NULL, 10)) <= 0 ||
		c->amount > 99999999)
	{
		snprintf(msg, msglen, "amount must be a positive integer in the smallest "
				 "currency unit, at most 99999999.");
		return -1;
	}
	{
		const char *cur = json_string_field(c, "currency", 1, 3, &problem);
		int			i;

		if (cur == NULL || strlen(cur) != 3)
		{
			snprintf(msg, msglen, "currency must be a three-letter ISO code.");
			return -1;
		}
		for (i = 0; i < 3; i++)
		{
			if (!isalpha((unsigned char) cur[i]))
			{
				snprintf(msg, msglen, "currency must be a three-letter ISO code.");
				return -1;
			}
			c->currency[i] = (char) tolower((unsigned char) cur[i]);
		}
		c->currency[3] = '\0';
	}
	c->description = json_string_field(c, "description", 0, 1000, &problem);
	if (!problem)
		c->card = json_string_field(c, "card", 0, 100, &problem);
	if (problem)
	{
		snprintf(msg, msglen, "Invalid parameter: %s.", problem);
		return -1;
	}
	f = json_get(&c->json, "remember");
	c->remember = f && f->type == JSON_TRUE;
	return 0;
}

static void
read_test_hooks(call *c)
{
	const char *v;

	if (!cfg.test_hooks)
		return;
	v = job_header(c->j, "X-Test-Sleep-Ms");
	if (v)
		c->sleep_ms = strtol(v, NULL, 10);
	if (c->sleep_ms < 0 || c->sleep_ms > 600000)
		c->sleep_ms = 0;
	c->sleep_at = job_header(c->j, "X-Test-Sleep-At");
	v = job_header(c->j, "X-Test-Handler-Fail");
	c->handler_fails = v && strcmp(v, "1") == 0;
	v = job_header(c->j, "X-Test-Status");
	if (v)
	{
		int			s = atoi(v);

		if (s >= 100 && s <= 599)
			c->forced_status = s;
	}
}

static const char *
error_type(int status, const char **code)
{
	switch (status)
	{
		case 400:
			*code = "idempotency_key_missing";
			return "invalid_request_error";
		case 409:
			*code = "idempotency_key_in_use";
			return "idempotency_error";
		case 422:
			*code = "idempotency_key_reused";
			return "idempotency_error";
		case 503:
			*code = "database_unavailable";
			return "api_error";
		default:
			*code = NULL;
			return "api_error";
	}
}

/* Runs one request on worker w; leaves the response in j. */
static void
dispatch(worker *w, job *j)
{
	static const char *const allow_post[] = {"Allow", "POST", NULL};
	static const char *const allow_get[] = {"Allow", "GET", NULL};
	static const char *const retry_after[] = {"Retry-After", "1", NULL};
	const char *url = j->url;
	const char *method = j->method;
	call	   *c;
	char		msg[512];
	const char *v;
	const idem_http *policy;
	idem_http_request hr;
	idem_record *rec = NULL;
	idem_outcome o;
	idem_handler_fn handler;
	int			status = 500;
	int			tx;
	int			problem;
	const char *key;

	c = calloc(1, sizeof(call));
	if (c == NULL)
		return;
	c->j = j;
	c->w = w;
	c->method = method;
	c->url = url;
	w->method = method;
	w->url = url;

	if (strcmp(url, "/charges") == 0)
		c->route = ROUTE_CHARGE_CREATE, handler = charge_create;
	else if (strcmp(url, "/charges-unprotected") == 0)
		c->route = ROUTE_CHARGE_UNPROTECTED, handler = charge_create;
	else if (strcmp(url, "/emails") == 0)
		c->route = ROUTE_EMAIL, handler = email_send;
	else if (strncmp(url, "/charges/ch_", 12) == 0 && url[12] &&
			 strspn(url + 12, "0123456789") == strlen(url + 12) && strlen(url + 12) < 18)
		c->route = ROUTE_CHARGE_GET, handler = charge_get,
			c->charge_id = strtoll(url + 12, NULL, 10);
	else if (strncmp(url, "/charges/", 9) == 0)
	{
		respond_error(j, 404, "invalid_request_error", "resource_missing",
					  "No such charge.", NULL);
		goto done;
	}
	else
	{
		respond_error(j, 404, "invalid_request_error", "not_found",
					  "Unrecognized request URL.", NULL);
		goto done;
	}
	if (c->route == ROUTE_CHARGE_GET ? strcmp(method, "GET") != 0
		: strcmp(method, "POST") != 0)
	{
		respond_error(j, 405, "invalid_request_error", "method_not_allowed",
					  "Method not allowed.",
					  c->route == ROUTE_CHARGE_GET ? allow_get : allow_post);
		goto done;
	}
	if (j->too_large)
	{
		respond_error(j, 413, "invalid_request_error", "body_too_large",
					  "The body is larger than 64 KiB.", NULL);
		goto done;
	}
	c->tenant = resolve_tenant(j);
	if (c->tenant == NULL)
		goto done;
	/* invalid requests are answered before the key is looked at: nothing
	 * is stored for them, as Stripe does */
	if (c->route != ROUTE_CHARGE_GET &&
		validate(c, j->body.buf ? j->body.buf : "", j->body.len, msg, sizeof(msg)) < 0)
	{
		respond_error(j, 400, "invalid_request_error", "parameter_invalid", msg, NULL);
		goto done;
	}
	read_test_hooks(c);

	memset(&hr, 0, sizeof(hr));
	hr.method = method;
	hr.path = url;
	hr.headers = j->headers;
	hr.nheaders = j->nheaders;
	hr.body = j->body.buf;
	hr.body_len = j->body.len;
	hr.scope = c->tenant;
	/* the idempotency layer's answers: problem details when asked for */
	problem = idem_http_wants_problem(&hr);
	key = job_header(j, "Idempotency-Key");

	if (worker_ready(w, msg, sizeof(msg)) < 0)
	{
		logf_("database unreachable: %s", msg);
		if (problem)
			respond_problem(j, IDEM_ERROR, IDEM_ERR_CONNECTION, 503, key,
							retry_after);
		else
			respond_error(j, 503, "api_error", "database_unavailable",
						  "The database is unreachable; retry with the same key.",
						  retry_after);
		goto done;
	}

	v = job_header(j, "X-Idempotency-Wait");
	policy = cfg.no_wait || (v && strcmp(v, "0") == 0) ? policy_nowait : policy_wait;

	/*
	 * Charges: reservation, insert and stored response in one transaction.
	 * Emails: autocommit, so that the step's stored result outlives a crash
	 * of this request (the point of the step).
	 */
	tx = c->route == ROUTE_CHARGE_CREATE || c->route == ROUTE_CHARGE_UNPROTECTED;
	if (tx && exec_simple(w->pg, "BEGIN", msg, sizeof(msg)) < 0)
	{
		logf_("BEGIN failed: %s", msg);
		if (problem)
			respond_problem(j, IDEM_ERROR, IDEM_ERR_CONNECTION, 503, key,
							retry_after);
		else
			respond_error(j, 503, "api_error", "database_unavailable",
						  "The database is unreachable; retry with the same key.",
						  retry_after);
		worker_close(w);
		goto done;
	}
	o = idem_http_run(w->idem, policy, &hr, handler, c, &rec, &status);
	if (tx)
	{
		int			keep = o == IDEM_FRESH && status < 500 && status != 429 &&
			strcmp(idem_record_state(rec), "released") != 0;

		if (exec_simple(w->pg, keep ? "COMMIT" : "ROLLBACK", msg, sizeof(msg)) < 0 &&
			keep)
		{
			/* we cannot tell whether it committed: the retry will know */
			logf_("COMMIT failed: %s", msg);
			idem_record_free(rec);
			rec = NULL;
			o = IDEM_ERROR;
			status = 503;
		}
	}

	if (!cfg.quiet)
	{
		logf_("%s %s tenant=%s key=%s -> %d %s%s", method, url, c->tenant,
			  key ? key : "-", status, idem_outcome_name(o),
			  rec && o == IDEM_FRESH && strcmp(idem_record_state(rec), "committed") != 0
			  ? (strcmp(idem_record_state(rec), "bypassed") == 0 ? " (bypassed)" : " (not stored)")
			  : "");
	}

	if ((o == IDEM_FRESH || o == IDEM_REPLAY) && rec)
		respond_record(c, rec, (unsigned) status, o == IDEM_REPLAY);
	else if (problem)
	{
		if (status >= 500 && status != 503)
			logf_("%s %s: %s: %s", method, url, idem_error_name(idem_errcode(w->idem)),
				  idem_errmsg(w->idem));
		respond_problem(j, o, idem_errcode(w->idem), (unsigned) status, key,
						status == 409 || status == 503 ? retry_after : NULL);
	}
	else
	{
		const char *code = NULL;
		const char *type = error_type(status, &code);
		const char *text;

		switch (status)
		{
			case 409:
				text = "A request with the same Idempotency-Key is in flight; retry later.";
				break;
			case 422:
				text = "This Idempotency-Key was used with another request (body or path).";
				break;
			case 503:
				text = "The database is unreachable; retry with the same key.";
				break;
			case 400:
				snprintf(msg, sizeof(msg), "Send an Idempotency-Key header of 1 to 255 "
						 "bytes with %s %s (%s).", method, url, idem_errmsg(w->idem));
				text = msg;
				break;
			default:
				text = "An internal error occurred; retry with the same key.";
				logf_("%s %s: %s: %s", method, url, idem_error_name(idem_errcode(w->idem)),
					  idem_errmsg(w->idem));
		}
		respond_error(j, (unsigned) status, type, code, text,
					  status == 409 || status == 503 ? retry_after : NULL);
	}
	idem_record_free(rec);
	if (w->pg && PQstatus(w->pg) != CONNECTION_OK)
		worker_close(w);

done:
	w->method = NULL;
	w->url = NULL;
	json_object_free(&c->json);
	free(c);
}

static void job_free(job *j);

static void *
worker_main(void *arg)
{
	worker		w;

	memset(&w, 0, sizeof(w));
	w.id = (int) (intptr_t) arg;
	for (;;)
	{
		job		   *j;
		int			orphaned;

		pthread_mutex_lock(&queue_lock);
		while (queue_head == NULL && !stopping)
			pthread_cond_wait(&queue_cond, &queue_lock);
		j = queue_head;
		if (j)
		{
			queue_head = j->next;
			if (queue_head == NULL)
				queue_tail = NULL;
		}
		pthread_mutex_unlock(&queue_lock);
		if (j == NULL)
			break;				/* stopping, and the queue is drained */

		dispatch(&w, j);

		pthread_mutex_lock(&queue_lock);
		j->state = JOB_DONE;
		orphaned = j->orphaned;
		pthread_mutex_unlock(&queue_lock);
		if (!orphaned)
			MHD_resume_connection(j->conn);
		else
			job_free(j);
	}
	worker_close(&w);
	return NULL;
}

/* ---- libmicrohttpd callbacks (in its polling threads) ---------------------- */

static void
job_free(job *j)
{
	size_t		i;

	if (j->response)
		MHD_destroy_response(j->response);
	for (i = 0; i < j->nheaders; i++)
	{
		free((char *) j->headers[i].name);
		free((char *) j->headers[i].value);
	}
	free(j->headers);
	free(j->body.buf);
	free(j->method);
	free(j->url);
	free(j);
}

static enum MHD_Result
copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
			const char *value)
{
	job		   *j = cls;
	char	   *name,
			   *val;
	size_t		n;

	(void) kind;
	if (j->nheaders >= MAX_HEADERS)
		return MHD_NO;
	if (value == NULL)
		value = "";
	n = strlen(value);
	/* the IETF draft sends the key as a quoted string: "abc" and abc are
	 * the same key */
	if (strcasecmp(key, "Idempotency-Key") == 0 && n >= 2 &&
		value[0] == '"' && value[n - 1] == '"')
	{
		value++;
		n -= 2;
	}
	name = strdup(key);
	val = malloc(n + 1);
	if (name == NULL || val == NULL)
	{
		free(name);
		free(val);
		return MHD_NO;
	}
	memcpy(val, value, n);
	val[n] = '\0';
	j->headers[j->nheaders].name = name;
	j->headers[j->nheaders].value = val;
	j->nheaders++;
	return MHD_YES;
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
	   const char *method, const char *version, const char *upload_data,
	   size_t *upload_data_size, void **con_cls)
{
	job		   *j = *con_cls;
	job_state	state;
	enum MHD_Result ret;

	(void) cls;
	(void) version;
	if (j == NULL)
	{
		j = calloc(1, sizeof(job));
		if (j == NULL)
			return MHD_NO;
		j->conn = conn;
		j->method = strdup(method);
		j->url = strdup(url);
		j->headers = calloc(MAX_HEADERS, sizeof(idem_header));
		*con_cls = j;
		if (j->method == NULL || j->url == NULL || j->headers == NULL)
			return MHD_NO;
		return MHD_YES;
	}
	if (*upload_data_size)
	{
		if (j->body.len + *upload_data_size > MAX_BODY)
			j->too_large = 1;
		else if (!j->too_large)
			sb_append(&j->body, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}

	pthread_mutex_lock(&queue_lock);
	state = j->state;
	pthread_mutex_unlock(&queue_lock);
	switch (state)
	{
		case JOB_RECEIVING:
			if (strcmp(url, "/healthz") == 0)
			{
				struct MHD_Response *r =
					MHD_create_response_from_buffer(13, (void *) "{\"ok\": true}\n",
													MHD_RESPMEM_PERSISTENT);

				if (r == NULL)
					return MHD_NO;
				MHD_add_response_header(r, "Content-Type", "application/json");
				ret = MHD_queue_response(conn, 200, r);
				MHD_destroy_response(r);
				return ret;
			}
			if (j->body.oom)
				return MHD_NO;
			MHD_get_connection_values(conn, MHD_HEADER_KIND, copy_header, j);
			/* hand it to a worker; it resumes the connection when done */
			MHD_suspend_connection(conn);
			pthread_mutex_lock(&queue_lock);
			j->state = JOB_QUEUED;
			if (queue_tail)
				queue_tail->next = j;
			else
				queue_head = j;
			queue_tail = j;
			pthread_cond_signal(&queue_cond);
			pthread_mutex_unlock(&queue_lock);
			return MHD_YES;
		case JOB_DONE:
			if (j->response == NULL)
				return MHD_NO;	/* out of memory: drop the connection */
			ret = MHD_queue_response(conn, j->status, j->response);
			MHD_destroy_response(j->response);
			j->response = NULL;
			pthread_mutex_lock(&queue_lock);
			j->state = JOB_SENT;
			pthread_mutex_unlock(&queue_lock);
			return ret;
		default:
			return MHD_YES;
	}
}

static void
completed(void *cls, struct MHD_Connection *conn, void **con_cls,
		  enum MHD_RequestTerminationCode toe)
{
	job		   *j = *con_cls;
	int			busy;

	(void) cls;
	(void) conn;
	(void) toe;
	if (j == NULL)
		return;
	*con_cls = NULL;
	pthread_mutex_lock(&queue_lock);
	busy = j->state == JOB_QUEUED;
	if (busy)
		j->orphaned = 1;		/* the worker frees it */
	pthread_mutex_unlock(&queue_lock);
	if (!busy)
		job_free(j);
}

/* ---- start-up ----------------------------------------------------------- */

static const char *const schema_sql =
"SET LOCAL client_min_messages = warning;"
"SELECT pg_advisory_xact_lock(hashtext('idem-http-example'));"
"CREATE SCHEMA IF NOT EXISTS http_example;"
"CREATE TABLE IF NOT EXISTS http_example.charges ("
"  id bigserial PRIMARY KEY,"
"  tenant text NOT NULL,"
"  idempotency_key text,"
"  amount bigint NOT NULL CHECK (amount > 0),"
"  currency text NOT NULL,"
"  description text,"
"  created_at timestamptz NOT NULL DEFAULT now());";

static int
prepare_database(void)
{
	PGconn	   *pg = db_connect();
	PGresult   *r;
	char		err[512];
	int			ok;

	if (pg == NULL || PQstatus(pg) != CONNECTION_OK)
	{
		fprintf(stderr, "service: cannot connect to the database: %s",
				pg ? PQerrorMessage(pg) : "out of memory\n");
		PQfinish(pg);
		return -1;
	}
	r = PQexec(pg, "SELECT 1 FROM pg_extension WHERE extname = 'idempotency'");
	ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
	PQclear(r);
	if (!ok)
	{
		fprintf(stderr, "service: the idempotency extension is not installed in "
				"database \"%s\": run CREATE EXTENSION idempotency there\n", PQdb(pg));
		PQfinish(pg);
		return -1;
	}
	/* a bad --wait or --ttl would fail every request: refuse it now */
	{
		const char *iv[3] = {cfg.wait, cfg.ttl, cfg.lease};
		const char *opt[3] = {"--wait", "--ttl", "--lease"};
		int			k;

		for (k = 0; k < 3; k++)
		{
			if (iv[k] == NULL)
				continue;
			r = PQexecParams(pg, "SELECT $1::interval", 1, NULL, &iv[k], NULL, NULL, 0);
			ok = PQresultStatus(r) == PGRES_TUPLES_OK;
			PQclear(r);
			if (!ok)
			{
				fprintf(stderr, "service: %s %s: not an interval: %s", opt[k], iv[k],
						PQerrorMessage(pg));
				PQfinish(pg);
				return -2;		/* bad usage */
			}
		}
	}
	if (exec_simple(pg, "BEGIN", err, sizeof(err)) < 0 ||
		exec_simple(pg, schema_sql, err, sizeof(err)) < 0 ||
		exec_simple(pg, "COMMIT", err, sizeof(err)) < 0)
	{
		fprintf(stderr, "service: cannot create the table http_example.charges: %s\n", err);
		PQfinish(pg);
		return -1;
	}
	fprintf(stderr, "service: database \"%s\" on %s ready\n", PQdb(pg),
			PQhost(pg) ? PQhost(pg) : "?");
	PQfinish(pg);
	return 0;
}

static idem_http *
make_policy(const char *wait)
{
	idem_http  *h = idem_http_new();

	if (h == NULL)
		return NULL;
	idem_http_set_required(h, !cfg.optional_key);
	if (idem_http_exclude(h, "POST /charges-unprotected") < 0 ||
		(wait && idem_http_set_wait(h, wait) < 0) ||
		(cfg.ttl && idem_http_set_ttl(h, cfg.ttl) < 0))
	{
		idem_http_free(h);
		return NULL;
	}
	return h;
}

static void
usage(FILE *f)
{
	fprintf(f,
			"usage: service [options]\n"
			"  --listen ADDR         IPv4 address to listen on (default 127.0.0.1)\n"
			"  --port N              port (default 8080; 0 = a free one, printed)\n"
			"  --port-file FILE      write the port to FILE once listening\n"
			"  --threads N           worker threads, one database session and libidem\n"
			"                        handle each (default 16)\n"
			"  --io-threads N        libmicrohttpd polling threads (default 2)\n"
			"  --dsn CONNINFO        database (default: libpq's environment, PGHOST ...)\n"
			"  --mail HOST:PORT      the mail API (default 127.0.0.1:8025)\n"
			"  --wait INTERVAL       how long a duplicate waits for the request in flight\n"
			"                        (default: the server's idem.wait_timeout, 30s)\n"
			"  --no-wait             answer 409 at once to a duplicate of a request in flight\n"
			"                        (per request: header X-Idempotency-Wait: 0)\n"
			"  --ttl INTERVAL        how long responses are kept (default idem.default_ttl, 24h)\n"
			"  --lease INTERVAL      requests own their key by a lease, renewed while the\n"
			"                        handler runs (for transaction-mode poolers); 0 = by the\n"
			"                        worker's session (default: automatic, see libidem)\n"
			"  --optional-key        guarded requests without Idempotency-Key run unprotected\n"
			"                        (default: 400)\n"
			"  --api-key TOKEN=TENANT  map \"Authorization: Bearer TOKEN\" to a tenant\n"
			"                        (default keys: sk_test_acme=acme, sk_test_globex=globex)\n"
			"  --test-hooks          honour X-Test-Sleep-Ms, X-Test-Sleep-At, X-Test-Status,\n"
			"                        X-Test-Handler-Fail\n"
			"  --call-log FILE       log every libidem call (one logfmt line) to FILE,\n"
			"                        appended (default: stderr)\n"
			"  --quiet               no log line per request, no call log on stderr\n");
}

static void
add_api_key(const char *token, const char *tenant)
{
	api_key    *k = realloc(cfg.keys, (cfg.nkeys + 1) * sizeof(api_key));

	if (k == NULL)
	{
		fprintf(stderr, "service: out of memory\n");
		exit(1);
	}
	cfg.keys = k;
	cfg.keys[cfg.nkeys].token = token;
	cfg.keys[cfg.nkeys].tenant = tenant;
	cfg.nkeys++;
}

static long
parse_long(const char *s, long lo, long hi)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi)
	{
		fprintf(stderr, "service: bad number: %s\n", s);
		usage(stderr);
		exit(64);
	}
	return v;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in sa;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	sigset_t	sigs;
	int			sig,
				i;
	long		port;
	pthread_t  *workers;
	unsigned	nworkers;
	MHD_socket	lsock;

	for (i = 1; i < argc; i++)
	{
		const char *a = argv[i];
		const char *next = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
		{
			usage(stdout);
			return 0;
		}
		else if (strcmp(a, "--no-wait") == 0)
			cfg.no_wait = 1;
		else if (strcmp(a, "--optional-key") == 0)
			cfg.optional_key = 1;
		else if (strcmp(a, "--test-hooks") == 0)
			cfg.test_hooks = 1;
		else if (strcmp(a, "--quiet") == 0)
			cfg.quiet = 1;
		else if (next == NULL)
		{
			fprintf(stderr, "service: unknown option or missing value: %s\n", a);
			usage(stderr);
			return 64;
		}
		else if (strcmp(a, "--listen") == 0)
			cfg.listen = argv[++i];
		else if (strcmp(a, "--port") == 0)
			cfg.port = parse_long(argv[++i], 0, 65535);
		else if (strcmp(a, "--port-file") == 0)
			cfg.port_file = argv[++i];
		else if (strcmp(a, "--threads") == 0)
			cfg.threads = (unsigned) parse_long(argv[++i], 1, 1024);
		else if (strcmp(a, "--io-threads") == 0)
			cfg.io_threads = (unsigned) parse_long(argv[++i], 1, 64);
		else if (strcmp(a, "--dsn") == 0)
			cfg.dsn = argv[++i];
		else if (strcmp(a, "--wait") == 0)
			cfg.wait = argv[++i];
		else if (strcmp(a, "--ttl") == 0)
			cfg.ttl = argv[++i];
		else if (strcmp(a, "--lease") == 0)
			cfg.lease = argv[++i];
		else if (strcmp(a, "--call-log") == 0)
			cfg.call_log = argv[++i];
		else if (strcmp(a, "--mail") == 0)
		{
			const char *colon = strrchr(next, ':');

			if (colon == NULL || colon == next ||
				(size_t) (colon - next) >= sizeof(cfg.mail_host) ||
				strlen(colon + 1) >= sizeof(cfg.mail_port))
			{
				fprintf(stderr, "service: --mail wants HOST:PORT\n");
				return 64;
			}
			memcpy(cfg.mail_host, next, (size_t) (colon - next));
			cfg.mail_host[colon - next] = '\0';
			strcpy(cfg.mail_port, colon + 1);
			i++;
		}
		else if (strcmp(a, "--api-key") == 0)
		{
			char	   *eq = strchr(argv[i + 1], '=');

			if (eq == NULL || eq == argv[i + 1] || !valid_tenant(eq + 1))
			{
				fprintf(stderr, "service: --api-key wants TOKEN=TENANT\n");
				return 64;
			}
			*eq = '\0';
			add_api_key(argv[i + 1], eq + 1);
			i++;
		}
		else
		{
			fprintf(stderr, "service: unknown option: %s\n", a);
			usage(stderr);
			return 64;
		}
	}
	if (cfg.call_log)
	{
		call_log_fd = open(cfg.call_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
						   0644);
		if (call_log_fd < 0)
		{
			fprintf(stderr, "service: --call-log %s: %s\n", cfg.call_log,
					strerror(errno));
			return 64;
		}
	}
	else if (cfg.quiet)
		call_log_fd = -1;
	if (cfg.nkeys == 0)
	{
		add_api_key("sk_test_acme", "acme");
		add_api_key("sk_test_globex", "globex");
	}

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t) cfg.port);
	if (inet_pton(AF_INET, cfg.listen, &sa.sin_addr) != 1)
	{
		fprintf(stderr, "service: bad --listen address %s (IPv4 expected)\n", cfg.listen);
		return 64;
	}

	policy_wait = make_policy(cfg.wait);
	policy_nowait = make_policy("0");
	if (policy_wait == NULL || policy_nowait == NULL)
	{
		fprintf(stderr, "service: bad --wait or --ttl, or out of memory\n");
		return 64;
	}
	switch (prepare_database())
	{
		case 0:
			break;
		case -2:
			return 64;
		default:
			return 69;
	}

	/* the pool threads inherit this mask: only main takes the signals */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	workers = calloc(cfg.threads, sizeof(pthread_t));
	if (workers == NULL)
		return 1;
	for (nworkers = 0; nworkers < cfg.threads; nworkers++)
		if (pthread_create(&workers[nworkers], NULL, worker_main,
						   (void *) (intptr_t) (nworkers + 1)) != 0)
		{
			fprintf(stderr, "service: cannot start worker threads\n");
			return 1;
		}

	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO |
						 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
						 0, NULL, NULL, handle, NULL,
						 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
						 MHD_OPTION_THREAD_POOL_SIZE, cfg.io_threads,
						 MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
						 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 120,
						 MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int) 1024,
						 MHD_OPTION_END);
	if (d == NULL)
	{
		fprintf(stderr, "service: could not listen on %s:%ld\n", cfg.listen, cfg.port);
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	port = info ? info->port : cfg.port;
	printf("service: listening on http://%s:%ld (%u workers, %u I/O threads, mail API %s:%s%s)\n",
		   cfg.listen, port, cfg.threads, cfg.io_threads, cfg.mail_host, cfg.mail_port,
		   cfg.test_hooks ? ", test hooks on" : "");
	fflush(stdout);
	if (cfg.port_file)
	{
		FILE	   *f = fopen(cfg.port_file, "w");

		if (f == NULL || fprintf(f, "%ld\n", port) < 0 || fclose(f) != 0)
		{
			fprintf(stderr, "service: could not write %s\n", cfg.port_file);
			MHD_stop_daemon(d);
			return 1;
		}
	}

	while (sigwait(&sigs, &sig) != 0)
		;
	fprintf(stderr, "service: stopping (signal %d)\n", sig);
	/* no new connections; the workers finish what is queued and resume
	 * those connections; then everything closes */
	lsock = MHD_quiesce_daemon(d);
	pthread_mutex_lock(&queue_lock);
	stopping = 1;
	pthread_cond_broadcast(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
	for (i = 0; i < (int) nworkers; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	MHD_stop_daemon(d);
	if (lsock != MHD_INVALID_SOCKET)
		close(lsock);
	idem_http_free(policy_wait);
	idem_http_free(policy_nowait);
	free(cfg.keys);
	if (cfg.call_log)
		close(call_log_fd);
	return 0;
}
