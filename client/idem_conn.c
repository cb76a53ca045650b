/*-------------------------------------------------------------------------
 *
 * idem_conn.c
 *	  Connection handles, errors, and the five calls (reserve, commit,
 *	  release, get, purge) over prepared statements.
 *
 * Each call is one round trip: the statement is prepared the first time it
 * is used on a connection, then run with PQexecPrepared, results in binary
 * (the body comes back as raw bytes, no hex decoding).  A statement that
 * vanished (DISCARD ALL by a pooler, a reset of a wrapped PGconn) is
 * prepared again and the call retried once, when no transaction is open.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "idem_int.h"

/*
 * Statement names carry the library's major version, so that two versions
 * of the library sharing a wrapped connection do not run each other's SQL.
 */
static const char *const stmt_name[IDEM_NSTMTS] = {
	"libidem1_reserve",
	"libidem1_commit",
	"libidem1_release",
	"libidem1_get",
	"libidem1_purge",
};

#define RECORD_COLUMNS \
	"fresh, state, status, headers, body, attempt, created_at, expires_at"

static const char *const stmt_sql[IDEM_NSTMTS] = {
	"SELECT " RECORD_COLUMNS " FROM idem_reserve($1::text, $2::text, "
	"$3::interval, $4::interval, $5::text)",
	"SELECT idem_commit($1::text, $2::text, $3::integer, $4::bytea, "
	"$5::jsonb, $6::text)",
	"SELECT idem_release($1::text, $2::text)",
	"SELECT " RECORD_COLUMNS " FROM idem_get($1::text, $2::text)",
	"SELECT idem_purge($1::integer)",
};

/* microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch */
#define PG_EPOCH_OFFSET_USEC INT64_C(946684800000000)

/* ---- version and names ------------------------------------------------- */

int
idem_version(void)
{
	return IDEM_VERSION_MAJOR * 10000 + IDEM_VERSION_MINOR * 100 +
		IDEM_VERSION_PATCH;
}

const char *
idem_outcome_name(idem_outcome outcome)
{
	switch (outcome)
	{
		case IDEM_FRESH:
			return "fresh";
		case IDEM_REPLAY:
			return "replay";
		case IDEM_MISMATCH:
			return "mismatch";
		case IDEM_IN_FLIGHT:
			return "in_flight";
		case IDEM_NOT_FOUND:
			return "not_found";
		case IDEM_ERROR:
			return "error";
	}
	return "unknown";
}

const char *
idem_error_name(idem_error err)
{
	switch (err)
	{
		case IDEM_OK:
			return "ok";
		case IDEM_ERR_CONNECTION:
			return "connection";
		case IDEM_ERR_NO_EXTENSION:
			return "no_extension";
		case IDEM_ERR_BAD_INPUT:
			return "bad_input";
		case IDEM_ERR_MISMATCH:
			return "mismatch";
		case IDEM_ERR_IN_FLIGHT:
			return "in_flight";
		case IDEM_ERR_NOT_FOUND:
			return "not_found";
		case IDEM_ERR_TOO_LARGE:
			return "too_large";
		case IDEM_ERR_READ_ONLY:
			return "read_only";
		case IDEM_ERR_HANDLER:
			return "handler";
		case IDEM_ERR_NO_RUN:
			return "no_run";
		case IDEM_ERR_NOT_OWNER:
			return "not_owner";
		case IDEM_ERR_SERVER:
			return "server";
		case IDEM_ERR_PROTOCOL:
			return "protocol";
		case IDEM_ERR_NOMEM:
			return "nomem";
	}
	return "unknown";
}

/* ---- errors ------------------------------------------------------------ */

void
idem__clear_error(idem_conn *conn)
{
	conn->err = IDEM_OK;
	conn->errmsg[0] = '\0';
	conn->errdetail[0] = '\0';
	conn->sqlstate[0] = '\0';
}

/*
 * Sets errmsg (first line) and errdetail (the other lines, joined) from a
 * multi-line libpq message such as a connection failure's.
 */
