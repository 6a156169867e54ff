# The direct sum's NaN and infinity for the algorithms whose arithmetic would spread a
# non-finite input further than direct convolution does (Winograd's transforms, FFT, separable
# of rank > 1): they compute with such inputs taken as zeros, and f32_conv2d_fix_nonfinite then
# gives exactly the outputs that read one the value the direct sum has.
from libc.math cimport NAN, isfinite

import numpy as np

from _epilogue cimport activate, ce_act_t, check_act
from _nonfinite cimport any_nonfinite, is_nonfinite
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()


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


ctypedef struct Planes:
    # the tensors' sizes: images, channels, groups, channels per group, input rows and
    # columns (HW = H * W), output channels, taps
    Py_ssize_t N, C, groups, Cg, H, W, HW, K, Kg, kh, kw, OHW


cdef inline Py_ssize_t reached(const Window* q, Py_ssize_t iy, Py_ssize_t ix, Py_ssize_t u,
                               Py_ssize_t v) noexcept nogil:
    """The flat output index whose tap (u, v) reads input (iy, ix), or -1."""
    cdef Py_ssize_t oy = first_output(iy, q.pt, u, q.sh, q.dh, q.OH)
    if oy < 0:
        return -1
    cdef Py_ssize_t ox = first_output(ix, q.pl, v, q.sw, q.dw, q.OW)
    return -1 if ox < 0 else oy * q.OW + ox


# ---------------------------------------------------------------------------- phases, each
# for one (image, group) or one (image, output channel) plane

cdef void count_group(const Planes* p, const float* xp, Py_ssize_t ng, unsigned char* nan_in,
                      Py_ssize_t* counts) noexcept nogil:
    """Phase 1: mark the group's NaN positions in nan_in[HW] (any channel) and count its
    NaNs (counts[0]) and infinities (counts[1])."""
    cdef Py_ssize_t n = ng // p.groups, g = ng % p.groups, c, i
    cdef const float* plane
    for c in range(g * p.Cg, (g + 1) * p.Cg):
        plane = xp + (n * p.C + c) * p.HW
        if not any_nonfinite(plane, p.HW):
            continue
        for i in range(p.HW):
            if plane[i] != plane[i]:
                nan_in[i] = 1
                counts[0] += 1
            elif is_nonfinite(plane[i]):
                counts[1] += 1


cdef void list_infinities(const Planes* p, const float* xp, Py_ssize_t ng, Py_ssize_t e,
                          Py_ssize_t* inf_at) noexcept nogil:
    """Phase 2a: the group's infinities from row e of inf_at[:, 4] on, each as (offset in
    the image, channel in the group, row, column)."""
    cdef Py_ssize_t n = ng // p.groups, g = ng % p.groups, c, i
    cdef const float* plane
    for c in range(g * p.Cg, (g + 1) * p.Cg):
        plane = xp + (n * p.C + c) * p.HW
        if not any_nonfinite(plane, p.HW):
            continue
        for i in range(p.HW):
            if plane[i] == plane[i] and is_nonfinite(plane[i]):
                inf_at[4 * e] = c * p.HW + i
                inf_at[4 * e + 1] = c - g * p.Cg
                inf_at[4 * e + 2] = i // p.W
                inf_at[4 * e + 3] = i % p.W
                e = e + 1


cdef void mark_nan_outputs(const Planes* p, const Window* q, const unsigned char* nan_in,
                           unsigned char* nan_out) noexcept nogil:
    """Phase 2b: the outputs of one group that read a NaN (nan_out[OHW])."""
    cdef Py_ssize_t i, iy, ix, u, v, o
    for i in range(p.HW):
        if not nan_in[i]:
            continue
        iy = i // p.W
        ix = i - iy * p.W
        for u in range(p.kh):
            for v in range(p.kw):
                o = reached(q, iy, ix, u, v)
                if o >= 0:
                    nan_out[o] = 1


cdef void add_infinite_products(const Planes* p, const Window* q, const float* xn,
                                const float* wk, const Py_ssize_t* inf_at, Py_ssize_t first,
                                Py_ssize_t end, float* yk) noexcept nogil:
    """Phase 3: add to output plane yk the products of image xn's infinities first..end-1
    (rows of inf_at) with output channel wk's weights."""
    cdef Py_ssize_t e, cl, iy, ix, u, v, o
    cdef float val
    for e in range(first, end):
        val = xn[inf_at[4 * e]]
        cl = inf_at[4 * e + 1]
        iy = inf_at[4 * e + 2]
        ix = inf_at[4 * e + 3]
        for u in range(p.kh):
            for v in range(p.kw):
                o = reached(q, iy, ix, u, v)
                if o >= 0:
                    yk[o] = yk[o] + val * wk[(cl * p.kh + u) * p.kw + v]


