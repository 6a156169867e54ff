/* Depthwise convolution (multiplier 1) on channel blocks (NCHWc, _nchwc.h): one vector of B
 * channels per pixel and tap, the weights [kh][kw][B] of each block side by side. Work goes by
 * output rows of one block (ce_nc_dw_row): the columns whose taps all lie inside the plane run
 * four (any kernel; 3x3 by its own unrolled loop) or, for a 5x5 at stride 1 on AVX-512, eight
 * at a time; the edge columns with every tap checked, one at a time for a 3x3, four at a time
 * for wider kernels. On 8-float builds small planes go whole through a zero-bordered copy
 * (ce_nc_dw_plane). Every output is the bias, then its taps in row-major order (a 3x3's inside
 * columns row by row add each kernel row's three products first); which path a plane takes
 * depends on its shape and weights, never on the thread count.
 */
#ifndef CE_NCHWC_DW_H
#define CE_NCHWC_DW_H

#include "_nchwc.h"

/* One output pixel of one channel block, every tap checked against the plane's edges. */
static inline ce_nc_vf ce_nc_dw_pixel(const float *x, int H, int W, int iy0, int ix0, int kh,
                                      int kw, int dh, int dw, const float *w, ce_nc_vf acc)
{
    for (int u = 0; u < kh; u++) {
        int iy = iy0 + u * dh;
        if (iy < 0 || iy >= H)
            continue;
        const float *row = x + (ptrdiff_t)iy * W * CE_NC_B;
        for (int v = 0; v < kw; v++) {
            int ix = ix0 + v * dw;
            if (ix >= 0 && ix < W)
                acc += CE_NC_LD(w + (u * kw + v) * CE_NC_B) * CE_NC_LD(row + (ptrdiff_t)ix * CE_NC_B);
        }
    }
    return acc;
}

/* Up to four output columns (m of them, sw apart, the first at input column ix0), every tap
 * checked against the plane, their sums side by side: one pixel at a time, each edge pixel is
 * a chain of dependent multiply-adds, and on small maps (a 5x5 on 7x7 or 14x14) most pixels
 * are edge pixels. Each sum takes the bias, then its taps inside the plane in row-major order,
 * as ce_nc_dw_pixel does. */
static inline void ce_nc_dw4_checked(const float *x, int H, int W, int iy0, int ix0, int sw,
                                     int kh, int kw, int dh, int dw, const float *w,
                                     ce_nc_vf b, int m, float *out, ce_act_t act)
{
    ce_nc_vf a0 = b, a1 = b, a2 = b, a3 = b;
    const unsigned uW = (unsigned)W;
    for (int u = 0; u < kh; u++) {
        int iy = iy0 + u * dh;
        if (iy < 0 || iy >= H)
            continue;
        const float *row = x + (ptrdiff_t)iy * W * CE_NC_B;
        const float *wu = w + (ptrdiff_t)u * kw * CE_NC_B;
        for (int v = 0; v < kw; v++) {
            const ce_nc_vf wv = CE_NC_LD(wu + v * CE_NC_B);
            const int ix = ix0 + v * dw;
            if ((unsigned)ix < uW)
                a0 += wv * CE_NC_LD(row + (ptrdiff_t)ix * CE_NC_B);
            if (m > 1 && (unsigned)(ix + sw) < uW)
                a1 += wv * CE_NC_LD(row + (ptrdiff_t)(ix + sw) * CE_NC_B);
            if (m > 2 && (unsigned)(ix + 2 * sw) < uW)
                a2 += wv * CE_NC_LD(row + (ptrdiff_t)(ix + 2 * sw) * CE_NC_B);
            if (m > 3 && (unsigned)(ix + 3 * sw) < uW)
                a3 += wv * CE_NC_LD(row + (ptrdiff_t)(ix + 3 * sw) * CE_NC_B);
        }
    }
    CE_NC_ST(out, ce_nc_act(a0, act));
    if (m > 1)
        CE_NC_ST(out + CE_NC_B, ce_nc_act(a1, act));
    if (m > 2)
        CE_NC_ST(out + 2 * CE_NC_B, ce_nc_act(a2, act));
    if (m > 3)
        CE_NC_ST(out + 3 * CE_NC_B, ce_nc_act(a3, act));
}

