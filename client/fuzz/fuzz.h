/*-------------------------------------------------------------------------
 *
 * fuzz.h
 *	  Helpers shared by the libFuzzer harnesses of libidem.
 *
 * Inputs are mostly line-oriented text so that seeds stay readable and the
 * fuzzer's mutations keep their shape: lines() splits the input at '\n'
 * into NUL-terminated copies (a line with an embedded NUL byte is cut
 * there, which is what a C string argument would see anyway).
 *
 * FUZZ_CHECK aborts with a message: libFuzzer counts the abort as a crash
 * and saves the input, the replay driver (replay.c) reports it and fails.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_FUZZ_H
#define IDEM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json_object.h>
#include <json-c/json_tokener.h>
#include <json-c/linkhash.h>

#define FUZZ_CHECK(cond, ...) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__); \
			fputc('\n', stderr); \
			abort(); \
		} \
	} while (0)

/* the harness entry point (declared here for -Wmissing-prototypes) */
int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_lines
{
	char	  **line;			/* NUL-terminated copies */
	size_t	   *len;			/* bytes up to the '\n' (embedded NULs kept) */
	size_t		n;
} fuzz_lines;

static inline void *
fuzz_xmalloc(size_t n)
{
	void	   *p = malloc(n ? n : 1);

	if (p == NULL)
		abort();
	return p;
}

static inline char *
fuzz_strndup(const uint8_t *p, size_t n)
{
	char	   *s = fuzz_xmalloc(n + 1);

	if (n)
		memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

/* splits data at '\n'; at most max_lines lines (the rest is dropped) */
static inline void
fuzz_split_lines(const uint8_t *data, size_t size, size_t max_lines,
				 fuzz_lines *out)
{
	size_t		start = 0,
				i;

	out->line = fuzz_xmalloc(sizeof(char *) * (max_lines + 1));
	out->len = fuzz_xmalloc(sizeof(size_t) * (max_lines + 1));
	out->n = 0;
	for (i = 0; i <= size && out->n < max_lines; i++)
	{
		if (i == size || data[i] == '\n')
		{
			if (i == size && i == start && out->n > 0)
				break;			/* no empty last line after a final '\n' */
			out->line[out->n] = fuzz_strndup(data + start, i - start);
			out->len[out->n] = i - start;
			out->n++;
			start = i + 1;
		}
	}
}

static inline void
fuzz_free_lines(fuzz_lines *l)
{
	size_t		i;

	for (i = 0; i < l->n; i++)
		free(l->line[i]);
	free(l->line);
	free(l->len);
}

/* a big-endian int4 of the server's binary format */
static inline uint32_t
fuzz_rd32(const uint8_t *p)
{
	return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

/*
 * The 8 bytes of a binary timestamptz as the library gives it: Unix
 * microseconds (PostgreSQL's epoch is 2000-01-01, 946684800 s after
 * Unix's); +-infinity are the int64 ends, values that close to them
 * saturate.
 */
#define FUZZ_PG_EPOCH_USEC INT64_C(946684800000000)

static inline int64_t
fuzz_timestamptz(const uint8_t *p)
{
	int64_t		pg = (int64_t) ((uint64_t) fuzz_rd32(p) << 32 | fuzz_rd32(p + 4));

	if (pg == INT64_MIN)
		return INT64_MIN;
	if (pg > INT64_MAX - FUZZ_PG_EPOCH_USEC)
		return INT64_MAX;
	return pg + FUZZ_PG_EPOCH_USEC;
}

/* ASCII case-insensitive equality, written independently of the library */
static inline int
fuzz_caseeq(const char *a, const char *b)
{
	for (;; a++, b++)
	{
		unsigned char x = (unsigned char) *a,
					y = (unsigned char) *b;

		if (x >= 'A' && x <= 'Z')
			x = (unsigned char) (x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (unsigned char) (y - 'A' + 'a');
		if (x != y)
			return 0;
		if (x == '\0')
			return 1;
	}
}

/*
 * JSON as json-c's strict tokener reads it, for the harnesses of the
 * stored headers: as deep as the library reads them (HEADERS_MAX_DEPTH in
 * idem_decode.c).  fuzz_json: 1 and *obj (NULL for JSON null) when text
 * (len bytes) is exactly one JSON value, else 0.
 */
#define FUZZ_JSON_DEPTH 1000

static inline int
fuzz_json(const char *text, size_t len, json_object **obj)
{
	json_tokener *tok = json_tokener_new_ex(FUZZ_JSON_DEPTH);
	enum json_tokener_error err;
	int			ok;

	if (tok == NULL)
		abort();
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	*obj = json_tokener_parse_ex(tok, text, (int) len);
	err = json_tokener_get_error(tok);
	/* the end of the text ends a number alone too */
	if (err == json_tokener_continue)
	{
		*obj = json_tokener_parse_ex(tok, "", 1);
		err = json_tokener_get_error(tok);
	}
	else if (json_tokener_get_parse_end(tok) != len)
		err = json_tokener_error_parse_unexpected;
	ok = err == json_tokener_success;
	if (!ok)
	{
		json_object_put(*obj);
		*obj = NULL;
	}
	json_tokener_free(tok);
	return ok;
}

/*
 * The number of headers a JSON value holds, as doc/c-api.md counts them:
 * in an object, one per element of each member's array and one for a
 * member that is no array; none in anything else.
 */
static inline size_t
fuzz_json_header_count(json_object *obj)
{
	size_t		n = 0;

	if (json_object_get_type(obj) != json_type_object)
		return 0;
	{
		json_object_object_foreach(obj, key, v)
		{
			(void) key;
			n += json_object_get_type(v) == json_type_array ?
				json_object_array_length(v) : 1;
		}
	}
	return n;
}

/* a C string is the bytes up to the first NUL */
static inline int
fuzz_cstr_is(const char *s, const uint8_t *p, size_t len)
{
	size_t		n = strnlen((const char *) p, len);

	return s != NULL && strlen(s) == n && memcmp(s, p, n) == 0;
}

#endif							/* IDEM_FUZZ_H */
