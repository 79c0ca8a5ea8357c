/* Prompt tasks: placement input, pulls and the streaming client (README, "Prompt tasks"). */
#include "backend/prompt.h"
#include "backend/endpoint.h"
#include "backend/rest.h"
#include "backend/sched.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROMPT_TIMEOUT_MS (6L * 3600 * 1000) /* without timeout_s: a long answer still ends */
#define HEAD_MAX          1024               /* bytes of an answer kept for error messages */
#define PULL_AGAIN_US     (30 * 1000000ull)  /* a refused pull is asked again after this */

/* One answer as it streams in: Ollama's NDJSON objects or OpenAI's "data:" events. */
struct answer {
	bool openai, chat;
	struct models_lines lines;
	struct buf text;
	struct buf head; /* the first bytes, for an error answer's message */
	bool done;       /* Ollama's "done": true, or OpenAI's "data: [DONE]" */
	char *error;     /* an error object in the stream, or NULL */
	char *done_reason;
	json_int_t prompt_tokens, completion_tokens;              /* -1: not told */
	double load_ms, prompt_eval_ms, eval_ms, server_total_ms; /* -1: not told */
	void (*on_piece)(const char *s, size_t n, void *arg);
	void *arg;
};

static void answer_init(struct answer *a, bool openai, bool chat)
{
	memset(a, 0, sizeof(*a));
	a->openai = openai;
	a->chat = chat;
	models_lines_init(&a->lines);
	buf_init(&a->text);
	buf_init(&a->head);
	a->prompt_tokens = a->completion_tokens = -1;
	a->load_ms = a->prompt_eval_ms = a->eval_ms = a->server_total_ms = -1;
}

static void answer_clear(struct answer *a)
{
	buf_free(&a->lines.partial);
	buf_free(&a->text);
	buf_free(&a->head);
	free(a->error);
	free(a->done_reason);
}

static void answer_piece(struct answer *a, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (!n)
		return;
	buf_append(&a->text, s, n);
	if (a->on_piece)
		a->on_piece(s, n, a->arg);
}

/* A count from the network: a whole number a count can be, else -1. */
static json_int_t count_of(const json_t *v)
{
	return json_is_integer(v) && json_integer_value(v) >= 0 &&
			       json_integer_value(v) < (json_int_t) 1 << 50
		       ? json_integer_value(v)
		       : -1;
}

/* Ollama's durations are nanoseconds. */
static double ms_of(const json_t *v)
{
	double x = json_number_value(v);
	return json_is_number(v) && isfinite(x) && x >= 0 && x < 1e18 ? x / 1e6 : -1;
}

static void set_once(char **dst, const char *s)
{
	if (!*dst && s)
		*dst = xstrdup(s);
}

static void ollama_line(struct answer *a, json_t *o)
{
	const json_t *err = json_object_get(o, "error");
	if (err) {
		set_once(&a->error, json_is_string(err) ? json_string_value(err) : "an error");
		return;
	}
	if (a->chat)
		answer_piece(a, json_string_value(
					json_object_get(json_object_get(o, "message"), "content")));
	else
		answer_piece(a, json_string_value(json_object_get(o, "response")));
	if (!json_is_true(json_object_get(o, "done")))
		return;
	a->done = true;
	set_once(&a->done_reason, json_string_value(json_object_get(o, "done_reason")));
	a->prompt_tokens = count_of(json_object_get(o, "prompt_eval_count"));
	a->completion_tokens = count_of(json_object_get(o, "eval_count"));
	a->load_ms = ms_of(json_object_get(o, "load_duration"));
	a->prompt_eval_ms = ms_of(json_object_get(o, "prompt_eval_duration"));
	a->eval_ms = ms_of(json_object_get(o, "eval_duration"));
	a->server_total_ms = ms_of(json_object_get(o, "total_duration"));
}

