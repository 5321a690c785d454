/* config: INI file (inih, PgBouncer's pgbouncer.ini layout) + environment -> one validated
 * struct config. Parsing never touches the running proxy: a reload parses into a fresh struct,
 * validates it whole, and the caller swaps it in only when it is valid. */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cidr.h"

/* Each enum type's values are listed once, in config_enums.def; config_value.c parses them at
 * load. */
enum pool_mode { POOL_MODE_UNSET = 0, POOL_SESSION, POOL_TRANSACTION, POOL_STATEMENT };
enum auth_type { AUTH_TRUST = 0, AUTH_ANY, AUTH_PLAIN, AUTH_MD5, AUTH_SCRAM, AUTH_HBA, AUTH_CERT };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };
enum log_level { LOG_ERROR = 0, LOG_WARNING, LOG_INFO, LOG_DEBUG };
/* session_state_policy: what to do about SQL whose effect outlives the transaction in
 * transaction/statement mode (session_state.h says which SQL that is). */
enum session_policy { SESSION_POLICY_WARN, SESSION_POLICY_PIN, SESSION_POLICY_REFUSE };
/* libpq's sslmode; client_tls_sslmode gives them PgBouncer's meanings towards clients (tls.h).
 * UNSET (an empty server_tls_sslmode) leaves libpq its default; ordered so that a comparison
 * such as >= SSLMODE_REQUIRE reads as "at least require". */
enum sslmode {
    SSLMODE_UNSET = -1,
    SSLMODE_DISABLE = 0, /* towards clients: SSLRequest is answered 'N' */
    SSLMODE_ALLOW,       /* TLS when the other side asks for it */
    SSLMODE_PREFER,      /* the same towards clients (the difference is a client-side one) */
    SSLMODE_REQUIRE,     /* towards clients: TCP clients without TLS are refused (28000) */
    SSLMODE_VERIFY_CA,   /* ... and must present a certificate signed by client_tls_ca_file */
    SSLMODE_VERIFY_FULL, /* the same towards clients */
};

const char *pool_mode_name(enum pool_mode m);
const char *auth_type_name(enum auth_type t);
const char *log_format_name(enum log_format f);
const char *log_level_name(enum log_level l);
const char *session_policy_name(enum session_policy p);
const char *sslmode_name(enum sslmode m); /* "" for SSLMODE_UNSET */

/* A cap that is either a count or a share of the server's usable connections. */
struct limit {
    int value; /* count, or percent when is_percent */
    bool is_percent;
};
/* Resolve against the server's max_connections - superuser_reserved_connections; 0 = no limit.
 * A percent with server_usable <= 0 (not yet known) resolves to 0 (no limit yet). */
int limit_resolve(struct limit l, int server_usable);

/* A number of threads: a count, or `auto`, the CPUs the process may use (cpus.h), resolved when
 * parsed, so n is always the number in effect (1..CONFIG_THREADS_MAX); automatic says how it
 * was asked for (SHOW CONFIG prints "auto (n)"). */
#define CONFIG_THREADS_MAX 64
struct thread_count {
    int n;          /* in effect */
    bool automatic; /* written as auto (or defaulted to it) */
};

/* Names separated by commas and/or blanks (admin_users, stats_users, ignore_startup_parameters,
 * listen_addr), split once at load. */
struct name_list {
    char *text;   /* as written, for SHOW CONFIG */
    char **names; /* n names, none empty */
    int n;
};
/* Is name one of the list's (the whole name, case-sensitive)? */
bool config_list_contains(const struct name_list *list, const char *name);

/* An SQL key (server_reset_query, server_check_query): its text and what it is, seen once at
 * load so nothing compares the text again per server. */
enum sql_setting_kind {
    SQL_SETTING_NONE,        /* empty: nothing is sent (the key is off) */
    SQL_SETTING_EMPTY_QUERY, /* "<empty>" (PgBouncer's): an empty Query, the cheapest round trip */
    SQL_SETTING_DISCARD_ALL, /* DISCARD ALL, in any case */
    SQL_SETTING_OTHER,
};
struct sql_setting {
    char *text; /* as written */
    enum sql_setting_kind kind;
};

/* An address or CIDR (a budget's addr=), parsed once by cidr_parse(). */
struct cidr_setting {
    char *text;      /* as written, for SHOW BUDGETS; NULL = any */
    struct cidr net; /* family AF_UNSPEC = any */
};

/* Where a value came from, for SHOW CONFIG and `sluice --check`. */
enum config_source { SRC_DEFAULT = 0, SRC_FILE, SRC_ENV, SRC_ADMIN_SET };
const char *config_source_name(enum config_source s);

