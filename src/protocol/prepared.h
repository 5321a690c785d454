/* prepared: named prepared statements across servers, for transaction and statement mode.
 *
 * A client's named statements live on whichever backend it had when it sent Parse. sluice keeps
 * each client's definitions (name -> query and parameter types; names keyed as Postgres keys
 * them, see STMT_KEY_MAX) and what each server has prepared (name -> definition, LRU, at most
 * max_prepared_statements). When a client's Bind,
 * Describe or Parse meets a server that lacks the statement or has another under that name,
 * sluice first sends its own Close/Parse, and swallows the replies to them.
 *
 * Names: a client's names are its own (its map); on a server each statement is prepared under a
 * name of sluice's (stmt_def.server_name, "sluice_..."), which request_track.c writes into the
 * client's Parse, Bind, Describe and Close on their way. Another client's SQL EXECUTE or
 * DEALLOCATE of the same name so never reaches it, nor does one of sluice's name (which any
 * client reads in pg_prepared_statements): stmt_track.c closes that first. Identical statements
 * of different clients, whatever they call them, are one on a server.
 *
 * To tell sluice's replies from the client's, every Parse, Close, Sync, Query and FunctionCall
 * sent to a server is recorded in order (struct stmt_queue); ParseComplete/CloseComplete pop the
 * head, ReadyForQuery pops through the Sync it answers (what an error made the server skip is
 * dropped there). A client's Close, DEALLOCATE or DISCARD ALL leaves its map when sent, for the
 * requests behind it, and comes back if the server skips or refuses it, as in Postgres. */
#ifndef SLUICE_PREPARED_H
#define SLUICE_PREPARED_H

#include <stdbool.h>
#include <stdint.h>

#include "codec.h"
#include "list.h"

/* Postgres keys prepared statements by the first NAMEDATALEN - 1 bytes of their name (longer
 * names that differ later are the same statement), and so does sluice: a name's key is that much
 * of it, which a buffer always holds however long the name. */
#define STMT_KEY_MAX 63

/* Where a statement name starting at p ends (its NUL, or the end of its key when longer), as
 * far as avail bytes show: the key's length and, when the NUL was seen, the name's with it.
 * False when avail bytes hold neither. */
bool stmt_name_key(const uint8_t *p, uint32_t avail, char key[STMT_KEY_MAX + 1]);

/* A client name longer than its key may be cut inside a character of the client's encoding:
 * the bytes of that character after the key would be invalid text to the server (22021). On
 * their way to a server, the leading bytes of the name's rest that are not ASCII (at most n)
 * become '_': the rest is not the key, so that changes which statement it names in nothing. */
static inline uint32_t stmt_name_rest_partial(const uint8_t *rest, uint32_t n)
{
    uint32_t k = 0;
    while (k < n && rest[k] >= 0x80)
        k++;
    return k;
}

/* The longest server-side name: "sluice_" and 8 hex digits of the definition's hash, or "sluice_s"
 * and a count for a definition that streamed through (not known whole when it is named). Lower
 * case, so that SQL names it unquoted. */
#define STMT_SERVER_NAME_MAX 24
/* Postgres's encoding names are at most 14 bytes (SHIFT_JIS_2004). */
#define STMT_ENCODING_MAX 23
/* stmt_def.encoding of a text whose client_encoding was not known at its Parse (a SET of it may
 * have been in flight): equal to no other definition, and prepared again as it was sent. */
#define STMT_ENCODING_UNKNOWN "?"

/* A statement definition: the Parse body from the NUL that ends the name (then query, parameter
 * count and types): after a name it gives a Parse of that name. */
/* What running a statement does to the session past its transaction. */
enum stmt_effect {
    STMT_EFFECT_NONE,    /* nothing sluice's text inspection finds */
    STMT_EFFECT_SESSION, /* an object or parameter the transaction's end leaves behind */
};

/* The parameter types Postgres fixed at a client's Parse (its ParameterDescription). */
struct stmt_param_types {
    uint16_t count;
    uint32_t oids[];
};

/* What a statement's Describe says of its result (Postgres fixes it at its Parse). */
enum stmt_result {
    STMT_RESULT_UNKNOWN, /* not described yet, or its description was lost */
    STMT_RESULT_ROWS,    /* RowDescription */
    STMT_RESULT_NONE,    /* NoData: an INSERT, UPDATE or DELETE without RETURNING, a utility */
};

