/* The FUSE lowlevel filesystem. */
#include "fs/fs.h"
#include "fs/backup.h"
#include "fs/inode.h"
#include "fs/render.h"
#include "fs/render_placement.h"
#include "fs/tree.h"
#include "backend/spec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_NOTIFY_QUEUE 65536   /* a batch: every file of 1,000 nodes at a config reload */
#define NOTIFY_STOP_US   1000000 /* how long a stop waits for a notification in flight */

struct notify {
	uint64_t ino; /* inode to invalidate, or the parent of `name` */
	char *name;   /* when set: invalidate this entry of ino */
	struct notify *next;
};

struct fs {
	struct cluster *cluster;
	struct tree_ctx ctx; /* cluster, tasks and the drafts of tasks/new/ */
	struct inode_table *itab;
	uid_t uid;
	gid_t gid;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fuse_session *se; /* protected by lock; NULL when not mounted */
	struct notify *queue;    /* protected by lock */
	size_t n_queue;          /* protected by lock */
	bool stop;               /* protected by lock */
	bool tops_queued;        /* the cluster-wide files are in the queue; protected by lock */
	struct handle *handles;  /* open files, freed at unmount if the kernel did not; lock */
	struct dir_handle *dirs; /* open directories, likewise; protected by lock */
	pthread_t notifier;
	bool notifier_running;
	bool notifier_done;  /* the notifier returned; protected by lock */
	bool notifier_stuck; /* left in the kernel at a stop: f is never freed */
	pthread_mutex_t snap_lock;
	struct snap *snaps; /* SNAP_SLOTS snapshots by inode; protected by snap_lock */
};

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
	uint64_t cluster;
	double node, config, tasks, models;
};

