/*-------------------------------------------------------------------------
 *
 * idem_cli.c
 *	  The idem command-line tool: run a command at most once per key, from
 *	  any number of hosts or cron jobs at once.
 *
 *	  idem exec --key K [--scope S] [--ttl 24h] [--wait 30s]
 *	            [--lease 30s] [--cache-failures] -- CMD [ARG...]
 *	  idem get --key K [--scope S] [--body]
 *	  idem purge [--limit N]
 *	  idem stats
 *
 * Built on libidem's public API only (idem_run does the work of exec).
 * Connects like psql: libpq's environment, or --dsn.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "idem.h"

/* exit codes of our own (sysexits.h) */
#define EXIT_NOT_FOUND	1		/* idem get: no live record */
#define EXIT_USAGE		64		/* bad usage or bad input */
#define EXIT_MISMATCH	65		/* the key was used with another command */
#define EXIT_UNAVAILABLE 69		/* database unreachable, extension missing */
#define EXIT_SOFTWARE	70		/* any other failure */
#define EXIT_TEMPFAIL	75		/* timed out waiting for an in-flight key,
								 * or the lease was lost to another run */
#define EXIT_NOPERM		77		/* stats: not allowed to read idem_stats */

static const char usage_text[] =
"idem runs a command at most once per idempotency key, with the keys kept in\n"
"PostgreSQL by the idempotency extension.\n"
"\n"
"Usage:\n"
"  idem [--dsn DSN] exec --key K [--scope S] [--ttl 24h] [--wait 30s]\n"
"                        [--lease INTERVAL] [--cache-failures] -- CMD [ARG...]\n"
"  idem [--dsn DSN] get --key K [--scope S] [--body]\n"
"  idem [--dsn DSN] purge [--limit N]\n"
"  idem [--dsn DSN] stats\n"
"  idem --help | --version\n"
"\n"
"exec   Runs CMD unless the key is already done.  CMD's stdout is passed\n"
"       through and captured; on exit 0 the stdout and exit code are stored,\n"
"       on a non-zero exit the key is released so that a retry runs CMD\n"
"       again (--cache-failures stores failures too).  A later call with the\n"
"       same key prints the stored stdout and exits with the stored code.\n"
"       Concurrent calls wait for the one running, up to --wait (default:\n"
"       the server's idem.wait_timeout, 30s; \"0\" = do not wait).  The\n"
"       request hash is the command line: the same key with another command\n"
"       is a mismatch.  --ttl: how long the result is kept (default 24h).\n"
"       --lease INTERVAL: the run owns the key by a lease that idem renews\n"
"       while CMD runs (every third of it), instead of by its database\n"
"       session; needed behind a transaction-mode pooler (PgBouncer ...),\n"
"       where it is the default (30s), as it is when the server sets\n"
"       idem.lease.  --lease 0 forces session ownership.  If the lease runs\n"
"       out all the same (idem was stopped) and another run takes the key\n"
"       over, the result of this run is not stored and idem exits 75.\n"
"get    Shows the record of a key; --body prints only the stored stdout.\n"
"purge  Deletes expired records (at most N with --limit).\n"
"stats  Shows the extension's version, settings, counters and the number of\n"
"       records by state (the idem_stats view; needs pg_monitor).\n"
"\n"
"Connection: libpq's environment (PGHOST, PGPORT, PGDATABASE, PGUSER,\n"
"PGSERVICE ...) or --dsn with a connection string or URI.\n"
"\n"
"Exit codes: exec exits with CMD's (or the stored) exit code, 128+N when CMD\n"
"was killed by signal N, 127 when CMD could not be run; and:\n"
"  1   get: no live record for the key\n"
"  64  bad usage or bad input (empty or too long key, bad interval)\n"
"  65  the key was used with another command line (hash mismatch)\n"
"  69  database unreachable, or the idempotency extension is not installed\n"
"  70  any other failure (e.g. stdout larger than idem.max_body_bytes)\n"
"  75  timed out waiting for another run of the same key, or the lease was\n"
"      lost: another run took the key over while CMD ran\n"
"  77  stats: not allowed to read idem_stats (needs pg_monitor)\n";

