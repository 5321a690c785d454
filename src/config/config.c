/* config: defaults, then the INI file (inih, PgBouncer's pgbouncer.ini layout), then the
 * environment, into one struct config that is validated whole before anyone sees it. Every string
 * the result holds is its own copy; config_free() releases it all. What a key means at run time is
 * left to the file that uses it. This file runs a load and owns its result (look-ups, freeing);
 * the sections, the environment, the auth_file and the value parsers have files of their own
 * (config_load.h says which). */
#include "config.h"
#include "config_load.h"
#include "config_value.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

const char *config_db_forced_user(const struct db_entry *db)
{
    const char *user = db ? config_db_keyword(db, "user") : NULL;
    return user && user[0] ? user : NULL;
}

const char *config_db_application_name(const struct db_entry *db)
{
    return db ? config_db_keyword(db, "application_name") : NULL;
}

const struct db_entry *config_find_db_exact(const struct config *c, const char *name)
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

bool config_list_contains(const struct name_list *list, const char *name)
{
    if (!list || !name)
        return false;
    for (int i = 0; i < list->n; i++) {
        if (strcmp(list->names[i], name) == 0)
            return true;
    }
    return false;
}

enum sslmode config_server_sslmode(const struct config *c, const struct db_entry *db)
{
    return db && db->sslmode != SSLMODE_UNSET ? db->sslmode : c->server_tls_sslmode;
}

/* ---- freeing ---- */

void config_free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void config_db_entry_free(struct db_entry *db)
{
    free(db->name);
    for (int i = 0; i < db->nkeys; i++) {
        free(db->pq_keywords[i]);
        config_free_secret(db->pq_values[i]); /* password among them */
    }
    free(db->pq_keywords);
    free(db->pq_values);
    free(db->auth_user);
    free(db->auth_dbname);
    free(db->auth_query);
    free(db->connect_query);
}

void config_budget_entry_free(struct budget_entry *b)
{
    free(b->name);
    free(b->app_pattern);
    free(b->user);
    config_value_free_CIDR(&b->addr);
}

struct config *config_acquire(struct config *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); /* from a holder's */
    return c;
}

static void destroy(struct config *c);

void config_release(struct config *c)
{
    /* acq_rel: the holder that frees sees every other holder's reads done */
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        destroy(c);
}

void config_free(struct config *c)
{
    config_release(c);
}

static void destroy(struct config *c)
{
#define KEY(name, type, def, reload, doc) config_value_free_##type(&c->name);
#include "config_keys.def"
#undef KEY
    free(c->sources);
    for (int i = 0; i < c->ndbs; i++)
        config_db_entry_free(&c->dbs[i]);
    free(c->dbs);
    for (int i = 0; i < c->nusers; i++)
        free(c->users[i].name);
    free(c->users);
    for (int i = 0; i < c->nauth; i++) {
        free(c->auth[i].user);
        config_free_secret(c->auth[i].secret);
    }
    free(c->auth);
    for (int i = 0; i < c->nbudgets; i++)
        config_budget_entry_free(&c->budgets[i]);
    free(c->budgets);
    free(c->path);
    free(c);
}

/* ---- copy (admin SET makes a new generation from the live one) ---- */

/* Configs loaded or copied by this process so far: a reload's generation number. */
static atomic_uint_fast64_t generations;

/* Each copy_<TYPE> makes *to (a bitwise copy of *from) own its memory: false when out of
 * memory, *to then holding NULL where the copy failed (so destroy frees what was made). */
static bool copy_str(char **to)
{
    if (!*to)
        return true;
    *to = strdup(*to);
    return *to != NULL;
}

static bool copy_STR(char **to)
{
    return copy_str(to);
}

static bool copy_SQL(struct sql_setting *to)
{
    return copy_str(&to->text);
}

static bool copy_LIST(struct name_list *to)
{
    char **names = to->names;
    int n = to->n;
    to->names = NULL;
    to->n = 0;
    bool ok = copy_str(&to->text);
    if (!names)
        return ok;
    to->names = calloc((size_t)n + 1, sizeof(*to->names));
    if (!to->names)
        return false;
    for (int i = 0; i < n; i++, to->n++) {
        to->names[i] = names[i];
        ok &= copy_str(&to->names[i]);
    }
    return ok;
}

