/* pool: servers and waiting clients of one (database, user) pair (see pool.h).
 *
 * Waiting is FIFO: a freed server always goes to the client that has waited longest, so no
 * client starves while others keep getting servers. Idle servers are reused LIFO (the most
 * recently used first) unless server_round_robin is set, which keeps the rest idle long enough
 * for server_idle_timeout to close them. */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "admin.h"
#include "budget.h"
#include "client.h"
#include "log.h"
#include "pool_mode.h"
#include "server.h"
#include "sluice.h"

const uint64_t pool_hist_bounds_ms[POOL_HIST_BUCKETS - 1] = {1,   5,    10,   25,   50,    100,
                                                              250, 500, 1000, 2500, 5000, 10000};

static void hist_add(uint64_t *hist, uint64_t ms)
{
    int i = 0;
    while (i < POOL_HIST_BUCKETS - 1 && ms > pool_hist_bounds_ms[i])
        i++;
    hist[i]++;
}

void pool_record_wait(struct pool *p, uint64_t waited_ms)
{
    p->wait_count++;
    p->wait_us_total += waited_ms * 1000;
    hist_add(p->wait_hist, waited_ms);
}

void pool_record_query(struct pool *p, uint64_t query_ms, bool transaction_ended)
{
    p->query_count++;
    p->query_ms_total += query_ms;
    if (transaction_ended)
        p->xact_count++;
    hist_add(p->query_hist, query_ms);
}

struct pool *pool_get(struct sluice *app, const struct db_entry *db, const char *user,
                      const char *database)
{
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (strcmp(p->db_name, database) == 0 && strcmp(p->user_name, user) == 0)
            return p;
    }
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->app = app;
    p->db_name = strdup(database);
    p->user_name = strdup(user);
    p->target_db = strdup(database);
    if (!p->db_name || !p->user_name || !p->target_db) {
        free(p->db_name);
        free(p->user_name);
        free(p->target_db);
        free(p);
        return NULL;
    }
    (void)db;
    list_init(&p->connecting);
    list_init(&p->idle);
    list_init(&p->active);
    list_init(&p->resetting);
    list_init(&p->waiting);
    list_init(&p->idle_clients);
    list_init(&p->active_clients);
    params_init(&p->welcome);
    p->is_admin = admin_is_console_db(database);
    pool_apply_config(p);
    /* PAUSE db applies to the database: a pool for a user who arrives later starts paused too. */
    struct list_node *n2, *tmp2;
    list_for_each(&app->pools, n2, tmp2)
    {
        const struct pool *o = container_of(n2, struct pool, node);
        if (o->paused && strcmp(o->db_name, p->db_name) == 0)
            p->paused = true;
    }
    list_append(&app->pools, &p->node);
    log_msg(LOG_INFO, "pool %s/%s created: %s mode, pool_size %d", p->db_name, p->user_name,
            pool_mode_name(p->mode), p->size);
    return p;
}

void pool_apply_config(struct pool *p)
{
    const struct config *cfg = p->app->cfg;
    const struct db_entry *db = config_find_db(cfg, p->db_name);
    const struct user_entry *u = config_find_user(cfg, p->user_name);
    p->mode = cfg->pool_mode;
    p->size = (int)cfg->default_pool_size;
    p->min_size = (int)cfg->min_pool_size;
    p->reserve_size = (int)cfg->reserve_pool_size;
    if (db && db->reserve_pool >= 0)
        p->reserve_size = db->reserve_pool;
    if (db) {
        if (db->pool_mode != POOL_MODE_UNSET)
            p->mode = db->pool_mode;
        if (db->pool_size >= 0)
            p->size = db->pool_size;
        if (db->min_pool_size >= 0)
            p->min_size = db->min_pool_size;
    }
    if (u) {
        if (u->pool_mode != POOL_MODE_UNSET)
            p->mode = u->pool_mode;
        if (u->pool_size >= 0)
            p->size = u->pool_size;
    }
}

int pool_server_count(const struct pool *p)
{
    return p->connecting.count + p->idle.count + p->active.count + p->resetting.count;
}

/* Is this waiting client allowed a server now (its budget's caps)? */
static bool may_lease(const struct client *c)
{
    /* A login only borrows a server to learn what to report: never held back. */
    return c->state == CLIENT_LOGIN_WAIT ||
           budget_lease_limit(c->app, c->budget) == LIMIT_NONE;
}

