/* cancel: BackendKeyData handed to clients and CancelRequest routing (see cancel.h).
 *
 * The race this guards against: a cancel for client A's query must not land on the backend after
 * it has been given to client B. So the target server counts the cancel as in flight, and a
 * server with a cancel in flight goes to RESETTING instead of the idle list when released; it is
 * reused only after the cancel is done, by which time the postmaster has signalled the backend
 * and a backend that is idle ignores the signal (postgres.c: cancel while DoingCommandRead).
 *
 * The other half of that ordering is the client's: Postgres closes a CancelRequest's connection
 * only once it has signalled the backend, and cancel_send.c waits for that close (as libpq's
 * PQcancel does), so a client that then reads its 57014 and sends its next statement has no
 * cancel still on the way to it.
 * Postgres 15 signals twice (the backend's pid, then its process group: postmaster.c
 * signal_child), and on a loaded machine the second can come well after the first has ended the
 * query; closing the requester's connection before that close let that second signal cancel
 * the client's next statement. So the requester waits in CLIENT_CANCEL_WAIT until the job is
 * done. A cancel that never saw the close (server_connect_timeout passed after the request was
 * written) may still land: its server is closed at release instead of serving another client. */
#include "cancel.h"

#include <errno.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <uv.h>

#include "conn_id.h"
#include "list.h"
#include "cancel_send.h"
#include "console.h"
#include "client.h"
#include "log.h"
#include "pool.h"
#include "relay.h"
#include "server.h"
#include "server_login.h"
#include "sluice.h"
#include "worker.h"

struct cancel_map {
    unsigned owner; /* the worker whose clients these are: the pid's low bits */
    struct client **buckets;
    uint32_t nbuckets; /* power of two */
    uint32_t count;
};

struct cancel_map *cancel_map_new(unsigned owner)
{
    if (owner > CANCEL_OWNER_MAX)
        return NULL;
    struct cancel_map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->owner = owner;
    m->nbuckets = 1024;
    m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
    if (!m->buckets) {
        free(m);
        return NULL;
    }
    return m;
}

void cancel_map_free(struct cancel_map *m)
{
    if (!m)
        return;
    free(m->buckets);
    free(m);
}

static uint32_t bucket_of(const struct cancel_map *m, uint32_t pid)
{
    return (pid * 2654435761u) & (m->nbuckets - 1);
}

static struct client *find(const struct cancel_map *m, uint32_t pid)
{
    for (struct client *c = m->buckets[bucket_of(m, pid)]; c; c = c->cancel_next)
        if (c->cancel_pid == pid)
            return c;
    return NULL;
}

static void grow(struct cancel_map *m)
{
    uint32_t n = m->nbuckets * 2;
    struct client **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    struct client **old = m->buckets;
    uint32_t oldn = m->nbuckets;
    m->buckets = b;
    m->nbuckets = n;
    for (uint32_t i = 0; i < oldn; i++) {
        struct client *c = old[i];
        while (c) {
            struct client *next = c->cancel_next;
            uint32_t k = bucket_of(m, c->cancel_pid);
            c->cancel_next = b[k];
            b[k] = c;
            c = next;
        }
    }
    free(old);
}

/* Cancel keys come from the kernel's CSPRNG, fetched 512 bytes at a time: one getrandom call per
 * 64 logins instead of one per login (a connection storm makes thousands a second). The reserve
 * is used once and wiped as it goes, so a key is never reused or left readable after use. One
 * reserve per thread (each worker registers its own clients), so drawing takes no lock. */
static _Thread_local uint32_t random_reserve[128];
static _Thread_local unsigned random_left;

static int take_random(uint32_t out[2])
{
    if (random_left < 2) {
        if (getrandom(random_reserve, sizeof(random_reserve), 0) != sizeof(random_reserve))
            return -EIO;
        random_left = sizeof(random_reserve) / sizeof(random_reserve[0]);
    }
    for (int i = 0; i < 2; i++) {
        out[i] = random_reserve[--random_left];
        random_reserve[random_left] = 0;
    }
    return 0;
}

