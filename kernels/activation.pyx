# Activations with an exponential (Sigmoid, SiLU, exact GELU), and HardSwish, in one pass over memory, on
# vectors, with the exp of kernels/_vexp.h. Each thread takes a contiguous range of elements
# in whole vectors (the last vector of the array is done on a padded copy), so a result does
# not depend on the thread count. NumPy's float32 exp is vectorised too, but each formula then
# takes four to twenty passes over the tensor; scipy's erfc is scalar.
from cython.parallel cimport prange

cdef extern from *:
    """
    #include "_vexp.h"

    /* 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: e = e^-|x| never overflows, and
     * sigmoid(x) keeps its value (down to the denormals) where x sigmoid(x) is still normal */
    static inline ce_act_vf ce_act_sigmoid(ce_act_vf x)
    {
        const ce_act_vf zero = {0};
        ce_act_vf e = ce_act_exp(ce_act_select(x > zero, x, -x));
        ce_act_vf s = 1.0f / (1.0f + e);
        return ce_act_select(x < zero, s, e * s);
    }

    /* Phi(x) = erfc(-x / sqrt 2) / 2, with erfc(z) for z >= 0 by the Chebyshev fit of
     * Numerical Recipes (erfcc: t e^(-z^2 + P(t)), t = 1 / (1 + z/2), fractional error below
     * 1.2e-7 for every z >= 0), and 1 - erfc(z) / 2 for x > 0: no cancellation on either side.
     * Near 0 (|z| < 1/2) Phi = 1/2 + erf(x / sqrt 2) / 2 by erf's Taylor series to z^15
     * (remainder below 3e-10 relative), where the fit's 1.2e-7 would be 2 ulp of Phi. */
    static inline ce_act_vf ce_act_gelu(ce_act_vf x)
    {
        const ce_act_vf zero = {0};
        ce_act_vf z = ce_act_select(x < zero, x, -x) * 0.70710678118654752f;
        ce_act_vf t = 1.0f / (1.0f + 0.5f * z);
        ce_act_vf p = zero + 0.17087277f;
        p = p * t - 0.82215223f;
        p = p * t + 1.48851587f;
        p = p * t - 1.13520398f;
        p = p * t + 0.27886807f;
        p = p * t - 0.18628806f;
        p = p * t + 0.09678418f;
        p = p * t + 0.37409196f;
        p = p * t + 1.00002368f;
        p = p * t - 1.26551223f;
        ce_act_vf half_erfc = 0.5f * t * ce_act_exp(p - z * z);
        ce_act_vf phi = ce_act_select(x > zero, half_erfc, 1.0f - half_erfc);
        /* erf(s) / 2 = s (1 - s^2/3 + s^4/10 - s^6/42 + s^8/216 - s^10/1320 + s^12/9360
         * - s^14/75600) / sqrt(pi), s = x / sqrt 2 */
        ce_act_vf s = x * 0.70710678118654752f, s2 = s * s;
        ce_act_vf q = zero - 1.0f / 75600.0f;
        q = q * s2 + 1.0f / 9360.0f;
        q = q * s2 - 1.0f / 1320.0f;
        q = q * s2 + 1.0f / 216.0f;
        q = q * s2 - 1.0f / 42.0f;
        q = q * s2 + 1.0f / 10.0f;
        q = q * s2 - 1.0f / 3.0f;
        q = q * s2 + 1.0f;
        ce_act_vf near = 0.5f + (s * 0.56418958354775629f) * q;
        phi = ce_act_select(s2 < 0.25f, phi, near);
        return x * phi;
    }

    /* x min(max(x/6 + 1/2, 0), 1), through the comparison masks: a NaN stays NaN */
    static inline ce_act_vf ce_act_hardswish(ce_act_vf x)
    {
        const ce_act_vf zero = {0};
        ce_act_vf t = x * (1.0f / 6.0f) + 0.5f;
        t = ce_act_select(t < zero, t, zero);
        t = ce_act_select(t > zero + 1.0f, t, zero + 1.0f);
        return x * t;
    }

    enum { CE_ACT_SIGMOID = 0, CE_ACT_SILU = 1, CE_ACT_GELU = 2, CE_ACT_HARDSWISH = 3 };

    static inline ce_act_vf ce_act_apply(ce_act_vf x, int kind)
    {
        if (kind == CE_ACT_SIGMOID)
            return ce_act_sigmoid(x);
        if (kind == CE_ACT_SILU)
            return x * ce_act_sigmoid(x);
        if (kind == CE_ACT_HARDSWISH)
            return ce_act_hardswish(x);
        return ce_act_gelu(x);
    }

    /* elements [start, stop) of x into y; stop - start a multiple of the vector width
     * unless stop is the end of the array */
    static void ce_act_range(const float *x, float *y, long start, long stop, long n, int kind)
    {
        long i = start;
        for (; i + CE_ACT_VW <= stop; i += CE_ACT_VW)
            *(ce_act_vfu *)(y + i) = ce_act_apply(*(const ce_act_vfu *)(x + i), kind);
        if (i < stop) {
            float pad[CE_ACT_VW] = {0};
            __builtin_memcpy(pad, x + i, (size_t)(stop - i) * sizeof(float));
            ce_act_vf v;
            __builtin_memcpy(&v, pad, sizeof v);
            v = ce_act_apply(v, kind);
            __builtin_memcpy(pad, &v, sizeof v);
            __builtin_memcpy(y + i, pad, (size_t)(stop - i) * sizeof(float));
        }
    }
    """
    int CE_ACT_VW
    void ce_act_range(const float *x, float *y, long start, long stop, long n, int kind) nogil

SIGMOID, SILU, GELU, HARDSWISH = 0, 1, 2, 3

# elements per work item: whole vectors, large enough that scheduling costs nothing
cdef long CHUNK = 16384


def f32_activation(const float[::1] x, float[::1] y, int kind, int num_threads):
    """y = activation(x) elementwise (kind: SIGMOID, SILU, GELU or HARDSWISH), x and y flat, C-contiguous,
    of one length (y may be x). Checked by the caller."""
    cdef long n = x.shape[0]
    cdef long items = (n + CHUNK - 1) // CHUNK
    cdef long k
    if n == 0:
        return
    if num_threads < 1 or items < 2:
        num_threads = 1
    with nogil:
        for k in prange(items, schedule="static", num_threads=num_threads):
            ce_act_range(&x[0], &y[0], k * CHUNK, min(n, (k + 1) * CHUNK), n, kind)
