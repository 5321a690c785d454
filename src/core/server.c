/* server: one backend connection (see server.h).
 *
 * A new server is server_connect.c's until it may serve: it resolves, logs in (libpq, or
 * server_login.c for passthrough) and runs sluice's login queries. Then sluice speaks the
 * protocol itself on the login's socket (through its SSL object when TLS is on); a libpq PGconn
 * lives as long as the server, for PQgetCancel and the final PQfinish.
 *
 *   RESOLVING -> LOGIN | LOGIN_PASSTHROUGH -> [PROBING] -> [CONNECT_QUERY]   (server_connect.c)
 *        |                                                      |
 *        |            +-------------- ok: pool_server_ready ----+
 *        |            v
 *        |          IDLE <--> ACTIVE (linked to a client)
 *        |           ^           |  \
 *        |           |           |   \  the client left mid-query (link.c's decision): its
 *        |           |           |    v  query cancelled (or, after its Terminate, left to
 *        |           |           |   DRAINING  finish); its replies dropped
 *        |           |           v    |  the orphaned query and its cancel are over
 *        |           +---- RESETTING <+  sluice's own queries at release (pool_release): the
 *        |           |         |         rollback, reset, DISCARD ALL, the rest of a sync
 *        |           |         v  only a cancel still due
 *        |           +---- CANCEL_WAIT
 *        +--failed--> CLOSED <-- any state on error, timeout or shutdown
 *
 *   IDLE --past server_check_delay, a client waiting (pool.c's dispatch)--> CHECKING
 *     --its server_check_query answered--> freed (pool_server_ready); a failed check closes it
 *
 *   a server pool_server_ready would free --closed to make room under a cap--> LEAVING
 *     --socket closed--> CLOSED (Terminate sent; it counts against the caps until it is gone)
 *
 * The transition table and server_set_state are server_state.c's.
 */
#include "server.h"

#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "cancel.h"
#include "client.h"
#include "conn_id.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "pool_mode.h"
#include "resolver.h"
#include "server_login.h"
#include "sluice.h"
#include "worker.h"

#define SERVER_LEAVING_WAIT_MS 2000

static void close_now(struct server *s);

/* The backend of a LEAVING server has exited once its end of the socket closes: Postgres
 * releases a backend's slot (and its pg_stat_activity row) on the way out, before the process
 * ends and the kernel closes the socket. Only then may another login take the slot. */
static void left(struct server *s)
{
    struct pool *p = s->pool, *room_for = s->room_for;
    /* Closed for another worker's waiter: the give woke that worker, and a dispatch here would
     * take its slot for a waiter of this one (which then closes another server for it). */
    bool for_another_worker = s->room_key != NULL;
    close_now(s);
    if (!for_another_worker)
        pool_server_gone(p, room_for);
}

static void leaving_step(struct server *s, int status)
{
    /* The cancel of its query waits behind sluice's own statements (cancel.c): their replies
     * are framed, as for any server with no client, until the relay releases it (it is sent
     * if the query runs then). Anything amiss ends the wait as the close would. */
    if (s->deferred_cancels && status >= 0) {
        struct relay_outcome o;
        if (relay_server_readable(s, &o) == RELAY_SERVER_LOST) {
            left(s);
            return;
        }
        if (s->deferred_cancels)
            return;
    }
    char scratch[512];
    for (;;) {
        ssize_t n = status < 0 ? -1 : sockio_read(&s->io, scratch, sizeof(scratch));
        if (n == SOCKIO_AGAIN)
            return;
        if (n <= 0) {
            left(s);
            return;
        }
    }
}

void server_close_for(struct server *s, const char *reason, struct pool *room_for)
{
    static const char terminate[] = {'X', 0, 0, 0, 4}; /* protocol 55.7: Terminate */
    if (s->state == SERVER_CLOSED || s->state == SERVER_LEAVING)
        return;
    log_server(LOG_INFO, s, "closing: %s", reason);
    if (s->client)
        s->pool->worker->server_events->closing(s);
    /* Called on logged-in servers only (a fresh one is still CONNECTING as it is first handed
     * out); with output pending the Terminate could not be told apart, so that one just closes. */
    bool sent = s->out_pos >= s->out.len &&
                sockio_write(&s->io, terminate, sizeof(terminate)) == (ssize_t)sizeof(terminate);
    server_set_state(s, SERVER_LEAVING);
    s->room_for = room_for;
    if (room_for)
        room_for->rooms_awaited++;
    if (!sent) {
        left(s);
        return;
    }
    sockio_want(&s->io, UV_READABLE);
}

