/* startup_options: Postgres's reading of the startup "options" (see startup_options.h). The
 * words are scanned as glibc's getopt scans a backend's argv (optstring
 * "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:", words that are not switches moved after the
 * switches), so the word a refusal names is the word Postgres names. */
#include "startup_options.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char takes_argument[] = "BCcDdfhkNprStvW-";
static const char takes_none[] = "bEeFijlnOPsT";

/* getopt's state over argv (argv[0] stands for the program name, as in a backend). */
struct switch_scan {
    char **argv;
    int argc;
    int optind;
    const char *nextchar;          /* inside a word of grouped switches; NULL between words */
    int first_nonopt, last_nonopt; /* the words skipped so far, to be moved after the switches */
};

static void reverse(char **a, int from, int to)
{
    for (to--; from < to; from++, to--) {
        char *t = a[from];
        a[from] = a[to];
        a[to] = t;
    }
}

/* Move the skipped words [first_nonopt, last_nonopt) after the switches that followed them. */
static void exchange(struct switch_scan *s)
{
    int moved = s->optind - s->last_nonopt;
    reverse(s->argv, s->first_nonopt, s->last_nonopt);
    reverse(s->argv, s->last_nonopt, s->optind);
    reverse(s->argv, s->first_nonopt, s->optind);
    s->first_nonopt += moved;
    s->last_nonopt = s->optind;
}

static bool is_nonoption(const char *w)
{
    return w[0] != '-' || w[1] == '\0';
}

/* The next switch, '?' for one Postgres does not know or one missing its argument, or -1 at
 * the end (optind then names the first word that is not a switch, if any). */
static int next_switch(struct switch_scan *s, const char **optarg)
{
    *optarg = NULL;
    if (!s->nextchar || !*s->nextchar) {
        if (s->last_nonopt > s->optind)
            s->last_nonopt = s->optind;
        if (s->first_nonopt > s->optind)
            s->first_nonopt = s->optind;
        if (s->first_nonopt != s->last_nonopt && s->last_nonopt != s->optind)
            exchange(s);
        else if (s->last_nonopt != s->optind)
            s->first_nonopt = s->optind;
        while (s->optind < s->argc && is_nonoption(s->argv[s->optind]))
            s->optind++;
        s->last_nonopt = s->optind;
        if (s->optind != s->argc && strcmp(s->argv[s->optind], "--") == 0) {
            s->optind++;
            if (s->first_nonopt != s->last_nonopt && s->last_nonopt != s->optind)
                exchange(s);
            else if (s->first_nonopt == s->last_nonopt)
                s->first_nonopt = s->optind;
            s->last_nonopt = s->argc;
            s->optind = s->argc;
        }
        if (s->optind == s->argc) {
            if (s->first_nonopt != s->last_nonopt)
                s->optind = s->first_nonopt;
            return -1;
        }
        s->nextchar = s->argv[s->optind] + 1;
    }
    char c = *s->nextchar++;
    if (*s->nextchar == '\0')
        s->optind++;
    if (strchr(takes_none, c))
        return c;
    if (!strchr(takes_argument, c))
        return '?';
    if (*s->nextchar != '\0') {
        *optarg = s->nextchar;
        s->optind++;
    } else if (s->optind == s->argc) {
        c = '?';
    } else {
        *optarg = s->argv[s->optind++];
    }
    s->nextchar = NULL;
    return c;
}

/* pg_split_opts: words split at white space, a backslash taking the next byte as is (one at the
 * very end takes nothing and is dropped). argv[0] is the program name. Returns the count of
 * words, argv and the words in one block. */
static int split_words(const char *options, char ***argv_out)
{
    size_t len = strlen(options);
    size_t max_words = len / 2 + 2;
    char **argv = malloc(max_words * sizeof(char *) + len + 1 + sizeof("postgres"));
    if (!argv)
        return -ENOMEM;
    char *out = (char *)(argv + max_words);
    int argc = 0;
    argv[argc++] = strcpy(out, "postgres");
    out += sizeof("postgres");
    const char *s = options;
    for (;;) {
        while (isspace((unsigned char)*s))
            s++;
        if (!*s)
            break;
        argv[argc++] = out;
        while (*s && !isspace((unsigned char)*s)) {
            if (*s == '\\' && !*++s)
                break;
            *out++ = *s++;
        }
        *out++ = '\0';
    }
    *argv_out = argv;
    return argc;
}

static int refuse(struct options_refusal **refusal, enum options_fault fault, const char *word)
{
    size_t n = strlen(word) + 1;
    *refusal = malloc(sizeof(**refusal) + n);
    if (!*refusal)
        return -ENOMEM;
    (*refusal)->fault = fault;
    memcpy((*refusal)->word, word, n);
    return 0;
}

int startup_options_refuse_name(struct options_refusal **refusal, const char *name)
{
    /* Postgres: a name with a dot is a custom parameter's, checked as one */
    enum options_fault f =
        name[0] && strchr(name, '.') ? OPTIONS_BAD_PARAMETER_NAME : OPTIONS_UNKNOWN_PARAMETER;
    return refuse(refusal, f, name);
}

/* ParseLongOption and SetConfigOption for "name=value" (left as it is: a later refusal may
 * name this word). 0, 1 when refused (*refusal set), -ENOMEM. */
