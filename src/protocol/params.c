/* params: session parameter sets and the SETs that reconcile them (see params.h). Names compare
 * case-insensitively, as GUC names do. */
#include "params.h"

#include "siphash.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const reported[] = {
    "application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
    "in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser", "server_encoding",
    "server_version", "session_authorization", "standard_conforming_strings", "TimeZone",
};
static const char *const client_settable[] = {
    "application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
    "IntervalStyle", "standard_conforming_strings", "TimeZone",
};

/* The list's own spelling of name (GUC names compare case-insensitively), or NULL. */
static const char *in_list(const char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(list[i], name) == 0)
            return list[i];
    return NULL;
}

#define REPORTED_COUNT (sizeof(reported) / sizeof(reported[0]))

bool params_is_reported(const char *name)
{
    return in_list(reported, REPORTED_COUNT, name) != NULL;
}

const char *params_reported_name(size_t i)
{
    return i < REPORTED_COUNT ? reported[i] : NULL;
}

bool params_is_client_settable(const char *name)
{
    return in_list(client_settable, sizeof(client_settable) / sizeof(client_settable[0]), name) !=
           NULL;
}

void params_init(struct param_set *p)
{
    memset(p, 0, sizeof(*p));
}

/* The reported names are interned: an entry for one of them allocates only its value (a client
 * has application_name, and 10,000 idle clients make every byte count). */
static bool is_interned(const char *name)
{
    for (size_t i = 0; i < REPORTED_COUNT; i++)
        if (reported[i] == name)
            return true;
    return false;
}

static void entry_free(struct param *e)
{
    free(is_interned(e->name) ? e->value : e->name);
}

void params_free(struct param_set *p)
{
    for (int i = 0; i < p->n; i++)
        entry_free(&p->items[i]);
    free(p->items);
    free(p->index);
    params_init(p);
}

/* ---- the name index ---- */

/* Sets this small are scanned: most clients have one or two names, servers about a dozen. */
#define INDEX_FROM 16

static uint32_t name_hash(const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a over the lower-cased name: GUC names ignore case */
    for (const char *c = name; *c; c++) {
        h ^= (uint8_t)tolower((unsigned char)*c);
        h *= 16777619u;
    }
    return h;
}

/* The slot holding name, or the empty slot where it would go. */
static uint32_t index_slot(const struct param_set *p, const char *name)
{
    uint32_t mask = p->index_cap - 1u;
    for (uint32_t k = name_hash(name) & mask;; k = (k + 1) & mask)
        if (!p->index[k] || strcasecmp(p->items[p->index[k] - 1].name, name) == 0)
            return k;
}

static int index_rebuild(struct param_set *p, uint32_t cap)
{
    uint16_t *index = calloc(cap, sizeof(*index));
    if (!index)
        return -ENOMEM;
    free(p->index);
    p->index = index;
    p->index_cap = cap;
    for (int i = 0; i < p->n; i++)
        p->index[index_slot(p, p->items[i].name)] = (uint16_t)(i + 1);
    return 0;
}

/* Room in the index for one more name (made when the set grows past INDEX_FROM). */
static int index_reserve(struct param_set *p)
{
    uint32_t need = 2u * ((uint32_t)p->n + 1u);
    if (need < 2u * INDEX_FROM || need <= p->index_cap)
        return 0;
    uint32_t cap = p->index_cap ? p->index_cap : 4u * INDEX_FROM;
    while (cap < need)
        cap *= 2;
    return index_rebuild(p, cap);
}

/* Item i leaves the index (linear probing: later slots of its run move up, Knuth 6.4 R). */
static void index_remove(struct param_set *p, int i)
{
    uint32_t mask = p->index_cap - 1u;
    uint32_t hole = index_slot(p, p->items[i].name);
    p->index[hole] = 0;
    for (uint32_t k = (hole + 1) & mask; p->index[k]; k = (k + 1) & mask) {
        uint32_t home = name_hash(p->items[p->index[k] - 1].name) & mask;
        /* the entry at k may fill the hole unless its home lies cyclically in (hole, k] */
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            p->index[hole] = p->index[k];
            p->index[k] = 0;
            hole = k;
        }
    }
}

static int find(const struct param_set *p, const char *name)
{
    if (p->index_cap) {
        uint16_t at = p->index[index_slot(p, name)];
        return at ? at - 1 : -1;
    }
    for (int i = 0; i < p->n; i++)
        if (strcasecmp(p->items[i].name, name) == 0)
            return i;
    return -1;
}

