/* Loading hosts.json into an immutable struct config: the entry points, the defaults, the
 * order of the sections, the token files, and the snapshot's lifetime.
 *
 * The document is parsed by jansson, then walked once: each section is checked and copied
 * into the struct (config_sections.c, config_hosts.c, config_slurm.c). A problem stops the
 * walk with one sentence that names the offending value by its path and, through
 * locate.c, by its line and column in the source text (config_loader.c). Token files are
 * read last, so that a broken document is reported before a missing file.
 *
 * Allocation failures abort through the x* wrappers of backend/util.h (DESIGN §2, "Out of
 * memory"): a config is small and bounded by CONFIG_MAX_FILE_SIZE. */
#include "config/config_internal.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/util.h"

static const struct cfg_probe probe_defaults = {
	.interval_s = 30,
	.timeout_ms = 2000,
	.stale_after_s = 120,
	.offline_after_s = 600,
	.unhealthy_after = 3,
	.max_age_ms = 1000,
	.heartbeat_s = 45,
};

static const struct cfg_thresholds threshold_defaults = {
	.cpu = {80, 95},
	.memory = {85, 95},
	.disk = {80, 90},
	.load = {4.0, 8.0},
};

static const struct cfg_tasks tasks_defaults = {
	.run_as = CFG_RUN_AS_SUBMITTER,
	.allow_root = false,
	.drafts_per_user = 64,
	.draft_bytes_per_user = 16l << 20,
	.queued_per_user = 10000,
	.finished_cached = 1000,
	.retention = {.output_days = 30, .output_mb = 1024, .records_days = 0},
};

static const struct cfg_artifacts artifacts_defaults = {
	.max_files = 100,
	.max_bytes = 4096ll << 20,
	.cache_max_bytes = 64ll << 20,
};

struct config *config_alloc(void)
{
	struct config *c = xcalloc(1, sizeof(*c));
	c->refcount = 1;
	c->probe = probe_defaults;
	c->thresholds = threshold_defaults;
	c->tasks = tasks_defaults;
	c->artifacts = artifacts_defaults;
	c->events.keep = 10000;
	return c;
}

void config_free(struct config *c)
{
	for (size_t i = 0; i < c->n_hosts; i++)
		config_host_clear(&c->hosts[i]);
	free(c->hosts);
	free(c->path);
	free(c->cluster);
	free(c->token_file);
	free(c->tasks.group);
	free(c->artifacts.inputs_root);
	free(c->tls_ca_file);
	for (size_t i = 0; i < c->n_service_transports; i++) {
		free(c->service_names[i]);
		config_transport_clear(&c->service_transports[i]);
	}
	free(c->service_names);
	free(c->service_transports);
	json_decref(c->routing);
	json_decref(c->services);
	json_decref(c->doc);
	free(c->join.listen);
	free(c->join.token_file);
	config_free_secret(c->join.token);
	free(c->join.cert_file);
	free(c->join.key_file);
	free(c->dropin_dir);
	for (size_t i = 0; i < c->n_warnings; i++)
		free(c->warnings[i]);
	free(c->warnings);
	config_slurm_free(c->slurm);
	free(c);
}

/* Reads the token files once the document is known to be valid. The global one is needed
 * when auth.token_file names it or some host has no token_file of its own; when it is only
 * the default location and does not exist, hosts go without a token (their agents will
 * answer 401, which the node shows). Named files must exist and be private. */
static int read_tokens(struct loader *ld, const json_t *doc)
{
	struct config *c = ld->c;
	json_t *auth = json_object_get(doc, "auth");
	bool named = auth && json_object_get(auth, "token_file");
	bool needed = named;
	char *global = NULL, msg[512];
	int r = 0;

	for (size_t i = 0; i < c->n_hosts; i++)
		if (!c->hosts[i].token_file)
			needed = true;
	if (needed && c->token_file) {
		r = token_read_file(c->token_file, &global, msg, sizeof(msg));
		if (r < 0 && named) {
			config_ld_push(ld, "auth");
			config_ld_push(ld, "token_file");
			config_ld_fail(ld, LOCATE_VALUE, "%s", msg);
			config_ld_pop(ld);
			config_ld_pop(ld);
			return r;
		}
		if (r < 0 && r != -ENOENT && r != -ENOTDIR) {
			config_set_error(ld->errbuf, ld->errlen, "%s: %s", ld->name, msg);
			return r;
		}
		r = 0;
	}

	for (size_t i = 0; i < c->n_hosts; i++) {
		struct cfg_host *h = &c->hosts[i];
		if (h->token_file) {
			r = token_read_file(h->token_file, &h->token, msg, sizeof(msg));
			if (r < 0 && h->dropin) {
				config_set_error(ld->errbuf, ld->errlen, "%s: token_file: %s",
						 h->dropin, msg);
				break;
			}
			if (r < 0) {
				config_ld_push(ld, "hosts");
				config_ld_push(ld, h->name);
				config_ld_push(ld, "token_file");
				config_ld_fail(ld, LOCATE_VALUE, "%s", msg);
				config_ld_pop(ld);
				config_ld_pop(ld);
				config_ld_pop(ld);
				break;
			}
		} else {
			h->token_file = c->token_file ? xstrdup(c->token_file) : NULL;
			h->token = global ? xstrdup(global) : NULL;
		}
	}
	config_free_secret(global);
	if (r == 0 && c->join.enabled) {
		r = token_read_file(c->join.token_file, &c->join.token, msg, sizeof(msg));
		if (r < 0) {
			config_ld_push(ld, "join");
			config_ld_push(ld, "token_file");
			config_ld_fail(ld, LOCATE_VALUE, "%s", msg);
			config_ld_pop(ld);
			config_ld_pop(ld);
		}
	}
	return r;
}

