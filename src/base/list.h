/* list: an intrusive doubly linked list. Objects embed a struct list_node and sit on exactly one
 * list per node at a time; container_of gets the object back. Every state of a client or server
 * corresponds to a list (see client_set_state, server_set_state), so counting and walking the
 * clients in one state never scans the others. */
#ifndef SLUICE_LIST_H
#define SLUICE_LIST_H

#include <stddef.h>
#include <stdbool.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct list_node {
    struct list_node *prev, *next;
};

/* A list head is a node pointing at itself when empty, plus a count. */
struct list {
    struct list_node head;
    int count;
};

static inline void list_init(struct list *l)
{
    l->head.prev = l->head.next = &l->head;
    l->count = 0;
}

/* A list in zeroed storage (a _Thread_local one: its head's address is no constant an
 * initialiser may use), set up on first use. */
static inline struct list *list_ready(struct list *l)
{
    if (!l->head.next)
        list_init(l);
    return l;
}

static inline void list_node_init(struct list_node *n)
{
    n->prev = n->next = n;
}

static inline bool list_empty(const struct list *l)
{
    return l->count == 0;
}

static inline void list_append(struct list *l, struct list_node *n)
{
    n->prev = l->head.prev;
    n->next = &l->head;
    l->head.prev->next = n;
    l->head.prev = n;
    l->count++;
}

static inline void list_prepend(struct list *l, struct list_node *n)
{
    n->next = l->head.next;
    n->prev = &l->head;
    l->head.next->prev = n;
    l->head.next = n;
    l->count++;
}

static inline void list_remove(struct list *l, struct list_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
    l->count--;
}

static inline struct list_node *list_first(const struct list *l)
{
    return l->count ? l->head.next : NULL;
}

static inline struct list_node *list_last(const struct list *l)
{
    return l->count ? l->head.prev : NULL;
}

/* Safe against removal of the current node. */
#define list_for_each(l, n, tmp)                                                                   \
    for ((n) = (l)->head.next, (tmp) = (n)->next; (n) != &(l)->head; (n) = (tmp), (tmp) = (n)->next)

#endif
