/* The store's copies: a consistent snapshot of a live store, and a restore into a state
 * directory (sqlite's online backup API both ways). */
#include "backend/store_internal.h"
#include "backend/util.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The directory of the store's file, as a new string. */
static char *store_dir(const struct store *s)
{
	const char *slash = strrchr(s->path, '/');
	return slash ? xstrndup(s->path, (size_t) (slash - s->path)) : xstrdup(".");
}

/* Copies the database `src` into a new file at `dest` with the online backup API, in one
 * step: one read transaction on the source, so the copy holds exactly the transactions
 * committed before it began (in WAL mode writers go on meanwhile). */
static int backup_into(sqlite3 *src, const char *dest, char *errbuf, size_t errlen)
{
	sqlite3 *dst = NULL;
	int rc = sqlite3_open_v2(dest, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(errbuf, errlen, "cannot open %s: %s", dest, sqlite3_errmsg(dst));
		sqlite3_close(dst);
		return store_sqlite_to_errno(rc);
	}
	/* a scratch file: a crash midway leaves a file that is thrown away anyway */
	sqlite3_exec(dst, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;", NULL, NULL, NULL);
	sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
	if (!b) {
		snprintf(errbuf, errlen, "cannot copy into %s: %s", dest, sqlite3_errmsg(dst));
		sqlite3_close(dst);
		return -EIO;
	}
	for (int tries = 0; tries < 100; tries++) {
		rc = sqlite3_backup_step(b, -1);
		if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
			break;
		sqlite3_sleep(10);
	}
	sqlite3_backup_finish(b);
	int r = rc == SQLITE_DONE ? 0 : store_sqlite_to_errno(rc);
	if (r < 0)
		snprintf(errbuf, errlen, "cannot copy into %s: %s", dest, sqlite3_errstr(rc));
	if (sqlite3_close(dst) != SQLITE_OK && r == 0) {
		snprintf(errbuf, errlen, "cannot finish %s", dest);
		r = -EIO;
	}
	return r;
}

int store_snapshot(struct store *s, int *ret_fd, char *errbuf, size_t errlen)
{
	sqlite3 *db = store_db(s);
	if (!db) {
		snprintf(errbuf, errlen, "cannot open the store %s", s->path);
		return -EIO;
	}
	char *dir = store_dir(s);
	struct buf tmp;
	buf_init(&tmp);
	buf_printf(&tmp, "%s/.backup-XXXXXX", dir);
	free(dir);
	/* 0600 from mkostemp: the copy holds what the store holds */
	int fd = mkostemp(tmp.data, O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;
		snprintf(errbuf, errlen, "cannot make a file in the state directory: %s",
			 strerror(errno));
		buf_free(&tmp);
		return r;
	}
	int r = backup_into(db, tmp.data, errbuf, errlen);
	/* the open fd is the copy from now on: nothing is left behind in the state dir */
	unlink(tmp.data);
	buf_free(&tmp);
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

/* Checks that `db` is a clusterfs store this version can use: sound, with the tables,
 * an instance id and a schema version from 1 to STORE_SCHEMA_VERSION. */
static int check_restorable(sqlite3 *db, const char *file, int *ret_version, char *errbuf,
			    size_t errlen)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
	if (rc != SQLITE_OK) {
		snprintf(errbuf, errlen, "%s is not an sqlite database: %s", file,
			 sqlite3_errmsg(db));
		return -EINVAL;
	}
	rc = sqlite3_step(st);
	const unsigned char *ok = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
	if (!ok || strcmp((const char *) ok, "ok")) {
		snprintf(errbuf, errlen, "%s is damaged (sqlite quick_check: %s)", file,
			 ok ? (const char *) ok : sqlite3_errmsg(db));
		sqlite3_finalize(st);
		return -EINVAL;
	}
	sqlite3_finalize(st);
	int version = 0;
	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			version = sqlite3_column_int(st, 0);
		sqlite3_finalize(st);
	}
	if (version > STORE_SCHEMA_VERSION) {
		snprintf(errbuf, errlen,
			 "%s has schema version %d, newer than this clusterfs knows (%d): restore "
			 "it with the clusterfs that made it, or a newer one",
			 file, version, STORE_SCHEMA_VERSION);
		return -EPROTO;
	}
	bool store = false;
	if (version >= 1 && sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='instance_id'",
					       -1, &st, NULL) == SQLITE_OK) {
		store = sqlite3_step(st) == SQLITE_ROW;
		sqlite3_finalize(st);
	}
	if (!store || sqlite3_prepare_v2(db, "SELECT count(*) FROM tasks", -1, &st, NULL)) {
		snprintf(errbuf, errlen,
			 "%s is not a clusterfs store (schema version %d, no instance id or no "
			 "tasks)",
			 file, version);
		return -EINVAL;
	}
	sqlite3_finalize(st);
	*ret_version = version;
	return 0;
}

