/* The supervisor: the private header of tools/agent/supervisor*.c, never included
 * elsewhere. supervisor.c holds the agent's side (spawning a supervisor, confirming its
 * start, reading its identity, cancelling) and the small file helpers both sides use;
 * supervisor_run.c holds the supervisor process itself (supervisor_main). Both sides of
 * the start-up protocol (supervisor.h) share the pipes and words below. */
#pragma once

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#define SUPERVISOR_ANSWER_FD  3 /* the supervisor's answer to the agent: "OK" or "ERR ..." */
#define SUPERVISOR_GO_FD      4 /* the agent's go-ahead to the supervisor: "GO" */
#define SUPERVISOR_GO         "GO\n"
#define SUPERVISOR_ANSWER_MAX 512

/* Writes all of data to fd, going on after EINTR. 0 or -errno. */
int supervisor_write_all(int fd, const void *data, size_t len);
/* Writes the small file `name` in place, with no temporary file: for the files whose
 * readers cope with finding one empty or torn (see where it is used). 0 or -errno. */
int supervisor_write_in_place(int dirfd, const char *name, const void *data, size_t len);
/* The signals the supervisor handles through its signalfd; blocked from before its exec
 * on, so that an early SIGUSR1 cannot kill it. */
void supervisor_sigset(sigset_t *set);
/* Waits for the child `pid` to exit, and reaps it. */
void supervisor_reap(pid_t pid, int *ret_status);
