/* pool: the servers and waiting clients of one (database, user) pair. Leases a server to a
 * client (an idle one, or a new connection when the caps allow), queues clients FIFO when none
 * is free, takes servers back and hands them to the next waiter. */
#ifndef SLUICE_POOL_H
#define SLUICE_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "budget.h"
#include "config.h"
#include "error.h"
#include "list.h"
#include "params.h"

struct worker;
struct client;
struct server;
struct ledger_key;

/* What sluice ran on a server of the pool before it served again (pool_queue_cleanup), one count
 * per statement queued: /metrics sluice_server_cleanups_total{kind}. It shows what an
 * application's session state costs: each is a round trip the server waits for before the next
 * client gets it. */
enum pool_cleanup {
    POOL_CLEANUP_ROLLBACK,     /* the client left with a transaction open */
    POOL_CLEANUP_RESET_QUERY,  /* server_reset_query, where the pool mode runs it */
    POOL_CLEANUP_DISCARD_ALL,  /* state no record undoes (server.h, SERVER_SESSION_UNKNOWN) */
    POOL_CLEANUP_DISCARD_TEMP, /* temporary objects alone (SERVER_SESSION_TEMP_OBJECTS) */
    POOL_CLEANUP_IDLE_SESSION_TIMEOUT, /* the client's value given back (params_acts_while_idle) */
    POOL_CLEANUP_KINDS,
};
/* The kind's label: rollback, server_reset_query, discard_all, discard_temp,
 * idle_session_timeout. */
const char *pool_cleanup_name(enum pool_cleanup k);

/* Histogram buckets (upper bounds in milliseconds; the last bucket is +Inf). */
#define POOL_HIST_BUCKETS 13
extern const uint64_t pool_hist_bounds_ms[POOL_HIST_BUCKETS - 1];

/* The pool's circuit breaker (pool.c is its only owner). CLOSED while the database takes
 * connections. OPEN once a connection attempt fails while the pool has no server: clients that
 * need a server fail after server_down_wait (SQLSTATE 57P03, the database's reason and how long
 * it has been down) instead of waiting query_wait_timeout, and the backoff spaces the attempts.
 * PROBING while the one attempt that tests the database is in flight: its failure opens the
 * breaker again, its success closes it and the waiting clients are served. */
enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_PROBING };
const char *breaker_state_name(enum breaker_state s);

struct breaker {
    enum breaker_state state;
    int failures;            /* connection attempts failed in a row (the backoff grows with it) */
    uint64_t next_try_ms;    /* no connection attempt before this */
    uint64_t down_since_ms;  /* when it last opened */
    char *last_error;        /* the database's reason for the last failed attempt */
};

/* What paused a pool: the message a waiter gets names the command. */
enum pool_pause_cause { PAUSED_BY_PAUSE, PAUSED_BY_KILL };

struct pool {
    struct list_node node;
    struct worker *worker;
    char *db_name;     /* client-visible database name */
    char *user_name;   /* the user servers log in as: the client's, or the database's forced
                        * user= (all clients of such a database share one pool) */
    char *target_db;   /* the upstream dbname (the client's name for a "*" entry) */

    /* Effective settings, recomputed on reload. */
    enum pool_mode mode;
    int size;
    int min_size;
    int reserve_size;
    struct entry_timeouts timeouts; /* [users] over [databases] over the main section */
    bool user_forced;     /* the database entry names the user: the pool exists from start */
    bool is_admin;        /* the admin console's pseudo-pool: never has servers */
    /* The server's max_connections - superuser_reserved_connections (for NN% caps); 0 until a
     * server of this pool has told it (server_probe_sql), with the two numbers behind it. */
    int server_usable;
    int server_max_connections, server_reserved;
    bool probe_again;     /* reload: read it again from the next server */
    /* The idle_session_timeout a new session of the pool's role gets (ALTER ROLE/DATABASE ...
     * SET, postgresql.conf) as SHOW gives it, read by the same probe ("" when 0): the welcome
     * hands it to each client as a login value (pool_learn_welcome). Once one was not 0, its
     * servers log in with it off (idle_off: server_connect.c IDLE_OFF_OPTION). */
    char role_idle_session_timeout[64];
    bool idle_off;