struct stmt_def {
    _Atomic uint32_t refs; /* maps holding it, on any worker (a server moved between workers
                            * keeps its map: 5.4); the last unref frees it */
    uint32_t hash;
    uint32_t len;
    char server_name[STMT_SERVER_NAME_MAX + 1]; /* its name on every server */
    /* The client_encoding the server read its text in at the client's Parse, when the text has
     * a byte from 0x80 up ("" for one without, which reads the same in every client_encoding
     * Postgres offers; STMT_ENCODING_UNKNOWN). Part of its hash and equality: the same bytes
     * sent in LATIN1 and in UTF8 are two texts, which must not be one statement on a server. */
    char encoding[STMT_ENCODING_MAX + 1];
    /* What running its text may do to client_encoding (enum text_encoding_effect), set at
     * stmt_def_seal: after a Bind of one that may, what the server reads is of an encoding not
     * known until that is answered (stmt_queue.encoding_unsettled). */
    uint8_t encoding_effect;
    /* Set by the client's Parse before the definition is shared (stmt_track.c): each Bind or
     * SQL EXECUTE runs it again, in whichever transaction, on whichever server. */
    enum stmt_effect effect;
    /* The types of its parameters as the server resolved them at the client's Parse, from
     * sluice's Describe right after it (stmt_on_description); NULL until then, or when not
     * known. Postgres keeps them for the statement's life, whatever DDL or search_path change
     * later (a column's type altered): a Parse of sluice's that prepares the definition again
     * names them (prepared_put_parse), where its text alone may resolve others. Written once,
     * on the client's worker, while only that worker's maps hold the definition; not part of
     * its hash or equality (stmt_def_equal), which the shape compares instead. */
    struct stmt_param_types *params;
    /* Whether it returns rows, from the same Describe, written once as params is: a Describe of
     * one that returns none is answered without preparing its text again (stmt_track.c). */
    enum stmt_result result;
    /* Its text is a DEALLOCATE, DEALLOCATE ALL or DISCARD ALL (enum sql_dealloc; SQL_OTHER
     * else), which drops statements at each Execute of a portal bound from it. Set by the
     * client's Parse, as effect is. */
    uint8_t drops;
    uint8_t data[];
};

/* A prepared statement's result type as Postgres fixed it at its Parse (stmt_shape_of): a
 * statement DDL has changed since then fails with 0A000 "cached plan must not change result
 * type" where it runs. A hash of its RowDescription (each column's name, type and modifier), or
 * one of these: */
#define STMT_SHAPE_UNKNOWN 0   /* not known (yet): its Describe is on its way, or was lost */
#define STMT_SHAPE_UNCHECKED 1 /* larger than pkt_buf: not compared */
#define STMT_SHAPE_NO_DATA 2   /* returns no rows (NoData) */

struct stmt_entry {
    struct stmt_entry *next_in_bucket;
    struct list_node lru;   /* most recently used first */
    struct stmt_def *def;   /* NULL: something is prepared under this name, what is unknown */
    uint64_t shape;         /* STMT_SHAPE_* or a hash; reset when the entry gets a definition */
    /* A server's entry that sluice prepared to compare a client's statement with (the client's
     * result type and the server's differed, or the server lacked it): stmt_queue.epoch + 1
     * while that batch lasts. Its result type is then the one the database gives now. */
    uint32_t fresh_epoch;
    /* A server's entry a portal may still run: one bound from the unnamed statement that
     * EXECUTEs it, which Postgres looks the name up again for at the portal's Execute, however
     * many Binds and Parses later in its transaction. Not evicted until the server was idle
     * outside a transaction block, when every portal is gone (stmt_track.c,
     * settle_after_idle; stmt_queue.portals_hold counts those marked). */
    bool portal_holds;
    /* A server's entry a Query being followed needs, with others of its statements sluice
     * prepares after it (stmt_track.c, follow_query): not evicted meanwhile, so that the server
     * may hold more than max_prepared_statements while that Query is framed. */
    bool query_holds;
    char name[];
};

/* Whose statements a map holds: a client's count toward max_prepared_statement_bytes; a
 * server's are bounded by max_prepared_statements (LRU), and share the clients' definitions. */
enum stmt_map_owner { STMT_MAP_SERVER, STMT_MAP_CLIENT };

/* A statement a client lost when the server skipped or refused its Parse (stmt_on_ready), or
 * that it closed (track_close). The client's requests framed before that was known went out
 * under its server name, and the errors they get must still say the client's
 * (stmt_map_name_of): the last STMT_DEPARTED are kept. */
#define STMT_DEPARTED 2
struct stmt_departed {
    char client_name[STMT_KEY_MAX + 1];
    char server_name[STMT_KEY_MAX + 1];
};

struct stmt_map {
    struct stmt_entry **buckets;
    uint32_t nbuckets;
    struct list lru;
    uint64_t text_bytes; /* names and definitions it holds */
    enum stmt_map_owner owner;
    struct stmt_departed departed[STMT_DEPARTED]; /* a client's; [0] the latest */
};

void stmt_map_init(struct stmt_map *m);
void stmt_map_free(struct stmt_map *m);
struct stmt_entry *stmt_map_get(const struct stmt_map *m, const char *name);
/* Insert or replace (def is referenced, not copied). NULL on out of memory. */
struct stmt_entry *stmt_map_put(struct stmt_map *m, const char *name, struct stmt_def *def);
void stmt_map_remove(struct stmt_map *m, const char *name);
/* Forget what every entry holds (DISCARD ALL / DEALLOCATE ALL whose outcome is not known). */
void stmt_map_mark_unknown(struct stmt_map *m);
void stmt_map_clear(struct stmt_map *m);
static inline int stmt_map_count(const struct stmt_map *m)
{
    return m ? m->lru.count : 0;
}
/* The name under which a (client's) map holds a statement whose definition has server_name, or
 * held one it lost lately (struct stmt_departed); NULL when none does. A walk over the map: for
 * error messages only. */
