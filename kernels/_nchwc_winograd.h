/* Winograd F(m x m, 3x3), stride 1, on channel-blocked tensors (NCHWc, _nchwc.h), m = 2, 4 or
 * 6, a = m + 2; with dilation (dh, dw) on the phase sub-images: a tile of phase (p, q) has its
 * outputs and its patch dh rows and dw columns apart, starting at output (p, q) (the
 * space-to-batch view of kernels/conv_winograd.pyx, folded into the addressing here too).
 *
 * A tile's transforms mix its pixels and never its channels, so on blocks they run on whole
 * vectors of B channels: V = B^T d B for one input block of one tile is a^2 vector loads, the
 * 1-D transforms on vectors and a^2 stores, with no transposes and no padded copy (the taps
 * outside the input read zero vectors). The GEMMs
 *     M[e][k, t] = sum_c U[e][k, c] V[e][c, t]     (e < a^2)
 * are then a^2 pointwise convolutions over "pixels" that are tiles: V[e] is stored as a
 * blocked tensor [Cb][S][B] of S tiles, and the pointwise kernel (ce_nc_pw_group, with U[e]
 * packed as its weights) writes M[e] as [Kb][S][B]; the output transform Y = A^T M A reads a
 * tile's a^2 vectors of one output block and writes m x m output vectors with the bias, the
 * residual and the activation.
 *
 * U is made once (engine.ops.blocked.pack_winograd), or per call where it would take too much
 * memory (engine/dispatch/winograd.py): then each GEMM work item (one column j of the tile
 * elements, one group of output blocks) makes U[i][j] for every row i from the weights, its
 * 3x3 taps side by side for the group's output channels, into the thread's buffer, sharing
 * the product with G^T of column j between the rows.
 *
 * The tiles (tile rows of every image in turn) are taken S at a time, a strip, so that V and
 * M stay in cache between the three phases. A layer of many strips gives each thread whole
 * strips, each with its own V and M, and no waits between the phases; one of few strips splits
 * each phase of a strip among the threads (input: block x tile, GEMM: element x group of output
 * blocks, output: block x tile), waiting for each. Every value is computed by the same
 * instructions whatever the split: the results do not depend on the thread count.
 *
 * The transforms are those of kernels/_winograd_tiles.pxi (F(2,3), F(4,3), F(6,3) with the
 * rows of engine/ops/winograd.py's TRANSFORMS), here on vectors.
 *
 * Groups (RegNet's 3x3 layers, whose groups each take and make whole blocks): each group is a
 * layer of its own blocks in and out, its U packed after the previous group's; the strips of
 * every group are the work units, so that a thread takes whole (group, strip) pairs.
 *
 * NaN and infinity: B^T d B takes differences, so one infinite input would spread NaN over its
 * tiles' outputs. The input phase folds every V vector into a check sum (v * 0 is NaN for a
 * non-finite v, else 0); if one is not finite, the call stops before the GEMMs, writing no
 * output, and says so: its caller then runs the layer by the dense blocked kernel, whose sums
 * follow the direct convolution's.
 */
#ifndef CE_NCHWC_WINOGRAD_H
#define CE_NCHWC_WINOGRAD_H

#include "_nchwc.h"
#include "_pool.h"

#define CE_NW_MAX_A 8

/* ---- 1-D transforms on vectors: in[k * is] -> out[k * os] ---- */
#define CE_NW_INLINE static inline __attribute__((always_inline)) void

CE_NW_INLINE ce_nw_bt4(const ce_nc_vf *d, int is, ce_nc_vf *o, int os)
{
    ce_nc_vf d0 = d[0], d1 = d[is], d2 = d[2 * is], d3 = d[3 * is];
    o[0] = d0 - d2;
    o[os] = d1 + d2;
    o[2 * os] = d2 - d1;
    o[3 * os] = d1 - d3;
}

CE_NW_INLINE ce_nw_at4(const ce_nc_vf *m, int is, ce_nc_vf *o, int os)
{
    ce_nc_vf m0 = m[0], m1 = m[is], m2 = m[2 * is], m3 = m[3 * is];
    o[0] = m0 + m1 + m2;
    o[os] = m1 - m2 - m3;
}

