/* sluice: the process and its workers: start-up, each worker's background timer and reaper,
 * signals and shutdown (see sluice.h; reloads and console SETs are reload.c's). Signals only set
 * what to do; the work happens on the loop like everything else. */
#include "sluice.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "autodb.h"
#include "budget.h"
#include "conn_id.h"
#include "control.h"
#include "buf.h"
#include "cancel.h"
#include "client.h"
#include "link.h"
#include "disabled_dbs.h"
#include "handover.h"
#include "listener.h"
#include "log.h"
#include "pool.h"
#include "reload.h"
#include "secret.h"
#include "server.h"
#include "stats.h"
#include "tally.h"
#include "view.h"
#include "tls.h"
#include "worker.h"

#define MAINT_INTERVAL_MS 100

static void apply_logging(const struct config *cfg)
{
    log_configure(cfg->log_level, cfg->log_format == LOG_FORMAT_JSON, cfg->logfile);
}

/* Free what closed during this loop iteration. Deferring the free means code that closed a
 * client or server on its way through a callback can still read its state (CLOSED) and stop. */
static void on_reaper_check(uv_check_t *h)
{
    struct worker *worker = h->data;
    struct list_node *n, *tmp;
    if (worker->dispatch_needed && sluice_serving(worker))
        pool_dispatch_all(worker);
    list_for_each(&worker->dead_clients, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        list_remove(&worker->dead_clients, n);
        free(c->user); /* database shares its block */
        free(c);
    }
    list_for_each(&worker->dead_servers, n, tmp)
    {
        struct server *s = container_of(n, struct server, node);
        if (s->cancels_in_flight > 0)
            continue; /* cancel_done still needs it */
        list_remove(&worker->dead_servers, n);
        free(s);
    }
}

/* What a shutdown closes on one worker: with only_free_ones, what serves no transaction (logins,
 * idle and queued clients, idle servers), else everything. */
static void close_all(struct worker *worker, bool only_free_ones)
{
    struct list_node *pn, *ptmp, *n, *tmp;
    list_for_each(&worker->login_clients, n, tmp)
        client_fail(container_of(n, struct client, node), FAIL_SHUTDOWN, "");
    list_for_each(&worker->pools, pn, ptmp)
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
        list_for_each(&worker->closing_clients, n, tmp)
            client_close(container_of(n, struct client, node), "shutting down");
        cancel_abort_all(); /* a cancel to an upstream that does not answer would hold the loop */
    }
}

/* A worker's share of the process's shutdown phase (its SHUTDOWN message, or inline). */
static void close_for_phase(struct worker *worker, enum sluice_phase phase)
{
    if (phase == PHASE_SHUTDOWN_GRACEFUL)
        close_all(worker, true);
    else if (phase == PHASE_SHUTDOWN_NOW)
        close_all(worker, false);
}

/* A worker's pools follow the reloaded config (worker->cfg, already the new one). */
static void apply_config(struct worker *worker)
{
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        pool_apply_config(p);
        server_retire_changed(p);
        budget_log_cap(p);
        /* NN% caps are resolved again from the next server this pool opens. */
        p->probe_again = true;
    }
    control_drop_removed(worker);
    pool_create_forced(worker);
}

/* Another worker woke this one: a slot or an auth_query connection may be free. */
static void wake_up(struct worker *worker)
{
    pool_dispatch_all(worker);
    secret_retry_lookups(worker);
}

const struct worker_handlers sluice_worker_handlers = {
    .accept = client_accept,
    .read_first = client_read_first,
    .resume_console_login = client_resume_console_login,
    .shutdown = close_for_phase,
    .apply_config = apply_config,
    .dispatch = pool_dispatch_all,
    .wake = wake_up,
    .control = control_apply,
    .kill_client = control_kill_client_here,
    .cancel = cancel_remote_request,
    .cancel_done = cancel_remote_done,
    .need = handover_scan,
    .server_arrived = handover_receive,
};

static bool everything_closed(const struct process *proc)
{
    for (int i = 0; i < proc->nworkers; i++) {
        if (proc->workers[i].nclients > 0 || proc->workers[i].nservers > 0)
            return false;
    }
    return true;
}

