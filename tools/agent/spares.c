/* Task directories made ahead of time (see spares.h). */
#include "tools/agent/spares.h"

#include "backend/util.h"
#include "tools/agent/supervisor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SPARES_RETRY_S 5 /* after failing to make a spare, wait this long before trying again */
/* How long after a task start the maker stays quiet: the start is not over for the
 * disk and the CPUs when the agent has its answer (there is the 201 to send, and the
 * task's own start), and a POST often comes with others. */
#define SPARES_QUIET_US 3000

struct spares {
	const char *tasks_dir; /* borrowed */
	int tasks_dirfd;       /* borrowed */
	int dirfd;             /* SPARES_SUBDIR, owned */
	pthread_mutex_t lock;  /* protects everything below */
	pthread_cond_t cond;   /* signalled when the maker may have work, or must stop */
	pthread_t thread;
	bool started;
	bool stop;
	bool failing;               /* the last attempt to make one failed */
	bool unsupported;           /* the file system cannot rename them into place */
	unsigned paused;            /* task starts under way */
	uint64_t resumed_at;        /* clock_now_us() when the last one ended */
	unsigned next;              /* the name (a number) of the next spare */
	unsigned ready[SPARES_MAX]; /* the names of the spares made */
	size_t n_ready;
};

/* The files of a spare, all empty: every file that is written before the task runs or
 * before the agent answers 201, for the readers of each take an empty one as missing. */
static const char *const spare_files[] = {TASK_FILE_SPEC,   TASK_FILE_SUPERVISOR, TASK_FILE_STDOUT,
					  TASK_FILE_STDERR, TASK_FILE_PID,        TASK_FILE_PGID};

/* Removes the directory `name` in `parentfd` and what it holds, one level of
 * subdirectories included. 0 or -errno. */
