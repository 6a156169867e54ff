/* Depthwise 3x3 convolution of one plane, output row by output row, for strides 1 and 2 and
 * dilation 1 (the MobileNet layers on planes too large for the channel-blocked kernel).
 *
 * The input rows an output row needs are copied into a ring of four zero-padded row buffers
 * (a fifth, all zeros, stands for the rows above and below the plane), so each input row is
 * copied once, into L1, and the taps read it with unit-stride vector loads at offsets 0, 1, 2
 * (stride 1) or through even/odd lane shuffles (stride 2), with no border code. Each vector of
 * outputs is finished in registers (bias, clamp) and stored straight into the output row: no
 * accumulator buffer and no copy-out pass.
 *
 * Ring rows are RL floats: the data at [pl, pl + W), zeros around it, and room for the lanes of
 * the last vector beyond the output's width (computed, never stored). ce_dw_ring_floats gives
 * the buffer size; the caller zeroes it once per call.
 */
#ifndef CE_DW_ROWS_H
#define CE_DW_ROWS_H

#include <stddef.h>
#include <string.h>

#include "_store_part.h"

#if defined(__AVX512F__)
#define CE_DW_VW 16
#elif defined(__AVX__)
#define CE_DW_VW 8
#else
#define CE_DW_VW 4
#endif

typedef float ce_dw_vf __attribute__((vector_size(CE_DW_VW * 4)));
typedef float ce_dw_vfu __attribute__((vector_size(CE_DW_VW * 4), aligned(4), may_alias));
typedef int ce_dw_vi __attribute__((vector_size(CE_DW_VW * 4)));

#define CE_DW_LD(p) ((ce_dw_vf)(*(const ce_dw_vfu *)(p)))

/* Floats of one ring row: the last vector of outputs reads up to 2*VW + 2 floats past its
 * start at stride 2. */
static inline ptrdiff_t ce_dw_row_floats(int OW, int sw, int pl, int W)
{
    ptrdiff_t need = (ptrdiff_t)((OW + CE_DW_VW - 1) / CE_DW_VW) * CE_DW_VW * sw + 2 * CE_DW_VW + 2;
    ptrdiff_t data = (ptrdiff_t)pl + W + 1;
    ptrdiff_t n = need > data ? need : data;
    return (n + 15) / 16 * 16;
}

static inline ptrdiff_t ce_dw_ring_floats(int OW, int sw, int pl, int W)
{
    return 5 * ce_dw_row_floats(OW, sw, pl, W);
}

/* Even and odd lanes of the 2*VW floats at p. */
static inline void ce_dw_split(const float *p, ce_dw_vf *even, ce_dw_vf *odd)
{
    ce_dw_vf a = CE_DW_LD(p), b = CE_DW_LD(p + CE_DW_VW);
#if CE_DW_VW == 16
    const ce_dw_vi e = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const ce_dw_vi o = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
#elif CE_DW_VW == 8
    const ce_dw_vi e = {0, 2, 4, 6, 8, 10, 12, 14};
    const ce_dw_vi o = {1, 3, 5, 7, 9, 11, 13, 15};
#else
    const ce_dw_vi e = {0, 2, 4, 6};
    const ce_dw_vi o = {1, 3, 5, 7};
#endif
    *even = __builtin_shuffle(a, b, e);
    *odd = __builtin_shuffle(a, b, o);
}

/* Lanes 1 .. VW of a, b side by side: a vector one element further along. */
#if CE_DW_VW == 16
static const ce_dw_vi ce_dw_next_lane = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
#elif CE_DW_VW == 8
static const ce_dw_vi ce_dw_next_lane = {1, 2, 3, 4, 5, 6, 7, 8};
#else
static const ce_dw_vi ce_dw_next_lane = {1, 2, 3, 4};
#endif

static inline ce_dw_vf ce_dw_clamp(ce_dw_vf v, float lo, float hi)
{
    /* C has no vector ?:, so the clamps select through the comparison masks */
    ce_dw_vf vlo = (ce_dw_vf){0} + lo, vhi = (ce_dw_vf){0} + hi;
    ce_dw_vi m = v < vlo;
    v = (ce_dw_vf)(((ce_dw_vi)v & ~m) | ((ce_dw_vi)vlo & m));
    m = v > vhi;
    return (ce_dw_vf)(((ce_dw_vi)v & ~m) | ((ce_dw_vi)vhi & m));
}

/* Stride 2 without AVX-512: each input row is split into its even and odd padded columns as
 * it is copied into the ring (E[i] = xpad[2i] in the first half of the ring row, O[i] =
 * xpad[2i + 1] in the second), so the taps read E[ox], O[ox], E[ox + 1] with unit-stride
 * loads. Splitting per output vector took three two-vector shuffles per row (each several
 * instructions on AVX2) for each tap row, and a row is read by two output rows
 * (bench_conv2d.py, dw3x3_s2_c96_112). AVX-512 does the split in one permute per vector and
 * keeps it. */
