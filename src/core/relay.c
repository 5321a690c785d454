/* relay: the hot path between a linked client and server (see relay.h).
 *
 * Each side reads into its own buffer; framed bytes are written to the peer straight from there
 * (no copy). A side is read only while the peer has taken everything framed so far, so memory per
 * connection stays at one buffer however large a result or COPY is ("read when we don't write").
 * The client's messages are framed, counted and followed by request_track.c; here only the
 * server's headers are looked at, and the short bodies of its ReadyForQuery and ParameterStatus,
 * read in place.
 *
 * Accounting that decides when the server can go back (pool_mode.c says whether it should):
 *   inflight   +1 for each Query, Sync, FunctionCall forwarded (request_track.c); -1 for each
 *              ReadyForQuery back
 *   swallow    ReadyForQuery due for sluice's own queries; their replies are consumed here
 *   batch_open extended-protocol messages forwarded since the last Sync
 */
#include "relay.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cancel.h"
#include "client.h"
#include "conn_id.h"
#include "log.h"
#include "login_notice.h"
#include "pool.h"
#include "pool_mode.h"
#include "request_track.h"
#include "server.h"
#include "session_effects.h"
#include "session_state.h"
#include "sluice.h"
#include "query_positions.h"
#include "stmt_names.h"

/* Servers are trusted more than clients, but a length past this is a broken stream. */
#define SERVER_MAX_BODY 0x3fffffffu

/* Why framing the server's bytes stopped (the client's: enum client_frame). */
enum frame_stop {
    STOP_NEED_DATA,     /* framed everything that is complete */
    STOP_NEED_FLUSH,    /* a message to consume follows bytes still to forward */
    STOP_FAILED,        /* the connection was failed and is closing */
    STOP_TXN_FORBIDDEN, /* statement mode: a transaction was opened; its ReadyForQuery held back */
    STOP_LOGIN_SYNCED,  /* the last reply to a login's parameter sync was consumed */
    STOP_COPY_BEGAN,    /* a COPY FROM STDIN began after its client sent Terminate: the Terminate
                           goes to the server before anything after the CopyInResponse is framed
                           (what follows may end that COPY: a CopyDone the client sent ahead) */
};

static inline uint32_t min_u32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

/* ---- server -> client framing ---- */

/* Is the ErrorResponse at p (avail of its whole bytes here) the server's FATAL or PANIC? Read
 * from the non-localized severity ('V', right after 'S' since Postgres 9.6), as far as it is
 * here: a backend ends its session with one (pg_terminate_backend, idle_session_timeout, a
 * protocol error in COPY) and then closes, as the client then sees from Postgres itself. */
static bool error_is_fatal(const uint8_t *p, uint32_t avail, uint32_t whole)
{
    uint32_t end = avail < whole ? avail : whole;
    for (uint32_t i = CODEC_HEADER_LEN; i < end && p[i] != '\0';) {
        const uint8_t *value = p + i + 1;
        const uint8_t *nul = memchr(value, '\0', end - (i + 1));
        if (!nul)
            return false;
        size_t n = (size_t)(nul - value);
        if (p[i] == 'V')
            return (n == 5 && memcmp(value, "FATAL", 5) == 0) ||
                   (n == 5 && memcmp(value, "PANIC", 5) == 0);
        i = (uint32_t)(nul - p) + 1;
    }
    return false;
}

static void on_parameter_status(struct server *s, struct client *c, const uint8_t *body,
                                uint32_t len)
{
    const char *name, *value;
    if (!codec_parse_parameter_status(body, len, &name, &value))
        return;
    if (params_set(&s->params, name, value) < 0)
        s->close_when_free = true; /* out of memory: its state is unknown now */
    /* A change in the reply to the client's own statement (its SET, RESET, set_config) is what
     * the client now has. One in the reply to sluice's own query is not the client's: it may
     * be the rest of another client's sync (a refused login leaves its server mid-sync) or a
     * reset; the client's own sync values are its own already (and at login take the server's
     * spelling: client_login_synced). */
    if (c && s->swallow == 0 && params_is_client_settable(name)) {
        if (params_set(&c->params, name, value) < 0)
            s->close_when_free = true;
    }
}

/* A 26000 naming sluice's name: the server lacks a statement sluice's record says it has,
 * dropped by a DEALLOCATE sluice could not see (after another statement in a Query, in a
 * function, in a named statement run later). What it holds is unknown from here: each statement
 * is prepared again before its next use, instead of failing on this server for good. */
static void forget_statements_if_missing(struct server *s, const uint8_t *msg, uint32_t whole)
{
    struct error_fields ef;
    if (codec_parse_error(msg + CODEC_HEADER_LEN, whole - CODEC_HEADER_LEN, &ef) && ef.sqlstate &&
        strcmp(ef.sqlstate, "26000") == 0)
        stmt_map_mark_unknown(&s->stmts);
}

static void on_internal_error(struct server *s, struct client *c, const uint8_t *body, uint32_t len)
{
    struct error_fields ef;
    if (s->state == SERVER_DRAINING && s->swallow == 0)
        return; /* the reply to the query of a client that left (cancelled, usually) */
    /* A reset, rollback or server_check_query that fails leaves a server nobody should get. */
    if (!s->client)
        s->close_when_free = true;
    /* A SET of a sync failed: what sluice recorded as set is not what the server has. */
    if (params_forget(&s->params, NULL) < 0)
        s->close_when_free = true;
    bool parsed = codec_parse_error(body, len, &ef);
    if (c && client_login_syncing(c)) {
        /* The client's own startup parameter: Postgres would have refused the login so. */
        c->worker->relay_events->login_refused(c, parsed && ef.sqlstate ? ef.sqlstate : "08P01",
                                               parsed && ef.message ? ef.message
                                                                    : "invalid startup parameter");
        return;
    }
    if (c && login_reset_on_internal_error(s, c, body, len))
        return;
    if (parsed)
        log_server(LOG_WARNING, s, "server said, outside any client's query: %s %s (%s)",
                   ef.severity ? ef.severity : "", ef.message ? ef.message : "",
                   ef.sqlstate ? ef.sqlstate : "");
}

