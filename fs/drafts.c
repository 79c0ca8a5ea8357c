/* Drafts: the files in tasks/new/. */
#include "fs/drafts.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct draft {
	char *name;
	struct buf data;
	uid_t uid;
	gid_t gid;
	mode_t mode;
	double mtime;
	bool dirty;
	bool counted; /* counts against its owner's file limit (not a NAME.error) */
	int last_error;
	struct draft *next;
};

/* What one uid holds in new/. Few users submit at once: a list. */
struct draft_user {
	uid_t uid;
	size_t files, bytes;
	struct draft_user *next;
};

struct drafts {
	pthread_mutex_t lock;
	struct draft *list; /* protected by lock */
	size_t n;
	size_t bytes;             /* all drafts' bytes; protected by lock */
	struct draft_user *users; /* protected by lock */
	double changed_at;
};

int drafts_new(struct drafts **ret)
{
	struct drafts *d = xcalloc(1, sizeof(*d));
	pthread_mutex_init(&d->lock, NULL);
	d->changed_at = clock_wall_s();
	*ret = d;
	return 0;
}

static void draft_free(struct draft *x)
{
	free(x->name);
	buf_free(&x->data);
	free(x);
}

static struct draft_user *user_locked(struct drafts *d, uid_t uid)
{
	assert_held(&d->lock);
	for (struct draft_user *u = d->users; u; u = u->next)
		if (u->uid == uid)
			return u;
	struct draft_user *u = xcalloc(1, sizeof(*u));
	u->uid = uid;
	u->next = d->users;
	d->users = u;
	return u;
}

/* Whether draft x may grow to `len` bytes: 0, -EDQUOT or -ENOSPC. */
static int room_locked(struct drafts *d, const struct draft *x, size_t len,
		       const struct drafts_limits *lim)
{
	assert_held(&d->lock);
	if (len <= x->data.len)
		return 0;
	size_t more = len - x->data.len;
	if (lim && user_locked(d, x->uid)->bytes + more > lim->bytes)
		return -EDQUOT;
	if (d->bytes + more > DRAFTS_BYTES_MAX)
		return -ENOSPC;
	return 0;
}

/* Books a change of draft x's size from `old` to its present one. */
static void account_locked(struct drafts *d, const struct draft *x, size_t old)
{
	assert_held(&d->lock);
	struct draft_user *u = user_locked(d, x->uid);
	u->bytes = u->bytes + x->data.len - old;
	d->bytes = d->bytes + x->data.len - old;
}

void drafts_free(struct drafts *d)
{
	if (!d)
		return;
	while (d->users) {
		struct draft_user *next = d->users->next;
		free(d->users);
		d->users = next;
	}
	while (d->list) {
		struct draft *next = d->list->next;
		draft_free(d->list);
		d->list = next;
	}
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static struct draft *find_locked(struct drafts *d, const char *name)
{
	assert_held(&d->lock);
	for (struct draft *x = d->list; x; x = x->next)
		if (!strcmp(x->name, name))
			return x;
	return NULL;
}

static struct draft *add_locked(struct drafts *d, const char *name, uid_t uid, gid_t gid,
				mode_t mode)
{
	assert_held(&d->lock);
	struct draft *x = xcalloc(1, sizeof(*x));
	x->name = xstrdup(name);
	buf_init(&x->data);
	x->uid = uid;
	x->gid = gid;
	x->mode = mode;
	x->mtime = clock_wall_s();
	x->next = d->list;
	d->list = x;
	d->n++;
	d->changed_at = x->mtime;
	return x;
}

int drafts_create(struct drafts *d, const char *name, uid_t uid, gid_t gid, mode_t mode,
		  const struct drafts_limits *lim)
{
	pthread_mutex_lock(&d->lock);
	int r = 0;
	if (find_locked(d, name))
		r = -EEXIST;
	else if (lim && user_locked(d, uid)->files >= lim->files)
		r = -EDQUOT;
	else if (d->n >= DRAFTS_MAX)
		r = -ENOSPC;
	else {
		add_locked(d, name, uid, gid, mode & 0666)->counted = true;
		user_locked(d, uid)->files++;
	}
	pthread_mutex_unlock(&d->lock);
	return r;
}

void drafts_put(struct drafts *d, const char *name, uid_t uid, gid_t gid, const char *text)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	if (!x)
		x = add_locked(d, name, uid, gid, 0400);
	size_t old = x->data.len;
	buf_free(&x->data);
	buf_puts(&x->data, text);
	account_locked(d, x, old);
	/* an error may quote the spec (its env): its owner's to read */
	x->mode = 0400;
	x->mtime = d->changed_at = clock_wall_s();
	pthread_mutex_unlock(&d->lock);
}

bool drafts_exists(struct drafts *d, const char *name)
{
	pthread_mutex_lock(&d->lock);
	bool r = find_locked(d, name) != NULL;
	pthread_mutex_unlock(&d->lock);
	return r;
}

