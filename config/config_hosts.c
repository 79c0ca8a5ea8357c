/* Config: the hosts, from "hosts" and from the hosts.d/NAME.json drop-ins beside the file
 * (one host entry each, validated the same way), and the lookups over them. */
#include "config/config_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/util.h"

const char *const config_tier_names[] = {"powerhouse", "standard", "light", NULL};

/* A host name becomes a directory under nodes/ and appears in routing, logs and URLs:
 * letters, digits, '.', '_' and '-', not starting with '.' or '-'. */
static bool host_name_ok(const char *name)
{
	if (!name_is_valid(name) || name[0] == '.' || name[0] == '-')
		return false;
	for (const char *p = name; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* An address goes into a URL as written: printable, no spaces, nothing that ends a host. */
static bool address_ok(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char) *s;
		if (c <= ' ' || c == 0x7f || strchr("/?#@\\\"", c))
			return false;
	}
	return true;
}

/* An array of valid names (capabilities), copied into a new NULL-free array. */
static int parse_name_list(struct loader *ld, const json_t *obj, const char *key, char ***ret_list,
			   size_t *ret_n)
{
	json_t *v = json_object_get(obj, key);
	char **list;
	int r = 0;

	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_array(v)) {
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s must be a list of names, e.g. [\"gpu\"], not %s",
				   config_ld_where(ld), config_ld_value(ld, v));
		config_ld_pop(ld);
		return r;
	}
	list = xcalloc(json_array_size(v), sizeof(*list));
	*ret_list = list;
	for (size_t i = 0; i < json_array_size(v); i++) {
		json_t *e = json_array_get(v, i);
		config_ld_push_index(ld, i);
		if (!json_is_string(e) || !name_is_valid(json_string_value(e)) ||
		    strlen(json_string_value(e)) != json_string_length(e))
			r = config_ld_fail(
				ld, LOCATE_VALUE,
				"%s must be a non-empty printable name without '/', not %s",
				config_ld_where(ld), config_ld_value(ld, e));
		config_ld_pop(ld);
		if (r < 0)
			break;
		list[(*ret_n)++] = xstrdup(json_string_value(e));
	}
	config_ld_pop(ld);
	return r;
}

static int parse_host_service(struct loader *ld, const char *name, const json_t *v,
			      struct cfg_service *s)
{
	static const char *const keys[] = {"port", "path", "type", "tls", "insecure_http", NULL};
	const char *path = "", *kind = NULL;
	int r;

	s->name = xstrdup(name); /* freed with the host, whatever comes */
	r = config_enter_entry(ld, "service", name, v, keys);
	if (r == 0 && !json_object_get(v, "port"))
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s has no \"port\"; give it as {\"port\": 8080}",
				   config_ld_where(ld));
	if (r == 0)
		r = config_parse_int(ld, v, "port", 1, MAX_PORT, &s->port);
	if (r == 0)
		r = config_parse_string(ld, v, "path", false, &path);
	if (r == 0 && path[0] && !config_url_path_ok(path)) {
		config_ld_push(ld, "path");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s must be a URL path starting with '/' and without spaces, not %s",
			config_ld_where(ld), config_ld_quote(ld, 0, path));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_string(ld, v, "type", true, &kind);
	if (r == 0 && strcmp(name, "agent") == 0 &&
	    (json_object_get(v, "tls") || json_object_get(v, "insecure_http"))) {
		config_ld_push(ld, json_object_get(v, "tls") ? "tls" : "insecure_http");
		r = config_ld_fail(
			ld, LOCATE_KEY,
			"%s: the agent's \"tls\" and \"insecure_http\" belong to the host, "
			"beside \"host\"",
			config_ld_where(ld));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_transport(ld, v, &s->transport);
	config_ld_pop(ld);
	if (r < 0)
		return r;
	s->path = xstrdup(path);
	s->kind = kind ? xstrdup(kind) : NULL;
	return 0;
}

static int parse_host_services(struct loader *ld, const json_t *host, struct cfg_host *h)
{
	json_t *svcs = json_object_get(host, "services"), *v;
	const char *name;
	int r;

	if (!svcs)
		return 0;
	config_ld_push(ld, "services");
	r = config_expect_object(ld, svcs);
	if (r == 0) {
		h->services = xcalloc(json_object_size(svcs), sizeof(*h->services));
		json_object_foreach (svcs, name, v) {
			r = parse_host_service(ld, name, v, &h->services[h->n_services++]);
			if (r < 0)
				break;
		}
	}
	config_ld_pop(ld);
	return r;
}