    struct ledger_key *ledger_key; /* its slots in the ledger (every server holds one) */
    /* Servers by state. */
    struct list connecting, idle, active, resetting, leaving;
    int rooms_awaited; /* LEAVING servers (of any pool) closed to make room for this one */
    /* Workers > 1: whether its need may be in the ledger's wait list (note_slot_wait). A hint
     * that spares a served pool the ledger's lock on every lease: the ledger may have taken
     * the entry off already (a give woke it), and withdrawing it then finds nothing. */
    enum pool_slot_wait { POOL_SLOT_WAIT_NONE, POOL_SLOT_WAIT_NOTED } slot_wait;
    /* Clients by state (LOGIN_WAIT and WAITING share the FIFO). */
    struct list waiting, idle_clients, active_clients;
    /* Of those, the clients whose servers are opened with their startup parameters in every
     * mode (client.h startup_scope; counted by client_set_state): while there is one, a
     * transaction or statement pool matches servers to waiters by startup fingerprint as a
     * session pool does (pool_matches_startup); with none it keeps the plain FIFO. */
    int every_mode_startup_clients;

    /* When its worker last saw it with a client or a server (autodb.c; sluice_now; 0: not
     * looked at yet). A hint: the ledger says whether its database is unused. */
    uint64_t last_used_ms;

    /* PAUSE or KILL: no server is handed out (clients queue) until RESUME. */
    bool paused;
    enum pool_pause_cause paused_by; /* which command paused it, for the waiters' message */

    struct param_set welcome; /* what a server reported at login: sent to new clients */
    bool have_welcome;
    /* conninfo_fingerprint of the settings the welcome is (to be) learnt from: a reload that
     * changes them (a database entry's client_encoding=, timezone=, host=...) drops the
     * welcome, so new clients are told what the new servers report. 0: not reloaded yet. */
    uint64_t welcome_fp;
    /* conninfo_fingerprint of its settings when it last opened a server or was reloaded (0:
     * neither yet): a reload that changes it was a change of host, port, dbname, ... */
    uint64_t conninfo_fp;
    struct param_set accepted; /* startup values a server accepted at a login (params.c) */

    /* Connect failures: backoff instead of a reconnect storm, and fast failure while down. */
    struct breaker breaker;
    unsigned next_host; /* load_balance_hosts = round-robin: where the next server starts */

    /* Counters (SHOW STATS, /metrics). A query is one ReadyForQuery answering the client (a
     * simple Query, an extended batch up to Sync, a FunctionCall); a transaction is one that
     * ended with the server idle again. */
    uint64_t xact_count, query_count, wait_us_total, bytes_in, bytes_out;
    uint64_t wait_count;               /* clients that waited and then got a server */
    uint64_t query_ms_total;
    uint64_t xact_us_total;            /* time from a transaction's first query to its end */
    uint64_t cleanups[POOL_CLEANUP_KINDS];
    uint64_t wait_hist[POOL_HIST_BUCKETS];  /* counts per bucket of pool_hist_bounds_ms */
    uint64_t query_hist[POOL_HIST_BUCKETS];
};

/* What the pool tells the layer above it. The pool decides who gets a server and whose wait is
 * over, and touches no socket, no client's state and no server's connection itself: link.c wires
 * these to the link and the client (link_pool_events, installed by sluice.c); unit tests install
 * fakes. */
struct pool_events {
    /* Server s (free, or fresh from its login) goes to the waiting client c: pair them. */
    void (*waiter_served)(struct client *c, struct server *s);
    /* c's wait ends without a server: fail it with f (sqlstate: the server's own, or NULL). */
    void (*waiter_failed)(struct client *c, enum failure f, const char *message,
                          const char *sqlstate);
    /* c waited too long (client_wait_timed_out: its request or its session ends). */
    void (*waiter_timed_out)(struct client *c, enum failure ends_request, enum failure ends_session,
                             const char *message);
    /* c has waited query_wait_notify: tell it, as a NOTICE. */
    void (*waiter_notified)(struct client *c, const char *message);
    /* The pool knows what to report now: c's login finishes without a server of its own. */
    void (*login_welcomed)(struct client *c);
    /* A reload dropped the welcome c was told at its login (pool_forget_stale_welcome): what
     * it was told stays what it has, as a backend's settings stay when the config changes. */
    void (*welcome_dropped)(struct client *c, const struct param_set *told);
    /* The pool's tick (pool_maintain) reaches a logged-in client, IDLE or ACTIVE. */
    void (*client_tick)(struct client *c, uint64_t now);