const char *stmt_map_name_of(const struct stmt_map *m, const char *server_name);
/* Keep (client_name, server_name) among m's departed names (NULL m: nothing). */
void stmt_map_note_departed(struct stmt_map *m, const char *client_name, const char *server_name);
/* A map of its own (a client's, made at its first named Parse: most clients never need one).
 * get, count, remove and clear accept NULL as the empty map. NULL when out of memory. */
struct stmt_map *stmt_map_new(void);
void stmt_map_delete(struct stmt_map *m);

/* A definition of len bytes (the name's NUL, the text, its parameter types) that the server reads
 * in client_encoding `encoding` (NULL or "": not known, as for sluice's own texts). */
struct stmt_def *stmt_def_new(const uint8_t *data, uint32_t len, const char *encoding);
/* A definition of the empty statement text with no parameter types, which prepares on any
 * server, whatever its tables, types or search_path: what sluice prepares under a client's
 * statement's name where the server needs only something there (a DEALLOCATE, a SQL PREPARE or
 * a Parse of the name: stmt_track.c, ensure_named). NULL when out of memory. */
struct stmt_def *stmt_def_stand_in(void);
/* The stand-in with the parameter types of d (known: d->params): its Describe answers as
 * Postgres's Describe of d when d returns no rows (STMT_RESULT_NONE), the types and NoData,
 * which Postgres sends without looking at d's text again. NULL when out of memory. */
struct stmt_def *stmt_def_stand_in_typed(const struct stmt_def *d);
/* A definition whose len bytes arrive later (a Parse streaming through a buffer smaller than
 * it): fill d->data, then stmt_def_seal before anything compares it. Its server name is a count,
 * given now. */
struct stmt_def *stmt_def_alloc(uint32_t len, const char *encoding);
void stmt_def_seal(struct stmt_def *d);
/* Bytes of names and definitions in all clients' maps, on every thread (max_prepared_statement_bytes
 * bounds it). */
uint64_t stmt_client_text_bytes(void);
void stmt_def_unref(struct stmt_def *d);
bool stmt_def_equal(const struct stmt_def *a, const struct stmt_def *b);

/* What was sent to a server, in order, that prepared.c must match replies against. */
struct query_positions;

enum stmt_req {
    REQ_PARSE_CLIENT, /* reply ParseComplete goes to the client */
    REQ_PARSE_OURS,   /* reply swallowed */
    REQ_CLOSE_CLIENT,
    REQ_CLOSE_OURS,
    REQ_DESCRIBE_OURS, /* sluice's Describe of a statement just prepared: its ParameterDescription
                        * and RowDescription (or NoData) give the statement's shape, swallowed */
    REQ_SYNC,         /* Sync, Query or FunctionCall: answered by ReadyForQuery */
    REQ_DROP_CLIENT,  /* the client's SQL DEALLOCATE / DEALLOCATE ALL / DISCARD ALL, answered by
                       * CommandComplete when it runs; other replies pass it (an unnamed Parse
                       * of it is answered before it runs, if it runs). Queued when it drops a
                       * statement of the client's or of the server's sql_prepared */
    REQ_MARK,         /* sluice's Close of a statement no one has (STMT_MARK_NAME), sent before a
                       * Query or FunctionCall framed inside an extended batch and answered by a
                       * CloseComplete, swallowed. Postgres skips both after an error earlier in
                       * that batch: an error that comes before its reply is the batch's, and the
                       * Query after it gets no ReadyForQuery (stmt_on_error) */
};

/* A client's Query that names its statement by SQL (EXECUTE, DEALLOCATE), sent inside an
 * extended batch or behind requests in flight, waits for sluice's Parse of that statement
 * (stmt_track.c prepare_held_query): Postgres skips the Query up to the batch's Sync when that
 * Parse fails, where running EXECUTE itself it answers the error and the Query's
 * ReadyForQuery. */
enum held_query {
    HELD_NONE,
    HELD_FOR_PARSE,    /* sluice's Parses (their items holds_query, after every Sync) are
                        * not all answered */
    HELD_PARSE_FAILED, /* it failed: its error held (stmt_queue_hold_parse_error), the Query
                        * is framed next */
    /* sluice's Sync went after the failed Parse (its ReadyForQuery swallowed:
     * stmt_queue_ready_is_ours), and the Query goes to the server with the failed statement
     * poisoned: Postgres runs the statements before it, as it would have, and refuses that
     * EXECUTE (26000), which the client gets as the Parse's error (relay.c) */
    HELD_PARSE_SYNCED,
};

/* What the client gets in place of the server's refusal of the first poisoned request. */
enum stmt_refusal {
    REFUSAL_RESULT_TYPE_CHANGED, /* Postgres's 0A000 (STMT_CHANGED_NAME) */
    REFUSAL_PARSE_FAILED,        /* the error of sluice's failed Parse (HELD_PARSE_SYNCED) */
};