/* A host's "host" (required: an address), "name", "role" and "tier", borrowed from v.
 * Returns 0 or the loader's error. */
static int parse_host_identity(struct loader *ld, const json_t *v, const char **address,
			       const char **display, const char **role, const char **tier)
{
	int r = 0;
	if (!json_object_get(v, "host"))
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s has no \"host\"; give the machine's address, e.g. \"host\": "
				   "\"10.0.0.1\"",
				   config_ld_where(ld));
	if (r == 0)
		r = config_parse_string(ld, v, "host", true, address);
	if (r == 0 && !address_ok(*address)) {
		config_ld_push(ld, "host");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s must be an IP address or DNS name without spaces, '/', '?', '#' or "
			"'@', not %s",
			config_ld_where(ld), config_ld_quote(ld, 0, *address));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_string(ld, v, "name", false, display);
	if (r == 0)
		r = config_parse_string(ld, v, "role", false, role);
	if (r == 0 && (*role)[0] && !name_is_valid(*role)) {
		config_ld_push(ld, "role");
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be printable, without '/', not %s",
				   config_ld_where(ld), config_ld_quote(ld, 0, *role));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_string(ld, v, "tier", true, tier);
	if (r == 0 && *tier && !config_in_list(*tier, config_tier_names)) {
		config_ld_push(ld, "tier");
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s must be \"powerhouse\", \"standard\" or \"light\", not %s",
				   config_ld_where(ld), config_ld_quote(ld, 0, *tier));
		config_ld_pop(ld);
	}
	return r;
}

/* The agent's port of h: services.agent.port or "port" (the same when both are given), else
 * the default. Returns 0 or the loader's error. */
static int host_agent_port(struct loader *ld, struct cfg_host *h, int port)
{
	int r = 0;
	const struct cfg_service *agent = config_host_service(h, "agent");
	if (agent && port && agent->port != port) {
		config_ld_push(ld, "port");
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s is %d but services.agent.port of the same host is %d; give "
				   "the agent's port once",
				   config_ld_where(ld), port, agent->port);
		config_ld_pop(ld);
	} else if (agent) {
		h->agent_port = agent->port;
	} else if (port) {
		h->agent_port = port;
	}
	return r;
}

static int parse_host(struct loader *ld, const char *name, const json_t *v, struct cfg_host *h)
{
	static const char *const keys[] = {"host",
					   "name",
					   "role",
					   "tier",
					   "capabilities",
					   "queue_depth",
					   "port",
					   "token_file",
					   "services",
					   "tls",
					   "insecure_http",
					   "run_as",
					   "reverse",
					   "agent_fingerprint",
					   NULL};
	const char *address = NULL, *display = NULL, *role = "", *tier = NULL, *token_file = NULL;
	int port = 0, r;

	h->queue_depth = 10;
	h->agent_port = CONFIG_DEFAULT_AGENT_PORT;
	h->run_as = CFG_RUN_AS_INHERIT;
	config_ld_push(ld, name);
	if (!host_name_ok(name)) {
		r = config_ld_fail(
			ld, LOCATE_KEY,
			"host name %s cannot name a directory; use letters, digits, '.', '_' "
			"and '-', not starting with '.' or '-'",
			config_ld_quote(ld, 0, name));
		config_ld_pop(ld);
		return r;
	}
	h->name = xstrdup(name);
	r = config_expect_object(ld, v);
	if (r == 0)
		r = config_reject_inline_token(ld, v);
	if (r == 0)
		r = config_check_keys(ld, v, keys);
	if (r == 0)
		r = parse_host_identity(ld, v, &address, &display, &role, &tier);
	if (r == 0)
		r = parse_name_list(ld, v, "capabilities", &h->capabilities, &h->n_capabilities);
	if (r == 0)
		r = config_parse_int(ld, v, "queue_depth", 1, 10000, &h->queue_depth);
	if (r == 0)
		r = config_parse_int(ld, v, "port", 1, MAX_PORT, &port);
	if (r == 0)
		r = config_parse_string(ld, v, "token_file", true, &token_file);
	if (r == 0)
		r = config_parse_run_as(ld, v, &h->run_as);
	if (r == 0)
		r = config_parse_bool(ld, v, "reverse", &h->reverse);
	const char *agent_fp = NULL;
	if (r == 0)
		r = config_parse_string(ld, v, "agent_fingerprint", true, &agent_fp);
	if (r == 0 && agent_fp && !config_fingerprint_is_valid(agent_fp)) {
		config_ld_push(ld, "agent_fingerprint");
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be \"sha256:BASE64\", not %s",
				   config_ld_where(ld), config_ld_quote(ld, 0, agent_fp));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_transport(ld, v, &h->transport);
	if (r == 0)
		r = parse_host_services(ld, v, h);
	if (r == 0)
		r = host_agent_port(ld, h, port);
	config_ld_pop(ld);
	if (r < 0)
		return r;

	h->address = xstrdup(address);
	h->display_name = display ? xstrdup(display) : NULL;
	h->role = xstrdup(role);
	h->tier = tier ? xstrdup(tier) : NULL;
	/* Resolved here; read with the other token files once the whole document is valid. */
	h->token_file = token_file ? config_path_join(ld->dir, token_file) : NULL;
	return 0;
}

