/*-------------------------------------------------------------------------
 *
 * idem_error.c
 *	  The names of outcomes and errors, a handle's error state, and the
 *	  mapping of a server's error (SQLSTATE, message fields) or of libpq's
 *	  messages onto it.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "idem_int.h"

/* ---- names ------------------------------------------------------------- */

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
		case IDEM_LEASE_LOST:
			return "lease_lost";
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
		case IDEM_ERR_LEASE_LOST:
			return "lease_lost";
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
void
idem__set_client_message(idem_conn *conn, const char *msg)
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
void
idem__copy_trimmed(char *dst, size_t size, const char *src)
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

idem_outcome
idem__outcome_of(idem_conn *conn)
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
		case IDEM_ERR_LEASE_LOST:
			o = IDEM_LEASE_LOST;
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
	return idem__outcome_of(conn);
}

idem_error
idem__map_sqlstate(const char *s)
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
void
idem__set_error_from_result(idem_conn *conn, const PGresult *res)
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
		conn->err = idem__map_sqlstate(conn->sqlstate);
	else
		conn->err = IDEM_ERR_SERVER;

	if (primary)
		idem__copy_trimmed(conn->errmsg, sizeof(conn->errmsg), primary);
	else if (res && *PQresultErrorMessage(res))
		idem__set_client_message(conn, PQresultErrorMessage(res));
	else
		idem__set_client_message(conn, PQerrorMessage(conn->pg));
	if (conn->errmsg[0] == '\0')
		snprintf(conn->errmsg, sizeof(conn->errmsg), "%s",
				 conn->err == IDEM_ERR_CONNECTION ?
				 "connection to the server lost" : "query failed");

	if (conn->err == IDEM_ERR_NO_EXTENSION)
		snprintf(conn->errdetail, sizeof(conn->errdetail), "%s",
				 "The idempotency extension is not installed in this "
				 "database: run CREATE EXTENSION idempotency.");
	else if (detail)
		idem__copy_trimmed(conn->errdetail, sizeof(conn->errdetail), detail);
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
