/*-------------------------------------------------------------------------
 *
 * fuzz_record.c
 *	  libFuzzer harness: the decoding of the server's answers into records.
 *
 * idem_reserve and idem_get read one row in binary format (fresh, state,
 * status, headers, body, attempt, created_at, expires_at) and build an
 * idem_record from it: booleans, big-endian int4 and timestamptz, bytea as
 * raw bytes, jsonb as a version byte followed by the text, which is then
 * read into headers (with json-c).  A server of another version, a proxy,
 * or a bug may send anything in those columns; the decoder must never read
 * out of bounds, and what it accepts must be exactly what was sent.
 *
 * The harness builds such a result with libpq's own constructors
 * (PQmakeEmptyPGresult, PQsetResultAttrs, PQsetvalue) and runs the
 * library's idem__record_from_result on it (idem_decode.c, linked into the
 * harness with the rest of the library).
 *
 * Input: a byte choosing which of the eight columns exist, a byte rotating
 * their order, then for each column a 2-byte big-endian length (0xffff =
 * NULL) and that many bytes (cut short at the end of the input).
 *
 *-------------------------------------------------------------------------
 */
#include "idem_int.h"
#include "fuzz.h"

#define NCOLS 8

static const char *const col_names[NCOLS] = {
	"fresh", "state", "status", "headers", "body", "attempt", "created_at",
	"expires_at"
};