/* The client's request is answered (its last ReadyForQuery): count it, log it if slow. */
static void query_done(struct server *s, struct client *c, char status)
{
    uint64_t now = sluice_now(c->worker);
    uint64_t ms = now - s->query_start_ms;
    bool xact_ended = status == 'I' && !s->batch_open;
    pool_record_query(s->pool, ms, xact_ended);
    if (xact_ended)
        s->pool->xact_us_total += (now - s->xact_start_ms) * 1000;
    int64_t slow = c->worker->cfg->log_slow_query_ms;
    if (slow > 0 && ms >= (uint64_t)slow)
        log_client(LOG_WARNING, c,
                   "slow query: %llu ms (log_slow_query_ms = %lld), "
                   "application_name \"%s\", pool %s/%s, S-%s",
                   (unsigned long long)ms, (long long)slow,
                   params_get(&c->params, "application_name") ?: "", s->pool->db_name,
                   s->pool->user_name, CONN_ID_TEXT(s->id));
}

/* ---- a server whose client left ---- */

/* sluice's own requests sent before a client's message that waits for their replies (a
 * statement prepared again and described, its Flush: stmt_track.c), with nothing of the
 * client's since its last Sync: their replies are due after that Sync's ReadyForQuery, if any,
 * and no Sync follows them. */
static bool own_requests_unsynced(const struct server *s)
{
    return !s->batch_open && stmt_queue_unsynced(&s->reqs);
}

/* End what the server would wait for from the client that left: a COPY FROM STDIN gets CopyFail,
 * an open extended-protocol batch its Sync, as do sluice's own requests without one. False when
 * out of memory. */
static bool end_orphan_requests(struct server *s)
{
    stmt_queue_forget_due(&s->reqs, &s->stmts); /* the Describe after its last Parse */
    /* COPY data or a CopyDone the client sent ahead of the CopyInResponse, with Syncs after the
     * COPY's Execute: Postgres ignores the Syncs that reach it inside the COPY and answers those
     * after a CopyDone, so the replies still due cannot be counted, and a server reused with a
     * wrong count would hand the next client this one's replies. It is not made whole: the link
     * closes it (its backend reads what it was sent, then the close). */
    if (s->copy_in && !s->only_syncs_after_execute && s->syncs_after_execute > 0)
        return false;
    if (s->copy_in) {
        /* COPY FROM STDIN waits for data that will not come; Postgres ignores a CopyFail
         * outside COPY, so a race with the end of the COPY is harmless. */
        codec_begin(&s->out, 'f');
        codec_put_cstring(&s->out, "client disconnected");
        codec_end(&s->out);
        request_track_copy_in_ended(s);
    }
    if (s->batch_open || own_requests_unsynced(s)) {
        /* Extended-protocol messages without their Sync: what they ran is in an implicit
         * transaction that only a Sync commits, and Postgres rolls it back when the session ends
         * first. A bare Sync would commit it, so an Execute of a portal that does not exist goes
         * before it: its ERROR (34000) aborts the transaction and the Sync ends it rolled back.
         * After an earlier error the server skips both to the Sync; the ErrorResponse and
         * ReadyForQuery are dropped with the rest of the orphan's replies. (A portal of this
         * name exists only if the client bound one on purpose, which it could as well have
         * synced.) */
        if (!s->reqs.paused && stmt_queue_push(&s->reqs, REQ_SYNC, NULL) < 0)
            return false;
        codec_begin(&s->out, 'E');
        codec_put_cstring(&s->out, "sluice: abort the unsynced batch of a client that left");
        codec_put_i32(&s->out, 0);
        codec_end(&s->out);
        codec_begin(&s->out, 'S');
        codec_end(&s->out);
        s->batch_open = false;
        s->executes_after_request = 0;
        s->inflight++;
    }
    return !s->out.oom;
}

/* Frame server messages. Messages are forwarded to c, or consumed when there is no client or
 * they answer sluice's own query. */
