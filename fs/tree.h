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
#include <stdint.h>
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
	struct artifacts *artifacts; /* tasks/ID/files/, or NULL */
	struct knowledge *knowledge; /* knowledge/, or NULL */
};

/* The paths fs/ and the renderers single out by name; a row nothing singles out may be
 * TREE_PLAIN. */
enum tree_kind {
	TREE_NONE,
	TREE_PLAIN,
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
	/* knowledge/ (file: the path below it, NULL for the top) */
	TREE_KNOWLEDGE,          /* knowledge/ and its subdirectories */
	TREE_KNOWLEDGE_VERSIONS, /* knowledge/.versions/ and the directories in it */
	TREE_KNOWLEDGE_HISTORY,  /* knowledge/.versions/NAME: one document's versions */
	TREE_BACKUP,
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

struct tree_entry;

/* What a path is. */
enum tree_type { TREE_FILE, TREE_DIR, TREE_LINK };

/* Who a path belongs to: st_uid, st_gid and, for private task files, the mode. */
enum tree_owner {
	TREE_OWN_DAEMON,       /* the daemon's user */
	TREE_OWN_TASK,         /* the task's submitter (group tasks.group when set) */
	TREE_OWN_TASK_PRIVATE, /* likewise, and 0600 (0640 with tasks.group): may hold secrets */
	TREE_OWN_DRAFT,        /* the draft's creator; its mode, size and mtime (drafts.h) */
};

/* What is fetched from the network before a path is answered. */
enum tree_refresh {
	TREE_REFRESH_NONE,
	TREE_REFRESH_NODE,        /* the node's probe when stale: at open, stat and lookup */
	TREE_REFRESH_NODES,       /* every stale node's probe, one round; likewise */
	TREE_REFRESH_MODELS,      /* the model servers' lists: at open, listing, lookup in it */
	TREE_REFRESH_NODE_MODELS, /* the node's model servers; likewise */
	TREE_REFRESH_LEDGER,      /* the ledger host's entries; likewise */
};

/* Where the mtime comes from: the wall time the data behind the path last changed. */
enum tree_mtime {
	TREE_MTIME_STARTED, /* the daemon's start: the data never changes */
	TREE_MTIME_CLUSTER, /* the node table or the config */
	TREE_MTIME_TASKS,   /* the task table */
	TREE_MTIME_DRAFTS,  /* tasks/new/ */
	TREE_MTIME_LEDGER,
	TREE_MTIME_MODELS,
	TREE_MTIME_RENDER, /* the renderer says (a node's or a task's, or the newest of several) */
};

/* How a file's bytes are kept between a stat, an open and its reads. */
enum tree_cache {
	TREE_CACHE_OPEN,  /* directories and links: no bytes to keep (a file's would be
			  * rendered at open, and at every stat for the size) */
	TREE_CACHE_GEN,   /* a snapshot kept until the data's generation (the gen column) moves:
			  * stat, lookup and open in between share its bytes, size and mtime */
	TREE_CACHE_HELD,  /* likewise, and refreshed first when stale; the snapshot a stat made
			  * is what an open within probe.max_age_ms reads (struct snap, snap.c) */
	TREE_CACHE_GROWS, /* only grows: a read past the handle's end fetches what is new */
	TREE_CACHE_NONE,  /* not rendered: a draft, wait, backup/state.db, a service's GET */
};

/* What a write to a file does. */
enum tree_write {
	TREE_WRITE_NONE,  /* read-only: an open for writing is refused */
	TREE_WRITE_CMD,   /* one command per write (ctl files) */
	TREE_WRITE_FLUSH, /* collected on the handle, acted on at flush (or read back) */
	TREE_WRITE_DRAFT, /* kept as a draft of tasks/new/, submitted at close */
};

/* What a snapshot's generation is made of (TREE_CACHE_GEN and _HELD); none: the bytes
 * never change. */
#define TREE_GEN_CLUSTER     1u  /* cluster_generation(): any node's data, the nodes, the config */
#define TREE_GEN_NODE        2u  /* the node's changed_at, and the config's */
#define TREE_GEN_TASKS       4u  /* tasks_changed_at() */
#define TREE_GEN_MODELS      8u  /* models_changed_at(), and the config's */
#define TREE_GEN_TASK        16u /* the task's own data (tasks_task_generation), and the config's */
#define TREE_GEN_LEDGER      32u /* ledger_changed_at(), and the config's */
#define TREE_GEN_FETCH       64u /* ledger_fetched_at(): its last fetch, or failed fetch */
#define TREE_GEN_NODE_MODELS 128u /* the node's last model refresh (models_node_refreshed_us) */
#define TREE_GEN_EVENTS      256u /* the events' last change: every alert comes and goes with one */

/* Which change of the node table invalidates the kernel's cache of a file. */
#define TREE_INVAL_NODE    1u /* its node's data changed */
#define TREE_INVAL_CLUSTER 2u /* any node's data, or the config, changed */

#define TREE_TIMEOUT_S 1.0 /* the kernel's entry and attribute cache, by default */
#define TREE_TIMEOUT_LONG_S                                                                        \
	60.0               /* for what changes only with notified changes (a bound,
				  * should a notification be dropped) */
#define TREE_MAX_PARAMS 4  /* "{name}" segments per pattern */
#define TREE_MAX_DEPTH  16 /* segments per path (an output's subdirectories) */

/* One row of the tree table (tree_rows): every path the pattern matches is what the row
 * says. A pattern is matched segment by segment, as the agent's routes are
 * (httpd/server.h): a literal segment matches itself, a "{param}" segment any one name
 * the parameter accepts (tree.c's param table says which and how it is checked to
 * exist); a "{param*}" segment, last in a pattern, one or more segments (an output's
 * or a knowledge document's path). The first row that matches and whose parameters exist wins. */
struct tree_row {
	const char *pattern; /* "/nodes/{node}/health" */
	enum tree_kind kind; /* what fs/ singles out; TREE_PLAIN when nothing */
	enum tree_type type;
	mode_t mode; /* permission bits */
	enum tree_owner owner;
	enum tree_refresh refresh;
	enum tree_mtime mtime;
	enum tree_cache cache;
	unsigned gen; /* TREE_GEN_*: what the snapshot's generation is made of */
	enum tree_write write;
	unsigned inval;       /* TREE_INVAL_* */
	double entry_timeout; /* seconds the kernel may keep the name */
	double attr_timeout;  /* seconds the kernel may keep the attributes */
	bool direct_io;       /* reads bypass the page cache; without it, a snapshot whose size
			       * the kernel was told is read through the page cache, kept
			       * across opens while its generation holds (keep_cache) */
	bool plus;            /* directories: listed with the children's attributes
			       * (readdirplus), so a glob over them looks nothing up */
	/* files: appends the content to out; may set *ret_mtime (TREE_MTIME_RENDER) and, for
	 * events, *ret_seq (may be NULL); 0 or -errno */
	int (*render)(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		      double *ret_mtime, uint64_t *ret_seq);
	/* directories: the names besides the table's own children (a new NULL-terminated
	 * array, or NULL for none) */
	char **(*list)(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n);
	const char *target; /* symlinks: the target, a pattern over the entry ("../{task}") */
};

/* The table, tree_n_rows rows, in match order. */
extern const struct tree_row tree_rows[];
extern const size_t tree_n_rows;

/* True for the paths under knowledge/. */
bool tree_kind_is_knowledge(enum tree_kind kind);

/* The first row of a kind (a handle made for a path not in the tree yet: a knowledge
 * document being created), or NULL. */
const struct tree_row *tree_row_of(enum tree_kind kind);

/* The row a path matches by its shape alone (nothing is looked up), or NULL: the first
 * whose pattern util_path_match (backend/util.h) matches. Each "{param}" segment's run of
 * path goes to ret_caps (TREE_MAX_PARAMS), their number to *ret_n (both may be NULL). */
const struct tree_row *tree_match(const char *path, struct path_capture *ret_caps, size_t *ret_n);

/* A pattern with its parameters filled in from an entry ("/nodes/{node}/status" and node
 * spark1: "/nodes/spark1/status"), as a new string; NULL when the entry lacks one. */
char *tree_format(const char *pattern, const struct tree_entry *e);

/* What a path names. Owned strings, NULL when not part of the path. */
struct tree_entry {
	const struct tree_row *row; /* the row it matched; borrowed from tree_rows */
	enum tree_kind kind;        /* row->kind */
	char *node;                 /* the node the path lies under */
	char *task;                 /* the task the path names or lies under */
	char *name; /* a draft's, group's, service's, ledger step's or metric's name */
	char *file; /* a service's file, a model's file name, or a task's output's path */
};

void tree_entry_clear(struct tree_entry *e);

/* Classifies a path against the tree as it is now: its row, and each parameter checked to
 * exist (the node is known, the task is in that group, ...). 0, or -ENOENT. */
int tree_classify(const struct tree_ctx *ctx, const char *path, struct tree_entry *ret);

/* A symlink's target, as a new string. */
char *tree_link_target(const struct tree_entry *e);

/* The names in a directory without "." and "..": the table's children of its row and the
 * row's list, sorted together (only the list's: in its order). Returns a new
 * NULL-terminated array, or NULL with -ENOTDIR/-ENOENT in *ret_err. */
char **tree_list(const struct tree_ctx *ctx, const char *path, size_t *ret_n, int *ret_err);

/* Joins a directory path and a name into a new string. */
char *tree_join(const char *dir, const char *name);
/* The parent of a path, as a new string ("/" for "/" itself). */
char *tree_parent(const char *path);
