/* sluice: process-wide state, start-up, the background timer, reload and shutdown (see
 * sluice.h). Signals only set what to do; the work happens on the loop like everything else. */
#include "sluice.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "budget.h"
#include "buf.h"
#include "cancel.h"
#include "client.h"
#include "link.h"
#include "disabled_dbs.h"
#include "listener.h"
#include "log.h"
#include "pool.h"
#include "secret.h"
#include "server.h"
#include "stats.h"
#include "tls.h"

extern char **environ;

#define MAINT_INTERVAL_MS 100

static void apply_logging(const struct config *cfg)
{
    log_configure(cfg->log_level, cfg->log_format == LOG_FORMAT_JSON, cfg->logfile);
}

/* Free what closed during this loop iteration. Deferring the free means code that closed a
 * client or server on its way through a callback can still read its state (CLOSED) and stop. */
static void on_reaper_check(uv_check_t *h)
{
    struct sluice *app = h->data;
    struct list_node *n, *tmp;
    if (app->dispatch_needed && sluice_serving(app))
        pool_dispatch_all(app);
    list_for_each(&app->dead_clients, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        list_remove(&app->dead_clients, n);
        free(c->user); /* database shares its block */
        free(c);
    }
    list_for_each(&app->dead_servers, n, tmp)
    {
        struct server *s = container_of(n, struct server, node);
        if (s->cancels_in_flight > 0)
            continue; /* cancel_done still needs it */
        list_remove(&app->dead_servers, n);
        free(s);
    }
}

static bool everything_closed(struct sluice *app)
{
    return app->nclients == 0 && app->nservers == 0;
}

static void close_all(struct sluice *app, bool only_free_ones)
{
    struct list_node *pn, *ptmp, *n, *tmp;
    list_for_each(&app->login_clients, n, tmp)
        client_fail(container_of(n, struct client, node), FAIL_SHUTDOWN, "");
    list_for_each(&app->pools, pn, ptmp)
    {
        struct pool *p = container_of(pn, struct pool, node);
        list_for_each(&p->idle_clients, n, tmp)
            client_fail(container_of(n, struct client, node), FAIL_SHUTDOWN, "");
        /* A queued request is a new one: answered at once, or a steady stream of short
         * transactions would keep every server busy until shutdown_timeout. */
        list_for_each(&p->waiting, n, tmp)
            client_fail(container_of(n, struct client, node), FAIL_SHUTDOWN, "");
        if (!only_free_ones) {
            list_for_each(&p->active_clients, n, tmp)
                client_fail(container_of(n, struct client, node), FAIL_SHUTDOWN, "");
            list_for_each(&p->resetting, n, tmp)
                server_close(container_of(n, struct server, node), "shutting down");
            list_for_each(&p->connecting, n, tmp)
                server_close(container_of(n, struct server, node), "shutting down");
        }
        list_for_each(&p->idle, n, tmp)
            server_close(container_of(n, struct server, node), "shutting down");
        list_for_each(&p->leaving, n, tmp)
            server_close(container_of(n, struct server, node), "shutting down");
    }
    if (!only_free_ones) {
        list_for_each(&app->closing_clients, n, tmp)
            client_close(container_of(n, struct client, node), "shutting down");
    }
}

static void finish_if_done(struct sluice *app)
{
    if (app->phase == PHASE_RUNNING || !everything_closed(app))
        return;
    log_msg(LOG_INFO, "all connections closed; exiting");
    uv_timer_stop(&app->maint_timer);
    uv_close((uv_handle_t *)&app->maint_timer, NULL);
    uv_close((uv_handle_t *)&app->reaper, NULL);
    uv_close((uv_handle_t *)&app->sig_hup, NULL);
    uv_close((uv_handle_t *)&app->sig_int, NULL);
    uv_close((uv_handle_t *)&app->sig_term, NULL);
}

static void log_stats(struct sluice *app, uint64_t now)
{
    const struct config *cfg = app->cfg;
    if (cfg->stats_period <= 0 || now - app->last_stats_ms < (uint64_t)cfg->stats_period)
        return;
    app->last_stats_ms = now;
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        log_msg(LOG_INFO,
                "stats %s/%s: clients active %d waiting %d idle %d; servers active %d idle %d "
                "connecting %d of %d; %llu transactions",
                p->db_name, p->user_name, p->active_clients.count, p->waiting.count,
                p->idle_clients.count, p->active.count, p->idle.count, p->connecting.count, p->size,
                (unsigned long long)p->xact_count);
    }
}

