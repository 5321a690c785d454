/* sql_lex: Postgres's lexical rules for blanks, comments, literals and quoted names (see
 * sql_lex.h). */
#include "sql_lex.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

/* The text's end: len, or a NUL before it. */
static bool at_end(const char *s, size_t i, size_t len)
{
    return i >= len || s[i] == '\0';
}

bool sql_ident_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '_' || ch == '$' || (unsigned char)ch >= 0x80;
}

static size_t skip_block_comment(const char *s, size_t i, size_t len, bool *ended)
{
    int depth = 0; /* block comments nest */
    while (!at_end(s, i, len) && !at_end(s, i + 1, len)) {
        if (s[i] == '/' && s[i + 1] == '*') {
            depth++;
            i += 2;
        } else if (s[i] == '*' && s[i + 1] == '/') {
            i += 2;
            if (--depth == 0)
                return i;
        } else {
            i++;
        }
    }
    *ended = false;
    return at_end(s, i, len) ? i : i + 1;
}

/* A '...' literal (escapes: a backslash escapes) or a "..." name at s[i]. */
static size_t skip_quoted(const char *s, size_t i, size_t len, bool escapes, unsigned reading,
                          bool *ended)
{
    char quote = s[i];
    bool multibyte = quote == '\'' && (reading & SQL_READ_MULTIBYTE);
    size_t j = i + 1;
    for (; !at_end(s, j, len); j++) {
        if ((escapes && s[j] == '\\') ||
            (multibyte && sql_multibyte_lead((unsigned char)s[j], reading))) {
            if (at_end(s, j + 1, len))
                break;
            j++;
            continue;
        }
        if (s[j] != quote)
            continue;
        if (!at_end(s, j + 1, len) && s[j + 1] == quote) {
            j++; /* a doubled quote is one quote inside */
            continue;
        }
        return j + 1;
    }
    *ended = false;
    return at_end(s, j, len) ? j : j + 1;
}

/* The readings under which the '...' literal s[i..past) could end elsewhere. */
static unsigned literal_doubts(const char *s, size_t i, size_t past, bool e_prefix)
{
    unsigned doubts = 0;
    for (size_t j = i + 1; j < past; j++) {
        if (s[j] != '\\')
            continue;
        if (!e_prefix)
            doubts |= SQL_READ_PLAIN_ESCAPES;
        if ((unsigned char)s[j - 1] >= 0x80)
            doubts |= SQL_READ_MULTIBYTE;
    }
    return doubts;
}

/* $$...$$ or $tag$...$tag$ at s[i] (s[i] is '$' and no name goes on before it). */
static size_t skip_dollar_quoted(const char *s, size_t i, size_t len, bool *ended)
{
    size_t j = i + 1;
    if (!at_end(s, j, len) && isdigit((unsigned char)s[j]))
        return i; /* $1: a parameter, not a tag */
    while (!at_end(s, j, len) && s[j] != '$' && sql_ident_char(s[j]))
        j++;
    if (at_end(s, j, len) || s[j] != '$')
        return i;
    size_t tag = j + 1 - i;
    size_t k = j + 1;
    for (; !at_end(s, k, len); k++) {
        size_t n = 0;
        while (n < tag && !at_end(s, k + n, len) && s[k + n] == s[i + n])
            n++;
        if (n == tag)
            return k + tag;
    }
    *ended = false;
    return k;
}

