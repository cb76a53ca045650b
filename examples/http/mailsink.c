/*
 * mailsink.c: a stand-in for an external mail API, for the HTTP example.
 *
 * A tiny HTTP server on loopback that "sends" an email for each
 * POST /send and counts the calls per Idempotency-Key.  It honours the key
 * the way a payment or mail provider does: a repeated key is answered with
 * the first response (and Idempotent-Replayed: true) and the email is not
 * sent again, so the count of emails sent per key never goes above one.
 *
 *   mailsink [--listen ADDR] [--port N] [--port-file FILE]
 *
 *   POST /send          send one email; Idempotency-Key required (400)
 *                       202 {"id": "msg_1", "key": "...", "duplicate": false}
 *                       X-Test-Fail: 1 answers 503 and counts nothing
 *   GET  /stats         {"calls": N, "sent": M, "keys": K}
 *   GET  /stats/KEY     {"key": "KEY", "calls": n, "sent": 0|1, "id": ...}
 *
 * --port 0 (the default) picks a free port; the line
 * "mailsink: listening on http://ADDR:PORT" on stdout says which, and
 * --port-file writes the port to FILE.  SIGINT / SIGTERM stop it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "jsonout.h"

#define MAX_BODY (64 * 1024)

typedef struct sent_mail
{
	char	   *key;
	char		id[32];
	unsigned long calls;
	size_t		accepted_bytes; /* by the first call: its answer is replayed */
} sent_mail;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sent_mail *mails;
static size_t nmails,
			cap_mails;
static unsigned long total_calls;

typedef struct request
{
	size_t		body_len;		/* only counted */
	int			too_large;
} request;

static enum MHD_Result
answer(struct MHD_Connection *conn, unsigned status, const char *body,
	   int replayed)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(strlen(body), (void *) body,
										MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "application/json");
	if (replayed)
		MHD_add_response_header(r, "Idempotent-Replayed", "true");
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* answers with obj's text, and frees obj */
static enum MHD_Result
answer_json(struct MHD_Connection *conn, unsigned status, json_object *obj,
			int replayed)
{
	size_t		len;
	char	   *text = jo_text(obj, &len);
	enum MHD_Result ret;

	json_object_put(obj);
	ret = answer(conn, status, text ? text : "{}", replayed);
	free(text);
	return ret;
}

/* the answer of a send: the first one's, and whether this call sent */
static json_object *
send_answer(const sent_mail *m, int dup)
{
	json_object *obj = jo_new();

	jo_add_string(obj, "id", m->id);
	jo_add_string(obj, "key", m->key);
	jo_add_int(obj, "accepted_bytes", (int64_t) m->accepted_bytes);
	jo_add_bool(obj, "duplicate", dup);
	return obj;
}

static sent_mail *
find_mail(const char *key)
{
	size_t		i;

	for (i = 0; i < nmails; i++)
		if (strcmp(mails[i].key, key) == 0)
			return &mails[i];
	return NULL;
}

/* a new key's record, under lock; NULL when out of memory */
static sent_mail *
new_mail(const char *key, size_t accepted_bytes)
{
	sent_mail  *m;

	if (nmails == cap_mails)
	{
		size_t		ncap = cap_mails ? cap_mails * 2 : 64;
		sent_mail  *nm = realloc(mails, ncap * sizeof(sent_mail));

		if (nm == NULL)
			return NULL;
		mails = nm;
		cap_mails = ncap;
	}
	m = &mails[nmails];
	memset(m, 0, sizeof(*m));
	m->key = strdup(key);
	if (m->key == NULL)
		return NULL;
	nmails++;
	snprintf(m->id, sizeof(m->id), "msg_%zu", nmails);
	m->accepted_bytes = accepted_bytes;
	return m;
}

static enum MHD_Result
do_send(struct MHD_Connection *conn, request *req)
{
	const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												  "Idempotency-Key");
	const char *failhdr = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
													  "X-Test-Fail");
	sent_mail  *m;
	json_object *out;
	int			dup;

	if (failhdr && strcmp(failhdr, "1") == 0)
		return answer(conn, 503, "{\"error\": \"mail service unavailable (test)\"}\n", 0);
	if (key == NULL || key[0] == '\0')
		return answer(conn, 400, "{\"error\": \"Idempotency-Key header required\"}\n", 0);
	if (req->too_large)
		return answer(conn, 413, "{\"error\": \"body too large\"}\n", 0);

	pthread_mutex_lock(&lock);
	total_calls++;
	m = find_mail(key);
	dup = m != NULL;
	if (m == NULL && (m = new_mail(key, req->body_len)) == NULL)
	{
		pthread_mutex_unlock(&lock);
		return answer(conn, 500, "{\"error\": \"out of memory\"}\n", 0);
	}
	m->calls++;
	out = send_answer(m, dup);
	printf("mailsink: %s %s key=%s calls=%lu\n", dup ? "duplicate" : "sent",
		   m->id, key, m->calls);
	fflush(stdout);
	pthread_mutex_unlock(&lock);

	return answer_json(conn, 202, out, dup);
}

