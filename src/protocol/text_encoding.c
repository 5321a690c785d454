/* text_encoding: statement texts between client encodings (see text_encoding.h). */
#include "text_encoding.h"

#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>

#include "sql_lex.h"

/* Postgres's names (pg_enc2name_tbl) of the encodings whose characters iconv maps as Postgres
 * does: UTF8 and the single-byte ones. The multi-byte Asian encodings are left out: Postgres's
 * own tables (SJIS as Microsoft's, BIG5, UHC) differ from iconv's in places, and a character
 * read otherwise than at the client's Parse would be a silent change. */
static const struct {
    const char *pg, *iconv;
} converted[] = {
    {"UTF8", "UTF-8"},
    {"LATIN1", "ISO-8859-1"},
    {"LATIN2", "ISO-8859-2"},
    {"LATIN3", "ISO-8859-3"},
    {"LATIN4", "ISO-8859-4"},
    {"LATIN5", "ISO-8859-9"},
    {"LATIN6", "ISO-8859-10"},
    {"LATIN7", "ISO-8859-13"},
    {"LATIN8", "ISO-8859-14"},
    {"LATIN9", "ISO-8859-15"},
    {"LATIN10", "ISO-8859-16"},
    {"ISO_8859_5", "ISO-8859-5"},
    {"ISO_8859_6", "ISO-8859-6"},
    {"ISO_8859_7", "ISO-8859-7"},
    {"ISO_8859_8", "ISO-8859-8"},
    {"WIN1250", "CP1250"},
    {"WIN1251", "CP1251"},
    {"WIN1252", "CP1252"},
    {"WIN1253", "CP1253"},
    {"WIN1254", "CP1254"},
    {"WIN1255", "CP1255"},
    {"WIN1256", "CP1256"},
    {"WIN1257", "CP1257"},
    {"WIN1258", "CP1258"},
    {"WIN866", "CP866"},
    {"KOI8R", "KOI8-R"},
    {"KOI8U", "KOI8-U"},
};

static const char *iconv_name(const char *pg)
{
    for (size_t i = 0; i < sizeof(converted) / sizeof(converted[0]); i++)
        if (strcasecmp(pg, converted[i].pg) == 0)
            return converted[i].iconv;
    return NULL;
}

int text_encoding_convert(const char *from, const char *to, const uint8_t *in, size_t n,
                          uint8_t **out, size_t *out_len)
{
    const char *from_name = iconv_name(from), *to_name = iconv_name(to);
    if (!from_name || !to_name)
        return -EINVAL;
    iconv_t cd = iconv_open(to_name, from_name);
    if (cd == (iconv_t)-1)
        return errno == ENOMEM ? -ENOMEM : -EINVAL;
    /* A character is at most 4 bytes of UTF-8 from one byte of a single-byte encoding (3 in
     * fact), and one byte from at most 4 of UTF-8: 4 bytes out per byte in is enough. */
    size_t room = n * 4 + 1;
    uint8_t *buf = malloc(room);
    if (!buf) {
        iconv_close(cd);
        return -ENOMEM;
    }
    char *src = (char *)in, *dst = (char *)buf;
    size_t src_left = n, dst_left = room;
    size_t rc = iconv(cd, &src, &src_left, &dst, &dst_left);
    iconv_close(cd);
    if (rc == (size_t)-1 || rc > 0) { /* invalid input, or characters iconv approximated */
        free(buf);
        return -EINVAL;
    }
    *out = buf;
    *out_len = room - dst_left;
    return 0;
}

unsigned text_encoding_effect_of(const char *sql, size_t len)
{
    static const char *const words[] = {
        /* may set it */
        "encoding", "names", "reset", "discard", "set_config", "execute", "u&",
        /* may undo a SET of it */
        "commit", "rollback", "abort", "end", "prepare",
    };
    enum { MAY_SET_WORDS = 7 };
    uint32_t found = sql_words_in(sql, len, words, sizeof(words) / sizeof(words[0]));
    unsigned effect = 0;
    if (found & ((1u << MAY_SET_WORDS) - 1))
        effect |= TEXT_ENCODING_MAY_SET;
    if (found >> MAY_SET_WORDS)
        effect |= TEXT_ENCODING_MAY_UNDO;
    return effect;
}
