/* admin_command: parse one admin console query (see admin_command.h).
 *
 * A small lexer cuts the query into words, "quoted identifiers", 'string literals', '=' and ';'
 * (skipping blanks and SQL comments); the parser then matches the words against the grammar:
 *
 *   SHOW <what> | PAUSE [db] | RESUME [db] | RECONNECT [db] | WAIT_CLOSE [db] | KILL db
 *   DISABLE db | ENABLE db | KILL_CLIENT <id> | RELOAD | SUSPEND
 *   SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]
 *   SET key = value | SET key TO value
 *
 * Tokens are spans into the query string; nothing is copied until a command is recognised, and
 * every copy is bounded by its destination. */
#include "admin_command.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conn_id.h"
#include "sql_lex.h"

enum tok_kind { TOK_END, TOK_WORD, TOK_IDENT, TOK_STRING, TOK_EQUALS, TOK_SEMI, TOK_BAD };

struct token {
    enum tok_kind kind;
    const char *start; /* quoted tokens: after the opening quote */
    size_t len;        /* quoted tokens: up to the closing quote, doubled quotes included */
};

#define MAX_TOKENS 6

static bool is_blank(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

static bool is_control(unsigned char ch)
{
    return (ch < 0x20 && !is_blank(ch)) || ch == 0x7f;
}

static bool is_word_char(unsigned char ch)
{
    return ch != '\0' && !is_blank(ch) && !is_control(ch) && ch != ';' && ch != '=' && ch != '"' &&
           ch != '\'';
}

/* Blanks and comments, read as Postgres reads them (sql_lex.c: a -- comment ends at a line feed
 * or a carriage return, C-style comments nest, an unterminated one runs to the end). */
static const char *skip_blanks(const char *p)
{
    return p + sql_skip_space(p, 0, strlen(p));
}

/* Next token at *pp; advances *pp past it. */
static struct token next_token(const char **pp)
{
    const char *p = skip_blanks(*pp);
    struct token t = {TOK_END, p, 0};
    unsigned char ch = (unsigned char)*p;
    if (ch == '\0') {
        *pp = p;
        return t;
    }
    if (ch == ';' || ch == '=') {
        t.kind = ch == ';' ? TOK_SEMI : TOK_EQUALS;
        t.len = 1;
        *pp = p + 1;
        return t;
    }
    if (ch == '"' || ch == '\'') {
        /* SQL quoting: the quote character doubled stands for itself. */
        const char *q = p + 1;
        for (;;) {
            if (*q == '\0') {
                t.kind = TOK_BAD;
                *pp = q;
                return t;
            }
            if ((unsigned char)*q == ch) {
                if ((unsigned char)q[1] == ch) {
                    q += 2;
                    continue;
                }
                break;
            }
            q++;
        }
        t.kind = ch == '"' ? TOK_IDENT : TOK_STRING;
        t.start = p + 1;
        t.len = (size_t)(q - (p + 1));
        *pp = q + 1;
        return t;
    }
    if (is_control(ch)) {
        t.kind = TOK_BAD;
        t.len = 1;
        *pp = p + 1;
        return t;
    }
    const char *q = p;
    while (is_word_char((unsigned char)*q))
        q++;
    t.kind = TOK_WORD;
    t.len = (size_t)(q - p);
    *pp = q;
    return t;
}

/* Copy a token's text into dst (size n), undoubling quotes. false when it does not fit. */
static bool copy_token(const struct token *t, char *dst, size_t n)
{
    size_t o = 0;
    char quote = t->kind == TOK_IDENT ? '"' : t->kind == TOK_STRING ? '\'' : '\0';
    for (size_t i = 0; i < t->len; i++) {
        char ch = t->start[i];
        if (quote && ch == quote)
            i++; /* the second of a doubled pair; the lexer guarantees it exists */
        if (o + 1 >= n)
            return false;
        dst[o++] = ch;
    }
    if (n == 0)
        return false;
    dst[o] = '\0';
    return true;
}

static bool word_is(const struct token *t, const char *keyword)
{
    return t->kind == TOK_WORD && strlen(keyword) == t->len &&
           strncasecmp(t->start, keyword, t->len) == 0;
}

/* For messages: the token as written, shortened, with anything unprintable shown as '?'. */
static void describe_token(const struct token *t, char *out, size_t n)
{
    size_t o = 0;
    size_t len = t->len;
    if (t->kind == TOK_END) {
        snprintf(out, n, "end of query");
        return;
    }
    const char *s = t->start;
    if (t->kind == TOK_IDENT || t->kind == TOK_STRING) {
        s--; /* show the quotes too */
        len += 2;
    }
    bool cut = false;
    if (len > 60) {
        len = 60;
        cut = true;
    }
    for (size_t i = 0; i < len && o + 4 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[o++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (cut && o + 4 < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o < n ? o : n - 1] = '\0';
}

static enum admin_verb fail(struct admin_command *out, enum admin_error e, const char *fmt,
                            const char *arg)
{
    out->verb = ADMIN_INVALID;
    out->error = e;
    snprintf(out->message, sizeof(out->message), fmt, arg ? arg : "");
    return ADMIN_INVALID;
}

static enum admin_verb fail_at(struct admin_command *out, const struct token *t, const char *fmt)
{
    char what[80];
    describe_token(t, what, sizeof(what));
    return fail(out, ADMIN_ERR_SYNTAX, fmt, what);
}

static const struct {
    const char *name;
    enum admin_show show;
} show_names[] = {
    {"HELP", ADMIN_SHOW_HELP},
    {"POOLS", ADMIN_SHOW_POOLS},
    {"CLIENTS", ADMIN_SHOW_CLIENTS},
    {"SERVERS", ADMIN_SHOW_SERVERS},
    {"STATS", ADMIN_SHOW_STATS},
    {"STATS_TOTALS", ADMIN_SHOW_STATS_TOTALS},
    {"STATS_AVERAGES", ADMIN_SHOW_STATS_AVERAGES},
    {"DATABASES", ADMIN_SHOW_DATABASES},
    {"USERS", ADMIN_SHOW_USERS},
    {"CONFIG", ADMIN_SHOW_CONFIG},
    {"LISTS", ADMIN_SHOW_LISTS},
    {"VERSION", ADMIN_SHOW_VERSION},
    {"BUDGETS", ADMIN_SHOW_BUDGETS},
    {"SOCKETS", ADMIN_SHOW_SOCKETS},
    {"ACTIVE_SOCKETS", ADMIN_SHOW_ACTIVE_SOCKETS},
    {"PEERS", ADMIN_SHOW_PEERS},
    {"PEER_POOLS", ADMIN_SHOW_PEER_POOLS},
    {"MEM", ADMIN_SHOW_MEM},
};

const char *admin_show_name(enum admin_show s)
{
    for (size_t i = 0; i < sizeof(show_names) / sizeof(show_names[0]); i++) {
        if (show_names[i].show == s)
            return show_names[i].name;
    }
    return "?";
}

static const struct {
    const char *name;
    enum admin_verb verb;
    int min_args, max_args;
} verbs[] = {
    {"SHOW", ADMIN_SHOW, 1, 1},
    {"PAUSE", ADMIN_PAUSE, 0, 1},
    {"RESUME", ADMIN_RESUME, 0, 1},
    {"RECONNECT", ADMIN_RECONNECT, 0, 1},
    {"WAIT_CLOSE", ADMIN_WAIT_CLOSE, 0, 1},
    {"KILL", ADMIN_KILL, 1, 1},
    {"KILL_CLIENT", ADMIN_KILL_CLIENT, 1, 1},
    {"RELOAD", ADMIN_RELOAD, 0, 0},
    {"SHUTDOWN", ADMIN_SHUTDOWN, 0, 1},
    {"SET", ADMIN_SET, 3, 3},
    {"DISABLE", ADMIN_DISABLE, 1, 1},
    {"ENABLE", ADMIN_ENABLE, 1, 1},
    {"SUSPEND", ADMIN_SUSPEND, 0, 0},
};

const char *admin_verb_tag(enum admin_verb v)
{
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (verbs[i].verb == v)
            return verbs[i].name;
    }
    return v == ADMIN_EMPTY ? "" : "?";
}

bool admin_verb_read_only(enum admin_verb v)
{
    return v == ADMIN_SHOW || v == ADMIN_EMPTY;
}

/* A database name: a word or a "quoted identifier", kept as written. */
static enum admin_verb take_name(struct admin_command *out, const struct token *t)
{
    if (t->kind != TOK_WORD && t->kind != TOK_IDENT)
        return fail_at(out, t, "expected a database name, found %s");
    if (!copy_token(t, out->name, sizeof(out->name)))
        return fail(out, ADMIN_ERR_SYNTAX, "name too long (at most %s bytes)", "127");
    if (out->name[0] == '\0')
        return fail(out, ADMIN_ERR_SYNTAX, "empty name%s", NULL);
    out->has_name = true;
    return out->verb;
}

static enum admin_verb parse_show(struct admin_command *out, const struct token *t)
{
    if (t->kind != TOK_WORD)
        return fail_at(out, t, "SHOW of what? found %s (SHOW HELP lists the choices)");
    for (size_t i = 0; i < sizeof(show_names) / sizeof(show_names[0]); i++) {
        if (word_is(t, show_names[i].name)) {
            out->show = show_names[i].show;
            return out->verb;
        }
    }
    char what[80];
    describe_token(t, what, sizeof(what));
    return fail(out, ADMIN_ERR_UNKNOWN_OBJECT, "SHOW %s: no such list (SHOW HELP lists them)",
                what);
}

static enum admin_verb parse_client_id(struct admin_command *out, const struct token *t)
{
    if (t->kind != TOK_WORD || !conn_id_parse(t->start, t->len, &out->client_id))
        return fail_at(out, t,
                       "KILL_CLIENT needs a client id (the id or ptr column of SHOW CLIENTS, "
                       "or the id a log line writes after C-), found %s");
    return out->verb;
}

static enum admin_verb parse_set(struct admin_command *out, const struct token *args)
{
    const struct token *key = &args[0], *op = &args[1], *val = &args[2];
    if (key->kind != TOK_WORD && key->kind != TOK_IDENT)
        return fail_at(out, key, "SET needs a key name, found %s");
    if (op->kind != TOK_EQUALS && !word_is(op, "TO"))
        return fail_at(out, op, "SET key = value: expected = or TO, found %s");
    if (val->kind != TOK_WORD && val->kind != TOK_STRING && val->kind != TOK_IDENT)
        return fail_at(out, val, "SET key = value: expected a value, found %s");
    if (!copy_token(key, out->name, sizeof(out->name)) || out->name[0] == '\0')
        return fail(out, ADMIN_ERR_SYNTAX, "SET: bad key name%s", NULL);
    if (!copy_token(val, out->value, sizeof(out->value)))
        return fail(out, ADMIN_ERR_SYNTAX, "SET: value too long (at most %s bytes)", "2047");
    out->has_name = true;
    return out->verb;
}

enum admin_verb admin_parse_command(const char *sql, struct admin_command *out)
{
    memset(out, 0, sizeof(*out));
    if (!sql)
        return fail(out, ADMIN_ERR_SYNTAX, "no query%s", NULL);
    if (strnlen(sql, ADMIN_QUERY_MAX + 1) > ADMIN_QUERY_MAX)
        return fail(out, ADMIN_ERR_SYNTAX,
                    "query too long for the admin console (at most %s "
                    "bytes)",
                    "8192");

    struct token toks[MAX_TOKENS];
    int n = 0;
    const char *p = sql;
    for (;;) {
        struct token t = next_token(&p);
        if (t.kind == TOK_END)
            break;
        if (t.kind == TOK_BAD) {
            if (*t.start == '"' || *t.start == '\'')
                return fail(out, ADMIN_ERR_SYNTAX, "unterminated quoted string%s", NULL);
            return fail(out, ADMIN_ERR_SYNTAX, "unexpected control character in the query%s", NULL);
        }
        if (t.kind == TOK_SEMI) {
            /* Only semicolons and blanks may follow the first semicolon. */
            struct token rest;
            do
                rest = next_token(&p);
            while (rest.kind == TOK_SEMI);
            if (rest.kind != TOK_END)
                return fail(out, ADMIN_ERR_SYNTAX,
                            "one command per query: the admin console does not run several%s",
                            NULL);
            break;
        }
        if (n == MAX_TOKENS)
            return fail_at(out, &t, "too many words; the command ends before %s");
        toks[n++] = t;
    }
    if (n == 0) {
        out->verb = ADMIN_EMPTY;
        return ADMIN_EMPTY;
    }
    if (toks[0].kind != TOK_WORD)
        return fail_at(out, &toks[0], "expected a command, found %s (SHOW HELP lists them)");
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (!word_is(&toks[0], verbs[i].name))
            continue;
        out->verb = verbs[i].verb;
        int nargs = n - 1;
        if (nargs < verbs[i].min_args) {
            struct token end = {TOK_END, "", 0};
            char fmt[128];
            snprintf(fmt, sizeof(fmt), "%s: missing argument before %%s", verbs[i].name);
            return fail_at(out, &end, fmt);
        }
        if (nargs > verbs[i].max_args) {
            char fmt[128];
            snprintf(fmt, sizeof(fmt), "%s: unexpected %%s", verbs[i].name);
            return fail_at(out, &toks[1 + verbs[i].max_args], fmt);
        }
        switch (out->verb) {
        case ADMIN_SHOW:
            return parse_show(out, &toks[1]);
        case ADMIN_KILL_CLIENT:
            return parse_client_id(out, &toks[1]);
        case ADMIN_SET:
            return parse_set(out, &toks[1]);
        case ADMIN_SHUTDOWN:
            if (nargs == 0)
                return out->verb;
            if (word_is(&toks[1], "WAIT_FOR_SERVERS"))
                out->shutdown = ADMIN_SHUTDOWN_WAIT_FOR_SERVERS;
            else if (word_is(&toks[1], "WAIT_FOR_CLIENTS"))
                out->shutdown = ADMIN_SHUTDOWN_WAIT_FOR_CLIENTS;
            else
                return fail_at(out, &toks[1],
                               "SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]: "
                               "unexpected %s");
            return out->verb;
        case ADMIN_RELOAD:
        case ADMIN_SUSPEND:
            return out->verb;
        default: /* [db] or db */
            return nargs == 0 ? out->verb : take_name(out, &toks[1]);
        }
    }
    char what[80];
    describe_token(&toks[0], what, sizeof(what));
    return fail(out, ADMIN_ERR_SYNTAX, "unknown command %s (SHOW HELP lists them)", what);
}
