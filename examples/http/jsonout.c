/*
 * jsonout.c: see jsonout.h.
 */
#include "jsonout.h"

#include <stdlib.h>
#include <string.h>

#include <json-c/printbuf.h>

/* how values are written: json-c's own, with "/" left alone */
#define VALUE_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

/* the serializer's user data: whether every member made it in */
static char object_whole;
static char object_broken;

static int
append_text(struct printbuf *pb, const char *text)
{
	if (text == NULL)
		return -1;
	return printbuf_memappend(pb, text, (int) strlen(text)) < 0 ? -1 : 0;
}

/* {"name": value, ...}: names and values written by json-c */
static int
write_object(struct json_object *obj, struct printbuf *pb, int level,
			 int flags)
{
	struct json_object_iter iter;
	int			first = 1;

	(void) level;
	(void) flags;
	if (json_object_get_userdata(obj) == &object_broken ||
		append_text(pb, "{") < 0)
		return -1;
	json_object_object_foreachC(obj, iter)
	{
		json_object *name = json_object_new_string(iter.key);
		const char *value = iter.val == NULL ? "null" :
			json_object_to_json_string_ext(iter.val, VALUE_FLAGS);
		int			ok;

		ok = name != NULL &&
			(first || append_text(pb, ", ") == 0) &&
			append_text(pb, json_object_to_json_string_ext(name, VALUE_FLAGS)) == 0 &&
			append_text(pb, ": ") == 0 &&
			append_text(pb, value) == 0;
		json_object_put(name);
		if (!ok)
			return -1;
		first = 0;
	}
	return append_text(pb, "}");
}

json_object *
jo_new(void)
{
	json_object *obj = json_object_new_object();

	if (obj)
		json_object_set_serializer(obj, write_object, &object_whole, NULL);
	return obj;
}

void
jo_add(json_object *obj, const char *name, json_object *value)
{
	if (obj == NULL)
	{
		json_object_put(value);
		return;
	}
	if (json_object_object_add(obj, name, value) < 0)
	{
		json_object_put(value);
		json_object_set_userdata(obj, &object_broken, NULL);
	}
}

void
jo_add_string(json_object *obj, const char *name, const char *s)
{
	json_object *v = NULL;

	if (s && (v = json_object_new_string(s)) == NULL && obj)
		json_object_set_userdata(obj, &object_broken, NULL);
	jo_add(obj, name, v);
}

void
jo_add_int(json_object *obj, const char *name, int64_t n)
{
	json_object *v = json_object_new_int64(n);

	if (v == NULL && obj)
		json_object_set_userdata(obj, &object_broken, NULL);
	jo_add(obj, name, v);
}

void
jo_add_bool(json_object *obj, const char *name, int b)
{
	json_object *v = json_object_new_boolean(b);

	if (v == NULL && obj)
		json_object_set_userdata(obj, &object_broken, NULL);
	jo_add(obj, name, v);
}

char *
jo_text(json_object *obj, size_t *len)
{
	const char *text;
	size_t		n;
	char	   *out;

	if (obj == NULL ||
		(text = json_object_to_json_string_ext(obj, VALUE_FLAGS)) == NULL)
		return NULL;
	n = strlen(text);
	out = malloc(n + 2);
	if (out == NULL)
		return NULL;
	memcpy(out, text, n);
	out[n] = '\n';
	out[n + 1] = '\0';
	*len = n + 1;
	return out;
}
