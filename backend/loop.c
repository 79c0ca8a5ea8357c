/* The backend thread: curl multi, timers, posted work and extra fds in one poll loop. */
#include "backend/loop.h"
#include "backend/util.h"

#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define LOOP_MAX_FDS     8
#define DEFAULT_MAX_BODY (1u << 20) /* an answer's size when the request names none */
#define LOW_SPEED_BYTES  64L        /* an answer slower than this per second... */
#define LOW_SPEED_MIN_S  1L         /* ...for half its deadline, at least this, is cut */

struct post {
	loop_fn fn;
	void *arg;
	struct post *next;
};

struct loop_timer {
	uint64_t due_us;
	loop_fn fn;
	void *arg;
	struct loop_timer *prev, *next; /* sorted by due_us */
};

struct loop_fd {
	int fd;
	loop_fn fn;
	void *arg;
};

struct xfer {
	CURL *easy;
	struct curl_slist *headers;
	char *req_body;
	int req_fd; /* > 0: the body is read from it (owned) */
	struct buf body;
	size_t max_body;
	bool too_big;
	void (*on_chunk)(const char *data, size_t len, void *arg);
	http_done_fn done;
	void *arg;
	char errbuf[CURL_ERROR_SIZE];
	struct xfer *prev, *next; /* in loop->xfers */
};

/* What an epoll event is about: the tag in the high bits of its data, the fd below. */
#define EV_CURL  (0ull << 32)
#define EV_WAKE  (1ull << 32)
#define EV_EXTRA (2ull << 32)

struct loop {
	CURLM *multi;
	int epfd;             /* curl's sockets, the wake eventfd and the extra fds */
	int wakefd;           /* an eventfd: loop_post and loop_stop wake the thread with it */
	uint64_t curl_due_us; /* when curl wants its timeout action; 0: no timer */
	pthread_t thread;
	bool started;
	atomic_bool running;  /* the thread runs: loop_start succeeded, loop_stop has not joined */
	bool stop;            /* protected by lock */
	atomic_bool stopping; /* no new transfers: loop_begin_stop or loop_stop was called */
	pthread_mutex_t lock;
	struct post *posts_head;          /* protected by lock */
	struct post *posts_tail;          /* protected by lock */
	struct loop_timer *timers;        /* loop thread only */
	struct loop_fd fds[LOOP_MAX_FDS]; /* loop thread only */
	size_t n_fds;
	struct xfer *xfers; /* loop thread only */
	size_t n_xfers;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

/* libcurl allocates through the x* wrappers too (DESIGN §2, "Out of memory"). */
static void curl_init_once(void)
{
	curl_global_init_mem(CURL_GLOBAL_ALL, xmalloc, free, xrealloc, xstrdup, xcalloc);
}

static int loop_on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct loop *l = userp;
	if (what == CURL_POLL_REMOVE) {
		epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
		curl_multi_assign(l->multi, fd, NULL);
		return 0;
	}
	struct epoll_event ev = {
		.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
			  ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u),
		.data.u64 = EV_CURL | (uint64_t) (unsigned) fd,
	};
	if (socketp) {
		epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev);
	} else {
		if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 && errno == EEXIST)
			epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev);
		curl_multi_assign(l->multi, fd, l);
	}
	return 0;
}

static int loop_on_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct loop *l = userp;
	l->curl_due_us = timeout_ms < 0 ? 0 : clock_now_us() + (uint64_t) timeout_ms * 1000u;
	if (timeout_ms == 0)
		l->curl_due_us = 1; /* now */
	return 0;
}

static void loop_wake(struct loop *l)
{
	uint64_t one = 1;
	ssize_t n = write(l->wakefd, &one, sizeof(one));
	(void) n; /* EAGAIN: the counter is full, so a wake-up is pending anyway */
}

