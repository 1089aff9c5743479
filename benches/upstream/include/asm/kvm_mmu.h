/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pagebuddy's user-space stand-in for arm64's <asm/kvm_mmu.h>: the hypervisor's physical
 * address of a hypervisor virtual address, `virt + hyp_physvirt_offset` as upstream, with
 * hyp_physvirt_offset a global variable read on each use, as at EL2. The harness
 * (benches/upstream/harness.c) defines it so that physical address 0 is the first byte of its
 * arena (nvhe/memory.h's __hyp_va subtracts it back).
 */
#ifndef PAGEBUDDY_SHIM_ASM_KVM_MMU_H
#define PAGEBUDDY_SHIM_ASM_KVM_MMU_H

#include <linux/types.h>

extern s64 hyp_physvirt_offset;

#define __hyp_pa(x) (((phys_addr_t)(x)) + hyp_physvirt_offset)

#endif /* PAGEBUDDY_SHIM_ASM_KVM_MMU_H */
