/* The shape of the tree. */
#include "fs/tree.h"
#include "fs/render.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* True when name is in the NULL-terminated list; frees the list. */
static bool in_list(char **names, const char *name)
{
	bool r = false;
	for (size_t i = 0; names && names[i]; i++) {
		r |= !strcmp(names[i], name);
		free(names[i]);
	}
	free(names);
	return r;
}

/* True when task `id` is in `group`, or on `node`: one lookup, never a listing. */
static bool task_in(const struct tree_ctx *ctx, const char *id, const char *group, const char *node)
{
	struct task_view v;
	if (tasks_get(ctx->tasks, id, &v) < 0)
		return false;
	bool r = node ? v.node && !strcmp(v.node, node) : tasks_state_in_group(v.state, group);
	task_view_clear(&v);
	return r;
}

/* ---- the parameters of patterns: which names a "{param}" segment accepts, whether the
 * thing it names exists (given what the path names before it), and where it goes ---- */

static bool node_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	return cluster_has_node(ctx->cluster, s);
}

/* a task that exists: in the group, or on the node, the path lies under */
static bool task_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	if (e->name || e->node)
		return task_in(ctx, s, e->name, e->node);
	return tasks_exists(ctx->tasks, s);
}

static bool draft_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	return drafts_exists(ctx->drafts, s);
}

static bool service_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	size_t n = 0;
	return in_list(services_list(ctx->services, &n), s);
}

static bool service_file_exists(const struct tree_ctx *ctx, const struct tree_entry *e,
				const char *s)
{
	return services_file_exists(ctx->services, e->name, s, NULL);
}

static bool step_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	size_t n = 0;
	return in_list(ledger_steps(ctx->ledger, &n), s);
}

static bool metric_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	size_t n = 0;
	return in_list(ledger_metrics(ctx->ledger, &n), s);
}

/* a model some server holds: the node's, under nodes/NODE/models/ */
static bool model_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	size_t n = 0;
	if (e->node)
		return in_list(models_node_list(ctx->models, e->node, &n), s);
	return in_list(models_list(ctx->models, &n), s);
}

/* a task's output (a file), or a directory of them, by its path in tasks/ID/files/ */
static int output_kind(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	uint64_t size;
	double mtime;
	return ctx->artifacts ? artifacts_lookup(ctx->artifacts, e->task, s, &size, &mtime)
			      : -ENOENT;
}

static bool output_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	return output_kind(ctx, e, s) == 1;
}

static bool output_dir_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	return output_kind(ctx, e, s) == 0;
}

/* knowledge/ (backend/knowledge.h): a directory, a document, and in .versions/ a
 * directory, a document's history, or one version of it ("NAME/N") */
static bool kdir_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	struct knowledge_stat ks = {0};
	return ctx->knowledge && knowledge_stat(ctx->knowledge, s, &ks) == 0 && ks.dir;
}

static bool kdoc_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	struct knowledge_stat ks = {0};
	return ctx->knowledge && knowledge_stat(ctx->knowledge, s, &ks) == 0 && !ks.dir;
}

static bool khistory_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	return ctx->knowledge && knowledge_latest(ctx->knowledge, s) > 0;
}

static bool kversion_exists(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s)
{
	const char *slash = strrchr(s, '/');
	if (!ctx->knowledge || !slash || slash[1] < '1' || slash[1] > '9')
		return false;
	char *end;
	long long v = strtoll(slash + 1, &end, 10);
	struct knowledge_stat ks = {0};
	char *doc = xstrndup(s, (size_t) (slash - s));
	bool r = !*end && knowledge_version_stat(ctx->knowledge, doc, v, &ks) == 0;
	free(doc);
	return r;
}

static const char *const groups[] = {"done", "failed", "queued", "running", NULL};

struct tree_param {
	const char *name;       /* as written between the braces */
	size_t field;           /* the char * of struct tree_entry it fills */
	const char *const *set; /* the only names it accepts (NULL-terminated); NULL: any */
	bool (*exists)(const struct tree_ctx *ctx, const struct tree_entry *e, const char *s);
	bool rest;         /* "{name*}": the rest of the path, one or more segments */
	bool last_is_name; /* rest: its last segment goes to tree_entry.name instead */
};

