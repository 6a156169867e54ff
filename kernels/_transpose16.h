/* A 16 x 16 single-precision transpose in registers, for the kernels that change a layout
 * (kernels/_nchwc.h) or turn pixel-major columns into GEMM panels (kernels/deform.pyx), and an
 * 8 x 8 one for the 8-channel blocks of builds without AVX-512.
 *
 * Row i of dst (dstride floats apart) = column i of the 16 rows of src (sstride floats apart).
 * Four stages, each swapping the off-diagonal halves of every 2b x 2b block (b = 8, 4, 2, 1)
 * with two-vector shuffles. */
#ifndef CE_TRANSPOSE16_H
#define CE_TRANSPOSE16_H

#include <stddef.h>

typedef float ce_t16_vf __attribute__((vector_size(64)));
typedef float ce_t16_vfu __attribute__((vector_size(64), aligned(4), may_alias));
typedef int ce_t16_vi __attribute__((vector_size(64)));

static inline void ce_transpose16(const float *src, ptrdiff_t sstride, float *dst,
                                  ptrdiff_t dstride)
{
    ce_t16_vf r[16];
    for (int i = 0; i < 16; i++)
        r[i] = *(const ce_t16_vfu *)(src + i * sstride);
#define CE_T16_STAGE(b, lo_mask, hi_mask)                                                   \
    {                                                                                       \
        const ce_t16_vi lo = lo_mask, hi = hi_mask;                                         \
        for (int i = 0; i < 16; i++)                                                        \
            if (!(i & b)) {                                                                 \
                ce_t16_vf a = r[i], c = r[i + b];                                           \
                r[i] = __builtin_shuffle(a, c, lo);                                         \
                r[i + b] = __builtin_shuffle(a, c, hi);                                     \
            }                                                                               \
    }
    /* lo[j] = j has bit b ? 16 + j - b : j;  hi[j] = j has bit b ? 16 + j : j + b */
    CE_T16_STAGE(8, ((ce_t16_vi){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}),
                 ((ce_t16_vi){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}))
    CE_T16_STAGE(4, ((ce_t16_vi){0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27}),
                 ((ce_t16_vi){4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}))
    CE_T16_STAGE(2, ((ce_t16_vi){0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}),
                 ((ce_t16_vi){2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}))
    CE_T16_STAGE(1, ((ce_t16_vi){0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}),
                 ((ce_t16_vi){1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}))
#undef CE_T16_STAGE
    for (int i = 0; i < 16; i++)
        *(ce_t16_vfu *)(dst + i * dstride) = r[i];
}

typedef float ce_t8_vf __attribute__((vector_size(32)));
typedef float ce_t8_vfu __attribute__((vector_size(32), aligned(4), may_alias));
typedef int ce_t8_vi __attribute__((vector_size(32)));

/* The same for 8 rows of 8: three stages, b = 4, 2, 1. */
static inline void ce_transpose8(const float *src, ptrdiff_t sstride, float *dst,
                                 ptrdiff_t dstride)
{
    ce_t8_vf r[8];
    for (int i = 0; i < 8; i++)
        r[i] = *(const ce_t8_vfu *)(src + i * sstride);
#define CE_T8_STAGE(b, lo_mask, hi_mask)                                                    \
    {                                                                                       \
        const ce_t8_vi lo = lo_mask, hi = hi_mask;                                          \
        for (int i = 0; i < 8; i++)                                                         \
            if (!(i & b)) {                                                                 \
                ce_t8_vf a = r[i], c = r[i + b];                                            \
                r[i] = __builtin_shuffle(a, c, lo);                                         \
                r[i + b] = __builtin_shuffle(a, c, hi);                                     \
            }                                                                               \
    }
    /* lo[j] = j has bit b ? 8 + j - b : j;  hi[j] = j has bit b ? 8 + j : j + b */
    CE_T8_STAGE(4, ((ce_t8_vi){0, 1, 2, 3, 8, 9, 10, 11}), ((ce_t8_vi){4, 5, 6, 7, 12, 13, 14, 15}))
    CE_T8_STAGE(2, ((ce_t8_vi){0, 1, 8, 9, 4, 5, 12, 13}), ((ce_t8_vi){2, 3, 10, 11, 6, 7, 14, 15}))
    CE_T8_STAGE(1, ((ce_t8_vi){0, 8, 2, 10, 4, 12, 6, 14}), ((ce_t8_vi){1, 9, 3, 11, 5, 13, 7, 15}))
#undef CE_T8_STAGE
    for (int i = 0; i < 8; i++)
        *(ce_t8_vfu *)(dst + i * dstride) = r[i];
}

#endif
