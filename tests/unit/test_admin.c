/* test_admin: the admin console's command parser (admin_parse_command) and the HTTP request-head
 * parser (http_parse_request): every command form, case and quoting, and the malformed inputs
 * that must come back as errors with a sentence, never a crash. */
#include <stdlib.h>
#include <string.h>

#include "admin_command.h"
#include "check.h"
#include "conn_id.h"
#include "http_request.h"
#include "utf8.h"

static struct admin_command cmd;

static enum admin_verb parse(const char *sql)
{
    return admin_parse_command(sql, &cmd);
}

static void show_subjects_parse_case_insensitively_with_optional_semicolon(void)
{
    CHECK_INT(parse("SHOW POOLS"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_POOLS);
    CHECK_INT(parse("show clients;"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_CLIENTS);
    CHECK_INT(parse("  Show\tServers ; ; "), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_SERVERS);
    CHECK_INT(parse("SHOW stats_totals"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_STATS_TOTALS);
    CHECK_INT(parse("SHOW STATS_AVERAGES"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_STATS_AVERAGES);
    CHECK_INT(parse("SHOW STATS"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_STATS);
    const struct {
        const char *sql;
        enum admin_show show;
    } all[] = {
        {"SHOW HELP", ADMIN_SHOW_HELP},       {"SHOW DATABASES", ADMIN_SHOW_DATABASES},
        {"SHOW USERS", ADMIN_SHOW_USERS},     {"SHOW CONFIG", ADMIN_SHOW_CONFIG},
        {"SHOW LISTS", ADMIN_SHOW_LISTS},     {"SHOW VERSION", ADMIN_SHOW_VERSION},
        {"SHOW BUDGETS", ADMIN_SHOW_BUDGETS}, {"SHOW SOCKETS", ADMIN_SHOW_SOCKETS},
        {"SHOW ACTIVE_SOCKETS", ADMIN_SHOW_ACTIVE_SOCKETS},
        {"SHOW PEERS", ADMIN_SHOW_PEERS},     {"SHOW PEER_POOLS", ADMIN_SHOW_PEER_POOLS},
        {"SHOW MEM", ADMIN_SHOW_MEM},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        CHECK_INT(parse(all[i].sql), ADMIN_SHOW);
        CHECK_INT(cmd.show, all[i].show);
        CHECK_STR(admin_show_name(all[i].show), all[i].sql + 5);
    }
}

static void unknown_show_subject_is_undefined_object_naming_it(void)
{
    CHECK_INT(parse("SHOW NOPE"), ADMIN_INVALID);
    CHECK_INT(cmd.error, ADMIN_ERR_UNKNOWN_OBJECT);
    CHECK(strstr(cmd.message, "NOPE") != NULL);
    CHECK_INT(parse("SHOW"), ADMIN_INVALID);
    CHECK_INT(cmd.error, ADMIN_ERR_SYNTAX);
    CHECK_INT(parse("SHOW POOLS extra"), ADMIN_INVALID);
    CHECK_INT(cmd.error, ADMIN_ERR_SYNTAX);
    CHECK(strstr(cmd.message, "extra") != NULL);
}

static void database_commands_take_an_optional_name_kept_as_written(void)
{
    CHECK_INT(parse("PAUSE"), ADMIN_PAUSE);
    CHECK(!cmd.has_name);
    CHECK_INT(parse("pause appdb"), ADMIN_PAUSE);
    CHECK(cmd.has_name);
    CHECK_STR(cmd.name, "appdb");
    CHECK_INT(parse("RESUME AppDb;"), ADMIN_RESUME);
    CHECK_STR(cmd.name, "AppDb");
    CHECK_INT(parse("RECONNECT \"odd \"\"name\"\"\""), ADMIN_RECONNECT);
    CHECK_STR(cmd.name, "odd \"name\"");
    CHECK_INT(parse("WAIT_CLOSE"), ADMIN_WAIT_CLOSE);
    CHECK(!cmd.has_name);
    CHECK_INT(parse("wait_close db1"), ADMIN_WAIT_CLOSE);
    CHECK_STR(cmd.name, "db1");
    CHECK_INT(parse("KILL appdb"), ADMIN_KILL);
    CHECK_STR(cmd.name, "appdb");
    CHECK_INT(parse("KILL"), ADMIN_INVALID); /* KILL needs its database */
    CHECK(strstr(cmd.message, "missing") != NULL);
    CHECK_INT(parse("PAUSE a b"), ADMIN_INVALID);
    CHECK_INT(parse("PAUSE \"\""), ADMIN_INVALID);
    CHECK_INT(parse("PAUSE 'appdb'"), ADMIN_INVALID); /* a string literal is not a name */
}

static void kill_client_takes_a_decimal_id(void)
{
    CHECK_INT(parse("KILL_CLIENT 42"), ADMIN_KILL_CLIENT);
    CHECK_INT(cmd.client_id, 42);
    CHECK_INT(parse("kill_client 9999999999999999999"), ADMIN_KILL_CLIENT);
    CHECK(cmd.client_id == 9999999999999999999ull);
    CHECK_INT(parse("KILL_CLIENT 99999999999999999999"), ADMIN_INVALID); /* 20 digits */
    CHECK_INT(parse("KILL_CLIENT -1"), ADMIN_INVALID);
    CHECK_INT(parse("KILL_CLIENT 0x10"), ADMIN_INVALID);
    CHECK_INT(parse("KILL_CLIENT"), ADMIN_INVALID);
}

/* An id as logs and SHOW's ptr column write it: "<worker>:<n>", plain "<n>" on worker 0; the
 * number of SHOW's id column names the same client. */
static void kill_client_takes_an_id_as_logs_write_it(void)
{
    char text[CONN_ID_TEXT_LEN];
    CHECK_STR(conn_id_text(7, text), "7");
    CHECK_STR(conn_id_text(((uint64_t)1 << 56) + 7, text), "1:7");
    CHECK_STR(conn_id_text(((uint64_t)63 << 56) + 123456, text), "63:123456");
    CHECK_INT(parse("KILL_CLIENT 1:7"), ADMIN_KILL_CLIENT);
    CHECK(cmd.client_id == ((uint64_t)1 << 56) + 7);
    CHECK_INT(parse("KILL_CLIENT 0:7"), ADMIN_KILL_CLIENT);
    CHECK_INT(cmd.client_id, 7);
    CHECK_INT(parse("KILL_CLIENT 255:72057594037927935"), ADMIN_KILL_CLIENT);
    CHECK(cmd.client_id == UINT64_MAX);
    CHECK_INT(parse("KILL_CLIENT 256:1"), ADMIN_INVALID);               /* no such worker byte */
    CHECK_INT(parse("KILL_CLIENT 1:72057594037927936"), ADMIN_INVALID); /* n over 56 bits */
    CHECK_INT(parse("KILL_CLIENT 1:"), ADMIN_INVALID);
    CHECK_INT(parse("KILL_CLIENT :7"), ADMIN_INVALID);
    CHECK_INT(parse("KILL_CLIENT 1:2:3"), ADMIN_INVALID);
    CHECK_INT(parse("KILL_CLIENT C-1:7"), ADMIN_INVALID);
}

static void disable_and_enable_need_a_database_suspend_takes_none(void)
{
    CHECK_INT(parse("DISABLE appdb"), ADMIN_DISABLE);
    CHECK_STR(cmd.name, "appdb");
    CHECK_INT(parse("enable \"App Db\";"), ADMIN_ENABLE);
    CHECK_STR(cmd.name, "App Db");
    CHECK_STR(admin_verb_tag(ADMIN_DISABLE), "DISABLE");
    CHECK_INT(parse("DISABLE"), ADMIN_INVALID);
    CHECK(strstr(cmd.message, "missing") != NULL);
    CHECK_INT(parse("ENABLE"), ADMIN_INVALID);
    CHECK_INT(parse("SUSPEND"), ADMIN_SUSPEND);
    CHECK_INT(parse("SUSPEND appdb"), ADMIN_INVALID);
    CHECK(!admin_verb_read_only(ADMIN_DISABLE) && !admin_verb_read_only(ADMIN_SUSPEND));
}

static void reload_and_shutdown_forms(void)
{
    CHECK_INT(parse("RELOAD"), ADMIN_RELOAD);
    CHECK_INT(parse("reload;"), ADMIN_RELOAD);
    CHECK_INT(parse("RELOAD now"), ADMIN_INVALID);
    CHECK_INT(parse("SHUTDOWN"), ADMIN_SHUTDOWN);
    CHECK_INT(cmd.shutdown, ADMIN_SHUTDOWN_NOW);
    CHECK_INT(parse("SHUTDOWN WAIT_FOR_SERVERS"), ADMIN_SHUTDOWN);
    CHECK_INT(cmd.shutdown, ADMIN_SHUTDOWN_WAIT_FOR_SERVERS);
    CHECK_INT(parse("shutdown wait_for_clients"), ADMIN_SHUTDOWN);
    CHECK_INT(cmd.shutdown, ADMIN_SHUTDOWN_WAIT_FOR_CLIENTS);
    CHECK_INT(parse("SHUTDOWN later"), ADMIN_INVALID);
}

static void set_accepts_equals_or_to_and_quoted_values(void)
{
    CHECK_INT(parse("SET default_pool_size = 7"), ADMIN_SET);
    CHECK_STR(cmd.name, "default_pool_size");
    CHECK_STR(cmd.value, "7");
    CHECK_INT(parse("set default_pool_size=7;"), ADMIN_SET);
    CHECK_STR(cmd.value, "7");
    CHECK_INT(parse("SET max_db_connections TO 80%"), ADMIN_SET);
    CHECK_STR(cmd.value, "80%");
    CHECK_INT(parse("SET server_reset_query = 'DISCARD ALL'"), ADMIN_SET);
    CHECK_STR(cmd.value, "DISCARD ALL");
    CHECK_INT(parse("SET admin_users = 'it''s'"), ADMIN_SET);
    CHECK_STR(cmd.value, "it's");
    CHECK_INT(parse("SET log_level = ''"), ADMIN_SET);
    CHECK_STR(cmd.value, "");
    CHECK_INT(parse("SET x = DISCARD ALL"), ADMIN_INVALID); /* unquoted value with a space */
    CHECK_INT(parse("SET x"), ADMIN_INVALID);
    CHECK_INT(parse("SET = 1"), ADMIN_INVALID);
    CHECK_INT(parse("SET x : 1"), ADMIN_INVALID);
    char big[ADMIN_VALUE_MAX + 32];
    strcpy(big, "SET x = '");
    size_t n = strlen(big);
    memset(big + n, 'a', ADMIN_VALUE_MAX);
    strcpy(big + n + ADMIN_VALUE_MAX, "'");
    CHECK_INT(parse(big), ADMIN_INVALID);
    CHECK(strstr(cmd.message, "too long") != NULL);
}

static void empty_queries_and_comments(void)
{
    CHECK_INT(parse(""), ADMIN_EMPTY);
    CHECK_INT(parse("   ;;  "), ADMIN_EMPTY);
    CHECK_INT(parse("-- just a comment"), ADMIN_EMPTY);
    CHECK_INT(parse("/* c */ SHOW /* inner */ POOLS -- trailing"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_POOLS);
    CHECK_INT(parse("/* unterminated"), ADMIN_EMPTY);
    /* as in Postgres: a carriage return ends a -- comment, and comments nest */
    CHECK_INT(parse("-- c\rSHOW POOLS"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_POOLS);
    CHECK_INT(parse("/* a /* b */ SHOW CLIENTS */ SHOW POOLS"), ADMIN_SHOW);
    CHECK_INT(cmd.show, ADMIN_SHOW_POOLS);
}

static void malformed_queries_are_syntax_errors_with_a_message(void)
{
    const char *bad[] = {
        "SELECT 1",
        "SHOW POOLS; SHOW CLIENTS",
        "PAUSE 'unterminated",
        "PAUSE \"unterminated",
        "SHOW\x01POOLS",
        "= = =",
        "'SHOW' POOLS",
        "SHOW POOLS a b c d e f g h",
        "KILL_CLIENTS 1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(parse(bad[i]), ADMIN_INVALID);
        CHECK_INT(cmd.error, ADMIN_ERR_SYNTAX);
        CHECK(cmd.message[0] != '\0');
    }
    CHECK_INT(parse(NULL), ADMIN_INVALID);
    char *huge = malloc(ADMIN_QUERY_MAX + 2);
    memset(huge, ' ', ADMIN_QUERY_MAX + 1);
    huge[ADMIN_QUERY_MAX + 1] = '\0';
    CHECK_INT(parse(huge), ADMIN_INVALID);
    free(huge);
}

static void error_messages_show_unprintable_bytes_as_question_marks(void)
{
    CHECK_INT(parse("FOO\x7f"), ADMIN_INVALID);
    CHECK(strchr(cmd.message, 0x7f) == NULL);
    CHECK_INT(parse("PAUSE a\tb"), ADMIN_INVALID);
    char long_word[200];
    memset(long_word, 'w', sizeof(long_word) - 1);
    long_word[sizeof(long_word) - 1] = '\0';
    CHECK_INT(parse(long_word), ADMIN_INVALID);
    CHECK(strlen(cmd.message) < sizeof(cmd.message));
    CHECK(strstr(cmd.message, "...") != NULL);
}

static void only_show_is_read_only(void)
{
    CHECK(admin_verb_read_only(ADMIN_SHOW));
    CHECK(!admin_verb_read_only(ADMIN_PAUSE));
    CHECK(!admin_verb_read_only(ADMIN_SET));
    CHECK(!admin_verb_read_only(ADMIN_RELOAD));
    CHECK_STR(admin_verb_tag(ADMIN_WAIT_CLOSE), "WAIT_CLOSE");
    CHECK_STR(admin_verb_tag(ADMIN_KILL_CLIENT), "KILL_CLIENT");
}

/* ---- HTTP request heads ---- */

static struct http_request req;

static enum http_parse hparse(const char *s)
{
    return http_parse_request(s, strlen(s), &req);
}

static void http_get_with_headers_parses_method_and_path(void)
{
    const char *r = "GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\n\r\n";
    CHECK_INT(hparse(r), HTTP_PARSE_OK);
    CHECK_INT(req.method, HTTP_METHOD_GET);
    CHECK_STR(req.path, "/health");
    CHECK_INT(req.version_minor, 1);
    CHECK_INT(req.head_len, strlen(r));
    CHECK_INT(hparse("HEAD /metrics?x=1#f HTTP/1.0\n\n"), HTTP_PARSE_OK);
    CHECK_INT(req.method, HTTP_METHOD_HEAD);
    CHECK_STR(req.path, "/metrics");
    CHECK_INT(req.version_minor, 0);
    CHECK_INT(hparse("POST /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), HTTP_PARSE_OK);
    CHECK_INT(req.method, HTTP_METHOD_OTHER);
    CHECK_INT(hparse("\r\nGET / HTTP/1.1\r\n\r\n"), HTTP_PARSE_OK);
}

static void http_partial_heads_are_incomplete_at_every_split(void)
{
    const char *r = "GET /metrics HTTP/1.1\r\nHost: localhost:9000\r\nAccept: */*\r\n\r\n";
    size_t n = strlen(r);
    for (size_t i = 0; i < n; i++)
        CHECK_INT(http_parse_request(r, i, &req), HTTP_PARSE_INCOMPLETE);
    CHECK_INT(http_parse_request(r, n, &req), HTTP_PARSE_OK);
}

static void http_malformed_heads_are_bad(void)
{
    const char *bad[] = {
        "GET\r\n\r\n",
        "GET /x\r\n\r\n",
        "GET x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/2.0\r\n\r\n",
        "GET /x HTTP/1.1 extra\r\n\r\n",
        "GET  /x HTTP/1.1\r\n\r\n",
        "G(T /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET /x HTTP/1.1\r\n folded: yes\r\n\r\n",
        "GET /x HTTP/1.1\r\nBad\x01: v\r\n\r\n",
        "GET /x HTTP/1.1\r\nH: a\rb\r\n\r\n",
        "\x16\x03\x01\x02\x00", /* a TLS ClientHello */
        "this is not http at all and never ends",
        "GETTTTTTTTTTTTTTTTTTTTTT",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (hparse(bad[i]) != HTTP_PARSE_BAD)
            fprintf(stderr, "  not bad: %s\n", bad[i]);
        CHECK_INT(hparse(bad[i]), HTTP_PARSE_BAD);
    }
}

static void http_head_without_end_is_too_large_at_the_limit(void)
{
    char *big = malloc(HTTP_MAX_HEAD + 10);
    strcpy(big, "GET /health HTTP/1.1\r\n");
    size_t n = strlen(big);
    while (n + 12 < HTTP_MAX_HEAD + 10) {
        memcpy(big + n, "X-Pad: abc\r\n", 12);
        n += 12;
    }
    CHECK_INT(http_parse_request(big, HTTP_MAX_HEAD - 1, &req), HTTP_PARSE_INCOMPLETE);
    CHECK_INT(http_parse_request(big, HTTP_MAX_HEAD, &req), HTTP_PARSE_TOO_LARGE);
    CHECK_INT(http_parse_request(big, n, &req), HTTP_PARSE_TOO_LARGE);
    /* a long target is accepted with an empty path (404 later) */
    char *longpath = malloc(2 * HTTP_MAX_PATH + 64);
    strcpy(longpath, "GET /");
    memset(longpath + 5, 'p', 2 * HTTP_MAX_PATH);
    strcpy(longpath + 5 + 2 * HTTP_MAX_PATH, " HTTP/1.1\r\n\r\n");
    CHECK_INT(hparse(longpath), HTTP_PARSE_OK);
    CHECK_STR(req.path, "");
    free(longpath);
    free(big);
}

static void utf8_sequences_are_checked_strictly(void)
{
    CHECK_INT(utf8_seq_len((const unsigned char *)"a"), 1);
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xc3\xa9"), 2);         /* e acute */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xe2\x82\xac"), 3);     /* euro sign */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xf0\x9f\x98\x80"), 4); /* emoji */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xff"), 0);
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xc0\xaf"), 0);         /* overlong '/' */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xed\xa0\x80"), 0);     /* surrogate */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xf4\x90\x80\x80"), 0); /* > U+10FFFF */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\xe2\x82"), 0);         /* cut short */
    CHECK_INT(utf8_seq_len((const unsigned char *)"\x80"), 0);
}

int main(void)
{
    RUN(show_subjects_parse_case_insensitively_with_optional_semicolon);
    RUN(unknown_show_subject_is_undefined_object_naming_it);
    RUN(database_commands_take_an_optional_name_kept_as_written);
    RUN(kill_client_takes_a_decimal_id);
    RUN(kill_client_takes_an_id_as_logs_write_it);
    RUN(disable_and_enable_need_a_database_suspend_takes_none);
    RUN(reload_and_shutdown_forms);
    RUN(set_accepts_equals_or_to_and_quoted_values);
    RUN(empty_queries_and_comments);
    RUN(malformed_queries_are_syntax_errors_with_a_message);
    RUN(error_messages_show_unprintable_bytes_as_question_marks);
    RUN(only_show_is_read_only);
    RUN(http_get_with_headers_parses_method_and_path);
    RUN(http_partial_heads_are_incomplete_at_every_split);
    RUN(http_malformed_heads_are_bad);
    RUN(http_head_without_end_is_too_large_at_the_limit);
    RUN(utf8_sequences_are_checked_strictly);
    return CHECK_DONE();
}
