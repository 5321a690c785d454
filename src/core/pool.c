/* pool: servers and waiting clients of one (database, user) pair (see pool.h).
 *
 * Waiting is FIFO: a freed server always goes to the client that has waited longest, so no
 * client starves while others keep getting servers. Idle servers are reused LIFO (the most
 * recently used first) unless server_round_robin is set, which keeps the rest idle long enough
 * for server_idle_timeout to close them. A new backend takes its slot in the ledger before it
 * is opened, a lease before a server is handed out (ledger.h); the breaker is pool_breaker.c,
 * a server given up for a waiter elsewhere (or above a lowered cap) pool_room.c. */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "console.h"
#include "budget.h"
#include "client.h"
#include "ledger.h"
#include "log.h"
#include "pool_breaker.h"
#include "pool_mode.h"
#include "pool_room.h"
#include "pool_wait.h"
#include "pool_waiters.h"
#include "server.h"
#include "sluice.h"
#include "worker.h"

const uint64_t pool_hist_bounds_ms[POOL_HIST_BUCKETS - 1] = {1,   5,   10,   25,   50,   100,
                                                             250, 500, 1000, 2500, 5000, 10000};

/* ---- the pool's servers: opened, pumped and closed by the layer above (pool_events) ---- */

/* A server opened for client c (NULL: for none) has the startup parameters c wants. */
static struct server *open_server(struct pool *p, const struct client *c)
{
    uint64_t fp = c ? pool_startup_wanted(p, c) : 0;
    const struct param_set *startup = NULL;
    if (fp != 0)
        startup = c->login_params ? c->login_params : &c->params; /* as it logged in */
    return p->worker->pool_events->open_server(p, startup, fp);
}

static void close_server(struct server *s, const char *why)
{
    s->pool->worker->pool_events->close_server(s, why);
}

static void close_server_for(struct server *s, const char *why, struct pool *room_for)
{
    s->pool->worker->pool_events->close_server_for(s, why, room_for);
}

static void kick_server(struct server *s)
{
    s->pool->worker->pool_events->kick_server(s);
}

static void watch_server(struct server *s)
{
    s->pool->worker->pool_events->watch_server(s);
}

static void tick_server(struct server *s, uint64_t now)
{
    s->pool->worker->pool_events->server_tick(s, now);
}

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

struct pool *pool_get(struct worker *worker, const struct db_entry *db, const char *user,
                      const char *database)
{
    const char *forced = config_db_forced_user(db);
    if (forced)
        user = forced;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (strcmp(p->db_name, database) == 0 && strcmp(p->user_name, user) == 0)
            return p;
    }
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->worker = worker;
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
    list_init(&p->connecting);
    list_init(&p->idle);
    list_init(&p->active);
    list_init(&p->resetting);
    list_init(&p->leaving);
    list_init(&p->waiting);
    list_init(&p->idle_clients);
    list_init(&p->active_clients);
    params_init(&p->welcome);
    params_init(&p->accepted);
    p->ledger_key = ledger_key_get(&worker->proc->ledger, database, user);
    if (!p->ledger_key) {
        pool_free(p);
        return NULL;
    }
    p->is_admin = console_is_db(worker, database);
    pool_apply_config(p);
    /* PAUSE db applies to the database: a pool for a user who arrives later starts paused too. */
    struct list_node *n2, *tmp2;
    list_for_each(&worker->pools, n2, tmp2)
    {
        const struct pool *o = container_of(n2, struct pool, node);
        if (o->paused && strcmp(o->db_name, p->db_name) == 0)
            pool_pause(p, o->paused_by);
    }
    /* ... and so does a PAUSE another worker was told of (the ledger's state of the key) */
    if (!p->paused && !p->is_admin && ledger_key_get_state(p->ledger_key) == LEDGER_KEY_PAUSED)
        pool_pause(p, PAUSED_BY_PAUSE);
    list_append(&worker->pools, &p->node);
    /* Logged by the key's first worker. The console's pool opens no server: its mode and size
     * (the main section's) would describe a pool it is not. */
    if (!atomic_exchange_explicit(&p->ledger_key->pool_logged, true, memory_order_relaxed)) {
        if (p->is_admin)
            log_msg(LOG_INFO, "pool %s/%s created: admin console, answered by sluice (no servers)",
                    p->db_name, p->user_name);
        else
            log_msg(LOG_INFO, "pool %s/%s created: %s mode, pool_size %d", p->db_name, p->user_name,
                    pool_mode_name(p->mode), p->size);
    }
    budget_log_cap(p);
    return p;
}

