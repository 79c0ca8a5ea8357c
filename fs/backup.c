/* backup/state.db: the copy is made at open, and reads serve it from its file. */
#include "fs/backup.h"
#include "backend/store.h"
#include "backend/util.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int fs_backup_open(struct store *store, int *ret_fd)
{
	if (!store)
		return -ENOENT;
	char err[512];
	double t0 = clock_wall_s();
	int r = store_snapshot(store, ret_fd, err, sizeof(err));
	if (r < 0) {
		log_err("backup/state.db: %s", err);
		return r;
	}
	off_t size = lseek(*ret_fd, 0, SEEK_END);
	log_info("backup/state.db: copied the store, %lld bytes in %.0f ms", (long long) size,
		 (clock_wall_s() - t0) * 1000);
	return 0;
}

void fs_backup_read(fuse_req_t req, int fd, size_t size, off_t off)
{
	char *data = xmalloc(size ? size : 1);
	ssize_t n = pread(fd, data, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_buf(req, data, (size_t) n);
	free(data);
}
