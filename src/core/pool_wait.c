/* pool_wait: what a client waiting for a server of its pool is told, split from pool.c, which
 * decides who waits: how long it may wait (query_wait_timeout, or server_down_wait while the
 * database is down), the NOTICE after query_wait_notify, and when its time is up the reason
 * that actually held it back, with the key, its value and what to do. */
#include "pool_wait.h"

#include <stdio.h>
#include <string.h>

#include "budget.h"
#include "client.h"
#include "ledger.h"
#include "pool_breaker.h"
#include "pool_mode.h"
#include "pool_waiters.h"
#include "sluice.h"

/* The reason a client waited too long: what actually held it back (a paused pool, servers
 * still logging in, its budget, a shared cap and who holds it, or the
 * pool's own size), with the key and value and what to do. */
static void describe_wait(const struct pool *p, const struct client *c, uint64_t waited_ms,
                          char *msg, size_t len)
{
    double secs = (double)waited_ms / 1000.0;
    if (p->paused && p->paused_by == PAUSED_BY_KILL) {
        snprintf(msg, len,
                 "database \"%s\" was stopped by KILL on the admin console and stays paused: no "
                 "server for %.1f s (query_wait_timeout); RESUME %s serves clients again",
                 p->db_name, secs, p->db_name);
        return;
    }
    if (p->paused) {
        /* RESUME db leaves a PAUSE without a name in force: name the RESUME that releases it */
        bool all = ledger_paused_all(&p->worker->proc->ledger);
        snprintf(msg, len,
                 "pool \"%s/%s\" is paused (%s): no server for %.1f s (query_wait_timeout); "
                 "RESUME%s%s serves clients again",
                 p->db_name, p->user_name, all ? "PAUSE of every database, or SIGUSR1" : "PAUSE",
                 secs, all ? "" : " ", all ? "" : p->db_name);
        return;
    }
    enum limit_kind k = ledger_lease_limit_since(p->worker, c->budget, pool_waiter_since(c));
    if (k == LIMIT_BUDGET) {
        snprintf(msg, len,
                 "budget \"%s\" is full: %d of %d servers (max_servers) busy for %.1f s "
                 "(query_wait_timeout); raise max_servers of budget \"%s\" or make its clients "
                 "hold servers for less time",
                 c->budget->name, budget_leases(c->budget, p->worker->proc->nworkers),
                 budget_limit_value(p, c->budget, LIMIT_BUDGET), secs, c->budget->name);
        return;
    }
    if (k == LIMIT_RESERVED) {
        enum limit_kind key;
        int capacity = budget_shared_capacity(p->worker, &key);
        snprintf(msg, len,
                 "no server for budget \"%s\" after %.1f s (query_wait_timeout): of the %d "
                 "servers %s allows, the free ones are held for other budgets' min_servers; raise "
                 "%s or lower min_servers",
                 c->budget->name, secs, capacity, limit_kind_key(key), limit_kind_key(key));
        return;
    }
    if (p->connecting.count > 0 && p->active.count == 0) {
        snprintf(msg, len,
                 "pool \"%s/%s\": %d server%s still logging in to the database after %.1f s "
                 "(query_wait_timeout); the database is slow to accept logins: check it, or "
                 "raise query_wait_timeout",
                 p->db_name, p->user_name, p->connecting.count,
                 p->connecting.count == 1 ? " is" : "s are", secs);
        return;
    }
    k = ledger_pool_limit(p, true);
    if (k == LIMIT_DB || k == LIMIT_USER || k == LIMIT_GLOBAL) {
        int most;
        char holder_db[64] = "?", holder_user[64] = "?"; /* every worker's pools: the ledger's */
        ledger_largest_in_scope(&p->worker->proc->ledger, p->ledger_key, k, holder_db, holder_user,
                                sizeof(holder_db), &most);
        char scope[160];
        if (k == LIMIT_DB)
            snprintf(scope, sizeof(scope), "database \"%s\"", p->db_name);
        else if (k == LIMIT_USER)
            snprintf(scope, sizeof(scope), "user \"%s\"", p->user_name);
        else
            snprintf(scope, sizeof(scope), "sluice");
        snprintf(msg, len,
                 "%s is at %s = %d: no server for pool \"%s/%s\" for %.1f s (query_wait_timeout); "
                 "pool \"%s/%s\" holds %d of them; raise %s, or find what holds servers with "
                 "SHOW CLIENTS",
                 scope, limit_kind_key(k), budget_limit_value(p, c->budget, k), p->db_name,
                 p->user_name, secs, holder_db, holder_user, most, limit_kind_key(k));
        return;
    }
    if (k == LIMIT_POOL) {
        /* Every worker's backends of the key count against pool_size; another worker's idle
         * ones were no more use to this waiter than busy ones. */
        int servers = atomic_load_explicit(&p->ledger_key->servers, memory_order_relaxed);
        int not_busy = p->idle.count + p->connecting.count;
        int used = snprintf(
            msg, len,
            "pool \"%s/%s\" is full: %d of %d servers busy for %.1f s (query_wait_timeout); "
            "pool_size = %d is reached: raise it, or find what holds servers with SHOW CLIENTS",
            p->db_name, p->user_name, servers > not_busy ? servers - not_busy : 0, servers, secs,
            p->size);
        /* A pinned server (its client used session state) comes back only when its client
         * leaves: worth saying, as a full pool is then not a matter of load. Which servers are
         * pinned may be another worker's to know; the log names each client as it is pinned. */
        if (p->worker->cfg->session_state_policy == SESSION_POLICY_PIN &&
            pool_mode_ops(p->mode, false)->release_at_idle && used > 0 && (size_t)used < len)
            snprintf(msg + used, len - (size_t)used,
                     "; session_state_policy = pin keeps a server with a client that used "
                     "session state until it disconnects (sluice's log names each such client)");
        return;
    }
    snprintf(msg, len,
             "pool \"%s/%s\": no server became free for %.1f s (query_wait_timeout); %d busy, %d "
             "being reset or closed to make room for this pool; find what holds servers with "
             "SHOW CLIENTS",
             p->db_name, p->user_name, secs, p->active.count,
             p->resetting.count + p->rooms_awaited);
}

