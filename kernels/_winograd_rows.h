/* Rows of Winograd's V and of its output (kernels/_winograd_tiles.pxi).
 *
 * V: ce_wr_copy_tiles packs the lanes of a strip of input transforms that are tiles into V.
 *
 * Output: ce_wr_interleave (scatter_run) puts the m outputs of a row of
 * consecutive tiles side by side with the output step, dst[m*j + c] = act(src[c*sstride + j] +
 * b) for tiles j < n and columns c < m, for m = 2 and 4. The output transform leaves column c of
 * every tile in its own row of its strip buffer; written element by element the interleave ran
 * scalar and took most of the output phase's time (perf on bench_conv2d.py's conv3x3_c64_56).
 * Here whole vectors of tiles are interleaved with two rounds of two-vector shuffles, and the
 * bias and activation are applied in registers: a second pass over the stored row waited for
 * the output's cache lines. */
#ifndef CE_WINOGRAD_ROWS_H
#define CE_WINOGRAD_ROWS_H

#include <stddef.h>

#include "_store_part.h"
#include "_vec_act.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define CE_WR_VW 16
#elif defined(__AVX__)
#define CE_WR_VW 8
#else
#define CE_WR_VW 0
#endif

#if CE_WR_VW
typedef float ce_wr_vf __attribute__((vector_size(CE_WR_VW * 4)));
typedef float ce_wr_vfu __attribute__((vector_size(CE_WR_VW * 4), aligned(4), may_alias));
typedef int ce_wr_vi __attribute__((vector_size(CE_WR_VW * 4)));
#define CE_WR_LD(p) ((ce_wr_vf)(*(const ce_wr_vfu *)(p)))
#define CE_WR_ST(p, v) (*(ce_wr_vfu *)(p) = (v))
CE_DEFINE_VEC_ACT(ce_wr_act, ce_wr_vf, ce_wr_vi)

#if CE_WR_VW == 16
/* pairs: a[i], b[i] for the first and second half of the lanes */
static const ce_wr_vi ce_wr_pairs_lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
static const ce_wr_vi ce_wr_pairs_hi = {8, 24, 9, 25, 10, 26, 11, 27,
                                        12, 28, 13, 29, 14, 30, 15, 31};
/* quads from two vectors of pairs: a's pair i, then b's pair i */
static const ce_wr_vi ce_wr_quads_lo = {0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23};
static const ce_wr_vi ce_wr_quads_hi = {8, 9, 24, 25, 10, 11, 26, 27,
                                        12, 13, 28, 29, 14, 15, 30, 31};
#else
static const ce_wr_vi ce_wr_pairs_lo = {0, 8, 1, 9, 2, 10, 3, 11};
static const ce_wr_vi ce_wr_pairs_hi = {4, 12, 5, 13, 6, 14, 7, 15};
static const ce_wr_vi ce_wr_quads_lo = {0, 1, 8, 9, 2, 3, 10, 11};
static const ce_wr_vi ce_wr_quads_hi = {4, 5, 12, 13, 6, 7, 14, 15};
#endif

/* With dilation the lanes of a strip hold each column phase's tiles followed by positions
 * that are not tiles, and V lists the tiles without gaps. Copied phase by phase, one store of
 * a few tiles per phase and element, the copy waited on its stores (perf on bench_conv2d.py's
 * conv3x3_d4_c512_28: 4 stores of 2 tiles for every 8). With AVX-512 the tiles of each half
 * strip are packed in a register (vcompressps) and stored as one vector per element. */
#if CE_WR_VW == 16
#define CE_WR_COMPRESS 1
/* For e < E: the lanes of buf[e*bstride .. + 32) whose bit is set in mask, in order, to
 * dst[e*es ..]. Each store writes 16 floats: up to 15 past the tiles, where the caller has
 * room (later tiles of the row, rewritten after, or slack). */