void server_on_io(struct sockio *io, int status, int events)
{
    struct server *s = io->owner;
    if (s->state == SERVER_LEAVING) {
        leaving_step(s, status);
        return;
    }
    s->pool->worker->server_events->io(s, status, events); /* logged in: the relay's */
}

/* The query of a server being drained will not be read by anyone: cancel it (once). */
static void cancel_drained_query(struct server *s)
{
    if (!server_backend_busy(s) || s->timeout_cancel_sent)
        return;
    s->timeout_cancel_sent = true;
    if (cancel_server(s->pool->worker, s) < 0)
        log_server(LOG_WARNING, s, "could not send a cancel for the query of a client that left");
}

void server_return_lease(struct server *s)
{
    struct budget *b = s->lease_budget;
    if (!b)
        return;
    struct worker *worker = s->pool->worker;
    ledger_give_lease(worker, b);
    s->lease_budget = NULL;
    /* Budgets span pools: a waiter elsewhere may have been held back by this one; and span
     * workers: one held on another worker is woken there (ledger.h). */
    if (budget_count(worker) > 1)
        worker->dispatch_needed = true;
    if (worker->proc->nworkers > 1) {
        uint64_t wake = ledger_take_lease_waiters(&worker->proc->ledger, (int)worker->index);
        for (int i = 0; wake; i++, wake >>= 1)
            if (wake & 1)
                worker_wake(worker, i);
    }
}

void server_abandon(struct server *s, const char *reason)
{
    if (s->state == SERVER_CLOSED || s->state == SERVER_LEAVING)
        return;
    if (!server_backend_busy(s)) {
        server_close(s, reason);
        return;
    }
    log_server(LOG_INFO, s, "closing once its backend has ended its query: %s", reason);
    cancel_drained_query(s);
    sockio_shut_write(&s->io);
    server_set_state(s, SERVER_LEAVING);
    s->room_for = NULL;
    sockio_want(&s->io, UV_READABLE);
}

void server_drain(struct server *s, enum drain_query how)
{
    server_set_state(s, SERVER_DRAINING);
    if (how == DRAIN_CANCEL_QUERY)
        cancel_drained_query(s);
    log_server(LOG_DEBUG, s, "%s: draining",
               how == DRAIN_CANCEL_QUERY ? "client left mid-query"
                                         : "client sent Terminate mid-query, letting it finish");
    server_kick(s);
}

void server_want_io(struct server *s)
{
    if (server_state_is_connecting(s->state) || s->state == SERVER_CLOSED)
        return;
    int ev = UV_READABLE;
    if (s->out_pos < s->out.len)
        ev |= UV_WRITABLE;
    sockio_want(&s->io, ev);
}

/* Sluice holds it between clients, for work of its own (see server_maybe_done_resetting). */
static bool between_clients(enum server_state st)
{
    return st == SERVER_CHECKING || st == SERVER_RESETTING || st == SERVER_CANCEL_WAIT ||
           st == SERVER_DRAINING;
}

void server_pumped(struct server *s, enum relay_result r, const struct relay_outcome *o)
{
    if (r == RELAY_SERVER_LOST) {
        server_close(s, o->why);
        return;
    }
    if (between_clients(s->state))
        server_maybe_done_resetting(s);
    else
        server_want_io(s);
}

void server_kick(struct server *s)
{
    struct relay_outcome o;
    enum relay_result r = relay_pump(s, &o);
    server_pumped(s, r, &o);
}

/* Replies still due on its socket, or bytes of its own still to write or to read. */
static bool stream_busy(const struct server *s)
{
    return s->swallow > 0 || s->inflight > 0 || s->out_pos < s->out.len || s->rx.remain > 0 ||
           !buf_is_empty(&s->in);
}

