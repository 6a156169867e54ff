/* Kernels on channel-blocked activations (NCHW16c): a tensor of C channels is stored as
 * [N][ceil(C / 16)][H][W][16], each pixel holding 16 consecutive channels side by side, the
 * channels beyond C zero. One vector of 16 floats is then one pixel of one channel block, so
 *
 *   - a pointwise convolution needs no packing: for each input channel it broadcasts the
 *     channel's value at a few pixels and multiplies it into vectors of 16 output channels'
 *     weights (the weights packed once per group of up to four output blocks);
 *   - a depthwise convolution is nine vector loads and fused multiply-adds per output pixel,
 *     with no transposes and no staging.
 *
 * Every output is summed over the input channels (pointwise) or taps (depthwise) in one fixed
 * order, whatever the caller's split of the work, so results do not depend on the thread count.
 * The output step adds the bias, an optional residual in the same layout, and applies the
 * activation (codes of _epilogue.pxd: 0 none, 1 relu, 2 relu6) before the one store.
 */
#ifndef CE_NCHWC_H
#define CE_NCHWC_H

#include <stddef.h>
#include <string.h>

#define CE_NC_B 16            /* channels per block */
#define CE_NC_TILE_PIXELS 6   /* pixels per pointwise tile */
#define CE_NC_GROUP 4         /* output blocks per pointwise tile */

typedef float ce_nc_vf __attribute__((vector_size(64)));
typedef float ce_nc_vfu __attribute__((vector_size(64), aligned(4), may_alias));
typedef int ce_nc_vi __attribute__((vector_size(64)));

/* activations and weights come from numpy arrays: no alignment is assumed */
#define CE_NC_LD(p) ((ce_nc_vf)(*(const ce_nc_vfu *)(p)))
#define CE_NC_ST(p, v) (*(ce_nc_vfu *)(p) = (v))

static inline ce_nc_vf ce_nc_act(ce_nc_vf v, int act)
{
    const ce_nc_vf zero = {0};
    if (act >= 1)
        v = (ce_nc_vf)((ce_nc_vi)v & (v > zero));
    if (act == 2) {
        const ce_nc_vf six = zero + 6.0f;
        ce_nc_vi below = v < six;
        v = (ce_nc_vf)(((ce_nc_vi)v & below) | ((ce_nc_vi)six & ~below));
    }
    return v;
}

/* ---- Pointwise ------------------------------------------------------------------------------
 * One tile: np <= 6 pixels x NK <= 4 output blocks, over Cb input blocks (a batch of the
 * input channels: the weights of a batch stay in L1 while the tiles of a chunk pass over them).
 *   x:    the input at the tile's first pixel of the batch's first block; blocks P pixels apart;
 *   w:    the batch's packed weights [Cb * 16][NK * 16] (input channel, output channel);
 *   bias: NK * 16 values; res/out: the tile's first pixel of its first output block, blocks
 *         P pixels apart; res may be NULL.
 *   first: start from zero, else from the partial sums in out; last: finish (bias, residual,
 *         activation), else store the partial sums. The sums run over the channels in order
 *         whatever the batches, and partial sums are stored exactly, so batching changes no
 *         result.
 * Pixels beyond np read the last valid pixel again (no read past the tensor) and are neither
 * loaded nor stored. */
