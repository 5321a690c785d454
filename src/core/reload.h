/* reload: what makes a new config generation after start, the verbs sluice.h declares
 * (sluice_reload, sluice_set, sluice_set_cancel, sluice_reload_done): a reload re-reads the
 * config file and environment, a console SET changes one key of a copy of the running config;
 * the files either names are read off the loop by the reload reader (reload_reader.h), one read
 * at a time in the order asked, and the result becomes the process's generation on the control
 * thread (budgets synced, every worker told), its files put in force as read. This header is
 * sluice.c's: the reader set up at start, and what is left freed at the end. */
#ifndef SLUICE_RELOAD_H
#define SLUICE_RELOAD_H

#include <uv.h>

#include "sluice.h"

/* The reader's handles on loop (proc->sets is initialised by sluice_start, before anything
 * can fail, so that reload_free always finds a list). 0 or UV_E*. */
int reload_init(struct process *proc, uv_loop_t *loop) __attribute__((warn_unused_result));
/* The SETs never answered (their consoles are gone). */
void reload_free(struct process *proc);

#endif