static void on_maint_timer(uv_timer_t *t)
{
    struct sluice *app = t->data;
    uint64_t now = sluice_now(app);
    struct list_node *n, *tmp;
    list_for_each(&app->login_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    list_for_each(&app->closing_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    list_for_each(&app->pools, n, tmp)
        pool_maintain(container_of(n, struct pool, node), now);
    secret_tick(app, now);
#ifndef NDEBUG
    /* Debug builds prove the caps' counters against the lists they stand for, every tick. */
    if (!ledger_audit(app))
        abort();
#endif
    if (app->phase == PHASE_SHUTDOWN_WAIT_FOR_CLIENTS && app->nclients == 0) {
        log_msg(LOG_INFO, "SHUTDOWN WAIT_FOR_CLIENTS: the last client has left");
        sluice_shutdown(app, PHASE_SHUTDOWN_NOW);
        return;
    }
    if (app->phase == PHASE_SHUTDOWN_GRACEFUL) {
        close_all(app, true);
        if (now >= app->shutdown_deadline_ms) {
            log_msg(LOG_WARNING, "shutdown_timeout passed: closing the remaining connections");
            sluice_shutdown(app, PHASE_SHUTDOWN_NOW);
            return;
        }
    }
    log_stats(app, now);
    stats_tick(app, now);
    for (int i = 0; i < app->services_started; i++) {
        if (app->services[i]->tick)
            app->services[i]->tick(app, now);
    }
    finish_if_done(app);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct sluice *app = h->data;
    if (signum == SIGHUP)
        sluice_reload(app);
    else if (signum == SIGINT)
        /* PgBouncer: a SIGINT while a shutdown is already under way means "now", for the
         * operator whose graceful shutdown takes too long. */
        sluice_shutdown(app,
                        app->phase == PHASE_RUNNING ? PHASE_SHUTDOWN_GRACEFUL : PHASE_SHUTDOWN_NOW);
    else
        sluice_shutdown(app, PHASE_SHUTDOWN_NOW);
}

/* auth_query's connections count under the caps like the pools' servers; the auth layer asks
 * through these and never calls into budget.c or pool.c itself (secret.h). */
static bool auth_query_slot_take(struct sluice *app, const char *db_name, const char *user_name)
{
    struct ledger_caps caps;
    budget_own_caps(app, db_name, user_name, &caps);
    enum limit_kind k = ledger_take_own(&app->ledger, db_name, user_name, &caps);
    if (k != LIMIT_NONE && pool_evict_idle(app, k, db_name, user_name, NULL))
        k = ledger_take_own(&app->ledger, db_name, user_name, &caps);
    return k == LIMIT_NONE;
}

static void auth_query_slot_freed(struct sluice *app, const char *db_name, const char *user_name)
{
    ledger_give_own(&app->ledger, db_name, user_name);
    app->dispatch_needed = true;
}

static const struct secret_slots auth_query_slots = {
    .take = auth_query_slot_take,
    .freed = auth_query_slot_freed,
};

/* Accepted sockets become clients. */
static const struct listener_ops client_listener_ops = {
    .accepted = client_accept,
    .read_first = client_read_first,
};

int sluice_start(struct sluice *app, uv_loop_t *loop, struct config *cfg,
                 const struct sluice_service *const *services)
{
    memset(app, 0, sizeof(*app));
    app->loop = loop;
    app->cfg = cfg;
    app->pool_events = &link_pool_events;
    app->server_events = &link_server_events;
    app->client_events = &link_client_events;
    app->relay_events = &link_relay_events;
    app->cancel_events = &link_cancel_events;
    app->services = services;
    list_init(&app->pools);
    list_init(&app->login_clients);
    list_init(&app->closing_clients);
    list_init(&app->dead_clients);
    list_init(&app->dead_servers);
    list_init(&app->disabled_dbs);
    apply_logging(cfg);
    /* A buffer must hold a whole startup packet and any message sluice reads in place. */
    uint32_t block = (uint32_t)cfg->pkt_buf;
    if (block < 16384)
        block = 16384;
    buf_set_block_size(block);
    signal(SIGPIPE, SIG_IGN);

    /* Handles first: whatever fails below, the shutdown that follows finds them all. */
    uv_timer_init(loop, &app->maint_timer);
    app->maint_timer.data = app;
    uv_timer_start(&app->maint_timer, on_maint_timer, MAINT_INTERVAL_MS, MAINT_INTERVAL_MS);
    uv_check_init(loop, &app->reaper);
    app->reaper.data = app;
    uv_check_start(&app->reaper, on_reaper_check);
    uv_unref((uv_handle_t *)&app->reaper);
    uv_signal_init(loop, &app->sig_hup);
    uv_signal_init(loop, &app->sig_int);
    uv_signal_init(loop, &app->sig_term);
    app->sig_hup.data = app->sig_int.data = app->sig_term.data = app;
    uv_signal_start(&app->sig_hup, on_signal, SIGHUP);
    uv_signal_start(&app->sig_int, on_signal, SIGINT);
    uv_signal_start(&app->sig_term, on_signal, SIGTERM);
    app->cancel_map = cancel_map_new(0);
    if (!app->cancel_map || budget_sync(app) < 0)
        return UV_ENOMEM;
    int rc = listener_start(app, &client_listener_ops);
    if (rc < 0)
        return rc;
    secret_init(&auth_query_slots);
    if (auth_init(app) < 0 || tls_init(app) < 0)
        return UV_EINVAL; /* logged: auth_hba_file or client TLS cannot be used */
    /* Counted before its start runs: a start that fails may leave half-made state, which its
     * stop and free (from the shutdown that follows) clean up. */
    while (services && services[app->services_started]) {
        const struct sluice_service *svc = services[app->services_started++];
        rc = svc->start ? svc->start(app) : 0;
        if (rc < 0)
            return rc;
    }
    pool_create_forced(app);
    log_msg(LOG_INFO, "sluice %s started: %s mode, default_pool_size %lld, max_client_conn %lld",
            SLUICE_VERSION, pool_mode_name(cfg->pool_mode), (long long)cfg->default_pool_size,
            (long long)cfg->max_client_conn);
    return 0;
}

void sluice_reload(struct sluice *app)
{
    struct config_diag diag = {0};
    const char *path = app->cfg->path;
    struct config *next = config_load(path, environ, &diag);
    for (int i = 0; i < diag.nwarnings; i++)
        log_msg(LOG_WARNING, "reload: %s", diag.warnings[i]);
    if (!next) {
        for (int i = 0; i < diag.nerrors; i++)
            log_msg(LOG_ERROR, "reload: %s", diag.errors[i]);
        log_msg(LOG_ERROR, "reload: the new configuration is invalid; keeping the old one");
        config_diag_free(&diag);
        return;
    }
    config_diag_free(&diag);
    struct config *old = app->cfg;
    app->cfg = next;
    apply_logging(next);
    auth_reload(app);
    tls_reload(app);
    struct list_node *n, *tmp;
    if (budget_sync(app) < 0)
        log_msg(LOG_ERROR, "reload: out of memory updating budgets; the old ones stay");
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        pool_apply_config(p);
        server_retire_changed(p);
        budget_log_cap(p);
        /* NN% caps are resolved again from the next server this pool opens. */
        p->probe_again = true;
    }
    pool_create_forced(app);
    config_free(old);
    pool_dispatch_all(app);
    log_msg(LOG_INFO, "configuration reloaded");
}

void sluice_shutdown(struct sluice *app, enum sluice_phase phase)
{
    if (phase <= app->phase)
        return;
    if (app->phase == PHASE_RUNNING) {
        listener_stop(app);
        uv_ref((uv_handle_t *)&app->maint_timer);
    }
    /* While clients are waited for, /health already says shutting_down and /metrics go on. */
    for (int i = 0; phase >= PHASE_SHUTDOWN_GRACEFUL && i < app->services_started; i++) {
        if (app->services[i]->stop)
            app->services[i]->stop(app);
    }
    app->phase = phase;
    if (phase == PHASE_SHUTDOWN_WAIT_FOR_CLIENTS) {
        log_msg(LOG_INFO, "shutdown once every client has left: no new connections; %d clients "
                          "connected",
                app->nclients);
        return;
    }
    if (phase == PHASE_SHUTDOWN_GRACEFUL) {
        app->shutdown_deadline_ms = sluice_now(app) + (uint64_t)app->cfg->shutdown_timeout;
        log_msg(LOG_INFO, "graceful shutdown: no new connections; waiting up to %lld ms for "
                          "transactions to finish",
                (long long)app->cfg->shutdown_timeout);
        close_all(app, true);
    } else {
        log_msg(LOG_INFO, "shutting down now");
        close_all(app, false);
    }
    secret_shutdown(); /* the clients that waited for auth_query are gone */
    finish_if_done(app);
}

void sluice_free(struct sluice *app)
{
    struct list_node *n, *tmp;
    on_reaper_check(&app->reaper);
    list_for_each(&app->pools, n, tmp)
    {
        list_remove(&app->pools, n);
        pool_free(container_of(n, struct pool, node));
    }
    cancel_map_free(app->cancel_map);
    for (int i = 0; i < app->services_started; i++) {
        if (app->services[i]->free)
            app->services[i]->free(app);
    }
    disabled_dbs_free(app);
    stats_free(app);
    budget_free_all(app);
    free(app->listener);
    config_free(app->cfg);
    auth_free_all(); /* closes auth_query's connections: their slots go back first */
    ledger_free(&app->ledger);
    tls_free();
    buf_free_cache();
    log_close();
}
