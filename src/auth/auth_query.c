/* auth_query: a user's secret asked of the database itself (see auth_query.h, secret.h).
 *
 * Every login asks: a secret found is never kept past the lookup that found it, so a password
 * changed, a role made NOLOGIN or a VALID UNTIL passed on the server counts from the next login
 * (PgBouncer asks at every login; a cached answer let an old password in, as a forced user or
 * onto a server the pool held, for as long as it was kept). Logins of the same (database entry,
 * dbname, auth_user, user) that arrive while its lookup runs wait on that one lookup and share
 * its answer (single-flight), so a storm of one user's logins costs one query per round trip,
 * not one per login (a password in clear that must first be turned into a SCRAM secret is not
 * asked again once that is done: secret.c's resolve_derived).
 * Only "no such user" is remembered, for SECRET_QUERY_NEGATIVE_TTL_MS: a
 * flood of made-up names asking again costs Postgres nothing, and the cost of remembering is
 * only that a role created meanwhile may log in that much later (it fails closed).
 * A lookup runs on one of a small set of non-blocking libpq connections shared by all lookups
 * (PQconnectStartParams/PQconnectPoll, then PQsendQueryParams), each driven by one poll handle
 * on its socket like a server's login; see "auth_query connections" below for how that set is
 * bounded and counted. The caps it counts under are the core's: it asks and tells through
 * struct secret_slots.
 *
 * Threads: the lookups, their connections and the negative cache are per thread (each worker's
 * own). A connection is polled by one loop and its waiters are that worker's logins, so sharing
 * them would need a message to another worker for every answer; per worker they need no lock.
 * The connections' number is the process's, not each worker's: every one is taken through the
 * core's slots, which hold all workers' together to SECRET_QUERY_CONNECTIONS (the ledger counts
 * them); a worker refused waits as for any cap, and another worker's idle connection closes for
 * it. The cost: logins of one user on two workers at once are two lookups.
 * Only the slots are shared: set once at start-up, read-only after.
 *
 * A share per address: a stranger can open max_client_logins logins, each for a name of its
 * own, and each starts a lookup that no other login shares. A login waiting on its lookup never
 * gives its place up (client_login_waits_on_sluice: an honest client is not punished for
 * sluice's slowness), so while auth_query is slow (a busy server, a lock on the table it reads)
 * those logins held every place until client_login_timeout, and an honest login's lookup queued
 * behind all of them. Now a client address has AUTH_QUERY_QUEUED_PER_ADDRESS lookups waiting
 * for a connection at most before its next ones are held back: they start only when no other
 * address's lookup waits, and a login waiting on one that has not started waits on its own
 * address, not on sluice, so it gives its place up like any stalled login
 * (secret_waiter_held_back). Each of the address's lookups that leaves the queue lets its
 * first held-back one in again (share_freed). An honest client's lookup then waits for those
 * running and at most that many more from each address, and its login finds a place. PgBouncer runs
 * auth_query on a server of auth_user's pool, its lookups queued in arrival order like any
 * client's: the same weakness, bounded only by its client caps. Not refused outright: one
 * application server logging in as many users at once is one address too, and with a quick
 * auth_query its queue drains in milliseconds; held back, its lookups only go last, and give way
 * only to a full max_client_logins. Per worker like the rest (a stranger spread over N workers gets
 * N shares); clients on the unix socket are one address. */
#include "auth_query.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "cidr.h"
#include "config.h"
#include "log.h"
#include "resolver.h"
#include "sluice.h"
#include "tcp_options.h"
#include "sockio.h"

/* The core's caps on backends (secret_init). */
static const struct secret_slots *slots;

void secret_init(const struct secret_slots *core_slots)
{
    slots = core_slots;
}

static _Thread_local struct secret_job *query_jobs; /* auth_query lookups, oldest first */

/* ---- users not found ----
 * Unknown names are remembered (a negative entry), so a stranger asking again costs Postgres
 * nothing for SECRET_QUERY_NEGATIVE_TTL_MS. Strangers choose their names: entries are capped at
 * MAX_NEGATIVE, the oldest going first. */

#define MAX_NEGATIVE 10000

struct qentry {
    struct qentry *next;
    struct qentry *older, *newer; /* oldest first */
    char *key;
    uint64_t expires_ms;
};
static _Thread_local struct qentry *query_buckets[SECRET_NBUCKETS];
static _Thread_local int nnegative;
static _Thread_local struct qentry *negative_oldest, *negative_newest;

/* The lookup whose answer is being handed to its waiters (query_finish): a login that asks for
 * the same key meanwhile (a waiter's callback, a derivation's) gets that answer, the freshest
 * there is. */
static _Thread_local const struct secret_job *answering;

static void qentry_free(struct qentry *e)
{
    free(e->key);
    free(e);
}

static struct qentry **bucket_for(const char *key)
{
    return &query_buckets[secret_bucket_of((const uint8_t *)key, strlen(key))];
}

/* Take *pp (e) out of its bucket and the age list, and free it. */
static void qentry_remove(struct qentry **pp, struct qentry *e)
{
    *pp = e->next;
    if (e->older)
        e->older->newer = e->newer;
    else
        negative_oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        negative_newest = e->older;
    nnegative--;
    qentry_free(e);
}

