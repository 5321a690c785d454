/* test_sql_lex: where Postgres's lexer ends a literal, quoted name or comment, and the texts
 * that end inside one. Each text is copied into an exact-size heap block, without its NUL where
 * the length bounds it, so ASan catches a read past what a caller handed over. */
#include "sql_lex.h"

#include "check.h"

#include <stdlib.h>
#include <string.h>

/* sql_skip_lexeme on a copy of text (no NUL) from i: the index past the lexeme, ended. */
static unsigned last_doubts;

static size_t skip(const char *text, size_t i, unsigned bs, bool *ended)
{
    size_t n = strlen(text);
    char *copy = malloc(n ? n : 1);
    if (!copy)
        exit(2);
    memcpy(copy, text, n);
    last_doubts = 0;
    size_t past = sql_skip_lexeme(copy, i, n, bs, ended, &last_doubts);
    free(copy);
    return past;
}

/* sql_unicode_name of the quoted name at text[i] (an exact-size copy, as skip's): the kind, the
 * decoded name in out, and the text after it (past a UESCAPE clause) in *after_text. */
static enum sql_unicode_name unicode_read(const char *text, size_t i, unsigned reading, char *out,
                                          size_t cap, const char **after_text)
{
    size_t n = strlen(text);
    char *copy = malloc(n ? n : 1);
    if (!copy)
        exit(2);
    memcpy(copy, text, n);
    bool ended;
    size_t past = sql_skip_lexeme(copy, i, n, SQL_READ_STANDARD, &ended, NULL), after;
    enum sql_unicode_name k =
        reading == SQL_READ_STANDARD
            ? sql_unicode_name(copy, i, past, n, out, cap, &after)
            : sql_unicode_name_read(copy, i, past, n, reading, out, cap, &after);
    free(copy);
    *after_text = text + after;
    return k;
}

static enum sql_unicode_name unicode(const char *text, size_t i, char *out, size_t cap,
                                     const char **after_text)
{
    return unicode_read(text, i, SQL_READ_STANDARD, out, cap, after_text);
}

/* The rest of text after the lexeme at i, with the setting's reading, as a string. */
static const char *rest(const char *text, size_t i, unsigned bs)
{
    bool ended;
    return text + skip(text, i, bs, &ended);
}

static void ends_at(const char *text, size_t i, const char *after)
{
    bool ended = false;
    size_t past = skip(text, i, SQL_READ_STANDARD, &ended);
    CHECK(ended);
    CHECK_STR(text + past, after);
}

static void never_ends(const char *text, size_t i, unsigned bs)
{
    bool ended = true;
    size_t past = skip(text, i, bs, &ended);
    CHECK(!ended);
    CHECK_INT(past, strlen(text));
}

