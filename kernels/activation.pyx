# The activations of kernels/_vec_act.h (the convolutions' fused output steps) as one pass
# over memory, on vectors: Sigmoid, Tanh, SiLU, GELU, Mish, Softplus, Elu, LeakyRelu,
# HardSigmoid, HardSwish, Clip. Each thread takes a contiguous range of elements
# in whole vectors (the last vector of the array is done on a padded copy), so a result does
# not depend on the thread count. NumPy's float32 exp is vectorised too, but each formula then
# takes four to twenty passes over the tensor; scipy's erfc is scalar.
from cython.parallel cimport prange

from _epilogue cimport ce_act_t, check_act

cdef extern from *:
    """
    #include "_vec_act.h"

    /* elements [start, stop) of x into y; stop - start a multiple of the vector width
     * unless stop is the end of the array */
    static void ce_act_range(const float *x, float *y, long start, long stop, ce_act_t act)
    {
        long i = start + (long)ce_act_vec_map(x + start, y + start, stop - start, 1.0f, 0.0f,
                                              act);
        if (i < stop) {
            float pad[CE_ACT_VW] = {0};
            __builtin_memcpy(pad, x + i, (size_t)(stop - i) * sizeof(float));
            ce_act_vf v;
            __builtin_memcpy(&v, pad, sizeof v);
            v = ce_act_vec(v, act);
            __builtin_memcpy(pad, &v, sizeof v);
            __builtin_memcpy(y + i, pad, (size_t)(stop - i) * sizeof(float));
        }
    }

    /* y[i] = act(x[i] * s + t) for i < n (y may be x) */
    static void ce_scale_shift_row(const float *x, float *y, long n, float s, float t,
                                   ce_act_t act)
    {
        long i = (long)ce_act_vec_map(x, y, n, s, t, act);
        for (; i < n; i++)
            y[i] = ce_act_scalar(x[i] * s + t, act);
    }
    """
    void ce_act_range(const float *x, float *y, long start, long stop, ce_act_t act) nogil
    void ce_scale_shift_row(const float *x, float *y, long n, float s, float t,
                            ce_act_t act) nogil

# elements per work item: whole vectors, large enough that scheduling costs nothing
cdef long CHUNK = 16384


def f32_activation(const float[::1] x, float[::1] y, ce_act_t act, int num_threads):
    """y = act(x) elementwise (act: engine/ops/activation.py kernel_act), x and y flat,
    C-contiguous, of one length (y may be x)."""
    check_act(act)
    cdef long n = x.shape[0]
    cdef long items = (n + CHUNK - 1) // CHUNK
    cdef long k
    if y.shape[0] != n:
        raise ValueError(f"f32_activation: x has {n} elements, y {y.shape[0]}")
    if n == 0:
        return
    if num_threads < 1 or items < 2:
        num_threads = 1
    with nogil:
        for k in prange(items, schedule="static", num_threads=num_threads):
            ce_act_range(&x[0], &y[0], k * CHUNK, min(n, (k + 1) * CHUNK), act)


def f32_scale_shift(const float[:, :, ::1] x, const float[::1] scale, const float[::1] shift,
                    float[:, :, ::1] y, ce_act_t act, int num_threads):
    """y[n, c, :] = act(x[n, c, :] * scale[c] + shift[c]) in one pass (an inference
    BatchNormalization and the activation fused after it). y may be x. Planes go to threads
    whole, so a value does not depend on the thread count."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], p
    if y.shape[0] != N or y.shape[1] != C or y.shape[2] != L or scale.shape[0] != C \
            or shift.shape[0] != C:
        raise ValueError("f32_scale_shift: shapes do not match")
    if N * C == 0 or L == 0:
        return
    num_threads = <int>max(1, min(num_threads, N * C))
    for p in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        ce_scale_shift_row(&x[p // C, p % C, 0], &y[p // C, p % C, 0], L, scale[p % C],
                           shift[p % C], act)


cdef extern from *:
    """
    /* y[i] = x[i] < 0 ? s * x[i] : x[i] for i < n (y may be x); NaN stays NaN */
    static void ce_prelu_row(const float *x, float *y, long n, float s)
    {
        long i = 0;
        const ce_act_vf zero = {0};
        for (; i + CE_ACT_VW <= n; i += CE_ACT_VW) {
            ce_act_vf v = *(const ce_act_vfu *)(x + i);
            *(ce_act_vfu *)(y + i) = ce_act_select(v < zero, v, v * s);
        }
        for (; i < n; i++)
            y[i] = x[i] < 0 ? s * x[i] : x[i];
    }
    """
    void ce_prelu_row(const float *x, float *y, long n, float s) nogil


def f32_prelu_planes(const float[:, :, ::1] x, const float[::1] slope, float[:, :, ::1] y,
                     int num_threads):
    """y[n, c, :] = x[n, c, :] where it is not negative, slope[c] times it where it is (PRelu
    with one slope per channel), in one pass; y may be x. Planes go to threads whole."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], p
    if y.shape[0] != N or y.shape[1] != C or y.shape[2] != L or slope.shape[0] != C:
        raise ValueError(f"f32_prelu_planes: x {tuple(x.shape)[:3]}, slope ({slope.shape[0]},) "
                         f"and y {tuple(y.shape)[:3]} do not match")
    if N * C == 0 or L == 0:
        return
    num_threads = <int>max(1, min(num_threads, N * C))
    for p in prange(N * C, nogil=True, num_threads=num_threads, schedule="static"):
        ce_prelu_row(&x[p // C, p % C, 0], &y[p // C, p % C, 0], L, slope[p % C])
