/* resolver: host names to addresses off the loop, for libpq's hostaddr (see resolver.h).
 *
 * The names of a host list are resolved one after another (lists are short); every address of a
 * name becomes an entry of its own, host=name hostaddr=address, in getaddrinfo's order, so libpq
 * still tries each address in turn as it would have done after resolving the name itself.
 * Unix-socket directories, empty entries and numeric addresses pass through as they are. */
#include "resolver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "list.h" /* container_of */

#define MAX_HOSTS 16
#define MAX_ADDRS_PER_NAME 8

struct resolver {
    uv_getaddrinfo_t req;
    uv_loop_t *loop;
    resolver_cb cb;
    void *owner; /* NULL: cancelled, free when the request comes back */
    char *hosts[MAX_HOSTS];
    char *ports[MAX_HOSTS];
    int nhosts, nports;
    int next; /* the entry being resolved */
    char *host_out, *addr_out, *port_out;
    size_t host_len, addr_len, port_len;
    char unresolved[300]; /* why the last name that could not be resolved failed */
    char error[300];
};

static bool is_name(const char *h)
{
    unsigned char ignored[sizeof(struct in6_addr)];
    return h[0] && h[0] != '/' && h[0] != '@' && inet_pton(AF_INET, h, ignored) != 1 &&
           inet_pton(AF_INET6, h, ignored) != 1;
}

/* Split a comma list into at most max copies. -1: too many, or out of memory. */
static int split(const char *list, char **out, int max)
{
    int n = 0;
    const char *p = list;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (n == max || !(out[n] = strndup(p, len)))
            return -1;
        n++;
        if (!p[len])
            return n;
        p += len + 1;
    }
}

/* Append ",piece" (or "piece" to an empty list) to *s. false: out of memory. */
static bool append(char **s, size_t *len, const char *piece, bool first)
{
    size_t add = strlen(piece) + (first ? 0 : 1);
    char *grown = realloc(*s, *len + add + 1);
    if (!grown)
        return false;
    snprintf(grown + *len, add + 1, "%s%s", first ? "" : ",", piece);
    *s = grown;
    *len += add;
    return true;
}

static bool add_entry(struct resolver *r, const char *host, const char *addr, int i)
{
    bool first = r->host_out == NULL;
    if (!append(&r->host_out, &r->host_len, host, first) ||
        !append(&r->addr_out, &r->addr_len, addr, first))
        return false;
    return r->nports <= 1 || append(&r->port_out, &r->port_len, r->ports[i], first);
}

static int step(struct resolver *r);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct resolver *r = container_of(req, struct resolver, req);
    if (!r->owner) {
        uv_freeaddrinfo(res);
        resolver_free(r);
        return;
    }
    const char *name = r->hosts[r->next];
    int kept = 0;
    for (struct addrinfo *a = res; a && kept < MAX_ADDRS_PER_NAME; a = a->ai_next) {
        char text[INET6_ADDRSTRLEN];
        const void *where = a->ai_family == AF_INET
                                ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                                : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
            !inet_ntop(a->ai_family, where, text, sizeof(text)))
            continue;
        if (!add_entry(r, name, text, r->next)) {
            snprintf(r->error, sizeof(r->error), "out of memory resolving \"%s\"", name);
            uv_freeaddrinfo(res);
            r->cb(r, r->owner);
            return;
        }
        kept++;
    }
    uv_freeaddrinfo(res);
    if (!kept) {
        /* as libpq: a host that cannot be resolved is skipped; the list fails only when none
         * is left (this message is then the last name's) */
        snprintf(r->unresolved, sizeof(r->unresolved),
                 "could not translate host name \"%s\" to address: %s", name,
                 status < 0 ? uv_strerror(status) : "no IPv4 or IPv6 address");
    }
    r->next++;
    if (step(r) != 0)
        r->cb(r, r->owner); /* all done, or failed */
}

/* Resolve the next name; entries that are not names are copied on the way. 0: a lookup is under
 * way. 1: every entry is done. -1: failed (r->error says why). */
