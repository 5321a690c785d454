/* cidr: an IPv4 or IPv6 network (address/prefix) and whether an address falls inside it, and the
 * compact form in which sluice keeps a client's address. Used by budgets (addr=), hba rules, logs
 * and SHOW; pure, no I/O. */
#ifndef SLUICE_CIDR_H
#define SLUICE_CIDR_H

#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

/* A peer's address: IPv4, IPv6, or a Unix socket (family only: its path says nothing about the
 * peer). 28 bytes where sockaddr_storage takes 128, which counts with 10,000 idle clients. */
union peer_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* From what accept() or getsockname() filled in. */
void peer_addr_from(union peer_addr *out, const struct sockaddr_storage *ss);
/* The IP as text and the port; false (ip "", port 0) for a Unix socket or an unknown family. */
bool peer_addr_ip(const union peer_addr *a, char *ip, size_t n, int *port);
/* The network one party is taken to hold, as text ("" for a Unix socket or an unknown family):
 * an IPv4 address itself, an IPv6 address's /64 ("2001:db8:1:2::/64": a host or a customer is
 * given a whole /64, so one party may use 2^64 addresses of it), an IPv4-mapped IPv6 address its
 * IPv4. For shares per client (auth_query's lookups), where each full address of a /64 would
 * make its own share. n: at least INET6_ADDRSTRLEN + 3. */
void peer_addr_holder(const union peer_addr *a, char *out, size_t n);
/* "10.0.0.1:5432", "[::1]:5432" or "unix", for logs. */
void peer_addr_text(const union peer_addr *a, char *out, size_t n);

struct cidr {
    int family;          /* AF_INET or AF_INET6 */
    uint8_t addr[16];    /* network byte order, masked */
    int prefix;          /* 0..32 or 0..128 */
};

/* "10.0.0.0/8", "::1/128", "127.0.0.1" (a host). 0, or -1 when it is not a network. */
int cidr_parse(const char *text, struct cidr *out);
/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches the IPv4 network too. */
bool cidr_contains(const struct cidr *net, const union peer_addr *addr);

#endif
