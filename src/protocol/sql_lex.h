/* sql_lex: the few rules of Postgres's lexer (scan.l) that decide where a SQL text's words and
 * statements are: blanks, comments, literals and quoted names. sluice's inspectors of client SQL
 * (session_state.c's reading of SET and the like, prepared.c's EXECUTE/DEALLOCATE reader) skip
 * through these, so that a ';' or a keyword inside one is not taken for SQL, and a quote inside one
 * (an apostrophe in "-- don't", a quote in a function body) opens nothing.
 *
 * A text ends at len or at its first NUL, whichever comes first. */
#ifndef SLUICE_SQL_LEX_H
#define SLUICE_SQL_LEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a backslash inside a literal reads. sluice reads a text as Postgres reads it by default,
 * and where the text holds a backslash that another reading takes otherwise, the caller may
 * read it again that way (the bits combine). */
enum sql_reading {
    SQL_READ_STANDARD = 0, /* standard_conforming_strings on: a backslash escapes only in E'' */
    SQL_READ_PLAIN_ESCAPES = 1, /* off (a client may set it): in a plain '...' literal too */
    /* A byte of 0x80 or more in a literal takes the next byte with it: in SJIS, BIG5, GBK, UHC
     * and GB18030 a character's second byte may be 0x5C, a backslash that escapes nothing
     * (Postgres lexes the text once it is in the server's encoding). */
    SQL_READ_MULTIBYTE = 2,
    /* With SQL_READ_MULTIBYTE, SJIS: a byte of 0xA1 to 0xDF is a character of its own (a
     * half-width katakana), and takes nothing with it. */
    SQL_READ_SJIS = 4,
    /* How sql_unicode_name_read writes an escaped character past ASCII, as the client would
     * write it in its client_encoding (Postgres decodes a U&"..." name's escapes to characters
     * of the server's encoding, where the client's own names arrive converted): by default as
     * UTF-8 (a UTF8 client, or SQL_ASCII on a UTF8 server); as its LATIN1 byte, up to U+00FF; or
     * not at all (another encoding: SQL_UNICODE_UNREAD). Other readers ignore these bits. */
    SQL_READ_ESCAPES_LATIN1 = 8,
    SQL_READ_ESCAPES_ASCII = 16,
};

/* Does ch begin a character of two bytes or more, under `reading`, whose next byte goes with
 * it whatever it is (SQL_READ_MULTIBYTE)? */
static inline bool sql_multibyte_lead(unsigned char ch, unsigned reading)
{
    return (reading & SQL_READ_MULTIBYTE) && ch >= 0x80 &&
           !((reading & SQL_READ_SJIS) && ch >= 0xa1 && ch <= 0xdf);
}

/* SQL_READ_MULTIBYTE for a client_encoding (Postgres's name, any case) whose characters' second
 * bytes may be ASCII bytes (SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB), with
 * SQL_READ_SJIS for the two SJIS; else SQL_READ_STANDARD (NULL too). */
unsigned sql_encoding_reading(const char *client_encoding);

/* Is ch one of Postgres's identifier characters (ident_cont: a '$' inside a name is part of
 * it, and so is any byte of a multibyte character)? */
bool sql_ident_char(char ch);

/* The literal ('...', E'...', $tag$...$tag$), quoted name ("...") or comment (-- to the line's
 * end, nested block comments) that starts at s[i], read as `reading` (enum sql_reading bits)
 * says: the index past it, or i when none starts there. *ended is false when the text ends
 * inside it (Postgres refuses such a text: nothing of it runs). *doubts (may be NULL) gets the
 * readings under which this literal could end elsewhere (a backslash in it). */
size_t sql_skip_lexeme(const char *s, size_t i, size_t len, unsigned reading, bool *ended,
                       unsigned *doubts);

/* The statement from `start`: *end is where it ends (a ';' or NUL outside literals, quoted
 * names and comments, or len), the text read as `reading` says. False when the text ends inside
 * one of those: no statement is there to look at (Postgres refuses such a text whole). *doubts
 * (may be NULL) gets the readings under which a literal on the way could end elsewhere. What
 * splits a simple Query into the statements Postgres runs, for each inspector of client SQL. */
bool sql_next_statement(const char *sql, size_t len, size_t start, size_t *end, unsigned reading,
                        unsigned *doubts);

/* Past the blanks and comments at s[i]. */
size_t sql_skip_space(const char *s, size_t i, size_t len);

/* Which of the words (lower case ASCII, each of two bytes or more and starting with a letter; at
 * most 32) are in s[0..len) as bytes, in any case, anywhere: inside literals, quoted names and
 * comments, and inside longer words, too ("offset" holds "set"). Bit w is words[w]'s. For tests
 * that run over every statement text: one pass, and for most bytes one test. */
uint32_t sql_words_in(const char *s, size_t len, const char *const words[], size_t n);

/* Is the word s[0..n) the temporary schema's name as an unquoted identifier reads it (pg_temp,
 * or a backend's own pg_temp_<digits>; any case)? */
bool sql_temp_schema_word(const char *s, size_t n);
/* Does the text name the temporary schema as a word anywhere (in a literal, a quoted name, a
 * list like "public, pg_temp")? What a search_path set to it makes, a plain CREATE included,
 * is temporary. A U&"..." name anywhere counts (its escapes may spell it). */
bool sql_names_temp_schema(const char *s, size_t len);
/* The quoted name s[i..past) (s[i] is its '"'), when it is a U&"..." name: what Postgres reads
 * it as, its escapes (\0070, \+000070, or another escape character after UESCAPE) decoded, into
 * out (cap bytes, NUL-terminated; an escaped character past ASCII as UTF-8, a UTF-16 surrogate
 * pair as one character, what is not an escape byte for byte). *after (may be NULL): past its
 * UESCAPE 'c' clause, if any, else past. An escape Postgres refuses (not a code point, a lone
 * surrogate) is SQL_UNICODE_UNREAD. */
enum sql_unicode_name {
    SQL_UNICODE_NONE,   /* not a U&"..." name */
    SQL_UNICODE_READ,   /* out holds it */
    SQL_UNICODE_UNREAD, /* one sluice does not decode (too long, a bad escape): may be any */
};
enum sql_unicode_name sql_unicode_name(const char *s, size_t i, size_t past, size_t len, char *out,
                                       size_t cap, size_t *after);
/* The same, the name read as `reading` says (enum sql_reading: SQL_READ_MULTIBYTE keeps a
 * character's second byte from being the escape character, SQL_READ_ESCAPES_* write escapes in
 * the client's encoding); sql_unicode_name reads it as SQL_READ_STANDARD. An escape character
 * Postgres refuses (a hex digit, '+', a quote, a blank) is SQL_UNICODE_UNREAD. */
enum sql_unicode_name sql_unicode_name_read(const char *s, size_t i, size_t past, size_t len,
                                            unsigned reading, char *out, size_t cap, size_t *after);
/* Is that U&"..." name the temporary schema's, or one sluice does not decode? */
bool sql_unicode_name_may_hide(const char *s, size_t i, size_t past, size_t len, size_t *after);

#endif
