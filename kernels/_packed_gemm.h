/* Packed single-precision GEMM with the convolution output step, for C[M, N] = A[M, K] @ B[K, N]
 * where B is an activation matrix read in place (rows of pixels, any row stride) and A is a
 * weight matrix packed once by the plan.
 *
 * Layouts
 *   A packed:  [ceil(M / CE_PG_MR)][K][CE_PG_MR], rows beyond M zero. Row block i holds, for
 *              every k, the MR weights A[i*MR + r, k] side by side, so the micro-kernel reads
 *              them in order and broadcasts each to a vector. A matrix computed at run time
 *              (a MatMul's activations) is instead read in place, row by row
 *              (ce_pg_block_rows).
 *   B panel:   [K][CE_PG_NR], the columns n0 .. n0+NR of B copied contiguous (zero beyond N),
 *              so one panel stays in L1/L2 while every row block of A passes over it.
 *
 * Micro-kernel: MR rows x NV vectors of columns held in MR x NV vector registers; each k
 * loads NV vectors of B and does MR x NV fused multiply-adds with broadcast A values. Every
 * output is summed in the order k = 0 .. K-1 whatever the caller's split into panels and row
 * blocks, so results do not depend on the thread count. The output step adds the bias, an
 * optional residual tensor, and applies the activation (ce_act_t of _vec_act.h) before the one
 * store of each output.
 */
#ifndef CE_PACKED_GEMM_H
#define CE_PACKED_GEMM_H

#include <stddef.h>
#include <string.h>

#include "_store_part.h"
#include "_vec_act.h"

/* Tile per build: the sums must stay in the 32 (AVX-512) or 16 (AVX2, SSE) vector registers
 * with room for the B vectors and one broadcast. AVX2 takes 6 rows x 2 vectors (12 sums): per
 * k, 8 loads feed 12 multiply-adds, where 8 rows x 1 vector needed 9 loads for 8 and left the
 * FMA units waiting on loads (bench_conv2d.py, pw1x1_c24_144_56). */
#if defined(__AVX512F__)
#define CE_PG_VW 16
#define CE_PG_NV 2
#define CE_PG_MR 8
#elif defined(__AVX__)
#define CE_PG_VW 8
#define CE_PG_NV 2
#define CE_PG_MR 6
#else
#define CE_PG_VW 4
#define CE_PG_NV 1
#define CE_PG_MR 8
#endif
#define CE_PG_NR (CE_PG_VW * CE_PG_NV)

typedef float ce_pg_vf __attribute__((vector_size(CE_PG_VW * 4)));
typedef float ce_pg_vfu __attribute__((vector_size(CE_PG_VW * 4), aligned(4), may_alias));
typedef int ce_pg_vi __attribute__((vector_size(CE_PG_VW * 4)));

/* Loads and stores of the first n < VW floats of a vector (the rest read as zero, not
 * written): masked moves with AVX-512, a masked load and the stores of _store_part.h with
 * AVX2. A panel's last columns (49 pixels of a 7x7 map leave one) take them; as memcpy and
 * scalar loops they cost as much as a full panel's multiply-adds on small pointwise layers. */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#define CE_PG_MASKED 1
