/* Serving a task's outputs and fetching a task's inputs (see staging.h). */
#include "tools/agent/staging.h"

#include "backend/digest.h"
#include "backend/util.h"
#include "tools/agent/artifacts.h"

#include <curl/curl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <ftw.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STAGING_MANIFEST_MAX (4 * 1024 * 1024)
#define STAGING_CONNECT_MS   10000L
#define STAGING_LOW_SPEED_S  60L /* a fetch slower than 1 KiB/s for this long fails */

static bool id_is_valid(const char *id)
{
	size_t n = strlen(id);
	if (!n || n > 200 || !strcmp(id, ".") || !strcmp(id, ".."))
		return false;
	for (const char *p = id; *p; p++)
		if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') ||
		      ('0' <= *p && *p <= '9') || strchr("._@:-", *p)))
			return false;
	return true;
}

/* The task's files.json, or NULL with the status to answer in *ret_status (404: no such
 * task; 200 with pending: not collected yet). */
static json_t *manifest_load(const char *state_dir, const char *id, unsigned *ret_status)
{
	_cleanup_free_ char *dir = xasprintf("%s/tasks/%s", state_dir, id);
	_cleanup_free_ char *path = xasprintf("%s/%s", dir, ARTIFACTS_MANIFEST), *text = NULL;
	size_t len;
	struct stat st;
	if (stat(dir, &st) < 0) {
		*ret_status = 404;
		return NULL;
	}
	if (file_read_all(path, STAGING_MANIFEST_MAX, &text, &len) < 0) {
		*ret_status = 200;
		return NULL;
	}
	json_t *doc = json_loadb(text, len, 0, NULL);
	*ret_status = doc ? 200 : 500;
	return doc;
}

int staging_handle_manifest(const char *state_dir, struct request *req, struct response *resp)
{
	const char *id = req->params[0];
	unsigned status = 404;
	if (!id_is_valid(id)) {
		response_set_error(resp, 404, "no such task: %.200s", id);
		return 0;
	}
	json_t *doc = manifest_load(state_dir, id, &status);
	if (doc)
		return response_set_json(resp, 200, doc);
	if (status == 200)
		return response_set_json(resp, 200,
					 json_pack("{s:[], s:b}", "files", "pending", true));
	response_set_error(resp, status,
			   status == 404 ? "no such task: %.200s"
					 : "the file list of %.200s is unreadable",
			   id);
	return 0;
}

int staging_handle_file(const char *state_dir, struct request *req, struct response *resp)
{
	const char *id = req->params[0], *name = req->params[1];
	unsigned status = 404;
	json_t *doc = id_is_valid(id) && artifacts_name_is_valid(name)
			      ? manifest_load(state_dir, id, &status)
			      : NULL;
	json_t *entry = NULL;
	size_t i;
	json_t *f;
	json_array_foreach (json_object_get(doc, "files"), i, f)
		if (!strcmp(json_string_value(json_object_get(f, "name")) ?: "", name))
			entry = f;
	if (!entry) {
		response_set_error(resp, 404, "task %.200s has no output %.200s", id, name);
		json_decref(doc);
		return 0;
	}
	_cleanup_free_ char *path =
		xasprintf("%s/tasks/%s/%s/%s", state_dir, id, ARTIFACTS_DIR, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		response_set_error(resp, 404, "task %.200s has no output %.200s", id, name);
		if (fd >= 0)
			close(fd);
		json_decref(doc);
		return 0;
	}
	response_add_header(resp, "X-Sha256", json_string_value(json_object_get(entry, "sha256")));
	json_decref(doc);
	resp->content_type = "application/octet-stream";
	resp->file_fd = fd;
	resp->file_size = (uint64_t) st.st_size;
	resp->status = 200;
	return 0;
}

#define HASH_CHUNK (4 * 1024 * 1024)

/* Hashes a file on a thread of its own as it is written, a step behind the writer, reading
 * back what the page cache holds: the digest then costs no time on the path of the bytes
 * (one core receives and writes, another hashes). */
struct hasher {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int fd;           /* open for reading on the file being written */
	uint64_t written; /* protected by lock */
	bool done;        /* protected by lock: nothing more will be written */
	int err;          /* a read failed (errno); read after the join */
	struct digest d;
};

