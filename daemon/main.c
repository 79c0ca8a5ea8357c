/* clusterfs: mounts the cluster as a directory tree. Options, daemonizing, signals,
 * wiring, shutdown. */
#include "backend/cluster.h"
#include "backend/ledger.h"
#include "backend/loop.h"
#include "backend/models.h"
#include "backend/prompt.h"
#include "backend/slurm.h"
#include "backend/services.h"
#include "backend/store.h"
#include "backend/tasks.h"
#include "backend/artifacts.h"
#include "backend/knowledge.h"
#include "backend/util.h"
#include "config/config.h"
#include "config/watch.h"
#include "daemon/join.h"
#include "fs/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Exit codes, documented in the README and --help. */
enum {
	EXIT_OK = 0,
	EXIT_FAILURE_OTHER = 1,
	EXIT_USAGE = 2,
	EXIT_MOUNTPOINT = 3,
	EXIT_NO_FUSE = 4,
	EXIT_CONFIG = 5,
	EXIT_STATE_DIR = 6,
	EXIT_RESTORE = 7,
};

#define RELOAD_DELAY_US 100000 /* edits come in bursts: reload once they settle */

struct daemon {
	const char *config_path;
	char *state_dir;
	struct loop *loop;
	struct cluster *cluster;
	struct store *store;
	struct tasks *tasks;
	struct services *services;
	struct ledger *ledger;
	struct models *models;
	struct slurm *slurm;
	struct prompts *prompts;
	struct artifacts *artifacts;
	struct knowledge *knowledge;
	struct config_watch *watch;
	struct loop_timer *reload_timer;
	struct join *join; /* the join listener, or NULL (config "join" absent) */
};

/* The warnings of a load (drop-ins shadowed by hosts.json) as one alert, or none. */
static void apply_warnings(struct daemon *d, const struct config *cfg)
{
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < cfg->n_warnings; i++) {
		buf_printf(&b, "%s%s", i ? "; " : "", cfg->warnings[i]);
		log_warn("config: %s", cfg->warnings[i]);
	}
	cluster_set_alert(d->cluster, "config hosts.d", b.len ? b.data : NULL);
	buf_free(&b);
}

/* A startup error on stderr; under systemd with the journal's error priority, "<3>". */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
	int saved = errno; /* callers return -errno after reporting */
	va_list ap;
	va_start(ap, fmt);
	if (log_stderr_is_journal())
		fputs("<3>", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	errno = saved;
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: clusterfs [OPTIONS] [SOURCE] MOUNTPOINT\n"
		"Mounts a cluster of hosts running clusterfs-agent as a directory tree.\n"
		"SOURCE is ignored (mount(8) and fstab pass one: \"none\").\n"
		"\n"
		"  -c, --config FILE     hosts.json to serve (reloaded live when it changes);\n"
		"                        without it: a one-node cluster of this machine, agent at\n"
		"                        $CLUSTERFS_DEFAULT_AGENT or 127.0.0.1:8768, token from\n"
		"                        $CLUSTERFS_TOKEN_FILE or ~/.config/clusterfs/token\n"
		"  -s, --state-dir DIR   where the daemon keeps its state (default /var/lib/clusterfs\n"
		"                        for root, else ~/.local/state/clusterfs)\n"
		"  -f, --foreground      stay in the foreground and log to stderr\n"
		"  -o OPTIONS            comma-separated: config=FILE and state_dir=DIR (as -c, -s),\n"
		"                        the rest are FUSE mount options (allow_other, ro, ...)\n"
		"  -v, --verbose         log debug messages\n"
		"      --restore FILE    make the state directory (-s) hold the store in FILE (a\n"
		"                        copy of /cluster/backup/state.db) and exit; refuses a\n"
		"                        non-empty state directory unless --force is given\n"
		"      --force           with --restore: replace what the state directory holds\n"
		"                        (stop the daemon that uses it first)\n"
		"  -h, --help            show this help\n"
		"  -V, --version         show the version\n"
		"\n"
		"Exit status: 0 clean unmount, 1 other error, 2 usage, 3 mountpoint missing or busy,\n"
		"4 no /dev/fuse, 5 invalid config, 6 state directory not writable (or, with\n"
		"--restore, not empty), 7 --restore FILE is not a store this clusterfs can use.\n"
		"Unmount with: fusermount3 -u MOUNTPOINT (or kill -TERM the daemon).\n"
		"fstab: none /cluster fuse.clusterfs config=/etc/clusterfs/hosts.json,_netdev 0 0\n");
}

