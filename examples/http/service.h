/*
 * service.h: what the parts of the HTTP example share.
 *
 *   service.c  options, start-up and shutdown
 *   http.c     the HTTP plumbing: libmicrohttpd's callbacks, the queue of
 *              requests, the worker threads, the responses
 *   routes.c   the routes: validation, tenants, the handlers, the mail API
 *   db.c       the database: each worker's session and libidem handle, the
 *              call log, the schema, the charges' SQL
 *
 * See service.c for what the service does.
 */
#ifndef EXAMPLE_SERVICE_H
#define EXAMPLE_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "idem.h"

#define MAX_BODY (64 * 1024)
#define MAX_HEADERS 100

/* ---- configuration (service.c) ------------------------------------------ */

typedef struct api_key
{
	const char *token;
	const char *tenant;
} api_key;

typedef struct service_config
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
} service_config;

extern service_config cfg;

/* two policies, identical but for waiting; read-only once built */
extern idem_http *policy_wait;
extern idem_http *policy_nowait;

/* where the call log goes: stderr, or --call-log; -1 when off (--quiet) */
extern int	call_log_fd;

/* "service: " and the line, on stderr */
extern void logf_(const char *fmt,...) __attribute__((format(printf, 1, 2)));

/* ---- one request (http.c) ----------------------------------------------- */

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
	char	   *body;			/* NUL-terminated; NULL while empty */
	size_t		body_len;
	int			too_large;
	int			oom;
	idem_header *headers;		/* copies, owned */
	size_t		nheaders;
	job_state	state;			/* under the queue's lock */
	int			orphaned;		/* the connection went while queued */
	unsigned	status;
	struct MHD_Response *response;
	struct job *next;
} job;

/* the value of a request header (case-insensitive name), or NULL */
extern const char *job_header(const job *j, const char *name);

/*
 * The response of a job, left for the polling thread to send.  Each sets
 * j->response, NULL when out of memory (the connection is then dropped);
 * extra holds name, value, ..., NULL (or is NULL).
 */
extern void respond_text(job *j, unsigned status, const char *content_type,
						 const char *body, size_t len,
						 const char *const *extra);
extern void respond_error(job *j, unsigned status, const char *type,
						  const char *code, const char *message,
						  const char *const *extra);
extern void respond_problem(job *j, idem_outcome o, idem_error err,
							unsigned status, const char *key,
							const char *const *extra);
extern void respond_record(job *j, const idem_record *rec, unsigned status,
						   int replayed, const char *set_cookie,
						   const char *authorization);

/* the Stripe shape: {"error": {"type": ..., "code": ..., "message": ...}} */
extern char *error_body(const char *type, const char *code,
						const char *message, size_t *len);

/*
 * The workers and the HTTP daemon: http_start starts both, listening on
 * cfg.listen:cfg.port, and sets *port to the port bound; http_stop lets
 * the workers finish what is queued, then stops everything.
 */
extern struct MHD_Daemon *http_start(long *port);
extern void http_stop(struct MHD_Daemon *d);

/* ---- the worker's database session (db.c) -------------------------------- */

typedef struct worker
{
	int			id;				/* 1, 2, ... for the logs */
	PGconn	   *pg;
	idem_conn  *idem;			/* wraps pg: the same session */
	const char *method;			/* the request in hand, for the call log */
	const char *url;
} worker;

extern int	worker_ready(worker *w, char *errbuf, size_t errlen);
extern void worker_close(worker *w);
extern int	exec_simple(PGconn *pg, const char *sql, char *errbuf,
						size_t errlen);

/* start-up: 0, -1 (the database is not usable) or -2 (bad usage) */
extern int	prepare_database(void);

/* a charge as the database keeps it */
typedef struct charge_row
{
	long long	id;
	long long	amount;
	char		currency[16];	/* three letters, lower case */
	char	   *description;	/* malloc'd when read, or NULL */
	long long	created;		/* seconds since the epoch */
} charge_row;

/*
 * Inserts a charge (key NULL when unprotected) in the worker's session,
 * filling row->id and row->created; reads one of a tenant's charges.
 * 1 when done, 0 when there is no such charge, -1 on a database error
 * (logged).
 */
extern int	db_insert_charge(worker *w, const char *tenant, const char *key,
							 charge_row *row);
extern int	db_read_charge(worker *w, const char *tenant, charge_row *row);

/* ---- routes (routes.c) --------------------------------------------------- */

/* whether t is a valid tenant name: 1 to 64 of [A-Za-z0-9._-] */
extern int	valid_tenant(const char *t);

/* runs one request on worker w; leaves the response in j */
extern void dispatch(worker *w, job *j);

/* the mail API's client: before any thread starts, and at the end */
extern int	mail_init(void);
extern void mail_cleanup(void);

#endif							/* EXAMPLE_SERVICE_H */
