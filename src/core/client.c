/* client: one client connection, its state machine and its handlers (see client.h).
 *
 *   STARTUP --startup packet--> AUTH --password ok--> LOGIN_WAIT --server--> ACTIVE
 *      |   (SSLRequest: 'N')      |                       |     \  parameters to try: SET
 *      |   (CancelRequest: gone)  |                       |    LOGIN_SYNC --accepted--> ACTIVE
 *      |                          |                       |        \--refused--> LOGIN_REFUSED
 *      |                          |                       |  (pool already knows the welcome
 *      |                          +--trust / known params-+---> IDLE <-- and the parameters)
 *      |                                                       |  ^               |
 *      |                                         a message --->|  | released      |
 *      |                                                       v  |               |
 *      |                                                  WAITING --server--> ACTIVE
 *      |                       Terminate, then EOF, queued: |                    ^
 *      |                                                    v                    |
 *      |                                              WAITING_LAST --server------+
 *      |                                    (the relay closes it at the Terminate)
 *      |                       ACTIVE --Terminate, answers due--> TERMINATING --answered--> CLOSED
 *      |                                                            | socket closed    ^
 *      |                                                            v                  |
 *      |                                                         HUNG_UP --answered----+
 *      |                                   (not answered within server_drain_timeout: closed)
 *      |                       ACTIVE --socket closed, no Terminate, statements running--> HUNG_UP
 *      +-- any state: FATAL error --> CLOSING (flush) --> CLOSED; EOF/error --> CLOSED
 *
 *   STARTUP --SSLRequest, TLS on: 'S'--> TLS_HANDSHAKE --SSL_accept done--> STARTUP (encrypted)
 *
 * Each state has its own list (login list, the pool's waiting FIFO, idle, active), so the
 * background timer and SHOW commands walk only the clients they are about. */
#include "client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "console.h"
#include "disabled_dbs.h"
#include "auth.h"
#include "budget.h"
#include "cancel.h"
#include "client_login.h"
#include "listener.h"
#include "log.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "sluice.h"
#include "sql_lex.h"
#include "tls.h"
#include "worker.h"

static const char *const state_names[] = {
    [CLIENT_STARTUP] = "startup", [CLIENT_AUTH] = "auth",       [CLIENT_LOGIN_WAIT] = "login_wait",
    [CLIENT_LOGIN_SYNC] = "login_sync", [CLIENT_LOGIN_REFUSED] = "login_refused",
    [CLIENT_TLS_HANDSHAKE] = "tls_handshake",
    [CLIENT_CANCEL_WAIT] = "cancel_wait",
    [CLIENT_IDLE] = "idle",       [CLIENT_WAITING] = "waiting", [CLIENT_ACTIVE] = "active",
    [CLIENT_WAITING_LAST] = "waiting_last", [CLIENT_TERMINATING] = "terminating",
    [CLIENT_HUNG_UP] = "hung_up",
    [CLIENT_CLOSING] = "closing", [CLIENT_CLOSED] = "closed",
};

const char *client_state_name(enum client_state s)
{
    return state_names[s];
}

static struct list *list_for(struct client *c, enum client_state st)
{
    switch (st) {
    case CLIENT_STARTUP:
    case CLIENT_TLS_HANDSHAKE:
    case CLIENT_AUTH:
        return &c->worker->login_clients;
    case CLIENT_LOGIN_WAIT:
    case CLIENT_WAITING:
    case CLIENT_WAITING_LAST:
        return &c->pool->waiting;
    case CLIENT_IDLE:
        return &c->pool->idle_clients;
    case CLIENT_ACTIVE:
    case CLIENT_TERMINATING:
    case CLIENT_HUNG_UP:
    case CLIENT_LOGIN_SYNC:
    case CLIENT_LOGIN_REFUSED:
        return &c->pool->active_clients;
    case CLIENT_CANCEL_WAIT:
    case CLIENT_CLOSING:
        return &c->worker->closing_clients;
    case CLIENT_CLOSED:
        return &c->worker->dead_clients;
    }
    return NULL;
}

/* Is l one of its pool's client lists (it counts in the pool, pool.h)? */
static bool in_pool(const struct client *c, const struct list *l)
{
    return c->pool &&
           (l == &c->pool->waiting || l == &c->pool->idle_clients || l == &c->pool->active_clients);
}

bool client_transition_ok(enum client_state from, enum client_state to)
{
    if (to == CLIENT_CLOSED)
        return from != CLIENT_CLOSED;
    if (to == CLIENT_CLOSING)
        return from != CLIENT_CLOSED && from != CLIENT_CLOSING;
    switch (from) {
    case CLIENT_STARTUP:
        return to == CLIENT_AUTH || to == CLIENT_TLS_HANDSHAKE || to == CLIENT_CANCEL_WAIT;
    case CLIENT_TLS_HANDSHAKE:
        return to == CLIENT_STARTUP;
    case CLIENT_AUTH:
        return to == CLIENT_LOGIN_WAIT || to == CLIENT_IDLE;
    case CLIENT_LOGIN_WAIT:
        /* -> IDLE: another login's server told the pool its welcome first; -> LOGIN_SYNC: its
         * startup parameters are being tried on the server it was given */
        return to == CLIENT_ACTIVE || to == CLIENT_IDLE || to == CLIENT_LOGIN_SYNC;
    case CLIENT_LOGIN_SYNC:
        return to == CLIENT_ACTIVE || to == CLIENT_LOGIN_REFUSED;
    case CLIENT_IDLE:
        return to == CLIENT_WAITING;
    case CLIENT_WAITING:
        /* -> IDLE: query_wait_timeout answered with an ERROR, the session goes on */
        return to == CLIENT_ACTIVE || to == CLIENT_IDLE || to == CLIENT_WAITING_LAST;
    case CLIENT_WAITING_LAST:
        return to == CLIENT_ACTIVE;
    case CLIENT_ACTIVE:
        /* -> HUNG_UP: its socket closed without a Terminate while its statements ran */
        return to == CLIENT_IDLE || to == CLIENT_TERMINATING || to == CLIENT_HUNG_UP;
    case CLIENT_TERMINATING:
        return to == CLIENT_HUNG_UP;
    default:
        return false;
    }
}