/* Splits one -o argument: config= and state_dir= are ours (mount(8) and fstab can only
 * pass -o), the rest is appended to fuse_opts for libfuse. */
static void parse_mount_opts(const char *arg, char **config, char **state_dir,
			     struct buf *fuse_opts)
{
	char *copy = xstrdup(arg);
	char *save = NULL;
	for (char *o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		if (strncmp(o, "config=", 7) == 0) {
			free(*config);
			*config = xstrdup(o + 7);
		} else if (strncmp(o, "state_dir=", 10) == 0) {
			free(*state_dir);
			*state_dir = xstrdup(o + 10);
		} else if (o[0]) {
			buf_printf(fuse_opts, ",%s", o);
		}
	}
	free(copy);
}

/* The built-in one-node config's agent: $CLUSTERFS_DEFAULT_AGENT (HOST:PORT, [V6]:PORT)
 * instead of 127.0.0.1:8768, so that a test or a second agent can use a port of its own. */
static int apply_default_agent(struct config *cfg, char *errbuf, size_t errlen)
{
	const char *env = getenv("CLUSTERFS_DEFAULT_AGENT");
	if (!env || !env[0] || cfg->n_hosts != 1)
		return 0;
	const char *colon = strrchr(env, ':');
	char *end = NULL;
	long port = colon ? strtol(colon + 1, &end, 10) : 0;
	size_t hlen = colon ? (size_t) (colon - env) : 0;
	if (hlen >= 2 && env[0] == '[' && env[hlen - 1] == ']')
		env++, hlen -= 2;
	if (!colon || hlen == 0 || !end || *end || port < 1 || port > 65535) {
		snprintf(errbuf, errlen,
			 "CLUSTERFS_DEFAULT_AGENT=%s: expected HOST:PORT, e.g. 127.0.0.1:8768",
			 getenv("CLUSTERFS_DEFAULT_AGENT"));
		return -EINVAL;
	}
	free(cfg->hosts[0].address);
	cfg->hosts[0].address = xstrndup(env, hlen);
	cfg->hosts[0].agent_port = (int) port;
	return 0;
}

static char *default_state_dir(void)
{
	struct buf b;
	buf_init(&b);
	const char *xdg = getenv("XDG_STATE_HOME");
	const char *home = getenv("HOME");
	if (geteuid() == 0)
		buf_puts(&b, "/var/lib/clusterfs");
	else if (xdg && xdg[0] == '/')
		buf_printf(&b, "%s/clusterfs", xdg);
	else
		buf_printf(&b, "%s/.local/state/clusterfs", home ? home : "/tmp");
	return buf_steal(&b, NULL);
}

/* mkdir -p with mode 0700 for what it creates. */
static int mkdir_parents(const char *path)
{
	char *p = xstrdup(path);
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			int r = -errno;
			free(p);
			return r;
		}
		*s = '/';
	}
	int r = mkdir(p, 0700) < 0 && errno != EEXIST ? -errno : 0;
	free(p);
	return r;
}

