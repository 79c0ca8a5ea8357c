/* The agent's HTTP server: libmicrohttpd with an internal epoll thread pool, bearer-token
 * authentication on every request, a bounded request body and a route table. Responses
 * are JSON ending in a newline unless a handler sets another content type; errors are
 * {"error": "..."}. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "backend/util.h"

#define SERVER_MAX_BODY   (1024 * 1024) /* larger request bodies get 413 */
#define SERVER_MAX_PARAMS 4             /* "{name}" segments per route pattern */

struct MHD_Connection;

/* One request, valid only while its handler runs. Everything is borrowed. */
struct request {
	const char *method;
	const char *path; /* percent-decoded, without the query string */
	const char *body; /* NUL-terminated; "" when there was none */
	size_t body_len;
	const char *params[SERVER_MAX_PARAMS]; /* "{name}" matches, in pattern order */
	size_t n_params;
	void *userdata;                    /* as passed to server_start() */
	bool expired;                      /* a deferred answer's deadline has passed */
	struct MHD_Connection *connection; /* private to server.c */
	/* A handler's own state for this request, kept across the runs of a deferred one:
	 * set by the handler, freed with state_free when the request ends (however it
	 * ends). `handle` names the request for server_wake_request(). */
	void *state;
	void (*state_free)(void *state);
	void *handle;
};

#define RESPONSE_MAX_HEADERS 8

/* What a handler fills in; the server sends it after the handler returns. */
struct response {
	unsigned status; /* 0 until set */
	struct buf body;
	const char *content_type;               /* a static string; NULL: application/json */
	char *headers[RESPONSE_MAX_HEADERS][2]; /* owned name/value copies */
	size_t n_headers;
	/* A handler with nothing to say yet (a long poll) leaves the status 0 and sets this
	 * deadline (monotonic µs): the connection waits, holding no thread, and the handler
	 * runs again after server_wake() or, with req->expired set, at the deadline. */
	uint64_t defer_until_us;
	/* When > 0, the body is this file's first file_size bytes instead, sent from the
	 * file without being read into memory; the server owns and closes it. */
	int file_fd;
	uint64_t file_size;
};

/* One row of the route table. `pattern` is matched segment by segment (util_path_match,
 * backend/util.h, which the tree's rows use too); a "{name}" segment matches any one
 * non-empty segment and is passed in req->params; a final "{*}" matches the rest of the
 * path (one or more segments), passed without its leading '/'. The handler returns 0
 * after filling `resp`, or -errno; a negative return, or a response left without a
 * status, becomes 500. */
struct route {
	const char *method;
	const char *pattern;
	int (*handler)(struct request *req, struct response *resp);
};

/* A request whose body is not collected (nor bounded by SERVER_MAX_BODY): each piece is
 * handed to upload() as it arrives, on a server thread, with req->body empty; then the
 * route table's handler for the request runs; both see the same req->state. A negative
 * return drops the rest of the body; the handler still answers. */
struct upload_route {
	const char *method;
	const char *pattern; /* as in struct route */
	int (*upload)(struct request *req, const char *data, size_t len);
};

/* Value of a request header, or NULL. Case-insensitive name; borrowed. */
const char *request_get_header(const struct request *req, const char *name);
/* The query string as received ("a=1&b=2", re-encoded), appended to out; "" when none. */
void request_get_query_string(const struct request *req, struct buf *out);
/* Value of a query string argument ("?name=value"), percent-decoded, or NULL; borrowed. */
const char *request_get_query(const struct request *req, const char *name);

/* The numeric address of the peer (IPv4, or IPv6 without brackets) into out. 0 or -errno. */
int request_peer_address(const struct request *req, char *out, size_t outlen);

/* Sets the status and body to `value` serialised plus "\n". Steals `value`. 0 or -ENOMEM. */
int response_set_json(struct response *resp, unsigned status, json_t *value);
/* Sets {"error": message} with a printf-style message; unprintable bytes become '?'. */
void response_set_error(struct response *resp, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Adds a response header; copies both strings. 0, or -E2BIG when full. */
int response_add_header(struct response *resp, const char *name, const char *value);

struct server_config {
	int listen_fd;              /* bound and listening, from server_listen() */
	const char *token;          /* borrowed; must outlive the server */
	const struct route *routes; /* borrowed; must outlive the server */
	size_t n_routes;
	const struct upload_route *uploads; /* borrowed, or NULL */
	size_t n_uploads;
	void *userdata; /* handed to every handler in req->userdata */
	/* PEM certificate and key to serve HTTPS with (TLS 1.2 and 1.3), or NULL for plain
	 * HTTP; borrowed, must outlive the server. */
	const char *tls_cert_pem;
	const char *tls_key_pem;
	/* With `token`, a GET may carry ?expires=T&sig=S instead of the bearer token: S is
	 * digest_sign_path(token, path, T) (backend/digest.h) and T a unix time not passed
	 * yet, so that a URL the token's holder signed opens that one path until T. */
	/* Instead of `token`: decides per request whether `bearer` (NULL when there is none)
	 * may use `path`. Runs on a server thread; must compare secrets in constant time. */
	bool (*authorize)(void *userdata, const char *path, const char *bearer);
	/* How long a connection that carried an authorised request may stay idle, in
	 * seconds; 0: 30. Longer for clients that come back at a known period (the join
	 * listener's heartbeats), so that each comes back on its connection, without a TLS
	 * handshake. */
	unsigned auth_timeout_s;
};

struct server;

/* Opens a listening TCP socket on "ADDR:PORT" or "[ADDR6]:PORT" (numeric addresses).
 * On success writes the socket and the address it is bound to, in the same notation
 * (useful with port 0), to `ret_bound` (`boundlen` bytes). -EINVAL for a malformed
 * address; other -errno from socket/bind/listen. */
int server_listen(const char *addr, int *ret_fd, char *ret_bound, size_t boundlen);
/* Starts serving. Returns a new server, 0 or -errno. The server owns cfg->listen_fd from
 * this call on, even when it fails: the caller must not touch it again. */
int server_start(const struct server_config *cfg, struct server **ret_server);
/* Stops accepting, finishes or drops open connections, joins the threads and frees `srv`.
 * NULL is a no-op. */
void server_stop(struct server *srv);
/* The row of `routes` that serves method and path, as the server picks it (for tests and
 * the fuzzer): its index and the number of "{name}" captures, or -ENOENT. */
int server_match_route(const struct route *routes, size_t n_routes, const char *method,
		       const char *path, size_t *ret_params);
/* Thread-safe: runs the handlers of every deferred request again (something changed). */
void server_wake(struct server *srv);
/* Thread-safe: runs the handler of one deferred request (req->handle) again. The caller
 * must know the request has not ended: its state_free has not run. */
void server_wake_request(struct server *srv, void *handle);
