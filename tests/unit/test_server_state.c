/* Unit tests for the server state machine (server.c): the transition table, the names SHOW
 * SERVERS gives, and server_set_state's lists, on a pool built by hand (no sockets). */
#include "check.h"

#include <stdlib.h>
#include <uv.h>

#include "budget.h"
#include "config.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"

#define NSTATES (SERVER_CLOSED + 1)

static const enum server_state connecting[] = {SERVER_RESOLVING, SERVER_LOGIN,
                                               SERVER_LOGIN_PASSTHROUGH, SERVER_PROBING,
                                               SERVER_CONNECT_QUERY};

static void connecting_states_are_one_phase_for_show_and_caps(void)
{
    for (int st = 0; st < NSTATES; st++) {
        bool is = false;
        for (size_t i = 0; i < sizeof connecting / sizeof connecting[0]; i++)
            is |= connecting[i] == (enum server_state)st;
        CHECK(server_state_is_connecting(st) == is);
        CHECK(server_state_name(st) != NULL);
        if (is)
            CHECK_STR(server_state_shown(st), "connecting");
        else
            CHECK_STR(server_state_shown(st), server_state_name(st));
    }
    CHECK_STR(server_state_name(SERVER_PROBING), "probing");
    CHECK_STR(server_state_shown(SERVER_IDLE), "idle");
    CHECK_STR(server_state_shown(SERVER_RESETTING), "resetting");
}

static void a_login_goes_forward_only(void)
{
    /* every path of a new server, and nothing backwards */
    CHECK(server_transition_ok(SERVER_RESOLVING, SERVER_LOGIN));
    CHECK(server_transition_ok(SERVER_RESOLVING, SERVER_LOGIN_PASSTHROUGH));
    CHECK(!server_transition_ok(SERVER_RESOLVING, SERVER_PROBING));
    CHECK(!server_transition_ok(SERVER_RESOLVING, SERVER_IDLE)); /* not logged in */
    CHECK(!server_transition_ok(SERVER_LOGIN, SERVER_LOGIN_PASSTHROUGH));
    for (int i = 1; i < 3; i++) {
        CHECK(server_transition_ok(connecting[i], SERVER_PROBING));
        CHECK(server_transition_ok(connecting[i], SERVER_CONNECT_QUERY));
        CHECK(server_transition_ok(connecting[i], SERVER_IDLE));
        CHECK(server_transition_ok(connecting[i], SERVER_ACTIVE));
        CHECK(!server_transition_ok(connecting[i], SERVER_RESETTING));
    }
    CHECK(server_transition_ok(SERVER_PROBING, SERVER_CONNECT_QUERY));
    CHECK(!server_transition_ok(SERVER_CONNECT_QUERY, SERVER_PROBING));
    CHECK(!server_transition_ok(SERVER_PROBING, SERVER_LOGIN));
    CHECK(server_transition_ok(SERVER_CONNECT_QUERY, SERVER_ACTIVE));
    for (size_t i = 0; i < sizeof connecting / sizeof connecting[0]; i++) {
        CHECK(!server_transition_ok(SERVER_IDLE, connecting[i]));
        CHECK(!server_transition_ok(SERVER_RESETTING, connecting[i]));
    }
    for (int st = 0; st < NSTATES; st++) {
        CHECK(!server_transition_ok(st, SERVER_RESOLVING)); /* only server_connect starts there */
        CHECK(!server_transition_ok(SERVER_CLOSED, st));
        CHECK(server_transition_ok(st, SERVER_CLOSED) == (st != SERVER_CLOSED));
    }
}

static void serving_states_keep_their_table(void)
{
    CHECK(server_transition_ok(SERVER_IDLE, SERVER_ACTIVE));
    CHECK(server_transition_ok(SERVER_IDLE, SERVER_RESETTING));
    CHECK(server_transition_ok(SERVER_ACTIVE, SERVER_ACTIVE)); /* handed to the next waiter */
    CHECK(server_transition_ok(SERVER_ACTIVE, SERVER_IDLE));
    CHECK(server_transition_ok(SERVER_RESETTING, SERVER_ACTIVE));
    CHECK(!server_transition_ok(SERVER_RESETTING, SERVER_RESETTING));
    CHECK(!server_transition_ok(SERVER_LEAVING, SERVER_IDLE));
}

static void a_connecting_server_stays_on_one_list_through_its_sub_states(void)
{
    static char *no_env[] = {NULL};
    struct config_diag diag = {0};
    struct config *cfg =
        config_load_string("[databases]\ndb = host=127.0.0.1\n", no_env, &diag);
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
    list_init(&app->dead_servers);
    CHECK_INT(budget_sync(app), 0);
    struct pool *p = pool_get(app, NULL, "u", "db");
    struct server *s = calloc(1, sizeof(*s));
    s->pool = p;
    s->state = SERVER_RESOLVING;
    s->state_since_ms = 42;
    list_append(&p->connecting, &s->node);

    server_set_state(s, SERVER_LOGIN_PASSTHROUGH);
    server_set_state(s, SERVER_PROBING);
    server_set_state(s, SERVER_CONNECT_QUERY);
    CHECK_INT(s->state, SERVER_CONNECT_QUERY);
    CHECK_INT(p->connecting.count, 1); /* the caps count it the whole time */
    CHECK_INT(s->state_since_ms, 42);  /* SHOW SERVERS: connecting since it started */
    server_set_state(s, SERVER_IDLE);
    CHECK_INT(p->connecting.count, 0);
    CHECK_INT(p->idle.count, 1);
    server_set_state(s, SERVER_ACTIVE);
    CHECK_INT(p->idle.count, 0);
    CHECK_INT(p->active.count, 1);

    list_remove(&p->active, &s->node);
    free(s);
    list_remove(&app->pools, &p->node);
    pool_free(p);
    budget_free_all(app);
    ledger_free(&app->ledger);
    config_free(cfg);
    free(app);
    uv_loop_close(&loop);
}

int main(void)
{
    RUN(connecting_states_are_one_phase_for_show_and_caps);
    RUN(a_login_goes_forward_only);
    RUN(serving_states_keep_their_table);
    RUN(a_connecting_server_stays_on_one_list_through_its_sub_states);
    return CHECK_DONE();
}
