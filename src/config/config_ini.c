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
        load_error(L, "%s is defined twice (first at %sline %d)", where, load_origin(L, dup->file),
                   dup->line);
        return;
    }
    struct user_entry u = {.pool_size = -1,
                           .reserve_pool = -1,
                           .timeouts = ENTRY_TIMEOUTS_UNSET,
                           .line = L->line,
                           .file = L->file};
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

static bool ends_with_comma(const char *text)
{
    size_t n = strlen(text);
    return n > 0 && text[n - 1] == ',';
}

static void on_budget(struct loader *L, const char *name, const char *value)
{
    struct config *c = L->c;
    char where[320];
    snprintf(where, sizeof where, "%sline %d: budget '%s'", L->origin, L->line, name);
    for (int i = 0; i < c->nbudgets; i++) {
        if (strcmp(c->budgets[i].name, name) == 0) {
            load_error(L, "%s is defined twice (first at %sline %d)", where,
                       load_origin(L, c->budgets[i].file), c->budgets[i].line);
            return;
        }
    }
    struct budget_entry b = {.line = L->line, .file = L->file};
    int failed = config_entry_parse(L, ENTRY_BUDGET, &b, where, value) != 0;
    /* A budget's pairs are separated by blanks, as PgBouncer's entries; written with commas
     * ("app=api*, max_clients=5") the matcher took the comma ("api*,"), never matched, and the
     * budget's caps silently applied to no one. No application or role name ends in a comma. */
    const char *comma_ended = !failed && b.app_pattern && ends_with_comma(b.app_pattern) ? "app"
                              : !failed && b.user && ends_with_comma(b.user)             ? "user"
                                                                                         : NULL;
    if (comma_ended) {
        load_error(L,
                   "%s: %s = '%s' ends in a comma: separate a budget's pairs with blanks "
                   "(app=api* max_clients=5)",
                   where, comma_ended, comma_ended[0] == 'a' ? b.app_pattern : b.user);
        failed = 1;
    }
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
        const char *instead = config_keys_pgbouncer_only(name);
        if (instead)
            load_warning(L, "%sline %d: PgBouncer key '%s' is not supported by sluice; ignored%s%s",
                         L->origin, L->line, name, instead[0] ? ": " : "", instead);
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

/* ---- %include ---- */

/* A line's text after "%include" and blanks, when it is an include directive, else NULL. */
static const char *include_directive(const char *line, size_t len, size_t *name_len)
{
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (len - i < 8 || memcmp(line + i, "%include", 8) != 0)
        return NULL;
    i += 8;
    if (i < len && line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\n')
        return NULL; /* "%includes": not the directive (inih hands it to the handler) */
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    size_t end = len;
    while (end > i && isspace((unsigned char)line[end - 1]))
        end--;
    *name_len = end - i;
    return line + i;
}

/* The path an %include names, relative to the directory of the file that names it (as
 * Postgres's include does; PgBouncer takes the working directory, which under systemd is '/'
 * and in a container whatever the image set, so a relative include there works by accident). */
static char *include_path(struct loader *L, const char *includer, const char *name, size_t len)
{
    const char *slash = includer ? strrchr(includer, '/') : NULL;
    size_t dir = name[0] == '/' || !slash ? 0 : (size_t)(slash - includer) + 1;
    char *path = malloc(dir + len + 1);
    if (!path) {
        L->oom = true;
        return NULL;
    }
    if (dir > 0)
        memcpy(path, includer, dir);
    memcpy(path + dir, name, len);
    path[dir + len] = '\0';
    return path;
}

static int add_origin(struct loader *L, const char *path)
{
    char **grown = realloc(L->origins, (size_t)(L->norigins + 1) * sizeof *grown);
    size_t n = path ? strlen(path) + 3 : 1;
    char *origin = malloc(n);
    if (!grown || !origin) {
        if (grown)
            L->origins = grown;
        free(origin);
        L->oom = true;
        return -1;
    }
    L->origins = grown;
    snprintf(origin, n, "%s%s", path ? path : "", path ? ": " : "");
    L->origins[L->norigins] = origin;
    return L->norigins++;
}

/* The file an origin names ("path: " less the ": "), or NULL for text. */
static char *origin_path(struct loader *L, int file)
{
    size_t n = strlen(L->origins[file]);
    if (n < 2)
        return NULL;
    char *path = strndup(L->origins[file], n - 2);
    if (!path)
        L->oom = true;
    return path;
}

/* Reads the file an %include line names; what it holds is read next, as if it stood there. */
static void include(struct loader *L, const char *name, size_t len)
{
    if (len == 0) {
        load_error(L, "%sline %d: %%include names no file", L->origin, L->line);
        return;
    }
    if (L->depth > CONFIG_INCLUDE_DEPTH) {
        load_error(L, "%sline %d: %%include nested more than %d deep (does a file include itself?)",
                   L->origin, L->line, CONFIG_INCLUDE_DEPTH);
        return;
    }
    char *includer = origin_path(L, L->file);
    char *path = include_path(L, includer, name, len);
    free(includer);
    if (!path)
        return;
    char *text = NULL;
    int rc = config_read_text_file(path, &text);
    if (rc != 0) {
        load_error(L, "%sline %d: %%include %s: cannot read it: %s", L->origin, L->line, path,
                   rc == -EINVAL ? "it contains a NUL byte" : strerror(-rc));
        free(path);
        return;
    }
    int file = add_origin(L, path);
    free(path);
    if (file < 0) {
        free(text);
        return;
    }
    L->reading[L->depth++] = (struct ini_text){.next = text, .owned = text, .file = file};
}

/* The text read now: the innermost include with lines left (those read to their end are let
 * go), or NULL at the end of the main text. */
static struct ini_text *text_with_lines(struct loader *L)
{
    while (L->depth > 0) {
        struct ini_text *t = &L->reading[L->depth - 1];
        if (*t->next)
            return t;
        if (L->depth == 1)
            return NULL;
        free(t->owned);
        L->depth--;
    }
    return NULL;
}

static bool note_stream_line(struct loader *L)
{
    struct ini_line_at *grown =
        realloc(L->stream_lines, (size_t)(L->nstream_lines + 1) * sizeof *grown);
    if (!grown) {
        L->oom = true;
        return false;
    }
    L->stream_lines = grown;
    L->stream_lines[L->nstream_lines++] = (struct ini_line_at){.file = L->file, .line = L->line};
    return true;
}

/* inih's line reader over the texts in memory: the main file's, and in place of each %include
 * line the text of the file it names (handed to inih as an empty line, then that file's lines),
 * so a section goes on into an included file and out of it, as in PgBouncer. inih calls the
 * handler for a line before it reads the next, so the file and line set here are the handler's.
 * A line longer than inih's buffer arrives in several calls (inih grows the buffer) and counts
 * once, as inih counts it. */
static char *ini_read_line(char *str, int num, void *stream)
{
    struct loader *L = stream;
    struct ini_text *t = L->mid_line ? &L->reading[L->depth - 1] : text_with_lines(L);
    if (L->mid_line && !*t->next) {
        /* the line filled the buffer to its last byte and its file ends there: NULL ends it
         * for inih (the next text's line is a line of its own) */
        L->mid_line = false;
        return NULL;
    }
    if (!t || !*t->next || num < 2)
        return NULL;
    size_t whole = strcspn(t->next, "\n");
    whole += t->next[whole] == '\n';
    if (!L->mid_line) {
        L->file = t->file;
        L->origin = L->origins[t->file];
        L->line = t->newlines_read + 1;
        if (!note_stream_line(L))
            return NULL;
        size_t name_len;
        const char *name = include_directive(t->next, whole, &name_len);
        if (name) {
            t->newlines_read += t->next[whole - 1] == '\n';
            t->next += whole;
            include(L, name, name_len);
            strcpy(str, "\n");
            return str;
        }
    }
    size_t n = whole < (size_t)num - 1 ? whole : (size_t)num - 1;
    memcpy(str, t->next, n);
    str[n] = '\0';
    t->next += n;
    /* inih asks for more of a line exactly when it filled the buffer without a newline */
    L->mid_line = n == (size_t)num - 1 && str[n - 1] != '\n';
    if (str[n - 1] == '\n')
        t->newlines_read++;
    return str;
}

void config_ini_parse(struct loader *L, const char *path, const char *text)
{
    /* Debian's libinih makes its compile-time options run-time variables. PgBouncer's syntax
     * needs: no inline comments (a ';' may be in a password), no continuation lines (indented
     * keys are ordinary keys), lines of any length (a [databases] entry easily passes the
     * 200-byte default), and value-less lines handed to us (to name them). These are
     * process-wide, so two configs must not be parsed at once in two threads. */
    ini_allow_inline_comments = false;
    ini_allow_multiline = false;
    ini_allow_no_value = true;
    ini_stop_on_first_error = false;
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_initial_alloc = 512;
    ini_max_line = CONFIG_TEXT_MAX + 3; /* no line of a file read is longer: none is ever cut */
    if (add_origin(L, path) != 0)
        return; /* out of memory (the main text is always origin 0) */
    L->reading[0] = (struct ini_text){.next = text, .file = 0};
    L->depth = 1;
    int rc = ini_parse_stream(ini_read_line, L, on_ini_entry, L);
    if (rc == -2) {
        L->oom = true;
    } else if (rc > 0 && rc <= L->nstream_lines) {
        /* only inih's own syntax errors: the handler always returns 1 */
        const struct ini_line_at *at = &L->stream_lines[rc - 1];
        load_error(L, "%sline %d: syntax error: expected '[section]' or 'key = value'",
                   L->origins[at->file], at->line);
    }
    while (L->depth > 1)
        free(L->reading[--L->depth].owned); /* an include left unread: the reader stopped */
    L->depth = 0;
    L->origin = L->origins[0];
    L->file = 0;
    L->line = 0;
}
