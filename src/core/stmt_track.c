/* stmt_track: in transaction mode, what each client message request_track.c frames does to the
 * statements sluice keeps for the server: the client's named prepared statements and the server's
 * (prepared.c's maps), prepared again on a server that lacks them, the requests whose replies must
 * be matched (s->reqs), and the client's names turned into the server's (stmt_names.c), in
 * Parse/Bind/Describe/Close and in SQL EXECUTE/DEALLOCATE. Each statement text passes
 * session_effects.c first; counting requests and framing stay request_track.c's. */
#include "stmt_track.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client.h"
#include "pool.h"
#include "server.h"
#include "session_effects.h"
#include "session_state.h"
#include "sluice.h"
#include "sql_lex.h"
#include "query_positions.h"
#include "stmt_names.h"
#include "text_encoding.h"
#include "utf8.h"

/* Record a request whose reply must be matched. A full queue is not out of memory: one message
 * queued more than the STMT_QUEUE_HEADROOM left when it was framed (a client merely far ahead of
 * the replies is not read until they drain the queue: request_track_backlogged). */
static enum track_result queued(int rc, struct client_failure *fail)
{
    if (rc == 0)
        return TRACK_PASS;
    if (rc == -ENOSPC) {
        char detail[32];
        snprintf(detail, sizeof(detail), "%d", STMT_QUEUE_MAX);
        fail_session(fail, FAIL_TOO_MANY_PENDING, detail);
    } else {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
    }
    return TRACK_FAILED;
}

static enum track_result queue_request(struct server *s, enum stmt_req kind, const char *name,
                                       struct client_failure *fail)
{
    return queued(stmt_queue_push(&s->reqs, kind, name), fail);
}

/* The client_encoding the server reads the client's text and names in (NULL: not known): the
 * client's own, or the one its server is given for a client that set none (which s->params
 * may not show yet: another client's, until the server answers sluice's sync). Each set keeps
 * its value at hand (param_set.client_encoding, params_set's): no lookup by name. */
static const char *client_encoding_of(const struct client *c, const struct server *s)
{
    const char *client = c->params.client_encoding;
    if (!client)
        client = pool_session_defaults(c->pool, s)->client_encoding;
    if (!client)
        client = s->params.client_encoding;
    return client;
}

/* How a U&"..." name's escapes read as the client's name (sql_lex.h SQL_READ_ESCAPES_*):
 * Postgres decodes them to characters of the server's encoding, where the client's names,
 * keyed by sluice as the client sent them, arrive converted from its client_encoding. UTF-8
 * for a UTF8 client, and for SQL_ASCII (not converted) on a UTF8 server; LATIN1's bytes for a
 * LATIN1 client (and SQL_ASCII on a LATIN1 server); another client's bytes for a character
 * past ASCII are not known here, and such a name is left to the server. */
static unsigned escapes_reading(const char *client, const struct server *s)
{
    const char *server = params_get(&s->params, "server_encoding");
    if (client && strcasecmp(client, "SQL_ASCII") == 0)
        client = server;
    if (client && (strcasecmp(client, "UTF8") == 0 || strcasecmp(client, "UNICODE") == 0))
        return 0;
    if (client && strcasecmp(client, "LATIN1") == 0)
        return SQL_READ_ESCAPES_LATIN1;
    return SQL_READ_ESCAPES_ASCII;
}

/* How an unquoted SQL name in the client's text reads (prepared_classify_query_at): in SJIS,
 * BIG5, GBK and the like a character's second byte may be an ASCII letter, which Postgres,
 * reading the name once converted to the server's encoding, neither folds nor ends the name at. */
static unsigned names_reading(const struct client *c, const struct server *s)
{
    const char *client = client_encoding_of(c, s);
    return sql_encoding_reading(client) | escapes_reading(client, s);
}

/* Nothing the client sent is unanswered: the ParameterStatus of any change of client_encoding
 * has come (Postgres sends it before the ReadyForQuery, protocol 55.2.7). */
static bool all_answered(const struct server *s)
{
    return s->inflight == 0 && !s->batch_open && s->reqs.count == 0;
}

/* Once all is answered, the client_encoding of what the client sends next is
 * client_encoding_of again. Outside a transaction block, besides, no SET of it is left to undo,
 * and no portal is left (a transaction's end drops them all) to hold a statement against
 * eviction (stmt_entry.portal_holds). */
static void settle_after_idle(struct server *s)
{
    if (!all_answered(s))
        return;
    s->reqs.encoding_unsettled = false;
    if (s->txn_status != 'I')
        return;
    s->reqs.encoding_set_in_block = false;
    s->portal_drops_count = 0;
    if (s->reqs.portals_hold == 0)
        return;
    for (struct list_node *n = s->stmts.lru.head.next; n != &s->stmts.lru.head; n = n->next)
        container_of(n, struct stmt_entry, lru)->portal_holds = false;
    s->reqs.portals_hold = 0;
}

/* What the client's message may do to client_encoding when the server runs it (enum
 * text_encoding_effect): until that is answered, what the server reads after one that may
 * set it, or undo a SET of it made in the transaction block, is of an encoding sluice does not
 * know. */
static void note_encoding_effect(struct server *s, unsigned effect)
{
    if (effect & TEXT_ENCODING_MAY_SET)
        s->reqs.encoding_unsettled = s->reqs.encoding_set_in_block = true;
    if ((effect & TEXT_ENCODING_MAY_UNDO) && s->reqs.encoding_set_in_block)
        s->reqs.encoding_unsettled = true;
}

/* Code sluice does not read (a FunctionCall, a text longer than the buffer): anything. */
#define ENCODING_EFFECT_ANY (TEXT_ENCODING_MAY_SET | TEXT_ENCODING_MAY_UNDO)

/* Whether sluice can prepare the client's statement `def` again on s: its text goes in the
 * client_encoding the server reads it in now (prepared_put_parse), converted from the one of
 * the client's Parse. A text with a character the client's encoding of the moment lacks (it
 * changed client_encoding since) cannot say what Postgres, which converted it at the Parse,
 * keeps: the client is failed (22P05) before anything of the preparation is sent, rather than
 * given a statement that reads otherwise. */
static enum track_result can_prepare_again(const struct client *c, const struct server *s,
                                           const struct stmt_def *def, const char *name,
                                           struct client_failure *fail)
{
    const char *now = client_encoding_of(c, s);
    int rc = prepared_parse_readable(def, now);
    if (rc == 0)
        return TRACK_PASS;
    if (rc == -ENOMEM) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    const char *client_name = stmt_map_name_of(c->stmts, name);
    char detail[sizeof(fail->detail)];
    snprintf(detail, sizeof(detail), "\"%.63s\" was sent in %.23s; the session now uses %.23s",
             client_name ? client_name : name, def->encoding, now ? now : "another");
    fail_session(fail, FAIL_STATEMENT_UNTRANSLATABLE, detail);
    return TRACK_FAILED;
}

/* sluice's Parse of def under name, in the client_encoding the server reads it in
 * (can_prepare_again said it can be). */
static void put_parse(const struct client *c, struct server *s, const char *name,
                      const struct stmt_def *def)
{
    if (prepared_put_parse(&s->out, name, def, client_encoding_of(c, s)) < 0)
        s->close_when_free = true; /* out of memory since the check: what follows is unknown */
}

/* The statement an eviction closes to make room on s: the least recently used, but for `keep`
 * (the one being prepared) and the one the server's unnamed statement EXECUTEs
 * (note_unnamed_executes), which Postgres looks up again at the Execute of a portal bound from
 * it: closed between that Bind and Execute, the Execute would fail (26000), so the server may
 * hold one more than max_prepared_statements meanwhile. NULL: none but those. */
static struct stmt_entry *eviction_victim(struct server *s, const char *keep)
{
    const char *held = s->unnamed_executes[0] ? s->unnamed_executes_as : "";
    for (struct list_node *n = s->stmts.lru.head.prev; n != &s->stmts.lru.head; n = n->prev) {
        struct stmt_entry *e = container_of(n, struct stmt_entry, lru);
        if (strcmp(e->name, keep) != 0 && strcmp(e->name, held) != 0 && !e->portal_holds &&
            !e->query_holds)
            return e;
    }
    return NULL;
}

