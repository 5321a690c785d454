/* config_ini: the INI text through inih, in PgBouncer's syntax: the main section ([sluice] or
 * [pgbouncer]) key by key, [users] and [budgets] entries, and [databases] entries handed to
 * config_db.c; also the key=value syntax every entry's value shares. */
#include "config_load.h"
#include "config_value.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- [users] ---- */

static void on_user(struct loader *L, const char *name, const char *value)
{
    struct config *c = L->c;
    char where[320];
    snprintf(where, sizeof where, "%sline %d: user '%s'", L->origin, L->line, name);
    const struct user_entry *dup = config_find_user(c, name);
    if (dup) {
        load_error(L, "%s is defined twice (first at line %d)", where, dup->line);
        return;
    }
    struct user_entry u = {
        .pool_size = -1, .reserve_pool = -1, .timeouts = ENTRY_TIMEOUTS_UNSET, .line = L->line};
    if (config_entry_parse(L, ENTRY_USER, &u, where, value) != 0 || L->oom)
        return;
    u.name = load_strdup(L, name);
    struct user_entry *grown = realloc(c->users, (size_t)(c->nusers + 1) * sizeof *grown);
    if (!u.name || !grown) {
        free(u.name);
        L->oom = true;
        return;
    }
    c->users = grown;
    c->users[c->nusers++] = u;
}

/* ---- [budgets] ---- */

static void on_budget(struct loader *L, const char *name, const char *value)
{
    struct config *c = L->c;
    char where[320];
    snprintf(where, sizeof where, "%sline %d: budget '%s'", L->origin, L->line, name);
    for (int i = 0; i < c->nbudgets; i++) {
        if (strcmp(c->budgets[i].name, name) == 0) {
            load_error(L, "%s is defined twice (first at line %d)", where, c->budgets[i].line);
            return;
        }
    }
    struct budget_entry b = {.line = L->line};
    int failed = config_entry_parse(L, ENTRY_BUDGET, &b, where, value) != 0;
    if (!failed && b.max_servers > 0 && b.min_servers > b.max_servers) {
        load_error(L, "%s: min_servers %d is above max_servers %d", where, b.min_servers,
                   b.max_servers);
        failed = 1;
    }
    b.name = load_strdup(L, name);
    struct budget_entry *grown =
        failed || L->oom ? NULL : realloc(c->budgets, (size_t)(c->nbudgets + 1) * sizeof *grown);
    if (!grown) {
        if (!failed)
            L->oom = true;
        config_budget_entry_free(&b);
        return;
    }
    c->budgets = grown;
    c->budgets[c->nbudgets++] = b;
}

/* ---- the INI file ---- */

/* PgBouncer's ini format has no comments after a value: "max_db_connections = 80% ; why" sets
 * the whole text. sluice reads it the same way (a ';' may be part of a password or a query), and
 * says so when a value that does not parse looks like it carries one. */
#define INLINE_COMMENT_HINT                                                                        \
    " (';' or '#' after a value is not a comment, in PgBouncer either: put the comment on a line " \
    "of its own)"

static bool looks_like_inline_comment(const char *value)
{
    for (const char *p = value; *p; p++) {
        if ((*p == ';' || *p == '#') && p > value && (p[-1] == ' ' || p[-1] == '\t'))
            return true;
    }
    return false;
}

static void on_main_key(struct loader *L, const char *section, const char *name, const char *value)
{
    int idx = config_keys_find(name);
    if (idx < 0) {
        if (config_keys_pgbouncer_only(name))
            load_warning(L, "%sline %d: PgBouncer key '%s' is not supported by sluice; ignored%s",
                         L->origin, L->line, name,
                         strncasecmp(name, "server_tls", 10) == 0
                             ? " (set sslmode, sslrootcert, ... in each [databases] entry)"
                             : "");
        else
            load_error(L, "%sline %d: unknown key '%s' in [%s]", L->origin, L->line, name, section);
        return;
    }
    char why[256];
    if (config_keys_set(L->c, idx, value, SRC_FILE, CHECK_KEY_ONLY, why, sizeof why) != 0)
        load_error(L, "%sline %d: %s = '%s': %s%s", L->origin, L->line, name, value, why,
                   looks_like_inline_comment(value) ? INLINE_COMMENT_HINT : "");
    else if (idx == KEY_IDX_auth_file && looks_like_inline_comment(value))
        load_warning(L, "%sline %d: auth_file = '%s'%s", L->origin, L->line, value,
                     INLINE_COMMENT_HINT);
}

