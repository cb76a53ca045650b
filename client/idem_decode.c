/*-------------------------------------------------------------------------
 *
 * idem_decode.c
 *	  Decoding of the server's rows, which the calls ask for in binary
 *	  format: booleans, big-endian int4, int8 and timestamptz, bytea as
 *	  raw bytes, jsonb as a version byte followed by its text, and the
 *	  headers as a text[] of (name, value) pairs.
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

/* text's type OID (pg_type.h), the element type of the header pairs */
#define TEXT_OID 25

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
 * The header pairs of a record (see HEADER_PAIRS in idem_conn.c): a text[]
 * in array_send's binary form, two-dimensional with rows of (name, value),
 * or empty.  That form is: the number of dimensions, a has-nulls flag and
 * the element type (int4, int4, oid), each dimension's length and lower
 * bound (int4, int4), then each element as an int4 length (-1 for NULL)
 * and that many bytes, row after row.  Returns 0 and the pairs, 1 when the
 * value is not such an array of text without NULLs (nothing kept), -1 when
 * out of memory.  A value with a NUL byte is cut there, as a C string is.
 */
int
idem__decode_header_pairs(const char *value, size_t len, idem_hdr **hdrs_out,
						  size_t *n_out)
{
	const unsigned char *p = (const unsigned char *) value;
	const unsigned char *end = p + len;
	idem_hdr   *hdrs;
	size_t		rows,
				i;

	*hdrs_out = NULL;
	*n_out = 0;
	if (len < 12)
		return 1;
	if (be32(p + 8) != TEXT_OID)
		return 1;
	if (be32(p) == 0)
		return len == 12 ? 0 : 1;
	if (be32(p) != 2 || len < 28 || be32(p + 20) != 2)
		return 1;
	rows = be32(p + 12);
	/* each element takes 4 bytes at least: no larger allocation than that */
	if (rows > (len - 28) / 8)
		return 1;
	if (rows == 0)
		return len == 28 ? 0 : 1;
	hdrs = calloc(rows, sizeof(idem_hdr));
	if (hdrs == NULL)
		return -1;
	for (p += 28, i = 0; i < 2 * rows; i++)
	{
		char	  **dst = i % 2 ? &hdrs[i / 2].value : &hdrs[i / 2].name;
		uint32_t	elen;

		if (end - p < 4)
			goto bad;
		elen = be32(p);
		p += 4;
		/* -1 is NULL: not in pairs the statement builds */
		if (elen > (size_t) (end - p))
			goto bad;
		*dst = malloc((size_t) elen + 1);
		if (*dst == NULL)
		{
			idem__free_hdrs(hdrs, rows);
			return -1;
		}
		memcpy(*dst, p, elen);
		(*dst)[elen] = '\0';
		p += elen;
	}
	if (p != end)
		goto bad;
	*hdrs_out = hdrs;
	*n_out = rows;
	return 0;

bad:
	idem__free_hdrs(hdrs, rows);
	return 1;
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
		rec->headers_json = idem__strdup(v + 1);
		if (rec->headers_json == NULL)
			goto nomem;
	}

	col = column(res, "header_pairs", -1);
	if (col >= 0)
	{
		int			rc = idem__decode_header_pairs(PQgetvalue(res, 0, col),
												   (size_t) PQgetlength(res, 0, col),
												   &rec->hdrs, &rec->nhdrs);

		if (rc < 0)
			goto nomem;
		if (rc > 0)
		{
			idem_record_free(rec);
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"malformed header pairs from the server");
			return NULL;
		}
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