/* m (1 to 4) edge columns: one pixel alone as a single chain, more side by side */
static inline void ce_nc_dw_edge(const float *x, int H, int W, int iy0, int ix0, int sw, int kh,
                                 int kw, int dh, int dw, const float *w, ce_nc_vf b, int m,
                                 float *out, ce_act_t act)
{
    if (m == 1)
        CE_NC_ST(out, ce_nc_act(ce_nc_dw_pixel(x, H, W, iy0, ix0, kh, kw, dh, dw, w, b), act));
    else
        ce_nc_dw4_checked(x, H, W, iy0, ix0, sw, kh, kw, dh, dw, w, b, m, out, act);
}

/* The columns [lo, hi) of a 3x3 row whose taps are all inside the plane, over the NR kernel
 * rows inside it (r: their input rows, wv: their weights), four pixels at a time so that their
 * sums run side by side; ACT is the activation, a constant in each instance. */
static inline __attribute__((always_inline)) void
ce_nc_dw_interior(const float *const *r, const ce_nc_vf *wv, const int NR, ce_nc_vf b, int lo,
                  int hi, int sw, int pl, ptrdiff_t d1, float *out, const ce_act_t ACT)
{
    const ptrdiff_t B = CE_NC_B;
    int ox = lo;
    for (; ox + 4 <= hi; ox += 4) {
        ce_nc_vf acc[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            ptrdiff_t at = (ptrdiff_t)((ox + j) * sw - pl) * B;
            ce_nc_vf sum = b;
#pragma GCC unroll 3
            for (int k = 0; k < NR; k++) {
                const float *p = r[k] + at;
                sum += (wv[3 * k] * CE_NC_LD(p) + wv[3 * k + 1] * CE_NC_LD(p + d1))
                       + wv[3 * k + 2] * CE_NC_LD(p + 2 * d1);
            }
            acc[j] = sum;
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            CE_NC_ST(out + (ptrdiff_t)(ox + j) * B, ce_nc_act(acc[j], ACT));
    }
    for (; ox < hi; ox++) {
        ptrdiff_t at = (ptrdiff_t)(ox * sw - pl) * B;
        ce_nc_vf sum = b;
#pragma GCC unroll 3
        for (int k = 0; k < NR; k++) {
            const float *p = r[k] + at;
            sum += (wv[3 * k] * CE_NC_LD(p) + wv[3 * k + 1] * CE_NC_LD(p + d1))
                   + wv[3 * k + 2] * CE_NC_LD(p + 2 * d1);
        }
        CE_NC_ST(out + (ptrdiff_t)ox * B, ce_nc_act(sum, ACT));
    }
}

/* The columns [lo, hi) of a row whose kw taps are all inside the plane, for any kernel: over
 * the nr kernel rows inside it (r: their input rows, wr: their kw weight vectors), four pixels
 * at a time so that one load of a tap's weights serves four sums; each sum starts from the
 * bias and takes the taps in row-major order, as ce_nc_dw_pixel does. */
static void ce_nc_dw_interior_k(const float *const *r, const float *const *wr, int nr, int kw,
                                ce_nc_vf b, int lo, int hi, int sw, int pl, ptrdiff_t d1,
                                float *out, ce_act_t act)
{
    const ptrdiff_t B = CE_NC_B, st = (ptrdiff_t)sw * B;
    int ox = lo;
    for (; ox + 4 <= hi; ox += 4) {
        ce_nc_vf a0 = b, a1 = b, a2 = b, a3 = b;
        const ptrdiff_t at = (ptrdiff_t)(ox * sw - pl) * B;
        for (int k = 0; k < nr; k++) {
            const float *p = r[k] + at, *wk = wr[k];
            for (int v = 0; v < kw; v++, p += d1) {
                ce_nc_vf wv = CE_NC_LD(wk + v * B);
                a0 += wv * CE_NC_LD(p);
                a1 += wv * CE_NC_LD(p + st);
                a2 += wv * CE_NC_LD(p + 2 * st);
                a3 += wv * CE_NC_LD(p + 3 * st);
            }
        }
        CE_NC_ST(out + (ptrdiff_t)ox * B, ce_nc_act(a0, act));
        CE_NC_ST(out + (ptrdiff_t)(ox + 1) * B, ce_nc_act(a1, act));
        CE_NC_ST(out + (ptrdiff_t)(ox + 2) * B, ce_nc_act(a2, act));
        CE_NC_ST(out + (ptrdiff_t)(ox + 3) * B, ce_nc_act(a3, act));
    }
    for (; ox < hi; ox++) {
        ce_nc_vf a0 = b;
        const ptrdiff_t at = (ptrdiff_t)(ox * sw - pl) * B;
        for (int k = 0; k < nr; k++) {
            const float *p = r[k] + at, *wk = wr[k];
            for (int v = 0; v < kw; v++, p += d1)
                a0 += CE_NC_LD(wk + v * B) * CE_NC_LD(p);
        }
        CE_NC_ST(out + (ptrdiff_t)ox * B, ce_nc_act(a0, act));
    }
}

#if defined(__AVX512F__)
/* A 5x5 kernel, stride and dilation 1, on eight output columns from input column ix0 on (m of
 * them in the row): the 12 input vectors of a kernel row loaded once for its five taps, eight
 * sums side by side, each from the bias through its taps in row-major order (the order of
 * ce_nc_dw_pixel, bit for bit). Where the twelve columns leave the plane, the loads and
 * multiply-adds of the columns outside are masked off: nothing read outside the plane and
 * nothing added (an infinite weight times padding is not a NaN). Why: on 14x14 and 7x7 maps
 * most of a 5x5's pixels are edge pixels, which the four-column form runs as one dependent
 * chain each; for 3x3 kernels and strides the four-column form measured as fast or faster. */
static inline void ce_nc_dw8_5x5(const float *const *r, const float *const *wr, int nr,
                                 __m512 b, int ix0, int W, float *out, int m)
{
    enum { NX = 12 };
    __m512 a[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        a[j] = b;
    if (ix0 >= 0 && ix0 + NX <= W) {
        for (int k = 0; k < nr; k++) {
            const float *p = r[k] + (ptrdiff_t)ix0 * CE_NC_B;
            __m512 xv[NX];
#pragma GCC unroll 12
            for (int i = 0; i < NX; i++)
                xv[i] = _mm512_loadu_ps(p + i * CE_NC_B);
#pragma GCC unroll 5
            for (int v = 0; v < 5; v++) {
                __m512 wv = _mm512_loadu_ps(wr[k] + v * CE_NC_B);
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++)
                    a[j] = _mm512_fmadd_ps(wv, xv[j + v], a[j]);
            }
        }
    } else {
        __mmask16 in[NX];
#pragma GCC unroll 12
        for (int i = 0; i < NX; i++)
            in[i] = (ix0 + i >= 0 && ix0 + i < W) ? 0xFFFF : 0;
        for (int k = 0; k < nr; k++) {
            const float *p = r[k] + (ptrdiff_t)ix0 * CE_NC_B;
            __m512 xv[NX];
#pragma GCC unroll 12
            for (int i = 0; i < NX; i++)
                xv[i] = _mm512_maskz_loadu_ps(in[i], p + i * CE_NC_B);
#pragma GCC unroll 5
            for (int v = 0; v < 5; v++) {
                __m512 wv = _mm512_loadu_ps(wr[k] + v * CE_NC_B);
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++)
                    a[j] = _mm512_mask3_fmadd_ps(wv, xv[j + v], a[j], in[j + v]);
            }
        }
    }
    for (int j = 0; j < m; j++)
        _mm512_storeu_ps(out + j * CE_NC_B, a[j]);
}

