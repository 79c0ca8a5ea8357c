/* The inode table: inode numbers are a hash of the path, so they are stable across
 * restarts (NFS file handles survive); the table remembers which paths the kernel knows
 * and how many lookups it holds on each. Thread-safe. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define INODE_ROOT 1

struct inode_table;

/* The inode number of a path: 1 for "/", else a 63-bit FNV-1a hash (never 0 or 1). */
uint64_t inode_hash_path(const char *path);

int inode_table_new(struct inode_table **ret);
void inode_table_free(struct inode_table *t);
/* Records one more kernel lookup of path; returns its inode number. */
uint64_t inode_table_ref(struct inode_table *t, const char *path);
/* The path of a known inode as a new string, or NULL when the kernel holds none. */
char *inode_table_path(struct inode_table *t, uint64_t ino);
/* Drops n lookups; the entry goes when none are left (the root stays). */
void inode_table_forget(struct inode_table *t, uint64_t ino, uint64_t n);
/* After a rename: the inode the kernel knows for old_path now names new_path (the kernel
 * keeps its inode across a rename). */
void inode_table_rename(struct inode_table *t, const char *old_path, const char *new_path);
/* True when the kernel holds the inode. */
bool inode_table_known(struct inode_table *t, uint64_t ino);
/* Calls fn for each known path that starts with prefix (under the table lock: fn must not
 * call back into the table). */
void inode_table_foreach(struct inode_table *t, const char *prefix,
			 void (*fn)(void *arg, uint64_t ino, const char *path), void *arg);
