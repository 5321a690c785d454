/* Unit test of the worker threads' mechanism (worker.c, docs/architecture.md 5.1, 5.7) with two
 * workers, below the workers key's refusal (the config says 1; the test asks for 2 after the
 * load): the acceptor hands the second of two TCP clients to worker 1's thread, a CancelRequest
 * on worker 0 for worker 1's pid is answered by worker 1 through the mailboxes, a slot freed on
 * worker 0 wakes worker 1 that waited for it, a reload
 * reaches worker 1 as a config generation of its own, and a shutdown closes both workers'
 * clients, ends worker 1's loop and joins its thread. Run under TSan too (scripts/test). Uses
 * loopback sockets and a 10 ms timer: the hand-off is between threads (the listener's
 * TCP_DEFER_ACCEPT holds silent clients about a second). */
#include "certificate.h"
#include "check.h"
#include "fixture.h"

#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "budget.h"
#include "config.h"
#include "control.h"
#include "ledger.h"
#include "listener.h"
#include "pool.h"
#include "report.h"
#include "server.h"
#include "sluice.h"
#include "sockio.h"
#include "tally.h"
#include "view.h"
#include "worker.h"

static char *no_env[] = {NULL};

struct run {
    struct process proc;
    uv_timer_t timer;
    int ticks;
    bool both_served;     /* each worker had one client */
    int canceller;        /* a third client, sending a CancelRequest for worker 1's pid */
    bool cancel_answered; /* its connection was closed: worker 1 answered through worker 0 */
    bool reloaded;        /* the reload was sent */
    bool reload_acked;    /* every worker applied it (sluice_reload_done) */
};

static int connect_to(int port);

/* A CancelRequest (protocol 55.2.10) for pid, key 0. */
static void send_cancel(int fd, uint32_t pid)
{
    uint32_t words[4] = {htonl(16), htonl(80877102u), htonl(pid), 0};
    CHECK_INT((int)write(fd, words, sizeof(words)), (int)sizeof(words));
}

/* Worker 1 waits for a slot of db/u (as its pool's maybe_connect registers it); a slot freed on
 * worker 0 names it, and worker_wake sends it a message (its dispatch runs on its thread). */
static void wake_worker_1(struct process *proc)
{
    struct worker *w0 = &proc->workers[0];
    struct pool *p = pool_get(w0, NULL, "u", "db");
    CHECK(p != NULL);
    if (!p)
        return;
    struct ledger *l = &proc->ledger;
    CHECK_INT(ledger_wait_slot(l, p->ledger_key, 1, LIMIT_POOL, ledger_now_ms()), 0);
    struct ledger_caps room = {.pool = 10};
    CHECK_INT(ledger_take_server(l, p->ledger_key, (int)p->worker->index, &room), LIMIT_NONE);
    int woken = ledger_give_server(l, p->ledger_key, (int)p->worker->index);
    CHECK_INT(woken, 1);
    worker_wake(w0, woken);
    CHECK_INT(ledger_wait_oldest(l, NULL), LEDGER_NO_WORKER); /* taken off the list */
}

static void on_tick(uv_timer_t *t)
{
    struct run *r = t->data;
    struct process *proc = &r->proc;
    int w0 = atomic_load(&proc->workers[0].nclients);
    int w1 = atomic_load(&proc->workers[1].nclients);
    if (!r->both_served) {
        r->both_served = w0 == 1 && w1 == 1;
        if (r->both_served) {
            /* on worker 0 (a tie goes to it), for a pid whose owner bits name worker 1 */
            r->canceller = connect_to(listener_port(proc));
            send_cancel(r->canceller, 0x40000000u | 1u);
        }
    } else if (!r->cancel_answered) {
        char byte;
        r->cancel_answered = recv(r->canceller, &byte, 1, MSG_DONTWAIT) == 0;
    }
    if (!r->cancel_answered && ++r->ticks < 500)
        return;
    if (!r->reloaded) {
        wake_worker_1(proc);
        sluice_reload(proc);
        r->reloaded = true;
    }
    /* RELOAD completes once its files were read (off the loop) and worker 1 applied it on its
     * thread (its acknowledgement) */
    r->reload_acked = !sluice_reload_reading(proc) && sluice_reload_done(proc);
    if (r->reload_acked) /* what it applied is the process's newest config and budget set */
        CHECK(proc->workers[1].cfg == proc->cfg && proc->workers[1].budgets == proc->budgets);
    if (!r->reload_acked && ++r->ticks < 1000)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    sluice_shutdown(proc, PHASE_SHUTDOWN_NOW);
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval five = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five, sizeof(five));
    CHECK_INT(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* What the client reads until sluice closes it: >= 0 bytes (the shutdown's FATAL, if any),
 * -1 if it stayed open past the timeout. */
static int read_to_close(int fd)
{
    char buf[512];
    int total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0)
            return total;
        if (n < 0)
            return -1;
        total += (int)n;
    }
}