CE_NW_INLINE ce_nw_bt6(const ce_nc_vf *d, int is, ce_nc_vf *o, int os)
{
    ce_nc_vf d0 = d[0], d1 = d[is], d2 = d[2 * is], d3 = d[3 * is], d4 = d[4 * is],
             d5 = d[5 * is];
    o[0] = 4.0f * d0 - 5.0f * d2 + d4;
    o[os] = (d3 + d4) - 4.0f * (d1 + d2);
    o[2 * os] = 4.0f * (d1 - d2) + (d4 - d3);
    o[3 * os] = 2.0f * (d3 - d1) + (d4 - d2);
    o[4 * os] = 2.0f * (d1 - d3) + (d4 - d2);
    o[5 * os] = 4.0f * d1 - 5.0f * d3 + d5;
}

CE_NW_INLINE ce_nw_at6(const ce_nc_vf *m, int is, ce_nc_vf *o, int os)
{
    ce_nc_vf m0 = m[0], m1 = m[is], m2 = m[2 * is], m3 = m[3 * is], m4 = m[4 * is],
             m5 = m[5 * is];
    o[0] = m0 + (m1 + m2) + (m3 + m4);
    o[os] = (m1 - m2) + 2.0f * (m3 - m4);
    o[2 * os] = (m1 + m2) + 4.0f * (m3 + m4);
    o[3 * os] = (m1 - m2) + 8.0f * (m3 - m4) + m5;
}

CE_NW_INLINE ce_nw_bt8(const ce_nc_vf *d, int is, ce_nc_vf *o, int os)
{
    ce_nc_vf d0 = d[0], d1 = d[is], d2 = d[2 * is], d3 = d[3 * is], d4 = d[4 * is],
             d5 = d[5 * is], d6 = d[6 * is], d7 = d[7 * is];
    ce_nc_vf a1 = (d2 + d6) - 4.25f * d4, b1 = (d1 + d5) - 4.25f * d3;
    ce_nc_vf a2 = (0.25f * d2 - 1.25f * d4) + d6, b2 = (0.5f * d1 - 2.5f * d3) + 2.0f * d5;
    ce_nc_vf a3 = (4.0f * d2 - 5.0f * d4) + d6, b3 = (2.0f * d1 - 2.5f * d3) + 0.5f * d5;
    o[0] = (d0 - d6) + 5.25f * (d4 - d2);
    o[os] = a1 + b1;
    o[2 * os] = a1 - b1;
    o[3 * os] = a2 + b2;
    o[4 * os] = a2 - b2;
    o[5 * os] = a3 + b3;
    o[6 * os] = a3 - b3;
    o[7 * os] = (d7 - d1) + 5.25f * (d3 - d5);
}

CE_NW_INLINE ce_nw_at8(const ce_nc_vf *m, int is, ce_nc_vf *o, int os)
{
    ce_nc_vf m0 = m[0], m7 = m[7 * is];
    ce_nc_vf a1 = m[is] + m[2 * is], s1 = m[is] - m[2 * is];
    ce_nc_vf a2 = m[3 * is] + m[4 * is], s2 = m[3 * is] - m[4 * is];
    ce_nc_vf a3 = m[5 * is] + m[6 * is], s3 = m[5 * is] - m[6 * is];
    o[0] = m0 + a1 + a2 + a3;
    o[os] = s1 + 2.0f * s2 + 0.5f * s3;
    o[2 * os] = a1 + 4.0f * a2 + 0.25f * a3;
    o[3 * os] = s1 + 8.0f * s2 + 0.125f * s3;
    o[4 * os] = a1 + 16.0f * a2 + 0.0625f * a3;
    o[5 * os] = (s1 + 32.0f * s2 + 0.03125f * s3) + m7;
}

CE_NW_INLINE ce_nw_bt(const int A, const ce_nc_vf *d, int is, ce_nc_vf *o, int os)
{
    if (A == 4)
        ce_nw_bt4(d, is, o, os);
    else if (A == 6)
        ce_nw_bt6(d, is, o, os);
    else
        ce_nw_bt8(d, is, o, os);
}