void pool_apply_config(struct pool *p)
{
    const struct config *cfg = p->worker->cfg;
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
        if (u->reserve_pool >= 0)
            p->reserve_size = u->reserve_pool;
    }
    const char *forced = config_db_forced_user(db);
    p->user_forced = !p->is_admin && forced && strcmp(forced, p->user_name) == 0;
    ledger_key_note_pool_size(p->ledger_key, p->is_admin ? 0 : p->size);
    /* The console's clients keep the main section's timeouts: no entry describes them (a "*"
     * entry's would otherwise be found for the console's name). */
    const struct entry_timeouts *levels[] = {db && !p->is_admin ? &db->timeouts : NULL,
                                             u && !p->is_admin ? &u->timeouts : NULL};
    p->timeouts = (struct entry_timeouts){
        .server_lifetime = cfg->server_lifetime,
        .query_timeout = cfg->query_timeout,
        .idle_transaction_timeout = cfg->idle_transaction_timeout,
        .transaction_timeout = cfg->transaction_timeout,
        .client_idle_timeout = cfg->client_idle_timeout,
    };
    /* In order, the user's last: it overrides the database's. */
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        const struct entry_timeouts *t = levels[i];
        if (!t)
            continue;
        if (t->server_lifetime >= 0)
            p->timeouts.server_lifetime = t->server_lifetime;
        if (t->query_timeout >= 0)
            p->timeouts.query_timeout = t->query_timeout;
        if (t->idle_transaction_timeout >= 0)
            p->timeouts.idle_transaction_timeout = t->idle_transaction_timeout;
        if (t->transaction_timeout >= 0)
            p->timeouts.transaction_timeout = t->transaction_timeout;
        if (t->client_idle_timeout >= 0)
            p->timeouts.client_idle_timeout = t->client_idle_timeout;
    }
}

void pool_create_forced(struct worker *worker)
{
    const struct config *cfg = worker->cfg;
    for (int i = 0; i < cfg->ndbs; i++) {
        const struct db_entry *db = &cfg->dbs[i];
        const char *forced = config_db_forced_user(db);
        if (!forced || strcmp(db->name, "*") == 0 || console_is_db(worker, db->name))
            continue;
        if (!pool_get(worker, db, forced, db->name))
            log_msg(LOG_ERROR,
                    "pool %s/%s: out of memory creating it; it is created when a "
                    "client comes",
                    db->name, forced);
    }
}

/* May no server of p be handed out now? Its own PAUSE, or one the console gave on another
 * thread whose message this worker has not read yet: the ledger's paused state of the pool key
 * is set first (control.c), so no worker hands one out after the PAUSE began. */
static bool is_paused(const struct pool *p)
{
    return p->paused || (!p->is_admin && ledger_key_get_state(p->ledger_key) == LEDGER_KEY_PAUSED);
}

/* A new backend's slot, taken in the ledger before server_connect opens it (which then holds it,
 * or gives it back when no server could be made): LIMIT_NONE, or the cap that binds. */
static enum limit_kind take_slot(struct pool *p, bool use_reserve)
{
    struct ledger_caps caps;
    budget_server_caps(p, use_reserve, &caps);
    return ledger_take_server(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index,
                              &caps);
}

/* A slot for a warm server (min_pool_size): min_pool_size is one number for the key, whatever
 * worker holds its servers, so the take's pool cap is min_pool_size itself and the ledger's
 * lock decides it. The unlocked `servers < min_size` before it is a hint: with workers, two
 * pools of the key seeing one server short at once would otherwise both open one. */
static bool take_warm_slot(struct pool *p)
{
    struct ledger_caps caps;
    budget_server_caps(p, false, &caps);
    if (p->min_size < caps.pool)
        caps.pool = p->min_size;
    return ledger_take_server(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index,
                              &caps) == LIMIT_NONE;
}

/* With workers (5.3): a pool whose waiters a slot cap holds (pool_size, max_db/user/server_
 * connections: slots other workers' pools may hold) registers its oldest waiter's arrival in
 * the ledger's wait list, so that the worker freeing such a slot wakes this one (worker_wake);
 * served, empty or held by something else, it leaves the list. One worker needs none of it:
 * pool.c's own FIFO and pool_longer_waiter_elsewhere (pool_room.c) order its waiters. */