static inline void ce_wr_copy_tiles(const float *buf, ptrdiff_t bstride, ptrdiff_t E,
                                    unsigned long long mask, float *dst, ptrdiff_t es)
{
    __mmask16 m0 = (__mmask16)(mask & 0xFFFF), m1 = (__mmask16)((mask >> 16) & 0xFFFF);
    int c0 = __builtin_popcount(m0);
    for (ptrdiff_t e = 0; e < E; e++) {
        const float *src = buf + e * bstride;
        float *d = dst + e * es;
        if (m0)
            _mm512_storeu_ps(d, _mm512_maskz_compress_ps(m0, _mm512_loadu_ps(src)));
        if (m1)
            _mm512_storeu_ps(d + c0, _mm512_maskz_compress_ps(m1, _mm512_loadu_ps(src + 16)));
    }
}
#endif

/* The four vectors of outputs of VW tiles (two for m = 2) from the m source rows at j. */
static inline int ce_wr_tiles(const float *src, ptrdiff_t sstride, int m, ptrdiff_t j, float b,
                              ce_act_t act, ce_wr_vf *o)
{
    ce_wr_vf a0 = CE_WR_LD(src + j) + b, a1 = CE_WR_LD(src + sstride + j) + b;
    ce_wr_vf lo01 = __builtin_shuffle(a0, a1, ce_wr_pairs_lo);
    ce_wr_vf hi01 = __builtin_shuffle(a0, a1, ce_wr_pairs_hi);
    if (m == 2) {
        o[0] = ce_wr_act(lo01, act);
        o[1] = ce_wr_act(hi01, act);
        return 2;
    }
    ce_wr_vf a2 = CE_WR_LD(src + 2 * sstride + j) + b, a3 = CE_WR_LD(src + 3 * sstride + j) + b;
    ce_wr_vf lo23 = __builtin_shuffle(a2, a3, ce_wr_pairs_lo);
    ce_wr_vf hi23 = __builtin_shuffle(a2, a3, ce_wr_pairs_hi);
    o[0] = ce_wr_act(__builtin_shuffle(lo01, lo23, ce_wr_quads_lo), act);
    o[1] = ce_wr_act(__builtin_shuffle(lo01, lo23, ce_wr_quads_hi), act);
    o[2] = ce_wr_act(__builtin_shuffle(hi01, hi23, ce_wr_quads_lo), act);
    o[3] = ce_wr_act(__builtin_shuffle(hi01, hi23, ce_wr_quads_hi), act);
    return 4;
}
#endif

#ifndef CE_WR_COMPRESS
/* Without AVX-512 the caller copies phase by phase (CE_WR_COMPRESS 0); this is the same copy
 * lane by lane, for completeness, and writes only the tiles. */
#define CE_WR_COMPRESS 0
static inline void ce_wr_copy_tiles(const float *buf, ptrdiff_t bstride, ptrdiff_t E,
                                    unsigned long long mask, float *dst, ptrdiff_t es)
{
    for (ptrdiff_t e = 0; e < E; e++) {
        ptrdiff_t t = 0;
        for (int l = 0; l < 32; l++)
            if (mask >> l & 1)
                dst[e * es + t++] = buf[e * bstride + l];
    }
}
#endif

/* dst[m*j + c] = act(src[c*sstride + j] + b) for j < n, c < m (m = 2 or 4 vectorised, any m
 * in a scalar loop). Each source row is read in whole vectors: up to n rounded up to a
 * multiple of the vector width (16 or 8 floats) must be readable; dst gets m*n floats. */
static inline void ce_wr_interleave(const float *src, ptrdiff_t sstride, int m, ptrdiff_t n,
                                    float *dst, float b, ce_act_t act)
{
    ptrdiff_t j = 0;
#if CE_WR_VW
    const ptrdiff_t V = CE_WR_VW;
    if (m == 2 || m == 4) {
        ce_wr_vf o[4];
        for (; j < n; j += V) {
            int nv = ce_wr_tiles(src, sstride, m, j, b, act, o);
            ptrdiff_t left = m * (n - j);        /* floats of this row still to write */
            float *d = dst + m * j;
            for (int i = 0; i < nv && left > 0; i++, left -= V, d += V) {
                if (left >= V)
                    CE_WR_ST(d, o[i]);
                else
                    ce_store_first(d, (ce_sp_vf)o[i], (int)left);
            }
        }
        return;
    }
#endif
    for (; j < n; j++)
        for (int c = 0; c < m; c++)
            dst[m * j + c] = ce_act_scalar(src[c * sstride + j] + b, act);
}

#endif
