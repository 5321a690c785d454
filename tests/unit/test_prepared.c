/* Unit tests for prepared.c (statement maps, the request queue, DEALLOCATE detection),
 * session_state.c (SQL whose effect outlives a transaction) and the server record of params.c
 * that session_state feeds (unknown values and the sync built from them), and how session_effects
 * knows the server's error for a refused statement's stand-in. No sockets. */
#include "check.h"

#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "params.h"
#include "text_encoding.h"
#include "siphash.h"
#include "prepared.h"
#include "sql_lex.h"
#include "stmt_names.h"
#include "session_effects.h"
#include "session_state.h"

static struct stmt_def *def_of(const char *query)
{
    return stmt_def_new((const uint8_t *)query, (uint32_t)strlen(query) + 1, NULL);
}

static void map_put_get_replace_remove_keep_definitions_and_lru_order(void)
{
    struct stmt_map m;
    stmt_map_init(&m);
    struct stmt_def *a = def_of("select 1"), *b = def_of("select 2");
    CHECK(stmt_map_put(&m, "s1", a) != NULL);
    CHECK(stmt_map_put(&m, "s2", b) != NULL);
    CHECK_INT(stmt_map_count(&m), 2);
    CHECK(stmt_def_equal(stmt_map_get(&m, "s1")->def, a));
    /* most recently put first */
    struct stmt_entry *first = container_of(list_first(&m.lru), struct stmt_entry, lru);
    CHECK_STR(first->name, "s2");
    CHECK(stmt_map_put(&m, "s1", b) != NULL); /* replace moves it to the front */
    first = container_of(list_first(&m.lru), struct stmt_entry, lru);
    CHECK_STR(first->name, "s1");
    CHECK(stmt_def_equal(stmt_map_get(&m, "s1")->def, b));
    stmt_map_remove(&m, "s2");
    CHECK(stmt_map_get(&m, "s2") == NULL);
    CHECK_INT(stmt_map_count(&m), 1);
    stmt_map_mark_unknown(&m);
    CHECK(stmt_map_get(&m, "s1") != NULL && stmt_map_get(&m, "s1")->def == NULL);
    stmt_def_unref(a);
    stmt_def_unref(b);
    stmt_map_free(&m);
}

static void map_grows_past_its_buckets_and_finds_every_name(void)
{
    struct stmt_map m;
    stmt_map_init(&m);
    struct stmt_def *d = def_of("select $1");
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "stmt_%d", i);
        CHECK(stmt_map_put(&m, name, d) != NULL);
    }
    int found = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "stmt_%d", i);
        found += stmt_map_get(&m, name) != NULL;
    }
    CHECK_INT(found, 1000);
    CHECK_INT(d->refs, 1001);
    stmt_map_free(&m);
    CHECK_INT(d->refs, 1);
    stmt_def_unref(d);
}

static void definitions_compare_by_content(void)
{
    struct stmt_def *a = def_of("select 1"), *b = def_of("select 1"), *c = def_of("select 2");
    CHECK(stmt_def_equal(a, b));
    CHECK(!stmt_def_equal(a, c));
    CHECK(!stmt_def_equal(a, NULL));
    CHECK(!stmt_def_equal(NULL, NULL)); /* unknown never equals anything */
    stmt_def_unref(a);
    stmt_def_unref(b);
    stmt_def_unref(c);
}

static void queue_swallows_replies_to_sluices_own_parse_and_close(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    CHECK_INT(stmt_queue_push(&q, REQ_CLOSE_OURS, "s1"), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_OURS, "s1"), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_on_complete(&q, &m, '3'), REPLY_SWALLOW);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_SWALLOW);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_FORWARD);
    CHECK_INT(q.count, 1);
    stmt_on_ready(&q, &m, NULL);
    CHECK_INT(q.count, 0);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

/* Parse fails; Query; Sync: Postgres answers ErrorResponse, then the Sync's ReadyForQuery. */
static void an_error_before_a_mark_skips_the_query_after_it(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0); /* the Query */
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0); /* the Sync: one item with the Query's */
    CHECK_INT(stmt_on_error(&q), 1);
    CHECK(q.batch_failed && !q.skipping_to_sync); /* the batch's Sync is framed */
    stmt_on_ready(&q, &m, NULL);
    CHECK_INT(q.count, 0);
    /* Parse; mark; Query; mark; Query: the error skips both, and what comes up to the Sync */
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    for (int i = 0; i < 2; i++) {
        CHECK_INT(stmt_queue_push_mark(&q), 0);
        CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    }
    CHECK_INT(stmt_on_error(&q), 2);
    CHECK(q.skipping_to_sync); /* no Sync framed yet */
    stmt_queue_sync_framed(&q);
    CHECK(!q.skipping_to_sync);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

static int item_kind_at(const struct stmt_queue *q, uint32_t i)
{
    return q->items[(q->head + i) % q->cap].kind;
}

/* Parse; mark; Query; Query; Query; Sync: the Queries after the first, with nothing between,
 * share its mark (one queue entry for the three ReadyForQuery and the Sync's). */
static void queries_with_nothing_between_share_one_mark(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK(!stmt_queue_join_mark(&q)); /* no marked Query before */
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    q.mark_joinable = true;
    for (int i = 0; i < 2; i++) {
        CHECK(stmt_queue_join_mark(&q));
        CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    }
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0); /* the batch's Sync */
    CHECK_INT(q.count, 3);
    /* the error of an extended message before the mark's reply skips the three Queries */
    CHECK_INT(stmt_on_error(&q), 3);
    CHECK(!q.skipping_to_sync && !q.mark_joinable);
    CHECK_INT(q.count, 2);
    CHECK_INT(item_kind_at(&q, 1), REQ_SYNC);
    CHECK_INT(q.items[(q.head + 1) % q.cap].repeat, 1); /* the batch's Sync */
    stmt_on_ready(&q, &m, NULL);
    CHECK_INT(q.count, 0);
    /* the mark's one CloseComplete answers it whole: the Queries are due their answers */
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    q.mark_joinable = true;
    CHECK(stmt_queue_join_mark(&q));
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_on_complete(&q, &m, '3'), REPLY_SWALLOW);
    CHECK(!q.mark_joinable);
    CHECK_INT(q.count, 1);
    CHECK_INT(q.items[q.head].repeat, 2);
    CHECK_INT(stmt_on_error(&q), 0); /* the first Query's own error */
    /* a Query that shared the mark, then was not sent after all: the mark guards one less */
    stmt_queue_free(&q);
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    q.mark_joinable = true;
    CHECK(stmt_queue_join_mark(&q));
    stmt_queue_disarm_mark(&q);
    CHECK_INT(item_kind_at(&q, 0), REQ_MARK);
    CHECK_INT(q.items[q.head].repeat, 1);
    /* something of sluice's own after the Query: no sharing */
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_OURS, NULL), 0);
    q.mark_joinable = true;
    CHECK(!stmt_queue_join_mark(&q));
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

/* The mark's CloseComplete came: an error after it is the Query's own, which gets its
 * ReadyForQuery; no mark ahead of a Sync: nothing is skipped but the batch. */
static void an_error_after_the_marks_reply_is_the_querys_own(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_on_complete(&q, &m, '3'), REPLY_SWALLOW);
    CHECK_INT(stmt_on_error(&q), 0);
    CHECK(!q.skipping_to_sync);
    CHECK_INT(q.count, 1);
    CHECK_INT(q.items[q.head].repeat, 2); /* both ReadyForQuery still due */
    /* A mark disarmed (sluice answered the Query itself) guards nothing: its reply is
     * swallowed, an error before it skips no Sync. */
    stmt_queue_free(&q);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    stmt_queue_disarm_mark(&q);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_on_error(&q), 0);
    CHECK_INT(q.count, 3);
    /* an error with nothing answered by ReadyForQuery queued: an extended message's, with
     * its Sync still to come */
    stmt_queue_free(&q);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK_INT(stmt_on_error(&q), 0);
    CHECK(q.skipping_to_sync);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

static void reply_that_matches_no_request_is_unexpected(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_UNEXPECTED);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, "x"), 0);
    CHECK_INT(stmt_on_complete(&q, &m, '3'), REPLY_UNEXPECTED); /* a Close reply for a Parse */
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

static void parse_skipped_after_an_error_leaves_the_name_unknown_at_ready(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    struct stmt_def *d = def_of("select 1");
    struct stmt_map *mine = stmt_map_new();
    CHECK(stmt_map_put(&m, "sluice_1", d) != NULL); /* optimistically recorded when sent */
    CHECK(mine && stmt_map_put(mine, "s1", d) != NULL);
    CHECK_INT(stmt_queue_push_client_parse(&q, "sluice_1", "s1"), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, "s2"), 0);
    /* ErrorResponse, then ReadyForQuery: the Parse got no reply */
    stmt_on_ready(&q, &m, &mine);
    CHECK(stmt_map_get(&m, "sluice_1") != NULL && stmt_map_get(&m, "sluice_1")->def == NULL);
    CHECK(stmt_map_get(mine, "s1") == NULL); /* the client's name: it has no such statement */
    /* but an error to a request framed meanwhile under the server name still names it so */
    CHECK_STR(stmt_map_name_of(mine, "sluice_1"), "s1");
    CHECK_INT(q.count, 1); /* stops at the Sync it answers */
    stmt_map_delete(mine);
    stmt_def_unref(d);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

/* A client's Parse of a new name is undecided until the ReadyForQuery of its batch: a Parse of
 * the same name after that batch's Sync waits (the name is free if the first was skipped). */
static void a_parse_ahead_of_a_sync_is_undecided_until_its_ready(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    struct stmt_map *mine = stmt_map_new();
    struct stmt_def *d = def_of("select 1");
    CHECK(mine && stmt_map_put(mine, "s1", d) != NULL && stmt_map_put(&m, "sluice_1", d));
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0); /* the failing query's */
    CHECK_INT(stmt_queue_push_client_parse(&q, "sluice_1", "s1"), 0);
    CHECK(!stmt_queue_parse_undecided(&q, "s1")); /* same batch: 42P05 if it runs */
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK(stmt_queue_parse_undecided(&q, "s1"));
    CHECK(!stmt_queue_parse_undecided(&q, "s2"));
    CHECK(!stmt_queue_parse_awaited(&q)); /* nothing waits until a Parse of s1 comes */
    q.parse_awaited = true;
    CHECK(stmt_queue_parse_awaited(&q));
    stmt_on_ready(&q, &m, &mine); /* the first Sync */
    CHECK(stmt_queue_parse_awaited(&q));
    stmt_on_ready(&q, &m, &mine); /* ErrorResponse, then ReadyForQuery: the Parse was skipped */
    CHECK(!stmt_queue_parse_undecided(&q, "s1"));
    CHECK(!stmt_queue_parse_awaited(&q) && !q.parse_awaited);
    CHECK(stmt_map_get(mine, "s1") == NULL); /* free: the Parse that waited succeeds */
    stmt_map_delete(mine);
    stmt_def_unref(d);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

