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
#include <strings.h>

#include "client.h"
#include "log.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "session_state.h"
#include "sluice.h"

/* Servers are trusted more than clients, but a length past this is a broken stream. */
#define SERVER_MAX_BODY 0x3fffffffu

enum frame_stop {
    STOP_NEED_DATA,     /* framed everything that is complete */
    STOP_TERMINATE,     /* client sent Terminate: forward what is before it, then close */
    STOP_NEED_FLUSH,    /* a message to consume follows bytes still to forward */
    STOP_FAILED,        /* the connection was failed and is closing */
    STOP_TXN_FORBIDDEN, /* statement mode: a transaction was opened; its ReadyForQuery held back */
    STOP_LOGIN_SYNCED,  /* the last reply to a login's parameter sync was consumed */
};

static inline uint32_t min_u32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

/* ---- client -> server framing ---- */

/* Named prepared statements in transaction mode (see prepared.h): the per-message decisions. */

enum track_result {
    TRACK_PASS,       /* forward the message as it is */
    TRACK_WAIT,       /* need more of the message in the buffer first */
    TRACK_FLUSH,      /* sluice must send something first: flush the client's earlier bytes */
    TRACK_FAILED,     /* the client was failed */
    TRACK_CONSUMED,   /* sluice answered the message itself; it is gone from the buffer */
};

static bool tracking(const struct server *s)
{
    return pool_mode_ops(s->pool->mode, false)->release_at_idle;
}

/* Record a request whose reply must be matched. A full queue is not out of memory: the client sent
 * more than STMT_QUEUE_MAX of them ahead of the replies, which may never come before its Sync
 * (after an error the server skips up to it). */
static enum track_result queue_request(struct client *c, struct server *s, enum stmt_req kind,
                                       const char *name)
{
    int rc = stmt_queue_push(&s->reqs, kind, name);
    if (rc == 0)
        return TRACK_PASS;
    if (rc == -ENOSPC) {
        char detail[32];
        snprintf(detail, sizeof(detail), "%d", STMT_QUEUE_MAX);
        client_fail(c, FAIL_TOO_MANY_PENDING, detail);
    } else {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
    }
    return TRACK_FAILED;
}

/* Make room for one more statement on the server, closing the least recently used. */
static void evict_for_one_more(struct server *s, const char *keep)
{
    int max = (int)s->pool->app->cfg->max_prepared_statements;
    while (max > 0 && stmt_map_count(&s->stmts) >= max) {
        struct stmt_entry *lru = container_of(list_last(&s->stmts.lru), struct stmt_entry, lru);
        if (strcmp(lru->name, keep) == 0)
            break;
        prepared_put_close(&s->out, lru->name);
        if (stmt_queue_push(&s->reqs, REQ_CLOSE_OURS, lru->name) < 0)
            s->close_when_free = true;
        stmt_map_remove(&s->stmts, lru->name);
    }
}

/* Before sluice or the client prepares `name` on s: close what is there under that name, or
 * make room under max_prepared_statements. */
static void free_name_on_server(struct server *s, const char *name, bool taken)
{
    if (!taken) {
        evict_for_one_more(s, name);
        return;
    }
    prepared_put_close(&s->out, name);
    if (stmt_queue_push(&s->reqs, REQ_CLOSE_OURS, name) < 0)
        s->close_when_free = true;
}

/* The client uses statement `name`: make sure the server has this client's definition of it. */
static enum track_result ensure_prepared(struct client *c, struct server *s, const char *name)
{
    struct stmt_entry *mine = stmt_map_get(c->stmts, name);
    if (!mine || !mine->def)
        return TRACK_PASS; /* not known to sluice: the server answers as it would */
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    if (theirs && stmt_def_equal(theirs->def, mine->def)) {
        list_remove(&s->stmts.lru, &theirs->lru);
        list_prepend(&s->stmts.lru, &theirs->lru);
        return TRACK_PASS;
    }
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    free_name_on_server(s, name, theirs != NULL);
    prepared_put_parse(&s->out, name, mine->def);
    if (queue_request(c, s, REQ_PARSE_OURS, name) != TRACK_PASS)
        return TRACK_FAILED;
    if (!stmt_map_put(&s->stmts, name, mine->def)) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    return TRACK_PASS;
}

