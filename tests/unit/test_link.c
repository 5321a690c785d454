/* Unit tests for the core machine without sockets: the link's decision table (what becomes of a
 * server when its pairing ends), the relay's view of a pair (quiet, at a boundary, what it waits
 * for) over hand-built client and server structs, and the pool's events (who is served, whose
 * wait is over) with fake handlers in place of the link. */
#include "check.h"
#include "fixture.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "budget.h"
#include "client.h"
#include "config.h"
#include "link.h"
#include "pool.h"
#include "relay.h"
#include "server.h"
#include "sluice.h"

/* ---- link_fate: the ending switch ---- */

static void test_fate_table(void)
{
    /* at_boundary, client_mid_message, drain_allowed */
    const struct link_facts clean = {true, false, true};
    const struct link_facts mid_query = {false, false, true};
    const struct link_facts mid_query_no_drain = {false, false, false};
    const struct link_facts mid_message = {false, true, true};

    /* A released pair is always reused (the relay releases only quiet pairs). */
    CHECK(link_fate(LINK_END_RELEASED, &clean) == SERVER_FATE_REUSE);

    /* A client that leaves: reuse at a boundary, drain mid-query, close mid-message. */
    enum link_end leaving[] = {LINK_END_CLIENT_VANISHED, LINK_END_CLIENT_TERMINATED};
    for (size_t i = 0; i < 2; i++) {
        CHECK(link_fate(leaving[i], &clean) == SERVER_FATE_REUSE);
        CHECK(link_fate(leaving[i], &mid_query) == SERVER_FATE_DRAIN);
        CHECK(link_fate(leaving[i], &mid_query_no_drain) == SERVER_FATE_CLOSE);
        CHECK(link_fate(leaving[i], &mid_message) == SERVER_FATE_CLOSE);
        /* at a boundary nothing of a message can be in the server either way */
        const struct link_facts clean_no_drain = {true, false, false};
        CHECK(link_fate(leaving[i], &clean_no_drain) == SERVER_FATE_REUSE);
    }

    /* The server's own ends: lost or fast-closed servers close, whatever the client did; one
     * being closed by its own code is left to its closer. */
    const struct link_facts *all[] = {&clean, &mid_query, &mid_query_no_drain, &mid_message};
    for (size_t i = 0; i < 4; i++) {
        CHECK(link_fate(LINK_END_SERVER_LOST, all[i]) == SERVER_FATE_CLOSE);
        CHECK(link_fate(LINK_END_SERVER_FAST_CLOSE, all[i]) == SERVER_FATE_CLOSE);
        CHECK(link_fate(LINK_END_SERVER_CLOSING, all[i]) == SERVER_FATE_CLOSING);
    }

    CHECK_STR(link_end_name(LINK_END_CLIENT_TERMINATED), "client terminated");
    CHECK_STR(server_fate_name(SERVER_FATE_DRAIN), "drain");
    CHECK_STR(server_state_name(SERVER_DRAINING), "draining");
}

/* ---- the relay's view of a pair ---- */

struct pair {
    struct client c;
    struct server s;
};

/* A pair with nothing in flight either way, between transactions. */
static void quiet_pair(struct pair *p)
{
    memset(p, 0, sizeof(*p));
    p->s.txn_status = 'I';
    p->c.io.fd = -1;
    p->s.io.fd = -1;
}

/* Bytes framed and not yet written (pending), or read and not yet framed (unframed). */
static void buffered(struct buf *b, uint32_t pending, uint32_t unframed)
{
    b->rpos = 0;
    b->scan = pending;
    b->wpos = pending + unframed;
}

