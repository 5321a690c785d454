/* Unit tests for the server state machine (server.c): the transition table, the names SHOW
 * SERVERS gives, server_set_state's lists and the way back to the pool after sluice's own work,
 * on a pool built by hand (no sockets). */
#include "check.h"
#include "fixture.h"

#include <stdlib.h>
#include <uv.h>

#include "budget.h"
#include "config.h"
#include "ledger.h"
#include "link.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"

#define NSTATES (SERVER_CLOSED + 1)

static const enum server_state connecting[] = {
    SERVER_RESOLVING, SERVER_LOGIN, SERVER_LOGIN_PASSTHROUGH, SERVER_PROBING, SERVER_CONNECT_QUERY};

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
        else if (st != SERVER_CHECKING && st != SERVER_CANCEL_WAIT)
            CHECK_STR(server_state_shown(st), server_state_name(st));
    }
    CHECK_STR(server_state_name(SERVER_PROBING), "probing");
    CHECK_STR(server_state_shown(SERVER_IDLE), "idle");
    CHECK_STR(server_state_shown(SERVER_RESETTING), "resetting");
    /* SHOW SERVERS shows what it showed before the wait for a cancel was a state */
    CHECK_STR(server_state_name(SERVER_CANCEL_WAIT), "cancel_wait");
    CHECK_STR(server_state_shown(SERVER_CANCEL_WAIT), "resetting");
    CHECK_STR(server_state_name(SERVER_CHECKING), "checking");
    CHECK_STR(server_state_shown(SERVER_CHECKING), "resetting");
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
    CHECK(!server_transition_ok(SERVER_IDLE, SERVER_RESETTING)); /* the check is CHECKING */
    CHECK(server_transition_ok(SERVER_ACTIVE, SERVER_ACTIVE));   /* handed to the next waiter */
    CHECK(server_transition_ok(SERVER_ACTIVE, SERVER_IDLE));
    CHECK(server_transition_ok(SERVER_ACTIVE, SERVER_RESETTING));
    CHECK(server_transition_ok(SERVER_ACTIVE, SERVER_DRAINING));
    CHECK(server_transition_ok(SERVER_RESETTING, SERVER_ACTIVE));
    CHECK(server_transition_ok(SERVER_RESETTING, SERVER_IDLE));
    CHECK(!server_transition_ok(SERVER_RESETTING, SERVER_RESETTING));
    CHECK(!server_transition_ok(SERVER_RESETTING, SERVER_DRAINING));
    CHECK(!server_transition_ok(SERVER_IDLE, SERVER_DRAINING)); /* only a linked one drains */
    /* the orphaned query is over: cleaned as at any release, never straight back */
    CHECK(server_transition_ok(SERVER_DRAINING, SERVER_RESETTING));
    CHECK(!server_transition_ok(SERVER_DRAINING, SERVER_IDLE));
    CHECK(!server_transition_ok(SERVER_DRAINING, SERVER_ACTIVE));
    CHECK(!server_transition_ok(SERVER_DRAINING, SERVER_CANCEL_WAIT));
}

/* CANCEL_WAIT is entered only once sluice's own queries are over, and left only to be free */
static void a_cancel_wait_follows_the_reset_and_frees_the_server(void)
{
    CHECK(server_transition_ok(SERVER_RESETTING, SERVER_CANCEL_WAIT));
    CHECK(!server_transition_ok(SERVER_ACTIVE, SERVER_CANCEL_WAIT)); /* through RESETTING */
    CHECK(!server_transition_ok(SERVER_IDLE, SERVER_CANCEL_WAIT));
    CHECK(!server_transition_ok(SERVER_CANCEL_WAIT, SERVER_RESETTING));
    CHECK(!server_transition_ok(SERVER_CANCEL_WAIT, SERVER_CANCEL_WAIT));
    CHECK(server_transition_ok(SERVER_CANCEL_WAIT, SERVER_IDLE));
    CHECK(server_transition_ok(SERVER_CANCEL_WAIT, SERVER_ACTIVE));
    CHECK(server_transition_ok(SERVER_CANCEL_WAIT, SERVER_LEAVING));
}

/* CHECKING is entered from IDLE only (server_check_query before reuse; or from MOVING, idle on
 * another worker) and left only to be free: to the idle list, a waiting client, or LEAVING; a
 * failed check closes it. */