static int remove_dir(int parentfd, const char *name)
{
	int dfd = openat(parentfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;

	if (!d) {
		int r = -errno;
		if (dfd >= 0)
			close(dfd);
		return unlinkat(parentfd, name, 0) == 0 ? 0 : r; /* not a directory */
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
		    unlinkat(dfd, de->d_name, 0) < 0 && errno == EISDIR)
			unlinkat(dfd, de->d_name, AT_REMOVEDIR);
	closedir(d);
	return unlinkat(parentfd, name, AT_REMOVEDIR) == 0 ? 0 : -errno;
}

/* Waits until no task has been starting for SPARES_QUIET_US; the lock held. false when
 * the maker must stop. */
static bool spares_wait_quiet_locked(struct spares *sp)
{
	assert_held(&sp->lock);
	for (;;) {
		if (sp->stop)
			return false;
		if (sp->paused) {
			pthread_cond_wait(&sp->cond, &sp->lock);
			continue;
		}
		uint64_t now = clock_now_us(), quiet_at = sp->resumed_at + SPARES_QUIET_US;
		if (now >= quiet_at)
			return true;
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += (long) (quiet_at - now) * 1000;
		until.tv_sec += until.tv_nsec / 1000000000;
		until.tv_nsec %= 1000000000;
		pthread_cond_timedwait(&sp->cond, &sp->lock, &until);
	}
}

static bool spares_wait_quiet(struct spares *sp)
{
	pthread_mutex_lock(&sp->lock);
	bool go = spares_wait_quiet_locked(sp);
	pthread_mutex_unlock(&sp->lock);
	return go;
}

/* Makes the spare named `n`, one file at a time, each when no task is starting, so that a
 * start meets at most one of them on the disk. 0 or -errno (-ECANCELED: the maker must
 * stop), leaving nothing behind. */
static int spare_make(struct spares *sp, unsigned n)
{
	const size_t n_files = sizeof(spare_files) / sizeof(spare_files[0]);
	char name[16];
	int dfd, r = 0;

	snprintf(name, sizeof(name), "%u", n);
	if (!spares_wait_quiet(sp))
		return -ECANCELED;
	if (mkdirat(sp->dirfd, name, 0700) < 0)
		return -errno;
	dfd = openat(sp->dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0) {
		r = -errno;
		goto out_remove;
	}
	for (size_t i = 0; r == 0 && i <= n_files; i++) {
		if (!spares_wait_quiet(sp)) {
			r = -ECANCELED;
		} else if (i == n_files) {
			if (mkdirat(dfd, TASK_DIR_WORK, 0700) < 0)
				r = -errno;
		} else {
			int fd = openat(dfd, spare_files[i],
					O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
			if (fd < 0)
				r = -errno;
			else
				close(fd);
		}
	}
	close(dfd);
out_remove:
	if (r < 0)
		remove_dir(sp->dirfd, name);
	return r;
}

static void *spares_main(void *arg)
{
	struct spares *sp = arg;

	pthread_mutex_lock(&sp->lock);
	for (;;) {
		while (!sp->stop && (sp->paused || sp->unsupported || sp->n_ready == SPARES_MAX))
			pthread_cond_wait(&sp->cond, &sp->lock);
		if (sp->stop)
			break;
		unsigned n = sp->next++;
		pthread_mutex_unlock(&sp->lock);
		int r = spare_make(sp, n);
		pthread_mutex_lock(&sp->lock);
		if (r == 0) {
			sp->ready[sp->n_ready++] = n;
			sp->failing = false;
			continue;
		}
		if (r == -ECANCELED)
			break;
		if (!sp->failing)
			log_warn("cannot make a spare task directory in %s/%s: %s; tasks start "
				 "more slowly",
				 sp->tasks_dir, SPARES_SUBDIR, strerror(-r));
		sp->failing = true;
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += SPARES_RETRY_S;
		while (!sp->stop && pthread_cond_timedwait(&sp->cond, &sp->lock, &until) == 0)
			;
	}
	pthread_mutex_unlock(&sp->lock);
	return NULL;
}

int spares_open(const char *tasks_dir, int tasks_dirfd, struct spares **ret_spares)
{
	struct spares *sp = xcalloc(1, sizeof(*sp));
	struct dirent *de;
	int r;

	sp->tasks_dir = tasks_dir;
	sp->tasks_dirfd = tasks_dirfd;
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_mutex_init(&sp->lock, NULL);
	pthread_cond_init(&sp->cond, &attr);
	pthread_condattr_destroy(&attr);
	if (mkdirat(tasks_dirfd, SPARES_SUBDIR, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		goto err_free;
	}
	sp->dirfd =
		openat(tasks_dirfd, SPARES_SUBDIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (sp->dirfd < 0) {
		r = -errno;
		goto err_free;
	}

	/* An earlier agent's spares may be half made; their names would be reused. */
	int fd = dup(sp->dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		goto err_close;
	}
	r = 0;
	while (r == 0 && (de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			r = remove_dir(sp->dirfd, de->d_name);
	closedir(d);
	if (r < 0)
		goto err_close;

	r = -pthread_create(&sp->thread, NULL, spares_main, sp);
	if (r < 0)
		goto err_close;
	sp->started = true;
	*ret_spares = sp;
	return 0;

err_close:
	close(sp->dirfd);
err_free:
	pthread_cond_destroy(&sp->cond);
	pthread_mutex_destroy(&sp->lock);
	free(sp);
	return r;
}

void spares_close(struct spares *sp)
{
	if (!sp)
		return;
	pthread_mutex_lock(&sp->lock);
	sp->stop = true;
	pthread_cond_signal(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
	if (sp->started)
		pthread_join(sp->thread, NULL);
	close(sp->dirfd);
	pthread_cond_destroy(&sp->cond);
	pthread_mutex_destroy(&sp->lock);
	free(sp);
}

void spares_pause(struct spares *sp)
{
	if (!sp)
		return;
	pthread_mutex_lock(&sp->lock);
	sp->paused++;
	pthread_mutex_unlock(&sp->lock);
}

void spares_resume(struct spares *sp)
{
	if (!sp)
		return;
	pthread_mutex_lock(&sp->lock);
	sp->paused--;
	sp->resumed_at = clock_now_us();
	pthread_cond_signal(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
}

int spares_take(struct spares *sp, const char *id)
{
	char name[16];
	unsigned n;

	if (!sp)
		return -ENOENT;
	pthread_mutex_lock(&sp->lock);
	if (sp->n_ready == 0 || sp->unsupported) {
		pthread_mutex_unlock(&sp->lock);
		return -ENOENT;
	}
	n = sp->ready[--sp->n_ready];
	pthread_cond_signal(&sp->cond);
	pthread_mutex_unlock(&sp->lock);

	snprintf(name, sizeof(name), "%u", n);
	if (renameat2(sp->dirfd, name, sp->tasks_dirfd, id, RENAME_NOREPLACE) == 0)
		return 0;
	int r = -errno;
	pthread_mutex_lock(&sp->lock);
	if (r == -EEXIST) {
		sp->ready[sp->n_ready++] = n; /* still good for another id */
	} else if ((r == -EINVAL || r == -ENOSYS) && !sp->unsupported) {
		log_warn("%s cannot rename directories without replacing: no spare task "
			 "directories, tasks start more slowly",
			 sp->tasks_dir);
		sp->unsupported = true;
	}
	pthread_mutex_unlock(&sp->lock);
	return r;
}