static enum MHD_Result
do_stats(struct MHD_Connection *conn, const char *key)
{
	json_object *out = jo_new();
	unsigned	status = 200;

	pthread_mutex_lock(&lock);
	if (key == NULL)
	{
		jo_add_int(out, "calls", (int64_t) total_calls);
		jo_add_int(out, "sent", (int64_t) nmails);
		jo_add_int(out, "keys", (int64_t) nmails);
	}
	else
	{
		sent_mail  *m = find_mail(key);

		jo_add_string(out, "key", key);
		jo_add_int(out, "calls", m ? (int64_t) m->calls : 0);
		jo_add_int(out, "sent", m ? 1 : 0);
		jo_add_string(out, "id", m ? m->id : NULL);
		if (m == NULL)
			status = 404;
	}
	pthread_mutex_unlock(&lock);
	return answer_json(conn, status, out, 0);
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
	   const char *method, const char *version, const char *upload_data,
	   size_t *upload_data_size, void **con_cls)
{
	request    *req = *con_cls;

	(void) cls;
	(void) version;
	(void) upload_data;			/* the body is only counted */
	if (req == NULL)
	{
		req = calloc(1, sizeof(request));
		if (req == NULL)
			return MHD_NO;
		*con_cls = req;
		return MHD_YES;
	}
	if (*upload_data_size)
	{
		if (req->body_len + *upload_data_size > MAX_BODY)
			req->too_large = 1;
		else
			req->body_len += *upload_data_size;
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (strcmp(url, "/send") == 0)
	{
		if (strcmp(method, "POST") != 0)
			return answer(conn, 405, "{\"error\": \"method not allowed\"}\n", 0);
		return do_send(conn, req);
	}
	if (strcmp(method, "GET") == 0 && strcmp(url, "/stats") == 0)
		return do_stats(conn, NULL);
	if (strcmp(method, "GET") == 0 && strncmp(url, "/stats/", 7) == 0 && url[7])
		return do_stats(conn, url + 7);
	return answer(conn, 404, "{\"error\": \"not found\"}\n", 0);
}

static void
completed(void *cls, struct MHD_Connection *conn, void **con_cls,
		  enum MHD_RequestTerminationCode toe)
{
	request    *req = *con_cls;

	(void) cls;
	(void) conn;
	(void) toe;
	if (req)
	{
		free(req);
		*con_cls = NULL;
	}
}

static void
usage(void)
{
	fprintf(stderr, "usage: mailsink [--listen ADDR] [--port N] [--port-file FILE]\n");
	exit(64);
}

int
main(int argc, char **argv)
{
	const char *listen_addr = "127.0.0.1";
	const char *port_file = NULL;
	long		port = 0;
	struct sockaddr_in sa;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	sigset_t	sigs;
	int			sig,
				c;
	static const struct option options[] = {
		{"listen", required_argument, NULL, 'l'},
		{"port", required_argument, NULL, 'p'},
		{"port-file", required_argument, NULL, 'f'},
		{NULL, 0, NULL, 0}
	};

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+", options, NULL)) != -1)
	{
		char	   *end;

		switch (c)
		{
			case 'l':
				listen_addr = optarg;
				break;
			case 'p':
				port = strtol(optarg, &end, 10);
				if (*end || port < 0 || port > 65535)
					usage();
				break;
			case 'f':
				port_file = optarg;
				break;
			default:
				usage();
		}
	}
	if (optind < argc)
		usage();

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t) port);
	if (inet_pton(AF_INET, listen_addr, &sa.sin_addr) != 1)
	{
		fprintf(stderr, "mailsink: bad --listen address %s (IPv4 expected)\n", listen_addr);
		return 64;
	}

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG,
						 0, NULL, NULL, handle, NULL,
						 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
						 MHD_OPTION_THREAD_POOL_SIZE, (unsigned int) 2,
						 MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
						 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 30,
						 MHD_OPTION_END);
	if (d == NULL)
	{
		fprintf(stderr, "mailsink: could not listen on %s:%ld: %s\n",
				listen_addr, port, strerror(errno));
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	if (info)
		port = info->port;
	printf("mailsink: listening on http://%s:%ld\n", listen_addr, port);
	fflush(stdout);
	if (port_file)
	{
		FILE	   *f = fopen(port_file, "w");

		if (f == NULL || fprintf(f, "%ld\n", port) < 0 || fclose(f) != 0)
		{
			fprintf(stderr, "mailsink: could not write %s\n", port_file);
			MHD_stop_daemon(d);
			return 1;
		}
	}

	while (sigwait(&sigs, &sig) != 0)
		;
	MHD_stop_daemon(d);
	printf("mailsink: stopped (%lu calls, %zu sent)\n", total_calls, nmails);
	for (size_t k = 0; k < nmails; k++)
		free(mails[k].key);
	free(mails);
	return 0;
}
