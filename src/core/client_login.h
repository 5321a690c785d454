/* client_login: a client's login, from its first packet to its welcome (client_login.c). Its
 * public entry points are declared in client.h with the rest of the client (client_login_ok,
 * client_send_welcome, client_welcome_from_pool); these are what client.c hands it by state. */
#ifndef SLUICE_CLIENT_LOGIN_H
#define SLUICE_CLIENT_LOGIN_H

#include <stdbool.h>

struct client;
struct param_set;

/* STARTUP: whole startup-phase packets in c->in (SSLRequest, CancelRequest, the startup
 * packet). */
void client_login_on_startup_bytes(struct client *c);
/* AUTH: a whole authentication message in c->in goes to auth.c. */
void client_login_on_auth_bytes(struct client *c);
/* TLS_HANDSHAKE: the handshake goes on whenever the socket is ready the way OpenSSL asked. */
void client_login_tls_step(struct client *c);
/* AUTH, and the client has not been asked for anything: sluice itself is on the way, looking
 * its secret up (an auth_query lookup in flight or waiting for a connection, a SCRAM secret
 * derived on the thread pool). Such a login is not stalled by the client and never gives way
 * above max_client_logins (client.c make_room_for_a_login); except one whose lookup is held
 * back behind other addresses' and has not started (its own address's flood, auth_query.c). */
bool client_login_waits_on_sluice(const struct client *c);
/* Drop the authentication exchange in progress, if any (the client is leaving AUTH or closing).
 * Idempotent. */
void client_auth_end(struct client *c);
/* Give back its place in the ledger's logged-in counts, if it holds one (client_set_state, as
 * it starts closing: the counts are of clients logged in and not leaving). */
void client_login_give_slot(struct client *c);
/* Logged in: what it has now is what Postgres would reset its parameters to. 0 or -ENOMEM. */
int client_keep_login_params(struct client *c);

/* Free c->settings_in_order (client.h): the login sync queued it, or the client goes. */
void client_forget_settings_in_order(struct client *c);
/* What Postgres would give this session at login that sluice's servers do not hold: the role's
 * or database's idle_session_timeout (`defaults`: the pool's welcome, which carries it; servers
 * log in with it off, server_connect.c). It becomes the client's login value unless the client
 * sent its own (a startup option outranks it, in Postgres too): each lease's sync sets it, SHOW
 * shows it, RESET gives it back (login_reset.c), sluice ends the idle client after it
 * (client_check_timeouts), and the lease's end takes it off the backend. 0 or -ENOMEM. */
int client_take_login_defaults(struct client *c, const struct param_set *defaults)
    __attribute__((warn_unused_result));

#endif