static void usage_error(const char *fmt, const char *arg)
			__attribute__((format(printf, 1, 0), noreturn));

static void
usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "idem: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry \"idem --help\" for more information.\n");
	exit(EXIT_USAGE);
}

/* ---- options ----------------------------------------------------------- */

/* getopt_long's values for the long options; 'h' is also -h */
enum
{
	OPT_HELP = 'h',
	OPT_DSN = 256,
	OPT_VERSION,
	OPT_KEY,
	OPT_SCOPE,
	OPT_TTL,
	OPT_WAIT,
	OPT_LEASE,
	OPT_CACHE_FAILURES,
	OPT_BODY,
	OPT_LIMIT
};

static const struct option main_options[] = {
	{"dsn", required_argument, NULL, OPT_DSN},
	{"help", no_argument, NULL, OPT_HELP},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0}
};

static const struct option exec_options[] = {
	{"key", required_argument, NULL, OPT_KEY},
	{"scope", required_argument, NULL, OPT_SCOPE},
	{"ttl", required_argument, NULL, OPT_TTL},
	{"wait", required_argument, NULL, OPT_WAIT},
	{"lease", required_argument, NULL, OPT_LEASE},
	{"dsn", required_argument, NULL, OPT_DSN},
	{"cache-failures", no_argument, NULL, OPT_CACHE_FAILURES},
	{"help", no_argument, NULL, OPT_HELP},
	{NULL, 0, NULL, 0}
};

static const struct option get_options[] = {
	{"key", required_argument, NULL, OPT_KEY},
	{"scope", required_argument, NULL, OPT_SCOPE},
	{"dsn", required_argument, NULL, OPT_DSN},
	{"body", no_argument, NULL, OPT_BODY},
	{"help", no_argument, NULL, OPT_HELP},
	{NULL, 0, NULL, 0}
};

static const struct option purge_options[] = {
	{"limit", required_argument, NULL, OPT_LIMIT},
	{"dsn", required_argument, NULL, OPT_DSN},
	{"help", no_argument, NULL, OPT_HELP},
	{NULL, 0, NULL, 0}
};

static const struct option stats_options[] = {
	{"dsn", required_argument, NULL, OPT_DSN},
	{"help", no_argument, NULL, OPT_HELP},
	{NULL, 0, NULL, 0}
};

/* the long name of the option whose value is val */
static const char *
option_name(const struct option *options, int val)
{
	for (; options->name != NULL; options++)
		if (options->val == val)
			return options->name;
	return "";
}

/*
 * Whether arg spells the option of value val in full: "--name",
 * "--name=VALUE", or "-h" for help.  getopt_long also takes unambiguous
 * abbreviations and clusters of short options; idem never did.
 */
static bool
spelled_out(const char *arg, const struct option *options, int val)
{
	const char *name = option_name(options, val);
	size_t		n = strlen(name);

	if (val == OPT_HELP && strcmp(arg, "-h") == 0)
		return true;
	return strncmp(arg, "--", 2) == 0 && strncmp(arg + 2, name, n) == 0 &&
		(arg[2 + n] == '\0' || arg[2 + n] == '=');
}

/*
 * The next option of one command's argv (argv[0] being the command), by
 * getopt_long: its value, with optarg set, or -1 at the first argument that
 * is not an option, which is argv[optind] (if optind < argc).  Parsing
 * stops there, as it does after "--", which only exec takes (allow_dashdash;
 * *dashdash is then set when "--" ended the options).  Anything else that
 * begins with "-" is reported with unknown_fmt, and bad usage exits.
 */
