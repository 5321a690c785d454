/* relay: the hot path between a linked client and server (see relay.h).
 *
 * Each side reads into its own buffer; framed bytes are written to the peer straight from there
 * (no copy). A side is read only while the peer has taken everything framed so far, so memory per
 * connection stays at one buffer however large a result or COPY is ("read when we don't write").
 * Only message headers are looked at, except ReadyForQuery and ParameterStatus from the server,
 * whose short bodies are read in place.
 *
 * Accounting that decides when the server can go back (pool_mode.c says whether it should):
 *   inflight   +1 for each Query, Sync, FunctionCall forwarded; -1 for each ReadyForQuery back
 *   swallow    ReadyForQuery due for sluice's own queries; their replies are consumed here
 *   batch_open extended-protocol messages forwarded since the last Sync
 */
#include "relay.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "log.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "sluice.h"

/* Servers are trusted more than clients, but a length past this is a broken stream. */
#define SERVER_MAX_BODY 0x3fffffffu

enum frame_stop {
    STOP_NEED_DATA,   /* framed everything that is complete */
    STOP_TERMINATE,   /* client sent Terminate: forward what is before it, then close */
    STOP_NEED_FLUSH,  /* a message to consume follows bytes still to forward */
    STOP_FAILED,      /* the connection was failed and is closing */
};

static inline uint32_t min_u32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

static uint32_t read_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- client -> server framing ---- */

static enum frame_stop frame_client(struct client *c, struct server *s)
{
    struct buf *b = &c->in;
    uint32_t max_body = (uint32_t)c->app->cfg->max_packet_size;
    while (b->scan < b->wpos) {
        if (c->rx.remain) {
            uint32_t take = min_u32(c->rx.remain, b->wpos - b->scan);
            b->scan += take;
            c->rx.remain -= take;
            continue;
        }
        if (b->wpos - b->scan < CODEC_HEADER_LEN)
            return STOP_NEED_DATA;
        const uint8_t *p = b->data + b->scan;
        uint32_t len = read_u32(p + 1);
        if (len < 4) {
            client_fail(c, FAIL_PROTOCOL_VIOLATION, "message length below 4");
            return STOP_FAILED;
        }
        if (len - 4 > max_body) {
            char detail[128];
            snprintf(detail, sizeof(detail), "%u bytes, max_packet_size is %u", len - 4, max_body);
            client_fail(c, FAIL_PACKET_TOO_LARGE, detail);
            return STOP_FAILED;
        }
        switch (p[0]) {
        case 'X':
            return STOP_TERMINATE;
        case 'd':
        case 'c':
        case 'f':
            break;
        case 'Q':
        case 'F':
        case 'S':
            if (s->inflight++ == 0)
                s->query_start_ms = sluice_now(c->app);
            if (p[0] == 'S')
                s->batch_open = false;
            break;
        case 'P':
        case 'B':
        case 'D':
        case 'E':
        case 'C':
        case 'H':
            s->batch_open = true;
            break;
        default: {
            char detail[64];
            snprintf(detail, sizeof(detail), "unexpected message type 0x%02x", p[0]);
            client_fail(c, FAIL_PROTOCOL_VIOLATION, detail);
            return STOP_FAILED;
        }
        }
        uint32_t whole = len + 1;
        uint32_t take = min_u32(whole, b->wpos - b->scan);
        b->scan += take;
        c->rx.remain = whole - take;
    }
    return STOP_NEED_DATA;
}

/* ---- server -> client framing ---- */

static void on_parameter_status(struct server *s, struct client *c, const uint8_t *body,
                                uint32_t len)
{
    const char *name, *value;
    if (!codec_parse_parameter_status(body, len, &name, &value))
        return;
    if (params_set(&s->params, name, value) < 0)
        s->close_when_free = true; /* out of memory: its state is unknown now */
    /* A change while linked is the client's own SET (or the echo of sluice's sync SET for it):
     * either way it is what the client now has. */
    if (c && params_is_client_settable(name)) {
        if (params_set(&c->params, name, value) < 0)
            s->close_when_free = true;
    }
}

