/*-------------------------------------------------------------------------
 *
 * idem_decode.c
 *	  Decoding of the server's rows, which the calls ask for in binary
 *	  format: booleans, big-endian int4, int8 and timestamptz, bytea as
 *	  raw bytes, jsonb as a version byte followed by its text, a composite
 *	  (idem_reservation) as its attributes' types, lengths and values; the
 *	  stored headers' JSON read into (name, value) pairs with json-c.
 *
 * A server of another version, a proxy or a bug may send anything in
 * those columns: nothing here reads beyond what libpq says a value's
 * length is, and a value of the wrong length counts as absent.
 *
 *-------------------------------------------------------------------------
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json_object.h>
#include <json-c/json_tokener.h>
#include <json-c/linkhash.h>
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

/*
 * The fields of a record, wherever the server put them: columns of the
 * row by name (SELECT r.fresh, r.state, ... FROM idem_reserve(...) r), or
 * the attributes of one idem_reservation value (SELECT idem_reserve(...),
 * which the executor runs without a function scan).
 */
typedef enum field
{
	F_FRESH,
	F_STATE,
	F_STATUS,
	F_HEADERS,
	F_BODY,
	F_ATTEMPT,
	F_CREATED_AT,
	F_EXPIRES_AT,
	F_OWNER,					/* 1.2 and later */
	F_LEASE_EXPIRES_AT,			/* 1.2 and later */
	F_LEASE_LEFT_MS,			/* a column the statement computes */
	NFIELDS
} field;

static const char *const field_name[NFIELDS] = {
	"fresh", "state", "status", "headers", "body", "attempt", "created_at",
	"expires_at", "owner", "lease_expires_at", "lease_left_ms",
};

/* idem_reservation's attributes in order, by the type OIDs of their values */
#define BOOLOID			16
#define BYTEAOID		17
#define INT4OID			23
#define TEXTOID			25
#define TIMESTAMPTZOID	1184
#define JSONBOID		3802
static const uint32_t attr_type[F_LEASE_LEFT_MS] = {
	BOOLOID, TEXTOID, INT4OID, JSONBOID, BYTEAOID, INT4OID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, TEXTOID, TIMESTAMPTZOID,
};

/* a field's value and length; value NULL when absent or SQL NULL */
typedef struct fields
{
	const char *v[NFIELDS];
	int			len[NFIELDS];
} fields;

/* the row's columns by name; 0, or -1 when it lacks state or body */
static int
fields_of_columns(const PGresult *res, fields *f)
{
	int			i;

	memset(f, 0, sizeof(*f));
	if (PQfnumber(res, "state") < 0 || PQfnumber(res, "body") < 0)
		return -1;
	for (i = 0; i < NFIELDS; i++)
	{
		int			col = PQfnumber(res, field_name[i]);

		if (col >= 0 && !PQgetisnull(res, 0, col))
		{
			f->v[i] = PQgetvalue(res, 0, col);
			f->len[i] = PQgetlength(res, 0, col);
		}
	}
	return 0;
}

/*
 * The attributes of a composite value in its binary form (record_send):
 * their number, then for each its type OID, its length (-1 for NULL) and
 * its bytes.  Attributes are matched by position, each checked for the
 * type it has in idem_reservation; attributes a later version appends are
 * skipped.  0, or -1 when the value is cut short, has fewer attributes
 * than the first version's or one of another type.
 */
static int
fields_of_record(const char *value, int length, fields *f)
{
	const unsigned char *p = (const unsigned char *) value;
	const unsigned char *end = p + length;
	uint32_t	natts;
	uint32_t	i;

	memset(f, 0, sizeof(*f));
	if (length < 4)
		return -1;
	natts = be32(p);
	p += 4;
	if (natts < F_OWNER || natts > 1600)
		return -1;
	for (i = 0; i < natts; i++)
	{
		uint32_t	type;
		int32_t		len;

		if (end - p < 8)
			return -1;
		type = be32(p);
		len = (int32_t) be32(p + 4);
		p += 8;
		if (len < -1 || (len > 0 && end - p < len))
			return -1;
		if (i < F_LEASE_LEFT_MS)
		{
			if (type != attr_type[i])
				return -1;
			if (len >= 0)
			{
				f->v[i] = (const char *) p;
				f->len[i] = len;
			}
		}
		if (len > 0)
			p += len;
	}
	return 0;
}