static const struct tree_param params[] = {
	{"node", offsetof(struct tree_entry, node), NULL, node_exists, false, false},
	{"task", offsetof(struct tree_entry, task), NULL, task_exists, false, false},
	{"group", offsetof(struct tree_entry, name), groups, NULL, false, false},
	{"draft", offsetof(struct tree_entry, name), NULL, draft_exists, false, false},
	{"service", offsetof(struct tree_entry, name), NULL, service_exists, false, false},
	{"file", offsetof(struct tree_entry, file), NULL, service_file_exists, false, false},
	{"step", offsetof(struct tree_entry, name), NULL, step_exists, false, false},
	{"metric", offsetof(struct tree_entry, name), NULL, metric_exists, false, false},
	{"model", offsetof(struct tree_entry, file), NULL, model_exists, false, false},
	{"output*", offsetof(struct tree_entry, file), NULL, output_exists, true, false},
	{"outdir*", offsetof(struct tree_entry, file), NULL, output_dir_exists, true, false},
	{"kdir*", offsetof(struct tree_entry, file), NULL, kdir_exists, true, false},
	{"kdoc*", offsetof(struct tree_entry, file), NULL, kdoc_exists, true, false},
	{"khistory*", offsetof(struct tree_entry, file), NULL, khistory_exists, true, false},
	{"kversion*", offsetof(struct tree_entry, file), NULL, kversion_exists, true, true},
};

/* The parameter a pattern segment names ("{node}", len 6), or NULL for a literal one. */
static const struct tree_param *param_of(const char *seg, size_t len)
{
	if (len < 3 || seg[0] != '{' || seg[len - 1] != '}')
		return NULL;
	for (size_t i = 0; i < N_OF(params); i++)
		if (strlen(params[i].name) == len - 2 && !memcmp(params[i].name, seg + 1, len - 2))
			return &params[i];
	abort(); /* a pattern names a parameter the table lacks */
}

static bool in_set(const char *const *set, const char *s, size_t len)
{
	for (size_t i = 0; set[i]; i++)
		if (strlen(set[i]) == len && !memcmp(set[i], s, len))
			return true;
	return false;
}

/* ---- the directories' names that are not the table's own ---- */

static char **list_nodes(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return cluster_list_nodes(ctx->cluster, ret_n);
}

static char **list_node_tasks(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return tasks_list(ctx->tasks, NULL, e->node, ret_n);
}

static char **list_node_models(const struct tree_ctx *ctx, const struct tree_entry *e,
			       size_t *ret_n)
{
	return models_node_list(ctx->models, e->node, ret_n);
}

static char **list_tasks(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return tasks_list(ctx->tasks, NULL, NULL, ret_n);
}

static char **list_group(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return tasks_list(ctx->tasks, e->name, NULL, ret_n);
}

static char **list_drafts(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return drafts_list(ctx->drafts, ret_n);
}

static char **list_services(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return services_list(ctx->services, ret_n);
}

static char **list_service_files(const struct tree_ctx *ctx, const struct tree_entry *e,
				 size_t *ret_n)
{
	return services_files(ctx->services, e->name, ret_n);
}

static char **list_steps(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return ledger_steps(ctx->ledger, ret_n);
}

static char **list_metrics(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return ledger_metrics(ctx->ledger, ret_n);
}

static char **list_models(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	return models_list(ctx->models, ret_n);
}

static char **list_knowledge(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	if (!ctx->knowledge) {
		*ret_n = 0;
		return xcalloc(1, sizeof(char *));
	}
	bool all = e->kind == TREE_KNOWLEDGE_VERSIONS;
	return knowledge_list(ctx->knowledge, e->file ? e->file : "", all, ret_n);
}

static char **list_knowledge_versions(const struct tree_ctx *ctx, const struct tree_entry *e,
				      size_t *ret_n)
{
	return knowledge_versions(ctx->knowledge, e->file, ret_n);
}

static char **list_outputs(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_n)
{
	if (!ctx->artifacts) {
		*ret_n = 0;
		return xcalloc(1, sizeof(char *));
	}
	return artifacts_list(ctx->artifacts, e->task, e->file ? e->file : "", ret_n);
}

/* ---- the table ---- */

