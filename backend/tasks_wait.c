/* Tasks: waiters for a task's end, and tombstones for waits cancelled early. */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t tasks_wait_new_id(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	uint64_t id = t->next_wait++;
	pthread_mutex_unlock(&t->lock);
	return id;
}

static bool tombstone_take_locked(struct tasks *t, uint64_t wait)
{
	assert_held(&t->lock);
	for (size_t i = 0; i < TOMBSTONES; i++) {
		if (t->tombstones[i] == wait) {
			t->tombstones[i] = 0;
			return true;
		}
	}
	return false;
}

int tasks_wait(struct tasks *t, const char *id, uint64_t wait, tasks_wait_fn done, void *arg)
{
	pthread_mutex_lock(&t->lock);
	if (tombstone_take_locked(t, wait)) {
		pthread_mutex_unlock(&t->lock);
		return -EINTR;
	}
	struct task *k = tasks_lookup_locked(t, id);
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	if (state_final(k->state)) {
		tasks_cache_trim_locked(t);
		pthread_mutex_unlock(&t->lock);
		return 1;
	}
	struct waiter *w = xcalloc(1, sizeof(*w));
	w->id = wait;
	w->done = done;
	w->arg = arg;
	w->next = k->waiters;
	k->waiters = w;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

void *tasks_wait_cancel(struct tasks *t, uint64_t wait)
{
	pthread_mutex_lock(&t->lock);
	/* waiters wait for unfinished tasks: those on the work lists */
	struct task *lists[2] = {t->queued, t->active};
	for (int l = 0; l < 2; l++)
		for (struct task *k = lists[l]; k; k = k->lnext) {
			for (struct waiter **pp = &k->waiters; *pp; pp = &(*pp)->next) {
				if ((*pp)->id == wait) {
					struct waiter *w = *pp;
					*pp = w->next;
					void *arg = w->arg;
					free(w);
					pthread_mutex_unlock(&t->lock);
					return arg;
				}
			}
		}
	/* not registered (yet): leave a mark so that a late registration fails */
	t->tombstones[t->next_tombstone++ % TOMBSTONES] = wait;
	pthread_mutex_unlock(&t->lock);
	return NULL;
}