static void note_slot_wait(struct pool *p, enum limit_kind held)
{
    struct worker *worker = p->worker;
    struct ledger *l = &worker->proc->ledger;
    int self = (int)worker->index;
    bool slot_cap =
        held == LIMIT_POOL || held == LIMIT_DB || held == LIMIT_USER || held == LIMIT_GLOBAL;
    /* Matching by startup parameters (session mode; pool_matches_startup): the entry is the
     * oldest waiter for whom no server logs in and no room is being made (a close for it here
     * or elsewhere), so that other workers close a server for a waiter of other startup
     * parameters once, not once per release while its room comes. */
    const struct client *head = NULL;
    if (slot_cap && !list_empty(&p->waiting))
        head = pool_matches_startup(p) ? pool_first_unprovided_after(p, p->rooms_awaited)
                                       : container_of(list_first(&p->waiting), struct client, node);
    if (!head) {
        if (p->slot_wait == POOL_SLOT_WAIT_NOTED)
            ledger_wait_done(l, p->ledger_key, self);
        p->slot_wait = POOL_SLOT_WAIT_NONE;
        return;
    }
    uint64_t waited = sluice_now(worker) - head->state_since_ms, now = ledger_now_ms();
    /* What another worker's idle servers could do for it (handover.c): the servers its waiters
     * still need, and the caps a close elsewhere must make room under. */
    int want =
        pool_count_eligible(p, p->size + p->reserve_size) - p->connecting.count - p->rooms_awaited;
    struct ledger_caps caps;
    budget_server_caps(p, false, &caps);
    int rc = ledger_wait_need(l, p->ledger_key, self, held, now > waited ? now - waited : 0, want,
                              &caps, pool_startup_wanted(p, head));
    if (rc >= 0)
        p->slot_wait = POOL_SLOT_WAIT_NOTED;
    if (rc > 0)
        worker_post_need(worker); /* new: workers holding idle servers may hand one over */
    else if (rc < 0)
        log_msg(LOG_WARNING,
                "pool %s/%s: out of memory registering its waiters with the other "
                "workers; they wait for a slot freed on this one",
                p->db_name, p->user_name);
}

/* Open connections for clients that wait, within every cap and the backoff. While the breaker is
 * open, one probe tests the database whether or not anyone waits, so a recovered database is
 * noticed (and /health is ready again) without a client having to come first. */
static void maybe_connect(struct pool *p)
{
    struct worker *worker = p->worker;
    if (!sluice_serving(worker) || is_paused(p) || !pool_may_try_connect(p))
        return;
    int enough = p->size + p->reserve_size;
    struct client *first = NULL;
    /* Session mode, or a client of the pool needs its own startup parameters in every mode: a
     * server is opened with the startup parameters of a waiter that wants it. */
    bool by_startup = pool_matches_startup(p);
    int want = by_startup ? pool_count_unprovided(p, enough, &first) - p->rooms_awaited
                          : pool_count_eligible(p, enough) - p->connecting.count - p->rooms_awaited;
    if (p->breaker.failures > 0 && want > 1)
        want = 1;
    /* A probe nobody waits for takes free room only: it closes no other pool's idle server. */
    bool probe_only = p->breaker.state == BREAKER_OPEN && want <= 0;
    if (p->breaker.state == BREAKER_OPEN)
        want = 1;
    bool use_reserve = false;
    if (p->reserve_size > 0 && !list_empty(&p->waiting)) {
        struct client *head = container_of(list_first(&p->waiting), struct client, node);
        use_reserve = sluice_now(worker) - head->state_since_ms >=
                      (uint64_t)worker->cfg->reserve_pool_timeout;
    }
    enum limit_kind held = LIMIT_NONE;
    bool attempted = false;
    while (want-- > 0) {
        if (by_startup && !probe_only)
            pool_count_unprovided(p, enough, &first); /* the one before has its server coming */
        enum limit_kind k = take_slot(p, use_reserve);
        bool cap = k == LIMIT_POOL || k == LIMIT_DB || k == LIMIT_USER || k == LIMIT_GLOBAL;
        if (cap) {
            /* The room comes when the closed backend has exited (pool_server_gone). */
            if (!probe_only && !pool_close_idle_unwanted(p, first) && k != LIMIT_POOL)
                pool_evict_idle_elsewhere(p, k);
            held = k;
            break;
        }
        if (k != LIMIT_NONE) {
            held = k;
            break;
        }
        if (!open_server(p, probe_only ? NULL : first))
            break;
        attempted = true;
        if (p->breaker.state == BREAKER_OPEN) {
            p->breaker.state = BREAKER_PROBING;
            log_msg(LOG_DEBUG, "pool %s/%s: probing the database", p->db_name, p->user_name);
        }
    }
    /* pool_may_try_connect claimed the process's one attempt while the database fails: made
     * none, this pool must not hold the other workers' pools off until the claim expires. */
    if (!attempted)
        ledger_breaker_unclaim(&worker->proc->ledger, p->ledger_key, (int)worker->index);
    if (worker->proc->nworkers > 1)
        note_slot_wait(p, held);
}

