/* The agent's HTTP server on libmicrohttpd. */
#include "httpd/server.h"
#include "httpd/server_internal.h"

#include "backend/digest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define SERVER_THREADS 2
/* Idle and half-sent requests cannot lock clients out: a connection idle for
 * SERVER_TIMEOUT_S is closed (authenticated ones keep SERVER_AUTH_TIMEOUT_S for
 * keep-alive), and one address takes at most half of the connections. */
#define SERVER_CONNECTION_LIMIT  1024
#define SERVER_PER_IP_LIMIT      512
#define SERVER_TIMEOUT_S         5
#define SERVER_AUTH_TIMEOUT_S    30
#define SERVER_CONNECTION_MEMORY (64 * 1024)
/* An oversized body sent without Content-Length is read and dropped up to this much so
 * the client can get its 413; past it the connection is closed. */
#define SERVER_MAX_DISCARD (8 * 1024 * 1024)
/* TLS 1.2 and 1.3 only, GnuTLS's defaults otherwise. */
#define SERVER_TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

struct request_state;

struct server {
	struct MHD_Daemon *daemon;
	const char *token; /* borrowed, immutable */
	bool (*authorize)(void *userdata, const char *path, const char *bearer);
	unsigned auth_timeout_s;    /* idle limit of an authorised connection */
	const struct route *routes; /* borrowed, immutable */
	size_t n_routes;
	const struct upload_route *uploads; /* borrowed, immutable */
	size_t n_uploads;
	void *userdata;
	/* deferred requests (long polls), suspended until woken or their deadline */
	pthread_mutex_t park_lock;
	pthread_cond_t park_cond;     /* the timer thread waits on it */
	struct request_state *parked; /* protected by park_lock */
	bool stopping;                /* protected by park_lock */
	pthread_t timer;
	bool timer_started;
};

/* Per-request state, owned by libmicrohttpd's con_cls slot; one thread at a time
 * (the park fields: under server->park_lock). */
struct request_state {
	struct buf body;
	size_t discarded; /* bytes dropped after the body grew past SERVER_MAX_BODY */
	bool too_large;
	bool responded; /* answered before the body was read */
	bool deferred;  /* handled once and suspended: run the handler again when resumed */
	bool expired;   /* resumed by its deadline */
	uint64_t deadline_us;
	struct MHD_Connection *conn;
	struct request_state *pnext, *pprev; /* in server->parked */
	bool parked;                         /* in server->parked; protected by park_lock */
	bool wake_pending;   /* woken before it parked: run again at once; park_lock */
	void *handler_state; /* struct request's state and state_free */
	void (*handler_state_free)(void *state);
	const struct upload_route *upload; /* whose upload() takes the body, or NULL */
	bool upload_failed;                /* upload() refused a piece: the rest is dropped */
};

const char *request_get_header(const struct request *req, const char *name)
{
	return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

static enum MHD_Result query_append(void *cls, enum MHD_ValueKind kind, const char *key,
				    const char *value)
{
	struct buf *out = cls;
	static const char hex[] = "0123456789ABCDEF";
	const char *parts[2] = {key, value};
	if (out->len && out->data[out->len - 1] != '?')
		buf_puts(out, "&");
	for (int i = 0; i < 2 && parts[i]; i++) {
		if (i)
			buf_puts(out, "=");
		for (const unsigned char *p = (const unsigned char *) parts[i]; *p; p++) {
			if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			    (*p >= '0' && *p <= '9') || strchr("-._~", *p)) {
				buf_append(out, (const char *) p, 1);
			} else {
				char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
				buf_append(out, e, 3);
			}
		}
	}
	return MHD_YES;
}

void request_get_query_string(const struct request *req, struct buf *out)
{
	size_t start = out->len;
	MHD_get_connection_values(req->connection, MHD_GET_ARGUMENT_KIND, query_append, out);
	(void) start;
}

const char *request_get_query(const struct request *req, const char *name)
{
	return MHD_lookup_connection_value(req->connection, MHD_GET_ARGUMENT_KIND, name);
}

