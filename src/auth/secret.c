/* secret: secrets for logins (see secret.h): the lookup front, its waiters, and the SCRAM
 * secrets derived from plain passwords. What auth_query asks the database is auth_query.c's.
 *
 * The derived cache is process-wide, shared by every worker under derived_mu:
 * SHA-256(iterations, user, 0, password) -> the SCRAM secret derived from that password with a
 * random salt. Keyed by the password's hash, so a reload that changes a password (or
 * scram_iterations) is noticed on the next login and never serves the old secret; never per
 * login: scram_iterations (4096) PBKDF2 rounds cost milliseconds, which would cap logins per
 * second. A job is a lookup in progress that logins share: a derivation on
 * libuv's thread pool (here), or an auth_query run (auth_query.c). Jobs are per thread: a job's
 * waiters are logins of one worker and its completion runs on that worker's loop (two workers
 * that need the same derivation at once each run one; the cache then holds one of them). */
#include "secret.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "auth_query.h"
#include "config.h"
#include "list.h"
#include "sluice.h"

/* ---- the derived-secret cache ---- */

struct derived {
    struct derived *next;
    uint8_t fp[SHA256_DIGEST_LENGTH];
    struct scram_secret s;
};
static pthread_mutex_t derived_mu = PTHREAD_MUTEX_INITIALIZER;
static struct derived *derived_buckets[SECRET_NBUCKETS]; /* under derived_mu */
static int nderived;

/* The cache's key: the user, the password and the iterations (a reload that changes
 * scram_iterations derives again). */
static void fingerprint(const char *user, const char *password, int iterations,
                        uint8_t out[SHA256_DIGEST_LENGTH])
{
    /* the user with its NUL: "ab" + "c" differs from "a" + "bc" */
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    unsigned int len = 0;
    if (!h || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(h, &iterations, sizeof(iterations)) != 1 ||
        EVP_DigestUpdate(h, user, strlen(user) + 1) != 1 ||
        EVP_DigestUpdate(h, password, strlen(password)) != 1 ||
        EVP_DigestFinal_ex(h, out, &len) != 1) {
        /* a failing digest must not make different passwords share a secret */
        RAND_bytes(out, SHA256_DIGEST_LENGTH);
    }
    EVP_MD_CTX_free(h);
}

/* derived_mu held. */
static void derived_clear(void)
{
    for (int i = 0; i < SECRET_NBUCKETS; i++) {
        while (derived_buckets[i]) {
            struct derived *d = derived_buckets[i];
            derived_buckets[i] = d->next;
            OPENSSL_cleanse(d, sizeof(*d));
            free(d);
        }
    }
    nderived = 0;
}

/* derived_mu held. */
static const struct derived *derived_find(const uint8_t *fp)
{
    for (struct derived *d = derived_buckets[secret_bucket_of(fp, SHA256_DIGEST_LENGTH)]; d;
         d = d->next) {
        if (memcmp(d->fp, fp, SHA256_DIGEST_LENGTH) == 0)
            return d;
    }
    return NULL;
}

/* The cached secret for fp into *out (a copy: another thread may clear the cache). */
static bool derived_get(const uint8_t *fp, struct scram_secret *out)
{
    pthread_mutex_lock(&derived_mu);
    const struct derived *d = derived_find(fp);
    if (d)
        *out = d->s;
    pthread_mutex_unlock(&derived_mu);
    return d != NULL;
}

static void derived_put(const uint8_t *fp, const struct scram_secret *s)
{
    pthread_mutex_lock(&derived_mu);
    if (!derived_find(fp)) {
        if (nderived >= SECRET_MAX_CACHED)
            derived_clear(); /* old passwords pile up only across many reloads; start afresh */
        struct derived *d = calloc(1, sizeof(*d));
        if (d) {
            memcpy(d->fp, fp, SHA256_DIGEST_LENGTH);
            d->s = *s;
            unsigned b = secret_bucket_of(fp, SHA256_DIGEST_LENGTH);
            d->next = derived_buckets[b];
            derived_buckets[b] = d;
            nderived++;
        }
    }
    pthread_mutex_unlock(&derived_mu);
}

/* ---- jobs ---- */

static _Thread_local struct secret_job *derive_jobs; /* this worker's derivations in progress */

void secret_job_attach(struct secret_job *j, struct secret_waiter *w)
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

/* At the end of the list: auth_query lookups start in the order they were asked for. */
void secret_job_append(struct secret_job **list, struct secret_job *j)
{
    struct secret_job **pp = list;
    while (*pp)
        pp = &(*pp)->next;
    j->next = NULL;
    *pp = j;
}

void secret_job_unlink(struct secret_job **list, struct secret_job *j)
{
    for (struct secret_job **pp = list; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            return;
        }
    }
}

void secret_job_free(struct secret_job *j)
{
    if (j->password) {
        OPENSSL_cleanse(j->password, strlen(j->password));
        free(j->password);
    }
    if (j->found) {
        OPENSSL_cleanse(j->found, strlen(j->found));
        free(j->found);
    }
    free(j->key);
    free(j->user);
    free(j->query);
    free(j->database);
    free(j->target);
    free(j->db_name);
    free(j->auth_user);
    OPENSSL_cleanse(&j->result, sizeof(j->result));
    free(j);
}

static int resolve(struct secret_waiter *w, struct user_secret *out);
static int resolve_derived(struct secret_waiter *w, const struct secret_job *j,
                           struct user_secret *out);