static int host_cmp(const void *a, const void *b)
{
	return strcmp(((const struct cfg_host *) a)->name, ((const struct cfg_host *) b)->name);
}

int config_parse_hosts(struct loader *ld, const json_t *doc)
{
	struct config *c = ld->c;
	json_t *hosts = json_object_get(doc, "hosts"), *v;
	const char *name;
	int r;

	if (!hosts)
		return config_ld_fail(
			ld, LOCATE_VALUE,
			"the config has no \"hosts\"; list the machines as \"hosts\": "
			"{\"NAME\": {\"host\": \"ADDRESS\"}}");
	config_ld_push(ld, "hosts");
	r = config_expect_object(ld, hosts);
	if (r == 0) {
		c->hosts = xcalloc(json_object_size(hosts), sizeof(*c->hosts));
		json_object_foreach (hosts, name, v) {
			r = parse_host(ld, name, v, &c->hosts[c->n_hosts++]);
			if (r < 0)
				break;
		}
	}
	config_ld_pop(ld);
	if (r < 0)
		return r;
	qsort(c->hosts, c->n_hosts, sizeof(*c->hosts), host_cmp);
	return 0;
}

/* The configured host name nearest to `word` within edit distance 2, or NULL. */
static const char *suggest_host(const struct config *c, const char *word)
{
	const char **names = xcalloc(c->n_hosts ? c->n_hosts : 1, sizeof(*names));
	const char *best;
	for (size_t i = 0; i < c->n_hosts; i++)
		names[i] = c->hosts[i].name;
	best = util_closest_word(word, names, c->n_hosts, 2);
	free(names);
	return best;
}

/* Checks that the string at the current path names a host in "hosts". */
int config_check_host_ref(struct loader *ld, const json_t *v)
{
	const char *hint;
	if (!json_is_string(v))
		return config_ld_fail(ld, LOCATE_VALUE, "%s must be a host name (a string), not %s",
				      config_ld_where(ld), config_ld_value(ld, v));
	if (config_find_host(ld->c, json_string_value(v)))
		return 0;
	hint = suggest_host(ld->c, json_string_value(v));
	if (hint)
		return config_ld_fail(
			ld, LOCATE_VALUE,
			"%s names host %s, which is not in \"hosts\"; did you mean \"%s\"?",
			config_ld_where(ld), config_ld_quote(ld, 0, json_string_value(v)), hint);
	return config_ld_fail(ld, LOCATE_VALUE, "%s names host %s, which is not in \"hosts\"",
			      config_ld_where(ld), config_ld_quote(ld, 0, json_string_value(v)));
}

void config_host_clear(struct cfg_host *h)
{
	free(h->name);
	free(h->display_name);
	free(h->address);
	free(h->role);
	free(h->tier);
	for (size_t i = 0; i < h->n_capabilities; i++)
		free(h->capabilities[i]);
	free(h->capabilities);
	for (size_t i = 0; i < h->n_services; i++) {
		free(h->services[i].name);
		free(h->services[i].path);
		free(h->services[i].kind);
		config_transport_clear(&h->services[i].transport);
	}
	free(h->services);
	config_free_secret(h->token);
	free(h->token_file);
	free(h->dropin);
	config_transport_clear(&h->transport);
}

