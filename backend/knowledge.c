/* Knowledge: versioned documents in the store (migration 5 in backend/store.c). */
#include "backend/knowledge.h"
#include "httpd/agent_api.h"
#include "backend/cluster.h"
#include "backend/endpoint.h"
#include "backend/loop.h"
#include "backend/spec.h"
#include "backend/store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KNOWLEDGE_PATH_MAX 1024
#define HOLDS_MAX          4096 /* creates in progress at once */

struct hold {
	char *path;
	uid_t uid;
	unsigned n;
	struct hold *next;
};

/* What one node's agent holds. Loop thread only. */
struct replica {
	char *node;
	int64_t acked; /* the last seq it holds; -1: unknown until its health says */
	bool busy;     /* a request is in flight */
	struct knowledge *k;
	struct replica *next;
};

struct knowledge {
	struct store *store;
	pthread_mutex_t lock;
	struct hold *holds; /* creates not yet committed; protected by lock */
	size_t n_holds;     /* protected by lock */
	struct loop *loop;  /* replication; NULL: none */
	struct cluster *cluster;
	struct replica *replicas; /* loop thread only */
};

int knowledge_new(struct store *s, struct knowledge **ret)
{
	struct knowledge *k = xcalloc(1, sizeof(*k));
	k->store = s;
	pthread_mutex_init(&k->lock, NULL);
	*ret = k;
	return 0;
}

void knowledge_free(struct knowledge *k)
{
	if (!k)
		return;
	while (k->replicas) {
		struct replica *p = k->replicas;
		k->replicas = p->next;
		free(p->node);
		free(p);
	}
	while (k->holds) {
		struct hold *h = k->holds;
		k->holds = h->next;
		free(h->path);
		free(h);
	}
	pthread_mutex_destroy(&k->lock);
	free(k);
}

bool knowledge_path_is_valid(const char *path)
{
	size_t n = strlen(path);
	if (n == 0 || n > KNOWLEDGE_PATH_MAX)
		return false;
	char *copy = xstrdup(path);
	bool ok = copy[0] != '/' && copy[n - 1] != '/';
	for (char *p = copy, *slash; ok && p; p = slash ? slash + 1 : NULL) {
		slash = strchr(p, '/');
		if (slash)
			*slash = '\0';
		ok = spec_name_is_valid(p);
	}
	free(copy);
	return ok;
}

/* The parent directory of a path, as a new string ("" for the top). */
static char *parent_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? xstrndup(path, (size_t) (slash - path)) : xstrdup("");
}

static int sqlite_err(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE: return 0;
	case SQLITE_CONSTRAINT: return -EEXIST;
	case SQLITE_BUSY:
	case SQLITE_LOCKED: return -EAGAIN;
	case SQLITE_FULL: return -ENOSPC;
	case SQLITE_NOMEM: return -ENOMEM;
	default: return -EIO;
	}
}

static int prepare(struct knowledge *k, const char *sql, sqlite3_stmt **ret)
{
	sqlite3 *db = store_thread_db(k->store);
	if (!db)
		return -EIO;
	return sqlite_err(sqlite3_prepare_v2(db, sql, -1, ret, NULL));
}

static int exec(struct knowledge *k, const char *sql)
{
	sqlite3 *db = store_thread_db(k->store);
	if (!db)
		return -EIO;
	return sqlite_err(sqlite3_exec(db, sql, NULL, NULL, NULL));
}

static bool is_dir(struct knowledge *k, const char *path, uid_t *ret_uid, double *ret_at)
{
	if (!path[0])
		return true;
	sqlite3_stmt *st;
	if (prepare(k, "SELECT uid, created_at FROM knowledge_dirs WHERE path=?", &st) < 0)
		return false;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
	bool r = sqlite3_step(st) == SQLITE_ROW;
	if (r && ret_uid) {
		*ret_uid = (uid_t) sqlite3_column_int64(st, 0);
		*ret_at = sqlite3_column_double(st, 1);
	}
	sqlite3_finalize(st);
	return r;
}

/* The given version of path (0: the latest, deletions included) into ret; with data, its
 * bytes appended. 0, or -ENOENT when there is no such version. */
