/* config: defaults, then the INI file (inih, PgBouncer's pgbouncer.ini layout), then the
 * environment, into one struct config that is validated whole before anyone sees it. Every string
 * the result holds is its own copy; config_free() releases it all. What a key means at run time is
 * left to the file that uses it; this file only parses, checks and describes. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the key table (config_keys.def) ---- */

enum key_index {
#define KEY(name, type, def, reload, doc) KEY_IDX_##name,
#include "config_keys.def"
#undef KEY
    KEY_COUNT
};

#define KEY_RELOADABLE_RELOAD true
#define KEY_RELOADABLE_RESTART false
const struct config_key_info config_keys[] = {
#define KEY(name, type, def, reload, doc) {#name, #type, def, KEY_RELOADABLE_##reload, doc},
#include "config_keys.def"
#undef KEY
};
const int config_nkeys = KEY_COUNT;

/* PgBouncer keys that sluice reads but does not act on: a pgbouncer.ini that sets them still
 * loads, with a warning per key, instead of failing on the first one. */
static const char *const pgbouncer_only_keys[] = {
    "syslog",
    "syslog_ident",
    "syslog_facility",
    "user",
    "so_reuseport",
    "peer_id",
    "dns_max_ttl",
    "dns_nxdomain_ttl",
    "dns_zone_check_period",
    "resolv_conf",
    "application_name_add_host",
    "conffile",
    "service_name",
    "job_name",
    "autodb_idle_timeout",
    "disable_pqexec",
    "verbose",
    "suspend_timeout",
    "tcp_socket_buffer",
    "tcp_keepcnt",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_user_timeout",
    "sbuf_loopcnt",
    "unix_socket_mode",
    "unix_socket_group",
    "log_stats",
    "scram_iterations",
    "track_extra_parameters",
    "cancel_wait_timeout",
    "pool_idle_timeout",
    "login_notify_message",
    "auth_ldap_options",
    "auth_pam_confdir",
};

/* PgBouncer's per-entry keys ([databases], [users]) that sluice does not act on: warned about,
 * like the main section's, so a pgbouncer.ini loads (and reloads) unchanged. */
static const char *const pgbouncer_only_db_keys[] = {
    "auth_query",
};

#define ENTRY_TIMEOUTS_UNSET                                                                    \
    {.server_lifetime = -1, .query_timeout = -1, .idle_transaction_timeout = -1,                \
     .transaction_timeout = -1, .client_idle_timeout = -1}

/* Query parameters of client libraries' URLs (Prisma's, mostly) that are not libpq keywords:
 * a DATABASE_URL copied from an app's settings keeps working, with a warning per parameter. */
static const char *const client_url_params[] = {
    "schema",         "connection_limit", "pool_timeout", "pgbouncer", "statement_cache_size",
    "socket_timeout", "sslaccept",
};

/* ---- enum types whose values config_enums.def lists ---- */

static const struct enum_value {
    const char *type; /* the key type in config_keys.def */
    const char *text;
    int value;
} enum_values[] = {
#define ENUM_VALUE(type, text, constant) {#type, text, constant},
#include "config_enums.def"
#undef ENUM_VALUE
};
#define N_ENUM_VALUES (sizeof enum_values / sizeof enum_values[0])

static bool is_enum_type(const char *type)
{
    for (size_t i = 0; i < N_ENUM_VALUES; i++) {
        if (strcmp(enum_values[i].type, type) == 0)
            return true;
    }
    return false;
}

/* The value's name: its first line in config_enums.def. */
static const char *enum_name(const char *type, int value)
{
    for (size_t i = 0; i < N_ENUM_VALUES; i++) {
        if (enum_values[i].value == value && strcmp(enum_values[i].type, type) == 0)
            return enum_values[i].text;
    }
    return "?";
}

static int enum_parse(const char *type, const char *text, int *out)
{
    for (size_t i = 0; i < N_ENUM_VALUES; i++) {
        if (strcmp(enum_values[i].type, type) == 0 && strcasecmp(enum_values[i].text, text) == 0) {
            *out = enum_values[i].value;
            return 0;
        }
    }
    return -EINVAL;
}

/* "expected a, b or c": every spelling but the empty one, in config_enums.def order. */
static void enum_expected(const char *type, char *why, size_t n)
{
    const char *names[16];
    size_t k = 0;
    for (size_t i = 0; i < N_ENUM_VALUES && k < sizeof names / sizeof names[0]; i++) {
        if (strcmp(enum_values[i].type, type) == 0 && enum_values[i].text[0])
            names[k++] = enum_values[i].text;
    }
    size_t used = (size_t)snprintf(why, n, "expected");
    for (size_t i = 0; i < k && used < n; i++) {
        const char *sep = i == 0 ? " " : i + 1 == k ? " or " : ", ";
        used += (size_t)snprintf(why + used, n - used, "%s%s", sep, names[i]);
    }
}

const char *pool_mode_name(enum pool_mode m)
{
    return m == POOL_MODE_UNSET ? "unset" : enum_name("POOL_MODE", m);
}

const char *auth_type_name(enum auth_type t)
{
    return enum_name("AUTH_TYPE", t);
}

const char *log_format_name(enum log_format f)
{
    return enum_name("LOG_FORMAT", f);
}

const char *log_level_name(enum log_level l)
{
    return enum_name("LOG_LEVEL", l);
}

const char *session_policy_name(enum session_policy p)
{
    return enum_name("SESSION_STATE_POLICY", p);
}

const char *sslmode_name(enum sslmode m)
{
    return enum_name("SSLMODE", m);
}

int sslmode_parse(const char *text, enum sslmode *out)
{
    int v;
    if (!text || !text[0] || enum_parse("SSLMODE", text, &v) != 0)
        return -1;
    *out = (enum sslmode)v;
    return 0;
}

const char *config_source_name(enum config_source s)
{
    switch (s) {
    case SRC_DEFAULT:
        return "default";
    case SRC_FILE:
        return "file";
    case SRC_ENV:
        return "env";
    case SRC_ADMIN_SET:
        return "admin";
    }
    return "?";
}

int limit_resolve(struct limit l, int server_usable)
{
    if (!l.is_percent)
        return l.value > 0 ? l.value : 0;
    if (l.value <= 0 || server_usable <= 0)
        return 0;
    long long n = (long long)server_usable * l.value / 100;
    /* A share that rounds down to nothing would read as "no limit": keep at least one. */
    return n < 1 ? 1 : (int)n;
}

/* ---- typed value parsers, one per type in config_keys.def ----
 * Each writes *out only on success; on failure it says what was expected in why. */

static int parse_int64(const char *v, int64_t *out)
{
    errno = 0;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end != '\0' || errno == ERANGE || isspace((unsigned char)v[0]))
        return -EINVAL;
    *out = n;
    return 0;
}

/* A count for per-entry keys: 0..INT_MAX. */
static int parse_count(const char *v, int *out)
{
    int64_t n;
    if (parse_int64(v, &n) != 0 || n < 0 || n > INT_MAX)
        return -EINVAL;
    *out = (int)n;
    return 0;
}