static int check_state_dir(const char *dir)
{
	int r = mkdir_parents(dir);
	if (r < 0) {
		report("clusterfs: cannot create state directory %s: %s\n", dir, strerror(-r));
		return r;
	}
	/* the store holds specs (with their env) and output: the daemon's user's alone */
	struct stat st;
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		report("clusterfs: state directory %s is not a directory\n", dir);
		return -ENOTDIR;
	}
	if (st.st_uid != geteuid()) {
		report("clusterfs: state directory %s belongs to uid %u, not to this user (uid "
		       "%u); another user could read or change the store: chown it or pick "
		       "another with -s\n",
		       dir, (unsigned) st.st_uid, (unsigned) geteuid());
		return -EPERM;
	}
	if (st.st_mode & 077) {
		if (chmod(dir, 0700) < 0) {
			r = -errno;
			report("clusterfs: state directory %s has mode %04o: %s\n", dir,
			       (unsigned) (st.st_mode & 07777), strerror(errno));
			return r;
		}
		report("clusterfs: state directory %s had mode %04o (open to others); made it "
		       "0700\n",
		       dir, (unsigned) (st.st_mode & 07777));
	}
	char probe[4096];
	snprintf(probe, sizeof(probe), "%s/.write-test.%d", dir, (int) getpid());
	int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		report("clusterfs: state directory %s is not writable: %s\n", dir, strerror(errno));
		return r;
	}
	close(fd);
	unlink(probe);
	return 0;
}

static int check_mountpoint(const char *mp)
{
	struct stat st, parent;
	if (stat(mp, &st) < 0) {
		if (errno == ENOTCONN)
			report("clusterfs: %s is a dead FUSE mount (its daemon is gone); "
			       "run: fusermount3 -u %s\n",
			       mp, mp);
		else
			report("clusterfs: mountpoint %s: %s\n", mp, strerror(errno));
		return -errno;
	}
	if (!S_ISDIR(st.st_mode)) {
		report("clusterfs: mountpoint %s is not a directory\n", mp);
		return -ENOTDIR;
	}
	struct buf up;
	buf_init(&up);
	buf_printf(&up, "%s/..", mp);
	int r = stat(up.data, &parent);
	buf_free(&up);
	if (r == 0 && parent.st_dev != st.st_dev) {
		report("clusterfs: %s is busy: something is already mounted there "
		       "(unmount it first: fusermount3 -u %s)\n",
		       mp, mp);
		return -EBUSY;
	}
	return 0;
}

/* ---- stopping: SIGTERM, SIGINT and SIGHUP are taken by a thread of their own with
 * sigwait(), which ends the cache notifications first, while FUSE requests are still
 * answered (fs_set_session), and only then ends the request loop. libfuse's own handlers
 * would end the loop first, and a notification waiting for a directory lock that a
 * request holds would then wait forever. ---- */

#define STOP_WAKE_US 20000 /* how often the main thread is nudged until its loop returns */

struct stopper {
	sigset_t signals;        /* the stop signals, blocked in every thread */
	pthread_t thread;        /* waits for them */
	pthread_t main;          /* runs fuse_session_loop_mt */
	struct fuse_session *se; /* borrowed */
	struct fs *fs;           /* borrowed */
	struct loop *loop;       /* borrowed */
	atomic_bool loop_done;   /* the request loop returned */
};

static void on_wake(int sig)
{
	/* only interrupts the main thread's sem_wait in fuse_session_loop_mt */
}

static void *stopper_main(void *arg)
{
	struct stopper *st = arg;
	int sig;
	while (sigwait(&st->signals, &sig) != 0)
		;
	if (atomic_load(&st->loop_done))
		return NULL; /* the loop ended by an unmount; main woke us */
	log_info("stopping on signal %d", sig);
	fs_set_session(st->fs, NULL);
	loop_begin_stop(st->loop);
	fuse_session_exit(st->se);
	while (!atomic_load(&st->loop_done)) {
		pthread_kill(st->main, SIGUSR1);
		usleep(STOP_WAKE_US);
	}
	return NULL;
}

/* Blocks the stop signals in the calling thread and in every thread it starts later. */
static int stopper_block_signals(struct stopper *st)
{
	sigemptyset(&st->signals);
	sigaddset(&st->signals, SIGTERM);
	sigaddset(&st->signals, SIGINT);
	sigaddset(&st->signals, SIGHUP);
	struct sigaction sa = {.sa_handler = SIG_IGN};
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = on_wake; /* without SA_RESTART: sem_wait returns EINTR */
	sigaction(SIGUSR1, &sa, NULL);
	return -pthread_sigmask(SIG_BLOCK, &st->signals, NULL);
}