/* PgBouncer's per-entry timeouts ([databases] and [users]), in milliseconds; -1: not set here.
 * A [users] value overrides the [databases] one, which overrides the main section's. */
struct entry_timeouts {
    int64_t server_lifetime;
    int64_t query_timeout;
    int64_t idle_transaction_timeout;
    int64_t transaction_timeout;
    int64_t client_idle_timeout;
};

/* One [databases] entry: client-visible name -> upstream. Upstream settings are kept as libpq
 * keywords so anything libpq accepts (sslmode, sslrootcert, several hosts, target_session_attrs)
 * works; sluice's own per-database keys are pulled out into fields. */
/* PgBouncer's load_balance_hosts: which host of a host list a new server connection tries
 * first (libpq then goes on down the list past any host that fails). */
enum load_balance_hosts {
    LOAD_BALANCE_ROUND_ROBIN, /* the next host after the one the previous connection started at */
    LOAD_BALANCE_DISABLE,     /* always the first: the first host that works gets them all */
};
const char *load_balance_hosts_name(enum load_balance_hosts l);

struct db_entry {
    char *name; /* "*" is the fallback entry */
    int nkeys;
    char **pq_keywords; /* NULL-terminated arrays of nkeys entries, for PQconnectStartParams */
    char **pq_values;
    int pool_size;                   /* -1: default_pool_size */
    int min_pool_size;               /* -1: min_pool_size */
    int reserve_pool;                /* -1: reserve_pool_size */
    enum pool_mode pool_mode;        /* POOL_MODE_UNSET: the main section's */
    struct limit max_db_connections; /* value 0: the main section's */
    int max_db_client_connections;   /* 0: the main section's */
    char *auth_user;                 /* NULL unless set */
    char *auth_dbname; /* the entry auth_query runs on for this entry's clients, over the
                          main section's auth_dbname; NULL unless set */
    char *auth_query;  /* the lookup of this entry's clients' secrets, over the main section's
                          auth_query (PgBouncer >= 1.23); NULL unless set */
    struct entry_timeouts timeouts;
    char *connect_query; /* run once on each new server after login; NULL unless set */
    enum load_balance_hosts load_balance_hosts; /* with a host list: where a new server starts */
    enum sslmode sslmode; /* its libpq sslmode keyword, parsed at load; UNSET when not given */
    int line;             /* line in the file, 0 for environment */
    int file;             /* which file: the load's index (0: the main config; %include) */
};

/* One [users] entry. */
struct user_entry {
    char *name;
    enum pool_mode pool_mode; /* POOL_MODE_UNSET: not overridden */
    int pool_size;            /* -1: not overridden */
    int reserve_pool;         /* -1: not overridden */
    struct entry_timeouts timeouts;
    struct limit max_user_connections; /* value 0: the main section's */
    int max_user_client_connections;   /* 0: the main section's */
    int line;
    int file; /* as db_entry's */
};

/* One userlist.txt entry (auth_file), or the user/password of DATABASE_URL. */
struct auth_entry {
    char *user;
    char *secret; /* plain password, "md5<32 hex>", or
                     "SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>" */
};

/* One [budgets] entry: name = app=<glob> user=<name> addr=<cidr> max_servers=N max_clients=M
 * min_servers=K. A client belongs to the first budget (in file order) whose every given
 * matcher matches it; clients matching none belong to the built-in "default" budget. */
struct budget_entry {
    char *name;
    char *app_pattern;        /* glob on application_name, NULL = any */
    char *user;               /* NULL = any */
    struct cidr_setting addr; /* NULL text = any */
    int max_servers;          /* 0 = no limit of its own */
    int max_clients;          /* 0 = no limit of its own */
    int min_servers;          /* guaranteed share; 0 = none */
    int line;
    int file; /* as db_entry's */
};

struct config {
#define KEY(name, type, def, reload, doc) KEY_FIELD_##type(name)
#define KEY_FIELD_STR(name) char *name;
#define KEY_FIELD_INT(name) int64_t name;
#define KEY_FIELD_FILE_MODE(name) unsigned name; /* permission bits, 0..07777 */
#define KEY_FIELD_BOOL(name) bool name;
#define KEY_FIELD_TIME(name) int64_t name; /* milliseconds */
#define KEY_FIELD_LIMIT(name) struct limit name;
#define KEY_FIELD_THREADS(name) struct thread_count name;
#define KEY_FIELD_LIST(name) struct name_list name;
#define KEY_FIELD_SQL(name) struct sql_setting name;
#define KEY_FIELD_POOL_MODE(name) enum pool_mode name;
#define KEY_FIELD_AUTH_TYPE(name) enum auth_type name;
#define KEY_FIELD_LOG_FORMAT(name) enum log_format name;
#define KEY_FIELD_LOG_LEVEL(name) enum log_level name;
#define KEY_FIELD_SESSION_STATE_POLICY(name) enum session_policy name;
#define KEY_FIELD_SSLMODE(name) enum sslmode name;
#include "config_keys.def"
#undef KEY

