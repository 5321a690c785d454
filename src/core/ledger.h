/* ledger: the one owner of the counts that caps compare against. A backend takes a slot here
 * before it is opened, and a server is leased to a budget's client only after the lease was
 * taken here: never after. The ledger counts; budget.c resolves the caps (config, NN% against
 * max_connections) and hands them in; pool.c and auth_query decide what to open or close.
 *
 * Counted:
 *   per pool key (database, user)   backends in every state, connecting and leaving included
 *   per database / per user         the pools' backends plus auth_query's own connections
 *   global                          all of them (max_server_connections)
 *   per budget                      leases (servers linked to its clients) and logged-in clients
 *                                   (struct budget's `leases` and `clients`: written here only)
 *   logged-in clients               globally (max_client_conn, the admin console's included), per
 *                                   database and per user (max_db_client_connections,
 *                                   max_user_client_connections; by the client's own user name,
 *                                   not a database's forced user=)
 *
 * Single-threaded today. With workers (docs/architecture.md 5.3) one mutex, ledger->mu, guards
 * the whole struct: every take and give below is one critical section, so a take checks all
 * its limits and bumps all its counters atomically with respect to the others. Readers that
 * only log or show (SHOW DATABASES) may read without it. */
#ifndef SLUICE_LEDGER_H
#define SLUICE_LEDGER_H

#include <stdbool.h>

#include "budget.h"

struct worker;

/* A database or a user: the backends and the logged-in clients counted under its caps. */
struct ledger_scope {
    struct ledger_scope *next;
    int servers;
    int clients;
    char name[];
};

/* A pool key (database, user): with workers, the pools of that key on every worker share it. */
struct ledger_key {
    struct ledger_key *next;
    struct ledger_scope *db, *user;
    int servers;
};

struct ledger {
    /* mutex goes here (workers): pthread_mutex_t mu; one lock per take/give */
    struct ledger_key *keys;
    struct ledger_scope *dbs, *users;
    int servers;     /* every backend: pools' and auth_query's */
    int own_servers; /* auth_query's connections, of `servers` */
    int clients;     /* logged-in clients, the admin console's included */
};

/* The caps one more backend of a key must fit under, resolved by budget.c (0: no such cap). */
struct ledger_caps {
    int pool;   /* pool_size, + reserve_pool_size when the reserve is in play */
    int db;     /* max_db_connections */
    int user;   /* max_user_connections */
    int global; /* max_server_connections */
    /* NN% caps are not resolved yet and a server of this key is learning max_connections: one
     * at a time until it has (binds as LIMIT_DB, after the pool's own size). */
    bool awaiting_probe;
};

/* The entry of a pool key, made on first use and kept until ledger_free. NULL: out of memory. */
struct ledger_key *ledger_key_get(struct ledger *l, const char *db_name, const char *user_name);

/* One more backend of key under caps: LIMIT_NONE and every counter of key +1 in one step, or
 * the first limit it would pass (pool, db, user, global, in that order) and nothing changed. */
enum limit_kind ledger_take_server(struct ledger *l, struct ledger_key *key,
                                   const struct ledger_caps *caps)
    __attribute__((warn_unused_result));
/* A backend of key is gone (closed; a LEAVING one once its backend has exited). */
void ledger_give_server(struct ledger *l, struct ledger_key *key);
/* auth_query's own connection to database entry db_name as user_name: counted in the database,
 * the user and globally like a pool's backend (caps->pool is ignored). */
enum limit_kind ledger_take_own(struct ledger *l, const char *db_name, const char *user_name,
                                const struct ledger_caps *caps) __attribute__((warn_unused_result));
void ledger_give_own(struct ledger *l, const char *db_name, const char *user_name);

/* Read-only questions, same order of limits as a take. */
/* Would one more backend of key fit (ledger_take_server without taking)? */
enum limit_kind ledger_server_limit(const struct ledger *l, const struct ledger_key *key,
                                    const struct ledger_caps *caps);
