/* One parser for the ctl files' commands. */
#include "backend/ctl.h"
#include "backend/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTL_SPACE     " \t\r\n"
#define CTL_MAX_WORDS 16 /* more are never offered as "did you mean" */

/* "write A, B ARG or C": the usage every refusal ends with. */
static void usage(const struct ctl_word *words, size_t n, struct buf *b)
{
	buf_puts(b, "write ");
	for (size_t i = 0; i < n; i++) {
		if (i)
			buf_puts(b, i + 1 == n ? " or " : ", ");
		buf_puts(b, words[i].name);
		if (words[i].arg)
			buf_printf(b, " %s", words[i].arg);
	}
}

/* The word's index, or -1 with the refusal (and the nearest word) in b. */
static int find_word(const char *word, const struct ctl_word *words, size_t n, struct buf *b)
{
	const char *names[CTL_MAX_WORDS];
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(word, words[i].name))
			return (int) i;
		if (i < CTL_MAX_WORDS)
			names[i] = words[i].name;
	}
	const char *near = util_closest_word(word, names, n < CTL_MAX_WORDS ? n : CTL_MAX_WORDS, 2);
	buf_printf(b, "unknown command \"%s\"%s%s%s; ", word, near ? "; did you mean \"" : "",
		   near ? near : "", near ? "\"" : "");
	usage(words, n, b);
	return -1;
}

int ctl_parse(const char *cmd, const struct ctl_word *words, size_t n_words,
	      struct ctl_command *ret, char *errbuf, size_t errlen)
{
	*ret = (struct ctl_command){.word = -1};
	if (!cmd)
		cmd = "";
	_cleanup_free_ char *copy = xstrdup(cmd);
	char *save = NULL;
	const char *word = strtok_r(copy, CTL_SPACE, &save);
	const char *arg = word ? strtok_r(NULL, CTL_SPACE, &save) : NULL;
	const char *extra = arg ? strtok_r(NULL, CTL_SPACE, &save) : NULL;
	struct buf b;
	buf_init(&b);
	int i = -1;
	if (!word) {
		buf_puts(&b, "empty command; ");
		usage(words, n_words, &b);
	} else if ((i = find_word(word, words, n_words, &b)) < 0) {
		/* the refusal is in b */
	} else if (words[i].arg && !arg) {
		buf_printf(&b, "%s needs %s: %s %s", word, words[i].arg_what, word, words[i].arg);
	} else if (words[i].arg && extra) {
		buf_printf(&b, "one command per write: %s %s (got \"%s\" after \"%s\")", word,
			   words[i].arg, extra, arg);
	} else if (!words[i].arg && arg) {
		buf_printf(&b, "%s takes no argument (got \"%s\"); ", word, arg);
		usage(words, n_words, &b);
	} else {
		ret->word = i;
		ret->arg = arg ? xstrdup(arg) : NULL;
		buf_free(&b);
		return 0;
	}
	snprintf(errbuf, errlen, "%s", b.data);
	buf_free(&b);
	return -EINVAL;
}

void ctl_command_clear(struct ctl_command *c)
{
	free(c->arg);
	c->arg = NULL;
}
