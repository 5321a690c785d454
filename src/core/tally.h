/* tally: what a worker on a thread of its own publishes of its pools, once per maintenance
 * tick, for the control thread's SHOW, /health and /metrics (docs/architecture.md 5.6). A
 * reader on another thread never walks a worker's lists: it reads the last published frame
 * under the tally's mutex (double buffer: the worker fills the back frame on its own thread,
 * then swaps under the lock), so a view is at most one tick (100 ms) old. Worker 0 publishes
 * nothing: the control thread reads its lists live. */
#ifndef SLUICE_TALLY_H
#define SLUICE_TALLY_H

#include <uv.h>

#include "view.h"

#define TALLY_NAME 64 /* Postgres's NAMEDATALEN: a longer name is cut */

/* One pool as its worker saw it: its settings, counters and counts by state, not its cap (which
 * reads the budgets, shared). v.pool is NULL; db_name, user_name, wait_hist and query_hist point
 * at the copies below once read (tally_each_pool), valid under the tally's lock only. */
struct tally_pool {
    struct view_pool v;
    struct stats_totals totals; /* stats_add_pool's, for SHOW STATS and its averages */
    uint64_t wait_hist[POOL_HIST_BUCKETS], query_hist[POOL_HIST_BUCKETS]; /* the pool's */
    int close_pending; /* servers marked to close when free (control_close_pending) */
    /* The applications whose clients hold the most of its servers (stats_top_applications):
     * /health's top_application sums them per key over the workers (view_pool_top_apps). */
    struct stats_app apps[STATS_TOP_APPS];
    int napps;
    char db_name[TALLY_NAME], user_name[TALLY_NAME];
};

/* What the worker had applied when it filled a frame: a frame that has not seen the last
 * control message or reload cannot say what that message changed (WAIT_CLOSE); one that
 * answers a console's ask to publish (view_publish_now) says the ask's number, so a SHOW knows
 * the frame is at least as new as its question (0: none asked yet). */
struct tally_marks {
    unsigned controls_applied, reload_applied, publish_answered;
};

struct tally_frame {
    int login_clients;
    struct tally_marks marks;
    int npools, cap;
    struct tally_pool *pools;
};

struct tally {
    uv_mutex_t mu;
    struct tally_frame frames[2];
    int front;                 /* the frame readers see; the other is the worker's own */
    unsigned publish_answered; /* the worker's own: the last ask it published for */
};

/* NULL when out of memory. */
struct tally *tally_new(void);
void tally_free(struct tally *t);
/* On the worker's own thread (view_publish fills it): the back frame with room for npools
 * pools, or NULL when out of memory (the front stays, a tick older); then tally_swap makes it
 * the front. */
struct tally_frame *tally_back(struct tally *t, int npools);
void tally_swap(struct tally *t);
/* On any thread: fn for each pool of worker's last frame, under its lock (fn must not block
 * or take another tally's lock); returns the frame's login_clients. */
typedef void tally_pool_fn(const struct tally_pool *p, void *ctx);
int tally_each_pool(struct tally *t, tally_pool_fn *fn, void *ctx);
/* On any thread: the last frame's marks. Frames only grow newer, so a frame read after these
 * marks has seen at least as much. */
struct tally_marks tally_marks(struct tally *t);

#endif
