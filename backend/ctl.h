/* The commands written to the ctl files (nodes/NODE/ctl, nodes/NODE/models/ctl,
 * tasks/ID/ctl): one word, at most one argument, parsed one way for all three, and every
 * refusal one sentence that ends with how to write it ("write pull NAME, ... or unload
 * NAME"). The caller owns the word table; a parsed command owns its argument. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* A word a ctl file knows. arg: how the usage writes its argument ("NAME"), or NULL when
 * the word takes none; arg_what: the argument in a sentence ("a model name"). */
struct ctl_word {
	const char *name;
	const char *arg;
	const char *arg_what;
};

struct ctl_command {
	int word;  /* index into the word table */
	char *arg; /* the argument, or NULL for a word that takes none */
};

/* Parses cmd: WORD or WORD ARG, spaces, tabs and line ends around and between ignored.
 * Returns 0, or -EINVAL with the sentence in errbuf: an empty command, an
 * unknown word (naming the nearest known one when it is close: "did you mean"), a missing
 * argument, an argument to a word that takes none, more than one argument. */
int ctl_parse(const char *cmd, const struct ctl_word *words, size_t n_words,
	      struct ctl_command *ret, char *errbuf, size_t errlen);
void ctl_command_clear(struct ctl_command *c);
