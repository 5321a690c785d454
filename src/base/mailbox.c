/* mailbox: a mutex-protected queue and a uv_async_t per receiving loop (see mailbox.h).
 *
 * Why uv_async_send runs under the lock: mailbox_close sets CLOSING under the same lock before
 * uv_close, so no send can start on a handle that is closing (libuv's uv_async_send is safe
 * from any thread only until uv_close). uv_async_send coalesces wake-ups; the callback drains
 * the whole queue, so a message posted before a coalesced send is never left behind. */
#include "mailbox.h"

/* Move every node of from onto the empty list to, keeping their order. */
static void take_all(struct list *from, struct list *to)
{
    list_init(to);
    if (list_empty(from))
        return;
    to->head.next = from->head.next;
    to->head.prev = from->head.prev;
    to->head.next->prev = &to->head;
    to->head.prev->next = &to->head;
    to->count = from->count;
    list_init(from);
}

static void hand_over(struct mailbox *mb, struct list *taken, enum mailbox_delivery how)
{
    while (!list_empty(taken)) {
        struct list_node *msg = taken->head.next;
        list_remove(taken, msg);
        mb->receive(mb, msg, how);
    }
}

static void on_mailbox_async(uv_async_t *h)
{
    struct mailbox *mb = h->data;
    struct list taken;
    pthread_mutex_lock(&mb->mu);
    take_all(&mb->queue, &taken);
    pthread_mutex_unlock(&mb->mu);
    hand_over(mb, &taken, MAILBOX_DELIVERED);
}

int mailbox_init(struct mailbox *mb, uv_loop_t *loop, mailbox_receive_fn *receive, void *data)
{
    int rc = pthread_mutex_init(&mb->mu, NULL);
    if (rc != 0)
        return -rc;
    list_init(&mb->queue);
    mb->state = MAILBOX_OPEN;
    mb->receive = receive;
    mb->on_closed = NULL;
    mb->data = data;
    rc = uv_async_init(loop, &mb->async, on_mailbox_async);
    if (rc < 0) {
        pthread_mutex_destroy(&mb->mu);
        return rc;
    }
    mb->async.data = mb;
    return 0;
}

int mailbox_post(struct mailbox *mb, struct list_node *msg)
{
    int rc = 0;
    pthread_mutex_lock(&mb->mu);
    if (mb->state != MAILBOX_OPEN) {
        rc = UV_ECANCELED;
    } else {
        list_append(&mb->queue, msg);
        rc = uv_async_send(&mb->async);
        if (rc < 0)
            list_remove(&mb->queue, msg);
    }
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

/* The lock stays: a sender on another thread may still post (and be refused) after the close,
 * until mailbox_free, which the owner calls once no such thread is left. */
static void on_mailbox_closed(uv_handle_t *h)
{
    struct mailbox *mb = h->data;
    pthread_mutex_lock(&mb->mu);
    mb->state = MAILBOX_CLOSED;
    pthread_mutex_unlock(&mb->mu);
    if (mb->on_closed)
        mb->on_closed(mb);
}

void mailbox_free(struct mailbox *mb)
{
    if (mb->state == MAILBOX_CLOSED) /* else it never closed: its lock is left as it is */
        pthread_mutex_destroy(&mb->mu);
}

void mailbox_close(struct mailbox *mb, void (*on_closed)(struct mailbox *mb))
{
    struct list taken;
    pthread_mutex_lock(&mb->mu);
    mb->state = MAILBOX_CLOSING;
    take_all(&mb->queue, &taken);
    pthread_mutex_unlock(&mb->mu);
    mb->on_closed = on_closed;
    hand_over(mb, &taken, MAILBOX_DROPPED);
    uv_close((uv_handle_t *)&mb->async, on_mailbox_closed);
}
