/* Config: the private header of config/config*.c, never included elsewhere. It holds the
 * loader (the state of one load) and the functions the files share.
 *
 * A load (config.c) walks the document once, section by section: the loader's primitives
 * (config_loader.c) keep the path being checked and turn a problem into one sentence
 * that names the value by that path and by its FILE:LINE:COLUMN; the top-level sections
 * (config_sections.c), the hosts and drop-ins (config_hosts.c) and the Slurm section
 * (config_slurm.c) check their part and copy it into ld->c. Every function that takes a
 * loader returns 0 or -EINVAL with the sentence in ld->errbuf, and leaves the path as it
 * found it. A load is one thread's: nothing here takes a lock. Allocation failures abort
 * (the x* wrappers of backend/util.h). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "config/locate.h"

#define LOADER_MAX_DEPTH 8
#define MAX_PORT         65535

/* The state of one load: the source for locating errors, and the path being checked. */
struct loader {
	const char *text; /* source text, or NULL (no positions) */
	size_t len;
	const char *name; /* file name used in messages */
	const char *dir;  /* directory that relative token files resolve against */
	char *errbuf;
	size_t errlen;
	struct config *c; /* being filled */
	struct locate_step path[LOADER_MAX_DEPTH];
	size_t depth;
	size_t skip;     /* leading steps of path not in text (1 in a drop-in: the host's name) */
	char where[256]; /* scratch for config_ld_where() */
	char quoted[2][96]; /* scratch for config_ld_quote() */
	char value[64];     /* scratch for config_ld_value() */
};

/* "powerhouse", "standard", "light", NULL: the tiers a host or a routing policy names. */
extern const char *const config_tier_names[];

/* ---- config_loader.c: the path, messages, typed members, transports ---- */

