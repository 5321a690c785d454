/* stmt_names: the servers' names for the clients' prepared statements, in the bytes that pass
 * (see stmt_names.h). */
#include "stmt_names.h"

#include <ctype.h>
#include <string.h>

#define SERVER_NAME_PREFIX "sluice_"

bool stmt_names_is_servers(const char *key)
{
    size_t prefix = sizeof(SERVER_NAME_PREFIX) - 1;
    if (strncmp(key, SERVER_NAME_PREFIX, prefix) != 0)
        return false; /* every client name but these stops here */
    const char *p = key + prefix;
    size_t digits;
    if (*p == 's') { /* a count */
        digits = strspn(++p, "0123456789");
    } else {
        digits = strspn(p, "0123456789abcdef");
        if (digits != 8)
            return false;
    }
    if (digits == 0)
        return false;
    p += digits;
    size_t padding = strspn(p, "_");
    return p[padding] == '\0' && (padding == 0 || (size_t)(p + padding - key) == STMT_KEY_MAX);
}

static void server_name_as(struct stmt_server_name *sn, const char *name,
                           enum stmt_name_extent extent)
{
    size_t n = strlen(name);
    memcpy(sn->name, name, n + 1);
    if (extent == STMT_NAME_CUT) {
        memset(sn->name + n, '_', STMT_KEY_MAX - n);
        sn->name[STMT_KEY_MAX] = '\0';
    }
}

void stmt_names_for_server(struct stmt_server_name *sn, const struct stmt_def *d,
                           enum stmt_name_extent extent)
{
    server_name_as(sn, d->server_name, extent);
}

void stmt_names_changed(struct stmt_server_name *sn, enum stmt_name_extent extent)
{
    server_name_as(sn, STMT_CHANGED_NAME, extent);
}

bool stmt_names_changed_in_error(const uint8_t *msg, uint32_t whole)
{
    struct error_fields f;
    return codec_parse_error(msg + CODEC_HEADER_LEN, whole - CODEC_HEADER_LEN, &f) &&
           f.sqlstate && strcmp(f.sqlstate, "26000") == 0 && f.message &&
           strstr(f.message, STMT_CHANGED_NAME) != NULL;
}

bool stmt_names_can_rewrite(const struct buf *b, uint32_t old_len, uint32_t new_len)
{
    uint32_t grow = old_len < new_len ? new_len - old_len : 0;
    return b->rpos >= grow || buf_free_tail(b) >= grow || buf_pending(b) == 0;
}

/* The UTF-8 sequence a key of STMT_KEY_MAX bytes ends inside: how many of its bytes the key
 * holds (1 to 3), *whole its length; 0 when the key ends with a whole character (or bytes that
 * are not UTF-8). */
static uint32_t key_cut_in_char(const uint8_t *key, uint32_t *whole)
{
    for (uint32_t held = 1; held <= 3; held++) {
        uint8_t b = key[STMT_KEY_MAX - held];
        if (b >= 0x80 && b <= 0xbf)
            continue; /* a continuation byte: its sequence started further back */
        *whole = b >= 0xc2 && b <= 0xdf   ? 2
                 : b >= 0xe0 && b <= 0xef ? 3
                 : b >= 0xf0 && b <= 0xf4 ? 4
                                          : 0;
        return *whole > held ? held : 0;
    }
    return 0;
}

/* A long UTF-8 name cut inside a character at its key: how many bytes of that character the key
 * holds, when the name's rest (avail bytes of it here) goes on with the rest of the character.
 * Those bytes then go to the server again after sluice's name, so that the name's rest is still
 * text to it and its errors spell the name as the client did (name_error_fields). 0 otherwise:
 * the rest's leading bytes become '_' (stmt_name_rest_partial). */
static uint32_t cut_char_head(const uint8_t *key, const uint8_t *rest, uint32_t avail)
{
    uint32_t whole = 0, held = key_cut_in_char(key, &whole);
    if (!held || avail < whole - held)
        return 0;
    for (uint32_t i = 0; i < whole - held; i++)
        if (rest[i] < 0x80 || rest[i] > 0xbf)
            return 0;
    return held;
}

