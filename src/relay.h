/* relay: the hot path. Moves bytes between a linked client and server straight from the reading
 * side's buffer, framing message headers in place to see the few that matter (ReadyForQuery,
 * ParameterStatus, Sync, Terminate), and pauses reading a side while its peer cannot keep up. */
#ifndef SLUICE_RELAY_H
#define SLUICE_RELAY_H

#include <stdbool.h>
#include <stdint.h>

/* Framing state of one direction: how much of the current message is still to come. */
struct stmt_def;
struct framer {
    uint32_t remain;  /* bytes of the current message not yet framed */
    bool discard;     /* the current message is consumed by sluice, not forwarded */
    /* A named Parse larger than the buffer, in transaction mode: its definition, filled as the
     * message streams through (held by the client's statement map, not by this pointer). */
    struct stmt_def *keep;
};

struct client;
struct server;

/* A client's bytes arrived (client ACTIVE). */
void relay_client_readable(struct client *c);
/* The client's socket can take more (client ACTIVE or with pending output). */
void relay_client_writable(struct client *c);
/* A server's bytes arrived (any server state after login). */
void relay_server_readable(struct server *s);
void relay_server_writable(struct server *s);
/* Push whatever can move now in both directions and set both sides' poll interest. Called after
 * linking and after anything that changes what either side may do. */
void relay_kick(struct server *s);
/* The client c of s is leaving while s is mid-query: make the server's stream whole without it
 * (what the server says is dropped from now on; a COPY FROM STDIN gets CopyFail, an open
 * extended-protocol batch its Sync). False when that cannot be done because the server holds
 * part of a client message: then the server must close. */
bool relay_orphan_server(struct server *s, struct client *c);
/* What a linked pair waits for, as the timeouts that reclaim a server from a client that sends
 * nothing see it. */
enum pair_wait {
    PAIR_NO_WAIT,          /* the server owes an answer or has bytes to take, or waits for
                              nothing (between transactions) */
    PAIR_WAIT_TRANSACTION, /* the server is idle inside the client's transaction */
    PAIR_WAIT_MESSAGE,     /* the client sent part of a message and the server waits for the rest */
    PAIR_WAIT_SYNC,        /* extended-protocol messages all answered, and no Sync yet */
    PAIR_WAIT_COPY,        /* the server is in COPY FROM STDIN, waiting for the client's data */
};
enum pair_wait relay_pair_wait(const struct client *c, const struct server *s);
/* Set the poll interest of a client that has no server (idle, waiting, login). */
void relay_client_interest(struct client *c);
/* Set the poll interest of a server that has no client. */
void relay_server_interest(struct server *s);

#endif
