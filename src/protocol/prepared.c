/* prepared: statement maps, the request queue and the messages sluice injects (see prepared.h).
 * The decisions of when to inject are request_track.c's; this file owns the
 * bookkeeping so that it can be unit-tested without sockets. */
#include "prepared.h"
#include "sql_lex.h"
#include "text_encoding.h"

#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static uint32_t hash_more(uint32_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}

static uint32_t hash_bytes(const void *p, size_t n)
{
    /* FNV-1a: names and definitions are short, and this is not exposed to collisions that
     * matter (a collision only costs a string compare). */
    return hash_more(2166136261u, p, n);
}

/* Every worker's clients together: one process-wide bound. A relaxed atomic, touched when a
 * client's map gains or loses an entry (a new statement name), not per Execute; a check and the
 * add that follows are not one step, so workers racing at the bound may pass it by one
 * statement each. */
static atomic_uint_fast64_t client_text_bytes;

uint64_t stmt_client_text_bytes(void)
{
    return atomic_load_explicit(&client_text_bytes, memory_order_relaxed);
}

/* Names of definitions that streamed through: process-wide (every worker's), so a name is never
 * given twice. */
static atomic_uint_fast64_t streamed_defs;

struct stmt_def *stmt_def_alloc(uint32_t len, const char *encoding)
{
    struct stmt_def *d = malloc(sizeof(*d) + len);
    if (!d)
        return NULL;
    atomic_init(&d->refs, 1);
    d->len = len;
    snprintf(d->encoding, sizeof(d->encoding), "%s", encoding ? encoding : "");
    d->hash = 0;
    d->effect = STMT_EFFECT_NONE;
    d->encoding_effect = TEXT_ENCODING_MAY_SET | TEXT_ENCODING_MAY_UNDO; /* until sealed */
    d->params = NULL;
    d->result = STMT_RESULT_UNKNOWN;
    uint64_t n = atomic_fetch_add_explicit(&streamed_defs, 1, memory_order_relaxed) + 1;
    snprintf(d->server_name, sizeof(d->server_name), "sluice_s%llu", (unsigned long long)n);
    return d;
}

/* Does d's text (after the name's rest and its NUL, up to its own) hold a byte from 0x80 up?
 * Every client encoding Postgres offers reads the bytes below as ASCII (a multi-byte character
 * starts from 0x80 up), so a text without such a byte is the same text in any of them. */
static bool text_beyond_ascii(const struct stmt_def *d)
{
    const uint8_t *name_end = memchr(d->data, '\0', d->len);
    if (!name_end)
        return false;
    for (const uint8_t *p = name_end + 1; p < d->data + d->len && *p; p++)
        if (*p >= 0x80)
            return true;
    return false;
}

void stmt_def_seal(struct stmt_def *d)
{
    if (!text_beyond_ascii(d))
        d->encoding[0] = '\0';
    const uint8_t *name_end = memchr(d->data, '\0', d->len);
    d->encoding_effect =
        (uint8_t)(name_end ? text_encoding_effect_of((const char *)name_end + 1,
                                                     d->len - (uint32_t)(name_end + 1 - d->data))
                           : TEXT_ENCODING_MAY_SET | TEXT_ENCODING_MAY_UNDO);
    d->hash = hash_more(hash_bytes(d->data, d->len), d->encoding, strlen(d->encoding));
}

struct stmt_def *stmt_def_new(const uint8_t *data, uint32_t len, const char *encoding)
{
    struct stmt_def *d = stmt_def_alloc(len, encoding);
    if (!d)
        return NULL;
    memcpy(d->data, data, len);
    stmt_def_seal(d);
    /* Equal definitions get equal names (and are one statement on a server); two that differ
     * and share a hash share the name too, and replace each other there (ensure_prepared). */
    if (strcmp(d->encoding, STMT_ENCODING_UNKNOWN) != 0) /* else its own count, as streamed */
        snprintf(d->server_name, sizeof(d->server_name), "sluice_%08x", d->hash);
    return d;
}

struct stmt_def *stmt_def_stand_in(void)
{
    static const uint8_t empty[] = {0, 0, 0, 0}; /* the name's end, the text "", no types */
    return stmt_def_new(empty, sizeof(empty), NULL);
}

struct stmt_def *stmt_def_stand_in_typed(const struct stmt_def *d)
{
    struct stmt_def *typed = stmt_def_stand_in();
    size_t size = sizeof(*d->params) + d->params->count * sizeof(d->params->oids[0]);
    if (typed && (typed->params = malloc(size)))
        memcpy(typed->params, d->params, size);
    else if (typed) {
        stmt_def_unref(typed);
        typed = NULL;
    }
    return typed;
}

/* A new holder comes from one that already holds it, so relaxed is enough (as for
 * shared_ptr); the release by the last holder must see every other holder's writes before the
 * free, hence acq_rel there. One locked instruction per name added or dropped, not per Execute. */
static void def_ref(struct stmt_def *d)
{
    atomic_fetch_add_explicit(&d->refs, 1, memory_order_relaxed);
}

void stmt_def_unref(struct stmt_def *d)
{
    if (d && atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) == 1) {
        free(d->params);
        free(d);
    }
}

/* What an entry adds to its map's text_bytes. */
static uint64_t entry_bytes(const struct stmt_entry *e)
{
    return strlen(e->name) + 1 + (e->def ? e->def->len : 0);
}

static void count_entry(struct stmt_map *m, const struct stmt_entry *e, int sign)
{
    uint64_t n = entry_bytes(e);
    if (sign > 0)
        m->text_bytes += n;
    else
        m->text_bytes -= n;
    if (m->owner != STMT_MAP_CLIENT)
        return;
    if (sign > 0)
        atomic_fetch_add_explicit(&client_text_bytes, n, memory_order_relaxed);
    else
        atomic_fetch_sub_explicit(&client_text_bytes, n, memory_order_relaxed);
}

bool stmt_def_equal(const struct stmt_def *a, const struct stmt_def *b)
{
    if (a == b)
        return a != NULL;
    return a && b && a->hash == b->hash && a->len == b->len &&
           memcmp(a->data, b->data, a->len) == 0 && strcmp(a->encoding, b->encoding) == 0 &&
           strcmp(a->encoding, STMT_ENCODING_UNKNOWN) != 0;
}

void stmt_map_init(struct stmt_map *m)
{
    memset(m, 0, sizeof(*m));
    list_init(&m->lru);
}

static uint32_t bucket(const struct stmt_map *m, const char *name)
{
    return hash_bytes(name, strlen(name)) & (m->nbuckets - 1);
}

