/* server: one backend connection — libpq login, then raw protocol on libpq's socket; its state
 * machine, internal queries (reset, check, parameter sync), and closing. */
#ifndef SLUICE_SERVER_H
#define SLUICE_SERVER_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "codec.h"
#include "list.h"
#include "log.h"
#include "login_reset.h"
#include "params.h"
#include "prepared.h"
#include "relay.h"
#include "server_connect.h" /* a new server until it serves: server_connect, ... */
#include "sockio.h"

/* One field says what a server is doing. The connecting states come first, in the order a new
 * server goes through them (each after RESOLVING may be skipped); all of them count against the
 * caps from the first moment, sit on the pool's connecting list and have server_connect_timeout.
 * The transitions are checked by server_transition_ok (the table in server_state.c). */
enum server_state {
    SERVER_RESOLVING,         /* its host names are resolved off the loop (resolver.c); with none
                                 to resolve it moves on at once */
    SERVER_LOGIN,             /* libpq connects and logs in (PQconnectPoll) */
    SERVER_LOGIN_PASSTHROUGH, /* server_login.c connects and logs in with a client's keys */
    SERVER_PROBING,           /* logged in; reading max_connections (server_probe_sql) */
    SERVER_CONNECT_QUERY,     /* logged in; running the database entry's connect_query */
    SERVER_IDLE,              /* in its pool, free */
    SERVER_ACTIVE,            /* linked to a client */
    SERVER_CHECKING,   /* idle past server_check_delay, a client waiting: its server_check_query
                          runs before reuse (pool.c's dispatch). Free again when it is answered;
                          closed if it fails */
    SERVER_RESETTING,  /* running sluice's own queries at release: the rollback, reset query,
                          DISCARD ALL or the rest of a sync. Free again when they are done */
    SERVER_CANCEL_WAIT, /* its own queries are done, but a cancel sent for its last client's
                           query has not landed yet: given to another client now, it could
                           cancel that client's query. Free again when the cancel is done */
    SERVER_DRAINING,   /* its client left mid-query (link.c decided): the query was cancelled,
                          or after the client's Terminate is left to finish; its replies are
                          dropped until it is over, then it is cleaned (RESETTING). Listed with
                          the resetting servers: it is on its way back to the pool */
    SERVER_LEAVING,    /* Terminate sent to make room under a cap: still counted against the
                          caps until the backend has exited (its socket closes) */
    SERVER_MOVING,     /* idle, on its way to another worker's pool of its key (handover.c,
                          architecture.md 5.4): on no list, in no loop's poll, still counted
                          against the caps (its slot moves with it); the receiving worker
                          frees it (pool_server_ready) or closes it */
    SERVER_CLOSED,     /* closed; freed at the end of the loop iteration (or when the last cancel
                          sent for it is done) */
};
/* The state's own name, for logs. */
const char *server_state_name(enum server_state s);
/* The name SHOW SERVERS gives it: every connecting state is "connecting" there, and CHECKING
 * and CANCEL_WAIT are "resetting" (sluice's own business before the server is free again). */
const char *server_state_shown(enum server_state s);
/* RESOLVING up to CONNECT_QUERY: not yet serving, counted against the caps, on the connecting
 * list. */
bool server_state_is_connecting(enum server_state s);
/* Whether server_set_state may move a server from one state to the other (else sluice aborts). */
bool server_transition_ok(enum server_state from, enum server_state to);

/* Whether sluice's records (params, stmts) account for all the session state a client left on
 * the backend. In transaction mode a client may change what sluice cannot name or undo piecemeal
 * (SET ROLE, set_config of a computed name, LISTEN, ...): then only a full reset (DISCARD ALL) at
 * release makes the backend fit for the next client. Temporary objects alone need less: DISCARD
 * TEMP drops them and keeps what sluice follows (the backend's prepared statements, its
 * parameters), which a full reset would make every later client prepare and set again. In
 * order: a server needing more never goes back to needing less before its reset. */
enum server_session {
    SERVER_SESSION_FOLLOWED,     /* the records are enough: the next client's sync fixes the rest */
    SERVER_SESSION_TEMP_OBJECTS, /* and temporary objects: DISCARD TEMP before it serves again */
    SERVER_SESSION_UNKNOWN,      /* DISCARD ALL before anyone gets it again (pool_queue_cleanup) */
};

