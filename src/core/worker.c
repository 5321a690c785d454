/* worker: each worker's loop, thread and mailbox, and the messages the control thread sends
 * them (see worker.h). A message is handled between the receiving worker's callbacks, so it
 * sees its lists as any callback of that loop does; what it asks of the core goes through
 * worker->handlers, so this file calls nothing above it. */
#include "worker.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "budget.h"
#include "buf.h"
#include "log.h"
#include "secret.h"
#include "sockio.h"

enum worker_msg_kind {
    WORKER_MSG_ACCEPT,      /* fd, addr: a new client */
    WORKER_MSG_SHUTDOWN,    /* phase: the process entered it */
    WORKER_MSG_RELOAD,      /* cfg, budgets: references to the process's new generations */
    WORKER_MSG_FINISH,      /* everything is closed: close the handles, end the loop */
    WORKER_MSG_CANCEL,      /* pid, key, reply_to, answer: a CancelRequest this worker owns */
    WORKER_MSG_CANCEL_DONE, /* ticket: the owner's answer, to the requester's worker */
    WORKER_MSG_WAKE,        /* a slot this worker waited for was freed on another */
    WORKER_MSG_KILL_CLIENT, /* id: the console's KILL_CLIENT of a client this worker owns */
    WORKER_MSG_CALL,        /* call, arg: a service's question, run on this worker's thread */
    WORKER_MSG_CONTROL,     /* op, db, seq: a console command for its pools (control.h) */
    WORKER_MSG_CONSOLE,     /* fd, addr, ssl, bytes: a console login moved to worker 0 (5.6) */
    WORKER_MSG_NEED,        /* another worker's waiters need servers: offer idle ones (5.4) */
    WORKER_MSG_SERVER,      /* server, ledger_key: an idle server moved here (5.4) */
};

struct worker_msg {
    struct list_node node;
    enum worker_msg_kind kind;
    int fd;
    struct sockaddr_storage addr;
    enum sluice_phase phase;
    struct config *cfg;
    struct budget_set *budgets;
    unsigned seq; /* RELOAD: proc->reload_seq; CONTROL: proc->pause_seq for a PAUSE */
    enum control_op op;
    char *db; /* CONTROL: the database, NULL for all */
    uint32_t pid, key;
    uint64_t client_id;
    worker_call_fn *call;
    void *arg;
    /* CANCEL: the requester's worker and the CANCEL_DONE made for it; CANCEL_DONE: the ticket */
    struct worker *reply_to;
    struct cancel_job *ticket;
    struct worker_msg *answer;
    struct server *server;         /* SERVER: MOVING, the receiver's once posted */
    struct ledger_key *ledger_key; /* SERVER: its key */
    SSL *ssl;            /* CONSOLE: the client's TLS session, NULL when plain */
    uint64_t connect_ms; /* CONSOLE: when the client connected */
    size_t nbytes;       /* CONSOLE: the startup packet and what followed it, in bytes[] */
    uint8_t bytes[];
};

static void worker_close_handles(struct worker *worker)
{
    uv_timer_stop(&worker->maint_timer);
    uv_close((uv_handle_t *)&worker->maint_timer, NULL);
    uv_close((uv_handle_t *)&worker->reaper, NULL);
    mailbox_close(&worker->mailbox, NULL);
}

/* What the process's shutdown asks of one worker (sluice_shutdown does the process's part). */
static void begin_shutdown(struct worker *worker, enum sluice_phase phase)
{
    uv_ref((uv_handle_t *)&worker->maint_timer);
    /* auth_query's lookups and connections are each thread's own (secret.h); the control
     * thread ends its own in sluice_shutdown */
    if (worker->run != WORKER_ON_PROCESS_LOOP && phase >= PHASE_SHUTDOWN_GRACEFUL)
        secret_shutdown();
    worker->handlers->shutdown(worker, phase);
}

static void apply_reload(struct worker *worker, struct config *cfg, struct budget_set *budgets)
{
    struct config *old = worker->cfg;
    worker->cfg = cfg;
    budget_set_swap(&worker->budgets, budgets);
    secret_reload(); /* this thread's auth_query answers and connections (auth_reload_read's part) */
    worker->handlers->apply_config(worker);
    worker->handlers->dispatch(worker);
    config_release(old);
}

/* A console login another worker moved here: it goes on as if this worker had accepted the
 * socket, from its StartupMessage (parsed again there, so c->admin is set on this thread). */
