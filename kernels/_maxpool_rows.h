/* Max pooling of NCHW planes without indices, rows first (kernels/pool.pyx): the row and
 * column passes on vectors, the stride-2 split into even and odd columns, and a whole plane
 * by bands of output rows (ce_mp_plane). */
#ifndef CE_MAXPOOL_ROWS_H
#define CE_MAXPOOL_ROWS_H

#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* one register of floats: 16 with AVX-512, 8 otherwise (16-float vectors on AVX2 went
   through the stack in the column pass: a 64x112x112 3x3 stride-2 pool took 0.97 ms) */
#if defined(__AVX512F__)
#define CE_MP_VW 16
#else
#define CE_MP_VW 8
#endif
typedef float ce_mp_vf __attribute__((vector_size(CE_MP_VW * 4)));
typedef float ce_mp_vfu __attribute__((vector_size(CE_MP_VW * 4), aligned(4), may_alias));
typedef int ce_mp_vi __attribute__((vector_size(CE_MP_VW * 4)));

/* m where v > m or v is NaN takes v: the maximum's update, NaN winning as in the scan;
 * a select on masks, never a branch (on random data a branch mispredicts every other
 * element: the loops' scalar tails made pools of 110 columns 3x slower than of 112) */
static inline ce_mp_vf ce_mp_take(ce_mp_vf m, ce_mp_vf v)
{
    ce_mp_vi take = (v > m) | (v != v);
    return (ce_mp_vf)(((ce_mp_vi)v & take) | ((ce_mp_vi)m & ~take));
}

#if defined(__AVX2__) && !defined(__AVX512F__)
#include <immintrin.h>
#include "_store_part.h"
/* lanes i < n set, for the masked loads of 8-float vectors */
static inline __m256i ce_mp_mask(ptrdiff_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

/* dst[i] = take(dst[i], src[i]) for the last n < CE_MP_VW elements, by masked moves;
 * dst has room for a whole vector (-inf lanes beyond n leave it as it was) */
static inline void ce_mp_tail(const float *src, float *dst, ptrdiff_t n)
{
#if defined(__AVX512F__)
    __mmask16 k = (__mmask16)((1u << n) - 1);
    ce_mp_vf v = (ce_mp_vf)_mm512_maskz_loadu_ps(k, src);
    ce_mp_vf m = (ce_mp_vf)_mm512_maskz_loadu_ps(k, dst);
    _mm512_mask_storeu_ps(dst, k, (__m512)ce_mp_take(m, v));
#elif defined(__AVX2__)
    /* masked moves: memcpy of a length unknown to the compiler is a library call, three
       per row, which made a 512x14x14 pool cost 1 us a plane (gcc turns a loop of element
       moves back into the same call) */
    __m256i k = ce_mp_mask(n);
    ce_mp_vf v = (ce_mp_vf)_mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()),
                                           _mm256_maskload_ps(src, k), (__m256)k);
    /* dst by whole vectors (its buffer has the room): a masked load of what a masked
       store just wrote is not forwarded from it, and stalled each row */
    *(ce_mp_vfu *)dst = ce_mp_take(*(ce_mp_vfu *)dst, v);
#else
    ce_mp_vf v = {0}, m = {0};
    __builtin_memcpy(&v, src, (size_t)n * sizeof(float));
    __builtin_memcpy(&m, dst, (size_t)n * sizeof(float));
    m = ce_mp_take(m, v);
    __builtin_memcpy(dst, &m, (size_t)n * sizeof(float));
#endif
}

/* t[i] = take(t[i], src[i]) for i < n: one input row into the column maxima (stride 1),
 * or one column tap into an output row */
static void ce_mp_rows(const float *restrict src, ptrdiff_t n, float *restrict t)
{
    ptrdiff_t i = 0;
    for (; i + CE_MP_VW <= n; i += CE_MP_VW)
        *(ce_mp_vfu *)(t + i) = ce_mp_take(*(ce_mp_vfu *)(t + i), *(const ce_mp_vfu *)(src + i));
    if (i < n)
        ce_mp_tail(src + i, t + i, n - i);
}

/* The same for stride 2, split by parity: e[j] takes row[2j], o[j] row[2j + 1], so that
 * the column pass reads both contiguously. Builds without AVX2 only: AVX2 and AVX-512
 * split a window's maximum row once instead (CE_MP_SPLIT_ONCE); gcc vectorises this loop
 * itself. */