static void openai_event(struct answer *a, json_t *o)
{
	const json_t *err = json_object_get(o, "error");
	if (err) {
		const char *m = json_string_value(json_object_get(err, "message"));
		set_once(&a->error, m                     ? m
				    : json_is_string(err) ? json_string_value(err)
							  : "an error");
		return;
	}
	json_t *choice = json_array_get(json_object_get(o, "choices"), 0);
	answer_piece(
		a, json_string_value(json_object_get(json_object_get(choice, "delta"), "content")));
	set_once(&a->done_reason, json_string_value(json_object_get(choice, "finish_reason")));
	json_t *usage = json_object_get(o, "usage");
	if (json_is_object(usage)) {
		a->prompt_tokens = count_of(json_object_get(usage, "prompt_tokens"));
		a->completion_tokens = count_of(json_object_get(usage, "completion_tokens"));
	}
}

static void answer_line(const char *line, size_t len, void *arg)
{
	struct answer *a = arg;
	if (a->openai) {
		/* server-sent events: only "data:" fields matter; comments and other fields
		 * (event:, id:, retry:) say nothing of the answer */
		if (len < 5 || strncmp(line, "data:", 5))
			return;
		line += 5;
		len -= 5;
		while (len && *line == ' ') {
			line++;
			len--;
		}
		if (len == 6 && !strncmp(line, "[DONE]", 6)) {
			a->done = true;
			return;
		}
	}
	json_t *o = json_loadb(line, len, 0, NULL);
	if (json_is_object(o)) {
		if (a->openai)
			openai_event(a, o);
		else
			ollama_line(a, o);
	}
	json_decref(o);
}

static void answer_feed(struct answer *a, const char *data, size_t len)
{
	if (a->head.len < HEAD_MAX)
		buf_append(&a->head, data,
			   len < HEAD_MAX - a->head.len ? len : HEAD_MAX - a->head.len);
	models_lines_feed(&a->lines, data, len, answer_line, a);
}

static void answer_finish(struct answer *a)
{
	models_lines_finish(&a->lines, answer_line, a);
	models_lines_init(&a->lines);
}

static json_t *count_or_null(json_int_t v)
{
	return v >= 0 ? json_integer(v) : json_null();
}

static json_t *ms_or_null(double v)
{
	return v >= 0 ? json_real(round(v * 1000) / 1000) : json_null();
}

char *prompts_parse_stream(bool openai, bool chat, const char *const *chunks, size_t n)
{
	struct answer a;
	answer_init(&a, openai, chat);
	for (size_t i = 0; i < n; i++)
		answer_feed(&a, chunks[i], strlen(chunks[i]));
	answer_finish(&a);
	json_t *o =
		json_pack("{s:s% s:b s:s? s:s? s:o s:o}", "text", a.text.data ? a.text.data : "",
			  a.text.len, "done", a.done, "error", a.error, "done_reason",
			  a.done_reason, "prompt_tokens", count_or_null(a.prompt_tokens),
			  "completion_tokens", count_or_null(a.completion_tokens));
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	answer_clear(&a);
	return s;
}

/* ---- the runner ---- */

/* One attempt streaming. Loop thread only. */
struct run {
	struct prompts *p;
	char *id, *dispatch_id, *node, *model, *where;
	const char *api; /* "/api/generate", "/api/chat" or "/v1/chat/completions" */
	struct answer answer;
	uint64_t started_us, first_us; /* monotonic: sent, first piece of text */
	bool cancelled;                /* asked to stop: the end is "cancelled" */
	bool aborting;                 /* an abort is posted */
	bool timed;                    /* the spec's timeout_s is the deadline */
	struct run *next;
};

/* A pull asked for "pull": true. Protected by prompts->lock. */
struct pull {
	char *node, *model;
	char *error;      /* why the server refused it, or NULL while it goes on */
	uint64_t when_us; /* asked (or refused) then */
	struct pull *next;
};

struct prompts {
	struct loop *loop;
	struct cluster *cluster;
	struct models *models;
	struct tasks *tasks;
	struct run *runs; /* loop thread only */
	pthread_mutex_t lock;
	struct pull *pulls; /* protected by lock */
};

