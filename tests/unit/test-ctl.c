/* Unit tests for backend/ctl: the one parser of the ctl files' commands. Prints TAP ("ok N -
 * name"); exits non-zero when any check failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ctl.h"

#include "tests/unit/check.h"

static const struct ctl_word words[] = {
	{"cancel", NULL, NULL},
	{"retry", NULL, NULL},
	{"priority", "P0..P3", "a priority"},
};
#define N_WORDS (sizeof(words) / sizeof(*words))

/* Parses cmd; the error sentence goes to err. Returns what ctl_parse returned. */
static int parse(const char *cmd, struct ctl_command *c, char *err, size_t len)
{
	err[0] = '\0';
	return ctl_parse(cmd, words, N_WORDS, c, err, len);
}

static void test_accepted(void)
{
	struct ctl_command c;
	char err[256];
	CHECK(parse("cancel", &c, err, sizeof(err)) == 0 && c.word == 0 && !c.arg, "a word alone");
	ctl_command_clear(&c);
	CHECK(parse("  retry\r\n", &c, err, sizeof(err)) == 0 && c.word == 1 && !c.arg,
	      "spaces and line ends around it are not part of it");
	ctl_command_clear(&c);
	CHECK(parse("priority\tP1\n", &c, err, sizeof(err)) == 0 && c.word == 2 && c.arg &&
		      !strcmp(c.arg, "P1"),
	      "a word and its argument, a tab between");
	ctl_command_clear(&c);
	CHECK(!c.arg, "clear frees the argument");
}

static void test_refused(void)
{
	struct ctl_command c;
	char err[256];
	CHECK(parse("", &c, err, sizeof(err)) == -EINVAL &&
		      !strcmp(err, "empty command; write cancel, retry or priority P0..P3"),
	      "empty: one sentence with the usage");
	CHECK(parse(NULL, &c, err, sizeof(err)) == -EINVAL && strstr(err, "empty command"),
	      "NULL is empty");
	CHECK(parse(" \n", &c, err, sizeof(err)) == -EINVAL && strstr(err, "empty command"),
	      "blanks only are empty");
	CHECK(parse("cancle", &c, err, sizeof(err)) == -EINVAL &&
		      !strcmp(err, "unknown command \"cancle\"; did you mean \"cancel\"; write "
				   "cancel, retry or priority P0..P3"),
	      "a misspelt word: did you mean the nearest");
	CHECK(parse("frobnicate", &c, err, sizeof(err)) == -EINVAL &&
		      strstr(err, "unknown command \"frobnicate\"; write") &&
		      !strstr(err, "did you mean"),
	      "an unknown word far from all: no guess");
	CHECK(parse("priority", &c, err, sizeof(err)) == -EINVAL &&
		      !strcmp(err, "priority needs a priority: priority P0..P3"),
	      "a missing argument");
	CHECK(parse("priority P1 P2", &c, err, sizeof(err)) == -EINVAL &&
		      !strcmp(err, "one command per write: priority P0..P3 (got \"P2\" after "
				   "\"P1\")"),
	      "two arguments");
	CHECK(parse("cancel now", &c, err, sizeof(err)) == -EINVAL &&
		      strstr(err, "cancel takes no argument (got \"now\")"),
	      "an argument to a word that takes none");
	CHECK(parse("CANCEL", &c, err, sizeof(err)) == -EINVAL &&
		      strstr(err, "unknown command \"CANCEL\""),
	      "words are case-sensitive");
	CHECK(c.word == -1 && !c.arg, "a refused command holds nothing");
	char small[16];
	CHECK(parse("cancle", &c, small, sizeof(small)) == -EINVAL && strlen(small) == 15,
	      "a small error buffer gets the sentence cut, terminated");
}

int main(void)
{
	test_accepted();
	test_refused();
	return check_done();
}
