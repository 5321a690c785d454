/* http: /health, /livez and /metrics over a small libuv TCP server (see http.h).
 *
 * One request per connection: read the head (at most HTTP_MAX_HEAD bytes, within
 * HTTP_READ_TIMEOUT_MS from accept, so a client trickling bytes cannot hold a connection), answer,
 * half-close, and close once the client has closed too (or a short linger passed) so the answer
 * is not lost to a reset. At most HTTP_MAX_CONNECTIONS at once: when full, a new connection
 * takes the place of the oldest one that has not been answered (or is lingering after its
 * answer), so a crowd trickling requests (slowloris) cannot keep /health from answering: a real
 * check sends its request at once and is answered long before 64 newer connections push it out.
 * The bodies come from report.c; nothing here touches the data path. */
#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "http_request.h"
#include "list.h"
#include "listener.h"
#include "log.h"
#include "report.h"
#include "sluice.h"

#define LINGER_MS 1000 /* after answering: wait this long for the client to close first */

struct http_server {
    struct process *proc;
    struct listener *listener; /* listener.c's, as the clients' (its shutdown drain included) */
    struct list conns;  /* in accept order: the oldest first */
    bool crowded;       /* at the cap: evictions logged once until it is not */
};

struct http_conn {
    struct list_node node;
    struct http_server *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    int open_handles;
    bool answered;
    bool written;  /* the answer is out */
    bool peer_eof; /* the client closed its side (after sending its request) */
    bool closing;
    char *response;
    size_t len;
    char buf[HTTP_MAX_HEAD];
};

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h)
{
    struct http_conn *hc = h->data;
    if (--hc->open_handles > 0)
        return;
    list_remove(&hc->srv->conns, &hc->node);
    free(hc->response);
    free(hc);
}

static void conn_close(struct http_conn *hc)
{
    if (hc->closing)
        return;
    hc->closing = true;
    uv_close((uv_handle_t *)&hc->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&hc->timer, on_conn_closed);
}

static void on_conn_timer(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_shutdown_done(uv_shutdown_t *req, int status)
{
    struct http_conn *hc = req->data;
    if (status < 0)
        conn_close(hc);
    /* else: keep reading (and discarding) until the client closes or the linger passes */
}

static void on_write_done(uv_write_t *req, int status)
{
    struct http_conn *hc = req->data;
    hc->written = true;
    if (status < 0 || hc->closing || hc->peer_eof) {
        conn_close(hc); /* peer_eof: everything was read, so closing cannot reset the answer */
        return;
    }
    hc->shutdown_req.data = hc;
    if (uv_shutdown(&hc->shutdown_req, (uv_stream_t *)&hc->tcp, on_shutdown_done) < 0) {
        conn_close(hc);
        return;
    }
    uv_timer_start(&hc->timer, on_conn_timer, LINGER_MS, 0);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    }
    return "Unknown";
}

/* Send the whole answer and end the connection afterwards. body is copied. */
static void respond(struct http_conn *hc, int status, const char *content_type, const char *body,
                    size_t body_len, bool head_only)
{
    hc->answered = true;
    uv_timer_stop(&hc->timer);
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                     status, status_text(status), content_type, body_len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    size_t send_body = head_only ? 0 : body_len;
    hc->response = malloc((size_t)n + send_body);
    if (!hc->response) {
        conn_close(hc);
        return;
    }
    memcpy(hc->response, head, (size_t)n);
    if (send_body)
        memcpy(hc->response + n, body, send_body);
    uv_buf_t b = uv_buf_init(hc->response, (unsigned)((size_t)n + send_body));
    hc->write_req.data = hc;
    if (uv_write(&hc->write_req, (uv_stream_t *)&hc->tcp, &b, 1, on_write_done) < 0)
        conn_close(hc);
}

static void respond_text(struct http_conn *hc, int status, const char *msg)
{
    respond(hc, status, "text/plain; charset=utf-8", msg, strlen(msg), false);
}

