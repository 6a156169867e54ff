/* A stride-1 convolution on channel blocks computed tap by tap where each tap reads the input
 * (live taps): a dilated layer whose taps mostly fall on padding, as in DeepLabV3's ASPP (rate
 * 12 on a 14x14 map: 324 of 1764 tap-output pairs read the input). For each tap, the outputs
 * whose input pixel under it lies inside the map form a rectangle (engine/ops/live_taps.py
 * computes them); over it the tap is a pointwise convolution, run by the pointwise tile of
 * _nchwc.h on the input shifted by the tap, adding into the output's partial sums. The output
 * plane is the input plane's size, so the input and the output blocks lie equally far apart,
 * as the tile takes them.
 *
 * One unit of work is one image's group of up to CE_NC_GROUP output blocks over a band of
 * output rows: the output starts as the bias, each tap's rectangle (in the caller's order)
 * adds its sums over the input channels in order, then the activation is mapped over the
 * band. Every output's order of sums is fixed, whatever the thread count. A tap's weights for
 * the group and a batch of input blocks stay in L1 over its rectangle's tiles.
 */
#ifndef CE_NCHWC_TAPS_H
#define CE_NCHWC_TAPS_H

#include "_nchwc.h"

/* Outputs [oy0, oy1) x [ox0, ox1) read the input from (iy0, ix0) on under tap ``tap``. */
typedef struct {
    int tap, oy0, oy1, ox0, ox1, iy0, ix0;
} ce_nt_rect;

typedef struct {
    const float *x;             /* [N][Cb][H][W][B], the last block's first ``tail`` real */
    int Cb, tail, H, W, Kb;
    const float *w;             /* per tap, its pointwise weights as ce_nc_pw_group reads them */
    ptrdiff_t tap_floats;
    const ce_nt_rect *rects;
    int nrects;
    const float *bias;          /* Kb * B */
    ce_act_t act;
    float *out;                 /* [N][Kb][H][W][B] */
    int G, bands;               /* groups of output blocks, bands of rows per group */
} ce_nt_job;

/* Unit u: image u / (G * bands), group (u / bands) % G, band u % bands. */
static void ce_nt_unit(const ce_nt_job *j, ptrdiff_t u)
{
    const ptrdiff_t B = CE_NC_B, P = (ptrdiff_t)j->H * j->W;
    const ptrdiff_t n = u / ((ptrdiff_t)j->G * j->bands);
    const int g = (int)(u / j->bands % j->G), band = (int)(u % j->bands);
    const int y0 = (int)((ptrdiff_t)j->H * band / j->bands);
    const int y1 = (int)((ptrdiff_t)j->H * (band + 1) / j->bands);
    const int kb0 = g * CE_NC_GROUP;
    const int nk = j->Kb - kb0 < CE_NC_GROUP ? j->Kb - kb0 : CE_NC_GROUP;
    const float *x = j->x + n * j->Cb * P * B;
    float *out = j->out + (n * j->Kb + kb0) * P * B;
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    if (y0 == y1)
        return;
    for (int k = 0; k < nk; k++) {
        ce_nc_vf b = CE_NC_LD(j->bias + (ptrdiff_t)(kb0 + k) * B);
        float *o = out + (k * P + (ptrdiff_t)y0 * j->W) * B;
        for (ptrdiff_t p = 0; p < (ptrdiff_t)(y1 - y0) * j->W; p++)
            CE_NC_ST(o + p * B, b);
    }
    for (int r = 0; r < j->nrects; r++) {
        const ce_nt_rect *t = &j->rects[r];
        int oy0 = t->oy0 > y0 ? t->oy0 : y0, oy1 = t->oy1 < y1 ? t->oy1 : y1;
        if (oy0 >= oy1)
            continue;
        const float *wg = j->w + t->tap * j->tap_floats + (ptrdiff_t)kb0 * j->Cb * B * B;
        for (int c0 = 0; c0 < j->Cb; c0 += CE_NC_BATCH) {
            int nb = j->Cb - c0 < CE_NC_BATCH ? j->Cb - c0 : CE_NC_BATCH;
            int tail = c0 + nb == j->Cb ? j->tail : CE_NC_B;
            const float *w = wg + (ptrdiff_t)c0 * nk * B * B;
            for (int oy = oy0; oy < oy1; oy++) {
                int iy = t->iy0 + (oy - t->oy0);
                /* the row's whole tiles in one run, then what is left; neither first nor
                 * last: the sums continue from ``out`` and are stored as they are */
                const int span = t->ox1 - t->ox0, full = span / CE_NC_TILE_PIXELS;
                const int rest = span - full * CE_NC_TILE_PIXELS;
                const float *xs = x + ((ptrdiff_t)c0 * P + (ptrdiff_t)iy * j->W + t->ix0) * B;
                float *os = out + ((ptrdiff_t)oy * j->W + t->ox0) * B;
                if (full)
                    ce_nc_pw_runs[nk - 1][CE_NC_TILE_PIXELS - 1](xs, P, nb, tail, w, j->bias,
                                                                 NULL, os, P * B, none, 0, 0,
                                                                 full);
                if (rest) {
                    const ptrdiff_t at = (ptrdiff_t)full * CE_NC_TILE_PIXELS * B;
                    ce_nc_pw_runs[nk - 1][rest - 1](xs + at, P, nb, tail, w, j->bias, NULL,
                                                    os + at, P * B, none, 0, 0, 1);
                }
            }
        }
    }
    if (j->act.code != CE_ACT_CODE_NONE)
        for (int k = 0; k < nk; k++) {
            float *o = out + (k * P + (ptrdiff_t)y0 * j->W) * B;
            ce_nc_act_map(o, o, (ptrdiff_t)(y1 - y0) * j->W * B, 1.0f, 0.0f, j->act);
        }
}

#endif
