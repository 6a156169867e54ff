/* The fused activation of the kernels' output steps (codes of _epilogue.pxd and
 * engine/ops/activation.py: 0 none, 1 relu, 2 relu6, 3 silu, 4 hardswish, 5 gelu), defined
 * once here for each vector type a kernel header uses: CE_DEFINE_VEC_ACT(name, float vector
 * type, int vector type of the same size). Every code maps 0 to 0, so the zero channels that
 * pad the last block of NCHW16c stay zero.
 *
 * ce_act_scalar and ce_act_row are the same activations for kernels whose output step is
 * scalar: computed with the same vector formulas, so a value does not depend on which
 * kernel wrote it. */
#ifndef CE_VEC_ACT_H
#define CE_VEC_ACT_H

#include <stddef.h>
#include "_vexp.h"

enum { CE_ACT_CODE_NONE = 0, CE_ACT_CODE_RELU = 1, CE_ACT_CODE_RELU6 = 2,
       CE_ACT_CODE_SILU = 3, CE_ACT_CODE_HARDSWISH = 4, CE_ACT_CODE_GELU = 5 };

/* C has no vector ?:, so max(v, 0) and min(v, 6) select through the comparison masks; the
 * masks test v < 0 and v > 6, both false for NaN, so a NaN stays NaN (IEEE: relu(NaN) = NaN) */
#define CE_DEFINE_VEC_ACT(name, vf, vi)                                                     \
    CE_DEFINE_VEC_MATH(name##_m, vf, vi)                                                    \
    static inline vf name(vf v, int act)                                                    \
    {                                                                                       \
        const vf zero = {0};                                                                \
        if (act == CE_ACT_CODE_NONE)                                                        \
            return v;                                                                       \
        if (act <= CE_ACT_CODE_RELU6) {                                                     \
            v = (vf)((vi)v & ~(v < zero));                                                  \
            if (act == CE_ACT_CODE_RELU6) {                                                 \
                const vf six = zero + 6.0f;                                                 \
                vi above = v > six;                                                         \
                v = (vf)(((vi)v & ~above) | ((vi)six & above));                             \
            }                                                                               \
            return v;                                                                       \
        }                                                                                   \
        if (act == CE_ACT_CODE_SILU)                                                        \
            return v * name##_m_sigmoid(v);                                                 \
        if (act == CE_ACT_CODE_HARDSWISH)                                                   \
            return name##_m_hardswish(v);                                                   \
        return name##_m_gelu(v);                                                            \
    }

CE_DEFINE_VEC_ACT(ce_act_vec, ce_act_vf, ce_act_vi)

/* act(v) for one value: lane 0 of the vector form */
static inline float ce_act_scalar(float v, int act)
{
    if (act == CE_ACT_CODE_NONE)
        return v;
    if (act == CE_ACT_CODE_RELU)
        return v < 0 ? 0 : v;
    if (act == CE_ACT_CODE_RELU6)
        return v < 0 ? 0 : (v > 6 ? 6 : v);
    ce_act_vf x = {v};
    return ce_act_vec(x, act)[0];
}

/* row[i] = act(row[i] + b) for i < n, n >= 0; row need not be aligned */
static inline void ce_act_row(float *row, ptrdiff_t n, float b, int act)
{
    ptrdiff_t i = 0;
    for (; i + CE_ACT_VW <= n; i += CE_ACT_VW)
        *(ce_act_vfu *)(row + i) = ce_act_vec(*(const ce_act_vfu *)(row + i) + b, act);
    for (; i < n; i++)
        row[i] = ce_act_scalar(row[i] + b, act);
}

#endif
