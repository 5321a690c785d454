/* Unit tests for the client state machine (client.c): the transition table, and what
 * client_set_state does on a move (lists, a wait's notice), on a pool built by hand (no
 * sockets). */
#include "check.h"
#include "fixture.h"

#include <stdlib.h>
#include <uv.h>

#include "budget.h"
#include "client.h"
#include "config.h"
#include "ledger.h"
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
    [CLIENT_ACTIVE] = TO(CLIENT_IDLE) | TO(CLIENT_TERMINATING) | TO(CLIENT_HUNG_UP),
    [CLIENT_TERMINATING] = TO(CLIENT_HUNG_UP),
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

/* A worker with one pool, db/u, built by hand (no sockets); NULL if the config did not load. */
static struct worker *worker_with_pool(uv_loop_t *loop, struct pool **p)
{
    struct worker *worker = fixture_worker("[databases]\ndb = host=127.0.0.1\n", loop);
    if (worker)
        *p = pool_get(worker, NULL, "u", "db");
    return worker;
}

/* Each wait starts untold: query_wait_notify's NOTICE comes once per wait, not once per client.
 * The lists follow the state; WAITING -> WAITING_LAST keeps the FIFO place and the notice. */
static void each_wait_starts_untold_and_keeps_its_place(void)
{
    uv_loop_t loop;
    struct pool *p;
    struct worker *worker = worker_with_pool(&loop, &p);
    if (!worker)
        return;
    struct client *first = calloc(1, sizeof(*first)), *c = calloc(1, sizeof(*c));
    struct client *both[] = {first, c};
    for (int i = 0; i < 2; i++) {
        both[i]->worker = worker;
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
    CHECK_INT(worker->dead_clients.count, 2);

    free(first);
    free(c);
    fixture_worker_free(worker);
}

/* A logged-in client holds its place in the ledger's counts (max_client_conn, the database's
 * and the user's client caps) until it starts closing: CLOSING gives it back, once. */
static void a_client_gives_its_login_slot_back_as_it_starts_closing(void)
{
    uv_loop_t loop;
    struct pool *p;
    struct worker *worker = worker_with_pool(&loop, &p);
    if (!worker)
        return;
    struct client *c = calloc(1, sizeof(*c));
    c->worker = worker;
    c->pool = p;
    c->user = "u";
    c->database = "db";
    c->state = CLIENT_IDLE;
    list_append(&p->idle_clients, &c->node);
    const struct ledger_login_caps caps = {.global = 10};
    CHECK_INT(ledger_take_login(&worker->proc->ledger, 0, "db", "u", &caps), LOGIN_COUNTED);
    c->login_slot = LOGIN_SLOT_HELD; /* as client_login_ok took it */
    CHECK(ledger_audit(worker));
    client_set_state(c, CLIENT_WAITING);
    client_set_state(c, CLIENT_ACTIVE);
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, "db"), 1); /* still logged in */
    client_set_state(c, CLIENT_CLOSING);
    CHECK_INT(c->login_slot, LOGIN_SLOT_NONE);
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, NULL), 0);
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, "db"), 0);
    CHECK_INT(ledger_user_clients(&worker->proc->ledger, "u"), 0);
    CHECK(ledger_audit(worker));        /* off the pool's lists: the walk agrees */
    client_set_state(c, CLIENT_CLOSED); /* not twice */
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, NULL), 0);
    free(c);
    fixture_worker_free(worker);
}

int main(void)
{
    RUN(the_table_is_the_documented_one);
    RUN(every_state_has_a_name);
    RUN(each_wait_starts_untold_and_keeps_its_place);
    RUN(a_client_gives_its_login_slot_back_as_it_starts_closing);
    return CHECK_DONE();
}