static void route(struct http_conn *hc, const struct http_request *req)
{
    struct worker *worker = sluice_control_worker(hc->srv->proc);
    bool is_health = strcmp(req->path, "/health") == 0;
    bool is_metrics = strcmp(req->path, "/metrics") == 0;
    bool is_livez = strcmp(req->path, "/livez") == 0;
    if (!is_health && !is_metrics && !is_livez) {
        respond_text(hc, 404, "not found: try /health, /livez or /metrics\n");
        return;
    }
    if (req->method == HTTP_METHOD_OTHER) {
        respond_text(hc, 405, "only GET (and HEAD) are allowed\n");
        return;
    }
    bool head_only = req->method == HTTP_METHOD_HEAD;
    if (is_livez) {
        /* Liveness: the loop answers, whatever the databases do (readiness is /health). */
        static const char alive[] = "alive\n";
        respond(hc, 200, "text/plain; charset=utf-8", alive, sizeof(alive) - 1, head_only);
        return;
    }
    char *body = NULL;
    size_t len = 0;
    int status = 200;
    bool ok = is_health ? report_health(worker, &body, &len, &status)
                        : report_metrics(worker, &body, &len);
    if (!ok) {
        respond_text(hc, 500, "out of memory\n");
        return;
    }
    respond(hc, status, is_health ? "application/json" : "text/plain; version=0.0.4; charset=utf-8",
            body, len, head_only);
    free(body);
}

static void on_conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct http_conn *hc = h->data;
    static char discard[4096]; /* after the answer: whatever else comes is dropped */
    if (hc->answered || hc->len >= sizeof(hc->buf))
        *buf = uv_buf_init(discard, sizeof(discard));
    else
        *buf = uv_buf_init(hc->buf + hc->len, (unsigned)(sizeof(hc->buf) - hc->len));
}

static void on_conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct http_conn *hc = stream->data;
    if (hc->closing)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && hc->answered && !hc->written) {
            /* A client that half-closes after its request (nc, HTTP/1.0 tools) still gets the
             * answer: closing now would cancel the write. */
            hc->peer_eof = true;
            uv_read_stop(stream);
            return;
        }
        conn_close(hc); /* before the answer the client gave up; after it, we are done */
        return;
    }
    if (hc->answered || nread == 0)
        return;
    hc->len += (size_t)nread;
    struct http_request req;
    switch (http_parse_request(hc->buf, hc->len, &req)) {
    case HTTP_PARSE_INCOMPLETE:
        return;
    case HTTP_PARSE_BAD:
        respond_text(hc, 400, "bad request\n");
        return;
    case HTTP_PARSE_TOO_LARGE:
        respond_text(hc, 431, "request head too large\n");
        return;
    case HTTP_PARSE_OK:
        route(hc, &req);
        return;
    }
}

/* Make room for a new connection: close the oldest one that has nothing left to send (no
 * request yet, or answered and lingering). false when every one is still sending its answer. */
static bool evict_oldest(struct http_server *srv, const struct http_conn *newcomer)
{
    struct list_node *n, *tmp;
    list_for_each(&srv->conns, n, tmp)
    {
        struct http_conn *hc = container_of(n, struct http_conn, node);
        if (hc == newcomer || hc->closing || (hc->answered && !hc->written))
            continue;
        conn_close(hc);
        return true;
    }
    return false;
}

static size_t open_conns(const struct http_server *srv)
{
    size_t n = 0;
    struct list_node *node, *tmp;
    list_for_each(&srv->conns, node, tmp)
    {
        n += !container_of(node, struct http_conn, node)->closing;
    }
    return n;
}

/* listener_ops.accepted: fd is this connection's socket. NULL: nothing for the listener to
 * read later (reading starts here). */
