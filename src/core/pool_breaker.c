/* pool_breaker: the pool's circuit breaker (struct breaker in pool.h) — connect failures, the
 * backoff between attempts, the one probe while the database is down, and what clients that
 * wait are told meanwhile. Split from pool.c, which asks pool_may_try_connect before opening. */
#include "pool_breaker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "client.h"
#include "ledger.h"
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

/* The breaker's state is the pool key's, shared by every worker's pool of it (ledger_breaker.c):
 * one worker's failed probe tells every worker's clients. */
bool pool_is_down(const struct pool *p)
{
    return ledger_breaker_is_down(p->ledger_key);
}

static struct ledger *ledger_of(const struct pool *p)
{
    return &p->worker->proc->ledger;
}

/* This worker's loop time (sluice_now) of a CLOCK_MONOTONIC instant (ledger_now_ms). */
static uint64_t local_time(const struct pool *p, uint64_t mono_ms)
{
    uint64_t now = sluice_now(p->worker), mono_now = ledger_now_ms();
    if (mono_ms >= mono_now)
        return now + (mono_ms - mono_now);
    return mono_now - mono_ms > now ? 0 : now - (mono_now - mono_ms);
}

/* The pool's view of its key's breaker (struct breaker: what SHOW POOLS, /health and the
 * backoff of this worker read): copied from the ledger. Returns true when some other worker's
 * attempt failed since the last copy. */
static bool copy_shared_breaker(struct pool *p)
{
    struct ledger_breaker shared;
    ledger_breaker_read(ledger_of(p), p->ledger_key, &shared);
    struct breaker *b = &p->breaker;
    int failures = atomic_load_explicit(&shared.failures, memory_order_relaxed);
    bool news = failures > b->failures;
    b->failures = failures;
    b->next_try_ms = failures > 0 ? local_time(p, shared.next_try_ms) : 0;
    if (!atomic_load_explicit(&shared.down, memory_order_relaxed)) {
        b->state = BREAKER_CLOSED;
        return news;
    }
    if (b->state == BREAKER_CLOSED)
        b->state = BREAKER_OPEN;
    b->down_since_ms = local_time(p, shared.down_since_ms);
    if (!b->last_error || strcmp(b->last_error, shared.last_error) != 0) {
        free(b->last_error);
        b->last_error = strdup(shared.last_error);
    }
    return news;
}

static void fail_logins_while_down(struct pool *p);

/* May a connection attempt start now? Not within the backoff, and after a failure only one at
 * a time, across every worker (the ledger's claim): the first to succeed shows the database is
 * back before many more are opened. A probe that ended without a verdict (closed by KILL, a
 * reload or shutdown) leaves the breaker open, and its claim expires. */
bool pool_may_try_connect(struct pool *p)
{
    struct breaker *b = &p->breaker;
    if (b->state == BREAKER_PROBING && p->connecting.count == 0)
        b->state = BREAKER_OPEN;
    bool shared_news = false;
    if (b->state != BREAKER_CLOSED || b->failures > 0 ||
        atomic_load_explicit(&p->ledger_key->breaker.failures, memory_order_relaxed) > 0)
        shared_news = copy_shared_breaker(p);
    /* Another worker's probe failed: logins here that never reached the database fail now, as
     * they would on the worker that made the attempt. */
    if (shared_news && pool_is_down(p) && p->connecting.count == 0)
        fail_logins_while_down(p);
    if (sluice_now(p->worker) < b->next_try_ms)
        return false;
    if (b->failures > 0 && p->connecting.count > 0)
        return false;
    /* Only a pool that will make an attempt now asks for the process's one attempt (maybe_connect
     * probes while open, else opens for its waiters): a pool with nobody to open for would hold
     * the claim from another worker's waiters until it expired. */
    if (b->failures > 0 && b->state != BREAKER_OPEN && list_empty(&p->waiting))
        return false;
    uint64_t claim_ms = (uint64_t)p->worker->cfg->server_connect_timeout + 1000;
    return ledger_breaker_may_try(ledger_of(p), p->ledger_key, (int)p->worker->index, claim_ms);
}

void pool_breaker_settings_changed(struct pool *p)
{
    if (p->breaker.failures == 0 &&
        atomic_load_explicit(&p->ledger_key->breaker.failures, memory_order_relaxed) == 0)
        return;
    p->breaker.next_try_ms = 0;
    ledger_breaker_retry_now(ledger_of(p), p->ledger_key);
}

/* Why a client that needs a server of a down pool fails: the database's reason and how long. */
void pool_describe_down(const struct pool *p, char *msg, size_t len)
{
    struct ledger_breaker shared;
    ledger_breaker_read(ledger_of(p), p->ledger_key, &shared);
    uint64_t now = ledger_now_ms();
    uint64_t down_ms = now > shared.down_since_ms ? now - shared.down_since_ms : 0;
    snprintf(msg, len,
             "pool \"%s/%s\": the database is down or refuses connections, for %.1f s now: %s",
             p->db_name, p->user_name, (double)down_ms / 1000.0,
             shared.last_error[0] ? shared.last_error : "unknown error");
}