/* SQL whose effect outlives the transaction: what session_state_policy says. */
static enum track_result apply_session_policy(struct client *c, struct server *s, uint8_t type,
                                              enum session_feature f, uint32_t body_len)
{
    uint32_t whole = CODEC_HEADER_LEN + body_len;
    enum session_policy policy = c->app->cfg->session_state_policy;
    if (policy == SESSION_POLICY_PIN) {
        if (!c->pinned)
            log_client(LOG_INFO, c, "uses %s (application_name \"%s\"): pinned to S-%llu until it "
                                    "disconnects (session_state_policy = pin)",
                       session_feature_name(f), params_get(&c->params, "application_name") ?: "",
                       (unsigned long long)s->id);
        c->pinned = true;
        return TRACK_PASS;
    }
    if (policy == SESSION_POLICY_REFUSE) {
        if (type != 'Q' || s->inflight > 0 || !buf_is_empty(&s->in) || s->rx.remain ||
            buf_unframed(&c->in) < CODEC_HEADER_LEN + body_len) {
            /* Not at a point where sluice can answer in the server's place (and go on): an
             * ERROR alone would leave the client waiting for a ReadyForQuery. */
            client_fail_request_and_close(c, FAIL_SESSION_STATE, session_feature_name(f));
            return TRACK_FAILED;
        }
        if (buf_pending(&c->in) > 0)
            return TRACK_FLUSH;
        c->in.scan += whole;
        buf_consume(&c->in, whole);
        if (c->app->cfg->log_pooler_errors)
            log_client(LOG_WARNING, c, "refused %s (session_state_policy = refuse)",
                       session_feature_name(f));
        error_build(&c->out, FAIL_SESSION_STATE, session_feature_name(f), NULL);
        codec_put_ready(&c->out, s->txn_status);
        return TRACK_CONSUMED;
    }
    if (!(c->warned & (1u << f))) {
        c->warned |= (uint8_t)(1u << f);
        /* What becomes of it (note_session_objects, forget_touched): no other client gets it. */
        const char *fate = session_feature_leaves_objects(f)
                               ? "it is dropped when the transaction ends (the server is reset "
                                 "before it serves again)"
                               : "the next transaction may run on another server without it, "
                                 "and no other client gets it";
        log_client(LOG_WARNING, c,
                   "uses %s in %s mode (application_name \"%s\"): %s; use session mode or "
                   "session_state_policy = pin",
                   session_feature_name(f), pool_mode_name(s->pool->mode),
                   params_get(&c->params, "application_name") ?: "", fate);
    }
    return TRACK_PASS;
}

/* Objects only the end of a session drops (a temporary table, LISTEN, ...) were made on the
 * server: it gets a full reset before it serves again, so no other client finds them. */
static void note_session_objects(struct server *s, enum session_feature f)
{
    if (session_feature_leaves_objects(f))
        s->session = SERVER_SESSION_UNKNOWN;
}

/* The unreported parameters a statement may change: the server's record of them is unknown.
 * A change sluice cannot name (SET ROLE, a computed set_config name) is in no record: the
 * server gets a full reset before it serves again. */
static void forget_touched(struct server *s, const struct param_touch *touch)
{
    if (touch->unnamed)
        s->session = SERVER_SESSION_UNKNOWN;
    bool ok = true;
    if (touch->all)
        ok = params_forget(&s->params, NULL) == 0;
    for (int i = 0; i < touch->n && ok; i++)
        ok = params_forget(&s->params, touch->names[i]) == 0;
    if (!ok)
        s->close_when_free = true; /* out of memory: what the server has is not known */
}

/* What a statement the server will run does to state sluice keeps for it: the unreported
 * parameters it may change become unknown in the server's record, and DEALLOCATE / DISCARD ALL
 * change which statements are prepared. */
static enum track_result follow_statement(struct client *c, struct server *s, const char *sql,
                                          size_t len, const struct param_touch *touch)
{
    if (!memchr(sql, '\0', len))
        return TRACK_PASS; /* not a C string: not a statement the server will run either */
    char name_buf[256];
    enum sql_dealloc kind = prepared_classify_query(sql, name_buf, sizeof(name_buf));
    name_buf[STMT_KEY_MAX] = '\0'; /* the statement's key, as Postgres truncates the identifier */
    if (kind == SQL_DEALLOCATE) {
        /* The client's statement may live on another backend, or this one's copy was closed by
         * another client sharing it: prepared here first, DEALLOCATE succeeds as it would. */
        enum track_result r = ensure_prepared(c, s, name_buf);
        if (r != TRACK_PASS)
            return r;
    }
    forget_touched(s, touch);
    switch (kind) {
    case SQL_DEALLOCATE:
        stmt_map_remove(c->stmts, name_buf);
        stmt_map_remove(&s->stmts, name_buf);
        break;
    case SQL_DEALLOCATE_ALL:
    case SQL_DISCARD_ALL:
        stmt_map_clear(c->stmts);
        stmt_map_mark_unknown(&s->stmts);
        break;
    default:
        break;
    }
    return TRACK_PASS;
}

/* A Query that resets parameters the client set at login (see relay.h). Followed only where the
 * outcome can be told: the Query is the one request in flight and its last statement is a reset.
 * Otherwise the server's values reach the client as they are (docs/pool-modes.md). */
static void follow_login_reset(struct client *c, struct server *s, const struct param_reset *r)
{
    if (r->kind == PARAM_RESET_NONE || r->kind == PARAM_RESET_UNSURE || !c->login_params ||
        s->inflight > 0 || s->batch_open || s->login_reset.state != LOGIN_RESET_NONE)
        return;
    for (int i = 0; i < c->login_params->n; i++) {
        if (param_reset_covers(r, c->login_params->items[i].name)) {
            s->login_reset.state = LOGIN_RESET_AWAITING_REPLY;
            s->login_reset.which = *r;
            return;
        }
    }
}

/* Session mode inspects no statement but a Query's resets (transaction mode: inspect_statement).
 * False while a short Query is not here whole: it is read whole first. */
static bool inspect_session_query(struct client *c, struct server *s, const uint8_t *body,
                                  uint32_t len, uint32_t avail_body)
{
    if (avail_body < len)
        return CODEC_HEADER_LEN + len > buf_block_size(); /* too long: streams through unseen */
    struct param_touch touch;
    (void)session_state_detect((const char *)body, len, &touch);
    follow_login_reset(c, s, &touch.reset);
    return true;
}

/* SQL whose effect outlives the transaction (see session_state.h): the policy decides, and a
 * server that got such objects is noted for a reset. touch: the parameters it changes. */