int loop_new(struct loop **ret)
{
	pthread_once(&curl_once, curl_init_once);
	struct loop *l = xcalloc(1, sizeof(*l));
	l->multi = curl_multi_init();
	if (!l->multi) {
		free(l);
		return -ENOMEM;
	}
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EV_WAKE | (uint64_t) l->wakefd};
	if (l->epfd < 0 || l->wakefd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0) {
		int r = -errno;
		if (l->epfd >= 0)
			close(l->epfd);
		if (l->wakefd >= 0)
			close(l->wakefd);
		curl_multi_cleanup(l->multi);
		free(l);
		return r;
	}
	/* Keep connections to many agents alive between probe rounds. */
	curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, 1024L);
	/* socket_action: curl says which sockets to watch and when to time out, so an event
	 * costs work for its own transfer only, however many are in flight */
	curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, loop_on_socket);
	curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
	curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, loop_on_timer);
	curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l);
	pthread_mutex_init(&l->lock, NULL);
	*ret = l;
	return 0;
}

/* The loop the calling thread runs, set by loop_main before it runs anything. */
static _Thread_local const struct loop *loop_current;

bool loop_is_current(const struct loop *l)
{
	return loop_current == l || !atomic_load(&l->running);
}

void loop_post(struct loop *l, loop_fn fn, void *arg)
{
	struct post *p = xmalloc(sizeof(*p));
	p->fn = fn;
	p->arg = arg;
	p->next = NULL;
	pthread_mutex_lock(&l->lock);
	if (l->posts_tail)
		l->posts_tail->next = p;
	else
		l->posts_head = p;
	l->posts_tail = p;
	pthread_mutex_unlock(&l->lock);
	loop_wake(l);
}

struct loop_timer *loop_timer_add(struct loop *l, uint64_t due_us, loop_fn fn, void *arg)
{
	assert(loop_is_current(l));
	struct loop_timer *t = xcalloc(1, sizeof(*t));
	t->due_us = due_us;
	t->fn = fn;
	t->arg = arg;
	struct loop_timer **pp = &l->timers, *prev = NULL;
	while (*pp && (*pp)->due_us <= due_us) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	t->next = *pp;
	t->prev = prev;
	if (*pp)
		(*pp)->prev = t;
	*pp = t;
	return t;
}

static void timer_unlink(struct loop *l, struct loop_timer *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		l->timers = t->next;
	if (t->next)
		t->next->prev = t->prev;
}

void loop_timer_cancel(struct loop *l, struct loop_timer *t)
{
	assert(loop_is_current(l));
	if (!t)
		return;
	timer_unlink(l, t);
	free(t);
}

int loop_fd_add(struct loop *l, int fd, loop_fn fn, void *arg)
{
	assert(loop_is_current(l));
	if (l->n_fds >= LOOP_MAX_FDS)
		return -ENOSPC;
	struct epoll_event ev = {.events = EPOLLIN,
				 .data.u64 = EV_EXTRA | (uint64_t) (unsigned) fd};
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	l->fds[l->n_fds++] = (struct loop_fd){.fd = fd, .fn = fn, .arg = arg};
	return 0;
}

void loop_fd_remove(struct loop *l, int fd)
{
	assert(loop_is_current(l));
	for (size_t i = 0; i < l->n_fds; i++) {
		if (l->fds[i].fd == fd) {
			epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
			l->fds[i] = l->fds[--l->n_fds];
			return;
		}
	}
}

int http_error_to_errno(int curl_code, long status)
{
	switch ((CURLcode) curl_code) {
	case CURLE_OK: break;
	case CURLE_OPERATION_TIMEDOUT: return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY: return -EHOSTUNREACH;
	case CURLE_COULDNT_CONNECT: return -ECONNREFUSED;
	case CURLE_GOT_NOTHING:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR: return -ECONNRESET;
	case CURLE_OUT_OF_MEMORY: return -ENOMEM;
	case CURLE_WRITE_ERROR: return -EFBIG;
	case CURLE_URL_MALFORMAT: return -EINVAL;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION: /* also CURLE_SSL_CACERT */
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_UNSUPPORTED_PROTOCOL: return -EPROTO;
	default: return -EIO;
	}
	if (status >= 200 && status < 300)
		return 0;
	switch (status) {
	case 400:
	case 422: return -EINVAL;
	case 401:
	case 403: return -EACCES;
	case 404: return -ENOENT;
	case 405: return -EOPNOTSUPP;
	case 409: return -EEXIST;
	case 413: return -EFBIG;
	case 429: return -EBUSY;
	case 503: return -EAGAIN;
	case 504: return -ETIMEDOUT;
	default: return -EIO;
	}
}

