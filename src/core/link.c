/* link: a client paired with a server (see link.h).
 *
 *   pool (waiter_served) --> link_pair --> relay_pump ... --> relay result --> settle
 *                                                                  |
 *        client_fail/client_close (CLIENT_VANISHED), Terminate,    v
 *        release at a quiet point, server lost, fast close ---> link_end --> link_fate:
 *                                                                  REUSE  pool_release
 *                                                                  DRAIN  server_drain
 *                                                                  CLOSE  server_close
 *
 * c->server and s->client are set and cleared here only (pair, unpair), and the budget lease a
 * pairing holds lives as long as the pairing, or, when the client leaves mid-query, until its
 * server's backend has ended that query (server_return_lease). */
#include "link.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cancel.h"
#include "client.h"
#include "client_login.h"
#include "conn_id.h"
#include "handover.h"
#include "pool.h"
#include "relay.h"
#include "server.h"
#include "session_effects.h"
#include "sluice.h"
#include "worker.h"

const char *link_end_name(enum link_end why)
{
    switch (why) {
    case LINK_END_RELEASED:
        return "released";
    case LINK_END_CLIENT_VANISHED:
        return "client vanished";
    case LINK_END_CLIENT_TERMINATED:
        return "client terminated";
    case LINK_END_SERVER_LOST:
        return "server lost";
    case LINK_END_SERVER_FAST_CLOSE:
        return "server fast close";
    case LINK_END_SERVER_CLOSING:
        return "server closing";
    }
    return "?";
}

const char *server_fate_name(enum server_fate f)
{
    switch (f) {
    case SERVER_FATE_REUSE:
        return "reuse";
    case SERVER_FATE_DRAIN:
        return "drain";
    case SERVER_FATE_CLOSE:
        return "close";
    case SERVER_FATE_CLOSING:
        return "closing";
    }
    return "?";
}

enum server_fate link_fate(enum link_end why, const struct link_facts *f)
{
    switch (why) {
    case LINK_END_RELEASED:
        return SERVER_FATE_REUSE; /* the relay releases only a quiet pair */
    case LINK_END_CLIENT_VANISHED:
    case LINK_END_CLIENT_TERMINATED:
        if (f->at_boundary)
            return SERVER_FATE_REUSE; /* a rollback (or the mode's reset) makes it clean */
        /* A query or COPY was under way. Closing would not stop it: the backend runs on, holding
         * a Postgres slot, until it next writes or checks its socket, while sluice (no longer
         * counting it) could open a replacement and pass max_db_connections. So it drains,
         * counted against every cap until then, unless part of a client message is in it:
         * nothing but that client could finish the message. */
        return f->drain_allowed && !f->client_mid_message ? SERVER_FATE_DRAIN : SERVER_FATE_CLOSE;
    case LINK_END_SERVER_LOST:
    case LINK_END_SERVER_FAST_CLOSE:
        return SERVER_FATE_CLOSE;
    case LINK_END_SERVER_CLOSING:
        return SERVER_FATE_CLOSING;
    }
    return SERVER_FATE_CLOSE;
}

/* ---- pairing ---- */

static void pair(struct client *c, struct server *s)
{
    server_set_state(s, SERVER_ACTIVE);
    s->client = c;
    s->inflight = 0;
    s->batch_open = false;
    s->timeout_cancel_sent = false;
    c->server = s;
    s->lease_budget = c->budget; /* the lease the pool took in the ledger before serving c */
}

/* A server whose backend goes on with its gone client's query (drained, or abandoned busy)
 * keeps the budget's lease until that ends (server_return_lease): the budget caps backends at
 * work, and a client that leaves mid-query must not free room for another while its query runs. */
static void unpair(struct client *c, struct server *s, bool backend_goes_on)
{
    c->server = NULL;
    s->client = NULL;
    if (!backend_goes_on)
        server_return_lease(s);
}

/* Fingerprints are recomputed only when the parameters changed (their generation moved). */