static void on_internal_error(struct server *s, const uint8_t *body, uint32_t len)
{
    struct error_fields ef;
    if (codec_parse_error(body, len, &ef))
        log_server(LOG_WARNING, s, "server said, outside any client's query: %s %s (%s)",
                   ef.severity ? ef.severity : "", ef.message ? ef.message : "",
                   ef.sqlstate ? ef.sqlstate : "");
}

/* Frame server messages. Messages are forwarded to c, or consumed when there is no client or
 * they answer sluice's own query. */
static enum frame_stop frame_server(struct server *s, struct client *c)
{
    struct buf *b = &s->in;
    while (b->scan < b->wpos) {
        if (s->rx.remain) {
            uint32_t take = min_u32(s->rx.remain, b->wpos - b->scan);
            b->scan += take;
            s->rx.remain -= take;
            if (s->rx.discard)
                buf_consume(b, take);
            continue;
        }
        uint32_t avail = b->wpos - b->scan;
        if (avail < CODEC_HEADER_LEN)
            return STOP_NEED_DATA;
        const uint8_t *p = b->data + b->scan;
        uint8_t type = p[0];
        uint32_t len = read_u32(p + 1);
        if (len < 4 || len - 4 > SERVER_MAX_BODY) {
            log_server(LOG_ERROR, s, "server sent a message of impossible length %u", len);
            s->close_when_free = true;
            return STOP_FAILED;
        }
        uint32_t whole = len + 1;
        bool consume = c == NULL || s->swallow > 0;
        bool inspect = type == 'Z' || type == 'S' || (type == 'E' && consume);
        if (inspect && whole <= buf_block_size()) {
            if (avail < whole) {
                return STOP_NEED_DATA;
            }
            const uint8_t *body = p + CODEC_HEADER_LEN;
            if (type == 'Z') {
                if (len != 5) {
                    log_server(LOG_ERROR, s, "server sent a malformed ReadyForQuery");
                    s->close_when_free = true;
                    return STOP_FAILED;
                }
                s->txn_status = (char)body[0];
                s->last_ready_ms = sluice_now(s->pool->app);
                if (s->swallow > 0) {
                    s->swallow--;
                    consume = true;
                } else if (s->inflight > 0 && --s->inflight == 0) {
                    s->timeout_cancel_sent = false;
                }
            } else if (type == 'S') {
                on_parameter_status(s, c, body, len - 4);
            } else {
                on_internal_error(s, body, len - 4);
            }
        } else if (type == 'Z') {
            log_server(LOG_ERROR, s, "server sent a malformed ReadyForQuery");
            s->close_when_free = true;
            return STOP_FAILED;
        }
        if (consume) {
            if (buf_pending(b) > 0)
                return STOP_NEED_FLUSH;
            uint32_t take = min_u32(whole, avail);
            b->scan += take;
            buf_consume(b, take);
            s->rx.remain = whole - take;
            s->rx.discard = s->rx.remain > 0;
        } else {
            uint32_t take = min_u32(whole, avail);
            b->scan += take;
            s->rx.remain = whole - take;
            s->rx.discard = false;
        }
    }
    return STOP_NEED_DATA;
}

/* ---- writing ---- */

enum write_result { WRITE_DONE, WRITE_BLOCKED, WRITE_BROKEN };

static enum write_result write_generated(struct sockio *io, struct msg_out *out, size_t *pos)
{
    if (*pos >= out->len)
        return WRITE_DONE;
    ssize_t n = sockio_write(io, out->data + *pos, out->len - *pos);
    if (n < 0)
        return WRITE_BROKEN;
    *pos += (size_t)n;
    if (*pos < out->len)
        return WRITE_BLOCKED;
    codec_out_reset(out);
    *pos = 0;
    return WRITE_DONE;
}

static enum write_result write_framed(struct sockio *io, struct buf *b, uint64_t *counter)
{
    uint32_t pending = buf_pending(b);
    if (pending == 0)
        return WRITE_DONE;
    ssize_t n = sockio_write(io, b->data + b->rpos, pending);
    if (n < 0)
        return WRITE_BROKEN;
    *counter += (uint64_t)n;
    buf_consume(b, (uint32_t)n);
    return (uint32_t)n < pending ? WRITE_BLOCKED : WRITE_DONE;
}

/* ---- reading ---- */

