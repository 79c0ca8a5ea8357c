/* Task directories made ahead of time. Creating a file or a directory is the slowest
 * step of starting a task (ext4 takes 0.15 to 0.5 ms for each under load, and a task
 * directory gets eight entries before the agent can answer 201), so a thread keeps a few
 * directories ready, with the task's files already in them (see spares_take()), and
 * starting a task renames one into place instead. Nothing depends on them: without a
 * spare, a task directory is made on the spot.
 *
 * The spares live in STATE_DIR/tasks/SPARES_SUBDIR, whose name is not a task id, so that a
 * later agent passes over them; each agent starts by removing the ones it finds. */
#pragma once

#include <stdbool.h>

#define SPARES_SUBDIR "~spares"
#define SPARES_MAX    8 /* directories kept ready */

struct spares;

/* Starts keeping spares for the task directory `tasks_dir`, open as `tasks_dirfd` (both
 * borrowed, and they must outlive the pool): removes what an earlier agent left in
 * SPARES_SUBDIR and starts the thread that fills it. The calling thread's signal mask is
 * inherited. Returns a new pool, 0 or -errno. */
int spares_open(const char *tasks_dir, int tasks_dirfd, struct spares **ret_spares);
/* Stops the thread; the spares made stay on disk for the next agent to remove. NULL is a
 * no-op. */
void spares_close(struct spares *sp);

/* Brackets the start of a task, during which (and for a few ms after) no spare is made, so
 * that making one adds little to what the start waits for. Thread-safe. */
void spares_pause(struct spares *sp);
void spares_resume(struct spares *sp);

/* Renames a spare to STATE_DIR/tasks/ID: a directory (mode 0700) holding the empty files
 * TASK_FILE_SPEC, TASK_FILE_SUPERVISOR, TASK_FILE_STDOUT, TASK_FILE_STDERR, TASK_FILE_PID
 * and TASK_FILE_PGID, and the empty directory TASK_DIR_WORK; every reader of those files
 * takes an empty one as missing. Nothing is made durable. Returns 0, -EEXIST when ID
 * exists (the spare stays), -ENOENT when no spare is ready, or another -errno. Thread-safe.
 */
int spares_take(struct spares *sp, const char *id);
