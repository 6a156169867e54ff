/* A dense convolution with few input channels (a network's first layer) reading NCHW planes
 * and writing channel blocks (NCHWc, _nchwc.h): CE_NC_DIRECT_PIXELS output pixels of NK = 2
 * blocks at a time (six on 8-float builds, where eight by two spilled from the 16 registers
 * and ran 25% slower: bench/bench_dispatch.py conv/direct_blocked), twice as many of one block
 * in the same registers, four blocks at a time on AVX-512 (ce_nc_direct_chunk4). Each tap's
 * weights, NK vectors, are multiplied by the input value at each pixel (a broadcast, shared by
 * the blocks). Taps outside the plane are skipped, with the same order of sums as inside it.
 *   x: the image's C planes H x W; w: the first block's [C][kh][kw][B] weights, the second's
 *   wstride floats on; bias: NK vectors; out: the first block's output row (OW pixels of 16),
 *   the second's ostride floats on. */
#ifndef CE_NCHWC_DIRECT_H
#define CE_NCHWC_DIRECT_H

#include "_nchwc.h"

#if CE_NC_B == 8
#define CE_NC_DIRECT_PIXELS 6   /* 6 x 2 sums, 2 weights and a broadcast fit 16 registers */
#else
#define CE_NC_DIRECT_PIXELS 8
#endif

static inline __attribute__((always_inline)) void
ce_nc_direct_chunk(const float *x, int C, int H, int W, int iy0, int ix0, int sw, int kh,
                   int kw, int dh, int dw, const float *w, ptrdiff_t wstride, const float *bias,
                   float *out, ptrdiff_t ostride, ce_act_t act, int np, const int NK,
                   const int checked)
{
    const int P = CE_NC_DIRECT_PIXELS;
    ce_nc_vf b = CE_NC_LD(bias), b1 = NK > 1 ? CE_NC_LD(bias + CE_NC_B) : b;
    ce_nc_vf a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b;
    ce_nc_vf c0 = b1, c1 = b1, c2 = b1, c3 = b1, c4 = b1, c5 = b1, c6 = b1, c7 = b1;
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
                ce_nc_vf wv = CE_NC_LD(w), wv1 = NK > 1 ? CE_NC_LD(w + wstride) : wv;
                int ix = ix0 + v * dw;
                /* inside the row, the pixels' inputs as offsets from one pointer: with the
                 * stride a constant they fold into the loads' addresses, where indices were
                 * hoisted to the stack and reloaded for each load */
                const float *px = checked ? row : row + ix;
#define CE_NC_DIRECT_X(j) (checked ? row[(ptrdiff_t)ix + (j) * sw] : px[(j) * sw])
#define CE_NC_TAP(j, a, c)                                                                  \
                if (j < CE_NC_DIRECT_PIXELS                                                 \
                    && (!checked || (j < np && ix + j * sw >= 0 && ix + j * sw < W))) {     \
                    float xv = CE_NC_DIRECT_X(j);                                           \
                    a += wv * xv;                                                           \
                    if (NK > 1)                                                             \
                        c += wv1 * xv;                                                      \
                }                                                                           \
                if (NK == 1 && j < CE_NC_DIRECT_PIXELS                                      \
                    && (!checked || (j + CE_NC_DIRECT_PIXELS < np && ix + (j + P) * sw >= 0 \
                                     && ix + (j + P) * sw < W)))                            \
                    c += wv * CE_NC_DIRECT_X(j + P);
                CE_NC_TAP(0, a0, c0) CE_NC_TAP(1, a1, c1) CE_NC_TAP(2, a2, c2)
                CE_NC_TAP(3, a3, c3) CE_NC_TAP(4, a4, c4) CE_NC_TAP(5, a5, c5)
                CE_NC_TAP(6, a6, c6) CE_NC_TAP(7, a7, c7)
#undef CE_NC_TAP
#undef CE_NC_DIRECT_X
            }
        }
    }
    ce_nc_vf acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    ce_nc_vf acc1[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
    for (int j = 0; j < np; j++) {
        if (NK == 1) {
            CE_NC_ST(out + j * CE_NC_B, ce_nc_act(j < P ? acc[j] : acc1[j - P], act));
            continue;
        }
        CE_NC_ST(out + j * CE_NC_B, ce_nc_act(acc[j], act));
        CE_NC_ST(out + ostride + j * CE_NC_B, ce_nc_act(acc1[j], act));
    }
}

