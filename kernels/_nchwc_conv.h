/* Dense convolution (one group, any kernel, stride, dilation and padding) from channel blocks
 * to channel blocks (NCHWc, _nchwc.h): the pointwise tile of _nchwc.h with taps. A tile is
 * NP <= 6 output pixels of one output row by NK <= 4 output blocks; for each input block, tap
 * (u, v) and input channel c it broadcasts the input value under each of its pixels and
 * multiplies it into the NK weight vectors of (c, u, v): 6 x 4 fused multiply-adds per four
 * vector loads and six broadcasts, as in the pointwise kernel.
 *
 * Padding is read, not copied: a tap whose input row lies outside the plane is skipped for the
 * whole tile, and a pixel whose input column does is pointed at a block of zeros for that tap.
 * A stride or dilation only changes which columns are read. Or (ce_nc_convp_band, chosen by
 * engine/dispatch/layout.py dense_padded) the tiles read a copy of the input with the padding
 * as zeros, unchecked and across output rows.
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

/* the input value under pixel i for channel c: through the pixel's pointer for the tap */
#define CE_NC_CONV_XV(i, c) p##i[c]

/* Where a tile's pixels read. On the input itself (base NULL): H, W the input plane; iy0 the
 * input row of tap u = 0 (oy * sh - pt), ix0 the input column of pixel 0 at tap v = 0
 * (ox * sw - pl), pixels sw columns apart; a tap whose row lies outside the plane is skipped for
 * the whole tile, a pixel whose column does reads a block of zeros. Or on a copy of the input
 * with its padding as zeros (see ce_nc_convp_band): base[i] is pixel i's window origin, floats
 * into a padded plane, and tap (u, v) is u * ustep + v * vstep floats on; nothing is checked
 * and the pixels may lie on different output rows. */
typedef struct {
    int H, W, iy0, ix0, sw, dh, dw;
    const ptrdiff_t *base;
    ptrdiff_t ustep, vstep;
} ce_nc_tile_at;

/* One tile over input blocks [0, nb) of a batch; PADDED (a constant in each instance) says
 * which way of ``at`` the pixels read.
 *   x: the batch's first input block at the plane's pixel (0, 0); blocks xs floats apart;
 *   nclast: input channels of the batch's last block (B but for the layer's last block);
 *   w: the batch's packed weights; bias: NK vectors; res/out: the tile's first pixel of its
 *   first output block, blocks os floats apart (res NULL without a residual);
 *   first: start from zero, else from out; last: finish (bias, residual, activation). */
static inline __attribute__((always_inline)) void
ce_nc_conv_tile(const float *restrict x, ptrdiff_t xs, int nb, int nclast, int kh, int kw,
                const ce_nc_tile_at *at, const float *restrict w, const float *restrict bias,
                const float *res, float *out, ptrdiff_t os, ce_act_t act, int first, int last,
                const int NK, const int NP, const int PADDED)
{
    const ptrdiff_t B = CE_NC_B, wstep = NK * CE_NC_B;
    const int H = at->H, W = at->W, iy0 = at->iy0, ix0 = at->ix0, sw = at->sw, dh = at->dh,
              dw = at->dw;
    const ptrdiff_t ustep = at->ustep, vstep = at->vstep;
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
#define CE_NC_BASE(i) const float *b##i = PADDED && i < NP ? xb + at->base[i] : xb;
        CE_NC_PIX(CE_NC_BASE)
#undef CE_NC_BASE
        for (int u = 0; u < kh; u++) {
            const int iy = iy0 + u * dh;
            if (!PADDED && (iy < 0 || iy >= H)) {
                w += (ptrdiff_t)kw * CE_NC_B * wstep;
                continue;
            }
            const float *row = xb + (ptrdiff_t)iy * W * B;
            for (int v = 0; v < kw; v++, w += CE_NC_B * wstep) {
                const int ix = ix0 + v * dw;
                const ptrdiff_t off = u * ustep + v * vstep;
#define CE_NC_PTR(i)                                                                        \
                const float *p##i = ce_nc_zero_block;                                       \
                if (PADDED)                                                                 \
                    p##i = b##i + off;                                                      \
                else if (i < NP && ix + i * sw >= 0 && ix + i * sw < W)                     \
                    p##i = row + (ptrdiff_t)(ix + i * sw) * B;
                CE_NC_PIX(CE_NC_PTR)
#undef CE_NC_PTR
                const float *wc = w;
                CE_NC_TILE_MACS(wc, nc, wstep, CE_NC_CONV_XV)
            }
        }
    }
    CE_NC_TILE_STORE_ALL
