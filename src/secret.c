/* secret: secrets for logins (see secret.h).
 *
 * Two caches, both process-wide (one sluice per process):
 *  - derived: SHA-256(user, 0, password) -> the SCRAM secret derived from that password with a
 *    random salt. Keyed by the password's hash, so a reload that changes a password is noticed
 *    on the next login and never serves the old secret; never per login: 4096 PBKDF2 rounds cost
 *    milliseconds, which would cap logins per second.
 *  - query: (database entry, dbname, auth_user, user) -> what auth_query returned, for
 *    SECRET_QUERY_TTL_MS (SECRET_QUERY_NEGATIVE_TTL_MS when the user was not found).
 * A job is a lookup in progress: a derivation on libuv's thread pool, or an auth_query on its own
 * non-blocking libpq connection (PQconnectStartParams/PQconnectPoll, then PQsendQueryParams),
 * driven by one poll handle on its socket like a server's login. */
#include "secret.h"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "list.h"
#include "log.h"
#include "sluice.h"
#include "sockio.h"

#define NBUCKETS 1024
#define MAX_CACHED 20000

/* ---- the derived-secret cache ---- */

struct derived {
    struct derived *next;
    uint8_t fp[SHA256_DIGEST_LENGTH];
    struct scram_secret s;
};
static struct derived *derived_buckets[NBUCKETS];
static int nderived;

static void fingerprint(const char *user, const char *password, uint8_t out[SHA256_DIGEST_LENGTH])
{
    /* the user with its NUL: "ab" + "c" differs from "a" + "bc" */
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    unsigned int len = 0;
    if (!h || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(h, user, strlen(user) + 1) != 1 ||
        EVP_DigestUpdate(h, password, strlen(password)) != 1 ||
        EVP_DigestFinal_ex(h, out, &len) != 1) {
        /* a failing digest must not make different passwords share a secret */
        RAND_bytes(out, SHA256_DIGEST_LENGTH);
    }
    EVP_MD_CTX_free(h);
}

static unsigned bucket_of(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % NBUCKETS;
}

static void derived_clear(void)
{
    for (int i = 0; i < NBUCKETS; i++) {
        while (derived_buckets[i]) {
            struct derived *d = derived_buckets[i];
            derived_buckets[i] = d->next;
            OPENSSL_cleanse(d, sizeof(*d));
            free(d);
        }
    }
    nderived = 0;
}

static const struct derived *derived_get(const uint8_t *fp)
{
    for (struct derived *d = derived_buckets[bucket_of(fp, SHA256_DIGEST_LENGTH)]; d; d = d->next) {
        if (memcmp(d->fp, fp, SHA256_DIGEST_LENGTH) == 0)
            return d;
    }
    return NULL;
}

static void derived_put(const uint8_t *fp, const struct scram_secret *s)
{
    if (derived_get(fp))
        return;
    if (nderived >= MAX_CACHED)
        derived_clear(); /* old passwords pile up only across many reloads; start afresh */
    struct derived *d = calloc(1, sizeof(*d));
    if (!d)
        return;
    memcpy(d->fp, fp, SHA256_DIGEST_LENGTH);
    d->s = *s;
    unsigned b = bucket_of(fp, SHA256_DIGEST_LENGTH);
    d->next = derived_buckets[b];
    derived_buckets[b] = d;
    nderived++;
}

/* ---- the auth_query cache ---- */

struct qentry {
    struct qentry *next;
    char *key;
    char *secret; /* NULL: no such user (or no password) */
    uint64_t expires_ms;
};
static struct qentry *query_buckets[NBUCKETS];
static int nquery;

static void qentry_free(struct qentry *e)
{
    if (e->secret)
        OPENSSL_cleanse(e->secret, strlen(e->secret));
    free(e->secret);
    free(e->key);
    free(e);
}

static void query_clear(void)
{
    for (int i = 0; i < NBUCKETS; i++) {
        while (query_buckets[i]) {
            struct qentry *e = query_buckets[i];
            query_buckets[i] = e->next;
            qentry_free(e);
        }
    }
    nquery = 0;
}