int request_peer_address(const struct request *req, char *out, size_t outlen)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(req->connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (!ci || !ci->client_addr)
		return -ENOTCONN;
	const struct sockaddr *sa = ci->client_addr;
	const void *raw = NULL;
	if (sa->sa_family == AF_INET)
		raw = &((const struct sockaddr_in *) (const void *) sa)->sin_addr;
	else if (sa->sa_family == AF_INET6)
		raw = &((const struct sockaddr_in6 *) (const void *) sa)->sin6_addr;
	if (!raw || !inet_ntop(sa->sa_family, raw, out, (socklen_t) outlen))
		return -EAFNOSUPPORT;
	/* an IPv4 client of a dual-stack socket: show it as IPv4 */
	if (strncmp(out, "::ffff:", 7) == 0 && strchr(out + 7, '.'))
		memmove(out, out + 7, strlen(out + 7) + 1);
	return 0;
}

static void response_init(struct response *resp)
{
	memset(resp, 0, sizeof(*resp));
	buf_init(&resp->body);
}

static void response_free(struct response *resp)
{
	buf_free(&resp->body);
	if (resp->file_fd > 0)
		close(resp->file_fd);
	resp->file_fd = 0;
	for (size_t i = 0; i < resp->n_headers; i++) {
		free(resp->headers[i][0]);
		free(resp->headers[i][1]);
	}
	resp->n_headers = 0;
}

int response_add_header(struct response *resp, const char *name, const char *value)
{
	if (resp->n_headers == RESPONSE_MAX_HEADERS)
		return -E2BIG;
	resp->headers[resp->n_headers][0] = xstrdup(name);
	resp->headers[resp->n_headers][1] = xstrdup(value);
	resp->n_headers++;
	return 0;
}

