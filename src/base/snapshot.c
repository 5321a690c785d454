/* snapshot: shared immutable values, swapped whole (see snapshot.h). */
#include "snapshot.h"

#include <stdlib.h>

struct snapshot *snapshot_acquire(struct snapshot_slot *slot)
{
    pthread_mutex_lock(&slot->mu);
    struct snapshot *s = slot->cur;
    if (s) /* under the mutex: the slot's own reference keeps it alive until we hold ours */
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&slot->mu);
    return s;
}

void snapshot_release(struct snapshot *s)
{
    if (!s)
        return;
    /* acq_rel: every reader's use of the value happens before the destroy */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        if (s->destroy && s->value)
            s->destroy(s->value);
        free(s);
    }
}

int snapshot_publish(struct snapshot_slot *slot, void *value, void (*destroy)(void *value))
{
    struct snapshot *s = NULL;
    if (value) {
        s = malloc(sizeof(*s));
        if (!s) {
            if (destroy)
                destroy(value);
            return -1;
        }
        atomic_init(&s->refs, 1); /* the slot's */
        s->value = value;
        s->destroy = destroy;
    }
    pthread_mutex_lock(&slot->mu);
    struct snapshot *old = slot->cur;
    slot->cur = s;
    pthread_mutex_unlock(&slot->mu);
    snapshot_release(old);
    return 0;
}
