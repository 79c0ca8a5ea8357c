/* The cluster configuration (hosts.json): loading, validation, the built-in default.
 *
 * A struct config is an immutable, reference-counted snapshot. A reload builds a new one
 * and swaps the pointer; readers keep theirs alive with config_ref() while they use it. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define CONFIG_DEFAULT_AGENT_PORT 8768
#define CONFIG_MAX_FILE_SIZE      (4u << 20)

/* How one server is spoken to: over https (verified by a pinned key, a CA file or the
 * system CAs), or over plain http, which is allowed to a loopback address only unless
 * insecure_http says otherwise (the check is made per request: see backend/endpoint.h). */
struct cfg_transport {
	bool tls;           /* https; set by "tls": true or "tls": {...} */
	bool insecure_http; /* plain http to a non-loopback address is allowed */
	char *ca_file;      /* tls.ca_file resolved, or NULL: the top-level tls.ca_file */
	char *fingerprint;  /* "sha256:BASE64" of the server's public key, or NULL */
};

#define CFG_FINGERPRINT_PREFIX "sha256:"

/* One service a host offers, from hosts.HOST.services (e.g. "ollama": {"port": 11434}). */
struct cfg_service {
	char *name; /* the key, e.g. "ollama", "ledger", "agent" */
	int port;   /* 1..65535 */
	char *path; /* URL path prefix, "" when not given */
	char *kind; /* "type" field if given, else NULL (the key names the kind) */
	struct cfg_transport transport; /* its own: a service inherits nothing from its host */
};

/* Whose identity a task runs under on its node (DESIGN §8). */
enum cfg_run_as {
	CFG_RUN_AS_INHERIT = -1, /* a host without "run_as": the cluster's policy */
	CFG_RUN_AS_SUBMITTER,    /* the submitter's user name, resolved on the node (default) */
	CFG_RUN_AS_AGENT,        /* the agent's own user (single-user clusters, said explicitly) */
};

/* "tasks.retention": how long finished tasks are kept; 0: for ever. */
struct cfg_retention {
	double output_days;  /* output, after its task ended; default 30 */
	double output_mb;    /* all kept output, the oldest removed first; default 1024 */
	double records_days; /* whole tasks; default 0 (kept) */
};

/* "tasks": who may submit, as whom tasks run, and what one user may hold. */
struct cfg_tasks {
	enum cfg_run_as run_as;    /* default CFG_RUN_AS_SUBMITTER */
	bool allow_root;           /* root's submissions are accepted; default false */
	char *group;               /* "group": the group that may read tasks' files, or NULL */
	gid_t group_gid;           /* its gid, resolved at load */
	int drafts_per_user;       /* files in tasks/new/ per uid, default 64 */
	long draft_bytes_per_user; /* their bytes per uid, default 16 MiB */
	int queued_per_user;       /* unfinished tasks per uid, default 10000 */
	int finished_cached;       /* finished tasks also kept in memory, default 1000 */
	struct cfg_retention retention;
};

/* "artifacts": bounds on a task's outputs, what the control plane keeps of them, and
 * where inputs from its own disk may come from (issue 14). */
struct cfg_artifacts {
	int max_files;             /* output files per task, default 100 */
	long long max_bytes;       /* "max_mb": their bytes per task, default 4096 MiB */
	long long cache_max_bytes; /* "cache_max_mb": an output at most this large is copied
				    * to the control plane when its task ends; default 64 */
	char *inputs_root;         /* absolute: inputs from the control plane's disk lie beneath it;
			    * NULL: none are allowed */
};

/* "events": how many of them the store keeps across restarts. */
struct cfg_events {
	int keep; /* newest events kept, default 10000 (the events file shows up to 10000) */
};

