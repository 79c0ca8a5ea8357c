/* A task's files (issue 14): its outputs, collected by its supervisor when it ends into
 * the task directory with their SHA-256 digests, and its inputs, staged by the agent
 * before the task is created and moved into the task's working directory by the
 * supervisor before the task starts. Used by the supervisor (no HTTP here); the agent's
 * handlers are in staging.h.
 *
 * In the task directory (supervisor.h):
 *   files/NAME   a copy of output NAME (a path relative to the task's cwd), 0600
 *   files.json   {"files": [{"name", "size", "sha256"}], "error"?: "sentence"}, written
 *                atomically once the outputs were collected
 * and in STATE_DIR/staging/DISPATCH_ID/NAME the inputs staged for a task not created yet. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define ARTIFACTS_DIR          "files"
#define ARTIFACTS_MANIFEST     "files.json"
#define ARTIFACTS_STAGING      "staging"
#define ARTIFACTS_PATTERNS_MAX 64           /* patterns in "outputs" */
#define ARTIFACTS_NAME_MAX     255          /* bytes in a pattern or name */
#define ARTIFACTS_MAX_FILES    100          /* default: files per task */
#define ARTIFACTS_MAX_BYTES    (4ull << 30) /* default: bytes per task */

/* Checks the "outputs" and "inputs" fields of a task request: 0, or -EINVAL with a
 * sentence in msg naming the field. Borrows. */
int artifacts_check_request(const json_t *doc, char *msg, size_t msglen);
/* Checks one relative name: not empty, not absolute, no "." or ".." component, no empty
 * component, printable. */
bool artifacts_name_is_valid(const char *name);

/* Collects the outputs the spec names (its "outputs", at most its "outputs_max_files"
 * files and "outputs_max_bytes" bytes) from `cwd` into the task directory open as `dirfd`
 * and writes files.json. Every file is opened beneath cwd (a symbolic link that leads out
 * of it is refused), must be a regular file and, with `owner` (not (uid_t) -1), owned by
 * that user. 0, or -EINVAL with the reason in errbuf (files.json says it too). */
int artifacts_collect(int dirfd, const char *cwd, const json_t *spec, uid_t owner, char *errbuf,
		      size_t errlen);

/* Moves the inputs the spec names (its "inputs": names) from `staging_dir` into `cwd`,
 * making the directories they need, and gives them to uid:gid (not (uid_t) -1). Removes
 * the staging directory. 0 or -errno with a sentence in errbuf. */
int artifacts_stage_into(const char *staging_dir, const char *cwd, const json_t *spec, uid_t uid,
			 gid_t gid, char *errbuf, size_t errlen);