void auth_query_clear(void)
{
    for (int i = 0; i < SECRET_NBUCKETS; i++) {
        while (query_buckets[i]) {
            struct qentry *e = query_buckets[i];
            query_buckets[i] = e->next;
            qentry_free(e);
        }
    }
    nnegative = 0;
    negative_oldest = negative_newest = NULL;
}

/* Whether key is a user not found lately. Expired entries go as they are met. */
static bool known_unknown(const char *key, uint64_t now)
{
    struct qentry **pp = bucket_for(key);
    while (*pp) {
        struct qentry *e = *pp;
        if (now >= e->expires_ms) {
            qentry_remove(pp, e);
            continue;
        }
        if (strcmp(e->key, key) == 0)
            return true;
        pp = &e->next;
    }
    return false;
}

static void forget(const char *key)
{
    for (struct qentry **pp = bucket_for(key); *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            qentry_remove(pp, *pp);
            return;
        }
    }
}

static void remember_unknown(const char *key, uint64_t now)
{
    forget(key); /* an older entry for the same key */
    if (nnegative >= MAX_NEGATIVE)
        forget(negative_oldest->key);
    struct qentry *e = calloc(1, sizeof(*e));
    if (!e)
        return;
    e->key = strdup(key);
    if (!e->key) {
        qentry_free(e);
        return;
    }
    e->expires_ms = now + SECRET_QUERY_NEGATIVE_TTL_MS;
    struct qentry **pp = bucket_for(key);
    e->next = *pp;
    *pp = e;
    e->older = negative_newest;
    if (negative_newest)
        negative_newest->newer = e;
    else
        negative_oldest = e;
    negative_newest = e;
    nnegative++;
}

/* ---- auth_query connections
 *
 * Lookups run on at most SECRET_QUERY_CONNECTIONS connections in the process (the slots count
 * every worker's), each logged in as one target's auth_user and reused for that target's lookups;
 * a lookup waits, in order, for a free one (another worker's: once it closed for this worker,
 * which its close wakes).
 * Each connection counts against max_db_connections (its database entry),
 * max_user_connections (auth_user) and max_server_connections like a pool's server, and opens
 * only when they have room (closing another pool's idle server for it, as pools do for each
 * other). So a flood of made-up user names costs Postgres at most that many backends.
 *
 *   RESOLVING --> CONNECTING --ok--> QUERYING <--> IDLE --SECRET_QUERY_IDLE_MS, reload,
 *                                                           shutdown--> LEAVING --> closed
 *   any state --failed or server_connect_timeout--> closed (or LEAVING, when logged in)
 * RESOLVING: the entry's host names, off the loop (resolver.c), when it names a host.
 * LEAVING: its backend was told to go (Terminate) and has not yet: its slot under the caps is
 * given back when the backend closes its end (as a pool's server does, server.c), or after
 * QCONN_LEAVING_WAIT_MS. A backend still in pg_stat_activity is one Postgres counts: freed at
 * once, the slot let another worker's connection in beside it (3 auth_query backends at once
 * from a set of 2, seen under load). */

enum qconn_state { QCONN_RESOLVING, QCONN_CONNECTING, QCONN_QUERYING, QCONN_IDLE, QCONN_LEAVING };

#define QCONN_LEAVING_WAIT_MS 2000

struct qconn {
    struct qconn *next;
    struct worker *worker;
    enum qconn_state state;
    char *target, *db_name, *auth_user; /* as the jobs it runs */
    struct resolver *resolving;         /* RESOLVING */
    PGconn *conn;
    struct sockio io;
    struct secret_job *job; /* RESOLVING, CONNECTING, QUERYING: the lookup it runs */
    uint64_t since_ms;      /* when it entered its state */
    uint64_t opened_ms;     /* its turn began (SECRET_QUERY_TURN_MS) */
    int served;             /* lookups answered on it */
    bool retired;           /* reload: closed once its lookup is done */
    /* QUERYING: the lookup's first error, kept until its results end: the server flushes an
     * ErrorResponse at once and its ReadyForQuery after, so the end may come in a later read */
    char error[512];
};
static _Thread_local struct qconn *qconns;
static _Thread_local int nqconns;
static _Thread_local struct qconn *leaving_qconns; /* LEAVING, apart: no lookup sees them */

static void query_dispatch(struct worker *worker);

/* j stops waiting for a connection (it starts, or is dropped unstarted): its address has one
 * lookup fewer waiting, so the first of its lookups held back is within the share now, and
 * joins the queue's end as a lookup asked for now would. Without this a lookup held back once
 * stayed so after its address's earlier ones had started: while other addresses' lookups kept
 * coming it never started (the address's later lookups, within the share, went first), and its
 * login gave its place up as a flood's does. Callers never walk query_jobs across this. */
static void share_freed(const struct secret_job *j)
{
    if (j->kind != JOB_QUERY || j->qc)
        return;
    for (struct secret_job *o = query_jobs; o; o = o->next) {
        if (o != j && o->kind == JOB_QUERY && !o->qc && o->held_back &&
            strcmp(o->opener, j->opener) == 0) {
            o->held_back = false;
            secret_job_unlink(&query_jobs, o);
            secret_job_append(&query_jobs, o);
            return;
        }
    }
}