int response_set_json(struct response *resp, unsigned status, json_t *value)
{
	char *text = value ? json_dumps(value, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
	json_decref(value);
	if (!text)
		return -ENOMEM;
	buf_free(&resp->body);
	buf_puts(&resp->body, text);
	buf_puts(&resp->body, "\n");
	free(text);
	resp->content_type = NULL;
	resp->status = status;
	return 0;
}

void response_set_error(struct response *resp, unsigned status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Messages may quote client input; keep the JSON valid ASCII. */
	for (char *p = msg; *p; p++)
		if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
			*p = '?';
	if (response_set_json(resp, status, json_pack("{s:s}", "error", msg)) < 0) {
		buf_free(&resp->body);
		buf_puts(&resp->body, "{\"error\":\"out of memory\"}\n");
		resp->status = status;
	}
}

/* Queues `resp` on the connection; consumes the body. */
static enum MHD_Result server_queue(struct MHD_Connection *conn, struct response *resp)
{
	size_t len;
	struct MHD_Response *r;
	if (resp->file_fd > 0) {
		r = MHD_create_response_from_fd64(resp->file_size, resp->file_fd);
		if (!r)
			return MHD_NO;
		resp->file_fd = 0; /* libmicrohttpd closes it */
	} else {
		char *data = buf_steal(&resp->body, &len);
		r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
		if (!r) {
			free(data);
			return MHD_NO;
		}
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				resp->content_type ? resp->content_type : "application/json");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	for (size_t i = 0; i < resp->n_headers; i++)
		MHD_add_response_header(r, resp->headers[i][0], resp->headers[i][1]);
	enum MHD_Result ret = MHD_queue_response(conn, resp->status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result server_reply_error(struct MHD_Connection *conn, unsigned status,
					  const char *header, const char *value,
					  const char *message)
{
	struct response resp;
	response_init(&resp);
	response_set_error(&resp, status, "%s", message);
	if (header)
		response_add_header(&resp, header, value);
	enum MHD_Result ret = server_queue(conn, &resp);
	response_free(&resp);
	return ret;
}

static enum MHD_Result server_reply_unauthorized(struct MHD_Connection *conn)
{
	return server_reply_error(conn, MHD_HTTP_UNAUTHORIZED, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
				  "Bearer", "unauthorized: missing or invalid bearer token");
}

static enum MHD_Result server_reply_too_large(struct MHD_Connection *conn)
{
	char msg[96];
	snprintf(msg, sizeof(msg), "request body too large: the limit is %d bytes",
		 SERVER_MAX_BODY);
	return server_reply_error(conn, 413 /* Content Too Large */, NULL, NULL, msg);
}

#define SERVER_SIGNED_MAX_S (24 * 3600) /* a signed URL is good for a day at most */

/* A GET's ?expires=T&sig=S, signed with the token (server.h). */
static bool server_is_signed(const struct server *srv, struct MHD_Connection *conn,
			     const char *path)
{
	const char *sig = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "sig");
	const char *exp = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "expires");
	if (!srv->token || srv->authorize || !sig || !exp)
		return false;
	char *end;
	errno = 0;
	unsigned long long t = strtoull(exp, &end, 10);
	uint64_t now = (uint64_t) time(NULL);
	if (errno || *end || end == exp || t < now || t > now + SERVER_SIGNED_MAX_S)
		return false;
	char want[DIGEST_HEX_LEN + 1];
	digest_sign_path(srv->token, path, t, want);
	return secret_equal(sig, want);
}

/* Checks "Authorization: Bearer TOKEN" in constant time with respect to the token, or a
 * GET's signature. */
static bool server_is_authorized(const struct server *srv, struct MHD_Connection *conn,
				 const char *method, const char *path)
{
	const char *h =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h || strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
		h = NULL;
	else
		h += 6;
	while (h && (*h == ' ' || *h == '\t'))
		h++;
	if (srv->authorize)
		return srv->authorize(srv->userdata, path, h);
	if (!h && !strcmp(method, "GET"))
		return server_is_signed(srv, conn, path);
	return h && secret_equal(h, srv->token);
}

/* Matches one route's pattern against a path (fs/tree.c's rows match alike). */
static bool route_match(const char *pattern, const char *path, struct path_capture *caps,
			size_t *ret_n)
{
	return util_path_match(pattern, path, NULL, NULL, caps, SERVER_MAX_PARAMS, ret_n);
}

int server_match_route(const struct route *routes, size_t n_routes, const char *method,
		       const char *path, size_t *ret_params)
{
	struct path_capture caps[SERVER_MAX_PARAMS];
	for (size_t i = 0; i < n_routes; i++) {
		size_t n;
		if (route_match(routes[i].pattern, path, caps, &n) &&
		    strcmp(routes[i].method, method) == 0) {
			*ret_params = n;
			return (int) i;
		}
	}
	return -ENOENT;
}

/* Runs the handler of the route matching method and path, or answers 404/405. */
enum park_result { PARKED, PARK_STOPPING, PARK_WOKEN };

/* Suspends a request whose handler deferred its answer. PARK_STOPPING when the server
 * stops (then it is answered now), PARK_WOKEN when server_wake_request() came first (then
 * the handler runs again now). Handler thread. */
static enum park_result server_park(struct server *srv, struct request_state *st,
				    uint64_t deadline_us)
{
	pthread_mutex_lock(&srv->park_lock);
	if (srv->stopping) {
		pthread_mutex_unlock(&srv->park_lock);
		return PARK_STOPPING;
	}
	if (st->wake_pending) {
		st->wake_pending = false;
		pthread_mutex_unlock(&srv->park_lock);
		return PARK_WOKEN;
	}
	st->deferred = true;
	st->parked = true;
	st->expired = false;
	st->deadline_us = deadline_us;
	st->pprev = NULL;
	st->pnext = srv->parked;
	if (srv->parked)
		srv->parked->pprev = st;
	srv->parked = st;
	/* under the lock, so that no waker resumes it before it is suspended */
	MHD_suspend_connection(st->conn);
	pthread_cond_signal(&srv->park_cond);
	pthread_mutex_unlock(&srv->park_lock);
	return PARKED;
}

/* Resumes a parked request. park_lock held. */
static void server_unpark_locked(struct server *srv, struct request_state *st, bool expired)
{
	assert_held(&srv->park_lock);
	if (st->pprev)
		st->pprev->pnext = st->pnext;
	else
		srv->parked = st->pnext;
	if (st->pnext)
		st->pnext->pprev = st->pprev;
	st->pnext = st->pprev = NULL;
	st->parked = false;
	st->expired = expired;
	MHD_resume_connection(st->conn);
}

void server_wake_request(struct server *srv, void *handle)
{
	struct request_state *st = handle;
	pthread_mutex_lock(&srv->park_lock);
	if (st && st->parked)
		server_unpark_locked(srv, st, false);
	else if (st)
		st->wake_pending = true; /* its handler is running: it parks, or runs again */
	pthread_mutex_unlock(&srv->park_lock);
}

void server_wake(struct server *srv)
{
	pthread_mutex_lock(&srv->park_lock);
	while (srv->parked)
		server_unpark_locked(srv, srv->parked, false);
	pthread_mutex_unlock(&srv->park_lock);
}

/* Resumes parked requests at their deadlines (and all of them when stopping). */
static void *server_timer_main(void *arg)
{
	struct server *srv = arg;
	pthread_mutex_lock(&srv->park_lock);
	while (!srv->stopping) {
		uint64_t now = clock_now_us(), next = 0;
		for (struct request_state *st = srv->parked, *nx; st; st = nx) {
			nx = st->pnext;
			if (st->deadline_us <= now)
				server_unpark_locked(srv, st, true);
			else if (!next || st->deadline_us < next)
				next = st->deadline_us;
		}
		if (!next) {
			pthread_cond_wait(&srv->park_cond, &srv->park_lock);
			continue;
		}
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t wait_us = next - now;
		ts.tv_sec += (time_t) (wait_us / 1000000u);
		ts.tv_nsec += (long) (wait_us % 1000000u) * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&srv->park_cond, &srv->park_lock, &ts);
	}
	while (srv->parked)
		server_unpark_locked(srv, srv->parked, true);
	pthread_mutex_unlock(&srv->park_lock);
	return NULL;
}

