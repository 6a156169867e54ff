/* Kernels on channel-blocked activations (NCHWc): a tensor of C channels is stored as
 * [N][ceil(C / B)][H][W][B], each pixel holding B = CE_NC_B consecutive channels side by side
 * (one vector register: 16 with AVX-512, 8 with AVX2), the channels beyond C zero. One vector
 * is then one pixel of one channel block, so
 *
 *   - a pointwise convolution needs no packing: for each input channel it broadcasts the
 *     channel's value at a few pixels and multiplies it into vectors of B output channels'
 *     weights (the weights packed once per group of up to CE_NC_GROUP output blocks);
 *   - a depthwise convolution is nine vector loads and fused multiply-adds per output pixel,
 *     with no transposes and no staging (_nchwc_dw.h; dense layers in _nchwc_conv.h, grouped
 *     ones in _nchwc_grouped.h, a network's first layer from NCHW in _nchwc_direct.h).
 *
 * Every output is summed over the input channels (pointwise) or taps (depthwise) in one fixed
 * order, whatever the caller's split of the work, so results do not depend on the thread count.
 * The output step adds the bias, an optional residual in the same layout, and applies the
 * activation (ce_act_t of _vec_act.h) before the one store, or maps it over what was stored
 * (ce_nc_act_span).
 */
#ifndef CE_NCHWC_H
#define CE_NCHWC_H

#include <stddef.h>
#include <string.h>

#include "_nchwc_block.h"
#include "_transpose16.h"
#include "_vec_act.h"

CE_DEFINE_VEC_ACT(ce_nc_act, ce_nc_vf, ce_nc_vi)

/* Whether an output step applies the activation as it stores (none and the clamps: a compare
 * or two), or stores the sums and then maps the activation over the n vectors just written,
 * still in L1 (ce_nc_act_span): called per vector with the code unknown, an exp-based
 * activation went out of line and the tile's live sums were spilled around every call.
 * EfficientNet-B0's 16->96 SiLU expand layer on 112x112 took 2.68 ms inline against 1.46
 * on NCHW (bench/bench_zoo.py). Either way the values are the same. */
#define CE_NC_ACT_INLINE(code) ((code) <= CE_ACT_CODE_RELU6)

static inline void ce_nc_act_span(float *p, ptrdiff_t n, ce_act_t act)
{
    if (!CE_NC_ACT_INLINE(act.code))
        ce_nc_act_map(p, p, n * CE_NC_B, 1.0f, 0.0f, act);
}

/* The sums of a tile of NP <= 6 pixels by NK <= 4 output blocks, a##i##_##j for pixel i and
 * block j (the pointwise tile here, the dense one in _nchwc_conv.h): loaded from ``out`` to
 * continue a batch's partial sums, or stored there, finished (bias, residual, activation)
 * when ``last``. Blocks are ``os`` floats apart. */
#define CE_NC_TILE_LOAD1(i, j) if (NK > j) a##i##_##j = CE_NC_LD(out + j * os + i * CE_NC_B);
#define CE_NC_TILE_LOAD(i)                                                                  \
    if (i < NP) {                                                                           \
        CE_NC_TILE_LOAD1(i, 0) CE_NC_TILE_LOAD1(i, 1) CE_NC_TILE_LOAD1(i, 2)                \
        CE_NC_TILE_LOAD1(i, 3)                                                              \
    }
#define CE_NC_TILE_STORE1(i, j)                                                             \
    if (NK > j) {                                                                           \
        ptrdiff_t at = j * os + i * CE_NC_B;                                                \
        ce_nc_vf v = a##i##_##j;                                                            \
        if (last) {                                                                         \
            v += CE_NC_LD(bias + j * CE_NC_B);                                              \
            if (res)                                                                        \
                v += CE_NC_LD(res + at);                                                    \
            v = ce_nc_act(v, act);                                                          \
        }                                                                                   \
        CE_NC_ST(out + at, v);                                                              \
    }
