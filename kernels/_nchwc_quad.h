/* Two groups of output blocks at once on AVX2 (the quad), for the pointwise kernel of
 * _nchwc.h, which includes this file after ce_nc_pw_group; _nchwc_conv.h and
 * _nchwc_expand.h use its assembly and pixel runs too. CE_NC_QUAD says whether it is
 * built. */
#ifndef CE_NCHWC_QUAD_H
#define CE_NCHWC_QUAD_H

#if CE_NC_B == 8 && defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
/* ---- Two groups at once, on AVX2 ----------------------------------------------------------
 * With 16 vector registers the tile above holds 6 pixels x 2 blocks; each broadcast then
 * feeds two multiply-adds, and every 16 output channels read the input again. Two full groups
 * (4 blocks) run together as ONNX Runtime's AVX2 kernel does, 3 pixels x 4 blocks: per input
 * channel three broadcasts held in registers and one weight vector at a time, used for three
 * multiply-adds; 12 sums, 3 broadcasts and a weight fill the 16 registers exactly, which gcc
 * does not find on its own (it spills), so the 8 channels of a block are written out in
 * assembly. A 6-pixel tile runs as two 3-pixel halves (a 5-pixel one as 3 and 2); each sum is
 * the tile's, in the same order (block after block, channel after channel, one fused
 * multiply-add each), so results do not change. 64->256 on 56x56, one thread, in a C harness
 * of the kernel: 1.80 -> 1.36 ms; ResNet-like 1x1 layers 8-24% faster. */
#define CE_NC_QUAD 1

/* one input channel c of a quad: its three pixels' values already broadcast in ymm13-15,
 * the four weight vectors of c at wa (blocks 0, 1) and wb (blocks 2, 3) */
#define CE_NC_Q_FMAS(c)                                                                     \
    "vmovups " #c "*64(%[wa]), %%ymm12\n\t"                                                 \
    "vfmadd231ps %%ymm12, %%ymm13, %[a00]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm14, %[a10]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm15, %[a20]\n\t"                                              \
    "vmovups " #c "*64+32(%[wa]), %%ymm12\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm13, %[a01]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm14, %[a11]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm15, %[a21]\n\t"                                              \
    "vmovups " #c "*64(%[wb]), %%ymm12\n\t"                                                 \
    "vfmadd231ps %%ymm12, %%ymm13, %[a02]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm14, %[a12]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm15, %[a22]\n\t"                                              \
    "vmovups " #c "*64+32(%[wb]), %%ymm12\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm13, %[a03]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm14, %[a13]\n\t"                                              \
    "vfmadd231ps %%ymm12, %%ymm15, %[a23]\n\t"
/* the pixels side by side in a block (the pointwise layer) */
#define CE_NC_Q_CH(c)                                                                       \
    "vbroadcastss " #c "*4(%[x]), %%ymm13\n\t"                                              \
    "vbroadcastss " #c "*4+32(%[x]), %%ymm14\n\t"                                           \
    "vbroadcastss " #c "*4+64(%[x]), %%ymm15\n\t"                                           \
    CE_NC_Q_FMAS(c)
/* the quad's twelve sums as asm operands %[a00] .. %[a23] */
#define CE_NC_Q_SUMS                                                                        \
    [a00] "+x"(a0_0), [a01] "+x"(a0_1), [a02] "+x"(a0_2), [a03] "+x"(a0_3),                 \
    [a10] "+x"(a1_0), [a11] "+x"(a1_1), [a12] "+x"(a1_2), [a13] "+x"(a1_3),                 \
    [a20] "+x"(a2_0), [a21] "+x"(a2_1), [a22] "+x"(a2_2), [a23] "+x"(a2_3)

/* A quad tile's pixels, and its twelve sums a##i##_##j declared: from zero, or (not first)
 * from out, as CE_NC_TILE_LOAD reads them (NK = 4, NP, out and os in scope) */
#define CE_NC_Q_PIX(M) M(0) M(1) M(2)
#define CE_NC_Q_DECL(i) ce_nc_vf a##i##_0 = {0}, a##i##_1 = {0}, a##i##_2 = {0}, a##i##_3 = {0};
/* input channel c's multiply-adds into pixel i's four sums in C (a pixel count below three,
 * or a last block's real channels), XV(i, c) the input value under pixel i */
