/* The shape of the tree. */
#include "fs/tree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct named_kind {
	const char *name;
	enum tree_kind kind;
};

static const struct named_kind root_files[] = {
	{"README", TREE_README},
	{"alerts", TREE_ALERTS},
	{"backup", TREE_BACKUP},
	{"config", TREE_CONFIG},
	{"dashboard.html", TREE_DASHBOARD},
	{"events", TREE_EVENTS},
	{"health", TREE_HEALTH},
	{"knowledge", TREE_KNOWLEDGE},
	{"ledger", TREE_LEDGER},
	{"metrics", TREE_METRICS},
	{"models", TREE_MODELS},
	{"nodes", TREE_NODES},
	{"placement", TREE_PLACEMENT},
	{"recent-tasks.json", TREE_RECENT_TASKS},
	{"services", TREE_SERVICES},
	{"stats", TREE_STATS},
	{"tasks", TREE_TASKS},
	{"topology.dot", TREE_TOPOLOGY_DOT},
	{"topology.json", TREE_TOPOLOGY_JSON},
};

static const struct named_kind node_files[] = {
	{"address", TREE_NODE_ADDRESS},
	{"capabilities", TREE_NODE_CAPABILITIES},
	{"ctl", TREE_NODE_CTL},
	{"health", TREE_NODE_HEALTH},
	{"info", TREE_NODE_INFO},
	{"models", TREE_NODE_MODELS},
	{"reliability", TREE_NODE_RELIABILITY},
	{"role", TREE_NODE_ROLE},
	{"status", TREE_NODE_STATUS},
	{"tasks", TREE_NODE_TASKS},
	{"tier", TREE_NODE_TIER},
};

static const struct named_kind task_files[] = {
	{"ctl", TREE_TASK_CTL},       {"exit_code", TREE_TASK_EXIT_CODE},
	{"files", TREE_TASK_FILES},   {"info", TREE_TASK_INFO},
	{"node", TREE_TASK_NODE},     {"result", TREE_TASK_RESULT},
	{"spec", TREE_TASK_SPEC},
	{"status", TREE_TASK_STATUS}, {"stderr", TREE_TASK_STDERR},
	{"stdout", TREE_TASK_STDOUT}, {"wait", TREE_TASK_WAIT},
};

static const char *const groups[] = {"done", "failed", "queued", "running"};

static const struct named_kind ledger_files[] = {
	{"best", TREE_LEDGER_BEST},       {"entries", TREE_LEDGER_ENTRIES},
	{"record", TREE_LEDGER_RECORD},   {"source", TREE_LEDGER_SOURCE},
	{"summary", TREE_LEDGER_SUMMARY},
};

static const struct named_kind model_files[] = {
	{"info", TREE_MODEL_INFO},
	{"loaded", TREE_MODEL_LOADED},
	{"nodes", TREE_MODEL_NODES},
};

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

#define TREE_DEPTH_MAX 16 /* path components looked at; deeper paths do not exist */
#define N_OF(a)        (sizeof(a) / sizeof((a)[0]))

void tree_entry_clear(struct tree_entry *e)
{
	free(e->node);
	free(e->task);
	free(e->name);
	free(e->file);
	memset(e, 0, sizeof(*e));
}

static enum tree_kind find_kind(const struct named_kind *table, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(table[i].name, name))
			return table[i].kind;
	return TREE_NONE;
}