static enum frame_stop frame_server(struct server *s, struct client *c)
{
    struct buf *b = &s->in;
    bool forbid_txn =
        c &&
        pool_mode_ops(s->mode, c->worker->cfg->server_reset_query_always)->forbid_transaction;
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
        const uint8_t *p = b->data + b->scan;
        uint8_t type;
        uint32_t body_len;
        enum frame_result fr = codec_frame_header(p, avail, SERVER_MAX_BODY, &type, &body_len);
        if (fr == FRAME_NEED_MORE)
            return STOP_NEED_DATA;
        uint32_t len = codec_get_u32(p + 1);
        if (fr == FRAME_BAD_LENGTH) {
            log_server(LOG_ERROR, s, "server sent a message of impossible length %u", len);
            s->close_when_free = true;
            return STOP_FAILED;
        }
        uint32_t whole = len + 1;
        bool consume = c == NULL || s->swallow > 0;
        bool login_synced = false;
        if ((type == '1' || type == '3') && s->swallow == 0) {
            enum stmt_req next = stmt_queue_next_complete(&s->reqs);
            if (c && buf_pending(b) > 0 && stmt_req_is_ours(next))
                return STOP_NEED_FLUSH;
            enum stmt_reply_action a = stmt_on_complete(&s->reqs, &s->stmts, type);
            if (a == REPLY_UNEXPECTED) {
                log_server(LOG_ERROR, s, "reply '%c' matches no request sluice sent", type);
                s->close_when_free = true;
                return STOP_FAILED;
            }
            consume = consume || a == REPLY_SWALLOW;
        }
        /* The answer to sluice's Describe of a statement it or the client just prepared: its
         * result type (stmt_track.c), read whole when the buffer holds it. */
        if ((type == 't' || type == 'T' || type == 'n') && s->swallow == 0 &&
            request_track_on(s) && stmt_queue_next_complete(&s->reqs) == REQ_DESCRIBE_OURS) {
            if (c && buf_pending(b) > 0)
                return STOP_NEED_FLUSH;
            bool fits = whole <= buf_block_size();
            if (fits && avail < whole)
                return STOP_NEED_DATA;
            (void)stmt_on_description(&s->reqs, &s->stmts, c ? c->stmts : NULL, type,
                                      fits ? p + CODEC_HEADER_LEN : NULL, len - 4);
            consume = true;
        }
        bool held = false;
        if (type == 'S' && c && s->login_reset.state == LOGIN_RESET_AWAITING_REPLY &&
            whole <= buf_block_size()) {
            if (avail < whole)
                return STOP_NEED_DATA;
            held = login_reset_holds_report(s, p + CODEC_HEADER_LEN, len - 4);
            consume = consume || held;
        }
        /* An error naming the client's statement by sluice's name: the client gets its own.
         * The refusal of a statement whose result type changed: the client gets Postgres's.
         * The failure of what went in place of SQL session_state_policy refuses: sluice's. */
        /* The failure of sluice's Parse for a client's Describe: the statement's parameter
         * types go first, as from Postgres (stmt_queue_types_before_error). */
        bool renamed = false, type_changed = false;
        enum session_feature refused = SESSION_FEATURE_NONE;
        const struct stmt_param_types *types_first = NULL;
        if (type == 'E' && !consume && request_track_on(s) && whole <= buf_block_size()) {
            if (avail < whole)
                return STOP_NEED_DATA;
            type_changed = s->reqs.poisoned > 0 && stmt_names_changed_in_error(p, whole);
            renamed = !type_changed && stmt_names_in_error(c->stmts, &s->reqs, p, whole);
            if (!type_changed && !renamed)
                refused = session_effects_refused_in_error(p, whole);
            if (!type_changed && refused == SESSION_FEATURE_NONE)
                types_first = stmt_queue_types_before_error(&s->reqs);
            consume = renamed || type_changed || refused != SESSION_FEATURE_NONE || types_first;
        }
        /* A NOTICE naming it (42622: a SQL name longer than its key, truncated to sluice's), or
         * raised by sluice's own Parse (dropped) */
        if (type == 'N' && c && !consume && s->swallow == 0 && request_track_on(s) &&
            whole <= buf_block_size()) {
            if (avail < whole)
                return STOP_NEED_DATA;
            /* sluice's Parse of a text prepared again raises what the client's raised */
            consume = stmt_queue_notice_is_ours(&s->reqs);
            if (!consume)
                consume = renamed = stmt_names_in_error(c->stmts, &s->reqs, p, whole);
        }
        /* The position an error or notice of a Query whose text sluice rewrote gives counts in
         * the text sent: the client gets it in its own text (query_positions.h). */
        uint32_t position = 0;
        bool positioned = false;
        if ((type == 'E' || type == 'N') && c && s->swallow == 0 && s->reqs.positions_held > 0 &&
            (!consume || renamed || types_first) && whole <= buf_block_size()) {
            if (avail < whole)
                return STOP_NEED_DATA;
            positioned =
                query_positions_moves(stmt_queue_query_positions(&s->reqs), p, whole, &position);
            consume = consume || positioned;
        }
        /* An error while a Query waits for sluice's Parses may be one of theirs: held, not
         * forwarded, when stmt_on_error says it is (HELD_PARSE_FAILED), for the Query to get in
         * its place (stmt_track.c run_query_after_failed_parse). */
        bool may_hold = type == 'E' && c && !consume && s->swallow == 0 && request_track_on(s) &&
                        s->reqs.held_query == HELD_FOR_PARSE && whole <= buf_block_size();
        if (may_hold) {
            if (avail < whole)
                return STOP_NEED_DATA;
            may_hold = !error_is_fatal(p, avail, whole); /* the session ends: told now */
            consume = may_hold;
        }
        /* A CommandComplete may say that the client's DEALLOCATE or DISCARD ALL ran: read whole
         * (it is short) before anything changes. */
        bool drop_ran = type == 'C' && s->swallow == 0 && s->reqs.count > 0 &&
                        request_track_on(s) && whole <= buf_block_size();
        if (drop_ran && avail < whole)
            return STOP_NEED_DATA;
        /* Bytes before a consumed message go out first (consuming moves rpos). Checked before
         * anything below changes state, since the message is looked at again after the flush. */
        if (consume && buf_pending(b) > 0)
            return STOP_NEED_FLUSH;
        /* A NOTICE answering sluice's own sync (set_config of a long application_name) is
         * swallowed, but tells where Postgres raises the one a client is due at login. */
        if (type == 'N' && s->swallow > 0 && avail >= whole)
            login_notice_learn_body(&s->pool->worker->login_notice_src, p + CODEC_HEADER_LEN,
                                    len - 4);
        /* A row of sluice's read back of the values the client SET (login_reset.h). */
        if (type == 'D' && c && login_reset_reads_row(s)) {
            if (whole <= buf_block_size() && avail < whole)
                return STOP_NEED_DATA;
            login_reset_on_row(s, c, whole <= buf_block_size() ? p + CODEC_HEADER_LEN : NULL,
                               len - 4);
        }
        /* (the message the client gets, its position moved) */
        struct msg_out moved;
        codec_out_init(&moved);
        const uint8_t *shown = p;
        uint32_t shown_whole = whole;
        if (positioned) {
            query_positions_put(&moved, p, whole, position);
            if (!moved.oom) {
                shown = moved.data;
                shown_whole = moved.len;
            }
        }
        if (types_first) {
            prepared_put_parameter_description(&c->out, types_first);
            if (!renamed) { /* the error as it came */
                codec_begin(&c->out, 'E');
                codec_put_bytes(&c->out, shown + CODEC_HEADER_LEN, shown_whole - CODEC_HEADER_LEN);
                codec_end(&c->out);
            }
        } else if (positioned && !renamed) {
            codec_put_bytes(&c->out, shown, shown_whole);
        }
        if (renamed) {
            stmt_names_put_error(c->stmts, &s->reqs, shown, shown_whole, &c->out);
            forget_statements_if_missing(s, p, whole);
        }
        codec_out_free(&moved);
        if (type_changed) {
            const struct stmt_param_types *types = stmt_queue_types_before_refusal(&s->reqs);
            const uint8_t *parse_error;
            uint32_t parse_error_len;
            if (stmt_queue_refusal_error(&s->reqs, &parse_error, &parse_error_len)) {
                codec_put_bytes(&c->out, parse_error, parse_error_len);
            } else {
                if (types)
                    prepared_put_parameter_description(&c->out, types);
                error_build(&c->out, FAIL_RESULT_TYPE_CHANGED, "", NULL);
            }
            stmt_queue_refusal_answered(&s->reqs);
        }
        if (refused != SESSION_FEATURE_NONE)
            session_effects_put_refusal(c, refused);
        if (type == 'E' && s->swallow == 0) {
            /* the server skips the rest of the batch: nothing of it waits for a reply, and a
             * Query or FunctionCall sent inside it gets none */
            uint32_t skipped = stmt_on_error(&s->reqs);
            s->inflight = skipped < (uint32_t)s->inflight ? s->inflight - (int)skipped : 0;
            bool held_back = may_hold && s->reqs.held_query == HELD_PARSE_FAILED &&
                             stmt_queue_hold_parse_error(&s->reqs, p, whole) == 0;
            if (may_hold && !held_back)
                codec_put_bytes(&c->out, p, whole); /* not a Parse's of the Query: as it came */
        }
        if (type == 'G')
            s->copy_in = true; /* until the client ends the COPY, or the next ReadyForQuery */
        /* A COPY FROM STDIN that began after its client left (it sent Terminate or closed right
         * after the query): no data will come, and a cancel does not end that wait. On a server
         * not draining, no request of a client is outstanding: the count of replies is wrong,
         * and the server is closed rather than fed to the next client. */
        if (type == 'G' && !c && s->state != SERVER_DRAINING) {
            log_server(LOG_ERROR, s, "CopyInResponse with no client's COPY outstanding");
            s->close_when_free = true;
            return STOP_FAILED;
        }
        /* Syncs sent after the COPY's Execute (the client left before this CopyInResponse)
         * reached the backend during copy-in, where it ignores them: CopyFail, then sluice's
         * abort batch and its Sync, are answered by one ReadyForQuery, and the server is drained
         * at once. Unless other messages came after the Execute too (a CopyDone sent ahead
         * ends the COPY, and a Sync after it is answered): the replies still due cannot be
         * counted, and the server is left to server_drain_timeout. */
        bool syncs_swallowed = s->syncs_after_execute == 0 || s->only_syncs_after_execute;
        if (type == 'G' && !c && syncs_swallowed && !end_orphan_requests(s)) {
            s->close_when_free = true;
            return STOP_FAILED;
        }
        if (type == 'E' && (!consume || positioned || may_hold) && error_is_fatal(p, avail, whole))
            s->said_fatal = true;
        if (drop_ran && p[whole - 1] == '\0')
            stmt_on_command_complete(&s->reqs, &s->sql_prepared,
                                     (const char *)p + CODEC_HEADER_LEN);
        if (s->swallow == 0 && s->executes_unanswered > 0) {
            /* Each Execute gets one of these; after an error the rest of its batch is skipped to
             * the Sync. A Query inside a batch gets a CommandComplete too: while one is due
             * (inflight), the Executes after the last request keep their count, since their
             * answers come after its ReadyForQuery (relay_pair_wait trusts the count once no
             * ReadyForQuery is due). */
            bool executes_only = s->inflight == 0;
            if (type == 'C' || type == 'I' || type == 's') {
                if (executes_only || s->executes_unanswered > s->executes_after_request)
                    s->executes_unanswered--;
                if (executes_only && s->executes_after_request > 0)
                    s->executes_after_request--;
            } else if (type == 'E') {
                /* with nothing due the error is the open batch's (skipped to its Sync); else
                 * one of a batch or Query before the last request */
                if (executes_only)
                    s->executes_after_request = 0;
                s->executes_unanswered = s->executes_after_request;
            }
        }
        bool inspect = type == 'Z' || type == 'S' ||
                       (type == 'E' && consume && !renamed && !type_changed && !positioned &&
                        !may_hold && refused == SESSION_FEATURE_NONE);
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
                /* Statement mode: the client must not see a transaction go on. Its
                 * ReadyForQuery is replaced by the error, after what came before it. */
                /* sluice's Sync after its failed Parse, the Query framed after it */
                bool ours = c && s->swallow == 0 && stmt_queue_ready_is_ours(&s->reqs);
                bool forbidden = forbid_txn && s->swallow == 0 && !ours && body[0] != 'I';
                /* So is a reset's: what sluice tells the client comes before it (login_reset.h). */
                bool settles = c && login_reset_settles(s);
                if ((forbidden || settles) && buf_pending(b) > 0)
                    return STOP_NEED_FLUSH;
                if (!c)
                    login_reset_clear(s); /* its client left */
                s->txn_status = (char)body[0];
                s->copy_in = false;
                s->last_ready_ms = sluice_now(s->pool->worker);
                if (s->swallow > 0) {
                    s->swallow--;
                    consume = true;
                    login_synced = s->swallow == 0 && c && client_login_syncing(c);
                    if (c)
                        login_reset_on_internal_ready(s, c, (char)body[0]);
                    /* (it may have queued more of sluice's own) */
                    if (s->swallow == 0 && s->deferred_cancels)
                        cancel_release_deferred(s);
                } else if (ours) {
                    consume = true;
                    stmt_on_ready(&s->reqs, &s->stmts, &c->stmts);
                } else {
                    s->requests_answered++;
                    cancel_request_answered(s); /* before query_done: the server may go back */
                    if (s->inflight > 0 && --s->inflight == 0) {
                        s->timeout_cancel_sent = false;
                        /* the Executes before the last request are answered, or were skipped
                         * after an error */
                        s->executes_unanswered = s->executes_after_request;
                        if (c)
                            query_done(s, c, (char)body[0]);
                    } else if (s->inflight > 0 && body[0] == 'I') {
                        /* pipelined: the request sent next starts its transaction now */
                        s->xact_start_ms = sluice_now(s->pool->worker);
                    }
                    /* a request the server skipped after an error (a Parse of the
                     * unnamed statement, sluice's Close of another's): not known whose */
                    if (s->reqs.count > 0 && s->reqs.items[s->reqs.head].kind != REQ_SYNC)
                        s->unnamed_of = 0;
                    stmt_on_ready(&s->reqs, &s->stmts, c ? &c->stmts : NULL);
                    if (c && login_reset_on_ready(s, c, (char)body[0]))
                        consume = true; /* held: the login values are given back first */
                }
                if (forbidden) {
                    b->scan += whole;
                    buf_consume(b, whole);
                    return STOP_TXN_FORBIDDEN;
                }
            } else if (type == 'S') {
                on_parameter_status(s, held ? NULL : c, body, len - 4);
            } else {
                on_internal_error(s, c, body, len - 4);
            }
        } else if (type == 'Z') {
            log_server(LOG_ERROR, s, "server sent a malformed ReadyForQuery");
            s->close_when_free = true;
            return STOP_FAILED;
        }
        if (consume) {
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
        if (login_synced)
            return STOP_LOGIN_SYNCED;
        if (type == 'G' && c && client_terminating(c))
            return STOP_COPY_BEGAN;
    }
    return STOP_NEED_DATA;
}

