// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * The floor benchmark's profile mode (benches/benches/floor.rs, BENCH_FLOOR_PROFILE) on
 * upstream pKVM's page allocator, arch/arm64/kvm/hyp/nvhe/page_alloc.c, compiled unchanged in
 * user space over the shims in benches/upstream/include (scripts/upstream_c.py builds and runs
 * it; docs/upstream-c.md).
 *
 *     upstream-<zero>-<lock> <hot|churn|mixed|zeroing|init> <shift> <ops> [trace-limit]
 *
 * A pool of 2^shift pages of 4 KiB from pfn 0, nothing reserved, over an anonymous mapping
 * (no advice: 4 KiB pages where transparent huge pages are `madvise` or `never`) whose first
 * byte is physical address 0, and hyp_vmemmap over another; every page of both written once
 * before the pool is built (floor.rs's BENCH_FLOOR_PREFAULT=1). Then, as floor.rs: the
 * workload's state, `ops` steps untimed, `ops` steps timed, and "X ns per operation" on stderr.
 * The workloads, generator and seeds are floor.rs's and benches/benches/common's, step for
 * step; handles are the virtual addresses hyp_alloc_pages returns, freed with hyp_put_page.
 *
 *   hot    alloc order 0 + free, on a fresh pool
 *   churn  every page allocated at order 0, a random half freed in random order; each step
 *          frees a random held page and allocates one in its place
 *   mixed  orders 0 to 9 (P(k) ~ 2^-(k+1)) allocated while fewer than half the pages are held,
 *          a random held block freed otherwise; 2 * 2^shift steps before the `ops` untimed ones
 *   zeroing  the churn's state, then each step only zeroes a random held page with the C
 *          library's memset (no allocator call): the zero-on churn step's floor
 *   init   hyp_pool_init over the whole pool (after the first, every page is free again, as
 *          hyp_pool_init expects)
 *
 * With a trace limit, also prints on stdout what floor.rs's BENCH_FLOOR_TRACE prints: the
 * generator's first values, the number of allocations with a hash of every result in order
 * (pfns; a failure as UINT64_MAX) and the first `limit` results after the state is built.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* As page_alloc.c: asm/kvm_hyp.h (the shim) first, then pKVM's own headers over the shims. */
#include <asm/kvm_hyp.h>
#include <nvhe/gfp.h>
#include <nvhe/memory.h>

/* nvhe/memory.h's offset from hypervisor virtual to physical addresses (asm/kvm_mmu.h shim). */
s64 hyp_physvirt_offset;

#define SEED_CHURN 0x9E3779B97F4A7C15ULL
#define SEED_MIXED 0x2545F4914F6CDD1DULL
#define MIXED_MAX_ORDER 9
#define TRACE_BASIS 0xCBF29CE484222325ULL
#define TRACE_PRIME 0x100000001B3ULL
#define NONE UINT64_MAX

/* benches/benches/common's Rng: xorshift64*, seeded with seed | 1. */
struct rng {
	uint64_t s;
};

static inline struct rng rng_new(uint64_t seed)
{
	return (struct rng){ seed | 1 };
}

static inline uint64_t rng_next(struct rng *r)
{
	uint64_t x = r->s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in 0..n: multiply-shift, as Rng::below. */
static inline size_t rng_below(struct rng *r, size_t n)
{
	return (size_t)(((unsigned __int128)rng_next(r) * n) >> 64);
}

/* The exponent of the mixed workload's orders: trailing zeros of next | 2^63. */
static inline unsigned rng_tz(struct rng *r)
{
	return (unsigned)__builtin_ctzll(rng_next(r) | (1ULL << 63));
}

/* Fisher-Yates from the last element down, as Rng::shuffle. */
static void shuffle(struct rng *r, void **v, size_t len)
{
	for (size_t i = len; i-- > 1;) {
		size_t j = rng_below(r, i + 1);
		void *t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
}

static struct hyp_pool pool;
static size_t nr;

/* The trace, when asked for (`traced` is a constant in each specialisation below). */
static struct {
	uint64_t allocs, hash, marked_at;
	int marked;
	uint64_t *first;
	size_t len, limit;
} tr;

static __attribute__((noreturn, cold, noinline)) void die(const char *what)
{
	fprintf(stderr, "upstream harness: %s\n", what);
	exit(1);
}

static inline __attribute__((always_inline)) void *alloc(unsigned order, int traced)
{
	void *p = hyp_alloc_pages(&pool, (unsigned short)order);

	if (traced) {
		uint64_t v = p ? (uint64_t)hyp_virt_to_pfn(p) : NONE;

		tr.allocs++;
		tr.hash = (tr.hash ^ v) * TRACE_PRIME;
		if (tr.marked && tr.len < tr.limit)
			tr.first[tr.len++] = v;
	}
	return p;
}

static inline __attribute__((always_inline)) void release(void *p)
{
	hyp_put_page(&pool, p);
}

static void mark(void)
{
	tr.marked = 1;
	tr.marked_at = tr.allocs;
}

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void report(double t0, double t1, size_t ops)
{
	fprintf(stderr, "%.2f ns per operation\n", (t1 - t0) / (double)(ops ? ops : 1));
}

/*
 * Each workload: its state, `ops` untimed steps, `ops` timed ones. The step loops are written
 * out twice (warm-up, timed) as floor.rs's warm_then_profile runs the same closure twice.
 */
static inline __attribute__((always_inline)) void hot(size_t ops, int traced)
{
	if (traced)
		mark();
	for (size_t i = 0; i < ops; i++) {
		void *h = alloc(0, traced);

		if (!h)
			die("hot: alloc");
		release(h);
	}
	double t0 = now_ns();
	for (size_t i = 0; i < ops; i++) {
		void *h = alloc(0, traced);

		if (!h)
			die("hot: alloc");
		__asm__ volatile("" : : "r"(h) : "memory"); /* floor.rs's black_box(h) */
		release(h);
	}
	report(t0, now_ns(), ops);
}

/* The churn's state: every page allocated at order 0, a random half freed; all[0..nr / 2] held. */
static inline __attribute__((always_inline)) void **churn_state(int traced)
{
	void **all = malloc(nr * sizeof(*all));

	if (!all)
		die("churn: malloc");
	for (size_t i = 0; i < nr; i++)
		if (!(all[i] = alloc(0, traced)))
			die("churn: fill");
	struct rng fill = rng_new(SEED_CHURN ^ 1);

	shuffle(&fill, all, nr);
	for (size_t i = nr / 2; i < nr; i++)
		release(all[i]);
	return all;
}

static inline __attribute__((always_inline)) void churn(size_t ops, int traced)
{
	void **all = churn_state(traced);
	size_t held = nr / 2;

	if (traced)
		mark();
	struct rng r = rng_new(SEED_CHURN);

	for (size_t s = 0; s < ops; s++) {
		size_t i = rng_below(&r, held);

		release(all[i]);
		if (!(all[i] = alloc(0, traced)))
			die("churn: alloc");
	}
	double t0 = now_ns();
	for (size_t s = 0; s < ops; s++) {
		size_t i = rng_below(&r, held);

		release(all[i]);
		if (!(all[i] = alloc(0, traced)))
			die("churn: alloc");
	}
	report(t0, now_ns(), ops);
	free(all);
}

/*
 * The C library's memset, called through a pointer: the compiler cannot put stores of its own
 * in its place, as it may for a memset of a constant size.
 */
static void *(*volatile zero_page)(void *, int, size_t) = memset;

/*
 * The churn's zeroing alone: the churn's state, then each step writes zeros over a random held
 * page (the churn's generator and seed) with the C library's memset, the function page_alloc.c
 * zeroes a freed page with, and calls nothing of the allocator. A churn step with zero on free
 * zeroes such a page, on either side: this is its floor.
 */
static void zeroing(size_t ops)
{
	void **all = churn_state(0);
	size_t held = nr / 2;
	struct rng r = rng_new(SEED_CHURN);

	for (size_t s = 0; s < ops; s++)
		zero_page(all[rng_below(&r, held)], 0, PAGE_SIZE);
	double t0 = now_ns();
	for (size_t s = 0; s < ops; s++)
		zero_page(all[rng_below(&r, held)], 0, PAGE_SIZE);
	report(t0, now_ns(), ops);
	free(all);
}

struct block {
	void *h;
	unsigned order;
};

struct mixed {
	struct block *held;
	size_t len, pages;
	struct rng r;
};

static inline __attribute__((always_inline)) void mixed_step(struct mixed *m, int traced)
{
	if (m->pages < nr / 2) {
		unsigned k;

		do
			k = rng_tz(&m->r);
		while (k > MIXED_MAX_ORDER);
		void *h = alloc(k, traced);

		if (h) {
			m->held[m->len++] = (struct block){ h, k };
			m->pages += (size_t)1 << k;
		}
	} else {
		/* Vec::swap_remove: the last element takes the place of the one removed. */
		size_t i = rng_below(&m->r, m->len);
		struct block b = m->held[i];

		m->held[i] = m->held[--m->len];
		release(b.h);
		m->pages -= (size_t)1 << b.order;
	}
}

static inline __attribute__((always_inline)) void mixed(size_t ops, int traced)
{
	struct mixed m = { malloc(nr * sizeof(struct block)), 0, 0, rng_new(SEED_MIXED) };

	if (!m.held)
		die("mixed: malloc");
	for (size_t s = 0; s < 2 * nr; s++)
		mixed_step(&m, traced);
	if (traced)
		mark();
	for (size_t s = 0; s < ops; s++)
		mixed_step(&m, traced);
	double t0 = now_ns();
	for (size_t s = 0; s < ops; s++)
		mixed_step(&m, traced);
	report(t0, now_ns(), ops);
	free(m.held);
}

static void init(size_t ops)
{
	for (size_t i = 0; i < ops; i++)
		hyp_pool_init(&pool, 0, (unsigned int)nr, 0);
	double t0 = now_ns();
	for (size_t i = 0; i < ops; i++) {
		hyp_pool_init(&pool, 0, (unsigned int)nr, 0);
		__asm__ volatile("" : : : "memory");
	}
	report(t0, now_ns(), ops);
}

/* Two copies, so that the timed loops of run_plain are compiled with tracing a constant 0. */
static __attribute__((noinline)) void run_plain(const char *w, size_t ops)
{
	if (!strcmp(w, "hot"))
		hot(ops, 0);
	else if (!strcmp(w, "churn"))
		churn(ops, 0);
	else if (!strcmp(w, "mixed"))
		mixed(ops, 0);
	else if (!strcmp(w, "zeroing"))
		zeroing(ops);
	else
		die("workload is hot, churn, mixed, zeroing or init");
}

static __attribute__((noinline)) void run_traced(const char *w, size_t ops)
{
	if (!strcmp(w, "hot"))
		hot(ops, 1);
	else if (!strcmp(w, "churn"))
		churn(ops, 1);
	else if (!strcmp(w, "mixed"))
		mixed(ops, 1);
	else
		die("workload is hot, churn or mixed");
}

/* The generator's first values, in floor.rs's trace_rng format. */
static void trace_rng(void)
{
	const uint64_t seeds[] = { SEED_CHURN, SEED_CHURN ^ 1, SEED_MIXED };

	printf("trace rng:");
	for (size_t s = 0; s < 3; s++) {
		struct rng r = rng_new(seeds[s]);

		for (int i = 0; i < 3; i++)
			printf(" %016" PRIx64, rng_next(&r));
		printf(" %zu", rng_below(&r, 1000));
		printf(" %u", rng_tz(&r));
	}
	printf("\n");
}

#define HUGE_PAGE ((size_t)2 << 20)

/*
 * Maps `bytes` of anonymous memory and writes a zero into each of its 4 KiB pages. With
 * UPSTREAM_HUGE=1 in the environment (floor.rs's BENCH_FLOOR_HUGE=1), the mapping is aligned to
 * 2 MiB and advised with MADV_HUGEPAGE before it is touched, as pagebuddy's MappedSlice does.
 */
static void *map_touched(size_t bytes)
{
	const char *huge = getenv("UPSTREAM_HUGE");
	int advise = huge && !strcmp(huge, "1");
	size_t len = advise ? bytes + HUGE_PAGE : bytes;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	if (advise) {
		p = (void *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
		if (madvise(p, bytes, MADV_HUGEPAGE))
			die("madvise(MADV_HUGEPAGE)");
	}
	for (size_t off = 0; off < bytes; off += 4096)
		((volatile unsigned char *)p)[off] = 0;
	return p;
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 5)
		die("usage: upstream-<zero>-<lock> <hot|churn|mixed|zeroing|init> <shift> <ops> "
		    "[trace-limit]");
	const char *w = argv[1];
	unsigned shift = (unsigned)strtoul(argv[2], NULL, 10);
	size_t ops = (size_t)strtoull(argv[3], NULL, 10);

	if (shift < 10 || shift > 20)
		die("shift: 10 to 20 (nr_pages is an unsigned int, (nr_pages + 1) << PAGE_SHIFT too)");
	nr = (size_t)1 << shift;
	void *arena = map_touched(nr * PAGE_SIZE);
	void *vmemmap = map_touched(nr * sizeof(struct hyp_page));

	/* Physical address 0 is the arena's first byte; pfn 0 its first page. */
	hyp_physvirt_offset = -(s64)(uintptr_t)arena;
	__hyp_vmemmap = (u64)(uintptr_t)vmemmap;

	if (argc == 5 && (!strcmp(w, "init") || !strcmp(w, "zeroing")))
		die("init and zeroing have no trace");
	if (!strcmp(w, "init")) {
		init(ops);
	} else {
		hyp_pool_init(&pool, 0, (unsigned int)nr, 0);
		if (argc == 5) {
			tr.limit = (size_t)strtoull(argv[4], NULL, 10);
			tr.hash = TRACE_BASIS;
			tr.first = calloc(tr.limit + 1, sizeof(uint64_t));
			if (!tr.first)
				die("trace: calloc");
			trace_rng();
			run_traced(w, ops);
			printf("trace %s: allocs %" PRIu64 " hash %016" PRIx64 " marked at %" PRIu64 "\n",
			       w, tr.allocs, tr.hash, tr.marked_at);
			printf("trace first:");
			for (size_t i = 0; i < tr.len; i++)
				printf(" %" PRIu64, tr.first[i]);
			printf("\n");
		} else {
			run_plain(w, ops);
		}
	}
	fprintf(stderr, "profiled %zu operations of %s/upstream-c/%u\n", ops, w, shift);
	return 0;
}
