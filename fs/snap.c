/* Snapshots by generation: a kept file's bytes, rendered once per change of its data and
 * shared by the stats, lookups and opens until the next change (fs_internal.h). */
#include "fs/fs_internal.h"
#include "fs/inode.h"
#include "fs/render.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* What a stat reported is what an open then reads (DESIGN §2). A file whose row keeps a
 * snapshot (TREE_CACHE_GEN, _HELD) is rendered once per change of the data behind it (its
 * generation, struct stamp): stat, lookup and every open until the next change share
 * those bytes, their size and their mtime, and a stat never renders them again. For the
 * files an open refreshes (health, status: _HELD), a stat refreshes them first when
 * stale, and an open of the same inode within probe.max_age_ms (at most HELD_US) serves
 * the snapshot the stat made even when a probe changed the data meanwhile: it is as
 * fresh as the open's own refresh would make it. NFS and SMB servers take the size from a
 * GETATTR and read up to it; without this, a probe landing between the two changes the
 * document under them. */
#define SNAP_SLOTS 8192
#define HELD_US    (1000 * 1000ull) /* at most; probe.max_age_ms when shorter */

/* The generation of a file's data: what its row's gen column names. Equal stamps, equal
 * bytes. */
struct stamp {
	uint64_t cluster, task, node_models;
	double node, config, tasks, models, ledger, fetched, events;
};

struct snap {
	uint64_t ino; /* 0: empty */
	struct stamp stamp;
	uint64_t at_us; /* when rendered */
	double mtime;
	struct blob *bytes;
	bool told;  /* a stat or lookup gave the kernel this size */
	bool paged; /* an open let the page cache hold these bytes */
};

static struct blob *blob_new(const struct buf *b)
{
	struct blob *x = xcalloc(1, sizeof(*x) + b->len + 1);
	x->refs = 1;
	x->len = b->len;
	if (b->len)
		memcpy(x->data, b->data, b->len);
	return x;
}

static struct blob *blob_ref(struct blob *x)
{
	if (x)
		__atomic_add_fetch(&x->refs, 1, __ATOMIC_RELAXED);
	return x;
}

