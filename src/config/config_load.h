/* config_load: what the files that build one struct config share while they build it; not for
 * the rest of sluice, which sees config.h only. config.c runs a load (defaults, file, environment,
 * auth_file, validation) over one struct loader; config_ini.c reads the INI text, config_db.c a
 * [databases] entry, config_entry.c the keys every entry's section has, config_env.c the
 * environment, config_auth_file.c the auth_file, and config_keys.c sets a main-section key from
 * text. Every value goes through config_value.c's parser for its kind. */
#ifndef SLUICE_CONFIG_LOAD_H
#define SLUICE_CONFIG_LOAD_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* ---- the key table (config_keys.c) ---- */

enum key_index {
#define KEY(name, type, def, reload, doc) KEY_IDX_##name,
#include "config_keys.def"
#undef KEY
    KEY_COUNT
};

/* The index of a main-section key (or its alias pool_timeout), -1 when there is none. */
int config_keys_find(const char *name);
/* A key of PgBouncer's main section that sluice reads and ignores (with a warning): what sluice
 * does instead, for the warning ("" when nothing); NULL for any other name. */
const char *config_keys_pgbouncer_only(const char *name);

enum check_scope { CHECK_KEY_ONLY, CHECK_WITH_MAIN };
/* Parse value into key idx and check it (with scope CHECK_WITH_MAIN, also against the other
 * main-section keys); only then replace the old value, so a bad value changes nothing. */
int config_keys_set(struct config *c, int idx, const char *value, enum config_source src,
                    enum check_scope scope, char *why, size_t n);
/* Checks between main-section keys. */
int config_keys_check_main(const struct config *c, char *why, size_t n);

/* ---- one load in progress (config.c) ---- */

/* %include nests at most this deep (PgBouncer's limit too): a file that includes itself is an
 * error, not a loop. */
#define CONFIG_INCLUDE_DEPTH 10
/* The longest config file (main or included) read. */
#define CONFIG_TEXT_MAX (16 * 1024 * 1024)

/* One INI text being read (config_ini.c): the main file's, or an included file's. */
struct ini_text {
    const char *next;  /* what inih has not read yet */
    char *owned;       /* an included file's text, freed when read to its end */
    int newlines_read; /* newlines handed to inih so far */
    int file;          /* its index in origins */
};

/* Where a line inih counted came from: inih counts one stream across every included file, and
 * names its own syntax errors by that count. */
struct ini_line_at {
    int file;
    int line;
};

struct loader {
    struct config *c;
    struct config_diag *diag;
    int nerrors;        /* errors from this load (diag may hold older ones) */
    const char *origin; /* "path: " or "" before "line N": the file of the line being read */
    int file;           /* that file's index in origins (0: the main config) */
    int line;           /* line of that file inih handed to the handler */
    /* Every file this load read, each as "path: " ("" for a config given as text): the main one
     * first, then each %include in the order read. Entries keep the index (their 'file'), so a
     * message about one names the file it is in. */
    char **origins;
    int norigins;
    struct ini_text reading[CONFIG_INCLUDE_DEPTH + 1]; /* the %include chain, innermost last */
    int depth;                                         /* entries of reading in use */
    bool mid_line; /* the last line handed to inih filled its buffer: inih asks for the rest */
    struct ini_line_at *stream_lines; /* by inih's line number - 1 */
    int nstream_lines;
    char *bad_section;             /* the unknown section last reported, to report it once */
    PQconninfoOption *pq_defaults; /* libpq's keyword list, to check [databases] keywords */
    char *url_user;                /* DATABASE_URL's credentials, added after auth_file's users */
    char *url_password;
    bool oom;
};

/* Collected into L->diag; an error makes the load fail, a warning does not. */
__attribute__((format(printf, 2, 3))) void load_error(struct loader *L, const char *fmt, ...);
__attribute__((format(printf, 2, 3))) void load_warning(struct loader *L, const char *fmt, ...);
/* strdup that records running out of memory in L->oom. */
char *load_strdup(struct loader *L, const char *s);
/* "path: " of file index 'file' of this load (an entry's 'file'), or "". */
const char *load_origin(const struct loader *L, int file);

/* A whole file into a string, refusing NUL bytes (-EINVAL) and anything past 16 MiB. 0 or
 * -errno. */
int config_read_text_file(const char *path, char **out);
/* Wipe and free a string that may hold a password. */
void config_free_secret(char *s);
void config_db_entry_free(struct db_entry *db);
void config_budget_entry_free(struct budget_entry *b);
const struct db_entry *config_find_db_exact(const struct config *c, const char *name);

/* ---- sections and sources ---- */

/* The INI text, section by section, into L->c (config_ini.c), with the files it names in
 * %include lines read where they stand; path is the text's file (NULL: given as text), for
 * messages and to find an included file named by a relative path. */
void config_ini_parse(struct loader *L, const char *path, const char *text);

/* ---- entries of [databases], [users] and [budgets] (config_entry.c) ---- */

/* One key=value pair of an entry's value: 1 with *key and *val allocated, 0 at the end, -EINVAL
 * with *why set, -ENOMEM. */
int config_entry_next_pair(const char **sp, char **key, char **val, const char **why);
#define ENTRY_TIMEOUTS_UNSET                                                                       \
    {                                                                                              \
        .server_lifetime = -1, .query_timeout = -1, .idle_transaction_timeout = -1,                \
        .transaction_timeout = -1, .client_idle_timeout = -1                                       \
    }
enum entry_section { ENTRY_DB, ENTRY_USER, ENTRY_BUDGET };
/* Set key of an entry of section (entry: its struct db_entry, user_entry or budget_entry) when
 * config_entry_keys.def lists it: 1 set, 0 not one of the section's keys, -EINVAL a bad value
 * (reported under where). */
int config_entry_set(struct loader *L, enum entry_section section, void *entry, const char *where,
                     const char *key, const char *val);
/* A [users] or [budgets] entry's value, pair by pair, into entry: 0, or -EINVAL with each
 * problem reported under where (an unknown key, a bad value, bad syntax). */
int config_entry_parse(struct loader *L, enum entry_section section, void *entry, const char *where,
                       const char *value);
/* "a, b and c": the section's keys, for an error about an unknown one. */
void config_entry_accepted(enum entry_section section, char *out, size_t n);

/* [databases] (config_db.c): one entry of the file; and the pieces DATABASE_URL reuses. */
void config_db_on_entry(struct loader *L, const char *name, const char *value);
struct db_entry *config_db_new(struct loader *L, struct db_entry *db, const char *name, int line);
bool config_db_is_url(const char *v);
int config_db_from_url(struct loader *L, const char *where, struct db_entry *db, const char *url);
const char *config_db_keyword(const struct db_entry *db, const char *key);
int config_db_set_keyword(struct db_entry *db, const char *key, const char *val);
bool config_db_push(struct loader *L, const struct db_entry *db);
/* The libpq keywords sluice checks at load, as PgBouncer does, so that a value libpq would refuse
 * at every connection stops the start instead of showing as a database that is down: sslmode
 * (into db->sslmode) and port. -EINVAL (reported under where) when one is refused. */
int config_db_check_keywords(struct loader *L, const char *where, struct db_entry *db);

/* SLUICE_<KEY> variables and DATABASE_URL (config_env.c). */
void config_env_apply(struct loader *L, char *const *env);

/* auth_file (config_auth_file.c): its users, then keep only the last line of a repeated user. */
void config_auth_file_load(struct loader *L);
void config_auth_file_drop_repeated(struct config *c);
void config_auth_add(struct loader *L, const char *user, const char *secret);

#endif
