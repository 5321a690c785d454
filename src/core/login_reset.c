/* login_reset: a client's reset of its login parameters, followed per request (login_reset.h). */
#include "login_reset.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "client.h"
#include "codec.h"
#include "conn_id.h"
#include "log.h"
#include "params.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "sql_lex.h"

bool login_reset_follows(const struct server *s, const struct client *c)
{
    return c->login_params && !(c->startup_fp != 0 && s->startup_fp == c->startup_fp);
}

/* Does r cover a parameter the client set at login, one s does not reset to its login value? */
static bool covers_login(const struct server *s, const struct client *c,
                         const struct param_reset *r)
{
    if (r->kind == PARAM_RESET_NONE || !login_reset_follows(s, c))
        return false;
    if (r->kind == PARAM_RESET_ALL || r->kind == PARAM_RESET_UNSURE)
        return c->login_params->n > 0;
    for (int i = 0; i < c->login_params->n; i++)
        if (param_reset_covers(r, c->login_params->items[i].name))
            return true;
    return false;
}

void login_reset_note(struct server *s, const struct client *c, const struct param_reset *r)
{
    struct login_reset *lr = &s->login_reset;
    if (!covers_login(s, c, r))
        return;
    if (lr->state == LOGIN_RESET_NONE) {
        memset(&lr->which, 0, sizeof(lr->which));
        lr->held = 0;
        lr->state = LOGIN_RESET_IN_REQUEST;
    }
    param_reset_merge(&lr->which, r);
    lr->last = *r;
}

void login_reset_note_unseen(struct server *s, const struct client *c)
{
    struct param_reset all = {.kind = PARAM_RESET_ALL, .session_level = true, .statements = 1};
    login_reset_note(s, c, &all);
}

/* Does s[0, n) hold a word a reset needs, in any case? */
static bool has_reset_word(const char *s, size_t n)
{
    static const char *const words[] = {"reset", "default", "discard", "set_config"};
    for (size_t i = 0; i < n; i++) {
        char ch = (char)(s[i] | 0x20);
        if (ch != 'r' && ch != 'd' && ch != 's')
            continue;
        for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
            size_t len = strlen(words[w]);
            if (words[w][0] == ch && n - i >= len && strncasecmp(s + i, words[w], len) == 0)
                return true;
        }
    }
    return false;
}

/* Look at the next bytes of a watched text, with those before them (a word split in two). */
static void watch_bytes(struct server *s, const struct client *c, const char *bytes, size_t n,
                        bool header_counted)
{
    struct login_reset *lr = &s->login_reset;
    char window[2 * LOGIN_RESET_CARRY];
    size_t head = n < LOGIN_RESET_CARRY ? n : LOGIN_RESET_CARRY;
    memcpy(window, lr->carry, lr->carry_len);
    memcpy(window + lr->carry_len, bytes, head);
    if (has_reset_word(window, lr->carry_len + head) || has_reset_word(bytes, n)) {
        bool query = lr->watch == LOGIN_RESET_WATCH_QUERY;
        lr->watch = LOGIN_RESET_WATCH_NONE;
        login_reset_note_unseen(s, c);
        /* A Query whose header passed login_reset_request_sent already (when only its start
         * was here): its reply is due after those now in flight but itself. */
        if (query && header_counted && lr->state == LOGIN_RESET_IN_REQUEST && s->inflight > 0) {
            lr->state = LOGIN_RESET_AWAITING_REPLY;
            lr->ahead = s->inflight - 1;
        }
        return;
    }
    /* the new carry: the last bytes of carry + bytes */
    size_t total = lr->carry_len + n;
    size_t keep = total < LOGIN_RESET_CARRY ? total : LOGIN_RESET_CARRY;
    char next[LOGIN_RESET_CARRY];
    for (size_t k = 0; k < keep; k++) {
        size_t at = total - keep + k; /* index into carry + bytes */
        next[k] = at < lr->carry_len ? lr->carry[at] : bytes[at - lr->carry_len];
    }
    memcpy(lr->carry, next, keep);
    lr->carry_len = (uint8_t)keep;
}

static bool word_is(const struct login_reset *lr, const char *w)
{
    size_t n = strlen(w);
    return lr->word_len == n && memcmp(lr->word, w, n) == 0;
}

/* The identifier that just passed ends: does it begin or call what outlives the transaction
 * (enum set_watch)? */