/* a field checked for length: its value, or NULL when absent or NULL */
static const char *
get(const fields *f, field i, int len)
{
	if (f->v[i] == NULL || (len >= 0 && f->len[i] != len))
		return NULL;
	return f->v[i];
}

static int
get_int4(const fields *f, field i, int dflt)
{
	const char *v = get(f, i, 4);

	return v ? (int) (int32_t) be32((const unsigned char *) v) : dflt;
}

/* an int8 field: 1 and *v, or 0 when absent or NULL */
static int
get_int8(const fields *f, field i, int64_t *v)
{
	const char *p = get(f, i, 8);

	if (p == NULL)
		return 0;
	*v = (int64_t) idem__be64((const unsigned char *) p);
	return 1;
}

static int64_t
get_timestamptz(const fields *f, field i)
{
	const char *v = get(f, i, 8);

	return v ? idem__timestamptz_value(v) : 0;
}

/* a text field copied with its terminator: 0, or -1 when out of memory */
static int
get_text(const fields *f, field i, char **out)
{
	*out = NULL;
	if (f->v[i] == NULL)
		return 0;
	if ((*out = malloc((size_t) f->len[i] + 1)) == NULL)
		return -1;
	memcpy(*out, f->v[i], (size_t) f->len[i]);
	(*out)[f->len[i]] = '\0';
	return 0;
}

/*
 * The lease's remaining length in milliseconds by the server's clock, as
 * (extract(epoch FROM lease_expires_at - now()) * 1000)::int8 would give
 * it (rounded half away from zero): from lease_expires_at and the
 * server_now column beside the reservation.  1 and *ms, or 0 when either
 * is absent, NULL or infinite.
 */
static int
lease_left(const fields *f, const PGresult *res, int64_t *ms)
{
	const char *until = get(f, F_LEASE_EXPIRES_AT, 8);
	int			col = PQfnumber(res, "server_now");
	int64_t		a,
				b,
				d,
				q;

	if (until == NULL || col < 0 || PQgetisnull(res, 0, col) ||
		PQgetlength(res, 0, col) != 8)
		return 0;
	a = (int64_t) idem__be64((const unsigned char *) until);
	b = (int64_t) idem__be64((const unsigned char *) PQgetvalue(res, 0, col));
	if (a == INT64_MIN || a == INT64_MAX || b == INT64_MIN || b == INT64_MAX)
		return 0;
	if ((b > 0 && a < INT64_MIN + b) || (b < 0 && a > INT64_MAX + b))
		return 0;
	d = a - b;
	q = d / 1000;
	if (d % 1000 >= 500)
		q++;
	else if (d % 1000 <= -500)
		q--;
	*ms = q;
	return 1;
}

/* ---- the stored headers ------------------------------------------------ */

/*
 * How deep the headers' JSON may nest: json-c's default for the first
 * reading, and, should that be too shallow, this much for a second one
 * (each level costs the tokener some 32 bytes and the recursions of
 * json-c and of put_value a few stack frames).
 */
#define HEADERS_MAX_DEPTH 1000

typedef struct jbuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	int			failed;
} jbuf;

static void
jb_put(jbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 64;
		char	   *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->data, cap);
		if (p == NULL)
		{
			b->failed = 1;
			return;
		}
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

/* a string escaped as the server's jsonb output escapes it (escape_json) */
static void
put_string(jbuf *b, const char *s, size_t n)
{
	const char *end = s + n;

	jb_put(b, "\"", 1);
	for (; s < end; s++)
	{
		unsigned char c = (unsigned char) *s;
		char		esc[8];

		switch (c)
		{
			case '\b':
				jb_put(b, "\\b", 2);
				break;
			case '\f':
				jb_put(b, "\\f", 2);
				break;
			case '\n':
				jb_put(b, "\\n", 2);
				break;
			case '\r':
				jb_put(b, "\\r", 2);
				break;
			case '\t':
				jb_put(b, "\\t", 2);
				break;
			case '"':
				jb_put(b, "\\\"", 2);
				break;
			case '\\':
				jb_put(b, "\\\\", 2);
				break;
			default:
				if (c < ' ')
				{
					snprintf(esc, sizeof(esc), "\\u%04x", c);
					jb_put(b, esc, 6);
				}
				else
					jb_put(b, s, 1);
				break;
		}
	}
	jb_put(b, "\"", 1);
}

/*
 * A value as the server's jsonb output writes it: {"a": 1, "b": [2, 3]},
 * numbers as they were read (json-c keeps the text of a number with a
 * fraction or an exponent; an integer's is its value's).
 */