int cancel_register(struct cancel_map *m, struct client *c)
{
    uint32_t rnd[2];
    if (take_random(rnd) < 0)
        return -EIO;
    /* The "pid" only has to be unique among connected clients; the key is the secret. Bit 30
     * set (positive and never 0), the owner in the low bits, random bits between; a collision
     * steps to the next pid with the same owner, so pids stay unique across workers with one
     * map each, and any worker can tell from a CancelRequest whose key it is. */
    uint32_t pid = (rnd[0] & CANCEL_PID_RANDOM) | 0x40000000 | m->owner;
    while (find(m, pid))
        pid = ((pid + CANCEL_OWNER_MAX + 1) & CANCEL_PID_RANDOM) | 0x40000000 | m->owner;
    c->cancel_pid = pid;
    c->cancel_key = rnd[1];
    if (m->count >= m->nbuckets)
        grow(m);
    uint32_t k = bucket_of(m, pid);
    c->cancel_next = m->buckets[k];
    m->buckets[k] = c;
    m->count++;
    return 0;
}

void cancel_unregister(struct cancel_map *m, struct client *c)
{
    struct client **pp = &m->buckets[bucket_of(m, c->cancel_pid)];
    for (; *pp; pp = &(*pp)->cancel_next) {
        if (*pp == c) {
            *pp = c->cancel_next;
            m->count--;
            break;
        }
    }
    c->cancel_pid = 0;
    c->cancel_next = NULL;
}

struct cancel_job {
    struct server *server;
    const struct cancel_events *events; /* the worker's, for cancel_done */
    struct client *requester; /* the CancelRequest's connection, closed when done; or NULL */
    /* A requester on another worker (5.5): its worker, and the answer that hands back the
     * ticket it waits on there (made with the request, so sending it cannot fail for memory),
     * sent when this cancel is done; NULL for a local requester or none. */
    struct worker *reply_to;
    struct worker_msg *answer;
    /* Only where this libpq does not say the backend's cancel key (see libpq_cancel_target):
     * PQcancel, blocking, on libuv's thread pool. */
    uv_work_t req;
    PGcancel *cancel;
    int ok;
    char err[256];
    struct cancel_job *next_deferred; /* on its server's deferred_cancels (see defer_cancel) */
    /* A deferred cancel once released (see resend_if_ignored): the request it is for (its
     * server's requests_answered then), how often it was sent again, and the timer, open once
     * it waited to see whether the backend ignored it, that waits before it is sent again (on
     * this thread's rechecking list while it runs). */
    bool deferred;
    unsigned resends;
    uint64_t request;
    bool recheck_open;
    uv_timer_t recheck;
    struct list_node recheck_node; /* on rechecking_jobs() while its timer runs */
};

static int start_cancel(struct worker *worker, struct server *s, struct client *requester,
                        struct cancel_job *remote);

/* A job whose recheck timer was opened is freed once that is closed. */
static void free_job_after_timer(uv_handle_t *h)
{
    free(h->data);
}

/* The job's requester is answered (here, or on its worker through the ticket's answer) and the
 * job freed, for a cancel that is over or one that will not be sent; its worker's events, for
 * what the caller does next with the server. */
static const struct cancel_events *answer_and_free(struct cancel_job *job)
{
    struct client *requester = job->requester;
    const struct cancel_events *events = job->events;
    if (job->reply_to)
        worker_post_cancel_done(job->reply_to, job->answer);
    if (job->recheck_open)
        uv_close((uv_handle_t *)&job->recheck, free_job_after_timer); /* stopped by now */
    else
        free(job);
    if (requester) {
        requester->cancel_job = NULL;
        events->request_handled(requester);
    }
    return events;
}

static bool resend_if_ignored(struct cancel_job *job);

