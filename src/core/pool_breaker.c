/* pool_breaker: the pool's circuit breaker (struct breaker in pool.h) — connect failures, the
 * backoff between attempts, the one probe while the database is down, and what clients that
 * wait are told meanwhile. Split from pool.c, which asks pool_may_try_connect before opening. */
#include "pool_breaker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "client.h"
#include "log.h"
#include "sluice.h"

const char *breaker_state_name(enum breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED:
        return "closed";
    case BREAKER_OPEN:
        return "open";
    case BREAKER_PROBING:
        return "probing";
    }
    return "?";
}

bool pool_is_down(const struct pool *p)
{
    return p->breaker.state != BREAKER_CLOSED;
}

/* May a connection attempt start now? Not within the backoff, and after a failure only one at
 * a time: the first to succeed shows the database is back before many more are opened. A probe
 * that ended without a verdict (closed by KILL, a reload or shutdown) leaves the breaker open. */
bool pool_may_try_connect(struct pool *p)
{
    struct breaker *b = &p->breaker;
    if (b->state == BREAKER_PROBING && p->connecting.count == 0)
        b->state = BREAKER_OPEN;
    if (sluice_now(p->worker) < b->next_try_ms)
        return false;
    return b->failures == 0 || p->connecting.count == 0;
}

/* Why a client that needs a server of a down pool fails: the database's reason and how long. */
void pool_describe_down(const struct pool *p, char *msg, size_t len)
{
    const struct breaker *b = &p->breaker;
    snprintf(msg, len,
             "pool \"%s/%s\": the database is down or refuses connections, for %.1f s now: %s",
             p->db_name, p->user_name, (double)(sluice_now(p->worker) - b->down_since_ms) / 1000.0,
             b->last_error ? b->last_error : "unknown error");
}

/* Has the pool a server that logged in (one that shows the database takes connections)? */
static bool has_logged_in_server(const struct pool *p)
{
    return p->idle.count + p->active.count + p->resetting.count > 0;
}

/* Logins to a pool that has never reached its database wait for a server of their own (once
 * one has logged in, logins are welcomed from the pool and need none): while the database is
 * down they fail now, with the breaker's code and reason, as PgBouncer fails them. */
static void fail_logins_while_down(struct pool *p)
{
    if (p->have_welcome)
        return;
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (c->state == CLIENT_LOGIN_WAIT) {
            char msg[768];
            pool_describe_down(p, msg, sizeof(msg));
            p->worker->pool_events->waiter_failed(c, FAIL_DATABASE_DOWN, msg, NULL);
        }
    }
}

static void connect_failed(struct pool *p, const char *message, const char *refusal_sqlstate,
                           const char *server_message)
{
    struct worker *worker = p->worker;
    const struct config *cfg = worker->cfg;
    struct breaker *b = &p->breaker;
    b->failures++;
    /* Exponential backoff with jitter, capped by server_login_retry: a database that refuses
     * connections (restarting, at max_connections) gets probed, not stormed. The cap is
     * server_down_wait when that is shorter, so a client that waits it out has seen a probe:
     * nobody gets 57P03 from a database that was back for the whole of their wait. */
    uint64_t cap = (uint64_t)cfg->server_login_retry;
    if (cfg->server_down_wait > 0 && (uint64_t)cfg->server_down_wait < cap)
        cap = (uint64_t)cfg->server_down_wait;
    uint64_t backoff = 100;
    for (int i = 1; i < b->failures && backoff < cap; i++)
        backoff *= 2;
    if (backoff > cap)
        backoff = cap;
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = (uint32_t)sluice_now(worker);
    backoff = backoff * (80 + r % 41) / 100;
    if (backoff > cap)
        backoff = cap;
    b->next_try_ms = sluice_now(worker) + backoff;
    free(b->last_error);
    b->last_error = strdup(message);
    if (b->state == BREAKER_PROBING) {
        b->state = BREAKER_OPEN;
        log_msg(LOG_DEBUG, "pool %s/%s: probe failed (failure %d, next try in %llu ms): %s",
                p->db_name, p->user_name, b->failures, (unsigned long long)backoff, message);
    } else if (b->state == BREAKER_CLOSED && !has_logged_in_server(p)) {
        /* The state change is logged, not each failure: an outage is one line, and one more
         * when it ends. */
        b->state = BREAKER_OPEN;
        b->down_since_ms = sluice_now(worker);
        log_msg(LOG_WARNING,
                "pool %s/%s is down: cannot connect to the database (%s); requests that need a "
                "server fail after %.1f s (server_down_wait) until a probe (at most %.1f s "
                "apart) succeeds",
                p->db_name, p->user_name, message, (double)cfg->server_down_wait / 1000.0,
                (double)cap / 1000.0);
    } else if (b->state == BREAKER_CLOSED && (b->failures == 1 || b->failures % 10 == 0)) {
        log_msg(LOG_WARNING,
                "pool %s/%s: cannot open another server (failure %d, next try in %llu ms): %s",
                p->db_name, p->user_name, b->failures, (unsigned long long)backoff, message);
    }
    /* A refused login (PgBouncer's kill_pool_logins) is not a database recovering: nobody
     * waiting for this pool can get a server until the role, pg_hba.conf or the config changes,
     * so all of them get the server's own FATAL now. */
    if (refusal_sqlstate) {
        struct list_node *n, *tmp;
        list_for_each(&p->waiting, n, tmp)
        {
            struct client *c = container_of(n, struct client, node);
            worker->pool_events->waiter_failed(c, FAIL_SERVER_LOGIN, server_message,
                                               refusal_sqlstate);
        }
        return;
    }
    /* Clients still logging in to a pool that never reached its database cannot be told what
     * the server reports: they fail now, as PgBouncer does, with the breaker's code and reason.
     * Everyone else waits up to server_down_wait for a probe to succeed (pool_maintain). */
    if (pool_is_down(p) && p->connecting.count == 0)
        fail_logins_while_down(p);
}

void pool_connect_failed(struct pool *p, const char *message)
{
    connect_failed(p, message, NULL, NULL);
}

void pool_login_refused(struct pool *p, const char *sqlstate, const char *why,
                        const char *server_message)
{
    connect_failed(p, why, sqlstate, server_message);
}

void pool_connect_succeeded(struct pool *p)
{
    struct breaker *b = &p->breaker;
    if (b->state != BREAKER_CLOSED)
        log_msg(LOG_INFO,
                "pool %s/%s is up again: connected to the database after %.1f s down "
                "(%d failed attempts)",
                p->db_name, p->user_name,
                (double)(sluice_now(p->worker) - b->down_since_ms) / 1000.0, b->failures);
    b->state = BREAKER_CLOSED;
    b->failures = 0;
    b->next_try_ms = 0;
}