#define CE_NC_TILE_STORE(i)                                                                 \
    if (i < NP) {                                                                           \
        CE_NC_TILE_STORE1(i, 0) CE_NC_TILE_STORE1(i, 1) CE_NC_TILE_STORE1(i, 2)             \
        CE_NC_TILE_STORE1(i, 3)                                                             \
    }
/* One tap's multiply-adds into a tile's sums (the pointwise tile here, the dense ones in
 * _nchwc_conv.h): for each input channel c < nc, its NK weight vectors from wc (advanced by
 * wstep a channel) times XV(i, c), the input value under pixel i, for the NP pixels. */
#define CE_NC_TILE_FMA1(i, XV)                                                              \
    if (i < NP) {                                                                           \
        float xv_ = XV(i, c);                                                               \
        a##i##_0 += w0 * xv_;                                                               \
        if (NK > 1) a##i##_1 += w1 * xv_;                                                   \
        if (NK > 2) a##i##_2 += w2 * xv_;                                                   \
        if (NK > 3) a##i##_3 += w3 * xv_;                                                   \
    }
#define CE_NC_TILE_MACS(wc, nc, wstep, XV)                                                  \
    for (int c = 0; c < (nc); c++, wc += (wstep)) {                                         \
        ce_nc_vf w0 = CE_NC_LD(wc), w1 = {0}, w2 = {0}, w3 = {0};                           \
        if (NK > 1) w1 = CE_NC_LD(wc + CE_NC_B);                                            \
        if (NK > 2) w2 = CE_NC_LD(wc + 2 * CE_NC_B);                                        \
        if (NK > 3) w3 = CE_NC_LD(wc + 3 * CE_NC_B);                                        \
        CE_NC_TILE_FMA1(0, XV) CE_NC_TILE_FMA1(1, XV) CE_NC_TILE_FMA1(2, XV)                \
        CE_NC_TILE_FMA1(3, XV) CE_NC_TILE_FMA1(4, XV) CE_NC_TILE_FMA1(5, XV)                \
    }

/* The tile's stores with the activation a constant where it is none or a clamp (the common
 * cases), so that the 24 stores test nothing: MobileNetV2's pointwise layers spent 2% more
 * without it (bench/bench_models.py, A/B at 1 thread); ``act`` is shadowed by the constant. */
#define CE_NC_TILE_STORE_CONST(CODE)                                                        \
    {                                                                                       \
        const ce_act_t act = {CODE, 0.0f, 0.0f};                                            \
        CE_NC_PIX(CE_NC_TILE_STORE)                                                         \
    }
#define CE_NC_TILE_STORE_ALL                                                                \
    switch (last ? act.code : CE_ACT_CODE_NONE) {                                           \
    case CE_ACT_CODE_NONE: CE_NC_TILE_STORE_CONST(CE_ACT_CODE_NONE) break;                  \
    case CE_ACT_CODE_RELU: CE_NC_TILE_STORE_CONST(CE_ACT_CODE_RELU) break;                  \
    case CE_ACT_CODE_RELU6: CE_NC_TILE_STORE_CONST(CE_ACT_CODE_RELU6) break;                \
    default:                                                                                \
        CE_NC_TILE_STORE_CONST(CE_ACT_CODE_NONE)                                            \
        for (int j = 0; j < NK; j++)                                                        \
            ce_nc_act_span(out + j * os, NP, act);                                          \
        break;                                                                              \
    }

/* ---- Pointwise ------------------------------------------------------------------------------
 * One tile: NP <= 6 pixels x NK <= 4 output blocks, over Cb input blocks (a batch of the
 * input channels: the weights of a batch stay in L1 while the tiles of a chunk pass over them).
 *   x:    the input at the tile's first pixel of the batch's first block; blocks P pixels apart;
 *   w:    the batch's packed weights [Cb * B][NK * B] (input channel, output channel);
 *   bias: NK * B values; res/out: the tile's first pixel of its first output block, blocks
 *         ``os`` floats apart (P * B in a layer's output; a fused step's buffer has its own);
 *         res may be NULL.
 *   first: start from zero, else from the partial sums in out; last: finish (bias, residual,
 *         activation), else store the partial sums. The sums run over the channels in order
 *         whatever the batches, and partial sums are stored exactly, so batching changes no
 *         result.
 * NP and NK are constants in each instance (ce_nc_pw_runs), so a plane's last, partial
 * tile costs its own pixels only. */
