/* siphash: SipHash-2-4 (the reference algorithm, https://131002.net/siphash/), fed in pieces. */
#include "siphash.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static inline void sipround(struct siphash *h)
{
    h->v0 += h->v1;
    h->v1 = ROTL(h->v1, 13);
    h->v1 ^= h->v0;
    h->v0 = ROTL(h->v0, 32);
    h->v2 += h->v3;
    h->v3 = ROTL(h->v3, 16);
    h->v3 ^= h->v2;
    h->v0 += h->v3;
    h->v3 = ROTL(h->v3, 21);
    h->v3 ^= h->v0;
    h->v2 += h->v1;
    h->v1 = ROTL(h->v1, 17);
    h->v1 ^= h->v2;
    h->v2 = ROTL(h->v2, 32);
}

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline void compress(struct siphash *h, uint64_t m)
{
    h->v3 ^= m;
    sipround(h);
    sipround(h);
    h->v0 ^= m;
}

void siphash_init(struct siphash *h, const uint8_t key[16])
{
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    h->v0 = k0 ^ 0x736f6d6570736575ull;
    h->v1 = k1 ^ 0x646f72616e646f6dull;
    h->v2 = k0 ^ 0x6c7967656e657261ull;
    h->v3 = k1 ^ 0x7465646279746573ull;
    h->tail = 0;
    h->ntail = 0;
    h->total = 0;
}

void siphash_byte(struct siphash *h, uint8_t byte)
{
    h->tail |= (uint64_t)byte << (8 * h->ntail);
    h->total++;
    if (++h->ntail == 8) {
        compress(h, h->tail);
        h->tail = 0;
        h->ntail = 0;
    }
}

void siphash_update(struct siphash *h, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0 && h->ntail != 0) {
        siphash_byte(h, *p++);
        len--;
    }
    for (; len >= 8; p += 8, len -= 8) {
        compress(h, load_le64(p));
        h->total += 8;
    }
    while (len-- > 0)
        siphash_byte(h, *p++);
}

uint64_t siphash_final(struct siphash *h)
{
    compress(h, h->tail | ((h->total & 0xff) << 56));
    h->v2 ^= 0xff;
    sipround(h);
    sipround(h);
    sipround(h);
    sipround(h);
    return h->v0 ^ h->v1 ^ h->v2 ^ h->v3;
}

uint64_t siphash24(const uint8_t key[16], const void *data, size_t len)
{
    struct siphash h;
    siphash_init(&h, key);
    siphash_update(&h, data, len);
    return siphash_final(&h);
}

static uint8_t process_key[16];
static pthread_once_t process_key_once = PTHREAD_ONCE_INIT;

static void draw_process_key(void)
{
    size_t got = 0;
    while (got < sizeof(process_key)) {
        ssize_t n = getrandom(process_key + got, sizeof(process_key) - got, 0);
        if (n > 0)
            got += (size_t)n;
        /* EINTR: again; getrandom without GRND_NONBLOCK blocks until the pool is ready, so no
         * other failure is expected on Linux >= 3.17 */
    }
}

const uint8_t *siphash_process_key(void)
{
    pthread_once(&process_key_once, draw_process_key);
    return process_key;
}
