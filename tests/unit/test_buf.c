/* test_buf: the read buffer's regions and its slack. Reads (buf_make_room, buf_free_tail) count
 * to the block size only; buf_replace_at_scan alone may grow the held bytes past it, by at most
 * BUF_GROW_MAX, and what it leaves there is read back whole. Blocks come from malloc at their
 * exact size, so ASan catches a write past the slack. */
#include "buf.h"

#include "check.h"

#include <string.h>

#define BLOCK 64u

/* A buffer filled from its start with n bytes 0, 1, 2, ... (a read that filled it). */
static void fill(struct buf *b, uint32_t n)
{
    CHECK(buf_attach(b));
    CHECK_INT(buf_make_room(b), BLOCK);
    for (uint32_t i = 0; i < n; i++)
        b->data[i] = (uint8_t)i;
    b->wpos = n;
}

static bool bytes_are(const uint8_t *p, uint32_t n, uint8_t first)
{
    for (uint32_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(first + i))
            return false;
    return true;
}

/* A refused message at the start of a full block grows into the slack; the rest stays behind it,
 * nothing is read while it is there, and the block compacts once it is consumed. */
static void test_growth_into_the_slack(void)
{
    struct buf b = {0};
    fill(&b, BLOCK);
    uint8_t with[10 + BUF_GROW_MAX];
    memset(with, 0xAB, sizeof(with));
    CHECK(buf_replace_at_scan(&b, 10, with, sizeof(with)));
    CHECK_INT(b.rpos, 0);
    CHECK_INT(b.scan, 0);
    CHECK_INT(b.wpos, BLOCK + BUF_GROW_MAX);
    CHECK(b.data[0] == 0xAB && b.data[sizeof(with) - 1] == 0xAB);
    CHECK(bytes_are(b.data + sizeof(with), BLOCK - 10, 10));
    CHECK_INT(buf_free_tail(&b), 0);
    CHECK_INT(buf_make_room(&b), 0); /* nothing consumed yet: no room, no move */
    b.scan += sizeof(with);          /* framed and written */
    buf_consume(&b, sizeof(with));
    CHECK_INT(buf_make_room(&b), 10);
    CHECK_INT(b.rpos, 0);
    CHECK_INT(b.wpos, BLOCK - 10);
    CHECK(bytes_are(b.data, BLOCK - 10, 10));
    buf_release(&b);
}

/* One byte past BUF_GROW_MAX, or more than the block held, is refused and changes nothing. */
static void test_growth_past_the_slack_is_refused(void)
{
    struct buf b = {0};
    fill(&b, BLOCK);
    uint8_t with[10 + BUF_GROW_MAX + 1];
    memset(with, 0xAB, sizeof(with));
    CHECK(!buf_replace_at_scan(&b, 10, with, sizeof(with)));
    CHECK_INT(b.wpos, BLOCK);
    CHECK(bytes_are(b.data, BLOCK, 0));
    b.scan = 5; /* something framed before the span: not replaced either */
    CHECK(!buf_replace_at_scan(&b, 10, with, 11));
    buf_release(&b);
}

/* Room in the consumed front is used first, with no move; a shorter message is right-aligned. */
static void test_front_and_shorter(void)
{
    struct buf b = {0};
    fill(&b, BLOCK);
    b.rpos = b.scan = 20; /* 20 bytes written and consumed */
    uint8_t with[15];
    memset(with, 0xCD, sizeof(with));
    CHECK(buf_replace_at_scan(&b, 10, with, sizeof(with)));
    CHECK_INT(b.rpos, 15);
    CHECK_INT(b.scan, 15);
    CHECK_INT(b.wpos, BLOCK);
    CHECK(b.data[15] == 0xCD && b.data[29] == 0xCD);
    CHECK(bytes_are(b.data + 30, BLOCK - 30, 30));
    CHECK(buf_replace_at_scan(&b, 15, with, 4));
    CHECK_INT(b.rpos, 26);
    CHECK_INT(b.scan, 26);
    CHECK(bytes_are(b.data + 30, BLOCK - 30, 30));
    buf_release(&b);
}

int main(void)
{
    buf_set_block_size(BLOCK);
    test_growth_into_the_slack();
    test_growth_past_the_slack_is_refused();
    test_front_and_shorter();
    buf_free_cache();
    return CHECK_DONE();
}
