/* A pointwise layer and the depthwise layer that reads it, in one pass over channel blocks
 * (NCHWc, _nchwc.h): an inverted bottleneck's expansion (MobileNetV2 and V3, MNASNet,
 * EfficientNet) without its expanded map. Each thread keeps the last kh rows of the expanded
 * map, every block of them, in a ring of rows in its own buffer; an output row of the
 * depthwise layer first expands the input rows its window reaches that the ring does not hold
 * yet, then runs over the ring. The expanded map, six times the input's channels, is then
 * written and read in L2 rather than through memory.
 *
 * The ring's rows run on into zero columns on both sides, so every output column runs
 * unchecked, eight at a time (ce_nc_dw8_buffered, as a small plane does in _nchwc_dw.h):
 * each output is the bias, then its taps in row-major order, the kernel rows outside the map
 * skipped and the columns outside it read as zeros (finite depthwise weights only: the caller
 * checks). Each expanded value is the pointwise tile's sum over the input channels in their
 * order, as the pointwise layer alone computes it; each output is computed by one thread, so
 * the results do not depend on the thread count.
 */
#ifndef CE_NCHWC_EXPAND_H
#define CE_NCHWC_EXPAND_H

#include <string.h>

#include "_nchwc.h"
#include "_nchwc_dw.h"

typedef struct {
    const float *x;             /* input [N][Cb][H][W][B] */
    int Cb, tail;               /* input blocks; real channels of the last one */
    const float *wp, *bp;       /* pointwise weights (pack_pointwise) and Kb * B biases */
    ce_act_t pact;
    int Kb;                     /* expanded blocks */
    int H, W, OH, OW, sh, sw, pt, pl, kh, kw;
    const float *wd, *bd;       /* depthwise weights [Kb][kh][kw][B] and Kb * B biases */
    ce_act_t dact;
    float *out;                 /* [N][Kb][OH][OW][B] */
    int cols;                   /* vectors per ring row (ce_nc_xdw_cols) */
    float *bufs;                /* the threads' rings, per_thread floats apart */
    ptrdiff_t per_thread;
} ce_nc_xdw_job;

/* Vectors per ring row: the input columns at offset pl, and the zeros the eight-column groups
 * of the depthwise layer reach beyond them. */
static inline int ce_nc_xdw_cols(int W, int OW, int sw, int kw, int pl)
{
    int cols = ce_nc_dw_plane_cols(OW, sw, kw, 1);
    return cols > pl + W ? cols : pl + W;
}

/* Floats of one thread's ring: kh rows of every expanded block. */
static inline ptrdiff_t ce_nc_xdw_ring_floats(int Kb, int kh, int cols)
{
    return (ptrdiff_t)Kb * kh * cols * CE_NC_B;
}

/* Row iy of image n expanded into ring row ``dst`` (block 0's, blocks ``bs`` floats apart),
 * from its column pl on. */