static struct qconn *idle_qconn(const char *target);
static void on_qconn_io(struct sockio *io, int status, int events);

static const char *const for_another_worker = "making room for another worker's lookup";

/* The end of qc: its socket closed, its slot under the caps free (a pool may be waiting for
 * it). */
static void qconn_free(struct qconn *qc)
{
    int kept = qc->state == QCONN_LEAVING ? qc->io.fd : -1; /* the second descriptor */
    sockio_detach(&qc->io);
    if (kept >= 0)
        close(kept);
    resolver_cancel(qc->resolving);
    if (qc->conn)
        PQfinish(qc->conn);
    slots->freed(qc->worker, qc->db_name, qc->auth_user);
    free(qc->target);
    free(qc->db_name);
    free(qc->auth_user);
    free(qc);
}

static void on_leaving_io(struct sockio *io, int status, int events)
{
    (void)events;
    struct qconn *qc = io->owner;
    char scratch[512];
    for (;;) {
        ssize_t n = status < 0 ? -1 : sockio_read(&qc->io, scratch, sizeof(scratch));
        if (n == SOCKIO_AGAIN)
            return;
        if (n <= 0)
            break;
    }
    for (struct qconn **pp = &leaving_qconns; *pp; pp = &(*pp)->next) {
        if (*pp == qc) {
            *pp = qc->next;
            break;
        }
    }
    qconn_free(qc);
}

/* Logged in, no result pending, outside a transaction: fit for the next lookup, and for a
 * goodbye that the backend reads as a clean end. */
static bool qconn_at_rest(struct qconn *qc)
{
    return qc->conn && PQstatus(qc->conn) == CONNECTION_OK && !PQisBusy(qc->conn) &&
           PQtransactionStatus(qc->conn) == PQTRANS_IDLE;
}

/* A logged-in connection with nothing under way says goodbye (PQfinish sends Terminate) over a
 * second descriptor of its socket, which stays open to read the backend's close. False when it
 * cannot (not logged in: libpq sends no Terminate then, and a backend mid-login would wait on
 * the open socket; a lookup under way; no descriptor to spare): it closes at once. */
static bool qconn_leave(struct qconn *qc)
{
    if (!qconn_at_rest(qc))
        return false;
    /* dup(), not fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer follows descriptors made by dup but not
     * by fcntl, and libuv closes its own (a worker's epoll descriptor) with a raw system call it
     * does not see: a number reused through fcntl kept the old descriptor's history and its
     * close here read as a race with the ended worker's epoll_wait. sluice never execs, so the
     * close-on-exec flag set a moment later misses nothing. */
    int keep = dup(PQsocket(qc->conn));
    if (keep < 0)
        return false;
    (void)fcntl(keep, F_SETFD, FD_CLOEXEC);
    sockio_detach(&qc->io);
    PQfinish(qc->conn);
    qc->conn = NULL;
    if (sockio_open(&qc->io, qc->worker->loop, keep, qc, on_leaving_io) < 0) {
        close(keep);
        return false;
    }
    qc->state = QCONN_LEAVING;
    qc->since_ms = sluice_now(qc->worker);
    qc->next = leaving_qconns;
    leaving_qconns = qc;
    sockio_want(&qc->io, UV_READABLE);
    return true;
}

/* qc leaves the worker's connections (and its lookup, if any). */
static void qconn_unlink(struct qconn *qc, const char *why)
{
    for (struct qconn **pp = &qconns; *pp; pp = &(*pp)->next) {
        if (*pp == qc) {
            *pp = qc->next;
            break;
        }
    }
    nqconns--;
    if (qc->job)
        qc->job->qc = NULL;
    qc->job = NULL;
    log_msg(LOG_DEBUG, "auth_query: closing the connection to \"%s\" as \"%s\": %s", qc->db_name,
            qc->auth_user, why);
}

static void qconn_close(struct qconn *qc, const char *why)
{
    qconn_unlink(qc, why);
    if (!qconn_leave(qc))
        qconn_free(qc);
}

/* Another worker has a lookup the process's cap on these connections holds back: an idle
 * connection of this worker's closes for it; its close wakes that worker (auth_query_slot_freed
 * in sluice.c). One at a time: the next, on the tick, if it still waits then. */
static void give_idle_elsewhere(struct worker *worker)
{
    struct qconn *qc = idle_qconn(NULL);
    if (qc && slots->wanted_elsewhere(worker))
        qconn_close(qc, for_another_worker);
}

/* Whether qc goes to another worker's waiting lookup: with several, one at once; the only one
 * once it has had its turn (SECRET_QUERY_TURN_MS). With 3 workers or more, two workers holding
 * one each kept them until their queues drained while the others' logins waited. */
static bool turn_over(const struct qconn *qc, uint64_t now)
{
    return nqconns > 1 || now - qc->opened_ms >= SECRET_QUERY_TURN_MS;
}

/* The lookup is over: remember a user not found, free the connection for the next one, wake the
 * waiters. While another worker waits for a connection, one whose turn is over goes to it
 * rather than to this worker's next lookup, so that no worker's queue holds the others' lookups
 * until it drains; the room goes to the workers woken (ledger_take_own). */