size_t sql_skip_lexeme(const char *s, size_t i, size_t len, unsigned reading, bool *ended,
                       unsigned *doubts)
{
    *ended = true;
    if (at_end(s, i, len))
        return i;
    char next = at_end(s, i + 1, len) ? '\0' : s[i + 1];
    if (s[i] == '-' && next == '-') {
        /* scan.l's comment is "--" and non_newline, [^\n\r]: a CR alone ends it too, and
         * what follows runs (`-- c\rSET app.x = 1`) */
        while (!at_end(s, i, len) && s[i] != '\n' && s[i] != '\r')
            i++;
        return i;
    }
    if (s[i] == '/' && next == '*')
        return skip_block_comment(s, i, len, ended);
    if (s[i] == '"')
        return skip_quoted(s, i, len, false, reading, ended);
    if (s[i] == '\'') {
        /* E'...' (the E not the end of a longer name): backslash escapes whatever the setting */
        bool e_prefix =
            i > 0 && (s[i - 1] | 0x20) == 'e' && (i < 2 || !sql_ident_char(s[i - 2]));
        size_t past = skip_quoted(s, i, len, e_prefix || (reading & SQL_READ_PLAIN_ESCAPES),
                                  reading, ended);
        if (doubts)
            *doubts |= literal_doubts(s, i, past, e_prefix);
        return past;
    }
    if (s[i] == '$' && (i == 0 || !sql_ident_char(s[i - 1])))
        return skip_dollar_quoted(s, i, len, ended);
    return i;
}

unsigned sql_encoding_reading(const char *client_encoding)
{
    /* the two SJIS first (SQL_READ_SJIS) */
    static const char *const trail_ascii[] = {"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK",
                                              "UHC",  "GB18030",        "JOHAB"};
    for (size_t i = 0; client_encoding && i < sizeof trail_ascii / sizeof trail_ascii[0]; i++)
        if (strcasecmp(client_encoding, trail_ascii[i]) == 0)
            return SQL_READ_MULTIBYTE | (i < 2 ? SQL_READ_SJIS : 0);
    return SQL_READ_STANDARD;
}

bool sql_next_statement(const char *sql, size_t len, size_t start, size_t *end, unsigned reading,
                        unsigned *doubts)
{
    size_t i = start;
    while (i < len) {
        bool ended;
        size_t past = sql_skip_lexeme(sql, i, len, reading, &ended, doubts);
        if (past != i) {
            if (!ended)
                break;
            i = past;
            continue;
        }
        if (sql[i] == ';' || sql[i] == '\0') {
            *end = i;
            return true;
        }
        i++;
    }
    *end = len;
    return i >= len;
}

size_t sql_skip_space(const char *s, size_t i, size_t len)
{
    for (;;) {
        while (!at_end(s, i, len) && isspace((unsigned char)s[i]))
            i++;
        if (at_end(s, i, len) || at_end(s, i + 1, len) ||
            !((s[i] == '-' && s[i + 1] == '-') || (s[i] == '/' && s[i + 1] == '*')))
            return i;
        bool ended;
        i = sql_skip_lexeme(s, i, len, SQL_READ_STANDARD, &ended, NULL);
    }
}

/* Does s start with word (lower case, ASCII), in any case? What strncasecmp answers in the C
 * locale, without a library call for each candidate. */
static bool ascii_word_at(const char *s, const char *word, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        char c = s[k];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + ('a' - 'A'));
        if (c != word[k])
            return false;
    }
    return true;
}

uint32_t sql_words_in(const char *s, size_t len, const char *const words[], size_t n)
{
    /* the words by their first letter; at a byte that starts none, one test. (c | 0x20 is the
     * lower case of an ASCII letter and no other byte's.) */
    uint32_t by_first[26] = {0}, found = 0;
    for (size_t w = 0; w < n; w++)
        by_first[words[w][0] - 'a'] |= 1u << w;
    for (size_t i = 0; i + 1 < len; i++) {
        unsigned letter = (unsigned)(unsigned char)(s[i] | 0x20) - 'a';
        if (letter >= 26 || !by_first[letter])
            continue;
        char second = (char)(s[i + 1] | 0x20);
        for (uint32_t left = by_first[letter] & ~found; left; left &= left - 1) {
            unsigned w = (unsigned)__builtin_ctz(left);
            if (words[w][1] != second)
                continue;
            size_t wl = strlen(words[w]);
            if (wl <= len - i && ascii_word_at(s + i, words[w], wl))
                found |= 1u << w;
        }
    }
    return found;
}