/* Read what the server has. >0 read, 0 nothing now, <0 the server is gone (already handled). */
static int server_read(struct server *s)
{
    if (!buf_attach(&s->in)) {
        s->close_when_free = true;
        return 0;
    }
    uint32_t room = buf_make_room(&s->in);
    if (room == 0)
        return 0;
    ssize_t n = sockio_read(&s->io, s->in.data + s->in.wpos, room);
    if (n > 0) {
        s->in.wpos += (uint32_t)n;
        return (int)n;
    }
    if (n == SOCKIO_AGAIN)
        return 0;
    char reason[128];
    if (n == 0)
        snprintf(reason, sizeof(reason), "server closed the connection");
    else
        snprintf(reason, sizeof(reason), "read from server failed: %s", strerror((int)-n));
    struct client *c = s->client;
    if (c) {
        pool_unlink(c, s);
        server_close(s, reason);
        client_fail(c, FAIL_SERVER_LOST, reason);
    } else {
        server_close(s, reason);
    }
    return -1;
}

/* ---- interest ---- */

static int read_interest(bool want_read)
{
    return want_read ? UV_READABLE : 0;
}

void relay_client_interest(struct client *c)
{
    int ev = 0;
    if (c->out_pos < c->out.len)
        ev |= UV_WRITABLE;
    switch (c->state) {
    case CLIENT_STARTUP:
    case CLIENT_AUTH:
    case CLIENT_IDLE:
    case CLIENT_WAITING:
    case CLIENT_LOGIN_WAIT:
        /* Keep reading while there is room: that is how a client that leaves while queued is
         * noticed. A full buffer stops reading (backpressure, not an error). */
        if (!c->in.data || buf_free_tail(&c->in) > 0 || c->in.rpos > 0)
            ev |= UV_READABLE;
        break;
    default:
        break;
    }
    sockio_want(&c->io, ev);
}

void relay_server_interest(struct server *s)
{
    if (s->state == SERVER_CONNECTING || s->state == SERVER_CLOSED)
        return;
    int ev = UV_READABLE;
    if (s->out_pos < s->out.len)
        ev |= UV_WRITABLE;
    sockio_want(&s->io, ev);
}

static void set_pair_interest(struct client *c, struct server *s)
{
    bool to_server_pending = s->out_pos < s->out.len || buf_pending(&c->in) > 0;
    bool to_client_pending = c->out_pos < c->out.len || buf_pending(&s->in) > 0;
    bool client_room = !c->in.data || c->in.wpos < buf_block_size() || c->in.rpos > 0;
    bool server_room = !s->in.data || s->in.wpos < buf_block_size() || s->in.rpos > 0;
    sockio_want(&c->io, read_interest(!to_server_pending && client_room) |
                            (to_client_pending ? UV_WRITABLE : 0));
    sockio_want(&s->io, read_interest(!to_client_pending && server_room) |
                            (to_server_pending ? UV_WRITABLE : 0));
}

/* ---- release ---- */

/* Is the pair at a point where the server holds nothing of this client's in flight? */
static bool pair_quiet(const struct client *c, const struct server *s)
{
    return s->inflight == 0 && s->swallow == 0 && !s->batch_open && c->rx.remain == 0 &&
           s->rx.remain == 0 && buf_pending(&c->in) == 0 && buf_is_empty(&s->in) &&
           c->out_pos >= c->out.len && s->out_pos >= s->out.len;
}

