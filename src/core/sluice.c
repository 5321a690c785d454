/* sluice: the process and its workers: start-up, each worker's background timer and reaper,
 * reload and shutdown (see sluice.h). Signals only set what to do; the work happens on the loop
 * like everything else. */
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
#include "secret.h"
#include "server.h"
#include "stats.h"
#include "tally.h"
#include "view.h"
#include "tls.h"
#include "worker.h"

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

static void on_reload_read(struct reload_reader *reader, struct reload_result *r);
static const struct reload_files_ops named_files_ops;

int sluice_start(struct process *proc, uv_loop_t *loop, struct config *cfg,
                 const struct sluice_service *const *services)
{
    memset(proc, 0, sizeof(*proc));
    proc->loop = loop;
    proc->cfg = cfg;
    proc->services = services;
    disabled_dbs_init(&proc->disabled_dbs);
    list_init(&proc->sets);
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
        rc = reload_reader_init(&proc->reload, loop, &named_files_ops, on_reload_read);
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

/* next becomes the process's config; the old one, still referenced, is returned. The control
 * worker runs under the new one from here: what a reload's steps close or log read it, as with
 * one loop. The others swap when their message comes (publish_generation). */
static struct config *swap_config(struct process *proc, struct config *next)
{
    struct config *old = proc->cfg;
    proc->cfg = next;
    sluice_control_worker(proc)->cfg = next;
    return old;
}

/* The budgets of proc->cfg, then every worker told to apply it; old released. */
/* A database the new generation no longer has (no entry of its own, no "*" entry) is forgotten
 * as PgBouncer forgets it: its PAUSE, KILL or DISABLE ends, so adding it back gives one that
 * serves. Posted after the reload messages, which close its clients first (control.h). */
static void forget_removed_dbs(struct process *proc, const struct config *old)
{
    for (int i = 0; i < old->ndbs; i++) {
        const char *name = old->dbs[i].name;
        if (strcmp(name, "*") == 0 || config_find_db(proc->cfg, name))
            continue;
        disabled_dbs_remove(proc, name);
        control_resume(sluice_control_worker(proc), name);
    }
}

static void publish_generation(struct process *proc, struct config *old)
{
    struct config *next = proc->cfg;
    if (budget_sync(proc) < 0)
        log_msg(LOG_ERROR, "reload: out of memory updating budgets; the old ones stay");
    proc->reload_seq++;
    for (int i = 0; i < proc->nworkers; i++)
        worker_post_reload(&proc->workers[i], next);
    forget_removed_dbs(proc, old);
    config_free(old);
    pool_dispatch_all(sluice_control_worker(proc)); /* the others in their reload message */
}

/* next (a validated config whose reference the caller gives up) becomes the process's, as a
 * reload's does after loading: budgets synced, every worker told to swap to it
 * (sluice_reload_done says when all have), the old generation released. */
static void apply_generation(struct process *proc, struct config *next)
{
    publish_generation(proc, swap_config(proc, next));
}

static void report_restart_key(const char *key, const char *running, const char *wanted)
{
    log_msg(LOG_WARNING, "reload: %s = '%s' takes effect only at a restart; '%s' stays in use", key,
            wanted, running);
}

/* The files besides the config's own that a reload, or a console SET of a key of theirs, puts
 * in force, read on the reader's thread (reload_reader.h) and put in force on the loop as they
 * were read: never opened twice, so a file that blocks blocks only the reading thread, and one
 * that changes between the two cannot be half used. */
struct named_files {
    struct tls_context *tls;
    struct auth_files *auth;
    FILE *logfile; /* NULL: cfg names none */
};

/* Which of them a key puts in force (NULL: a reload, every one). */
enum named_file_kind {
    FILES_NONE = 0,
    FILES_LOG = 1 << 0,  /* logfile, opened again under log_level/log_format too */
    FILES_TLS = 1 << 1,  /* the client TLS context: certificate, key, CA */
    FILES_AUTH = 1 << 2, /* auth_hba_file, auth_ident_file (auth_file is the config's own) */
    FILES_ALL = FILES_LOG | FILES_TLS | FILES_AUTH,
};

static unsigned files_of_key(const char *key)
{
    if (!key)
        return FILES_ALL;
    if (strcmp(key, "log_level") == 0 || strcmp(key, "log_format") == 0 ||
        strcmp(key, "logfile") == 0)
        return FILES_LOG;
    /* "client_tls", not "client_tls_": client_tls13_ciphers builds the context too */
    if (strncmp(key, "client_tls", 10) == 0)
        return FILES_TLS;
    if (strncmp(key, "auth_", 5) == 0)
        return FILES_AUTH;
    return FILES_NONE;
}

static void named_files_free(void *arg)
{
    struct named_files *f = arg;
    tls_context_free(f->tls);
    auth_files_free(f->auth);
    if (f->logfile)
        fclose(f->logfile);
    free(f);
}

/* A logfile that cannot be opened would leave stderr the only log while SHOW CONFIG names it. */
static void *named_files_read(const struct config *cfg, const char *key, char *err, size_t errlen)
{
    unsigned kinds = files_of_key(key);
    struct named_files *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory reading the files the configuration names");
        return NULL;
    }
    if (((kinds & FILES_TLS) && !(f->tls = tls_context_build(cfg, err, errlen))) ||
        ((kinds & FILES_AUTH) && !(f->auth = auth_files_read(cfg, err, errlen)))) {
        named_files_free(f);
        return NULL;
    }
    if ((kinds & FILES_LOG) && cfg->logfile && cfg->logfile[0] &&
        !(f->logfile = fopen(cfg->logfile, "a"))) {
        snprintf(err, errlen, "logfile %s: cannot open it: %s", cfg->logfile, strerror(errno));
        named_files_free(f);
        return NULL;
    }
    return f;
}

