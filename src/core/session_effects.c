/* session_effects: what a statement does to the server's session beyond its transaction, in
 * transaction mode. SQL whose effect outlives it (session_state.c detects it) meets
 * session_state_policy (warn, pin, refuse), but for a SET sluice follows (login_reset.h reads
 * it back); a server left with session objects is marked for a full reset; the parameters a
 * statement may change are forgotten in the server's record.
 * stmt_track.c brings every statement text here; what becomes of prepared statements is its own. */
#include "session_effects.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "client.h"
#include "codec.h"
#include "conn_id.h"
#include "log.h"
#include "login_reset.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "sluice.h"
#include "sql_lex.h"

/* What sluice answers for when it refuses the message at c->in.scan (itself, or through the
 * failing statement the server runs in its place: refuse_by_server). */
struct refused_request {
    uint32_t len;    /* the bytes answered for; 0: it cannot answer, the session ends */
    bool with_ready; /* they end with a Sync (or are a Query): a ReadyForQuery follows */
};

/* A Query alone. A Parse with every message after it through the batch's Sync, which Postgres
 * skips after a failed Parse (protocol "Extended Query": messages are discarded until a Sync),
 * or through a Flush that ends what the client sent (asyncpg prepares with Parse, Describe,
 * Flush, and sends its Sync once it has the error): the client gets the ERROR at once, and the
 * Sync, whichever server it reaches, its ReadyForQuery. What the client sends between that
 * Flush and its Sync is not skipped when sluice answers alone (the server skips it after the
 * failing statement). Nothing when the batch is not all in the buffer. */
static struct refused_request refused_request(const struct buf *b, uint8_t type, uint32_t body_len)
{
    struct refused_request none = {0, false};
    uint32_t whole = CODEC_HEADER_LEN + body_len;
    if (buf_unframed(b) < whole || (type != 'Q' && type != 'P'))
        return none;
    if (type == 'Q')
        return (struct refused_request){whole, true};
    uint32_t pos = b->scan + whole;
    uint8_t next;
    uint32_t next_len;
    while (codec_frame_header(b->data + pos, b->wpos - pos, UINT32_MAX, &next, &next_len) ==
               FRAME_OK &&
           b->wpos - pos - CODEC_HEADER_LEN >= next_len && next != 'X') {
        pos += CODEC_HEADER_LEN + next_len;
        if (next == 'S')
            return (struct refused_request){pos - b->scan, true};
        if (next == 'H' && pos == b->wpos)
            return (struct refused_request){pos - b->scan, false};
    }
    return none;
}

/* The statement the server runs in place of a refused one when the server must give the answer
 * (refuse_by_server): it fails at its Parse as the refused one would, after Postgres's own check
 * for a failed transaction (which answers 25P02 then, as it would to the refused statement):
 * parse analysis casts the literal. The literal names the feature, so that the ERROR (22P02,
 * quoting it) is known on its way back (session_effects_refused_in_error), and the server's log
 * says what it was. */
#define REFUSAL_MARK "sluice refused: "

/* The failing statement's text, its NUL included, is at most this long. It takes the place of
 * at least a NUL-ended statement of one byte and, for a Parse, a name, a parameter count and the
 * batch's Sync or Flush, all of which it has too: it is longer than what it replaces by less
 * than its own size. That growth must fit the slack every buffer block keeps past pkt_buf
 * (buf_replace_at_scan), for the refused bytes can start a buffer the client filled. */
#define FAILING_SQL_SIZE 160
_Static_assert(FAILING_SQL_SIZE <= BUF_GROW_MAX,
               "a failing statement may grow a client's buffer past its slack");