static void
put_value(jbuf *b, json_object *v)
{
	size_t		i,
				n;
	int			first = 1;
	const char *text;

	switch (json_object_get_type(v))
	{
		case json_type_null:
			jb_put(b, "null", 4);
			break;
		case json_type_boolean:
			if (json_object_get_boolean(v))
				jb_put(b, "true", 4);
			else
				jb_put(b, "false", 5);
			break;
		case json_type_string:
			put_string(b, json_object_get_string(v),
					   (size_t) json_object_get_string_len(v));
			break;
		case json_type_array:
			jb_put(b, "[", 1);
			n = json_object_array_length(v);
			for (i = 0; i < n; i++)
			{
				if (i > 0)
					jb_put(b, ", ", 2);
				put_value(b, json_object_array_get_idx(v, i));
			}
			jb_put(b, "]", 1);
			break;
		case json_type_object:
			jb_put(b, "{", 1);
			{
				json_object_object_foreach(v, key, elem)
				{
					if (!first)
						jb_put(b, ", ", 2);
					first = 0;
					put_string(b, key, strlen(key));
					jb_put(b, ": ", 2);
					put_value(b, elem);
				}
			}
			jb_put(b, "}", 1);
			break;
		case json_type_int:
		case json_type_double:
			text = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
			if (text == NULL)
				b->failed = 1;
			else
				jb_put(b, text, strlen(text));
			break;
	}
}

/* one header value: a string unescaped, anything else as its JSON text */
static char *
header_value(json_object *v)
{
	jbuf		b = {NULL, 0, 0, 0};

	if (json_object_get_type(v) == json_type_string)
		return idem__strdup(json_object_get_string(v));
	put_value(&b, v);
	if (b.failed)
	{
		free(b.data);
		return NULL;
	}
	return b.data;
}

/*
 * The JSON text json (len bytes), strictly, with a tokener of that depth:
 * 0 and *obj (NULL for JSON null), 1 when it is not one JSON value, 2
 * when it nests deeper than depth, -1 when out of memory.
 */
static int
parse_json(const char *json, size_t len, int depth, json_object **obj)
{
	json_tokener *tok = json_tokener_new_ex(depth);
	enum json_tokener_error err;
	int			rc;

	*obj = NULL;
	if (tok == NULL)
		return -1;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	*obj = json_tokener_parse_ex(tok, json, (int) len);
	err = json_tokener_get_error(tok);
	/* a number alone ends only where the text does: say it does */
	if (err == json_tokener_continue)
	{
		*obj = json_tokener_parse_ex(tok, "", 1);
		err = json_tokener_get_error(tok);
	}
	else if (err == json_tokener_success &&
			 json_tokener_get_parse_end(tok) != len)
		err = json_tokener_error_parse_unexpected;	/* more than one value */
	if (err == json_tokener_success)
		rc = 0;
	else
	{
		rc = err == json_tokener_error_depth ? 2 : 1;
		json_object_put(*obj);
		*obj = NULL;
	}
	json_tokener_free(tok);
	return rc;
}

/*
 * The stored headers of a record, the JSON text json (len bytes): a JSON
 * object mapping each name to an array of its values, read with json-c's
 * strict tokener.  Gives a pair for each name and each element of its
 * array (a value that is no array counts as an array of itself), in the
 * order of the text, which is the order the server's jsonb keeps: strings
 * unescaped and cut at a NUL, as a C string is, any other value as its
 * JSON text in the layout of the server's jsonb output ("null" for JSON
 * null; an integer beyond 64 bits as json-c reads it, saturated).  JSON
 * that is not an object gives no headers.  Returns 0 and the
 * pairs, 1 when the text is not JSON (nothing kept), -1 when out of
 * memory.
 */