/* The pid of a process that has the store at `db` open, or 0. Every sqlite connection to
 * a WAL database holds a read lock on the "dead man switch" byte of its -shm file (the
 * unix VFS: byte 128) for as long as it is open, so a write-lock probe there finds it. */
static pid_t store_user_pid(const char *db)
{
	struct buf shm;
	buf_init(&shm);
	buf_printf(&shm, "%s-shm", db);
	int fd = open(shm.data, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	buf_free(&shm);
	if (fd < 0)
		return 0;
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 128, .l_len = 1};
	pid_t pid = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK ? fl.l_pid : 0;
	close(fd);
	return pid;
}

int store_restore(const char *file, const char *dir, int *ret_version, char *errbuf, size_t errlen)
{
	sqlite3 *src = NULL;
	int rc = sqlite3_open_v2(file, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(errbuf, errlen, "cannot open %s: %s", file, sqlite3_errmsg(src));
		sqlite3_close(src);
		return -ENOENT;
	}
	int r = check_restorable(src, file, ret_version, errbuf, errlen);
	struct buf tmp, dest;
	buf_init(&tmp);
	buf_init(&dest);
	buf_printf(&tmp, "%s/.restore-XXXXXX", dir);
	buf_printf(&dest, "%s/clusterfs.db", dir);
	int fd = -1;
	pid_t user = r == 0 ? store_user_pid(dest.data) : 0;
	if (user) {
		snprintf(errbuf, errlen,
			 "%s is open in process %d (a clusterfs daemon that uses this state "
			 "directory?): stop it first, even with --force",
			 dest.data, (int) user);
		r = -EBUSY;
	}
	if (r == 0) {
		fd = mkostemp(tmp.data, O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			snprintf(errbuf, errlen, "cannot make a file in %s: %s", dir,
				 strerror(errno));
		}
	}
	if (r == 0)
		r = backup_into(src, tmp.data, errbuf, errlen);
	sqlite3_close(src);
	if (r == 0 && fsync(fd) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot write %s: %s", tmp.data, strerror(errno));
	}
	if (fd >= 0)
		close(fd);
	if (r == 0) {
		/* an old store's WAL would be replayed into the restored file: it goes first */
		for (int i = 0; i < 2; i++) {
			struct buf side;
			buf_init(&side);
			buf_printf(&side, "%s%s", dest.data, i ? "-shm" : "-wal");
			if (unlink(side.data) < 0 && errno != ENOENT && r == 0) {
				r = -errno;
				snprintf(errbuf, errlen, "cannot remove %s: %s", side.data,
					 strerror(errno));
			}
			buf_free(&side);
		}
	}
	if (r == 0 && rename(tmp.data, dest.data) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot rename %s to %s: %s", tmp.data, dest.data,
			 strerror(errno));
	}
	if (r < 0 && fd >= 0)
		unlink(tmp.data);
	buf_free(&tmp);
	buf_free(&dest);
	if (r < 0)
		return r;
	/* opening migrates it to this version and makes its files 0600 */
	struct store *s = NULL;
	r = store_open(dir, &s, errbuf, errlen);
	store_close(s);
	return r;
}
