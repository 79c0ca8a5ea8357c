/* Unit tests for backend/knowledge: versions, the conflict check, deletions as versions,
 * directories, listings, creates held before their first commit, and the seq order the
 * replicas follow. A real sqlite store in a temporary directory. Prints TAP. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/knowledge.h"
#include "backend/store.h"
#include "backend/util.h"

#include "tests/unit/check.h"

static char tmpdir[] = "/tmp/test-knowledge.XXXXXX";

static bool read_is(struct knowledge *k, const char *path, int64_t v, const char *want)
{
	struct buf b;
	buf_init(&b);
	int r = knowledge_read(k, path, v, &b);
	bool ok = r == 0 && b.len == strlen(want) && (!b.len || !memcmp(b.data, want, b.len));
	buf_free(&b);
	return ok;
}

static bool list_is(char **names, const size_t *n, const char *const *want, size_t n_want)
{
	bool ok = *n == n_want;
	for (size_t i = 0; names && names[i]; i++) {
		ok &= i < n_want && !strcmp(names[i], want[i]);
		free(names[i]);
	}
	free(names);
	return ok;
}

struct seen {
	int64_t seqs[16];
	bool deleted[16];
	size_t n;
};

static int saw(void *arg, int64_t seq, const char *path, int64_t version, const char *data,
	       size_t len, bool deleted)
{
	struct seen *s = arg;
	if (s->n < 16) {
		s->seqs[s->n] = seq;
		s->deleted[s->n] = deleted;
		s->n++;
	}
	return 0;
}

int main(void)
{
	char err[256];
	struct store *s;
	struct knowledge *k;
	if (!mkdtemp(tmpdir))
		return 1;
	CHECK(store_open(tmpdir, &s, err, sizeof(err)) == 0, "a new store opens");
	CHECK(knowledge_new(s, &k) == 0, "knowledge over it");

	CHECK(knowledge_path_is_valid("notes") && knowledge_path_is_valid("a/b.c/d_e-f"),
	      "task names, nested");
	CHECK(!knowledge_path_is_valid(".x") && !knowledge_path_is_valid("a//b") &&
		      !knowledge_path_is_valid("/a") && !knowledge_path_is_valid("a/") &&
		      !knowledge_path_is_valid("a/../b") && !knowledge_path_is_valid("a b") &&
		      !knowledge_path_is_valid(""),
	      "odd paths refused");

	int64_t v = 0;
	CHECK(knowledge_write(k, "doc", 0, "one", 3, 1000, &v) == 0 && v == 1, "version 1");
	CHECK(knowledge_write(k, "doc", 1, "two", 3, 1000, &v) == 0 && v == 2, "version 2");
	CHECK(knowledge_write(k, "doc", 1, "late", 4, 1001, &v) == -EBUSY && v == 2,
	      "a writer behind the latest: EBUSY");
	CHECK(knowledge_write(k, "doc", -1, "any", 3, 1001, &v) == 0 && v == 3,
	      "base -1 commits after whatever is latest");
	CHECK(read_is(k, "doc", 0, "any") && read_is(k, "doc", 1, "one") &&
		      read_is(k, "doc", 2, "two"),
	      "every version reads back");
	struct knowledge_stat ks;
	CHECK(knowledge_stat(k, "doc", &ks) == 0 && !ks.dir && ks.version == 3 && ks.size == 3 &&
		      ks.uid == 1001,
	      "stat: latest version, size, writer");
	CHECK(knowledge_write(k, "big", 0, NULL, KNOWLEDGE_DOC_MAX + 1, 0, NULL) == -EFBIG,
	      "beyond 1 MiB: EFBIG");
	CHECK(knowledge_write(k, "no/parent", 0, "x", 1, 0, NULL) == -ENOENT,
	      "no parent directory: ENOENT");

	CHECK(knowledge_delete(k, "doc", 1000) == 0, "delete");
	CHECK(knowledge_stat(k, "doc", &ks) == -ENOENT && knowledge_latest(k, "doc") == 4,
	      "a deletion is version 4, and the name is gone");
	CHECK(knowledge_read(k, "doc", 0, &(struct buf){0}) == -ENOENT && read_is(k, "doc", 4, ""),
	      "the latest reads ENOENT, the deleted version empty");
	CHECK(knowledge_delete(k, "doc", 1000) == -ENOENT, "deleting twice: ENOENT");
	CHECK(knowledge_write(k, "doc", 4, "back", 4, 1000, &v) == 0 && v == 5,
	      "written again after the deletion");

	CHECK(knowledge_mkdir(k, "runs", 1000) == 0 && knowledge_mkdir(k, "runs", 1000) == -EEXIST,
	      "mkdir, twice EEXIST");
	CHECK(knowledge_mkdir(k, "doc", 1000) == -EEXIST, "mkdir over a document: EEXIST");
	CHECK(knowledge_write(k, "runs", 0, "x", 1, 0, NULL) == -EISDIR,
	      "write a directory: EISDIR");
	CHECK(knowledge_write(k, "runs/r1", 0, "loss", 4, 0, NULL) == 0, "a document in it");
	CHECK(knowledge_rmdir(k, "runs") == -ENOTEMPTY, "rmdir of a full directory: ENOTEMPTY");
	knowledge_write(k, "gone", 0, "x", 1, 0, NULL);
	knowledge_delete(k, "gone", 0);
	size_t n;
	CHECK(list_is(knowledge_list(k, "", false, &n), &n, (const char *[]){"doc", "runs"}, 2),
	      "the top lists live documents and directories");
	CHECK(list_is(knowledge_list(k, "", true, &n), &n, (const char *[]){"doc", "gone", "runs"},
		      3),
	      "with deleted ones for .versions");
	CHECK(list_is(knowledge_versions(k, "doc", &n), &n,
		      (const char *[]){"1", "2", "3", "4", "5"}, 5),
	      "the versions, oldest first");

	knowledge_hold(k, "runs/new", 1002);
	CHECK(knowledge_stat(k, "runs/new", &ks) == 0 && ks.version == 0 && ks.size == 0 &&
		      ks.uid == 1002,
	      "a held create is an empty document at version 0");
	CHECK(list_is(knowledge_list(k, "runs", false, &n), &n, (const char *[]){"new", "r1"}, 2),
	      "and is listed");
	knowledge_release(k, "runs/new");
	CHECK(knowledge_stat(k, "runs/new", &ks) == -ENOENT, "released uncommitted: gone");

	struct seen seen = {0};
	int got = knowledge_since(k, 0, 100, saw, &seen);
	bool ordered = got == (int) seen.n && seen.n == 8;
	for (size_t i = 1; i < seen.n; i++)
		ordered &= seen.seqs[i] == seen.seqs[i - 1] + 1;
	CHECK(ordered && seen.deleted[3] && knowledge_seq(k) == seen.seqs[seen.n - 1],
	      "every version in seq order, deletions marked");
	memset(&seen, 0, sizeof(seen));
	CHECK(knowledge_since(k, 7, 1, saw, &seen) == 1 && seen.seqs[0] == 8,
	      "from a cursor, at most max");

	knowledge_free(k);
	store_close(s);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		return 1;
	return check_done();
}
