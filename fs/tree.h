/* The shape of the tree: which paths exist, what each one is, and a directory's
 * children. Paths are absolute within the mount ("/", "/nodes/spark1/health"). */
#pragma once

#include "backend/cluster.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum tree_kind {
	TREE_NONE,
	/* directories */
	TREE_ROOT,
	TREE_NODES,
	TREE_NODE,
	/* files at the top */
	TREE_README,
	TREE_CONFIG,
	TREE_STATS,
	TREE_ALERTS,
	TREE_EVENTS,
	TREE_TOPOLOGY_JSON,
	TREE_TOPOLOGY_DOT,
	TREE_METRICS,
	/* files in nodes/NODE/ */
	TREE_NODE_STATUS,
	TREE_NODE_HEALTH,
	TREE_NODE_INFO,
	TREE_NODE_ADDRESS,
	TREE_NODE_ROLE,
	TREE_NODE_TIER,
	TREE_NODE_CAPABILITIES,
};

/* What a path names. `node` is the node the path lies under, or NULL. */
struct tree_entry {
	enum tree_kind kind;
	char *node; /* owned */
};

void tree_entry_clear(struct tree_entry *e);

/* Classifies a path against the cluster as it is now: 0, or -ENOENT. */
int tree_classify(struct cluster *c, const char *path, struct tree_entry *ret);

bool tree_kind_is_dir(enum tree_kind kind);
/* The file's permission bits (0444 read-only, 0555 directories, ...). */
mode_t tree_kind_mode(enum tree_kind kind);
/* True for files whose content only grows (reads past the snapshot fetch what is new). */
bool tree_kind_is_append_only(enum tree_kind kind);
/* True for files an open refreshes from the network before answering. */
bool tree_kind_refreshes(enum tree_kind kind);

/* The names in a directory, sorted, without "." and "..". Returns a new NULL-terminated
 * array, or NULL with -ENOTDIR/-ENOENT in *ret_err. */
char **tree_list(struct cluster *c, const char *path, size_t *ret_n, int *ret_err);

/* Joins a directory path and a name into a new string. */
char *tree_join(const char *dir, const char *name);
/* The parent of a path, as a new string ("/" for "/" itself). */
char *tree_parent(const char *path);