static enum MHD_Result server_dispatch(struct server *srv, struct MHD_Connection *conn,
				       const char *method, const char *path,
				       struct request_state *st)
{
	const struct route *found = NULL;
	struct path_capture caps[SERVER_MAX_PARAMS];
	size_t n_caps = 0;
	struct buf allow;
	struct response resp;
	enum MHD_Result ret;

	buf_init(&allow);
	for (size_t i = 0; i < srv->n_routes; i++) {
		const struct route *rt = &srv->routes[i];
		size_t n;
		if (!route_match(rt->pattern, path, caps, &n))
			continue;
		if (strcmp(rt->method, method) == 0) {
			found = rt;
			n_caps = n;
			break;
		}
		if (!allow.data || !strstr(allow.data, rt->method))
			buf_printf(&allow, "%s%s", allow.len ? ", " : "", rt->method);
	}

	response_init(&resp);
	if (!found && allow.len) {
		response_set_error(&resp, MHD_HTTP_METHOD_NOT_ALLOWED,
				   "method %.16s not allowed on %.200s", method, path);
		response_add_header(&resp, MHD_HTTP_HEADER_ALLOW, allow.data);
	} else if (!found) {
		response_set_error(&resp, MHD_HTTP_NOT_FOUND, "no such endpoint: %.200s", path);
	} else {
		char *scratch = xstrdup(path);
		struct request req = {
			.method = method,
			.path = path,
			.body = st->body.data ? st->body.data : "",
			.body_len = st->body.len,
			.n_params = n_caps,
			.userdata = srv->userdata,
			.expired = st->expired,
			.connection = conn,
			.state = st->handler_state,
			.state_free = st->handler_state_free,
			.handle = st,
		};
		for (size_t i = 0; i < n_caps; i++) {
			scratch[caps[i].off + caps[i].len] = '\0';
			req.params[i] = scratch + caps[i].off;
		}
		int r = found->handler(&req, &resp);
		st->handler_state = req.state;
		st->handler_state_free = req.state_free;
		free(scratch);
		if (r == 0 && resp.status == 0 && resp.defer_until_us && !st->expired) {
			response_free(&resp);
			enum park_result pk = server_park(srv, st, resp.defer_until_us);
			buf_free(&allow);
			if (pk == PARKED)
				return MHD_YES;
			/* stopping: the handler answers with what it has; woken: it looks again */
			if (pk == PARK_STOPPING)
				st->expired = true;
			return server_dispatch(srv, conn, method, path, st);
		}
		if (r < 0 || resp.status == 0) {
			log_err("%s %s: %s", method, path,
				r < 0 ? strerror(-r) : "handler set no response");
			response_free(&resp);
			response_init(&resp);
			response_set_error(&resp, MHD_HTTP_INTERNAL_SERVER_ERROR,
					   "internal error: %s",
					   r < 0 ? strerror(-r) : "no response");
		}
	}
	ret = server_queue(conn, &resp);
	response_free(&resp);
	buf_free(&allow);
	return ret;
}