static uint64_t want_fingerprint(struct client *c, const struct server *s)
{
    if (!c->pool->have_welcome)
        return params_fingerprint(pool_session_defaults(c->pool, s), &c->params); /* no cache: the base varies */
    uint32_t gen = c->params.generation + 1; /* +1: generation 0 must compute too */
    if (c->params_fp_gen != gen) {
        c->params_fp = params_fingerprint(&c->pool->welcome, &c->params);
        c->params_fp_gen = gen;
    }
    return c->params_fp;
}

static uint64_t have_fingerprint(struct server *s)
{
    uint32_t gen = s->params.generation + 1;
    if (s->params_fp_gen != gen) {
        s->params_fp = params_fingerprint(NULL, &s->params);
        s->params_fp_gen = gen;
    }
    return s->params_fp;
}

/* Each statement of sql (NUL-separated) as a Query of its own, so that one that fails undoes
 * no other. */
static void queue_statements(struct client *c, struct server *s, const struct msg_out *sql)
{
    for (uint32_t at = 0; at < sql->len;) {
        const char *stmt = (const char *)sql->data + at;
        log_client(LOG_DEBUG, c, "S-%s: %s", CONN_ID_TEXT(s->id), stmt);
        server_queue_internal(s, stmt);
        at += (uint32_t)strlen(stmt) + 1;
    }
}

/* A login that gave a setting more than once: each of its settings is set first, in the order
 * Postgres applies them (client.h settings_in_order). The last of each name is the value that
 * stands, so the backend has the client's values after them, whatever the sync below, reckoned
 * from the record before them, sends: where a refusal stops that short, the refusal forgets the
 * record (relay.c on_internal_error) and a reported value's change comes back as
 * ParameterStatus. The count, or -1 when c was failed (out of memory). */
static int queue_settings_in_order(struct client *c, struct server *s)
{
    const struct msg_out *in = c->settings_in_order;
    if (!in)
        return 0;
    struct msg_out sql;
    codec_out_init(&sql);
    for (uint32_t at = 0; at < in->len;) {
        const char *name = (const char *)in->data + at;
        at += (uint32_t)strlen(name) + 1;
        const char *value = (const char *)in->data + at;
        at += (uint32_t)strlen(value) + 1;
        params_build_set(name, value, &sql);
    }
    client_forget_settings_in_order(c);
    if (sql.oom) {
        codec_out_free(&sql);
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return -1;
    }
    int n = 0;
    for (uint32_t at = 0; at < sql.len; n++)
        at += (uint32_t)strlen((const char *)sql.data + at) + 1;
    queue_statements(c, s, &sql);
    codec_out_free(&sql);
    return n;
}

/* Queue the statements that give s the session c wants. The count, or -1 when c was failed
 * (out of memory). */
static int queue_sync(struct client *c, struct server *s)
{
    int before = queue_settings_in_order(c, s);
    if (before < 0)
        return -1;
    if (want_fingerprint(c, s) == have_fingerprint(s))
        return before;
    struct msg_out sql;
    codec_out_init(&sql);
    int n = params_build_sync(pool_session_defaults(c->pool, s), &c->params, &s->params, &sql);
    if (sql.oom || params_note_sync(&s->params, &c->params) < 0) {
        codec_out_free(&sql);
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return -1;
    }
    queue_statements(c, s, &sql);
    codec_out_free(&sql);
    return before + n;
}

/* s was opened with c's startup parameters: where c still wants a reported one's login value
 * as it sent it, it wants it as the backend spells it (DateStyle "german" is "German, DMY"),
 * so that the sync compares like with like and sends nothing. 0 or -ENOMEM. */
static int take_startup_spelling(struct client *c, const struct server *s)
{
    if (c->startup_fp == 0 || s->startup_fp != c->startup_fp)
        return 0;
    const struct param_set *login = c->login_params ? c->login_params : &c->params;
    for (int i = 0; i < s->startup.n; i++) {
        const char *name = s->startup.items[i].name;
        const char *sent = params_get(login, name), *now = params_get(&c->params, name);
        if (!params_is_reported(name) || !sent || !now || strcmp(sent, now) != 0)
            continue;
        if (params_set(&c->params, name, s->startup.items[i].value) < 0)
            return -ENOMEM;
    }
    return 0;
}

