# Depthwise convolution: groups == in_channels, out_channels = in_channels * multiplier, and
# output channel k reads input channel k // multiplier (torch's grouping).
#
# Work items are the (image, input channel) planes, statically split over the threads; each
# item computes all `multiplier` output planes of its channel, so an input plane is staged
# once however many filters read it, and every output element is computed by one thread in
# one fixed order whatever the thread count (bit-identical results).
#
# Staging. A band of padded input rows is copied into a per-thread buffer, the zero padding
# written out and rows and columns split into stride phases (space-to-depth of the plane):
#     P[py, px][j, l] = xpad[r0 + j*sh + py, l*sw + px]      (xpad: x with its zero padding)
# so the tap (u, v) of output (oy, ox) reads P[(u*dh) % sh, (v*dw) % sw] at row
# oy - oy0 + (u*dh) // sh and column ox + (v*dw) // sw. Output rows are then computed "flat":
# with acc[i], i = (oy - oy0)*L + ox, L the phase row length, each tap is one unit-stride run
# over the whole band, P[...][i + shift], with no bounds checks, no border code and no short
# loops (columns OW..L-1 of acc, and the lanes that round a band up to whole vectors, are
# garbage that is never stored). The padding columns are zeroed once per buffer and never
# written again; rows outside x are re-zeroed as they are staged. A band costs one copy of
# its input rows against kh*kw multiply-adds per output, and is sized (stage_bytes) so that
# the staged rows and acc stay in L2; rows shared by two bands are staged twice. Staging is
# most of the time of a stride-2 layer: its rows go through one de-interleaving pass.
#
# Band kernels. f32_dwconv3x3s1 and f32_dwconv3x3s2 compute acc as the nine multiply-adds of
# shifted staged runs in one pass; any other shape takes its taps four to a pass over acc.
# The output step adds the bias, applies the activation (_epilogue.pxd) and moves each row
# to its place in the output.
import numpy as np
from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free
from libc.string cimport memset, memcpy

# floats in the widest vector (AVX-512); band runs are rounded up to whole vectors
cdef enum:
    VEC = 16

# restrict-qualified pointers: the staged planes, the accumulator and the input never overlap,
# and without the promise gcc re-checks that before every short vectorised loop
cdef extern from *:
    """
    typedef float *__restrict ce_rfloat;
    typedef const float *__restrict ce_crfloat;
    """
    ctypedef float* rfloat "ce_rfloat"
    ctypedef const float* crfloat "ce_crfloat"

from _epilogue cimport activate, bias_act_row
from _im2col cimport ceil_div_nonneg


cdef inline Py_ssize_t round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