static inline __attribute__((always_inline)) void
ce_nc_pw_tile(const float *restrict x, ptrdiff_t P, int Cb, int tail, const float *restrict w,
              const int NK, const int NP, const float *restrict bias, const float *res,
              float *out, ptrdiff_t os, ce_act_t act, int first, int last)
{
    const ptrdiff_t B = CE_NC_B;
#define CE_NC_PIX(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define CE_NC_DECL(i) ce_nc_vf a##i##_0 = {0}, a##i##_1 = {0}, a##i##_2 = {0}, a##i##_3 = {0};
    CE_NC_PIX(CE_NC_DECL)
#undef CE_NC_DECL
    if (!first) {
        CE_NC_PIX(CE_NC_TILE_LOAD)
    }
    const ptrdiff_t wstep = NK * B;
    for (int cb = 0; cb < Cb; cb++) {
        const float *xb = x + cb * P * B;
        /* the padding channels of a last, partial input block have zero weights: skipped */
        const int nc = cb == Cb - 1 ? tail : CE_NC_B;
        /* the next tile's pixels of this block, a line at a time: a tile reads a few lines
         * from each of Cb planes, more streams than the hardware prefetcher follows (AVX2,
         * 8-channel blocks: ResNet-50's 256->64 layers 2.1x ONNX Runtime's time without it,
         * 1.0x with, bench/bench_conv2d.py and per-layer profiles) */
        for (int l = 0; l < NP * CE_NC_B; l += 16)
            __builtin_prefetch(xb + NP * B + l);
#define CE_NC_PW_XV(i, c) xb[i * B + c]
        CE_NC_TILE_MACS(w, nc, wstep, CE_NC_PW_XV)
#undef CE_NC_PW_XV
    }
    CE_NC_TILE_STORE_ALL
#undef CE_NC_PIX
}

/* A run of n tiles of NP pixels each, side by side, in one call: the tile's setup (its
 * output addresses, the call through the table) is paid once a run, not once a tile, which
 * on layers of few channels is a good part of the tile (AVX2, one thread: ten 24<->72 layers
 * on 56x56 10% faster, MobileNetV3-Small 2% and 14% at one and two threads, MNASNet and
 * RegNetX 3%; old and new paths switched in one process). x/res/out point at the first
 * tile's first pixel. */
typedef void (*ce_nc_pw_run_fn)(const float *, ptrdiff_t, int, int, const float *,
                                const float *, const float *, float *, ptrdiff_t, ce_act_t,
                                int, int, ptrdiff_t);

/* A last group of one output block (3, 5, 9 or 15 blocks in groups of two) on two tiles of
 * NP pixels at once: 2 NP sums in flight where one tile has NP, which the multiply-add latency
 * then bounds at three quarters of the rate (a one-block tile also gets half the multiply-adds
 * of a two-block one for its broadcasts). Each pixel's sum as in ce_nc_pw_tile, in the same
 * order. */
