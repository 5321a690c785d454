/* auth_query: the secret.c half that asks the database itself for a user's secret, as auth_user,
 * on a few non-blocking libpq connections of its own, at every login; only users not found are
 * remembered a while (auth_query.c).
 * This header is the contract between secret.c (the lookup front, the derivation jobs, the
 * waiters) and auth_query.c; the rest of sluice sees only secret.h. */
#ifndef SLUICE_AUTH_QUERY_H
#define SLUICE_AUTH_QUERY_H

#include <netinet/in.h>
#include <openssl/sha.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "secret.h"

/* The derived secrets' cache and auth_query's users not found: their hash tables' size; the
 * derived secrets kept before starting afresh (old passwords pile up only across many
 * changes). */
#define SECRET_NBUCKETS 1024
#define SECRET_MAX_CACHED 20000
/* An address share's name: an IP, or an IPv6 /64 with its "/64" (peer_addr_holder). */
#define AUTH_QUERY_OPENER_LEN (INET6_ADDRSTRLEN + 3)

static inline unsigned secret_bucket_of(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % SECRET_NBUCKETS;
}

/* ---- a lookup in progress (secret.c owns its waiters, each kind its own list) ---- */

enum job_kind { JOB_DERIVE, JOB_QUERY };

struct qconn;

struct secret_job {
    struct secret_job *next; /* in its kind's list, oldest first */
    enum job_kind kind;
    struct secret_waiter *waiters;
    struct worker *worker;
    /* JOB_DERIVE */
    uv_work_t work;
    uint8_t fp[SHA256_DIGEST_LENGTH];
    char *password;
    uint8_t salt[SCRAM_SALT_LEN];
    int iterations; /* scram_iterations when the job began */
    struct scram_secret result;
    int rc;
    /* JOB_QUERY */
    char *key;
    char *user;
    char *query;
    char *database; /* the client's: which entry and auth_user, read again when it runs */
    char *target;   /* "entry \x01 dbname \x01 auth_user": which connections can run it */
    char *db_name;  /* the database entry, for max_db_connections */
    char *auth_user;
    struct qconn *qc; /* the connection running it; NULL while it waits for one */
    int tries;        /* connections it was started on (a stale reused one is retried once) */
    bool answered;    /* a row came back */
    char *found;      /* its password column (NULL: NULL) */
    char opener[AUTH_QUERY_OPENER_LEN]; /* whose share: the first login's address, an IPv6
                                           one's /64 (peer_addr_holder; "": unix) */
    bool held_back; /* behind other addresses' lookups (auth_query.c, a share per address) */
};

/* secret.c: w waits on j from now on. */
void secret_job_attach(struct secret_job *j, struct secret_waiter *w);
/* secret.c: put j at the end of *list / take it out. */
void secret_job_append(struct secret_job **list, struct secret_job *j);
void secret_job_unlink(struct secret_job **list, struct secret_job *j);
void secret_job_free(struct secret_job *j);
/* secret.c: hand j's answer (auth_query_find gives it while this runs), or error, to everyone
 * waiting. A waiter's callback may end its client, which cancels other things but never this job's
 * list. */
void secret_job_wake(struct secret_job *j, const char *error);

/* ---- auth_query.c ---- */

enum auth_query_answer {
    AUTH_QUERY_NOT_USED, /* auth_query does not apply: not configured, or an admin login */
    AUTH_QUERY_ANSWERED, /* *secret: the answer of the lookup just done for the same key, or
                            NULL for a user not found lately (valid until the next auth_query
                            call) */
    AUTH_QUERY_WAITING,  /* w waits on the lookup now (its done callback) */
    AUTH_QUERY_FAILED,   /* *error: why it cannot be asked */
};
/* The auth_query part of w's lookup (its user is not in auth_file). */
enum auth_query_answer auth_query_find(struct secret_waiter *w, const char **secret,
                                       const char **error);
/* j waits behind other addresses' lookups and has not started (secret_waiter_held_back). */
bool auth_query_held_back(const struct secret_job *j);
/* Nobody waits for j any more: one that has not started is forgotten. */
void auth_query_abandon(struct secret_job *j);
/* Reload: forget the users not found; close idle connections, the others once their lookup is done.
 */
void auth_query_reload(void);
/* End every lookup (its waiters hear why) and close every connection. */
void auth_query_end_all(const char *why);
/* Forget the users not found. */
void auth_query_clear(void);

#endif
