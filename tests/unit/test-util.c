/* Unit tests for backend/util: buffers, secrets, names, token and whole-file reads, clocks.
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/util.h"

#include "tests/unit/check.h"

static char tmpdir[] = "/tmp/test-util.XXXXXX";

static char *tmp_path(const char *name)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s/%s", tmpdir, name);
	return buf_steal(&b, NULL);
}

/* Writes `len` bytes to tmpdir/name with exactly `mode`; returns the path (caller frees). */
static char *write_tmp(const char *name, const void *data, size_t len, mode_t mode)
{
	char *path = tmp_path(name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, data, len) != (ssize_t) len || fchmod(fd, mode) < 0) {
		perror(path);
		exit(2);
	}
	close(fd);
	return path;
}

static void test_buf(void)
{
	struct buf b;
	size_t len = 99;
	char *s;

	buf_init(&b);
	CHECK(b.data == NULL && b.len == 0 && b.cap == 0, "buf: starts empty without memory");
	buf_append(&b, "", 0);
	CHECK(b.data && b.len == 0 && b.data[0] == '\0', "buf: empty append NUL-terminates");
	buf_puts(&b, "hello");
	buf_append(&b, ", wor", 5);
	buf_printf(&b, "ld %d%c", 42, '!');
	CHECK(b.len == 16 && strcmp(b.data, "hello, world 42!") == 0,
	      "buf: puts, append and printf concatenate");
	CHECK(b.data[b.len] == '\0' && b.cap > b.len, "buf: NUL after len");

	for (int i = 0; i < 10000; i++)
		buf_printf(&b, "%04d", i % 10000);
	CHECK(b.len == 16 + 40000 && memcmp(b.data + b.len - 8, "99989999", 8) == 0 &&
		      b.data[b.len] == '\0',
	      "buf: grows across many appends");

	buf_append(&b, "a\0b", 3);
	CHECK(b.len == 40019 && b.data[40017] == '\0' && b.data[40018] == 'b',
	      "buf: binary data with NUL bytes");

	s = buf_steal(&b, &len);
	CHECK(s && len == 40019 && b.data == NULL && b.len == 0 && b.cap == 0,
	      "buf: steal hands the data over and empties the buffer");
	free(s);

	s = buf_steal(&b, &len);
	CHECK(s && s[0] == '\0' && len == 0, "buf: stealing an empty buffer gives \"\"");
	free(s);

	buf_printf(&b, "%s", "");
	CHECK(b.len == 0, "buf: empty printf");
	buf_puts(&b, "x");
	buf_free(&b);
	CHECK(b.data == NULL && b.len == 0 && b.cap == 0, "buf: free resets");
	buf_free(&b);
	CHECK(b.data == NULL, "buf: double free of an empty buffer is harmless");

	char big[5000];
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	buf_printf(&b, "<%s>", big);
	CHECK(b.len == 5001 && b.data[0] == '<' && b.data[5000] == '>',
	      "buf: one printf larger than the capacity");
	buf_free(&b);
}

static void test_secret_equal(void)
{
	CHECK(secret_equal("abc", "abc"), "secret_equal: equal");
	CHECK(secret_equal("", ""), "secret_equal: both empty");
	CHECK(!secret_equal("abc", "abd"), "secret_equal: last byte differs");
	CHECK(!secret_equal("xbc", "abc"), "secret_equal: first byte differs");
	CHECK(!secret_equal("ab", "abc"), "secret_equal: a is a prefix of b");
	CHECK(!secret_equal("abc", "ab"), "secret_equal: b is a prefix of a");
	CHECK(!secret_equal("", "a"), "secret_equal: empty against non-empty");
	CHECK(!secret_equal("a", ""), "secret_equal: non-empty against empty");
	CHECK(!secret_equal("abcabc", "abc"), "secret_equal: repetition is not equality");
	CHECK(!secret_equal("abc", "abcabc"), "secret_equal: repetition, other way");
}