static int step(struct resolver *r)
{
    for (; r->next < r->nhosts; r->next++) {
        const char *h = r->hosts[r->next];
        if (is_name(h))
            break;
        /* a socket directory or an empty entry: no address, libpq uses host as it is */
        if (!add_entry(r, h, h[0] == '/' || h[0] == '@' ? "" : h, r->next)) {
            snprintf(r->error, sizeof(r->error), "out of memory");
            return -1;
        }
    }
    if (r->next == r->nhosts) {
        if (!r->host_out)
            snprintf(r->error, sizeof(r->error), "%s", r->unresolved);
        return 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(r->loop, &r->req, on_resolved, r->hosts[r->next], NULL, &hints);
    if (rc < 0) {
        snprintf(r->error, sizeof(r->error), "could not translate host name \"%s\" to address: %s",
                 r->hosts[r->next], uv_strerror(rc));
        return -1;
    }
    return 0;
}

static const char *keyword(const char *const *kw, const char *const *val, const char *name)
{
    for (int i = 0; kw[i]; i++) {
        if (strcmp(kw[i], name) == 0)
            return val[i];
    }
    return NULL;
}

int resolver_start(uv_loop_t *loop, const char *const *kw, const char *const *val, resolver_cb cb,
                   void *owner, struct resolver **out, char *why, size_t whylen)
{
    *out = NULL;
    const char *host = keyword(kw, val, "host"), *hostaddr = keyword(kw, val, "hostaddr");
    const char *port = keyword(kw, val, "port");
    if (!host || !host[0] || (hostaddr && hostaddr[0]))
        return 1;
    bool any_name = false;
    for (const char *p = host; *p;) {
        size_t len = strcspn(p, ",");
        char one[256];
        snprintf(one, sizeof(one), "%.*s", (int)(len < sizeof(one) ? len : sizeof(one) - 1), p);
        any_name |= is_name(one);
        p += len + (p[len] ? 1 : 0);
    }
    if (!any_name)
        return 1;
    struct resolver *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    r->nhosts = split(host, r->hosts, MAX_HOSTS);
    r->nports = port && port[0] ? split(port, r->ports, MAX_HOSTS) : 0;
    if (r->nhosts < 0 || r->nports < 0) {
        snprintf(why, whylen, "more than %d hosts, or out of memory", MAX_HOSTS);
        resolver_free(r);
        return -1;
    }
    if (r->nports > 1 && r->nports != r->nhosts) {
        snprintf(why, whylen, "could not match %d port numbers to %d hosts", r->nports, r->nhosts);
        resolver_free(r);
        return -1;
    }
    r->cb = cb;
    r->owner = owner;
    r->loop = loop;
    int rc = step(r);
    if (rc != 0) {
        /* failed at once (or, impossibly, nothing to look up): no callback */
        snprintf(why, whylen, "%s", r->error);
        resolver_free(r);
        return rc < 0 ? -1 : 1;
    }
    *out = r;
    return 0;
}

const char *resolver_error(const struct resolver *r)
{
    return r->error[0] ? r->error : NULL;
}

static void set_keyword(const char **kw, const char **val, int *n, const char *name,
                        const char *value)
{
    for (int i = 0; i < *n; i++) {
        if (strcmp(kw[i], name) == 0) {
            val[i] = value;
            return;
        }
    }
    kw[*n] = name;
    val[(*n)++] = value;
    kw[*n] = NULL;
    val[*n] = NULL;
}

void resolver_apply(const struct resolver *r, const char **kw, const char **val, int *n)
{
    set_keyword(kw, val, n, "host", r->host_out);
    set_keyword(kw, val, n, "hostaddr", r->addr_out);
    if (r->port_out)
        set_keyword(kw, val, n, "port", r->port_out);
}

void resolver_free(struct resolver *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->nhosts; i++)
        free(r->hosts[i]);
    for (int i = 0; i < r->nports; i++)
        free(r->ports[i]);
    free(r->host_out);
    free(r->addr_out);
    free(r->port_out);
    free(r);
}

void resolver_cancel(struct resolver *r)
{
    if (!r)
        return;
    r->owner = NULL;
    /* A request the thread pool has not started is cancelled at once; one that runs comes back
     * to on_resolved, which frees r. Either way the callback frees it. */
    (void)uv_cancel((uv_req_t *)&r->req);
}
