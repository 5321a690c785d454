/* test_hba: auth_hba_file parsing (hba_parse) and matching (hba_match), with no files and no
 * sockets: addresses are built in memory. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"
#include "hba.h"

static char err[1024];

static struct hba *parse(const char *text)
{
    err[0] = '\0';
    return hba_parse(text, strlen(text), "hba: ", err, sizeof err);
}

static union peer_addr addr_of(const char *ip)
{
    union peer_addr ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = &ss.in6;
        a->sin6_family = AF_INET6;
        inet_pton(AF_INET6, ip, &a->sin6_addr);
    } else if (strcmp(ip, "unix") == 0) {
        ss.sa.sa_family = AF_UNIX;
    } else {
        struct sockaddr_in *a = &ss.in;
        a->sin_family = AF_INET;
        inet_pton(AF_INET, ip, &a->sin_addr);
    }
    return ss;
}

/* The line of the rule that matches, 0 for none. */
static int match_line(const struct hba *h, const char *ip, bool tls, const char *db,
                      const char *user)
{
    union peer_addr ss = addr_of(ip);
    struct hba_login l = {.addr = &ss, .tls = tls, .database = db, .user = user};
    const struct hba_rule *r = hba_match(h, &l);
    return r ? r->line : 0;
}

static enum hba_method match_method(const struct hba *h, const char *ip, bool tls, const char *db,
                                    const char *user)
{
    union peer_addr ss = addr_of(ip);
    struct hba_login l = {.addr = &ss, .tls = tls, .database = db, .user = user};
    const struct hba_rule *r = hba_match(h, &l);
    return r ? r->method : HBA_REJECT;
}

static void a_typical_file_parses_with_comments_and_blank_lines(void)
{
    struct hba *h = parse("# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
                          "\n"
                          "local   all       all             trust\n"
                          "hostssl appdb     app   10.0.0.0/8  scram-sha-256   # apps\n"
                          "host    all       all   0.0.0.0/0   md5\r\n"
                          "host    all       all   ::/0        reject\n"
                          "hostnossl \"my db\" \"the user\" 127.0.0.1 255.255.255.255 password\n"
                          "host all admin 192.168.1.0/24 cert");
    CHECK(h != NULL);
    if (!h)
        return;
    CHECK_INT(h->nrules, 6);
    CHECK_INT(h->rules[0].conn, HBA_LOCAL);
    CHECK(h->rules[0].all_dbs && h->rules[0].all_users);
    CHECK_INT(h->rules[1].conn, HBA_HOSTSSL);
    CHECK_INT(h->rules[1].method, HBA_SCRAM);
    CHECK_INT(h->rules[1].line, 4);
    CHECK_STR(h->rules[4].dbs[0], "my db");
    CHECK_STR(h->rules[4].users[0], "the user");
    CHECK_INT(h->rules[4].addr.prefix, 32);
    CHECK_INT(h->rules[4].method, HBA_PASSWORD);
    CHECK_INT(h->rules[5].method, HBA_CERT);
    hba_free(h);
}

static void first_matching_rule_wins_and_no_match_is_null(void)
{
    struct hba *h = parse("hostssl appdb app 10.0.0.0/8 scram-sha-256\n"
                          "host    appdb app 10.1.0.0/16 reject\n"
                          "host    appdb app 10.0.0.0/8 md5\n"
                          "local   all   all trust\n");
    CHECK(h != NULL);
    CHECK_INT(match_line(h, "10.1.2.3", true, "appdb", "app"), 1);
    CHECK_INT(match_line(h, "10.1.2.3", false, "appdb", "app"), 2);
    CHECK_INT(match_method(h, "10.1.2.3", false, "appdb", "app"), HBA_REJECT);
    CHECK_INT(match_line(h, "10.2.2.3", false, "appdb", "app"), 3);
    CHECK_INT(match_line(h, "11.0.0.1", false, "appdb", "app"), 0);
    CHECK_INT(match_line(h, "10.0.0.1", false, "otherdb", "app"), 0);
    CHECK_INT(match_line(h, "10.0.0.1", false, "appdb", "bob"), 0);
    CHECK_INT(match_line(h, "unix", false, "appdb", "bob"), 4);
    hba_free(h);
}