#define COPY_NOTHING(kind, ctype)                                                                  \
    static bool copy_##kind(ctype *to)                                                             \
    {                                                                                              \
        (void)to;                                                                                  \
        return true;                                                                               \
    }
COPY_NOTHING(INT, int64_t)
COPY_NOTHING(FILE_MODE, unsigned)
COPY_NOTHING(BOOL, bool)
COPY_NOTHING(TIME, int64_t)
COPY_NOTHING(LIMIT, struct limit)
COPY_NOTHING(POOL_MODE, enum pool_mode)
COPY_NOTHING(AUTH_TYPE, enum auth_type)
COPY_NOTHING(LOG_FORMAT, enum log_format)
COPY_NOTHING(LOG_LEVEL, enum log_level)
COPY_NOTHING(SESSION_STATE_POLICY, enum session_policy)
COPY_NOTHING(SSLMODE, enum sslmode)
COPY_NOTHING(THREADS, struct thread_count)
#undef COPY_NOTHING

/* An array of n elements of size each, copied bitwise; NULL (with *n 0) when out of memory. */
static void *copy_array(const void *from, int *n, size_t size)
{
    if (!from || *n == 0)
        return NULL;
    void *to = malloc((size_t)*n * size);
    if (!to)
        *n = 0;
    else
        memcpy(to, from, (size_t)*n * size);
    return to;
}

static bool copy_db(struct db_entry *db)
{
    bool ok = copy_str(&db->name) & copy_str(&db->auth_user) & copy_str(&db->auth_dbname) &
              copy_str(&db->auth_query) & copy_str(&db->connect_query);
    char **kw = db->pq_keywords, **val = db->pq_values;
    int n = db->nkeys;
    db->nkeys = 0;
    db->pq_keywords = calloc((size_t)n + 1, sizeof(char *));
    db->pq_values = calloc((size_t)n + 1, sizeof(char *));
    if (!db->pq_keywords || !db->pq_values) {
        free(db->pq_keywords);
        free(db->pq_values);
        db->pq_keywords = db->pq_values = NULL;
        return false;
    }
    for (int i = 0; i < n; i++, db->nkeys++) {
        db->pq_keywords[i] = kw[i];
        db->pq_values[i] = val[i];
        ok &= copy_str(&db->pq_keywords[i]) & copy_str(&db->pq_values[i]);
    }
    return ok;
}

