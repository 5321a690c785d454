/* client: one accepted client connection — its state machine and what it does in each state.
 * The bytes it relays to a server go through relay.c; its login is client_login.c's (which
 * defines client_login_ok, client_send_welcome and client_welcome_from_pool below), and the
 * authentication exchange itself auth.c's. */
#ifndef SLUICE_CLIENT_H
#define SLUICE_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"
#include "cidr.h"
#include "codec.h"
#include "error.h"
#include "list.h"
#include "log.h"
#include "params.h"
#include "prepared.h"
#include "relay.h"
#include "sockio.h"

enum client_state {
    CLIENT_STARTUP,    /* waiting for the startup packet (or SSLRequest, CancelRequest) */
    CLIENT_TLS_HANDSHAKE, /* answered SSLRequest with 'S'; TLS handshake in progress */
    CLIENT_CANCEL_WAIT, /* sent a CancelRequest that was passed on to a backend: the socket closes
                           once the cancel has reached it (cancel.c), as Postgres's does */
    CLIENT_AUTH,       /* authentication exchange in progress */
    CLIENT_LOGIN_WAIT, /* authenticated; waiting for a server: the pool's first (to learn what
                          to report), or one to try parameters no server has accepted yet */
    CLIENT_LOGIN_SYNC, /* linked; its startup parameters are being SET; its welcome (and its
                          bytes to the server) wait for the server's answer */
    CLIENT_LOGIN_REFUSED, /* linked; the server refused a startup parameter: its FATAL is
                             written, the client closes once the rest of the sync is answered */
    CLIENT_IDLE,       /* logged in, no server, nothing to send */
    CLIENT_WAITING,    /* has bytes for a server; queued FIFO in its pool */
    CLIENT_WAITING_LAST, /* queued, and sent Terminate after its request and closed its socket
                            (libpq's PQfinish after PQsendQuery): the request still runs, as
                            Postgres runs what it read before a Terminate; the socket is not
                            watched and the relay closes the client at the Terminate */
    CLIENT_ACTIVE,     /* linked to a server */
    CLIENT_TERMINATING, /* linked, and sent Terminate with answers still due: as from Postgres,
                           which answers what it read before a Terminate, it gets them and is
                           closed after the last; nothing more is read from it, and only its
                           hang-up is watched */
    CLIENT_HUNG_UP,    /* TERMINATING, then its socket closed (at least its sending side: the
                          close that follows a Terminate) or failed, answers still due; or
                          ACTIVE, and its socket closed or failed without a Terminate while its
                          statements ran (relay.h, RELAY_CLIENT_HUNG_UP), which Postgres runs to
                          their end too. The answers are still written (a client that only shut
                          its sending side reads them), but a query that has not answered within
                          server_drain_timeout is cancelled as a vanished client's
                          (client_check_timeouts) */
    CLIENT_CLOSING,    /* flushing a last message; then the socket closes */
    CLIENT_CLOSED,     /* closed; freed at the end of the loop iteration */
};
const char *client_state_name(enum client_state s);

struct worker;
struct pool;
struct server;
struct options_refusal;

/* Field order keeps padding out: with 10,000 idle clients every 8 bytes is 80 kB. */
/* A login in progress holds a place in the process's count of them (max_client_logins is one
 * cap for every worker, client.c); it gives the place back once, when it leaves the logins or
 * when it is chosen to give way above the cap. */
enum login_place {
    LOGIN_PLACE_NONE = 0, /* logged in, closing, or evicted: not counted */
    LOGIN_PLACE_HELD,     /* counted in proc->logins */
};

struct client {
    struct list_node node; /* on the list for its state */
    struct worker *worker;
    uint64_t id;
    struct sockio io;
    struct buf in;         /* bytes from the client */
    struct framer rx;      /* framing of those bytes */
    struct msg_out out;    /* bytes sluice itself sends to the client */
    uint32_t out_pos;      /* how much of out is written */
    enum client_state state;
    enum login_place login_place;
    /* STARTUP: the encryption requests already answered (enum encryption_request bits): each
     * is answered once, as Postgres does (ProcessStartupPacket's ssl_done, gss_done). */
    uint8_t encryption_answered;

    struct pool *pool;     /* set once the login names a database */
    /* Its pool's mode at its login, kept for the whole connection: a reload's pool_mode is for
     * later logins, since a session-mode client's state lives on its server and a transaction-
     * mode client's prepared statements in sluice's records (docs/pool-modes.md). */
    enum pool_mode mode;
    struct server *server; /* while ACTIVE */

    char *user;            /* owns one block with database */
    char *database;
    union peer_addr addr;
    uint32_t params_fp_gen;

