/* tasks/new/ and the writes: drafts created, written and submitted at close (or renamed
 * into place), ctl commands, and what is collected for a flush. */
#include "fs/fs_internal.h"
#include "fs/inode.h"
#include "fs/knowledge.h"
#include "fs/render.h"
#include "fs/render_placement.h"
#include "backend/ctl.h"
#include "backend/spec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- tasks/new/: drafts and submission ---- */

/* NAME.json where NAME is a plain task name: submitted when closed or renamed into. Names
 * of editors' and rsync's staging files (leading '.', trailing '~', '.tmp', '.swp') are
 * kept as drafts. Returns the task name, or NULL. */
static char *submit_name(const char *draft)
{
	size_t n = strlen(draft);
	if (n <= 5 || strcmp(draft + n - 5, ".json") != 0 || draft[0] == '.')
		return NULL;
	char *id = xstrndup(draft, n - 5);
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
	char *errname = xmalloc(strlen(id) + 8);
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

/* ---- knowledge/: creates, removals and directories (fs/knowledge.c) ---- */

/* True when parent is a directory of knowledge/ (not of .versions/): *ret is its entry. */
static bool fs_knowledge_dir(struct fs *f, fuse_ino_t parent, struct tree_entry *ret)
{
	char *path = fs_ino_path(f, parent);
	if (!path || strncmp(path, "/knowledge", 10) != 0 ||
	    tree_classify(&f->ctx, path, ret) < 0) {
		free(path);
		return false;
	}
	free(path);
	if (ret->kind == TREE_KNOWLEDGE)
		return true;
	tree_entry_clear(ret);
	return false;
}

/* A new document: empty and held until its close commits version 1 (or the version after
 * the deletion it replaces). Takes dir. */
static void knowledge_create(fuse_req_t req, struct fs *f, struct tree_entry *dir, const char *name,
			     struct fuse_file_info *fi)
{
	int r = 0;
	char *doc = fs_knowledge_child(dir, name, &r);
	tree_entry_clear(dir);
	if (!doc)
		return (void) fuse_reply_err(req, -r);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct knowledge_stat ks;
	if (knowledge_stat(f->ctx.knowledge, doc, &ks) == 0) {
		free(doc);
		return (void) fuse_reply_err(req, EEXIST);
	}
	knowledge_hold(f->ctx.knowledge, doc, ctx->uid);
	char *path = tree_join("/knowledge", doc);
	struct handle *h = handle_new(f);
	h->uid = ctx->uid;
	h->writer = h->writable = h->dirty = h->kheld = true;
	h->kbase = knowledge_latest(f->ctx.knowledge, doc);
	h->e.kind = TREE_KNOWLEDGE_DOC;
	h->e.row = tree_row_of(TREE_KNOWLEDGE_DOC);
	h->e.file = doc;
	struct fuse_entry_param ep;
	memset(&ep, 0, sizeof(ep));
	r = fs_stat_path(f, path, &ep.attr);
	if (r < 0) {
		free(path);
		handle_free(h);
		return (void) fuse_reply_err(req, -r);
	}
	ep.ino = inode_table_ref(f->itab, path);
	ep.generation = 1;
	free(path);
	fi->fh = (uint64_t) (uintptr_t) h;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &ep, fi) != 0) {
		inode_table_forget(f->itab, ep.ino, 1);
		handle_free(h);
	}
}

/* mkdir's answer: the new directory's entry. 0 or -errno. */
static int knowledge_reply_dir(fuse_req_t req, struct fs *f, const char *doc)
{
	char *path = tree_join("/knowledge", doc);
	struct fuse_entry_param ep;
	memset(&ep, 0, sizeof(ep));
	int r = fs_stat_path(f, path, &ep.attr);
	if (r == 0) {
		ep.ino = inode_table_ref(f->itab, path);
		ep.generation = 1;
		if (fuse_reply_entry(req, &ep) != 0)
			inode_table_forget(f->itab, ep.ino, 1);
	}
	free(path);
	return r;
}

/* unlink ('u'), mkdir ('m') and rmdir ('r') in knowledge/. Takes dir. */
static void knowledge_change(fuse_req_t req, struct fs *f, struct tree_entry *dir, const char *name,
			     char op)
{
	int r = 0;
	char *doc = fs_knowledge_child(dir, name, &r);
	tree_entry_clear(dir);
	if (!doc)
		return (void) fuse_reply_err(req, op == 'm' ? -r : ENOENT);
	uid_t uid = fuse_req_ctx(req)->uid;
	struct knowledge_stat ks;
	if (op == 'm')
		r = knowledge_mkdir(f->ctx.knowledge, doc, uid);
	else if (knowledge_stat(f->ctx.knowledge, doc, &ks) < 0)
		r = -ENOENT;
	else if (op == 'u')
		r = ks.dir ? -EISDIR : knowledge_delete(f->ctx.knowledge, doc, uid);
	else
		r = !ks.dir ? -ENOTDIR : knowledge_rmdir(f->ctx.knowledge, doc);
	if (r == 0 && op == 'm')
		r = knowledge_reply_dir(req, f, doc);
	free(doc);
	if (r == 0 && op == 'm')
		return;
	fuse_reply_err(req, -r);
}