/* Four blocks at a time on AVX-512 (six pixels: 24 sums, 4 weights and a broadcast in the 32
 * registers): each input value then feeds four multiply-adds, not two. ResNet's 7x7 3->64
 * stem 2.52 -> 2.17 ms at one thread (bench/bench_dispatch.py conv/direct_blocked). Sums in
 * the order of ce_nc_direct_chunk, so the values are its values. */
#if CE_NC_B == 16
#define CE_NC_DIRECT_BLOCKS 4
#define CE_NC_DIRECT4_PIXELS 6
static inline __attribute__((always_inline)) void
ce_nc_direct_chunk4(const float *x, int C, int H, int W, int iy0, int ix0, int sw, int kh,
                    int kw, int dh, int dw, const float *w, ptrdiff_t wstride, const float *bias,
                    float *out, ptrdiff_t ostride, ce_act_t act, int np, const int checked)
{
    const ce_nc_vf e0 = CE_NC_LD(bias), e1 = CE_NC_LD(bias + CE_NC_B),
                   e2 = CE_NC_LD(bias + 2 * CE_NC_B), e3 = CE_NC_LD(bias + 3 * CE_NC_B);
#define CE_NC_D4_PIXELS(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define CE_NC_D4_INIT(j) ce_nc_vf a##j = e0, b##j = e1, c##j = e2, d##j = e3;
    CE_NC_D4_PIXELS(CE_NC_D4_INIT)
#undef CE_NC_D4_INIT
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
                ce_nc_vf w0 = CE_NC_LD(w), w1 = CE_NC_LD(w + wstride),
                         w2 = CE_NC_LD(w + 2 * wstride), w3 = CE_NC_LD(w + 3 * wstride);
                int ix = ix0 + v * dw;
#define CE_NC_D4_TAP(j)                                                                     \
                if (!checked || (j < np && ix + j * sw >= 0 && ix + j * sw < W)) {          \
                    float xv = row[(ptrdiff_t)ix + j * sw];                                 \
                    a##j += w0 * xv;                                                        \
                    b##j += w1 * xv;                                                        \
                    c##j += w2 * xv;                                                        \
                    d##j += w3 * xv;                                                        \
                }
                CE_NC_D4_PIXELS(CE_NC_D4_TAP)
#undef CE_NC_D4_TAP
            }
        }
    }