static inline __attribute__((always_inline)) void
ce_nc_pw_tile(const float *restrict x, ptrdiff_t P, int Cb, const float *restrict w,
              const int NK, const float *restrict bias, const float *res, float *out,
              int act, int np, int first, int last)
{
    const ptrdiff_t B = CE_NC_B;
    const ptrdiff_t o0 = 0;
    const ptrdiff_t o1 = (np > 1 ? 1 : np - 1) * B;
    const ptrdiff_t o2 = (np > 2 ? 2 : np - 1) * B;
    const ptrdiff_t o3 = (np > 3 ? 3 : np - 1) * B;
    const ptrdiff_t o4 = (np > 4 ? 4 : np - 1) * B;
    const ptrdiff_t o5 = (np > 5 ? 5 : np - 1) * B;
#define CE_NC_PIX(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define CE_NC_DECL(i) ce_nc_vf a##i##_0 = {0}, a##i##_1 = {0}, a##i##_2 = {0}, a##i##_3 = {0};
    CE_NC_PIX(CE_NC_DECL)
#undef CE_NC_DECL
    if (!first) {
#define CE_NC_LOAD1(i, j) if (NK > j) a##i##_##j = CE_NC_LD(out + j * P * B + i * B);
#define CE_NC_LOAD(i)                                                                       \
        if (i < np) {                                                                       \
            CE_NC_LOAD1(i, 0) CE_NC_LOAD1(i, 1) CE_NC_LOAD1(i, 2) CE_NC_LOAD1(i, 3)         \
        }
        CE_NC_PIX(CE_NC_LOAD)
#undef CE_NC_LOAD
#undef CE_NC_LOAD1
    }
    const ptrdiff_t wstep = NK * B;
    for (int cb = 0; cb < Cb; cb++) {
        const float *xb = x + cb * P * B;
        for (int c = 0; c < CE_NC_B; c++, w += wstep) {
            ce_nc_vf w0 = CE_NC_LD(w), w1 = {0}, w2 = {0}, w3 = {0};
            if (NK > 1) w1 = CE_NC_LD(w + B);
            if (NK > 2) w2 = CE_NC_LD(w + 2 * B);
            if (NK > 3) w3 = CE_NC_LD(w + 3 * B);
#define CE_NC_FMA(i)                                                                        \
            {                                                                               \
                float v = xb[o##i + c];                                                     \
                a##i##_0 += w0 * v;                                                         \
                if (NK > 1) a##i##_1 += w1 * v;                                             \
                if (NK > 2) a##i##_2 += w2 * v;                                             \
                if (NK > 3) a##i##_3 += w3 * v;                                             \
            }
            CE_NC_PIX(CE_NC_FMA)
#undef CE_NC_FMA
        }
    }
#define CE_NC_OUT1(i, j)                                                                    \
    if (NK > j) {                                                                           \
        ptrdiff_t at = j * P * B + i * B;                                                   \
        ce_nc_vf v = a##i##_##j;                                                            \
        if (last) {                                                                         \
            v += CE_NC_LD(bias + j * B);                                                    \
            if (res)                                                                        \
                v += CE_NC_LD(res + at);                                                    \
            v = ce_nc_act(v, act);                                                          \
        }                                                                                   \
        CE_NC_ST(out + at, v);                                                              \
    }
#define CE_NC_OUT(i)                                                                        \
    if (i < np) {                                                                           \
        CE_NC_OUT1(i, 0) CE_NC_OUT1(i, 1) CE_NC_OUT1(i, 2) CE_NC_OUT1(i, 3)                 \
    }
    CE_NC_PIX(CE_NC_OUT)
#undef CE_NC_OUT
#undef CE_NC_OUT1
#undef CE_NC_PIX
}

#define CE_NC_PW_TILE_N(NK)                                                                 \
    static void ce_nc_pw_tile##NK(const float *restrict x, ptrdiff_t P, int Cb,             \
                                  const float *restrict w, const float *bias,               \
                                  const float *res, float *out, int act, int np,            \
                                  int first, int last)                                      \
    {                                                                                       \
        ce_nc_pw_tile(x, P, Cb, w, NK, bias, res, out, act, np, first, last);               \
    }
CE_NC_PW_TILE_N(1)
CE_NC_PW_TILE_N(2)
CE_NC_PW_TILE_N(3)
CE_NC_PW_TILE_N(4)
#undef CE_NC_PW_TILE_N