static enum track_result police_statement(struct client *c, struct server *s, uint8_t type,
                                          const char *sql, size_t len, uint32_t body_len,
                                          struct param_touch *touch)
{
    enum session_feature f = session_state_detect(sql, len, touch);
    if (f == SESSION_FEATURE_NONE)
        return TRACK_PASS;
    enum track_result r = apply_session_policy(c, s, type, f, body_len);
    if (r == TRACK_PASS)
        note_session_objects(s, f);
    return r;
}

/* Every statement text sent to the server, by Query or by Parse, is looked at here: SQL whose
 * effect outlives the transaction (see session_state.h), then follow_statement. len covers the
 * text and its NUL (and, for Parse, what follows it). */
static enum track_result inspect_statement(struct client *c, struct server *s, uint8_t type,
                                           const char *sql, size_t len, uint32_t body_len)
{
    struct param_touch touch;
    enum track_result r = police_statement(c, s, type, sql, len, body_len, &touch);
    if (r != TRACK_PASS)
        return r;
    r = follow_statement(c, s, sql, len, &touch);
    if (r == TRACK_PASS && type == 'Q')
        follow_login_reset(c, s, &touch.reset);
    return r;
}

/* A statement larger than the buffer streams through: only its start, what the buffer holds now,
 * can be looked at. SET, RESET, LISTEN and the like come first and are seen; a set_config further
 * on is not (one more of session_state's false negatives), nor is a DEALLOCATE this long. */
static enum track_result inspect_statement_start(struct client *c, struct server *s, uint8_t type,
                                                 const char *sql, size_t shown, uint32_t body_len)
{
    struct param_touch touch;
    enum track_result r = police_statement(c, s, type, sql, shown, body_len, &touch);
    if (r != TRACK_PASS)
        return r;
    forget_touched(s, &touch);
    return TRACK_PASS;
}

/* May the client keep `bytes` more of statement text? Both bounds, or the client is failed naming
 * the one it passed. */
static bool keep_within_bounds(struct client *c, uint32_t bytes)
{
    const struct config *cfg = c->app->cfg;
    char detail[200];
    if (stmt_map_count(c->stmts) >= (int)cfg->max_prepared_statements_per_client) {
        snprintf(detail, sizeof(detail),
                 "more than max_prepared_statements_per_client (%lld) named prepared statements",
                 (long long)cfg->max_prepared_statements_per_client);
        client_fail(c, FAIL_TOO_MANY_STATEMENTS, detail);
        return false;
    }
    uint64_t mine = c->stmts ? c->stmts->text_bytes : 0;
    if (mine + bytes > (uint64_t)cfg->max_prepared_statement_bytes_per_client) {
        snprintf(detail, sizeof(detail),
                 "named prepared statements of more than max_prepared_statement_bytes_per_client "
                 "(%lld bytes) for one client",
                 (long long)cfg->max_prepared_statement_bytes_per_client);
        client_fail(c, FAIL_TOO_MANY_STATEMENTS, detail);
        return false;
    }
    if (stmt_client_text_bytes() + bytes > (uint64_t)cfg->max_prepared_statement_bytes) {
        snprintf(detail, sizeof(detail),
                 ": the prepared statements of all clients would pass max_prepared_statement_bytes "
                 "(%lld bytes)",
                 (long long)cfg->max_prepared_statement_bytes);
        client_fail(c, FAIL_OUT_OF_MEMORY, detail);
        return false;
    }
    return true;
}

/* A named Parse's statement text, which starts after its name (name_len bytes with the NUL; 0 when
 * the NUL is not in the buffer yet: a name this long leaves no text to see). */
static enum track_result inspect_parse_text(struct client *c, struct server *s, const uint8_t *body,
                                            uint32_t len, uint32_t avail_body, uint32_t name_len)
{
    if (avail_body >= len)
        return inspect_statement(c, s, 'P', (const char *)body + name_len, len - name_len, len);
    if (name_len == 0)
        return TRACK_PASS;
    return inspect_statement_start(c, s, 'P', (const char *)body + name_len, avail_body - name_len,
                                   len);
}