/* Expired entries go as they are met. */
static const struct qentry *query_get(const char *key, uint64_t now)
{
    struct qentry **pp = &query_buckets[bucket_of((const uint8_t *)key, strlen(key))];
    while (*pp) {
        struct qentry *e = *pp;
        if (now >= e->expires_ms) {
            *pp = e->next;
            qentry_free(e);
            nquery--;
            continue;
        }
        if (strcmp(e->key, key) == 0)
            return e;
        pp = &e->next;
    }
    return NULL;
}

static void query_put(const char *key, const char *secret, uint64_t now)
{
    if (nquery >= MAX_CACHED)
        query_clear();
    struct qentry *e = calloc(1, sizeof(*e));
    if (!e)
        return;
    e->key = strdup(key);
    e->secret = secret ? strdup(secret) : NULL;
    if (!e->key || (secret && !e->secret)) {
        qentry_free(e);
        return;
    }
    e->expires_ms = now + (secret ? SECRET_QUERY_TTL_MS : SECRET_QUERY_NEGATIVE_TTL_MS);
    struct qentry **pp = &query_buckets[bucket_of((const uint8_t *)key, strlen(key))];
    /* replace an older answer for the same key */
    for (struct qentry **q = pp; *q; q = &(*q)->next) {
        if (strcmp((*q)->key, key) == 0) {
            struct qentry *old = *q;
            *q = old->next;
            qentry_free(old);
            nquery--;
            break;
        }
    }
    e->next = *pp;
    *pp = e;
    nquery++;
}

/* ---- jobs ---- */

enum job_kind { JOB_DERIVE, JOB_QUERY };

struct secret_job {
    struct secret_job *next; /* in the jobs list */
    enum job_kind kind;
    struct secret_waiter *waiters;
    struct sluice *app;
    /* JOB_DERIVE */
    uv_work_t work;
    uint8_t fp[SHA256_DIGEST_LENGTH];
    char *password;
    uint8_t salt[SCRAM_SALT_LEN];
    struct scram_secret result;
    int rc;
    /* JOB_QUERY */
    char *key;
    char *user;
    char *query;
    PGconn *conn;
    struct sockio io;
    bool querying;
    bool answered; /* a row came back */
    char *found;   /* its password column (NULL: NULL) */
};
static struct secret_job *jobs;

static void job_attach(struct secret_job *j, struct secret_waiter *w)
{
    w->job = j;
    w->prev = NULL;
    w->next = j->waiters;
    if (j->waiters)
        j->waiters->prev = w;
    j->waiters = w;
}

static void job_detach(struct secret_waiter *w)
{
    struct secret_job *j = w->job;
    if (!j)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        j->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->job = NULL;
}

static void job_unlink(struct secret_job *j)
{
    for (struct secret_job **pp = &jobs; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            return;
        }
    }
}

static void job_free(struct secret_job *j)
{
    if (j->password) {
        OPENSSL_cleanse(j->password, strlen(j->password));
        free(j->password);
    }
    if (j->found) {
        OPENSSL_cleanse(j->found, strlen(j->found));
        free(j->found);
    }
    sockio_detach(&j->io);
    if (j->conn)
        PQfinish(j->conn);
    free(j->key);
    free(j->user);
    free(j->query);
    OPENSSL_cleanse(&j->result, sizeof(j->result));
    free(j);
}

static int resolve(struct secret_waiter *w, struct user_secret *out);

/* Hand the answer to everyone waiting. A waiter's callback may end its client, which cancels
 * other things but never this job's list: each waiter is taken off before it is called. */
static void job_wake(struct secret_job *j, const char *error)
{
    while (j->waiters) {
        struct secret_waiter *w = j->waiters;
        job_detach(w);
        if (error) {
            w->done(w, NULL, error);
            continue;
        }
        struct user_secret s;
        int r = resolve(w, &s);
        if (r == 1)
            w->done(w, &s, NULL);
        else if (r < 0)
            w->done(w, NULL, s.note);
        secret_wipe(&s);
        /* r == 0: it waits on another job now (a derivation after auth_query) */
    }
}

/* -- derivation on the thread pool */

static void on_derive_work(uv_work_t *req)
{
    struct secret_job *j = container_of(req, struct secret_job, work);
    j->rc = scram_make_secret(j->password, j->salt, sizeof(j->salt), SCRAM_DEFAULT_ITERATIONS,
                              &j->result);
}

