/*-------------------------------------------------------------------------
 *
 * idem_int.h
 *	  Definitions shared by the library's source files; not installed.
 *
 * Everything here has hidden visibility (the library is built with
 * -fvisibility=hidden) and a name starting with "idem__", so that the static
 * library does not collide with the application's symbols either.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_INT_H
#define IDEM_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <libpq-fe.h>

#include "idem.h"

/*
 * The statements, prepared lazily once per connection (or sent unnamed
 * behind a proxy).  Each has two forms: with owner and lease arguments
 * (extension 1.2 and later) and without (1.0, 1.1).
 */
typedef enum idem_stmt
{
	IDEM_STMT_RESERVE = 0,
	IDEM_STMT_COMMIT,
	IDEM_STMT_RELEASE,
	IDEM_STMT_GET,
	IDEM_STMT_PURGE,
	IDEM_STMT_EXTEND,			/* 1.2 and later only */
	IDEM_STMT_RESERVE_IN_BLOCK, /* 1.2 and later: without lease_left_ms */
	IDEM_STMT_BEGIN,			/* a runner's block: BEGIN with the reserve */
	IDEM_STMT_END,				/* and COMMIT with the commit */
	IDEM_NSTMTS
} idem_stmt;

/* random bytes of an owner token; the token is their lowercase hex */
#define IDEM_OWNER_BYTES 16

/* the lease of a handle behind a proxy when neither it nor the server says */
#define IDEM_PROXY_LEASE "30s"

/* the longest slice of a wait for a key in flight, in ms */
#define IDEM_MAX_SLICE_MS 1000

/* room for a quoted schema name and a dot: NAMEDATALEN 64, quotes doubled */
#define IDEM_SCHEMA_LEN (2 * 64 + 4)

/* microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch */
#define IDEM_PG_EPOCH_OFFSET_USEC INT64_C(946684800000000)

/*
 * What the library learns about the server session once per connection
 * (see probe() in idem_conn.c); forgotten on reconnect.
 */
typedef struct idem_session
{
	int			probed;
	int			backend_pid;	/* PQbackendPID when probed */
	int			proxied;		/* PQbackendPID != pg_backend_pid() */
	int			owners;			/* extension 1.2+: owner and lease arguments */
	int			unnamed;		/* unnamed statements: named ones may vanish */
	int64_t		wait_ms;		/* idem.wait_timeout */
	int64_t		lease_ms;		/* idem.lease (0: session owners) */
	char		extversion[32]; /* "" when not installed */
	char		schema[IDEM_SCHEMA_LEN];	/* the extension's, quoted, and a
										 * dot; "" when not installed */
	char	   *sql[IDEM_NSTMTS];	/* the statements with that schema */
} idem_session;

/*
 * Renews the lease of a reservation while its handler runs, from a thread
 * of its own with a connection of its own (opened from the handle's
 * conninfo the first time, kept until idem_free).  Everything but lost is
 * read and written only under mu, or while the thread is not running.
 */
typedef struct idem_renewer
{
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t	thread;
	int			running;
	int			stop;
	atomic_int	lost;			/* the lease is gone: IK409 / IK404 on extend */
	PGconn	   *pg;
	char	  **keywords;		/* the handle's conninfo, NULL-terminated */
	char	  **values;
	char	   *key;
	char	   *scope;
	char		owner[2 * IDEM_OWNER_BYTES + 1];
	char		schema[IDEM_SCHEMA_LEN];	/* as in idem_session */
	int			attempt;		/* of the reservation we hold */
	int64_t		period_ms;
	int			renewals;		/* successful idem_extend calls, this run */
	char		errmsg[512];	/* why the lease was lost */
} idem_renewer;

struct idem_conn
{
	PGconn	   *pg;
	int			owned;			/* we opened pg and close it */
	unsigned	prepared;		/* bit per idem_stmt and form */
	idem_session sess;

	char		owner[2 * IDEM_OWNER_BYTES + 1];	/* this handle's token */
	char	   *lease;			/* idem_set_lease; NULL = automatic */
	int			lease_resolved; /* lease_ms is lease in ms */
	int64_t		lease_ms;
	int			lease_seen;		/* a reservation of ours came back
								 * lease-owned */
	char	   *wait_text;		/* the last opts->wait turned into ms */
	int64_t		wait_ms;
	idem_renewer *renewer;		/* NULL until a lease-owned handler runs */

