/* Unit tests for the client state machine (client.c): the transition table, and what
 * client_set_state does on a move (lists, a wait's notice), on a pool built by hand (no
 * sockets). */
#include "check.h"

#include <stdlib.h>
#include <uv.h>

#include "budget.h"
#include "client.h"
#include "config.h"
#include "pool.h"
#include "sluice.h"

#define NSTATES (CLIENT_CLOSED + 1)
#define TO(st) (1u << (st))

/* The table as docs/architecture.md 2.1 states it, besides CLOSING and CLOSED. */
static const unsigned documented[NSTATES] = {
    [CLIENT_STARTUP] = TO(CLIENT_AUTH) | TO(CLIENT_TLS_HANDSHAKE) | TO(CLIENT_CANCEL_WAIT),
    [CLIENT_TLS_HANDSHAKE] = TO(CLIENT_STARTUP),
    [CLIENT_AUTH] = TO(CLIENT_LOGIN_WAIT) | TO(CLIENT_IDLE),
    [CLIENT_LOGIN_WAIT] = TO(CLIENT_ACTIVE) | TO(CLIENT_IDLE) | TO(CLIENT_LOGIN_SYNC),
    [CLIENT_LOGIN_SYNC] = TO(CLIENT_ACTIVE) | TO(CLIENT_LOGIN_REFUSED),
    [CLIENT_IDLE] = TO(CLIENT_WAITING),
    [CLIENT_WAITING] = TO(CLIENT_ACTIVE) | TO(CLIENT_IDLE) | TO(CLIENT_WAITING_LAST),
    [CLIENT_WAITING_LAST] = TO(CLIENT_ACTIVE),
    [CLIENT_ACTIVE] = TO(CLIENT_IDLE),
};

static void the_table_is_the_documented_one(void)
{
    for (int from = 0; from < NSTATES; from++) {
        for (int to = 0; to < NSTATES; to++) {
            bool want;
            if (to == CLIENT_CLOSED)
                want = from != CLIENT_CLOSED; /* client_close: the one close path */
            else if (to == CLIENT_CLOSING)
                want = from != CLIENT_CLOSED && from != CLIENT_CLOSING;
            else
                want = (documented[from] & TO(to)) != 0;
            if (client_transition_ok(from, to) != want)
                fprintf(stderr, "%s -> %s\n", client_state_name(from), client_state_name(to));
            CHECK(client_transition_ok(from, to) == want);
        }
    }
}

static void every_state_has_a_name(void)
{
    for (int st = 0; st < NSTATES; st++)
        CHECK(client_state_name(st) != NULL);
    CHECK_STR(client_state_name(CLIENT_WAITING_LAST), "waiting_last");
}

/* Each wait starts untold: query_wait_notify's NOTICE comes once per wait, not once per client.
 * The lists follow the state; WAITING -> WAITING_LAST keeps the FIFO place and the notice. */
static void each_wait_starts_untold_and_keeps_its_place(void)
{
    static char *no_env[] = {NULL};
    struct config_diag diag = {0};
    struct config *cfg = config_load_string("[databases]\ndb = host=127.0.0.1\n", no_env, &diag);
    config_diag_free(&diag);
    CHECK(cfg != NULL);
    if (!cfg)
        return;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sluice *app = calloc(1, sizeof(*app));
    app->cfg = cfg;
    app->loop = &loop;
    list_init(&app->pools);
    list_init(&app->dead_clients);
    CHECK_INT(budget_sync(app), 0);
    struct pool *p = pool_get(app, NULL, "u", "db");
    struct client *first = calloc(1, sizeof(*first)), *c = calloc(1, sizeof(*c));
    struct client *both[] = {first, c};
    for (int i = 0; i < 2; i++) {
        both[i]->app = app;
        both[i]->pool = p;
        both[i]->state = CLIENT_IDLE;
        list_append(&p->idle_clients, &both[i]->node);
    }

    client_set_state(first, CLIENT_WAITING);
    c->wait_notice = WAIT_TOLD; /* told in an earlier wait */
    client_set_state(c, CLIENT_WAITING);
    CHECK_INT(c->wait_notice, WAIT_NOT_TOLD);
    CHECK_INT(p->waiting.count, 2);
    c->wait_notice = WAIT_TOLD; /* query_wait_notify told it */
    client_set_state(first, CLIENT_WAITING_LAST);
    CHECK(list_first(&p->waiting) == &first->node); /* still first in the FIFO */
    client_set_state(c, CLIENT_ACTIVE);
    CHECK_INT(c->wait_notice, WAIT_TOLD); /* a fact about the wait that ended, reset by the next */
    CHECK_INT(p->active_clients.count, 1);
    client_set_state(c, CLIENT_IDLE);
    client_set_state(c, CLIENT_WAITING);
    CHECK_INT(c->wait_notice, WAIT_NOT_TOLD);
    client_set_state(c, CLIENT_CLOSED);
    client_set_state(first, CLIENT_CLOSED);
    CHECK_INT(p->waiting.count, 0);
    CHECK_INT(app->dead_clients.count, 2);

    free(first);
    free(c);
    list_remove(&app->pools, &p->node);
    pool_free(p);
    budget_free_all(app);
    config_free(cfg);
    free(app);
    uv_loop_close(&loop);
}

int main(void)
{
    RUN(the_table_is_the_documented_one);
    RUN(every_state_has_a_name);
    RUN(each_wait_starts_untold_and_keeps_its_place);
    return CHECK_DONE();
}
