# Direct convolution: the plain seven-deep loop, in float32 and float64. This is the readable
# reference among the kernels and the float64 path; it is not meant to be fast.

from _epilogue cimport ACT_RELU, ACT_RELU6, ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()

ctypedef fused real:
    float
    double


cdef inline real act_value(real v, ce_act_t act) noexcept nogil:
    if act.code == ACT_RELU:
        return 0 if v < 0 else v       # NaN stays NaN
    if act.code == ACT_RELU6:
        return 0 if v < 0 else (6 if v > 6 else v)
    return v


ctypedef struct DirectJob:
    # float or double arrays (strides in elements; the last axis contiguous)
    const void* x
    const void* w
    const void* bias
    void* out
    Py_ssize_t x_img, x_chan, x_row, w_k, w_c, w_row, out_img, out_chan, out_row
    Py_ssize_t H, W, K, Kg, Cg, kh, kw, OH, OW, sh, sw, pt, pl, dh, dw
    ce_act_t act


cdef inline void direct_planes(const DirectJob* j, const real* x, const real* w,
                               const real* bias, real* out, Py_ssize_t lo,
                               Py_ssize_t hi) noexcept nogil:
    """(image, output channel) planes [lo, hi)."""
    cdef Py_ssize_t plane, n, k, g, oy, ox, c, u, v, iy, ix
    cdef real acc
    cdef const real* xc
    cdef const real* wc
    for plane in range(lo, hi):
        n = plane // j.K
        k = plane % j.K
        g = k // j.Kg
        for oy in range(j.OH):
            for ox in range(j.OW):
                acc = bias[k]
                for c in range(j.Cg):
                    xc = x + n * j.x_img + (g * j.Cg + c) * j.x_chan
                    wc = w + k * j.w_k + c * j.w_c
                    for u in range(j.kh):
                        iy = oy * j.sh - j.pt + u * j.dh
                        if iy < 0 or iy >= j.H:
                            continue
                        for v in range(j.kw):
                            ix = ox * j.sw - j.pl + v * j.dw
                            if 0 <= ix < j.W:
                                acc = acc + wc[u * j.w_row + v] * xc[iy * j.x_row + ix]
                out[n * j.out_img + k * j.out_chan + oy * j.out_row + ox] = act_value(acc, j.act)


cdef void _planes_f32(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef DirectJob* j = <DirectJob*>job
    direct_planes(j, <const float*>j.x, <const float*>j.w, <const float*>j.bias,
                  <float*>j.out, lo, hi)


cdef void _planes_f64(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef DirectJob* j = <DirectJob*>job
    direct_planes(j, <const double*>j.x, <const double*>j.w, <const double*>j.bias,
                  <double*>j.out, lo, hi)


def conv2d_direct(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] bias,
                  real[:, :, :, ::1] out, int sh, int sw, int pt, int pl, int dh, int dw,
                  int groups, ce_act_t act, int num_threads):
    """out[n, k, oy, ox] = bias[k] + sum_{c, u, v} w[k, c, u, v] * x[n, g*Cg + c, iy, ix]
    with iy = oy*sh - pt + u*dh, ix = ox*sw - pl + v*dw; taps outside the input are zero.
    The threads of the engine's pool (kernels/_pool.h) take ranges of (image, output
    channel) planes."""
    check_act(act, 1)
    cdef Py_ssize_t N = x.shape[0], K = w.shape[0]
    if N * K == 0 or out.shape[2] * out.shape[3] == 0:
        return
    cdef Py_ssize_t e = sizeof(real)
    cdef DirectJob j = DirectJob(&x[0, 0, 0, 0], &w[0, 0, 0, 0], &bias[0], &out[0, 0, 0, 0],
                                 x.strides[0] // e, x.strides[1] // e, x.strides[2] // e,
                                 w.strides[0] // e, w.strides[1] // e, w.strides[2] // e,
                                 out.strides[0] // e, out.strides[1] // e, out.strides[2] // e,
                                 x.shape[2], x.shape[3], K, K // groups, w.shape[1], w.shape[2],
                                 w.shape[3], out.shape[2], out.shape[3], sh, sw, pt, pl, dh, dw,
                                 act)
    with nogil:
        if real is float:
            ce_pool_for(num_threads, N * K, _planes_f32, &j)
        else:
            ce_pool_for(num_threads, N * K, _planes_f64, &j)
