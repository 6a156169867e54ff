/* Grouped convolution on channel blocks (NCHWc, _nchwc.h), groups within a block.
 * A grouped convolution whose groups have g input and g output channels, g dividing B, B / g
 * groups to a block (ResNeXt's group width of 4 and 8, RegNet's 8 and 16): output block cb
 * reads input block cb only. For each tap and j < g, output lane l takes input lane
 * (l / g) g + j of its own group: with g = B that lane broadcast from memory, else the input
 * vector with lanes gathered by a fixed shuffle (idx[j]); so a tap costs g multiply-adds per
 * pixel, not B, and never reads another group's lanes (a NaN or infinity there stays there).
 * g = 8 in 16-channel blocks, on four pixels whose every tap lies inside the row:
 * ce_nc_group_pixels8.
 * Four output pixels at a time; taps outside the plane are skipped, and every output sums bias,
 * then taps (u, v) and its group's input channels in order, whatever the pixel's position.
 *   x: the block's input plane [H][W][B]; w: [kh][kw][g][B] (w[u][v][j][l]: output lane l's
 *   weight for its group's input channel j); bias one vector; out: the block's output row
 *   [OW][B]. */
#ifndef CE_NCHWC_GROUPED_H
#define CE_NCHWC_GROUPED_H

#include <string.h>

#include "_nchwc.h"

#if CE_NC_B == 16
typedef float ce_nc_hf __attribute__((vector_size(32)));       /* half a block */
typedef float ce_nc_hfu __attribute__((vector_size(32), aligned(4), may_alias));
#define CE_NC_HLD(p) ((ce_nc_hf)(*(const ce_nc_hfu *)(p)))
#endif

static inline void ce_nc_group_pixels(const float *x, int H, int W, int iy0, int ix0, int sw,
                                      int kh, int kw, int dh, int dw, const float *w, int g,
                                      const ce_nc_vi *idx, ce_nc_vf b, float *out, int np,
                                      ce_act_t act)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_vf a[4] = {b, b, b, b};
    for (int u = 0; u < kh; u++) {
        int iy = iy0 + u * dh;
        if (iy < 0 || iy >= H)
            continue;
        const float *row = x + (ptrdiff_t)iy * W * B;
        for (int v = 0; v < kw; v++) {
            const float *wt = w + (ptrdiff_t)(u * kw + v) * g * B;
            int ix = ix0 + v * dw;
            int inside = ix >= 0 && ix + (np - 1) * sw < W;
            if (inside && np == 4 && g == CE_NC_B) {
                const float *p0 = row + (ptrdiff_t)ix * B, *p1 = p0 + (ptrdiff_t)sw * B;
                const float *p2 = p1 + (ptrdiff_t)sw * B, *p3 = p2 + (ptrdiff_t)sw * B;
                for (int c = 0; c < CE_NC_B; c++) {
                    ce_nc_vf wc = CE_NC_LD(wt + c * B);
                    a[0] += wc * p0[c];
                    a[1] += wc * p1[c];
                    a[2] += wc * p2[c];
                    a[3] += wc * p3[c];
                }
            } else if (inside && np == 4) {
                const float *p0 = row + (ptrdiff_t)ix * B;
                ce_nc_vf x0 = CE_NC_LD(p0), x1 = CE_NC_LD(p0 + sw * B),
                         x2 = CE_NC_LD(p0 + 2 * sw * B), x3 = CE_NC_LD(p0 + 3 * sw * B);
                for (int j = 0; j < g; j++) {
                    ce_nc_vf wj = CE_NC_LD(wt + j * B);
                    a[0] += wj * __builtin_shuffle(x0, idx[j]);
                    a[1] += wj * __builtin_shuffle(x1, idx[j]);
                    a[2] += wj * __builtin_shuffle(x2, idx[j]);
                    a[3] += wj * __builtin_shuffle(x3, idx[j]);
                }
            } else {
                /* edges and the row's last pixels: the pixels whose tap lies in the plane, side
                 * by side as above (not one dependent chain each), the same sums in the same
                 * order */
                const float *pp[4];
                int in[4];
                for (int p = 0; p < 4; p++) {
                    int jx = ix + p * sw;
                    in[p] = p < np && jx >= 0 && jx < W;
                    pp[p] = in[p] ? row + (ptrdiff_t)jx * B : row;
                }
                if (g == CE_NC_B) {
                    for (int c = 0; c < CE_NC_B; c++) {
                        ce_nc_vf wc = CE_NC_LD(wt + c * B);
#pragma GCC unroll 4
                        for (int p = 0; p < 4; p++)
                            if (in[p])
                                a[p] += wc * pp[p][c];
                    }
                } else {
                    ce_nc_vf xs[4];
#pragma GCC unroll 4
                    for (int p = 0; p < 4; p++)
                        xs[p] = CE_NC_LD(pp[p]);
                    for (int j = 0; j < g; j++) {
                        ce_nc_vf wj = CE_NC_LD(wt + j * B);
#pragma GCC unroll 4
                        for (int p = 0; p < 4; p++)
                            if (in[p])
                                a[p] += wj * __builtin_shuffle(xs[p], idx[j]);
                    }
                }
            }
        }
    }
    for (int p = 0; p < np; p++)
        CE_NC_ST(out + (ptrdiff_t)p * B, ce_nc_act(a[p], act));
}

