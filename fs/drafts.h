/* Drafts: the files in tasks/new/ — specs being written, rejected specs kept for fixing,
 * their NAME.error siblings, and staging files of editors and rsync. They live in memory
 * until they are submitted or removed. Thread-safe. */
#pragma once

#include "backend/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define DRAFTS_MAX       1024         /* files at once in new/, all users together */
#define DRAFTS_BYTES_MAX (256u << 20) /* their bytes, all users together */

struct drafts;

/* What one user may hold in new/ (from the config's tasks.drafts_per_user and
 * tasks.draft_bytes_per_user). Past them: -EDQUOT; past the global ceilings: -ENOSPC. */
struct drafts_limits {
	size_t files; /* drafts per uid, NAME.error files not counted */
	size_t bytes; /* bytes per uid */
};

struct draft_info {
	size_t size;
	uid_t uid;
	gid_t gid;
	mode_t mode;
	double mtime;
};

int drafts_new(struct drafts **ret);
void drafts_free(struct drafts *d);

/* Creates an empty draft owned by uid; -EEXIST when the name is taken, -EDQUOT past the
 * user's limit, -ENOSPC past DRAFTS_MAX. */
int drafts_create(struct drafts *d, const char *name, uid_t uid, gid_t gid, mode_t mode,
		  const struct drafts_limits *lim);
/* Creates or replaces a read-only draft holding `text` (the NAME.error files). */
void drafts_put(struct drafts *d, const char *name, uid_t uid, gid_t gid, const char *text);
bool drafts_exists(struct drafts *d, const char *name);
int drafts_stat(struct drafts *d, const char *name, struct draft_info *ret);
/* pwrite semantics; -EFBIG beyond max, -EDQUOT beyond the owner's bytes, -ENOSPC beyond
 * DRAFTS_BYTES_MAX. Marks the draft dirty. */
int drafts_write(struct drafts *d, const char *name, const char *data, size_t len, size_t off,
		 size_t max, const struct drafts_limits *lim);
int drafts_truncate(struct drafts *d, const char *name, size_t size, size_t max,
		    const struct drafts_limits *lim);
/* Copies the content into out. */
int drafts_read(struct drafts *d, const char *name, struct buf *out);
/* Takes the dirty flag: true when written since the last call. */
bool drafts_take_dirty(struct drafts *d, const char *name);
/* The error of the last submission attempt of this draft (0 if none) and setting it. */
int drafts_last_error(struct drafts *d, const char *name);
void drafts_set_last_error(struct drafts *d, const char *name, int err);
int drafts_remove(struct drafts *d, const char *name);
/* Renames; replaces an existing target. */
int drafts_rename(struct drafts *d, const char *from, const char *to);
/* Names, sorted. New NULL-terminated array. */
char **drafts_list(struct drafts *d, size_t *ret_n);
double drafts_changed_at(struct drafts *d);
