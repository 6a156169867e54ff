/* The fused activation of the kernels' output steps (codes below, named in
 * engine/ops/activation.py), defined once here for each vector type a kernel header uses:
 * CE_DEFINE_VEC_ACT(name, float vector type, int vector type of the same size). Each maps
 * finite values to finite values, so the channels padding the last block of NCHW16c stay
 * finite (the blocked kernels' zero weights cancel them; engine/graph/layout.py).
 *
 * ce_act_scalar and ce_act_row are the same activations for kernels whose output step is
 * scalar: computed with the same vector formulas, so a value does not depend on which
 * kernel wrote it. */
#ifndef CE_VEC_ACT_H
#define CE_VEC_ACT_H

#include <stddef.h>
#include "_vexp.h"

enum { CE_ACT_CODE_NONE = 0, CE_ACT_CODE_RELU = 1, CE_ACT_CODE_RELU6 = 2,
       CE_ACT_CODE_SILU = 3, CE_ACT_CODE_HARDSWISH = 4, CE_ACT_CODE_GELU = 5,
       CE_ACT_CODE_SIGMOID = 6, CE_ACT_CODE_TANH = 7, CE_ACT_CODE_GELU_TANH = 8,
       CE_ACT_CODE_SOFTPLUS = 9, CE_ACT_CODE_MISH = 10, CE_ACT_CODE_ELU = 11,
       CE_ACT_CODE_LEAKY_RELU = 12, CE_ACT_CODE_HARDSIGMOID = 13, CE_ACT_CODE_CLIP = 14,
       CE_ACT_CODE_COUNT = 15 };

/* An activation and its parameters: alpha for elu (alpha expm1(x) below 0) and leaky_relu
 * (alpha x below 0); alpha and beta for hardsigmoid (clamp(alpha x + beta, 0, 1)) and clip
 * (clamp(x, alpha, beta)). Passed by value: three words. */
typedef struct { int code; float alpha, beta; } ce_act_t;

/* One case of name##_map: the loop over whole vectors with the activation a constant (two
 * vectors an iteration measured slower on AVX2: the exp's constants no longer fit the 16
 * registers). */
#define CE_VEC_ACT_LOOP(name, vf, CODE)                                                     \
        for (; i + VW <= n; i += VW) {                                                      \
            vf v;                                                                           \
            __builtin_memcpy(&v, x + i, sizeof v);                                          \
            if (affine)                                                                     \
                v = v * s + t;                                                              \
            v = name(v, (ce_act_t){CODE, act.alpha, act.beta});                             \
            __builtin_memcpy(y + i, &v, sizeof v);                                          \
        }
#define CE_VEC_ACT_CASE(name, vf, CODE)                                                     \
    case CODE:                                                                              \
        CE_VEC_ACT_LOOP(name, vf, CODE)                                                     \
        break;

/* C has no vector ?:, so selects go through the comparison masks; every mask tests a
 * comparison that is false for NaN (v < 0, v > 6, ...), so a NaN stays NaN (relu(NaN) = NaN) */
