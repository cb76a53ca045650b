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
 * The code: this file (options, start-up, shutdown), http.c (the HTTP
 * plumbing), routes.c (the routes), db.c (the database); see service.h.
 * JSON is read and written with json-c, the mail API called with libcurl.
 *
 * Build: make -C examples/http.  Run: ./examples/http/service --help.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "service.h"

#define EXIT_USAGE 64
#define EXIT_UNAVAILABLE 69

service_config cfg = {
	.listen = "127.0.0.1",
	.port = 8080,
	.threads = 16,
	.io_threads = 2,
	.mail_host = "127.0.0.1",
	.mail_port = "8025",
};

idem_http  *policy_wait;
idem_http  *policy_nowait;
int			call_log_fd = 2;

void
logf_(const char *fmt,...)
{
	va_list		ap;
	char		line[1024];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "service: %s\n", line);
}

/* ---- options -------------------------------------------------------------- */

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
bad_usage(const char *fmt, const char *arg) __attribute__((format(printf, 1, 0), noreturn));

/* "service: " fmt with arg, then the usage, and exit 64 */
static void
bad_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, "service: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	usage(stderr);
	exit(EXIT_USAGE);
}

static void unknown_option(int argc, char **argv, int i) __attribute__((noreturn));

/* argv[i] is no option; as the last argument it may be one without its value */
static void
unknown_option(int argc, char **argv, int i)
{
	bad_usage(i == argc - 1 ? "unknown option or missing value: %s" :
			  "unknown option: %s", argv[i]);
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
		bad_usage("bad number: %s", s);
	return v;
}

/* --mail HOST:PORT */
static void
set_mail(const char *arg)
{
	const char *colon = strrchr(arg, ':');

	if (colon == NULL || colon == arg ||
		(size_t) (colon - arg) >= sizeof(cfg.mail_host) ||
		strlen(colon + 1) >= sizeof(cfg.mail_port))
	{
		fprintf(stderr, "service: --mail wants HOST:PORT\n");
		exit(EXIT_USAGE);
	}
	memcpy(cfg.mail_host, arg, (size_t) (colon - arg));
	cfg.mail_host[colon - arg] = '\0';
	strcpy(cfg.mail_port, colon + 1);
}

/* --api-key TOKEN=TENANT */
static void
set_api_key(char *arg)
{
	char	   *eq = strchr(arg, '=');

	if (eq == NULL || eq == arg || !valid_tenant(eq + 1))
	{
		fprintf(stderr, "service: --api-key wants TOKEN=TENANT\n");
		exit(EXIT_USAGE);
	}
	*eq = '\0';
	add_api_key(arg, eq + 1);
}

enum
{
	OPT_HELP = 'h',
	OPT_LISTEN = 256,
	OPT_PORT,
	OPT_PORT_FILE,
	OPT_THREADS,
	OPT_IO_THREADS,
	OPT_DSN,
	OPT_MAIL,
	OPT_WAIT,
	OPT_NO_WAIT,
	OPT_TTL,
	OPT_LEASE,
	OPT_OPTIONAL_KEY,
	OPT_API_KEY,
	OPT_TEST_HOOKS,
	OPT_CALL_LOG,
	OPT_QUIET
};

static const struct option options[] = {
	{"help", no_argument, NULL, OPT_HELP},
	{"listen", required_argument, NULL, OPT_LISTEN},
	{"port", required_argument, NULL, OPT_PORT},
	{"port-file", required_argument, NULL, OPT_PORT_FILE},
	{"threads", required_argument, NULL, OPT_THREADS},
	{"io-threads", required_argument, NULL, OPT_IO_THREADS},
	{"dsn", required_argument, NULL, OPT_DSN},
	{"mail", required_argument, NULL, OPT_MAIL},
	{"wait", required_argument, NULL, OPT_WAIT},
	{"no-wait", no_argument, NULL, OPT_NO_WAIT},
	{"ttl", required_argument, NULL, OPT_TTL},
	{"lease", required_argument, NULL, OPT_LEASE},
	{"optional-key", no_argument, NULL, OPT_OPTIONAL_KEY},
	{"api-key", required_argument, NULL, OPT_API_KEY},
	{"test-hooks", no_argument, NULL, OPT_TEST_HOOKS},
	{"call-log", required_argument, NULL, OPT_CALL_LOG},
	{"quiet", no_argument, NULL, OPT_QUIET},
	{NULL, 0, NULL, 0}
};

