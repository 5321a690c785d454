/* admin_table: the result-set writer the SHOW commands share (admin_show.c,
 * admin_show_conns.c). Rows go straight into the client's output as DataRows; every value is
 * text on the wire, typed text (OID 25) or int8 (OID 20) in the RowDescription as PgBouncer does.
 * The writer counts the cells of each row against the columns, so a row that disagrees with its
 * header is a bug caught at once (abort) rather than a client reading garbage. */
#ifndef SLUICE_ADMIN_TABLE_H
#define SLUICE_ADMIN_TABLE_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cidr.h"
#include "codec.h"

struct worker;
struct client;

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

enum col_type { COL_TEXT, COL_INT };

struct col {
    const char *name;
    enum col_type type;
};

/* Writes one result set; counts cells so a row with the wrong number of them is caught. */
struct table {
    struct msg_out *o;
    int ncols;
    int cells;
};

/* RowDescription of these columns (pointers into a column table), then rows. */
void table_begin_picked(struct table *t, struct msg_out *o, const struct col *const *cols, int n);
/* RowDescription of a whole column table (at most 32 columns). */
void table_begin(struct table *t, struct msg_out *o, const struct col *cols, int n);
void row_begin(struct table *t);
/* Aborts when the row has not exactly one cell per column. */
void row_end(struct table *t);

/* NULL is SQL NULL. Text that is not UTF-8 has each bad byte replaced by U+FFFD. */
void cell_text(struct table *t, const char *s);
void cell_fmt(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cell_int(struct table *t, long long v);
void cell_uint(struct table *t, uint64_t v);
/* A wait in microseconds as PgBouncer's two cells: whole seconds, then the microseconds past
 * them (SHOW POOLS' maxwait and maxwait_us, the connections' wait and wait_us). */
void cells_wait(struct table *t, uint64_t us);
/* A loop timestamp (ms) as wall-clock time "YYYY-MM-DD HH:MM:SS UTC"; 0 is NULL. */
void cell_time(struct table *t, const struct worker *worker, uint64_t loop_ms);
/* An id as logs write it after C- or S- (conn_id.h), "" for 0 (none): the ptr and link columns,
 * where PgBouncer writes the object's address, as its log lines do. */
void cell_conn_id(struct table *t, uint64_t id);
/* Address and port cells of a peer: the IP and port, "unix" and unix_port, or two NULLs. */
void cells_addr(struct table *t, const union peer_addr *a, int unix_port);
/* The same for the local end of a socket (fd < 0: two NULLs). */
void cells_local_addr(struct table *t, int fd, int unix_port);
/* The TLS version and cipher, "" when plain. */
void cell_tls(struct table *t, SSL *ssl);

/* The SHOW commands about connections (admin_show_conns.c): the RowDescription and me's own
 * worker's rows now; then, when arrived is given, each other worker is asked for its rows by
 * message, and arrived runs on me's worker once per worker asked, with its DataRows (NULL, 0:
 * none). They return how many workers were asked (0: the answer is whole). */
typedef void admin_rows_fn(struct worker *worker, uint64_t console_id, const uint8_t *rows,
                           size_t len);
int admin_show_clients(struct client *me, admin_rows_fn *arrived);
int admin_show_servers(struct client *me, admin_rows_fn *arrived);
/* SHOW SOCKETS; only_busy: SHOW ACTIVE_SOCKETS. */
int admin_show_sockets(struct client *me, bool only_busy, admin_rows_fn *arrived);

#endif
