/* mailbox: messages from any thread to one event loop. A mutex-protected queue of intrusive
 * nodes plus a uv_async_t on the receiving loop: a sender links its message in and wakes the
 * loop; the loop's own thread takes the whole queue at once and hands each message to the
 * receiver, in the order they were posted, outside the lock (so a receiver may post again, to
 * this mailbox or another). A message moves ownership: the sender fills it and never touches it
 * after mailbox_post succeeds; the receiver frees it. (docs/architecture.md 5.1) */
#ifndef SLUICE_MAILBOX_H
#define SLUICE_MAILBOX_H

#include <pthread.h>
#include <uv.h>

#include "list.h"

struct mailbox;

/* What becomes of a message handed to the receiver. */
enum mailbox_delivery {
    MAILBOX_DELIVERED, /* on the loop, as posted */
    MAILBOX_DROPPED,   /* the mailbox closed with it still queued: undo what it carried */
};

/* Runs on the receiving loop's thread; the message is the receiver's from now on. */
typedef void mailbox_receive_fn(struct mailbox *mb, struct list_node *msg,
                                enum mailbox_delivery how);

/* OPEN takes posts; CLOSING (mailbox_close called) refuses them and waits for its handle's close
 * callback; CLOSED: the handle is closed, the memory may go. */
enum mailbox_state { MAILBOX_OPEN, MAILBOX_CLOSING, MAILBOX_CLOSED };

struct mailbox {
    uv_async_t async;
    pthread_mutex_t mu; /* guards queue and state */
    struct list queue;
    enum mailbox_state state;
    mailbox_receive_fn *receive;
    void (*on_closed)(struct mailbox *mb);
    void *data; /* the receiver's */
};

/* On loop's thread, before any sender can see mb. 0 or a negative UV_E*. The mailbox's async
 * handle keeps the loop alive until mailbox_close (uv_unref it to let the loop end without). */
int mailbox_init(struct mailbox *mb, uv_loop_t *loop, mailbox_receive_fn *receive, void *data)
    __attribute__((warn_unused_result));

/* Any thread: queue msg and wake the loop. 0, or UV_ECANCELED when the mailbox is closing
 * (msg stays the sender's). */
int mailbox_post(struct mailbox *mb, struct list_node *msg) __attribute__((warn_unused_result));

/* On the loop's thread: refuse new posts, hand what is queued to receive as MAILBOX_DROPPED, close
 * the handle; on_closed (may be NULL) runs from its close callback. Posts after it are refused
 * (UV_ECANCELED), so senders may go on posting until mailbox_free. */
void mailbox_close(struct mailbox *mb, void (*on_closed)(struct mailbox *mb));

/* Once the mailbox is CLOSED and no thread can post to it any more (every sender joined): its
 * lock is destroyed; then mb may be freed. */
void mailbox_free(struct mailbox *mb);

#endif