#define CE_DEFINE_VEC_ACT(name, vf, vi)                                                     \
    CE_DEFINE_VEC_MATH(name##_m, vf, vi)                                                    \
    /* the activations past the clamps */                                                   \
    __attribute__((always_inline)) static inline vf name##_body(vf v, ce_act_t act)         \
    {                                                                                       \
        const vf zero = {0};                                                                \
        switch (act.code) {                                                                 \
        case CE_ACT_CODE_SILU:                                                              \
            return v * name##_m_sigmoid(v);                                                 \
        case CE_ACT_CODE_HARDSWISH:                                                         \
            return name##_m_hardswish(v);                                                   \
        case CE_ACT_CODE_GELU:                                                              \
            return name##_m_gelu(v);                                                        \
        case CE_ACT_CODE_SIGMOID:                                                           \
            return name##_m_sigmoid(v);                                                     \
        case CE_ACT_CODE_TANH:                                                              \
            return name##_m_tanh(v);                                                        \
        case CE_ACT_CODE_GELU_TANH:                                                         \
            return name##_m_gelu_tanh(v);                                                   \
        case CE_ACT_CODE_SOFTPLUS:                                                          \
            return name##_m_softplus(v);                                                    \
        case CE_ACT_CODE_MISH:                                                              \
            return name##_m_mish(v);                                                        \
        case CE_ACT_CODE_ELU:                                                               \
            return name##_m_select(v > zero, act.alpha * name##_m_expm1(v), v);             \
        case CE_ACT_CODE_LEAKY_RELU:                                                        \
            return name##_m_select(v < zero, v, v * act.alpha);                             \
        case CE_ACT_CODE_HARDSIGMOID:                                                       \
            v = v * act.alpha + act.beta;                                                   \
            v = name##_m_select(v < zero, v, zero);                                         \
            return name##_m_select(v > zero + 1.0f, v, zero + 1.0f);                        \
        default: /* CE_ACT_CODE_CLIP */                                                     \
            v = name##_m_select(v < zero + act.alpha, v, zero + act.alpha);                 \
            return name##_m_select(v > zero + act.beta, v, zero + act.beta);                \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    __attribute__((noinline)) static vf name##_other(vf v, ce_act_t act)                    \
    {                                                                                       \
        return name##_body(v, act);                                                         \
    }                                                                                       \
                                                                                            \
    /* none and the clamps inline, the rest by a call: left to gcc, the whole switch went   \
     * out of line, and every caller spilled its live sums around the call even for none    \
     * (the packed GEMM's output step took as long as its multiply-adds at K = 16). A code  \
     * known at compile time (kernels instantiated per activation) is inlined whole. */     \
    __attribute__((always_inline)) static inline vf name(vf v, ce_act_t act)                \
    {                                                                                       \
        const vf zero = {0};                                                                \
        if (act.code == CE_ACT_CODE_NONE)                                                   \
            return v;                                                                       \
        if (act.code <= CE_ACT_CODE_RELU6) {                                                \
            v = name##_m_select(v < zero, v, zero);                                         \
            if (act.code == CE_ACT_CODE_RELU6)                                              \
                v = name##_m_select(v > zero + 6.0f, v, zero + 6.0f);                       \
            return v;                                                                       \
        }                                                                                   \
        if (__builtin_constant_p(act.code))                                                 \
            return name##_body(v, act);                                                     \
        return name##_other(v, act);                                                        \
    }                                                                                       \
                                                                                            \
    /* y[i] = act(x[i] * s + t) (act(x[i]) where s = 1, t = 0) for the whole vectors of     \
     * i < n; returns the count done. The activation is chosen once per call, not per       \
     * vector: a call per vector through name##_other took 50 cycles. y may be x */         \
    __attribute__((noinline, unused)) static ptrdiff_t name##_map(                          \
        const float *x, float *y, ptrdiff_t n, float s, float t, ce_act_t act)              \
    {                                                                                       \
        const ptrdiff_t VW = (ptrdiff_t)(sizeof(vf) / sizeof(float));                       \
        ptrdiff_t i = 0;                                                                    \
        const int affine = s != 1.0f || t != 0.0f;                                          \
        switch (act.code) {                                                                 \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_NONE)                                         \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_RELU)                                         \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_RELU6)                                        \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_SILU)                                         \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_HARDSWISH)                                    \
        case CE_ACT_CODE_GELU:                                                              \
            for (; i + 2 * VW <= n; i += 2 * VW) {                                          \
                vf v, w;                                                                    \
                __builtin_memcpy(&v, x + i, sizeof v);                                      \
                __builtin_memcpy(&w, x + i + VW, sizeof w);                                 \
                if (affine) {                                                               \
                    v = v * s + t;                                                          \
                    w = w * s + t;                                                          \
                }                                                                           \
                name##_m_gelu2(&v, &w);                                                     \
                __builtin_memcpy(y + i, &v, sizeof v);                                      \
                __builtin_memcpy(y + i + VW, &w, sizeof w);                                 \
            }                                                                               \
            CE_VEC_ACT_LOOP(name, vf, CE_ACT_CODE_GELU)                                     \
            break;                                                                          \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_SIGMOID)                                      \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_TANH)                                         \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_GELU_TANH)                                    \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_SOFTPLUS)                                     \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_MISH)                                         \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_ELU)                                          \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_LEAKY_RELU)                                   \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_HARDSIGMOID)                                  \
        default:                                                                            \
        CE_VEC_ACT_CASE(name, vf, CE_ACT_CODE_CLIP)                                         \
        }                                                                                   \
        return i;                                                                           \
    }

CE_DEFINE_VEC_ACT(ce_act_vec, ce_act_vf, ce_act_vi)

/* act(v) for one value: lane 0 of the vector form */
static inline float ce_act_scalar(float v, ce_act_t act)
{
    if (act.code == CE_ACT_CODE_NONE)
        return v;
    if (act.code == CE_ACT_CODE_RELU)
        return v < 0 ? 0 : v;
    if (act.code == CE_ACT_CODE_RELU6)
        return v < 0 ? 0 : (v > 6 ? 6 : v);
    ce_act_vf x = {v};
    return ce_act_vec(x, act)[0];
}

/* row[i] = act(row[i] + b) for i < n, n >= 0; row need not be aligned */
static inline void ce_act_row(float *row, ptrdiff_t n, float b, ce_act_t act)
{
    ptrdiff_t i = ce_act_vec_map(row, row, n, 1.0f, b, act);
    for (; i < n; i++)
        row[i] = ce_act_scalar(row[i] + b, act);
}

#endif
