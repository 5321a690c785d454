/* config_keys: the main section's keys (config_keys.def): their table, setting one from text
 * through its type's parser (file, environment, admin SET), the checks of one key and between
 * keys, and formatting a value for SHOW CONFIG. */
#include "config_load.h"
#include "config_value.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KEY_RELOADABLE_RELOAD true
#define KEY_RELOADABLE_RESTART false
const struct config_key_info config_keys[] = {
#define KEY(name, type, def, reload, doc) {#name, #type, def, KEY_RELOADABLE_##reload, doc},
#include "config_keys.def"
#undef KEY
};
const int config_nkeys = KEY_COUNT;

/* PgBouncer keys that sluice reads but does not act on: a pgbouncer.ini that sets them still
 * loads, with a warning per key, instead of failing on the first one; the warning says what
 * sluice does instead where it does something. */
#define SYSLOG_INSTEAD                                                                             \
    "sluice logs to stderr or logfile, as JSON with log_format = json, where a container's "       \
    "or systemd's journal takes it"
#define DNS_INSTEAD                                                                                \
    "sluice resolves host names with the system resolver, getaddrinfo, for each new server "       \
    "connection"
#define WINDOWS_ONLY "a Windows service's setting"
static const struct pgbouncer_only_key {
    const char *name;
    const char *instead; /* NULL: nothing of sluice's takes its place */
} pgbouncer_only_keys[] = {
    {"syslog", SYSLOG_INSTEAD},
    {"syslog_ident", SYSLOG_INSTEAD},
    {"syslog_facility", SYSLOG_INSTEAD},
    {"user", "start sluice as the user it should run as with Docker's USER or systemd's User="},
    {"so_reuseport", "one sluice process spreads its clients over its threads: see workers"},
    {"peer_id", "one sluice process serves every core, and a cancel reaches the thread that "
                "owns its key"},
    {"dns_max_ttl", DNS_INSTEAD},
    {"dns_nxdomain_ttl", DNS_INSTEAD},
    {"dns_zone_check_period", DNS_INSTEAD},
    {"resolv_conf", DNS_INSTEAD},
    {"conffile", "RELOAD and SIGHUP read the file sluice was started with"},
    {"service_name", WINDOWS_ONLY},
    {"job_name", WINDOWS_ONLY},
    {"verbose", "set log_level"},
    {"suspend_timeout", NULL},
    {"tcp_socket_buffer", "the kernel sizes socket buffers"},
    {"sbuf_loopcnt", NULL},
    {"track_extra_parameters", "sluice follows every parameter a client sets, at startup or by "
                               "SET, on each server it gets"},
    {"cancel_wait_timeout", NULL},
    {"pool_idle_timeout", NULL},
    {"login_notify_message", NULL},
    {"auth_ldap_options", "auth_type ldap is not supported"},
    {"auth_pam_confdir", "auth_type pam is not supported"},
};

/* ---- setting one main-section key ---- */

int config_keys_find(const char *name)
{
    if (strcasecmp(name, "pool_timeout") == 0) /* the name DESIGN.md and most users use */
        return KEY_IDX_query_wait_timeout;
    for (int i = 0; i < KEY_COUNT; i++) {
        if (strcasecmp(name, config_keys[i].name) == 0)
            return i;
    }
    return -1;
}

const char *config_keys_pgbouncer_only(const char *name)
{
    if (strncasecmp(name, "server_tls", 10) == 0)
        return "set sslmode, sslrootcert, ... in each [databases] entry";
    if (strncasecmp(name, "client_tls", 10) == 0)
        return "";
    for (size_t i = 0; i < sizeof pgbouncer_only_keys / sizeof pgbouncer_only_keys[0]; i++) {
        if (strcasecmp(name, pgbouncer_only_keys[i].name) == 0)
            return pgbouncer_only_keys[i].instead ? pgbouncer_only_keys[i].instead : "";
    }
    return NULL;
}

static int parse_key(struct config *into, int idx, const char *value, char *why, size_t n)
{
    switch (idx) {
#define KEY(name, type, def, reload, doc)                                                          \
    case KEY_IDX_##name:                                                                           \
        return config_value_parse_##type(value, &into->name, why, n);
#include "config_keys.def"
#undef KEY
    }
    return -ENOENT;
}