/* ce_nc_dw_row for a 5x5 kernel, stride and dilation 1 */
static void ce_nc_dw_row_5x5(const float *x, int H, int W, int OW, int iy0, int pl,
                             const float *w, const float *bias, float *out, ce_act_t act)
{
    const __m512 b = _mm512_loadu_ps(bias);
    const float *r[5], *wr[5];
    int nr = 0;
    for (int u = 0; u < 5; u++) {
        int iy = iy0 + u;
        if (iy >= 0 && iy < H) {
            r[nr] = x + (ptrdiff_t)iy * W * CE_NC_B;
            wr[nr] = w + (ptrdiff_t)u * 5 * CE_NC_B;
            nr++;
        }
    }
    for (int ox0 = 0; ox0 < OW; ox0 += 8)
        ce_nc_dw8_5x5(r, wr, nr, b, ox0 - pl, W, out + (ptrdiff_t)ox0 * CE_NC_B,
                      OW - ox0 < 8 ? OW - ox0 : 8);
    if (act.code != CE_ACT_CODE_NONE)   /* the row, still in L1 */
        ce_nc_act_map(out, out, (ptrdiff_t)OW * CE_NC_B, 1.0f, 0.0f, act);
}
#endif

/* One output row of one channel block: out[ox] for ox < OW, from the block's input plane
 * x[H][W][B]; w: kh * kw vectors of weights (tap-major), bias one vector. Taps in the padding
 * are skipped. The columns whose taps are all inside the plane run without checks, over the
 * kernel rows inside it (3x3 by its own unrolled loop). */