    /* Its servers: the pool decides when one opens, closes or runs its own queries, and moves
     * them between its lists (server_set_state); opening, pumping and closing are server.c's
     * and server_connect.c's (link_pool_events wires them). */
    /* Open one more server for p (RESOLVING, counted from now) with these startup parameters
     * (NULL: the pool's own; startup_fp: their fingerprint). NULL: it could not start. */
    struct server *(*open_server)(struct pool *p, const struct param_set *startup,
                                  uint64_t startup_fp);
    /* Close s; why: for the log (server_close). */
    void (*close_server)(struct server *s, const char *why);
    /* Close logged-in s so that room_for may open one in its place (server_close_for). */
    void (*close_server_for)(struct server *s, const char *why, struct pool *room_for);
    /* Pump s, which has no client: sluice's own queries (a check, a reset) (server_kick). */
    void (*kick_server)(struct server *s);
    /* s has no client now (IDLE): watch its socket (server_want_io). */
    void (*watch_server)(struct server *s);
    /* The pool's tick reaches s: its timeouts (server_check_timeouts). */
    void (*server_tick)(struct server *s, uint64_t now);

    /* With workers > 1, its idle servers and other workers' waiters (5.4): the pool says when
     * a server may go to another worker; handover.c finds the waiter it serves and moves or
     * closes it (link_pool_events wires them). Each true when s left this pool. */
    /* s just went idle, or sits idle, and no waiter here took it (handover_offer). */
    bool (*offer_server)(struct server *s);
    /* s would serve a waiter here, the oldest of whom arrived at since_ms: another worker's
     * waiter older by more than the slack first (handover_offer_older). */
    bool (*offer_server_to_older)(struct server *s, uint64_t since_ms, uint64_t next_since_ms);
    /* Every idle server of p, which the offers may have missed (handover_offer_pool). */
    void (*offer_idle_servers)(struct pool *p);
};

/* Find or create the pool for a client's login: by database and user, the database's forced
 * user= where it has one. NULL: out of memory. */
struct pool *pool_get(struct worker *worker, const struct db_entry *db, const char *user,
                      const char *database);
/* Recompute settings from the current config (reload). */
void pool_apply_config(struct pool *p);
/* Create the pools of [databases] entries with a forced user=, as PgBouncer does, so that
 * min_pool_size opens their servers before any client comes (start and reload). */
void pool_create_forced(struct worker *worker);
/* Its servers, every state but CLOSED: what the caps count. Inline: budget.c counts them
 * without calling up into the pool. */
static inline int pool_server_count(const struct pool *p)
{
    return p->connecting.count + p->idle.count + p->active.count + p->resetting.count +
           p->leaving.count;
}

/* Is p a pool of a database and/or a user (NULL: any)? The filter by which budget.c and
 * ledger_audit.c count a scope's servers. */
static inline bool pool_in_scope(const struct pool *p, const char *db_name, const char *user_name)
{
    return (!db_name || strcmp(p->db_name, db_name) == 0) &&
           (!user_name || strcmp(p->user_name, user_name) == 0);
}

/* Does p know what to tell a new client at login (its welcome)? Learnt from a server of its
 * own, or taken from the pool key's, which another worker's pool learnt (ledger.h). */
bool pool_knows_welcome(struct pool *p);
/* The values a client of p that set none of them wants for the client-settable parameters,
 * which its server s is given when they differ (link.c, before anything of the client's reaches
 * it): the pool's welcome, or where the pool has learnt none, what s reported at its login. */
const struct param_set *pool_session_defaults(const struct pool *p, const struct server *s);
/* A client was just queued (WAITING or LOGIN_WAIT): link it now if a server and every limit
 * allow, else open a connection for it when the caps allow; otherwise it waits its turn. */
void pool_lease(struct pool *p, struct client *c);
/* Serve waiters that an ended budget lease may have unblocked, in every pool. */
void pool_dispatch_all(struct worker *worker);
/* A linked server is free again (client released it). */
void pool_release(struct server *s);
/* Queue what a server needs before another client may have it: ROLLBACK when a transaction is
 * open, server_reset_query where the pool mode asks for it, DISCARD ALL or DISCARD TEMP for
 * what a client left that no record follows (counted in p->cleanups). True when something was
 * queued. */
bool pool_queue_cleanup(struct server *s);
/* s just logged in (server_connect.c): its parameters are the backend's own, what a client with
 * no startup parameters would be told. The pool learns its welcome from the first such server
 * (and shares it with the other workers' pools), never from one a client has used: its
 * parameters are that client's. */
