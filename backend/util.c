/* Small helpers every layer uses. */
#include "backend/util.h"

/* The default level, named before <syslog.h>, whose LOG_INFO (6) and LOG_DEBUG (7) macros
 * shadow util.h's levels below: with them, debug lines were always written. */
static const enum log_level log_default = LOG_INFO;

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

void buf_init(struct buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b);
}

static void buf_reserve(struct buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + extra + 1)
		cap *= 2;
	b->data = xrealloc(b->data, cap);
	b->cap = cap;
}

void buf_append(struct buf *b, const void *data, size_t len)
{
	buf_reserve(b, len);
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
	if (!fmt)
		return;
	va_list aq;
	va_copy(aq, ap);
	char probe[1]; /* measures the length (a NULL buffer upsets -Wformat-truncation) */
	int n = vsnprintf(probe, sizeof(probe), fmt, aq);
	va_end(aq);
	if (n < 0)
		return;
	buf_reserve(b, (size_t) n);
	vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
	b->len += (size_t) n;
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(b, fmt, ap);
	va_end(ap);
}

char *buf_steal(struct buf *b, size_t *ret_len)
{
	if (!b->data)
		buf_reserve(b, 0), b->data[0] = '\0';
	char *d = b->data;
	if (ret_len)
		*ret_len = b->len;
	buf_init(b);
	return d;
}

uint64_t clock_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

double clock_wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

void clock_format_utc(double wall_s, char out[32])
{
	time_t t = (time_t) wall_s;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static enum log_level log_max = log_default;
static bool log_syslog;
static const char *log_prefix = "clusterfs";
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(enum log_level level)
{
	log_max = level;
}

void log_set_prefix(const char *prefix)
{
	log_prefix = prefix;
}

void log_use_syslog(const char *ident)
{
	openlog(ident, LOG_PID, LOG_DAEMON);
	log_syslog = true;
}

/* Under systemd, stderr goes to the journal (JOURNAL_STREAM names its device and inode;
 * INVOCATION_ID alone when that is not set): lines then carry the sd-daemon "<N>" priority
 * prefix and no timestamp, so that journalctl -p works. */
static bool log_journal;
static pthread_once_t log_journal_once = PTHREAD_ONCE_INIT;

static void log_detect_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	struct stat st;
	unsigned long long dev, ino;
	if (js && js[0]) {
		log_journal = sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(2, &st) == 0 &&
			      (unsigned long long) st.st_dev == dev &&
			      (unsigned long long) st.st_ino == ino;
		return;
	}
	const char *inv = getenv("INVOCATION_ID");
	log_journal = inv && inv[0] && !isatty(2);
}

bool log_stderr_is_journal(void)
{
	pthread_once(&log_journal_once, log_detect_journal);
	return log_journal;
}

/* One line per message whatever it quotes: control bytes (an ESC from a spec, a newline
 * from an agent's error) are written as \xHH. */
void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	if (level > log_max)
		return;
	pthread_once(&log_journal_once, log_detect_journal);
	struct buf raw, m;
	buf_init(&raw);
	buf_init(&m);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&raw, fmt, ap);
	va_end(ap);
	/* one line per event: a newline inside a value cannot start a forged entry, and an
	 * ESC cannot drive the terminal of whoever reads the log */
	for (size_t i = 0; i < raw.len; i++) {
		unsigned char c = (unsigned char) raw.data[i];
		if (c < 0x20 || c == 0x7f)
			buf_printf(&m, "\\x%02x", c);
		else
			buf_append(&m, (const char *) &c, 1);
	}
	buf_free(&raw);
	if (log_syslog) {
		syslog(prio[level], "%s", m.data ? m.data : "");
	} else {
		pthread_mutex_lock(&log_lock);
		if (log_journal) {
			fprintf(stderr, "<%d>%s\n", prio[level], m.data ? m.data : "");
		} else {
			char ts[32];
			clock_format_utc(clock_wall_s(), ts);
			fprintf(stderr, "%s %s[%d] %s: %s\n", ts, log_prefix, (int) getpid(),
				names[level], m.data ? m.data : "");
		}
		pthread_mutex_unlock(&log_lock);
	}
	buf_free(&m);
}

