/* Tasks: the prompt runner's side of prompt tasks (backend/prompt.c). */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tasks_set_prompts(struct tasks *t, const struct tasks_prompts *prompts)
{
	t->prompts = *prompts;
}

/* The prompt task whose current attempt is dispatch_id, if it still runs. Lock held. */
static struct task *prompt_attempt_locked(struct tasks *t, const char *id, const char *dispatch_id)
{
	assert_held(&t->lock);
	struct task *k = tasks_find_locked(t, id);
	if (!k || !k->spec->model || !k->row.dispatch_id ||
	    strcmp(k->row.dispatch_id, dispatch_id) || !state_active(k->state))
		return NULL;
	return k;
}

bool tasks_prompt_output(struct tasks *t, const char *id, const char *dispatch_id, const char *data,
			 size_t len)
{
	assert(loop_is_current(t->loop));
	pthread_mutex_lock(&t->lock);
	struct task *k = prompt_attempt_locked(t, id, dispatch_id);
	if (k && !k->out_full[0]) {
		size_t room = TASKS_OUTPUT_MAX - k->out[0].len;
		buf_append(&k->out[0], data, len < room ? len : room);
		if (len > room) {
			static const char cut[] = "\n[clusterfs: output cut at the limit]\n";
			buf_append(&k->out[0], cut, sizeof(cut) - 1);
			k->out_full[0] = true;
		}
		k->changed_at = clock_wall_s();
	}
	bool wanted = k && !k->cancel_requested;
	pthread_mutex_unlock(&t->lock);
	return wanted;
}

void tasks_prompt_end(struct tasks *t, const char *id, const char *dispatch_id, const char *state,
		      const char *why, const char *result)
{
	assert(loop_is_current(t->loop));
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = prompt_attempt_locked(t, id, dispatch_id);
	if (k) {
		tasks_set_str(&k->result, result);
		store_put_output(t->store, id, "result", result, result ? strlen(result) : 0);
		/* the runner names a final state; one this side does not know is a failure */
		enum task_state s = task_state_from_string(state);
		if (!state_final(s))
			s = TASK_S_FAILED;
		k->row.exit_code = s == TASK_S_SUCCEEDED ? 0 : s == TASK_S_FAILED ? 1 : -1;
		store_add_attempt(t->store, id, k->row.attempts, k->row.node, dispatch_id,
				  task_state_names[s], k->row.exit_code, k->row.started_at,
				  clock_wall_s());
		if (s == TASK_S_SUCCEEDED)
			tasks_set_state_locked(t, k, TASK_S_SUCCEEDED, NULL, &wake);
		else
			tasks_requeue_or_fail_locked(t, k, s, why, &wake);
	}
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
}