/* An idle server that has sat longer than server_check_delay is checked before reuse. */
static bool needs_check(const struct server *s, uint64_t now)
{
    const struct config *cfg = s->pool->worker->cfg;
    return cfg->server_check_query.kind != SQL_SETTING_NONE && cfg->server_check_delay >= 0 &&
           now - s->state_since_ms >= (uint64_t)cfg->server_check_delay;
}

/* PgBouncer's "<empty>" check is an empty Query: the server answers EmptyQueryResponse and
 * ReadyForQuery without parsing or logging a statement. */
static const char *check_sql(const struct config *cfg)
{
    const struct sql_setting *q = &cfg->server_check_query;
    return q->kind == SQL_SETTING_EMPTY_QUERY ? "" : q->text;
}

static const char *const closed_for_older =
    "closed to open one with the startup parameters of a client that waited longer";

/* Hand idle servers to eligible waiters, FIFO. */
static void dispatch(struct pool *p)
{
    uint64_t now = sluice_now(p->worker);
    while (!is_paused(p) && !list_empty(&p->idle)) {
        struct server *s = NULL;
        struct client *c = pool_first_served_by_idle(p, &s);
        if (!c)
            return;
        if (needs_check(s, now)) {
            server_set_state(s, SERVER_CHECKING);
            server_queue_internal(s, check_sql(p->worker->cfg));
            kick_server(s);
            continue;
        }
        if (pool_room_owed_to_older(p, c)) {
            close_server_for(s, closed_for_older, p);
            continue;
        }
        if (ledger_take_lease_since(p->worker, c->budget, pool_waiter_since(c)) != LIMIT_NONE)
            return; /* pool_first_eligible said it may: cannot happen, and must not loop */
        p->worker->pool_events->waiter_served(c, s);
    }
}

void pool_lease(struct pool *p, struct client *c)
{
    if (is_paused(p) && c->state != CLIENT_LOGIN_WAIT)
        return;
    dispatch(p);
    maybe_connect(p);
}

void pool_dispatch_all(struct worker *worker)
{
    struct ledger *l = &worker->proc->ledger;
    worker->dispatch_needed = false;
    ledger_offer_grants(l, (int)worker->index); /* the grants the end below may drop */
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (!list_empty(&p->waiting)) {
            dispatch(p);
            maybe_connect(p);
        }
    }
    /* With workers (5.3): a slot another worker's give kept for this one (its waiters were the
     * oldest) that no take here used goes on to the next oldest waiter (one of this worker's
     * of another key included: then a grant for its next dispatch). */
    int next;
    while (ledger_drop_grant(l, (int)worker->index, &next))
        worker_wake(worker, next);
}

/* The pool's first server told it what to report: the other logins waiting for that need no
 * server of their own. They finish now and queue like any client when they send a query, so
 * their first queries wait under every cap (a login holding a server would pass max_servers).
 * One at a time: finishing a login may run its first query and change the waiting list. */
static void welcome_login_waiters(struct pool *p)
{
    for (;;) {
        struct client *login = NULL;
        struct list_node *n, *tmp;
        list_for_each(&p->waiting, n, tmp)
        {
            struct client *c = container_of(n, struct client, node);
            /* A login with startup parameters no server has accepted yet stays: it needs a
             * server to try them on (client.c, CLIENT_LOGIN_SYNC). */
            if (c->state == CLIENT_LOGIN_WAIT && !c->settings_in_order &&
                params_known_good(&c->params, &p->welcome, &p->accepted)) {
                login = c;
                break;
            }
        }
        if (!login)
            return;
        p->worker->pool_events->login_welcomed(login);
    }
}

bool pool_knows_welcome(struct pool *p)
{
    if (p->have_welcome || p->worker->proc->nworkers == 1)
        return p->have_welcome;
    if (ledger_key_copy_welcome(&p->worker->proc->ledger, p->ledger_key, &p->welcome,
                                p->welcome_fp))
        p->have_welcome = true;
    else
        params_free(&p->welcome); /* a part copied before memory ran out */
    return p->have_welcome;
}