static struct run *run_find(struct prompts *p, const char *dispatch_id)
{
	for (struct run *r = p->runs; r; r = r->next)
		if (!strcmp(r->dispatch_id, dispatch_id))
			return r;
	return NULL;
}

static void run_free(struct run *r)
{
	struct run **pp = &r->p->runs;
	while (*pp && *pp != r)
		pp = &(*pp)->next;
	if (*pp)
		*pp = r->next;
	answer_clear(&r->answer);
	free(r->id);
	free(r->dispatch_id);
	free(r->node);
	free(r->model);
	free(r->where);
	free(r);
}

static void run_done(void *arg, const struct http_response *resp);

/* An abort on its way to the loop thread: the run is found again by its attempt's id. */
struct abort_msg {
	struct prompts *p;
	char dispatch_id[];
};

static void abort_on_loop(void *arg)
{
	struct abort_msg *msg = arg;
	assert(loop_is_current(msg->p->loop));
	struct run *r = run_find(msg->p, msg->dispatch_id);
	if (r)
		loop_http_abort(msg->p->loop, run_done, r);
	free(msg);
}

/* Ends a run's request soon, on the loop thread but outside the caller: curl's callbacks
 * may not remove their own transfer, and the task manager's callers hold its lock. */
static void post_abort(struct prompts *p, const char *dispatch_id)
{
	size_t n = strlen(dispatch_id) + 1;
	struct abort_msg *msg = xmalloc(sizeof(*msg) + n);
	msg->p = p;
	memcpy(msg->dispatch_id, dispatch_id, n);
	loop_post(p->loop, abort_on_loop, msg);
}

static void run_piece(const char *s, size_t n, void *arg)
{
	struct run *r = arg;
	if (!r->first_us)
		r->first_us = clock_now_us();
	if (!tasks_prompt_output(r->p->tasks, r->id, r->dispatch_id, s, n) && !r->aborting) {
		r->aborting = true;
		post_abort(r->p, r->dispatch_id);
	}
}

static void run_chunk(const char *data, size_t len, void *arg)
{
	struct run *r = arg;
	answer_feed(&r->answer, data, len);
}

/* tasks/ID/result. New string. */
static char *run_result(const struct run *r, uint64_t now, const char *error)
{
	const struct answer *a = &r->answer;
	double total = (double) (now - r->started_us) / 1000.0;
	double first = r->first_us ? (double) (r->first_us - r->started_us) / 1000.0 : -1;
	double rate = -1;
	if (a->completion_tokens > 0 && a->eval_ms > 0)
		rate = a->completion_tokens / (a->eval_ms / 1000.0);
	else if (a->completion_tokens > 0 && first >= 0 && total > first)
		rate = a->completion_tokens / ((total - first) / 1000.0);
	json_t *timings = json_object();
	json_object_set_new(timings, "total_ms", ms_or_null(total));
	json_object_set_new(timings, "first_token_ms", ms_or_null(first));
	json_object_set_new(timings, "load_ms", ms_or_null(a->load_ms));
	json_object_set_new(timings, "prompt_eval_ms", ms_or_null(a->prompt_eval_ms));
	json_object_set_new(timings, "eval_ms", ms_or_null(a->eval_ms));
	json_object_set_new(timings, "server_total_ms", ms_or_null(a->server_total_ms));
	json_t *o = json_object();
	json_object_set_new(o, "node", json_string(r->node));
	json_object_set_new(o, "model", json_string(r->model));
	json_object_set_new(o, "server", json_string(a->openai ? "openai" : "ollama"));
	json_object_set_new(o, "service", json_string(r->where));
	json_object_set_new(o, "endpoint", json_string(r->api));
	json_object_set_new(o, "text", json_stringn(a->text.data ? a->text.data : "", a->text.len));
	json_object_set_new(o, "done_reason",
			    a->done_reason ? json_string(a->done_reason) : json_null());
	json_object_set_new(o, "prompt_tokens", count_or_null(a->prompt_tokens));
	json_object_set_new(o, "completion_tokens", count_or_null(a->completion_tokens));
	json_object_set_new(o, "tokens_per_s",
			    rate >= 0 ? json_real(round(rate * 10) / 10) : json_null());
	json_object_set_new(o, "timings", timings);
	json_object_set_new(o, "error", error ? json_string(error) : json_null());
	json_object_set_new(o, "dispatch_id", json_string(r->dispatch_id));
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	struct buf b;
	buf_init(&b);
	buf_puts(&b, s ? s : "{}");
	buf_puts(&b, "\n");
	free(s);
	return buf_steal(&b, NULL);
}

