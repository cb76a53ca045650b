/*-------------------------------------------------------------------------
 *
 * idem_record.c
 *	  Records (reservations and stored responses), responses built by
 *	  handlers, and the JSON encoding of HTTP headers.
 *
 * Headers are stored as a jsonb object mapping each header name to the
 * array of its values: {"Content-Type": ["text/plain"], "Vary": ["a", "b"]}.
 * An object of arrays keeps repeated headers and their order, which a
 * plain name -> value object would not.  Headers that would leak one
 * client's credentials to another on replay are never stored.
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "idem_int.h"

/* ---- small helpers ----------------------------------------------------- */

char *
idem__strdup(const char *s)
{
	size_t		n = strlen(s) + 1;
	char	   *copy = malloc(n);

	if (copy)
		memcpy(copy, s, n);
	return copy;
}

int
idem__strcaseeq(const char *a, const char *b)
{
	while (*a && *b)
	{
		if (tolower((unsigned char) *a) != tolower((unsigned char) *b))
			return 0;
		a++;
		b++;
	}
	return *a == *b;
}

void
idem__free_hdrs(idem_hdr *hdrs, size_t n)
{
	size_t		i;

	for (i = 0; i < n; i++)
	{
		free(hdrs[i].name);
		free(hdrs[i].value);
	}
	free(hdrs);
}

/* appends (name, value), both copied from [p, p+len) spans; 0 or -1 */
static int
push_hdr(idem_hdr **hdrs, size_t *n, size_t *cap,
		 const char *name, size_t name_len,
		 const char *value, size_t value_len)
{
	idem_hdr   *h;

	if (*n == *cap)
	{
		size_t		ncap = *cap ? *cap * 2 : 8;
		idem_hdr   *grown = realloc(*hdrs, ncap * sizeof(idem_hdr));

		if (grown == NULL)
			return -1;
		*hdrs = grown;
		*cap = ncap;
	}
	h = &(*hdrs)[*n];
	h->name = malloc(name_len + 1);
	h->value = malloc(value_len + 1);
	if (h->name == NULL || h->value == NULL)
	{
		free(h->name);
		free(h->value);
		return -1;
	}
	memcpy(h->name, name, name_len);
	h->name[name_len] = '\0';
	memcpy(h->value, value, value_len);
	h->value[value_len] = '\0';
	(*n)++;
	return 0;
}

/* ---- a small JSON reader for the header object ------------------------- */

typedef struct jreader
{
	const char *p;
	const char *end;
} jreader;