static void finish_if_done(struct process *proc)
{
    if (proc->phase == PHASE_RUNNING || !everything_closed(proc))
        return;
    log_msg(LOG_INFO, "all connections closed; exiting");
    for (int i = 0; i < proc->nworkers; i++)
        worker_post_finish(&proc->workers[i]);
    for (int i = 0; i < SLUICE_SIGNALS; i++)
        uv_close((uv_handle_t *)&proc->signals[i], NULL);
    reload_reader_close(&proc->reload); /* a read stuck in read() is left behind, not waited */
}

static void log_pool_stats(const struct view_pool *v, void *ctx)
{
    (void)ctx;
    const struct stats_pool_view *now = &v->now;
    log_msg(LOG_INFO,
            "stats %s/%s: clients active %d waiting %d idle %d; servers active %d idle %d "
            "connecting %d of %d; %llu transactions",
            v->db_name, v->user_name, now->cl_active, now->cl_waiting, now->cl_idle, now->sv_active,
            now->sv_idle + now->sv_used, now->sv_login, v->size, (unsigned long long)v->xact_count);
}

/* Each stats_period, one line per pool key summed over the workers (the frames SHOW POOLS
 * reads, 5.6: the other workers' as of their last tick), logged by the control worker only, so
 * the log has one line per key whatever the workers. */
static void log_stats(struct worker *worker, uint64_t now)
{
    const struct config *cfg = worker->cfg;
    if (!cfg->log_stats || cfg->stats_period <= 0 ||
        now - worker->last_stats_ms < (uint64_t)cfg->stats_period)
        return;
    worker->last_stats_ms = now;
    view_pools_summed(worker, log_pool_stats, NULL);
}

/* The process's share of a maintenance pass, run on the control worker's tick: the shutdown
 * phases' progress and the services. False when the pass must end here (shutdown now began). */
static bool process_tick(struct process *proc, uint64_t now)
{
    if (proc->nworkers > 1)
        listener_maybe_resume(proc); /* clients leaving other workers cannot call it */
    if (proc->phase == PHASE_SHUTDOWN_WAIT_FOR_CLIENTS && sluice_nclients(proc) == 0) {
        log_msg(LOG_INFO, "SHUTDOWN WAIT_FOR_CLIENTS: the last client has left");
        sluice_shutdown(proc, PHASE_SHUTDOWN_NOW);
        return false;
    }
    if (proc->phase == PHASE_SHUTDOWN_GRACEFUL) {
        close_all(sluice_control_worker(proc), true); /* the others in their own ticks */
        if (now >= proc->shutdown_deadline_ms) {
            log_msg(LOG_WARNING, "shutdown_timeout passed: closing the remaining connections");
            sluice_shutdown(proc, PHASE_SHUTDOWN_NOW);
            return false;
        }
    }
    return true;
}