void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fs *f = fuse_req_userdata(req);
	struct tree_entry dir;
	if (fs_knowledge_dir(f, parent, &dir))
		return knowledge_change(req, f, &dir, name, 'm');
	fuse_reply_err(req, EACCES);
}

void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	struct tree_entry dir;
	if (fs_knowledge_dir(f, parent, &dir))
		return knowledge_change(req, f, &dir, name, 'r');
	fuse_reply_err(req, EACCES);
}

void knowledge_writer_size(struct fuse_file_info *fi, struct stat *st)
{
	struct handle *h = fi ? (struct handle *) (uintptr_t) fi->fh : NULL;
	if (!h || h->e.kind != TREE_KNOWLEDGE_DOC || !h->writable)
		return;
	pthread_mutex_lock(&h->lock);
	st->st_size = (off_t) h->content.len;
	st->st_blocks = (blkcnt_t) ((h->content.len + 511) / 512);
	pthread_mutex_unlock(&h->lock);
}

void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct tree_entry dir;
	if (fs_knowledge_dir(f, parent, &dir))
		return knowledge_create(req, f, &dir, name, fi);
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
	static const struct ctl_word words[] = {{"drain", NULL, NULL},
						{"resume", NULL, NULL},
						{"probe", NULL, NULL},
						{"remove", NULL, NULL}};
	struct ctl_command c;
	char err[512] = "";
	int r = ctl_parse(cmd, words, 4, &c, err, sizeof(err));
	if (r < 0)
		log_info("nodes/%s/ctl: %s", h->e.node, err);
	else if (c.word == 0 || c.word == 1)
		r = cluster_set_draining(f->cluster, h->e.node, c.word == 0);
	else if (c.word == 2)
		r = cluster_probe_now(f->cluster, h->e.node);
	else {
		r = cluster_forget_node(f->cluster, h->e.node, "echo remove > ctl");
		if (r == -EPERM)
			log_info("nodes/%s/ctl: remove forgets joined nodes only; %s is typed into "
				 "hosts.json: delete it there",
				 h->e.node, h->e.node);
	}
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	/* what the command changed shows at the next open, even within a hold */
	snap_end_node_holds(f, h->e.node);
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
	struct pending_write *pw = xcalloc(1, sizeof(*pw));
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

/* A write to a draft of tasks/new/: kept; a draft over a limit says why in NAME.error. */
static void draft_write(fuse_req_t req, struct fs *f, struct handle *h, const char *data,
			size_t size, off_t off)
{
	struct drafts_limits lim = draft_limits(f);
	int r = drafts_write(f->ctx.drafts, h->e.name, data, size, (size_t) off, TASKS_SPEC_MAX,
			     &lim);
	if (r == -EFBIG || r == -EDQUOT || r == -ENOSPC) {
		/* the close says so too, and nothing is submitted */
		drafts_take_dirty(f->ctx.drafts, h->e.name);
		drafts_set_last_error(f->ctx.drafts, h->e.name, r);
		char *id = submit_name(h->e.name);
		if (id) {
			char errname[300], msg[400];
			snprintf(errname, sizeof(errname), "%s.error", id);
			if (r == -EFBIG)
				snprintf(msg, sizeof(msg), "%s: the spec is larger than %u bytes\n",
					 h->e.name, TASKS_SPEC_MAX);
			else if (r == -EDQUOT)
				snprintf(msg, sizeof(msg),
					 "%s: your drafts in tasks/new/ would hold more than "
					 "%zu bytes, the most one user may hold "
					 "(tasks.draft_bytes_per_user)\n",
					 h->e.name, lim.bytes);
			else
				snprintf(msg, sizeof(msg),
					 "%s: tasks/new/ holds %u bytes of drafts, the most "
					 "it may hold; try again later\n",
					 h->e.name, DRAFTS_BYTES_MAX);
			drafts_put(f->ctx.drafts, errname, h->uid, fuse_req_ctx(req)->gid, msg);
			free(id);
		}
	}
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	return (void) fuse_reply_write(req, size);
}

