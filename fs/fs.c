/* The FUSE lowlevel filesystem. */
#include "fs/fs_internal.h"
#include "fs/backup.h"
#include "fs/inode.h"
#include "fs/knowledge.h"
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

int fs_new(const struct tree_ctx *backends, struct fs **ret)
{
	struct fs *f = xcalloc(1, sizeof(*f));
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
	f->snaps = snap_table_new();
	pthread_cond_init(&f->cond, NULL);
	*ret = f;
	return 0;
}

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
	snap_table_free(f->snaps);
	pthread_mutex_destroy(&f->snap_lock);
	pthread_cond_destroy(&f->cond);
	free(f);
}

/* ---- attributes ---- */

/* Finds the path of an inode: the table, else (an NFS handle from before a restart) a walk
 * of the current tree. Returns a new string or NULL. */
char *fs_ino_path(struct fs *f, fuse_ino_t ino)
{
	char *p = inode_table_path(f->itab, ino);
	if (p || ino == INODE_ROOT)
		return p ? p : xstrdup("/");
	/* breadth-first over directories; the tree is small (nodes × a dozen files) */
	char **queue = xmalloc(sizeof(char *));
	size_t qn = 1, qi = 0;
	queue[0] = xstrdup("/");
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
					queue = xrealloc(queue, (qn + 1) * sizeof(char *));
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

struct drafts_limits draft_limits(struct fs *f)
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

int fs_stat_path(struct fs *f, const char *path, struct stat *st)
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
	if (tree_kind_is_knowledge(e.kind)) {
		r = fs_knowledge_stat(&f->ctx, &e, st, &mtime);
		if (r < 0) {
			tree_entry_clear(&e);
			return r;
		}
	} else if (e.row->type == TREE_DIR) {
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
void timeouts_for(const char *path, double *ret_entry, double *ret_attr)
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

void lookup_finish(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name)
{
	char *dir = fs_ino_path(f, parent);
	if (!dir)
		return (void) fuse_reply_err(req, ESTALE);
	char *path;
	if (strcmp(name, ".") == 0)
		path = xstrdup(dir);
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
	if (!dir) {
		struct pending *p = pending_new(PENDING_LOOKUP, req, f);
		p->ino = parent;
		p->name = xstrdup(name);
		if (unknown_inode_then(f, p) == 0)
			return;
		pending_free(p);
	}
	struct tree_entry e;
	if (dir && tree_classify(&f->ctx, dir, &e) == 0) {
		/* names in a models or ledger directory come from the network */
		if (e.row->type == TREE_DIR && e.row->refresh != TREE_REFRESH_NONE) {
			struct pending *p = pending_new(PENDING_LOOKUP, req, f);
			p->ino = parent;
			p->name = xstrdup(name);
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
		p->name = xstrdup(name);
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

void getattr_finish(fuse_req_t req, struct fs *f, fuse_ino_t ino)
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
	if (fi && fi->fh && !strncmp(path, "/knowledge/", 11)) {
		struct stat st;
		int r = fs_stat_path(f, path, &st);
		free(path);
		if (r < 0)
			return (void) fuse_reply_err(req, -r);
		knowledge_writer_size(fi, &st);
		return (void) fuse_reply_attr(req, &st, 0);
	}
	struct pending *p = pending_new(PENDING_GETATTR, req, f);
	p->ino = ino;
	int r = stat_refresh_then(f, path, p);
	free(path);
	if (r == 0)
		return;
	pending_free(p);
	getattr_finish(req, f, ino);
}

void handle_free(struct handle *h)
{
	struct fs *f = h->f;
	pthread_mutex_lock(&f->lock);
	FS_LIST_UNLINK(f->handles, h);
	pthread_mutex_unlock(&f->lock);
	/* A reader replies with the content under h->lock, and the kernel can deliver that
	 * reply, and the RELEASE that follows it, before the reply call returns: wait for
	 * the reader to let go. */
	pthread_mutex_lock(&h->lock);
	pthread_mutex_unlock(&h->lock);
	if (h->kheld)
		knowledge_release(f->ctx.knowledge, h->e.file);
	tree_entry_clear(&h->e);
	buf_free(&h->content);
	blob_unref(h->snap);
	if (h->snap_fd >= 0)
		close(h->snap_fd);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

struct handle *handle_new(struct fs *f)
{
	struct handle *h = xcalloc(1, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	buf_init(&h->content);
	h->snap_fd = -1;
	h->f = f;
	pthread_mutex_lock(&f->lock);
	FS_LIST_PUSH(f->handles, h);
	pthread_mutex_unlock(&f->lock);
	return h;
}

/* Renders the file into the handle and answers the open. Runs on a FUSE worker, or on
 * the loop thread after a refresh. Takes ownership of h. */
void open_finish(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi)
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
	else if (tree_kind_is_knowledge(h->e.kind))
		r = fs_knowledge_read(&f->ctx, &h->e, &h->content);
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
	if (h->e.kind == TREE_KNOWLEDGE_DOC && writing) {
		/* the writer edits a copy; its close commits it after the version seen now */
		h->kbase = knowledge_latest(f->ctx.knowledge, h->e.file);
		if (fi->flags & O_TRUNC)
			h->dirty = true;
		else
			r = knowledge_read(f->ctx.knowledge, h->e.file, 0, &h->content);
		if (r < 0 && r != -ENOENT) {
			handle_free(h);
			return (void) fuse_reply_err(req, -r);
		}
	}
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

void reply_slice(fuse_req_t req, struct handle *h, size_t size, off_t off)
{
	const char *data = h->snap ? h->snap->data : h->content.data;
	size_t len = h->snap ? h->snap->len : h->content.len;
	if ((size_t) off >= len)
		return (void) fuse_reply_buf(req, NULL, 0);
	size_t n = len - (size_t) off < size ? len - (size_t) off : size;
	fuse_reply_buf(req, data + off, n);
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
