/* tcp_options: the TCP settings of the config (tcp_keepalive, tcp_keepidle, tcp_keepintvl,
 * tcp_keepcnt, tcp_user_timeout) on a socket, the one place they are turned into socket options:
 * client sockets get them from their listening socket (listener.c), a passthrough login's server
 * socket directly (server_login.c); a libpq login gets the same values as libpq keywords
 * (server_connect.c). */
#ifndef SLUICE_TCP_OPTIONS_H
#define SLUICE_TCP_OPTIONS_H

#include <stdbool.h>

#include "config.h"

/* TCP_NODELAY, and the keepalive and user-timeout settings the config gives (a 0 leaves the
 * OS's); 0, or -errno of the first that failed. For a TCP socket only. */
int tcp_options_apply(int fd, const struct config *cfg);
/* Does the socket carry them all already (an accepted socket that inherited them)? */
bool tcp_options_present(int fd, const struct config *cfg);

#endif
