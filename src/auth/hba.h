/* hba: auth_hba_file, a subset of Postgres's pg_hba.conf — which login may use which method.
 * Parsing and matching only (the file is read by the caller); the first matching rule wins and
 * no match means reject, as in Postgres (documentation chapter 21.1).
 *
 *   local      DATABASE USER          METHOD
 *   host       DATABASE USER ADDRESS  METHOD      (TCP, with or without TLS)
 *   hostssl    DATABASE USER ADDRESS  METHOD      (TCP with TLS)
 *   hostnossl  DATABASE USER ADDRESS  METHOD      (TCP without TLS)
 *
 * DATABASE: all, sameuser, or names (comma lists, "quoted" names). USER: all, or names.
 * ADDRESS: all, an IPv4/IPv6 CIDR, or an address followed by a netmask field.
 * METHOD: trust, reject, md5, scram-sha-256, password, cert; cert takes one option, map=NAME
 * (the certificate's CN is mapped to user names by auth_ident_file's lines for NAME, as in
 * Postgres). Rejected with a line number (not silently ignored, as a rule that does not do what
 * its author thinks is a security hole): samerole/samegroup/@file/+group, host names,
 * samehost/samenet, other options after the method, other methods (peer, ident, ldap, ...).
 *
 * auth_ident_file is Postgres's pg_ident.conf: MAPNAME SYSTEM-USERNAME PG-USERNAME per line. A
 * SYSTEM-USERNAME starting with / is a POSIX extended regular expression, and \1 in PG-USERNAME
 * is its first parenthesized match; PG-USERNAME all matches every user. +group and @file are
 * rejected with a line number. */
#ifndef SLUICE_HBA_H
#define SLUICE_HBA_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "cidr.h"

enum hba_conn { HBA_LOCAL, HBA_HOST, HBA_HOSTSSL, HBA_HOSTNOSSL };
enum hba_method { HBA_TRUST, HBA_REJECT, HBA_MD5, HBA_SCRAM, HBA_PASSWORD, HBA_CERT };
const char *hba_method_name(enum hba_method m);

struct hba_rule {
    int line;
    enum hba_conn conn;
    bool all_dbs, sameuser;
    char **dbs; /* NULL-terminated */
    bool all_users;
    char **users; /* NULL-terminated */
    bool all_addrs;
    struct cidr addr;
    enum hba_method method;
    char *map; /* cert's map=NAME (auth_ident_file), NULL without */
};

struct hba {
    struct hba_rule *rules;
    int nrules;
};

/* Parse the whole text; NULL with err filled ("<origin>line N: why") on the first problem, or
 * when out of memory. An empty file gives zero rules (every login is rejected). */
struct hba *hba_parse(const char *text, size_t len, const char *origin, char *err, size_t errlen);
/* Read and parse a file (blocking: start-up and reload only). */
struct hba *hba_load(const char *path, char *err, size_t errlen);
void hba_free(struct hba *h);

/* auth_ident_file: user name maps. */
struct hba_ident;
struct hba_ident *hba_ident_parse(const char *text, size_t len, const char *origin, char *err,
                                  size_t errlen);
struct hba_ident *hba_ident_load(const char *path, char *err, size_t errlen);
void hba_ident_free(struct hba_ident *m);
int hba_ident_count(const struct hba_ident *m);
/* Whether map has a line that lets system_user (a certificate's CN) log in as user. */
bool hba_ident_match(const struct hba_ident *m, const char *map, const char *system_user,
                     const char *user);

/* What a login looks like to the rules. addr is NULL (or AF_UNIX) for a unix socket. */
struct hba_login {
    const union peer_addr *addr;
    bool tls;
    const char *database;
    const char *user;
};
/* The first rule that matches, or NULL. */
const struct hba_rule *hba_match(const struct hba *h, const struct hba_login *login);

#endif