struct cfg_host {
	char *name;         /* key in "hosts": the directory name under nodes/ */
	char *display_name; /* optional "name" field (the seed's "Training Server"), or NULL */
	char *address;      /* "host": IP or DNS name, as written */
	int agent_port;     /* services.agent.port, or "port", or 8768 */
	char *role;         /* "role", or "" */
	char *tier;         /* "tier" override, or NULL (computed from cores and RAM) */
	char **capabilities;
	size_t n_capabilities;
	struct cfg_service *services;
	size_t n_services;
	int queue_depth; /* per-node queue limit, default 10 */
	char *token;     /* secret: this host's agent token (host token_file, else global) */
	char *token_file;
	enum cfg_run_as run_as;         /* "run_as", or CFG_RUN_AS_INHERIT */
	struct cfg_transport transport; /* of the agent: the host's "tls" and "insecure_http" */
	char *dropin; /* the hosts.d/NAME.json it was loaded from (a joined node), or NULL */
	bool reverse; /* "reverse": reached through the join listener's relay (behind NAT) */
};

struct cfg_probe {
	int interval_s;      /* default 30 */
	int timeout_ms;      /* default 2000: connect + total deadline of one probe */
	int stale_after_s;   /* default 120 */
	int offline_after_s; /* default 600 */
	int unhealthy_after; /* failures in a row, default 3 */
	int max_age_ms;      /* open of health refreshes data older than this, default 1000 */
	int heartbeat_s;     /* joined agents push their health this often, default 45 */
};

/* "join": the control plane's listener for agents that register themselves (off when
 * absent). Paths are resolved against the config's directory. */
struct cfg_join {
	bool enabled;
	char *listen;       /* "ADDR:PORT" */
	char *token_file;   /* the join token's file (mode 0600), separate from the agents' token */
	char *token;        /* secret: its content */
	char *cert_file;    /* tls.cert_file: the listener's certificate (HTTPS only) */
	char *key_file;     /* tls.key_file */
	int forget_after_s; /* joined nodes offline this long are removed; 0 (default): never */
	bool announce;      /* publish _clusterfs-join._tcp over DNS-SD (avahi), for --join auto */
};

/* [warning, critical] pairs. A metric above the value reaches that level. */
struct cfg_thresholds {
	double cpu[2];    /* percent, default 80 95 */
	double memory[2]; /* percent, default 85 95 */
	double disk[2];   /* percent, default 80 90 */
	double load[2];   /* 1-minute load average, default 4.0 8.0 */
};

/* The "slurm" section: a Slurm cluster reached through slurmrestd (README, "Slurm"). Its
 * nodes appear under nodes/ as PREFIX + the Slurm node name, and the cluster itself as a
 * node named `name` that tasks can name ("node": "slurm"). */
struct cfg_slurm {
	char *name;       /* "name", default "slurm": the node tasks are placed on */
	char *prefix;     /* "prefix" of the Slurm nodes' names, default NAME + "-" */
	char *address;    /* from "rest": "http://HOST:PORT" */
	int port;         /* from "rest", default 6820 */
	char *token_file; /* the JWT's file, resolved; read (and re-read) by backend/slurm.c */
	char *user;       /* X-SLURM-USER-NAME: the user jobs are submitted as */
	char *partition;  /* the partition whose nodes are shown and where jobs go */
	char *api;        /* "v0.0.38", or NULL: discovered from slurmrestd's OpenAPI */
	char *output_dir; /* where jobs write DISPATCH_ID.out and .err; the control plane reads
			   * them there (a filesystem both see) */
	int interval_s;   /* nodes are listed this often; default probe.interval_s */
	int queue_depth;  /* jobs clusterfs keeps in Slurm at once, default 64 */
	struct cfg_transport transport; /* "tls", "insecure_http"; https when "rest" says so */
};