void http_error_describe(int curl_code, const char *detail, struct buf *out)
{
	const char *what = detail && detail[0] ? detail : curl_easy_strerror((CURLcode) curl_code);
	switch ((CURLcode) curl_code) {
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		buf_puts(out, "certificate does not match the pinned fingerprint");
		break;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_INVALIDCERTSTATUS:
		buf_printf(out, "certificate verification failed: %s", what);
		break;
	case CURLE_SSL_CONNECT_ERROR: buf_printf(out, "TLS handshake failed: %s", what); break;
	default: buf_puts(out, what);
	}
}

/* A refused exchange: its completion runs from the loop's queue, never inside loop_http. */
struct refusal {
	http_done_fn done;
	void *arg;
	char *why;
};

static void refusal_run(void *arg)
{
	struct refusal *rf = arg;
	struct http_response resp = {
		.error = -EPROTO, .body = "", .error_text = rf->why, .insecure = true};
	rf->done(rf->arg, &resp);
	free(rf->why);
	free(rf);
}

static int loop_refuse(struct loop *l, const char *why, http_done_fn done, void *arg)
{
	struct refusal *rf = xcalloc(1, sizeof(*rf));
	rf->done = done;
	rf->arg = arg;
	rf->why = xstrdup(why);
	loop_post(l, refusal_run, rf);
	return 0;
}

/* https: verify by the pinned key, or by the CA chain and the host name; TLS 1.2 or later. */
static void xfer_set_tls(CURL *e, const struct http_tls *tls)
{
	curl_easy_setopt(e, CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
	if (tls->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, tls->ca_file);
	if (tls->pinned_key) {
		curl_easy_setopt(e, CURLOPT_PINNEDPUBLICKEY, tls->pinned_key);
		if (!tls->ca_file) {
			/* a self-signed certificate has no CA: the pin alone verifies it */
			curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
			curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
			return;
		}
	}
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
}

static size_t xfer_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct xfer *x = userdata;
	size_t n = size * nmemb;
	if (x->on_chunk) {
		x->on_chunk(ptr, n, x->arg);
		return n;
	}
	if (x->body.len + n > x->max_body) {
		x->too_big = true;
		return 0; /* aborts with CURLE_WRITE_ERROR */
	}
	buf_append(&x->body, ptr, n);
	return n;
}

static size_t xfer_read(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct xfer *x = userdata;
	for (;;) {
		ssize_t n = read(x->req_fd, ptr, size * nmemb);
		if (n >= 0)
			return (size_t) n;
		if (errno != EINTR)
			return CURL_READFUNC_ABORT;
	}
}

static void xfer_free(struct xfer *x)
{
	if (x->easy)
		curl_easy_cleanup(x->easy);
	curl_slist_free_all(x->headers);
	free(x->req_body);
	if (x->req_fd > 0)
		close(x->req_fd);
	buf_free(&x->body);
	free(x);
}

static void xfer_unlink(struct loop *l, struct xfer *x)
{
	if (x->prev)
		x->prev->next = x->next;
	else
		l->xfers = x->next;
	if (x->next)
		x->next->prev = x->prev;
	l->n_xfers--;
}

