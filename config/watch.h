/* Watches the config file's directory with inotify, so in-place writes and rename-over
 * saves (editors, `mv`) are both seen. The fd is owned by whoever polls it: the backend
 * thread. Not thread-safe. */
#pragma once

#include <stdbool.h>

struct config_watch;

/* Starts watching the directory of `path`. Returns 0 or -errno. */
int config_watch_new(const char *path, struct config_watch **ret);
void config_watch_free(struct config_watch *w);
/* The inotify fd to poll for input. */
int config_watch_fd(const struct config_watch *w);
/* Drains pending events; returns true when one concerned the config file (write closed,
 * moved in, created, deleted). Never blocks. */
bool config_watch_read(struct config_watch *w);
