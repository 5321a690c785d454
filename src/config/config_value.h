/* config_value: the value parsers of the config's kinds (config_keys.def's types and
 * config_entry_keys.def's), one per kind, and their formatters (SHOW CONFIG, `sluice --check`).
 * Each parser turns text into the typed field struct config holds, or says in why what was
 * expected; nothing reads a config string again after this. Knows no files (but the CPU count
 * auto reads), sections or environment: config_keys.c, config_entry.c and config_ini.c call it. */
#ifndef SLUICE_CONFIG_VALUE_H
#define SLUICE_CONFIG_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* config_value_parse_<KIND>(text, out, why, whylen): 0 with *out set, or -EINVAL / -ENOMEM with
 * *out untouched and why saying what was expected. The suffix is the kind's name in the key
 * tables, so they dispatch on it. A kind that owns memory has config_value_free_<KIND>; the
 * others have a free that does nothing, so the tables free every kind alike. */
int config_value_parse_STR(const char *v, char **out, char *why, size_t n);
int config_value_parse_OPTIONAL_STR(const char *v, char **out, char *why, size_t n);
int config_value_parse_INT(const char *v, int64_t *out, char *why, size_t n);
/* Permission bits in octal, as chmod takes them ("0770", "770"): always octal, where
 * PgBouncer's strtol reads "770" without its 0 as decimal. */
int config_value_parse_FILE_MODE(const char *v, unsigned *out, char *why, size_t n);
int config_value_parse_COUNT(const char *v, int *out, char *why, size_t n);
int config_value_parse_BOOL(const char *v, bool *out, char *why, size_t n);
int config_value_parse_TIME(const char *v, int64_t *out, char *why, size_t n);
int config_value_parse_LIMIT(const char *v, struct limit *out, char *why, size_t n);
/* "auto", resolved here to the CPUs the process may use now (cpus_usable, which reads the
 * affinity mask and the cgroup's quota files; at most CONFIG_THREADS_MAX), or a count from 1 to
 * CONFIG_THREADS_MAX. SHOW CONFIG's "auto (N)" reads back as auto. */
int config_value_parse_THREADS(const char *v, struct thread_count *out, char *why, size_t n);
int config_value_parse_LIST(const char *v, struct name_list *out, char *why, size_t n);
int config_value_parse_SQL(const char *v, struct sql_setting *out, char *why, size_t n);
int config_value_parse_CIDR(const char *v, struct cidr_setting *out, char *why, size_t n);
int config_value_parse_POOL_MODE(const char *v, enum pool_mode *out, char *why, size_t n);
int config_value_parse_AUTH_TYPE(const char *v, enum auth_type *out, char *why, size_t n);
int config_value_parse_LOG_FORMAT(const char *v, enum log_format *out, char *why, size_t n);
int config_value_parse_LOG_LEVEL(const char *v, enum log_level *out, char *why, size_t n);
int config_value_parse_SESSION_STATE_POLICY(const char *v, enum session_policy *out, char *why,
                                            size_t n);
int config_value_parse_SSLMODE(const char *v, enum sslmode *out, char *why, size_t n);
int config_value_parse_LOAD_BALANCE_HOSTS(const char *v, enum load_balance_hosts *out, char *why,
                                          size_t n);

void config_value_format_STR(char *const *v, char *out, size_t n);
void config_value_format_INT(const int64_t *v, char *out, size_t n);
void config_value_format_FILE_MODE(const unsigned *v, char *out, size_t n);
void config_value_format_BOOL(const bool *v, char *out, size_t n);
void config_value_format_TIME(const int64_t *v, char *out, size_t n);
void config_value_format_LIMIT(const struct limit *v, char *out, size_t n);
/* "4", or "auto (4)" for auto resolved to 4. */
void config_value_format_THREADS(const struct thread_count *v, char *out, size_t n);
void config_value_format_LIST(const struct name_list *v, char *out, size_t n);
void config_value_format_SQL(const struct sql_setting *v, char *out, size_t n);
void config_value_format_POOL_MODE(const enum pool_mode *v, char *out, size_t n);
void config_value_format_AUTH_TYPE(const enum auth_type *v, char *out, size_t n);
void config_value_format_LOG_FORMAT(const enum log_format *v, char *out, size_t n);
void config_value_format_LOG_LEVEL(const enum log_level *v, char *out, size_t n);
void config_value_format_SESSION_STATE_POLICY(const enum session_policy *v, char *out, size_t n);
void config_value_format_SSLMODE(const enum sslmode *v, char *out, size_t n);
void config_value_format_LOAD_BALANCE_HOSTS(const enum load_balance_hosts *v, char *out, size_t n);

void config_value_free_STR(char **v);
void config_value_free_LIST(struct name_list *v);
void config_value_free_SQL(struct sql_setting *v);
void config_value_free_CIDR(struct cidr_setting *v);
#define CONFIG_VALUE_NOTHING_TO_FREE(kind, ctype)                                                  \
    static inline void config_value_free_##kind(ctype *v)                                          \
    {                                                                                              \
        (void)v;                                                                                   \
    }
CONFIG_VALUE_NOTHING_TO_FREE(INT, int64_t)
CONFIG_VALUE_NOTHING_TO_FREE(COUNT, int)
CONFIG_VALUE_NOTHING_TO_FREE(FILE_MODE, unsigned)
CONFIG_VALUE_NOTHING_TO_FREE(BOOL, bool)
CONFIG_VALUE_NOTHING_TO_FREE(TIME, int64_t)
CONFIG_VALUE_NOTHING_TO_FREE(LIMIT, struct limit)
CONFIG_VALUE_NOTHING_TO_FREE(THREADS, struct thread_count)
CONFIG_VALUE_NOTHING_TO_FREE(POOL_MODE, enum pool_mode)
CONFIG_VALUE_NOTHING_TO_FREE(AUTH_TYPE, enum auth_type)
CONFIG_VALUE_NOTHING_TO_FREE(LOG_FORMAT, enum log_format)
CONFIG_VALUE_NOTHING_TO_FREE(LOG_LEVEL, enum log_level)
CONFIG_VALUE_NOTHING_TO_FREE(SESSION_STATE_POLICY, enum session_policy)
CONFIG_VALUE_NOTHING_TO_FREE(SSLMODE, enum sslmode)
CONFIG_VALUE_NOTHING_TO_FREE(LOAD_BALANCE_HOSTS, enum load_balance_hosts)
#undef CONFIG_VALUE_NOTHING_TO_FREE
#define config_value_free_OPTIONAL_STR config_value_free_STR

/* Is type (a config_keys.def type name) one of config_enums.def's? */
bool config_value_is_enum(const char *type);
/* "expected a, b or c": the spellings config_enums.def lists for type. */
void config_value_enum_expected(const char *type, char *why, size_t n);

#endif