/* Bytes shared by a snapshot and the handles that read them; immutable. */
struct blob {
	int refs; /* atomic */
	size_t len;
	char data[];
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

static void blob_unref(struct blob *x)
{
	if (x && __atomic_sub_fetch(&x->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(x);
}

/* An open file: the content as rendered at open, so one read sequence sees one document. */
struct handle {
	struct tree_entry e;
	pthread_mutex_t lock; /* guards content and seq for append-only files */
	struct buf content;
	struct blob *snap; /* the snapshot read instead of content, or NULL */
	uint64_t seq;      /* events: the last event included */
	uid_t uid;         /* who opened it (ctl writes are checked against it) */
	struct fs *f;
	struct handle *prev, *next; /* in f->handles, protected by f->lock */
	bool writable;              /* collects writes for a POST or a record at flush */
	bool writer;                /* opened for writing */
	bool dirty;                 /* written since the last flush */
	uint64_t ino;               /* the inode opened */
	int snap_fd;                /* backup/state.db: the copy made at open, or -1 */
};

/* A directory listing, taken at opendir; the task directories (tasks/, tasks/GROUP/,
 * nodes/NODE/tasks/) are read from the store page by page instead (names NULL). */
struct dir_handle {
	char **names;
	size_t n;
	enum tree_kind kind; /* what path is */
	char *group;         /* tasks/GROUP/: the group; nodes/NODE/tasks/: NULL */
	char *node;          /* nodes/NODE/tasks/: the node */
	char *path;
	bool plus; /* its row lists children with their attributes (readdirplus) */
	struct fs *f;
	struct dir_handle *prev, *next; /* in f->dirs, protected by f->lock */
};

int fs_new(const struct tree_ctx *backends, struct fs **ret)
{
	struct fs *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	int r = inode_table_new(&f->itab);
	if (r < 0) {
		free(f);
		return r;
	}
	r = drafts_new(&f->ctx.drafts);
	if (r < 0) {
		inode_table_free(f->itab);
		free(f);
		return r;
	}
	struct drafts *drafts = f->ctx.drafts;
	f->ctx = *backends;
	f->ctx.drafts = drafts;
	f->cluster = backends->cluster;
	f->uid = getuid();
	f->gid = getgid();
	pthread_mutex_init(&f->lock, NULL);
	pthread_mutex_init(&f->snap_lock, NULL);
	f->snaps = xcalloc(SNAP_SLOTS, sizeof(*f->snaps));
	pthread_cond_init(&f->cond, NULL);
	*ret = f;
	return 0;
}

static void handle_free(struct handle *h);
static void dir_handle_free(struct dir_handle *d);

void fs_free(struct fs *f)
{
	if (!f)
		return;
	fs_set_session(f, NULL);
	/* files and directories the kernel did not release before the unmount */
	while (f->handles)
		handle_free(f->handles);
	while (f->dirs)
		dir_handle_free(f->dirs);
	inode_table_free(f->itab);
	drafts_free(f->ctx.drafts);
	if (f->notifier_stuck)
		return; /* the notifier may still wake up and take f->lock */
	pthread_mutex_destroy(&f->lock);
	for (size_t i = 0; i < SNAP_SLOTS; i++)
		blob_unref(f->snaps[i].bytes);
	free(f->snaps);
	pthread_mutex_destroy(&f->snap_lock);
	pthread_cond_destroy(&f->cond);
	free(f);
}

/* ---- cache invalidation: a thread of its own, so neither the loop thread nor a FUSE
 * worker ever waits on the kernel ---- */

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
	if (!f->se || f->n_queue >= MAX_NOTIFY_QUEUE)
		return;
	struct notify *q = calloc(1, sizeof(*q));
	q->ino = ino;
	q->name = name ? strdup(name) : NULL;
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
		c->inos = realloc(c->inos, c->cap * sizeof(*c->inos));
		c->paths = realloc(c->paths, c->cap * sizeof(*c->paths));
	}
	c->inos[c->n] = ino;
	c->paths[c->n++] = strdup(path);
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

/* ---- attributes ---- */

/* Finds the path of an inode: the table, else (an NFS handle from before a restart) a walk
 * of the current tree. Returns a new string or NULL. */
static char *fs_ino_path(struct fs *f, fuse_ino_t ino)
{
	char *p = inode_table_path(f->itab, ino);
	if (p || ino == INODE_ROOT)
		return p ? p : strdup("/");
	/* breadth-first over directories; the tree is small (nodes × a dozen files) */
	char **queue = malloc(sizeof(char *));
	size_t qn = 1, qi = 0;
	queue[0] = strdup("/");
	char *found = NULL;
	while (qi < qn && !found) {
		char *dir = queue[qi++];
		size_t n = 0;
		int err = 0;
		char **names = tree_list(&f->ctx, dir, &n, &err);
		for (size_t i = 0; names && i < n; i++) {
			char *child = tree_join(dir, names[i]);
			if (!found && inode_hash_path(child) == ino) {
				found = child;
				child = NULL;
			}
			struct tree_entry e;
			if (child && tree_classify(&f->ctx, child, &e) == 0) {
				if (e.row->type == TREE_DIR) {
					queue = realloc(queue, (qn + 1) * sizeof(char *));
					queue[qn++] = child;
					child = NULL;
				}
				tree_entry_clear(&e);
			}
			free(child);
			free(names[i]);
		}
		free(names);
	}
	for (size_t i = 0; i < qn; i++)
		free(queue[i]);
	free(queue);
	return found;
}

static void fill_time(struct timespec *ts, double wall)
{
	ts->tv_sec = (time_t) wall;
	ts->tv_nsec = (long) ((wall - (double) ts->tv_sec) * 1e9);
}

static struct drafts_limits draft_limits(struct fs *f)
{
	struct config *cfg = cluster_get_config(f->cluster);
	struct drafts_limits lim = {.files = (size_t) cfg->tasks.drafts_per_user,
				    .bytes = (size_t) cfg->tasks.draft_bytes_per_user};
	config_unref(cfg);
	return lim;
}

/* tasks/ID/ and its files belong to the task's submitter (DESIGN §8): the files that
 * can hold secrets (the spec's env, output: TREE_OWN_TASK_PRIVATE) are 0600, or 0640 for
 * tasks.group; what a script polls (status, node, exit_code) stays readable by all. */
static void task_file_owner(struct fs *f, const struct tree_entry *e, struct stat *st)
{
	uid_t uid;
	gid_t gid;
	if (tasks_owner(f->ctx.tasks, e->task, &uid, &gid) < 0)
		return;
	struct config *cfg = cluster_get_config(f->cluster);
	bool group = cfg->tasks.group != NULL;
	st->st_uid = uid;
	st->st_gid = group ? cfg->tasks.group_gid : gid;
	config_unref(cfg);
	if (e->row->owner == TREE_OWN_TASK_PRIVATE)
		st->st_mode = (st->st_mode & ~07777u) | (group ? 0640 : 0600);
}

/* Files kept as snapshots between a stat and the opens after it (TREE_CACHE_GEN, _HELD). */
static bool entry_is_kept(const struct tree_entry *e)
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
	if (gen & TREE_GEN_TASKS)
		ret->tasks = tasks_changed_at(f->ctx.tasks);
	if (gen & TREE_GEN_MODELS)
		ret->models = models_changed_at(f->ctx.models);
}

static bool stamp_equal(const struct stamp *a, const struct stamp *b)
{
	return a->cluster == b->cluster && a->node == b->node && a->config == b->config &&
	       a->tasks == b->tasks && a->models == b->models;
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
static bool snap_ready(struct fs *f, uint64_t ino, const struct tree_entry *e)
{
	struct stamp now;
	stamp_of(f, e, &now);
	uint64_t window = e->row->cache == TREE_CACHE_HELD ? held_window_us(f) : 0;
	pthread_mutex_lock(&f->snap_lock);
	bool ok = snap_valid_locked(f, &f->snaps[ino % SNAP_SLOTS], ino, e, &now, false, window);
	pthread_mutex_unlock(&f->snap_lock);
	return ok;
}

/* What a read of a kept file is served from. */
struct snap_use {
	struct blob *bytes; /* a new reference */
	double mtime;
	bool told;  /* the kernel was given this size (before this call) */
	bool paged; /* an open before let the page cache hold these same bytes */
};

/* ino's snapshot, rendered now if there is none for the data as it is: 0 or -errno. A
 * stat (for_stat) marks it told and, for a _HELD one, starts its hold window; an open that
 * lets the page cache hold it marks it paged (snap_paged). */
static int snap_get(struct fs *f, uint64_t ino, const struct tree_entry *e, bool for_stat,
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

/* An open let the page cache hold ino's snapshot `bytes`: the next open of the same
 * snapshot may keep the cache. */
static void snap_paged(struct fs *f, uint64_t ino, const struct blob *bytes)
{
	pthread_mutex_lock(&f->snap_lock);
	struct snap *s = &f->snaps[ino % SNAP_SLOTS];
	if (s->ino == ino && s->bytes == bytes)
		s->paged = true;
	pthread_mutex_unlock(&f->snap_lock);
}

static int fs_stat_path(struct fs *f, const char *path, struct stat *st)
{
	struct tree_entry e;
	int r = tree_classify(&f->ctx, path, &e);
	if (r < 0)
		return r;
	memset(st, 0, sizeof(*st));
	st->st_ino = inode_hash_path(path);
	st->st_uid = f->uid;
	st->st_gid = f->gid;
	st->st_blksize = 4096;
	double mtime = cluster_started_at(f->cluster);
	if (e.row->type == TREE_DIR) {
		st->st_mode = S_IFDIR | e.row->mode;
		st->st_nlink = 2;
		mtime = render_mtime(&f->ctx, &e);
	} else if (e.row->type == TREE_LINK) {
		char *target = tree_link_target(&e);
		st->st_mode = S_IFLNK | 0777;
		st->st_nlink = 1;
		st->st_size = (off_t) strlen(target);
		free(target);
	} else if (e.row->owner == TREE_OWN_DRAFT) {
		struct draft_info di;
		r = drafts_stat(f->ctx.drafts, e.name, &di);
		if (r < 0) {
			tree_entry_clear(&e);
			return r;
		}
		st->st_mode = S_IFREG | di.mode;
		st->st_nlink = 1;
		st->st_size = (off_t) di.size;
		st->st_uid = di.uid;
		st->st_gid = di.gid;
		mtime = di.mtime;
	} else if (e.kind == TREE_TASK_FILE) {
		uint64_t size = 0;
		artifacts_lookup(f->ctx.artifacts, e.task, e.file, &size, &mtime);
		st->st_mode = S_IFREG | e.row->mode;
		st->st_nlink = 1;
		st->st_size = (off_t) size;
		st->st_blocks = (blkcnt_t) ((size + 511) / 512);
	} else if (e.kind == TREE_TASK_WAIT) {
		/* the answer's size once the task ended; 0 while it runs */
		size_t size = 0;
		r = render_stat(&f->ctx, &e, &size, &mtime);
		if (r < 0) {
			tree_entry_clear(&e);
			return r;
		}
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t) size;
	} else {
		size_t size = 0;
		if (entry_is_kept(&e)) {
			struct snap_use u;
			r = snap_get(f, st->st_ino, &e, true, &u);
			if (r == 0) {
				size = u.bytes->len;
				mtime = u.mtime;
				blob_unref(u.bytes);
			}
		} else {
			r = render_stat(&f->ctx, &e, &size, &mtime);
		}
		if (r < 0) {
			tree_entry_clear(&e);
			return r;
		}
		st->st_mode = S_IFREG | e.row->mode;
		if (e.kind == TREE_SERVICE_FILE) {
			bool post = false;
			services_file_exists(f->ctx.services, e.name, e.file, &post);
			st->st_mode = S_IFREG | (post ? 0644 : 0444);
		}
		st->st_nlink = 1;
		st->st_size = (off_t) size;
		st->st_blocks = (blkcnt_t) ((size + 511) / 512);
	}
	if (e.row->owner == TREE_OWN_TASK || e.row->owner == TREE_OWN_TASK_PRIVATE)
		task_file_owner(f, &e, st);
	fill_time(&st->st_mtim, mtime);
	st->st_ctim = st->st_mtim;
	st->st_atim = st->st_mtim;
	tree_entry_clear(&e);
	return 0;
}

/* The row's timeouts for a path (both 0 for a path the tree lacks). */
static void timeouts_for(const char *path, double *ret_entry, double *ret_attr)
{
	const struct tree_row *row = tree_match(path, NULL, NULL);
	*ret_entry = row ? row->entry_timeout : 0;
	*ret_attr = row ? row->attr_timeout : 0;
}

/* ---- operations ---- */

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
		conn->want |= FUSE_CAP_EXPORT_SUPPORT;
	/* Replies come from several threads in any order. */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
}

/* ---- answering after a refresh: a request whose data must be fresh is parked, and
 * finished from the loop thread once the backend has fetched (at most the probe timeout
 * later); no FUSE thread waits meanwhile ---- */

enum pending_op { PENDING_LOOKUP, PENDING_OPENDIR, PENDING_OPEN, PENDING_GETATTR };

struct pending {
	enum pending_op op;
	fuse_req_t req;
	struct fs *f;
	fuse_ino_t ino;           /* lookup: the parent; open(dir): the inode */
	char *name;               /* lookup */
	struct fuse_file_info fi; /* copied: FUSE's is gone once the callback returns */
	struct handle *h;         /* open */
	int waiting;              /* refreshes not finished yet (atomic), for /health */
};

static void pending_finish(struct pending *p);

static void pending_done(void *arg)
{
	pending_finish(arg);
}

static void pending_done_err(void *arg, int err)
{
	pending_finish(arg);
}

static void pending_one_done(void *arg, int err)
{
	struct pending *p = arg;
	if (__atomic_sub_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL) == 0)
		pending_finish(p);
}