static void query_finish(struct secret_job *j, const char *error)
{
    struct worker *worker = j->worker;
    struct qconn *qc = j->qc;
    share_freed(j);
    secret_job_unlink(&query_jobs, j);
    if (qc) {
        qc->job = NULL;
        j->qc = NULL;
        if (qc->retired || worker->proc->phase != PHASE_RUNNING || !qconn_at_rest(qc)) {
            qconn_close(qc, qc->retired ? "the configuration was reloaded" : "not reusable");
        } else if (slots->wanted_elsewhere(worker) && turn_over(qc, sluice_now(worker))) {
            qconn_close(qc, for_another_worker);
        } else {
            qc->served++;
            qc->state = QCONN_IDLE;
            qc->since_ms = sluice_now(worker);
            sockio_want(&qc->io, UV_READABLE); /* notice the server closing it */
        }
    }
    char why[512];
    if (error) {
        snprintf(why, sizeof(why), "%s", error);
        why[strcspn(why, "\n")] = '\0';
        log_msg(LOG_WARNING, "auth_query for user \"%s\" failed: %s", j->user, why);
    } else {
        if (!(j->answered && j->found))
            remember_unknown(j->key, sluice_now(worker));
        log_msg(LOG_DEBUG, "auth_query: user \"%s\" %s", j->user,
                j->answered && j->found ? "found" : "not found");
    }
    const struct secret_job *outer = answering; /* a waiter's callback may end another lookup */
    answering = error ? NULL : j;
    secret_job_wake(j, error ? why : NULL);
    answering = outer;
    secret_job_free(j);
    query_dispatch(worker);
    give_idle_elsewhere(worker);
}

/* The connection broke. A lookup on a connection that had served before may have met one the
 * server had closed meanwhile: it is tried once more on a fresh one. */
static void qconn_lost(struct qconn *qc, const char *why)
{
    struct secret_job *j = qc->job;
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", why);
    bool stale = qc->served > 0;
    qconn_close(qc, msg);
    if (!j)
        return;
    if (stale && j->tries < 2) {
        query_dispatch(j->worker);
        return;
    }
    query_finish(j, msg);
}