static int version_get(struct knowledge *k, const char *path, int64_t version,
		       struct knowledge_stat *ret, bool *ret_deleted, struct buf *data)
{
	sqlite3_stmt *st;
	int r = prepare(k,
			version ? "SELECT version, deleted, length(data), committed_at, uid, data"
				  " FROM knowledge WHERE path=?1 AND version=?2"
				: "SELECT version, deleted, length(data), committed_at, uid, data"
				  " FROM knowledge WHERE path=?1 ORDER BY version DESC LIMIT 1",
			&st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
	if (version)
		sqlite3_bind_int64(st, 2, version);
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		sqlite3_finalize(st);
		return rc == SQLITE_DONE ? -ENOENT : sqlite_err(rc);
	}
	struct knowledge_stat s = {
		.version = sqlite3_column_int64(st, 0),
		.size = (size_t) sqlite3_column_int64(st, 2),
		.mtime = sqlite3_column_double(st, 3),
		.uid = (uid_t) sqlite3_column_int64(st, 4),
	};
	*ret_deleted = sqlite3_column_int(st, 1) != 0;
	if (data)
		buf_append(data, sqlite3_column_blob(st, 5) ? sqlite3_column_blob(st, 5) : "",
			   (size_t) sqlite3_column_bytes(st, 5));
	sqlite3_finalize(st);
	*ret = s;
	return 0;
}

static bool held(struct knowledge *k, const char *path, uid_t *ret_uid)
{
	pthread_mutex_lock(&k->lock);
	struct hold *h = k->holds;
	while (h && strcmp(h->path, path))
		h = h->next;
	if (h && ret_uid)
		*ret_uid = h->uid;
	pthread_mutex_unlock(&k->lock);
	return h != NULL;
}

int knowledge_stat(struct knowledge *k, const char *path, struct knowledge_stat *ret)
{
	struct knowledge_stat s = {0};
	if (is_dir(k, path, &s.uid, &s.mtime)) {
		s.dir = true;
		*ret = s;
		return 0;
	}
	bool deleted = false;
	int r = version_get(k, path, 0, &s, &deleted, NULL);
	if (r == 0 && !deleted) {
		*ret = s;
		return 0;
	}
	if ((r == 0 || r == -ENOENT) && held(k, path, &s.uid)) {
		s = (struct knowledge_stat){.version = 0, .uid = s.uid, .mtime = clock_wall_s()};
		*ret = s;
		return 0;
	}
	return r < 0 ? r : -ENOENT;
}

int knowledge_read(struct knowledge *k, const char *path, int64_t version, struct buf *out)
{
	struct knowledge_stat s;
	bool deleted = false;
	struct buf data;
	buf_init(&data);
	int r = version_get(k, path, version, &s, &deleted, &data);
	if (r == -ENOENT && !version && held(k, path, NULL))
		r = 0; /* created, not yet committed: empty */
	else if (r == 0 && deleted && !version)
		r = -ENOENT;
	if (r == 0 && !deleted)
		buf_append(out, data.data ? data.data : "", data.len);
	buf_free(&data);
	return r;
}

int knowledge_version_stat(struct knowledge *k, const char *path, int64_t version,
			   struct knowledge_stat *ret)
{
	bool deleted;
	if (version <= 0)
		return -ENOENT;
	return version_get(k, path, version, ret, &deleted, NULL);
}

int64_t knowledge_latest(struct knowledge *k, const char *path)
{
	struct knowledge_stat s;
	bool deleted;
	return version_get(k, path, 0, &s, &deleted, NULL) == 0 ? s.version : 0;
}

/* Inserts one version inside the caller's transaction. */
static int insert_version(struct knowledge *k, const char *path, int64_t version, const char *data,
			  size_t len, bool deleted, uid_t uid)
{
	sqlite3_stmt *st;
	int r = prepare(k,
			"INSERT INTO knowledge(path, version, parent, data, deleted, committed_at,"
			" uid, seq) VALUES(?,?,?,?,?,?,?,"
			" (SELECT coalesce(max(seq), 0) + 1 FROM knowledge))",
			&st);
	if (r < 0)
		return r;
	char *parent = parent_of(path);
	sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, version);
	sqlite3_bind_text(st, 3, parent, -1, SQLITE_TRANSIENT);
	if (deleted)
		sqlite3_bind_null(st, 4);
	else
		sqlite3_bind_blob(st, 4, data ? data : "", (int) len, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 5, deleted);
	sqlite3_bind_double(st, 6, clock_wall_s());
	sqlite3_bind_int64(st, 7, (int64_t) uid);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	free(parent);
	return sqlite_err(rc);
}

static void knowledge_kick(struct knowledge *k);