static void *hasher_main(void *arg)
{
	struct hasher *h = arg;
	char *chunk = xmalloc(HASH_CHUNK);
	uint64_t at = 0;
	for (;;) {
		pthread_mutex_lock(&h->lock);
		while (at == h->written && !h->done)
			pthread_cond_wait(&h->cond, &h->lock);
		uint64_t end = h->written;
		bool done = h->done;
		pthread_mutex_unlock(&h->lock);
		if (at == end && done)
			break;
		while (at < end) {
			size_t want = end - at < HASH_CHUNK ? (size_t) (end - at) : HASH_CHUNK;
			ssize_t n = pread(h->fd, chunk, want, (off_t) at);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				h->err = n < 0 ? errno : EIO;
				free(chunk);
				return NULL;
			}
			digest_update(&h->d, chunk, (size_t) n);
			at += (uint64_t) n;
		}
	}
	free(chunk);
	return NULL;
}

/* Starts hashing `path` as it is written. 0 or -errno. */
static int hasher_start(struct hasher *h, const char *path)
{
	memset(h, 0, sizeof(*h));
	h->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (h->fd < 0)
		return -errno;
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
	digest_init(&h->d);
	int r = pthread_create(&h->thread, NULL, hasher_main, h);
	if (r) {
		digest_clear(&h->d);
		close(h->fd);
		return -r;
	}
	return 0;
}

static void hasher_add(struct hasher *h, uint64_t len)
{
	pthread_mutex_lock(&h->lock);
	h->written += len;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
}

/* Waits for the hash of everything written: 0 with the digest in out, or -errno. */
static int hasher_finish(struct hasher *h, char out[DIGEST_HEX_LEN + 1])
{
	pthread_mutex_lock(&h->lock);
	h->done = true;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	close(h->fd);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
	if (h->err) {
		digest_clear(&h->d);
		return -h->err;
	}
	digest_final_hex(&h->d, out);
	return 0;
}

struct fetch {
	int fd;
	struct hasher h;
	uint64_t got, limit;
	int err; /* a write failed */
	const volatile bool *stopping;
};

static size_t fetch_write(char *data, size_t size, size_t n, void *arg)
{
	struct fetch *f = arg;
	size_t len = size * n;
	if (f->limit && f->got + len > f->limit) {
		f->err = EFBIG;
		return 0;
	}
	for (size_t off = 0; off < len;) {
		ssize_t w = write(f->fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			f->err = errno;
			return 0;
		}
		off += (size_t) w;
	}
	f->got += len;
	hasher_add(&f->h, len);
	return len;
}

#define SPLICE_CHUNK (1024 * 1024)
#define HEADERS_MAX  (16 * 1024)