/* clang-format off */
/* Short names for the columns' values (fs/tree.h), so that a row fits a line. */
#define T TREE_TIMEOUT_S
#define LONG TREE_TIMEOUT_LONG_S
#define F TREE_FILE
#define D TREE_DIR
#define L TREE_LINK
#define OWN_D TREE_OWN_DAEMON
#define OWN_T TREE_OWN_TASK
#define OWN_P TREE_OWN_TASK_PRIVATE
#define OWN_DR TREE_OWN_DRAFT
#define R_NONE TREE_REFRESH_NONE
#define R_NODE TREE_REFRESH_NODE
#define R_NODES TREE_REFRESH_NODES
#define R_MOD TREE_REFRESH_MODELS
#define R_NMOD TREE_REFRESH_NODE_MODELS
#define R_LED TREE_REFRESH_LEDGER
#define M_START TREE_MTIME_STARTED
#define M_CLU TREE_MTIME_CLUSTER
#define M_TASK TREE_MTIME_TASKS
#define M_DRAFT TREE_MTIME_DRAFTS
#define M_LED TREE_MTIME_LEDGER
#define M_MOD TREE_MTIME_MODELS
#define M_REND TREE_MTIME_RENDER
#define C_OPEN TREE_CACHE_OPEN
#define C_GEN TREE_CACHE_GEN
#define C_HELD TREE_CACHE_HELD
#define G_CLU TREE_GEN_CLUSTER
#define G_NODE TREE_GEN_NODE
#define G_TASK TREE_GEN_TASKS
#define G_MOD TREE_GEN_MODELS
#define G_THIS TREE_GEN_TASK
#define G_LED TREE_GEN_LEDGER
#define G_FET TREE_GEN_FETCH
#define G_NMOD TREE_GEN_NODE_MODELS
#define G_EV TREE_GEN_EVENTS
#define C_GROW TREE_CACHE_GROWS
#define C_NONE TREE_CACHE_NONE
#define W_NO TREE_WRITE_NONE
#define W_CMD TREE_WRITE_CMD
#define W_FL TREE_WRITE_FLUSH
#define W_DR TREE_WRITE_DRAFT
#define I_NODE TREE_INVAL_NODE
#define I_CLU TREE_INVAL_CLUSTER

/* Every path of the tree. Columns: pattern, kind, type, mode, owner, refresh, mtime,
 * cache, generation, write, invalidated by, entry and attribute timeouts (s), direct_io,
 * readdirplus, renderer (files), list (directories' names besides their rows' own
 * children), link target. Literal segments before "{param}" ones where both would match
 * (tasks/new, the groups). Timeouts: LONG where every change is notified
 * (fs_on_cluster_change) or none happens; 0 for attributes that change with every probe
 * or task step, or grow, and for names in tasks/new/; else T. The _HELD files keep T for
 * their names too: a lookup is a stat, which starts the hold an open then reads.
 * direct_io off only where the bytes change seldom (the config, the node's system
 * answer) or a stat and the open after it share one held snapshot (status, health): see
 * struct tree_row. */