void server_maybe_done_resetting(struct server *s)
{
    if (!between_clients(s->state))
        return;
    /* A draining server is cleaned only once the cancel of its query has landed too: the
     * cleanup's ROLLBACK must not be what the cancel stops (server_drain_timeout bounds it). */
    if (stream_busy(s) || (s->state == SERVER_DRAINING && s->cancels_in_flight > 0)) {
        server_want_io(s);
        return;
    }
    if (s->state == SERVER_DRAINING) {
        /* The orphaned query is over: clean the server as at any release; its budget's lease,
         * kept while the query ran, goes back. */
        server_set_state(s, SERVER_RESETTING);
        server_return_lease(s);
        if (pool_queue_cleanup(s)) {
            server_kick(s);
            return;
        }
    }
    if (s->cancels_in_flight > 0) {
        if (s->state == SERVER_RESETTING)
            server_set_state(s, SERVER_CANCEL_WAIT);
        server_want_io(s); /* cancel_done calls back */
        return;
    }
    if (s->txn_status != 'I') {
        server_close(s, "still in a transaction after sluice's rollback");
        return;
    }
    pool_server_ready(s);
}

void server_close(struct server *s, const char *reason)
{
    if (s->state == SERVER_CLOSED)
        return;
    log_server(server_state_is_connecting(s->state) ? LOG_WARNING : LOG_INFO, s, "closing: %s",
               reason ? reason : "");
    close_now(s);
}

