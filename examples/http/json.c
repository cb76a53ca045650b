/*
 * json.c: see json.h.
 */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- string buffer ------------------------------------------------------ */

static int
sb_reserve(strbuf *sb, size_t more)
{
	size_t		need;
	char	   *nb;
	size_t		ncap;

	if (sb->oom)
		return -1;
	need = sb->len + more + 1;
	if (need <= sb->cap)
		return 0;
	ncap = sb->cap ? sb->cap : 256;
	while (ncap < need)
		ncap *= 2;
	nb = realloc(sb->buf, ncap);
	if (nb == NULL)
	{
		sb->oom = 1;
		return -1;
	}
	sb->buf = nb;
	sb->cap = ncap;
	return 0;
}

void
sb_append(strbuf *sb, const char *data, size_t len)
{
	if (sb_reserve(sb, len) < 0)
		return;
	if (len)
		memcpy(sb->buf + sb->len, data, len);
	sb->len += len;
	sb->buf[sb->len] = '\0';
}

void
sb_puts(strbuf *sb, const char *s)
{
	sb_append(sb, s, strlen(s));
}

void
sb_printf(strbuf *sb, const char *fmt,...)
{
	va_list		ap;
	int			n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || sb_reserve(sb, (size_t) n) < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(sb->buf + sb->len, (size_t) n + 1, fmt, ap);
	va_end(ap);
	sb->len += (size_t) n;
}

void
sb_json_string(strbuf *sb, const char *s)
{
	const unsigned char *p;

	sb_append(sb, "\"", 1);
	for (p = (const unsigned char *) s; *p; p++)
	{
		switch (*p)
		{
			case '"':
				sb_append(sb, "\\\"", 2);
				break;
			case '\\':
				sb_append(sb, "\\\\", 2);
				break;
			case '\n':
				sb_append(sb, "\\n", 2);
				break;
			case '\r':
				sb_append(sb, "\\r", 2);
				break;
			case '\t':
				sb_append(sb, "\\t", 2);
				break;
			default:
				if (*p < 0x20)
					sb_printf(sb, "\\u%04x", *p);
				else
					sb_append(sb, (const char *) p, 1);
		}
	}
	sb_append(sb, "\"", 1);
}

/* ---- parser ------------------------------------------------------------- */

typedef struct parser
{
	const char *s;
	size_t		len;
	size_t		pos;
	char	   *err;
	size_t		errlen;
	int			depth;
} parser;

static int
perr(parser *p, const char *what)
{
	snprintf(p->err, p->errlen, "%s at byte %zu", what, p->pos);
	return -1;
}