static int set_long_option(const struct setting_sink *p, int flag, const char *setting,
                           struct options_refusal **refusal)
{
    const char *eq = strchr(setting, '=');
    if (!eq) {
        enum options_fault f = flag == '-' ? OPTIONS_LONG_WITHOUT_VALUE : OPTIONS_C_WITHOUT_VALUE;
        return refuse(refusal, f, setting) < 0 ? -ENOMEM : 1;
    }
    size_t len = (size_t)(eq - setting);
    char *name = malloc(len + 1);
    if (!name)
        return -ENOMEM;
    for (size_t i = 0; i < len; i++)
        name[i] = setting[i] == '-' ? '_' : setting[i];
    name[len] = '\0';
    int rc;
    if (!params_valid_name(name, len)) {
        rc = startup_options_refuse_name(refusal, name) < 0 ? -ENOMEM : 1;
    } else {
        rc = p->take(p->arg, name, eq + 1) < 0 ? -ENOMEM : 0;
    }
    free(name);
    return rc;
}

/* -f's argument: the plan type it turns off (set_plan_disabling_options). */
static const char *plan_disabling_setting(const char *arg)
{
    static const char letters[] = "siobtnmh";
    static const char *const names[] = {
        "enable_seqscan", "enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan",
        "enable_tidscan", "enable_nestloop",  "enable_mergejoin",     "enable_hashjoin"};
    const char *at = arg[0] ? strchr(letters, arg[0]) : NULL;
    return at ? names[at - letters] : NULL;
}

static const char *stats_setting(const char *arg)
{
    if (arg[0] == 'p' && arg[1] == 'a')
        return "log_parser_stats";
    if (arg[0] == 'p' && arg[1] == 'l')
        return "log_planner_stats";
    if (arg[0] == 'e')
        return "log_executor_stats";
    return NULL;
}

/* set_debug_options at PGC_BACKEND: log_min_messages, then more logging the higher it goes. */
static int set_debug(const struct setting_sink *p, const char *arg)
{
    int level = atoi(arg);
    char debug[32];
    snprintf(debug, sizeof(debug), "debug%d", level);
    if (p->take(p->arg, "log_min_messages", level > 0 ? debug : "notice") < 0)
        return -ENOMEM;
    static const char *const from_level[] = {"log_statement", "debug_print_parse",
                                             "debug_print_plan", "debug_print_rewritten"};
    for (int i = 0; i < 4 && level >= i + 2; i++)
        if (p->take(p->arg, from_level[i], i == 0 ? "all" : "true") < 0)
            return -ENOMEM;
    return 0;
}

/* The switches that stand for one setting (value NULL: the switch's argument). */
static const struct switch_setting {
    char flag;
    const char *name, *value;
} switch_settings[] = {
    {'B', "shared_buffers", NULL},
    {'e', "datestyle", "euro"},
    {'F', "fsync", "false"},
    {'h', "listen_addresses", NULL},
    {'i', "listen_addresses", "*"},
    {'k', "unix_socket_directories", NULL},
    {'l', "ssl", "true"},
    {'N', "max_connections", NULL},
    {'O', "allow_system_table_mods", "true"},
    {'P', "ignore_system_indexes", "true"},
    {'p', "port", NULL},
    {'S', "work_mem", NULL},
    {'s', "log_statement_stats", "true"},
    {'W', "post_auth_delay", NULL},
};

/* One switch of process_postgres_switches (not secure: a client's): the setting it stands for,
 * or nothing for those Postgres ignores from a client (b C D E j n r T v). 0, 1 for a bad
 * argument (Postgres's errs), 2 when refused (*refusal set), -ENOMEM. */
static int apply_switch(const struct setting_sink *p, int flag, const char *arg,
                        struct options_refusal **refusal)
{
    const char *name = NULL;
    if (flag == 'c' || flag == '-') {
        int rc = set_long_option(p, flag, arg, refusal);
        return rc == 1 ? 2 : rc;
    }
    if (flag == 'd')
        return set_debug(p, arg);
    if (flag == 'f' || flag == 't') {
        name = flag == 'f' ? plan_disabling_setting(arg) : stats_setting(arg);
        if (!name)
            return 1;
        return p->take(p->arg, name, flag == 'f' ? "false" : "true") < 0 ? -ENOMEM : 0;
    }
    for (size_t i = 0; i < sizeof(switch_settings) / sizeof(switch_settings[0]); i++) {
        const struct switch_setting *w = &switch_settings[i];
        if (w->flag == flag)
            return p->take(p->arg, w->name, w->value ? w->value : arg) < 0 ? -ENOMEM : 0;
    }
    return 0;
}

static int scan_switches(const struct setting_sink *p, struct switch_scan *s,
                         struct options_refusal **refusal)
{
    for (;;) {
        const char *optarg;
        int flag = next_switch(s, &optarg);
        if (flag == -1)
            break;
        int rc = flag == '?' ? 1 : apply_switch(p, flag, optarg, refusal);
        if (rc < 0)
            return rc;
        if (rc == 2)
            return 0;
        if (rc == 1) /* Postgres names the word before optind */
            return refuse(refusal, OPTIONS_BAD_ARGUMENT, s->argv[s->optind - 1]);
    }
    if (s->optind != s->argc)
        return refuse(refusal, OPTIONS_BAD_ARGUMENT, s->argv[s->optind]);
    return 0;
}

static int take_into_set(void *arg, const char *name, const char *value)
{
    return params_set(arg, name, value);
}

int startup_options_parse(struct param_set *p, const char *options,
                          struct options_refusal **refusal)
{
    struct setting_sink sink = {.take = take_into_set, .arg = p};
    return startup_options_each(&sink, options, refusal);
}

int startup_options_each(const struct setting_sink *p, const char *options,
                         struct options_refusal **refusal)
{
    *refusal = NULL;
    char **argv;
    int argc = split_words(options, &argv);
    if (argc < 0)
        return argc;
    struct switch_scan s = {
        .argv = argv, .argc = argc, .optind = 1, .first_nonopt = 1, .last_nonopt = 1};
    int rc = scan_switches(p, &s, refusal);
    free(argv);
    return rc;
}