static void put_failing_statement(struct msg_out *o, uint8_t type, enum session_feature f,
                                  const char *before, size_t before_len)
{
    char sql[FAILING_SQL_SIZE];
    snprintf(sql, sizeof(sql), "SELECT '" REFUSAL_MARK "%s'::pg_catalog.int4",
             session_feature_name(f));
    codec_begin(o, type);
    if (type == 'P')
        codec_put_cstring(o, ""); /* unnamed: a failed Parse leaves no statement behind */
    codec_put_bytes(o, before, before_len);
    codec_put_cstring(o, sql);
    if (type == 'P')
        codec_put_i16(o, 0);
    codec_end(o);
}

/* Refused where the server's answer is needed: in a transaction block, Postgres fails the
 * transaction at the error (ReadyForQuery 'E', a later COMMIT rolls back, what follows answers
 * 25P02); behind requests still unanswered the ReadyForQuery sluice would give is not known; and
 * the statements of a Query before the refused one run first (a BEGIN, a COMMIT among them).
 * The refused bytes become the failing statement (a Query of the statements before the refused
 * one, `before`, and the failing one; an unnamed Parse and the batch's Sync or Flush for a Parse
 * and its batch, whose messages Postgres skips after the failed Parse), framed then as the
 * client's; its ERROR reaches the client as sluice's 0A000 (relay.c), the rest comes from the
 * server itself, as Postgres answers. */
static enum track_result refuse_by_server(struct client *c, uint8_t type, enum session_feature f,
                                          struct refused_request answered, const char *before,
                                          size_t before_len, struct client_failure *fail)
{
    struct msg_out with;
    codec_out_init(&with);
    put_failing_statement(&with, type, f, before, before_len);
    if (type == 'P') {
        codec_begin(&with, answered.with_ready ? 'S' : 'H');
        codec_end(&with);
    }
    /* Nothing of the client's is framed before the refused bytes (refuse flushed it first). */
    bool ok = !with.oom && buf_replace_at_scan(&c->in, answered.len, with.data, with.len);
    codec_out_free(&with);
    if (!ok) {
        fail_request_and_session(fail, FAIL_SESSION_STATE, session_feature_name(f));
        return TRACK_FAILED;
    }
    if (c->worker->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c,
                   "refused %s (session_state_policy = refuse): a failing statement runs in "
                   "its place, so that the server's transaction fails as in Postgres",
                   session_feature_name(f));
    return TRACK_REPLACED;
}

/* Is the server where sluice's answer is Postgres's: idle outside a transaction block, nothing
 * of the client's unanswered? Then the session goes on after the error as it does there. */
static bool server_settled(const struct server *s)
{
    return s->txn_status == 'I' && s->inflight == 0 && !s->batch_open && buf_is_empty(&s->in) &&
           !s->rx.remain;
}

/* session_state_policy = refuse: an ERROR 0A000 in the statement's place, and what Postgres does
 * after an error (refused_request, refuse_by_server). sql: the statement text (len bytes). */
static enum track_result refuse(struct client *c, struct server *s, uint8_t type,
                                enum session_feature f, const char *sql, size_t len,
                                uint32_t body_len, struct client_failure *fail)
{
    struct refused_request answered = refused_request(&c->in, type, body_len);
    if (answered.len == 0) {
        /* Not at a point where sluice can answer in the server's place (and go on): an ERROR
         * alone would leave the client waiting for a ReadyForQuery. */
        fail_request_and_session(fail, FAIL_SESSION_STATE, session_feature_name(f));
        return TRACK_FAILED;
    }
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    size_t before = type == 'Q' ? session_state_feature_start(sql, len) : 0;
    if (before > 0 || !server_settled(s))
        return refuse_by_server(c, type, f, answered, sql, before, fail);
    c->in.scan += answered.len;
    buf_consume(&c->in, answered.len);
    if (c->worker->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "refused %s (session_state_policy = refuse)",
                   session_feature_name(f));
    session_effects_put_refusal(c, f);
    if (answered.with_ready)
        codec_put_ready(&c->out, s->txn_status);
    return TRACK_CONSUMED;
}

