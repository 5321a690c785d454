/* sluice: the process and its workers. The process owns what is one per process: the config,
 * the ledger of caps and the budgets, the listener, signals, the services beside the core (admin
 * console, HTTP), admin state and the shutdown phase. A worker owns what one event loop serves:
 * its clients, servers and pools, their lists, the reaper, the maintenance timer, the cancel map
 * and the stats. Every client, server and pool belongs to one worker and keeps one back pointer
 * to it; process state is reached through worker->proc. Owns start-up of the pieces and
 * shutdown; knows nothing of the protocol. (docs/architecture.md 5.1: today one worker runs on
 * the process's loop.) */
#ifndef SLUICE_SLUICE_H
#define SLUICE_SLUICE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "budget.h"
#include "config.h"
#include "disabled_dbs.h"
#include "ledger.h"
#include "list.h"
#include "login_notice.h"
#include "mailbox.h"
#include "reload_reader.h"

enum sluice_phase {
    PHASE_RUNNING,
    /* SHUTDOWN WAIT_FOR_CLIENTS (PgBouncer's rolling restart): no new connections; the clients
     * connected go on as before; exit once the last one has left. */
    PHASE_SHUTDOWN_WAIT_FOR_CLIENTS,
    PHASE_SHUTDOWN_GRACEFUL, /* SIGINT: no new clients; transactions finish; then exit */
    PHASE_SHUTDOWN_NOW, /* SIGTERM, a second SIGINT or shutdown_timeout passed: close everything */
};

/* Whose files the reader (proc->reload) reads now. */
enum sluice_read {
    SLUICE_READ_NONE,
    SLUICE_READ_RELOAD, /* a reload's: answers the reloads up to proc->reload_reading */
    SLUICE_READ_SET,    /* the first of proc->sets: a console SET's */
};

/* What sluice_set did with a SET. */
enum sluice_set_result {
    /* sluice is shutting down now, or has closed its configuration reader: no configuration is
     * read or put in force any more; nothing changed (57P01, as Postgres's admin_shutdown) */
    SLUICE_SET_SHUTTING_DOWN = -3,
    /* its files cannot be read now: SET_READS_ABANDONED_MAX cancelled SETs' reads still hold
     * a thread each (a FIFO nobody writes); err says so, nothing changed (54000) */
    SLUICE_SET_TOO_MANY_STUCK = -2,
    SLUICE_SET_REFUSED = -1, /* the value cannot be (err says why): nothing changed */
    SLUICE_SET_APPLIED = 0,  /* its generation is the process's now (sluice_reload_done) */
    SLUICE_SET_PENDING = 1,  /* its turn, or its files' read, comes later: set_ended says */
};

struct listener;
struct cancel_map;
struct console_ops;
struct http_server;
struct stats;
struct tally;

struct process;
struct worker;

/* A service on the loop beside the core (the admin console, the HTTP endpoint): the core never
 * calls it by name, only through these hooks, which main.c hands to sluice_start. Every hook may
 * be NULL. */
struct sluice_service {
    const char *name;
    /* After the listener, auth and TLS are up, before the forced pools exist. 0, or a negative
     * UV_E* that stops start-up (the service logs why; its stop and free still run, so it may
     * leave half-made state for them). */
    int (*start)(struct process *proc);
    /* Every maintenance pass (100 ms), after the core's timeouts and stats. */
    void (*tick)(struct process *proc, uint64_t now_ms);
    /* A graceful or immediate shutdown begins: stop taking new work. */
    void (*stop)(struct process *proc);
    /* The loop has ended: free what is left (every service whose start was called). */
    void (*free)(struct process *proc);
    /* A reload's read ended: every reload asked for up to asked_upto (sluice_reload's numbers)
     * is answered by it; applied when its config is now the process's (the workers swap to it
     * next: sluice_reload_done), false when it had errors (logged) and the old one stays. */
    void (*reload_ended)(struct process *proc, unsigned asked_upto, bool applied);
    /* A console SET that sluice_set answered SLUICE_SET_PENDING ended (never from inside
     * sluice_set or sluice_reload; from sluice_set_cancel for the SETs after the cancelled one):
     * how SLUICE_SET_APPLIED, error NULL, when its generation is now the process's (the workers
     * swap to it next: sluice_reload_done), else SLUICE_SET_REFUSED or
     * SLUICE_SET_TOO_MANY_STUCK and why nothing changed (the file it names and what is wrong
     * with it). Not called for a cancelled one. */
    void (*set_ended)(struct process *proc, unsigned set_id, enum sluice_set_result how,
                      const char *error);
};

