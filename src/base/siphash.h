/* siphash: SipHash-2-4, a keyed hash (Aumasson & Bernstein). Where a client chooses what is
 * hashed and sluice decides by comparing hashes (parameter fingerprints), an unkeyed hash lets
 * a client craft a set that collides with another client's; with a secret key it cannot. */
#ifndef SLUICE_SIPHASH_H
#define SLUICE_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

struct siphash {
    uint64_t v0, v1, v2, v3;
    uint64_t tail;    /* bytes not yet compressed, little-endian */
    unsigned ntail;   /* how many (0..7) */
    uint64_t total;   /* bytes fed */
};

void siphash_init(struct siphash *h, const uint8_t key[16]);
void siphash_update(struct siphash *h, const void *data, size_t len);
void siphash_byte(struct siphash *h, uint8_t byte);
uint64_t siphash_final(struct siphash *h);

/* One call: the hash of data under key. */
uint64_t siphash24(const uint8_t key[16], const void *data, size_t len);

/* A 16-byte key drawn once per process from getrandom (thread-safe, first use draws it). */
const uint8_t *siphash_process_key(void);

#endif