/* The first waiter, in FIFO order, that may have a server now. */
static struct client *first_eligible(const struct pool *p)
{
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (may_lease(c))
            return c;
        if (p->app->budgets.n <= 1)
            break; /* no budgets configured: the head is the only candidate */
    }
    return NULL;
}

static int count_eligible(const struct pool *p, int enough)
{
    if (p->app->budgets.n <= 1)
        return p->waiting.count;
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&p->waiting, node, tmp)
    {
        if (may_lease(container_of(node, struct client, node)) && ++n >= enough)
            break;
    }
    return n;
}

/* Close the longest-idle server of another pool in the scope of a full cap, so the pool that
 * has waiters gets the room (PgBouncer does the same for max_db_connections). */
static bool evict_idle_elsewhere(struct pool *p, enum limit_kind k)
{
    return pool_evict_idle(p->app, k, p->db_name, p->user_name, p);
}

bool pool_evict_idle(struct sluice *app, enum limit_kind k, const char *db_name,
                     const char *user_name, const struct pool *except)
{
    struct pool *victim = NULL;
    struct server *oldest = NULL;
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
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
    log_server(LOG_INFO, oldest, "closing an idle server of pool %s/%s to make room under %s",
               victim->db_name, victim->user_name, limit_kind_key(k));
    server_close(oldest, "evicted to make room for another pool");
    return true;
}

/* Open connections for clients that wait, within every cap and the backoff. */
static void maybe_connect(struct pool *p)
{
    struct sluice *app = p->app;
    if (app->phase != PHASE_RUNNING || p->paused || sluice_now(app) < p->next_connect_ms)
        return;
    /* After a failure, probe with one connection before opening many. */
    if (p->connect_failures > 0 && p->connecting.count > 0)
        return;
    int want = count_eligible(p, p->size + p->reserve_size) - p->connecting.count;
    if (p->connect_failures > 0 && want > 1)
        want = 1;
    bool use_reserve = false;
    if (p->reserve_size > 0 && !list_empty(&p->waiting)) {
        struct client *head = container_of(list_first(&p->waiting), struct client, node);
        use_reserve = sluice_now(app) - head->state_since_ms >=
                      (uint64_t)app->cfg->reserve_pool_timeout;
    }
    while (want-- > 0) {
        enum limit_kind k = budget_connect_limit(p, use_reserve);
        if ((k == LIMIT_DB || k == LIMIT_USER || k == LIMIT_GLOBAL) && evict_idle_elsewhere(p, k))
            k = budget_connect_limit(p, use_reserve);
        if (k != LIMIT_NONE)
            break;
        if (!server_connect(p))
            break;
    }
}

static void link_pair(struct server *s, struct client *c)
{
    server_set_state(s, SERVER_ACTIVE);
    s->client = c;
    s->inflight = 0;
    s->batch_open = false;
    s->timeout_cancel_sent = false;
    c->server = s;
    if (c->budget) {
        s->lease_budget = c->budget;
        c->budget->leases++;
    }
    client_on_linked(c, s);
}

void pool_unlink(struct client *c, struct server *s)
{
    c->server = NULL;
    s->client = NULL;
    if (s->lease_budget) {
        s->lease_budget->leases--;
        s->lease_budget = NULL;
        /* Budgets span pools: a waiter elsewhere may have been held back by this one. */
        if (c->app->budgets.n > 1)
            c->app->dispatch_needed = true;
    }
}

/* An idle server that has sat longer than server_check_delay is checked before reuse. */
static bool needs_check(const struct server *s, uint64_t now)
{
    const struct config *cfg = s->pool->app->cfg;
    return cfg->server_check_query[0] && cfg->server_check_delay >= 0 &&
           now - s->state_since_ms >= (uint64_t)cfg->server_check_delay;
}

/* Hand idle servers to eligible waiters, FIFO. */
static void dispatch(struct pool *p)
{
    uint64_t now = sluice_now(p->app);
    while (!p->paused && !list_empty(&p->idle)) {
        struct client *c = first_eligible(p);
        if (!c)
            return;
        struct server *s = container_of(list_first(&p->idle), struct server, node);
        if (needs_check(s, now)) {
            server_set_state(s, SERVER_RESETTING);
            server_queue_internal(s, p->app->cfg->server_check_query);
            relay_kick(s);
            continue;
        }
        link_pair(s, c);
    }
}