CE_NW_INLINE ce_nw_at(const int A, const ce_nc_vf *m, int is, ce_nc_vf *o, int os)
{
    if (A == 4)
        ce_nw_at4(m, is, o, os);
    else if (A == 6)
        ce_nw_at6(m, is, o, os);
    else
        ce_nw_at8(m, is, o, os);
}

/* ---- one tile of one block ---- */

/* V = B^T d B of the A x A patch at (iy0, ix0) of one block's plane x [H][W][B], its rows dh
 * and its columns dw apart (outside the plane: zeros; ``inside``: the patch lies within it),
 * element e stored at v + e * es; each stored vector folded into *chk. */
CE_NW_INLINE ce_nw_input_tile(const float *x, int H, int W, int iy0, int ix0, int dh, int dw,
                              const int A, const int inside, float *v, ptrdiff_t es,
                              ce_nc_vf *chk)
{
    ce_nc_vf d[CE_NW_MAX_A][CE_NW_MAX_A], t[CE_NW_MAX_A][CE_NW_MAX_A];
    const ce_nc_vf zero = {0};
    for (int r = 0; r < A; r++)
        for (int c = 0; c < A; c++) {
            int iy = iy0 + r * dh, ix = ix0 + c * dw;
            if (inside || (iy >= 0 && iy < H && ix >= 0 && ix < W))
                d[r][c] = CE_NC_LD(x + ((ptrdiff_t)iy * W + ix) * CE_NC_B);
            else
                d[r][c] = zero;
        }
    for (int c = 0; c < A; c++)
        ce_nw_bt(A, &d[0][c], CE_NW_MAX_A, &t[0][c], CE_NW_MAX_A);
    ce_nc_vf k = *chk;
    for (int r = 0; r < A; r++) {
        ce_nw_bt(A, &t[r][0], 1, &d[r][0], 1);
        for (int c = 0; c < A; c++) {
            CE_NC_ST(v + (ptrdiff_t)(r * A + c) * es, d[r][c]);
            k += d[r][c] * 0.0f;
        }
    }
    *chk = k;
}

/* Y = A^T M A of one tile of one output block (element e of M at mm + e * es), plus the bias
 * and the residual (res: NULL, or the tile's first output pixel), the ny x nx outputs that
 * exist stored from out (rows dh * OW pixels apart, columns dw), with the activation if it is
 * inline. */
CE_NW_INLINE ce_nw_output_tile(const float *mm, ptrdiff_t es, const int A, ce_nc_vf bias,
                               const float *res, float *out, int OW, int dh, int dw, int ny,
                               int nx, ce_act_t act)
{
    const int m = A - 2;
    ce_nc_vf d[CE_NW_MAX_A][CE_NW_MAX_A], t[CE_NW_MAX_A][CE_NW_MAX_A];
    for (int r = 0; r < A; r++)
        for (int c = 0; c < A; c++)
            d[r][c] = CE_NC_LD(mm + (ptrdiff_t)(r * A + c) * es);
    for (int c = 0; c < A; c++)
        ce_nw_at(A, &d[0][c], CE_NW_MAX_A, &t[0][c], CE_NW_MAX_A);
    for (int r = 0; r < m; r++) {
        if (r >= ny)
            break;
        ce_nw_at(A, &t[r][0], 1, &d[r][0], 1);
        for (int c = 0; c < m && c < nx; c++) {
            ptrdiff_t o = ((ptrdiff_t)r * dh * OW + (ptrdiff_t)c * dw) * CE_NC_B;
            ce_nc_vf y = d[r][c] + bias;
            if (res)
                y += CE_NC_LD(res + o);
            CE_NC_ST(out + o, ce_nc_act(y, act));
        }
    }
}

/* ---- the three phases of a strip ---- */

