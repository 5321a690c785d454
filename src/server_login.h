/* server_login: a backend login without libpq, for auth passthrough. When sluice holds a user's
 * SCRAM secret or md5 secret but not the password, libpq cannot log in as that user; this does,
 * with the ClientKey a client proved (SCRAM) or the md5 secret itself (passthrough.h). It
 * connects (TCP or Unix socket), asks for TLS per sslmode (with verify-ca/verify-full against
 * sslrootcert), sends the startup packet, answers the authentication request and reads the
 * server's ParameterStatus, BackendKeyData and ReadyForQuery; then the server is handed to
 * server.c exactly as after a libpq login. It also sends CancelRequests for such servers.
 *
 * The connection keywords are libpq's (the database entry's, as server.c fills them in): host,
 * hostaddr, port, dbname, user, options, application_name, fallback_application_name, sslmode,
 * sslrootcert, sslcert, sslkey. Only the first host of a list is tried. */
#ifndef SLUICE_SERVER_LOGIN_H
#define SLUICE_SERVER_LOGIN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

struct server;
struct passthrough_keys;

/* Start logging s in (s is CONNECTING, s->conn NULL). kw/val: NULL-terminated libpq keywords;
 * sslmode: the one they hold, as config parsed it (config_server_sslmode). 0, or -1 with why
 * filled in (then the caller closes s). */
int server_login_start(struct server *s, const char *const *kw, const char *const *val,
                       enum sslmode sslmode, const struct passthrough_keys *keys, char *why,
                       size_t whylen);
/* A socket event while logging in (called by server.c for CONNECTING servers with a login). */
void server_login_step(struct server *s, int status, int events);
/* server_close: free the login state (and the TLS session sluice made). */
void server_login_free(struct server *s);
/* Send a CancelRequest for s's backend (blocking: called on the thread pool). 0, or -1 with
 * why filled in. addr/pid/key are copies made on the loop thread by server_login_cancel_target. */
struct login_cancel_target {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t pid, key;
};
bool server_login_cancel_target(const struct server *s, struct login_cancel_target *out);
/* Where a passthrough login connected (SHOW SERVERS), or NULL. */
const char *server_login_host(const struct server *s);
const char *server_login_port(const struct server *s);
int server_login_send_cancel(const struct login_cancel_target *t, char *why, size_t whylen);

#endif
