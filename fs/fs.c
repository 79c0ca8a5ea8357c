/* The FUSE lowlevel filesystem. */
#include "fs/fs.h"
#include "fs/inode.h"
#include "fs/render.h"
#include "fs/tree.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TIMEOUT_S        1.0 /* kernel entry and attribute cache */
#define MAX_NOTIFY_QUEUE 4096

struct notify {
	uint64_t ino;     /* inode to invalidate, or the parent of `name` */
	char *name;       /* when set: invalidate this entry of ino */
	struct notify *next;
};

struct fs {
	struct cluster *cluster;
	struct inode_table *itab;
	uid_t uid;
	gid_t gid;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fuse_session *se; /* protected by lock; NULL when not mounted */
	struct notify *queue;    /* protected by lock */
	size_t n_queue;          /* protected by lock */
	bool stop;               /* protected by lock */
	pthread_t notifier;
	bool notifier_running;
};

/* An open file: the content as rendered at open, so one read sequence sees one document. */
struct handle {
	struct tree_entry e;
	pthread_mutex_t lock; /* guards content and seq for append-only files */
	struct buf content;
	uint64_t seq;         /* events: the last event included */
};

/* A directory listing, taken at opendir. */
struct dir_handle {
	char **names;
	size_t n;
	char *path;
};

int fs_new(struct cluster *c, struct fs **ret)
{
	struct fs *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	int r = inode_table_new(&f->itab);
	if (r < 0) {
		free(f);
		return r;
	}
	f->cluster = c;
	f->uid = getuid();
	f->gid = getgid();
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	*ret = f;
	return 0;
}

void fs_free(struct fs *f)
{
	if (!f)
		return;
	fs_set_session(f, NULL);
	inode_table_free(f->itab);
	pthread_mutex_destroy(&f->lock);
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
		struct fuse_session *se = f->se;
		pthread_mutex_unlock(&f->lock);
		while (q) {
			struct notify *next = q->next;
			if (q->name)
				fuse_lowlevel_notify_inval_entry(se, q->ino, q->name, strlen(q->name));
			else
				fuse_lowlevel_notify_inval_inode(se, q->ino, 0, 0);
			free(q->name);
			free(q);
			q = next;
		}
		pthread_mutex_lock(&f->lock);
	}
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