#if CE_NC_B == 16
/* g = 8, four pixels whose every tap lies inside the row: each half of the lanes against its
 * group's inputs broadcast from memory, 8-float vectors, no shuffles; per lane the same
 * multiply-adds in the same order as ce_nc_group_pixels. */
static inline void ce_nc_group_pixels8(const float *x, int H, int W, int iy0, int ix0, int sw,
                                       int kh, int kw, int dh, int dw, const float *w,
                                       ce_nc_vf b, float *out, ce_act_t act)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_hf lo[4], hi[4];
    for (int p = 0; p < 4; p++) {
        lo[p] = (ce_nc_hf){b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]};
        hi[p] = (ce_nc_hf){b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]};
    }
    for (int u = 0; u < kh; u++) {
        int iy = iy0 + u * dh;
        if (iy < 0 || iy >= H)
            continue;
        const float *row = x + (ptrdiff_t)iy * W * B;
        for (int v = 0; v < kw; v++) {
            const float *wt = w + (ptrdiff_t)(u * kw + v) * 8 * B;
            const float *p0 = row + (ptrdiff_t)(ix0 + v * dw) * B, *p1 = p0 + (ptrdiff_t)sw * B;
            const float *p2 = p1 + (ptrdiff_t)sw * B, *p3 = p2 + (ptrdiff_t)sw * B;
            for (int j = 0; j < 8; j++) {
                ce_nc_hf wl = CE_NC_HLD(wt + j * B), wh = CE_NC_HLD(wt + j * B + 8);
                lo[0] += wl * p0[j];
                hi[0] += wh * p0[8 + j];
                lo[1] += wl * p1[j];
                hi[1] += wh * p1[8 + j];
                lo[2] += wl * p2[j];
                hi[2] += wh * p2[8 + j];
                lo[3] += wl * p3[j];
                hi[3] += wh * p3[8 + j];
            }
        }
    }
    for (int p = 0; p < 4; p++) {
        float t[16];
        memcpy(t, &lo[p], sizeof lo[p]);
        memcpy(t + 8, &hi[p], sizeof hi[p]);
        CE_NC_ST(out + (ptrdiff_t)p * B, ce_nc_act(CE_NC_LD(t), act));
    }
}
#endif

/* g = 4 or 2 (ResNeXt-50's first stage: 4), a 3-wide kernel at unit stride and dilation, eight
 * pixels whose every tap lies inside the row: each input vector is shuffled g ways once and
 * used by the three outputs whose taps read it, where ce_nc_group_pixels shuffles it once per
 * tap (per multiply-add); a row's 3g weight vectors are held in registers. Each output takes
 * (v, j) in the same order, input pixel by input pixel: the sums of ce_nc_group_pixels.
 * 128 channels in groups of 4 on 56x56, one thread: 0.77 -> 0.38 ms
 * (bench/bench_dispatch.py layout/grouped). */
