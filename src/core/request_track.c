/* request_track: the client's requests as relay.c frames them on their way to the server (see
 * request_track.h). Each message's header is checked (length, type, max_packet_size) and the
 * counts that decide when the server can go back are kept (inflight, batch_open, COPY). In
 * transaction mode stmt_track.c follows what each message does to state sluice keeps; session
 * mode looks only for resets of the client's login parameters. Writing the bytes is relay.c's.
 */
#include "request_track.h"

#include <stdio.h>
#include <string.h>

#include "client.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "session_effects.h"
#include "session_state.h"
#include "sluice.h"
#include "stmt_track.h"

static inline uint32_t min_u32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

bool request_track_on(const struct server *s)
{
    return pool_mode_ops(s->mode, false)->release_at_idle;
}

bool request_track_backlogged(const struct server *s)
{
    /* During COPY FROM STDIN the server answers nothing before the client's CopyDone. */
    return request_track_on(s) && !s->copy_in && stmt_queue_backlogged(&s->reqs);
}

bool request_track_client_waits(const struct server *s)
{
    /* Session mode's queue holds no statement of the client's (stmt_track_count): nothing of
     * it waits. */
    return login_reset_client_waits(s) || s->reqs.shape_awaited || request_track_backlogged(s) ||
           ((stmt_queue_drop_undecided(&s->reqs) || stmt_queue_parse_awaited(&s->reqs) ||
             (stmt_queue_past_failed_batch(&s->reqs) && request_track_on(s))) &&
            !s->copy_in);
}

/* Session mode inspects no statement but for resets of the client's login parameters
 * (login_reset.h), in a Query or a Parse (transaction mode: stmt_track.c). False while a
 * short one is not here whole: it is read whole first. */
static bool inspect_session_text(struct client *c, struct server *s, uint8_t type,
                                 const uint8_t *body, uint32_t len, uint32_t avail_body)
{
    if (avail_body < len) {
        if (CODEC_HEADER_LEN + len <= buf_block_size())
            return false;
        login_reset_watch_text(s, c, type, (const char *)body, avail_body); /* streams */
        return true;
    }
    uint32_t at = 0;
    if (type == 'P') {
        const uint8_t *nul = memchr(body, '\0', len);
        if (!nul)
            return true; /* malformed: the server says so */
        at = (uint32_t)(nul - body) + 1;
    }
    struct param_touch touch;
    const char *text = (const char *)body + at;
    (void)session_state_detect(text, len - at, &touch,
                               session_effects_reading(c, s, text, len - at));
    login_reset_note(s, c, &touch.reset);
    return true;
}

/* The client ended a COPY FROM STDIN (CopyDone or CopyFail; sluice's CopyFail for a client that
 * left). A COPY started by an Execute had the Syncs sent after that Execute arrive during copy-in,
 * where Postgres ignores them (protocol "COPY Operations"): they are not answered, so they leave
 * the count, and the batch stays open until the Sync that follows the CopyDone (libpq's
 * PQputCopyEnd sends one). */
void request_track_copy_in_ended(struct server *s)
{
    s->copy_in = false;
    if (s->syncs_after_execute == 0)
        return;
    s->inflight -= s->syncs_after_execute;
    stmt_queue_drop_last_syncs(&s->reqs, s->syncs_after_execute);
    s->syncs_after_execute = 0;
    s->batch_open = true;
}

/* During COPY FROM STDIN Postgres refuses what has no place there in its own words, then ends
 * the session: a Terminate or a type it does not know, on the type byte (ERROR 08P01 "unexpected
 * message type 0x.. during COPY from stdin"), a CopyData, CopyDone, CopyFail, Flush or Sync past
 * its bound on the length (ERROR 08006), each followed by FATAL 08P01 and the close, the COPY
 * rolled back. The bytes it reads before refusing (`bytes`) go to it and the server says so
 * itself; nothing after them is framed. No ReadyForQuery follows, but the close is due (counted
 * as one: the client waits for it as after a Terminate, and link.c ends the link at the close). */
