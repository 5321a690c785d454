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

#include "cidr.h"
#include "codec.h"
#include "config.h"
#include "pool.h"
#include "stats.h"

struct sluice;

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
    const void *ptr, *link; /* the object and its peer (NULL: none), PgBouncer's ptr/link */
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
void view_clients(const struct sluice *app, view_conn_fn *fn, void *ctx);
/* Every server of a pool: pool by pool the active, idle, resetting and connecting ones. */
void view_servers(const struct sluice *app, view_conn_fn *fn, void *ctx);
/* PgBouncer's SHOW SOCKETS order: pool by pool its clients (cl_active, cl_waiting) and servers
 * (sv_active, sv_idle, sv_tested, sv_login, sv_leaving), then the clients logging in (cl_login);
 * state is the list's name. */
void view_sockets(const struct sluice *app, view_conn_fn *fn, void *ctx);

#endif