static void qconn_run(struct qconn *qc, struct secret_job *j)
{
    const char *values[1] = {j->user};
    share_freed(j);
    qc->job = j;
    qc->error[0] = '\0';
    j->qc = qc;
    j->tries++;
    j->answered = false;
    qc->state = QCONN_QUERYING;
    qc->since_ms = sluice_now(qc->worker);
    if (!PQsendQueryParams(qc->conn, j->query, 1, NULL, values, NULL, NULL, 0)) {
        qconn_lost(qc, PQerrorMessage(qc->conn));
        return;
    }
    int f = PQflush(qc->conn);
    if (f < 0) {
        qconn_lost(qc, PQerrorMessage(qc->conn));
        return;
    }
    sockio_want(&qc->io, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* SQLSTATEs of a parameter whose bytes the server cannot take as text: 22021
 * character_not_in_repertoire ("invalid byte sequence for encoding"), 22P05
 * untranslatable_character (no such character in the server's encoding). */
static bool name_not_in_server_encoding(const char *sqlstate)
{
    return sqlstate && (strcmp(sqlstate, "22021") == 0 || strcmp(sqlstate, "22P05") == 0);
}

static void query_step(struct qconn *qc)
{
    struct secret_job *j = qc->job;
    int f = PQflush(qc->conn);
    if (f < 0 || !PQconsumeInput(qc->conn)) {
        qconn_lost(qc, PQerrorMessage(qc->conn));
        return;
    }
    const char *error = qc->error[0] ? qc->error : NULL;
    char why[512];
    while (!PQisBusy(qc->conn)) {
        PGresult *res = PQgetResult(qc->conn);
        if (!res) {
            if (error) /* query_finish may free qc, and with it qc->error */
                snprintf(why, sizeof(why), "%s", error);
            query_finish(j, error ? why : NULL);
            return;
        }
        /* read every result up to the end, so the connection is ready for the next lookup;
         * the first error is the answer */
        if (error) {
            PQclear(res);
            continue;
        }
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            if (PQnfields(res) < 2) {
                error = "auth_query must return two columns: user name and password";
            } else if (PQntuples(res) > 1) {
                /* Which row's password? None: a query that compares the name with LIKE
                 * answered the made-up name "q%" with every q* role, and the first row's
                 * password logged "q%" in, a name Postgres refuses (PgBouncer takes the last
                 * row). Failing closed names the query to fix. */
                snprintf(why, sizeof(why),
                         "auth_query returned %d rows; it must return one at most (compare the "
                         "user name with =, not LIKE)",
                         PQntuples(res));
                error = why;
            } else if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 1) &&
                       (PQgetisnull(res, 0, 0) || strcmp(PQgetvalue(res, 0, 0), j->user) != 0)) {
                /* A password for another name: the LIKE query answered "qscra_" with qscram's
                 * row, and "qscra_", no role at all, logged in with qscram's password. A row
                 * without a password (a LEFT JOIN's for no such role) says "not found" as
                 * before. */
                snprintf(why, sizeof(why),
                         "auth_query returned the row of user \"%.100s\"; it must return the "
                         "row of the user asked for, or none",
                         PQgetisnull(res, 0, 0) ? "(null)" : PQgetvalue(res, 0, 0));
                error = why;
            } else if (PQntuples(res) > 0 && !j->answered) {
                j->answered = true;
                if (!PQgetisnull(res, 0, 1) && !(j->found = strdup(PQgetvalue(res, 0, 1))))
                    error = "out of memory";
            }
        } else if (PQresultStatus(res) == PGRES_FATAL_ERROR &&
                   name_not_in_server_encoding(PQresultErrorField(res, PG_DIAG_SQLSTATE))) {
            /* The name's bytes are no text of the server's (a name longer than 63 bytes cut,
             * as Postgres cuts it, inside a character; a stray byte): no role has it, and
             * Postgres answers the login as for any unknown name (28P01), so sluice does too,
             * remembered as unknown, rather than fail the lookup (08006) and warn at each. */
            log_msg(LOG_DEBUG,
                    "auth_query: user \"%s\" is not valid in the server's encoding: "
                    "no such user",
                    j->user);
        } else if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            snprintf(why, sizeof(why), "%s", PQresultErrorMessage(res));
            error = why;
        }
        PQclear(res);
        if (error && error != qc->error) {
            snprintf(qc->error, sizeof(qc->error), "%s", error);
            error = qc->error;
        }
    }
    sockio_want(&qc->io, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void connect_step(struct qconn *qc)
{
    PostgresPollingStatusType st = PQconnectPoll(qc->conn);
    int fd = PQsocket(qc->conn);
    if (st != PGRES_POLLING_FAILED && fd != qc->io.fd) {
        /* libpq moved to another socket (next host, or a retry without TLS) */
        sockio_detach(&qc->io);
        if (sockio_open(&qc->io, qc->worker->loop, fd, qc, on_qconn_io) < 0) {
            qconn_lost(qc, "cannot watch the auth_query socket");
            return;
        }
    }
    switch (st) {
    case PGRES_POLLING_READING:
        sockio_want(&qc->io, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        sockio_want(&qc->io, UV_WRITABLE);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(qc->conn, 1) != 0) {
            qconn_lost(qc, PQerrorMessage(qc->conn));
            return;
        }
        qconn_run(qc, qc->job);
        return;
    default:
        qconn_lost(qc, PQerrorMessage(qc->conn));
        return;
    }
}

static void on_qconn_io(struct sockio *io, int status, int events)
{
    (void)status;
    (void)events;
    struct qconn *qc = io->owner;
    switch (qc->state) {
    case QCONN_RESOLVING: /* no socket yet */
        return;
    case QCONN_CONNECTING:
        connect_step(qc);
        return;
    case QCONN_QUERYING:
        query_step(qc);
        return;
    case QCONN_IDLE:
        /* nothing is due on an idle connection but its end (or a notice) */
        if (!PQconsumeInput(qc->conn) || PQstatus(qc->conn) != CONNECTION_OK)
            qconn_close(qc, "the server closed it");
        return;
    case QCONN_LEAVING: /* watched by on_leaving_io */
        return;
    }
}

/* Where auth_query runs: the database entry named by the client's entry's auth_dbname, else by
 * the main section's, else the client's (PgBouncer's order); as that entry's auth_user, else the
 * main section's; the query is the client's entry's auth_query, else the main section's. false:
 * auth_query is not configured for it. */
struct query_target {
    const char *query;
    const char *entry; /* the database entry's name as asked for (a "*" entry's: the client's) */
    const struct db_entry *db;
    const char *dbname;
    const char *auth_user;
};

static const char *db_keyword(const struct db_entry *db, const char *name)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], name) == 0)
            return db->pq_values[i];
    }
    return NULL;
}

static bool query_target(const struct config *cfg, const char *database, struct query_target *t)
{
    const struct db_entry *client_db = config_find_db(cfg, database);
    t->query = client_db && client_db->auth_query ? client_db->auth_query : cfg->auth_query;
    if (!t->query[0])
        return false;
    if (client_db && client_db->auth_dbname)
        t->entry = client_db->auth_dbname;
    else
        t->entry = cfg->auth_dbname[0] ? cfg->auth_dbname : database;
    t->db = config_find_db(cfg, t->entry);
    if (!t->db)
        return false;
    t->auth_user = t->db->auth_user && t->db->auth_user[0] ? t->db->auth_user : cfg->auth_user;
    if (!t->auth_user || !t->auth_user[0])
        return false;
    t->dbname = db_keyword(t->db, "dbname");
    if (!t->dbname)
        t->dbname = t->entry;
    return true;
}

#define MAX_KEYWORDS 64

/* The keywords of the target's connection (20 slots are kept for what follows the entry's and
 * for resolver_apply); their count.
 * The TCP settings' text is kept in *tcp. */
