# The direct sum's NaN and infinity for the algorithms whose arithmetic would spread a
# non-finite input further than direct convolution does (Winograd's transforms, FFT, separable
# of rank > 1): they compute with such inputs taken as zeros, and f32_conv2d_fix_nonfinite then
# gives exactly the outputs that read one the value the direct sum has.
from cython.parallel cimport prange
from libc.math cimport NAN, isfinite

import numpy as np

from _epilogue cimport activate, ce_act_t, check_act
from _nonfinite cimport any_nonfinite, is_nonfinite


cdef inline Py_ssize_t first_output(Py_ssize_t i, Py_ssize_t pad, Py_ssize_t tap,
                                    Py_ssize_t s, Py_ssize_t d, Py_ssize_t n) noexcept nogil:
    """The output index o < n whose tap `tap` reads input index i (i = o*s - pad + tap*d),
    or -1."""
    cdef Py_ssize_t t = i + pad - tap * d
    if s != 1:      # no integer division on the stride-1 paths that use this
        if t < 0 or t % s:
            return -1
        t = t // s
    return t if 0 <= t < n else -1


ctypedef struct Window:
    # the convolution's geometry, for reached()
    Py_ssize_t pt, pl, sh, sw, dh, dw, OH, OW


cdef inline Py_ssize_t reached(const Window* q, Py_ssize_t iy, Py_ssize_t ix, Py_ssize_t u,
                               Py_ssize_t v) noexcept nogil:
    """The flat output index whose tap (u, v) reads input (iy, ix), or -1."""
    cdef Py_ssize_t oy = first_output(iy, q.pt, u, q.sh, q.dh, q.OH)
    if oy < 0:
        return -1
    cdef Py_ssize_t ox = first_output(ix, q.pl, v, q.sw, q.dw, q.OW)
    return -1 if ox < 0 else oy * q.OW + ox