cdef inline void phase_range(Py_ssize_t W, Py_ssize_t pl, Py_ssize_t sw, Py_ssize_t px,
                             Py_ssize_t L, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Staged columns l of phase px whose input column l*sw + px - pl lies in [0, W)."""
    lo[0] = ceil_div_nonneg(pl - px, sw)
    hi[0] = ceil_div_nonneg(W + pl - px, sw)
    if hi[0] > L:
        hi[0] = L
    if lo[0] > hi[0]:
        lo[0] = hi[0]


cdef void deinterleave2(crfloat s, rfloat ev, rfloat od, Py_ssize_t n) noexcept nogil:
    """ev[i] = s[2i], od[i] = s[2i + 1]."""
    cdef Py_ssize_t i
    for i in range(n):
        ev[i] = s[2 * i]
        od[i] = s[2 * i + 1]


cdef void stage_band(const float* xc, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                     Py_ssize_t nrows, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
                     Py_ssize_t sw, Py_ssize_t L, Py_ssize_t PS, const Py_ssize_t* lo,
                     const Py_ssize_t* hi, float* buf) noexcept nogil:
    """Stage padded rows r0 .. r0 + nrows - 1 of one channel into the phase planes
    P[py, px] = buf + (py*sw + px)*PS. lo[px], hi[px]: phase_range of each column phase.
    Padding columns are already zero (see the header)."""
    cdef Py_ssize_t R, iy, px, l, py = 0, j = 0
    cdef float* row
    cdef const float* src
    # stride 2: one unit-stride de-interleaving pass over the columns both phases share;
    # phase 1 may start (f1), phase 0 end (f0), one column beyond them
    cdef Py_ssize_t a0 = lo[0], n2 = 0, s_off = 0, f1 = -1, f0 = -1
    if sw == 2:
        n2 = max(0, hi[1] - lo[0])
        s_off = 2 * a0 - pl
        if lo[1] < min(lo[0], hi[1]):
            f1 = lo[1]
        if max(hi[1], lo[0]) < hi[0]:
            f0 = hi[0] - 1
    for R in range(nrows):
        iy = r0 + R - pt
        row = buf + py * sw * PS + j * L
        py = py + 1
        if py == sh:
            py = 0
            j = j + 1
        if iy < 0 or iy >= H:
            for px in range(sw):
                memset(row + px * PS, 0, L * sizeof(float))
            continue
        src = xc + iy * W
        if sw == 1:
            if hi[0] > lo[0]:
                memcpy(row + lo[0], src + lo[0] - pl, (hi[0] - lo[0]) * sizeof(float))
        elif sw == 2:
            if n2 > 0:
                deinterleave2(src + s_off, row + a0, row + PS + a0, n2)
            if f1 >= 0:
                row[PS + f1] = src[2 * f1 + 1 - pl]
            if f0 >= 0:
                row[f0] = src[2 * f0 - pl]
        else:
            for px in range(sw):
                for l in range(lo[px], hi[px]):
                    row[px * PS + l] = src[l * sw + px - pl]


cdef void store_rows(crfloat acc, Py_ssize_t L, rfloat o, Py_ssize_t OW, Py_ssize_t nb,
                     float b, int act) noexcept nogil:
    """The output step: o[r, ox] = act(acc[r*L + ox] + b) for nb rows."""
    cdef Py_ssize_t r, ox
    cdef const float* a
    for r in range(nb):
        a = acc + r * L
        for ox in range(OW):
            o[ox] = activate(a[ox] + b, act)
        o = o + OW


cdef void f32_dwconv3x3s1(crfloat P, Py_ssize_t L, const float* w, rfloat acc,
                          Py_ssize_t n) noexcept nogil:
    """acc[i] = sum over the 3x3 taps of w[u, v] * P[i + u*L + v]."""
    cdef const float* r0 = P
    cdef const float* r1 = P + L
    cdef const float* r2 = P + 2 * L
    cdef float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4]
    cdef float w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8]
    cdef Py_ssize_t i
    for i in range(n):
        acc[i] = (w0 * r0[i] + w1 * r0[i + 1] + w2 * r0[i + 2]
                  + w3 * r1[i] + w4 * r1[i + 1] + w5 * r1[i + 2]
                  + w6 * r2[i] + w7 * r2[i + 1] + w8 * r2[i + 2])


cdef void f32_dwconv3x3s2(crfloat P, Py_ssize_t PS, Py_ssize_t L, const float* w,
                          rfloat acc, Py_ssize_t n) noexcept nogil:
    """The same for stride 2 on the four phase planes: padded row 2*oy + u is phase u % 2,
    row oy + u // 2; column 2*ox + v is phase v % 2, column ox + v // 2."""
    cdef const float* ee = P             # even rows, even columns
    cdef const float* eo = P + PS        # even rows, odd columns
    cdef const float* oe = P + 2 * PS
    cdef const float* oo = P + 3 * PS
    cdef float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4]
    cdef float w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8]
    cdef Py_ssize_t i
    for i in range(n):
        acc[i] = (w0 * ee[i] + w1 * eo[i] + w2 * ee[i + 1]
                  + w3 * oe[i] + w4 * oo[i] + w5 * oe[i + 1]
                  + w6 * ee[i + L] + w7 * eo[i + L] + w8 * ee[i + L + 1])


