/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pagebuddy's user-space stand-in for pKVM's <nvhe/spinlock.h> (arm64 assembly upstream), in
 * two builds:
 *
 *   default                        no lock: hyp_spin_lock and hyp_spin_unlock do nothing (not
 *                                  even a compiler barrier), as pagebuddy's Pool, which takes
 *                                  `&mut self` and no lock
 *   -DPAGEBUDDY_SHIM_TICKET_LOCK   upstream's ticket lock, uncontended: an atomic fetch-add of
 *                                  1 << 16 with acquire order takes a ticket (upstream: ldadda,
 *                                  or an ldaxr/stxr loop), a spin with acquire loads until the
 *                                  owner is that ticket (never spins here: one thread), and an
 *                                  unlock that stores owner + 1 with release order (upstream's
 *                                  LL/SC form: ldrh, add, stlrh). On x86-64 the fetch-add is a
 *                                  `lock xadd`, a full barrier, and the release store a plain
 *                                  mov.
 *
 * The lock word is upstream's: a u32 whose low half is the owner and high half the next
 * ticket (little-endian).
 */
#ifndef PAGEBUDDY_SHIM_NVHE_SPINLOCK_H
#define PAGEBUDDY_SHIM_NVHE_SPINLOCK_H

#include <linux/types.h>

typedef union hyp_spinlock {
	u32 __val;
	struct {
		u16 owner, next;
	};
} hyp_spinlock_t;

#define hyp_spin_lock_init(l)                                                \
	do {                                                                 \
		*(l) = (hyp_spinlock_t){ .__val = 0 };                       \
	} while (0)

#ifdef PAGEBUDDY_SHIM_TICKET_LOCK

static inline void hyp_spin_lock(hyp_spinlock_t *lock)
{
	u32 old = __atomic_fetch_add(&lock->__val, 1u << 16, __ATOMIC_ACQUIRE);
	u16 ticket = (u16)(old >> 16);

	if ((u16)old == ticket)
		return;
	while (__atomic_load_n(&lock->owner, __ATOMIC_ACQUIRE) != ticket) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
}

static inline void hyp_spin_unlock(hyp_spinlock_t *lock)
{
	u16 owner = __atomic_load_n(&lock->owner, __ATOMIC_RELAXED);

	__atomic_store_n(&lock->owner, (u16)(owner + 1), __ATOMIC_RELEASE);
}

static inline bool hyp_spin_is_locked(hyp_spinlock_t *lock)
{
	hyp_spinlock_t v;

	v.__val = __atomic_load_n(&lock->__val, __ATOMIC_RELAXED);
	return v.owner != v.next;
}

#else

static inline void hyp_spin_lock(hyp_spinlock_t *lock)
{
	(void)lock;
}

static inline void hyp_spin_unlock(hyp_spinlock_t *lock)
{
	(void)lock;
}

static inline bool hyp_spin_is_locked(hyp_spinlock_t *lock)
{
	(void)lock;
	return false;
}

#endif

static inline void hyp_assert_lock_held(hyp_spinlock_t *lock)
{
	(void)lock;
}

#endif /* PAGEBUDDY_SHIM_NVHE_SPINLOCK_H */