static int parse_STR(const char *v, char **out, char *why, size_t n)
{
    char *s = strdup(v);
    if (!s) {
        snprintf(why, n, "out of memory");
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

static int parse_INT(const char *v, int64_t *out, char *why, size_t n)
{
    if (parse_int64(v, out) != 0) {
        snprintf(why, n, "expected an integer");
        return -EINVAL;
    }
    return 0;
}

static int parse_bool_text(const char *v, bool *out)
{
    static const char *const yes[] = {"1", "yes", "on", "true"};
    static const char *const no[] = {"0", "no", "off", "false"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_BOOL(const char *v, bool *out, char *why, size_t n)
{
    if (parse_bool_text(v, out) != 0) {
        snprintf(why, n, "expected 1, 0, yes, no, on, off, true or false");
        return -EINVAL;
    }
    return 0;
}

/* A duration, stored in milliseconds. A bare number is seconds (PgBouncer's unit) and may have a
 * fraction; us, ms, s, min, h and d suffixes are accepted. Computed in whole microseconds with
 * integers (strtod would follow the locale's decimal point) and rounded up to a millisecond so a
 * small non-zero value never turns into 0, which means "disabled" for most keys. */
static int parse_TIME(const char *v, int64_t *out, char *why, size_t n)
{
    static const struct {
        const char *suffix;
        int64_t us;
    } units[] = {{"", 1000000},     {"us", 1},           {"ms", 1000},        {"s", 1000000},
                 {"min", 60000000}, {"h", 3600000000LL}, {"d", 86400000000LL}};
    const char *p = v;
    int64_t whole = 0, frac = 0, frac_scale = 1;
    bool digits = false;
    for (; isdigit((unsigned char)*p); p++, digits = true) {
        if (whole > INT64_MAX / 10 - 10)
            goto too_large;
        whole = whole * 10 + (*p - '0');
    }
    if (*p == '.') {
        for (p++; isdigit((unsigned char)*p); p++, digits = true) {
            if (frac_scale < 1000000) { /* digits past microseconds are dropped */
                frac = frac * 10 + (*p - '0');
                frac_scale *= 10;
            }
        }
    }
    if (!digits)
        goto bad;
    while (*p == ' ')
        p++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(p, units[i].suffix) != 0)
            continue;
        if (whole > INT64_MAX / 2 / units[i].us)
            goto too_large;
        int64_t us = whole * units[i].us + frac * units[i].us / frac_scale;
        *out = (us + 999) / 1000;
        return 0;
    }
bad:
    snprintf(why, n,
             "expected a duration: seconds (e.g. 30 or 1.5) or a number with us, ms, s, "
             "min, h or d");
    return -EINVAL;
too_large:
    snprintf(why, n, "duration is too large");
    return -EINVAL;
}

static int parse_limit_text(const char *v, struct limit *out)
{
    size_t len = strlen(v);
    if (len > 0 && v[len - 1] == '%') {
        char num[32];
        if (len - 1 >= sizeof num)
            return -EINVAL;
        memcpy(num, v, len - 1);
        num[len - 1] = '\0';
        int pct;
        if (parse_count(num, &pct) != 0 || pct < 1 || pct > 100)
            return -EINVAL;
        *out = (struct limit){.value = pct, .is_percent = true};
        return 0;
    }
    int count;
    if (parse_count(v, &count) != 0)
        return -EINVAL;
    *out = (struct limit){.value = count, .is_percent = false};
    return 0;
}

static int parse_LIMIT(const char *v, struct limit *out, char *why, size_t n)
{
    if (parse_limit_text(v, out) != 0) {
        snprintf(why, n, "expected a count (0 = no limit) or a percentage from 1%% to 100%%");
        return -EINVAL;
    }
    return 0;
}

/* parse_<TYPE> and format_<TYPE> of an enum type, through its config_enums.def lines. */
#define ENUM_KIND(type, ctype)                                                                     \
    static int parse_##type(const char *v, ctype *out, char *why, size_t n)                        \
    {                                                                                              \
        int value;                                                                                 \
        if (enum_parse(#type, v, &value) != 0) {                                                   \
            enum_expected(#type, why, n);                                                          \
            return -EINVAL;                                                                        \
        }                                                                                          \
        *out = (ctype)value;                                                                       \
        return 0;                                                                                  \
    }                                                                                              \
    static void format_##type(const ctype *v, char *out, size_t n)                                 \
    {                                                                                              \
        snprintf(out, n, "%s", enum_name(#type, (int)*v));                                         \
    }
ENUM_KIND(POOL_MODE, enum pool_mode)
ENUM_KIND(LOG_FORMAT, enum log_format)
ENUM_KIND(LOG_LEVEL, enum log_level)
ENUM_KIND(SESSION_STATE_POLICY, enum session_policy)
ENUM_KIND(SSLMODE, enum sslmode)

static int parse_AUTH_TYPE(const char *v, enum auth_type *out, char *why, size_t n)
{
    int value;
    if (enum_parse("AUTH_TYPE", v, &value) == 0) {
        *out = (enum auth_type)value;
        return 0;
    }
    /* PgBouncer's other methods: name them, so a moved pgbouncer.ini fails with a reason. */
    if (strcasecmp(v, "pam") == 0 || strcasecmp(v, "ldap") == 0 || strcasecmp(v, "peer") == 0)
        snprintf(why, n,
                 "auth_type %s is not supported; use trust, plain, md5, scram-sha-256, hba or "
                 "cert",
                 v);
    else
        enum_expected("AUTH_TYPE", why, n);
    return -EINVAL;
}

static void format_STR(char *const *v, char *out, size_t n)
{
    snprintf(out, n, "%s", *v ? *v : "");
}

static void format_INT(const int64_t *v, char *out, size_t n)
{
    snprintf(out, n, "%lld", (long long)*v);
}

static void format_BOOL(const bool *v, char *out, size_t n)
{
    snprintf(out, n, "%d", *v ? 1 : 0);
}

/* Whole seconds print bare (PgBouncer's unit); anything else in ms. Either reads back the same. */
static void format_TIME(const int64_t *v, char *out, size_t n)
{
    if (*v % 1000 == 0)
        snprintf(out, n, "%lld", (long long)(*v / 1000));
    else
        snprintf(out, n, "%lldms", (long long)*v);
}

static void format_LIMIT(const struct limit *v, char *out, size_t n)
{
    snprintf(out, n, "%d%s", v->value, v->is_percent ? "%" : "");
}

static void format_AUTH_TYPE(const enum auth_type *v, char *out, size_t n)
{
    snprintf(out, n, "%s", auth_type_name(*v));
}

/* ---- setting one main-section key ---- */

static int find_key(const char *name)
{
    if (strcasecmp(name, "pool_timeout") == 0) /* the name DESIGN.md and most users use */
        return KEY_IDX_query_wait_timeout;
    for (int i = 0; i < KEY_COUNT; i++) {
        if (strcasecmp(name, config_keys[i].name) == 0)
            return i;
    }
    return -1;
}

static bool in_list(const char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(name, list[i]) == 0)
            return true;
    }
    return false;
}

#define IN_LIST(list, name) in_list(list, sizeof list / sizeof list[0], name)

static bool is_pgbouncer_only_key(const char *name)
{
    if (strncasecmp(name, "client_tls", 10) == 0 || strncasecmp(name, "server_tls", 10) == 0)
        return true;
    return IN_LIST(pgbouncer_only_keys, name);
}

static int parse_key(struct config *into, int idx, const char *value, char *why, size_t n)
{
    switch (idx) {
#define KEY(name, type, def, reload, doc)                                                          \
    case KEY_IDX_##name:                                                                           \
        return parse_##type(value, &into->name, why, n);
#include "config_keys.def"
#undef KEY
    }
    return -ENOENT;
}

/* The string field behind key idx, or NULL when the key is not a STR. */
static char **str_field(struct config *c, int idx)
{
    switch (idx) {
#define KEY(name, type, def, reload, doc) STRPTR_##type(name)
#define STRPTR_STR(name)                                                                           \
    case KEY_IDX_##name:                                                                           \
        return &c->name;
#define STRPTR_INT(name)
#define STRPTR_BOOL(name)
#define STRPTR_TIME(name)
#define STRPTR_LIMIT(name)
#define STRPTR_POOL_MODE(name)
#define STRPTR_AUTH_TYPE(name)
#define STRPTR_LOG_FORMAT(name)
#define STRPTR_LOG_LEVEL(name)
#define STRPTR_SESSION_STATE_POLICY(name)
#define STRPTR_SSLMODE(name)
#include "config_keys.def"
#undef KEY
    }
    return NULL;
}

/* Ranges for integer keys; any other INT key is 0..INT_MAX. */
static const struct {
    int idx;
    int64_t min, max;
} int_ranges[] = {
    {KEY_IDX_listen_port, 0, 65535},      {KEY_IDX_http_listen_port, 0, 65535},
    {KEY_IDX_listen_backlog, 1, 65535},   {KEY_IDX_max_client_conn, 1, INT_MAX},
    {KEY_IDX_max_client_logins, 1, INT_MAX},
    {KEY_IDX_pkt_buf, 4096, 1024 * 1024}, {KEY_IDX_max_packet_size, 1024, INT_MAX},
    {KEY_IDX_tcp_defer_accept, 0, 3600},
};

/* Checks that need only the key's own value. */
static int check_key(const struct config *c, int idx, char *why, size_t n)
{
    if (strcmp(config_keys[idx].type, "INT") == 0) {
        int64_t min = 0, max = INT_MAX, v = 0;
        for (size_t i = 0; i < sizeof int_ranges / sizeof int_ranges[0]; i++) {
            if (int_ranges[i].idx == idx) {
                min = int_ranges[i].min;
                max = int_ranges[i].max;
            }
        }
        switch (idx) {
#define KEY(name, type, def, reload, doc) INTVAL_##type(name)
#define INTVAL_INT(name)                                                                           \
    case KEY_IDX_##name:                                                                           \
        v = c->name;                                                                               \
        break;
#define INTVAL_STR(name)
#define INTVAL_BOOL(name)
#define INTVAL_TIME(name)
#define INTVAL_LIMIT(name)
#define INTVAL_POOL_MODE(name)
#define INTVAL_AUTH_TYPE(name)
#define INTVAL_LOG_FORMAT(name)
#define INTVAL_LOG_LEVEL(name)
#define INTVAL_SESSION_STATE_POLICY(name)
#define INTVAL_SSLMODE(name)
#include "config_keys.def"
#undef KEY
        }
        if (v < min || v > max) {
            snprintf(why, n, "expected a number from %lld to %lld", (long long)min, (long long)max);
            return -EINVAL;
        }
    }
    /* An enum's empty value ("not set") is only for keys whose default is empty
     * (server_tls_sslmode: libpq's default; client_tls_sslmode must say what it does). */
    if (is_enum_type(config_keys[idx].type) && config_keys[idx].def[0]) {
        char shown[64];
        config_format_value(c, idx, shown, sizeof shown);
        if (!shown[0]) {
            enum_expected(config_keys[idx].type, why, n);
            return -EINVAL;
        }
    }
    return 0;
}

/* Checks between main-section keys, made once the whole file and environment are read (and on
 * admin SET, so SET cannot produce a config that a restart would refuse). */
static int check_main(const struct config *c, char *why, size_t n)
{
    if (c->min_pool_size > c->default_pool_size) {
        snprintf(why, n, "min_pool_size %lld is above default_pool_size %lld",
                 (long long)c->min_pool_size, (long long)c->default_pool_size);
        return -EINVAL;
    }
    if (c->listen_addr[0] == '\0' && c->unix_socket_dir[0] == '\0') {
        snprintf(why, n, "listen_addr and unix_socket_dir are both empty: nothing to listen on");
        return -EINVAL;
    }
    return 0;
}

enum check_scope { CHECK_KEY_ONLY, CHECK_WITH_MAIN };

/* Parse value into key idx, check it, and only then replace (and free) the old value, so a bad
 * value leaves the config exactly as it was. */
static int set_key(struct config *c, int idx, const char *value, enum config_source src,
                   enum check_scope scope, char *why, size_t n)
{
    struct config tmp = *c; /* differs from *c only in field idx until committed */
    int rc = parse_key(&tmp, idx, value, why, n);
    if (rc != 0)
        return rc;
    rc = check_key(&tmp, idx, why, n);
    if (rc == 0 && scope == CHECK_WITH_MAIN)
        rc = check_main(&tmp, why, n);
    char **newstr = str_field(&tmp, idx);
    if (rc != 0) {
        if (newstr)
            free(*newstr);
        return rc;
    }
    char **oldstr = str_field(c, idx);
    if (oldstr)
        free(*oldstr);
    *c = tmp;
    c->sources[idx] = src;
    return 0;
}

int config_set_key(struct config *c, const char *name, const char *value, enum config_source src,
                   char *err, size_t errlen)
{
    int idx = find_key(name);
    if (idx < 0) {
        snprintf(err, errlen, "unknown key '%s'", name);
        return -ENOENT;
    }
    char why[256];
    int rc = set_key(c, idx, value, src, CHECK_WITH_MAIN, why, sizeof why);
    if (rc != 0)
        snprintf(err, errlen, "%s = '%s': %s", config_keys[idx].name, value, why);
    return rc;
}

void config_format_value(const struct config *c, int key_index, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    out[0] = '\0';
    if (key_index < 0 || key_index >= KEY_COUNT)
        return;
    /* No main key holds a secret today; if one is ever added, SHOW CONFIG must not print it. */
    const char *name = config_keys[key_index].name;
    if (strstr(name, "password") || strstr(name, "secret")) {
        snprintf(out, outlen, "********");
        return;
    }
    switch (key_index) {
#define KEY(name, type, def, reload, doc)                                                          \
    case KEY_IDX_##name:                                                                           \
        format_##type(&c->name, out, outlen);                                                      \
        break;
#include "config_keys.def"
#undef KEY
    }
}

/* ---- look-ups ---- */

const struct db_entry *config_find_db(const struct config *c, const char *name)
{
    const struct db_entry *fallback = NULL;
    if (!c || !name)
        return NULL;
    for (int i = 0; i < c->ndbs; i++) {
        if (strcmp(c->dbs[i].name, name) == 0)
            return &c->dbs[i];
        if (strcmp(c->dbs[i].name, "*") == 0)
            fallback = &c->dbs[i];
    }
    return fallback;
}

static const struct db_entry *find_db_exact(const struct config *c, const char *name)
{
    for (int i = 0; i < c->ndbs; i++) {
        if (strcmp(c->dbs[i].name, name) == 0)
            return &c->dbs[i];
    }
    return NULL;
}

const struct user_entry *config_find_user(const struct config *c, const char *name)
{
    if (!c || !name)
        return NULL;
    for (int i = 0; i < c->nusers; i++) {
        if (strcmp(c->users[i].name, name) == 0)
            return &c->users[i];
    }
    return NULL;
}

const struct auth_entry *config_find_auth(const struct config *c, const char *user)
{
    if (!c || !user)
        return NULL;
    for (int i = 0; i < c->nauth; i++) {
        if (strcmp(c->auth[i].user, user) == 0)
            return &c->auth[i];
    }
    return NULL;
}

bool config_list_contains(const char *list, const char *name)
{
    if (!list || !name || !name[0])
        return false;
    size_t nlen = strlen(name);
    const char *p = list;
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        const char *start = p;
        while (*p && *p != ',' && !isspace((unsigned char)*p))
            p++;
        if ((size_t)(p - start) == nlen && strncmp(start, name, nlen) == 0)
            return true;
    }
    return false;
}

/* ---- freeing ---- */

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void db_entry_free(struct db_entry *db)
{
    free(db->name);
    for (int i = 0; i < db->nkeys; i++) {
        free(db->pq_keywords[i]);
        free_secret(db->pq_values[i]); /* password among them */
    }
    free(db->pq_keywords);
    free(db->pq_values);
    free(db->auth_user);
    free(db->auth_dbname);
    free(db->connect_query);
}

static void budget_entry_free(struct budget_entry *b)
{
    free(b->name);
    free(b->app_pattern);
    free(b->user);
    free(b->addr_cidr);
}

void config_free(struct config *c)
{
    if (!c)
        return;
#define KEY(name, type, def, reload, doc) FREE_##type(name)
#define FREE_STR(name) free(c->name);
#define FREE_INT(name)
#define FREE_BOOL(name)
#define FREE_TIME(name)
#define FREE_LIMIT(name)
#define FREE_POOL_MODE(name)
#define FREE_AUTH_TYPE(name)
#define FREE_LOG_FORMAT(name)
#define FREE_LOG_LEVEL(name)
#define FREE_SESSION_STATE_POLICY(name)
#define FREE_SSLMODE(name)
#include "config_keys.def"
#undef KEY
    free(c->sources);
    for (int i = 0; i < c->ndbs; i++)
        db_entry_free(&c->dbs[i]);
    free(c->dbs);
    for (int i = 0; i < c->nusers; i++)
        free(c->users[i].name);
    free(c->users);
    for (int i = 0; i < c->nauth; i++) {
        free(c->auth[i].user);
        free_secret(c->auth[i].secret);
    }
    free(c->auth);
    for (int i = 0; i < c->nbudgets; i++)
        budget_entry_free(&c->budgets[i]);
    free(c->budgets);
    free(c->path);
    free(c);
}

static void free_list(char **list, int n)
{
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void config_diag_free(struct config_diag *d)
{
    if (!d)
        return;
    free_list(d->errors, d->nerrors);
    free_list(d->warnings, d->nwarnings);
    *d = (struct config_diag){0};
}

/* ---- the loader: state while one config is built ---- */

struct loader {
    struct config *c;
    struct config_diag *diag;
    int nerrors;                   /* errors from this load (diag may hold older ones) */
    const char *origin;            /* "path: " or "" before "line N" */
    const char *text;              /* the INI text, read line by line by ini_read_line */
    int newlines_read;             /* newlines handed to inih so far */
    int line;                      /* line of the text inih handed to the handler */
    char *bad_section;             /* the unknown section last reported, to report it once */
    PQconninfoOption *pq_defaults; /* libpq's keyword list, to check [databases] keywords */
    char *url_user;                /* DATABASE_URL's credentials, added after auth_file's users */
    char *url_password;
    bool oom;
};

static void add_message(struct loader *L, char ***list, int *n, const char *fmt, va_list ap)
{
    char *msg;
    if (vasprintf(&msg, fmt, ap) < 0) {
        L->oom = true;
        return;
    }
    char **grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
    if (!grown) {
        free(msg);
        L->oom = true;
        return;
    }
    grown[(*n)++] = msg;
    *list = grown;
}

__attribute__((format(printf, 2, 3))) static void error_msg(struct loader *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_message(L, &L->diag->errors, &L->diag->nerrors, fmt, ap);
    va_end(ap);
    L->nerrors++;
}

__attribute__((format(printf, 2, 3))) static void warning_msg(struct loader *L, const char *fmt,
                                                              ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_message(L, &L->diag->warnings, &L->diag->nwarnings, fmt, ap);
    va_end(ap);
}

static char *dup_or_flag(struct loader *L, const char *s)
{
    char *d = strdup(s);
    if (!d)
        L->oom = true;
    return d;
}

/* ---- [databases] ---- */

/* One key=value pair of a [databases]/[users]/[budgets] value, in PgBouncer's syntax: pairs
 * separated by spaces, spaces allowed around '=', a value either bare (up to the next space) or
 * in single quotes with '' standing for one quote. Returns 1 with *key and *val allocated, 0 at the
 * end, -EINVAL with *why set, -ENOMEM. */
static int next_pair(const char **sp, char **key, char **val, const char **why)
{
    const char *p = *sp;
    while (isspace((unsigned char)*p))
        p++;
    if (!*p)
        return 0;
    const char *k = p;
    while (isalnum((unsigned char)*p) || *p == '_')
        p++;
    size_t klen = (size_t)(p - k);
    while (isspace((unsigned char)*p))
        p++;
    if (klen == 0 || *p != '=') {
        *why = "expected key=value pairs separated by spaces";
        return -EINVAL;
    }
    p++;
    while (isspace((unsigned char)*p))
        p++;
    char *v = malloc(strlen(p) + 1);
    if (!v)
        return -ENOMEM;
    size_t vlen = 0;
    if (*p == '\'') {
        for (p++;; p++) {
            if (!*p) {
                v[vlen] = '\0';
                free_secret(v);
                *why = "a quoted value has no closing quote";
                return -EINVAL;
            }
            if (*p == '\'') {
                if (p[1] != '\'')
                    break;
                p++;
            }
            v[vlen++] = *p;
        }
        p++;
        if (*p && !isspace((unsigned char)*p)) {
            v[vlen] = '\0';
            free_secret(v);
            *why = "expected a space after a quoted value";
            return -EINVAL;
        }
    } else {
        while (*p && !isspace((unsigned char)*p))
            v[vlen++] = *p++;
    }
    v[vlen] = '\0';
    *key = strndup(k, klen);
    if (!*key) {
        free_secret(v);
        return -ENOMEM;
    }
    *val = v;
    *sp = p;
    return 1;
}

static struct db_entry *db_new(struct loader *L, struct db_entry *db, const char *name, int line)
{
    *db = (struct db_entry){.pool_size = -1,
                            .min_pool_size = -1,
                            .reserve_pool = -1,
                            .timeouts = ENTRY_TIMEOUTS_UNSET,
                            .line = line};
    db->name = dup_or_flag(L, name);
    db->pq_keywords = calloc(1, sizeof *db->pq_keywords);
    db->pq_values = calloc(1, sizeof *db->pq_values);
    if (!db->name || !db->pq_keywords || !db->pq_values) {
        L->oom = true;
        db_entry_free(db);
        return NULL;
    }
    return db;
}

static const char *db_keyword(const struct db_entry *db, const char *key)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], key) == 0)
            return db->pq_values[i];
    }
    return NULL;
}