void pool_learn_welcome(struct server *s)
{
    struct pool *p = s->pool;
    /* A backend opened with startup parameters that it reports (DateStyle, TimeZone, ...)
     * reports them, not what another client would be told. */
    if (pool_knows_welcome(p) || !params_startup_keeps_reports(&s->startup))
        return;
    if (p->welcome_fp != 0 && s->conninfo_fp != p->welcome_fp)
        return; /* opened before a reload changed the settings: not what new servers report */
    /* A client that sends no application_name has the database entry's (as in PgBouncer, which
     * sends it in the server's startup packet), else '' as from Postgres: not the one a
     * client's startup parameters gave this server. */
    const char *app_name =
        config_db_application_name(config_find_db(p->worker->cfg, p->db_name));
    /* idle_session_timeout: the role's or database's value, not the backend's (off, as every
     * server logs in) nor a client's startup value that opened it (client_take_login_defaults) */
    const char *idle = p->role_idle_session_timeout;
    if (params_copy(&p->welcome, &s->params) < 0 ||
        params_set(&p->welcome, "application_name", app_name ? app_name : "") < 0 ||
        params_set(&p->welcome, "idle_session_timeout", idle[0] ? idle : NULL) < 0) {
        params_free(&p->welcome);
        return;
    }
    p->have_welcome = true;
    p->welcome_fp = s->conninfo_fp;
    if (p->worker->proc->nworkers > 1)
        ledger_key_share_welcome(&p->worker->proc->ledger, p->ledger_key, &p->welcome,
                                 s->conninfo_fp);
    welcome_login_waiters(p);
}

const struct param_set *pool_session_defaults(const struct pool *p, const struct server *s)
{
    return p->have_welcome ? &p->welcome : &s->login_reports;
}

void pool_forget_stale_welcome(struct pool *p, uint64_t conninfo_fp)
{
    if (p->welcome_fp == conninfo_fp)
        return;
    if (p->have_welcome) {
        struct list *clients[] = {&p->idle_clients, &p->active_clients, &p->waiting};
        for (size_t i = 0; i < sizeof clients / sizeof clients[0]; i++) {
            struct list_node *n, *tmp;
            list_for_each(clients[i], n, tmp)
            {
                struct client *c = container_of(n, struct client, node);
                if (c->state != CLIENT_LOGIN_WAIT) /* not welcomed yet: told the new one */
                    p->worker->pool_events->welcome_dropped(c, &p->welcome);
            }
        }
        params_free(&p->welcome);
        p->have_welcome = false;
    }
    p->welcome_fp = conninfo_fp;
    /* What the probe learnt of idle_session_timeout was the old settings' role's and database's:
     * the next server logs in without the option again and reads the new one's (a server that
     * logged in with it off cannot: its value is the option's). */
    p->idle_off = false;
    p->role_idle_session_timeout[0] = '\0';
    if (p->worker->proc->nworkers > 1)
        ledger_key_forget_welcome(&p->worker->proc->ledger, p->ledger_key, conninfo_fp);
}

void pool_server_ready(struct server *s)
{
    struct pool *p = s->pool;
    struct worker *worker = p->worker;
    uint64_t now = sluice_now(worker);
    if (!sluice_serving(worker) && list_empty(&p->waiting)) {
        close_server(s, "shutting down");
        return;
    }
    if (s->close_when_free || (p->timeouts.server_lifetime > 0 &&
                               now - s->connect_ms >= (uint64_t)p->timeouts.server_lifetime)) {
        /* A waiter may be owed its slot: the backend counts until Postgres has let it go
         * (SERVER_LEAVING), else its replacement logs in beside it, one above the cap in
         * Postgres (on a database whose max_connections the cap was sized to, refused). */
        close_server_for(s, s->close_when_free ? "closed at release" : "server_lifetime reached",
                         NULL);
        maybe_connect(p);
        return;
    }
    if (s->startup_fp != 0 && !pool_matches_startup(p)) {
        /* Its reset values are a session client's login values (pool_mode changed), or it
         * was opened for a setting only a login gives (client.h startup_scope) and no client
         * that sent it is left: no use to anyone here. Counted until its backend has gone
         * (server_close_for), as the server maybe_connect opens next may take its place. */
        close_server_for(s,
                         "opened with a client's startup parameters that no client of this "
                         "pool_mode wants",
                         NULL);
        maybe_connect(p);
        return;
    }
    /* Another worker's pool learnt the welcome: this pool's logins waiting for it need no
     * server (and must not be told this one's parameters, which a client may have set). */
    if (!p->have_welcome && pool_knows_welcome(p))
        welcome_login_waiters(p);
    if (pool_close_if_over_limit(s))
        return;
    struct pool *other = pool_longer_waiter_elsewhere(p);
    if (other) {
        /* Handing this server over means closing it: the other pool logs in as its own user
         * or to its own database. */
        char why[160];
        snprintf(why, sizeof(why), "room handed to pool %s/%s, whose client waited longer",
                 other->db_name, other->user_name);
        close_server_for(s, why, other);
        return;
    }
    struct client *c = is_paused(p) ? NULL : pool_first_fitting(p, s);
    /* Another worker's older waiter first: a close here for this pool's oldest would otherwise
     * give that waiter's room to a younger one. */
    if (c && pool_pass_to_older_elsewhere(s, c)) {
        maybe_connect(p);
        return;
    }
    /* Matching by startup parameters, none of its waiters fits s: another worker's waiter
     * older than them all first too. Else s is closed here for the local one of other
     * parameters (maybe_connect's pool_close_idle_unwanted), and the server opened for it is
     * closed in turn for the older one when it connects: two backends for one waiter. */
    if (!c && !is_paused(p) && pool_matches_startup(p) && pool_pass_to_older_elsewhere(s, NULL)) {
        maybe_connect(p);
        return;
    }
    if (c && pool_room_owed_to_older(p, c)) {
        close_server_for(s, closed_for_older, p);
        /* the ledger's entry names the next waiter now: other workers close none for this one */
        if (worker->proc->nworkers > 1)
            maybe_connect(p);
        return;
    }
    if (c && ledger_take_lease_since(worker, c->budget, pool_waiter_since(c)) == LIMIT_NONE) {
        worker->pool_events->waiter_served(c, s);
        return;
    }
    if (s->state != SERVER_IDLE)
        server_set_state(s, SERVER_IDLE);
    buf_detach_if_empty(&s->in);
    /* No client of its own wants it: another worker's waiter may (5.4) */
    if (worker->proc->nworkers > 1 && worker->pool_events->offer_server(s))
        return;
    watch_server(s);
    /* Waiters that want other startup parameters: room for theirs (maybe_connect). */
    if (!is_paused(p) && !list_empty(&p->waiting) && pool_matches_startup(p))
        maybe_connect(p);
}