struct stmt_queue_item {
    uint8_t kind;
    /* PARSE_OURS sent right after a mark (a Close of STMT_MARK_NAME, its reply swallowed): once
     * it is the request answered next, all the client sent before it is answered, and a
     * NoticeResponse is the Parse's own (stmt_queue_notice_is_ours) */
    bool fenced;
    /* PARSE_OURS or DESCRIBE_OURS of the statements a held Query waits for (HELD_FOR_PARSE):
     * all of them go in one round trip, and the Query waits for the answer to the last;
     * SYNC: sluice's after one of them failed (HELD_PARSE_SYNCED), its ReadyForQuery swallowed */
    bool holds_query;
    uint32_t repeat; /* requests of this kind in a row that it stands for: 1 when named */
    char *name;      /* PARSE, CLOSE, DESCRIBE: the statement name (the server's; a client's
                      * Parse or Close of its own statement, or sluice's Describe after such a
                      * Parse: then the client's after its NUL); DROP: the client's name, NULL
                      * for all */
    struct stmt_def *def;     /* CLOSE, DROP of one: the client's statement it drops (held), given
                               * back to the client if the server skips or refuses it; DESCRIBE:
                               * the definition described (held), whose entries get its shape */
    struct stmt_map *dropped; /* DROP of all: the client's map before it, likewise */
    uint64_t params_shape;    /* DESCRIBE: its ParameterDescription's hash, once answered (0
                               * before, or when larger than pkt_buf), mixed into the shape */
    /* SYNC of a Query whose text sluice rewrote: where the client's text and the one sent differ,
     * for the positions its errors and notices give (owned; NULL for any other request) */
    struct query_positions *positions;
};

struct stmt_queue {
    struct stmt_queue_item *items;
    uint32_t cap, head, count;
    uint32_t undoable; /* items holding a client's statements (def or dropped) */
    /* The client's next message is a Parse of a name whose earlier Parse is undecided
     * (stmt_queue_parse_undecided): it waits for that outcome. */
    bool parse_awaited;
    /* Result types (struct stmt_entry.shape). A client's Parse gets sluice's Describe right
     * after it, sent before the client's next message (describe_due until then). A client's
     * statement used where the server's statement of that text was prepared with another
     * result type, or is not there, is prepared again and described, and the client's next
     * message waits for that shape (shape_awaited). After an error the server skips what
     * follows up to the Sync: nothing waits then (batch_failed). */
    struct stmt_queue_item describe_due; /* its name NULL when none is due */
    bool shape_awaited;
    enum held_query held_query; /* shape_awaited holds that Query while HELD_FOR_PARSE */
    /* HELD_PARSE_FAILED and after: the failed Parse's ErrorResponse, whole, and the server's
     * name it prepared (both malloc'd), until the Query's refusal of that name is answered or
     * its ReadyForQuery comes */
    uint8_t *failed_parse_error;
    uint32_t failed_parse_len;
    char *failed_parse_name;
    /* The client_encoding the server reads the client's next message in (stmt_track.c,
     * parse_encoding): the client's as of the replies read so far (client_encoding_of), unless
     * a request not yet answered may have changed it (encoding_unsettled): one that may set it,
     * or, after one that may have set it in the transaction block (encoding_set_in_block), one
     * that may end the block or roll back to a savepoint. What binding the unnamed statement
     * may do to it: unnamed_encoding_effect (enum text_encoding_effect). */
    bool encoding_unsettled;
    bool encoding_set_in_block;
    /* The rewrites of the Query being framed, until its SYNC is queued (stmt_queue_push_query),
     * and how many queued SYNCs hold theirs (none: the replies' positions are not looked at). */
    struct query_positions *positions_due;
    uint32_t positions_held;
    uint8_t unnamed_encoding_effect;
    uint32_t portals_hold; /* server entries marked portal_holds */
    bool batch_failed;
    /* An error in an extended batch whose Sync is not framed yet (stmt_on_error): the server
     * skips what the client sends up to that Sync, and a Query or FunctionCall then gets no
     * ReadyForQuery. Until the Sync is framed. */
    bool skipping_to_sync;
    /* The client's last message was a Query or FunctionCall right after a mark still unanswered:
     * one that follows with nothing between shares that mark (stmt_queue_join_mark), since an
     * error between them could only be the first one's own. Any other message ends it. */
    bool mark_joinable;
    /* Session mode only (stmt_track_count): a push failed (the queue full, STMT_QUEUE_MAX, or
     * out of memory), and the client's requests are no longer queued; what is queued is still
     * matched, and a reply past it is the client's. Queued again once the server has answered
     * everything. Meanwhile a Query inside a batch goes unmarked, counted as it was before marks
     * (a skipped one keeps the session busy). */
    bool paused;
    uint32_t epoch;   /* Syncs and Queries framed: a batch's number */
    uint32_t poisoned; /* Binds/Describes of a changed statement sent under STMT_CHANGED_NAME */
    enum stmt_refusal refusal; /* what the first of them gets */
    /* The first of them in this batch (the one the server refuses; it skips the rest), when a
     * Describe: its statement (held), whose parameter types the client gets before the 0A000,
     * as Postgres sends them before it revalidates the statement. NULL otherwise. */
    struct stmt_def *poisoned_describe;
    /* A request that fails naming a server name the client's statement client_name had when it
     * was made (stmt_queue_name_next_error): named_as.server_name[0] when none; its error is
     * answered before named_as_readies more ReadyForQuery have come. */
    struct stmt_departed named_as;
    uint32_t named_as_readies;
};

