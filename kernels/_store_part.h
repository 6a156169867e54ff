/* The first n < 8 floats of an 8-float vector stored to p, for kernels built for AVX2: as
 * stores of 4, 2 and 1 floats. A masked store (vmaskmovps) takes about 12 cycles on AMD's
 * cores (4.5 ns against 1 ns for the three stores, one thread of a Zen 3), and the last
 * columns of every row of a 7x7 or 14x14 map take this path. */
#ifndef CE_STORE_PART_H
#define CE_STORE_PART_H

#if defined(__AVX2__)
#include <immintrin.h>

static inline void ce_store_first8(float *p, __m256 v, int n)
{
    __m128 q = _mm256_castps256_ps128(v);
    if (n & 4) {
        _mm_storeu_ps(p, q);
        q = _mm256_extractf128_ps(v, 1);
        p += 4;
    }
    if (n & 2) {
        _mm_storel_pi((__m64 *)p, q);
        q = _mm_movehl_ps(q, q);
        p += 2;
    }
    if (n & 1)
        _mm_store_ss(p, q);
}
#endif

#endif
