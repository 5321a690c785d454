/* decimal: an unsigned decimal number written as digits alone (no sign, no blanks, no base
 * prefix), for text sluice reads from operators (KILL_CLIENT's id, conn_id.h) and from servers
 * (an ErrorResponse's position, query_positions.c). Each caller bounds the count of digits, so
 * that a value past that bound is refused, never wrapped. */
#ifndef SLUICE_DECIMAL_H
#define SLUICE_DECIMAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Enough digits that any such number is below 2^63: no overflow in uint64_t. */
#define DECIMAL_MAX_DIGITS 19

/* s[0..len) as a number: 1 to max_digits decimal digits (max_digits at most
 * DECIMAL_MAX_DIGITS); false for anything else (*out untouched). */
static inline bool decimal_parse(const char *s, size_t len, size_t max_digits, uint64_t *out)
{
    if (len == 0 || len > max_digits || len > DECIMAL_MAX_DIGITS)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

#endif