struct config *config_copy(const struct config *from)
{
    struct config *c = malloc(sizeof(*c));
    if (!c)
        return NULL;
    memcpy(c, from, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->generation = atomic_fetch_add_explicit(&generations, 1, memory_order_relaxed) + 1;
    bool ok = true;
#define KEY(name, type, def, reload, doc) ok &= copy_##type(&c->name);
#include "config_keys.def"
#undef KEY
    int nkeys = config_nkeys;
    c->sources = copy_array(from->sources, &nkeys, sizeof(*c->sources));
    ok &= c->sources != NULL || !from->sources;
    c->dbs = copy_array(from->dbs, &c->ndbs, sizeof(*c->dbs));
    ok &= c->ndbs == from->ndbs;
    for (int i = 0; i < c->ndbs; i++)
        ok &= copy_db(&c->dbs[i]);
    c->users = copy_array(from->users, &c->nusers, sizeof(*c->users));
    ok &= c->nusers == from->nusers;
    for (int i = 0; i < c->nusers; i++)
        ok &= copy_str(&c->users[i].name);
    c->auth = copy_array(from->auth, &c->nauth, sizeof(*c->auth));
    ok &= c->nauth == from->nauth;
    for (int i = 0; i < c->nauth; i++)
        ok &= copy_str(&c->auth[i].user) & copy_str(&c->auth[i].secret);
    c->budgets = copy_array(from->budgets, &c->nbudgets, sizeof(*c->budgets));
    ok &= c->nbudgets == from->nbudgets;
    for (int i = 0; i < c->nbudgets; i++)
        ok &= copy_str(&c->budgets[i].name) & copy_str(&c->budgets[i].app_pattern) &
              copy_str(&c->budgets[i].user) & copy_str(&c->budgets[i].addr.text);
    ok &= copy_str(&c->path);
    if (!ok) {
        destroy(c);
        return NULL;
    }
    return c;
}

/* Key idx of to takes from's value (a copy of its own) and source. false: out of memory, the
 * field then holds no value of its own (as after a failed config_copy). */
static bool take_field(struct config *to, const struct config *from, int idx)
{
    bool ok = true;
    switch (idx) {
#define KEY(name, type, def, reload, doc)                                                          \
    case KEY_IDX_##name:                                                                           \
        config_value_free_##type(&to->name);                                                       \
        to->name = from->name;                                                                     \
        ok = copy_##type(&to->name);                                                               \
        break;
#include "config_keys.def"
#undef KEY
    }
    if (to->sources && from->sources)
        to->sources[idx] = from->sources[idx];
    return ok;
}

int config_keep_restart_keys(struct config *next, const struct config *running,
                             void (*report)(const char *key, const char *running,
                                            const char *wanted))
{
    for (int idx = 0; idx < config_nkeys; idx++) {
        if (config_keys[idx].reloadable)
            continue;
        char now[256], wanted[256];
        config_format_value(running, idx, now, sizeof now);
        config_format_value(next, idx, wanted, sizeof wanted);
        if (strcmp(now, wanted) == 0)
            continue;
        report(config_keys[idx].name, now, wanted);
        if (!take_field(next, running, idx))
            return -ENOMEM;
    }
    return 0;
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

void load_error(struct loader *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_message(L, &L->diag->errors, &L->diag->nerrors, fmt, ap);
    va_end(ap);
    L->nerrors++;
}

void load_warning(struct loader *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_message(L, &L->diag->warnings, &L->diag->nwarnings, fmt, ap);
    va_end(ap);
}

const char *load_origin(const struct loader *L, int file)
{
    return file >= 0 && file < L->norigins ? L->origins[file] : "";
}

char *load_strdup(struct loader *L, const char *s)
{
    char *d = strdup(s);
    if (!d)
        L->oom = true;
    return d;
}

/* A whole file into a string, refusing NUL bytes and anything past 16 MiB. 0 or -errno. */
int config_read_text_file(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int rc = 0;
    while (buf) {
        if (len + 1 >= cap) {
            if (cap >= CONFIG_TEXT_MAX) {
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

/* ---- whole-config validation ---- */

static void validate(struct loader *L)
{
    struct config *c = L->c;
    char why[256];
    if (c->ndbs == 0)
        load_error(L, "no databases: add a [databases] section or set DATABASE_URL");
    if (config_keys_check_main(c, why, sizeof why) != 0)
        load_error(L, "%s", why);
    for (int i = 0; i < c->ndbs; i++) {
        const struct db_entry *db = &c->dbs[i];
        int size = db->pool_size >= 0 ? db->pool_size : (int)c->default_pool_size;
        int min = db->min_pool_size >= 0 ? db->min_pool_size : (int)c->min_pool_size;
        char where[320];
        if (db->line > 0)
            snprintf(where, sizeof where, "%sline %d: database '%s'", load_origin(L, db->file),
                     db->line, db->name);
        else
            snprintf(where, sizeof where, "DATABASE_URL: database '%s'", db->name);
        if (min > size)
            load_error(L, "%s: min_pool_size %d%s is above its pool_size %d%s", where, min,
                       db->min_pool_size >= 0 ? "" : " (the main section's)", size,
                       db->pool_size >= 0 ? "" : " (default_pool_size)");
    }
    /* auth and TLS keys that only make sense together (tls.c and auth.c check the files) */
    if (c->auth_type == AUTH_HBA && !c->auth_hba_file[0])
        load_error(L, "auth_type = hba needs auth_hba_file");
    if (c->client_tls_sslmode != SSLMODE_DISABLE &&
        (!c->client_tls_cert_file[0] || !c->client_tls_key_file[0]))
        load_error(L, "client_tls_sslmode = %s needs client_tls_cert_file and client_tls_key_file",
                   sslmode_name(c->client_tls_sslmode));
    if (c->client_tls_sslmode >= SSLMODE_VERIFY_CA && !c->client_tls_ca_file[0])
        load_error(L, "client_tls_sslmode = %s needs client_tls_ca_file",
                   sslmode_name(c->client_tls_sslmode));
    if (c->auth_type == AUTH_CERT && c->client_tls_sslmode == SSLMODE_DISABLE)
        load_error(L, "auth_type = cert needs client TLS: set client_tls_sslmode (and "
                      "client_tls_ca_file)");
    if (c->auth_type == AUTH_CERT && c->client_tls_sslmode != SSLMODE_DISABLE &&
        !c->client_tls_ca_file[0])
        load_warning(L, "auth_type = cert without client_tls_ca_file: sluice asks no client for "
                        "a certificate, so every client login will fail");
    for (int i = 0; c->auth_type == AUTH_ANY && i < c->ndbs; i++) {
        if (!config_db_forced_user(&c->dbs[i]))
            load_warning(L,
                         "auth_type = any ignores the client's user name, and database '%s' "
                         "forces no user=: its logins will be refused",
                         c->dbs[i].name);
    }
    bool needs_secret =
        c->auth_type == AUTH_PLAIN || c->auth_type == AUTH_MD5 || c->auth_type == AUTH_SCRAM;
    bool entry_auth_user = false; /* an entry's auth_user runs auth_query for its clients */
    for (int i = 0; i < c->ndbs; i++)
        entry_auth_user |= c->dbs[i].auth_user && c->dbs[i].auth_user[0];
    if (needs_secret && c->nauth == 0 && !c->auth_user[0] && !entry_auth_user)
        load_warning(L,
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
    if (c)
        atomic_init(&c->refs, 1); /* the loader's */
    if (!c || !(c->sources = calloc(KEY_COUNT, sizeof *c->sources))) {
        free(c);
        load_error(&L, "out of memory while loading the config");
        config_diag_free(&own);
        return NULL;
    }
    L.c = c;
    for (int i = 0; i < KEY_COUNT; i++) {
        char why[256];
        if (config_keys_set(c, i, config_keys[i].def, SRC_DEFAULT, CHECK_KEY_ONLY, why,
                            sizeof why) != 0)
            load_error(&L, "default of %s ('%s') is invalid: %s", config_keys[i].name,
                       config_keys[i].def, why);
    }
    L.pq_defaults = PQconndefaults(); /* NULL only when libpq is out of memory */
    if (!L.pq_defaults)
        L.oom = true;
    if (path)
        c->path = load_strdup(&L, path);
    if (text)
        config_ini_parse(&L, path, text);
    config_env_apply(&L, env);
    config_auth_file_load(&L);
    config_auth_file_drop_repeated(c);
    if (L.url_user) {
        if (config_find_auth(c, L.url_user))
            load_warning(&L,
                         "DATABASE_URL: user '%s' is also in auth_file; auth_file's password "
                         "is used for client logins",
                         L.url_user);
        else
            config_auth_add(&L, L.url_user, L.url_password);
    }
    validate(&L);
    if (L.oom)
        load_error(&L, "out of memory while loading the config");
    PQconninfoFree(L.pq_defaults);
    for (int i = 0; i < L.norigins; i++)
        free(L.origins[i]);
    free(L.origins);
    free(L.stream_lines);
    free(L.bad_section);
    free(L.url_user);
    config_free_secret(L.url_password);
    config_diag_free(&own);
    if (L.nerrors > 0) {
        destroy(c);
        return NULL;
    }
    c->generation = atomic_fetch_add_explicit(&generations, 1, memory_order_relaxed) + 1;
    return c;
}

struct config *config_load(const char *path, char *const *env, struct config_diag *diag)
{
    if (!path)
        return load(NULL, NULL, env, diag);
    char *text;
    int rc = config_read_text_file(path, &text);
    if (rc != 0) {
        struct config_diag own = {0};
        struct loader L = {.diag = diag ? diag : &own};
        load_error(&L, "%s: cannot read the config file: %s", path,
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
