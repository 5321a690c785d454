/* startup_options: the startup packet's "options" read the way a Postgres backend reads them
 * (pg_split_opts, then process_postgres_switches' getopt loop): the session parameters they set
 * and, when Postgres would refuse them, the refusal it would give. No I/O, no policy: the caller
 * decides when the refusal is told (Postgres tells it only after authentication). */
#ifndef SLUICE_STARTUP_OPTIONS_H
#define SLUICE_STARTUP_OPTIONS_H

#include "params.h"

/* Why Postgres would refuse the options, each with the word its message names. */
enum options_fault {
    OPTIONS_BAD_ARGUMENT,       /* 42601 "invalid command-line argument for server process: %s" */
    OPTIONS_C_WITHOUT_VALUE,    /* 42601 "-c %s requires a value" (the word after -c) */
    OPTIONS_LONG_WITHOUT_VALUE, /* 42601 "--%s requires a value" (the word after --) */
    OPTIONS_UNKNOWN_PARAMETER,  /* 42704 "unrecognized configuration parameter \"%s\"" */
    OPTIONS_BAD_PARAMETER_NAME, /* 42602 "invalid configuration parameter name \"%s\"" */
};

struct options_refusal {
    enum options_fault fault;
    char word[]; /* NUL-terminated */
};

/* Parse options into p: -c name=value, --name=value, and the single-letter switches Postgres
 * turns into settings (-e is DateStyle=euro, -S n is work_mem=n, -B n shared_buffers=n, ...;
 * the server then accepts or refuses each setting as it would from Postgres itself); switches a
 * client cannot use (-D, -E, -r, ...) are read and ignored, as Postgres ignores them. Returns 0
 * with *refusal NULL when Postgres would accept the switches, 0 with *refusal set (malloc'd, the
 * caller frees it; p then holds what came before the refused word) when it would refuse them,
 * or -ENOMEM. */
int startup_options_parse(struct param_set *p, const char *options,
                          struct options_refusal **refusal) __attribute__((warn_unused_result));

/* Each setting of options in the order Postgres applies them, a name given twice passed twice:
 * Postgres applies every value, and refuses the login at the first it cannot take, even one a
 * later value would replace. take returns < 0 for out of memory. As startup_options_parse
 * otherwise. */
struct setting_sink {
    int (*take)(void *arg, const char *name, const char *value);
    void *arg;
};
int startup_options_each(const struct setting_sink *sink, const char *options,
                         struct options_refusal **refusal) __attribute__((warn_unused_result));

/* The refusal Postgres gives a parameter name it cannot take, whether from "-c name=value" or
 * as a startup parameter of its own: a name with a dot is a custom parameter's, refused as an
 * invalid name (42602); any other is unrecognized (42704). Sets *refusal (malloc'd): 0, or
 * -ENOMEM. */
int startup_options_refuse_name(struct options_refusal **refusal, const char *name)
    __attribute__((warn_unused_result));

#endif
