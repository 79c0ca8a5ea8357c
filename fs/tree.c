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
	{"config", TREE_CONFIG},
	{"events", TREE_EVENTS},
	{"metrics", TREE_METRICS},
	{"nodes", TREE_NODES},
	{"stats", TREE_STATS},
	{"topology.dot", TREE_TOPOLOGY_DOT},
	{"topology.json", TREE_TOPOLOGY_JSON},
};

static const struct named_kind node_files[] = {
	{"address", TREE_NODE_ADDRESS},
	{"capabilities", TREE_NODE_CAPABILITIES},
	{"health", TREE_NODE_HEALTH},
	{"info", TREE_NODE_INFO},
	{"role", TREE_NODE_ROLE},
	{"status", TREE_NODE_STATUS},
	{"tier", TREE_NODE_TIER},
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

void tree_entry_clear(struct tree_entry *e)
{
	free(e->node);
	e->node = NULL;
	e->kind = TREE_NONE;
}

static enum tree_kind find_kind(const struct named_kind *table, size_t n, const char *name,
				size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(table[i].name) == len && memcmp(table[i].name, name, len) == 0)
			return table[i].kind;
	return TREE_NONE;
}

int tree_classify(struct cluster *c, const char *path, struct tree_entry *ret)
{
	if (path[0] != '/')
		return -ENOENT;
	const char *parts[4];
	size_t lens[4];
	size_t n = 0;
	const char *p = path + 1;
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t) (slash - p) : strlen(p);
		if (len == 0 || n == 4)
			return -ENOENT;
		parts[n] = p;
		lens[n++] = len;
		p += len;
		if (*p == '/')
			p++;
	}
	struct tree_entry e = {TREE_NONE, NULL};
	if (n == 0) {
		e.kind = TREE_ROOT;
	} else {
		e.kind = find_kind(root_files, N_OF(root_files), parts[0], lens[0]);
		if (e.kind == TREE_NONE)
			return -ENOENT;
		if (n > 1 && e.kind != TREE_NODES)
			return -ENOENT; /* files have no children: also ENOENT, as a shell expects */
		if (n >= 2) {
			e.node = strndup(parts[1], lens[1]);
			if (!cluster_has_node(c, e.node)) {
				free(e.node);
				return -ENOENT;
			}
			e.kind = TREE_NODE;
		}
		if (n == 3) {
			e.kind = find_kind(node_files, N_OF(node_files), parts[2], lens[2]);
			if (e.kind == TREE_NONE) {
				free(e.node);
				return -ENOENT;
			}
		}
		if (n > 3) {
			free(e.node);
			return -ENOENT;
		}
	}
	*ret = e;
	return 0;
}

bool tree_kind_is_dir(enum tree_kind kind)
{
	return kind == TREE_ROOT || kind == TREE_NODES || kind == TREE_NODE;
}

mode_t tree_kind_mode(enum tree_kind kind)
{
	return tree_kind_is_dir(kind) ? 0555 : 0444;
}

bool tree_kind_is_append_only(enum tree_kind kind)
{
	return kind == TREE_EVENTS;
}

bool tree_kind_refreshes(enum tree_kind kind)
{
	return kind == TREE_NODE_HEALTH || kind == TREE_NODE_STATUS;
}

static char **names_from_table(const struct named_kind *table, size_t n, size_t *ret_n)
{
	char **names = calloc(n + 1, sizeof(*names));
	for (size_t i = 0; i < n; i++)
		names[i] = strdup(table[i].name);
	*ret_n = n;
	return names;
}

char **tree_list(struct cluster *c, const char *path, size_t *ret_n, int *ret_err)
{
	struct tree_entry e;
	int r = tree_classify(c, path, &e);
	if (r < 0) {
		*ret_err = r;
		return NULL;
	}
	char **names = NULL;
	switch (e.kind) {
	case TREE_ROOT:
		names = names_from_table(root_files, N_OF(root_files), ret_n);
		break;
	case TREE_NODES:
		names = cluster_list_nodes(c, ret_n);
		break;
	case TREE_NODE:
		names = names_from_table(node_files, N_OF(node_files), ret_n);
		break;
	default:
		*ret_err = -ENOTDIR;
		break;
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