void pool_lease(struct pool *p, struct client *c)
{
    if (p->paused && c->state != CLIENT_LOGIN_WAIT)
        return;
    dispatch(p);
    maybe_connect(p);
}

void pool_dispatch_all(struct sluice *app)
{
    app->dispatch_needed = false;
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (!list_empty(&p->waiting)) {
            dispatch(p);
            maybe_connect(p);
        }
    }
}

void pool_server_ready(struct server *s)
{
    struct pool *p = s->pool;
    struct sluice *app = p->app;
    const struct config *cfg = app->cfg;
    uint64_t now = sluice_now(app);
    if (app->phase != PHASE_RUNNING && list_empty(&p->waiting)) {
        server_close(s, "shutting down");
        return;
    }
    if (s->close_when_free ||
        (cfg->server_lifetime > 0 && now - s->connect_ms >= (uint64_t)cfg->server_lifetime)) {
        server_close(s, s->close_when_free ? "closed at release" : "server_lifetime reached");
        maybe_connect(p);
        return;
    }
    if (!p->have_welcome) {
        if (params_copy(&p->welcome, &s->params) == 0)
            p->have_welcome = true;
    }
    struct client *c = p->paused ? NULL : first_eligible(p);
    if (c) {
        link_pair(s, c);
        return;
    }
    server_set_state(s, SERVER_IDLE);
    buf_detach_if_empty(&s->in);
    relay_server_interest(s);
}

bool pool_queue_cleanup(struct server *s)
{
    const struct config *cfg = s->pool->app->cfg;
    const struct pool_mode_ops *ops = pool_mode_ops(s->pool->mode, cfg->server_reset_query_always);
    bool queued = false;
    if (s->txn_status != 'I') {
        server_queue_internal(s, "ROLLBACK");
        queued = true;
    }
    if (ops->reset_on_release && cfg->server_reset_query[0]) {
        server_queue_internal(s, cfg->server_reset_query);
        /* DISCARD ALL drops prepared statements; should it fail, re-preparing stays safe. */
        stmt_map_mark_unknown(&s->stmts);
        queued = true;
    }
    return queued;
}

void pool_release(struct server *s)
{
    if (pool_queue_cleanup(s) || s->cancels_in_flight > 0) {
        server_set_state(s, SERVER_RESETTING);
        relay_kick(s);
        return;
    }
    pool_server_ready(s);
}

void pool_connect_failed(struct pool *p, const char *message)
{
    struct sluice *app = p->app;
    const struct config *cfg = app->cfg;
    p->connect_failures++;
    /* Exponential backoff with jitter, capped by server_login_retry: a database that refuses
     * connections (restarting, at max_connections) gets probed, not stormed. */
    uint64_t backoff = 100;
    for (int i = 1; i < p->connect_failures && backoff < (uint64_t)cfg->server_login_retry; i++)
        backoff *= 2;
    if (backoff > (uint64_t)cfg->server_login_retry)
        backoff = (uint64_t)cfg->server_login_retry;
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = (uint32_t)sluice_now(app);
    backoff = backoff * (80 + r % 41) / 100;
    p->next_connect_ms = sluice_now(app) + backoff;
    free(p->last_connect_error);
    p->last_connect_error = strdup(message);
    if (p->connect_failures == 1 || p->connect_failures % 10 == 0)
        log_msg(LOG_WARNING, "pool %s/%s: cannot connect to the server (failure %d, next try in %llu ms): %s",
                p->db_name, p->user_name, p->connect_failures, (unsigned long long)backoff, message);
    /* Clients still logging in cannot be told what the server reports until one server is in:
     * fail them with the server's reason (as PgBouncer does) instead of letting them hang. Clients
     * that are logged in keep waiting, within query_wait_timeout, for the database to recover. */
    if (!p->have_welcome && p->connecting.count == 0) {
        struct list_node *n, *tmp;
        list_for_each(&p->waiting, n, tmp)
        {
            struct client *c = container_of(n, struct client, node);
            if (c->state == CLIENT_LOGIN_WAIT)
                client_fail_with_state(c, FAIL_SERVER_LOGIN, message, "08006");
        }
    }
}