static void test_pair_quiet(void)
{
    struct pair p;
    quiet_pair(&p);
    CHECK(relay_pair_quiet(&p.c, &p.s));
    CHECK(relay_at_boundary(&p.s, &p.c));
    CHECK(!relay_client_mid_message(&p.c));

    /* Each condition alone keeps the server with its client. */
    quiet_pair(&p);
    p.s.inflight = 1; /* a ReadyForQuery is due for the client's request */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(!relay_at_boundary(&p.s, &p.c));

    quiet_pair(&p);
    p.s.swallow = 1; /* a reply to sluice's own query (the client's sync) is due */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(relay_at_boundary(&p.s, &p.c)); /* a query can still clean it */

    quiet_pair(&p);
    p.s.batch_open = true; /* extended-protocol messages without their Sync */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(!relay_at_boundary(&p.s, &p.c));

    quiet_pair(&p);
    p.c.rx.remain = 10; /* part of a client message is still to come */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(!relay_at_boundary(&p.s, &p.c));
    CHECK(relay_client_mid_message(&p.c));

    quiet_pair(&p);
    p.s.rx.remain = 10; /* part of a server message is still to come */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(!relay_at_boundary(&p.s, &p.c));

    quiet_pair(&p);
    buffered(&p.c.in, 5, 0); /* client bytes framed, not yet written to the server */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(relay_client_mid_message(&p.c));

    quiet_pair(&p);
    buffered(&p.c.in, 0, CODEC_HEADER_LEN); /* a whole header read: a message to look at */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    quiet_pair(&p);
    buffered(&p.c.in, 0, CODEC_HEADER_LEN - 1); /* less than a header: nothing to act on */
    CHECK(relay_pair_quiet(&p.c, &p.s));

    quiet_pair(&p);
    buffered(&p.s.in, 0, 3); /* server bytes read and not yet passed on */
    CHECK(!relay_pair_quiet(&p.c, &p.s));

    quiet_pair(&p);
    p.c.out.len = 8; /* sluice's own message to the client not yet written */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    p.c.out_pos = 8;
    CHECK(relay_pair_quiet(&p.c, &p.s));

    quiet_pair(&p);
    p.s.out.len = 8; /* sluice's own message to the server not yet written */
    CHECK(!relay_pair_quiet(&p.c, &p.s));
    CHECK(!relay_at_boundary(&p.s, &p.c));

    /* A transaction left open keeps the pair quiet: whether the server goes back then is the
     * pool mode's question (relay_pump's release_due), not a byte in flight. */
    quiet_pair(&p);
    p.s.txn_status = 'T';
    CHECK(relay_pair_quiet(&p.c, &p.s));
    /* (The twelfth condition, decrypted client bytes held inside OpenSSL, needs a TLS session:
     * sockio_pending is 0 without one, as here.) */
}

static void test_pair_wait(void)
{
    struct pair p;
    quiet_pair(&p);
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_NO_WAIT);
    p.s.txn_status = 'T';
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_WAIT_TRANSACTION);

    quiet_pair(&p);
    p.s.copy_in = true;
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_WAIT_COPY);

    quiet_pair(&p);
    p.c.rx.remain = 100; /* a Query's header framed (counted), its body still coming */
    p.s.inflight = 1;
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_WAIT_MESSAGE);
    p.s.inflight = 2; /* an earlier request is still being answered: the server is busy */
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_NO_WAIT);

    quiet_pair(&p);
    p.s.batch_open = true;
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_WAIT_SYNC);
    p.s.executes_unanswered = 1;
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_NO_WAIT);

    quiet_pair(&p);
    p.s.txn_status = 'T';
    p.s.swallow = 1; /* sluice's own query runs: not the client's doing */
    CHECK(relay_pair_wait(&p.c, &p.s) == PAIR_NO_WAIT);
}

/* ---- the pool's events, over fakes ---- */

static struct {
    int served, failed, timed_out, notified, welcomed, ticked;
    struct client *last_client;
    struct server *last_server;
    enum failure last_failure;
    const char *last_sqlstate;
} seen;

static void fake_served(struct client *c, struct server *s)
{
    /* What link_pair's state changes do to the pool's lists. */
    struct pool *p = s->pool;
    list_remove(&p->idle, &s->node);
    s->state = SERVER_ACTIVE;
    list_append(&p->active, &s->node);
    list_remove(&p->waiting, &c->node);
    c->state = CLIENT_ACTIVE;
    list_append(&p->active_clients, &c->node);
    seen.served++;
    seen.last_client = c;
    seen.last_server = s;
}

static void fake_failed(struct client *c, enum failure f, const char *msg, const char *sqlstate)
{
    (void)msg;
    list_remove(&c->pool->waiting, &c->node);
    c->state = CLIENT_CLOSING;
    seen.failed++;
    seen.last_client = c;
    seen.last_failure = f;
    seen.last_sqlstate = sqlstate;
}

static void fake_timed_out(struct client *c, enum failure ends_request, enum failure ends_session,
                           const char *msg)
{
    (void)ends_session;
    CHECK(msg && strstr(msg, "query_wait_timeout") != NULL);
    list_remove(&c->pool->waiting, &c->node);
    c->state = CLIENT_IDLE;
    list_append(&c->pool->idle_clients, &c->node);
    seen.timed_out++;
    seen.last_client = c;
    seen.last_failure = ends_request;
}

static void fake_notified(struct client *c, const char *msg)
{
    CHECK(strstr(msg, "client being queued") != NULL);
    CHECK_INT(c->wait_notice, WAIT_TOLD); /* marked before it is told: told once per wait */
    seen.notified++;
}

static void fake_welcomed(struct client *c)
{
    (void)c;
    seen.welcomed++;
}

static void fake_tick(struct client *c, uint64_t now)
{
    (void)c;
    (void)now;
    seen.ticked++;
}

