/* one_worker: a process with one worker around a loaded config, as sluice_start makes it but
 * with no loop, handles or sockets: the unit tests of pools, budgets, the ledger and the state
 * machines build their objects on it. Its lists are empty, its budgets synced; loop is NULL
 * until a test sets one. NULL when out of memory. one_worker_free frees the process, not cfg. */
#ifndef SLUICE_TEST_ONE_WORKER_H
#define SLUICE_TEST_ONE_WORKER_H

#include <stdlib.h>

#include "sluice.h"

static inline struct worker *one_worker_new(struct config *cfg)
{
    struct process *proc = calloc(1, sizeof(*proc));
    if (!proc)
        return NULL;
    struct worker *worker = &proc->workers[0];
    proc->cfg = worker->cfg = cfg;
    proc->nworkers = 1;
    worker->proc = proc;
    list_init(&worker->pools);
    list_init(&worker->login_clients);
    list_init(&worker->closing_clients);
    list_init(&worker->dead_clients);
    list_init(&worker->dead_servers);
    if (budget_sync(proc) < 0) {
        free(proc);
        return NULL;
    }
    return worker;
}

/* The budgets and the ledger go; the pools must be gone already. */
static inline void one_worker_free(struct worker *worker)
{
    budget_free_all(worker->proc);
    ledger_free(&worker->proc->ledger);
    free(worker->proc);
}

#endif