static void
skip_ws(parser *p)
{
	while (p->pos < p->len &&
		   (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
			p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
		p->pos++;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int
read_hex4(parser *p, unsigned *out)
{
	unsigned	v = 0;
	int			i;

	if (p->pos + 4 > p->len)
		return perr(p, "truncated \\u escape");
	for (i = 0; i < 4; i++)
	{
		int			h = hexval(p->s[p->pos + i]);

		if (h < 0)
			return perr(p, "bad \\u escape");
		v = v * 16 + (unsigned) h;
	}
	p->pos += 4;
	*out = v;
	return 0;
}

static void
put_utf8(strbuf *sb, unsigned cp)
{
	char		b[4];

	if (cp < 0x80)
	{
		b[0] = (char) cp;
		sb_append(sb, b, 1);
	}
	else if (cp < 0x800)
	{
		b[0] = (char) (0xC0 | (cp >> 6));
		b[1] = (char) (0x80 | (cp & 0x3F));
		sb_append(sb, b, 2);
	}
	else if (cp < 0x10000)
	{
		b[0] = (char) (0xE0 | (cp >> 12));
		b[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		b[2] = (char) (0x80 | (cp & 0x3F));
		sb_append(sb, b, 3);
	}
	else
	{
		b[0] = (char) (0xF0 | (cp >> 18));
		b[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
		b[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
		b[3] = (char) (0x80 | (cp & 0x3F));
		sb_append(sb, b, 4);
	}
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
	unsigned	cp;
	size_t		len,
				i;

	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xE0) == 0xC0)
		len = 2, cp = s[0] & 0x1F;
	else if ((s[0] & 0xF0) == 0xE0)
		len = 3, cp = s[0] & 0x0F;
	else if ((s[0] & 0xF8) == 0xF0)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
		(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
		(cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

/* Parses a string literal at p->pos; *out gets it unescaped (malloc'd). */
static int
parse_string(parser *p, char **out)
{
	strbuf		sb = {0};

	if (p->pos >= p->len || p->s[p->pos] != '"')
		return perr(p, "expected a string");
	p->pos++;
	sb_append(&sb, "", 0);
	for (;;)
	{
		unsigned char c;

		if (p->pos >= p->len)
		{
			free(sb.buf);
			return perr(p, "unterminated string");
		}
		c = (unsigned char) p->s[p->pos];
		if (c == '"')
		{
			p->pos++;
			break;
		}
		if (c < 0x20)
		{
			free(sb.buf);
			return perr(p, "control character in a string");
		}
		if (c == '\\')
		{
			char		e;

			if (p->pos + 1 >= p->len)
			{
				free(sb.buf);
				return perr(p, "truncated escape");
			}
			e = p->s[p->pos + 1];
			p->pos += 2;
			switch (e)
			{
				case '"':
				case '\\':
				case '/':
					sb_append(&sb, &e, 1);
					break;
				case 'b':
					sb_append(&sb, "\b", 1);
					break;
				case 'f':
					sb_append(&sb, "\f", 1);
					break;
				case 'n':
					sb_append(&sb, "\n", 1);
					break;
				case 'r':
					sb_append(&sb, "\r", 1);
					break;
				case 't':
					sb_append(&sb, "\t", 1);
					break;
				case 'u':
					{
						unsigned	cp,
									lo;

						if (read_hex4(p, &cp) < 0)
						{
							free(sb.buf);
							return -1;
						}
						if (cp >= 0xD800 && cp <= 0xDBFF)
						{
							if (p->pos + 2 > p->len || p->s[p->pos] != '\\' ||
								p->s[p->pos + 1] != 'u')
							{
								free(sb.buf);
								return perr(p, "lone surrogate");
							}
							p->pos += 2;
							if (read_hex4(p, &lo) < 0)
							{
								free(sb.buf);
								return -1;
							}
							if (lo < 0xDC00 || lo > 0xDFFF)
							{
								free(sb.buf);
								return perr(p, "lone surrogate");
							}
							cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						}
						else if (cp >= 0xDC00 && cp <= 0xDFFF)
						{
							free(sb.buf);
							return perr(p, "lone surrogate");
						}
						if (cp == 0)
						{
							free(sb.buf);
							return perr(p, "\\u0000 is not allowed");
						}
						put_utf8(&sb, cp);
						break;
					}
				default:
					free(sb.buf);
					return perr(p, "bad escape");
			}
			continue;
		}
		{
			size_t		n = utf8_seq((const unsigned char *) p->s + p->pos,
									 p->len - p->pos);

			if (n == 0)
			{
				free(sb.buf);
				return perr(p, "invalid UTF-8");
			}
			sb_append(&sb, p->s + p->pos, n);
			p->pos += n;
		}
	}
	if (sb.oom)
	{
		free(sb.buf);
		return perr(p, "out of memory");
	}
	*out = sb.buf;
	return 0;
}

static int
parse_number(parser *p)
{
	size_t		start = p->pos;

	if (p->pos < p->len && p->s[p->pos] == '-')
		p->pos++;
	if (p->pos >= p->len)
		return perr(p, "bad number");
	if (p->s[p->pos] == '0')
		p->pos++;
	else if (p->s[p->pos] >= '1' && p->s[p->pos] <= '9')
		while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
			p->pos++;
	else
		return perr(p, "bad number");
	if (p->pos < p->len && p->s[p->pos] == '.')
	{
		p->pos++;
		if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
			return perr(p, "bad number");
		while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
			p->pos++;
	}
	if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
	{
		p->pos++;
		if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
			p->pos++;
		if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
			return perr(p, "bad number");
		while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
			p->pos++;
	}
	return p->pos > start ? 0 : perr(p, "bad number");
}

static int	parse_value(parser *p, json_type *type);

static int
parse_container(parser *p, char open)
{
	char		close = open == '{' ? '}' : ']';

	if (++p->depth > 64)
		return perr(p, "nested too deep");
	p->pos++;
	skip_ws(p);
	if (p->pos < p->len && p->s[p->pos] == close)
	{
		p->pos++;
		p->depth--;
		return 0;
	}
	for (;;)
	{
		json_type	t;

		skip_ws(p);
		if (open == '{')
		{
			char	   *name;

			if (parse_string(p, &name) < 0)
				return -1;
			free(name);
			skip_ws(p);
			if (p->pos >= p->len || p->s[p->pos] != ':')
				return perr(p, "expected ':'");
			p->pos++;
			skip_ws(p);
		}
		if (parse_value(p, &t) < 0)
			return -1;
		skip_ws(p);
		if (p->pos < p->len && p->s[p->pos] == ',')
		{
			p->pos++;
			continue;
		}
		if (p->pos < p->len && p->s[p->pos] == close)
		{
			p->pos++;
			p->depth--;
			return 0;
		}
		return perr(p, open == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
	}
}

static int
literal(parser *p, const char *word)
{
	size_t		n = strlen(word);

	if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
		return perr(p, "unexpected token");
	p->pos += n;
	return 0;
}

/* Validates one value at p->pos (strings are checked, not kept). */
static int
parse_value(parser *p, json_type *type)
{
	if (p->pos >= p->len)
		return perr(p, "expected a value");
	switch (p->s[p->pos])
	{
		case '"':
			{
				char	   *s;

				*type = JSON_STRING;
				if (parse_string(p, &s) < 0)
					return -1;
				free(s);
				return 0;
			}
		case '{':
		case '[':
			*type = JSON_NESTED;
			return parse_container(p, p->s[p->pos]);
		case 't':
			*type = JSON_TRUE;
			return literal(p, "true");
		case 'f':
			*type = JSON_FALSE;
			return literal(p, "false");
		case 'n':
			*type = JSON_NULL;
			return literal(p, "null");
		default:
			*type = JSON_NUMBER;
			return parse_number(p);
	}
}

static char *
dup_range(const char *s, size_t n)
{
	char	   *r = malloc(n + 1);

	if (r)
	{
		memcpy(r, s, n);
		r[n] = '\0';
	}
	return r;
}

int
json_parse_object(const char *text, size_t len, json_object *out,
				  char *err, size_t errlen)
{
	parser		p = {text, len, 0, err, errlen, 0};

	out->fields = NULL;
	out->nfields = 0;
	skip_ws(&p);
	if (p.pos >= p.len || p.s[p.pos] != '{')
	{
		perr(&p, "expected a JSON object");
		return -1;
	}
	p.pos++;
	skip_ws(&p);
	if (p.pos < p.len && p.s[p.pos] == '}')
		p.pos++;
	else
		for (;;)
		{
			char	   *name = NULL;
			char	   *value = NULL;
			json_type	t;
			size_t		start,
						i;
			json_field *f;

			skip_ws(&p);
			if (parse_string(&p, &name) < 0)
				goto fail;
			skip_ws(&p);
			if (p.pos >= p.len || p.s[p.pos] != ':')
			{
				free(name);
				perr(&p, "expected ':'");
				goto fail;
			}
			p.pos++;
			skip_ws(&p);
			start = p.pos;
			if (p.pos < p.len && p.s[p.pos] == '"')
			{
				t = JSON_STRING;
				if (parse_string(&p, &value) < 0)
				{
					free(name);
					goto fail;
				}
			}
			else
			{
				if (parse_value(&p, &t) < 0)
				{
					free(name);
					goto fail;
				}
				value = dup_range(p.s + start, p.pos - start);
			}
			if (value == NULL)
			{
				free(name);
				perr(&p, "out of memory");
				goto fail;
			}
			/* a repeated name: the last one wins */
			for (i = 0; i < out->nfields; i++)
				if (strcmp(out->fields[i].name, name) == 0)
					break;
			if (i < out->nfields)
			{
				f = &out->fields[i];
				free(f->name);
				free(f->value);
			}
			else
			{
				json_field *nf = realloc(out->fields,
										 (out->nfields + 1) * sizeof(json_field));

				if (nf == NULL)
				{
					free(name);
					free(value);
					perr(&p, "out of memory");
					goto fail;
				}
				out->fields = nf;
				f = &out->fields[out->nfields++];
			}
			f->name = name;
			f->type = t;
			f->value = value;
			skip_ws(&p);
			if (p.pos < p.len && p.s[p.pos] == ',')
			{
				p.pos++;
				continue;
			}
			if (p.pos < p.len && p.s[p.pos] == '}')
			{
				p.pos++;
				break;
			}
			perr(&p, "expected ',' or '}'");
			goto fail;
		}
	skip_ws(&p);
	if (p.pos != p.len)
	{
		perr(&p, "trailing characters after the object");
		goto fail;
	}
	return 0;
fail:
	json_object_free(out);
	return -1;
}

void
json_object_free(json_object *obj)
{
	size_t		i;

	for (i = 0; i < obj->nfields; i++)
	{
		free(obj->fields[i].name);
		free(obj->fields[i].value);
	}
	free(obj->fields);
	obj->fields = NULL;
	obj->nfields = 0;
}

const json_field *
json_get(const json_object *obj, const char *name)
{
	size_t		i;

	for (i = 0; i < obj->nfields; i++)
		if (strcmp(obj->fields[i].name, name) == 0)
			return &obj->fields[i];
	return NULL;
}
