# Direct convolution: the plain seven-deep loop, in float32 and float64. This is the readable
# reference among the kernels and the float64 path; it is not meant to be fast.
from cython.parallel cimport prange

from _epilogue cimport ACT_RELU, ACT_RELU6, ce_act_t, check_act

ctypedef fused real:
    float
    double


cdef inline real act_value(real v, ce_act_t act) noexcept nogil:
    if act.code == ACT_RELU:
        return 0 if v < 0 else v       # NaN stays NaN
    if act.code == ACT_RELU6:
        return 0 if v < 0 else (6 if v > 6 else v)
    return v


def conv2d_direct(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] bias,
                  real[:, :, :, ::1] out, int sh, int sw, int pt, int pl, int dh, int dw,
                  int groups, ce_act_t act, int num_threads):
    """out[n, k, oy, ox] = bias[k] + sum_{c, u, v} w[k, c, u, v] * x[n, g*Cg + c, iy, ix]
    with iy = oy*sh - pt + u*dh, ix = ox*sw - pl + v*dw; taps outside the input are zero."""
    check_act(act, 1)
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], Cg = w.shape[1], kh = w.shape[2], kw = w.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3], Kg = K // groups
    cdef Py_ssize_t plane, n, k, g, oy, ox, c, u, v, iy, ix
    cdef real acc
    if num_threads > N * K:
        num_threads = <int>max(1, N * K)
    for plane in prange(N * K, nogil=True, num_threads=num_threads, schedule="static"):
        n = plane // K
        k = plane % K
        g = k // Kg
        for oy in range(OH):
            for ox in range(OW):
                acc = bias[k]
                for c in range(Cg):
                    for u in range(kh):
                        iy = oy * sh - pt + u * dh
                        if iy < 0 or iy >= H:
                            continue
                        for v in range(kw):
                            ix = ox * sw - pl + v * dw
                            if 0 <= ix < W:
                                acc = acc + w[k, c, u, v] * x[n, g * Cg + c, iy, ix]
                out[n, k, oy, ox] = act_value(acc, act)