const struct tree_row tree_rows[] = {
	{"/",                            TREE_ROOT,              D, 0555,  OWN_D,  R_NONE,  M_CLU,   C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     NULL,               NULL},
	{"/README",                      TREE_README,            F, 0444,  OWN_D,  R_NONE,  M_START, C_GEN,  0,              W_NO,  0,      LONG, LONG, false, false, render_readme,            NULL,               NULL},
	{"/config",                      TREE_CONFIG,            F, 0444,  OWN_D,  R_NONE,  M_CLU,   C_GEN,  G_CLU,          W_NO,  I_CLU,  LONG, LONG, false, false, render_config,            NULL,               NULL},
	{"/stats",                       TREE_STATS,             F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_CLU | G_TASK, W_NO,  I_CLU,  LONG, T,    true,  false, render_stats,             NULL,               NULL},
	{"/alerts",                      TREE_ALERTS,            F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_CLU | G_EV,   W_NO,  I_CLU,  LONG, T,    true,  false, render_alerts,            NULL,               NULL},
	{"/events",                      TREE_EVENTS,            F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GROW, 0,              W_NO,  I_CLU,  LONG, 0,    true,  false, render_events,            NULL,               NULL},
	{"/metrics",                     TREE_METRICS,           F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_CLU | G_TASK, W_NO,  I_CLU,  LONG, T,    true,  false, render_metrics,           NULL,               NULL},
	{"/topology.json",               TREE_TOPOLOGY_JSON,     F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_CLU | G_MOD,  W_NO,  I_CLU,  LONG, T,    true,  false, render_topology_json,     NULL,               NULL},
	{"/topology.dot",                TREE_TOPOLOGY_DOT,      F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_CLU,          W_NO,  I_CLU,  LONG, T,    true,  false, render_topology_dot,      NULL,               NULL},
	{"/health",                      TREE_HEALTH,            F, 0444,  OWN_D,  R_NODES, M_REND,  C_HELD, G_CLU,          W_NO,  0,      T,    T,    true,  false, render_all_health,        NULL,               NULL},
	{"/placement",                   TREE_PLACEMENT,         F, 0666,  OWN_D,  R_NONE,  M_REND,  C_HELD, G_CLU | G_TASK, W_FL,  0,      T,    0,    true,  false, render_placement_file,    NULL,               NULL},
	{"/dashboard.html",              TREE_DASHBOARD,         F, 0444,  OWN_D,  R_NONE,  M_START, C_GEN,  0,              W_NO,  0,      LONG, LONG, false, false, render_dashboard_file,    NULL,               NULL},
	{"/recent-tasks.json",           TREE_RECENT_TASKS,      F, 0444,  OWN_D,  R_NONE,  M_TASK,  C_GEN,  G_TASK,         W_NO,  0,      LONG, T,    true,  false, render_recent_tasks_file, NULL,               NULL},
	{"/backup",                      TREE_BACKUP,            D, 0555,  OWN_D,  R_NONE,  M_START, C_OPEN, 0,              W_NO,  0,      LONG, LONG, true,  false, NULL,                     NULL,               NULL},
	{"/backup/state.db",             TREE_BACKUP_STATE,      F, 0400,  OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      LONG, T,    true,  false, render_backup_state,      NULL,               NULL},

	{"/nodes",                       TREE_NODES,             D, 0555,  OWN_D,  R_NONE,  M_CLU,   C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  true,  NULL,                     list_nodes,         NULL},
	{"/nodes/{node}",                TREE_NODE,              D, 0555,  OWN_D,  R_NONE,  M_START, C_OPEN, 0,              W_NO,  0,      LONG, LONG, true,  false, NULL,                     NULL,               NULL},
	{"/nodes/{node}/status",         TREE_NODE_STATUS,       F, 0444,  OWN_D,  R_NODE,  M_REND,  C_HELD, G_NODE,         W_NO,  I_NODE, T,    T,    false, false, render_node_status,       NULL,               NULL},
	{"/nodes/{node}/health",         TREE_NODE_HEALTH,       F, 0444,  OWN_D,  R_NODE,  M_REND,  C_HELD, G_NODE,         W_NO,  I_NODE, T,    T,    false, false, render_node_health,       NULL,               NULL},
	{"/nodes/{node}/info",           TREE_NODE_INFO,         F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_NODE,         W_NO,  I_NODE, LONG, LONG, false, false, render_node_info,         NULL,               NULL},
	{"/nodes/{node}/address",        TREE_NODE_ADDRESS,      F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_NODE,         W_NO,  I_NODE, LONG, LONG, false, false, render_node_address,      NULL,               NULL},
	{"/nodes/{node}/role",           TREE_NODE_ROLE,         F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_NODE,         W_NO,  I_NODE, LONG, LONG, false, false, render_node_role,         NULL,               NULL},
	{"/nodes/{node}/tier",           TREE_NODE_TIER,         F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_NODE,         W_NO,  I_NODE, LONG, LONG, false, false, render_node_tier,         NULL,               NULL},
	{"/nodes/{node}/capabilities",   TREE_NODE_CAPABILITIES, F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_NODE,         W_NO,  I_NODE, LONG, LONG, false, false, render_node_capabilities, NULL,               NULL},
	{"/nodes/{node}/reliability",    TREE_NODE_RELIABILITY,  F, 0444,  OWN_D,  R_NONE,  M_REND,  C_GEN,  G_NODE | G_TASK, W_NO, 0,      LONG, T,    true,  false, render_node_reliability,  NULL,               NULL},
	{"/nodes/{node}/ctl",            TREE_NODE_CTL,          F, 0644,  OWN_D,  R_NONE,  M_START, C_GEN,  0,              W_CMD, 0,      LONG, LONG, false, false, render_node_ctl,          NULL,               NULL},
	{"/nodes/{node}/tasks",          TREE_NODE_TASKS,        D, 0555,  OWN_D,  R_NONE,  M_TASK,  C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     list_node_tasks,    NULL},
	{"/nodes/{node}/tasks/{task}",   TREE_NODE_TASK_LINK,    L, 0777,  OWN_D,  R_NONE,  M_START, C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     NULL,               "../../../tasks/{task}"},
	{"/nodes/{node}/models",         TREE_NODE_MODELS,       D, 0555,  OWN_D,  R_NMOD,  M_START, C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     list_node_models,   NULL},
	{"/nodes/{node}/models/ctl",     TREE_NODE_MODELS_CTL,   F, 0644,  OWN_D,  R_NMOD,  M_MOD,   C_GEN,  G_MOD,          W_CMD, 0,      LONG, T,    true,  false, render_node_models_ctl,   NULL,               NULL},
	{"/nodes/{node}/models/{model}", TREE_NODE_MODEL,        F, 0444,  OWN_D,  R_NMOD,  M_MOD,   C_GEN,  G_MOD | G_NMOD, W_NO,  0,      T,    T,    true,  false, render_node_model,        NULL,               NULL},

	{"/tasks",                       TREE_TASKS,             D, 0555,  OWN_D,  R_NONE,  M_TASK,  C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  true,  NULL,                     list_tasks,         NULL},
	{"/tasks/new",                   TREE_TASKS_NEW,         D, 01777, OWN_D,  R_NONE,  M_DRAFT, C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     list_drafts,        NULL},
	{"/tasks/new/{draft}",           TREE_DRAFT,             F, 0644,  OWN_DR, R_NONE,  M_DRAFT, C_NONE, 0,              W_DR,  0,      0,    0,    true,  false, NULL,                     NULL,               NULL},
	{"/tasks/{group}",               TREE_TASKS_GROUP,       D, 0555,  OWN_D,  R_NONE,  M_TASK,  C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     list_group,         NULL},
	{"/tasks/{group}/{task}",        TREE_TASK_LINK,         L, 0777,  OWN_D,  R_NONE,  M_START, C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     NULL,               "../{task}"},
	{"/tasks/{task}",                TREE_TASK,              D, 0555,  OWN_T,  R_NONE,  M_TASK,  C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     NULL,               NULL},
	{"/tasks/{task}/spec",           TREE_TASK_SPEC,         F, 0444,  OWN_P,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_NO,  0,      T,    T,    true,  false, render_task_spec,         NULL,               NULL},
	{"/tasks/{task}/status",         TREE_TASK_STATUS,       F, 0444,  OWN_T,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_NO,  0,      T,    0,    true,  false, render_task_status,       NULL,               NULL},
	{"/tasks/{task}/node",           TREE_TASK_NODE,         F, 0444,  OWN_T,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_NO,  0,      T,    0,    true,  false, render_task_node,         NULL,               NULL},
	{"/tasks/{task}/exit_code",      TREE_TASK_EXIT_CODE,    F, 0444,  OWN_T,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_NO,  0,      T,    0,    true,  false, render_task_exit_code,    NULL,               NULL},
	{"/tasks/{task}/info",           TREE_TASK_INFO,         F, 0444,  OWN_P,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_NO,  0,      T,    T,    true,  false, render_task_info,         NULL,               NULL},
	{"/tasks/{task}/stdout",         TREE_TASK_STDOUT,       F, 0444,  OWN_P,  R_NONE,  M_REND,  C_GROW, 0,              W_NO,  0,      T,    0,    true,  false, render_task_stdout,       NULL,               NULL},
	{"/tasks/{task}/stderr",         TREE_TASK_STDERR,       F, 0444,  OWN_P,  R_NONE,  M_REND,  C_GROW, 0,              W_NO,  0,      T,    0,    true,  false, render_task_stderr,       NULL,               NULL},
	{"/tasks/{task}/result",         TREE_TASK_RESULT,       F, 0444,  OWN_P,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_NO,  0,      T,    0,    true,  false, render_task_result,       NULL,               NULL},
	{"/tasks/{task}/wait",           TREE_TASK_WAIT,         F, 0444,  OWN_P,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      T,    0,    true,  false, render_task_wait,         NULL,               NULL},
	{"/tasks/{task}/ctl",            TREE_TASK_CTL,          F, 0666,  OWN_T,  R_NONE,  M_REND,  C_GEN,  G_THIS,         W_CMD, 0,      T,    T,    true,  false, render_task_ctl,          NULL,               NULL},
	/* outputs (backend/artifacts.h): read from the control plane's copy, or fetched into it at open (fs.c) */
	{"/tasks/{task}/files",          TREE_TASK_FILES,        D, 0555,  OWN_T,  R_NONE,  M_TASK,  C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     list_outputs,       NULL},
	{"/tasks/{task}/files/{outdir*}",TREE_TASK_FILES,        D, 0555,  OWN_T,  R_NONE,  M_TASK,  C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     list_outputs,       NULL},
	{"/tasks/{task}/files/{output*}",TREE_TASK_FILE,         F, 0444,  OWN_P,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     NULL,               NULL},

	{"/services",                    TREE_SERVICES,          D, 0555,  OWN_D,  R_NONE,  M_START, C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     list_services,      NULL},
	{"/services/{service}",          TREE_SERVICE,           D, 0555,  OWN_D,  R_NONE,  M_START, C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     list_service_files, NULL},
	/* 0444 for a GET endpoint, 0644 for a POST one (fs.c) */
	{"/services/{service}/{file}",   TREE_SERVICE_FILE,      F, 0644,  OWN_D,  R_NONE,  M_START, C_NONE, 0,              W_FL,  0,      T,    T,    true,  false, render_service_file,      NULL,               NULL},

	{"/ledger",                      TREE_LEDGER,            D, 0555,  OWN_D,  R_LED,   M_START, C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     NULL,               NULL},
	{"/ledger/entries",              TREE_LEDGER_ENTRIES,    D, 0555,  OWN_D,  R_LED,   M_START, C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     list_steps,         NULL},
	{"/ledger/entries/{step}",       TREE_LEDGER_ENTRY,      F, 0444,  OWN_D,  R_LED,   M_LED,   C_GEN,  G_LED,          W_NO,  0,      T,    T,    true,  false, render_ledger_entry,      NULL,               NULL},
	{"/ledger/best",                 TREE_LEDGER_BEST,       D, 0555,  OWN_D,  R_LED,   M_START, C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     list_metrics,       NULL},
	{"/ledger/best/{metric}",        TREE_LEDGER_BEST_FILE,  F, 0444,  OWN_D,  R_LED,   M_LED,   C_GEN,  G_LED,          W_NO,  0,      T,    T,    true,  false, render_ledger_best,       NULL,               NULL},
	{"/ledger/summary",              TREE_LEDGER_SUMMARY,    F, 0444,  OWN_D,  R_LED,   M_LED,   C_GEN,  G_LED,          W_NO,  0,      T,    T,    true,  false, render_ledger_summary,    NULL,               NULL},
	{"/ledger/record",               TREE_LEDGER_RECORD,     F, 0644,  OWN_D,  R_NONE,  M_START, C_GEN,  0,              W_FL,  0,      T,    T,    false, false, render_ledger_record,     NULL,               NULL},
	{"/ledger/source",               TREE_LEDGER_SOURCE,     F, 0444,  OWN_D,  R_LED,   M_LED,   C_GEN,  G_LED | G_FET,  W_NO,  0,      T,    T,    true,  false, render_ledger_source,     NULL,               NULL},

	/* knowledge/ (backend/knowledge.h, fs/knowledge.c): versioned documents; every close
	 * of a writer may change any of them, so nothing is cached */
	{"/knowledge",                   TREE_KNOWLEDGE,         D, 01777, OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      0,    0,    true,  false, NULL,                     list_knowledge,     NULL},
	{"/knowledge/.versions",         TREE_KNOWLEDGE_VERSIONS,D, 0555,  OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      0,    0,    true,  false, NULL,                     list_knowledge,     NULL},
	{"/knowledge/.versions/{kdir*}", TREE_KNOWLEDGE_VERSIONS,D, 0555,  OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      0,    0,    true,  false, NULL,                     list_knowledge,     NULL},
	{"/knowledge/.versions/{khistory*}",TREE_KNOWLEDGE_HISTORY,D,0555, OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      0,    0,    true,  false, NULL,                     list_knowledge_versions, NULL},
	{"/knowledge/.versions/{kversion*}",TREE_KNOWLEDGE_VERSION,F,0444, OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      0,    0,    true,  false, NULL,                     NULL,               NULL},
	{"/knowledge/{kdir*}",           TREE_KNOWLEDGE,         D, 01777, OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_NO,  0,      0,    0,    true,  false, NULL,                     list_knowledge,     NULL},
	{"/knowledge/{kdoc*}",           TREE_KNOWLEDGE_DOC,     F, 0644,  OWN_D,  R_NONE,  M_REND,  C_NONE, 0,              W_FL,  0,      0,    0,    true,  false, NULL,                     NULL,               NULL},

	{"/models",                      TREE_MODELS,            D, 0555,  OWN_D,  R_MOD,   M_START, C_OPEN, 0,              W_NO,  0,      LONG, T,    true,  false, NULL,                     list_models,        NULL},
	{"/models/{model}",              TREE_MODEL,             D, 0555,  OWN_D,  R_MOD,   M_START, C_OPEN, 0,              W_NO,  0,      T,    T,    true,  false, NULL,                     NULL,               NULL},
	{"/models/{model}/nodes",        TREE_MODEL_NODES,       F, 0444,  OWN_D,  R_MOD,   M_MOD,   C_GEN,  G_MOD,          W_NO,  0,      T,    T,    true,  false, render_model_nodes,       NULL,               NULL},
	{"/models/{model}/loaded",       TREE_MODEL_LOADED,      F, 0444,  OWN_D,  R_MOD,   M_MOD,   C_GEN,  G_MOD,          W_NO,  0,      T,    T,    true,  false, render_model_loaded,      NULL,               NULL},
	{"/models/{model}/info",         TREE_MODEL_INFO,        F, 0444,  OWN_D,  R_MOD,   M_MOD,   C_GEN,  G_MOD,          W_NO,  0,      T,    T,    true,  false, render_model_info,        NULL,               NULL},
};
/* clang-format on */
#undef T
#undef F
#undef D
#undef L

