/* Cache invalidation: a thread of its own, so neither the loop thread nor a FUSE worker
 * ever waits on the kernel. */
#include "fs/fs_internal.h"
#include "fs/inode.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_NOTIFY_QUEUE 65536   /* a batch: every file of 1,000 nodes at a config reload */
#define NOTIFY_STOP_US   1000000 /* how long a stop waits for a notification in flight */

struct notify {
	uint64_t ino; /* inode to invalidate, or the parent of `name` */
	char *name;   /* when set: invalidate this entry of ino */
	struct notify *next;
};

static void *notifier_main(void *arg)
{
	struct fs *f = arg;
	pthread_mutex_lock(&f->lock);
	for (;;) {
		while (!f->queue && !f->stop)
			pthread_cond_wait(&f->cond, &f->lock);
		if (f->stop)
			break;
		struct notify *q = f->queue;
		f->queue = NULL;
		f->n_queue = 0;
		f->tops_queued = false;
		struct fuse_session *se = f->se;
		pthread_mutex_unlock(&f->lock);
		while (q) {
			struct notify *next = q->next;
			if (q->name)
				fuse_lowlevel_notify_inval_entry(se, q->ino, q->name,
								 strlen(q->name));
			else
				fuse_lowlevel_notify_inval_inode(se, q->ino, 0, 0);
			free(q->name);
			free(q);
			q = next;
		}
		pthread_mutex_lock(&f->lock);
	}
	f->notifier_done = true;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return NULL;
}

static void notify_free_list(struct notify *q)
{
	while (q) {
		struct notify *next = q->next;
		free(q->name);
		free(q);
		q = next;
	}
}

/* Stopping ends the notifications while FUSE requests are still answered: an entry
 * invalidation waits for its directory's lock, which a request on that directory holds
 * until the daemon answers it, so the notifier must be done before the answering stops.
 * The wait is bounded: a notification that is still stuck then is left behind (its
 * thread detached) rather than blocking the stop. */
void fs_set_session(struct fs *f, struct fuse_session *se)
{
	if (se) {
		pthread_mutex_lock(&f->lock);
		f->se = se;
		f->stop = false;
		f->notifier_done = false;
		pthread_mutex_unlock(&f->lock);
		if (pthread_create(&f->notifier, NULL, notifier_main, f) == 0)
			f->notifier_running = true;
		return;
	}
	pthread_mutex_lock(&f->lock);
	f->stop = true;
	f->se = NULL;
	notify_free_list(f->queue);
	f->queue = NULL;
	f->n_queue = 0;
	pthread_cond_broadcast(&f->cond);
	if (f->notifier_running) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += NOTIFY_STOP_US / 1000000;
		while (!f->notifier_done &&
		       pthread_cond_timedwait(&f->cond, &f->lock, &until) != ETIMEDOUT)
			;
	}
	bool done = f->notifier_done;
	pthread_mutex_unlock(&f->lock);
	if (f->notifier_running) {
		if (done) {
			pthread_join(f->notifier, NULL);
		} else {
			log_warn(
				"a cache invalidation is still in the kernel; stopping without it");
			pthread_detach(f->notifier);
			f->notifier_stuck = true;
		}
	}
	f->notifier_running = false;
}

/* Caller holds f->lock. */
static void notify_push_locked(struct fs *f, uint64_t ino, const char *name)
{
	assert_held(&f->lock);
	if (!f->se || f->n_queue >= MAX_NOTIFY_QUEUE)
		return;
	struct notify *q = xcalloc(1, sizeof(*q));
	q->ino = ino;
	q->name = name ? xstrdup(name) : NULL;
	q->next = f->queue;
	f->queue = q;
	f->n_queue++;
}

struct collect {
	struct fs *f;
	uint64_t *inos;
	size_t n, cap;
	char **paths;
};

static void collect_ino(void *arg, uint64_t ino, const char *path)
{
	struct collect *c = arg;
	if (c->n == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 32;
		c->inos = xrealloc(c->inos, c->cap * sizeof(*c->inos));
		c->paths = xrealloc(c->paths, c->cap * sizeof(*c->paths));
	}
	c->inos[c->n] = ino;
	c->paths[c->n++] = xstrdup(path);
}

void fs_on_cluster_change(void *arg, const char *node)
{
	struct fs *f = arg;
	struct collect col = {.f = f};
	if (node) {
		/* inode numbers are path hashes: ask for the node's files directly */
		struct tree_entry e = {.node = (char *) node};
		for (size_t i = 0; i < tree_n_rows; i++) {
			if (!(tree_rows[i].inval & TREE_INVAL_NODE))
				continue;
			char *path = tree_format(tree_rows[i].pattern, &e);
			uint64_t ino = path ? inode_hash_path(path) : 0;
			if (path && inode_table_known(f->itab, ino))
				collect_ino(&col, ino, path);
			free(path);
		}
	} else {
		inode_table_foreach(f->itab, "/nodes", collect_ino, &col);
	}
	pthread_mutex_lock(&f->lock);
	size_t queued = f->n_queue;
	if (!f->tops_queued) {
		/* one invalidation of the cluster-wide files per batch is enough */
		for (size_t i = 0; i < tree_n_rows; i++) {
			uint64_t ino = inode_hash_path(tree_rows[i].pattern);
			if ((tree_rows[i].inval & TREE_INVAL_CLUSTER) &&
			    inode_table_known(f->itab, ino))
				notify_push_locked(f, ino, NULL);
		}
		f->tops_queued = true;
	}
	for (size_t i = 0; i < col.n; i++) {
		if (!node) {
			/* a node that vanished: drop its name from the kernel's dentry cache */
			struct tree_entry e;
			if (tree_classify(&f->ctx, col.paths[i], &e) == 0) {
				tree_entry_clear(&e);
			} else {
				char *parent = tree_parent(col.paths[i]);
				const char *base = strrchr(col.paths[i], '/') + 1;
				notify_push_locked(f, inode_hash_path(parent), base);
				free(parent);
			}
		}
		notify_push_locked(f, col.inos[i], NULL);
		free(col.paths[i]);
	}
	/* nothing the kernel holds changed (a heartbeat of a node nobody looks at): the
	 * notifier sleeps on, no wake-up per heartbeat */
	if (f->n_queue > queued)
		pthread_cond_signal(&f->cond);
	pthread_mutex_unlock(&f->lock);
	free(col.inos);
	free(col.paths);
}
