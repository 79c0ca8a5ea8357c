/* Models: what each node's model servers hold — Ollama (/api/tags, /api/ps, /api/pull,
 * /api/delete, /api/show, load and unload through /api/generate) and OpenAI-compatible
 * servers (/v1/models) — and the cluster-wide view. A node's model servers are the
 * services of its host named "ollama" or with "type": "ollama", and those with
 * "type": "openai". Data is fetched on demand (at most probe.max_age_ms old when a
 * refresh was asked) and kept in memory; everything here is thread-safe, and network work
 * runs on the loop thread.
 *
 * Model names become file names reversibly: '%' is written "%25" and '/' "%2F"; every
 * other byte stays as it is (so "qwen3:8b" is the file qwen3:8b). */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/util.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct models;

int models_new(struct loop *loop, struct cluster *cluster, struct models **ret);
void models_free(struct models *m);

/* The file name of a model name, and back. New strings; decode returns NULL for a name
 * that no encoding produces (a bad %-escape). */
char *models_encode_name(const char *model);
char *models_decode_name(const char *file);

/* True when the node has at least one model server. */
bool models_node_has_server(struct models *m, const char *node);

typedef void (*models_done_fn)(void *arg);
/* Any thread: makes the model lists of `node` (or of every node with a model server, when
 * node is NULL) at most max_age_ms old (DESIGN §2, "The async contract"). Returns 1 when
 * they are fresh already, or failed recently (done is not called); 0 when a refresh runs:
 * done(arg) then runs exactly once on the loop thread, once all answered or timed out,
 * within probe.timeout_ms (done may be NULL: a refresh in the background); -ENOENT for a
 * node not in the config, or another -errno (done is not called). Coalesces with refreshes
 * in flight. */
int models_refresh(struct models *m, const char *node, models_done_fn done, void *arg);

/* Encoded file names of the models on a node, sorted; new NULL-terminated array. */
char **models_node_list(struct models *m, const char *node, size_t *ret_n);
/* The entry of a model on a node (what nodes/NODE/models/MODEL shows, fs/render_models.c
 * renders it): name, size, family, parameter_size, quantization, digest, modified_at,
 * loaded, size_vram, expires_at, server ("ollama" or "openai"), checked_at, and error when
 * the last refresh failed. A new reference, or NULL when the node has no such model. */
json_t *models_node_entry(struct models *m, const char *node, const char *model);

/* One command written to nodes/NODE/models/ctl, as the operations list shows it. */
struct models_op_view {
	double started_at; /* wall */
	const char *verb;  /* "pull", "delete", "load", "unload" (static) */
	char *model;
	const char *state; /* "running", "done", "failed" (static) */
	char *detail;      /* progress or outcome, or NULL */
};
/* The operations of a node, oldest first: a new array in *ret (NULL when there are none);
 * free with models_ops_free. Returns their number. */
size_t models_ops(struct models *m, const char *node, struct models_op_view **ret);
void models_ops_free(struct models_op_view *ops, size_t n);
/* Runs a command written to nodes/NODE/models/ctl: "pull NAME", "delete NAME", "load
 * NAME", "unload NAME". done(arg, err, why) runs on the loop thread: for pull as soon as
 * the server accepted it (progress then shows in ctl), for the others when the server
 * answered. Returns 0 (done will run) or -errno with a sentence in errbuf. */
typedef void (*models_ctl_fn)(void *arg, int err, const char *why);
int models_ctl(struct models *m, const char *node, const char *cmd, models_ctl_fn done, void *arg,
	       char *errbuf, size_t errlen);

/* How a node holds a model, as last fetched (prompt placement reads it). */
enum models_holding {
	MODELS_NO_SERVER = -1, /* the node has no model server */
	MODELS_ABSENT = 0,
	MODELS_PRESENT = 1, /* listed by one of its servers */
	MODELS_LOADED = 2,  /* in an Ollama server's memory (/api/ps) */
};
enum models_holding models_node_holds(struct models *m, const char *node, const char *model);

/* The server of `node` to ask `model` (by name, not file name): one that has it loaded,
 * else one that lists it. Fills *ret_base (the server's base endpoint, a copy to clear with
 * endpoint_clear), *ret_openai and *ret_where (a new "SERVICE at ADDR:PORT"). 0, or -ENOENT
 * when no server of the node lists the model. */
struct endpoint;
int models_server_for(struct models *m, const char *node, const char *model,
		      struct endpoint *ret_base, bool *ret_openai, char **ret_where);

/* The cluster-wide view: encoded names of every model on any node, sorted. */
char **models_list(struct models *m, size_t *ret_n);
/* Every node's entries (as models_node_entry has them, without checked_at and error),
 * node -> (name -> entry), for the nodes of the config with a model server, in config
 * order (sorted by name). A new object; models/MODEL/ is rendered from it. */
json_t *models_cluster_view(struct models *m);
/* Wall time the model data last changed (for mtimes). */
double models_changed_at(struct models *m);
/* Monotonic start of node's last refresh of its model servers (0 when none): its model
 * files' checked_at and error move with it. */
uint64_t models_node_refreshed_us(struct models *m, const char *node);

/* The MODEL argument of models_node_entry and models_server_for is the
 * model's name (decoded from the file name by the caller); NAME in a ctl command is a model
 * name too, and a file name copied from models/ is accepted as well. */

/* Splitting a byte stream into lines (Ollama's NDJSON progress) across chunk boundaries.
 * Feed the chunks as they come, then finish once: fn sees every non-empty line without its
 * "\n" or "\r\n" (not NUL-terminated). A line longer than MODELS_LINE_MAX is dropped. */
#define MODELS_LINE_MAX (64u << 10)

struct models_lines {
	struct buf partial; /* the unfinished line */
	bool skipping;      /* inside a line longer than MODELS_LINE_MAX */
};

typedef void (*models_line_fn)(const char *line, size_t len, void *arg);
void models_lines_init(struct models_lines *l);
void models_lines_feed(struct models_lines *l, const char *data, size_t len, models_line_fn fn,
		       void *arg);
/* Hands over a last line that had no newline and frees the state. */
void models_lines_finish(struct models_lines *l, models_line_fn fn, void *arg);