static int
next_option(int argc, char **argv, const struct option *options,
			const char *unknown_fmt, bool allow_dashdash, bool *dashdash)
{
	int			first = optind;
	int			c;
	int			val;

	opterr = 0;
	c = getopt_long(argc, argv, "+:h", options, NULL);
	if (c == -1)
	{
		bool		ended_by_dashdash = optind == first + 1 &&
			strcmp(argv[first], "--") == 0;

		if (ended_by_dashdash && !allow_dashdash)
			usage_error(unknown_fmt, "--");
		if (!ended_by_dashdash && optind < argc && argv[optind][0] == '-')
			usage_error(unknown_fmt, argv[optind]);		/* a lone "-" */
		if (dashdash)
			*dashdash = ended_by_dashdash;
		return -1;
	}
	val = (c == ':') ? optopt : c;
	if (c == '?' || !spelled_out(argv[first], options, val))
		usage_error(unknown_fmt, argv[first]);
	if (c == ':')
	{
		char		name[64];

		snprintf(name, sizeof(name), "--%s", option_name(options, val));
		usage_error("option %s needs a value", name);
	}
	return c;
}

/* ---- errors ------------------------------------------------------------ */

static void
print_error(const idem_conn *conn)
{
	fprintf(stderr, "idem: %s\n", idem_errmsg(conn));
	if (*idem_errdetail(conn))
		fprintf(stderr, "idem: DETAIL: %s\n", idem_errdetail(conn));
}

/* the exit code for an outcome that is not a success */
static int
exit_code_for(const idem_conn *conn, idem_outcome outcome)
{
	switch (outcome)
	{
		case IDEM_MISMATCH:
			return EXIT_MISMATCH;
		case IDEM_IN_FLIGHT:
		case IDEM_LEASE_LOST:
			return EXIT_TEMPFAIL;
		default:
			break;
	}
	switch (idem_errcode(conn))
	{
		case IDEM_ERR_CONNECTION:
		case IDEM_ERR_NO_EXTENSION:
		case IDEM_ERR_READ_ONLY:
			return EXIT_UNAVAILABLE;
		case IDEM_ERR_BAD_INPUT:
			return EXIT_USAGE;
		default:
			return EXIT_SOFTWARE;
	}
}

static idem_conn *
connect_or_exit(const char *dsn)
{
	idem_conn  *conn = idem_connect(dsn);

	if (conn == NULL)
	{
		fprintf(stderr, "idem: out of memory\n");
		exit(EXIT_SOFTWARE);
	}
	if (!idem_connected(conn))
	{
		print_error(conn);
		idem_free(conn);
		exit(EXIT_UNAVAILABLE);
	}
	return conn;
}

static int
write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0)
	{
		ssize_t		n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t) n;
	}
	return 0;
}

/* ---- exec -------------------------------------------------------------- */

typedef struct exec_ctx
{
	char	  **argv;			/* CMD ARG... NULL */
	int			cache_failures;
	int			ran;
	int			exit_code;
	int			warned_lost;	/* told that the lease was lost */
} exec_ctx;

/* the signals passed on to CMD while it runs */
static const int forwarded_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define N_FORWARDED (sizeof(forwarded_signals) / sizeof(forwarded_signals[0]))

/* the handlers in place before CMD started, SIGPIPE's last */
typedef struct saved_signals
{
	struct sigaction old[N_FORWARDED + 1];
} saved_signals;

static volatile sig_atomic_t child_pid;

static void
forward_signal(int sig)
{
	if (child_pid > 0)
		kill((pid_t) child_pid, sig);
}

/* pass signals meant for us on to pid; keep reading if stdout closes */
static void
forward_signals_to(pid_t pid, saved_signals *saved)
{
	struct sigaction sa;
	size_t		i;

	child_pid = pid;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	for (i = 0; i < N_FORWARDED; i++)
		sigaction(forwarded_signals[i], &sa, &saved->old[i]);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, &saved->old[N_FORWARDED]);
}

static void
restore_signals(const saved_signals *saved)
{
	size_t		i;

	child_pid = 0;
	for (i = 0; i < N_FORWARDED; i++)
		sigaction(forwarded_signals[i], &saved->old[i], NULL);
	sigaction(SIGPIPE, &saved->old[N_FORWARDED], NULL);
}

/*
 * Starts CMD with its stdout on a pipe, whose reading end is *fd.  Returns
 * its pid, or -1 (said on stderr) when it could not be started.
 */
