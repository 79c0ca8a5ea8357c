/* Small helpers every layer uses: a growable byte buffer, logging, clocks. */
#pragma once

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* A growable byte buffer. Always NUL-terminated after its `len` bytes. */
struct buf {
	char *data; /* owned; NULL until the first append */
	size_t len;
	size_t cap;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
/* Appending aborts on out-of-memory: these buffers are small and bounded. */
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Steals the buffer's data (caller frees); leaves `b` empty. */
char *buf_steal(struct buf *b, size_t *ret_len);

/* Monotonic microseconds: for deadlines and ages. */
uint64_t clock_now_us(void);
/* Wall clock, for display only. */
double clock_wall_s(void);
/* Formats a wall-clock time as RFC 3339 UTC ("2026-11-23T05:28:27Z") into out[32]. */
void clock_format_utc(double wall_s, char out[32]);

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Logs one line to stderr (with "<N>" priority prefixes instead of a timestamp when stderr
 * is the systemd journal) or, once log_use_syslog() was called, to syslog. Newlines in
 * the message become spaces. Thread-safe. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_set_level(enum log_level level);
/* True when stderr is the systemd journal (lines then start with "<N>"). */
bool log_stderr_is_journal(void);
void log_use_syslog(const char *ident);
void log_set_prefix(const char *prefix);

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Reads a whole file (at most max bytes) into a new NUL-terminated string. 0 or -errno;
 * -EFBIG when larger than max. */
int file_read_all(const char *path, size_t max, char **ret_data, size_t *ret_len);

/* Reads a secret token file: refuses (-EPERM) a file readable by group or others or owned
 * by a user other than ours or root (checked on the file it reads), -ENODATA when empty. Trailing whitespace is stripped. Returns a new string. */
int token_read_file(const char *path, char **ret_token, char *errbuf, size_t errlen);

/* The name of user `uid` into `out`, or its number when it has none. */
void util_user_name(uid_t uid, char *out, size_t outlen);

/* "SCHEME://ADDRESS:PORT" + path, with an IPv6 address in brackets. Returns a new string.
 * Only backend/endpoint.c calls it: every other URL comes from endpoint_init(), which
 * picks the scheme from the config. */
char *util_host_url(const char *scheme, const char *address, int port, const char *path);

/* Standard base64 (RFC 4648, with padding) of len bytes. Returns a new string. */
char *util_base64_encode(const void *data, size_t len);
/* Decodes standard padded base64 into out (at most cap bytes). Returns the number of bytes
 * written, or -EINVAL for malformed input, -ENOSPC when it does not fit. */
long util_base64_decode(const char *s, unsigned char *out, size_t cap);

/* Checked contracts (DESIGN §2, "Checked contracts"). True when the calling thread holds
 * m (glibc's mutex records its owner; the thread id is cached per thread, and forgotten
 * in a fork's child).
 * Every `*_locked` function starts with assert_held(its lock); every loop-thread-only
 * function with assert(loop_is_current(l)). Both vanish with NDEBUG. */
bool util_mutex_held(const pthread_mutex_t *m);
#define assert_held(m) assert(util_mutex_held(m))

/* Allocation (DESIGN §2, "Out of memory"): one policy for the whole tree. These never
 * return NULL: when memory runs out they write one line to stderr and abort, as redis and
 * git do. Nothing outside tests calls malloc, calloc, realloc, strdup, strndup or
 * asprintf directly, and no function returns -ENOMEM for a failed allocation. */
void util_oom(size_t size) __attribute__((noreturn));
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Compares two strings in time that depends only on the length of `b`. */
bool secret_equal(const char *a, const char *b);

/* Path validity for names shown in the tree: non-empty, no '/', not "." or "..",
 * printable, at most 255 bytes. */
bool name_is_valid(const char *name);

/* The candidate nearest to `word` by edit distance (Levenshtein with adjacent
 * transpositions), if that distance is at most max_distance; the first one on a tie.
 * NULL when none is close enough. Borrows; returns one of `candidates`. */
const char *util_closest_word(const char *word, const char *const *candidates, size_t n,
			      size_t max_distance);

/* Documents from the network nested deeper than this are refused (jansson's own limit is
 * 2048, deep enough to cost real time and stack in every walk of the tree). */
#define JSON_MAX_DEPTH 32

/* The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
 * count; the text need not be valid). Stops counting at `limit` + 1. */
size_t util_json_depth(const char *text, size_t len, size_t limit);

/* Answers holding more values than this are refused too: 480,000 empty arrays fit in
 * 1 MiB and take 200 MB as jansson values. */
#define JSON_MAX_VALUES 200000

/* About how many values JSON text holds (arrays, objects, and the separators between
 * members, outside strings). Stops counting at `limit` + 1. */
size_t util_json_values(const char *text, size_t len, size_t limit);

/* Copies `in` into out (size n, NUL-terminated), with control bytes and DEL written as
 * \xHH escapes, so a sentence from outside cannot steer a terminal or forge log lines.
 * Returns out. */
char *util_escape_controls(const char *in, char *out, size_t n);

static inline void freep(void *p)
{
	extern void free(void *);
	free(*(void **) p);
}
#define _cleanup_free_ __attribute__((cleanup(freep)))

/* Path patterns, as the agent's routes (httpd/server.h) and the tree's rows (fs/tree.h)
 * are written: "/nodes/{node}/health". A run of a path that a "{name}" segment took:
 * path + off, len bytes. */
struct path_capture {
	size_t off, len;
};
/* Matches path against pattern segment by segment: a literal segment matches itself, a
 * "{name}" segment any one non-empty segment, and a "{name*}" segment last in its pattern
 * the rest of the path (one or more segments, the first non-empty). accept (may be NULL)
 * is asked of every parameter, with its pattern segment ("{node}", braces included) and
 * the run it would take, and may refuse it. The runs go to caps (room for max_caps: a
 * path that would take more matches nothing; scratch when there is no match), their
 * number to *ret_n. True on a match. */
bool util_path_match(const char *pattern, const char *path,
		     bool (*accept)(void *arg, const char *param, size_t param_len, const char *s,
				    size_t len),
		     void *arg, struct path_capture *caps, size_t max_caps, size_t *ret_n);
