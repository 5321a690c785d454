/* handover: idle servers between workers (see handover.h; docs/architecture.md 5.4).
 *
 * A server moves only when nothing of it is in flight on its worker's loop: IDLE (so no client,
 * no lease), no buffer attached, nothing left to write, no reply due (sluice's own or a
 * client's), no tracked request, no cancel in flight (its cancel_done would run on this loop),
 * and nothing TLS has decrypted and buffered (no poll event would announce it on the other
 * loop). Its uv_poll_t belongs to this loop: it is closed here (sockio_hand_off) and the
 * receiver opens its own. What moves: the fd, libpq's PGconn and SSL (used by one thread at a
 * time; the mailbox's lock orders the two threads' use), a passthrough login's own state,
 * params, stmts (statement definitions are counted atomically: prepared.c), its ledger slot
 * (no count changes). */
#include "handover.h"

#include <stdio.h>

#include "config.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"
#include "worker.h"

static bool movable(const struct server *s)
{
    return s->state == SERVER_IDLE && !s->client && !s->in.data && s->out_pos >= s->out.len &&
           s->cancels_in_flight == 0 && s->swallow == 0 && s->inflight == 0 && s->rx.remain == 0 &&
           s->reqs.count == 0 && !s->close_when_free && !s->resolving &&
           sockio_pending(&s->io) == 0;
}

/* n servers (1, or -1 to undo) leave from's nservers for to's, as arriving there: under the
 * ledger's lock, so to's audit, on its own thread, never sees one without the other. */
static void count_arriving(struct worker *from, struct worker *to, int n)
{
    ledger_lock(&from->proc->ledger);
    atomic_fetch_add_explicit(&to->nservers, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&to->arriving, n, memory_order_relaxed);
    atomic_fetch_sub_explicit(&from->nservers, n, memory_order_relaxed);
    ledger_unlock(&from->proc->ledger);
}

static void move(struct server *s, struct worker *to)
{
    struct pool *p = s->pool;
    struct worker *from = p->worker;
    struct ledger_key *key = p->ledger_key;
    log_server(LOG_DEBUG, s, "idle: moving to worker %u, whose client waits for a server",
               to->index);
    sockio_hand_off(&s->io); /* before the receiver polls the fd: never watched by both */
    uint64_t idle_since = s->state_since_ms;
    server_set_state(s, SERVER_MOVING);
    s->state_since_ms = idle_since; /* idle still: the receiver's server_check_delay counts it */
    /* counted by the receiver from now on, so a shutdown never sees it missing */
    count_arriving(from, to, 1);
    s->pool = NULL; /* the receiver's pool, there */
    s->controls_seen = ledger_controls_seen(&from->proc->ledger, key, (int)from->index);
    /* its slot leaves this worker's share before the receiver can count it in its own, so
     * each worker's audit stays exact while the server sits in the mailbox */
    ledger_move_share(&from->proc->ledger, key, (int)from->index, LEDGER_IN_TRANSIT);
    if (worker_post_server(to, s, key) == 0)
        return;
    ledger_move_share(&from->proc->ledger, key, LEDGER_IN_TRANSIT, (int)from->index);
    s->pool = p;
    count_arriving(from, to, -1);
    ledger_wait_arrived(&from->proc->ledger, key, (int)to->index);
    server_close(s, "could not be moved to the worker whose client waits");
}

/* What the ledger's claim says of s: moved, closed for the slot, or kept (false). */
static bool act_on(struct server *s, struct ledger_claim claim)
{
    struct worker *worker = s->pool->worker;
    if (claim.kind == LEDGER_CLAIM_MOVE) {
        move(s, &worker->proc->workers[claim.worker]);
        return true;
    }
    if (claim.kind == LEDGER_CLAIM_CLOSE) {
        char why[200];
        snprintf(why, sizeof(why),
                 "idle; closed to free a slot for pool %s/%s on worker %d, whose client waits",
                 claim.key->db->name, claim.key->user->name, claim.worker);
        server_close_for_worker(s, why, claim.key, claim.worker);
        return true;
    }
    return false;
}

/* Whether s may go to another worker at all: several workers, a waiter registered somewhere,
 * this one serving, s a database's server that can move now. */
static bool may_offer(const struct server *s)
{
    const struct worker *worker = s->pool->worker;
    return worker->proc->nworkers >= 2 && !s->pool->is_admin &&
           ledger_has_waiters(&worker->proc->ledger) && sluice_serving(worker) && movable(s);
}

bool handover_offer(struct server *s)
{
    struct pool *p = s->pool;
    struct worker *worker = p->worker;
    struct ledger *l = &worker->proc->ledger;
    if (!may_offer(s))
        return false;
    /* local first: session-mode waiters of its own pool that want other startup parameters
     * get room by closing it (pool_room.c's pool_close_idle_unwanted); not waiters it cannot
     * serve (held by their budget, or with a server coming): else another worker's waiter
     * that it fits waited for query_wait_timeout beside it */
    if (pool_matches_startup(p) && pool_has_waiter_without_room(p))
        return false;
    return act_on(s, ledger_claim_idle(l, p->ledger_key, (int)worker->index));
}