struct pool;
struct client;
struct cancel_job;
struct ledger_key;
struct worker;

/* A portal bound from a statement that drops statements, and what it drops at its Execute
 * (server.portal_drops). */
struct portal_drop {
    char portal[STMT_KEY_MAX + 1];
    struct stmt_drop drop;
};

struct server {
    struct list_node node; /* on its pool's list for its state, or the dead list */
    struct pool *pool;
    uint64_t id;
    enum server_state state;
    PGconn *conn;
    struct sockio io;
    struct buf in;
    struct framer rx;
    struct msg_out out;    /* sluice's own messages, written before any client bytes */
    uint32_t out_pos;
    struct client *client; /* while ACTIVE */
    /* The pool mode it serves under: its present or last client's (link_pair), so that a
     * reload's pool_mode never changes the rules of a link in the middle of it; the pool's
     * until its first client. */
    enum pool_mode mode;
    struct budget *lease_budget; /* the budget this link is charged to */

    struct param_set params; /* the backend's current session parameters */
    /* The startup parameters its backend was opened with (its only owner): a session-mode
     * client's login parameters, so that Postgres's own reset values (RESET, DISCARD ALL,
     * SET ... TO DEFAULT) are that client's; empty: the pool's own. Reported names hold the
     * backend's spelling once it logged in. startup_fp: params_startup_fingerprint of them as
     * the client sent them; the pool gives a client a server whose startup_fp it wants
     * (pool_startup_wanted). */
    struct param_set startup;
    uint64_t startup_fp;
    /* What the backend reported at login: its reset values of the reported parameters. A
     * client's sync and welcome start from them where the pool has learnt no welcome (its
     * backends were all opened with reported startup parameters, DateStyle, TimeZone, ...). */
    struct param_set login_reports;
    struct stmt_map stmts;   /* named statements prepared on the backend (transaction mode) */
    struct stmt_queue reqs;  /* Parse/Close/Sync sent, awaiting replies (transaction mode) */
    /* The names its client prepared by SQL PREPARE, which the backend holds under those names
     * until its next full reset (PREPARE leaves the session unknown): a protocol Parse of one
     * reaches the backend unrenamed, so that it refuses it (42P05) as Postgres would
     * (transaction mode). Names only; the definitions are the backend's. */
    struct stmt_map sql_prepared;
    uint64_t unnamed_of;     /* the client (its id) whose Parse made the backend's unnamed
                              * statement; 0: none a client may Bind unasked (transaction mode) */
    /* While unnamed_of is its client: the client's statement the unnamed statement's text
     * EXECUTEs (EXECUTE, EXPLAIN EXECUTE), by the client's key and by sluice's name, which the
     * text names. Postgres first needs the statement at the unnamed statement's Bind or
     * Describe, not at its Parse: sluice prepares it there (transaction mode; "": none). */
    char unnamed_executes[STMT_KEY_MAX + 1];
    char unnamed_executes_as[STMT_KEY_MAX + 1];
    /* While unnamed_of is its client: what the unnamed statement's text drops when it runs
     * (transaction mode). */
    struct stmt_drop unnamed_drop;
#define SERVER_PORTAL_DROPS_MAX 1024
    /* The portals bound from a statement that drops statements, and what each drops at its
     * Execute (malloc'd, grown as Binds come, kept for the server's life); forgotten once the
     * server is idle outside a transaction block, when every portal is gone (transaction
     * mode). A client that binds more than SERVER_PORTAL_DROPS_MAX such portals at once is
     * failed (54000) rather than followed less exactly. */
    struct portal_drop *portal_drops;
    uint32_t portal_drops_count, portal_drops_cap;
    uint64_t params_fp;      /* params_fingerprint of params, as of params_fp_gen */
    uint32_t params_fp_gen;