void pool_learn_welcome(struct server *s);
/* A reload made p's connection settings conninfo_fp: forget a welcome learnt under others. */
void pool_forget_stale_welcome(struct pool *p, uint64_t conninfo_fp);
/* A server became usable (connected, or finished resetting): give it to a waiter or keep it. */
void pool_server_ready(struct server *s);
/* A server that was idle on another worker moved here (handover.c, MOVING, s->pool = p,
 * watched on this loop): it serves p's oldest waiter or stays idle, and p's need left in the
 * ledger is noted again. */
void pool_take_moved(struct pool *p, struct server *s);
/* c left p's waiting list (served, gone, timed out). When it was the last, with workers, p's
 * entry in the ledger's wait list goes at once: left until the next tick, two workers' stale
 * entries sent an idle server back and forth between them, thousands of moves a second, and
 * another worker closed its idle server to make room for a waiter no longer there. When its
 * worker's oldest waiter of c's budget was noted held by a lease limit, the ledger is told
 * the next one (pool_lease_waiter_gone). */
void pool_waiter_left(struct pool *p, const struct client *c);
/* A server of p that was LEAVING is gone: room_for (if any) gets first go at the room. */
void pool_server_gone(struct pool *p, struct pool *room_for);
/* A cap of kind k (LIMIT_DB, LIMIT_USER or LIMIT_GLOBAL, in the scope of db_name and
 * user_name) is full: close the longest-idle server of any pool in that scope but except, to
 * make room; except (a pool with waiters, or NULL for auth_query) gets first go at it once the
 * backend has gone. false: none was idle. */
bool pool_evict_idle(struct worker *worker, enum limit_kind k, const char *db_name,
                     const char *user_name, struct pool *except);
/* A server of p logged in: the database takes connections again (closes the breaker). */
void pool_connect_succeeded(struct pool *p);
/* The breaker is open or probing: the database refuses or cannot be reached. */
bool pool_is_down(const struct pool *p);
/* A connect attempt failed; message from libpq. */
void pool_connect_failed(struct pool *p, const char *message);
/* The server refused the login with an error retrying will not mend (wrong password, NOLOGIN
 * role, pg_hba.conf reject): as pool_connect_failed, and every client waiting for this pool gets
 * the server's FATAL (sqlstate, server_message) now. why is for the log. */
void pool_login_refused(struct pool *p, const char *sqlstate, const char *why,
                        const char *server_message);
/* The startup fingerprint (server.h startup_fp) of the server client c may be given: in
 * session mode a server opened with c's own startup parameters, whose reset values are c's
 * login values as on Postgres; in the other modes one opened with the pool's own (0), which
 * params.c's sync and login_reset.c make c's, unless c's login holds a setting no sync can give
 * (startup_scope EVERY_MODE): then its own in every mode. */
uint64_t pool_startup_wanted(const struct pool *p, const struct client *c);
/* Do p's waiters want servers of more than one startup fingerprint, so that opening, releasing
 * and closing servers must look at which waiter a server fits? Session mode, and any mode while
 * a client of startup_scope EVERY_MODE is in the pool. */
bool pool_matches_startup(const struct pool *p);
/* Matching by startup parameters: has p a waiter that room made by closing an idle server
 * would serve (its budget lets it have a server, none is logging in for it, no room is being
 * made for it)?
 * Such a waiter keeps p's idle servers from the handover (their close is its room). */
bool pool_has_waiter_without_room(const struct pool *p);
/* A server opened with startup parameters of fingerprint startup_fp was refused them at login
 * (sqlstate, server_message: Postgres's FATAL): the clients waiting for such a server get that
 * FATAL; the database is up (the options are read after authentication), so no backoff and no
 * breaker, and the other waiters are served. */
void pool_startup_refused(struct pool *p, uint64_t startup_fp, const char *sqlstate,
                          const char *server_message);
/* Background: timeouts, connects with backoff, min_pool_size, idle server expiry. */
void pool_maintain(struct pool *p, uint64_t now);
void pool_free(struct pool *p);
/* A client waited waited_ms for a server; a query took query_ms. */
void pool_record_wait(struct pool *p, uint64_t waited_ms);
void pool_record_query(struct pool *p, uint64_t query_ms, bool transaction_ended);
/* PAUSE / RESUME (admin console). Resume hands idle servers to the clients that queued. */
void pool_pause(struct pool *p, enum pool_pause_cause cause);
void pool_resume(struct pool *p);

#endif
