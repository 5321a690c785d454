/* link: a client paired with a server. The only code that sets c->server and s->client; it
 * pairs what the pool hands out, syncs the client's session onto the server, hands what the relay
 * reports to the side it concerns, and, when a pairing ends, decides in one place what becomes
 * of the server (as Odyssey's od_frontend_cleanup does). The relay moves bytes and closes
 * nothing; the pool leases and queues and touches no socket. */
#ifndef SLUICE_LINK_H
#define SLUICE_LINK_H

#include <stdbool.h>

struct client;
struct server;
struct pool_events;
struct relay_outcome;

/* Why a pairing ends. */
enum link_end {
    LINK_END_RELEASED,          /* the client's transaction (or statement) is over and the pool
                                   mode lets the server go: nothing of the client's in flight */
    LINK_END_CLIENT_VANISHED,   /* the client closed, failed, timed out or was killed: a query
                                   under way is cancelled, nobody will read its answer */
    LINK_END_CLIENT_TERMINATED, /* the client sent Terminate: what it sent before runs to its end
                                   (Postgres runs every message read before a Terminate) */
    LINK_END_SERVER_LOST,       /* the server's socket failed or it broke the protocol: it
                                   closes, and the client gets 08006 */
    LINK_END_SERVER_FAST_CLOSE, /* server_fast_close: marked to close, its transaction over; both
                                   close so the client knows its session is gone */
    LINK_END_SERVER_CLOSING,    /* the server is being closed by its own code (KILL, reload,
                                   room for another pool): the pair is only taken apart */
};
const char *link_end_name(enum link_end why);

/* What becomes of the server when its pairing ends. */
enum server_fate {
    SERVER_FATE_REUSE,   /* to its pool, which rolls back or resets what the mode asks and hands
                            it to the next waiter */
    SERVER_FATE_DRAIN,   /* a query or COPY is under way: SERVER_DRAINING, its replies dropped
                            until it ends (within server_drain_timeout), then reused */
    SERVER_FATE_CLOSE,   /* it cannot be made clean for another client */
    SERVER_FATE_CLOSING, /* its own closer goes on; nothing to do here */
};
const char *server_fate_name(enum server_fate f);

/* What the decision looks at, gathered from the pair as it ends. */
struct link_facts {
    bool at_boundary;        /* no request, batch or message of the client's under way */
    bool client_mid_message; /* the server holds part of a message only the client could finish */
    bool drain_allowed;      /* server_drain_timeout > 0 */
};
/* The decision table, without side effects (so it is tested without sockets). */
enum server_fate link_fate(enum link_end why, const struct link_facts *f);

/* The pool gave server s to client c (the pool's waiter_served event): pair them, sync c's
 * session parameters onto s, and start relaying. */
void link_pair(struct client *c, struct server *s);
/* End the pairing of c and s for why: take them apart and give the server its fate. The client
 * side is the caller's, except where the server ends it (SERVER_LOST, SERVER_FAST_CLOSE: the
 * client is failed here) and RELEASED (the client goes IDLE). o: SERVER_LOST's reasons (relay.h),
 * else NULL. */
void link_end(struct client *c, struct server *s, enum link_end why, const struct relay_outcome *o);
/* Pump s (and its client, if linked) and act on what the relay reports. */
void link_kick(struct server *s);
/* Socket events of a linked client (ACTIVE or in its login sync), and of a logged-in server. */
void link_client_readable(struct client *c);
void link_server_io(struct server *s, int status, int events);
/* The events the pool raises, wired to the client and the link (sluice.c installs them). */
extern const struct pool_events link_pool_events;
/* The events a logged-in server raises (server.h): its socket's to the relay, its closing and
 * fast close to link_end (sluice.c installs them). */
extern const struct server_events link_server_events;
/* The events a linked client raises (client.h): its close to link_end (CLIENT_VANISHED), its
 * socket's to the relay (sluice.c installs them). */
extern const struct client_events link_client_events;
/* What the relay reports mid-pump (relay.h): a login sync's refusal, to client_login_refused. */
extern const struct relay_events link_relay_events;
/* What cancels ask (cancel.h): close or park a requester, answer a queued client, go on with a
 * server whose cancel is over (sluice.c installs them). */
extern const struct cancel_events link_cancel_events;

#endif