/* The transfer's URL, protocols, TLS, deadlines and callbacks. */
static void xfer_set_options(struct xfer *x, const struct http_request *req)
{
	CURL *e = x->easy;
	curl_easy_setopt(e, CURLOPT_URL, req->url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, req->tls ? "https" : "http");
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, req->tls ? "https" : "http");
	if (req->tls)
		xfer_set_tls(e, req->tls);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
			 req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 2000L);
	long timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : 5000L;
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
	if (!req->on_chunk) {
		/* a dribble keeps no socket busy for more than half its deadline (streams
		 * may idle, so they are left out) */
		long slow_s =
			timeout_ms / 2000 > LOW_SPEED_MIN_S ? timeout_ms / 2000 : LOW_SPEED_MIN_S;
		curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, LOW_SPEED_BYTES);
		curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, slow_s);
	}
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, xfer_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "clusterfs/" CLUSTERFS_VERSION);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
}

/* The request headers every transfer sends, the bearer token and the caller's own. */
static void xfer_add_headers(struct xfer *x, const struct http_request *req)
{
	x->headers = curl_slist_append(x->headers, "Accept: application/json");
	if (req->token) {
		struct buf h;
		buf_init(&h);
		buf_printf(&h, "Authorization: Bearer %s", req->token);
		x->headers = curl_slist_append(x->headers, h.data);
		/* the header holds the secret: wipe our copy */
		explicit_bzero(h.data, h.len);
		buf_free(&h);
	}
	for (size_t i = 0; req->headers && req->headers[i]; i++)
		x->headers = curl_slist_append(x->headers, req->headers[i]);
}

/* The method and the body (from memory or from req->body_fd), and the header list. */
static void xfer_set_body(struct xfer *x, const struct http_request *req)
{
	CURL *e = x->easy;
	bool post = req->method && strcmp(req->method, "POST") == 0;
	if (post || req->body) {
		/* a body: POST, or another method that carries one (Ollama's DELETE does) */
		struct buf h;
		buf_init(&h);
		buf_printf(&h, "Content-Type: %s",
			   req->content_type ? req->content_type : "application/json");
		x->headers = curl_slist_append(x->headers, h.data);
		buf_free(&h);
		x->headers = curl_slist_append(x->headers, "Expect:");
		x->req_body = xmalloc(req->body_len + 1);
		if (req->body_len)
			memcpy(x->req_body, req->body, req->body_len);
		x->req_body[req->body_len] = '\0';
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->req_body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
	}
	if (x->req_fd > 0) {
		x->headers =
			curl_slist_append(x->headers, "Content-Type: application/octet-stream");
		x->headers = curl_slist_append(x->headers, "Expect:");
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, xfer_read);
		curl_easy_setopt(e, CURLOPT_READDATA, x);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t) req->body_fd_size);
	}
	if (req->method && !post && strcmp(req->method, "GET") != 0 &&
	    !(x->req_fd > 0 && !strcmp(req->method, "PUT")))
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
}

int loop_http(struct loop *l, const struct http_request *req, http_done_fn done, void *arg)
{
	assert(loop_is_current(l));
	/* a completion callback run by loop_stop must not start what nobody will finish */
	int req_fd = req->body_fd;
	if (atomic_load(&l->stopping) || req->refused ||
	    (!req->tls && strncmp(req->url, "http://", 7) != 0)) {
		if (req_fd > 0)
			close(req_fd);
		if (atomic_load(&l->stopping))
			return -ECANCELED;
		if (req->refused)
			return loop_refuse(l, req->refused, done, arg);
		return loop_refuse(l, "only http:// URLs go without TLS settings", done, arg);
	}
	struct xfer *x = xcalloc(1, sizeof(*x));
	x->req_fd = req_fd;
	buf_init(&x->body);
	x->done = done;
	x->arg = arg;
	x->on_chunk = req->on_chunk;
	x->max_body = req->max_body ? req->max_body : DEFAULT_MAX_BODY;
	x->easy = curl_easy_init();
	if (!x->easy)
		goto err_free_xfer;

	xfer_set_options(x, req);
	xfer_add_headers(x, req);
	xfer_set_body(x, req);

	if (curl_multi_add_handle(l->multi, x->easy) != CURLM_OK)
		goto err_free_xfer;
	x->next = l->xfers;
	if (l->xfers)
		l->xfers->prev = x;
	l->xfers = x;
	l->n_xfers++;
	return 0;

err_free_xfer:
	xfer_free(x);
	return -ENOMEM;
}

