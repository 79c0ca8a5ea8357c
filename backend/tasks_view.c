/* Tasks: what readers see: one task, listings, counts, recent tasks, ranks, output. */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tasks_owner(struct tasks *t, const char *id, uid_t *ret_uid, gid_t *ret_gid)
{
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_lookup_locked(t, id);
	if (k) {
		*ret_uid = k->row.uid;
		*ret_gid = k->row.gid;
	}
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	return k ? 0 : -ENOENT;
}

bool tasks_exists(struct tasks *t, const char *id)
{
	pthread_mutex_lock(&t->lock);
	bool r = tasks_lookup_locked(t, id) != NULL;
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	return r;
}

int tasks_get(struct tasks *t, const char *id, struct task_view *ret)
{
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_lookup_locked(t, id);
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	struct task_view v = {0};
	v.id = xstrdup(k->row.id);
	v.parent = k->row.parent ? xstrdup(k->row.parent) : NULL;
	v.state = xstrdup(k->row.state);
	v.node = k->row.node ? xstrdup(k->row.node) : NULL;
	v.reason = k->row.reason ? xstrdup(k->row.reason) : NULL;
	v.placement = k->row.placement ? xstrdup(k->row.placement) : NULL;
	v.spec = json_deep_copy(k->spec_json);
	if (k->n_children) {
		v.children = json_array();
		for (size_t i = 0; i < k->n_children; i++)
			json_array_append_new(v.children, json_string(k->children[i]));
	}
	v.exit_code = k->row.exit_code;
	v.attempts = k->row.attempts;
	v.priority = k->row.priority;
	v.uid = k->row.uid;
	v.gid = k->row.gid;
	v.user = k->row.user ? xstrdup(k->row.user) : NULL;
	v.run_as = k->row.node && !k->n_children ? tasks_run_as_user_locked(t, k) : NULL;
	v.submitted_at = k->row.submitted_at;
	v.started_at = k->row.started_at;
	v.finished_at = k->row.finished_at;
	v.changed_at = k->changed_at;
	v.stdout_len = k->out_stored ? k->stored_len[0] : k->out[0].len;
	v.stderr_len = k->out_stored ? k->stored_len[1] : k->out[1].len;
	v.dispatch_id = k->row.dispatch_id ? xstrdup(k->row.dispatch_id) : NULL;
	const char *rid = json_string_value(json_object_get(k->remote_doc, "id"));
	if (rid && k->row.dispatch_id && !strcmp(rid, k->row.dispatch_id))
		v.remote = json_deep_copy(k->remote_doc);
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	*ret = v;
	return 0;
}

/* A group's number in the store (see store_list_page, which numbers them as enum
 * task_group does); -1 for all; -2 for none. */
static int group_number(const char *group)
{
	if (!group)
		return -1;
	enum task_group g = task_group_from_string(group);
	return g == _TASK_GROUP_INVALID ? -2 : (int) g;
}

bool tasks_state_in_group(const char *state, const char *group)
{
	int g = group_number(group);
	if (g == -1)
		return true;
	enum task_state s = task_state_from_string(state);
	switch (g) {
	case TASK_G_QUEUED: return s == TASK_S_QUEUED;
	case TASK_G_RUNNING: return state_active(s);
	case TASK_G_DONE: return s == TASK_S_SUCCEEDED;
	case TASK_G_FAILED: return state_final(s) && s != TASK_S_SUCCEEDED;
	default: return false;
	}
}

int tasks_list_page(struct tasks *t, const char *group, const char *node, int64_t after, size_t max,
		    tasks_page_fn fn, void *arg)
{
	int g = group_number(group);
	if (g == -2)
		return 0;
	/* the store has every task as it is now: states are written through under the lock */
	return store_list_page(t->store, node ? -1 : g, node, after, max, fn, arg);
}

struct id_array {
	char **ids;
	size_t n, cap;
	int64_t last;
};

static bool id_array_add(void *arg, int64_t seq, const char *id)
{
	struct id_array *a = arg;
	if (a->n + 1 >= a->cap) {
		a->cap = a->cap ? 2 * a->cap : 256;
		a->ids = xrealloc(a->ids, a->cap * sizeof(*a->ids));
	}
	a->ids[a->n++] = xstrdup(id);
	a->last = seq;
	return false;
}