	idem_error	err;
	char		errmsg[1024];	/* "" = none */
	char		errdetail[1024];
	char		sqlstate[6];

	char	   *run_id;
	idem_stats	stats;

	idem_observer_fn observer;	/* NULL: calls are not observed */
	void	   *observer_arg;
	int			last_waited;	/* the last reserve's idem_event.waited */

	int			transaction;	/* idem_set_transaction */
	int			begin_next;		/* BEGIN before the next statement */
	int			commit_next;	/* COMMIT after the next statement */
};

typedef struct idem_hdr
{
	char	   *name;
	char	   *value;
} idem_hdr;

struct idem_record
{
	int			fresh;
	char	   *state;
	int			status;			/* -1 = NULL */
	char	   *headers_json;	/* NULL = NULL */
	unsigned char *body;		/* NULL = NULL; NUL-terminated beyond len */
	size_t		body_len;
	int			attempt;
	int64_t		created_at;
	int64_t		expires_at;
	char	   *owner;			/* NULL unless the reserve made us owner */
	int64_t		lease_expires_at;	/* 0: session owner, or not in flight */
	int			has_lease_left;
	int64_t		lease_left_ms;	/* lease_expires_at - the server's now() */
	idem_hdr   *hdrs;
	size_t		nhdrs;
};

struct idem_response
{
	int			status;
	unsigned char *body;
	size_t		body_len;
	size_t		body_cap;
	int			has_body;
	idem_hdr   *hdrs;
	size_t		nhdrs;
	size_t		hdr_cap;
	char	   *json;			/* cache of idem_response_headers_json */
	/* set by the runners */
	int			attempt;
	const char *key;
	idem_renewer *renewer;		/* renewing its lease, or NULL */
};

/*
 * What an observed call gathers on its way to its idem_event: begun (the
 * clock read) only when the handle has an observer, so that an unobserved
 * call reads no clock.  state is a static string.
 */
typedef struct idem_call
{
	int64_t		started_us;
	int			attempt;
	int			waited;
	int			leased;
	int			status;
	int64_t		count;
	const char *state;
} idem_call;

/* idem_conn.c */
idem_conn  *idem__conn_new(PGconn *pg, int owned);
void		idem__forget_session(idem_conn *conn);
void		idem__call_begin(idem_call *call);
void		idem__call_record(idem_call *call, const idem_record *rec);
void		idem__call_end(idem_conn *conn, const idem_call *call, idem_op op,
						   idem_outcome outcome, const char *key,
						   const char *scope);

/* idem_decode.c */
uint64_t	idem__be64(const unsigned char *p);
int64_t		idem__timestamptz_value(const char *value);
int			idem__decode_headers(const char *json, size_t len,
								 idem_hdr **hdrs, size_t *n);
idem_record *idem__record_from_result(idem_conn *conn, const PGresult *res);
int			idem__bool_result(const PGresult *res);

/* idem_error.c */
void		idem__clear_error(idem_conn *conn);
void		idem__set_error(idem_conn *conn, idem_error err, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));
idem_outcome idem__fail(idem_conn *conn, idem_error err, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));
idem_outcome idem__outcome_of(idem_conn *conn);
void		idem__set_client_message(idem_conn *conn, const char *msg);
void		idem__copy_trimmed(char *dst, size_t size, const char *src);
idem_error	idem__map_sqlstate(const char *sqlstate);
void		idem__set_error_from_result(idem_conn *conn, const PGresult *res);

/* idem_lease.c */
int			idem__renew_start(idem_conn *conn, const char *key,
							  const char *scope, int attempt,
							  int64_t lease_ms);
int			idem__renew_stop(idem_conn *conn);
void		idem__renewer_free(idem_renewer *r);

/* idem_record.c */
idem_record *idem__record_new(void);
void		idem__free_hdrs(idem_hdr *hdrs, size_t n);
char	   *idem__strdup(const char *s);
int			idem__strcaseeq(const char *a, const char *b);
idem_record *idem__record_from_response(const idem_response *resp,
										const char *state);

#endif							/* IDEM_INT_H */