/* connect(2) that gives up after `ms`. 0, or -1 with errno set. */
static int connect_within(int sock, const struct sockaddr *addr, socklen_t len, long ms)
{
	int flags = fcntl(sock, F_GETFL);
	if (flags < 0 || fcntl(sock, F_SETFL, flags | O_NONBLOCK) < 0)
		return -1;
	if (connect(sock, addr, len) < 0) {
		if (errno != EINPROGRESS)
			return -1;
		struct pollfd p = {.fd = sock, .events = POLLOUT};
		int n = poll(&p, 1, (int) ms);
		int e = 0;
		socklen_t el = sizeof(e);
		if (n == 0)
			e = ETIMEDOUT;
		else if (n < 0 || getsockopt(sock, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
			e = errno;
		if (e) {
			errno = e;
			return -1;
		}
	}
	return fcntl(sock, F_SETFL, flags);
}

/* Waits until sock is readable, looking at the stop flag every half second: 0, or
 * -ECANCELED (the agent stops), or -ETIMEDOUT (nothing for STAGING_LOW_SPEED_S). */
static int wait_readable(int sock, const struct fetch *f)
{
	uint64_t idle_since = clock_now_us();
	for (;;) {
		if (f->stopping && *f->stopping)
			return -ECANCELED;
		struct pollfd p = {.fd = sock, .events = POLLIN};
		int n = poll(&p, 1, 500);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
		if (clock_now_us() - idle_since > STAGING_LOW_SPEED_S * 1000000ull)
			return -ETIMEDOUT;
	}
}

/* A plain-http GET whose body goes from the socket into the file by splice(2), never
 * through user space (libcurl copies it twice): the receiving side's CPU is then left to
 * the digest. Only for what it knows: an http:// URL with a numeric or resolvable host,
 * answered 200 with a Content-Length and no transfer coding; -EPROTONOSUPPORT when it did
 * not try (nothing was written: the caller uses libcurl), another -errno with a sentence
 * in err when it failed. */
/* Splits an http:// URL into host, port (80 unless given) and path. Returns 0, or
 * -EPROTONOSUPPORT for a URL this fetch does not read (curl's path does). */
static int url_split(const char *url, char *host, size_t host_len, char *port, size_t port_len,
		     const char **ret_path)
{
	const char *p = url + 7, *path;
	if (strncmp(url, "http://", 7))
		return -EPROTONOSUPPORT;
	size_t hl;
	if (*p == '[') {
		hl = strcspn(p + 1, "]");
		if (p[1 + hl] != ']' || hl >= host_len)
			return -EPROTONOSUPPORT;
		memcpy(host, p + 1, hl);
		p += hl + 2;
	} else {
		hl = strcspn(p, ":/");
		if (hl >= host_len)
			return -EPROTONOSUPPORT;
		memcpy(host, p, hl);
		p += hl;
	}
	host[hl] = '\0';
	if (*p == ':') {
		size_t pl = strcspn(p + 1, "/");
		if (!pl || pl >= port_len)
			return -EPROTONOSUPPORT;
		memcpy(port, p + 1, pl);
		port[pl] = '\0';
		p += pl + 1;
	}
	path = *p == '/' ? p : NULL;
	if (!path || strpbrk(path, " \r\n"))
		return -EPROTONOSUPPORT;
	*ret_path = path;
	return 0;
}

/* Connects to ai (host:port, freed here) within STAGING_CONNECT_MS and sends the GET of
 * path. *ret_sock gets the socket (or -1). Returns 0 or -errno with the reason in err. */
static int spliced_request(struct addrinfo *ai, const char *host, const char *port,
			   const char *path, int *ret_sock, char *err, size_t errlen)
{
	int sock = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = {.tv_sec = STAGING_LOW_SPEED_S};
	int r = 0;
	if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect_within(sock, ai->ai_addr, ai->ai_addrlen, STAGING_CONNECT_MS) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot connect to %.64s:%s: %s", host, port,
			 strerror(errno));
	}
	freeaddrinfo(ai);
	char *head = NULL;
	if (r == 0) {
		head = xasprintf("GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
				 "User-Agent: clusterfs-agent\r\n\r\n",
				 path, host, port);
		ssize_t n = (ssize_t) strlen(head);
		if (send(sock, head, (size_t) n, MSG_NOSIGNAL) != n) {
			r = -EIO;
			snprintf(err, errlen, "cannot send the request to %.64s:%s", host, port);
		}
		free(head);
		head = NULL;
	}
	*ret_sock = sock;
	return r;
}

/* Reads the answer's head, and what came with it of the body, into buf (HEADERS_MAX + 1
 * bytes, or NULL when none could be had): *ret_got bytes, the head ending at *ret_end.
 * Returns 0 or -errno with the reason in err. */
static int read_head(int sock, struct fetch *f, const char *host, const char *port, char *buf,
		     size_t *ret_got, char **ret_end, char *err, size_t errlen)
{
	size_t got = 0;
	char *end = NULL;
	int r = 0;
	while (r == 0 && !end) {
		if (!buf || got == HEADERS_MAX) {
			r = -EPROTONOSUPPORT;
			break;
		}
		ssize_t n = (r = wait_readable(sock, f)) < 0
				    ? -1
				    : recv(sock, buf + got, HEADERS_MAX - got, 0);
		if (r < 0) {
			snprintf(err, errlen, "no answer from %.64s:%s: %s", host, port,
				 strerror(-r));
			break;
		}
		if (n <= 0) {
			r = n < 0 ? -errno : -ECONNRESET;
			snprintf(err, errlen, "no answer from %.64s:%s: %s", host, port,
				 strerror(-r));
			break;
		}
		got += (size_t) n;
		buf[got] = '\0';
		end = strstr(buf, "\r\n\r\n");
	}
	*ret_got = got;
	*ret_end = end;
	return r;
}

/* The status and the length of the answer whose head is buf (ending at end): 200 with a
 * Content-Length (the one expected, when f->limit says), no chunked encoding. Returns 0
 * with *ret_length, or -errno with the reason in err. */
