/* buddy.c: the allocator of buddy.h. */
#include <string.h>

#include "buddy.h"

static unsigned char *page_addr(const struct buddy_pool *pool, uint64_t i)
{
	return pool->mem + i * pool->page_size;
}

static void list_del(struct buddy_pool *pool, uint32_t i, unsigned int order)
{
	struct buddy_page *p = &pool->pages[i];

	if (p->prev == BUDDY_NONE)
		pool->head[order] = p->next;
	else
		pool->pages[p->prev].next = p->next;
	if (p->next == BUDDY_NONE)
		pool->tail[order] = p->prev;
	else
		pool->pages[p->next].prev = p->prev;
	pool->free_pages -= 1ull << order;
}

static void list_add(struct buddy_pool *pool, uint32_t i, unsigned int order, int at_head)
{
	struct buddy_page *p = &pool->pages[i];

	p->order = (uint8_t)order;
	pool->free_pages += 1ull << order;
	if (at_head) {
		p->prev = BUDDY_NONE;
		p->next = pool->head[order];
		if (p->next == BUDDY_NONE)
			pool->tail[order] = i;
		else
			pool->pages[p->next].prev = i;
		pool->head[order] = i;
		return;
	}
	p->next = BUDDY_NONE;
	p->prev = pool->tail[order];
	if (p->prev == BUDDY_NONE)
		pool->head[order] = i;
	else
		pool->pages[p->prev].next = i;
	pool->tail[order] = i;
}

#ifdef BUDDY_BUG_LIFO
#define FREED_AT_HEAD 1
#else
#define FREED_AT_HEAD 0
#endif

/* Free the block headed by page i (its refcount just dropped to 0) and coalesce it. */
static void attach(struct buddy_pool *pool, uint64_t i)
{
	unsigned int order = pool->pages[i].order;

	if (pool->zero == BUDDY_ZERO_ON_FREE)
		memset(page_addr(pool, i), 0, pool->page_size << order);
	pool->pages[i].order = BUDDY_NO_ORDER;
	while (order + 1 < pool->max_order) {
		uint64_t pfn = pool->base_pfn + i;
		uint64_t buddy = pfn ^ (1ull << order);
		uint64_t b = buddy - pool->base_pfn;

		if (buddy < pool->base_pfn || b >= pool->nr_pages)
			break;
#ifndef BUDDY_BUG_HELD_BUDDY
		if (pool->pages[b].refcount != 0)
			break;
#endif
		if (pool->pages[b].order != order)
			break;
#ifdef BUDDY_BUG_MERGE
		if (b < i)
			break;
#endif
		list_del(pool, (uint32_t)b, order);
		pool->pages[b].order = BUDDY_NO_ORDER;
		if (b < i)
			i = b;
		order++;
	}
	list_add(pool, (uint32_t)i, order, FREED_AT_HEAD);
}

int buddy_init(struct buddy_pool *pool, void *mem, struct buddy_page *pages, uint64_t nr_pages,
	       uint64_t base_pfn, uint64_t reserved, unsigned int order_cap, uint64_t page_size,
	       enum buddy_zero zero)
{
	unsigned int width = 0;

	if (nr_pages == 0 || nr_pages >= BUDDY_NONE || reserved > nr_pages || order_cap == 0 ||
	    base_pfn > UINT64_MAX - (nr_pages - 1) || page_size < 64)
		return -1;
	while (width < 64 && (nr_pages >> width) != 0)
		width++;
	pool->mem = mem;
	pool->pages = pages;
	pool->nr_pages = nr_pages;
	pool->base_pfn = base_pfn;
	pool->page_size = page_size;
	pool->free_pages = 0;
	pool->max_order = order_cap < width ? order_cap : width;
	pool->zero = zero;
	for (unsigned int k = 0; k < BUDDY_MAX_ORDERS; k++)
		pool->head[k] = pool->tail[k] = BUDDY_NONE;
	for (uint64_t i = 0; i < nr_pages; i++)
		pages[i] = (struct buddy_page){ BUDDY_NONE, BUDDY_NONE, 1, 0 };
	/* The state pKVM reaches by putting every page past the reserved ones in turn, laid out
	 * at once: the largest aligned blocks that fit, in increasing pfn order. */
	for (uint64_t i = reserved; i < nr_pages; i += 1ull << pages[i].order) {
		uint64_t pfn = base_pfn + i;
		unsigned int order = 0;

		while (order + 1 < pool->max_order && pfn % (2ull << order) == 0 &&
		       i + (2ull << order) <= nr_pages)
			order++;
		for (uint64_t t = i; t < i + (1ull << order); t++)
			pages[t] = (struct buddy_page){ BUDDY_NONE, BUDDY_NONE, 0, BUDDY_NO_ORDER };
		list_add(pool, (uint32_t)i, order, 0);
	}
	return 0;
}

void *buddy_alloc(struct buddy_pool *pool, unsigned int order)
{
	unsigned int k = order;
	uint32_t i;

	while (k < pool->max_order && pool->head[k] == BUDDY_NONE)
		k++;
	if (k >= pool->max_order)
		return NULL;
	i = pool->head[k];
	list_del(pool, i, k);
	while (k > order) { /* split: the upper half joins the tail of the list below */
		k--;
		list_add(pool, i + (1u << k), k, 0);
	}
	pool->pages[i].order = (uint8_t)order;
	pool->pages[i].refcount = 1;
	if (pool->zero == BUDDY_ZERO_ON_ALLOC)
		memset(page_addr(pool, i), 0, pool->page_size << order);
	return page_addr(pool, i);
}

int64_t buddy_index(const struct buddy_pool *pool, const void *addr)
{
	uintptr_t off = (uintptr_t)addr - (uintptr_t)pool->mem;

	if ((uintptr_t)addr < (uintptr_t)pool->mem || off % pool->page_size != 0 ||
	    off / pool->page_size >= pool->nr_pages)
		return -1;
	return (int64_t)(off / pool->page_size);
}

/* The index of the held page at addr, or -1. */
static int64_t held(const struct buddy_pool *pool, const void *addr)
{
	int64_t i = buddy_index(pool, addr);

	return i >= 0 && pool->pages[i].refcount != 0 ? i : -1;
}

int buddy_put(struct buddy_pool *pool, void *addr)
{
	int64_t i = held(pool, addr);

	if (i < 0)
		return -1;
	if (--pool->pages[i].refcount == 0)
		attach(pool, (uint64_t)i);
	return 0;
}

int buddy_get(struct buddy_pool *pool, void *addr)
{
	int64_t i = held(pool, addr);

	if (i < 0 || pool->pages[i].refcount == UINT16_MAX)
		return -1;
	pool->pages[i].refcount++;
	return 0;
}

int buddy_split(struct buddy_pool *pool, void *addr)
{
	int64_t i = held(pool, addr);

	if (i < 0)
		return -1;
	for (uint64_t t = 1; t < (1ull << pool->pages[i].order); t++)
		pool->pages[i + t] = (struct buddy_page){ BUDDY_NONE, BUDDY_NONE, 1, 0 };
	pool->pages[i].order = 0;
	return 0;
}