/* A write collected on the handle for its flush (a POST, ledger/record, placement). */
static void collect_write(fuse_req_t req, struct handle *h, const char *data, size_t size,
			  off_t off)
{
	size_t max = h->e.kind == TREE_LEDGER_RECORD   ? LEDGER_RECORD_MAX
		     : h->e.kind == TREE_KNOWLEDGE_DOC ? KNOWLEDGE_DOC_MAX
						       : (4u << 20);
	if ((size_t) off + size > max) {
		if (h->e.kind == TREE_KNOWLEDGE_DOC) {
			/* the close commits nothing: no document cut short */
			h->kerr = -EFBIG;
			log_info("knowledge/%s: larger than %u bytes, not committed", h->e.file,
				 KNOWLEDGE_DOC_MAX);
		}
		return (void) fuse_reply_err(req, EFBIG);
	}
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
		char *zeros = xcalloc(1, (size_t) off - h->content.len);
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

/* A write to a ctl file: one command. */
static void cmd_write(fuse_req_t req, struct fs *f, struct handle *h, const char *data, size_t size)
{
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

void fs_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
	      struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct handle *h = (struct handle *) (uintptr_t) fi->fh;
	if (h->e.kind == TREE_DRAFT)
		return draft_write(req, f, h, data, size, off);
	if (h->writable)
		return collect_write(req, h, data, size, off);
	if (h->e.row->write != TREE_WRITE_CMD)
		return (void) fuse_reply_err(req, EBADF);
	cmd_write(req, f, h, data, size);
}

void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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
		int r;
		if (h->e.kind == TREE_KNOWLEDGE_DOC && (h->kerr || dirty)) {
			r = h->kerr ? h->kerr
				    : fs_knowledge_commit(&f->ctx, h->e.file, &h->kbase, &body,
							  h->uid);
			if (r == -EBUSY)
				h->kerr = r; /* the bytes are in NAME.conflict; a later close too */
			buf_free(&body);
			return (void) fuse_reply_err(req, -r);
		}
		if (!dirty) {
			buf_free(&body);
			return (void) fuse_reply_err(req, 0);
		}
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

void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

/* A knowledge document's size set: on a writer (ftruncate), its copy, committed at
 * close; by path (truncate(2)), a version of its own. 0 or -errno. */
static int knowledge_truncate(struct fs *f, fuse_req_t req, const struct tree_entry *e,
			      const struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	if (!(to_set & FUSE_SET_ATTR_SIZE))
		return 0;
	if (attr->st_size > KNOWLEDGE_DOC_MAX)
		return -EFBIG;
	struct handle *h = fi ? (struct handle *) (uintptr_t) fi->fh : NULL;
	size_t want = (size_t) attr->st_size;
	if (h && h->writable) {
		pthread_mutex_lock(&h->lock);
		if (want < h->content.len) {
			h->content.len = want;
			h->content.data[want] = '\0';
		}
		while (h->content.len < want)
			buf_append(&h->content, "", 1);
		h->dirty = true;
		pthread_mutex_unlock(&h->lock);
		return 0;
	}
	struct buf b;
	buf_init(&b);
	int64_t base = knowledge_latest(f->ctx.knowledge, e->file);
	int r = knowledge_read(f->ctx.knowledge, e->file, 0, &b);
	if (want < b.len) {
		b.len = want;
		b.data[want] = '\0';
	}
	while (r == 0 && b.len < want)
		buf_append(&b, "", 1);
	if (r == 0)
		r = fs_knowledge_commit(&f->ctx, e->file, &base, &b, fuse_req_ctx(req)->uid);
	buf_free(&b);
	return r;
}

void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
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
	} else if (e.kind == TREE_KNOWLEDGE_DOC) {
		r = knowledge_truncate(f, req, &e, attr, to_set, fi);
		/* times and modes: accepted, not kept (cp -p, rsync -t) */
	} else if (e.row->write == TREE_WRITE_CMD ||
		   (e.row->write == TREE_WRITE_FLUSH && e.kind != TREE_PLACEMENT)) {
		if (to_set &
		    ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
		      FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME))
			r = -EACCES;
	} else {
		r = -EACCES;
	}
	bool knowledge = e.kind == TREE_KNOWLEDGE_DOC;
	tree_entry_clear(&e);
	struct stat st;
	if (r == 0)
		r = fs_stat_path(f, path, &st);
	free(path);
	if (r < 0)
		return (void) fuse_reply_err(req, -r);
	if (knowledge)
		knowledge_writer_size(fi, &st);
	fuse_reply_attr(req, &st, 0);
}

void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	struct tree_entry dir;
	if (fs_knowledge_dir(f, parent, &dir))
		return knowledge_change(req, f, &dir, name, 'u');
	if (!fs_parent_is_new(f, parent))
		return (void) fuse_reply_err(req, EACCES);
	int r = drafts_remove(f->ctx.drafts, name);
	fuse_reply_err(req, r < 0 ? -r : 0);
}

void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
	       const char *newname, unsigned int flags)
{
	struct fs *f = fuse_req_userdata(req);
	struct tree_entry dir;
	if (fs_knowledge_dir(f, parent, &dir)) {
		/* no rename between versioned names: mv copies and removes instead */
		tree_entry_clear(&dir);
		return (void) fuse_reply_err(req, EXDEV);
	}
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