static int build_conninfo(const struct config *cfg, const struct query_target *t, const char **kw,
                          const char **val, struct tcp_keywords *tcp)
{
    int n = 0;
    for (int i = 0; i < t->db->nkeys && n < MAX_KEYWORDS - 20; i++) {
        const char *k = t->db->pq_keywords[i];
        if (strcmp(k, "user") == 0 || strcmp(k, "password") == 0 || strcmp(k, "dbname") == 0)
            continue;
        kw[n] = k;
        val[n++] = t->db->pq_values[i];
    }
    kw[n] = "dbname";
    val[n++] = t->dbname;
    kw[n] = "user";
    val[n++] = t->auth_user;
    const struct auth_entry *a = config_find_auth(cfg, t->auth_user);
    if (a && strncmp(a->secret, "md5", 3) != 0 && !scram_is_secret(a->secret)) {
        kw[n] = "password";
        val[n++] = a->secret;
    }
    /* server_tls_* as in server.c: the database entry's own keywords win */
    const char *tls_keys[4] = {"sslmode", "sslrootcert", "sslcert", "sslkey"};
    const char *tls_vals[4] = {sslmode_name(cfg->server_tls_sslmode), cfg->server_tls_ca_file,
                               cfg->server_tls_cert_file, cfg->server_tls_key_file};
    for (int i = 0; i < 4; i++) {
        if (tls_vals[i] && tls_vals[i][0] && !db_keyword(t->db, tls_keys[i])) {
            kw[n] = tls_keys[i];
            val[n++] = tls_vals[i];
        }
    }
    n = tcp_options_keywords(cfg, t->db, kw, val, n, tcp);
    kw[n] = "fallback_application_name";
    val[n++] = "sluice auth_query";
    kw[n] = NULL;
    val[n] = NULL;
    return n;
}

/* libpq's login, to the addresses r resolved (NULL: the entry names none to resolve). */
static void qconn_connect(struct qconn *qc, const struct resolver *r)
{
    const struct config *cfg = qc->worker->cfg;
    struct query_target t;
    if (!query_target(cfg, qc->job->database, &t)) {
        qconn_lost(qc, "auth_query is no longer configured for this database");
        return;
    }
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    struct tcp_keywords tcp;
    int n = build_conninfo(cfg, &t, kw, val, &tcp);
    if (r)
        resolver_apply(r, kw, val, &n);
    qc->state = QCONN_CONNECTING;
    qc->conn = PQconnectStartParams(kw, val, 0);
    if (!qc->conn || PQstatus(qc->conn) == CONNECTION_BAD) {
        qconn_lost(qc, qc->conn ? PQerrorMessage(qc->conn) : "out of memory starting a connection");
        return;
    }
    if (sockio_open(&qc->io, qc->worker->loop, PQsocket(qc->conn), qc, on_qconn_io) < 0) {
        qconn_lost(qc, "cannot watch the auth_query socket");
        return;
    }
    log_msg(LOG_DEBUG, "auth_query: connecting to \"%s\" as \"%s\"", t.dbname, t.auth_user);
    sockio_want(&qc->io, UV_WRITABLE);
}

static void on_qconn_resolved(struct resolver *r, void *owner)
{
    struct qconn *qc = owner;
    qc->resolving = NULL;
    if (resolver_error(r))
        qconn_lost(qc, resolver_error(r));
    else
        qconn_connect(qc, r);
    resolver_free(r);
}

/* Open a connection for j's target, j its first lookup (answered with why when it fails). */
static void qconn_open(struct worker *worker, struct secret_job *j)
{
    const struct config *cfg = worker->cfg;
    struct query_target t;
    if (!query_target(cfg, j->database, &t)) {
        slots->freed(worker, j->db_name, j->auth_user); /* the slot room_for took: unused */
        query_finish(j, "auth_query is no longer configured for this database");
        return;
    }
    struct qconn *qc = calloc(1, sizeof(*qc));
    if (!qc || !(qc->target = strdup(j->target)) || !(qc->db_name = strdup(j->db_name)) ||
        !(qc->auth_user = strdup(j->auth_user))) {
        if (qc) {
            free(qc->target);
            free(qc->db_name);
        }
        free(qc);
        slots->freed(worker, j->db_name, j->auth_user);
        query_finish(j, "out of memory");
        return;
    }
    qc->worker = worker;
    qc->io.fd = -1;
    qc->state = QCONN_RESOLVING;
    qc->since_ms = sluice_now(worker);
    qc->opened_ms = qc->since_ms;
    share_freed(j);
    qc->job = j;
    j->qc = qc;
    qc->next = qconns;
    qconns = qc;
    nqconns++;
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    struct tcp_keywords tcp;
    build_conninfo(cfg, &t, kw, val, &tcp);
    char why[300];
    int r = resolver_start(worker->loop, kw, val, on_qconn_resolved, qc, &qc->resolving, why,
                           sizeof(why));
    if (r < 0)
        qconn_lost(qc, why);
    else if (r > 0)
        qconn_connect(qc, NULL);
}

static struct qconn *idle_qconn(const char *target)
{
    for (struct qconn *qc = qconns; qc; qc = qc->next) {
        if (qc->state == QCONN_IDLE && (!target || strcmp(qc->target, target) == 0))
            return qc;
    }
    return NULL;
}

/* Take the slot under the caps for j's connection (qconn_open then holds it, or gives it back).
 * Another pool's idle server in the way is closed for it. */
static bool room_for(struct worker *worker, const struct secret_job *j)
{
    return slots->take(worker, j->db_name, j->auth_user);
}

