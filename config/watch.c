/* inotify on the config file's directory, and on the hosts.d drop-in directory beside it.
 * Watching the file itself would lose it at the first editor save that writes a new file
 * and renames it over the old one. */
#include "config/watch.h"

#include "backend/util.h"
#include "config/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

struct config_watch {
	int fd;           /* inotify instance, non-blocking, close-on-exec */
	int wd;           /* watch descriptor of the directory */
	char *base;       /* the config file's name within its directory */
	char *dropin_dir; /* DIR/hosts.d */
	int wd_dropin;    /* its watch descriptor, or -1 while it does not exist */
};

#define WATCH_MASK                                                                                 \
	(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB |        \
	 IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

int config_watch_new(const char *path, struct config_watch **ret)
{
	const char *slash = strrchr(path, '/');
	struct config_watch *w;
	char *dir;
	int r;

	if (!path[0] || (slash && !slash[1]))
		return -EINVAL; /* no file name to match */
	w = xcalloc(1, sizeof(*w));
	w->fd = -1;
	if (!slash)
		dir = xstrdup(".");
	else if (slash == path)
		dir = xstrdup("/");
	else
		dir = xstrndup(path, (size_t) (slash - path));
	w->base = xstrdup(slash ? slash + 1 : path);
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0) {
		r = -errno;
		goto err_free_watch;
	}
	w->wd = inotify_add_watch(w->fd, dir, WATCH_MASK);
	if (w->wd < 0) {
		r = -errno;
		goto err_free_watch;
	}
	w->dropin_dir = xasprintf("%s/%s", dir, CONFIG_DROPIN_DIR);
	w->wd_dropin = inotify_add_watch(w->fd, w->dropin_dir, WATCH_MASK);
	free(dir);
	*ret = w;
	return 0;

err_free_watch:
	free(dir);
	config_watch_free(w);
	return r;
}

void config_watch_free(struct config_watch *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	free(w->base);
	free(w->dropin_dir);
	free(w);
}

int config_watch_fd(const struct config_watch *w)
{
	return w->fd;
}

bool config_watch_read(struct config_watch *w)
{
	char events[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool hit = false;

	for (;;) {
		ssize_t n = read(w->fd, events, sizeof(events));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* EAGAIN: drained */
		for (char *p = events; p < events + n;) {
			const struct inotify_event *ev = (const struct inotify_event *) (void *) p;
			/* The directory itself went away or moved, or the queue overflowed and
			 * events were lost: the file may have changed, so say so. */
			if (ev->wd == w->wd_dropin && w->wd_dropin >= 0) {
				/* a drop-in changed (files starting with '.' are in the making) */
				if (ev->mask & IN_IGNORED)
					w->wd_dropin = -1;
				if ((ev->mask & IN_IGNORED) || (ev->len > 0 && ev->name[0] != '.'))
					hit = true;
			} else if (ev->mask &
				   (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
				hit = true;
			} else if (ev->len > 0 && strcmp(ev->name, w->base) == 0) {
				hit = true;
			} else if (ev->len > 0 && strcmp(ev->name, CONFIG_DROPIN_DIR) == 0) {
				/* hosts.d appeared (or went): watch it from now on */
				if (w->wd_dropin < 0)
					w->wd_dropin =
						inotify_add_watch(w->fd, w->dropin_dir, WATCH_MASK);
				hit = true;
			}
			p += sizeof(*ev) + ev->len;
		}
	}
	return hit;
}