static void take_console(struct worker *worker, struct worker_msg *m, bool delivered)
{
    const struct worker_handlers *h = worker->handlers;
    struct client *c = delivered ? h->accept(worker, m->fd, &m->addr) : NULL;
    atomic_fetch_sub_explicit(&worker->handed, 1, memory_order_relaxed);
    if (!c) {
        SSL_free(m->ssl); /* accept closed the fd; not delivered: closed here */
        if (!delivered)
            close(m->fd);
        return;
    }
    h->resume_console_login(c, m->ssl, m->connect_ms, m->bytes, m->nbytes);
}

static void on_message(struct mailbox *mb, struct list_node *node, enum mailbox_delivery how)
{
    struct worker *worker = mb->data;
    const struct worker_handlers *h = worker->handlers;
    struct worker_msg *m = container_of(node, struct worker_msg, node);
    bool delivered = how == MAILBOX_DELIVERED;
    switch (m->kind) {
    case WORKER_MSG_ACCEPT: {
        struct client *c = delivered ? h->accept(worker, m->fd, &m->addr) : NULL;
        if (!delivered)
            close(m->fd);
        atomic_fetch_sub_explicit(&worker->handed, 1, memory_order_relaxed);
        if (c)
            h->read_first(c);
        break;
    }
    case WORKER_MSG_SHUTDOWN:
        if (delivered)
            begin_shutdown(worker, m->phase);
        break;
    case WORKER_MSG_RELOAD:
        if (delivered) {
            apply_reload(worker, m->cfg, m->budgets);
        } else {
            config_release(m->cfg);
            budget_set_release(m->budgets);
        }
        /* acknowledged (5.7) even when dropped at the end: nothing is left to apply it to */
        atomic_store_explicit(&worker->reload_applied, m->seq, memory_order_release);
        break;
    case WORKER_MSG_FINISH:
        if (delivered)
            worker_close_handles(worker);
        break;
    case WORKER_MSG_CANCEL:
        if (delivered)
            h->cancel(worker, m->pid, m->key, m->reply_to, m->answer);
        else
            worker_post_cancel_done(m->reply_to, m->answer);
        break;
    case WORKER_MSG_WAKE:
        if (delivered && sluice_serving(worker))
            h->wake(worker); /* a pool still held registers again; an auth_query connection freed */
        break;
    case WORKER_MSG_KILL_CLIENT:
        if (delivered)
            h->kill_client(worker, m->client_id);
        break;
    case WORKER_MSG_CALL:
        m->call(worker, m->arg, delivered);
        break;
    case WORKER_MSG_CONTROL:
        if (delivered)
            h->control(worker, m->op, m->db, m->seq);
        else if (m->seq)
            atomic_store_explicit(&worker->pause_idle, m->seq, memory_order_release);
        free(m->db);
        break;
    case WORKER_MSG_CONSOLE:
        take_console(worker, m, delivered);
        break;
    case WORKER_MSG_NEED:
        if (delivered && sluice_serving(worker))
            h->need(worker);
        break;
    case WORKER_MSG_SERVER:
        h->server_arrived(worker, m->server, m->ledger_key, delivered);
        break;
    case WORKER_MSG_CANCEL_DONE:
        /* dropped too: the mailbox closes on this, the ticket's, thread */
        h->cancel_done(m->ticket);
        break;
    }
    free(m);
}

/* Post m to a worker's thread; false (m still the caller's) when its mailbox is closed. */
static bool post(struct worker *worker, struct worker_msg *m)
{
    if (mailbox_post(&worker->mailbox, &m->node) == 0)
        return true;
    log_msg(LOG_WARNING, "worker %u no longer takes messages", worker->index);
    return false;
}

static struct worker_msg *msg_new(enum worker_msg_kind kind)
{
    struct worker_msg *m = calloc(1, sizeof(*m));
    if (m)
        m->kind = kind;
    else
        log_msg(LOG_ERROR, "out of memory for a message to a worker");
    return m;
}

int worker_loop_init(struct worker *worker, uv_loop_t *process_loop)
{
    if (worker->index == 0) {
        worker->run = WORKER_ON_PROCESS_LOOP;
        worker->loop = process_loop;
        int rc = mailbox_init(&worker->mailbox, process_loop, on_message, worker);
        if (rc == 0)
            uv_unref((uv_handle_t *)&worker->mailbox.async);
        return rc;
    }
    int rc = uv_loop_init(&worker->own_loop);
    if (rc < 0)
        return rc;
    worker->loop = &worker->own_loop;
    worker->run = WORKER_THREAD_READY;
    return mailbox_init(&worker->mailbox, &worker->own_loop, on_message, worker);
}

static void thread_main(void *arg)
{
    struct worker *worker = arg;
    uv_run(&worker->own_loop, UV_RUN_DEFAULT);
    /* What this thread keeps of its own (sockio.c's spare polls, auth_query's connections,
     * SCRAM's OpenSSL contexts) goes, then the loop runs once more for their close callbacks. */
    sockio_release_spares();
    auth_free_thread();
    uv_run(&worker->own_loop, UV_RUN_DEFAULT);
    buf_free_cache();
}

