/* config_value: the value parsers of config_keys.def's types, one per type, and their formatters
 * (SHOW CONFIG, `sluice --check`). Each parser turns text into the typed field struct config
 * holds, or says in why what was expected; nothing reads a config string again after this.
 * Knows no files, sections or environment: config_ini.c, config_env.c and config_keys.c call it. */
#ifndef SLUICE_CONFIG_VALUE_H
#define SLUICE_CONFIG_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Parsers write *out only on success (0); on failure (-EINVAL, -ENOMEM) why says what was
 * expected. The suffix is the type's name in config_keys.def, so the key table dispatches on it. */
int config_value_parse_STR(const char *v, char **out, char *why, size_t n);
int config_value_parse_INT(const char *v, int64_t *out, char *why, size_t n);
int config_value_parse_BOOL(const char *v, bool *out, char *why, size_t n);
int config_value_parse_TIME(const char *v, int64_t *out, char *why, size_t n);
int config_value_parse_LIMIT(const char *v, struct limit *out, char *why, size_t n);
int config_value_parse_POOL_MODE(const char *v, enum pool_mode *out, char *why, size_t n);
int config_value_parse_AUTH_TYPE(const char *v, enum auth_type *out, char *why, size_t n);
int config_value_parse_LOG_FORMAT(const char *v, enum log_format *out, char *why, size_t n);
int config_value_parse_LOG_LEVEL(const char *v, enum log_level *out, char *why, size_t n);
int config_value_parse_SESSION_STATE_POLICY(const char *v, enum session_policy *out, char *why,
                                            size_t n);
int config_value_parse_SSLMODE(const char *v, enum sslmode *out, char *why, size_t n);

void config_value_format_STR(char *const *v, char *out, size_t n);
void config_value_format_INT(const int64_t *v, char *out, size_t n);
void config_value_format_BOOL(const bool *v, char *out, size_t n);
void config_value_format_TIME(const int64_t *v, char *out, size_t n);
void config_value_format_LIMIT(const struct limit *v, char *out, size_t n);
void config_value_format_POOL_MODE(const enum pool_mode *v, char *out, size_t n);
void config_value_format_AUTH_TYPE(const enum auth_type *v, char *out, size_t n);
void config_value_format_LOG_FORMAT(const enum log_format *v, char *out, size_t n);
void config_value_format_LOG_LEVEL(const enum log_level *v, char *out, size_t n);
void config_value_format_SESSION_STATE_POLICY(const enum session_policy *v, char *out, size_t n);
void config_value_format_SSLMODE(const enum sslmode *v, char *out, size_t n);

/* Per-entry values ([databases], [users], [budgets]): a count 0..INT_MAX, and a limit (a count
 * or 1%..100%). 0 or -EINVAL; the caller words the message. */
int config_value_parse_count(const char *v, int *out);
int config_value_parse_limit_text(const char *v, struct limit *out);

/* Is type (a config_keys.def type name) one of config_enums.def's? */
bool config_value_is_enum(const char *type);
/* "expected a, b or c": the spellings config_enums.def lists for type. */
void config_value_enum_expected(const char *type, char *why, size_t n);

#endif