/* A config from a file at path (mkstemp's template, filled in), loaded as the key allows
 * (workers = 1), then asking for workers: the mechanism under the key's refusal. */
static struct config *config_with_keys(char *path, int workers, const char *keys)
{
    int cfd = mkstemp(path);
    CHECK(cfd >= 0);
    char ini[512];
    int len = snprintf(ini, sizeof(ini),
                       "[databases]\ndb = host=127.0.0.1 port=1\n"
                       "[sluice]\nlisten_addr = 127.0.0.1\nlisten_port = 0\n%s",
                       keys);
    CHECK_INT((int)write(cfd, ini, (size_t)len), len);
    close(cfd);
    struct config_diag diag = {0};
    struct config *cfg = config_load(path, no_env, &diag);
    config_diag_free(&diag);
    CHECK(cfg != NULL);
    if (cfg)
        cfg->workers = (struct thread_count){.n = workers};
    return cfg;
}

static struct config *config_with_workers(char *path, int workers)
{
    return config_with_keys(path, workers, "");
}

static void two_workers_take_clients_reload_and_shut_down(void)
{
    char path[] = "/tmp/sluice-test-workers-XXXXXX";
    struct config *cfg = config_with_workers(path, 2);
    if (!cfg)
        return;

    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct run r;
    CHECK_INT(sluice_start(&r.proc, &loop, cfg, NULL), 0);
    CHECK_INT(r.proc.nworkers, 2);
    CHECK_INT(r.proc.workers[0].run, WORKER_ON_PROCESS_LOOP);
    CHECK_INT(r.proc.workers[1].run, WORKER_THREAD_RUNNING);
    uint64_t first_generation = cfg->generation;
    int port = listener_port(&r.proc);
    int a = connect_to(port), b = connect_to(port);
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, on_tick, 10, 10);

    uv_run(&loop, UV_RUN_DEFAULT);
    sockio_release_spares();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(r.both_served);
    CHECK(r.cancel_answered);
    CHECK(r.reload_acked);
    close(r.canceller);
    CHECK(read_to_close(a) >= 0); /* closed by the shutdown, on worker 0 */
    CHECK(read_to_close(b) >= 0); /* and on worker 1's thread */
    close(a);
    close(b);

    worker_thread_join(&r.proc.workers[1]);
    CHECK_INT(r.proc.workers[1].run, WORKER_THREAD_JOINED);
    CHECK(r.proc.cfg->generation > first_generation);
    CHECK(r.proc.workers[1].cfg == r.proc.cfg); /* its reload message came before the end */
    CHECK_INT(atomic_load(&r.proc.workers[1].nclients), 0);
    CHECK_INT(atomic_load(&r.proc.workers[1].handed), 0);
    CHECK(r.proc.workers[1].next_id == ((uint64_t)1 << 56) + 1); /* C-n unique across workers */
    sluice_free(&r.proc);
    CHECK_INT(uv_loop_close(&loop), 0);
    unlink(path);
}

#define FOUR 4

struct graceful_run {
    struct process proc;
    uv_timer_t timer;
    int ticks;
    bool spread; /* one client on each worker */
};

static void on_graceful_tick(uv_timer_t *t)
{
    struct graceful_run *r = t->data;
    int one_each = 0;
    for (int i = 0; i < FOUR; i++)
        one_each += atomic_load(&r->proc.workers[i].nclients) == 1;
    r->spread = one_each == FOUR;
    if (!r->spread && ++r->ticks < 500)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    sluice_shutdown(&r->proc, PHASE_SHUTDOWN_GRACEFUL); /* SIGINT's */
}

/* Four workers, a client on each (the acceptor spreads them), then SIGINT's graceful shutdown:
 * each thread closes its own clients (logins are closed at once), the control thread sees every
 * count at zero, ends each thread's loop and joins it. */
static void four_workers_spread_clients_and_shut_down_gracefully(void)
{
    char path[] = "/tmp/sluice-test-workers-XXXXXX";
    struct config *cfg = config_with_workers(path, FOUR);
    if (!cfg)
        return;
    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct graceful_run r;
    CHECK_INT(sluice_start(&r.proc, &loop, cfg, NULL), 0);
    CHECK_INT(r.proc.nworkers, FOUR);
    int port = listener_port(&r.proc), fds[FOUR];
    for (int i = 0; i < FOUR; i++)
        fds[i] = connect_to(port);
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, on_graceful_tick, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    sockio_release_spares();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(r.spread);
    for (int i = 0; i < FOUR; i++) {
        CHECK(read_to_close(fds[i]) >= 0);
        close(fds[i]);
    }
    for (int i = 0; i < FOUR; i++) {
        worker_thread_join(&r.proc.workers[i]);
        CHECK_INT(atomic_load(&r.proc.workers[i].nclients), 0);
    }
    CHECK_INT(r.proc.workers[3].run, WORKER_THREAD_JOINED);
    sluice_free(&r.proc);
    CHECK_INT(uv_loop_close(&loop), 0);
    unlink(path);
}