    /* where each main-section key's value came from, in config_keys.def order */
    enum config_source *sources;

    struct db_entry *dbs;
    int ndbs;
    struct user_entry *users;
    int nusers;
    struct auth_entry *auth; /* auth_file entries, then the DATABASE_URL user if any */
    int nauth;
    struct budget_entry *budgets;
    int nbudgets;

    char *path; /* the file read, NULL when configured by environment only */

    /* Reload across threads (docs/architecture.md 5.7): a loaded config is immutable and
     * shared; each holder (the process, each worker that applied it) has a reference. */
    atomic_uint refs;
    uint64_t generation; /* 1, 2, ...: the order the process loaded its configs in */
};

/* Describes each main-section key (for SHOW CONFIG, --help, the README table). */
struct config_key_info {
    const char *name;
    const char *type; /* "STR", "INT", ... (config_enums.def lists an enum type's values) */
    const char *def;  /* default as written in config_keys.def */
    bool reloadable;
    const char *doc;
};
extern const struct config_key_info config_keys[];
extern const int config_nkeys;

/* Collected problems: each names the file line (or the environment variable) and what is wrong.
 * Warnings (unknown PgBouncer keys that sluice does not use) do not make a config invalid.
 * Start it zeroed ({0}); a load appends to it; config_diag_free() empties it for reuse. */
struct config_diag {
    char **errors;
    int nerrors;
    char **warnings;
    int nwarnings;
};
void config_diag_free(struct config_diag *d);

/* Build a config: defaults, then the file at path (may be NULL), then the environment
 * (DATABASE_URL, SLUICE_<KEY> for any main-section key, e.g. SLUICE_POOL_MODE). Returns NULL and
 * fills diag->errors when the result is invalid. env is a NULL-terminated "K=V" array (environ).
 * Reads the file and auth_file with blocking I/O; not for two threads at once (inih's options
 * are process-wide). */
struct config *config_load(const char *path, char *const *env, struct config_diag *diag);
/* The same from a string (tests, fuzzing). */
struct config *config_load_string(const char *ini_text, char *const *env, struct config_diag *diag);

/* A loaded config comes with one reference, its loader's. config_acquire adds one for a new
 * holder and may be called only by a holder (the control thread, before it posts "apply
 * generation N" to a worker), so the count never rises from zero; config_release drops one
 * from any thread, and the last frees the config. NULL is ignored. */
struct config *config_acquire(struct config *c);
void config_release(struct config *c);
/* config_release, for code that never shares its config (a loader's own, tests). */
void config_free(struct config *c);
/* A new generation equal to c, with one reference (its caller's) and memory of its own: the
 * admin console's SET changes the copy, never a config a worker reads. NULL: out of memory. */
struct config *config_copy(const struct config *c);
/* A reload's new config keeps the running value (and its source) of every key that needs a
 * restart (config_keys.def's RESTART: the listeners are bound, the workers started), so that
 * SHOW CONFIG shows what is in effect; report is called for each such key whose value the
 * reload would have changed, for the log. -ENOMEM: next is then unusable (free it). */
int config_keep_restart_keys(struct config *next, const struct config *running,
                             void (*report)(const char *key, const char *running,
                                            const char *wanted));

/* Look-ups used by the proxy. */
const struct db_entry *config_find_db(const struct config *c,
                                      const char *name); /* exact, then "*" */
/* The user= an entry forces on every client (its servers log in as that user), NULL when
 * clients log in as themselves. */
const char *config_db_forced_user(const struct db_entry *db);
/* The application_name= an entry gives its servers (what a client that sends none is told),
 * NULL when it gives none. */
const char *config_db_application_name(const struct db_entry *db);
const struct user_entry *config_find_user(const struct config *c, const char *name);
const struct auth_entry *config_find_auth(const struct config *c, const char *user);
/* The sslmode a server of db logs in with: the entry's sslmode=, else server_tls_sslmode;
 * SSLMODE_UNSET leaves it to libpq's default (prefer). */
enum sslmode config_server_sslmode(const struct config *c, const struct db_entry *db);
/* A main-section key's current value as text (SHOW CONFIG); secrets are never among them. */
void config_format_value(const struct config *c, int key_index, char *out, size_t outlen);
/* Set one main-section key from text (admin SET, environment). 0 or a negative errno;
 * err gets a message fit for a person. */
int config_set_key(struct config *c, const char *name, const char *value, enum config_source src,
                   char *err, size_t errlen);

#endif
