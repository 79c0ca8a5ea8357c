/* The FUSE lowlevel filesystem. Answers every request from memory, or hands it to the
 * backend and replies from the loop thread when the backend is done. */
#pragma once

#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

#include "backend/cluster.h"
#include "backend/tasks.h"
#include "fs/tree.h"

struct fs;

/* Creates the filesystem over the backends in `backends` (cluster, tasks, services, ledger,
 * models; borrowed: they outlive the fs; its drafts field is ignored). */
int fs_new(const struct tree_ctx *backends, struct fs **ret);
void fs_free(struct fs *f);
/* The lowlevel operations; their userdata is the struct fs. */
const struct fuse_lowlevel_ops *fs_ops(void);
/* Once mounted: lets the fs invalidate kernel caches when the cluster changes. Starts the
 * notifier thread. Pass NULL before unmounting to stop it. */
void fs_set_session(struct fs *f, struct fuse_session *se);
/* A cluster_change_fn: queues cache invalidations for what changed. Never blocks. */
void fs_on_cluster_change(void *arg, const char *node);