/* SQL whose effect outlives the transaction: what session_state_policy says. */
static enum track_result apply_session_policy(struct client *c, struct server *s, uint8_t type,
                                              enum session_feature f, const char *sql, size_t len,
                                              uint32_t body_len, struct client_failure *fail)
{
    enum session_policy policy = c->worker->cfg->session_state_policy;
    if (policy == SESSION_POLICY_PIN) {
        if (!c->pinned)
            log_client(LOG_INFO, c,
                       "uses %s (application_name \"%s\"): pinned to S-%s until it "
                       "disconnects (session_state_policy = pin)",
                       session_feature_name(f), params_get(&c->params, "application_name") ?: "",
                       CONN_ID_TEXT(s->id));
        c->pinned = true;
        return TRACK_PASS;
    }
    if (policy == SESSION_POLICY_REFUSE)
        return refuse(c, s, type, f, sql, len, body_len, fail);
    if (!(c->warned & (1u << f))) {
        c->warned |= (uint16_t)(1u << f);
        /* What becomes of it (note_session_objects, session_effects_forget_params): no other client
         * gets it. */
        const char *fate =
            session_feature_outlives_reset(f)
                ? "it is lost when the transaction ends (no reset undoes it: the server is "
                  "closed when released)"
            : session_feature_leaves_objects(f)
                ? "it is dropped when the transaction ends (the server is reset before it "
                  "serves again)"
                : "the next transaction may run on another server without it, and no other "
                  "client gets it";
        log_client(LOG_WARNING, c,
                   "uses %s in %s mode (application_name \"%s\"): %s; use session mode or "
                   "session_state_policy = pin",
                   session_feature_name(f), pool_mode_name(s->mode),
                   params_get(&c->params, "application_name") ?: "", fate);
    }
    return TRACK_PASS;
}

/* The server may hold temporary objects (server.h): it gets DISCARD TEMP before it serves again,
 * unless a full reset is due already. */
static void note_temp_objects(struct server *s)
{
    if (s->session == SERVER_SESSION_FOLLOWED)
        s->session = SERVER_SESSION_TEMP_OBJECTS;
}

/* Objects only the end of a session drops (a temporary table, LISTEN, ...) were made on the
 * server: it gets a reset before it serves again, so no other client finds them (DISCARD TEMP
 * for temporary objects, a full reset for the rest). What no reset undoes (a LOADed library)
 * ends with the server: it is closed when released (a pinned client's when the client leaves). */
static void note_session_objects(struct server *s, enum session_feature f)
{
    if (f == SESSION_FEATURE_TEMP_TABLE)
        note_temp_objects(s);
    else if (session_feature_leaves_objects(f))
        s->session = SERVER_SESSION_UNKNOWN;
    if (session_feature_outlives_reset(f))
        s->close_when_free = true;
}

/* Past this many names in a server's record, a name more is not recorded: the server gets a
 * full reset (one DISCARD ALL) before it serves again instead of one RESET per name, and its
 * record stays small (a client SETting thousands of custom placeholders in one transaction). */
#define SERVER_PARAMS_RECORDED_MAX (4 * SET_TRACKED_MAX)

/* The unreported parameters a statement may change: the server's record of them is unknown.
 * A change sluice cannot name (SET ROLE, a computed set_config name) is in no record: the
 * server gets a full reset before it serves again. */
void session_effects_forget_params(struct server *s, const struct param_touch *touch)
{
    if (touch->unnamed)
        s->session = SERVER_SESSION_UNKNOWN;
    if (touch->temp_schema)
        note_temp_objects(s); /* the search_path itself is followed as any SET's */
    bool ok = true;
    if (touch->all)
        ok = params_forget(&s->params, NULL) == 0;
    for (int i = 0; i < touch->n && ok; i++) {
        if (s->params.n >= SERVER_PARAMS_RECORDED_MAX && !params_get(&s->params, touch->names[i]))
            s->session = SERVER_SESSION_UNKNOWN;
        else
            ok = params_forget(&s->params, touch->names[i]) == 0;
    }
    if (!ok)
        s->close_when_free = true; /* out of memory: what the server has is not known */
}

