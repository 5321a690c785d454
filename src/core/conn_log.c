/* conn_log: the identity prefix of a log line about a connection, C-<id> db/user@addr for a
 * client and S-<id> db/user for a server (declared in client.h and server.h, beside the object
 * they name). Kept apart from client.c and server.c so that the code below them (the relay, the
 * request tracker, cancel) can log about a connection without calling up into its owner; log.c
 * knows no connection. */
#include <stdarg.h>
#include <stdio.h>

#include "client.h"
#include "conn_id.h"
#include "log.h"
#include "pool.h"
#include "server.h"

void log_client_v(enum log_level level, const struct client *c, const char *fmt, va_list ap)
{
    if (!log_enabled(level))
        return;
    char who[384], addr[64];
    peer_addr_text(&c->addr, addr, sizeof(addr));
    snprintf(who, sizeof(who), "C-%s %s/%s@%s", CONN_ID_TEXT(c->id),
             c->database ? c->database : "?", c->user ? c->user : "?", addr);
    log_msg_as(level, who, fmt, ap);
}

void log_client(enum log_level level, const struct client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_client_v(level, c, fmt, ap);
    va_end(ap);
}

void log_server(enum log_level level, const struct server *s, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char who[384];
    snprintf(who, sizeof(who), "S-%s %s/%s", CONN_ID_TEXT(s->id), s->pool->db_name,
             s->pool->user_name);
    va_list ap;
    va_start(ap, fmt);
    log_msg_as(level, who, fmt, ap);
    va_end(ap);
}