static const struct pool_events fakes = {
    .waiter_served = fake_served,
    .waiter_failed = fake_failed,
    .waiter_timed_out = fake_timed_out,
    .waiter_notified = fake_notified,
    .login_welcomed = fake_welcomed,
    .client_tick = fake_tick,
    /* the real servers' side: these tests open none (shutting down) */
    .open_server = server_connect,
    .close_server = server_close,
    .close_server_for = server_close_for,
    .kick_server = server_kick,
    .watch_server = server_want_io,
    .server_tick = server_check_timeouts,
};

struct world {
    uv_loop_t loop;
    struct process proc;
    struct worker worker;
    struct pool *pool;
    struct server servers[2];
    struct client clients[3];
};

/* One pool with two idle servers and three clients, none queued yet. Shutting down (PHASE_
 * SHUTDOWN_NOW) keeps the pool from opening connections: no socket is ever made. */
static bool world_init(struct world *w, const char *ini)
{
    memset(w, 0, sizeof(*w));
    memset(&seen, 0, sizeof(seen));
    w->worker.cfg = fixture_config(ini);
    if (!w->worker.cfg || uv_loop_init(&w->loop) != 0)
        return false;
    w->worker.loop = &w->loop;
    w->worker.pool_events = &fakes;
    w->worker.proc = &w->proc;
    w->proc.cfg = w->worker.cfg;
    w->proc.phase = PHASE_SHUTDOWN_NOW;
    list_init(&w->worker.pools);
    if (budget_sync(&w->proc) < 0)
        return false;
    w->pool = pool_get(&w->worker, NULL, "u", "app");
    if (!w->pool)
        return false;
    uint64_t now = uv_now(&w->loop);
    for (int i = 0; i < 2; i++) {
        struct server *s = &w->servers[i];
        s->pool = w->pool;
        s->id = (uint64_t)i + 1;
        s->state = SERVER_IDLE;
        s->state_since_ms = now; /* fresh: no server_check_query before reuse */
        s->connect_ms = now;
        s->txn_status = 'I';
        s->io.fd = -1;
        list_append(&w->pool->idle, &s->node);
    }
    for (int i = 0; i < 3; i++) {
        struct client *c = &w->clients[i];
        c->worker = &w->worker;
        c->pool = w->pool;
        c->id = (uint64_t)i + 1;
        c->state = CLIENT_IDLE;
        c->io.fd = -1;
        list_append(&w->pool->idle_clients, &c->node);
    }
    return true;
}

/* A client queues (what client_set_state(c, CLIENT_WAITING) does to the lists), waited_ms ago. */
static void queue(struct world *w, struct client *c, uint64_t waited_ms)
{
    list_remove(&w->pool->idle_clients, &c->node);
    c->state = CLIENT_WAITING;
    c->state_since_ms = uv_now(&w->loop) - waited_ms;
    list_append(&w->pool->waiting, &c->node);
}

static void world_free(struct world *w)
{
    list_remove(&w->worker.pools, &w->pool->node);
    pool_free(w->pool);
    budget_free_all(&w->proc);
    ledger_free(&w->proc.ledger);
    config_free(w->worker.cfg);
    uv_loop_close(&w->loop);
}

static const char ini[] = "[sluice]\n"
                          "query_wait_timeout = 2\n"
                          "query_wait_notify = 1\n"
                          "[databases]\n"
                          "app = host=127.0.0.1 dbname=app\n";

static void test_pool_serves_fifo(void)
{
    struct world w;
    CHECK(world_init(&w, ini));
    struct client *first = &w.clients[0], *second = &w.clients[1], *third = &w.clients[2];
    queue(&w, first, 30);
    queue(&w, second, 20);
    queue(&w, third, 10);
    pool_lease(w.pool, third);
    /* Two idle servers, three waiters: the two that waited longest get them, in order. */
    CHECK(seen.served == 2);
    CHECK(first->state == CLIENT_ACTIVE && second->state == CLIENT_ACTIVE);
    CHECK(third->state == CLIENT_WAITING);
    CHECK(seen.last_client == second);
    CHECK(w.pool->waiting.count == 1 && w.pool->idle.count == 0);
    world_free(&w);
}

static void test_paused_pool_serves_on_resume(void)
{
    struct world w;
    CHECK(world_init(&w, ini));
    pool_pause(w.pool, PAUSED_BY_PAUSE);
    queue(&w, &w.clients[0], 0);
    pool_lease(w.pool, &w.clients[0]);
    CHECK(seen.served == 0);
    pool_resume(w.pool);
    CHECK(seen.served == 1 && seen.last_client == &w.clients[0]);
    world_free(&w);
}