static pid_t
start_command(char **argv, int *fd)
{
	int			fds[2];
	pid_t		pid;

	if (pipe(fds) < 0)
	{
		fprintf(stderr, "idem: pipe: %s\n", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0)
	{
		fprintf(stderr, "idem: fork: %s\n", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0)
	{
		close(fds[0]);
		if (fds[1] != STDOUT_FILENO)
		{
			dup2(fds[1], STDOUT_FILENO);
			close(fds[1]);
		}
		execvp(argv[0], argv);
		fprintf(stderr, "idem: cannot run %s: %s\n", argv[0],
				strerror(errno));
		_exit(errno == ENOENT ? 127 : 126);
	}
	close(fds[1]);
	*fd = fds[0];
	return pid;
}

/*
 * Passes CMD's output on fd through to our stdout as it comes and keeps it
 * in the response, until CMD exits; returns its wait status.  A background
 * process CMD started may keep the pipe open long after; what it wrote by
 * then is kept, the rest is not waited for.
 */
static int
capture_output(idem_response *resp, exec_ctx *ctx, pid_t pid, int fd)
{
	char		buf[65536];
	int			status = 0;
	int			stdout_ok = 1;
	int			exited = 0;

	for (;;)
	{
		struct pollfd pfd = {fd, POLLIN, 0};
		ssize_t		n;
		int			ready;

		if (!exited && waitpid(pid, &status, WNOHANG) == pid)
		{
			exited = 1;
			/* drain what is already in the pipe, without waiting */
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		}
		if (!ctx->warned_lost && idem_response_lease_lost(resp))
		{
			ctx->warned_lost = 1;
			fprintf(stderr, "idem: key %s: the lease was lost while the "
					"command runs: another run took the key over; the "
					"result of this run will not be stored\n",
					idem_response_key(resp));
		}
		ready = exited ? 1 : poll(&pfd, 1, 100);
		if (ready < 0 && errno != EINTR)
			break;
		if (ready <= 0)
			continue;
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;				/* EOF, or nothing left after the exit */
		if (idem_response_append_body(resp, buf, (size_t) n) < 0)
		{
			fprintf(stderr, "idem: out of memory capturing stdout\n");
			kill(pid, SIGTERM);
			break;
		}
		if (stdout_ok && write_all(STDOUT_FILENO, buf, (size_t) n) < 0)
			stdout_ok = 0;
	}
	if (!exited)
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	return status;
}

/*
 * The handler: runs CMD, passing its stdout through and keeping it in the
 * response.  Stored when CMD exits 0 (or always with --cache-failures).
 */
static int
run_command(idem_response *resp, void *arg)
{
	exec_ctx   *ctx = arg;
	saved_signals saved;
	pid_t		pid;
	int			fd;
	int			status;

	ctx->ran = 1;
	if (idem_response_attempt(resp) > 1)
		fprintf(stderr, "idem: key %s: the run that held it is gone (it died, "
				"or its lease ran out); running again (attempt %d)\n",
				idem_response_key(resp),
				idem_response_attempt(resp));
	pid = start_command(ctx->argv, &fd);
	if (pid < 0)
	{
		ctx->exit_code = EXIT_SOFTWARE;
		return 1;
	}
	forward_signals_to(pid, &saved);
	status = capture_output(resp, ctx, pid, fd);
	close(fd);
	restore_signals(&saved);

	if (WIFEXITED(status))
		ctx->exit_code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		ctx->exit_code = 128 + WTERMSIG(status);
	else
		ctx->exit_code = EXIT_SOFTWARE;
	/* stdout of an empty run is stored as empty, not as NULL */
	idem_response_append_body(resp, "", 0);
	idem_response_set_status(resp, ctx->exit_code);
	return (ctx->exit_code == 0 || ctx->cache_failures) ? 0 : 1;
}

/* a replay: the stored stdout, and the stored exit code to exit with */
static int
replay_record(const idem_record *rec, const char *key)
{
	size_t		len;
	const void *body = idem_record_body(rec, &len);
	int			status = idem_record_status(rec);

	if (body && len && write_all(STDOUT_FILENO, body, len) < 0 &&
		errno != EPIPE)
		fprintf(stderr, "idem: writing stdout: %s\n", strerror(errno));
	if (status < 0 || status > 255)
	{
		fprintf(stderr, "idem: the stored status %d of key %s is not an "
				"exit code\n", status, key);
		return EXIT_SOFTWARE;
	}
	return status;
}

/* the exit code of a run that neither ran CMD afresh nor replayed */
static int
exec_failed(const idem_conn *conn, idem_outcome o, const char *key,
			const exec_ctx *ctx)
{
	if (o == IDEM_ERROR && idem_errcode(conn) == IDEM_ERR_HANDLER)
	{
		/* CMD failed; the key was released for a retry */
		return ctx->exit_code;
	}
	if (o == IDEM_LEASE_LOST)
	{
		fprintf(stderr, "idem: key %s: the lease was lost: it ran out while "
				"the command ran (exit code %d), and another run took the "
				"key over; the result of this run was not stored\n",
				key, ctx->exit_code);
		if (*idem_errdetail(conn))
			fprintf(stderr, "idem: DETAIL: %s\n", idem_errdetail(conn));
		return EXIT_TEMPFAIL;
	}
	print_error(conn);
	if (o == IDEM_MISMATCH)
		fprintf(stderr, "idem: key %s was used with another command line\n",
				key);
	else if (o == IDEM_IN_FLIGHT)
		fprintf(stderr, "idem: key %s is still running elsewhere "
				"(see --wait)\n", key);
	else if (ctx->ran)
		fprintf(stderr, "idem: the command ran (exit code %d) but its result "
				"could not be stored\n", ctx->exit_code);
	return exit_code_for(conn, o);
}

static int
cmd_exec(const char *dsn, int argc, char **argv)
{
	const char *key = NULL;
	const char *lease = NULL;
	idem_opts	opts = {NULL, NULL, NULL, NULL};
	exec_ctx	ctx = {NULL, 0, 0, 0, 0};
	char		hash[IDEM_HASH_SIZE];
	idem_conn  *conn;
	idem_record *rec = NULL;
	idem_outcome o;
	bool		dashdash;
	int			c;
	int			rc;

	while ((c = next_option(argc, argv, exec_options,
							"exec: unknown option %s", true, &dashdash)) != -1)
	{
		switch (c)
		{
			case OPT_KEY:
				key = optarg;
				break;
			case OPT_SCOPE:
				opts.scope = optarg;
				break;
			case OPT_TTL:
				opts.ttl = optarg;
				break;
			case OPT_WAIT:
				opts.wait = optarg;
				break;
			case OPT_LEASE:
				lease = optarg;
				break;
			case OPT_DSN:
				dsn = optarg;
				break;
			case OPT_CACHE_FAILURES:
				ctx.cache_failures = 1;
				break;
			case OPT_HELP:
				fputs(usage_text, stdout);
				return 0;
		}
	}
	if (key == NULL)
		usage_error("exec: %s is required", "--key");
	if (optind >= argc)
		usage_error("exec: no command given after %s", "--");
	ctx.argv = argv + optind;

	/* the request hash is the command line, framed part by part */
	if (idem_derive_key(hash, (size_t) (argc - optind),
						(const char *const *) ctx.argv) < 0)
	{
		fprintf(stderr, "idem: could not hash the command line\n");
		return EXIT_SOFTWARE;
	}
	opts.request_hash = hash;

	conn = connect_or_exit(dsn);
	if (lease && idem_set_lease(conn, lease) < 0)
	{
		print_error(conn);
		idem_free(conn);
		return EXIT_SOFTWARE;
	}
	o = idem_run(conn, key, &opts, run_command, &ctx, &rec);
	if (o == IDEM_FRESH)
		rc = ctx.exit_code;
	else if (o == IDEM_REPLAY)
		rc = replay_record(rec, key);
	else
		rc = exec_failed(conn, o, key, &ctx);
	idem_record_free(rec);
	idem_free(conn);
	return rc;
}

/* ---- get --------------------------------------------------------------- */

static void
format_time(char *buf, size_t size, int64_t usec)
{
	time_t		secs;
	struct tm	tm;
	char		base[32];

	if (usec == 0)
	{
		snprintf(buf, size, "-");
		return;
	}
	secs = (time_t) (usec >= 0 ? usec / 1000000 : (usec - 999999) / 1000000);
	gmtime_r(&secs, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, size, "%s.%06dZ", base,
			 (int) (usec - (int64_t) secs * 1000000));
}

/* a record, field by field (the body only by its size) */
static void
print_record(const idem_record *rec, const char *key, const char *scope)
{
	size_t		len;
	const void *body = idem_record_body(rec, &len);
	char		created[48],
				expires[48],
				lease_end[48];

	format_time(created, sizeof(created), idem_record_created_at(rec));
	format_time(expires, sizeof(expires), idem_record_expires_at(rec));
	format_time(lease_end, sizeof(lease_end),
				idem_record_lease_expires_at(rec));
	printf("key:        %s\n", key);
	printf("scope:      %s\n", scope ? scope : "");
	printf("state:      %s\n", idem_record_state(rec));
	if (idem_record_status(rec) >= 0)
		printf("status:     %d\n", idem_record_status(rec));
	printf("attempt:    %d\n", idem_record_attempt(rec));
	printf("created_at: %s\n", created);
	printf("expires_at: %s\n", expires);
	if (idem_record_lease_expires_at(rec) != 0)
		printf("lease_expires_at: %s\n", lease_end);
	if (idem_record_headers_json(rec))
		printf("headers:    %s\n", idem_record_headers_json(rec));
	if (body)
		printf("body:       %zu bytes (idem get --body prints it)\n", len);
}

static int
cmd_get(const char *dsn, int argc, char **argv)
{
	const char *key = NULL;
	idem_opts	opts = {NULL, NULL, NULL, NULL};
	int			body_only = 0;
	idem_conn  *conn;
	idem_record *rec = NULL;
	idem_outcome o;
	int			c;
	int			rc = 0;

	while ((c = next_option(argc, argv, get_options,
							"get: unknown argument %s", false, NULL)) != -1)
	{
		switch (c)
		{
			case OPT_KEY:
				key = optarg;
				break;
			case OPT_SCOPE:
				opts.scope = optarg;
				break;
			case OPT_DSN:
				dsn = optarg;
				break;
			case OPT_BODY:
				body_only = 1;
				break;
			case OPT_HELP:
				fputs(usage_text, stdout);
				return 0;
		}
	}
	if (optind < argc)
		usage_error("get: unknown argument %s", argv[optind]);
	if (key == NULL)
		usage_error("get: %s is required", "--key");

	conn = connect_or_exit(dsn);
	o = idem_get(conn, key, &opts, &rec);
	if ((o == IDEM_REPLAY || o == IDEM_IN_FLIGHT) && body_only)
	{
		size_t		len;
		const void *body = idem_record_body(rec, &len);

		if (body && len)
			write_all(STDOUT_FILENO, body, len);
	}
	else if (o == IDEM_REPLAY || o == IDEM_IN_FLIGHT)
		print_record(rec, key, opts.scope);
	else if (o == IDEM_NOT_FOUND)
	{
		fprintf(stderr, "idem: no live record for key %s\n", key);
		rc = EXIT_NOT_FOUND;
	}
	else
	{
		print_error(conn);
		rc = exit_code_for(conn, o);
	}
	idem_record_free(rec);
	idem_free(conn);
	return rc;
}

/* ---- purge ------------------------------------------------------------- */

static int
cmd_purge(const char *dsn, int argc, char **argv)
{
	const char *limit_text = NULL;
	long		limit = 0;
	idem_conn  *conn;
	int64_t		n;
	int			c;
	int			rc = 0;

	while ((c = next_option(argc, argv, purge_options,
							"purge: unknown argument %s", false, NULL)) != -1)
	{
		switch (c)
		{
			case OPT_LIMIT:
				limit_text = optarg;
				break;
			case OPT_DSN:
				dsn = optarg;
				break;
			case OPT_HELP:
				fputs(usage_text, stdout);
				return 0;
		}
	}
	if (optind < argc)
		usage_error("purge: unknown argument %s", argv[optind]);
	if (limit_text)
	{
		char	   *end;

		errno = 0;
		limit = strtol(limit_text, &end, 10);
		if (errno || *end || end == limit_text || limit <= 0 || limit > 2147483647L)
			usage_error("purge: --limit needs a positive integer, not \"%s\"",
						limit_text);
	}
	conn = connect_or_exit(dsn);
	n = idem_purge(conn, (int) limit);
	if (n < 0)
	{
		print_error(conn);
		rc = exit_code_for(conn, IDEM_ERROR);
	}
	else
		printf("purged %lld expired record%s\n", (long long) n, n == 1 ? "" : "s");
	idem_free(conn);
	return rc;
}

/* ---- stats ------------------------------------------------------------- */

/*
 * The extension's schema as quote_ident() spells it (a name of at most 63
 * bytes, each quote doubled, in quotes), and the statements naming it.
 */
#define SCHEMA_SIZE		(2 * 63 + 3)
#define STATS_SQL_SIZE	(SCHEMA_SIZE + 512)

/* prints every row of res as "column value" lines */
static void
print_rows(const PGresult *res)
{
	int			r,
				c;

	for (r = 0; r < PQntuples(res); r++)
	{
		if (r > 0)
			printf("\n");
		for (c = 0; c < PQnfields(res); c++)
			if (!PQgetisnull(res, r, c))
				printf("%-20s %s\n", PQfname(res, c), PQgetvalue(res, r, c));
	}
}

/*
 * Prints the database, the extension's version and schema; sets *schema
 * to the schema's name quoted for SQL, and *has_view to whether it has the
 * idem_stats view (1.1 on).  Returns 0, or the exit code when the
 * extension cannot be found.
 */
static int
stats_extension(PGconn *pg, char *schema, size_t size, bool *has_view)
{
	PGresult   *res;

	res = PQexec(pg,
				 "SELECT e.extversion, n.nspname, quote_ident(n.nspname), "
				 "  EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
				 "          WHERE c.relname = 'idem_stats' "
				 "            AND c.relnamespace = e.extnamespace) "
				 "FROM pg_catalog.pg_extension e "
				 "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
				 "WHERE e.extname = 'idempotency'");
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "idem: %s", PQresultErrorMessage(res));
		PQclear(res);
		return EXIT_UNAVAILABLE;
	}
	if (PQntuples(res) == 0)
	{
		fprintf(stderr, "idem: the idempotency extension is not installed in "
				"database \"%s\"\nidem: DETAIL: Run CREATE EXTENSION "
				"idempotency.\n", PQdb(pg));
		PQclear(res);
		return EXIT_UNAVAILABLE;
	}
	printf("%-20s %s\n", "database", PQdb(pg));
	printf("%-20s %s\n", "extension", PQgetvalue(res, 0, 0));
	printf("%-20s %s\n", "schema", PQgetvalue(res, 0, 1));
	snprintf(schema, size, "%s", PQgetvalue(res, 0, 2));
	*has_view = PQgetvalue(res, 0, 3)[0] == 't';
	PQclear(res);
	return 0;
}

