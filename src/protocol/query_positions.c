/* query_positions: the client's positions in a text sluice rewrote (see query_positions.h).
 * Characters are counted as Postgres's pg_mblen counts them for the client's encoding. */
#include "query_positions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "decimal.h"

/* How a byte of 0x80 or more starts a character, by encoding family. */
enum char_width {
    WIDTH_SINGLE,  /* LATIN1, WIN1252, SQL_ASCII and the other single-byte encodings */
    WIDTH_UTF8,    /* its lead byte says */
    WIDTH_DOUBLE,  /* BIG5, GBK, UHC, EUC_CN, EUC_KR: two bytes */
    WIDTH_SJIS,    /* two, but 0xA1-0xDF (half-width katakana) one */
    WIDTH_EUC_JP,  /* two, 0x8F three (EUC_JP, EUC_JIS_2004, JOHAB) */
    WIDTH_EUC_TW,  /* two, 0x8E four, 0x8F three */
    WIDTH_GB18030, /* two, four when the second byte is a digit */
};

void query_chars_init(struct query_chars *qc, const char *enc)
{
    static const struct {
        const char *name;
        enum char_width width;
    } wide[] = {
        {"UTF8", WIDTH_UTF8},     {"UNICODE", WIDTH_UTF8},        {"BIG5", WIDTH_DOUBLE},
        {"GBK", WIDTH_DOUBLE},    {"UHC", WIDTH_DOUBLE},          {"EUC_CN", WIDTH_DOUBLE},
        {"EUC_KR", WIDTH_DOUBLE}, {"SJIS", WIDTH_SJIS},           {"SHIFT_JIS_2004", WIDTH_SJIS},
        {"EUC_JP", WIDTH_EUC_JP}, {"EUC_JIS_2004", WIDTH_EUC_JP}, {"JOHAB", WIDTH_EUC_JP},
        {"EUC_TW", WIDTH_EUC_TW}, {"GB18030", WIDTH_GB18030},
    };
    qc->width = enc ? WIDTH_SINGLE : WIDTH_UTF8;
    for (size_t i = 0; enc && i < sizeof wide / sizeof wide[0]; i++)
        if (strcasecmp(enc, wide[i].name) == 0)
            qc->width = wide[i].width;
}

/* The bytes of the character at s[i] (at least 1). */
static size_t char_len(enum char_width w, const unsigned char *s, size_t i, size_t n)
{
    unsigned char c = s[i];
    size_t len = 1;
    if (c >= 0x80) {
        switch (w) {
        case WIDTH_SINGLE:
            break;
        case WIDTH_UTF8:
            len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
            break;
        case WIDTH_DOUBLE:
            len = 2;
            break;
        case WIDTH_SJIS:
            len = c >= 0xa1 && c <= 0xdf ? 1 : 2;
            break;
        case WIDTH_EUC_JP:
            len = c == 0x8f ? 3 : 2;
            break;
        case WIDTH_EUC_TW:
            len = c == 0x8e ? 4 : c == 0x8f ? 3 : 2;
            break;
        case WIDTH_GB18030:
            len = i + 1 < n && s[i + 1] >= 0x30 && s[i + 1] <= 0x39 ? 4 : 2;
            break;
        }
    }
    return len < n - i ? len : n - i;
}

uint32_t query_chars_count(const struct query_chars *qc, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t chars = 0;
    for (size_t i = 0; i < n; chars++)
        i += u[i] < 0x80 ? 1 : char_len((enum char_width)qc->width, u, i, n);
    return chars;
}

/* The client's position minus the server's, for what follows edit e. */
static int64_t shift_after(const struct query_edit *e)
{
    return ((int64_t)e->client_at + e->client_len) - ((int64_t)e->server_at + e->server_len);
}

bool query_positions_add(struct query_positions **qp, uint32_t client_at, uint32_t client_len,
                         uint32_t server_len)
{
    struct query_positions *q = *qp;
    if (!q || q->n == q->cap) {
        uint32_t cap = q ? q->cap * 2 : 4;
        struct query_positions *grown = realloc(q, sizeof(*q) + cap * sizeof(q->edits[0]));
        if (!grown)
            return false;
        if (!q) {
            grown->n = 0;
            grown->sent_chars = UINT32_MAX;
        }
        grown->cap = cap;
        *qp = q = grown;
    }
    /* where it lands in the text sent: past the edits before it, each grown or shrunk */
    int64_t shift = q->n ? shift_after(&q->edits[q->n - 1]) : 0;
    q->edits[q->n++] = (struct query_edit){
        .client_at = client_at,
        .client_len = client_len,
        .server_at = (uint32_t)((int64_t)client_at - shift),
        .server_len = server_len,
    };
    return true;
}

void query_positions_bound(struct query_positions *qp, uint32_t sent_chars)
{
    if (qp)
        qp->sent_chars = sent_chars;
}

uint32_t query_positions_map(const struct query_positions *qp, uint32_t pos)
{
    if (!qp || pos == 0 || pos - 1 > qp->sent_chars)
        return pos;
    uint32_t at = pos - 1; /* characters before it */
    int64_t shift = 0;     /* the client's position minus the server's, before edit k */
    for (uint32_t k = 0; k < qp->n; k++) {
        const struct query_edit *e = &qp->edits[k];
        if (at < e->server_at)
            break;
        if (at < e->server_at + e->server_len)
            return e->client_at + 1;
        shift = shift_after(e);
    }
    int64_t mapped = (int64_t)at + shift;
    return mapped < 0 ? 1 : (uint32_t)mapped + 1;
}

/* The P field's value in an ErrorResponse/NoticeResponse body: where it starts, and its length
 * (its NUL not counted). */
static bool position_field(const uint8_t *body, uint32_t len, const uint8_t **value, size_t *n)
{
    const uint8_t *p = body, *end = body + len;
    while (p < end && *p != '\0') {
        const uint8_t *v = p + 1;
        const uint8_t *nul = memchr(v, '\0', (size_t)(end - v));
        if (!nul)
            return false;
        if (*p == 'P') {
            *value = v;
            *n = (size_t)(nul - v);
            return true;
        }
        p = nul + 1;
    }
    return false;
}

bool query_positions_moves(const struct query_positions *qp, const uint8_t *msg, uint32_t whole,
                           uint32_t *mapped)
{
    const uint8_t *v;
    size_t n;
    uint64_t pos;
    /* (9 digits: any position fits in 32 bits; a longer one is no position of a text sent) */
    if (!qp || whole < CODEC_HEADER_LEN ||
        !position_field(msg + CODEC_HEADER_LEN, whole - CODEC_HEADER_LEN, &v, &n) ||
        !decimal_parse((const char *)v, n, 9, &pos))
        return false;
    *mapped = query_positions_map(qp, (uint32_t)pos);
    return *mapped != pos;
}

void query_positions_put(struct msg_out *out, const uint8_t *msg, uint32_t whole, uint32_t mapped)
{
    const uint8_t *body = msg + CODEC_HEADER_LEN, *v = NULL;
    size_t n = 0;
    uint32_t len = whole - CODEC_HEADER_LEN;
    (void)position_field(body, len, &v, &n); /* query_positions_moves found it */
    char digits[16];
    snprintf(digits, sizeof(digits), "%u", mapped);
    codec_begin(out, msg[0]);
    codec_put_bytes(out, body, (size_t)(v - body));
    codec_put_bytes(out, digits, strlen(digits));
    codec_put_bytes(out, v + n, (size_t)(body + len - (v + n)));
    codec_end(out);
}