static inline __attribute__((always_inline)) void
ce_nc_pw_tile_pair(const float *restrict x, ptrdiff_t P, int Cb, int tail,
                   const float *restrict w, const int NP, const float *restrict bias,
                   const float *res, float *out, ce_act_t act, int first, int last)
{
    const ptrdiff_t B = CE_NC_B;
    ce_nc_vf a[2 * CE_NC_TILE_PIXELS];
#pragma GCC unroll 12
    for (int i = 0; i < 2 * NP; i++)
        a[i] = first ? (ce_nc_vf){0} : CE_NC_LD(out + i * B);
    for (int cb = 0; cb < Cb; cb++) {
        const float *xb = x + cb * P * B;
        const int nc = cb == Cb - 1 ? tail : CE_NC_B;
        for (int l = 0; l < 2 * NP * CE_NC_B; l += 16)
            __builtin_prefetch(xb + 2 * NP * B + l);
        for (int c = 0; c < nc; c++, w += B) {
            const ce_nc_vf w0 = CE_NC_LD(w);
#pragma GCC unroll 12
            for (int i = 0; i < 2 * NP; i++)
                a[i] += w0 * xb[i * B + c];
        }
    }
    const ce_nc_vf b = last ? CE_NC_LD(bias) : (ce_nc_vf){0};
#define CE_NC_PAIR_STORE(CODE)                                                              \
    for (int i = 0; i < 2 * NP; i++) {                                                      \
        ce_nc_vf v = a[i];                                                                  \
        if (last) {                                                                         \
            v += b;                                                                         \
            if (res)                                                                        \
                v += CE_NC_LD(res + i * B);                                                 \
            v = ce_nc_act(v, (ce_act_t){CODE, 0.0f, 0.0f});                                 \
        }                                                                                   \
        CE_NC_ST(out + i * B, v);                                                           \
    }
    switch (last ? act.code : CE_ACT_CODE_NONE) {
    case CE_ACT_CODE_NONE: CE_NC_PAIR_STORE(CE_ACT_CODE_NONE) break;
    case CE_ACT_CODE_RELU: CE_NC_PAIR_STORE(CE_ACT_CODE_RELU) break;
    case CE_ACT_CODE_RELU6: CE_NC_PAIR_STORE(CE_ACT_CODE_RELU6) break;
    default:
        CE_NC_PAIR_STORE(CE_ACT_CODE_NONE)
        ce_nc_act_span(out, 2 * NP, act);
        break;
    }
#undef CE_NC_PAIR_STORE
}

#define CE_NC_PW_RUN_N(NK, NP)                                                              \
    static void ce_nc_pw_run_##NK##_##NP(const float *restrict x, ptrdiff_t P, int Cb,      \
                                         int tail, const float *restrict w,                 \
                                         const float *bias, const float *res, float *out,   \
                                         ptrdiff_t os, ce_act_t act, int first, int last,   \
                                         ptrdiff_t n)                                       \
    {                                                                                       \
        ptrdiff_t k = 0;                                                                    \
        if (NK == 1)                                                                        \
            for (; k + 2 <= n; k += 2) {                                                    \
                const ptrdiff_t at = k * NP * CE_NC_B;                                      \
                ce_nc_pw_tile_pair(x + at, P, Cb, tail, w, NP, bias,                        \
                                   res ? res + at : NULL, out + at, act, first, last);      \
            }                                                                               \
        for (; k < n; k++) {                                                                \
            const ptrdiff_t at = k * NP * CE_NC_B;                                          \
            ce_nc_pw_tile(x + at, P, Cb, tail, w, NK, NP, bias, res ? res + at : NULL,      \
                          out + at, os, act, first, last);                                  \
        }                                                                                   \
    }
#define CE_NC_PW_RUNS_NK(NK)                                                                \
    CE_NC_PW_RUN_N(NK, 1) CE_NC_PW_RUN_N(NK, 2) CE_NC_PW_RUN_N(NK, 3)                       \
    CE_NC_PW_RUN_N(NK, 4) CE_NC_PW_RUN_N(NK, 5) CE_NC_PW_RUN_N(NK, 6)
CE_NC_PW_RUNS_NK(1)
CE_NC_PW_RUNS_NK(2)
#if CE_NC_GROUP == 4
CE_NC_PW_RUNS_NK(3)
CE_NC_PW_RUNS_NK(4)
#endif
#undef CE_NC_PW_RUNS_NK
/* [NK - 1][NP - 1] of the instances name##_NK_NP (here and in _nchwc_conv.h) */
#define CE_NC_ROW(name, NK) {name##_##NK##_1, name##_##NK##_2, name##_##NK##_3,             \
                             name##_##NK##_4, name##_##NK##_5, name##_##NK##_6}
