/* codec: the Postgres v3 wire format, with no I/O (see codec.h). Every length read from the
 * network is checked before it is used; nothing here trusts a peer. */
#include "codec.h"

#include <stdlib.h>
#include <string.h>

enum frame_result codec_frame_header(const uint8_t *p, size_t avail, uint32_t max_body,
                                     uint8_t *type, uint32_t *body_len)
{
    if (avail < CODEC_HEADER_LEN)
        return FRAME_NEED_MORE;
    uint32_t len = codec_get_u32(p + 1);
    if (len < 4 || len - 4 > max_body)
        return FRAME_BAD_LENGTH;
    *type = p[0];
    *body_len = len - 4;
    return FRAME_OK;
}

bool codec_frontend_type_known(uint8_t type)
{
    switch (type) {
    case 'B': case 'C': case 'd': case 'c': case 'f': case 'D': case 'E':
    case 'H': case 'F': case 'P': case 'Q': case 'S': case 'X':
        return true;
    default:
        return false;
    }
}

uint32_t codec_frontend_max_len(uint8_t type)
{
    switch (type) {
    case 'S': case 'H': case 'C': case 'D': case 'E': case 'X': case 'c': case 'f':
        return 10000;
    default:
        return 0x3ffffffeu;
    }
}

void codec_reader_init(struct msg_reader *r, const uint8_t *body, size_t len)
{
    r->pos = body;
    r->end = body + len;
    r->bad = false;
}

size_t codec_reader_left(const struct msg_reader *r)
{
    return (size_t)(r->end - r->pos);
}