int worker_thread_start(struct worker *worker)
{
    if (worker->run != WORKER_THREAD_READY)
        return UV_EINVAL;
    int rc = uv_thread_create(&worker->thread, thread_main, worker);
    if (rc == 0)
        worker->run = WORKER_THREAD_RUNNING;
    return rc;
}

void worker_thread_join(struct worker *worker)
{
    switch (worker->run) {
    case WORKER_ON_PROCESS_LOOP:
    case WORKER_THREAD_JOINED:
        return;
    case WORKER_THREAD_READY: /* never ran: its handles are closed here, on this thread */
        worker_close_handles(worker);
        uv_run(&worker->own_loop, UV_RUN_DEFAULT);
        break;
    case WORKER_THREAD_RUNNING:
        uv_thread_join(&worker->thread);
        break;
    }
    int rc = uv_loop_close(&worker->own_loop);
    if (rc != 0)
        log_msg(LOG_ERROR, "worker %u: loop not empty at exit: %s", worker->index, uv_strerror(rc));
    worker->run = WORKER_THREAD_JOINED;
}

struct client *worker_hand_client(struct worker *worker, int fd,
                                  const struct sockaddr_storage *addr)
{
    if (worker->run == WORKER_ON_PROCESS_LOOP)
        return worker->handlers->accept(worker, fd, addr);
    struct worker_msg *m = msg_new(WORKER_MSG_ACCEPT);
    if (!m) {
        close(fd);
        return NULL;
    }
    m->fd = fd;
    memcpy(&m->addr, addr, sizeof(m->addr));
    atomic_fetch_add_explicit(&worker->handed, 1, memory_order_relaxed);
    if (!post(worker, m)) {
        atomic_fetch_sub_explicit(&worker->handed, 1, memory_order_relaxed);
        close(fd);
        free(m);
    }
    return NULL;
}

int worker_hand_console(struct worker *worker, int fd, const struct sockaddr_storage *addr,
                        SSL *ssl, uint64_t connect_ms, const uint8_t *bytes, size_t nbytes)
{
    struct worker_msg *m = calloc(1, sizeof(*m) + nbytes);
    if (!m)
        return UV_ENOMEM;
    m->kind = WORKER_MSG_CONSOLE;
    m->fd = fd;
    memcpy(&m->addr, addr, sizeof(m->addr));
    m->ssl = ssl;
    m->connect_ms = connect_ms;
    m->nbytes = nbytes;
    memcpy(m->bytes, bytes, nbytes);
    /* counted before the sender forgets its client: max_client_conn never sees it missing */
    atomic_fetch_add_explicit(&worker->handed, 1, memory_order_relaxed);
    if (!post(worker, m)) {
        atomic_fetch_sub_explicit(&worker->handed, 1, memory_order_relaxed);
        free(m);
        return UV_ECANCELED;
    }
    return 0;
}

void worker_post_shutdown(struct worker *worker, enum sluice_phase phase)
{
    if (worker->run == WORKER_ON_PROCESS_LOOP) {
        begin_shutdown(worker, phase);
        return;
    }
    struct worker_msg *m = msg_new(WORKER_MSG_SHUTDOWN);
    if (!m)
        return;
    m->phase = phase;
    if (!post(worker, m))
        free(m);
}

void worker_post_reload(struct worker *worker, struct config *cfg)
{
    unsigned seq = worker->proc->reload_seq;
    if (worker->run == WORKER_ON_PROCESS_LOOP) {
        /* worker 0 shares the process's reference: sluice_reload swapped it already */
        worker->handlers->apply_config(worker);
        atomic_store_explicit(&worker->reload_applied, seq, memory_order_release);
        return;
    }
    struct worker_msg *m = msg_new(WORKER_MSG_RELOAD);
    if (!m) {
        /* never applied; acknowledged so that RELOAD does not wait forever (logged) */
        atomic_store_explicit(&worker->reload_applied, seq, memory_order_release);
        return;
    }
    m->seq = seq;
    m->cfg = config_acquire(cfg);
    m->budgets = budget_set_current(worker->proc);
    if (!post(worker, m)) {
        config_release(m->cfg);
        budget_set_release(m->budgets);
        free(m);
        atomic_store_explicit(&worker->reload_applied, seq, memory_order_release);
    }
}

