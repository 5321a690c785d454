/* buf: fixed-size read buffers from a free list (see buf.h). */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

/* Set once at start-up, before any worker thread runs; read-only after. */
static uint32_t block_size = 16384;

/* Free blocks are chained through their first bytes. A bounded cache: past it, blocks go back to
 * malloc so a storm's peak does not stay resident for ever. One cache per thread (each worker's
 * loop attaches and releases only its own connections' buffers), so attach and release take no
 * lock; a block released on another thread than the one that attached it simply joins that
 * thread's cache. */
struct free_block {
    struct free_block *next;
};
static _Thread_local struct free_block *free_blocks;
static _Thread_local unsigned nfree;
#define MAX_CACHED_BLOCKS 256

void buf_set_block_size(uint32_t size)
{
    buf_free_cache();
    block_size = size;
}

uint32_t buf_block_size(void)
{
    return block_size;
}

void buf_free_cache(void)
{
    while (free_blocks) {
        struct free_block *f = free_blocks;
        free_blocks = f->next;
        free(f);
    }
    nfree = 0;
}

bool buf_attach(struct buf *b)
{
    if (b->data)
        return true;
    if (free_blocks) {
        b->data = (uint8_t *)free_blocks;
        free_blocks = free_blocks->next;
        nfree--;
    } else {
        b->data = malloc((size_t)block_size + BUF_GROW_MAX);
        if (!b->data)
            return false;
    }
    b->rpos = b->scan = b->wpos = 0;
    return true;
}

void buf_release(struct buf *b)
{
    if (!b->data)
        return;
    if (nfree < MAX_CACHED_BLOCKS) {
        struct free_block *f = (struct free_block *)b->data;
        f->next = free_blocks;
        free_blocks = f;
        nfree++;
    } else {
        free(b->data);
    }
    b->data = NULL;
    b->rpos = b->scan = b->wpos = 0;
}

void buf_detach_if_empty(struct buf *b)
{
    if (b->data && b->rpos == b->wpos)
        buf_release(b);
}

uint32_t buf_make_room(struct buf *b)
{
    if (!b->data)
        return 0;
    if (b->rpos == b->wpos) {
        b->rpos = b->scan = b->wpos = 0;
    } else if (b->wpos >= block_size && b->rpos > 0) { /* >=: wpos may be in the slack */
        uint32_t held = b->wpos - b->rpos;
        memmove(b->data, b->data + b->rpos, held);
        b->scan -= b->rpos;
        b->wpos = held;
        b->rpos = 0;
    }
    return buf_free_tail(b);
}

bool buf_replace_at_scan(struct buf *b, uint32_t span, const uint8_t *with, uint32_t n)
{
    uint32_t rest = b->wpos - (b->scan + span);
    if (b->rpos != b->scan)
        return false;
    if (n <= span) { /* right-aligned: what is left in front is consumed */
        b->scan += span - n;
        buf_consume(b, span - n);
    } else if (b->rpos >= n - span) { /* into the consumed front */
        b->rpos -= n - span;
        b->scan = b->rpos;
    } else {
        /* To the block's start, the rest behind: wpos may go past pkt_buf into the slack, which
         * reads do not fill. Held bytes are at most pkt_buf here (only this function goes past
         * it, and what it put there is consumed before rpos meets scan again), so a growth of
         * at most BUF_GROW_MAX always fits. */
        if (n - span > BUF_GROW_MAX || (uint64_t)n + rest > (uint64_t)block_size + BUF_GROW_MAX)
            return false;
        memmove(b->data + n, b->data + b->scan + span, rest);
        b->rpos = b->scan = 0;
        b->wpos = n + rest;
    }
    memcpy(b->data + b->scan, with, n);
    return true;
}

void buf_consume(struct buf *b, uint32_t n)
{
    b->rpos += n;
    if (b->rpos == b->wpos)
        b->rpos = b->scan = b->wpos = 0;
}
