/* config_db: one [databases] entry, as key=value pairs or a postgres:// URL (DATABASE_URL's too):
 * sluice's own per-database keys into typed fields, everything else checked against libpq's
 * keyword list and kept as libpq keywords for PQconnectStartParams. */
#include "config_load.h"
#include "config_value.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Query parameters of client libraries' URLs (Prisma's, mostly) that are not libpq keywords:
 * a DATABASE_URL copied from an app's settings keeps working, with a warning per parameter. */
static const char *const client_url_params[] = {
    "schema",         "connection_limit", "pool_timeout", "pgbouncer", "statement_cache_size",
    "socket_timeout", "sslaccept",
};

struct db_entry *config_db_new(struct loader *L, struct db_entry *db, const char *name, int line)
{
    *db = (struct db_entry){.pool_size = -1,
                            .min_pool_size = -1,
                            .reserve_pool = -1,
                            .timeouts = ENTRY_TIMEOUTS_UNSET,
                            .sslmode = SSLMODE_UNSET,
                            .line = line,
                            .file = L->file};
    db->name = load_strdup(L, name);
    db->pq_keywords = calloc(1, sizeof *db->pq_keywords);
    db->pq_values = calloc(1, sizeof *db->pq_values);
    if (!db->name || !db->pq_keywords || !db->pq_values) {
        L->oom = true;
        config_db_entry_free(db);
        return NULL;
    }
    return db;
}

const char *config_db_keyword(const struct db_entry *db, const char *key)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], key) == 0)
            return db->pq_values[i];
    }
    return NULL;
}

/* Set a libpq keyword; a repeated keyword replaces the earlier value, as in a conninfo string. */
int config_db_set_keyword(struct db_entry *db, const char *key, const char *val)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], key) == 0) {
            char *v = strdup(val);
            if (!v)
                return -ENOMEM;
            config_free_secret(db->pq_values[i]);
            db->pq_values[i] = v;
            return 0;
        }
    }
    size_t size = (size_t)(db->nkeys + 2) * sizeof(char *);
    char **kw = realloc(db->pq_keywords, size);
    if (!kw)
        return -ENOMEM;
    db->pq_keywords = kw;
    char **vals = realloc(db->pq_values, size);
    if (!vals)
        return -ENOMEM;
    db->pq_values = vals;
    char *k = strdup(key), *v = strdup(val);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    kw[db->nkeys] = k;
    vals[db->nkeys] = v;
    db->nkeys++;
    kw[db->nkeys] = NULL;
    vals[db->nkeys] = NULL;
    return 0;
}

static bool is_pq_keyword(const struct loader *L, const char *key)
{
    for (const PQconninfoOption *o = L->pq_defaults; o && o->keyword; o++) {
        if (strcmp(o->keyword, key) == 0)
            return true;
    }
    return false;
}

/* Append "-c name=value" to *options, escaping spaces and backslashes as libpq's options
 * parameter requires. */
static int append_server_option(char **options, const char *name, const char *val)
{
    size_t old = *options ? strlen(*options) : 0;
    char *s = realloc(*options, old + strlen(name) + 2 * strlen(val) + 8);
    if (!s)
        return -ENOMEM;
    char *p = s + old;
    p += sprintf(p, "%s-c %s=", old ? " " : "", name);
    for (const char *v = val; *v; v++) {
        if (*v == ' ' || *v == '\\')
            *p++ = '\\';
        *p++ = *v;
    }
    *p = '\0';
    *options = s;
    return 0;
}

/* `name = host=... port=... pool_size=...` */
static int db_from_pairs(struct loader *L, const char *where, struct db_entry *db, const char *text)
{
    const char *p = text, *why = NULL;
    char *key, *val, *server_options = NULL;
    int rc, failed = 0;
    while ((rc = config_entry_next_pair(&p, &key, &val, &why)) == 1) {
        int r = config_entry_set(L, ENTRY_DB, db, where, key, val);
        if (r < 0) {
            failed = -EINVAL;
        } else if (r == 0) {
            if (strcmp(key, "datestyle") == 0 || strcmp(key, "timezone") == 0) {
                /* PgBouncer server parameters, not libpq keywords: send them as options. */
                if (append_server_option(&server_options, key[0] == 'd' ? "DateStyle" : "TimeZone",
                                         val) != 0)
                    L->oom = true;
            } else if (!is_pq_keyword(L, key)) {
                /* The value is not echoed: the typo may be in "password". */
                char accepted[512];
                config_entry_accepted(ENTRY_DB, accepted, sizeof accepted);
                load_error(L,
                           "%s: unknown connection keyword '%s' (libpq connection parameters "
                           "and %s are accepted)",
                           where, key, accepted);
                failed = -EINVAL;
            } else if (config_db_set_keyword(db, key, val) != 0) {
                L->oom = true;
            }
        }
        free(key);
        config_free_secret(val);
    }
    if (rc == -EINVAL) {
        load_error(L, "%s: %s", where, why);
        failed = rc;
    } else if (rc == -ENOMEM) {
        L->oom = true;
    }
    if (server_options) {
        const char *given = config_db_keyword(db, "options");
        char *all = NULL;
        if (given && asprintf(&all, "%s %s", given, server_options) < 0)
            L->oom = true;
        if (config_db_set_keyword(db, "options", all ? all : server_options) != 0)
            L->oom = true;
        free(all);
        free(server_options);
    }
    return failed;
}

