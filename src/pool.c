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

#include "client.h"
#include "log.h"
#include "pool_mode.h"
#include "server.h"
#include "sluice.h"

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
    pool_apply_config(p);
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

static bool below_global_cap(const struct pool *p)
{
    int cap = limit_resolve(p->app->cfg->max_server_connections, 0);
    return cap <= 0 || p->app->nservers < cap;
}

/* Open connections for clients that wait, within the pool size and the backoff. */
static void maybe_connect(struct pool *p)
{
    struct sluice *app = p->app;
    if (app->phase != PHASE_RUNNING || sluice_now(app) < p->next_connect_ms)
        return;
    int want = p->waiting.count - p->connecting.count;
    /* After a failure, probe with one connection before opening many. */
    if (p->connect_failures > 0 && p->connecting.count > 0)
        return;
    if (p->connect_failures > 0 && want > 1)
        want = 1;
    while (want-- > 0 && pool_server_count(p) < p->size && below_global_cap(p)) {
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
    c->server = s;
    client_on_linked(c, s);
}

/* An idle server that has sat longer than server_check_delay is checked before reuse. */
static bool needs_check(const struct server *s, uint64_t now)
{
    const struct config *cfg = s->pool->app->cfg;
    return cfg->server_check_query[0] && cfg->server_check_delay >= 0 &&
           now - s->state_since_ms >= (uint64_t)cfg->server_check_delay;
}

void pool_lease(struct pool *p, struct client *c)
{
    uint64_t now = sluice_now(p->app);
    while (!list_empty(&p->idle)) {
        struct server *s = container_of(list_first(&p->idle), struct server, node);
        if (needs_check(s, now)) {
            server_set_state(s, SERVER_RESETTING);
            server_queue_internal(s, p->app->cfg->server_check_query);
            relay_kick(s);
            continue;
        }
        /* The client was queued by its caller; the head of the queue gets the server. */
        struct client *head = container_of(list_first(&p->waiting), struct client, node);
        link_pair(s, head);
        if (c->state != CLIENT_WAITING && c->state != CLIENT_LOGIN_WAIT)
            return;
    }
    maybe_connect(p);
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
    if (!list_empty(&p->waiting)) {
        struct client *c = container_of(list_first(&p->waiting), struct client, node);
        link_pair(s, c);
        return;
    }
    server_set_state(s, SERVER_IDLE);
    buf_detach_if_empty(&s->in);
    relay_server_interest(s);
}

void pool_release(struct server *s)
{
    struct pool *p = s->pool;
    const struct config *cfg = p->app->cfg;
    const struct pool_mode_ops *ops = pool_mode_ops(p->mode, cfg->server_reset_query_always);
    bool queued = false;
    if (s->txn_status != 'I') {
        server_queue_internal(s, "ROLLBACK");
        queued = true;
    }
    if (ops->reset_on_release && cfg->server_reset_query[0]) {
        server_queue_internal(s, cfg->server_reset_query);
        queued = true;
    }
    if (queued || s->cancels_in_flight > 0) {
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

static void fail_waiter(struct pool *p, struct client *c, uint64_t waited_ms)
{
    const struct config *cfg = p->app->cfg;
    char msg[768];
    int servers = pool_server_count(p);
    if (servers == 0 && p->last_connect_error) {
        snprintf(msg, sizeof(msg),
                 "no server for pool \"%s/%s\" after %.1f s (query_wait_timeout): the database "
                 "refuses connections: %s",
                 p->db_name, p->user_name, (double)waited_ms / 1000.0, p->last_connect_error);
    } else {
        int cap = limit_resolve(cfg->max_server_connections, 0);
        const char *limit = "pool_size";
        if (servers < p->size && cap > 0 && p->app->nservers >= cap)
            limit = "max_server_connections";
        snprintf(msg, sizeof(msg),
                 "pool \"%s/%s\" is full: %d of %d servers busy for %.1f s (query_wait_timeout); "
                 "raise %s, or find what holds them with SHOW CLIENTS",
                 p->db_name, p->user_name, p->active.count, p->size, (double)waited_ms / 1000.0,
                 limit);
    }
    client_fail(c, FAIL_WAIT_TIMEOUT, msg);
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
    list_for_each(&p->idle_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    list_for_each(&p->active_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    maybe_connect(p);
    /* Keep min_pool_size servers warm once the database has been reached. */
    if (p->app->phase == PHASE_RUNNING && p->have_welcome && now >= p->next_connect_ms &&
        p->connecting.count == 0 && pool_server_count(p) < p->min_size &&
        pool_server_count(p) < p->size && below_global_cap(p))
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