static void test_name_is_valid(void)
{
	char name[300];

	CHECK(name_is_valid("spark1"), "name: plain");
	CHECK(name_is_valid("a b.c-d_e"), "name: spaces and punctuation are printable");
	CHECK(name_is_valid("..."), "name: three dots");
	CHECK(name_is_valid(".hidden"), "name: leading dot");
	CHECK(name_is_valid("caf\xc3\xa9"), "name: UTF-8");
	CHECK(!name_is_valid(""), "name: empty");
	CHECK(!name_is_valid("."), "name: .");
	CHECK(!name_is_valid(".."), "name: ..");
	CHECK(!name_is_valid("a/b"), "name: slash");
	CHECK(!name_is_valid("/"), "name: only a slash");
	CHECK(!name_is_valid("a\nb"), "name: newline");
	CHECK(!name_is_valid("a\tb"), "name: tab");
	CHECK(!name_is_valid("a\x7f"), "name: DEL");
	memset(name, 'n', 255);
	name[255] = '\0';
	CHECK(name_is_valid(name), "name: 255 bytes");
	name[255] = 'n';
	name[256] = '\0';
	CHECK(!name_is_valid(name), "name: 256 bytes");
}

static void test_token(void)
{
	char err[512], *tok = NULL, *p;
	int r;

	p = write_tmp("ok", "s3cret\n", 7, 0600);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == 0 && tok && strcmp(tok, "s3cret") == 0, "token: 0600 read, newline stripped");
	free(tok);
	tok = NULL;
	free(p);

	p = write_tmp("ro", "t0ken \t\r\n\n", 10, 0400);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == 0 && tok && strcmp(tok, "t0ken") == 0, "token: 0400, trailing whitespace");
	free(tok);
	tok = NULL;
	free(p);

	static const struct {
		mode_t mode;
		const char *name;
	} unsafe[] = {
		{0640, "token: group-readable refused"},   {0604, "token: other-readable refused"},
		{0620, "token: group-writable refused"},   {0602, "token: other-writable refused"},
		{0610, "token: group-executable refused"}, {0644, "token: 0644 refused"},
	};
	for (size_t i = 0; i < sizeof(unsafe) / sizeof(unsafe[0]); i++) {
		p = write_tmp("unsafe", "s3cret", 6, unsafe[i].mode);
		err[0] = '\0';
		r = token_read_file(p, &tok, err, sizeof(err));
		CHECK(r == -EPERM && tok == NULL && strstr(err, p) && strstr(err, "chmod 600"),
		      unsafe[i].name);
		free(p);
	}

	p = write_tmp("empty", "", 0, 0600);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == -ENODATA && tok == NULL && strstr(err, p), "token: empty file");
	free(p);

	p = write_tmp("blank", " \n\t\n", 4, 0600);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == -ENODATA && tok == NULL, "token: only whitespace");
	free(p);

	p = write_tmp("space", "two words\n", 10, 0600);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == -EINVAL && tok == NULL, "token: inner space refused");
	free(p);

	p = write_tmp("ctl", "a\001b", 3, 0600);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == -EINVAL && tok == NULL, "token: control character refused");
	free(p);

	p = tmp_path("missing");
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == -ENOENT && tok == NULL && strstr(err, p),
	      "token: missing file, path in message");
	free(p);

	r = token_read_file(tmpdir, &tok, err, sizeof(err));
	CHECK(r == -EINVAL && tok == NULL, "token: a directory is not a token file");

	char big[5000];
	memset(big, 'k', sizeof(big));
	p = write_tmp("big", big, sizeof(big), 0600);
	r = token_read_file(p, &tok, err, sizeof(err));
	CHECK(r == -EFBIG && tok == NULL, "token: larger than 4096 bytes");
	free(p);
}

