/* backup/state.db: a consistent copy of the store, made when the file is opened. */
#pragma once

#include "fs/fs.h"
#include <sys/types.h>

struct store;

/* Copies the store (sqlite's online backup API: submissions go on meanwhile) into an
 * unlinked file of the state directory, whose fd (*ret_fd, the handle's to close) the
 * reads of this open serve. 0 or -errno; the reason is logged. */
int fs_backup_open(struct store *store, int *ret_fd);

/* Answers a read of the copy. */
void fs_backup_read(fuse_req_t req, int fd, size_t size, off_t off);
