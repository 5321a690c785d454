/* pool_room: a server of one pool given up for a waiter elsewhere, or above a cap (see
 * pool_room.h). pool.c decides when to ask (a released server, a full cap at a connect, the
 * tick) and opens the server in its place; this file decides whose room it is and closes or
 * offers the server through pool_events. This worker's pools only: another worker's servers
 * are closed or moved by that worker (the handover, 5.4). */
#include "pool_room.h"

#include <stdio.h>
#include <string.h>

#include "budget.h"
#include "client.h"
#include "ledger.h"
#include "pool_breaker.h"
#include "pool_waiters.h"
#include "server.h"
#include "sluice.h"
#include "worker.h"

/* ---- a full cap: an idle server closed so that a waiter's opens in its place ---- */

/* Fairness of the longest waiter across workers (5.3): idle s of this worker is about to close
 * for c, a waiter of this worker. Another worker's registered waiter that waited longer than c
 * by more than the handover's slack and that s serves has it first: s moves there, or closes
 * for its slot (handover_offer_older). The handover offers idle servers as they go idle, but
 * not a session pool's while it has waiters of its own (their room is a close here), and an
 * entry registered since waits for the next offer: a close here for c went before it. true: s
 * went to that waiter (c waits on, registered by the caller's maybe_connect). */
static bool given_to_older_elsewhere(struct server *s, const struct client *c)
{
    const struct worker *worker = s->pool->worker;
    if (!c || worker->proc->nworkers == 1 || !ledger_has_waiters(&worker->proc->ledger))
        return false;
    return worker->pool_events->offer_server_to_older(s, pool_waiter_arrival(c), 0);
}

/* A cap is full and client c wants a server opened with its startup parameters: close the
 * longest-idle server of p opened with other ones, so that c's opens in its place (its slot
 * comes back when the backend has gone, pool_server_gone). false: none. */
bool pool_close_idle_unwanted(struct pool *p, const struct client *c)
{
    if (!c)
        return false;
    uint64_t fp = pool_startup_wanted(p, c);
    struct server *oldest = NULL;
    struct list_node *n, *tmp;
    list_for_each(&p->idle, n, tmp)
    {
        struct server *s = container_of(n, struct server, node);
        if (s->startup_fp != fp)
            oldest = s; /* the list runs from the most recently used */
    }
    if (!oldest)
        return false;
    if (given_to_older_elsewhere(oldest, c))
        return true;
    p->worker->pool_events->close_server_for(
        oldest,
        "idle server opened with other startup parameters, closed to "
        "open one with a waiting client's",
        p);
    return true;
}

/* Close the longest-idle server of another pool in the scope of a full cap, so the pool that
 * has waiters gets the room (PgBouncer does the same for max_db_connections). This worker's
 * pools only, and rightly: it closes only servers it owns. The cap it answers is the ledger's
 * (the take that failed); another worker's idle servers in the scope are closed or moved for
 * this one by their own worker (the handover's ledger_claim_idle, 5.4). */
static bool evict_idle(struct worker *worker, enum limit_kind k, const char *db_name,
                       const char *user_name, struct pool *except, const struct client *waiter);

bool pool_evict_idle_elsewhere(struct pool *p, enum limit_kind k)
{
    const struct client *head =
        list_empty(&p->waiting) ? NULL : container_of(list_first(&p->waiting), struct client, node);
    return evict_idle(p->worker, k, p->db_name, p->user_name, p, head);
}

bool pool_evict_idle(struct worker *worker, enum limit_kind k, const char *db_name,
                     const char *user_name, struct pool *except)
{
    return evict_idle(worker, k, db_name, user_name, except, NULL);
}

/* pool_evict_idle, for waiter (NULL: auth_query's lookup, in no wait list of the ledger). */
static bool evict_idle(struct worker *worker, enum limit_kind k, const char *db_name,
                       const char *user_name, struct pool *except, const struct client *waiter)
{
    struct pool *victim = NULL;
    struct server *oldest = NULL;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *o = container_of(n, struct pool, node);
        if (o == except || list_empty(&o->idle))
            continue;
        if (k == LIMIT_DB && strcmp(o->db_name, db_name) != 0)
            continue;
        if (k == LIMIT_USER && strcmp(o->user_name, user_name) != 0)
            continue;
        struct server *s = container_of(list_last(&o->idle), struct server, node);
        if (!oldest || s->state_since_ms < oldest->state_since_ms) {
            oldest = s;
            victim = o;
        }
    }
    if (!oldest)
        return false;
    if (given_to_older_elsewhere(oldest, waiter))
        return true;
    char why[160];
    snprintf(why, sizeof(why), "idle server of pool %s/%s closed to make room under %s",
             victim->db_name, victim->user_name, limit_kind_key(k));
    worker->pool_events->close_server_for(oldest, why, except);
    return true;
}