/* An idle client keeps no output buffer: with thousands of idle clients the welcome's few
 * hundred bytes each would add up. The rare message sluice writes to a client allocates it
 * again. */
static void release_idle_output(struct client *c)
{
    if (c->state == CLIENT_IDLE && c->out.data && c->out_pos >= c->out.len) {
        codec_out_free(&c->out);
        c->out_pos = 0;
    }
}

static void take_login_place(struct client *c)
{
    atomic_fetch_add_explicit(&c->worker->proc->logins, 1, memory_order_relaxed);
    c->login_place = LOGIN_PLACE_HELD;
}

static void give_login_place(struct client *c)
{
    if (c->login_place == LOGIN_PLACE_HELD)
        atomic_fetch_sub_explicit(&c->worker->proc->logins, 1, memory_order_relaxed);
    c->login_place = LOGIN_PLACE_NONE;
}

void client_set_state(struct client *c, enum client_state next)
{
    if (!client_transition_ok(c->state, next)) {
        log_client(LOG_ERROR, c, "BUG: client state %s -> %s", client_state_name(c->state),
                   client_state_name(next));
        abort();
    }
    struct list *from = list_for(c, c->state), *to = list_for(c, next);
    if (from != to) { /* the same list (WAITING -> WAITING_LAST): keep the FIFO place */
        list_remove(from, &c->node);
        list_append(to, &c->node);
        if (from == &c->worker->login_clients)
            give_login_place(c);
        else if (c->pool && from == &c->pool->waiting)
            pool_waiter_left(c->pool, c);
        if (c->startup_scope == STARTUP_SCOPE_EVERY_MODE && in_pool(c, from) != in_pool(c, to))
            c->pool->every_mode_startup_clients += in_pool(c, to) ? 1 : -1;
    }
    if (next == CLIENT_CLOSING || next == CLIENT_CLOSED)
        client_login_give_slot(c); /* leaving: no longer a logged-in client for the caps */
    c->state = next;
    c->state_since_ms = sluice_now(c->worker);
    if (next == CLIENT_WAITING)
        c->wait_notice = WAIT_NOT_TOLD; /* a new wait: query_wait_notify may tell it once more */
    release_idle_output(c);
}

/* Does c, whose socket failed, still read what the client sent before: it is in a state that
 * reads its socket and has room to (a full buffer waits on the server: reading could only spin,
 * so such a client is closed at once, as before). */
static bool reads_what_came_before_a_reset(const struct client *c)
{
    switch (c->state) {
    case CLIENT_IDLE:
    case CLIENT_WAITING:
    case CLIENT_ACTIVE:
        return !c->in.data || buf_free_tail(&c->in) > 0 || c->in.rpos > 0;
    default:
        return false;
    }
}

static void on_client_io(struct sockio *io, int status, int events);

/* Logins in progress have their own cap (max_client_logins): a stranger can open connections
 * and never finish logging in, at no cost to himself. Past the cap, the oldest login in progress
 * that keeps sluice waiting gives its place up: first among those that have not sent a whole
 * startup packet, then among the rest, and never one younger than LOGIN_GRACE_MS, whose bytes may
 * still be on the way (a real client's SSLRequest round trip; a storm of real logins). A real
 * login finishes in milliseconds, so it is the stalled ones that reach the head of the list and a
 * flood cannot lock out new logins. A login that waits on sluice itself (its secret looked up:
 * client_login_waits_on_sluice) is stalled by no one but sluice and never gives way; its time to
 * answer starts once it is asked. Until logins are old enough to give way the cap may be passed;
 * the listener's accept limit still bounds the whole. */
#define LOGIN_GRACE_MS 1000

/* Not a whole startup packet yet: waiting for it, or still in the TLS handshake before it (a
 * stranger can stop half-way through either at no cost). */
static bool before_startup_packet(const struct client *c)
{
    return c->state == CLIENT_STARTUP || c->state == CLIENT_TLS_HANDSHAKE;
}

static bool gives_way(const struct client *c, enum client_state tier, uint64_t now)
{
    bool in_tier = tier == CLIENT_STARTUP ? before_startup_packet(c) : !before_startup_packet(c);
    return in_tier && now - c->state_since_ms >= LOGIN_GRACE_MS && !client_login_waits_on_sluice(c);
}

static void evict_login(struct client *c)
{
    char detail[96];
    snprintf(detail, sizeof(detail), "max_client_logins (%lld) reached",
             (long long)c->worker->cfg->max_client_logins);
    client_fail(c, FAIL_TOO_MANY_LOGINS, detail);
}

/* The process's logins in progress, every worker's: the cap is one, however many workers share
 * it. Each worker evicts its own oldest stalled logins while the process is above it. */
static bool logins_over_cap(const struct worker *worker)
{
    return atomic_load_explicit(&worker->proc->logins, memory_order_relaxed) >
           worker->cfg->max_client_logins;
}

/* c gives its place up if the process is still above the cap: a place given by one decrement
 * that only succeeds above it, so two workers evicting at once never evict one too many. */