/* the module's settings, which exist once its library is loaded */
static void
stats_settings(PGconn *pg, const char *schema)
{
	char		sql[STATS_SQL_SIZE];
	PGresult   *res;

	snprintf(sql, sizeof(sql),
			 "SELECT %s.idem_derive_key('idem stats'), "
			 "  pg_catalog.current_setting('idem.default_ttl', true) AS default_ttl, "
			 "  pg_catalog.current_setting('idem.wait_timeout', true) AS wait_timeout, "
			 "  pg_catalog.current_setting('idem.lease', true) AS lease, "
			 "  pg_catalog.current_setting('idem.max_body_bytes', true) AS max_body_bytes",
			 schema);
	res = PQexec(pg, sql);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		int			c;

		for (c = 1; c < PQnfields(res); c++)
			if (!PQgetisnull(res, 0, c))
				printf("%-20s %s\n", PQfname(res, c), PQgetvalue(res, 0, c));
	}
	PQclear(res);
}

/* the idem_stats view: counters and the number of records by state */
static int
stats_view(PGconn *pg, const char *schema)
{
	char		sql[STATS_SQL_SIZE];
	PGresult   *res;
	int			rc = 0;

	snprintf(sql, sizeof(sql), "SELECT * FROM %s.idem_stats", schema);
	res = PQexec(pg, sql);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		printf("\n");
		print_rows(res);
	}
	else
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		fprintf(stderr, "idem: %s", PQresultErrorMessage(res));
		if (state && strcmp(state, "42501") == 0)
			fprintf(stderr, "idem: DETAIL: idem_stats is readable by members "
					"of pg_monitor (GRANT pg_monitor TO %s).\n", PQuser(pg));
		rc = (state && strcmp(state, "42501") == 0) ? EXIT_NOPERM : EXIT_SOFTWARE;
	}
	PQclear(res);
	return rc;
}