size_t loop_http_active(const struct loop *l)
{
	assert(loop_is_current(l));
	return l->n_xfers;
}

/* Builds the response of a finished transfer and calls its callback once. */
static void xfer_finish(struct loop *l, struct xfer *x, CURLcode code)
{
	struct http_response resp = {0};
	long status = 0;
	double total = 0;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &total);
	resp.status = status;
	resp.elapsed_ms = total * 1000.0;
	resp.body = x->body.data ? x->body.data : "";
	resp.body_len = x->body.len;
	if (x->too_big)
		code = CURLE_WRITE_ERROR;
	/* every reader of a collected answer parses JSON: refuse absurd nesting once, here */
	bool too_deep = code == CURLE_OK && !x->on_chunk &&
			util_json_depth(resp.body, resp.body_len, JSON_MAX_DEPTH) > JSON_MAX_DEPTH;
	bool too_many =
		code == CURLE_OK && !x->on_chunk && !too_deep &&
		util_json_values(resp.body, resp.body_len, JSON_MAX_VALUES) > JSON_MAX_VALUES;
	resp.error = http_error_to_errno(code, status);
	resp.insecure = code == CURLE_SSL_PINNEDPUBKEYNOTMATCH ||
			code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CACERT_BADFILE;
	if (code == CURLE_ABORTED_BY_CALLBACK)
		resp.error = -ECANCELED;
	if (too_deep || too_many) {
		resp.error = -EBADMSG;
		resp.body = "";
		resp.body_len = 0;
	}
	if (code == CURLE_COULDNT_CONNECT) {
		long oserr = 0;
		curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &oserr);
		if (oserr == EHOSTUNREACH || oserr == ENETUNREACH || oserr == EHOSTDOWN)
			resp.error = -EHOSTUNREACH;
	}
	struct buf why;
	buf_init(&why);
	if (code == CURLE_ABORTED_BY_CALLBACK)
		buf_puts(&why, "cancelled");
	else if (x->too_big)
		buf_printf(&why, "answer larger than %zu bytes", x->max_body);
	else if (too_deep)
		buf_printf(&why, "answer nested deeper than %d levels", JSON_MAX_DEPTH);
	else if (too_many)
		buf_printf(&why, "answer holding more than %d values", JSON_MAX_VALUES);
	else if (code == CURLE_OPERATION_TIMEDOUT && strstr(x->errbuf, "too slow"))
		buf_printf(&why, "answer slower than %ld bytes/s", LOW_SPEED_BYTES);
	else if (code != CURLE_OK)
		http_error_describe(code, x->errbuf, &why);
	else if (resp.error)
		buf_printf(&why, "HTTP %ld", status);
	resp.error_text = why.data ? why.data : "";

	xfer_unlink(l, x);
	curl_multi_remove_handle(l->multi, x->easy);
	x->done(x->arg, &resp);
	buf_free(&why);
	xfer_free(x);
}

int loop_http_abort(struct loop *l, http_done_fn done, void *arg)
{
	assert(loop_is_current(l));
	for (struct xfer *x = l->xfers; x; x = x->next) {
		if (x->done == done && x->arg == arg) {
			/* removing a transfer mid-way closes its connection: the server sees it */
			xfer_finish(l, x, CURLE_ABORTED_BY_CALLBACK);
			return 0;
		}
	}
	return -ENOENT;
}

static void loop_run_posts(struct loop *l)
{
	pthread_mutex_lock(&l->lock);
	struct post *p = l->posts_head;
	l->posts_head = l->posts_tail = NULL;
	pthread_mutex_unlock(&l->lock);
	while (p) {
		struct post *next = p->next;
		p->fn(p->arg);
		free(p);
		p = next;
	}
}

static void loop_run_timers(struct loop *l)
{
	uint64_t now = clock_now_us();
	while (l->timers && l->timers->due_us <= now) {
		struct loop_timer *t = l->timers;
		timer_unlink(l, t);
		loop_fn fn = t->fn;
		void *arg = t->arg;
		free(t);
		fn(arg);
	}
}

