/* config_value: one parser per value type of config_keys.def (and config_enums.def's values for
 * the enum types), and the formatter that writes a value back as text; see config_value.h. */
#include "config_value.h"

#include "cidr.h"
#include "cpus.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

bool config_value_is_enum(const char *type)
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
void config_value_enum_expected(const char *type, char *why, size_t n)
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

const char *load_balance_hosts_name(enum load_balance_hosts l)
{
    return enum_name("LOAD_BALANCE_HOSTS", l);
}

const char *sslmode_name(enum sslmode m)
{
    return enum_name("SSLMODE", m);
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

/* ---- value parsers, one per kind (config_keys.def, config_entry_keys.def) ----
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

static int parse_count(const char *v, int *out)
{
    int64_t n;
    if (parse_int64(v, &n) != 0 || n < 0 || n > INT_MAX)
        return -EINVAL;
    *out = (int)n;
    return 0;
}

/* A per-entry count ([databases], [users], [budgets]): 0..INT_MAX. */
int config_value_parse_COUNT(const char *v, int *out, char *why, size_t n)
{
    if (parse_count(v, out) != 0) {
        snprintf(why, n, "expected a number from 0 to %d", INT_MAX);
        return -EINVAL;
    }
    return 0;
}

int config_value_parse_STR(const char *v, char **out, char *why, size_t n)
{
    char *s = strdup(v);
    if (!s) {
        snprintf(why, n, "out of memory");
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

int config_value_parse_INT(const char *v, int64_t *out, char *why, size_t n)
{
    if (parse_int64(v, out) != 0) {
        snprintf(why, n, "expected an integer");
        return -EINVAL;
    }
    return 0;
}

int config_value_parse_FILE_MODE(const char *v, unsigned *out, char *why, size_t n)
{
    unsigned mode = 0;
    size_t len = strlen(v);
    bool digits = len > 0 && len <= 5 && strspn(v, "01234567") == len;
    for (size_t i = 0; digits && i < len; i++)
        mode = mode * 8 + (unsigned)(v[i] - '0');
    if (!digits || mode > 07777) {
        snprintf(why, n, "expected permission bits in octal, such as 0770");
        return -EINVAL;
    }
    *out = mode;
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

int config_value_parse_BOOL(const char *v, bool *out, char *why, size_t n)
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
int config_value_parse_TIME(const char *v, int64_t *out, char *why, size_t n)
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

int config_value_parse_LIMIT(const char *v, struct limit *out, char *why, size_t n)
{
    if (parse_limit_text(v, out) != 0) {
        snprintf(why, n, "expected a count or a percentage from 1%% to 100%%");
        return -EINVAL;
    }
    return 0;
}

/* After "auto": nothing, or SHOW CONFIG's " (N)", so what it prints reads back as auto. */
static bool auto_shown_reads_back(const char *rest)
{
    if (!rest[0])
        return true;
    if (strncmp(rest, " (", 2) != 0 || !isdigit((unsigned char)rest[2]))
        return false;
    rest += 2;
    while (isdigit((unsigned char)*rest))
        rest++;
    return strcmp(rest, ")") == 0;
}

int config_value_parse_THREADS(const char *v, struct thread_count *out, char *why, size_t n)
{
    int64_t count;
    if (strncasecmp(v, "auto", 4) == 0 && auto_shown_reads_back(v + 4)) {
        int cpus = cpus_usable();
        *out = (struct thread_count){.n = cpus < CONFIG_THREADS_MAX ? cpus : CONFIG_THREADS_MAX,
                                     .automatic = true};
        return 0;
    }
    if (parse_int64(v, &count) != 0 || count < 1 || count > CONFIG_THREADS_MAX) {
        snprintf(why, n, "expected auto or a number from 1 to %d", CONFIG_THREADS_MAX);
        return -EINVAL;
    }
    *out = (struct thread_count){.n = (int)count, .automatic = false};
    return 0;
}

/* config_value_parse_<KIND> and _format_<KIND> of an enum kind, through its config_enums.def
 * lines. */
#define ENUM_KIND(type, ctype)                                                                     \
    int config_value_parse_##type(const char *v, ctype *out, char *why, size_t n)                  \
    {                                                                                              \
        int value;                                                                                 \
        if (enum_parse(#type, v, &value) != 0) {                                                   \
            config_value_enum_expected(#type, why, n);                                             \
            return -EINVAL;                                                                        \
        }                                                                                          \
        *out = (ctype)value;                                                                       \
        return 0;                                                                                  \
    }                                                                                              \
    void config_value_format_##type(const ctype *v, char *out, size_t n)                           \
    {                                                                                              \
        snprintf(out, n, "%s", enum_name(#type, (int)*v));                                         \
    }
ENUM_KIND(POOL_MODE, enum pool_mode)
ENUM_KIND(LOG_FORMAT, enum log_format)
ENUM_KIND(LOG_LEVEL, enum log_level)
ENUM_KIND(SESSION_STATE_POLICY, enum session_policy)
ENUM_KIND(SSLMODE, enum sslmode)
ENUM_KIND(LOAD_BALANCE_HOSTS, enum load_balance_hosts)

int config_value_parse_AUTH_TYPE(const char *v, enum auth_type *out, char *why, size_t n)
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
        config_value_enum_expected("AUTH_TYPE", why, n);
    return -EINVAL;
}

void config_value_format_STR(char *const *v, char *out, size_t n)
{
    snprintf(out, n, "%s", *v ? *v : "");
}

void config_value_free_STR(char **v)
{
    free(*v);
    *v = NULL;
}

/* Empty means "not set": NULL, so that the main section's value applies. */
int config_value_parse_OPTIONAL_STR(const char *v, char **out, char *why, size_t n)
{
    if (v[0])
        return config_value_parse_STR(v, out, why, n);
    *out = NULL;
    return 0;
}

static bool is_list_separator(char ch)
{
    return ch == ',' || isspace((unsigned char)ch);
}

int config_value_parse_LIST(const char *v, struct name_list *out, char *why, size_t n)
{
    struct name_list l = {.text = strdup(v)};
    size_t most = strlen(v) / 2 + 1; /* names and separators alternate */
    l.names = calloc(most, sizeof *l.names);
    bool oom = !l.text || !l.names;
    for (const char *p = v; !oom && *p;) {
        while (is_list_separator(*p))
            p++;
        size_t len = 0;
        while (p[len] && !is_list_separator(p[len]))
            len++;
        if (len == 0)
            break;
        oom = !(l.names[l.n] = strndup(p, len));
        l.n += !oom;
        p += len;
    }
    if (oom) {
        config_value_free_LIST(&l);
        snprintf(why, n, "out of memory");
        return -ENOMEM;
    }
    *out = l;
    return 0;
}

void config_value_format_LIST(const struct name_list *v, char *out, size_t n)
{
    snprintf(out, n, "%s", v->text ? v->text : "");
}

void config_value_free_LIST(struct name_list *v)
{
    for (int i = 0; v->names && i < v->n; i++)
        free(v->names[i]);
    free(v->names);
    free(v->text);
    *v = (struct name_list){0};
}

int config_value_parse_SQL(const char *v, struct sql_setting *out, char *why, size_t n)
{
    char *text;
    int rc = config_value_parse_STR(v, &text, why, n);
    if (rc != 0)
        return rc;
    enum sql_setting_kind kind = SQL_SETTING_OTHER;
    if (!v[0])
        kind = SQL_SETTING_NONE;
    else if (strcmp(v, "<empty>") == 0)
        kind = SQL_SETTING_EMPTY_QUERY;
    else if (strcasecmp(v, "DISCARD ALL") == 0)
        kind = SQL_SETTING_DISCARD_ALL;
    *out = (struct sql_setting){.text = text, .kind = kind};
    return 0;
}

void config_value_format_SQL(const struct sql_setting *v, char *out, size_t n)
{
    config_value_format_STR(&v->text, out, n);
}

void config_value_free_SQL(struct sql_setting *v)
{
    config_value_free_STR(&v->text);
}

/* Parsed here, once, by the parser that matching uses: text the matcher would read differently
 * (a prefix of "/0008") is refused rather than silently ignored. */
int config_value_parse_CIDR(const char *v, struct cidr_setting *out, char *why, size_t n)
{
    struct cidr net;
    if (cidr_parse(v, &net) != 0) {
        snprintf(why, n, "expected an IPv4 or IPv6 address or CIDR (10.0.0.0/8, ::1/128)");
        return -EINVAL;
    }
    char *text;
    int rc = config_value_parse_STR(v, &text, why, n);
    if (rc != 0)
        return rc;
    *out = (struct cidr_setting){.text = text, .net = net};
    return 0;
}

void config_value_free_CIDR(struct cidr_setting *v)
{
    config_value_free_STR(&v->text);
}

void config_value_format_INT(const int64_t *v, char *out, size_t n)
{
    snprintf(out, n, "%lld", (long long)*v);
}

void config_value_format_FILE_MODE(const unsigned *v, char *out, size_t n)
{
    snprintf(out, n, "0%03o", *v);
}

void config_value_format_BOOL(const bool *v, char *out, size_t n)
{
    snprintf(out, n, "%d", *v ? 1 : 0);
}

/* Whole seconds print bare (PgBouncer's unit); anything else in ms. Either reads back the same. */
void config_value_format_TIME(const int64_t *v, char *out, size_t n)
{
    if (*v % 1000 == 0)
        snprintf(out, n, "%lld", (long long)(*v / 1000));
    else
        snprintf(out, n, "%lldms", (long long)*v);
}

void config_value_format_LIMIT(const struct limit *v, char *out, size_t n)
{
    snprintf(out, n, "%d%s", v->value, v->is_percent ? "%" : "");
}

void config_value_format_THREADS(const struct thread_count *v, char *out, size_t n)
{
    if (v->automatic)
        snprintf(out, n, "auto (%d)", v->n);
    else
        snprintf(out, n, "%d", v->n);
}

void config_value_format_AUTH_TYPE(const enum auth_type *v, char *out, size_t n)
{
    snprintf(out, n, "%s", auth_type_name(*v));
}