/* The name a client's Bind or Describe of a statement whose result type changed goes to the
 * server under: the server has nothing of that name and refuses it (26000), and the client
 * gets Postgres's 0A000 in its place (relay.c), the rest of its batch skipped as Postgres
 * skips it. */
#define STMT_CHANGED_NAME "sluice_changed"

/* The statement a mark closes (REQ_MARK). A statement, not a portal: the client's portals keep
 * their names on the server (a Bind's, a DECLAREd cursor's), its statements are renamed
 * (stmt_names.h), so only SQL PREPARE of this very name could make one. */
#define STMT_MARK_NAME "sluice_mark"

/* The shape of a RowDescription body ('T'), or STMT_SHAPE_UNCHECKED when malformed. Columns'
 * names, type OIDs, lengths and type modifiers count; their table and column numbers do not (a
 * table dropped and made again with the same columns returns the same type). */
uint64_t stmt_shape_of(const uint8_t *body, uint32_t len);

/* Requests waiting for their replies, per server: 32 bytes an item, plus a name for a named Parse
 * or Close. Nameless requests of one kind in a row share an item, so a pipeline of unnamed
 * statements (a JDBC batch) takes one however long. Replies normally drain it as the server
 * answers; a client that sends named Parse/Close (or alternating kinds) far ahead of the replies,
 * reading them late or slowly, fills it. Then the client is not read (stmt_queue_backlogged,
 * request_track.c) until replies drain it, as Postgres stops reading a client whose answers it
 * cannot write: memory stays bounded and the client is answered whole. Only a single message
 * that queues more than STMT_QUEUE_HEADROOM items at once (a Query of that many DEALLOCATEs)
 * can still find it full: 54000. */
#define STMT_QUEUE_MAX 8192
/* Room kept for the items one message queues (a Parse, sluice's Describe of it, a Sync, marks). */
#define STMT_QUEUE_HEADROOM 64

/* Is the queue too full to frame the client's next message? Not while the server skips the
 * client's messages to the Sync after an error (skipping_to_sync): those take no item
 * (request_track.c), their replies never come, and the Sync that ends the skip must get
 * through, or the client would wait for ever. */
bool stmt_queue_backlogged(const struct stmt_queue *q);

void stmt_queue_free(struct stmt_queue *q);
/* 0, or -ENOMEM / -ENOSPC (full: the caller stops framing until replies drain). name: what the
 * server calls the statement (for a REQ_PARSE_CLIENT, the client too). */
int stmt_queue_push(struct stmt_queue *q, enum stmt_req kind, const char *name)
    __attribute__((warn_unused_result));
/* A Query (REQ_SYNC), with the rewrites of its text positions_due holds (taken from it). */
int stmt_queue_push_query(struct stmt_queue *q) __attribute__((warn_unused_result));
/* The rewrites of the text the next ReadyForQuery answers (the first SYNC queued), for the
 * position of an error or notice that comes before it; NULL when its text was sent as the
 * client wrote it. */
const struct query_positions *stmt_queue_query_positions(const struct stmt_queue *q);
/* The client's own Parse of a statement it names client_name, sent as server_name
 * (REQ_PARSE_CLIENT; the item's name holds both, the client's after the server's NUL). */
int stmt_queue_push_client_parse(struct stmt_queue *q, const char *server_name,
                                 const char *client_name) __attribute__((warn_unused_result));
/* The client's Close of its statement client_name (def), sent as server_name. */
int stmt_queue_push_client_close(struct stmt_queue *q, const char *server_name,
                                 const char *client_name, struct stmt_def *def)
    __attribute__((warn_unused_result));
/* The client's DEALLOCATE of its statement client_name (def), or (client_name NULL) its
 * DEALLOCATE ALL / DISCARD ALL, which took its map `dropped` away (the item owns it from here
 * on, pushed or not). */
int stmt_queue_push_client_drop(struct stmt_queue *q, const char *client_name,
                                struct stmt_def *def, struct stmt_map *dropped)
    __attribute__((warn_unused_result));
/* The client's name for server_name in the maps its DEALLOCATE ALL / DISCARD ALL still
 * unanswered took away (struct stmt_queue_item.dropped), the latest first; NULL when none has
 * it. An error that comes before such a drop is answered (a request of the batch before it
 * failed) still names the client's statement as the client does. For error messages only. */
