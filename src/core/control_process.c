/* control_process: the commands that act on the whole process, not on pools (see control.h):
 * RELOAD and SET publish a new config generation, SHUTDOWN moves the process's phase; sluice.c
 * does both, as for a signal. Apart from control.c, whose pool commands sluice.c runs on each
 * worker (its worker handlers, its tick): control.c sits below sluice.c, this file above it. */
#include "control.h"

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

enum sluice_set_result control_set(struct worker *worker, const char *key, const char *value,
                                   unsigned *id, char *err, size_t errlen)
{
    return sluice_set(worker->proc, key, value, id, err, errlen);
}

void control_set_cancel(struct worker *worker, unsigned id)
{
    sluice_set_cancel(worker->proc, id);
}
