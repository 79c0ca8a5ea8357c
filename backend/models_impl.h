/* Models, inside: the state that backend/models.c (the model view, servers, operations,
 * ctl), backend/models_refresh.c (fetching the lists), backend/ollama.c (the Ollama client)
 * and backend/openai.c (the OpenAI-compatible client) share. Not for use outside them.
 * struct models owns its nodes; a node owns its servers and operations; everything marked
 * "m->lock" is read and written under struct models' lock only. */
#pragma once

#include "backend/models.h"
#include "backend/endpoint.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#define OPS_MAX 20 /* operations kept per node for ctl */

enum fetch_kind { FETCH_TAGS, FETCH_PS, FETCH_OPENAI };

/* One model server of a node and what it answered last. */
struct server {
	char *service;        /* the config's service name */
	bool openai;          /* OpenAI-compatible (read-only), else Ollama */
	struct endpoint base; /* "SCHEME://ADDR:PORT" and the path, without a trailing '/' */
	char *path;           /* the path alone ("" or "/v1"), for messages */
	char *where;          /* "SERVICE at ADDR:PORT", for messages */
	json_t *tags;         /* Ollama: /api/tags "models", or NULL when never fetched */
	json_t *ps;           /* Ollama: /api/ps "models", or NULL */
	json_t *data;         /* OpenAI: /models "data", or NULL */
	char *error;          /* why the last fetch failed, or NULL */
};

struct waiter {
	models_done_fn done;
	void *arg;
	size_t pending; /* refreshes still running; loop thread only */
};

/* One refresh of a node: a GET per list per server, in parallel. Loop thread only. */
struct run {
	struct models *m;
	char *node;
	uint64_t started_us;
	long timeout_ms;
	struct server *servers; /* the answers being gathered */
	size_t n_servers;
	size_t pending; /* requests not answered yet */
	bool cancelled; /* the loop stopped under it: the answers say nothing of the servers */
	struct waiter **waiters;
	size_t n_waiters;
};

struct fetch {
	struct run *run;
	size_t idx; /* in run->servers */
	enum fetch_kind kind;
};

enum verb { VERB_PULL, VERB_DELETE, VERB_LOAD, VERB_UNLOAD, N_VERBS };
extern const char *const models_verb_names[N_VERBS];

enum op_state { OP_RUNNING, OP_DONE, OP_FAILED };
extern const char *const models_op_state_names[];

/* One command written to ctl, as ctl shows it. */
struct op {
	uint64_t id;
	enum verb verb;
	char *model;
	enum op_state state;
	char *detail;      /* progress or outcome, or NULL */
	double started_at; /* wall */
};

struct mnode {
	char *name;
	struct server *servers; /* what was last fetched; protected by m->lock */
	size_t n_servers;
	bool ok;               /* the last refresh got every answer; protected by m->lock */
	uint64_t data_us;      /* monotonic start of the last refresh, 0 if none; m->lock */
	uint64_t tried_us;     /* monotonic end of the last refresh, 0 if none; m->lock */
	uint64_t dirty_us;     /* a command changed the models then; m->lock */
	struct run *run;       /* the refresh in flight; protected by m->lock */
	bool rerun;            /* refresh again when `run` ends; protected by m->lock */
	struct waiter **later; /* waiting for the refresh after `run`; m->lock */
	size_t n_later;
	char *alert;             /* the alert raised for this node, or NULL; loop thread only */
	struct op *ops[OPS_MAX]; /* oldest first; protected by m->lock */
	size_t n_ops;
};

struct models {
	struct loop *loop;
	struct cluster *cluster;
	pthread_mutex_t lock;
	struct mnode **nodes; /* protected by lock */
	size_t n_nodes;
	uint64_t next_op_id; /* protected by lock */
	double changed_at;   /* protected by lock */
};

struct job;

/* ---- models.c ---- */

/* Ollama compares names case-insensitively and reads "qwen3" as "qwen3:latest". */
bool models_same_name(const char *a, const char *b);
bool models_host_has_server(const struct cfg_host *h);
/* The model servers of host h, from the config. New array; free with models_servers_free. */
struct server *models_servers_of(const struct config *cfg, const struct cfg_host *h, size_t *ret_n);
void models_servers_free(struct server *svs, size_t n);
/* The server of svs that is `like` (same service), or NULL. */
struct server *models_server_find(struct server *svs, size_t n, const struct server *like);
bool models_servers_same_data(const struct server *a, size_t na, const struct server *b, size_t nb);
/* Caller holds m->lock: the node's state, or NULL (find), or made when absent (get). */
struct mnode *models_node_find(struct models *m, const char *name);
struct mnode *models_node_get(struct models *m, const char *name);
bool models_node_is_fresh(const struct mnode *n, const struct config *cfg, uint64_t now);
bool models_node_recently_failed(const struct mnode *n, const struct config *cfg, uint64_t now);
/* Caller holds m->lock: drops the nodes no longer in cfg; their names (new array). */
char **models_nodes_prune(struct models *m, const struct config *cfg, size_t *ret_n);
void models_alert_key(const char *node, char *key, size_t len);
/* A new reference to v, or JSON null when v is NULL. */
json_t *models_json_copy(json_t *v);
/* Sets the state and detail of operation `id` of node (not found: nothing). Takes m->lock. */
void models_op_set(struct models *m, const char *node, uint64_t id, enum op_state state,
		   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- models_refresh.c ---- */

/* Loop thread: refreshes a node now, or once more after the refresh in flight when `changed`
 * (a command changed its models after that refresh started). */
void models_node_kick(struct models *m, const char *name, bool changed);

/* ---- ollama.c ---- */

/* Adds the models of Ollama server sv to `all` (name -> entry), names not there yet only. */
void ollama_add_entries(const struct server *sv, json_t *all);
enum models_holding ollama_holds(const struct server *sv, const char *model);
/* The Ollama server of the node for `model`: one whose lists hold it, else the first. Caller
 * holds m->lock. Returns an index into svs, or -1 when the node has no Ollama server. */
int ollama_pick_server(struct models *m, const char *node, const struct server *svs, size_t n,
		       const char *model);
/* A command for server sv; done is called once with its outcome after ollama_job_post. */
struct job *ollama_job_new(struct models *m, const char *node, enum verb verb, const char *model,
			   const struct server *sv, long connect_ms, models_ctl_fn done, void *arg);
/* Starts the job on the loop thread as operation op_id (it owns the job from then on). */
void ollama_job_post(struct job *job, uint64_t op_id);

/* ---- openai.c ---- */

void openai_add_entries(const struct server *sv, json_t *all);
enum models_holding openai_holds(const struct server *sv, const char *model);