typedef struct {
    const float *x;             /* input [N][groups * Cb][H][W][B] */
    int Cb, tail, H, W, pt, pl; /* blocks of a group; tail: real channels of its last block */
    int A, TH, TW, OH, OW, Kb;  /* tile side a = m + 2; tiles per column and row of a phase */
    int dh, dw;                 /* dilation: dh x dw phases */
    const float *u;             /* a^2 pointwise packs of U[e], ue floats apart; or NULL, */
    ptrdiff_t ue;
    const float *taps;          /* ... and per group of output blocks [C][9][blocks * B] */
    const float *gm;            /* G, a x 3 */
    int C;                      /* real input channels */
    float *ubuf;                /* per call: a buffers of U[i][j] of one group per thread */
    ptrdiff_t ubuf_floats;      /* floats per thread */
    const float *zero;          /* Kb * B zeros: the GEMMs' bias */
    const float *bias, *res;    /* Kb * B values; residual [N][groups * Kb][OH][OW][B] or NULL */
    float *out;                 /* [N][groups * Kb][OH][OW][B] */
    ptrdiff_t x_img, o_img;     /* floats between images of x and of out (and res) */
    int groups, last_tail;      /* the last group's tail (the others' last blocks are full) */
    ce_act_t act;
    float *V, *M;               /* [a^2][Cb][S][B], [a^2][Kb][S][B] */
    ptrdiff_t s0, S;            /* the strip: tiles s0 .. s0 + S of all images' tiles, each
                                   image's phase row after phase row, its tile rows in turn,
                                   each across the column phases */
    int bad[CE_POOL_MAX_THREADS];
} ce_nw_job;

/* Where tile g (counted over all images) has its first output: image *n, row *oy, column *ox. */
static inline void ce_nw_tile_at(const ce_nw_job *j, ptrdiff_t g, const int m, ptrdiff_t *n,
                                 int *oy, int *ox)
{
    const ptrdiff_t row_tiles = (ptrdiff_t)j->dw * j->TW;
    const ptrdiff_t per_image = (ptrdiff_t)j->dh * j->TH * row_tiles;
    ptrdiff_t r = g % per_image, row = r / row_tiles, col = r % row_tiles;
    *n = g / per_image;
    *oy = (int)(row / j->TH) + j->dh * (int)(row % j->TH) * m;
    *ox = (int)(col / j->TW) + j->dw * (int)(col % j->TW) * m;
}

static inline void ce_nw_input_units_a(ce_nw_job *j, int thread, ptrdiff_t lo, ptrdiff_t hi,
                                       const int A)
{
    const int m = A - 2, dh = j->dh, dw = j->dw;
    const ptrdiff_t B = CE_NC_B, plane = (ptrdiff_t)j->H * j->W * B;
    const ptrdiff_t es = (ptrdiff_t)j->Cb * j->S * B;
    ce_nc_vf chk = {0};
    for (ptrdiff_t u = lo; u < hi; u++) {
        ptrdiff_t cb = u / j->S, t = u % j->S, n;
        int oy, ox;
        ce_nw_tile_at(j, j->s0 + t, m, &n, &oy, &ox);
        int iy0 = oy - j->pt, ix0 = ox - j->pl;
        const float *x = j->x + n * j->x_img + cb * plane;
        float *v = j->V + (cb * j->S + t) * B;
        if (iy0 >= 0 && ix0 >= 0 && iy0 + (A - 1) * dh < j->H && ix0 + (A - 1) * dw < j->W)
            ce_nw_input_tile(x, j->H, j->W, iy0, ix0, dh, dw, A, 1, v, es, &chk);
        else
            ce_nw_input_tile(x, j->H, j->W, iy0, ix0, dh, dw, A, 0, v, es, &chk);
    }
    float lanes[CE_NC_B];
    memcpy(lanes, &chk, sizeof chk);
    for (int i = 0; i < CE_NC_B; i++)
        if (lanes[i] != 0.0f)
            j->bad[thread] = 1;
}

static void ce_nw_input_units(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi)
{
    ce_nw_job *j = (ce_nw_job *)ctx;
    if (j->A == 4)
        ce_nw_input_units_a(j, thread, lo, hi, 4);
    else if (j->A == 6)
        ce_nw_input_units_a(j, thread, lo, hi, 6);
    else
        ce_nw_input_units_a(j, thread, lo, hi, 8);
}

/* U[i][j] for i < a of one group (nk blocks from kb0) into u + i * per_i ([Cb * B][nk * B],
 * rows from C on untouched: the pointwise kernel skips them), from its taps [C][9][nk * B]. */
