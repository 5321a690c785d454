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

/* pg_split_opts: words split at white space, a backslash taking the next byte as is. argv[0]
 * is the program name. Returns the count of words, argv and the words in one block. */
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
            if (*s == '\\' && s[1])
                s++;
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

/* ParseLongOption and SetConfigOption for "name=value" (left as it is: a later refusal may
 * name this word). 0, 1 when refused (*refusal set), -ENOMEM. */
static int set_long_option(struct param_set *p, int flag, const char *setting,
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
        /* Postgres: a name with a dot is a custom parameter's, checked as one */
        enum options_fault f = len > 0 && strchr(name, '.') ? OPTIONS_BAD_PARAMETER_NAME
                                                            : OPTIONS_UNKNOWN_PARAMETER;
        rc = refuse(refusal, f, name) < 0 ? -ENOMEM : 1;
    } else {
        rc = params_set(p, name, eq + 1) < 0 ? -ENOMEM : 0;
    }
    free(name);
    return rc;
}

static const char *plan_disabling_setting(const char *arg)
{
    switch (arg[0]) {
    case 's': return "enable_seqscan";
    case 'i': return "enable_indexscan";
    case 'o': return "enable_indexonlyscan";
    case 'b': return "enable_bitmapscan";
    case 't': return "enable_tidscan";
    case 'n': return "enable_nestloop";
    case 'm': return "enable_mergejoin";
    case 'h': return "enable_hashjoin";
    }
    return NULL;
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
static int set_debug(struct param_set *p, const char *arg)
{
    int level = atoi(arg);
    char debug[32];
    snprintf(debug, sizeof(debug), "debug%d", level);
    if (params_set(p, "log_min_messages", level > 0 ? debug : "notice") < 0)
        return -ENOMEM;
    static const char *const from_level[] = {"log_statement", "debug_print_parse",
                                             "debug_print_plan", "debug_print_rewritten"};
    for (int i = 0; i < 4 && level >= i + 2; i++)
        if (params_set(p, from_level[i], i == 0 ? "all" : "true") < 0)
            return -ENOMEM;
    return 0;
}

/* One switch of process_postgres_switches (not secure: a client's): the setting it stands for,
 * or nothing for those Postgres ignores from a client. 0, 1 for a bad argument (Postgres's
 * errs), 2 when refused (*refusal set), -ENOMEM. */
static int apply_switch(struct param_set *p, int flag, const char *arg, struct options_refusal **refusal)
{
    const char *name = NULL, *value = arg;
    switch (flag) {
    case 'c':
    case '-': {
        int rc = set_long_option(p, flag, arg, refusal);
        return rc == 1 ? 2 : rc;
    }
    case 'B': name = "shared_buffers"; break;
    case 'd': return set_debug(p, arg);
    case 'e': name = "datestyle", value = "euro"; break;
    case 'F': name = "fsync", value = "false"; break;
    case 'f':
        name = plan_disabling_setting(arg), value = "false";
        if (!name)
            return 1;
        break;
    case 'h': name = "listen_addresses"; break;
    case 'i': name = "listen_addresses", value = "*"; break;
    case 'k': name = "unix_socket_directories"; break;
    case 'l': name = "ssl", value = "true"; break;
    case 'N': name = "max_connections"; break;
    case 'O': name = "allow_system_table_mods", value = "true"; break;
    case 'P': name = "ignore_system_indexes", value = "true"; break;
    case 'p': name = "port"; break;
    case 'S': name = "work_mem"; break;
    case 's': name = "log_statement_stats", value = "true"; break;
    case 't':
        name = stats_setting(arg), value = "true";
        if (!name)
            return 1;
        break;
    case 'W': name = "post_auth_delay"; break;
    default: return 0; /* b C D E j n r T v: only from the command line */
    }
    return params_set(p, name, value) < 0 ? -ENOMEM : 0;
}

static int scan_switches(struct param_set *p, struct switch_scan *s,
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

int startup_options_parse(struct param_set *p, const char *options,
                          struct options_refusal **refusal)
{
    *refusal = NULL;
    char **argv;
    int argc = split_words(options, &argv);
    if (argc < 0)
        return argc;
    struct switch_scan s = {.argv = argv, .argc = argc, .optind = 1,
                            .first_nonopt = 1, .last_nonopt = 1};
    int rc = scan_switches(p, &s, refusal);
    free(argv);
    return rc;
}