static bool word_leaves_state(const struct login_reset *lr)
{
    static const char *const anywhere[] = {
        "set_config",           "pg_advisory_lock",           "pg_advisory_lock_shared",
        "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    };
    /* DO: a block's dynamic SQL may SET anything (EXECUTE 'SET ...'), as session_state's
     * inspector says of a DO it reads whole. */
    static const char *const starting[] = {"set", "do", "listen", "prepare", "declare"};
    for (size_t i = 0; i < sizeof anywhere / sizeof anywhere[0]; i++)
        if (word_is(lr, anywhere[i]))
            return true;
    if (lr->before_word == ';' || lr->before_word == '/')
        for (size_t i = 0; i < sizeof starting / sizeof starting[0]; i++)
            if (word_is(lr, starting[i]))
                return true;
    if (lr->temp_may_follow && (word_is(lr, "temp") || word_is(lr, "temporary")))
        return true;
    if (lr->settings_may_follow && word_is(lr, "pg_settings"))
        return true; /* UPDATE pg_settings: its rule runs set_config(name, setting, false) */
    /* pg_temp, or a backend's pg_temp_<n> (a word cut at the most kept counts as it reads) */
    return sql_temp_schema_word(lr->word, lr->word_len < SET_WATCH_WORD - 1 ? lr->word_len
                                                                             : SET_WATCH_WORD - 1);
}

/* The identifier that just passed begins a LOAD, whose library no reset unloads, or is a
 * setseed call, whose seed no reset undoes either (enum set_watch)? */
static bool word_outlives_reset(const struct login_reset *lr)
{
    return ((lr->before_word == ';' || lr->before_word == '/') && word_is(lr, "load")) ||
           word_is(lr, "setseed");
}

/* Look at the next bytes of a streaming text for a SET (enum set_watch). Quotes are not
 * followed: a false alarm costs a full reset (a LOAD's: a new server), nothing else. */
static void watch_set_bytes(struct server *s, const char *bytes, size_t n)
{
    struct login_reset *lr = &s->login_reset;
    for (size_t i = 0; i < n && lr->set_watch != SET_WATCH_NONE; i++) {
        unsigned char ch = (unsigned char)bytes[i];
        unsigned char prev = lr->prev_byte;
        lr->prev_byte = ch;
        if (lr->set_watch == SET_WATCH_IN_LINE_COMMENT) {
            /* a CR alone ends it too, as in scan.l (sql_skip_lexeme) */
            if (ch == '\n' || ch == '\r')
                lr->set_watch = SET_WATCH_ON; /* what came before the comment still counts */
            continue;
        }
        if (sql_ident_char((char)ch)) {
            if (lr->word_len == 0)
                lr->before_word = lr->last_seen;
            if (lr->word_len < SET_WATCH_WORD - 1)
                lr->word[lr->word_len] = (char)tolower(ch);
            if (lr->word_len < UINT8_MAX)
                lr->word_len++;
            lr->last_seen = 'a';
            continue;
        }
        if (lr->word_len > 0 && word_outlives_reset(lr))
            s->close_when_free = true; /* closed when released */
        /* U&"pg\005ftemp": a name whose escapes may spell pg_temp */
        bool unicode_name = word_is(lr, "u") && ch == '&';
        if (lr->word_len > 0 &&
            (word_leaves_state(lr) || word_outlives_reset(lr) || unicode_name)) {
            s->session = SERVER_SESSION_UNKNOWN; /* a full reset before it serves again */
            if (s->close_when_free) {
                lr->set_watch = SET_WATCH_NONE; /* nothing the text holds can do more */
                return;
            }
            /* a LOAD or setseed further on still closes the server: no reset undoes it */
        }
        if (lr->word_len > 0) {
            lr->temp_may_follow = word_is(lr, "create") || word_is(lr, "into") ||
                                  word_is(lr, "local") || word_is(lr, "global") ||
                                  word_is(lr, "replace");
            lr->settings_may_follow =
                word_is(lr, "update") || word_is(lr, "only") || word_is(lr, "pg_catalog");
        }
        lr->word_len = 0;
        if (ch == '-' && prev == '-') {
            /* "-- ...\nSET": the SET follows what came before the comment */
            lr->set_watch = SET_WATCH_IN_LINE_COMMENT;
            lr->last_seen = lr->before_dash;
            continue;
        }
        if (ch == '-')
            lr->before_dash = lr->last_seen;
        if (!isspace(ch))
            lr->last_seen = (char)ch;
    }
}

void login_reset_watch_text(struct server *s, const struct client *c, uint8_t type,
                            const char *shown, size_t n)
{
    struct login_reset *lr = &s->login_reset;
    if (pool_mode_ops(s->mode, false)->release_at_idle) {
        lr->set_watch = SET_WATCH_ON;
        lr->word_len = 0;
        lr->prev_byte = 0;
        lr->temp_may_follow = false;
        lr->settings_may_follow = false;
        lr->last_seen = ';'; /* the text's start: the inspector saw it; a second look is free */
        watch_set_bytes(s, shown, n);
    }
    if (!login_reset_follows(s, c))
        return;
    lr->watch = type == 'Q' ? LOGIN_RESET_WATCH_QUERY : LOGIN_RESET_WATCH_PARSE;
    lr->carry_len = 0;
    watch_bytes(s, c, shown, n, false); /* before its header is counted: the usual way */
}

void login_reset_watch_chunk(struct server *s, const struct client *c, const uint8_t *chunk,
                             uint32_t n, bool ends)
{
    struct login_reset *lr = &s->login_reset;
    if (lr->set_watch != SET_WATCH_NONE) {
        watch_set_bytes(s, (const char *)chunk, n);
        if (ends && lr->set_watch != SET_WATCH_NONE) {
            watch_set_bytes(s, " ", 1); /* the last word ends with the text */
            lr->set_watch = SET_WATCH_NONE;
        }
    }
    if (lr->watch == LOGIN_RESET_WATCH_NONE)
        return;
    watch_bytes(s, c, (const char *)chunk, n, true);
    if (ends)
        lr->watch = LOGIN_RESET_WATCH_NONE;
}

bool login_reset_request_sent(struct server *s)
{
    struct login_reset *lr = &s->login_reset;
    if (lr->state != LOGIN_RESET_IN_REQUEST)
        return false;
    lr->state = LOGIN_RESET_AWAITING_REPLY;
    lr->ahead = s->inflight;
    return true;
}

bool login_reset_client_waits(const struct server *s)
{
    enum login_reset_state st = s->login_reset.state;
    return ((st == LOGIN_RESET_AWAITING_REPLY && s->inflight > 0) ||
            st == LOGIN_RESET_RESTORING) && !s->copy_in;
}

/* The bit of a reported name in held; -1 for a name Postgres 15 does not report. */
static int reported_bit(const char *name)
{
    const char *r;
    for (int i = 0; (r = params_reported_name((size_t)i)) != NULL; i++)
        if (strcasecmp(r, name) == 0)
            return i;
    return -1;
}

/* Are the server's reports now those of the request that may reset? Postgres 15 sends them
 * just before a ReadyForQuery, so those before the ReadyForQuery of a request ahead are that
 * request's own. */
static bool holding(const struct server *s)
{
    return s->login_reset.state == LOGIN_RESET_AWAITING_REPLY && s->login_reset.ahead == 0 &&
           s->swallow == 0;
}

bool login_reset_holds_report(struct server *s, const uint8_t *body, uint32_t len)
{
    const char *name, *value;
    if (!holding(s) || !codec_parse_parameter_status(body, len, &name, &value))
        return false;
    int bit = reported_bit(name);
    if (bit < 0)
        return false;
    s->login_reset.held |= (uint16_t)(1u << bit);
    return true;
}

bool login_reset_settles(const struct server *s)
{
    const struct login_reset *lr = &s->login_reset;
    if (lr->state == LOGIN_RESET_RESTORING)
        return s->swallow == 1;
    /* (ahead counts a request whose ReadyForQuery never comes if the last one is here) */
    return lr->state == LOGIN_RESET_AWAITING_REPLY && s->swallow == 0 &&
           (lr->ahead == 0 || s->inflight <= 1);
}

/* Tell the client what Postgres would have before this ReadyForQuery: each reported name the
 * server reported while held back, or that the restore may have set, whose value the client was
 * not told last (Postgres reports a value only when it differs from the last one), in Postgres's
 * order. With `settled` false the login parameters reset are left held: what they end as is not
 * known yet (a failed transaction, which only its ROLLBACK ends). */
static void tell_client(struct server *s, struct client *c, bool settled)
{
    struct login_reset *lr = &s->login_reset;
    const char *name;
    for (size_t i = 0; (name = params_reported_name(i)) != NULL; i++) {
        bool restored = c->login_params && params_get(c->login_params, name) &&
                        param_reset_covers(&lr->which, name);
        bool held = lr->held & (1u << i);
        if (!held && !restored)
            continue;
        if (restored && !settled)
            continue;
        lr->held &= (uint16_t) ~(1u << i);
        const char *now = params_get(&s->params, name);
        const char *told = params_get(&c->params, name);
        if (!now || (told && strcmp(told, now) == 0))
            continue;
        codec_put_parameter_status(&c->out, name, now);
        if (params_is_client_settable(name) && params_set(&c->params, name, now) < 0)
            s->close_when_free = true; /* out of memory: what the client has is not known */
    }
}

/* Queue the restore of the login values lr->which covers. False when there is none to send. */
static bool queue_restore(struct server *s, struct client *c)
{
    struct login_reset *lr = &s->login_reset;
    struct param_set restore;
    params_init(&restore);
    bool ok = true;
    for (int i = 0; ok && i < c->login_params->n; i++) {
        const struct param *p = &c->login_params->items[i];
        if (param_reset_covers(&lr->which, p->name))
            ok = params_set(&restore, p->name, p->value) == 0;
    }
    struct msg_out sql;
    codec_out_init(&sql);
    int n = ok ? params_build_restore(&restore, !lr->which.session_level, &s->params, &sql) : -1;
    if (n > 0) {
        log_client(LOG_DEBUG, c, "S-%s: %s (login values again after a reset)", CONN_ID_TEXT(s->id),
                   (const char *)sql.data);
        server_queue_internal(s, (const char *)sql.data);
    }
    codec_out_free(&sql);
    params_free(&restore);
    if (n < 0)
        s->close_when_free = true; /* out of memory: what the server has is not known */
    return n > 0;
}

/* ---- the read back of SETs ---- */

static void readback_forget(struct login_reset *lr)
{
    params_free(&lr->names);
    lr->readback = SET_READBACK_NONE;
    lr->readback_all = false;
}

/* A request is answered and the hold is over: the next request is followed again only when
 * SETs still wait for their transaction's end (it may be the COMMIT). */
static void hold_over(struct login_reset *lr)
{
    if (lr->readback != SET_READBACK_NONE && lr->readback != SET_READBACK_PENDING)
        readback_forget(lr);
    if (lr->readback == SET_READBACK_PENDING) {
        memset(&lr->which, 0, sizeof(lr->which)); /* what a restore gave back stays given */
        lr->state = LOGIN_RESET_IN_REQUEST;
    } else {
        lr->state = LOGIN_RESET_NONE;
    }
}

/* The names a RESET ALL or DISCARD ALL may have changed: every unreported one the client or the
 * server has. 0 or -ENOMEM. */
static int add_every_name(struct param_set *names, const struct param_set *set)
{
    for (int i = 0; i < set->n; i++)
        if (!params_is_reported(set->items[i].name) &&
            params_set(names, set->items[i].name, "") < 0)
            return -ENOMEM;
    return 0;
}

/* Queue the read back of the names the transaction just ended SET. False when there is none. */
static bool queue_readback(struct server *s, struct client *c)
{
    struct login_reset *lr = &s->login_reset;
    int n = 0;
    struct msg_out sql;
    codec_out_init(&sql);
    if (!lr->readback_all || (add_every_name(&lr->names, &c->params) == 0 &&
                              add_every_name(&lr->names, &s->params) == 0))
        n = params_build_readback(&lr->names, buf_block_size() / 2, &sql);
    else
        n = -ENOMEM;
    if (n > 0) {
        log_client(LOG_DEBUG, c, "S-%s: %s (values the client SET)", CONN_ID_TEXT(s->id),
                   (const char *)sql.data);
        server_queue_internal(s, (const char *)sql.data);
        lr->readback = lr->readback == SET_READBACK_RETRY_DUE ? SET_READBACK_READING_AGAIN
                                                              : SET_READBACK_READING;
    }
    codec_out_free(&sql);
    if (n < 0)
        s->close_when_free = true; /* out of memory: what the server has is not known */
    if (n <= 0)
        readback_forget(lr);
    return n > 0;
}

/* How many unreported parameters sluice follows for c beyond those it gave at login. */
static int tracked_count(const struct client *c)
{
    int n = 0;
    for (int i = 0; i < c->params.n; i++) {
        const char *name = c->params.items[i].name;
        n += !params_is_reported(name) && !(c->login_params && params_get(c->login_params, name));
    }
    return n;
}

bool login_reset_can_track(const struct server *s, const struct client *c,
                           const struct param_touch *touch)
{
    if (touch->unnamed)
        return false;
    const struct param_set *pending = &s->login_reset.names;
    int more = 0;
    for (int i = 0; i < pending->n; i++)
        more += !params_get(&c->params, pending->items[i].name);
    for (int i = 0; i < touch->n; i++)
        more += !params_get(&c->params, touch->names[i]) && !params_get(pending, touch->names[i]);
    return more == 0 || tracked_count(c) + more <= SET_TRACKED_MAX;
}

void login_reset_note_set(struct server *s, const struct client *c, const struct param_touch *t)
{
    struct login_reset *lr = &s->login_reset;
    (void)c;
    if (!t->all && t->n == 0)
        return;
    if (lr->state == LOGIN_RESET_NONE) {
        memset(&lr->which, 0, sizeof(lr->which));
        lr->held = 0;
        lr->state = LOGIN_RESET_IN_REQUEST;
    }
    lr->readback = SET_READBACK_PENDING;
    lr->readback_all |= t->all;
    for (int i = 0; i < t->n; i++)
        if (params_set(&lr->names, t->names[i], "") < 0)
            s->close_when_free = true; /* out of memory: the server's values are not followed */
}

bool login_reset_reads_row(const struct server *s)
{
    enum set_readback_state r = s->login_reset.readback;
    return s->login_reset.state == LOGIN_RESET_RESTORING &&
           (r == SET_READBACK_READING || r == SET_READBACK_READING_AGAIN) && s->swallow == 1;
}

/* The DataRow column at *pos of body (len bytes): *v and its length *n (v NULL for SQL NULL),
 * *pos moved past it. False when the row ends first. */
static bool row_column(const uint8_t *body, uint32_t len, uint32_t *pos, const uint8_t **v,
                       int32_t *n)
{
    if (len - *pos < 4)
        return false;
    *n = (int32_t)codec_get_u32(body + *pos);
    *pos += 4;
    *v = NULL;
    if (*n < 0)
        return true;
    if ((uint32_t)*n > len - *pos)
        return false;
    *v = body + *pos;
    *pos += (uint32_t)*n;
    return true;
}

void login_reset_on_row(struct server *s, struct client *c, const uint8_t *body, uint32_t len)
{
    const uint8_t *name, *value, *at_reset, *too_long;
    int32_t name_len, value_len, at_reset_len, too_long_len;
    uint32_t pos = 2;
    if (!body || len < 2 || ((body[0] << 8) | body[1]) != 4 ||
        !row_column(body, len, &pos, &name, &name_len) ||
        !row_column(body, len, &pos, &value, &value_len) ||
        !row_column(body, len, &pos, &at_reset, &at_reset_len) ||
        !row_column(body, len, &pos, &too_long, &too_long_len) || !name || !at_reset ||
        at_reset_len < 1 || !too_long || too_long_len < 1 || memchr(name, '\0', (size_t)name_len) ||
        (value && memchr(value, '\0', (size_t)value_len))) {
        /* The client keeps what sluice knew; the server's record of it is unknown, so the next
         * client's sync puts it back. */
        log_client(LOG_WARNING, c,
                   "S-%s: a value the client SET %s: its next server may not have it",
                   CONN_ID_TEXT(s->id),
                   body ? "came back in a row sluice cannot read"
                        : "is too long for sluice to follow (longer than its buffer, pkt_buf)");
        if (params_forget(&s->params, NULL) < 0)
            s->close_when_free = true;
        return;
    }
    char *key = strndup((const char *)name, (size_t)name_len);
    char *copy = value ? strndup((const char *)value, (size_t)value_len) : NULL;
    if (!key || (value && !copy)) {
        free(key);
        free(copy);
        s->close_when_free = true; /* out of memory: what the server has is not known */
        return;
    }
    bool login = c->login_params && params_get(c->login_params, key);
    if (too_long[0] == 't') {
        /* Not carried (a row must fit sluice's buffer): the client's next server gives it its
         * login value or default, as before sluice followed any SET, rather than a value it
         * replaced. */
        log_client(LOG_WARNING, c,
                   "S-%s: the value the client SET for %s is longer than %u bytes (half of "
                   "pkt_buf): its next server gives it the login value or default",
                   CONN_ID_TEXT(s->id), key, buf_block_size() / 2);
        const char *fallback = login ? params_get(c->login_params, key) : NULL;
        if (params_set(&c->params, key, fallback) < 0 || params_forget(&s->params, key) < 0)
            s->close_when_free = true;
        free(key);
        free(copy);
        return;
    }
    /* Back at the backend's reset value (RESET, SET TO DEFAULT, a ROLLBACK of the SET): every
     * backend of the pool has that one, so the client needs none, and the server holds none of
     * sluice's. A login value stays the client's. */
    const char *keep = (value && (at_reset[0] != 't' || login)) ? copy : NULL;
    /* A name new to the client past the bound (a RESET ALL read the server's record too: a
     * placeholder SET past the bound is '' now) stays the server's alone: a lease RESETs it. */
    bool room = !keep || login || params_get(&c->params, key) || tracked_count(c) < SET_TRACKED_MAX;
    if ((room && params_set(&c->params, key, keep) < 0) || params_set(&s->params, key, keep) < 0)
        s->close_when_free = true; /* out of memory: what the server has is not known */
    free(key);
    free(copy);
}

bool login_reset_on_ready(struct server *s, struct client *c, char status)
{
    struct login_reset *lr = &s->login_reset;
    if (lr->state != LOGIN_RESET_AWAITING_REPLY)
        return false;
    if (lr->ahead > 0 && s->inflight > 0) {
        lr->ahead--; /* a request sent before it */
        return false;
    }
    if (status == 'E' || s->inflight > 0 || s->batch_open) {
        /* A failed transaction: what the reset left shows once it ends (ROLLBACK, or ROLLBACK TO
         * SAVEPOINT), and no query can run before. (More in flight: the client sent it past
         * the wait, inside an open batch.) The next request settles it. */
        tell_client(s, c, false);
        lr->state = LOGIN_RESET_IN_REQUEST;
        return false;
    }
    /* The restore first, in the client's transaction: the read back sees the login values. A
     * SET inside a transaction block is read once the block ends (a ROLLBACK undoes it, and the
     * read then sees the value before it). */
    bool restoring = c->login_params && queue_restore(s, c);
    bool reading = status == 'I' && lr->readback == SET_READBACK_PENDING && queue_readback(s, c);
    if (!restoring && !reading) {
        tell_client(s, c, true);
        hold_over(lr);
        return false;
    }
    lr->restoring = restoring;
    lr->state = LOGIN_RESET_RESTORING;
    return true;
}

void login_reset_on_internal_ready(struct server *s, struct client *c, char status)
{
    if (s->login_reset.state != LOGIN_RESET_RESTORING || s->swallow > 0)
        return;
    /* The read back failed once: the client's request had completed (it was told SET), so the
     * values are read again before it is answered; queue_readback forgets them if it cannot. */
    if (s->login_reset.readback == SET_READBACK_RETRY_DUE && status == 'I' &&
        queue_readback(s, c))
        return;
    tell_client(s, c, true);
    codec_put_ready(&c->out, status);
    hold_over(&s->login_reset);
    s->timeout_cancel_sent = false; /* the client's request ends here, not at its own reply */
}

bool login_reset_on_internal_error(struct server *s, struct client *c, const uint8_t *body,
                                   uint32_t len)
{
    struct login_reset *lr = &s->login_reset;
    if (lr->state != LOGIN_RESET_RESTORING)
        return false;
    if (login_reset_reads_row(s)) {
        /* The read back failed (a cancel landed on it: the client's own, sent as its request
         * completed, or query_timeout's): it ran alone, outside the client's transaction, which
         * it failed in nothing. The server's values are unknown to sluice now (relay.c), so the
         * next client's sync puts them back; the first time, it is read again. */
        struct error_fields ef;
        bool parsed = codec_parse_error(body, len, &ef);
        if (lr->readback == SET_READBACK_READING) {
            log_client(LOG_DEBUG, c, "S-%s: reading the values the client SET failed (%s): again",
                       CONN_ID_TEXT(s->id), parsed && ef.sqlstate ? ef.sqlstate : "");
            lr->readback = SET_READBACK_RETRY_DUE;
            return true;
        }
        /* The client keeps what sluice knew. */
        log_client(LOG_WARNING, c,
                   "S-%s: reading the values the client SET failed twice (%s %s): its next "
                   "server may not have them",
                   CONN_ID_TEXT(s->id), parsed && ef.sqlstate ? ef.sqlstate : "",
                   parsed && ef.message ? ef.message : "");
        return true;
    }
    /* The restore's replies come before the read back's, when both run. */
    int restore_at = lr->readback == SET_READBACK_READING ? 2 : 1;
    if (!lr->restoring || s->swallow != restore_at)
        return false;
    /* The restore ran in the client's transaction and failed it (a cancel that landed on it,
     * query_timeout's or the client's own, or a login value Postgres no longer takes): the
     * client gets the ReadyForQuery 'E' it is held for, so it gets the reason too. */
    codec_begin(&c->out, 'E');
    codec_put_bytes(&c->out, body, len);
    codec_end(&c->out);
    return true;
}

void login_reset_clear(struct server *s)
{
    params_free(&s->login_reset.names);
    memset(&s->login_reset, 0, sizeof(s->login_reset));
    s->login_reset.state = LOGIN_RESET_NONE;
}

/* ---- statements that reset ---- */

/* Few: a client prepares a reset under a handful of names at most. Past the array every named
 * statement counts as one that resets (it costs a round trip, nothing else). */
#define RESET_STATEMENTS_MAX 8

enum reset_statements_extent {
    RESET_STATEMENTS_LISTED, /* names[] are all */
    RESET_STATEMENTS_ANY,    /* too many were seen: any statement may */
};

struct login_reset_statements {
    enum reset_statements_extent extent;
    int n;
    char *names[RESET_STATEMENTS_MAX];
    struct param_reset resets[RESET_STATEMENTS_MAX]; /* what names[i] resets when it runs */
};

int login_reset_count(const struct server *s)
{
    return s->login_reset.state == LOGIN_RESET_NONE ? 0 : s->login_reset.which.statements;
}

static int find_statement(const struct login_reset_statements *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->names[i], name) == 0)
            return i;
    return -1;
}