/* Reads fd to its end (at most max bytes) into a new NUL-terminated string. */
static int fd_read_all(int fd, size_t max, char **ret_data, size_t *ret_len)
{
	struct buf b;
	buf_init(&b);
	char chunk[8192];
	int r = 0;
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		if (n == 0)
			break;
		if (b.len + (size_t) n > max) {
			r = -EFBIG;
			break;
		}
		buf_append(&b, chunk, (size_t) n);
	}
	if (r < 0) {
		buf_free(&b);
		return r;
	}
	*ret_data = buf_steal(&b, ret_len);
	return 0;
}

int file_read_all(const char *path, size_t max, char **ret_data, size_t *ret_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fd_read_all(fd, max, ret_data, ret_len);
	close(fd);
	return r;
}

void util_user_name(uid_t uid, char *out, size_t outlen)
{
	char buf[16384];
	struct passwd pw, *found = NULL;

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &found) == 0 && found && pw.pw_name)
		snprintf(out, outlen, "%s", pw.pw_name);
	else
		snprintf(out, outlen, "%u", (unsigned) uid);
}

int token_read_file(const char *path, char **ret_token, char *errbuf, size_t errlen)
{
	/* the mode is checked on the file that is read, not on a name that may change */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int r = -errno;
		snprintf(errbuf, errlen, "token file %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return r;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(errbuf, errlen, "token file %s is not a regular file", path);
		return -EINVAL;
	}
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		close(fd);
		char owner[64], self[64];
		util_user_name(st.st_uid, owner, sizeof(owner));
		util_user_name(geteuid(), self, sizeof(self));
		snprintf(errbuf, errlen,
			 "token file %s is owned by %s (uid %u), not by %s (the user this program "
			 "runs as) or root; a token file that belongs to uid %u can be changed by "
			 "that user: run: chown %s %s",
			 path, owner, (unsigned) st.st_uid, self, (unsigned) st.st_uid, self, path);
		return -EPERM;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		close(fd);
		snprintf(errbuf, errlen,
			 "token file %s is accessible by group or others (mode %04o); "
			 "run: chmod 600 %s",
			 path, (unsigned) (st.st_mode & 07777), path);
		return -EPERM;
	}
	char *data = NULL;
	size_t len = 0;
	int r = fd_read_all(fd, 4096, &data, &len);
	close(fd);
	if (r < 0) {
		snprintf(errbuf, errlen, "token file %s: %s", path,
			 r == -EFBIG ? "larger than 4096 bytes" : strerror(-r));
		return r;
	}
	while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' ' ||
			   data[len - 1] == '\t'))
		data[--len] = '\0';
	if (len == 0) {
		free(data);
		snprintf(errbuf, errlen, "token file %s is empty", path);
		return -ENODATA;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char) data[i];
		if (c <= ' ' || c >= 0x7f) {
			free(data);
			snprintf(errbuf, errlen,
				 "token file %s holds a space or control character; a token is "
				 "one line of printable characters",
				 path);
			return -EINVAL;
		}
	}
	*ret_token = data;
	return 0;
}

bool secret_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	volatile unsigned char diff = (unsigned char) (la != lb);
	for (size_t i = 0; i < lb; i++)
		diff |= (unsigned char) (a[i % (la ? la : 1)] ^ b[i]) & (la ? 0xff : 0);
	return diff == 0 && la == lb;
}

/* Optimal string alignment distance between a and b, or SIZE_MAX once it certainly
 * exceeds `limit` (the lengths alone tell). Three rows: i-2, i-1 and i. */