static void ce_nc_dw_row_act(const float *x, int H, int W, int OW, int oy, int sh, int sw,
                             int pt, int pl, int kh, int kw, int dh, int dw, const float *w,
                             const float *bias, float *out, ce_act_t act)
{
    const ptrdiff_t B = CE_NC_B;
    const ce_nc_vf b = CE_NC_LD(bias);
    int iy0 = oy * sh - pt;
#if defined(__AVX512F__)
    if (kh == 5 && kw == 5 && sw == 1 && dh == 1 && dw == 1) {
        ce_nc_dw_row_5x5(x, H, W, OW, iy0, pl, w, bias, out, act);
        return;
    }
#endif
    int lo = 0, hi = 0;     /* [lo, hi): the unchecked columns */
    {
        /* ox * sw - pl >= 0 and ox * sw - pl + (kw - 1) * dw <= W - 1 */
        int last = W - 1 - (kw - 1) * dw + pl;
        lo = (pl + sw - 1) / sw;
        hi = last < 0 ? 0 : last / sw + 1;
        if (hi > OW) hi = OW;
        if (lo > hi) lo = hi;
        if (kh > 64)        /* beyond the row tables below: every column checked */
            lo = hi = 0;
    }
    /* kernels wider than 3: the unchecked columns in whole groups of four, the others checked
     * four at a time (a 3x3's edge pixels are short chains: one at a time measured faster) */
    const int grouped = kw > 3;
    if (grouped)
        hi = lo + (hi - lo) / 4 * 4;
    for (int ox = 0; ox < lo; ox += grouped ? 4 : 1)
        ce_nc_dw_edge(x, H, W, iy0, ox * sw - pl, sw, kh, kw, dh, dw, w, b,
                      grouped ? (lo - ox < 4 ? lo - ox : 4) : 1, out + (ptrdiff_t)ox * B, act);
    if (hi > lo && !(kh == 3 && kw == 3)) {
        /* any other kernel: its rows inside the plane (at most 64 of them) */
        const float *r[64], *wr[64];
        int nr = 0;
        for (int u = 0; u < kh; u++) {
            int iy = iy0 + u * dh;
            if (iy >= 0 && iy < H) {
                r[nr] = x + (ptrdiff_t)iy * W * B;
                wr[nr] = w + (ptrdiff_t)u * kw * B;
                nr++;
            }
        }
        ce_nc_dw_interior_k(r, wr, nr, kw, b, lo, hi, sw, pl, (ptrdiff_t)dw * B, out, act);
    } else if (hi > lo) {
        const float *r[3];
        ce_nc_vf wv[9];
        int nr = 0;
        for (int u = 0; u < 3; u++) {
            int iy = iy0 + u * dh;
            if (iy >= 0 && iy < H) {
                r[nr] = x + (ptrdiff_t)iy * W * B;
                for (int v = 0; v < 3; v++)
                    wv[nr * 3 + v] = CE_NC_LD(w + (u * 3 + v) * B);
                nr++;
            }
        }
        const ptrdiff_t d1 = (ptrdiff_t)dw * B;
/* the common activations as constants, so that each instance has its own output step */
#define CE_NC_DW_ACT1(NR, CODE)                                                             \
        case CODE: ce_nc_dw_interior(r, wv, NR, b, lo, hi, sw, pl, d1, out,                 \
                                     (ce_act_t){CODE, 0, 0}); break;
#define CE_NC_DW_ACT(NR)                                                                    \
        switch (act.code) {                                                                 \
        CE_NC_DW_ACT1(NR, CE_ACT_CODE_NONE) CE_NC_DW_ACT1(NR, CE_ACT_CODE_RELU)             \
        CE_NC_DW_ACT1(NR, CE_ACT_CODE_RELU6)                                                \
        default: ce_nc_dw_interior(r, wv, NR, b, lo, hi, sw, pl, d1, out, act); break;      \
        }
        switch (nr) {
        case 3: CE_NC_DW_ACT(3) break;
        case 2: CE_NC_DW_ACT(2) break;
        case 1: CE_NC_DW_ACT(1) break;
        default: CE_NC_DW_ACT(0) break;
        }
#undef CE_NC_DW_ACT
#undef CE_NC_DW_ACT1
    }
    for (int ox = hi > lo ? hi : lo; ox < OW; ox += grouped ? 4 : 1)
        ce_nc_dw_edge(x, H, W, iy0, ox * sw - pl, sw, kh, kw, dh, dw, w, b,
                      grouped ? (OW - ox < 4 ? OW - ox : 4) : 1, out + (ptrdiff_t)ox * B, act);
}