int
idem__decode_headers(const char *json, size_t len, idem_hdr **hdrs_out,
					 size_t *n_out)
{
	json_object *obj;
	idem_hdr   *hdrs;
	size_t		n = 0,
				k = 0;
	int			rc;

	*hdrs_out = NULL;
	*n_out = 0;
	if (len > INT_MAX)
		return 1;
	rc = parse_json(json, len, JSON_TOKENER_DEFAULT_DEPTH, &obj);
	if (rc == 2)
		rc = parse_json(json, len, HEADERS_MAX_DEPTH, &obj);
	if (rc != 0)
		return rc < 0 ? -1 : 1;
	if (json_object_get_type(obj) != json_type_object)
	{
		json_object_put(obj);
		return 0;
	}
	{
		json_object_object_foreach(obj, key, v)
		{
			(void) key;
			n += json_object_get_type(v) == json_type_array ?
				json_object_array_length(v) : 1;
		}
	}
	if (n == 0)
	{
		json_object_put(obj);
		return 0;
	}
	hdrs = calloc(n, sizeof(idem_hdr));
	if (hdrs == NULL)
		goto nomem;
	{
		json_object_object_foreach(obj, key, v)
		{
			int			is_array = json_object_get_type(v) == json_type_array;
			size_t		nv = is_array ? json_object_array_length(v) : 1,
						i;

			for (i = 0; i < nv; i++, k++)
			{
				hdrs[k].name = idem__strdup(key);
				hdrs[k].value = header_value(is_array ?
											 json_object_array_get_idx(v, i) : v);
				if (hdrs[k].name == NULL || hdrs[k].value == NULL)
				{
					idem__free_hdrs(hdrs, n);
					goto nomem;
				}
			}
		}
	}
	json_object_put(obj);
	*hdrs_out = hdrs;
	*n_out = n;
	return 0;

nomem:
	json_object_put(obj);
	return -1;
}

/*
 * Builds a record from the one row of a reserve/get result: its columns,
 * or its one idem_reservation value; returns NULL with the error set on
 * the handle when out of memory or malformed.  A row whose state is NULL
 * (idem_get of an absent key) gives a record whose state is NULL.
 */
idem_record *
idem__record_from_result(idem_conn *conn, const PGresult *res)
{
	idem_record *rec;
	fields		f;
	const char *v;
	int			col;
	int			rc;

	col = PQfnumber(res, "reservation");
	if (col >= 0)
	{
		/* idem_get of an absent key is NULL: a record without state */
		if (PQgetisnull(res, 0, col))
			memset(&f, 0, sizeof(f));
		else if (PQfformat(res, col) != 1 ||
				 fields_of_record(PQgetvalue(res, 0, col),
								  PQgetlength(res, 0, col), &f) < 0)
		{
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"the server's idem_reservation is not of the "
							"expected shape");
			return NULL;
		}
	}
	else if (fields_of_columns(res, &f) < 0)
	{
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"the server's idem_reservation lacks expected columns");
		return NULL;
	}
	rec = idem__record_new();
	if (rec == NULL)
		goto nomem;

	v = get(&f, F_FRESH, 1);
	rec->fresh = v != NULL && v[0] != 0;
	if (get_text(&f, F_STATE, &rec->state) < 0)
		goto nomem;
	rec->status = get_int4(&f, F_STATUS, -1);
	rec->attempt = get_int4(&f, F_ATTEMPT, 0);
	rec->created_at = get_timestamptz(&f, F_CREATED_AT);
	rec->expires_at = get_timestamptz(&f, F_EXPIRES_AT);
	rec->lease_expires_at = get_timestamptz(&f, F_LEASE_EXPIRES_AT);
	if (col >= 0)
		rec->has_lease_left = lease_left(&f, res, &rec->lease_left_ms);
	else
		rec->has_lease_left = get_int8(&f, F_LEASE_LEFT_MS, &rec->lease_left_ms);
	if (get_text(&f, F_OWNER, &rec->owner) < 0)
		goto nomem;

	if (f.v[F_BODY] != NULL)
	{
		size_t		len = (size_t) f.len[F_BODY];

		rec->body = malloc(len + 1);
		if (rec->body == NULL)
			goto nomem;
		memcpy(rec->body, f.v[F_BODY], len);
		rec->body[len] = '\0';
		rec->body_len = len;
	}

	/* jsonb's binary form: a version byte (1), then the text */
	if (f.v[F_HEADERS] != NULL)
	{
		size_t		len = (size_t) f.len[F_HEADERS];

		if (len < 1 || f.v[F_HEADERS][0] != 1)
		{
			idem_record_free(rec);
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"unknown jsonb binary version in headers");
			return NULL;
		}
		rec->headers_json = malloc(len);
		if (rec->headers_json == NULL)
			goto nomem;
		memcpy(rec->headers_json, f.v[F_HEADERS] + 1, len - 1);
		rec->headers_json[len - 1] = '\0';
		rc = idem__decode_headers(rec->headers_json,
								  strlen(rec->headers_json),
								  &rec->hdrs, &rec->nhdrs);
		if (rc < 0)
			goto nomem;
		if (rc > 0)
		{
			idem_record_free(rec);
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"malformed headers JSON from the server");
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