    char txn_status;       /* from the last ReadyForQuery: 'I', 'T' or 'E' */
    int inflight;          /* ReadyForQuery still due for the client's Query/Sync/FunctionCall */
    int swallow;           /* ReadyForQuery still due for sluice's own queries (not forwarded) */
    bool batch_open;       /* client sent extended-protocol messages since its last Sync */
    enum server_session session; /* does a full reset have to run at release? */
    int cancels_in_flight; /* cancel requests sent for this backend and not yet done, or
                              deferred: the client's next bytes wait for them (ACTIVE), the
                              server does between clients (CANCEL_WAIT), the struct is freed
                              after them */
    /* Cancels asked for while sluice's own statements ran (swallow > 0), not sent yet: they
     * would stop those instead of the client's request (cancel.c). Released by the relay when
     * swallow is back to 0, answered unsent by server_close. Empty whenever swallow is 0. */
    struct cancel_job *deferred_cancels;
    /* ReadyForQuery forwarded for the client's requests (relay.c; never sluice's own): a
     * deferred cancel is sent again only for the request it was released for (cancel.c). */
    uint64_t requests_answered;
    bool close_when_free;  /* lifetime ended or reload changed its pool: close at release */
    uint64_t conninfo_fp;  /* conninfo_fingerprint of the settings it was made with (reload) */
    bool said_fatal;       /* its client was given the server's own FATAL (or PANIC): the
                              close that follows is told with nothing of sluice's */
    bool copy_in;          /* the backend is in COPY FROM STDIN: from its CopyInResponse until
                              the client's CopyDone/CopyFail (or ReadyForQuery) */
    int executes_unanswered;    /* Executes forwarded and not yet answered (CommandComplete,
                                 * EmptyQueryResponse, PortalSuspended; an error answers them all).
                                 * Exact while inflight is 0; while a Query is answered its own
                                 * CommandComplete cannot be told from an Execute's, and the count
                                 * keeps at least executes_after_request (relay.c). Read only by
                                 * relay_pair_wait (idle_transaction_timeout: is the server waiting
                                 * for the client?); a client that leaves is judged by its bytes
                                 * alone (relay_client_mid_message) */
    int executes_after_request; /* those forwarded after the client's last Query, FunctionCall or
                                 * Sync: answered only once every ReadyForQuery due has come */
    int syncs_after_execute; /* Syncs forwarded since the client's last Query or Execute: if that
                              * started a COPY FROM STDIN, Postgres ignored them */
    bool only_syncs_after_execute;  /* and nothing but Syncs and Flushes came after it: then the
                                     * COPY swallowed every one of them (no CopyDone or CopyFail
                                     * sent ahead of the CopyInResponse ended it before one) */
    struct login_reset login_reset; /* the client's request that may reset login parameters */

    int backend_pid;
    uint64_t connect_ms;
    uint64_t state_since_ms;
    uint64_t connect_start_ms;
    uint64_t last_ready_ms; /* when the last ReadyForQuery came (idle_transaction_timeout) */
    uint64_t last_bytes_ms; /* when either side of the pair last sent bytes (a stalled client) */
    uint64_t query_start_ms; /* when inflight went from 0 to 1 (query_timeout) */
    uint64_t xact_start_ms;  /* when the current transaction's first query was sent */
    bool timeout_cancel_sent; /* a cancel was sent for the query in flight (query_timeout,
                                 draining): not twice for one query; cleared by its end */
    struct pool *room_for;  /* LEAVING: the pool that waits for the slot it frees */
    /* LEAVING, closed for another worker's waiters (server_close_for_worker): the key and the
     * worker the freed slot goes to (ledger_give_server_for); room_key NULL: none. */
    struct ledger_key *room_key;
    int room_worker;
    /* While MOVING: its sender's count of the console commands that concern its database when
     * it left (ledger_controls_seen), so the receiver knows whether one reached it on neither
     * side (handover.c). */
    unsigned controls_seen;
    struct server_login *login; /* a passthrough login (no libpq; s->conn is NULL): its state,
                                 * then its cancel target and TLS session for the server's life */
    struct resolver *resolving; /* RESOLVING: the look-up of its host names (resolver.c) */
};

/* What a logged-in server tells the layer that links it to clients (link.c's
 * link_server_events, installed by sluice.c as worker->server_events): server.c knows that it may
 * have a client, not what a pairing is. */
struct server_events {
    /* A socket event of a logged-in server (the relay's, with a client or not). */
    void (*io)(struct server *s, int status, int events);
    /* s is being closed by its own code (KILL, reload, timeouts, room for another pool) while
     * linked: the pair is taken apart, the client is not touched. */
    void (*closing)(struct server *s);
    /* server_fast_close is due for linked s (its transaction is over): s and its client end. */
    void (*fast_close_due)(struct server *s);
};