bool pool_down_refusal(const struct pool *p, char sqlstate[6], char *message, size_t len)
{
    struct ledger_breaker shared;
    ledger_breaker_read(ledger_of(p), p->ledger_key, &shared);
    if (!shared.refusal_sqlstate[0])
        return false;
    memcpy(sqlstate, shared.refusal_sqlstate, sizeof(shared.refusal_sqlstate));
    snprintf(message, len, "%s", shared.refusal_message);
    return true;
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

/* A refused login (PgBouncer's kill_pool_logins) is not a database recovering: nobody waiting
 * for this pool can get a server until the role, pg_hba.conf or the config changes, so all of
 * them get the server's own FATAL now. */
static void fail_waiters_refused(struct pool *p, const char *sqlstate, const char *server_message)
{
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        p->worker->pool_events->waiter_failed(c, FAIL_SERVER_LOGIN, server_message, sqlstate);
    }
}

/* A database a client named through the "*" entry that the server does not have (3D000)? */
static bool names_no_database(const struct pool *p, const char *refusal_sqlstate)
{
    if (!refusal_sqlstate || strcmp(refusal_sqlstate, "3D000") != 0)
        return false;
    const struct db_entry *db = config_find_db(p->worker->cfg, p->db_name);
    return db && strcmp(db->name, "*") == 0;
}

static void connect_failed(struct pool *p, const char *message, const char *refusal_sqlstate,
                           const char *server_message)
{
    struct worker *worker = p->worker;
    const struct config *cfg = worker->cfg;
    struct breaker *b = &p->breaker;
    /* That is the client's typo, not an outage: its waiters get the server's FATAL, as from
     * Postgres, and the pool is not down. Down, one client's typo took the whole pooler out of
     * rotation (/health 503 while any pool is down) and had the name probed every few seconds
     * for nobody. The next client naming it makes its own attempt, as against Postgres. */
    if (names_no_database(p, refusal_sqlstate)) {
        ledger_breaker_unclaim(ledger_of(p), p->ledger_key, (int)worker->index);
        log_msg(LOG_INFO, "pool %s/%s: the server has no database \"%s\" (3D000)", p->db_name,
                p->user_name, p->target_db);
        fail_waiters_refused(p, refusal_sqlstate, server_message);
        return;
    }
    /* Exponential backoff with jitter, capped by server_login_retry: a database that refuses
     * connections (restarting, at max_connections) gets probed, not stormed. The cap is
     * server_down_wait when that is shorter, so a client that waits it out has seen a probe:
     * nobody gets 57P03 from a database that was back for the whole of their wait. The failures
     * and the backoff are the pool key's, every worker's together (ledger_breaker.c). */
    uint64_t cap = (uint64_t)cfg->server_login_retry;
    if (cfg->server_down_wait > 0 && (uint64_t)cfg->server_down_wait < cap)
        cap = (uint64_t)cfg->server_down_wait;
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = (uint32_t)sluice_now(worker);
    struct ledger_breaker_report report = {message, refusal_sqlstate, server_message,
                                           !has_logged_in_server(p)};
    struct ledger_breaker_failure f = ledger_breaker_failed(ledger_of(p), p->ledger_key, &report,
                                                            cap, r);
    copy_shared_breaker(p);
    if (pool_is_down(p))
        b->state = BREAKER_OPEN; /* this pool's probe, if it was one, has ended */
    if (f.went_down) {
        /* The state change is logged, not each failure: an outage is one line (whichever
         * worker saw it), and one more when it ends. */
        log_msg(LOG_WARNING,
                "pool %s/%s is down: cannot connect to the database (%s); requests that need a "
                "server fail after %.1f s (server_down_wait) until a probe (at most %.1f s "
                "apart) succeeds",
                p->db_name, p->user_name, message, (double)cfg->server_down_wait / 1000.0,
                (double)cap / 1000.0);
    } else if (f.was_probe) {
        log_msg(LOG_DEBUG, "pool %s/%s: probe failed (failure %d, next try in %llu ms): %s",
                p->db_name, p->user_name, f.failures, (unsigned long long)f.backoff_ms, message);
    } else if (f.failures == 1 || f.failures % 10 == 0) {
        log_msg(LOG_WARNING,
                "pool %s/%s: cannot open another server (failure %d, next try in %llu ms): %s",
                p->db_name, p->user_name, f.failures, (unsigned long long)f.backoff_ms, message);
    }
    if (refusal_sqlstate) {
        fail_waiters_refused(p, refusal_sqlstate, server_message);
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
    int failures = 0;
    uint64_t down_ms = 0;
    if (ledger_breaker_succeeded(ledger_of(p), p->ledger_key, &failures, &down_ms))
        log_msg(LOG_INFO,
                "pool %s/%s is up again: connected to the database after %.1f s down "
                "(%d failed attempts)",
                p->db_name, p->user_name, (double)down_ms / 1000.0, failures);
    b->state = BREAKER_CLOSED;
    b->failures = 0;
    b->next_try_ms = 0;
}
