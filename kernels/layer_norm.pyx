# Layer normalisation over the last axis, one row at a time in three passes over a row that
# stays in L1: the sum, the sums of d = x - m and d^2 (m the first pass's mean: Chan, Golub and
# LeVeque's two-pass variance, which keeps its precision however large the mean is against the
# spread), then y = (d - c) / sqrt(var + eps) * scale + bias with c = mean(d). The sums are
# float64, a vector of floats converted to two vectors of doubles at a time, so a row's
# statistics are those of the float64 reference within a few roundings whatever its length.
# The threads of the engine's pool (kernels/_pool.h) take ranges of rows; each row is computed
# whole by one thread, in one order, so a result does not depend on the thread count.
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>

    /* one register of floats (16 with AVX-512, 8 otherwise), converted as two registers of
       doubles: 16-float vectors on AVX2 went through the stack at every conversion (a 3136 x 96
       LayerNorm, ConvNeXt's first stage: 1.0 ms, 0.25 ms in registers, one thread) */
    #if defined(__AVX512F__)
    #define CE_LN_VW 16
    #else
    #define CE_LN_VW 8
    #endif
    typedef float ce_ln_vf __attribute__((vector_size(CE_LN_VW * 4)));
    typedef float ce_ln_vfu __attribute__((vector_size(CE_LN_VW * 4), aligned(4), may_alias));
    typedef double ce_ln_vd __attribute__((vector_size(CE_LN_VW * 4)));
    typedef float ce_ln_hf __attribute__((vector_size(CE_LN_VW * 2)));

    /* the lanes of v summed pairwise */
    static inline double ce_ln_hsum(ce_ln_vd v)
    {
        double t[CE_LN_VW / 2];
        __builtin_memcpy(t, &v, sizeof t);
        for (int w = CE_LN_VW / 4; w > 0; w /= 2)
            for (int i = 0; i < w; i++)
                t[i] += t[i + w];
        return t[0];
    }

    /* the floats of v as two vectors of doubles, added to lo and hi (squared if sq) */
    static inline void ce_ln_acc(ce_ln_vf v, ce_ln_vd *lo, ce_ln_vd *hi, int sq)
    {
        ce_ln_hf a, b;
        __builtin_memcpy(&a, &v, sizeof a);
        __builtin_memcpy(&b, (const char *)&v + sizeof a, sizeof b);
        ce_ln_vd da = __builtin_convertvector(a, ce_ln_vd);
        ce_ln_vd db = __builtin_convertvector(b, ce_ln_vd);
        if (sq) {
            da = da * da;
            db = db * db;
        }
        *lo += da;
        *hi += db;
    }

    /* one row of L values; mean and rstd (1 / sqrt(var + eps)) written where not NULL */
    static void ce_layer_norm_row(const float *x, float *y, ptrdiff_t L, const float *scale,
                                  const float *bias, double eps, float *mean_out,
                                  float *rstd_out)
    {
        const ce_ln_vd dz = {0};
        ce_ln_vd lo = dz, hi = dz;
        ptrdiff_t i = 0;
        double s = 0.0;
        for (; i + CE_LN_VW <= L; i += CE_LN_VW)
            ce_ln_acc(*(const ce_ln_vfu *)(x + i), &lo, &hi, 0);
        for (; i < L; i++)
            s += x[i];
        s += ce_ln_hsum(lo + hi);
        const float m = (float)(s / (double)L);
        lo = dz;
        hi = dz;
        ce_ln_vd lo2 = dz, hi2 = dz;
        double sd = 0.0, sd2 = 0.0;
        for (i = 0; i + CE_LN_VW <= L; i += CE_LN_VW) {
            ce_ln_vf d = *(const ce_ln_vfu *)(x + i) - m;
            ce_ln_acc(d, &lo, &hi, 0);
            ce_ln_acc(d, &lo2, &hi2, 1);
        }
        for (; i < L; i++) {
            double d = (double)(x[i] - m);
            sd += d;
            sd2 += d * d;
        }
        sd += ce_ln_hsum(lo + hi);
        sd2 += ce_ln_hsum(lo2 + hi2);
        double c = sd / (double)L;
        double var = sd2 / (double)L - c * c;
        if (var < 0.0)
            var = 0.0;
        /* epsilon 0 and no spread: 1 / 0 = inf, then 0 * inf = NaN, as ONNX's formula gives */
        const float rstd = (float)(1.0 / sqrt(var + eps));
        const float cf = (float)c;
        if (mean_out)
            *mean_out = (float)((double)m + c);
        if (rstd_out)
            *rstd_out = rstd;
        for (i = 0; i + CE_LN_VW <= L; i += CE_LN_VW) {
            ce_ln_vf v = ((*(const ce_ln_vfu *)(x + i) - m) - cf) * rstd;
            v = v * *(const ce_ln_vfu *)(scale + i);
            if (bias)
                v = v + *(const ce_ln_vfu *)(bias + i);
            *(ce_ln_vfu *)(y + i) = v;
        }
        for (; i < L; i++) {
            float v = ((x[i] - m) - cf) * rstd * scale[i];
            y[i] = bias ? v + bias[i] : v;
        }
    }
    """
    void ce_layer_norm_row(const float *x, float *y, Py_ssize_t L, const float *scale,
                           const float *bias, double eps, float *mean_out,
                           float *rstd_out) nogil


def f32_layer_norm_rows(const float[:, ::1] x, const float[::1] scale, bias,
                        float[:, ::1] out, double eps, mean, rstd, int num_threads):
    """out[r] = (x[r] - mean(x[r])) / sqrt(var(x[r]) + eps) * scale + bias for each row r
    (scale and bias: one value per column; bias may be None; out may be x). mean and rstd:
    None, or float32 arrays of one value per row that receive the row's mean and
    1 / sqrt(var + eps)."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], r
    if out.shape[0] != R or out.shape[1] != L or scale.shape[0] != L:
        raise ValueError(f"x {tuple(x.shape)[:2]}, scale ({scale.shape[0]},) and out "
                         f"{tuple(out.shape)[:2]} do not fit")
    cdef const float[::1] b
    cdef const float* bp = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != L:
            raise ValueError(f"bias must hold {L} values, got {b.shape[0]}")
        bp = &b[0]
    cdef float[::1] mv, rv
    cdef float* mp = NULL
    cdef float* rp = NULL
    if mean is not None:
        mv = mean
        if mv.shape[0] != R:
            raise ValueError(f"mean must hold {R} values, got {mv.shape[0]}")
        mp = &mv[0] if R else NULL
    if rstd is not None:
        rv = rstd
        if rv.shape[0] != R:
            raise ValueError(f"rstd must hold {R} values, got {rv.shape[0]}")
        rp = &rv[0] if R else NULL
    if R == 0 or L == 0:
        return
    # rows may lie apart (views of a larger tensor)
    cdef RowsJob j = RowsJob(&x[0, 0], x.strides[0] // 4, &out[0, 0], out.strides[0] // 4, L,
                             &scale[0], bp, eps, mp, rp)
    with nogil:
        ce_pool_for(num_threads, R, _norm_rows, &j)


ctypedef struct RowsJob:
    const float* x
    Py_ssize_t x_row
    float* out
    Py_ssize_t out_row, L
    const float* scale
    const float* bias
    double eps
    float* mean
    float* rstd


cdef void _norm_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Rows [lo, hi)."""
    cdef RowsJob* j = <RowsJob*>job
    cdef Py_ssize_t r
    for r in range(lo, hi):
        ce_layer_norm_row(j.x + r * j.x_row, j.out + r * j.out_row, j.L, j.scale, j.bias, j.eps,
                          (j.mean + r) if j.mean != NULL else NULL,
                          (j.rstd + r) if j.rstd != NULL else NULL)
