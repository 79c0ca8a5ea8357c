/* The durable store: sqlite in WAL mode in the state directory. Tasks, their attempts,
 * events, kept output, pending deliveries and metadata, with a schema version and
 * migrations. One connection per thread: each thread calls store_thread_db() through
 * the functions below; a struct store is shared and thread-safe. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STORE_SCHEMA_VERSION 5

struct store;
struct sqlite3;

/* The calling thread's connection, opened on first use (NULL on failure); borrowed, for
 * modules that keep their own tables in the store (backend/knowledge.c). */
struct sqlite3 *store_thread_db(struct store *s);

/* One task as stored. Strings are owned; store_task_clear() frees them. */
struct store_task {
	char *id;
	char *parent;      /* for the copies of a node:"all" task, the parent's id; or NULL */
	char *spec;        /* canonical spec JSON */
	char *state;       /* queued dispatched running succeeded failed timed_out cancelled lost */
	char *node;        /* where it is placed, or NULL */
	char *dispatch_id; /* id on the agent for the current attempt, or NULL */
	char *reason;      /* why it waits, or why it ended; or NULL */
	char *placement;   /* why this node; or NULL */
	int exit_code;     /* -1 when none */
	int attempts;      /* dispatches so far */
	int priority;      /* 0..3 */
	uid_t uid;         /* submitter */
	gid_t gid;         /* the submitter's group at submission (owner of its files) */
	char *user;        /* the submitter's user name, or NULL (unknown, or before v2) */
	double submitted_at, started_at, finished_at; /* wall; 0 when not yet */
	int64_t seq;                                  /* submission order */
};

void store_task_clear(struct store_task *t);

/* Opens (creating or migrating) DIR/clusterfs.db, and makes it and its WAL files 0600.
 * errbuf gets a sentence on failure. */
int store_open(const char *dir, struct store **ret, char *errbuf, size_t errlen);
void store_close(struct store *s);
/* Closes every connection (the calling thread's is the only one allowed to exist); the
 * next call on a thread opens its own again. Before fork(): sqlite's locks belong to the
 * process that took them, so a connection must not cross into the child. */
void store_close_connections(struct store *s);

/* For the calling thread's connection: full durability (an fsync per commit, the
 * default: what a submission needs before close() returns) or not (commits survive a
 * crash of the process but not of the machine: enough for state that is reconciled
 * with the agents anyway). */
void store_set_durable(struct store *s, bool full);

/* This control plane's id: random, made once per state directory, kept forever. Borrowed. */
const char *store_instance_id(struct store *s);

/* Inserts a new task; -EEXIST when the id is taken. Durable when it returns 0. */
int store_insert_task(struct store *s, struct store_task *t);
/* Inserts several tasks in one transaction (a node:"all" parent and its copies). */
int store_insert_tasks(struct store *s, struct store_task *ts, size_t n);
/* Writes every mutable field of an existing task. */
int store_update_task(struct store *s, const struct store_task *t);
/* Frees an array of tasks the functions below return. */
void store_tasks_free(struct store_task *ts, size_t n);
/* Loads the unfinished tasks (queued, dispatched, running), in submission order: a new
 * array (free with store_tasks_free). Finished ones are read when asked for. */
int store_load_unfinished(struct store *s, struct store_task **ret, size_t *ret_n);
/* Loads task `id` into *ret (clear with store_task_clear): 0 or -ENOENT. */
int store_load_task(struct store *s, const char *id, struct store_task *ret);
/* The newest `max` tasks by submission, newest first: a new array. */
int store_load_recent(struct store *s, size_t max, struct store_task **ret, size_t *ret_n);
/* The ids of the copies of node:"all" task `parent`, in submission order: a new
 * NULL-terminated array (free each string and the array). */
int store_list_children(struct store *s, const char *parent, char ***ret_ids, size_t *ret_n);

/* Called per task of a page with its submission number and id (borrowed for the call);
 * returns true to stop. */
typedef bool (*store_page_fn)(void *arg, int64_t seq, const char *id);
/* One page of task ids in submission order, from the first with seq > after, at most max:
 * all tasks (group -1, node NULL), one group (0 queued, 1 dispatched or running,
 * 2 succeeded, 3 failed, timed_out, cancelled or lost), or those placed on `node`. Seeks
 * an index: a page costs what it returns, wherever it starts. Returns the number of rows
 * read (a stop counts the row it stopped at) or -errno. */
int store_list_page(struct store *s, int group, const char *node, int64_t after, size_t max,
		    store_page_fn fn, void *arg);

/* Called per (node or NULL, state) pair with the number of tasks there in that state. */
typedef void (*store_count_fn)(void *arg, const char *node, const char *state, int64_t n);
/* Counts every task by node and state: one walk of an index, no task read. */
int store_count_tasks(struct store *s, store_count_fn fn, void *arg);
/* The failures (failed, timed out, lost) on a node since its last success, in
 * submission order. */
