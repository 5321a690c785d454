/* cidr: address/prefix parsing and matching (see cidr.h). */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void apply_mask(uint8_t *addr, int nbytes, int prefix)
{
    for (int i = 0; i < nbytes; i++) {
        int bits = prefix - i * 8;
        uint8_t mask = bits >= 8 ? 0xff : bits <= 0 ? 0 : (uint8_t)(0xff << (8 - bits));
        addr[i] &= mask;
    }
}

int cidr_parse(const char *text, struct cidr *out)
{
    char host[64];
    const char *slash = strchr(text, '/');
    size_t hlen = slash ? (size_t)(slash - text) : strlen(text);
    if (hlen == 0 || hlen >= sizeof(host))
        return -1;
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    memset(out, 0, sizeof(*out));
    int max;
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return -1;
    }
    out->prefix = max;
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3)
            return -1;
        int v = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            v = v * 10 + (*p - '0');
        }
        if (v > max)
            return -1;
        out->prefix = v;
    }
    apply_mask(out->addr, max / 8, out->prefix);
    return 0;
}

void peer_addr_from(union peer_addr *out, const struct sockaddr_storage *ss)
{
    memset(out, 0, sizeof(*out));
    if (ss->ss_family == AF_INET)
        memcpy(&out->in, ss, sizeof(out->in));
    else if (ss->ss_family == AF_INET6)
        memcpy(&out->in6, ss, sizeof(out->in6));
    else
        out->sa.sa_family = ss->ss_family;
}

bool peer_addr_ip(const union peer_addr *a, char *ip, size_t n, int *port)
{
    ip[0] = '\0';
    *port = 0;
    if (a->sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &a->in.sin_addr, ip, (socklen_t)n);
        *port = ntohs(a->in.sin_port);
        return true;
    }
    if (a->sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &a->in6.sin6_addr, ip, (socklen_t)n);
        *port = ntohs(a->in6.sin6_port);
        return true;
    }
    return false;
}

void peer_addr_holder(const union peer_addr *a, char *out, size_t n)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    out[0] = '\0';
    if (a->sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &a->in.sin_addr, out, (socklen_t)n);
        return;
    }
    if (a->sa.sa_family != AF_INET6)
        return;
    const uint8_t *v6 = a->in6.sin6_addr.s6_addr;
    if (memcmp(v6, mapped, sizeof(mapped)) == 0) {
        inet_ntop(AF_INET, v6 + 12, out, (socklen_t)n);
        return;
    }
    struct in6_addr net = {0};
    memcpy(net.s6_addr, v6, 8);
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &net, ip, sizeof(ip));
    snprintf(out, n, "%s/64", ip);
}

void peer_addr_text(const union peer_addr *a, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN];
    int port;
    if (!peer_addr_ip(a, ip, sizeof(ip), &port))
        snprintf(out, n, "unix");
    else if (a->sa.sa_family == AF_INET6)
        snprintf(out, n, "[%s]:%d", ip, port);
    else
        snprintf(out, n, "%s:%d", ip, port);
}

bool cidr_contains(const struct cidr *net, const union peer_addr *addr)
{
    uint8_t a[16];
    int nbytes;
    if (addr->sa.sa_family == AF_INET && net->family == AF_INET) {
        memcpy(a, &addr->in.sin_addr, 4);
        nbytes = 4;
    } else if (addr->sa.sa_family == AF_INET6) {
        const uint8_t *v6 = addr->in6.sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (net->family == AF_INET && memcmp(v6, mapped, 12) == 0) {
            memcpy(a, v6 + 12, 4);
            nbytes = 4;
        } else if (net->family == AF_INET6) {
            memcpy(a, v6, 16);
            nbytes = 16;
        } else {
            return false;
        }
    } else {
        return false;
    }
    apply_mask(a, nbytes, net->prefix);
    return memcmp(a, net->addr, (size_t)nbytes) == 0;
}
