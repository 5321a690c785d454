/* sql_lex: the few rules of Postgres's lexer (scan.l) that decide where a SQL text's words and
 * statements are: blanks, comments, literals and quoted names. sluice's inspectors of client SQL
 * (session_state.c's statement split, prepared.c's EXECUTE/DEALLOCATE reader) skip through
 * these, so that a ';' or a keyword inside one is not taken for SQL, and a quote inside one (an
 * apostrophe in "-- don't", a quote in a function body) opens nothing.
 *
 * A text ends at len or at its first NUL, whichever comes first. */
#ifndef SLUICE_SQL_LEX_H
#define SLUICE_SQL_LEX_H

#include <stdbool.h>
#include <stddef.h>

/* How a backslash inside a plain '...' literal reads: as itself (standard_conforming_strings
 * on, Postgres's default) or as an escape (off). In an E'...' literal it always escapes. */
enum sql_backslash { SQL_BACKSLASH_LITERAL, SQL_BACKSLASH_ESCAPES };

/* Is ch one of Postgres's identifier characters (ident_cont: a '$' inside a name is part of
 * it, and so is any byte of a multibyte character)? */
bool sql_ident_char(char ch);

/* The literal ('...', E'...', $tag$...$tag$), quoted name ("...") or comment (-- to the line's
 * end, nested block comments) that starts at s[i]: the index past it, or i when none starts
 * there. *ended is false when the text ends inside it (Postgres refuses such a text: nothing of
 * it runs). */
size_t sql_skip_lexeme(const char *s, size_t i, size_t len, enum sql_backslash bs, bool *ended);

/* Past the blanks and comments at s[i]. */
size_t sql_skip_space(const char *s, size_t i, size_t len);

#endif