static void ce_mp_rows2(const float *restrict row, ptrdiff_t n, float *restrict e,
                        float *restrict o)
{
    ptrdiff_t whole = n / 2 / CE_MP_VW * CE_MP_VW, j = 0;
    for (; j < whole; j++) {
        float a = row[2 * j], b = row[2 * j + 1];
        e[j] = (a > e[j] || a != a) ? a : e[j];
        o[j] = (b > o[j] || b != b) ? b : o[j];
    }
    if (2 * j < n) {
        /* the last columns as one vector each, -inf beyond the row (it never wins, so the
           buffer's slack keeps its values): a scalar tail branched on the data, and
           mispredicted, which made 111 columns take 1.8 times as long as 112 */
        ce_mp_vf pe = {0}, po = {0};
        pe -= __builtin_inff();
        po -= __builtin_inff();
        for (ptrdiff_t k = 0; 2 * (j + k) < n; k++) {
            pe[k] = row[2 * (j + k)];
            if (2 * (j + k) + 1 < n)
                po[k] = row[2 * (j + k) + 1];
        }
        *(ce_mp_vfu *)(e + j) = ce_mp_take(*(ce_mp_vfu *)(e + j), pe);
        *(ce_mp_vfu *)(o + j) = ce_mp_take(*(ce_mp_vfu *)(o + j), po);
    }
}
#define CE_MP_BAND 32

#if defined(__AVX2__) || defined(__AVX512F__)
/* Stride 2: the maximum over a window's rows first, contiguous, into s (row of W floats,
 * -inf for 32 beyond), then s split once into even and odd columns (splitting every input
 * row, as ce_mp_rows2 does, took three splits and three loads and stores of the halves per
 * output row of a 3x3 pool; on AVX-512 a 64x112x112 3x3 stride-2 pool went from 0.33 to
 * 0.18 ms, with a masked store of each output row's last vector; bench/bench_family.py
 * maxpool3_s2_c64_112). */
#define CE_MP_SPLIT_ONCE 1
/* the first n < CE_MP_VW floats at p, -inf in the other lanes (none of them read) */
static inline ce_mp_vf ce_mp_load_lowest(const float *p, ptrdiff_t n)
{
#if defined(__AVX512F__)
    return (ce_mp_vf)_mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()),
                                          (__mmask16)((1u << n) - 1), p);
#else
    __m256i k = ce_mp_mask(n);
    return (ce_mp_vf)_mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()),
                                      _mm256_maskload_ps(p, k), (__m256)k);
#endif
}
/* s[i] = the maximum of rows r0, r0 + rs, ... (nr >= 1 of them) at column i < n, in
 * registers, one store per vector; -inf in the lanes past n of the last vector (s has the
 * room). Taking each row into s in memory instead stalled every load on forwarding from
 * the previous row's stores. */
static void ce_mp_vmax(const float *r0, ptrdiff_t rs, int nr, ptrdiff_t n, float *s)
{
    ptrdiff_t i = 0;
    for (; i + CE_MP_VW <= n; i += CE_MP_VW) {
        ce_mp_vf m = *(const ce_mp_vfu *)(r0 + i);
        for (int r = 1; r < nr; r++)
            m = ce_mp_take(m, *(const ce_mp_vfu *)(r0 + r * rs + i));
        *(ce_mp_vfu *)(s + i) = m;
    }
    if (i < n) {
        ce_mp_vf m = ce_mp_load_lowest(r0 + i, n - i);
        for (int r = 1; r < nr; r++)
            m = ce_mp_take(m, ce_mp_load_lowest(r0 + r * rs + i, n - i));
        *(ce_mp_vfu *)(s + i) = m;
    }
}
#if defined(__AVX512F__)
static void ce_mp_split2(const float *restrict s, ptrdiff_t n, float *restrict e,
                         float *restrict o)
{
    const ce_mp_vi even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const ce_mp_vi odd = even + 1;
    for (ptrdiff_t j = 0; 2 * j < n; j += 16) {
        ce_mp_vf a = *(const ce_mp_vfu *)(s + 2 * j), b = *(const ce_mp_vfu *)(s + 2 * j + 16);
        *(ce_mp_vfu *)(e + j) = __builtin_shuffle(a, b, even);
        *(ce_mp_vfu *)(o + j) = __builtin_shuffle(a, b, odd);
    }
}
#else
/* two in-lane shuffles and a lane permute per 16 columns */
static void ce_mp_split2(const float *restrict s, ptrdiff_t n, float *restrict e,
                         float *restrict o)
{
    for (ptrdiff_t j = 0; 2 * j < n; j += 8) {
        __m256 a = _mm256_loadu_ps(s + 2 * j), b = _mm256_loadu_ps(s + 2 * j + 8);
        __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        __m256 od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_storeu_ps(e + j, (__m256)_mm256_permute4x64_pd((__m256d)ev, 0xd8));
        _mm256_storeu_ps(o + j, (__m256)_mm256_permute4x64_pd((__m256d)od, 0xd8));
    }
}
#endif
#endif

/* Floats of one row of the band buffer of ce_mp_plane for stride sw (1 or 2): the row of
 * column maxima with -inf padding around it (for stride 2 as two halves, even and odd
 * columns), and 16 floats of slack for the last output vector's loads. */