static void ce_nw_make_u(const ce_nw_job *j, int jj, int kb0, int nk, float *u, ptrdiff_t per_i)
{
    const ptrdiff_t B = CE_NC_B, row = (ptrdiff_t)nk * B;
    const int A = j->A;
    const float *taps = j->taps + (ptrdiff_t)kb0 * B * j->C * 9;
    const float g0 = j->gm[jj * 3], g1 = j->gm[jj * 3 + 1], g2 = j->gm[jj * 3 + 2];
    for (int c = 0; c < j->C; c++)
        for (int kv = 0; kv < nk; kv++) {
            const float *w = taps + (ptrdiff_t)c * 9 * row + kv * B;
            /* t[a] = sum_b g[a][b] G[jj][b]: the taps' rows times column jj of G^T */
            ce_nc_vf t0 = CE_NC_LD(w) * g0 + CE_NC_LD(w + row) * g1 + CE_NC_LD(w + 2 * row) * g2;
            ce_nc_vf t1 = CE_NC_LD(w + 3 * row) * g0 + CE_NC_LD(w + 4 * row) * g1
                          + CE_NC_LD(w + 5 * row) * g2;
            ce_nc_vf t2 = CE_NC_LD(w + 6 * row) * g0 + CE_NC_LD(w + 7 * row) * g1
                          + CE_NC_LD(w + 8 * row) * g2;
            float *o = u + (ptrdiff_t)c * row + kv * B;
            for (int i = 0; i < A; i++)
                CE_NC_ST(o + i * per_i, t0 * j->gm[i * 3] + t1 * j->gm[i * 3 + 1]
                                        + t2 * j->gm[i * 3 + 2]);
        }
}

/* per call: units (CE_NC_PW_PAIR groups of output blocks, which the pointwise kernel runs
 * together) x column jj, the columns of a unit's groups in turn, so that their taps come from
 * cache after the first (read from memory for every column, they took 43% more time than U
 * made once on 512->512 28x28). U of the unit's groups for element i lies as the pointwise
 * kernel's packed weights of those groups, one group after the other. */
static void ce_nw_gemm_taps_units(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi)
{
    ce_nw_job *j = (ce_nw_job *)ctx;
    const ptrdiff_t B = CE_NC_B, G = (j->Kb + CE_NC_GROUP - 1) / CE_NC_GROUP;
    const ptrdiff_t T = (j->S + CE_NC_TILE_PIXELS - 1) / CE_NC_TILE_PIXELS;
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    float *u = j->ubuf + thread * j->ubuf_floats;
    for (ptrdiff_t it = lo; it < hi; it++) {
        const int jj = (int)(it % j->A);
        const ptrdiff_t g0 = it / j->A * CE_NC_PW_PAIR;
        const ptrdiff_t g1 = g0 + CE_NC_PW_PAIR < G ? g0 + CE_NC_PW_PAIR : G;
        const int kb0 = (int)g0 * CE_NC_GROUP;
        const int nk = j->Kb - kb0 < (g1 - g0) * CE_NC_GROUP ? j->Kb - kb0
                                                              : (int)(g1 - g0) * CE_NC_GROUP;
        const ptrdiff_t per_i = (ptrdiff_t)j->Cb * B * nk * B;
        for (ptrdiff_t g = g0; g < g1; g++) {
            const int kb = (int)g * CE_NC_GROUP;
            const int nkg = j->Kb - kb < CE_NC_GROUP ? j->Kb - kb : CE_NC_GROUP;
            ce_nw_make_u(j, jj, kb, nkg, u + (ptrdiff_t)(kb - kb0) * j->Cb * B * B, per_i);
        }
        for (int i = 0; i < j->A; i++) {
            ptrdiff_t e = (ptrdiff_t)i * j->A + jj;
            ce_nc_pw_groups(j->V + e * j->Cb * j->S * B, j->S, j->Cb, j->tail, u + i * per_i,
                            nk, 0, g1 - g0, j->zero, NULL,
                            j->M + e * j->Kb * j->S * B + (ptrdiff_t)kb0 * j->S * B, none, 0, T);
        }
    }
}

