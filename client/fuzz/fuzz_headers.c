/*-------------------------------------------------------------------------
 *
 * fuzz_headers.c
 *	  libFuzzer harness: the header encoding and decoding of libidem.
 *
 * Headers are stored as a jsonb object of arrays, {"Vary": ["a", "b"]}:
 * the encoder (idem_response_add_header + idem_response_headers_json)
 * writes it at commit.  The server hands the stored JSON back and the
 * library reads it with json-c (idem__decode_headers, behind every
 * record's idem_record_header* accessors).
 *
 * Two modes, chosen by the first byte:
 *
 *	'E' + lines "name:value" (no ':' = a NULL value; the two characters
 *	backslash and 'n' stand for a newline, so that every control character
 *	reaches the encoder): adds the headers to a response, encodes them,
 *	and checks the JSON against a reference encoder of the expected list
 *	(private headers dropped, names grouped without case under their first
 *	spelling, values in order), that the decoder reads exactly that list
 *	back, and that the record a runner would return has it too.
 *
 *	anything else: the whole input is the JSON text a server could send.
 *	The decoder must not crash or leak on anything, accept exactly what
 *	json-c's strict tokener accepts, and give back what json-c read, in
 *	its order: a name for each element of each member's array (or the
 *	member itself), strings as json-c unescaped them, any other value as
 *	JSON text that json-c reads back as an equal value and that the
 *	decoder gives back unchanged (the layout of the server's jsonb
 *	output is a fixed point).  json-c's own writing of what it read must
 *	decode to the same headers.
 *
 *-------------------------------------------------------------------------
 */
#include "idem_int.h"
#include "fuzz.h"

#define MAX_LINES 64

/* ---- a list of (name, value) pairs ------------------------------------- */

typedef idem_hdr pair;			/* name, value */

typedef struct plist
{
	pair	   *p;
	size_t		n;
	size_t		cap;
} plist;

/* appends copies; a value is cut at its first NUL, as a C string is */
static void
plist_add(plist *l, const char *name, size_t nlen, const char *value, size_t vlen)
{
	if (l->n == l->cap)
	{
		l->cap = l->cap ? l->cap * 2 : 8;
		l->p = realloc(l->p, l->cap * sizeof(pair));
		if (l->p == NULL)
			abort();
	}
	l->p[l->n].name = fuzz_strndup((const uint8_t *) name, strnlen(name, nlen));
	l->p[l->n].value = fuzz_strndup((const uint8_t *) value, strnlen(value, vlen));
	l->n++;
}

static void
plist_free(plist *l)
{
	size_t		i;

	for (i = 0; i < l->n; i++)
	{
		free(l->p[i].name);
		free(l->p[i].value);
	}
	free(l->p);
	memset(l, 0, sizeof(*l));
}

/* ---- the reference encoder -------------------------------------------- */

typedef struct rbuf
{
	char	   *p;
	size_t		n;
	size_t		cap;
} rbuf;

static void
rb_add(rbuf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap)
	{
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL)
			abort();
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
}

/*
 * A JSON string as the README promises it: '"' and '\' escaped with a
 * backslash, control characters and DEL as \u00XX (lowercase hex), every
 * other byte as it is.
 */
static void
rb_string(rbuf *b, const char *s)
{
	rb_add(b, "\"", 1);
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;
		char		esc[8];

		if (c == '"' || c == '\\')
		{
			esc[0] = '\\';
			esc[1] = (char) c;
			rb_add(b, esc, 2);
		}
		else if (c < 0x20 || c == 0x7f)
		{
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			rb_add(b, esc, 6);
		}
		else
			rb_add(b, s, 1);
	}
	rb_add(b, "\"", 1);
}

/* the object of arrays for a grouped list (names of a group side by side) */
static char *
ref_encode(const plist *l)
{
	rbuf		b = {NULL, 0, 0};
	size_t		i;

	rb_add(&b, "{", 1);
	for (i = 0; i < l->n; i++)
	{
		if (i == 0 || strcmp(l->p[i].name, l->p[i - 1].name) != 0)
		{
			if (i > 0)
				rb_add(&b, "], ", 3);
			rb_string(&b, l->p[i].name);
			rb_add(&b, ": [", 3);
		}
		else
			rb_add(&b, ", ", 2);
		rb_string(&b, l->p[i].value);
	}
	if (l->n > 0)
		rb_add(&b, "]", 1);
	rb_add(&b, "}", 1);
	return b.p;
}

/* ---- checks ------------------------------------------------------------ */