/* A Close, DEALLOCATE or DISCARD ALL leaves the client's map when sent; the server skipping or
 * refusing it gives its statements back, latest request first; one that ran keeps them gone. */
static void drops_that_do_not_run_give_the_statements_back(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    struct stmt_def *old = def_of("select 1"), *newer = def_of("select 2");
    struct stmt_map *mine = stmt_map_new();
    CHECK(mine && stmt_map_put(mine, "s1", old) != NULL);
    /* Close s1, Parse s1 again, Sync: skipped after an error */
    CHECK_INT(stmt_queue_push_client_close(&q, "sluice_1", "s1", old), 0);
    stmt_map_remove(mine, "s1");
    CHECK(stmt_map_put(mine, "s1", newer) != NULL);
    CHECK_INT(stmt_queue_push_client_parse(&q, "sluice_2", "s1"), 0);
    CHECK(!stmt_queue_drop_undecided(&q)); /* its batch is still open */
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK(stmt_queue_drop_undecided(&q));
    stmt_on_ready(&q, &m, &mine);
    CHECK(stmt_map_get(mine, "s1") && stmt_map_get(mine, "s1")->def == old);
    CHECK(!stmt_queue_drop_undecided(&q));
    /* DEALLOCATE ALL: the map goes; an unnamed Parse of it is answered past it; refused */
    struct stmt_map *before = mine;
    mine = NULL;
    CHECK_INT(stmt_queue_push_client_drop(&q, NULL, NULL, before), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_queue_next_complete(&q), REQ_PARSE_CLIENT);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_FORWARD);
    struct stmt_map sql;
    stmt_map_init(&sql);
    CHECK(stmt_map_put(&sql, "x", NULL) && stmt_map_put(&sql, "s1", NULL));
    stmt_on_command_complete(&q, &sql, "SELECT 1"); /* not its reply */
    stmt_on_ready(&q, &m, &mine);
    CHECK(mine == before && stmt_map_get(mine, "s1") != NULL);
    CHECK_INT(q.count, 0);
    CHECK_INT(stmt_map_count(&sql), 2); /* it did not run: the server's SQL statements stay */
    /* DEALLOCATE s1 that ran */
    CHECK_INT(stmt_queue_push_client_drop(&q, "s1", old, NULL), 0);
    stmt_map_remove(mine, "s1");
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    stmt_on_command_complete(&q, &sql, "DEALLOCATE");
    stmt_on_ready(&q, &m, &mine);
    CHECK(stmt_map_get(mine, "s1") == NULL);
    CHECK(stmt_map_get(&sql, "s1") == NULL && stmt_map_get(&sql, "x") != NULL);
    /* DEALLOCATE ALL that ran, with no statement of the client's: the server's go */
    CHECK_INT(stmt_queue_push_client_drop(&q, NULL, NULL, NULL), 0);
    stmt_on_command_complete(&q, &sql, "DEALLOCATE ALL");
    CHECK_INT(stmt_map_count(&sql), 0);
    stmt_map_free(&sql);
    CHECK_INT(q.count, 0);
    CHECK_INT(q.undoable, 0);
    stmt_map_delete(mine);
    stmt_def_unref(old);
    stmt_def_unref(newer);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

static void queue_is_bounded(void)
{
    struct stmt_queue q = {0};
    int rc = 0, n = 0;
    while ((rc = stmt_queue_push(&q, REQ_PARSE_CLIENT, "s")) == 0)
        n++;
    CHECK_INT(n, STMT_QUEUE_MAX);
    CHECK(rc < 0);
    stmt_queue_free(&q);
}

