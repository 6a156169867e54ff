/* Dense convolution (one group, any kernel, stride, dilation and padding) from channel blocks
 * to channel blocks (NCHWc, _nchwc.h): the pointwise tile of _nchwc.h with taps. A tile is
 * NP <= 6 output pixels of one output row by NK <= 4 output blocks; for each input block, tap
 * (u, v) and input channel c it broadcasts the input value under each of its pixels and
 * multiplies it into the NK weight vectors of (c, u, v): 6 x 4 fused multiply-adds per four
 * vector loads and six broadcasts, as in the pointwise kernel.
 *
 * Padding is read, not copied: a tap whose input row lies outside the plane is skipped for the
 * whole tile, and a pixel whose input column does is pointed at a block of zeros for that tap.
 * A stride or dilation only changes which columns are read.
 *
 * Weights (engine/ops/blocked.py pack_dense): per group of up to four output blocks,
 * [input block][u][v][c < B][NK * B], zero beyond the layer's channels. The input blocks go
 * in batches whose weights stay in L2 while the tiles of a band of output rows pass over them;
 * the sums of a batch are stored in the output and the next batch starts from them (exact,
 * they are the float32 accumulators), so the order of the sums, input block after block, tap
 * after tap, channel after channel, is the same for any batch, band or thread count. */
#ifndef CE_NCHWC_CONV_H
#define CE_NCHWC_CONV_H

#include "_nchwc.h"

static const float ce_nc_zero_block[CE_NC_B] __attribute__((aligned(64))) = {0};

/* One tile over input blocks [0, nb) of a batch.
 *   x: the batch's first input block at the image's pixel (0, 0); blocks xs floats apart;
 *   H, W: the input plane; iy0: the input row of tap u = 0 (oy * sh - pt); ix0: the input
 *   column of pixel 0, tap v = 0 (ox * sw - pl);
 *   nclast: input channels of the batch's last block (B but for the layer's last block);
 *   w: the batch's packed weights; bias: NK vectors; res/out: the tile's first pixel of its
 *   first output block, blocks os floats apart (res NULL without a residual);
 *   first: start from zero, else from out; last: finish (bias, residual, activation). */
static inline __attribute__((always_inline)) void
ce_nc_conv_tile(const float *restrict x, ptrdiff_t xs, int nb, int nclast, int H, int W,
                int iy0, int ix0, int sw, int kh, int kw, int dh, int dw,
                const float *restrict w, const float *restrict bias, const float *res,
                float *out, ptrdiff_t os, ce_act_t act, int first, int last, const int NK,
                const int NP)
{
    const ptrdiff_t B = CE_NC_B, wstep = NK * CE_NC_B;
#define CE_NC_PIX(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define CE_NC_DECL(i) ce_nc_vf a##i##_0 = {0}, a##i##_1 = {0}, a##i##_2 = {0}, a##i##_3 = {0};
    CE_NC_PIX(CE_NC_DECL)
#undef CE_NC_DECL
    if (!first) {
        CE_NC_PIX(CE_NC_TILE_LOAD)
    }
    for (int cb = 0; cb < nb; cb++) {
        const float *xb = x + cb * xs;
        const int nc = cb == nb - 1 ? nclast : CE_NC_B;
        for (int u = 0; u < kh; u++) {
            const int iy = iy0 + u * dh;
            if (iy < 0 || iy >= H) {
                w += (ptrdiff_t)kw * CE_NC_B * wstep;
                continue;
            }
            const float *row = xb + (ptrdiff_t)iy * W * B;
            for (int v = 0; v < kw; v++, w += CE_NC_B * wstep) {
                const int ix = ix0 + v * dw;
#define CE_NC_PTR(i)                                                                        \
                const float *p##i = ce_nc_zero_block;                                       \
                if (i < NP && ix + i * sw >= 0 && ix + i * sw < W)                          \
                    p##i = row + (ptrdiff_t)(ix + i * sw) * B;
                CE_NC_PIX(CE_NC_PTR)
#undef CE_NC_PTR
                const float *wc = w;
                for (int c = 0; c < nc; c++, wc += wstep) {
                    ce_nc_vf w0 = CE_NC_LD(wc), w1 = {0}, w2 = {0}, w3 = {0};
                    if (NK > 1) w1 = CE_NC_LD(wc + B);
                    if (NK > 2) w2 = CE_NC_LD(wc + 2 * B);
                    if (NK > 3) w3 = CE_NC_LD(wc + 3 * B);
#define CE_NC_FMA(i)                                                                        \
                    if (i < NP) {                                                           \
                        float xv = p##i[c];                                                 \
                        a##i##_0 += w0 * xv;                                                \
                        if (NK > 1) a##i##_1 += w1 * xv;                                    \
                        if (NK > 2) a##i##_2 += w2 * xv;                                    \
                        if (NK > 3) a##i##_3 += w3 * xv;                                    \
                    }
                    CE_NC_PIX(CE_NC_FMA)
#undef CE_NC_FMA
                }
            }
        }
    }
    CE_NC_TILE_STORE_ALL
#undef CE_NC_PIX
}

