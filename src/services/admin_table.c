/* admin_table: the SHOW result-set writer (see admin_table.h). */
#include "admin_table.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "conn_id.h"
#include "log.h"
#include "sluice.h"
#include "tls.h"
#include "utf8.h"

#define TYPE_TEXT 25 /* pg_type OIDs */
#define TYPE_INT8 20

/* A result set of the columns picked (pointers into a column table). */
void table_begin_picked(struct table *t, struct msg_out *o, const struct col *const *cols, int n)
{
    t->o = o;
    t->ncols = n;
    t->cells = 0;
    /* RowDescription: name, table OID, column number, type OID, type size, typmod, format. */
    codec_begin(o, 'T');
    codec_put_i16(o, (int16_t)n);
    for (int i = 0; i < n; i++) {
        codec_put_cstring(o, cols[i]->name);
        codec_put_i32(o, 0);
        codec_put_i16(o, 0);
        codec_put_i32(o, cols[i]->type == COL_INT ? TYPE_INT8 : TYPE_TEXT);
        codec_put_i16(o, cols[i]->type == COL_INT ? 8 : -1);
        codec_put_i32(o, -1);
        codec_put_i16(o, 0);
    }
    codec_end(o);
}

#define MAX_COLS 32

void table_begin(struct table *t, struct msg_out *o, const struct col *cols, int n)
{
    const struct col *picked[MAX_COLS];
    if (n > MAX_COLS) {
        log_msg(LOG_ERROR, "BUG: admin result set of %d columns", n);
        abort();
    }
    for (int i = 0; i < n; i++)
        picked[i] = &cols[i];
    table_begin_picked(t, o, picked, n);
}

void row_begin(struct table *t)
{
    t->cells = 0;
    codec_begin(t->o, 'D');
    codec_put_i16(t->o, (int16_t)t->ncols);
}

void row_end(struct table *t)
{
    if (t->cells != t->ncols) {
        log_msg(LOG_ERROR, "BUG: admin row with %d of %d cells", t->cells, t->ncols);
        abort();
    }
    codec_end(t->o);
}

/* NULL is SQL NULL. Text that is not UTF-8 (a client's application_name can be anything)
 * has each bad byte replaced by U+FFFD, so drivers decoding UTF8 do not fail on the row. */
void cell_text(struct table *t, const char *s)
{
    t->cells++;
    if (!s) {
        codec_put_i32(t->o, -1);
        return;
    }
    size_t len = 0, n;
    bool valid = true;
    for (const unsigned char *p = (const unsigned char *)s; *p; p += n ? n : 1) {
        n = utf8_seq_len(p);
        len += n ? n : 3;
        valid &= n != 0;
    }
    codec_put_i32(t->o, (int32_t)len);
    if (valid) {
        codec_put_bytes(t->o, s, len);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p += n ? n : 1) {
        n = utf8_seq_len(p);
        if (n)
            codec_put_bytes(t->o, p, n);
        else
            codec_put_bytes(t->o, "\xef\xbf\xbd", 3);
    }
}

void cell_fmt(struct table *t, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cell_text(t, buf);
}

void cell_int(struct table *t, long long v)
{
    cell_fmt(t, "%lld", v);
}

void cell_uint(struct table *t, uint64_t v)
{
    cell_fmt(t, "%llu", (unsigned long long)v);
}

void cells_wait(struct table *t, uint64_t us)
{
    cell_uint(t, us / 1000000);
    cell_uint(t, us % 1000000);
}

static uint64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A loop timestamp (ms) as wall-clock time; 0 is NULL. */
void cell_time(struct table *t, const struct worker *worker, uint64_t loop_ms)
{
    if (loop_ms == 0) {
        cell_text(t, NULL);
        return;
    }
    uint64_t now = sluice_now(worker);
    uint64_t wall = wall_now_ms() - (now > loop_ms ? now - loop_ms : 0);
    time_t secs = (time_t)(wall / 1000);
    struct tm tm;
    char buf[64];
    gmtime_r(&secs, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
    cell_text(t, buf);
}

void cell_conn_id(struct table *t, uint64_t id)
{
    cell_text(t, id ? CONN_ID_TEXT(id) : "");
}

/* Address and port cells of a socket address. */
void cells_addr(struct table *t, const union peer_addr *a, int unix_port)
{
    char ip[INET6_ADDRSTRLEN];
    int port;
    if (peer_addr_ip(a, ip, sizeof(ip), &port)) {
        cell_text(t, ip);
        cell_int(t, port);
    } else if (a->sa.sa_family == AF_UNIX) {
        cell_text(t, "unix");
        cell_int(t, unix_port);
    } else {
        cell_text(t, NULL);
        cell_text(t, NULL);
    }
}

void cells_local_addr(struct table *t, int fd, int unix_port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        ss.ss_family = AF_UNSPEC;
    union peer_addr a;
    peer_addr_from(&a, &ss);
    cells_addr(t, &a, unix_port);
}

void cell_tls(struct table *t, SSL *ssl)
{
    char desc[128] = "";
    if (ssl)
        tls_describe(ssl, desc, sizeof(desc));
    cell_text(t, desc);
}