static void
set_client_message(idem_conn *conn, const char *msg)
{
	const char *nl = msg ? strchr(msg, '\n') : NULL;
	size_t		n;

	if (nl == NULL)
	{
		snprintf(conn->errmsg, sizeof(conn->errmsg), "%s", msg ? msg : "");
		return;
	}
	n = (size_t) (nl - msg);
	if (n >= sizeof(conn->errmsg))
		n = sizeof(conn->errmsg) - 1;
	memcpy(conn->errmsg, msg, n);
	conn->errmsg[n] = '\0';
	for (msg = nl, n = 0; *msg && n < sizeof(conn->errdetail) - 1; msg++)
	{
		if (*msg == '\n' || *msg == '\t')
		{
			if (n > 0 && conn->errdetail[n - 1] != ' ')
				conn->errdetail[n++] = ' ';
			continue;
		}
		conn->errdetail[n++] = *msg;
	}
	while (n > 0 && conn->errdetail[n - 1] == ' ')
		n--;
	conn->errdetail[n] = '\0';
}

/* copies src into dst, dropping trailing newlines and spaces */
static void
copy_trimmed(char *dst, size_t size, const char *src)
{
	size_t		n;

	snprintf(dst, size, "%s", src ? src : "");
	n = strlen(dst);
	while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
		dst[--n] = '\0';
}

static void
vset_error(idem_conn *conn, idem_error err, const char *fmt, va_list ap)
{
	conn->err = err;
	vsnprintf(conn->errmsg, sizeof(conn->errmsg), fmt, ap);
	conn->errdetail[0] = '\0';
	conn->sqlstate[0] = '\0';
}

void
idem__set_error(idem_conn *conn, idem_error err, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vset_error(conn, err, fmt, ap);
	va_end(ap);
}

static idem_outcome
outcome_of(idem_conn *conn)
{
	idem_outcome o;

	switch (conn->err)
	{
		case IDEM_OK:
			return IDEM_FRESH;
		case IDEM_ERR_MISMATCH:
			o = IDEM_MISMATCH;
			conn->stats.mismatches++;
			break;
		case IDEM_ERR_IN_FLIGHT:
			o = IDEM_IN_FLIGHT;
			conn->stats.in_flight++;
			break;
		case IDEM_ERR_NOT_FOUND:
			o = IDEM_NOT_FOUND;
			break;
		default:
			o = IDEM_ERROR;
			conn->stats.errors++;
			break;
	}
	return o;
}

idem_outcome
idem__fail(idem_conn *conn, idem_error err, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vset_error(conn, err, fmt, ap);
	va_end(ap);
	return outcome_of(conn);
}

static idem_error
map_sqlstate(const char *s)
{
	if (strcmp(s, "IK422") == 0)
		return IDEM_ERR_MISMATCH;
	if (strcmp(s, "IK409") == 0)
		return IDEM_ERR_IN_FLIGHT;
	if (strcmp(s, "IK404") == 0)
		return IDEM_ERR_NOT_FOUND;
	if (strcmp(s, "54000") == 0)
		return IDEM_ERR_TOO_LARGE;
	if (strcmp(s, "25006") == 0)
		return IDEM_ERR_READ_ONLY;
	if (strncmp(s, "22", 2) == 0)
		return IDEM_ERR_BAD_INPUT;
	if (strcmp(s, "42883") == 0 || strcmp(s, "42704") == 0 ||
		strcmp(s, "3F000") == 0)
		return IDEM_ERR_NO_EXTENSION;
	if (strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 ||
		strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0)
		return IDEM_ERR_CONNECTION;
	return IDEM_ERR_SERVER;
}

/* Records the error of a failed result (res may be NULL). */
static void
set_error_from_result(idem_conn *conn, const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;

	idem__clear_error(conn);
	if (state && strlen(state) == 5)
		memcpy(conn->sqlstate, state, 6);

	if (PQstatus(conn->pg) == CONNECTION_BAD)
		conn->err = IDEM_ERR_CONNECTION;
	else if (conn->sqlstate[0])
		conn->err = map_sqlstate(conn->sqlstate);
	else
		conn->err = IDEM_ERR_SERVER;

	if (primary)
		copy_trimmed(conn->errmsg, sizeof(conn->errmsg), primary);
	else if (res && *PQresultErrorMessage(res))
		set_client_message(conn, PQresultErrorMessage(res));
	else
		set_client_message(conn, PQerrorMessage(conn->pg));
	if (conn->errmsg[0] == '\0')
		snprintf(conn->errmsg, sizeof(conn->errmsg), "%s",
				 conn->err == IDEM_ERR_CONNECTION ?
				 "connection to the server lost" : "query failed");

	if (conn->err == IDEM_ERR_NO_EXTENSION)
		snprintf(conn->errdetail, sizeof(conn->errdetail), "%s",
				 "The idempotency extension is not installed in this "
				 "database or not on the search_path: run CREATE EXTENSION "
				 "idempotency.");
	else if (detail)
		copy_trimmed(conn->errdetail, sizeof(conn->errdetail), detail);
}

