/* What a fresh page of memory costs on this machine (BENCHMARKS.md, issue 24 at stop 30):
 * 12.8 MB (the embedded backbone's weights) mapped fresh and touched page by page, the
 * same with MAP_POPULATE, the same with transparent huge pages advised, and a warm memcpy of
 * it for scale. Three rounds.
 *
 *   cc -O2 -o /tmp/page_fault_cost bench/page_fault_cost.c && /tmp/page_fault_cost
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static char *fresh(size_t n, int flags) {
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 0;
    }
    return p;
}

int main(void) {
    const size_t n = 12800000;
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        char *touched = fresh(n, 0);
        if (!touched) return 1;
        for (size_t i = 0; i < n; i += 4096) touched[i] = 1;
        double t1 = now();
        char *populated = fresh(n, MAP_POPULATE);
        if (!populated) return 1;
        double t2 = now();
        char *huge = fresh(n, 0);
        if (!huge) return 1;
        madvise(huge, n, MADV_HUGEPAGE);
        for (size_t i = 0; i < n; i += 4096) huge[i] = 1;
        double t3 = now();
        memcpy(populated, touched, n);
        double t4 = now();
        printf("fresh pages touched %.2f ms, MAP_POPULATE %.2f ms, huge pages %.2f ms, "
               "memcpy (warm) %.2f ms\n",
               (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3);
        munmap(touched, n);
        munmap(populated, n);
        munmap(huge, n);
    }
    return 0;
}