static bool give_place_above_cap(struct client *c)
{
    atomic_int *logins = &c->worker->proc->logins;
    int n = atomic_load_explicit(logins, memory_order_relaxed);
    while (c->login_place == LOGIN_PLACE_HELD && n > c->worker->cfg->max_client_logins) {
        if (atomic_compare_exchange_weak_explicit(logins, &n, n - 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            c->login_place = LOGIN_PLACE_NONE;
            return true;
        }
    }
    return false;
}

static void make_room_for_a_login(struct worker *worker)
{
    uint64_t now = sluice_now(worker);
    const enum client_state tiers[] = {CLIENT_STARTUP, CLIENT_AUTH};
    for (size_t t = 0; t < sizeof(tiers) / sizeof(tiers[0]); t++) {
        struct list_node *n, *tmp;
        list_for_each(&worker->login_clients, n, tmp)
        {
            if (!logins_over_cap(worker))
                return;
            struct client *c = container_of(n, struct client, node);
            if (gives_way(c, tiers[t], now) && give_place_above_cap(c))
                evict_login(c);
        }
    }
}

void client_logins_give_way(struct worker *worker)
{
    if (logins_over_cap(worker))
        make_room_for_a_login(worker);
}

struct client *client_accept(struct worker *worker, int fd, const struct sockaddr_storage *addr)
{
    struct client *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return NULL;
    }
    c->worker = worker;
    c->id = ++worker->next_id;
    peer_addr_from(&c->addr, addr);
    c->connect_ms = sluice_now(worker);
    c->state_since_ms = c->connect_ms;
    c->state = CLIENT_STARTUP;
    codec_out_init(&c->out);
    params_init(&c->params);
    list_append(&worker->login_clients, &c->node);
    take_login_place(c);
    worker->nclients++;
    if (logins_over_cap(worker))
        make_room_for_a_login(worker);
    if (sockio_open(&c->io, worker->loop, fd, c, on_client_io) < 0) {
        c->io.fd = fd;
        client_close(c, "cannot watch the socket");
        return NULL;
    }
    sockio_want(&c->io, UV_READABLE);
    return c;
}

void client_read_first(struct client *c)
{
    on_client_io(&c->io, 0, UV_READABLE);
}

/* Take more bytes from the socket into c->in. >0 read, 0 nothing now, <0 closed or error (the
 * client is already closed then). A linked client's bytes are read by the relay. */
static int client_read(struct client *c)
{
    ssize_t n = sockio_read_into(&c->io, &c->in);
    if (n == SOCKIO_NO_BLOCK) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return -1;
    }
    if (n > 0)
        return (int)n;
    if (n == SOCKIO_AGAIN) {
        buf_detach_if_empty(&c->in);
        return 0;
    }
    if (n <= 0 && c->state == CLIENT_WAITING && client_sent_terminate(c)) {
        /* libpq's PQfinish after PQsendQuery while the pool is full: Query, Terminate, then the
         * socket closes (or is reset). Postgres would run the query, so the client stays queued;
         * its socket is no longer watched, and the relay closes it at the Terminate. */
        uint64_t queued_since = c->state_since_ms; /* the same wait goes on */
        client_set_state(c, CLIENT_WAITING_LAST);
        c->state_since_ms = queued_since;
        sockio_want(&c->io, 0);
        return 0;
    }
    client_close(c, n == 0 ? "client closed the connection" : strerror((int)-n));
    return -1;
}

/* ---- sending ---- */

void client_send(struct client *c)
{
    if (c->out_pos < c->out.len && c->state != CLIENT_CLOSED) {
        if (c->out.oom) {
            client_close(c, "out of memory building a message");
            return;
        }
        ssize_t n = sockio_write(&c->io, c->out.data + c->out_pos, c->out.len - c->out_pos);
        if (n < 0) {
            client_close(c, "write to client failed");
            return;
        }
        c->out_pos += (uint32_t)n;
        if (c->out_pos >= c->out.len) {
            codec_out_reset(&c->out);
            c->out_pos = 0;
            release_idle_output(c);
        }
    }
    if (c->state == CLIENT_CLOSING && c->out_pos >= c->out.len) {
        client_close(c, NULL);
        return;
    }
    if (c->server)
        return; /* the relay sets a linked pair's interest */
    relay_client_interest(c);
}

/* What is queued for the client goes out, then the connection closes (CLOSING). */
static void close_after_output(struct client *c)
{
    if (c->server)
        c->worker->client_events->vanished(c);
    client_set_state(c, CLIENT_CLOSING);
    buf_release(&c->in);
    client_send(c);
}

/* The log line of a failure sluice tells a client: its detail, or, when it has none (shutdown,
 * KILL_CLIENT, out of memory), the message the client got, so the line says why. */
static void log_failure(struct client *c, enum failure f, bool closing, const char *detail)
{
    char message[256];
    if (!detail || !detail[0]) {
        failure_message(f, "", message, sizeof(message));
        detail = message;
    }
    log_client(LOG_WARNING, c, "%s: %s%s", failure_name(f), closing ? "closing: " : "", detail);
}

void client_fail_with_state(struct client *c, enum failure f, const char *detail,
                            const char *sqlstate)
{
    if (c->state == CLIENT_CLOSING || c->state == CLIENT_CLOSED)
        return;
    if (c->state == CLIENT_TLS_HANDSHAKE) {
        /* no channel to say it on: half a TLS handshake cannot carry an ErrorResponse. As
         * Postgres at shutdown, whose backend exits while the SSL negotiation or the startup
         * packet is in progress (backend_startup.c process_startup_packet_die: _exit(1)). */
        client_close(c, failure_name(f));
        return;
    }
    const struct failure_info *fi = failure_info(f);
    if (c->worker->cfg->log_pooler_errors)
        log_failure(c, f, fi->severity == SEVERITY_FATAL, detail);
    error_build(&c->out, f, detail, sqlstate);
    if (fi->severity != SEVERITY_FATAL) {
        client_send(c);
        return;
    }
    close_after_output(c);
}

void client_close_after_output(struct client *c, const char *reason)
{
    if (c->state == CLIENT_CLOSING || c->state == CLIENT_CLOSED)
        return;
    if (c->worker->cfg->log_disconnections)
        log_client(LOG_INFO, c, "closing: %s", reason);
    close_after_output(c);
}

void client_fail_request_and_close(struct client *c, enum failure f, const char *detail)
{
    if (c->state == CLIENT_CLOSING || c->state == CLIENT_CLOSED)
        return;
    if (c->worker->cfg->log_pooler_errors)
        log_failure(c, f, true, detail);
    error_build(&c->out, f, detail, NULL);
    codec_put_ready(&c->out, 'I');
    close_after_output(c);
}

