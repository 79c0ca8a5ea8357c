/* The inode table: path-hash inode numbers with lookup counts. */
#include "fs/inode.h"
#include "backend/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct inode {
	uint64_t ino;
	char *path;
	uint64_t nlookup;
	struct inode *next; /* hash chain */
};

struct inode_table {
	pthread_mutex_t lock;
	struct inode **buckets; /* protected by lock */
	size_t n_buckets;
	size_t n;
};

uint64_t inode_hash_path(const char *path)
{
	if (strcmp(path, "/") == 0)
		return INODE_ROOT;
	uint64_t h = 0xcbf29ce484222325ull;
	for (const unsigned char *p = (const unsigned char *) path; *p; p++) {
		h ^= *p;
		h *= 0x100000001b3ull;
	}
	h &= 0x7fffffffffffffffull;
	if (h <= INODE_ROOT)
		h += 2;
	return h;
}

int inode_table_new(struct inode_table **ret)
{
	struct inode_table *t = xcalloc(1, sizeof(*t));
	t->n_buckets = 1024;
	t->buckets = xcalloc(t->n_buckets, sizeof(*t->buckets));
	pthread_mutex_init(&t->lock, NULL);
	inode_table_ref(t, "/");
	*ret = t;
	return 0;
}

void inode_table_free(struct inode_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_buckets; i++) {
		struct inode *n = t->buckets[i];
		while (n) {
			struct inode *next = n->next;
			free(n->path);
			free(n);
			n = next;
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static struct inode *find_locked(struct inode_table *t, uint64_t ino)
{
	assert_held(&t->lock);
	for (struct inode *n = t->buckets[ino % t->n_buckets]; n; n = n->next)
		if (n->ino == ino)
			return n;
	return NULL;
}

static void grow_locked(struct inode_table *t)
{
	assert_held(&t->lock);
	size_t nb = t->n_buckets * 2;
	struct inode **b = xcalloc(nb, sizeof(*b));
	for (size_t i = 0; i < t->n_buckets; i++) {
		struct inode *n = t->buckets[i];
		while (n) {
			struct inode *next = n->next;
			n->next = b[n->ino % nb];
			b[n->ino % nb] = n;
			n = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->n_buckets = nb;
}

uint64_t inode_table_ref(struct inode_table *t, const char *path)
{
	uint64_t ino = inode_hash_path(path);
	pthread_mutex_lock(&t->lock);
	struct inode *n = find_locked(t, ino);
	if (!n) {
		n = xcalloc(1, sizeof(*n));
		n->ino = ino;
		n->path = xstrdup(path);
		n->next = t->buckets[ino % t->n_buckets];
		t->buckets[ino % t->n_buckets] = n;
		if (++t->n > t->n_buckets)
			grow_locked(t);
	}
	n->nlookup++;
	pthread_mutex_unlock(&t->lock);
	return ino;
}

char *inode_table_path(struct inode_table *t, uint64_t ino)
{
	pthread_mutex_lock(&t->lock);
	struct inode *n = find_locked(t, ino);
	char *p = n ? xstrdup(n->path) : NULL;
	pthread_mutex_unlock(&t->lock);
	return p;
}

bool inode_table_known(struct inode_table *t, uint64_t ino)
{
	pthread_mutex_lock(&t->lock);
	bool r = find_locked(t, ino) != NULL;
	pthread_mutex_unlock(&t->lock);
	return r;
}

void inode_table_forget(struct inode_table *t, uint64_t ino, uint64_t nlookup)
{
	if (ino == INODE_ROOT)
		return;
	pthread_mutex_lock(&t->lock);
	struct inode **pp = &t->buckets[ino % t->n_buckets];
	while (*pp && (*pp)->ino != ino)
		pp = &(*pp)->next;
	struct inode *n = *pp;
	if (n) {
		n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
		if (n->nlookup == 0) {
			*pp = n->next;
			free(n->path);
			free(n);
			t->n--;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

void inode_table_foreach(struct inode_table *t, const char *prefix,
			 void (*fn)(void *arg, uint64_t ino, const char *path), void *arg)
{
	size_t pl = strlen(prefix);
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n_buckets; i++)
		for (struct inode *n = t->buckets[i]; n; n = n->next)
			if (strncmp(n->path, prefix, pl) == 0)
				fn(arg, n->ino, n->path);
	pthread_mutex_unlock(&t->lock);
}

void inode_table_rename(struct inode_table *t, const char *old_path, const char *new_path)
{
	uint64_t ino = inode_hash_path(old_path);
	pthread_mutex_lock(&t->lock);
	struct inode *n = find_locked(t, ino);
	if (n) {
		char *p = xstrdup(new_path);
		free(n->path);
		n->path = p;
	}
	pthread_mutex_unlock(&t->lock);
}