void login_reset_on_parse(struct client *c, const struct server *s, const uint8_t *body,
                          uint32_t avail, int count_before)
{
    const char *name = (const char *)body;
    bool resets = login_reset_count(s) > count_before;
    struct login_reset_statements *l = c->reset_statements;
    if (!memchr(body, '\0', avail)) {
        if (resets && (l || (l = c->reset_statements = calloc(1, sizeof(*l)))))
            l->extent = RESET_STATEMENTS_ANY; /* its name is not here to see */
        return;
    }
    int at = l ? find_statement(l, name) : -1;
    if (!resets) {
        /* The unnamed statement is replaced by each Parse. A named one is only after a Close or
         * DEALLOCATE (a Parse of a name in use fails): the name stays listed, which costs a
         * round trip at most. */
        if (at >= 0 && name[0] == '\0') {
            free(l->names[at]);
            l->n--;
            l->names[at] = l->names[l->n];
            l->resets[at] = l->resets[l->n];
        }
        return;
    }
    if (at >= 0) {
        l->resets[at] = s->login_reset.last; /* the unnamed one parsed again, or a name reused */
        return;
    }
    if (!l && !(l = c->reset_statements = calloc(1, sizeof(*l))))
        return; /* out of memory: not followed again (its first run was) */
    char *copy = l->n < RESET_STATEMENTS_MAX ? strdup(name) : NULL;
    if (!copy) {
        l->extent = RESET_STATEMENTS_ANY;
        return;
    }
    l->resets[l->n] = s->login_reset.last;
    l->names[l->n++] = copy;
}

void login_reset_on_bind(struct server *s, const struct client *c, const uint8_t *body,
                         uint32_t avail)
{
    const struct login_reset_statements *l = c->reset_statements;
    if (!l)
        return;
    const uint8_t *portal_end = memchr(body, '\0', avail);
    const uint8_t *stmt = portal_end ? portal_end + 1 : NULL;
    bool named_here = stmt && memchr(stmt, '\0', avail - (uint32_t)(stmt - body));
    int at = named_here ? find_statement(l, (const char *)stmt) : -1;
    if (l->extent == RESET_STATEMENTS_ANY || !named_here)
        login_reset_note_unseen(s, c); /* (a listed name may have been parsed again unseen) */
    else if (at >= 0)
        login_reset_note(s, c, &l->resets[at]);
}

void login_reset_free_statements(struct client *c)
{
    struct login_reset_statements *l = c->reset_statements;
    if (!l)
        return;
    for (int i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l);
    c->reset_statements = NULL;
}
