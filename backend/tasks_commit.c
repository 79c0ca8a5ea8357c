/* Tasks: submission, checked and committed durably in groups (one fsync for many). */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Who submits: the FUSE request's uid and gid, and the name the uid has here. */
struct submitter {
	uid_t uid;
	gid_t gid;
	const char *user; /* or NULL when the uid has no name on this machine */
};

static struct task *task_from_spec(const char *id, struct task_spec *spec,
				   const struct submitter *who, const char *parent)
{
	struct task *k = xcalloc(1, sizeof(*k));
	k->spec = spec;
	k->spec_json = spec_to_json(spec);
	k->row.id = xstrdup(id);
	k->row.parent = parent ? xstrdup(parent) : NULL;
	k->row.spec = json_dumps(k->spec_json, JSON_COMPACT | JSON_PRESERVE_ORDER);
	k->row.state = xstrdup(task_state_names[TASK_S_QUEUED]);
	k->state = TASK_S_QUEUED;
	k->row.exit_code = -1;
	k->row.priority = spec->priority;
	k->row.uid = who->uid;
	k->row.gid = who->gid;
	k->row.user = who->user ? xstrdup(who->user) : NULL;
	k->row.submitted_at = clock_wall_s();
	k->changed_at = k->row.submitted_at;
	for (int s = 0; s < N_STREAMS; s++)
		buf_init(&k->out[s]);
	return k;
}

/* One submission waiting for its commit. */
struct commit {
	struct store_task *rows;
	size_t n;
	int result;
	bool done;
	struct commit *next;
};

/* Commits rows durably. Submissions that arrive while a commit runs are committed
 * together in the next one: one fsync for many close() calls. The first waiter becomes
 * the leader and commits for everyone queued; the rest sleep until theirs is done. */
static int group_commit(struct tasks *t, struct store_task *rows, size_t n)
{
	struct commit me = {.rows = rows, .n = n};
	pthread_mutex_lock(&t->commit_lock);
	struct commit **tail = &t->commits;
	while (*tail)
		tail = &(*tail)->next;
	*tail = &me;
	while (!me.done && t->committing)
		pthread_cond_wait(&t->commit_cond, &t->commit_lock);
	if (me.done) {
		pthread_mutex_unlock(&t->commit_lock);
		return me.result;
	}
	t->committing = true;
	while (t->commits) {
		struct commit *batch = t->commits;
		t->commits = NULL;
		pthread_mutex_unlock(&t->commit_lock);
		size_t total = 0;
		for (struct commit *c = batch; c; c = c->next)
			total += c->n;
		struct store_task *all = xcalloc(total, sizeof(*all));
		size_t k = 0;
		for (struct commit *c = batch; c; c = c->next)
			for (size_t i = 0; i < c->n; i++)
				all[k++] = c->rows[i];
		int r = store_insert_tasks(t->store, all, total);
		k = 0;
		for (struct commit *c = batch; c; c = c->next) {
			if (r == 0) {
				for (size_t i = 0; i < c->n; i++)
					c->rows[i].seq = all[k++].seq;
				c->result = 0;
			} else {
				/* one bad apple: commit each on its own, so only it fails */
				c->result = batch->next
						    ? store_insert_tasks(t->store, c->rows, c->n)
						    : r;
			}
		}
		free(all);
		pthread_mutex_lock(&t->commit_lock);
		for (struct commit *c = batch, *next; c; c = next) {
			next = c->next;
			c->done = true;
		}
		pthread_cond_broadcast(&t->commit_cond);
	}
	t->committing = false;
	pthread_cond_broadcast(&t->commit_cond);
	pthread_mutex_unlock(&t->commit_lock);
	return me.result;
}

/* The variables that say who a process is: a task's come from the user it runs as. */
static const char *const identity_vars[] = {"USER", "LOGNAME", "HOME", "SHELL", NULL};

/* The policy checks of tasks.* that need no lock: who may submit, and a spec's env. */
static int check_submitter(const struct config *cfg, const struct submitter *who,
			   const struct task_spec *spec, char *errbuf, size_t errlen)
{
	if (who->uid == 0 && !cfg->tasks.allow_root) {
		snprintf(errbuf, errlen,
			 "root may not submit tasks to this cluster (they would run as root on "
			 "the nodes); submit as a user, or set \"tasks\": {\"allow_root\": "
			 "true} in the config");
		return -EPERM;
	}
	if (!who->user && cfg->tasks.run_as == CFG_RUN_AS_SUBMITTER) {
		snprintf(errbuf, errlen,
			 "uid %u has no user name on this machine, and tasks run as their "
			 "submitter's user on the nodes",
			 (unsigned) who->uid);
		return -EPERM;
	}
	for (size_t i = 0; spec->env && identity_vars[i]; i++) {
		if (json_object_get(spec->env, identity_vars[i])) {
			snprintf(errbuf, errlen,
				 "field \"env\" may not set %s: a task's identity comes from the "
				 "user it runs as",
				 identity_vars[i]);
			return -EINVAL;
		}
	}
	return 0;
}

