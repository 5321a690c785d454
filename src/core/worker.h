/* worker: a worker's loop, its thread and its mailbox, and the messages other threads send it
 * (docs/architecture.md 5.1, 5.7). Worker 0 runs on the process's loop in main's thread, so
 * workers = 1 keeps the single-loop path: nothing here is posted then, every step runs inline.
 * Workers 1..N-1 each run their own loop in a thread of their own; the control thread (the
 * process's loop) reaches them only through worker_post_*, never through their lists.
 * Ownership: a posted socket, config reference or request is the receiver's once posted.
 * This file sits below the pool, the clients and the servers: it carries messages and never
 * calls the code that acts on them; a message's work is done through the worker's
 * worker_handlers, which sluice.c installs (as it installs pool_events). */
#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <openssl/ssl.h>
#include <stdint.h>
#include <sys/socket.h>

#include "control.h"
#include "sluice.h"

struct cancel_job;
struct client;
struct ledger_key;
struct server;
struct worker_msg;

/* What a message asks of the layers above, on the receiving worker's thread (or inline, for
 * a worker on the process's loop). Every entry is set: sluice.c's sluice_worker_handlers
 * names the functions that do the work; unit tests may install their own. */
struct worker_handlers {
    /* fd becomes a client of worker (client_accept); NULL when it could not (fd closed). */
    struct client *(*accept)(struct worker *worker, int fd, const struct sockaddr_storage *addr);
    /* A client accepted from a message: read its first packet (client_read_first). */
    void (*read_first)(struct client *c);
    /* A console login moved here (worker_hand_console), accepted again as c: it goes on from
     * its StartupMessage with the socket's TLS session (NULL: plain) and these bytes
     * (client_resume_console_login). */
    void (*resume_console_login)(struct client *c, SSL *ssl, uint64_t connect_ms,
                                 const uint8_t *bytes, size_t nbytes);
    /* The process entered phase: close what it asks of this worker's connections. */
    void (*shutdown)(struct worker *worker, enum sluice_phase phase);
    /* worker->cfg is the reloaded config: its pools follow it. */
    void (*apply_config)(struct worker *worker);
    /* A slot may be free: every pool serves its waiters again (pool_dispatch_all). */
    void (*dispatch)(struct worker *worker);
    /* Another worker woke this one (WORKER_MSG_WAKE): a slot or an auth_query connection may
     * be free; pools and held lookups try again. */
    void (*wake)(struct worker *worker);
    /* worker_post_control's op for the worker's pools of db (control_apply). */
    void (*control)(struct worker *worker, enum control_op op, const char *db, unsigned seq);
    /* KILL_CLIENT of its client with this id, if still there (control_kill_client_here). */
    bool (*kill_client)(struct worker *worker, uint64_t client_id);
    /* A CancelRequest for a pid the worker owns (cancel_remote_request). */
    void (*cancel)(struct worker *worker, uint32_t pid, uint32_t key, struct worker *reply_to,
                   struct worker_msg *answer);
    /* The owner's answer, on the requester's thread (cancel_remote_done). */
    void (*cancel_done)(struct cancel_job *ticket);
    /* Another worker's waiters need servers: offer idle ones (handover_scan). */
    void (*need)(struct worker *worker);
    /* An idle server moved here (handover_receive; delivered false: the mailbox closed). */
    void (*server_arrived)(struct worker *worker, struct server *s, struct ledger_key *key,
                           bool delivered);
};

/* Workers 1..N-1, on the control thread before anything can post to it: initialise own_loop
 * and its mailbox there (the worker's handles are then made on own_loop by the caller);
 * WORKER_THREAD_READY. 0 or a negative UV_E*. Worker 0: its mailbox on the process's loop,
 * unreferenced (the loop ends without it). */
int worker_loop_init(struct worker *worker, uv_loop_t *process_loop);
/* READY -> RUNNING: the thread runs own_loop until worker_post_finish's message closed its
 * handles. 0 or a negative UV_E* (the worker stays READY). */
int worker_thread_start(struct worker *worker);
/* After the process's loop ended: wait for the thread (RUNNING) or close the handles of a
 * worker that never ran (READY); own_loop is closed, JOINED. Worker 0: nothing. */
void worker_thread_join(struct worker *worker);

/* The acceptor (control thread): fd becomes a client of worker, on worker's thread (counted in
 * worker->handed until then). A worker on the process's loop takes it inline: the client, to
 * have its first packet read (listener_ops.read_first); else NULL (posted, or closed when the
 * worker no longer takes messages). */
