/* The backend thread: one thread owns the curl multi handle, every easy handle, the
 * timers and extra fds (the config's inotify fd). Other threads hand it work with
 * loop_post(); everything else here must be called on the loop thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/util.h"

struct loop;
struct loop_timer;

/* The result of one HTTP exchange. Borrowed by the completion callback. */
struct http_response {
	int error;        /* 0, or -errno for transport failures and non-2xx statuses */
	long status;      /* HTTP status, 0 when no answer came */
	const char *body; /* NUL-terminated; "" when empty */
	size_t body_len;
	double elapsed_ms;
	const char *error_text; /* short human reason, "" on success */
	/* The exchange failed a transport-security check: plain HTTP refused, or the
	 * certificate rejected (pin or verification). Trying again will not help. */
	bool insecure;
};

typedef void (*loop_fn)(void *arg);
typedef void (*http_done_fn)(void *arg, const struct http_response *resp);

/* How an https exchange verifies its server. Verification is never off: with a pinned key
 * the pin is the verification (a self-signed certificate has no CA to check it against),
 * otherwise the certificate chain and the host name are checked against ca_file or the
 * system's CAs. Borrowed by loop_http() for the call only (curl copies the strings). */
struct http_tls {
	const char *ca_file;    /* PEM CA bundle, or NULL: the system's CAs */
	const char *pinned_key; /* "sha256//BASE64" (CURLOPT_PINNEDPUBLICKEY), or NULL */
};

struct http_request {
	const char *method; /* "GET" or "POST" */
	const char *url;    /* copied */
	const char *token;  /* bearer token, or NULL; copied, never logged */
	/* further header lines ("Name: value"), NULL-terminated, or NULL; copied, never
	 * logged (they may carry secrets, as token does) */
	const char *const *headers;
	const char *body; /* for POST; copied */
	size_t body_len;
	const char *content_type; /* default application/json */
	long connect_timeout_ms;
	long timeout_ms; /* total deadline */
	size_t max_body; /* answers larger than this fail with -EFBIG; 0 = 8 MiB */
	/* When set, the answer is handed over as it arrives (NDJSON progress, say) instead of
	 * being collected: done() then sees an empty body. Runs on the loop thread. */
	void (*on_chunk)(const char *data, size_t len, void *arg);
	/* For an https URL, how to verify the server; must be NULL for plain http (curl is
	 * then limited to http, and an https URL without it is refused). */
	const struct http_tls *tls;
	/* When > 0, the body is read from this file descriptor as it is sent (a PUT of
	 * body_fd_size bytes; large files are never held in memory). loop_http() takes it:
	 * it is closed when the exchange ends, or at once when loop_http fails. */
	int body_fd;
	uint64_t body_fd_size;
	/* When set, the exchange is not allowed (plain http to a remote address, say): nothing
	 * is sent, and done() gets -EPROTO with this text as error_text. Copied. */
	const char *refused;
};

/* Creates the loop; the thread starts with loop_start(). Returns 0 or -errno. */
int loop_new(struct loop **ret);
int loop_start(struct loop *l);
/* Thread-safe: from now on loop_http refuses new exchanges with -ECANCELED (those in
 * flight go on). The first step of a stop. */
void loop_begin_stop(struct loop *l);
/* Asks the thread to finish, joins it, and fails every request still in flight with
 * -ECANCELED (their callbacks run on the calling thread and cannot start new ones). */
void loop_stop(struct loop *l);
void loop_free(struct loop *l);
/* True when called on the loop thread, or while no loop thread runs (before loop_start,
 * after loop_stop: the caller then owns what the thread would). What the "loop thread
 * only" functions assert. */
bool loop_is_current(const struct loop *l);

/* Thread-safe: runs fn(arg) on the loop thread soon, in order. It cannot fail (allocation
 * failure aborts). A post the loop never runs (it stopped first) is run by loop_stop() on
 * its caller; one made to a loop never started is dropped by loop_free(). */
void loop_post(struct loop *l, loop_fn fn, void *arg);

/* Loop thread only: runs fn(arg) once at monotonic time due_us. The timer is freed after
 * it fires or when cancelled. */
struct loop_timer *loop_timer_add(struct loop *l, uint64_t due_us, loop_fn fn, void *arg);
void loop_timer_cancel(struct loop *l, struct loop_timer *t);

/* Loop thread only: calls fn(arg) whenever fd is readable. */
int loop_fd_add(struct loop *l, int fd, loop_fn fn, void *arg);
void loop_fd_remove(struct loop *l, int fd);

/* Loop thread only: starts an HTTP exchange; done(arg, resp) runs on the loop thread
 * exactly once, at the latest at the request's total deadline. Returns 0 or -errno
 * (then done is not called); -ECANCELED once the loop is stopping. */
int loop_http(struct loop *l, const struct http_request *req, http_done_fn done, void *arg);

/* Loop thread only, never from within a curl callback (on_chunk): ends the exchange
 * started with (done, arg) now, closing its connection; done runs before this returns,
 * with -ECANCELED and error_text "cancelled". 0, or -ENOENT when none is in flight. */
int loop_http_abort(struct loop *l, http_done_fn done, void *arg);

/* Number of exchanges in flight (loop thread only). */
size_t loop_http_active(const struct loop *l);

/* Maps a curl result code and HTTP status to a negative errno (0 for success and 2xx). */
int http_error_to_errno(int curl_code, long status);
/* A sentence for a failed transfer's curl code, with curl's error buffer `detail` (may be
 * empty): TLS failures say what failed ("certificate does not match the pinned
 * fingerprint", "certificate verification failed: ..."). Appends to out. */
void http_error_describe(int curl_code, const char *detail, struct buf *out);