static void run_done(void *arg, const struct http_response *resp)
{
	struct run *r = arg;
	struct answer *a = &r->answer;
	answer_finish(a);
	if (resp->error == -ECANCELED && !r->cancelled && !r->aborting) {
		/* clusterfs is stopping: the task stays running, and is asked again at the next
		 * start (DESIGN §3) */
		run_free(r);
		return;
	}
	const char *state = TASK_SUCCEEDED;
	struct buf why;
	buf_init(&why);
	if (r->cancelled || resp->error == -ECANCELED) {
		state = TASK_CANCELLED;
		buf_puts(&why, "cancelled: the request to the model server was aborted");
	} else if (resp->status >= 300) {
		state = TASK_FAILED;
		char *msg = rest_error_message(a->head.data ? a->head.data : "", a->head.len);
		buf_printf(&why, "%s answered HTTP %ld%s%s", r->where, resp->status,
			   msg[0] ? ": " : "", msg);
		free(msg);
	} else if (resp->error) {
		state = resp->error == -ETIMEDOUT && r->timed ? TASK_TIMED_OUT : TASK_FAILED;
		buf_printf(&why, "%s: %s", r->where,
			   resp->error_text[0] ? resp->error_text : strerror(-resp->error));
	} else if (a->error) {
		state = TASK_FAILED;
		buf_printf(&why, "%s: %s", r->where, a->error);
	} else if (!a->done) {
		state = TASK_FAILED;
		buf_printf(&why, "%s ended the stream before the answer was complete", r->where);
	}
	char clean[600] = "";
	if (why.data)
		util_escape_controls(why.data, clean, sizeof(clean));
	char *result = run_result(r, clock_now_us(), why.data ? clean : NULL);
	tasks_prompt_end(r->p->tasks, r->id, r->dispatch_id, state, why.data ? clean : NULL,
			 result);
	free(result);
	buf_free(&why);
	run_free(r);
}

/* The request body: the spec's model and prompt or messages, streaming, with its options
 * (Ollama: "options"; OpenAI: top-level fields, which is where temperature, max_tokens and
 * the like go there). New string. */
static char *request_body(const json_t *spec, bool openai)
{
	const char *model = json_string_value(json_object_get(spec, "model"));
	json_t *prompt = json_object_get(spec, "prompt");
	json_t *messages = json_object_get(spec, "messages");
	json_t *options = json_object_get(spec, "options");
	json_t *o = json_object();
	json_object_set_new(o, "model", json_string(model));
	if (openai) {
		if (json_is_string(prompt))
			json_object_set_new(
				o, "messages",
				json_pack("[{s:s, s:O}]", "role", "user", "content", prompt));
		else
			json_object_set(o, "messages", messages);
		json_object_set_new(o, "stream", json_true());
		json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
		const char *key;
		json_t *v;
		json_object_foreach (options, key, v)
			if (!json_object_get(o, key))
				json_object_set(o, key, v);
	} else {
		if (json_is_string(prompt))
			json_object_set(o, "prompt", prompt);
		else
			json_object_set(o, "messages", messages);
		json_object_set_new(o, "stream", json_true());
		if (json_object_size(options))
			json_object_set(o, "options", options);
	}
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return s;
}