/* Make room for one more statement on the server, closing the least recently used. */
static void evict_for_one_more(struct server *s, const char *keep)
{
    int max = (int)s->pool->worker->cfg->max_prepared_statements;
    struct stmt_entry *lru;
    while (max > 0 && stmt_map_count(&s->stmts) >= max && (lru = eviction_victim(s, keep))) {
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

/* The client's statement `name`; NULL when sluice does not know it (never prepared by Parse, or
 * closed): its name then reaches the server as it is. */
static struct stmt_entry *client_entry(const struct client *c, const char *name)
{
    struct stmt_entry *mine = stmt_map_get(c->stmts, name);
    if (!mine || !mine->def)
        return NULL;
    /* Named last, first in the map: two names for one text are one name on the server, and
     * its errors name the one the client used (stmt_map_name_of takes the first). */
    list_remove(&c->stmts->lru, &mine->lru);
    list_prepend(&c->stmts->lru, &mine->lru);
    return mine;
}

static struct stmt_def *client_def(const struct client *c, const char *name)
{
    struct stmt_entry *mine = client_entry(c, name);
    return mine ? mine->def : NULL;
}

/* ---- result types (prepared.h: struct stmt_entry.shape) ----
 *
 * Postgres fixes a prepared statement's result type at its Parse; once DDL changes it (a
 * column's type, a column added to SELECT *), running or describing the statement fails with
 * 0A000 "cached plan must not change result type", and drivers prepare it again. A server's
 * statement prepared with the client's result type answers as the client's would, that error
 * included. One prepared with another (sluice prepared it again from its text on another
 * backend, or another client's Parse of the same text replaced it) would run with the new type
 * where the client expects the old one: so sluice prepares it again, and when the database's
 * result type is still not the client's, the client gets Postgres's error. */

enum shape_verdict {
    SHAPE_MATCHES,   /* the server's statement answers as the client's would */
    SHAPE_AWAITED,   /* the server's shape is on its way */
    SHAPE_DIFFERS,   /* prepare it again, and compare what the database gives now */
    SHAPE_CHANGED,   /* prepared again just now, and still not the client's: 0A000 */
};

static enum shape_verdict compare_shape(const struct server *s, const struct stmt_entry *theirs,
                                        uint64_t want)
{
    if (theirs->shape == want || theirs->shape == STMT_SHAPE_UNCHECKED)
        return SHAPE_MATCHES;
    if (theirs->shape == STMT_SHAPE_UNKNOWN)
        return stmt_queue_describing(&s->reqs, theirs->name) ? SHAPE_AWAITED : SHAPE_DIFFERS;
    return theirs->fresh_epoch == s->reqs.epoch + 1 ? SHAPE_CHANGED : SHAPE_DIFFERS;
}

/* The client's next message waits for the server's answer to sluice's Describe, which a Flush
 * brings at once (the server holds its replies until a Sync or Flush). */
static enum track_result await_shape(struct client *c, struct server *s)
{
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    codec_begin(&s->out, 'H');
    codec_end(&s->out);
    s->reqs.shape_awaited = true;
    return TRACK_FLUSH;
}

/* sluice's Describe of the statement a client's Parse prepared goes right after that Parse,
 * before anything else the client sent: its answer then comes right after the ParseComplete. */
static enum track_result send_due_describe(struct client *c, struct server *s,
                                           struct client_failure *fail)
{
    if (!s->reqs.describe_due.name)
        return TRACK_PASS;
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    prepared_put_describe(&s->out, s->reqs.describe_due.name);
    return queued(stmt_queue_take_due(&s->reqs), fail);
}

/* What the client's message does with the statement sluice prepares again for it. */
enum stmt_use {
    STMT_RUN,      /* Bind, EXECUTE, a Parse of its name: a failed Parse's error is the message's */
    STMT_DESCRIBE, /* Describe: Postgres sends the statement's parameter types before it
                    * revalidates it, so a failed Parse's error comes after them
                    * (stmt_queue_push_parse_for_describe) */
};

/* The client uses its statement `mine`, of result type `want` (STMT_SHAPE_UNKNOWN: not to be
 * compared): make sure the server has it, under `name` (stmt_names.h). *changed: the database's
 * result type is no longer the client's (the caller refuses the use). */
static enum track_result ensure_prepared(struct client *c, struct server *s, struct stmt_def *mine,
                                         uint64_t want, const char *name, enum stmt_use use,
                                         bool *changed, struct client_failure *fail)
{
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    /* After an error the server skips what follows up to the Sync: nothing to wait for. */
    bool compare = want > STMT_SHAPE_UNCHECKED && !s->reqs.batch_failed;
    *changed = false;
    if (theirs && stmt_def_equal(theirs->def, mine)) {
        switch (compare ? compare_shape(s, theirs, want) : SHAPE_MATCHES) {
        case SHAPE_MATCHES:
            list_remove(&s->stmts.lru, &theirs->lru);
            list_prepend(&s->stmts.lru, &theirs->lru);
            return TRACK_PASS;
        case SHAPE_AWAITED:
            return await_shape(c, s);
        case SHAPE_CHANGED:
            *changed = true;
            return TRACK_PASS;
        case SHAPE_DIFFERS:
            break;
        }
    }
    if (can_prepare_again(c, s, mine, name, fail) != TRACK_PASS)
        return TRACK_FAILED;
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    free_name_on_server(s, name, theirs != NULL);
    /* A mark first: the replies between its answer and the Parse's are the Parse's own (a
     * Describe's failure, a NOTICE the client had at its own Parse: stmt_queue_notice_is_ours) */
    prepared_put_mark(&s->out);
    if (queue_request(s, REQ_CLOSE_OURS, NULL, fail) != TRACK_PASS)
        return TRACK_FAILED;
    put_parse(c, s, name, mine);
    if (queued(use == STMT_DESCRIBE ? stmt_queue_push_parse_for_describe(&s->reqs, name, mine)
                                    : stmt_queue_push_fenced_parse(&s->reqs, name),
               fail) != TRACK_PASS)
        return TRACK_FAILED;
    theirs = stmt_map_put(&s->stmts, name, mine);
    if (!theirs) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    prepared_put_describe(&s->out, name);
    if (queued(stmt_queue_push_describe(&s->reqs, name, NULL, mine), fail) != TRACK_PASS)
        return TRACK_FAILED;
    if (!compare)
        return TRACK_PASS;
    theirs->fresh_epoch = s->reqs.epoch + 1;
    return await_shape(c, s);
}

/* What a Describe of the client's statement (its entry) needs on the server. Postgres sends the
 * parameter types fixed at the statement's Parse, then revalidates it for its RowDescription,
 * or sends NoData for one that returns no rows without looking at its text again: described
 * even when that text no longer prepares (its table dropped since). So a server that lacks
 * such a statement gets the typed stand-in (stmt_def_stand_in_typed), whose Describe answers
 * the same; its next Bind or EXECUTE prepares the client's text. Any other is prepared again,
 * and when that fails the client gets the types before the error (STMT_DESCRIBE). */
static enum track_result ensure_described(struct client *c, struct server *s,
                                          struct stmt_entry *entry, const char *name, bool *changed,
                                          struct client_failure *fail)
{
    struct stmt_def *mine = entry->def;
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    bool stand_in_answers = mine->result == STMT_RESULT_NONE && mine->params &&
                            !(theirs && stmt_def_equal(theirs->def, mine));
    /* In a failed transaction the server refuses a Parse of any text but the empty one and a
     * transaction's end (25P02), and Postgres refuses the Describe of a statement that returns
     * rows before it sends the types: the client's text prepared again gets that refusal, as on
     * Postgres. One that returns none Postgres describes there (exec_describe_statement_message
     * refuses only a statement with a result), and so does the server its typed stand-in. */
    if (s->txn_status == 'E' && !stand_in_answers)
        return ensure_prepared(c, s, mine, entry->shape, name, STMT_RUN, changed, fail);
    if (!stand_in_answers)
        return ensure_prepared(c, s, mine, entry->shape, name, STMT_DESCRIBE, changed, fail);
    struct stmt_def *typed = stmt_def_stand_in_typed(mine);
    if (!typed) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    /* Its shape is the client's (NoData, the same types): a stand-in without them differs. */
    enum track_result r =
        ensure_prepared(c, s, typed, entry->shape, name, STMT_DESCRIBE, changed, fail);
    stmt_def_unref(typed);
    return r;
}

/* What a DEALLOCATE or PREPARE of the client's statement, or a Parse of its name, needs on the
 * server: something under the statement's name (the first drops it, the others meet it and get
 * 42P05). Postgres answers each of them whether or not the statement's text would still prepare
 * (its table dropped since, a function or type gone): it keeps the statement it prepared, which
 * fails only when it runs. So a server that lacks the client's statement gets a stand-in of the
 * empty text (stmt_def_stand_in), which prepares wherever the client's message itself would
 * run; the client's text, prepared again, could fail, and the server would skip the message. */
static enum track_result ensure_named(struct client *c, struct server *s, struct stmt_def *mine,
                                      const char *name, struct client_failure *fail)
{
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    bool changed; /* not compared */
    if (theirs && stmt_def_equal(theirs->def, mine))
        return ensure_prepared(c, s, mine, STMT_SHAPE_UNKNOWN, name, STMT_RUN, &changed, fail);
    struct stmt_def *stand_in = stmt_def_stand_in();
    if (!stand_in) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    enum track_result r =
        ensure_prepared(c, s, stand_in, STMT_SHAPE_UNKNOWN, name, STMT_RUN, &changed, fail);
    stmt_def_unref(stand_in);
    return r;
}

/* A use of the client's statement whose result type the database no longer gives goes to the
 * server under `changed` (STMT_CHANGED_NAME), which the server must refuse (26000, made the
 * client's 0A000 by relay.c once stmt_queue_poison counted it): a statement the client itself
 * PREPAREd by SQL under that name is closed first. */
static enum track_result free_changed_name(struct client *c, struct server *s,
                                           const struct stmt_server_name *changed)
{
    if (!stmt_map_get(&s->sql_prepared, changed->name))
        return TRACK_PASS;
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    free_name_on_server(s, changed->name, true);
    stmt_map_remove(&s->sql_prepared, changed->name);
    return TRACK_PASS;
}

/* sluice's Parse before the client's Query failed (HELD_PARSE_FAILED), and the Query is
 * answered with its error alone (see prepare_held_query for when): the server skips
 * everything up to a Sync, where Postgres, running the Query's EXECUTE itself, answers the
 * same error (held until now, or forwarded already when there was no memory to hold it) and
 * the Query's ReadyForQuery, then runs what the client sent after it. sluice's Sync goes in the
 * Query's place, its ReadyForQuery the Query's (in the state Postgres's would give: the failed
 * implicit transaction rolled back, or a failed block), and the Query is consumed: what follows
 * starts a batch of its own, as after the Query's error in Postgres. A Query longer than the
 * buffer (EXECUTE name('<a long literal>')) is consumed as it comes: its rest is dropped as the
 * client sends it (c->rx.discard, request_track.c). */
static enum track_result answer_query_after_failed_parse(struct client *c, struct server *s,
                                                         struct client_failure *fail)
{
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    if (queue_request(s, REQ_SYNC, NULL, fail) != TRACK_PASS)
        return TRACK_FAILED;
    const uint8_t *held;
    uint32_t held_len;
    if (stmt_queue_held_parse_error(&s->reqs, &held, &held_len))
        codec_put_bytes(&c->out, held, held_len); /* the Query's answer: that error */
    stmt_queue_forget_failed_parse(&s->reqs);
    s->reqs.held_query = HELD_NONE;
    uint32_t whole = codec_get_u32(c->in.data + c->in.scan + 1) + 1;
    uint32_t here = c->in.wpos - c->in.scan < whole ? c->in.wpos - c->in.scan : whole;
    c->in.scan += here;
    buf_consume(&c->in, here);
    c->rx.remain = whole - here;
    c->rx.discard = c->rx.remain > 0;
    c->rx.drops_watch = false; /* the rest does not run */
    codec_begin(&s->out, 'S');
    codec_end(&s->out);
    stmt_queue_sync_framed(&s->reqs);
    if (s->inflight++ == 0) {
        s->query_start_ms = sluice_now(c->worker);
        if (s->txn_status == 'I')
            s->xact_start_ms = s->query_start_ms;
    }
    s->batch_open = false;
    s->executes_after_request = 0;
    s->reqs.epoch++;
    s->unnamed_of = 0; /* the Query would have dropped the unnamed statement */
    return TRACK_CONSUMED;
}

/* The whole of the client's Query being framed is in its buffer. */
static bool query_in_buffer(const struct client *c)
{
    uint32_t whole = codec_get_u32(c->in.data + c->in.scan + 1) + 1;
    return c->in.wpos - c->in.scan >= whole;
}

/* sluice's Parse before the client's Query failed, its error held (HELD_PARSE_FAILED): the
 * server skips everything up to a Sync, where Postgres, running the Query itself, would run the
 * statements before that EXECUTE, whose effects may outlive the error (a DEALLOCATE, a BEGIN
 * that leaves the block failed, rows sent), and fail at it. sluice's Sync ends the skipping
 * (its ReadyForQuery swallowed: relay.c), and the Query follows with that EXECUTE naming
 * STMT_CHANGED_NAME (poisoned): the server runs what comes before it and refuses it (26000),
 * which the client gets as the Parse's error (stmt_queue_refusal_error). Any other statement
 * of the Query is sent as it is: those before it were prepared by the same round trip, those
 * after it do not run. */
static enum track_result run_query_after_failed_parse(struct client *c, struct server *s,
                                                      const char *name, bool *changed,
                                                      struct client_failure *fail)
{
    if (s->reqs.held_query == HELD_PARSE_FAILED) {
        if (buf_pending(&c->in) > 0)
            return TRACK_FLUSH;
        if (queued(stmt_queue_push_failed_parse_sync(&s->reqs), fail) != TRACK_PASS)
            return TRACK_FAILED;
        codec_begin(&s->out, 'S');
        codec_end(&s->out);
        stmt_queue_sync_framed(&s->reqs);
        s->batch_open = false;
        s->executes_after_request = 0;
        s->reqs.epoch++;
        s->unnamed_of = 0; /* the Query would have dropped the unnamed statement */
    }
    *changed = stmt_queue_parse_failed_for(&s->reqs, name);
    return TRACK_PASS;
}

/* sluice's Parse of the statement a Query names, with no Sync of its own (inside an extended
 * batch one would end the client's batch, and behind requests in flight its ReadyForQuery would
 * come among the client's). The Query waits for its outcome (held, as for a result type:
 * shape_awaited; one longer than the buffer with its head there, the client not read
 * meanwhile): a Close of STMT_MARK_NAME before it (its reply tells an earlier error from the
 * Parse's own: stmt_on_error), the Parse and a Describe, both holds_query. The caller sends one
 * Flush after the Parses of all the statements the Query needs (await_held_query), which brings
 * their answers at once: one round trip, however many. When one failed, the server skipped
 * those after it (not prepared: stmt_on_ready), and run_query_after_failed_parse (or
 * answer_query_after_failed_parse).
 * An EXECUTE's statement (want: the client's result type, STMT_SHAPE_UNKNOWN: not compared) is
 * compared as a Bind's is (compare_shape): one the server holds with another result type is
 * prepared again, and the Query, looked at again, finds it fresh; still not the client's, the
 * database's result type changed (*changed: the caller names STMT_CHANGED_NAME instead). */
static enum track_result prepare_held_query(struct client *c, struct server *s,
                                            struct stmt_def *mine, uint64_t want, const char *name,
                                            bool *changed, struct client_failure *fail)
{
    *changed = false;
    /* Its error forwarded (no memory to hold it), or the Parse failed the transaction block
     * the Query runs in (or the client's batch it joins), where nothing of the Query runs
     * after the error: the Query is answered with the error alone. So is a Query longer than
     * the buffer, whose first statement alone is looked at (follow_statement): the failed
     * one, before which nothing runs. */
    if (s->reqs.held_query == HELD_PARSE_FAILED &&
        (!s->reqs.failed_parse_error || s->txn_status != 'I' || s->batch_open ||
         !query_in_buffer(c)))
        return answer_query_after_failed_parse(c, s, fail);
    if (s->reqs.held_query == HELD_PARSE_FAILED || s->reqs.held_query == HELD_PARSE_SYNCED)
        return run_query_after_failed_parse(c, s, name, changed, fail);
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    /* After an error the server skips what follows up to the Sync: nothing to wait for. */
    bool compare = want > STMT_SHAPE_UNCHECKED && !s->reqs.batch_failed;
    if (theirs && stmt_def_equal(theirs->def, mine)) { /* prepared, or its Parse on its way */
        bool unused;
        switch (compare ? compare_shape(s, theirs, want) : SHAPE_MATCHES) {
        case SHAPE_MATCHES:
            return ensure_prepared(c, s, mine, STMT_SHAPE_UNKNOWN, name, STMT_RUN, &unused, fail);
        case SHAPE_AWAITED: /* a held Query is looked at again once it is answered */
            return s->reqs.held_query == HELD_FOR_PARSE ? TRACK_PASS : await_shape(c, s);
        case SHAPE_CHANGED:
            *changed = true;
            return TRACK_PASS;
        case SHAPE_DIFFERS:
            break;
        }
    }
    if (can_prepare_again(c, s, mine, name, fail) != TRACK_PASS)
        return TRACK_FAILED;
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    prepared_put_mark(&s->out);
    if (queue_request(s, REQ_CLOSE_OURS, NULL, fail) != TRACK_PASS)
        return TRACK_FAILED;
    free_name_on_server(s, name, theirs != NULL);
    put_parse(c, s, name, mine);
    if (queued(stmt_queue_push_fenced_parse(&s->reqs, name), fail) != TRACK_PASS)
        return TRACK_FAILED;
    stmt_queue_last_holds_query(&s->reqs);
    theirs = stmt_map_put(&s->stmts, name, mine);
    if (!theirs) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    if (compare)
        theirs->fresh_epoch = s->reqs.epoch + 1; /* the Query is framed in this batch */
    prepared_put_describe(&s->out, name);
    if (queued(stmt_queue_push_describe(&s->reqs, name, NULL, mine), fail) != TRACK_PASS)
        return TRACK_FAILED;
    stmt_queue_last_holds_query(&s->reqs);
    s->reqs.held_query = HELD_FOR_PARSE;
    return TRACK_PASS;
}

/* The Query waits for the Parses prepare_held_query sent for it, if any: one Flush for all. */
static enum track_result await_held_query(struct client *c, struct server *s, enum track_result r)
{
    if (r == TRACK_PASS && s->reqs.held_query == HELD_FOR_PARSE)
        return await_shape(c, s);
    return r;
}

/* The same before a simple Query that names the client's statement by SQL (EXECUTE,
 * DEALLOCATE, PREPARE). A Parse that fails (its table dropped since) makes the server skip
 * everything up to the next Sync, and a Query has none. So an EXECUTE, whatever its length, and
 * any such Query inside a batch or behind requests in flight, waits for the Parse's outcome
 * (prepare_held_query) and gets its error as Postgres's EXECUTE would. Otherwise (the stand-in
 * of a DEALLOCATE or PREPARE, which prepares anywhere, on a server with nothing of the client's
 * in flight) sluice's Parse comes with its own Sync, in a batch of its own whose replies are
 * swallowed (s->swallow), and the Query does not wait; what the server then holds under the
 * name is unknown to sluice: its next use closes and prepares it again. */
static enum track_result prepare_for_query(struct client *c, struct server *s, struct stmt_def *def,
                                           uint64_t want, const char *name, enum sql_dealloc kind,
                                           bool *changed, struct client_failure *fail)
{
    *changed = false;
    if (s->inflight > 0 || s->batch_open || s->reqs.count > 0 || kind == SQL_EXECUTE)
        return prepare_held_query(c, s, def, want, name, changed, fail);
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    if (theirs && stmt_def_equal(theirs->def, def))
        return TRACK_PASS;
    if (can_prepare_again(c, s, def, name, fail) != TRACK_PASS)
        return TRACK_FAILED;
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    int max = (int)c->worker->cfg->max_prepared_statements;
    struct stmt_entry *lru;
    while (!theirs && stmt_map_count(&s->stmts) >= max && (lru = eviction_victim(s, name))) {
        prepared_put_close(&s->out, lru->name);
        stmt_map_remove(&s->stmts, lru->name);
    }
    if (theirs)
        prepared_put_close(&s->out, name);
    put_parse(c, s, name, def);
    codec_begin(&s->out, 'S');
    codec_end(&s->out);
    s->swallow++;
    if (!stmt_map_put(&s->stmts, name, NULL))
        s->close_when_free = true; /* out of memory: what the server holds is not known */
    return TRACK_PASS;
}

/* A DEALLOCATE or PREPARE by SQL of the client's statement needs only something under its name
 * (ensure_named): a server that lacks the statement gets the stand-in. An EXECUTE gets the
 * client's own text. */
static enum track_result prepare_before_query(struct client *c, struct server *s,
                                              const struct stmt_entry *entry, const char *name,
                                              enum sql_dealloc kind, bool *changed,
                                              struct client_failure *fail)
{
    struct stmt_def *mine = entry->def;
    *changed = false;
    if (kind == SQL_EXECUTE)
        return prepare_for_query(c, s, mine, entry->shape, name, kind, changed, fail);
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, name);
    if (s->reqs.held_query != HELD_PARSE_FAILED && s->reqs.held_query != HELD_PARSE_SYNCED &&
        theirs && stmt_def_equal(theirs->def, mine))
        return TRACK_PASS;
    struct stmt_def *stand_in = stmt_def_stand_in();
    if (!stand_in) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    enum track_result r =
        prepare_for_query(c, s, stand_in, STMT_SHAPE_UNKNOWN, name, kind, changed, fail);
    stmt_def_unref(stand_in);
    /* Only an EXECUTE of a statement whose held Parse failed is poisoned: a DEALLOCATE of it
     * runs as on Postgres (the stand-in is not compared: nothing else sets it). */
    *changed = false;
    return r;
}

/* ---- the server's names in the client's messages (stmt_names.h) ---- */

static enum track_result renamed(enum stmt_rewrite w)
{
    return w == STMT_START_SENT ? TRACK_STARTED : TRACK_PASS;
}

static enum track_result room_to_rename(const struct client *c, uint32_t old_len, uint32_t new_len)
{
    return stmt_names_can_rewrite(&c->in, old_len, new_len) ? TRACK_PASS : TRACK_FLUSH;
}

static enum track_result room_for_statement(const struct client *c,
                                            const struct stmt_server_name *sn, uint32_t key_len)
{
    return stmt_names_can_rename(&c->in, key_len, sn) ? TRACK_PASS : TRACK_FLUSH;
}

static enum track_result rename_statement(struct client *c, struct server *s, uint32_t at,
                                          uint32_t key_len, const struct stmt_server_name *sn)
{
    return renamed(stmt_names_rename(&c->in, &c->rx, &s->out, at, key_len, sn));
}

/* Where a statement text starts in its message's body, when sluice may rewrite it there (0: a
 * whole Query; 1: a whole unnamed Parse); TEXT_KEPT when it is not to be rewritten. */
#define TEXT_KEPT UINT32_MAX

/* The server may hold something under sluice's name `name` that no record says: whatever it
 * holds there is unknown, and the next use closes and prepares it again. */
static void forget_on_server(struct server *s, const char *name)
{
    if (stmt_map_get(&s->stmts, name))
        (void)stmt_map_put(&s->stmts, name, NULL); /* an existing entry: nothing to allocate */
}

/* What the client's name bytes are to the server (Postgres converts a name to the server's
 * encoding before it keys it): its UTF-8 bytes as they are (client and server both UTF8, or the
 * client SQL_ASCII, whose text the server checks as its own), LATIN1 that becomes UTF-8 (each
 * byte from 0x80 up two bytes), or bytes sluice cuts as they are (any other pair). */
enum name_bytes { NAME_BYTES_AS_SENT, NAME_BYTES_UTF8, NAME_BYTES_LATIN1_TO_UTF8 };

static enum name_bytes name_bytes_of(const struct client *c, const struct server *s)
{
    const char *server = params_get(&s->params, "server_encoding");
    const char *client = client_encoding_of(c, s);
    if (!server || !client || strcmp(server, "UTF8") != 0)
        return NAME_BYTES_AS_SENT;
    if (strcmp(client, "UTF8") == 0 || strcmp(client, "SQL_ASCII") == 0)
        return NAME_BYTES_UTF8;
    return strcmp(client, "LATIN1") == 0 ? NAME_BYTES_LATIN1_TO_UTF8 : NAME_BYTES_AS_SENT;
}

/* A protocol statement name's key, from what stmt_name_key gave (the name's first STMT_KEY_MAX
 * bytes, or all of a shorter one): Postgres converts the name to the server's encoding and keys
 * it by the first STMT_KEY_MAX bytes of that, cut wherever they end (its prepared statements'
 * hash table, keysize NAMEDATALEN). A LATIN1 name on a UTF8 server is cut after the character
 * that holds the STMT_KEY_MAX-th byte of UTF-8 (from 0x80 up each is two; a name that reaches
 * that byte counts as cut, as one of STMT_KEY_MAX bytes as sent does): its key may be
 * shorter than the name although the name is under STMT_KEY_MAX bytes as sent, and two names
 * that differ later are one statement, as on Postgres. (Two whose first difference is that last
 * character are one on Postgres when both are of 0x80-0xBF or both of 0xC0-0xFF, its cut
 * keeping only their first UTF-8 byte; sluice keeps them apart.) Other encodings than those of
 * name_bytes are keyed as sent (docs/pool-modes.md). */
static enum stmt_name_extent protocol_key(const struct client *c, const struct server *s,
                                          char *name)
{
    size_t n = strlen(name);
    if (name_bytes_of(c, s) == NAME_BYTES_LATIN1_TO_UTF8) {
        size_t k = 0, server_bytes = 0;
        while (k < n && server_bytes < STMT_KEY_MAX)
            server_bytes += (uint8_t)name[k++] >= 0x80 ? 2 : 1;
        name[k] = '\0';
        /* as a name of STMT_KEY_MAX bytes as sent: cut whether or not more follows, so that
         * every name of one key goes to the server under one name */
        return server_bytes >= STMT_KEY_MAX ? STMT_NAME_CUT : STMT_NAME_WHOLE;
    }
    return n >= STMT_KEY_MAX ? STMT_NAME_CUT : STMT_NAME_WHOLE;
}

/* A SQL identifier's key: Postgres cuts a long one, in the server's encoding, at its last whole
 * character within STMT_KEY_MAX bytes (truncate_identifier, pg_mbcliplen), where a protocol name
 * is cut at STMT_KEY_MAX bytes. Other encodings than those of name_bytes are cut as sent (see
 * docs/pool-modes.md). */
static void cut_sql_name(const struct client *c, const struct server *s, char *name)
{
    size_t n = 0, server_bytes = 0;
    switch (name_bytes_of(c, s)) {
    case NAME_BYTES_LATIN1_TO_UTF8:
        for (; name[n]; n++) {
            server_bytes += (uint8_t)name[n] >= 0x80 ? 2 : 1;
            if (server_bytes > STMT_KEY_MAX)
                break;
        }
        break;
    case NAME_BYTES_UTF8:
        if (strlen(name) <= STMT_KEY_MAX)
            return;
        n = STMT_KEY_MAX;
        while (n > 0 && ((uint8_t)name[n] & 0xc0) == 0x80)
            n--; /* back to the head of the character the cut falls in */
        break;
    case NAME_BYTES_AS_SENT:
        if (strlen(name) <= STMT_KEY_MAX)
            return;
        n = STMT_KEY_MAX;
        break;
    }
    name[n] = '\0';
}

/* A name of sluice's form (stmt_names_is_servers) that the client holds neither by protocol
 * (mine) nor by SQL on this backend: what the server holds under it is another client's
 * statement, which Postgres would not show this client (with max_prepared_statements = 0
 * nothing is renamed, and the name is the client's own). It is closed first (and prepared again
 * at its own client's next use), so the server answers as Postgres would: 26000 to EXECUTE,
 * DEALLOCATE, Bind or Describe; a PREPARE of the name succeeds. Every other name costs one
 * prefix compare. */
static enum track_result hide_others_statement(struct client *c, struct server *s,
                                               const char *name)
{
    if (!stmt_names_is_servers(name) || stmt_map_get(&s->sql_prepared, name) ||
        c->worker->cfg->max_prepared_statements == 0)
        return TRACK_PASS;
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    free_name_on_server(s, name, true);
    forget_on_server(s, name);
    return TRACK_PASS;
}

/* An unnamed Parse's EXECUTE of the client's statement: Postgres parses it without looking the
 * statement up; its Bind looks it up, and its Execute or a Describe revalidates it (and fails
 * there when its table was dropped since). So sluice prepares the statement at the unnamed
 * statement's Bind or Describe (use_unnamed), where a failed re-prepare's error takes the
 * place of that message's answer, and the Parse (alone, a driver's PQprepare) succeeds as on
 * Postgres, leaving a transaction block as it was. */
static void note_unnamed_executes(struct server *s, const char *name, const char *server_name)
{
    snprintf(s->unnamed_executes, sizeof(s->unnamed_executes), "%s", name);
    snprintf(s->unnamed_executes_as, sizeof(s->unnamed_executes_as), "%s", server_name);
}

/* What the text gets in place of the SQL name that names the client's statement (written:
 * span bytes at src, quotes included; key_len of its written_len name bytes are the key). */
struct sql_name_written {
    char name[STMT_KEY_MAX + 256 + 3];
};

/* sluice's name for it, and, when the name as written is longer than its key, the rest after
 * the key as written: Postgres truncates the identifier to sluice's name (padded to
 * STMT_KEY_MAX bytes) and says so in a NOTICE (42622 "identifier ... will be truncated to
 * ..."), which reaches the client with its own name (stmt_names_put_error), as Postgres gives
 * it for the client's name. A key shorter than STMT_KEY_MAX (a multibyte name cut at a whole
 * character) has a short server name, which no longer identifier truncates to: it goes alone,
 * and the NOTICE is not given (docs/pool-modes.md). */
static void name_with_rest(struct sql_name_written *w, const struct stmt_server_name *sn,
                           const char *src, size_t span, size_t key_len, size_t written_len)
{
    snprintf(w->name, sizeof(w->name), "%s", sn->name);
    if (written_len <= key_len || strlen(sn->name) != STMT_KEY_MAX)
        return;
    if ((src[0] | 0x20) == 'u' && src[1] == '&')
        return; /* a U&"..." name's rest is escapes: it goes alone, without the NOTICE */
    bool quoted = src[0] == '"';
    size_t from = quoted ? 1 : 0, end = quoted ? span - 1 : span;
    if (quoted && (span < 2 || src[span - 1] != '"'))
        return;
    /* past the key's bytes as written (a quote doubled in a quoted name is one byte of it) */
    for (size_t n = 0; n < key_len && from < end; n++)
        from += quoted && src[from] == '"' ? 2 : 1;
    if (from >= end || end - from > 255)
        return;
    snprintf(w->name, sizeof(w->name), "%s%s%.*s%s", quoted ? "\"" : "", sn->name,
             (int)(end - from), src + from, quoted ? "\"" : "");
}

/* An EXECUTE of the client's statement whose result type the database no longer gives (*sn,
 * *w: as for the Bind refuse_changed renames): the server gets STMT_CHANGED_NAME in the
 * statement's place, key: the client's name, its written_len bytes as written at src, span. */
static void name_changed(struct stmt_server_name *sn, struct sql_name_written *w, const char *key,
                         const char *src, size_t span, size_t written_len)
{
    size_t key_len = strlen(key);
    stmt_names_changed(sn, key_len >= STMT_KEY_MAX ? STMT_NAME_CUT : STMT_NAME_WHOLE);
    name_with_rest(w, sn, src, span, key_len, written_len);
}

/* The client's DEALLOCATE, DEALLOCATE ALL or DISCARD ALL is sent to run (a Query, or an Execute
 * of a portal bound from one). Whether it runs is not known here (an error before it skips it,
 * a failed transaction refuses it): the client's statements leave its map now, for what it
 * sends next, and come back unless a CommandComplete says it ran (stmt_on_ready). A DEALLOCATE
 * drops the client's statement only when its text names it by sluice's name (a Query's or
 * unnamed Parse's, renamed); any other name is the backend's own. */
static enum track_result apply_drop(struct client *c, struct server *s, const struct stmt_drop *d,
                                    bool names_current, struct client_failure *fail)
{
    struct stmt_entry *dropped_one;
    struct stmt_map *dropped_all;
    struct stmt_server_name sn;
    switch (d->kind) {
    case SQL_DEALLOCATE:
        /* The server's own SQL statement of that name leaves sql_prepared when it ran
         * (stmt_on_command_complete). */
        forget_on_server(s, d->server_name);
        dropped_one = stmt_map_get(c->stmts, d->name);
        if (dropped_one && dropped_one->def)
            stmt_names_for_server(&sn, dropped_one->def,
                                  strlen(d->name) >= STMT_KEY_MAX ? STMT_NAME_CUT
                                                                  : STMT_NAME_WHOLE);
        /* names_current: the server was made to hold the text's name exactly when the client
         * holds the statement now (target_at_execute), so it is the client's current one */
        if (dropped_one &&
            (!dropped_one->def || (!names_current && strcmp(sn.name, d->server_name) != 0)))
            dropped_one = NULL;
        if ((dropped_one || stmt_map_get(&s->sql_prepared, d->name)) &&
            queued(stmt_queue_push_client_drop(&s->reqs, d->name,
                                               dropped_one ? dropped_one->def : NULL, NULL),
                   fail) != TRACK_PASS)
            return TRACK_FAILED;
        if (!dropped_one)
            return TRACK_PASS;
        /* as a Close (track_close): an error still to come names it as the client does */
        stmt_map_note_departed(c->stmts, d->name, dropped_one->def->server_name);
        stmt_map_remove(c->stmts, d->name);
        return TRACK_PASS;
    case SQL_DEALLOCATE_ALL:
    case SQL_DISCARD_ALL:
        dropped_all = c->stmts;
        c->stmts = NULL;
        if ((dropped_all || stmt_map_count(&s->sql_prepared) > 0) &&
            queued(stmt_queue_push_client_drop(&s->reqs, NULL, NULL, dropped_all), fail) !=
                TRACK_PASS)
            return TRACK_FAILED;
        stmt_map_mark_unknown(&s->stmts);
        return TRACK_PASS;
    default:
        return TRACK_PASS;
    }
}

/* The room in s->reqs that one more of sluice's Parses for a held Query needs: a mark, the
 * Parse, its Describe and a Close or more of what it evicts (a Query may name more statements
 * than one round trip's queue holds: about STMT_QUEUE_MAX / 3; the rest go in the next). */
#define HELD_PARSE_ROOM 8

/* A statement of a Query that names prepared statements, as follow_query reads it. */
struct query_statement {
    struct sql_followed f;           /* f.name: the key (cut_sql_name) */
    size_t written_len;              /* the name's bytes as written, before the cut */
    bool mine;                       /* it names the client's statement, as of its turn */
    struct stmt_server_name sn;      /* then: the server's name for it */
    struct sql_name_written written; /* and what the text gets in place of the name */
    bool changed; /* an EXECUTE of it whose result type changed: sn is STMT_CHANGED_NAME */
    /* changed, for sluice's failed Parse of it (HELD_PARSE_SYNCED) */
    bool failed_parse;
};

/* Whether the text given note_positions is the whole Query's. */
enum query_text { QUERY_TEXT_WHOLE, QUERY_TEXT_HEAD };

/* The Query's renamed names, for the positions its errors and notices give
 * (s->reqs.positions_due, queued with its SYNC): each name's place in the client's text and the
 * length of both, in characters of the client's encoding, and the length of the text sent. */

static enum track_result note_positions(const struct client *c, struct server *s, const char *sql,
                                        const struct query_statement *st, size_t n,
                                        enum query_text whole)
{
    struct query_chars qc;
    query_chars_init(&qc, client_encoding_of(c, s));
    size_t counted = 0; /* bytes of sql counted in chars */
    uint32_t chars = 0;
    free(s->reqs.positions_due);
    s->reqs.positions_due = NULL;
    for (size_t k = 0; k < n; k++) {
        if (!st[k].mine)
            continue;
        chars += query_chars_count(&qc, sql + counted, st[k].f.at - counted);
        uint32_t client_len = query_chars_count(&qc, sql + st[k].f.at, st[k].f.span);
        const char *repl = st[k].written.name;
        if (!query_positions_add(&s->reqs.positions_due, chars, client_len,
                                 query_chars_count(&qc, repl, strlen(repl))))
            return TRACK_PASS; /* out of memory: the positions stay the server's, as before */
        chars += client_len;
        counted = st[k].f.at + st[k].f.span;
    }
    /* (the head of a longer Query: its length unknown here, and past any position it gives) */
    if (whole == QUERY_TEXT_WHOLE) {
        const struct query_positions *qp = s->reqs.positions_due;
        uint32_t sent = chars + query_chars_count(&qc, sql + counted, strlen(sql + counted));
        for (uint32_t k = 0; qp && k < qp->n; k++)
            sent += qp->edits[k].server_len - qp->edits[k].client_len;
        query_positions_bound(s->reqs.positions_due, sent);
    }
    return TRACK_PASS;
}

/* What a statement the server will run does to state sluice keeps for it: the unreported
 * parameters it may change become unknown in the server's record, and DEALLOCATE / DISCARD ALL
 * change which statements are prepared. A DEALLOCATE or EXECUTE of the client's own statement
 * names it as the client does; the server knows it by sluice's name, which the text gets in its
 * place (text_at: see TEXT_KEPT), after sluice prepared it there if this server lacks it. The
 * text of a Parse (one statement), or the head of a Query longer than the buffer (its first);
 * a whole Query's statements are follow_query's. */
static enum track_result follow_statement(struct client *c, struct server *s, const char *sql,
                                          size_t len, uint32_t text_at,
                                          const struct param_touch *touch,
                                          struct client_failure *fail)
{
    if (!memchr(sql, '\0', len))
        return TRACK_PASS; /* not a C string: not a statement the server will run either */
    char name_buf[256];
    size_t at, span;
    enum sql_dealloc kind = prepared_classify_query_at(sql, names_reading(c, s), name_buf,
                                                       sizeof(name_buf), &at, &span);
    size_t written_len = strlen(name_buf);
    cut_sql_name(c, s, name_buf); /* the statement's key */
    struct stmt_def *mine = NULL;
    struct stmt_server_name sn;
    struct sql_name_written written;
    bool changed = false; /* its result type: then named STMT_CHANGED_NAME */
    /* so named for sluice's failed Parse of it instead (HELD_PARSE_SYNCED) */
    bool failed_parse = false;
    bool names_one = kind == SQL_DEALLOCATE || kind == SQL_EXECUTE || kind == SQL_PREPARE;
    if (names_one && span > 0 && text_at != TEXT_KEPT)
        mine = client_def(c, name_buf);
    if (mine) {
        stmt_names_for_server(&sn, mine,
                              strlen(name_buf) >= STMT_KEY_MAX ? STMT_NAME_CUT : STMT_NAME_WHOLE);
        name_with_rest(&written, &sn, sql + at, span, strlen(name_buf), written_len);
        enum track_result r = room_to_rename(c, (uint32_t)span, (uint32_t)strlen(written.name));
        /* In a failed transaction the server refuses the statement whatever it names (25P02),
         * and would refuse sluice's Parse as well: nothing is prepared for it then. */
        if (r == TRACK_PASS && s->txn_status != 'E' && text_at == 1 && kind == SQL_EXECUTE)
            note_unnamed_executes(s, name_buf, sn.name);
        else if (r == TRACK_PASS && s->txn_status != 'E' && text_at == 0)
            r = await_held_query(c, s,
                                 prepare_before_query(c, s, client_entry(c, name_buf), sn.name,
                                                      kind, &changed, fail));
        else if (r == TRACK_PASS && s->txn_status != 'E')
            r = ensure_named(c, s, mine, sn.name, fail);
        failed_parse = changed && stmt_queue_parse_failed_for(&s->reqs, sn.name);
        if (r == TRACK_PASS && changed) {
            name_changed(&sn, &written, name_buf, sql + at, span, written_len);
            r = room_to_rename(c, (uint32_t)span, (uint32_t)strlen(written.name));
            if (r == TRACK_PASS)
                r = free_changed_name(c, s, &sn);
        }
        if (r != TRACK_PASS)
            return r;
    } else if (names_one && span > 0 && text_at != TEXT_KEPT) {
        enum track_result r = hide_others_statement(c, s, name_buf);
        if (r != TRACK_PASS)
            return r;
    }
    session_effects_forget_params(s, touch);
    if (kind == SQL_EXECUTE && mine && mine->effect == STMT_EFFECT_SESSION)
        session_effects_run_statement(c, s, mine);
    struct stmt_drop drop = {.kind = kind};
    switch (kind) {
    case SQL_PREPARE:
        /* A name the client holds by Parse went out as sluice's, which the server holds: it
         * refuses the PREPARE (42P05) as Postgres would. Any other is the backend's own. */
        if (!mine && name_buf[0]) {
            if (!stmt_map_put(&s->sql_prepared, name_buf, NULL))
                s->close_when_free = true; /* out of memory: a Parse of it would not collide */
            s->session = SERVER_SESSION_UNKNOWN; /* its full reset empties sql_prepared */
        }
        break;
    case SQL_DEALLOCATE:
    case SQL_DEALLOCATE_ALL:
    case SQL_DISCARD_ALL:
        snprintf(drop.name, sizeof(drop.name), "%.63s", name_buf);
        snprintf(drop.server_name, sizeof(drop.server_name), "%.63s", mine ? sn.name : name_buf);
        /* A Query runs it now; an unnamed Parse's text runs at each Execute of a portal bound
         * from it (note_portal_drop); a named Parse's is its definition's (stmt_def.drops). */
        if (text_at == 0 && apply_drop(c, s, &drop, false, fail) != TRACK_PASS)
            return TRACK_FAILED;
        if (text_at == 1)
            s->unnamed_drop = drop;
        break;
    default:
        break;
    }
    if (!mine)
        return TRACK_PASS;
    if (text_at == 0) {
        struct query_statement one = {
            .f = {.kind = kind, .at = at, .span = span}, .mine = true, .written = written};
        (void)note_positions(c, s, sql, &one, 1, QUERY_TEXT_HEAD);
    }
    if (failed_parse)
        stmt_queue_poison_failed_parse(&s->reqs);
    else if (changed)
        stmt_queue_poison(&s->reqs, NULL);
    return renamed(stmt_names_rewrite(&c->in, &c->rx, &s->out, text_at + (uint32_t)at,
                                      (uint32_t)span, written.name));
}

static bool names_one(const struct sql_followed *f)
{
    return (f->kind == SQL_DEALLOCATE || f->kind == SQL_EXECUTE || f->kind == SQL_PREPARE) &&
           f->span > 0;
}

/* The Query's statements that name prepared statements, in the order Postgres runs them
 * (*n of them, malloc'd; NULL and 0: none, or out of memory: *oom). Which name the client's
 * statement at each one's turn follows from those before it: a DEALLOCATE of the name, a
 * DEALLOCATE ALL or DISCARD ALL, leaves the name the backend's own after it (26000, or what a
 * PREPARE after it makes). */
static struct query_statement *query_statements(struct client *c, const struct server *s,
                                                const char *sql, size_t len, size_t *n, bool *oom)
{
    struct query_statement *st = NULL;
    size_t cap = 0, pos = 0;
    unsigned reading = session_effects_reading(c, s, sql, len) | names_reading(c, s);
    struct stmt_map dropped; /* the names a DEALLOCATE before drops */
    stmt_map_init(&dropped);
    bool all_dropped = false;
    struct sql_followed f;
    *n = 0;
    *oom = false;
    while (prepared_next_followed(sql, len, reading, &pos, &f)) {
        if (*n == cap) {
            size_t more = cap ? cap * 2 : 4;
            struct query_statement *grown = realloc(st, more * sizeof(*st));
            if (!grown) {
                *oom = true;
                break;
            }
            st = grown;
            cap = more;
        }
        struct query_statement *q = &st[(*n)++];
        q->f = f;
        q->changed = false;
        q->failed_parse = false;
        q->written_len = strlen(f.name);
        cut_sql_name(c, s, q->f.name);
        const char *name = q->f.name;
        struct stmt_def *mine = names_one(&f) && !all_dropped && !stmt_map_get(&dropped, name)
                                    ? client_def(c, name)
                                    : NULL;
        q->mine = mine != NULL;
        if (mine) {
            stmt_names_for_server(&q->sn, mine,
                                  strlen(name) >= STMT_KEY_MAX ? STMT_NAME_CUT : STMT_NAME_WHOLE);
            name_with_rest(&q->written, &q->sn, sql + f.at, f.span, strlen(name), q->written_len);
        }
        if (f.kind == SQL_DEALLOCATE && name[0] && !stmt_map_put(&dropped, name, NULL))
            *oom = true;
        all_dropped |= f.kind == SQL_DEALLOCATE_ALL || f.kind == SQL_DISCARD_ALL;
        if (*oom)
            break;
    }
    stmt_map_free(&dropped);
    if (*oom) {
        free(st);
        st = NULL;
        *n = 0;
    }
    return st;
}

/* The Query's text from its first renamed name to the end of its last (*from, *old_len), with
 * sluice's names in place of the client's (malloc'd; NULL when out of memory). */
static char *query_renamed(const char *sql, const struct query_statement *st, size_t n,
                           size_t *from, size_t *old_len)
{
    size_t first = n, last = 0, grow = 0;
    for (size_t k = 0; k < n; k++) {
        if (!st[k].mine)
            continue;
        first = first < n ? first : k;
        last = k;
        grow += strlen(st[k].written.name);
    }
    *from = st[first].f.at;
    *old_len = st[last].f.at + st[last].f.span - *from;
    char *repl = malloc(*old_len + grow + 1), *w = repl;
    if (!repl)
        return NULL;
    size_t copied = *from;
    for (size_t k = first; k <= last; k++) {
        if (!st[k].mine)
            continue;
        memcpy(w, sql + copied, st[k].f.at - copied);
        w += st[k].f.at - copied;
        size_t nl = strlen(st[k].written.name);
        memcpy(w, st[k].written.name, nl);
        w += nl;
        copied = st[k].f.at + st[k].f.span;
    }
    *w = '\0';
    return repl;
}

/* What the Query's statements the server will run do, in their order (follow_statement's work
 * for each; a Query holds several). First, while the client's statements are as they were,
 * each statement the client's statement is needed for gets it on the server (which may wait
 * for the server's replies: the Query is looked at again then, from its start); then what each
 * drops or prepares by SQL is recorded, in order; then the names are rewritten, in one piece.
 * A Query without the words these statements start with is not split (one pass). */
static enum track_result follow_query(struct client *c, struct server *s, const char *sql,
                                      size_t len, const struct param_touch *touch,
                                      struct client_failure *fail)
{
    if (!memchr(sql, '\0', len) || !prepared_query_may_name(sql, len)) {
        session_effects_forget_params(s, touch);
        return TRACK_PASS;
    }
    size_t n;
    bool oom;
    struct query_statement *st = query_statements(c, s, sql, len, &n, &oom);
    enum track_result r = TRACK_PASS;
    if (oom) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    size_t from = 0, old_len = 0;
    char *repl = NULL;
    bool renames = false;
    for (size_t k = 0; k < n; k++)
        renames |= st[k].mine;
    if (renames) {
        repl = query_renamed(sql, st, n, &from, &old_len);
        r = repl ? room_to_rename(c, (uint32_t)old_len, (uint32_t)strlen(repl)) : TRACK_FAILED;
        if (!repl)
            fail_session(fail, FAIL_OUT_OF_MEMORY, "");
    }
    /* In a failed transaction the server refuses the statement whatever it names (25P02), and
     * would refuse sluice's Parse as well: nothing is prepared for it then. Each statement the
     * server lacks gets sluice's Parse, all in one round trip (prepare_held_query) as far as
     * the queue holds them; the Query is looked at again once they are answered. What
     * one statement needs is not evicted for the next's (query_holds, until the Query is framed
     * or waits: looked at again, it is needed again). */
    for (size_t k = 0; k < n && r == TRACK_PASS; k++) {
        struct query_statement *q = &st[k];
        if (s->reqs.held_query == HELD_FOR_PARSE &&
            STMT_QUEUE_MAX - s->reqs.count < HELD_PARSE_ROOM)
            break; /* the rest in the next round trip */
        if (q->mine && s->txn_status != 'E')
            r = prepare_before_query(c, s, client_entry(c, q->f.name), q->sn.name, q->f.kind,
                                     &q->changed, fail);
        else if (!q->mine && names_one(&q->f))
            r = hide_others_statement(c, s, q->f.name);
        q->failed_parse = q->changed && stmt_queue_parse_failed_for(&s->reqs, q->sn.name);
        struct stmt_entry *held = q->mine ? stmt_map_get(&s->stmts, q->sn.name) : NULL;
        if (held)
            held->query_holds = true;
    }
    for (size_t k = 0; k < n; k++) {
        struct stmt_entry *held = st[k].mine ? stmt_map_get(&s->stmts, st[k].sn.name) : NULL;
        if (held)
            held->query_holds = false;
    }
    if (r == TRACK_PASS && s->reqs.held_query == HELD_FOR_PARSE) {
        free(repl);
        free(st);
        return await_held_query(c, s, r);
    }
    /* The EXECUTEs whose statement's result type changed name STMT_CHANGED_NAME instead (the
     * server's names kept until here: query_holds above), in a text renamed again. */
    bool any_changed = false;
    for (size_t k = 0; k < n && r == TRACK_PASS; k++) {
        struct query_statement *q = &st[k];
        if (!q->changed)
            continue;
        any_changed = true;
        name_changed(&q->sn, &q->written, q->f.name, sql + q->f.at, q->f.span, q->written_len);
        r = free_changed_name(c, s, &q->sn);
    }
    if (r == TRACK_PASS && any_changed) {
        free(repl);
        repl = query_renamed(sql, st, n, &from, &old_len);
        r = repl ? room_to_rename(c, (uint32_t)old_len, (uint32_t)strlen(repl)) : TRACK_FAILED;
        if (!repl)
            fail_session(fail, FAIL_OUT_OF_MEMORY, "");
    }
    if (r == TRACK_PASS)
        session_effects_forget_params(s, touch);
    for (size_t k = 0; k < n && r == TRACK_PASS; k++) {
        const struct query_statement *q = &st[k];
        struct stmt_def *mine = q->mine ? client_def(c, q->f.name) : NULL;
        struct stmt_drop drop = {.kind = q->f.kind};
        switch (q->f.kind) {
        case SQL_EXECUTE:
            if (mine && mine->effect == STMT_EFFECT_SESSION)
                session_effects_run_statement(c, s, mine);
            break;
        case SQL_PREPARE:
            /* as follow_statement's */
            if (!q->mine && q->f.name[0]) {
                if (!stmt_map_put(&s->sql_prepared, q->f.name, NULL))
                    s->close_when_free = true;
                s->session = SERVER_SESSION_UNKNOWN;
            }
            break;
        case SQL_DEALLOCATE:
        case SQL_DEALLOCATE_ALL:
        case SQL_DISCARD_ALL:
            snprintf(drop.name, sizeof(drop.name), "%.63s", q->f.name);
            snprintf(drop.server_name, sizeof(drop.server_name), "%.63s",
                     q->mine ? q->sn.name : q->f.name);
            r = apply_drop(c, s, &drop, false, fail);
            break;
        default:
            break;
        }
    }
    if (r == TRACK_PASS && renames)
        r = note_positions(c, s, sql, st, n, QUERY_TEXT_WHOLE);
    for (size_t k = 0; k < n && r == TRACK_PASS; k++) {
        if (st[k].failed_parse)
            stmt_queue_poison_failed_parse(&s->reqs);
        else if (st[k].changed)
            stmt_queue_poison(&s->reqs, NULL);
    }
    if (r == TRACK_PASS && renames)
        r = renamed(
            stmt_names_rewrite(&c->in, &c->rx, &s->out, (uint32_t)from, (uint32_t)old_len, repl));
    free(repl);
    free(st);
    return r;
}

/* Every statement text sent to the server, by Query or by Parse, is looked at here: SQL whose
 * effect outlives the transaction (see session_state.h), then follow_statement. len covers the
 * text and its NUL (and, for Parse, what follows it); text_at: see TEXT_KEPT. */
static enum track_result inspect_statement(struct client *c, struct server *s, uint8_t type,
                                           const char *sql, size_t len, uint32_t body_len,
                                           uint32_t text_at, struct client_failure *fail)
{
    struct param_touch touch;
    enum track_result r = session_effects_police(c, s, type, sql, len, body_len, &touch, fail);
    if (r != TRACK_PASS)
        return r;
    /* A Parse's text runs at its Bind, which follows: noted now, what follows is as unknown. */
    note_encoding_effect(s, text_encoding_effect_of(sql, len));
    r = text_at == 0 ? follow_query(c, s, sql, len, &touch, fail)
                     : follow_statement(c, s, sql, len, text_at, &touch, fail);
    /* The Query is framed, its refusal due: also when its start went out renamed from s->out
     * (a Query as large as the buffer), or the Queries after it would be taken for it. */
    if ((r == TRACK_PASS || r == TRACK_STARTED) && s->reqs.held_query == HELD_PARSE_SYNCED)
        s->reqs.held_query = HELD_NONE;
    if (r == TRACK_PASS || r == TRACK_STARTED)
        login_reset_note(s, c, &touch.reset);
    return r;
}

/* How much of a Query longer than the buffer is looked at for the statement it names: it is
 * read this far before it is framed (a read may have brought only its first bytes). */
#define QUERY_HEAD_MAX 511

/* A streamed Query's EXECUTE or DEALLOCATE of the client's statement names it first (EXECUTE
 * name('<a literal longer than the buffer>')): its head is followed as a whole Query would be,
 * when the name ends within it. */
static enum track_result follow_query_head(struct client *c, struct server *s, const char *sql,
                                           size_t shown, struct client_failure *fail)
{
    char head[QUERY_HEAD_MAX + 1], name[256];
    size_t n = shown < sizeof(head) - 1 ? shown : sizeof(head) - 1, at, span;
    memcpy(head, sql, n);
    head[n] = '\0';
    enum sql_dealloc kind =
        prepared_classify_query_at(head, names_reading(c, s), name, sizeof(name), &at, &span);
    if ((kind != SQL_EXECUTE && kind != SQL_DEALLOCATE && kind != SQL_PREPARE) || span == 0 ||
        at + span >= n)
        return TRACK_PASS;
    struct param_touch none = {0};
    return follow_statement(c, s, head, n + 1, 0, &none, fail);
}

/* The words of the statements that drop prepared statements (DEALLOCATE [ALL], DISCARD ALL). */
static const char *const drop_words[] = {"deallocate", "discard"};
#define DROP_WORDS_N (sizeof(drop_words) / sizeof(drop_words[0]))

/* A Query larger than the buffer runs statements sluice does not see (all but its head's
 * first): a DEALLOCATE ALL among them drops every statement of the backend's, other clients'
 * too, which the server's record would still say prepared (their next Bind: 26000). Where its
 * text holds DEALLOCATE or DISCARD anywhere, what the server holds becomes unknown: each
 * statement's next use closes and prepares it again. The start is looked at here, the rest as
 * it streams (stmt_track_watch_query_tail). */
static void watch_query_drops(struct client *c, struct server *s, const char *sql, size_t shown)
{
    c->rx.drops_watch = false;
    if (sql_words_in(sql, shown, drop_words, DROP_WORDS_N)) {
        stmt_map_mark_unknown(&s->stmts);
        return;
    }
    size_t keep = shown < sizeof(c->rx.drops_tail) ? shown : sizeof(c->rx.drops_tail);
    memcpy(c->rx.drops_tail, sql + shown - keep, keep);
    c->rx.drops_tail_len = (uint8_t)keep;
    c->rx.drops_watch = true;
}

void stmt_track_watch_query_tail(struct server *s, struct framer *rx, const uint8_t *chunk,
                                 uint32_t n)
{
    if (!rx->drops_watch)
        return;
    /* a word that began in what came before, then the chunk */
    char seam[2 * sizeof(rx->drops_tail)];
    size_t head = n < sizeof(rx->drops_tail) ? n : sizeof(rx->drops_tail);
    memcpy(seam, rx->drops_tail, rx->drops_tail_len);
    memcpy(seam + rx->drops_tail_len, chunk, head);
    if (sql_words_in(seam, rx->drops_tail_len + head, drop_words, DROP_WORDS_N) ||
        sql_words_in((const char *)chunk, n, drop_words, DROP_WORDS_N)) {
        stmt_map_mark_unknown(&s->stmts);
        rx->drops_watch = false;
        return;
    }
    size_t keep = rx->drops_tail_len + head < sizeof(rx->drops_tail) ? rx->drops_tail_len + head
                                                                     : sizeof(rx->drops_tail);
    if (n >= sizeof(rx->drops_tail))
        memcpy(rx->drops_tail, chunk + n - keep, keep);
    else
        memmove(rx->drops_tail, seam + rx->drops_tail_len + head - keep, keep);
    rx->drops_tail_len = (uint8_t)keep;
    rx->drops_watch = rx->remain > 0;
}

/* A statement larger than the buffer streams through: only its start, what the buffer holds now,
 * can be looked at. SET, RESET, LISTEN and the like come first and are seen; a set_config further
 * on is not (one more of session_state's false negatives); a DEALLOCATE or DISCARD anywhere in a
 * Query makes the server's statements unknown (watch_query_drops). */
static enum track_result inspect_statement_start(struct client *c, struct server *s, uint8_t type,
                                                 const char *sql, size_t shown, uint32_t body_len,
                                                 struct client_failure *fail)
{
    struct param_touch touch;
    enum track_result r = session_effects_police(c, s, type, sql, shown, body_len, &touch, fail);
    if (r != TRACK_PASS)
        return r;
    note_encoding_effect(s, ENCODING_EFFECT_ANY); /* its rest is not read */
    session_effects_forget_params(s, &touch);
    login_reset_watch_text(s, c, type, sql, shown); /* and the rest as it streams */
    if (type != 'Q')
        return TRACK_PASS;
    r = follow_query_head(c, s, sql, shown, fail);
    if (r == TRACK_PASS || r == TRACK_STARTED)
        watch_query_drops(c, s, sql, shown);
    return r;
}

/* Fails the client for passing a limit: the detail names the key, `before` and `after` the value.
 * Always false, for keep_within_bounds to return. */
static bool refuse_past_limit(struct client_failure *fail, enum failure reason, const char *before,
                              int64_t limit, const char *after)
{
    char detail[200];
    snprintf(detail, sizeof(detail), "%s%lld%s", before, (long long)limit, after);
    fail_session(fail, reason, detail);
    return false;
}

/* May the client keep `bytes` more of statement text? Both bounds, or the client is failed naming
 * the one it passed. */
static bool keep_within_bounds(struct client *c, uint32_t bytes, struct client_failure *fail)
{
    const struct config *cfg = c->worker->cfg;
    if (stmt_map_count(c->stmts) >= (int)cfg->max_prepared_statements_per_client)
        return refuse_past_limit(fail, FAIL_TOO_MANY_STATEMENTS,
                                 "more than max_prepared_statements_per_client (",
                                 cfg->max_prepared_statements_per_client,
                                 ") named prepared statements");
    uint64_t mine = c->stmts ? c->stmts->text_bytes : 0;
    if (mine + bytes > (uint64_t)cfg->max_prepared_statement_bytes_per_client)
        return refuse_past_limit(fail, FAIL_TOO_MANY_STATEMENTS,
                                 "named prepared statements of more than "
                                 "max_prepared_statement_bytes_per_client (",
                                 cfg->max_prepared_statement_bytes_per_client,
                                 " bytes) for one client");
    if (stmt_client_text_bytes() + bytes > (uint64_t)cfg->max_prepared_statement_bytes)
        return refuse_past_limit(fail, FAIL_OUT_OF_MEMORY,
                                 ": the prepared statements of all clients would pass "
                                 "max_prepared_statement_bytes (",
                                 cfg->max_prepared_statement_bytes, " bytes)");
    return true;
}

/* A named Parse's statement text, which starts after its name (name_len bytes with the NUL; 0 when
 * the NUL is not in the buffer yet: a name this long leaves no text to see). */
static enum track_result inspect_parse_text(struct client *c, struct server *s, const uint8_t *body,
                                            uint32_t len, uint32_t avail_body, uint32_t name_len,
                                            struct client_failure *fail)
{
    if (avail_body >= len)
        return inspect_statement(c, s, 'P', (const char *)body + name_len, len - name_len, len,
                                 TEXT_KEPT, fail);
    if (name_len == 0)
        return TRACK_PASS;
    return inspect_statement_start(c, s, 'P', (const char *)body + name_len, avail_body - name_len,
                                   len, fail);
}

/* Either rest of a request, once the message is looked at: a rename that sent the message's start
 * from s->out (TRACK_STARTED) stands unless the rest fails. */
static enum track_result and_then(enum track_result first, enum track_result then)
{
    return first == TRACK_STARTED && then == TRACK_PASS ? TRACK_STARTED : then;
}

/* A Parse of a name the client has: Postgres refuses it (42P05) and keeps the old statement. The
 * server says so itself once it has something under the name it is given (ensure_named). */
static enum track_result parse_taken_name(struct client *c, struct server *s, struct stmt_def *mine,
                                          uint32_t key_len, enum stmt_name_extent extent,
                                          struct client_failure *fail)
{
    struct stmt_server_name sn;
    stmt_names_for_server(&sn, mine, extent);
    enum track_result r = room_for_statement(c, &sn, key_len);
    if (r == TRACK_PASS) /* the server refuses the Parse whatever it holds under the name */
        r = ensure_named(c, s, mine, sn.name, fail);
    if (r == TRACK_PASS)
        r = queue_request(s, REQ_PARSE_CLIENT, NULL, fail);
    if (r != TRACK_PASS)
        return r;
    return rename_statement(c, s, 0, key_len, &sn);
}

/* Would the server refuse the statement name at p (NUL-terminated, whole in the buffer) as text
 * that is not valid in its encoding (22021)? Postgres checks every name it reads against it,
 * before it looks the name up. Known when names are UTF-8 to both; a name sluice renames never
 * reaches the server, so such a name goes untouched for the server to refuse. */
static bool name_refused_as_text(const struct client *c, const struct server *s, const uint8_t *p)
{
    if (name_bytes_of(c, s) != NAME_BYTES_UTF8)
        return false;
    for (size_t n; *p; p += n)
        if ((n = utf8_seq_len(p)) == 0)
            return true;
    return false;
}

/* A named Parse that goes to the server untouched, not followed: with tracking off, or of a
 * name the client prepared by SQL on this backend (s->sql_prepared), which the backend then
 * refuses (42P05) under the client's own name, as Postgres would. */
static enum track_result parse_untouched(struct client *c, struct server *s, const uint8_t *body,
                                         uint32_t len, uint32_t avail_body, uint32_t name_len,
                                         struct client_failure *fail)
{
    enum track_result r = inspect_parse_text(c, s, body, len, avail_body, name_len, fail);
    if (r != TRACK_PASS)
        return r;
    return queue_request(s, REQ_PARSE_CLIENT, NULL, fail);
}

/* The client_encoding the server will read a named Parse's text in, for its definition
 * (stmt_def.encoding): the client's as of the replies read so far, also behind requests still
 * unanswered (a pipeline) when none of them may change it. One that may (a pipelined SET
 * client_encoding, whose ParameterStatus comes only with its batch's ReadyForQuery) leaves it
 * not known: the definition then equals no other (stmt_def_equal), never one of another
 * encoding. */
static const char *parse_encoding(const struct client *c, const struct server *s)
{
    if (s->reqs.encoding_unsettled)
        return STMT_ENCODING_UNKNOWN;
    return client_encoding_of(c, s);
}

/* A named Parse's text (n bytes, its NUL among them when well formed): the drop it is, when
 * it is one (stmt_def.drops), else SQL_OTHER. */
static enum sql_dealloc drops_of_text(const char *text, size_t n)
{
    char name[256];
    if (!memchr(text, '\0', n))
        return SQL_OTHER;
    enum sql_dealloc kind = prepared_classify_query(text, name, sizeof(name));
    return kind == SQL_DEALLOCATE || kind == SQL_DEALLOCATE_ALL || kind == SQL_DISCARD_ALL
               ? kind
               : SQL_OTHER;
}

/* What the client's statement `name` ("": the unnamed) drops when it runs. The unnamed one's
 * text was followed at its Parse (follow_statement: renamed there). A named one's text is
 * kept as written: its DEALLOCATE of a statement the client holds by protocol names sluice's
 * name for it once its Bind is renamed (bind_deallocate_renamed); any other name is the
 * backend's own. */
static void drop_of_statement(const struct client *c, const struct server *s, const char *name,
                              const struct stmt_def *def, struct stmt_drop *d)
{
    d->kind = SQL_OTHER;
    if (!name[0]) {
        if (s->unnamed_of == c->id)
            *d = s->unnamed_drop;
        return;
    }
    if (!def || def->drops == SQL_OTHER)
        return;
    const uint8_t *name_end = memchr(def->data, '\0', def->len);
    if (!name_end)
        return;
    const char *text = (const char *)name_end + 1;
    uint32_t n = def->len - (uint32_t)((const uint8_t *)text - def->data);
    char name_buf[256];
    if (!memchr(text, '\0', n))
        return;
    size_t at, span;
    d->kind = prepared_classify_query_at(text, names_reading(c, s), name_buf, sizeof(name_buf), &at,
                                         &span);
    cut_sql_name(c, s, name_buf);
    snprintf(d->name, sizeof(d->name), "%.63s", name_buf);
    snprintf(d->server_name, sizeof(d->server_name), "%.63s", name_buf);
    const struct stmt_entry *named =
        d->kind == SQL_DEALLOCATE && name_buf[0] ? stmt_map_get(c->stmts, name_buf) : NULL;
    if (named && named->def) { /* its Bind runs the text renamed (bind_deallocate_renamed) */
        struct stmt_server_name sn;
        stmt_names_for_server(&sn, named->def,
                              strlen(name_buf) >= STMT_KEY_MAX ? STMT_NAME_CUT : STMT_NAME_WHOLE);
        snprintf(d->server_name, sizeof(d->server_name), "%s", sn.name);
    }
}

/* A Bind of the client's named statement whose text is DEALLOCATE of another statement the
 * client holds by protocol: Postgres drops that one when the portal runs, by the name the text
 * gives it. On the server the client's statement has sluice's name, and the named Parse's text
 * went there as written: the Bind goes instead to a statement of the text with sluice's name
 * in it and the parameter types the client's Parse declared (a definition of the server's
 * alone), and the server gets something under that name
 * to drop (ensure_named). A statement the client does not hold (gone since, maybe by this
 * very DEALLOCATE) leaves the Bind as it was: the server refuses it (26000) as Postgres does.
 * *bound: the Bind was taken care of here. */
static enum track_result bind_deallocate_renamed(struct client *c, struct server *s,
                                                 const char *name, const struct stmt_def *mine,
                                                 const struct stmt_drop *d, uint32_t at,
                                                 uint32_t key_len, bool *bound,
                                                 struct client_failure *fail)
{
    *bound = false;
    struct stmt_def *target = d->kind == SQL_DEALLOCATE ? client_def(c, d->name) : NULL;
    if (!target || strcmp(d->name, d->server_name) == 0)
        return TRACK_PASS;
    /* The parameter types the client's Parse declared go with the text: Postgres checks the
     * Bind's parameter count against them (08P01) before the DEALLOCATE can run. */
    const uint8_t *name_end = memchr(mine->data, '\0', mine->len);
    const uint8_t *text_end =
        name_end ? memchr(name_end + 1, '\0', mine->len - (uint32_t)(name_end + 1 - mine->data))
                 : NULL;
    if (!text_end)
        return TRACK_PASS;
    uint32_t types_len = mine->len - (uint32_t)(text_end + 1 - mine->data);
    *bound = true;
    uint8_t *text = malloc(STMT_KEY_MAX + 16 + types_len);
    if (!text) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    int n = snprintf((char *)text, STMT_KEY_MAX + 16, "%cDEALLOCATE %s", 0, d->server_name) + 1;
    memcpy(text + n, text_end + 1, types_len);
    struct stmt_def *renamed_text = stmt_def_new(text, (uint32_t)n + types_len, NULL);
    free(text);
    if (!renamed_text) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    struct stmt_server_name sn;
    stmt_names_for_server(&sn, renamed_text, STMT_NAME_WHOLE);
    bool changed; /* not compared */
    enum track_result r = room_for_statement(c, &sn, key_len);
    if (r == TRACK_PASS)
        r = ensure_named(c, s, target, d->server_name, fail);
    if (r == TRACK_PASS)
        r = ensure_prepared(c, s, renamed_text, STMT_SHAPE_UNKNOWN, sn.name, STMT_RUN, &changed,
                            fail);
    stmt_def_unref(renamed_text);
    if (r != TRACK_PASS)
        return r;
    /* The Bind's error (08P01: a count of parameters other than the types') names the client's
     * statement, as Postgres's does, not the server's stand-in (noted once: the departed
     * names are few, kept for the Closes whose errors are still to come) */
    const char *known = stmt_map_name_of(c->stmts, sn.name);
    if (!known || strcmp(known, name) != 0)
        stmt_map_note_departed(c->stmts, name, sn.name);
    return rename_statement(c, s, at, key_len, &sn);
}

static struct portal_drop *portal_drop_of(struct server *s, const char *portal)
{
    for (uint32_t i = 0; i < s->portal_drops_count; i++)
        if (strcmp(s->portal_drops[i].portal, portal) == 0)
            return &s->portal_drops[i];
    return NULL;
}

static void forget_portal_drop(struct server *s, const char *portal)
{
    struct portal_drop *p = portal_drop_of(s, portal);
    if (p)
        *p = s->portal_drops[--s->portal_drops_count];
}

/* A Bind of the client's statement `name` (def: the client's; NULL for the unnamed, or one
 * the client does not hold) to `portal` (both keys): what the statement drops, the portal drops
 * at each Execute (stmt_track_message, 'E'), maybe never (Postgres runs a DEALLOCATE there, not
 * at its Parse or Bind). Every such portal of the transaction is kept: one past
 * SERVER_PORTAL_DROPS_MAX fails the client (54000), as a drop applied anywhere but at its
 * Execute would leave sluice's record of the statements wrong. */
static enum track_result note_portal_drop(struct client *c, struct server *s, const char *portal,
                                          const char *name, const struct stmt_def *def,
                                          struct client_failure *fail)
{
    struct stmt_drop d;
    drop_of_statement(c, s, name, def, &d);
    if (d.kind == SQL_OTHER) {
        if (s->portal_drops_count > 0)
            forget_portal_drop(s, portal);
        return TRACK_PASS;
    }
    struct portal_drop *p = portal_drop_of(s, portal);
    if (!p && s->portal_drops_count == SERVER_PORTAL_DROPS_MAX) {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "more than %d portals bound from DEALLOCATE or DISCARD ALL at once",
                 SERVER_PORTAL_DROPS_MAX);
        fail_session(fail, FAIL_TOO_MANY_STATEMENTS, detail);
        return TRACK_FAILED;
    }
    if (!p && s->portal_drops_count == s->portal_drops_cap) {
        uint32_t cap = s->portal_drops_cap ? s->portal_drops_cap * 2 : 4;
        struct portal_drop *grown = realloc(s->portal_drops, cap * sizeof(*grown));
        if (!grown) {
            fail_session(fail, FAIL_OUT_OF_MEMORY, "");
            return TRACK_FAILED;
        }
        s->portal_drops = grown;
        s->portal_drops_cap = cap;
    }
    if (!p) {
        p = &s->portal_drops[s->portal_drops_count++];
        snprintf(p->portal, sizeof(p->portal), "%s", portal);
    }
    p->drop = d;
    return TRACK_PASS;
}