/* Tiles t0 .. t1 (of 6 pixels) of the output blocks of group g, for one image, in batches of
 * CE_NC_BATCH input blocks.
 *   x: the image's input [Cb][P][16]; wpack: all groups' weights, group g at
 *   g * 4 * 16 * Cb * 16 floats, holding min(4, Kb - 4g) blocks; bias: Kb * 16 values;
 *   res/out: the image's [Kb][P][16]. */
#define CE_NC_BATCH 8

static void ce_nc_pw_group(const float *x, ptrdiff_t P, int Cb, const float *wpack, int Kb,
                           int g, const float *bias, const float *res, float *out, int act,
                           ptrdiff_t t0, ptrdiff_t t1)
{
    const ptrdiff_t B = CE_NC_B;
    int kb0 = g * CE_NC_GROUP;
    int nk = Kb - kb0 < CE_NC_GROUP ? Kb - kb0 : CE_NC_GROUP;
    const float *bb = bias + kb0 * B;
    ptrdiff_t ob = (ptrdiff_t)kb0 * P * B;
    for (int c0 = 0; c0 < Cb; c0 += CE_NC_BATCH) {
        int nb = Cb - c0 < CE_NC_BATCH ? Cb - c0 : CE_NC_BATCH;
        int first = c0 == 0, last = c0 + nb == Cb;
        const float *w = wpack + ((ptrdiff_t)kb0 * Cb + (ptrdiff_t)c0 * nk) * B * B;
        for (ptrdiff_t t = t0; t < t1; t++) {
            ptrdiff_t p0 = t * CE_NC_TILE_PIXELS;
            int np = P - p0 < CE_NC_TILE_PIXELS ? (int)(P - p0) : CE_NC_TILE_PIXELS;
            const float *xs = x + ((ptrdiff_t)c0 * P + p0) * B;
            const float *rs = res ? res + ob + p0 * B : NULL;
            float *os = out + ob + p0 * B;
            switch (nk) {
            case 4: ce_nc_pw_tile4(xs, P, nb, w, bb, rs, os, act, np, first, last); break;
            case 3: ce_nc_pw_tile3(xs, P, nb, w, bb, rs, os, act, np, first, last); break;
            case 2: ce_nc_pw_tile2(xs, P, nb, w, bb, rs, os, act, np, first, last); break;
            default: ce_nc_pw_tile1(xs, P, nb, w, bb, rs, os, act, np, first, last); break;
            }
        }
    }
}

/* ---- Depthwise ------------------------------------------------------------------------------
 * One output pixel of one channel block, every tap checked against the plane's edges. */
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

/* One output row of one channel block: out[ox] for ox < OW, from the block's input plane
 * x[H][W][16]; w: kh * kw vectors of weights (tap-major), bias one vector. Taps in the padding
 * are skipped. For 3x3 kernels the columns whose taps are all inside the plane run without
 * checks, over the kernel rows inside it. */