cdef void f32_dwconv_band(const float* P, const Py_ssize_t* offs, Py_ssize_t ntaps,
                          const float* w, rfloat acc, Py_ssize_t n) noexcept nogil:
    """Any kernel, stride and dilation: tap t reads P + offs[t]. Taps go four to a pass over
    acc (fewer passes than one per tap, still few pointers live), in row-major order."""
    cdef Py_ssize_t t = 0, i
    cdef const float* p0
    cdef const float* p1
    cdef const float* p2
    cdef const float* p3
    cdef float w0, w1, w2, w3
    for i in range(n):
        acc[i] = 0
    while t + 4 <= ntaps:
        p0 = P + offs[t]
        p1 = P + offs[t + 1]
        p2 = P + offs[t + 2]
        p3 = P + offs[t + 3]
        w0 = w[t]
        w1 = w[t + 1]
        w2 = w[t + 2]
        w3 = w[t + 3]
        for i in range(n):
            acc[i] = acc[i] + w0 * p0[i] + w1 * p1[i] + w2 * p2[i] + w3 * p3[i]
        t = t + 4
    while t < ntaps:
        p0 = P + offs[t]
        w0 = w[t]
        for i in range(n):
            acc[i] = acc[i] + w0 * p0[i]
        t = t + 1


ctypedef struct Plan:
    # the layer's geometry and the staging layout, shared read-only by all threads
    Py_ssize_t H, W, OH, OW, sh, pt, pl, sw, L, PS, band, halo, mult, ntaps
    int kind, act
    const Py_ssize_t* lo      # phase_range of each column phase
    const Py_ssize_t* hi
    const Py_ssize_t* offs    # where each tap starts in the staged band


cdef void dw_channel(const Plan* q, const float* xc, float* outc, const float* wc,
                     const float* bc, float* P) noexcept nogil:
    """All output planes of one input channel: outc[j] = conv(xc, wc[j]) (+ bc[j]), j < mult.
    P: this thread's staging buffer, its accumulator after the phase planes."""
    cdef Py_ssize_t OH = q.OH, OW = q.OW, L = q.L, oy0 = 0, nb, flat, j
    cdef float* accbuf = P + q.sh * q.sw * q.PS
    cdef float* acc
    cdef float* o
    cdef const float* wk
    cdef float b
    while oy0 < OH:
        nb = min(q.band, OH - oy0)
        flat = (nb - 1) * L + OW
        if L != OW:
            # whole vectors: no scalar tail; the extra lanes are garbage never stored
            flat = round_up(flat, VEC)
        stage_band(xc, q.H, q.W, oy0 * q.sh, (nb - 1) * q.sh + q.halo, q.pt, q.pl, q.sh, q.sw,
                   L, q.PS, q.lo, q.hi, P)
        for j in range(q.mult):
            wk = wc + j * q.ntaps
            o = outc + (j * OH + oy0) * OW
            b = bc[j] if bc != NULL else 0
            # rows of length L == OW are already the output's layout
            acc = o if L == OW else accbuf
            if q.kind == 1:
                f32_dwconv3x3s1(P, L, wk, acc, flat)
            elif q.kind == 2:
                f32_dwconv3x3s2(P, q.PS, L, wk, acc, flat)
            else:
                f32_dwconv_band(P, q.offs, q.ntaps, wk, acc, flat)
            if L == OW:
                bias_act_row(o, nb * OW, b, q.act)
            else:
                store_rows(acc, L, o, OW, nb, b, q.act)
        oy0 = oy0 + nb


