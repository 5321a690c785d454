/* test_mailbox: messages from several threads reach one loop, each sender's in its own order,
 * none lost or delivered twice, while the receiver posts to itself from its callback; a close
 * refuses later posts and hands back what was still queued. Under ThreadSanitizer (build-tsan/)
 * it also shows the queue's memory has an order between sender and receiver. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#include "check.h"
#include "mailbox.h"

#define SENDERS 4
#define PER_SENDER 20000

struct note {
    struct list_node node;
    int sender; /* SENDERS: the receiver's own note */
    int seq;
};

struct receiver {
    struct mailbox mb;
    int next_seq[SENDERS]; /* the seq each sender's next note must carry */
    int delivered, dropped, own_posted, own_seen, out_of_order;
    bool closed;
};

static void receive(struct mailbox *mb, struct list_node *msg, enum mailbox_delivery how)
{
    struct receiver *r = mb->data;
    struct note *n = container_of(msg, struct note, node);
    if (how == MAILBOX_DROPPED) {
        r->dropped++;
        free(n);
        return;
    }
    r->delivered++;
    if (n->sender == SENDERS) {
        r->own_seen++;
    } else {
        if (n->seq != r->next_seq[n->sender])
            r->out_of_order++;
        r->next_seq[n->sender] = n->seq + 1;
        /* Every 1000th note, post one to ourselves from inside the delivery. */
        if (n->seq % 1000 == 0) {
            struct note *own = calloc(1, sizeof(*own));
            own->sender = SENDERS;
            CHECK_INT(mailbox_post(mb, &own->node), 0);
            r->own_posted++;
        }
    }
    int total = 0;
    for (int i = 0; i < SENDERS; i++)
        total += r->next_seq[i];
    free(n);
    if (total == SENDERS * PER_SENDER && r->own_seen == r->own_posted && !r->closed) {
        r->closed = true;
        mailbox_close(mb, NULL);
    }
}

struct sender {
    struct mailbox *mb;
    int index, refused;
};

static void *send_notes(void *p)
{
    struct sender *s = p;
    for (int i = 0; i < PER_SENDER; i++) {
        struct note *n = calloc(1, sizeof(*n));
        n->sender = s->index;
        n->seq = i;
        if (mailbox_post(s->mb, &n->node) != 0) {
            s->refused++;
            free(n);
        }
    }
    return NULL;
}

static void many_senders_one_loop_in_order(void)
{
    uv_loop_t loop;
    CHECK_INT(uv_loop_init(&loop), 0);
    struct receiver r = {0};
    CHECK_INT(mailbox_init(&r.mb, &loop, receive, &r), 0);
    struct sender s[SENDERS];
    pthread_t t[SENDERS];
    for (int i = 0; i < SENDERS; i++) {
        s[i] = (struct sender){.mb = &r.mb, .index = i};
        CHECK_INT(pthread_create(&t[i], NULL, send_notes, &s[i]), 0);
    }
    /* The open mailbox keeps the loop running until the receiver has seen every note. */
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < SENDERS; i++) {
        pthread_join(t[i], NULL);
        CHECK_INT(s[i].refused, 0);
        CHECK_INT(r.next_seq[i], PER_SENDER);
    }
    CHECK_INT(r.out_of_order, 0);
    CHECK_INT(r.dropped, 0);
    CHECK(r.own_posted > 0);
    CHECK_INT(r.own_seen, r.own_posted);
    CHECK_INT(r.delivered, SENDERS * PER_SENDER + r.own_posted);
    CHECK_INT(r.mb.state, MAILBOX_CLOSED);
    CHECK_INT(uv_loop_close(&loop), 0);
}

static int closed_calls;

static void on_closed(struct mailbox *mb)
{
    (void)mb;
    closed_calls++;
}

static void close_drops_the_queued_and_refuses_more(void)
{
    uv_loop_t loop;
    CHECK_INT(uv_loop_init(&loop), 0);
    struct receiver r = {.closed = true}; /* receive must not close it itself */
    CHECK_INT(mailbox_init(&r.mb, &loop, receive, &r), 0);
    for (int i = 0; i < 3; i++) {
        struct note *n = calloc(1, sizeof(*n));
        n->sender = 0;
        n->seq = i;
        CHECK_INT(mailbox_post(&r.mb, &n->node), 0);
    }
    mailbox_close(&r.mb, on_closed); /* before the loop ever ran: all three still queued */
    CHECK_INT(r.dropped, 3);
    struct note late = {.sender = 0};
    CHECK_INT(mailbox_post(&r.mb, &late.node), UV_ECANCELED);
    CHECK_INT(closed_calls, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(closed_calls, 1);
    CHECK_INT(r.delivered, 0);
    CHECK_INT(r.mb.state, MAILBOX_CLOSED);
    CHECK_INT(uv_loop_close(&loop), 0);
}

static void *post_late(void *arg)
{
    struct mailbox *mb = arg;
    struct note late = {.sender = 1};
    /* refused; its lock must still be a lock (mailbox_free has not run) */
    return (void *)(intptr_t)mailbox_post(mb, &late.node);
}

/* A sender on another thread may post after the receiver's loop closed the mailbox and ended
 * (a worker's cancel answer to worker 0 at shutdown): the post is refused, on a live lock.
 * Before, the close callback destroyed the lock: TSan 'use of an invalid mutex'. */
static void a_post_after_the_close_is_refused_until_mailbox_free(void)
{
    uv_loop_t loop;
    CHECK_INT(uv_loop_init(&loop), 0);
    struct receiver r = {.closed = true};
    CHECK_INT(mailbox_init(&r.mb, &loop, receive, &r), 0);
    mailbox_close(&r.mb, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(r.mb.state, MAILBOX_CLOSED);
    pthread_t t;
    void *rc = NULL;
    CHECK_INT(pthread_create(&t, NULL, post_late, &r.mb), 0);
    pthread_join(t, &rc);
    CHECK_INT((int)(intptr_t)rc, UV_ECANCELED);
    mailbox_free(&r.mb);
    CHECK_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    RUN(many_senders_one_loop_in_order);
    RUN(close_drops_the_queued_and_refuses_more);
    RUN(a_post_after_the_close_is_refused_until_mailbox_free);
    return CHECK_DONE();
}
