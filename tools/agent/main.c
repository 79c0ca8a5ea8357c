/* clusterfs-agent: serves a node's health and inventory to the clusterfs control plane
 * and runs tasks for it. This file parses options, prepares the token and state
 * directory, wires the sampler, the task registry, the HTTP server and the node API
 * together, and waits for SIGTERM or SIGINT while reaping task supervisors on SIGCHLD.
 * The supervisors are clusterfs-agent-supervise, found next to this binary. */
#include "backend/util.h"
#include "tools/agent/api.h"
#include "tools/agent/artifacts.h"
#include "tools/agent/staging.h"
#include "tools/agent/init.h"
#include "tools/agent/ledger.h"
#include "httpd/dnssd.h"
#include "httpd/server.h"
#include "tools/agent/supervisor.h"
#include "tools/agent/sysinfo.h"
#include "tools/agent/tasks.h"
#include "httpd/tls.h"
#include "tools/agent/join.h"
#include "tools/agent/knowledge.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AGENT_DEFAULT_LISTEN   "0.0.0.0:8768"
#define AGENT_SYSTEM_STATE_DIR "/var/lib/clusterfs-agent"
#define AGENT_EXIT_RUNTIME     1 /* could not start: port taken, state dir unusable */
#define AGENT_EXIT_USAGE       2 /* bad command line or token file */
#define AGENT_EXIT_JOIN        3 /* the control plane refused --join or --leave */

struct agent_options {
	const char *listen;
	const char *token_file;
	const char *state_dir; /* NULL: the default */
	const char *name;      /* NULL: the hostname */
	const char *ledger;    /* NULL: serve no ledger */
	const char *tls_cert;  /* serve HTTPS with this certificate and tls_key, or NULL */
	const char *tls_key;
	const char *init_dir;    /* --init DIR: prepare DIR and exit */
	const char *fingerprint; /* --fingerprint CERT: print its fingerprint and exit */
	bool listen_given;
	bool verbose;
	struct join_options join;    /* --join URL and its companions; join.url NULL: none */
	bool leave;                  /* --leave: deregister from --join URL and exit */
	long long outputs_max_files; /* --outputs-max-files N: per task */
	long long outputs_max_bytes; /* --outputs-max-bytes N: per task */
	bool announce;               /* --announce: publish _clusterfs._tcp over DNS-SD (avahi) */
};

/* The default state directory: system-wide for root, per user otherwise. Returns a new
 * string, 0 or -ENOENT (no home directory). */
static int agent_default_state_dir(char **ret_dir)
{
	const char *xdg = getenv("XDG_STATE_HOME");
	const char *home = getenv("HOME");
	char *dir;

	if (geteuid() == 0) {
		dir = xstrdup(AGENT_SYSTEM_STATE_DIR);
	} else if (xdg && xdg[0] == '/') {
		dir = xasprintf("%s/clusterfs-agent", xdg);
	} else {
		if (!home || home[0] != '/') {
			struct passwd *pw = getpwuid(geteuid());
			if (!pw || !pw->pw_dir || pw->pw_dir[0] != '/')
				return -ENOENT;
			home = pw->pw_dir;
		}
		dir = xasprintf("%s/.local/state/clusterfs-agent", home);
	}
	*ret_dir = dir;
	return 0;
}