#undef CE_NC_PIX
}

typedef void (*ce_nc_conv_tile_fn)(const float *, ptrdiff_t, int, int, int, int,
                                   const ce_nc_tile_at *, const float *, const float *,
                                   const float *, float *, ptrdiff_t, ce_act_t, int, int);

#define CE_NC_CONV_TILE_N(name, PADDED, NK, NP)                                             \
    static void name##_##NK##_##NP(const float *x, ptrdiff_t xs, int nb, int nclast, int kh, \
                                   int kw, const ce_nc_tile_at *at, const float *w,         \
                                   const float *bias, const float *res, float *out,         \
                                   ptrdiff_t os, ce_act_t act, int first, int last)         \
    {                                                                                       \
        ce_nc_conv_tile(x, xs, nb, nclast, kh, kw, at, w, bias, res, out, os, act, first,   \
                        last, NK, NP, PADDED);                                              \
    }
#define CE_NC_CONV_TILES_NK(name, PADDED, NK)                                               \
    CE_NC_CONV_TILE_N(name, PADDED, NK, 1) CE_NC_CONV_TILE_N(name, PADDED, NK, 2)           \
    CE_NC_CONV_TILE_N(name, PADDED, NK, 3) CE_NC_CONV_TILE_N(name, PADDED, NK, 4)           \
    CE_NC_CONV_TILE_N(name, PADDED, NK, 5) CE_NC_CONV_TILE_N(name, PADDED, NK, 6)
#if CE_NC_GROUP == 4
#define CE_NC_CONV_TILES(name, PADDED)                                                      \
    CE_NC_CONV_TILES_NK(name, PADDED, 1) CE_NC_CONV_TILES_NK(name, PADDED, 2)               \
    CE_NC_CONV_TILES_NK(name, PADDED, 3) CE_NC_CONV_TILES_NK(name, PADDED, 4)
#else
#define CE_NC_CONV_TILES(name, PADDED)                                                      \
    CE_NC_CONV_TILES_NK(name, PADDED, 1) CE_NC_CONV_TILES_NK(name, PADDED, 2)
#endif
CE_NC_CONV_TILES(ce_nc_conv_tile_checked, 0)
CE_NC_CONV_TILES(ce_nc_conv_tile_padded, 1)
#undef CE_NC_CONV_TILES
#undef CE_NC_CONV_TILES_NK
#undef CE_NC_CONV_TILE_N
static const ce_nc_conv_tile_fn ce_nc_conv_tiles[CE_NC_GROUP][CE_NC_TILE_PIXELS] =
    CE_NC_TILE_TABLE(ce_nc_conv_tile_checked);
static const ce_nc_conv_tile_fn ce_nc_convp_tiles[CE_NC_GROUP][CE_NC_TILE_PIXELS] =
    CE_NC_TILE_TABLE(ce_nc_conv_tile_padded);

/* Group g's share of a dense layer's packed weights and bias (layout above): its first output
 * block kb0, its nk <= GROUP blocks, their weights wg ([Cb][kh][kw][B][nk * B], per_block
 * floats an input block) and bias bb. Both band functions below run on it. */
typedef struct {
    int kb0, nk;
    ptrdiff_t per_block;
    const float *wg, *bb;
} ce_nc_conv_group;