const char *params_get(const struct param_set *p, const char *name)
{
    int i = find(p, name);
    return i < 0 ? NULL : p->items[i].value;
}

const char params_unknown[] = "(unknown to sluice)";

static bool same_value(const char *have, const char *value)
{
    if (have == params_unknown || value == params_unknown)
        return have == value;
    return strcmp(have, value) == 0;
}

/* One allocation per entry: the value alone for an interned name, else "name\0value\0" (name
 * owns it, value points inside); params_unknown is never copied, only pointed at. */
static int entry_fill(struct param *e, const char *name, const char *value)
{
    const char *known = in_list(reported, REPORTED_COUNT, name);
    if (value == params_unknown) {
        if (known)
            return -EINVAL; /* the server reports these: never unknown */
        if (!(e->name = strdup(name)))
            return -ENOMEM;
        e->value = (char *)params_unknown;
        return 0;
    }
    if (known) {
        char *v = strdup(value);
        if (!v)
            return -ENOMEM;
        e->name = (char *)known; /* never freed: entry_free knows */
        e->value = v;
        return 0;
    }
    size_t nlen = strlen(name) + 1, vlen = strlen(value) + 1;
    char *block = malloc(nlen + vlen);
    if (!block)
        return -ENOMEM;
    memcpy(block, name, nlen);
    memcpy(block + nlen, value, vlen);
    e->name = block;
    e->value = block + nlen;
    return 0;
}

/* Item i was added: when it is client_encoding, the set keeps its value at hand. (A change or
 * a removal follows the value the set keeps: `name` may be the freed item's own.) */
static void note_client_encoding(struct param_set *p, int i)
{
    if (strcasecmp(p->items[i].name, "client_encoding") == 0)
        p->client_encoding = p->items[i].value;
}

int params_set(struct param_set *p, const char *name, const char *value)
{
    int i = find(p, name);
    if (!value) {
        if (i >= 0) {
            int last = p->n - 1;
            if (p->index_cap) {
                index_remove(p, i);
                if (i != last)
                    p->index[index_slot(p, p->items[last].name)] = (uint16_t)(i + 1);
            }
            if (p->items[i].value == p->client_encoding)
                p->client_encoding = NULL;
            entry_free(&p->items[i]);
            p->items[i] = p->items[last];
            p->n--;
            p->generation++;
        }
        return 0;
    }
    if (i >= 0) {
        if (same_value(p->items[i].value, value))
            return 0;
        struct param fresh;
        if (entry_fill(&fresh, p->items[i].name, value) < 0)
            return -ENOMEM;
        if (p->items[i].value == p->client_encoding)
            p->client_encoding = fresh.value;
        entry_free(&p->items[i]);
        p->items[i] = fresh;
        p->generation++;
        return 0;
    }
    if (p->n == p->cap) {
        /* Most clients send one parameter or two at startup (application_name, maybe
         * client_encoding): start with room for one; a server's dozen grows by doubling. The
         * counts are 16 bits: a set past 32768 names is refused as out of memory. */
        if (p->cap >= UINT16_MAX / 2 + 1)
            return -ENOMEM;
        uint16_t cap = p->cap ? (uint16_t)(p->cap * 2) : 1;
        struct param *items = realloc(p->items, cap * sizeof(*items));
        if (!items)
            return -ENOMEM;
        p->items = items;
        p->cap = cap;
    }
    if (index_reserve(p) < 0 || entry_fill(&p->items[p->n], name, value) < 0)
        return -ENOMEM;
    if (p->index_cap)
        p->index[index_slot(p, name)] = (uint16_t)(p->n + 1);
    p->n++;
    p->generation++;
    note_client_encoding(p, p->n - 1);
    return 0;
}

