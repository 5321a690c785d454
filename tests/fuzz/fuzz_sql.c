/* fuzz_sql: libFuzzer target for the client SQL and Parse bodies sluice looks into in
 * transaction mode: prepared_classify_query (DEALLOCATE / DISCARD ALL in a simple Query),
 * session_state_detect (LISTEN, advisory locks, WITH HOLD, temp tables, SET) and where the
 * statement using one starts (session_state_feature_start), and statement
 * definitions kept in a client's and a server's statement maps. Invariants: a DEALLOCATE names
 * a statement that fits the buffer; a feature is one of the enum's and has a name; a definition
 * equals itself and a copy; a map holds what was put until it is removed, and its count says
 * so; and the request queue's own (drive_queue). Built and run by scripts/fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "prepared.h"
#include "session_state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The request queue (s->reqs) driven by the input, one operation a byte: requests pushed as
 * transaction and session mode push them, replies in any order (a broken server's too), marks
 * joined and disarmed, a paused queue (session mode), a Query held for sluice's Parse. Invariants:
 * it never holds more than STMT_QUEUE_MAX entries; a framed Sync ends skipping_to_sync; a paused,
 * empty queue passes every ParseComplete/CloseComplete on and learns nothing from an error; a
 * Query held for sluice's Parse stays held (shape_awaited) exactly while HELD_FOR_PARSE after an
 * error or a ReadyForQuery. */