static inline ce_nc_conv_group ce_nc_conv_group_of(const float *w, const float *bias, int Cb,
                                                   int Kb, int g, int kh, int kw)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_conv_group q;
    q.kb0 = g * CE_NC_GROUP;
    q.nk = Kb - q.kb0 < CE_NC_GROUP ? Kb - q.kb0 : CE_NC_GROUP;
    q.per_block = (ptrdiff_t)kh * kw * B * q.nk * B;
    q.wg = w + (ptrdiff_t)q.kb0 * Cb * kh * kw * B * B;
    q.bb = bias + q.kb0 * B;
    return q;
}

/* Output rows [oy0, oy1) of the output blocks of group g, for one image.
 *   x: the image's input [Cb][H][W][B], C channels; w: every group's packed weights, group g
 *   at g * GROUP * B * Cb * kh * kw * B floats, holding min(GROUP, Kb - GROUP g) blocks;
 *   bias: Kb * B values; res/out: the image's [Kb][OH][OW][B]; batch: input blocks per batch. */
static void ce_nc_conv_band(const float *x, int C, int H, int W, int Kb, int OH, int OW,
                            int g, int oy0, int oy1, int sh, int sw, int pt, int pl, int kh,
                            int kw, int dh, int dw, const float *w, const float *bias,
                            const float *res, float *out, ce_act_t act, int batch)
{
    const ptrdiff_t B = CE_NC_B, xs = (ptrdiff_t)H * W * B, os = (ptrdiff_t)OH * OW * B;
    const int Cb = (C + CE_NC_B - 1) / CE_NC_B;
    const ce_nc_conv_group q = ce_nc_conv_group_of(w, bias, Cb, Kb, g, kh, kw);
    /* a row in even tiles (ce_nc_tile_start): 7 as 4 + 3, not 6 + 1 */
    const ce_nc_tiling tiling = ce_nc_tiles(OW);
    const int tiles = (OW + CE_NC_TILE_PIXELS - 1) / CE_NC_TILE_PIXELS;
    for (int c0 = 0; c0 < Cb; c0 += batch) {
        int nb = Cb - c0 < batch ? Cb - c0 : batch;
        int first = c0 == 0, last = c0 + nb == Cb;
        int nclast = last ? C - (Cb - 1) * CE_NC_B : CE_NC_B;
        const float *xb = x + c0 * xs, *wb = q.wg + c0 * q.per_block;
        for (int oy = oy0; oy < oy1; oy++) {
            ptrdiff_t o0 = (ptrdiff_t)q.kb0 * os + (ptrdiff_t)oy * OW * B;
            for (int t = 0; t < tiles; t++) {
                int ox = (int)ce_nc_tile_start(tiling, t);
                int np = (int)ce_nc_tile_start(tiling, t + 1) - ox;
                ptrdiff_t at = o0 + (ptrdiff_t)ox * B;
                const ce_nc_tile_at where = {H, W, oy * sh - pt, ox * sw - pl, sw, dh, dw,
                                             NULL, 0, 0};
                ce_nc_conv_tiles[q.nk - 1][np - 1](xb, xs, nb, nclast, kh, kw, &where, wb,
                                                   q.bb, res ? res + at : NULL, out + at, os,
                                                   act, first, last);
            }
        }
    }
}

/* ---- NCHW in and out, by bands --------------------------------------------------------------
 * A layer whose input and output are NCHW, run on blocks band by band: output rows [oy0, oy1)
 * of one image take the input rows they read, converted to blocks in the thread's scratch, the
 * tiles of every group of output blocks over them, and the band's blocks converted back into
 * out. Each band's tensors are written and read by one thread while they are in its cache: a
 * layout change of the whole tensor split among the threads otherwise hands half of each
 * tensor from one core's cache to the other's (64->128 3x3 stride 2 on 56x56, two threads:
 * 0.85 ms with whole-tensor layout changes, the kernel alone 0.50). The sums are the dense
 * kernel's, in its order.
 *   x, out: the image's NCHW planes; w, bias: as ce_nc_conv_band; scratch:
 *   ce_nc_band_floats(...) floats from a 64-byte boundary. */