/* Its connection and what it holds (close_now; server_discard_moved). */
static void release_connection(struct server *s)
{
    sockio_detach(&s->io);
    resolver_cancel(s->resolving);
    s->resolving = NULL;
    if (s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    server_login_free(s); /* a passthrough login's socket and TLS session are sluice's own */
    buf_release(&s->in);
    codec_out_free(&s->out);
    params_free(&s->params);
    params_free(&s->startup);
    params_free(&s->login_reports);
    login_reset_clear(s); /* the names of a read back it was waiting for */
    stmt_map_free(&s->stmts);
    stmt_map_free(&s->sql_prepared);
    stmt_queue_free(&s->reqs);
    free(s->portal_drops);
    s->portal_drops = NULL;
    s->portal_drops_count = s->portal_drops_cap = 0;
}

static void close_now(struct server *s)
{
    struct worker *worker = s->pool->worker;
    struct ledger *l = &worker->proc->ledger;
    struct pool *room_for = s->state == SERVER_LEAVING ? s->room_for : NULL;
    if (room_for)
        room_for->rooms_awaited--;
    if (s->client)
        worker->server_events->closing(s);
    /* Cancels deferred behind its own statements are never sent now: the reaper frees s once
     * the sent ones are done. */
    cancel_forget_deferred(s);
    server_set_state(s, SERVER_CLOSED); /* onto the dead list */
    server_return_lease(s); /* one kept while its gone client's query ran (link.c) */
    worker->nservers--;
    /* its backend is gone: a worker whose waiters that slot can serve is woken (the one it
     * was closed for, when it was closed for another worker's) */
    struct ledger_key *key = s->pool->ledger_key;
    int holder = (int)worker->index;
    int wake;
    if (s->room_key)
        wake = ledger_give_server_for(l, key, holder, s->room_key, s->room_worker);
    else if (room_for)
        /* closed for a waiter of this worker (pool_room_owed_to_older,
         * pool_close_idle_unwanted): its slot is that waiter's, not the oldest entry's of
         * another worker, which would open a server of its own in it and leave this one to
         * close another server for it */
        wake = ledger_give_server_to_holder(l, key, holder);
    else
        wake = ledger_give_server(l, key, holder);
    worker_wake(worker, wake);
    s->room_key = NULL;
    release_connection(s);
}

void server_close_for_worker(struct server *s, const char *reason, struct ledger_key *room_key,
                             int room_worker)
{
    server_close_for(s, reason, NULL);
    if (s->state == SERVER_LEAVING) {
        s->room_key = room_key;
        s->room_worker = room_worker;
    } else {
        /* closed at once (no Terminate could be sent): the slot went as a plain give; the
         * claim's place is given back */
        ledger_room_unused(&s->pool->worker->proc->ledger, room_key, room_worker);
    }
}

void server_discard_moved(struct server *s, struct worker *worker, struct ledger_key *key)
{
    log_msg(LOG_INFO, "S-%s: closing: moved to worker %u as it stopped taking messages",
            CONN_ID_TEXT(s->id), worker->index);
    atomic_fetch_sub_explicit(&worker->nservers, 1, memory_order_relaxed);
    /* it left its sender's share for the transit share (handover.c's move) */
    (void)ledger_give_server(&worker->proc->ledger, key, LEDGER_IN_TRANSIT); /* nobody is woken */
    release_connection(s);
    free(s);
}

/* server_fast_close (PgBouncer's): a session-mode server marked to close does not wait for its
 * client to leave, only for its transaction to end: then both close, so the client knows its
 * session is gone. Transaction and statement mode release (and so close) at that point anyway. */
static bool fast_close_due(const struct server *s)
{
    const struct config *cfg = s->pool->worker->cfg;
    struct client *c = s->client;
    return cfg->server_fast_close && s->close_when_free && c && s->txn_status == 'I' &&
           s->swallow == 0 &&
           !pool_mode_ops(s->mode, cfg->server_reset_query_always)->release_at_idle &&
           relay_at_boundary(s, c) && buf_pending(&c->in) == 0;
}

void server_check_timeouts(struct server *s, uint64_t now)
{
    const struct config *cfg = s->pool->worker->cfg;
    switch (s->state) {
    case SERVER_RESOLVING:
    case SERVER_LOGIN:
    case SERVER_LOGIN_PASSTHROUGH:
    case SERVER_PROBING:
    case SERVER_CONNECT_QUERY:
        if (cfg->server_connect_timeout > 0 &&
            now - s->connect_start_ms >= (uint64_t)cfg->server_connect_timeout) {
            char msg[128];
            snprintf(msg, sizeof(msg),
                     "connect and login not done within %lld ms (server_connect_timeout)",
                     (long long)cfg->server_connect_timeout);
            struct pool *p = s->pool; /* as server_connect_failed: close, tell the pool */
            server_close(s, msg);
            pool_connect_failed(p, msg);
        }
        break;
    case SERVER_IDLE:
        if (s->pool->timeouts.server_lifetime > 0 &&
            now - s->connect_ms >= (uint64_t)s->pool->timeouts.server_lifetime) {
            server_close(s, "server_lifetime reached");
        } else if (cfg->server_idle_timeout > 0 &&
                   now - s->state_since_ms >= (uint64_t)cfg->server_idle_timeout &&
                   s->pool->ledger_key->servers > s->pool->min_size) {
            server_close(s, "idle for server_idle_timeout");
        }
        break;
    case SERVER_ACTIVE:
        if (fast_close_due(s))
            s->pool->worker->server_events->fast_close_due(s);
        break;
    case SERVER_LEAVING:
        /* A backend that does not close its socket soon is stuck or gone unseen: stop waiting. */
        if (now - s->state_since_ms >= SERVER_LEAVING_WAIT_MS) {
            log_server(LOG_WARNING, s, "the backend did not end within %d ms of Terminate",
                       SERVER_LEAVING_WAIT_MS);
            left(s);
        }
        break;
    case SERVER_DRAINING:
        if (now - s->state_since_ms < (uint64_t)cfg->server_drain_timeout)
            break;
        if (s->inflight > 0 && !s->timeout_cancel_sent) {
            /* The query of a client that sent Terminate had server_drain_timeout to finish:
             * now it is cancelled like a vanished client's, and gets as long again. Closing
             * without a cancel would leave the backend running, uncounted by the caps. */
            log_server(LOG_WARNING, s,
                       "query of a client that sent Terminate still running "
                       "after server_drain_timeout: cancelling it");
            cancel_drained_query(s);
            s->state_since_ms = now;
            break;
        }
        server_close(s, "not drained within server_drain_timeout after its client left");
        break;
    default:
        break;
    }
}
