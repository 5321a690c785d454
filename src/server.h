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
#include "sockio.h"

enum server_state {
    SERVER_CONNECTING, /* libpq connect and login in progress */
    SERVER_IDLE,       /* in its pool, free */
    SERVER_ACTIVE,     /* linked to a client */
    SERVER_RESETTING,  /* running sluice's own query (reset, rollback, check) or waiting for a
                          cancel to land; free again when that is done */
    SERVER_LEAVING,    /* Terminate sent to make room under a cap: still counted against the
                          caps until the backend has exited (its socket closes) */
    SERVER_CLOSED,     /* closed; freed at the end of the loop iteration (or when the last cancel
                          sent for it is done) */
};
const char *server_state_name(enum server_state s);

/* The queries a libpq login runs before the server may serve, in this order. */
enum login_query {
    LOGIN_QUERY_NONE,    /* libpq's login still in progress (or done) */
    LOGIN_QUERY_PROBE,   /* reading max_connections for NN% caps */
    LOGIN_QUERY_CONNECT, /* the database entry's connect_query */
};

/* Whether sluice's records (params, stmts) account for all the session state a client left on
 * the backend. In transaction mode a client may change what sluice cannot name or undo piecemeal
 * (SET ROLE, set_config of a computed name, LISTEN, a temporary table, ...): then only a full
 * reset (DISCARD ALL) at release makes the backend fit for the next client. */
enum server_session {
    SERVER_SESSION_FOLLOWED, /* the records are enough: the next client's sync fixes the rest */
    SERVER_SESSION_UNKNOWN,  /* DISCARD ALL before anyone gets it again (pool_queue_cleanup) */
};

struct pool;
struct client;

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
    struct budget *lease_budget; /* the budget this link is charged to */

    struct param_set params; /* the backend's current session parameters */
    struct stmt_map stmts;   /* named statements prepared on the backend (transaction mode) */
    struct stmt_queue reqs;  /* Parse/Close/Sync sent, awaiting replies (transaction mode) */
    uint64_t params_fp;      /* params_fingerprint of params, as of params_fp_gen */
    uint32_t params_fp_gen;

    char txn_status;       /* from the last ReadyForQuery: 'I', 'T' or 'E' */
    int inflight;          /* ReadyForQuery still due for the client's Query/Sync/FunctionCall */
    int swallow;           /* ReadyForQuery still due for sluice's own queries (not forwarded) */
    bool batch_open;       /* client sent extended-protocol messages since its last Sync */
    enum server_session session; /* does a full reset have to run at release? */
    int cancels_in_flight; /* cancel requests sent for this backend and not yet done */
    bool close_when_free;  /* lifetime ended or reload changed its pool: close at release */
    uint64_t conninfo_fp;  /* conninfo_fingerprint of the settings it was made with (reload) */
    bool draining;         /* RESETTING: its client left mid-query; its replies are dropped */
    bool copy_in;          /* the backend is in COPY FROM STDIN: from its CopyInResponse until
                              the client's CopyDone/CopyFail (or ReadyForQuery) */
    int executes_unanswered; /* Executes forwarded and not yet answered (CommandComplete,
                              * EmptyQueryResponse, PortalSuspended; an error answers them all) */
    int syncs_after_execute; /* Syncs forwarded since the client's last Query or Execute: if that
                              * started a COPY FROM STDIN, Postgres ignored them */
    struct login_reset login_reset; /* the client's request that may reset login parameters */

    int backend_pid;
    uint64_t connect_ms;
    uint64_t state_since_ms;
    uint64_t connect_start_ms;
    uint64_t last_ready_ms; /* when the last ReadyForQuery came (idle_transaction_timeout) */
    uint64_t last_bytes_ms; /* when either side of the pair last sent bytes (a stalled client) */
    uint64_t query_start_ms; /* when inflight went from 0 to 1 (query_timeout) */
    uint64_t xact_start_ms;  /* when the current transaction's first query was sent */
    bool timeout_cancel_sent;
    enum login_query login_query; /* CONNECTING: libpq is in, running one of sluice's queries */
    struct pool *room_for;  /* LEAVING: the pool that waits for the slot it frees */
    struct server_login *login; /* a passthrough login (no libpq): its state, then its cancel
                                 * target and TLS session for the server's life */
    struct resolver *resolving; /* CONNECTING: its host names are being resolved (resolver.c),
                                 * before libpq or the passthrough login starts */
};

/* A log line about s, prefixed with its identity: S-<id> db/user. */
void log_server(enum log_level level, const struct server *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The socket callback of every server (libpq login, passthrough login, then the relay). */
void server_on_io(struct sockio *io, int status, int events);
/* The pool does not know its server's max_connections yet (or a reload asked again): run
 * server_probe_sql first, hand its one value to server_probe_store, then call
 * server_probe_answered (false: NN% caps need it and it gave nothing usable; s was failed). */
extern const char server_probe_sql[];
bool server_needs_probe(const struct server *s);
/* The database entry's connect_query for a new server of this pool, or NULL. */
const char *server_connect_query(const struct server *s);
/* connect_query failed (an ErrorResponse): the server is closed as a failed login. */
void server_connect_query_failed(struct server *s, const char *message);
void server_probe_store(struct pool *p, const char *value);
bool server_probe_answered(struct server *s);
/* Logged in (by libpq or server_login.c), parameters and backend pid known: into the pool. */
void server_logged_in(struct server *s);
/* Start a new connection for the pool (state CONNECTING). NULL when it could not even start. */
struct server *server_connect(struct pool *pool);
void server_set_state(struct server *s, enum server_state next);
/* Reload: servers of p made with other connection settings than the pool's database entry
 * now gives (host, port, dbname, user, password, TLS, any libpq keyword) close, idle ones now
 * and busy ones when released, so new transactions reach the new target. Unchanged ones stay. */
void server_retire_changed(struct pool *p);
/* Close and free; reason is for the log. */
void server_close(struct server *s, const char *reason);
/* Close a logged-in server so that room_for (or any pool) may open one in its place under a
 * shared cap: the backend is asked to end and the server keeps counting against the caps until
 * Postgres has let it go (see SERVER_LEAVING). */
void server_close_for(struct server *s, const char *reason, struct pool *room_for);
/* A connection that never got to serve (connect, login, probe): close it and tell its pool, which
 * backs off and answers its waiting clients with why. */
void server_connect_failed(struct server *s, const char *why);
/* The server answered the login with an ErrorResponse: why for the log, sqlstate and message
 * as the server sent them. A refusal that retrying will not mend reaches the pool's waiting
 * clients as the server's own FATAL; anything else (too many clients, starting up) is a failed
 * connect. */
void server_login_error(struct server *s, const char *why, const char *sqlstate,
                        const char *message);
/* Queue a query of sluice's own; its replies are swallowed. */
void server_queue_internal(struct server *s, const char *sql);
/* Its client left: decide whether it can be cleaned (rollback) and reused, or must close. A query
 * under way is cancelled and the server drained. */
void server_client_gone(struct server *s);
/* Its client sent Terminate: the same, except that what the client sent before the Terminate
 * runs to completion (drained within server_drain_timeout, never cancelled). */
void server_client_terminated(struct server *s);
/* Sluice's own work on it finished (swallow and cancels at zero): back to the pool. */
void server_maybe_done_resetting(struct server *s);
/* Background checks: connect timeout, idle timeout, lifetime. */
void server_check_timeouts(struct server *s, uint64_t now);

#endif