idem_error
idem_errcode(const idem_conn *conn)
{
	return conn ? conn->err : IDEM_ERR_NOMEM;
}

const char *
idem_errmsg(const idem_conn *conn)
{
	return conn ? conn->errmsg : "out of memory";
}

const char *
idem_errdetail(const idem_conn *conn)
{
	return conn ? conn->errdetail : "";
}

const char *
idem_sqlstate(const idem_conn *conn)
{
	return conn ? conn->sqlstate : "";
}

void
idem_counters(const idem_conn *conn, idem_stats *out)
{
	if (conn)
		*out = conn->stats;
	else
		memset(out, 0, sizeof(*out));
}

/* ---- connections ------------------------------------------------------- */

static idem_conn *
conn_new(PGconn *pg, int owned)
{
	idem_conn  *conn = calloc(1, sizeof(idem_conn));

	if (conn == NULL)
		return NULL;
	conn->pg = pg;
	conn->owned = owned;
	idem__clear_error(conn);
	return conn;
}

static void
check_connection(idem_conn *conn)
{
	idem__clear_error(conn);
	if (conn->pg == NULL)
		idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
	else if (PQstatus(conn->pg) != CONNECTION_OK)
	{
		idem__set_error(conn, IDEM_ERR_CONNECTION, "%s", "");
		set_client_message(conn, PQerrorMessage(conn->pg));
		if (conn->errmsg[0] == '\0')
			snprintf(conn->errmsg, sizeof(conn->errmsg),
					 "not connected to the server");
	}
}

idem_conn *
idem_connect(const char *conninfo)
{
	/*
	 * conninfo as libpq's dbname with expand_dbname: a connection string or
	 * URI is expanded, a bare word is a database name, NULL or "" leaves
	 * everything to the environment.
	 */
	const char *const keywords[] = {"dbname", "fallback_application_name", NULL};
	const char *const values[] = {conninfo ? conninfo : "", "libidem", NULL};
	PGconn	   *pg = PQconnectdbParams(keywords, values, 1);
	idem_conn  *conn;

	conn = conn_new(pg, 1);
	if (conn == NULL)
	{
		PQfinish(pg);
		return NULL;
	}
	check_connection(conn);
	return conn;
}

idem_conn *
idem_wrap(struct pg_conn *pg)
{
	if (pg == NULL)
		return NULL;
	return conn_new(pg, 0);
}

void
idem_free(idem_conn *conn)
{
	if (conn == NULL)
		return;
	if (conn->owned && conn->pg)
		PQfinish(conn->pg);
	free(conn->run_id);
	free(conn);
}

int
idem_connected(const idem_conn *conn)
{
	return conn && conn->pg && PQstatus(conn->pg) == CONNECTION_OK;
}

int
idem_reconnect(idem_conn *conn)
{
	idem__clear_error(conn);
	if (!conn->owned)
	{
		idem__set_error(conn, IDEM_ERR_NOT_OWNER,
						"cannot reconnect a wrapped connection: the "
						"application owns it (use PQreset)");
		return -1;
	}
	PQreset(conn->pg);
	conn->prepared = 0;
	check_connection(conn);
	return conn->err == IDEM_OK ? 0 : -1;
}

struct pg_conn *
idem_pgconn(const idem_conn *conn)
{
	return conn ? conn->pg : NULL;
}

/* ---- running statements ------------------------------------------------ */

static int
prepare(idem_conn *conn, idem_stmt stmt)
{
	PGresult   *res;
	const char *state;

	if (conn->prepared & (1u << stmt))
		return 0;
	res = PQprepare(conn->pg, stmt_name[stmt], stmt_sql[stmt], 0, NULL);
	if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		PQclear(res);
		conn->prepared |= 1u << stmt;
		return 0;
	}
	/* another handle on the same wrapped connection prepared it already */
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state && strcmp(state, "42P05") == 0)
	{
		PQclear(res);
		conn->prepared |= 1u << stmt;
		return 0;
	}
	set_error_from_result(conn, res);
	PQclear(res);
	return -1;
}