/* What one event loop serves. Only its own thread touches it (today: the process's thread). */
/* Where a worker's loop runs (worker.c). */
enum worker_run {
    WORKER_ON_PROCESS_LOOP, /* worker 0: the process's loop, in main's thread */
    WORKER_THREAD_READY,    /* own loop and handles made; its thread not started */
    WORKER_THREAD_RUNNING,  /* its thread runs own_loop until its handles are closed */
    WORKER_THREAD_JOINED,   /* its thread has returned: its objects may be freed */
};

struct worker {
    uv_loop_t *loop;
    struct process *proc;
    /* The config this worker runs under: the process's current one, which owns it; swapped on
     * reload between callbacks. */
    struct config *cfg;
    /* The budget generation it applied with that config (budget.h): its own reference. */
    struct budget_set *budgets;
    unsigned index; /* 0..nworkers-1: the owner bits of its cancel pids */

    struct list pools;
    struct list login_clients;   /* STARTUP and AUTH (client_login_timeout) */
    struct list closing_clients; /* CLOSING: flushing a last error */
    /* Atomics: the acceptor and the shutdown's checks on the control thread read them. */
    atomic_int nclients; /* every client socket, in any state */
    atomic_int nservers; /* every struct server alive, in any state (the caps count in the
                          * ledger: pools' and auth_query's backends) */
    atomic_int arriving; /* of nservers: moved here by a handover, still in the mailbox (their
                          * slots in the ledger's transit share); changed under the ledger's
                          * lock on the sender's side, so an audit sees both in step */
    atomic_int handed;   /* sockets the acceptor posted to this worker, not yet its clients */
    /* Acknowledgements the control thread reads (5.7): the last reload this worker applied
     * (proc->reload_seq), and the last PAUSE after which its paused pools had no server in use
     * (proc->pause_seq; pause_wanted is the last it was told of, its own thread's). */
    atomic_uint reload_applied;
    atomic_uint pause_idle;
    unsigned pause_wanted;
    unsigned controls_applied; /* PAUSE/RESUME/RECONNECT/KILL messages applied, its own thread's */
    uint64_t next_id;

    /* Closed objects wait here until the end of the loop iteration, so code that closed one
     * can still look at its state on the way out (see on_reaper_check). */
    struct list dead_clients, dead_servers;
    uv_check_t reaper;

    const struct pool_events *pool_events; /* what the pools report, to the link (link.c) */
    const struct server_events *server_events; /* what servers report, to the link (link.c) */
    const struct client_events *client_events; /* what clients report, to the link (link.c) */
    const struct relay_events *relay_events;   /* what the relay reports mid-pump (link.c) */
    const struct cancel_events *cancel_events; /* what cancels ask of clients, servers (link.c) */
    /* What its mailbox's messages ask of the core (worker.h; sluice_worker_handlers). */
    const struct worker_handlers *handlers;
    /* A budget lease ended: waiters of other pools may now be served (done in on_reaper_check). */
    bool dispatch_needed;

    struct cancel_map *cancel_map;
    struct stats *stats; /* snapshots for SHOW STATS averages (stats.c) */
    /* Its pools as the control thread may read them (tally.h); NULL with one worker. */
    struct tally *tally;
    /* Where Postgres raises the login NOTICEs clients are due, as this worker's backends told
     * it (login_notice.h). */
    struct login_notice_source login_notice_src;
    uv_timer_t maint_timer;
    uint64_t last_stats_ms;