#define THREE 3

struct console_run {
    struct process proc;
    uv_timer_t timer;
    int ticks;
    /* the consoles on worker 0, the silent client on worker 1 or 2 (5.6: a console login
     * that lands on worker k > 0 moves to worker 0) */
    bool settled;
    uint64_t silent_id;
    int silent_on;
    /* What the control thread's views said once every worker had published its client. */
    int console_clients, console_on_0_live, pool_rows, total_clients, login_clients;
    bool metrics_count_all; /* /metrics' sluice_client_connections said 3 */
    int moved_console;      /* the console client accepted by worker 1, moved to worker 0 */
    bool kill_sent;         /* its KILL_CLIENT of the silent client */
    bool killed_elsewhere;  /* its worker closed it; worker 0 kept both consoles */
    bool queries_recorded;  /* one transaction counted on each worker (record_query) */
    bool metrics_elsewhere; /* /metrics' histogram of db/u, a pool only workers 1, 2 have: 2 */
    uint64_t stats_xacts;   /* SHOW STATS's total_xact_count of database db: 2 */
    uint64_t console_xacts; /* and of the console's database pgbouncer: 1 */
};

/* One transaction of 5 ms on worker: on worker 0 in the console pool (the consoles moved
 * there), on workers 1 and 2 in a pool of db/u (a key worker 0 has not), counted on worker's
 * own thread as a query's end counts it (pool_record_query). */
static void record_query(struct worker *worker, void *arg, bool delivered)
{
    (void)arg;
    if (delivered && worker->index > 0) {
        struct pool *p = pool_get(worker, NULL, "u", "db"); /* NULL: /metrics' check fails */
        if (p)
            pool_record_query(p, 5, true);
    }
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (delivered && p->is_admin)
            pool_record_query(p, 5, true);
    }
}

/* A Query message (protocol 55.2.2) on fd. */
static void send_query(int fd, const char *sql)
{
    unsigned char msg[128];
    uint32_t body = (uint32_t)strlen(sql) + 1, len = 4 + body;
    uint32_t nlen = htonl(len);
    msg[0] = 'Q';
    memcpy(msg + 1, &nlen, 4);
    memcpy(msg + 5, sql, body);
    CHECK_INT((int)write(fd, msg, 1 + len), (int)(1 + len));
}

/* The console's pseudo-pool pgbouncer/admin, summed over the workers as SHOW POOLS shows it:
 * worker 0's pool read live plus the others' published frames, or only theirs. */
static void count_console_pool(struct console_run *r)
{
    struct worker *w0 = sluice_control_worker(&r->proc);
    uint64_t now = sluice_now(w0);
    r->console_clients = r->console_on_0_live = r->pool_rows = 0;
    view_for_each_pool(w0, pool)
    {
        struct view_pool v;
        view_pool(pool, now, &v);
        if (v.console)
            r->console_on_0_live = v.now.cl_active + v.now.cl_idle + v.now.cl_waiting;
        view_pool_add_workers(w0, &v);
        r->pool_rows++;
        if (v.console)
            r->console_clients += v.now.cl_active + v.now.cl_idle + v.now.cl_waiting;
    }
    struct view_remote_pool *elsewhere;
    int n = view_pools_elsewhere(w0, &elsewhere);
    for (int i = 0; i < n; i++) {
        r->pool_rows++;
        if (elsewhere[i].v.console)
            r->console_clients += elsewhere[i].v.now.cl_active + elsewhere[i].v.now.cl_idle;
    }
    free(elsewhere);
    struct view_totals tot;
    view_totals(w0, &tot);
    r->total_clients = tot.clients;
    r->login_clients = tot.login_clients;
    char *body;
    size_t len;
    CHECK(report_metrics(w0, &body, &len));
    r->metrics_count_all = strstr(body, "\nsluice_client_connections 3\n") != NULL;
    r->metrics_elsewhere =
        strstr(body, "\nsluice_query_duration_seconds_count{database=\"db\",user=\"u\"} 2\n");
    free(body);
    struct stats_totals st;
    stats_totals_for_db(w0, "db", &st);
    r->stats_xacts = st.xact_count;
    stats_totals_for_db(w0, "pgbouncer", &st);
    r->console_xacts = st.xact_count;
}