void worker_post_control(struct worker *worker, enum control_op op, const char *db, unsigned seq)
{
    if (worker->run == WORKER_ON_PROCESS_LOOP) {
        worker->handlers->control(worker, op, db, seq);
        return;
    }
    struct worker_msg *m = msg_new(WORKER_MSG_CONTROL);
    if (m) {
        m->op = op;
        m->seq = seq;
        m->db = db ? strdup(db) : NULL;
    }
    if (!m || (db && !m->db) || !post(worker, m)) {
        if (m)
            free(m->db);
        free(m);
        /* its pools were not told; a PAUSE does not wait for them (the ledger's paused state
         * still holds their servers back) */
        if (seq)
            atomic_store_explicit(&worker->pause_idle, seq, memory_order_release);
    }
}

int worker_post_cancel(struct worker *worker, uint32_t pid, uint32_t key, struct worker *reply_to,
                       struct cancel_job *ticket)
{
    /* The answer is made here, on the requester's thread, with the question: made on the
     * owner's when the cancel is done, a failed allocation there lost it, and the requester
     * waited in CANCEL_WAIT until its client gave up. Out of memory now, nothing is posted and
     * the requester is answered at once (cancel.c). */
    struct worker_msg *m = msg_new(WORKER_MSG_CANCEL);
    struct worker_msg *answer = msg_new(WORKER_MSG_CANCEL_DONE);
    if (!m || !answer) {
        free(m);
        free(answer);
        return UV_ENOMEM;
    }
    answer->ticket = ticket;
    m->pid = pid;
    m->key = key;
    m->reply_to = reply_to;
    m->answer = answer;
    if (!post(worker, m)) {
        free(answer);
        free(m);
        return UV_ECANCELED;
    }
    return 0;
}

void worker_post_cancel_done(struct worker *worker, struct worker_msg *answer)
{
    if (!post(worker, answer)) {
        /* The requester's worker has closed its mailbox: its clients are gone (each forgot the
         * ticket, cancel_requester_gone) and its thread reads no message again, so nobody else
         * will free the ticket (an answer still queued at the close is freed there, on_message).
         * The mailbox's lock orders that thread's last touch of it before this free. */
        free(answer->ticket);
        free(answer);
    }
}

void worker_wake(struct worker *from, int to)
{
    if (to == LEDGER_NO_WORKER)
        return;
    if (to == (int)from->index) {
        from->dispatch_needed = true;
        return;
    }
    if (to < 0 || to >= from->proc->nworkers)
        return;
    struct worker_msg *m = msg_new(WORKER_MSG_WAKE);
    if (m && !post(&from->proc->workers[to], m))
        free(m);
}

void worker_post_need(struct worker *from)
{
    for (int i = 0; i < from->proc->nworkers; i++) {
        struct worker *to = &from->proc->workers[i];
        if (to == from)
            continue;
        struct worker_msg *m = msg_new(WORKER_MSG_NEED);
        if (m && !post(to, m))
            free(m);
    }
}

int worker_post_server(struct worker *to, struct server *s, struct ledger_key *key)
{
    struct worker_msg *m = msg_new(WORKER_MSG_SERVER);
    if (!m)
        return UV_ENOMEM;
    m->server = s;
    m->ledger_key = key;
    if (!post(to, m)) {
        free(m);
        return UV_ECANCELED;
    }
    return 0;
}

void worker_post_kill_client(struct worker *worker, uint64_t client_id)
{
    struct worker_msg *m = msg_new(WORKER_MSG_KILL_CLIENT);
    if (!m)
        return;
    m->client_id = client_id;
    if (!post(worker, m))
        free(m); /* its thread has closed its mailbox: its clients are gone */
}

struct worker_msg *worker_make_call(worker_call_fn *call, void *arg)
{
    struct worker_msg *m = msg_new(WORKER_MSG_CALL);
    if (m) {
        m->call = call;
        m->arg = arg;
    }
    return m;
}

int worker_post_made_call(struct worker *worker, struct worker_msg *m)
{
    if (!post(worker, m)) {
        free(m);
        return UV_ECANCELED;
    }
    return 0;
}

void worker_free_made_call(struct worker_msg *m)
{
    free(m);
}

int worker_post_call(struct worker *worker, worker_call_fn *call, void *arg)
{
    struct worker_msg *m = worker_make_call(call, arg);
    return m ? worker_post_made_call(worker, m) : UV_ENOMEM;
}

void worker_post_finish(struct worker *worker)
{
    if (worker->run != WORKER_THREAD_RUNNING) {
        if (worker->run == WORKER_ON_PROCESS_LOOP)
            worker_close_handles(worker);
        return; /* READY: worker_thread_join closes them */
    }
    struct worker_msg *m = msg_new(WORKER_MSG_FINISH);
    if (m && !post(worker, m))
        free(m);
}