/* The Execute of a portal bound from DEALLOCATE a. Postgres looks a up there, at the Execute:
 * it drops the a the client holds then, and fails with 26000 when it holds none. The text the
 * server runs was fixed earlier and names a by d->server_name: sluice's name for the a the client
 * held at the unnamed Parse (or at the named statement's Bind, bind_deallocate_renamed), or the
 * client's own name when it held none then. A client may have closed a, or prepared it again
 * with another text (another server name), since. Rather than change the bound text, sluice
 * makes the server's answer the one Postgres gives for the client's a of now: when the client
 * holds a, the server gets something under the text's name (ensure_named: the a of the text's
 * time, or a stand-in), the DEALLOCATE succeeds, and apply_drop drops the client's current a;
 * when it holds none, sluice's name of the text is closed on the server first, and the
 * DEALLOCATE fails with 26000 as on Postgres. A stand-in under the client's own name (a raw
 * name, the backend's namespace of SQL PREPARE) that a skipped Execute would leave there marks
 * the session unknown: its full reset clears it before anyone else gets the backend. */
static enum track_result run_portal_drop(struct client *c, struct server *s,
                                         const struct stmt_drop *d, struct client_failure *fail)
{
    /* In a failed transaction the server refuses the DEALLOCATE (25P02) and sluice's Parse as
     * well; a name the client prepared by SQL is the backend's own, which it drops as is. */
    if (d->kind != SQL_DEALLOCATE || !d->name[0] || s->txn_status == 'E' ||
        stmt_map_get(&s->sql_prepared, d->server_name) ||
        c->worker->cfg->max_prepared_statements == 0)
        return apply_drop(c, s, d, false, fail);
    struct stmt_def *current = client_def(c, d->name);
    enum track_result r = TRACK_PASS;
    if (!current) {
        /* the 26000 names the client's a, not another of its statements that has the text's
         * server name now (one of the same text) */
        if (stmt_names_is_servers(d->server_name))
            stmt_queue_name_next_error(&s->reqs, d->name, d->server_name);
        r = hide_others_statement(c, s, d->server_name);
        return r == TRACK_PASS ? apply_drop(c, s, d, false, fail) : r;
    }
    bool servers_name = stmt_names_is_servers(d->server_name);
    const struct stmt_entry *held = stmt_map_get(&s->stmts, d->server_name);
    if (!servers_name || !held || !held->def) {
        r = ensure_named(c, s, current, d->server_name, fail);
        if (r == TRACK_PASS && !servers_name)
            s->session = SERVER_SESSION_UNKNOWN;
    }
    return r == TRACK_PASS ? apply_drop(c, s, d, true, fail) : r;
}