#define CE_NC_Q_MACS(i, XV)                                                                 \
    if (i < NP) {                                                                           \
        const float xv = XV(i, c);                                                          \
        a##i##_0 += CE_NC_LD(wa + c * 2 * B) * xv;                                          \
        a##i##_1 += CE_NC_LD(wa + c * 2 * B + B) * xv;                                      \
        a##i##_2 += CE_NC_LD(wb + c * 2 * B) * xv;                                          \
        a##i##_3 += CE_NC_LD(wb + c * 2 * B + B) * xv;                                      \
    }
#define CE_NC_Q_OPEN                                                                        \
    CE_NC_Q_PIX(CE_NC_Q_DECL)                                                               \
    if (!first) {                                                                           \
        CE_NC_Q_PIX(CE_NC_TILE_LOAD)                                                        \
    }

/* NP <= 3 pixels of 4 output blocks: blocks 0, 1 with the weights wa ([Cb * B][2 * B], as
 * ce_nc_pw_tile's w for NK = 2), blocks 2, 3 with wb; the rest as ce_nc_pw_tile. */
static inline __attribute__((always_inline)) void
ce_nc_pw_quad_tile(const float *restrict x, ptrdiff_t P, int Cb, int tail,
                   const float *restrict wa, const float *restrict wb, const int NP,
                   const float *restrict bias, const float *res, float *out, ptrdiff_t os,
                   ce_act_t act, int first, int last)
{
    const ptrdiff_t B = CE_NC_B;
    const int NK = 4;
#define CE_NC_PIX CE_NC_Q_PIX
    CE_NC_Q_OPEN
    for (int cb = 0; cb < Cb; cb++, wa += 2 * B * B, wb += 2 * B * B) {
        const float *xb = x + cb * P * B;
        /* the next three pixels of this block (96 bytes), as ce_nc_pw_tile does */
        __builtin_prefetch(xb + NP * B);
        __builtin_prefetch(xb + NP * B + 16);
        if (NP == 3 && (cb < Cb - 1 || tail == CE_NC_B)) {
            __asm__(CE_NC_Q_CH(0) CE_NC_Q_CH(1) CE_NC_Q_CH(2) CE_NC_Q_CH(3)
                    CE_NC_Q_CH(4) CE_NC_Q_CH(5) CE_NC_Q_CH(6) CE_NC_Q_CH(7)
                    : CE_NC_Q_SUMS
                    : [x] "r"(xb), [wa] "r"(wa), [wb] "r"(wb)
                    : "xmm12", "xmm13", "xmm14", "xmm15", "memory");
            continue;
        }
        /* fewer pixels, or the last block's real channels: the same sums in C */
        const int nc = cb == Cb - 1 ? tail : CE_NC_B;
        for (int c = 0; c < nc; c++) {
#define CE_NC_Q_XV(i, c) xb[i * B + c]
#define CE_NC_Q_FMA(i) CE_NC_Q_MACS(i, CE_NC_Q_XV)
            CE_NC_PIX(CE_NC_Q_FMA)
#undef CE_NC_Q_FMA
#undef CE_NC_Q_XV
        }
    }
    CE_NC_TILE_STORE_ALL
#undef CE_NC_PIX
}

/* n runs of NP pixels side by side, one call (as ce_nc_pw_runs) */
#define CE_NC_PW_QUAD_N(NP)                                                                 \
    static void ce_nc_pw_quad_##NP(const float *x, ptrdiff_t P, int Cb, int tail,           \
                                   const float *wa, const float *wb, const float *bias,     \
                                   const float *res, float *out, ptrdiff_t os, ce_act_t act, \
                                   int first, int last, ptrdiff_t n)                        \
    {                                                                                       \
        for (ptrdiff_t k = 0; k < n; k++) {                                                 \
            const ptrdiff_t at = k * NP * CE_NC_B;                                          \
            ce_nc_pw_quad_tile(x + at, P, Cb, tail, wa, wb, NP, bias, res ? res + at : NULL, \
                               out + at, os, act, first, last);                             \
        }                                                                                   \
    }
CE_NC_PW_QUAD_N(1)
CE_NC_PW_QUAD_N(2)
CE_NC_PW_QUAD_N(3)
#undef CE_NC_PW_QUAD_N
typedef void (*ce_nc_pw_quad_fn)(const float *, ptrdiff_t, int, int, const float *,
                                 const float *, const float *, const float *, float *,
                                 ptrdiff_t, ce_act_t, int, int, ptrdiff_t);