/* c->warned holds a bit per feature warned about, and this one: its SETs passed SET_TRACKED_MAX. */
#define WARNED_SET_TRACKED_MAX (1u << (SESSION_FEATURE_LAST + 1))
_Static_assert(SESSION_FEATURE_LAST + 1 < 16, "c->warned is a uint16_t");

/* The text is a Query's whole, or an unnamed Parse's whole (its body is the name's NUL and the
 * text: len covers the text and what follows it, body_len one byte more). A named statement's
 * text runs at each Bind, in later requests, which sluice does not follow; a text that streams
 * is not all seen. */
static bool runs_now_whole(uint8_t type, size_t len, uint32_t body_len)
{
    return type == 'Q' ? len == body_len : type == 'P' && len + 1 == body_len;
}

/* A named Parse's text seen whole (sql: the text, its NUL, the parameter types, len bytes in
 * all; a text that streams is seen in part). Its SET runs at each Bind and SQL EXECUTE of the
 * name, where session_effects_run_statement follows it. */
static bool named_parse_whole(const char *sql, size_t len)
{
    const char *nul = memchr(sql, '\0', len);
    if (!nul)
        return false;
    size_t rest = len - (size_t)(nul - sql) - 1;
    if (rest < 2)
        return false;
    size_t types = ((size_t)(uint8_t)nul[1] << 8) | (uint8_t)nul[2];
    return rest == 2 + 4 * types;
}

/* The client's SET of parameters Postgres does not report, that sluice follows: read back at
 * the end of the request's transaction (login_reset.h) and given to each server the client
 * gets, so session_state_policy has nothing to say about it (a named statement's is noted at
 * each of its runs instead). Past SET_TRACKED_MAX names the policy decides, as for a SET sluice
 * cannot follow. */
static bool follow_set(struct client *c, struct server *s, uint8_t type, const char *sql,
                       size_t len, uint32_t body_len, const struct param_touch *touch)
{
    if (touch->unnamed || (!touch->all && touch->n == 0))
        return false;
    bool named = !runs_now_whole(type, len, body_len) && type == 'P' && named_parse_whole(sql, len);
    if (!named && !runs_now_whole(type, len, body_len))
        return false;
    if (!login_reset_can_track(s, c, touch)) {
        if (!(c->warned & WARNED_SET_TRACKED_MAX)) {
            c->warned |= WARNED_SET_TRACKED_MAX;
            log_client(LOG_WARNING, c,
                       "SETs more than %d parameters Postgres does not report (application_name "
                       "\"%s\"): sluice follows at most %d per client; each SET of another one "
                       "meets session_state_policy",
                       SET_TRACKED_MAX, params_get(&c->params, "application_name") ?: "",
                       SET_TRACKED_MAX);
        }
        return false;
    }
    if (!named)
        login_reset_note_set(s, c, touch);
    return true;
}

void session_effects_on_lease(const struct client *c, struct server *s)
{
    const char *path = params_get(&c->params, "search_path");
    if (path && sql_names_temp_schema(path, strlen(path)))
        note_temp_objects(s);
}

unsigned session_effects_reading(const struct client *c, const struct server *s, const char *sql,
                                 size_t len)
{
    /* Both readings differ from the standard one only at a backslash in a literal: a trail
     * byte of SJIS, BIG5, GBK, UHC, GB18030 or JOHAB is never a quote (a text with one is not
     * valid in its encoding, and Postgres refuses it whole). Most texts have none, and need no
     * lookup of the parameters. */
    if (!memchr(sql, '\\', len))
        return SQL_READ_STANDARD;
    /* the client's own value, or the pool's (its welcome), which its server has */
    const char *scs = params_get(&c->params, "standard_conforming_strings");
    if (!scs)
        scs = params_get(&s->params, "standard_conforming_strings");
    const char *enc = c->params.client_encoding;
    if (!enc)
        enc = s->params.client_encoding;
    /* the client encodings whose second bytes may be 0x5C */
    unsigned reading = sql_encoding_reading(enc);
    if (scs && strcasecmp(scs, "off") == 0)
        reading |= SQL_READ_PLAIN_ESCAPES;
    return reading;
}