/* input rows a band of ``rows`` output rows reads at most: its window's, or the plane's H */
static inline ptrdiff_t ce_nc_band_in_rows(int rows, int kh, int sh, int dh, int H)
{
    ptrdiff_t n = (ptrdiff_t)(rows - 1) * sh + (ptrdiff_t)(kh - 1) * dh + 1;
    return n < H ? n : H;
}

static inline ptrdiff_t ce_nc_band_floats(int C, int K, int H, int W, int OW, int rows, int kh,
                                          int sh, int dh)
{
    const ptrdiff_t B = CE_NC_B, in = (ptrdiff_t)(C + B - 1) / B * B * W;
    return (in * ce_nc_band_in_rows(rows, kh, sh, dh, H) + 15) / 16 * 16
           + (ptrdiff_t)(K + B - 1) / B * B * rows * OW;
}

static void ce_nc_conv_nchw_band(const float *x, int C, int H, int W, int K, int OH, int OW,
                                 int oy0, int oy1, int sh, int sw, int pt, int pl, int kh,
                                 int kw, int dh, int dw, const float *w, const float *bias,
                                 float *out, ce_act_t act, int batch, float *scratch)
{
    const int B = CE_NC_B, Cb = (C + B - 1) / B, Kb = (K + B - 1) / B, rows = oy1 - oy0;
    const ptrdiff_t plane = (ptrdiff_t)H * W, oplane = (ptrdiff_t)OH * OW;
    /* the input rows [a, b) the band reads; rows outside them are padding */
    ptrdiff_t a = (ptrdiff_t)oy0 * sh - pt;
    ptrdiff_t b = a + (ptrdiff_t)(rows - 1) * sh + (ptrdiff_t)(kh - 1) * dh + 1;
    a = a < 0 ? 0 : (a > H ? H : a);
    b = b > H ? H : (b < a ? a : b);
    const ptrdiff_t in_pixels = (b - a) * W;
    float *xin = scratch;
    float *ob = scratch + ((ptrdiff_t)Cb * B * W * ce_nc_band_in_rows(rows, kh, sh, dh, H) + 15)
                          / 16 * 16;
    for (int cb = 0; cb < Cb; cb++)
        ce_nc_to_blocked(x + (ptrdiff_t)cb * B * plane + a * W, plane, in_pixels,
                         C - cb * B < B ? C - cb * B : B, xin + cb * in_pixels * B);
    /* band row r is output row oy0 + r; in xin, input row a is row 0 */
    const int bpt = (int)(pt + a - (ptrdiff_t)oy0 * sh);
    for (int g = 0; g * CE_NC_GROUP < Kb; g++)
        ce_nc_conv_band(xin, C, (int)(b - a), W, Kb, rows, OW, g, 0, rows, sh, sw, bpt, pl, kh,
                        kw, dh, dw, w, bias, NULL, ob, act, batch);
    for (int kb = 0; kb < Kb; kb++)
        ce_nc_from_blocked(ob + (ptrdiff_t)kb * rows * OW * B, (ptrdiff_t)rows * OW,
                           K - kb * B < B ? K - kb * B : B,
                           out + (ptrdiff_t)kb * B * oplane + (ptrdiff_t)oy0 * OW, oplane);
}

/* ---- Padded input ------------------------------------------------------------------------------
 * The same tiles on a copy of the input whose planes carry the padding as zeros (Hp x Wp, the
 * input's row r at row r + pt, its column c at column c + pl): no tap is checked, a tap moves
 * every pixel's pointer by one offset, and a tile's six pixels may run on into the next output
 * row, so that narrow maps (13x13, 7x7) fill whole tiles. Products of a weight and a padding
 * zero are added: the caller takes this path only with finite weights. */

