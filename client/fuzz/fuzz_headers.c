/*-------------------------------------------------------------------------
 *
 * fuzz_headers.c
 *	  libFuzzer harness: the JSON header encoding and decoding of libidem.
 *
 * Headers travel as a jsonb object of arrays, {"Vary": ["a", "b"]}: the
 * encoder (idem_response_add_header + idem_response_headers_json) writes
 * it at commit, the decoder (idem__parse_headers, behind every record's
 * idem_record_header* accessors) reads what the server sends back.
 *
 * Two modes, chosen by the first byte:
 *
 *	'E' + lines "name:value" (no ':' = a NULL value; the two characters
 *	backslash and 'n' stand for a newline, so that every control character
 *	reaches the encoder): adds the
 *	headers to a response, encodes them, and checks that the JSON is valid
 *	(a strict parser written here), that it decodes, with that parser and
 *	with the library's, to exactly the expected list (private headers
 *	dropped, names grouped without case under their first spelling, values
 *	in order), and that the record a runner would return agrees.
 *
 *	anything else: the whole input is the header JSON a server could send.
 *	The library's decoder must not crash or leak on anything; when the
 *	input is valid JSON with an object at the top, its list must be the
 *	reference's: each string value (or each element of an array value)
 *	decoded, any other value as its JSON text.
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

/* ---- the reference: a strict JSON parser (RFC 8259, bytes not checked
 * as UTF-8) ------------------------------------------------------------- */

typedef struct jp
{
	const char *p;
	const char *end;
	int			depth;
} jp;

static void
jp_ws(jp *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' ||
							 *j->p == '\r'))
		j->p++;
}

static int
jp_hex4(const char *p, const char *end, unsigned *out)
{
	unsigned	v = 0;
	int			i;

	if (end - p < 4)
		return 0;
	for (i = 0; i < 4; i++)
	{
		int			c = p[i],
					d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return 0;
		v = v * 16 + (unsigned) d;
	}
	*out = v;
	return 1;
}