#if CE_DW_VW == 16
#define CE_DW_SPLIT_ROWS 0
#else
#define CE_DW_SPLIT_ROWS 1
#endif

/* One input row of W floats into the halves E, O of its ring row (see above); positions that
 * hold no input column are not written. */
static inline void ce_dw_copy_split(const float *src, int W, int pl, float *E, float *O)
{
    /* column k sits at padded column k + pl: even ones go to E, odd ones to O, at half */
    float *ev = (pl & 1) ? O : E, *od = (pl & 1) ? E : O;
    int e0 = pl >> 1, o0 = (pl + 1) >> 1;
    int nodd = W / 2, m = 0;
    for (; m + CE_DW_VW <= nodd; m += CE_DW_VW) {
        ce_dw_vf e, o;
        ce_dw_split(src + 2 * m, &e, &o);
        *(ce_dw_vfu *)(ev + e0 + m) = e;
        *(ce_dw_vfu *)(od + o0 + m) = o;
    }
    for (; 2 * m < W; m++) {
        ev[e0 + m] = src[2 * m];
        if (2 * m + 1 < W)
            od[o0 + m] = src[2 * m + 1];
    }
}

/* One output vector at p's row: a whole vector where it runs into later output rows of the
 * plane (written after it), else only the n < VW outputs that exist. */
static inline void ce_dw_store(float *orow, int ox, int OW, int n_after, ce_dw_vf acc)
{
    int n = OW - ox;
    if (n >= CE_DW_VW || n_after >= CE_DW_VW - n)
        *(ce_dw_vfu *)(orow + ox) = acc;
    else
        ce_store_first(orow + ox, (ce_sp_vf)acc, n);
}

/* One tap row of an output vector, summed as (a w0 + b w1) + c w2 in that order: the single-
 * and two-row loops below give each output the same bits. */
#define CE_DW_TAPS(p, w, k) (CE_DW_LD(p) * (w)[k] + CE_DW_LD((p) + 1) * (w)[(k) + 1] \
                             + CE_DW_LD((p) + 2) * (w)[(k) + 2])

/* out[OH][OW] = clamp(conv3x3(x[H][W]) + b, lo, hi), stride sh = sw in {1, 2}, padding pt, pl
 * (rows and columns outside x are zero). w9: the 3x3 filter row-major. ring: this thread's
 * ce_dw_ring_floats(...) floats, zero where no row data is copied (the caller zeroes it once
 * per call; copies write only [pl, pl + W) of rows 0..3).
 *
 * At stride 1 two output rows are computed together from four ring rows: the two middle rows'
 * vectors are loaded once for both, 12 loads for 18 multiply-adds where one row at a time took
 * 9 for 9 (bench_conv2d.py, dw3x3_c144_56). */