/* The sections in the order they are read, each relying on those before it (join on the
 * probe, slurm and routing on the hosts): the drop-ins come between the two lists, the
 * token files last, once the whole document is known to be valid. */
static int (*const sections[])(struct loader *ld, const json_t *doc) = {
	config_parse_cluster,    config_parse_auth,  config_parse_tls,       config_parse_probe,
	config_parse_thresholds, config_parse_tasks, config_parse_artifacts, config_parse_join,
	config_parse_events,     config_parse_hosts,
};
static int (*const after_hosts[])(struct loader *ld, const json_t *doc) = {
	config_parse_slurm,     config_parse_routing, config_parse_services,
	config_parse_seed_refs, read_tokens,
};

static int load_text(const char *text, size_t len, const char *name, const char *dir,
		     const char *path, struct config **ret, char *errbuf, size_t errlen)
{
	struct loader ld = {
		.name = name,
		.dir = dir,
		.errbuf = errbuf,
		.errlen = errlen,
	};
	static const char *const keys[] = {
		"cluster", "auth",       "probe",           "thresholds",
		"tasks",   "hosts",      "routing",         "services",
		"tls",     "local_host", "default_trainer", "default_inference",
		"join",    "slurm",      "events",          "artifacts",
		NULL};
	json_error_t jerr;
	json_t *doc;
	struct config *c;
	int r;

	if (len > CONFIG_MAX_FILE_SIZE) {
		config_set_error(errbuf, errlen, "%s: the config is larger than %u bytes", name,
				 CONFIG_MAX_FILE_SIZE);
		return -EFBIG;
	}
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) {
		text += 3; /* a byte order mark, as some editors write */
		len -= 3;
	}
	ld.text = text;
	ld.len = len;

	doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc) {
		config_syntax_error(name, &jerr, errbuf, errlen);
		return -EINVAL;
	}
	if (!json_is_object(doc)) {
		r = config_ld_fail(&ld, LOCATE_VALUE,
				   "the config must be a JSON object ({\"hosts\": {...}}), not %s",
				   config_ld_value(&ld, doc));
		json_decref(doc);
		return r;
	}

	c = config_alloc();
	c->doc = doc;
	c->path = path ? xstrdup(path) : NULL;
	ld.c = c;
	r = config_check_keys(&ld, doc, keys);
	for (size_t i = 0; r == 0 && i < sizeof(sections) / sizeof(sections[0]); i++)
		r = sections[i](&ld, doc);
	if (r == 0 && path) {
		c->dropin_dir = config_path_join(dir, CONFIG_DROPIN_DIR);
		r = config_load_dropins(c, errbuf, errlen);
	}
	for (size_t i = 0; r == 0 && i < sizeof(after_hosts) / sizeof(after_hosts[0]); i++)
		r = after_hosts[i](&ld, doc);
	if (r < 0) {
		config_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

/* An absolute form of `path` (not resolving symlinks: the watcher follows the name). */
static char *path_absolute(const char *path)
{
	char *cwd, *abs;
	if (path[0] == '/')
		return xstrdup(path);
	cwd = getcwd(NULL, 0);
	if (!cwd)
		return xstrdup(path);
	abs = config_path_join(cwd, path[0] == '.' && path[1] == '/' ? path + 2 : path);
	free(cwd);
	return abs;
}

int config_load_file(const char *path, struct config **ret, char *errbuf, size_t errlen)
{
	char *text = NULL, *abs, *dir, *slash;
	size_t len = 0;
	int r;

	r = file_read_all(path, CONFIG_MAX_FILE_SIZE, &text, &len);
	if (r == -EFBIG) {
		config_set_error(errbuf, errlen, "%s: the config is larger than %u bytes", path,
				 CONFIG_MAX_FILE_SIZE);
		return r;
	}
	if (r < 0) {
		config_set_error(errbuf, errlen, "%s: cannot read the config: %s", path,
				 strerror(-r));
		return r;
	}
	abs = path_absolute(path);
	dir = xstrdup(abs);
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	r = load_text(text, len, path, dir, abs, ret, errbuf, errlen);
	free(dir);
	free(abs);
	free(text);
	return r;
}

int config_load_string(const char *text, const char *name, const char *dir, struct config **ret,
		       char *errbuf, size_t errlen)
{
	char *cwd = NULL;
	int r;

	if (!dir)
		dir = cwd = getcwd(NULL, 0);
	r = load_text(text, strlen(text), name ? name : "(string)", dir, NULL, ret, errbuf, errlen);
	free(cwd);
	return r;
}

char *config_default_token_path(void)
{
	const char *env = getenv("CLUSTERFS_TOKEN_FILE");
	struct buf b;

	if (env && env[0])
		return xstrdup(env);
	buf_init(&b);
	env = getenv("XDG_CONFIG_HOME");
	if (env && env[0] == '/') { /* the XDG spec ignores relative values */
		buf_printf(&b, "%s/clusterfs/token", env);
		return buf_steal(&b, NULL);
	}
	env = getenv("HOME");
	if (!env || env[0] != '/') {
		struct passwd *pw = getpwuid(getuid());
		env = pw ? pw->pw_dir : NULL;
	}
	if (!env || env[0] != '/')
		return NULL;
	buf_printf(&b, "%s/.config/clusterfs/token", env);
	return buf_steal(&b, NULL);
}

/* This machine's hostname, made into a valid host name ("localhost" when there is none). */
static char *default_host_name(void)
{
	char name[256];
	size_t n = 0;

	if (gethostname(name, sizeof(name)) < 0)
		name[0] = '\0';
	name[sizeof(name) - 1] = '\0';
	for (char *p = name; *p && n < 64; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			c = '-';
		if (n == 0 && (c == '.' || c == '-'))
			continue;
		name[n++] = c;
	}
	name[n] = '\0';
	return xstrdup(n ? name : "localhost");
}

int config_default(struct config **ret, char *errbuf, size_t errlen)
{
	struct config *c = config_alloc();
	struct cfg_host *h;
	char msg[512];
	int r;

	c->cluster = xstrdup("clusterfs");
	c->token_file = config_default_token_path();
	c->doc = json_object();
	c->routing = json_object();
	c->services = json_object();
	if (!c->doc || !c->routing || !c->services) {
		config_free(c);
		return -ENOMEM;
	}
	c->hosts = xcalloc(1, sizeof(*c->hosts));
	c->n_hosts = 1;
	h = &c->hosts[0];
	h->name = default_host_name();
	h->address = xstrdup("127.0.0.1");
	h->agent_port = CONFIG_DEFAULT_AGENT_PORT;
	h->role = xstrdup("");
	h->queue_depth = 10;
	h->run_as = CFG_RUN_AS_INHERIT;
	if (c->token_file) {
		h->token_file = xstrdup(c->token_file);
		r = token_read_file(c->token_file, &h->token, msg, sizeof(msg));
		if (r < 0 && r != -ENOENT && r != -ENOTDIR) {
			config_set_error(errbuf, errlen, "%s", msg);
			config_free(c);
			return r;
		}
	}
	*ret = c;
	return 0;
}

struct config *config_ref(struct config *c)
{
	if (c)
		__atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
	return c;
}

void config_unref(struct config *c)
{
	if (c && __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) == 0)
		config_free(c);
}

int config_queue_depth(const struct config *c, const char *name)
{
	const struct cfg_host *h = config_find_host(c, name);
	if (h)
		return h->queue_depth;
	if (c->slurm && !strcmp(name, c->slurm->name))
		return c->slurm->queue_depth;
	return 10;
}

const struct cfg_transport *config_service_transport(const struct config *c, const char *name)
{
	for (size_t i = 0; c && name && i < c->n_service_transports; i++)
		if (strcmp(c->service_names[i], name) == 0)
			return &c->service_transports[i];
	return NULL;
}

const char *config_run_as_name(enum cfg_run_as r)
{
	return r == CFG_RUN_AS_AGENT ? "agent" : "submitter";
}
