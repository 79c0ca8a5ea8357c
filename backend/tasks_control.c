/* Tasks: the retry policy, and the ctl commands (cancel, retry, priority). */
#include "backend/tasks_internal.h"
#include "backend/ctl.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Exponential backoff: the wait before attempt n + 1 after n failures in a row. */
static uint64_t retry_delay_us(unsigned failures)
{
	uint64_t d = RETRY_FIRST_US;
	for (unsigned i = 1; i < failures && d < RETRY_MAX_US; i++)
		d *= 2;
	return d < RETRY_MAX_US ? d : RETRY_MAX_US;
}

bool tasks_retry_policy(enum retry_what what, const struct task *k, enum task_state ended,
			unsigned failures, uint64_t *ret_due_us)
{
	switch (what) {
	case RETRY_ATTEMPT:
		/* a cancel is never undone, and a copy of a node:"all" task is its parent's */
		return ended != TASK_S_CANCELLED && !k->cancel_requested &&
		       k->row.attempts <= k->spec->retries && !k->row.parent;
	case RETRY_CANCEL: return true;
	case RETRY_DISPATCH:
	case RETRY_FETCH:
	case RETRY_STAGE: break;
	}
	/* the agent runs a dispatch id at most once, so a dispatch is sent again however
	 * often it failed; fetches and stagings give up */
	if (ret_due_us)
		*ret_due_us = clock_now_us() + retry_delay_us(failures);
	if (what == RETRY_FETCH)
		return failures < FETCH_TRIES;
	if (what == RETRY_STAGE)
		return failures <= STAGE_TRIES;
	return true;
}

/* Forgets the retry state of the previous attempt. */
static void attempt_reset_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	free(k->result);
	k->result = NULL;
	for (int s = 0; s < N_STREAMS; s++) {
		k->fetch_failures[s] = 0;
		k->fetch_due_us[s] = 0;
	}
	free(k->output_note);
	k->output_note = NULL;
	k->dispatch_failures = 0;
	k->dispatch_due_us = 0;
	k->collected = k->staging = false;
	json_decref(k->staged);
	k->staged = NULL;
}

void tasks_requeue_or_fail_locked(struct tasks *t, struct task *k, enum task_state state,
				  const char *why, struct waiter **wake)
{
	assert_held(&t->lock);
	if (tasks_retry_policy(RETRY_ATTEMPT, k, state, (unsigned) k->row.attempts, NULL)) {
		char reason[512];
		snprintf(reason, sizeof(reason), "retry %d of %d after %s%s%s", k->row.attempts,
			 k->spec->retries, task_state_names[state], why ? ": " : "",
			 why ? why : "");
		store_add_attempt(t->store, k->row.id, k->row.attempts, k->row.node,
				  k->row.dispatch_id, task_state_names[state], k->row.exit_code,
				  k->row.started_at, clock_wall_s());
		if (k->spec->model)
			tasks_set_str(&k->avoid_node, k->row.node); /* retried on another node */
		tasks_set_str(&k->row.node, NULL);
		tasks_set_str(&k->row.dispatch_id, NULL);
		k->row.exit_code = -1;
		for (int s = 0; s < N_STREAMS; s++) {
			buf_free(&k->out[s]);
			k->remote_size[s] = 0;
			k->out_full[s] = false;
		}
		attempt_reset_locked(t, k);
		tasks_set_state_locked(t, k, TASK_S_QUEUED, reason, wake);
		return;
	}
	tasks_set_state_locked(t, k, state, why, wake);
}

/* ctl "cancel": a queued task ends now; a running one when its node confirms. */
static int ctl_cancel_locked(struct tasks *t, struct task *k, uid_t uid, struct waiter **wake,
			     char *errbuf, size_t errlen)
{
	assert_held(&t->lock);
	const char *id = k->row.id;
	if (state_final(k->state)) {
		snprintf(errbuf, errlen, "task %s has ended (%s)", id, k->row.state);
		return -EBUSY;
	}
	for (size_t i = 0; i < k->n_children; i++) {
		struct task *c = tasks_find_locked(t, k->children[i]);
		if (c && !state_final(c->state)) {
			c->cancel_requested = true;
			if (c->state == TASK_S_QUEUED)
				tasks_set_state_locked(t, c, TASK_S_CANCELLED,
						       "cancelled before it ran", wake);
		}
	}
	k->cancel_requested = true;
	if (k->state == TASK_S_QUEUED && !k->n_children)
		tasks_set_state_locked(t, k, TASK_S_CANCELLED, "cancelled before it ran", wake);
	else if (!k->n_children)
		cluster_add_event(t->cluster, "task", id, "cancel requested by uid %u",
				  (unsigned) uid);
	return 0;
}