static enum client_frame refused_by_server_in_copy(struct server *s, struct buf *b, uint32_t bytes)
{
    s->copy_in = false;
    s->inflight++;
    b->scan += bytes;
    return CLIENT_FRAME_TERMINATE;
}

/* Is anything the client sent still to be answered by its server: bytes framed and not yet
 * written, a request in flight, a batch not synced (its ParseComplete, BindComplete, an
 * Execute's rows wait for a Sync or a Flush)? */
static bool answers_due(const struct client *c, const struct server *s)
{
    return buf_pending(&c->in) > 0 || s->inflight > 0 || s->batch_open;
}

/* A type byte Postgres does not know, after requests it has still to answer. Postgres reads
 * message by message: it runs and answers what came before (an INSERT committed; a batch not
 * synced answered as far as it went, its implicit transaction rolled back by the FATAL), then
 * sends FATAL 08P01 "invalid frontend message type N" on the type byte itself and ends the
 * session. Refusing the byte here would lose what came before it (the link ended at once), so
 * the byte goes to the server after them, which does all that in its own words, as
 * refused_by_server_in_copy; the server is lost, as the backend exits. Nothing after the byte
 * is framed. With nothing due the byte is refused here and the server kept. */
static enum client_frame refused_by_server_after_answers(struct server *s, struct buf *b)
{
    s->inflight++;
    b->scan += 1;
    return CLIENT_FRAME_TERMINATE;
}