/* ---- writing ---- */

enum write_result { WRITE_DONE, WRITE_BLOCKED, WRITE_BROKEN };

static enum write_result write_generated(struct sockio *io, struct msg_out *out, uint32_t *pos)
{
    if (*pos >= out->len)
        return WRITE_DONE;
    ssize_t n = sockio_write(io, out->data + *pos, out->len - *pos);
    if (n < 0)
        return WRITE_BROKEN;
    *pos += (uint32_t)n;
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

/* A side that failed: the pump stops and reports it; closing is the link's (or server.c's). */
static enum relay_result lost(struct relay_outcome *o, enum relay_result r, const char *why,
                              const char *detail)
{
    snprintf(o->why, sizeof(o->why), "%s", why);
    o->detail = detail;
    return r;
}

/* Read what the server has. >0 read, 0 nothing now, <0 the server is gone (o says why). */
static int server_read(struct server *s, struct relay_outcome *o)
{
    ssize_t n = sockio_read_into(&s->io, &s->in);
    if (n == SOCKIO_NO_BLOCK) {
        s->close_when_free = true;
        return 0;
    }
    if (n > 0) {
        s->last_bytes_ms = sluice_now(s->pool->worker);
        return (int)n;
    }
    if (n == SOCKIO_AGAIN)
        return 0;
    if (n == 0)
        snprintf(o->why, sizeof(o->why), "server closed the connection");
    else
        snprintf(o->why, sizeof(o->why), "read from server failed: %s", strerror((int)-n));
    o->detail = NULL; /* its client is told the same */
    return -1;
}

/* The client's socket closed (or failed) with no Terminate: are its statements left to run to
 * their end, their answers written as after a Terminate? Where all it sent is whole and with the
 * server and an answer is still due. A message cut short, a COPY FROM STDIN or an extended batch
 * without its Sync cannot be finished by anyone: Postgres aborts those when it reads the EOF,
 * and so does sluice's drain (relay_orphan_server). */
static bool hang_up_leaves_statements_running(const struct client *c, const struct server *s)
{
    /* server_drain_timeout = 0: the operator wants a gone client's query cancelled at once.
     * only_syncs_after_execute: its last message (but Syncs and Flushes) was a Query, Execute or
     * FunctionCall, so no COPY data or CopyDone went ahead of a CopyInResponse still to come,
     * which would leave a COPY begun after the close open, or its end uncountable. */
    return c->state == CLIENT_ACTIVE && s->inflight > 0 && !s->copy_in && !s->batch_open &&
           s->only_syncs_after_execute && c->worker->cfg->server_drain_timeout > 0 &&
           c->rx.remain == 0 && buf_pending(&c->in) == 0 && buf_unframed(&c->in) == 0;
}

/* Read what the linked client has. >0 read (the pair's last bytes, as server_read counts
 * them), 0 nothing now, <0 it is gone (*r: what to report, o->why: why). Unlinked clients read
 * through client.c's own reader. */
static int client_side_read(struct client *c, struct relay_outcome *o, enum relay_result *r)
{
    ssize_t n = sockio_read_into(&c->io, &c->in);
    if (n == SOCKIO_NO_BLOCK) {
        *r = RELAY_CLIENT_OUT_OF_MEMORY;
        return -1;
    }
    if (n > 0) {
        c->server->last_bytes_ms = sluice_now(c->worker);
        return (int)n;
    }
    if (n == SOCKIO_AGAIN) {
        buf_detach_if_empty(&c->in);
        return 0;
    }
    if (hang_up_leaves_statements_running(c, c->server)) {
        *r = RELAY_CLIENT_HUNG_UP;
        return -1;
    }
    lost(o, RELAY_CLIENT_LOST, n == 0 ? "client closed the connection" : strerror((int)-n), NULL);
    *r = RELAY_CLIENT_LOST;
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
    case CLIENT_LOGIN_WAIT:
        /* A client that pipelined its startup packet, a request and Terminate (no password
         * asked) and shut its sending side waits for its welcome like any login: reading on
         * would find the EOF and close it with the request unsent, where Postgres reads the
         * request after it logs in and runs it. As after any Terminate, it is not read again. */
        if (client_sent_terminate(c))
            break;
        /* fall through */
    case CLIENT_STARTUP:
    case CLIENT_AUTH:
    case CLIENT_IDLE:
    case CLIENT_WAITING:
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

/* While the client's next message waits for the result type of a statement sluice prepares again
 * (stmt_track.c), its socket is not read: a client that sent its requests and closed is seen
 * leaving once they are framed, and they run, as Postgres runs what it read before the close
 * (read first, the close dropped them unsent). Postgres does not look at the socket while a
 * statement waits on a lock either. */
static bool client_read_held(const struct server *s)
{
    /* So too while requests sent far ahead of their replies fill the queue that matches them
     * (request_track_backlogged): not reading is the backpressure, and the client's writes wait,
     * as they would on Postgres. */
    return s->reqs.shape_awaited || request_track_backlogged(s);
}

/* A client that sent Terminate is not read, as Postgres reads nothing after one, but its hang-up
 * is watched (UV_DISCONNECT: the peer shut its sending side): a query that sends nothing until
 * it ends makes no write that could fail, and without it sluice would never learn that the client
 * has gone (client.c, CLIENT_HUNG_UP). */
static int hang_up_interest(const struct client *c)
{
    return c->state == CLIENT_TERMINATING ? UV_DISCONNECT : 0;
}

/* A login whose startup parameters are being SET, and whose client already sent a request and
 * Terminate behind its startup packet: not read either (relay_client_interest, LOGIN_WAIT). */
static bool login_said_all(const struct client *c)
{
    return (c->state == CLIENT_LOGIN_SYNC || c->state == CLIENT_LOGIN_REFUSED) &&
           client_sent_terminate(c);
}

static void set_pair_interest(struct client *c, struct server *s)
{
    bool to_server_pending = s->out_pos < s->out.len || buf_pending(&c->in) > 0;
    bool to_client_pending = c->out_pos < c->out.len || buf_pending(&s->in) > 0;
    bool client_room = !client_terminating(c) && !client_read_held(s) && !login_said_all(c) &&
                       (!c->in.data || c->in.wpos < buf_block_size() || c->in.rpos > 0);
    bool server_room = !s->in.data || s->in.wpos < buf_block_size() || s->in.rpos > 0;
    sockio_want(&c->io, read_interest(!to_server_pending && client_room) | hang_up_interest(c) |
                            (to_client_pending ? UV_WRITABLE : 0));
    sockio_want(&s->io, read_interest(!to_client_pending && server_room) |
                            (to_server_pending ? UV_WRITABLE : 0));
}

/* ---- where the pair stands ---- */

bool relay_pair_quiet(const struct client *c, const struct server *s)
{
    /* A whole header not yet framed is a message waiting to be read whole (transaction mode
     * looks at some bodies first): the client is mid-request, so the server stays. Releasing
     * here would queue the client for a server again at once, round and round. */
    /* Nor while OpenSSL holds decrypted bytes of the client's: an idle client waits for its
     * socket, which would not announce them. */
    return s->inflight == 0 && s->swallow == 0 && !s->batch_open && c->rx.remain == 0 &&
           s->rx.remain == 0 && buf_pending(&c->in) == 0 &&
           buf_unframed(&c->in) < CODEC_HEADER_LEN && buf_is_empty(&s->in) &&
           c->out_pos >= c->out.len && s->out_pos >= s->out.len && sockio_pending(&c->io) == 0;
}

/* Replies framed for the client and not yet written (its socket full, or failing: it left) are
 * not yet over either: a server handed on with them would give them to the next client. */
bool relay_at_boundary(const struct server *s, const struct client *c)
{
    return s->inflight == 0 && !s->batch_open && !own_requests_unsynced(s) && s->rx.remain == 0 &&
           buf_pending(&s->in) == 0 && (!c || c->rx.remain == 0) && s->out_pos >= s->out.len;
}

enum pair_wait relay_pair_wait(const struct client *c, const struct server *s)
{
    /* Bytes the server has not taken yet: it is slow, not waiting. */
    if (s->swallow > 0 || buf_pending(&c->in) > 0 || s->out_pos < s->out.len ||
        request_track_client_waits(s))
        return PAIR_NO_WAIT;
    if (s->copy_in)
        return PAIR_WAIT_COPY;
    /* Whole messages are framed as soon as they are read, so what is left unframed here is part
     * of one; a message framed in part is being forwarded. (The part may have been counted in
     * inflight: a Query's header.) */
    bool part_of_message = c->rx.remain > 0 || buf_unframed(&c->in) > 0;
    if (part_of_message && s->inflight <= 1 && s->executes_unanswered == 0)
        return PAIR_WAIT_MESSAGE;
    if (s->inflight > 0 || part_of_message)
        return PAIR_NO_WAIT;
    if (s->batch_open)
        return s->executes_unanswered == 0 ? PAIR_WAIT_SYNC : PAIR_NO_WAIT;
    return s->txn_status != 'I' ? PAIR_WAIT_TRANSACTION : PAIR_NO_WAIT;
}

/* Quiet, and the pool mode lets the server go now? RELAY_LINKED when it stays linked. */
static enum relay_result release_due(const struct client *c, const struct server *s)
{
    if (!relay_pair_quiet(c, s))
        return RELAY_LINKED;
    const struct pool_mode_ops *ops =
        pool_mode_ops(s->mode, c->worker->cfg->server_reset_query_always);
    if (!ops->release_at_idle || c->pinned)
        return RELAY_LINKED;
    if (s->txn_status != 'I')
        return ops->forbid_transaction ? RELAY_TXN_FORBIDDEN : RELAY_LINKED;
    return RELAY_RELEASE;
}

/* ---- a client leaving mid-query ---- */

bool relay_client_mid_message(const struct client *c)
{
    /* The rest of a message sluice answered itself (rx.discard) never reaches the server. */
    return (c->rx.remain > 0 && !c->rx.discard) || buf_pending(&c->in) > 0;
}

bool relay_orphan_server(struct server *s, struct client *c)
{
    if (c && relay_client_mid_message(c))
        return false; /* the server holds part of a message only the client could finish */
    /* What the server says from now on is read and dropped (what was framed for the client and
     * not yet written: pump_alone), with the rest of a message cut short. */
    if (s->rx.remain > 0)
        s->rx.discard = true;
    return end_orphan_requests(s);
}

/* ---- the pump ---- */

/* The server is gone (its socket failed, or a write to it did): a backend that ends a session
 * sends its last ErrorResponse (FATAL 57P01 of pg_terminate_backend or of a shutdown, the FATAL
 * of a protocol error) and closes, and with bytes of the client's still unread its close comes
 * as a reset, which can reach sluice before that FATAL is read. The kernel still hands over what
 * came before the reset, and Postgres's own client reads it after a failed write (libpq does):
 * so what the server said is read to its end and written to the client before the server is
 * reported lost. The client then sees the server's FATAL and the close, as from Postgres, not
 * sluice's 08006. Where the client's socket is full, what is framed waits in c->out (written
 * before the client is closed) and nothing more is read: one buffer's worth at most. */
static enum relay_result server_gone(struct server *s, struct client *c, struct relay_outcome *o,
                                     const char *why)
{
    char reason[sizeof(o->why)];
    snprintf(reason, sizeof(reason), "%s", why); /* server_read writes o->why */
    while (c) {
        enum frame_stop sst = frame_server(s, c);
        if (sst == STOP_FAILED)
            break;
        enum write_result w = write_generated(&c->io, &c->out, &c->out_pos);
        if (w == WRITE_DONE)
            w = write_framed(&c->io, &s->in, &s->pool->bytes_out);
        if (w == WRITE_BLOCKED) {
            uint32_t framed = buf_pending(&s->in);
            codec_put_bytes(&c->out, s->in.data + s->in.rpos, framed);
            s->pool->bytes_out += framed;
            buf_consume(&s->in, framed);
        }
        if (w != WRITE_DONE)
            break;
        if (sst == STOP_NEED_FLUSH)
            continue;
        if (sst != STOP_NEED_DATA || server_read(s, o) <= 0)
            break;
    }
    return lost(o, RELAY_SERVER_LOST, reason, NULL);
}

enum relay_result relay_server_failed(struct server *s, const char *why, struct relay_outcome *o)
{
    return server_gone(s, s->client, o, why);
}

/* Does what the client sent next wait before going to its server? During a login's parameter
 * sync it waits for the server's answer. While a cancel is on its way to the backend (not done:
 * Postgres has not closed the cancel connection yet, or it waits behind sluice's own statements,
 * or it is looked at again: cancel.c) its next request waits for that: Postgres 15 signals a
 * backend twice for one cancel (its pid, then its process group) and, on a loaded machine, the
 * second signal can land after the first has ended the query, cancelling whatever runs next.
 * cancel_done kicks the pair again. The rest of a message already partly forwarded is not next:
 * it goes on (request_track_frame stops at its end), as the backend cannot run that request, and
 * the cancel cannot reach it, before it has read all of it. */
static bool client_bytes_wait(const struct client *c, const struct server *s)
{
    return client_login_syncing(c) || (s->cancels_in_flight > 0 && c->rx.remain == 0);
}

/* Are the client's bytes framed next? Not while they wait (above), and after a Terminate only the
 * Terminate itself, when a COPY FROM STDIN began before it reached the server (request_track.c). */
static bool frames_client(const struct client *c, const struct server *s)
{
    return (!client_terminating(c) || s->copy_in) && !client_bytes_wait(c, s);
}

/* A client that sent Terminate: is anything still due before it is closed? Postgres answers every
 * message it read before a Terminate, and only then closes: the client is closed once the bytes
 * before its Terminate are with the server and the answers are written. A Terminate forwarded
 * during COPY FROM STDIN (request_track.c) is answered by the server's errors and its close; one
 * still to forward (copy_in: a COPY began after it) is due too. */
static bool terminate_pending(const struct client *c, const struct server *s)
{
    return buf_pending(&c->in) > 0 || s->out_pos < s->out.len || s->inflight > 0 || s->copy_in ||
           s->rx.remain > 0 || buf_pending(&s->in) > 0 || c->out_pos < c->out.len;
}

/* A server with no client: everything it says is consumed (sluice's own query, a notice). */
static enum relay_result pump_alone(struct server *s, struct relay_outcome *o)
{
    /* Bytes framed for a client whose link ended while they waited for its socket have nowhere
     * to go; left here, what follows them would wait for a flush that never comes. */
    buf_consume(&s->in, buf_pending(&s->in));
    for (;;) {
        if (write_generated(&s->io, &s->out, &s->out_pos) == WRITE_BROKEN)
            return lost(o, RELAY_SERVER_LOST, "write to server failed", NULL);
        if (frame_server(s, NULL) == STOP_FAILED)
            return lost(o, RELAY_SERVER_LOST, "server protocol error", NULL);
        if (write_generated(&s->io, &s->out, &s->out_pos) == WRITE_BROKEN)
            return lost(o, RELAY_SERVER_LOST, "write to server failed", NULL); /* a CopyFail */
        if (sockio_pending(&s->io) > 0) {
            int n = server_read(s, o);
            if (n < 0)
                return RELAY_SERVER_LOST;
            if (n > 0)
                continue;
        }
        break;
    }
    buf_detach_if_empty(&s->in);
    return RELAY_LINKED;
}

enum relay_result relay_pump(struct server *s, struct relay_outcome *o)
{
    struct client *c = s->client;
    if (!c)
        return pump_alone(s, o);

    /* Rounds go on while OpenSSL hands over decrypted bytes the sockets will not announce; they
     * end, since those come from records already read (at most 16 kB a side): no round may stop
     * with such bytes read and not passed on, or they would wait for an event that never comes. */
    for (;;) {
        /* Client -> server: sluice's own messages always go before the client bytes framed
         * after them. */
        enum client_frame cst = CLIENT_FRAME_NEED_DATA;
        enum write_result w;
        for (;;) {
            w = write_generated(&s->io, &s->out, &s->out_pos);
            if (w != WRITE_DONE)
                break;
            cst = frames_client(c, s) ? request_track_frame(c, s, &o->failure)
                                      : CLIENT_FRAME_NEED_DATA;
            if (cst == CLIENT_FRAME_FAILED)
                return RELAY_CLIENT_FAILED;
            w = write_generated(&s->io, &s->out, &s->out_pos);
            if (w != WRITE_DONE)
                break;
            w = write_framed(&s->io, &c->in, &s->pool->bytes_in);
            if (w != WRITE_DONE || cst != CLIENT_FRAME_NEED_FLUSH)
                break;
        }
        if (w == WRITE_BROKEN)
            return server_gone(s, c, o, "write to server failed");
        if (cst == CLIENT_FRAME_TERMINATE && c->state == CLIENT_ACTIVE)
            return terminate_pending(c, s) ? RELAY_TERMINATING : RELAY_TERMINATED;

        /* Server -> client: anything sluice generated for the client first. */
        bool client_waited = request_track_client_waits(s);
        int cancels_before = s->cancels_in_flight; /* a deferred one answered unsent */
        w = write_generated(&c->io, &c->out, &c->out_pos);
        enum frame_stop sst = STOP_NEED_DATA;
        if (w == WRITE_DONE) {
            for (;;) {
                sst = frame_server(s, c);
                if (sst == STOP_FAILED)
                    return lost(o, RELAY_SERVER_LOST, "server protocol error",
                                "the server sent a malformed message");
                /* What sluice told the client while framing goes before what follows it. */
                w = write_generated(&c->io, &c->out, &c->out_pos);
                if (w == WRITE_DONE)
                    w = write_framed(&c->io, &s->in, &s->pool->bytes_out);
                if (sst == STOP_NEED_FLUSH && w == WRITE_DONE)
                    continue;
                break;
            }
        }
        if (w == WRITE_BROKEN)
            return lost(o, RELAY_CLIENT_LOST, "write to client failed", NULL);
        if (sst == STOP_LOGIN_SYNCED)
            return RELAY_LOGIN_SYNCED; /* the link sends its welcome, then pumps again */
        if (sst == STOP_TXN_FORBIDDEN)
            return RELAY_TXN_FORBIDDEN;
        /* TLS may hold decrypted bytes the socket will not announce again. Requests that
         * waited for a reset's reply (login_reset.h) are already read. */
        bool more = client_waited && !request_track_client_waits(s);
        /* the client's bytes waited for that cancel (client_bytes_wait) */
        more |= s->cancels_in_flight < cancels_before && s->cancels_in_flight == 0;
        if (client_terminating(c)) {
            if (!terminate_pending(c, s))
                return RELAY_TERMINATED;
            /* A COPY FROM STDIN began for a client that hung up without a Terminate and sent
             * nothing after the request that began it: no data, CopyDone or Terminate will ever
             * come to end it (Postgres aborts it at the EOF). The link drains the server, which
             * ends the COPY with CopyFail. (Data and a CopyDone sent ahead of the
             * CopyInResponse end it on the backend: its answers come as any.) */
            if (s->copy_in && s->only_syncs_after_execute && buf_unframed(&c->in) == 0 &&
                c->rx.remain == 0)
                return lost(o, RELAY_CLIENT_LOST, "client closed the connection before its COPY",
                            NULL);
            more |= sst == STOP_COPY_BEGAN; /* its Terminate is framed now (frames_client) */
        } else {
            enum relay_result release = release_due(c, s);
            if (release != RELAY_LINKED)
                return release;
        }
        if (sockio_pending(&s->io) > 0 && buf_pending(&s->in) == 0) {
            int n = server_read(s, o);
            if (n < 0)
                return RELAY_SERVER_LOST;
            more |= n > 0;
        }
        if (sockio_pending(&c->io) > 0 && buf_pending(&c->in) == 0 && !client_terminating(c) &&
            !client_read_held(s)) {
            enum relay_result gone;
            int n = client_side_read(c, o, &gone);
            if (n < 0)
                return gone;
            more |= n > 0;
        }
        if (!more)
            break;
    }
    buf_detach_if_empty(&c->in);
    set_pair_interest(c, s);
    return RELAY_LINKED;
}

enum relay_result relay_client_readable(struct client *c, struct relay_outcome *o)
{
    struct server *s = c->server;
    if (buf_pending(&c->in) > 0 || client_read_held(s)) {
        /* Not reading while the server has not taken the last bytes; a stale event. */
        return relay_pump(s, o);
    }
    enum relay_result gone;
    if (client_side_read(c, o, &gone) < 0)
        return gone;
    return relay_pump(s, o);
}

enum relay_result relay_server_readable(struct server *s, struct relay_outcome *o)
{
    if (buf_pending(&s->in) == 0 && server_read(s, o) < 0)
        return RELAY_SERVER_LOST;
    return relay_pump(s, o);
}