char **tasks_list(struct tasks *t, const char *group, const char *node, size_t *ret_n)
{
	struct id_array a = {0};
	a.ids = xcalloc(1, sizeof(*a.ids));
	a.cap = 1;
	for (;;) {
		int r = tasks_list_page(t, group, node, a.last, 4096, id_array_add, &a);
		if (r < 4096)
			break;
	}
	a.ids[a.n] = NULL;
	if (ret_n)
		*ret_n = a.n;
	return a.ids;
}

double tasks_changed_at(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	double r = t->changed_at;
	pthread_mutex_unlock(&t->lock);
	return r;
}

double tasks_node_reliability(struct tasks *t, const char *node, int *ret_completed, int *ret_total)
{
	struct sched_node sn = {.name = node};
	pthread_mutex_lock(&t->lock);
	struct node_load *nl = tasks_node_load_locked(t, node, false);
	if (nl) {
		sn.completed = nl->completed;
		sn.total = nl->total;
		sn.consecutive_failures = nl->consecutive;
	}
	pthread_mutex_unlock(&t->lock);
	if (ret_completed)
		*ret_completed = sn.completed;
	if (ret_total)
		*ret_total = sn.total;
	return sched_reliability(&sn);
}

/* One task as recent-tasks.json shows it: only what status, node and exit_code show to
 * everyone (the spec is its submitter's). */
static json_t *recent_entry(const struct store_task *k)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_string(k->id));
	json_object_set_new(o, "state", json_string(k->state));
	json_object_set_new(o, "node", k->node ? json_string(k->node) : json_null());
	json_object_set_new(o, "exit_code",
			    k->exit_code >= 0 ? json_integer(k->exit_code) : json_null());
	json_object_set_new(o, "parent", k->parent ? json_string(k->parent) : json_null());
	json_object_set_new(o, "submitted_at", json_real(k->submitted_at));
	json_object_set_new(o, "started_at",
			    k->started_at > 0 ? json_real(k->started_at) : json_null());
	json_object_set_new(o, "finished_at",
			    k->finished_at > 0 ? json_real(k->finished_at) : json_null());
	return o;
}

json_t *tasks_recent(struct tasks *t, size_t max)
{
	json_t *doc = json_object(), *active = json_array(), *recent = json_array();
	/* what is in flight (its own list), then the newest by submission: both bounded */
	size_t total = 0;
	pthread_mutex_lock(&t->lock);
	size_t n_active = 0;
	for (struct task *k = t->active; k && n_active < max; k = k->lnext, n_active++)
		json_array_append_new(active, recent_entry(&k->row));
	for (int i = 0; i < TASK_N_STATES; i++)
		total += t->state_counts[i];
	pthread_mutex_unlock(&t->lock);
	struct store_task *rows = NULL;
	size_t n = 0;
	if (store_load_recent(t->store, max, &rows, &n) == 0) {
		for (size_t i = 0; i < n; i++)
			json_array_append_new(recent, recent_entry(&rows[i]));
		store_tasks_free(rows, n);
	}
	json_object_set_new(doc, "total", json_integer((json_int_t) total));
	json_object_set_new(doc, "active", active);
	json_object_set_new(doc, "recent", recent);
	return doc;
}

void tasks_node_counts(struct tasks *t, const char *node, int *ret_active, int *ret_succeeded_hour,
		       int *ret_failed_hour)
{
	double now = clock_wall_s();
	*ret_active = *ret_succeeded_hour = *ret_failed_hour = 0;
	pthread_mutex_lock(&t->lock);
	struct node_load *nl = tasks_node_load_locked(t, node, false);
	if (nl) {
		*ret_active = nl->active;
		tasks_minute_counts_hour(&nl->ended, now, ret_succeeded_hour, ret_failed_hour);
	}
	pthread_mutex_unlock(&t->lock);
}