static void test_wait_timeout_and_notice(void)
{
    struct world w;
    CHECK(world_init(&w, ini));
    while (!list_empty(&w.pool->idle)) /* no server: everyone waits */
        list_remove(&w.pool->idle, list_first(&w.pool->idle));
    queue(&w, &w.clients[0], 2500); /* past query_wait_timeout */
    queue(&w, &w.clients[1], 1500); /* past query_wait_notify only */
    queue(&w, &w.clients[2], 100);
    pool_maintain(w.pool, uv_now(&w.loop));
    CHECK(seen.timed_out == 1 && seen.last_client == &w.clients[0]);
    CHECK(seen.last_failure == FAIL_WAIT_TIMEOUT_RETRY);
    CHECK(seen.notified == 2); /* each client past query_wait_notify hears it once */
    CHECK(w.clients[1].wait_notice == WAIT_TOLD && w.clients[2].wait_notice == WAIT_NOT_TOLD);
    /* The client whose wait ended is IDLE again and ticks with the pool's clients. */
    CHECK(seen.ticked == 1);
    pool_maintain(w.pool, uv_now(&w.loop));
    CHECK(seen.notified == 2); /* once per wait */
    world_free(&w);
}

static void test_login_refusal_fails_every_waiter(void)
{
    struct world w;
    CHECK(world_init(&w, ini));
    while (!list_empty(&w.pool->idle))
        list_remove(&w.pool->idle, list_first(&w.pool->idle));
    queue(&w, &w.clients[0], 10);
    queue(&w, &w.clients[1], 5);
    pool_login_refused(w.pool, "28P01", "password authentication failed",
                       "password authentication failed for user \"u\"");
    CHECK(seen.failed == 2);
    CHECK(seen.last_failure == FAIL_SERVER_LOGIN);
    CHECK_STR(seen.last_sqlstate, "28P01");
    CHECK(w.pool->waiting.count == 0);
    world_free(&w);
}

/* DRAINING is a state of its own (SHOW SERVERS says "draining") but stays on the resetting
 * list: a server on its way back counts against the caps as before. */
static void test_draining_is_listed_with_resetting(void)
{
    struct world w;
    CHECK(world_init(&w, ini));
    struct server *s = &w.servers[0];
    int count = pool_server_count(w.pool);
    server_set_state(s, SERVER_ACTIVE);
    server_set_state(s, SERVER_DRAINING);
    CHECK(s->state == SERVER_DRAINING);
    CHECK(w.pool->resetting.count == 1 && w.pool->active.count == 0);
    CHECK(pool_server_count(w.pool) == count);
    server_set_state(s, SERVER_RESETTING); /* the orphaned query is over: cleaned */
    CHECK(w.pool->resetting.count == 1);
    server_set_state(s, SERVER_IDLE);
    CHECK(w.pool->idle.count == 2 && w.pool->resetting.count == 0);
    world_free(&w);
}

/* Appends one message: type, then body (len bytes). */
static void server_says(struct buf *b, char type, const char *body, uint32_t len)
{
    uint8_t *p = b->data + b->wpos;
    p[0] = (uint8_t)type;
    uint32_t n = len + 4;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    memcpy(p + 5, body, len);
    b->wpos += 5 + len;
}

/* A client that vanished while the replies framed for it waited for its socket (a write to it
 * failed at a boundary) leaves its server to the pool with those bytes still in the buffer. The
 * server's reset query then runs with no client: its reply must be consumed behind the gone
 * client's bytes, not wait behind them for a flush that never comes (the server stayed
 * RESETTING for good, holding its slot, and the next client waited for ever). */
static void test_lone_server_drops_a_gone_clients_bytes(void)
{
    struct world w;
    CHECK(world_init(&w, ini));
    struct server *s = &w.servers[0];
    CHECK(buf_attach(&s->in));
    server_says(&s->in, 'C', "SELECT 1", 9);
    server_says(&s->in, 'Z', "I", 1);
    s->in.scan = s->in.wpos; /* framed for the client, which left before it could be written */
    server_says(&s->in, 'C', "DISCARD ALL", 12);
    server_says(&s->in, 'Z', "I", 1);
    s->swallow = 1; /* the reply to sluice's own reset query */
    struct relay_outcome o;
    CHECK(relay_pump(s, &o) == RELAY_LINKED);
    CHECK(s->swallow == 0);
    CHECK(buf_is_empty(&s->in));
    buf_release(&s->in);
    world_free(&w);
}

int main(void)
{
    test_fate_table();
    test_lone_server_drops_a_gone_clients_bytes();
    test_pair_quiet();
    test_pair_wait();
    test_pool_serves_fifo();
    test_paused_pool_serves_on_resume();
    test_wait_timeout_and_notice();
    test_login_refusal_fails_every_waiter();
    test_draining_is_listed_with_resetting();
    return CHECK_DONE();
}