static void a_check_starts_from_idle_and_frees_the_server(void)
{
    for (int st = 0; st < NSTATES; st++) {
        CHECK(server_transition_ok(st, SERVER_CHECKING) ==
              (st == SERVER_IDLE || st == SERVER_MOVING));
        bool freed =
            st == SERVER_IDLE || st == SERVER_ACTIVE || st == SERVER_LEAVING || st == SERVER_CLOSED;
        CHECK(server_transition_ok(SERVER_CHECKING, st) == freed);
    }
}

/* LEAVING is where pool_server_ready sends a server it hands to another pool, and the
 * oldest idle server closed to make room; its only way out is CLOSED. */
static void only_a_server_about_to_be_free_leaves(void)
{
    static const enum server_state leave_from[] = {SERVER_LOGIN,       SERVER_LOGIN_PASSTHROUGH,
                                                   SERVER_PROBING,     SERVER_CONNECT_QUERY,
                                                   SERVER_IDLE,        SERVER_ACTIVE,
                                                   SERVER_CHECKING,    SERVER_RESETTING,
                                                   SERVER_CANCEL_WAIT, SERVER_MOVING};
    for (int st = 0; st < NSTATES; st++) {
        bool may = false;
        for (size_t i = 0; i < sizeof leave_from / sizeof leave_from[0]; i++)
            may |= leave_from[i] == (enum server_state)st;
        CHECK(server_transition_ok(st, SERVER_LEAVING) == may);
        CHECK(server_transition_ok(SERVER_LEAVING, st) == (st == SERVER_CLOSED));
    }
}

/* MOVING (the idle-server handover, 5.4) starts from IDLE only, and the receiver frees it
 * like any server given to pool_server_ready (to a waiter, the idle list or LEAVING), or checks
 * it first when it was idle past server_check_delay. */
static void only_an_idle_server_moves_and_arrives_free(void)
{
    for (int st = 0; st < NSTATES; st++) {
        CHECK(server_transition_ok(st, SERVER_MOVING) == (st == SERVER_IDLE));
        bool freed = st == SERVER_IDLE || st == SERVER_ACTIVE || st == SERVER_LEAVING ||
                     st == SERVER_CLOSED || st == SERVER_CHECKING;
        CHECK(server_transition_ok(SERVER_MOVING, st) == freed);
    }
    CHECK_STR(server_state_name(SERVER_MOVING), "moving");
}

/* A pool built by hand, with no sockets: enough for server_set_state and pool_server_ready. */
struct world {
    uv_loop_t loop;
    struct config *cfg;
    struct worker *worker;
    struct pool *pool;
};

static bool world_init(struct world *w)
{
    w->pool = NULL;
    w->worker = fixture_worker("[databases]\ndb = host=127.0.0.1\n", &w->loop);
    if (!w->worker)
        return false;
    w->cfg = w->worker->cfg;
    w->worker->pool_events = &link_pool_events; /* the pool's servers: the real server.c */
    w->pool = pool_get(w->worker, NULL, "u", "db");
    return w->pool != NULL;
}

static struct server *server_in(struct world *w, enum server_state st, struct list *l)
{
    struct server *s = calloc(1, sizeof(*s));
    s->pool = w->pool;
    s->state = st;
    s->state_since_ms = 42;
    s->txn_status = 'I';
    s->connect_ms = uv_now(&w->loop); /* young: server_lifetime does not close it */
    list_append(l, &s->node);
    w->worker->nservers++;
    return s;
}

static void world_free(struct world *w)
{
    fixture_worker_free(w->worker); /* the servers on the pool's lists and the dead list too */
}

static void a_connecting_server_stays_on_one_list_through_its_sub_states(void)
{
    struct world w;
    CHECK(world_init(&w));
    if (!w.pool)
        return;
    struct pool *p = w.pool;
    struct server *s = server_in(&w, SERVER_RESOLVING, &p->connecting);

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
    world_free(&w);
}

/* RESETTING, CANCEL_WAIT and DRAINING are one list, so the caps and SHOW POOLS' sv_tested count
 * them as before; LEAVING and CLOSED are entered through server_set_state too. */