int tasks_rank(struct tasks *t, const char *text, size_t len, json_t **ret, char *errbuf,
	       size_t errlen)
{
	json_error_t jerr;
	json_t *doc = text ? json_loadb(text, len, 0, &jerr) : json_object();
	if (!doc) {
		snprintf(errbuf, errlen, "line %d, column %d: %s", jerr.line, jerr.column,
			 jerr.text);
		return -EINVAL;
	}
	if (!json_is_object(doc)) {
		json_decref(doc);
		snprintf(errbuf, errlen, "a spec is a JSON object, e.g. {\"type\": \"build\"}");
		return -EINVAL;
	}
	/* a spec to place needs no command: it is not run */
	bool asked_text = json_object_get(doc, "prompt") || json_object_get(doc, "messages");
	if (!json_object_get(doc, "cmd") && !json_object_get(doc, "model"))
		json_object_set_new(doc, "cmd", json_string("true"));
	else if (json_object_get(doc, "model") && !asked_text)
		json_object_set_new(doc, "prompt", json_string("?")); /* nor a prompt */
	char *canon = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	struct task_spec *spec = NULL;
	int r = spec_parse(canon, strlen(canon), &spec, errbuf, errlen);
	free(canon);
	if (r < 0)
		return r;
	struct sched_input in;
	pthread_mutex_lock(&t->lock);
	tasks_sched_input_build_locked(t, &in);
	tasks_prompt_holdings_locked(t, spec, NULL, &in);
	pthread_mutex_unlock(&t->lock);
	struct sched_request req;
	tasks_sched_request_of(spec, &req);
	struct config *cfg = cluster_get_config(t->cluster);
	json_t *rank = sched_rank(cfg, &req, in.nodes, in.n);
	config_unref(cfg);
	json_t *asked = spec_to_json(spec);
	json_object_del(asked, "cmd");
	if (!asked_text)
		json_object_del(asked, "prompt");
	json_object_set_new(rank, "spec", asked);
	tasks_sched_input_free(&in);
	spec_free(spec);
	*ret = rank;
	return 0;
}

int tasks_active_on(struct tasks *t, const char *node)
{
	pthread_mutex_lock(&t->lock);
	int n = tasks_active_on_locked(t, node);
	pthread_mutex_unlock(&t->lock);
	return n;
}

int tasks_read_output(struct tasks *t, const char *id, const char *stream, size_t offset,
		      struct buf *out)
{
	int s = !strcmp(stream, "stderr");
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_lookup_locked(t, id);
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	if (!strcmp(stream, "result")) {
		/* in memory whenever the task is: tasks_task_from_row_locked reads it back */
		size_t n = k->result ? strlen(k->result) : 0;
		if (offset < n)
			buf_append(out, k->result + offset, n - offset);
		tasks_cache_trim_locked(t);
		pthread_mutex_unlock(&t->lock);
		return 0;
	}
	bool stored = k->out_stored;
	if (!stored && offset < k->out[s].len)
		buf_append(out, k->out[s].data + offset, k->out[s].len - offset);
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	if (!stored)
		return 0;
	/* a finished task's output does not change: read without the lock */
	char *data = NULL;
	size_t len = 0;
	int r = store_get_output(t->store, id, stream_names[s], &data, &len);
	if (r == 0 && offset < len)
		buf_append(out, data + offset, len - offset);
	free(data);
	return r;
}

uint64_t tasks_task_generation(struct tasks *t, const char *id)
{
	uint64_t h = 0;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_lookup_locked(t, id);
	if (k) {
		/* what tasks_get and its result show of it (a Slurm job's fields besides),
		 * hashed (FNV-1a): not every change of a reason or an agent's answer moves
		 * changed_at */
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "%.6f|%s|%s|%s|%s|%s|%d|%d|%d|%u|%u|%zu|%zu|%zu|%zu|%d",
			   k->changed_at, k->row.state, k->row.node ? k->row.node : "",
			   k->row.reason ? k->row.reason : "",
			   k->row.placement ? k->row.placement : "",
			   k->row.dispatch_id ? k->row.dispatch_id : "", k->row.exit_code,
			   k->row.attempts, k->row.priority, (unsigned) k->row.uid,
			   (unsigned) k->row.gid, k->out_stored ? k->stored_len[0] : k->out[0].len,
			   k->out_stored ? k->stored_len[1] : k->out[1].len,
			   k->result ? strlen(k->result) : 0, k->n_children,
			   k->row.node && !k->n_children);
		if (json_object_get(k->remote_doc, "slurm_job_id")) {
			char *s = json_dumps(k->remote_doc, JSON_COMPACT | JSON_SORT_KEYS);
			buf_puts(&b, s ? s : "");
			free(s);
		}
		h = 1469598103934665603ull;
		for (size_t i = 0; i < b.len; i++)
			h = (h ^ (unsigned char) b.data[i]) * 1099511628211ull;
		h |= 1; /* never 0, which stands for no task */
		buf_free(&b);
	}
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	return h;
}
