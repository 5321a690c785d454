/* config_env: the environment over the file: SLUICE_<KEY> for any main-section key, and
 * DATABASE_URL (a database entry, and its user and password for client logins), or
 * DATABASE_URL_FILE, a file holding it, read anew at every load so that a rotated secret takes
 * a RELOAD, not a restart (the environment itself is fixed at the process's start). */
#include "config_load.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest URL file read: a URL is a line; anything longer is not one. */
#define URL_FILE_MAX 8192

static void database_url_apply(struct loader *L, const char *url)
{
    if (!config_db_is_url(url)) { /* not echoed: it holds a password */
        load_error(L, "DATABASE_URL: expected postgres://user:password@host:port/dbname or "
                      "postgresql://...");
        return;
    }
    struct db_entry db;
    if (!config_db_new(L, &db, "postgres", 0))
        return;
    if (config_db_from_url(L, "DATABASE_URL", &db, url) != 0 ||
        config_db_check_keywords(L, "DATABASE_URL", &db) != 0 || L->oom) {
        config_db_entry_free(&db);
        return;
    }
    const char *dbname = config_db_keyword(&db, "dbname");
    if (!dbname) {
        if (config_db_set_keyword(&db, "dbname", "postgres") != 0)
            L->oom = true;
    } else {
        char *name = load_strdup(L, dbname);
        free(db.name);
        db.name = name;
    }
    const struct db_entry *file_db = db.name ? config_find_db_exact(L->c, db.name) : NULL;
    if (file_db) {
        load_warning(L,
                     "DATABASE_URL: database '%s' is also defined at %sline %d of the config "
                     "file; the file's entry is used",
                     db.name, load_origin(L, file_db->file), file_db->line);
        config_db_entry_free(&db);
        return;
    }
    const char *user = config_db_keyword(&db, "user"),
               *password = config_db_keyword(&db, "password");
    if (user && password) {
        L->url_user = load_strdup(L, user);
        L->url_password = load_strdup(L, password);
    }
    if (!db.name || L->oom || !config_db_push(L, &db))
        config_db_entry_free(&db);
}

/* A variable's value without surrounding blanks, as inih reads a value from the file: an env file
 * written on Windows (CRLF) gives each value a trailing CR, a secret made with `echo` a newline,
 * and the app's own URL parser (Python's urllib, Node's WHATWG URL) drops them from its
 * DATABASE_URL; kept, they made a database named "appdb\n" that no client could name, or refused
 * SLUICE_POOL_MODE=transaction\r with a message the CR garbled. No value ends in a blank of its
 * own (one in a URL's dbname or password is percent-encoded). NULL when out of memory. */
static char *env_value(struct loader *L, const char *given)
{
    while (isspace((unsigned char)*given))
        given++;
    size_t len = strlen(given);
    while (len > 0 && isspace((unsigned char)given[len - 1]))
        len--;
    char *value = strndup(given, len);
    if (!value)
        L->oom = true;
    return value;
}

/* Frees a value that may hold a password. */
static void env_value_free(char *value)
{
    if (value) {
        explicit_bzero(value, strlen(value));
        free(value);
    }
}

static void env_database_url(struct loader *L, const char *given)
{
    char *url = env_value(L, given);
    if (url)
        database_url_apply(L, url);
    env_value_free(url);
}

/* The first line of the file named by DATABASE_URL_FILE, as Docker and Kubernetes secrets hold it
 * (a missing final newline is fine), into buf; env_database_url drops its blanks and CR.
 * On failure a load error names the file, never its content (it holds a password). */
static bool read_database_url_file(struct loader *L, const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        load_error(L, "DATABASE_URL_FILE=%s: cannot read it: %s", path, strerror(errno));
        return false;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    bool failed = ferror(f) != 0, too_long = n == cap - 1 && fgetc(f) != EOF;
    int err = errno;
    fclose(f);
    if (failed) {
        load_error(L, "DATABASE_URL_FILE=%s: cannot read it: %s", path, strerror(err));
        return false;
    }
    buf[n] = '\0';
    char *end = strchr(buf, '\n');
    if (end)
        *end = '\0';
    else if (too_long) {
        load_error(L, "DATABASE_URL_FILE=%s: its first line is over %d bytes; a URL is expected",
                   path, URL_FILE_MAX - 1);
        return false;
    }
    const char *p = buf;
    while (isspace((unsigned char)*p))
        p++;
    if (!*p) {
        load_error(L,
                   "DATABASE_URL_FILE=%s is empty; it should hold "
                   "postgres://user:password@host:port/dbname",
                   path);
        return false;
    }
    return true;
}

static bool env_ignored(const char *name, size_t len)
{
    return (len == 10 && strncmp(name, "SLUICE_BIN", 10) == 0) ||
           (len == 13 && strncmp(name, "SLUICE_CONFIG", 13) == 0) ||
           strncmp(name, "SLUICE_TEST_", 12) == 0;
}

void config_env_apply(struct loader *L, char *const *env)
{
    const char *database_url = NULL, *database_url_file = NULL;
    for (char *const *e = env; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t len = (size_t)(eq - *e);
        if (len == 12 && strncmp(*e, "DATABASE_URL", 12) == 0) {
            database_url = eq + 1;
            continue;
        }
        if (len == 17 && strncmp(*e, "DATABASE_URL_FILE", 17) == 0) {
            database_url_file = eq + 1;
            continue;
        }
        /* "SLUICE_" alone too: no key, so an error like any other unknown SLUICE_ name */
        if (len < 7 || strncmp(*e, "SLUICE_", 7) != 0 || env_ignored(*e, len))
            continue;
        char key[128];
        if (len - 7 >= sizeof key) {
            load_error(L, "environment: unknown variable %.*s", (int)len, *e);
            continue;
        }
        for (size_t i = 7; i < len; i++)
            key[i - 7] = (char)tolower((unsigned char)(*e)[i]);
        key[len - 7] = '\0';
        int idx = config_keys_find(key);
        if (idx < 0) {
            const char *instead = config_keys_pgbouncer_only(key);
            if (instead)
                load_warning(L,
                             "environment: %.*s: PgBouncer key '%s' is not supported by "
                             "sluice; ignored%s%s",
                             (int)len, *e, key, instead[0] ? ": " : "", instead);
            else
                load_error(L, "environment: unknown variable %.*s (sluice has no key '%s')",
                           (int)len, *e, key);
            continue;
        }
        char why[256], *value = env_value(L, eq + 1);
        if (value &&
            config_keys_set(L->c, idx, value, SRC_ENV, CHECK_KEY_ONLY, why, sizeof why) != 0)
            load_error(L, "environment: %.*s: %s = '%s': %s", (int)len, *e, config_keys[idx].name,
                       value, why);
        env_value_free(value);
    }
    /* After the SLUICE_ keys, which do not affect it, and after the file, whose entry wins. */
    bool has_url = database_url && database_url[0],
         has_file = database_url_file && database_url_file[0];
    if (has_url && has_file) {
        load_error(L, "both DATABASE_URL and DATABASE_URL_FILE are set; set only one of them");
    } else if (has_url) {
        env_database_url(L, database_url);
    } else if (has_file) {
        char *url = malloc(URL_FILE_MAX);
        if (!url) {
            L->oom = true;
            return;
        }
        char *path = env_value(L, database_url_file);
        if (path && read_database_url_file(L, path, url, URL_FILE_MAX))
            env_database_url(L, url);
        free(path);
        explicit_bzero(url, URL_FILE_MAX); /* it held a password */
        free(url);
    }
}