const uint8_t *codec_read_bytes(struct msg_reader *r, size_t n)
{
    if (r->bad || codec_reader_left(r) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->pos;
    r->pos += n;
    return p;
}

uint8_t codec_read_u8(struct msg_reader *r)
{
    const uint8_t *p = codec_read_bytes(r, 1);
    return p ? p[0] : 0;
}

int16_t codec_read_i16(struct msg_reader *r)
{
    const uint8_t *p = codec_read_bytes(r, 2);
    return p ? (int16_t)(((uint16_t)p[0] << 8) | p[1]) : 0;
}

int32_t codec_read_i32(struct msg_reader *r)
{
    const uint8_t *p = codec_read_bytes(r, 4);
    return p ? (int32_t)codec_get_u32(p) : 0;
}

const char *codec_read_cstring(struct msg_reader *r)
{
    if (r->bad)
        return NULL;
    const uint8_t *nul = memchr(r->pos, '\0', codec_reader_left(r));
    if (!nul) {
        r->bad = true;
        return NULL;
    }
    const char *s = (const char *)r->pos;
    r->pos = nul + 1;
    return s;
}

enum frame_result codec_frame_startup(const uint8_t *p, size_t avail, uint32_t *total_len)
{
    if (avail < 4)
        return FRAME_NEED_MORE;
    uint32_t len = codec_get_u32(p);
    if (len < CODEC_STARTUP_HEADER_LEN || len > CODEC_MAX_STARTUP_LEN)
        return FRAME_BAD_LENGTH;
    *total_len = len;
    return FRAME_OK;
}

bool codec_starts_tls_handshake(const uint8_t *p, size_t avail)
{
    return avail >= 2 && p[0] == 0x16 && p[1] == 0x03;
}

void codec_parse_startup(const uint8_t *p, uint32_t total_len, struct startup_packet *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = STARTUP_MALFORMED;
    if (total_len < CODEC_STARTUP_HEADER_LEN)
        return;
    struct msg_reader r;
    codec_reader_init(&r, p + 4, total_len - 4);
    out->code = (uint32_t)codec_read_i32(&r);
    switch (out->code) {
    /* Postgres reads the whole packet and then goes by its code alone: an SSLRequest or a
     * GSSENCRequest with bytes after the code is answered as one, the bytes ignored
     * (ProcessStartupPacket checks the length of a CancelRequest only). */
    case CODEC_SSL_CODE:
        out->kind = STARTUP_SSL_REQUEST;
        return;
    case CODEC_GSSENC_CODE:
        out->kind = STARTUP_GSSENC_REQUEST;
        return;
    case CODEC_CANCEL_CODE:
        if (total_len != 16)
            return;
        out->cancel_pid = (uint32_t)codec_read_i32(&r);
        out->cancel_key = (uint32_t)codec_read_i32(&r);
        out->kind = STARTUP_CANCEL;
        return;
    default:
        /* Postgres takes any 3.x and answers a minor version it lacks with
         * NegotiateProtocolVersion (the login does: client_login.c). */
        if (out->code >> 16 != CODEC_PROTOCOL_3_0 >> 16) {
            out->kind = STARTUP_BAD_PROTOCOL;
            return;
        }
        break;
    }
    /* Protocol section 55.7 StartupMessage: name/value pairs, then a terminating zero byte.
     * Checked whole here, so that codec_startup_next may walk it without bounds. */
    out->first_param = (const char *)p + 8;
    for (;;) {
        const char *name = codec_read_cstring(&r);
        if (!name)
            return;
        if (name[0] == '\0') {
            if (codec_reader_left(&r) != 0)
                return;
            out->kind = STARTUP_V3;
            return;
        }
        if (!codec_read_cstring(&r))
            return;
        out->nparams++;
    }
}

bool codec_startup_next(const struct startup_packet *s, struct startup_param *at)
{
    if (s->kind != STARTUP_V3)
        return false;
    const char *name = at->name ? at->value + strlen(at->value) + 1 : s->first_param;
    if (name[0] == '\0')
        return false;
    at->name = name;
    at->value = name + strlen(name) + 1;
    return true;
}

const char *codec_startup_get(const struct startup_packet *s, const char *name)
{
    /* A name given twice: Postgres keeps the last (ProcessStartupPacket overwrites). */
    const char *value = NULL;
    struct startup_param at = {0};
    while (codec_startup_next(s, &at))
        if (strcmp(at.name, name) == 0)
            value = at.value;
    return value;
}

/* ---- output ---- */

void codec_out_init(struct msg_out *o)
{
    memset(o, 0, sizeof(*o));
}

void codec_out_free(struct msg_out *o)
{
    free(o->data);
    codec_out_init(o);
}

void codec_out_reset(struct msg_out *o)
{
    o->len = 0;
    o->msg_start = 0;
    o->oom = false;
}

static bool reserve(struct msg_out *o, size_t n)
{
    if (o->oom)
        return false;
    if (o->len + n <= o->cap)
        return true;
    if (n > UINT32_MAX / 2 - o->len) { /* past any message Postgres allows: refuse */
        o->oom = true;
        return false;
    }
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + n)
        cap *= 2;
    uint8_t *d = realloc(o->data, cap);
    if (!d) {
        o->oom = true;
        return false;
    }
    o->data = d;
    o->cap = (uint32_t)cap;
    return true;
}

void codec_put_bytes(struct msg_out *o, const void *p, size_t n)
{
    if (n == 0 || !reserve(o, n))
        return;
    memcpy(o->data + o->len, p, n);
    o->len += (uint32_t)n;
}

void codec_put_u8(struct msg_out *o, uint8_t v)
{
    codec_put_bytes(o, &v, 1);
}

void codec_put_i16(struct msg_out *o, int16_t v)
{
    uint8_t b[2] = {(uint8_t)((uint16_t)v >> 8), (uint8_t)v};
    codec_put_bytes(o, b, 2);
}

void codec_put_i32(struct msg_out *o, int32_t v)
{
    uint32_t u = (uint32_t)v;
    uint8_t b[4] = {(uint8_t)(u >> 24), (uint8_t)(u >> 16), (uint8_t)(u >> 8), (uint8_t)u};
    codec_put_bytes(o, b, 4);
}

void codec_put_cstring(struct msg_out *o, const char *s)
{
    codec_put_bytes(o, s, strlen(s) + 1);
}

void codec_begin(struct msg_out *o, uint8_t type)
{
    if (type)
        codec_put_u8(o, type);
    o->msg_start = o->len;
    codec_put_i32(o, 0);
}

