/* tls: client-facing TLS — the server SSL_CTX built from the client_tls_* keys (at start and on
 * every reload, so renewed certificates are picked up by SIGHUP), one SSL object per client on
 * its own non-blocking socket, the handshake step, and what auth.c needs from a session (the
 * peer certificate's CN, the tls-server-end-point hash for SCRAM channel binding). Reading and
 * writing through the SSL object is sockio.c's; when to start and drive the handshake is
 * client.c's. Upstream TLS is libpq's (server_tls_* become libpq keywords in server.c), except
 * on a passthrough login, where server_login.c builds its session and steps its handshake here. */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h" /* enum sslmode: client_tls_sslmode, PgBouncer's meanings towards clients */

struct config;

/* The largest TLS record sluice sends a client, in plaintext bytes: what Postgres sends (see
 * tls.c for why a client can hang on larger ones). */
#define TLS_MAX_RECORD_TO_CLIENT 8192

/* Build the context from cfg. At start: 0, or -1 after logging what is wrong (sluice
 * refuses to start). */
int tls_init(const struct config *cfg) __attribute__((warn_unused_result));
/* The context cfg asks for, built (its files read) off the loop by a reload (reload_reader.h)
 * and put in force on it, so the files are read once. */
struct tls_context;
/* Build it, with blocking I/O, on any thread: could cfg's client TLS settings be put in force
 * (certificate and key readable and a pair, CA file readable)? NULL with what is wrong in err:
 * a reload or SET that fails it is refused whole, so that SHOW CONFIG never names settings not
 * in force. */
struct tls_context *tls_context_build(const struct config *cfg, char *err, size_t errlen);
void tls_context_free(struct tls_context *t);
/* After a reload: put the context built in force (t is taken). Connections keep the context
 * they started with. Other threads may call tls_client_new and tls_client_mode meanwhile: they
 * see the old pair or the new one, never a mix or a freed one. */
void tls_reload_built(const struct config *cfg, struct tls_context *t);
/* Shutdown: drop the context. */
void tls_free(void);

/* The mode in force (of the last context that built). */
enum sslmode tls_client_mode(void);
/* A new server-side SSL for an accepted socket, or NULL (logged). */
SSL *tls_client_new(int fd);

enum tls_step { TLS_STEP_DONE, TLS_STEP_WANT_READ, TLS_STEP_WANT_WRITE, TLS_STEP_FAILED };
/* One non-blocking handshake step, either side (a client's accepted session, or the upstream
 * session server_login.c starts); peer ("client", "server") names the other end in why, which
 * gets the reason on TLS_STEP_FAILED. */
enum tls_step tls_handshake(SSL *ssl, const char *peer, char *why, size_t whylen);
/* Best-effort close_notify (never waits), then free. */
void tls_client_close(SSL *ssl);

/* "what: <the newest OpenSSL error>" into out, and the error queue emptied. */
void tls_error_text(char *out, size_t n, const char *what);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" for the log. */
void tls_describe(SSL *ssl, char *out, size_t outlen);
/* RFC 5929 tls-server-end-point: the hash of sluice's certificate with its signature's digest
 * (SHA-256 for MD5 and SHA-1). Length, or 0 when there is no certificate or its digest is
 * unknown (then channel binding is not offered). */
size_t tls_server_end_point(SSL *ssl, uint8_t *out, size_t outlen);
/* Whether the client sent a certificate and it verified (against client_tls_ca_file). */
bool tls_peer_verified(SSL *ssl);
/* The CN of a client certificate that verified, into out. false: no certificate, it did not
 * verify, it has no CN, or the CN contains a NUL. */
bool tls_peer_cn(SSL *ssl, char *out, size_t outlen);

#endif