int drafts_stat(struct drafts *d, const char *name, struct draft_info *ret)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	if (x)
		*ret = (struct draft_info){x->data.len, x->uid, x->gid, x->mode, x->mtime};
	pthread_mutex_unlock(&d->lock);
	return x ? 0 : -ENOENT;
}

int drafts_write(struct drafts *d, const char *name, const char *data, size_t len, size_t off,
		 size_t max, const struct drafts_limits *lim)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	int r = 0;
	if (!x) {
		r = -ENOENT;
	} else if (off + len > max) {
		r = -EFBIG;
	} else if ((r = room_locked(d, x, off + len, lim)) == 0) {
		size_t old = x->data.len;
		if (off > x->data.len) {
			size_t gap = off - x->data.len;
			char *zeros = xcalloc(1, gap);
			buf_append(&x->data, zeros, gap);
			free(zeros);
		}
		size_t overlap = x->data.len > off ? x->data.len - off : 0;
		if (overlap > len)
			overlap = len;
		if (overlap)
			memcpy(x->data.data + off, data, overlap);
		buf_append(&x->data, data + overlap, len - overlap);
		account_locked(d, x, old);
		x->dirty = true;
		x->mtime = d->changed_at = clock_wall_s();
	}
	pthread_mutex_unlock(&d->lock);
	return r;
}

int drafts_truncate(struct drafts *d, const char *name, size_t size, size_t max,
		    const struct drafts_limits *lim)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	int r = 0;
	if (!x) {
		r = -ENOENT;
	} else if (size > max) {
		r = -EFBIG;
	} else if ((r = room_locked(d, x, size, lim)) == 0) {
		size_t old = x->data.len;
		if (size > x->data.len) {
			size_t gap = size - x->data.len;
			char *zeros = xcalloc(1, gap);
			buf_append(&x->data, zeros, gap);
			free(zeros);
		} else if (x->data.data) {
			x->data.len = size;
			x->data.data[size] = '\0';
		}
		account_locked(d, x, old);
		x->dirty = true;
		x->mtime = d->changed_at = clock_wall_s();
	}
	pthread_mutex_unlock(&d->lock);
	return r;
}

int drafts_read(struct drafts *d, const char *name, struct buf *out)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	if (x)
		buf_append(out, x->data.data ? x->data.data : "", x->data.len);
	pthread_mutex_unlock(&d->lock);
	return x ? 0 : -ENOENT;
}

bool drafts_take_dirty(struct drafts *d, const char *name)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	bool r = x && x->dirty;
	if (x)
		x->dirty = false;
	pthread_mutex_unlock(&d->lock);
	return r;
}

int drafts_last_error(struct drafts *d, const char *name)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	int r = x ? x->last_error : 0;
	pthread_mutex_unlock(&d->lock);
	return r;
}

void drafts_set_last_error(struct drafts *d, const char *name, int err)
{
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, name);
	if (x)
		x->last_error = err;
	pthread_mutex_unlock(&d->lock);
}

int drafts_remove(struct drafts *d, const char *name)
{
	pthread_mutex_lock(&d->lock);
	int r = -ENOENT;
	for (struct draft **pp = &d->list; *pp; pp = &(*pp)->next) {
		if (!strcmp((*pp)->name, name)) {
			struct draft *x = *pp;
			*pp = x->next;
			struct draft_user *u = user_locked(d, x->uid);
			u->bytes -= x->data.len;
			d->bytes -= x->data.len;
			if (x->counted)
				u->files--;
			draft_free(x);
			d->n--;
			d->changed_at = clock_wall_s();
			r = 0;
			break;
		}
	}
	pthread_mutex_unlock(&d->lock);
	return r;
}

int drafts_rename(struct drafts *d, const char *from, const char *to)
{
	if (!strcmp(from, to))
		return drafts_exists(d, from) ? 0 : -ENOENT;
	pthread_mutex_lock(&d->lock);
	struct draft *x = find_locked(d, from);
	if (!x) {
		pthread_mutex_unlock(&d->lock);
		return -ENOENT;
	}
	pthread_mutex_unlock(&d->lock);
	drafts_remove(d, to);
	pthread_mutex_lock(&d->lock);
	x = find_locked(d, from);
	if (x) {
		free(x->name);
		x->name = xstrdup(to);
		x->mtime = d->changed_at = clock_wall_s();
	}
	pthread_mutex_unlock(&d->lock);
	return x ? 0 : -ENOENT;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

char **drafts_list(struct drafts *d, size_t *ret_n)
{
	pthread_mutex_lock(&d->lock);
	char **names = xcalloc(d->n + 1, sizeof(*names));
	size_t n = 0;
	for (struct draft *x = d->list; x; x = x->next)
		names[n++] = xstrdup(x->name);
	pthread_mutex_unlock(&d->lock);
	qsort(names, n, sizeof(*names), cmp_str);
	*ret_n = n;
	return names;
}

double drafts_changed_at(struct drafts *d)
{
	pthread_mutex_lock(&d->lock);
	double r = d->changed_at;
	pthread_mutex_unlock(&d->lock);
	return r;
}
