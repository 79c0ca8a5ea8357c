/* A task's outputs and inputs on its node (see artifacts.h). */
#include "tools/agent/artifacts.h"

#include "backend/digest.h"
#include "backend/util.h"
#include "tools/agent/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define COPY_CHUNK (1024 * 1024)

bool artifacts_name_is_valid(const char *name)
{
	size_t len = strlen(name);
	if (!len || len > ARTIFACTS_NAME_MAX || name[0] == '/')
		return false;
	for (const char *p = name; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			return false;
	const char *seg = name;
	for (;;) {
		const char *end = strchr(seg, '/');
		size_t n = end ? (size_t) (end - seg) : strlen(seg);
		if (n == 0 || (n == 1 && seg[0] == '.') ||
		    (n == 2 && seg[0] == '.' && seg[1] == '.'))
			return false;
		if (!end)
			return true;
		seg = end + 1;
	}
}

static int check_limit(const json_t *doc, const char *field, char *msg, size_t msglen)
{
	const json_t *v = json_object_get(doc, field);
	if (v && (!json_is_integer(v) || json_integer_value(v) < 0)) {
		snprintf(msg, msglen, "\"%s\" must be a number of at least 0", field);
		return -EINVAL;
	}
	return 0;
}

int artifacts_check_request(const json_t *doc, char *msg, size_t msglen)
{
	const json_t *outs = json_object_get(doc, "outputs");
	if (outs) {
		if (!json_is_array(outs) || json_array_size(outs) > ARTIFACTS_PATTERNS_MAX) {
			snprintf(msg, msglen, "\"outputs\" must be a list of at most %d paths",
				 ARTIFACTS_PATTERNS_MAX);
			return -EINVAL;
		}
		size_t i;
		const json_t *o;
		json_array_foreach (outs, i, o) {
			const char *s = json_string_value(o);
			if (!s || !artifacts_name_is_valid(s)) {
				snprintf(
					msg, msglen,
					"\"outputs\": %.100s%s is not a path relative to the task's "
					"directory (no \"..\", not absolute)",
					s ? s : "an entry", s && strlen(s) > 100 ? "..." : "");
				return -EINVAL;
			}
		}
	}
	if (check_limit(doc, "outputs_max_files", msg, msglen) < 0 ||
	    check_limit(doc, "outputs_max_bytes", msg, msglen) < 0)
		return -EINVAL;
	const json_t *ins = json_object_get(doc, "inputs");
	if (ins) {
		if (!json_is_array(ins) || json_array_size(ins) > 4096) {
			snprintf(msg, msglen, "\"inputs\" must be a list of staged names");
			return -EINVAL;
		}
		size_t i;
		const json_t *o;
		json_array_foreach (ins, i, o) {
			const char *s = json_string_value(o);
			if (!s || !artifacts_name_is_valid(s)) {
				snprintf(msg, msglen, "\"inputs\": %.100s is not a valid name",
					 s ? s : "an entry");
				return -EINVAL;
			}
		}
	}
	return 0;
}

/* openat2 beneath `dirfd`: no absolute path, no "..", no symbolic link leads out. */
static int open_beneath(int dirfd, const char *name, int flags)
{
	struct open_how how = {
		.flags = (uint64_t) flags | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	long fd = syscall(SYS_openat2, dirfd, name, &how, sizeof(how));
	return fd < 0 ? -errno : (int) fd;
}

/* Makes the directories of `name` beneath dirfd (mode 0700, or given to uid:gid) and
 * opens the last one; the file's own name is at *ret_base. */
static int open_parent(int dirfd, const char *name, uid_t uid, gid_t gid, const char **ret_base)
{
	const char *slash = strrchr(name, '/');
	*ret_base = slash ? slash + 1 : name;
	if (!slash) {
		int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
		return fd < 0 ? -errno : fd;
	}
	_cleanup_free_ char *dir = xstrndup(name, (size_t) (slash - name));
	for (char *p = dir;; p++) {
		if (*p != '/' && *p)
			continue;
		char c = *p;
		*p = '\0';
		int fd = open_beneath(dirfd, dir, O_PATH | O_DIRECTORY);
		if (fd == -ENOENT) {
			if (mkdirat(dirfd, dir, 0700) < 0 && errno != EEXIST)
				return -errno;
			fd = open_beneath(dirfd, dir, O_PATH | O_DIRECTORY);
			if (fd >= 0 && uid != (uid_t) -1 &&
			    fchownat(fd, "", uid, gid, AT_EMPTY_PATH) < 0) {
				close(fd);
				return -errno;
			}
			if (fd >= 0 && uid != (uid_t) -1)
				fchmodat(dirfd, dir, 0755, 0);
		}
		if (!c)
			return fd;
		if (fd < 0)
			return fd;
		close(fd);
		*p = c;
	}
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
#define _cleanup_close_ __attribute__((cleanup(close_fd)))

static bool has_glob(const char *s)
{
	return strpbrk(s, "*?[") != NULL;
}

/* Copies src to NAME beneath dst_dirfd, hashing it. */
static int copy_hashed(int src, int dst_dirfd, const char *name, char hex[DIGEST_HEX_LEN + 1],
		       uint64_t *ret_size)
{
	const char *base;
	_cleanup_close_ int dfd = open_parent(dst_dirfd, name, (uid_t) -1, 0, &base);
	if (dfd < 0)
		return dfd;
	_cleanup_close_ int out = openat(dfd, base, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0)
		return -errno;
	_cleanup_free_ char *chunk = xmalloc(COPY_CHUNK);
	struct digest d;
	digest_init(&d);
	uint64_t total = 0;
	for (;;) {
		ssize_t n = read(src, chunk, COPY_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto err_clear;
		if (n == 0)
			break;
		digest_update(&d, chunk, (size_t) n);
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(out, chunk + off, (size_t) (n - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				goto err_clear;
			off += w;
		}
		total += (uint64_t) n;
	}
	if (fsync(out) < 0)
		goto err_clear;
	digest_final_hex(&d, hex);
	*ret_size = total;
	return 0;

err_clear:;
	int r = -errno;
	digest_clear(&d);
	return r;
}

/* The matches of one pattern, relative to the cwd open as cwdfd, appended to names. */
static int expand(int cwdfd, const char *pattern, json_t *names, char *errbuf, size_t errlen)
{
	const char *p = pattern;
	while (p[0] == '.' && p[1] == '/')
		p += 2;
	if (!has_glob(p)) {
		json_array_append_new(names, json_string(p));
		return 0;
	}
	/* glob(3) works on the process's cwd: the supervisor is single-threaded */
	_cleanup_close_ int back = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (back < 0 || fchdir(cwdfd) < 0) {
		snprintf(errbuf, errlen, "outputs: cannot enter the task's directory: %s",
			 strerror(errno));
		return -EIO;
	}
	glob_t g;
	int r = glob(p, GLOB_NOSORT, NULL, &g);
	if (fchdir(back) < 0) {
		/* nothing depends on the supervisor's own cwd */
	}
	if (r == GLOB_NOMATCH)
		return 0;
	if (r != 0) {
		snprintf(errbuf, errlen, "outputs: %s: cannot expand the pattern", pattern);
		return -EIO;
	}
	for (size_t i = 0; i < g.gl_pathc; i++)
		json_array_append_new(names, json_string(g.gl_pathv[i]));
	globfree(&g);
	return 0;
}

/* One copy of each name, in a stable order: a new array for names (whose reference it
 * takes). */
static json_t *unique_names(json_t *names)
{
	json_t *seen = json_object();
	json_t *uniq = json_array();
	size_t i;
	json_t *o;
	json_array_foreach (names, i, o) {
		const char *n = json_string_value(o);
		if (!json_object_get(seen, n)) {
			json_object_set_new(seen, n, json_true());
			json_array_append(uniq, o);
		}
	}
	json_decref(seen);
	json_decref(names);
	return uniq;
}

/* Why output `name` (opened beneath the task's directory as fd, or -errno) is refused, into
 * errbuf: a link out of the directory, missing, not a regular file, not the task user's,
 * or over the byte limit with the total so far. errbuf stays empty for a good one. */
static void check_output(int fd, const char *name, uid_t owner, uint64_t total,
			 json_int_t max_bytes, char *errbuf, size_t errlen)
{
	struct stat st;
	if (fd == -EXDEV || fd == -ELOOP) {
		snprintf(errbuf, errlen,
			 "output %.200s: refused: a symbolic link that leads out of the task's "
			 "directory",
			 name);
	} else if (fd == -ENOENT) {
		snprintf(errbuf, errlen, "output %.200s: no such file", name);
	} else if (fd < 0) {
		snprintf(errbuf, errlen, "output %.200s: %s", name, strerror(-fd));
	} else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(errbuf, errlen, "output %.200s: refused: not a regular file", name);
	} else if (owner != (uid_t) -1 && st.st_uid != owner) {
		snprintf(errbuf, errlen, "output %.200s: refused: not owned by the task's user",
			 name);
	} else if (total + (uint64_t) st.st_size > (uint64_t) max_bytes) {
		snprintf(errbuf, errlen,
			 "output %.200s: refused: the outputs would be %llu bytes, more than "
			 "the limit of %lld",
			 name, (unsigned long long) (total + (uint64_t) st.st_size),
			 (long long) max_bytes);
	}
}

int artifacts_collect(int dirfd, const char *cwd, const json_t *spec, uid_t owner, char *errbuf,
		      size_t errlen)
{
	const json_t *outs = json_object_get(spec, "outputs");
	json_int_t max_files = ARTIFACTS_MAX_FILES;
	json_int_t max_bytes = (json_int_t) ARTIFACTS_MAX_BYTES;
	if (json_is_integer(json_object_get(spec, "outputs_max_files")))
		max_files = json_integer_value(json_object_get(spec, "outputs_max_files"));
	if (json_is_integer(json_object_get(spec, "outputs_max_bytes")))
		max_bytes = json_integer_value(json_object_get(spec, "outputs_max_bytes"));

	json_t *files = json_array();
	json_t *names = json_array();
	int r = 0;
	uint64_t total = 0;
	errbuf[0] = '\0';
	_cleanup_close_ int filesfd = -1;
	_cleanup_close_ int cwdfd = open(cwd, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cwdfd < 0) {
		snprintf(errbuf, errlen, "outputs: cannot open the task's directory %s: %s", cwd,
			 strerror(errno));
		r = -EINVAL;
		goto out;
	}
	size_t i;
	const json_t *o;
	json_array_foreach (outs, i, o) {
		if ((r = expand(cwdfd, json_string_value(o), names, errbuf, errlen)) < 0) {
			r = -EINVAL;
			goto out;
		}
	}
	names = unique_names(names);
	if ((json_int_t) json_array_size(names) > max_files) {
		snprintf(errbuf, errlen, "outputs: %zu files, more than the limit of %lld",
			 json_array_size(names), (long long) max_files);
		r = -EINVAL;
		goto out;
	}
	if (mkdirat(dirfd, ARTIFACTS_DIR, 0700) < 0 && errno != EEXIST) {
		snprintf(errbuf, errlen, "outputs: cannot make %s: %s", ARTIFACTS_DIR,
			 strerror(errno));
		r = -EINVAL;
		goto out;
	}
	filesfd = openat(dirfd, ARTIFACTS_DIR, O_PATH | O_DIRECTORY | O_CLOEXEC);
	json_array_foreach (names, i, o) {
		const char *name = json_string_value(o);
		if (!artifacts_name_is_valid(name)) {
			snprintf(errbuf, errlen,
				 "output %.200s: not a name beneath the task's directory", name);
			r = -EINVAL;
			goto out;
		}
		_cleanup_close_ int fd =
			open_beneath(cwdfd, name, O_RDONLY | O_NOCTTY | O_NONBLOCK);
		check_output(fd, name, owner, total, max_bytes, errbuf, errlen);
		if (errbuf[0]) {
			r = -EINVAL;
			goto out;
		}
		fcntl(fd, F_SETFL, 0);
		char hex[DIGEST_HEX_LEN + 1];
		uint64_t size;
		int c = copy_hashed(fd, filesfd, name, hex, &size);
		if (c < 0) {
			snprintf(errbuf, errlen, "output %.200s: cannot copy it: %s", name,
				 strerror(-c));
			r = -EINVAL;
			goto out;
		}
		total += size;
		json_array_append_new(files, json_pack("{s:s, s:I, s:s}", "name", name, "size",
						       (json_int_t) size, "sha256", hex));
	}
out:;
	json_t *doc = json_pack("{s:o}", "files", files);
	if (errbuf[0])
		json_object_set_new(doc, "error", json_string(errbuf));
	char *text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	json_decref(names);
	if (text)
		supervisor_write_file(dirfd, ARTIFACTS_MANIFEST, text, strlen(text), true);
	free(text);
	return r;
}

int artifacts_stage_into(const char *staging_dir, const char *cwd, const json_t *spec, uid_t uid,
			 gid_t gid, char *errbuf, size_t errlen)
{
	const json_t *ins = json_object_get(spec, "inputs");
	if (!json_array_size(ins))
		return 0;
	_cleanup_close_ int sfd = open(staging_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	_cleanup_close_ int cfd = open(cwd, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0 || cfd < 0) {
		snprintf(errbuf, errlen, "inputs: cannot open %s: %s", sfd < 0 ? staging_dir : cwd,
			 strerror(errno));
		return -EIO;
	}
	size_t i;
	const json_t *o;
	json_array_foreach (ins, i, o) {
		const char *name = json_string_value(o);
		const char *base;
		_cleanup_close_ int src = open_beneath(sfd, name, O_RDONLY);
		_cleanup_close_ int dfd = open_parent(cfd, name, uid, gid, &base);
		if (src < 0 || dfd < 0) {
			snprintf(errbuf, errlen, "input %.200s: %s", name,
				 src < 0 ? "was not staged" : strerror(-dfd));
			return -EIO;
		}
		if (uid != (uid_t) -1 && (fchown(src, uid, gid) < 0 || fchmod(src, 0644) < 0)) {
			snprintf(errbuf, errlen, "input %.200s: %s", name, strerror(errno));
			return -EIO;
		}
		const char *sbase;
		_cleanup_close_ int sdir = open_parent(sfd, name, (uid_t) -1, 0, &sbase);
		if (sdir < 0 || renameat(sdir, sbase, dfd, base) < 0) {
			/* another filesystem: copied */
			char hex[DIGEST_HEX_LEN + 1];
			uint64_t size;
			int c = errno == EXDEV ? copy_hashed(src, cfd, name, hex, &size) : -errno;
			if (c == 0 && uid != (uid_t) -1)
				fchownat(dfd, base, uid, gid, AT_SYMLINK_NOFOLLOW);
			if (c < 0) {
				snprintf(errbuf, errlen,
					 "input %.200s: cannot move it into place: %s", name,
					 strerror(-c));
				return -EIO;
			}
		}
	}
	return 0;
}