static void on_derive_done(uv_work_t *req, int status)
{
    struct secret_job *j = container_of(req, struct secret_job, work);
    job_unlink(j);
    if (status == 0 && j->rc == 0)
        derived_put(j->fp, &j->result);
    job_wake(j, status == 0 && j->rc == 0 ? NULL : "cannot derive the SCRAM secret");
    job_free(j);
}

static struct secret_job *derive_job(struct sluice *app, const uint8_t *fp, const char *password)
{
    for (struct secret_job *j = jobs; j; j = j->next) {
        if (j->kind == JOB_DERIVE && memcmp(j->fp, fp, SHA256_DIGEST_LENGTH) == 0)
            return j;
    }
    struct secret_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->kind = JOB_DERIVE;
    j->app = app;
    j->io.fd = -1;
    memcpy(j->fp, fp, SHA256_DIGEST_LENGTH);
    j->password = strdup(password);
    if (!j->password || RAND_bytes(j->salt, sizeof(j->salt)) != 1 ||
        uv_queue_work(app->loop, &j->work, on_derive_work, on_derive_done) != 0) {
        job_free(j);
        return NULL;
    }
    j->next = jobs;
    jobs = j;
    return j;
}

/* -- auth_query */

static void on_query_io(struct sockio *io, int status, int events);

static void query_finish(struct secret_job *j, const char *error)
{
    job_unlink(j);
    char why[512];
    if (error) {
        snprintf(why, sizeof(why), "%s", error);
        why[strcspn(why, "\n")] = '\0';
        log_msg(LOG_WARNING, "auth_query for user \"%s\" failed: %s", j->user, why);
    } else {
        query_put(j->key, j->answered ? j->found : NULL, sluice_now(j->app));
        log_msg(LOG_DEBUG, "auth_query: user \"%s\" %s", j->user,
                j->answered && j->found ? "found" : "not found");
    }
    job_wake(j, error ? why : NULL);
    job_free(j);
}

static void query_send(struct secret_job *j)
{
    const char *values[1] = {j->user};
    j->querying = true;
    if (PQsetnonblocking(j->conn, 1) != 0 ||
        !PQsendQueryParams(j->conn, j->query, 1, NULL, values, NULL, NULL, 0)) {
        query_finish(j, PQerrorMessage(j->conn));
        return;
    }
    int f = PQflush(j->conn);
    if (f < 0) {
        query_finish(j, PQerrorMessage(j->conn));
        return;
    }
    sockio_want(&j->io, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void query_step(struct secret_job *j)
{
    int f = PQflush(j->conn);
    if (f < 0 || !PQconsumeInput(j->conn)) {
        query_finish(j, PQerrorMessage(j->conn));
        return;
    }
    while (!PQisBusy(j->conn)) {
        PGresult *res = PQgetResult(j->conn);
        if (!res) {
            query_finish(j, NULL);
            return;
        }
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            if (PQnfields(res) < 2) {
                PQclear(res);
                query_finish(j, "auth_query must return two columns: user name and password");
                return;
            }
            if (PQntuples(res) > 0 && !j->answered) {
                j->answered = true;
                if (!PQgetisnull(res, 0, 1)) {
                    j->found = strdup(PQgetvalue(res, 0, 1));
                    if (!j->found) {
                        PQclear(res);
                        query_finish(j, "out of memory");
                        return;
                    }
                }
            }
        } else if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            char why[512];
            snprintf(why, sizeof(why), "%s", PQresultErrorMessage(res));
            PQclear(res);
            query_finish(j, why);
            return;
        }
        PQclear(res);
    }
    sockio_want(&j->io, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void connect_step(struct secret_job *j)
{
    PostgresPollingStatusType st = PQconnectPoll(j->conn);
    int fd = PQsocket(j->conn);
    if (st != PGRES_POLLING_FAILED && fd != j->io.fd) {
        /* libpq moved to another socket (next host, or a retry without TLS) */
        sockio_detach(&j->io);
        if (sockio_open(&j->io, j->app->loop, fd, j, on_query_io) < 0) {
            query_finish(j, "cannot watch the auth_query socket");
            return;
        }
    }
    switch (st) {
    case PGRES_POLLING_READING:
        sockio_want(&j->io, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        sockio_want(&j->io, UV_WRITABLE);
        return;
    case PGRES_POLLING_OK:
        query_send(j);
        return;
    default:
        query_finish(j, PQerrorMessage(j->conn));
        return;
    }
}

static void on_query_io(struct sockio *io, int status, int events)
{
    (void)status;
    (void)events;
    struct secret_job *j = io->owner;
    if (j->querying)
        query_step(j);
    else
        connect_step(j);
}

/* Where auth_query runs: the database entry named by auth_dbname, else the client's; as that
 * entry's auth_user, else the main section's. false: auth_query is not configured for it. */
struct query_target {
    const struct db_entry *db;
    const char *dbname;
    const char *auth_user;
};

static const char *db_keyword(const struct db_entry *db, const char *name)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], name) == 0)
            return db->pq_values[i];
    }
    return NULL;
}