static void hostssl_and_hostnossl_follow_tls(void)
{
    struct hba *h = parse("hostnossl all all all reject\n"
                          "hostssl   all all all md5\n");
    CHECK(h != NULL);
    CHECK_INT(match_method(h, "127.0.0.1", false, "d", "u"), HBA_REJECT);
    CHECK_INT(match_line(h, "127.0.0.1", false, "d", "u"), 1);
    CHECK_INT(match_line(h, "127.0.0.1", true, "d", "u"), 2);
    /* a unix socket is never host* */
    CHECK_INT(match_line(h, "unix", false, "d", "u"), 0);
    hba_free(h);
}

static void lists_keywords_and_quotes(void)
{
    struct hba *h = parse("host db1,db2, \"all\" u1,\"u 2\" all md5\n"
                          "host sameuser all all scram-sha-256\n");
    CHECK(h != NULL);
    CHECK_INT(match_line(h, "1.2.3.4", false, "db1", "u1"), 1);
    CHECK_INT(match_line(h, "1.2.3.4", false, "db2", "u 2"), 1);
    /* quoted "all" is a database named all, not the keyword */
    CHECK_INT(match_line(h, "1.2.3.4", false, "all", "u1"), 1);
    CHECK_INT(match_line(h, "1.2.3.4", false, "db3", "u1"), 0);
    CHECK_INT(match_line(h, "1.2.3.4", false, "bob", "bob"), 2);
    CHECK_INT(match_line(h, "1.2.3.4", false, "db3", "bob"), 0);
    hba_free(h);
}

static void ipv6_and_netmasks(void)
{
    struct hba *h = parse("host all all ::1/128 trust\n"
                          "host all all fd00:: ffff:ff00:: md5\n"
                          "host all all 192.168.0.0 255.255.0.0 password\n");
    CHECK(h != NULL);
    CHECK_INT(match_line(h, "::1", false, "d", "u"), 1);
    CHECK_INT(match_line(h, "fd00:12::5", false, "d", "u"), 2);
    CHECK_INT(match_line(h, "fe00::5", false, "d", "u"), 0);
    CHECK_INT(match_line(h, "192.168.40.1", false, "d", "u"), 3);
    CHECK_INT(match_line(h, "192.169.0.1", false, "d", "u"), 0);
    /* an IPv4-mapped IPv6 client matches an IPv4 rule */
    CHECK_INT(match_line(h, "::ffff:192.168.1.1", false, "d", "u"), 3);
    hba_free(h);
}