    struct param_set params; /* what this client wants its session to have */
    /* Its startup parameters as the server spells them (NULL: none): Postgres's reset values
     * for them, which RESET, RESET ALL and DISCARD ALL give back (relay.c). */
    struct param_set *login_params;
    /* What Postgres would tell it at login besides the welcome (login_notice_plan), until its
     * welcome is written; NULL: nothing (the common case). */
    char *login_notices;
    /* Its prepared statements that may reset those (login_reset.c); NULL: none */
    struct login_reset_statements *reset_statements;
    uint64_t params_fp;      /* params_fingerprint of what it wants, as of params_fp_gen */
    /* params_startup_fingerprint of its startup parameters as sent: in session mode it is
     * given a server opened with them (server.h startup_fp). */
    uint64_t startup_fp;
    /* In which pool modes it is given such a server (pool_startup_wanted): EVERY_MODE for a
     * login holding a setting Postgres takes only at connection start, which no SET can give a
     * pooled backend (params_hold_start_only; decided once, in client_login.c). */
    enum startup_scope { STARTUP_SCOPE_SESSION, STARTUP_SCOPE_EVERY_MODE } startup_scope;
    struct stmt_map *stmts;  /* its named prepared statements (transaction mode); NULL: none yet */
    struct startup_extra *startup; /* login-time data, freed once logged in */
    /* Startup options Postgres would refuse (NULL: none): kept from the startup packet until
     * client_login_ok tells it, after authentication and the database checks, where Postgres
     * does (a client must not be able to tell sluice read them first). */
    struct options_refusal *options_refusal;
    /* A login that gave a startup setting twice with another value (NULL: none, the common
     * case): each of its settings as "name\0value\0", those before the repeat too, in the
     * order Postgres applies them (options, then the other parameters). Postgres applies every
     * value and refuses the login at the first bad one, and the last of a name stands; the login
     * sync sets these first (link.c), so the client is refused, or left, as there. A value a
     * name already had is left out (it was tried where it came first): at most one setting per
     * setting of the startup packet, held as text, not SQL, while the login waits for
     * authentication and a server. Freed once queued on a server, or when the client goes. */
    struct msg_out *settings_in_order;

    uint32_t cancel_pid, cancel_key;
    struct client *cancel_next; /* chain in the cancel map */
    struct cancel_job *cancel_job; /* CANCEL_WAIT: the cancel it waits for (cancel.c) */

    uint64_t connect_ms;
    uint64_t state_since_ms;
    struct auth_state *auth; /* the exchange in progress: only while AUTH (auth.h; started and
                                ended by client_login.c) */
    /* AUTH: an authentication message longer than the read buffer, gathered as it arrives (a
     * long password or token, client_login.c); NULL: none, the common case */
    struct long_auth_message *long_auth;
    struct budget *budget; /* counted in budget->clients from login to close */
    bool admin;            /* logged in to the admin console (a database, not a state) */
    bool pinned;           /* session_state_policy = pin: keeps its server until it leaves */
    /* WAITING: whether this wait has had query_wait_notify's NOTICE (pool.c tells it once);
       client_set_state starts each wait WAIT_NOT_TOLD */
    enum wait_notice { WAIT_NOT_TOLD, WAIT_TOLD } wait_notice;
    uint16_t warned; /* session features already warned about (bit per feature) */
    /* Its place in the ledger's logged-in counts (max_client_conn, max_db_client_connections,
       max_user_client_connections): taken with their check in client_login_ok, given back as
       it starts closing (client_set_state entering CLOSING or CLOSED) */
    enum login_slot { LOGIN_SLOT_NONE, LOGIN_SLOT_HELD } login_slot;
};

/* Linked, and sent Terminate with answers still due (TERMINATING or HUNG_UP): nothing more is
 * read from it, it is never released, and it is closed once they are written. A type byte
 * Postgres does not know, sent after requests still to answer, ends a client the same way: the
 * byte went to the server, whose FATAL and close follow the answers (request_track.c). */
static inline bool client_terminating(const struct client *c)
{
    return c->state == CLIENT_TERMINATING || c->state == CLIENT_HUNG_UP;
}

/* A client outside the relay (logging in, idle, queued) has a whole Terminate among the bytes
 * it sent that no server has read yet: nothing after it counts (protocol 55.2.4). */
bool client_sent_terminate(const struct client *c);

/* What a linked client tells the layer that pairs it (link.c's link_client_events, installed by
 * sluice.c as worker->client_events): client.c knows it may have a server, not what becomes of
 * it. */
struct client_events {
    /* c, linked to c->server, is closing or failed fatally: the link ends (the server's fate is
     * the link's); c->server is NULL afterwards. */
    void (*vanished)(struct client *c);
    /* A linked client's socket is readable (ACTIVE, LOGIN_SYNC, LOGIN_REFUSED): the relay's. */
    void (*readable)(struct client *c);
    /* A linked client's socket is writable: pump its pair. */
    void (*writable)(struct client *c);
};

/* A new connection from the listener; takes the fd. The client, or NULL if it could not be set
 * up (then it is gone already). */
struct client *client_accept(struct worker *worker, int fd, const struct sockaddr_storage *addr);
/* Read what a just-accepted client has sent without waiting for the loop to report it: clients
 * send their first packet (SSLRequest or startup) as soon as they connect, so it is usually
 * there, and reading it now saves a wake-up per connection. Harmless when nothing is there. */