#if CE_NC_GROUP == 4
#define CE_NC_TILE_TABLE(name) {CE_NC_ROW(name, 1), CE_NC_ROW(name, 2), CE_NC_ROW(name, 3),  \
                                CE_NC_ROW(name, 4)}
#else
#define CE_NC_TILE_TABLE(name) {CE_NC_ROW(name, 1), CE_NC_ROW(name, 2)}
#endif
static const ce_nc_pw_run_fn ce_nc_pw_runs[CE_NC_GROUP][CE_NC_TILE_PIXELS] =
    CE_NC_TILE_TABLE(ce_nc_pw_run);
#undef CE_NC_PW_RUN_N

/* Tiles t0 .. t1 of a plane tiled by ``tiling`` for nk output blocks, in at most two runs
 * (the tiles before tiling.extra have one pixel more than the rest). x/res/out point at the
 * plane's first pixel; the other arguments as ce_nc_pw_tile's. */
static void ce_nc_pw_span(ce_nc_tiling tiling, ptrdiff_t t0, ptrdiff_t t1, int nk,
                          const float *x, ptrdiff_t P, int Cb, int tail, const float *w,
                          const float *bias, const float *res, float *out, ptrdiff_t os,
                          ce_act_t act, int first, int last)
{
    const ptrdiff_t B = CE_NC_B;
    for (ptrdiff_t t = t0; t < t1;) {
        const int np = (int)(tiling.base + (t < tiling.extra));
        const ptrdiff_t te = t < tiling.extra && tiling.extra < t1 ? tiling.extra : t1;
        const ptrdiff_t p0 = ce_nc_tile_start(tiling, t) * B;
        ce_nc_pw_runs[nk - 1][np - 1](x + p0, P, Cb, tail, w, bias, res ? res + p0 : NULL,
                                      out + p0, os, act, first, last, te - t);
        t = te;
    }
}

/* Tiles t0 .. t1 (ce_nc_tile_start) of the output blocks of group g, for one image, in batches of
 * CE_NC_BATCH input blocks: each output summed whole in registers up to 1024 input channels,
 * its partial sums stored and read back between batches only above. Batches of 8 blocks
 * (weights in L1 over a chunk of tiles) ran 0-7% slower than whole sums on layers of 16-128
 * blocks in, input and output cold, one thread, and residual layers 5-10% slower, which whole
 * sums also let write into their residual (engine/graph/blocked_steps.py); ResNet-50 and
 * MobileNetV2 1-6% faster A/B (bench/bench_dispatch.py layout/pointwise_batch).
 *   x: the image's input [Cb][P][B], its last block's first ``tail`` channels real (1 to 16);
 *   wpack: all groups' weights, group g at
 *   g * 4 * 16 * Cb * B floats, holding min(4, Kb - 4g) blocks; bias: Kb * B values;
 *   res/out: the image's [Kb][P][B]. */
#define CE_NC_BATCH 64
#define CE_NC_ACT_TILES 8

/* The same, with the group's weights [Cb * B][nk * B] at wg (output blocks kb0 .. kb0 + nk):
 * for a caller that makes them itself (Winograd's weights made per call, _nchwc_winograd.h). */