static void
check_same(const idem_hdr *hdrs, size_t n, const plist *want, const char *what)
{
	size_t		i;

	FUZZ_CHECK(n == want->n, "%s: %zu headers, want %zu", what, n, want->n);
	for (i = 0; i < n; i++)
	{
		FUZZ_CHECK(strcmp(hdrs[i].name, want->p[i].name) == 0,
				   "%s: header %zu named \"%s\", want \"%s\"", what, i,
				   hdrs[i].name, want->p[i].name);
		FUZZ_CHECK(strcmp(hdrs[i].value, want->p[i].value) == 0,
				   "%s: header %zu (%s) = \"%s\", want \"%s\"", what, i,
				   hdrs[i].name, hdrs[i].value, want->p[i].value);
	}
}

/* the accessors of a record agree with its list */
static void
check_accessors(const idem_record *rec)
{
	size_t		n = idem_record_header_count(rec),
				i,
				k;

	FUZZ_CHECK(idem_record_header_name(rec, n) == NULL, "name past the end");
	FUZZ_CHECK(idem_record_header_value(rec, n) == NULL, "value past the end");
	for (i = 0; i < n; i++)
	{
		const char *name = idem_record_header_name(rec, i);
		const char *value = idem_record_header_value(rec, i);
		const char *first = NULL;

		FUZZ_CHECK(name != NULL && value != NULL, "header %zu has NULLs", i);
		for (k = 0; k < n; k++)
			if (fuzz_caseeq(idem_record_header_name(rec, k), name))
			{
				first = idem_record_header_value(rec, k);
				break;
			}
		FUZZ_CHECK(idem_record_header(rec, name) == first,
				   "idem_record_header(\"%s\") is not the first value", name);
	}
}

static int
is_private(const char *name)
{
	return fuzz_caseeq(name, "Set-Cookie") || fuzz_caseeq(name, "Set-Cookie2") ||
		fuzz_caseeq(name, "Authorization") ||
		fuzz_caseeq(name, "Proxy-Authorization");
}

/* a non-string value's text decodes to itself (an array inside another) */
static void
check_fixed_point(const char *value)
{
	size_t		len = strlen(value);
	char	   *json = fuzz_xmalloc(len + 16);
	idem_hdr   *hdrs;
	size_t		n;

	snprintf(json, len + 16, value[0] == '[' ? "{\"x\": [%s]}" : "{\"x\": %s}",
			 value);
	FUZZ_CHECK(idem__decode_headers(json, strlen(json), &hdrs, &n) == 0 &&
			   n == 1 && strcmp(hdrs[0].value, value) == 0,
			   "%s does not decode to itself (%s)", value,
			   n == 1 ? hdrs[0].value : "?");
	idem__free_hdrs(hdrs, n);
	free(json);
}

/* the headers decoded from a JSON value, against json-c's reading of it */
static void
check_against(const idem_hdr *hdrs, size_t n, json_object *obj)
{
	size_t		k = 0;

	FUZZ_CHECK(n == fuzz_json_header_count(obj), "%zu headers, json-c reads %zu",
			   n, fuzz_json_header_count(obj));
	if (n == 0)
		return;
	{
		json_object_object_foreach(obj, key, v)
		{
			int			is_array = json_object_get_type(v) == json_type_array;
			size_t		nv = is_array ? json_object_array_length(v) : 1,
						i;

			for (i = 0; i < nv; i++, k++)
			{
				json_object *e = is_array ? json_object_array_get_idx(v, i) : v;
				json_object *back;

				FUZZ_CHECK(strcmp(hdrs[k].name, key) == 0,
						   "header %zu named \"%s\", json-c reads \"%s\"", k,
						   hdrs[k].name, key);
				if (json_object_get_type(e) == json_type_string)
				{
					FUZZ_CHECK(fuzz_cstr_is(hdrs[k].value,
											(const uint8_t *) json_object_get_string(e),
											(size_t) json_object_get_string_len(e)),
							   "header %zu (%s) = \"%s\", json-c reads \"%s\"", k,
							   key, hdrs[k].value, json_object_get_string(e));
					continue;
				}
				FUZZ_CHECK(fuzz_json(hdrs[k].value, strlen(hdrs[k].value), &back) &&
						   json_object_equal(back, e),
						   "header %zu (%s) = %s, not the value json-c read", k,
						   key, hdrs[k].value);
				json_object_put(back);
				check_fixed_point(hdrs[k].value);
			}
		}
	}
}