/* Free what key idx's field owns (a string, a list), by its kind's config_value_free_. */
static void free_field(struct config *c, int idx)
{
    switch (idx) {
#define KEY(name, type, def, reload, doc)                                                          \
    case KEY_IDX_##name:                                                                           \
        config_value_free_##type(&c->name);                                                        \
        break;
#include "config_keys.def"
#undef KEY
    }
}

/* An INT key's range: its KEY_RANGE line in config_keys.def, else 0..INT_MAX. */
static const struct {
    int idx;
    int64_t min, max;
} int_ranges[] = {
#define KEY(name, type, def, reload, doc)
#define KEY_RANGE(name, min, max) {KEY_IDX_##name, min, max},
#include "config_keys.def"
#undef KEY_RANGE
#undef KEY
};

/* The value of an INT key (only int64_t fields have one; TIME's are checked by their parser). */
static int64_t int_value(const struct config *c, int idx)
{
    switch (idx) {
#define KEY(name, type, def, reload, doc)                                                          \
    case KEY_IDX_##name:                                                                           \
        return _Generic(c->name, int64_t : c->name, default : 0);
#include "config_keys.def"
#undef KEY
    }
    return 0;
}

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
        v = int_value(c, idx);
        if (v < min || v > max) {
            snprintf(why, n, "expected a number from %lld to %lld", (long long)min, (long long)max);
            return -EINVAL;
        }
    }
    /* An enum's empty value ("not set") is only for keys whose default is empty
     * (server_tls_sslmode: libpq's default; client_tls_sslmode must say what it does). */
    if (config_value_is_enum(config_keys[idx].type) && config_keys[idx].def[0]) {
        char shown[64];
        config_format_value(c, idx, shown, sizeof shown);
        if (!shown[0]) {
            config_value_enum_expected(config_keys[idx].type, why, n);
            return -EINVAL;
        }
    }
    return 0;
}

/* Checks between main-section keys, made once the whole file and environment are read (and on
 * admin SET, so SET cannot produce a config that a restart would refuse). */
int config_keys_check_main(const struct config *c, char *why, size_t n)
{
    if (c->min_pool_size > c->default_pool_size) {
        snprintf(why, n, "min_pool_size %lld is above default_pool_size %lld",
                 (long long)c->min_pool_size, (long long)c->default_pool_size);
        return -EINVAL;
    }
    if (c->listen_addr.n == 0 && c->unix_socket_dir[0] == '\0') {
        snprintf(why, n, "listen_addr and unix_socket_dir are both empty: nothing to listen on");
        return -EINVAL;
    }
    return 0;
}

/* Parse value into key idx, check it, and only then replace (and free) the old value, so a bad
 * value leaves the config exactly as it was. */
int config_keys_set(struct config *c, int idx, const char *value, enum config_source src,
                    enum check_scope scope, char *why, size_t n)
{
    struct config tmp = *c; /* differs from *c only in field idx until committed */
    int rc = parse_key(&tmp, idx, value, why, n);
    if (rc != 0)
        return rc;
    rc = check_key(&tmp, idx, why, n);
    if (rc == 0 && scope == CHECK_WITH_MAIN)
        rc = config_keys_check_main(&tmp, why, n);
    if (rc != 0) {
        free_field(&tmp, idx);
        return rc;
    }
    free_field(c, idx);
    *c = tmp;
    c->sources[idx] = src;
    return 0;
}

int config_set_key(struct config *c, const char *name, const char *value, enum config_source src,
                   char *err, size_t errlen)
{
    int idx = config_keys_find(name);
    if (idx < 0) {
        snprintf(err, errlen, "unknown key '%s'", name);
        return -ENOENT;
    }
    char why[256];
    int rc = config_keys_set(c, idx, value, src, CHECK_WITH_MAIN, why, sizeof why);
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
        config_value_format_##type(&c->name, out, outlen);                                         \
        break;
#include "config_keys.def"
#undef KEY
    }
}