void fs_set_session(struct fs *f, struct fuse_session *se)
{
	if (se) {
		pthread_mutex_lock(&f->lock);
		f->se = se;
		f->stop = false;
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
	pthread_cond_signal(&f->cond);
	pthread_mutex_unlock(&f->lock);
	if (f->notifier_running)
		pthread_join(f->notifier, NULL);
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
	static const char *const tops[] = {"/stats", "/alerts", "/events", "/metrics",
					   "/topology.json", "/topology.dot", "/config"};
	struct collect col = {.f = f};
	if (node) {
		char prefix[512];
		snprintf(prefix, sizeof(prefix), "/nodes/%s/", node);
		inode_table_foreach(f->itab, prefix, collect_ino, &col);
	} else {
		inode_table_foreach(f->itab, "/nodes", collect_ino, &col);
	}
	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < sizeof(tops) / sizeof(tops[0]); i++) {
		uint64_t ino = inode_hash_path(tops[i]);
		if (inode_table_known(f->itab, ino))
			notify_push_locked(f, ino, NULL);
	}
	for (size_t i = 0; i < col.n; i++) {
		if (!node) {
			/* a node that vanished: drop its name from the kernel's dentry cache */
			struct tree_entry e;
			if (tree_classify(f->cluster, col.paths[i], &e) == 0) {
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
		char **names = tree_list(f->cluster, dir, &n, &err);
		for (size_t i = 0; names && i < n; i++) {
			char *child = tree_join(dir, names[i]);
			if (!found && inode_hash_path(child) == ino) {
				found = child;
				child = NULL;
			}
			struct tree_entry e;
			if (child && tree_classify(f->cluster, child, &e) == 0) {
				if (tree_kind_is_dir(e.kind)) {
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

static int fs_stat_path(struct fs *f, const char *path, struct stat *st)
{
	struct tree_entry e;
	int r = tree_classify(f->cluster, path, &e);
	if (r < 0)
		return r;
	memset(st, 0, sizeof(*st));
	st->st_ino = inode_hash_path(path);
	st->st_uid = f->uid;
	st->st_gid = f->gid;
	st->st_blksize = 4096;
	double mtime = cluster_started_at(f->cluster);
	if (tree_kind_is_dir(e.kind)) {
		st->st_mode = S_IFDIR | tree_kind_mode(e.kind);
		st->st_nlink = 2;
		if (e.kind == TREE_NODES || e.kind == TREE_ROOT)
			mtime = cluster_changed_at(f->cluster);
	} else {
		size_t size = 0;
		r = render_stat(f->cluster, &e, &size, &mtime);
		if (r < 0) {
			tree_entry_clear(&e);
			return r;
		}
		st->st_mode = S_IFREG | tree_kind_mode(e.kind);
		st->st_nlink = 1;
		st->st_size = (off_t) size;
		st->st_blocks = (blkcnt_t) ((size + 511) / 512);
	}
	fill_time(&st->st_mtim, mtime);
	st->st_ctim = st->st_mtim;
	st->st_atim = st->st_mtim;
	tree_entry_clear(&e);
	return 0;
}

static double attr_timeout_for(const char *path)
{
	/* append-only files must show their growth to `tail -f` at once */
	return strcmp(path, "/events") == 0 ? 0.0 : TIMEOUT_S;
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

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
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
	ep.attr_timeout = attr_timeout_for(path);
	ep.entry_timeout = TIMEOUT_S;
	free(path);
	if (fuse_reply_entry(req, &ep) != 0)
		inode_table_forget(f->itab, ep.ino, 1);
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

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct stat st;
	int r = fs_stat_path(f, path, &st);
	double timeout = attr_timeout_for(path);
	free(path);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	fuse_reply_attr(req, &st, timeout);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	fuse_reply_err(req, EACCES);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct dir_handle *d = calloc(1, sizeof(*d));
	int err = 0;
	d->names = tree_list(f->cluster, path, &d->n, &err);
	if (!d->names) {
		free(path);
		free(d);
		return (void) fuse_reply_err(req, -err);
	}
	d->path = path;
	fi->fh = (uint64_t) (uintptr_t) d;
	if (fuse_reply_open(req, fi) != 0) {
		for (size_t i = 0; i < d->n; i++)
			free(d->names[i]);
		free(d->names);
		free(d->path);
		free(d);
	}
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dir_handle *d = (struct dir_handle *) (uintptr_t) fi->fh;
	char *out = malloc(size);
	if (!out)
		return (void) fuse_reply_err(req, ENOMEM);
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
			if (tree_classify(((struct fs *) fuse_req_userdata(req))->cluster, child, &e) ==
			    0) {
				if (tree_kind_is_dir(e.kind))
					st.st_mode = S_IFDIR;
				tree_entry_clear(&e);
			}
		}
		free(child);
		size_t need = fuse_add_direntry(req, out + used, size - used, name, &st, i + 1);
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, out, used);
	free(out);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dir_handle *d = (struct dir_handle *) (uintptr_t) fi->fh;
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	free(d->names);
	free(d->path);
	free(d);
	fuse_reply_err(req, 0);
}

static void handle_free(struct handle *h)
{
	tree_entry_clear(&h->e);
	buf_free(&h->content);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* Renders the file into a new handle and answers the open. Runs on a FUSE worker, or on
 * the loop thread after a refresh. Takes ownership of h. */
static void open_finish(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi)
{
	double mtime;
	int r = render_file(f->cluster, &h->e, &h->content, &mtime, &h->seq);
	if (r < 0) {
		handle_free(h);
		return (void) fuse_reply_err(req, -r);
	}
	fi->fh = (uint64_t) (uintptr_t) h;
	/* Content is generated: read it from the handle, never from a page cache that may
	 * hold an older rendering; reads return short at the end, whatever st_size said. */
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->nonseekable = 0;
	if (fuse_reply_open(req, fi) != 0)
		handle_free(h); /* the open was interrupted: no release will come */
}

struct pending_open {
	fuse_req_t req;
	struct fs *f;
	struct handle *h;
	struct fuse_file_info fi; /* copied: FUSE's is gone once the callback returns */
};

static void open_refreshed(void *arg, int err)
{
	struct pending_open *po = arg;
	if (err == -ENOENT) {
		handle_free(po->h);
		fuse_reply_err(po->req, ENOENT);
	} else {
		open_finish(po->req, po->f, po->h, &po->fi);
	}
	free(po);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	char *path = fs_ino_path(f, ino);
	if (!path)
		return (void) fuse_reply_err(req, ESTALE);
	struct handle *h = calloc(1, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	buf_init(&h->content);
	int r = tree_classify(f->cluster, path, &h->e);
	free(path);
	if (r < 0) {
		pthread_mutex_destroy(&h->lock);
		free(h);
		return (void) fuse_reply_err(req, -r);
	}
	if (tree_kind_is_dir(h->e.kind)) {
		handle_free(h);
		return (void) fuse_reply_err(req, EISDIR);
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		handle_free(h);
		return (void) fuse_reply_err(req, EACCES);
	}
	if (tree_kind_refreshes(h->e.kind) && !cluster_node_is_fresh(f->cluster, h->e.node)) {
		struct pending_open *po = calloc(1, sizeof(*po));
		po->req = req;
		po->f = f;
		po->h = h;
		po->fi = *fi;
		if (cluster_refresh_node(f->cluster, h->e.node, open_refreshed, po) == 0)
			return;
		free(po);
	}
	open_finish(req, f, h, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct handle *h = (struct handle *) (uintptr_t) fi->fh;
	pthread_mutex_lock(&h->lock);
	if (tree_kind_is_append_only(h->e.kind) && (size_t) off >= h->content.len)
		h->seq = cluster_render_events(f->cluster, h->seq, &h->content);
	size_t len = h->content.len;
	if ((size_t) off >= len) {
		pthread_mutex_unlock(&h->lock);
		return (void) fuse_reply_buf(req, NULL, 0);
	}
	size_t n = len - (size_t) off < size ? len - (size_t) off : size;
	fuse_reply_buf(req, h->content.data + off, n);
	pthread_mutex_unlock(&h->lock);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle_free((struct handle *) (uintptr_t) fi->fh);
	fuse_reply_err(req, 0);
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

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fs_deny(req);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	fs_deny(req);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
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
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.releasedir = fs_releasedir,
	.open = fs_open,
	.read = fs_read,
	.release = fs_release,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_unlink,
	.rename = fs_rename,
	.create = fs_create,
	.symlink = fs_symlink,
	.link = fs_link,
	.statfs = fs_statfs,
};

const struct fuse_lowlevel_ops *fs_ops(void)
{
	return &ops;
}