static void bad_files_name_the_line_and_the_problem(void)
{
    struct {
        const char *text, *message;
    } cases[] = {
        {"host all all 10.0.0.0/8 ident\n", "line 1: authentication method \"ident\""},
        {"\nhost all all 10.0.0.0/33 md5\n", "line 2: invalid CIDR address"},
        {"host all all example.com md5\n", "host names are not supported"},
        {"host all all samenet md5\n", "address \"samenet\" is not supported"},
        {"hostgssenc all all all md5\n", "no GSSAPI"},
        {"hosts all all all md5\n", "invalid connection type \"hosts\""},
        {"host all all md5\n", "missing fields"},
        {"local all md5\n", "missing fields"},
        {"host all all 10.0.0.1 md5\n", "needs a /prefix or a netmask"},
        {"host all all 10.0.0.0 255.0.255.0 md5\n", "invalid netmask"},
        {"host all all all md5 clientcert=verify-full\n", "after the method is not supported"},
        {"host all all all md5 map=m\n", "only map=NAME, once, after cert"},
        {"host all all all cert map=a map=b\n", "only map=NAME, once, after cert"},
        {"host all all all cert map=\n", "only map=NAME, once, after cert"},
        {"host samerole all all md5\n", "not supported by sluice"},
        {"host @dbs.txt all all md5\n", "@file inclusion"},
        {"host all +admins all md5\n", "group membership"},
        {"host \"all all all md5\n", "unterminated quoted string"},
        {"host a,,b all all md5\n", "empty item"},
        {"host all all all md5,\n", "a list may not end with a comma"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hba *h = parse(cases[i].text);
        CHECK(h == NULL);
        if (!strstr(err, cases[i].message)) {
            fprintf(stderr, "  case %zu: error \"%s\" lacks \"%s\"\n", i, err, cases[i].message);
            CHECK(strstr(err, cases[i].message) != NULL);
        }
        CHECK(strncmp(err, "hba: line ", 10) == 0);
        hba_free(h);
    }
    /* a NUL byte */
    struct hba *h = hba_parse("host all all all md5\n\0", 22, "", err, sizeof err);
    CHECK(h == NULL);
    CHECK(strstr(err, "NUL") != NULL);
}

static void an_empty_file_has_no_rules_and_matches_nothing(void)
{
    struct hba *h = parse("# nothing\n\n   \n");
    CHECK(h != NULL);
    CHECK_INT(h ? h->nrules : -1, 0);
    CHECK_INT(match_line(h, "127.0.0.1", false, "d", "u"), 0);
    hba_free(h);
    CHECK_INT(match_line(NULL, "127.0.0.1", false, "d", "u"), 0);
}

static void load_reads_a_file_and_reports_a_missing_one(void)
{
    char path[] = "/tmp/sluice-test-hba-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *text = "host all all 127.0.0.1/32 scram-sha-256\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    struct hba *h = hba_load(path, err, sizeof err);
    CHECK(h != NULL);
    CHECK_INT(h ? h->nrules : 0, 1);
    hba_free(h);
    unlink(path);
    h = hba_load(path, err, sizeof err);
    CHECK(h == NULL);
    CHECK(strstr(err, "No such file") != NULL);
}

static void cert_rules_take_a_map(void)
{
    struct hba *h = parse("hostssl all all all cert map=certs\nhostssl all all all cert\n");
    CHECK(h != NULL);
    if (h) {
        CHECK(h->nrules == 2);
        CHECK(h->rules[0].map && strcmp(h->rules[0].map, "certs") == 0);
        CHECK(h->rules[1].map == NULL);
    }
    hba_free(h);
}

static struct hba_ident *ident(const char *text)
{
    err[0] = '\0';
    return hba_ident_parse(text, strlen(text), "ident: ", err, sizeof err);
}

static void ident_maps_names_regexes_and_all(void)
{
    struct hba_ident *m = ident("# comment\n"
                                "certs  app               reporting\n"
                                "certs  /^(.*)@corp\\.com$  \\1\n"
                                "certs  /^ops-            admin\n"
                                "wide   robot             all\n");
    CHECK(m != NULL);
    CHECK(hba_ident_count(m) == 4);
    CHECK(hba_ident_match(m, "certs", "app", "reporting"));
    CHECK(!hba_ident_match(m, "certs", "app", "app"));
    CHECK(!hba_ident_match(m, "other", "app", "reporting"));
    CHECK(hba_ident_match(m, "certs", "ann@corp.com", "ann"));
    CHECK(!hba_ident_match(m, "certs", "ann@corp.com", "bob"));
    CHECK(!hba_ident_match(m, "certs", "ann@corpXcom", "ann"));
    CHECK(!hba_ident_match(m, "certs", "ann@corp.com", "ann@corp.com"));
    CHECK(hba_ident_match(m, "certs", "ops-1", "admin"));
    CHECK(hba_ident_match(m, "wide", "robot", "anyone"));
    CHECK(!hba_ident_match(m, "wide", "robot2", "anyone"));
    CHECK(!hba_ident_match(NULL, "certs", "app", "reporting"));
    hba_ident_free(m);
    struct {
        const char *text, *message;
    } bad[] = {
        {"certs app\n", "line 1: expected MAPNAME SYSTEM-USERNAME PG-USERNAME"},
        {"\ncerts /([ app\n", "line 2: invalid regular expression"},
        {"certs app +admins\n", "+group and @file are not supported"},
        {"certs a,b app\n", "a list is not allowed here"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m = ident(bad[i].text);
        CHECK(m == NULL);
        if (!strstr(err, bad[i].message)) {
            fprintf(stderr, "  case %zu: error \"%s\" lacks \"%s\"\n", i, err, bad[i].message);
            CHECK(strstr(err, bad[i].message) != NULL);
        }
        hba_ident_free(m);
    }
}

int main(void)
{
    RUN(a_typical_file_parses_with_comments_and_blank_lines);
    RUN(first_matching_rule_wins_and_no_match_is_null);
    RUN(hostssl_and_hostnossl_follow_tls);
    RUN(lists_keywords_and_quotes);
    RUN(ipv6_and_netmasks);
    RUN(bad_files_name_the_line_and_the_problem);
    RUN(an_empty_file_has_no_rules_and_matches_nothing);
    RUN(load_reads_a_file_and_reports_a_missing_one);
    RUN(cert_rules_take_a_map);
    RUN(ident_maps_names_regexes_and_all);
    return CHECK_DONE();
}
