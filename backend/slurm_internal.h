/* Slurm: the private header of backend/slurm*.c, never included elsewhere. It holds the
 * module's state and the slurmrestd helpers its files share. Everything here runs on the
 * loop thread (slurm.h). */
#pragma once

#include "backend/slurm.h"
#include "backend/util.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#define REST_TIMEOUT_MS 5000L

struct slurm {
	struct loop *loop;
	struct cluster *cluster;
	/* the rest is loop thread only */
	char *api;        /* "v0.0.38": configured or discovered; NULL until known */
	bool discovering; /* the OpenAPI document is being fetched */
	char *token;      /* the JWT, or NULL; never logged */
	struct stat token_st;
	char *token_error;   /* why there is no usable token, or NULL */
	double token_exp;    /* the JWT's "exp" (wall clock), 0 when unknown */
	bool listing;        /* a node listing is in flight */
	uint64_t next_round; /* monotonic: when the next listing is due */
	int failures;        /* listings failed in a row */
	json_t *last_nodes;  /* the last answered listing's "nodes", or NULL */
	json_t *jobs;        /* job name (dispatch id) -> job_id, as learned */
	bool jobs_listed;    /* a full job listing has been seen since the start */
	struct loop_timer *tick;
	char *owner; /* the name of the slurm section the state above belongs to */
};

/* ---- slurm.c ---- */

/* Starts a request to slurmrestd: GET/POST/DELETE of `path` with the JWT. 0 or -errno
 * (then done is not called). */
int slurm_rest_call(struct slurm *s, const struct config *cfg, const char *method, const char *path,
		    const char *body, http_done_fn done, void *arg);
/* slurmrestd's sentence in an answer's "errors", or the transport's, appended to out. */
void slurm_describe_error(const struct http_response *r, struct buf *out);
/* The API path prefix and `rest`: "/slurm/v0.0.38" + rest, appended to out. */
void slurm_api_path(struct slurm *s, const char *rest, struct buf *out);