cdef void activate_reached(const Planes* p, const Window* q, const Py_ssize_t* inf_at,
                           Py_ssize_t first, Py_ssize_t end, ce_act_t act,
                           float* yk) noexcept nogil:
    """Phase 4: apply act once to the outputs of plane yk that infinities first..end-1 made
    non-finite (the others are activated already)."""
    cdef Py_ssize_t e, i, iy, ix, u, v, o
    if (end - first) * p.kh * p.kw > p.OHW:
        # many infinities: the whole plane is less work
        for i in range(p.OHW):
            if not isfinite(yk[i]):
                yk[i] = activate(yk[i], act)
        return
    for e in range(first, end):
        iy = inf_at[4 * e + 2]
        ix = inf_at[4 * e + 3]
        for u in range(p.kh):
            for v in range(p.kw):
                o = reached(q, iy, ix, u, v)
                if o >= 0 and not isfinite(yk[o]):
                    # once: an output several infinities reach is activated at the first
                    # (sigmoid(inf) = 1 is finite, and not a fixed point)
                    yk[o] = activate(yk[o], act)


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
    cdef Py_ssize_t NG = N * groups
    if N == 0 or C == 0 or K == 0 or H * W == 0 or OH * OW == 0:
        return 0
    cdef Planes p
    p.N, p.C, p.groups, p.Cg, p.H, p.W, p.HW = N, C, groups, Cg, H, W, H * W
    p.K, p.Kg, p.kh, p.kw, p.OHW = K, K // groups, kh, kw, OH * OW
    cdef Window q
    q.pt, q.pl, q.sh, q.sw, q.dh, q.dw, q.OH, q.OW = pt, pl, sh, sw, dh, dw, OH, OW
    # per (image, group): NaN inputs (any channel) and the outputs they reach, the number of
    # NaNs and infinities, and where the infinities are
    nan_in_a = np.zeros((NG, p.HW), np.uint8)
    nan_out_a = np.zeros((NG, p.OHW), np.uint8)
    counts_a = np.zeros((NG, 2), np.intp)
    cdef unsigned char[:, ::1] nan_in = nan_in_a
    cdef unsigned char[:, ::1] nan_out = nan_out_a
    cdef Py_ssize_t[:, ::1] counts = counts_a
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef const float* wp = &w[0, 0, 0, 0]
    cdef float* yp = &out[0, 0, 0, 0]
    cdef FixJob j
    j.p, j.q, j.x, j.w, j.y, j.act = &p, &q, xp, wp, yp, act
    j.nan_in, j.nan_out, j.counts = &nan_in[0, 0], &nan_out[0, 0], &counts[0, 0]
    with nogil:
        ce_pool_for(num_threads, NG, _count_groups, &j)
    found = int(counts_a.sum())
    if found == 0:
        return 0
    offsets_a = np.zeros(NG + 1, np.intp)
    np.cumsum(counts_a[:, 1], out=offsets_a[1:])
    inf_at_a = np.empty((max(1, offsets_a[NG]), 4), np.intp)
    cdef Py_ssize_t[::1] offsets = offsets_a
    cdef Py_ssize_t[:, ::1] inf_at_v = inf_at_a
    j.offsets, j.inf_at = &offsets[0], &inf_at_v[0, 0]
    with nogil:
        ce_pool_for(num_threads, NG, _mark_groups, &j)
        ce_pool_for(num_threads, N * K, _fix_planes, &j)
    return found


# The threads of the engine's pool (kernels/_pool.h) take ranges of (image, group) pairs, then
# of (image, output channel) planes.
ctypedef struct FixJob:
    const Planes* p
    const Window* q
    const float* x
    const float* w
    float* y
    ce_act_t act
    unsigned char* nan_in       # [NG][HW]
    unsigned char* nan_out      # [NG][OHW]
    Py_ssize_t* counts          # [NG][2]: NaNs, infinities
    const Py_ssize_t* offsets   # [NG + 1]: each group's first infinity in inf_at
    Py_ssize_t* inf_at


cdef void _count_groups(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef FixJob* j = <FixJob*>job
    cdef Py_ssize_t ng
    for ng in range(lo, hi):
        count_group(j.p, j.x, ng, j.nan_in + ng * j.p.HW, j.counts + ng * 2)


cdef void _mark_groups(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef FixJob* j = <FixJob*>job
    cdef Py_ssize_t ng
    for ng in range(lo, hi):
        if j.offsets[ng] < j.offsets[ng + 1]:
            list_infinities(j.p, j.x, ng, j.offsets[ng], j.inf_at)
        if j.counts[ng * 2]:
            mark_nan_outputs(j.p, j.q, j.nan_in + ng * j.p.HW, j.nan_out + ng * j.p.OHW)


cdef void _fix_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef FixJob* j = <FixJob*>job
    cdef const Planes* p = j.p
    cdef Py_ssize_t it, n, k, ng, i, OHW = p.OHW
    cdef float* y
    for it in range(lo, hi):
        n = it // p.K
        k = it % p.K
        ng = n * p.groups + k // p.Kg
        y = j.y + it * OHW
        add_infinite_products(p, j.q, j.x + n * p.C * p.HW, j.w + k * p.Cg * p.kh * p.kw,
                              j.inf_at, j.offsets[ng], j.offsets[ng + 1], y)
        if j.act.code != 0:
            activate_reached(p, j.q, j.inf_at, j.offsets[ng], j.offsets[ng + 1], j.act, y)
        if j.counts[ng * 2]:
            for i in range(OHW):
                if j.nan_out[ng * OHW + i]:
                    y[i] = NAN