/*
 * The extension's version and settings, then what its idem_stats view
 * says.  The key table itself is not readable by PUBLIC, and this tool
 * does not try: idem_stats is granted to pg_monitor.
 */
static int
cmd_stats(const char *dsn, int argc, char **argv)
{
	idem_conn  *conn;
	PGconn	   *pg;
	char		schema[SCHEMA_SIZE];
	bool		has_view;
	int			c;
	int			rc;

	while ((c = next_option(argc, argv, stats_options,
							"stats: unknown argument %s", false, NULL)) != -1)
	{
		switch (c)
		{
			case OPT_DSN:
				dsn = optarg;
				break;
			case OPT_HELP:
				fputs(usage_text, stdout);
				return 0;
		}
	}
	if (optind < argc)
		usage_error("stats: unknown argument %s", argv[optind]);
	conn = connect_or_exit(dsn);
	pg = idem_pgconn(conn);

	rc = stats_extension(pg, schema, sizeof(schema), &has_view);
	if (rc == 0)
		stats_settings(pg, schema);
	if (rc == 0 && !has_view)
		printf("\nrecord counts: not available (this version of the extension "
			   "has no idem_stats)\n");
	else if (rc == 0)
		rc = stats_view(pg, schema);
	idem_free(conn);
	return rc;
}