/* units: element e x group g of output blocks */
static void ce_nw_gemm_units(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi)
{
    ce_nw_job *j = (ce_nw_job *)ctx;
    const ptrdiff_t B = CE_NC_B, G = (j->Kb + CE_NC_GROUP - 1) / CE_NC_GROUP;
    const ptrdiff_t T = (j->S + CE_NC_TILE_PIXELS - 1) / CE_NC_TILE_PIXELS;
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    (void)thread;
    /* a unit takes CE_NC_PW_PAIR groups, which the pointwise kernel runs together */
    const ptrdiff_t G2 = (G + CE_NC_PW_PAIR - 1) / CE_NC_PW_PAIR;
    for (ptrdiff_t u = lo; u < hi; u++) {
        ptrdiff_t e = u / G2, g = u % G2 * CE_NC_PW_PAIR;
        ce_nc_pw_groups(j->V + e * j->Cb * j->S * B, j->S, j->Cb, j->tail, j->u + e * j->ue,
                        j->Kb, g, g + CE_NC_PW_PAIR < G ? g + CE_NC_PW_PAIR : G, j->zero, NULL,
                        j->M + e * j->Kb * j->S * B, none, 0, T);
    }
}

static inline void ce_nw_output_units_a(ce_nw_job *j, ptrdiff_t lo, ptrdiff_t hi, const int A)
{
    const int m = A - 2, dh = j->dh, dw = j->dw;
    const ptrdiff_t B = CE_NC_B;
    const ptrdiff_t oplane = (ptrdiff_t)j->OH * j->OW * B, es = (ptrdiff_t)j->Kb * j->S * B;
    const int inline_act = CE_NC_ACT_INLINE(j->act.code);
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    for (ptrdiff_t u = lo; u < hi; u++) {
        ptrdiff_t kb = u / j->S, t = u % j->S, n;
        int oy, ox;
        ce_nw_tile_at(j, j->s0 + t, m, &n, &oy, &ox);
        /* the outputs of the tile inside the map: rows oy, oy + dh, ... below OH */
        int ny = oy < j->OH ? (j->OH - oy + dh - 1) / dh : 0;
        int nx = ox < j->OW ? (j->OW - ox + dw - 1) / dw : 0;
        ny = ny < m ? ny : m;
        nx = nx < m ? nx : m;
        if (ny == 0 || nx == 0)
            continue;
        ptrdiff_t o = n * j->o_img + kb * oplane + ((ptrdiff_t)oy * j->OW + ox) * B;
        ce_nw_output_tile(j->M + (kb * j->S + t) * B, es, A, CE_NC_LD(j->bias + kb * B),
                          j->res ? j->res + o : NULL, j->out + o, j->OW, dh, dw, ny, nx,
                          inline_act ? j->act : none);
        if (!inline_act)
            for (int i = 0; i < ny; i++)
                for (int c = 0; c < nx; c += dw == 1 ? nx : 1)     /* a row, or its pixels */
                    ce_nc_act_span(j->out + o + ((ptrdiff_t)i * dh * j->OW + c * dw) * B,
                                   dw == 1 ? nx : 1, j->act);
    }
}

/* units: output block x tile */
static void ce_nw_output_units(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi)
{
    ce_nw_job *j = (ce_nw_job *)ctx;
    (void)thread;
    if (j->A == 4)
        ce_nw_output_units_a(j, lo, hi, 4);
    else if (j->A == 6)
        ce_nw_output_units_a(j, lo, hi, 6);
    else
        ce_nw_output_units_a(j, lo, hi, 8);
}

/* Group q's view of the layer: its input and output blocks, its U, bias and tail. */
static inline void ce_nw_group(ce_nw_job *j, const ce_nw_job *all, int q)
{
    const ptrdiff_t B = CE_NC_B, E = (ptrdiff_t)all->A * all->A;
    *j = *all;
    j->x += (ptrdiff_t)q * all->Cb * all->H * all->W * B;
    if (all->u)
        j->u += (ptrdiff_t)q * E * all->ue;
    j->bias += (ptrdiff_t)q * all->Kb * B;
    j->out += (ptrdiff_t)q * all->Kb * all->OH * all->OW * B;
    if (all->res)
        j->res += (ptrdiff_t)q * all->Kb * all->OH * all->OW * B;
    j->tail = q == all->groups - 1 ? all->last_tail : CE_NC_B;
}