void pool_startup_refused(struct pool *p, uint64_t startup_fp, const char *sqlstate,
                          const char *server_message)
{
    pool_connect_succeeded(p); /* it got as far as the options: the database takes logins */
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (pool_startup_wanted(p, c) == startup_fp)
            p->worker->pool_events->waiter_failed(c, FAIL_SERVER_LOGIN, server_message, sqlstate);
    }
    maybe_connect(p);
}

const char *pool_cleanup_name(enum pool_cleanup k)
{
    switch (k) {
    case POOL_CLEANUP_ROLLBACK:
        return "rollback";
    case POOL_CLEANUP_RESET_QUERY:
        return "server_reset_query";
    case POOL_CLEANUP_DISCARD_ALL:
        return "discard_all";
    case POOL_CLEANUP_DISCARD_TEMP:
        return "discard_temp";
    case POOL_CLEANUP_IDLE_SESSION_TIMEOUT:
        return "idle_session_timeout";
    case POOL_CLEANUP_KINDS:
        break;
    }
    return "?";
}

static void queue_cleanup(struct server *s, enum pool_cleanup kind, const char *sql)
{
    server_queue_internal(s, sql);
    s->pool->cleanups[kind]++;
}

/* A client's value of a parameter that acts while the backend idles (params_acts_while_idle:
 * idle_session_timeout) must not follow the backend into the pool, where Postgres would end it
 * and the pool would churn, or end it under the next client leased at that moment. The lease's
 * end is the one place that gives the backend its own value back (or, for a backend opened with
 * a client's login value, turns it off), after any reset, before it waits for anyone; the next
 * client's sync then sets that client's value, as for any other parameter. True when a
 * statement was queued. */
static bool give_back_idle_params(struct server *s)
{
    struct msg_out sql;
    codec_out_init(&sql);
    int n = params_build_release(&s->startup, &s->params, &sql);
    if (n < 0) {
        s->close_when_free = true; /* its record is not true any more: it serves no one */
        n = 0;
    }
    for (uint32_t at = 0; n > 0 && at < sql.len;) {
        const char *stmt = (const char *)sql.data + at;
        queue_cleanup(s, POOL_CLEANUP_IDLE_SESSION_TIMEOUT, stmt);
        at += (uint32_t)strlen(stmt) + 1;
    }
    codec_out_free(&sql);
    return n > 0;
}