static void on_maint_timer(uv_timer_t *t)
{
    struct worker *worker = t->data;
    struct process *proc = worker->proc;
    uint64_t now = sluice_now(worker);
    struct list_node *n, *tmp;
    client_logins_give_way(worker);
    list_for_each(&worker->login_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    list_for_each(&worker->closing_clients, n, tmp)
        client_check_timeouts(container_of(n, struct client, node), now);
    list_for_each(&worker->pools, n, tmp) pool_maintain(container_of(n, struct pool, node), now);
    autodb_sweep(worker, now);
    control_report_pause(worker);
    secret_tick(worker, now);
#ifndef NDEBUG
    /* Debug builds prove the caps' counters against the lists they stand for, every tick: each
     * worker its own share of them, on its own thread (ledger_audit). */
    if (!ledger_audit(worker))
        abort();
#endif
    bool control = worker == sluice_control_worker(proc);
    if (control && !process_tick(proc, now))
        return;
    if (!control && proc->phase == PHASE_SHUTDOWN_GRACEFUL)
        close_all(worker, true);
    if (control)
        log_stats(worker, now);
    stats_tick(worker, now);
    if (worker->tally)
        view_publish(worker);
    if (!control)
        return;
    for (int i = 0; i < proc->services_started; i++) {
        if (proc->services[i]->tick)
            proc->services[i]->tick(proc, now);
    }
    finish_if_done(proc);
}

/* PgBouncer's signals (1.23+), which its operators and their scripts send: SIGHUP reloads,
 * SIGINT is the graceful shutdown, SIGQUIT the immediate one, SIGUSR1 is PAUSE and SIGUSR2 RESUME
 * of everything. SIGTERM closes at once (PgBouncer 1.23 made it wait for every client to leave,
 * which a container's stop would cut short with SIGKILL anyway; SHUTDOWN WAIT_FOR_CLIENTS does
 * that). Unhandled, SIGQUIT, SIGUSR1 and SIGUSR2 would kill the process, every client with it. */
static const int handled_signals[] = {SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2};

static void on_signal(uv_signal_t *h, int signum)
{
    struct process *proc = h->data;
    struct worker *control = sluice_control_worker(proc);
    switch (signum) {
    case SIGHUP:
        sluice_reload(proc);
        break;
    case SIGINT:
        /* PgBouncer: a SIGINT while a shutdown is already under way means "now", for the
         * operator whose graceful shutdown takes too long. */
        sluice_shutdown(proc, proc->phase == PHASE_RUNNING ? PHASE_SHUTDOWN_GRACEFUL
                                                           : PHASE_SHUTDOWN_NOW);
        break;
    case SIGUSR1:
    case SIGUSR2:
        /* As the console's PAUSE: while the clients connected are still served as before
         * (WAIT_FOR_CLIENTS), not while their transactions are being let finish. */
        if (proc->phase > PHASE_SHUTDOWN_WAIT_FOR_CLIENTS) {
            log_msg(LOG_WARNING, "%s ignored: sluice is shutting down",
                    signum == SIGUSR1 ? "SIGUSR1 (PAUSE)" : "SIGUSR2 (RESUME)");
            break;
        }
        log_msg(LOG_INFO, "%s: every database", signum == SIGUSR1 ? "SIGUSR1: PAUSE"
                                                                  : "SIGUSR2: RESUME");
        if (signum == SIGUSR1)
            control_pause(control, NULL); /* the servers close as their clients finish */
        else
            control_resume(control, NULL);
        break;
    default: /* SIGTERM, SIGQUIT */
        sluice_shutdown(proc, PHASE_SHUTDOWN_NOW);
    }
}

/* auth_query's connections count under the caps like the pools' servers; the auth layer asks
 * through these and never calls into budget.c or pool.c itself (secret.h). */
static bool auth_query_slot_take(struct worker *worker, const char *db_name, const char *user_name)
{
    struct ledger_caps caps;
    budget_own_caps(worker, db_name, user_name, &caps);
    caps.pool = SECRET_QUERY_CONNECTIONS; /* every worker's together, not each worker's */
    struct ledger *l = &worker->proc->ledger;
    enum limit_kind k = ledger_take_own(l, (int)worker->index, db_name, user_name, &caps);
    /* a pool's idle server makes room under the shared caps, not among auth_query's own */
    if (k != LIMIT_NONE && k != LIMIT_POOL && pool_evict_idle(worker, k, db_name, user_name, NULL))
        k = ledger_take_own(l, (int)worker->index, db_name, user_name, &caps);
    return k == LIMIT_NONE;
}

static void auth_query_slot_freed(struct worker *worker, const char *db_name, const char *user_name)
{
    struct ledger *l = &worker->proc->ledger;
    worker_wake(worker, ledger_give_own(l, (int)worker->index, db_name, user_name));
    worker->dispatch_needed = true;
    /* a lookup another worker holds back for one of the process's auth_query connections
     * tries again now (WORKER_MSG_WAKE), not on its tick */
    uint64_t wake = ledger_own_waiters(l, (int)worker->index);
    for (int i = 0; wake; i++, wake >>= 1)
        if (wake & 1)
            worker_wake(worker, i);
}

static bool auth_query_wanted_elsewhere(struct worker *worker)
{
    return ledger_own_wanted(&worker->proc->ledger, (int)worker->index);
}

static void auth_query_not_waiting(struct worker *worker)
{
    ledger_own_wait_done(&worker->proc->ledger, (int)worker->index);
}

static const struct secret_slots auth_query_slots = {
    .take = auth_query_slot_take,
    .freed = auth_query_slot_freed,
    .wanted_elsewhere = auth_query_wanted_elsewhere,
    .not_waiting = auth_query_not_waiting,
};

/* Clients of a worker and sockets on their way to it. */
static int load_of(struct worker *worker)
{
    return atomic_load_explicit(&worker->nclients, memory_order_relaxed) +
           atomic_load_explicit(&worker->handed, memory_order_relaxed);
}

/* Accepted sockets become clients of a worker: the one with the fewest clients. */
static struct client *accept_client(struct process *proc, int fd,
                                    const struct sockaddr_storage *addr)
{
    struct worker *least = &proc->workers[0];
    for (int i = 1; i < proc->nworkers; i++) {
        if (load_of(&proc->workers[i]) < load_of(least))
            least = &proc->workers[i];
    }
    return worker_hand_client(least, fd, addr);
}

static const struct listener_ops client_listener_ops = {
    .accepted = accept_client,
    .read_first = client_read_first,
    .clients = true,
};

/* A worker's lists, its timer and reaper on loop: handles first, so that whatever fails after,
 * the shutdown that follows finds them all. 0 or UV_ENOMEM. */
static int worker_start(struct process *proc, struct worker *worker, unsigned index,
                        uv_loop_t *process_loop)
{
    worker->proc = proc;
    worker->index = index;
    /* C-n and S-n unique across workers (5.1): the worker in the top byte, 0 for worker 0 */
    worker->next_id = conn_id_base(index);
    /* Worker 0 shares the process's reference; a thread holds its own generation (5.7). */
    worker->cfg = index == 0 ? proc->cfg : config_acquire(proc->cfg);
    worker->handlers = &sluice_worker_handlers; /* before anything can post to it */
    int rc = worker_loop_init(worker, process_loop);
    if (rc < 0)
        return rc;
    uv_loop_t *loop = worker->loop;
    worker->pool_events = &link_pool_events;
    worker->server_events = &link_server_events;
    worker->client_events = &link_client_events;
    worker->relay_events = &link_relay_events;
    worker->cancel_events = &link_cancel_events;
    list_init(&worker->pools);
    list_init(&worker->login_clients);
    list_init(&worker->closing_clients);
    list_init(&worker->dead_clients);
    list_init(&worker->dead_servers);
    uv_timer_init(loop, &worker->maint_timer);
    worker->maint_timer.data = worker;
    uv_timer_start(&worker->maint_timer, on_maint_timer, MAINT_INTERVAL_MS, MAINT_INTERVAL_MS);
    uv_check_init(loop, &worker->reaper);
    worker->reaper.data = worker;
    uv_check_start(&worker->reaper, on_reaper_check);
    uv_unref((uv_handle_t *)&worker->reaper);
    worker->cancel_map = cancel_map_new(index);
    if (!worker->cancel_map)
        return UV_ENOMEM;
    /* Only a worker on a thread of its own publishes: the control thread reads worker 0 live. */
    if (index > 0 && !(worker->tally = tally_new()))
        return UV_ENOMEM;
    return 0;
}

static void worker_free(struct worker *worker)
{
    struct list_node *n, *tmp;
    worker_thread_join(worker);
    on_reaper_check(&worker->reaper);
    list_for_each(&worker->pools, n, tmp)
    {
        list_remove(&worker->pools, n);
        pool_free(container_of(n, struct pool, node));
    }
    cancel_map_free(worker->cancel_map);
    tally_free(worker->tally);
    stats_free(worker);
    if (worker->index > 0)
        config_release(worker->cfg);
}

int sluice_start(struct process *proc, uv_loop_t *loop, struct config *cfg,
                 const struct sluice_service *const *services)
{
    memset(proc, 0, sizeof(*proc));
    proc->loop = loop;
    proc->cfg = cfg;
    proc->services = services;
    disabled_dbs_init(&proc->disabled_dbs);
    list_init(&proc->sets); /* reload.c's console SETs: first, reload_free walks it */
    apply_logging(cfg);
    /* A buffer must hold a whole startup packet and any message sluice reads in place. */
    uint32_t block = (uint32_t)cfg->pkt_buf;
    if (block < 16384)
        block = 16384;
    buf_set_block_size(block);
    signal(SIGPIPE, SIG_IGN);

    /* Handles first: whatever fails below, the shutdown that follows finds them all. */
    /* A loaded config says 1..SLUICE_MAX_WORKERS; a test's zeroed one means 1. */
    proc->nworkers = cfg->workers.n < 1 ? 1 : cfg->workers.n;
    int rc = 0;
    for (int i = 0; i < proc->nworkers && rc == 0; i++)
        rc = worker_start(proc, &proc->workers[i], (unsigned)i, loop);
    if (rc == 0)
        rc = reload_init(proc, loop);
    _Static_assert(sizeof(handled_signals) / sizeof(handled_signals[0]) == SLUICE_SIGNALS,
                   "one handle per signal");
    for (int i = 0; i < SLUICE_SIGNALS; i++) {
        uv_signal_init(loop, &proc->signals[i]);
        proc->signals[i].data = proc;
        uv_signal_start(&proc->signals[i], on_signal, handled_signals[i]);
    }
    if (rc < 0 || budget_sync(proc) < 0)
        return UV_ENOMEM;
    for (int i = 1; i < proc->nworkers; i++) /* worker 0 took it in budget_sync */
        budget_set_swap(&proc->workers[i].budgets, budget_set_current(proc));
    rc = listener_start(proc, &client_listener_ops);
    if (rc < 0)
        return rc;
    secret_init(&auth_query_slots);
    if (auth_init(cfg) < 0 || tls_init(cfg) < 0)
        return UV_EINVAL; /* logged: auth_hba_file or client TLS cannot be used */
    /* Counted before its start runs: a start that fails may leave half-made state, which its
     * stop and free (from the shutdown that follows) clean up. */
    while (services && services[proc->services_started]) {
        const struct sluice_service *svc = services[proc->services_started++];
        rc = svc->start ? svc->start(proc) : 0;
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < proc->nworkers; i++)
        pool_create_forced(&proc->workers[i]);
    for (int i = 1; i < proc->nworkers; i++) {
        rc = worker_thread_start(&proc->workers[i]);
        if (rc < 0)
            return rc;
    }
    log_msg(LOG_INFO,
            "sluice %s started: %d worker%s%s, %s mode, default_pool_size %lld, max_client_conn "
            "%lld",
            SLUICE_VERSION, proc->nworkers, proc->nworkers == 1 ? "" : "s",
            cfg->workers.automatic ? " (auto: the CPUs it may use)" : "",
            pool_mode_name(cfg->pool_mode), (long long)cfg->default_pool_size,
            (long long)cfg->max_client_conn);
    return 0;
}

void sluice_shutdown(struct process *proc, enum sluice_phase phase)
{
    if (phase <= proc->phase)
        return;
    enum sluice_phase before = proc->phase;
    /* While clients are waited for, /health already says shutting_down and /metrics go on. */
    for (int i = 0; phase >= PHASE_SHUTDOWN_GRACEFUL && i < proc->services_started; i++) {
        if (proc->services[i]->stop)
            proc->services[i]->stop(proc);
    }
    proc->phase = phase;
    /* After the phase, so that the connections still queued, which listener_stop accepts, find
     * the process shutting down and are told so; before the workers' shutdown message, which
     * comes after the sockets handed to them and tells the logins among them. */
    if (before == PHASE_RUNNING)
        listener_stop(proc);
    if (phase == PHASE_SHUTDOWN_WAIT_FOR_CLIENTS) {
        log_msg(LOG_INFO,
                "shutdown once every client has left: no new connections; %d clients "
                "connected",
                sluice_nclients(proc));
        for (int i = 0; i < proc->nworkers; i++)
            worker_post_shutdown(&proc->workers[i], phase);
        return;
    }
    if (phase == PHASE_SHUTDOWN_GRACEFUL) {
        proc->shutdown_deadline_ms = uv_now(proc->loop) + (uint64_t)proc->cfg->shutdown_timeout;
        log_msg(LOG_INFO,
                "graceful shutdown: no new connections; waiting up to %lld ms for "
                "transactions to finish",
                (long long)proc->cfg->shutdown_timeout);
    } else {
        log_msg(LOG_INFO, "shutting down now");
    }
    for (int i = 0; i < proc->nworkers; i++)
        worker_post_shutdown(&proc->workers[i], phase);
    secret_shutdown(); /* the clients that waited for auth_query are gone */
    finish_if_done(proc);
}

void sluice_free(struct process *proc)
{
    /* every thread first: until it is joined a worker may still post to another's mailbox
     * (a cancel's answer from the thread pool's completion), which must then be refused, not
     * meet a destroyed lock */
    for (int i = 0; i < proc->nworkers; i++)
        worker_thread_join(&proc->workers[i]);
    for (int i = 0; i < proc->nworkers; i++)
        worker_free(&proc->workers[i]);
    for (int i = 0; i < proc->nworkers; i++)
        mailbox_free(&proc->workers[i].mailbox);
    for (int i = 0; i < proc->services_started; i++) {
        if (proc->services[i]->free)
            proc->services[i]->free(proc);
    }
    disabled_dbs_free(proc);
    reload_free(proc);
    budget_free_all(proc);
    free(proc->listener);
    config_free(proc->cfg);
    auth_free_all(); /* closes auth_query's connections: their slots go back first */
    ledger_free(&proc->ledger);
    tls_free();
    buf_free_cache();
    log_close();
}