static void on_console_tick(uv_timer_t *t)
{
    struct console_run *r = t->data;
    struct worker *w = r->proc.workers;
    int on_1 = atomic_load(&w[1].nclients), on_2 = atomic_load(&w[2].nclients);
    if (!r->settled && atomic_load(&w[0].nclients) == 2 && on_1 + on_2 == 1) {
        r->settled = true;
        /* the silent client: worker 2's first, or worker 1's second (after the console) */
        r->silent_id = on_2 ? ((uint64_t)2 << 56) + 1 : ((uint64_t)1 << 56) + 2;
        r->silent_on = on_2 ? 2 : 1;
    }
    if (r->settled && !r->kill_sent) {
        if (!r->queries_recorded) {
            record_query(&w[0], NULL, true); /* the control thread's own */
            for (int i = 1; i < THREE; i++)
                CHECK_INT(worker_post_call(&w[i], record_query, NULL), 0);
            r->queries_recorded = true;
        }
        count_console_pool(r);
        if (r->console_clients == 2 && r->login_clients == 1 && r->stats_xacts == 2 &&
            r->console_xacts == 1 && r->metrics_elsewhere) {
            /* the moved console: its commands run on worker 0 (SHOW CLIENTS gathers every
             * worker's rows, RELOAD waits for every worker's acknowledgement; both only on the
             * control thread), then worker 2's first client (the id's top byte) */
            send_query(r->moved_console, "SHOW CLIENTS");
            send_query(r->moved_console, "RELOAD");
            char kill[64];
            snprintf(kill, sizeof(kill), "KILL_CLIENT %llu", (unsigned long long)r->silent_id);
            send_query(r->moved_console, kill);
            r->kill_sent = true;
        }
    }
    r->killed_elsewhere = r->kill_sent && atomic_load(&w[r->silent_on].nclients) == 0 &&
                          atomic_load(&w[0].nclients) == 2;
    if (!r->killed_elsewhere && ++r->ticks < 500)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    sluice_shutdown(&r->proc, PHASE_SHUTDOWN_NOW);
}

/* A StartupMessage (protocol 55.2.1) for the console as user admin. */
static void send_console_startup(int fd)
{
    static const char params[] = "user\0admin\0database\0pgbouncer\0";
    unsigned char msg[64];
    uint32_t len = 8 + sizeof(params); /* the array's own NUL ends the list */
    uint32_t words[2] = {htonl(len), htonl(196608u)};
    memcpy(msg, words, 8);
    memcpy(msg + 8, params, sizeof(params));
    CHECK_INT((int)write(fd, msg, len), (int)len);
}