/* Commits a version after `base` (base < 0: after whatever is latest). */
static int commit(struct knowledge *k, const char *path, int64_t base, const char *data, size_t len,
		  bool deleted, uid_t uid, int64_t *ret_version)
{
	if (!knowledge_path_is_valid(path))
		return -EINVAL;
	if (len > KNOWLEDGE_DOC_MAX)
		return -EFBIG;
	int r = exec(k, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	char *parent = parent_of(path);
	struct knowledge_stat s = {0};
	bool was_deleted = true;
	if (is_dir(k, path, NULL, NULL))
		r = -EISDIR;
	else if (!is_dir(k, parent, NULL, NULL))
		r = -ENOENT;
	else
		r = version_get(k, path, 0, &s, &was_deleted, NULL);
	if (r == -ENOENT && s.version == 0 && is_dir(k, parent, NULL, NULL))
		r = 0; /* a new document */
	if (r == 0 && base >= 0 && s.version != base)
		r = -EBUSY; /* someone committed since the writer opened it */
	if (r == 0 && deleted && was_deleted)
		r = -ENOENT;
	if (r == 0)
		r = insert_version(k, path, s.version + 1, data, len, deleted, uid);
	if (r == 0)
		r = exec(k, "COMMIT");
	if (r < 0)
		exec(k, "ROLLBACK");
	else if (ret_version)
		*ret_version = s.version + 1;
	free(parent);
	if (r == 0)
		knowledge_kick(k);
	return r;
}

int knowledge_write(struct knowledge *k, const char *path, int64_t base, const char *data,
		    size_t len, uid_t uid, int64_t *ret_version)
{
	return commit(k, path, base, data, len, false, uid, ret_version);
}

int knowledge_delete(struct knowledge *k, const char *path, uid_t uid)
{
	return commit(k, path, -1, NULL, 0, true, uid, NULL);
}

int knowledge_mkdir(struct knowledge *k, const char *path, uid_t uid)
{
	if (!knowledge_path_is_valid(path))
		return -EINVAL;
	int r = exec(k, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	char *parent = parent_of(path);
	struct knowledge_stat s;
	if (!is_dir(k, parent, NULL, NULL))
		r = -ENOENT;
	else if (knowledge_stat(k, path, &s) == 0)
		r = -EEXIST;
	sqlite3_stmt *st;
	if (r == 0)
		r = prepare(k,
			    "INSERT INTO knowledge_dirs(path, parent, uid, created_at)"
			    " VALUES(?,?,?,?)",
			    &st);
	if (r == 0) {
		sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 2, parent, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 3, (int64_t) uid);
		sqlite3_bind_double(st, 4, clock_wall_s());
		r = sqlite_err(sqlite3_step(st));
		sqlite3_finalize(st);
	}
	if (r == 0)
		r = exec(k, "COMMIT");
	if (r < 0)
		exec(k, "ROLLBACK");
	free(parent);
	return r;
}

int knowledge_rmdir(struct knowledge *k, const char *path)
{
	if (!path[0])
		return -EBUSY;
	if (!is_dir(k, path, NULL, NULL))
		return -ENOENT;
	size_t n = 0;
	char **names = knowledge_list(k, path, false, &n);
	for (size_t i = 0; names && names[i]; i++)
		free(names[i]);
	free(names);
	if (n)
		return -ENOTEMPTY;
	sqlite3_stmt *st;
	int r = prepare(k, "DELETE FROM knowledge_dirs WHERE path=?", &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
	r = sqlite_err(sqlite3_step(st));
	sqlite3_finalize(st);
	return r;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Appends the last component of path to names (grown as needed). */
static void add_name(char ***names, size_t *n, size_t *cap, const char *path)
{
	if (*n + 2 > *cap) {
		*cap = *cap ? *cap * 2 : 16;
		*names = xrealloc(*names, *cap * sizeof(**names));
	}
	const char *slash = strrchr(path, '/');
	(*names)[(*n)++] = xstrdup(slash ? slash + 1 : path);
	(*names)[*n] = NULL;
}

char **knowledge_list(struct knowledge *k, const char *dir, bool with_deleted, size_t *ret_n)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	sqlite3_stmt *st;
	if (prepare(k, "SELECT path FROM knowledge_dirs WHERE parent=?", &st) == 0) {
		sqlite3_bind_text(st, 1, dir, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(st) == SQLITE_ROW)
			add_name(&names, &n, &cap, (const char *) sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
	}
	/* bare columns of a max() aggregate come from the row holding the max (sqlite) */
	if (prepare(k,
		    "SELECT path, deleted, max(version) FROM knowledge WHERE parent=?"
		    " GROUP BY path",
		    &st) == 0) {
		sqlite3_bind_text(st, 1, dir, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *path = (const char *) sqlite3_column_text(st, 0);
			if (with_deleted || !sqlite3_column_int(st, 1) || held(k, path, NULL))
				add_name(&names, &n, &cap, path);
		}
		sqlite3_finalize(st);
	}
	if (!with_deleted) {
		/* creates in progress whose first version is not committed yet */
		pthread_mutex_lock(&k->lock);
		for (struct hold *h = k->holds; h; h = h->next) {
			char *parent = parent_of(h->path);
			bool here = !strcmp(parent, dir);
			free(parent);
			const char *base = strrchr(h->path, '/');
			base = base ? base + 1 : h->path;
			bool dup = false;
			for (size_t i = 0; here && i < n && !dup; i++)
				dup = !strcmp(names[i], base);
			if (here && !dup)
				add_name(&names, &n, &cap, h->path);
		}
		pthread_mutex_unlock(&k->lock);
	}
	if (!names)
		names = xcalloc(1, sizeof(*names));
	qsort(names, n, sizeof(*names), cmp_str);
	*ret_n = n;
	return names;
}

char **knowledge_versions(struct knowledge *k, const char *path, size_t *ret_n)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	sqlite3_stmt *st;
	if (prepare(k, "SELECT version FROM knowledge WHERE path=? ORDER BY version", &st) == 0) {
		sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(st) == SQLITE_ROW) {
			char num[24];
			snprintf(num, sizeof(num), "%" PRId64,
				 (int64_t) sqlite3_column_int64(st, 0));
			add_name(&names, &n, &cap, num);
		}
		sqlite3_finalize(st);
	}
	if (!names)
		names = xcalloc(1, sizeof(*names));
	*ret_n = n;
	return names;
}

void knowledge_hold(struct knowledge *k, const char *path, uid_t uid)
{
	pthread_mutex_lock(&k->lock);
	struct hold *h = k->holds;
	while (h && strcmp(h->path, path))
		h = h->next;
	if (h) {
		h->n++;
	} else if (k->n_holds < HOLDS_MAX) {
		h = xcalloc(1, sizeof(*h));
		h->path = xstrdup(path);
		h->uid = uid;
		h->n = 1;
		h->next = k->holds;
		k->holds = h;
		k->n_holds++;
	}
	pthread_mutex_unlock(&k->lock);
}

void knowledge_release(struct knowledge *k, const char *path)
{
	pthread_mutex_lock(&k->lock);
	for (struct hold **p = &k->holds; *p; p = &(*p)->next) {
		struct hold *h = *p;
		if (strcmp(h->path, path))
			continue;
		if (--h->n == 0) {
			*p = h->next;
			free(h->path);
			free(h);
			k->n_holds--;
		}
		break;
	}
	pthread_mutex_unlock(&k->lock);
}

int knowledge_since(struct knowledge *k, int64_t after, size_t max, knowledge_version_fn fn,
		    void *arg)
{
	sqlite3_stmt *st;
	int r = prepare(k,
			"SELECT seq, path, version, data, deleted FROM knowledge WHERE seq > ?"
			" ORDER BY seq LIMIT ?",
			&st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int64(st, 2, (int64_t) max);
	int n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		bool deleted = sqlite3_column_int(st, 4) != 0;
		n++;
		if (fn(arg, sqlite3_column_int64(st, 0), (const char *) sqlite3_column_text(st, 1),
		       sqlite3_column_int64(st, 2),
		       deleted ? NULL : (const char *) sqlite3_column_blob(st, 3),
		       (size_t) sqlite3_column_bytes(st, 3), deleted))
			break;
	}
	sqlite3_finalize(st);
	return n;
}

int64_t knowledge_seq(struct knowledge *k)
{
	sqlite3_stmt *st;
	if (prepare(k, "SELECT coalesce(max(seq), 0) FROM knowledge", &st) < 0)
		return 0;
	int64_t seq = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return seq;
}

/* ---- replicas ---- */

#define REPLICA_TIMEOUT_MS 30000

static void replica_send(struct replica *p);

static void replica_done(void *arg, const struct http_response *resp)
{
	struct replica *p = arg;
	p->busy = false;
	json_t *doc = resp->error ? NULL : json_loadb(resp->body, resp->body_len, 0, NULL);
	json_t *seq = json_object_get(doc, "knowledge_seq");
	if (json_is_integer(seq)) {
		p->acked = json_integer_value(seq);
		replica_send(p);
	} else {
		/* away or refusing: its next health document says where it stands */
		if (resp->error && resp->error != -ECANCELED)
			log_info("knowledge: node %s: %s", p->node,
				 resp->error_text[0] ? resp->error_text : strerror(-resp->error));
		p->acked = -1;
	}
	json_decref(doc);
}

struct next_version {
	struct buf url;
	struct buf body;
	bool deleted;
	bool found;
};

static int next_got(void *arg, int64_t seq, const char *path, int64_t version, const char *data,
		    size_t len, bool deleted)
{
	struct next_version *n = arg;
	n->found = true;
	n->deleted = deleted;
	buf_puts(&n->url, AGENT_API_KNOWLEDGE "/");
	buf_puts(&n->url, path); /* task-name characters only: nothing to encode */
	buf_printf(&n->url, "?version=%" PRId64 "&seq=%" PRId64, version, seq);
	if (!deleted)
		buf_append(&n->body, data ? data : "", len);
	return 1;
}

/* Loop thread: sends the node the version after the one it holds, if any. */
static void replica_send(struct replica *p)
{
	struct knowledge *k = p->k;
	assert(loop_is_current(k->loop));
	if (p->busy || p->acked < 0)
		return;
	struct next_version n = {0};
	buf_init(&n.url);
	buf_init(&n.body);
	if (knowledge_since(k, p->acked, 1, next_got, &n) <= 0 || !n.found)
		goto out;
	struct config *cfg = cluster_get_config(k->cluster);
	const struct cfg_host *h = config_find_host(cfg, p->node);
	if (!h) {
		config_unref(cfg);
		goto out;
	}
	struct endpoint ep;
	endpoint_init_agent(&ep, cfg, h, n.url.data);
	struct http_request req = {
		.method = n.deleted ? "DELETE" : "PUT",
		.token = h->token,
		.body = n.deleted ? NULL : (n.body.data ? n.body.data : ""),
		.body_len = n.body.len,
		.content_type = "application/octet-stream",
		.connect_timeout_ms = 5000,
		.timeout_ms = REPLICA_TIMEOUT_MS,
	};
	endpoint_apply(&ep, &req);
	if (loop_http(k->loop, &req, replica_done, p) == 0)
		p->busy = true;
	endpoint_clear(&ep);
	config_unref(cfg);
out:
	buf_free(&n.url);
	buf_free(&n.body);
}

static void kick_all(void *arg)
{
	struct knowledge *k = arg;
	for (struct replica *p = k->replicas; p; p = p->next)
		replica_send(p);
}

/* Any thread: a version was committed. */
static void knowledge_kick(struct knowledge *k)
{
	if (k->loop)
		loop_post(k->loop, kick_all, k);
}

struct health_note {
	struct knowledge *k;
	char *node;
};

/* Loop thread: what node's health says it holds. */
static void health_noted(void *arg)
{
	struct health_note *hn = arg;
	struct knowledge *k = hn->k;
	assert(loop_is_current(k->loop));
	struct node_view v;
	if (cluster_get_node(k->cluster, hn->node, &v) == 0) {
		json_t *seq = json_object_get(v.health, "knowledge_seq");
		struct replica *p = k->replicas;
		while (p && strcmp(p->node, hn->node))
			p = p->next;
		if (!p && json_is_integer(seq)) {
			p = xcalloc(1, sizeof(*p));
			p->node = xstrdup(hn->node);
			p->k = k;
			p->next = k->replicas;
			k->replicas = p;
		}
		/* the agent is the truth: one that lost its state starts again from 0 */
		if (p && !p->busy && json_is_integer(seq) && v.reachable) {
			p->acked = json_integer_value(seq);
			replica_send(p);
		}
		node_view_clear(&v);
	}
	free(hn->node);
	free(hn);
}

void knowledge_on_cluster_change(void *arg, const char *node)
{
	struct knowledge *k = arg;
	if (!node || !k->loop)
		return;
	struct health_note *hn = xcalloc(1, sizeof(*hn));
	hn->k = k;
	hn->node = xstrdup(node);
	loop_post(k->loop, health_noted, hn);
}

void knowledge_replicate(struct knowledge *k, struct loop *loop, struct cluster *cluster)
{
	k->loop = loop;
	k->cluster = cluster;
}