/* Parse: remember the client's definition; the server gets it under the client's name. */
static enum track_result track_parse(struct client *c, struct server *s, const uint8_t *body,
                                     uint32_t len, uint32_t avail_body)
{
    if (avail_body == 0)
        return TRACK_WAIT;
    if (body[0] == '\0') { /* the unnamed statement: passes through */
        if (avail_body < len && CODEC_HEADER_LEN + len <= buf_block_size())
            return TRACK_WAIT; /* short enough to look at whole */
        enum track_result r =
            avail_body >= len
                ? inspect_statement(c, s, 'P', (const char *)body + 1, len - 1, len)
                : inspect_statement_start(c, s, 'P', (const char *)body + 1, avail_body - 1, len);
        if (r != TRACK_PASS)
            return r;
        return queue_request(c, s, REQ_PARSE_CLIENT, NULL);
    }
    /* A Parse larger than the buffer streams through; its definition is kept as it passes
     * (frame_client, keep_parse_tail). The name's key must be in the buffer first. */
    bool streamed = avail_body < len && CODEC_HEADER_LEN + len > buf_block_size();
    if (avail_body < len && !streamed)
        return TRACK_WAIT;
    char name[STMT_KEY_MAX + 1];
    const uint8_t *nul = memchr(body, '\0', avail_body < len ? avail_body : len);
    if (!stmt_name_key(body, avail_body < len ? avail_body : len, name) ||
        (!streamed && !nul)) {
        if (streamed)
            return TRACK_WAIT;
        client_fail(c, FAIL_PROTOCOL_VIOLATION, "Parse without a statement name");
        return TRACK_FAILED;
    }
    uint32_t key_len = (uint32_t)strlen(name);
    /* The statement text, when the message is here whole (it starts after the name's NUL). */
    uint32_t name_len = nul ? (uint32_t)(nul - body) + 1 : 0;
    if (c->app->cfg->max_prepared_statements == 0) {
        /* Tracking off (as PgBouncer's 0): the Parse goes to whichever server, untouched. */
        enum track_result r = inspect_parse_text(c, s, body, len, avail_body, name_len);
        if (r != TRACK_PASS)
            return r;
        return queue_request(c, s, REQ_PARSE_CLIENT, NULL);
    }
    const struct stmt_entry *mine = stmt_map_get(c->stmts, name);
    if (mine && mine->def) {
        /* The client has a statement of that name: Postgres refuses the Parse (42P05) and
         * keeps the old one. The server says so itself once it has the client's statement. */
        enum track_result r = ensure_prepared(c, s, name);
        if (r != TRACK_PASS)
            return r;
        return queue_request(c, s, REQ_PARSE_CLIENT, NULL);
    }
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    if ((theirs || stmt_map_count(&s->stmts) >= (int)c->app->cfg->max_prepared_statements) &&
        buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    if (!keep_within_bounds(c, len))
        return TRACK_FAILED;
    enum track_result r = inspect_parse_text(c, s, body, len, avail_body, name_len);
    if (r != TRACK_PASS)
        return r;
    struct stmt_def *def = streamed ? stmt_def_alloc(len - key_len)
                                    : stmt_def_new(body + key_len, len - key_len);
    if (!def) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    /* Taken on this server (by another client's statement of the same name, or one this
     * client closed): closed first, so the client's Parse succeeds as it would have. */
    free_name_on_server(s, name, theirs != NULL);
    if (!c->stmts)
        c->stmts = stmt_map_new();
    bool ok = c->stmts && stmt_map_put(c->stmts, name, def) && stmt_map_put(&s->stmts, name, def);
    /* Streamed: the definition fills as the message passes; nothing compares it before the
     * message has passed whole, since nothing else of this client is framed until then. c->stmts
     * holds it meanwhile (the framer's pointer does not own it). */
    if (ok && streamed)
        c->rx.keep = def;
    stmt_def_unref(def);
    if (!ok) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    return queue_request(c, s, REQ_PARSE_CLIENT, name);
}

/* Bind, Describe and Close name a statement near the start of their body. */
static enum track_result track_message(struct client *c, struct server *s, uint8_t type,
                                       const uint8_t *body, uint32_t len, uint32_t avail_body)
{
    uint32_t shown = avail_body < len ? avail_body : len;
    uint32_t at = 0; /* where the statement name starts */
    const char *missing = "statement name";
    switch (type) {
    case 'P':
        return track_parse(c, s, body, len, avail_body);
    case 'B': {
        const uint8_t *portal_end = memchr(body, '\0', shown);
        if (!portal_end) {
            missing = "portal name";
            at = shown + 1; /* not here yet */
        } else {
            at = (uint32_t)(portal_end - body) + 1;
        }
        break;
    }
    case 'D':
    case 'C':
        at = 1; /* after 'S' or 'P' */
        break;
    case 'S':
    case 'Q':
    case 'F':
        if (type == 'Q') {
            if (avail_body < len && CODEC_HEADER_LEN + len <= buf_block_size())
                return TRACK_WAIT; /* short enough to read whole: look for DEALLOCATE */
            enum track_result r = TRACK_PASS;
            if (avail_body >= len && len > 0 && body[len - 1] == '\0')
                r = inspect_statement(c, s, 'Q', (const char *)body, len, len);
            else if (avail_body < len)
                r = inspect_statement_start(c, s, 'Q', (const char *)body, avail_body, len);
            if (r != TRACK_PASS)
                return r;
        }
        return queue_request(c, s, REQ_SYNC, NULL);
    default:
        return TRACK_PASS;
    }
    char name[STMT_KEY_MAX + 1];
    if (at > shown || !stmt_name_key(body + at, shown - at, name)) {
        /* The names are not all here yet. */
        if (avail_body >= len) {
            client_fail(c, FAIL_PROTOCOL_VIOLATION, "malformed statement name");
            return TRACK_FAILED;
        }
        if (CODEC_HEADER_LEN + len > buf_block_size() && avail_body + CODEC_HEADER_LEN >= buf_block_size()) {
            char detail[64];
            snprintf(detail, sizeof(detail), "%s longer than pkt_buf", missing);
            client_fail(c, FAIL_PROTOCOL_VIOLATION, detail);
            return TRACK_FAILED;
        }
        return TRACK_WAIT;
    }
    if (type == 'C') {
        bool statement = body[0] == 'S';
        if (queue_request(c, s, REQ_CLOSE_CLIENT, statement ? name : NULL) != TRACK_PASS)
            return TRACK_FAILED;
        if (statement && name[0]) {
            stmt_map_remove(c->stmts, name);
            stmt_map_remove(&s->stmts, name);
        }
        return TRACK_PASS;
    }
    if ((type == 'D' && body[0] != 'S') || !name[0])
        return TRACK_PASS;
    return ensure_prepared(c, s, name);
}

/* The client ended a COPY FROM STDIN (CopyDone or CopyFail; sluice's CopyFail for a client that
 * left). A COPY started by an Execute had the Syncs sent after that Execute arrive during copy-in,
 * where Postgres ignores them (protocol "COPY Operations"): they are not answered, so they leave
 * the count, and the batch stays open until the Sync that follows the CopyDone (libpq's
 * PQputCopyEnd sends one). */
static void copy_in_ended(struct server *s)
{
    s->copy_in = false;
    if (s->syncs_after_execute == 0)
        return;
    s->inflight -= s->syncs_after_execute;
    if (tracking(s))
        stmt_queue_drop_last_syncs(&s->reqs, s->syncs_after_execute);
    s->syncs_after_execute = 0;
    s->batch_open = true;
}

/* A streamed Parse's definition is the last keep->len bytes of the message: copy those of the
 * chunk just framed (rx->remain already counts it out), and seal it when the message is whole. */
static void keep_parse_tail(struct framer *rx, const uint8_t *chunk, uint32_t n)
{
    struct stmt_def *d = rx->keep;
    if (!d)
        return;
    uint32_t from_end = rx->remain + n; /* the chunk's first byte, counted from the message end */
    uint32_t skip = from_end > d->len ? from_end - d->len : 0;
    if (skip < n)
        memcpy(d->data + (d->len - (from_end - skip)), chunk + skip, n - skip);
    if (rx->remain == 0) {
        stmt_def_seal(d);
        rx->keep = NULL;
    }
}

static enum frame_stop frame_client(struct client *c, struct server *s)
{
    struct buf *b = &c->in;
    uint32_t max_body = (uint32_t)c->app->cfg->max_packet_size;
    bool track = tracking(s);
    while (b->scan < b->wpos) {
        if (c->rx.remain) {
            uint32_t take = min_u32(c->rx.remain, b->wpos - b->scan);
            b->scan += take;
            c->rx.remain -= take;
            keep_parse_tail(&c->rx, b->data + b->scan - take, take);
            continue;
        }
        const uint8_t *p = b->data + b->scan;
        uint8_t type;
        uint32_t body_len;
        /* No bound here: an oversized body gets its own message naming max_packet_size. */
        switch (codec_frame_header(p, b->wpos - b->scan, UINT32_MAX, &type, &body_len)) {
        case FRAME_NEED_MORE:
            return STOP_NEED_DATA;
        case FRAME_BAD_LENGTH:
            client_fail(c, FAIL_PROTOCOL_VIOLATION, "message length below 4");
            return STOP_FAILED;
        case FRAME_OK:
            break;
        }
        uint32_t len = body_len + 4;
        if (body_len > max_body) {
            char detail[128];
            snprintf(detail, sizeof(detail), "%u bytes, max_packet_size is %u", body_len, max_body);
            client_fail(c, FAIL_PACKET_TOO_LARGE, detail);
            return STOP_FAILED;
        }
        if (type == 'X')
            return STOP_TERMINATE;
        if (!codec_frontend_type_known(type)) {
            char detail[64];
            snprintf(detail, sizeof(detail), "unexpected message type 0x%02x", type);
            client_fail(c, FAIL_PROTOCOL_VIOLATION, detail);
            return STOP_FAILED;
        }
        /* Protocol "COPY Operations": during copy-in Postgres ignores Sync and Flush; it
         * answers neither, so neither is counted. */
        bool ignored = s->copy_in && (p[0] == 'S' || p[0] == 'H');
        if (!track && p[0] == 'Q' && c->login_params &&
            !inspect_session_query(c, s, p + CODEC_HEADER_LEN, len - 4,
                                   b->wpos - b->scan - CODEC_HEADER_LEN))
            return STOP_NEED_DATA;
        if (track && !ignored) {
            uint32_t avail_body = b->wpos - b->scan - CODEC_HEADER_LEN;
            switch (track_message(c, s, p[0], p + CODEC_HEADER_LEN, len - 4, avail_body)) {
            case TRACK_PASS:
                break;
            case TRACK_WAIT:
                return STOP_NEED_DATA;
            case TRACK_FLUSH:
                return STOP_NEED_FLUSH;
            case TRACK_FAILED:
                return STOP_FAILED;
            case TRACK_CONSUMED:
                continue;
            }
        }
        switch (ignored ? 0 : p[0]) {
        case 'Q':
        case 'F':
        case 'S':
            if (p[0] == 'S')
                s->syncs_after_execute++;
            else
                s->syncs_after_execute = 0;
            if (s->inflight++ == 0) {
                s->query_start_ms = sluice_now(c->app);
                if (s->txn_status == 'I')
                    s->xact_start_ms = s->query_start_ms;
            }
            if (p[0] == 'S')
                s->batch_open = false;
            break;
        case 'E':
            s->syncs_after_execute = 0;
            s->executes_unanswered++;
            s->batch_open = true;
            break;
        case 'P':
        case 'B':
        case 'D':
        case 'C':
        case 'H':
            s->batch_open = true;
            break;
        case 'c':
        case 'f':
            if (s->copy_in)
                copy_in_ended(s);
            break;
        default:
            break;
        }
        uint32_t whole = len + 1;
        uint32_t take = min_u32(whole, b->wpos - b->scan);
        b->scan += take;
        c->rx.remain = whole - take;
        keep_parse_tail(&c->rx, b->data + b->scan - take, take);
        if (track && s->out.len > s->out_pos)
            return STOP_NEED_FLUSH; /* sluice's own messages go out before this one */
    }
    return STOP_NEED_DATA;
}

/* ---- server -> client framing ---- */

/* The bit of a reported name in login_reset.held; -1 for a name Postgres 15 does not report. */
static int reported_bit(const char *name)
{
    const char *r;
    for (int i = 0; (r = params_reported_name((size_t)i)) != NULL; i++)
        if (strcasecmp(r, name) == 0)
            return i;
    return -1;
}

/* While a client's reset of its login parameters runs (see relay.h), the server's reports wait
 * for its ReadyForQuery: those of the names reset are the backend's own reset values, and the
 * others must keep Postgres's order with them. */
static bool report_held_back(struct server *s, const uint8_t *body, uint32_t len)
{
    const char *name, *value;
    if (s->login_reset.state != LOGIN_RESET_AWAITING_REPLY || s->swallow > 0 ||
        !codec_parse_parameter_status(body, len, &name, &value))
        return false;
    int bit = reported_bit(name);
    if (bit < 0)
        return false;
    s->login_reset.held |= (uint16_t)(1u << bit);
    return true;
}

/* The ReadyForQuery of a client's Query that reset its login parameters. When the reset is known
 * to stand (no error, nothing else in flight), the login values are set again on the server and
 * the client is told of each reported one it was not told last, as Postgres would tell it.
 * Otherwise it is told the server's values. Either way, reports held back come now, in the
 * order Postgres sends them (its names' order), before the ReadyForQuery. */
static void settle_login_reset(struct server *s, struct client *c, char status)
{
    struct login_reset *lr = &s->login_reset;
    bool stands = lr->state == LOGIN_RESET_AWAITING_REPLY && status != 'E' && s->inflight == 0 &&
                  !s->batch_open;
    lr->state = LOGIN_RESET_NONE;
    bool ok = true;
    const char *name;
    for (size_t i = 0; ok && (name = params_reported_name(i)) != NULL; i++) {
        const char *login = params_get(c->login_params, name);
        bool restored = login && param_reset_covers(&lr->which, name);
        const char *now = stands && restored ? login : params_get(&s->params, name);
        const char *told = params_get(&c->params, name);
        if (!now || (!(lr->held & (1u << i)) && !restored))
            continue;
        if (restored && told && strcmp(told, now) == 0)
            continue; /* Postgres reports a value only when it differs from the last one */
        codec_put_parameter_status(&c->out, name, now);
        if (params_is_client_settable(name))
            ok = params_set(&c->params, name, now) == 0;
    }
    lr->held = 0;
    struct param_set restore;
    params_init(&restore);
    for (int i = 0; ok && stands && i < c->login_params->n; i++) {
        const struct param *p = &c->login_params->items[i];
        if (param_reset_covers(&lr->which, p->name))
            ok = params_set(&restore, p->name, p->value) == 0;
    }
    struct msg_out sql;
    codec_out_init(&sql);
    if (ok && params_build_restore(&restore, &s->params, &sql) < 0)
        ok = false;
    for (uint32_t at = 0; ok && at < sql.len;) {
        const char *stmt = (const char *)sql.data + at;
        log_client(LOG_DEBUG, c, "S-%llu: %s (its login value again)", (unsigned long long)s->id,
                   stmt);
        server_queue_internal(s, stmt);
        at += (uint32_t)strlen(stmt) + 1;
    }
    codec_out_free(&sql);
    params_free(&restore);
    if (!ok)
        s->close_when_free = true; /* out of memory: what the server has is not known */
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
        client_login_refused(c, parsed && ef.sqlstate ? ef.sqlstate : "08P01",
                             parsed && ef.message ? ef.message : "invalid startup parameter");
        return;
    }
    if (parsed)
        log_server(LOG_WARNING, s, "server said, outside any client's query: %s %s (%s)",
                   ef.severity ? ef.severity : "", ef.message ? ef.message : "",
                   ef.sqlstate ? ef.sqlstate : "");
}