def f32_conv2d_fix_nonfinite(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w,
                             float[:, :, :, ::1] out, int sh, int sw, int pt, int pl, int dh,
                             int dw, int groups, ce_act_t act, int num_threads):
    """Give out the NaNs and infinities of the direct sum, where out holds the convolution
    (bias and activation act included) of x with its NaNs and infinities taken as zeros.

    The direct sum out[n, k, oy, ox] = act(b[k] + sum w[k, c, u, v] x[n, g*Cg + c, iy, ix])
    (iy = oy*sh - pt + u*dh, ix = ox*sw - pl + v*dw, taps outside x omitted, as
    conv_direct.conv2d_direct) is, for finite weights, non-finite exactly where a tap reads a
    non-finite input: NaN if one reads a NaN, or an infinity times a zero weight, or if the
    infinite products have both signs; else the infinity of their sign. Its finite part then
    does not matter, so the finite out plus the products of the non-finite inputs alone is that
    value (Inf + finite = Inf, Inf - Inf = NaN, NaN + anything = NaN), and act of it the
    output (applied once, to the outputs the products made non-finite). Other outputs are
    left as they are.

    A NaN input makes every output of its group that reads it NaN whatever the weights: those
    are marked per (image, group) position, so a NaN-filled input costs a pass over the planes,
    not a direct convolution. Each infinity is added by every output channel of its group (one
    multiply-add per tap): an input full of infinities costs about a direct convolution's
    multiply-adds. Work is split over (image, output channel) planes, each written by one
    thread in one order: results do not depend on the thread count.
    Returns the number of non-finite values in x.
    """
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], Cg = w.shape[1], kh = w.shape[2], kw = w.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    if groups < 1 or Cg * groups != C or K % groups:
        raise ValueError(f"weight {tuple(w.shape)[:4]} and groups ({groups}) do not fit "
                         f"{C} input channels")
    if out.shape[0] != N or out.shape[1] != K:
        raise ValueError("x, weight and out shapes do not agree")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1:
        raise ValueError("strides and dilations must be positive")
    cdef Py_ssize_t Kg = K // groups, HW = H * W, OHW = OH * OW, NG = N * groups
    if N == 0 or C == 0 or K == 0 or HW == 0 or OHW == 0:
        return 0
    # per (image, group): NaN inputs (any channel) and the outputs they reach, the number of
    # NaNs and infinities, and the infinities as (offset in the image, channel in the group,
    # row, column)
    nan_in_a = np.zeros((NG, HW), np.uint8)
    nan_out_a = np.zeros((NG, OHW), np.uint8)
    counts_a = np.zeros((NG, 2), np.intp)
    cdef unsigned char[:, ::1] nan_in = nan_in_a
    cdef unsigned char[:, ::1] nan_out = nan_out_a
    cdef Py_ssize_t[:, ::1] counts = counts_a
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef const float* wp = &w[0, 0, 0, 0]
    cdef float* yp = &out[0, 0, 0, 0]
    cdef Py_ssize_t it, ng, n, g, c, i, iy, ix, u, v, o, e, k, cl
    cdef Window q
    q.pt, q.pl, q.sh, q.sw, q.dh, q.dw, q.OH, q.OW = pt, pl, sh, sw, dh, dw, OH, OW
    cdef const float* plane
    cdef float* yk
    cdef const float* wk
    cdef float val
    cdef int nt_groups = <int>max(1, min(num_threads, NG))
    cdef int nt_planes = <int>max(1, min(num_threads, N * K))
    with nogil:
        for ng in prange(NG, num_threads=nt_groups, schedule="static"):
            n = ng // groups
            g = ng % groups
            for c in range(g * Cg, (g + 1) * Cg):
                plane = xp + (n * C + c) * HW
                if not any_nonfinite(plane, HW):
                    continue
                for i in range(HW):
                    if plane[i] != plane[i]:
                        nan_in[ng, i] = 1
                        counts[ng, 0] += 1
                    elif is_nonfinite(plane[i]):
                        counts[ng, 1] += 1
    found = int(counts_a.sum())
    if found == 0:
        return 0
    offsets_a = np.zeros(NG + 1, np.intp)
    np.cumsum(counts_a[:, 1], out=offsets_a[1:])
    inf_at_a = np.empty((max(1, offsets_a[NG]), 4), np.intp)
    cdef Py_ssize_t[::1] offsets = offsets_a
    cdef Py_ssize_t[:, ::1] inf_at = inf_at_a
    with nogil:
        for ng in prange(NG, num_threads=nt_groups, schedule="static"):
            n = ng // groups
            g = ng % groups
            e = offsets[ng]
            if e < offsets[ng + 1]:
                for c in range(g * Cg, (g + 1) * Cg):
                    plane = xp + (n * C + c) * HW
                    if not any_nonfinite(plane, HW):
                        continue
                    for i in range(HW):
                        if plane[i] == plane[i] and is_nonfinite(plane[i]):
                            inf_at[e, 0] = c * HW + i
                            inf_at[e, 1] = c - g * Cg
                            inf_at[e, 2] = i // W
                            inf_at[e, 3] = i % W
                            e = e + 1
            if counts[ng, 0]:
                for i in range(HW):
                    if not nan_in[ng, i]:
                        continue
                    iy = i // W
                    ix = i - iy * W
                    for u in range(kh):
                        for v in range(kw):
                            o = reached(&q, iy, ix, u, v)
                            if o >= 0:
                                nan_out[ng, o] = 1
        for it in prange(N * K, num_threads=nt_planes, schedule="static"):
            n = it // K
            k = it % K
            g = k // Kg
            ng = n * groups + g
            yk = yp + it * OHW
            wk = wp + k * Cg * kh * kw
            # the infinite products, then the activation of the outputs they reached
            for e in range(offsets[ng], offsets[ng + 1]):
                val = xp[n * C * HW + inf_at[e, 0]]
                cl = inf_at[e, 1]
                iy = inf_at[e, 2]
                ix = inf_at[e, 3]
                for u in range(kh):
                    for v in range(kw):
                        o = reached(&q, iy, ix, u, v)
                        if o >= 0:
                            yk[o] = yk[o] + val * wk[(cl * kh + u) * kw + v]
            if act.code != 0 and (offsets[ng + 1] - offsets[ng]) * kh * kw > OHW:
                # many infinities: the whole plane is less work (the outputs they reached are
                # the non-finite ones; the rest are activated already)
                for i in range(OHW):
                    if not isfinite(yk[i]):
                        yk[i] = activate(yk[i], act)
            elif act.code != 0:
                for e in range(offsets[ng], offsets[ng + 1]):
                    iy = inf_at[e, 2]
                    ix = inf_at[e, 3]
                    for u in range(kh):
                        for v in range(kw):
                            o = reached(&q, iy, ix, u, v)
                            if o >= 0 and not isfinite(yk[o]):
                                # once: an output several infinities reach is activated at
                                # the first (sigmoid(inf) = 1 is finite, and not a fixed point)
                                yk[o] = activate(yk[o], act)
            if counts[ng, 0]:
                for i in range(OHW):
                    if nan_out[ng, i]:
                        yk[i] = NAN
    return found
