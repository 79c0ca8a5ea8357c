/* Config: the "slurm" section (README, "Slurm"): a Slurm cluster reached through
 * slurmrestd. The JWT itself is read by the backend, which re-reads it when the file
 * changes; here the file must exist and be private. */
#include "config/config_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/util.h"

/* "rest": "http://HOST:PORT" or "https://HOST:PORT" (no path). */
static int parse_rest_url(struct loader *ld, const char *url, struct cfg_slurm *sl)
{
	const char *rest = NULL;
	if (strncmp(url, "http://", 7) == 0)
		rest = url + 7;
	else if (strncmp(url, "https://", 8) == 0) {
		rest = url + 8;
		sl->transport.tls = true;
	}
	char host[256] = "";
	int port = 6820, n = 0;
	bool ok = rest && *rest && *rest != '/' && *rest != ':';
	if (ok && rest[0] == '[') {
		ok = sscanf(rest, "[%255[^]]]%n", host, &n) == 1;
	} else if (ok) {
		size_t len = strcspn(rest, ":/");
		ok = len < sizeof(host);
		if (ok) {
			memcpy(host, rest, len);
			host[len] = '\0';
			n = (int) len;
		}
	}
	if (ok && rest[n] == ':') {
		char *end;
		long p = strtol(rest + n + 1, &end, 10);
		ok = end != rest + n + 1 && p > 0 && p < 65536;
		port = (int) p;
		n = (int) (end - rest);
	}
	if (ok && rest[n] == '/' && rest[n + 1] == '\0')
		n++;
	ok = ok && rest[n] == '\0' && host[0];
	if (!ok) {
		config_ld_push(ld, "rest");
		int r = config_ld_fail(ld, LOCATE_VALUE,
				       "%s must be slurmrestd's address as http://HOST:PORT or "
				       "https://HOST:PORT, not %s",
				       config_ld_where(ld), config_ld_quote(ld, 0, url));
		config_ld_pop(ld);
		return r;
	}
	sl->address = xstrdup(host);
	sl->port = port;
	return 0;
}

/* A string member that must be given. */
static int require_string(struct loader *ld, const json_t *obj, const char *key, const char **out)
{
	int r = config_parse_string(ld, obj, key, true, out);
	if (r == 0 && !*out)
		r = config_ld_fail(ld, LOCATE_KEY, "%s needs \"%s\"", config_ld_where(ld), key);
	return r;
}

/* The Slurm token file, resolved beside the config into sl->token_file: it must be there
 * and private now; its content is the backend's. Returns 0 or the loader's error. */
static int slurm_token_file(struct loader *ld, struct cfg_slurm *sl, const char *token_file)
{
	int r;
	char msg[512], *secret = NULL;
	sl->token_file = config_path_join(ld->dir, token_file);
	r = token_read_file(sl->token_file, &secret, msg, sizeof(msg));
	config_free_secret(secret);
	if (r < 0) {
		config_ld_push(ld, "token_file");
		config_ld_fail(ld, LOCATE_VALUE, "%s", msg);
		config_ld_pop(ld);
	}
	return r;
}

/* The Slurm cluster's "name" (a node name, default "slurm", left in *name when absent) and
 * the "prefix" of its nodes' names, borrowed from v. Returns 0 or the loader's error. */
static int slurm_names(struct loader *ld, const json_t *v, const char **name, const char **prefix)
{
	int r = config_parse_string(ld, v, "name", true, name);
	if (r == 0 && (!name_is_valid(*name) || (*name)[0] == '.' || (*name)[0] == '-')) {
		config_ld_push(ld, "name");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s must be a node name (letters, digits, '.', '_', '-'), not %s",
			config_ld_where(ld), config_ld_quote(ld, 0, *name));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_string(ld, v, "prefix", false, prefix);
	if (r == 0 && *prefix && (*prefix)[0] && !name_is_valid(*prefix)) {
		config_ld_push(ld, "prefix");
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be printable and without '/', not %s",
				   config_ld_where(ld), config_ld_quote(ld, 0, *prefix));
		config_ld_pop(ld);
	}
	return r;
}

int config_parse_slurm(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"name",       "prefix",      "rest", "token_file",
					   "user",       "partition",   "api",  "output_dir",
					   "interval_s", "queue_depth", "tls",  "insecure_http",
					   NULL};
	json_t *v = json_object_get(doc, "slurm");
	const char *name = "slurm", *prefix = NULL, *rest = NULL, *token_file = NULL, *user = NULL,
		   *partition = NULL, *api = NULL, *output_dir = NULL;
	int r;

	if (!v)
		return 0;
	struct cfg_slurm *sl = xcalloc(1, sizeof(*sl));
	sl->interval_s = ld->c->probe.interval_s;
	sl->queue_depth = 64;
	config_ld_push(ld, "slurm");
	r = config_expect_object(ld, v);
	if (r == 0)
		r = config_reject_inline_token(ld, v);
	if (r == 0)
		r = config_check_keys(ld, v, keys);
	if (r == 0)
		r = slurm_names(ld, v, &name, &prefix);
	if (r == 0)
		r = require_string(ld, v, "rest", &rest);
	if (r == 0)
		r = parse_rest_url(ld, rest, sl);
	if (r == 0)
		r = require_string(ld, v, "token_file", &token_file);
	if (r == 0)
		r = require_string(ld, v, "user", &user);
	if (r == 0)
		r = require_string(ld, v, "partition", &partition);
	if (r == 0)
		r = require_string(ld, v, "output_dir", &output_dir);
	if (r == 0)
		r = config_parse_string(ld, v, "api", true, &api);
	if (r == 0 && api &&
	    (strncmp(api, "v0.0.", 5) || !api[5] ||
	     strspn(api + 5, "0123456789") != strlen(api + 5))) {
		config_ld_push(ld, "api");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s must be an OpenAPI version of slurmrestd such as \"v0.0.38\", not "
			"%s",
			config_ld_where(ld), config_ld_quote(ld, 0, api));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_int(ld, v, "interval_s", 1, 86400, &sl->interval_s);
	if (r == 0)
		r = config_parse_int(ld, v, "queue_depth", 1, 100000, &sl->queue_depth);
	if (r == 0)
		r = config_parse_transport(ld, v, &sl->transport);
	if (r == 0 && config_find_host(ld->c, name)) {
		config_ld_push(ld, "name");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s %s is also a host in \"hosts\"; give the Slurm cluster another "
			"\"name\"",
			config_ld_where(ld), config_ld_quote(ld, 0, name));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = slurm_token_file(ld, sl, token_file);
	config_ld_pop(ld);
	if (r < 0) {
		config_slurm_free(sl);
		return r;
	}
	sl->name = xstrdup(name);
	if (prefix)
		sl->prefix = xstrdup(prefix);
	else
		sl->prefix = xasprintf("%s-", name);
	sl->user = xstrdup(user);
	sl->partition = xstrdup(partition);
	sl->api = api ? xstrdup(api) : NULL;
	sl->output_dir = config_path_join(ld->dir, output_dir);
	ld->c->slurm = sl;
	return 0;
}

void config_slurm_free(struct cfg_slurm *sl)
{
	if (!sl)
		return;
	char *strings[] = {sl->name, sl->prefix,    sl->address, sl->token_file,
			   sl->user, sl->partition, sl->api,     sl->output_dir};
	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
		free(strings[i]);
	config_transport_clear(&sl->transport);
	free(sl);
}
