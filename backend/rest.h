/* One REST exchange from any thread: the request is handed to the loop thread and the
 * answer comes back through a callback on the loop thread. */
#pragma once

#include "backend/endpoint.h"
#include "backend/loop.h"

#include <stddef.h>

/* err: 0 or -errno; status: HTTP status or 0; body: the answer (NUL-terminated);
 * why: one sentence when err != 0 (the server's own message when it sent one). */
typedef void (*rest_done_fn)(void *arg, int err, long status, const char *body, size_t len,
			     const char *why);

struct rest_request {
	const char *method;           /* GET, POST, DELETE */
	const struct endpoint *where; /* the URL and its transport; copied */
	const char *token;            /* bearer token or NULL */
	const char *body;
	size_t body_len;
	long timeout_ms;
	void (*on_chunk)(const char *data, size_t len, void *arg); /* streaming, or NULL */
};

/* Copies the request, starts it on the loop thread. It cannot fail: done is always
 * called, with -errno when the exchange could not start. */
void rest_call(struct loop *l, const struct rest_request *req, rest_done_fn done, void *arg);

/* The server's message in an error answer: {"error": "..."} or {"detail": "..."} or
 * {"message": "..."}, else the start of the body. Returns a new string. */
char *rest_error_message(const char *body, size_t len);
