/* secret: where a login's secret comes from — auth_file (and DATABASE_URL), or the database
 * itself through auth_query as auth_user (auth_query.c) — and the SCRAM secret derived from a
 * plain password, computed once per (user, password) on the thread pool and cached, never per
 * login. Lookups that must wait (an auth_query round trip, a derivation) are shared by every
 * login that needs the same answer and end when their last waiter leaves. What to do with a
 * secret is auth.c's. auth_query's connections count under the core's caps on backends, which
 * this layer does not reach into: the core hands it struct secret_slots at start-up. */
#ifndef SLUICE_SECRET_H
#define SLUICE_SECRET_H

#include <stdbool.h>
#include <stdint.h>

#include "scram.h"

struct worker;
union peer_addr;

/* What the core (budget.c's caps, pool.c's idle servers) does for auth_query's connections. */
struct secret_slots {
    /* Take a slot under max_db_connections, max_user_connections and max_server_connections
     * for one more connection to database entry db_name as user_name (true: taken, before the
     * connection is opened). The core may close another pool's idle server to make room. */
    bool (*take)(struct worker *worker, const char *db_name, const char *user_name);
    /* An auth_query connection taken with `take` closed (or was never opened): its slot is
     * free for a pool that waits. */
    void (*freed)(struct worker *worker, const char *db_name, const char *user_name);
    /* Does another worker have a lookup that waits for one of the process's
     * SECRET_QUERY_CONNECTIONS (an idle connection of this worker's should close for it)? */
    bool (*wanted_elsewhere)(struct worker *worker);
    /* None of this worker's lookups waits for a connection the cap held back any more. */
    void (*not_waiting)(struct worker *worker);
};
/* Start-up, before any lookup: the core's slots (kept, not copied). */
void secret_init(const struct secret_slots *core_slots);

enum secret_kind {
    SECRET_NONE,  /* no such user, or no usable password */
    SECRET_PLAIN, /* a password in clear */
    SECRET_MD5,   /* "md5" + hex(md5(password || user)) */
    SECRET_SCRAM, /* a SCRAM-SHA-256 secret */
};

struct user_secret {
    enum secret_kind kind;
    const char *text;          /* PLAIN and MD5: valid only during the call that gives it */
    struct scram_secret scram; /* SCRAM; also PLAIN's derived secret when have_scram */
    bool have_scram;
    bool from_query;  /* found by auth_query */
    bool found;       /* the user is listed (auth_file, auth_query), whatever its secret */
    const char *note; /* NONE: why (for the log), e.g. "not in auth_file" */
};

struct secret_request {
    struct worker *worker;
    const char *user;            /* must outlive the request (the client's own copy) */
    const char *database;        /* the database the client asked for */
    bool admin;                  /* admin console login: auth_file only */
    bool need_scram;             /* a PLAIN secret must come with its derived SCRAM secret */
    const union peer_addr *addr; /* the client's (auth_query's share per address), or NULL */
};

struct secret_job;
struct secret_waiter {
    struct secret_waiter *next, *prev;
    struct secret_job *job;
    struct secret_request req;
    /* error: NULL, or why the lookup failed (auth_query could not run); then s is NULL. */
    void (*done)(struct secret_waiter *w, const struct user_secret *s, const char *error);
};

/* 1: the answer is in *out now (no waiting). 0: it comes later through w->done (w must stay put
 * until then or until secret_cancel). */
int secret_lookup(struct secret_waiter *w, struct user_secret *out);
/* Stop waiting; a lookup nobody waits for any more is abandoned (auth_query) or finishes in the
 * background and is cached (derivation). Idempotent. */
void secret_cancel(struct secret_waiter *w);
/* Whether w waits on an auth_query lookup held back behind other addresses' lookups (its
 * address had AUTH_QUERY_QUEUED_PER_ADDRESS lookups waiting already) that has not started: a
 * wait its own address caused, not sluice's slowness (auth_query.c, "a share per address"). */
bool secret_waiter_held_back(const struct secret_waiter *w);
/* Wipe a user_secret filled by secret_lookup. */
void secret_wipe(struct user_secret *s);
/* Threads: the derived-secret cache is shared by every thread (locked); lookups in progress,
 * auth_query's users not found and its connections are the calling thread's (each worker's own, see
 * auth_query.c), so secret_reload, secret_tick, secret_query_servers, secret_shutdown and
 * secret_free_all act on the calling worker's. */

/* Reload: auth_query's users not found are forgotten and its connections closed (auth_query,
 * auth_user or the database entry may have changed). */
void secret_reload(void);
/* Background (sluice's maintenance tick): close auth_query connections idle for
 * SECRET_QUERY_IDLE_MS or stuck past server_connect_timeout; start lookups the caps held back. */
void secret_tick(struct worker *worker, uint64_t now);
/* Another worker gave back one of the process's auth_query connections: start the lookups the
 * cap held back (as the tick does). */
void secret_retry_lookups(struct worker *worker);
/* auth_query's connections (connecting, open, or closed and waiting for the backend to go) to
 * database entry db_name as user_name; NULL matches any. They count against the caps like the
 * pools' servers. */
int secret_query_servers(const char *db_name, const char *user_name);
/* Shutdown begins: end the lookups and close auth_query's connections. */
void secret_shutdown(void);
/* Exit: that, and free the caches. */
void secret_free_all(void);

/* How long auth_query remembers a user it did not find (a secret found is never kept: every
 * login asks, sharing a lookup already running for the same user). */
#define SECRET_QUERY_NEGATIVE_TTL_MS 5000
/* auth_query runs on at most this many connections in the whole process (every worker's, counted
 * in the ledger), whatever the clients do; one idle this long is closed (it holds a slot under
 * the caps), at once when another worker's lookup waits for it. */
#define SECRET_QUERY_CONNECTIONS 2
#define SECRET_QUERY_IDLE_MS 1000
/* While another worker's lookups wait for one of the process's auth_query connections, a worker
 * holding one gives it back at the end of a lookup once it has had it this long (with several,
 * at once): each worker's logins get a turn, not the end of another worker's queue. */
#define SECRET_QUERY_TURN_MS 100
/* Lookups one client address may have waiting for a connection (not started) on a worker before
 * its next ones are held back behind every other address's (auth_query.c). */
#define AUTH_QUERY_QUEUED_PER_ADDRESS 2

#endif