#define CE_NC_D4_STORE(j)                                                                   \
    if (j < np) {                                                                           \
        CE_NC_ST(out + j * CE_NC_B, ce_nc_act(a##j, act));                                  \
        CE_NC_ST(out + ostride + j * CE_NC_B, ce_nc_act(b##j, act));                        \
        CE_NC_ST(out + 2 * ostride + j * CE_NC_B, ce_nc_act(c##j, act));                    \
        CE_NC_ST(out + 3 * ostride + j * CE_NC_B, ce_nc_act(d##j, act));                    \
    }
    CE_NC_D4_PIXELS(CE_NC_D4_STORE)
#undef CE_NC_D4_STORE
#undef CE_NC_D4_PIXELS
}
#else
#define CE_NC_DIRECT_BLOCKS 2
#endif

/* The output pixels [*in0, *in1) of a row whose windows lie inside the row's width. */
static inline void ce_nc_inside_pixels(int W, int OW, int sw, int pl, int kw, int dw, int *in0,
                                       int *in1)
{
    ptrdiff_t lim = (ptrdiff_t)W - 1 + pl - (ptrdiff_t)(kw - 1) * dw;   /* ox * sw <= lim */
    ptrdiff_t a = pl > 0 ? (pl + sw - 1) / sw : 0, b = lim < 0 ? 0 : lim / sw + 1;
    a = a < OW ? a : OW;
    b = b < OW ? b : OW;
    *in0 = (int)a;
    *in1 = (int)(b > a ? b : a);
}

/* A row's chunks of STEP pixels, CHUNK(ox, np, checked) each. Those whose windows lie inside
 * run unchecked; where the right edge needs no padding, the last of them ends at the row's
 * end, over pixels the one before it wrote (the same sums again), rather than running
 * checked. One call of each kind: every call is the chunk's whole body inlined. */
#define CE_NC_DIRECT_ROW_CHUNKS(STEP, CHUNK)                                                \
    do {                                                                                    \
        int in0_ = 0, in1_ = 0;                                                             \
        if (rows_inside)                                                                    \
            ce_nc_inside_pixels(W, OW, sw, pl, kw, dw, &in0_, &in1_);                       \
        for (int ox_ = 0; ox_ < OW; ox_ += (STEP)) {                                        \
            int at_ = ox_, inside_ = ox_ >= in0_ && ox_ + (STEP) <= in1_;                   \
            if (!inside_ && ox_ >= in0_ && in1_ == OW && OW - (STEP) >= in0_) {             \
                at_ = OW - (STEP);                                                          \
                inside_ = 1;                                                                \
            }                                                                               \
            if (inside_)                                                                    \
                CHUNK(at_, (STEP), 0);                                                      \
            else                                                                            \
                CHUNK(at_, OW - at_ < (STEP) ? OW - at_ : (STEP), 1);                       \
        }                                                                                   \
    } while (0)

/* The output row's pixels CE_NC_DIRECT_PIXELS at a time for two blocks, twice as many for one
 * (its second set of sums holds the second half). */
static inline __attribute__((always_inline)) void
ce_nc_direct_pixels(const float *x, int C, int H, int W, int OW, int iy0, int rows_inside,
                    int sw, int pl, int kh, int kw, int dh, int dw, const float *w,
                    ptrdiff_t wstride, const float *bias, float *out, ptrdiff_t ostride,
                    const int NK, ce_act_t act)
{
#define CE_NC_DIRECT_CHUNK(ox, np, checked)                                                 \
    ce_nc_direct_chunk(x, C, H, W, iy0, (ox) * sw - pl, sw, kh, kw, dh, dw, w, wstride,     \
                       bias, out + (ptrdiff_t)(ox) * CE_NC_B, ostride, act, np, NK, checked)
    CE_NC_DIRECT_ROW_CHUNKS(NK == 1 ? 2 * CE_NC_DIRECT_PIXELS : CE_NC_DIRECT_PIXELS,
                            CE_NC_DIRECT_CHUNK);
#undef CE_NC_DIRECT_CHUNK
}

/* One output row of nk (1 .. CE_NC_DIRECT_BLOCKS) consecutive blocks. */
static void ce_nc_direct_row_act(const float *x, int C, int H, int W, int OW, int oy, int sh,
                             int sw, int pt, int pl, int kh, int kw, int dh, int dw,
                             const float *w, ptrdiff_t wstride, const float *bias, float *out,
                             ptrdiff_t ostride, int nk, ce_act_t act)
{
    int iy0 = oy * sh - pt;
    int rows_inside = iy0 >= 0 && iy0 + (kh - 1) * dh < H;
#if CE_NC_DIRECT_BLOCKS == 4
    if (nk == 4) {
#define CE_NC_DIRECT4_CHUNK(ox, np, checked)                                                \
        ce_nc_direct_chunk4(x, C, H, W, iy0, (ox) * sw - pl, sw, kh, kw, dh, dw, w, wstride, \
                            bias, out + (ptrdiff_t)(ox) * CE_NC_B, ostride, act, np, checked)
        CE_NC_DIRECT_ROW_CHUNKS(CE_NC_DIRECT4_PIXELS, CE_NC_DIRECT4_CHUNK);
#undef CE_NC_DIRECT4_CHUNK
        return;
    }
    if (nk == 3) {      /* a pair, then one */
        ce_nc_direct_row_act(x, C, H, W, OW, oy, sh, sw, pt, pl, kh, kw, dh, dw, w, wstride,
                             bias, out, ostride, 2, act);
        ce_nc_direct_row_act(x, C, H, W, OW, oy, sh, sw, pt, pl, kh, kw, dh, dw,
                             w + 2 * wstride, wstride, bias + 2 * CE_NC_B, out + 2 * ostride,
                             ostride, 1, act);
        return;
    }
#endif
    /* strides 1 and 2 as constants: each pixel's input is then an offset in the load's
     * address, where a stride from memory took a register per pixel, more than there are */
#define CE_NC_DIRECT_PIXELS_AT(NK, SW)                                                      \
    ce_nc_direct_pixels(x, C, H, W, OW, iy0, rows_inside, SW, pl, kh, kw, dh, dw, w,        \
                        wstride, bias, out, ostride, NK, act)
#define CE_NC_DIRECT_STRIDES(NK)                                                            \
    if (sw == 1)                                                                            \
        CE_NC_DIRECT_PIXELS_AT(NK, 1);                                                      \
    else if (sw == 2)                                                                       \
        CE_NC_DIRECT_PIXELS_AT(NK, 2);                                                      \
    else                                                                                    \
        CE_NC_DIRECT_PIXELS_AT(NK, sw);
    if (nk == 2) {
        CE_NC_DIRECT_STRIDES(2)
    } else {
        CE_NC_DIRECT_STRIDES(1)
    }
#undef CE_NC_DIRECT_STRIDES
#undef CE_NC_DIRECT_PIXELS_AT
}

/* The usual stem (3 channels, 3x3, stride 2, padding 1) of one or two blocks with its geometry
 * and output step as constants: every loop bound and offset then folds. 3->32 on 224x224
 * 0.265 -> 0.234 ms, one thread; MobileNetV2 2% and RegNetX-400MF 1% faster A/B. Of one block
 * (3->16, sixteen pixels a chunk) 0.141 -> 0.107 ms, with the stride alone a constant 0.122.
 * The same sums in the same order as ce_nc_direct_row_act. */
#define CE_NC_STEM3_ACT(NK, CODE)                                                           \
    ce_nc_direct_pixels(x, 3, H, W, OW, oy * 2 - 1, oy * 2 - 1 >= 0 && oy * 2 + 1 < H, 2, 1,  \
                        3, 3, 1, 1, w, wstride, bias, out, ostride, NK,                     \
                        (ce_act_t){CODE, 0.0f, 0.0f})
#define CE_NC_STEM3(NK)                                                                     \
    switch (inline_act ? act.code : CE_ACT_CODE_NONE) {                                     \
    case CE_ACT_CODE_RELU: CE_NC_STEM3_ACT(NK, CE_ACT_CODE_RELU); break;                    \
    case CE_ACT_CODE_RELU6: CE_NC_STEM3_ACT(NK, CE_ACT_CODE_RELU6); break;                  \
    default: CE_NC_STEM3_ACT(NK, CE_ACT_CODE_NONE); break;                                  \
    }

static void ce_nc_direct_row(const float *x, int C, int H, int W, int OW, int oy, int sh,
                             int sw, int pt, int pl, int kh, int kw, int dh, int dw,
                             const float *w, ptrdiff_t wstride, const float *bias, float *out,
                             ptrdiff_t ostride, int nk, ce_act_t act)
{
    const ce_act_t none = {CE_ACT_CODE_NONE, 0.0f, 0.0f};
    int inline_act = CE_NC_ACT_INLINE(act.code);
    if (C == 3 && kh == 3 && kw == 3 && sh == 2 && sw == 2 && pt == 1 && pl == 1 && dh == 1
        && dw == 1 && nk <= 2) {
        if (nk == 2) {
            CE_NC_STEM3(2)
        } else {
            CE_NC_STEM3(1)
        }
    } else {
        ce_nc_direct_row_act(x, C, H, W, OW, oy, sh, sw, pt, pl, kh, kw, dh, dw, w, wstride,
                             bias, out, ostride, nk, inline_act ? act : none);
    }
    if (!inline_act)
        for (int j = 0; j < nk; j++)
            ce_nc_act_span(out + j * ostride, OW, act);
}

#endif
