/* fuzz_hba: libFuzzer target for hba.c — auth_hba_file text, whatever it says. Parsing must
 * neither crash nor leak, an error must name a line, and a parsed file is matched against a few
 * logins (IPv4, IPv6, unix socket, TLS on and off, names taken from the rules themselves) with
 * the result always a rule of the file or none. Built and run by scripts/fuzz. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hba.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static union peer_addr addr(int family, const char *text)
{
    union peer_addr ss;
    memset(&ss, 0, sizeof ss);
    ss.sa.sa_family = (sa_family_t)family;
    if (family == AF_INET)
        inet_pton(AF_INET, text, &ss.in.sin_addr);
    else if (family == AF_INET6)
        inet_pton(AF_INET6, text, &ss.in6.sin6_addr);
    return ss;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char err[1024];
    err[0] = '\0';
    struct hba *h = hba_parse((const char *)data, size, "", err, sizeof err);
    if (!h) {
        FUZZ_ASSERT(strncmp(err, "line ", 5) == 0 || strstr(err, "out of memory"));
        return 0;
    }
    union peer_addr addrs[] = {addr(AF_INET, "127.0.0.1"), addr(AF_INET, "10.1.2.3"),
                                       addr(AF_INET6, "::1"), addr(AF_INET6, "::ffff:10.1.2.3"),
                                       addr(AF_UNIX, NULL)};
    const char *dbs[] = {"appdb", "all", "", NULL};
    const char *users[] = {"app", "appdb", "", NULL};
    if (h->nrules > 0) {
        dbs[3] = h->rules[0].dbs && h->rules[0].dbs[0] ? h->rules[0].dbs[0] : "x";
        users[3] = h->rules[0].users && h->rules[0].users[0] ? h->rules[0].users[0] : "y";
    } else {
        dbs[3] = "x";
        users[3] = "y";
    }
    for (size_t a = 0; a < sizeof addrs / sizeof addrs[0]; a++) {
        for (int tls = 0; tls < 2; tls++) {
            for (int d = 0; d < 4; d++) {
                struct hba_login l = {
                    .addr = &addrs[a], .tls = tls, .database = dbs[d], .user = users[d]};
                const struct hba_rule *r = hba_match(h, &l);
                FUZZ_ASSERT(!r || (r >= h->rules && r < h->rules + h->nrules));
                if (r && r->conn == HBA_HOSTSSL)
                    FUZZ_ASSERT(tls && addrs[a].sa.sa_family != AF_UNIX);
                if (r && r->conn == HBA_LOCAL)
                    FUZZ_ASSERT(addrs[a].sa.sa_family == AF_UNIX);
            }
        }
    }
    hba_free(h);
    return 0;
}
