/* A small JSON text scanner: walks a key path through source text without building a
 * document, to report where a value was written. It relies on jansson having accepted the
 * text already, but stays memory-safe on any input. */
#include "config/locate.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "backend/util.h"

struct scanner {
	const char *p;   /* next byte */
	const char *end; /* one past the last byte */
	int line;        /* 1-based line of *p */
	int col;         /* 1-based column of *p, in characters */
};

static bool sc_eof(const struct scanner *s)
{
	return s->p >= s->end;
}

static char sc_peek(const struct scanner *s)
{
	return sc_eof(s) ? '\0' : *s->p;
}

/* Moves past one byte, counting a line per '\n' and a column per UTF-8 character. */
static void sc_next(struct scanner *s)
{
	unsigned char c = (unsigned char) *s->p++;
	if (c == '\n') {
		s->line++;
		s->col = 1;
		return;
	}
	if (!sc_eof(s) && ((unsigned char) *s->p & 0xc0) == 0x80)
		return; /* still inside a multi-byte character */
	s->col++;
}

static void sc_skip_ws(struct scanner *s)
{
	while (!sc_eof(s) && strchr(" \t\r\n", *s->p) && *s->p != '\0')
		sc_next(s);
}

static int hex4(const char *p, const char *end, uint32_t *ret)
{
	uint32_t v = 0;
	if (end - p < 4)
		return -EINVAL;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t) (c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t) (c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t) (c - 'A' + 10);
		else
			return -EINVAL;
	}
	*ret = v;
	return 0;
}

static void put_utf8(struct buf *out, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char) cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char) (0xc0 | (cp >> 6));
		u[1] = (char) (0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char) (0xe0 | (cp >> 12));
		u[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char) (0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char) (0xf0 | (cp >> 18));
		u[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char) (0x80 | (cp & 0x3f));
		n = 4;
	}
	buf_append(out, u, n);
}

/* Reads a string token at *s->p, unescaped into `out` when out is not NULL. */
static int sc_string(struct scanner *s, struct buf *out)
{
	if (sc_peek(s) != '"')
		return -EINVAL;
	sc_next(s);
	for (;;) {
		if (sc_eof(s))
			return -EINVAL;
		char c = *s->p;
		if (c == '"') {
			sc_next(s);
			if (out)
				buf_append(out, "",
					   0); /* a NUL-terminated empty key is still a key */
			return 0;
		}
		if (c != '\\') {
			if (out)
				buf_append(out, s->p, 1);
			sc_next(s);
			continue;
		}
		sc_next(s);
		if (sc_eof(s))
			return -EINVAL;
		char e = *s->p;
		sc_next(s);
		if (e != 'u') {
			static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
			const char *q = strchr(from, e);
			if (!q || e == '\0')
				return -EINVAL;
			if (out)
				buf_append(out, &to[q - from], 1);
			continue;
		}
		uint32_t cp;
		if (hex4(s->p, s->end, &cp) < 0)
			return -EINVAL;
		for (int i = 0; i < 4; i++)
			sc_next(s);
		if (cp >= 0xd800 && cp < 0xdc00 && s->end - s->p >= 6 && s->p[0] == '\\' &&
		    s->p[1] == 'u') {
			uint32_t lo;
			if (hex4(s->p + 2, s->end, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				for (int i = 0; i < 6; i++)
					sc_next(s);
			}
		}
		if (out)
			put_utf8(out, cp);
	}
}

/* Skips one value of any kind. Nesting is counted, not recursed, so depth cannot hurt. */
static int sc_skip_value(struct scanner *s)
{
	char c = sc_peek(s);
	if (c == '"')
		return sc_string(s, NULL);
	if (c == '{' || c == '[') {
		size_t depth = 0;
		do {
			if (sc_eof(s))
				return -EINVAL;
			c = *s->p;
			if (c == '"') {
				int r = sc_string(s, NULL);
				if (r < 0)
					return r;
				continue;
			}
			if (c == '{' || c == '[')
				depth++;
			else if (c == '}' || c == ']')
				depth--;
			sc_next(s);
		} while (depth > 0);
		return 0;
	}
	const char *start = s->p;
	while (!sc_eof(s) && !strchr(",:]} \t\r\n\"{[", *s->p) && *s->p != '\0')
		sc_next(s);
	return s->p == start ? -EINVAL : 0;
}

/* With *s->p at a container, moves to the start of the child named by `step`; writes the
 * position of its key (or of the element itself) to *key_line, *key_col. */
static int sc_enter(struct scanner *s, const struct locate_step *step, int *key_line, int *key_col)
{
	bool is_object = step->key != NULL;
	char open = is_object ? '{' : '[', close = is_object ? '}' : ']';
	struct buf key;
	int r = -ENOENT;

	if (sc_peek(s) != open)
		return sc_peek(s) == (is_object ? '[' : '{') ? -ENOENT : -EINVAL;
	sc_next(s);
	sc_skip_ws(s);
	if (sc_peek(s) == close)
		return -ENOENT;

	buf_init(&key);
	for (size_t i = 0;; i++) {
		bool match;
		sc_skip_ws(s);
		*key_line = s->line;
		*key_col = s->col;
		if (is_object) {
			key.len = 0;
			r = sc_string(s, &key);
			if (r < 0)
				goto out;
			match = strlen(key.data) == key.len && strcmp(key.data, step->key) == 0;
			sc_skip_ws(s);
			if (sc_peek(s) != ':') {
				r = -EINVAL;
				goto out;
			}
			sc_next(s);
			sc_skip_ws(s);
		} else {
			match = i == step->index;
		}
		if (match) {
			r = 0;
			goto out;
		}
		r = sc_skip_value(s);
		if (r < 0)
			goto out;
		sc_skip_ws(s);
		if (sc_peek(s) == ',') {
			sc_next(s);
			continue;
		}
		r = sc_peek(s) == close ? -ENOENT : -EINVAL;
		goto out;
	}
out:
	buf_free(&key);
	return r;
}

int locate_json(const char *text, size_t len, const struct locate_step *path, size_t depth,
		enum locate_target target, int *ret_line, int *ret_column)
{
	struct scanner s = {.p = text, .end = text + len, .line = 1, .col = 1};
	int key_line = 0, key_col = 0;

	for (size_t i = 0; i < depth; i++) {
		sc_skip_ws(&s);
		int r = sc_enter(&s, &path[i], &key_line, &key_col);
		if (r < 0)
			return r;
	}
	if (target == LOCATE_KEY && depth > 0) {
		*ret_line = key_line;
		*ret_column = key_col;
		return 0;
	}
	sc_skip_ws(&s);
	if (sc_eof(&s))
		return -EINVAL;
	*ret_line = s.line;
	*ret_column = s.col;
	return 0;
}