const size_t tree_n_rows = N_OF(tree_rows);

/* util_path_match's check of a parameter: one the table names, and in its set if it has
 * one. */
static bool param_accept(void *arg, const char *param, size_t param_len, const char *s, size_t len)
{
	const struct tree_param *tp = param_of(param, param_len);
	return tp && (!tp->set || in_set(tp->set, s, len));
}

/* Matches one row's pattern against a path (httpd/server.c's routes match alike). */
static bool row_match(const char *pattern, const char *path, struct path_capture *caps,
		      size_t *ret_n)
{
	return util_path_match(pattern, path, param_accept, NULL, caps, TREE_MAX_PARAMS, ret_n);
}

const struct tree_row *tree_match(const char *path, struct path_capture *ret_caps, size_t *ret_n)
{
	struct path_capture caps[TREE_MAX_PARAMS];
	for (size_t i = 0; i < tree_n_rows; i++) {
		size_t n;
		if (row_match(tree_rows[i].pattern, path, caps, &n)) {
			if (ret_caps)
				memcpy(ret_caps, caps, n * sizeof(*caps));
			if (ret_n)
				*ret_n = n;
			return &tree_rows[i];
		}
	}
	return NULL;
}

void tree_entry_clear(struct tree_entry *e)
{
	free(e->node);
	free(e->task);
	free(e->name);
	free(e->file);
	memset(e, 0, sizeof(*e));
}