static void test_file_read_all(void)
{
	char *data = NULL, *p;
	size_t len = 0;
	int r;

	p = write_tmp("f", "0123456789", 10, 0644);
	r = file_read_all(p, 10, &data, &len);
	CHECK(r == 0 && len == 10 && memcmp(data, "0123456789", 11) == 0,
	      "file_read_all: exactly max bytes, NUL-terminated");
	free(data);
	data = NULL;
	r = file_read_all(p, 9, &data, &len);
	CHECK(r == -EFBIG && data == NULL, "file_read_all: one byte over max is EFBIG");
	free(p);

	static char big[20000];
	memset(big, 'b', sizeof(big));
	p = write_tmp("big", big, sizeof(big), 0644);
	r = file_read_all(p, 16384, &data, &len);
	CHECK(r == -EFBIG && data == NULL, "file_read_all: EFBIG across read chunks");
	r = file_read_all(p, sizeof(big), &data, &len);
	CHECK(r == 0 && len == sizeof(big) && data[len] == '\0' && data[len - 1] == 'b',
	      "file_read_all: multi-chunk file");
	free(data);
	data = NULL;
	free(p);

	p = write_tmp("e", "", 0, 0644);
	r = file_read_all(p, 10, &data, &len);
	CHECK(r == 0 && len == 0 && data && data[0] == '\0', "file_read_all: empty file");
	free(data);
	data = NULL;
	free(p);

	p = tmp_path("nope");
	r = file_read_all(p, 10, &data, &len);
	CHECK(r == -ENOENT && data == NULL, "file_read_all: missing file");
	free(p);

	r = file_read_all(tmpdir, 10, &data, &len);
	CHECK(r == -EISDIR && data == NULL, "file_read_all: directory");
}

static void test_clock(void)
{
	char out[32];
	uint64_t a = clock_now_us(), b = clock_now_us();

	CHECK(b >= a, "clock: monotonic");
	clock_format_utc(0, out);
	CHECK(strcmp(out, "1970-01-01T00:00:00Z") == 0, "clock: epoch in RFC 3339");
	clock_format_utc(1795411707.9, out);
	CHECK(strcmp(out, "2026-11-23T05:28:27Z") == 0, "clock: a date, fraction truncated");
	CHECK(clock_wall_s() > 1.6e9, "clock: wall clock is plausible");
}

static void test_closest_word(void)
{
	static const char *const words[] = {"cmd", "node", "timeout_s", NULL, "retries"};
	CHECK(util_closest_word("cdm", words, 5, 2) == words[0], "closest: transposition");
	CHECK(util_closest_word("nod", words, 5, 2) == words[1], "closest: deletion");
	CHECK(util_closest_word("retriess", words, 5, 2) == words[4],
	      "closest: skips NULL candidates");
	CHECK(util_closest_word("zzzzzz", words, 5, 2) == NULL, "closest: none within 2");
	CHECK(util_closest_word("node", words, 5, 0) == words[1], "closest: exact at 0");
	CHECK(util_closest_word("x", words, 0, 5) == NULL, "closest: no candidates");
	CHECK(util_closest_word("comand", words, 5, 2) == NULL &&
		      util_closest_word("comand", words, 5, 3) == words[0],
	      "closest: the limit is inclusive");
	static const char *const tie[] = {"ab", "ba"};
	CHECK(util_closest_word("aa", tie, 2, 2) == tie[0], "closest: the first wins a tie");
	char longw[300];
	memset(longw, 'x', 299);
	longw[299] = '\0';
	const char *const lw[] = {longw};
	CHECK(util_closest_word(longw, lw, 1, 2) == lw[0], "closest: long words work");
}