/* /health: refreshes every stale node, as that many opens of nodes/NODE/health would (one
 * round of parallel probes), and finishes p when the last one ended: 1 when none was
 * stale, 0 when p will be finished later. */
static int refresh_all_then(struct fs *f, struct pending *p)
{
	size_t n = 0;
	char **names = cluster_list_nodes(f->cluster, &n);
	p->waiting = 1; /* held while the refreshes are started */
	for (size_t i = 0; i < n; i++) {
		if (!cluster_node_is_fresh(f->cluster, names[i])) {
			__atomic_add_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL);
			if (cluster_refresh_node(f->cluster, names[i], pending_one_done, p) < 0)
				__atomic_sub_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL);
		}
		free(names[i]);
	}
	free(names);
	if (__atomic_sub_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL) == 0) {
		/* nothing was stale, or every refresh already ended: the caller answers */
		return 1;
	}
	return 0;
}

/* Starts the refresh `e` needs, if any: 1 when nothing needs to wait (data fresh, or no
 * refresh applies), 0 when p will be finished later. */
static int refresh_then(struct fs *f, const struct tree_entry *e, struct pending *p)
{
	switch (e->row->refresh) {
	case TREE_REFRESH_NODES: return refresh_all_then(f, p);
	case TREE_REFRESH_NODE:
		if (!e->node || cluster_node_is_fresh(f->cluster, e->node))
			return 1;
		return cluster_refresh_node(f->cluster, e->node, pending_done_err, p) == 0 ? 0 : 1;
	case TREE_REFRESH_LEDGER:
		return ledger_refresh(f->ctx.ledger, pending_done, p) == 0 ? 0 : 1;
	case TREE_REFRESH_MODELS:
		return models_refresh(f->ctx.models, NULL, pending_done, p) == 0 ? 0 : 1;
	case TREE_REFRESH_NODE_MODELS:
		return models_refresh(f->ctx.models, e->node, pending_done, p) == 0 ? 0 : 1;
	default: return 1;
	}
}

/* A stat of a file that an open would refresh (health, status) refreshes it first, so
 * that the size it reports is that of the bytes the open then reads (see struct snap):
 * answered from the loop thread when the probe ended. 1 when nothing needs to wait. */
static int stat_refresh_then(struct fs *f, const char *path, struct pending *p)
{
	const struct tree_row *row = tree_match(path, NULL, NULL);
	if (!row || (row->refresh != TREE_REFRESH_NODE && row->refresh != TREE_REFRESH_NODES))
		return 1;
	struct tree_entry e;
	int r = 1;
	if (tree_classify(&f->ctx, path, &e) == 0) {
		/* a snapshot that needs no refresh (one a stat just made, say) is served */
		if (!snap_ready(f, inode_hash_path(path), &e))
			r = refresh_then(f, &e, p);
		tree_entry_clear(&e);
	}
	return r;
}

static struct pending *pending_new(enum pending_op op, fuse_req_t req, struct fs *f)
{
	struct pending *p = calloc(1, sizeof(*p));
	p->op = op;
	p->req = req;
	p->f = f;
	return p;
}

static void pending_free(struct pending *p)
{
	free(p->name);
	free(p);
}

