/* Winograd weight transform made inside the GEMM stage (kernels/conv_winograd.pyx,
 * gemm_phase_taps): one column j of U = G g G^T for a block of packed weights.
 *
 * The weights of one row block are packed as [9][n] (tap 3 * kernel row + kernel column; n =
 * Cg * MR floats per tap, in the micro-kernel's [Cg][MR] order), and U[i * a + j] is wanted in
 * that same order for i < a:
 *     t_r = sum_s G[j, s] g[r, s]   (r < 3),     U[i * a + j] = sum_r G[i, r] t_r.
 * Both steps run in registers, one vector of the n floats at a time, so the nine tap rows are
 * read once and the a outputs written once: the weights stream from memory and the outputs stay
 * in L2 for the GEMMs that follow. A row of G with one nonzero (the first and last of every
 * tile's G) costs one multiplication instead of three, and as row j reads three taps instead
 * of nine. */
#ifndef CE_WINOGRAD_TAPS_H
#define CE_WINOGRAD_TAPS_H

#include <stddef.h>

#include "_packed_gemm.h"

/* The outputs of one vector (or, at the end, one lane) of q: the a rows of G times t. */
#define CE_WT_STORE(T, STORE)                                                               \
    do {                                                                                    \
        for (int i = 0; i < a; i++) {                                                       \
            if (sparse[i] == 1)                                                             \
                STORE(i, gi[i][0] * T##0);                                                  \
            else if (sparse[i] == 2)                                                        \
                STORE(i, gi[i][2] * T##2);                                                  \
            else                                                                            \
                STORE(i, gi[i][0] * T##0 + gi[i][1] * T##1 + gi[i][2] * T##2);              \
        }                                                                                   \
    } while (0)
#define CE_WT_VSTORE(i, v) (*(ce_pg_vfu *)(u + (i) * n + q) = (v))
#define CE_WT_SSTORE(i, v) (u[(i) * n + q] = (v))
#define CE_WT_VLOAD(p) (*(const ce_pg_vfu *)(p))

static inline __attribute__((always_inline)) void
ce_wt_column_a(const float *restrict w, ptrdiff_t n, const float *restrict G, const int a,
               int j, float *restrict u)
{
    const float *gj = G + 3 * j;
    /* rows of G: 1 where only the first coefficient is nonzero, 2 where only the last is
     * (the first and last rows of every tile's G), else 0; the branches on it go the same way
     * for every vector */
    float gi[8][3];
    int sparse[8];
    for (int i = 0; i < a; i++) {
        for (int r = 0; r < 3; r++)
            gi[i][r] = G[3 * i + r];
        sparse[i] = gi[i][1] != 0.0f ? 0 : gi[i][2] == 0.0f ? 1 : gi[i][0] == 0.0f ? 2 : 0;
    }
    int nonzero = 0, only = 0;
    for (int s = 0; s < 3; s++)
        if (gj[s] != 0.0f) {
            nonzero++;
            only = s;
        }
    /* with one nonzero in G's row j: c times three taps; else all nine, weighted */
    const float c0 = gj[0], c1 = gj[1], c2 = gj[2], c = gj[only];
    const float *w0 = w + only * n, *w1 = w + (3 + only) * n, *w2 = w + (6 + only) * n;
    ptrdiff_t q = 0;
    if (nonzero == 1) {
        for (; q + CE_PG_VW <= n; q += CE_PG_VW) {
            ce_pg_vf t0 = c * CE_WT_VLOAD(w0 + q), t1 = c * CE_WT_VLOAD(w1 + q),
                     t2 = c * CE_WT_VLOAD(w2 + q);
            CE_WT_STORE(t, CE_WT_VSTORE);
        }
        for (; q < n; q++) {
            float s0 = c * w0[q], s1 = c * w1[q], s2 = c * w2[q];
            CE_WT_STORE(s, CE_WT_SSTORE);
        }
        return;
    }
    for (; q + CE_PG_VW <= n; q += CE_PG_VW) {
        ce_pg_vf t0 = c0 * CE_WT_VLOAD(w + q) + c1 * CE_WT_VLOAD(w + n + q)
                      + c2 * CE_WT_VLOAD(w + 2 * n + q);
        ce_pg_vf t1 = c0 * CE_WT_VLOAD(w + 3 * n + q) + c1 * CE_WT_VLOAD(w + 4 * n + q)
                      + c2 * CE_WT_VLOAD(w + 5 * n + q);
        ce_pg_vf t2 = c0 * CE_WT_VLOAD(w + 6 * n + q) + c1 * CE_WT_VLOAD(w + 7 * n + q)
                      + c2 * CE_WT_VLOAD(w + 8 * n + q);
        CE_WT_STORE(t, CE_WT_VSTORE);
    }
    for (; q < n; q++) {
        float s0 = c0 * w[q] + c1 * w[n + q] + c2 * w[2 * n + q];
        float s1 = c0 * w[3 * n + q] + c1 * w[4 * n + q] + c2 * w[5 * n + q];
        float s2 = c0 * w[6 * n + q] + c1 * w[7 * n + q] + c2 * w[8 * n + q];
        CE_WT_STORE(s, CE_WT_SSTORE);
    }
}

/* a = 4 (F(2x2,3x3)), 6 (F(4x4,3x3)) or 8 (F(6x6,3x3)): each a constant inside, so the loops
 * over i unroll. */
static inline void ce_wt_column(const float *w, ptrdiff_t n, const float *G, int a, int j,
                                float *u)
{
    if (a == 8)
        ce_wt_column_a(w, n, G, 8, j, u);
    else if (a == 6)
        ce_wt_column_a(w, n, G, 6, j, u);
    else
        ce_wt_column_a(w, n, G, 4, j, u);
}

#endif