/* A cancel is over (delivered, failed, timed out or ended by a shutdown): the server counts it
 * out, the requester is answered. */
static void cancel_over(struct cancel_job *job, enum cancel_outcome outcome, const char *why)
{
    struct server *s = job->server;
    s->cancels_in_flight--;
    if (outcome == CANCEL_CONFIRMED) {
        log_msg(LOG_DEBUG, "S-%s: %s", CONN_ID_TEXT(s->id), why);
    } else if (outcome == CANCEL_NOT_SENT || s->state == SERVER_CLOSED) {
        log_msg(LOG_WARNING, "S-%s: cancel request failed: %s", CONN_ID_TEXT(s->id), why);
    } else {
        /* The postmaster has the request but never said it signalled the backend: it may yet,
         * so the server must not serve another client's query (close_when_free). */
        s->close_when_free = true;
        log_msg(LOG_WARNING,
                "S-%s: cancel request failed: %s; the server will be closed at release (the "
                "cancel may still reach it)",
                CONN_ID_TEXT(s->id), why);
    }
    const struct cancel_events *events = answer_and_free(job);
    if (s->state == SERVER_CLOSED) {
        /* server_close left the struct for us (see on_reaper_check). */
        return;
    }
    events->server_done(s);
}

/* A cancel was sent: over, unless it was a deferred one delivered while the request it is for
 * still runs, which is looked at again a few ms later (resend_if_ignored). */
static void cancel_done(struct cancel_job *job, enum cancel_outcome outcome, const char *why)
{
    if (outcome == CANCEL_CONFIRMED && resend_if_ignored(job)) {
        log_server(LOG_DEBUG, job->server, "%s; checking that its request ends", why);
        return;
    }
    cancel_over(job, outcome, why);
}

static void on_cancel_sent(void *arg, enum cancel_outcome outcome, const char *why)
{
    cancel_done(arg, outcome, why);
}

static void pqcancel_work(uv_work_t *req)
{
    struct cancel_job *job = container_of(req, struct cancel_job, req);
    job->ok = PQcancel(job->cancel, job->err, sizeof(job->err));
}

static void on_pqcancel_done(uv_work_t *req, int status)
{
    struct cancel_job *job = container_of(req, struct cancel_job, req);
    PQfreeCancel(job->cancel);
    /* A failed PQcancel does not say whether it failed before or after writing the request. */
    enum cancel_outcome outcome = status < 0 ? CANCEL_NOT_SENT
                                  : job->ok  ? CANCEL_CONFIRMED
                                             : CANCEL_UNCONFIRMED;
    cancel_done(job, outcome,
                outcome == CANCEL_CONFIRMED ? "cancel delivered (PQcancel)"
                : status < 0                ? "PQcancel did not run"
                                            : job->err);
}

/* libpq 9.x to 17 lay out a PGcancel (libpq-int.h, struct pg_cancel) as the connection's address
 * (a sockaddr_storage and its length), then the backend's pid and its cancel key; libpq 18
 * changed what follows the pid. A PG15 libpq tells the key no other way (PQbackendPID is the
 * pid alone; PQcancelCreate, which sends without blocking, came in 17), and the login consumed
 * the BackendKeyData. So the key is read there only from a libpq whose layout is known, and
 * only when the pid and address beside it are the connection's own (PQbackendPID, and
 * getpeername on its socket); else PQcancel sends it, on the thread pool. The address sent to
 * is getpeername's: the exact one libpq connected to (its raddr), for every host in a host list
 * and for a unix socket too (whose path getpeername reports), where PQhost/PQport would name a
 * host to resolve again, or a directory. */
struct libpq_cancel_head {
    struct {
        struct sockaddr_storage addr;
        socklen_t salen;
    } raddr; /* libpq's SockAddr: padded to sockaddr_storage's alignment, as libpq has it */
    int be_pid;
    int be_key;
};

