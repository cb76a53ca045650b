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
 * The reference reading of header pairs as the server sends them (a text[]
 * of rows of two, array_send's binary form; an empty array for none),
 * written from the format rather than from the library: 1 with the
 * elements (*elems, *lens: 2 * *rows of them, pointing into data), or 0
 * when data is not exactly such an array with no NULL element.
 */
static inline int
fuzz_ref_pairs(const uint8_t *data, size_t size, const uint8_t ***elems,
			   size_t **lens, size_t *rows)
{
	size_t		pos = 0,
				k;
	uint32_t	hdr[7];
	int			nhdr;

	*elems = NULL;
	*lens = NULL;
	*rows = 0;
	for (nhdr = 0; nhdr < 7 && pos + 4 <= size; nhdr++, pos += 4)
		hdr[nhdr] = (uint32_t) data[pos] << 24 | (uint32_t) data[pos + 1] << 16 |
			(uint32_t) data[pos + 2] << 8 | data[pos + 3];
	/* ndim, flags, element type (text: 25) */
	if (nhdr < 3 || hdr[2] != 25)
		return 0;
	if (hdr[0] == 0)
		return size == 12;
	/* two dimensions, the second of length 2 */
	if (hdr[0] != 2 || nhdr < 7 || hdr[5] != 2)
		return 0;
	if (hdr[3] == 0)
		return size == 28;
	if (hdr[3] > size / 8)
		return 0;
	*rows = hdr[3];
	*elems = fuzz_xmalloc(sizeof(uint8_t *) * 2 * *rows);
	*lens = fuzz_xmalloc(sizeof(size_t) * 2 * *rows);
	pos = 28;
	for (k = 0; k < 2 * *rows; k++)
	{
		uint32_t	len;

		if (size - pos < 4)
			goto bad;
		len = (uint32_t) data[pos] << 24 | (uint32_t) data[pos + 1] << 16 |
			(uint32_t) data[pos + 2] << 8 | data[pos + 3];
		pos += 4;
		if (len == 0xffffffffu || len > size - pos)
			goto bad;
		(*elems)[k] = data + pos;
		(*lens)[k] = len;
		pos += len;
	}
	if (pos == size)
		return 1;
bad:
	free(*elems);
	free(*lens);
	*elems = NULL;
	*lens = NULL;
	*rows = 0;
	return 0;
}

/* a C string is the bytes up to the first NUL */
static inline int
fuzz_cstr_is(const char *s, const uint8_t *p, size_t len)
{
	size_t		n = strnlen((const char *) p, len);

	return s != NULL && strlen(s) == n && memcmp(s, p, n) == 0;
}

#endif							/* IDEM_FUZZ_H */