struct stmt_entry *stmt_map_get(const struct stmt_map *m, const char *name)
{
    if (!m || !m->nbuckets)
        return NULL;
    for (struct stmt_entry *e = m->buckets[bucket(m, name)]; e; e = e->next_in_bucket)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static bool grow(struct stmt_map *m)
{
    uint32_t n = m->nbuckets ? m->nbuckets * 2 : 16;
    struct stmt_entry **b = calloc(n, sizeof(*b));
    if (!b)
        return false;
    for (uint32_t i = 0; i < m->nbuckets; i++) {
        struct stmt_entry *e = m->buckets[i];
        while (e) {
            struct stmt_entry *next = e->next_in_bucket;
            uint32_t k = hash_bytes(e->name, strlen(e->name)) & (n - 1);
            e->next_in_bucket = b[k];
            b[k] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
    return true;
}

struct stmt_entry *stmt_map_put(struct stmt_map *m, const char *name, struct stmt_def *def)
{
    struct stmt_entry *e = stmt_map_get(m, name);
    if (e) {
        if (def)
            def_ref(def);
        count_entry(m, e, -1);
        stmt_def_unref(e->def);
        e->def = def;
        e->shape = STMT_SHAPE_UNKNOWN; /* another statement, or the same prepared again */
        e->fresh_epoch = 0;
        count_entry(m, e, +1);
        list_remove(&m->lru, &e->lru);
        list_prepend(&m->lru, &e->lru);
        return e;
    }
    if ((uint32_t)m->lru.count >= m->nbuckets && !grow(m))
        return NULL;
    size_t nlen = strlen(name);
    e = malloc(sizeof(*e) + nlen + 1);
    if (!e)
        return NULL;
    memcpy(e->name, name, nlen + 1);
    e->def = def;
    e->shape = STMT_SHAPE_UNKNOWN;
    e->fresh_epoch = 0;
    e->portal_holds = false;
    e->query_holds = false;
    if (def)
        def_ref(def);
    uint32_t k = bucket(m, name);
    e->next_in_bucket = m->buckets[k];
    m->buckets[k] = e;
    list_prepend(&m->lru, &e->lru);
    count_entry(m, e, +1);
    return e;
}

void stmt_map_remove(struct stmt_map *m, const char *name)
{
    if (!m || !m->nbuckets)
        return;
    struct stmt_entry **pp = &m->buckets[bucket(m, name)];
    for (; *pp; pp = &(*pp)->next_in_bucket) {
        struct stmt_entry *e = *pp;
        if (strcmp(e->name, name) == 0) {
            *pp = e->next_in_bucket;
            list_remove(&m->lru, &e->lru);
            count_entry(m, e, -1);
            stmt_def_unref(e->def);
            free(e);
            return;
        }
    }
}

const char *stmt_map_name_of(const struct stmt_map *m, const char *server_name)
{
    if (!m)
        return NULL;
    const struct list_node *n;
    for (n = m->lru.head.next; n != &m->lru.head; n = n->next) {
        const struct stmt_entry *e = container_of(n, struct stmt_entry, lru);
        if (e->def && strcmp(e->def->server_name, server_name) == 0)
            return e->name;
    }
    for (int i = 0; i < STMT_DEPARTED; i++)
        if (m->departed[i].server_name[0] && strcmp(m->departed[i].server_name, server_name) == 0)
            return m->departed[i].client_name;
    return NULL;
}

void stmt_map_note_departed(struct stmt_map *m, const char *client_name, const char *server_name)
{
    if (!m)
        return;
    memmove(&m->departed[1], &m->departed[0], (STMT_DEPARTED - 1) * sizeof(m->departed[0]));
    snprintf(m->departed[0].client_name, sizeof(m->departed[0].client_name), "%s", client_name);
    snprintf(m->departed[0].server_name, sizeof(m->departed[0].server_name), "%s", server_name);
}

static void note_departed(struct stmt_map *m, const char *client_name, const char *server_name)
{
    if (stmt_map_get(m, client_name))
        stmt_map_note_departed(m, client_name, server_name);
}

void stmt_map_mark_unknown(struct stmt_map *m)
{
    struct list_node *n, *tmp;
    list_for_each(&m->lru, n, tmp)
    {
        struct stmt_entry *e = container_of(n, struct stmt_entry, lru);
        count_entry(m, e, -1);
        stmt_def_unref(e->def);
        e->def = NULL;
        count_entry(m, e, +1);
    }
}

void stmt_map_clear(struct stmt_map *m)
{
    if (!m)
        return;
    struct list_node *n, *tmp;
    list_for_each(&m->lru, n, tmp)
    {
        struct stmt_entry *e = container_of(n, struct stmt_entry, lru);
        list_remove(&m->lru, n);
        count_entry(m, e, -1);
        stmt_def_unref(e->def);
        free(e);
    }
    if (m->nbuckets)
        memset(m->buckets, 0, m->nbuckets * sizeof(*m->buckets));
}

void stmt_map_free(struct stmt_map *m)
{
    enum stmt_map_owner owner = m->owner;
    stmt_map_clear(m);
    free(m->buckets);
    stmt_map_init(m);
    m->owner = owner;
}

struct stmt_map *stmt_map_new(void)
{
    struct stmt_map *m = malloc(sizeof(*m));
    if (m) {
        stmt_map_init(m);
        m->owner = STMT_MAP_CLIENT;
    }
    return m;
}

void stmt_map_delete(struct stmt_map *m)
{
    if (!m)
        return;
    stmt_map_free(m);
    free(m);
}

bool stmt_name_key(const uint8_t *p, uint32_t avail, char key[STMT_KEY_MAX + 1])
{
    uint32_t n = 0;
    while (n < avail && n < STMT_KEY_MAX && p[n])
        n++;
    if (n < STMT_KEY_MAX && n == avail)
        return false; /* neither its NUL nor a whole key yet */
    memcpy(key, p, n);
    key[n] = '\0';
    return true;
}

/* ---- request queue ---- */

static struct stmt_queue_item *item_at(const struct stmt_queue *q, uint32_t i)
{
    return &q->items[(q->head + i) % q->cap];
}

static bool holds_statements(const struct stmt_queue_item *it)
{
    return it->kind == REQ_DROP_CLIENT || (it->kind == REQ_CLOSE_CLIENT && it->def);
}

static void release_item(struct stmt_queue *q, struct stmt_queue_item *it)
{
    if (holds_statements(it))
        q->undoable--;
    free(it->name);
    stmt_def_unref(it->def);
    stmt_map_delete(it->dropped);
    if (it->positions)
        q->positions_held--;
    free(it->positions);
    it->positions = NULL;
    it->name = NULL;
    it->def = NULL;
    it->dropped = NULL;
}

void stmt_queue_free(struct stmt_queue *q)
{
    for (uint32_t i = 0; i < q->count; i++)
        release_item(q, item_at(q, i));
    release_item(q, &q->describe_due);
    free(q->positions_due);
    stmt_def_unref(q->poisoned_describe);
    free(q->failed_parse_error);
    free(q->failed_parse_name);
    free(q->items);
    memset(q, 0, sizeof(*q));
}

const char *stmt_queue_dropped_name_of(const struct stmt_queue *q, const char *server_name)
{
    for (uint32_t i = q ? q->count : 0; i-- > 0;) {
        const struct stmt_queue_item *it = item_at(q, i);
        const char *name = it->dropped ? stmt_map_name_of(it->dropped, server_name) : NULL;
        if (name)
            return name;
    }
    return NULL;
}

void stmt_queue_name_next_error(struct stmt_queue *q, const char *client_name,
                                const char *server_name)
{
    uint32_t readies = 0; /* the ReadyForQuery due before the batch of the request framed now */
    for (uint32_t i = 0; i < q->count; i++)
        if (item_at(q, i)->kind == REQ_SYNC)
            readies += item_at(q, i)->repeat;
    snprintf(q->named_as.client_name, sizeof(q->named_as.client_name), "%s", client_name);
    snprintf(q->named_as.server_name, sizeof(q->named_as.server_name), "%s", server_name);
    q->named_as_readies = readies;
}

const char *stmt_queue_named_as(const struct stmt_queue *q, const char *server_name)
{
    return q && q->named_as.server_name[0] && strcmp(q->named_as.server_name, server_name) == 0
               ? q->named_as.client_name
               : NULL;
}

static struct stmt_queue_item *last_item(struct stmt_queue *q)
{
    return q->count ? &q->items[(q->head + q->count - 1) % q->cap] : NULL;
}

static int grow_queue(struct stmt_queue *q)
{
    if (q->cap >= STMT_QUEUE_MAX)
        return -ENOSPC;
    uint32_t cap = q->cap ? q->cap * 2 : 16;
    struct stmt_queue_item *items = malloc(cap * sizeof(*items));
    if (!items)
        return -ENOMEM;
    for (uint32_t i = 0; i < q->count; i++)
        items[i] = q->items[(q->head + i) % q->cap];
    free(q->items);
    q->items = items;
    q->cap = cap;
    q->head = 0;
    return 0;
}

/* Queue a request; it owns `name` (NULL or malloc'd) from here on, pushed or not. */
static int push_item(struct stmt_queue *q, enum stmt_req kind, char *name)
{
    struct stmt_queue_item *last = last_item(q);
    /* (A mark's repeat counts the Queries it guards, not its Closes: stmt_queue_join_mark.) */
    if (!name && kind != REQ_MARK && last && last->kind == kind && !last->name &&
        !last->positions && !last->holds_query && last->repeat < UINT32_MAX) {
        last->repeat++;
        return 0;
    }
    int rc = q->count == q->cap ? grow_queue(q) : 0;
    if (rc < 0) {
        free(name);
        return rc;
    }
    struct stmt_queue_item *it = &q->items[(q->head + q->count) % q->cap];
    it->kind = (uint8_t)kind;
    it->fenced = false;
    it->holds_query = false;
    it->repeat = 1;
    it->name = name;
    it->def = NULL;
    it->dropped = NULL;
    it->params_shape = 0;
    it->positions = NULL;
    q->count++;
    return 0;
}

int stmt_queue_push_query(struct stmt_queue *q)
{
    struct query_positions *positions = q->positions_due;
    q->positions_due = NULL;
    if (!positions)
        return push_item(q, REQ_SYNC, NULL);
    /* an item of its own, not a repeat of the SYNC before it: its replies are its own */
    struct stmt_queue_item *last = last_item(q);
    uint32_t count = q->count;
    int rc = 0;
    if (last && last->kind == REQ_SYNC && !last->name) {
        /* (push_item would count it as one more of last's) */
        rc = q->count == q->cap ? grow_queue(q) : 0;
        if (rc == 0) {
            struct stmt_queue_item *it = &q->items[(q->head + q->count) % q->cap];
            memset(it, 0, sizeof(*it));
            it->kind = REQ_SYNC;
            it->repeat = 1;
            q->count++;
        }
    } else {
        rc = push_item(q, REQ_SYNC, NULL);
    }
    if (rc < 0 || q->count == count) {
        free(positions);
        return rc;
    }
    last_item(q)->positions = positions;
    q->positions_held++;
    return 0;
}

const struct query_positions *stmt_queue_query_positions(const struct stmt_queue *q)
{
    for (uint32_t i = 0; q->positions_held > 0 && i < q->count; i++)
        if (item_at(q, i)->kind == REQ_SYNC)
            return item_at(q, i)->positions;
    return NULL;
}

/* server_name, NUL, client_name, NUL (malloc'd); NULL when out of memory. */
static char *both_names(const char *server_name, const char *client_name)
{
    size_t sn = strlen(server_name) + 1, cn = strlen(client_name) + 1;
    char *both = malloc(sn + cn);
    if (both) {
        memcpy(both, server_name, sn);
        memcpy(both + sn, client_name, cn);
    }
    return both;
}

static const char *client_name_of(const struct stmt_queue_item *it)
{
    return it->name + strlen(it->name) + 1;
}

int stmt_queue_push_client_parse(struct stmt_queue *q, const char *server_name,
                                 const char *client_name)
{
    char *both = both_names(server_name, client_name);
    return both ? push_item(q, REQ_PARSE_CLIENT, both) : -ENOMEM;
}

/* Push a named item that holds def and dropped (held by the item only once pushed). */
static int push_holding(struct stmt_queue *q, enum stmt_req kind, char *name,
                        struct stmt_def *def, struct stmt_map *dropped)
{
    if (!name) {
        stmt_map_delete(dropped);
        return -ENOMEM;
    }
    int rc = push_item(q, kind, name);
    if (rc < 0) {
        stmt_map_delete(dropped);
        return rc;
    }
    struct stmt_queue_item *it = item_at(q, q->count - 1);
    if (def)
        def_ref(def);
    it->def = def;
    it->dropped = dropped;
    if (holds_statements(it))
        q->undoable++;
    return 0;
}

bool stmt_queue_drop_undecided(const struct stmt_queue *q)
{
    if (q->undoable == 0)
        return false;
    bool holding = false;
    for (uint32_t i = 0; i < q->count; i++) {
        const struct stmt_queue_item *it = item_at(q, i);
        if (holding && it->kind == REQ_SYNC)
            return true;
        holding = holding || holds_statements(it);
    }
    return false;
}

bool stmt_queue_backlogged(const struct stmt_queue *q)
{
    return !q->skipping_to_sync && q->count + STMT_QUEUE_HEADROOM >= STMT_QUEUE_MAX;
}

bool stmt_queue_unsynced(const struct stmt_queue *q)
{
    return q->count > 0 && item_at(q, q->count - 1)->kind != REQ_SYNC;
}

bool stmt_queue_past_failed_batch(const struct stmt_queue *q)
{
    if (!q->batch_failed)
        return false;
    for (uint32_t i = 0; i < q->count; i++)
        if (item_at(q, i)->kind == REQ_SYNC)
            return true;
    return false;
}

/* A named Parse of the client's (client_name NULL: any) queued ahead of a Sync. */
static bool parse_before_sync(const struct stmt_queue *q, const char *client_name)
{
    bool parse = false;
    for (uint32_t i = 0; i < q->count; i++) {
        const struct stmt_queue_item *it = item_at(q, i);
        if (parse && it->kind == REQ_SYNC)
            return true;
        if (it->kind == REQ_PARSE_CLIENT && it->name &&
            (!client_name || strcmp(client_name_of(it), client_name) == 0))
            parse = true;
    }
    return false;
}

bool stmt_queue_parse_undecided(const struct stmt_queue *q, const char *client_name)
{
    return parse_before_sync(q, client_name);
}

bool stmt_queue_parse_awaited(const struct stmt_queue *q)
{
    return q->parse_awaited && parse_before_sync(q, NULL);
}

int stmt_queue_push_client_close(struct stmt_queue *q, const char *server_name,
                                 const char *client_name, struct stmt_def *def)
{
    return push_holding(q, REQ_CLOSE_CLIENT, both_names(server_name, client_name), def, NULL);
}

int stmt_queue_push_client_drop(struct stmt_queue *q, const char *client_name,
                                struct stmt_def *def, struct stmt_map *dropped)
{
    /* "" stands for all: push_item runs only nameless items together */
    return push_holding(q, REQ_DROP_CLIENT, strdup(client_name ? client_name : ""), def,
                        dropped);
}

/* Where the request the next ParseComplete/CloseComplete answers stands: past the client's
 * DEALLOCATEs and DISCARD ALLs, which wait for a CommandComplete. */
static uint32_t next_complete_at(const struct stmt_queue *q)
{
    uint32_t k = 0;
    while (k < q->count && item_at(q, k)->kind == REQ_DROP_CLIENT)
        k++;
    return k;
}

enum stmt_req stmt_queue_next_complete(const struct stmt_queue *q)
{
    uint32_t k = next_complete_at(q);
    return k < q->count ? (enum stmt_req)item_at(q, k)->kind : REQ_SYNC;
}

int stmt_queue_push(struct stmt_queue *q, enum stmt_req kind, const char *name)
{
    if (name && kind == REQ_PARSE_CLIENT)
        return stmt_queue_push_client_parse(q, name, name);
    char *copy = NULL;
    if (name && !(copy = strdup(name)))
        return -ENOMEM;
    return push_item(q, kind, copy);
}

/* ---- result types ---- */

static uint64_t shape_mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p; /* FNV-1a, 64 bits: a collision would hide a change of result type */
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

uint64_t stmt_shape_of(const uint8_t *body, uint32_t len)
{
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    int16_t columns = codec_read_i16(&r);
    uint64_t h = shape_mix(14695981039346656037ull, body, 2);
    for (int16_t i = 0; i < columns && !r.bad; i++) {
        const char *name = codec_read_cstring(&r);
        (void)codec_read_bytes(&r, 6); /* table OID, column number: not the result's type */
        const uint8_t *type = codec_read_bytes(&r, 10); /* type OID, length, modifier */
        (void)codec_read_i16(&r);                        /* format: text, when described */
        if (r.bad)
            break;
        h = shape_mix(h, name, strlen(name) + 1);
        h = shape_mix(h, type, 10);
    }
    if (r.bad || columns < 0 || codec_reader_left(&r) != 0)
        return STMT_SHAPE_UNCHECKED;
    return h > STMT_SHAPE_NO_DATA ? h : h + STMT_SHAPE_NO_DATA + 1;
}

/* A ParameterDescription body's types; NULL when malformed or out of memory (then a Parse of
 * sluice's names only the types the client's did). */
static struct stmt_param_types *param_types_of(const uint8_t *body, uint32_t len)
{
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    int16_t n = codec_read_i16(&r);
    if (r.bad || n < 0 || codec_reader_left(&r) != (uint32_t)n * 4)
        return NULL;
    struct stmt_param_types *t = malloc(sizeof(*t) + (size_t)n * sizeof(t->oids[0]));
    if (!t)
        return NULL;
    t->count = (uint16_t)n;
    for (int16_t i = 0; i < n; i++)
        t->oids[i] = (uint32_t)codec_read_i32(&r);
    return t;
}

static char *describe_names(const char *server_name, const char *client_name)
{
    return both_names(server_name, client_name ? client_name : "");
}

int stmt_queue_push_describe(struct stmt_queue *q, const char *server_name,
                             const char *client_name, struct stmt_def *def)
{
    return push_holding(q, REQ_DESCRIBE_OURS, describe_names(server_name, client_name), def,
                        NULL);
}

int stmt_queue_push_parse_for_describe(struct stmt_queue *q, const char *server_name,
                                       struct stmt_def *def)
{
    int rc = push_holding(q, REQ_PARSE_OURS, strdup(server_name), def, NULL);
    if (rc == 0)
        item_at(q, q->count - 1)->fenced = true;
    return rc;
}

int stmt_queue_push_fenced_parse(struct stmt_queue *q, const char *server_name)
{
    int rc = stmt_queue_push(q, REQ_PARSE_OURS, server_name);
    if (rc == 0)
        item_at(q, q->count - 1)->fenced = true;
    return rc;
}

void stmt_queue_last_holds_query(struct stmt_queue *q)
{
    if (q->count > 0)
        last_item(q)->holds_query = true;
}

bool stmt_queue_notice_is_ours(const struct stmt_queue *q)
{
    uint32_t k = next_complete_at(q);
    return k < q->count && item_at(q, k)->kind == REQ_PARSE_OURS && item_at(q, k)->fenced;
}

void stmt_queue_poison(struct stmt_queue *q, struct stmt_def *described)
{
    if (q->poisoned++ == 0 && described) {
        def_ref(described);
        q->poisoned_describe = described;
    }
}

const struct stmt_param_types *stmt_queue_types_before_refusal(const struct stmt_queue *q)
{
    return q->poisoned_describe ? q->poisoned_describe->params : NULL;
}

void stmt_queue_forget_failed_parse(struct stmt_queue *q)
{
    free(q->failed_parse_error);
    free(q->failed_parse_name);
    q->failed_parse_error = NULL;
    q->failed_parse_name = NULL;
    q->failed_parse_len = 0;
    q->refusal = REFUSAL_RESULT_TYPE_CHANGED;
}

void stmt_queue_refusal_answered(struct stmt_queue *q)
{
    q->poisoned--;
    stmt_def_unref(q->poisoned_describe); /* the server skips the rest of the batch */
    q->poisoned_describe = NULL;
    stmt_queue_forget_failed_parse(q);
}

bool stmt_queue_parse_failed_for(const struct stmt_queue *q, const char *server_name)
{
    return q->held_query == HELD_PARSE_SYNCED && q->failed_parse_name &&
           strcmp(q->failed_parse_name, server_name) == 0;
}

void stmt_queue_poison_failed_parse(struct stmt_queue *q)
{
    if (q->poisoned++ == 0)
        q->refusal = REFUSAL_PARSE_FAILED;
}

bool stmt_queue_refusal_error(const struct stmt_queue *q, const uint8_t **msg, uint32_t *len)
{
    if (q->refusal != REFUSAL_PARSE_FAILED || !q->failed_parse_error)
        return false;
    *msg = q->failed_parse_error;
    *len = q->failed_parse_len;
    return true;
}

int stmt_queue_hold_parse_error(struct stmt_queue *q, const uint8_t *msg, uint32_t len)
{
    /* the failed Parse: the first request still queued (held_query_on_error) */
    const char *name = q->count > 0 ? item_at(q, 0)->name : NULL;
    stmt_queue_forget_failed_parse(q);
    if (!name)
        return -ENOMEM;
    q->failed_parse_error = malloc(len);
    q->failed_parse_name = strdup(name);
    if (!q->failed_parse_error || !q->failed_parse_name) {
        stmt_queue_forget_failed_parse(q);
        return -ENOMEM;
    }
    memcpy(q->failed_parse_error, msg, len);
    q->failed_parse_len = len;
    return 0;
}

bool stmt_queue_held_parse_error(const struct stmt_queue *q, const uint8_t **msg, uint32_t *len)
{
    if (!q->failed_parse_error)
        return false;
    *msg = q->failed_parse_error;
    *len = q->failed_parse_len;
    return true;
}

int stmt_queue_push_failed_parse_sync(struct stmt_queue *q)
{
    int rc = push_item(q, REQ_SYNC, NULL);
    if (rc == 0) {
        last_item(q)->holds_query = true; /* not joined by the Query's Sync (push_item) */
        q->held_query = HELD_PARSE_SYNCED;
    }
    return rc;
}

bool stmt_queue_ready_is_ours(const struct stmt_queue *q)
{
    for (uint32_t i = 0; i < q->count; i++)
        if (item_at(q, i)->kind == REQ_SYNC)
            return item_at(q, i)->holds_query;
    return false;
}

const struct stmt_param_types *stmt_queue_types_before_error(const struct stmt_queue *q)
{
    uint32_t k = next_complete_at(q);
    if (k == q->count)
        return NULL;
    const struct stmt_queue_item *it = item_at(q, k);
    return it->kind == REQ_PARSE_OURS && it->def ? it->def->params : NULL;
}

int stmt_queue_describe_due(struct stmt_queue *q, const char *server_name,
                            const char *client_name, struct stmt_def *def)
{
    release_item(q, &q->describe_due);
    char *names = describe_names(server_name, client_name);
    if (!names)
        return -ENOMEM;
    q->describe_due.kind = REQ_DESCRIBE_OURS;
    q->describe_due.repeat = 1;
    q->describe_due.name = names;
    def_ref(def);
    q->describe_due.def = def;
    return 0;
}

int stmt_queue_take_due(struct stmt_queue *q)
{
    struct stmt_queue_item *due = &q->describe_due;
    int rc = stmt_queue_push_describe(q, due->name, client_name_of(due), due->def);
    release_item(q, due);
    return rc;
}

void stmt_queue_forget_due(struct stmt_queue *q, struct stmt_map *server_map)
{
    if (!q->describe_due.name)
        return;
    struct stmt_entry *e = stmt_map_get(server_map, q->describe_due.name);
    if (e && e->def == q->describe_due.def)
        (void)stmt_map_put(server_map, e->name, NULL); /* an existing entry: no allocation */
    release_item(q, &q->describe_due);
}

bool stmt_queue_describing(const struct stmt_queue *q, const char *server_name)
{
    if (q->describe_due.name && strcmp(q->describe_due.name, server_name) == 0)
        return true;
    for (uint32_t i = 0; i < q->count; i++) {
        const struct stmt_queue_item *it = item_at(q, i);
        if (it->kind == REQ_DESCRIBE_OURS && strcmp(it->name, server_name) == 0)
            return true;
    }
    return false;
}

/* The shape goes to an entry only while it holds the definition described: one replaced since
 * (the client closed and prepared the name again) waits for its own Describe. */
static void give_shape(struct stmt_map *m, const char *name, const struct stmt_def *def,
                       uint64_t shape)
{
    struct stmt_entry *e = name[0] ? stmt_map_get(m, name) : NULL;
    if (e && e->def == def)
        e->shape = shape;
}

void stmt_queue_drop_last_syncs(struct stmt_queue *q, int n)
{
    struct stmt_queue_item *last;
    q->mark_joinable = false;
    while (n-- > 0 && (last = last_item(q)) && last->kind == REQ_SYNC)
        if (--last->repeat == 0) {
            release_item(q, last); /* a Query's positions; a Sync entry holds no name */
            q->count--;
        }
}

/* Take out the k-th request (named: it stands for itself alone); those before it keep their
 * order. */
static void take_out(struct stmt_queue *q, uint32_t k)
{
    struct stmt_queue_item it = *item_at(q, k);
    for (uint32_t i = k; i > 0; i--)
        *item_at(q, i) = *item_at(q, i - 1);
    q->head = (q->head + 1) % q->cap;
    q->count--;
    release_item(q, &it);
}

enum stmt_reply_action stmt_on_complete(struct stmt_queue *q, struct stmt_map *server_map,
                                        uint8_t type)
{
    (void)server_map;
    uint32_t k = next_complete_at(q);
    if (k == q->count)
        return q->paused ? REPLY_FORWARD : REPLY_UNEXPECTED; /* a request not queued */
    struct stmt_queue_item *it = item_at(q, k);
    uint8_t kind = it->kind;
    bool parse = kind == REQ_PARSE_CLIENT || kind == REQ_PARSE_OURS;
    bool close = kind == REQ_CLOSE_CLIENT || kind == REQ_CLOSE_OURS || kind == REQ_MARK;
    if ((type == '1' && !parse) || (type == '3' && !close))
        return REPLY_UNEXPECTED;
    if (kind == REQ_MARK)
        q->mark_joinable = false; /* one CloseComplete, however many Queries it guarded */
    if (it->repeat > 1 && kind != REQ_MARK)
        it->repeat--; /* a nameless run */
    else
        take_out(q, k);
    return stmt_req_is_ours(kind) ? REPLY_SWALLOW : REPLY_FORWARD;
}

bool stmt_req_is_ours(enum stmt_req kind)
{
    return kind == REQ_PARSE_OURS || kind == REQ_CLOSE_OURS || kind == REQ_MARK;
}

int stmt_queue_push_mark(struct stmt_queue *q)
{
    return push_item(q, REQ_MARK, NULL);
}

bool stmt_queue_join_mark(struct stmt_queue *q)
{
    /* Nothing of sluice's own went out since that Query either: the queue ends with its mark
     * and its ReadyForQuery. */
    if (!q->mark_joinable || q->count < 2 || last_item(q)->kind != REQ_SYNC)
        return false;
    struct stmt_queue_item *mark = item_at(q, q->count - 2);
    if (mark->kind != REQ_MARK || mark->repeat == UINT32_MAX)
        return false;
    mark->repeat++;
    return true;
}

void stmt_queue_disarm_mark(struct stmt_queue *q)
{
    q->mark_joinable = false;
    for (uint32_t i = q->count; i-- > 0;) {
        struct stmt_queue_item *it = item_at(q, i);
        if (it->kind == REQ_MARK) {
            if (it->repeat > 1)
                it->repeat--; /* it still guards the Queries before */
            else
                it->kind = REQ_CLOSE_OURS; /* nameless: no statement of the server's to forget */
            return;
        }
    }
}

/* The Query held for sluice's Parses (HELD_FOR_PARSE), at an error: one of them failed when the
 * first of them still queued is the next request answered (the Close queued before it is
 * answered, so everything of the client's and of sluice's before it is); the server then skips
 * the rest of them, which stmt_on_ready undoes (no longer prepared). They are queued after every
 * Sync (nothing of the client's is framed after the held Query). An error before a Sync or Query
 * queued ahead of them leaves them to be answered (still held); another error, of the batch they
 * are in, makes the server skip them (no longer held). */
static void held_query_on_error(struct stmt_queue *q)
{
    uint32_t after_syncs = 0;
    for (uint32_t i = q->count; i-- > 0 && after_syncs == 0;)
        if (item_at(q, i)->kind == REQ_SYNC)
            after_syncs = i + 1;
    uint32_t ours = q->count;
    for (uint32_t i = after_syncs; i < q->count && ours == q->count; i++)
        if (item_at(q, i)->holds_query && item_at(q, i)->kind == REQ_PARSE_OURS)
            ours = i;
    if (ours == 0)
        q->held_query = HELD_PARSE_FAILED;
    else if (ours == q->count || after_syncs == 0)
        q->held_query = HELD_NONE;
}

uint32_t stmt_on_error(struct stmt_queue *q)
{
    if (q->paused && q->count == 0)
        return 0; /* the error of a request not queued: nothing known of its batch */
    q->batch_failed = true;
    q->mark_joinable = false;
    uint32_t skipped = 0;
    uint32_t marked = 0; /* the next entries answered by ReadyForQuery that are Queries' */
    uint32_t i = 0;
    while (i < q->count) {
        struct stmt_queue_item *it = item_at(q, i);
        if (it->kind == REQ_MARK) {
            marked += it->repeat;
            take_out(q, i);
            continue;
        }
        if (it->kind != REQ_SYNC) {
            i++; /* skipped too: stmt_on_ready undoes it at the Sync's ReadyForQuery */
            continue;
        }
        if (marked == 0)
            break; /* the batch's Sync */
        uint32_t queries = it->repeat < marked ? it->repeat : marked;
        marked -= queries;
        skipped += queries;
        if (it->repeat > queries) {
            it->repeat -= queries; /* a Sync right after the Queries: the batch's */
            break;
        }
        take_out(q, i);
    }
    if (q->held_query == HELD_FOR_PARSE)
        held_query_on_error(q); /* what the error skipped has left the queue */
    q->shape_awaited = q->held_query == HELD_FOR_PARSE;
    bool synced = false;
    for (uint32_t k = 0; k < q->count && !synced; k++)
        synced = item_at(q, k)->kind == REQ_SYNC;
    /* The Query held for sluice's failed Parse is framed next, and sluice's Sync goes in its
     * place (stmt_track.c): nothing of the client's is skipped. */
    q->skipping_to_sync = !synced && q->held_query != HELD_PARSE_FAILED;
    return skipped;
}

void stmt_queue_sync_framed(struct stmt_queue *q)
{
    q->skipping_to_sync = false;
}

/* Is one of the Parses and Describes a held Query waits for still queued (they are queued
 * after every Sync: a backward scan past what follows them, a Close or two)? */
static bool holds_query_queued(const struct stmt_queue *q)
{
    for (uint32_t i = q->count; i-- > 0;) {
        const struct stmt_queue_item *it = item_at(q, i);
        if (it->holds_query)
            return true;
        if (it->kind == REQ_SYNC)
            return false;
    }
    return false;
}

enum stmt_reply_action stmt_on_description(struct stmt_queue *q, struct stmt_map *server_map,
                                           struct stmt_map *client_map, uint8_t type,
                                           const uint8_t *body, uint32_t len)
{
    uint32_t k = next_complete_at(q);
    if (k == q->count || item_at(q, k)->kind != REQ_DESCRIBE_OURS)
        return REPLY_FORWARD; /* the client's own Describe, or a portal's */
    struct stmt_queue_item *it = item_at(q, k);
    if (type == 't') {
        if (body) {
            it->params_shape = shape_mix(14695981039346656037ull, body, len);
            /* the client's own Parse described (its name after the server's) */
            if (client_name_of(it)[0] && it->def && !it->def->params)
                it->def->params = param_types_of(body, len);
        }
        return REPLY_SWALLOW; /* the RowDescription or NoData follows */
    }
    uint64_t shape = type == 'n' ? STMT_SHAPE_NO_DATA
                     : body    ? stmt_shape_of(body, len)
                               : STMT_SHAPE_UNCHECKED;
    if (client_name_of(it)[0] && it->def && it->def->result == STMT_RESULT_UNKNOWN)
        it->def->result = type == 'n' ? STMT_RESULT_NONE : STMT_RESULT_ROWS;
    /* Its parameter types are part of what the client's statement is: a server's statement of
     * the same definition prepared with others (another client's Parse after DDL) differs. */
    if (shape != STMT_SHAPE_UNCHECKED && it->params_shape) {
        shape = shape_mix(shape, &it->params_shape, sizeof(it->params_shape));
        if (shape <= STMT_SHAPE_NO_DATA)
            shape += STMT_SHAPE_NO_DATA + 1;
    }
    give_shape(server_map, it->name, it->def, shape);
    if (client_map)
        give_shape(client_map, client_name_of(it), it->def, shape);
    take_out(q, k);
    /* A held Query waits for the last of sluice's Parses before it, described last: while one
     * of them is queued, a Parse that may fail is. Not only the last item tells: a Close of
     * another client's statement named in the Query (hide_others_statement) may follow them,
     * and the Query sent before their outcome would be skipped after a failed Parse, and never
     * answered (no Sync follows it). */
    if (q->held_query == HELD_FOR_PARSE && holds_query_queued(q))
        return REPLY_SWALLOW;
    q->shape_awaited = false; /* what waited looks again */
    if (q->held_query == HELD_FOR_PARSE)
        q->held_query = HELD_NONE; /* the Parses before it ran */
    return REPLY_SWALLOW;
}

void stmt_on_command_complete(struct stmt_queue *q, struct stmt_map *sql_prepared,
                              const char *tag)
{
    if (q->count == 0 || item_at(q, 0)->kind != REQ_DROP_CLIENT)
        return;
    if (strcmp(tag, "DEALLOCATE") != 0 && strcmp(tag, "DEALLOCATE ALL") != 0 &&
        strcmp(tag, "DISCARD ALL") != 0)
        return;
    /* it ran: what it dropped of the client's stays dropped, and the backend's own SQL
     * statements it names are gone */
    const char *name = item_at(q, 0)->name;
    if (name[0])
        stmt_map_remove(sql_prepared, name);
    else
        stmt_map_clear(sql_prepared);
    take_out(q, 0);
}

/* The client's request it stands for was skipped or refused by the server: undo what sluice
 * did when it was sent. */
static void undo_skipped(struct stmt_queue_item *it, struct stmt_map *server_map,
                         struct stmt_map **client_map)
{
    if (!it->name)
        return;
    struct stmt_map *mine = client_map ? *client_map : NULL;
    /* What the server holds under that name is unknown (a skipped Close left the old statement,
     * a skipped Parse left whatever was there before): marked unknown, the next use
     * re-prepares. */
    if (it->kind != REQ_SYNC && it->kind != REQ_DROP_CLIENT)
        stmt_map_put(server_map, it->name, NULL);
    switch (it->kind) {
    case REQ_PARSE_CLIENT:
        /* The client's own Parse of a name it did not have: as in Postgres, it has no
         * statement of that name (a Parse of a name it had is queued without one: 42P05 keeps
         * the old statement). */
        note_departed(mine, client_name_of(it), it->name);
        stmt_map_remove(mine, client_name_of(it));
        break;
    case REQ_CLOSE_CLIENT:
    case REQ_DROP_CLIENT:
        if (!client_map)
            break; /* its client left */
        if (it->dropped) {
            stmt_map_delete(*client_map); /* nothing after the DISCARD ran either */
            *client_map = it->dropped;
            it->dropped = NULL;
            break;
        }
        if (!it->def)
            break;
        if (!*client_map)
            *client_map = stmt_map_new();
        if (*client_map) /* out of memory: the statement stays forgotten, as before */
            (void)stmt_map_put(*client_map,
                               it->kind == REQ_CLOSE_CLIENT ? client_name_of(it) : it->name,
                               it->def);
        break;
    default:
        break;
    }
}

void stmt_on_ready(struct stmt_queue *q, struct stmt_map *server_map,
                   struct stmt_map **client_map)
{
    /* Still queued at ReadyForQuery: an error made the server skip it (or refused it). */
    uint32_t n = 0;
    while (n < q->count && item_at(q, n)->kind != REQ_SYNC)
        n++;
    for (uint32_t i = n; i-- > 0;)
        undo_skipped(item_at(q, i), server_map, client_map);
    for (uint32_t i = 0; i < n; i++)
        release_item(q, item_at(q, i));
    q->head = (q->head + n) % (q->cap ? q->cap : 1);
    q->count -= n;
    /* sluice's Sync after its failed Parse (HELD_PARSE_SYNCED) */
    bool ours = q->count > 0 && item_at(q, 0)->holds_query;
    if (q->count > 0 && --item_at(q, 0)->repeat == 0) { /* the Sync */
        release_item(q, item_at(q, 0));
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    if (q->named_as.server_name[0] && q->named_as_readies-- == 0)
        q->named_as.server_name[0] = '\0'; /* its batch is answered */
    if (q->parse_awaited && !parse_before_sync(q, NULL))
        q->parse_awaited = false; /* decided: the Parse that waited is framed now */
    /* A Query held for sluice's Parse, queued after this Sync, still waits for its answer; a
     * failed one's answer was the held Query's (its client left before it was framed). */
    if (q->held_query == HELD_PARSE_FAILED) {
        q->held_query = HELD_NONE;
        stmt_queue_forget_failed_parse(q);
    }
    q->shape_awaited = q->held_query == HELD_FOR_PARSE;
    q->batch_failed = false;
    q->skipping_to_sync = false;
    q->mark_joinable = false;
    if (ours)
        return; /* the Query framed after it, poisoned, is not answered yet */
    if (q->held_query == HELD_PARSE_SYNCED)
        q->held_query = HELD_NONE; /* its client left before the Query was framed */
    q->poisoned = 0;
    stmt_def_unref(q->poisoned_describe);
    q->poisoned_describe = NULL;
    stmt_queue_forget_failed_parse(q);
}

/* ---- injected messages ---- */

/* def's text as the server reads it in read_in (see prepared_put_parse): 0, and a new buffer
 * in *converted when it must be converted (else NULL: its bytes as sent), or the failure. */
static int text_read_in(const struct stmt_def *def, const char *read_in, const uint8_t *text,
                        size_t n, uint8_t **converted, size_t *converted_len)
{
    *converted = NULL;
    if (!def->encoding[0] || strcmp(def->encoding, STMT_ENCODING_UNKNOWN) == 0 || !read_in ||
        strcasecmp(def->encoding, read_in) == 0)
        return 0;
    return text_encoding_convert(def->encoding, read_in, text, n, converted, converted_len);
}

/* def's text: from the name's rest's NUL to its own (NULL when it has no end). */
static const uint8_t *text_of(const struct stmt_def *def, const uint8_t **text_end)
{
    const uint8_t *rest_end = memchr(def->data, '\0', def->len);
    *text_end = rest_end
                    ? memchr(rest_end + 1, '\0', def->len - (uint32_t)(rest_end + 1 - def->data))
                    : NULL;
    return *text_end ? rest_end + 1 : NULL;
}

int prepared_parse_readable(const struct stmt_def *def, const char *read_in)
{
    const uint8_t *text_end, *text = text_of(def, &text_end);
    uint8_t *converted = NULL;
    size_t converted_len;
    int rc = text ? text_read_in(def, read_in, text, (size_t)(text_end - text), &converted,
                                 &converted_len)
                  : 0;
    free(converted);
    return rc;
}

int prepared_put_parse(struct msg_out *o, const char *name, const struct stmt_def *def,
                       const char *read_in)
{
    /* def->data: the name's rest and its NUL, the text and its NUL, then the parameter types
     * the client named, which the types the server fixed at its Parse replace when known */
    const uint8_t *text_end, *text = text_of(def, &text_end);
    const uint8_t *rest_end = text ? text - 1 : NULL;
    uint8_t *converted = NULL;
    size_t converted_len = 0;
    if (text) {
        int rc =
            text_read_in(def, read_in, text, (size_t)(text_end - text), &converted, &converted_len);
        if (rc < 0)
            return rc;
    }
    codec_begin(o, 'P');
    size_t n = strlen(name);
    codec_put_bytes(o, name, n); /* the definition holds the rest and the NUL */
    uint32_t partial = n == STMT_KEY_MAX ? stmt_name_rest_partial(def->data, def->len) : 0;
    for (uint32_t i = 0; i < partial; i++)
        codec_put_u8(o, '_');
    if (converted) {
        codec_put_bytes(o, def->data + partial, (uint32_t)(rest_end + 1 - def->data) - partial);
        codec_put_bytes(o, converted, (uint32_t)converted_len);
        free(converted);
        partial = (uint32_t)(text_end - def->data); /* from the text's NUL on, as it is */
    }
    if (!def->params || !text_end) {
        codec_put_bytes(o, def->data + partial, def->len - partial);
        codec_end(o);
        return 0;
    }
    codec_put_bytes(o, def->data + partial, (uint32_t)(text_end + 1 - def->data) - partial);
    codec_put_i16(o, (int16_t)def->params->count);
    for (uint16_t i = 0; i < def->params->count; i++)
        codec_put_i32(o, (int32_t)def->params->oids[i]);
    codec_end(o);
    return 0;
}

void prepared_put_close(struct msg_out *o, const char *name)
{
    codec_begin(o, 'C');
    codec_put_u8(o, 'S');
    codec_put_cstring(o, name);
    codec_end(o);
}

void prepared_put_mark(struct msg_out *o)
{
    codec_begin(o, 'C');
    codec_put_u8(o, 'S');
    codec_put_cstring(o, STMT_MARK_NAME);
    codec_end(o);
}

void prepared_put_describe(struct msg_out *o, const char *name)
{
    codec_begin(o, 'D');
    codec_put_u8(o, 'S');
    codec_put_cstring(o, name);
    codec_end(o);
}

void prepared_put_parameter_description(struct msg_out *o, const struct stmt_param_types *t)
{
    codec_begin(o, 't');
    codec_put_i16(o, (int16_t)t->count);
    for (uint16_t i = 0; i < t->count; i++)
        codec_put_i32(o, (int32_t)t->oids[i]);
    codec_end(o);
}

/* ---- SQL that changes prepared statements ---- */

/* Blanks and comments, as Postgres's lexer skips them (block comments nest): a comment an ORM
 * puts before EXECUTE or DEALLOCATE hides nothing. */
static const char *skip_space(const char *s)
{
    return s + sql_skip_space(s, 0, SIZE_MAX);
}

static bool word(const char **s, const char *w)
{
    size_t n = strlen(w);
    if (strncasecmp(*s, w, n) != 0 || isalnum((unsigned char)(*s)[n]) || (*s)[n] == '_')
        return false;
    *s = skip_space(*s + n);
    return true;
}

enum sql_dealloc prepared_classify_query(const char *sql, char *name, size_t namelen)
{
    size_t at, span;
    return prepared_classify_query_at(sql, SQL_READ_STANDARD, name, namelen, &at, &span);
}

enum sql_dealloc prepared_classify_query_at(const char *sql, unsigned reading, char *name,
                                            size_t namelen, size_t *at, size_t *span)
{
    const char *s = skip_space(sql);
    name[0] = '\0';
    *at = *span = 0;
    if (word(&s, "discard"))
        return word(&s, "all") ? SQL_DISCARD_ALL : SQL_OTHER;
    enum sql_dealloc kind;
    if (word(&s, "explain")) {
        /* EXPLAIN [ANALYZE] [VERBOSE] EXECUTE name, or EXPLAIN (options) EXECUTE name: it runs
         * (or plans) the statement as EXECUTE does */
        if (*s == '(') {
            s = strchr(s, ')');
            if (!s)
                return SQL_OTHER;
            s = skip_space(s + 1);
        } else {
            (void)(word(&s, "analyze") || word(&s, "analyse"));
            (void)word(&s, "verbose");
        }
        if (!word(&s, "execute"))
            return SQL_OTHER;
        kind = SQL_EXECUTE;
    } else if (word(&s, "execute")) {
        kind = SQL_EXECUTE;
    } else if (word(&s, "prepare")) {
        const char *after = s;
        if (word(&after, "transaction") && (*after == '\'' || *after == 'E' || *after == 'e'))
            return SQL_OTHER; /* two-phase commit: its identifier is a string */
        kind = SQL_PREPARE;
    } else if (word(&s, "deallocate")) {
        (void)word(&s, "prepare");
        if (word(&s, "all"))
            return SQL_DEALLOCATE_ALL;
        kind = SQL_DEALLOCATE;
    } else {
        return SQL_OTHER;
    }
    const char *start = s;
    size_t n = 0;
    bool whole = true; /* the name as written ends where the scan stopped */
    if ((*s | 0x20) == 'u' && s[1] == '&' && s[2] == '"') {
        /* U&"\0061" [UESCAPE '!']: Postgres decodes its escapes (sql_unicode_name), and the
         * name written so is the same statement as `a`; one it refuses names nothing */
        size_t quote = (size_t)(s + 2 - sql), after;
        bool ended;
        size_t past = sql_skip_lexeme(sql, quote, SIZE_MAX, reading, &ended, NULL);
        /* Decoded, it is no longer than as written; Postgres keys it by its first 63 bytes,
         * however long (cut_sql_name), so it is read whole and kept as far as `name` holds,
         * as a quoted name is below. */
        char *decoded = ended ? malloc(past - quote + 1) : NULL;
        if (!decoded || sql_unicode_name_read(sql, quote, past, SIZE_MAX, reading, decoded,
                                              past - quote + 1, &after) != SQL_UNICODE_READ) {
            free(decoded);
            name[0] = '\0';
            return SQL_OTHER;
        }
        snprintf(name, namelen, "%s", decoded);
        free(decoded);
        n = strlen(name);
        s = sql + after;
    } else if (*s == '"') {
        for (s++; *s; s++) {
            if (*s == '"') {
                if (s[1] != '"')
                    break;
                s++;
            }
            if (n + 1 < namelen)
                name[n++] = *s;
        }
        whole = *s == '"';
        s += whole;
    } else {
        /* Postgres's identifier characters: every byte of a multibyte character is one */
        for (; isalnum((unsigned char)*s) || *s == '_' || *s == '$' || (unsigned char)*s >= 0x80;
             s++) {
            bool trail = sql_multibyte_lead((unsigned char)*s, reading) && s[1];
            if (n + 1 < namelen)
                name[n++] = trail ? *s : (char)tolower((unsigned char)*s);
            if (trail && n + 1 < namelen)
                name[n++] = *++s; /* as it is: not folded, and not the name's end */
            else
                s += trail;
        }
    }
    name[n] = '\0';
    if (!n)
        return SQL_OTHER;
    if (whole) {
        *at = (size_t)(start - sql);
        *span = (size_t)(s - start);
    }
    return kind;
}

bool prepared_query_may_name(const char *sql, size_t len)
{
    static const char *const words[] = {"execute", "deallocate", "discard", "prepare"};
    return sql_words_in(sql, len, words, sizeof(words) / sizeof(words[0])) != 0;
}

/* Does the text, read as `reading` says, end outside every literal, quoted name and comment
 * (else Postgres refuses it whole, and runs none of its statements)? */
static bool splits_whole(const char *sql, size_t len, unsigned reading)
{
    size_t end;
    for (size_t start = 0; start <= len; start = end + 1) {
        if (!sql_next_statement(sql, len, start, &end, reading, NULL))
            return false;
        if (end >= len || sql[end] == '\0')
            return true;
    }
    return true;
}

bool prepared_next_followed(const char *sql, size_t len, unsigned reading, size_t *pos,
                            struct sql_followed *f)
{
    if (*pos == 0 && !splits_whole(sql, len, reading))
        return false;
    size_t end;
    for (size_t start = *pos; start < len && sql[start]; start = end + 1) {
        if (!sql_next_statement(sql, len, start, &end, reading, NULL))
            return false;
        *pos = end + 1;
        size_t at, span;
        f->kind =
            prepared_classify_query_at(sql + start, reading, f->name, sizeof(f->name), &at, &span);
        if (f->kind == SQL_OTHER)
            continue;
        f->at = span ? start + at : 0;
        f->span = span;
        return true;
    }
    *pos = len;
    return false;
}