static bool same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    switch (a->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    case AF_UNIX: {
        const struct sockaddr_un *x = (const void *)a, *y = (const void *)b;
        return strncmp(x->sun_path, y->sun_path, sizeof(x->sun_path)) == 0;
    }
    }
    return false;
}

static bool libpq_cancel_target(PGconn *conn, struct cancel_target *out)
{
    int version = PQlibVersion();
    if (version < 90000 || version >= 180000)
        return false;
    out->addrlen = sizeof(out->addr);
    if (getpeername(PQsocket(conn), (struct sockaddr *)&out->addr, &out->addrlen) < 0)
        return false;
    PGcancel *c = PQgetCancel(conn);
    if (!c)
        return false;
    struct libpq_cancel_head head;
    memcpy(&head, c, sizeof(head));
    PQfreeCancel(c);
    if (head.be_pid != PQbackendPID(conn) || !same_address(&head.raddr.addr, &out->addr))
        return false;
    out->pid = (uint32_t)head.be_pid;
    out->key = (uint32_t)head.be_key;
    OPENSSL_cleanse(&head, sizeof(head));
    return true;
}

unsigned cancel_pid_owner(uint32_t pid)
{
    return pid & CANCEL_OWNER_MAX;
}

struct client *cancel_map_lookup(const struct cancel_map *m, uint32_t pid, uint32_t key)
{
    struct client *c = find(m, pid);
    /* Compare the key in constant time: it is the only secret in a cancel request. */
    if (!c || CRYPTO_memcmp(&c->cancel_key, &key, sizeof(key)) != 0)
        return NULL;
    return c;
}

/* Whom a CancelRequest is for, and what is done for it, on the worker that owns pid; the
 * requester is there (requester) or on another worker (remote: that worker and the answer,
 * handing back its ticket, that this job sends when done). False when nothing is left to wait
 * for: the caller answers at once. */
static bool route_request(struct worker *worker, struct client *requester,
                          struct cancel_job *remote, uint32_t pid, uint32_t key)
{
    struct client *c = cancel_map_lookup(worker->cancel_map, pid, key);
    if (!c) {
        log_msg(LOG_DEBUG, "cancel request with an unknown key ignored");
        return false;
    }
    if (c->admin) {
        console_cancel(c); /* a waiting PAUSE or WAIT_CLOSE */
        return false;
    }
    if (c->state == CLIENT_WAITING) {
        worker->cancel_events->queued_cancelled(c); /* its request has not reached a server */
        return false;
    }
    struct server *s = c->server;
    if (!s || s->state != SERVER_ACTIVE || (!s->conn && !s->login)) {
        log_client(LOG_DEBUG, c, "cancel request while no query runs: ignored");
        return false;
    }
    if (start_cancel(worker, s, requester, remote) < 0)
        return false;
    log_client(LOG_INFO, c, "cancel request for S-%s (backend pid %d)", CONN_ID_TEXT(s->id),
               s->backend_pid);
    return true;
}

/* The requester waits on another worker's answer: a ticket (a job with no server) holds its
 * place, forgotten by cancel_requester_gone like a local job, freed when the answer comes. */
static bool pass_to_owner(struct client *requester, unsigned owner, uint32_t pid, uint32_t key)
{
    struct worker *worker = requester->worker;
    if (owner >= (unsigned)worker->proc->nworkers)
        return false; /* no such worker: an unknown key */
    struct cancel_job *ticket = calloc(1, sizeof(*ticket));
    if (!ticket)
        return false;
    ticket->requester = requester;
    ticket->events = worker->cancel_events;
    if (worker_post_cancel(&worker->proc->workers[owner], pid, key, worker, ticket) < 0) {
        free(ticket);
        return false;
    }
    requester->cancel_job = ticket;
    worker->cancel_events->request_waits(requester);
    return true;
}

