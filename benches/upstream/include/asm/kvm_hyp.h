/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pagebuddy's user-space stand-in for arm64's <asm/kvm_hyp.h>, the first header upstream
 * pKVM's page_alloc.c includes: everything else the file uses that its own headers
 * (nvhe/gfp.h, nvhe/memory.h) do not define.
 *
 *   MAX_ORDER        11, arm64's default ARCH_FORCE_MAX_ORDER with 4 KiB pages in 6.1
 *   USHRT_MAX        from <limits.h> (HYP_NO_ORDER, the refcount bound)
 *   min()            the smaller of two values, each evaluated once
 *   BUG_ON()         a trap instruction when the condition holds (EL2's BUG() is a brk)
 *   WARN_ON()        the condition, reported on stderr (page_alloc.c of 6.1 uses none)
 *   memset           the C library's, except with -DPAGEBUDDY_SHIM_ZERO_OFF (below)
 *
 * Zero off (-DPAGEBUDDY_SHIM_ZERO_OFF, for that object of page_alloc.c only): a memset whose
 * length is not a compile-time constant expands to nothing. In page_alloc.c that is exactly
 * one call, the zeroing of a freed block in __hyp_attach_page,
 * `memset(hyp_page_to_virt(p), 0, PAGE_SIZE << p->order)`; the 16-byte clearing of a list node
 * in page_remove_from_list (`memset(node, 0, sizeof(*node))`, a constant length) stays, as
 * pagebuddy's intrusive store clears a link leaving its list under every zero policy.
 * scripts/upstream_c.py checks the objects: the zero-on one calls memset, the zero-off one
 * does not.
 */
#ifndef PAGEBUDDY_SHIM_ASM_KVM_HYP_H
#define PAGEBUDDY_SHIM_ASM_KVM_HYP_H

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <linux/types.h>
#include <asm/page.h>
#include <asm/kvm_mmu.h>

#define MAX_ORDER 11

#define min(a, b)                                                            \
	({                                                                   \
		__auto_type pagebuddy_min_a = (a);                           \
		__auto_type pagebuddy_min_b = (b);                           \
		pagebuddy_min_a < pagebuddy_min_b ? pagebuddy_min_a : pagebuddy_min_b; \
	})

#define BUG_ON(cond)                                                         \
	do {                                                                 \
		if (__builtin_expect(!!(cond), 0))                           \
			__builtin_trap();                                    \
	} while (0)

#define WARN_ON(cond)                                                        \
	({                                                                   \
		int pagebuddy_warn = !!(cond);                               \
		if (__builtin_expect(pagebuddy_warn, 0))                     \
			fprintf(stderr, "WARN_ON(%s) at %s:%d\n", #cond,      \
				__FILE__, __LINE__);                         \
		pagebuddy_warn;                                              \
	})

#ifdef PAGEBUDDY_SHIM_ZERO_OFF
#undef memset
#define memset(s, c, n)                                                      \
	(__builtin_constant_p(n) ? (void)__builtin_memset((s), (c), (n)) : (void)0)
#endif

#endif /* PAGEBUDDY_SHIM_ASM_KVM_HYP_H */
