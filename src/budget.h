/* budget: named groups of clients with caps of their own, and the nested limits every server
 * must fit under — pool size (+ reserve), max_db_connections, max_user_connections,
 * max_server_connections — so that "too many clients already" cannot happen upstream.
 *
 * Two kinds of limit:
 *   connections  a new backend needs room in its pool, its database, its user and globally;
 *   leases       a client of budget B may hold a server only while B has fewer than max_servers
 *                and the servers left still cover every other budget's unused min_servers. */
#ifndef SLUICE_BUDGET_H
#define SLUICE_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "cidr.h"

struct sluice;
struct pool;
struct client;

struct budget {
    char *name;
    char *app_pattern; /* fnmatch(3) glob, NULL = any */
    char *user;        /* NULL = any */
    struct cidr addr;
    bool has_addr;
    int max_servers, max_clients, min_servers; /* 0 = none */
    int clients;  /* logged-in clients now */
    int leases;   /* servers linked to its clients now */
    bool retired; /* removed from the config; kept while clients still point at it */
};

struct budget_set {
    struct budget **items; /* configured budgets in file order, then "default" last */
    int n;
};

/* Build or update from the current config (start and reload); live counts carry over by name.
 * 0 or -ENOMEM. */
int budget_sync(struct sluice *app) __attribute__((warn_unused_result));
void budget_free_all(struct sluice *app);

/* The budget a client belongs to: the first whose every given matcher matches; else "default". */
struct budget *budget_match(struct sluice *app, const char *app_name, const char *user,
                            const union peer_addr *addr);

/* Which limit stops something, for decisions and for messages that name it. */
enum limit_kind {
    LIMIT_NONE = 0,
    LIMIT_POOL,    /* pool_size (+ reserve_pool_size) */
    LIMIT_DB,      /* max_db_connections */
    LIMIT_USER,    /* max_user_connections */
    LIMIT_GLOBAL,  /* max_server_connections */
    LIMIT_BUDGET,  /* the budget's max_servers */
    LIMIT_RESERVED /* the rest is held for other budgets' min_servers */
};
const char *limit_kind_key(enum limit_kind k);

/* May the pool open one more backend? use_reserve: the reserve pool is in play. */
enum limit_kind budget_connect_limit(const struct pool *p, bool use_reserve);
/* May sluice open a connection of its own (auth_query) to database entry db_name as user_name?
 * It counts against max_db_connections, max_user_connections and max_server_connections like a
 * pool's server. */
enum limit_kind budget_own_connect_limit(const struct sluice *app, const char *db_name,
                                         const char *user_name);
/* May a client of b be given a server now? */
enum limit_kind budget_lease_limit(const struct sluice *app, const struct budget *b);
/* The resolved number behind a limit for pool p (for messages). */
int budget_limit_value(const struct pool *p, const struct budget *b, enum limit_kind k);

/* Does any cap of this pool depend on the server's max_connections (NN%)? */
bool budget_has_percent_caps(const struct pool *p);
/* Server counts across pools and auth_query's connections, for the caps. */
int budget_db_servers(const struct sluice *app, const char *db_name);
int budget_user_servers(const struct sluice *app, const char *user_name);

#endif
