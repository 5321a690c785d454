/* control: the commands a service may use to change the core's pools (see control.h). Each
 * walks the pools it targets and acts through pool.c, server.c and client.c, as a signal or the
 * maintenance timer would. RELOAD, SET and SHUTDOWN, the process's, are control_process.c's. */
#include "control.h"

#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "client.h"
#include "config.h"
#include "conn_id.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "tally.h"
#include "worker.h"

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

static bool pool_is_target(const struct pool *p, const char *db)
{
    return !p->is_admin && (!db || strcmp(p->db_name, db) == 0);
}

static void for_target_pools(struct worker *worker, const char *db, void (*fn)(struct pool *p))
{
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        struct pool *p = container_of(node, struct pool, node);
        if (pool_is_target(p, db))
            fn(p);
    }
}

static int client_count(const struct pool *p)
{
    return p->active_clients.count + p->waiting.count + p->idle_clients.count;
}

/* A database no longer configured still counts while a pool of it holds clients or servers
 * (closing after the reload that removed it): an empty pool of it is a leftover, and a command
 * naming it answers as for any unknown database. */
bool control_db_known(const struct worker *worker, const char *db)
{
    if (config_find_db(worker->cfg, db))
        return true;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (strcmp(p->db_name, db) == 0 && client_count(p) + pool_server_count(p) > 0)
            return true;
    }
    return false;
}

/* Why a pause closes a server, for its log line. */
static const char PAUSE_REASON[] = "PAUSE (admin console or SIGUSR1)";

static void close_idle(struct pool *p, const char *why)
{
    struct list_node *n, *tmp;
    list_for_each(&p->idle, n, tmp)
    {
        server_close(container_of(n, struct server, node), why);
    }
}

static void close_servers_when_free(struct pool *p, const char *why)
{
    struct list *busy[] = {&p->active, &p->resetting, &p->connecting};
    struct list_node *n, *tmp;
    for (int i = 0; i < NELEM(busy); i++) {
        list_for_each(busy[i], n, tmp)
        {
            container_of(n, struct server, node)->close_when_free = true;
        }
    }
    close_idle(p, why);
}

static void pause_pool(struct pool *p)
{
    pool_pause(p, PAUSED_BY_PAUSE);
    close_servers_when_free(p, PAUSE_REASON);
}

/* RESUME db leaves a pool paused while a PAUSE without a name is still in force, and RESUME
 * without a name resumes pools paused by name too: the ledger's state of the key says which
 * (ledger_db_set_state, set before any worker is told). */
static void resume_pool(struct pool *p)
{
    if (ledger_key_get_state(p->ledger_key) == LEDGER_KEY_SERVING)
        pool_resume(p);
}

static void reconnect_pool(struct pool *p);
static void kill_pool(struct pool *p);

/* Tell every worker, after the ledger's paused state (control.h). */
static void to_every_worker(struct worker *worker, enum control_op op, const char *db)
{
    struct process *proc = worker->proc;
    if (op == CONTROL_PAUSE || op == CONTROL_KILL)
        ledger_db_set_state(&proc->ledger, db, LEDGER_KEY_PAUSED);
    else if (op == CONTROL_RESUME)
        ledger_db_set_state(&proc->ledger, db, LEDGER_KEY_SERVING);
    unsigned seq = op == CONTROL_PAUSE ? ++proc->pause_seq : 0;
    proc->controls_sent++;
    for (int i = 0; i < proc->nworkers; i++)
        worker_post_control(&proc->workers[i], op, db, seq);
}

static bool local_pause_done(struct worker *worker, const char *db);

void control_apply(struct worker *worker, enum control_op op, const char *db, unsigned seq)
{
    static void (*const per_pool[])(struct pool *) = {
        [CONTROL_PAUSE] = pause_pool,
        [CONTROL_RESUME] = resume_pool,
        [CONTROL_RECONNECT] = reconnect_pool,
        [CONTROL_KILL] = kill_pool,
    };
    /* The commands that close servers: a server handed over from or to another worker that
     * has not applied this one yet is judged by the count (handover.c). RESUME closes none. */
    static const bool acts_on_servers[] = {
        [CONTROL_PAUSE] = true,
        [CONTROL_RESUME] = false,
        [CONTROL_RECONNECT] = true,
        [CONTROL_KILL] = true,
    };
    for_target_pools(worker, db, per_pool[op]);
    if (acts_on_servers[op])
        ledger_note_control(&worker->proc->ledger, db, (int)worker->index);
    worker->controls_applied++;
    if (seq) {
        worker->pause_wanted = seq;
        control_report_pause(worker);
    }
}

void control_report_pause(struct worker *worker)
{
    unsigned wanted = worker->pause_wanted;
    if (wanted == atomic_load_explicit(&worker->pause_idle, memory_order_relaxed))
        return;
    /* every paused pool, whichever PAUSE paused it: never reported done too early */
    if (local_pause_done(worker, NULL))
        atomic_store_explicit(&worker->pause_idle, wanted, memory_order_release);
}

void control_pause(struct worker *worker, const char *db)
{
    to_every_worker(worker, CONTROL_PAUSE, db);
}

bool control_pause_done(struct worker *worker, const char *db)
{
    bool done = local_pause_done(worker, db);
    const struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        const struct worker *w = &proc->workers[i];
        if (w != worker &&
            atomic_load_explicit(&w->pause_idle, memory_order_acquire) != proc->pause_seq)
            done = false;
    }
    return done;
}

