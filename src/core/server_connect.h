/* server_connect: a new backend connection until it may serve — the connecting states of
 * server.h (RESOLVING, LOGIN or LOGIN_PASSTHROUGH, PROBING, CONNECT_QUERY), the libpq login, and
 * sluice's login queries for both login paths; then the server goes to its pool
 * (pool_server_ready). Until then the server's socket callback is this file's; from then on
 * it is server.c's (server_on_io), which owns the server after that. */
#ifndef SLUICE_SERVER_CONNECT_H
#define SLUICE_SERVER_CONNECT_H

#include <stdint.h>

struct param_set;
struct pool;
struct server;

/* Start a new connection for the pool (state RESOLVING), opened with `startup` (a session-mode
 * client's startup parameters, copied; NULL or empty: the pool's own) whose
 * params_startup_fingerprint is startup_fp. The caller has taken the pool's slot in the ledger
 * (ledger_take_server): the server holds it from here until it is gone, and when no server is
 * made the slot is given back here. NULL when it could not even start. */
struct server *server_connect(struct pool *pool, const struct param_set *startup,
                              uint64_t startup_fp);
/* A connection that never got to serve (connect, login, probe): close it and tell its pool, which
 * backs off and answers its waiting clients with why. */
void server_connect_failed(struct server *s, const char *why);
/* Reload: servers of p made with other connection settings than the pool's database entry
 * now gives (host, port, dbname, user, password, TLS, any libpq keyword) close, idle ones now
 * and busy ones when released, so new transactions reach the new target. Unchanged ones stay. */
void server_retire_changed(struct pool *p);
/* The fingerprint of the settings p's servers are opened with now (conninfo_fp); false: p has
 * none (its database left the config, or the console's pool). A server that moved between
 * workers is compared with it on arrival (handover.c): it may have missed a reload's retire. */
bool server_conninfo_now(struct pool *p, uint64_t *fp);

#endif