static void test_json_depth(void)
{
	char deep[4001];
	memset(deep, '[', 2000);
	deep[2000] = '1';
	memset(deep + 2001, ']', 2000);
	CHECK(util_json_depth(deep, sizeof(deep), JSON_MAX_DEPTH) == JSON_MAX_DEPTH + 1,
	      "json depth: stops counting past the limit");
	const char *flat = "{\"a\": [1, {\"b\": \"[[[[{{{{\\\"[[\"}]}";
	CHECK(util_json_depth(flat, strlen(flat), 32) == 3, "json depth: strings do not count");
	CHECK(util_json_depth("", 0, 32) == 0, "json depth: empty text");
	CHECK(util_json_depth("]]]}}", 5, 32) == 0, "json depth: stray closers");
	CHECK(util_json_values("[1,2,{\"a,b\":[3]}]", 17, 100) == 6, "json values: counted");
	CHECK(util_json_values("[[],[],[]]", 10, 2) == 3, "json values: stops past the limit");
	char out[64];
	CHECK(strcmp(util_escape_controls("a\x1b[2Jb\\c\n", out, sizeof(out)),
		     "a\\x1b[2Jb\\c\\x0a") == 0,
	      "escape: control bytes as \\xHH");
	CHECK(strlen(util_escape_controls("\x01\x01\x01\x01", out, 10)) <= 9,
	      "escape: bounded by the output size");
}

/* The out-of-memory policy: an allocation that cannot be met says so on stderr and aborts
 * (DESIGN §2, "Out of memory"). Run in a child, whose stderr is a pipe. */
static void test_oom(void)
{
#ifdef __SANITIZE_ADDRESS__
	/* ASan answers an impossible malloc with its own report, not NULL */
	CHECK(1, "out of memory: not checked on an ASan build # SKIP");
#else
	int fds[2];
	if (pipe(fds) < 0) {
		CHECK(0, "pipe");
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		dup2(fds[1], STDERR_FILENO);
		close(fds[0]);
		void *volatile p = xmalloc(SIZE_MAX / 2);
		(void) p;
		_exit(0); /* not reached: xmalloc aborted */
	}
	close(fds[1]);
	char msg[256] = "";
	ssize_t n = read(fds[0], msg, sizeof(msg) - 1);
	msg[n > 0 ? n : 0] = '\0';
	close(fds[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
	      "an allocation that cannot be met aborts");
	CHECK(strstr(msg, "clusterfs: out of memory (allocating ") != NULL,
	      "and says so on stderr first");
#endif
}

static void *held_elsewhere(void *arg)
{
	return (void *) (uintptr_t) util_mutex_held(arg);
}

/* assert_held's test: the owner is the calling thread, in a fork's child too (its thread id
 * differs from the parent's, whose id was cached first). */
static void test_mutex_held(void)
{
	pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
	CHECK(!util_mutex_held(&m), "a free mutex is not held");
	pthread_mutex_lock(&m);
	CHECK(util_mutex_held(&m), "a mutex this thread locked is held");
	pthread_t th;
	void *other = (void *) 1;
	pthread_create(&th, NULL, held_elsewhere, &m);
	pthread_join(th, &other);
	CHECK(other == NULL, "but not by another thread");
	pthread_mutex_unlock(&m);
	pid_t pid = fork();
	if (pid == 0) {
		pthread_mutex_t c = PTHREAD_MUTEX_INITIALIZER;
		pthread_mutex_lock(&c);
		_exit(util_mutex_held(&c) ? 0 : 1);
	}
	int status = 1;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a fork's child holds the mutexes it locks (its thread id is not the parent's)");
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 2;
	}
	test_buf();
	test_secret_equal();
	test_name_is_valid();
	test_token();
	test_file_read_all();
	test_clock();
	test_closest_word();
	test_json_depth();
	test_oom();
	test_mutex_held();

	static const char *const names[] = {"ok",  "ro",  "unsafe", "empty", "blank", "space",
					    "ctl", "big", "f",      "e",     NULL};
	for (size_t i = 0; names[i]; i++) {
		char *p = tmp_path(names[i]);
		unlink(p);
		free(p);
	}
	rmdir(tmpdir);
	printf("1..%d\n", n_checks);
	if (n_failed)
		printf("# %d of %d checks failed\n", n_failed, n_checks);
	return n_failed ? 1 : 0;
}