def f32_conv2d_depthwise(const float[:, :, :, ::1] x, const float[:, ::1] w2d, bias,
                         float[:, :, :, ::1] out, int kh, int kw, int sh, int sw, int pt,
                         int pl, int dh, int dw, Py_ssize_t stage_bytes, int act,
                         int num_threads):
    """out = depthwise conv2d(x, w) for w2d[K, kh*kw], K = C * multiplier.

    Output sizes are the caller's (engine.shapes); padding beyond pt/pl is implied by them.
    stage_bytes bounds the per-thread buffer (it sets the band height, never below one row).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or pt < 0 or pl < 0:
        raise ValueError("kernel sizes, strides and dilations must be positive and pads "
                         "non-negative")
    if out.shape[0] != N or K < C or K % C:
        raise ValueError(f"out must have shape (N={N}, a multiple of C={C}, OH, OW), "
                         f"got {tuple(out.shape)}")
    if w2d.shape[0] != K or w2d.shape[1] != kh * kw:
        raise ValueError(f"w2d must have shape ({K}, {kh * kw}), got {tuple(w2d.shape)[:2]}")
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != K:
            raise ValueError(f"bias must have {K} values, got {b.shape[0]}")
        bptr = &b[0]
    if H == 0 or W == 0:
        raise ValueError(f"x must have non-empty spatial dimensions, got {tuple(x.shape)}")
    if N == 0 or C == 0 or OH <= 0 or OW <= 0:
        return
    cdef Plan q
    q.H, q.W, q.OH, q.OW, q.sh, q.sw, q.pt, q.pl = H, W, OH, OW, sh, sw, pt, pl
    q.mult = K // C
    q.ntaps = kh * kw
    q.act = act
    # phase row length: the padded columns the output reads, split into sw phases
    q.L = ceil_div_nonneg((OW - 1) * sw + (kw - 1) * dw + 1, sw)
    q.halo = (kh - 1) * dh + 1
    cdef Py_ssize_t halo_rows = ceil_div_nonneg(q.halo, sh)   # phase rows beyond a band's own
    cdef Py_ssize_t nphase = sh * sw
    q.band = max(1, min(OH, (stage_bytes // <Py_ssize_t>sizeof(float) - nphase * halo_rows * q.L)
                        // (nphase * q.L + q.L)))
    # floats per phase plane, with room for the over-read of a band rounded up to whole vectors
    q.PS = round_up((q.band - 1 + halo_rows) * q.L + VEC, VEC)
    cdef Py_ssize_t thread_floats = nphase * q.PS + round_up(q.band * q.L + VEC, VEC)  # + acc
    q.kind = 0
    if kh == 3 and kw == 3 and dh == 1 and dw == 1:
        if sh == 1 and sw == 1:
            q.kind = 1
        elif sh == 2 and sw == 2:
            q.kind = 2
    cdef Py_ssize_t[::1] lo = np.empty(sw, dtype=np.intp), hi = np.empty(sw, dtype=np.intp)
    cdef Py_ssize_t[::1] offs = np.empty(kh * kw, dtype=np.intp)
    cdef Py_ssize_t px, u, v
    for px in range(sw):
        phase_range(W, pl, sw, px, q.L, &lo[px], &hi[px])
    for u in range(kh):
        for v in range(kw):
            offs[u * kw + v] = (((u * dh) % sh * sw + (v * dw) % sw) * q.PS
                                + (u * dh) // sh * q.L + (v * dw) // sw)
    q.lo, q.hi, q.offs = &lo[0], &hi[0], &offs[0]
    cdef Py_ssize_t items = N * C
    num_threads = <int>max(1, min(num_threads, items))
    # zeroed once: staging never writes the padding columns, so they stay zero
    cdef float* bufs = <float*>calloc(num_threads * thread_floats, sizeof(float))
    if bufs == NULL:
        raise MemoryError("depthwise staging buffer")
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0]
    cdef const float* wp = &w2d[0, 0]
    cdef Py_ssize_t it, n, c, k
    try:
        for it in prange(items, nogil=True, num_threads=num_threads, schedule="static"):
            n = it // C
            c = it % C
            k = c * q.mult
            dw_channel(&q, xp + it * H * W, op + (n * K + k) * OH * OW, wp + k * q.ntaps,
                       bptr + k if bptr != NULL else NULL, bufs + threadid() * thread_floats)
    finally:
        free(bufs)