static void agent_usage(FILE *out)
{
	char host[HOST_NAME_MAX + 1] = "";
	_cleanup_free_ char *state_dir = NULL;

	gethostname(host, sizeof(host));
	host[sizeof(host) - 1] = '\0';
	if (agent_default_state_dir(&state_dir) < 0)
		state_dir = NULL;
	fprintf(out,
		"Usage: clusterfs-agent [--listen ADDR:PORT] --token-file FILE [--state-dir DIR]\n"
		"                       [--name NAME] [--ledger FILE] [--tls-cert FILE --tls-key FILE]\n"
		"                       [--join https://HOST:PORT|auto --join-token-file FILE\n"
		"                        [--join-ca FILE | --join-fingerprint FP] [--advertise ADDR]\n"
		"                        [--role ROLE] [--capabilities A,B] [--reverse]]\n"
		"                       [--announce] [-v]\n"
		"       clusterfs-agent --leave --join URL --join-token-file FILE --token-file FILE\n"
		"                       [--name NAME] [--join-ca FILE | --join-fingerprint FP]\n"
		"       clusterfs-agent --init DIR [--name NAME] [--listen ADDR:PORT]\n"
		"                       [--tls-cert FILE --tls-key FILE]\n"
		"       clusterfs-agent --fingerprint CERTFILE\n"
		"       clusterfs-agent --help | --version\n"
		"\n"
		"Serves this node's health and inventory to the clusterfs control plane. Every\n"
		"request must carry the header \"Authorization: Bearer TOKEN\".\n"
		"\n"
		"Options:\n"
		"  --listen ADDR:PORT  address to listen on, IPv6 as [ADDR]:PORT\n"
		"                      (default: " AGENT_DEFAULT_LISTEN ")\n"
		"  --token-file FILE   file holding the bearer token; it must be owned by the\n"
		"                      agent's user or root and not be readable or writable by\n"
		"                      group or others (required, no default)\n"
		"  --state-dir DIR     directory for the agent's state, created with mode 0700\n"
		"                      (an existing one must be the agent's user's; it is made\n"
		"                      0700)\n"
		"                      (default: %s;\n"
		"                      " AGENT_SYSTEM_STATE_DIR " for root, else\n"
		"                      $XDG_STATE_HOME/clusterfs-agent or\n"
		"                      ~/.local/state/clusterfs-agent)\n"
		"  --name NAME         this node's name in the cluster (default: the hostname, %s)\n"
		"  --ledger FILE       serve the checkpoint ledger kept in FILE (sqlite; created if missing)\n"
		"  --tls-cert FILE     serve HTTPS (TLS 1.2 or 1.3) with this PEM certificate...\n"
		"  --tls-key FILE      ...and its PEM private key, which must be owned by the\n"
		"                      agent's user with mode 0600 (both or neither)\n"
		"  --init DIR          create DIR (0700) with agent.token and a self-signed\n"
		"                      agent.crt and agent.key (0600; existing files are kept),\n"
		"                      print this host's hosts.json entry and the command that\n"
		"                      starts the agent, and exit\n"
		"  --fingerprint CERT  print the SHA-256 fingerprint of the certificate's public\n"
		"                      key (\"sha256:BASE64\", for hosts.json's tls.fingerprint)\n"
		"  --outputs-max-files N  at most N output files per task (default 100)\n"
		"  --outputs-max-bytes N  at most N bytes of outputs per task (default 4 GiB)\n"
		"  --join URL          register with the control plane's join listener\n"
		"                      (https://HOST:PORT; hosts.d/NAME.json is written there)\n"
		"                      and push a heartbeat every probe.heartbeat_s seconds;\n"
		"                      auto: find it on the LAN (DNS-SD _clusterfs-join._tcp,\n"
		"                      through avahi), its key vouched for with the join token\n"
		"                      or pinned by --join-fingerprint\n"
		"  --join-token-file F the join token (mode 0600), not the agent's token\n"
		"  --join-ca FILE      verify the control plane's certificate against FILE...\n"
		"  --join-fingerprint FP ...or pin its key (\"sha256:BASE64\"); default: system CAs\n"
		"  --advertise ADDR    the address the control plane should reach this agent at\n"
		"                      (default: the one the join request comes from)\n"
		"  --role ROLE         the role to register with\n"
		"  --capabilities A,B  the capabilities to register with\n"
		"  --reverse           behind NAT: the control plane reaches this agent over a\n"
		"                      channel the agent keeps open (a long poll to --join URL)\n"
		"  --leave             ask the control plane to forget this node, and exit\n"
		"  --announce          publish this agent on the LAN (DNS-SD _clusterfs._tcp,\n"
		"                      through avahi-daemon)\n"
		"  -v, --verbose       log every connection and request\n"
		"  --help              print this help and exit\n"
		"  --version           print the version and exit\n",
		state_dir ? state_dir : "unknown", host[0] ? host : "unknown");
}

/* Parses the command line. Returns 0, 1 when the program should exit successfully
 * (--help, --version), or -EINVAL after printing the usage to stderr. */
