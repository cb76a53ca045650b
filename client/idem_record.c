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
 * client's credentials to another on replay are never stored.  The server
 * hands back the stored JSON, read into (name, value) pairs in
 * idem_decode.c.
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

/* ---- records ----------------------------------------------------------- */

idem_record *
idem__record_new(void)
{
	idem_record *rec = calloc(1, sizeof(idem_record));

	if (rec)
		rec->status = -1;
	return rec;
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
 * The order in which a response's headers are stored: each name once,
 * under its first spelling, with all its values (names compared without
 * case).  Fills order[] with the indexes of resp->hdrs in that order and
 * lead[] with the index of the first header of each one's name; 0, or -1
 * when out of memory.
 */
static int
group_headers(const idem_response *resp, size_t *order, size_t *lead)
{
	char	   *done = calloc(resp->nhdrs + 1, 1);
	size_t		i,
				j,
				k = 0;

	if (done == NULL)
		return -1;
	for (i = 0; i < resp->nhdrs; i++)
	{
		if (done[i])
			continue;
		for (j = i; j < resp->nhdrs; j++)
		{
			if (done[j] || !idem__strcaseeq(resp->hdrs[i].name,
											resp->hdrs[j].name))
				continue;
			done[j] = 1;
			order[k] = j;
			lead[k++] = i;
		}
	}
	free(done);
	return 0;
}

/*
 * The record a runner returns for a response it just produced: the same
 * status, body and headers (in the order they are stored) a replay would
 * get.
 */
idem_record *
idem__record_from_response(const idem_response *resp, const char *state)
{
	idem_record *rec = idem__record_new();
	const char *json;
	size_t	   *order = NULL;
	size_t	   *lead = NULL;
	size_t		i,
				cap = 0;

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
	if (json == NULL || (rec->headers_json = idem__strdup(json)) == NULL)
		goto nomem;
	order = malloc((resp->nhdrs + 1) * sizeof(size_t));
	lead = malloc((resp->nhdrs + 1) * sizeof(size_t));
	if (order == NULL || lead == NULL || group_headers(resp, order, lead) < 0)
		goto nomem;
	for (i = 0; i < resp->nhdrs; i++)
	{
		const idem_hdr *name = &resp->hdrs[lead[i]];
		const idem_hdr *value = &resp->hdrs[order[i]];

		if (push_hdr(&rec->hdrs, &rec->nhdrs, &cap, name->name,
					 strlen(name->name), value->value,
					 strlen(value->value)) < 0)
			goto nomem;
	}
	free(order);
	free(lead);
	return rec;
nomem:
	free(order);
	free(lead);
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
	size_t	   *order;
	size_t	   *lead;
	size_t		i;

	if (resp->json)
		return resp->json;
	order = malloc((resp->nhdrs + 1) * sizeof(size_t));
	lead = malloc((resp->nhdrs + 1) * sizeof(size_t));
	if (order == NULL || lead == NULL || group_headers(resp, order, lead) < 0)
	{
		free(order);
		free(lead);
		return NULL;
	}
	sb_put(&b, "{", 1);
	for (i = 0; i < resp->nhdrs; i++)
	{
		/* a name's first value opens its array, the next one closes it */
		if (i == 0 || lead[i] != lead[i - 1])
		{
			if (i > 0)
				sb_put(&b, "], ", 3);
			sb_json_string(&b, resp->hdrs[lead[i]].name);
			sb_put(&b, ": [", 3);
		}
		else
			sb_put(&b, ", ", 2);
		sb_json_string(&b, resp->hdrs[order[i]].value);
	}
	if (resp->nhdrs > 0)
		sb_put(&b, "]", 1);
	sb_put(&b, "}", 1);
	free(order);
	free(lead);
	if (b.failed)
	{
		free(b.data);
		return NULL;
	}
	resp->json = b.data;
	return resp->json;
}