/* ce_nc_dw_row_act with an activation past the clamps mapped over the row once it is written
 * (ce_nc_act_span) */
static void ce_nc_dw_row(const float *x, int H, int W, int OW, int oy, int sh, int sw, int pt,
                         int pl, int kh, int kw, int dh, int dw, const float *w,
                         const float *bias, float *out, ce_act_t act)
{
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    int inline_act = CE_NC_ACT_INLINE(act.code);
    ce_nc_dw_row_act(x, H, W, OW, oy, sh, sw, pt, pl, kh, kw, dh, dw, w, bias, out,
                     inline_act ? act : none);
    if (!inline_act)
        ce_nc_act_span(out, OW, act);
}

/* Small planes: the block's input plane is copied once into a buffer whose
 * columns run on into zeros on both sides, and every output row then runs eight columns at a
 * time unchecked, eight sums side by side (enough to cover the multiply-add latency; four cover
 * half). On 7x7 and 14x14 maps most of a 5x5's pixels are edge pixels, and row by row the
 * checks and per-row setup cost more than the taps. Kernel rows outside the plane are skipped;
 * the zero columns add products of a weight and zero, which leave every sum as it was (but for
 * the sign of a zero) when the weights are finite: a block with a non-finite weight goes row
 * by row, where taps in the padding are skipped. AVX-512 builds take planes of up to
 * CE_NC_DW_PLANE_MAX_H rows. */
/* the buffer, in vectors (64 KB of 8 floats, 128 KB of 16): larger planes gained little (bench/bench_dispatch.py --only
 * layout/dw_planes) */
#define CE_NC_DW_PLANE_VECS 2048

static inline int ce_nc_dw_plane_cols(int OW, int sw, int kw, int dw)
{
    return ((OW + 7) / 8 * 8 - 1) * sw + (kw - 1) * dw + 1;
}

/* Whether ce_nc_dw_plane takes this layer: the buffer fits and the kernel is wider than 3. */
/* Tallest plane taken whole on 16-float builds, for kernels 5 wide or more and for 3x3: 5x5
 * on 7x7 and 14x14 maps ran in 0.67-0.90 of the rows' time alone (0.73-0.89 at stride 2), 3x3
 * on 7x7 in 0.52-0.71; but 3x3 on 14x14 in 0.81-1.00 alone and 1.1-1.8 within
 * MobileNetV3-Large (copying the plane costs more beside nine taps), 28x28 0.90-1.25
 * (bench/bench_dispatch.py layout/dw_planes, one and two threads; the model by per-step
 * profiles of both builds). MobileNetV3-Small 1-5% faster, MobileNetV3-Large 0.5-1% (A/B of
 * the builds in one process). 8-float builds take any plane the buffer holds. */
#if CE_NC_B == 16
#define CE_NC_DW_PLANE_MAX_H 16
#define CE_NC_DW_PLANE_MAX_H_3 8
#else
#define CE_NC_DW_PLANE_MAX_H CE_NC_DW_PLANE_VECS
#define CE_NC_DW_PLANE_MAX_H_3 CE_NC_DW_PLANE_VECS
#endif

static inline int ce_nc_dw_plane_fits(int H, int W, int OW, int sw, int kh, int kw, int dw)
{
    (void)W;
    return kw >= 3 && kh <= 16 && sw <= 2
           && H <= (kw >= 5 ? CE_NC_DW_PLANE_MAX_H : CE_NC_DW_PLANE_MAX_H_3)
           && (long)H * ce_nc_dw_plane_cols(OW, sw, kw, dw) <= CE_NC_DW_PLANE_VECS;
}