int main(void)
{
    /* plain literals: a doubled quote is inside; a backslash is itself unless the setting is off */
    ends_at("'it''s'; SET x = 1", 0, "; SET x = 1");
    ends_at("'a\\'; SET x = 1", 0, "; SET x = 1");
    CHECK_STR(rest("'\\''; SET x = 1", 0, SQL_READ_PLAIN_ESCAPES), "; SET x = 1");
    never_ends("'\\''; SET x = 1", 0, SQL_READ_STANDARD);
    /* E'...' escapes whatever the setting; a name ending in e does not make one */
    ends_at("E'\\''; SET x = 1", 1, "; SET x = 1");
    ends_at("e'\\\\'; SET x = 1", 1, "; SET x = 1");
    ends_at("SELECT name'\\'; SET x = 1", 11, "; SET x = 1");
    never_ends("E'\\", 1, SQL_READ_STANDARD);
    /* the readings a backslash puts in doubt */
    ends_at("'a\\b'", 0, "");
    CHECK_INT(last_doubts, SQL_READ_PLAIN_ESCAPES);
    ends_at("E'a\\b'", 1, "");
    CHECK_INT(last_doubts, 0);
    ends_at("'ab'", 0, "");
    CHECK_INT(last_doubts, 0);
    /* SJIS: 0x83 0x5C is one character, its second byte no escape (Postgres lexes it in UTF-8) */
    CHECK_STR(rest("E'\x83\\'; SET x", 1, SQL_READ_MULTIBYTE), "; SET x");
    never_ends("E'\x83\\'; SET x", 1, SQL_READ_STANDARD);
    CHECK_INT(last_doubts, SQL_READ_MULTIBYTE);
    CHECK_STR(rest("'\x83\\'; SET x", 0, SQL_READ_PLAIN_ESCAPES | SQL_READ_MULTIBYTE), "; SET x");
    /* SJIS half-width katakana (0xB1) is one byte: the backslashes after it are an escape */
    CHECK_STR(rest("E'\xb1\\\\'; SET x", 1, SQL_READ_MULTIBYTE | SQL_READ_SJIS), "; SET x");
    CHECK_INT(sql_encoding_reading("sjis"), SQL_READ_MULTIBYTE | SQL_READ_SJIS);
    CHECK_INT(sql_encoding_reading("BIG5"), SQL_READ_MULTIBYTE);
    CHECK_INT(sql_encoding_reading("UTF8"), SQL_READ_STANDARD);
    /* quoted names */
    ends_at("\"it's\" FROM t", 0, " FROM t");
    ends_at("\"a\"\"b\";", 0, ";");
    /* comments: to the line's end, and block comments nest */
    ends_at("-- don't\nSET x = 1", 0, "\nSET x = 1");
    ends_at("-- to the end", 0, "");
    ends_at("-- a CR alone ends it too (scan.l)\rSET x = 1", 0, "\rSET x = 1");
    ends_at("/* a /* b ' */ c */; SET x", 0, "; SET x");
    never_ends("/* a /* b */", 0, SQL_READ_STANDARD);
    never_ends("/*", 0, SQL_READ_STANDARD);
    /* dollar quotes: $$ and $tag$, not $1, not a '$' inside a name */
    ends_at("$$it's$$; SET x", 0, "; SET x");
    ends_at("$body$ $$ it's $body$; SET x", 0, "; SET x");
    ends_at("$1; SET x", 0, "$1; SET x");
    ends_at("a$b$ c", 1, "$b$ c");
    never_ends("$t$ it's $x$", 0, SQL_READ_STANDARD);
    /* nothing starts at a plain character */
    ends_at("SET x", 0, "SET x");
    /* a NUL ends the text before len */
    {
        const char text[] = "'abc\0'; SET x";
        bool ended = true;
        size_t past = sql_skip_lexeme(text, 0, sizeof text - 1, SQL_READ_STANDARD, &ended, NULL);
        CHECK(!ended);
        CHECK_INT(past, 4);
        CHECK_INT(sql_skip_space("  /* c */ -- d\n x", 0, (size_t)-1), 16);
    }
    /* blanks and comments before a word */
    {
        const char *t = " \n/* a /* ' */ */ -- b\n\tSET";
        CHECK_STR(t + sql_skip_space(t, 0, strlen(t)), "SET");
    }
    /* the temporary schema's name, as a word */
    CHECK(sql_temp_schema_word("pg_temp", 7));
    CHECK(sql_temp_schema_word("PG_Temp_12", 10));
    CHECK(!sql_temp_schema_word("pg_temp_", 8));
    CHECK(!sql_temp_schema_word("pg_temp_1a", 10));
    CHECK(!sql_temp_schema_word("pg_temporary", 12));
    CHECK(!sql_temp_schema_word("pg_tem", 6));
    CHECK(sql_names_temp_schema("public, pg_temp", 15));
    CHECK(sql_names_temp_schema("= '\"pg_temp_3\"'", 16));
    CHECK(sql_names_temp_schema("TO PG_TEMP", 10));
    CHECK(!sql_names_temp_schema("TO pg_temporary, my_pg_temp, pg_temp$x", 38));
    CHECK(!sql_names_temp_schema("x pg_temp", 5)); /* past len */
    CHECK(!sql_names_temp_schema("x\0pg_temp", 9)); /* past a NUL */
    CHECK(sql_names_temp_schema("TO U&\"x\"", 9));  /* a U& name may spell it */
    {
        /* words anywhere, any case, inside others; bit per word; not past len */
        static const char *const words[] = {"set", "u&", "listen"};
        CHECK_INT(sql_words_in("SELECT 1 OFFSET 2", 17, words, 3), 1);
        CHECK_INT(sql_words_in("select U&\"x\" /* UnListen */", 27, words, 3), 2 | 4);
        CHECK_INT(sql_words_in("SELECT aid FROM t", 17, words, 3), 0);
        CHECK_INT(sql_words_in("xSe", 3, words, 3), 0);    /* a word cut by len */
        CHECK_INT(sql_words_in("x\0seT", 5, words, 3), 1); /* past a NUL too */
        CHECK_INT(sql_words_in("S\xc5" "T \xd3" "ET", 7, words, 3), 0); /* only ASCII letters fold */
    }
    /* U&"..." names as Postgres decodes them */
    {
        char name[32];
        const char *after;
        CHECK_INT(unicode("U&\"pg\\005ftemp\".t", 2, name, sizeof name, &after), SQL_UNICODE_READ);
        CHECK_STR(name, "pg_temp");
        CHECK_STR(after, ".t");
        CHECK_INT(unicode("u&\"set\\+00005fconfig\"(", 2, name, sizeof name, &after),
                  SQL_UNICODE_READ);
        CHECK_STR(name, "set_config");
        CHECK_INT(unicode("U&\"a!0062\\\"\"c!!\" UESCAPE '!' (", 2, name, sizeof name, &after),
                  SQL_UNICODE_READ);
        CHECK_STR(name, "ab\\\"c!");
        CHECK_STR(after, " (");
        CHECK_INT(unicode("U&\"\\00e9\"", 2, name, sizeof name, &after), SQL_UNICODE_READ);
        CHECK_STR(name, "\xc3\xa9"); /* past ASCII: UTF-8 */
        CHECK_INT(unicode("U&\"\\+01f600\\d83d\\de00!\"", 2, name, sizeof name, &after),
                  SQL_UNICODE_READ);
        CHECK_STR(name, "\xf0\x9f\x98\x80\xf0\x9f\x98\x80!"); /* a surrogate pair: one */
        CHECK_INT(unicode("U&\"\\20ac\xc3\xa9\"", 2, name, sizeof name, &after), SQL_UNICODE_READ);
        CHECK_STR(name, "\xe2\x82\xac\xc3\xa9"); /* bytes as written stay */
        CHECK_INT(unicode("U&\"\\d83d\"", 2, name, sizeof name, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"\\de00\"", 2, name, sizeof name, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"\\d83dx\"", 2, name, sizeof name, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"\\0000\"", 2, name, sizeof name, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"\\+110000\"", 2, name, sizeof name, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"\\20ac\"", 2, name, 3, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"\\00\"", 2, name, sizeof name, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"x\" UESCAPE ''''", 2, name, sizeof name, &after),
                  SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"abcdef\"", 2, name, 4, &after), SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("XU&\"pg_temp\"", 3, name, sizeof name, &after), SQL_UNICODE_NONE);
        CHECK_INT(unicode("\"pg_temp\"", 0, name, sizeof name, &after), SQL_UNICODE_NONE);
        CHECK_INT(unicode("U&\"x\" UESCAPE", 2, name, sizeof name, &after), SQL_UNICODE_READ);
        /* an escape character Postgres refuses (check_uescapechar): left to the server */
        CHECK_INT(unicode("U&\"a0061\" UESCAPE 'a'", 2, name, sizeof name, &after),
                  SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"+0061\" UESCAPE '+'", 2, name, sizeof name, &after),
                  SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\" 0061\" UESCAPE ' '", 2, name, sizeof name, &after),
                  SQL_UNICODE_UNREAD);
        CHECK_INT(unicode("U&\"!0061\" UESCAPE E'!';", 2, name, sizeof name, &after),
                  SQL_UNICODE_READ);
        CHECK_STR(name, "a");
        CHECK_STR(after, ";");
        /* escapes as the client's encoding writes them */
        CHECK_INT(unicode_read("U&\"x\\00e9\xe9\"", 2, SQL_READ_ESCAPES_LATIN1, name, sizeof name,
                               &after),
                  SQL_UNICODE_READ);
        CHECK_STR(name, "x\xe9\xe9");
        CHECK_INT(
            unicode_read("U&\"\\20ac\"", 2, SQL_READ_ESCAPES_LATIN1, name, sizeof name, &after),
            SQL_UNICODE_UNREAD);
        CHECK_INT(
            unicode_read("U&\"\\00e9\"", 2, SQL_READ_ESCAPES_ASCII, name, sizeof name, &after),
            SQL_UNICODE_UNREAD);
        CHECK_INT(
            unicode_read("U&\"\\0061\"", 2, SQL_READ_ESCAPES_ASCII, name, sizeof name, &after),
            SQL_UNICODE_READ);
        CHECK_STR(name, "a");
        /* SJIS: a character's second byte 0x5C is not the escape character */
        CHECK_INT(unicode_read("U&\"\x95\\0061\"", 2, SQL_READ_MULTIBYTE | SQL_READ_SJIS, name,
                               sizeof name, &after),
                  SQL_UNICODE_READ);
        CHECK_STR(name, "\x95\\0061");
    }
    return CHECK_DONE();
}