static void add_warning(struct config *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void add_warning(struct config *c, const char *fmt, ...)
{
	struct buf b;
	va_list ap;
	buf_init(&b);
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	c->warnings = xrealloc(c->warnings, (c->n_warnings + 1) * sizeof(*c->warnings));
	c->warnings[c->n_warnings++] = buf_steal(&b, NULL);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Parses one hosts.d/NAME.json into the next slot of c->hosts (room is made by the
 * caller). Errors carry the drop-in's own FILE:LINE:COLUMN. */
static int load_dropin(struct config *c, const char *name, const char *file, char *errbuf,
		       size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	json_error_t jerr;
	int r = file_read_all(file, CONFIG_MAX_DROPIN_SIZE, &text, &len);
	if (r < 0) {
		config_set_error(errbuf, errlen, "%s: cannot read the drop-in: %s", file,
				 r == -EFBIG ? "larger than 64 KiB" : strerror(-r));
		return r;
	}
	json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!v) {
		config_syntax_error(file, &jerr, errbuf, errlen);
		free(text);
		return -EINVAL;
	}
	struct loader ld = {
		.text = text,
		.len = len,
		.name = file,
		.dir = c->dropin_dir,
		.errbuf = errbuf,
		.errlen = errlen,
		.c = c,
		.skip = 1,
	};
	struct cfg_host *h = &c->hosts[c->n_hosts];
	memset(h, 0, sizeof(*h));
	/* positions are looked up from the file's root: the host object is the document */
	r = parse_host(&ld, name, v, h);
	if (r < 0) {
		config_host_clear(h);
		memset(h, 0, sizeof(*h));
	} else {
		h->dropin = xstrdup(file);
		c->n_hosts++;
	}
	json_decref(v);
	free(text);
	return r;
}

/* Loads every hosts.d/NAME.json (a missing directory is no drop-ins), in name order so
 * that the first error reported is always the same one. */
int config_load_dropins(struct config *c, char *errbuf, size_t errlen)
{
	DIR *d = opendir(c->dropin_dir);
	if (!d)
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t l = strlen(e->d_name);
		if (e->d_name[0] == '.' || l <= 5 || strcmp(e->d_name + l - 5, ".json") != 0)
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrndup(e->d_name, l - 5);
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), name_cmp);
	c->hosts = xrealloc(c->hosts, (c->n_hosts + n + 1) * sizeof(*c->hosts));
	size_t n_typed = c->n_hosts;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		char *file = NULL;
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "%s/%s.json", c->dropin_dir, names[i]);
		file = buf_steal(&b, NULL);
		struct cfg_host key = {.name = names[i]};
		if (bsearch(&key, c->hosts, n_typed, sizeof(*c->hosts), host_cmp))
			add_warning(c,
				    "%s is ignored: hosts.json has a host named \"%s\", which "
				    "wins; rename one of them",
				    file, names[i]);
		else
			r = load_dropin(c, names[i], file, errbuf, errlen);
		free(file);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	if (r == 0)
		qsort(c->hosts, c->n_hosts, sizeof(*c->hosts), host_cmp);
	return r;
}

int config_remove_dropin(const struct cfg_host *h)
{
	if (!h->dropin)
		return -EPERM;
	if (unlink(h->dropin) < 0)
		return -errno;
	/* its token file, if the join listener put it there (not one the entry names) */
	const char *slash = strrchr(h->dropin, '/');
	if (h->token_file && slash &&
	    strncmp(h->token_file, h->dropin, (size_t) (slash - h->dropin) + 1) == 0 &&
	    !strchr(h->token_file + (slash - h->dropin) + 1, '/'))
		unlink(h->token_file);
	return 0;
}

int config_check_host(const char *name, const json_t *entry, char *errbuf, size_t errlen)
{
	struct config *c = config_alloc();
	struct cfg_host h = {0};
	struct loader ld = {
		.name = "the registration",
		.dir = "/",
		.errbuf = errbuf,
		.errlen = errlen,
		.c = c,
	};
	int r = parse_host(&ld, name, entry, &h);
	config_host_clear(&h);
	config_free(c);
	return r;
}

const struct cfg_host *config_find_host(const struct config *c, const char *name)
{
	struct cfg_host key = {.name = (char *) name};
	if (!c || !name || c->n_hosts == 0)
		return NULL;
	return bsearch(&key, c->hosts, c->n_hosts, sizeof(*c->hosts), host_cmp);
}

const struct cfg_service *config_host_service(const struct cfg_host *h, const char *name)
{
	if (!h || !name)
		return NULL;
	for (size_t i = 0; i < h->n_services; i++)
		if (strcmp(h->services[i].name, name) == 0)
			return &h->services[i];
	return NULL;
}

enum cfg_run_as config_host_run_as(const struct config *c, const struct cfg_host *h)
{
	return h && h->run_as != CFG_RUN_AS_INHERIT ? h->run_as : c->tasks.run_as;
}
