/* server_login: a backend login without libpq, for auth passthrough (see server_login.h).
 *
 * States, in order (each waits for the socket, then moves on):
 *   CONNECTING   non-blocking connect() in progress (to hostaddr: server.c has resolved the
 *                host name off the loop, resolver.c)
 *   SSL_ANSWER   SSLRequest sent; one byte 'S' or 'N' expected
 *   TLS          TLS handshake (SSL_connect) in progress
 *   AUTH         startup packet sent; authentication and the welcome messages until
 *                ReadyForQuery: reported as LOGIN_RESULT_LOGGED_IN
 *   QUERY        a login query server_connect.c asked for (server_login_query) until
 *                ReadyForQuery: its rows, error and end reported
 *   REPORTED     waiting for server_connect.c's next word; once the server serves, the login
 *                keeps only its cancel target and TLS session
 * Every failure is reported as LOGIN_RESULT_FAILED: server_connect.c closes the server and tells
 * the pool, as after a libpq failure. */
#include "server_login.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth.h"
#include "codec.h"
#include "log.h"
#include "params.h"
#include "passthrough.h"
#include "pool.h"
#include "scram.h"
#include "server.h"
#include "sluice.h"
#include "tcp_options.h"
#include "tls.h"

enum login_step {
    STEP_CONNECTING,
    STEP_SSL_ANSWER,
    STEP_TLS,
    STEP_AUTH,
    STEP_QUERY,
    STEP_REPORTED,
};

enum ssl_want { SSL_NO, SSL_PREFER, SSL_REQUIRE, SSL_VERIFY_CA, SSL_VERIFY_FULL };

#define MAX_LOGIN_MESSAGE (64 * 1024) /* auth and welcome messages are small */

struct server_login {
    struct server *s;
    const struct server_login_hooks *hooks; /* server_connect.c's: reports and the socket */
    enum login_step step;
    struct passthrough_keys keys;
    struct scram_client scram;
    bool scram_started;

    char *host;   /* the name: for verify-full, SNI and messages */
    char *addr_text; /* where to connect: hostaddr, else host */
    char *port;
    char *user, *dbname, *options, *app_name, *client_encoding;
    enum ssl_want ssl_want;
    char *sslrootcert, *sslcert, *sslkey;

    struct sockaddr_storage addr;
    socklen_t addrlen;

    SSL_CTX *ctx;
    SSL *ssl;          /* sluice's own: freed here (libpq's is libpq's) */
    struct msg_out in; /* bytes read and not yet handled */
    uint32_t cancel_key;
    bool got_key;
    bool logged_in;
};