/* The client's request is answered (its last ReadyForQuery): count it, log it if slow. */
static void query_done(struct server *s, struct client *c, char status)
{
    uint64_t now = sluice_now(c->app);
    uint64_t ms = now - s->query_start_ms;
    bool xact_ended = status == 'I' && !s->batch_open;
    pool_record_query(s->pool, ms, xact_ended);
    if (xact_ended)
        s->pool->xact_us_total += (now - s->xact_start_ms) * 1000;
    int64_t slow = c->app->cfg->log_slow_query_ms;
    if (slow > 0 && ms >= (uint64_t)slow)
        log_client(LOG_WARNING, c, "slow query: %llu ms (log_slow_query_ms = %lld), "
                                   "application_name \"%s\", pool %s/%s, S-%llu",
                   (unsigned long long)ms, (long long)slow,
                   params_get(&c->params, "application_name") ?: "", s->pool->db_name,
                   s->pool->user_name, (unsigned long long)s->id);
}

/* Frame server messages. Messages are forwarded to c, or consumed when there is no client or
 * they answer sluice's own query. */
static enum frame_stop frame_server(struct server *s, struct client *c)
{
    struct buf *b = &s->in;
    bool forbid_txn =
        c && pool_mode_ops(s->pool->mode, c->app->cfg->server_reset_query_always)->forbid_transaction;
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
        if ((type == '1' || type == '3') && s->swallow == 0 && tracking(s)) {
            if (c && buf_pending(b) > 0 && s->reqs.count > 0 &&
                (s->reqs.items[s->reqs.head].kind == REQ_PARSE_OURS ||
                 s->reqs.items[s->reqs.head].kind == REQ_CLOSE_OURS))
                return STOP_NEED_FLUSH;
            enum stmt_reply_action a = stmt_on_complete(&s->reqs, &s->stmts, type);
            if (a == REPLY_UNEXPECTED) {
                log_server(LOG_ERROR, s, "reply '%c' matches no request sluice sent", type);
                s->close_when_free = true;
                return STOP_FAILED;
            }
            consume = consume || a == REPLY_SWALLOW;
        }
        bool held = false;
        if (type == 'S' && c && s->login_reset.state == LOGIN_RESET_AWAITING_REPLY &&
            whole <= buf_block_size()) {
            if (avail < whole)
                return STOP_NEED_DATA;
            held = report_held_back(s, p + CODEC_HEADER_LEN, len - 4);
            consume = consume || held;
        }
        /* Bytes before a consumed message go out first (consuming moves rpos). Checked before
         * anything below changes state, since the message is looked at again after the flush. */
        if (consume && buf_pending(b) > 0)
            return STOP_NEED_FLUSH;
        if (type == 'E' && c && s->swallow == 0 &&
            s->login_reset.state == LOGIN_RESET_AWAITING_REPLY)
            s->login_reset.state = LOGIN_RESET_FAILED; /* the reset never ran, or is undone */
        if (type == 'G')
            s->copy_in = true; /* until the client ends the COPY, or the next ReadyForQuery */
        if (s->swallow == 0 && s->executes_unanswered > 0) {
            /* Each Execute gets one of these; after an error the rest are skipped to Sync. */
            if (type == 'C' || type == 'I' || type == 's')
                s->executes_unanswered--;
            else if (type == 'E')
                s->executes_unanswered = 0;
        }
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
                /* Statement mode: the client must not see a transaction go on. Its
                 * ReadyForQuery is replaced by the error, after what came before it. */
                bool forbidden = forbid_txn && s->swallow == 0 && body[0] != 'I';
                /* So is a reset's: what sluice tells the client comes before it. */
                bool settles = c && s->swallow == 0 && s->login_reset.state != LOGIN_RESET_NONE;
                if ((forbidden || settles) && buf_pending(b) > 0)
                    return STOP_NEED_FLUSH;
                if (!c)
                    s->login_reset.state = LOGIN_RESET_NONE; /* its client left */
                s->txn_status = (char)body[0];
                s->copy_in = false;
                s->last_ready_ms = sluice_now(s->pool->app);
                if (s->swallow > 0) {
                    s->swallow--;
                    consume = true;
                    login_synced = s->swallow == 0 && c && client_login_syncing(c);
                } else {
                    if (s->inflight > 0 && --s->inflight == 0) {
                        s->timeout_cancel_sent = false;
                        if (!s->batch_open)
                            s->executes_unanswered = 0; /* answered, or skipped after an error */
                        if (c)
                            query_done(s, c, (char)body[0]);
                    } else if (s->inflight > 0 && body[0] == 'I') {
                        /* pipelined: the request sent next starts its transaction now */
                        s->xact_start_ms = sluice_now(s->pool->app);
                    }
                    if (s->reqs.count > 0)
                        stmt_on_ready(&s->reqs, &s->stmts, c ? c->stmts : NULL);
                    if (settles)
                        settle_login_reset(s, c, (char)body[0]);
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
        s->last_bytes_ms = sluice_now(s->pool->app);
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

/* Read what the linked client has. >0 read, 0 nothing now, <0 it is gone (*r: what to report,
 * o->why: why). Unlinked clients read through client.c's own reader. */
static int client_side_read(struct client *c, struct relay_outcome *o, enum relay_result *r)
{
    if (!buf_attach(&c->in)) {
        *r = RELAY_CLIENT_OUT_OF_MEMORY;
        return -1;
    }
    uint32_t room = buf_make_room(&c->in);
    if (room == 0)
        return 0;
    ssize_t n = sockio_read(&c->io, c->in.data + c->in.wpos, room);
    if (n > 0) {
        c->in.wpos += (uint32_t)n;
        return (int)n;
    }
    if (n == SOCKIO_AGAIN) {
        buf_detach_if_empty(&c->in);
        return 0;
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

bool relay_at_boundary(const struct server *s, const struct client *c)
{
    return s->inflight == 0 && !s->batch_open && s->rx.remain == 0 && (!c || c->rx.remain == 0) &&
           s->out_pos >= s->out.len;
}

enum pair_wait relay_pair_wait(const struct client *c, const struct server *s)
{
    /* Bytes the server has not taken yet: it is slow, not waiting. */
    if (s->swallow > 0 || buf_pending(&c->in) > 0 || s->out_pos < s->out.len)
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
        pool_mode_ops(s->pool->mode, c->app->cfg->server_reset_query_always);
    if (!ops->release_at_idle || c->pinned)
        return RELAY_LINKED;
    if (s->txn_status != 'I')
        return ops->forbid_transaction ? RELAY_TXN_FORBIDDEN : RELAY_LINKED;
    return RELAY_RELEASE;
}

/* ---- a client leaving mid-query ---- */

bool relay_client_mid_message(const struct client *c)
{
    return c->rx.remain > 0 || buf_pending(&c->in) > 0;
}

bool relay_orphan_server(struct server *s, struct client *c)
{
    if (c && relay_client_mid_message(c))
        return false; /* the server holds part of a message only the client could finish */
    /* What the server says from now on is read and dropped: first what was framed for the
     * client and not yet written, then the rest of a message cut short. */
    buf_consume(&s->in, buf_pending(&s->in));
    if (s->rx.remain > 0)
        s->rx.discard = true;
    if (s->copy_in) {
        /* COPY FROM STDIN waits for data that will not come; Postgres ignores a CopyFail
         * outside COPY, so a race with the end of the COPY is harmless. */
        codec_begin(&s->out, 'f');
        codec_put_cstring(&s->out, "client disconnected");
        codec_end(&s->out);
        copy_in_ended(s);
    }
    if (s->batch_open) {
        /* Extended-protocol messages without their Sync: what they ran is in an implicit
         * transaction that only a Sync commits, and Postgres rolls it back when the session ends
         * first. A bare Sync would commit it, so an Execute of a portal that does not exist goes
         * before it: its ERROR (34000) aborts the transaction and the Sync ends it rolled back.
         * After an earlier error the server skips both to the Sync; the ErrorResponse and
         * ReadyForQuery are dropped with the rest of the orphan's replies. (A portal of this
         * name exists only if the client bound one on purpose, which it could as well have
         * synced.) */
        if (tracking(s) && stmt_queue_push(&s->reqs, REQ_SYNC, NULL) < 0)
            return false;
        codec_begin(&s->out, 'E');
        codec_put_cstring(&s->out, "sluice: abort the unsynced batch of a client that left");
        codec_put_i32(&s->out, 0);
        codec_end(&s->out);
        codec_begin(&s->out, 'S');
        codec_end(&s->out);
        s->batch_open = false;
        s->inflight++;
    }
    return !s->out.oom;
}

/* ---- the pump ---- */

/* Does what the client sent next wait before going to its server? During a login's parameter
 * sync it waits for the server's answer. While a cancel is on its way to the backend (PQcancel
 * not returned) it waits for that: Postgres 15 signals a backend twice for one cancel (its pid,
 * then its process group) and, on a loaded machine, the second signal can land after the first
 * has ended the query, cancelling whatever runs next. cancel_done kicks the pair again. */
static bool client_bytes_wait(const struct client *c, const struct server *s)
{
    return client_login_syncing(c) || s->cancels_in_flight > 0;
}

/* A server with no client: everything it says is consumed (sluice's own query, a notice). */
static enum relay_result pump_alone(struct server *s, struct relay_outcome *o)
{
    for (;;) {
        if (write_generated(&s->io, &s->out, &s->out_pos) == WRITE_BROKEN)
            return lost(o, RELAY_SERVER_LOST, "write to server failed", NULL);
        if (frame_server(s, NULL) == STOP_FAILED)
            return lost(o, RELAY_SERVER_LOST, "server protocol error", NULL);
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
        enum frame_stop cst = STOP_NEED_DATA;
        enum write_result w;
        for (;;) {
            w = write_generated(&s->io, &s->out, &s->out_pos);
            if (w != WRITE_DONE)
                break;
            cst = client_bytes_wait(c, s) ? STOP_NEED_DATA : frame_client(c, s);
            if (cst == STOP_FAILED)
                return RELAY_GONE;
            w = write_generated(&s->io, &s->out, &s->out_pos);
            if (w != WRITE_DONE)
                break;
            w = write_framed(&s->io, &c->in, &s->pool->bytes_in);
            if (w != WRITE_DONE || cst != STOP_NEED_FLUSH)
                break;
        }
        if (w == WRITE_BROKEN)
            return lost(o, RELAY_SERVER_LOST, "write to server failed", NULL);
        if (cst == STOP_TERMINATE && buf_pending(&c->in) == 0)
            return RELAY_TERMINATED;

        /* Server -> client: anything sluice generated for the client first. */
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
        enum relay_result release = release_due(c, s);
        if (release != RELAY_LINKED)
            return release;
        /* TLS may hold decrypted bytes the socket will not announce again. */
        bool more = false;
        if (sockio_pending(&s->io) > 0 && buf_pending(&s->in) == 0) {
            int n = server_read(s, o);
            if (n < 0)
                return RELAY_SERVER_LOST;
            more |= n > 0;
        }
        if (sockio_pending(&c->io) > 0 && buf_pending(&c->in) == 0) {
            enum relay_result gone;
            int n = client_side_read(c, o, &gone);
            if (n < 0)
                return gone;
            if (n > 0)
                s->last_bytes_ms = sluice_now(c->app);
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
    if (buf_pending(&c->in) > 0) {
        /* Not reading while the server has not taken the last bytes; a stale event. */
        return relay_pump(s, o);
    }
    enum relay_result gone;
    int n = client_side_read(c, o, &gone);
    if (n < 0)
        return gone;
    if (n > 0)
        s->last_bytes_ms = sluice_now(c->app);
    return relay_pump(s, o);
}

enum relay_result relay_server_readable(struct server *s, struct relay_outcome *o)
{
    if (buf_pending(&s->in) == 0 && server_read(s, o) < 0)
        return RELAY_SERVER_LOST;
    return relay_pump(s, o);
}