/* Whether the request announces a body: a positive Content-Length or any
 * Transfer-Encoding (chunked). Sets *ret_length to the announced length, or 0. */
static bool request_has_body(struct MHD_Connection *conn, unsigned long long *ret_length)
{
	const char *cl =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_TRANSFER_ENCODING);
	*ret_length = 0;
	if (cl) {
		errno = 0;
		*ret_length = strtoull(cl, NULL, 10);
		if (errno)
			*ret_length = ULLONG_MAX;
	}
	return *ret_length > 0 || te != NULL;
}

/* The upload route that takes a body for method and path, or NULL. */
static const struct upload_route *server_find_upload(const struct server *srv, const char *method,
						     const char *path)
{
	struct path_capture caps[SERVER_MAX_PARAMS];
	size_t n;
	for (size_t i = 0; i < srv->n_uploads; i++) {
		const struct upload_route *u = &srv->uploads[i];
		if (!strcmp(u->method, method) && route_match(u->pattern, path, caps, &n))
			return u;
	}
	return NULL;
}

/* Hands one piece of the body to the route's upload(). */
static void server_upload(struct server *srv, struct MHD_Connection *conn, const char *method,
			  const char *path, struct request_state *st, const char *data, size_t len)
{
	struct path_capture caps[SERVER_MAX_PARAMS];
	size_t n = 0;
	char *scratch = xstrdup(path);
	if (!route_match(st->upload->pattern, path, caps, &n)) {
		free(scratch);
		st->upload_failed = true;
		return;
	}
	struct request req = {
		.method = method,
		.path = path,
		.body = "",
		.n_params = n,
		.userdata = srv->userdata,
		.connection = conn,
		.state = st->handler_state,
		.state_free = st->handler_state_free,
		.handle = st,
	};
	for (size_t i = 0; i < n; i++) {
		scratch[caps[i].off + caps[i].len] = '\0';
		req.params[i] = scratch + caps[i].off;
	}
	if (st->upload->upload(&req, data, len) < 0)
		st->upload_failed = true;
	st->handler_state = req.state;
	st->handler_state_free = req.state_free;
	free(scratch);
}

/* libmicrohttpd's access handler: called once when the headers are in, once per chunk of
 * body, and once more when the request is complete. */