const char *stmt_queue_dropped_name_of(const struct stmt_queue *q, const char *server_name);
/* The client's request framed now (the Execute of a portal bound from DEALLOCATE client_name,
 * whose text names server_name) fails with 26000 naming server_name, which another of the
 * client's statements may have now (one of the same text): its error names client_name, the
 * statement the client's request named, as Postgres's does. Until its batch is answered. */
void stmt_queue_name_next_error(struct stmt_queue *q, const char *client_name,
                                const char *server_name);
/* That client name, when server_name is the one noted; NULL otherwise. For error messages. */
const char *stmt_queue_named_as(const struct stmt_queue *q, const char *server_name);
/* Is a request holding the client's statements (a Close, DEALLOCATE, DISCARD ALL) queued ahead
 * of a Sync? Its outcome decides which statements the client has: what the client sends after
 * that Sync waits for it (what it sends before is skipped if it fails). */
bool stmt_queue_drop_undecided(const struct stmt_queue *q);
/* Has an error (batch_failed) made the server skip the rest of a batch whose Sync is framed, so
 * that the client's next message is in a later batch? What that batch prepared (sluice's Parse
 * of a statement prepared again, its Describe) was skipped, which the map of the server's
 * statements learns only at that Sync's ReadyForQuery (stmt_on_ready): a use framed before it
 * would trust a statement the server lacks, so what the client sends next waits for it. */
bool stmt_queue_past_failed_batch(const struct stmt_queue *q);
/* Are requests queued after the last Sync (sluice's own, sent ahead of a client's message that
 * waits for their replies, or the client's open batch)? No ReadyForQuery follows them. */
bool stmt_queue_unsynced(const struct stmt_queue *q);
/* Is the client's Parse of client_name (a name it did not have) queued ahead of a Sync, so in a
 * batch before the current one? An error earlier in that batch makes the server skip it, and
 * whether the client then has the name is known only at that Sync's ReadyForQuery: a new Parse
 * of the name fails (42P05) if it ran and succeeds if it was skipped. */
bool stmt_queue_parse_undecided(const struct stmt_queue *q, const char *client_name);
/* Does the client's next message wait for the outcome of such a Parse (q->parse_awaited, and
 * one is still undecided)? */
bool stmt_queue_parse_awaited(const struct stmt_queue *q);
/* The kind of the request the next ParseComplete or CloseComplete answers (past DROPs);
 * REQ_SYNC when none. */
enum stmt_req stmt_queue_next_complete(const struct stmt_queue *q);

/* Queue the Describe that follows a Parse of server_name: now (stmt_queue_push_describe, for
 * sluice's own Parse), or before the client's next message (describe_due, for the client's:
 * stmt_queue_describe_due, then stmt_queue_take_due when it is sent). client_name: the
 * client's name for it ("" for sluice's own). */
int stmt_queue_push_describe(struct stmt_queue *q, const char *server_name,
                             const char *client_name, struct stmt_def *def)
    __attribute__((warn_unused_result));
/* sluice's Parse of the client's statement def, prepared again for the client's Describe of it
 * (REQ_PARSE_OURS, holding def), with a mark right before it (prepared_put_mark, its reply
 * swallowed), so that it is the request answered next only once all the client sent before
 * it is answered. */
int stmt_queue_push_parse_for_describe(struct stmt_queue *q, const char *server_name,
                                       struct stmt_def *def) __attribute__((warn_unused_result));
/* sluice's Parse of a statement prepared again (REQ_PARSE_OURS), sent right after a mark
 * (prepared_put_mark, its reply swallowed). */
int stmt_queue_push_fenced_parse(struct stmt_queue *q, const char *server_name)
    __attribute__((warn_unused_result));
/* The request queued last (sluice's Parse or Describe of a statement a Query names) is one the
 * Query waits for (holds_query; stmt_track.c prepare_held_query). */
void stmt_queue_last_holds_query(struct stmt_queue *q);
/* At a NoticeResponse: is it sluice's own Parse's (the fenced Parse is the request answered
 * next)? Postgres raises some as it parses a text (42622, an identifier of 64 bytes or more):
 * the client got them at its own Parse, not again when sluice prepares the text once more. */
bool stmt_queue_notice_is_ours(const struct stmt_queue *q);
/* At an ErrorResponse: when it is the failure of such a Parse (the request answered next), the
 * statement's parameter types, which the client gets before the error as from Postgres: its
 * Describe sends the types fixed at the statement's Parse first, then revalidates the statement
 * (its table dropped since: the error). NULL otherwise, or when the types are not known. */
const struct stmt_param_types *stmt_queue_types_before_error(const struct stmt_queue *q);
int stmt_queue_describe_due(struct stmt_queue *q, const char *server_name,
                            const char *client_name, struct stmt_def *def)
    __attribute__((warn_unused_result));
/* Queue the due Describe (it is being sent now). */
int stmt_queue_take_due(struct stmt_queue *q) __attribute__((warn_unused_result));
/* Drop a due Describe that will not be sent (the client left): the statement's shape on the
 * server is then unknown, and its next use prepares it again. */
