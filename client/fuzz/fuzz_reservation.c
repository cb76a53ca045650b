/*-------------------------------------------------------------------------
 *
 * fuzz_reservation.c
 *	  libFuzzer harness: the decoding of one idem_reservation value.
 *
 * The reserve inside a transaction block asks for the function's value
 * alone (SELECT idem_reserve(...)): one column, a composite in the binary
 * form of record_send: the number of attributes (int4), then for each its
 * type OID (int4), its length (int4, -1 for NULL) and that many bytes.
 * idem__record_from_result (idem_decode.c) matches the attributes by
 * position against idem_reservation's (fresh bool, state text, status
 * int4, headers jsonb, body bytea, attempt int4, created_at and
 * expires_at timestamptz, then owner text and lease_expires_at
 * timestamptz from 1.2 on), each of its type, and skips attributes a
 * later version appends.
 *
 * The reserve and the get made outside a block also ask for the server's
 * now() beside it (server_now), from which the library has the lease's
 * remaining length.
 *
 * Input: a byte of flags (1: a server_now column, 2: which is NULL, 4:
 * the reservation is NULL, as idem_get's of an absent key), then the 8
 * bytes of server_now when it is there and not NULL, then the value.
 * Checked against a reference reading of the same bytes written here: a
 * value it finds cut short, with fewer than eight attributes or one of
 * another type must be refused with IDEM_ERR_PROTOCOL (as must headers of
 * an unknown jsonb version); any other must give a record whose fields
 * are exactly the bytes sent, and whose lease_left_ms is
 * lease_expires_at - server_now in milliseconds, rounded half away from
 * zero, when both are there and finite.
 *
 *-------------------------------------------------------------------------
 */
#include "idem_int.h"
#include "fuzz.h"

#define NATTS 10

static const uint32_t att_type[NATTS] = {16, 25, 23, 3802, 17, 23, 1184, 1184, 25, 1184};

typedef struct att
{
	int			present;		/* among the value's attributes, not NULL */
	const uint8_t *v;
	int32_t		len;
} att;

/* the reference reading: 1 and atts, or 0 when the value must be refused */
static int
reference(const uint8_t *data, size_t size, att *atts)
{
	size_t		pos = 4;
	uint32_t	n,
				i;

	memset(atts, 0, sizeof(att) * NATTS);
	if (size < 4)
		return 0;
	n = fuzz_rd32(data);
	if (n < 8 || n > 1600)
		return 0;
	for (i = 0; i < n; i++)
	{
		uint32_t	type;
		int32_t		len;

		if (size - pos < 8)
			return 0;
		type = fuzz_rd32(data + pos);
		len = (int32_t) fuzz_rd32(data + pos + 4);
		pos += 8;
		if (len < -1 || (len > 0 && (size_t) len > size - pos))
			return 0;
		if (i < NATTS && type != att_type[i])
			return 0;
		if (i < NATTS && len >= 0)
		{
			atts[i].present = 1;
			atts[i].v = data + pos;
			atts[i].len = len;
		}
		if (len > 0)
			pos += (size_t) len;
	}
	return 1;
}

static int64_t
timestamptz_of(const att *a)
{
	return a->present && a->len == 8 ? fuzz_timestamptz(a->v) : 0;
}

/* a text attribute read as the library keeps it: up to its first NUL */
static int
same_text(const char *got, const att *a)
{
	size_t		n;

	if (!a->present)
		return got == NULL;
	n = strnlen((const char *) a->v, (size_t) a->len);
	return got != NULL && strlen(got) == n && memcmp(got, a->v, n) == 0;
}