static void ce_nc_pw_group_w(const float *x, ptrdiff_t P, int Cb, int tail, const float *wg,
                             int kb0, int nk, const float *bias, const float *res, float *out,
                             ce_act_t act, ptrdiff_t t0, ptrdiff_t t1)
{
    const ptrdiff_t B = CE_NC_B;
    const float *bb = bias + kb0 * B;
    ptrdiff_t ob = (ptrdiff_t)kb0 * P * B;
    const ce_nc_tiling tiling = ce_nc_tiles(P);
    for (int c0 = 0; c0 < Cb; c0 += CE_NC_BATCH) {
        int nb = Cb - c0 < CE_NC_BATCH ? Cb - c0 : CE_NC_BATCH;
        int first = c0 == 0, last = c0 + nb == Cb;
        const float *w = wg + (ptrdiff_t)c0 * nk * B * B;
        /* an activation past the clamps: mapped over runs of CE_NC_ACT_TILES tiles once
         * they are stored (still in L1), not tile by tile, where a call's setup cost as much
         * as a quarter of the activation itself (EfficientNet-B0's 16->96 SiLU expand) */
        const int later = last && !CE_NC_ACT_INLINE(act.code);
        const ce_act_t tile_act = later ? (ce_act_t){CE_ACT_CODE_NONE, 0.0f, 0.0f} : act;
        const ptrdiff_t step = later ? CE_NC_ACT_TILES : t1 - t0;
        for (ptrdiff_t ta = t0; ta < t1; ta += step) {
            ptrdiff_t tb = t1 - ta < step ? t1 : ta + step;
            ce_nc_pw_span(tiling, ta, tb, nk, x + (ptrdiff_t)c0 * P * B, P, nb,
                          last ? tail : CE_NC_B, w, bb, res ? res + ob : NULL, out + ob, P * B,
                          tile_act, first, last);
            if (later) {
                ptrdiff_t p0 = ce_nc_tile_start(tiling, ta), p1 = ce_nc_tile_start(tiling, tb);
                for (int j = 0; j < nk; j++)
                    ce_nc_act_span(out + ob + (ptrdiff_t)j * P * B + p0 * B, p1 - p0, act);
            }
        }
    }
}

static void ce_nc_pw_group(const float *x, ptrdiff_t P, int Cb, int tail, const float *wpack,
                           int Kb, int g, const float *bias, const float *res, float *out,
                           ce_act_t act, ptrdiff_t t0, ptrdiff_t t1)
{
    int kb0 = g * CE_NC_GROUP;
    int nk = Kb - kb0 < CE_NC_GROUP ? Kb - kb0 : CE_NC_GROUP;
    ce_nc_pw_group_w(x, P, Cb, tail, wpack + (ptrdiff_t)kb0 * Cb * CE_NC_B * CE_NC_B, kb0, nk,
                     bias, res, out, act, t0, t1);
}

#include "_nchwc_quad.h"
/* groups of output blocks a unit of pointwise work takes together (two to a quad) */
#define CE_NC_PW_PAIR (CE_NC_QUAD ? 2 : 1)

/* Groups [g_lo, g_hi) over tiles t0 .. t1 of one image, two full ones at a time where the
 * quad runs them. */
static void ce_nc_pw_groups(const float *x, ptrdiff_t P, int Cb, int tail, const float *wpack,
                            int Kb, ptrdiff_t g_lo, ptrdiff_t g_hi, const float *bias,
                            const float *res, float *out, ce_act_t act, ptrdiff_t t0,
                            ptrdiff_t t1)
{
    for (ptrdiff_t g = g_lo; g < g_hi; g++) {
#if CE_NC_QUAD
        if (g + 1 < g_hi && (g + 2) * CE_NC_GROUP <= Kb) {
            ce_nc_pw_quad(x, P, Cb, tail, wpack, (int)g, bias, res, out, act, t0, t1);
            g++;
            continue;
        }
#endif
        ce_nc_pw_group(x, P, Cb, tail, wpack, Kb, (int)g, bias, res, out, act, t0, t1);
    }
}

/* Units [lo, hi) of a pointwise layer's work for one thread: groups of output blocks (all
 * tiles of every image, by_groups) or tiles of pixels counted across the images (all groups),
 * each image's tiles in chunks of `chunk` that every group passes over in turn.
 *   x/res/out: the first image's; xs/os: floats per image of x and of res/out; T: tiles per
 *   image; G: groups of output blocks. */
