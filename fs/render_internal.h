/* Rendering: the private header of fs/render*.c, never included elsewhere. It holds the
 * helpers the renderers of several areas share (fs/render.c defines them). */
#pragma once

#include "backend/cluster.h"

#include <stddef.h>

/* v rounded to a multiple of unit (0.001: milliseconds of a second). */
double render_round_to(double v, double unit);

/* Views of every node, in name order: a new array of *ret_n views (free with
 * render_free_views); *ret_mtime gets the latest change among them and the node table. */
struct node_view *render_all_views(struct cluster *c, size_t *ret_n, double *ret_mtime);

/* Clears and frees what render_all_views returned. */
void render_free_views(struct node_view *views, size_t n);