/* A log line about s, prefixed with its identity: S-<id> db/user (conn_log.c). */
void log_server(enum log_level level, const struct server *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The socket callback of a logged-in server (server_connect.c's own serves the connecting
 * states and hands the socket over at login): the relay's, or LEAVING's wait for the end. */
void server_on_io(struct sockio *io, int status, int events);
/* Move s to next (checked by server_transition_ok), onto its pool's list for next. */
void server_set_state(struct server *s, enum server_state next);
/* Close and free; reason is for the log. */
void server_close(struct server *s, const char *reason);
/* Close a logged-in server so that room_for (or any pool) may open one in its place under a
 * shared cap: the backend is asked to end and the server keeps counting against the caps until
 * Postgres has let it go (see SERVER_LEAVING). */
void server_close_for(struct server *s, const char *reason, struct pool *room_for);
/* As server_close_for, the slot freed for another worker's waiters of key room_key (the
 * idle-server handover: ledger_claim_idle said LEDGER_CLAIM_CLOSE). */
void server_close_for_worker(struct server *s, const char *reason, struct ledger_key *room_key,
                             int room_worker);
/* A MOVING server that never reached a pool (its receiver's mailbox closed with it queued):
 * close its connection, give its slot back in key and free it, on the receiver's thread. */
void server_discard_moved(struct server *s, struct worker *worker, struct ledger_key *key);
/* Queue a query of sluice's own; its replies are swallowed (the relay consumes them while
 * s->swallow > 0). Inline: the relay, the link and the pool queue them without calling up. */
static inline void server_queue_internal(struct server *s, const char *sql)
{
    codec_put_query(&s->out, sql);
    s->swallow++;
}
/* Whether the query of a draining server's client is cancelled: a client that vanished will not
 * read its answer; one that sent Terminate asked for what it sent to run, as Postgres runs every
 * message read before a Terminate (protocol 55.2.4). Either way server_drain_timeout bounds it. */
enum drain_query { DRAIN_CANCEL_QUERY, DRAIN_LET_QUERY_FINISH };
/* Its client left mid-query (link.c, which made the stream whole): DRAINING until it is over. */
void server_drain(struct server *s, enum drain_query how);
/* May its backend be running a query: a Query, Sync or FunctionCall unanswered, or an extended
 * batch (its Execute runs at once) without its Sync. */
static inline bool server_backend_busy(const struct server *s)
{
    return s->inflight > 0 || s->batch_open;
}
/* Close a linked server whose client left where its stream cannot be made whole (in the middle
 * of a message). A busy backend (server_backend_busy) goes on with its query after sluice closes
 * its socket (Postgres notices a gone client only when it next reads or writes), so closing at
 * once would free its slot while Postgres still counts the backend, and a new server could pass
 * the caps. Instead its query is cancelled, the socket's write side shut (no Terminate: the
 * backend would read it as the rest of the cut message; it reads end-of-file and exits), and it
 * stays LEAVING, counted against the caps and its budget, until its end of the socket closes (at
 * most SERVER_LEAVING_WAIT_MS). A backend not busy is closed at once. */
void server_abandon(struct server *s, const char *reason);
/* Give back the budget lease a server kept after its client left (link.c): when its drained
 * query ends or it closes. Nothing when it holds none. */
void server_return_lease(struct server *s);
/* Pump a server that has no client (its own queries, a notice) and act on what the relay says. */
void server_kick(struct server *s);
/* What the relay reported for a server with no client: it closes when lost, else goes on
 * resetting or waits for its socket. */
void server_pumped(struct server *s, enum relay_result r, const struct relay_outcome *o);
/* Set its poll interest while it has no client (IDLE, CHECKING, RESETTING, CANCEL_WAIT,
 * DRAINING). */
void server_want_io(struct server *s);
/* Called when sluice's own work on a server between clients may have moved on (a reply read,
 * a cancel done): DRAINING -> RESETTING once the orphaned query and its cancel are over,
 * RESETTING -> CANCEL_WAIT once only a cancel is left, and back to the pool (pool_server_ready)
 * once nothing is (CHECKING: once its check is answered). */
void server_maybe_done_resetting(struct server *s);
/* Background checks: connect timeout, idle timeout, lifetime. */
void server_check_timeouts(struct server *s, uint64_t now);

#endif