static int check_head(char *buf, char *end, const struct fetch *f, long long *ret_length, char *err,
		      size_t errlen)
{
	long long length = -1;
	int r = 0;
	int status = 0;
	*end = '\0';
	if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
		r = -EPROTONOSUPPORT;
	for (char *line = strstr(buf, "\r\n"); r == 0 && line; line = strstr(line, "\r\n")) {
		line += 2;
		if (!strncasecmp(line, "Content-Length:", 15))
			length = strtoll(line + 15, NULL, 10);
		else if (!strncasecmp(line, "Transfer-Encoding:", 18))
			r = -EPROTONOSUPPORT;
	}
	if (r == 0 && status != 200) {
		r = -EIO;
		snprintf(err, errlen, "The requested URL returned error: %d", status);
	} else if (r == 0 && (length < 0 || (f->limit && (uint64_t) length != f->limit))) {
		r = length < 0 ? -EPROTONOSUPPORT : -EIO;
		snprintf(err, errlen, "the answer is %lld bytes, not %llu", length,
			 (unsigned long long) f->limit);
	}
	*ret_length = length;
	return r;
}

/* Moves the rest of the body (up to length bytes in all) from the socket into f->fd
 * through pipefd, hashing as it goes. Returns 0 or -errno with the reason in err. */
static int splice_body(int sock, const int pipefd[2], struct fetch *f, long long length, char *err,
		       size_t errlen)
{
	int r = 0;
	while (r == 0 && f->got < (uint64_t) length) {
		if (f->stopping && *f->stopping) {
			r = -ECANCELED;
			break;
		}
		uint64_t left = (uint64_t) length - f->got;
		if ((r = wait_readable(sock, f)) < 0) {
			snprintf(err, errlen, "the answer stopped after %llu bytes: %s",
				 (unsigned long long) f->got, strerror(-r));
			break;
		}
		ssize_t n = splice(sock, NULL, pipefd[1], NULL,
				   left < SPLICE_CHUNK ? (size_t) left : SPLICE_CHUNK,
				   SPLICE_F_MOVE | SPLICE_F_MORE);
		if (n <= 0) {
			r = n < 0 ? -errno : -ECONNRESET;
			snprintf(err, errlen, "the answer broke off after %llu bytes: %s",
				 (unsigned long long) f->got, strerror(-r));
			break;
		}
		for (ssize_t moved = 0; r == 0 && moved < n;) {
			loff_t off = (loff_t) (f->got + (uint64_t) moved);
			ssize_t w = splice(pipefd[0], NULL, f->fd, &off, (size_t) (n - moved),
					   SPLICE_F_MOVE);
			if (w <= 0) {
				r = w < 0 ? -errno : -EIO;
				f->err = -r;
				break;
			}
			moved += w;
		}
		if (r == 0) {
			f->got += (uint64_t) n;
			hasher_add(&f->h, (uint64_t) n);
		}
	}
	return r;
}

static int fetch_spliced(const char *url, struct fetch *f, char *err, size_t errlen)
{
	char host[256], port[8] = "80";
	const char *path;
	int r = url_split(url, host, sizeof(host), port, sizeof(port), &path);
	if (r < 0)
		return r;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
		return -EPROTONOSUPPORT;
	int sock = -1, pipefd[2] = {-1, -1};
	r = spliced_request(ai, host, port, path, &sock, err, errlen);
	char *buf = r == 0 ? xmalloc(HEADERS_MAX + 1) : NULL;
	size_t got = 0;
	char *end = NULL;
	long long length = -1;
	if (r == 0)
		r = read_head(sock, f, host, port, buf, &got, &end, err, errlen);
	if (r == 0)
		r = check_head(buf, end, f, &length, err, errlen);
	if (r == 0) {
		/* the body's first bytes came with the head */
		char *body = end + 4;
		size_t have = got - (size_t) (body - buf);
		if (have && fetch_write(body, 1, have, f) != have)
			r = -EIO;
		if (r == 0 && pipe2(pipefd, O_CLOEXEC) < 0)
			r = -errno;
	}
	if (r == 0)
		r = splice_body(sock, pipefd, f, length, err, errlen);
	if (r == -EPROTONOSUPPORT && f->got) {
		r = -EIO; /* too late to start over */
		snprintf(err, errlen, "an answer this fetch cannot read");
	}
	free(buf);
	if (pipefd[0] >= 0) {
		close(pipefd[0]);
		close(pipefd[1]);
	}
	if (sock >= 0)
		close(sock);
	return r;
}

static int fetch_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	const struct fetch *f = arg;
	return f->stopping && *f->stopping;
}

static int make_parents(char *path, size_t from);
static void remove_empty_parents(char *path, size_t keep);

/* A PUT in progress: the body goes to NAME.part as it arrives. */
struct upload {
	int fd;
	int err; /* -errno: writing failed, or the names were bad */
	struct digest d;
	uint64_t got;
	char *path, *part;
};

