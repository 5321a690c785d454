/* control_process: the commands that act on the whole process, not on pools (see control.h):
 * RELOAD and SET publish a new config generation, SHUTDOWN moves the process's phase; sluice.c
 * does both, as for a signal. Apart from control.c, whose pool commands sluice.c runs on each
 * worker (its worker handlers, its tick): control.c sits below sluice.c, this file above it. */
#include "control.h"

#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "tls.h"
#include "worker.h"

unsigned control_reload(struct worker *worker)
{
    return sluice_reload(worker->proc);
}

bool control_reload_done(const struct worker *worker)
{
    return sluice_reload_done(worker->proc);
}

void control_shutdown(struct worker *worker, enum sluice_phase phase)
{
    sluice_shutdown(worker->proc, phase);
}

int control_set(struct worker *worker, const char *key, const char *value, char *err, size_t errlen)
{
    /* Never in place: every worker reads its own reference to a generation (5.7). The change
     * goes into a copy, checked with the other main keys (config_set_key), which then becomes
     * the next generation exactly as a reload's would. */
    struct process *proc = worker->proc;
    struct config *next = config_copy(proc->cfg);
    if (!next) {
        snprintf(err, errlen, "out of memory copying the configuration");
        return -1;
    }
    if (config_set_key(next, key, value, SRC_ADMIN_SET, err, errlen) < 0) {
        config_free(next);
        return -1;
    }
    /* logging, the client TLS context and the hba rules are the process's: put in force from
     * the files as read when key is one of theirs */
    return sluice_set_generation(proc, next, key, err, errlen) ? 0 : -1;
}