static void ce_nc_dw_row(const float *x, int H, int W, int OW, int oy, int sh, int sw, int pt,
                         int pl, int kh, int kw, int dh, int dw, const float *w,
                         const float *bias, float *out, int act)
{
    const ptrdiff_t B = CE_NC_B;
    const ce_nc_vf b = CE_NC_LD(bias);
    int iy0 = oy * sh - pt;
    int lo = 0, hi = 0;     /* [lo, hi): the unchecked columns */
    if (kh == 3 && kw == 3) {
        /* ox * sw - pl >= 0 and ox * sw - pl + 2 * dw <= W - 1 */
        int last = W - 1 - 2 * dw + pl;
        lo = (pl + sw - 1) / sw;
        hi = last < 0 ? 0 : last / sw + 1;
        if (hi > OW) hi = OW;
        if (lo > hi) lo = hi;
    }
    for (int ox = 0; ox < lo; ox++)
        CE_NC_ST(out + ox * B, ce_nc_act(ce_nc_dw_pixel(x, H, W, iy0, ox * sw - pl, kh, kw, dh,
                                                        dw, w, b), act));
    if (hi > lo) {
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
        const ptrdiff_t d1 = (ptrdiff_t)dw * B, d2 = 2 * d1;
        if (nr == 3) {
            for (int ox = lo; ox < hi; ox++) {
                ptrdiff_t at = (ptrdiff_t)(ox * sw - pl) * B;
                const float *s0 = r[0] + at, *s1 = r[1] + at, *s2 = r[2] + at;
                ce_nc_vf acc = b + wv[0] * CE_NC_LD(s0) + wv[1] * CE_NC_LD(s0 + d1)
                               + wv[2] * CE_NC_LD(s0 + d2);
                acc += wv[3] * CE_NC_LD(s1) + wv[4] * CE_NC_LD(s1 + d1) + wv[5] * CE_NC_LD(s1 + d2);
                acc += wv[6] * CE_NC_LD(s2) + wv[7] * CE_NC_LD(s2 + d1) + wv[8] * CE_NC_LD(s2 + d2);
                CE_NC_ST(out + ox * B, ce_nc_act(acc, act));
            }
        } else {
            for (int ox = lo; ox < hi; ox++) {
                ptrdiff_t at = (ptrdiff_t)(ox * sw - pl) * B;
                ce_nc_vf acc = b;
                for (int k = 0; k < nr; k++) {
                    const float *s = r[k] + at;
                    acc += wv[k * 3] * CE_NC_LD(s) + wv[k * 3 + 1] * CE_NC_LD(s + d1)
                           + wv[k * 3 + 2] * CE_NC_LD(s + d2);
                }
                CE_NC_ST(out + ox * B, ce_nc_act(acc, act));
            }
        }
    }
    for (int ox = hi > lo ? hi : lo; ox < OW; ox++)
        CE_NC_ST(out + ox * B, ce_nc_act(ce_nc_dw_pixel(x, H, W, iy0, ox * sw - pl, kh, kw, dh,
                                                        dw, w, b), act));
}

/* ---- Direct, NCHW in ---------------------------------------------------------------------------
 * A dense convolution with few input channels (a network's first layer) reading NCHW planes and
 * writing channel blocks: eight output pixels of one block at a time, each tap's weights one
 * vector multiplied by the input value at each pixel (a broadcast). Taps outside the plane are
 * skipped, with the same order of sums as inside it.
 *   x: the image's C planes H x W; w: the block's [C][kh][kw][16] weights; bias: one vector;
 *   out: the block's output row, OW pixels of 16. */
#define CE_NC_DIRECT_PIXELS 8

static inline __attribute__((always_inline)) void
ce_nc_direct_chunk(const float *x, int C, int H, int W, int iy0, int ix0, int sw, int kh,
                   int kw, int dh, int dw, const float *w, ce_nc_vf b, float *out, int act,
                   int np, const int checked)
{
    ce_nc_vf a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b;
    for (int c = 0; c < C; c++) {
        const float *plane = x + (ptrdiff_t)c * H * W;
        for (int u = 0; u < kh; u++) {
            int iy = iy0 + u * dh;
            if (iy < 0 || iy >= H) {
                w += kw * CE_NC_B;
                continue;
            }
            const float *row = plane + (ptrdiff_t)iy * W;
            for (int v = 0; v < kw; v++, w += CE_NC_B) {
                ce_nc_vf wv = CE_NC_LD(w);
                int ix = ix0 + v * dw;
#define CE_NC_TAP(j, a)                                                                     \
                if (!checked)                                                               \
                    a += wv * row[ix + j * sw];                                             \
                else if (j < np && ix + j * sw >= 0 && ix + j * sw < W)                     \
                    a += wv * row[ix + j * sw];
                CE_NC_TAP(0, a0) CE_NC_TAP(1, a1) CE_NC_TAP(2, a2) CE_NC_TAP(3, a3)
                CE_NC_TAP(4, a4) CE_NC_TAP(5, a5) CE_NC_TAP(6, a6) CE_NC_TAP(7, a7)
#undef CE_NC_TAP
            }
        }
    }
    ce_nc_vf acc[CE_NC_DIRECT_PIXELS] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int j = 0; j < np; j++)
        CE_NC_ST(out + j * CE_NC_B, ce_nc_act(acc[j], act));
}