void stmt_queue_forget_due(struct stmt_queue *q, struct stmt_map *server_map);
/* Is a Describe of server_name queued or due (its shape is on its way)? */
bool stmt_queue_describing(const struct stmt_queue *q, const char *server_name);
/* Queue a mark (REQ_MARK): the Query or FunctionCall the caller frames next goes right after
 * it. */
int stmt_queue_push_mark(struct stmt_queue *q) __attribute__((warn_unused_result));
/* The Query or FunctionCall framed next, right after one the last mark guards (mark_joinable),
 * is guarded by it too (the mark's repeat counts them): no Close of its own, and Queries
 * pipelined inside a batch take one queue entry each, as before marks. False: it needs its own
 * mark. */
bool stmt_queue_join_mark(struct stmt_queue *q);
/* The message after the last mark was not sent after all (sluice answered it, or failed the
 * client): the mark guards one Query less; guarding none, it stays a Close whose reply is
 * swallowed. */
void stmt_queue_disarm_mark(struct stmt_queue *q);
/* An ErrorResponse arrived (not one answering sluice's own simple queries): the server skips
 * the rest of the batch, so nothing of it waits for a reply (batch_failed). When a mark is
 * queued ahead of the first Sync, Query or FunctionCall, or none of those is queued, the error
 * is an extended message's: Postgres skips every message up to the batch's Sync (protocol
 * "Extended Query"), the Queries and FunctionCalls between included, which then get no
 * ReadyForQuery. Their entries and their marks leave the queue; returns how many Queries and
 * FunctionCalls were skipped. skipping_to_sync: the Sync is still to come. */
uint32_t stmt_on_error(struct stmt_queue *q);
/* The client framed its Sync: what it sends next is in the next batch. */
void stmt_queue_sync_framed(struct stmt_queue *q);
/* Forget the last n entries, Syncs the server never answers (sent during COPY FROM STDIN). */
void stmt_queue_drop_last_syncs(struct stmt_queue *q, int n);

/* A Bind or Describe (described: its statement; NULL for a Bind) of a changed statement goes
 * to the server under STMT_CHANGED_NAME (poisoned). */
void stmt_queue_poison(struct stmt_queue *q, struct stmt_def *described);
/* The server refused one of them (26000 for STMT_CHANGED_NAME): the parameter types the client
 * gets before Postgres's 0A000 (a Describe's, when known; NULL otherwise), valid until
 * stmt_queue_refusal_answered, which counts the refusal. */
const struct stmt_param_types *stmt_queue_types_before_refusal(const struct stmt_queue *q);
void stmt_queue_refusal_answered(struct stmt_queue *q);
/* An EXECUTE of the statement whose held Parse failed (HELD_PARSE_SYNCED) goes under
 * STMT_CHANGED_NAME too (poisoned): the refusal is answered with the Parse's error. */
bool stmt_queue_parse_failed_for(const struct stmt_queue *q, const char *server_name);
void stmt_queue_poison_failed_parse(struct stmt_queue *q);
/* The first poisoned request's refusal gets this ErrorResponse (whole) when it is the failed
 * Parse's: false when Postgres's 0A000 is due. Valid until stmt_queue_refusal_answered. */
bool stmt_queue_refusal_error(const struct stmt_queue *q, const uint8_t **msg, uint32_t *len);
/* An error while a Query is HELD_FOR_PARSE, after stmt_on_error made it HELD_PARSE_FAILED:
 * held (copied), not forwarded. 0, or -ENOMEM (then it is forwarded, and sluice's Sync answers
 * in the Query's place, the Query consumed, as before this was held). */
int stmt_queue_hold_parse_error(struct stmt_queue *q, const uint8_t *msg, uint32_t len);
/* The held error, when the Query is answered with it alone (stmt_track.c
 * answer_query_after_failed_parse), then forgotten. */
bool stmt_queue_held_parse_error(const struct stmt_queue *q, const uint8_t **msg, uint32_t *len);
void stmt_queue_forget_failed_parse(struct stmt_queue *q);
/* sluice's Sync after the failed Parse was framed (HELD_PARSE_SYNCED): queued as a REQ_SYNC
 * whose ReadyForQuery is sluice's own. */
int stmt_queue_push_failed_parse_sync(struct stmt_queue *q);
/* The ReadyForQuery coming next answers that Sync: swallowed, nothing of the client's done. */
bool stmt_queue_ready_is_ours(const struct stmt_queue *q);

/* Replies, as seen by the server side of the relay. */
enum stmt_reply_action { REPLY_FORWARD, REPLY_SWALLOW, REPLY_UNEXPECTED };
/* A reply to a Describe: ParameterDescription ('t'), RowDescription ('T', body NULL when larger
 * than the buffer) or NoData ('n'). Sluice's (REPLY_SWALLOW) when its Describe is the next
 * request answered; the shape then goes to the entries of the described definition, the
 * server's and the client's (client_map may be NULL). */
enum stmt_reply_action stmt_on_description(struct stmt_queue *q, struct stmt_map *server_map,
                                           struct stmt_map *client_map, uint8_t type,
                                           const uint8_t *body, uint32_t len);