#define CE_NC_GROUP_ROW_PIXELS 8
static inline __attribute__((always_inline)) void
ce_nc_group_pixels_k3(const float *x, int H, int W, int iy0, int ix0, int kh, int dh,
                      const float *w, const int g, const ce_nc_vi *idx, ce_nc_vf b, float *out,
                      ce_act_t act)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_vf a[CE_NC_GROUP_ROW_PIXELS];
#pragma GCC unroll 8
    for (int p = 0; p < CE_NC_GROUP_ROW_PIXELS; p++)
        a[p] = b;
    for (int u = 0; u < kh; u++) {
        int iy = iy0 + u * dh;
        if (iy < 0 || iy >= H)
            continue;
        const float *row = x + ((ptrdiff_t)iy * W + ix0) * B;
        const float *wt = w + (ptrdiff_t)u * 3 * g * B;
        ce_nc_vf wv[3][8];
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++)
#pragma GCC unroll 8
            for (int j = 0; j < g; j++)
                wv[v][j] = CE_NC_LD(wt + (ptrdiff_t)(v * g + j) * B);
#pragma GCC unroll 10
        for (int i = 0; i < CE_NC_GROUP_ROW_PIXELS + 2; i++) {
            ce_nc_vf xi = CE_NC_LD(row + (ptrdiff_t)i * B);
#pragma GCC unroll 8
            for (int j = 0; j < g; j++) {
                ce_nc_vf xs = __builtin_shuffle(xi, idx[j]);
#pragma GCC unroll 3
                for (int v = 0; v < 3; v++)
                    if (i - v >= 0 && i - v < CE_NC_GROUP_ROW_PIXELS)
                        a[i - v] += wv[v][j] * xs;
            }
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < CE_NC_GROUP_ROW_PIXELS; p++)
        CE_NC_ST(out + (ptrdiff_t)p * B, ce_nc_act(a[p], act));
}

static void ce_nc_group_row(const float *x, int H, int W, int OW, int oy, int sh, int sw,
                            int pt, int pl, int kh, int kw, int dh, int dw, const float *w,
                            int g, const float *bias, float *out, ce_act_t act)
{
    /* idx[j][l] = (l / g) g + j: lane l's input for the group's channel j */
    ce_nc_vi idx[CE_NC_B], base;
    for (int l = 0; l < CE_NC_B; l++)
        base[l] = l / g * g;
    for (int j = 0; j < g; j++)
        idx[j] = base + j;
    const ce_nc_vf b = CE_NC_LD(bias);
    const int rows3 = (g == 4 || g == 2) && kw == 3 && sw == 1 && dw == 1;
    for (int ox = 0; ox < OW; ox += 4) {
        int np = OW - ox < 4 ? OW - ox : 4;
        int ix0 = ox * sw - pl;
        if (rows3 && OW - ox >= CE_NC_GROUP_ROW_PIXELS && ix0 >= 0
                && ix0 + CE_NC_GROUP_ROW_PIXELS + 1 < W) {
            if (g == 4)
                ce_nc_group_pixels_k3(x, H, W, oy * sh - pt, ix0, kh, dh, w, 4, idx, b,
                                      out + (ptrdiff_t)ox * CE_NC_B, act);
            else
                ce_nc_group_pixels_k3(x, H, W, oy * sh - pt, ix0, kh, dh, w, 2, idx, b,
                                      out + (ptrdiff_t)ox * CE_NC_B, act);
            ox += CE_NC_GROUP_ROW_PIXELS - 4;
            continue;
        }
#if CE_NC_B == 16
        if (g == 8 && np == 4 && ix0 >= 0 && ix0 + (kw - 1) * dw + 3 * sw < W)
            ce_nc_group_pixels8(x, H, W, oy * sh - pt, ix0, sw, kh, kw, dh, dw, w, b,
                                out + (ptrdiff_t)ox * CE_NC_B, act);
        else
#endif
            ce_nc_group_pixels(x, H, W, oy * sh - pt, ix0, sw, kh, kw, dh, dw, w, g, idx, b,
                               out + (ptrdiff_t)ox * CE_NC_B, np, act);
    }
}

#endif