static size_t edit_distance(const char *a, const char *b, size_t limit)
{
	size_t la = strlen(a), lb = strlen(b);
	if ((la > lb ? la - lb : lb - la) > limit)
		return SIZE_MAX;

	size_t *rows = xcalloc(3 * (lb + 1), sizeof(*rows));
	size_t *prev2 = rows, *prev = rows + lb + 1, *cur = rows + 2 * (lb + 1);
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t cost = a[i - 1] != b[j - 1];
			size_t best = prev[j] + 1;
			if (cur[j - 1] + 1 < best)
				best = cur[j - 1] + 1;
			if (prev[j - 1] + cost < best)
				best = prev[j - 1] + cost;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    prev2[j - 2] + 1 < best)
				best = prev2[j - 2] + 1;
			cur[j] = best;
		}
		size_t *t = prev2;
		prev2 = prev;
		prev = cur;
		cur = t;
	}
	size_t d = prev[lb];
	free(rows);
	return d;
}

const char *util_closest_word(const char *word, const char *const *candidates, size_t n,
			      size_t max_distance)
{
	const char *best = NULL;
	size_t best_d = max_distance;

	for (size_t i = 0; i < n; i++) {
		if (!candidates[i])
			continue;
		size_t d = edit_distance(word, candidates[i], max_distance);
		if (d <= best_d && (!best || d < best_d)) {
			best = candidates[i];
			best_d = d;
		}
	}
	return best;
}

bool name_is_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 255 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char) name[i];
		if (c == '/' || c < 0x20 || c == 0x7f)
			return false;
	}
	return true;
}

char *util_host_url(const char *scheme, const char *address, int port, const char *path)
{
	struct buf b;
	buf_init(&b);
	bool v6 = strchr(address, ':') != NULL;
	buf_printf(&b, "%s://%s%s%s:%d%s", scheme, v6 ? "[" : "", address, v6 ? "]" : "", port,
		   path ? path : "");
	return buf_steal(&b, NULL);
}

static const char base64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *util_base64_encode(const void *data, size_t len)
{
	const unsigned char *p = data;
	char *out = xcalloc(4 * ((len + 2) / 3) + 1, 1);
	size_t o = 0;
	for (size_t i = 0; i < len; i += 3) {
		unsigned v = (unsigned) p[i] << 16;
		if (i + 1 < len)
			v |= (unsigned) p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		out[o++] = base64_alphabet[(v >> 18) & 63];
		out[o++] = base64_alphabet[(v >> 12) & 63];
		out[o++] = i + 1 < len ? base64_alphabet[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? base64_alphabet[v & 63] : '=';
	}
	out[o] = '\0';
	return out;
}

long util_base64_decode(const char *s, unsigned char *out, size_t cap)
{
	size_t len = strlen(s), n = 0;
	if (len % 4)
		return -EINVAL;
	for (size_t i = 0; i < len; i += 4) {
		unsigned v = 0;
		int pad = 0;
		for (size_t k = 0; k < 4; k++) {
			const char *c = s[i + k] ? strchr(base64_alphabet, s[i + k]) : NULL;
			if (s[i + k] == '=' && i + 4 == len && k >= 2) {
				pad++;
				v <<= 6;
				continue;
			}
			if (!c || pad)
				return -EINVAL;
			v = (v << 6) | (unsigned) (c - base64_alphabet);
		}
		for (int k = 0; k < 3 - pad; k++) {
			if (n >= cap)
				return -ENOSPC;
			out[n++] = (unsigned char) (v >> (16 - 8 * k));
		}
	}
	return (long) n;
}

/* The index of the '"' that ends the JSON string opening at text[i] (len or more when it
 * does not end), so that the counts below skip what strings hold. */
static size_t json_string_end(const char *text, size_t len, size_t i)
{
	for (i++; i < len && text[i] != '"'; i++)
		if (text[i] == '\\')
			i++;
	return i;
}

size_t util_json_depth(const char *text, size_t len, size_t limit)
{
	size_t depth = 0, max = 0;
	for (size_t i = 0; i < len && max <= limit; i++) {
		char ch = text[i];
		if (ch == '"') {
			i = json_string_end(text, len, i);
		} else if (ch == '[' || ch == '{') {
			if (++depth > max)
				max = depth;
		} else if ((ch == ']' || ch == '}') && depth > 0) {
			depth--;
		}
	}
	return max;
}

size_t util_json_values(const char *text, size_t len, size_t limit)
{
	size_t n = len ? 1 : 0;
	for (size_t i = 0; i < len && n <= limit; i++) {
		char ch = text[i];
		if (ch == '"')
			i = json_string_end(text, len, i);
		else if (ch == '[' || ch == '{' || ch == ',')
			n++;
	}
	return n;
}

char *util_escape_controls(const char *in, char *out, size_t n)
{
	size_t o = 0;
	if (!n)
		return out;
	for (const unsigned char *p = (const unsigned char *) in; *p && o + 1 < n; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			if (o + 5 >= n)
				break;
			o += (size_t) snprintf(out + o, n - o, "\\x%02x", *p);
		} else {
			out[o++] = (char) *p;
		}
	}
	out[o] = '\0';
	return out;
}