    /* Its thread (worker.c): worker 0 runs on the process's loop, 1..N-1 each on own_loop in
     * a thread of their own; messages from other threads come through mailbox. */
    enum worker_run run;
    struct mailbox mailbox;
    uv_loop_t own_loop;
    uv_thread_t thread;
};

#define SLUICE_MAX_WORKERS CONFIG_THREADS_MAX /* the workers key's range */

/* What there is one of per process. */
#define SLUICE_SIGNALS 6

struct process {
    uv_loop_t *loop;    /* signals, the listener and the services run here */
    struct config *cfg; /* owned; swapped whole on reload */
    /* Read by every worker (sluice_serving), set by the control thread. */
    _Atomic(enum sluice_phase) phase;
    uint64_t shutdown_deadline_ms;

    struct ledger ledger; /* the counts every cap compares against (ledger.h) */
    unsigned reload_seq;  /* reloads applied by the control thread (the workers ack each) */
    unsigned pause_seq;   /* PAUSEs sent to the workers (each reports its pools idle) */
    struct budget_set *budgets;     /* the newest generation (budget.h), under the ledger's lock */
    struct budget *budgets_known;   /* every budget identity (budget.c), under the ledger's lock */
    /* RELOAD, SIGHUP and the console's SET of a key that names files: their files are read off
     * the loop, one read at a time, in the order asked (sluice_reload, sluice_set): reading
     * says whose read is in flight; reload_asked counts the reloads asked for, reload_reading
     * is the last reload the read in flight (or the last one) answers; sets holds the SETs not
     * yet answered, in the order asked (struct pending_set, sluice.c: the first is the one
     * reading when reading is SLUICE_READ_SET), sets_asked numbers them. */
    struct reload_reader reload;
    enum sluice_read reading;
    unsigned reload_asked;
    unsigned reload_reading;
    struct list sets;
    unsigned sets_asked;
    /* PAUSE/RESUME/RECONNECT/KILL sent to every worker (WAIT_CLOSE compares its frames'). */
    unsigned controls_sent;
    /* The console's asks to every worker to publish its frame now (view_publish_now). */
    unsigned publish_asks;
    /* Clients logging in (STARTUP, TLS_HANDSHAKE, AUTH) on every worker: max_client_logins is
     * one cap for the process (client.c), each worker evicting its own oldest stalled login. */
    atomic_int logins;

    struct listener *listener;
    const struct sluice_service *const *services; /* NULL-terminated, from sluice_start */
    int services_started;
    const struct console_ops *console; /* registered by the console service (console.h) */
    struct http_server *http; /* /health and /metrics (http.c); NULL when http_listen_port = 0 */
    struct list admin_waits;  /* console commands answered later (admin.c) */
    struct disabled_dbs disabled_dbs; /* DISABLE db: names whose new logins are refused */
    /* SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2 (sluice.c's handled_signals) */
    uv_signal_t signals[SLUICE_SIGNALS];

    struct worker workers[SLUICE_MAX_WORKERS];
    int nworkers;

    int exit_code;
};

/* The core's answers to a worker's messages (worker.h), which sluice_start installs in every
 * worker: a unit test that makes its workers by hand installs them too. */
extern const struct worker_handlers sluice_worker_handlers;

/* Set up the pieces from a loaded config (takes ownership of cfg), then start the services
 * (a NULL-terminated list, or NULL for none). 0 or negative UV_E*. */
int sluice_start(struct process *proc, uv_loop_t *loop, struct config *cfg,
                 const struct sluice_service *const *services) __attribute__((warn_unused_result));
/* Ask for a reload: re-read the config file and environment, and keep the old config when the
 * new one is invalid, or names a client certificate or auth_hba_file/auth_ident_file that cannot
 * be used. The files are read on a thread of their own (reload_reader.h), so this returns at
 * once; the finished config is applied on the loop later, and the services hear of it
 * (reload_ended). A reload asked for while one reads waits for it, then one more read answers
 * every reload asked for meanwhile; one asked for while a console SET waits or reads comes
 * after it (sluice_set). Never calls reload_ended itself. Returns the reload's number for
 * reload_ended. */