/* A portal name's key (Postgres keys portals by their first NAMEDATALEN - 1 bytes too), when
 * its NUL is among the n bytes at p. */
static bool portal_key(const uint8_t *p, uint32_t n, char key[STMT_KEY_MAX + 1])
{
    const uint8_t *end = memchr(p, '\0', n);
    if (!end)
        return false;
    size_t k = (size_t)(end - p) < STMT_KEY_MAX ? (size_t)(end - p) : STMT_KEY_MAX;
    memcpy(key, p, k);
    key[k] = '\0';
    return true;
}

/* Parse: remember the client's definition under the client's name; the server gets it under
 * sluice's (its definition's server_name). */
static enum track_result track_parse(struct client *c, struct server *s, const uint8_t *body,
                                     uint32_t len, uint32_t avail_body, struct client_failure *fail)
{
    if (avail_body == 0)
        return TRACK_WAIT;
    if (body[0] == '\0') { /* the unnamed statement: passes through */
        if (avail_body < len && CODEC_HEADER_LEN + len <= buf_block_size())
            return TRACK_WAIT; /* short enough to look at whole */
        s->unnamed_executes[0] = '\0'; /* until its text says (note_unnamed_executes) */
        s->unnamed_drop.kind = SQL_OTHER; /* and follow_statement */
        /* each Bind runs it (use_unnamed); a text longer than the buffer is not read whole */
        s->reqs.unnamed_encoding_effect =
            (uint8_t)(avail_body < len ? ENCODING_EFFECT_ANY
                                       : text_encoding_effect_of((const char *)body + 1, len - 1));
        enum track_result r =
            avail_body >= len
                ? inspect_statement(c, s, 'P', (const char *)body + 1, len - 1, len, 1, fail)
                : inspect_statement_start(c, s, 'P', (const char *)body + 1, avail_body - 1, len,
                                          fail);
        if (r != TRACK_PASS && r != TRACK_STARTED)
            return r;
        s->unnamed_of = c->id;
        return and_then(r, queue_request(s, REQ_PARSE_CLIENT, NULL, fail));
    }
    /* A Parse larger than the buffer streams through; its definition is kept as it passes
     * (request_track_frame, stmt_track_keep_parse_tail). The name's key must be in the buffer
     * first. */
    bool streamed = avail_body < len && CODEC_HEADER_LEN + len > buf_block_size();
    if (avail_body < len && !streamed)
        return TRACK_WAIT;
    char name[STMT_KEY_MAX + 1];
    const uint8_t *nul = memchr(body, '\0', avail_body < len ? avail_body : len);
    if (!stmt_name_key(body, avail_body < len ? avail_body : len, name) || (!streamed && !nul)) {
        if (streamed)
            return TRACK_WAIT;
        /* Its name never ends: it names nothing of the client's, and Postgres refuses it with
         * an ERROR (08P01 "invalid string in message"), the session going on. */
        return queue_request(s, REQ_PARSE_CLIENT, NULL, fail);
    }
    enum stmt_name_extent extent = protocol_key(c, s, name);
    uint32_t key_len = (uint32_t)strlen(name);
    /* The statement text, when the message is here whole (it starts after the name's NUL). */
    uint32_t name_len = nul ? (uint32_t)(nul - body) + 1 : 0;
    if (c->worker->cfg->max_prepared_statements == 0) /* as PgBouncer's 0 */
        return parse_untouched(c, s, body, len, avail_body, name_len, fail);
    if (nul && name_refused_as_text(c, s, body))
        return parse_untouched(c, s, body, len, avail_body, name_len, fail);
    /* A Parse of a name whose Parse in an earlier batch is undecided (an error there makes the
     * server skip it) waits for that outcome: the name is taken if it ran, free if not. */
    if (stmt_queue_parse_undecided(&s->reqs, name)) {
        s->reqs.parse_awaited = true;
        return TRACK_WAIT;
    }
    s->reqs.parse_awaited = false;
    struct stmt_def *mine = client_def(c, name);
    if (mine)
        return parse_taken_name(c, s, mine, key_len, extent, fail);
    if (stmt_map_get(&s->sql_prepared, name))
        return parse_untouched(c, s, body, len, avail_body, name_len, fail);
    struct stmt_def *def = streamed
                               ? stmt_def_alloc(len - key_len, parse_encoding(c, s))
                               : stmt_def_new(body + key_len, len - key_len, parse_encoding(c, s));
    if (!def) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    struct stmt_server_name sn;
    stmt_names_for_server(&sn, def, extent);
    struct stmt_entry *theirs = stmt_map_get(&s->stmts, sn.name);
    enum track_result r = room_for_statement(c, &sn, key_len);
    if (r == TRACK_PASS && buf_pending(&c->in) > 0 &&
        (theirs || stmt_map_count(&s->stmts) >= (int)c->worker->cfg->max_prepared_statements))
        r = TRACK_FLUSH;
    if (r == TRACK_PASS && !keep_within_bounds(c, len, fail))
        r = TRACK_FAILED;
    if (r == TRACK_PASS)
        r = inspect_parse_text(c, s, body, len, avail_body, name_len, fail);
    if (r != TRACK_PASS) {
        stmt_def_unref(def);
        return r;
    }
    if (name_len > 0) /* the text as far as it is here (a streamed one: its start) */
        def->effect = session_effects_of_text((const char *)body + name_len,
                                              (avail_body < len ? avail_body : len) - name_len);
    if (name_len > 0 && avail_body >= len)
        def->drops = (uint8_t)drops_of_text((const char *)body + name_len, len - name_len);
    /* Taken on this server (by this statement another client prepared, or one whose
     * definition shares the hash): closed first, so the client's Parse succeeds as it would. */
    free_name_on_server(s, sn.name, theirs != NULL);
    if (!c->stmts)
        c->stmts = stmt_map_new();
    bool ok =
        c->stmts && stmt_map_put(c->stmts, name, def) && stmt_map_put(&s->stmts, sn.name, def);
    /* Streamed: the definition fills as the message passes; nothing compares it before the
     * message has passed whole, since nothing else of this client is framed until then. c->stmts
     * holds it meanwhile (the framer's pointer does not own it). */
    if (ok && streamed)
        c->rx.keep = def;
    stmt_def_unref(def);
    if (!ok) {
        fail_session(fail, FAIL_OUT_OF_MEMORY, "");
        return TRACK_FAILED;
    }
    r = queued(stmt_queue_push_client_parse(&s->reqs, sn.name, name), fail);
    if (r == TRACK_PASS) /* its result type, fixed now, comes from sluice's Describe after it */
        r = queued(stmt_queue_describe_due(&s->reqs, sn.name, name, def), fail);
    if (r != TRACK_PASS)
        return r;
    return rename_statement(c, s, 0, key_len, &sn);
}