static ptrdiff_t ce_mp_row_floats(ptrdiff_t W, ptrdiff_t OW, int kw, int sw, int pw)
{
    if (sw == 1) {
        ptrdiff_t n = pw + W > OW + kw - 1 ? pw + W : OW + kw - 1;
        return n + 16;
    }
    ptrdiff_t P = pw + (pw & 1);                 /* left padding, even: parity kept */
    ptrdiff_t a = P / 2 + (W + 1) / 2, b = ((2 * (OW - 1) + kw - 1 - pw + P) >> 1) + 1;
    return 2 * ((a > b ? a : b) + 16);
}

/* Max pooling of one plane without indices, column stride 1 or 2 and no column dilation
 * (nearly every pool in a CNN), rows first: for a band of output rows, the maximum over
 * each window's kh input rows (one contiguous pass per row) into a buffer row padded with
 * -inf, then for each output the maximum over its kw columns of that row, in registers, one
 * store per vector of outputs. The column pass reads rows written a band earlier, not the
 * stores just made: reading those at shifted offsets stalled every load on store forwarding.
 * Stride 2 keeps even and odd columns apart, so that both passes read contiguously. */
static void ce_mp_plane(const float *x, ptrdiff_t H, ptrdiff_t W, float *y, ptrdiff_t OH,
                        ptrdiff_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                        int dh, float *T)
{
    const ptrdiff_t LT = ce_mp_row_floats(W, OW, kw, sw, pw);
    const ptrdiff_t P = sw == 1 ? pw : pw + (pw & 1), half = LT / 2;
    const ce_mp_vf ninf = {0};
    const ce_mp_vf lowest = ninf - __builtin_inff();
#ifdef CE_MP_SPLIT_ONCE
    float *srow = T + CE_MP_BAND * LT;         /* W + 32 floats (f32_maxpool2d) */
    for (ptrdiff_t i = W; i < W + 32; i++)
        srow[i] = -__builtin_inff();
#endif
    for (ptrdiff_t b0 = 0; b0 < OH; b0 += CE_MP_BAND) {
        ptrdiff_t b1 = b0 + CE_MP_BAND < OH ? b0 + CE_MP_BAND : OH;
        for (ptrdiff_t oy = b0; oy < b1; oy++) {
            float *t = T + (oy - b0) * LT;
            for (ptrdiff_t i = 0; i < LT; i++)
                t[i] = -__builtin_inff();
#ifdef CE_MP_SPLIT_ONCE
            if (sw == 2) {
                /* the window's rows inside the input: u in [u0, u1) */
                ptrdiff_t top = oy * sh - ph, u0 = 0, u1 = kh;
                while (u0 < u1 && top + u0 * dh < 0)
                    u0++;
                while (u1 > u0 && top + (u1 - 1) * dh >= H)
                    u1--;
                if (u1 > u0) {
                    ce_mp_vmax(x + (top + u0 * dh) * W, dh * W, (int)(u1 - u0), W, srow);
                    ce_mp_split2(srow, W, t + P / 2, t + half + P / 2);
                }
                continue;
            }
#endif
            for (int u = 0; u < kh; u++) {
                ptrdiff_t iy = oy * sh - ph + (ptrdiff_t)u * dh;
                if (iy < 0 || iy >= H)
                    continue;
                if (sw == 2)
                    ce_mp_rows2(x + iy * W, W, t + P / 2, t + half + P / 2);
                else
                    ce_mp_rows(x + iy * W, W, t + P);
            }
        }
        for (ptrdiff_t oy = b0; oy < b1; oy++) {
            const float *t = T + (oy - b0) * LT;
            float *yrow = y + oy * OW;
            for (ptrdiff_t ox = 0; ox < OW; ox += CE_MP_VW) {
                ce_mp_vf m = lowest;
                for (int v = 0; v < kw; v++) {
                    ptrdiff_t q = v - pw + P;       /* >= 0: padded column of ox = 0 */
                    const float *src = sw == 1 ? t + q : t + (q & 1 ? half : 0) + (q >> 1);
                    m = ce_mp_take(m, *(const ce_mp_vfu *)(src + ox));
                }
                if (ox + CE_MP_VW <= OW) {
                    *(ce_mp_vfu *)(yrow + ox) = m;
                } else {
#if defined(__AVX2__) && !defined(__AVX512F__)
                    ce_store_first8(yrow + ox, (__m256)m, (int)(OW - ox));
#elif defined(__AVX512F__)
                    /* a masked store: a copy of a length unknown to the compiler is a
                       library call, one an output row */
                    _mm512_mask_storeu_ps(yrow + ox, (__mmask16)((1u << (OW - ox)) - 1),
                                          (__m512)m);
#else
                    float tmp[CE_MP_VW];
                    __builtin_memcpy(tmp, &m, sizeof tmp);
                    __builtin_memcpy(yrow + ox, tmp, (size_t)(OW - ox) * sizeof(float));
#endif
                }
            }
        }
    }
}

#endif