typedef void (*ce_nc_conv_tile_fn)(const float *, ptrdiff_t, int, int, int, int, int, int, int,
                                   int, int, int, int, const float *, const float *,
                                   const float *, float *, ptrdiff_t, ce_act_t, int, int);

#define CE_NC_CONV_TILE_N(NK, NP)                                                           \
    static void ce_nc_conv_tile_##NK##_##NP(                                                \
        const float *x, ptrdiff_t xs, int nb, int nclast, int H, int W, int iy0, int ix0,   \
        int sw, int kh, int kw, int dh, int dw, const float *w, const float *bias,          \
        const float *res, float *out, ptrdiff_t os, ce_act_t act, int first, int last)           \
    {                                                                                       \
        ce_nc_conv_tile(x, xs, nb, nclast, H, W, iy0, ix0, sw, kh, kw, dh, dw, w, bias,     \
                        res, out, os, act, first, last, NK, NP);                            \
    }
#define CE_NC_CONV_TILES_NK(NK)                                                             \
    CE_NC_CONV_TILE_N(NK, 1) CE_NC_CONV_TILE_N(NK, 2) CE_NC_CONV_TILE_N(NK, 3)              \
    CE_NC_CONV_TILE_N(NK, 4) CE_NC_CONV_TILE_N(NK, 5) CE_NC_CONV_TILE_N(NK, 6)
CE_NC_CONV_TILES_NK(1)
CE_NC_CONV_TILES_NK(2)
#if CE_NC_GROUP == 4
CE_NC_CONV_TILES_NK(3)
CE_NC_CONV_TILES_NK(4)
#endif
#undef CE_NC_CONV_TILES_NK
#undef CE_NC_CONV_TILE_N
/* [NK - 1][NP - 1] */
#define CE_NC_ROW(NK) {ce_nc_conv_tile_##NK##_1, ce_nc_conv_tile_##NK##_2,                   \
                       ce_nc_conv_tile_##NK##_3, ce_nc_conv_tile_##NK##_4,                   \
                       ce_nc_conv_tile_##NK##_5, ce_nc_conv_tile_##NK##_6}
static const ce_nc_conv_tile_fn ce_nc_conv_tiles[CE_NC_GROUP][CE_NC_TILE_PIXELS] = {
#if CE_NC_GROUP == 4
    CE_NC_ROW(1), CE_NC_ROW(2), CE_NC_ROW(3), CE_NC_ROW(4)};
#else
    CE_NC_ROW(1), CE_NC_ROW(2)};
#endif
#undef CE_NC_ROW

/* Output rows [oy0, oy1) of the output blocks of group g, for one image.
 *   x: the image's input [Cb][H][W][B], C channels; w: every group's packed weights, group g
 *   at g * GROUP * B * Cb * kh * kw * B floats, holding min(GROUP, Kb - GROUP g) blocks; bias: Kb * B
 *   values; res/out: the image's [Kb][OH][OW][B]; batch: input blocks per batch. */
static void ce_nc_conv_band(const float *x, int C, int H, int W, int Kb, int OH, int OW,
                            int g, int oy0, int oy1, int sh, int sw, int pt, int pl, int kh,
                            int kw, int dh, int dw, const float *w, const float *bias,
                            const float *res, float *out, ce_act_t act, int batch)
{
    const ptrdiff_t B = CE_NC_B, xs = (ptrdiff_t)H * W * B, os = (ptrdiff_t)OH * OW * B;
    const int Cb = (C + CE_NC_B - 1) / CE_NC_B;
    const int kb0 = g * CE_NC_GROUP;
    const int nk = Kb - kb0 < CE_NC_GROUP ? Kb - kb0 : CE_NC_GROUP;
    const ptrdiff_t per_block = (ptrdiff_t)kh * kw * B * nk * B;
    const float *wg = w + (ptrdiff_t)kb0 * Cb * kh * kw * B * B;
    const float *bb = bias + kb0 * B;
    /* a row in tiles of as even widths as its pixels allow: 7 as 3 + 4, not 6 + 1, whose one
     * pixel keeps only NK sums in flight, too few to hide the multiply-add's latency */
    const int tiles = (OW + CE_NC_TILE_PIXELS - 1) / CE_NC_TILE_PIXELS;
    for (int c0 = 0; c0 < Cb; c0 += batch) {
        int nb = Cb - c0 < batch ? Cb - c0 : batch;
        int first = c0 == 0, last = c0 + nb == Cb;
        int nclast = last ? C - (Cb - 1) * CE_NC_B : CE_NC_B;
        const float *xb = x + c0 * xs, *wb = wg + c0 * per_block;
        for (int oy = oy0; oy < oy1; oy++) {
            ptrdiff_t o0 = (ptrdiff_t)kb0 * os + (ptrdiff_t)oy * OW * B;
            for (int t = 0; t < tiles; t++) {
                int ox = t * OW / tiles, np = (t + 1) * OW / tiles - ox;
                ptrdiff_t at = o0 + (ptrdiff_t)ox * B;
                ce_nc_conv_tiles[nk - 1][np - 1](
                    xb, xs, nb, nclast, H, W, oy * sh - pt, ox * sw - pl, sw, kh, kw, dh, dw,
                    wb, bb, res ? res + at : NULL, out + at, os, act, first, last);
            }
        }
    }
}

