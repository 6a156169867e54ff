# The activations of kernels/_vec_act.h (the convolutions' fused output steps) as one pass
# over memory, on vectors: Sigmoid, Tanh, SiLU, GELU, Mish, Softplus, Elu, LeakyRelu,
# HardSigmoid, HardSwish, Clip. The threads of the engine's pool (kernels/_pool.h) take ranges
# of elements in whole vectors (the last vector of the array is done on a padded copy), so a
# result does not depend on the thread count. NumPy's float32 exp is vectorised too, but each
# formula then takes four to twenty passes over the tensor; scipy's erfc is scalar.
from _epilogue cimport ce_act_t, check_act, no_act
cimport numpy as cnp
from _arrays cimport f32_arg, f32_array
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()
cnp.import_array()     # the NumPy C API f32_arg calls

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


def f32_activation(x, y, ce_act_t act, int num_threads):
    """y = act(x) elementwise (act: engine/ops/activation.py kernel_act), x and y flat,
    C-contiguous, of one length (y may be x)."""
    cdef f32_array xv = f32_arg(x, 1, "x", False)
    cdef f32_array yv = f32_arg(y, 1, "y", True)
    check_act(act)
    cdef long n = xv.shape[0]
    if yv.shape[0] != n:
        raise ValueError(f"f32_activation: x has {n} elements, y {y.shape[0]}")
    if n == 0:
        return
    cdef ElementsJob j = ElementsJob(xv.p, yv.p, n, act)
    with nogil:
        ce_pool_for(num_threads, (n + CHUNK - 1) // CHUNK, _act_chunks, &j)


ctypedef struct ElementsJob:
    const float* x
    float* y
    long n
    ce_act_t act


cdef void _act_chunks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Chunks [lo, hi) of CHUNK elements."""
    cdef ElementsJob* j = <ElementsJob*>job
    ce_act_range(j.x, j.y, lo * CHUNK, min(j.n, hi * CHUNK), j.act)


# Planes (n, c) of x and y, each L floats; images and channels may lie apart (views)
ctypedef struct PlanesJob:
    const float* x
    float* y
    Py_ssize_t C, L, x_img, x_chan, y_img, y_chan
    const float* a              # a value per channel: the scale or the slope
    const float* b              # and the shift
    ce_act_t act


cdef PlanesJob planes_job(const float[:, :, ::1] x, float[:, :, ::1] y, const float* a,
                          const float* b, ce_act_t act):
    return PlanesJob(&x[0, 0, 0], &y[0, 0, 0], x.shape[1], x.shape[2], x.strides[0] // 4,
                     x.strides[1] // 4, y.strides[0] // 4, y.strides[1] // 4, a, b, act)


cdef void _scale_shift_planes(void* job, int thread, Py_ssize_t lo,
                              Py_ssize_t hi) noexcept nogil:
    cdef PlanesJob* j = <PlanesJob*>job
    cdef Py_ssize_t p, n, c
    for p in range(lo, hi):
        n, c = p // j.C, p % j.C
        ce_scale_shift_row(j.x + n * j.x_img + c * j.x_chan, j.y + n * j.y_img + c * j.y_chan,
                           j.L, j.a[c], j.b[c], j.act)


cdef void _prelu_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef PlanesJob* j = <PlanesJob*>job
    cdef Py_ssize_t p, n, c
    for p in range(lo, hi):
        n, c = p // j.C, p % j.C
        ce_prelu_row(j.x + n * j.x_img + c * j.x_chan, j.y + n * j.y_img + c * j.y_chan, j.L,
                     j.a[c])


def f32_scale_shift(x, scale, shift, y, ce_act_t act, int num_threads):
    """y[n, c, :] = act(x[n, c, :] * scale[c] + shift[c]) in one pass (an inference
    BatchNormalization and the activation fused after it). y may be x. Planes go to threads
    whole, so a value does not depend on the thread count."""
    cdef f32_array xv = f32_arg(x, 3, "x", False)
    cdef f32_array scalev = f32_arg(scale, 1, "scale", False)
    cdef f32_array shiftv = f32_arg(shift, 1, "shift", False)
    cdef f32_array yv = f32_arg(y, 3, "y", True)
    check_act(act)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], L = xv.shape[2], p
    if yv.shape[0] != N or yv.shape[1] != C or yv.shape[2] != L or scalev.shape[0] != C \
            or shiftv.shape[0] != C:
        raise ValueError("f32_scale_shift: shapes do not match")
    if N * C == 0 or L == 0:
        return
    cdef PlanesJob j = planes_job(x, y, scalev.p, shiftv.p, act)
    with nogil:
        ce_pool_for(num_threads, N * C, _scale_shift_planes, &j)


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


def f32_prelu_planes(x, slope, y, int num_threads):
    """y[n, c, :] = x[n, c, :] where it is not negative, slope[c] times it where it is (PRelu
    with one slope per channel), in one pass; y may be x. Planes go to threads whole."""
    cdef f32_array xv = f32_arg(x, 3, "x", False)
    cdef f32_array slopev = f32_arg(slope, 1, "slope", False)
    cdef f32_array yv = f32_arg(y, 3, "y", True)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], L = xv.shape[2], p
    if yv.shape[0] != N or yv.shape[1] != C or yv.shape[2] != L or slopev.shape[0] != C:
        raise ValueError(f"f32_prelu_planes: x {x.shape[:3]}, slope ({slope.shape[0]},) "
                         f"and y {y.shape[:3]} do not match")
    if N * C == 0 or L == 0:
        return
    cdef PlanesJob j = planes_job(x, y, slopev.p, NULL, no_act())
    with nogil:
        ce_pool_for(num_threads, N * C, _prelu_planes, &j)