static void ce_nc_pw_units(const float *x, ptrdiff_t P, int Cb, int tail, const float *wpack,
                           int Kb, const float *bias, const float *res, float *out,
                           ce_act_t act, ptrdiff_t N, ptrdiff_t T, ptrdiff_t G, ptrdiff_t xs,
                           ptrdiff_t os, ptrdiff_t chunk, int by_groups, ptrdiff_t lo,
                           ptrdiff_t hi)
{
    ptrdiff_t g_lo = 0, g_hi = G, u_lo = 0, u_hi = N * T;
    if (by_groups) {
        g_lo = lo;
        g_hi = hi;
    } else {
        u_lo = lo;
        u_hi = hi;
    }
    for (ptrdiff_t n = u_lo / T; n * T < u_hi; n++) {
        ptrdiff_t a = (u_lo > n * T ? u_lo : n * T) - n * T;     /* this image's tiles [a, b) */
        ptrdiff_t b = (u_hi < (n + 1) * T ? u_hi : (n + 1) * T) - n * T;
        for (ptrdiff_t c0 = a; c0 < b; c0 += chunk) {
            ptrdiff_t c1 = b - c0 < chunk ? b : c0 + chunk;
            ce_nc_pw_groups(x + n * xs, P, Cb, tail, wpack, Kb, g_lo, g_hi, bias,
                            res ? res + n * os : NULL, out + n * os, act, c0, c1);
        }
    }
}

/* ---- Layout changes ------------------------------------------------------------------------- */

/* One channel block of one image: src holds nc <= CE_NC_B planes, ps floats apart, of which
 * the first P pixels are taken; dst[P][CE_NC_B] gets them channel-interleaved, zero in
 * channels nc and on. Whole squares of CE_NC_B pixels go through the register transpose
 * (_transpose16.h), the rest element by element. */
#if CE_NC_B == 16
#define ce_nc_transpose ce_transpose16
#else
#define ce_nc_transpose ce_transpose8
#endif

static void ce_nc_to_blocked(const float *src, ptrdiff_t ps, ptrdiff_t P, int nc, float *dst)
{
    const int B = CE_NC_B;
    float tile[CE_NC_B][CE_NC_B];
    ptrdiff_t p0 = 0;
    if (nc == B)
        for (; p0 + B <= P; p0 += B)
            ce_nc_transpose(src + p0, ps, dst + p0 * B, B);
    for (; p0 < P; p0 += B) {
        int n = P - p0 < B ? (int)(P - p0) : B;
        for (int c = 0; c < B; c++) {
            if (c < nc) {
                const float *s = src + c * ps + p0;
                for (int j = 0; j < n; j++)
                    tile[j][c] = s[j];
            } else {
                for (int j = 0; j < n; j++)
                    tile[j][c] = 0.0f;
            }
        }
        memcpy(dst + p0 * B, tile, (size_t)n * B * sizeof(float));
    }
}

/* The inverse: channels 0 .. nc of the block src[P][CE_NC_B] into the first P pixels of nc
 * planes at dst, ps floats apart. */
static void ce_nc_from_blocked(const float *src, ptrdiff_t P, int nc, float *dst, ptrdiff_t ps)
{
    const int B = CE_NC_B;
    float tile[CE_NC_B][CE_NC_B];
    ptrdiff_t p0 = 0;
    if (nc == B)
        for (; p0 + B <= P; p0 += B)
            ce_nc_transpose(src + p0 * B, B, dst + p0, ps);
    for (; p0 < P; p0 += B) {
        int n = P - p0 < B ? (int)(P - p0) : B;
        memcpy(tile, src + p0 * B, (size_t)n * B * sizeof(float));
        for (int c = 0; c < nc; c++) {
            float *d = dst + c * ps + p0;
            for (int j = 0; j < n; j++)
                d[j] = tile[j][c];
        }
    }
}

/* Means over the P pixels of one block src[P][CE_NC_B] (summed in pixel order), channels 0 .. nc
 * into mean. */
static void ce_nc_block_mean(const float *src, ptrdiff_t P, float *mean, int nc)
{
    ce_nc_vf s = {0};
    for (ptrdiff_t p = 0; p < P; p++)
        s += CE_NC_LD(src + p * CE_NC_B);
    s = s * (1.0f / (float)P);
    float lanes[CE_NC_B];
    memcpy(lanes, &s, sizeof s);
    memcpy(mean, lanes, (size_t)nc * sizeof(float));
}

#endif