/* Start what waits, oldest first: on an idle connection of its target, else on a new one while
 * the set and the caps have room (an idle connection of another target gives way). A lookup the
 * caps hold back waits; a connection given back on another worker wakes this one to try again
 * (secret_retry_lookups), else the background tick does. A worker holding a connection opens no
 * other while another worker's lookup waits for one: the room is that worker's, and this
 * worker's lookups wait for its own connections. A lookup held back past its address's share
 * starts only while none within a share waits (see the top of this file). */
static void query_dispatch(struct worker *worker)
{
    bool capped = false; /* held back by the caps: this worker waits for another's connection */
    bool progress = true;
    while (progress) {
        progress = false;
        capped = false;
        if (nqconns >= SECRET_QUERY_CONNECTIONS && !idle_qconn(NULL))
            break; /* every connection is busy: the next finished lookup comes back here */
        bool others_wait = false; /* a lookup within its address's share waits */
        for (const struct secret_job *j = query_jobs; j && !others_wait; j = j->next)
            others_wait = j->kind == JOB_QUERY && !j->qc && !j->held_back;
        for (struct secret_job *j = query_jobs; j; j = j->next) {
            if (j->kind != JOB_QUERY || j->qc || (j->held_back && others_wait))
                continue;
            struct qconn *qc = idle_qconn(j->target);
            if (qc) {
                qconn_run(qc, j);
                progress = true;
                break;
            }
            if (nqconns > 0 && slots->wanted_elsewhere(worker))
                break;
            if (nqconns >= SECRET_QUERY_CONNECTIONS) {
                qc = idle_qconn(NULL);
                if (!qc)
                    break;
                qconn_close(qc, "making room for a lookup elsewhere");
            }
            if (room_for(worker, j)) {
                qconn_open(worker, j);
                progress = true;
                break;
            }
            capped = true;
        }
    }
    if (!capped)
        slots->not_waiting(worker);
}

/* Whose share req's lookup counts in: its client's address, an IPv6 one's /64
 * (peer_addr_holder; "" for the unix socket or none). */
static void peer_of(const struct secret_request *req, char out[AUTH_QUERY_OPENER_LEN])
{
    out[0] = '\0';
    if (req->addr)
        peer_addr_holder(req->addr, out, AUTH_QUERY_OPENER_LEN);
}

/* Whether a new lookup for an address is held back: that address has its share waiting. */
static bool over_share(const char *peer)
{
    int waiting = 0;
    for (const struct secret_job *j = query_jobs; j; j = j->next) {
        if (j->kind == JOB_QUERY && !j->qc && strcmp(j->opener, peer) == 0)
            waiting++;
    }
    return waiting >= AUTH_QUERY_QUEUED_PER_ADDRESS;
}

static struct secret_job *query_job(struct worker *worker, const struct query_target *t,
                                    const char *key, const struct secret_request *req,
                                    const char **error)
{
    char peer[AUTH_QUERY_OPENER_LEN];
    peer_of(req, peer);
    const char *user = req->user, *database = req->database;
    for (struct secret_job *j = query_jobs; j; j = j->next) {
        if (j->kind == JOB_QUERY && strcmp(j->key, key) == 0) {
            /* a login from another address needs it too: no longer one address's excess (a
             * stranger who guessed a real user's name holds that user's login back no more) */
            if (strcmp(j->opener, peer) != 0)
                j->held_back = false;
            return j;
        }
    }
    if (worker->proc->phase != PHASE_RUNNING) {
        *error = "sluice is shutting down";
        return NULL;
    }
    struct secret_job *j = calloc(1, sizeof(*j));
    if (!j) {
        *error = "out of memory";
        return NULL;
    }
    j->kind = JOB_QUERY;
    j->worker = worker;
    j->key = strdup(key);
    j->user = strdup(user);
    j->query = strdup(t->query);
    j->database = strdup(database);
    j->db_name = strdup(t->entry);
    j->auth_user = strdup(t->auth_user);
    size_t tlen = strlen(t->entry) + strlen(t->dbname) + strlen(t->auth_user) + 3;
    j->target = malloc(tlen);
    if (!j->key || !j->user || !j->query || !j->database || !j->db_name || !j->auth_user ||
        !j->target) {
        secret_job_free(j);
        *error = "out of memory";
        return NULL;
    }
    snprintf(j->target, tlen, "%s\x01%s\x01%s", t->entry, t->dbname, t->auth_user);
    memcpy(j->opener, peer, sizeof(j->opener));
    j->held_back = over_share(peer);
    secret_job_append(&query_jobs, j);
    log_msg(LOG_DEBUG, "auth_query: looking up user \"%s\" as \"%s\" in database \"%s\"%s", user,
            t->auth_user, t->dbname,
            j->held_back ? " (held back: its client's address has lookups waiting)" : "");
    return j;
}

int secret_query_servers(const char *db_name, const char *user_name)
{
    int n = 0;
    const struct qconn *lists[] = {qconns, leaving_qconns}; /* a LEAVING one holds its slot */
    for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
        for (const struct qconn *qc = lists[k]; qc; qc = qc->next) {
            if ((!db_name || strcmp(qc->db_name, db_name) == 0) &&
                (!user_name || strcmp(qc->auth_user, user_name) == 0))
                n++;
        }
    }
    return n;
}