/* Would one more backend of key fit if a backend of `closing` were gone? */
bool ledger_fits_if_closed(const struct ledger *l, const struct ledger_key *key,
                           const struct ledger_caps *caps, const struct ledger_key *closing);
/* Does key hold more backends than a cap allows (a reload lowered it)? The first such cap. */
enum limit_kind ledger_over_limit(const struct ledger *l, const struct ledger_key *key,
                                  const struct ledger_caps *caps);
/* Backends of a database / a user (NULL: all of them), auth_query's included. */
int ledger_db_servers(const struct ledger *l, const char *db_name);
int ledger_user_servers(const struct ledger *l, const char *user_name);

/* Leases of budget b: may a client of b be given a server now (b's max_servers, and the servers
 * left must still cover every other budget's unused min_servers)? */
enum limit_kind ledger_lease_limit(const struct worker *worker, const struct budget *b);
/* How many more servers a client of b may be given now: 0 when held back, -1 when only the
 * other limits bound it. */
int ledger_lease_room(const struct worker *worker, const struct budget *b);
/* Take a lease for a client of b before it is given a server: LIMIT_NONE and b->leases + 1,
 * or the binding limit and nothing changed. b NULL: nothing to count. */
enum limit_kind ledger_take_lease(struct worker *worker, struct budget *b)
    __attribute__((warn_unused_result));
void ledger_give_lease(struct worker *worker, struct budget *b);
/* A client of b logs in: false when b has max_clients connected (nothing changed). */
bool ledger_take_client(struct ledger *l, struct budget *b) __attribute__((warn_unused_result));
void ledger_give_client(struct ledger *l, struct budget *b);

/* The caps a logged-in client counts under, resolved by client_login.c (0: no such cap). */
struct ledger_login_caps {
    int global; /* max_client_conn */
    int db;     /* max_db_client_connections */
    int user;   /* max_user_client_connections */
};
/* What ledger_take_login did: counted, or the first cap it would pass (in this order). */
enum login_take {
    LOGIN_COUNTED,
    LOGIN_OVER_CLIENT_CONN,  /* max_client_conn */
    LOGIN_OVER_DB_CLIENTS,   /* max_db_client_connections */
    LOGIN_OVER_USER_CLIENTS, /* max_user_client_connections */
    LOGIN_OUT_OF_MEMORY,     /* no entry for a new database or user name */
};
/* A client logs in to database db_name as user_name (its own name): LOGIN_COUNTED and the
 * global, database and user counts +1 in one step, or why not and nothing changed. db_name and
 * user_name NULL: an admin console client, counted globally only (caps->db, ->user ignored). */
enum login_take ledger_take_login(struct ledger *l, const char *db_name, const char *user_name,
                                  const struct ledger_login_caps *caps)
    __attribute__((warn_unused_result));
/* The client of a take is leaving (the same names). */
void ledger_give_login(struct ledger *l, const char *db_name, const char *user_name);
/* Logged-in clients of a database / a user (NULL: all of them, the console's included). */
int ledger_db_clients(const struct ledger *l, const char *db_name);
int ledger_user_clients(const struct ledger *l, const char *user_name);

/* Debug: do the counters equal what walking the pools, servers, clients and auth_query's
 * connections finds? Logs each difference; true when all agree (ledger_audit.c). */
bool ledger_audit(const struct worker *worker);

void ledger_free(struct ledger *l);

/* A pool's questions, with its caps from budget.c (budget_server_caps). */
struct pool;
/* Would the pool's next backend fit (read-only; ledger_take_server takes it)? */
enum limit_kind ledger_pool_limit(const struct pool *p, bool use_reserve);
/* Would the pool have room for one more backend if a server of `closing` closed? */
bool ledger_pool_fits_if_closed(const struct pool *p, const struct pool *closing);
/* Does the pool hold more servers than a cap allows (a reload lowered it)? The first such cap. */
enum limit_kind ledger_pool_over_limit(const struct pool *p);

#endif