/*
 * Runs a prepared statement with text parameters (the formats given, if
 * any) and binary results.  Returns a PGRES_TUPLES_OK result with exactly
 * one row, or NULL with the error set on the handle.
 */
static PGresult *
exec_stmt(idem_conn *conn, idem_stmt stmt, int nparams,
		  const char *const *values, const int *lengths, const int *formats)
{
	PGresult   *res;
	int			retried = 0;

	check_connection(conn);
	if (conn->err != IDEM_OK)
		return NULL;

again:
	if (prepare(conn, stmt) < 0)
		return NULL;
	res = PQexecPrepared(conn->pg, stmt_name[stmt], nparams, values, lengths,
						 formats, 1);
	if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		int			ntuples = PQntuples(res);

		if (ntuples != 1)
		{
			PQclear(res);
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"%s returned %d rows, expected 1",
							stmt_name[stmt], ntuples);
			return NULL;
		}
		return res;
	}
	if (res && PQresultStatus(res) == PGRES_FATAL_ERROR &&
		PQresultErrorField(res, PG_DIAG_SQLSTATE) &&
		strcmp(PQresultErrorField(res, PG_DIAG_SQLSTATE), "26000") == 0)
		conn->prepared = 0;
	if (!retried && res &&
		PQresultStatus(res) == PGRES_FATAL_ERROR &&
		PQresultErrorField(res, PG_DIAG_SQLSTATE) &&
		strcmp(PQresultErrorField(res, PG_DIAG_SQLSTATE), "26000") == 0 &&
		PQtransactionStatus(conn->pg) == PQTRANS_IDLE)
	{
		/*
		 * Deallocated behind our back (DEALLOCATE ALL, DISCARD ALL): all
		 * of them are gone, prepare again.  Inside a transaction the error
		 * has already aborted it, so it is reported instead.
		 */
		PQclear(res);
		conn->prepared = 0;
		retried = 1;
		goto again;
	}
	if (res && PQresultStatus(res) != PGRES_FATAL_ERROR)
	{
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"unexpected result status %s from %s",
						PQresStatus(PQresultStatus(res)), stmt_name[stmt]);
		PQclear(res);
		return NULL;
	}
	set_error_from_result(conn, res);
	PQclear(res);
	return NULL;
}

/* ---- binary result decoding -------------------------------------------- */

