/* server_login: a backend login without libpq, for auth passthrough. When sluice holds a user's
 * SCRAM secret or md5 secret but not the password, libpq cannot log in as that user; this does,
 * with the ClientKey a client proved (SCRAM) or the md5 secret itself (passthrough.h). It
 * connects (TCP or Unix socket), asks for TLS per sslmode (with verify-ca/verify-full against
 * sslrootcert), sends the startup packet, answers the authentication request and reads the
 * server's ParameterStatus, BackendKeyData and ReadyForQuery; then it runs the login queries
 * server_connect.c asks for (server_login_query). It tells server_connect.c how each step ended
 * through one callback (server_login_hooks.reported), and never decides the server's fate. It also
 * keeps the BackendKeyData and address that a CancelRequest for such a server needs
 * (cancel_send.c sends it).
 *
 * The connection keywords are libpq's (the database entry's, as server.c fills them in): host,
 * hostaddr, port, dbname, user, options, application_name, fallback_application_name, sslmode,
 * sslrootcert, sslcert, sslkey. Only the first host of a list is tried. */
#ifndef SLUICE_SERVER_LOGIN_H
#define SLUICE_SERVER_LOGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cancel_send.h"
#include "config.h"
#include "sockio.h"

struct server;
struct passthrough_keys;

/* How a step of the login ended, as server_on_login hears it. */
enum login_result {
    LOGIN_RESULT_FAILED,      /* why: for the log; sqlstate and message: the server's
                                 ErrorResponse when it refused the login, else NULL */
    LOGIN_RESULT_LOGGED_IN,   /* ReadyForQuery after the authentication: parameters, backend
                                 pid and cancel key are known */
    LOGIN_RESULT_ROW,         /* a row of the login query: value, its one column */
    LOGIN_RESULT_QUERY_ERROR, /* the login query's ErrorResponse: message, its primary text */
    LOGIN_RESULT_QUERY_DONE,  /* ReadyForQuery after the login query */
};
/* What the clients of a pool are told (FATAL 28000) when the server asks user for a proof
 * sluice holds nothing to give: no password, or a secret of another kind. */
void server_login_unprovable_message(const char *user, char *buf, size_t size);

struct login_report {
    const char *why, *sqlstate, *message, *value; /* valid during the call only */
};
/* Where the login reports, given to server_login_start by server_connect.c, which owns the
 * connecting states: this file calls nothing above it. */
struct server_login_hooks {
    /* How a step ended: server_connect.c decides what follows (a login query, the pool, or
     * closing s, which frees the login). */
    void (*reported)(struct server *s, enum login_result result, const struct login_report *r);
    /* The callback of the socket the login opens (the connecting server's). */
    sockio_cb on_io;
};

/* Start logging s in (s is LOGIN_PASSTHROUGH, s->conn NULL). kw/val: NULL-terminated libpq
 * keywords; sslmode: the one they hold, as config parsed it (config_server_sslmode). 0, or -1
 * with why filled in (then the caller closes s). */
int server_login_start(struct server *s, const char *const *kw, const char *const *val,
                       enum sslmode sslmode, const struct passthrough_keys *keys,
                       const struct server_login_hooks *hooks, char *why, size_t whylen);
/* A socket event while logging in or running a login query (server_connect.c's socket
 * callback hands them here). */
void server_login_step(struct server *s, int status, int events);
/* After LOGIN_RESULT_LOGGED_IN or LOGIN_RESULT_QUERY_DONE: send sql; its outcome comes back as
 * ROW, QUERY_ERROR and QUERY_DONE reports. */
void server_login_query(struct server *s, const char *sql);
/* server_close: free the login state (and the TLS session sluice made). */
void server_login_free(struct server *s);
/* Where s's backend's CancelRequest goes (the address this login connected to) and its
 * BackendKeyData; false before the login has read it. cancel.c sends it (cancel_send.c). */
bool server_login_cancel_target(const struct server *s, struct cancel_target *out);
/* Where a passthrough login connected (SHOW SERVERS), or NULL. */
const char *server_login_host(const struct server *s);
const char *server_login_port(const struct server *s);

#endif
