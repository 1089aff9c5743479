/*
 * pagebuddy_conform.h: the C ABI through which `pagebuddy conform` drives a buddy page
 * allocator (ABI version 1). See docs/conform.md.
 *
 * A library exports the required functions below with C linkage (an adapter of a few dozen
 * lines over the allocator's own API); `pagebuddy conform LIBRARY.so` loads it with ctypes,
 * creates pools, and runs random operations on them in lockstep with pagebuddy's model.
 *
 * Pages are named by page frame number (pfn): a pool of nr_pages pages covers the pfns
 * base_pfn .. base_pfn + nr_pages - 1. A block of order k is 2**k pages whose first pfn is a
 * multiple of 2**k. Valid orders are 0 .. max_order - 1 with
 * max_order = min(order_cap, bit width of nr_pages) (pKVM's rule: 8 pages have orders 0..3).
 * A fresh pool holds its first reserved_pages pages (refcount 1, order 0); every other page
 * is free. Every page of a held block but its first has refcount 0 (a tail page).
 *
 * Every call is made from one thread, on one pool at a time. Calls with bad arguments are made
 * only under `--misuse`; they must return the error code and change nothing.
 */
#ifndef PAGEBUDDY_CONFORM_H
#define PAGEBUDDY_CONFORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PB_CONFORM_ABI 1

/* Return codes: 0, or one of these negative errno values. */
#define PB_OK 0
#define PB_ENOMEM (-12) /* pb_alloc: no free block of that order or above */
#define PB_EFAULT (-14) /* pb_put, pb_get, pb_split: pfn outside the pool or not held */
#define PB_EINVAL (-22) /* pb_alloc: order outside 0 .. max_order - 1 */

/* Zero policies: when a block's bytes are cleared. */
#define PB_ZERO_FREE 0  /* when the block is freed (pKVM) */
#define PB_ZERO_ALLOC 1 /* when it is allocated */
#define PB_ZERO_NEVER 2 /* never */

struct pb_pool; /* the implementation's own */

/* -- required ----------------------------------------------------------------------------- */

/* A new pool, or NULL when the implementation cannot build it. Its memory (nr_pages *
 * page_size bytes, if it has any) reads as zero. page_size is a power of two >= 64. */
struct pb_pool *pb_create(uint64_t nr_pages, uint64_t base_pfn, uint64_t reserved_pages,
                          unsigned int order_cap, int zero, uint64_t page_size);
/* Free the pool and everything it holds. */
void pb_destroy(struct pb_pool *pool);
/* Allocate a block of 2**order pages (refcount 1); 0 and its first pfn in *pfn, or
 * PB_EINVAL / PB_ENOMEM and *pfn untouched. */
int pb_alloc(struct pb_pool *pool, unsigned int order, uint64_t *pfn);
/* Drop one reference to the held page pfn; the last one frees its block (and coalesces it
 * with its free buddies). 0, or PB_EFAULT. */
int pb_put(struct pb_pool *pool, uint64_t pfn);
/* Take one more reference to the held page pfn. 0, or PB_EFAULT. */
int pb_get(struct pb_pool *pool, uint64_t pfn);
/* Turn the held block headed by pfn into 2**order held order-0 pages (each tail page gets
 * refcount 1). 0, or PB_EFAULT. */
int pb_split(struct pb_pool *pool, uint64_t pfn);
/* The number of pages in free blocks. */
uint64_t pb_free_pages(struct pb_pool *pool);

/* -- optional: conform checks more when these are exported --------------------------------- */

/* The free blocks of order `order` (0 .. max_order - 1), head first (the block pb_alloc takes
 * next): writes the first pfn of at most `cap` of them into pfns, returns how many there are. */
uint64_t pb_free_list(struct pb_pool *pool, unsigned int order, uint64_t *pfns, uint64_t cap);
/* The refcount of page pfn of the pool: 0 for a free page or a tail page. */
unsigned int pb_page_count(struct pb_pool *pool, uint64_t pfn);
/* The address of the bytes of page pfn of the pool (page_size of them; the pages of a block
 * are contiguous). Conform reads each new block (zero policies free and alloc: it must read as
 * zero) and fills it with 0x5a. */
void *pb_page_address(struct pb_pool *pool, uint64_t pfn);

#ifdef __cplusplus
}
#endif

#endif /* PAGEBUDDY_CONFORM_H */