static void ce_dw3x3_plane(const float *x, int H, int W, int OH, int OW, int s, int pt, int pl,
                           const float *w9, float b, float lo, float hi, float *out, float *ring)
{
    const ptrdiff_t RL = ce_dw_row_floats(OW, s, pl, W);
    const float *zero = ring + 4 * RL;
    int held[4] = {-1, -1, -1, -1};      /* the input row each ring slot holds */
    float w[9];
    memcpy(w, w9, sizeof w);
    for (int oy = 0; oy < OH;) {
        int pair = s == 1 && oy + 1 < OH;
        const float *rows[4];
        for (int u = 0; u < 3 + pair; u++) {
            int r = oy * s + u - pt;
            if (r < 0 || r >= H) {
                rows[u] = zero;
                continue;
            }
            int slot = r % 4;
            float *dst = ring + slot * RL;
            if (held[slot] != r) {
                if (CE_DW_SPLIT_ROWS && s == 2)
                    ce_dw_copy_split(x + (ptrdiff_t)r * W, W, pl, dst, dst + RL / 2);
                else
                    memcpy(dst + pl, x + (ptrdiff_t)r * W, (size_t)W * sizeof(float));
                held[slot] = r;
            }
            rows[u] = dst;
        }
        float *orow = out + (ptrdiff_t)oy * OW;
        int after = (OH - oy - 1) * OW;          /* outputs of the plane after this row */
        if (pair) {
            for (int ox = 0; ox < OW; ox += CE_DW_VW) {
                const float *p0 = rows[0] + ox, *p1 = rows[1] + ox, *p2 = rows[2] + ox,
                            *p3 = rows[3] + ox;
                ce_dw_vf a0 = (ce_dw_vf){0} + b, a1 = a0;
                a0 += CE_DW_TAPS(p0, w, 0);
                a1 += CE_DW_TAPS(p1, w, 0);
                a0 += CE_DW_TAPS(p1, w, 3);
                a1 += CE_DW_TAPS(p2, w, 3);
                a0 += CE_DW_TAPS(p2, w, 6);
                a1 += CE_DW_TAPS(p3, w, 6);
                /* the first row's last vector may not run into the second, stored already */
                ce_dw_store(orow, ox, OW, 0, ce_dw_clamp(a0, lo, hi));
                ce_dw_store(orow + OW, ox, OW, after - OW, ce_dw_clamp(a1, lo, hi));
            }
            oy += 2;
            continue;
        }
        if (s == 2 && !CE_DW_SPLIT_ROWS) {
            /* the even and odd lanes of each tap row, split once: the third tap's (the even
               lanes one column on) are the even lanes shifted by one lane with the next
               vector's first, where a second split per vector took two more loads and
               shuffles (bench_conv2d.py, dw3x3_s2_c96_112) */
            ce_dw_vf e[3], o[3];
            for (int u = 0; u < 3; u++)
                ce_dw_split(rows[u], &e[u], &o[u]);
            for (int ox = 0; ox < OW; ox += CE_DW_VW) {
                ce_dw_vf acc = (ce_dw_vf){0} + b;
                for (int u = 0; u < 3; u++) {
                    ce_dw_vf en, on;
                    ce_dw_split(rows[u] + 2 * (ox + CE_DW_VW), &en, &on);
                    ce_dw_vf e1 = __builtin_shuffle(e[u], en, ce_dw_next_lane);
                    acc += e[u] * w[3 * u] + o[u] * w[3 * u + 1] + e1 * w[3 * u + 2];
                    e[u] = en;
                    o[u] = on;
                }
                ce_dw_store(orow, ox, OW, after, ce_dw_clamp(acc, lo, hi));
            }
            oy++;
            continue;
        }
        for (int ox = 0; ox < OW; ox += CE_DW_VW) {
            ce_dw_vf acc = (ce_dw_vf){0} + b;
            if (s == 1) {
                for (int u = 0; u < 3; u++)
                    acc += CE_DW_TAPS(rows[u] + ox, w, 3 * u);
            } else {        /* stride 2 on rows split as they were copied */
                for (int u = 0; u < 3; u++) {
                    const float *e = rows[u] + ox, *o = rows[u] + RL / 2 + ox;
                    acc += CE_DW_LD(e) * w[3 * u] + CE_DW_LD(o) * w[3 * u + 1]
                           + CE_DW_LD(e + 1) * w[3 * u + 2];
                }
            }
            ce_dw_store(orow, ox, OW, after, ce_dw_clamp(acc, lo, hi));
        }
        oy++;
    }
}

/* acc[i] = clamp(b + sum over taps t of w[t] * P[offs[t] + i], lo, hi) for i < n: the band
 * kernel of conv_depthwise.pyx for any kernel, stride and dilation (taps in row-major order,
 * each a unit-stride run of the staged band). Four vectors of outputs at a time keep their
 * sums in registers through every tap: one load per multiply-add, where a pass over acc per
 * four taps also loaded and stored acc each time. Each sum is 0, then the taps in order, then
 * the bias, as the passes made it. */
static void ce_dw_band_taps(const float *P, const ptrdiff_t *offs, int ntaps, const float *w,
                            float *acc, ptrdiff_t n, float b, float lo, float hi)
{
    const ptrdiff_t V = CE_DW_VW;
    ptrdiff_t i = 0;
    for (; i + 4 * V <= n; i += 4 * V) {
        ce_dw_vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int t = 0; t < ntaps; t++) {
            const float *p = P + offs[t] + i;
            float wt = w[t];
            a0 += wt * CE_DW_LD(p);
            a1 += wt * CE_DW_LD(p + V);
            a2 += wt * CE_DW_LD(p + 2 * V);
            a3 += wt * CE_DW_LD(p + 3 * V);
        }
        *(ce_dw_vfu *)(acc + i) = ce_dw_clamp(a0 + b, lo, hi);
        *(ce_dw_vfu *)(acc + i + V) = ce_dw_clamp(a1 + b, lo, hi);
        *(ce_dw_vfu *)(acc + i + 2 * V) = ce_dw_clamp(a2 + b, lo, hi);
        *(ce_dw_vfu *)(acc + i + 3 * V) = ce_dw_clamp(a3 + b, lo, hi);
    }
    for (; i + V <= n; i += V) {
        ce_dw_vf a0 = {0};
        for (int t = 0; t < ntaps; t++)
            a0 += w[t] * CE_DW_LD(P + offs[t] + i);
        *(ce_dw_vfu *)(acc + i) = ce_dw_clamp(a0 + b, lo, hi);
    }
    for (; i < n; i++) {
        float a0 = 0;
        for (int t = 0; t < ntaps; t++)
            a0 += w[t] * P[offs[t] + i];
        float v = a0 + b;
        v = lo > v ? lo : v;
        acc[i] = hi < v ? hi : v;
    }
}

#endif