static void ce_nc_xdw_expand_row(const ce_nc_xdw_job *j, ptrdiff_t n, int iy, float *dst,
                                 ptrdiff_t bs)
{
    const ptrdiff_t B = CE_NC_B, P = (ptrdiff_t)j->H * j->W;
    const float *x = j->x + (n * j->Cb * P + (ptrdiff_t)iy * j->W) * B;
    const ce_nc_tiling tiling = ce_nc_tiles(j->W);
    const ptrdiff_t T = (j->W + CE_NC_TILE_PIXELS - 1) / CE_NC_TILE_PIXELS;
    const int later = !CE_NC_ACT_INLINE(j->pact.code);
    const ce_act_t tile_act = later ? (ce_act_t){CE_ACT_CODE_NONE, 0.0f, 0.0f} : j->pact;
    for (int kb0 = 0; kb0 < j->Kb; kb0 += CE_NC_GROUP) {
        const int nk = j->Kb - kb0 < CE_NC_GROUP ? j->Kb - kb0 : CE_NC_GROUP;
        const float *wg = j->wp + (ptrdiff_t)kb0 * j->Cb * B * B;
        float *d = dst + kb0 * bs;
#if CE_NC_QUAD
        /* two full groups at once, as the pointwise layer runs them (_nchwc.h) */
        if (kb0 + 2 * CE_NC_GROUP <= j->Kb) {
            const float *wgb = wg + (ptrdiff_t)CE_NC_GROUP * j->Cb * B * B;
            for (int c0 = 0; c0 < j->Cb; c0 += CE_NC_BATCH) {
                const int nb = j->Cb - c0 < CE_NC_BATCH ? j->Cb - c0 : CE_NC_BATCH;
                const int first = c0 == 0, last = c0 + nb == j->Cb;
                const ptrdiff_t wo = (ptrdiff_t)c0 * 2 * B * B;
                ce_nc_pw_quad_px(x + (ptrdiff_t)c0 * P * B, P, nb, last ? j->tail : CE_NC_B,
                                 wg + wo, wgb + wo, j->bp + kb0 * B, NULL, d, bs, tile_act,
                                 first, last, 0, j->W);
            }
            if (later)
                for (int k = 0; k < 2 * CE_NC_GROUP; k++)
                    ce_nc_act_span(d + k * bs, j->W, j->pact);
            kb0 += CE_NC_GROUP;
            continue;
        }
#endif
        for (int c0 = 0; c0 < j->Cb; c0 += CE_NC_BATCH) {
            const int nb = j->Cb - c0 < CE_NC_BATCH ? j->Cb - c0 : CE_NC_BATCH;
            const int first = c0 == 0, last = c0 + nb == j->Cb;
            const float *w = wg + (ptrdiff_t)c0 * nk * B * B;
            ce_nc_pw_span(tiling, 0, T, nk, x + (ptrdiff_t)c0 * P * B, P, nb,
                          last ? j->tail : CE_NC_B, w, j->bp + kb0 * B, NULL, d, bs, tile_act,
                          first, last);
        }
        if (later)
            for (int k = 0; k < nk; k++)
                ce_nc_act_span(d + k * bs, j->W, j->pact);
    }
}

/* Units [lo, hi) of (image, output row) pairs, every expanded block of each, through the
 * ring ``ring``. A range that starts inside an image expands the rows its first window
 * reaches again (kh - sh of them another range expanded too). */
static void ce_nc_xdw_units(const ce_nc_xdw_job *j, float *ring, ptrdiff_t lo, ptrdiff_t hi)
{
    const ptrdiff_t B = CE_NC_B, row = (ptrdiff_t)j->cols * B, bs = j->kh * row;
    const int kh = j->kh, kw = j->kw;
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    const int inline_act = CE_NC_ACT_INLINE(j->dact.code);
    const ce_act_t store_act = inline_act ? j->dact : none;
    /* the zero columns; the expanded rows fill the rest */
    memset(ring, 0, (size_t)ce_nc_xdw_ring_floats(j->Kb, kh, j->cols) * sizeof(float));
    for (ptrdiff_t n = lo / j->OH; n * j->OH < hi; n++) {
        const int y0 = (int)(lo > n * j->OH ? lo - n * j->OH : 0);
        const int y1 = (int)(hi < (n + 1) * j->OH ? hi - n * j->OH : j->OH);
        int next = 0;       /* the first input row not yet expanded for this range */
        for (int oy = y0; oy < y1; oy++) {
            const int iy0 = oy * j->sh - j->pt;
            const int need = iy0 + kh < j->H ? iy0 + kh : j->H;
            if (oy == y0 || next < iy0)
                next = iy0 > 0 ? iy0 : 0;
            for (; next < need; next++)
                ce_nc_xdw_expand_row(j, n, next, ring + (next % kh) * row + j->pl * B, bs);
            float *o = j->out + (n * j->Kb * j->OH + oy) * (ptrdiff_t)j->OW * B;
            for (int kb = 0; kb < j->Kb; kb++, o += (ptrdiff_t)j->OH * j->OW * B) {
                const float *r[16], *wr[16];
                int nr = 0;
                for (int u = 0; u < kh; u++) {
                    const int iy = iy0 + u;
                    if (iy >= 0 && iy < j->H) {
                        r[nr] = ring + kb * bs + (iy % kh) * row;
                        wr[nr] = j->wd + ((ptrdiff_t)kb * kh + u) * kw * B;
                        nr++;
                    }
                }
                ce_nc_dw8_row(r, wr, nr, kw, B, j->sw, CE_NC_LD(j->bd + kb * B), j->OW, o,
                              store_act);
                if (!inline_act)
                    ce_nc_act_span(o, j->OW, j->dact);
            }
        }
    }
}

#endif
