/* pool_waiters: which waiting client may have a server now and which server fits it (see
 * pool_waiters.h). Walks the pool's queues and the ledger's room; decides, changes nothing. */
#include "pool_waiters.h"

#include <stdlib.h>

#include "budget.h"
#include "client.h"
#include "ledger.h"
#include "pool_mode.h"
#include "server.h"
#include "worker.h"

uint64_t pool_startup_wanted(const struct pool *p, const struct client *c)
{
    /* A server opened with c's own startup packet: for a session client (the mode of its
     * login, which a reload of pool_mode does not change), while the pool still opens such
     * servers (session mode). A session client left waiting in a pool reloaded to transaction
     * mode takes a pooled server and has its parameters SET, as a transaction client does: no
     * server with its startup packet would ever be opened for it. */
    if (c->startup_scope == STARTUP_SCOPE_EVERY_MODE)
        return c->startup_fp; /* a setting Postgres takes only at login: no other server has it */
    return c->mode == POOL_SESSION && p->mode == POOL_SESSION ? c->startup_fp : 0;
}

bool pool_matches_startup(const struct pool *p)
{
    return p->mode == POOL_SESSION || p->every_mode_startup_clients > 0;
}

uint64_t pool_waiter_arrival(const struct client *c)
{
    uint64_t waited = sluice_now(c->worker) - c->state_since_ms, now = ledger_now_ms();
    return now > waited ? now - waited : 1;
}

uint64_t pool_waiter_since(const struct client *c)
{
    if (!c->budget || !ledger_leases_checked(&c->worker->proc->ledger))
        return 0; /* the default config's per-transaction path: no clock read */
    return pool_waiter_arrival(c);
}

void pool_lease_waiter_gone(const struct client *c)
{
    struct budget *b = c->budget;
    if (!b || b->lease_wait_since[c->worker->index % BUDGET_LEASE_SHARES] == 0)
        return; /* one load of a line only a contended budget writes: the per-transaction path */
    /* Each queue is in arrival order: its first waiter of b is its oldest. */
    const struct client *oldest = NULL;
    struct list_node *pn, *ptmp, *node, *tmp;
    list_for_each(&c->worker->pools, pn, ptmp)
    {
        const struct pool *p = container_of(pn, struct pool, node);
        if (p->paused)
            continue;
        list_for_each(&p->waiting, node, tmp)
        {
            const struct client *w = container_of(node, struct client, node);
            if (w == c || w->budget != b)
                continue;
            if (!oldest || w->state_since_ms < oldest->state_since_ms)
                oldest = w;
            break;
        }
    }
    ledger_lease_wait_moved(c->worker, b, oldest ? pool_waiter_since(oldest) : 0);
}

/* Clients of budget b in other pools than c's that have waited longer than c, counting up to
 * `enough`. Each pool's queue is in arrival order, so each walk stops at its first younger
 * client. This worker's pools only, and rightly: it orders this worker's waiters for the room
 * the ledger gives the budget (process-wide: ledger_lease_room), and can only hold one of them
 * back, never give one more than that room. Across workers the ledger orders a budget's
 * max_servers room by arrival (ledger_lease_room_since, with pool_waiter_since). */
static int older_budget_waiters_elsewhere(const struct client *c, int enough)
{
    int n = 0;
    struct list_node *pn, *ptmp, *node, *tmp;
    list_for_each(&c->worker->pools, pn, ptmp)
    {
        const struct pool *o = container_of(pn, struct pool, node);
        if (o == c->pool || o->paused)
            continue;
        list_for_each(&o->waiting, node, tmp)
        {
            const struct client *w = container_of(node, struct client, node);
            if (w->state_since_ms >= c->state_since_ms)
                break;
            if (w->budget == c->budget && ++n >= enough)
                return n;
        }
    }
    return n;
}

/* Is this waiting client allowed a server now (its budget's caps)? A login waiting for its
 * pool's first server is no exception: it keeps the server it is given for its first queries.
 * A budget spans pools: its room goes to its clients in the order they began to wait, whichever
 * pool they are in, or a busy pool would keep every server the budget may hold. */
static bool may_lease(const struct client *c)
{
    uint64_t since = pool_waiter_since(c);
    int room = ledger_lease_room_since(c->worker, c->budget, since);
    if (room == 0 && c->worker->proc->nworkers > 1) /* woken by a give elsewhere */
        room = ledger_note_lease_wait(c->worker, c->budget, since);
    if (room == 0)
        return false;
    return room < 0 || c->worker->pools.count <= 1 ||
           older_budget_waiters_elsewhere(c, room) < room;
}

/* The first waiter, in FIFO order, that may have a server now. */
struct client *pool_first_eligible(const struct pool *p)
{
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (may_lease(c))
            return c;
        if (budget_count(p->worker) <= 1)
            break; /* no budgets configured: the head is the only candidate */
    }
    return NULL;
}

/* How many waiters could use a new server: at most `enough`, and for each budget no more than
 * the servers it may still hold (servers opened for a budget count against its max_servers).
 * The pool's own waiters (how many servers this worker's pool needs), each budget's room the
 * ledger's (every worker's leases); what opens is then taken under the ledger's caps. */