void cancel_request(struct client *requester, uint32_t pid, uint32_t key)
{
    struct worker *worker = requester->worker;
    unsigned owner = cancel_pid_owner(pid);
    bool waits = owner == worker->index ? route_request(worker, requester, NULL, pid, key)
                                        : pass_to_owner(requester, owner, pid, key);
    if (!waits)
        worker->cancel_events->request_handled(requester);
}

void cancel_remote_request(struct worker *worker, uint32_t pid, uint32_t key,
                           struct worker *reply_to, struct worker_msg *answer)
{
    struct cancel_job remote = {.reply_to = reply_to, .answer = answer};
    if (!route_request(worker, NULL, &remote, pid, key))
        worker_post_cancel_done(reply_to, answer); /* also when start_cancel ran out of memory */
}

void cancel_remote_done(struct cancel_job *ticket)
{
    struct client *requester = ticket->requester;
    const struct cancel_events *events = ticket->events;
    free(ticket);
    if (requester) {
        requester->cancel_job = NULL;
        events->request_handled(requester);
    }
}

void cancel_requester_gone(struct client *requester)
{
    if (requester->cancel_job)
        requester->cancel_job->requester = NULL;
    requester->cancel_job = NULL;
}

int cancel_server(struct worker *worker, struct server *s)
{
    return start_cancel(worker, s, NULL, NULL);
}

/* Send the cancel for s: from the worker's loop (cancel_send.c) with the backend's address and
 * key, or, where libpq does not tell the key, PQcancel on the thread pool; cancel_done answers
 * it. 0, or a negative errno (nothing is under way; the job is the caller's still). */
static int send_cancel(struct worker *worker, struct server *s, struct cancel_job *job)
{
    struct cancel_target target;
    bool known =
        s->conn ? libpq_cancel_target(s->conn, &target) : server_login_cancel_target(s, &target);
    int rc;
    if (known) {
        /* server_connect_timeout bounds a cancel as it bounds a login: an upstream that does
         * not answer a connect in that time will not answer a cancel either. */
        rc = cancel_send_start(worker->loop, &target, (uint64_t)worker->cfg->server_connect_timeout,
                               on_cancel_sent, job);
        OPENSSL_cleanse(&target, sizeof(target));
    } else if (s->conn && (job->cancel = PQgetCancel(s->conn)) != NULL) {
        static atomic_bool warned;
        if (!atomic_exchange(&warned, true))
            log_msg(LOG_WARNING,
                    "libpq %d does not tell the backend's cancel key: cancels of "
                    "libpq logins use PQcancel, on libuv's thread pool, with no deadline",
                    PQlibVersion());
        rc = uv_queue_work(worker->loop, &job->req, pqcancel_work, on_pqcancel_done);
        if (rc < 0) {
            PQfreeCancel(job->cancel);
            job->cancel = NULL;
        }
    } else {
        rc = -ENOMEM; /* no key yet (login not done) or no memory: nothing to send */
    }
    return rc;
}

/* ---- a cancel behind sluice's own statements ---- */

/* While s->swallow > 0 the backend runs sluice's own statements first (a parameter sync, a
 * statement prepared again: pipelined ahead of the client's request; their replies are
 * consumed). A cancel landing there would stop sluice's statement, whose error nobody sees, and
 * the client's request would run after it without its settings and without being cancelled;
 * Postgres cancels the client's query or nothing. So such a cancel waits on s->deferred_cancels,
 * counted in cancels_in_flight as one on its way (the server is not handed on, the requester
 * waits in CLIENT_CANCEL_WAIT), until sluice's statements are answered: then
 * cancel_release_deferred sends it if the client's request runs, or answers it unsent (an idle
 * backend ignores a cancel too).
 * Not so for a restore of login values and a read back (login_reset.h): they run after the
 * client's request, its ReadyForQuery held and its next requests waiting, so nothing of the
 * client's runs without them; a cancel landing on the restore reaches the client as 57014 before
 * its ReadyForQuery 'E' (the request is not over for it yet), and a cancel can still end one that
 * waits on a lock (query_timeout). */