bool config_db_is_url(const char *v)
{
    return strncmp(v, "postgres://", 11) == 0 || strncmp(v, "postgresql://", 13) == 0;
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)tolower((unsigned char)ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decode s[0..n) into a new string; NULL (with *bad set) on a bad escape or %00. */
static char *percent_decode(const char *s, size_t n, bool *bad)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        if (i + 2 < n) {
            int hi = hex_value(s[i + 1]);
            int lo = hex_value(s[i + 2]);
            if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
                *o++ = (char)(hi * 16 + lo);
                i += 2;
                continue;
            }
        }
        explicit_bzero(out, n + 1);
        free(out);
        *bad = true;
        return NULL;
    }
    *o = '\0';
    return out;
}

/* url with its password written "***", for an error message: libpq's messages quote the URL
 * they could not parse. The password runs from the ':' after the user name to the last '@' (a
 * password with an '@' left unencoded makes libpq end the user info at the first one, so what
 * lies between is the password's too). NULL when out of memory. */
static char *url_without_password(const char *url)
{
    const char *user = strstr(url, "://");
    user = user ? user + 3 : url;
    const char *at = strrchr(user, '@');
    const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
    if (!colon)
        return strdup(url);
    size_t head = (size_t)(colon + 1 - url);
    char *out = malloc(head + 3 + strlen(at) + 1);
    if (out)
        sprintf(out, "%.*s***%s", (int)head, url, at);
    return out;
}

/* libpq's reason for refusing url (the parse of a copy without the password, so the reason
 * cannot quote it), reported under where. */
static void report_bad_url(struct loader *L, const char *where, const char *url)
{
    char *shown = url_without_password(url);
    char *msg = NULL;
    PQconninfoOption *opts = shown ? PQconninfoParse(shown, &msg) : NULL;
    if (!shown || (!opts && !msg)) {
        L->oom = true;
    } else if (opts) { /* only the password made it unparseable */
        load_error(L, "%s: bad URL: libpq cannot parse its user name and password", where);
    } else {
        msg[strcspn(msg, "\n")] = '\0';
        load_error(L, "%s: bad URL: %s", where, msg);
    }
    PQconninfoFree(opts);
    PQfreemem(msg);
    free(shown);
}

/* Whether url has a '/' before the last '@' of its user info: libpq ends the host part at the
 * first '/' (or '@'), so a password with an unencoded '/' (or '@' and then '/') is read as host
 * and port, and the errors that quote those would show pieces of it. The user info's '@' is the
 * last one before the query string (a query value may hold one, after its '='). */
static bool slash_in_user_info(const char *url)
{
    const char *rest = strstr(url, "://");
    rest = rest ? rest + 3 : url;
    const char *slash = NULL, *at = NULL;
    for (const char *p = rest; *p && *p != '=' && *p != '&'; p++) {
        if (*p == '/' && !slash)
            slash = p;
        else if (*p == '@')
            at = p;
    }
    return slash && at && slash < at;
}

/* A postgres:// URL. sluice's keys are taken out of its query string; libpq parses the rest
 * (PQconninfoParse decodes percent escapes and checks parameter names) into keywords. Our own
 * check of the escapes comes first because libpq's message would quote the undecodable text,
 * which may be the password. */