/* Close of a statement: the client's own goes to the server under sluice's name (mine) and
 * leaves both maps; another name (one the client prepared by SQL, or none) as it is. */
static enum track_result track_close(struct client *c, struct server *s, struct stmt_def *mine,
                                     const char *name, enum stmt_name_extent extent, uint32_t at,
                                     struct client_failure *fail)
{
    uint32_t key_len = (uint32_t)strlen(name);
    struct stmt_server_name sn;
    if (mine)
        stmt_names_for_server(&sn, mine, extent);
    const char *on_server = mine ? sn.name : name;
    /* A Close the server skips (an error before it) leaves the statement: stmt_on_ready gives
     * it back to the client then. */
    int rc = mine ? stmt_queue_push_client_close(&s->reqs, sn.name, name, mine)
                  : stmt_queue_push(&s->reqs, REQ_CLOSE_CLIENT, on_server);
    if (queued(rc, fail) != TRACK_PASS)
        return TRACK_FAILED;
    stmt_map_remove(&s->stmts, on_server);
    if (!mine)
        stmt_map_remove(&s->sql_prepared, name);
    /* An error still to come may name it by sluice's name (a Parse of the name before this
     * Close in the batch, refused with 42P05): the client is told its own (stmt_map_name_of,
     * which matches the definition's server name, a long name's padding left out). */
    if (mine)
        stmt_map_note_departed(c->stmts, name, mine->server_name);
    stmt_map_remove(c->stmts, name);
    return mine ? rename_statement(c, s, at, key_len, &sn) : TRACK_PASS;
}