/* The parameters of a pattern, in order (at most TREE_MAX_PARAMS). */
static size_t row_params(const char *pattern, const struct tree_param **ret)
{
	size_t n = 0;
	for (const char *p = pattern; *p; p++) {
		if (*p != '/')
			continue;
		size_t len = strcspn(p + 1, "/");
		const struct tree_param *param = param_of(p + 1, len);
		if (param && n < TREE_MAX_PARAMS)
			ret[n++] = param;
	}
	return n;
}

/* Fills e from a row's captures and checks that each parameter exists. 0 or -ENOENT. */
static int row_entry(const struct tree_ctx *ctx, const struct tree_row *row, const char *path,
		     const struct path_capture *caps, size_t n, struct tree_entry *e)
{
	const struct tree_param *ps[TREE_MAX_PARAMS];
	row_params(row->pattern, ps);
	*e = (struct tree_entry){.row = row, .kind = row->kind};
	for (size_t i = 0; i < n; i++) {
		char *value = xstrndup(path + caps[i].off, caps[i].len);
		if (ps[i]->exists && !ps[i]->exists(ctx, e, value)) {
			free(value);
			tree_entry_clear(e);
			return -ENOENT;
		}
		if (ps[i]->last_is_name) {
			char *slash = strrchr(value, '/');
			e->name = xstrdup(slash + 1);
			*slash = '\0';
		}
		*(char **) ((char *) e + ps[i]->field) = value;
	}
	return 0;
}