static struct client *http_accepted(struct process *proc, int fd,
                                    const struct sockaddr_storage *addr)
{
    (void)addr;
    struct http_server *srv = proc->http;
    struct http_conn *hc = calloc(1, sizeof(*hc));
    if (!hc) {
        close(fd);
        return NULL;
    }
    hc->srv = srv;
    uv_tcp_init(srv->proc->loop, &hc->tcp);
    uv_timer_init(srv->proc->loop, &hc->timer);
    hc->tcp.data = hc->timer.data = hc;
    hc->open_handles = 2;
    list_append(&srv->conns, &hc->node);
    if (uv_tcp_open(&hc->tcp, fd) < 0) {
        close(fd);
        conn_close(hc);
        return NULL;
    }
    if (open_conns(srv) > HTTP_MAX_CONNECTIONS) {
        if (!evict_oldest(srv, hc)) {
            conn_close(hc);
            return NULL;
        }
        if (!srv->crowded)
            log_msg(LOG_WARNING,
                    "HTTP: %d connections open: closing the oldest unanswered one for each new "
                    "one (slow or stuck clients)",
                    HTTP_MAX_CONNECTIONS);
        srv->crowded = true;
    } else if (open_conns(srv) < HTTP_MAX_CONNECTIONS / 2) {
        srv->crowded = false;
    }
    uv_timer_start(&hc->timer, on_conn_timer, HTTP_READ_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&hc->tcp, on_conn_alloc, on_conn_read) < 0)
        conn_close(hc);
    return NULL;
}

static const struct listener_ops http_listener_ops = {.accepted = http_accepted};

static int http_start(struct process *proc)
{
    const struct config *cfg = proc->cfg;
    if (cfg->http_listen_port <= 0)
        return 0;
    if (cfg->http_listen_port > 65535) {
        log_msg(LOG_ERROR, "http_listen_port %lld is not a port", (long long)cfg->http_listen_port);
        return UV_EINVAL;
    }
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return UV_ENOMEM;
    srv->proc = proc;
    list_init(&srv->conns);
    proc->http = srv;
    const char *host = cfg->http_listen_addr[0] && strcmp(cfg->http_listen_addr, "*") != 0
                           ? cfg->http_listen_addr
                           : "0.0.0.0";
    int port = (int)cfg->http_listen_port;
    struct sockaddr_storage addr;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc < 0) {
        log_msg(LOG_ERROR, "http_listen_addr %s is not an IP address", host);
        return rc;
    }
    srv->listener = listener_new(proc, &http_listener_ops, 64);
    rc = srv->listener ? listener_listen_tcp(srv->listener, host, port) : UV_ENOMEM;
    if (rc < 0) {
        log_msg(LOG_ERROR, "cannot listen for HTTP on %s:%d: %s", host, port, uv_strerror(rc));
        return rc; /* http_stop (from the shutdown that follows) closes the handle */
    }
    log_msg(LOG_INFO, "HTTP (/health, /livez, /metrics) listening on %s:%d", host, port);
    return 0;
}

/* Shutdown: the connections queued in the accept queue are accepted (listener_close), and
 * every connection not answered yet, those among them, is answered 503 with Connection: close
 * (and closed after, as any answer is); closing them unanswered would reset the ones whose
 * request sits unread. The answered ones finish their linger. */
static void http_stop(struct process *proc)
{
    struct http_server *srv = proc->http;
    if (!srv)
        return;
    listener_close(srv->listener);
    struct list_node *n, *tmp;
    list_for_each(&srv->conns, n, tmp)
    {
        struct http_conn *hc = container_of(n, struct http_conn, node);
        if (!hc->answered && !hc->closing)
            respond_text(hc, 503, "sluice is shutting down\n");
    }
}

static void http_free(struct process *proc)
{
    if (proc->http)
        free(proc->http->listener);
    free(proc->http);
    proc->http = NULL;
}

const struct sluice_service http_service = {
    .name = "http",
    .start = http_start,
    .stop = http_stop,
    .free = http_free,
};
