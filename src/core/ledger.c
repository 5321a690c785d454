/* ledger: counts behind every cap, taken before and given back after (see ledger.h). Counters
 * move only in the takes and gives below; nothing here walks the pools (ledger_audit.c does, in
 * debug builds, to prove the counters true). */
#include "ledger.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "sluice.h"

static struct ledger_scope *scope_get(struct ledger_scope **head, const char *name)
{
    for (struct ledger_scope *s = *head; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    size_t len = strlen(name) + 1;
    struct ledger_scope *s = calloc(1, sizeof(*s) + len);
    if (!s)
        return NULL;
    memcpy(s->name, name, len);
    s->next = *head;
    *head = s;
    return s;
}

static const struct ledger_scope *scope_find(const struct ledger_scope *head, const char *name)
{
    for (const struct ledger_scope *s = head; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

struct ledger_key *ledger_key_get(struct ledger *l, const char *db_name, const char *user_name)
{
    for (struct ledger_key *k = l->keys; k; k = k->next)
        if (strcmp(k->db->name, db_name) == 0 && strcmp(k->user->name, user_name) == 0)
            return k;
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    struct ledger_scope *user = scope_get(&l->users, user_name);
    struct ledger_key *k = db && user ? calloc(1, sizeof(*k)) : NULL;
    if (!k)
        return NULL; /* a scope made above stays: empty, harmless, reused */
    k->db = db;
    k->user = user;
    k->next = l->keys;
    l->keys = k;
    return k;
}

/* The first limit that `add` more backends in key's scopes would pass. `closing`: a key one of
 * whose backends is about to go, so the scopes it shares with key count one less. own: counting
 * an auth_query connection (no pool key, no pool cap). */
static enum limit_kind passed(const struct ledger *l, const struct ledger_scope *db,
                              const struct ledger_scope *user, const struct ledger_key *key,
                              const struct ledger_caps *caps, int add,
                              const struct ledger_key *closing)
{
    int key_servers = key ? key->servers : 0;
    int db_servers = db ? db->servers : 0, user_servers = user ? user->servers : 0;
    if (closing) {
        key_servers -= closing == key;
        db_servers -= closing->db == db;
        user_servers -= closing->user == user;
    }
    if (key && key_servers + add > caps->pool)
        return LIMIT_POOL;
    if (key && add > 0 && caps->awaiting_probe)
        return LIMIT_DB;
    if (caps->db > 0 && db_servers + add > caps->db)
        return LIMIT_DB;
    if (caps->user > 0 && user_servers + add > caps->user)
        return LIMIT_USER;
    if (caps->global > 0 && l->servers - (closing != NULL) + add > caps->global)
        return LIMIT_GLOBAL;
    return LIMIT_NONE;
}

static void count(struct ledger *l, struct ledger_scope *db, struct ledger_scope *user, int by)
{
    db->servers += by;
    user->servers += by;
    l->servers += by;
    assert(db->servers >= 0 && user->servers >= 0 && l->servers >= 0);
}

enum limit_kind ledger_take_server(struct ledger *l, struct ledger_key *key,
                                   const struct ledger_caps *caps)
{
    /* lock l->mu */
    enum limit_kind k = passed(l, key->db, key->user, key, caps, 1, NULL);
    if (k == LIMIT_NONE) {
        key->servers++;
        count(l, key->db, key->user, 1);
    }
    /* unlock */
    return k;
}

void ledger_give_server(struct ledger *l, struct ledger_key *key)
{
    /* lock l->mu */
    key->servers--;
    assert(key->servers >= 0);
    count(l, key->db, key->user, -1);
    /* unlock */
}

enum limit_kind ledger_take_own(struct ledger *l, const char *db_name, const char *user_name,
                                const struct ledger_caps *caps)
{
    /* lock l->mu */
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    struct ledger_scope *user = scope_get(&l->users, user_name);
    if (!db || !user)
        return LIMIT_GLOBAL; /* out of memory: refused like a full cap; tried again later */
    enum limit_kind k = passed(l, db, user, NULL, caps, 1, NULL);
    if (k == LIMIT_NONE) {
        count(l, db, user, 1);
        l->own_servers++;
    }
    /* unlock */
    return k;
}

void ledger_give_own(struct ledger *l, const char *db_name, const char *user_name)
{
    /* lock l->mu */
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    struct ledger_scope *user = scope_get(&l->users, user_name);
    assert(db && user); /* made by the take */
    if (!db || !user)
        return;
    count(l, db, user, -1);
    l->own_servers--;
    /* unlock */
}

enum limit_kind ledger_server_limit(const struct ledger *l, const struct ledger_key *key,
                                    const struct ledger_caps *caps)
{
    return passed(l, key->db, key->user, key, caps, 1, NULL);
}

bool ledger_fits_if_closed(const struct ledger *l, const struct ledger_key *key,
                           const struct ledger_caps *caps, const struct ledger_key *closing)
{
    return passed(l, key->db, key->user, key, caps, 1, closing) == LIMIT_NONE;
}

enum limit_kind ledger_over_limit(const struct ledger *l, const struct ledger_key *key,
                                  const struct ledger_caps *caps)
{
    return passed(l, key->db, key->user, key, caps, 0, NULL);
}

int ledger_db_servers(const struct ledger *l, const char *db_name)
{
    if (!db_name)
        return l->servers;
    const struct ledger_scope *s = scope_find(l->dbs, db_name);
    return s ? s->servers : 0;
}

int ledger_user_servers(const struct ledger *l, const char *user_name)
{
    if (!user_name)
        return l->servers;
    const struct ledger_scope *s = scope_find(l->users, user_name);
    return s ? s->servers : 0;
}

enum limit_kind ledger_lease_limit(const struct worker *worker, const struct budget *b)
{
    if (!b)
        return LIMIT_NONE;
    if (b->max_servers > 0 && b->leases >= b->max_servers)
        return LIMIT_BUDGET;
    int held_for_others = 0, leases = 0, any_min = 0;
    for (int i = 0; i < worker->proc->budgets.n; i++) {
        const struct budget *o = worker->proc->budgets.items[i];
        leases += o->leases;
        any_min |= o->min_servers;
        if (o != b && o->min_servers > o->leases)
            held_for_others += o->min_servers - o->leases;
    }
    enum limit_kind key;
    /* The capacity is resolved from the pools' config only when some budget reserves. */
    if (any_min && leases + held_for_others >= budget_shared_capacity(worker, &key))
        return LIMIT_RESERVED;
    return LIMIT_NONE;
}

int ledger_lease_room(const struct worker *worker, const struct budget *b)
{
    if (ledger_lease_limit(worker, b) != LIMIT_NONE)
        return 0;
    return b && b->max_servers > 0 ? b->max_servers - b->leases : -1;
}

enum limit_kind ledger_take_lease(struct worker *worker, struct budget *b)
{
    if (!b)
        return LIMIT_NONE;
    /* lock worker->proc->ledger.mu */
    enum limit_kind k = ledger_lease_limit(worker, b);
    if (k == LIMIT_NONE)
        b->leases++;
    /* unlock */
    return k;
}

void ledger_give_lease(struct worker *worker, struct budget *b)
{
    (void)worker; /* its ledger's lock, with workers */
    if (!b)
        return;
    b->leases--;
    assert(b->leases >= 0);
}

bool ledger_take_client(struct ledger *l, struct budget *b)
{
    (void)l; /* its lock, with workers */
    if (!b)
        return true;
    if (b->max_clients > 0 && b->clients >= b->max_clients)
        return false;
    b->clients++;
    return true;
}

void ledger_give_client(struct ledger *l, struct budget *b)
{
    (void)l;
    if (!b)
        return;
    b->clients--;
    assert(b->clients >= 0);
}

enum login_take ledger_take_login(struct ledger *l, const char *db_name, const char *user_name,
                                  const struct ledger_login_caps *caps)
{
    /* lock l->mu */
    struct ledger_scope *db = NULL, *user = NULL;
    if (db_name) {
        db = scope_get(&l->dbs, db_name);
        user = scope_get(&l->users, user_name);
        if (!db || !user)
            return LOGIN_OUT_OF_MEMORY; /* a scope made above stays: empty, harmless, reused */
    }
    if (caps->global > 0 && l->clients >= caps->global)
        return LOGIN_OVER_CLIENT_CONN;
    if (db && caps->db > 0 && db->clients >= caps->db)
        return LOGIN_OVER_DB_CLIENTS;
    if (user && caps->user > 0 && user->clients >= caps->user)
        return LOGIN_OVER_USER_CLIENTS;
    l->clients++;
    if (db) {
        db->clients++;
        user->clients++;
    }
    /* unlock */
    return LOGIN_COUNTED;
}

void ledger_give_login(struct ledger *l, const char *db_name, const char *user_name)
{
    /* lock l->mu */
    l->clients--;
    assert(l->clients >= 0);
    if (db_name) {
        struct ledger_scope *db = scope_get(&l->dbs, db_name);
        struct ledger_scope *user = scope_get(&l->users, user_name);
        assert(db && user); /* made by the take */
        if (db && user) {
            db->clients--;
            user->clients--;
            assert(db->clients >= 0 && user->clients >= 0);
        }
    }
    /* unlock */
}

int ledger_db_clients(const struct ledger *l, const char *db_name)
{
    if (!db_name)
        return l->clients;
    const struct ledger_scope *s = scope_find(l->dbs, db_name);
    return s ? s->clients : 0;
}

int ledger_user_clients(const struct ledger *l, const char *user_name)
{
    if (!user_name)
        return l->clients;
    const struct ledger_scope *s = scope_find(l->users, user_name);
    return s ? s->clients : 0;
}

void ledger_free(struct ledger *l)
{
    while (l->keys) {
        struct ledger_key *k = l->keys;
        l->keys = k->next;
        free(k);
    }
    struct ledger_scope **heads[] = {&l->dbs, &l->users};
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        while (*heads[i]) {
            struct ledger_scope *s = *heads[i];
            *heads[i] = s->next;
            free(s);
        }
    }
    memset(l, 0, sizeof(*l));
}

enum limit_kind ledger_pool_limit(const struct pool *p, bool use_reserve)
{
    struct ledger_caps caps;
    budget_server_caps(p, use_reserve, &caps);
    return ledger_server_limit(&p->worker->proc->ledger, p->ledger_key, &caps);
}

bool ledger_pool_fits_if_closed(const struct pool *p, const struct pool *closing)
{
    struct ledger_caps caps;
    budget_server_caps(p, false, &caps);
    return ledger_fits_if_closed(&p->worker->proc->ledger, p->ledger_key, &caps,
                                 closing->ledger_key);
}

enum limit_kind ledger_pool_over_limit(const struct pool *p)
{
    struct ledger_caps caps;
    budget_server_caps(p, true, &caps);
    return ledger_over_limit(&p->worker->proc->ledger, p->ledger_key, &caps);
}