void client_fail(struct client *c, enum failure f, const char *detail)
{
    client_fail_with_state(c, f, detail, NULL);
}

void client_close(struct client *c, const char *reason)
{
    if (c->state == CLIENT_CLOSED)
        return;
    struct worker *worker = c->worker;
    if (reason && c->state >= CLIENT_LOGIN_WAIT && worker->cfg->log_disconnections)
        log_client(LOG_INFO, c, "closing: %s", reason);
    else if (reason)
        log_client(LOG_DEBUG, c, "closing: %s", reason);
    if (c->server)
        c->worker->client_events->vanished(c);
    if (c->cancel_pid)
        cancel_unregister(worker->cancel_map, c);
    if (c->state == CLIENT_CANCEL_WAIT)
        cancel_requester_gone(c);
    ledger_give_client(&worker->proc->ledger, c->budget);
    /* with its budget still known: a waiter leaving its queue hands its budget's place in the
     * order across workers to the next waiter (pool_lease_waiter_gone) */
    client_set_state(c, CLIENT_CLOSED); /* onto the dead list */
    c->budget = NULL;
    client_auth_end(c);
    sockio_detach(&c->io);
    tls_client_close(c->io.ssl); /* before the fd closes: it may send close_notify */
    c->io.ssl = NULL;
    if (c->io.fd >= 0)
        close(c->io.fd);
    c->io.fd = -1;
    buf_release(&c->in);
    codec_out_free(&c->out);
    params_free(&c->params);
    free(c->login_notices);
    c->login_notices = NULL;
    free(c->options_refusal);
    c->options_refusal = NULL;
    client_forget_settings_in_order(c);
    if (c->login_params) {
        params_free(c->login_params);
        free(c->login_params);
        c->login_params = NULL;
    }
    stmt_map_delete(c->stmts);
    c->stmts = NULL;
    login_reset_free_statements(c);
    worker->nclients--;
    if (worker->run == WORKER_ON_PROCESS_LOOP) /* else the control thread's tick resumes it */
        listener_maybe_resume(worker->proc);
}

int client_take_input(struct client *c, const uint8_t *bytes, size_t n)
{
    if (n == 0)
        return 0;
    if (!buf_attach(&c->in) || buf_make_room(&c->in) < n)
        return -1;
    memcpy(c->in.data + c->in.wpos, bytes, n);
    c->in.wpos += (uint32_t)n;
    return 0;
}

/* The client leaves this worker without its socket closing: its poll stops on this loop (the
 * fd leaves this thread's epoll at once), and fd and SSL go to worker 0 untouched. It leaves the
 * lists and counts as client_close does; it holds no ledger slot yet (still STARTUP). */
static void forget(struct client *c)
{
    c->io.fd = -1;
    c->io.ssl = NULL;
    client_close(c, NULL);
}

bool client_move_console_login(struct client *c, const uint8_t *packet, uint32_t len)
{
    struct worker *control = sluice_control_worker(c->worker->proc);
    if (c->worker == control)
        return false;
    uint32_t rest = c->in.data ? c->in.wpos - c->in.rpos : 0;
    uint8_t *bytes = malloc((size_t)len + rest);
    if (!bytes) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return true;
    }
    memcpy(bytes, packet, len);
    if (rest)
        memcpy(bytes + len, c->in.data + c->in.rpos, rest);
    struct sockaddr_storage addr = {0};
    memcpy(&addr, &c->addr, sizeof(c->addr));
    sockio_hand_off(&c->io); /* before worker 0 may poll the fd: never watched by both */
    int rc = worker_hand_console(control, c->io.fd, &addr, c->io.ssl, c->connect_ms, bytes,
                                 len + rest);
    free(bytes);
    if (rc < 0) {
        client_close(c, "cannot move the console login to worker 0");
        return true;
    }
    log_client(LOG_DEBUG, c, "console login moved to worker 0");
    forget(c);
    return true;
}