/* The window origins of np output pixels from (oy, ox) on, row after row of OW: base[i], floats
 * into a padded plane Wp wide; (oy, ox) is left at the pixel after them. Stepped, not divided:
 * a tile of a grouped layer's two-block groups is a few hundred cycles. */
static inline void ce_nc_window_origins(ptrdiff_t *base, int np, ptrdiff_t *oy, ptrdiff_t *ox,
                                        int OW, int sh, int sw, int Wp)
{
    for (int i = 0; i < np; i++) {
        base[i] = (*oy * sh * Wp + *ox * sw) * CE_NC_B;
        if (++*ox == OW) {
            *ox = 0;
            ++*oy;
        }
    }
}

/* Tiles [t0, t1) of the output plane (row-major, ce_nc_tile_start) of the output blocks of
 * group g, for one image, from its padded input xpad [Cb][Hp][Wp][B]; as ce_nc_conv_band
 * otherwise. */
static void ce_nc_convp_band(const float *xpad, int C, int Hp, int Wp, int Kb, int OH, int OW,
                             int g, ptrdiff_t t0, ptrdiff_t t1, int sh, int sw, int kh, int kw,
                             int dh, int dw, const float *w, const float *bias,
                             const float *res, float *out, ce_act_t act, int batch)
{
    const ptrdiff_t B = CE_NC_B, xs = (ptrdiff_t)Hp * Wp * B, os = (ptrdiff_t)OH * OW * B;
    const int Cb = (C + CE_NC_B - 1) / CE_NC_B;
    const ce_nc_conv_group q = ce_nc_conv_group_of(w, bias, Cb, Kb, g, kh, kw);
    const ce_nc_tiling tiling = ce_nc_tiles((ptrdiff_t)OH * OW);
    for (int c0 = 0; c0 < Cb; c0 += batch) {
        int nb = Cb - c0 < batch ? Cb - c0 : batch;
        int first = c0 == 0, last = c0 + nb == Cb;
        int nclast = last ? C - (Cb - 1) * CE_NC_B : CE_NC_B;
        const float *xb = xpad + c0 * xs, *wb = q.wg + c0 * q.per_block;
        /* the output pixel (oy, ox) of the first tile's first pixel: one division a band */
        ptrdiff_t p = ce_nc_tile_start(tiling, t0), oy = p / OW, ox = p % OW;
        for (ptrdiff_t t = t0; t < t1; t++) {
            ptrdiff_t p0 = ce_nc_tile_start(tiling, t);
            int np = (int)(ce_nc_tile_start(tiling, t + 1) - p0);
            ptrdiff_t base[CE_NC_TILE_PIXELS];
            ce_nc_window_origins(base, np, &oy, &ox, OW, sh, sw, Wp);
            ptrdiff_t at = (ptrdiff_t)q.kb0 * os + p0 * B;
            const ce_nc_tile_at where = {0, 0, 0, 0, 0, 0, 0, base, (ptrdiff_t)dh * Wp * B,
                                         (ptrdiff_t)dw * B};
            ce_nc_convp_tiles[q.nk - 1][np - 1](xb, xs, nb, nclast, kh, kw, &where, wb, q.bb,
                                                res ? res + at : NULL, out + at, os, act,
                                                first, last);
        }
    }
}

#if CE_NC_QUAD
/* ---- Two groups at once on a padded input, on AVX2 ------------------------------------------
 * The quad of _nchwc.h with taps: 3 pixels x 4 output blocks (groups g and g + 1, both full),
 * each pixel's input at its own pointer for the tap (the window origins of ce_nc_convp_band),
 * the 8 channels of a block in assembly. A tile of up to 6 pixels runs as two parts of up to
 * 3; every sum as the two-block tile's, block after block, tap after tap, channel after
 * channel, so results do not change. */
#define CE_NC_QC_CH(c)                                                                      \
    "vbroadcastss " #c "*4(%[p0]), %%ymm13\n\t"                                             \
    "vbroadcastss " #c "*4(%[p1]), %%ymm14\n\t"                                             \
    "vbroadcastss " #c "*4(%[p2]), %%ymm15\n\t"                                             \
    CE_NC_Q_FMAS(c)

