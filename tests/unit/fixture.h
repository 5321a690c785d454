/* fixture.h: the process and its one worker that the unit tests of the core build by hand, as
 * sluice_start makes them but with no sockets, handles or listener: a config from a string, the
 * lists the core walks, budgets synced from the config. Pools come from pool_get, the real
 * constructor; servers are calloc'd structs a test puts on a pool's lists itself. Included by
 * one test file each, so every function is static inline. */
#ifndef SLUICE_TEST_FIXTURE_H
#define SLUICE_TEST_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "budget.h"
#include "check.h"
#include "config.h"
#include "ledger.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"

/* The config ini gives, with no environment; NULL, a failed CHECK and its errors printed, when
 * it does not load. */
static inline struct config *fixture_config(const char *ini)
{
    struct config_diag diag = {0};
    struct config *cfg = config_load_string(ini, NULL, &diag);
    for (int i = 0; i < diag.nerrors; i++)
        fprintf(stderr, "config error: %s\n", diag.errors[i]);
    config_diag_free(&diag);
    CHECK(cfg != NULL);
    return cfg;
}

/* proc's worker index, as sluice_start makes it: its config (proc's), the core's handlers and
 * empty lists; no loop, no budget generation (a test adds them when it needs them). */
static inline struct worker *fixture_add_worker(struct process *proc, unsigned index)
{
    struct worker *w = &proc->workers[index];
    w->proc = proc;
    w->index = index;
    w->cfg = proc->cfg;
    w->handlers = &sluice_worker_handlers; /* as sluice_start installs them */
    list_init(&w->pools);
    list_init(&w->login_clients);
    list_init(&w->closing_clients);
    list_init(&w->dead_clients);
    list_init(&w->dead_servers);
    return w;
}

/* A process with one worker around cfg (taken: fixture_worker_free frees it); with loop, that
 * loop is initialised and is the worker's, else the worker has none until a test sets one.
 * NULL, a failed CHECK, when cfg is NULL or its budgets do not sync. */
static inline struct worker *fixture_worker_of(struct config *cfg, uv_loop_t *loop)
{
    if (!cfg)
        return NULL;
    struct process *proc = calloc(1, sizeof(*proc));
    CHECK(proc != NULL);
    if (!proc) {
        config_free(cfg);
        return NULL;
    }
    proc->cfg = cfg;
    proc->nworkers = 1;
    struct worker *worker = fixture_add_worker(proc, 0);
    if (loop) {
        uv_loop_init(loop);
        proc->loop = worker->loop = loop;
    }
    int synced = budget_sync(proc);
    CHECK_INT(synced, 0);
    if (synced < 0) {
        budget_free_all(proc);
        config_free(cfg);
        free(proc);
        if (loop)
            uv_loop_close(loop);
        return NULL;
    }
    return worker;
}

/* The worker of a process whose config ini gives (fixture_config, fixture_worker_of). */
static inline struct worker *fixture_worker(const char *ini, uv_loop_t *loop)
{
    return fixture_worker_of(fixture_config(ini), loop);
}

static inline void fixture_free_servers(struct list *l)
{
    struct list_node *n, *tmp;
    list_for_each(l, n, tmp)
    {
        list_remove(l, n);
        free(container_of(n, struct server, node));
    }
}

/* Free the worker's process and what it holds: its pools with the servers on their lists, the
 * dead servers, budgets, ledger and config, then close its loop if it has one. Clients are the
 * test's. */
static inline void fixture_worker_free(struct worker *worker)
{
    struct process *proc = worker->proc;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        struct list *servers[] = {&p->connecting, &p->idle, &p->active, &p->resetting, &p->leaving};
        for (size_t i = 0; i < sizeof(servers) / sizeof(servers[0]); i++)
            fixture_free_servers(servers[i]);
        list_remove(&worker->pools, n);
        pool_free(p);
    }
    fixture_free_servers(&worker->dead_servers);
    budget_free_all(proc);
    ledger_free(&proc->ledger);
    config_free(proc->cfg);
    uv_loop_t *loop = worker->loop;
    free(proc);
    if (loop)
        uv_loop_close(loop);
}

#endif
