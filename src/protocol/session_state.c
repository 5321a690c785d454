/* session_state: detection of session-level SQL (see session_state.h). It looks at the start of
 * each statement (split on ';' outside literals, quoted names and comments, as Postgres's lexer
 * splits: sql_lex.h) and for the session advisory-lock functions and
 * set_config anywhere; false negatives are possible (a function that runs SET or set_config
 * inside, dynamic SQL, a function's own SET clause), false positives are not expected for
 * ordinary queries. */
#include "session_state.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "params.h"
#include "siphash.h"
#include "sql_lex.h"

/* Does a keyword (case-insensitive, whole word) start at s[i]? Advances *pi past it and spaces. */
static bool keyword(const char *s, size_t *pi, size_t len, const char *kw)
{
    size_t n = strlen(kw), i = *pi;
    if (i + n > len || strncasecmp(s + i, kw, n) != 0)
        return false;
    if (i + n < len && (isalnum((unsigned char)s[i + n]) || s[i + n] == '_'))
        return false;
    *pi = sql_skip_space(s, i + n, len);
    return true;
}

static void touch_all(struct param_touch *t)
{
    if (t)
        t->all = true;
}

/* A change sluice cannot name (session_state.h): the server is reset before it serves again. */
static void touch_unnamed(struct param_touch *t)
{
    if (t)
        t->all = t->unnamed = true;
}

/* Record that an unreported parameter may have changed; a name too long or one too many makes
 * it "unnamed" (resetting more than needed is safe, less is not). The role a session runs as
 * is no parameter a client's sync could put back. */
static void touch_name(struct param_touch *t, const char *name, size_t n)
{
    if (!t || n == 0)
        return;
    char lower[sizeof(t->names[0])];
    if (n >= sizeof(lower) || t->n == PARAM_TOUCH_SET_NAMES) {
        touch_unnamed(t);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)name[i] >= 0x80) {
            /* The name's bytes are in the client's encoding, which the next client's RESET of
             * it need not share: only a full reset undoes it for sure. */
            touch_unnamed(t);
            return;
        }
        lower[i] = (char)tolower((unsigned char)name[i]);
    }
    lower[n] = '\0';
    if (params_is_identity(lower)) {
        touch_unnamed(t);
        return;
    }
    if (params_is_reported(lower))
        return;
    memcpy(t->names[t->n++], lower, n + 1);
}

/* A statement returns a parameter (name, n bytes; NULL: all of them) to its reset value. */
static void reset_to_default(struct param_touch *t, const char *name, size_t n, bool session_level)
{
    if (!t)
        return;
    struct param_reset *r = &t->reset;
    r->statements++;
    r->session_level |= session_level;
    if (!name) {
        r->kind = PARAM_RESET_ALL; /* whatever came before, every value is the reset one */
        return;
    }
    if (r->kind == PARAM_RESET_ALL || r->kind == PARAM_RESET_UNSURE)
        return;
    if (n >= sizeof(r->names[0]) || r->n == PARAM_TOUCH_NAMES) {
        r->kind = PARAM_RESET_UNSURE;
        return;
    }
    for (size_t i = 0; i < n; i++)
        r->names[r->n][i] = (char)tolower((unsigned char)name[i]);
    r->names[r->n++][n] = '\0';
    r->kind = PARAM_RESET_NAMES;
}

void param_reset_merge(struct param_reset *into, const struct param_reset *r)
{
    if (r->kind == PARAM_RESET_NONE)
        return;
    into->statements += r->statements;
    into->session_level |= r->session_level;
    if (into->kind == PARAM_RESET_ALL || r->kind == PARAM_RESET_ALL ||
        r->kind == PARAM_RESET_UNSURE || into->kind == PARAM_RESET_UNSURE) {
        into->kind = PARAM_RESET_ALL;
        return;
    }
    into->kind = PARAM_RESET_NAMES;
    for (int i = 0; i < r->n; i++) {
        if (param_reset_covers(into, r->names[i]))
            continue;
        if (into->n == PARAM_TOUCH_NAMES) {
            into->kind = PARAM_RESET_ALL;
            return;
        }
        memcpy(into->names[into->n++], r->names[i], sizeof(r->names[i]));
    }
}

