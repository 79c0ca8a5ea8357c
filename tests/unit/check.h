/* The unit tests' one macro: CHECK(cond, name) prints a TAP line, "ok N - name" or
 * "not ok N - name" with where and what failed; a program ends with
 * `return check_done();`, which prints the plan and fails when a check did. */
#pragma once

#include <stdio.h>

static int n_checks, n_failed;

#define CHECK(cond, name)                                                                          \
	do {                                                                                       \
		n_checks++;                                                                        \
		if (cond) {                                                                        \
			printf("ok %d - %s\n", n_checks, name);                                    \
		} else {                                                                           \
			n_failed++;                                                                \
			printf("not ok %d - %s\n#   %s:%d: %s\n", n_checks, name, __FILE__,        \
			       __LINE__, #cond);                                                   \
		}                                                                                  \
	} while (0)

static inline int check_done(void)
{
	printf("1..%d\n", n_checks);
	return n_failed ? 1 : 0;
}