static int prompts_start(void *arg, const char *id, const char *dispatch_id, const char *node,
			 const json_t *spec)
{
	struct prompts *p = arg;
	assert(loop_is_current(p->loop));
	if (run_find(p, dispatch_id))
		return 0; /* this attempt streams already */
	const char *model = json_string_value(json_object_get(spec, "model"));
	struct endpoint base;
	bool openai = false;
	char *where = NULL;
	int rc = models_server_for(p->models, node, model, &base, &openai, &where);
	if (rc < 0)
		return rc;
	bool chat = json_object_get(spec, "messages") != NULL;
	struct run *r = xcalloc(1, sizeof(*r));
	r->p = p;
	r->id = xstrdup(id);
	r->dispatch_id = xstrdup(dispatch_id);
	r->node = xstrdup(node);
	r->model = xstrdup(model);
	r->where = where;
	r->api = openai ? "/v1/chat/completions" : chat ? "/api/chat" : "/api/generate";
	answer_init(&r->answer, openai, chat);
	r->answer.on_piece = run_piece;
	r->answer.arg = r;
	json_int_t timeout_s = json_integer_value(json_object_get(spec, "timeout_s"));
	r->timed = timeout_s > 0;
	struct endpoint url;
	/* an OpenAI-compatible server's base has its path (/v1) already */
	endpoint_init_sub(&url, &base, openai ? "/chat/completions" : r->api);
	endpoint_clear(&base);
	char *body = request_body(spec, openai);
	struct config *cfg = cluster_get_config(p->cluster);
	struct http_request req = {
		.method = "POST",
		.body = body,
		.body_len = strlen(body),
		.connect_timeout_ms = cfg->probe.timeout_ms,
		.timeout_ms = r->timed ? (long) timeout_s * 1000 : PROMPT_TIMEOUT_MS,
		.on_chunk = run_chunk,
	};
	config_unref(cfg);
	endpoint_apply(&url, &req);
	r->started_us = clock_now_us();
	r->next = p->runs;
	p->runs = r;
	rc = loop_http(p->loop, &req, run_done, r);
	endpoint_clear(&url);
	free(body);
	if (rc < 0)
		run_free(r);
	return rc;
}

static void prompts_cancel(void *arg, const char *dispatch_id)
{
	struct prompts *p = arg;
	assert(loop_is_current(p->loop));
	struct run *r = run_find(p, dispatch_id);
	if (!r || r->cancelled)
		return;
	r->cancelled = true;
	if (!r->aborting) {
		r->aborting = true;
		post_abort(p, dispatch_id);
	}
}

static void refreshed(void *arg)
{
	struct prompts *p = arg;
	tasks_on_cluster_change(p->tasks, NULL);
}

static int prompts_holds(void *arg, const char *node, const char *model)
{
	struct prompts *p = arg;
	enum models_holding h = models_node_holds(p->models, node, model);
	/* a prompt waits for this model: the lists are made at most probe.max_age_ms old, and
	 * placement runs again when they come */
	if (h == MODELS_ABSENT)
		models_refresh(p->models, node, refreshed, p);
	if (h >= MODELS_PRESENT) {
		/* a pull that brought it is over: a later "pull": true may ask again */
		pthread_mutex_lock(&p->lock);
		for (struct pull **pp = &p->pulls; *pp; pp = &(*pp)->next) {
			struct pull *q = *pp;
			if (!strcmp(q->node, node) && !strcmp(q->model, model)) {
				*pp = q->next;
				free(q->node);
				free(q->model);
				free(q->error);
				free(q);
				break;
			}
		}
		pthread_mutex_unlock(&p->lock);
	}
	switch (h) {
	case MODELS_NO_SERVER: return SCHED_MODEL_NOSERVE;
	case MODELS_ABSENT: return SCHED_MODEL_ABSENT;
	case MODELS_PRESENT: return SCHED_MODEL_PRESENT;
	case MODELS_LOADED: return SCHED_MODEL_LOADED;
	}
	return SCHED_MODEL_ABSENT;
}

struct pull_ask {
	struct prompts *p;
	char *node, *model;
};