unsigned sluice_reload(struct process *proc);
/* Is a read in flight (a reload's or a SET's), or a reload asked for not yet begun? */
bool sluice_reload_reading(const struct process *proc);
/* The console's SET key = value (key as config_keys spells it, a reloadable one): never in
 * place, since every worker reads its own generation (5.7): a copy of the running config with
 * the key changed, checked with the other keys, becomes the next generation as a reload's does
 * (budgets synced, every worker told to swap to it, sluice_reload_done says when all have).
 * A key whose change puts files in force (client_tls_*: the TLS context, certificate, key and
 * CA; auth_*: auth_hba_file, auth_ident_file; logfile, log_level, log_format: the logfile) has
 * them read off the loop by the reader a reload uses, each once, and put in force as read: a
 * file that blocks (a FIFO nobody writes, a hung mount) holds only the reading thread, and one
 * that can be read once (a sidecar's FIFO) is not opened again to apply it.
 * Order: reads go one at a time, reloads and SETs in the order asked. A SET asked while a
 * reload reads, or is asked for, waits for it and applies to the config it left; a reload asked
 * while a SET waits or reads comes after that SET (and may undo it, as a reload re-reads the
 * file). SLUICE_SET_APPLIED: no file to read and nothing before it; SLUICE_SET_PENDING, *id
 * set: set_ended tells later; SLUICE_SET_REFUSED: the value cannot be (checked at once against
 * the running config, and again at its turn); err says why; SLUICE_SET_SHUTTING_DOWN: a
 * shutdown now is under way (the reader's reads are over, as sluice_reload's), err says so;
 * SLUICE_SET_TOO_MANY_STUCK: a key that names files while too many abandoned reads still hold
 * their threads (checked now and again at its turn). */
enum sluice_set_result sluice_set(struct process *proc, const char *key, const char *value,
                                  unsigned *id, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* The console's SET id was cancelled before it ended: it never applies. Waiting for its turn,
 * it leaves the queue; reading, its read is abandoned (reload_reader_abandon: the thread may sit
 * in read() for ever) and the next read starts. No set_ended follows for it. */
void sluice_set_cancel(struct process *proc, unsigned id);
/* Has every worker applied the last reload (its own reference to the new config and budget
 * set)? The console's RELOAD answers then; the old config is freed at the last release. */
bool sluice_reload_done(const struct process *proc);
void sluice_shutdown(struct process *proc, enum sluice_phase phase);
/* Once the loop has ended: free what is left. */
void sluice_free(struct process *proc);

/* The worker whose loop is the process's: the console's and HTTP's commands act on it. */
static inline struct worker *sluice_control_worker(struct process *proc)
{
    return &proc->workers[0];
}

/* Client sockets open in every worker, and those on their way to one (max_client_conn). */
static inline int sluice_nclients(const struct process *proc)
{
    int n = 0;
    for (int i = 0; i < proc->nworkers; i++) {
        n += atomic_load_explicit(&proc->workers[i].nclients, memory_order_relaxed) +
             atomic_load_explicit(&proc->workers[i].handed, memory_order_relaxed);
    }
    return n;
}

/* Do the pools still serve their clients as usual (running, or waiting for clients to leave)? */
static inline bool sluice_serving(const struct worker *worker)
{
    return worker->proc->phase <= PHASE_SHUTDOWN_WAIT_FOR_CLIENTS;
}

/* The budgets of the worker's generation: 1 when only "default" (no lease order to keep). */
static inline int budget_count(const struct worker *worker)
{
    return worker->budgets ? worker->budgets->n : 0;
}

static inline uint64_t sluice_now(const struct worker *worker)
{
    return uv_now(worker->loop);
}

#endif