/* ---- main -------------------------------------------------------------- */

int
main(int argc, char **argv)
{
	const char *dsn = NULL;
	const char *command;
	int			c;

	while ((c = next_option(argc, argv, main_options, "unknown option %s",
							false, NULL)) != -1)
	{
		switch (c)
		{
			case OPT_DSN:
				dsn = optarg;
				break;
			case OPT_HELP:
				fputs(usage_text, stdout);
				return 0;
			case OPT_VERSION:
				printf("idem (libidem) %d.%d.%d\n", IDEM_VERSION_MAJOR,
					   IDEM_VERSION_MINOR, IDEM_VERSION_PATCH);
				return 0;
		}
	}
	if (optind >= argc)
		usage_error("%s", "no command given (exec, get, purge or stats)");
	command = argv[optind];
	if (strcmp(command, "help") == 0)
	{
		fputs(usage_text, stdout);
		return 0;
	}

	/* the command parses its own options, from its name on */
	argc -= optind;
	argv += optind;
	optind = 1;
	if (strcmp(command, "exec") == 0)
		return cmd_exec(dsn, argc, argv);
	if (strcmp(command, "get") == 0)
		return cmd_get(dsn, argc, argv);
	if (strcmp(command, "purge") == 0)
		return cmd_purge(dsn, argc, argv);
	if (strcmp(command, "stats") == 0)
		return cmd_stats(dsn, argc, argv);
	usage_error("unknown command \"%s\"", command);
	return EXIT_USAGE;
}