/* The DataRows a console's socket received up to its close, and whether a SHOW ended them. */
static int read_data_rows(int fd, bool *show_done, bool *reload_done)
{
    static unsigned char all[65536];
    size_t n = 0;
    for (;;) {
        ssize_t got = read(fd, all + n, sizeof(all) - n);
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    int rows = 0;
    *show_done = *reload_done = false;
    for (size_t at = 0; at + 5 <= n;) {
        uint32_t len;
        memcpy(&len, all + at + 1, 4);
        len = ntohl(len);
        rows += all[at] == 'D';
        if (all[at] == 'C' && len >= 9 && memcmp(all + at + 5, "SHOW", 4) == 0)
            *show_done = true;
        if (all[at] == 'C' && len >= 11 && memcmp(all + at + 5, "RELOAD", 6) == 0)
            *reload_done = true;
        at += 1 + len;
    }
    return rows;
}

/* Three workers, three clients; the first two log in to the console, the third says nothing
 * (a login list of worker 1's or 2's: the least loaded when it is accepted). The console login
 * that worker 1 accepted (the first went to worker 0) moves to worker 0 at its StartupMessage
 * (architecture.md 5.6): worker 0 then holds both consoles. The control thread's views (what
 * SHOW POOLS, SHOW LISTS, /health and /metrics read) count all three clients, the silent one
 * from what its worker published at its tick, and SHOW STATS and /metrics sum a transaction
 * counted on each worker (record_query: db/u only on workers 1 and 2); then the moved console
 * sends SHOW CLIENTS (three rows, gathered from every worker), RELOAD (answered once every
 * worker applied it) and KILL_CLIENT for the silent client, which its worker closes on its own
 * thread (the id's top byte names it). */
static void three_workers_console_moves_to_worker_0_and_views_sum(void)
{
    char path[] = "/tmp/sluice-test-workers-XXXXXX";
    struct config *cfg = config_with_keys(path, THREE, "auth_type = trust\nadmin_users = admin\n");
    if (!cfg)
        return;
    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct console_run r;
    static const struct sluice_service *const services[] = {&admin_service, NULL};
    CHECK_INT(sluice_start(&r.proc, &loop, cfg, services), 0);
    CHECK_INT(r.proc.nworkers, THREE);
    int port = listener_port(&r.proc), fds[THREE];
    for (int i = 0; i < THREE; i++) {
        fds[i] = connect_to(port);
        if (i < 2)
            send_console_startup(fds[i]);
    }
    r.moved_console = fds[1];
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, on_console_tick, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    sockio_release_spares();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(r.settled);
    CHECK_INT(r.console_on_0_live, 2); /* both consoles in worker 0's own lists */
    CHECK_INT(r.console_clients, 2);
    CHECK_INT(r.total_clients, THREE);
    CHECK_INT(r.login_clients, 1);
    CHECK_INT(r.pool_rows, 2); /* one pgbouncer/admin row (worker 0's), one db/u (elsewhere) */
    CHECK(r.metrics_count_all);
    /* SHOW STATS sums every worker's pools: db/u's on workers 1 and 2, the console's on 0 */
    CHECK_INT((int)r.stats_xacts, 2);
    CHECK_INT((int)r.console_xacts, 1);
    CHECK(r.metrics_elsewhere);
    CHECK(r.killed_elsewhere);
    CHECK(control_client_owner(&r.proc.workers[0], (uint64_t)5 << 56) == NULL);
    bool show_done, reload_done;
    /* the two consoles and the silent client, whose row its worker formatted: gathered by
     * message, which only a console on the control thread does */
    CHECK_INT(read_data_rows(fds[1], &show_done, &reload_done), THREE);
    CHECK(show_done);
    CHECK(reload_done);
    for (int i = 0; i < THREE; i++) {
        CHECK(read_to_close(fds[i]) >= 0);
        close(fds[i]);
    }
    for (int i = 0; i < THREE; i++)
        worker_thread_join(&r.proc.workers[i]);
    /* worker 1 accepted the moved console (its first id); nothing is left in flight */
    CHECK(r.proc.workers[1].next_id >= ((uint64_t)1 << 56) + 1);
    for (int i = 0; i < THREE; i++)
        CHECK_INT(atomic_load(&r.proc.workers[i].handed), 0);
    sluice_free(&r.proc);
    CHECK_INT(uv_loop_close(&loop), 0);
    unlink(path);
}

/* ---- the console's move over TLS ---- */

struct tls_console_run {
    struct process proc;
    uv_timer_t timer;
    int ticks;
    int fd; /* the TLS client's, connected on the main thread (CHECK is not thread-safe) */
    atomic_bool client_done;
    int show_rows;      /* the DataRows of SHOW CLIENTS, read over TLS */
    bool show_answered; /* its ReadyForQuery came */
};

/* Read messages over ssl until a ReadyForQuery; the DataRows seen, or -1. */
static int tls_read_until_ready(SSL *ssl)
{
    unsigned char head[5], body[4096];
    int rows = 0;
    for (;;) {
        if (SSL_read(ssl, head, 5) != 5)
            return -1;
        uint32_t len;
        memcpy(&len, head + 1, 4);
        len = ntohl(len) - 4;
        for (uint32_t got = 0; got < len;) {
            uint32_t want = len - got < sizeof(body) ? len - got : (uint32_t)sizeof(body);
            int n = SSL_read(ssl, body, (int)want);
            if (n <= 0)
                return -1;
            got += (uint32_t)n;
        }
        rows += head[0] == 'D';
        if (head[0] == 'Z')
            return rows;
    }
}

/* The client's thread: SSLRequest, the handshake, the console's StartupMessage and SHOW
 * CLIENTS, all over TLS on a socket worker 1 accepted and worker 0 then served. */
static void *tls_console_client(void *arg)
{
    struct tls_console_run *r = arg;
    int fd = r->fd;
    uint32_t ssl_request[2] = {htonl(8), htonl(80877103u)};
    char answer = 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    if (write(fd, ssl_request, 8) == 8 && read(fd, &answer, 1) == 1 && answer == 'S' && ssl &&
        SSL_set_fd(ssl, fd) == 1 && SSL_connect(ssl) == 1) {
        static const char params[] = "user\0admin\0database\0pgbouncer\0";
        unsigned char msg[64];
        uint32_t len = 8 + sizeof(params);
        uint32_t words[2] = {htonl(len), htonl(196608u)};
        memcpy(msg, words, 8);
        memcpy(msg + 8, params, sizeof(params));
        static const char show[] = "Q\0\0\0\021SHOW CLIENTS"; /* length 4 + 13 */
        if (SSL_write(ssl, msg, (int)len) == (int)len && tls_read_until_ready(ssl) == 0 &&
            SSL_write(ssl, show, (int)sizeof(show)) == (int)sizeof(show)) {
            r->show_rows = tls_read_until_ready(ssl);
            r->show_answered = r->show_rows >= 0;
        }
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    atomic_store(&r->client_done, true);
    return NULL;
}

static void on_tls_console_tick(uv_timer_t *t)
{
    struct tls_console_run *r = t->data;
    if (!atomic_load(&r->client_done) && ++r->ticks < 500)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    sluice_shutdown(&r->proc, PHASE_SHUTDOWN_NOW);
}

/* Two workers; a silent client takes worker 0, so the TLS console client is accepted by worker
 * 1, which answers its SSLRequest and runs the handshake; its StartupMessage (decrypted there)
 * moves the login with its SSL to worker 0, which logs it in and answers SHOW CLIENTS (two
 * rows: the silent client and itself) over the same TLS session. */
static void two_workers_move_a_tls_console_login(void)
{
    char path[] = "/tmp/sluice-test-workers-XXXXXX", cert[64], key[64], keys[512];
    int dir_fd = mkstemp(path);
    if (dir_fd < 0)
        return;
    close(dir_fd);
    snprintf(cert, sizeof(cert), "%s.crt", path);
    snprintf(key, sizeof(key), "%s.key", path);
    CHECK(make_certificate(cert, key));
    snprintf(keys, sizeof(keys),
             "auth_type = trust\nadmin_users = admin\nclient_tls_sslmode = allow\n"
             "client_tls_cert_file = %s\nclient_tls_key_file = %s\n",
             cert, key);
    char cfg_path[] = "/tmp/sluice-test-workers-XXXXXX";
    struct config *cfg = config_with_keys(cfg_path, 2, keys);
    if (!cfg)
        return;
    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct tls_console_run r;
    static const struct sluice_service *const services[] = {&admin_service, NULL};
    CHECK_INT(sluice_start(&r.proc, &loop, cfg, services), 0);
    int silent = connect_to(listener_port(&r.proc));
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, on_tls_console_tick, 10, 10);
    /* the client connects once worker 0 holds the silent client (a tie would go to 0) */
    while (atomic_load(&r.proc.workers[0].nclients) == 0)
        uv_run(&loop, UV_RUN_ONCE);
    r.fd = connect_to(listener_port(&r.proc));
    pthread_t client;
    CHECK_INT(pthread_create(&client, NULL, tls_console_client, &r), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(pthread_join(client, NULL), 0);
    sockio_release_spares();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(r.show_answered);
    CHECK_INT(r.show_rows, 2);
    CHECK(read_to_close(silent) >= 0);
    close(silent);
    for (int i = 0; i < 2; i++)
        worker_thread_join(&r.proc.workers[i]);
    CHECK(r.proc.workers[1].next_id == ((uint64_t)1 << 56) + 1); /* worker 1 accepted it */
    CHECK_INT(atomic_load(&r.proc.workers[0].handed), 0);
    sluice_free(&r.proc);
    CHECK_INT(uv_loop_close(&loop), 0);
    unlink(cfg_path);
    unlink(cert);
    unlink(key);
    unlink(path);
}

/* ---- PAUSE and RESUME across workers (control.h, architecture.md 5.7) ---- */

/* Workers 1..3 each hold one server in use in their pool of db (a fake, never connected); a
 * test async on each worker's loop stands for what its thread does next. */
enum pause_step { STEP_RELEASE, STEP_LOOK, STEP_PUBLISH, STEP_MARK, STEP_UNMARK, STEP_END };

struct pause_worker {
    uv_async_t async;
    struct worker *worker;
    struct pool *pool;
    struct server *busy;
    struct server *closing; /* STEP_MARK's: a server marked to close when free */
    atomic_int step;        /* what the next async does */
    atomic_bool serving;    /* STEP_LOOK saw its pool resumed */
};

static struct pause_worker pause_workers[FOUR];

static void on_pause_step(uv_async_t *a)
{
    struct pause_worker *pw = a->data;
    switch ((enum pause_step)atomic_load(&pw->step)) {
    case STEP_RELEASE: /* its client is done: the server goes (as PAUSE closes it) */
        list_remove(&pw->pool->active, &pw->busy->node);
        free(pw->busy);
        pw->busy = NULL;
        control_report_pause(pw->worker); /* its next maintenance tick's part */
        break;
    case STEP_LOOK:
        atomic_store(&pw->serving, !pw->pool->paused);
        break;
    case STEP_MARK: /* a server RECONNECT marked: it closes once its client is done */
        pw->closing = calloc(1, sizeof(*pw->closing));
        pw->closing->pool = pw->pool;
        pw->closing->close_when_free = true;
        list_append(&pw->pool->active, &pw->closing->node);
        view_publish(pw->worker); /* its next maintenance tick's part */
        break;
    case STEP_UNMARK: /* that client is done: the server goes */
        list_remove(&pw->pool->active, &pw->closing->node);
        free(pw->closing);
        pw->closing = NULL;
        view_publish(pw->worker);
        break;
    case STEP_PUBLISH:
        view_publish(pw->worker);
        break;
    case STEP_END:
        uv_close((uv_handle_t *)a, NULL);
        mailbox_close(&pw->worker->mailbox, NULL);
        break;
    }
}

static bool wait_for(bool (*done)(struct process *), struct process *proc)
{
    for (int i = 0; i < 500; i++) {
        if (done(proc))
            return true;
        usleep(10000);
    }
    return false;
}

static bool pause_complete(struct process *proc)
{
    return control_pause_done(&proc->workers[0], "db");
}

static bool released_1_and_2(struct process *proc)
{
    return atomic_load(&proc->workers[1].pause_idle) == proc->pause_seq &&
           atomic_load(&proc->workers[2].pause_idle) == proc->pause_seq;
}

static bool all_serving(struct process *proc)
{
    (void)proc;
    for (int i = 1; i < FOUR; i++)
        if (!atomic_load(&pause_workers[i].serving))
            return false;
    return true;
}

static bool close_done(struct process *proc)
{
    return control_close_done(&proc->workers[0], "db");
}

/* Every thread's worker published a frame after the last control message. */
static bool all_published(struct process *proc)
{
    for (int i = 1; i < FOUR; i++)
        if (tally_marks(proc->workers[i].tally).controls_applied != proc->controls_sent)
            return false;
    return true;
}

static void step_workers(enum pause_step step, int from, int to)
{
    for (int i = from; i <= to; i++) {
        atomic_store(&pause_workers[i].step, step);
        uv_async_send(&pause_workers[i].async);
    }
}

/* PAUSE db: the ledger's paused state of the pool key is set before any worker reads its
 * message; PAUSE completes only once every worker reported its servers of db gone (worker 3's
 * last); RESUME reaches every worker's pool. Workers 1..3 run in threads (under TSan too). */
static void pause_waits_for_every_worker_and_resume_serves_again(void)
{
    static struct process proc;
    static uv_loop_t loop;
    uv_loop_init(&loop);
    proc.loop = &loop;
    struct config_diag diag = {0};
    proc.cfg = config_load_string("[databases]\ndb = host=127.0.0.1 port=1\n", no_env, &diag);
    config_diag_free(&diag);
    CHECK(proc.cfg != NULL);
    if (!proc.cfg)
        return;
    proc.nworkers = FOUR;
    for (int i = 0; i < FOUR; i++) {
        struct worker *w = fixture_add_worker(&proc, (unsigned)i);
        struct pause_worker *pw = &pause_workers[i];
        CHECK_INT(worker_loop_init(w, &loop), 0);
        pw->worker = w;
        pw->pool = pool_get(w, NULL, "u", "db");
        CHECK(pw->pool != NULL);
        if (i == 0)
            continue;
        w->tally = tally_new();
        CHECK(w->tally != NULL);
        pw->busy = calloc(1, sizeof(*pw->busy));
        pw->busy->pool = pw->pool;
        list_append(&pw->pool->active, &pw->busy->node);
        uv_async_init(&w->own_loop, &pw->async, on_pause_step);
        pw->async.data = pw;
    }
    for (int i = 1; i < FOUR; i++)
        CHECK_INT(worker_thread_start(&proc.workers[i]), 0);

    struct worker *control = &proc.workers[0];
    control_pause(control, "db");
    /* one key for every worker's pool of db/u: paused before any message is read */
    CHECK(pause_workers[1].pool->ledger_key == pause_workers[0].pool->ledger_key);
    CHECK_INT(ledger_key_get_state(pause_workers[0].pool->ledger_key), LEDGER_KEY_PAUSED);
    CHECK(!pause_complete(&proc));
    step_workers(STEP_RELEASE, 1, 2);
    CHECK(wait_for(released_1_and_2, &proc));
    CHECK(!pause_complete(&proc)); /* worker 3 still has its server in use */
    step_workers(STEP_RELEASE, 3, 3);
    CHECK(wait_for(pause_complete, &proc));

    control_resume(control, "db");
    CHECK_INT(ledger_key_get_state(pause_workers[0].pool->ledger_key), LEDGER_KEY_SERVING);
    CHECK(!pause_workers[0].pool->paused);
    step_workers(STEP_LOOK, 1, FOUR - 1); /* after the RESUME message: the mailbox keeps order */
    CHECK(wait_for(all_serving, &proc));

    /* WAIT_CLOSE after RECONNECT: not done while a worker's last frame predates the message,
     * nor while worker 3 has a server marked to close; done once it is gone */
    control_reconnect(control, "db");
    CHECK(!close_done(&proc)); /* no worker published since */
    step_workers(STEP_PUBLISH, 1, 2);
    step_workers(STEP_MARK, 3, 3);
    CHECK(wait_for(all_published, &proc));
    CHECK(!close_done(&proc));
    step_workers(STEP_UNMARK, 3, 3);
    CHECK(wait_for(close_done, &proc));

    step_workers(STEP_END, 1, FOUR - 1);
    for (int i = 1; i < FOUR; i++)
        worker_thread_join(&proc.workers[i]);
    mailbox_close(&control->mailbox, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < FOUR; i++) {
        struct list_node *n, *tmp;
        list_for_each(&proc.workers[i].pools, n, tmp)
        {
            list_remove(&proc.workers[i].pools, n);
            pool_free(container_of(n, struct pool, node));
        }
    }
    for (int i = 0; i < FOUR; i++)
        tally_free(proc.workers[i].tally);
    ledger_free(&proc.ledger);
    config_free(proc.cfg);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* ---- SET across workers: a new generation every worker swaps to ---- */

struct set_run {
    struct process proc;
    uv_timer_t timer;
    int ticks;
    uint64_t generation_before;
    bool set_done;     /* control_set returned and the control worker runs under it */
    bool refused_kept; /* a refused SET left the generation as it was */
    bool all_obey;     /* every worker applied it and its pool's published size is 7 */
    /* a SET once a shutdown now began: refused as a shutdown (57P01 at the console), not as a
     * bad value, whether or not the configuration reader is closed yet; nothing changed */
    bool refused_for_shutdown;
};

struct forced_size {
    int size; /* of pool forced/fu in a frame; 0: not there */
};

static void size_of_forced(const struct tally_pool *tp, void *ctx)
{
    if (strcmp(tp->db_name, "forced") == 0)
        ((struct forced_size *)ctx)->size = tp->v.size;
}

/* Every worker on a thread published its forced/fu pool with this size. */
static bool published_size(struct process *proc, int size)
{
    for (int i = 1; i < proc->nworkers; i++) {
        struct forced_size f = {0};
        tally_each_pool(proc->workers[i].tally, size_of_forced, &f);
        if (f.size != size)
            return false;
    }
    return true;
}

static void on_set_tick(uv_timer_t *t)
{
    struct set_run *r = t->data;
    struct process *proc = &r->proc;
    struct worker *control = sluice_control_worker(proc);
    if (!r->set_done) {
        if (!published_size(proc, 5) && ++r->ticks < 500)
            return; /* each worker has its pool of the forced user, under pool_size 5 */
        r->generation_before = proc->cfg->generation;
        char err[256];
        unsigned id = 0;
        CHECK_INT(control_set(control, "default_pool_size", "7", &id, err, sizeof(err)),
                  SLUICE_SET_APPLIED);
        r->set_done = proc->cfg->generation > r->generation_before &&
                      proc->cfg->default_pool_size == 7 && control->cfg == proc->cfg;
        const struct config *now = proc->cfg;
        r->refused_kept = control_set(control, "min_pool_size", "100", &id, err, sizeof(err)) ==
                              SLUICE_SET_REFUSED &&
                          proc->cfg == now && strstr(err, "min_pool_size") != NULL;
        r->ticks = 0;
        return;
    }
    /* each worker swaps to it on its own thread, between its callbacks, and its pool obeys */
    r->all_obey = control_reload_done(control) && published_size(proc, 7);
    for (int i = 0; r->all_obey && i < proc->nworkers; i++)
        r->all_obey = proc->workers[i].cfg == proc->cfg;
    if (!r->all_obey && ++r->ticks < 500)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    sluice_shutdown(proc, PHASE_SHUTDOWN_NOW);
    const struct config *now = proc->cfg;
    char err[256] = "";
    unsigned id = 0;
    r->refused_for_shutdown = control_set(control, "default_pool_size", "9", &id, err,
                                          sizeof(err)) == SLUICE_SET_SHUTTING_DOWN &&
                              proc->cfg == now && proc->cfg->default_pool_size == 7 &&
                              strstr(err, "shutting down") != NULL &&
                              strstr(err, "default_pool_size") != NULL;
}

/* The console's SET with three workers: never in place (the workers read their generation
 * while it runs); a copy with the key changed becomes the next generation, every worker swaps
 * to it and its pools take the new pool_size; a refused value changes nothing. Before, SET
 * wrote the live config under the workers' reads (ThreadSanitizer's report) and made no new
 * generation. */
static void set_makes_a_generation_every_worker_obeys(void)
{
    char path[] = "/tmp/sluice-test-workers-XXXXXX";
    struct config *cfg = config_with_keys(path, THREE,
                                          "default_pool_size = 5\n"
                                          "[databases]\nforced = host=127.0.0.1 port=1 user=fu\n");
    if (!cfg)
        return;
    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct set_run r;
    CHECK_INT(sluice_start(&r.proc, &loop, cfg, NULL), 0);
    CHECK_INT(r.proc.nworkers, THREE);
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, on_set_tick, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    sockio_release_spares();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(r.set_done);
    CHECK(r.refused_kept);
    CHECK(r.all_obey);
    CHECK(r.refused_for_shutdown);
    for (int i = 1; i < THREE; i++)
        worker_thread_join(&r.proc.workers[i]);
    sluice_free(&r.proc);
    CHECK_INT(uv_loop_close(&loop), 0);
    unlink(path);
}

int main(void)
{
    RUN(two_workers_take_clients_reload_and_shut_down);
    RUN(four_workers_spread_clients_and_shut_down_gracefully);
    RUN(three_workers_console_moves_to_worker_0_and_views_sum);
    RUN(two_workers_move_a_tls_console_login);
    RUN(pause_waits_for_every_worker_and_resume_serves_again);
    RUN(set_makes_a_generation_every_worker_obeys);
    return CHECK_DONE();
}