/* Put in force the files as read, under cfg (now the process's): all of them after a reload
 * (key NULL), or those a SET of key touches; files is freed. */
static void named_files_put_in_force(const struct config *cfg, struct named_files *files,
                                     const char *key)
{
    unsigned kinds = files_of_key(key);
    if (kinds & FILES_LOG) {
        log_configure_file(cfg->log_level, cfg->log_format == LOG_FORMAT_JSON, files->logfile);
        files->logfile = NULL;
    }
    if (kinds & FILES_TLS) {
        tls_reload_built(cfg, files->tls);
        files->tls = NULL;
    }
    if (kinds & FILES_AUTH) {
        auth_reload_read(cfg, files->auth);
        files->auth = NULL;
    }
    named_files_free(files);
}

static const struct reload_files_ops named_files_ops = {
    .read = named_files_read,
    .free = named_files_free,
};

/* Apply what a reload's read found (reload_reader.c), on the loop: the checks and the swap
 * that need the running config. true when next is now the process's config. */
static bool apply_reloaded(struct process *proc, struct reload_result *r)
{
    struct config *next = r->next;
    for (int i = 0; i < r->diag.nwarnings; i++)
        log_msg(LOG_WARNING, "reload: %s", r->diag.warnings[i]);
    if (!next) {
        for (int i = 0; i < r->diag.nerrors; i++)
            log_msg(LOG_ERROR, "reload: %s", r->diag.errors[i]);
        if (r->files_error[0]) /* config_load was fine; a file it names is not */
            log_msg(LOG_ERROR, "reload: %s", r->files_error);
        log_msg(LOG_ERROR, "reload: the new configuration is invalid; keeping the old one");
        config_diag_free(&r->diag);
        return false;
    }
    config_diag_free(&r->diag);
    if (config_keep_restart_keys(next, proc->cfg, report_restart_key) != 0) {
        config_free(next);
        named_files_free(r->files);
        log_msg(LOG_ERROR, "reload: out of memory; keeping the old configuration");
        return false;
    }
    struct config *old = swap_config(proc, next);
    named_files_put_in_force(next, r->files, NULL);
    publish_generation(proc, old);
    log_msg(LOG_INFO, "configuration reloaded");
    return true;
}

/* ---- the reader's turns: reloads and console SETs, one read at a time, in the order asked ---- */

/* A console SET not yet answered (proc->sets). */
struct pending_set {
    struct list_node node;
    unsigned id;
    /* proc->reload_asked when it was asked: the reloads up to it are read before it */
    unsigned after_reload;
    char *key; /* as config_keys spells it */
    char *value;
};

