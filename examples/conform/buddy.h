/*
 * buddy.h: a small buddy page allocator with pKVM's policy, written for pagebuddy's
 * conformance kit (docs/conform.md): one FIFO free list per order, blocks split on
 * allocation (each upper half joins the tail of its list) and coalesced on free (zeroed, then
 * merged with its buddy while the buddy is a free block of the same order inside the pool;
 * the merged block joins the tail of its list).
 *
 * Its API is the kind a hypervisor's allocator has: pages are addresses in the pool's memory,
 * the metadata is an array the caller provides. adapter.c turns it into pagebuddy_conform.h.
 *
 * Build switches that break it on purpose (conform must catch them):
 *   -DBUDDY_BUG_LIFO   a freed block joins the head of its list (LIFO): legal for a buddy
 *                      allocator, not pKVM's policy
 *   -DBUDDY_BUG_MERGE  a freed block never merges with a buddy below it (coalescing missed)
 *   -DBUDDY_BUG_HELD_BUDDY  a freed block merges with its buddy even when the buddy is held
 *                      (the held block is then handed out again)
 */
#ifndef BUDDY_H
#define BUDDY_H

#include <stddef.h>
#include <stdint.h>

#define BUDDY_MAX_ORDERS 33 /* orders a pool of up to 2**32 - 1 pages can have */
#define BUDDY_NONE UINT32_MAX

enum buddy_zero { BUDDY_ZERO_ON_FREE, BUDDY_ZERO_ON_ALLOC, BUDDY_ZERO_NEVER };

/* One page's metadata: its refcount, the order of the block it heads (BUDDY_NO_ORDER for a
 * tail page), and its free-list links while it heads a free block. */
#define BUDDY_NO_ORDER 0xff
struct buddy_page {
	uint32_t prev, next;
	uint16_t refcount;
	uint8_t order;
};

struct buddy_pool {
	unsigned char *mem;       /* nr_pages * page_size bytes */
	struct buddy_page *pages; /* nr_pages entries */
	uint64_t nr_pages, base_pfn, page_size, free_pages;
	unsigned int max_order; /* valid orders: 0 .. max_order - 1 */
	enum buddy_zero zero;
	uint32_t head[BUDDY_MAX_ORDERS], tail[BUDDY_MAX_ORDERS];
};

/* Build a pool over `mem` with metadata `pages`; pages before `reserved` stay held.
 * 0, or -1 for a geometry it does not take. */
int buddy_init(struct buddy_pool *pool, void *mem, struct buddy_page *pages, uint64_t nr_pages,
	       uint64_t base_pfn, uint64_t reserved, unsigned int order_cap, uint64_t page_size,
	       enum buddy_zero zero);
/* A block of 2**order pages, or NULL (no such order, or no free block large enough). */
void *buddy_alloc(struct buddy_pool *pool, unsigned int order);
/* Drop / take a reference, split a held block into pages: 0, or -1 for an address that is not
 * a held page of the pool. */
int buddy_put(struct buddy_pool *pool, void *addr);
int buddy_get(struct buddy_pool *pool, void *addr);
int buddy_split(struct buddy_pool *pool, void *addr);
/* The page index of `addr`, or -1 if it is not the start of a page of the pool. */
int64_t buddy_index(const struct buddy_pool *pool, const void *addr);

#endif /* BUDDY_H */