void blob_unref(struct blob *x)
{
	if (x && __atomic_sub_fetch(&x->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(x);
}

struct snap *snap_table_new(void)
{
	return xcalloc(SNAP_SLOTS, sizeof(struct snap));
}

void snap_table_free(struct snap *snaps)
{
	for (size_t i = 0; snaps && i < SNAP_SLOTS; i++)
		blob_unref(snaps[i].bytes);
	free(snaps);
}

/* Files kept as snapshots between a stat and the opens after it (TREE_CACHE_GEN, _HELD). */
bool entry_is_kept(const struct tree_entry *e)
{
	return e->row->cache == TREE_CACHE_GEN || e->row->cache == TREE_CACHE_HELD;
}

/* The generation of e's data now. Read before rendering: the bytes are then at least as
 * new as the stamp says. */
static void stamp_of(struct fs *f, const struct tree_entry *e, struct stamp *ret)
{
	unsigned gen = e->row->gen;
	memset(ret, 0, sizeof(*ret));
	if (gen & TREE_GEN_CLUSTER)
		ret->cluster = cluster_generation(f->cluster);
	if ((gen & TREE_GEN_NODE) && e->node) {
		ret->node = cluster_node_changed_at(f->cluster, e->node);
		ret->config = cluster_changed_at(f->cluster); /* address, role, tier */
	}
	if (gen & (TREE_GEN_MODELS | TREE_GEN_TASK | TREE_GEN_LEDGER))
		ret->config = cluster_changed_at(f->cluster);
	if (gen & TREE_GEN_TASKS)
		ret->tasks = tasks_changed_at(f->ctx.tasks);
	if (gen & TREE_GEN_MODELS)
		ret->models = models_changed_at(f->ctx.models);
	if ((gen & TREE_GEN_TASK) && e->task)
		ret->task = tasks_task_generation(f->ctx.tasks, e->task);
	if (gen & TREE_GEN_LEDGER)
		ret->ledger = ledger_changed_at(f->ctx.ledger);
	if (gen & TREE_GEN_FETCH)
		ret->fetched = ledger_fetched_at(f->ctx.ledger);
	if ((gen & TREE_GEN_NODE_MODELS) && e->node)
		ret->node_models = models_node_refreshed_us(f->ctx.models, e->node);
	if (gen & TREE_GEN_EVENTS)
		cluster_events_size(f->cluster, &ret->events);
}

static bool stamp_equal(const struct stamp *a, const struct stamp *b)
{
	return a->cluster == b->cluster && a->task == b->task && a->node_models == b->node_models &&
	       a->node == b->node && a->config == b->config && a->tasks == b->tasks &&
	       a->models == b->models && a->ledger == b->ledger && a->fetched == b->fetched &&
	       a->events == b->events;
}

/* The hold window of _HELD snapshots: probe.max_age_ms, at most HELD_US. */
static uint64_t held_window_us(struct fs *f)
{
	struct config *cfg = cluster_get_config(f->cluster);
	uint64_t window = (uint64_t) cfg->probe.max_age_ms * 1000u;
	config_unref(cfg);
	return window > HELD_US ? HELD_US : window;
}

/* Caller holds f->snap_lock: whether slot s holds ino's snapshot for data at stamp now.
 * For an open (for_stat false), a _HELD one also holds within the window after the last
 * stat that reported it or the open that rendered it, whatever changed since (that stat
 * or open refreshed it first), and past it while its node is fresh (no refresh would
 * change it). */
static bool snap_valid_locked(struct fs *f, const struct snap *s, uint64_t ino,
			      const struct tree_entry *e, const struct stamp *now, bool for_stat,
			      uint64_t window)
{
	assert_held(&f->snap_lock);
	if (s->ino != ino || !s->bytes)
		return false;
	if (e->row->cache != TREE_CACHE_HELD || for_stat)
		return stamp_equal(&s->stamp, now);
	if (clock_now_us() - s->at_us < window)
		return true;
	return stamp_equal(&s->stamp, now) && e->row->refresh == TREE_REFRESH_NODE &&
	       cluster_node_is_fresh(f->cluster, e->node);
}

/* True when ino has a snapshot an open or stat may serve now without refreshing. */
bool snap_ready(struct fs *f, uint64_t ino, const struct tree_entry *e)
{
	struct stamp now;
	stamp_of(f, e, &now);
	uint64_t window = e->row->cache == TREE_CACHE_HELD ? held_window_us(f) : 0;
	pthread_mutex_lock(&f->snap_lock);
	bool ok = snap_valid_locked(f, &f->snaps[ino % SNAP_SLOTS], ino, e, &now, false, window);
	pthread_mutex_unlock(&f->snap_lock);
	return ok;
}

/* ino's snapshot, rendered now if there is none for the data as it is: 0 or -errno. A
 * stat (for_stat) marks it told and, for a _HELD one, starts its hold window; an open that
 * lets the page cache hold it marks it paged (snap_paged). */
int snap_get(struct fs *f, uint64_t ino, const struct tree_entry *e, bool for_stat,
	     struct snap_use *ret)
{
	struct stamp now;
	stamp_of(f, e, &now);
	uint64_t window = e->row->cache == TREE_CACHE_HELD ? held_window_us(f) : 0;
	pthread_mutex_lock(&f->snap_lock);
	struct snap *s = &f->snaps[ino % SNAP_SLOTS];
	if (snap_valid_locked(f, s, ino, e, &now, for_stat, window)) {
		*ret = (struct snap_use){blob_ref(s->bytes), s->mtime, s->told, s->paged};
		if (for_stat) {
			s->told = true;
			s->at_us = clock_now_us();
		}
		pthread_mutex_unlock(&f->snap_lock);
		return 0;
	}
	pthread_mutex_unlock(&f->snap_lock);
	struct buf b;
	double mtime;
	buf_init(&b);
	int r = render_file(&f->ctx, e, &b, &mtime, NULL);
	if (r < 0) {
		buf_free(&b);
		return r;
	}
	struct blob *bytes = blob_new(&b);
	buf_free(&b);
	pthread_mutex_lock(&f->snap_lock);
	blob_unref(s->bytes);
	*s = (struct snap){.ino = ino,
			   .stamp = now,
			   .at_us = clock_now_us(),
			   .mtime = mtime,
			   .bytes = blob_ref(bytes),
			   .told = for_stat};
	pthread_mutex_unlock(&f->snap_lock);
	*ret = (struct snap_use){bytes, mtime, false, false};
	return 0;
}

void snap_end_node_holds(struct fs *f, const char *node)
{
	/* the held rows (tree.c) a node's data shows in: its own, and the cluster-wide ones
	 * that take no other parameter */
	struct tree_entry e = {.node = (char *) node};
	for (size_t i = 0; i < tree_n_rows; i++) {
		if (tree_rows[i].cache != TREE_CACHE_HELD)
			continue;
		char *path = tree_format(tree_rows[i].pattern, &e);
		if (!path)
			continue;
		uint64_t ino = inode_hash_path(path);
		free(path);
		pthread_mutex_lock(&f->snap_lock);
		struct snap *s = &f->snaps[ino % SNAP_SLOTS];
		if (s->ino == ino)
			s->at_us = 0;
		pthread_mutex_unlock(&f->snap_lock);
	}
}

/* An open let the page cache hold ino's snapshot `bytes`: the next open of the same
 * snapshot may keep the cache. */
void snap_paged(struct fs *f, uint64_t ino, const struct blob *bytes)
{
	pthread_mutex_lock(&f->snap_lock);
	struct snap *s = &f->snaps[ino % SNAP_SLOTS];
	if (s->ino == ino && s->bytes == bytes)
		s->paged = true;
	pthread_mutex_unlock(&f->snap_lock);
}