/* Writes one sentence into errbuf (errlen bytes); a NULL errbuf is a no-op. */
void config_set_error(char *errbuf, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Frees a secret after overwriting it. NULL is a no-op. */
void config_free_secret(char *s);
/* Formats a jansson parse error: "NAME:LINE:COLUMN: ..." when jansson knows where. */
void config_syntax_error(const char *name, const json_error_t *e, char *errbuf, size_t errlen);

/* Steps into member `key` (borrowed: it must outlive the step) or element `index`, and
 * back out. */
void config_ld_push(struct loader *ld, const char *key);
void config_ld_push_index(struct loader *ld, size_t index);
void config_ld_pop(struct loader *ld);
/* The current path for messages ("hosts.spark1.services.agent.port"), a string in quotes
 * with JSON escapes (two slots, so that a message can hold two), a value in compact JSON:
 * each shortened and safe for one log line, valid until the next call on the same slot. */
const char *config_ld_where(struct loader *ld);
const char *config_ld_quote(struct loader *ld, int slot, const char *s);
const char *config_ld_value(struct loader *ld, const json_t *v);
/* Reports an error at the current path: "NAME:LINE:COLUMN: MESSAGE". Returns -EINVAL. */
int config_ld_fail(struct loader *ld, enum locate_target target, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Rejects keys of `obj` that are not in `known`, suggesting the nearest known one. */
int config_check_keys(struct loader *ld, const json_t *obj, const char *const *known);
/* Checks that the value at the current path is an object. */
int config_expect_object(struct loader *ld, const json_t *v);
/* Opens the optional object member `key` of obj (a section): steps into it and checks
 * that it is an object with only `known` keys. 1 with *ret_obj (borrowed) when it is there
 * (the caller steps out when done), 0 when absent, or the error (nothing to step out of). */
int config_open_object(struct loader *ld, const json_t *obj, const char *key,
		       const char *const *known, json_t **ret_obj);
/* Steps into `name`, an entry of an object of named entries (a service, a file), and
 * checks it: a valid name (`what` says of what, for the message), an object with only
 * `known` keys. The caller steps out (config_ld_pop()) whatever the result. */
int config_enter_entry(struct loader *ld, const char *what, const char *name, const json_t *v,
		       const char *const *known);

/* Optional members, each left alone when absent: an integer or a number within
 * [min, max], a string (borrowed from the document; `nonempty`: "" is an error), a
 * boolean, "run_as" ("submitter" or "agent"). */
int config_parse_int(struct loader *ld, const json_t *obj, const char *key, long min, long max,
		     int *out);
int config_parse_number(struct loader *ld, const json_t *obj, const char *key, double min,
			double max, double *out);
int config_parse_string(struct loader *ld, const json_t *obj, const char *key, bool nonempty,
			const char **out);
int config_parse_bool(struct loader *ld, const json_t *obj, const char *key, bool *out);
int config_parse_run_as(struct loader *ld, const json_t *obj, enum cfg_run_as *out);
/* "token" in a config would put a secret into a file that is shown and copied around. */
int config_reject_inline_token(struct loader *ld, const json_t *obj);

/* A URL path: starts with '/', printable, no spaces. */
bool config_url_path_ok(const char *s);
/* Whether s is one of the NULL-terminated list. */
bool config_in_list(const char *s, const char *const *list);
/* rel resolved against dir (NULL: rel as it is). Returns a new string. */
char *config_path_join(const char *dir, const char *rel);

/* A CA file must be readable when the config is loaded, not at the first request. */
int config_check_ca_file(struct loader *ld, const char *path);
/* "tls" (true, false, or {"fingerprint": "sha256:...", "ca_file": "PATH"}) and
 * "insecure_http" (a boolean) of a host or a service, into t. */
int config_parse_transport(struct loader *ld, const json_t *obj, struct cfg_transport *t);
void config_transport_clear(struct cfg_transport *t);

/* ---- config_sections.c: the top-level sections but "hosts" and "slurm" ---- */

int config_parse_cluster(struct loader *ld, const json_t *doc);
int config_parse_auth(struct loader *ld, const json_t *doc);
int config_parse_tls(struct loader *ld, const json_t *doc);
int config_parse_probe(struct loader *ld, const json_t *doc);
int config_parse_thresholds(struct loader *ld, const json_t *doc);
int config_parse_tasks(struct loader *ld, const json_t *doc);
int config_parse_artifacts(struct loader *ld, const json_t *doc);
int config_parse_join(struct loader *ld, const json_t *doc);
int config_parse_events(struct loader *ld, const json_t *doc);
/* "routing" and "services" name hosts: parsed after "hosts" and "slurm". */
int config_parse_routing(struct loader *ld, const json_t *doc);
int config_parse_services(struct loader *ld, const json_t *doc);
/* The seed's "local_host", "default_trainer", "default_inference": kept in doc, checked. */
int config_parse_seed_refs(struct loader *ld, const json_t *doc);

/* ---- config_hosts.c: "hosts", hosts.d/ drop-ins ---- */

/* "hosts", into ld->c->hosts sorted by name (token files resolved, not read). */
int config_parse_hosts(struct loader *ld, const json_t *doc);
/* Adds every hosts.d/NAME.json of c->dropin_dir to c->hosts; errors carry the drop-in's
 * own FILE:LINE:COLUMN in errbuf. 0 or -errno. */
int config_load_dropins(struct config *c, char *errbuf, size_t errlen);
/* Checks that the string at the current path names a host in "hosts". */
int config_check_host_ref(struct loader *ld, const json_t *v);
/* Frees what h holds (not h). */
void config_host_clear(struct cfg_host *h);

/* ---- config_slurm.c ---- */

/* The "slurm" section, into ld->c->slurm (NULL when absent); its token file must be there
 * and private. */
int config_parse_slurm(struct loader *ld, const json_t *doc);
/* Frees sl and what it holds. NULL is a no-op. */
void config_slurm_free(struct cfg_slurm *sl);

/* ---- config.c ---- */

/* A new config holding the defaults, refcount 1. */
struct config *config_alloc(void);
/* Frees c whatever its refcount. */
void config_free(struct config *c);
