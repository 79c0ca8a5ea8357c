/* inotify on the config file's directory. Watching the file itself would lose it at the
 * first editor save that writes a new file and renames it over the old one. */
#include "config/watch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

struct config_watch {
	int fd;     /* inotify instance, non-blocking, close-on-exec */
	int wd;     /* watch descriptor of the directory */
	char *base; /* the config file's name within its directory */
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
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = -1;
	if (!slash)
		dir = strdup(".");
	else if (slash == path)
		dir = strdup("/");
	else
		dir = strndup(path, (size_t) (slash - path));
	w->base = strdup(slash ? slash + 1 : path);
	if (!dir || !w->base) {
		r = -ENOMEM;
		goto err_free_watch;
	}
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
			if (ev->mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
				hit = true;
			else if (ev->len > 0 && strcmp(ev->name, w->base) == 0)
				hit = true;
			p += sizeof(*ev) + ev->len;
		}
	}
	return hit;
}