/* How much longer another worker's waiter must have waited than the local one before a
 * released server moves to it rather than serving the local one. Not 0: under a balanced
 * saturated load another worker's head is older about (N-1)/N of the time by a hair, and a move
 * on every release (a mailbox trip and a poll handle each) would cost the hot path its locality
 * for no order a client could tell apart; 5 ms is below what a client observes as "served
 * later" and above the loop-time skew between workers (uv_now is per loop, refreshed once per
 * iteration). Exact FIFO across workers within the slack is not promised (architecture 5.3). */
#define HANDOVER_FAIRNESS_SLACK_MS 5

bool handover_offer_older(struct server *s, uint64_t since_ms, uint64_t next_since_ms)
{
    struct pool *p = s->pool;
    struct worker *worker = p->worker;
    struct ledger *l = &worker->proc->ledger;
    /* Session mode too: otherwise a worker whose clients keep reconnecting keeps its servers
     * and another worker's clients wait for query_wait_timeout. When the older waiter there
     * wants other startup parameters, s is closed here for it (the ledger's claim says so). */
    if (!may_offer(s))
        return false;
    return act_on(s, ledger_claim_older(l, p->ledger_key, (int)worker->index, since_ms,
                                        HANDOVER_FAIRNESS_SLACK_MS, next_since_ms, s->startup_fp));
}

void handover_offer_pool(struct pool *p)
{
    /* the longest idle first: the warmest stay with this worker's own clients */
    while (!list_empty(&p->idle) &&
           handover_offer(container_of(list_last(&p->idle), struct server, node)))
        ;
}

void handover_scan(struct worker *worker)
{
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        if (!ledger_has_waiters(&worker->proc->ledger))
            return;
        handover_offer_pool(container_of(n, struct pool, node));
    }
}

/* This worker's pool of key, made when it has none (its clients left and it was freed, or the
 * need was another pool's that shares the key). NULL: none can be had. */
static struct pool *pool_of_key(struct worker *worker, struct ledger_key *key)
{
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (p->ledger_key == key && !p->is_admin)
            return p;
    }
    const struct db_entry *db = config_find_db(worker->cfg, key->db->name);
    return db ? pool_get(worker, db, key->user->name, key->db->name) : NULL;
}

/* The one judge of a server that arrived (in worker's pool of key now): NULL when it is still
 * one that pool would keep, or why not. What each worker does to its servers on its own thread
 * (a console command's close, a reload's retire) reached this one on neither side if it came
 * between the points the two workers had reached when it left and when it arrived. */
static const char *stale_here(const struct server *s, const struct worker *worker,
                              const struct ledger_key *key)
{
    /* A console command that closes servers of its database (PAUSE, RECONNECT, KILL of it, or
     * of every database) applied by one of the two and not yet by the other: the counts differ
     * (ledger_note_control). Another database's command, or a RESUME, counts for neither. */
    if (ledger_controls_seen(&worker->proc->ledger, key, (int)worker->index) != s->controls_seen)
        return "moved here while a console command (PAUSE, RECONNECT, KILL) of its database was "
               "applied by one worker and not yet the other";
    /* a reload that changed its connection settings, applied by one of them only: this
     * worker's retire (server_retire_changed) ran, or will, without it */
    uint64_t fp;
    if (server_conninfo_now(s->pool, &fp) && fp != s->conninfo_fp)
        return "moved here while a reload changed its connection settings";
    return NULL;
}

void handover_receive(struct worker *worker, struct server *s, struct ledger_key *key,
                      bool delivered)
{
    ledger_wait_arrived(&worker->proc->ledger, key, (int)worker->index);
    /* on this thread, as is this worker's audit: out of the mailbox, into a share below */
    atomic_fetch_sub_explicit(&worker->arriving, 1, memory_order_relaxed);
    struct pool *p = delivered ? pool_of_key(worker, key) : NULL;
    if (!p || p->ledger_key != key) {
        server_discard_moved(s, worker, key);
        return;
    }
    ledger_move_share(&worker->proc->ledger, key, LEDGER_IN_TRANSIT, (int)worker->index);
    s->pool = p;
    if (sockio_open(&s->io, worker->loop, s->io.fd, s, server_on_io) < 0) {
        server_close(s, "cannot watch its socket on the worker it moved to");
        return;
    }
    const char *stale = stale_here(s, worker, key);
    if (stale) {
        /* its slot is given back now, and this worker's waiter opens a fresh one */
        server_close(s, stale);
        return;
    }
    log_server(LOG_DEBUG, s, "moved here: idle on another worker");
    pool_take_moved(p, s);
}
