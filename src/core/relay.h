/* relay: the hot path. Moves bytes between a linked client and server straight from the reading
 * side's buffer, framing message headers in place to see the few that matter (ReadyForQuery,
 * ParameterStatus, Sync, Terminate), and pauses reading a side while its peer cannot keep up.
 * It reports what happened (enum relay_result) and closes nothing: link.c acts on the result. */
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
    /* A Query larger than the buffer, in transaction mode, whose start held no DEALLOCATE or
     * DISCARD: its rest is watched for either word as it streams through (stmt_track.c,
     * stmt_track_watch_query_tail), with the last bytes of what came before (a word may span
     * two reads). */
    bool drops_watch;
    uint8_t drops_tail_len;
    char drops_tail[9];
};

#include "request_track.h"

struct client;
struct server;

/* What one pump of a pair (or of a server alone) came to. The relay only moves bytes: it closes
 * nothing and takes no pair apart; its caller hands the result to the link (link.c), or for a
 * server without a client to server.c. */
enum relay_result {
    RELAY_LINKED,        /* nothing ended: the pair (or lone server) waits for its sockets */
    RELAY_RELEASE,       /* the pair is quiet and the pool mode lets the server go now */
    RELAY_TXN_FORBIDDEN, /* statement mode: the client opened a transaction */
    RELAY_TERMINATED,    /* the client sent Terminate, and all it sent before is with the server
                            and answered (or it has no socket left to take the answers) */
    RELAY_TERMINATING,   /* the client sent Terminate with answers still due: it gets them first
                            (link.c: CLIENT_TERMINATING), as from Postgres */
    RELAY_LOGIN_SYNCED,  /* the last reply to a login's parameter sync was consumed */
    RELAY_SERVER_LOST,   /* the server's socket failed or it broke the protocol (see outcome) */
    RELAY_CLIENT_LOST,   /* the client's socket closed or failed (see outcome) */
    RELAY_CLIENT_HUNG_UP, /* the client's socket closed or failed without a Terminate while its
                             statements ran, all it sent whole and with the server (no message
                             cut, no COPY or unsynced batch left open): as Postgres, which does
                             not look at the socket while a statement runs, they run to their
                             end; the client gets their answers as after a Terminate
                             (link.c: CLIENT_HUNG_UP) */
    RELAY_CLIENT_OUT_OF_MEMORY, /* no buffer to read the client's bytes into */
    RELAY_CLIENT_FAILED, /* framing the client's bytes found it must be failed (a bad message, a
                            cap, session_state_policy = refuse): outcome.failure says with what */
};
struct relay_outcome {
    char why[128];      /* RELAY_SERVER_LOST, RELAY_CLIENT_LOST: the log line's reason */
    const char *detail; /* RELAY_SERVER_LOST: what its client is told; NULL: why */
    struct client_failure failure; /* RELAY_CLIENT_FAILED */
};

/* What the relay reports while it pumps, where returning would not do: a login's parameter
 * sync is answered by an error in the middle of the replies, and the first one is the one the
 * client must get (link.c's link_relay_events, installed by sluice.c as worker->relay_events). */
struct relay_events {
    /* The server refused a SET of c's login sync: its login ends with this error (the replies
     * still due are consumed, then RELAY_LOGIN_SYNCED). */
    void (*login_refused)(struct client *c, const char *sqlstate, const char *message);
};

/* A linked client's bytes arrived (client ACTIVE, or in its login's parameter sync). */
enum relay_result relay_client_readable(struct client *c, struct relay_outcome *o)
    __attribute__((warn_unused_result));
/* A server's bytes arrived (any server state after login, with a client or without). */
enum relay_result relay_server_readable(struct server *s, struct relay_outcome *o)
    __attribute__((warn_unused_result));
/* The server's socket failed (a reset: poll status < 0); why says how. What the server sent
 * before it is passed to its client first (see relay.c server_gone), then RELAY_SERVER_LOST. */
enum relay_result relay_server_failed(struct server *s, const char *why, struct relay_outcome *o)
    __attribute__((warn_unused_result));
/* Push whatever can move now in both directions and set both sides' poll interest; for a server
 * with no client, consume what it says. Called on writability, after linking and after anything
 * that changes what either side may do. */
enum relay_result relay_pump(struct server *s, struct relay_outcome *o)
    __attribute__((warn_unused_result));
/* Is the pair at a point where the server holds nothing of this client's in flight (no request,
 * no byte either way, no part of a message): where the pool mode may take the server back? */
bool relay_pair_quiet(const struct client *c, const struct server *s);
/* Can the server be cleaned by a query (no request, batch or message of the client's under
 * way), whatever bytes are still buffered? c may be NULL. */
bool relay_at_boundary(const struct server *s, const struct client *c);
/* Does the server hold part of a message of c's that only c could finish? */
bool relay_client_mid_message(const struct client *c);
/* The client c of s is leaving while s is mid-query: make the server's stream whole without it
 * (what the server says is dropped from now on; a COPY FROM STDIN gets CopyFail, an open
 * extended-protocol batch its Sync). False when that cannot be done because the server holds
 * part of a client message (or out of memory): then the server must close. */
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

#endif
