/* The shape of the tree: which paths exist, what each one is, and a directory's
 * children. Paths are absolute within the mount ("/", "/nodes/spark1/health"). */
#pragma once

#include "backend/artifacts.h"
#include "backend/cluster.h"
#include "backend/knowledge.h"
#include "backend/ledger.h"
#include "backend/models.h"
#include "backend/services.h"
#include "backend/tasks.h"
#include "fs/drafts.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct store;

/* What the tree is made of. Borrowed by every call. */
struct tree_ctx {
	struct cluster *cluster;
	struct tasks *tasks;
	struct drafts *drafts;
	struct services *services;
	struct ledger *ledger;
	struct models *models;
	struct store *store;         /* backup/state.db copies it */
	struct artifacts *artifacts; /* tasks/ID/files/ */
	struct knowledge *knowledge; /* knowledge/ */
};

enum tree_kind {
	TREE_NONE,
	/* directories */
	TREE_ROOT,
	TREE_NODES,
	TREE_NODE,
	TREE_NODE_TASKS,
	TREE_TASKS,
	TREE_TASKS_NEW,
	TREE_TASKS_GROUP, /* queued/ running/ done/ failed/ */
	TREE_TASK,
	TREE_SERVICES,
	TREE_SERVICE,
	TREE_LEDGER,
	TREE_LEDGER_ENTRIES,
	TREE_LEDGER_BEST,
	TREE_MODELS,
	TREE_MODEL,
	TREE_NODE_MODELS,
	TREE_TASK_FILES, /* tasks/ID/files/ and its subdirectories (file: the path in it) */
	/* knowledge/ (file: the path below it, "" for the top) */
	TREE_KNOWLEDGE,          /* knowledge/ and its subdirectories */
	TREE_KNOWLEDGE_VERSIONS, /* knowledge/.versions/ and the directories in it */
	TREE_KNOWLEDGE_HISTORY,  /* knowledge/.versions/NAME: one document's versions */
	TREE_BACKUP,             /* the last directory kind */
	/* files at the top */
	TREE_README,
	TREE_CONFIG,
	TREE_STATS,
	TREE_ALERTS,
	TREE_EVENTS,
	TREE_TOPOLOGY_JSON,
	TREE_TOPOLOGY_DOT,
	TREE_METRICS,
	TREE_HEALTH,       /* every node's health in one document */
	TREE_PLACEMENT,    /* ranked nodes; write a spec, read back on the same handle */
	TREE_DASHBOARD,    /* dashboard.html */
	TREE_RECENT_TASKS, /* recent-tasks.json */
	/* files in nodes/NODE/ */
	TREE_NODE_STATUS,
	TREE_NODE_HEALTH,
	TREE_NODE_INFO,
	TREE_NODE_ADDRESS,
	TREE_NODE_ROLE,
	TREE_NODE_TIER,
	TREE_NODE_CAPABILITIES,
	TREE_NODE_RELIABILITY,
	TREE_NODE_CTL,
	/* files in tasks/ID/ */
	TREE_TASK_SPEC,
	TREE_TASK_STATUS,
	TREE_TASK_NODE,
	TREE_TASK_EXIT_CODE,
	TREE_TASK_INFO,
	TREE_TASK_STDOUT,
	TREE_TASK_STDERR,
	TREE_TASK_RESULT, /* a prompt task's final JSON */
	TREE_TASK_WAIT,
	TREE_TASK_CTL,
	TREE_TASK_FILE, /* tasks/ID/files/NAME: an output (file: NAME) */
	/* files in tasks/new/ */
	TREE_DRAFT,
	/* services/NAME/FILE */
	TREE_SERVICE_FILE,
	/* ledger/ */
	TREE_LEDGER_ENTRY,
	TREE_LEDGER_BEST_FILE,
	TREE_LEDGER_SUMMARY,
	TREE_LEDGER_RECORD,
	TREE_LEDGER_SOURCE,
	/* models/MODEL/ and nodes/NODE/models/ */
	TREE_MODEL_NODES,
	TREE_MODEL_LOADED,
	TREE_MODEL_INFO,
	TREE_NODE_MODEL,
	TREE_NODE_MODELS_CTL,
	/* knowledge/ */
	TREE_KNOWLEDGE_DOC,     /* knowledge/NAME (file: NAME) */
	TREE_KNOWLEDGE_VERSION, /* knowledge/.versions/NAME/N (file: NAME, name: N) */
	/* backup/ */
	TREE_BACKUP_STATE, /* state.db: a copy of the store made at open */
	/* symlinks */
	TREE_TASK_LINK,      /* tasks/GROUP/ID -> ../ID */
	TREE_NODE_TASK_LINK, /* nodes/NODE/tasks/ID -> ../../../tasks/ID */
};

/* What a path names. Owned strings, NULL when not part of the path. */
struct tree_entry {
	enum tree_kind kind;
	char *node; /* the node the path lies under */
	char *task; /* the task the path names or lies under */
	char *name; /* a draft's, group's, service's, ledger step's or metric's name */
	char *file; /* a service's file, a model's file name, or a task's output's name */
};

void tree_entry_clear(struct tree_entry *e);

/* Classifies a path against the tree as it is now: 0, or -ENOENT. */
int tree_classify(const struct tree_ctx *ctx, const char *path, struct tree_entry *ret);

bool tree_kind_is_dir(enum tree_kind kind);
bool tree_kind_is_link(enum tree_kind kind);
/* The permission bits (0444 read-only files, 0555 directories, 0666 task ctl, ...). */
mode_t tree_kind_mode(enum tree_kind kind);
/* True for files whose content only grows (reads past the snapshot fetch what is new). */
bool tree_kind_is_append_only(enum tree_kind kind);
/* True for files an open refreshes from the network before answering. */
bool tree_kind_refreshes(enum tree_kind kind);
/* True for files that take writes (commands). */
bool tree_kind_is_ctl(enum tree_kind kind);
/* True for directories and files whose content needs a fresh fetch first (models,
 * ledger): opening, listing or looking up in them refreshes stale data. */
bool tree_kind_is_models(enum tree_kind kind);
bool tree_kind_is_ledger(enum tree_kind kind);
bool tree_kind_is_knowledge(enum tree_kind kind);

/* A symlink's target, as a new string. */
char *tree_link_target(const struct tree_entry *e);

/* The names in a directory, sorted, without "." and "..". Returns a new NULL-terminated
 * array, or NULL with -ENOTDIR/-ENOENT in *ret_err. */
char **tree_list(const struct tree_ctx *ctx, const char *path, size_t *ret_n, int *ret_err);

/* Joins a directory path and a name into a new string. */
char *tree_join(const char *dir, const char *name);
/* The parent of a path, as a new string ("/" for "/" itself). */
char *tree_parent(const char *path);
