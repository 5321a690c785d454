/* view: what the services (the admin console, /health, /metrics) read of the core — plain
 * snapshots of connections and pools, filled by walks over the core's lists, so a service never
 * walks those lists or reads struct client, server or pool itself. Strings and pointers in a
 * snapshot point into the live objects: valid until the loop runs again, so a service formats
 * them at once. Counters over time are stats.h; settings are the config (read-only); changes go
 * through control.h. Reading is all this file does. */
#ifndef SLUICE_VIEW_H
#define SLUICE_VIEW_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

#include "budget.h"
#include "cidr.h"
#include "codec.h"
#include "config.h"
#include "pool.h"
#include "stats.h"

struct worker;

/* ---- connections (SHOW CLIENTS, SERVERS, SOCKETS) ---- */

enum view_conn_type { VIEW_CLIENT, VIEW_SERVER };

/* Buffer positions (PgBouncer's SHOW SOCKETS columns in sluice's terms): bytes received into
 * the input buffer, framed, sent on; what is framed but not sent and what is unframed. sluice's
 * own output still to write is out->len - out_pos, read when the cell is written: out is live, so
 * the console's own row counts the bytes of the rows written before it. */
struct view_socket {
    uint64_t recv_pos, pkt_pos, pkt_remain, send_pos, pkt_avail;
    const struct msg_out *out;
    uint32_t out_pos;
    bool busy; /* bytes buffered or output pending (SHOW ACTIVE_SOCKETS) */
};

struct view_conn {
    enum view_conn_type type;
    uint64_t id;
    /* the linked peer's id (0: none). PgBouncer's ptr and link columns show pointers, which a
     * log line names too; ours show ids the same way (conn_id.h). */
    uint64_t link_id;
    const char *user, *database;
    /* The state's name; in view_sockets the name of the list it is on (cl_active, sv_idle...). */
    const char *state;
    const union peer_addr *addr; /* a client's peer; NULL for a server (host and port below) */
    const char *host, *port;     /* a server's, as its login has them (NULL or "": unknown) */
    int fd;                      /* -1 once closed; for the local address */
    SSL *ssl;                    /* NULL: plain */
    uint64_t connect_ms, state_since_ms; /* loop times; 0: not yet */
    uint64_t wait_us;                    /* a client queued for a server: for how long */
    bool close_needed;                   /* a server that closes when its client is done */
    int remote_pid;       /* a server's backend pid; a unix-socket client's pid, else 0 */
    const char *app_name; /* application_name, "" when none */
    int prepared_statements;
    uint64_t held_ms; /* linked (client ACTIVE, server ACTIVE): for how long, else 0 */
    struct view_socket sock;
};

typedef void view_conn_fn(const struct view_conn *v, void *ctx);

/* Every client: logging in, then pool by pool the active, waiting and idle ones. */
void view_clients(const struct worker *worker, view_conn_fn *fn, void *ctx);
/* One pool's clients: the waiting, idle and active ones (logging-in clients have no pool). */
void view_pool_clients(const struct pool *p, view_conn_fn *fn, void *ctx);
/* Every server of a pool: pool by pool the active, idle, resetting and connecting ones. */
void view_servers(const struct worker *worker, view_conn_fn *fn, void *ctx);
/* PgBouncer's SHOW SOCKETS order: pool by pool its clients (cl_active, cl_waiting) and servers
 * (sv_active, sv_idle, sv_tested, sv_login, sv_leaving), then the clients logging in (cl_login);
 * state is the list's name. */
void view_sockets(const struct worker *worker, view_conn_fn *fn, void *ctx);

/* ---- pools (SHOW POOLS, /health, /metrics) ---- */