static bool query_target(const struct config *cfg, const char *database, struct query_target *t)
{
    if (!cfg->auth_query[0])
        return false;
    const char *entry = cfg->auth_dbname[0] ? cfg->auth_dbname : database;
    t->db = config_find_db(cfg, entry);
    if (!t->db)
        return false;
    t->auth_user = t->db->auth_user && t->db->auth_user[0] ? t->db->auth_user : cfg->auth_user;
    if (!t->auth_user || !t->auth_user[0])
        return false;
    t->dbname = db_keyword(t->db, "dbname");
    if (!t->dbname)
        t->dbname = entry;
    return true;
}

#define MAX_KEYWORDS 64

static struct secret_job *query_job(struct sluice *app, const struct query_target *t,
                                    const char *key, const char *user, const char **error)
{
    for (struct secret_job *j = jobs; j; j = j->next) {
        if (j->kind == JOB_QUERY && strcmp(j->key, key) == 0)
            return j;
    }
    const struct config *cfg = app->cfg;
    struct secret_job *j = calloc(1, sizeof(*j));
    if (!j) {
        *error = "out of memory";
        return NULL;
    }
    j->kind = JOB_QUERY;
    j->app = app;
    j->io.fd = -1;
    j->key = strdup(key);
    j->user = strdup(user);
    j->query = strdup(cfg->auth_query);
    if (!j->key || !j->user || !j->query) {
        job_free(j);
        *error = "out of memory";
        return NULL;
    }
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    int n = 0;
    for (int i = 0; i < t->db->nkeys && n < MAX_KEYWORDS - 12; i++) {
        const char *k = t->db->pq_keywords[i];
        if (strcmp(k, "user") == 0 || strcmp(k, "password") == 0 || strcmp(k, "dbname") == 0)
            continue;
        kw[n] = k;
        val[n++] = t->db->pq_values[i];
    }
    kw[n] = "dbname";
    val[n++] = t->dbname;
    kw[n] = "user";
    val[n++] = t->auth_user;
    const struct auth_entry *a = config_find_auth(cfg, t->auth_user);
    if (a && strncmp(a->secret, "md5", 3) != 0 && !scram_is_secret(a->secret)) {
        kw[n] = "password";
        val[n++] = a->secret;
    }
    /* server_tls_* as in server.c: the database entry's own keywords win */
    const char *tls_keys[4] = {"sslmode", "sslrootcert", "sslcert", "sslkey"};
    const char *tls_vals[4] = {cfg->server_tls_sslmode, cfg->server_tls_ca_file,
                               cfg->server_tls_cert_file, cfg->server_tls_key_file};
    for (int i = 0; i < 4; i++) {
        if (tls_vals[i] && tls_vals[i][0] && !db_keyword(t->db, tls_keys[i])) {
            kw[n] = tls_keys[i];
            val[n++] = tls_vals[i];
        }
    }
    kw[n] = "fallback_application_name";
    val[n++] = "sluice auth_query";
    kw[n] = NULL;
    val[n] = NULL;
    j->conn = PQconnectStartParams(kw, val, 0);
    if (!j->conn || PQstatus(j->conn) == CONNECTION_BAD) {
        static char why[256];
        snprintf(why, sizeof(why), "%s",
                 j->conn ? PQerrorMessage(j->conn) : "out of memory starting a connection");
        why[strcspn(why, "\n")] = '\0';
        *error = why;
        job_free(j);
        return NULL;
    }
    if (sockio_open(&j->io, app->loop, PQsocket(j->conn), j, on_query_io) < 0) {
        *error = "cannot watch the auth_query socket";
        job_free(j);
        return NULL;
    }
    sockio_want(&j->io, UV_WRITABLE);
    j->next = jobs;
    jobs = j;
    log_msg(LOG_DEBUG, "auth_query: looking up user \"%s\" as \"%s\" in database \"%s\"", user,
            t->auth_user, t->dbname);
    return j;
}