/* SQL whose effect outlives the transaction (see session_state.h): the policy decides, and a
 * server that got such objects is noted for a reset. touch: the parameters it changes. */
enum track_result session_effects_police(struct client *c, struct server *s, uint8_t type,
                                         const char *sql, size_t len, uint32_t body_len,
                                         struct param_touch *touch, struct client_failure *fail)
{
    enum session_feature f =
        session_state_detect(sql, len, touch, session_effects_reading(c, s, sql, len));
    bool followed = follow_set(c, s, type, sql, len, body_len, touch);
    if (f == SESSION_FEATURE_NONE || (f == SESSION_FEATURE_SET && followed))
        return TRACK_PASS;
    enum track_result r = apply_session_policy(c, s, type, f, sql, len, body_len, fail);
    if (r == TRACK_PASS)
        note_session_objects(s, f);
    return r;
}

enum stmt_effect session_effects_of_text(const char *sql, size_t len)
{
    struct param_touch touch;
    enum session_feature f = session_state_detect(sql, len, &touch, SQL_READ_STANDARD);
    return f != SESSION_FEATURE_NONE || touch.all || touch.n > 0 || touch.temp_schema
               ? STMT_EFFECT_SESSION
               : STMT_EFFECT_NONE;
}

void session_effects_run_unread(struct server *s)
{
    s->session = SERVER_SESSION_UNKNOWN;
}

void session_effects_run_statement(struct client *c, struct server *s, const struct stmt_def *def)
{
    /* def->data: the name's NUL, then the text and its NUL (a streamed Parse's too, filled by
     * the time its statement is bound) */
    const char *text = def->len > 1 ? (const char *)def->data + 1 : "";
    size_t len = def->len > 1 ? strnlen(text, def->len - 1) : 0;
    struct param_touch touch;
    enum session_feature f =
        session_state_detect(text, len, &touch, session_effects_reading(c, s, text, len));
    note_session_objects(s, f); /* a LOAD's server too, on whichever server it runs */
    if ((f == SESSION_FEATURE_SET || f == SESSION_FEATURE_NONE) && !touch.unnamed &&
        (touch.all || touch.n > 0) && login_reset_can_track(s, c, &touch)) {
        session_effects_forget_params(s, &touch);
        login_reset_note_set(s, c, &touch);
        /* A DISCARD ALL drops the server's statements too, which sluice's record would not
         * see: the server gets a full reset before it serves again (a RESET ALL as well). */
        if (!touch.all)
            return;
    }
    session_effects_run_unread(s);
}

enum session_feature session_effects_refused_in_error(const uint8_t *msg, uint32_t whole)
{
    struct error_fields ef;
    if (!codec_parse_error(msg + CODEC_HEADER_LEN, whole - CODEC_HEADER_LEN, &ef) || !ef.sqlstate ||
        strcmp(ef.sqlstate, "22P02") != 0 || !ef.message)
        return SESSION_FEATURE_NONE;
    /* The literal is quoted as lc_messages quotes it ("...", »...«): no name starts another. */
    const char *mark = strstr(ef.message, REFUSAL_MARK);
    if (!mark)
        return SESSION_FEATURE_NONE;
    mark += strlen(REFUSAL_MARK);
    for (int f = SESSION_FEATURE_NONE + 1; f <= SESSION_FEATURE_LAST; f++) {
        const char *name = session_feature_name((enum session_feature)f);
        if (strncmp(mark, name, strlen(name)) == 0)
            return (enum session_feature)f;
    }
    return SESSION_FEATURE_NONE;
}

void session_effects_put_refusal(struct client *c, enum session_feature f)
{
    error_build(&c->out, FAIL_SESSION_STATE, session_feature_name(f), NULL);
}
