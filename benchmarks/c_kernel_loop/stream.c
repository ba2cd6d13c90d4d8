/*
 * Memory-bandwidth probes for the roofline benchmark (benchmarks/test_bench_roofline.py), built
 * into the same library as kernel_loop.c by benchmarks/cbaseline.py.
 *
 * vlpi_stream_sum  -- read-only: sum of n 64-bit words (8 independent 64-byte accumulators, so the
 *                     loop is bound by the loads, not by the additions).
 * vlpi_stream_copy -- read + write: dst[i] = src[i] for n 64-bit words, 64 bytes per step with
 *                     ordinary stores (no non-temporal hints).
 * vlpi_stream_rmw  -- in place: buf[i] += 1 (every line read once and written back once, the way
 *                     the save updates pending-table lines).
 * n must be a multiple of 64 (words); buffers 64-byte aligned.
 */
#include <stdint.h>

typedef uint64_t v8u64 __attribute__((vector_size(64), aligned(64)));

uint64_t vlpi_stream_sum(const uint64_t *src, int64_t n)
{
    const v8u64 *p = (const v8u64 *)src;
    v8u64 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    for (int64_t k = 0; k < n / 8; k += 8) {
        a0 += p[k];     a1 += p[k + 1]; a2 += p[k + 2]; a3 += p[k + 3];
        a4 += p[k + 4]; a5 += p[k + 5]; a6 += p[k + 6]; a7 += p[k + 7];
    }
    v8u64 a = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    uint64_t s = 0;
    for (int j = 0; j < 8; j++)
        s += a[j];
    return s;
}

void vlpi_stream_copy(uint64_t *dst, const uint64_t *src, int64_t n)
{
    v8u64 *d = (v8u64 *)dst;
    const v8u64 *p = (const v8u64 *)src;
    for (int64_t k = 0; k < n / 8; k += 8) {
        d[k] = p[k];         d[k + 1] = p[k + 1]; d[k + 2] = p[k + 2]; d[k + 3] = p[k + 3];
        d[k + 4] = p[k + 4]; d[k + 5] = p[k + 5]; d[k + 6] = p[k + 6]; d[k + 7] = p[k + 7];
    }
}

/* In-place read-modify-write: src[i] += 1 for n 64-bit words (each line read once, written back
 * once, as the save updates pending-table lines). */
void vlpi_stream_rmw(uint64_t *buf, int64_t n)
{
    v8u64 *p = (v8u64 *)buf;
    const v8u64 one = {1, 1, 1, 1, 1, 1, 1, 1};
    for (int64_t k = 0; k < n / 8; k += 8) {
        p[k] += one;     p[k + 1] += one; p[k + 2] += one; p[k + 3] += one;
        p[k + 4] += one; p[k + 5] += one; p[k + 6] += one; p[k + 7] += one;
    }
}