static void lookup_finish(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name)
{
	char *dir = fs_ino_path(f, parent);
	if (!dir)
		return (void) fuse_reply_err(req, ESTALE);
	char *path;
	if (strcmp(name, ".") == 0)
		path = strdup(dir);
	else if (strcmp(name, "..") == 0)
		path = tree_parent(dir);
	else
		path = tree_join(dir, name);
	free(dir);

	struct fuse_entry_param ep;
	memset(&ep, 0, sizeof(ep));
	int r = fs_stat_path(f, path, &ep.attr);
	if (r < 0) {
		free(path);
		return (void) fuse_reply_err(req, -r);
	}
	ep.ino = inode_table_ref(f->itab, path);
	ep.generation = 1;
	timeouts_for(path, &ep.entry_timeout, &ep.attr_timeout);
	free(path);
	if (fuse_reply_entry(req, &ep) != 0)
		inode_table_forget(f->itab, ep.ino, 1);
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	char *dir = fs_ino_path(f, parent);
	struct tree_entry e;
	if (dir && tree_classify(&f->ctx, dir, &e) == 0) {
		/* names in a models or ledger directory come from the network */
		if (e.row->type == TREE_DIR && e.row->refresh != TREE_REFRESH_NONE) {
			struct pending *p = pending_new(PENDING_LOOKUP, req, f);
			p->ino = parent;
			p->name = strdup(name);
			if (refresh_then(f, &e, p) == 0) {
				tree_entry_clear(&e);
				free(dir);
				return;
			}
			pending_free(p);
		}
		tree_entry_clear(&e);
	}
	if (dir && name_is_valid(name)) {
		char *path = tree_join(dir, name);
		struct pending *p = pending_new(PENDING_LOOKUP, req, f);
		p->ino = parent;
		p->name = strdup(name);
		int r = stat_refresh_then(f, path, p);
		free(path);
		if (r == 0) {
			free(dir);
			return;
		}
		pending_free(p);
	}
	free(dir);
	lookup_finish(req, f, parent, name);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct fs *f = fuse_req_userdata(req);
	inode_table_forget(f->itab, ino, nlookup);
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct fs *f = fuse_req_userdata(req);
	for (size_t i = 0; i < count; i++)
		inode_table_forget(f->itab, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void getattr_finish(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct stat st;
	int r = fs_stat_path(f, path, &st);
	double entry_timeout, timeout;
	timeouts_for(path, &entry_timeout, &timeout);
	free(path);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	fuse_reply_attr(req, &st, timeout);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct pending *p = pending_new(PENDING_GETATTR, req, f);
	p->ino = ino;
	int r = stat_refresh_then(f, path, p);
	free(path);
	if (r == 0)
		return;
	pending_free(p);
	getattr_finish(req, f, ino);
}

static void dir_handle_free(struct dir_handle *d)
{
	struct fs *f = d->f;
	pthread_mutex_lock(&f->lock);
	if (d->prev)
		d->prev->next = d->next;
	else
		f->dirs = d->next;
	if (d->next)
		d->next->prev = d->prev;
	pthread_mutex_unlock(&f->lock);
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	free(d->names);
	free(d->group);
	free(d->node);
	free(d->path);
	free(d);
}

static bool kind_is_task_dir(enum tree_kind kind)
{
	return kind == TREE_TASKS || kind == TREE_TASKS_GROUP || kind == TREE_NODE_TASKS;
}

static void opendir_finish(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	size_t n = 0;
	struct tree_entry e;
	int err = tree_classify(&f->ctx, path, &e);
	if (err < 0) {
		free(path);
		return (void) fuse_reply_err(req, -err);
	}
	char **names = NULL;
	if (!kind_is_task_dir(e.kind)) {
		names = tree_list(&f->ctx, path, &n, &err);
		if (!names) {
			tree_entry_clear(&e);
			free(path);
			return (void) fuse_reply_err(req, -err);
		}
	}
	struct dir_handle *d = calloc(1, sizeof(*d));
	d->names = names;
	d->n = n;
	d->kind = e.kind;
	d->group = e.kind == TREE_TASKS_GROUP ? strdup(e.name) : NULL;
	d->node = e.kind == TREE_NODE_TASKS ? strdup(e.node) : NULL;
	d->plus = e.row->plus;
	tree_entry_clear(&e);
	d->path = path;
	d->f = f;
	pthread_mutex_lock(&f->lock);
	d->next = f->dirs;
	if (d->next)
		d->next->prev = d;
	f->dirs = d;
	pthread_mutex_unlock(&f->lock);
	fi->fh = (uint64_t) (uintptr_t) d;
	if (fuse_reply_open(req, fi) != 0)
		dir_handle_free(d);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	struct tree_entry e;
	if (path && tree_classify(&f->ctx, path, &e) == 0) {
		struct pending *p = pending_new(PENDING_OPENDIR, req, f);
		p->ino = ino;
		p->fi = *fi;
		int r = refresh_then(f, &e, p);
		tree_entry_clear(&e);
		if (r == 0) {
			free(path);
			return;
		}
		pending_free(p);
	}
	free(path);
	opendir_finish(req, f, ino, fi);
}

/* One entry of a READDIRPLUS answer: with the child's attributes and a lookup reference
 * in a directory whose row says plus, else without (the kernel looks it up itself). The
 * size it needs, as fuse_add_direntry_plus; an entry that did not fit takes no reference. */
static size_t add_plus(fuse_req_t req, struct fs *f, struct dir_handle *d, char *buf, size_t room,
		       const char *name, const char *child, const struct stat *st, off_t next)
{
	struct fuse_entry_param ep;
	memset(&ep, 0, sizeof(ep));
	ep.attr = *st;
	if (d->plus && child && fs_stat_path(f, child, &ep.attr) == 0) {
		ep.ino = inode_table_ref(f->itab, child);
		ep.generation = 1;
		timeouts_for(child, &ep.entry_timeout, &ep.attr_timeout);
	}
	size_t need = fuse_add_direntry_plus(req, buf, room, name, &ep, next);
	if (need > room && ep.ino)
		inode_table_forget(f->itab, ep.ino, 1);
	return need;
}

/* Task directories by position: offsets 0 "." and 1 "..", then (tasks/ only) 2.. the
 * fixed names, then each task at TASK_OFF_BASE + its submission number, which the store
 * seeks to. A getdents costs what it returns, wherever it starts (DESIGN §3, "What the
 * store keeps"). */
#define TASK_OFF_BASE 16

static const char *const tasks_fixed[] = {"new", "done", "failed", "queued", "running"};

struct task_page {
	fuse_req_t req;
	struct dir_handle *d;
	bool plus;
	char *out;
	size_t size, used;
	bool full;
};

/* Adds one entry (child NULL: "." or "..", without attributes); false when it did not fit. */
static bool task_page_put(struct task_page *p, const char *name, const char *child,
			  const struct stat *st, off_t next)
{
	size_t room = p->size - p->used;
	size_t need = p->plus ? add_plus(p->req, p->d->f, p->d, p->out + p->used, room, name, child,
					 st, next)
			      : fuse_add_direntry(p->req, p->out + p->used, room, name, st, next);
	if (need > room) {
		p->full = true;
		return false;
	}
	p->used += need;
	return true;
}

static bool task_page_add(void *arg, int64_t pos, const char *id)
{
	struct task_page *p = arg;
	struct stat st = {0};
	char *child = tree_join(p->d->path, id);
	st.st_ino = inode_hash_path(child);
	st.st_mode = p->d->kind == TREE_TASKS ? S_IFDIR : S_IFLNK;
	bool ok = task_page_put(p, id, child, &st, TASK_OFF_BASE + pos);
	free(child);
	return !ok; /* true: stop */
}

static void readdir_tasks(fuse_req_t req, struct fs *f, struct dir_handle *d, char *out,
			  size_t size, off_t off, bool plus)
{
	struct task_page p = {.req = req, .d = d, .plus = plus, .out = out, .size = size};
	size_t n_fixed = d->kind == TREE_TASKS ? sizeof(tasks_fixed) / sizeof(tasks_fixed[0]) : 0;
	for (off_t i = off; i < 2 + (off_t) n_fixed && !p.full; i++) {
		struct stat st = {.st_mode = S_IFDIR};
		const char *name = i == 0 ? "." : i == 1 ? ".." : tasks_fixed[i - 2];
		char *child = i == 0   ? strdup(d->path)
			      : i == 1 ? tree_parent(d->path)
				       : tree_join(d->path, name);
		st.st_ino = inode_hash_path(child);
		task_page_put(&p, name, i < 2 ? NULL : child, &st, i + 1);
		free(child);
	}
	int64_t after = off >= TASK_OFF_BASE ? (int64_t) off - TASK_OFF_BASE : 0;
	/* at least one entry per call, and rarely a second query */
	size_t max = size / 32 + 1;
	if (!p.full) {
		int r = tasks_list_page(f->ctx.tasks, d->group, d->node, after, max, task_page_add,
					&p);
		if (r < 0 && !p.used)
			return (void) fuse_reply_err(req, -r);
	}
	fuse_reply_buf(req, out, p.used);
}

/* READDIR, and READDIRPLUS (plus). */
static void dir_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi, bool plus)
{
	struct dir_handle *d = (struct dir_handle *) (uintptr_t) fi->fh;
	char *out = malloc(size);
	if (!out)
		return (void) fuse_reply_err(req, ENOMEM);
	if (kind_is_task_dir(d->kind)) {
		readdir_tasks(req, fuse_req_userdata(req), d, out, size, off, plus);
		free(out);
		return;
	}
	size_t used = 0;
	/* offsets: 0 ".", 1 "..", 2+i names[i] */
	for (off_t i = off; i < (off_t) d->n + 2; i++) {
		struct stat st = {0};
		const char *name;
		char *child = NULL;
		if (i == 0) {
			name = ".";
			st.st_ino = inode_hash_path(d->path);
			st.st_mode = S_IFDIR;
		} else if (i == 1) {
			name = "..";
			child = tree_parent(d->path);
			st.st_ino = inode_hash_path(child);
			st.st_mode = S_IFDIR;
		} else {
			name = d->names[i - 2];
			child = tree_join(d->path, name);
			struct tree_entry e;
			st.st_ino = inode_hash_path(child);
			st.st_mode = S_IFREG;
			if (tree_classify(&((struct fs *) fuse_req_userdata(req))->ctx, child,
					  &e) == 0) {
				if (e.row->type == TREE_DIR)
					st.st_mode = S_IFDIR;
				else if (e.row->type == TREE_LINK)
					st.st_mode = S_IFLNK;
				tree_entry_clear(&e);
			}
		}
		size_t need =
			plus ? add_plus(req, d->f, d, out + used, size - used, name,
					i < 2 ? NULL : child, &st, i + 1)
			     : fuse_add_direntry(req, out + used, size - used, name, &st, i + 1);
		free(child);
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, out, used);
	free(out);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	dir_read(req, size, off, fi, false);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	dir_read(req, size, off, fi, true);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	dir_handle_free((struct dir_handle *) (uintptr_t) fi->fh);
	fuse_reply_err(req, 0);
}

static void handle_free(struct handle *h)
{
	struct fs *f = h->f;
	pthread_mutex_lock(&f->lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		f->handles = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&f->lock);
	/* A reader replies with the content under h->lock, and the kernel can deliver that
	 * reply, and the RELEASE that follows it, before the reply call returns: wait for
	 * the reader to let go. */
	pthread_mutex_lock(&h->lock);
	pthread_mutex_unlock(&h->lock);
	tree_entry_clear(&h->e);
	buf_free(&h->content);
	blob_unref(h->snap);
	if (h->snap_fd >= 0)
		close(h->snap_fd);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

static struct handle *handle_new(struct fs *f)
{
	struct handle *h = calloc(1, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	buf_init(&h->content);
	h->snap_fd = -1;
	h->f = f;
	pthread_mutex_lock(&f->lock);
	h->next = f->handles;
	if (h->next)
		h->next->prev = h;
	f->handles = h;
	pthread_mutex_unlock(&f->lock);
	return h;
}

/* Renders the file into the handle and answers the open. Runs on a FUSE worker, or on
 * the loop thread after a refresh. Takes ownership of h. */
static void open_finish(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi)
{
	double mtime;
	int r = 0;
	struct snap_use u = {0};
	if (h->e.row->write == TREE_WRITE_DRAFT)
		r = drafts_read(f->ctx.drafts, h->e.name, &h->content);
	else if (entry_is_kept(&h->e) && !h->writer) {
		/* what the stat before this open reported, while the data holds */
		r = snap_get(f, h->ino, &h->e, false, &u);
		h->snap = u.bytes;
	} else if (h->e.kind == TREE_BACKUP_STATE)
		r = fs_backup_open(f->ctx.store, &h->snap_fd);
	else if (h->e.kind != TREE_TASK_WAIT)
		r = render_file(&f->ctx, &h->e, &h->content, &mtime, &h->seq);
	if (r < 0) {
		handle_free(h);
		return (void) fuse_reply_err(req, -r);
	}
	if (h->e.row->cache == TREE_CACHE_GROWS && h->e.kind != TREE_EVENTS)
		h->seq = h->content.len;
	fi->fh = (uint64_t) (uintptr_t) h;
	/* Content is generated: read from the handle, never from a page cache that may hold
	 * an older rendering, and short at the end whatever st_size said. Except a snapshot
	 * whose size the kernel was told (it reads up to that size from the page cache),
	 * where the row allows: kept in the page cache while it holds. */
	fi->direct_io = h->e.row->direct_io || !h->snap || !u.told;
	fi->keep_cache = !fi->direct_io && u.paged;
	if (!fi->direct_io && !u.paged)
		snap_paged(f, h->ino, h->snap);
	/* a read-only open has nothing to say at close: spare the kernel a FLUSH round trip */
	fi->noflush = !h->writer && !h->writable;
	if (fuse_reply_open(req, fi) != 0)
		handle_free(h); /* the open was interrupted: no release will come */
}

static void pending_finish(struct pending *p)
{
	switch (p->op) {
	case PENDING_LOOKUP: lookup_finish(p->req, p->f, p->ino, p->name); break;
	case PENDING_GETATTR: getattr_finish(p->req, p->f, p->ino); break;
	case PENDING_OPENDIR: opendir_finish(p->req, p->f, p->ino, &p->fi); break;
	case PENDING_OPEN:
		if (p->h->e.node && !cluster_has_node(p->f->cluster, p->h->e.node)) {
			handle_free(p->h);
			fuse_reply_err(p->req, ENOENT);
		} else {
			open_finish(p->req, p->f, p->h, &p->fi);
		}
		break;
	}
	pending_free(p);
}

/* services/NAME/FILE read: the open GETs the endpoint and answers with its body. */
static void service_got(void *arg, int err, const char *body, size_t len)
{
	struct pending *p = arg;
	if (err) {
		handle_free(p->h);
		fuse_reply_err(p->req, -err);
	} else {
		buf_append(&p->h->content, body, len);
		p->fi.fh = (uint64_t) (uintptr_t) p->h;
		p->fi.direct_io = 1;
		if (fuse_reply_open(p->req, &p->fi) != 0)
			handle_free(p->h);
	}
	pending_free(p);
}

static void service_get_open(fuse_req_t req, struct fs *f, struct handle *h,
			     struct fuse_file_info *fi)
{
	struct pending *p = pending_new(PENDING_OPEN, req, f);
	p->fi = *fi;
	p->h = h;
	int r = services_get(f->ctx.services, h->e.name, h->e.file, service_got, p);
	if (r < 0) {
		pending_free(p);
		handle_free(h);
		fuse_reply_err(req, -r);
	}
}

/* tasks/ID/files/NAME: the kept copy, or the node's, fetched into it first. */
struct pending_file {
	fuse_req_t req;
	struct handle *h;
	struct fuse_file_info fi;
};

static void task_file_opened(void *arg, int fd)
{
	struct pending_file *pf = arg;
	if (fd < 0) {
		handle_free(pf->h);
		fuse_reply_err(pf->req, -fd);
	} else {
		pf->h->snap_fd = fd;
		pf->fi.fh = (uint64_t) (uintptr_t) pf->h;
		pf->fi.direct_io = 1;
		pf->fi.noflush = 1;
		if (fuse_reply_open(pf->req, &pf->fi) != 0)
			handle_free(pf->h);
	}
	free(pf);
}

static void task_file_open(fuse_req_t req, struct fs *f, struct handle *h,
			   struct fuse_file_info *fi)
{
	struct pending_file *pf = calloc(1, sizeof(*pf));
	pf->req = req;
	pf->h = h;
	pf->fi = *fi;
	int r = artifacts_open(f->ctx.artifacts, h->e.task, h->e.file, task_file_opened, pf);
	if (r == -EINPROGRESS)
		return;
	task_file_opened(pf, r);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct handle *h = handle_new(f);
	h->uid = fuse_req_ctx(req)->uid;
	h->ino = ino;
	int r = tree_classify(&f->ctx, path, &h->e);
	free(path);
	if (r < 0) {
		handle_free(h);
		return (void) fuse_reply_err(req, -r);
	}
	if (h->e.row->type == TREE_DIR) {
		handle_free(h);
		return (void) fuse_reply_err(req, EISDIR);
	}
	bool writing = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	h->writer = writing;
	/* with atomic O_TRUNC (libfuse's default) the truncation is ours to do */
	if (h->e.kind == TREE_DRAFT && (fi->flags & O_TRUNC)) {
		r = drafts_truncate(f->ctx.drafts, h->e.name, 0, TASKS_SPEC_MAX, NULL);
		if (r < 0) {
			handle_free(h);
			return (void) fuse_reply_err(req, -r);
		}
	}
	if (h->e.kind == TREE_SERVICE_FILE) {
		bool post = false;
		services_file_exists(f->ctx.services, h->e.name, h->e.file, &post);
		if (!post && writing) {
			handle_free(h);
			return (void) fuse_reply_err(req, EACCES);
		}
		if (!post)
			return service_get_open(req, f, h, fi);
	}
	/* a service's POST endpoint, ledger/record, placement */
	if (h->e.row->write == TREE_WRITE_FLUSH)
		h->writable = writing;
	if (h->e.kind == TREE_TASK_FILE && !writing)
		return task_file_open(req, f, h, fi);
	if (writing && h->e.row->write != TREE_WRITE_CMD && h->e.row->write != TREE_WRITE_DRAFT &&
	    !h->writable) {
		handle_free(h);
		return (void) fuse_reply_err(req, EACCES);
	}
	if (h->writable) {
		/* the handle collects what is written; flush sends it */
		fi->fh = (uint64_t) (uintptr_t) h;
		fi->direct_io = 1;
		if (fuse_reply_open(req, fi) != 0)
			handle_free(h);
		return;
	}
	/* a snapshot that needs no refresh (a stat of a stale file refreshes first) */
	if (h->e.row->cache == TREE_CACHE_HELD && !h->writer && snap_ready(f, ino, &h->e))
		return open_finish(req, f, h, fi);
	struct pending *p = pending_new(PENDING_OPEN, req, f);
	p->fi = *fi;
	p->h = h;
	if (refresh_then(f, &h->e, p) == 0)
		return;
	pending_free(p);
	open_finish(req, f, h, fi);
}

static void reply_slice(fuse_req_t req, struct handle *h, size_t size, off_t off)
{
	const char *data = h->snap ? h->snap->data : h->content.data;
	size_t len = h->snap ? h->snap->len : h->content.len;
	if ((size_t) off >= len)
		return (void) fuse_reply_buf(req, NULL, 0);
	size_t n = len - (size_t) off < size ? len - (size_t) off : size;
	fuse_reply_buf(req, data + off, n);
}

/* A read of tasks/ID/wait that waits for the task's end, holding no thread. */
struct pending_wait {
	fuse_req_t req;
	struct handle *h;
	size_t size;
	off_t off;
};

static void wait_done(void *arg, const char *state, int exit_code)
{
	struct pending_wait *pw = arg;
	if (!state) {
		fuse_reply_err(pw->req, EINTR);
	} else {
		pthread_mutex_lock(&pw->h->lock);
		if (pw->h->content.len == 0)
			buf_printf(&pw->h->content, "%s %d\n", state, exit_code);
		reply_slice(pw->req, pw->h, pw->size, pw->off);
		pthread_mutex_unlock(&pw->h->lock);
	}
	free(pw);
}

static void wait_interrupted(fuse_req_t req, void *data)
{
	struct fs *f = fuse_req_userdata(req);
	struct pending_wait *pw = tasks_wait_cancel(f->ctx.tasks, (uint64_t) (uintptr_t) data);
	if (pw) {
		free(pw);
		fuse_reply_err(req, EINTR);
	}
}

static void read_wait(fuse_req_t req, struct fs *f, struct handle *h, size_t size, off_t off)
{
	pthread_mutex_lock(&h->lock);
	bool have = h->content.len > 0;
	if (have)
		reply_slice(req, h, size, off);
	pthread_mutex_unlock(&h->lock);
	if (have)
		return;
	struct pending_wait *pw = calloc(1, sizeof(*pw));
	pw->req = req;
	pw->h = h;
	pw->size = size;
	pw->off = off;
	uint64_t id = tasks_wait_new_id(f->ctx.tasks);
	/* the interrupt callback knows the wait by id only: it never touches pw, which the
	 * loop thread may be freeing */
	fuse_req_interrupt_func(req, wait_interrupted, (void *) (uintptr_t) id);
	int r = tasks_wait(f->ctx.tasks, h->e.task, id, wait_done, pw);
	if (r == 0)
		return;
	free(pw);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	/* final already */
	double mtime;
	pthread_mutex_lock(&h->lock);
	if (h->content.len == 0)
		render_file(&f->ctx, &h->e, &h->content, &mtime, NULL);
	reply_slice(req, h, size, off);
	pthread_mutex_unlock(&h->lock);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct handle *h = (struct handle *) (uintptr_t) fi->fh;
	if (h->e.kind == TREE_TASK_WAIT)
		return read_wait(req, f, h, size, off);
	if (h->snap_fd >= 0)
		return fs_backup_read(req, h->snap_fd, size, off);
	pthread_mutex_lock(&h->lock);
	if (h->e.kind == TREE_PLACEMENT && h->writable && h->seq != 1) {
		/* the answer to what was written on this handle (or to a default task) */
		struct buf answer;
		char err[512];
		buf_init(&answer);
		render_placement(&f->ctx, h->content.len ? h->content.data : NULL, h->content.len,
				 &answer, err, sizeof(err));
		buf_free(&h->content);
		h->content = answer;
		h->dirty = false;
		h->seq = 1; /* answered: the next write starts a new spec */
	}
	if (h->e.row->cache == TREE_CACHE_GROWS && (size_t) off >= h->content.len) {
		if (h->e.kind == TREE_EVENTS) {
			h->seq = cluster_render_events(f->cluster, h->seq, &h->content);
		} else {
			tasks_read_output(f->ctx.tasks, h->e.task,
					  h->e.kind == TREE_TASK_STDOUT ? "stdout" : "stderr",
					  h->content.len, &h->content);
		}
	} else if (h->e.row->write == TREE_WRITE_DRAFT && off == 0) {
		/* a draft is read back as it is now (editors reread what they wrote) */
		buf_free(&h->content);
		drafts_read(f->ctx.drafts, h->e.name, &h->content);
	}
	reply_slice(req, h, size, off);
	pthread_mutex_unlock(&h->lock);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle_free((struct handle *) (uintptr_t) fi->fh);
	fuse_reply_err(req, 0);
}

/* ---- tasks/new/: drafts and submission ---- */

/* NAME.json where NAME is a plain task name: submitted when closed or renamed into. Names
 * of editors' and rsync's staging files (leading '.', trailing '~', '.tmp', '.swp') are
 * kept as drafts. Returns the task name, or NULL. */
static char *submit_name(const char *draft)
{
	size_t n = strlen(draft);
	if (n <= 5 || strcmp(draft + n - 5, ".json") != 0 || draft[0] == '.')
		return NULL;
	char *id = strndup(draft, n - 5);
	if (!spec_name_is_valid(id)) {
		free(id);
		return NULL;
	}
	return id;
}

/* Submits draft `draft` (content in text) as task `id`. On success the draft and any
 * NAME.error go; on failure NAME.error says why. Returns 0 or -errno. */
static int submit_draft(struct fs *f, const char *draft, const char *id, const char *text,
			size_t len, uid_t uid, gid_t gid)
{
	char err[1024];
	err[0] = '\0';
	int r = tasks_submit(f->ctx.tasks, id, text, len, uid, gid, err, sizeof(err));
	char *errname = malloc(strlen(id) + 8);
	sprintf(errname, "%s.error", id);
	if (r == 0) {
		/* no entry invalidation: names in tasks/new/ are never cached (lookup_finish),
		 * and one would wait for the directory lock a submitter may hold */
		drafts_remove(f->ctx.drafts, draft);
		drafts_remove(f->ctx.drafts, errname);
	} else {
		struct buf b;
		buf_init(&b);
		/* the sentence may quote the spec: no raw control bytes into a file */
		char clean[4 * sizeof(err) + 1];
		util_escape_controls(err[0] ? err : strerror(-r), clean, sizeof(clean));
		buf_printf(&b, "%s: %s\n", draft, clean);
		drafts_put(f->ctx.drafts, errname, uid, gid, b.data);
		log_info("task %s rejected: %s", id, err[0] ? err : strerror(-r));
		buf_free(&b);
		if (r != -EEXIST && r != -EFBIG && r != -ENOSPC && r != -EPERM && r != -EDQUOT)
			r = -EINVAL;
	}
	free(errname);
	return r;
}

static int fs_parent_is_new(struct fs *f, fuse_ino_t parent)
{
	return parent == inode_hash_path("/tasks/new");
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	if (!fs_parent_is_new(f, parent))
		return (void) fuse_reply_err(req, EACCES);
	if (!name_is_valid(name) || strlen(name) > 200)
		return (void) fuse_reply_err(req, EINVAL);
	char *id = submit_name(name);
	size_t nl = strlen(name);
	if (!id && name[0] != '.' && nl > 5 && !strcmp(name + nl - 5, ".json")) {
		log_info("tasks/new/%s: not a valid task name (letters, digits, '.', '_', '-')",
			 name);
		return (void) fuse_reply_err(req, EINVAL);
	}
	bool taken = id && tasks_exists(f->ctx.tasks, id);
	free(id);
	if (taken)
		return (void) fuse_reply_err(req, EEXIST);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct drafts_limits lim = draft_limits(f);
	/* a draft is its creator's alone, whatever the umask says (DESIGN §8) */
	int r = drafts_create(f->ctx.drafts, name, ctx->uid, ctx->gid, 0600, &lim);
	if (r == -EDQUOT)
		log_info("tasks/new/%s: uid %u has %zu drafts, the most one user may have "
			 "(tasks.drafts_per_user)",
			 name, (unsigned) ctx->uid, lim.files);
	else if (r == -ENOSPC)
		log_warn("tasks/new/%s: new/ holds %d files, the most it may hold", name,
			 DRAFTS_MAX);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	char *path = tree_join("/tasks/new", name);
	struct fuse_entry_param ep;
	memset(&ep, 0, sizeof(ep));
	r = fs_stat_path(f, path, &ep.attr);
	if (r < 0) {
		free(path);
		return (void) fuse_reply_err(req, -r);
	}
	struct handle *h = handle_new(f);
	h->uid = ctx->uid;
	h->writer = true;
	r = tree_classify(&f->ctx, path, &h->e);
	ep.ino = inode_table_ref(f->itab, path);
	ep.generation = 1;
	ep.attr_timeout = 0;
	ep.entry_timeout = 0; /* see lookup_finish */
	free(path);
	if (r < 0) {
		handle_free(h);
		return (void) fuse_reply_err(req, -r);
	}
	fi->fh = (uint64_t) (uintptr_t) h;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &ep, fi) != 0) {
		inode_table_forget(f->itab, ep.ino, 1);
		handle_free(h);
	}
}

static void node_ctl(fuse_req_t req, struct fs *f, struct handle *h, const char *cmd, size_t size)
{
	int r;
	if (!strcmp(cmd, "drain"))
		r = cluster_set_draining(f->cluster, h->e.node, true);
	else if (!strcmp(cmd, "resume"))
		r = cluster_set_draining(f->cluster, h->e.node, false);
	else if (!strcmp(cmd, "probe"))
		r = cluster_probe_now(f->cluster, h->e.node);
	else if (!strcmp(cmd, "remove")) {
		r = cluster_forget_node(f->cluster, h->e.node, "echo remove > ctl");
		if (r == -EPERM)
			log_info("nodes/%s/ctl: remove forgets joined nodes only; %s is typed into "
				 "hosts.json: delete it there",
				 h->e.node, h->e.node);
	} else {
		log_info("nodes/%s/ctl: unknown command \"%s\" (drain, resume, probe or remove)",
			 h->e.node, cmd);
		r = -EINVAL;
	}
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	fuse_reply_write(req, size);
}

/* nodes/NODE/models/ctl: the write is answered when the model server answered (a pull:
 * when it started; its progress is read from ctl). */
struct pending_write {
	fuse_req_t req;
	size_t size;
	char *what;
};

static void models_ctl_done(void *arg, int err, const char *why)
{
	struct pending_write *pw = arg;
	if (err) {
		log_info("%s: %s", pw->what, why ? why : strerror(-err));
		fuse_reply_err(pw->req, -err);
	} else {
		fuse_reply_write(pw->req, pw->size);
	}
	free(pw->what);
	free(pw);
}

static void models_ctl_write(fuse_req_t req, struct fs *f, struct handle *h, const char *cmd,
			     size_t size)
{
	struct pending_write *pw = calloc(1, sizeof(*pw));
	pw->req = req;
	pw->size = size;
	struct buf what;
	buf_init(&what);
	buf_printf(&what, "nodes/%s/models/ctl \"%s\"", h->e.node, cmd);
	pw->what = buf_steal(&what, NULL);
	char err[512] = "";
	int r = models_ctl(f->ctx.models, h->e.node, cmd, models_ctl_done, pw, err, sizeof(err));
	if (r < 0) {
		log_info("%s: %s", pw->what, err[0] ? err : strerror(-r));
		free(pw->what);
		free(pw);
		fuse_reply_err(req, -r);
	}
}

/* services/NAME/FILE write: the flush POSTs what was written and is answered with the
 * outcome. */
static void service_posted(void *arg, int err, const char *body, size_t len)
{
	fuse_req_t req = arg;
	fuse_reply_err(req, err ? -err : 0);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct handle *h = (struct handle *) (uintptr_t) fi->fh;
	if (h->e.kind == TREE_DRAFT) {
		struct drafts_limits lim = draft_limits(f);
		int r = drafts_write(f->ctx.drafts, h->e.name, data, size, (size_t) off,
				     TASKS_SPEC_MAX, &lim);
		if (r == -EFBIG || r == -EDQUOT || r == -ENOSPC) {
			/* the close says so too, and nothing is submitted */
			drafts_take_dirty(f->ctx.drafts, h->e.name);
			drafts_set_last_error(f->ctx.drafts, h->e.name, r);
			char *id = submit_name(h->e.name);
			if (id) {
				char errname[300], msg[400];
				snprintf(errname, sizeof(errname), "%s.error", id);
				if (r == -EFBIG)
					snprintf(msg, sizeof(msg),
						 "%s: the spec is larger than %u bytes\n",
						 h->e.name, TASKS_SPEC_MAX);
				else if (r == -EDQUOT)
					snprintf(
						msg, sizeof(msg),
						"%s: your drafts in tasks/new/ would hold more than "
						"%zu bytes, the most one user may hold "
						"(tasks.draft_bytes_per_user)\n",
						h->e.name, lim.bytes);
				else
					snprintf(
						msg, sizeof(msg),
						"%s: tasks/new/ holds %u bytes of drafts, the most "
						"it may hold; try again later\n",
						h->e.name, DRAFTS_BYTES_MAX);
				drafts_put(f->ctx.drafts, errname, h->uid, fuse_req_ctx(req)->gid,
					   msg);
				free(id);
			}
		}
		if (r < 0)
			return (void) fuse_reply_err(req, -r);
		return (void) fuse_reply_write(req, size);
	}
	if (h->writable) {
		size_t max = h->e.kind == TREE_LEDGER_RECORD ? LEDGER_RECORD_MAX : (4u << 20);
		if ((size_t) off + size > max)
			return (void) fuse_reply_err(req, EFBIG);
		pthread_mutex_lock(&h->lock);
		if (h->e.kind == TREE_PLACEMENT) {
			/* seq: 0 nothing answered yet, 1 answered, 2 + BASE a new spec written
			 * from offset BASE on (after reading an answer, a writer that did not
			 * seek back writes past it) */
			if (h->seq == 1) {
				buf_free(&h->content);
				h->seq = 2 + (uint64_t) off;
			}
			off_t base = h->seq >= 2 ? (off_t) (h->seq - 2) : 0;
			if (off < base) {
				pthread_mutex_unlock(&h->lock);
				return (void) fuse_reply_err(req, EINVAL);
			}
			off -= base;
		}
		if ((size_t) off > h->content.len) {
			char *zeros = calloc(1, (size_t) off - h->content.len);
			buf_append(&h->content, zeros, (size_t) off - h->content.len);
			free(zeros);
		}
		size_t overlap = h->content.len - (size_t) off;
		if (overlap > size)
			overlap = size;
		if (overlap)
			memcpy(h->content.data + off, data, overlap);
		buf_append(&h->content, data + overlap, size - overlap);
		h->dirty = true;
		pthread_mutex_unlock(&h->lock);
		return (void) fuse_reply_write(req, size);
	}
	if (h->e.row->write != TREE_WRITE_CMD)
		return (void) fuse_reply_err(req, EBADF);
	if (size > 256)
		return (void) fuse_reply_err(req, EINVAL);
	char cmd[257];
	memcpy(cmd, data, size);
	cmd[size] = '\0';
	/* one command per write; trailing newline and spaces are not part of it */
	size_t n = size;
	while (n && (cmd[n - 1] == '\n' || cmd[n - 1] == ' ' || cmd[n - 1] == '\r'))
		cmd[--n] = '\0';
	if (h->e.kind == TREE_NODE_CTL)
		return node_ctl(req, f, h, cmd, size);
	if (h->e.kind == TREE_NODE_MODELS_CTL)
		return models_ctl_write(req, f, h, cmd, size);
	char err[512] = "";
	int r = tasks_control(f->ctx.tasks, h->e.task, cmd, fuse_req_ctx(req)->uid, err,
			      sizeof(err));
	if (r < 0) {
		log_info("tasks/%s/ctl: %s", h->e.task, err[0] ? err : strerror(-r));
		return (void) fuse_reply_err(req, -r);
	}
	fuse_reply_write(req, size);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct handle *h = (struct handle *) (uintptr_t) fi->fh;
	if (h->writable) {
		pthread_mutex_lock(&h->lock);
		bool dirty = h->dirty;
		h->dirty = false;
		struct buf body;
		buf_init(&body);
		buf_append(&body, h->content.data ? h->content.data : "", h->content.len);
		pthread_mutex_unlock(&h->lock);
		if (!dirty) {
			buf_free(&body);
			return (void) fuse_reply_err(req, 0);
		}
		int r;
		if (h->e.kind == TREE_PLACEMENT) {
			/* a spec nobody read the answer to: close says whether it was good */
			struct buf answer;
			char err[512];
			buf_init(&answer);
			r = render_placement(&f->ctx, body.data, body.len, &answer, err,
					     sizeof(err));
			if (r < 0)
				log_info("placement: %s", err);
			buf_free(&answer);
		} else if (h->e.kind == TREE_LEDGER_RECORD) {
			char err[512] = "";
			r = ledger_record(f->ctx.ledger, body.data, body.len, err, sizeof(err));
			if (r < 0)
				log_info("ledger/record rejected: %s", err);
		} else {
			r = services_post(f->ctx.services, h->e.name, h->e.file, body.data,
					  body.len, service_posted, req);
			if (r == 0) {
				buf_free(&body);
				return; /* answered when the POST is */
			}
		}
		buf_free(&body);
		return (void) fuse_reply_err(req, r < 0 ? -r : 0);
	}
	if (h->e.kind != TREE_DRAFT || !h->writer)
		return (void) fuse_reply_err(req, 0);
	char *id = submit_name(h->e.name);
	if (!id)
		return (void) fuse_reply_err(req, 0);
	int r;
	if (!drafts_take_dirty(f->ctx.drafts, h->e.name)) {
		/* nothing new since the last close: say again what it said */
		r = drafts_last_error(f->ctx.drafts, h->e.name);
	} else {
		struct buf text;
		buf_init(&text);
		struct draft_info di;
		r = drafts_stat(f->ctx.drafts, h->e.name, &di);
		if (r == 0)
			r = drafts_read(f->ctx.drafts, h->e.name, &text);
		if (r == 0)
			r = submit_draft(f, h->e.name, id, text.data ? text.data : "", text.len,
					 di.uid, di.gid);
		drafts_set_last_error(f->ctx.drafts, h->e.name, r);
		buf_free(&text);
	}
	free(id);
	fuse_reply_err(req, r < 0 ? -r : 0);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct tree_entry e;
	int r = tree_classify(&f->ctx, path, &e);
	if (r < 0) {
		free(path);
		return (void) fuse_reply_err(req, -r);
	}
	if (e.kind == TREE_DRAFT) {
		if (to_set & FUSE_SET_ATTR_SIZE) {
			struct drafts_limits lim = draft_limits(f);
			r = drafts_truncate(f->ctx.drafts, e.name, (size_t) attr->st_size,
					    TASKS_SPEC_MAX, &lim);
		}
		/* times and modes of a draft: accepted, not kept (cp -p, rsync -t) */
	} else if (e.row->write == TREE_WRITE_CMD ||
		   (e.row->write == TREE_WRITE_FLUSH && e.kind != TREE_PLACEMENT)) {
		if (to_set &
		    ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
		      FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME))
			r = -EACCES;
	} else {
		r = -EACCES;
	}
	tree_entry_clear(&e);
	struct stat st;
	if (r == 0)
		r = fs_stat_path(f, path, &st);
	free(path);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	fuse_reply_attr(req, &st, 0);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	if (!fs_parent_is_new(f, parent))
		return (void) fuse_reply_err(req, EACCES);
	int r = drafts_remove(f->ctx.drafts, name);
	fuse_reply_err(req, r < 0 ? -r : 0);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct fs *f = fuse_req_userdata(req);
	if (!fs_parent_is_new(f, parent) || !fs_parent_is_new(f, newparent))
		return (void) fuse_reply_err(req, EACCES);
	if (flags & RENAME_EXCHANGE)
		return (void) fuse_reply_err(req, EINVAL);
	if (!drafts_exists(f->ctx.drafts, name))
		return (void) fuse_reply_err(req, ENOENT);
	if ((flags & RENAME_NOREPLACE) && drafts_exists(f->ctx.drafts, newname))
		return (void) fuse_reply_err(req, EEXIST);
	if (!name_is_valid(newname) || strlen(newname) > 200)
		return (void) fuse_reply_err(req, EINVAL);
	char *id = submit_name(newname);
	char *old_path = tree_join("/tasks/new", name);
	char *new_path = tree_join("/tasks/new", newname);
	if (!id) {
		int r = drafts_rename(f->ctx.drafts, name, newname);
		if (r == 0)
			inode_table_rename(f->itab, old_path, new_path);
		free(old_path);
		free(new_path);
		return (void) fuse_reply_err(req, r < 0 ? -r : 0);
	}
	/* renamed to NAME.json: that is a submission (editors, rsync and atomic writers) */
	struct buf text;
	buf_init(&text);
	struct draft_info di;
	int r = drafts_stat(f->ctx.drafts, name, &di);
	if (r == 0)
		r = drafts_read(f->ctx.drafts, name, &text);
	if (r == 0)
		r = submit_draft(f, name, id, text.data ? text.data : "", text.len, di.uid, di.gid);
	if (r == 0)
		drafts_remove(f->ctx.drafts, newname);
	if (r < 0 && r != -EEXIST) {
		/* rejected: the spec stays, under the name it was given, for fixing */
		drafts_rename(f->ctx.drafts, name, newname);
		drafts_take_dirty(f->ctx.drafts, newname);
		drafts_set_last_error(f->ctx.drafts, newname, r);
		r = 0;
	}
	if (r == 0)
		inode_table_rename(f->itab, old_path, new_path);
	free(old_path);
	free(new_path);
	buf_free(&text);
	free(id);
	fuse_reply_err(req, r < 0 ? -r : 0);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct tree_entry e;
	int r = tree_classify(&f->ctx, path, &e);
	free(path);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	if (e.row->type != TREE_LINK) {
		tree_entry_clear(&e);
		return (void) fuse_reply_err(req, EINVAL);
	}
	char *target = tree_link_target(&e);
	fuse_reply_readlink(req, target);
	free(target);
	tree_entry_clear(&e);
}

static void fs_deny(fuse_req_t req)
{
	fuse_reply_err(req, EACCES);
}

static void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	fs_deny(req);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	fs_deny(req);
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fs_deny(req);
}

static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	fs_deny(req);
}

static void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	fs_deny(req);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv = {0};
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.setattr = fs_setattr,
	.readlink = fs_readlink,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.readdirplus = fs_readdirplus,
	.releasedir = fs_releasedir,
	.open = fs_open,
	.create = fs_create,
	.read = fs_read,
	.write = fs_write,
	.flush = fs_flush,
	.fsync = fs_fsync,
	.release = fs_release,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_rmdir,
	.rename = fs_rename,
	.symlink = fs_symlink,
	.link = fs_link,
	.statfs = fs_statfs,
};

const struct fuse_lowlevel_ops *fs_ops(void)
{
	return &ops;
}