bool sql_temp_schema_word(const char *s, size_t n)
{
    if (n < 7 || strncasecmp(s, "pg_temp", 7) != 0)
        return false;
    if (n == 7)
        return true;
    if (n == 8 || s[7] != '_')
        return false;
    for (size_t k = 8; k < n; k++)
        if (!isdigit((unsigned char)s[k]))
            return false;
    return true;
}

/* The hex digits s[j..j+n) as a code point; -1 when one is not a hex digit. */
static long hex_code(const char *s, size_t j, size_t end, size_t n)
{
    long cp = 0;
    for (size_t k = 0; k < n; k++) {
        if (j + k >= end || !isxdigit((unsigned char)s[j + k]))
            return -1;
        char ch = (char)tolower((unsigned char)s[j + k]);
        cp = cp * 16 + (isdigit((unsigned char)ch) ? ch - '0' : ch - 'a' + 10);
    }
    return cp;
}

/* Postgres's check_uescapechar: a hex digit, '+', a quote or a blank cannot be the escape. */
static bool escape_char_allowed(char esc)
{
    return !isxdigit((unsigned char)esc) && esc != '+' && esc != '\'' && esc != '"' &&
           !strchr(" \t\n\r\f", esc);
}

/* The UESCAPE clause's literal at s[j..lit): '!' or E'!' (Postgres takes any string constant of
 * one character; another spelling, E'\x21' or $$!$$, is not read here). */
static bool escape_literal(const char *s, size_t j, size_t lit, char *esc)
{
    if (lit == j + 3 && s[j] == '\'' && s[j + 2] == '\'') {
        *esc = s[j + 1];
        return true;
    }
    if (lit == j + 4 && (s[j] | 0x20) == 'e' && s[j + 1] == '\'' && s[j + 3] == '\'' &&
        s[j + 2] != '\\') {
        *esc = s[j + 2];
        return true;
    }
    return false;
}

enum sql_unicode_name sql_unicode_name(const char *s, size_t i, size_t past, size_t len, char *out,
                                       size_t cap, size_t *after)
{
    return sql_unicode_name_read(s, i, past, len, SQL_READ_STANDARD, out, cap, after);
}