static enum MHD_Result server_handle(void *cls, struct MHD_Connection *conn, const char *url,
				     const char *method, const char *version,
				     const char *upload_data, size_t *upload_data_size,
				     void **con_cls)
{
	struct server *srv = cls;
	struct request_state *st = *con_cls;

	if (!st) {
		log_debug("request %s %s", method, url);
		st = xcalloc(1, sizeof(*st));
		buf_init(&st->body);
		*con_cls = st;
		/* Refuse an unauthenticated or oversized body before reading it. Answering
		 * this early makes libmicrohttpd close the connection afterwards, so
		 * bodyless requests are answered in the final call instead, which keeps
		 * the connection alive. */
		unsigned long long length;
		if (request_has_body(conn, &length)) {
			if (!server_is_authorized(srv, conn, method, url)) {
				st->responded = true;
				return server_reply_unauthorized(conn);
			}
			st->upload = server_find_upload(srv, method, url);
			if (st->upload)
				return MHD_YES;
			if (length > SERVER_MAX_BODY) {
				st->responded = true;
				return server_reply_too_large(conn);
			}
		}
		return MHD_YES;
	}

	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (st->responded)
			return MHD_YES;
		if (st->upload) {
			if (!st->upload_failed)
				server_upload(srv, conn, method, url, st, upload_data, n);
			return MHD_YES;
		}
		if (!st->too_large && st->body.len + n > SERVER_MAX_BODY) {
			st->too_large = true;
			st->discarded = st->body.len;
			buf_free(&st->body);
		}
		if (st->too_large) {
			st->discarded += n;
			return st->discarded > SERVER_MAX_DISCARD ? MHD_NO : MHD_YES;
		}
		buf_append(&st->body, upload_data, n);
		return MHD_YES;
	}

	if (st->deferred) {
		/* resumed: the handler has another look (authorised the first time) */
		st->deferred = false;
		return server_dispatch(srv, conn, method, url, st);
	}
	if (st->responded)
		return MHD_YES;
	st->responded = true;
	if (!server_is_authorized(srv, conn, method, url))
		return server_reply_unauthorized(conn);
	MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, srv->auth_timeout_s);
	if (st->too_large)
		return server_reply_too_large(conn);
	st->conn = conn;
	return server_dispatch(srv, conn, method, url, st);
}

static void server_request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
				     enum MHD_RequestTerminationCode toe)
{
	struct request_state *st = *con_cls;
	if (!st)
		return;
	if (st->handler_state_free)
		st->handler_state_free(st->handler_state);
	buf_free(&st->body);
	free(st);
	*con_cls = NULL;
}

/* libmicrohttpd's messages, at most SERVER_LOG_BURST per SERVER_LOG_WINDOW_US: clients
 * can provoke them (dropped connections, limits), and must not be able to flood the log. */
#define SERVER_LOG_BURST     20
#define SERVER_LOG_WINDOW_US (10 * 1000 * 1000)

static __attribute__((format(printf, 2, 0))) void server_log_mhd(void *cls, const char *fmt,
								 va_list ap)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static uint64_t window_start;    /* protected by lock */
	static unsigned logged, dropped; /* protected by lock */
	unsigned dropped_before = 0;
	bool emit;

	uint64_t now = clock_now_us();
	pthread_mutex_lock(&lock);
	if (now - window_start >= SERVER_LOG_WINDOW_US) {
		dropped_before = dropped;
		window_start = now;
		logged = 0;
		dropped = 0;
	}
	emit = logged < SERVER_LOG_BURST;
	if (emit)
		logged++;
	else
		dropped++;
	pthread_mutex_unlock(&lock);

	if (dropped_before)
		log_warn("http: %u more messages suppressed", dropped_before);
	if (!emit)
		return;
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t len = strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
		msg[--len] = '\0';
	log_warn("http: %s", msg);
}

/* A new connection gets the short idle limit until a request on it is authorised. With
 * -v, every connection is logged as it opens: a test can tell that none came. */
static void server_notify_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
				     enum MHD_ConnectionNotificationCode code)
{
	if (code != MHD_CONNECTION_NOTIFY_STARTED)
		return;
	MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
				  (unsigned int) SERVER_TIMEOUT_S);
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	char addr[INET6_ADDRSTRLEN + 16] = "?";
	if (ci && ci->client_addr)
		server_format_address((const struct sockaddr_storage *) ci->client_addr, addr,
				      sizeof(addr));
	log_debug("connection from %s", addr);
}