static bool local_pause_done(struct worker *worker, const char *db)
{
    bool done = true;
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (!pool_is_target(p, db) || !p->paused)
            continue;
        close_idle(p, PAUSE_REASON);
        /* PgBouncer closes those still logging in too: one would otherwise become usable
         * after PAUSE answered. One a client is linked to already waits like one in use. */
        struct list_node *c, *ctmp;
        list_for_each(&p->connecting, c, ctmp)
        {
            struct server *s = container_of(c, struct server, node);
            if (!s->client)
                server_close(s, PAUSE_REASON);
        }
        if (p->active.count > 0 || p->resetting.count > 0 || p->connecting.count > 0)
            done = false;
    }
    return done;
}

void control_resume(struct worker *worker, const char *db)
{
    to_every_worker(worker, CONTROL_RESUME, db);
}

bool control_paused_all(struct worker *worker)
{
    return ledger_paused_all(&worker->proc->ledger);
}

static void reconnect_pool(struct pool *p)
{
    close_servers_when_free(p, "RECONNECT from the admin console");
}

void control_reconnect(struct worker *worker, const char *db)
{
    to_every_worker(worker, CONTROL_RECONNECT, db);
}

static int count_close_needed(const struct list *l)
{
    int n_needed = 0;
    struct list_node *n, *tmp;
    list_for_each(l, n, tmp)
    {
        n_needed += container_of(n, struct server, node)->close_when_free;
    }
    return n_needed;
}

int control_close_pending(const struct pool *p)
{
    return count_close_needed(&p->active) + count_close_needed(&p->idle) +
           count_close_needed(&p->resetting) + count_close_needed(&p->connecting);
}

struct close_question {
    const char *db;
    bool done;
};

static void ask_close_done(const struct tally_pool *tp, void *ctx)
{
    struct close_question *q = ctx;
    if (!tp->v.console && (!q->db || strcmp(tp->db_name, q->db) == 0) && tp->close_pending > 0)
        q->done = false;
}

bool control_close_done(const struct worker *worker, const char *db)
{
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (pool_is_target(p, db) && control_close_pending(p) > 0)
            return false;
    }
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other == worker || !other->tally)
            continue;
        struct tally_marks seen = tally_marks(other->tally);
        if (seen.controls_applied != proc->controls_sent || seen.reload_applied != proc->reload_seq)
            return false; /* its last frame is older than what it was told */
        struct close_question q = {db, true};
        tally_each_pool(other->tally, ask_close_done, &q);
        if (!q.done)
            return false;
    }
    return true;
}

/* Every client of p fails with f (detail), and every server closes (why, for the log). */
static void drop_everyone(struct pool *p, enum failure f, const char *detail, const char *why)
{
    struct list *clients[] = {&p->active_clients, &p->waiting, &p->idle_clients};
    struct list_node *n, *tmp;
    for (int i = 0; i < NELEM(clients); i++) {
        list_for_each(clients[i], n, tmp)
            client_fail(container_of(n, struct client, node), f, detail);
    }
    struct list *servers[] = {&p->active, &p->resetting, &p->idle, &p->connecting};
    for (int i = 0; i < NELEM(servers); i++) {
        list_for_each(servers[i], n, tmp)
            server_close(container_of(n, struct server, node), why);
    }
}

/* PgBouncer's KILL: drop every client and server of the database, and leave it paused so new
 * clients wait until RESUME. */
static void kill_pool(struct pool *p)
{
    pool_pause(p, PAUSED_BY_KILL);
    drop_everyone(p, FAIL_ADMIN_KILLED, "", "KILL from the admin console");
}

void control_drop_removed(struct worker *worker)
{
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin || config_find_db(worker->cfg, p->db_name))
            continue;
        int clients = client_count(p);
        if (clients + pool_server_count(p) > 0)
            log_msg(LOG_WARNING,
                    "pool %s/%s: database \"%s\" was removed from [databases] by a reload: "
                    "its %d clients are closed (3D000) and its servers closed",
                    p->db_name, p->user_name, p->db_name, clients);
        drop_everyone(p, FAIL_UNKNOWN_DATABASE, p->db_name, "its database was removed by a reload");
        p->min_size = 0; /* no entry to open servers with: min_pool_size keeps none */
    }
}

void control_kill(struct worker *worker, const char *db)
{
    to_every_worker(worker, CONTROL_KILL, db);
}

static struct client *find_client_in(const struct list *l, uint64_t id)
{
    struct list_node *n, *tmp;
    list_for_each(l, n, tmp)
    {
        struct client *c = container_of(n, struct client, node);
        if (c->id == id)
            return c;
    }
    return NULL;
}

struct client *control_find_client(struct worker *worker, uint64_t id)
{
    struct client *c = find_client_in(&worker->login_clients, id);
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        if (c)
            break;
        c = find_client_in(&p->active_clients, id);
        if (!c)
            c = find_client_in(&p->waiting, id);
        if (!c)
            c = find_client_in(&p->idle_clients, id);
    }
    return c;
}

void control_kill_client(struct client *victim)
{
    client_fail(victim, FAIL_ADMIN_KILLED, "");
}

bool control_kill_client_here(struct worker *worker, uint64_t id)
{
    struct client *victim = control_find_client(worker, id);
    if (!victim) {
        log_msg(LOG_INFO, "KILL_CLIENT %s: that client has left already", CONN_ID_TEXT(id));
        return false;
    }
    control_kill_client(victim);
    return true;
}

struct worker *control_client_owner(struct worker *worker, uint64_t id)
{
    unsigned index = conn_id_worker(id);
    struct process *proc = worker->proc;
    return index < (unsigned)proc->nworkers ? &proc->workers[index] : NULL;
}

void control_kill_client_elsewhere(struct worker *owner, uint64_t id)
{
    worker_post_kill_client(owner, id);
}