enum sql_unicode_name sql_unicode_name_read(const char *s, size_t i, size_t past, size_t len,
                                            unsigned reading, char *out, size_t cap, size_t *after)
{
    if (after)
        *after = past;
    if (i < 2 || s[i] != '"' || s[i - 1] != '&' || (s[i - 2] | 0x20) != 'u' ||
        (i >= 3 && sql_ident_char(s[i - 3])) || past < i + 2 || s[past - 1] != '"')
        return SQL_UNICODE_NONE;
    char esc = '\\';
    size_t j = sql_skip_space(s, past, len);
    if (!at_end(s, j + 7, len) && strncasecmp(s + j, "uescape", 7) == 0 &&
        !sql_ident_char(s[j + 7])) {
        j = sql_skip_space(s, j + 7, len);
        bool ended;
        bool e_prefix = !at_end(s, j + 1, len) && (s[j] | 0x20) == 'e' && s[j + 1] == '\'';
        size_t lit = sql_skip_lexeme(s, j + e_prefix, len, SQL_READ_STANDARD, &ended, NULL);
        if (after)
            *after = lit;
        /* Postgres refuses an escape character it could not tell from the escapes' digits or
         * the name's end (42601 "invalid Unicode escape character"): the server answers it */
        if (!escape_literal(s, j, lit, &esc) || !escape_char_allowed(esc))
            return SQL_UNICODE_UNREAD;
    }
    size_t n = 0, end = past - 1;
    long high = 0; /* a UTF-16 high surrogate, waiting for its low one */
    for (size_t k = i + 1; k < end;) {
        long cp = (unsigned char)s[k];
        size_t step = 1;
        bool escaped = false;
        if (sql_multibyte_lead(s[k], reading) && k + 1 < end) {
            /* a character's second byte may be the escape character's (0x5C): not one */
            if (n + 2 >= cap)
                return SQL_UNICODE_UNREAD;
            out[n++] = s[k++];
            out[n++] = s[k++];
            continue;
        }
        if (s[k] == '"') {
            step = 2; /* "" inside is one " */
        } else if (s[k] == esc && k + 1 < end && s[k + 1] == esc) {
            step = 2;
        } else if (s[k] == esc && k + 1 < end && s[k + 1] == '+') {
            cp = hex_code(s, k + 2, end, 6);
            step = 8;
            escaped = true;
        } else if (s[k] == esc) {
            cp = hex_code(s, k + 1, end, 4);
            step = 5;
            escaped = true;
        }
        k += step;
        /* Postgres refuses what is not a code point (0 included) and a surrogate not in a pair
         * of escapes (str_udeescape): the server answers that, not sluice */
        bool low = escaped && cp >= 0xdc00 && cp <= 0xdfff;
        if (cp < 0 || (high && !low) || (!high && low) || (escaped && (cp == 0 || cp > 0x10ffff)))
            return SQL_UNICODE_UNREAD;
        if (escaped && cp >= 0xd800 && cp <= 0xdbff) {
            high = cp;
            continue;
        }
        if (high) {
            cp = 0x10000 + ((high - 0xd800) << 10) + (cp - 0xdc00);
            high = 0;
        }
        /* An escaped character past ASCII as the client writes it, which is how sluice keys
         * the client's names (a byte as written stays as it is): UTF-8, or LATIN1's byte; one
         * it cannot write (past U+00FF in LATIN1) is none of its names, and under another
         * encoding its bytes are not known: not read, the server looks the name up. */
        if (escaped && cp >= 0x80 &&
            ((reading & SQL_READ_ESCAPES_ASCII) ||
             ((reading & SQL_READ_ESCAPES_LATIN1) && cp > 0xff)))
            return SQL_UNICODE_UNREAD;
        bool one_byte = !escaped || cp < 0x80 || (reading & SQL_READ_ESCAPES_LATIN1);
        size_t bytes = one_byte ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        if (n + bytes >= cap)
            return SQL_UNICODE_UNREAD;
        if (bytes == 1) {
            out[n++] = (char)cp;
            continue;
        }
        for (size_t b = bytes; b-- > 1;)
            out[n + b] = (char)(0x80 | ((cp >> (6 * (bytes - 1 - b))) & 0x3f));
        out[n] = (char)((bytes == 2 ? 0xc0 : bytes == 3 ? 0xe0 : 0xf0) | (cp >> (6 * (bytes - 1))));
        n += bytes;
    }
    if (high)
        return SQL_UNICODE_UNREAD;
    out[n] = '\0';
    return SQL_UNICODE_READ;
}

bool sql_unicode_name_may_hide(const char *s, size_t i, size_t past, size_t len, size_t *after)
{
    char name[64];
    switch (sql_unicode_name(s, i, past, len, name, sizeof name, after)) {
    case SQL_UNICODE_NONE:
        return false;
    case SQL_UNICODE_UNREAD:
        return true;
    default:
        return sql_temp_schema_word(name, strlen(name));
    }
}

bool sql_names_temp_schema(const char *s, size_t len)
{
    size_t i = 0;
    /* SET search_path = U&"pg\005ftemp": a name whose escapes Postgres decodes */
    for (size_t k = 0; !at_end(s, k + 2, len); k++)
        if ((s[k] | 0x20) == 'u' && s[k + 1] == '&' && s[k + 2] == '"' &&
            (k == 0 || !sql_ident_char(s[k - 1])))
            return true;
    while (!at_end(s, i, len)) {
        size_t end = i;
        while (!at_end(s, end, len) && sql_ident_char(s[end]))
            end++;
        if (end > i && sql_temp_schema_word(s + i, end - i))
            return true;
        i = end > i ? end : i + 1;
    }
    return false;
}