static size_t
jp_utf8(char *d, unsigned cp)
{
	if (cp < 0x80)
	{
		d[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		d[0] = (char) (0xc0 | (cp >> 6));
		d[1] = (char) (0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000)
	{
		d[0] = (char) (0xe0 | (cp >> 12));
		d[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
		d[2] = (char) (0x80 | (cp & 0x3f));
		return 3;
	}
	d[0] = (char) (0xf0 | (cp >> 18));
	d[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
	d[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
	d[3] = (char) (0x80 | (cp & 0x3f));
	return 4;
}

/* a string; *out (malloc'd, may be NULL to skip) and *len; 1 or 0 */
static int
jp_string(jp *j, char **out, size_t *len)
{
	char	   *buf = NULL;
	size_t		n = 0;

	if (j->p >= j->end || *j->p != '"')
		return 0;
	j->p++;
	if (out)
		buf = fuzz_xmalloc((size_t) (j->end - j->p) * 2 + 1);
	while (j->p < j->end && *j->p != '"')
	{
		unsigned char c = (unsigned char) *j->p;
		char		tmp[4];
		size_t		tn = 1;

		if (c < 0x20)
			goto bad;
		if (c != '\\')
		{
			tmp[0] = (char) c;
			j->p++;
		}
		else
		{
			if (j->end - j->p < 2)
				goto bad;
			switch (j->p[1])
			{
				case '"':
				case '\\':
				case '/':
					tmp[0] = j->p[1];
					break;
				case 'b':
					tmp[0] = '\b';
					break;
				case 'f':
					tmp[0] = '\f';
					break;
				case 'n':
					tmp[0] = '\n';
					break;
				case 'r':
					tmp[0] = '\r';
					break;
				case 't':
					tmp[0] = '\t';
					break;
				case 'u':
					{
						unsigned	cp,
									lo;

						if (!jp_hex4(j->p + 2, j->end, &cp))
							goto bad;
						j->p += 6;
						if (cp >= 0xd800 && cp < 0xdc00 && j->end - j->p >= 6 &&
							j->p[0] == '\\' && j->p[1] == 'u' &&
							jp_hex4(j->p + 2, j->end, &lo) &&
							lo >= 0xdc00 && lo < 0xe000)
						{
							cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
							j->p += 6;
						}
						tn = jp_utf8(tmp, cp);
						goto put;
					}
				default:
					goto bad;
			}
			j->p += 2;
		}
put:
		if (buf)
			memcpy(buf + n, tmp, tn);
		n += tn;
	}
	if (j->p >= j->end)
		goto bad;
	j->p++;
	if (buf)
		buf[n] = '\0';
	if (out)
		*out = buf;
	if (len)
		*len = n;
	return 1;
bad:
	free(buf);
	return 0;
}

static int	jp_value(jp *j);

static int
jp_number(jp *j)
{
	const char *s = j->p;

	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p >= j->end)
		return 0;
	if (*j->p == '0')
		j->p++;
	else if (*j->p >= '1' && *j->p <= '9')
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	else
		return 0;
	if (j->p < j->end && *j->p == '.')
	{
		j->p++;
		if (j->p >= j->end || !(*j->p >= '0' && *j->p <= '9'))
			return 0;
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E'))
	{
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (j->p >= j->end || !(*j->p >= '0' && *j->p <= '9'))
			return 0;
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	return j->p > s;
}

static int
jp_lit(jp *j, const char *lit)
{
	size_t		n = strlen(lit);

	if ((size_t) (j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return 0;
	j->p += n;
	return 1;
}

/* any value, the cursor at its first byte; 1 or 0 */
static int
jp_value(jp *j)
{
	int			ok = 0;

	if (j->p >= j->end || ++j->depth > 200)
		return 0;
	switch (*j->p)
	{
		case '"':
			ok = jp_string(j, NULL, NULL);
			break;
		case '{':
			j->p++;
			jp_ws(j);
			if (j->p < j->end && *j->p == '}')
			{
				j->p++;
				ok = 1;
				break;
			}
			for (;;)
			{
				if (!jp_string(j, NULL, NULL))
					goto out;
				jp_ws(j);
				if (j->p >= j->end || *j->p != ':')
					goto out;
				j->p++;
				jp_ws(j);
				if (!jp_value(j))
					goto out;
				jp_ws(j);
				if (j->p < j->end && *j->p == ',')
				{
					j->p++;
					jp_ws(j);
					continue;
				}
				if (j->p < j->end && *j->p == '}')
				{
					j->p++;
					ok = 1;
				}
				goto out;
			}
		case '[':
			j->p++;
			jp_ws(j);
			if (j->p < j->end && *j->p == ']')
			{
				j->p++;
				ok = 1;
				break;
			}
			for (;;)
			{
				if (!jp_value(j))
					goto out;
				jp_ws(j);
				if (j->p < j->end && *j->p == ',')
				{
					j->p++;
					jp_ws(j);
					continue;
				}
				if (j->p < j->end && *j->p == ']')
				{
					j->p++;
					ok = 1;
				}
				goto out;
			}
		case 't':
			ok = jp_lit(j, "true");
			break;
		case 'f':
			ok = jp_lit(j, "false");
			break;
		case 'n':
			ok = jp_lit(j, "null");
			break;
		default:
			ok = jp_number(j);
			break;
	}
out:
	j->depth--;
	return ok;
}

/* one header value (a string or anything as its text) into l */
static int
ref_header_value(jp *j, const char *name, size_t nlen, plist *l)
{
	const char *start = j->p;

	if (j->p < j->end && *j->p == '"')
	{
		char	   *v;
		size_t		vlen;

		if (!jp_string(j, &v, &vlen))
			return 0;
		plist_add(l, name, nlen, v, vlen);
		free(v);
		return 1;
	}
	if (!jp_value(j))
		return 0;
	plist_add(l, name, nlen, start, (size_t) (j->p - start));
	return 1;
}

/*
 * The reference decoding of a header object: 1 and the list when text is
 * valid JSON whose top value is an object, else 0.
 */
static int
ref_parse_headers(const char *text, size_t len, plist *l)
{
	jp			j = {text, text + len, 0};

	jp_ws(&j);
	if (j.p >= j.end || *j.p != '{')
		return 0;
	j.p++;
	jp_ws(&j);
	if (j.p < j.end && *j.p == '}')
		j.p++;
	else
		for (;;)
		{
			char	   *name;
			size_t		nlen;
			int			ok;

			if (!jp_string(&j, &name, &nlen))
				return 0;
			jp_ws(&j);
			if (j.p >= j.end || *j.p != ':')
			{
				free(name);
				return 0;
			}
			j.p++;
			jp_ws(&j);
			if (j.p < j.end && *j.p == '[')
			{
				j.p++;
				jp_ws(&j);
				ok = 1;
				if (j.p < j.end && *j.p == ']')
					j.p++;
				else
					for (;;)
					{
						if (!ref_header_value(&j, name, nlen, l))
						{
							ok = 0;
							break;
						}
						jp_ws(&j);
						if (j.p < j.end && *j.p == ',')
						{
							j.p++;
							jp_ws(&j);
							continue;
						}
						if (j.p < j.end && *j.p == ']')
							j.p++;
						else
							ok = 0;
						break;
					}
			}
			else
				ok = ref_header_value(&j, name, nlen, l);
			free(name);
			if (!ok)
				return 0;
			jp_ws(&j);
			if (j.p < j.end && *j.p == ',')
			{
				j.p++;
				jp_ws(&j);
				continue;
			}
			if (j.p < j.end && *j.p == '}')
			{
				j.p++;
				break;
			}
			return 0;
		}
	jp_ws(&j);
	return j.p == j.end;
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

static void
fuzz_decode(const uint8_t *data, size_t size)
{
	char	   *text = fuzz_strndup(data, size);
	idem_record *rec = idem__record_new();
	plist		want = {NULL, 0, 0};
	size_t		tlen = strlen(text);	/* the decoder sees a C string */

	FUZZ_CHECK(rec != NULL, "record_new");
	FUZZ_CHECK(idem__record_set_headers(rec, text) == 0, "set_headers failed");
	FUZZ_CHECK(strcmp(idem_record_headers_json(rec), text) == 0,
			   "headers_json is not the text");
	check_accessors(rec);
	if (ref_parse_headers(text, tlen, &want))
		check_same(rec->hdrs, rec->nhdrs, &want, "decode");
	plist_free(&want);
	idem_record_free(rec);
	free(text);
}

static void
fuzz_encode(const uint8_t *data, size_t size)
{
	fuzz_lines	l;
	idem_response *resp = idem_response_new();
	plist		want = {NULL, 0, 0},
				ref = {NULL, 0, 0};
	idem_hdr   *hdrs = NULL;
	size_t		nhdrs = 0,
				i,
				k;
	const char *values[MAX_LINES];
	const char *json;
	char	   *done;
	idem_record *rec;

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
	FUZZ_CHECK(ref_parse_headers(json, strlen(json), &ref),
			   "the encoder wrote invalid JSON: %s", json);
	check_same(ref.p, ref.n, &want, "encode (reference decoder)");
	FUZZ_CHECK(idem__parse_headers(json, &hdrs, &nhdrs) == 0, "parse_headers");
	check_same(hdrs, nhdrs, &want, "encode (library decoder)");
	idem__free_hdrs(hdrs, nhdrs);

	rec = idem__record_from_response(resp, "committed");
	FUZZ_CHECK(rec != NULL, "record_from_response");
	check_same(rec->hdrs, rec->nhdrs, &want, "record_from_response");
	check_accessors(rec);
	idem_record_free(rec);

	plist_free(&want);
	plist_free(&ref);
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
