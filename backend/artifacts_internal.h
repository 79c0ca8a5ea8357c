/* Artifacts: the private header of backend/artifacts*.c, never included elsewhere. It holds
 * struct artifacts and the functions the files share. a->lock guards the records cache
 * only; fetches, collections and stagings run on the loop thread. */
#pragma once

#include "backend/artifacts.h"
#include "backend/util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#define SIGNED_FOR_S 3600 /* a signed URL is good for this long */

struct fetch;

struct artifacts {
	struct loop *loop;
	struct cluster *cluster;
	char *dir;             /* STATE_DIR/artifacts; immutable */
	pthread_mutex_t lock;  /* protects records */
	json_t *records;       /* task id -> record, a cache of what is on disk */
	struct fetch *fetches; /* files being fetched; loop thread */
};

/* ---- artifacts.c ---- */

/* The path of the kept copy of output `name` of task. Returns a new string. */
char *artifacts_kept_path(const struct artifacts *a, const char *task, const char *name);
/* The record of task, or NULL: a new reference. */
json_t *artifacts_record_get(struct artifacts *a, const char *task);
/* Loop thread: starts a request to the agent of `node`: 0, or -ENOENT when it is not in the
 * config. Takes body_fd (> 0: the body is read from it). */
int artifacts_agent_request(struct artifacts *a, const char *node, const char *method,
			    const char *path, const char *body, int body_fd, uint64_t fd_size,
			    long timeout_ms, void (*on_chunk)(const char *, size_t, void *),
			    http_done_fn done, void *arg);
/* The deadline of a transfer of `size` bytes. */
long artifacts_transfer_timeout_ms(uint64_t size);
/* Percent-encodes a relative path for a URL, keeping its '/'. */
void artifacts_url_path_append(struct buf *b, const char *s);
