/* ledger_fixture.h: what the ledger's unit tests (test_ledger.c, test_ledger_threads.c) share:
 * a worker from a config (fixture.h), a pool's backend taken and given as pool.c and close_now
 * do it (a bare struct server on the pool's idle list), and a client address. */
#ifndef SLUICE_TEST_LEDGER_FIXTURE_H
#define SLUICE_TEST_LEDGER_FIXTURE_H

#include "check.h"
#include "fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "ledger.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"

/* The names these tests use for the shared fixture (kept: other branches add tests here). */
static inline struct worker *app_from(const char *ini)
{
    return fixture_worker(ini, NULL);
}

static inline void free_app(struct worker *worker)
{
    fixture_worker_free(worker);
}

/* What a pool's next backend is held to, as pool.c asks (budget.c resolves the config). */
static inline enum limit_kind take(struct pool *p, bool use_reserve)
{
    struct ledger_caps caps;
    budget_server_caps(p, use_reserve, &caps);
    enum limit_kind k =
        ledger_take_server(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index, &caps);
    if (k == LIMIT_NONE) { /* what server_connect does with the slot: a server on a list */
        struct server *s = calloc(1, sizeof(*s));
        s->pool = p;
        list_append(&p->idle, &s->node);
        p->worker->nservers++;
    }
    return k;
}

/* A server of p is gone (close_now): off its list, its slot back. */
static inline void give(struct pool *p)
{
    struct server *s = container_of(list_last(&p->idle), struct server, node);
    list_remove(&p->idle, &s->node);
    free(s);
    p->worker->nservers--;
    ledger_give_server(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index);
}
/* A client address (127.0.0.1) for budget_join. */
static inline union peer_addr local_addr(void)
{
    union peer_addr a;
    memset(&a, 0, sizeof(a));
    a.in.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.in.sin_addr);
    return a;
}

#endif