/* Returns true when the pair was taken apart (the caller must stop touching both). */
static bool maybe_release(struct client *c, struct server *s)
{
    if (!pair_quiet(c, s))
        return false;
    const struct pool_mode_ops *ops =
        pool_mode_ops(s->pool->mode, c->app->cfg->server_reset_query_always);
    if (!ops->release_at_idle)
        return false;
    if (s->txn_status != 'I') {
        if (ops->forbid_transaction) {
            client_fail(c, FAIL_STATEMENT_MODE_TXN, "");
            return true;
        }
        return false;
    }
    pool_unlink(c, s);
    s->pool->xact_count++;
    client_set_state(c, CLIENT_IDLE);
    pool_release(s);
    /* Bytes the client already sent for its next transaction: queue it again right away. */
    if (c->state == CLIENT_IDLE && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
        client_on_data(c);
    else if (c->state == CLIENT_IDLE)
        relay_client_interest(c);
    return true;
}

/* ---- the pump ---- */

void relay_kick(struct server *s)
{
    struct client *c = s->client;
    if (!c) {
        /* No client: everything the server says is consumed (sluice's own query, a notice). */
        for (;;) {
            if (write_generated(&s->io, &s->out, &s->out_pos) == WRITE_BROKEN) {
                server_close(s, "write to server failed");
                return;
            }
            enum frame_stop st = frame_server(s, NULL);
            if (st == STOP_FAILED) {
                server_close(s, "server protocol error");
                return;
            }
            if (sockio_pending(&s->io) > 0 && server_read(s) > 0)
                continue;
            break;
        }
        buf_detach_if_empty(&s->in);
        if (s->state == SERVER_RESETTING)
            server_maybe_done_resetting(s);
        else
            relay_server_interest(s);
        return;
    }

    for (int round = 0; round < 4; round++) {
        /* Client -> server: sluice's own messages first, then the client's. */
        enum write_result w = write_generated(&s->io, &s->out, &s->out_pos);
        enum frame_stop cst = STOP_NEED_DATA;
        if (w == WRITE_DONE) {
            cst = frame_client(c, s);
            if (cst == STOP_FAILED)
                return;
            w = write_framed(&s->io, &c->in, &s->pool->bytes_in);
        }
        if (w == WRITE_BROKEN) {
            pool_unlink(c, s);
            server_close(s, "write to server failed");
            client_fail(c, FAIL_SERVER_LOST, "write to server failed");
            return;
        }
        if (cst == STOP_TERMINATE && buf_pending(&c->in) == 0) {
            client_close(c, "client sent Terminate");
            return;
        }

        /* Server -> client: anything sluice generated for the client first. */
        w = write_generated(&c->io, &c->out, &c->out_pos);
        enum frame_stop sst = STOP_NEED_DATA;
        if (w == WRITE_DONE) {
            for (;;) {
                sst = frame_server(s, c);
                if (sst == STOP_FAILED) {
                    pool_unlink(c, s);
                    server_close(s, "server protocol error");
                    client_fail(c, FAIL_SERVER_LOST, "the server sent a malformed message");
                    return;
                }
                w = write_framed(&c->io, &s->in, &s->pool->bytes_out);
                if (sst == STOP_NEED_FLUSH && w == WRITE_DONE)
                    continue;
                break;
            }
        }
        if (w == WRITE_BROKEN) {
            client_close(c, "write to client failed");
            return;
        }
        if (maybe_release(c, s))
            return;
        /* TLS may hold decrypted bytes the socket will not announce again. */
        bool more = false;
        if (sockio_pending(&s->io) > 0 && buf_pending(&s->in) == 0) {
            int n = server_read(s);
            if (n < 0)
                return;
            more |= n > 0;
        }
        if (sockio_pending(&c->io) > 0 && buf_pending(&c->in) == 0) {
            int n = client_read(c);
            if (n < 0)
                return;
            more |= n > 0;
        }
        if (!more)
            break;
    }
    buf_detach_if_empty(&c->in);
    set_pair_interest(c, s);
}

void relay_client_readable(struct client *c)
{
    if (buf_pending(&c->in) > 0) {
        /* Not reading while the server has not taken the last bytes; a stale event. */
        relay_kick(c->server);
        return;
    }
    if (client_read(c) < 0)
        return;
    relay_kick(c->server);
}

void relay_client_writable(struct client *c)
{
    if (c->server) {
        relay_kick(c->server);
        return;
    }
    if (write_generated(&c->io, &c->out, &c->out_pos) == WRITE_BROKEN) {
        client_close(c, "write to client failed");
        return;
    }
    if (c->state == CLIENT_CLOSING && c->out_pos >= c->out.len) {
        client_close(c, NULL);
        return;
    }
    relay_client_interest(c);
}

void relay_server_readable(struct server *s)
{
    if (buf_pending(&s->in) == 0 && server_read(s) < 0)
        return;
    relay_kick(s);
}

void relay_server_writable(struct server *s)
{
    relay_kick(s);
}
