/* tcp_options: the TCP settings of the config (tcp_keepalive, tcp_keepidle, tcp_keepintvl,
 * tcp_keepcnt, tcp_user_timeout), the one place they become socket options or libpq keywords:
 * client sockets get them from their listening socket (listener.c), a passthrough login's server
 * socket directly (server_login.c), a libpq login and auth_query's connections as libpq's
 * keywords (server_connect.c, auth_query.c). A [databases] entry's own libpq keywords for them
 * (keepalives, keepalives_idle, keepalives_interval, keepalives_count, tcp_user_timeout) win for
 * its servers, whichever way they log in. */
#ifndef SLUICE_TCP_OPTIONS_H
#define SLUICE_TCP_OPTIONS_H

#include <stdbool.h>

#include "config.h"

/* TCP_NODELAY, and the keepalive and user-timeout settings (a 0 leaves the OS's): the config's,
 * or where db (may be NULL) sets its own keyword, the entry's. 0, or -errno of the first that
 * failed. For a TCP socket only. */
int tcp_options_apply(int fd, const struct config *cfg, const struct db_entry *db);
/* Does the socket carry the config's already (an accepted socket that inherited them)? */
bool tcp_options_present(int fd, const struct config *cfg);

/* The config's settings as libpq keywords, for those db does not set itself: appended at
 * kw[n], val[n] (at most TCP_OPTIONS_KEYWORDS); the new count. The numbers' text is kept in
 * *text, which must outlive kw and val. */
#define TCP_OPTIONS_KEYWORDS 5
struct tcp_keywords {
    char text[TCP_OPTIONS_KEYWORDS][12];
};
int tcp_options_keywords(const struct config *cfg, const struct db_entry *db, const char **kw,
                         const char **val, int n, struct tcp_keywords *text);

#endif
