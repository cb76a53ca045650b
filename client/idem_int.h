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

#include <libpq-fe.h>

#include "idem.h"

/* prepared statements, prepared lazily once per connection */
typedef enum idem_stmt
{
	IDEM_STMT_RESERVE = 0,
	IDEM_STMT_COMMIT,
	IDEM_STMT_RELEASE,
	IDEM_STMT_GET,
	IDEM_STMT_PURGE,
	IDEM_NSTMTS
} idem_stmt;

struct idem_conn
{
	PGconn	   *pg;
	int			owned;			/* we opened pg and close it */
	unsigned	prepared;		/* bit per idem_stmt */

	idem_error	err;
	char		errmsg[1024];	/* "" = none */
	char		errdetail[1024];
	char		sqlstate[6];

	char	   *run_id;
	idem_stats	stats;
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
};

/* idem_conn.c */
void		idem__clear_error(idem_conn *conn);
void		idem__set_error(idem_conn *conn, idem_error err, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));
idem_outcome idem__fail(idem_conn *conn, idem_error err, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

/* idem_record.c */
idem_record *idem__record_new(void);
int			idem__record_set_headers(idem_record *rec, const char *json);
int			idem__parse_headers(const char *json, idem_hdr **hdrs, size_t *n);
void		idem__free_hdrs(idem_hdr *hdrs, size_t n);
char	   *idem__strdup(const char *s);
int			idem__strcaseeq(const char *a, const char *b);
idem_record *idem__record_from_response(const idem_response *resp,
										const char *state);

#endif							/* IDEM_INT_H */
