/* snapshot: a value shared by every thread, immutable once published, replaced whole on RELOAD
 * (auth.c's hba rules and ident maps, tls.c's client SSL_CTX). A reader acquires the current
 * snapshot, uses it, and releases it; a reload publishes a new one. The old one is destroyed
 * when the last reader releases it, so a reader on another thread never sees a freed value.
 * Readers take the slot's mutex only for the pointer copy and the reference count, once per
 * login, never per query. */
#ifndef SLUICE_SNAPSHOT_H
#define SLUICE_SNAPSHOT_H

#include <pthread.h>
#include <stdatomic.h>

struct snapshot {
    atomic_uint refs;
    void *value;
    void (*destroy)(void *value); /* frees value when the last reference goes */
};

struct snapshot_slot {
    pthread_mutex_t mu;
    struct snapshot *cur; /* NULL: nothing published */
};
#define SNAPSHOT_SLOT_INIT                                                                         \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, NULL                                                            \
    }

/* The current snapshot with a reference for the caller, or NULL (nothing published). */
struct snapshot *snapshot_acquire(struct snapshot_slot *slot);
/* The caller's value of snapshot_acquire (NULL when s is NULL). */
static inline void *snapshot_value(const struct snapshot *s)
{
    return s ? s->value : NULL;
}
/* Give back a reference; the last one destroys the value. NULL is fine. */
void snapshot_release(struct snapshot *s);
/* Make value (NULL: nothing) the current one; the previous one goes when its readers are done.
 * 0, or -1 when out of memory (then value is destroyed and the previous one stays). */
int snapshot_publish(struct snapshot_slot *slot, void *value, void (*destroy)(void *value));

#endif