void client_resume_console_login(struct client *c, SSL *ssl, uint64_t connect_ms,
                                 const uint8_t *bytes, size_t nbytes)
{
    c->io.ssl = ssl;
    c->connect_ms = connect_ms;
    if (client_take_input(c, bytes, nbytes) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    client_login_on_startup_bytes(c);
    if (c->state != CLIENT_CLOSED && c->io.ssl && sockio_pending(&c->io) > 0)
        client_read_and_handle(c); /* decrypted bytes no poll event will announce */
}

void client_login_refused(struct client *c, const char *sqlstate, const char *message)
{
    if (c->state != CLIENT_LOGIN_SYNC)
        return; /* the first refusal is the one Postgres would have given */
    if (c->worker->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "login refused by the server: %s (%s)", message, sqlstate);
    error_build(&c->out, FAIL_SERVER_LOGIN, message, sqlstate);
    client_set_state(c, CLIENT_LOGIN_REFUSED);
}

void client_login_synced(struct client *c, struct server *s)
{
    if (c->state == CLIENT_LOGIN_REFUSED) {
        /* the server (linked) is clean again (each SET was its own transaction): it goes back,
         * and the client closes once the refusal kept in c->out is written */
        close_after_output(c);
        return;
    }
    /* The client is told what the server reports, and later syncs compare like with like. */
    if (params_take_reported_spelling(&c->params, &s->params) < 0 ||
        params_note_accepted(&c->pool->accepted, &c->params, 64) < 0 ||
        client_keep_login_params(c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    client_set_state(c, CLIENT_ACTIVE);
    client_send_welcome(c, pool_session_defaults(c->pool, s));
}

/* ---- messages by state ---- */

/* Messages Postgres reads and drops outside COPY FROM STDIN (postgres.c PostgresMain: "Accept
 * but ignore these messages, per protocol spec"): CopyData, CopyDone and CopyFail, the rest of a
 * COPY its server already ended (a client streams its data before it reads the error, and in
 * transaction mode the server went back at that error's ReadyForQuery), and a Flush with nothing
 * to flush. An idle client gets no answer to them from Postgres, so none from sluice either. A
 * Flush with a body is not one of them: Postgres reads it to its end (pq_getmsgend) and answers
 * ERROR 08P01 "invalid message format", then skips to the Sync, so it goes to a server. */
static bool ignored_when_idle(uint8_t type, uint32_t body_len)
{
    return type == 'd' || type == 'c' || type == 'f' || (type == 'H' && body_len == 0);
}

/* Drop such messages at the front of an idle client's buffer, as Postgres drops them, instead of
 * leasing a server for them (and failing the client with a pool error when none comes). A
 * CopyData longer than the buffer is dropped as it streams in (c->rx.remain). One whose length
 * Postgres would refuse is left for the relay, which says so (request_track_frame). */
static void drop_ignored_when_idle(struct client *c)
{
    struct buf *b = &c->in;
    for (;;) {
        if (c->rx.remain) {
            uint32_t take = c->rx.remain < buf_unframed(b) ? c->rx.remain : buf_unframed(b);
            b->scan += take;
            buf_consume(b, take);
            c->rx.remain -= take;
            c->rx.discard = c->rx.remain > 0;
            if (c->rx.remain)
                return;
            continue;
        }
        uint8_t type;
        uint32_t body_len;
        if (buf_unframed(b) < CODEC_HEADER_LEN ||
            codec_frame_header(b->data + b->scan, buf_unframed(b), UINT32_MAX, &type,
                               &body_len) != FRAME_OK ||
            !ignored_when_idle(type, body_len) || body_len + 4 > codec_frontend_max_len(type) ||
            body_len > (uint32_t)c->worker->cfg->max_packet_size)
            return;
        c->rx.remain = CODEC_HEADER_LEN + body_len;
        c->rx.discard = true;
    }
}

/* One whole message at p (avail bytes there): its type, body and body length. False when it is
 * not all here, or its length is one Postgres would refuse (a server says so then). */
static bool whole_message_at(const struct client *c, const uint8_t *p, uint32_t avail,
                             uint8_t *type, const uint8_t **body, uint32_t *body_len)
{
    if (codec_frame_header(p, avail, UINT32_MAX, type, body_len) != FRAME_OK ||
        *body_len + 4 > codec_frontend_max_len(*type) ||
        *body_len > (uint32_t)c->worker->cfg->max_packet_size ||
        avail - CODEC_HEADER_LEN < *body_len)
        return false;
    *body = p + CODEC_HEADER_LEN;
    return true;
}

/* ASCII text with no NUL: text Postgres takes as it is in any encoding, where a byte of 0x80 or
 * more may fail its encoding check (22021), which only a server gives in its own words. */
static bool plain_ascii(const uint8_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (s[i] == 0 || s[i] >= 0x80)
            return false;
    }
    return true;
}

/* Is the Query body (its text and NUL) one with no statement in it: blanks, ';' and whole
 * comments only? Postgres's parser gives no statement for it, and exec_simple_query answers
 * EmptyQueryResponse and ReadyForQuery (protocol 55.2.2: "If a completely empty (no contents
 * other than whitespace) query string is received, the response is EmptyQueryResponse").
 * Blanks are scan.l's space, less \v, which only newer servers take for one. An unended block
 * comment is a syntax error (42601): a server's to give. */
static bool empty_query(const uint8_t *body, uint32_t len)
{
    if (len == 0 || body[len - 1] != '\0' || !plain_ascii(body, len - 1))
        return false;
    const char *s = (const char *)body;
    size_t n = len - 1, i = 0;
    while (i < n) {
        if (strchr(" \t\n\r\f;", s[i])) {
            i++;
            continue;
        }
        bool ended = true;
        size_t past =
            i + 1 < n && ((s[i] == '-' && s[i + 1] == '-') || (s[i] == '/' && s[i + 1] == '*'))
                ? sql_skip_lexeme(s, i, n, SQL_READ_STANDARD, &ended, NULL)
                : i;
        if (past == i || !ended)
            return false;
        i = past;
    }
    return true;
}

/* Does Close body (len bytes) name something the idle client holds nothing under, so that
 * Postgres closes nothing and answers CloseComplete (a Close of a name that does not exist is
 * not an error: postgres.c exec_close_message)? In transaction and statement mode an idle
 * client keeps no WITH HOLD cursor and no SQL PREPARE past its transaction (docs/pool-modes.md;
 * session_state_policy = pin keeps its server, and it is never idle): a portal, none at all; a
 * statement, none but those sluice keeps for it (c->stmts, its keys as Postgres keys names).
 * The unnamed statement is not one of those: a client's Parse of it stays on the backend, which
 * the client gets again while no other client took it (a later Bind of it runs there), so its
 * Close goes to a server; answered here, that Bind ran a statement Postgres had closed. */
static bool close_of_nothing(const struct client *c, const uint8_t *body, uint32_t len)
{
    if (len < 2 || (body[0] != 'S' && body[0] != 'P') || body[len - 1] != '\0' ||
        !plain_ascii(body + 1, len - 2) || (body[0] == 'S' && len == 2))
        return false;
    char key[STMT_KEY_MAX + 1];
    return body[0] == 'P' ||
           (stmt_name_key(body + 1, len - 1, key) && !stmt_map_get(c->stmts, key));
}

/* A request at the front of an idle client's buffer that Postgres answers from nothing a
 * server holds: its answer, appended to out (NULL: only asked whether there is one), and its
 * length; 0 when there is none there (or not whole yet). A bare Sync (one with a body goes to a
 * server, which answers 08P01 as Postgres does): ReadyForQuery. In transaction and statement mode
 * also an empty Query: EmptyQueryResponse and ReadyForQuery (not under disable_pqexec, which
 * refuses any Query); and Closes of names the client holds nothing under, then a Sync: a
 * CloseComplete each and ReadyForQuery (a Close not followed by its Sync yet goes to a server: what
 * comes next may need one). */
static uint32_t answer_at_front(const struct client *c, struct msg_out *out)
{
    const struct buf *b = &c->in;
    const uint8_t *p = b->data + b->scan, *body;
    uint32_t avail = (uint32_t)buf_unframed(b), at = 0, body_len, closes = 0;
    uint8_t type;
    bool releases = pool_mode_ops(c->mode, false)->release_at_idle;
    for (;;) {
        if (!whole_message_at(c, p + at, avail - at, &type, &body, &body_len))
            return 0;
        at += CODEC_HEADER_LEN + body_len;
        if (type == 'S' && body_len == 0)
            break;
        if (!releases)
            return 0;
        if (type == 'Q' && closes == 0 && !c->worker->cfg->disable_pqexec &&
            empty_query(body, body_len)) {
            if (!out)
                return at;
            codec_begin(out, 'I'); /* EmptyQueryResponse */
            codec_end(out);
            codec_put_ready(out, 'I');
            return at;
        }
        if (type != 'C' || !close_of_nothing(c, body, body_len))
            return 0;
        closes++;
    }
    if (!out)
        return at;
    for (uint32_t i = 0; i < closes; i++) {
        codec_begin(out, '3'); /* CloseComplete */
        codec_end(out);
    }
    codec_put_ready(out, 'I');
    return at;
}

/* What answer_without_server did. */
enum local_answers {
    LOCAL_ANSWERS_DONE,        /* none left at the front of the buffer */
    LOCAL_ANSWERS_OUTPUT_FULL, /* some left: the client reads its answers first */
    LOCAL_ANSWERS_CLIENT_GONE, /* a write failed */
};

/* The requests at the front of an idle client's buffer (nothing of its unanswered, no server
 * held: no transaction, no batch) that answer_at_front knows the answer to are answered at
 * once, as Postgres answers them, instead of leasing a server for them: with the pool busy they
 * waited, and then failed with query_wait_timeout's ERROR, for messages whose answer needs no
 * server. Like any request each starts the client's idle time again. While a block of answers
 * waits for the client to read them, the rest wait in c->in (full, it is not read:
 * relay_client_interest), as Postgres stops reading while its answers do not go out: a client
 * that sends Syncs and never reads must not grow c->out without bound (one request's answers
 * are at most twice as long as the request, which c->in holds whole). The write callback goes on
 * with them (on_client_io). */
static enum local_answers answer_without_server(struct client *c)
{
    struct buf *b = &c->in;
    for (;;) {
        bool answered = false;
        enum local_answers r = LOCAL_ANSWERS_DONE;
        for (;;) {
            drop_ignored_when_idle(c);
            if (c->rx.remain || buf_unframed(b) < CODEC_HEADER_LEN)
                break;
            bool full = c->out.len - c->out_pos >= buf_block_size();
            uint32_t n = answer_at_front(c, full ? NULL : &c->out);
            if (n == 0)
                break;
            if (full) {
                r = LOCAL_ANSWERS_OUTPUT_FULL;
                break;
            }
            b->scan += n;
            buf_consume(b, n);
            answered = true;
        }
        if (answered) {
            c->state_since_ms = sluice_now(c->worker);
            client_send(c);
        }
        if (c->state != CLIENT_IDLE)
            return LOCAL_ANSWERS_CLIENT_GONE;
        /* A block the socket took whole leaves no write to come back for the requests still in
         * c->in, and no read either once the client has sent them all: answer on now. */
        if (r != LOCAL_ANSWERS_OUTPUT_FULL || c->out_pos < c->out.len)
            return r;
    }
}

void client_on_data(struct client *c)
{
    switch (c->state) {
    case CLIENT_STARTUP:
        client_login_on_startup_bytes(c);
        break;
    case CLIENT_AUTH:
        client_login_on_auth_bytes(c);
        break;
    case CLIENT_IDLE: {
        enum local_answers local = c->admin ? LOCAL_ANSWERS_DONE : answer_without_server(c);
        if (local == LOCAL_ANSWERS_CLIENT_GONE)
            return;
        if (local == LOCAL_ANSWERS_OUTPUT_FULL || buf_unframed(&c->in) == 0)
            break;
        uint8_t type = c->in.data[c->in.scan];
        /* Postgres refuses an unknown type on its first byte, before any length (SocketBackend):
         * a client that sent one byte and waits is answered, not left waiting. */
        if (!c->admin && !codec_frontend_type_known(type)) {
            char detail[16];
            snprintf(detail, sizeof(detail), "%u", (unsigned)type);
            client_fail(c, FAIL_UNKNOWN_MESSAGE_TYPE, detail);
            return;
        }
        if (buf_unframed(&c->in) < CODEC_HEADER_LEN)
            break;
        if (type == 'X') {
            client_close(c, NULL);
            return;
        }
        if (type == 'Q' && !c->admin && c->worker->cfg->disable_pqexec) {
            client_fail(c, FAIL_SIMPLE_QUERY_DISABLED, "");
            return;
        }
        if (c->admin) {
            console_on_data(c);
            return;
        }
        if (!sluice_serving(c->worker)) {
            client_fail(c, FAIL_SHUTDOWN, ""); /* a new request during shutdown */
            return;
        }
        client_set_state(c, CLIENT_WAITING);
        pool_lease(c->pool, c);
        return;
    }
    default:
        break;
    }
    /* (a TLS handshake sets its own interest: what OpenSSL asked for) */
    if (c->state != CLIENT_CLOSED && c->state != CLIENT_ACTIVE &&
        c->state != CLIENT_TLS_HANDSHAKE)
        relay_client_interest(c);
}

/* Read and handle what a client outside the relay sent. With TLS one socket event can leave
 * decrypted bytes inside OpenSSL (SSL_pending) that no later event announces (the poll is
 * level-triggered on the socket, not on OpenSSL's buffer): read on while there are some and the
 * client is still in a state that reads here. */
void client_read_and_handle(struct client *c)
{
    for (;;) {
        int n = client_read(c);
        if (n < 0)
            return;
        client_on_data(c);
        /* A client that said all it had (a startup packet, a password) holds no read buffer
         * while it waits: an idle client must cost a few hundred bytes, not a 16 kB block. */
        buf_detach_if_empty(&c->in);
        if (n == 0 || !c->io.ssl || sockio_pending(&c->io) <= 0)
            return;
        if (c->state != CLIENT_STARTUP && c->state != CLIENT_AUTH && c->state != CLIENT_IDLE)
            return;
    }
}

/* A client that sent Terminate hung up (closed its socket, or only its sending side, as clients
 * do right after a Terminate) or its socket failed, with answers still due. Whether it still
 * reads them cannot be known without writing, and a query that sends nothing until it ends
 * (pg_sleep, a lock wait) writes nothing: HUNG_UP bounds the wait (client_check_timeouts). */
static void terminating_client_hung_up(struct client *c)
{
    if (c->state == CLIENT_TERMINATING) {
        client_set_state(c, CLIENT_HUNG_UP);
        log_client(LOG_DEBUG, c, "hung up after its Terminate, answers still due");
    }
    /* Not watched for the hang-up any more (it would be reported on every turn of the loop); a
     * failed poll libuv has stopped already. The relay re-arms what the answers need, and a
     * write that fails is the client gone (RELAY_CLIENT_LOST). */
    sockio_want(&c->io, 0);
    c->worker->client_events->writable(c);
}

static void on_client_io(struct sockio *io, int status, int events)
{
    struct client *c = io->owner;
    if (status < 0) {
        if (client_terminating(c)) {
            terminating_client_hung_up(c);
            return;
        }
        if (!reads_what_came_before_a_reset(c)) {
            client_close(c, sockio_poll_error(io, status));
            return;
        }
        /* The socket failed (the client reset it: SO_LINGER 0, or it closed with answers
         * unread), but the kernel still gives the bytes that came before the reset, and Postgres
         * reads them: a Query and Terminate sent just before are run. They are read as on any
         * event; the read that reaches the reset ends the client (client_read, the relay). */
        events = UV_READABLE | UV_DISCONNECT;
    }
    if (c->state == CLIENT_TLS_HANDSHAKE) {
        client_login_tls_step(c);
        return;
    }
    if (events & UV_WRITABLE) {
        if (c->server)
            c->worker->client_events->writable(c);
        else
            client_send(c); /* its own output: an error, a welcome, a NOTICE */
        /* requests left while the answers before them waited (answer_without_server) */
        if (c->state == CLIENT_IDLE && c->out_pos >= c->out.len &&
            buf_unframed(&c->in) >= CODEC_HEADER_LEN)
            client_on_data(c);
        if (c->state == CLIENT_CLOSED)
            return;
    }
    if (!(events & (UV_READABLE | UV_DISCONNECT)))
        return;
    switch (c->state) {
    case CLIENT_ACTIVE:
    case CLIENT_LOGIN_SYNC:
    case CLIENT_LOGIN_REFUSED:
        c->worker->client_events->readable(c);
        return;
    case CLIENT_TERMINATING: /* not read after a Terminate, as by Postgres: watched for its
                                hang-up only (relay.c set_pair_interest) */
        if (events & UV_DISCONNECT)
            terminating_client_hung_up(c);
        return;
    case CLIENT_CANCEL_WAIT: /* not read: Postgres reads nothing after a CancelRequest */
    case CLIENT_HUNG_UP:
    case CLIENT_CLOSING:
    case CLIENT_CLOSED:
        return;
    default:
        client_read_and_handle(c);
        return;
    }
}

/* Step over the whole message at *pos of a queued client's buffer (nothing of it is framed yet).
 * False when no whole message is there. */
static bool next_queued_message(const struct buf *b, uint32_t *pos, uint8_t *type)
{
    uint32_t body_len;
    if (!b->data || codec_frame_header(b->data + *pos, b->wpos - *pos, UINT32_MAX, type,
                                       &body_len) != FRAME_OK)
        return false;
    if (b->wpos - *pos - CODEC_HEADER_LEN < body_len)
        return false;
    *pos += CODEC_HEADER_LEN + body_len;
    return true;
}

bool client_sent_terminate(const struct client *c)
{
    uint32_t pos = c->in.scan;
    uint8_t type;
    while (next_queued_message(&c->in, &pos, &type))
        if (type == 'X')
            return true;
    return false;
}

/* Drop the first request of a queued client (it ends with a Query, Sync or FunctionCall) and
 * answer it with f and ReadyForQuery, as the server would have; the session goes on. False,
 * changing nothing, when that request is not whole yet. */
static bool answer_queued_request(struct client *c, enum failure f, const char *detail)
{
    struct buf *b = &c->in;
    uint32_t pos = b->scan;
    uint8_t type;
    bool complete = false;
    while (!complete && next_queued_message(b, &pos, &type))
        complete = type == 'Q' || type == 'S' || type == 'F';
    if (!complete)
        return false;
    uint32_t n = pos - b->scan;
    b->scan += n;
    buf_consume(b, n);
    if (c->worker->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "%s: %s", failure_name(f), detail);
    error_build(&c->out, f, detail, NULL);
    codec_put_ready(&c->out, 'I');
    client_set_state(c, CLIENT_IDLE);
    client_send(c);
    if (c->state == CLIENT_IDLE && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
        client_on_data(c);
    return true;
}

void client_wait_timed_out(struct client *c, enum failure ends_request,
                           enum failure ends_session, const char *message)
{
    if (c->state != CLIENT_WAITING || !answer_queued_request(c, ends_request, message))
        client_fail(c, ends_session, message);
}

void client_cancel_queued(struct client *c)
{
    /* A request not yet whole is being read, and Postgres ignores a cancel then (postgres.c:
     * DoingCommandRead). */
    if (!answer_queued_request(c, FAIL_QUERY_CANCELED, ""))
        log_client(LOG_DEBUG, c, "cancel request while its request is not whole yet: ignored");
}

/* idle_transaction_timeout: a client that holds a server which waits for it and sends nothing.
 * PgBouncer applies it to every client linked to a server; here the server must be waiting for
 * the client: idle in a transaction, or in the middle of a request (part of a message,
 * extended-protocol messages without their Sync, COPY data). A request the server is still
 * working on is query_timeout's. */
static void check_server_held_idle(struct client *c, struct server *s, uint64_t now,
                                   uint64_t limit)
{
    enum pair_wait w = relay_pair_wait(c, s);
    if (w == PAIR_NO_WAIT || now - s->last_bytes_ms < limit)
        return;
    char detail[96];
    if (w == PAIR_WAIT_TRANSACTION) {
        snprintf(detail, sizeof(detail), "%.1f s", (double)limit / 1000);
        client_fail(c, FAIL_IDLE_TRANSACTION_TIMEOUT, detail);
        return;
    }
    snprintf(detail, sizeof(detail), "%.1f s, %s", (double)limit / 1000,
             w == PAIR_WAIT_MESSAGE ? "in the middle of a message"
             : w == PAIR_WAIT_SYNC  ? "after extended-protocol messages without a Sync"
                                    : "during COPY FROM STDIN");
    client_fail(c, FAIL_CLIENT_STALLED, detail);
}

void client_check_timeouts(struct client *c, uint64_t now)
{
    const struct config *cfg = c->worker->cfg;
    char detail[64];
    switch (c->state) {
    case CLIENT_STARTUP:
    case CLIENT_TLS_HANDSHAKE:
    case CLIENT_AUTH:
        if (c->state != CLIENT_AUTH && cfg->client_startup_timeout > 0 &&
            now - c->connect_ms >= (uint64_t)cfg->client_startup_timeout) {
            snprintf(detail, sizeof(detail), "%.1f s (client_startup_timeout)",
                     (double)cfg->client_startup_timeout / 1000);
            client_fail(c, FAIL_LOGIN_TIMEOUT, detail);
            break;
        }
        if (cfg->client_login_timeout > 0 &&
            now - c->connect_ms >= (uint64_t)cfg->client_login_timeout) {
            snprintf(detail, sizeof(detail), "%.1f s", (double)cfg->client_login_timeout / 1000);
            client_fail(c, FAIL_LOGIN_TIMEOUT, detail);
        }
        break;
    case CLIENT_IDLE: {
        /* The pool's timeouts: [users] over [databases] over the main section. */
        int64_t idle_limit = c->pool->timeouts.client_idle_timeout;
        if (idle_limit > 0 && now - c->state_since_ms >= (uint64_t)idle_limit) {
            snprintf(detail, sizeof(detail), "%.1f s", (double)idle_limit / 1000);
            client_fail(c, FAIL_CLIENT_IDLE_TIMEOUT, detail);
            break;
        }
        /* The client's own idle_session_timeout (SET, or its login value): Postgres ends a
         * session idle that long outside a transaction. Its server went back to the pool
         * without it (pool.c give_back_idle_params), so sluice ends the session, as Postgres
         * would have: idle here is outside a transaction, its requests answered. */
        int64_t own_limit = c->admin ? 0 : params_idle_session_timeout_ms(&c->params);
        if (own_limit > 0 && now - c->state_since_ms >= (uint64_t)own_limit)
            client_fail(c, FAIL_IDLE_SESSION_TIMEOUT, ""); /* logged as idle_session_timeout */
        break;
    }
    case CLIENT_ACTIVE:
    case CLIENT_TERMINATING:
    case CLIENT_HUNG_UP: {
        struct server *s = c->server;
        const struct entry_timeouts *t = &c->pool->timeouts;
        /* Gone after its Terminate (or only deaf to its answers, which cannot be told apart):
         * its query had server_drain_timeout, as one left to finish after a failed write has
         * in SERVER_DRAINING; now it is a vanished client's, cancelled and drained (link_end).
         * Holding the server longer would keep the query's locks and transaction for as long
         * as it runs: the backend, whose socket to sluice stays open, never sees the client
         * leave, even with client_connection_check_interval. */
        if (c->state == CLIENT_HUNG_UP &&
            now - c->state_since_ms >= (uint64_t)cfg->server_drain_timeout) {
            log_client(LOG_WARNING, c,
                       "sent Terminate and hung up, its answers still due after "
                       "server_drain_timeout: closing it, its query cancelled");
            client_close(c, NULL);
            break;
        }
        /* (A restore of login values after the request holds its ReadyForQuery: the request
         * is not over for the client yet, login_reset.h.) */
        bool busy = s && (s->inflight > 0 || login_reset_client_waits(s));
        if (t->query_timeout > 0 && busy && !s->timeout_cancel_sent &&
            now - s->query_start_ms >= (uint64_t)t->query_timeout) {
            /* Cancel rather than disconnect: the client gets 57014 from Postgres and keeps its
             * session. */
            s->timeout_cancel_sent = true;
            if (cancel_server(c->worker, s) == 0)
                log_client(LOG_WARNING, c, "query running longer than query_timeout (%lld ms): "
                                           "cancelled",
                           (long long)t->query_timeout);
            break;
        }
        /* transaction_timeout: the whole transaction, busy or idle, from its first request (a
         * statement outside a transaction block is one); as PgBouncer's, and Postgres 17's. */
        if (t->transaction_timeout > 0 && s && (s->txn_status != 'I' || s->inflight > 0) &&
            now - s->xact_start_ms >= (uint64_t)t->transaction_timeout) {
            snprintf(detail, sizeof(detail), "%.1f s", (double)t->transaction_timeout / 1000);
            client_fail(c, FAIL_TRANSACTION_TIMEOUT, detail);
            break;
        }
        /* (A terminating client sends nothing more: it waits for answers, not the reverse.) */
        if (t->idle_transaction_timeout > 0 && s && c->state == CLIENT_ACTIVE)
            check_server_held_idle(c, s, now, (uint64_t)t->idle_transaction_timeout);
        break;
    }
    case CLIENT_CLOSING:
        /* A client that does not read its last error does not get to keep the socket. */
        if (now - c->state_since_ms >= 5000)
            client_close(c, "did not read its error message");
        break;
    default:
        break;
    }
}