/* Set a libpq keyword; a repeated keyword replaces the earlier value, as in a conninfo string. */
static int db_set_keyword(struct db_entry *db, const char *key, const char *val)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], key) == 0) {
            char *v = strdup(val);
            if (!v)
                return -ENOMEM;
            free_secret(db->pq_values[i]);
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

/* The per-entry timeouts ([databases] and [users]). 1: key was one of them (and is applied),
 * 0: it is not, -EINVAL: it was one with a bad value (reported under where). */
static int entry_timeout_key(struct loader *L, const char *where, struct entry_timeouts *t,
                             const char *key, const char *val)
{
    int64_t *field = NULL;
    if (strcmp(key, "server_lifetime") == 0)
        field = &t->server_lifetime;
    else if (strcmp(key, "query_timeout") == 0)
        field = &t->query_timeout;
    else if (strcmp(key, "idle_transaction_timeout") == 0)
        field = &t->idle_transaction_timeout;
    else if (strcmp(key, "transaction_timeout") == 0)
        field = &t->transaction_timeout;
    else if (strcmp(key, "client_idle_timeout") == 0)
        field = &t->client_idle_timeout;
    if (!field)
        return 0;
    char why[160];
    if (parse_TIME(val, field, why, sizeof why) != 0) {
        error_msg(L, "%s: %s = '%s': %s", where, key, val, why);
        return -EINVAL;
    }
    return 1;
}

/* sluice's own per-database keys. 1: it was one (and is applied), 0: it is not, -EINVAL: it was
 * one with a bad value (reported under where). */
static int db_sluice_key(struct loader *L, const char *where, struct db_entry *db, const char *key,
                         const char *val)
{
    int timeout = entry_timeout_key(L, where, &db->timeouts, key, val);
    if (timeout != 0)
        return timeout;
    int *count = NULL;
    if (strcmp(key, "pool_size") == 0)
        count = &db->pool_size;
    else if (strcmp(key, "min_pool_size") == 0)
        count = &db->min_pool_size;
    else if (strcmp(key, "reserve_pool") == 0 || strcmp(key, "reserve_pool_size") == 0)
        count = &db->reserve_pool;
    else if (strcmp(key, "max_db_client_connections") == 0)
        count = &db->max_db_client_connections;
    if (count) {
        if (parse_count(val, count) != 0) {
            error_msg(L, "%s: %s = '%s': expected a number from 0 to %d", where, key, val, INT_MAX);
            return -EINVAL;
        }
        return 1;
    }
    if (strcmp(key, "pool_mode") == 0) {
        char why[128];
        if (parse_POOL_MODE(val, &db->pool_mode, why, sizeof why) != 0) {
            error_msg(L, "%s: pool_mode = '%s': %s", where, val, why);
            return -EINVAL;
        }
        return 1;
    }
    if (strcmp(key, "max_db_connections") == 0) {
        if (parse_limit_text(val, &db->max_db_connections) != 0) {
            error_msg(L,
                      "%s: max_db_connections = '%s': expected a count (0 = the main "
                      "section's) or a percentage from 1%% to 100%%",
                      where, val);
            return -EINVAL;
        }
        return 1;
    }
    if (strcmp(key, "auth_user") == 0) {
        free(db->auth_user);
        db->auth_user = dup_or_flag(L, val);
        return 1;
    }
    if (strcmp(key, "load_balance_hosts") == 0) {
        if (strcasecmp(val, "round-robin") == 0) {
            db->load_balance_hosts = LOAD_BALANCE_ROUND_ROBIN;
        } else if (strcasecmp(val, "disable") == 0) {
            db->load_balance_hosts = LOAD_BALANCE_DISABLE;
        } else {
            error_msg(L, "%s: load_balance_hosts = '%s': expected round-robin or disable", where,
                      val);
            return -EINVAL;
        }
        return 1;
    }
    if (strcmp(key, "auth_dbname") == 0) {
        free(db->auth_dbname);
        db->auth_dbname = val[0] ? dup_or_flag(L, val) : NULL;
        return 1;
    }
    if (strcmp(key, "connect_query") == 0) {
        free(db->connect_query);
        db->connect_query = val[0] ? dup_or_flag(L, val) : NULL;
        return 1;
    }
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
    while ((rc = next_pair(&p, &key, &val, &why)) == 1) {
        int r = db_sluice_key(L, where, db, key, val);
        if (r < 0) {
            failed = -EINVAL;
        } else if (r == 0) {
            if (strcmp(key, "datestyle") == 0 || strcmp(key, "timezone") == 0) {
                /* PgBouncer server parameters, not libpq keywords: send them as options. */
                if (append_server_option(&server_options, key[0] == 'd' ? "DateStyle" : "TimeZone",
                                         val) != 0)
                    L->oom = true;
            } else if (!is_pq_keyword(L, key) && IN_LIST(pgbouncer_only_db_keys, key)) {
                warning_msg(L, "%s: PgBouncer key '%s' is not supported by sluice; ignored", where,
                            key);
            } else if (!is_pq_keyword(L, key)) {
                /* The value is not echoed: the typo may be in "password". */
                error_msg(L,
                          "%s: unknown connection keyword '%s' (libpq connection parameters "
                          "and pool_size, min_pool_size, reserve_pool, pool_mode, "
                          "max_db_connections, max_db_client_connections, auth_user, "
                          "auth_dbname, server_lifetime, query_timeout, "
                          "idle_transaction_timeout, transaction_timeout, client_idle_timeout, "
                          "connect_query, load_balance_hosts are accepted)",
                          where, key);
                failed = -EINVAL;
            } else if (db_set_keyword(db, key, val) != 0) {
                L->oom = true;
            }
        }
        free(key);
        free_secret(val);
    }
    if (rc == -EINVAL) {
        error_msg(L, "%s: %s", where, why);
        failed = rc;
    } else if (rc == -ENOMEM) {
        L->oom = true;
    }
    if (server_options) {
        const char *given = db_keyword(db, "options");
        char *all = NULL;
        if (given && asprintf(&all, "%s %s", given, server_options) < 0)
            L->oom = true;
        if (db_set_keyword(db, "options", all ? all : server_options) != 0)
            L->oom = true;
        free(all);
        free(server_options);
    }
    return failed;
}

static bool is_url(const char *v)
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

/* A postgres:// URL. sluice's keys are taken out of its query string; libpq parses the rest
 * (PQconninfoParse decodes percent escapes and checks parameter names) into keywords. Our own
 * check of the escapes comes first because libpq's message would quote the undecodable text,
 * which may be the password. */
static int db_from_url(struct loader *L, const char *where, struct db_entry *db, const char *url)
{
    bool bad = false;
    char *check = percent_decode(url, strlen(url), &bad);
    free_secret(check);
    if (bad) {
        error_msg(L,
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
            r = db_sluice_key(L, where, db, key, val);
            if (r == 0 && !is_pq_keyword(L, key)) {
                for (size_t i = 0; i < sizeof client_url_params / sizeof client_url_params[0];
                     i++) {
                    if (strcmp(key, client_url_params[i]) == 0) {
                        warning_msg(L,
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
        free_secret(val);
        param = end ? end + 1 : NULL;
    }
    stripped[len] = '\0';
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(stripped, &msg);
    free_secret(stripped);
    if (!opts) {
        if (msg) {
            msg[strcspn(msg, "\n")] = '\0';
            error_msg(L, "%s: bad URL: %s", where, msg);
            PQfreemem(msg);
        } else {
            L->oom = true;
        }
        return -EINVAL;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val && db_set_keyword(db, o->keyword, o->val) != 0)
            L->oom = true;
    }
    PQconninfoFree(opts);
    return failed;
}

static bool push_db(struct loader *L, const struct db_entry *db)
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

static void on_database(struct loader *L, const char *name, const char *value)
{
    char where[320];
    snprintf(where, sizeof where, "%sline %d: database '%s'", L->origin, L->line, name);
    const struct db_entry *dup = find_db_exact(L->c, name);
    if (dup) {
        error_msg(L, "%s is defined twice (first at line %d)", where, dup->line);
        return;
    }
    struct db_entry db;
    if (!db_new(L, &db, name, L->line))
        return;
    int rc =
        is_url(value) ? db_from_url(L, where, &db, value) : db_from_pairs(L, where, &db, value);
    /* PgBouncer: an entry without dbname connects to the database of its own name; the "*"
     * entry's dbname is whatever the client asked for, filled in per connection. */
    if (rc == 0 && strcmp(name, "*") != 0 && !db_keyword(&db, "dbname") &&
        db_set_keyword(&db, "dbname", name) != 0)
        L->oom = true;
    if (rc != 0 || L->oom || !push_db(L, &db))
        db_entry_free(&db);
}

/* ---- [users] ---- */

static void on_user(struct loader *L, const char *name, const char *value)
{
    struct config *c = L->c;
    char where[320];
    snprintf(where, sizeof where, "%sline %d: user '%s'", L->origin, L->line, name);
    const struct user_entry *dup = config_find_user(c, name);
    if (dup) {
        error_msg(L, "%s is defined twice (first at line %d)", where, dup->line);
        return;
    }
    struct user_entry u = {
        .pool_size = -1, .reserve_pool = -1, .timeouts = ENTRY_TIMEOUTS_UNSET, .line = L->line};
    const char *p = value, *why = NULL;
    char *key, *val;
    int rc, failed = 0;
    while ((rc = next_pair(&p, &key, &val, &why)) == 1) {
        int timeout = entry_timeout_key(L, where, &u.timeouts, key, val);
        if (timeout != 0) {
            failed |= timeout < 0;
        } else if (strcmp(key, "pool_mode") == 0) {
            char why[128];
            if (parse_POOL_MODE(val, &u.pool_mode, why, sizeof why) != 0) {
                error_msg(L, "%s: pool_mode = '%s': %s", where, val, why);
                failed = 1;
            }
        } else if (strcmp(key, "pool_size") == 0) {
            if (parse_count(val, &u.pool_size) != 0) {
                error_msg(L, "%s: pool_size = '%s': expected a number from 0 to %d", where, val,
                          INT_MAX);
                failed = 1;
            }
        } else if (strcmp(key, "reserve_pool_size") == 0 || strcmp(key, "reserve_pool") == 0) {
            if (parse_count(val, &u.reserve_pool) != 0) {
                error_msg(L, "%s: %s = '%s': expected a number from 0 to %d", where, key, val,
                          INT_MAX);
                failed = 1;
            }
        } else if (strcmp(key, "max_user_connections") == 0) {
            if (parse_limit_text(val, &u.max_user_connections) != 0) {
                error_msg(L,
                          "%s: max_user_connections = '%s': expected a count or a percentage "
                          "from 1%% to 100%%",
                          where, val);
                failed = 1;
            }
        } else if (strcmp(key, "max_user_client_connections") == 0) {
            if (parse_count(val, &u.max_user_client_connections) != 0) {
                error_msg(L,
                          "%s: max_user_client_connections = '%s': expected a number from 0 "
                          "to %d",
                          where, val, INT_MAX);
                failed = 1;
            }
        } else {
            error_msg(L,
                      "%s: unknown key '%s' (pool_mode, pool_size, reserve_pool_size, "
                      "server_lifetime, query_timeout, idle_transaction_timeout, "
                      "transaction_timeout, client_idle_timeout, max_user_connections and "
                      "max_user_client_connections are accepted)",
                      where, key);
            failed = 1;
        }
        free(key);
        free(val);
    }
    if (rc == -EINVAL) {
        error_msg(L, "%s: %s", where, why);
        failed = 1;
    } else if (rc == -ENOMEM) {
        L->oom = true;
    }
    if (failed || L->oom)
        return;
    u.name = dup_or_flag(L, name);
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
            error_msg(L, "%s is defined twice (first at line %d)", where, c->budgets[i].line);
            return;
        }
    }
    struct budget_entry b = {.line = L->line};
    const char *p = value, *why = NULL;
    char *key, *val;
    int rc, failed = 0;
    while ((rc = next_pair(&p, &key, &val, &why)) == 1) {
        char **str = NULL;
        int *count = NULL;
        if (strcmp(key, "app") == 0)
            str = &b.app_pattern;
        else if (strcmp(key, "user") == 0)
            str = &b.user;
        else if (strcmp(key, "addr") == 0)
            str = &b.addr_cidr;
        else if (strcmp(key, "max_servers") == 0)
            count = &b.max_servers;
        else if (strcmp(key, "max_clients") == 0)
            count = &b.max_clients;
        else if (strcmp(key, "min_servers") == 0)
            count = &b.min_servers;
        /* Parsed here, once, by the parser that matching uses: text the matcher would read
         * differently (a prefix of "/0008") is refused rather than silently ignored. */
        if (str == &b.addr_cidr && cidr_parse(val, &b.addr) != 0) {
            error_msg(L,
                      "%s: addr = '%s': expected an IPv4 or IPv6 address or CIDR "
                      "(10.0.0.0/8, ::1/128)",
                      where, val);
            failed = 1;
        } else if (str) {
            free(*str);
            *str = dup_or_flag(L, val);
        } else if (count && parse_count(val, count) != 0) {
            error_msg(L, "%s: %s = '%s': expected a number from 0 to %d", where, key, val, INT_MAX);
            failed = 1;
        } else if (!count) {
            error_msg(L,
                      "%s: unknown key '%s' (app, user, addr, max_servers, max_clients and "
                      "min_servers are accepted)",
                      where, key);
            failed = 1;
        }
        free(key);
        free(val);
    }
    if (rc == -EINVAL) {
        error_msg(L, "%s: %s", where, why);
        failed = 1;
    } else if (rc == -ENOMEM) {
        L->oom = true;
    }
    if (!failed && b.max_servers > 0 && b.min_servers > b.max_servers) {
        error_msg(L, "%s: min_servers %d is above max_servers %d", where, b.min_servers,
                  b.max_servers);
        failed = 1;
    }
    b.name = dup_or_flag(L, name);
    struct budget_entry *grown =
        failed || L->oom ? NULL : realloc(c->budgets, (size_t)(c->nbudgets + 1) * sizeof *grown);
    if (!grown) {
        if (!failed)
            L->oom = true;
        budget_entry_free(&b);
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
    int idx = find_key(name);
    if (idx < 0) {
        if (is_pgbouncer_only_key(name))
            warning_msg(L, "%sline %d: PgBouncer key '%s' is not supported by sluice; ignored%s",
                        L->origin, L->line, name,
                        strncasecmp(name, "server_tls", 10) == 0
                            ? " (set sslmode, sslrootcert, ... in each [databases] entry)"
                            : "");
        else
            error_msg(L, "%sline %d: unknown key '%s' in [%s]", L->origin, L->line, name, section);
        return;
    }
    char why[256];
    if (set_key(L->c, idx, value, SRC_FILE, CHECK_KEY_ONLY, why, sizeof why) != 0)
        error_msg(L, "%sline %d: %s = '%s': %s%s", L->origin, L->line, name, value, why,
                  looks_like_inline_comment(value) ? INLINE_COMMENT_HINT : "");
    else if (idx == KEY_IDX_auth_file && looks_like_inline_comment(value))
        warning_msg(L, "%sline %d: auth_file = '%s'%s", L->origin, L->line, value,
                    INLINE_COMMENT_HINT);
}

static int on_ini_entry(void *user, const char *section, const char *name, const char *value)
{
    struct loader *L = user;
    if (strncmp(name, "%include", 8) == 0) {
        warning_msg(L, "%sline %d: %%include is not supported by sluice; ignored", L->origin,
                    L->line);
        return 1;
    }
    if (!value) {
        error_msg(L, "%sline %d: expected 'key = value' or '[section]'", L->origin, L->line);
        return 1;
    }
    if (section[0] == '\0') {
        error_msg(L, "%sline %d: '%s' is outside any section; put it under [sluice]", L->origin,
                  L->line, name);
        return 1;
    }
    if (strcasecmp(section, "sluice") == 0 || strcasecmp(section, "pgbouncer") == 0) {
        on_main_key(L, section, name, value);
    } else if (strcasecmp(section, "databases") == 0) {
        on_database(L, name, value);
    } else if (strcasecmp(section, "users") == 0) {
        on_user(L, name, value);
    } else if (strcasecmp(section, "budgets") == 0) {
        on_budget(L, name, value);
    } else if (!L->bad_section || strcmp(L->bad_section, section) != 0) {
        if (strcasecmp(section, "peers") == 0)
            warning_msg(L, "%sline %d: section [peers] is not supported by sluice; ignored",
                        L->origin, L->line);
        else
            error_msg(L,
                      "%sline %d: unknown section [%s] (expected [sluice] or [pgbouncer], "
                      "[databases], [users], [budgets])",
                      L->origin, L->line, section);
        free(L->bad_section);
        L->bad_section = dup_or_flag(L, section);
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

static void parse_ini(struct loader *L, const char *text)
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
        error_msg(L, "%sline %d: syntax error: expected '[section]' or 'key = value'", L->origin,
                  rc);
    L->line = 0;
}

/* A whole file into a string, refusing NUL bytes and anything past 16 MiB. 0 or -errno. */
static int read_text_file(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int rc = 0;
    while (buf) {
        if (len + 1 >= cap) {
            if (cap >= 16 * 1024 * 1024) {
                rc = -EFBIG;
                break;
            }
            char *grown = realloc(buf, cap * 2);
            if (!grown)
                break;
            buf = grown;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) {
            rc = ferror(f) ? -(errno ? errno : EIO) : 0; /* EISDIR for a directory */
            break;
        }
    }
    fclose(f);
    if (!buf)
        return -ENOMEM;
    buf[len] = '\0';
    if (rc == 0 && strlen(buf) != len)
        rc = -EINVAL;
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* ---- auth_file (PgBouncer's userlist.txt) ---- */

/* "text" with "" for a quote; advances *sp past it. NULL when malformed. */
static char *userlist_quoted(const char **sp)
{
    const char *p = *sp;
    if (*p != '"')
        return NULL;
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    if (!out)
        return NULL;
    for (p++;; p++) {
        if (!*p || *p == '\n') {
            out[n] = '\0';
            free_secret(out);
            return NULL;
        }
        if (*p == '"') {
            if (p[1] != '"')
                break;
            p++;
        }
        out[n++] = *p;
    }
    out[n] = '\0';
    *sp = p + 1;
    return out;
}

static void add_auth(struct loader *L, const char *user, const char *secret)
{
    struct config *c = L->c;
    char *u = strdup(user), *s = strdup(secret);
    struct auth_entry *grown = realloc(c->auth, (size_t)(c->nauth + 1) * sizeof *grown);
    if (!u || !s || !grown) {
        free(u);
        free_secret(s);
        if (grown)
            c->auth = grown;
        L->oom = true;
        return;
    }
    c->auth = grown;
    c->auth[c->nauth++] = (struct auth_entry){.user = u, .secret = s};
}

static void load_auth_file(struct loader *L)
{
    const char *file = L->c->auth_file;
    if (!file || !file[0])
        return;
    char *path = NULL;
    const char *slash = L->c->path ? strrchr(L->c->path, '/') : NULL;
    if (file[0] != '/' && slash) { /* relative to the config file's directory */
        if (asprintf(&path, "%.*s/%s", (int)(slash - L->c->path), L->c->path, file) < 0) {
            L->oom = true;
            return;
        }
    } else if (!(path = dup_or_flag(L, file))) {
        return;
    }
    char *text;
    int rc = read_text_file(path, &text);
    if (rc != 0) {
        error_msg(L, "auth_file %s: cannot read it: %s", path,
                  rc == -EINVAL ? "it contains a NUL byte" : strerror(-rc));
        free(path);
        return;
    }
    int line = 0;
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        line++;
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        if (*p && *p != '\n' && *p != ';' && *p != '#') {
            char *user = userlist_quoted(&p);
            while (user && (*p == ' ' || *p == '\t'))
                p++;
            char *secret = user ? userlist_quoted(&p) : NULL;
            if (!user || !secret || !user[0])
                error_msg(L,
                          "auth_file %s line %d: expected \"user\" \"password\" (double "
                          "quotes, \"\" for a quote inside)",
                          path, line);
            else
                add_auth(L, user, secret);
            free(user);
            free_secret(secret);
        }
        if (!eol)
            break;
        p = eol + 1;
    }
    free_secret(text);
    free(path);
}

/* PgBouncer: a user listed again replaces the earlier line. Keep the last, in file order. */
static void drop_repeated_auth(struct config *c)
{
    int kept = 0;
    for (int i = 0; i < c->nauth; i++) {
        bool later = false;
        for (int j = i + 1; j < c->nauth && !later; j++)
            later = strcmp(c->auth[i].user, c->auth[j].user) == 0;
        if (later) {
            free(c->auth[i].user);
            free_secret(c->auth[i].secret);
        } else {
            c->auth[kept++] = c->auth[i];
        }
    }
    c->nauth = kept;
}

/* ---- the environment ---- */

static void env_database_url(struct loader *L, const char *url)
{
    if (!is_url(url)) { /* not echoed: it holds a password */
        error_msg(L, "DATABASE_URL: expected postgres://user:password@host:port/dbname or "
                     "postgresql://...");
        return;
    }
    struct db_entry db;
    if (!db_new(L, &db, "postgres", 0))
        return;
    if (db_from_url(L, "DATABASE_URL", &db, url) != 0 || L->oom) {
        db_entry_free(&db);
        return;
    }
    const char *dbname = db_keyword(&db, "dbname");
    if (!dbname) {
        if (db_set_keyword(&db, "dbname", "postgres") != 0)
            L->oom = true;
    } else {
        char *name = dup_or_flag(L, dbname);
        free(db.name);
        db.name = name;
    }
    const struct db_entry *file_db = db.name ? find_db_exact(L->c, db.name) : NULL;
    if (file_db) {
        warning_msg(L,
                    "DATABASE_URL: database '%s' is also defined at line %d of the config "
                    "file; the file's entry is used",
                    db.name, file_db->line);
        db_entry_free(&db);
        return;
    }
    const char *user = db_keyword(&db, "user"), *password = db_keyword(&db, "password");
    if (user && password) {
        L->url_user = dup_or_flag(L, user);
        L->url_password = dup_or_flag(L, password);
    }
    if (!db.name || L->oom || !push_db(L, &db))
        db_entry_free(&db);
}

static bool env_ignored(const char *name, size_t len)
{
    return (len == 10 && strncmp(name, "SLUICE_BIN", 10) == 0) ||
           (len == 13 && strncmp(name, "SLUICE_CONFIG", 13) == 0) ||
           strncmp(name, "SLUICE_TEST_", 12) == 0;
}

static void apply_env(struct loader *L, char *const *env)
{
    const char *database_url = NULL;
    for (char *const *e = env; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t len = (size_t)(eq - *e);
        if (len == 12 && strncmp(*e, "DATABASE_URL", 12) == 0) {
            database_url = eq + 1;
            continue;
        }
        if (len <= 7 || strncmp(*e, "SLUICE_", 7) != 0 || env_ignored(*e, len))
            continue;
        char key[128];
        if (len - 7 >= sizeof key) {
            error_msg(L, "environment: unknown variable %.*s", (int)len, *e);
            continue;
        }
        for (size_t i = 7; i < len; i++)
            key[i - 7] = (char)tolower((unsigned char)(*e)[i]);
        key[len - 7] = '\0';
        int idx = find_key(key);
        if (idx < 0) {
            if (is_pgbouncer_only_key(key))
                warning_msg(L,
                            "environment: %.*s: PgBouncer key '%s' is not supported by "
                            "sluice; ignored",
                            (int)len, *e, key);
            else
                error_msg(L, "environment: unknown variable %.*s (sluice has no key '%s')",
                          (int)len, *e, key);
            continue;
        }
        char why[256];
        if (set_key(L->c, idx, eq + 1, SRC_ENV, CHECK_KEY_ONLY, why, sizeof why) != 0)
            error_msg(L, "environment: %.*s: %s = '%s': %s", (int)len, *e, config_keys[idx].name,
                      eq + 1, why);
    }
    /* After the SLUICE_ keys, which do not affect it, and after the file, whose entry wins. */
    if (database_url && database_url[0])
        env_database_url(L, database_url);
}

/* ---- whole-config validation ---- */

static void validate(struct loader *L)
{
    struct config *c = L->c;
    char why[256];
    if (c->ndbs == 0)
        error_msg(L, "no databases: add a [databases] section or set DATABASE_URL");
    if (check_main(c, why, sizeof why) != 0)
        error_msg(L, "%s", why);
    for (int i = 0; i < c->ndbs; i++) {
        const struct db_entry *db = &c->dbs[i];
        int size = db->pool_size >= 0 ? db->pool_size : (int)c->default_pool_size;
        int min = db->min_pool_size >= 0 ? db->min_pool_size : (int)c->min_pool_size;
        char where[320];
        if (db->line > 0)
            snprintf(where, sizeof where, "%sline %d: database '%s'", L->origin, db->line,
                     db->name);
        else
            snprintf(where, sizeof where, "DATABASE_URL: database '%s'", db->name);
        if (min > size)
            error_msg(L, "%s: min_pool_size %d%s is above its pool_size %d%s", where, min,
                      db->min_pool_size >= 0 ? "" : " (the main section's)", size,
                      db->pool_size >= 0 ? "" : " (default_pool_size)");
    }
    /* auth and TLS keys that only make sense together (tls.c and auth.c check the files) */
    if (c->auth_type == AUTH_HBA && !c->auth_hba_file[0])
        error_msg(L, "auth_type = hba needs auth_hba_file");
    if (c->client_tls_sslmode != SSLMODE_DISABLE &&
        (!c->client_tls_cert_file[0] || !c->client_tls_key_file[0]))
        error_msg(L, "client_tls_sslmode = %s needs client_tls_cert_file and client_tls_key_file",
                  sslmode_name(c->client_tls_sslmode));
    if (c->client_tls_sslmode >= SSLMODE_VERIFY_CA && !c->client_tls_ca_file[0])
        error_msg(L, "client_tls_sslmode = %s needs client_tls_ca_file",
                  sslmode_name(c->client_tls_sslmode));
    if (c->auth_type == AUTH_CERT && c->client_tls_sslmode == SSLMODE_DISABLE)
        error_msg(L, "auth_type = cert needs client TLS: set client_tls_sslmode (and "
                     "client_tls_ca_file)");
    bool needs_secret =
        c->auth_type == AUTH_PLAIN || c->auth_type == AUTH_MD5 || c->auth_type == AUTH_SCRAM;
    if (needs_secret && c->nauth == 0 && !c->auth_user[0])
        warning_msg(L,
                    "auth_type is %s but there are no users (auth_file and DATABASE_URL give "
                    "none): every client login will fail",
                    auth_type_name(c->auth_type));
}

static struct config *load(const char *path, const char *text, char *const *env,
                           struct config_diag *diag)
{
    struct config_diag own = {0};
    struct loader L = {.diag = diag ? diag : &own, .origin = ""};
    struct config *c = calloc(1, sizeof *c);
    char origin[PATH_MAX + 4];
    if (!c || !(c->sources = calloc(KEY_COUNT, sizeof *c->sources))) {
        free(c);
        error_msg(&L, "out of memory while loading the config");
        config_diag_free(&own);
        return NULL;
    }
    L.c = c;
    for (int i = 0; i < KEY_COUNT; i++) {
        char why[256];
        if (set_key(c, i, config_keys[i].def, SRC_DEFAULT, CHECK_KEY_ONLY, why, sizeof why) != 0)
            error_msg(&L, "default of %s ('%s') is invalid: %s", config_keys[i].name,
                      config_keys[i].def, why);
    }
    L.pq_defaults = PQconndefaults(); /* NULL only when libpq is out of memory */
    if (!L.pq_defaults)
        L.oom = true;
    if (path) {
        c->path = dup_or_flag(&L, path);
        snprintf(origin, sizeof origin, "%s: ", path);
        L.origin = origin;
    }
    if (text)
        parse_ini(&L, text);
    apply_env(&L, env);
    load_auth_file(&L);
    drop_repeated_auth(c);
    if (L.url_user) {
        if (config_find_auth(c, L.url_user))
            warning_msg(&L,
                        "DATABASE_URL: user '%s' is also in auth_file; auth_file's password "
                        "is used for client logins",
                        L.url_user);
        else
            add_auth(&L, L.url_user, L.url_password);
    }
    validate(&L);
    if (L.oom)
        error_msg(&L, "out of memory while loading the config");
    PQconninfoFree(L.pq_defaults);
    free(L.bad_section);
    free(L.url_user);
    free_secret(L.url_password);
    config_diag_free(&own);
    if (L.nerrors > 0) {
        config_free(c);
        return NULL;
    }
    return c;
}

struct config *config_load(const char *path, char *const *env, struct config_diag *diag)
{
    if (!path)
        return load(NULL, NULL, env, diag);
    char *text;
    int rc = read_text_file(path, &text);
    if (rc != 0) {
        struct config_diag own = {0};
        struct loader L = {.diag = diag ? diag : &own};
        error_msg(&L, "%s: cannot read the config file: %s", path,
                  rc == -EINVAL ? "it contains a NUL byte" : strerror(-rc));
        config_diag_free(&own);
        return NULL;
    }
    struct config *c = load(path, text, env, diag);
    free(text);
    return c;
}

struct config *config_load_string(const char *ini_text, char *const *env, struct config_diag *diag)
{
    return load(NULL, ini_text, env, diag);
}