/* Each waiter is taken off before it is called. */
void secret_job_wake(struct secret_job *j, const char *error)
{
    while (j->waiters) {
        struct secret_waiter *w = j->waiters;
        job_detach(w);
        if (error) {
            w->done(w, NULL, error);
            continue;
        }
        struct user_secret s;
        int r = j->kind == JOB_DERIVE ? resolve_derived(w, j, &s) : resolve(w, &s);
        if (r == 1)
            w->done(w, &s, NULL);
        else if (r < 0)
            w->done(w, NULL, s.note);
        secret_wipe(&s);
        /* r == 0: it waits on another job now (a derivation after auth_query) */
    }
}

/* ---- derivation on the thread pool ---- */

static void on_derive_work(uv_work_t *req)
{
    struct secret_job *j = container_of(req, struct secret_job, work);
    j->rc = scram_make_secret(j->password, j->salt, sizeof(j->salt), j->iterations, &j->result);
}

static void on_derive_done(uv_work_t *req, int status)
{
    struct secret_job *j = container_of(req, struct secret_job, work);
    secret_job_unlink(&derive_jobs, j);
    if (status == 0 && j->rc == 0)
        derived_put(j->fp, &j->result);
    secret_job_wake(j, status == 0 && j->rc == 0 ? NULL : "cannot derive the SCRAM secret");
    secret_job_free(j);
}

static struct secret_job *derive_job(struct worker *worker, const uint8_t *fp, const char *password)
{
    for (struct secret_job *j = derive_jobs; j; j = j->next) {
        if (j->kind == JOB_DERIVE && memcmp(j->fp, fp, SHA256_DIGEST_LENGTH) == 0)
            return j;
    }
    struct secret_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->kind = JOB_DERIVE;
    j->worker = worker;
    j->iterations = (int)worker->cfg->scram_iterations;
    memcpy(j->fp, fp, SHA256_DIGEST_LENGTH);
    j->password = strdup(password);
    if (!j->password || RAND_bytes(j->salt, sizeof(j->salt)) != 1 ||
        uv_queue_work(worker->loop, &j->work, on_derive_work, on_derive_done) != 0) {
        secret_job_free(j);
        return NULL;
    }
    secret_job_append(&derive_jobs, j);
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
    fingerprint(w->req.user, text, (int)w->req.worker->cfg->scram_iterations, fp);
    if (derived_get(fp, &out->scram)) {
        out->have_scram = true;
        return 1;
    }
    struct secret_job *j = derive_job(w->req.worker, fp, text);
    if (!j) {
        out->kind = SECRET_NONE;
        out->note = "out of memory deriving the SCRAM secret";
        return -1;
    }
    secret_job_attach(j, w);
    return 0;
}

static int resolve(struct secret_waiter *w, struct user_secret *out)
{
    memset(out, 0, sizeof(*out));
    const struct config *cfg = w->req.worker->cfg;
    const struct auth_entry *a = config_find_auth(cfg, w->req.user);
    if (a)
        return classify(w, a->secret, false, out);
    const char *text = NULL, *error = NULL;
    switch (auth_query_find(w, &text, &error)) {
    case AUTH_QUERY_NOT_USED:
        out->kind = SECRET_NONE;
        out->note = "no such user in auth_file";
        return 1;
    case AUTH_QUERY_ANSWERED:
        if (!text) {
            out->kind = SECRET_NONE;
            out->from_query = true;
            out->note = "auth_query found no such user";
            return 1;
        }
        return classify(w, text, true, out);
    case AUTH_QUERY_WAITING:
        return 0;
    case AUTH_QUERY_FAILED:
        break;
    }
    out->note = error;
    return -1;
}

/* A derivation w waited on is done: the password it was for is the one w's lookup found, in
 * auth_file or else from auth_query, which is not asked again (every login asks it once). */
static int resolve_derived(struct secret_waiter *w, const struct secret_job *j,
                           struct user_secret *out)
{
    memset(out, 0, sizeof(*out));
    const struct auth_entry *a = config_find_auth(w->req.worker->cfg, w->req.user);
    return classify(w, a ? a->secret : j->password, !a, out);
}

int secret_lookup(struct secret_waiter *w, struct user_secret *out)
{
    w->job = NULL;
    w->next = w->prev = NULL;
    return resolve(w, out);
}

bool secret_waiter_held_back(const struct secret_waiter *w)
{
    return w->job && auth_query_held_back(w->job);
}

void secret_cancel(struct secret_waiter *w)
{
    struct secret_job *j = w->job;
    if (!j)
        return;
    job_detach(w);
    /* a derivation nobody needs finishes in the background and is cached: the thread pool
     * cannot stop it */
    if (j->kind == JOB_QUERY && !j->waiters)
        auth_query_abandon(j);
}

void secret_wipe(struct user_secret *s)
{
    OPENSSL_cleanse(&s->scram, sizeof(s->scram));
    s->text = NULL;
}

void secret_reload(void)
{
    auth_query_reload();
}

void secret_shutdown(void)
{
    auth_query_end_all("sluice is shutting down");
}

void secret_free_all(void)
{
    auth_query_end_all("sluice is shutting down");
    pthread_mutex_lock(&derived_mu);
    derived_clear();
    pthread_mutex_unlock(&derived_mu);
    auth_query_clear();
}
