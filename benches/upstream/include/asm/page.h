/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pagebuddy's user-space stand-in for arm64's <asm/page.h>: 4 KiB pages (the kernel's
 * CONFIG_ARM64_PAGE_SHIFT=12; PAGE_SIZE an unsigned long, as the kernel's _AC(1, UL)), and
 * get_order() as asm-generic/getorder.h computes it for a size known only at run time
 * (page_alloc.c calls it once, in hyp_pool_init).
 */
#ifndef PAGEBUDDY_SHIM_ASM_PAGE_H
#define PAGEBUDDY_SHIM_ASM_PAGE_H

#define PAGE_SHIFT 12
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define PAGE_MASK (~(PAGE_SIZE - 1))

/* The smallest order whose block holds `size` bytes: fls64((size - 1) >> PAGE_SHIFT). */
static inline int get_order(unsigned long size)
{
	size--;
	size >>= PAGE_SHIFT;
	return size ? 64 - __builtin_clzl(size) : 0;
}

#endif /* PAGEBUDDY_SHIM_ASM_PAGE_H */