void link_pair(struct client *c, struct server *s)
{
    pair(c, s);
    s->mode = c->mode;
    bool login = c->state == CLIENT_LOGIN_WAIT;
    if (c->state == CLIENT_WAITING || c->state == CLIENT_WAITING_LAST)
        pool_record_wait(c->pool, sluice_now(c->worker) - c->state_since_ms);
    s->last_bytes_ms = sluice_now(c->worker); /* idle_transaction_timeout counts from the link */
    login_reset_clear(s); /* a former client's, if it left mid-reset */
    /* The first client of a pool is linked for its welcome: it too gets its own parameters
     * applied (in session mode it keeps this server for good). A login's role is SET even on a
     * server that has it, so that Postgres checks this login's right to it. (session_authorization
     * is reported, so never forgotten: whether it may be set depends on the pool's own login
     * user, a superuser, not on grants to the client.) */
    for (int i = 0; login && i < c->params.n; i++) {
        if (params_is_identity(c->params.items[i].name) &&
            params_forget(&s->params, c->params.items[i].name) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
    }
    if ((login && client_take_login_defaults(c, pool_session_defaults(c->pool, s)) < 0) ||
        take_startup_spelling(c, s) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    int n = queue_sync(c, s);
    if (n < 0)
        return;
    session_effects_on_lease(c, s);
    if (login && n > 0) {
        client_set_state(c, CLIENT_LOGIN_SYNC); /* the welcome waits for the server's answer */
    } else {
        if (login && client_keep_login_params(c) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
        client_set_state(c, CLIENT_ACTIVE);
        if (login)
            client_send_welcome(c, pool_session_defaults(c->pool, s));
    }
    link_kick(s);
}

/* ---- the end of a pairing ---- */

/* Why a server whose fate is CLOSE closes, for its log line. */
static const char *close_reason(enum link_end why, const struct relay_outcome *o)
{
    switch (why) {
    case LINK_END_SERVER_LOST:
        return o ? o->why : "server lost";
    case LINK_END_SERVER_FAST_CLOSE:
        return "marked to close (server_fast_close), its transaction over";
    default:
        return "client left in the middle of a message";
    }
}

void link_end(struct client *c, struct server *s, enum link_end why, const struct relay_outcome *o)
{
    struct link_facts f = {
        .at_boundary = relay_at_boundary(s, c),
        .client_mid_message = relay_client_mid_message(c),
        .drain_allowed = s->pool->worker->cfg->server_drain_timeout > 0,
    };
    enum server_fate fate = link_fate(why, &f);
    bool server_said_fatal = s->said_fatal;
    /* The client's stream is made whole (CopyFail, the Sync of an open batch) while the pair
     * still knows what it was in the middle of. */
    if (fate == SERVER_FATE_DRAIN && !relay_orphan_server(s, c))
        fate = SERVER_FATE_CLOSE;
    bool client_left = why == LINK_END_CLIENT_VANISHED || why == LINK_END_CLIENT_TERMINATED;
    bool abandon = fate == SERVER_FATE_CLOSE && client_left && server_backend_busy(s);
    unpair(c, s, fate == SERVER_FATE_DRAIN || abandon);
    if (why == LINK_END_RELEASED)
        client_set_state(c, CLIENT_IDLE); /* before the server goes: it may serve a waiter */
    switch (fate) {
    case SERVER_FATE_REUSE:
        pool_release(s);
        break;
    case SERVER_FATE_DRAIN:
        server_drain(s, why == LINK_END_CLIENT_TERMINATED ? DRAIN_LET_QUERY_FINISH
                                                          : DRAIN_CANCEL_QUERY);
        break;
    case SERVER_FATE_CLOSE:
        if (abandon)
            server_abandon(s, close_reason(why, o));
        else
            server_close(s, close_reason(why, o));
        break;
    case SERVER_FATE_CLOSING:
        break;
    }
    switch (why) {
    case LINK_END_RELEASED:
        if (c->state == CLIENT_IDLE && !sluice_serving(c->worker))
            client_fail(c, FAIL_SHUTDOWN, ""); /* its transaction was what shutdown waited for */
        else if (c->state == CLIENT_IDLE)
            relay_client_interest(c);
        break;
    case LINK_END_SERVER_LOST:
        /* After the server's own FATAL the client sees the close as from Postgres: that error
         * and the end of the connection, not a second FATAL of sluice's. */
        if (server_said_fatal && !(o && o->detail))
            client_close_after_output(c, "its server ended the session with a FATAL error");
        else
            client_fail(c, FAIL_SERVER_LOST, o && o->detail ? o->detail : close_reason(why, o));
        break;
    case LINK_END_SERVER_FAST_CLOSE:
        client_fail(c, FAIL_ADMIN_KILLED,
                    ": its server was closed after RECONNECT or RELOAD "
                    "(server_fast_close)");
        break;
    case LINK_END_CLIENT_VANISHED:
    case LINK_END_CLIENT_TERMINATED:
    case LINK_END_SERVER_CLOSING:
        break; /* the caller ends the client, or the server's closer tells it */
    }
}

/* ---- what the relay reports ---- */

/* c: the client s was linked to when the relay ran (NULL: none). */
static void settle(struct server *s, struct client *c, enum relay_result r,
                   const struct relay_outcome *o)
{
    if (!c) {
        server_pumped(s, r, o);
        return;
    }
    switch (r) {
    case RELAY_LINKED:
        return;
    case RELAY_CLIENT_FAILED: /* a FATAL failure ends the link: CLIENT_VANISHED */
        if (o->failure.ends == CLIENT_FAILURE_ENDS_REQUEST_AND_SESSION)
            client_fail_request_and_close(c, o->failure.reason, o->failure.detail);
        else
            client_fail(c, o->failure.reason, o->failure.detail);
        return;
    case RELAY_RELEASE:
        link_end(c, s, LINK_END_RELEASED, NULL);
        return;
    case RELAY_TXN_FORBIDDEN:
        client_fail_request_and_close(c, FAIL_STATEMENT_MODE_TXN, ""); /* ends the link */
        return;
    case RELAY_TERMINATED: {
        bool hung_up = c->state == CLIENT_HUNG_UP;
        link_end(c, s, LINK_END_CLIENT_TERMINATED, NULL);
        client_close(c, hung_up ? "client closed the connection, its answers written"
                                : "client sent Terminate");
        return;
    }
    case RELAY_TERMINATING:
        client_set_state(c, CLIENT_TERMINATING);
        link_kick(s); /* its answers */
        return;
    case RELAY_CLIENT_HUNG_UP:
        log_client(LOG_DEBUG, c, "closed the connection while its statements ran: they go on");
        client_set_state(c, CLIENT_HUNG_UP);
        link_kick(s); /* its answers, written while its socket takes them */
        return;
    case RELAY_LOGIN_SYNCED:
        client_login_synced(c, s);
        if (c->state == CLIENT_ACTIVE)
            link_kick(s); /* its welcome, and what it sent meanwhile */
        return;           /* (refused: the pair was taken apart) */
    case RELAY_SERVER_LOST:
        link_end(c, s, LINK_END_SERVER_LOST, o);
        return;
    case RELAY_CLIENT_LOST:
        if (client_terminating(c)) {
            /* Its answers go nowhere (it closed right after its Terminate), but what it sent
             * before the Terminate still runs to its end, as in Postgres: not cancelled. */
            link_end(c, s, LINK_END_CLIENT_TERMINATED, NULL);
            client_close(c, "client sent Terminate and closed before its answers");
            return;
        }
        client_close(c, o->why); /* its close ends the link: CLIENT_VANISHED */
        return;
    case RELAY_CLIENT_OUT_OF_MEMORY:
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
}

void link_kick(struct server *s)
{
    struct client *c = s->client;
    struct relay_outcome o;
    enum relay_result r = relay_pump(s, &o);
    settle(s, c, r, &o);
}

void link_client_readable(struct client *c)
{
    struct server *s = c->server;
    struct relay_outcome o;
    enum relay_result r = relay_client_readable(c, &o);
    settle(s, c, r, &o);
}

void link_server_io(struct server *s, int status, int events)
{
    struct client *c = s->client;
    struct relay_outcome o = {.detail = NULL};
    if (status < 0) {
        /* (the error is read first: reading it clears it, and the bytes before it follow) */
        char why[sizeof(o.why)];
        snprintf(why, sizeof(why), "%s", sockio_poll_error(&s->io, status));
        settle(s, c, relay_server_failed(s, why, &o), &o);
        return;
    }
    if (events & UV_WRITABLE) {
        enum relay_result r = relay_pump(s, &o);
        settle(s, c, r, &o);
        if (s->state == SERVER_CLOSED)
            return;
        c = s->client;
    }
    if (events & UV_READABLE) {
        enum relay_result r = relay_server_readable(s, &o);
        settle(s, c, r, &o);
    }
}

/* ---- the pool's events ---- */

/* query_wait_notify: a NOTICE (PgBouncer's wording comes from the pool). */
static void notify_waiter(struct client *c, const char *message)
{
    codec_put_error(&c->out, 'N', "NOTICE", sqlstate_code(SQLSTATE_SUCCESSFUL_COMPLETION), message,
                    NULL, NULL);
    client_send(c);
}

const struct pool_events link_pool_events = {
    .waiter_served = link_pair,
    .waiter_failed = client_fail_with_state,
    .waiter_timed_out = client_wait_timed_out,
    .waiter_notified = notify_waiter,
    .login_welcomed = client_welcome_from_pool,
    .welcome_dropped = client_keep_welcome,
    .client_tick = client_check_timeouts,
    .open_server = server_connect,
    .close_server = server_close,
    .close_server_for = server_close_for,
    .kick_server = server_kick,
    .watch_server = server_want_io,
    .server_tick = server_check_timeouts,
    .offer_server = handover_offer,
    .offer_server_to_older = handover_offer_older,
    .offer_idle_servers = handover_offer_pool,
};

/* ---- the servers' events ---- */

static void server_closing(struct server *s)
{
    link_end(s->client, s, LINK_END_SERVER_CLOSING, NULL);
}

static void server_fast_close_due(struct server *s)
{
    link_end(s->client, s, LINK_END_SERVER_FAST_CLOSE, NULL);
}

const struct server_events link_server_events = {
    .io = link_server_io,
    .closing = server_closing,
    .fast_close_due = server_fast_close_due,
};

/* ---- the clients' events ---- */

static void client_vanished(struct client *c)
{
    link_end(c, c->server, LINK_END_CLIENT_VANISHED, NULL);
}

static void client_writable(struct client *c)
{
    link_kick(c->server);
}

const struct client_events link_client_events = {
    .vanished = client_vanished,
    .readable = link_client_readable,
    .writable = client_writable,
};

/* ---- the relay's events ---- */

const struct relay_events link_relay_events = {
    .login_refused = client_login_refused,
};

/* ---- what cancels ask ---- */

static void cancel_request_handled(struct client *requester)
{
    client_close(requester, "cancel request handled");
}

static void cancel_request_waits(struct client *requester)
{
    client_set_state(requester, CLIENT_CANCEL_WAIT);
}

static void cancel_server_done(struct server *s)
{
    if (s->state == SERVER_ACTIVE && s->client && s->cancels_in_flight == 0)
        link_kick(s); /* the client's next bytes waited for this (relay.c client_bytes_wait) */
    else
        server_maybe_done_resetting(s);
}

const struct cancel_events link_cancel_events = {
    .request_handled = cancel_request_handled,
    .request_waits = cancel_request_waits,
    .queued_cancelled = client_cancel_queued,
    .server_done = cancel_server_done,
};
