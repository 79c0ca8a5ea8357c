/* Generic REST-as-files services, declared in the config's "services": reading a file
 * GETs its endpoint, writing one and closing it POSTs the bytes. Thread-safe. */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/util.h"

#include <stdbool.h>
#include <stddef.h>

struct services;

/* Called once on the loop thread: err 0 or -errno, body the answer. */
typedef void (*services_done_fn)(void *arg, int err, const char *body, size_t len);

int services_new(struct loop *loop, struct cluster *cluster, struct services **ret);
void services_free(struct services *s);

/* Names of the declared services, and of one service's files: new NULL-terminated
 * sorted arrays (NULL with *ret_n 0 when the service is unknown). */
char **services_list(struct services *s, size_t *ret_n);
char **services_files(struct services *s, const char *svc, size_t *ret_n);
/* Whether svc/file exists, and whether it is written (POST) rather than read (GET). */
bool services_file_exists(struct services *s, const char *svc, const char *file, bool *ret_post);

/* GETs svc/file; done runs at most the probe timeout later. 0 or -errno. */
int services_get(struct services *s, const char *svc, const char *file, services_done_fn done,
		 void *arg);
/* POSTs body to svc/file. A non-2xx answer is -errno, logged and raised as an alert with
 * the server's message. 0 or -errno. */
int services_post(struct services *s, const char *svc, const char *file, const char *body,
		  size_t len, services_done_fn done, void *arg);
/* The last answer of svc/file (to a successful GET, or to the last POST), appended to out
 * (nothing if none). */
void services_last_answer(struct services *s, const char *svc, const char *file, struct buf *out);