/* One pool now. The fields keep struct pool's names. */
struct view_pool {
    const struct pool *pool; /* its identity: to compare, or to hand to stats.h */
    const char *db_name, *user_name;
    bool console;     /* the admin console's pseudo-pool: no servers, no cap */
    bool user_forced; /* its database entry names the user (pool.h) */
    enum pool_mode mode;
    int size; /* pool_size in force */
    bool paused;
    bool have_welcome; /* a server of it has logged in once */
    /* The server's max_connections - reserved, and the two numbers; 0 until a server said. */
    int server_usable, server_max_connections, server_reserved;
    struct breaker breaker;
    int servers;                /* in any state, LEAVING included */
    int sv_being_canceled;      /* active or resetting with a cancel on its way */
    struct pool_cap cap;        /* the cap that binds (budget.h); zero for the console */
    struct stats_pool_view now; /* servers and clients by state */
    /* Counters since start (pool.h). */
    uint64_t xact_count, query_count, bytes_in, bytes_out, wait_us_total, query_ms_total;
    uint64_t cleanups[POOL_CLEANUP_KINDS];
    const uint64_t *wait_hist, *query_hist; /* POOL_HIST_BUCKETS each, pool_hist_bounds_ms */
};

/* The pools in creation order, the console's included: NULL starts, NULL after the last. */
const struct pool *view_next_pool(const struct worker *worker, const struct pool *prev);
#define view_for_each_pool(worker, p)                                                              \
    for (const struct pool *p = view_next_pool((worker), NULL); p; p = view_next_pool((worker), p))
/* Everything: the counts by state and the binding cap walk the pool's lists and its budget's. */
void view_pool(const struct pool *p, uint64_t now_ms, struct view_pool *out);
/* Only what the pool holds itself (names, settings, what it learnt, counters, servers): cheap
 * enough to call in a walk over the pools for each pool. now, cap, sv_being_canceled stay 0. */
void view_pool_settings(const struct pool *p, struct view_pool *out);

/* ---- the other workers' pools (docs/architecture.md 5.6) ----
 * The control thread reads its own worker's pools live and the others' as each published them
 * at its last maintenance tick (tally.h): never their lists. With one worker both add nothing. */

/* On a worker's own thread, at its maintenance tick (worker->tally set): publish its pools and
 * logins for the control thread (tally.h). */
void view_publish(struct worker *worker);
/* The console's SHOW that reads frames is exact when it answers, as with one worker: it asks
 * every other worker to publish now (proc->publish_asks numbers the asks) and answers once
 * view_frames_answered, or after a bounded wait (admin.c). On the worker's own thread: publish
 * now, the frame marked as answering ask. Nothing for the control worker (read live). */
void view_publish_now(struct worker *worker, unsigned ask);
/* On the control thread: has every other worker published a frame since it was asked ask? */
bool view_frames_answered(const struct worker *worker, unsigned ask);
/* Add to v (a pool of worker's, filled by view_pool) the counts of the same (database, user)
 * pool on every other worker: servers and clients by state, counters; the settings are v's. */
void view_pool_add_workers(const struct worker *worker, struct view_pool *v);
/* A pool key only other workers have, summed over them; its names are copies. */
struct view_remote_pool {
    struct view_pool v;
    char db_name[64], user_name[64];
};
/* The pools of the other workers whose key worker has not, in order of first appearance: their
 * count, *out an array the caller frees (NULL when none; a pool is left out if out of memory). */
int view_pools_elsewhere(const struct worker *worker, struct view_remote_pool **out);
/* Every pool key of the process once, summed over the workers, in SHOW POOLS' order: worker's
 * own pools (view_pool + view_pool_add_workers), then the keys only other workers have
 * (view_pools_elsewhere, without their cap: view_pool_caps gives every row the process's). */
struct view_pools {
    struct view_pool *v;
    int n;
    struct view_remote_pool *elsewhere; /* where the last rows' names point */
};
/* Into out, which view_pools_free frees; false: out of memory (nothing to free). */
bool view_pools_collect(const struct worker *worker, struct view_pools *out);
void view_pools_free(struct view_pools *pools);
/* The same rows, one call of fn each (v is valid during fn only; none when out of memory): SHOW
 * POOLS' rows and the stats_period log line (sluice.c). /health and /metrics collect them. */