void client_read_first(struct client *c);
/* A log line about c, prefixed with its identity: C-<id> db/user@addr (conn_log.c). */
void log_client(enum log_level level, const struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_client_v(enum log_level level, const struct client *c, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* The one transition function: checks the move, keeps the lists, stamps the time, and starts
 * each wait untold (wait_notice). Only client_accept sets a state without it (STARTUP). */
void client_set_state(struct client *c, enum client_state next);
/* Whether client_set_state may move a client from one state to the other (else sluice aborts). */
bool client_transition_ok(enum client_state from, enum client_state to);
/* Send f as an ErrorResponse. FATAL ones close the client once the message is out. */
void client_fail(struct client *c, enum failure f, const char *detail);
/* The same with a SQLSTATE from elsewhere (a server's login error). */
void client_fail_with_state(struct client *c, enum failure f, const char *detail,
                            const char *sqlstate);
/* Answer the request in progress with f (severity ERROR) and ReadyForQuery, so the client
 * reads a proper error result, then close the connection. */
void client_fail_request_and_close(struct client *c, enum failure f, const char *detail);
/* Close now (after a best-effort flush of pending output); reason is for the log. */
void client_close(struct client *c, const char *reason);
/* Close once what is queued for the client is out, adding nothing (the server's own FATAL
 * went before); reason is logged. */
void client_close_after_output(struct client *c, const char *reason);
/* Queue generated bytes for the client and try to write them. */
void client_send(struct client *c);
/* Authentication done (auth.c): send the welcome or wait for a server to learn it. */
void client_login_ok(struct client *c);
/* Background checks: login/idle/transaction timeouts. */
void client_check_timeouts(struct client *c, uint64_t now);
/* On each maintenance tick, while the process's logins are over max_client_logins: this
 * worker's stalled logins give their places up, in make_room_for_a_login's order (half-sent
 * startups first). No newcomer needs to arrive for it, and at the listener's accept limit none
 * is accepted to make room: logins stalled in the TLS handshake or the password exchange would
 * hold every place until client_login_timeout, and no one else could log in. */
void client_logins_give_way(struct worker *worker);
/* Its login's parameter sync is answered whole (relay.c, at the last ReadyForQuery): the
 * welcome, or the refusal. */
void client_login_synced(struct client *c, struct server *s);
/* A server refused one of the client's startup parameters: what Postgres says at login. */
void client_login_refused(struct client *c, const char *sqlstate, const char *message);
/* Is the client in the middle of its login's parameter sync (its bytes wait)? */
static inline bool client_login_syncing(const struct client *c)
{
    return c->state == CLIENT_LOGIN_SYNC || c->state == CLIENT_LOGIN_REFUSED;
}
/* Write the welcome: AuthenticationOk already sent; ParameterStatus..., BackendKeyData, Z. */
void client_send_welcome(struct client *c, const struct param_set *server_params);
/* Finish a login with the welcome its pool already knows: the client goes IDLE with no server. */
void client_welcome_from_pool(struct client *c);
/* A reload dropped the pool's welcome (pool_events.welcome_dropped): the parameters c was
 * told at its login that a session may set (client_encoding, TimeZone, DateStyle, ...) and it
 * has not set become its own, so its next server is given them. */
void client_keep_welcome(struct client *c, const struct param_set *told);
/* The wait for a server is over without one (query_wait_timeout, or server_down_wait while the
 * database is down): answer the queued request with ends_request (an ERROR) and keep the
 * session when the whole request is buffered, else end it with ends_session (a FATAL). */
void client_wait_timed_out(struct client *c, enum failure ends_request,
                           enum failure ends_session, const char *message);
/* A CancelRequest for a client whose request waits for a server: answer the request with
 * ERROR 57014 and ReadyForQuery and never send it (the session goes on). */
void client_cancel_queued(struct client *c);
/* An idle client has a whole message header buffered: Terminate closes it, anything else
 * queues it for a server. */
void client_on_data(struct client *c);
/* Read and handle what a client outside the relay sent (its login, or an idle client's next
 * request). */
void client_read_and_handle(struct client *c);
/* bytes become the start of c->in (a client just accepted: its buffer is empty). 0, or -1 when
 * no block could be had or they do not fit. */
int client_take_input(struct client *c, const uint8_t *bytes, size_t n);
/* A StartupMessage (packet, len: already consumed from c->in) naming the console database on
 * a worker other than 0: the login moves to worker 0 (architecture.md 5.6) with the socket, its
 * TLS session and the bytes left in c->in, and c is gone from here (true; also when the move
 * failed and c was closed). false: c is on worker 0, nothing was done. */
bool client_move_console_login(struct client *c, const uint8_t *packet, uint32_t len);
/* On worker 0: c, just accepted from a console login another worker moved here, goes on as if
 * this worker had read its StartupMessage (parsed again, so c->admin is set on this thread),
 * with the socket's TLS session (NULL: plain; c's own from here) and bytes, the StartupMessage
 * and what followed it. */
void client_resume_console_login(struct client *c, SSL *ssl, uint64_t connect_ms,
                                 const uint8_t *bytes, size_t nbytes);

#endif