int pool_count_eligible(const struct pool *p, int enough)
{
    const struct budget_set *set = p->worker->budgets;
    if (!set || set->n <= 1)
        return p->waiting.count;
    int *room = calloc((size_t)set->n, sizeof(*room));
    if (!room)
        return 0; /* tried again at the next lease or tick */
    for (int i = 0; i < set->n; i++)
        room[i] = ledger_lease_room(p->worker, set->rules[i].budget); /* no order here */
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&p->waiting, node, tmp)
    {
        const struct client *c = container_of(node, struct client, node);
        int i = budget_slot(set, c->budget);
        if (i >= 0 && room[i] == 0)
            continue;
        if (i >= 0 && room[i] > 0)
            room[i]--;
        if (++n >= enough)
            break;
    }
    free(room);
    return n;
}

/* The eligible waiters in FIFO order (at most `enough`) that no server still logging in will
 * serve: each one connecting for a startup fingerprint goes to the first waiter that wants it.
 * Their count; *first: the first of them (NULL: none). */
/* pool_count_unprovided, and *nth: the unprovided waiter after the first `skip` of them. */
static int count_unprovided(const struct pool *p, int enough, int skip, struct client **nth)
{
    *nth = NULL;
    int coming_n = 0, n = 0, seen = 0;
    uint64_t *coming = NULL;
    if (p->connecting.count > 0) {
        coming = malloc((size_t)p->connecting.count * sizeof(*coming));
        if (!coming)
            return 0; /* tried again at the next lease or tick */
    }
    struct list_node *node, *tmp;
    list_for_each(&p->connecting, node, tmp)
        coming[coming_n++] = container_of(node, struct server, node)->startup_fp;
    list_for_each(&p->waiting, node, tmp)
    {
        struct client *c = container_of(node, struct client, node);
        if (!may_lease(c))
            continue;
        if (++seen > enough)
            break;
        uint64_t fp = pool_startup_wanted(p, c);
        int i = 0;
        while (i < coming_n && coming[i] != fp)
            i++;
        if (i < coming_n) {
            coming[i] = coming[--coming_n];
            continue;
        }
        if (n++ == skip)
            *nth = c;
    }
    free(coming);
    return n;
}

int pool_count_unprovided(const struct pool *p, int enough, struct client **first)
{
    return count_unprovided(p, enough, 0, first);
}

bool pool_has_waiter_without_room(const struct pool *p)
{
    struct client *first;
    return !list_empty(&p->waiting) &&
           pool_count_unprovided(p, p->rooms_awaited + 1, &first) > p->rooms_awaited;
}

struct client *pool_first_unprovided_after(const struct pool *p, int skip)
{
    struct client *nth;
    count_unprovided(p, p->waiting.count, skip, &nth);
    return nth;
}

/* The most recently used idle server of p opened with startup fingerprint fp, or NULL. */
static struct server *idle_opened_with(const struct pool *p, uint64_t fp)
{
    struct list_node *n, *tmp;
    list_for_each(&p->idle, n, tmp)
    {
        struct server *s = container_of(n, struct server, node);
        if (s->startup_fp == fp)
            return s;
    }
    return NULL;
}

/* The first eligible waiter, FIFO, with an idle server opened with the startup parameters it
 * wants (*s). A waiter without one is passed over: its server is opened (maybe_connect). */
struct client *pool_first_served_by_idle(const struct pool *p, struct server **s)
{
    uint64_t missing = 0;
    bool any_missing = false;
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (!may_lease(c)) {
            if (budget_count(p->worker) <= 1)
                break; /* no budgets configured: the head is the only candidate */
            continue;
        }
        uint64_t fp = pool_startup_wanted(p, c);
        if (any_missing && fp == missing)
            continue; /* the same as the last one that had none: one look is enough */
        if ((*s = idle_opened_with(p, fp)) != NULL)
            return c;
        missing = fp;
        any_missing = true;
    }
    return NULL;
}

/* The first eligible waiter, FIFO, that wants a server opened as s was, or NULL. */
struct client *pool_first_fitting(const struct pool *p, const struct server *s)
{
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (!may_lease(c)) {
            if (budget_count(p->worker) <= 1)
                break;
            continue;
        }
        if (pool_startup_wanted(p, c) == s->startup_fp)
            return c;
    }
    return NULL;
}

/* Servers matched by startup parameters (pool_matches_startup), a cap full: is a waiter ahead
 * of c still without a server (none logging in for it, no room being made for it)? Then a
 * server fitting c is closed instead, so that the older waiter's opens in its place: otherwise
 * clients of a busy application, which take each other's servers at release, would keep a
 * client of other parameters waiting until query_wait_timeout. */
bool pool_room_owed_to_older(struct pool *p, const struct client *c)
{
    if (!pool_matches_startup(p) || ledger_pool_limit(p, false) == LIMIT_NONE)
        return false;
    int ahead = 0; /* eligible waiters ahead of c */
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        const struct client *w = container_of(n, struct client, node);
        if (w == c)
            break;
        if (may_lease(w))
            ahead++;
    }
    /* The rooms being made go to the first waiters without a server: those this worker is
     * making, and those other workers close servers for (ledger_claim_older). */
    struct client *first = NULL;
    int unprovided = ahead > 0 ? pool_count_unprovided(p, ahead, &first) : 0;
    if (unprovided <= p->rooms_awaited)
        return false;
    if (p->worker->proc->nworkers == 1)
        return true;
    /* with the closes other workers make for it, and noting this one in the same critical
     * section: else another worker's release closes a second server for the same waiter */
    return ledger_wait_room_here(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index,
                                 unprovided, p->rooms_awaited);
}