typedef struct colval
{
	int			present;
	int			isnull;
	const uint8_t *v;
	int			len;
} colval;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	colval		cv[NCOLS];
	PGresAttDesc attrs[NCOLS];
	int			order[NCOLS];
	int			ncols = 0,
				i;
	size_t		pos = 2;
	PGresult   *res;
	idem_conn  *conn;
	idem_record *rec;
	uint8_t		mask,
				rot;
	json_object *headers = NULL;
	int			headers_ok = 0;

	if (size < 2)
		return 0;
	mask = data[0];
	rot = data[1];
	memset(cv, 0, sizeof(cv));
	for (i = 0; i < NCOLS; i++)
		if (mask & (1u << i))
			order[ncols++] = i;
	/* rotate the column order */
	if (ncols > 0)
	{
		int			tmp[NCOLS],
					k;

		for (k = 0; k < ncols; k++)
			tmp[k] = order[(k + rot) % ncols];
		memcpy(order, tmp, sizeof(int) * (size_t) ncols);
	}
	for (i = 0; i < ncols; i++)
	{
		colval	   *c = &cv[order[i]];
		size_t		len;

		c->present = 1;
		if (pos + 2 > size)
		{
			c->isnull = 1;
			continue;
		}
		len = (size_t) data[pos] << 8 | data[pos + 1];
		pos += 2;
		if (len == 0xffff)
		{
			c->isnull = 1;
			continue;
		}
		if (len > size - pos)
			len = size - pos;
		c->v = data + pos;
		c->len = (int) len;
		pos += len;
	}

	res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	FUZZ_CHECK(res != NULL, "PQmakeEmptyPGresult");
	memset(attrs, 0, sizeof(attrs));
	for (i = 0; i < ncols; i++)
	{
		attrs[i].name = (char *) col_names[order[i]];
		attrs[i].format = 1;
		attrs[i].typlen = -1;
		attrs[i].atttypmod = -1;
	}
	FUZZ_CHECK(PQsetResultAttrs(res, ncols, ncols ? attrs : NULL), "PQsetResultAttrs");
	for (i = 0; i < ncols; i++)
	{
		colval	   *c = &cv[order[i]];

		FUZZ_CHECK(PQsetvalue(res, 0, i, c->isnull ? NULL : (char *) (c->v ? (const char *) c->v : ""),
							  c->isnull ? -1 : c->len), "PQsetvalue");
	}

	conn = idem__conn_new(NULL, 0);
	FUZZ_CHECK(conn != NULL, "conn_new");
	rec = ncols > 0 ? idem__record_from_result(conn, res) : NULL;

	if (ncols == 0)
		;
	else if (!cv[1].present || !cv[4].present)
		FUZZ_CHECK(rec == NULL && conn->err == IDEM_ERR_PROTOCOL,
				   "a row without state or body must be refused");
	else if (cv[3].present && !cv[3].isnull && (cv[3].len < 1 || cv[3].v[0] != 1))
		FUZZ_CHECK(rec == NULL && conn->err == IDEM_ERR_PROTOCOL,
				   "headers in an unknown jsonb version must be refused");
	else if (cv[3].present && !cv[3].isnull &&
			 !(headers_ok = fuzz_json((const char *) cv[3].v + 1,
									  strnlen((const char *) cv[3].v + 1,
											  (size_t) cv[3].len - 1),
									  &headers)))
		FUZZ_CHECK(rec == NULL && conn->err == IDEM_ERR_PROTOCOL,
				   "headers that are not JSON must be refused");
	else
	{
		const void *body;
		size_t		blen;
		int			want_status = -1,
					want_attempt = 0;

		FUZZ_CHECK(rec != NULL, "a well-formed row was refused: %s", conn->errmsg);
		FUZZ_CHECK(rec->fresh == (cv[0].present && !cv[0].isnull && cv[0].len == 1 &&
								  cv[0].v[0] != 0), "fresh");
		if (cv[1].isnull)
			FUZZ_CHECK(idem_record_state(rec) == NULL, "state of NULL");
		else
			FUZZ_CHECK(idem_record_state(rec) != NULL &&
					   strlen(idem_record_state(rec)) ==
					   strnlen((const char *) cv[1].v, (size_t) cv[1].len) &&
					   memcmp(idem_record_state(rec), cv[1].v,
							  strlen(idem_record_state(rec))) == 0,
					   "state differs");
		if (cv[2].present && !cv[2].isnull && cv[2].len == 4)
			want_status = (int) (int32_t) fuzz_rd32(cv[2].v);
		FUZZ_CHECK(idem_record_status(rec) == want_status, "status %d, want %d",
				   idem_record_status(rec), want_status);
		if (cv[5].present && !cv[5].isnull && cv[5].len == 4)
			want_attempt = (int) (int32_t) fuzz_rd32(cv[5].v);
		FUZZ_CHECK(idem_record_attempt(rec) == want_attempt, "attempt");
		for (i = 6; i < 8; i++)
		{
			int64_t		want = 0,
						got = i == 6 ? idem_record_created_at(rec) : idem_record_expires_at(rec);

			if (cv[i].present && !cv[i].isnull && cv[i].len == 8)
				want = fuzz_timestamptz(cv[i].v);
			FUZZ_CHECK(got == want, "%s", col_names[i]);
		}
		body = idem_record_body(rec, &blen);
		if (cv[4].isnull)
			FUZZ_CHECK(body == NULL && blen == 0, "NULL body");
		else
			FUZZ_CHECK(body != NULL && blen == (size_t) cv[4].len &&
					   (blen == 0 || memcmp(body, cv[4].v, blen) == 0) &&
					   ((const char *) body)[blen] == '\0', "body differs");
		if (!cv[3].present || cv[3].isnull)
			FUZZ_CHECK(idem_record_headers_json(rec) == NULL &&
					   idem_record_header_count(rec) == 0, "no headers");
		else
		{
			const char *json = idem_record_headers_json(rec);
			size_t		n = idem_record_header_count(rec),
						k;

			FUZZ_CHECK(headers_ok, "headers json-c refuses were accepted");
			FUZZ_CHECK(json != NULL && strlen(json) ==
					   strnlen((const char *) cv[3].v + 1, (size_t) cv[3].len - 1) &&
					   strncmp(json, (const char *) cv[3].v + 1, strlen(json)) == 0,
					   "headers_json differs");
			FUZZ_CHECK(n == fuzz_json_header_count(headers),
					   "%zu headers, json-c reads %zu", n,
					   fuzz_json_header_count(headers));
			for (k = 0; k < n; k++)
				FUZZ_CHECK(idem_record_header_name(rec, k) &&
						   idem_record_header_value(rec, k), "header %zu", k);
		}
	}
	json_object_put(headers);
	idem_record_free(rec);

	/* the boolean of commit / release, from the first column */
	if (ncols > 0)
	{
		colval	   *c = &cv[order[0]];
		int			want = !c->isnull && c->len == 1 && c->v[0] != 0;

		FUZZ_CHECK(idem__bool_result(res) == want, "bool_result");
	}

	idem_free(conn);
	PQclear(res);
	return 0;
}