/* ---- Padded input ------------------------------------------------------------------------------
 * The same tile on a copy of the input whose planes carry the padding as zeros (Hp x Wp, the
 * input's row r at row r + pt, its column c at column c + pl): no tap is checked, a tap moves
 * every pixel's pointer by one offset, and a tile's six pixels may run on into the next output
 * row, so that narrow maps (13x13, 7x7) fill whole tiles. base[i]: pixel i's window origin,
 * floats into a padded plane; the input blocks of the batch xs floats apart. Products of a
 * weight and a padding zero are added: the caller takes this path only with finite weights. */
static inline __attribute__((always_inline)) void
ce_nc_convp_tile(const float *restrict x, ptrdiff_t xs, int nb, int nclast,
                 const ptrdiff_t *base, int kh, int kw, ptrdiff_t ustep, ptrdiff_t vstep,
                 const float *restrict w, const float *restrict bias, const float *res,
                 float *out, ptrdiff_t os, ce_act_t act, int first, int last, const int NK,
                 const int NP)
{
    const ptrdiff_t B = CE_NC_B, wstep = NK * CE_NC_B;
#define CE_NC_PIX(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define CE_NC_DECL(i) ce_nc_vf a##i##_0 = {0}, a##i##_1 = {0}, a##i##_2 = {0}, a##i##_3 = {0};
    CE_NC_PIX(CE_NC_DECL)
#undef CE_NC_DECL
    if (!first) {
        CE_NC_PIX(CE_NC_TILE_LOAD)
    }
    for (int cb = 0; cb < nb; cb++) {
        const int nc = cb == nb - 1 ? nclast : CE_NC_B;
#define CE_NC_BASE(i) const float *b##i = x + cb * xs + (i < NP ? base[i] : 0);
        CE_NC_PIX(CE_NC_BASE)
#undef CE_NC_BASE
        for (int u = 0; u < kh; u++) {
            for (int v = 0; v < kw; v++, w += CE_NC_B * wstep) {
                const ptrdiff_t off = u * ustep + v * vstep;
#define CE_NC_PTR(i) const float *p##i = b##i + off;
                CE_NC_PIX(CE_NC_PTR)
#undef CE_NC_PTR
                const float *wc = w;
                for (int c = 0; c < nc; c++, wc += wstep) {
                    ce_nc_vf w0 = CE_NC_LD(wc), w1 = {0}, w2 = {0}, w3 = {0};
                    if (NK > 1) w1 = CE_NC_LD(wc + B);
                    if (NK > 2) w2 = CE_NC_LD(wc + 2 * B);
                    if (NK > 3) w3 = CE_NC_LD(wc + 3 * B);
#define CE_NC_FMA(i)                                                                        \
                    if (i < NP) {                                                           \
                        float xv = p##i[c];                                                 \
                        a##i##_0 += w0 * xv;                                                \
                        if (NK > 1) a##i##_1 += w1 * xv;                                    \
                        if (NK > 2) a##i##_2 += w2 * xv;                                    \
                        if (NK > 3) a##i##_3 += w3 * xv;                                    \
                    }
                    CE_NC_PIX(CE_NC_FMA)
#undef CE_NC_FMA
                }
            }
        }
    }
    CE_NC_TILE_STORE_ALL
#undef CE_NC_PIX
}

typedef void (*ce_nc_convp_tile_fn)(const float *, ptrdiff_t, int, int, const ptrdiff_t *, int,
                                    int, ptrdiff_t, ptrdiff_t, const float *, const float *,
                                    const float *, float *, ptrdiff_t, ce_act_t, int, int);