/* Eight output columns from buffer column c0 (m of them stored): the nr kernel rows r (their
 * weights wr, kw taps each, dw columns apart), columns SW apart. */
static inline __attribute__((always_inline)) void
ce_nc_dw8_buffered(const float *const *r, const float *const *wr, int nr, int kw, ptrdiff_t d1,
                   const int SW, ce_nc_vf b, ptrdiff_t c0, int m, float *out, ce_act_t act)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_vf a[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        a[j] = b;
    for (int k = 0; k < nr; k++) {
        const float *p = r[k] + c0 * B, *wk = wr[k];
        for (int v = 0; v < kw; v++, p += d1) {
            const ce_nc_vf wv = CE_NC_LD(wk + v * B);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                a[j] += wv * CE_NC_LD(p + j * SW * B);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < m)
            CE_NC_ST(out + j * B, ce_nc_act(a[j], act));
}

/* A row of OW outputs, eight at a time, from rows r that run on into zeros (column c of a
 * row under output column c / sw, stride sw 1 or 2) */
static inline void ce_nc_dw8_row(const float *const *r, const float *const *wr, int nr, int kw,
                                 ptrdiff_t d1, int sw, ce_nc_vf b, int OW, float *o,
                                 ce_act_t act)
{
    for (int ox = 0; ox < OW; ox += 8) {
        const int m = OW - ox < 8 ? OW - ox : 8;
        if (sw == 1)
            ce_nc_dw8_buffered(r, wr, nr, kw, d1, 1, b, ox, m, o + (ptrdiff_t)ox * CE_NC_B, act);
        else
            ce_nc_dw8_buffered(r, wr, nr, kw, d1, 2, b, (ptrdiff_t)ox * 2, m,
                               o + (ptrdiff_t)ox * CE_NC_B, act);
    }
}

/* One block plane, out[OH][OW] from x[H][W], when ce_nc_dw_plane_fits says so; buf: the
 * calling thread's CE_NC_DW_PLANE_VECS vectors. */
static void ce_nc_dw_plane(const float *x, int H, int W, int OH, int OW, int sh, int sw, int pt,
                           int pl, int kh, int kw, int dh, int dw, const float *w,
                           const float *bias, float *out, ce_act_t act, float *buf)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_vf check = {0};
    for (int t = 0; t < kh * kw; t++)
        check *= CE_NC_LD(w + t * B);         /* zero, or NaN past a NaN or an infinity */
    for (int j = 0; j < CE_NC_B; j++)
        if (check[j] != 0.0f) {
            for (int oy = 0; oy < OH; oy++)
                ce_nc_dw_row(x, H, W, OW, oy, sh, sw, pt, pl, kh, kw, dh, dw, w, bias,
                             out + (ptrdiff_t)oy * OW * B, act);
            return;
        }
    const int cols = ce_nc_dw_plane_cols(OW, sw, kw, dw);
    const ce_nc_vf zero = {0};
    for (int iy = 0; iy < H; iy++) {
        const float *src = x + (ptrdiff_t)iy * W * B;
        float *dst = buf + (ptrdiff_t)iy * cols * B;
        for (int c = 0; c < cols; c++) {
            const int ix = c - pl;
            CE_NC_ST(dst + c * B, (unsigned)ix < (unsigned)W ? CE_NC_LD(src + ix * B) : zero);
        }
    }
    const ce_nc_vf b = CE_NC_LD(bias);
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    const int inline_act = CE_NC_ACT_INLINE(act.code);
    const ce_act_t store_act = inline_act ? act : none;
    const ptrdiff_t d1 = (ptrdiff_t)dw * B;
    for (int oy = 0; oy < OH; oy++) {
        const float *r[16], *wr[16];
        int nr = 0;
        for (int u = 0; u < kh; u++) {
            const int iy = oy * sh - pt + u * dh;
            if (iy >= 0 && iy < H) {
                r[nr] = buf + (ptrdiff_t)iy * cols * B;
                wr[nr] = w + (ptrdiff_t)u * kw * B;
                nr++;
            }
        }
        ce_nc_dw8_row(r, wr, nr, kw, d1, sw, b, OW, out + (ptrdiff_t)oy * OW * B, store_act);
    }
    if (!inline_act)
        ce_nc_act_span(out, (ptrdiff_t)OH * OW, act);
}

#endif
