/* adapter.c: pagebuddy_conform.h over buddy.h, the example allocator's own API. */
#include <stdlib.h>

#include "buddy.h"
#include "pagebuddy_conform.h"

struct pb_pool { struct buddy_pool buddy; };

struct pb_pool *pb_create(uint64_t nr_pages, uint64_t base_pfn, uint64_t reserved_pages,
			  unsigned int order_cap, int zero, uint64_t page_size)
{
	struct pb_pool *pool = malloc(sizeof(*pool));
	void *mem = nr_pages < UINT32_MAX ? calloc(nr_pages, page_size) : NULL;
	struct buddy_page *pages = mem ? malloc(nr_pages * sizeof(*pages)) : NULL;

	if (pool && pages && buddy_init(&pool->buddy, mem, pages, nr_pages, base_pfn, reserved_pages,
					order_cap, page_size, (enum buddy_zero)zero) == 0)
		return pool;
	free(pages), free(mem), free(pool);
	return NULL;
}

void pb_destroy(struct pb_pool *pool)
{ free(pool->buddy.pages), free(pool->buddy.mem), free(pool); }

void *pb_page_address(struct pb_pool *pool, uint64_t pfn)
{
	uint64_t i = pfn - pool->buddy.base_pfn; /* wraps below the pool: caught just after */

	return i < pool->buddy.nr_pages ? pool->buddy.mem + i * pool->buddy.page_size : NULL;
}

int pb_alloc(struct pb_pool *pool, unsigned int order, uint64_t *pfn)
{
	void *block = buddy_alloc(&pool->buddy, order);

	if (!block)
		return order < pool->buddy.max_order ? PB_ENOMEM : PB_EINVAL;
	*pfn = pool->buddy.base_pfn + (uint64_t)buddy_index(&pool->buddy, block);
	return PB_OK;
}

#define PAGE(fn) (fn(&pool->buddy, pb_page_address(pool, pfn)) ? PB_EFAULT : PB_OK)
int pb_put(struct pb_pool *pool, uint64_t pfn) { return PAGE(buddy_put); }
int pb_get(struct pb_pool *pool, uint64_t pfn) { return PAGE(buddy_get); }
int pb_split(struct pb_pool *pool, uint64_t pfn) { return PAGE(buddy_split); }
uint64_t pb_free_pages(struct pb_pool *pool) { return pool->buddy.free_pages; }

uint64_t pb_free_list(struct pb_pool *pool, unsigned int order, uint64_t *pfns, uint64_t cap)
{
	uint64_t n = 0;

	for (uint32_t i = pool->buddy.head[order]; i != BUDDY_NONE; i = pool->buddy.pages[i].next)
		if (n++ < cap)
			pfns[n - 1] = pool->buddy.base_pfn + i;
	return n;
}

unsigned int pb_page_count(struct pb_pool *pool, uint64_t pfn)
{ return pool->buddy.pages[pfn - pool->buddy.base_pfn].refcount; }