static void upload_free(void *arg)
{
	struct upload *u = arg;
	digest_clear(&u->d);
	if (u->fd >= 0) {
		close(u->fd);
		unlink(u->part);
	}
	free(u->path);
	free(u->part);
	free(u);
}

static struct upload *upload_begin(const char *state_dir, struct request *req)
{
	if (req->state)
		return req->state;
	struct upload *u = xcalloc(1, sizeof(*u));
	u->fd = -1;
	digest_init(&u->d);
	req->state = u;
	req->state_free = upload_free;
	const char *id = req->params[0], *name = req->params[1];
	if (!id_is_valid(id) || !artifacts_name_is_valid(name)) {
		u->err = -EINVAL;
		return u;
	}
	u->path = xasprintf("%s/%s/%s/%s", state_dir, ARTIFACTS_STAGING, id, name);
	u->part = xasprintf("%s.part", u->path);
	u->err = make_parents(u->path, strlen(state_dir) + 1);
	if (!u->err) {
		u->fd = open(u->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		u->err = u->fd < 0 ? -errno : 0;
	}
	return u;
}

int staging_upload(const char *state_dir, struct request *req, const char *data, size_t len)
{
	struct upload *u = upload_begin(state_dir, req);
	if (u->err)
		return u->err;
	digest_update(&u->d, data, len);
	for (size_t off = 0; off < len;) {
		ssize_t w = write(u->fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			u->err = -errno;
			return u->err;
		}
		off += (size_t) w;
	}
	u->got += len;
	return 0;
}

int staging_handle_put(const char *state_dir, struct request *req, struct response *resp)
{
	const char *name = req->params[1];
	struct upload *u = upload_begin(state_dir, req);
	if (u->err == -EINVAL) {
		response_set_error(resp, 400, "not a task id and input name: %.200s/%.200s",
				   req->params[0], name);
		return 0;
	}
	if (u->err || fsync(u->fd) < 0) {
		response_set_error(resp, 500, "input %.200s: cannot write it: %s", name,
				   strerror(u->err ? -u->err : errno));
		return 0;
	}
	char got[DIGEST_HEX_LEN + 1];
	digest_final_hex(&u->d, got);
	const char *want = request_get_query(req, "sha256");
	if (want && strcasecmp(want, got)) {
		response_set_error(resp, 409, "input %.200s: the digest is %s, not %.64s", name,
				   got, want);
		return 0;
	}
	if (rename(u->part, u->path) < 0) {
		response_set_error(resp, 500, "input %.200s: %s", name, strerror(errno));
		return 0;
	}
	close(u->fd);
	u->fd = -1;
	log_info("staged input %s for %s: %" PRIu64 " bytes (sent)", name, req->params[0], u->got);
	return response_set_json(resp, 200,
				 json_pack("{s:s, s:I, s:s}", "name", name, "size",
					   (json_int_t) u->got, "sha256", got));
}

/* Removes the directories of `path` that a failed staging left empty, down to the
 * first `keep` bytes (STATE_DIR/staging). */
static void remove_empty_parents(char *path, size_t keep)
{
	for (char *slash; (slash = strrchr(path, '/')) && (size_t) (slash - path) > keep;) {
		*slash = '\0';
		if (rmdir(path) < 0)
			break;
	}
}

/* Makes the directories of STATE/staging/ID/NAME. */
static int make_parents(char *path, size_t from)
{
	for (char *p = path + from; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		int r = mkdir(path, 0700);
		*p = '/';
		if (r < 0 && errno != EEXIST)
			return -errno;
	}
	return 0;
}

/* Fetches url into f: spliced from the socket to the file when it is plain HTTP this can
 * read, else (and for a pinned key) through curl. cerr (CURL_ERROR_SIZE) gets curl's or the
 * splice's reason. Returns CURLE_OK or the failure. */
static CURLcode fetch_input(const char *url, const char *pin, struct fetch *f, char *cerr,
			    size_t errlen)
{
	CURL *c = curl_easy_init();
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, STAGING_CONNECT_MS);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, STAGING_LOW_SPEED_S);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, fetch_progress);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, f);
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 2L * 1024 * 1024);
	if (pin) {
		curl_easy_setopt(c, CURLOPT_PINNEDPUBLICKEY, pin);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	int sr = pin ? -EPROTONOSUPPORT : fetch_spliced(url, f, cerr, errlen);
	CURLcode cc = sr == 0 ? CURLE_OK : CURLE_RECV_ERROR;
	if (sr == -EPROTONOSUPPORT)
		cc = curl_easy_perform(c);
	curl_easy_cleanup(c);
	return cc;
}