int config_db_from_url(struct loader *L, const char *where, struct db_entry *db, const char *url)
{
    if (slash_in_user_info(url)) { /* not echoed: host and port would be pieces of a password */
        load_error(L,
                   "%s: bad URL: a '/' before the '@' that ends the user name and password "
                   "(write '/' as %%2F and '@' as %%40 in them, and in dbname)",
                   where);
        return -EINVAL;
    }
    bool bad = false;
    char *check = percent_decode(url, strlen(url), &bad);
    config_free_secret(check);
    if (bad) {
        load_error(L,
                   "%s: bad percent-encoding in the URL (each %% must be followed by two hex "
                   "digits, and %%00 is not allowed)",
                   where);
        return -EINVAL;
    }
    if (!check) {
        L->oom = true;
        return -ENOMEM;
    }
    /* Where the query starts: after the host, which follows the last '@' of the user info (a
     * password may contain '?', libpq allows it). */
    const char *host = strstr(url, "://") + 3, *p = host;
    while (*p && *p != '@' && *p != '/')
        p++;
    if (*p == '@')
        host = p + 1;
    const char *q = strchr(host, '?');
    size_t base_len = q ? (size_t)(q - url) : strlen(url);
    char *stripped = malloc(strlen(url) + 2);
    if (!stripped) {
        L->oom = true;
        return -ENOMEM;
    }
    memcpy(stripped, url, base_len);
    size_t len = base_len;
    int failed = 0;
    for (const char *param = q ? q + 1 : NULL; param && *param;) {
        const char *end = strchr(param, '&');
        size_t plen = end ? (size_t)(end - param) : strlen(param);
        const char *eq = memchr(param, '=', plen);
        char *key = eq ? percent_decode(param, (size_t)(eq - param), &bad) : NULL;
        char *val = eq ? percent_decode(eq + 1, plen - (size_t)(eq - param) - 1, &bad) : NULL;
        int r = 0;
        if (key && val) {
            r = config_entry_set(L, ENTRY_DB, db, where, key, val);
            if (r == 0 && !is_pq_keyword(L, key)) {
                for (size_t i = 0; i < sizeof client_url_params / sizeof client_url_params[0];
                     i++) {
                    if (strcmp(key, client_url_params[i]) == 0) {
                        load_warning(L,
                                     "%s: URL parameter '%s' belongs to a client library, "
                                     "not libpq; ignored",
                                     where, key);
                        r = 1;
                    }
                }
            }
        }
        if (r < 0)
            failed = r;
        if (r == 0 && plen > 0) { /* libpq's to parse (and to complain about) */
            char sep = len == base_len ? '?' : '&';
            stripped[len++] = sep;
            memcpy(stripped + len, param, plen);
            len += plen;
        }
        free(key);
        config_free_secret(val);
        param = end ? end + 1 : NULL;
    }
    stripped[len] = '\0';
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(stripped, &msg);
    if (!opts) {
        if (msg)
            report_bad_url(L, where, stripped);
        else
            L->oom = true;
        PQfreemem(msg); /* it may quote the password */
        config_free_secret(stripped);
        return -EINVAL;
    }
    config_free_secret(stripped);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val && config_db_set_keyword(db, o->keyword, o->val) != 0)
            L->oom = true;
    }
    PQconninfoFree(opts);
    return failed;
}

bool config_db_push(struct loader *L, const struct db_entry *db)
{
    struct config *c = L->c;
    struct db_entry *grown = realloc(c->dbs, (size_t)(c->ndbs + 1) * sizeof *grown);
    if (!grown) {
        L->oom = true;
        return false;
    }
    c->dbs = grown;
    c->dbs[c->ndbs++] = *db;
    return true;
}

/* libpq's port: one number from 1 to 65535, or a comma-separated list of them (one per host);
 * an empty item means the default port, as in libpq. */
static bool port_list_valid(const char *text)
{
    for (const char *p = text;; p++) {
        long port = 0;
        const char *start = p;
        while (*p >= '0' && *p <= '9' && port <= 65535)
            port = port * 10 + (*p++ - '0');
        if (p != start && (port < 1 || port > 65535))
            return false;
        if (*p == '\0')
            return true;
        if (*p != ',')
            return false;
    }
}

int config_db_check_keywords(struct loader *L, const char *where, struct db_entry *db)
{
    const char *text = config_db_keyword(db, "sslmode");
    char why[160];
    if (text && config_value_parse_SSLMODE(text, &db->sslmode, why, sizeof why) != 0) {
        load_error(L, "%s: sslmode = '%s': %s", where, text, why);
        return -EINVAL;
    }
    const char *port = config_db_keyword(db, "port");
    if (port && !port_list_valid(port)) {
        load_error(L,
                   "%s: port = '%s': expected a port number from 1 to 65535 (or one per host, "
                   "comma separated)",
                   where, port);
        return -EINVAL;
    }
    return 0;
}

void config_db_on_entry(struct loader *L, const char *name, const char *value)
{
    char where[320];
    snprintf(where, sizeof where, "%sline %d: database '%s'", L->origin, L->line, name);
    const struct db_entry *dup = config_find_db_exact(L->c, name);
    if (dup) {
        load_error(L, "%s is defined twice (first at %sline %d)", where, load_origin(L, dup->file),
                   dup->line);
        return;
    }
    struct db_entry db;
    if (!config_db_new(L, &db, name, L->line))
        return;
    int rc = config_db_is_url(value) ? config_db_from_url(L, where, &db, value)
                                     : db_from_pairs(L, where, &db, value);
    if (rc == 0)
        rc = config_db_check_keywords(L, where, &db);
    /* PgBouncer: an entry without dbname connects to the database of its own name; the "*"
     * entry's dbname is whatever the client asked for, filled in per connection. */
    if (rc == 0 && strcmp(name, "*") != 0 && !config_db_keyword(&db, "dbname") &&
        config_db_set_keyword(&db, "dbname", name) != 0)
        L->oom = true;
    if (rc != 0 || L->oom || !config_db_push(L, &db))
        config_db_entry_free(&db);
}
