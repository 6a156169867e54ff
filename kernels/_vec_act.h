/* The fused activation of the kernels' output steps on a GCC vector of floats (codes of
 * _epilogue.pxd: 0 none, 1 relu, 2 relu6), defined once here for each vector type a kernel
 * header uses: CE_DEFINE_VEC_ACT(name, float vector type, int vector type of the same size). */
#ifndef CE_VEC_ACT_H
#define CE_VEC_ACT_H

/* C has no vector ?:, so max(v, 0) and min(v, 6) select through the comparison masks; the
 * masks test v < 0 and v > 6, both false for NaN, so a NaN stays NaN (IEEE: relu(NaN) = NaN) */
#define CE_DEFINE_VEC_ACT(name, vf, vi)                                                     \
    static inline vf name(vf v, int act)                                                    \
    {                                                                                       \
        const vf zero = {0};                                                                \
        if (act >= 1)                                                                       \
            v = (vf)((vi)v & ~(v < zero));                                                  \
        if (act == 2) {                                                                     \
            const vf six = zero + 6.0f;                                                     \
            vi above = v > six;                                                             \
            v = (vf)(((vi)v & ~above) | ((vi)six & above));                                 \
        }                                                                                   \
        return v;                                                                           \
    }

#endif