static int on_ini_entry(void *user, const char *section, const char *name, const char *value)
{
    struct loader *L = user;
    if (strncmp(name, "%include", 8) == 0) {
        load_warning(L, "%sline %d: %%include is not supported by sluice; ignored", L->origin,
                     L->line);
        return 1;
    }
    if (!value) {
        load_error(L, "%sline %d: expected 'key = value' or '[section]'", L->origin, L->line);
        return 1;
    }
    if (section[0] == '\0') {
        load_error(L, "%sline %d: '%s' is outside any section; put it under [sluice]", L->origin,
                   L->line, name);
        return 1;
    }
    if (strcasecmp(section, "sluice") == 0 || strcasecmp(section, "pgbouncer") == 0) {
        on_main_key(L, section, name, value);
    } else if (strcasecmp(section, "databases") == 0) {
        config_db_on_entry(L, name, value);
    } else if (strcasecmp(section, "users") == 0) {
        on_user(L, name, value);
    } else if (strcasecmp(section, "budgets") == 0) {
        on_budget(L, name, value);
    } else if (!L->bad_section || strcmp(L->bad_section, section) != 0) {
        if (strcasecmp(section, "peers") == 0)
            load_warning(L, "%sline %d: section [peers] is not supported by sluice; ignored",
                         L->origin, L->line);
        else
            load_error(L,
                       "%sline %d: unknown section [%s] (expected [sluice] or [pgbouncer], "
                       "[databases], [users], [budgets])",
                       L->origin, L->line, section);
        free(L->bad_section);
        L->bad_section = load_strdup(L, section);
    }
    return 1;
}

/* inih's line reader over the text in memory. inih calls the handler for a line before it reads
 * the next, so counting the newlines handed out gives the handler's line number; a line longer
 * than inih's buffer arrives in several calls and still counts once. */
static char *ini_read_line(char *str, int num, void *stream)
{
    struct loader *L = stream;
    if (!*L->text || num < 2)
        return NULL;
    int n = 0;
    L->line = L->newlines_read + 1;
    while (n < num - 1 && L->text[n]) {
        if (L->text[n++] == '\n')
            break;
    }
    memcpy(str, L->text, (size_t)n);
    str[n] = '\0';
    if (str[n - 1] == '\n')
        L->newlines_read++;
    L->text += n;
    return str;
}

void config_ini_parse(struct loader *L, const char *text)
{
    /* Debian's libinih makes its compile-time options run-time variables. PgBouncer's syntax
     * needs: no inline comments (a ';' may be in a password), no continuation lines (indented
     * keys are ordinary keys), lines of any length (a [databases] entry easily passes the
     * 200-byte default), and value-less lines handed to us (to name them, and to see %include).
     * These are process-wide, so two configs must not be parsed at once in two threads. */
    ini_allow_inline_comments = false;
    ini_allow_multiline = false;
    ini_allow_no_value = true;
    ini_stop_on_first_error = false;
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_initial_alloc = 512;
    size_t len = strlen(text); /* no line is longer than the text: none is ever cut */
    ini_max_line = len < INT_MAX - 3 ? (int)len + 3 : INT_MAX;
    L->text = text;
    L->newlines_read = 0;
    int rc = ini_parse_stream(ini_read_line, L, on_ini_entry, L);
    if (rc == -2)
        L->oom = true;
    else if (rc > 0) /* only inih's own syntax errors: the handler always returns 1 */
        load_error(L, "%sline %d: syntax error: expected '[section]' or 'key = value'", L->origin,
                   rc);
    L->line = 0;
}