enum client_frame request_track_frame(struct client *c, struct server *s,
                                      struct client_failure *fail)
{
    struct buf *b = &c->in;
    uint32_t max_body = (uint32_t)c->worker->cfg->max_packet_size;
    bool track = request_track_on(s);
    while (b->scan < b->wpos) {
        if (c->rx.remain && c->rx.discard) {
            /* The rest of a Query sluice answered itself (stmt_track.c,
             * answer_query_after_failed_parse): dropped as it comes, nothing framed before it. */
            if (buf_pending(b) > 0)
                return CLIENT_FRAME_NEED_FLUSH;
            uint32_t take = min_u32(c->rx.remain, b->wpos - b->scan);
            b->scan += take;
            buf_consume(b, take);
            c->rx.remain -= take;
            c->rx.discard = c->rx.remain > 0;
            continue;
        }
        if (c->rx.remain) {
            uint32_t take = min_u32(c->rx.remain, b->wpos - b->scan);
            b->scan += take;
            c->rx.remain -= take;
            stmt_track_keep_parse_tail(&c->rx, b->data + b->scan - take, take);
            stmt_track_watch_query_tail(s, &c->rx, b->data + b->scan - take, take);
            login_reset_watch_chunk(s, c, b->data + b->scan - take, take, c->rx.remain == 0);
            continue;
        }
        /* The client's next request waits for the reply of one that may reset its login
         * parameters, and for the restore after it (login_reset.h), or for the outcome of a
         * Close or DEALLOCATE of its statements, or of a Parse of the name it Parses again; and
         * for a cancel on its way (relay.c, client_bytes_wait: only the rest of a message
         * already begun is framed then). */
        if (request_track_client_waits(s) || s->cancels_in_flight > 0)
            return CLIENT_FRAME_NEED_DATA;
        const uint8_t *p = b->data + b->scan;
        uint8_t type;
        uint32_t body_len;
        if (s->copy_in && !codec_frontend_type_known(p[0]))
            return refused_by_server_in_copy(s, b, 1);
        if (!codec_frontend_type_known(p[0]) && answers_due(c, s))
            return refused_by_server_after_answers(s, b);
        /* An unknown type is refused on its first byte, as Postgres refuses it (client.c). */
        if (!codec_frontend_type_known(p[0])) {
            char detail[16];
            snprintf(detail, sizeof(detail), "%u", (unsigned)p[0]);
            fail_session(fail, FAIL_UNKNOWN_MESSAGE_TYPE, detail);
            return CLIENT_FRAME_FAILED;
        }
        /* No bound here: an oversized body gets its own message naming max_packet_size. */
        switch (codec_frame_header(p, b->wpos - b->scan, UINT32_MAX, &type, &body_len)) {
        case FRAME_NEED_MORE:
            return CLIENT_FRAME_NEED_DATA;
        case FRAME_BAD_LENGTH:
            fail_session(fail, FAIL_PROTOCOL_VIOLATION, "message length below 4");
            return CLIENT_FRAME_FAILED;
        case FRAME_OK:
            break;
        }
        uint32_t len = body_len + 4;
        if (body_len > max_body) {
            char detail[128];
            snprintf(detail, sizeof(detail), "%u bytes, max_packet_size is %u", body_len, max_body);
            fail_session(fail, FAIL_PACKET_TOO_LARGE, detail);
            return CLIENT_FRAME_FAILED;
        }
        /* disable_pqexec, for a client linked to a server (an idle one is refused in client.c) */
        if (type == 'Q' && c->worker->cfg->disable_pqexec) {
            fail_session(fail, FAIL_SIMPLE_QUERY_DISABLED, "");
            return CLIENT_FRAME_FAILED;
        }
        if (type == 'X' && s->copy_in)
            return refused_by_server_in_copy(s, b, CODEC_HEADER_LEN);
        if (type == 'X')
            return CLIENT_FRAME_TERMINATE; /* left in c->in: nothing after it is framed */
        if (len > codec_frontend_max_len(type) && s->copy_in)
            return refused_by_server_in_copy(s, b, CODEC_HEADER_LEN);
        /* Past Postgres's bound the server would close on it: the client is told so here, and
         * the server stays sound for the next one. */
        if (len > codec_frontend_max_len(type)) {
            char detail[96];
            snprintf(detail, sizeof(detail), "invalid message length %u for message type '%c'", len,
                     type);
            fail_session(fail, FAIL_PROTOCOL_VIOLATION, detail);
            return CLIENT_FRAME_FAILED;
        }
        /* Protocol "COPY Operations": during copy-in Postgres ignores Sync and Flush; it
         * answers neither, so neither is counted. */
        bool ignored = s->copy_in && (p[0] == 'S' || p[0] == 'H');
        /* After an error in an extended batch Postgres skips the rest of it up to the Sync, a
         * simple Query or FunctionCall included (protocol "Extended Query": it "reads and
         * discards messages until a Sync is reached"): no reply, nothing it does, so neither
         * followed nor counted, nor queued (a queue full of requests that will never be
         * answered would wait for ever: request_track_backlogged). But a CopyDone or CopyFail
         * after an extended COPY failed ends sluice's copy_in, skipped by the server or not:
         * without it the client's Sync would pass for one Postgres ignores inside a COPY, and
         * its ReadyForQuery match nothing. */
        bool ends_copy = s->copy_in && (p[0] == 'c' || p[0] == 'f');
        bool skipped = s->reqs.skipping_to_sync && p[0] != 'S' && !ends_copy;
        int resets_before = login_reset_count(s);
        if (!track && (p[0] == 'Q' || p[0] == 'P') && login_reset_follows(s, c) &&
            !inspect_session_text(c, s, p[0], p + CODEC_HEADER_LEN, len - 4,
                                  b->wpos - b->scan - CODEC_HEADER_LEN))
            return CLIENT_FRAME_NEED_DATA;
        bool started =
            false; /* its start went out from s->out, renamed; c->rx.remain is the rest */
        if (track && !ignored && !skipped) {
            uint32_t avail_body = b->wpos - b->scan - CODEC_HEADER_LEN;
            switch (
                stmt_track_message(c, s, p[0], p + CODEC_HEADER_LEN, len - 4, avail_body, fail)) {
            case TRACK_PASS:
                /* a name may have been rewritten in place: the message moved or changed length */
                p = b->data + b->scan;
                len = codec_get_u32(p + 1);
                break;
            case TRACK_STARTED:
                started = true;
                break;
            case TRACK_WAIT:
                return CLIENT_FRAME_NEED_DATA;
            case TRACK_FLUSH:
                return CLIENT_FRAME_NEED_FLUSH;
            case TRACK_FAILED:
                return CLIENT_FRAME_FAILED;
            case TRACK_CONSUMED:
            case TRACK_REPLACED:
                continue;
            }
        } else if (!ignored && !skipped) {
            switch (stmt_track_count(c, s, p[0], fail)) {
            case TRACK_FLUSH:
                return CLIENT_FRAME_NEED_FLUSH;
            case TRACK_FAILED:
                return CLIENT_FRAME_FAILED;
            default:
                break;
            }
        }
        /* Before a CopyInResponse, anything but Sync and Flush after an Execute (pipelined COPY
         * data, its CopyDone) may end the COPY that Execute starts before a later Sync. */
        if (!s->copy_in && type != 'S' && type != 'H')
            s->only_syncs_after_execute = type == 'Q' || type == 'F' || type == 'E';
        bool reset_sent = false;
        switch (ignored || skipped ? 0 : type) {
        case 'Q':
        case 'F':
        case 'S':
            reset_sent = login_reset_request_sent(s);
            if (type == 'S')
                s->syncs_after_execute++;
            else
                s->syncs_after_execute = 0;
            if (s->inflight++ == 0) {
                s->query_start_ms = sluice_now(c->worker);
                if (s->txn_status == 'I')
                    s->xact_start_ms = s->query_start_ms;
            }
            if (type == 'S')
                s->batch_open = false;
            s->executes_after_request = 0;
            s->reqs.epoch++; /* a batch ends: what sluice prepared in it is no longer fresh */
            /* A function called by OID is code sluice cannot read (set_config of the role,
             * pg_advisory_lock, dynamic SQL): the server is reset before it serves again. */
            if (type == 'F' && track)
                session_effects_run_unread(s);
            break;
        case 'E':
            s->syncs_after_execute = 0;
            /* after an error, the server skips it to the Sync: no answer */
            if (!s->reqs.skipping_to_sync) {
                s->executes_unanswered++;
                s->executes_after_request++;
            }
            s->batch_open = true;
            break;
        case 'P':
        case 'B': {
            /* A statement that resets login parameters does so at each Bind (login_reset.h).
             * A start sent renamed from s->out is not in c->in to look at. */
            uint32_t shown = started ? 0 : min_u32(len - 4, b->wpos - b->scan - CODEC_HEADER_LEN);
            if (login_reset_follows(s, c) && type == 'P')
                login_reset_on_parse(c, s, p + CODEC_HEADER_LEN, shown, resets_before);
            else if (login_reset_follows(s, c))
                login_reset_on_bind(s, c, p + CODEC_HEADER_LEN, shown);
            s->batch_open = true;
            break;
        }
        case 'D':
        case 'C':
        case 'H':
            s->batch_open = true;
            break;
        case 'c':
        case 'f':
            if (s->copy_in)
                request_track_copy_in_ended(s);
            break;
        default:
            break;
        }
        if (!started) {
            uint32_t whole = len + 1;
            uint32_t take = min_u32(whole, b->wpos - b->scan);
            b->scan += take;
            c->rx.remain = whole - take;
            stmt_track_keep_parse_tail(&c->rx, b->data + b->scan - take, take);
        }
        if (s->out.len > s->out_pos || reset_sent)
            return CLIENT_FRAME_NEED_FLUSH; /* sluice's own messages go out before this one */
    }
    return CLIENT_FRAME_NEED_DATA;
}
