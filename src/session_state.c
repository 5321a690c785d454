/* session_state: detection of session-level SQL (see session_state.h). It looks at the start of
 * each statement (split on ';' outside quotes) and for the session advisory-lock functions
 * anywhere; false negatives are possible (dynamic SQL in functions), false positives are not
 * expected for ordinary queries. */
#include "session_state.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "params.h"

static size_t skip_space(const char *s, size_t i, size_t len)
{
    for (;;) {
        while (i < len && isspace((unsigned char)s[i]))
            i++;
        if (i + 1 < len && s[i] == '-' && s[i + 1] == '-') {
            while (i < len && s[i] != '\n')
                i++;
            continue;
        }
        if (i + 1 < len && s[i] == '/' && s[i + 1] == '*') {
            i += 2;
            while (i + 1 < len && !(s[i] == '*' && s[i + 1] == '/'))
                i++;
            i = i + 2 < len ? i + 2 : len;
            continue;
        }
        return i;
    }
}

/* Does a keyword (case-insensitive, whole word) start at s[i]? Advances *pi past it and spaces. */
static bool keyword(const char *s, size_t *pi, size_t len, const char *kw)
{
    size_t n = strlen(kw), i = *pi;
    if (i + n > len || strncasecmp(s + i, kw, n) != 0)
        return false;
    if (i + n < len && (isalnum((unsigned char)s[i + n]) || s[i + n] == '_'))
        return false;
    *pi = skip_space(s, i + n, len);
    return true;
}

/* SET [SESSION] name ... of a parameter sluice does not see change (not reported). */
static bool untracked_set(const char *s, size_t i, size_t len)
{
    if (keyword(s, &i, len, "local") || keyword(s, &i, len, "transaction"))
        return false;
    (void)keyword(s, &i, len, "session");
    if (keyword(s, &i, len, "characteristics") || keyword(s, &i, len, "authorization") ||
        keyword(s, &i, len, "role"))
        return true;
    if (keyword(s, &i, len, "time"))
        return false; /* SET TIME ZONE: TimeZone is reported */
    if (keyword(s, &i, len, "names"))
        return false; /* client_encoding */
    char name[64];
    size_t n = 0;
    while (i < len && n + 1 < sizeof(name) &&
           (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.'))
        name[n++] = s[i++];
    name[n] = '\0';
    return n > 0 && !params_is_reported(name);
}

static enum session_feature statement_feature(const char *s, size_t i, size_t len)
{
    i = skip_space(s, i, len);
    if (keyword(s, &i, len, "listen"))
        return SESSION_FEATURE_LISTEN;
    if (keyword(s, &i, len, "set"))
        return untracked_set(s, i, len) ? SESSION_FEATURE_SET : SESSION_FEATURE_NONE;
    if (keyword(s, &i, len, "create")) {
        if (keyword(s, &i, len, "or"))
            (void)keyword(s, &i, len, "replace");
        (void)(keyword(s, &i, len, "local") || keyword(s, &i, len, "global"));
        if (keyword(s, &i, len, "temp") || keyword(s, &i, len, "temporary"))
            return SESSION_FEATURE_TEMP_TABLE;
        return SESSION_FEATURE_NONE;
    }
    if (keyword(s, &i, len, "declare")) {
        /* DECLARE name [options] CURSOR [WITH HOLD | WITHOUT HOLD] FOR ... */
        for (; i < len; i++) {
            size_t j = i;
            if (keyword(s, &j, len, "for"))
                return SESSION_FEATURE_NONE;
            if (keyword(s, &j, len, "with") && keyword(s, &j, len, "hold"))
                return SESSION_FEATURE_HOLD_CURSOR;
            while (i < len && !isspace((unsigned char)s[i]))
                i++;
        }
    }
    return SESSION_FEATURE_NONE;
}

static bool contains_session_advisory_lock(const char *s, size_t len)
{
    static const char *const fns[] = {"pg_advisory_lock", "pg_try_advisory_lock"};
    for (size_t f = 0; f < 2; f++) {
        size_t n = strlen(fns[f]);
        for (size_t i = 0; i + n <= len; i++) {
            /* cheap first test: this runs over every query's text */
            if ((s[i] | 0x20) != 'p' || (s[i + 1] | 0x20) != 'g' || s[i + 2] != '_' ||
                strncasecmp(s + i, fns[f], n) != 0)
                continue;
            /* pg_advisory_lock( or pg_advisory_lock_shared( ; not the _xact_ variants */
            size_t j = i + n;
            if (j + 7 <= len && strncasecmp(s + j, "_shared", 7) == 0)
                j += 7;
            while (j < len && isspace((unsigned char)s[j]))
                j++;
            if (j < len && s[j] == '(')
                return true;
        }
    }
    return false;
}

enum session_feature session_state_detect(const char *sql, size_t len)
{
    size_t start = 0;
    char quote = 0;
    for (size_t i = 0; i <= len; i++) {
        char ch = i < len ? sql[i] : ';';
        if (quote) {
            if (ch == quote)
                quote = 0;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            quote = ch;
            continue;
        }
        if (ch == ';' || ch == '\0') {
            enum session_feature f = statement_feature(sql, start, i);
            if (f != SESSION_FEATURE_NONE)
                return f;
            start = i + 1;
            if (ch == '\0')
                break;
        }
    }
    return contains_session_advisory_lock(sql, len) ? SESSION_FEATURE_ADVISORY_LOCK
                                                    : SESSION_FEATURE_NONE;
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
    default:
        return "nothing";
    }
}

int session_policy_parse(const char *text)
{
    if (strcasecmp(text, "warn") == 0)
        return SESSION_POLICY_WARN;
    if (strcasecmp(text, "pin") == 0)
        return SESSION_POLICY_PIN;
    if (strcasecmp(text, "refuse") == 0)
        return SESSION_POLICY_REFUSE;
    return -1;
}