/* the reference lease_left_ms: 1 and *ms, or 0 when there is none */
static int
reference_left(const att *until, const uint8_t *now, int64_t *ms)
{
	int64_t		a,
				b;
	__int128	d,
				r;

	if (!until->present || until->len != 8 || now == NULL)
		return 0;
	a = (int64_t) ((uint64_t) fuzz_rd32(until->v) << 32 | fuzz_rd32(until->v + 4));
	b = (int64_t) ((uint64_t) fuzz_rd32(now) << 32 | fuzz_rd32(now + 4));
	if (a == INT64_MIN || a == INT64_MAX || b == INT64_MIN || b == INT64_MAX)
		return 0;
	/* in 128 bits: no overflow to guard against but the result's */
	d = (__int128) a - (__int128) b;
	if (d > INT64_MAX || d < INT64_MIN)
		return 0;
	r = d % 1000;
	d /= 1000;
	if (r >= 500)
		d++;
	else if (r <= -500)
		d--;
	*ms = (int64_t) d;
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	att			atts[NATTS];
	PGresAttDesc attr[2];
	const uint8_t *now = NULL;
	uint8_t		flags;
	int64_t		want_left = 0;
	int			i;
	PGresult   *res;
	idem_conn  *conn;
	idem_record *rec;
	int			ok;
	json_object *headers = NULL;
	int			headers_ok = 0;
	const att  *h = &atts[3];

	if (size < 1 || size > INT32_MAX)
		return 0;
	flags = data[0];
	data++;
	size--;
	if ((flags & 1) && !(flags & 2))
	{
		if (size < 8)
			return 0;
		now = data;
		data += 8;
		size -= 8;
	}
	ok = (flags & 4) ? 1 : reference(data, size, atts);
	if (flags & 4)
		memset(atts, 0, sizeof(atts));

	res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	FUZZ_CHECK(res != NULL, "PQmakeEmptyPGresult");
	memset(attr, 0, sizeof(attr));
	attr[0].name = "reservation";
	attr[1].name = "server_now";
	for (i = 0; i < 2; i++)
	{
		attr[i].format = 1;
		attr[i].typlen = -1;
		attr[i].atttypmod = -1;
	}
	FUZZ_CHECK(PQsetResultAttrs(res, (flags & 1) ? 2 : 1, attr), "PQsetResultAttrs");
	if (flags & 4)
		FUZZ_CHECK(PQsetvalue(res, 0, 0, NULL, -1), "PQsetvalue");
	else
		FUZZ_CHECK(PQsetvalue(res, 0, 0, (char *) (size ? (const char *) data : ""), (int) size),
				   "PQsetvalue");
	if (flags & 1)
		FUZZ_CHECK(PQsetvalue(res, 0, 1, now ? (char *) now : NULL, now ? 8 : -1),
				   "PQsetvalue");

	conn = idem__conn_new(NULL, 0);
	FUZZ_CHECK(conn != NULL, "conn_new");
	rec = idem__record_from_result(conn, res);

	if (!ok)
		FUZZ_CHECK(rec == NULL && conn->err == IDEM_ERR_PROTOCOL,
				   "a value the reference refuses was accepted");
	else if (h->present && (h->len < 1 || h->v[0] != 1))
		FUZZ_CHECK(rec == NULL && conn->err == IDEM_ERR_PROTOCOL,
				   "headers in an unknown jsonb version must be refused");
	else if (h->present &&
			 !(headers_ok = fuzz_json((const char *) h->v + 1,
									  strnlen((const char *) h->v + 1, (size_t) h->len - 1),
									  &headers)))
		FUZZ_CHECK(rec == NULL && conn->err == IDEM_ERR_PROTOCOL,
				   "headers that are not JSON must be refused");
	else
	{
		const void *body;
		size_t		blen;

		FUZZ_CHECK(rec != NULL, "a well-formed value was refused: %s", conn->errmsg);
		FUZZ_CHECK(rec->fresh == (atts[0].present && atts[0].len == 1 && atts[0].v[0] != 0),
				   "fresh");
		FUZZ_CHECK(same_text(idem_record_state(rec), &atts[1]), "state differs");
		FUZZ_CHECK(idem_record_status(rec) ==
				   (atts[2].present && atts[2].len == 4 ? (int) (int32_t) fuzz_rd32(atts[2].v) : -1),
				   "status");
		FUZZ_CHECK(idem_record_attempt(rec) ==
				   (atts[5].present && atts[5].len == 4 ? (int) (int32_t) fuzz_rd32(atts[5].v) : 0),
				   "attempt");
		FUZZ_CHECK(idem_record_created_at(rec) == timestamptz_of(&atts[6]), "created_at");
		FUZZ_CHECK(idem_record_expires_at(rec) == timestamptz_of(&atts[7]), "expires_at");
		FUZZ_CHECK(same_text(idem_record_owner(rec), &atts[8]), "owner differs");
		FUZZ_CHECK(idem_record_lease_expires_at(rec) == timestamptz_of(&atts[9]),
				   "lease_expires_at");
		FUZZ_CHECK(rec->has_lease_left == reference_left(&atts[9], now, &want_left) &&
				   (!rec->has_lease_left || rec->lease_left_ms == want_left),
				   "lease_left_ms %lld, want %lld", (long long) rec->lease_left_ms,
				   (long long) want_left);
		body = idem_record_body(rec, &blen);
		if (!atts[4].present)
			FUZZ_CHECK(body == NULL && blen == 0, "NULL body");
		else
			FUZZ_CHECK(body != NULL && blen == (size_t) atts[4].len &&
					   (blen == 0 || memcmp(body, atts[4].v, blen) == 0) &&
					   ((const char *) body)[blen] == '\0', "body differs");
		if (!h->present)
			FUZZ_CHECK(idem_record_headers_json(rec) == NULL &&
					   idem_record_header_count(rec) == 0, "no headers");
		else
		{
			const char *json = idem_record_headers_json(rec);
			size_t		n = strnlen((const char *) h->v + 1, (size_t) h->len - 1);

			FUZZ_CHECK(headers_ok, "headers json-c refuses were accepted");
			FUZZ_CHECK(json != NULL && strlen(json) == n && memcmp(json, h->v + 1, n) == 0,
					   "headers_json differs");
			FUZZ_CHECK(idem_record_header_count(rec) == fuzz_json_header_count(headers),
					   "%zu headers, json-c reads %zu", idem_record_header_count(rec),
					   fuzz_json_header_count(headers));
		}
	}
	if (headers)
		json_object_put(headers);
	idem_record_free(rec);
	idem_free(conn);
	PQclear(res);
	return 0;
}
