/* Finds where a value sits in JSON source text, so that a semantic error found in a parsed
 * document can be reported as FILE:LINE:COLUMN like a syntax error. */
#pragma once

#include <stddef.h>

/* One step of a path into a document: an object key, or an array index when key is NULL. */
struct locate_step {
	const char *key; /* object member name (unescaped), or NULL for an array element */
	size_t index;    /* array index when key is NULL */
};

enum locate_target {
	LOCATE_VALUE, /* the first character of the value the path leads to */
	LOCATE_KEY,   /* the opening quote of the last key on the path (for unknown keys) */
};

/* Scans `text` (len bytes, UTF-8 JSON) for the value at `path` (depth steps; depth 0 is
 * the root value). Lines and columns are 1-based; a column counts characters (UTF-8 code
 * points), as jansson's error positions do. Returns 0 and writes both outputs, -ENOENT when
 * the path is not in the text, -EINVAL when the text is not JSON where it had to look.
 * LOCATE_KEY on a path whose last step is an index locates the element itself. */
int locate_json(const char *text, size_t len, const struct locate_step *path, size_t depth,
		enum locate_target target, int *ret_line, int *ret_column);