/* The reason a client waited too long, naming the limit, its key and value, and what to do. */
static void describe_wait(const struct pool *p, const struct client *c, uint64_t waited_ms,
                          char *msg, size_t len)
{
    double secs = (double)waited_ms / 1000.0;
    if (pool_server_count(p) == 0 && p->last_connect_error) {
        snprintf(msg, len,
                 "no server for pool \"%s/%s\" after %.1f s (query_wait_timeout): the database "
                 "refuses connections: %s",
                 p->db_name, p->user_name, secs, p->last_connect_error);
        return;
    }
    enum limit_kind k = budget_lease_limit(p->app, c->budget);
    if (k == LIMIT_BUDGET) {
        snprintf(msg, len,
                 "budget \"%s\" is full: %d of %d servers (max_servers) busy for %.1f s "
                 "(query_wait_timeout); raise max_servers of budget \"%s\" or make its clients "
                 "hold servers for less time",
                 c->budget->name, c->budget->leases, c->budget->max_servers, secs, c->budget->name);
        return;
    }
    if (k == LIMIT_RESERVED) {
        snprintf(msg, len,
                 "no server for budget \"%s\" after %.1f s (query_wait_timeout): the free servers "
                 "are held for other budgets' min_servers; raise max_server_connections or lower "
                 "min_servers",
                 c->budget->name, secs);
        return;
    }
    k = budget_connect_limit(p, true);
    if (k == LIMIT_NONE)
        k = LIMIT_POOL;
    snprintf(msg, len,
             "pool \"%s/%s\" is full: %d of %d servers busy for %.1f s (query_wait_timeout); "
             "%s = %d is reached: raise it, or find what holds servers with SHOW CLIENTS",
             p->db_name, p->user_name, p->active.count, pool_server_count(p), secs,
             limit_kind_key(k), budget_limit_value(p, c->budget, k));
}

static void fail_waiter(struct pool *p, struct client *c, uint64_t waited_ms)
{
    char msg[768];
    describe_wait(p, c, waited_ms, msg, sizeof(msg));
    client_wait_timed_out(c, msg);
}

void pool_maintain(struct pool *p, uint64_t now)
{
    const struct config *cfg = p->app->cfg;
    struct list_node *n, *tmp;
    if (cfg->query_wait_timeout > 0) {
        /* FIFO: the head has waited longest; stop at the first one still within its time. */
        while (!list_empty(&p->waiting)) {
            struct client *c = container_of(list_first(&p->waiting), struct client, node);
            uint64_t waited = now - c->state_since_ms;
            if (waited < (uint64_t)cfg->query_wait_timeout)
                break;
            fail_waiter(p, c, waited);
        }
    }
    list_for_each(&p->connecting, n, tmp)
        server_check_timeouts(container_of(n, struct server, node), now);
    list_for_each(&p->idle, n, tmp)
        server_check_timeouts(container_of(n, struct server, node), now);
    list_for_each(&p->resetting, n, tmp)
        server_check_timeouts(container_of(n, struct server, node), now);
    list_for_each(&p->idle_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    list_for_each(&p->active_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    maybe_connect(p);
    /* A reload made the pool smaller: close idle servers above the new size. */
    while (pool_server_count(p) > p->size && !list_empty(&p->idle))
        server_close(container_of(list_last(&p->idle), struct server, node),
                     "pool_size lowered by reload");
    /* Keep min_pool_size servers warm once the database has been reached. */
    if (p->app->phase == PHASE_RUNNING && !p->paused && p->have_welcome && now >= p->next_connect_ms &&
        p->connecting.count == 0 && pool_server_count(p) < p->min_size &&
        budget_connect_limit(p, false) == LIMIT_NONE)
        server_connect(p);
}

void pool_free(struct pool *p)
{
    params_free(&p->welcome);
    free(p->last_connect_error);
    free(p->db_name);
    free(p->user_name);
    free(p->target_db);
    free(p);
}

void pool_pause(struct pool *p)
{
    p->paused = true;
}

void pool_resume(struct pool *p)
{
    if (!p->paused)
        return;
    p->paused = false;
    if (!list_empty(&p->waiting)) {
        struct client *head = container_of(list_first(&p->waiting), struct client, node);
        pool_lease(p, head);
    }
}
