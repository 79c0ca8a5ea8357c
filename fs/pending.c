/* Requests parked on a refresh: a lookup, stat or open whose data must be fresh waits,
 * holding no thread, until the backend has fetched it, and is answered from the loop
 * thread; likewise the opens that fetch (a service's GET, a task's output) and a read of
 * tasks/ID/wait. */
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

/* ---- answering after a refresh: a request whose data must be fresh is parked, and
 * finished from the loop thread once the backend has fetched (at most the probe timeout
 * later); no FUSE thread waits meanwhile ---- */

static void pending_finish(struct pending *p, bool gone);

/* True when p opens a file of a node that is no longer in the model. */
static bool pending_node_gone(struct pending *p)
{
	return p->op == PENDING_OPEN && p->h->e.node &&
	       !cluster_has_node(p->f->cluster, p->h->e.node);
}

/* A refresh of the models or the ledger ended. */
static void pending_done(void *arg)
{
	pending_finish(arg, pending_node_gone(arg));
}

/* A node's refresh ended: it says whether the node is still there, so the model is not
 * asked again. */
static void pending_node_done(void *arg, int err, const struct node_view *v)
{
	render_fresh_view_set(v); /* the requests finished here render the node from v */
	pending_finish(arg, err == -ENOENT);
	render_fresh_view_set(NULL);
}

static void pending_one_done(void *arg, int err, const struct node_view *v)
{
	struct pending *p = arg;
	if (__atomic_sub_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL) == 0)
		pending_finish(p, pending_node_gone(p));
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
		/* counted first: the refresh may end before it returns */
		__atomic_add_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL);
		if (cluster_refresh_node(f->cluster, names[i], pending_one_done, p) != 0)
			__atomic_sub_fetch(&p->waiting, 1, __ATOMIC_ACQ_REL); /* fresh, or gone */
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
 * refresh applies), 0 when p will be finished later. Every refresh returns 1 (fresh), 0
 * (the callback will run) or -errno (DESIGN §2, "The async contract"). */
int refresh_then(struct fs *f, const struct tree_entry *e, struct pending *p)
{
	switch (e->row->refresh) {
	case TREE_REFRESH_NODES: return refresh_all_then(f, p);
	case TREE_REFRESH_NODE:
		if (!e->node)
			return 1;
		return cluster_refresh_node(f->cluster, e->node, pending_node_done, p) == 0 ? 0 : 1;
	case TREE_REFRESH_LEDGER:
		return ledger_refresh(f->ctx.ledger, pending_done, p) == 0 ? 0 : 1;
	case TREE_REFRESH_MODELS:
		return models_refresh(f->ctx.models, NULL, pending_done, p) == 0 ? 0 : 1;
	case TREE_REFRESH_NODE_MODELS:
		return models_refresh(f->ctx.models, e->node, pending_done, p) == 0 ? 0 : 1;
	default: return 1;
	}
}

int unknown_inode_then(struct fs *f, struct pending *p)
{
	return models_refresh(f->ctx.models, NULL, pending_done, p) == 0 ? 0 : 1;
}

/* A stat of a file that an open would refresh (health, status) refreshes it first, so
 * that the size it reports is that of the bytes the open then reads (see struct snap):
 * answered from the loop thread when the probe ended. 1 when nothing needs to wait. */
int stat_refresh_then(struct fs *f, const char *path, struct pending *p)
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

struct pending *pending_new(enum pending_op op, fuse_req_t req, struct fs *f)
{
	struct pending *p = xcalloc(1, sizeof(*p));
	p->op = op;
	p->req = req;
	p->f = f;
	return p;
}

void pending_free(struct pending *p)
{
	free(p->name);
	free(p);
}

/* Answers p once its refresh ended; gone: p opens a file of a node that left the model. */
static void pending_finish(struct pending *p, bool gone)
{
	switch (p->op) {
	case PENDING_LOOKUP: lookup_finish(p->req, p->f, p->ino, p->name); break;
	case PENDING_GETATTR: getattr_finish(p->req, p->f, p->ino); break;
	case PENDING_OPENDIR: opendir_finish(p->req, p->f, p->ino, &p->fi); break;
	case PENDING_OPEN:
		if (gone) {
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

void service_get_open(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi)
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

void task_file_open(fuse_req_t req, struct fs *f, struct handle *h, struct fuse_file_info *fi)
{
	struct pending_file *pf = xcalloc(1, sizeof(*pf));
	pf->req = req;
	pf->h = h;
	pf->fi = *fi;
	int r = artifacts_open(f->ctx.artifacts, h->e.task, h->e.file, task_file_opened, pf);
	if (r == -EINPROGRESS)
		return;
	task_file_opened(pf, r);
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

void read_wait(fuse_req_t req, struct fs *f, struct handle *h, size_t size, off_t off)
{
	pthread_mutex_lock(&h->lock);
	bool have = h->content.len > 0;
	if (have)
		reply_slice(req, h, size, off);
	pthread_mutex_unlock(&h->lock);
	if (have)
		return;
	struct pending_wait *pw = xcalloc(1, sizeof(*pw));
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