/* ---- a released server: above a lowered cap, or owed to a longer waiter elsewhere ---- */

/* A reload lowered a cap below the servers in use: a server that comes back above it closes
 * instead of serving again, so the cap holds once the transactions in flight end. */
bool pool_close_if_over_limit(struct server *s)
{
    const struct pool *p = s->pool;
    enum limit_kind k = ledger_pool_over_limit(p);
    if (k == LIMIT_NONE)
        return false;
    char why[160];
    snprintf(why, sizeof(why), "above %s = %d (lowered by a reload)", limit_kind_key(k),
             budget_limit_value(p, NULL, k));
    p->worker->pool_events->close_server(s, why);
    return true;
}

/* When a cap shared with other pools (max_db_connections, max_user_connections,
 * max_server_connections) is full, a released server goes to the client that has waited
 * longest across those pools, not to the next client of its own pool: otherwise a busy pool
 * keeps every server and the others starve. Returns the pool whose first waiter has waited
 * longer than p's, that the cap alone holds back, and that could open a server if one of p's
 * closed; NULL when p's own waiter (or the idle list) should have it. This worker's pools
 * only: it orders who gets a server this worker holds, and decides no cap (the room is the
 * ledger's, ledger_pool_limit and ledger_pool_fits_if_closed). Across workers, the oldest
 * waiter of the ledger's wait list is woken by the give that frees a slot and an idle server
 * goes to it through the handover (5.4); a released server with a waiter of its own pool
 * serves that one first, even when another worker's waiter under the same shared cap waited
 * longer (docs/architecture.md 5.4). */
struct pool *pool_longer_waiter_elsewhere(struct pool *p)
{
    struct worker *worker = p->worker;
    if (!sluice_serving(worker))
        return NULL;
    const struct client *mine = p->paused ? NULL : pool_first_eligible(p);
    uint64_t oldest = mine ? mine->state_since_ms : UINT64_MAX;
    struct pool *best = NULL;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *o = container_of(n, struct pool, node);
        if (o == p || o->paused || list_empty(&o->waiting) || !pool_may_try_connect(o))
            continue;
        const struct client *c = pool_first_eligible(o);
        if (!c || c->state_since_ms >= oldest)
            continue;
        /* Its connections in progress, and the room already being made for it, serve its
         * first waiters. */
        int coming = o->connecting.count + o->rooms_awaited;
        if (pool_count_eligible(o, coming + 1) <= coming)
            continue;
        if (ledger_pool_limit(o, false) == LIMIT_NONE || !ledger_pool_fits_if_closed(o, p))
            continue;
        best = o;
        oldest = c->state_since_ms;
    }
    return best;
}

/* Fairness of the longest waiter across workers (5.3): s, released with c waiting here (NULL:
 * none of its waiters wants a server opened as s was: session mode), moves
 * to another worker whose waiter of this key has waited longer than this pool's oldest waiter
 * by more than the slack (handover.c), or closes for it when it wants other startup parameters.
 * The oldest, not c: in session mode the head may be a waiter of other parameters that c is
 * behind, and a server closed here for it must not be one another worker's older waiter wants
 * (it would close the head's fresh server for that one in turn). False with one worker or no
 * registered waiter: only another worker's registered waiter makes this take the ledger's lock.
 * True: the caller's maybe_connect registers this pool's own waiters, who wait for a slot now,
 * so the worker the server went to sees them as older than its next waiter and sends it back
 * in turn. */
bool pool_pass_to_older_elsewhere(struct server *s, const struct client *c)
{
    struct pool *p = s->pool;
    struct process *proc = p->worker->proc;
    if (proc->nworkers == 1 || !ledger_has_waiters(&proc->ledger))
        return false;
    const struct client *oldest = pool_first_eligible(p);
    if (!oldest)
        oldest = c;
    if (!oldest)
        return false;
    /* the waiter after c, whose arrival this worker's entry says once c is served (c is the
     * oldest; else the entry stays the oldest's) */
    const struct client *next = NULL;
    if (c && oldest == c && c->node.next != &p->waiting.head)
        next = container_of(c->node.next, struct client, node);
    uint64_t since = pool_waiter_arrival(oldest);
    uint64_t next_since = next ? pool_waiter_arrival(next) : 0;
    server_set_state(s, SERVER_IDLE); /* what moves is idle; served from idle if it stays */
    buf_detach_if_empty(&s->in);
    return p->worker->pool_events->offer_server_to_older(s, since, next_since);
}