int store_node_failures_since_success(struct store *s, const char *node);
/* Called per task placed on a node that ended at or after `since`. */
typedef void (*store_ended_fn)(void *arg, const char *node, const char *state, double at);
int store_count_ended_since(struct store *s, double since, store_ended_fn fn, void *arg);

/* The retention of finished tasks (0: no limit). */
struct store_retention {
	double output_s;      /* output is removed this long after its task ended */
	int64_t output_bytes; /* the oldest output is removed while all kept exceeds this */
	double records_s;     /* whole tasks are removed this long after they ended */
};
/* Told after a prune commits, per task: its record went (with its node and state, for
 * the counts), or only its output (record false; node and state NULL). Borrowed. */
typedef void (*store_pruned_fn)(void *arg, const char *id, const char *node, const char *state,
				bool record);
/* Applies the retention to at most `batch` finished tasks, oldest end first, from where
 * the last run stopped (output) or from the oldest (records): a run costs what it
 * removes. Removed output reads as one line saying so (store_get_output); streams that
 * were empty stay empty. *ret_next: the wall time the
 * next run has work (now when this one stopped at the batch; 0: none is known yet).
 * Returns the number of tasks pruned, or -errno. */
int store_prune(struct store *s, const struct store_retention *p, double now, size_t batch,
		store_pruned_fn fn, void *arg, double *ret_next);

/* Records one attempt's outcome. */
int store_add_attempt(struct store *s, const char *task_id, int attempt, const char *node,
		      const char *dispatch_id, const char *state, int exit_code, double started_at,
		      double finished_at);

/* Kept output of a task (stream "stdout" or "stderr"): replaced whole, bounded by caller;
 * the store keeps the total of all kept output (store_output_total). */
int store_put_output(struct store *s, const char *task_id, const char *stream, const char *data,
		     size_t len);
/* Returns a new buffer (may be empty) in *ret_data; output the retention removed reads as
 * one line saying so. */
int store_get_output(struct store *s, const char *task_id, const char *stream, char **ret_data,
		     size_t *ret_len);
/* The length of kept output (one stream, or both when stream is NULL), without reading it. */
int store_output_size(struct store *s, const char *task_id, const char *stream, size_t *ret_len);
/* The bytes of all kept output. */
int64_t store_output_total(struct store *s);

/* Key-value metadata. store_get_meta returns a new string or NULL. */
int store_set_meta(struct store *s, const char *key, const char *value);
char *store_get_meta(struct store *s, const char *key);

/* A durable outbox: things to deliver to a remote service, each exactly once. */
int store_outbox_add(struct store *s, const char *kind, const char *key, const char *body,
		     int64_t *ret_id);
/* Loads pending entries of a kind, oldest first: arrays of ids, keys and bodies (new). */
int store_outbox_list(struct store *s, const char *kind, int64_t **ret_ids, char ***ret_keys,
		      char ***ret_bodies, size_t *ret_n);
int store_outbox_done(struct store *s, int64_t id);

/* A cache of JSON documents by key (e.g. the ledger's copy). */
int store_cache_put(struct store *s, const char *key, const char *json, double fetched_at);
/* 0 and a new string, or -ENOENT. */
int store_cache_get(struct store *s, const char *key, char **ret_json, double *ret_fetched_at);

/* One event line as kept: its sequence number (unique, rising), wall time and text (with
 * its newline; owned by whoever holds the struct). */
struct store_event {
	int64_t seq;
	double at;
	char *line;
	size_t len;
};

/* Appends events in one transaction, then drops all but the newest `keep` (0: keep all). */
int store_events_add(struct store *s, const struct store_event *evs, size_t n, int64_t keep);
/* Loads the newest `max` events, oldest first: a new array (free with store_events_free). */
int store_events_load(struct store *s, size_t max, struct store_event **ret, size_t *ret_n);
void store_events_free(struct store_event *evs, size_t n);

/* Drained nodes: marks (since: wall time) or clears one; loads the names (a new
 * NULL-terminated array, or NULL when none: free each string and the array). */
int store_set_drain(struct store *s, const char *node, bool draining, double since);
int store_load_drains(struct store *s, char ***ret_nodes, size_t *ret_n);

/* A consistent copy of the store as it is now (sqlite's online backup API, one read
 * transaction: a commit is in it or not, and writers are not held up), in a new unlinked
 * file of the state directory: *ret_fd reads it from offset 0 (the caller closes it).
 * errbuf gets a sentence on failure. */
int store_snapshot(struct store *s, int *ret_fd, char *errbuf, size_t errlen);

/* Makes DIR/clusterfs.db a copy of the store in `file` (a store_snapshot, or a copy of a
 * stopped daemon's clusterfs.db): checks it is a sound clusterfs store of a schema version
 * this clusterfs knows (*ret_version gets it), replaces what DIR held (the caller decides
 * whether it may) and migrates it. errbuf gets a sentence on failure. */
int store_restore(const char *file, const char *dir, int *ret_version, char *errbuf, size_t errlen);
