/* autodb: the databases clients reach through the "*" entry (PgBouncer's auto-databases). A
 * login naming one makes its pool (pool_get); this file frees them once unused for
 * autodb_idle_timeout, as PgBouncer does: their pools on every worker, their ledger key and
 * scopes (ledger_key_release), and with them their statistics. Without it every name a client
 * chose stayed for good: a pool, its SHOW rows and /metrics series, and ledger entries per name.
 *
 * Each worker frees its own pools on its own thread. Whether the database is unused is the
 * ledger's to say (ledger_db_idle_ms: no backend and no logged-in client on any worker for that
 * long), so every worker frees its pools of it within a tick of the others, and a client that
 * arrives meanwhile is served as any first client is: its worker's pool_get finds its pool, or
 * makes one (and the key, when the last pool of it is gone). */
#include "autodb.h"

#include <string.h>

#include "client.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "sluice.h"
#include "worker.h"

/* Is p a pool of a database made from the "*" entry (no entry of its own), or of one no entry
 * names any more? A reload that removed the "*" entry (or a database's own) closed the clients
 * and servers of its databases (control_drop_removed) and left their pools empty: kept, every
 * name a client had chosen would stay for good, as before autodb_idle_timeout. */
static bool is_auto(const struct pool *p)
{
    if (p->is_admin)
        return false;
    const struct db_entry *db = config_find_db(p->worker->cfg, p->db_name);
    return !db || strcmp(db->name, "*") == 0;
}

/* Does anything on this worker hold p: a client or a server of any state, a close made for it,
 * its need in the ledger's wait list, a PAUSE (PgBouncer keeps a paused database too)? */
static bool in_use(const struct pool *p)
{
    if (!list_empty(&p->waiting) || !list_empty(&p->idle_clients) ||
        !list_empty(&p->active_clients) || pool_server_count(p) > 0 || p->rooms_awaited > 0 ||
        p->slot_wait != POOL_SLOT_WAIT_NONE || p->paused)
        return true;
    /* a client on its way out keeps its pool pointer until it is freed */
    struct list_node *n, *tmp;
    list_for_each(&p->worker->closing_clients, n, tmp)
    {
        if (container_of(n, struct client, node)->pool == p)
            return true;
    }
    return false;
}

void autodb_sweep(struct worker *worker, uint64_t now)
{
    int64_t timeout = worker->cfg->autodb_idle_timeout;
    if (timeout <= 0)
        return;
    struct ledger *l = &worker->proc->ledger;
    uint64_t ledger_now = 0;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (!is_auto(p))
            continue;
        if (in_use(p) || p->last_used_ms == 0) {
            p->last_used_ms = now;
            continue;
        }
        /* this worker's own view first: the ledger's lock only for a pool unused that long */
        if (now - p->last_used_ms < (uint64_t)timeout)
            continue;
        if (!ledger_now)
            ledger_now = ledger_now_ms();
        if (ledger_db_idle_ms(l, p->ledger_key, ledger_now) < (uint64_t)timeout)
            continue;
        log_msg(LOG_INFO,
                "pool %s/%s freed: its database came from the \"*\" entry and was unused "
                "for %.0f s (autodb_idle_timeout)",
                p->db_name, p->user_name, (double)timeout / 1000);
        list_remove(&worker->pools, n);
        struct ledger_key *key = p->ledger_key;
        pool_free(p);
        ledger_key_release(l, key);
    }
}