bool stmt_names_can_rename(const struct buf *b, uint32_t key_len,
                           const struct stmt_server_name *sn)
{
    /* a long name's key is written over, and may grow by a character's head (cut_char_head) */
    if (key_len >= STMT_KEY_MAX)
        return stmt_names_can_rewrite(b, STMT_KEY_MAX, STMT_KEY_MAX + 3);
    return stmt_names_can_rewrite(b, key_len, (uint32_t)strlen(sn->name));
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

enum stmt_rewrite stmt_names_rewrite(struct buf *b, struct framer *rx, struct msg_out *out,
                                     uint32_t at, uint32_t old_len, const char *repl)
{
    uint32_t repl_len = (uint32_t)strlen(repl);
    uint32_t len = codec_get_u32(b->data + b->scan + 1);
    uint32_t cut = b->scan + CODEC_HEADER_LEN + at; /* where the replaced bytes start */
    uint32_t front = cut - b->rpos, back = b->wpos - (cut + old_len);
    bool grows = repl_len > old_len;
    uint32_t d = grows ? repl_len - old_len : old_len - repl_len;
    bool room_front = b->rpos >= d, room_back = buf_free_tail(b) >= d; /* not the slack */
    if (grows && !room_front && !room_back) {
        /* A message as large as the buffer, read from its start: nothing framed before it
         * (stmt_names_can_rewrite), so its start goes out first, from out. */
        codec_put_u8(out, b->data[b->scan]);
        codec_put_i32(out, (int32_t)(len - old_len + repl_len));
        codec_put_bytes(out, b->data + b->scan + CODEC_HEADER_LEN, at);
        codec_put_bytes(out, repl, repl_len);
        uint32_t taken = CODEC_HEADER_LEN + at + old_len;
        b->scan += taken;
        buf_consume(b, taken);
        rx->remain = len + 1 - taken;
        return STMT_START_SENT;
    }
    bool move_front = grows ? room_front && (front <= back || !room_back) : front <= back;
    if (move_front) {
        uint32_t to = grows ? b->rpos - d : b->rpos + d;
        memmove(b->data + to, b->data + b->rpos, front);
        b->scan = grows ? b->scan - d : b->scan + d;
        cut = grows ? cut - d : cut + d;
        b->rpos = to;
    } else {
        memmove(b->data + cut + repl_len, b->data + cut + old_len, back);
        b->wpos = b->wpos - old_len + repl_len;
    }
    memcpy(b->data + cut, repl, repl_len);
    put_u32(b->data + b->scan + 1, len - old_len + repl_len);
    return STMT_REWRITTEN_IN_PLACE;
}

enum stmt_rewrite stmt_names_rename(struct buf *b, struct framer *rx, struct msg_out *out,
                                    uint32_t at, uint32_t key_len,
                                    const struct stmt_server_name *sn)
{
    if (key_len < STMT_KEY_MAX)
        return stmt_names_rewrite(b, rx, out, at, key_len, sn->name);
    uint8_t *name = b->data + b->scan + CODEC_HEADER_LEN + at;
    /* as far as the buffer holds the message (a name longer than pkt_buf is cut as it is) */
    uint32_t msg_end = b->scan + 1 + codec_get_u32(b->data + b->scan + 1);
    uint32_t held = (msg_end < b->wpos ? msg_end : b->wpos) - (uint32_t)(name - b->data);
    uint32_t head = cut_char_head(name, name + STMT_KEY_MAX, held - STMT_KEY_MAX);
    if (head) {
        char repl[STMT_KEY_MAX + 4];
        memcpy(repl, sn->name, STMT_KEY_MAX);
        memcpy(repl + STMT_KEY_MAX, name + STMT_KEY_MAX - head, head);
        repl[STMT_KEY_MAX + head] = '\0';
        return stmt_names_rewrite(b, rx, out, at, STMT_KEY_MAX, repl);
    }
    memcpy(name, sn->name, STMT_KEY_MAX);
    if (held > STMT_KEY_MAX)
        memset(name + STMT_KEY_MAX, '_',
               stmt_name_rest_partial(name + STMT_KEY_MAX, held - STMT_KEY_MAX));
    return STMT_REWRITTEN_IN_PLACE;
}

/* The client's name for server_name: the one a request of pending fails naming
 * (stmt_queue_named_as), else in its map, else in a map a drop of all still unanswered took
 * away (pending). */
static const char *client_name_for(const struct stmt_map *client_map,
                                   const struct stmt_queue *pending, const char *server_name)
{
    const char *mine = stmt_queue_named_as(pending, server_name);
    if (!mine)
        mine = stmt_map_name_of(client_map, server_name);
    return mine ? mine : stmt_queue_dropped_name_of(pending, server_name);
}

/* The error body's server names of client_map's statements (or pending's dropped ones), each
 * replaced by the client's name (into out when not NULL). True when there is one. */
static bool name_error_fields(const struct stmt_map *client_map, const struct stmt_queue *pending,
                              uint8_t type, const uint8_t *body, uint32_t len, struct msg_out *out)
{
    const size_t plen = sizeof(SERVER_NAME_PREFIX) - 1;
    bool renamed = false;
    const uint8_t *end = body + len, *copied = body, *at = body;
    if (out)
        codec_begin(out, type);
    while ((at = memmem(at, (size_t)(end - at), SERVER_NAME_PREFIX, plen)) != NULL) {
        const uint8_t *tail = at + plen;
        while (tail < end && tail - at <= STMT_SERVER_NAME_MAX &&
               (isdigit(*tail) || (*tail >= 'a' && *tail <= 'z')))
            tail++;
        char sn[STMT_KEY_MAX + 1];
        const char *mine = NULL;
        bool was_padded = false; /* the name went out padded: the client's was cut at its key */
        if (tail - at <= STMT_SERVER_NAME_MAX) {
            /* A long client name's key went out as the server name padded with '_' to
             * STMT_KEY_MAX bytes (the rest of the name after it): the padded key is replaced by
             * the client's, so that its rest follows it as the client wrote it. */
            const uint8_t *padded = tail;
            while (padded < end && padded - at < STMT_KEY_MAX && *padded == '_')
                padded++;
            if (padded > tail && padded - at == STMT_KEY_MAX) {
                was_padded = true;
                memcpy(sn, at, STMT_KEY_MAX);
                sn[STMT_KEY_MAX] = '\0';
                mine = client_name_for(client_map, pending, sn); /* a departed one too */
            }
            memcpy(sn, at, (size_t)(tail - at));
            sn[tail - at] = '\0';
            if (!mine)
                mine = client_name_for(client_map, pending, sn);
            if (mine && was_padded)
                tail = padded;
        }
        size_t mine_len = mine ? strlen(mine) : 0;
        if (mine_len == STMT_KEY_MAX && tail - at == STMT_KEY_MAX) {
            /* the head of a character cut at the key follows it again (stmt_names_rename) */
            uint32_t whole, head = key_cut_in_char((const uint8_t *)mine, &whole);
            if (head && (size_t)(end - tail) >= head &&
                memcmp(tail, mine + STMT_KEY_MAX - head, head) == 0)
                mine_len -= head;
        }
        if (mine) {
            renamed = true;
            if (!out)
                return true;
            codec_put_bytes(out, copied, (size_t)(at - copied));
            codec_put_bytes(out, mine, mine_len);
            copied = tail;
        }
        at = tail;
    }
    if (out) {
        codec_put_bytes(out, copied, (size_t)(end - copied));
        codec_end(out);
    }
    return renamed;
}

bool stmt_names_in_error(const struct stmt_map *client_map, const struct stmt_queue *pending,
                         const uint8_t *msg, uint32_t whole)
{
    return (client_map || pending) &&
           name_error_fields(client_map, pending, msg[0], msg + CODEC_HEADER_LEN,
                             whole - CODEC_HEADER_LEN, NULL);
}

void stmt_names_put_error(const struct stmt_map *client_map, const struct stmt_queue *pending,
                          const uint8_t *msg, uint32_t whole, struct msg_out *out)
{
    (void)name_error_fields(client_map, pending, msg[0], msg + CODEC_HEADER_LEN,
                            whole - CODEC_HEADER_LEN, out);
}
