/* The first n < 8 floats of an 8-float vector stored to p, for kernels built for AVX2: as
 * stores of 4, 2 and 1 floats. A masked store (vmaskmovps) takes about 12 cycles on AMD's
 * cores (4.5 ns against 1 ns for the three stores, one thread of a Zen 3), and the last
 * columns of every row of a 7x7 or 14x14 map take this path.
 *
 * ce_store_first: the same for a vector of the build's width (16 floats with AVX-512, a
 * masked store; 8 with AVX; 4 otherwise), for the kernels whose vectors are that wide. */
#ifndef CE_STORE_PART_H
#define CE_STORE_PART_H

#include <string.h>

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

#if defined(__AVX512F__)
#define CE_SP_VW 16
#include <immintrin.h>
#elif defined(__AVX__)
#define CE_SP_VW 8
#else
#define CE_SP_VW 4
#endif
typedef float ce_sp_vf __attribute__((vector_size(CE_SP_VW * 4)));

static inline void ce_store_first(float *p, ce_sp_vf v, int n)
{
#if CE_SP_VW == 16
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#elif defined(__AVX2__)
    ce_store_first8(p, (__m256)v, n);
#else
    float t[CE_SP_VW];
    memcpy(t, &v, sizeof t);
    memcpy(p, t, (size_t)n * sizeof(float));
#endif
}

#endif