static bool own_statements_ahead(const struct server *s)
{
    return s->swallow > 0 && s->login_reset.state != LOGIN_RESET_RESTORING;
}

static void defer_cancel(struct server *s, struct cancel_job *job)
{
    struct cancel_job **tail = &s->deferred_cancels;
    while (*tail)
        tail = &(*tail)->next_deferred;
    *tail = job;
    log_server(LOG_INFO, s, "cancel deferred until sluice's own statements ahead of it are done");
}

/* A deferred cancel that is not sent (or not sent again): its requester (here or on another
 * worker) is answered as after a cancel, and it is counted out. The server is not kicked: the
 * caller (the relay, server_close, or a recheck that found the request over) goes on with it. */
static void answer_unsent(struct cancel_job *job)
{
    job->server->cancels_in_flight--;
    answer_and_free(job);
}

/* A deferred cancel goes out the moment sluice's statements are answered, while the backend may
 * still be reading the client's request behind them (in its socket already): Postgres ignores a
 * cancel that reaches a backend reading a command (postgres.c, DoingCommandRead), and the request
 * would then run to its end, where on Postgres the same cancel would have found it running. What
 * the backend did with a cancel cannot be seen; whether the request ends can. So once a deferred
 * cancel is delivered, if the request it is for still runs DEFERRED_RECHECK_MS later (no
 * ReadyForQuery of the client's since: s->requests_answered has not moved), it is sent again, at
 * most DEFERRED_RESENDS times, each wait DEFERRED_RECHECK_GROWTH times the one before (a backend
 * descheduled on a loaded machine reads its request late). Until then it stays counted in
 * cancels_in_flight and its requester waits: the server is not handed on and the client's next
 * request is not forwarded (relay.c, client_bytes_wait), so a cancel sent again can only reach
 * the request it is for, one the client sent before it in the same pipeline, or an idle backend,
 * which ignores it. Never sluice's own statements: none is resent while some run. */
#define DEFERRED_RECHECK_MS 10u
#define DEFERRED_RECHECK_GROWTH 4u
#define DEFERRED_RESENDS 3u

/* This thread's deferred cancels waiting to be looked at again (for server_close and the
 * shutdown: each worker's loop runs on its own thread). */
static _Thread_local struct list rechecking;

static struct list *rechecking_jobs(void)
{
    return list_ready(&rechecking);
}

static void unlink_rechecking(struct cancel_job *job)
{
    uv_timer_stop(&job->recheck);
    list_remove(rechecking_jobs(), &job->recheck_node);
}

/* Does the client's request the deferred cancel was released for still run, with nothing of
 * sluice's ahead of it? (Its server is ACTIVE, or DRAINING once its client left: that query is
 * to be cancelled too.) */
static bool request_still_runs(const struct cancel_job *job)
{
    const struct server *s = job->server;
    return (s->state == SERVER_ACTIVE || s->state == SERVER_DRAINING) && s->swallow == 0 &&
           server_backend_busy(s) && s->requests_answered == job->request;
}

static void on_recheck(uv_timer_t *t)
{
    struct cancel_job *job = t->data;
    struct server *s = job->server;
    unlink_rechecking(job);
    if (!request_still_runs(job)) {
        cancel_over(job, CANCEL_CONFIRMED, "deferred cancel delivered; its request is over");
        return;
    }
    job->resends++;
    if (send_cancel(s->pool->worker, s, job) < 0) {
        cancel_over(job, CANCEL_CONFIRMED,
                    "deferred cancel delivered, but could not be sent again while its request "
                    "still runs");
        return;
    }
    log_server(LOG_INFO, s,
               "deferred cancel sent again (backend pid %d): its request still runs, the backend "
               "may have got it while reading that request",
               s->backend_pid);
}

/* Called for a deferred cancel just delivered: true when it waits to be looked at again (see
 * above), false when it is over. */