static const ce_nc_pw_quad_fn ce_nc_pw_quads[3] = {ce_nc_pw_quad_1, ce_nc_pw_quad_2,
                                                   ce_nc_pw_quad_3};

/* Pixels [pa, pb) of 4 output blocks in threes, over one batch of nb input blocks: x, res
 * and out at pixel 0 (of the batch, of the first block), blocks os floats apart; wa, wb the
 * batch's weights of the two groups; act done in the stores (none or a clamp). */
static void ce_nc_pw_quad_px(const float *x, ptrdiff_t P, int nb, int tail, const float *wa,
                             const float *wb, const float *bias, const float *res, float *out,
                             ptrdiff_t os, ce_act_t act, int first, int last, ptrdiff_t pa,
                             ptrdiff_t pb)
{
    const ptrdiff_t B = CE_NC_B, full = (pb - pa) / 3, rest = (pb - pa) % 3;
    if (full)
        ce_nc_pw_quads[2](x + pa * B, P, nb, tail, wa, wb, bias, res ? res + pa * B : NULL,
                          out + pa * B, os, act, first, last, full);
    if (rest) {
        const ptrdiff_t p0 = pa + 3 * full;
        ce_nc_pw_quads[rest - 1](x + p0 * B, P, nb, tail, wa, wb, bias,
                                 res ? res + p0 * B : NULL, out + p0 * B, os, act, first, last,
                                 1);
    }
}

/* Groups g and g + 1, both full (4 output blocks from kb0 = g * GROUP), over tiles t0 .. t1 of
 * one image: ce_nc_pw_group_w's passes, batches and activation, on 3-pixel halves. */
static void ce_nc_pw_quad(const float *x, ptrdiff_t P, int Cb, int tail, const float *wpack,
                          int g, const float *bias, const float *res, float *out, ce_act_t act,
                          ptrdiff_t t0, ptrdiff_t t1)
{
    const ptrdiff_t B = CE_NC_B;
    const int kb0 = g * CE_NC_GROUP;
    const float *wga = wpack + (ptrdiff_t)kb0 * Cb * B * B;
    const float *wgb = wga + (ptrdiff_t)CE_NC_GROUP * Cb * B * B;
    const float *bb = bias + kb0 * B;
    const ptrdiff_t ob = (ptrdiff_t)kb0 * P * B;
    const ce_nc_tiling tiling = ce_nc_tiles(P);
    for (int c0 = 0; c0 < Cb; c0 += CE_NC_BATCH) {
        int nb = Cb - c0 < CE_NC_BATCH ? Cb - c0 : CE_NC_BATCH;
        int first = c0 == 0, last = c0 + nb == Cb;
        const float *wa = wga + (ptrdiff_t)c0 * 2 * B * B, *wb = wgb + (ptrdiff_t)c0 * 2 * B * B;
        const int later = last && !CE_NC_ACT_INLINE(act.code);
        const ce_act_t tile_act = later ? (ce_act_t){CE_ACT_CODE_NONE, 0.0f, 0.0f} : act;
        const float *xs = x + (ptrdiff_t)c0 * P * B;
        const int ntail = last ? tail : CE_NC_B;
        const ptrdiff_t step = later ? CE_NC_ACT_TILES : t1 - t0;
        for (ptrdiff_t ta = t0; ta < t1; ta += step) {
            ptrdiff_t tb = t1 - ta < step ? t1 : ta + step;
            ptrdiff_t pa = ce_nc_tile_start(tiling, ta), pb = ce_nc_tile_start(tiling, tb);
            /* the run's pixels in threes, then what is left (a tile's pixels, whichever
             * tile holds them, sum the same way) */
            ce_nc_pw_quad_px(xs, P, nb, ntail, wa, wb, bb, res ? res + ob : NULL, out + ob,
                             P * B, tile_act, first, last, pa, pb);
            if (later)
                for (int j = 0; j < 4; j++)
                    ce_nc_act_span(out + ob + (ptrdiff_t)j * P * B + pa * B, pb - pa, act);
        }
    }
}
#else
#define CE_NC_QUAD 0
#endif

#endif