static void
skip_ws(jreader *r)
{
	while (r->p < r->end &&
		   (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

static int
hex4(const char *p, unsigned *out)
{
	unsigned	v = 0;
	int			i;

	for (i = 0; i < 4; i++)
	{
		char		c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned) (c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned) (c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned) (c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static size_t
put_utf8(char *dst, unsigned cp)
{
	if (cp < 0x80)
	{
		dst[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		dst[0] = (char) (0xc0 | (cp >> 6));
		dst[1] = (char) (0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000)
	{
		dst[0] = (char) (0xe0 | (cp >> 12));
		dst[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
		dst[2] = (char) (0x80 | (cp & 0x3f));
		return 3;
	}
	dst[0] = (char) (0xf0 | (cp >> 18));
	dst[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
	dst[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
	dst[3] = (char) (0x80 | (cp & 0x3f));
	return 4;
}

/*
 * Reads a JSON string at r->p into a new buffer (*out, *len).  Returns 0,
 * -1 when the string is malformed, or -2 when out of memory.  The decoded
 * text is never longer than the escaped one.
 */
static int
read_string(jreader *r, char **out, size_t *len)
{
	const char *start;
	char	   *buf,
			   *d;

	if (r->p >= r->end || *r->p != '"')
		return -1;
	start = ++r->p;
	while (r->p < r->end && *r->p != '"')
		r->p += (*r->p == '\\' && r->p + 1 < r->end) ? 2 : 1;
	if (r->p >= r->end)
		return -1;
	buf = malloc((size_t) (r->p - start) + 1);
	if (buf == NULL)
		return -2;
	for (d = buf; start < r->p; start++)
	{
		unsigned	cp,
					lo;

		if (*start != '\\')
		{
			*d++ = *start;
			continue;
		}
		switch (*++start)
		{
			case 'b':
				*d++ = '\b';
				break;
			case 'f':
				*d++ = '\f';
				break;
			case 'n':
				*d++ = '\n';
				break;
			case 'r':
				*d++ = '\r';
				break;
			case 't':
				*d++ = '\t';
				break;
			case 'u':
				if (r->p - start < 5 || hex4(start + 1, &cp) < 0)
					goto bad;
				start += 4;
				if (cp >= 0xd800 && cp < 0xdc00 && r->p - start >= 7 &&
					start[1] == '\\' && start[2] == 'u' &&
					hex4(start + 3, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000)
				{
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					start += 6;
				}
				d += put_utf8(d, cp);
				break;
			default:			/* \" \\ \/ */
				*d++ = *start;
				break;
		}
	}
	*d = '\0';
	*len = (size_t) (d - buf);
	*out = buf;
	r->p++;						/* the closing quote */
	return 0;
bad:
	free(buf);
	return -1;
}

/* skips any JSON value; 0 or -1 */
static int
skip_value(jreader *r)
{
	int			depth = 0;

	skip_ws(r);
	do
	{
		if (r->p >= r->end)
			return -1;
		if (*r->p == '"')
		{
			r->p++;
			while (r->p < r->end && *r->p != '"')
				r->p += (*r->p == '\\' && r->p + 1 < r->end) ? 2 : 1;
			if (r->p >= r->end)
				return -1;
			r->p++;
		}
		else if (*r->p == '{' || *r->p == '[')
		{
			depth++;
			r->p++;
		}
		else if (*r->p == '}' || *r->p == ']')
		{
			depth--;
			r->p++;
		}
		else if (depth == 0)
		{
			/* a scalar: number, true, false, null */
			while (r->p < r->end && *r->p != ',' && *r->p != '}' &&
				   *r->p != ']' && *r->p != ' ' && *r->p != '\n' &&
				   *r->p != '\t' && *r->p != '\r')
				r->p++;
		}
		else
			r->p++;
	} while (depth > 0);
	return 0;
}

/*
 * Reads one header value (string, or any JSON as its text) and pushes it.
 * Returns 0, 1 when the value is malformed (nothing pushed), or -1 when
 * out of memory.
 */
static int
read_header_value(jreader *r, const char *name, size_t name_len,
				  idem_hdr **hdrs, size_t *n, size_t *cap)
{
	skip_ws(r);
	if (r->p < r->end && *r->p == '"')
	{
		char	   *v;
		size_t		vlen;
		int			rc;

		rc = read_string(r, &v, &vlen);
		if (rc < 0)
			return rc == -2 ? -1 : 1;
		rc = push_hdr(hdrs, n, cap, name, name_len, v, vlen);
		free(v);
		return rc;
	}
	else
	{
		const char *start = r->p;

		if (skip_value(r) < 0)
			return 1;
		return push_hdr(hdrs, n, cap, name, name_len, start,
						(size_t) (r->p - start));
	}
}

/*
 * Parses a header object into (name, value) pairs.  Returns 0, or -1 when
 * out of memory; JSON that is not an object gives no headers, and
 * malformed JSON the headers before the fault.
 */
int
idem__parse_headers(const char *json, idem_hdr **hdrs_out, size_t *n_out)
{
	jreader		r;
	idem_hdr   *hdrs = NULL;
	size_t		n = 0,
				cap = 0;

	*hdrs_out = NULL;
	*n_out = 0;
	r.p = json;
	r.end = json + strlen(json);
	skip_ws(&r);
	if (r.p >= r.end || *r.p != '{')
		return 0;
	r.p++;
	for (;;)
	{
		char	   *name;
		size_t		name_len;
		int			rc;

		skip_ws(&r);
		if (r.p < r.end && *r.p == '}')
			break;
		rc = read_string(&r, &name, &name_len);
		if (rc == -2)
			goto fail;
		if (rc < 0)
			break;
		skip_ws(&r);
		if (r.p >= r.end || *r.p != ':')
		{
			free(name);
			break;
		}
		r.p++;
		skip_ws(&r);
		if (r.p < r.end && *r.p == '[')
		{
			r.p++;
			for (;;)
			{
				skip_ws(&r);
				if (r.p < r.end && *r.p == ']')
				{
					r.p++;
					break;
				}
				rc = read_header_value(&r, name, name_len, &hdrs, &n, &cap);
				if (rc != 0)
				{
					free(name);
					if (rc < 0)
						goto fail;
					goto done;
				}
				skip_ws(&r);
				if (r.p < r.end && *r.p == ',')
					r.p++;
				else if (r.p < r.end && *r.p == ']')
					continue;
				else
				{
					free(name);
					goto done;
				}
			}
		}
		else if ((rc = read_header_value(&r, name, name_len, &hdrs, &n, &cap)) != 0)
		{
			free(name);
			if (rc < 0)
				goto fail;
			goto done;
		}
		free(name);
		skip_ws(&r);
		if (r.p < r.end && *r.p == ',')
			r.p++;
		else
			break;
	}
done:
	*hdrs_out = hdrs;
	*n_out = n;
	return 0;
fail:
	idem__free_hdrs(hdrs, n);
	return -1;
}

/* ---- records ----------------------------------------------------------- */

idem_record *
idem__record_new(void)
{
	idem_record *rec = calloc(1, sizeof(idem_record));

	if (rec)
		rec->status = -1;
	return rec;
}

int
idem__record_set_headers(idem_record *rec, const char *json)
{
	rec->headers_json = idem__strdup(json);
	if (rec->headers_json == NULL)
		return -1;
	return idem__parse_headers(json, &rec->hdrs, &rec->nhdrs);
}

void
idem_record_free(idem_record *rec)
{
	if (rec == NULL)
		return;
	free(rec->state);
	free(rec->owner);
	free(rec->headers_json);
	free(rec->body);
	idem__free_hdrs(rec->hdrs, rec->nhdrs);
	free(rec);
}

int
idem_record_fresh(const idem_record *rec)
{
	return rec->fresh;
}

const char *
idem_record_state(const idem_record *rec)
{
	return rec->state;
}

int
idem_record_status(const idem_record *rec)
{
	return rec->status;
}

const void *
idem_record_body(const idem_record *rec, size_t *len)
{
	if (len)
		*len = rec->body_len;
	return rec->body;
}

const char *
idem_record_headers_json(const idem_record *rec)
{
	return rec->headers_json;
}

size_t
idem_record_header_count(const idem_record *rec)
{
	return rec->nhdrs;
}

const char *
idem_record_header_name(const idem_record *rec, size_t i)
{
	return i < rec->nhdrs ? rec->hdrs[i].name : NULL;
}

const char *
idem_record_header_value(const idem_record *rec, size_t i)
{
	return i < rec->nhdrs ? rec->hdrs[i].value : NULL;
}

const char *
idem_record_header(const idem_record *rec, const char *name)
{
	size_t		i;

	for (i = 0; i < rec->nhdrs; i++)
		if (idem__strcaseeq(rec->hdrs[i].name, name))
			return rec->hdrs[i].value;
	return NULL;
}

int
idem_record_attempt(const idem_record *rec)
{
	return rec->attempt;
}

int64_t
idem_record_created_at(const idem_record *rec)
{
	return rec->created_at;
}

int64_t
idem_record_expires_at(const idem_record *rec)
{
	return rec->expires_at;
}

int64_t
idem_record_lease_expires_at(const idem_record *rec)
{
	return rec->lease_expires_at;
}

const char *
idem_record_owner(const idem_record *rec)
{
	return rec->owner;
}

/*
 * The record a runner returns for a response it just produced: the same
 * status, body and (encoded, then parsed back) headers a replay would get.
 */
idem_record *
idem__record_from_response(const idem_response *resp, const char *state)
{
	idem_record *rec = idem__record_new();
	const char *json;

	if (rec == NULL)
		return NULL;
	rec->fresh = 1;
	rec->state = idem__strdup(state);
	rec->status = resp->status;
	rec->attempt = resp->attempt;
	if (rec->state == NULL)
		goto nomem;
	if (resp->has_body)
	{
		rec->body = malloc(resp->body_len + 1);
		if (rec->body == NULL)
			goto nomem;
		if (resp->body_len)
			memcpy(rec->body, resp->body, resp->body_len);
		rec->body[resp->body_len] = '\0';
		rec->body_len = resp->body_len;
	}
	json = idem_response_headers_json((idem_response *) resp);
	if (json == NULL || idem__record_set_headers(rec, json) < 0)
		goto nomem;
	return rec;
nomem:
	idem_record_free(rec);
	return NULL;
}

/* ---- responses --------------------------------------------------------- */

idem_response *
idem_response_new(void)
{
	return calloc(1, sizeof(idem_response));
}

void
idem_response_free(idem_response *resp)
{
	if (resp == NULL)
		return;
	free(resp->body);
	idem__free_hdrs(resp->hdrs, resp->nhdrs);
	free(resp->json);
	free(resp);
}

void
idem_response_set_status(idem_response *resp, int status)
{
	resp->status = status;
}

int
idem_response_set_body(idem_response *resp, const void *body, size_t len)
{
	resp->body_len = 0;
	resp->has_body = 0;
	return idem_response_append_body(resp, body, len);
}

int
idem_response_append_body(idem_response *resp, const void *data, size_t len)
{
	if (data == NULL && len > 0)
		return -1;
	if (resp->body_len + len + 1 > resp->body_cap)
	{
		size_t		ncap = resp->body_cap ? resp->body_cap : 256;
		unsigned char *grown;

		while (ncap < resp->body_len + len + 1)
			ncap *= 2;
		grown = realloc(resp->body, ncap);
		if (grown == NULL)
			return -1;
		resp->body = grown;
		resp->body_cap = ncap;
	}
	if (len)
		memcpy(resp->body + resp->body_len, data, len);
	resp->body_len += len;
	resp->body[resp->body_len] = '\0';
	resp->has_body = 1;
	return 0;
}

/* headers that carry one client's credentials: never stored or replayed */
static int
is_private_header(const char *name)
{
	return idem__strcaseeq(name, "Set-Cookie") ||
		idem__strcaseeq(name, "Set-Cookie2") ||
		idem__strcaseeq(name, "Authorization") ||
		idem__strcaseeq(name, "Proxy-Authorization");
}

int
idem_response_add_header(idem_response *resp, const char *name,
						 const char *value)
{
	if (name == NULL || *name == '\0')
		return -1;
	if (is_private_header(name))
		return 0;
	if (value == NULL)
		value = "";
	free(resp->json);
	resp->json = NULL;
	return push_hdr(&resp->hdrs, &resp->nhdrs, &resp->hdr_cap, name, strlen(name),
					value, strlen(value));
}

int
idem_response_attempt(const idem_response *resp)
{
	return resp->attempt;
}

const char *
idem_response_key(const idem_response *resp)
{
	return resp->key;
}

int
idem_response_lease_lost(const idem_response *resp)
{
	return resp && resp->renewer && atomic_load(&resp->renewer->lost) != 0;
}

/* a growing buffer for the encoder */
typedef struct sbuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	int			failed;
} sbuf;

static void
sb_put(sbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap)
	{
		size_t		ncap = b->cap ? b->cap : 64;
		char	   *grown;

		while (ncap < b->len + n + 1)
			ncap *= 2;
		grown = realloc(b->data, ncap);
		if (grown == NULL)
		{
			b->failed = 1;
			return;
		}
		b->data = grown;
		b->cap = ncap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
sb_json_string(sbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	sb_put(b, "\"", 1);
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c == '"' || c == '\\')
		{
			char		esc[2] = {'\\', (char) c};

			sb_put(b, esc, 2);
		}
		else if (c < 0x20 || c == 0x7f)
		{
			char		esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

			sb_put(b, esc, 6);
		}
		else
			sb_put(b, s, 1);
	}
	sb_put(b, "\"", 1);
}

const char *
idem_response_headers_json(idem_response *resp)
{
	sbuf		b = {NULL, 0, 0, 0};
	char	   *done;
	size_t		i,
				j;
	int			first = 1;

	if (resp->json)
		return resp->json;
	done = calloc(resp->nhdrs + 1, 1);
	if (done == NULL)
		return NULL;
	sb_put(&b, "{", 1);
	/* each name once, under its first spelling, with all its values */
	for (i = 0; i < resp->nhdrs; i++)
	{
		int			first_value = 1;

		if (done[i])
			continue;
		if (!first)
			sb_put(&b, ", ", 2);
		first = 0;
		sb_json_string(&b, resp->hdrs[i].name);
		sb_put(&b, ": [", 3);
		for (j = i; j < resp->nhdrs; j++)
		{
			if (done[j] || !idem__strcaseeq(resp->hdrs[i].name,
											resp->hdrs[j].name))
				continue;
			done[j] = 1;
			if (!first_value)
				sb_put(&b, ", ", 2);
			first_value = 0;
			sb_json_string(&b, resp->hdrs[j].value);
		}
		sb_put(&b, "]", 1);
	}
	sb_put(&b, "}", 1);
	free(done);
	if (b.failed)
	{
		free(b.data);
		return NULL;
	}
	resp->json = b.data;
	return resp->json;
}