/* (Group, strip) units [lo, hi), each strip of S tiles, by one thread with its own V and M
 * (stored U only). */
typedef struct {
    const ce_nw_job *j;
    ptrdiff_t S, total, vm_floats;      /* V and M of one thread */
    int bad[CE_POOL_MAX_THREADS];
} ce_nw_strips_job;

static void ce_nw_strip_units(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi)
{
    ce_nw_strips_job *sj = (ce_nw_strips_job *)ctx;
    const ptrdiff_t strips = (sj->total + sj->S - 1) / sj->S;
    ce_nw_job j;
    for (ptrdiff_t unit = lo; unit < hi; unit++) {
        ptrdiff_t s = unit % strips;
        ce_nw_group(&j, sj->j, (int)(unit / strips));
        const ptrdiff_t E = (ptrdiff_t)j.A * j.A, G = (j.Kb + CE_NC_GROUP - 1) / CE_NC_GROUP;
        j.V += thread * sj->vm_floats;
        j.M = j.V + E * j.Cb * sj->S * CE_NC_B;
        memset(j.bad, 0, sizeof j.bad);
        j.s0 = s * sj->S;
        j.S = sj->total - j.s0 < sj->S ? sj->total - j.s0 : sj->S;
        ce_nw_input_units(&j, 0, 0, j.Cb * j.S);
        if (j.bad[0]) {
            sj->bad[thread] = 1;
            return;
        }
        ce_nw_gemm_units(&j, 0, 0, E * ((G + CE_NC_PW_PAIR - 1) / CE_NC_PW_PAIR));
        ce_nw_output_units(&j, 0, 0, j.Kb * j.S);
    }
}

/* Group q strip by strip, the threads sharing each phase of a strip. */
static int ce_nw_run_group(const ce_nw_job *all, int q, ptrdiff_t total, ptrdiff_t S, int nt)
{
    ce_nw_job job, *j = &job;
    ce_nw_group(j, all, q);
    const ptrdiff_t E = (ptrdiff_t)j->A * j->A, G = (j->Kb + CE_NC_GROUP - 1) / CE_NC_GROUP;
    for (ptrdiff_t s0 = 0; s0 < total; s0 += S) {
        j->s0 = s0;
        j->S = total - s0 < S ? total - s0 : S;
        memset(j->bad, 0, sizeof j->bad);
        ce_pool_for(nt, j->Cb * j->S, ce_nw_input_units, j);
        for (int i = 0; i < CE_POOL_MAX_THREADS; i++)
            if (j->bad[i])
                return 1;
        if (j->u)
            ce_pool_for(nt, E * ((G + CE_NC_PW_PAIR - 1) / CE_NC_PW_PAIR), ce_nw_gemm_units, j);
        else
            ce_pool_for(nt, j->A * ((G + CE_NC_PW_PAIR - 1) / CE_NC_PW_PAIR),
                        ce_nw_gemm_taps_units, j);
        ce_pool_for(nt, j->Kb * j->S, ce_nw_output_units, j);
    }
    return 0;
}

/* The whole layer, group by group, strip by strip of at most S tiles (N images of dh x dw
 * phases of TH x TW tiles each); by_strips: each thread whole (group, strip) units (all->V
 * then holds nt times V and M of a strip). Returns 1 if an input was not finite (the output
 * then partly written), else 0. */
static int ce_nw_run(ce_nw_job *all, ptrdiff_t N, ptrdiff_t S, int nt, int by_strips)
{
    const ptrdiff_t total = N * all->dh * all->dw * all->TH * all->TW;
    const ptrdiff_t E = (ptrdiff_t)all->A * all->A;
    if (by_strips) {
        ce_nw_strips_job sj = {all, S, total, E * (all->Cb + all->Kb) * S * CE_NC_B, {0}};
        ce_pool_for(nt, all->groups * ((total + S - 1) / S), ce_nw_strip_units, &sj);
        for (int i = 0; i < CE_POOL_MAX_THREADS; i++)
            if (sj.bad[i])
                return 1;
        return 0;
    }
    for (int q = 0; q < all->groups; q++)
        if (ce_nw_run_group(all, q, total, S, nt))
            return 1;
    return 0;
}

#endif
