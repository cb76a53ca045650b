/*
 * jsonout.h: JSON objects built with json-c and written in the layout the
 * HTTP example's answers have: {"name": value, "name": value}, a newline
 * after the outermost object.
 *
 * json-c writes every value and escapes every string; an object made by
 * jo_new() carries a serializer (json_object_set_serializer) that only
 * puts its members in that layout.  Strings are written with "/" as is.
 */
#ifndef EXAMPLE_JSONOUT_H
#define EXAMPLE_JSONOUT_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

/* a new empty object, NULL when out of memory */
extern json_object *jo_new(void);

/*
 * Add a member, in order; a NULL string is written null.  On out of
 * memory the object is marked, and jo_text() of it (or of any object
 * holding it) fails.  jo_add takes over value (NULL: null).
 */
extern void jo_add(json_object *obj, const char *name, json_object *value);
extern void jo_add_string(json_object *obj, const char *name, const char *s);
extern void jo_add_int(json_object *obj, const char *name, int64_t v);
extern void jo_add_bool(json_object *obj, const char *name, int v);

/*
 * The text of obj and a newline, in malloc'd memory (*len bytes, then a
 * NUL), or NULL when out of memory.  Does not free obj.
 */
extern char *jo_text(json_object *obj, size_t *len);

#endif							/* EXAMPLE_JSONOUT_H */
