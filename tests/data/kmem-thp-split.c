/* A short workload for a kmem trace: one THP allocated, split and freed in pieces, plus some churn. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define P 4096UL
#define HUGE (2UL << 20)

int main(void)
{
	char *raw = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));

	if (raw == MAP_FAILED)
		return 1;
	madvise(a, HUGE, MADV_HUGEPAGE);
	memset(a, 1, HUGE);                   /* one order-9 allocation */
	madvise(a + 64 * P, 64 * P, MADV_DONTNEED); /* the PMD is split */
	madvise(a, 32 * P, MADV_COLD);         /* the folio is split; 64 pages freed */
	for (int i = 0; i < 8; i++) {         /* anonymous churn: order-0 faults and frees */
		size_t n = (size_t)(i % 4 + 1) * 64 * P;
		char *b = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (b == MAP_FAILED)
			return 1;
		memset(b, 2, n);
		if (i % 2)
			munmap(b, n);
	}
	munmap(raw, 2 * HUGE);                /* the rest of the THP, page by page */
	return 0;
}