/* Is the reply to a request of this kind sluice's own, swallowed (its Parse, Close, mark)? */
bool stmt_req_is_ours(enum stmt_req kind);
/* ParseComplete ('1') or CloseComplete ('3') arrived. */
enum stmt_reply_action stmt_on_complete(struct stmt_queue *q, struct stmt_map *server_map,
                                        uint8_t type);
/* CommandComplete with tag `tag` arrived: a DEALLOCATE or DISCARD ALL the client sent ran; the
 * names it drops leave sql_prepared (the server's SQL PREPAREs) only now. */
void stmt_on_command_complete(struct stmt_queue *q, struct stmt_map *sql_prepared,
                              const char *tag);
/* ReadyForQuery (not one of sluice's own queries) arrived: pop through its Sync; what the
 * server skipped or refused of the client's is undone, latest first. client_map: the statements
 * of the client whose requests these are (NULL: it left; *client_map may be NULL, none yet). */
void stmt_on_ready(struct stmt_queue *q, struct stmt_map *server_map,
                   struct stmt_map **client_map);

/* Messages sluice sends on its own. name is the statement's key. read_in: the client_encoding
 * the server will read def's text in (NULL: not known); a text sent in another
 * (def->encoding) goes converted to it (text_encoding_convert). 0, or nothing written and
 * -EINVAL: a pair text_encoding does not convert, or a character read_in lacks; -ENOMEM. */
int prepared_put_parse(struct msg_out *o, const char *name, const struct stmt_def *def,
                       const char *read_in) __attribute__((warn_unused_result));
/* What prepared_put_parse would return, writing nothing. */
int prepared_parse_readable(const struct stmt_def *def, const char *read_in)
    __attribute__((warn_unused_result));
void prepared_put_close(struct msg_out *o, const char *name);
/* Close of the statement STMT_MARK_NAME (REQ_MARK). */
void prepared_put_mark(struct msg_out *o);
void prepared_put_describe(struct msg_out *o, const char *name);
/* A ParameterDescription of these types (to the client). */
void prepared_put_parameter_description(struct msg_out *o, const struct stmt_param_types *t);

/* A statement text: DEALLOCATE name / DEALLOCATE ALL / DISCARD ALL / EXECUTE name / PREPARE
 * name? name gets the statement name for DEALLOCATE, EXECUTE and PREPARE (empty for ALL). */
enum sql_dealloc {
    SQL_OTHER,
    SQL_DEALLOCATE,
    SQL_DEALLOCATE_ALL,
    SQL_DISCARD_ALL,
    SQL_EXECUTE,
    SQL_PREPARE, /* PREPARE name [(types)] AS ...; not PREPARE TRANSACTION 'gid' */
};
enum sql_dealloc prepared_classify_query(const char *sql, char *name, size_t namelen);

/* What a statement sent by Parse drops of the prepared statements when it runs: a DEALLOCATE,
 * DEALLOCATE ALL or DISCARD ALL runs at each Execute of a portal bound from it (maybe never,
 * maybe twice, skipped after an error earlier in its batch), not at its Parse (stmt_track.c).
 * kind SQL_OTHER: nothing. */
struct stmt_drop {
    enum sql_dealloc kind;
    char name[STMT_KEY_MAX + 1];        /* DEALLOCATE's key, the client's name for it */
    char server_name[STMT_KEY_MAX + 1]; /* the name the text gives the server (sluice's for
                                         * the client's statement, renamed in an unnamed Parse) */
};
/* The same, and where the name is written in sql (quotes included): *at, *span (0 without one).
 * reading (enum sql_reading bits): with SQL_READ_MULTIBYTE a byte of 0x80 or more in an unquoted
 * name takes the next byte with it as it is (in SJIS, BIG5, GBK... a character's second byte may
 * be an ASCII letter, which Postgres, reading the name in the server's encoding, does not fold,
 * or another ASCII byte, which does not end the name). */
enum sql_dealloc prepared_classify_query_at(const char *sql, unsigned reading, char *name,
                                            size_t namelen, size_t *at, size_t *span);
/* Does the text (len bytes) hold a word of the statements prepared_classify_query follows
 * (EXECUTE, DEALLOCATE, DISCARD, PREPARE), anywhere? One pass: a Query without one is not
 * split into its statements. */
bool prepared_query_may_name(const char *sql, size_t len);

/* One statement of a simple Query that prepared_classify_query follows. */
struct sql_followed {
    enum sql_dealloc kind;
    size_t at, span; /* where its name is written in the Query, quotes included (span 0: none,
                      * or one that does not end) */
    char name[256];  /* as prepared_classify_query gives it */
};
/* The statements of a simple Query (sql: len bytes, a NUL among them) that
 * prepared_classify_query follows, each in its turn, as Postgres splits the text read as
 * `reading` (enum sql_reading) says: the next from *pos (0 for the first; *pos moves past it).
 * False when none is left, and at once for a text that, so read, ends inside a literal, a
 * quoted name or a comment (Postgres runs none of its statements). */
bool prepared_next_followed(const char *sql, size_t len, unsigned reading, size_t *pos,
                            struct sql_followed *f);

#endif
