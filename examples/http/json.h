/*
 * json.h: the little JSON the HTTP example needs, without a dependency.
 *
 * A parser for one flat JSON object (string, number, true/false/null values;
 * nested arrays and objects are validated and kept as JSON text), and a
 * growable string buffer with JSON string escaping.
 */
#ifndef EXAMPLE_JSON_H
#define EXAMPLE_JSON_H

#include <stddef.h>

typedef enum json_type
{
	JSON_STRING,
	JSON_NUMBER,
	JSON_TRUE,
	JSON_FALSE,
	JSON_NULL,
	JSON_NESTED					/* an array or object, kept as its text */
} json_type;

typedef struct json_field
{
	char	   *name;			/* unescaped, NUL-terminated */
	json_type	type;
	char	   *value;			/* string: unescaped UTF-8; number / nested:
								 * its JSON text; else the literal */
} json_field;

typedef struct json_object
{
	json_field *fields;
	size_t		nfields;
} json_object;

/*
 * Parses text (len bytes, UTF-8, no NUL inside strings) as one JSON object.
 * Returns 0, or -1 with a reason in err (at most errlen bytes).  A name
 * given twice keeps its last value, as most parsers do.
 */
int			json_parse_object(const char *text, size_t len, json_object *out,
							  char *err, size_t errlen);
void		json_object_free(json_object *obj);

/* The field called name, or NULL. */
const json_field *json_get(const json_object *obj, const char *name);

/* A growable buffer; oom is set (and further appends ignored) when out of
 * memory.  Zero-initialise it; free buf when done. */
typedef struct strbuf
{
	char	   *buf;
	size_t		len;
	size_t		cap;
	int			oom;
} strbuf;

void		sb_append(strbuf *sb, const char *data, size_t len);
void		sb_puts(strbuf *sb, const char *s);
void		sb_printf(strbuf *sb, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));

/* Appends s as a JSON string literal, quotes included. */
void		sb_json_string(strbuf *sb, const char *s);

#endif							/* EXAMPLE_JSON_H */
