/* knowledge/ in the tree. */
#include "fs/knowledge.h"
#include "backend/spec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int fs_knowledge_stat(const struct tree_ctx *ctx, const struct tree_entry *e, struct stat *st,
		      double *ret_mtime)
{
	struct knowledge_stat ks = {0};
	int r = 0;
	if (e->kind == TREE_KNOWLEDGE_VERSION)
		r = knowledge_version_stat(ctx->knowledge, e->file, strtoll(e->name, NULL, 10),
					   &ks);
	else if (e->kind == TREE_KNOWLEDGE_DOC || e->kind == TREE_KNOWLEDGE)
		r = knowledge_stat(ctx->knowledge, e->file ? e->file : "", &ks);
	if (r < 0)
		return r;
	if (e->row->type == TREE_DIR) {
		st->st_mode = S_IFDIR | e->row->mode;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | e->row->mode;
		st->st_nlink = 1;
		st->st_size = (off_t) ks.size;
		st->st_blocks = (blkcnt_t) ((ks.size + 511) / 512);
		st->st_uid = ks.uid;
	}
	if (ks.mtime > 0)
		*ret_mtime = ks.mtime;
	return 0;
}

int fs_knowledge_read(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out)
{
	int64_t version = e->kind == TREE_KNOWLEDGE_VERSION ? strtoll(e->name, NULL, 10) : 0;
	return knowledge_read(ctx->knowledge, e->file, version, out);
}

int fs_knowledge_commit(const struct tree_ctx *ctx, const char *path, int64_t *base,
			const struct buf *bytes, uid_t uid)
{
	const char *data = bytes->data ? bytes->data : "";
	int64_t v = 0;
	int r = knowledge_write(ctx->knowledge, path, *base, data, bytes->len, uid, &v);
	if (r == 0) {
		*base = v;
		return 0;
	}
	if (r != -EBUSY) {
		log_info("knowledge/%s: not committed: %s", path, strerror(-r));
		return r;
	}
	/* someone committed since this writer opened it: keep its bytes beside */
	struct buf sibling;
	buf_init(&sibling);
	buf_printf(&sibling, "%s.conflict", path);
	int r2 = knowledge_write(ctx->knowledge, sibling.data, -1, data, bytes->len, uid, &v);
	if (r2 == 0)
		log_info("knowledge/%s: changed since it was opened (version %lld); the bytes "
			 "written are in knowledge/%s",
			 path, (long long) *base, sibling.data);
	else
		log_warn("knowledge/%s: changed since it was opened, and %s could not be "
			 "written: %s",
			 path, sibling.data, strerror(-r2));
	buf_free(&sibling);
	return -EBUSY;
}

char *fs_knowledge_child(const struct tree_entry *dir, const char *name, int *ret_err)
{
	if (!spec_name_is_valid(name)) {
		log_info("knowledge: '%s' is not a valid name (letters, digits, '.', '_', '-'; "
			 "not starting with '.')",
			 name);
		*ret_err = -EINVAL;
		return NULL;
	}
	struct buf b;
	buf_init(&b);
	const char *base = dir->file ? dir->file : ""; /* NULL: knowledge/ itself */
	buf_printf(&b, "%s%s%s", base, base[0] ? "/" : "", name);
	if (!knowledge_path_is_valid(b.data)) {
		buf_free(&b);
		*ret_err = -ENAMETOOLONG;
		return NULL;
	}
	return buf_steal(&b, NULL);
}