/* The checks of a task's name and size, before its spec is parsed. */
static int check_name(const char *id, size_t len, char *errbuf, size_t errlen)
{
	if (len > TASKS_SPEC_MAX) {
		snprintf(errbuf, errlen, "the spec is %zu bytes; the limit is %u", len,
			 TASKS_SPEC_MAX);
		return -EFBIG;
	}
	if (!spec_name_is_valid(id)) {
		snprintf(errbuf, errlen,
			 "\"%s\" is not a valid task name: use letters, digits, '.', '_' and '-'",
			 id);
		return -EINVAL;
	}
	if (!strcmp(id, "new") || task_group_from_string(id) != _TASK_GROUP_INVALID) {
		snprintf(errbuf, errlen,
			 "\"%s\" is reserved (a directory of tasks/); pick "
			 "another name",
			 id);
		return -EINVAL;
	}
	return 0;
}

/* The checks that need the table: the submitter's quota, the name is free, the tasks in
 * "after" and the node exist. Lock held. */
static int check_table_locked(struct tasks *t, const char *id, const struct task_spec *spec,
			      const struct submitter *who, int queued_max, char *errbuf,
			      size_t errlen)
{
	assert_held(&t->lock);
	int unfinished = tasks_user_load_locked(t, who->uid)->unfinished;
	if (unfinished >= queued_max) {
		snprintf(errbuf, errlen,
			 "%s has %d unfinished tasks, the most one user may have "
			 "(tasks.queued_per_user); wait for some to end",
			 who->user ? who->user : "this user", unfinished);
		return -EDQUOT;
	}
	if (json_object_get(t->reserved, id) || tasks_lookup_locked(t, id)) {
		snprintf(errbuf, errlen, "task %s exists already", id);
		return -EEXIST;
	}
	for (size_t i = 0; i < spec->n_after; i++) {
		if (!tasks_lookup_locked(t, spec->after[i])) {
			snprintf(errbuf, errlen, "field \"after\" names %s, which is not a task",
				 spec->after[i]);
			return -EINVAL;
		}
	}
	bool all = spec->node && !strcmp(spec->node, "all");
	if (spec->node && !all && strcmp(spec->node, "any") &&
	    !cluster_has_node(t->cluster, spec->node) && !tasks_target_owns(t, spec->node)) {
		snprintf(errbuf, errlen,
			 "field \"node\" names %s, which is not a node of this cluster",
			 spec->node);
		return -EINVAL;
	}
	return 0;
}

/* A copy of a node:"all" task for one node: the same spec, placed there. */
static struct task *copy_for_node(struct task *parent, const char *id, const char *node,
				  const struct submitter *who)
{
	struct buf cid;
	buf_init(&cid);
	buf_printf(&cid, "%s@%s", id, node);
	struct task_spec *cs = NULL;
	char e2[256];
	json_t *cj = json_deep_copy(parent->spec_json);
	json_object_set_new(cj, "node", json_string(node));
	char *ctext = json_dumps(cj, JSON_COMPACT);
	json_decref(cj);
	if (spec_parse(ctext, strlen(ctext), &cs, e2, sizeof(e2)) < 0)
		abort(); /* a canonical spec always parses */
	free(ctext);
	struct task *c = task_from_spec(cid.data, cs, who, id);
	parent->children[parent->n_children++] = xstrdup(cid.data);
	buf_free(&cid);
	return c;
}

/* A node:"all" task and its copies, one per eligible node, in *ret_batch (the parent
 * first); -EINVAL when no node is eligible. Lock held. */
