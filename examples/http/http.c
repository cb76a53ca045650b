/*
 * http.c: the HTTP example's plumbing on libmicrohttpd.
 *
 * libmicrohttpd's internal polling thread pool (--io-threads) only reads
 * requests and writes responses.  Each complete request is suspended
 * (MHD_suspend_connection) and queued to a pool of worker threads
 * (--threads), each with its database session (db.c); the worker runs the
 * route (routes.c), leaves the response in the job and resumes the
 * connection.  So a duplicate that waits in the database for the request
 * in flight holds one worker, never the other connections.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "jsonout.h"
#include "service.h"

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static job *queue_head;
static job *queue_tail;
static int	stopping;

static pthread_t *workers;
static unsigned nworkers;

/* ---- responses (built by the workers) ------------------------------------ */

const char *
job_header(const job *j, const char *name)
{
	size_t		i;

	for (i = 0; i < j->nheaders; i++)
		if (strcasecmp(j->headers[i].name, name) == 0)
			return j->headers[i].value;
	return NULL;
}

void
respond_text(job *j, unsigned status, const char *content_type,
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

char *
error_body(const char *type, const char *code, const char *message,
		   size_t *len)
{
	json_object *outer = jo_new();
	json_object *error = jo_new();
	char	   *text;

	jo_add_string(error, "type", type);
	if (code)
		jo_add_string(error, "code", code);
	jo_add_string(error, "message", message);
	jo_add(outer, "error", error);
	text = jo_text(outer, len);
	json_object_put(outer);
	return text;
}

void
respond_error(job *j, unsigned status, const char *type, const char *code,
			  const char *message, const char *const *extra)
{
	size_t		len;
	char	   *body = error_body(type, code, message, &len);

	j->response = NULL;
	if (body == NULL)
		return;
	respond_text(j, status, "application/json", body, len, extra);
	free(body);
}

/*
 * An answer of the idempotency layer as RFC 9457 problem details (libidem
 * builds them), for a client whose Accept header asks for them.
 */
void
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
	respond_text(j, status, IDEM_HTTP_PROBLEM_CONTENT_TYPE, body, (size_t) n,
				 extra);
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
 * keeps them in.  set_cookie and authorization (empty: none) go only to
 * the client whose request ran the handler.
 */
void
respond_record(job *j, const idem_record *rec, unsigned status, int replayed,
			   const char *set_cookie, const char *authorization)
{
	struct MHD_Response *r;
	size_t		len = 0,
				n = idem_record_header_count(rec),
				i;
	const void *body = idem_record_body(rec, &len);
	hdr_ref    *h = calloc(n ? n : 1, sizeof(hdr_ref));

	j->response = NULL;
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
	else
	{
		if (set_cookie[0])
			MHD_add_response_header(r, "Set-Cookie", set_cookie);
		if (authorization[0])
			MHD_add_response_header(r, "Authorization", authorization);
	}
	j->status = status;
	j->response = r;
}

/* ---- the workers ---------------------------------------------------------- */

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
	free(j->body);
	free(j->method);
	free(j->url);
	free(j);
}

/* the next job of the queue; NULL when stopping and the queue is drained */
static job *
next_job(void)
{
	job		   *j;

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
	return j;
}

static void *
worker_main(void *arg)
{
	worker		w;
	job		   *j;

	memset(&w, 0, sizeof(w));
	w.id = (int) (intptr_t) arg;
	while ((j = next_job()) != NULL)
	{
		int			orphaned;

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

/* keeps a piece of the body (at most MAX_BODY bytes in all) */
static void
append_body(job *j, const char *data, size_t len)
{
	char	   *nb;

	if (j->body_len + len > MAX_BODY)
	{
		j->too_large = 1;
		return;
	}
	if (j->too_large || j->oom)
		return;
	nb = realloc(j->body, j->body_len + len + 1);
	if (nb == NULL)
	{
		j->oom = 1;
		return;
	}
	memcpy(nb + j->body_len, data, len);
	j->body = nb;
	j->body_len += len;
	j->body[j->body_len] = '\0';
}

static enum MHD_Result
answer_healthz(struct MHD_Connection *conn)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(13, (void *) "{\"ok\": true}\n",
										MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "application/json");
	ret = MHD_queue_response(conn, 200, r);
	MHD_destroy_response(r);
	return ret;
}

/* hands a complete request to a worker, which resumes the connection */
static enum MHD_Result
queue_job(struct MHD_Connection *conn, job *j)
{
	if (j->oom)
		return MHD_NO;
	MHD_get_connection_values(conn, MHD_HEADER_KIND, copy_header, j);
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
}

/* sends the response the worker left */
static enum MHD_Result
send_job(struct MHD_Connection *conn, job *j)
{
	enum MHD_Result ret;

	if (j->response == NULL)
		return MHD_NO;			/* out of memory: drop the connection */
	ret = MHD_queue_response(conn, j->status, j->response);
	MHD_destroy_response(j->response);
	j->response = NULL;
	pthread_mutex_lock(&queue_lock);
	j->state = JOB_SENT;
	pthread_mutex_unlock(&queue_lock);
	return ret;
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
	   const char *method, const char *version, const char *upload_data,
	   size_t *upload_data_size, void **con_cls)
{
	job		   *j = *con_cls;
	job_state	state;

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
		append_body(j, upload_data, *upload_data_size);
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
				return answer_healthz(conn);
			return queue_job(conn, j);
		case JOB_DONE:
			return send_job(conn, j);
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

/* ---- start and stop --------------------------------------------------------- */

struct MHD_Daemon *
http_start(long *port)
{
	struct sockaddr_in sa;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t) cfg.port);
	if (inet_pton(AF_INET, cfg.listen, &sa.sin_addr) != 1)
		return NULL;			/* checked by the caller already */

	workers = calloc(cfg.threads, sizeof(pthread_t));
	if (workers == NULL)
		return NULL;
	for (nworkers = 0; nworkers < cfg.threads; nworkers++)
		if (pthread_create(&workers[nworkers], NULL, worker_main,
						   (void *) (intptr_t) (nworkers + 1)) != 0)
		{
			fprintf(stderr, "service: cannot start worker threads\n");
			exit(1);
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
		return NULL;
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	*port = info ? info->port : cfg.port;
	return d;
}

void
http_stop(struct MHD_Daemon *d)
{
	MHD_socket	lsock;
	unsigned	i;

	/* no new connections; the workers finish what is queued and resume
	 * those connections; then everything closes */
	lsock = MHD_quiesce_daemon(d);
	pthread_mutex_lock(&queue_lock);
	stopping = 1;
	pthread_cond_broadcast(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
	for (i = 0; i < nworkers; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	MHD_stop_daemon(d);
	if (lsock != MHD_INVALID_SOCKET)
		close(lsock);
}