static bool resend_if_ignored(struct cancel_job *job)
{
    struct server *s = job->server;
    if (!job->deferred || job->resends >= DEFERRED_RESENDS || !request_still_runs(job))
        return false;
    if (!job->recheck_open) {
        if (uv_timer_init(s->pool->worker->loop, &job->recheck) < 0)
            return false;
        job->recheck.data = job;
        job->recheck_open = true;
    }
    uint64_t wait = DEFERRED_RECHECK_MS;
    for (unsigned i = 0; i < job->resends; i++)
        wait *= DEFERRED_RECHECK_GROWTH;
    if (uv_timer_start(&job->recheck, on_recheck, wait, 0) < 0)
        return false;
    list_prepend(rechecking_jobs(), &job->recheck_node);
    return true;
}

void cancel_release_deferred(struct server *s)
{
    struct cancel_job *job = s->deferred_cancels;
    s->deferred_cancels = NULL;
    while (job) {
        struct cancel_job *next = job->next_deferred;
        job->next_deferred = NULL;
        job->deferred = true;
        job->request = s->requests_answered;
        if (!server_backend_busy(s)) {
            log_server(LOG_DEBUG, s, "deferred cancel dropped: no request of the client runs");
            answer_unsent(job);
        } else if (send_cancel(s->pool->worker, s, job) < 0) {
            log_server(LOG_WARNING, s, "could not send a deferred cancel");
            answer_unsent(job);
        } else {
            log_server(LOG_INFO, s, "deferred cancel sent (backend pid %d)", s->backend_pid);
        }
        job = next;
    }
}

void cancel_request_answered(struct server *s)
{
    if (s->cancels_in_flight == 0)
        return; /* the common case: nothing to look for */
    struct list_node *node, *tmp;
    list_for_each(rechecking_jobs(), node, tmp)
    {
        struct cancel_job *job = container_of(node, struct cancel_job, recheck_node);
        /* Its last send is done (Postgres closed that connection once it had signalled the
         * backend): nothing of it is still on its way, as when on_recheck finds the request
         * over. */
        if (job->server == s && s->requests_answered != job->request) {
            unlink_rechecking(job);
            log_server(LOG_DEBUG, s, "deferred cancel delivered; its request was answered");
            answer_unsent(job);
        }
    }
}

void cancel_forget_deferred(struct server *s)
{
    struct cancel_job *job = s->deferred_cancels;
    s->deferred_cancels = NULL;
    while (job) {
        struct cancel_job *next = job->next_deferred;
        answer_unsent(job);
        job = next;
    }
    struct list_node *node, *tmp;
    list_for_each(rechecking_jobs(), node, tmp)
    {
        job = container_of(node, struct cancel_job, recheck_node);
        if (job->server == s) {
            unlink_rechecking(job);
            answer_unsent(job);
        }
    }
}

static int start_cancel(struct worker *worker, struct server *s, struct client *requester,
                        struct cancel_job *remote)
{
    struct cancel_job *job = calloc(1, sizeof(*job));
    if (!job)
        return -ENOMEM;
    job->server = s;
    job->events = worker->cancel_events;
    if (own_statements_ahead(s)) {
        defer_cancel(s, job);
    } else {
        int rc = send_cancel(worker, s, job);
        if (rc < 0) {
            free(job);
            return rc;
        }
    }
    s->cancels_in_flight++;
    if (requester) {
        job->requester = requester;
        requester->cancel_job = job;
        worker->cancel_events->request_waits(requester);
    }
    if (remote) {
        job->reply_to = remote->reply_to;
        job->answer = remote->answer;
    }
    return 0;
}

void cancel_abort_all(void)
{
    cancel_send_abort_all();
    struct list_node *node;
    while ((node = list_first(rechecking_jobs()))) {
        struct cancel_job *job = container_of(node, struct cancel_job, recheck_node);
        unlink_rechecking(job);
        cancel_over(job, CANCEL_CONFIRMED,
                    "deferred cancel delivered; not looked at again: the worker is shutting down");
    }
}
