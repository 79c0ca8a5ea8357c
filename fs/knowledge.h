/* knowledge/ in the tree: stat, read and commit of documents and their versions, over
 * backend/knowledge.h. fs/fs.c routes the knowledge kinds here. */
#pragma once

#include "backend/knowledge.h"
#include "fs/tree.h"

#include <stdint.h>
#include <sys/stat.h>

/* Fills st's mode, size, owner and nlink for a knowledge entry, and its mtime. */
int fs_knowledge_stat(const struct tree_ctx *ctx, const struct tree_entry *e, struct stat *st,
		      double *ret_mtime);
/* Appends a document's latest bytes, or one version's, to out. */
int fs_knowledge_read(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out);
/* The commit at close of what a writer holds: a new version after *base, which then
 * becomes it. When someone committed after *base: the bytes go to NAME.conflict instead
 * (nothing lost) and -EBUSY; -EFBIG past KNOWLEDGE_DOC_MAX. */
int fs_knowledge_commit(const struct tree_ctx *ctx, const char *path, int64_t *base,
			const struct buf *bytes, uid_t uid);
/* The document's path below knowledge/ for a name in directory entry dir (a
 * TREE_KNOWLEDGE), as a new string; NULL with -EINVAL in *ret_err for a name that is not
 * a task name. */
char *fs_knowledge_child(const struct tree_entry *dir, const char *name, int *ret_err);
