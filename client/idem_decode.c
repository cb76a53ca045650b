/*-------------------------------------------------------------------------
 *
 * idem_decode.c
 *	  Decoding of the server's rows, which the calls ask for in binary
 *	  format: booleans, big-endian int4, int8 and timestamptz, bytea as
 *	  raw bytes, jsonb as a version byte followed by its text.
 *
 * A server of another version, a proxy or a bug may send anything in
 * those columns: nothing here reads beyond what libpq says a value's
 * length is, and a value of the wrong length counts as absent.
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "idem_int.h"

/* ---- binary result decoding -------------------------------------------- */

static uint32_t
be32(const unsigned char *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
		((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

uint64_t
idem__be64(const unsigned char *p)
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

/* an int8 column: 1 and *v, or 0 when absent or NULL */
static int
get_int8(const PGresult *res, const char *name, int64_t *v)
{
	int			col = column(res, name, 8);

	if (col < 0)
		return 0;
	*v = (int64_t) idem__be64((const unsigned char *) PQgetvalue(res, 0, col));
	return 1;
}

int64_t
idem__timestamptz_value(const char *value)
{
	int64_t		v = (int64_t) idem__be64((const unsigned char *) value);

	/*
	 * 'infinity' is INT64_MAX and '-infinity' INT64_MIN: keep them so, and
	 * never overflow moving the epoch (values that close to the end
	 * saturate)
	 */
	if (v == INT64_MIN)
		return INT64_MIN;
	if (v > INT64_MAX - IDEM_PG_EPOCH_OFFSET_USEC)
		return INT64_MAX;
	return v + IDEM_PG_EPOCH_OFFSET_USEC;
}

static int64_t
get_timestamptz(const PGresult *res, const char *name)
{
	int			col = column(res, name, 8);

	if (col < 0)
		return 0;
	return idem__timestamptz_value(PQgetvalue(res, 0, col));
}

/*
 * Builds a record from the one row of a reserve/get result; returns NULL
 * with the error set on the handle when out of memory or malformed.  A row
 * whose state is NULL (idem_get of an absent key) gives a record whose
 * state is NULL.
 */
idem_record *
idem__record_from_result(idem_conn *conn, const PGresult *res)
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
	rec->lease_expires_at = get_timestamptz(res, "lease_expires_at");
	rec->has_lease_left = get_int8(res, "lease_left_ms", &rec->lease_left_ms);

	col = column(res, "owner", -1);
	if (col >= 0)
	{
		rec->owner = idem__strdup(PQgetvalue(res, 0, col));
		if (rec->owner == NULL)
			goto nomem;
	}

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

int
idem__bool_result(const PGresult *res)
{
	return PQgetlength(res, 0, 0) == 1 && PQgetvalue(res, 0, 0)[0] != 0;
}