bool tree_kind_is_knowledge(enum tree_kind kind)
{
	return (kind >= TREE_KNOWLEDGE && kind <= TREE_KNOWLEDGE_HISTORY) ||
	       kind == TREE_KNOWLEDGE_DOC || kind == TREE_KNOWLEDGE_VERSION;
}

const struct tree_row *tree_row_of(enum tree_kind kind)
{
	for (size_t i = 0; i < tree_n_rows; i++)
		if (tree_rows[i].kind == kind)
			return &tree_rows[i];
	return NULL;
}

int tree_classify(const struct tree_ctx *ctx, const char *path, struct tree_entry *ret)
{
	/* the first row whose shape matches and whose parameters exist (rows of one shape
	 * differ by what exists: an output's directory or file) */
	struct path_capture caps[TREE_MAX_PARAMS];
	for (size_t i = 0; i < tree_n_rows; i++) {
		size_t n;
		if (row_match(tree_rows[i].pattern, path, caps, &n) &&
		    row_entry(ctx, &tree_rows[i], path, caps, n, ret) == 0)
			return 0;
	}
	return -ENOENT;
}

char *tree_format(const char *pattern, const struct tree_entry *e)
{
	struct buf b;
	buf_init(&b);
	for (const char *p = pattern; *p;) {
		size_t len = *p == '/' ? 1 : strcspn(p, "/");
		const struct tree_param *param = param_of(p, len);
		if (param) {
			const char *value = *(char *const *) ((const char *) e + param->field);
			if (!value) {
				buf_free(&b);
				return NULL;
			}
			buf_puts(&b, value);
		} else {
			buf_append(&b, p, len);
		}
		p += len;
	}
	return buf_steal(&b, NULL);
}