static void ce_nc_direct_row(const float *x, int C, int H, int W, int OW, int oy, int sh,
                             int sw, int pt, int pl, int kh, int kw, int dh, int dw,
                             const float *w, const float *bias, float *out, int act)
{
    const ce_nc_vf b = CE_NC_LD(bias);
    int iy0 = oy * sh - pt;
    int rows_inside = iy0 >= 0 && iy0 + (kh - 1) * dh < H;
    for (int ox = 0; ox < OW; ox += CE_NC_DIRECT_PIXELS) {
        int np = OW - ox < CE_NC_DIRECT_PIXELS ? OW - ox : CE_NC_DIRECT_PIXELS;
        int ix0 = ox * sw - pl;
        int last = ix0 + (CE_NC_DIRECT_PIXELS - 1) * sw + (kw - 1) * dw;
        if (rows_inside && np == CE_NC_DIRECT_PIXELS && ix0 >= 0 && last < W)
            ce_nc_direct_chunk(x, C, H, W, iy0, ix0, sw, kh, kw, dh, dw, w, b,
                               out + (ptrdiff_t)ox * CE_NC_B, act, np, 0);
        else
            ce_nc_direct_chunk(x, C, H, W, iy0, ix0, sw, kh, kw, dh, dw, w, b,
                               out + (ptrdiff_t)ox * CE_NC_B, act, np, 1);
    }
}

/* ---- Layout changes --------------------------------------------------------------------------
 * One channel block of one image: src holds nc <= 16 planes of P pixels (plane stride P);
 * dst[P][16] gets them channel-interleaved, zero in channels nc .. 15. */
static void ce_nc_to_blocked(const float *src, ptrdiff_t P, int nc, float *dst)
{
    float tile[16][16];
    for (ptrdiff_t p0 = 0; p0 < P; p0 += 16) {
        int n = P - p0 < 16 ? (int)(P - p0) : 16;
        for (int c = 0; c < 16; c++) {
            if (c < nc) {
                const float *s = src + c * P + p0;
                for (int j = 0; j < n; j++)
                    tile[j][c] = s[j];
            } else {
                for (int j = 0; j < n; j++)
                    tile[j][c] = 0.0f;
            }
        }
        memcpy(dst + p0 * 16, tile, (size_t)n * 16 * sizeof(float));
    }
}

/* The inverse: channels 0 .. nc of the block src[P][16] into nc planes of P pixels at dst. */
static void ce_nc_from_blocked(const float *src, ptrdiff_t P, int nc, float *dst)
{
    float tile[16][16];
    for (ptrdiff_t p0 = 0; p0 < P; p0 += 16) {
        int n = P - p0 < 16 ? (int)(P - p0) : 16;
        memcpy(tile, src + p0 * 16, (size_t)n * 16 * sizeof(float));
        for (int c = 0; c < nc; c++) {
            float *d = dst + c * P + p0;
            for (int j = 0; j < n; j++)
                d[j] = tile[j][c];
        }
    }
}

/* Mean over the P pixels of one block src[P][16], into 16 sums (summed in pixel order). */
static void ce_nc_block_mean(const float *src, ptrdiff_t P, float *mean16)
{
    ce_nc_vf s = {0};
    for (ptrdiff_t p = 0; p < P; p++)
        s += CE_NC_LD(src + p * 16);
    s = s * (1.0f / (float)P);
    memcpy(mean16, &s, sizeof s);
}

#endif