#define CE_NC_CONVP_TILE_N(NK, NP)                                                          \
    static void ce_nc_convp_tile_##NK##_##NP(                                               \
        const float *x, ptrdiff_t xs, int nb, int nclast, const ptrdiff_t *base, int kh,    \
        int kw, ptrdiff_t ustep, ptrdiff_t vstep, const float *w, const float *bias,        \
        const float *res, float *out, ptrdiff_t os, ce_act_t act, int first, int last)      \
    {                                                                                       \
        ce_nc_convp_tile(x, xs, nb, nclast, base, kh, kw, ustep, vstep, w, bias, res, out,  \
                         os, act, first, last, NK, NP);                                     \
    }
#define CE_NC_CONVP_TILES_NK(NK)                                                            \
    CE_NC_CONVP_TILE_N(NK, 1) CE_NC_CONVP_TILE_N(NK, 2) CE_NC_CONVP_TILE_N(NK, 3)           \
    CE_NC_CONVP_TILE_N(NK, 4) CE_NC_CONVP_TILE_N(NK, 5) CE_NC_CONVP_TILE_N(NK, 6)
CE_NC_CONVP_TILES_NK(1)
CE_NC_CONVP_TILES_NK(2)
#if CE_NC_GROUP == 4
CE_NC_CONVP_TILES_NK(3)
CE_NC_CONVP_TILES_NK(4)
#endif
#undef CE_NC_CONVP_TILES_NK
#undef CE_NC_CONVP_TILE_N
#define CE_NC_ROW(NK) {ce_nc_convp_tile_##NK##_1, ce_nc_convp_tile_##NK##_2,                 \
                       ce_nc_convp_tile_##NK##_3, ce_nc_convp_tile_##NK##_4,                 \
                       ce_nc_convp_tile_##NK##_5, ce_nc_convp_tile_##NK##_6}
static const ce_nc_convp_tile_fn ce_nc_convp_tiles[CE_NC_GROUP][CE_NC_TILE_PIXELS] = {
#if CE_NC_GROUP == 4
    CE_NC_ROW(1), CE_NC_ROW(2), CE_NC_ROW(3), CE_NC_ROW(4)};
#else
    CE_NC_ROW(1), CE_NC_ROW(2)};
#endif
#undef CE_NC_ROW

/* Output pixels [q0, q1) (row-major over the plane) of the output blocks of group g, for one
 * image, from its padded input xpad [Cb][Hp][Wp][B]; as ce_nc_conv_band otherwise. */
static void ce_nc_convp_band(const float *xpad, int C, int Hp, int Wp, int Kb, int OH, int OW,
                             int g, ptrdiff_t q0, ptrdiff_t q1, int sh, int sw, int kh, int kw,
                             int dh, int dw, const float *w, const float *bias,
                             const float *res, float *out, ce_act_t act, int batch)
{
    const ptrdiff_t B = CE_NC_B, xs = (ptrdiff_t)Hp * Wp * B, os = (ptrdiff_t)OH * OW * B;
    const int Cb = (C + CE_NC_B - 1) / CE_NC_B;
    const int kb0 = g * CE_NC_GROUP;
    const int nk = Kb - kb0 < CE_NC_GROUP ? Kb - kb0 : CE_NC_GROUP;
    const ptrdiff_t per_block = (ptrdiff_t)kh * kw * B * nk * B;
    const float *wg = w + (ptrdiff_t)kb0 * Cb * kh * kw * B * B;
    const float *bb = bias + kb0 * B;
    for (int c0 = 0; c0 < Cb; c0 += batch) {
        int nb = Cb - c0 < batch ? Cb - c0 : batch;
        int first = c0 == 0, last = c0 + nb == Cb;
        int nclast = last ? C - (Cb - 1) * CE_NC_B : CE_NC_B;
        const float *xb = xpad + c0 * xs, *wb = wg + c0 * per_block;
        for (ptrdiff_t q = q0; q < q1; q += CE_NC_TILE_PIXELS) {
            int np = q1 - q < CE_NC_TILE_PIXELS ? (int)(q1 - q) : CE_NC_TILE_PIXELS;
            ptrdiff_t base[CE_NC_TILE_PIXELS];
            for (int i = 0; i < np; i++) {
                ptrdiff_t oy = (q + i) / OW, ox = (q + i) % OW;
                base[i] = (oy * sh * Wp + ox * sw) * B;
            }
            ptrdiff_t at = (ptrdiff_t)kb0 * os + q * B;
            ce_nc_convp_tiles[nk - 1][np - 1](xb, xs, nb, nclast, base, kh, kw,
                                              (ptrdiff_t)dh * Wp * B, (ptrdiff_t)dw * B, wb,
                                              bb, res ? res + at : NULL, out + at, os, act,
                                              first, last);
        }
    }
}

#endif