struct client *worker_hand_client(struct worker *worker, int fd,
                                  const struct sockaddr_storage *addr);

/* A console login on another worker's thread (5.6): fd, its TLS session (NULL: plain) and the
 * bytes read from its StartupMessage on, to worker (0), counted in worker->handed until it is
 * a client there; worker goes on with the login from those bytes. 0, or UV_ENOMEM /
 * UV_ECANCELED: nothing posted, the socket and ssl are still the caller's. */
int worker_hand_console(struct worker *worker, int fd, const struct sockaddr_storage *addr,
                        SSL *ssl, uint64_t connect_ms, const uint8_t *bytes, size_t nbytes)
    __attribute__((warn_unused_result));

/* The control thread tells a worker what the process did; inline for a worker on the
 * process's loop, else a message handled between that worker's callbacks. */
void worker_post_shutdown(struct worker *worker, enum sluice_phase phase);
/* cfg: the process's new config; the worker takes its own reference, and the process's budget
 * set's (budget_set_current), and acknowledges proc->reload_seq once applied (5.7). */
void worker_post_reload(struct worker *worker, struct config *cfg);
/* A console command for the worker's pools of db (NULL: all): control_apply on its thread.
 * seq: proc->pause_seq for a PAUSE (the worker reports its pools idle under it), else 0. */
void worker_post_control(struct worker *worker, enum control_op op, const char *db, unsigned seq);
/* A CancelRequest for a pid worker owns (cancel.c), its requester waiting on reply_to's
 * ticket. The answer that hands the ticket back is made with it (the handler's answer), so
 * nothing the owner does can fail to send it. 0, or UV_ECANCELED/UV_ENOMEM (nothing posted). */
int worker_post_cancel(struct worker *worker, uint32_t pid, uint32_t key, struct worker *reply_to,
                       struct cancel_job *ticket);
/* The owner's answer, made by worker_post_cancel, back to the requester's worker: sent exactly
 * once, on every path (it allocates nothing); no longer the caller's. */
void worker_post_cancel_done(struct worker *worker, struct worker_msg *answer);
/* A slot freed on from's thread: wake the worker the ledger's give named (ledger.h: its
 * waiters were held by a cap; LEDGER_NO_WORKER: none). from itself dispatches at the end of
 * this loop iteration; another worker gets a message and dispatches its pools. */
void worker_wake(struct worker *from, int to);
/* from's pool registered a new need in the ledger's wait list (5.4): every other worker is
 * told, and offers the idle servers it holds (handover_scan). */
void worker_post_need(struct worker *from);
/* An idle server (MOVING, its poll detached) to worker to, which re-homes it (handover.c).
 * 0, or UV_ENOMEM / UV_ECANCELED: nothing posted, s is still the caller's. */
int worker_post_server(struct worker *to, struct server *s, struct ledger_key *key)
    __attribute__((warn_unused_result));
/* A service's question to a worker (the console gathering rows, 5.6): call runs on worker's
 * thread between its callbacks, with delivered true; false when its mailbox closed first, and
 * then on the closing thread (arg is still to be answered or freed). 0, or UV_ENOMEM /
 * UV_ECANCELED (nothing posted: arg is still the caller's). */
typedef void worker_call_fn(struct worker *worker, void *arg, bool delivered);
int worker_post_call(struct worker *worker, worker_call_fn *call, void *arg)
    __attribute__((warn_unused_result));
/* A call's message made ahead, for an answer that must not be lost to a failed allocation when
 * it is sent (the console's rows, 5.6): NULL when out of memory. It is the maker's until posted
 * with worker_post_made_call, or freed unposted with worker_free_made_call. */
struct worker_msg *worker_make_call(worker_call_fn *call, void *arg)
    __attribute__((warn_unused_result));
/* Posts a made call: it runs as worker_post_call's would. The message is no longer the caller's,
 * either way. 0, or UV_ECANCELED (nothing posted: arg is still the caller's). */
int worker_post_made_call(struct worker *worker, struct worker_msg *m)
    __attribute__((warn_unused_result));
void worker_free_made_call(struct worker_msg *m);
/* KILL_CLIENT of a client of worker's (its id's top byte): closed on its own thread with
 * FATAL "connection closed by the administrator", if it is still there. */
void worker_post_kill_client(struct worker *worker, uint64_t client_id);
/* Everything is closed: close the worker's handles (its maintenance timer, reaper, mailbox),
 * which ends its loop. */
void worker_post_finish(struct worker *worker);

#endif
