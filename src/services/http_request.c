/* http_request: HTTP/1.x request head parsing (see http_request.h).
 *
 * RFC 9112 section 3: request-line = method SP request-target SP HTTP-version CRLF, then header
 * fields "name: value" CRLF each, then an empty line. Bare LF is accepted as a line end (section
 * 2.2 allows it); obsolete line folding, control characters and anything but origin-form targets
 * ("/path?query") are refused. A malformed request line is reported as soon as it is complete,
 * so a client sending garbage gets its 400 without waiting for a blank line that never comes. */
#include "http_request.h"

#include <stdbool.h>
#include <string.h>

/* RFC 9110 section 5.6.2 tchar. */
static bool is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* The end of the line starting at p (the LF), or NULL when it is not complete yet. */
static const char *line_end(const char *p, const char *end)
{
    return memchr(p, '\n', (size_t)(end - p));
}

/* Line content length without its CR. */
static size_t content_len(const char *p, const char *lf)
{
    size_t n = (size_t)(lf - p);
    if (n > 0 && p[n - 1] == '\r')
        n--;
    return n;
}

static enum http_parse parse_request_line(const char *p, size_t n, struct http_request *out)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i > 16 || i >= n || p[i] != ' ')
        return HTTP_PARSE_BAD;
    if (i == 3 && memcmp(p, "GET", 3) == 0)
        out->method = HTTP_METHOD_GET;
    else if (i == 4 && memcmp(p, "HEAD", 4) == 0)
        out->method = HTTP_METHOD_HEAD;
    else
        out->method = HTTP_METHOD_OTHER;
    size_t t = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] != 0x7f)
        i++;
    size_t tlen = i - t;
    if (tlen == 0 || p[t] != '/' || i >= n || p[i] != ' ')
        return HTTP_PARSE_BAD;
    i++;
    if (n - i != 8 || memcmp(p + i, "HTTP/1.", 7) != 0 || (p[i + 7] != '0' && p[i + 7] != '1'))
        return HTTP_PARSE_BAD;
    out->version_minor = p[i + 7] - '0';
    size_t plen = 0;
    while (plen < tlen && p[t + plen] != '?' && p[t + plen] != '#')
        plen++;
    if (plen < sizeof(out->path)) {
        memcpy(out->path, p + t, plen);
        out->path[plen] = '\0';
    } else {
        out->path[0] = '\0';
    }
    return HTTP_PARSE_OK;
}

static bool header_line_ok(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ':')
        return false; /* also refuses obs-fold (a line starting with SP or HTAB) */
    for (i++; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

enum http_parse http_parse_request(const char *buf, size_t len, struct http_request *out)
{
    memset(out, 0, sizeof(*out));
    out->method = HTTP_METHOD_OTHER;
    if (len > HTTP_MAX_HEAD)
        len = HTTP_MAX_HEAD;
    const char *p = buf, *end = buf + len;
    /* RFC 9112 section 2.2: empty lines before the request line may be ignored. */
    while (p < end && (*p == '\r' || *p == '\n')) {
        if (p - buf >= 8)
            return HTTP_PARSE_BAD;
        p++;
    }
    const char *lf = line_end(p, end);
    if (!lf) {
        /* Refuse a broken request line early, before its end arrives: a method that is not a
         * short token, or control characters. */
        const char *q = p;
        while (q < end && is_tchar((unsigned char)*q))
            q++;
        if (q - p > 16 || (q < end && *q != ' '))
            return HTTP_PARSE_BAD;
        if (q + 1 < end && q[1] != '/')
            return HTTP_PARSE_BAD; /* only origin-form targets */
        for (const char *c = q; c < end; c++) {
            unsigned char ch = (unsigned char)*c;
            if ((ch < 0x20 && ch != '\r') || ch == 0x7f)
                return HTTP_PARSE_BAD;
        }
        const char *sp = q < end ? memchr(q + 1, ' ', (size_t)(end - q - 1)) : NULL;
        if (sp) {
            size_t have = (size_t)(end - sp - 1), cmp = have < 7 ? have : 7;
            if (memcmp(sp + 1, "HTTP/1.", cmp) != 0)
                return HTTP_PARSE_BAD;
        }
        return len >= HTTP_MAX_HEAD ? HTTP_PARSE_TOO_LARGE : HTTP_PARSE_INCOMPLETE;
    }
    size_t n = content_len(p, lf);
    if (memchr(p, '\r', n))
        return HTTP_PARSE_BAD; /* a CR inside the line */
    if (parse_request_line(p, n, out) != HTTP_PARSE_OK)
        return HTTP_PARSE_BAD;
    p = lf + 1;
    for (;;) {
        lf = line_end(p, end);
        if (!lf)
            return len >= HTTP_MAX_HEAD ? HTTP_PARSE_TOO_LARGE : HTTP_PARSE_INCOMPLETE;
        n = content_len(p, lf);
        if (n == 0) {
            out->head_len = (size_t)(lf + 1 - buf);
            return HTTP_PARSE_OK;
        }
        if (memchr(p, '\r', n) || !header_line_ok(p, n))
            return HTTP_PARSE_BAD;
        p = lf + 1;
    }
}

const char *http_parse_name(enum http_parse r)
{
    switch (r) {
    case HTTP_PARSE_INCOMPLETE:
        return "incomplete";
    case HTTP_PARSE_OK:
        return "ok";
    case HTTP_PARSE_BAD:
        return "bad";
    case HTTP_PARSE_TOO_LARGE:
        return "too_large";
    }
    return "?";
}