/* NP <= 3 pixels whose window origins are base[0 .. NP), floats into each input block of the
 * batch x (blocks xs apart); tap (u, v) ustep u + vstep v floats on. wa, wb: the two groups'
 * weights of the batch ([block][u][v][c][2 * B] each); the rest as ce_nc_conv_tile. */
static inline __attribute__((always_inline)) void
ce_nc_convq_tile(const float *restrict x, ptrdiff_t xs, int nb, int nclast, int kh, int kw,
                 const ptrdiff_t *base, ptrdiff_t ustep, ptrdiff_t vstep,
                 const float *restrict wa, const float *restrict wb, const int NP,
                 const float *restrict bias, const float *res, float *out, ptrdiff_t os,
                 ce_act_t act, int first, int last)
{
    const ptrdiff_t B = CE_NC_B;
    const int NK = 4;
#define CE_NC_PIX CE_NC_Q_PIX
    CE_NC_Q_OPEN
    for (int cb = 0; cb < nb; cb++) {
        const float *xb = x + cb * xs;
        const int nc = cb == nb - 1 ? nclast : CE_NC_B;
        const float *b0 = xb + base[0], *b1 = xb + base[NP > 1 ? 1 : 0];
        const float *b2 = xb + base[NP > 2 ? 2 : 0];
        for (int u = 0; u < kh; u++)
            for (int v = 0; v < kw; v++, wa += 2 * B * B, wb += 2 * B * B) {
                const ptrdiff_t off = u * ustep + v * vstep;
                const float *p0 = b0 + off, *p1 = b1 + off, *p2 = b2 + off;
                if (NP == 3 && nc == CE_NC_B) {
                    __asm__(CE_NC_QC_CH(0) CE_NC_QC_CH(1) CE_NC_QC_CH(2) CE_NC_QC_CH(3)
                            CE_NC_QC_CH(4) CE_NC_QC_CH(5) CE_NC_QC_CH(6) CE_NC_QC_CH(7)
                            : CE_NC_Q_SUMS
                            : [p0] "r"(p0), [p1] "r"(p1), [p2] "r"(p2), [wa] "r"(wa),
                              [wb] "r"(wb)
                            : "xmm12", "xmm13", "xmm14", "xmm15", "memory");
                    continue;
                }
                for (int c = 0; c < nc; c++) {
#define CE_NC_QC_FMA(i) CE_NC_Q_MACS(i, CE_NC_CONV_XV)
                    CE_NC_PIX(CE_NC_QC_FMA)
#undef CE_NC_QC_FMA
                }
            }
    }
    CE_NC_TILE_STORE_ALL
#undef CE_NC_PIX
}

#define CE_NC_CONVQ_N(NP)                                                                   \
    static void ce_nc_convq_##NP(const float *x, ptrdiff_t xs, int nb, int nclast, int kh,  \
                                 int kw, const ptrdiff_t *base, ptrdiff_t ustep,            \
                                 ptrdiff_t vstep, const float *wa, const float *wb,         \
                                 const float *bias, const float *res, float *out,           \
                                 ptrdiff_t os, ce_act_t act, int first, int last)           \
    {                                                                                       \
        ce_nc_convq_tile(x, xs, nb, nclast, kh, kw, base, ustep, vstep, wa, wb, NP, bias,   \
                         res, out, os, act, first, last);                                   \
    }
CE_NC_CONVQ_N(1)
CE_NC_CONVQ_N(2)
CE_NC_CONVQ_N(3)
#undef CE_NC_CONVQ_N
typedef void (*ce_nc_convq_fn)(const float *, ptrdiff_t, int, int, int, int, const ptrdiff_t *,
                               ptrdiff_t, ptrdiff_t, const float *, const float *,
                               const float *, const float *, float *, ptrdiff_t, ce_act_t, int,
                               int);