int staging_handle_stage(const char *state_dir, const volatile bool *stopping, struct request *req,
			 struct response *resp)
{
	const char *id = req->params[0], *name = req->params[1];
	if (!id_is_valid(id) || !artifacts_name_is_valid(name)) {
		response_set_error(resp, 400, "not a task id and input name: %.200s/%.200s", id,
				   name);
		return 0;
	}
	json_t *doc = json_loadb(req->body, req->body_len, 0, NULL);
	const char *url = json_string_value(json_object_get(doc, "url"));
	const char *want = json_string_value(json_object_get(doc, "sha256"));
	json_t *jsize = json_object_get(doc, "size");
	const char *pin = json_string_value(json_object_get(doc, "pinned_key"));
	if (!url || !want || strlen(want) != DIGEST_HEX_LEN ||
	    (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) ||
	    (jsize && !json_is_integer(jsize))) {
		response_set_error(resp, 400,
				   "the body must be {\"url\": \"http(s)://...\", \"sha256\": HEX, "
				   "\"size\": N}");
		json_decref(doc);
		return 0;
	}
	_cleanup_free_ char *task = xasprintf("%s/tasks/%s", state_dir, id);
	size_t base = strlen(state_dir) + 1;
	struct stat tst;
	/* the task exists already (a dispatch sent again): it has its inputs */
	if (stat(task, &tst) == 0) {
		json_decref(doc);
		return response_set_json(resp, 200,
					 json_pack("{s:s, s:b}", "name", name, "started", true));
	}
	_cleanup_free_ char *path =
		xasprintf("%s/%s/%s/%s", state_dir, ARTIFACTS_STAGING, id, name);
	_cleanup_free_ char *part = xasprintf("%s.part", path);
	int r = make_parents(path, base);
	struct fetch f = {.fd = -1, .stopping = stopping};
	f.limit = jsize ? (uint64_t) json_integer_value(jsize) : 0;
	if (r == 0) {
		f.fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		r = f.fd < 0 ? -errno : 0;
	}
	if (r == 0 && (r = hasher_start(&f.h, part)) < 0) {
		close(f.fd);
		unlink(part);
	}
	if (r < 0) {
		response_set_error(resp, 500, "input %.200s: cannot write it: %s", name,
				   strerror(-r));
		json_decref(doc);
		return 0;
	}
	char cerr[CURL_ERROR_SIZE] = "";
	uint64_t t0 = clock_now_us();
	CURLcode cc = fetch_input(url, pin, &f, cerr, sizeof(cerr));
	char got[DIGEST_HEX_LEN + 1];
	int hr = hasher_finish(&f.h, got);
	/* not fsynced: the agent empties staging/ when it starts (staging_reset) */
	close(f.fd);
	if (cc == CURLE_OK && hr < 0)
		f.err = -hr;
	if (cc != CURLE_OK || hr < 0) {
		unlink(part);
		response_set_error(resp, 502, "input %.200s: the fetch failed: %s", name,
				   f.err     ? strerror(f.err)
				   : cerr[0] ? cerr
					     : curl_easy_strerror(cc));
	} else if (strcasecmp(got, want) || (f.limit && f.got != f.limit)) {
		unlink(part);
		response_set_error(
			resp, 409,
			"input %.200s: the digest is %s, not %s as its producer recorded", name,
			got, want);
	} else if (rename(part, path) < 0) {
		r = -errno;
		unlink(part);
		response_set_error(resp, 500, "input %.200s: %s", name, strerror(-r));
	} else {
		log_info("staged input %s for %s: %" PRIu64 " bytes in %.3f s", name, id, f.got,
			 (double) (clock_now_us() - t0) / 1e6);
		response_set_json(resp, 200,
				  json_pack("{s:s, s:I, s:s}", "name", name, "size",
					    (json_int_t) f.got, "sha256", got));
	}
	if (resp->status != 200)
		remove_empty_parents(path, strlen(state_dir) + 1 + strlen(ARTIFACTS_STAGING));
	json_decref(doc);
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	remove(path);
	return 0;
}

void staging_reset(const char *state_dir)
{
	_cleanup_free_ char *dir = xasprintf("%s/%s", state_dir, ARTIFACTS_STAGING);
	nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
