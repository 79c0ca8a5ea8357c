/* The node's replica of knowledge/. */
#include "tools/agent/knowledge.h"
#include "backend/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEQ_FILE "knowledge.seq"

static pthread_mutex_t replica_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t replica_seq; /* protected by replica_lock */

/* The replica directory of state_dir, as a new string. */
static char *replica_dir(const char *state_dir)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s-knowledge", state_dir);
	return buf_steal(&b, NULL);
}

/* Each component a task name: letters, digits, '.', '_', '-', not starting with '.'. */
static bool path_is_valid(const char *path)
{
	size_t n = strlen(path), seg = 0;
	if (n == 0 || n > 1024)
		return false;
	for (size_t i = 0; i <= n; i++) {
		char c = path[i];
		if (c == '/' || c == '\0') {
			if (seg == 0 || seg > 128)
				return false;
			seg = 0;
			continue;
		}
		if (seg == 0 && c == '.')
			return false;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
		seg++;
	}
	return true;
}

static int seq_store(const char *state_dir, int64_t seq)
{
	char path[4096], tmp[4200];
	snprintf(path, sizeof(path), "%s/%s", state_dir, SEQ_FILE);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -errno;
	fprintf(f, "%" PRId64 "\n", seq);
	if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
		int r = -errno;
		fclose(f);
		return r;
	}
	fclose(f);
	return rename(tmp, path) < 0 ? -errno : 0;
}

int knowledge_replica_open(const char *state_dir, char *errbuf, size_t errlen)
{
	char *dir = replica_dir(state_dir);
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		snprintf(errbuf, errlen, "cannot make the knowledge replica %s: %s", dir,
			 strerror(errno));
		free(dir);
		return -errno;
	}
	chmod(dir, 0755);
	setenv("CLUSTERFS_KNOWLEDGE", dir, 1);
	free(dir);
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", state_dir, SEQ_FILE);
	FILE *f = fopen(path, "r");
	long long seq = 0;
	if (f) {
		if (fscanf(f, "%lld", &seq) != 1 || seq < 0)
			seq = 0;
		fclose(f);
	}
	pthread_mutex_lock(&replica_lock);
	replica_seq = seq;
	pthread_mutex_unlock(&replica_lock);
	return 0;
}

int64_t knowledge_replica_seq(void)
{
	pthread_mutex_lock(&replica_lock);
	int64_t seq = replica_seq;
	pthread_mutex_unlock(&replica_lock);
	return seq;
}

/* Makes the directories above root/path (0755). */
static int make_parents(const char *root, const char *path)
{
	char *p = xasprintf("%s/%s", root, path);
	for (char *s = p + strlen(root) + 1; (s = strchr(s, '/')); s++) {
		*s = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST) {
			int r = -errno;
			free(p);
			return r;
		}
		*s = '/';
	}
	free(p);
	return 0;
}

/* Removes the directories above root/path that are empty now. */
static void remove_empty_parents(const char *root, const char *path)
{
	char *p = xasprintf("%s/%s", root, path);
	size_t keep = strlen(root);
	for (char *slash; (slash = strrchr(p, '/')) && (size_t) (slash - p) > keep;) {
		*slash = '\0';
		if (rmdir(p) < 0)
			break;
	}
	free(p);
}

/* Writes data to root/path by a temporary file renamed into place. */
static int write_doc(const char *root, const char *path, const char *data, size_t len)
{
	int r = make_parents(root, path);
	if (r < 0)
		return r;
	const char *slash = strrchr(path, '/');
	char *final = xasprintf("%s/%s", root, path);
	char *tmp = xasprintf("%s/%.*s%s.%s.tmp", root, slash ? (int) (slash - path + 1) : 0, path,
			      "", slash ? slash + 1 : path);
	unlink(tmp); /* one a crash left behind, read-only */
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
	r = fd < 0 ? -errno : 0;
	for (size_t off = 0; r == 0 && off < len;) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno != EINTR)
			r = -errno;
		else if (n > 0)
			off += (size_t) n;
	}
	if (fd >= 0) {
		if (r == 0 && fchmod(fd, 0444) < 0)
			r = -errno;
		if (close(fd) < 0 && r == 0)
			r = -errno;
	}
	if (r == 0 && rename(tmp, final) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	free(tmp);
	free(final);
	return r;
}

/* Applies one version (data NULL: a deletion) if it is newer than what is held. */
static int apply(const char *state_dir, struct request *req, struct response *resp,
		 const char *data, size_t len)
{
	const char *path = req->params[0];
	const char *seq_s = request_get_query(req, "seq");
	char *end = NULL;
	long long seq = seq_s ? strtoll(seq_s, &end, 10) : 0;
	if (!path_is_valid(path) || !seq_s || *end || seq <= 0) {
		response_set_error(resp, 400, "not a knowledge path and seq: %.200s", path);
		return 0;
	}
	char *root = replica_dir(state_dir);
	int r = 0;
	pthread_mutex_lock(&replica_lock);
	if (seq > replica_seq) {
		if (data) {
			r = write_doc(root, path, data, len);
		} else {
			char *p = xasprintf("%s/%s", root, path);
			if (unlink(p) < 0 && errno != ENOENT)
				r = -errno;
			free(p);
			if (r == 0)
				remove_empty_parents(root, path);
		}
		if (r == 0)
			r = seq_store(state_dir, seq);
		if (r == 0)
			replica_seq = seq;
	}
	int64_t held = replica_seq;
	pthread_mutex_unlock(&replica_lock);
	free(root);
	if (r < 0) {
		response_set_error(resp, 500, "knowledge %.200s: %s", path, strerror(-r));
		return 0;
	}
	return response_set_json(resp, 200, json_pack("{s:I}", "knowledge_seq", (json_int_t) held));
}

int knowledge_handle_put(const char *state_dir, struct request *req, struct response *resp)
{
	return apply(state_dir, req, resp, req->body, req->body_len);
}

int knowledge_handle_delete(const char *state_dir, struct request *req, struct response *resp)
{
	return apply(state_dir, req, resp, NULL, 0);
}