/* A Bind or Describe of the client's unnamed statement that EXECUTEs the client's statement
 * (note_unnamed_executes): Postgres looks the name up now, so the server gets the statement the
 * client holds under that name now, under the server name the unnamed statement's text says
 * (the client may have prepared another text under its name since: Postgres runs that one).
 * One the client closed since is not prepared: the server refuses the Bind (26000), as Postgres
 * does, and its error says the client's name (a departed one, stmt_map_name_of). In a failed
 * transaction the server refuses the Bind or Describe itself (25P02). */
static enum track_result prepare_unnamed_executes(struct client *c, struct server *s, uint8_t type,
                                                  struct client_failure *fail)
{
    if (!s->unnamed_executes[0] || s->txn_status == 'E')
        return TRACK_PASS;
    struct stmt_def *mine = client_def(c, s->unnamed_executes);
    if (!mine) {
        stmt_map_note_departed(c->stmts, s->unnamed_executes, s->unnamed_executes_as);
        return TRACK_PASS;
    }
    bool changed; /* an unnamed Parse's EXECUTE is not compared (docs/pool-modes.md) */
    enum track_result r = ensure_prepared(c, s, mine, STMT_SHAPE_UNKNOWN, s->unnamed_executes_as,
                                          STMT_RUN, &changed, fail);
    /* The portal it binds looks the statement up at its Execute, maybe after another unnamed
     * Parse has replaced this one (and with it note_unnamed_executes's hold). */
    struct stmt_entry *held = stmt_map_get(&s->stmts, s->unnamed_executes_as);
    if (r == TRACK_PASS && type == 'B' && held && !held->portal_holds) {
        held->portal_holds = true;
        s->reqs.portals_hold++;
    }
    return r;
}

