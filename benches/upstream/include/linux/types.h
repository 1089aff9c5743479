/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pagebuddy's user-space stand-in for the kernel's <linux/types.h>, for compiling upstream
 * pKVM's arch/arm64/kvm/hyp/nvhe/page_alloc.c unchanged (scripts/upstream_c.py,
 * docs/upstream-c.md): the kernel's fixed-width names over C's, as on arm64 (u64 is an
 * unsigned long long, phys_addr_t 64 bits), and struct list_head.
 */
#ifndef PAGEBUDDY_SHIM_LINUX_TYPES_H
#define PAGEBUDDY_SHIM_LINUX_TYPES_H

#include <stdbool.h>
#include <stddef.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;

typedef u64 phys_addr_t;

struct list_head {
	struct list_head *next, *prev;
};

#endif /* PAGEBUDDY_SHIM_LINUX_TYPES_H */
