/* buf: the fixed-capacity byte buffer a connection reads into. Bytes move through three regions:
 *   [rpos, scan)  framed and ready to forward (or consume) — relay writes straight from here
 *   [scan, wpos)  read but not yet framed (a partial header waits here for the rest)
 *   [wpos, cap)   free space that the next read fills
 * Storage is attached only while bytes are held (idle clients hold none) and comes from a free
 * list of equal-sized blocks, so there is no malloc per read. */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stdbool.h>
#include <stdint.h>

struct buf {
    uint8_t *data; /* NULL while detached */
    uint32_t rpos, scan, wpos;
};

/* The block size for every buffer (pkt_buf), fixed at start-up before any worker thread starts
 * (it frees the calling thread's cache only). */
void buf_set_block_size(uint32_t size);
uint32_t buf_block_size(void);
/* Free the calling thread's cached blocks (shutdown; a worker thread before it ends). The free
 * list is per thread: attach and release take no lock. */
void buf_free_cache(void);

/* Attach storage if detached; false when out of memory. */
bool buf_attach(struct buf *b);
/* Give the storage back when nothing is held. */
void buf_detach_if_empty(struct buf *b);
/* Give the storage back whatever it holds (connection closing). */
void buf_release(struct buf *b);

static inline uint32_t buf_pending(const struct buf *b)   /* framed, not yet written */
{
    return b->scan - b->rpos;
}
static inline uint32_t buf_unframed(const struct buf *b)
{
    return b->wpos - b->scan;
}
static inline bool buf_is_empty(const struct buf *b)
{
    return b->rpos == b->wpos;
}
/* Free space at the tail, after moving held bytes to the front if that makes room. */
uint32_t buf_make_room(struct buf *b);
static inline uint32_t buf_free_tail(const struct buf *b)
{
    return b->data ? buf_block_size() - b->wpos : 0;
}
/* Drop bytes from the front: the region [rpos, rpos+n) was written or consumed. */
void buf_consume(struct buf *b, uint32_t n);

#endif