static void drive_queue(const uint8_t *data, size_t size)
{
    struct stmt_queue q = {0};
    struct stmt_map m;
    stmt_map_init(&m);
    for (size_t i = 0; i < size && i < 4096; i++) {
        switch (data[i] % 16) {
        case 0:
            (void)stmt_queue_push(&q, REQ_PARSE_CLIENT, NULL);
            break;
        case 1:
            (void)stmt_queue_push(&q, REQ_CLOSE_CLIENT, NULL);
            break;
        case 2:
            (void)stmt_queue_push(&q, REQ_SYNC, NULL);
            break;
        case 3:
            (void)stmt_queue_push_mark(&q);
            q.mark_joinable = (data[i] & 0x10) != 0;
            break;
        case 4:
            (void)stmt_queue_join_mark(&q);
            break;
        case 5:
            stmt_queue_disarm_mark(&q);
            break;
        case 6:
        case 7: {
            bool empty = q.count == 0;
            enum stmt_reply_action a = stmt_on_complete(&q, &m, data[i] % 16 == 6 ? '1' : '3');
            FUZZ_ASSERT(!(q.paused && empty) || a == REPLY_FORWARD);
            break;
        }
        case 8: {
            bool empty = q.count == 0, skipping = q.skipping_to_sync, paused = q.paused;
            uint32_t skipped = stmt_on_error(&q);
            if (paused && empty)
                FUZZ_ASSERT(skipped == 0 && q.skipping_to_sync == skipping);
            else
                FUZZ_ASSERT(q.shape_awaited == (q.held_query == HELD_FOR_PARSE));
            break;
        }
        case 9:
            stmt_on_ready(&q, &m, NULL);
            FUZZ_ASSERT(q.shape_awaited == (q.held_query == HELD_FOR_PARSE));
            break;
        case 10:
            (void)stmt_queue_push(&q, REQ_PARSE_OURS, "sluice_x");
            break;
        case 11:
            q.held_query = HELD_FOR_PARSE;
            q.shape_awaited = true;
            break;
        case 12:
            q.paused = !q.paused;
            break;
        case 13:
            stmt_queue_sync_framed(&q);
            FUZZ_ASSERT(!q.skipping_to_sync);
            break;
        case 14:
            (void)stmt_queue_push(&q, REQ_CLOSE_OURS, NULL);
            break;
        default:
            if (stmt_queue_push_describe(&q, "sluice_x", NULL, NULL) == 0)
                (void)stmt_on_description(&q, &m, NULL, 'n', NULL, 0);
            break;
        }
        FUZZ_ASSERT(q.count <= STMT_QUEUE_MAX);
    }
    stmt_queue_free(&q);
    stmt_map_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    drive_queue(data, size);
    char *sql = malloc(size + 1);
    if (!sql)
        return 0;
    memcpy(sql, data, size);
    sql[size] = '\0';

    char name[64];
    memset(name, 'x', sizeof(name));
    size_t at, span;
    enum sql_dealloc d =
        prepared_classify_query_at(sql, SQL_READ_STANDARD, name, sizeof(name), &at, &span);
    /* the name as written, which transaction mode rewrites in place, lies within the text */
    bool names_one = d == SQL_DEALLOCATE || d == SQL_EXECUTE || d == SQL_PREPARE;
    FUZZ_ASSERT(at + span <= size && (span == 0 || names_one));
    FUZZ_ASSERT(d == SQL_OTHER || d == SQL_DEALLOCATE_ALL || d == SQL_DISCARD_ALL || names_one);
    if (names_one)
        FUZZ_ASSERT(memchr(name, '\0', sizeof(name)) != NULL && name[0] != '\0');

    /* the text need not be NUL-terminated: give the raw bytes */
    struct param_touch touch;
    /* each way the client's backslashes may read (its first byte picks one) */
    unsigned reading = size > 0 ? data[0] & (SQL_READ_PLAIN_ESCAPES | SQL_READ_MULTIBYTE) : 0;
    enum session_feature f = session_state_detect((const char *)data, size, &touch, reading);
    FUZZ_ASSERT(f >= SESSION_FEATURE_NONE && f <= SESSION_FEATURE_LAST);
    FUZZ_ASSERT(session_feature_name(f) != NULL);
    /* Its first test (no word it needs) and its remembered texts (asked twice, the second
     * answer may be remembered) answer what the full read does: a miss would let state reach
     * the next client. */
    struct param_touch full, again;
    FUZZ_ASSERT(session_state_detect_fully((const char *)data, size, &full, reading) == f);
    FUZZ_ASSERT(memcmp(&full, &touch, sizeof(full)) == 0);
    FUZZ_ASSERT(session_state_detect((const char *)data, size, &again, reading) == f);
    FUZZ_ASSERT(memcmp(&again, &touch, sizeof(again)) == 0);
    if (!session_state_may_touch((const char *)data, size))
        FUZZ_ASSERT(f == SESSION_FEATURE_NONE);
    /* where a refused statement's stand-in goes: right after a ';' of the text, or at its start */
    size_t start = session_state_feature_start((const char *)data, size);
    FUZZ_ASSERT(start <= size && (start == 0 || data[start - 1] == ';'));
    /* a text SETs up to PARAM_TOUCH_SET_NAMES names sluice follows; it resets up to
     * PARAM_TOUCH_NAMES by name (past either, it counts as touching or resetting them all) */
    FUZZ_ASSERT(touch.n >= 0 && touch.n <= PARAM_TOUCH_SET_NAMES);
    for (int i = 0; i < touch.n; i++)
        FUZZ_ASSERT(memchr(touch.names[i], '\0', sizeof(touch.names[i])) != NULL &&
                    touch.names[i][0] != '\0');
    FUZZ_ASSERT(touch.reset.n >= 0 && touch.reset.n <= PARAM_TOUCH_NAMES);
    for (int i = 0; i < touch.reset.n; i++)
        FUZZ_ASSERT(memchr(touch.reset.names[i], '\0', sizeof(touch.reset.names[i])) != NULL);

    struct stmt_def *def = stmt_def_new(data, (uint32_t)size, NULL);
    struct stmt_def *copy = stmt_def_new(data, (uint32_t)size, NULL);
    if (def && copy) {
        FUZZ_ASSERT(stmt_def_equal(def, def));
        FUZZ_ASSERT(stmt_def_equal(def, copy));
        /* names cut from the input at NULs: put, look up, count, remove */
        struct stmt_map m;
        stmt_map_init(&m);
        int distinct = 0;
        for (size_t i = 0; i < size && distinct < 64;) {
            const char *n = sql + i;
            size_t nl = strlen(n);
            if (nl == 0) {
                i++;
                continue;
            }
            bool had = stmt_map_get(&m, n) != NULL;
            FUZZ_ASSERT(stmt_map_put(&m, n, (i & 1) ? def : copy) != NULL);
            if (!had)
                distinct++;
            FUZZ_ASSERT(stmt_map_get(&m, n) != NULL);
            FUZZ_ASSERT(stmt_map_count(&m) == distinct);
            i += nl + 1;
        }
        if (size > 0 && sql[0]) {
            bool had = stmt_map_get(&m, sql) != NULL;
            stmt_map_remove(&m, sql);
            FUZZ_ASSERT(stmt_map_get(&m, sql) == NULL);
            FUZZ_ASSERT(stmt_map_count(&m) == distinct - (had ? 1 : 0));
        }
        stmt_map_free(&m);
    }
    if (def)
        stmt_def_unref(def);
    if (copy)
        stmt_def_unref(copy);
    free(sql);
    return 0;
}