/* A waiter's time is up. Each cause has its own SQLSTATE, so a retry policy can tell them
 * apart: a paused pool (57000), a database that is down (57P03), a full pool or cap (53300). */
void pool_fail_waiter(struct pool *p, struct client *c, uint64_t waited_ms)
{
    char msg[768];
    if (p->paused) {
        describe_wait(p, c, waited_ms, msg, sizeof(msg));
        p->worker->pool_events->waiter_timed_out(c, FAIL_POOL_PAUSED_RETRY, FAIL_POOL_PAUSED, msg);
    } else if (pool_is_down(p)) {
        /* Refused for good by a probe another worker made: its waiters got the server's FATAL
         * at once (pool_breaker.c); this one gets it now, as from Postgres. */
        char sqlstate[6];
        if (pool_down_refusal(p, sqlstate, msg, sizeof(msg))) {
            p->worker->pool_events->waiter_failed(c, FAIL_SERVER_LOGIN, msg, sqlstate);
            return;
        }
        pool_describe_down(p, msg, sizeof(msg));
        p->worker->pool_events->waiter_timed_out(c, FAIL_DATABASE_DOWN_RETRY, FAIL_DATABASE_DOWN, msg);
    } else {
        describe_wait(p, c, waited_ms, msg, sizeof(msg));
        p->worker->pool_events->waiter_timed_out(c, FAIL_WAIT_TIMEOUT_RETRY, FAIL_WAIT_TIMEOUT, msg);
    }
}

/* How long a client may wait for a server (0: no limit): query_wait_timeout, or the shorter
 * server_down_wait while the breaker says the database is down. */
uint64_t pool_wait_limit(const struct pool *p)
{
    const struct config *cfg = p->worker->cfg;
    uint64_t limit = (uint64_t)cfg->query_wait_timeout;
    uint64_t down = (uint64_t)cfg->server_down_wait;
    if (pool_is_down(p) && !p->paused && down > 0 && (limit == 0 || down < limit))
        limit = down;
    return limit;
}

/* query_wait_notify (PgBouncer's, with its wording): a logged-in client queued this long gets
 * one NOTICE per wait, so a person at psql knows the pooler, not the query, is slow. */
void pool_notify_long_waits(struct pool *p, uint64_t now)
{
    int64_t after = p->worker->cfg->query_wait_notify;
    if (after <= 0)
        return;
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (now - c->state_since_ms < (uint64_t)after)
            break; /* FIFO: the rest have waited less */
        if (c->state != CLIENT_WAITING || c->wait_notice == WAIT_TOLD)
            continue;
        c->wait_notice = WAIT_TOLD;
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "No server connection available in pool %s/%s, client being queued",
                 p->db_name, p->user_name);
        p->worker->pool_events->waiter_notified(c, msg);
    }
}