/* A Bind or Describe of the unnamed statement: on a server another client's Parse left one
 * on, it would run that client's statement. Closed first, the server answers as Postgres
 * answers a client that has none (26000). */
static enum track_result use_unnamed(struct client *c, struct server *s, uint8_t type,
                                     struct client_failure *fail)
{
    if (s->unnamed_of == c->id)
        return prepare_unnamed_executes(c, s, type, fail);
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH;
    free_name_on_server(s, "", true);
    s->unnamed_of = 0;
    return TRACK_PASS;
}

/* A Bind or Describe of the client's statement whose result type the database no longer gives:
 * it goes to the server under a name the server does not have, and the server's refusal
 * (26000) reaches the client as Postgres's 0A000 (relay.c), the server skipping the rest of the
 * batch as Postgres does after that error. A Describe's (described: its statement) gets the
 * statement's parameter types first, as from Postgres. */
static enum track_result refuse_changed(struct client *c, struct server *s, uint32_t at,
                                        uint32_t key_len, enum stmt_name_extent extent,
                                        struct stmt_def *described)
{
    struct stmt_server_name changed;
    stmt_names_changed(&changed, extent);
    enum track_result r = room_for_statement(c, &changed, key_len);
    if (r == TRACK_PASS)
        r = free_changed_name(c, s, &changed);
    if (r != TRACK_PASS)
        return r;
    stmt_queue_poison(&s->reqs, described);
    return rename_statement(c, s, at, key_len, &changed);
}