#if CE_PG_VW == 16
static inline ce_pg_vf ce_pg_load_part(const float *p, int n)
{
    return (ce_pg_vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline void ce_pg_store_part_raw(float *p, ce_pg_vf v, int n)
{
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
}
#else
static inline __m256i ce_pg_mask(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline ce_pg_vf ce_pg_load_part(const float *p, int n)
{
    return (ce_pg_vf)_mm256_maskload_ps(p, ce_pg_mask(n));
}
static inline void ce_pg_store_part_raw(float *p, ce_pg_vf v, int n)
{
    ce_store_first8(p, (__m256)v, n);
}
#endif
#endif

/* Copy columns 0 .. ncols of K rows of B into panels of NR columns, pstride floats apart (zero
 * beyond ncols): rows 0 .. K of each panel, so a caller may fill a taller panel in slices of
 * rows. Row by row, so each row of B is read front to back: panel by panel, every 128-byte
 * piece would come from another row (another page, K of them), beyond the hardware
 * prefetcher's reach. */
static inline void ce_pg_pack_rows(const float *B, ptrdiff_t ldb, int K, int ncols,
                                   float *panels, ptrdiff_t pstride)
{
    int full = ncols / CE_PG_NR, rest = ncols % CE_PG_NR;
    for (int k = 0; k < K; k++) {
        const float *src = B + k * ldb;
        float *dst = panels + (ptrdiff_t)k * CE_PG_NR;
        for (int p = 0; p < full; p++)
            memcpy(dst + p * pstride, src + p * CE_PG_NR, CE_PG_NR * sizeof(float));
        if (rest) {
#ifdef CE_PG_MASKED
            for (int v = 0; v < CE_PG_NV; v++) {
                int n = rest - v * CE_PG_VW;
                n = n < 0 ? 0 : (n > CE_PG_VW ? CE_PG_VW : n);
                *(ce_pg_vfu *)(dst + full * pstride + v * CE_PG_VW) =
                    ce_pg_load_part(src + full * CE_PG_NR + v * CE_PG_VW, n);
            }
#else
            memcpy(dst + full * pstride, src + full * CE_PG_NR, rest * sizeof(float));
            memset(dst + full * pstride + rest, 0, (CE_PG_NR - rest) * sizeof(float));
#endif
        }
    }
}

/* The K rows of B as whole panels [K][NR], one after another. */
static inline void ce_pg_pack_panels(const float *B, ptrdiff_t ldb, int K, int ncols,
                                     float *panels)
{
    ce_pg_pack_rows(B, ldb, K, ncols, panels, (ptrdiff_t)K * CE_PG_NR);
}

CE_DEFINE_VEC_ACT(ce_pg_act, ce_pg_vf, ce_pg_vi)

/* Output step of the first n < VW columns of one vector. Out of line and taking the sums by
 * value: taking their address in ce_pg_block made gcc keep every accumulator in memory through
 * its K loop (with 8-float vectors: a load and a store per multiply-add). */
__attribute__((noinline))
static void ce_pg_store_part(ce_pg_vf acc, float b, const float *res, float *out, ce_act_t act,
                             int n)
{
#ifdef CE_PG_MASKED
    acc += b;
    if (res)
        acc += ce_pg_load_part(res, n);
    ce_pg_store_part_raw(out, ce_pg_act(acc, act), n);
    return;
#endif
    float tmp[CE_PG_VW];
    *(ce_pg_vfu *)tmp = acc;
    for (int j = 0; j < n; j++) {
        float v = tmp[j] + b;
        if (res)
            v += res[j];
        out[j] = ce_act_scalar(v, act);
    }
}

/* Output step of one vector: bias, residual, activation; n valid columns. Forced inline:
 * called out of line (gcc's choice on AVX2 builds) the whole vector went through the stack
 * and a realigned frame per store, as much time as the multiply-adds on small-K pointwise
 * layers. */
__attribute__((always_inline))
static inline void ce_pg_store(ce_pg_vf acc, float b, const float *res, float *out, ce_act_t act,
                               int n)
{
    if (n == CE_PG_VW) {
        acc += b;
        if (res)
            acc += *(const ce_pg_vfu *)res;
        *(ce_pg_vfu *)out = ce_pg_act(acc, act);
    } else if (n > 0) {
        ce_pg_store_part(acc, b, res, out, act, n);
    }
}

/* act over finished outputs, in place: rows r < nm (ldc apart), columns < ncols. For the
 * activations past the clamps, a call per vector from the output step would spill the
 * block's other sums around each call; ce_pg_block runs this over its block, and a caller
 * may instead pass ce_pg_store_act(act) to its blocks and run this once over longer rows
 * (ce_pg_act_later(act)): the activation's setup then costs per row, not per 16 columns. */
static inline int ce_pg_act_later(ce_act_t act)
{
    return act.code > CE_ACT_CODE_RELU6;
}

static inline ce_act_t ce_pg_store_act(ce_act_t act)
{
    return ce_pg_act_later(act) ? (ce_act_t){CE_ACT_CODE_NONE, 0.0f, 0.0f} : act;
}

static void ce_pg_act_rows(float *c, ptrdiff_t ldc, int nm, int ncols, ce_act_t act)
{
    for (int r = 0; r < nm; r++) {
        float *row = c + r * ldc;
        int j = (int)ce_pg_act_map(row, row, ncols, 1.0f, 0.0f, act);
        for (; j < ncols; j++)
            row[j] = ce_act_scalar(row[j], act);
    }
}

#if CE_PG_MR == 8
#define CE_PG_ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#else
#define CE_PG_ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5)
#endif

/* One MR x NR block: C rows r < nm, columns < ncols. ap: packed A block [K][MR]; panel: B panel
 * [K][NR]; c: C[row 0, column 0] with row stride ldc; res: the residual at the same place (row
 * stride ldc) or NULL; bias: MR values or NULL. */
#if CE_PG_VW < 16
/* Kept out of line on builds with 16 vector registers: inlined into the large OpenMP bodies
 * that call it, gcc kept the sums in memory through the K loop (a load and a store per
 * multiply-add: im2col layers at 26 GFLOP/s on AVX2) */
__attribute__((noinline))
#endif
static void ce_pg_block(const float *restrict ap, const float *restrict panel, int K,
                        float *c, ptrdiff_t ldc, const float *res, const float *bias, ce_act_t act,
                        int nm, int ncols)
{
#define CE_PG_DECL(r) ce_pg_vf a##r = {0}, b##r = {0};
    CE_PG_ROWS(CE_PG_DECL)
#undef CE_PG_DECL
    const float *bp = panel;
    const float *w = ap;
    if (ncols > CE_PG_VW && CE_PG_NV == 2) {
        for (int k = 0; k < K; k++, bp += CE_PG_NR, w += CE_PG_MR) {
            ce_pg_vf x0 = *(const ce_pg_vf *)bp;
            ce_pg_vf x1 = *(const ce_pg_vf *)(bp + CE_PG_VW);
#define CE_PG_FMA2(r) a##r += x0 * w[r]; b##r += x1 * w[r];
            CE_PG_ROWS(CE_PG_FMA2)
#undef CE_PG_FMA2
        }
    } else {
        for (int k = 0; k < K; k++, bp += CE_PG_NR, w += CE_PG_MR) {
            ce_pg_vf x0 = *(const ce_pg_vf *)bp;
#define CE_PG_FMA1(r) a##r += x0 * w[r];
            CE_PG_ROWS(CE_PG_FMA1)
#undef CE_PG_FMA1
        }
    }
    int n0 = ncols < CE_PG_VW ? ncols : CE_PG_VW;
    int n1 = ncols - n0;
    /* none and the clamps in the stores; any other activation after them */
    const ce_act_t sact = ce_pg_store_act(act);
#define CE_PG_OUT(r)                                                                         \
    if (r < nm) {                                                                            \
        float bv = bias ? bias[r] : 0.0f;                                                    \
        const float *rr = res ? res + r * ldc : NULL;                                        \
        ce_pg_store(a##r, bv, rr, c + r * ldc, sact, n0);                                    \
        if (CE_PG_NV == 2)                                                                   \
            ce_pg_store(b##r, bv, rr ? rr + CE_PG_VW : NULL, c + r * ldc + CE_PG_VW, sact,  \
                        n1);                                                                 \
    }
    CE_PG_ROWS(CE_PG_OUT)
#undef CE_PG_OUT
    if (ce_pg_act_later(act))
        ce_pg_act_rows(c, ldc, nm, ncols, act);
}

/* Rows r < nm of A @ B over the panels [0, npanels) of B, A read in place: rows of a (row
 * stride lda), so a product of activations by constant weights packs nothing per call; packing
 * A cost up to a tenth of the product where B has few panels (ConvNeXt's 384 -> 96 MatMul,
 * bench/bench_family.py --only matmul). panels: npanels panels [K][NR], K * NR floats apart;
 * c: C[row 0, column of panel 0] (row stride ldc), ncols columns from there; colbias: the
 * panels' NR biases each (zero past N) or NULL, added after the sum over k as an Add after the
 * product adds it. One call walks the panels (its setup paid once a row block). Each k reads
 * a new line of the panel, from L2 once the panels outgrow L1; the line four k ahead is asked
 * for in the loop, as the hardware prefetcher left the multiply-adds waiting on it (one
 * thread, old and new loops in one process: ConvNeXt's eight MLP shapes 1-13% faster, 53-68
 * GFLOP/s; bench/bench_family.py --only matmul times them beside ONNX Runtime). Inlined with
 * nm a constant (ce_pg_block_rows), so a block of fewer rows does only its own multiply-adds:
 * the 49 rows of a 7x7 map end in a block of one. */
__attribute__((always_inline))
static inline void ce_pg_rows_body(const float *a, ptrdiff_t lda, const float *restrict panels,
                                   int K, int npanels, float *c, ptrdiff_t ldc,
                                   const float *colbias, ce_act_t act, const int nm, int ncols)
{
#define CE_PG_ROW(r) const float *p##r = a + (r < nm ? r : 0) * lda;
    CE_PG_ROWS(CE_PG_ROW)
#undef CE_PG_ROW
    const ce_act_t sact = ce_pg_store_act(act);
    for (int p = 0; p < npanels; p++) {
        const float *bp = panels + (ptrdiff_t)p * K * CE_PG_NR;
        float *cp = c + p * CE_PG_NR;
        int left = ncols - p * CE_PG_NR;
        int n0 = left < CE_PG_VW ? left : CE_PG_VW;
        int n1 = left - n0 < CE_PG_VW ? left - n0 : CE_PG_VW;
#define CE_PG_DECL(r) ce_pg_vf a##r = {0}, b##r = {0};
        CE_PG_ROWS(CE_PG_DECL)
#undef CE_PG_DECL
        if (n1 > 0 && CE_PG_NV == 2) {
#pragma GCC unroll 4
            for (int k = 0; k < K; k++, bp += CE_PG_NR) {
                __builtin_prefetch(bp + 4 * CE_PG_NR);
                ce_pg_vf x0 = *(const ce_pg_vf *)bp;
                ce_pg_vf x1 = *(const ce_pg_vf *)(bp + CE_PG_VW);
#define CE_PG_FMA2(r) if (r < nm) { a##r += x0 * p##r[k]; b##r += x1 * p##r[k]; }
                CE_PG_ROWS(CE_PG_FMA2)
#undef CE_PG_FMA2
            }
        } else {
            for (int k = 0; k < K; k++, bp += CE_PG_NR) {
                ce_pg_vf x0 = *(const ce_pg_vf *)bp;
#define CE_PG_FMA1(r) if (r < nm) a##r += x0 * p##r[k];
                CE_PG_ROWS(CE_PG_FMA1)
#undef CE_PG_FMA1
            }
        }
        ce_pg_vf c0 = {0}, c1 = {0};
        if (colbias) {
            c0 = *(const ce_pg_vfu *)(colbias + p * CE_PG_NR);
            if (CE_PG_NV == 2)
                c1 = *(const ce_pg_vfu *)(colbias + p * CE_PG_NR + CE_PG_VW);
        }
#define CE_PG_OUT(r)                                                                         \
        if (r < nm) {                                                                        \
            ce_pg_store(colbias ? a##r + c0 : a##r, 0.0f, NULL, cp + r * ldc, sact, n0);     \
            if (CE_PG_NV == 2)                                                               \
                ce_pg_store(colbias ? b##r + c1 : b##r, 0.0f, NULL, cp + r * ldc + CE_PG_VW, \
                            sact, n1);                                                       \
        }
        CE_PG_ROWS(CE_PG_OUT)
#undef CE_PG_OUT
    }
    if (ce_pg_act_later(act))
        ce_pg_act_rows(c, ldc, nm, ncols, act);
}

static void ce_pg_block_rows(const float *a, ptrdiff_t lda, const float *restrict panels, int K,
                             int npanels, float *c, ptrdiff_t ldc, const float *colbias,
                             ce_act_t act, int nm, int ncols)
{
    switch (nm < CE_PG_MR ? nm : CE_PG_MR) {
#define CE_PG_CASE(r)                                                                        \
    case r + 1:                                                                              \
        ce_pg_rows_body(a, lda, panels, K, npanels, c, ldc, colbias, act, r + 1, ncols);     \
        break;
    CE_PG_ROWS(CE_PG_CASE)
#undef CE_PG_CASE
    default:
        break;
    }
}

#endif