typedef void view_pool_fn(const struct view_pool *v, void *ctx);
void view_pools_summed(const struct worker *worker, view_pool_fn *fn, void *ctx);

/* v's histograms (POOL_HIST_BUCKETS each; none for a pool only others have) plus the same
 * (database, user) pool's on every other worker, into wait and query. */
void view_pool_hists(const struct worker *worker, const struct view_pool *v, uint64_t *wait,
                     uint64_t *query);

/* The binding cap of every pool key in rows (n rows, one per key, each summed over the workers:
 * view_pool_add_workers, view_pools_elsewhere), the same whichever worker has the key's pools:
 * the caps from worker's config, NN% ones resolved against the usable connections the ledger
 * learnt for the key (else the row's own), and in_use the linked servers (sv_active) of every row
 * the binding cap covers (the key, its database, its user, all; a budget's leases). The
 * console's rows keep no cap. */
void view_pool_caps(const struct worker *worker, struct view_pool *rows, int n);

/* The applications whose clients hold the most of v's servers over every worker, most first:
 * worker's own pool (v->pool, live) and the same key's pool on each other worker (its top
 * STATS_TOP_APPS as last published), summed by name; up to max into out, their count. Exact
 * while no worker's pool has more than STATS_TOP_APPS applications holding servers; beyond,
 * an application outside a worker's top is not counted there. */
int view_pool_top_apps(const struct worker *worker, const struct view_pool *v,
                       struct stats_app *out, int max);

/* ---- the whole process (SHOW LISTS, /health, /metrics) ---- */

struct view_totals {
    /* Over every worker: the control worker's now, the others' as last published (5.6). */
    int clients;       /* client sockets in any state, the console's included */
    int login_clients; /* logging in (STARTUP, AUTH) */
    int servers;       /* server connections in any state */
    int pools;         /* the console's pseudo-pools included */
    bool running;      /* no shutdown under way (PHASE_RUNNING) */
};
void view_totals(const struct worker *worker, struct view_totals *out);

/* ---- objects alive (SHOW MEM) ---- */

/* Each kind of object sluice allocates one of per connection, pool or name, in SHOW MEM's
 * order: its name, the size of its struct (what it allocates besides, buffers and names, is
 * not in it) and how many are alive now over every worker. Clients and servers are the
 * workers' atomic counts (closed ones count until freed at the end of their loop iteration),
 * pools as view_totals counts them (the console's pseudo-pools included), the ledger's keys and
 * scopes walked under its lock. */
struct view_objects {
    const char *name;
    size_t size;
    long long alive;
};
#define VIEW_OBJECT_KINDS 6
void view_objects(const struct worker *worker, struct view_objects out[VIEW_OBJECT_KINDS]);

/* ---- budgets (SHOW BUDGETS) ---- */

/* The i-th budget of the worker's generation (configured ones in file order, then "default",
 * then retired ones), NULL past the last. Plain data (budget.h): the rule is immutable, its
 * identity's live counts, clients and leases, are read as they are. */
const struct budget_rule *view_budget(const struct worker *worker, int i);

/* ---- counts (SHOW DATABASES, USERS) ---- */

/* Servers of a database's, or a user's, pools, in any state, auth_query's included. */
int view_db_servers(const struct worker *worker, const char *db_name);
int view_user_servers(const struct worker *worker, const char *user_name);
/* Logged-in clients (not the console's) of a database, or with a user name. */
int view_db_clients(const struct worker *worker, const char *db_name);
int view_user_clients(const struct worker *worker, const char *user_name);
/* The listening port (a unix-socket client's "port" in SHOW CLIENTS). */
int view_listen_port(const struct worker *worker);

#endif