static int stopper_start(struct stopper *st, struct fuse_session *se, struct fs *fs,
			 struct loop *loop)
{
	st->se = se;
	st->fs = fs;
	st->loop = loop;
	st->main = pthread_self();
	atomic_store(&st->loop_done, false);
	return -pthread_create(&st->thread, NULL, stopper_main, st);
}

/* After the request loop returned, for whatever reason. */
static void stopper_join(struct stopper *st)
{
	atomic_store(&st->loop_done, true);
	pthread_kill(st->thread, SIGTERM);
	pthread_join(st->thread, NULL);
}

/* clusterfs --restore FILE -s DIR [--force]: DIR/clusterfs.db becomes a copy of FILE. */
static int restore_main(const char *file, const char *dir, bool force)
{
	if (check_state_dir(dir) < 0)
		return EXIT_STATE_DIR;
	DIR *dh = opendir(dir);
	if (!dh) {
		report("clusterfs: cannot list state directory %s: %s\n", dir, strerror(errno));
		return EXIT_STATE_DIR;
	}
	struct dirent *de;
	char held[256] = "";
	while ((de = readdir(dh))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			snprintf(held, sizeof(held), "%s", de->d_name);
			break;
		}
	}
	closedir(dh);
	if (held[0] && !force) {
		report("clusterfs: state directory %s is not empty (it holds %s): restoring would "
		       "replace its store; stop the daemon that uses it and add --force, or "
		       "restore into an empty directory\n",
		       dir, held);
		return EXIT_STATE_DIR;
	}
	char err[1024];
	int version = 0;
	int r = store_restore(file, dir, &version, err, sizeof(err));
	if (r < 0) {
		report("clusterfs: restore: %s\n", err);
		return r == -EINVAL || r == -EPROTO || r == -ENOENT ? EXIT_RESTORE : EXIT_STATE_DIR;
	}
	printf("clusterfs: restored %s (schema version %d) into %s/clusterfs.db (schema "
	       "version %d)\n",
	       file, version, dir, STORE_SCHEMA_VERSION);
	return EXIT_OK;
}

static void reload_now(void *arg)
{
	struct daemon *d = arg;
	assert(loop_is_current(d->loop));
	d->reload_timer = NULL;
	struct config *cfg = NULL;
	char err[1024];
	int r = config_load_file(d->config_path, &cfg, err, sizeof(err));
	if (r < 0) {
		if (r == -ENOENT)
			snprintf(err, sizeof(err), "%s: the config file is gone", d->config_path);
		log_err("config reload rejected, keeping the last good config: %s", err);
		cluster_set_config_error(d->cluster, err);
		return;
	}
	log_info("config reloaded from %s: %zu node%s", d->config_path, cfg->n_hosts,
		 cfg->n_hosts == 1 ? "" : "s");
	cluster_set_config(d->cluster, cfg);
	apply_warnings(d, cfg);
	if (cfg->join.enabled != (d->join != NULL))
		log_warn("config: \"join\" was %s; that takes effect at the next mount",
			 d->join ? "removed" : "added");
	config_unref(cfg);
}

static void on_config_event(void *arg)
{
	struct daemon *d = arg;
	assert(loop_is_current(d->loop));
	if (!config_watch_read(d->watch))
		return;
	if (d->reload_timer)
		loop_timer_cancel(d->loop, d->reload_timer);
	d->reload_timer = loop_timer_add(d->loop, clock_now_us() + RELOAD_DELAY_US, reload_now, d);
}

/* The command line, as main reads it. */
struct options {
	char *config_opt;
	bool foreground;
	char *restore_file;
	bool force;
	struct buf mount_opts;
};

static void options_free(struct options *o)
{
	free(o->config_opt);
	free(o->restore_file);
	buf_free(&o->mount_opts);
}

/* Reads the options into o (and the state directory into d). Returns -1 to go on and mount
 * argv[argc - 1], else the exit code (--help, --version, --restore, a usage error). */
