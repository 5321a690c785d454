/* cidr: an IPv4 or IPv6 network (address/prefix) and whether an address falls inside it. Used by
 * budgets (addr=) and hba rules; pure, no I/O. */
#ifndef SLUICE_CIDR_H
#define SLUICE_CIDR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
    int family;          /* AF_INET or AF_INET6 */
    uint8_t addr[16];    /* network byte order, masked */
    int prefix;          /* 0..32 or 0..128 */
};

/* "10.0.0.0/8", "::1/128", "127.0.0.1" (a host). 0, or -1 when it is not a network. */
int cidr_parse(const char *text, struct cidr *out);
/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches the IPv4 network too. */
bool cidr_contains(const struct cidr *net, const struct sockaddr_storage *addr);

#endif