void secret_tick(struct worker *worker, uint64_t now)
{
    /* a backend that has not closed its end by now is let go of: its slot is given back */
    for (struct qconn **pp = &leaving_qconns; *pp;) {
        struct qconn *qc = *pp;
        if (now - qc->since_ms < QCONN_LEAVING_WAIT_MS) {
            pp = &qc->next;
            continue;
        }
        *pp = qc->next;
        qconn_free(qc);
    }
    uint64_t limit = (uint64_t)worker->cfg->server_connect_timeout;
    struct qconn *qc = qconns;
    while (qc) {
        struct qconn *next = qc->next;
        uint64_t age = now - qc->since_ms;
        if (qc->state == QCONN_IDLE && age >= SECRET_QUERY_IDLE_MS) {
            qconn_close(qc, "idle");
        } else if (qc->state != QCONN_IDLE && limit > 0 && age >= limit) {
            struct secret_job *j = qc->job;
            char why[160];
            snprintf(why, sizeof(why), "no answer within %llu ms (server_connect_timeout)",
                     (unsigned long long)limit);
            qconn_close(qc, why);
            if (j)
                query_finish(j, why);
            next = qconns; /* query_finish may have closed or opened others: start over */
        }
        qc = next;
    }
    give_idle_elsewhere(worker);
    query_dispatch(worker);
}

void secret_retry_lookups(struct worker *worker)
{
    query_dispatch(worker);
}

/* The key of req's lookup: (database entry, dbname, auth_user, user, query: two client entries
 * may ask the same target different queries). NULL when out of memory. */
static char *query_key(const struct query_target *t, const struct secret_request *req)
{
    size_t klen = strlen(t->db->name) + strlen(t->dbname) + strlen(t->auth_user) +
                  strlen(req->user) + strlen(t->query) + 5;
    char *key = malloc(klen);
    if (key)
        snprintf(key, klen, "%s\x01%s\x01%s\x01%s\x01%s", t->db->name, t->dbname, t->auth_user,
                 req->user, t->query);
    return key;
}

enum auth_query_answer auth_query_find(struct secret_waiter *w, const char **secret,
                                       const char **error)
{
    struct query_target t;
    if (w->req.admin || !query_target(w->req.worker->cfg, w->req.database, &t))
        return AUTH_QUERY_NOT_USED;
    char *key = query_key(&t, &w->req);
    if (!key) {
        *error = "out of memory";
        return AUTH_QUERY_FAILED;
    }
    if (answering && strcmp(answering->key, key) == 0) {
        free(key);
        *secret = answering->answered ? answering->found : NULL;
        return AUTH_QUERY_ANSWERED;
    }
    if (known_unknown(key, sluice_now(w->req.worker))) {
        free(key);
        *secret = NULL;
        return AUTH_QUERY_ANSWERED;
    }
    struct secret_job *j = query_job(w->req.worker, &t, key, &w->req, error);
    free(key);
    if (!j)
        return AUTH_QUERY_FAILED;
    secret_job_attach(j, w);
    if (!j->qc)
        query_dispatch(w->req.worker);
    return AUTH_QUERY_WAITING;
}

bool auth_query_held_back(const struct secret_job *j)
{
    return j->kind == JOB_QUERY && j->held_back && !j->qc;
}

void auth_query_abandon(struct secret_job *j)
{
    /* nobody needs the answer and it has not started: forget it. One that runs finishes (a user
     * not found is remembered: a stranger who leaves at once still costs one lookup, not a
     * connection). */
    if (j->qc)
        return;
    struct worker *worker = j->worker;
    share_freed(j);
    secret_job_unlink(&query_jobs, j);
    secret_job_free(j);
    for (const struct secret_job *o = query_jobs; o; o = o->next) {
        if (o->kind == JOB_QUERY && !o->qc)
            return; /* still waiting */
    }
    /* no lookup left to wait: a note of waiting would hold the other workers back until this
     * worker's tick (ledger_take_own) */
    slots->not_waiting(worker);
}

void auth_query_reload(void)
{
    auth_query_clear();
    /* auth_user, its password or the database entry may have changed */
    struct qconn *qc = qconns;
    while (qc) {
        struct qconn *next = qc->next;
        if (qc->state == QCONN_IDLE)
            qconn_close(qc, "the configuration was reloaded");
        else
            qc->retired = true;
        qc = next;
    }
}

void auth_query_end_all(const char *why)
{
    /* At the end nothing waits to read a backend's close (its leaving would be freed below at
     * once): PQfinish says goodbye and closes. No second descriptor either: dup() at shutdown
     * could take the number of an ended worker's epoll descriptor, which libuv closed with a
     * raw system call ThreadSanitizer does not see, and it reported a race with that worker's
     * epoll_wait (CI, test_workers_auth_query). */
    while (qconns) {
        struct qconn *qc = qconns;
        qconn_unlink(qc, why);
        qconn_free(qc);
    }
    while (leaving_qconns) {
        struct qconn *qc = leaving_qconns;
        leaving_qconns = qc->next;
        qconn_free(qc);
    }
    while (query_jobs) {
        /* a waiter's end may change the list: take the head each time */
        struct secret_job *j = query_jobs;
        query_jobs = j->next;
        secret_job_wake(j, why);
        secret_job_free(j);
    }
}