static int parse_options(int argc, char **argv, struct daemon *d, struct options *o)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"state-dir", required_argument, NULL, 's'},
		{"foreground", no_argument, NULL, 'f'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{"restore", required_argument, NULL, 'R'},
		{"force", no_argument, NULL, 'F'},
		{NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "c:s:fo:vhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			free(o->config_opt);
			o->config_opt = xstrdup(optarg);
			break;
		case 's':
			free(d->state_dir);
			d->state_dir = xstrdup(optarg);
			break;
		case 'f': o->foreground = true; break;
		case 'o':
			parse_mount_opts(optarg, &o->config_opt, &d->state_dir, &o->mount_opts);
			break;
		case 'v': log_set_level(LOG_DEBUG); break;
		case 'h': usage(stdout); return EXIT_OK;
		case 'V': printf("clusterfs %s\n", CLUSTERFS_VERSION); return EXIT_OK;
		case 'R':
			free(o->restore_file);
			o->restore_file = xstrdup(optarg);
			break;
		case 'F': o->force = true; break;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (o->restore_file || o->force) {
		if (!o->restore_file) {
			report("clusterfs: --force goes with --restore FILE\n");
			return EXIT_USAGE;
		}
		if (optind != argc) {
			report("clusterfs: --restore takes no MOUNTPOINT\n");
			return EXIT_USAGE;
		}
		if (!d->state_dir)
			d->state_dir = default_state_dir();
		return restore_main(o->restore_file, d->state_dir, o->force);
	}
	/* mount.fuse3 runs "clusterfs SOURCE MOUNTPOINT -o OPTS": the source comes first */
	if (optind == argc || argc - optind > 2) {
		report("clusterfs: %s\n",
		       optind == argc ? "missing MOUNTPOINT" : "too many arguments");
		usage(stderr);
		return EXIT_USAGE;
	}
	return -1;
}

/* The mount point and /dev/fuse are usable, the config loads, the state directory and its
 * store open. Returns EXIT_OK or the exit code, with the reason reported. */
static int daemon_prepare(struct daemon *d, const char *mountpoint, struct config **ret_cfg)
{
	if (check_mountpoint(mountpoint) < 0)
		return EXIT_MOUNTPOINT;
	if (access("/dev/fuse", R_OK | W_OK) < 0) {
		report("clusterfs: cannot use /dev/fuse (%s): load the fuse module "
		       "(modprobe fuse) and install fuse3\n",
		       strerror(errno));
		return EXIT_NO_FUSE;
	}
	char err[1024];
	int r = d->config_path ? config_load_file(d->config_path, ret_cfg, err, sizeof(err))
			       : config_default(ret_cfg, err, sizeof(err));
	if (r == 0 && !d->config_path)
		r = apply_default_agent(*ret_cfg, err, sizeof(err));
	if (r < 0) {
		report("clusterfs: invalid config: %s\n", err);
		return EXIT_CONFIG;
	}
	if (!d->state_dir)
		d->state_dir = default_state_dir();
	if (check_state_dir(d->state_dir) < 0)
		return EXIT_STATE_DIR;
	r = store_open(d->state_dir, &d->store, err, sizeof(err));
	if (r < 0) {
		report("clusterfs: %s\n", err);
		return EXIT_STATE_DIR;
	}
	return EXIT_OK;
}

/* Makes the backends, the filesystem and the join listener, and wires them together. No
 * thread starts here. Returns EXIT_OK or the exit code, with the reason reported. */
static int daemon_build(struct daemon *d, struct config *cfg, struct fs **ret_fs)
{
	if (loop_new(&d->loop) < 0 || cluster_new(d->loop, cfg, &d->cluster) < 0 ||
	    tasks_new(d->loop, d->cluster, d->store, &d->tasks) < 0 ||
	    services_new(d->loop, d->cluster, &d->services) < 0 ||
	    ledger_new(d->loop, d->cluster, d->store, &d->ledger) < 0 ||
	    models_new(d->loop, d->cluster, &d->models) < 0 ||
	    slurm_new(d->loop, d->cluster, &d->slurm) < 0 ||
	    prompts_new(d->loop, d->cluster, d->models, d->tasks, &d->prompts) < 0 ||
	    artifacts_new(d->loop, d->cluster, d->state_dir, &d->artifacts) < 0 ||
	    knowledge_new(d->store, &d->knowledge) < 0) {
		report("clusterfs: cannot set up the backend\n");
		return EXIT_FAILURE_OTHER;
	}
	int r = cluster_attach_store(d->cluster, d->store);
	if (r < 0)
		log_warn("cannot load the events and drains kept in the store: %s", strerror(-r));
	struct tree_ctx backends = {
		.cluster = d->cluster,
		.tasks = d->tasks,
		.services = d->services,
		.ledger = d->ledger,
		.models = d->models,
		.store = d->store,
		.artifacts = d->artifacts,
		.knowledge = d->knowledge,
	};
	tasks_set_artifacts(d->tasks, d->artifacts);
	if (fs_new(&backends, ret_fs) < 0) {
		report("clusterfs: cannot set up the filesystem\n");
		return EXIT_FAILURE_OTHER;
	}
	if (cfg->join.enabled) {
		char err[1024];
		r = join_new(cfg, d->cluster, &d->join, err, sizeof(err));
		if (r < 0) {
			report("clusterfs: invalid config: join: %s\n", err);
			return EXIT_CONFIG;
		}
	}
	cluster_add_listener(d->cluster, fs_on_cluster_change, *ret_fs);
	cluster_add_listener(d->cluster, tasks_on_cluster_change, d->tasks);
	knowledge_replicate(d->knowledge, d->loop, d->cluster);
	cluster_add_listener(d->cluster, knowledge_on_cluster_change, d->knowledge);
	/* tasks placed on the Slurm cluster's node go to slurmrestd, not to an agent */
	tasks_set_target(d->tasks, &(struct tasks_target){.owns = slurm_owns_node,
							  .call = slurm_task_call,
							  .arg = d->slurm});
	return EXIT_OK;
}

/* Mount options: modes mean something (default_permissions); as root, other users and
 * NFS/SMB exports see the tree too. */
static void mount_args(struct fuse_args *args, const char *argv0, const struct buf *mount_opts)
{
	struct buf o;
	buf_init(&o);
	buf_puts(&o, "fsname=clusterfs,subtype=clusterfs,default_permissions");
	if (geteuid() == 0)
		buf_puts(&o, ",allow_other");
	if (mount_opts->len)
		buf_append(&o, mount_opts->data, mount_opts->len);
	fuse_opt_add_arg(args, argv0);
	fuse_opt_add_arg(args, "-o");
	fuse_opt_add_arg(args, o.data);
	buf_free(&o);
}

/* After the fork: the config watch, the backend thread and what runs on it. Returns 0, or
 * -1 when the backend thread cannot start. */
static int daemon_start(struct daemon *d, struct fs *fs, struct fuse_session *se,
			const struct config *cfg, const char *mount_shown)
{
	int r;
	char err[1024];
	if (d->config_path) {
		r = config_watch_new(d->config_path, &d->watch);
		if (r < 0)
			log_warn("cannot watch %s for changes (%s): edits need a remount",
				 d->config_path, strerror(-r));
		else
			loop_fd_add(d->loop, config_watch_fd(d->watch), on_config_event, d);
	}
	if (loop_start(d->loop) < 0) {
		log_err("cannot start the backend thread");
		return -1;
	}
	fs_set_session(fs, se);
	cluster_start(d->cluster);
	apply_warnings(d, cfg);
	if (d->join) {
		r = join_start(d->join, err, sizeof(err));
		if (r < 0)
			log_err("%s", err);
		else
			log_info("join listener on %s (HTTPS)", join_bound(d->join));
	}
	slurm_start(d->slurm);
	r = tasks_start(d->tasks);
	if (r < 0)
		log_err("cannot load the tasks from the store: %s", strerror(-r));
	r = ledger_start(d->ledger);
	if (r < 0)
		log_err("cannot start the ledger: %s", strerror(-r));
	log_info("mounted %s on %s: %zu node%s, config %s, state %s", cfg->cluster, mount_shown,
		 cfg->n_hosts, cfg->n_hosts == 1 ? "" : "s",
		 d->config_path ? d->config_path : "(built-in one-node default)", d->state_dir);
	return 0;
}

/* Frees what daemon_build and daemon_start made, in the order that leaves no thread using
 * a freed object. */
static void daemon_free(struct daemon *d, struct fs *fs)
{
	if (d->loop)
		loop_stop(d->loop);
	if (d->reload_timer && d->loop)
		loop_timer_cancel(d->loop, d->reload_timer);
	join_stop(d->join);
	fs_free(fs);
	tasks_free(d->tasks);
	services_free(d->services);
	ledger_free(d->ledger);
	prompts_free(d->prompts);
	models_free(d->models);
	slurm_free(d->slurm);
	artifacts_free(d->artifacts);
	knowledge_free(d->knowledge);
	cluster_free(d->cluster);
	loop_free(d->loop);
	store_close(d->store);
	config_watch_free(d->watch);
	free(d->state_dir);
}

int main(int argc, char **argv)
{
	json_set_alloc_funcs(xmalloc, free); /* jansson too (DESIGN §2, "Out of memory") */
	struct daemon d = {0};
	struct options opt = {0};
	buf_init(&opt.mount_opts);
	int ret = parse_options(argc, argv, &d, &opt);
	if (ret >= 0) {
		options_free(&opt);
		free(d.state_dir);
		return ret;
	}
	const char *mountpoint = argv[argc - 1];
	char *mp_abs = realpath(mountpoint, NULL);
	/* the daemon changes to / when it detaches: the config is watched by its full name */
	char *config_abs = opt.config_opt ? realpath(opt.config_opt, NULL) : NULL;
	d.config_path = config_abs ? config_abs : opt.config_opt;

	struct config *cfg = NULL;
	struct fs *fs = NULL;
	struct fuse_session *se = NULL;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);

	ret = daemon_prepare(&d, mountpoint, &cfg);
	if (ret != EXIT_OK)
		goto out;
	ret = daemon_build(&d, cfg, &fs);
	if (ret != EXIT_OK)
		goto out;
	ret = EXIT_FAILURE_OTHER;
	mount_args(&args, argv[0], &opt.mount_opts);
	se = fuse_session_new(&args, fs_ops(), sizeof(*fs_ops()), fs);
	if (!se) {
		report("clusterfs: invalid mount options\n");
		ret = EXIT_USAGE;
		goto out;
	}
	struct stopper stopper;
	if (stopper_block_signals(&stopper) < 0)
		goto out;
	if (fuse_session_mount(se, mountpoint) != 0) {
		report("clusterfs: cannot mount on %s (see the message above)\n", mountpoint);
		ret = EXIT_MOUNTPOINT;
		goto out;
	}
	/* Threads start after the fork, and the store's connections are made after it: a
	 * sqlite connection must not cross a fork (the child would not hold its locks). */
	store_close_connections(d.store);
	if (fuse_daemonize(opt.foreground) != 0)
		goto out_unmount;
	if (!opt.foreground)
		log_use_syslog("clusterfs");
	if (daemon_start(&d, fs, se, cfg, mp_abs ? mp_abs : mountpoint) < 0)
		goto out_unmount;

	if (stopper_start(&stopper, se, fs, d.loop) < 0) {
		log_err("cannot start the signal thread");
		goto out_unmount;
	}
	struct fuse_loop_config lc = {.clone_fd = 0, .max_idle_threads = 16};
	int r = fuse_session_loop_mt(se, &lc);
	stopper_join(&stopper);
	/* a stop signal ends the loop with 0; an unmount too */
	ret = (r == 0 || r == SIGTERM || r == SIGINT || r == SIGHUP) ? EXIT_OK : EXIT_FAILURE_OTHER;
	log_info("unmounting %s", mp_abs ? mp_abs : mountpoint);
	join_stop(d.join);
	d.join = NULL;
	fs_set_session(fs, NULL);
	loop_stop(d.loop);
	/* answers reads still waiting on tasks while the session can still carry them */
	tasks_free(d.tasks);
	d.tasks = NULL;

out_unmount:
	fuse_session_unmount(se);
out:
	if (se)
		fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	daemon_free(&d, fs);
	config_unref(cfg);
	options_free(&opt);
	free(mp_abs);
	free(config_abs);
	return ret;
}