char *tree_link_target(const struct tree_entry *e)
{
	return tree_format(e->row->target, e);
}

/* Appends the names of the table's children of `row` (literal segments, and the members
 * of a parameter's set) to names. */
static void table_children(const struct tree_row *row, char ***names, size_t *n, size_t *cap)
{
	size_t pl = strcmp(row->pattern, "/") ? strlen(row->pattern) : 0;
	for (size_t i = 0; i < tree_n_rows; i++) {
		const char *c = tree_rows[i].pattern;
		if (strncmp(c, row->pattern, pl) || c[pl] != '/' || !c[pl + 1] ||
		    strchr(c + pl + 1, '/'))
			continue;
		const char *seg = c + pl + 1;
		const struct tree_param *param = param_of(seg, strlen(seg));
		const char *const *set = param ? param->set : NULL;
		for (size_t k = 0; param ? set && set[k] : k < 1; k++) {
			if (*n + 1 >= *cap) {
				*cap = *cap ? 2 * *cap : 16;
				*names = xrealloc(*names, *cap * sizeof(**names));
			}
			(*names)[(*n)++] = xstrdup(param ? set[k] : seg);
		}
	}
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

char **tree_list(const struct tree_ctx *ctx, const char *path, size_t *ret_n, int *ret_err)
{
	struct tree_entry e;
	int r = tree_classify(ctx, path, &e);
	if (r < 0) {
		*ret_err = r;
		return NULL;
	}
	if (e.row->type != TREE_DIR) {
		tree_entry_clear(&e);
		*ret_err = -ENOTDIR;
		return NULL;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	table_children(e.row, &names, &n, &cap);
	size_t fixed = n, nl = 0;
	char **listed = e.row->list ? e.row->list(ctx, &e, &nl) : NULL;
	if (!fixed && listed) {
		/* the backend's names alone, in the backend's order */
		free(names);
		tree_entry_clear(&e);
		*ret_n = nl;
		return listed;
	}
	names = xrealloc(names, (n + nl + 1) * sizeof(*names));
	for (size_t i = 0; i < nl; i++)
		names[n++] = listed[i];
	free(listed);
	names[n] = NULL;
	qsort(names, n, sizeof(*names), cmp_str);
	tree_entry_clear(&e);
	*ret_n = n;
	return names;
}

char *tree_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	bool root = dl == 1 && dir[0] == '/';
	char *s = xmalloc(dl + nl + 2);
	memcpy(s, dir, dl);
	size_t at = dl;
	if (!root)
		s[at++] = '/';
	memcpy(s + at, name, nl + 1);
	return s;
}

char *tree_parent(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path)
		return xstrdup("/");
	return xstrndup(path, (size_t) (slash - path));
}