/* A Query or FunctionCall inside an extended batch (messages since the last Sync, the
 * client's or sluice's): Postgres skips it after an error earlier in the batch, with no
 * ReadyForQuery. A mark goes before it, so that the server's replies tell which it was
 * (stmt_on_error). *marked: a mark was queued, to be disarmed if the message does not
 * follow it after all. */
static enum track_result mark_inside_batch(struct client *c, struct server *s, bool joinable,
                                           bool *marked, struct client_failure *fail)
{
    if (!s->batch_open && !stmt_queue_unsynced(&s->reqs))
        return TRACK_PASS;
    s->reqs.mark_joinable = joinable;
    *marked = stmt_queue_join_mark(&s->reqs);
    if (*marked)
        return TRACK_PASS; /* the Query before, with nothing between, has one */
    if (buf_pending(&c->in) > 0)
        return TRACK_FLUSH; /* the batch's own messages go before the mark */
    enum track_result r = queued(stmt_queue_push_mark(&s->reqs), fail);
    if (r != TRACK_PASS)
        return r;
    prepared_put_mark(&s->out);
    *marked = true;
    return TRACK_PASS;
}

/* sluice's own requests went out after the mark, right before the Query (the Close of another
 * client's statement the Query names, hide_others_statement): if one fails once the mark is
 * answered, the server skips the Query all the same, so another mark goes between them and the
 * Query. (A Parse the Query needs holds it for its outcome instead: prepare_held_query.) */
static enum track_result mark_again(struct server *s, struct client_failure *fail)
{
    stmt_queue_disarm_mark(&s->reqs); /* the one it shared, or its own before them */
    enum track_result r = queued(stmt_queue_push_mark(&s->reqs), fail);
    if (r == TRACK_PASS)
        prepared_put_mark(&s->out);
    return r;
}

/* Session mode: statement names pass through unchanged, and only what tells the server's replies
 * apart is queued, nameless (runs of one kind share an item): each Parse and Close (answered by
 * ParseComplete or CloseComplete), each Sync, Query and FunctionCall (ReadyForQuery), and the mark
 * before a Query or FunctionCall framed inside an extended batch, whose reply says whether an
 * error skipped it (stmt_on_error). Traffic with no such Query pays a push and a pop a request.
 * A full queue (a pipeline of thousands of batches sent ahead of the replies) pauses it rather
 * than failing the client (prepared.h, paused). */
enum track_result stmt_track_count(struct client *c, struct server *s, uint8_t type,
                                   struct client_failure *fail)
{
    bool joinable = s->reqs.mark_joinable;
    s->reqs.mark_joinable = false;
    if (type == 'S')
        stmt_queue_sync_framed(&s->reqs);
    if (s->reqs.paused) {
        /* Nothing framed before is unanswered: the queue follows again from this message. */
        if (s->inflight > 0 || s->batch_open || s->reqs.count > 0)
            return TRACK_PASS;
        s->reqs.paused = false;
    }
    enum track_result r = TRACK_PASS;
    bool marked = false;
    switch (type) {
    case 'P':
        r = queue_request(s, REQ_PARSE_CLIENT, NULL, fail);
        break;
    case 'C':
        r = queue_request(s, REQ_CLOSE_CLIENT, NULL, fail);
        break;
    case 'S':
        r = queue_request(s, REQ_SYNC, NULL, fail);
        break;
    case 'Q':
    case 'F':
        r = mark_inside_batch(c, s, joinable, &marked, fail);
        if (r == TRACK_PASS)
            r = queue_request(s, REQ_SYNC, NULL, fail);
        if (marked && r != TRACK_PASS)
            stmt_queue_disarm_mark(&s->reqs);
        else
            s->reqs.mark_joinable = marked;
        break;
    default:
        break;
    }
    if (r != TRACK_FAILED)
        return r;
    /* Session mode fails no client for the queue (transaction mode must: its statements
     * depend on it): the requests from here on go unqueued, as before marks. */
    s->reqs.paused = true;
    s->reqs.mark_joinable = false;
    return TRACK_PASS;
}

/* Bind, Describe and Close name a statement near the start of their body. */
enum track_result stmt_track_message(struct client *c, struct server *s, uint8_t type,
                                     const uint8_t *body, uint32_t len, uint32_t avail_body,
                                     struct client_failure *fail)
{
    uint32_t shown = avail_body < len ? avail_body : len;
    uint32_t at = 0; /* where the statement name starts */
    const char *missing = "statement name";
    /* Whatever the client sends after a marked Query ends what a next one may share. */
    bool joinable = s->reqs.mark_joinable;
    s->reqs.mark_joinable = false;
    settle_after_idle(s);
    enum track_result r = send_due_describe(c, s, fail);
    if (r != TRACK_PASS)
        return r;
    switch (type) {
    case 'P':
        return track_parse(c, s, body, len, avail_body, fail);
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
        stmt_queue_sync_framed(&s->reqs);
        return queue_request(s, REQ_SYNC, NULL, fail);
    case 'E': {
        char portal[STMT_KEY_MAX + 1];
        if (s->portal_drops_count == 0)
            return TRACK_PASS;
        if (!portal_key(body, shown, portal))
            return avail_body < len ? TRACK_WAIT : TRACK_PASS;
        struct portal_drop *p = portal_drop_of(s, portal);
        return p ? run_portal_drop(c, s, &p->drop, fail) : TRACK_PASS;
    }
    case 'Q':
    case 'F': {
        if (type == 'Q' && avail_body < len && CODEC_HEADER_LEN + len <= buf_block_size())
            return TRACK_WAIT; /* short enough to read whole: look for DEALLOCATE */
        if (type == 'Q' && avail_body < len && avail_body < QUERY_HEAD_MAX)
            return TRACK_WAIT; /* a longer one: its head, which names the statement */
        /* a Query's text is read (inspect_statement); a FunctionCall's code is not */
        if (type == 'F')
            note_encoding_effect(s, ENCODING_EFFECT_ANY);
        bool marked = false;
        r = mark_inside_batch(c, s, joinable, &marked, fail);
        if (r == TRACK_PASS && type == 'Q') {
            size_t out_at_mark = s->out.len;
            /* The Query held for sluice's Parse that failed, in a block failed meanwhile (by a
             * Query pipelined before it, after the Parse went): nothing is prepared in a failed
             * block (follow_query), so prepare_held_query would not be reached, and the
             * server, skipping to a Sync, would never answer the Query. It gets the Parse's
             * error alone (25P02, as Postgres's EXECUTE there). */
            if (s->reqs.held_query == HELD_PARSE_FAILED && s->txn_status == 'E')
                r = answer_query_after_failed_parse(c, s, fail);
            else if (avail_body >= len && len > 0 && body[len - 1] == '\0')
                r = inspect_statement(c, s, 'Q', (const char *)body, len, len, 0, fail);
            else if (avail_body < len)
                r = inspect_statement_start(c, s, 'Q', (const char *)body, avail_body, len, fail);
            if (r == TRACK_PASS && marked && s->out.len != out_at_mark)
                r = mark_again(s, fail);
            if (r == TRACK_PASS || r == TRACK_STARTED)
                s->unnamed_of = 0; /* a simple Query drops the unnamed statement */
        }
        if (r == TRACK_PASS || r == TRACK_STARTED)
            r = and_then(r, queued(stmt_queue_push_query(&s->reqs), fail));
        free(s->reqs.positions_due); /* a Query not queued: its rewrites with it */
        s->reqs.positions_due = NULL;
        if (marked && r != TRACK_PASS && r != TRACK_STARTED)
            stmt_queue_disarm_mark(&s->reqs);
        else
            s->reqs.mark_joinable = marked;
        return r;
    }
    default:
        return TRACK_PASS;
    }
    char name[STMT_KEY_MAX + 1];
    if (at > shown || !stmt_name_key(body + at, shown - at, name)) {
        /* The names are not all here yet. */
        if (avail_body >= len) /* a name that never ends: as an unknown name (see Parse) */
            return type == 'C' ? queue_request(s, REQ_CLOSE_CLIENT, NULL, fail) : TRACK_PASS;
        if (CODEC_HEADER_LEN + len > buf_block_size() &&
            avail_body + CODEC_HEADER_LEN >= buf_block_size()) {
            char detail[64];
            snprintf(detail, sizeof(detail), "%s longer than pkt_buf", missing);
            fail_session(fail, FAIL_PROTOCOL_VIOLATION, detail);
            return TRACK_FAILED;
        }
        return TRACK_WAIT;
    }
    bool statement = type == 'B' || body[0] == 'S';
    if (type == 'B' && !name[0]) /* it runs the unnamed statement's text */
        note_encoding_effect(s, s->unnamed_of == c->id ? s->reqs.unnamed_encoding_effect : 0);
    char portal[STMT_KEY_MAX + 1] = "";
    if ((type == 'B' || (type == 'C' && body[0] == 'P')) &&
        portal_key(type == 'B' ? body : body + 1, type == 'B' ? shown : shown - 1, portal)) {
        if (type == 'C') /* a portal's Close */
            forget_portal_drop(s, portal);
        else if (!name[0] && (r = note_portal_drop(c, s, portal, "", NULL, fail)) != TRACK_PASS)
            return r;
    }
    if (statement && !name[0] && type != 'C')
        return use_unnamed(c, s, type, fail);
    if (statement && !name[0])
        s->unnamed_of = 0;
    if (!statement || !name[0]) {
        if (type == 'C')
            return queue_request(s, REQ_CLOSE_CLIENT, NULL, fail);
        return TRACK_PASS;
    }
    if (memchr(body + at, '\0', shown - at) && name_refused_as_text(c, s, body + at))
        return type == 'C' ? queue_request(s, REQ_CLOSE_CLIENT, NULL, fail) : TRACK_PASS;
    enum stmt_name_extent extent = protocol_key(c, s, name);
    uint32_t key_len = (uint32_t)strlen(name);
    struct stmt_entry *entry = client_entry(c, name);
    struct stmt_def *mine = entry ? entry->def : NULL;
    if (type == 'B' && (r = note_portal_drop(c, s, portal, name, mine, fail)) != TRACK_PASS)
        return r;
    if (type == 'B') /* it runs the statement's text: the client's, or one sluice did not read */
        note_encoding_effect(s, mine ? mine->encoding_effect : ENCODING_EFFECT_ANY);
    struct stmt_server_name sn;
    if (mine)
        stmt_names_for_server(&sn, mine, extent);
    /* A long name's rest goes on with a character cut at its key (stmt_names_rename): the name
     * is read to its end first, as far as the buffer holds it. */
    if (mine && key_len >= STMT_KEY_MAX && !memchr(body + at, '\0', shown - at) &&
        avail_body < len && avail_body + CODEC_HEADER_LEN < buf_block_size())
        return TRACK_WAIT;
    r = mine ? room_for_statement(c, &sn, key_len) : TRACK_PASS;
    if (r != TRACK_PASS)
        return r;
    if (type == 'C')
        return track_close(c, s, mine, name, extent, at, fail);
    if (!mine) /* not known to sluice: the server answers as it would */
        return hide_others_statement(c, s, name);
    if (type == 'B' && mine->effect == STMT_EFFECT_SESSION)
        session_effects_run_statement(c, s, mine);
    if (type == 'B' && mine->drops == SQL_DEALLOCATE) {
        struct stmt_drop d;
        bool bound;
        drop_of_statement(c, s, name, mine, &d);
        r = bind_deallocate_renamed(c, s, name, mine, &d, at, key_len, &bound, fail);
        if (bound || r != TRACK_PASS)
            return r;
    }
    bool changed;
    r = type == 'D' ? ensure_described(c, s, entry, sn.name, &changed, fail)
                    : ensure_prepared(c, s, mine, entry->shape, sn.name, STMT_RUN, &changed, fail);
    if (r != TRACK_PASS)
        return r;
    if (changed)
        return refuse_changed(c, s, at, key_len, extent, type == 'D' ? mine : NULL);
    return rename_statement(c, s, at, key_len, &sn);
}

/* A streamed Parse's definition is the last keep->len bytes of the message: copy those of the
 * chunk just framed (rx->remain already counts it out), and seal it when the message is whole. */
void stmt_track_keep_parse_tail(struct framer *rx, const uint8_t *chunk, uint32_t n)
{
    struct stmt_def *d = rx->keep;
    if (!d)
        return;
    uint32_t from_end = rx->remain + n; /* the chunk's first byte, counted from the message end */
    uint32_t skip = from_end > d->len ? from_end - d->len : 0;
    if (skip < n)
        memcpy(d->data + (d->len - (from_end - skip)), chunk + skip, n - skip);
    if (rx->remain == 0) {
        /* Its effect was read from its start (stmt_track_parse): a set_config further on runs at
         * each Bind too. d->data: the name's NUL, then the text. */
        if (d->effect == STMT_EFFECT_NONE && d->len > 1)
            d->effect = session_effects_of_text((const char *)d->data + 1,
                                                strnlen((const char *)d->data + 1, d->len - 1));
        stmt_def_seal(d);
        rx->keep = NULL;
    }
}