static struct pending_set *first_set(struct process *proc)
{
    struct list_node *n = list_first(&proc->sets);
    return n ? container_of(n, struct pending_set, node) : NULL;
}

static void pending_set_free(struct pending_set *set)
{
    free(set->key);
    free(set->value);
    free(set);
}

/* The running config with key = value, checked with the other keys; NULL with err. */
static struct config *config_with_set(struct process *proc, const char *key, const char *value,
                                      char *err, size_t errlen)
{
    struct config *next = config_copy(proc->cfg);
    if (!next) {
        snprintf(err, errlen, "out of memory copying the configuration");
        return NULL;
    }
    if (config_set_key(next, key, value, SRC_ADMIN_SET, err, errlen) < 0) {
        config_free(next);
        return NULL;
    }
    return next;
}

/* A SET's end: answered through set_ended (error NULL: in force), and forgotten. */
static void end_set(struct process *proc, struct pending_set *set, const char *error)
{
    list_remove(&proc->sets, &set->node);
    unsigned id = set->id;
    if (error)
        log_msg(LOG_ERROR, "admin: SET %s = '%s' refused: %s", set->key, set->value, error);
    pending_set_free(set);
    for (int i = 0; i < proc->services_started; i++) {
        if (proc->services[i]->set_ended)
            proc->services[i]->set_ended(proc, id, error);
    }
}

static void start_reading(struct process *proc, unsigned upto)
{
    proc->reading = SLUICE_READ_RELOAD;
    proc->reload_reading = upto;
    const char *path = proc->cfg->path;
    log_msg(LOG_INFO, "reload: reading %s%s", path ? path : "the environment",
            path ? " and the files it names" : "");
    reload_reader_start(&proc->reload, path, environ);
}

/* The first SET's files read on the reader's thread; next (the config it makes) is taken. */
static void start_set_read(struct process *proc, struct pending_set *set, struct config *next)
{
    char what[160];
    snprintf(what, sizeof(what), "admin: SET %s = '%s'", set->key, set->value);
    proc->reading = SLUICE_READ_SET;
    log_msg(LOG_INFO, "%s: reading the files it names", what);
    reload_reader_start_files(&proc->reload, next, set->key, what);
}

/* The reader is free: start what comes next in the order asked, the first SET once every
 * reload asked before it is read, else the reloads asked for (up to the first SET's). A SET
 * with no file to read, or refused now, ends here and the next one is looked at. From the
 * reader's callback and a cancel, never from inside a console command: set_ended answers
 * consoles, and the console's caller may be walking its waits. */
static void read_next(struct process *proc)
{
    while (proc->reload.open && !reload_reader_busy(&proc->reload)) {
        struct pending_set *set = first_set(proc);
        if (set && set->after_reload == proc->reload_reading) {
            char err[1024];
            struct config *next = config_with_set(proc, set->key, set->value, err, sizeof(err));
            if (!next) {
                end_set(proc, set, err);
                continue;
            }
            if (files_of_key(set->key) == FILES_NONE) {
                apply_generation(proc, next);
                end_set(proc, set, NULL);
                continue;
            }
            start_set_read(proc, set, next);
            return;
        }
        if (proc->reload_asked == proc->reload_reading)
            return;
        start_reading(proc, set ? set->after_reload : proc->reload_asked);
        return;
    }
}

/* A SET's read ended: its generation in force with its files as read, or its error. */
static void apply_set_read(struct process *proc, struct reload_result *r)
{
    struct pending_set *set = first_set(proc);
    config_diag_free(&r->diag); /* a SET's read loads no config: nothing in it */
    if (!r->next) {
        end_set(proc, set, r->files_error[0] ? r->files_error : "its files cannot be read");
        return;
    }
    apply_generation(proc, r->next);
    named_files_put_in_force(proc->cfg, r->files, set->key);
    end_set(proc, set, NULL);
}

static void on_reload_read(struct reload_reader *reader, struct reload_result *r)
{
    struct process *proc = container_of(reader, struct process, reload);
    enum sluice_read was = proc->reading;
    proc->reading = SLUICE_READ_NONE;
    if (was == SLUICE_READ_SET) {
        apply_set_read(proc, r);
    } else {
        unsigned answered = proc->reload_reading;
        bool applied = apply_reloaded(proc, r);
        for (int i = 0; i < proc->services_started; i++) {
            if (proc->services[i]->reload_ended)
                proc->services[i]->reload_ended(proc, answered, applied);
        }
    }
    /* Asked for while this one read: the next read, of the files as they are now. */
    read_next(proc);
}