int server_start(const struct server_config *cfg, struct server **ret_server)
{
	struct server *srv = xcalloc(1, sizeof(*srv));
	/* room for every connection the limits allow, as far as the hard limit lets us */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < SERVER_CONNECTION_LIMIT + 256) {
		rl.rlim_cur = rl.rlim_max < SERVER_CONNECTION_LIMIT + 256
				      ? rl.rlim_max
				      : SERVER_CONNECTION_LIMIT + 256;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	srv->token = cfg->token;
	srv->uploads = cfg->uploads;
	srv->n_uploads = cfg->n_uploads;
	srv->authorize = cfg->authorize;
	srv->auth_timeout_s = cfg->auth_timeout_s ? cfg->auth_timeout_s : SERVER_AUTH_TIMEOUT_S;
	srv->routes = cfg->routes;
	srv->n_routes = cfg->n_routes;
	srv->userdata = cfg->userdata;
	pthread_mutex_init(&srv->park_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&srv->park_cond, &ca);
	pthread_condattr_destroy(&ca);

	/* The logger comes first so that messages about the other options reach it. */
	struct MHD_OptionItem options[] = {
		{MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) server_log_mhd, srv},
		{MHD_OPTION_LISTEN_SOCKET, cfg->listen_fd, NULL},
		{MHD_OPTION_THREAD_POOL_SIZE, SERVER_THREADS, NULL},
		{MHD_OPTION_CONNECTION_LIMIT, SERVER_CONNECTION_LIMIT, NULL},
		{MHD_OPTION_PER_IP_CONNECTION_LIMIT, SERVER_PER_IP_LIMIT, NULL},
		/* the long limit is the daemon's: libmicrohttpd walks every connection with a
		 * limit of its own at each turn of its loop, so only the few new ones have one */
		{MHD_OPTION_CONNECTION_TIMEOUT, srv->auth_timeout_s, NULL},
		{MHD_OPTION_CONNECTION_MEMORY_LIMIT, SERVER_CONNECTION_MEMORY, NULL},
		{MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) server_request_completed, srv},
		{MHD_OPTION_NOTIFY_CONNECTION, (intptr_t) server_notify_connection, srv},
		{MHD_OPTION_END, 0, NULL}, /* the TLS options go here and after */
		{MHD_OPTION_END, 0, NULL},
		{MHD_OPTION_END, 0, NULL},
		{MHD_OPTION_END, 0, NULL},
	};
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
			 MHD_ALLOW_SUSPEND_RESUME;
	if (cfg->tls_cert_pem) {
		size_t n = 0;
		while (options[n].option != MHD_OPTION_END)
			n++;
		options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
						       (void *) cfg->tls_cert_pem};
		options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
						       (void *) cfg->tls_key_pem};
		options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0,
						       (void *) SERVER_TLS_PRIORITIES};
		flags |= MHD_USE_TLS;
	}
	srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, server_handle, srv, MHD_OPTION_ARRAY,
				       options, MHD_OPTION_END);
	if (!srv->daemon) {
		/* libmicrohttpd already reported why; it may also have closed the socket,
		 * so it is left alone. */
		free(srv);
		return -EIO;
	}
	if (pthread_create(&srv->timer, NULL, server_timer_main, srv) == 0)
		srv->timer_started = true;
	*ret_server = srv;
	return 0;
}

void server_stop(struct server *srv)
{
	if (!srv)
		return;
	/* libmicrohttpd must not be stopped with suspended connections: answer them */
	pthread_mutex_lock(&srv->park_lock);
	srv->stopping = true;
	pthread_cond_signal(&srv->park_cond);
	pthread_mutex_unlock(&srv->park_lock);
	if (srv->timer_started)
		pthread_join(srv->timer, NULL);
	else
		server_wake(srv);
	MHD_stop_daemon(srv->daemon);
	pthread_cond_destroy(&srv->park_cond);
	pthread_mutex_destroy(&srv->park_lock);
	free(srv);
}