int params_copy(struct param_set *dst, const struct param_set *src)
{
    for (int i = 0; i < src->n; i++) {
        int rc = params_set(dst, src->items[i].name, src->items[i].value);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void put_str(struct msg_out *o, const char *s)
{
    codec_put_bytes(o, s, strlen(s));
}

/* A string literal, dollar-quoted: its bytes are taken as they are, whatever
 * standard_conforming_strings says, and nothing is escaped. An escaping backslash would not be
 * safe: the value is in the client's client_encoding, and in SJIS, BIG5 or GBK the byte of a
 * backslash ends some characters ('ソ' is 0x83 0x5C), so a doubled one would be half a character
 * and half an escape, and a value could end the literal and run the rest of itself as SQL. No
 * byte of a character of those encodings is a '$' (their second bytes are 0x40 and above). The
 * tag is one the value does not hold. */
static void put_literal(struct msg_out *o, const char *v)
{
    char tag[32] = "$sluice$";
    for (unsigned n = 1; strstr(v, tag) != NULL; n++)
        snprintf(tag, sizeof(tag), "$sluice%u$", n);
    put_str(o, tag);
    put_str(o, v);
    put_str(o, tag);
}

/* The length of the UTF-8 character whose first byte is b, as Postgres's pg_utf_mblen reads it
 * (it does not check the rest). */
static size_t utf8_char_len(unsigned char b)
{
    if ((b & 0x80) == 0)
        return 1;
    if ((b & 0xe0) == 0xc0)
        return 2;
    if ((b & 0xf0) == 0xe0)
        return 3;
    if ((b & 0xf8) == 0xf0)
        return 4;
    return 1;
}

size_t params_name_kept_len(const char *v, const char *server_encoding)
{
    size_t len = strlen(v), limit = 63; /* NAMEDATALEN - 1 */
    bool utf8 = !server_encoding || strcasecmp(server_encoding, "UTF8") == 0;
    if (!utf8)
        return len < limit ? len : limit;
    size_t clen = 0;
    while (clen < len) {
        size_t l = utf8_char_len((unsigned char)v[clen]);
        if (clen + l > limit)
            break;
        clen += l;
    }
    return clen;
}

/* application_name as the server's check hook would clean it from a startup packet, once cut
 * to a name's length (params_name_kept_len; cleaned first, a cut character would leave extra
 * '?'s): a byte that is not printable ASCII becomes '?' (Postgres 15 and older) or "\xNN" (16
 * and later). Sent as
 * it came, such bytes would fail the whole query (they need not be valid in the server's
 * encoding), where Postgres accepts them at login. */
/* An application_name sluice cuts itself before cleaning it: a long one that needs cleaning. One
 * that needs none goes whole: Postgres cuts it as at login, and its NOTICE (swallowed) teaches
 * login_notice.c where Postgres raises the one a client is due. */
static bool cut_by_sluice(const char *v)
{
    bool needs_cleaning = false;
    size_t n = 0;
    for (; v[n]; n++)
        needs_cleaning = needs_cleaning || (unsigned char)v[n] < 32 || (unsigned char)v[n] > 126;
    return needs_cleaning && n >= 64;
}

static void put_clean_ascii_literal(struct msg_out *o, const char *v,
                                    const struct param_set *server)
{
    const char *version = params_get(server, "server_version");
    bool hex = version && atoi(version) >= 16;
    struct msg_out clean;
    codec_out_init(&clean);
    const char *end =
        v + (cut_by_sluice(v) ? params_name_kept_len(v, params_get(server, "server_encoding"))
                              : strlen(v));
    for (; v < end; v++) {
        unsigned char b = (unsigned char)*v;
        if (b >= 32 && b <= 126) {
            codec_put_u8(&clean, b);
        } else if (hex) {
            char esc[5];
            snprintf(esc, sizeof(esc), "\\x%02x", b);
            codec_put_bytes(&clean, esc, 4);
        } else {
            codec_put_u8(&clean, '?');
        }
    }
    codec_put_u8(&clean, 0);
    if (clean.oom)
        o->oom = true;
    else
        put_literal(o, (const char *)clean.data);
    codec_out_free(&clean);
}

static int put_set_if_differs(const struct param_set *server, const char *name, const char *value,
                              struct msg_out *sql)
{
    const char *have = params_get(server, name);
    if (have && same_value(have, value))
        return 0;
    /* set_config takes the value as the GUC's text, as a startup parameter is: SET would read a
     * list like search_path "public,pg_catalog" as one quoted name. Names here passed
     * params_valid_name or the SET parser: no quote to escape. */
    put_str(sql, "SELECT pg_catalog.set_config('");
    put_str(sql, name);
    put_str(sql, "', ");
    bool app = strcasecmp(name, "application_name") == 0;
    if (app)
        put_clean_ascii_literal(sql, value, server);
    else
        put_literal(sql, value);
    put_str(sql, ", false)");
    /* A value cut here raises no NOTICE; a column name of 64 bytes raises Postgres's own (the
     * same truncate_identifier), swallowed, which teaches login_notice.c its F, L, R. It stays
     * because nothing simpler gives the same bytes: in transaction mode this sync is what a
     * worker's first such client waits for before its welcome, and no backend raised 42622
     * before it (the pool's backends log in without the client's name). Without it that client
     * gets the NOTICE without F, L, R (test_login_notices.py's multibyte case in transaction
     * mode fails, measured), which a client shows (psql's VERBOSITY verbose: LOCATION;
     * psycopg's Diagnostic.source_file). Provoking a 42622 once per process instead needs a
     * query and a state of its own; assuming the fields per version is what login_notice.h
     * refuses. This costs an alias on the rare sync of a long non-ASCII name. */
    if (app && cut_by_sluice(value))
        put_str(sql, " AS sluice_name_truncation_"
                     "notice_learned_here_for_clients_at_login_time");
    codec_put_u8(sql, 0);
    return 1;
}

static bool held_without_entry(const char *name, const char *value);

void params_build_set(const char *name, const char *value, struct msg_out *sql)
{
    if (strcasecmp(name, "seed") == 0 && held_without_entry(name, value))
        return; /* a login's valid seed seeds nothing in Postgres (held_without_entry) */
    struct param_set none;
    params_init(&none);
    (void)put_set_if_differs(&none, name, value, sql);
}

/* RESET name, except that a name the server cannot reset is no error: it came from a client's
 * SET that failed, or a login the server refused, and must not fail another client's sync.
 * set_config with a NULL value resets, as RESET does; the block catches what fails. Names here
 * passed params_valid_name or the SET parser (letters, digits, '_', '$', '.'): no quote to
 * escape, but a '$': the block's tag is one the name does not hold (app.x$sluice$ would end
 * it, the RESET would fail, and the value would stay for the next client). */
static void put_reset(struct msg_out *sql, const char *name)
{
    char tag[32] = "$sluice$";
    for (unsigned n = 1; strstr(name, tag) != NULL; n++)
        snprintf(tag, sizeof(tag), "$sluice%u$", n);
    put_str(sql, "DO ");
    put_str(sql, tag);
    put_str(sql, "BEGIN PERFORM pg_catalog.set_config('");
    put_str(sql, name);
    put_str(sql, "', NULL, false); EXCEPTION WHEN OTHERS THEN NULL; END");
    put_str(sql, tag);
    codec_put_u8(sql, 0);
}

static bool parse_ms(const char *v, int64_t *ms);

/* Does a backend hold what a client wants of this unreported name where its record has no
 * entry, so that no statement is owed? idle_session_timeout 0: every server logs in with 0 (the
 * option server_connect.c sends), so a client that wants it off pays no SET and no RESET per
 * transaction. seed, a valid one: Postgres applies it only when SET (check_random_seed arms
 * setseed for an interactive source), never from a login's options, and SHOW never shows it
 * ("unavailable"); a set_config of a login's seed would seed the client's random(), which
 * Postgres does not. An invalid seed is still sent: the client gets Postgres's error for it. */
static bool held_without_entry(const char *name, const char *value)
{
    if (strcasecmp(name, "idle_session_timeout") == 0) {
        int64_t ms;
        return value != params_unknown && parse_ms(value, &ms) && ms == 0;
    }
    if (strcasecmp(name, "seed") == 0 && value != params_unknown) {
        char *end;
        errno = 0;
        double x = strtod(value, &end);
        while (end != value && isspace((unsigned char)*end))
            end++;
        return end != value && *end == '\0' && errno != ERANGE && x >= -1.0 && x <= 1.0;
    }
    return false;
}

int params_build_sync(const struct param_set *base, const struct param_set *own,
                      const struct param_set *server, struct msg_out *sql)
{
    int n = 0;
    for (int i = 0; i < own->n; i++) {
        const char *name = own->items[i].name, *value = own->items[i].value;
        if (!params_get(server, name) && held_without_entry(name, value))
            continue;
        n += put_set_if_differs(server, name, value, sql);
    }
    for (int i = 0; base && i < base->n; i++) {
        const char *name = base->items[i].name;
        if (params_is_client_settable(name) && !params_get(own, name))
            n += put_set_if_differs(server, name, base->items[i].value, sql);
    }
    for (int i = 0; i < server->n; i++) {
        const char *name = server->items[i].name;
        if (params_is_reported(name) || params_get(own, name))
            continue;
        put_reset(sql, name);
        n++;
    }
    return n;
}

static const char *const acts_while_idle[] = {"idle_session_timeout"};

bool params_acts_while_idle(const char *name)
{
    return in_list(acts_while_idle, sizeof(acts_while_idle) / sizeof(acts_while_idle[0]), name);
}

int params_forget_acts_while_idle(struct param_set *server)
{
    for (size_t i = 0; i < sizeof(acts_while_idle) / sizeof(acts_while_idle[0]); i++) {
        int rc = params_forget(server, acts_while_idle[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int params_build_release(const struct param_set *startup, struct param_set *server,
                         struct msg_out *sql)
{
    int n = 0;
    for (size_t i = 0; i < sizeof(acts_while_idle) / sizeof(acts_while_idle[0]); i++) {
        const char *name = acts_while_idle[i];
        const char *login = params_get(startup, name);
        int64_t ms;
        if (login && parse_ms(login, &ms) && ms > 0) {
            /* Opened with a client's login value (session mode): a reset gives that value
             * back, so the parameter is turned off, and the sync gives the next client with
             * this login its value again (the server's record says 0). */
            n += put_set_if_differs(server, name, "0", sql);
            if (params_set(server, name, "0") < 0)
                return -ENOMEM;
        } else if (params_get(server, name)) {
            /* the record's 0 is the value the backend logged in with: nothing to give back */
            if (!held_without_entry(name, params_get(server, name))) {
                put_reset(sql, name);
                n++;
            }
            if (params_set(server, name, NULL) < 0)
                return -ENOMEM;
        }
    }
    return sql->oom ? -ENOMEM : n;
}

/* guc.c parse_int and convert_to_base_unit for a GUC_UNIT_MS parameter: the number as strtol
 * (base 0: 0x10, 010) or, followed by '.', 'e' or 'E', strtod reads it; spaces, then a unit
 * (case-sensitive) and spaces; a value in a unit rounded first to the next smaller unit, then
 * (rint, half to even) to the millisecond. */
static bool parse_ms(const char *v, int64_t *ms)
{
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"min", 60000},
                 {"s", 1000},     {"ms", 1},      {"us", 0.001}};
    char *end;
    errno = 0;
    double x = (double)strtol(v, &end, 0);
    if (*end == '.' || *end == 'e' || *end == 'E' || errno == ERANGE) {
        errno = 0;
        x = strtod(v, &end);
    }
    if (end == v || errno == ERANGE)
        return false;
    while (isspace((unsigned char)*end))
        end++;
    if (*end) {
        size_t len = 0;
        while (end[len] && !isspace((unsigned char)end[len]))
            len++;
        size_t u = 0;
        while (u < sizeof(units) / sizeof(units[0]) &&
               (strlen(units[u].unit) != len || strncmp(units[u].unit, end, len) != 0))
            u++;
        if (u == sizeof(units) / sizeof(units[0]))
            return false;
        x *= units[u].ms;
        if (u + 1 < sizeof(units) / sizeof(units[0]))
            x = rint(x / units[u + 1].ms) * units[u + 1].ms;
        for (end += len; isspace((unsigned char)*end); end++)
            ;
        if (*end)
            return false;
    }
    x = rint(x);
    if (!(x >= 0 && x <= 2147483647.0)) /* the parameter's range, 0 to INT_MAX ms */
        return false;
    *ms = (int64_t)x;
    return true;
}

int64_t params_idle_session_timeout_ms(const struct param_set *own)
{
    const char *v = params_get(own, "idle_session_timeout");
    int64_t ms;
    return v && v != params_unknown && parse_ms(v, &ms) ? ms : 0;
}

/* The restore and the read back run in the client's session, under its search_path: every
 * function and operator they name is pg_catalog's, so that a client whose own schema comes
 * first (SET search_path = mine, pg_catalog, with a lower() or an = of its own) cannot make
 * sluice misread what its server holds and leave its values to the next client. */
#define SAME_NAME "pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) pg_catalog.lower(l.n)"

int params_build_restore(const struct param_set *login, bool local, struct param_set *server,
                         struct msg_out *sql)
{
    if (login->n == 0)
        return 0;
    /* pg_settings.source is 'session' for a value SET in the session (sluice's own syncs
     * included) and the reset source otherwise: only a name the backend holds at its reset value
     * is given the login value. A name pg_settings does not show (a placeholder such as app.x)
     * has no source to read: it is set when it holds its reset value on a pooled backend, '',
     * so that a value SET after the reset (set_config('app.x', $1, false)) stays. */
    put_str(sql, "SELECT pg_catalog.set_config(l.n, l.v, ");
    put_str(sql, local ? "true" : "false");
    put_str(sql, ") FROM (VALUES ");
    for (int i = 0; i < login->n; i++) {
        const char *name = login->items[i].name;
        if (!params_is_reported(name) && params_forget(server, name) < 0)
            return -ENOMEM; /* whether the reset or the restore left it is not seen */
        put_str(sql, i ? ", (" : "(");
        put_literal(sql, name);
        put_str(sql, ", ");
        if (strcasecmp(name, "application_name") == 0)
            put_clean_ascii_literal(sql, login->items[i].value, server);
        else
            put_literal(sql, login->items[i].value);
        put_str(sql, ")");
    }
    put_str(sql, ") AS l(n, v) WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_settings s WHERE "
                 SAME_NAME " AND s.source OPERATOR(pg_catalog.=) 'session') AND (EXISTS (SELECT "
                 "FROM pg_catalog.pg_settings s WHERE " SAME_NAME ") OR coalesce("
                 "pg_catalog.current_setting(l.n, true), '') OPERATOR(pg_catalog.=) '')");
    codec_put_u8(sql, 0);
    return sql->oom ? -ENOMEM : 1;
}

int params_build_readback(const struct param_set *names, uint32_t max_value,
                          struct msg_out *sql)
{
    if (names->n == 0)
        return 0;
    /* One row per name (a DataRow each stays small): the name as sent; its value (NULL for a
     * name the backend does not know, or one longer than max_value); whether the backend holds
     * its reset value: a source other than 'session' in pg_settings, or for a placeholder such
     * as app.x (not listed there) '', what it holds after a RESET (its existence is no value:
     * docs/pool-modes.md); and whether the value was too long to send. */
    char max[16];
    snprintf(max, sizeof(max), "%u", max_value);
    put_str(sql, "SELECT l.n, CASE WHEN pg_catalog.octet_length(v.v) OPERATOR(pg_catalog.<=) ");
    put_str(sql, max);
    put_str(sql, " THEN v.v END, CASE WHEN s.name IS NOT NULL THEN s.source "
                 "OPERATOR(pg_catalog.<>) 'session' ELSE coalesce(v.v, '') OPERATOR(pg_catalog.=) "
                 "'' END, coalesce(pg_catalog.octet_length(v.v) OPERATOR(pg_catalog.>) ");
    put_str(sql, max);
    put_str(sql, ", false) FROM (VALUES ");
    for (int i = 0; i < names->n; i++) {
        put_str(sql, i ? ", (" : "(");
        put_literal(sql, names->items[i].name);
        put_str(sql, ")");
    }
    /* pg_settings is read once (a join, not a subquery per name: it runs under the client's
     * own statement_timeout, and 64 names took 2.6 ms that way, 0.7 ms so). current_setting
     * raises 42501 for a parameter the client may not read (data_directory,
     * GUC_SUPERUSER_ONLY), even with missing_ok, which would fail the whole read back (the
     * client SET it in vain: 55P02): pg_settings hides exactly those rows; a placeholder (a
     * '.' in its name) is not listed there either, and every session may read it. */
    put_str(sql, ") AS l(n) LEFT JOIN (SELECT name, source FROM pg_catalog.pg_settings) AS s "
                 "ON " SAME_NAME ", LATERAL (SELECT CASE WHEN s.name IS NOT NULL OR "
                 "pg_catalog.strpos(l.n, '.') OPERATOR(pg_catalog.>) 0 THEN "
                 "pg_catalog.current_setting(l.n, true) END) AS v(v)");
    codec_put_u8(sql, 0);
    return sql->oom ? -ENOMEM : 1;
}

static uint64_t entry_hash(const char *name, const char *value)
{
    /* SipHash-2-4 under the process's secret key over lower-cased name, '=', value; entries are
     * summed, so order does not matter. A client chooses its parameters, and equal fingerprints
     * skip a sync (or, in session mode, pick a backend opened with another client's startup
     * parameters): with an unkeyed hash a sum is easy to steer onto another client's (its
     * parameters guessed, padded with custom `-c app.x=...` entries). With a key it is not. */
    struct siphash h;
    siphash_init(&h, siphash_process_key());
    for (const char *p = name; *p; p++)
        siphash_byte(&h, (uint8_t)tolower((unsigned char)*p));
    siphash_byte(&h, '=');
    siphash_update(&h, value, strlen(value));
    return siphash_final(&h);
}

uint64_t params_fingerprint(const struct param_set *base, const struct param_set *own)
{
    uint64_t fp = 0;
    if (!base) {
        /* a server: what a client could want differently */
        for (int i = 0; i < own->n; i++) {
            const char *name = own->items[i].name;
            if (params_is_client_settable(name) || !params_is_reported(name))
                /* an unknown value must match no client's, even one spelled like it */
                fp +=
                    entry_hash(name, own->items[i].value) ^ (own->items[i].value == params_unknown);
        }
        return fp;
    }
    for (int i = 0; i < own->n; i++) {
        /* matched by a server that has no entry for it (held_without_entry) */
        if (!held_without_entry(own->items[i].name, own->items[i].value))
            fp += entry_hash(own->items[i].name, own->items[i].value);
    }
    for (int i = 0; i < base->n; i++) {
        const char *name = base->items[i].name;
        if (params_is_client_settable(name) && !params_get(own, name))
            fp += entry_hash(name, base->items[i].value);
    }
    return fp;
}

int params_forget(struct param_set *server, const char *name)
{
    if (name)
        return params_is_reported(name) ? 0 : params_set(server, name, params_unknown);
    for (int i = 0; i < server->n; i++) {
        if (params_is_reported(server->items[i].name))
            continue;
        int rc = params_set(server, server->items[i].name, params_unknown);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int params_note_sync(struct param_set *server, const struct param_set *want)
{
    for (int i = 0; i < want->n; i++) {
        const char *name = want->items[i].name, *value = want->items[i].value;
        if (params_is_reported(name) ||
            (!params_get(server, name) && held_without_entry(name, value)))
            continue; /* params_build_sync sent nothing for it */
        int rc = params_set(server, name, value);
        if (rc < 0)
            return rc;
    }
    for (int i = server->n - 1; i >= 0; i--) {
        const char *name = server->items[i].name;
        if (!params_is_reported(name) && !params_get(want, name)) {
            int rc = params_set(server, name, NULL);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

/* An application_name Postgres keeps as sent: it puts '?' for each byte that is not printable
 * ASCII and keeps NAMEDATALEN - 1 (63) bytes. Any other the server must spell. */
static bool application_name_kept(const char *value)
{
    size_t n = 0;
    for (; value[n]; n++)
        if ((unsigned char)value[n] < 32 || (unsigned char)value[n] > 126)
            return false;
    return n < 64;
}

bool params_is_identity(const char *name)
{
    return strcasecmp(name, "role") == 0 || strcasecmp(name, "session_authorization") == 0;
}

bool params_known_good(const struct param_set *own, const struct param_set *base,
                       const struct param_set *accepted)
{
    for (int i = 0; i < own->n; i++) {
        const char *name = own->items[i].name, *value = own->items[i].value;
        if (params_is_identity(name))
            return false;
        const char *b = params_get(base, name), *a = params_get(accepted, name);
        bool any_value = strcasecmp(name, "application_name") == 0 && value != params_unknown &&
                         application_name_kept(value);
        if (!any_value && !(b && same_value(b, value)) && !(a && same_value(a, value)))
            return false;
    }
    return true;
}

int params_note_accepted(struct param_set *accepted, const struct param_set *own, int max)
{
    for (int i = 0; i < own->n; i++) {
        if (accepted->n >= max && !params_get(accepted, own->items[i].name))
            continue;
        int rc = params_set(accepted, own->items[i].name, own->items[i].value);
        if (rc < 0)
            return rc;
    }
    return 0;
}

bool params_valid_name(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return false;
    return true;
}

int params_take_reported_spelling(struct param_set *own, const struct param_set *server)
{
    for (int i = 0; i < own->n; i++) {
        const char *name = own->items[i].name;
        if (!params_is_reported(name))
            continue;
        const char *have = params_get(server, name);
        if (have && have != params_unknown && params_set(own, name, have) < 0)
            return -ENOMEM;
    }
    return 0;
}

uint64_t params_startup_fingerprint(const struct param_set *startup)
{
    uint64_t fp = 0;
    for (int i = 0; i < startup->n; i++)
        fp += entry_hash(startup->items[i].name, startup->items[i].value);
    return startup->n > 0 && fp == 0 ? 1 : fp;
}

bool params_hold_start_only(const struct param_set *startup)
{
    /* guc_tables.c's PGC_BACKEND and PGC_SU_BACKEND entries (Postgres 12 to 17); the -P and -W
     * switches arrive here as ignore_system_indexes and post_auth_delay (startup_options.c) */
    static const char *const start_only[] = {
        "ignore_system_indexes", "post_auth_delay", "jit_debugging_support",
        "jit_profiling_support", "log_connections", "log_disconnections",
    };
    for (int i = 0; i < startup->n; i++)
        for (size_t k = 0; k < sizeof start_only / sizeof start_only[0]; k++)
            if (strcasecmp(startup->items[i].name, start_only[k]) == 0)
                return true;
    return false;
}

bool params_is_startup_keyword(const struct param *p)
{
    if (strcasecmp(p->name, "client_encoding") == 0)
        return strcmp(p->value, "auto") != 0; /* libpq's own test (fe-connect.c) */
    return strcasecmp(p->name, "application_name") == 0;
}

/* Settings whose values the log may show: what drivers send to shape the session's output. */
static bool value_is_harmless(const char *name)
{
    static const char *const harmless[] = {
        "application_name", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
        "extra_float_digits", "lc_messages", "standard_conforming_strings",
    };
    for (size_t i = 0; i < sizeof harmless / sizeof harmless[0]; i++) {
        if (strcasecmp(name, harmless[i]) == 0)
            return true;
    }
    return false;
}

void params_describe_for_log(const struct param_set *set, char *buf, size_t size)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < set->n && at < size; i++) {
        const struct param *p = &set->items[i];
        int w = snprintf(buf + at, size - at, "%s%s=%s", i ? ", " : "", p->name,
                         value_is_harmless(p->name) ? p->value : "...");
        if (w < 0)
            return;
        at += (size_t)w;
    }
}

/* A word of options as pg_split_opts reads it back: a backslash takes the next byte as is. */
static void put_option_word(struct msg_out *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || isspace((unsigned char)*s))
            codec_put_u8(o, '\\');
        codec_put_u8(o, (uint8_t)*s);
    }
}

int params_build_startup_options(const struct param_set *startup, const char *before,
                                 struct msg_out *out)
{
    int n = 0;
    if (before && before[0])
        put_str(out, before);
    for (int i = 0; i < startup->n; i++) {
        const struct param *p = &startup->items[i];
        if (params_is_startup_keyword(p))
            continue;
        if (out->len > 0)
            codec_put_u8(out, ' ');
        put_str(out, "-c ");
        put_option_word(out, p->name);
        codec_put_u8(out, '=');
        put_option_word(out, p->value);
        n++;
    }
    codec_put_u8(out, 0);
    return n;
}

size_t params_startup_size(const struct param_set *startup)
{
    struct msg_out options;
    codec_out_init(&options);
    (void)params_build_startup_options(startup, NULL, &options);
    size_t n = options.oom ? SIZE_MAX / 2 : options.len + sizeof("options");
    codec_out_free(&options);
    for (int i = 0; i < startup->n; i++) {
        const struct param *p = &startup->items[i];
        if (params_is_startup_keyword(p))
            n += strlen(p->name) + strlen(p->value) + 2;
    }
    return n;
}

int params_reset_to_startup(struct param_set *server, const struct param_set *startup)
{
    for (int i = server->n - 1; i >= 0; i--) {
        const char *name = server->items[i].name;
        if (!params_is_reported(name) && !params_get(startup, name) &&
            params_set(server, name, NULL) < 0)
            return -ENOMEM;
    }
    for (int i = 0; i < startup->n; i++) {
        const struct param *p = &startup->items[i];
        if (!params_is_reported(p->name) && params_set(server, p->name, p->value) < 0)
            return -ENOMEM;
    }
    return 0;
}

bool params_startup_keeps_reports(const struct param_set *startup)
{
    for (int i = 0; i < startup->n; i++) {
        const char *name = startup->items[i].name;
        if (params_is_reported(name) && strcasecmp(name, "application_name") != 0)
            return false;
    }
    return true;
}