/* The one out-of-memory policy (DESIGN §2, "Out of memory"): say so on stderr, with
 * write(2) since stdio may need memory, then abort. */
void util_oom(size_t size)
{
	char msg[96];
	int n = snprintf(msg, sizeof(msg), "clusterfs: out of memory (allocating %zu bytes)\n",
			 size);
	if (n > 0 && write(STDERR_FILENO, msg, (size_t) n) < 0) {
		/* nothing left to tell it to */
	}
	abort();
}

void *xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);
	if (!p)
		util_oom(size);
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p)
		util_oom(size && n > SIZE_MAX / size ? SIZE_MAX : n * size);
	return p;
}

void *xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size ? size : 1);
	if (!q)
		util_oom(size);
	return q;
}

char *xstrdup(const char *s)
{
	char *d = strdup(s);
	if (!d)
		util_oom(strlen(s) + 1);
	return d;
}

char *xstrndup(const char *s, size_t n)
{
	char *d = strndup(s, n);
	if (!d)
		util_oom(n + 1);
	return d;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s = NULL;
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		util_oom(strlen(fmt));
	return s;
}

/* Each thread's id, cached (gettid() is a system call, and every `*_locked` function asks)
 * and forgotten in a fork's child, whose one thread has another id: fuse_daemonize()
 * forks after the mutexes were first checked. */
static __thread pid_t thread_id;

static void thread_id_forget(void)
{
	thread_id = 0;
}

__attribute__((constructor)) static void thread_id_init(void)
{
	pthread_atfork(NULL, NULL, thread_id_forget);
}

bool util_mutex_held(const pthread_mutex_t *m)
{
	if (!thread_id)
		thread_id = gettid();
	return m->__data.__owner == thread_id;
}

bool util_path_match(const char *pattern, const char *path,
		     bool (*accept)(void *arg, const char *param, size_t param_len, const char *s,
				    size_t len),
		     void *arg, struct path_capture *caps, size_t max_caps, size_t *ret_n)
{
	const char *p = pattern, *s = path;
	size_t n = 0;
	while (*p && *s) {
		if (*p != '/' || *s != '/')
			return false;
		p++;
		s++;
		size_t pl = strcspn(p, "/"), sl = strcspn(s, "/");
		if (pl >= 2 && p[0] == '{' && p[pl - 1] == '}') {
			if (sl == 0 || n == max_caps)
				return false;
			if (pl >= 3 && p[pl - 2] == '*' && !p[pl])
				sl = strlen(s); /* a tail takes the rest */
			if (accept && !accept(arg, p, pl, s, sl))
				return false;
			caps[n].off = (size_t) (s - path);
			caps[n].len = sl;
			n++;
		} else if (pl != sl || memcmp(p, s, pl) != 0) {
			return false;
		}
		p += pl;
		s += sl;
	}
	if (*p || *s)
		return false;
	*ret_n = n;
	return true;
}
