/* One REST exchange from any thread. */
#include "backend/rest.h"
#include "backend/util.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define REST_MAX_BODY (4u << 20) /* services and the ledger: larger answers are refused */

struct rest_call {
	struct loop *loop;
	char *method, *token, *body;
	struct endpoint where;
	size_t body_len;
	long timeout_ms;
	void (*on_chunk)(const char *data, size_t len, void *arg);
	rest_done_fn done;
	void *arg;
};

static void rest_call_free(struct rest_call *c)
{
	free(c->method);
	endpoint_clear(&c->where);
	if (c->token) {
		explicit_bzero(c->token, strlen(c->token));
		free(c->token);
	}
	free(c->body);
	free(c);
}

char *rest_error_message(const char *body, size_t len)
{
	json_t *doc = json_loadb(body, len, 0, NULL);
	static const char *const keys[] = {"error", "detail", "message"};
	for (size_t i = 0; i < 3; i++) {
		json_t *v = json_object_get(doc, keys[i]);
		if (json_is_string(v)) {
			char *s = xstrdup(json_string_value(v));
			json_decref(doc);
			return s;
		}
		if (json_is_object(v) && json_is_string(json_object_get(v, "message"))) {
			char *s = xstrdup(json_string_value(json_object_get(v, "message")));
			json_decref(doc);
			return s;
		}
	}
	json_decref(doc);
	size_t n = len < 200 ? len : 200;
	while (n && (body[n - 1] == '\n' || body[n - 1] == '\r'))
		n--;
	return xstrndup(body, n);
}

static void rest_finished(void *arg, const struct http_response *r)
{
	struct rest_call *c = arg;
	struct buf why;
	buf_init(&why);
	if (r->error) {
		if (r->status) {
			char *msg = rest_error_message(r->body, r->body_len);
			buf_printf(&why, "HTTP %ld%s%s", r->status, msg[0] ? ": " : "", msg);
			free(msg);
		} else if (r->error == -ETIMEDOUT) {
			buf_printf(&why, "no answer within %ld ms", c->timeout_ms);
		} else {
			buf_puts(&why, r->error_text);
		}
	}
	c->done(c->arg, r->error, r->status, r->body, r->body_len, why.data ? why.data : "");
	buf_free(&why);
	rest_call_free(c);
}

static void rest_chunk(const char *data, size_t len, void *arg)
{
	struct rest_call *c = arg;
	c->on_chunk(data, len, c->arg);
}

static void rest_start(void *arg)
{
	struct rest_call *c = arg;
	assert(loop_is_current(c->loop));
	struct http_request req = {
		.method = c->method,
		.token = c->token,
		.body = c->body,
		.body_len = c->body_len,
		.connect_timeout_ms = c->timeout_ms,
		.timeout_ms = c->timeout_ms,
		.on_chunk = c->on_chunk ? rest_chunk : NULL,
		.max_body = REST_MAX_BODY,
	};
	endpoint_apply(&c->where, &req);
	int r = loop_http(c->loop, &req, rest_finished, c);
	if (r < 0) {
		c->done(c->arg, r, 0, "", 0, "cannot start the request");
		rest_call_free(c);
	}
}

void rest_call(struct loop *l, const struct rest_request *req, rest_done_fn done, void *arg)
{
	struct rest_call *c = xcalloc(1, sizeof(*c));
	c->loop = l;
	c->method = xstrdup(req->method);
	endpoint_init_sub(&c->where, req->where, "");
	c->token = req->token ? xstrdup(req->token) : NULL;
	if (req->body) {
		c->body = xmalloc(req->body_len + 1);
		memcpy(c->body, req->body, req->body_len);
		c->body[req->body_len] = '\0';
	}
	c->body_len = req->body_len;
	c->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : 2000;
	c->on_chunk = req->on_chunk;
	c->done = done;
	c->arg = arg;
	loop_post(l, rest_start, c);
}
