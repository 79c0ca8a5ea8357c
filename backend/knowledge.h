/* Knowledge: small versioned documents every node holds (knowledge/ in the tree). Each
 * write commits a new version to the store; a deletion is a version too. Paths are
 * relative ("notes", "runs/r1"), each component a task name (spec_name_is_valid).
 * Thread-safe: every call uses the calling thread's store connection. */
#pragma once

#include "backend/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define KNOWLEDGE_DOC_MAX (1u << 20) /* bytes in one document */

struct knowledge;
struct store;

/* What a path is now. */
struct knowledge_stat {
	bool dir;        /* a directory (mkdir, or the top) */
	int64_t version; /* a document's latest version (0: a create not yet committed) */
	size_t size;
	double mtime; /* wall: when the version was committed */
	uid_t uid;    /* who committed it, or made the directory */
};

/* Borrows the store, which must outlive it. */
int knowledge_new(struct store *s, struct knowledge **ret);
void knowledge_free(struct knowledge *k);

/* True when every component of path is a task name and the whole is at most 1024 bytes. */
bool knowledge_path_is_valid(const char *path);

/* What path is now ("" is the top directory): 0, or -ENOENT (deleted, or never). A path
 * held by knowledge_hold and never committed is an empty document at version 0. */
int knowledge_stat(struct knowledge *k, const char *path, struct knowledge_stat *ret);
/* Appends version `version` of path (0: the latest) to out. -ENOENT when there is none,
 * or when the latest is a deletion; a deleted version asked for by number reads empty. */
int knowledge_read(struct knowledge *k, const char *path, int64_t version, struct buf *out);
/* The stat of one version (a deletion: size 0). */
int knowledge_version_stat(struct knowledge *k, const char *path, int64_t version,
			   struct knowledge_stat *ret);
/* The latest version of path, deletions counted; 0 when it never had one. */
int64_t knowledge_latest(struct knowledge *k, const char *path);

/* Commits data as the version after `base` (the latest the writer saw; 0: none; -1:
 * whatever is latest, for conflict siblings): -EBUSY when someone committed after base, -ENOENT when the parent directory is not there,
 * -EISDIR when path is a directory, -EFBIG beyond KNOWLEDGE_DOC_MAX. Durable when it
 * returns; *ret_version (may be NULL) gets the new version. */
int knowledge_write(struct knowledge *k, const char *path, int64_t base, const char *data,
		    size_t len, uid_t uid, int64_t *ret_version);
/* Commits a deletion of a live document as its next version; -ENOENT when there is none. */
int knowledge_delete(struct knowledge *k, const char *path, uid_t uid);
/* -EEXIST when path is a directory or a live document; -ENOENT without a parent. */
int knowledge_mkdir(struct knowledge *k, const char *path, uid_t uid);
/* -ENOTEMPTY while it holds a live document or a directory. */
int knowledge_rmdir(struct knowledge *k, const char *path);

/* The names in directory dir: its subdirectories and live documents, or (with_deleted)
 * every document that ever had a version. A new sorted NULL-terminated array. */
char **knowledge_list(struct knowledge *k, const char *dir, bool with_deleted, size_t *ret_n);
/* The versions of path as decimal names, oldest first: a new NULL-terminated array. */
char **knowledge_versions(struct knowledge *k, const char *path, size_t *ret_n);

/* A document being created and not yet committed shows as empty at version 0 while held
 * (so an fstat between create and close finds it). Holds nest; release undoes one. */
void knowledge_hold(struct knowledge *k, const char *path, uid_t uid);
void knowledge_release(struct knowledge *k, const char *path);

/* Called per version with seq greater than `after`, oldest first (data NULL for a
 * deletion; borrowed for the call); returns nonzero to stop. */
typedef int (*knowledge_version_fn)(void *arg, int64_t seq, const char *path, int64_t version,
				    const char *data, size_t len, bool deleted);
/* At most max versions after seq `after`. Returns the number given, or -errno. */
int knowledge_since(struct knowledge *k, int64_t after, size_t max, knowledge_version_fn fn,
		    void *arg);
/* The seq of the newest version (0: none). */
int64_t knowledge_seq(struct knowledge *k);

/* ---- replicas on the agents ---- */
struct loop;
struct cluster;

/* Main thread, before cluster_start: every committed version is sent to every node's
 * agent (PUT or DELETE /api/node/knowledge/PATH?version=N&seq=S), one at a time per
 * node, in seq order, from the seq the node reports in its health document
 * ("knowledge_seq"): so a node that was away catches up. Borrows both. */
void knowledge_replicate(struct knowledge *k, struct loop *loop, struct cluster *cluster);
/* A cluster_change_fn (arg: the struct knowledge): a node's health came in. Never blocks. */
void knowledge_on_cluster_change(void *arg, const char *node);