static uint32_t
be32(const unsigned char *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
		((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

static uint64_t
be64(const unsigned char *p)
{
	return ((uint64_t) be32(p) << 32) | be32(p + 4);
}

/* column of res by name, checked for length; -1 when absent or NULL */
static int
column(const PGresult *res, const char *name, int len)
{
	int			col = PQfnumber(res, name);

	if (col < 0 || PQgetisnull(res, 0, col))
		return -1;
	if (len >= 0 && PQgetlength(res, 0, col) != len)
		return -1;
	return col;
}

static int
get_int4(const PGresult *res, const char *name, int dflt)
{
	int			col = column(res, name, 4);

	if (col < 0)
		return dflt;
	return (int) (int32_t) be32((const unsigned char *) PQgetvalue(res, 0, col));
}

static int64_t
get_timestamptz(const PGresult *res, const char *name)
{
	int			col = column(res, name, 8);

	int64_t		v;

	if (col < 0)
		return 0;
	v = (int64_t) be64((const unsigned char *) PQgetvalue(res, 0, col));

	/*
	 * 'infinity' is INT64_MAX and '-infinity' INT64_MIN: keep them so, and
	 * never overflow moving the epoch (values that close to the end
	 * saturate)
	 */
	if (v == INT64_MIN)
		return INT64_MIN;
	if (v > INT64_MAX - PG_EPOCH_OFFSET_USEC)
		return INT64_MAX;
	return v + PG_EPOCH_OFFSET_USEC;
}

/*
 * Builds a record from the one row of a reserve/get result; returns NULL
 * with the error set on the handle when out of memory or malformed.  A row
 * whose state is NULL (idem_get of an absent key) gives a record whose
 * state is NULL.
 */
static idem_record *
record_from_result(idem_conn *conn, const PGresult *res)
{
	idem_record *rec;
	int			col;

	if (PQfnumber(res, "state") < 0 || PQfnumber(res, "body") < 0)
	{
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"the server's idem_reservation lacks expected columns");
		return NULL;
	}
	rec = idem__record_new();
	if (rec == NULL)
		goto nomem;

	col = column(res, "fresh", 1);
	rec->fresh = col >= 0 && PQgetvalue(res, 0, col)[0] != 0;

	col = column(res, "state", -1);
	if (col >= 0)
	{
		rec->state = idem__strdup(PQgetvalue(res, 0, col));
		if (rec->state == NULL)
			goto nomem;
	}
	rec->status = get_int4(res, "status", -1);
	rec->attempt = get_int4(res, "attempt", 0);
	rec->created_at = get_timestamptz(res, "created_at");
	rec->expires_at = get_timestamptz(res, "expires_at");

	col = column(res, "body", -1);
	if (col >= 0)
	{
		size_t		len = (size_t) PQgetlength(res, 0, col);

		rec->body = malloc(len + 1);
		if (rec->body == NULL)
			goto nomem;
		memcpy(rec->body, PQgetvalue(res, 0, col), len);
		rec->body[len] = '\0';
		rec->body_len = len;
	}

	/* jsonb's binary form: a version byte (1), then the text */
	col = column(res, "headers", -1);
	if (col >= 0)
	{
		const char *v = PQgetvalue(res, 0, col);

		if (PQgetlength(res, 0, col) < 1 || v[0] != 1)
		{
			idem_record_free(rec);
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"unknown jsonb binary version in headers");
			return NULL;
		}
		if (idem__record_set_headers(rec, v + 1) < 0)
			goto nomem;
	}
	return rec;

nomem:
	idem_record_free(rec);
	idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
	return NULL;
}

static int
bool_result(const PGresult *res)
{
	return PQgetlength(res, 0, 0) == 1 && PQgetvalue(res, 0, 0)[0] != 0;
}

/* ---- the calls --------------------------------------------------------- */

static const char *
scope_of(const idem_opts *opts)
{
	return opts && opts->scope ? opts->scope : "";
}

static int
check_key(idem_conn *conn, const char *key)
{
	if (key == NULL)
	{
		idem__set_error(conn, IDEM_ERR_BAD_INPUT, "key must not be NULL");
		return -1;
	}
	return 0;
}

idem_outcome
idem_reserve(idem_conn *conn, const char *key, const idem_opts *opts,
			 idem_record **out)
{
	const char *values[5];
	PGresult   *res;
	idem_record *rec;
	idem_outcome outcome;

	if (out)
		*out = NULL;
	idem__clear_error(conn);
	if (check_key(conn, key) < 0)
		return outcome_of(conn);

	values[0] = key;
	values[1] = opts ? opts->request_hash : NULL;
	values[2] = opts ? opts->ttl : NULL;
	values[3] = opts ? opts->wait : NULL;
	values[4] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_RESERVE, 5, values, NULL, NULL);
	if (res == NULL)
	{
		if (conn->err != IDEM_ERR_CONNECTION &&
			conn->err != IDEM_ERR_NO_EXTENSION)
			conn->stats.reserves++;
		return outcome_of(conn);
	}
	conn->stats.reserves++;
	rec = record_from_result(conn, res);
	PQclear(res);
	if (rec == NULL)
		return outcome_of(conn);
	if (rec->state == NULL)
	{
		idem_record_free(rec);
		return idem__fail(conn, IDEM_ERR_PROTOCOL,
						  "idem_reserve returned no state");
	}
	if (rec->fresh)
	{
		outcome = IDEM_FRESH;
		conn->stats.fresh++;
		if (rec->attempt > 1)
			conn->stats.takeovers++;
	}
	else if (strcmp(rec->state, "committed") == 0)
	{
		outcome = IDEM_REPLAY;
		conn->stats.replays++;
	}
	else
	{
		outcome = idem__fail(conn, IDEM_ERR_PROTOCOL,
							 "idem_reserve returned state \"%s\" without "
							 "ownership", rec->state);
		idem_record_free(rec);
		return outcome;
	}
	if (out)
		*out = rec;
	else
		idem_record_free(rec);
	return outcome;
}

