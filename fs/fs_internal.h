/* What the files of fs/ share, private to fs/: fs.c (the operations table, lookup,
 * getattr, open, read, release), dir.c (the directories), pending.c (requests parked on
 * a refresh), notify.c (the notifier thread), submit.c (tasks/new/ and the writes),
 * snap.c (snapshots by generation).
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
#include <sys/stat.h>
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

/* The lists of open files and directories (f->handles, f->dirs), doubly linked through
 * prev and next: x goes first in the list at head, or out of it. The caller holds f->lock. */
#define FS_LIST_PUSH(head, x)                                                                      \
	do {                                                                                       \
		(x)->next = (head);                                                                \
		if ((x)->next)                                                                     \
			(x)->next->prev = (x);                                                     \
		(head) = (x);                                                                      \
	} while (0)
#define FS_LIST_UNLINK(head, x)                                                                    \
	do {                                                                                       \
		if ((x)->prev)                                                                     \
			(x)->prev->next = (x)->next;                                               \
		else                                                                               \
			(head) = (x)->next;                                                        \
		if ((x)->next)                                                                     \
			(x)->next->prev = (x)->prev;                                               \
	} while (0)

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
	int64_t kbase;              /* knowledge/NAME: the version the writer started from */
	int kerr;                   /* knowledge/NAME: a write failed; the close says so */
	bool kheld;                 /* knowledge/NAME: created here, held until release */
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

/* ---- fs.c, pending.c ---- */

/* A request parked on a refresh (pending.c). */
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

/* ---- fs.c ---- */

/* Finds the path of an inode: the table, else (an NFS handle from before a restart) a walk
 * of the current tree. Returns a new string or NULL. */
char *fs_ino_path(struct fs *f, fuse_ino_t ino);

/* The config's limits on a user's drafts in tasks/new/. */
struct drafts_limits draft_limits(struct fs *f);

/* The attributes of path as they are now (for a kept file: its snapshot's size and
 * mtime; nothing is rendered for a stat of unchanged data). 0 or -errno. */
int fs_stat_path(struct fs *f, const char *path, struct stat *st);

/* The row's timeouts for a path (both 0 for a path the tree lacks). */
void timeouts_for(const char *path, double *ret_entry, double *ret_attr);

/* Answers a lookup of name in parent (after the refresh it waited for, if any). */
void lookup_finish(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name);

/* Answers a getattr of ino. */
void getattr_finish(fuse_req_t req, struct fs *f, fuse_ino_t ino);

/* Unlinks an open file from f->handles (taking f->lock) and frees it. */
void handle_free(struct handle *h);

/* A new open file of f, linked into f->handles (taking f->lock). */
struct handle *handle_new(struct fs *f);

/* Renders the file into the handle and answers the open. Runs on a FUSE worker, or on
 * the loop thread after a refresh. Takes ownership of h. */
void open_finish(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi);

/* Answers a read of size bytes at off from the handle's snapshot or content; 0 bytes
 * past the end. */
void reply_slice(fuse_req_t req, struct handle *h, size_t size, off_t off);

/* ---- pending.c ---- */

/* Starts the refresh `e` needs, if any: 1 when nothing needs to wait (data fresh, or no
 * refresh applies), 0 when p will be finished later. */
int refresh_then(struct fs *f, const struct tree_entry *e, struct pending *p);

/* An inode the table does not know (an NFS handle from before a restart) may name a path
 * below models/, whose names come from the network: fetches the model lists first
 * (bounded by probe.timeout_ms), so that the search for its path sees them. 1 when they
 * are fresh already, 0 when p will be finished later. */
int unknown_inode_then(struct fs *f, struct pending *p);

/* A stat of a file that an open would refresh (health, status) refreshes it first, so
 * that the size it reports is that of the bytes the open then reads (see struct snap):
 * answered from the loop thread when the probe ended. 1 when nothing needs to wait. */
int stat_refresh_then(struct fs *f, const char *path, struct pending *p);

/* A request parked until a refresh ends; pending_finish answers and frees it. */
struct pending *pending_new(enum pending_op op, fuse_req_t req, struct fs *f);

/* Frees a request that was answered without waiting. */
void pending_free(struct pending *p);

/* Opens services/NAME/FILE for reading: GETs the endpoint, answers with its body. */
void service_get_open(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi);

/* Opens tasks/ID/files/NAME: the control plane's copy, fetched into it first if need be. */
void task_file_open(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi);

/* A read of tasks/ID/wait: answered once the task ended, holding no thread. */
void read_wait(fuse_req_t req, struct fs *f, struct handle *h, size_t size, off_t off);

/* ---- dir.c ---- */

/* Unlinks an open directory from f->dirs (taking f->lock) and frees it. */
void dir_handle_free(struct dir_handle *d);

/* Answers an opendir of ino with its listing (after the refresh it waited for). */
void opendir_finish(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);

/* The directory operations (dir.c). */
void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi);
void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- submit.c ---- */

/* The operations that create, write and rename: tasks/new/, ctl files, flushed
 * writes (submit.c). */
void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi);
void fs_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
	      struct fuse_file_info *fi);
void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		struct fuse_file_info *fi);
void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
/* mkdir and rmdir: only in knowledge/ (EPERM elsewhere). */
void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
/* knowledge/NAME on a writer's handle: its copy's size goes to st (what lseek(SEEK_END),
 * O_APPEND and fstat must see); other handles leave st alone. */
void knowledge_writer_size(struct fuse_file_info *fi, struct stat *st);
void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
	       const char *newname, unsigned int flags);

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
/* Ends the hold window of every _HELD snapshot node's data shows in (its health and
 * status, /health, placement): the next open serves the data as it is now. After a change
 * made through the tree itself (a drain), whose writer reads next. */
void snap_end_node_holds(struct fs *f, const char *node);