static const ce_nc_convq_fn ce_nc_convqs[3] = {ce_nc_convq_1, ce_nc_convq_2, ce_nc_convq_3};

/* ce_nc_convp_band for groups g and g + 1 at once, both full. */
static void ce_nc_convp_quad_band(const float *xpad, int C, int Hp, int Wp, int Kb, int OH,
                                  int OW, int g, ptrdiff_t t0, ptrdiff_t t1, int sh, int sw,
                                  int kh, int kw, int dh, int dw, const float *w,
                                  const float *bias, const float *res, float *out, ce_act_t act,
                                  int batch)
{
    const ptrdiff_t B = CE_NC_B, xs = (ptrdiff_t)Hp * Wp * B, os = (ptrdiff_t)OH * OW * B;
    const int Cb = (C + CE_NC_B - 1) / CE_NC_B;
    const ce_nc_conv_group qa = ce_nc_conv_group_of(w, bias, Cb, Kb, g, kh, kw);
    const ce_nc_conv_group qb = ce_nc_conv_group_of(w, bias, Cb, Kb, g + 1, kh, kw);
    const ce_nc_tiling tiling = ce_nc_tiles((ptrdiff_t)OH * OW);
    for (int c0 = 0; c0 < Cb; c0 += batch) {
        int nb = Cb - c0 < batch ? Cb - c0 : batch;
        int first = c0 == 0, last = c0 + nb == Cb;
        int nclast = last ? C - (Cb - 1) * CE_NC_B : CE_NC_B;
        const float *xb = xpad + c0 * xs;
        const float *wa = qa.wg + c0 * qa.per_block, *wb = qb.wg + c0 * qb.per_block;
        ptrdiff_t p = ce_nc_tile_start(tiling, t0), oy = p / OW, ox = p % OW;
        for (ptrdiff_t t = t0; t < t1; t++) {
            ptrdiff_t p0 = ce_nc_tile_start(tiling, t);
            int np = (int)(ce_nc_tile_start(tiling, t + 1) - p0);
            ptrdiff_t base[CE_NC_TILE_PIXELS];
            ce_nc_window_origins(base, np, &oy, &ox, OW, sh, sw, Wp);
            for (int h = 0; h < np; h += 3) {
                const int n = np - h < 3 ? np - h : 3;
                const ptrdiff_t at = (ptrdiff_t)qa.kb0 * os + (p0 + h) * B;
                ce_nc_convqs[n - 1](xb, xs, nb, nclast, kh, kw, base + h, (ptrdiff_t)dh * Wp * B,
                                    (ptrdiff_t)dw * B, wa, wb, qa.bb, res ? res + at : NULL,
                                    out + at, os, act, first, last);
            }
        }
    }
}
#endif

/* Groups [g_lo, g_hi) of ce_nc_convp_band, two full ones at a time where the quad runs them. */
static void ce_nc_convp_groups(const float *xpad, int C, int Hp, int Wp, int Kb, int OH, int OW,
                               int g_lo, int g_hi, ptrdiff_t t0, ptrdiff_t t1, int sh, int sw,
                               int kh, int kw, int dh, int dw, const float *w,
                               const float *bias, const float *res, float *out, ce_act_t act,
                               int batch)
{
    for (int g = g_lo; g < g_hi; g++) {
#if CE_NC_QUAD
        if (g + 1 < g_hi && (g + 2) * CE_NC_GROUP <= Kb) {
            ce_nc_convp_quad_band(xpad, C, Hp, Wp, Kb, OH, OW, g, t0, t1, sh, sw, kh, kw, dh, dw,
                                  w, bias, res, out, act, batch);
            g++;
            continue;
        }
#endif
        ce_nc_convp_band(xpad, C, Hp, Wp, Kb, OH, OW, g, t0, t1, sh, sw, kh, kw, dh, dw, w, bias,
                         res, out, act, batch);
    }
}

#endif