/* A pipeline of unnamed statements: one item, popped one reply at a time. */
static void nameless_requests_in_a_row_share_an_item(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    for (int i = 0; i < 3 * STMT_QUEUE_MAX; i++)
        CHECK_INT(stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    CHECK_INT(q.count, 2);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_FORWARD);
    stmt_queue_drop_last_syncs(&q, 1);
    stmt_on_ready(&q, &m, NULL); /* an error: the other Parses were skipped */
    CHECK_INT(q.count, 0);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

static void injected_messages_have_the_wire_format(void)
{
    struct msg_out o;
    codec_out_init(&o);
    /* A definition starts after the name's key: here the name's NUL, then the query */
    struct stmt_def *d = stmt_def_new((const uint8_t *)"\0select 1", 10, NULL);
    CHECK(prepared_put_parse(&o, "s1", d, NULL) == 0);
    prepared_put_close(&o, "s1");
    static const uint8_t want[] = {'P', 0, 0, 0, 16, 's', '1', 0, 's', 'e', 'l', 'e', 'c', 't',
                                   ' ', '1', 0, 'C', 0, 0, 0, 8, 'S', 's', '1', 0};
    /* Parse here carries the key, then the definition bytes as stored: NUL, query + NUL (no
     * parameter count, since the test definition has none). */
    CHECK_INT(o.len, sizeof(want));
    CHECK(o.len == sizeof(want) && memcmp(o.data, want, sizeof(want)) == 0);
    stmt_def_unref(d);
    codec_out_free(&o);
}

/* A long client name's key ended inside a UTF-8 character: sluice's Parse of it on another
 * server must not start the name's rest with that character's lone continuation byte. */
static void a_long_names_rest_starts_with_no_partial_character(void)
{
    struct msg_out o;
    codec_out_init(&o);
    /* the rest of the client's name: the end of an 'é' (0xa9), then "éx", NUL, the query */
    static const uint8_t rest[] = {0xa9, 0xc3, 0xa9, 'x', 0, 's', 0};
    struct stmt_def *d = stmt_def_new(rest, sizeof(rest), NULL);
    char key[STMT_KEY_MAX + 1];
    memset(key, '_', STMT_KEY_MAX);
    memcpy(key, "sluice_1", 8);
    key[STMT_KEY_MAX] = '\0';
    CHECK(prepared_put_parse(&o, key, d, NULL) == 0);
    CHECK_INT(o.len, 5 + STMT_KEY_MAX + sizeof(rest));
    CHECK(o.len > 5 + STMT_KEY_MAX + 3 && memcmp(o.data + 5 + STMT_KEY_MAX, "___x", 4) == 0);
    codec_out_reset(&o);
    CHECK(prepared_put_parse(&o, "s1", d, NULL) == 0); /* a short name: its definition as it is */
    CHECK(o.len > 7 && o.data[7] == 0xa9);
    stmt_def_unref(d);
    codec_out_free(&o);
}

static void deallocate_and_discard_are_recognised(void)
{
    char name[64];
    CHECK_INT(prepared_classify_query("DEALLOCATE foo", name, sizeof(name)), SQL_DEALLOCATE);
    CHECK_STR(name, "foo");
    CHECK_INT(prepared_classify_query("  deallocate prepare \"My Stmt\";", name, sizeof(name)),
              SQL_DEALLOCATE);
    CHECK_STR(name, "My Stmt");
    CHECK_INT(prepared_classify_query("DEALLOCATE ALL", name, sizeof(name)), SQL_DEALLOCATE_ALL);
    CHECK_INT(prepared_classify_query("discard all", name, sizeof(name)), SQL_DISCARD_ALL);
    CHECK_INT(prepared_classify_query("DISCARD PLANS", name, sizeof(name)), SQL_OTHER);
    CHECK_INT(prepared_classify_query("select 'deallocate all'", name, sizeof(name)), SQL_OTHER);
    CHECK_INT(prepared_classify_query("deallocated", name, sizeof(name)), SQL_OTHER);
    /* every statement of a Query that names prepared statements, in order, past ';' in
     * literals, quoted names and comments, the text read as the session reads it */
    struct sql_followed f;
    size_t pos = 0;
    const char *later = "SELECT ';', \"x;\" /* ; */; -- ;\n DEALLOCATE a";
    CHECK(prepared_query_may_name(later, strlen(later) + 1));
    CHECK(prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    CHECK_INT(f.kind, SQL_DEALLOCATE);
    CHECK_STR(f.name, "a");
    CHECK_INT((int)f.at, 43);
    CHECK_INT((int)f.span, 1);
    CHECK(!prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    later = "DEALLOCATE a; select 1;EXECUTE \"B\"(1); discard all";
    pos = 0;
    CHECK(prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    CHECK_INT(f.kind, SQL_DEALLOCATE);
    CHECK(prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    CHECK_INT(f.kind, SQL_EXECUTE);
    CHECK_STR(f.name, "B");
    CHECK_INT((int)f.at, 31);
    CHECK_INT((int)f.span, 3);
    CHECK(prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    CHECK_INT(f.kind, SQL_DISCARD_ALL);
    CHECK(!prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    CHECK(!prepared_query_may_name("SELECT 1; SELECT 2", 19));
    /* a backslash ends '\' under standard_conforming_strings, not without it */
    later = "SELECT '\\'; DEALLOCATE a";
    pos = 0;
    CHECK(prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    CHECK_INT(f.kind, SQL_DEALLOCATE);
    pos = 0;
    CHECK(!prepared_next_followed(later, strlen(later) + 1, SQL_READ_PLAIN_ESCAPES, &pos, &f));
    later = "SELECT 'it\\'s'; DEALLOCATE a";
    pos = 0;
    CHECK(prepared_next_followed(later, strlen(later) + 1, SQL_READ_PLAIN_ESCAPES, &pos, &f));
    CHECK_INT(f.kind, SQL_DEALLOCATE);
    /* a text Postgres refuses whole: none */
    later = "DEALLOCATE a; SELECT 'x";
    pos = 0;
    CHECK(!prepared_next_followed(later, strlen(later) + 1, SQL_READ_STANDARD, &pos, &f));
    size_t at, span;
    const char *sql = "EXECUTE \"My \"\"x\"\"\"(1)";
    CHECK_INT(prepared_classify_query_at(sql, SQL_READ_STANDARD, name, sizeof(name), &at, &span),
              SQL_EXECUTE);
    CHECK_STR(name, "My \"x\"");
    CHECK_INT((int)at, 8);
    CHECK_INT((int)span, 10); /* the name as written, quotes included */
    CHECK_INT(prepared_classify_query_at(" deallocate Stmt1;", SQL_READ_STANDARD, name,
                                         sizeof(name), &at, &span),
              SQL_DEALLOCATE);
    CHECK_STR(name, "stmt1");
    CHECK_INT((int)at, 12);
    CHECK_INT((int)span, 5);
    /* comments before and inside, nested ones too, as Postgres's lexer skips them */
    CHECK_INT(prepared_classify_query_at("/* a /* b */ c */ EXECUTE -- x\n s1", SQL_READ_STANDARD,
                                         name, sizeof(name), &at, &span),
              SQL_EXECUTE);
    CHECK_STR(name, "s1");
    CHECK_INT((int)at, 32);
    CHECK_INT(prepared_classify_query("-- evict\nDEALLOCATE ALL", name, sizeof(name)),
              SQL_DEALLOCATE_ALL);
    CHECK_INT(prepared_classify_query("/* unterminated DEALLOCATE ALL", name, sizeof(name)),
              SQL_OTHER);
    CHECK_INT(prepared_classify_query("-", name, sizeof(name)), SQL_OTHER);
    /* EXPLAIN EXECUTE runs the statement as EXECUTE does; non-ASCII bytes are name bytes */
    CHECK_INT(prepared_classify_query_at("EXPLAIN (costs off) EXECUTE S1(2)", SQL_READ_STANDARD,
                                         name, sizeof(name), &at, &span),
              SQL_EXECUTE);
    CHECK_STR(name, "s1");
    CHECK_INT((int)at, 28);
    CHECK_INT(prepared_classify_query("explain analyse verbose execute x", name, sizeof(name)),
              SQL_EXECUTE);
    CHECK_INT(prepared_classify_query("EXPLAIN SELECT 1", name, sizeof(name)), SQL_OTHER);
    CHECK_INT(prepared_classify_query("EXPLAIN (costs off", name, sizeof(name)), SQL_OTHER);
    CHECK_INT(prepared_classify_query_at("EXECUTE \xc3\xa9t\xc3\xa9", SQL_READ_STANDARD, name,
                                         sizeof(name), &at, &span),
              SQL_EXECUTE);
    CHECK_STR(name, "\xc3\xa9t\xc3\xa9");
    CHECK_INT((int)span, 5);
    /* SJIS 'ア' (83 41) and 'ソ' (83 5C): the second byte belongs to the character, unfolded */
    CHECK_INT(prepared_classify_query_at("EXECUTE \x83\x41\x83\x5cX; SELECT 1", SQL_READ_MULTIBYTE,
                                         name, sizeof(name), &at, &span),
              SQL_EXECUTE);
    CHECK_STR(name, "\x83\x41\x83\x5cx");
    CHECK_INT((int)span, 5);
    CHECK_INT(prepared_classify_query_at("EXECUTE \x83\x41", SQL_READ_STANDARD, name, sizeof(name),
                                         &at, &span),
              SQL_EXECUTE);
    CHECK_STR(name, "\x83\x61");
    /* the names sluice gives statements on servers, and names that only look like them */
    CHECK(stmt_names_is_servers("sluice_0123abcd"));
    CHECK(stmt_names_is_servers("sluice_s17"));
    char padded[STMT_KEY_MAX + 1];
    snprintf(padded, sizeof(padded), "sluice_0123abcd%048d", 0);
    memset(padded + 15, '_', STMT_KEY_MAX - 15);
    CHECK(stmt_names_is_servers(padded));
    padded[STMT_KEY_MAX - 1] = '\0';
    CHECK(!stmt_names_is_servers(padded)); /* padded, but not to a key */
    CHECK(!stmt_names_is_servers("sluice_0123ABCD"));
    CHECK(!stmt_names_is_servers("sluice_0123abc"));
    CHECK(!stmt_names_is_servers("sluice_s"));
    CHECK(!stmt_names_is_servers("sluice_0123abcd_x"));
    CHECK(!stmt_names_is_servers("s1"));
    /* an unterminated quoted name is not rewritten (span 0): the server says it is wrong */
    CHECK_INT(prepared_classify_query_at("execute \"abc", SQL_READ_STANDARD, name, sizeof(name),
                                         &at, &span),
              SQL_EXECUTE);
    CHECK_INT((int)span, 0);
    /* SQL PREPARE names a statement; PREPARE TRANSACTION does not */
    CHECK_INT(prepared_classify_query_at("prepare Q1 (int) AS SELECT $1", SQL_READ_STANDARD, name,
                                         sizeof(name), &at, &span),
              SQL_PREPARE);
    CHECK_STR(name, "q1");
    CHECK_INT((int)at, 8);
    CHECK_INT((int)span, 2);
    CHECK_INT(prepared_classify_query("PREPARE TRANSACTION 'gid1'", name, sizeof(name)), SQL_OTHER);
    CHECK_INT(prepared_classify_query("prepare transaction E'g'", name, sizeof(name)), SQL_OTHER);
    CHECK_INT(prepared_classify_query("PREPARE transaction AS SELECT 1", name, sizeof(name)),
              SQL_PREPARE);
}

static void a_definition_has_its_server_name(void)
{
    struct stmt_def *a = def_of("select 1"), *b = def_of("select 1"), *c = def_of("select 2");
    CHECK(strncmp(a->server_name, "sluice_", 7) == 0 && strlen(a->server_name) == 15);
    CHECK_STR(a->server_name, b->server_name); /* equal definitions: one statement on a server */
    CHECK(strcmp(a->server_name, c->server_name) != 0);
    /* streamed: counted */
    struct stmt_def *s1 = stmt_def_alloc(4, NULL), *s2 = stmt_def_alloc(4, NULL);
    CHECK(strncmp(s1->server_name, "sluice_s", 8) == 0);
    CHECK(strcmp(s1->server_name, s2->server_name) != 0);
    CHECK(strlen(s1->server_name) <= STMT_SERVER_NAME_MAX);
    stmt_def_unref(a);
    stmt_def_unref(b);
    stmt_def_unref(c);
    stmt_def_unref(s1);
    stmt_def_unref(s2);
}

/* The same bytes read in two client encodings are two texts; an ASCII text is one in all. The
 * text starts after the name's rest (a long name's bytes past its key). */
static void a_text_beyond_ascii_is_named_by_its_encoding(void)
{
    static const uint8_t accented[] = "nn\0select '\xc3\xa9'\0\0";
    static const uint8_t ascii[] = "\xe9\0select 1\0\0"; /* only the name's rest beyond */
    struct stmt_def *l = stmt_def_new(accented, sizeof(accented) - 1, "LATIN1");
    struct stmt_def *u = stmt_def_new(accented, sizeof(accented) - 1, "UTF8");
    struct stmt_def *u2 = stmt_def_new(accented, sizeof(accented) - 1, "UTF8");
    struct stmt_def *al = stmt_def_new(ascii, sizeof(ascii) - 1, "LATIN1");
    struct stmt_def *au = stmt_def_new(ascii, sizeof(ascii) - 1, "UTF8");
    CHECK(!stmt_def_equal(l, u) && strcmp(l->server_name, u->server_name) != 0);
    CHECK(stmt_def_equal(u, u2));
    CHECK_STR(u->encoding, "UTF8");
    CHECK(stmt_def_equal(al, au) && strcmp(al->server_name, au->server_name) == 0);
    CHECK_STR(al->encoding, "");
    stmt_def_unref(l);
    stmt_def_unref(u);
    stmt_def_unref(u2);
    stmt_def_unref(al);
    stmt_def_unref(au);
}

/* A buffer holding `bytes` from offset `at`, framed up to scan. */
static void fill(struct buf *b, uint32_t at, const void *bytes, uint32_t n, uint32_t scan)
{
    CHECK(buf_attach(b));
    memcpy(b->data + at, bytes, n);
    b->rpos = at;
    b->scan = at + scan;
    b->wpos = at + n;
}

static void names_are_rewritten_in_place_or_their_start_sent_first(void)
{
    buf_set_block_size(64);
    struct framer rx = {0};
    struct msg_out out;
    codec_out_init(&out);
    /* "Sync" framed before a Bind of statement "ab": the name grows by 3, the shorter side (the
     * header and the Sync before it) moves back into the room before rpos. */
    static const uint8_t sync_bind[] = {'S', 0, 0, 0, 4, 'B', 0, 0, 0, 24, 0, 'a', 'b', 0,
                                        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    struct buf b = {0};
    fill(&b, 10, sync_bind, sizeof(sync_bind), 5);
    CHECK(stmt_names_can_rewrite(&b, 2, 5));
    CHECK_INT(stmt_names_rewrite(&b, &rx, &out, 1, 2, "abcde"), STMT_REWRITTEN_IN_PLACE);
    static const uint8_t want[] = {'S', 0, 0, 0, 4, 'B', 0, 0, 0, 27, 0, 'a', 'b', 'c', 'd', 'e',
                                   0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    CHECK_INT(b.rpos, 7);
    CHECK_INT(b.scan, 12);
    CHECK_INT(b.wpos - b.rpos, sizeof(want));
    CHECK(memcmp(b.data + b.rpos, want, sizeof(want)) == 0);
    /* and back: it shrinks, the shorter side moves again */
    CHECK_INT(stmt_names_rewrite(&b, &rx, &out, 1, 5, "ab"), STMT_REWRITTEN_IN_PLACE);
    CHECK_INT(b.rpos, 10);
    CHECK_INT(b.wpos - b.rpos, sizeof(sync_bind));
    CHECK(memcmp(b.data + b.rpos, sync_bind, sizeof(sync_bind)) == 0);
    CHECK_INT(out.len, 0);
    buf_release(&b);

    /* A full buffer holding the start of a larger message from its first byte: no room on either
     * side, so its start goes out rewritten and the rest is framed from the buffer. */
    uint8_t big[64];
    memset(big, 'x', sizeof(big));
    memcpy(big, "B\0\0\0\x64\0ab\0", 9); /* Bind, length 100, portal "", statement "ab" */
    fill(&b, 0, big, sizeof(big), 0);
    CHECK(stmt_names_can_rewrite(&b, 2, 15)); /* nothing framed waits before it */
    CHECK_INT(stmt_names_rewrite(&b, &rx, &out, 1, 2, "sluice_00000001"), STMT_START_SENT);
    static const uint8_t start[] = {'B', 0, 0, 0, 113, 0, 's', 'l', 'u', 'i', 'c', 'e', '_',
                                    '0', '0', '0', '0', '0', '0', '0', '1'};
    CHECK(out.len == sizeof(start) && memcmp(out.data, start, sizeof(start)) == 0);
    CHECK_INT(rx.remain, 101 - 8); /* the message's bytes after the old name */
    CHECK_INT(b.rpos, 8);
    CHECK_INT(b.scan, 8);
    b.scan = 9; /* something framed before the next one: now it must wait for a flush */
    CHECK(!stmt_names_can_rewrite(&b, 2, 60));
    buf_release(&b);
    codec_out_free(&out);
    buf_free_cache();
    buf_set_block_size(16384);
}

static void errors_name_the_clients_statements(void)
{
    struct stmt_map *m = stmt_map_new();
    struct stmt_def *d = def_of("select 1");
    CHECK(m && stmt_map_put(m, "mine", d) != NULL);
    char body[160];
    int n = snprintf(body, sizeof(body), "SERROR%cC42P05%cMprepared statement \"%s\" already "
                     "exists%c%c", 0, 0, d->server_name, 0, 0);
    struct msg_out in, out;
    codec_out_init(&in);
    codec_out_init(&out);
    codec_begin(&in, 'E');
    codec_put_bytes(&in, body, (size_t)n);
    codec_end(&in);
    CHECK(stmt_names_in_error(m, NULL, in.data, in.len));
    CHECK(!stmt_names_in_error(NULL, NULL, in.data, in.len));
    stmt_names_put_error(m, NULL, in.data, in.len, &out);
    const char *msg = memmem(out.data, out.len, "Mprepared", 9);
    CHECK(msg && strcmp(msg, "Mprepared statement \"mine\" already exists") == 0);
    CHECK_INT(codec_get_u32(out.data + 1), out.len - 1);
    codec_out_free(&in);
    codec_out_free(&out);
    stmt_map_delete(m);
    stmt_def_unref(d);
}

static enum session_feature detect(const char *sql)
{
    return session_state_detect(sql, strlen(sql), NULL, SQL_READ_STANDARD);
}

static void session_level_sql_is_detected(void)
{
    CHECK_INT(detect("LISTEN jobs"), SESSION_FEATURE_LISTEN);
    CHECK_INT(detect("select 1; listen jobs;"), SESSION_FEATURE_LISTEN);
    CHECK_INT(detect("SELECT pg_advisory_lock(42)"), SESSION_FEATURE_ADVISORY_LOCK);
    CHECK_INT(detect("select pg_try_advisory_lock_shared (1)"), SESSION_FEATURE_ADVISORY_LOCK);
    CHECK_INT(detect("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), SESSION_FEATURE_HOLD_CURSOR);
    CHECK_INT(detect("create temp table t (a int)"), SESSION_FEATURE_TEMP_TABLE);
    CHECK_INT(detect("CREATE LOCAL TEMPORARY TABLE t (a int)"), SESSION_FEATURE_TEMP_TABLE);
    CHECK_INT(detect("SET search_path TO app"), SESSION_FEATURE_SET);
    CHECK_INT(detect("set session statement_timeout = 5"), SESSION_FEATURE_SET);
    CHECK_INT(detect("/* c */ -- x\n SET ROLE admin"), SESSION_FEATURE_SET);
    CHECK_INT(detect("select set_config('search_path', 'x', false)"), SESSION_FEATURE_SET);
    CHECK_INT(detect("SELECT pg_catalog.set_config ( 'a.b' , f(1, 2), $1)"), SESSION_FEATURE_SET);
    CHECK_INT(detect("select set_config('search_path', 'x', true)"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("select set_config('TimeZone', 'UTC', false)"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("select reset_config_x(1), my_set_config('a', 'b', false)"),
              SESSION_FEATURE_NONE);
}

static size_t feature_start(const char *sql)
{
    return session_state_feature_start(sql, strlen(sql) + 1); /* with its NUL, as in a Query */
}

/* Where the stand-in of a refused statement goes in a Query: after the statements before it,
 * which run first as in Postgres; at 0 (the whole text) where a ';' could hide. */
static void a_refused_statement_is_cut_where_it_starts(void)
{
    CHECK_INT(feature_start("LISTEN x"), 0);
    CHECK_INT(feature_start("INSERT INTO t VALUES (1); LISTEN x; SELECT 2"), 25);
    CHECK_INT(feature_start("BEGIN;select ';';SET search_path = a"), 17);
    CHECK_INT(feature_start("select 1; select pg_advisory_lock(1)"), 9);
    CHECK_INT(feature_start("select \"a;\"; select 'b''; listen' ; listen y"), 35);
    CHECK_INT(feature_start("select $$;$$; listen y"), 0);
    CHECK_INT(feature_start("select 1 -- ;\n; listen y"), 0);
    CHECK_INT(feature_start("select 1 /* ; */; listen y"), 0);
    CHECK_INT(feature_start("select E'\\'; listen y'"), 0);
    CHECK_INT(feature_start("select 1; select 2"), 0);
}

/* The server's ERROR for the stand-in, in any language's quotes, is known again; another is not. */
static void a_refusal_is_known_in_the_servers_error(void)
{
    struct msg_out o;
    codec_out_init(&o);
    const char *messages[] = {
        "invalid input syntax for type integer: \"sluice refused: a temporary table\"",
        "ung\xc3\xbcltige Eingabesyntax f\xc3\xbcr Typ integer: \xc2\xbbsluice refused: "
        "LISTEN\xc2\xab",
        "invalid input syntax for type integer: \"sluice refused: nothing\"",
    };
    enum session_feature want[] = {SESSION_FEATURE_TEMP_TABLE, SESSION_FEATURE_LISTEN,
                                   SESSION_FEATURE_NONE};
    const char *states[] = {"22P02", "22P02", "22P02", "42P01"};
    for (size_t i = 0; i < 4; i++) {
        codec_out_reset(&o);
        codec_put_error(&o, 'E', "ERROR", states[i], messages[i < 3 ? i : 0], NULL, NULL);
        CHECK(!o.oom);
        CHECK_INT(session_effects_refused_in_error(o.data, o.len),
                  i < 3 ? want[i] : SESSION_FEATURE_NONE);
    }
    codec_out_free(&o);
}

static void parameters_a_statement_may_change_are_named(void)
{
    struct param_touch t;
    session_state_detect("SET search_path = a; reset Statement_Timeout", 44, &t, SQL_READ_STANDARD);
    CHECK_INT(t.all, 0);
    CHECK_INT(t.n, 2);
    CHECK_STR(t.names[0], "search_path");
    CHECK_STR(t.names[1], "statement_timeout");
    const char *all[] = {"RESET ALL", "discard all", "SET ROLE r",
                         "select set_config(x, 'b', false)",
                         "SET a=1; SET b=1; SET c=1; SET d=1; SET e=1; SET f=1; SET g=1; SET h=1; SET i=1; "
                         "SET j=1; SET k=1; SET l=1; SET m=1; SET n=1; SET o=1; SET p=1; SET q=1"};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        session_state_detect(all[i], strlen(all[i]), &t, SQL_READ_STANDARD);
        CHECK_INT(t.all, 1);
    }
    /* a name's parts joined across spaces or a comment, as Postgres's grammar joins them: not
     * `app`, `app.`, nor SET LOCAL or SET SESSION of `tenant` */
    const char *spaced[] = {"SET app . tenant = 1",       "SET app. Tenant = 1",
                            "SET app /* c */.tenant = 1", "SET app\n.tenant TO DEFAULT",
                            "RESET app . tenant",         "RESET app. tenant",
                            "SET local . tenant = 1",     "SET session/**/.tenant = 1",
                            /* a CR alone ends a "--" comment, as in scan.l */
                            "SELECT 1; -- c\rSET app.tenant = 1", "SET app -- c\r.tenant = 1",
                            /* a comment ends a name as a space does */
                            "SET app.tenant/**/= 1",      "SET app.tenant--c\nTO 1"};
    const char *joined[] = {"app.tenant", "app.tenant", "app.tenant",   "app.tenant",
                            "app.tenant", "app.tenant", "local.tenant", "session.tenant",
                            "app.tenant", "app.tenant", "app.tenant",   "app.tenant"};
    for (size_t i = 0; i < sizeof(spaced) / sizeof(spaced[0]); i++) {
        session_state_detect(spaced[i], strlen(spaced[i]), &t, SQL_READ_STANDARD);
        CHECK_INT(t.all, 0);
        CHECK_INT(t.n, 1);
        CHECK_STR(t.names[0], joined[i]);
    }
    /* the longest name Postgres keeps whole (63 bytes) is read, spaced apart or not; 64 is not */
    char longest[128];
    for (int spaced_out = 0; spaced_out < 2; spaced_out++) {
        for (int extra = 0; extra < 2; extra++) {
            int len = snprintf(longest, sizeof(longest), "SET app%s%.*s = 1",
                               spaced_out ? " . " : ".", 59 + extra,
                               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            session_state_detect(longest, (size_t)len, &t, SQL_READ_STANDARD);
            CHECK_INT(t.all, extra);
            CHECK_INT(t.n, 1 - extra);
        }
    }
    /* a part quoted, or none after the dot: a name sluice does not read */
    const char *unread[] = {"SET app . \"tenant\" = 1", "SET app . = 1", "RESET app . \"x\""};
    for (size_t i = 0; i < sizeof(unread) / sizeof(unread[0]); i++) {
        session_state_detect(unread[i], strlen(unread[i]), &t, SQL_READ_STANDARD);
        CHECK_INT(t.all, 1);
    }
    const char *none[] = {"SET LOCAL search_path = a", "SET TimeZone = 'UTC'", "RESET DateStyle",
                          "select set_config('search_path', 'a', true)", "DISCARD PLANS"};
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        session_state_detect(none[i], strlen(none[i]), &t, SQL_READ_STANDARD);
        CHECK_INT(t.all, 0);
        CHECK_INT(t.n, 0);
    }
}

static enum param_reset_kind reset_kind(const char *sql, struct param_touch *t)
{
    session_state_detect(sql, strlen(sql), t, SQL_READ_STANDARD);
    return t->reset.kind;
}

static void resets_to_login_values_are_named_when_last(void)
{
    struct param_touch t;
    CHECK_INT(reset_kind("RESET Application_Name", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "application_name");
    CHECK_INT(param_reset_covers(&t.reset, "APPLICATION_NAME"), 1);
    CHECK_INT(param_reset_covers(&t.reset, "DateStyle"), 0);
    CHECK_INT(reset_kind("set session search_path to default ;", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "search_path");
    CHECK_INT(reset_kind("SET DateStyle = DEFAULT", &t), PARAM_RESET_NAMES);
    CHECK_INT(reset_kind("reset time zone", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "timezone");
    CHECK_INT(reset_kind("SET a = 1; RESET a; RESET b", &t), PARAM_RESET_NAMES);
    CHECK_INT(t.reset.n, 2);
    CHECK_INT(reset_kind("RESET ALL", &t), PARAM_RESET_ALL);
    CHECK_INT(param_reset_covers(&t.reset, "anything"), 1);
    CHECK_INT(reset_kind("select 1; discard all; -- done\n", &t), PARAM_RESET_ALL);
    CHECK_INT(reset_kind("RESET a; SELECT 1; RESET ALL", &t), PARAM_RESET_ALL);
    /* what follows a reset may read or change what it reset */
    CHECK_INT(reset_kind("RESET ALL; SELECT 1", &t), PARAM_RESET_UNSURE);
    CHECK_INT(reset_kind("RESET a; SET a = 2", &t), PARAM_RESET_UNSURE);
    CHECK_INT(reset_kind("RESET a; RESET b; RESET c; RESET d; RESET e", &t), PARAM_RESET_UNSURE);
    CHECK_INT(param_reset_covers(&t.reset, "a"), 0);
    CHECK_INT(reset_kind("RESET a", &t), PARAM_RESET_NAMES);
    CHECK_INT(t.reset.session_level, 1);
    /* transaction-local resets, and set_config whose value may be NULL */
    CHECK_INT(reset_kind("SET LOCAL search_path TO DEFAULT", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "search_path");
    CHECK_INT(t.reset.session_level, 0);
    CHECK_INT(reset_kind("set local time zone default", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "timezone");
    CHECK_INT(reset_kind("SET TIME ZONE LOCAL", &t), PARAM_RESET_NAMES);
    CHECK_INT(t.reset.session_level, 1);
    CHECK_INT(reset_kind("SET \"DateStyle\" TO DEFAULT", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "datestyle");
    CHECK_INT(reset_kind("select set_config('search_path', NULL, true)", &t), PARAM_RESET_NAMES);
    CHECK_STR(t.reset.names[0], "search_path");
    CHECK_INT(t.reset.session_level, 0);
    CHECK_INT(reset_kind("select set_config('a', $1, false)", &t), PARAM_RESET_NAMES);
    CHECK_INT(t.reset.session_level, 1);
    CHECK_INT(reset_kind("select set_config(name, NULL, false) from x", &t), PARAM_RESET_ALL);
    struct param_reset merged = {.kind = PARAM_RESET_NONE};
    CHECK_INT(reset_kind("RESET a; RESET b", &t), PARAM_RESET_NAMES);
    param_reset_merge(&merged, &t.reset);
    CHECK_INT(reset_kind("RESET b; RESET c", &t), PARAM_RESET_NAMES);
    param_reset_merge(&merged, &t.reset);
    CHECK_INT(merged.kind, PARAM_RESET_NAMES);
    CHECK_INT(merged.n, 3);
    CHECK_INT(reset_kind("RESET ALL; SELECT 1", &t), PARAM_RESET_UNSURE);
    param_reset_merge(&merged, &t.reset);
    CHECK_INT(merged.kind, PARAM_RESET_ALL);
    const char *none[] = {"SET LOCAL search_path TO 'a'", "SET a = 'default'",
                          "SET a TO DEFAULT, 1", "RESET ROLE", "RESET SESSION AUTHORIZATION",
                          "DISCARD PLANS", "select 'reset all'",
                          "select set_config('a', 'it''s', false)", "SET TIME ZONE 'UTC'"};
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++)
        CHECK_INT(reset_kind(none[i], &t), PARAM_RESET_NONE);
}

static void changes_no_record_can_follow_are_unnamed(void)
{
    struct param_touch t;
    const char *unnamed[] = {"SET ROLE r", "set session role r", "SET SESSION AUTHORIZATION u",
                             "set session_authorization = u",
                             "SET \"role\" TO r", "select set_config('role', 'r', false)",
                             "select set_config(x, 'b', false)",
                             "select set_config(E'search_path', 'b', false)",
                             "select set_config(U&'search_path', 'b', false)",
                             "select set_config($$search_path$$, 'b', false)",
                             "select set_config('search_'||'path', 'b', false)",
                             "select \"set_config\"(x, 'b', false)",
                             "SET a=1; SET b=1; SET c=1; SET d=1; SET e=1; SET f=1; SET g=1; SET h=1; SET i=1; "
                         "SET j=1; SET k=1; SET l=1; SET m=1; SET n=1; SET o=1; SET p=1; SET q=1",
                             "select set_config(name, 'x', false) from pg_settings where name = "
                             "'search_path' or true"};
    for (size_t i = 0; i < sizeof(unnamed) / sizeof(unnamed[0]); i++) {
        CHECK_INT(session_state_detect(unnamed[i], strlen(unnamed[i]), &t, SQL_READ_STANDARD), SESSION_FEATURE_SET);
        CHECK_INT(t.unnamed, 1);
    }
    const char *named[] = {"SET SCHEMA 'x'", "SET \"search_path\" TO x",
                           "select pg_catalog.\"set_config\"('search_path', 'x', false)",
                           "select set_config( 'search_path' , 'x', false)",
                           /* pg_dump's "set if the server has it" */
                           "SELECT set_config(name, 'x', false) FROM pg_catalog.pg_settings "
                           "WHERE name = 'search_path'"};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        CHECK_INT(session_state_detect(named[i], strlen(named[i]), &t, SQL_READ_STANDARD), SESSION_FEATURE_SET);
        CHECK_INT(t.unnamed, 0);
        CHECK_INT(t.n, 1);
        CHECK_STR(t.names[0], "search_path");
    }
    /* a SET keyword as a placeholder's first part is that placeholder; SET SESSION
     * CHARACTERISTICS and SET XML OPTION name their parameters; '$' is part of a name */
    const char *keyword_names[][2] = {
        {"SET local.x = 1", "local.x"},
        {"SET session.x TO 1", "session.x"},
        {"SET time.x = 1", "time.x"},
        {"SET role.x = 1", "role.x"},
        {"SET xml OPTION document", "xmloption"},
        {"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
         "default_transaction_isolation"},
        {"SET app.x$y = 1", "app.x$y"},
    };
    for (size_t i = 0; i < sizeof(keyword_names) / sizeof(keyword_names[0]); i++) {
        CHECK_INT(session_state_detect(keyword_names[i][0], strlen(keyword_names[i][0]), &t, SQL_READ_STANDARD),
                  SESSION_FEATURE_SET);
        CHECK_INT(t.unnamed, 0);
        CHECK_STR(t.names[0], keyword_names[i][1]);
    }
    const char *odd[] = {"SET app.\xc3\xa9 = 1", "SET app.\"X\" = 1", "SET \"local\".x = 1"};
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        CHECK_INT(session_state_detect(odd[i], strlen(odd[i]), &t, SQL_READ_STANDARD), SESSION_FEATURE_SET);
        CHECK_INT(t.unnamed, 1);
    }
    CHECK_INT(detect("select \"pg_advisory_lock\"(1)"), SESSION_FEATURE_ADVISORY_LOCK);
    CHECK_INT(detect("select \"SET_CONFIG\"('search_path', 'x', false)"), SESSION_FEATURE_NONE);
    /* objects only the end of a session drops come before a SET: they decide the reset */
    CHECK_INT(detect("PREPARE foo AS SELECT 1"), SESSION_FEATURE_SQL_PREPARE);
    CHECK_INT(detect("PREPARE TRANSACTION 'x'"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("SET search_path = a; LISTEN c"), SESSION_FEATURE_LISTEN);
    /* a set_config sluice follows before a lock in the same statement: the lock is seen */
    CHECK_INT(detect("SELECT set_config('app.x', 'v', false), pg_advisory_lock(45)"),
              SESSION_FEATURE_ADVISORY_LOCK);
    CHECK_INT(detect("SET search_path = a; select pg_advisory_lock(1)"),
              SESSION_FEATURE_ADVISORY_LOCK);
}

static void transaction_scoped_and_tracked_sql_is_not_flagged(void)
{
    CHECK_INT(detect("select pg_advisory_xact_lock(1)"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("SET LOCAL search_path TO app"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("SET TimeZone TO 'UTC'"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("set time zone 'UTC'"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("SET application_name = 'x'"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("DECLARE c CURSOR FOR SELECT 'with hold'"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("select 'listen; set search_path to x'"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("create table temp_things (a int)"), SESSION_FEATURE_NONE);
    CHECK_INT(detect("select * from listeners"), SESSION_FEATURE_NONE);
    CHECK_INT(detect(""), SESSION_FEATURE_NONE);
}

/* The statements of a sync, one per NUL, joined with " | " for comparison. */
static const char *sync_text(const struct param_set *own, const struct param_set *server, char *out,
                             size_t cap)
{
    struct msg_out sql;
    codec_out_init(&sql);
    params_build_sync(NULL, own, server, &sql);
    size_t n = 0;
    out[0] = '\0';
    for (uint32_t at = 0; at < sql.len; at += (uint32_t)strlen((char *)sql.data + at) + 1)
        n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? " | " : "", (char *)sql.data + at);
    codec_out_free(&sql);
    return out;
}

/* idle_session_timeout read as guc.c's parse_int reads a GUC_UNIT_MS value: what SHOW and
 * current_setting print, what a login option may say; what Postgres refuses means no limit. */
static void idle_session_timeout_is_read_as_postgres_reads_it(void)
{
    /* what Postgres 15 gives each (pg_settings.setting after the SET); 0 where it refuses */
    const struct {
        const char *value;
        int64_t ms;
    } v[] = {
        {"0", 0},          {"1s", 1000},    {"1500", 1500},   {"250ms", 250},
        {"10min", 600000}, {"1h", 3600000}, {"1d", 86400000}, {" 2 s ", 2000},
        {"1.5s", 1500},    {"0x10", 16},    {"010", 8},       {"1e3", 1000},
        {"2500us", 2},     {"3500us", 4},   {"0.0005s", 0},   {"1.00001min", 60000},
        {"1S", 0},         {"1 sec", 0},    {"abc", 0},       {"-1", 0},
        {"3000000000", 0}, {"", 0},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct param_set own;
        params_init(&own);
        CHECK(params_set(&own, "idle_session_timeout", v[i].value) == 0);
        CHECK_INT(params_idle_session_timeout_ms(&own), v[i].ms);
        params_free(&own);
    }
    struct param_set none;
    params_init(&none);
    CHECK_INT(params_idle_session_timeout_ms(&none), 0);
    params_free(&none);
}

/* A lease's end gives back idle_session_timeout where the server's record holds a client's
 * value (or an unknown one), and nothing else: the next sync sets the rest. */
static void a_release_resets_only_what_acts_while_idle(void)
{
    struct param_set server;
    params_init(&server);
    CHECK(params_set(&server, "statement_timeout", "5s") == 0);
    struct msg_out sql;
    codec_out_init(&sql);
    struct param_set startup;
    params_init(&startup);
    CHECK_INT(params_build_release(&startup, &server, &sql), 0);
    CHECK_INT(sql.len, 0);
    CHECK(params_set(&server, "IDLE_SESSION_TIMEOUT", "1s") == 0);
    CHECK_INT(params_build_release(&startup, &server, &sql), 1);
    CHECK(strstr((const char *)sql.data, "set_config('idle_session_timeout', NULL, false)"));
    CHECK(params_get(&server, "idle_session_timeout") == NULL);
    CHECK_STR(params_get(&server, "statement_timeout"), "5s");
    codec_out_free(&sql);
    codec_out_init(&sql);
    CHECK(params_forget(&server, "idle_session_timeout") == 0);
    CHECK_INT(params_build_release(&startup, &server, &sql), 1);
    CHECK(params_get(&server, "idle_session_timeout") == NULL);
    codec_out_free(&sql);
    /* Opened with a client's login value: a reset would give that back, so it is turned off,
     * and recorded so (the sync gives it back to the next client with that login). */
    CHECK(params_set(&startup, "idle_session_timeout", "1s") == 0);
    CHECK(params_set(&server, "idle_session_timeout", "1s") == 0);
    codec_out_init(&sql);
    CHECK_INT(params_build_release(&startup, &server, &sql), 1);
    CHECK(strstr((const char *)sql.data,
                 "set_config('idle_session_timeout', $sluice$0$sluice$, false)"));
    CHECK_STR(params_get(&server, "idle_session_timeout"), "0");
    CHECK_INT(params_build_release(&startup, &server, &sql), 0); /* already off */
    codec_out_free(&sql);
    params_free(&startup);
    params_free(&server);
}

/* Sets that differ only in the last byte of two values: FNV-1a sums once collided here, and the
 * sync of application_name was skipped (so was the startup fingerprint's match). */
static void fingerprints_of_sets_differing_in_last_bytes_differ(void)
{
    struct param_set a, b;
    for (int i = 0; i < 10; i++) {
        for (int j = 0; j < 10; j++) {
            if (i == j)
                continue;
            params_init(&a);
            params_init(&b);
            char app[8], timeout[8];
            snprintf(app, sizeof(app), "app%d", i);
            snprintf(timeout, sizeof(timeout), "100%d", i);
            CHECK(params_set(&a, "application_name", app) == 0);
            CHECK(params_set(&a, "statement_timeout", timeout) == 0);
            snprintf(app, sizeof(app), "app%d", j);
            snprintf(timeout, sizeof(timeout), "100%d", j);
            CHECK(params_set(&b, "application_name", app) == 0);
            CHECK(params_set(&b, "statement_timeout", timeout) == 0);
            CHECK(params_fingerprint(NULL, &a) != params_fingerprint(NULL, &b));
            CHECK(params_startup_fingerprint(&a) != params_startup_fingerprint(&b));
            params_free(&a);
            params_free(&b);
        }
    }
}

/* SipHash-2-4's reference vectors (key 00..0f, message 00..len-1), fed whole and byte by byte. */
static void siphash_matches_the_reference_vectors(void)
{
    uint8_t key[16], msg[16];
    for (int i = 0; i < 16; i++)
        key[i] = msg[i] = (uint8_t)i;
    const struct {
        size_t len;
        uint64_t want;
    } v[] = {{0, 0x726fdb47dd0e0e31ull}, {1, 0x74f839c593dc67fdull}, {15, 0xa129ca6149be45e5ull}};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        CHECK(siphash24(key, msg, v[i].len) == v[i].want);
        struct siphash h;
        siphash_init(&h, key);
        for (size_t j = 0; j < v[i].len; j++)
            siphash_byte(&h, msg[j]);
        CHECK(siphash_final(&h) == v[i].want);
        siphash_init(&h, key); /* pieces that straddle the 8-byte blocks */
        siphash_update(&h, msg, v[i].len / 3);
        siphash_update(&h, msg + v[i].len / 3, v[i].len - v[i].len / 3);
        CHECK(siphash_final(&h) == v[i].want);
    }
}

/* The fingerprint of one set in one process. */
static uint64_t fingerprint_in_a_child(void)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        struct param_set a;
        params_init(&a);
        uint64_t fp = 0;
        if (params_set(&a, "search_path", "app") == 0)
            fp = params_startup_fingerprint(&a);
        _exit(write(fds[1], &fp, sizeof(fp)) == (ssize_t)sizeof(fp) ? 0 : 1);
    }
    close(fds[1]);
    uint64_t fp = 0;
    if (pid < 0 || read(fds[0], &fp, sizeof(fp)) != (ssize_t)sizeof(fp))
        fp = 0;
    close(fds[0]);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return fp;
}

/* Fingerprints are keyed by a secret drawn per process: equal fingerprints skip a sync (and
 * pick a session backend), and a client chooses its parameters, so with a hash anyone can
 * compute (as before: FNV-1a, the same in every sluice) a client could pad its set with
 * custom `-c app.x=...` entries until its sum equals another client's. Two processes must not
 * agree (odds 2^-64). Runs before anything in this process draws the key. */
static void fingerprints_are_keyed_per_process(void)
{
    uint64_t one = fingerprint_in_a_child(), other = fingerprint_in_a_child();
    CHECK(one != 0 && other != 0);
    CHECK(one != other);
}

static void an_unknown_server_value_is_set_again_or_reset(void)
{
    struct param_set own, server;
    params_init(&own);
    params_init(&server);
    char text[512];
    CHECK(params_set(&own, "search_path", "evil") == 0);
    CHECK_STR(sync_text(&own, &server, text, sizeof(text)),
              "SELECT pg_catalog.set_config('search_path', $sluice$evil$sluice$, false)");
    CHECK(params_note_sync(&server, &own) == 0);
    CHECK_STR(sync_text(&own, &server, text, sizeof(text)), "");
    /* a reset query ran, or the client's own RESET ALL: the same value must be SET again */
    CHECK(params_forget(&server, NULL) == 0);
    CHECK(params_fingerprint(NULL, &server) != params_fingerprint(NULL, &own));
    CHECK_STR(sync_text(&own, &server, text, sizeof(text)),
              "SELECT pg_catalog.set_config('search_path', $sluice$evil$sluice$, false)");
    /* a value holding the tag gets another; nothing in it is escaped (a backslash byte may end
     * a character of the client's encoding) */
    struct param_set tagged, none;
    params_init(&tagged);
    params_init(&none);
    CHECK(params_set(&tagged, "app.x", "a$sluice$b$sluice1$\\'") == 0);
    CHECK_STR(sync_text(&tagged, &none, text, sizeof(text)),
              "SELECT pg_catalog.set_config('app.x', $sluice2$a$sluice$b$sluice1$\\'$sluice2$, "
              "false)");
    params_free(&tagged);
    params_free(&none);
    /* a name the client's SET touched: reset for a client without it, never with an error */
    CHECK(params_forget(&server, "work_mem") == 0);
    CHECK(params_forget(&server, "TimeZone") == 0); /* reported: the server says itself */
    CHECK(params_get(&server, "TimeZone") == NULL);
    struct param_set plain;
    params_init(&plain);
    CHECK_STR(sync_text(&plain, &server, text, sizeof(text)),
              "DO $sluice$BEGIN PERFORM pg_catalog.set_config('search_path', NULL, false); "
              "EXCEPTION WHEN OTHERS THEN NULL; END$sluice$ | "
              "DO $sluice$BEGIN PERFORM pg_catalog.set_config('work_mem', NULL, false); "
              "EXCEPTION WHEN OTHERS THEN NULL; END$sluice$");
    params_free(&plain);
    params_free(&own);
    params_free(&server);
}

static void a_login_is_tried_only_with_values_no_server_accepted(void)
{
    struct param_set own, base, accepted;
    params_init(&own);
    params_init(&base);
    params_init(&accepted);
    CHECK(params_set(&base, "DateStyle", "ISO, MDY") == 0);
    CHECK(params_set(&own, "application_name", "anything") == 0);
    CHECK(params_set(&own, "DateStyle", "ISO, MDY") == 0);
    CHECK(params_known_good(&own, &base, &accepted));
    CHECK(params_set(&own, "extra_float_digits", "3") == 0);
    CHECK(!params_known_good(&own, &base, &accepted));
    CHECK(params_note_accepted(&accepted, &own, 64) == 0);
    CHECK(params_known_good(&own, &base, &accepted));
    CHECK(params_set(&own, "extra_float_digits", "2") == 0);
    CHECK(!params_known_good(&own, &base, &accepted));
    params_free(&own);
    params_free(&base);
    params_free(&accepted);
}

/* Past a few names the set keeps a hash index: set, replace and remove in a mixed order must find
 * exactly what a plain list would, in any letter case. */
static void many_parameters_are_found_after_sets_and_removals(void)
{
    struct param_set p;
    params_init(&p);
    enum { N = 900 };
    bool present[N] = {false};
    char name[32], value[32];
    unsigned seed = 12345;
    for (int step = 0; step < 20000; step++) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)((seed >> 8) % N);
        snprintf(name, sizeof(name), (seed & 1) ? "X.P%d" : "x.p%d", i);
        if ((seed >> 20) % 3 == 0) {
            CHECK(params_set(&p, name, NULL) == 0);
            present[i] = false;
        } else {
            snprintf(value, sizeof(value), "v%d", i);
            CHECK(params_set(&p, name, value) == 0);
            present[i] = true;
        }
    }
    int count = 0;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "x.P%d", i);
        snprintf(value, sizeof(value), "v%d", i);
        const char *got = params_get(&p, name);
        CHECK(present[i] ? got && strcmp(got, value) == 0 : got == NULL);
        count += present[i];
    }
    CHECK_INT(p.n, count);
    params_free(&p);
}

/* The client_encoding a set keeps at hand is params_get's, whatever came and went around it. */
static void the_kept_client_encoding_follows_every_change(void)
{
    struct param_set p;
    params_init(&p);
    CHECK(p.client_encoding == NULL);
    CHECK(params_set(&p, "application_name", "a") == 0);
    CHECK(params_set(&p, "Client_Encoding", "LATIN1") == 0);
    CHECK(strcmp(p.client_encoding, "LATIN1") == 0);
    CHECK(params_set(&p, "client_encoding", "UTF8") == 0);
    CHECK(p.client_encoding == params_get(&p, "client_encoding"));
    for (int i = 0; i < 40; i++) { /* past the index, and removals moving it about */
        char name[16];
        snprintf(name, sizeof(name), "x.p%d", i);
        CHECK(params_set(&p, name, "v") == 0);
    }
    CHECK(params_set(&p, "application_name", NULL) == 0);
    CHECK(p.client_encoding == params_get(&p, "client_encoding"));
    for (int i = p.n - 1; i >= 0; i--) /* removed by their own names, as reset_to_startup does */
        if (strncmp(p.items[i].name, "x.p", 3) == 0)
            CHECK(params_set(&p, p.items[i].name, NULL) == 0);
    CHECK(p.client_encoding == params_get(&p, "client_encoding"));
    CHECK(strcmp(p.client_encoding, "UTF8") == 0);
    CHECK(params_set(&p, "client_encoding", NULL) == 0);
    CHECK(p.client_encoding == NULL);
    params_free(&p);
    CHECK(p.client_encoding == NULL);
}

/* The words that may set client_encoding or undo a SET of it, in any case, and texts without. */
static void texts_that_may_change_client_encoding_are_told(void)
{
    static const struct {
        const char *sql;
        unsigned effect;
    } cases[] = {
        {"SET client_encoding TO 'LATIN1'", TEXT_ENCODING_MAY_SET},
        {"set names 'latin1'", TEXT_ENCODING_MAY_SET},
        {"RESET ALL", TEXT_ENCODING_MAY_SET},
        {"Discard All", TEXT_ENCODING_MAY_SET},
        {"SELECT SET_CONFIG('a', 'b', false)", TEXT_ENCODING_MAY_SET},
        {"EXECUTE p", TEXT_ENCODING_MAY_SET},
        {"SET U&\"client\\005fencoding\" TO x", TEXT_ENCODING_MAY_SET},
        {"ROLLBACK TO SAVEPOINT a", TEXT_ENCODING_MAY_UNDO},
        {"commit", TEXT_ENCODING_MAY_UNDO},
        {"END", TEXT_ENCODING_MAY_UNDO},
        {"BEGIN; SET LOCAL client_encoding TO 'WIN1252'; COMMIT",
         TEXT_ENCODING_MAY_SET | TEXT_ENCODING_MAY_UNDO},
        {"SELECT 1", 0},
        {"SET TimeZone TO UTC", 0},
        {"BEGIN", 0},
        {"SELECT 'r\xc3\xa9sum\xc3\xa9'", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK_INT((int)text_encoding_effect_of(cases[i].sql, strlen(cases[i].sql)),
                  (int)cases[i].effect);
    CHECK_INT((int)text_encoding_effect_of("RESET", 4), 0); /* only len bytes are read */
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds for a client with n parameters of its own to sync a server that has other values,
 * note the sync, and forget them again (what a transaction after another client's costs). */
static double sync_cost(int n)
{
    struct param_set own, server;
    params_init(&own);
    params_init(&server);
    char name[32];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "x.p%d", i);
        CHECK(params_set(&own, name, "new") == 0);
        CHECK(params_set(&server, name, "old") == 0);
    }
    double best = 1e9;
    for (int trial = 0; trial < 3; trial++) {
        double start = cpu_now();
        for (int rep = 0; rep < 4; rep++) {
            struct msg_out sql;
            codec_out_init(&sql);
            CHECK_INT(params_build_sync(NULL, &own, &server, &sql), n);
            codec_out_free(&sql);
            CHECK(params_note_sync(&server, &own) == 0);
            CHECK(params_forget(&server, NULL) == 0);
        }
        double spent = cpu_now() - start;
        best = spent < best ? spent : best;
    }
    params_free(&own);
    params_free(&server);
    return best;
}

/* Linear: 8 times the parameters cost about 8 times the CPU; quadratic lookups cost 64 times. */
static void syncing_many_parameters_costs_linear_cpu(void)
{
    double small = sync_cost(1000), large = sync_cost(8000);
    double ratio = large / (small > 1e-6 ? small : 1e-6);
    if (ratio >= 24)
        fprintf(stderr, "sync of 8000 parameters cost %.1f times that of 1000 (%.4f s, %.4f s)\n",
                ratio, large, small);
    CHECK(ratio < 24);
}

/* Postgres keys statements by the first 63 bytes of their name: so does sluice, and the key is
 * known as soon as those bytes are, however long the name. */
static void statement_name_keys_are_the_first_63_bytes(void)
{
    char key[STMT_KEY_MAX + 1];
    CHECK(stmt_name_key((const uint8_t *)"s1\0rest", 8, key));
    CHECK_STR(key, "s1");
    CHECK(!stmt_name_key((const uint8_t *)"s1", 2, key)); /* more of it may follow */
    char longname[200];
    memset(longname, 'a', sizeof(longname));
    CHECK(stmt_name_key((const uint8_t *)longname, 63, key));
    CHECK_INT(strlen(key), 63);
    CHECK(!stmt_name_key((const uint8_t *)longname, 62, key));
}

/* A client's map counts its names and definitions, and so does the total of all clients; a
 * server's map shares the definitions and counts toward no total. */
static void client_maps_count_their_statement_text(void)
{
    uint64_t before = stmt_client_text_bytes();
    struct stmt_map *client = stmt_map_new();
    struct stmt_map server;
    stmt_map_init(&server);
    struct stmt_def *a = def_of("select 1"), *b = def_of("select 22");
    CHECK(stmt_map_put(client, "s1", a) && stmt_map_put(&server, "s1", a));
    CHECK_INT(client->text_bytes, 3 + 9);
    CHECK(stmt_map_put(client, "s1", b) != NULL); /* replaced */
    CHECK(stmt_map_put(client, "s2", a) != NULL);
    CHECK_INT(client->text_bytes, 3 + 10 + 3 + 9);
    CHECK_INT(stmt_client_text_bytes() - before, 3 + 10 + 3 + 9);
    stmt_map_remove(client, "s1");
    CHECK_INT(client->text_bytes, 3 + 9);
    stmt_map_mark_unknown(&server);
    stmt_map_clear(client);
    CHECK_INT(client->text_bytes, 0);
    CHECK_INT(stmt_client_text_bytes(), before);
    stmt_def_unref(a);
    stmt_def_unref(b);
    stmt_map_delete(client);
    stmt_map_free(&server);
}

/* Big-endian fields of a message body under construction. */
static uint8_t *put_be(uint8_t *p, uint32_t v, int bytes)
{
    for (int k = bytes - 1; k >= 0; k--)
        *p++ = (uint8_t)(v >> (8 * k));
    return p;
}

/* A RowDescription body: n columns of (name, table OID, column number, type OID, length -1,
 * modifier, format 0). */
static uint32_t row_description(uint8_t *out, int n, const char *const *names,
                                const uint32_t *table, const uint32_t *type, const int32_t *typmod)
{
    uint8_t *p = put_be(out, (uint32_t)n, 2);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]) + 1;
        memcpy(p, names[i], len);
        p = put_be(p + len, table[i], 4);
        p = put_be(p, (uint32_t)(i + 1), 2);
        p = put_be(p, type[i], 4);
        p = put_be(p, 0xffff, 2);
        p = put_be(p, (uint32_t)typmod[i], 4);
        p = put_be(p, 0, 2);
    }
    return (uint32_t)(p - out);
}

static void result_types_differ_by_name_type_and_modifier_not_by_table(void)
{
    uint8_t b[256];
    const char *names[] = {"id", "v"}, *renamed[] = {"id", "w"};
    uint32_t tables[] = {16384, 16384}, other_tables[] = {16999, 16999};
    uint32_t ints[] = {23, 23}, texts[] = {23, 25};
    int32_t none[] = {-1, -1}, numeric[] = {-1, 655366};
    uint64_t base = stmt_shape_of(b, row_description(b, 2, names, tables, ints, none));
    CHECK(base > STMT_SHAPE_NO_DATA);
    CHECK(stmt_shape_of(b, row_description(b, 2, names, other_tables, ints, none)) == base);
    CHECK(stmt_shape_of(b, row_description(b, 2, renamed, tables, ints, none)) != base);
    CHECK(stmt_shape_of(b, row_description(b, 2, names, tables, texts, none)) != base);
    CHECK(stmt_shape_of(b, row_description(b, 2, names, tables, ints, numeric)) != base);
    CHECK(stmt_shape_of(b, row_description(b, 1, names, tables, ints, none)) != base);
    uint32_t n = row_description(b, 2, names, tables, ints, none);
    CHECK(stmt_shape_of(b, n - 1) == STMT_SHAPE_UNCHECKED); /* cut short */
    b[n] = 0;
    CHECK(stmt_shape_of(b, n + 1) == STMT_SHAPE_UNCHECKED); /* a byte too many */
    CHECK(stmt_shape_of(b, 1) == STMT_SHAPE_UNCHECKED);
}

static void sluices_describe_gives_both_entries_its_shape_and_is_swallowed(void)
{
    struct stmt_queue q = {0};
    struct stmt_map server, *client = stmt_map_new();
    stmt_map_init(&server);
    struct stmt_def *d = def_of("select v from t");
    CHECK(stmt_map_put(&server, "sluice_1", d) != NULL);
    CHECK(stmt_map_put(client, "q", d) != NULL);
    CHECK_INT(stmt_queue_push_client_parse(&q, "sluice_1", "q"), 0);
    CHECK_INT(stmt_queue_describe_due(&q, "sluice_1", "q", d), 0);
    CHECK(stmt_queue_describing(&q, "sluice_1"));
    CHECK(!stmt_queue_describing(&q, "sluice_2"));
    CHECK_INT(stmt_queue_take_due(&q), 0); /* sent: queued behind the Parse */
    CHECK(q.describe_due.name == NULL);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    /* the client's own Describe, answered before sluice's Parse: not sluice's */
    CHECK_INT(stmt_on_description(&q, &server, client, 'T', NULL, 0), REPLY_FORWARD);
    CHECK_INT(stmt_on_complete(&q, &server, '1'), REPLY_FORWARD);
    uint8_t b[64];
    const char *names[] = {"v"};
    uint32_t tables[] = {1}, types[] = {25};
    int32_t mods[] = {-1};
    uint32_t n = row_description(b, 1, names, tables, types, mods);
    CHECK_INT(stmt_on_description(&q, &server, client, 't', NULL, 0), REPLY_SWALLOW);
    q.shape_awaited = true;
    CHECK_INT(stmt_on_description(&q, &server, client, 'T', b, n), REPLY_SWALLOW);
    CHECK(!q.shape_awaited); /* what waited for it looks again */
    CHECK(stmt_map_get(&server, "sluice_1")->shape == stmt_shape_of(b, n));
    CHECK(stmt_map_get(client, "q")->shape == stmt_shape_of(b, n));
    CHECK(!stmt_queue_describing(&q, "sluice_1"));
    stmt_on_ready(&q, &server, &client);
    CHECK_INT(q.count, 0);
    /* prepared again: the entry's shape is unknown until its own Describe is answered */
    CHECK(stmt_map_put(&server, "sluice_1", d) != NULL);
    CHECK(stmt_map_get(&server, "sluice_1")->shape == STMT_SHAPE_UNKNOWN);
    CHECK_INT(stmt_queue_push(&q, REQ_PARSE_OURS, "sluice_1"), 0);
    CHECK_INT(stmt_queue_push_describe(&q, "sluice_1", NULL, d), 0);
    CHECK_INT(stmt_on_complete(&q, &server, '1'), REPLY_SWALLOW);
    CHECK_INT(stmt_on_description(&q, &server, client, 't', NULL, 0), REPLY_SWALLOW);
    CHECK_INT(stmt_on_description(&q, &server, client, 'n', NULL, 0), REPLY_SWALLOW);
    CHECK(stmt_map_get(&server, "sluice_1")->shape == STMT_SHAPE_NO_DATA);
    CHECK(stmt_map_get(client, "q")->shape == stmt_shape_of(b, n)); /* sluice's own: not q's */
    CHECK_INT(q.count, 0);
    stmt_def_unref(d);
    stmt_queue_free(&q);
    stmt_map_free(&server);
    stmt_map_delete(client);
}

/* The ParameterDescription after the client's own Parse fixes the definition's parameter types,
 * which sluice's Parse of it names from then on; one after sluice's own Parse (prepared again)
 * does not change them. Its hash is part of the shape: the same RowDescription with other
 * parameter types is another shape. */
static void the_client_parses_parameter_types_are_kept_and_named(void)
{
    struct stmt_queue q = {0};
    struct stmt_map server, *client = stmt_map_new();
    stmt_map_init(&server);
    /* the name's NUL, the text, no types named by the client */
    static const uint8_t text[] = "\0select 1 where $1 = 1\0\0";
    struct stmt_def *d = stmt_def_new(text, sizeof(text) - 1, NULL);
    CHECK(stmt_map_put(&server, "sluice_1", d) != NULL);
    CHECK(stmt_map_put(client, "q", d) != NULL);
    CHECK_INT(stmt_queue_describe_due(&q, "sluice_1", "q", d), 0);
    CHECK_INT(stmt_queue_take_due(&q), 0);
    static const uint8_t int4[] = {0, 1, 0, 0, 0, 23}, int8[] = {0, 1, 0, 0, 0, 20};
    CHECK_INT(stmt_on_description(&q, &server, client, 't', int4, sizeof(int4)), REPLY_SWALLOW);
    CHECK(d->params && d->params->count == 1 && d->params->oids[0] == 23);
    CHECK_INT(stmt_on_description(&q, &server, client, 'n', NULL, 0), REPLY_SWALLOW);
    uint64_t with_int4 = stmt_map_get(client, "q")->shape;
    CHECK(with_int4 > STMT_SHAPE_NO_DATA);
    CHECK(stmt_map_get(&server, "sluice_1")->shape == with_int4);
    /* prepared again: the Parse names int4, and the server's answer does not change it */
    struct msg_out o;
    codec_out_init(&o);
    CHECK(prepared_put_parse(&o, "s", d, NULL) == 0);
    static const uint8_t want[] = {'P', 0, 0, 0, 34, 's', 0, 's', 'e', 'l', 'e', 'c', 't', ' ',
                                   '1', ' ', 'w', 'h', 'e', 'r', 'e', ' ', '$', '1', ' ', '=', ' ',
                                   '1', 0, 0, 1, 0, 0, 0, 23};
    CHECK_INT(o.len, sizeof(want));
    CHECK(o.len == sizeof(want) && memcmp(o.data, want, sizeof(want)) == 0);
    CHECK(stmt_map_put(&server, "sluice_1", d) != NULL);
    CHECK_INT(stmt_queue_push_describe(&q, "sluice_1", NULL, d), 0);
    CHECK_INT(stmt_on_description(&q, &server, client, 't', int8, sizeof(int8)), REPLY_SWALLOW);
    CHECK(d->params->oids[0] == 23);
    CHECK_INT(stmt_on_description(&q, &server, client, 'n', NULL, 0), REPLY_SWALLOW);
    CHECK(stmt_map_get(&server, "sluice_1")->shape != with_int4);
    codec_out_free(&o);
    stmt_def_unref(d);
    stmt_queue_free(&q);
    stmt_map_free(&server);
    stmt_map_delete(client);
}

static void a_describe_never_sent_leaves_the_statement_to_prepare_again(void)
{
    struct stmt_queue q = {0};
    struct stmt_map server;
    stmt_map_init(&server);
    struct stmt_def *d = def_of("select 1");
    CHECK(stmt_map_put(&server, "sluice_1", d) != NULL);
    CHECK_INT(stmt_queue_describe_due(&q, "sluice_1", "q", d), 0);
    stmt_queue_forget_due(&q, &server); /* its client left before its next message */
    CHECK(q.describe_due.name == NULL);
    CHECK(stmt_map_get(&server, "sluice_1")->def == NULL);
    CHECK(!stmt_queue_describing(&q, "sluice_1"));
    stmt_def_unref(d);
    stmt_queue_free(&q);
    stmt_map_free(&server);
}

/* Session mode's paused queue: what is queued is still matched; past it, a ParseComplete or
 * CloseComplete is the client's and an error tells nothing of a batch. */
static void a_paused_queue_matches_what_it_holds_and_passes_the_rest(void)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_UNEXPECTED); /* following: no such request */
    CHECK_INT(stmt_queue_push_mark(&q), 0);
    CHECK_INT(stmt_queue_push(&q, REQ_SYNC, NULL), 0);
    q.paused = true; /* the next push failed */
    CHECK_INT(stmt_on_complete(&q, &m, '3'), REPLY_SWALLOW); /* the mark's */
    stmt_on_ready(&q, &m, NULL);
    CHECK_INT(q.count, 0);
    CHECK_INT(stmt_on_complete(&q, &m, '1'), REPLY_FORWARD);
    CHECK_INT(stmt_on_complete(&q, &m, '3'), REPLY_FORWARD);
    CHECK_INT(stmt_on_error(&q), 0);
    CHECK(!q.skipping_to_sync && !q.batch_failed);
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

int main(void)
{
    RUN(fingerprints_are_keyed_per_process); /* first: no key drawn yet */
    RUN(siphash_matches_the_reference_vectors);
    RUN(client_maps_count_their_statement_text);
    RUN(changes_no_record_can_follow_are_unnamed);
    RUN(statement_name_keys_are_the_first_63_bytes);
    RUN(syncing_many_parameters_costs_linear_cpu);
    RUN(idle_session_timeout_is_read_as_postgres_reads_it);
    RUN(a_release_resets_only_what_acts_while_idle);
    RUN(many_parameters_are_found_after_sets_and_removals);
    RUN(the_kept_client_encoding_follows_every_change);
    RUN(texts_that_may_change_client_encoding_are_told);
    RUN(an_unknown_server_value_is_set_again_or_reset);
    RUN(a_login_is_tried_only_with_values_no_server_accepted);
    RUN(map_put_get_replace_remove_keep_definitions_and_lru_order);
    RUN(map_grows_past_its_buckets_and_finds_every_name);
    RUN(definitions_compare_by_content);
    RUN(queue_swallows_replies_to_sluices_own_parse_and_close);
    RUN(result_types_differ_by_name_type_and_modifier_not_by_table);
    RUN(sluices_describe_gives_both_entries_its_shape_and_is_swallowed);
    RUN(a_describe_never_sent_leaves_the_statement_to_prepare_again);
    RUN(the_client_parses_parameter_types_are_kept_and_named);
    RUN(reply_that_matches_no_request_is_unexpected);
    RUN(an_error_before_a_mark_skips_the_query_after_it);
    RUN(an_error_after_the_marks_reply_is_the_querys_own);
    RUN(a_paused_queue_matches_what_it_holds_and_passes_the_rest);
    RUN(queries_with_nothing_between_share_one_mark);
    RUN(parse_skipped_after_an_error_leaves_the_name_unknown_at_ready);
    RUN(a_parse_ahead_of_a_sync_is_undecided_until_its_ready);
    RUN(drops_that_do_not_run_give_the_statements_back);
    RUN(queue_is_bounded);
    RUN(nameless_requests_in_a_row_share_an_item);
    RUN(injected_messages_have_the_wire_format);
    RUN(a_long_names_rest_starts_with_no_partial_character);
    RUN(deallocate_and_discard_are_recognised);
    RUN(a_definition_has_its_server_name);
    RUN(a_text_beyond_ascii_is_named_by_its_encoding);
    RUN(names_are_rewritten_in_place_or_their_start_sent_first);
    RUN(errors_name_the_clients_statements);
    RUN(session_level_sql_is_detected);
    RUN(a_refused_statement_is_cut_where_it_starts);
    RUN(a_refusal_is_known_in_the_servers_error);
    RUN(parameters_a_statement_may_change_are_named);
    RUN(fingerprints_of_sets_differing_in_last_bytes_differ);
    RUN(resets_to_login_values_are_named_when_last);
    RUN(transaction_scoped_and_tracked_sql_is_not_flagged);
    return CHECK_DONE();
}