static void loop_finish_transfers(struct loop *l)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(l->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct xfer *x = NULL;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &x);
		xfer_finish(l, x, msg->data.result);
	}
}

static void *loop_main(void *arg)
{
	struct loop *l = arg;
	loop_current = l;
	struct epoll_event evs[64];
	for (;;) {
		pthread_mutex_lock(&l->lock);
		bool stop = l->stop;
		pthread_mutex_unlock(&l->lock);
		if (stop)
			break;

		uint64_t now = clock_now_us();
		long wait_ms = 1000;
		if (l->curl_due_us) {
			long c = l->curl_due_us <= now
					 ? 0
					 : (long) ((l->curl_due_us - now + 999) / 1000);
			if (c < wait_ms)
				wait_ms = c;
		}
		if (l->timers) {
			long t = l->timers->due_us <= now
					 ? 0
					 : (long) ((l->timers->due_us - now + 999) / 1000);
			if (t < wait_ms)
				wait_ms = t;
		}
		int n = epoll_wait(l->epfd, evs, 64, (int) wait_ms);
		int extra_ready[LOOP_MAX_FDS];
		size_t n_extra = 0;
		int running = 0;
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64 & ~0xffffffffull;
			int fd = (int) (evs[i].data.u64 & 0xffffffffull);
			if (tag == EV_WAKE) {
				uint64_t v;
				ssize_t r = read(l->wakefd, &v, sizeof(v));
				(void) r;
			} else if (tag == EV_EXTRA) {
				if (n_extra < LOOP_MAX_FDS)
					extra_ready[n_extra++] = fd;
			} else {
				int mask = 0;
				if (evs[i].events & EPOLLIN)
					mask |= CURL_CSELECT_IN;
				if (evs[i].events & EPOLLOUT)
					mask |= CURL_CSELECT_OUT;
				if (evs[i].events & (EPOLLERR | EPOLLHUP))
					mask |= CURL_CSELECT_ERR;
				curl_multi_socket_action(l->multi, fd, mask, &running);
			}
		}
		if (l->curl_due_us && l->curl_due_us <= clock_now_us()) {
			l->curl_due_us = 0;
			curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
		}
		loop_finish_transfers(l);

		loop_run_posts(l);
		loop_run_timers(l);
		for (size_t i = 0; i < n_extra; i++) {
			/* find it again: a callback may have removed fds */
			for (size_t j = 0; j < l->n_fds; j++) {
				if (l->fds[j].fd == extra_ready[i]) {
					l->fds[j].fn(l->fds[j].arg);
					break;
				}
			}
		}
	}
	return NULL;
}

int loop_start(struct loop *l)
{
	atomic_store(&l->running, true);
	int r = pthread_create(&l->thread, NULL, loop_main, l);
	if (r != 0) {
		atomic_store(&l->running, false);
		return -r;
	}
	l->started = true;
	return 0;
}

void loop_begin_stop(struct loop *l)
{
	atomic_store(&l->stopping, true);
}

void loop_stop(struct loop *l)
{
	atomic_store(&l->stopping, true);
	if (!l->started)
		return;
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_mutex_unlock(&l->lock);
	loop_wake(l);
	pthread_join(l->thread, NULL);
	atomic_store(&l->running, false);
	l->started = false;
	while (l->xfers)
		xfer_finish(l, l->xfers, CURLE_ABORTED_BY_CALLBACK);
	loop_run_posts(l);
}

void loop_free(struct loop *l)
{
	if (!l)
		return;
	loop_stop(l);
	while (l->timers)
		loop_timer_cancel(l, l->timers);
	/* a loop that never ran still holds what was posted to it: dropped, not run */
	while (l->posts_head) {
		struct post *next = l->posts_head->next;
		free(l->posts_head);
		l->posts_head = next;
	}
	curl_multi_cleanup(l->multi);
	close(l->epfd);
	close(l->wakefd);
	pthread_mutex_destroy(&l->lock);
	free(l);
}
