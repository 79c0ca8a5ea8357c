/* Directories: opendir takes the listing (the task directories are read from the store
 * page by page instead), readdir and readdirplus answer from it. */
#include "fs/fs_internal.h"
#include "fs/inode.h"
#include "fs/render.h"
#include "backend/spec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void dir_handle_free(struct dir_handle *d)
{
	struct fs *f = d->f;
	pthread_mutex_lock(&f->lock);
	FS_LIST_UNLINK(f->dirs, d);
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

void opendir_finish(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
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
	struct dir_handle *d = xcalloc(1, sizeof(*d));
	d->names = names;
	d->n = n;
	d->kind = e.kind;
	d->group = e.kind == TREE_TASKS_GROUP ? xstrdup(e.name) : NULL;
	d->node = e.kind == TREE_NODE_TASKS ? xstrdup(e.node) : NULL;
	d->plus = e.row->plus;
	tree_entry_clear(&e);
	d->path = path;
	d->f = f;
	pthread_mutex_lock(&f->lock);
	FS_LIST_PUSH(f->dirs, d);
	pthread_mutex_unlock(&f->lock);
	fi->fh = (uint64_t) (uintptr_t) d;
	if (fuse_reply_open(req, fi) != 0)
		dir_handle_free(d);
}

void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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
		char *child = i == 0   ? xstrdup(d->path)
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
	char *out = xmalloc(size);
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

void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	dir_read(req, size, off, fi, false);
}

void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	dir_read(req, size, off, fi, true);
}

void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	dir_handle_free((struct dir_handle *) (uintptr_t) fi->fh);
	fuse_reply_err(req, 0);
}