static void
fuzz_decode(const uint8_t *data, size_t size)
{
	idem_record *rec = idem__record_new();
	json_object *obj;
	int			rc,
				ok;

	FUZZ_CHECK(rec != NULL, "record_new");
	rc = idem__decode_headers((const char *) data, size, &rec->hdrs,
							  &rec->nhdrs);
	FUZZ_CHECK(rc >= 0, "decode_headers ran out of memory");
	ok = fuzz_json((const char *) data, size, &obj);
	FUZZ_CHECK((rc == 0) == ok, "decode_headers says %d, json-c %s", rc,
			   ok ? "accepts" : "refuses");
	if (ok)
	{
		const char *again = json_object_to_json_string_ext(obj,
														   JSON_C_TO_STRING_PLAIN);
		idem_hdr   *hdrs;
		size_t		n,
					i;

		check_against(rec->hdrs, rec->nhdrs, obj);

		/* json-c's round trip: what it writes decodes to the same headers */
		FUZZ_CHECK(again != NULL, "json-c wrote nothing");
		FUZZ_CHECK(idem__decode_headers(again, strlen(again), &hdrs, &n) == 0 &&
				   n == rec->nhdrs, "json-c's writing %s decodes otherwise", again);
		for (i = 0; i < n; i++)
			FUZZ_CHECK(strcmp(hdrs[i].name, rec->hdrs[i].name) == 0 &&
					   strcmp(hdrs[i].value, rec->hdrs[i].value) == 0,
					   "json-c's writing: header %zu is %s: %s, not %s: %s", i,
					   hdrs[i].name, hdrs[i].value, rec->hdrs[i].name,
					   rec->hdrs[i].value);
		idem__free_hdrs(hdrs, n);
	}
	else
		FUZZ_CHECK(rec->hdrs == NULL && rec->nhdrs == 0,
				   "a refused value left headers");
	check_accessors(rec);
	json_object_put(obj);
	idem_record_free(rec);
}

static void
fuzz_encode(const uint8_t *data, size_t size)
{
	fuzz_lines	l;
	idem_response *resp = idem_response_new();
	plist		want = {NULL, 0, 0};
	size_t		i,
				k;
	const char *values[MAX_LINES];
	const char *json;
	char	   *ref;
	char	   *done;
	idem_record *rec;
	idem_hdr   *hdrs;
	size_t		nhdrs;

	FUZZ_CHECK(resp != NULL, "response_new");
	fuzz_split_lines(data, size, MAX_LINES, &l);
	for (i = 0; i < l.n; i++)
	{
		char	   *s = l.line[i],
				   *colon,
				   *p;
		int			rc;

		/* "\n" (backslash, n) stands for a newline; other bytes as they are */
		for (p = s; *p; p++)
			if (p[0] == '\\' && p[1] == 'n')
			{
				p[0] = '\n';
				memmove(p + 1, p + 2, strlen(p + 2) + 1);
			}
		colon = strchr(s, ':');
		if (colon)
			*colon = '\0';
		values[i] = colon ? colon + 1 : "";
		rc = idem_response_add_header(resp, s, colon ? colon + 1 : NULL);
		FUZZ_CHECK(rc == (*s ? 0 : -1), "add_header(\"%s\") = %d", s, rc);
	}

	/* the expected list: names grouped without case, first spelling */
	done = calloc(l.n + 1, 1);
	for (i = 0; i < l.n; i++)
	{
		const char *ni = l.line[i];

		if (done[i] || *ni == '\0' || is_private(ni))
			continue;
		for (k = i; k < l.n; k++)
		{
			const char *nk = l.line[k];

			if (done[k] || !fuzz_caseeq(ni, nk))
				continue;
			done[k] = 1;
			plist_add(&want, ni, strlen(ni), values[k], strlen(values[k]));
		}
	}
	free(done);

	json = idem_response_headers_json(resp);
	FUZZ_CHECK(json != NULL, "headers_json failed");
	FUZZ_CHECK(idem_response_headers_json(resp) == json, "headers_json not cached");
	ref = ref_encode(&want);
	FUZZ_CHECK(strcmp(json, ref) == 0, "the encoder wrote %s, want %s", json, ref);
	free(ref);

	/* and the decoder reads the list back */
	FUZZ_CHECK(idem__decode_headers(json, strlen(json), &hdrs, &nhdrs) == 0,
			   "the encoder's %s does not decode", json);
	check_same(hdrs, nhdrs, &want, "decode_headers");
	idem__free_hdrs(hdrs, nhdrs);

	rec = idem__record_from_response(resp, "committed");
	FUZZ_CHECK(rec != NULL, "record_from_response");
	check_same(rec->hdrs, rec->nhdrs, &want, "record_from_response");
	check_accessors(rec);

	FUZZ_CHECK(strcmp(idem_record_headers_json(rec), json) == 0,
			   "record_from_response: headers_json");
	idem_record_free(rec);
	plist_free(&want);
	idem_response_free(resp);
	fuzz_free_lines(&l);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 0 && data[0] == 'E')
		fuzz_encode(data + 1, size - 1);
	else
		fuzz_decode(data, size);
	return 0;
}
