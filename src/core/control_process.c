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

/* What a reload does besides the workers' part that only some keys need: logging, the client
 * TLS context and the hba rules are the process's, reloaded only when SET changed one of their
 * keys. */
static void apply_set(const struct config *cfg, const char *key)
{
    if (strcmp(key, "log_level") == 0 || strcmp(key, "log_format") == 0 ||
        strcmp(key, "logfile") == 0) {
        log_configure(cfg->log_level, cfg->log_format == LOG_FORMAT_JSON, cfg->logfile);
    }
    if (strncmp(key, "client_tls_", 11) == 0)
        tls_reload(cfg);
    if (strncmp(key, "auth_", 5) == 0)
        auth_reload(cfg);
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
    if (config_set_key(next, key, value, SRC_ADMIN_SET, err, errlen) < 0 ||
        !sluice_files_usable(next, err, errlen)) {
        config_free(next);
        return -1;
    }
    sluice_apply_generation(proc, next);
    apply_set(proc->cfg, key);
    return 0;
}
