/* login_notice: what Postgres tells a client at login besides the welcome, the one owner of it.
 * Postgres keeps application_name (and role, session_authorization) as a name (GUC_IS_NAME): a
 * value of 64 bytes or more is cut to
 * 63 at a character boundary of the database's encoding, with NOTICE 42622 "identifier "..."
 * will be truncated to "..."", sent after AuthenticationOk and before the first
 * ParameterStatus, unless the client's own client_min_messages (a startup parameter) is above
 * NOTICE. sluice opens backends itself (libpq, whose login NOTICE goes to sluice's log) or sets
 * the value with set_config (whose NOTICE it swallows), and a reused backend says nothing again,
 * so the client's NOTICE is written here, at its welcome. Where Postgres raises it (F, L, R: its
 * source file, line and routine) and the severity as it spells it (S, localized) are learned
 * from the first such NOTICE a backend of the worker sends (login_notice_learn*), never assumed
 * for a version; until then those fields are left out (the protocol makes them optional). No
 * I/O. */
#ifndef SLUICE_LOGIN_NOTICE_H
#define SLUICE_LOGIN_NOTICE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "params.h"

/* Where Postgres raises the truncation NOTICE, as a backend told it; empty strings: not yet. */
struct login_notice_source {
    char severity[32]; /* 'S' */
    char file[64];     /* 'F' */
    char line[16];     /* 'L' */
    char routine[64];  /* 'R' */
};

/* The raw startup values whose NOTICE the client is due, each NUL-terminated, the block ended
 * by an empty one; NULL when none (the common case: nothing to keep per client) or out of
 * memory. `startup` is the client's startup parameters as sent. Free with free(). */
char *login_notice_plan(const struct param_set *startup);

/* Append the NOTICEs of `plan` to o, each value cut as a database in `server_encoding` cuts it
 * (NULL: UTF8). */
void login_notice_put(struct msg_out *o, const char *plan, const char *server_encoding,
                      const struct login_notice_source *src);

/* A backend's notice, as fields (NULL: absent): a 42622 one teaches src where Postgres raises
 * it. login_notice_learn_body reads them from a NoticeResponse body. */
void login_notice_learn(struct login_notice_source *src, const char *sqlstate, const char *severity,
                        const char *file, const char *line, const char *routine);
void login_notice_learn_body(struct login_notice_source *src, const uint8_t *body, size_t len);

#endif