static bool is_group(const char *name)
{
	for (size_t i = 0; i < N_OF(groups); i++)
		if (!strcmp(groups[i], name))
			return true;
	return false;
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

/* tasks/ID/files/A/B...: an output, or a directory of them (artifacts.h). */
static int task_file_classify(const struct tree_ctx *ctx, char **parts, size_t n,
			      struct tree_entry *e)
{
	struct buf name;
	buf_init(&name);
	for (size_t i = 0; i < n; i++)
		buf_printf(&name, "%s%s", i ? "/" : "", parts[i]);
	uint64_t size;
	double mtime;
	int r = artifacts_lookup(ctx->artifacts, e->task, name.data, &size, &mtime);
	if (r < 0) {
		buf_free(&name);
		return r;
	}
	e->kind = r == 1 ? TREE_TASK_FILE : TREE_TASK_FILES;
	e->file = buf_steal(&name, NULL);
	return 0;
}

/* knowledge/A/B... and knowledge/.versions/A/B[/N] (backend/knowledge.h). */
static int knowledge_classify(const struct tree_ctx *ctx, char **parts, size_t n,
			      struct tree_entry *e)
{
	bool versions = n && !strcmp(parts[0], ".versions");
	size_t from = versions ? 1 : 0;
	struct buf path;
	buf_init(&path);
	for (size_t i = from; i < n; i++)
		buf_printf(&path, "%s%s", i > from ? "/" : "", parts[i]);
	const char *p = path.data ? path.data : "";
	struct knowledge_stat ks = {0};
	int r = 0;
	if (!versions) {
		r = knowledge_stat(ctx->knowledge, p, &ks);
		e->kind = ks.dir ? TREE_KNOWLEDGE : TREE_KNOWLEDGE_DOC;
	} else if (knowledge_stat(ctx->knowledge, p, &ks) == 0 && ks.dir) {
		e->kind = TREE_KNOWLEDGE_VERSIONS;
	} else if (p[0] && knowledge_latest(ctx->knowledge, p) > 0) {
		e->kind = TREE_KNOWLEDGE_HISTORY;
	} else if (n >= 3) {
		/* NAME/N: one version */
		char *end;
		const char *num = parts[n - 1];
		long long v = strtoll(num, &end, 10);
		char *doc = strndup(p, strlen(p) - strlen(num) - 1);
		if (*end || num[0] < '1' || num[0] > '9' ||
		    knowledge_version_stat(ctx->knowledge, doc, v, &ks) < 0) {
			free(doc);
			r = -ENOENT;
		} else {
			e->kind = TREE_KNOWLEDGE_VERSION;
			e->name = strdup(num);
			buf_free(&path);
			e->file = doc;
			return 0;
		}
	} else {
		r = -ENOENT;
	}
	if (r < 0) {
		buf_free(&path);
		return r;
	}
	e->file = path.data ? buf_steal(&path, NULL) : strdup("");
	return 0;
}

int tree_classify(const struct tree_ctx *ctx, const char *path, struct tree_entry *ret)
{
	if (path[0] != '/')
		return -ENOENT;
	char *parts[TREE_DEPTH_MAX];
	size_t n = 0;
	char *copy = strdup(path);
	char *save = NULL;
	for (char *p = strtok_r(copy, "/", &save); p; p = strtok_r(NULL, "/", &save)) {
		if (n == TREE_DEPTH_MAX) {
			free(copy);
			return -ENOENT;
		}
		parts[n++] = p;
	}
	struct tree_entry e = {0};
	int r = -ENOENT;
	if (n == 0) {
		e.kind = TREE_ROOT;
		r = 0;
		goto out;
	}
	enum tree_kind top = find_kind(root_files, N_OF(root_files), parts[0]);
	if (top == TREE_NONE)
		goto out;
	if (top == TREE_KNOWLEDGE) {
		r = ctx->knowledge ? knowledge_classify(ctx, parts + 1, n - 1, &e) : -ENOENT;
		goto out;
	}
	if (n == 1) {
		e.kind = top;
		r = 0;
		goto out;
	}
	if (top == TREE_BACKUP) {
		if (n == 2 && !strcmp(parts[1], "state.db")) {
			e.kind = TREE_BACKUP_STATE;
			r = 0;
		}
		goto out;
	}
	if (top == TREE_NODES) {
		if (!cluster_has_node(ctx->cluster, parts[1]))
			goto out;
		e.node = strdup(parts[1]);
		if (n == 2) {
			e.kind = TREE_NODE;
			r = 0;
			goto out;
		}
		enum tree_kind k = find_kind(node_files, N_OF(node_files), parts[2]);
		if (k == TREE_NONE)
			goto out;
		if (n == 3) {
			e.kind = k;
			r = 0;
			goto out;
		}
		if (k == TREE_NODE_MODELS && n == 4) {
			size_t nm = 0;
			if (!strcmp(parts[3], "ctl")) {
				e.kind = TREE_NODE_MODELS_CTL;
			} else if (in_list(models_node_list(ctx->models, e.node, &nm), parts[3])) {
				e.kind = TREE_NODE_MODEL;
				e.file = strdup(parts[3]);
			} else {
				goto out;
			}
			r = 0;
			goto out;
		}
		if (k != TREE_NODE_TASKS || n != 4 || !task_in(ctx, parts[3], NULL, e.node))
			goto out;
		e.kind = TREE_NODE_TASK_LINK;
		e.task = strdup(parts[3]);
		r = 0;
		goto out;
	}
	if (top == TREE_SERVICES) {
		size_t ns = 0;
		if (!in_list(services_list(ctx->services, &ns), parts[1]))
			goto out;
		e.name = strdup(parts[1]);
		if (n == 2) {
			e.kind = TREE_SERVICE;
			r = 0;
		} else if (n == 3 &&
			   services_file_exists(ctx->services, parts[1], parts[2], NULL)) {
			e.kind = TREE_SERVICE_FILE;
			e.file = strdup(parts[2]);
			r = 0;
		}
		goto out;
	}
	if (top == TREE_LEDGER) {
		enum tree_kind k = find_kind(ledger_files, N_OF(ledger_files), parts[1]);
		if (k == TREE_NONE ||
		    (n == 3 && k != TREE_LEDGER_ENTRIES && k != TREE_LEDGER_BEST) || n > 3)
			goto out;
		if (n == 2) {
			e.kind = k;
			r = 0;
			goto out;
		}
		size_t nl = 0;
		char **names = k == TREE_LEDGER_ENTRIES ? ledger_steps(ctx->ledger, &nl)
							: ledger_metrics(ctx->ledger, &nl);
		if (!in_list(names, parts[2]))
			goto out;
		e.kind = k == TREE_LEDGER_ENTRIES ? TREE_LEDGER_ENTRY : TREE_LEDGER_BEST_FILE;
		e.name = strdup(parts[2]);
		r = 0;
		goto out;
	}
	if (top == TREE_MODELS) {
		size_t nm = 0;
		if (!in_list(models_list(ctx->models, &nm), parts[1]) || n > 3)
			goto out;
		e.file = strdup(parts[1]);
		if (n == 2) {
			e.kind = TREE_MODEL;
			r = 0;
			goto out;
		}
		e.kind = find_kind(model_files, N_OF(model_files), parts[2]);
		r = e.kind == TREE_NONE ? -ENOENT : 0;
		goto out;
	}
	if (top == TREE_TASKS) {
		if (!strcmp(parts[1], "new")) {
			if (n == 2) {
				e.kind = TREE_TASKS_NEW;
				r = 0;
			} else if (n == 3 && drafts_exists(ctx->drafts, parts[2])) {
				e.kind = TREE_DRAFT;
				e.name = strdup(parts[2]);
				r = 0;
			}
			goto out;
		}
		if (is_group(parts[1])) {
			e.name = strdup(parts[1]);
			if (n == 2) {
				e.kind = TREE_TASKS_GROUP;
				r = 0;
			} else if (n == 3 && task_in(ctx, parts[2], e.name, NULL)) {
				e.kind = TREE_TASK_LINK;
				e.task = strdup(parts[2]);
				r = 0;
			}
			goto out;
		}
		if (!tasks_exists(ctx->tasks, parts[1]))
			goto out;
		e.task = strdup(parts[1]);
		if (n == 2) {
			e.kind = TREE_TASK;
			r = 0;
		} else if (n == 3) {
			e.kind = find_kind(task_files, N_OF(task_files), parts[2]);
			r = e.kind == TREE_NONE ? -ENOENT : 0;
			if (e.kind == TREE_TASK_FILES)
				e.file = strdup("");
		} else if (!strcmp(parts[2], "files") && ctx->artifacts) {
			r = task_file_classify(ctx, parts + 3, n - 3, &e);
		}
		goto out;
	}
out:
	free(copy);
	if (r < 0) {
		tree_entry_clear(&e);
		return r;
	}
	*ret = e;
	return 0;
}

bool tree_kind_is_dir(enum tree_kind kind)
{
	return kind >= TREE_ROOT && kind <= TREE_BACKUP;
}

bool tree_kind_is_link(enum tree_kind kind)
{
	return kind == TREE_TASK_LINK || kind == TREE_NODE_TASK_LINK;
}

bool tree_kind_is_ctl(enum tree_kind kind)
{
	return kind == TREE_TASK_CTL || kind == TREE_NODE_CTL || kind == TREE_NODE_MODELS_CTL;
}

bool tree_kind_is_models(enum tree_kind kind)
{
	return kind == TREE_MODELS || kind == TREE_MODEL || kind == TREE_NODE_MODELS ||
	       kind == TREE_MODEL_NODES || kind == TREE_MODEL_LOADED || kind == TREE_MODEL_INFO ||
	       kind == TREE_NODE_MODEL || kind == TREE_NODE_MODELS_CTL;
}

bool tree_kind_is_knowledge(enum tree_kind kind)
{
	return (kind >= TREE_KNOWLEDGE && kind <= TREE_KNOWLEDGE_HISTORY) ||
	       kind == TREE_KNOWLEDGE_DOC || kind == TREE_KNOWLEDGE_VERSION;
}

bool tree_kind_is_ledger(enum tree_kind kind)
{
	return kind == TREE_LEDGER || kind == TREE_LEDGER_ENTRIES || kind == TREE_LEDGER_BEST ||
	       kind == TREE_LEDGER_ENTRY || kind == TREE_LEDGER_BEST_FILE ||
	       kind == TREE_LEDGER_SUMMARY || kind == TREE_LEDGER_SOURCE;
}

mode_t tree_kind_mode(enum tree_kind kind)
{
	if (kind == TREE_TASKS_NEW)
		return 01777; /* anyone may submit; only the owner may remove a draft */
	if (kind == TREE_KNOWLEDGE)
		return 01777; /* anyone may write; only a document's writer may remove it */
	if (kind == TREE_KNOWLEDGE_DOC)
		return 0644; /* the latest writer's */
	if (tree_kind_is_dir(kind))
		return 0555;
	if (tree_kind_is_link(kind))
		return 0777;
	if (kind == TREE_TASK_CTL)
		return 0666; /* the submitter is checked on write */
	if (kind == TREE_PLACEMENT)
		return 0666; /* anyone may ask; nothing is submitted */
	if (kind == TREE_NODE_CTL || kind == TREE_NODE_MODELS_CTL || kind == TREE_LEDGER_RECORD)
		return 0644; /* writes are the owner's (root's) */
	if (kind == TREE_SERVICE_FILE)
		return 0644; /* refined per file by the fs: 0444 for GET, 0644 for POST */
	if (kind == TREE_DRAFT)
		return 0644;
	if (kind == TREE_BACKUP_STATE)
		return 0400; /* every spec's env is in it: the daemon's user's alone */
	return 0444;
}

bool tree_kind_is_append_only(enum tree_kind kind)
{
	return kind == TREE_EVENTS || kind == TREE_TASK_STDOUT || kind == TREE_TASK_STDERR;
}

bool tree_kind_refreshes(enum tree_kind kind)
{
	return kind == TREE_NODE_HEALTH || kind == TREE_NODE_STATUS || kind == TREE_HEALTH;
}

char *tree_link_target(const struct tree_entry *e)
{
	struct buf b;
	buf_init(&b);
	if (e->kind == TREE_TASK_LINK)
		buf_printf(&b, "../%s", e->task);
	else
		buf_printf(&b, "../../../tasks/%s", e->task);
	return buf_steal(&b, NULL);
}

static char **names_from_table(const struct named_kind *table, size_t n, size_t *ret_n)
{
	char **names = calloc(n + 1, sizeof(*names));
	for (size_t i = 0; i < n; i++)
		names[i] = strdup(table[i].name);
	*ret_n = n;
	return names;
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
	char **names = NULL;
	switch (e.kind) {
	case TREE_ROOT: names = names_from_table(root_files, N_OF(root_files), ret_n); break;
	case TREE_NODES: names = cluster_list_nodes(ctx->cluster, ret_n); break;
	case TREE_NODE: names = names_from_table(node_files, N_OF(node_files), ret_n); break;
	case TREE_NODE_TASKS: names = tasks_list(ctx->tasks, NULL, e.node, ret_n); break;
	case TREE_TASKS: {
		size_t n = 0;
		char **ids = tasks_list(ctx->tasks, NULL, NULL, &n);
		names = calloc(n + 6, sizeof(*names));
		size_t k = 0;
		names[k++] = strdup("new");
		for (size_t i = 0; i < N_OF(groups); i++)
			names[k++] = strdup(groups[i]);
		for (size_t i = 0; i < n; i++)
			names[k++] = ids[i];
		free(ids);
		qsort(names, k, sizeof(*names), cmp_str);
		*ret_n = k;
		break;
	}
	case TREE_TASKS_NEW: names = drafts_list(ctx->drafts, ret_n); break;
	case TREE_TASKS_GROUP: names = tasks_list(ctx->tasks, e.name, NULL, ret_n); break;
	case TREE_TASK: names = names_from_table(task_files, N_OF(task_files), ret_n); break;
	case TREE_TASK_FILES:
		if (ctx->artifacts) {
			names = artifacts_list(ctx->artifacts, e.task, e.file, ret_n);
		} else {
			names = calloc(1, sizeof(*names));
			*ret_n = 0;
		}
		break;
	case TREE_KNOWLEDGE:
	case TREE_KNOWLEDGE_VERSIONS: {
		bool top = e.kind == TREE_KNOWLEDGE && !e.file[0];
		bool all = e.kind == TREE_KNOWLEDGE_VERSIONS;
		size_t n = 0;
		char **kn = knowledge_list(ctx->knowledge, e.file, all, &n);
		names = calloc(n + 2, sizeof(*names));
		size_t k = 0;
		if (top)
			names[k++] = strdup(".versions");
		for (size_t i = 0; i < n; i++)
			names[k++] = kn[i];
		free(kn);
		*ret_n = k;
		break;
	}
	case TREE_KNOWLEDGE_HISTORY:
		names = knowledge_versions(ctx->knowledge, e.file, ret_n);
		break;
	case TREE_SERVICES: names = services_list(ctx->services, ret_n); break;
	case TREE_SERVICE: names = services_files(ctx->services, e.name, ret_n); break;
	case TREE_LEDGER: names = names_from_table(ledger_files, N_OF(ledger_files), ret_n); break;
	case TREE_LEDGER_ENTRIES: names = ledger_steps(ctx->ledger, ret_n); break;
	case TREE_LEDGER_BEST: names = ledger_metrics(ctx->ledger, ret_n); break;
	case TREE_MODELS: names = models_list(ctx->models, ret_n); break;
	case TREE_MODEL: names = names_from_table(model_files, N_OF(model_files), ret_n); break;
	case TREE_BACKUP:
		names = calloc(2, sizeof(*names));
		names[0] = strdup("state.db");
		*ret_n = 1;
		break;
	case TREE_NODE_MODELS: {
		size_t n = 0;
		char **m = models_node_list(ctx->models, e.node, &n);
		names = calloc(n + 2, sizeof(*names));
		names[0] = strdup("ctl");
		for (size_t i = 0; i < n; i++)
			names[i + 1] = m[i];
		free(m);
		*ret_n = n + 1;
		qsort(names, n + 1, sizeof(*names), cmp_str);
		break;
	}
	default: *ret_err = -ENOTDIR; break;
	}
	tree_entry_clear(&e);
	return names;
}

char *tree_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	bool root = dl == 1 && dir[0] == '/';
	char *s = malloc(dl + nl + 2);
	if (!s)
		abort();
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
		return strdup("/");
	return strndup(path, (size_t) (slash - path));
}
