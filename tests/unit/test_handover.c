/* Unit test of the idle-server handover between workers (handover.c, ledger.c's claims,
 * docs/architecture.md 5.4). First the ledger's side alone: whom an idle server of a key goes
 * to (a waiter of its key: moved; of another key under a shared cap: closed for it), how many,
 * local first, paused keys and caps a close would not free. Then three workers (worker 0 on the
 * process's loop, 1 and 2 on threads): one idle server, its backend one end of a socketpair, is
 * asked for by worker 1 and 2 in turn and moves between their threads many times, its slot
 * counted once throughout; at the end the backend's end closes and the worker holding it then
 * sees it on its own loop and gives the slot back. Run under TSan too (scripts/test). */
#include "check.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "control.h"
#include "handover.h"
#include "ledger.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"
#include "sockio.h"
#include "worker.h"

static char *no_env[] = {NULL};

/* ---- the ledger's claims ---- */

static void an_idle_server_goes_to_the_oldest_waiter_it_serves(void)
{
    static struct ledger l; /* zeroed: ready */
    struct ledger_key *a1 = ledger_key_get(&l, "a", "u1"), *a2 = ledger_key_get(&l, "a", "u2");
    struct ledger_key *b1 = ledger_key_get(&l, "b", "u1");
    struct ledger_caps caps = {.pool = 5, .db = 2};
    CHECK_INT(ledger_take_server(&l, a1, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_take_server(&l, a1, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_take_server(&l, a2, 0, &caps), LIMIT_DB); /* database a is full */
    CHECK(!ledger_has_waiters(&l));

    /* worker 1 needs two servers of a1; worker 2 one of a2, under max_db_connections */
    CHECK_INT(ledger_wait_need(&l, a1, 1, LIMIT_POOL, 100, 2, &caps, 0), 1); /* new: tell others */
    CHECK_INT(ledger_wait_need(&l, a1, 1, LIMIT_POOL, 100, 2, &caps, 0), 0); /* updated */
    CHECK_INT(ledger_wait_need(&l, a2, 2, LIMIT_DB, 200, 1, &caps, 0), 1);
    CHECK(ledger_has_waiters(&l));

    /* worker 0's idle a1 servers: two move to worker 1, then worker 2's need is served by a
     * close (a1 and a2 share database a), then nobody */
    struct ledger_claim c = ledger_claim_idle(&l, a1, 0);
    CHECK_INT(c.kind, LEDGER_CLAIM_MOVE);
    CHECK_INT(c.worker, 1);
    CHECK(c.key == a1);
    CHECK_INT(ledger_claim_idle(&l, a1, 0).kind, LEDGER_CLAIM_MOVE);
    c = ledger_claim_idle(&l, a1, 0);
    CHECK_INT(c.kind, LEDGER_CLAIM_CLOSE);
    CHECK_INT(c.worker, 2);
    CHECK(c.key == a2);
    CHECK_INT(ledger_claim_idle(&l, a1, 0).kind, LEDGER_CLAIM_NONE); /* all on their way */
    /* a server of another database frees nothing for either */
    CHECK_INT(ledger_claim_idle(&l, b1, 0).kind, LEDGER_CLAIM_NONE);

    /* one move arrived; worker 1's entry may be answered once more */
    ledger_wait_arrived(&l, a1, 1);
    CHECK_INT(ledger_claim_idle(&l, a1, 3).kind, LEDGER_CLAIM_MOVE);
    /* worker 0 closed one of a1 for worker 2: the slot wakes worker 2, whose take fits now */
    CHECK_INT(ledger_give_server_for(&l, a1, 0, a2, 2), 2);
    CHECK_INT(ledger_take_server(&l, a2, 2, &caps), LIMIT_NONE);
    ledger_wait_done(&l, a2, 2);
    ledger_wait_done(&l, a1, 1);
    CHECK(!ledger_has_waiters(&l));
    ledger_free(&l);
}

static void local_waiters_first_and_paused_keys_and_full_caps_pass(void)
{
    static struct ledger l;
    struct ledger_key *a1 = ledger_key_get(&l, "a", "u1"), *a2 = ledger_key_get(&l, "a", "u2");
    struct ledger_key *c3 = ledger_key_get(&l, "c", "u3");
    struct ledger_caps caps = {.pool = 5, .db = 1};
    CHECK_INT(ledger_take_server(&l, a1, 0, &caps), LIMIT_NONE);
    /* worker 0's own waiter of a2 is older than worker 1's: worker 0's idle a1 server is its
     * own pool's to close for it (pool.c), not worker 1's */
    CHECK_INT(ledger_wait_need(&l, a2, 0, LIMIT_DB, 100, 1, &caps, 0), 1);
    CHECK_INT(ledger_wait_need(&l, a2, 1, LIMIT_DB, 200, 1, &caps, 0), 1);
    CHECK_INT(ledger_claim_idle(&l, a1, 0).kind, LEDGER_CLAIM_NONE);
    CHECK_INT(ledger_claim_idle(&l, a1, 2).kind, LEDGER_CLAIM_CLOSE); /* worker 2 holds one */
    ledger_wait_done(&l, a2, 0);
    ledger_wait_done(&l, a2, 1);

    /* a paused key's waiter is passed over */
    CHECK_INT(ledger_wait_need(&l, a1, 1, LIMIT_POOL, 300, 1, &caps, 0), 1);
    ledger_key_set_state(&l, a1, LEDGER_KEY_PAUSED);
    CHECK_INT(ledger_claim_idle(&l, a1, 0).kind, LEDGER_CLAIM_NONE);
    ledger_key_set_state(&l, a1, LEDGER_KEY_SERVING);
    CHECK_INT(ledger_claim_idle(&l, a1, 0).kind, LEDGER_CLAIM_MOVE);
    ledger_wait_done(&l, a1, 1);

    /* held by max_server_connections, but its user's cap is full too: closing a server of
     * another user frees nothing it could use */
    struct ledger_caps c3caps = {.pool = 5, .user = 1, .global = 2};
    CHECK_INT(ledger_take_server(&l, c3, 0, &c3caps), LIMIT_NONE);
    CHECK_INT(ledger_wait_need(&l, c3, 1, LIMIT_GLOBAL, 400, 1, &c3caps, 0), 1);
    CHECK_INT(ledger_claim_idle(&l, a1, 0).kind, LEDGER_CLAIM_NONE);
    ledger_wait_done(&l, c3, 1);
    CHECK(!ledger_has_waiters(&l));
    ledger_free(&l);
}

/* ledger_claim_older's worker for a server opened with no startup parameters of its own
 * (transaction mode): it moves there */
static int older_to(struct ledger *l, struct ledger_key *key, int self, uint64_t since_ms,
                    uint64_t slack_ms, uint64_t next_since_ms)
{
    struct ledger_claim c = ledger_claim_older(l, key, self, since_ms, slack_ms, next_since_ms, 0);
    CHECK(c.kind != LEDGER_CLAIM_CLOSE);
    return c.worker;
}

/* 5.3: a released server goes to another worker's waiter of its key only when that one waited
 * longer than the local waiter by more than the slack, and only once per server it needs */
static void a_released_server_goes_to_a_waiter_that_waited_longer_by_the_slack(void)
{
    static struct ledger l;
    struct ledger_key *a1 = ledger_key_get(&l, "a", "u1"), *a2 = ledger_key_get(&l, "a", "u2");
    struct ledger_caps caps = {.pool = 1};
    CHECK_INT(ledger_take_server(&l, a1, 0, &caps), LIMIT_NONE);
    /* another key held by its own pool_size: never (one held by a cap both share gets a close:
     * test_ledger.c) */
    CHECK_INT(ledger_wait_need(&l, a2, 1, LIMIT_POOL, 100, 1, &caps, 0), 1);
    CHECK_INT(older_to(&l, a1, 0, 1000, 5, 0), LEDGER_NO_WORKER);
    CHECK_INT(ledger_wait_need(&l, a1, 1, LIMIT_POOL, 300, 1, &caps, 0), 1);
    CHECK_INT(ledger_wait_need(&l, a1, 0, LIMIT_POOL, 200, 1, &caps, 0), 1); /* its own: never */
    CHECK_INT(older_to(&l, a1, 0, 305, 5, 0), LEDGER_NO_WORKER);             /* within the slack */
    CHECK_INT(older_to(&l, a1, 0, 306, 5, 0), 1);
    CHECK_INT(older_to(&l, a1, 0, 306, 5, 0), LEDGER_NO_WORKER); /* one on its way */
    ledger_wait_arrived(&l, a1, 1);
    ledger_key_set_state(&l, a1, LEDGER_KEY_PAUSED);
    CHECK_INT(older_to(&l, a1, 0, 306, 5, 0), LEDGER_NO_WORKER);
    ledger_key_set_state(&l, a1, LEDGER_KEY_SERVING);
    CHECK_INT(older_to(&l, a1, 2, 306, 5, 0), 0); /* worker 0's is the oldest */
    /* worker 0 serves its waiter of 200: its entry is its next one's, 400, from then on */
    ledger_wait_arrived(&l, a1, 0);
    CHECK_INT(older_to(&l, a1, 0, 200, 5, 400), LEDGER_NO_WORKER);
    CHECK_INT(older_to(&l, a1, 2, 500, 5, 0), 1);
    ledger_free(&l);
}

/* Session mode: servers opened with a common client's startup parameters, and a rare
 * client's that sluice has none of */
static const uint64_t common_fp = 11, rare_fp = 22;
static const struct ledger_caps session_caps = {.pool = 2};

/* Pool a/u1 full (pool_size 2): one server on worker 0, the other on second_holder; worker 1
 * waits since 100 for three servers of the rare parameters (the first registers its entry). */
static struct ledger_key *full_pool_and_a_rare_waiter_on_worker_1(struct ledger *l,
                                                                  int second_holder)
{
    struct ledger_key *a1 = ledger_key_get(l, "a", "u1");
    CHECK_INT(ledger_take_server(l, a1, 0, &session_caps), LIMIT_NONE);
    CHECK_INT(ledger_take_server(l, a1, second_holder, &session_caps), LIMIT_NONE);
    CHECK_INT(ledger_wait_need(l, a1, 1, LIMIT_POOL, 100, 3, &session_caps, rare_fp), 1);
    return a1;
}

/* Session mode: a released server of other startup parameters than the older waiter's is not
 * moved to it (it would be closed there) but closed for it, once while that close is on its
 * way; one of its parameters still moves to it */
static void a_session_server_closes_once_for_an_older_waiter_of_other_parameters(void)
{
    static struct ledger l;
    struct ledger_key *a1 = full_pool_and_a_rare_waiter_on_worker_1(&l, 0);
    struct ledger_claim c = ledger_claim_older(&l, a1, 0, 200, 5, 0, common_fp);
    CHECK_INT(c.kind, LEDGER_CLAIM_CLOSE);
    CHECK_INT(c.worker, 1);
    CHECK(c.key == a1);
    /* the close is on its way: the next release serves its own worker's waiter */
    CHECK_INT(ledger_claim_older(&l, a1, 0, 200, 5, 0, common_fp).kind, LEDGER_CLAIM_NONE);
    c = ledger_claim_older(&l, a1, 0, 200, 5, 0, rare_fp);
    CHECK_INT(c.kind, LEDGER_CLAIM_MOVE);
    CHECK_INT(c.worker, 1);
    ledger_free(&l);
}

/* Session mode, the rare-fingerprint storm with two workers (test_session_startup_hostile):
 * worker 1's release closes one of its servers for its own older waiter of other parameters;
 * worker 0's release in the moment before worker 1 registers its next waiter must not close a
 * second server for the same waiter (ledger_claim_older's CLOSE): one backend too many. The
 * check and the note are one critical section (ledger_wait_room_here). */
static void a_local_close_for_the_oldest_waiter_keeps_other_workers_from_closing_one_too(void)
{
    static struct ledger l;
    struct ledger_key *a1 = full_pool_and_a_rare_waiter_on_worker_1(&l, 1);
    /* worker 1 closes one of its own for its rare waiter (the first without a server) */
    CHECK(ledger_wait_room_here(&l, a1, 1, 1, 0));
    CHECK_INT(ledger_claim_older(&l, a1, 0, 200, 5, 0, common_fp).kind, LEDGER_CLAIM_NONE);
    /* it registers its next waiter, a common one: worker 0's released server moves to it */
    CHECK_INT(ledger_wait_need(&l, a1, 1, LIMIT_POOL, 150, 2, &session_caps, common_fp), 0);
    struct ledger_claim c = ledger_claim_older(&l, a1, 0, 200, 5, 0, common_fp);
    CHECK_INT(c.kind, LEDGER_CLAIM_MOVE);
    CHECK_INT(c.worker, 1);
    ledger_wait_arrived(&l, a1, 1);
    /* the other order: worker 0 closed one for worker 1's rare waiter first; worker 1 then
     * closes none of its own for it */
    CHECK_INT(ledger_wait_need(&l, a1, 1, LIMIT_POOL, 300, 3, &session_caps, rare_fp), 0);
    CHECK_INT(ledger_claim_older(&l, a1, 0, 400, 5, 0, common_fp).kind, LEDGER_CLAIM_CLOSE);
    CHECK(!ledger_wait_room_here(&l, a1, 1, 1, 0));
    CHECK(ledger_wait_room_here(&l, a1, 1, 2, 0)); /* a second rare waiter: one for it */
    /* no entry (one worker's view): its own close is the only one */
    ledger_wait_done(&l, a1, 1);
    CHECK(ledger_wait_room_here(&l, a1, 1, 1, 0));
    CHECK(!ledger_wait_room_here(&l, a1, 1, 1, 1));
    ledger_free(&l);
}

/* The count a moving server carries (ledger_note_control): only a command that closes servers
 * of its database, or of every database, tells two workers' points apart. */
static void a_console_command_counts_for_its_database_and_its_worker_only(void)
{
    static struct ledger l;
    struct ledger_key *a1 = ledger_key_get(&l, "a", "u1"), *a2 = ledger_key_get(&l, "a", "u2");
    struct ledger_key *b1 = ledger_key_get(&l, "b", "u1");
    ledger_note_control(&l, "b", 1);
    CHECK_INT(ledger_controls_seen(&l, a1, 1), ledger_controls_seen(&l, a1, 2));
    CHECK(ledger_controls_seen(&l, b1, 1) != ledger_controls_seen(&l, b1, 2));
    ledger_note_control(&l, "b", 2);
    CHECK_INT(ledger_controls_seen(&l, b1, 1), ledger_controls_seen(&l, b1, 2));
    ledger_note_control(&l, "c", 2); /* a database with no key yet: none of a's or b's */
    CHECK_INT(ledger_controls_seen(&l, b1, 1), ledger_controls_seen(&l, b1, 2));
    ledger_note_control(&l, NULL, 2); /* every database */
    CHECK(ledger_controls_seen(&l, a1, 1) != ledger_controls_seen(&l, a1, 2));
    CHECK(ledger_controls_seen(&l, a2, 1) != ledger_controls_seen(&l, a2, 2));
    CHECK(ledger_controls_seen(&l, b1, 1) != ledger_controls_seen(&l, b1, 2));
    ledger_note_control(&l, NULL, 1);
    CHECK_INT(ledger_controls_seen(&l, a2, 1), ledger_controls_seen(&l, a2, 2));
    ledger_note_control(&l, "a", 1);
    CHECK(ledger_controls_seen(&l, a2, 1) != ledger_controls_seen(&l, a2, 2));
    CHECK_INT(ledger_controls_seen(&l, b1, 1), ledger_controls_seen(&l, b1, 2));
    ledger_free(&l);
}

/* ---- one server moving between two worker threads ---- */

#define ROUNDS 200

/* How the run ends once the rounds are done. */
enum move_ending {
    BACKEND_GONE,          /* its backend ends: its holder sees EOF on its own loop */
    RECONNECTED_ELSEWHERE, /* the other worker alone applies RECONNECT db, then asks for it:
                            * it arrives having missed the command, and is closed there */
};

struct move_run {
    enum move_ending ending;
    struct process proc;
    uv_timer_t timer;
    int backend[2]; /* [0]: the server's fd, [1]: the backend's end */
    int round;      /* the server was last asked for by worker 1 + round % 2 */
    bool asked;
    int waited;              /* ticks since it was asked for */
    atomic_int holder;       /* the worker whose pool has it idle (-1: on its way) */
    atomic_ullong server_id; /* as its holder saw it */
    atomic_int bad_counts;   /* a step on a worker's thread went wrong */
    int ticks;
    bool moved_all, ended;
};

/* On a worker's thread, so no CHECK (its counter is the test thread's): what goes wrong there
 * is counted in bad_counts and checked at the end. */
static struct pool *pool_db_u(struct worker *worker)
{
    return pool_get(worker, NULL, "u", "db");
}

static void count_bad(struct move_run *r, bool bad)
{
    if (bad)
        atomic_fetch_add(&r->bad_counts, 1);
}

/* On worker 1's thread: its pool gets a logged-in, idle server (as server_connect.c leaves
 * one), holding the key's one slot. */
static void make_server(struct worker *worker, void *arg, bool delivered)
{
    struct move_run *r = arg;
    struct pool *p = delivered ? pool_db_u(worker) : NULL;
    count_bad(r, !p);
    if (!p)
        return;
    struct ledger_caps caps = {.pool = 1};
    count_bad(r, ledger_take_server(&worker->proc->ledger, p->ledger_key, (int)worker->index,
                                    &caps) != LIMIT_NONE);
    struct server *s = calloc(1, sizeof(*s));
    s->pool = p;
    s->id = worker->next_id++;
    s->state = SERVER_IDLE;
    s->txn_status = 'I';
    s->connect_ms = s->state_since_ms = sluice_now(worker);
    stmt_map_init(&s->stmts);
    stmt_map_init(&s->sql_prepared);
    count_bad(r, !server_conninfo_now(p, &s->conninfo_fp));
    count_bad(r, sockio_open(&s->io, worker->loop, r->backend[0], s, server_on_io) != 0);
    list_append(&p->idle, &s->node);
    atomic_fetch_add(&worker->nservers, 1);
    sockio_want(&s->io, UV_READABLE);
    atomic_store(&r->server_id, s->id);
    atomic_store(&r->holder, (int)worker->index);
}

/* On the asking worker's thread: its pool's one waiter (as note_slot_wait registers it). */
static void ask_for_server(struct worker *worker, void *arg, bool delivered)
{
    struct move_run *r = arg;
    struct pool *p = delivered ? pool_db_u(worker) : NULL;
    count_bad(r, !p);
    if (!p)
        return;
    struct ledger *l = &worker->proc->ledger;
    /* whoever held it before, the entries of earlier rounds are done with */
    for (int i = 1; i <= 2; i++)
        ledger_wait_done(l, p->ledger_key, i);
    atomic_store(&r->holder, -1);
    struct ledger_caps caps = {.pool = 1};
    count_bad(r, ledger_wait_need(l, p->ledger_key, (int)worker->index, LIMIT_POOL, ledger_now_ms(),
                                  1, &caps, 0) != 1);
    worker_post_need(worker);
    /* This thread stays here until the server is posted to it (its nservers counts it from the
     * post), so the message waits in the mailbox while this worker audits its share: a server
     * on its way here is in no share of this worker's yet, and the audit must know it. */
    uint64_t until = uv_hrtime() + 1000000000ull;
    while (atomic_load(&worker->nservers) == 0 && uv_hrtime() < until)
        sched_yield();
    count_bad(r, !ledger_audit(worker));
}

/* On a worker's thread: is the server idle in its pool? */
static void look_for_server(struct worker *worker, void *arg, bool delivered)
{
    struct move_run *r = arg;
    struct pool *p = delivered ? pool_db_u(worker) : NULL;
    if (!p || list_empty(&p->idle))
        return;
    struct server *s = container_of(list_first(&p->idle), struct server, node);
    count_bad(r, s->pool != p || s->state != SERVER_IDLE || !s->io.poll ||
                     atomic_load_explicit(&p->ledger_key->servers, memory_order_relaxed) != 1);
    atomic_store(&r->server_id, s->id);
    atomic_store(&r->holder, (int)worker->index);
}

static void on_move_tick(uv_timer_t *t)
{
    struct move_run *r = t->data;
    struct process *proc = &r->proc;
    int want = 1 + r->round % 2;
    if (r->round < ROUNDS) {
        if (r->round % 16 == 0 && !r->asked) {
            /* another database's command, applied by one worker only (the other never hears
             * of it): says nothing of this server, which goes on moving */
            enum control_op op = r->round % 32 ? CONTROL_RECONNECT : CONTROL_KILL;
            worker_post_control(&proc->workers[want], op, "other", 0);
        }
        if (!r->asked || ++r->waited % 64 == 0) {
            /* asked again now and then: the asking worker's tick withdraws a need its pool has
             * no waiter for (note_slot_wait), as it should, and this test's waiter is none */
            CHECK_INT(worker_post_call(&proc->workers[want], ask_for_server, r), 0);
            r->asked = true;
        } else if (atomic_load(&r->holder) == want) {
            r->round++;
            r->asked = false;
            r->waited = 0;
        } else {
            CHECK_INT(worker_post_call(&proc->workers[want], look_for_server, r), 0);
        }
        if (++r->ticks < 20000)
            return;
    }
    r->moved_all = r->round == ROUNDS;
    struct ledger_key *key = ledger_key_get(&proc->ledger, "db", "u");
    if (!r->ended && r->ending == BACKEND_GONE)
        close(r->backend[1]);
    if (!r->ended && r->ending == RECONNECTED_ELSEWHERE) {
        struct worker *other = &proc->workers[3 - atomic_load(&r->holder)];
        worker_post_control(other, CONTROL_RECONNECT, "db", 0);
        CHECK_INT(worker_post_call(other, ask_for_server, r), 0);
    }
    r->ended = true;
    if (atomic_load_explicit(&key->servers, memory_order_relaxed) != 0 && ++r->ticks < 30000)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    sluice_shutdown(proc, PHASE_SHUTDOWN_NOW);
}

static void move_between_worker_threads(enum move_ending ending)
{
    char path[] = "/tmp/sluice-test-handover-XXXXXX";
    int cfd = mkstemp(path);
    CHECK(cfd >= 0);
    static const char ini[] = "[databases]\ndb = host=127.0.0.1 port=1\n"
                              "[sluice]\nlisten_addr = 127.0.0.1\nlisten_port = 0\n"
                              "pool_mode = transaction\ndefault_pool_size = 1\n";
    CHECK_INT((int)write(cfd, ini, sizeof(ini) - 1), (int)sizeof(ini) - 1);
    close(cfd);
    struct config_diag diag = {0};
    struct config *cfg = config_load(path, no_env, &diag);
    config_diag_free(&diag);
    CHECK(cfg != NULL);
    if (!cfg)
        return;
    cfg->workers = (struct thread_count){.n = 3};

    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct move_run r;
    memset(&r, 0, sizeof(r));
    r.ending = ending;
    CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, r.backend), 0);
    CHECK_INT(sluice_start(&r.proc, &loop, cfg, NULL), 0);
    CHECK_INT(r.proc.nworkers, 3);
    atomic_store(&r.holder, -1);
    CHECK_INT(worker_post_call(&r.proc.workers[1], make_server, &r), 0);
    r.round = 1; /* worker 1 has it: worker 2 asks first */
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, on_move_tick, 1, 1);

    uv_run(&loop, UV_RUN_DEFAULT);
    sockio_release_spares();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(r.moved_all);
    CHECK_INT(atomic_load(&r.bad_counts), 0);
    CHECK((atomic_load(&r.server_id) >> 56) == 1); /* one server throughout: worker 1's id */
    struct ledger_key *key = ledger_key_get(&r.proc.ledger, "db", "u");
    CHECK_INT(atomic_load(&key->servers), 0); /* closed where it was or arrived: slot given back */
    for (int i = 1; i < 3; i++)
        worker_thread_join(&r.proc.workers[i]);
    for (int i = 0; i < 3; i++)
        CHECK_INT(atomic_load(&r.proc.workers[i].nservers), 0);
    close(r.backend[0]); /* neither libpq's nor a passthrough login's: the test's own */
    if (ending != BACKEND_GONE)
        close(r.backend[1]);
    sluice_free(&r.proc);
    CHECK_INT(uv_loop_close(&loop), 0);
    unlink(path);
}

static void an_idle_server_moves_between_worker_threads_with_its_slot(void)
{
    move_between_worker_threads(BACKEND_GONE);
}

static void a_moved_server_that_missed_a_reconnect_of_its_database_is_closed(void)
{
    move_between_worker_threads(RECONNECTED_ELSEWHERE);
}

int main(void)
{
    RUN(an_idle_server_goes_to_the_oldest_waiter_it_serves);
    RUN(local_waiters_first_and_paused_keys_and_full_caps_pass);
    RUN(a_released_server_goes_to_a_waiter_that_waited_longer_by_the_slack);
    RUN(a_console_command_counts_for_its_database_and_its_worker_only);
    RUN(a_session_server_closes_once_for_an_older_waiter_of_other_parameters);
    RUN(a_local_close_for_the_oldest_waiter_keeps_other_workers_from_closing_one_too);
    RUN(an_idle_server_moves_between_worker_threads_with_its_slot);
    RUN(a_moved_server_that_missed_a_reconnect_of_its_database_is_closed);
    return CHECK_DONE();
}