void codec_end(struct msg_out *o)
{
    if (o->oom)
        return;
    uint32_t len = (uint32_t)(o->len - o->msg_start);
    uint8_t *p = o->data + o->msg_start;
    p[0] = (uint8_t)(len >> 24);
    p[1] = (uint8_t)(len >> 16);
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
}

void codec_put_auth_request(struct msg_out *o, int32_t code, const void *extra, size_t extra_len)
{
    codec_begin(o, 'R');
    codec_put_i32(o, code);
    codec_put_bytes(o, extra, extra_len);
    codec_end(o);
}

void codec_put_parameter_status(struct msg_out *o, const char *name, const char *value)
{
    codec_begin(o, 'S');
    codec_put_cstring(o, name);
    codec_put_cstring(o, value);
    codec_end(o);
}

void codec_put_backend_key(struct msg_out *o, uint32_t pid, uint32_t key)
{
    codec_begin(o, 'K');
    codec_put_i32(o, (int32_t)pid);
    codec_put_i32(o, (int32_t)key);
    codec_end(o);
}

void codec_put_ready(struct msg_out *o, char txn_status)
{
    codec_begin(o, 'Z');
    codec_put_u8(o, (uint8_t)txn_status);
    codec_end(o);
}

void codec_put_query(struct msg_out *o, const char *sql)
{
    codec_begin(o, 'Q');
    codec_put_cstring(o, sql);
    codec_end(o);
}

void codec_put_terminate(struct msg_out *o)
{
    codec_begin(o, 'X');
    codec_end(o);
}

static void put_field(struct msg_out *o, char code, const char *value)
{
    if (!value)
        return;
    codec_put_u8(o, (uint8_t)code);
    codec_put_cstring(o, value);
}

void codec_put_error_at(struct msg_out *o, uint8_t type, const char *severity,
                        const char *sqlstate, const char *message, const char *detail,
                        const char *hint, const char *file, const char *routine)
{
    /* Protocol section 55.8: S (localized) and V (never localized) severity, C, M, D, H, F, R. */
    codec_begin(o, type);
    put_field(o, 'S', severity);
    put_field(o, 'V', severity);
    put_field(o, 'C', sqlstate);
    put_field(o, 'M', message);
    put_field(o, 'D', detail);
    put_field(o, 'H', hint);
    put_field(o, 'F', file);
    put_field(o, 'R', routine);
    codec_put_u8(o, 0);
    codec_end(o);
}

void codec_put_error(struct msg_out *o, uint8_t type, const char *severity, const char *sqlstate,
                     const char *message, const char *detail, const char *hint)
{
    codec_put_error_at(o, type, severity, sqlstate, message, detail, hint, NULL, NULL);
}

void codec_put_startup(struct msg_out *o, const char *const *names, const char *const *values,
                       int n)
{
    codec_begin(o, 0);
    codec_put_i32(o, (int32_t)CODEC_PROTOCOL_3_0);
    for (int i = 0; i < n; i++) {
        codec_put_cstring(o, names[i]);
        codec_put_cstring(o, values[i]);
    }
    codec_put_u8(o, 0);
    codec_end(o);
}

bool codec_parse_error(const uint8_t *body, size_t len, struct error_fields *out)
{
    memset(out, 0, sizeof(*out));
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    for (;;) {
        uint8_t code = codec_read_u8(&r);
        if (r.bad)
            return false;
        if (code == 0)
            return true;
        const char *value = codec_read_cstring(&r);
        if (!value)
            return false;
        switch (code) {
        case 'S':
            if (!out->severity)
                out->severity = value;
            break;
        case 'V':
            out->severity = value;
            break;
        case 'C':
            out->sqlstate = value;
            break;
        case 'M':
            out->message = value;
            break;
        default:
            break;
        }
    }
}

bool codec_parse_parameter_status(const uint8_t *body, size_t len, const char **name,
                                  const char **value)
{
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    *name = codec_read_cstring(&r);
    *value = codec_read_cstring(&r);
    return !r.bad && codec_reader_left(&r) == 0;
}