/* The server (or models_ctl) refused a pull: placement says why, and asks again later. */
static void pull_refused(struct prompts *p, const char *node, const char *model, const char *why)
{
	pthread_mutex_lock(&p->lock);
	for (struct pull *q = p->pulls; q; q = q->next) {
		if (!strcmp(q->node, node) && !strcmp(q->model, model)) {
			free(q->error);
			q->error = xstrdup(why);
			q->when_us = clock_now_us();
		}
	}
	pthread_mutex_unlock(&p->lock);
}

static void pull_answered(void *arg, int err, const char *why)
{
	struct pull_ask *a = arg;
	struct prompts *p = a->p;
	if (err) {
		pull_refused(p, a->node, a->model, why && why[0] ? why : strerror(-err));
		tasks_on_cluster_change(p->tasks, a->node);
	}
	free(a->node);
	free(a->model);
	free(a);
}

static void prompts_pull(void *arg, const char *node, const char *model, struct buf *why)
{
	struct prompts *p = arg;
	assert(loop_is_current(p->loop));
	uint64_t now = clock_now_us();
	pthread_mutex_lock(&p->lock);
	struct pull *q = p->pulls;
	while (q && (strcmp(q->node, node) || strcmp(q->model, model)))
		q = q->next;
	bool ask = !q || (q->error && now - q->when_us >= PULL_AGAIN_US);
	if (q && q->error && !ask) {
		buf_printf(
			why, "the pull of %s on %s failed (%s); asking again in %llu s", model,
			node, q->error,
			(unsigned long long) ((PULL_AGAIN_US - (now - q->when_us)) / 1000000 + 1));
		pthread_mutex_unlock(&p->lock);
		return;
	}
	if (!q) {
		q = xcalloc(1, sizeof(*q));
		q->node = xstrdup(node);
		q->model = xstrdup(model);
		q->next = p->pulls;
		p->pulls = q;
	}
	if (ask) {
		free(q->error);
		q->error = NULL;
		q->when_us = now;
	}
	pthread_mutex_unlock(&p->lock);
	buf_printf(why,
		   "no node has model %s: pulling it on %s first (\"pull\": true; progress in "
		   "nodes/%s/models/ctl)",
		   model, node, node);
	if (!ask)
		return;
	struct buf cmd;
	buf_init(&cmd);
	buf_printf(&cmd, "pull %s", model);
	struct pull_ask *a = xcalloc(1, sizeof(*a));
	a->p = p;
	a->node = xstrdup(node);
	a->model = xstrdup(model);
	char err[256];
	int r = models_ctl(p->models, node, cmd.data, pull_answered, a, err, sizeof(err));
	buf_free(&cmd);
	if (r < 0) {
		pull_refused(p, node, model, err);
		free(a->node);
		free(a->model);
		free(a);
	} else {
		cluster_add_event(p->cluster, "model", model, "pulling on %s for a prompt task",
				  node);
	}
}

int prompts_new(struct loop *loop, struct cluster *cluster, struct models *models,
		struct tasks *tasks, struct prompts **ret)
{
	struct prompts *p = xcalloc(1, sizeof(*p));
	p->loop = loop;
	p->cluster = cluster;
	p->models = models;
	p->tasks = tasks;
	pthread_mutex_init(&p->lock, NULL);
	tasks_set_prompts(tasks, &(struct tasks_prompts){.holds = prompts_holds,
							 .pull = prompts_pull,
							 .start = prompts_start,
							 .cancel = prompts_cancel,
							 .arg = p});
	/* node "all" is decided at submission, from the lists as they are: have some */
	models_refresh(models, NULL, NULL, NULL);
	*ret = p;
	return 0;
}

void prompts_free(struct prompts *p)
{
	if (!p)
		return;
	while (p->runs)
		run_free(p->runs);
	while (p->pulls) {
		struct pull *next = p->pulls->next;
		free(p->pulls->node);
		free(p->pulls->model);
		free(p->pulls->error);
		free(p->pulls);
		p->pulls = next;
	}
	pthread_mutex_destroy(&p->lock);
	free(p);
}