/* The agent's long options. */
enum {
	OPT_LISTEN = 256,
	OPT_TOKEN_FILE,
	OPT_STATE_DIR,
	OPT_NAME,
	OPT_VERSION,
	OPT_LEDGER,
	OPT_TLS_CERT,
	OPT_TLS_KEY,
	OPT_INIT,
	OPT_FINGERPRINT,
	OPT_JOIN,
	OPT_JOIN_TOKEN_FILE,
	OPT_JOIN_CA,
	OPT_JOIN_FINGERPRINT,
	OPT_ADVERTISE,
	OPT_ROLE,
	OPT_CAPABILITIES,
	OPT_LEAVE,
	OPT_REVERSE,
	OPT_OUTPUTS_MAX_FILES,
	OPT_OUTPUTS_MAX_BYTES,
	OPT_ANNOUNCE,
};
static const struct option agent_longopts[] = {
	{"listen", required_argument, NULL, OPT_LISTEN},
	{"token-file", required_argument, NULL, OPT_TOKEN_FILE},
	{"state-dir", required_argument, NULL, OPT_STATE_DIR},
	{"name", required_argument, NULL, OPT_NAME},
	{"ledger", required_argument, NULL, OPT_LEDGER},
	{"tls-cert", required_argument, NULL, OPT_TLS_CERT},
	{"tls-key", required_argument, NULL, OPT_TLS_KEY},
	{"init", required_argument, NULL, OPT_INIT},
	{"fingerprint", required_argument, NULL, OPT_FINGERPRINT},
	{"join", required_argument, NULL, OPT_JOIN},
	{"join-token-file", required_argument, NULL, OPT_JOIN_TOKEN_FILE},
	{"join-ca", required_argument, NULL, OPT_JOIN_CA},
	{"join-fingerprint", required_argument, NULL, OPT_JOIN_FINGERPRINT},
	{"advertise", required_argument, NULL, OPT_ADVERTISE},
	{"role", required_argument, NULL, OPT_ROLE},
	{"capabilities", required_argument, NULL, OPT_CAPABILITIES},
	{"leave", no_argument, NULL, OPT_LEAVE},
	{"reverse", no_argument, NULL, OPT_REVERSE},
	{"outputs-max-files", required_argument, NULL, OPT_OUTPUTS_MAX_FILES},
	{"outputs-max-bytes", required_argument, NULL, OPT_OUTPUTS_MAX_BYTES},
	{"announce", no_argument, NULL, OPT_ANNOUNCE},
	{"verbose", no_argument, NULL, 'v'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

/* The combinations of options that make no command. Returns 0, or -EINVAL with the reason
 * and the usage on stderr. */
static int agent_check_options(const struct agent_options *o)
{
	if (!o->tls_cert != !o->tls_key) {
		fprintf(stderr, "clusterfs-agent: --tls-cert and --tls-key go together: give both "
				"(HTTPS) or neither (plain HTTP)\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	if (o->init_dir && o->fingerprint) {
		fprintf(stderr,
			"clusterfs-agent: --init and --fingerprint are separate commands\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	if ((o->init_dir || o->fingerprint) && (o->token_file || o->state_dir || o->ledger)) {
		fprintf(stderr,
			"clusterfs-agent: --%s takes no --token-file, --state-dir or "
			"--ledger\n",
			o->init_dir ? "init" : "fingerprint");
		agent_usage(stderr);
		return -EINVAL;
	}
	if (!o->join.url &&
	    (o->leave || o->join.reverse || o->join.token_file || o->join.ca_file ||
	     o->join.fingerprint || o->join.advertise || o->join.role || o->join.capabilities)) {
		fprintf(stderr, "clusterfs-agent: --leave and the --join-* options, --advertise, "
				"--role and --capabilities go with --join URL\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	if (o->join.url && strcmp(o->join.url, "auto") == 0 && o->join.ca_file) {
		fprintf(stderr, "clusterfs-agent: --join auto pins the key it finds (vouched for "
				"with the join token, or --join-fingerprint): it takes no "
				"--join-ca\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	if ((o->init_dir || o->fingerprint) && o->announce) {
		fprintf(stderr, "clusterfs-agent: --announce goes with a running agent\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	if (o->join.url && !o->join.token_file) {
		fprintf(stderr, "clusterfs-agent: --join needs --join-token-file FILE\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	if (!o->token_file && !o->init_dir && !o->fingerprint) {
		fprintf(stderr, "clusterfs-agent: --token-file is required\n");
		agent_usage(stderr);
		return -EINVAL;
	}
	return 0;
}

static int agent_parse_options(int argc, char **argv, struct agent_options *ret_opts)
{
	struct agent_options opts = {.listen = AGENT_DEFAULT_LISTEN,
				     .outputs_max_files = ARTIFACTS_MAX_FILES,
				     .outputs_max_bytes = (long long) ARTIFACTS_MAX_BYTES};
	char *end;
	int c;

	while ((c = getopt_long(argc, argv, "hv", agent_longopts, NULL)) != -1) {
		switch (c) {
		case OPT_LISTEN:
			opts.listen = optarg;
			opts.listen_given = true;
			break;
		case OPT_TLS_CERT: opts.tls_cert = optarg; break;
		case OPT_TLS_KEY: opts.tls_key = optarg; break;
		case OPT_INIT: opts.init_dir = optarg; break;
		case OPT_FINGERPRINT: opts.fingerprint = optarg; break;
		case 'v': opts.verbose = true; break;
		case OPT_TOKEN_FILE: opts.token_file = optarg; break;
		case OPT_STATE_DIR: opts.state_dir = optarg; break;
		case OPT_NAME: opts.name = optarg; break;
		case OPT_LEDGER: opts.ledger = optarg; break;
		case OPT_JOIN: opts.join.url = optarg; break;
		case OPT_JOIN_TOKEN_FILE: opts.join.token_file = optarg; break;
		case OPT_JOIN_CA: opts.join.ca_file = optarg; break;
		case OPT_JOIN_FINGERPRINT: opts.join.fingerprint = optarg; break;
		case OPT_ADVERTISE: opts.join.advertise = optarg; break;
		case OPT_ROLE: opts.join.role = optarg; break;
		case OPT_CAPABILITIES: opts.join.capabilities = optarg; break;
		case OPT_LEAVE: opts.leave = true; break;
		case OPT_REVERSE: opts.join.reverse = true; break;
		case OPT_OUTPUTS_MAX_FILES:
		case OPT_OUTPUTS_MAX_BYTES: {
			errno = 0;
			long long v = strtoll(optarg, &end, 10);
			if (errno || *end || end == optarg || v < 0) {
				fprintf(stderr,
					"clusterfs-agent: --%s takes a number of at least 0\n",
					c == OPT_OUTPUTS_MAX_FILES ? "outputs-max-files"
								   : "outputs-max-bytes");
				return -EINVAL;
			}
			*(c == OPT_OUTPUTS_MAX_FILES ? &opts.outputs_max_files
						     : &opts.outputs_max_bytes) = v;
			break;
		}
		case OPT_ANNOUNCE: opts.announce = true; break;
		case 'h': agent_usage(stdout); return 1;
		case OPT_VERSION: printf("clusterfs-agent %s\n", CLUSTERFS_VERSION); return 1;
		default: agent_usage(stderr); return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "clusterfs-agent: unexpected argument '%s'\n", argv[optind]);
		agent_usage(stderr);
		return -EINVAL;
	}
	if (agent_check_options(&opts) < 0)
		return -EINVAL;
	*ret_opts = opts;
	return 0;
}

/* Creates `path` and any missing parents with mode 0700 and checks that the agent can
 * write there. An existing directory must be the agent's user's own (whoever owns it
 * could change what the tasks run); one open to group or others is made 0700. Returns
 * the absolute path as a new string, 0 or -errno with a sentence in errbuf. */
static int agent_prepare_state_dir(const char *path, char **ret_abs, char *errbuf, size_t errlen)
{
	_cleanup_free_ char *p = xstrdup(path);
	char owner[64], self[64];
	struct stat st;
	int fd, r;

	for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			r = -errno;
			snprintf(errbuf, errlen, "cannot create state directory %s: %s", path,
				 strerror(-r));
			return r;
		}
		*s = '/';
	}
	if (mkdir(p, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot create state directory %s: %s", path,
			 strerror(-r));
		return r;
	}
	/* Checked and fixed through one descriptor, so that it is the same directory. */
	fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot use state directory %s: %s", path, strerror(-r));
		if (fd >= 0)
			close(fd);
		return r;
	}
	if (st.st_uid != geteuid()) {
		util_user_name(st.st_uid, owner, sizeof(owner));
		util_user_name(geteuid(), self, sizeof(self));
		snprintf(errbuf, errlen,
			 "refusing state directory %s: it is owned by %s (uid %u), not by %s, "
			 "the user clusterfs-agent runs as, and its owner could change what the "
			 "tasks run; run: chown %s %s, or pass a directory of %s's with "
			 "--state-dir",
			 path, owner, (unsigned) st.st_uid, self, self, path, self);
		close(fd);
		return -EPERM;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		if (fchmod(fd, 0700) < 0) {
			r = -errno;
			snprintf(errbuf, errlen,
				 "state directory %s is accessible by group or others (mode "
				 "%04o) and cannot be made 0700: %s",
				 path, (unsigned) (st.st_mode & 07777), strerror(-r));
			close(fd);
			return r;
		}
		log_warn("state directory %s was accessible by group or others (mode %04o); "
			 "changed its mode to 0700",
			 p, (unsigned) (st.st_mode & 07777));
	}
	close(fd);
	char *abs = access(p, W_OK | X_OK) == 0 ? realpath(p, NULL) : NULL;
	if (!abs) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot use state directory %s: %s", path, strerror(-r));
		return r;
	}
	*ret_abs = abs;
	return 0;
}

/* Creates the ledger file `path` with mode 0600 when it is missing, so that sqlite, which
 * gives its -wal and -shm files the database's mode, makes none of them readable by
 * others. 0 or -errno. */
static int agent_create_ledger_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return errno == EEXIST ? 0 : -errno;
	close(fd);
	return 0;
}

/* The supervisor program, SUPERVISOR_PROGRAM in the directory of the agent's own binary,
 * which must be executable. Returns a new string, 0 or -errno with the path tried in
 * `path` (size PATH_MAX). */
static int agent_find_supervisor(char path[PATH_MAX], char **ret_exe)
{
	ssize_t n = readlink("/proc/self/exe", path, PATH_MAX - 1);
	if (n < 0) {
		snprintf(path, PATH_MAX, "/proc/self/exe");
		return -errno;
	}
	path[n] = '\0';
	char *slash = strrchr(path, '/');
	size_t dir_len = slash ? (size_t) (slash - path) : 0;
	if ((size_t) snprintf(path + dir_len, PATH_MAX - dir_len, "/%s", SUPERVISOR_PROGRAM) >=
	    PATH_MAX - dir_len)
		return -ENAMETOOLONG;
	if (access(path, X_OK) < 0)
		return -errno;
	*ret_exe = xstrdup(path);
	return 0;
}

static void server_wake_cb(void *arg)
{
	server_wake(arg);
}

/* --fingerprint CERT: prints "sha256:BASE64". Returns the exit status. */
static int agent_print_fingerprint(const char *cert_file)
{
	char errbuf[512], *pem = NULL, *fp = NULL;
	size_t len;
	int r = file_read_all(cert_file, 256 * 1024, &pem, &len);
	if (r < 0) {
		log_err("certificate file %s: %s", cert_file, strerror(-r));
		return AGENT_EXIT_USAGE;
	}
	r = tls_fingerprint_pem(pem, &fp, errbuf, sizeof(errbuf));
	free(pem);
	if (r < 0) {
		log_err("%s: %s", cert_file, errbuf);
		return AGENT_EXIT_USAGE;
	}
	printf("%s\n", fp);
	free(fp);
	return 0;
}

/* Blocks until SIGTERM or SIGINT arrives, reaping supervisors on SIGCHLD; all three are
 * blocked in every thread. */
static void agent_wait_for_signal(const sigset_t *set, struct tasks *tasks)
{
	for (;;) {
		int sig = sigwaitinfo(set, NULL);
		if (sig == SIGCHLD) {
			tasks_reap(tasks);
			continue;
		}
		if (sig > 0) {
			log_info("received %s, shutting down",
				 sig == SIGTERM ? "SIGTERM" : "SIGINT");
			return;
		}
		if (errno != EINTR) {
			log_err("sigwaitinfo: %s; shutting down", strerror(errno));
			return;
		}
	}
}

/* --announce: _clusterfs._tcp named after the node, on the interface of the address we
 * listen on, with TXT records saying how to reach us (its TLS key's fingerprint). */
static int agent_announce(const struct agent_options *o, const char *bound, const char *tls_cert,
			  struct dnssd **ret, char *errbuf, size_t errlen)
{
	char host[INET6_ADDRSTRLEN + 8], name[300], fp[128] = "", version[64];
	const char *colon = strrchr(bound, ':');
	size_t hl = colon ? (size_t) (colon - bound) : strlen(bound);
	if (hl >= 2 && bound[0] == '[')
		snprintf(host, sizeof(host), "%.*s", (int) (hl - 2), bound + 1);
	else
		snprintf(host, sizeof(host), "%.*s", (int) hl, bound);
	snprintf(name, sizeof(name), "name=%s", o->name);
	snprintf(version, sizeof(version), "version=%s", CLUSTERFS_VERSION);
	if (tls_cert) {
		char *f = NULL;
		if (tls_fingerprint_pem(tls_cert, &f, errbuf, errlen) < 0)
			return -EINVAL;
		snprintf(fp, sizeof(fp), "fp=%s", f);
		free(f);
	}
	const char *txt[] = {name, tls_cert ? "tls=1" : "tls=0", version, fp[0] ? fp : NULL, NULL};
	return dnssd_publish(DNSSD_AGENT_TYPE, o->name, host, colon ? atoi(colon + 1) : 0, txt, ret,
			     errbuf, errlen);
}

/* --fingerprint and --init: commands that run and end. Returns the exit code. */
static int agent_run_command(const struct agent_options *opts)
{
	if (opts->fingerprint)
		return agent_print_fingerprint(opts->fingerprint);
	struct init_request init = {
		.dir = opts->init_dir,
		.name = opts->name,
		.listen = opts->listen,
		.tls_cert = opts->tls_cert,
		.tls_key = opts->tls_key,
	};
	int r = init_run(&init);
	return r == 0 ? 0 : r == -EINVAL || r == -EPERM ? AGENT_EXIT_USAGE : AGENT_EXIT_RUNTIME;
}

/* The node name: --name, else the host name (into host). Returns 0, or -1 with the reason
 * logged. */
static int agent_resolve_name(struct agent_options *opts, char *host, size_t len)
{
	if (!opts->name) {
		if (gethostname(host, len) < 0) {
			log_err("cannot get the hostname: %s; pass --name", strerror(errno));
			return -1;
		}
		host[len - 1] = '\0';
		opts->name = host;
	}
	if (!name_is_valid(opts->name)) {
		log_err("invalid node name '%s': it must be 1 to 255 printable characters, "
			"without '/', and not '.' or '..'",
			opts->name);
		return -1;
	}
	return 0;
}

/* Logs why server_listen failed with r. */
static void agent_listen_failed(const struct agent_options *opts, int r)
{
	if (r == -EINVAL)
		log_err("invalid --listen address '%s': expected ADDR:PORT or [ADDR6]:PORT with "
			"a numeric address",
			opts->listen);
	else
		log_err("cannot listen on %s: %s", opts->listen, strerror(-r));
}

/* The URL of our own API for relayed requests: a wildcard address becomes loopback. */
static void agent_local_url(const char *bound, bool https, char *out, size_t len)
{
	const char *colon = strrchr(bound, ':');
	if (strncmp(bound, "0.0.0.0:", 8) == 0)
		snprintf(out, len, "%s://127.0.0.1%s", https ? "https" : "http", colon);
	else if (strncmp(bound, "[::]:", 5) == 0)
		snprintf(out, len, "%s://[::1]%s", https ? "https" : "http", colon);
	else
		snprintf(out, len, "%s://%s", https ? "https" : "http", bound);
}

/* --leave: asks the control plane to forget this node. Returns the exit code. */
static int agent_leave(struct agent_options *opts, char *host, size_t len)
{
	if (!opts->name && gethostname(host, len) == 0) {
		host[len - 1] = '\0';
		opts->name = host;
	}
	int r = agent_join_leave(&opts->join, opts->name ? opts->name : "");
	return r == 0 ? 0 : r == -EPERM ? AGENT_EXIT_JOIN : AGENT_EXIT_RUNTIME;
}

/* The state directory: --state-dir, else the default (*ret_default, new), made and checked;
 * *ret_state_dir gets its full name (new). Returns 0, or -1 with the reason logged. */
static int agent_state_dir(struct agent_options *opts, char **ret_default, char **ret_state_dir)
{
	char errbuf[512];
	int r;
	if (!opts->state_dir) {
		r = agent_default_state_dir(ret_default);
		if (r < 0) {
			log_err("cannot work out a default state directory (%s); pass --state-dir",
				strerror(-r));
			return -1;
		}
		opts->state_dir = *ret_default;
	}
	r = agent_prepare_state_dir(opts->state_dir, ret_state_dir, errbuf, sizeof(errbuf));
	if (r < 0) {
		log_err("%s", errbuf);
		return -1;
	}
	return 0;
}

/* Before any thread exists, so that all of them inherit the mask and only sigwaitinfo()
 * ever sees these signals. */
static void agent_block_signals(sigset_t *sigs)
{
	sigemptyset(sigs);
	sigaddset(sigs, SIGTERM);
	sigaddset(sigs, SIGINT);
	sigaddset(sigs, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* --join URL: registers with the control plane and keeps the heartbeat going (*ret_join).
 * local_url (len bytes) gets our own API's URL for relayed requests; *ret_fp the
 * certificate's fingerprint (new, or NULL). Returns 0, or -1 with the reason logged. */
static int agent_join_begin(struct agent_options *opts, struct api_context *api, const char *bound,
			    const char *tls_cert, char *local_url, size_t len, char **ret_fp,
			    struct agent_join **ret_join)
{
	char errbuf[512];
	const char *colon = strrchr(bound, ':');
	opts->join.port = colon ? atoi(colon + 1) : 0;
	agent_local_url(bound, tls_cert != NULL, local_url, len);
	opts->join.local_url = local_url;
	if (tls_cert && tls_fingerprint_pem(tls_cert, ret_fp, errbuf, sizeof(errbuf)) == 0)
		opts->join.agent_fingerprint = *ret_fp;
	else
		log_warn("joining without --tls-cert: the control plane will speak plain "
			 "HTTP to this agent, which it allows only on loopback");
	int r = agent_join_start(&opts->join, api, ret_join, errbuf, sizeof(errbuf));
	if (r < 0) {
		log_err("%s", errbuf);
		return -1;
	}
	return 0;
}

/* Serves the API on listen_fd (which it takes) until a stop signal: announces the agent
 * (--announce) and joins (--join) meanwhile. Returns the exit code. */
static int agent_serve(struct agent_options *opts, const char *state_dir, int listen_fd,
		       const char *token, const char *tls_cert, const char *tls_key,
		       const char *bound, sigset_t *sigs, struct sysinfo_sampler *sampler,
		       struct tasks *tasks, struct ledger *ledger)
{
	char errbuf[512];
	struct server *srv = NULL;
	struct api_context api = {
		.name = opts->name,
		.state_dir = state_dir,
		.sampler = sampler,
		.tasks = tasks,
		.ledger = ledger,
	};
	struct server_config cfg = {
		.listen_fd = listen_fd,
		.token = token,
		.routes = api_routes,
		.n_routes = api_n_routes,
		.uploads = api_uploads,
		.n_uploads = api_n_uploads,
		.userdata = &api,
		.tls_cert_pem = tls_cert,
		.tls_key_pem = tls_key,
	};
	int r = server_start(&cfg, &srv);
	if (r < 0) {
		log_err("cannot start the HTTP server on %s", bound);
		return AGENT_EXIT_RUNTIME;
	}
	/* a task that starts or ends answers the long polls waiting for it */
	tasks_set_notify(tasks, server_wake_cb, srv);
	log_info("listening on %s as %s%s", bound, opts->name, tls_cert ? " (HTTPS)" : "");

	char *agent_fp = NULL;
	struct agent_join *join = NULL;
	struct dnssd *dnssd = NULL;
	char local_url[INET6_ADDRSTRLEN + 32];
	if (opts->announce) {
		r = agent_announce(opts, bound, tls_cert, &dnssd, errbuf, sizeof(errbuf));
		if (r < 0) {
			log_err("--announce: %s", errbuf);
			tasks_set_notify(tasks, NULL, NULL);
			server_stop(srv);
			return AGENT_EXIT_USAGE;
		}
	}
	if (opts->join.url && agent_join_begin(opts, &api, bound, tls_cert, local_url,
					       sizeof(local_url), &agent_fp, &join) < 0) {
		dnssd_free(dnssd);
		tasks_set_notify(tasks, NULL, NULL);
		server_stop(srv);
		free(agent_fp);
		return AGENT_EXIT_USAGE;
	}

	agent_wait_for_signal(sigs, tasks);
	api.stopping = true; /* input fetches in progress give up */
	bool join_failed = agent_join_stop(join);
	dnssd_free(dnssd);
	free(agent_fp);
	tasks_set_notify(tasks, NULL, NULL);
	server_stop(srv);
	return join_failed ? AGENT_EXIT_JOIN : 0;
}

/* Opens the task directory, starts the metrics sampler and opens the ledger (--ledger).
 * Returns 0, or -1 with the reason logged and nothing left open. */
static int agent_open(const struct agent_options *opts, const char *state_dir, const char *sup_exe,
		      struct tasks **ret_tasks, struct sysinfo_sampler **ret_sampler,
		      struct ledger **ret_ledger)
{
	char errbuf[512];
	int r = tasks_open(state_dir, sup_exe, opts->name, ret_tasks);
	if (r < 0) {
		log_err("cannot open the task directory in %s: %s", state_dir, strerror(-r));
		return -1;
	}
	tasks_set_output_limits(*ret_tasks, opts->outputs_max_files, opts->outputs_max_bytes);
	staging_reset(state_dir);
	r = knowledge_replica_open(state_dir, errbuf, sizeof(errbuf));
	if (r < 0) {
		log_err("%s", errbuf);
		goto fail;
	}

	r = sysinfo_sampler_start(ret_sampler);
	if (r < 0) {
		log_err("cannot start the metrics sampler: %s", strerror(-r));
		goto fail;
	}

	if (opts->ledger) {
		r = agent_create_ledger_file(opts->ledger);
		if (r < 0) {
			log_err("cannot create the ledger %s: %s", opts->ledger, strerror(-r));
			goto fail;
		}
		r = ledger_open(opts->ledger, ret_ledger, errbuf, sizeof(errbuf));
		if (r < 0) {
			log_err("cannot open the ledger %s: %s", opts->ledger, errbuf);
			goto fail;
		}
	}
	return 0;
fail:
	ledger_close(*ret_ledger);
	*ret_ledger = NULL;
	sysinfo_sampler_stop(*ret_sampler);
	*ret_sampler = NULL;
	tasks_close(*ret_tasks);
	*ret_tasks = NULL;
	return -1;
}

/* The task supervisor's path (new), resolved once: an agent that cannot start tasks should
 * say so now, not at its first task. Returns 0, or -1 with the reason logged. */
static int agent_supervisor(char **ret_exe)
{
	char sup_path[PATH_MAX];
	int r = agent_find_supervisor(sup_path, ret_exe);
	if (r < 0) {
		log_err("cannot use the task supervisor %s: %s; it is installed next to "
			"clusterfs-agent",
			sup_path, strerror(-r));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct agent_options opts;
	char errbuf[512];
	char host[HOST_NAME_MAX + 1];
	char bound[INET6_ADDRSTRLEN + 16];
	char *token = NULL, *state_dir = NULL, *default_dir = NULL, *sup_exe = NULL;
	char *tls_cert = NULL, *tls_key = NULL;
	struct sysinfo_sampler *sampler = NULL;
	struct tasks *tasks = NULL;
	struct ledger *ledger = NULL;
	sigset_t sigs;
	int listen_fd = -1;
	int ret = AGENT_EXIT_RUNTIME;
	int r;

	log_set_prefix("clusterfs-agent");
	json_set_alloc_funcs(xmalloc, free); /* jansson too (DESIGN §2, "Out of memory") */
	r = agent_parse_options(argc, argv, &opts);
	if (r != 0)
		return r > 0 ? 0 : AGENT_EXIT_USAGE;
	if (opts.verbose)
		log_set_level(LOG_DEBUG);
	if (opts.fingerprint || opts.init_dir)
		return agent_run_command(&opts);

	/* token_read_file checks the file it reads: private, and ours or root's */
	r = token_read_file(opts.token_file, &token, errbuf, sizeof(errbuf));
	if (r < 0) {
		log_err("%s", errbuf);
		return AGENT_EXIT_USAGE;
	}
	opts.join.agent_token = token;
	if (opts.leave) {
		ret = agent_leave(&opts, host, sizeof(host));
		explicit_bzero(token, strlen(token));
		free(token);
		return ret;
	}
	if (opts.tls_cert) {
		r = tls_read_pair(opts.tls_cert, opts.tls_key, &tls_cert, &tls_key, errbuf,
				  sizeof(errbuf));
		if (r < 0) {
			log_err("%s", errbuf);
			ret = AGENT_EXIT_USAGE;
			goto out_free_token;
		}
	}

	if (agent_supervisor(&sup_exe) < 0)
		goto out_free_token;

	if (agent_resolve_name(&opts, host, sizeof(host)) < 0) {
		ret = AGENT_EXIT_USAGE;
		goto out_free_token;
	}
	r = server_listen(opts.listen, &listen_fd, bound, sizeof(bound));
	if (r < 0) {
		agent_listen_failed(&opts, r);
		ret = r == -EINVAL ? AGENT_EXIT_USAGE : AGENT_EXIT_RUNTIME;
		goto out_free_token;
	}

	if (agent_state_dir(&opts, &default_dir, &state_dir) < 0)
		goto out_close_listen;
	agent_block_signals(&sigs);

	if (agent_open(&opts, state_dir, sup_exe, &tasks, &sampler, &ledger) < 0)
		goto out_free_state_dir;

	ret = agent_serve(&opts, state_dir, listen_fd, token, tls_cert, tls_key, bound, &sigs,
			  sampler, tasks, ledger);
	listen_fd = -1; /* the server owns it now, even on failure */

	ledger_close(ledger);
	sysinfo_sampler_stop(sampler);
	tasks_close(tasks);
out_free_state_dir:
	free(state_dir);
out_close_listen:
	if (listen_fd >= 0)
		close(listen_fd);
out_free_token:
	free(tls_cert);
	if (tls_key) {
		explicit_bzero(tls_key, strlen(tls_key));
		free(tls_key);
	}
	free(sup_exe);
	free(default_dir);
	explicit_bzero(token, strlen(token));
	free(token);
	return ret;
}