bool param_reset_covers(const struct param_reset *r, const char *name)
{
    if (r->kind == PARAM_RESET_ALL)
        return true;
    for (int i = 0; r->kind == PARAM_RESET_NAMES && i < r->n; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return true;
    return false;
}

/* A parameter name as SET and RESET spell it (unquoted; a quoted one is rare enough to count
 * as "all"): the characters of an identifier (a '$' past the first, a byte of a non-ASCII
 * character, as Postgres's scanner takes them) and the '.' between its parts. Returns its
 * length. */
static size_t param_name(const char *s, size_t i, size_t len)
{
    size_t n = 0;
    for (; i + n < len; n++) {
        unsigned char ch = (unsigned char)s[i + n];
        if (!isalnum(ch) && ch != '_' && ch != '.' && ch < 0x80 && (ch != '$' || n == 0))
            break;
    }
    return n;
}

/* Do the characters read as a name that ended at s[i] hold only its first parts? Postgres's
 * grammar joins a name's parts across spaces and comments (`SET app . tenant = 1`, `SET app.
 * tenant = 1` set app.tenant), where sluice would read `app` or `app.`. */
static bool name_continues(const char *s, size_t i, size_t len)
{
    if (i > 0 && s[i - 1] == '.')
        return true;
    size_t next = sql_skip_space(s, i, len);
    return next < len && s[next] == '.';
}

/* Does a name that ended at s[i] end there, as SET spells it (a space, a comment, '=', or the
 * text's end)? A comment separates tokens as a space does (`SET app.x-- c` LF `= 1` sets app.x; a
 * '.' after it, name_continues). Anything else (app."X", more parts after a space) makes a name
 * sluice does not read. */
static bool name_ends(const char *s, size_t i, size_t len)
{
    if (name_continues(s, i, len))
        return false;
    bool comment =
        i + 1 < len && ((s[i] == '-' && s[i + 1] == '-') || (s[i] == '/' && s[i + 1] == '*'));
    return i >= len || isspace((unsigned char)s[i]) || s[i] == '=' || s[i] == '\0' || comment;
}

/* A name quoted as an identifier ("search_path") or as a plain literal ('search_path'), with
 * quote the quote character: the name's length inside the quotes, 0 when it is not such a name
 * (an escaped quote, characters no parameter name has, no closing quote). */
static size_t quoted_param_name(const char *s, size_t i, size_t len, char quote)
{
    if (i >= len || s[i] != quote)
        return 0;
    size_t n = param_name(s, i + 1, len);
    if (n == 0 || i + 1 + n >= len || s[i + 1 + n] != quote ||
        (i + 2 + n < len && s[i + 2 + n] == quote))
        return 0;
    return n;
}

/* An unquoted parameter name whose parts may be spaced apart, as Postgres's grammar joins them
 * (var_name: ColId | var_name '.' ColId) across spaces and comments: `app . tenant` and
 * `app. tenant` are app.tenant. Writes the joined name into out (cap bytes, NUL-ended) and where it
 * ends into *after. Returns its length; 0 when it is not such a name (a part quoted, or missing
 * after a '.', or too long for out), which sluice then cannot read. */
static size_t joined_param_name(const char *s, size_t i, size_t len, char *out, size_t cap,
                                size_t *after)
{
    size_t n = 0;
    for (;;) {
        size_t k = 0;
        while (i + k < len && s[i + k] != '.' && sql_ident_char(s[i + k]) &&
               (s[i + k] != '$' || k > 0))
            k++;
        if (k == 0 || n + k >= cap) /* the NUL needs a byte too */
            return 0;
        memcpy(out + n, s + i, k);
        n += k;
        i += k;
        size_t dot = sql_skip_space(s, i, len);
        if (dot >= len || s[dot] != '.') {
            out[n] = '\0';
            *after = i;
            return n;
        }
        if (n + 1 >= cap)
            return 0;
        out[n++] = '.';
        i = sql_skip_space(s, dot + 1, len);
    }
}

/* A word of SET's or RESET's own grammar (LOCAL, SESSION, TIME ZONE, ROLE, ...) at s[*pi], and
 * not the first part of a parameter's name: `SET local.x = 1` (or `local . x`, a comment before
 * the dot) sets the placeholder local.x for the session. */
static bool set_word(const char *s, size_t *pi, size_t len, const char *kw)
{
    size_t n = strlen(kw);
    if (*pi + n <= len && name_continues(s, *pi + n, len))
        return false;
    return keyword(s, pi, len, kw);
}

/* SET [LOCAL | SESSION] name TO DEFAULT, SET TIME ZONE DEFAULT | LOCAL (after SET and its scope
 * word): a reset of that name. */
static void set_to_default(const char *s, size_t i, size_t len, struct param_touch *t,
                           bool session_level)
{
    if (set_word(s, &i, len, "time")) {
        if (keyword(s, &i, len, "zone") &&
            (keyword(s, &i, len, "default") || set_word(s, &i, len, "local")) && i >= len)
            reset_to_default(t, "timezone", 8, session_level);
        return;
    }
    char joined[64];
    size_t v = i;
    const char *name = joined;
    size_t n = joined_param_name(s, i, len, joined, sizeof(joined), &v);
    if (n == 0) {
        /* "search_path", or a name too long to be followed (reset_to_default: unsure) */
        name = s + i;
        n = param_name(s, i, len);
        if (n == 0 && (n = quoted_param_name(s, i, len, '"')) > 0)
            name = s + i + 1;
        if (n == 0)
            return;
        v = (size_t)(name - s) + n + (name > s + i ? 1 : 0);
    }
    v = sql_skip_space(s, v, len);
    bool to = keyword(s, &v, len, "to");
    if (!to && v < len && s[v] == '=') {
        v = sql_skip_space(s, v + 1, len);
        to = true;
    }
    if (to && keyword(s, &v, len, "default") && v >= len)
        reset_to_default(t, name, n, session_level); /* SET name TO DEFAULT is RESET name */
}

/* Is the name at s[i] (plain, or quoted as an identifier) search_path? */
static bool search_path_at(const char *s, size_t i, size_t len)
{
    size_t at = i, n = param_name(s, i, len);
    if (n == 0 && (n = quoted_param_name(s, i, len, '"')) > 0)
        at = i + 1;
    return n == strlen("search_path") && strncasecmp(s + at, "search_path", n) == 0;
}

/* SET [LOCAL | SESSION] search_path ..., SET SCHEMA '...' (s[i]: past SET): does the value name
 * the temporary schema (session_state.h, temp_schema)? */
static bool set_names_temp_schema(const char *s, size_t i, size_t len)
{
    (void)(set_word(s, &i, len, "local") || set_word(s, &i, len, "session"));
    if (!set_word(s, &i, len, "schema") && !search_path_at(s, i, len))
        return false;
    return sql_names_temp_schema(s + i, len - i);
}

/* SET [LOCAL | SESSION] seed ... (s[i]: past SET)? The parameter seed calls setseed as it is
 * set (even SET LOCAL: the seed outlives the transaction), and RESET does not call it back. */
static bool set_seeds_random(const char *s, size_t i, size_t len)
{
    (void)(set_word(s, &i, len, "local") || set_word(s, &i, len, "session"));
    size_t at = i, n = param_name(s, i, len);
    if (n == 0 && (n = quoted_param_name(s, i, len, '"')) > 0)
        at = i + 1;
    return n == strlen("seed") && strncasecmp(s + at, "seed", n) == 0;
}

/* SET [SESSION] name ...: a parameter sluice does not see change (not reported)? */
static bool untracked_set(const char *s, size_t i, size_t len, struct param_touch *t)
{
    if (set_word(s, &i, len, "local")) {
        set_to_default(s, i, len, t, false);
        return false;
    }
    if (set_word(s, &i, len, "transaction"))
        return false;
    (void)set_word(s, &i, len, "session");
    set_to_default(s, i, len, t, true);
    if (set_word(s, &i, len, "characteristics")) {
        /* SET SESSION CHARACTERISTICS AS TRANSACTION ...: the session's defaults for the next
         * transactions, by their own names (default_transaction_read_only is reported). A
         * touch_all would read back only the names the client or server has already. */
        touch_name(t, "default_transaction_isolation", strlen("default_transaction_isolation"));
        touch_name(t, "default_transaction_deferrable",
                   strlen("default_transaction_deferrable"));
        return true;
    }
    if (set_word(s, &i, len, "xml")) {
        touch_name(t, "xmloption", strlen("xmloption")); /* SET XML OPTION DOCUMENT */
        return true;
    }
    if (set_word(s, &i, len, "authorization") || set_word(s, &i, len, "role")) {
        touch_unnamed(t); /* who the session runs as, and with it many a default */
        return true;
    }
    if (set_word(s, &i, len, "time"))
        return false; /* SET TIME ZONE: TimeZone is reported */
    if (set_word(s, &i, len, "names"))
        return false; /* client_encoding */
    if (set_word(s, &i, len, "schema")) {
        touch_name(t, "search_path", strlen("search_path")); /* SET SCHEMA 'x' */
        return true;
    }
    char name[64];
    size_t after = i;
    size_t n = joined_param_name(s, i, len, name, sizeof(name), &after);
    if (n == 0 && (n = quoted_param_name(s, i, len, '"')) > 0 && n < sizeof(name)) {
        after = i + n + 2; /* SET "search_path" ...: the name inside the quotes */
        memcpy(name, s + i + 1, n);
        name[n] = '\0';
    }
    /* "local".x, app."X": a name of parts quoted apart is not read */
    if (n == 0 || n >= sizeof(name) || !name_ends(s, after, len)) {
        touch_unnamed(t);
        return true;
    }
    if (params_is_reported(name) && !params_is_identity(name))
        return false;
    touch_name(t, name, n);
    return true;
}

/* RESET name | RESET ALL | RESET ROLE | RESET SESSION AUTHORIZATION: back to the value the
 * session started with, which on a pooled backend is not the client's. */
static void reset_statement(const char *s, size_t i, size_t len, struct param_touch *t)
{
    if (set_word(s, &i, len, "all")) {
        touch_all(t);
        reset_to_default(t, NULL, 0, true);
        return;
    }
    if (set_word(s, &i, len, "role") || set_word(s, &i, len, "session")) {
        touch_all(t);
        return;
    }
    if (set_word(s, &i, len, "time") && keyword(s, &i, len, "zone")) {
        reset_to_default(t, "timezone", 8, true);
        return;
    }
    char name[64];
    size_t end = i;
    size_t n = joined_param_name(s, i, len, name, sizeof(name), &end);
    if (n == 0 ||
        !(end >= len || isspace((unsigned char)s[end]) || s[end] == ';' || s[end] == '\0')) {
        touch_all(t);
    } else {
        touch_name(t, name, n);
        reset_to_default(t, name, n, true);
    }
}

static enum session_feature statement_keyword_feature(const char *s, size_t i, size_t len,
                                                      struct param_touch *t, unsigned reading);

/* Does the statement s[i..len) make temporary objects other than by CREATE TEMP: a
 * SELECT ... INTO TEMP, or a name in the temporary schema (pg_temp.x, "pg_temp".x, the
 * backend's pg_temp_3.x)? Such objects live as long as the backend, and the next client of
 * the server would find them (and read their rows). Literals and comments are skipped; a
 * statement that only reads pg_temp.x counts too (the object is there already). */
static bool makes_temp_objects(const char *s, size_t i, size_t len, unsigned reading)
{
    size_t at = i;
    /* INSERT INTO temp ...: a table may be named temp */
    bool select_into = !keyword(s, &at, len, "insert") && !keyword(s, &at, len, "merge");
    while (i < len) {
        bool ended;
        size_t past = sql_skip_lexeme(s, i, len, reading, &ended, NULL);
        size_t word_end = past;
        if (past == i && sql_ident_char(s[i]) && (i == 0 || !sql_ident_char(s[i - 1])))
            while (word_end < len && sql_ident_char(s[word_end]))
                word_end++;
        if (word_end == i) {
            i++;
            continue;
        }
        /* "pg_temp", or U&"pg_tem\0070" (Postgres decodes the escapes before it looks the
         * schema up) */
        size_t after = word_end;
        bool temp_schema =
            past != i ? s[i] == '"' && ((past - i == 9 && memcmp(s + i, "\"pg_temp\"", 9) == 0) ||
                                        sql_unicode_name_may_hide(s, i, past, len, &after))
                      : sql_temp_schema_word(s + i, word_end - i);
        size_t next = sql_skip_space(s, after, len);
        if (temp_schema && next < len && s[next] == '.')
            return true;
        if (select_into && past == i && word_end - i == 4 && strncasecmp(s + i, "into", 4) == 0) {
            (void)(keyword(s, &next, len, "local") || keyword(s, &next, len, "global"));
            if (keyword(s, &next, len, "temp") || keyword(s, &next, len, "temporary"))
                return true;
        }
        if (!ended)
            return false;
        i = word_end;
    }
    return false;
}

static enum session_feature statement_feature(const char *s, size_t i, size_t len,
                                              struct param_touch *t, unsigned reading)
{
    i = sql_skip_space(s, i, len);
    if (keyword(s, &i, len, "explain")) {
        /* EXPLAIN ANALYZE runs its statement: a CREATE TEMP TABLE ... AS or SELECT INTO too */
        if (i < len && s[i] == '(') {
            while (i < len && s[i] != ')')
                i++;
            i = sql_skip_space(s, i + (i < len), len);
        }
        while (keyword(s, &i, len, "analyze") || keyword(s, &i, len, "analyse") ||
               keyword(s, &i, len, "verbose"))
            ;
    }
    enum session_feature f = statement_keyword_feature(s, i, len, t, reading);
    if (f == SESSION_FEATURE_NONE && makes_temp_objects(s, i, len, reading))
        return SESSION_FEATURE_TEMP_TABLE;
    return f;
}

/* s[i] when no literal, quoted name or comment starts there, else the first byte past the run
 * of them (read as `reading` says); len when the text ends inside one, where Postgres runs
 * nothing of it. */
static size_t skip_lexemes(const char *s, size_t i, size_t len, unsigned reading)
{
    while (i < len) {
        bool ended;
        size_t past = sql_skip_lexeme(s, i, len, reading, &ended, NULL);
        if (past == i)
            return i;
        if (!ended)
            return len;
        i = past;
    }
    return len;
}

/* CREATE TEMP TABLE ... ON COMMIT DROP, from s[i] just past TEMP: the table (with its indexes,
 * sequences and row type) is dropped when its transaction ends, committed or not, so it never
 * reaches the next client: the pattern that suits a transaction pooler costs no reset and
 * meets no session_state_policy. The clause stands before AS (CREATE TABLE AS); literals,
 * quoted names, comments and what is inside parentheses (a column's DEFAULT) are skipped. */
static bool temp_table_dropped_at_commit(const char *s, size_t i, size_t len, unsigned reading)
{
    if (!keyword(s, &i, len, "table"))
        return false;
    int depth = 0;
    for (i = skip_lexemes(s, i, len, reading); i < len; i = skip_lexemes(s, i, len, reading)) {
        if (s[i] == '(' || s[i] == ')') {
            depth += s[i] == '(' ? 1 : -1;
            i++;
            continue;
        }
        if (depth != 0 || !sql_ident_char(s[i]) || (i > 0 && sql_ident_char(s[i - 1]))) {
            i++;
            continue;
        }
        size_t at = i;
        if (keyword(s, &at, len, "as"))
            return false;
        if (keyword(s, &at, len, "on"))
            return keyword(s, &at, len, "commit") && keyword(s, &at, len, "drop");
        while (i < len && sql_ident_char(s[i]))
            i++;
    }
    return false;
}

static enum session_feature statement_keyword_feature(const char *s, size_t i, size_t len,
                                                      struct param_touch *t, unsigned reading)
{
    if (keyword(s, &i, len, "do")) {
        /* an anonymous code block: code sluice does not read, whose dynamic SQL may change
         * the role or anything else (EXECUTE 'SET ROLE ...') */
        touch_unnamed(t);
        return SESSION_FEATURE_NONE;
    }
    if (keyword(s, &i, len, "listen"))
        return SESSION_FEATURE_LISTEN;
    if (keyword(s, &i, len, "load"))
        return SESSION_FEATURE_LOAD;
    if (keyword(s, &i, len, "prepare"))
        return keyword(s, &i, len, "transaction") ? SESSION_FEATURE_NONE
                                                   : SESSION_FEATURE_SQL_PREPARE;
    if (keyword(s, &i, len, "set")) {
        if (t && set_names_temp_schema(s, i, len))
            t->temp_schema = true;
        bool untracked = untracked_set(s, i, len, t);
        if (set_seeds_random(s, i, len))
            return SESSION_FEATURE_RANDOM_SEED;
        return untracked ? SESSION_FEATURE_SET : SESSION_FEATURE_NONE;
    }
    if (keyword(s, &i, len, "reset")) {
        reset_statement(s, i, len, t);
        return SESSION_FEATURE_NONE;
    }
    if (keyword(s, &i, len, "discard")) {
        if (keyword(s, &i, len, "all")) {
            touch_all(t);
            reset_to_default(t, NULL, 0, true);
        }
        return SESSION_FEATURE_NONE;
    }
    if (keyword(s, &i, len, "create")) {
        if (keyword(s, &i, len, "or"))
            (void)keyword(s, &i, len, "replace");
        (void)(keyword(s, &i, len, "local") || keyword(s, &i, len, "global"));
        if (keyword(s, &i, len, "temp") || keyword(s, &i, len, "temporary"))
            return temp_table_dropped_at_commit(s, i, len, reading) ? SESSION_FEATURE_NONE
                                                                    : SESSION_FEATURE_TEMP_TABLE;
        return SESSION_FEATURE_NONE;
    }
    if (keyword(s, &i, len, "declare")) {
        /* DECLARE name [options] CURSOR [WITH HOLD | WITHOUT HOLD] FOR ..., token by token: a
         * comment separates words as a space does, with no space around it */
        while (i < len) {
            size_t j = i;
            if (keyword(s, &j, len, "for"))
                return SESSION_FEATURE_NONE;
            if (keyword(s, &j, len, "with") && keyword(s, &j, len, "hold"))
                return SESSION_FEATURE_HOLD_CURSOR;
            bool ended;
            j = sql_skip_lexeme(s, i, len, SQL_READ_STANDARD, &ended, NULL);
            if (j == i)
                while (j < len && sql_ident_char(s[j]))
                    j++;
            i = sql_skip_space(s, j > i ? j : i + 1, len);
        }
    }
    return SESSION_FEATURE_NONE;
}

/* The end of the argument that starts at s[i]: the ',' or ')' at depth 0 (or len), past
 * literals, quoted names and comments read as `reading` says: a "', true)" inside one is not
 * the call's third argument, which would make a session-wide set_config look local. */
static size_t argument_end(const char *s, size_t i, size_t len, unsigned reading)
{
    int depth = 0;
    for (i = skip_lexemes(s, i, len, reading); i < len; i = skip_lexemes(s, i + 1, len, reading)) {
        char ch = s[i];
        if (ch == '(')
            depth++;
        else if ((ch == ')' && depth-- == 0) || (ch == ',' && depth == 0))
            return i;
    }
    return len;
}

static bool argument_is(const char *s, size_t from, size_t to, const char *word)
{
    from = sql_skip_space(s, from, to);
    while (to > from && isspace((unsigned char)s[to - 1]))
        to--;
    return to - from == strlen(word) && strncasecmp(s + from, word, to - from) == 0;
}

/* Is s[from, to) one plain string literal ('...' with '' inside), spaces around it allowed? */
static bool plain_literal(const char *s, size_t from, size_t to)
{
    size_t i = sql_skip_space(s, from, to);
    if (i >= to || s[i] != '\'')
        return false;
    for (i++; i < to; i++) {
        if (s[i] != '\'')
            continue;
        if (i + 1 < to && s[i + 1] == '\'') {
            i++;
            continue;
        }
        return sql_skip_space(s, i + 1, to) == to;
    }
    return false;
}

/* "set if the server has it", as pg_dump spells it: SELECT set_config(name, '...', false) FROM
 * pg_settings WHERE name = 'restrict_nonsystem_relation_kind'. From s[i] (the ')' that ends the
 * call): where the literal naming the parameter starts (its quote) when the rest of the
 * statement is exactly FROM [pg_catalog.]pg_settings WHERE name = '<name>', else 0. The column
 * `name` can then only be that name. */
static size_t settings_row_name(const char *s, size_t i, size_t len, size_t *n)
{
    i = sql_skip_space(s, i + 1, len);
    if (!keyword(s, &i, len, "from"))
        return 0;
    if (i + 11 <= len && strncasecmp(s + i, "pg_catalog.", 11) == 0)
        i += 11;
    if (!keyword(s, &i, len, "pg_settings") || !keyword(s, &i, len, "where") ||
        !keyword(s, &i, len, "name") || i >= len || s[i] != '=')
        return 0;
    i = sql_skip_space(s, i + 1, len);
    *n = quoted_param_name(s, i, len, '\'');
    if (*n == 0)
        return 0;
    size_t end = sql_skip_space(s, i + *n + 2, len);
    if (end >= len || s[end] == ';' || s[end] == '\0')
        return i;
    *n = 0; /* more follows (OR ...): the name is not that one alone */
    return 0;
}

/* set_config(name, value, is_local) starting at s[i] (the '(' after the function name): session
 * level unless is_local is spelled true. Touches the name when it is a plain literal. */
static bool session_set_config(const char *s, size_t i, size_t len, struct param_touch *t,
                               unsigned reading)
{
    size_t a1 = i + 1, e1 = argument_end(s, a1, len, reading);
    if (e1 >= len || s[e1] != ',')
        return false;
    size_t e2 = argument_end(s, e1 + 1, len, reading);
    if (e2 >= len || s[e2] != ',')
        return false;
    size_t e3 = argument_end(s, e2 + 1, len, reading);
    bool local = argument_is(s, e2 + 1, e3, "true") || argument_is(s, e2 + 1, e3, "'t'") ||
                 argument_is(s, e2 + 1, e3, "'true'") || argument_is(s, e2 + 1, e3, "'on'");
    /* Only a plain literal that is the whole argument names the parameter: E'..', U&'..',
     * $$..$$, 'a'||'b', a column are expressions, and anything may change; but for the column
     * `name` of the one pg_settings row a WHERE names. */
    size_t q = sql_skip_space(s, a1, e1);
    size_t n = quoted_param_name(s, q, e1, '\'');
    if (n > 0 && sql_skip_space(s, q + n + 2, e1) != e1)
        n = 0;
    if (n == 0 && argument_is(s, a1, e1, "name") && e3 < len && s[e3] == ')')
        q = settings_row_name(s, e3, len, &n);
    bool value_literal = plain_literal(s, e1 + 1, e2);
    /* A value that is not a plain literal may be anything, and a name sluice cannot read may
     * be search_path: even for the transaction alone, a temporary table made under it stays. */
    if (t && (n == 0 || search_path_at(s, q + 1, q + 1 + n)) &&
        (!value_literal || sql_names_temp_schema(s + e1 + 1, e2 - e1 - 1)))
        t->temp_schema = true;
    /* A value that is not a plain literal may be NULL, which resets as RESET does. */
    if (!value_literal) {
        if (n > 0)
            reset_to_default(t, s + q + 1, n, !local);
        else
            reset_to_default(t, NULL, 0, !local);
    }
    if (local)
        return false; /* transaction-local, like SET LOCAL */
    char name[64];
    if (n == 0 || n >= sizeof(name)) {
        touch_unnamed(t);
        return true;
    }
    memcpy(name, s + q + 1, n);
    name[n] = '\0';
    if (params_is_reported(name) && !params_is_identity(name))
        return false; /* the server reports it like a SET */
    touch_name(t, name, n);
    return true;
}

/* set_config('seed', ...) (the '(' at s[i]), local or not: it calls setseed (set_seeds_random).
 * A computed name is a SET sluice cannot name: a full reset, which leaves a seed (docs). */
static bool set_config_seeds_random(const char *s, size_t i, size_t len, unsigned reading)
{
    size_t a1 = i + 1, e1 = argument_end(s, a1, len, reading);
    size_t q = sql_skip_space(s, a1, e1);
    size_t n = quoted_param_name(s, q, e1, '\'');
    return n == strlen("seed") && strncasecmp(s + q + 1, "seed", n) == 0 &&
           sql_skip_space(s, q + n + 2, e1) == e1;
}

/* Does feature f say more than `than` of what the server must get before it serves again? A SET
 * (followed) < objects a reset drops < what only closing the server ends: the first of a text's
 * features of the highest rank is the one the text is taken for. */
static bool outranks(enum session_feature f, enum session_feature than)
{
    if (than == SESSION_FEATURE_NONE)
        return true;
    if (than == SESSION_FEATURE_SET)
        return session_feature_leaves_objects(f);
    return session_feature_outlives_reset(f) && !session_feature_outlives_reset(than);
}

/* Is `word` (lower case) at s[i] a whole word, plain (any case) or quoted as an identifier? A
 * function of one argument is called by it with or without a '(' after it: setseed(0.5), or
 * as a field, (0.5::float8).setseed. A column so named is a false alarm. */
static bool function_named_at(const char *s, size_t i, size_t len, const char *word)
{
    size_t n = strlen(word);
    bool quoted = i > 0 && s[i - 1] == '"';
    if (i + n > len || strncasecmp(s + i, word, n) != 0)
        return false;
    if (i > 0 && !quoted && sql_ident_char(s[i - 1]))
        return false;
    if (quoted) /* a quoted identifier is case-sensitive */
        return i + n < len && s[i + n] == '"' && strncmp(s + i, word, n) == 0;
    return i + n >= len || !sql_ident_char(s[i + n]);
}

/* Does `word` (lower case) start at s[i] as a function name, plain or quoted as an identifier
 * ("set_config"), followed by '('? Returns where the '(' is, or 0. */
static size_t function_call_at(const char *s, size_t i, size_t len, const char *word)
{
    size_t n = strlen(word);
    bool quoted = i > 0 && s[i - 1] == '"';
    if (i + n > len || strncasecmp(s + i, word, n) != 0)
        return 0;
    if (i > 0 && !quoted && (isalnum((unsigned char)s[i - 1]) || s[i - 1] == '_'))
        return 0;
    size_t j = i + n;
    if (quoted) {
        /* a quoted identifier is case-sensitive: "SET_CONFIG" is another function */
        if (j >= len || s[j] != '"' || strncmp(s + i, word, n) != 0)
            return 0;
        j++;
    }
    j = sql_skip_space(s, j, len);
    return j < len && s[j] == '(' ? j : 0;
}

/* The name `word` (lower case) at s[*pi], as Postgres reads it: plain (any case), quoted
 * ("word"), or a U&"..." name whose escapes spell it. Advances *pi past it and spaces. */
static bool name_is(const char *s, size_t *pi, size_t len, const char *word)
{
    size_t i = *pi, n = strlen(word);
    if (keyword(s, pi, len, word))
        return true;
    if (i + 2 < len && (s[i] | 0x20) == 'u' && s[i + 1] == '&')
        i += 2;
    if (i >= len || s[i] != '"')
        return false;
    bool ended;
    size_t past = sql_skip_lexeme(s, i, len, SQL_READ_STANDARD, &ended, NULL), after = past;
    char name[64];
    bool same = i > *pi ? sql_unicode_name(s, i, past, len, name, sizeof name, &after) ==
                                  SQL_UNICODE_READ &&
                              strcmp(name, word) == 0
                        : past - i == n + 2 && strncmp(s + i + 1, word, n) == 0;
    if (!ended || !same)
        return false;
    *pi = sql_skip_space(s, after, len);
    return true;
}

/* UPDATE [ONLY] [pg_catalog.]pg_settings at s[i] (a word starts there)? The view's rule runs
 * set_config(name, setting, false) for each row: a session-level SET of names sluice cannot
 * read (a WHERE picks them). */
static bool updates_settings(const char *s, size_t i, size_t len)
{
    if (i > 0 && sql_ident_char(s[i - 1]))
        return false;
    if (!keyword(s, &i, len, "update"))
        return false;
    (void)keyword(s, &i, len, "only");
    size_t j = i;
    if (name_is(s, &j, len, "pg_catalog") && j < len && s[j] == '.')
        i = sql_skip_space(s, j + 1, len);
    return name_is(s, &i, len, "pg_settings");
}

/* A call of a function a U&"..." name names (name: as Postgres decodes it), what follows the
 * name at s[j]: set_config (its '(' at s[j]), a session advisory lock or setseed spelled with
 * escapes (U&"set\005fconfig"). The last two take one argument, so they may be called without
 * a '(' after the name: `(1::bigint).pg_advisory_lock` (see session_calls). */
static enum session_feature unicode_call(const char *name, const char *s, size_t j, size_t len,
                                         struct param_touch *t, unsigned reading)
{
    static const char *const locks[] = {"pg_advisory_lock", "pg_advisory_lock_shared",
                                        "pg_try_advisory_lock", "pg_try_advisory_lock_shared"};
    if (strcmp(name, "set_config") == 0 && j < len && s[j] == '(')
        return session_set_config(s, j, len, t, reading) ? SESSION_FEATURE_SET
                                                         : SESSION_FEATURE_NONE;
    for (size_t k = 0; k < sizeof locks / sizeof locks[0]; k++)
        if (strcmp(name, locks[k]) == 0)
            return SESSION_FEATURE_ADVISORY_LOCK;
    if (strcmp(name, "setseed") == 0)
        return SESSION_FEATURE_RANDOM_SEED;
    return SESSION_FEATURE_NONE;
}

/* Function calls anywhere in the text (inside a SELECT, a CTE, ...): session advisory locks,
 * setseed and session-level set_config; an UPDATE of pg_settings, which calls set_config. */
static enum session_feature session_calls(const char *s, size_t len, struct param_touch *t,
                                          unsigned reading)
{
    static const char *const locks[] = {"pg_advisory_lock", "pg_try_advisory_lock"};
    enum session_feature found = SESSION_FEATURE_NONE;
    for (size_t i = 0; i + sizeof "setseed" - 1 <= len; i++) { /* the shortest name looked for */
        /* cheap first test: this runs over every query's text */
        char c0 = (char)(s[i] | 0x20);
        if (c0 == 's') {
            size_t j = function_call_at(s, i, len, "set_config");
            if (j > 0 && session_set_config(s, j, len, t, reading) && found == SESSION_FEATURE_NONE)
                found = SESSION_FEATURE_SET;
            if (j > 0 && set_config_seeds_random(s, j, len, reading) &&
                outranks(SESSION_FEATURE_RANDOM_SEED, found))
                found = SESSION_FEATURE_RANDOM_SEED;
            if (j > 0)
                continue;
            if (outranks(SESSION_FEATURE_RANDOM_SEED, found) &&
                function_named_at(s, i, len, "setseed")) {
                found = SESSION_FEATURE_RANDOM_SEED;
                continue;
            }
        }
        if (i > 0 && s[i] == '"' && s[i - 1] == '&') {
            bool ended;
            size_t past = sql_skip_lexeme(s, i, len, reading, &ended, NULL), after;
            char name[32];
            if (ended &&
                sql_unicode_name(s, i, past, len, name, sizeof name, &after) == SQL_UNICODE_READ) {
                size_t j = sql_skip_space(s, after, len);
                enum session_feature f = unicode_call(name, s, j, len, t, reading);
                if (outranks(f, found))
                    found = f;
            }
            continue;
        }
        if (c0 == 'u' && updates_settings(s, i, len)) {
            touch_unnamed(t);
            if (found == SESSION_FEATURE_NONE)
                found = SESSION_FEATURE_SET;
            continue;
        }
        /* a lock leaves an object behind: it outranks a SET before it (session_state_detect) */
        if (c0 != 'p' || (s[i + 1] | 0x20) != 'g' || s[i + 2] != '_' ||
            session_feature_leaves_objects(found))
            continue;
        for (size_t f = 0; f < 2; f++) {
            size_t n = strlen(locks[f]);
            if (i + n > len || strncasecmp(s + i, locks[f], n) != 0)
                continue;
            /* pg_advisory_lock or pg_advisory_lock_shared, a whole word; not the _xact_
             * variants. No '(' needed: a function of one argument is also called as a field,
             * (1::bigint).pg_advisory_lock. */
            size_t j = i + n;
            if (j + 7 <= len && strncasecmp(s + j, "_shared", 7) == 0)
                j += 7;
            if (j < len && s[j] == '"' && i > 0 && s[i - 1] == '"')
                j++; /* "pg_advisory_lock"(...), quoted as an identifier */
            if (j >= len || !sql_ident_char(s[j]))
                found = SESSION_FEATURE_ADVISORY_LOCK;
        }
    }
    return found;
}

/* session_state_detect with the text read as `reading` says. *whole (may be NULL): false when
 * the text, so read, ends inside a literal or comment (Postgres refuses it whole: none of its
 * statements run). */
static enum session_feature detect_split(const char *sql, size_t len, struct param_touch *touch,
                                         unsigned reading, unsigned *doubts, bool *whole)
{
    memset(touch, 0, sizeof(*touch));
    enum session_feature first = SESSION_FEATURE_NONE;
    size_t end;
    bool ends_outside = true;
    for (size_t start = 0; start <= len; start = end + 1) {
        if (!sql_next_statement(sql, len, start, &end, reading, doubts)) {
            ends_outside = false;
            break;
        }
        int resets = touch->reset.statements;
        enum session_feature f = statement_feature(sql, start, end, touch, reading);
        /* A statement after a reset may read or change what it reset. */
        if (touch->reset.kind != PARAM_RESET_NONE && touch->reset.statements == resets &&
            sql_skip_space(sql, start, end) < end)
            touch->reset.kind = PARAM_RESET_UNSURE;
        if (outranks(f, first))
            first = f;
        if (end < len && sql[end] == '\0')
            break;
    }
    if (whole)
        *whole = ends_outside;
    enum session_feature call = session_calls(sql, len, touch, reading);
    if (outranks(call, first))
        return call;
    return first;
}

bool session_state_may_touch(const char *sql, size_t len)
{
    /* "do" inside longer words too (undo, document): such a text is only read in full */
    static const char *const words[] = {"set",     "listen", "load", "prepare",  "discard",
                                        "declare", "do",     "temp", "advisory", "u&"};
    return sql_words_in(sql, len, words, sizeof(words) / sizeof(words[0])) != 0;
}

/* ---- texts that change nothing, remembered ----
 * Every statement text a client sends passes here, and most are ones it sent before (a
 * driver's unnamed Parse of the same query, an ORM's statements) that change nothing: reading
 * each took about 5% of sluice's CPU per transaction (perf, pgbench -S -M extended, 16
 * clients). A text without any word the read needs takes one pass (session_state_may_touch).
 * One with such a word that was read as changing nothing (an OFFSET, a column named
 * settings) in the standard reading (the only one for a text without a backslash) is
 * remembered byte for byte, per thread (no lock), in a small direct-mapped table: the same
 * bytes read the same way again change nothing again. A text that changes something is read
 * each time. */
#define CLEAN_TEXT_SLOTS 32
#define CLEAN_TEXT_MAX 480

struct clean_text {
    uint16_t len; /* 0: an empty slot */
    char bytes[CLEAN_TEXT_MAX];
};
static _Thread_local struct clean_text clean_texts[CLEAN_TEXT_SLOTS];

enum session_feature session_state_detect(const char *sql, size_t len, struct param_touch *touch,
                                          unsigned reading)
{
    struct param_touch scratch;
    if (!touch)
        touch = &scratch;
    if (!session_state_may_touch(sql, len)) {
        memset(touch, 0, sizeof(*touch));
        return SESSION_FEATURE_NONE;
    }
    struct clean_text *slot = NULL;
    if (reading == SQL_READ_STANDARD && len > 0 && len <= CLEAN_TEXT_MAX) {
        slot = &clean_texts[siphash24(siphash_process_key(), sql, len) % CLEAN_TEXT_SLOTS];
        if (slot->len == len && memcmp(slot->bytes, sql, len) == 0) {
            memset(touch, 0, sizeof(*touch)); /* what the read left for it */
            return SESSION_FEATURE_NONE;
        }
    }
    enum session_feature f = session_state_detect_fully(sql, len, touch, reading);
    static const struct param_touch nothing;
    if (slot && f == SESSION_FEATURE_NONE && memcmp(touch, &nothing, sizeof(nothing)) == 0) {
        memcpy(slot->bytes, sql, len);
        slot->len = (uint16_t)len;
    }
    return f;
}

enum session_feature session_state_detect_fully(const char *sql, size_t len,
                                                struct param_touch *touch, unsigned reading)
{
    struct param_touch scratch, other;
    if (!touch)
        touch = &scratch;
    unsigned doubts = 0;
    enum session_feature f = detect_split(sql, len, touch, reading, &doubts, NULL);
    /* A backslash in a literal that the other standard_conforming_strings, or the other kind
     * of client_encoding (one whose characters may end in 0x5C, or not), takes otherwise: the
     * client may have changed it in a request still in flight, and the text may split
     * elsewhere. Where that reading differs, sluice cannot know what runs: the feature either
     * finds stands, and the parameters are unnamed (only a full reset undoes them). A reading
     * under which the text ends inside a literal runs nothing ('C:\' in a SET under
     * standard_conforming_strings off): it puts nothing in doubt. Both changed at once is not
     * looked for. */
    bool differs = false;
    const unsigned flips[] = {SQL_READ_PLAIN_ESCAPES, SQL_READ_MULTIBYTE};
    for (size_t k = 0; k < sizeof flips / sizeof flips[0]; k++) {
        if (!(doubts & flips[k]))
            continue;
        bool whole;
        enum session_feature g =
            detect_split(sql, len, &other, reading ^ flips[k], NULL, &whole);
        if (!whole || (g == f && memcmp(touch, &other, sizeof other) == 0))
            continue;
        differs = true;
        if (f == SESSION_FEATURE_NONE ||
            (f == SESSION_FEATURE_SET && session_feature_leaves_objects(g)))
            f = g;
    }
    if (!differs)
        return f;
    touch_unnamed(touch);
    return f == SESSION_FEATURE_NONE ? SESSION_FEATURE_SET : f;
}

size_t session_state_feature_start(const char *sql, size_t len)
{
    len = strnlen(sql, len);
    /* Dollar quotes, backslash escapes and comments could hide a ';' from the split below. */
    for (size_t i = 0; i < len; i++)
        if (sql[i] == '$' || sql[i] == '\\' ||
            (i + 1 < len &&
             ((sql[i] == '-' && sql[i + 1] == '-') || (sql[i] == '/' && sql[i + 1] == '*'))))
            return 0;
    size_t end;
    unsigned doubts = 0; /* none: no backslash is in the text (above) */
    for (size_t start = 0;
         start <= len && sql_next_statement(sql, len, start, &end, SQL_READ_STANDARD, &doubts);
         start = end + 1) {
        if (statement_feature(sql, start, end, NULL, SQL_READ_STANDARD) != SESSION_FEATURE_NONE ||
            session_calls(sql + start, end - start, NULL, SQL_READ_STANDARD) !=
                SESSION_FEATURE_NONE)
            return start;
    }
    return 0;
}

bool session_feature_leaves_objects(enum session_feature f)
{
    return f != SESSION_FEATURE_NONE && f != SESSION_FEATURE_SET;
}

bool session_feature_outlives_reset(enum session_feature f)
{
    return f == SESSION_FEATURE_LOAD || f == SESSION_FEATURE_RANDOM_SEED;
}

const char *session_feature_name(enum session_feature f)
{
    switch (f) {
    case SESSION_FEATURE_LISTEN:
        return "LISTEN";
    case SESSION_FEATURE_ADVISORY_LOCK:
        return "a session advisory lock";
    case SESSION_FEATURE_HOLD_CURSOR:
        return "a WITH HOLD cursor";
    case SESSION_FEATURE_TEMP_TABLE:
        return "a temporary table";
    case SESSION_FEATURE_SET:
        return "SET of a parameter sluice cannot track (not reported by Postgres)";
    case SESSION_FEATURE_SQL_PREPARE:
        return "a SQL-level PREPARE";
    case SESSION_FEATURE_LOAD:
        return "LOAD of a shared library";
    case SESSION_FEATURE_RANDOM_SEED:
        return "setseed of the random number generator";
    default:
        return "nothing";
    }
}
