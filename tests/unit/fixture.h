/* fixture.h: the app the unit tests of the core build by hand, with no sockets and no listener:
 * a config from a string, the lists the core walks, budgets synced from the config. Pools come
 * from pool_get, the real constructor; servers are calloc'd structs a test puts on a pool's
 * lists itself. Included by one test file each, so every function is static inline. */
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

/* An app from ini (fixture_config); with loop, that loop is initialised and is the app's, else
 * the app has none. NULL, a failed CHECK, when the config does not load or its budgets do not
 * sync. */
static inline struct sluice *fixture_app(const char *ini, uv_loop_t *loop)
{
    struct config *cfg = fixture_config(ini);
    if (!cfg)
        return NULL;
    struct sluice *app = calloc(1, sizeof(*app));
    app->cfg = cfg;
    if (loop) {
        uv_loop_init(loop);
        app->loop = loop;
    }
    list_init(&app->pools);
    list_init(&app->login_clients);
    list_init(&app->closing_clients);
    list_init(&app->dead_clients);
    list_init(&app->dead_servers);
    int synced = budget_sync(app);
    CHECK_INT(synced, 0);
    if (synced < 0) {
        budget_free_all(app);
        config_free(cfg);
        free(app);
        return NULL;
    }
    return app;
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

/* Free app and what it holds: its pools with the servers on their lists, the dead servers,
 * budgets, ledger and config, then close its loop if it has one. Clients are the test's. */
static inline void fixture_app_free(struct sluice *app)
{
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        struct list *servers[] = {&p->connecting, &p->idle, &p->active, &p->resetting, &p->leaving};
        for (size_t i = 0; i < sizeof(servers) / sizeof(servers[0]); i++)
            fixture_free_servers(servers[i]);
        list_remove(&app->pools, n);
        pool_free(p);
    }
    fixture_free_servers(&app->dead_servers);
    budget_free_all(app);
    ledger_free(&app->ledger);
    config_free(app->cfg);
    uv_loop_t *loop = app->loop;
    free(app);
    if (loop)
        uv_loop_close(loop);
}

#endif
