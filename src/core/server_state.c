/* server_state: a server's states as a table (server.h): their names, the allowed transitions,
 * and server_set_state, the one function that moves a server, onto its pool's list for the new
 * state. Apart from server.c so that the pool, which moves servers between its lists when it
 * hands them out, takes them back or checks them, calls nothing above it. */
#include "server.h"

#include <stdlib.h>

#include "pool.h"
#include "sluice.h"

static const char *const state_names[] = {
    [SERVER_RESOLVING] = "resolving",
    [SERVER_LOGIN] = "login",
    [SERVER_LOGIN_PASSTHROUGH] = "login_passthrough",
    [SERVER_PROBING] = "probing",
    [SERVER_CONNECT_QUERY] = "connect_query",
    [SERVER_IDLE] = "idle",
    [SERVER_ACTIVE] = "active",
    [SERVER_CHECKING] = "checking",
    [SERVER_RESETTING] = "resetting",
    [SERVER_CANCEL_WAIT] = "cancel_wait",
    [SERVER_LEAVING] = "leaving",
    [SERVER_DRAINING] = "draining",
    [SERVER_MOVING] = "moving",
    [SERVER_CLOSED] = "closed",
};

const char *server_state_name(enum server_state st)
{
    return state_names[st];
}

const char *server_state_shown(enum server_state st)
{
    if (server_state_is_connecting(st))
        return "connecting";
    if (st == SERVER_CHECKING || st == SERVER_CANCEL_WAIT)
        return state_names[SERVER_RESETTING]; /* what SHOW SERVERS said before they were states */
    return state_names[st];
}

bool server_state_is_connecting(enum server_state st)
{
    return st <= SERVER_CONNECT_QUERY;
}

/* Each state's list; the connecting states share one, which the caps, SHOW POOLS' sv_login and
 * the breaker count. */
static struct list *list_for(struct server *s, enum server_state st)
{
    struct pool *p = s->pool;
    switch (st) {
    case SERVER_RESOLVING:
    case SERVER_LOGIN:
    case SERVER_LOGIN_PASSTHROUGH:
    case SERVER_PROBING:
    case SERVER_CONNECT_QUERY:
        return &p->connecting;
    case SERVER_IDLE:
        return &p->idle;
    case SERVER_ACTIVE:
        return &p->active;
    case SERVER_CHECKING:
    case SERVER_RESETTING:
    case SERVER_CANCEL_WAIT:
    case SERVER_DRAINING: /* on their way back: SHOW POOLS' sv_tested, busy for the caps */
        return &p->resetting;
    case SERVER_LEAVING:
        return &p->leaving;
    case SERVER_MOVING: /* between two workers: on neither's lists */
        return NULL;
    case SERVER_CLOSED:
        return &p->worker->dead_servers;
    }
    return NULL;
}

#define TO(st) (1u << (st))
/* Where pool_server_ready may send a server it was given: a waiting client, the idle list, or
 * LEAVING (closed to make room for a pool whose client waited longer, server_close_for). */
#define FREED (TO(SERVER_IDLE) | TO(SERVER_ACTIVE) | TO(SERVER_LEAVING))
/* Allowed transitions; anything else is a bug in sluice, not bad input. Every state but CLOSED
 * may also go to CLOSED (close_now). */
static const unsigned transitions[] = {
    [SERVER_RESOLVING] = TO(SERVER_LOGIN) | TO(SERVER_LOGIN_PASSTHROUGH),
    [SERVER_LOGIN] = TO(SERVER_PROBING) | TO(SERVER_CONNECT_QUERY) | FREED,
    [SERVER_LOGIN_PASSTHROUGH] = TO(SERVER_PROBING) | TO(SERVER_CONNECT_QUERY) | FREED,
    [SERVER_PROBING] = TO(SERVER_CONNECT_QUERY) | FREED,
    [SERVER_CONNECT_QUERY] = FREED,
    /* -> CHECKING: its server_check_query before reuse; -> LEAVING: the oldest idle server
     * closed to make room under a shared cap; -> MOVING: handed to another worker (5.4) */
    [SERVER_IDLE] = TO(SERVER_ACTIVE) | TO(SERVER_CHECKING) | TO(SERVER_LEAVING) |
                    TO(SERVER_MOVING),
    /* -> ACTIVE: released and handed straight to the next waiting client. */
    [SERVER_ACTIVE] = FREED | TO(SERVER_RESETTING) | TO(SERVER_DRAINING),
    /* Answered: freed (a failed check closes it). No cancel is ever sent for it: one is sent
     * only for a linked server's query, and a server is freed only with none in flight. */
    [SERVER_CHECKING] = FREED,
    [SERVER_RESETTING] = FREED | TO(SERVER_CANCEL_WAIT),
    [SERVER_CANCEL_WAIT] = FREED,
    [SERVER_DRAINING] = TO(SERVER_RESETTING), /* over: cleaned as at any release */
    [SERVER_LEAVING] = 0,                     /* only CLOSED: its backend has gone */
    /* arrived: the receiver's pool_server_ready frees it, or it is checked first (idle past
     * server_check_delay, pool_take_moved) */
    [SERVER_MOVING] = FREED | TO(SERVER_CHECKING),
    [SERVER_CLOSED] = 0,
};

bool server_transition_ok(enum server_state from, enum server_state to)
{
    if (to == SERVER_CLOSED)
        return from != SERVER_CLOSED;
    return (transitions[from] & TO(to)) != 0;
}

void server_set_state(struct server *s, enum server_state next)
{
    if (!server_transition_ok(s->state, next)) {
        log_server(LOG_ERROR, s, "BUG: server state %s -> %s", server_state_name(s->state),
                   server_state_name(next));
        abort();
    }
    if (server_state_is_connecting(s->state) && server_state_is_connecting(next)) {
        /* One phase for the lists, the connect timeout and SHOW SERVERS' times: it keeps its
         * place on the connecting list and its state_since_ms. */
        log_server(LOG_DEBUG, s, "%s -> %s", server_state_name(s->state), server_state_name(next));
        s->state = next;
        return;
    }
    struct list *from = list_for(s, s->state);
    if (from)
        list_remove(from, &s->node);
    s->state = next;
    s->state_since_ms = sluice_now(s->pool->worker);
    if (next == SERVER_MOVING)
        return;
    if (next == SERVER_IDLE && s->pool->worker->cfg->server_round_robin)
        list_append(list_for(s, next), &s->node);
    else if (next == SERVER_IDLE)
        list_prepend(list_for(s, next), &s->node); /* LIFO: the warmest server first */
    else
        list_append(list_for(s, next), &s->node);
}
