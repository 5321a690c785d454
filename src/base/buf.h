/* buf: the fixed-capacity byte buffer a connection reads into. Bytes move through three regions:
 *   [rpos, scan)  framed and ready to forward (or consume) — relay writes straight from here
 *   [scan, wpos)  read but not yet framed (a partial header waits here for the rest)
 *   [wpos, cap)   free space that the next read fills
 * Storage is attached only while bytes are held (idle clients hold none) and comes from a free
 * list of equal-sized blocks, so there is no malloc per read.
 * Every block holds BUF_GROW_MAX bytes beyond the block size (pkt_buf) that reads never fill
 * (buf_make_room and buf_free_tail count to pkt_buf only): buf_replace_at_scan alone writes
 * there, so that a message sluice puts in the place of a shorter one fits even in a buffer the
 * peer filled; wpos is then past pkt_buf until those bytes are written and consumed. */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stdbool.h>
#include <stdint.h>

/* The most a message put in another's place may be longer than it (buf_replace_at_scan): the
 * failing statement of a refusal (session_effects.c, which checks its bound against this). */
#define BUF_GROW_MAX 160u

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
/* Free space at the tail, after moving held bytes to the front if that makes room. Neither
 * counts the slack past pkt_buf (0 while wpos is in it). */
uint32_t buf_make_room(struct buf *b);
static inline uint32_t buf_free_tail(const struct buf *b)
{
    return b->data && b->wpos < buf_block_size() ? buf_block_size() - b->wpos : 0;
}
/* The span bytes at b->scan, unframed, with nothing framed before them (rpos == scan), become
 * the n bytes of with (to be framed as the peer's), the unframed rest after them kept behind.
 * Longer ones (by at most BUF_GROW_MAX) go into the consumed front, else the held bytes move to
 * the block's start and may reach into the slack past pkt_buf. False only when the held bytes
 * and the growth do not fit that (more than pkt_buf held, or a growth past BUF_GROW_MAX). */
bool buf_replace_at_scan(struct buf *b, uint32_t span, const uint8_t *with, uint32_t n);
/* Drop bytes from the front: the region [rpos, rpos+n) was written or consumed. */
void buf_consume(struct buf *b, uint32_t n);

#endif