/* one option of the command line, with its value in optarg */
static void
take_option(int c, int argc, char **argv, int first)
{
	switch (c)
	{
		case OPT_HELP:
			usage(stdout);
			exit(0);
		case OPT_LISTEN:
			cfg.listen = optarg;
			break;
		case OPT_PORT:
			cfg.port = parse_long(optarg, 0, 65535);
			break;
		case OPT_PORT_FILE:
			cfg.port_file = optarg;
			break;
		case OPT_THREADS:
			cfg.threads = (unsigned) parse_long(optarg, 1, 1024);
			break;
		case OPT_IO_THREADS:
			cfg.io_threads = (unsigned) parse_long(optarg, 1, 64);
			break;
		case OPT_DSN:
			cfg.dsn = optarg;
			break;
		case OPT_MAIL:
			set_mail(optarg);
			break;
		case OPT_WAIT:
			cfg.wait = optarg;
			break;
		case OPT_NO_WAIT:
			cfg.no_wait = 1;
			break;
		case OPT_TTL:
			cfg.ttl = optarg;
			break;
		case OPT_LEASE:
			cfg.lease = optarg;
			break;
		case OPT_OPTIONAL_KEY:
			cfg.optional_key = 1;
			break;
		case OPT_API_KEY:
			set_api_key(optarg);
			break;
		case OPT_TEST_HOOKS:
			cfg.test_hooks = 1;
			break;
		case OPT_CALL_LOG:
			cfg.call_log = optarg;
			break;
		case OPT_QUIET:
			cfg.quiet = 1;
			break;
		default:				/* '?' and ':' */
			unknown_option(argc, argv, first);
	}
}

static void
parse_options(int argc, char **argv)
{
	int			first = optind;
	int			c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:h", options, NULL)) != -1)
	{
		take_option(c, argc, argv, first);
		first = optind;
	}
	if (optind < argc)
		unknown_option(argc, argv, optind);

	if (cfg.call_log)
	{
		call_log_fd = open(cfg.call_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
						   0644);
		if (call_log_fd < 0)
		{
			fprintf(stderr, "service: --call-log %s: %s\n", cfg.call_log,
					strerror(errno));
			exit(EXIT_USAGE);
		}
	}
	else if (cfg.quiet)
		call_log_fd = -1;
	if (cfg.nkeys == 0)
	{
		add_api_key("sk_test_acme", "acme");
		add_api_key("sk_test_globex", "globex");
	}
}

/* ---- start-up and shutdown ------------------------------------------------- */

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

/* the policies, the database, the mail API's client: 0 or an exit code */
static int
prepare(void)
{
	struct in_addr addr;

	if (inet_pton(AF_INET, cfg.listen, &addr) != 1)
	{
		fprintf(stderr, "service: bad --listen address %s (IPv4 expected)\n", cfg.listen);
		return EXIT_USAGE;
	}
	policy_wait = make_policy(cfg.wait);
	policy_nowait = make_policy("0");
	if (policy_wait == NULL || policy_nowait == NULL)
	{
		fprintf(stderr, "service: bad --wait or --ttl, or out of memory\n");
		return EXIT_USAGE;
	}
	switch (prepare_database())
	{
		case 0:
			break;
		case -2:
			return EXIT_USAGE;
		default:
			return EXIT_UNAVAILABLE;
	}
	if (mail_init() < 0)
	{
		fprintf(stderr, "service: cannot set up libcurl\n");
		return 1;
	}
	return 0;
}

static int
write_port_file(long port)
{
	FILE	   *f = fopen(cfg.port_file, "w");

	if (f == NULL || fprintf(f, "%ld\n", port) < 0 || fclose(f) != 0)
	{
		fprintf(stderr, "service: could not write %s\n", cfg.port_file);
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct MHD_Daemon *d;
	sigset_t	sigs;
	int			sig;
	int			rc;
	long		port;

	parse_options(argc, argv);
	rc = prepare();
	if (rc != 0)
		return rc;

	/* the pool threads inherit this mask: only main takes the signals */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	d = http_start(&port);
	if (d == NULL)
	{
		fprintf(stderr, "service: could not listen on %s:%ld\n", cfg.listen, cfg.port);
		return 1;
	}
	printf("service: listening on http://%s:%ld (%u workers, %u I/O threads, mail API %s:%s%s)\n",
		   cfg.listen, port, cfg.threads, cfg.io_threads, cfg.mail_host, cfg.mail_port,
		   cfg.test_hooks ? ", test hooks on" : "");
	fflush(stdout);
	if (cfg.port_file && write_port_file(port) < 0)
	{
		MHD_stop_daemon(d);
		return 1;
	}

	while (sigwait(&sigs, &sig) != 0)
		;
	fprintf(stderr, "service: stopping (signal %d)\n", sig);
	http_stop(d);
	mail_cleanup();
	idem_http_free(policy_wait);
	idem_http_free(policy_nowait);
	free(cfg.keys);
	if (cfg.call_log)
		close(call_log_fd);
	return 0;
}