static void states_between_clients_share_the_resetting_list(void)
{
    struct world w;
    CHECK(world_init(&w));
    if (!w.pool)
        return;
    struct pool *p = w.pool;
    struct server *s = server_in(&w, SERVER_ACTIVE, &p->active);
    int count = pool_server_count(p);
    server_set_state(s, SERVER_RESETTING);
    server_set_state(s, SERVER_CANCEL_WAIT);
    CHECK_INT(p->resetting.count, 1);
    CHECK_INT(p->active.count, 0);
    CHECK_INT(pool_server_count(p), count);
    server_set_state(s, SERVER_LEAVING);
    CHECK_INT(p->resetting.count, 0);
    CHECK_INT(p->leaving.count, 1);
    CHECK_INT(pool_server_count(p), count); /* counted until its backend has gone */
    server_set_state(s, SERVER_CLOSED);
    CHECK_INT(p->leaving.count, 0);
    CHECK_INT(w.worker->dead_servers.count, 1);
    CHECK_INT(pool_server_count(p), count - 1);
    world_free(&w);
}

/* After the reset, a cancel still on its way keeps the server from the next client (it could
 * cancel that client's query); once the cancel is done, the server is free. */
static void a_reset_server_waits_for_its_cancel_then_is_free(void)
{
    struct world w;
    CHECK(world_init(&w));
    if (!w.pool)
        return;
    struct pool *p = w.pool;
    struct server *s = server_in(&w, SERVER_RESETTING, &p->resetting);
    s->swallow = 1; /* its ROLLBACK's reply is due */
    s->cancels_in_flight = 1;
    server_maybe_done_resetting(s);
    CHECK_INT(s->state, SERVER_RESETTING);
    s->swallow = 0; /* the reply came */
    server_maybe_done_resetting(s);
    CHECK_INT(s->state, SERVER_CANCEL_WAIT);
    CHECK_INT(p->resetting.count, 1);
    server_maybe_done_resetting(s); /* a reply read meanwhile changes nothing */
    CHECK_INT(s->state, SERVER_CANCEL_WAIT);
    s->cancels_in_flight = 0; /* cancel_done */
    server_maybe_done_resetting(s);
    CHECK_INT(s->state, SERVER_IDLE);
    CHECK_INT(p->idle.count, 1);
    CHECK_INT(p->resetting.count, 0);
    world_free(&w);
}

/* A checked server waits on the resetting list (SHOW POOLS' sv_tested) for its check's reply,
 * then is free again. */
static void a_checked_server_is_free_once_its_check_is_answered(void)
{
    struct world w;
    CHECK(world_init(&w));
    if (!w.pool)
        return;
    struct pool *p = w.pool;
    struct server *s = server_in(&w, SERVER_IDLE, &p->idle);
    int count = pool_server_count(p);
    server_set_state(s, SERVER_CHECKING);
    CHECK_INT(p->idle.count, 0);
    CHECK_INT(p->resetting.count, 1);
    CHECK_INT(pool_server_count(p), count);
    s->swallow = 1; /* the check's reply is due */
    server_maybe_done_resetting(s);
    CHECK_INT(s->state, SERVER_CHECKING);
    s->swallow = 0; /* answered */
    server_maybe_done_resetting(s);
    CHECK_INT(s->state, SERVER_IDLE);
    CHECK_INT(p->idle.count, 1);
    CHECK_INT(p->resetting.count, 0);
    world_free(&w);
}

/* A draining server is cleaned only after the cancel of its client's query has landed: the
 * cleanup must not be what the cancel stops. */
static void a_draining_server_waits_for_its_cancel_before_the_cleanup(void)
{
    struct world w;
    CHECK(world_init(&w));
    if (!w.pool)
        return;
    struct server *s = server_in(&w, SERVER_DRAINING, &w.pool->resetting);
    s->cancels_in_flight = 1; /* the orphaned query is over, its cancel is not */
    server_maybe_done_resetting(s);
    CHECK_INT(s->state, SERVER_DRAINING);
    world_free(&w);
}

int main(void)
{
    RUN(connecting_states_are_one_phase_for_show_and_caps);
    RUN(a_login_goes_forward_only);
    RUN(serving_states_keep_their_table);
    RUN(a_cancel_wait_follows_the_reset_and_frees_the_server);
    RUN(a_check_starts_from_idle_and_frees_the_server);
    RUN(only_a_server_about_to_be_free_leaves);
    RUN(only_an_idle_server_moves_and_arrives_free);
    RUN(a_connecting_server_stays_on_one_list_through_its_sub_states);
    RUN(states_between_clients_share_the_resetting_list);
    RUN(a_reset_server_waits_for_its_cancel_then_is_free);
    RUN(a_checked_server_is_free_once_its_check_is_answered);
    RUN(a_draining_server_waits_for_its_cancel_before_the_cleanup);
    return CHECK_DONE();
}