idem_outcome
idem_commit(idem_conn *conn, const char *key, const idem_opts *opts,
			int status, const void *body, size_t body_len,
			const char *headers_json)
{
	char		status_text[16];
	const char *values[6];
	int			lengths[6] = {0, 0, 0, 0, 0, 0};
	int			formats[6] = {0, 0, 0, 1, 0, 0};
	PGresult   *res;
	int			stored;

	idem__clear_error(conn);
	if (check_key(conn, key) < 0)
		return outcome_of(conn);
	if (body_len > 0x7fffffff)
		return idem__fail(conn, IDEM_ERR_TOO_LARGE,
						  "response body of %zu bytes is too large",
						  body_len);

	snprintf(status_text, sizeof(status_text), "%d", status);
	values[0] = key;
	values[1] = opts ? opts->request_hash : NULL;
	values[2] = status_text;
	/* a non-NULL pointer for an empty body: libpq sends NULL for NULL */
	values[3] = body ? (body_len ? (const char *) body : "") : NULL;
	lengths[3] = (int) body_len;
	values[4] = headers_json ? headers_json : "{}";
	values[5] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_COMMIT, 6, values, lengths, formats);
	if (res == NULL)
		return outcome_of(conn);
	stored = bool_result(res);
	PQclear(res);
	if (stored)
	{
		conn->stats.commits++;
		return IDEM_FRESH;
	}
	return IDEM_REPLAY;
}

idem_outcome
idem_release(idem_conn *conn, const char *key, const idem_opts *opts)
{
	const char *values[2];
	PGresult   *res;
	int			dropped;

	idem__clear_error(conn);
	if (check_key(conn, key) < 0)
		return outcome_of(conn);
	values[0] = key;
	values[1] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_RELEASE, 2, values, NULL, NULL);
	if (res == NULL)
		return outcome_of(conn);
	dropped = bool_result(res);
	PQclear(res);
	if (dropped)
	{
		conn->stats.releases++;
		return IDEM_FRESH;
	}
	return IDEM_NOT_FOUND;
}

idem_outcome
idem_get(idem_conn *conn, const char *key, const idem_opts *opts,
		 idem_record **out)
{
	const char *values[2];
	PGresult   *res;
	idem_record *rec;
	idem_outcome outcome;

	if (out)
		*out = NULL;
	idem__clear_error(conn);
	if (check_key(conn, key) < 0)
		return outcome_of(conn);
	values[0] = key;
	values[1] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_GET, 2, values, NULL, NULL);
	if (res == NULL)
		return outcome_of(conn);
	rec = record_from_result(conn, res);
	PQclear(res);
	if (rec == NULL)
		return outcome_of(conn);
	if (rec->state == NULL)
	{
		idem_record_free(rec);
		return IDEM_NOT_FOUND;
	}
	outcome = strcmp(rec->state, "committed") == 0 ? IDEM_REPLAY :
		IDEM_IN_FLIGHT;
	rec->fresh = 0;
	if (out)
		*out = rec;
	else
		idem_record_free(rec);
	return outcome;
}

int64_t
idem_purge(idem_conn *conn, int batch_limit)
{
	char		limit_text[16];
	const char *values[1];
	PGresult   *res;
	int64_t		n;

	idem__clear_error(conn);
	snprintf(limit_text, sizeof(limit_text), "%d", batch_limit);
	values[0] = batch_limit > 0 ? limit_text : NULL;
	res = exec_stmt(conn, IDEM_STMT_PURGE, 1, values, NULL, NULL);
	if (res == NULL)
	{
		outcome_of(conn);
		return -1;
	}
	if (PQgetisnull(res, 0, 0) || PQgetlength(res, 0, 0) != 8)
	{
		PQclear(res);
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"idem_purge returned no count");
		outcome_of(conn);
		return -1;
	}
	n = (int64_t) be64((const unsigned char *) PQgetvalue(res, 0, 0));
	PQclear(res);
	return n;
}

/* ---- run ids (used by idem_step) --------------------------------------- */

int
idem_set_run_id(idem_conn *conn, const char *run_id)
{
	char	   *copy = NULL;

	idem__clear_error(conn);
	if (run_id)
	{
		copy = idem__strdup(run_id);
		if (copy == NULL)
		{
			idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
			return -1;
		}
	}
	free(conn->run_id);
	conn->run_id = copy;
	return 0;
}

const char *
idem_run_id(const idem_conn *conn)
{
	return conn->run_id;
}