static int copies_locked(struct tasks *t, struct task *parent, const char *id,
			 const struct submitter *who, struct task ***ret_batch, size_t *ret_n,
			 char *errbuf, size_t errlen)
{
	assert_held(&t->lock);
	const struct task_spec *spec = parent->spec;
	struct sched_input in;
	tasks_sched_input_build_locked(t, &in);
	struct sched_request req;
	tasks_sched_request_of(spec, &req);
	tasks_prompt_holdings_locked(t, spec, NULL, &in);
	req.node = "any";
	size_t *idx = xcalloc(in.n + 1, sizeof(*idx));
	struct buf why;
	buf_init(&why);
	struct config *pcfg = cluster_get_config(t->cluster);
	size_t n = sched_place_all(pcfg, &req, in.nodes, in.n, idx, &why);
	config_unref(pcfg);
	if (n == 0) {
		snprintf(errbuf, errlen, "node \"all\": %s", why.data ? why.data : "no node");
		buf_free(&why);
		free(idx);
		tasks_sched_input_free(&in);
		return -EINVAL;
	}
	struct task **batch = xcalloc(n + 1, sizeof(*batch));
	size_t n_batch = 1;
	batch[0] = parent;
	parent->children = xcalloc(n, sizeof(char *));
	for (size_t i = 0; i < n; i++)
		batch[n_batch++] = copy_for_node(parent, id, in.nodes[idx[i]].name, who);
	tasks_set_str(&parent->row.placement, why.data);
	buf_free(&why);
	free(idx);
	tasks_sched_input_free(&in);
	*ret_batch = batch;
	*ret_n = n_batch;
	return 0;
}

/* Commits a batch (the lock dropped meanwhile) and puts it in the table. The lock is held
 * on entry and dropped on return; the batch is freed on failure. */
static int commit_batch_locked(struct tasks *t, const char *id, struct task **batch, size_t n_batch,
			       char *errbuf, size_t errlen)
{
	assert_held(&t->lock);
	/* The commit (an fsync) happens without the lock, so that other submissions and the
	 * backend thread go on meanwhile; the id is held so no one else takes it. */
	json_object_set_new(t->reserved, id, json_true());
	pthread_mutex_unlock(&t->lock);
	struct store_task *rows = xcalloc(n_batch, sizeof(*rows));
	for (size_t i = 0; i < n_batch; i++)
		rows[i] = batch[i]->row;
	int r = group_commit(t, rows, n_batch);
	pthread_mutex_lock(&t->lock);
	json_object_del(t->reserved, id);
	if (r < 0) {
		pthread_mutex_unlock(&t->lock);
		free(rows);
		for (size_t i = 0; i < n_batch; i++)
			tasks_task_free(batch[i]);
		free(batch);
		snprintf(errbuf, errlen, "cannot store the task: %s",
			 r == -ENOSPC ? "the state directory's disk is full" : strerror(-r));
		return r == -EEXIST ? -EEXIST : r;
	}
	for (size_t i = 0; i < n_batch; i++) {
		batch[i]->row.seq = rows[i].seq;
		tasks_add_locked(t, batch[i], false);
	}
	free(rows);
	free(batch);
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

int tasks_submit(struct tasks *t, const char *id, const char *text, size_t len, uid_t uid,
		 gid_t gid, char *errbuf, size_t errlen)
{
	int r = check_name(id, len, errbuf, errlen);
	if (r < 0)
		return r;
	struct task_spec *spec = NULL;
	r = spec_parse(text, len, &spec, errbuf, errlen);
	if (r < 0)
		return r;
	/* names, not numbers, travel to the nodes: uids differ between machines */
	struct passwd pw, *pwres = NULL;
	char pwbuf[4096];
	getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &pwres);
	struct submitter who = {.uid = uid, .gid = gid, .user = pwres ? pwres->pw_name : NULL};
	struct config *cfg = cluster_get_config(t->cluster);
	r = check_submitter(cfg, &who, spec, errbuf, errlen);
	int queued_max = cfg->tasks.queued_per_user;
	config_unref(cfg);
	if (r < 0) {
		spec_free(spec);
		return r;
	}

	pthread_mutex_lock(&t->lock);
	r = check_table_locked(t, id, spec, &who, queued_max, errbuf, errlen);
	if (r < 0) {
		tasks_cache_trim_locked(t);
		pthread_mutex_unlock(&t->lock);
		spec_free(spec);
		return r;
	}
	bool all = spec->node && !strcmp(spec->node, "all");
	struct task *parent = task_from_spec(id, spec, &who, NULL);
	struct task **batch = NULL;
	size_t n_batch = 1;
	if (all) {
		r = copies_locked(t, parent, id, &who, &batch, &n_batch, errbuf, errlen);
		if (r < 0) {
			pthread_mutex_unlock(&t->lock);
			tasks_task_free(parent);
			return r;
		}
	} else {
		batch = xcalloc(1, sizeof(*batch));
		batch[0] = parent;
	}
	r = commit_batch_locked(t, id, batch, n_batch, errbuf, errlen);
	if (r < 0)
		return r;
	cluster_add_event(t->cluster, "task", id, "submitted by %s (uid %u)%s",
			  who.user ? who.user : "?", (unsigned) uid,
			  all ? " for every eligible node" : "");
	tasks_post_schedule(t);
	return 0;
}