struct config {
	int refcount;     /* atomic */
	char *path;       /* absolute path of the file, or NULL for the built-in default */
	char *cluster;    /* cluster name, default "clusterfs" */
	char *token_file; /* auth.token_file resolved against the config's directory */
	struct cfg_probe probe;
	struct cfg_thresholds thresholds;
	struct cfg_tasks tasks;
	struct cfg_artifacts artifacts;
	struct cfg_events events;
	struct cfg_host *hosts; /* sorted by name */
	size_t n_hosts;
	json_t *routing;      /* "routing" object as given (validated), or an empty object */
	json_t *services;     /* top-level "services" object as given (validated), or empty */
	char **service_names; /* the top-level services' names, sorted */
	struct cfg_transport *service_transports; /* of service_names[i] */
	size_t n_service_transports;
	char *tls_ca_file; /* top-level tls.ca_file resolved, or NULL: the system CAs */
	json_t *doc;       /* the whole document as loaded (contains no secrets) */
	struct cfg_join join;
	char *dropin_dir; /* hosts.d beside the config file (may not exist), or NULL */
	/* Sentences about a load that succeeded but deserves attention (a drop-in shadowed by
	 * a hosts.json entry of the same name), for /cluster/alerts. */
	char **warnings;
	size_t n_warnings;
	struct cfg_slurm *slurm; /* the "slurm" section, or NULL */
};

#define CONFIG_DROPIN_DIR      "hosts.d"
#define CONFIG_MAX_DROPIN_SIZE (64u << 10)

/* Loads and validates a config file, and with it every hosts.d/NAME.json beside it: one
 * host entry each (the object hosts.NAME would hold), validated the same way; a hosts.json
 * entry of the same name wins (with a warning). Files starting with '.' are ignored. On failure returns -errno and writes one sentence
 * into errbuf, starting with "FILE:LINE:COLUMN: " wherever a position is known
 * (syntax errors, and semantic errors located in the source text). Token files are read
 * here; a missing or unsafe token file is an error. Returns a new reference. */
int config_load_file(const char *path, struct config **ret, char *errbuf, size_t errlen);

/* Deletes the drop-in a joined host was loaded from (hosts.d/NAME.json) and, when it lies
 * beside it, its token file; the watcher's reload then removes the node. 0, -EPERM for a
 * host typed into hosts.json (edit that file instead), or -errno from unlink. */
int config_remove_dropin(const struct cfg_host *h);

/* Validates one host entry (what hosts.NAME or hosts.d/NAME.json holds) as a load would,
 * without reading files. 0, or -EINVAL with one sentence in errbuf. */
int config_check_host(const char *name, const json_t *entry, char *errbuf, size_t errlen);

/* Same, from a string; `name` is used in messages. Relative token_file paths resolve
 * against `dir` (may be NULL: current directory). */
int config_load_string(const char *text, const char *name, const char *dir, struct config **ret,
		       char *errbuf, size_t errlen);

/* The built-in default: one node named after this machine's hostname, agent at
 * 127.0.0.1:8768, token from config_default_token_path(). The token file is read if it
 * exists; when it does not, the config still loads (the node will show the reason). */
int config_default(struct config **ret, char *errbuf, size_t errlen);

/* Where the default token lives: $CLUSTERFS_TOKEN_FILE, else $XDG_CONFIG_HOME/clusterfs/token,
 * else $HOME/.config/clusterfs/token. Returns a new string. */
char *config_default_token_path(void);

/* The queue depth of node `name`: a host's queue_depth, the Slurm cluster's for its node,
 * else 10. */
int config_queue_depth(const struct config *c, const char *name);

struct config *config_ref(struct config *c);
void config_unref(struct config *c);

/* Finds a host by name, or NULL. Borrows. */
const struct cfg_host *config_find_host(const struct config *c, const char *name);
/* The run_as policy in force for tasks on host h (its own, else the cluster's). */
enum cfg_run_as config_host_run_as(const struct config *c, const struct cfg_host *h);
/* "submitter" or "agent". */
const char *config_run_as_name(enum cfg_run_as r);
/* Finds a service of a host by name, or NULL. Borrows. */
const struct cfg_service *config_host_service(const struct cfg_host *h, const char *name);

/* The transport of top-level service `name` (services.NAME), or NULL. Borrows. */
const struct cfg_transport *config_service_transport(const struct config *c, const char *name);

/* True when fp is "sha256:" followed by the padded base64 of 32 bytes. */
bool config_fingerprint_is_valid(const char *fp);

/* The effective configuration as pretty JSON, with every secret redacted: defaults filled
 * in, token files shown by path only. Returns a new string. */
char *config_render(const struct config *c);