/* ctl "retry": a task that ended unsuccessfully is queued again, as new. */
static int ctl_retry_locked(struct tasks *t, struct task *k, struct waiter **wake, char *errbuf,
			    size_t errlen)
{
	assert_held(&t->lock);
	if (!state_final(k->state) || k->state == TASK_S_SUCCEEDED || k->n_children) {
		snprintf(errbuf, errlen,
			 "only a failed, timed out, cancelled or lost task can be "
			 "retried; %s is %s",
			 k->row.id, k->row.state);
		return -EBUSY;
	}
	k->cancel_requested = k->cancel_sent = false;
	tasks_set_str(&k->row.node, NULL);
	tasks_set_str(&k->row.dispatch_id, NULL);
	k->row.exit_code = -1;
	k->row.finished_at = 0;
	for (int s = 0; s < N_STREAMS; s++) {
		buf_free(&k->out[s]);
		k->remote_size[s] = 0;
		k->out_full[s] = false;
		k->stored_len[s] = 0;
	}
	k->out_stored = false; /* the next attempt's output replaces the stored one */
	attempt_reset_locked(t, k);
	tasks_set_state_locked(t, k, TASK_S_QUEUED, "retried by hand", wake);
	return 0;
}

/* ctl "priority P": P0..P3 (or 0..3). */
static int ctl_priority_locked(struct tasks *t, struct task *k, const char *arg, char *errbuf,
			       size_t errlen)
{
	assert_held(&t->lock);
	int p = -1;
	if ((arg[0] == 'P' || arg[0] == 'p') && arg[1] >= '0' && arg[1] <= '3' && !arg[2])
		p = arg[1] - '0';
	else if (arg[0] >= '0' && arg[0] <= '3' && !arg[1])
		p = arg[0] - '0';
	if (p < 0) {
		snprintf(errbuf, errlen, "priority takes P0, P1, P2 or P3, not \"%s\"", arg);
		return -EINVAL;
	}
	k->row.priority = p;
	tasks_persist_locked(t, k);
	cluster_add_event(t->cluster, "task", k->row.id, "priority P%d", p);
	return 0;
}

int tasks_control(struct tasks *t, const char *id, const char *cmd, uid_t uid, char *errbuf,
		  size_t errlen)
{
	static const struct ctl_word words[] = {{"cancel", NULL, NULL},
						{"retry", NULL, NULL},
						{"priority", "P0..P3", "a priority"}};
	struct ctl_command ctl;
	int pr = ctl_parse(cmd, words, 3, &ctl, errbuf, errlen);
	if (pr < 0)
		return pr;
	const char *word = words[ctl.word].name;
	char arg[32];
	snprintf(arg, sizeof(arg), "%s", ctl.arg ? ctl.arg : "");
	ctl_command_clear(&ctl);
	struct waiter *wake = NULL;
	int r = 0;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_lookup_locked(t, id);
	if (!k) {
		r = -ENOENT;
		goto out_unlock;
	}
	if (uid != 0 && uid != k->row.uid) {
		snprintf(errbuf, errlen, "only uid %u (who submitted %s) or root may do that",
			 (unsigned) k->row.uid, id);
		r = -EPERM;
		goto out_unlock;
	}
	if (!strcmp(word, "cancel")) {
		r = ctl_cancel_locked(t, k, uid, &wake, errbuf, errlen);
	} else if (!strcmp(word, "retry")) {
		r = ctl_retry_locked(t, k, &wake, errbuf, errlen);
	} else {
		r = ctl_priority_locked(t, k, arg, errbuf, errlen);
	}
out_unlock:
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
	if (r == 0)
		tasks_post_schedule(t);
	return r;
}