bool pool_queue_cleanup(struct server *s)
{
    const struct config *cfg = s->pool->worker->cfg;
    const struct pool_mode_ops *ops = pool_mode_ops(s->mode, cfg->server_reset_query_always);
    bool queued = false;
    if (s->txn_status != 'I') {
        queue_cleanup(s, POOL_CLEANUP_ROLLBACK, "ROLLBACK");
        queued = true;
    }
    bool reset = ops->reset_on_release && cfg->server_reset_query.kind != SQL_SETTING_NONE;
    if (reset) {
        queue_cleanup(s, POOL_CLEANUP_RESET_QUERY, cfg->server_reset_query.text);
        /* DISCARD ALL drops prepared statements; should it fail, re-preparing stays safe. */
        stmt_map_mark_unknown(&s->stmts);
        queued = true;
    }
    /* server_reset_query is DISCARD ALL: it undoes all a client may leave, temporary objects
     * included, and brings every parameter back to its reset value */
    bool reset_discards_all = reset && cfg->server_reset_query.kind == SQL_SETTING_DISCARD_ALL;
    bool was_unknown = s->session == SERVER_SESSION_UNKNOWN;
    if (was_unknown) {
        /* A client left state sluice cannot undo piecemeal (server.h): DISCARD ALL is the one
         * statement that undoes all of it (role, authorization, parameters, temporary tables,
         * cursors, LISTEN, advisory locks, prepared statements), whatever server_reset_query
         * is. Should it fail, the server is closed (on_internal_error). */
        if (!reset_discards_all)
            queue_cleanup(s, POOL_CLEANUP_DISCARD_ALL, "DISCARD ALL");
        stmt_map_mark_unknown(&s->stmts);
        stmt_map_clear(&s->sql_prepared);
        s->session = SERVER_SESSION_FOLLOWED;
        queued = true;
    } else if (s->session == SERVER_SESSION_TEMP_OBJECTS) {
        /* Temporary objects and nothing else the records miss: DISCARD TEMP drops them, and
         * the backend keeps its prepared statements and parameters for the next client. */
        if (!reset_discards_all)
            queue_cleanup(s, POOL_CLEANUP_DISCARD_TEMP, "DISCARD TEMP");
        s->session = SERVER_SESSION_FOLLOWED;
        queued = true;
    }
    /* The reset query reset the parameters sluice SET, and in session mode the client's own
     * statements were not followed: either way the record of them is no longer true. After
     * DISCARD ALL it is again: every parameter is back at its reset value, the startup value
     * the backend was opened with, or its default. */
    if (was_unknown || reset_discards_all) {
        if (params_reset_to_startup(&s->params, &s->startup) < 0)
            s->close_when_free = true;
    } else if (reset || !ops->release_at_idle) {
        /* Session mode under a server_reset_query that is not DISCARD ALL (none, or one that
         * may leave parameters as they are): the record never held what the client SET, and a
         * parameter that acts while idle must not follow the backend into the pool. Its reset
         * costs a round trip at each session's end, under such a setting only. */
        if (params_forget(&s->params, NULL) < 0 ||
            (!ops->release_at_idle && params_forget_acts_while_idle(&s->params) < 0))
            s->close_when_free = true;
    }
    if (give_back_idle_params(s))
        queued = true;
    return queued;
}

void pool_release(struct server *s)
{
    /* Replies to sluice's own queries still to come (a login refused mid-sync leaves the rest
     * of its sync running): the next client's sync must be built on what the server has once
     * they are in, so the server waits for them in RESETTING. */
    if (pool_queue_cleanup(s) || s->cancels_in_flight > 0 || s->swallow > 0) {
        server_set_state(s, SERVER_RESETTING);
        kick_server(s);
        return;
    }
    pool_server_ready(s);
}

void pool_server_gone(struct pool *p, struct pool *room_for)
{
    if (room_for && !list_empty(&room_for->waiting))
        maybe_connect(room_for);
    /* Whatever room is left may serve a waiter of any pool. */
    if (!list_empty(&p->waiting) || room_for)
        p->worker->dispatch_needed = true;
}

