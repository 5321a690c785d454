/* stats: what the pools look like now (servers and clients by state, the longest wait), the
 * counters of SHOW STATS and /metrics summed per database from the pools' own counters (pool.h),
 * and their averages over the last stats_period. The pools count on the hot path; this file only
 * reads them, once per period and when asked. */
#ifndef SLUICE_STATS_H
#define SLUICE_STATS_H

#include <stdbool.h>
#include <stdint.h>

struct worker;
struct pool;

/* Totals since start, or per-second rates and per-event times over a period (averages). */
struct stats_totals {
    uint64_t xact_count;
    uint64_t query_count;
    uint64_t bytes_in;  /* client -> server */
    uint64_t bytes_out; /* server -> client */
    uint64_t xact_us;   /* transaction time (first query to the end) */
    uint64_t query_us;
    uint64_t wait_us;
    uint64_t wait_count;
    /* Clients that waited longer than STATS_SLOW_WAIT_MS for a server (in averages: how many in
     * the period, not a rate; /health warns about them). */
    uint64_t slow_waits;
};
#define STATS_SLOW_WAIT_MS 100

/* What one pool looks like now (SHOW POOLS, /health, /metrics), in PgBouncer's terms. */
struct stats_pool_view {
    int sv_active; /* linked to a client */
    int sv_idle;   /* free */
    int sv_used;   /* free, but idle past server_check_delay: checked before reuse */
    int sv_tested; /* running sluice's own query (reset, check, rollback) */
    int sv_login;  /* connecting */
    int sv_total;
    int cl_active, cl_waiting, cl_idle;
    uint64_t longest_wait_ms; /* of the client at the head of the queue */
    /* The last connect failed and no established server is left. A connect attempt in
     * progress does not count as up, so the state does not flap with each retry. */
    bool down;
};
void stats_view_pool(const struct pool *p, uint64_t now_ms, struct stats_pool_view *v);
/* An application_name (copied, cut at 63 bytes like Postgres's NAMEDATALEN) and how many of a
 * pool's servers its clients hold. */
struct stats_app {
    char name[64];
    int servers;
};
/* How many application names a worker publishes per pool (tally.h): the top of each worker's
 * list, merged per key on the control thread (view_pool_top_apps). */
#define STATS_TOP_APPS 4
/* The up to max application_names whose clients hold the most of this pool's servers, most
 * first (equal counts: in name order), into out; their count (0: no client holds a server). */
int stats_top_applications(const struct pool *p, struct stats_app *out, int max);
/* Add `servers` held by application `name` into list (n entries, room for cap): summed with an
 * entry of the same name, else appended (left out when full); then kept in stats_top_
 * applications' order. Returns the new n. */
int stats_app_add(struct stats_app *list, int n, int cap, const char *name, int servers);

/* Add one pool's counters to t. */
void stats_add_pool(struct stats_totals *t, const struct pool *p);
/* Totals of every pool of one database. */
void stats_totals_for_db(const struct worker *worker, const char *db_name,
                         struct stats_totals *out);
/* How long the last complete averaging period was (stats_period, or 60 s when that is 0). */
uint64_t stats_period_ms(const struct worker *worker);
/* Averages over the last complete stats_period for a database (PgBouncer's meaning: counts and
 * bytes per second; query and wait times in microseconds per query / per wait). false while no
 * period has completed yet (out is zeroed then). */
bool stats_averages(const struct worker *worker, const char *db_name, struct stats_totals *out);
/* Called from the background timer: takes a snapshot when a period has passed. */
void stats_tick(struct worker *worker, uint64_t now_ms);
void stats_free(struct worker *worker);

#endif
