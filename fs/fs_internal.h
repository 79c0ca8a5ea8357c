/* What the files of fs/ share, private to fs/: fs.c (the operations: lookup, getattr,
 * open, read, release, the directories), pending.c (requests parked on a refresh),
 * notify.c (the notifier thread), submit.c (tasks/new/ and the writes), snap.c
 * (snapshots by generation).
 *
 * Locks. f->lock protects the session, the notify queue and its flags, and the lists of
 * open files and directories (f->handles, f->dirs); f->snap_lock protects the snapshot
 * slots (f->snaps); a handle's own lock guards its content and seq while a reply is
 * made from them. f->lock and f->snap_lock never nest; either may be held while the
 * backends are asked (their locks come after), never while a reply or a notification
 * goes to the kernel. */
#pragma once

#include "fs/fs.h"
#include "fs/tree.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct notify;
struct snap;

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

/* Bytes shared by a snapshot and the handles that read them; immutable. */
struct blob {
	int refs; /* atomic */
	size_t len;
	char data[];
};

/* Drops a reference; NULL is a no-op. */
void blob_unref(struct blob *x);

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

/* ---- snap.c ---- */

/* The snapshot slots (SNAP_SLOTS of them, by inode), new and empty; freed with theirs. */
struct snap *snap_table_new(void);
void snap_table_free(struct snap *snaps);
/* Files kept as snapshots between a stat and the opens after it (TREE_CACHE_GEN, _HELD). */
bool entry_is_kept(const struct tree_entry *e);
/* True when ino has a snapshot an open or stat may serve now without refreshing. */
bool snap_ready(struct fs *f, uint64_t ino, const struct tree_entry *e);

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
int snap_get(struct fs *f, uint64_t ino, const struct tree_entry *e, bool for_stat,
	     struct snap_use *ret);
/* An open let the page cache hold ino's snapshot `bytes`: the next open of the same
 * snapshot may keep the cache. */
void snap_paged(struct fs *f, uint64_t ino, const struct blob *bytes);