void pool_maintain(struct pool *p, uint64_t now)
{
    struct list_node *n, *tmp;
    /* Logins that queued for a server before another worker's pool learnt the welcome. */
    if (!p->have_welcome && !list_empty(&p->waiting) && pool_knows_welcome(p))
        welcome_login_waiters(p);
    pool_notify_long_waits(p, now);
    uint64_t limit = pool_wait_limit(p);
    /* FIFO: the head has waited longest; stop at the first one still within its time. */
    while (limit > 0 && !list_empty(&p->waiting)) {
        struct client *c = container_of(list_first(&p->waiting), struct client, node);
        uint64_t waited = now - c->state_since_ms;
        if (waited < limit)
            break;
        pool_fail_waiter(p, c, waited);
    }
    list_for_each(&p->connecting, n, tmp) tick_server(container_of(n, struct server, node), now);
    list_for_each(&p->idle, n, tmp) tick_server(container_of(n, struct server, node), now);
    list_for_each(&p->resetting, n, tmp) tick_server(container_of(n, struct server, node), now);
    list_for_each(&p->active, n, tmp) tick_server(container_of(n, struct server, node), now);
    list_for_each(&p->leaving, n, tmp) tick_server(container_of(n, struct server, node), now);
    list_for_each(&p->idle_clients, n, tmp)
        p->worker->pool_events->client_tick(container_of(n, struct client, node), now);
    list_for_each(&p->active_clients, n, tmp)
        p->worker->pool_events->client_tick(container_of(n, struct client, node), now);
    maybe_connect(p);
    /* Servers above pool_size: a reserve server (reserve_pool_size) once its waiter is served,
     * or a pool_size a reload lowered. Idle ones close now (busy ones when released), so the
     * reserve goes back to the database as soon as the burst is over. The key's count is the
     * process's (a hint, read without the lock): with workers, several may close at once before
     * the count drops, which closes idle servers, never passes a cap. */
    while (p->ledger_key->servers > p->size && !list_empty(&p->idle))
        close_server(container_of(list_last(&p->idle), struct server, node),
                     "idle above pool_size (a reserve server no longer needed, or pool_size "
                     "lowered by reload)");
    while (!list_empty(&p->idle) &&
           pool_close_if_over_limit(container_of(list_last(&p->idle), struct server, node)))
        ;
    /* A reload took the pool out of session mode, or the last client that needed its own
     * startup parameters in every mode left: servers opened with a client's startup
     * parameters serve nobody now (pool_startup_wanted is 0 for all), and hold caps. While such
     * a client is in the pool they stay; a waiter of another fingerprint gets room by closing
     * one (maybe_connect's pool_close_idle_unwanted). */
    if (!pool_matches_startup(p)) {
        list_for_each(&p->idle, n, tmp)
        {
            struct server *s = container_of(n, struct server, node);
            if (s->startup_fp != 0)
                close_server_for(s,
                                 "opened with a client's startup parameters that no client of "
                                 "this pool_mode wants",
                                 NULL);
        }
    }
    /* Keep min_pool_size servers warm once the database has been reached; a forced user's pool
     * from the start, as PgBouncer does (its user and database are known without a client). */
    if (sluice_serving(p->worker) && !p->paused && (p->have_welcome || p->user_forced) &&
        !pool_is_down(p) && now >= p->breaker.next_try_ms && p->connecting.count == 0 &&
        p->ledger_key->servers < p->min_size && take_warm_slot(p))
        open_server(p, NULL);
    /* An idle server another worker's waiter could use, missed by the offers (5.4). */
    if (p->worker->proc->nworkers > 1)
        p->worker->pool_events->offer_idle_servers(p);
}

void pool_waiter_left(struct pool *p, const struct client *c)
{
    pool_lease_waiter_gone(c);
    /* what the next tick's maybe_connect would do, now: until then the stale entry would have
     * other workers move their idle servers here, or close them, for nobody */
    if (p->slot_wait == POOL_SLOT_WAIT_NOTED && list_empty(&p->waiting))
        note_slot_wait(p, LIMIT_NONE);
}

void pool_take_moved(struct pool *p, struct server *s)
{
    /* Idle on the other worker since state_since_ms: checked before reuse, as dispatch checks
     * its own idle servers; the answer frees it (pool_server_ready). */
    if (!list_empty(&p->waiting) && needs_check(s, sluice_now(p->worker))) {
        log_server(LOG_DEBUG, s, "moved here idle past server_check_delay: checked before reuse");
        server_set_state(s, SERVER_CHECKING);
        server_queue_internal(s, check_sql(p->worker->cfg));
        kick_server(s);
        return;
    }
    pool_server_ready(s);
    /* its waiters' need in the ledger is what is left of it now (note_slot_wait) */
    if (!list_empty(&p->waiting))
        maybe_connect(p);
}

void pool_free(struct pool *p)
{
    params_free(&p->welcome);
    params_free(&p->accepted);
    free(p->breaker.last_error);
    free(p->db_name);
    free(p->user_name);
    free(p->target_db);
    free(p);
}

void pool_pause(struct pool *p, enum pool_pause_cause cause)
{
    p->paused = true;
    p->paused_by = cause;
    /* Its waiters no longer hold their budget's room from the other workers' (5.3), as with
     * one worker a paused pool's waiters come after the other pools' (pool_waiters.c): the
     * worker's note names its oldest waiter of the budget in a pool that serves. */
    struct list_node *n, *tmp;
    list_for_each(&p->waiting, n, tmp)
    {
        pool_lease_waiter_gone(container_of(n, struct client, node));
    }
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