/* ---- resolution ---- */

static bool is_md5_secret(const char *s)
{
    if (strncmp(s, "md5", 3) != 0 || strlen(s) != 35)
        return false;
    for (int i = 3; i < 35; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static int classify(struct secret_waiter *w, const char *text, bool from_query,
                    struct user_secret *out)
{
    out->from_query = from_query;
    out->found = true;
    if (!text || !text[0]) {
        out->kind = SECRET_NONE;
        out->note = from_query ? "auth_query found no password for the user"
                               : "the user's password in auth_file is empty";
        return 1;
    }
    if (is_md5_secret(text)) {
        out->kind = SECRET_MD5;
        out->text = text;
        return 1;
    }
    if (scram_is_secret(text)) {
        if (scram_parse_secret(text, &out->scram) != 0) {
            out->kind = SECRET_NONE;
            out->note = "the user's SCRAM secret is malformed";
            return 1;
        }
        out->kind = SECRET_SCRAM;
        return 1;
    }
    out->kind = SECRET_PLAIN;
    out->text = text;
    if (!w->req.need_scram)
        return 1;
    uint8_t fp[SHA256_DIGEST_LENGTH];
    fingerprint(w->req.user, text, fp);
    const struct derived *d = derived_get(fp);
    if (d) {
        out->scram = d->s;
        out->have_scram = true;
        return 1;
    }
    struct secret_job *j = derive_job(w->req.app, fp, text);
    if (!j) {
        out->kind = SECRET_NONE;
        out->note = "out of memory deriving the SCRAM secret";
        return -1;
    }
    job_attach(j, w);
    return 0;
}

static int resolve(struct secret_waiter *w, struct user_secret *out)
{
    memset(out, 0, sizeof(*out));
    const struct config *cfg = w->req.app->cfg;
    const struct auth_entry *a = config_find_auth(cfg, w->req.user);
    if (a)
        return classify(w, a->secret, false, out);
    struct query_target t;
    if (w->req.admin || !query_target(cfg, w->req.database, &t)) {
        out->kind = SECRET_NONE;
        out->note = "no such user in auth_file";
        return 1;
    }
    size_t klen =
        strlen(t.db->name) + strlen(t.dbname) + strlen(t.auth_user) + strlen(w->req.user) + 4;
    char *key = malloc(klen);
    if (!key) {
        out->note = "out of memory";
        return -1;
    }
    snprintf(key, klen, "%s\x01%s\x01%s\x01%s", t.db->name, t.dbname, t.auth_user, w->req.user);
    const struct qentry *e = query_get(key, sluice_now(w->req.app));
    if (e) {
        free(key);
        if (!e->secret) {
            out->kind = SECRET_NONE;
            out->from_query = true;
            out->note = "auth_query found no such user";
            return 1;
        }
        return classify(w, e->secret, true, out);
    }
    const char *error = NULL;
    struct secret_job *j = query_job(w->req.app, &t, key, w->req.user, &error);
    free(key);
    if (!j) {
        out->note = error;
        return -1;
    }
    job_attach(j, w);
    return 0;
}

int secret_lookup(struct secret_waiter *w, struct user_secret *out)
{
    w->job = NULL;
    w->next = w->prev = NULL;
    return resolve(w, out);
}

void secret_cancel(struct secret_waiter *w)
{
    struct secret_job *j = w->job;
    if (!j)
        return;
    job_detach(w);
    if (j->kind == JOB_QUERY && !j->waiters) {
        /* nobody needs the answer: stop the connection (the thread pool's work cannot be
         * stopped; a derivation finishes and is cached) */
        job_unlink(j);
        job_free(j);
    }
}

void secret_wipe(struct user_secret *s)
{
    OPENSSL_cleanse(&s->scram, sizeof(s->scram));
    s->text = NULL;
}

void secret_reload(void)
{
    query_clear();
}

void secret_free_all(void)
{
    derived_clear();
    query_clear();
}