unsigned sluice_reload(struct process *proc)
{
    unsigned asked = ++proc->reload_asked;
    if (!proc->reload.open) {
        log_msg(LOG_WARNING, "reload ignored: sluice is exiting");
        return asked;
    }
    if (reload_reader_busy(&proc->reload) || !list_empty(&proc->sets)) {
        log_msg(LOG_INFO, "reload: %s; one more read follows it",
                proc->reading == SLUICE_READ_SET ? "a console SET is still reading its files"
                : proc->reading == SLUICE_READ_RELOAD
                    ? "the previous reload is still reading its files"
                    : "a console SET waits before it");
        return asked;
    }
    start_reading(proc, asked);
    return asked;
}

bool sluice_reload_reading(const struct process *proc)
{
    return reload_reader_busy(&proc->reload) || proc->reload_asked != proc->reload_reading;
}

enum sluice_set_result sluice_set(struct process *proc, const char *key, const char *value,
                                  unsigned *id, char *err, size_t errlen)
{
    if (!proc->reload.open) {
        snprintf(err, errlen, "sluice is exiting");
        return SLUICE_SET_REFUSED;
    }
    /* Checked now, against the running config, so that a value that cannot be is refused at
     * once; at its turn it is applied to the config then running, and checked again. */
    struct config *next = config_with_set(proc, key, value, err, errlen);
    if (!next)
        return SLUICE_SET_REFUSED;
    bool first = !sluice_reload_reading(proc) && list_empty(&proc->sets);
    if (first && files_of_key(key) == FILES_NONE) {
        apply_generation(proc, next);
        return SLUICE_SET_APPLIED;
    }
    struct pending_set *set = calloc(1, sizeof(*set));
    if (!set || !(set->key = strdup(key)) || !(set->value = strdup(value))) {
        if (set)
            pending_set_free(set);
        config_free(next);
        snprintf(err, errlen, "out of memory");
        return SLUICE_SET_REFUSED;
    }
    set->id = *id = ++proc->sets_asked;
    set->after_reload = proc->reload_asked;
    list_append(&proc->sets, &set->node);
    if (first) {
        start_set_read(proc, set, next); /* its answer comes from the loop, never from here */
        return SLUICE_SET_PENDING;
    }
    config_free(next);
    log_msg(LOG_INFO, "admin: SET %s = '%s' waits for the %s before it", key, value,
            proc->reading == SLUICE_READ_SET ? "console SET" : "reload");
    return SLUICE_SET_PENDING;
}

void sluice_set_cancel(struct process *proc, unsigned id)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->sets, n, tmp)
    {
        struct pending_set *set = container_of(n, struct pending_set, node);
        if (set->id != id)
            continue;
        bool reading = proc->reading == SLUICE_READ_SET && set == first_set(proc);
        log_msg(LOG_INFO, "admin: SET %s = '%s' cancelled%s; nothing changed", set->key, set->value,
                reading ? " while reading its files: the read is abandoned" : "");
        list_remove(&proc->sets, n);
        pending_set_free(set);
        if (reading) {
            reload_reader_abandon(&proc->reload);
            proc->reading = SLUICE_READ_NONE;
            read_next(proc);
        }
        return;
    }
}

bool sluice_reload_done(const struct process *proc)
{
    for (int i = 0; i < proc->nworkers; i++)
        if (atomic_load_explicit(&proc->workers[i].reload_applied, memory_order_acquire) !=
            proc->reload_seq)
            return false;
    return true;
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
    struct list_node *n, *tmp;
    list_for_each(&proc->sets, n, tmp)
    {
        list_remove(&proc->sets, n); /* unanswered: the consoles that asked are gone */
        pending_set_free(container_of(n, struct pending_set, node));
    }
    budget_free_all(proc);
    free(proc->listener);
    config_free(proc->cfg);
    auth_free_all(); /* closes auth_query's connections: their slots go back first */
    ledger_free(&proc->ledger);
    tls_free();
    buf_free_cache();
    log_close();
}