static const char *kw_get(const char *const *kw, const char *const *val, const char *name)
{
    for (int i = 0; kw[i]; i++)
        if (strcmp(kw[i], name) == 0 && val[i] && val[i][0])
            return val[i];
    return NULL;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- finishing ---- */

static void fail(struct server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct server *s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    s->login->hooks->reported(s, LOGIN_RESULT_FAILED, &(struct login_report){.why = msg});
}

void server_login_unprovable_message(const char *user, char *buf, size_t size)
{
    snprintf(buf, size, "sluice holds no password the server accepts for user \"%s\"", user);
}

/* The server asks for a proof sluice holds nothing to give (the secret it has is of another
 * kind): not an outage but a login that cannot be made as l->user, told to the pool's waiting
 * clients as 28000 (they would otherwise hear that the database is down). */
static void fail_unprovable(struct server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail_unprovable(struct server *s, const char *fmt, ...)
{
    char msg[512], told[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    server_login_unprovable_message(s->login->user, told, sizeof(told));
    s->login->hooks->reported(
        s, LOGIN_RESULT_FAILED,
        &(struct login_report){.why = msg, .sqlstate = "28000", .message = told});
}

/* Tell server_connect.c (hooks->reported) how a step ended. true while the login reads on: s open,
 * a query of server_connect.c's in flight. */
static bool report(struct server *s, enum login_result result, const struct login_report *r)
{
    struct server_login *l = s->login;
    l->hooks->reported(s, result, r);
    return s->login == l && l->step == STEP_QUERY;
}

/* The authentication is over: keep no secret longer than it needs. */
static void end_auth(struct server_login *l)
{
    l->logged_in = true;
    if (l->scram_started)
        scram_client_free(&l->scram);
    l->scram_started = false;
    OPENSSL_cleanse(&l->keys, sizeof(l->keys));
}

void server_login_free(struct server *s)
{
    struct server_login *l = s->login;
    if (!l)
        return;
    s->login = NULL;
    if (l->logged_in && s->io.fd >= 0) {
        /* Terminate, as libpq's PQfinish sends: the backend ends at once instead of on EOF. */
        static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};
        if (l->ssl)
            (void)SSL_write(l->ssl, terminate, sizeof(terminate));
        else
            (void)!send(s->io.fd, terminate, sizeof(terminate), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (l->ssl) {
        if (s->io.ssl == l->ssl)
            s->io.ssl = NULL;
        SSL_shutdown(l->ssl); /* best effort close_notify; never waits on a non-blocking fd */
        SSL_free(l->ssl);
    }
    SSL_CTX_free(l->ctx);
    if (s->io.fd >= 0) {
        close(s->io.fd);
        s->io.fd = -1;
    }
    if (l->scram_started)
        scram_client_free(&l->scram);
    OPENSSL_cleanse(&l->keys, sizeof(l->keys));
    codec_out_free(&l->in);
    free(l->host);
    free(l->addr_text);
    free(l->port);
    free(l->user);
    free(l->dbname);
    free(l->options);
    free(l->client_encoding);
    free(l->app_name);
    free(l->sslrootcert);
    free(l->sslcert);
    free(l->sslkey);
    free(l);
}

/* ---- writing ---- */

/* Write what s->out holds; true when all is out (else wait for writable). Fails s on error. */
static bool flush_out(struct server *s)
{
    while (s->out_pos < s->out.len) {
        ssize_t n = sockio_write(&s->io, s->out.data + s->out_pos, s->out.len - s->out_pos);
        if (n < 0) {
            fail(s, "write to server failed during login: %s", strerror((int)-n));
            return false;
        }
        if (n == 0)
            break;
        s->out_pos += (uint32_t)n;
    }
    if (s->out_pos < s->out.len) {
        sockio_want(&s->io, UV_READABLE | UV_WRITABLE);
        return false;
    }
    codec_out_reset(&s->out);
    s->out_pos = 0;
    sockio_want(&s->io, UV_READABLE);
    return true;
}

/* ---- connecting ---- */

static void send_startup(struct server *s);
static void start_tls(struct server *s);

static void begin_connect(struct server *s)
{
    struct server_login *l = s->login;
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(s, "cannot create a socket: %s", strerror(errno));
        return;
    }
    if (l->addr.ss_family != AF_UNIX)
        tcp_options_apply(fd, s->pool->worker->cfg,
                          config_find_db(s->pool->worker->cfg, s->pool->db_name));
    if (sockio_open(&s->io, s->pool->worker->loop, fd, s, l->hooks->on_io) < 0) {
        close(fd);
        fail(s, "cannot watch the server socket");
        return;
    }
    l->step = STEP_CONNECTING;
    if (connect(fd, (struct sockaddr *)&l->addr, l->addrlen) < 0 && errno != EINPROGRESS) {
        fail(s, "could not connect to server at %s port %s: %s", l->host, l->port,
             strerror(errno));
        return;
    }
    sockio_want(&s->io, UV_WRITABLE);
}

static void connected(struct server *s)
{
    struct server_login *l = s->login;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(s->io.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        fail(s, "could not connect to server at %s port %s: %s", l->host, l->port, strerror(err));
        return;
    }
    if (l->ssl_want != SSL_NO && l->addr.ss_family != AF_UNIX) {
        codec_begin(&s->out, 0);
        codec_put_i32(&s->out, 80877103); /* SSLRequest */
        codec_end(&s->out);
        l->step = STEP_SSL_ANSWER;
        flush_out(s);
        return;
    }
    if (l->ssl_want >= SSL_REQUIRE) {
        fail(s, "sslmode %s needs TCP: a Unix socket has no TLS",
             l->ssl_want == SSL_REQUIRE ? "require" : "verify-*");
        return;
    }
    send_startup(s);
}

/* ---- TLS ---- */


static void start_tls(struct server *s)
{
    struct server_login *l = s->login;
    char why[256];
    l->ctx = SSL_CTX_new(TLS_client_method());
    if (!l->ctx) {
        fail(s, "cannot create a TLS context");
        return;
    }
    SSL_CTX_set_min_proto_version(l->ctx, TLS1_2_VERSION);
    if (l->ssl_want >= SSL_VERIFY_CA) {
        if (!l->sslrootcert) {
            fail(s, "sslmode verify-ca/verify-full needs a root certificate: set "
                    "server_tls_ca_file (or sslrootcert in the database entry)");
            return;
        }
        if (SSL_CTX_load_verify_locations(l->ctx, l->sslrootcert, NULL) != 1) {
            tls_error_text(why, sizeof(why), "cannot read the root certificate");
            fail(s, "%s \"%s\"", why, l->sslrootcert);
            return;
        }
        SSL_CTX_set_verify(l->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(l->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (l->sslcert && l->sslkey &&
        (SSL_CTX_use_certificate_chain_file(l->ctx, l->sslcert) != 1 ||
         SSL_CTX_use_PrivateKey_file(l->ctx, l->sslkey, SSL_FILETYPE_PEM) != 1)) {
        tls_error_text(why, sizeof(why), "cannot load the client certificate");
        fail(s, "%s \"%s\"", why, l->sslcert);
        return;
    }
    l->ssl = SSL_new(l->ctx);
    if (!l->ssl || SSL_set_fd(l->ssl, s->io.fd) != 1) {
        fail(s, "cannot start TLS");
        return;
    }
    SSL_set_connect_state(l->ssl); /* tls_handshake drives either side */
    struct in6_addr ignored;
    bool is_name = inet_pton(AF_INET, l->host, &ignored) != 1 &&
                   inet_pton(AF_INET6, l->host, &ignored) != 1;
    if (is_name)
        SSL_set_tlsext_host_name(l->ssl, l->host);
    if (l->ssl_want == SSL_VERIFY_FULL) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(l->ssl);
        int ok = is_name ? X509_VERIFY_PARAM_set1_host(vp, l->host, 0)
                         : X509_VERIFY_PARAM_set1_ip_asc(vp, l->host);
        if (ok != 1) {
            fail(s, "cannot check the server certificate against \"%s\"", l->host);
            return;
        }
    }
    SSL_set_mode(l->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    l->step = STEP_TLS;
}

static void tls_step(struct server *s)
{
    struct server_login *l = s->login;
    char why[400];
    switch (tls_handshake(l->ssl, "server", why, sizeof(why))) {
    case TLS_STEP_DONE:
        s->io.ssl = l->ssl;
        send_startup(s);
        return;
    case TLS_STEP_WANT_READ:
        sockio_want(&s->io, UV_READABLE);
        return;
    case TLS_STEP_WANT_WRITE:
        sockio_want(&s->io, UV_WRITABLE);
        return;
    case TLS_STEP_FAILED:
        fail(s, "%s", why);
        return;
    }
}

static void ssl_answer(struct server *s)
{
    struct server_login *l = s->login;
    uint8_t b;
    ssize_t n = recv(s->io.fd, &b, 1, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        fail(s, "server closed the connection after SSLRequest");
        return;
    }
    if (b == 'S') {
        start_tls(s);
        if (s->login && s->login->step == STEP_TLS)
            tls_step(s);
        return;
    }
    if (b == 'N' && l->ssl_want == SSL_PREFER) {
        send_startup(s);
        return;
    }
    if (b == 'N') {
        fail(s, "server does not support SSL, but SSL was required");
        return;
    }
    fail(s, "received invalid response to SSL negotiation: %c", b);
}

/* ---- startup and authentication ---- */

static void send_startup(struct server *s)
{
    struct server_login *l = s->login;
    const char *names[6], *values[6];
    int n = 0;
    names[n] = "user";
    values[n++] = l->user;
    names[n] = "database";
    values[n++] = l->dbname;
    if (l->app_name) { /* the database entry's; none by default (build_conninfo says why) */
        names[n] = "application_name";
        values[n++] = l->app_name;
    }
    if (l->client_encoding) { /* a session-mode client's own (server_connect.c add_startup) */
        names[n] = "client_encoding";
        values[n++] = l->client_encoding;
    }
    if (l->options) {
        names[n] = "options";
        values[n++] = l->options;
    }
    codec_put_startup(&s->out, names, values, n);
    l->step = STEP_AUTH;
    if (s->out.oom) {
        fail(s, "out of memory");
        return;
    }
    flush_out(s);
}

static void put_password_message(struct server *s, const char *text)
{
    codec_begin(&s->out, 'p');
    codec_put_cstring(&s->out, text);
    codec_end(&s->out);
}

/* AuthenticationSASL: the server's mechanisms, NUL-separated. */
static bool start_sasl(struct server *s, struct msg_reader *r)
{
    struct server_login *l = s->login;
    bool offered = false;
    for (;;) {
        const char *mech = codec_read_cstring(r);
        if (!mech || !mech[0])
            break;
        offered |= strcmp(mech, SCRAM_MECHANISM) == 0;
    }
    if (!offered) {
        fail(s, "server offered no SASL mechanism sluice can use (SCRAM-SHA-256)");
        return false;
    }
    if (l->keys.kind != PASSTHROUGH_SCRAM) {
        fail_unprovable(s,
                        "server asks for SCRAM, but sluice has only an md5 secret for user "
                        "\"%s\": store the password or the SCRAM secret in auth_file",
                        l->user);
        return false;
    }
    scram_client_init(&l->scram, &l->keys.secret, l->keys.client_key);
    l->scram_started = true;
    char *first = NULL;
    if (scram_client_first(&l->scram, NULL, &first) != SCRAM_OK) {
        fail(s, "out of memory");
        return false;
    }
    codec_begin(&s->out, 'p');
    codec_put_cstring(&s->out, SCRAM_MECHANISM);
    codec_put_i32(&s->out, (int32_t)strlen(first));
    codec_put_bytes(&s->out, first, strlen(first));
    codec_end(&s->out);
    free(first);
    return true;
}

static bool handle_auth(struct server *s, struct msg_reader *r, const uint8_t *body, uint32_t len)
{
    struct server_login *l = s->login;
    int32_t code = codec_read_i32(r);
    const char *why = NULL;
    if (r->bad) {
        fail(s, "malformed authentication request from the server");
        return false;
    }
    switch (code) {
    case 0: /* AuthenticationOk */
        return true;
    case 5: { /* MD5Password */
        const uint8_t *salt = codec_read_bytes(r, 4);
        if (!salt) {
            fail(s, "malformed AuthenticationMD5Password");
            return false;
        }
        if (l->keys.kind != PASSTHROUGH_MD5) {
            fail_unprovable(s,
                            "server asks for md5, but sluice has only SCRAM keys for user "
                            "\"%s\": store the password in auth_file, or set the user's "
                            "password_encryption to scram-sha-256 on the server",
                            l->user);
            return false;
        }
        char answer[36];
        auth_md5_hex(l->keys.md5 + 3, 32, salt, 4, answer);
        put_password_message(s, answer);
        OPENSSL_cleanse(answer, sizeof(answer));
        return true;
    }
    case 10: /* SASL */
        return start_sasl(s, r);
    case 11: { /* SASLContinue */
        if (!l->scram_started) {
            fail(s, "SASLContinue before SASL");
            return false;
        }
        char *final = NULL;
        enum scram_result rc = scram_client_final(&l->scram, (const char *)body + 4, len - 4,
                                                  &final, &why);
        if (rc != SCRAM_OK) {
            fail(s, "SCRAM login as \"%s\" with the client's keys failed: %s", l->user,
                 why ? why : "out of memory");
            return false;
        }
        codec_begin(&s->out, 'p');
        codec_put_bytes(&s->out, final, strlen(final));
        codec_end(&s->out);
        free(final);
        return true;
    }
    case 12: { /* SASLFinal */
        if (!l->scram_started ||
            scram_client_verify(&l->scram, (const char *)body + 4, len - 4, &why) != SCRAM_OK) {
            fail(s, "SCRAM login as \"%s\": %s", l->user, why ? why : "SASLFinal out of order");
            return false;
        }
        return true;
    }
    case 3: /* CleartextPassword */
        fail_unprovable(s,
                        "server asks for a cleartext password for user \"%s\", which sluice "
                        "does not know (it holds only a secret): store the password in auth_file",
                        l->user);
        return false;
    default:
        fail(s, "server asks for an authentication method sluice cannot answer (%d) for user "
                "\"%s\"",
             code, l->user);
        return false;
    }
}

/* One whole message from the server. false: s was failed (closed) or the login finished. */
static bool handle_message(struct server *s, uint8_t type, const uint8_t *body, uint32_t len)
{
    struct server_login *l = s->login;
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    switch (type) {
    case 'R':
        return handle_auth(s, &r, body, len);
    case 'E': {
        struct error_fields f;
        codec_parse_error(body, len, &f);
        if (l->step == STEP_QUERY)
            return report(s, LOGIN_RESULT_QUERY_ERROR,
                          &(struct login_report){.message = f.message ? f.message
                                                                      : "server error"});
        const char *text = f.message ? f.message : "server error during login";
        char why[512];
        snprintf(why, sizeof(why), "login as \"%s\" failed: %s:  %s", l->user,
                 f.severity ? f.severity : "FATAL", text);
        return report(s, LOGIN_RESULT_FAILED,
                      &(struct login_report){.why = why, .sqlstate = f.sqlstate, .message = text});
    }
    case 'S': {
        const char *name = codec_read_cstring(&r), *value = codec_read_cstring(&r);
        if (name && value && (l->step == STEP_AUTH || l->step == STEP_QUERY) &&
            params_is_reported(name) &&
            params_set(&s->params, name, value) < 0) {
            fail(s, "out of memory");
            return false;
        }
        return true;
    }
    case 'K':
        s->backend_pid = codec_read_i32(&r);
        l->cancel_key = (uint32_t)codec_read_i32(&r);
        l->got_key = !r.bad;
        return true;
    case 'N':
        return true;
    case 'T':
    case 'C':
    case 'I': /* EmptyQueryResponse: a connect_query of only comments or semicolons */
        return true;
    case 'D': {
        /* A one-column row with a short value (the probe's): longer ones nobody reads */
        int16_t ncols = codec_read_i16(&r);
        int32_t vlen = codec_read_i32(&r);
        const uint8_t *v = vlen > 0 && vlen < 32 ? codec_read_bytes(&r, (size_t)vlen) : NULL;
        if (l->step != STEP_QUERY || ncols != 1 || !v)
            return true;
        char value[32];
        memcpy(value, v, (size_t)vlen);
        value[vlen] = '\0';
        return report(s, LOGIN_RESULT_ROW, &(struct login_report){.value = value});
    }
    case 'Z': {
        enum login_result done = LOGIN_RESULT_QUERY_DONE;
        if (l->step == STEP_AUTH) {
            end_auth(l);
            done = LOGIN_RESULT_LOGGED_IN;
        }
        l->step = STEP_REPORTED;
        return report(s, done, &(struct login_report){0});
    }
    default:
        fail(s, "unexpected message '%c' from the server during login", type);
        return false;
    }
}

static void read_messages(struct server *s)
{
    struct server_login *l = s->login;
    for (;;) {
        uint8_t chunk[4096];
        ssize_t n = sockio_read(&s->io, chunk, sizeof(chunk));
        if (n == SOCKIO_AGAIN)
            break;
        if (n <= 0) {
            fail(s, "server closed the connection during login%s%s", n < 0 ? ": " : "",
                 n < 0 ? strerror((int)-n) : "");
            return;
        }
        codec_put_bytes(&l->in, chunk, (size_t)n);
        if (l->in.oom || l->in.len > MAX_LOGIN_MESSAGE + 4096) {
            fail(s, "server sent too much during login");
            return;
        }
        size_t pos = 0;
        for (;;) {
            const uint8_t *h = l->in.data + pos;
            uint8_t type;
            uint32_t body_len;
            enum frame_result fr = codec_frame_header(h, l->in.len - pos, MAX_LOGIN_MESSAGE - 4,
                                                      &type, &body_len);
            if (fr == FRAME_NEED_MORE)
                break;
            if (fr == FRAME_BAD_LENGTH) {
                fail(s, "invalid message length %u from the server during login",
                     codec_get_u32(h + 1));
                return;
            }
            if (l->in.len - pos < CODEC_HEADER_LEN + (size_t)body_len)
                break;
            if (!handle_message(s, type, h + CODEC_HEADER_LEN, body_len)) {
                /* failed (s closed, l freed), or serving: the rest of l is the server's */
                if (s->login == l)
                    codec_out_free(&l->in);
                return;
            }
            pos += CODEC_HEADER_LEN + (size_t)body_len;
        }
        memmove(l->in.data, l->in.data + pos, l->in.len - pos);
        l->in.len -= pos;
        if (s->out.len > s->out_pos && !flush_out(s))
            return;
    }
    if (s->login && s->out.len > s->out_pos)
        flush_out(s);
}

void server_login_step(struct server *s, int status, int events)
{
    struct server_login *l = s->login;
    if (status < 0 && l->step != STEP_CONNECTING) {
        fail(s, "server connection failed during login: %s", sockio_poll_error(&s->io, status));
        return;
    }
    switch (l->step) {
    case STEP_CONNECTING:
        connected(s);
        return;
    case STEP_SSL_ANSWER:
        if ((events & UV_WRITABLE) && !flush_out(s))
            return;
        if (events & UV_READABLE)
            ssl_answer(s);
        return;
    case STEP_TLS:
        tls_step(s);
        return;
    case STEP_AUTH:
    case STEP_QUERY:
        if ((events & UV_WRITABLE) && s->out.len > s->out_pos && !flush_out(s))
            return;
        if (events & UV_READABLE)
            read_messages(s);
        return;
    case STEP_REPORTED: /* the server is server.c's now */
        return;
    }
}

/* Called from the login's report (hooks->reported), inside read_messages, which writes it out after
 * the messages. */
void server_login_query(struct server *s, const char *sql)
{
    s->login->step = STEP_QUERY;
    codec_put_query(&s->out, sql);
}

/* ---- start ---- */

/* What the login does for a libpq sslmode (parsed once, at config load). */
static enum ssl_want ssl_want_of(enum sslmode mode)
{
    switch (mode) {
    case SSLMODE_UNSET:
    case SSLMODE_PREFER:
        return SSL_PREFER; /* libpq's default */
    case SSLMODE_DISABLE:
    case SSLMODE_ALLOW:
        return SSL_NO; /* allow: libpq tries without TLS first */
    case SSLMODE_REQUIRE:
        return SSL_REQUIRE;
    case SSLMODE_VERIFY_CA:
        return SSL_VERIFY_CA;
    case SSLMODE_VERIFY_FULL:
        return SSL_VERIFY_FULL;
    }
    return SSL_PREFER;
}

int server_login_start(struct server *s, const char *const *kw, const char *const *val,
                       enum sslmode sslmode, const struct passthrough_keys *keys,
                       const struct server_login_hooks *hooks, char *why, size_t whylen)
{
    struct server_login *l = calloc(1, sizeof(*l));
    if (!l) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    s->login = l;
    l->s = s;
    l->hooks = hooks;
    l->keys = *keys;
    codec_out_init(&l->in);
    const char *host = kw_get(kw, val, "host");
    const char *hostaddr = kw_get(kw, val, "hostaddr");
    if (!host)
        host = hostaddr ? hostaddr : "/var/run/postgresql";
    if (!hostaddr || hostaddr[0] == ',')
        hostaddr = host; /* no address for the first host: a socket directory */
    const char *port = kw_get(kw, val, "port");
    const char *app_name = kw_get(kw, val, "application_name");
    if (!app_name)
        app_name = kw_get(kw, val, "fallback_application_name");
    l->host = strndup(host, strcspn(host, ",")); /* the first host of a list */
    l->addr_text = strndup(hostaddr, strcspn(hostaddr, ","));
    l->port = strndup(port ? port : "5432", strcspn(port ? port : "5432", ","));
    l->user = dup_or_null(kw_get(kw, val, "user"));
    l->dbname = dup_or_null(kw_get(kw, val, "dbname"));
    l->options = dup_or_null(kw_get(kw, val, "options"));
    l->app_name = dup_or_null(app_name);
    l->client_encoding = dup_or_null(kw_get(kw, val, "client_encoding"));
    l->sslrootcert = dup_or_null(kw_get(kw, val, "sslrootcert"));
    l->sslcert = dup_or_null(kw_get(kw, val, "sslcert"));
    l->sslkey = dup_or_null(kw_get(kw, val, "sslkey"));
    if (!l->host || !l->addr_text || !l->port || !l->user || !l->dbname) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    l->ssl_want = ssl_want_of(sslmode);
    char *end = NULL;
    long portnum = strtol(l->port, &end, 10);
    if (!end || *end || portnum < 1 || portnum > 65535) {
        snprintf(why, whylen, "invalid port number: \"%s\"", l->port);
        return -1;
    }
    memset(&l->addr, 0, sizeof(l->addr));
    if (l->addr_text[0] == '/') {
        struct sockaddr_un *un = (struct sockaddr_un *)&l->addr;
        un->sun_family = AF_UNIX;
        int n = snprintf(un->sun_path, sizeof(un->sun_path), "%s/.s.PGSQL.%ld", l->addr_text,
                         portnum);
        if (n < 0 || (size_t)n >= sizeof(un->sun_path)) {
            snprintf(why, whylen, "Unix socket path too long: \"%s\"", l->addr_text);
            return -1;
        }
        l->addrlen = sizeof(*un);
        begin_connect(s);
        return 0;
    }
    struct sockaddr_in *in4 = (struct sockaddr_in *)&l->addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&l->addr;
    if (uv_ip4_addr(l->addr_text, (int)portnum, in4) == 0 ||
        uv_ip6_addr(l->addr_text, (int)portnum, in6) == 0) {
        l->addrlen = l->addr.ss_family == AF_INET ? sizeof(*in4) : sizeof(*in6);
        begin_connect(s);
        return 0;
    }
    /* server.c resolves every host name before a login starts (resolver.c) */
    snprintf(why, whylen, "host name \"%s\" was not resolved to an address", l->host);
    return -1;
}

/* ---- cancel ---- */

const char *server_login_host(const struct server *s)
{
    return s->login ? s->login->host : NULL;
}

const char *server_login_port(const struct server *s)
{
    return s->login ? s->login->port : NULL;
}

bool server_login_cancel_target(const struct server *s, struct cancel_target *out)
{
    const struct server_login *l = s->login;
    if (!l || !l->got_key)
        return false;
    memcpy(&out->addr, &l->addr, sizeof(out->addr));
    out->addrlen = l->addrlen;
    out->pid = (uint32_t)s->backend_pid;
    out->key = l->cancel_key;
    return true;
}
