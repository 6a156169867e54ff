# Depthwise convolution: groups == in_channels, out_channels = in_channels * multiplier, and
# output channel k reads input channel k // multiplier (torch's grouping). Kernels:
# f32_conv2d_depthwise works plane by plane and takes any layer; f32_conv2d_depthwise_rows runs
# 3x3 layers with multiplier 1 on large planes row by row (kernels/_dw_rows.h);
# conv_depthwise_cb.pyx works on blocks of 16 channels in a channels-last copy, for 3x3 layers
# on small planes (engine/dispatch/depthwise.py chooses between them by shape).
#
# Planes. Work items are the (image, input channel) planes, which the threads of the engine's
# pool (kernels/_pool.h) take in ranges; each item computes all `multiplier` output planes of
# its channel, so an input plane is staged once however many filters read it, and every
# output element is computed by one thread in one fixed order whatever the thread count
# (bit-identical results).
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
# written again; rows outside x are re-zeroed as they are staged when a plane takes several
# bands (with one band they never hold data). A band costs one copy of its input rows against
# kh*kw multiply-adds per output, and is sized (stage_bytes) so that the staged rows and acc
# stay in L2; rows shared by two bands are staged twice. The 3x3 stride-2 kernel splits rows
# only (whole padded rows, 2L long) and reads columns with stride 2: de-interleaving rows as
# they are staged measured 3-6% slower.
#
# Band kernels. f32_dwconv3x3s1 and f32_dwconv3x3s2 compute acc as the nine multiply-adds of
# shifted staged runs in one pass; any other shape runs ce_dw_band_taps (_dw_rows.h), which
# keeps four vectors of sums in registers through all its taps.
# Each ends with the output step, bias and activation in the same loop; rows of acc then move
# to their place in the output (copy_rows), unless L == OW and acc was the output itself.
from libc.math cimport INFINITY
from libc.string cimport memset, memcpy

from _dw_common cimport act_bounds, copy_floats, crfloat, rfloat, round_up, zero_floats
from _epilogue cimport ACT_RELU, ACT_RELU6, ce_act_t, check_act
from _im2col cimport ceil_div_nonneg
cimport numpy as cnp
from _arrays cimport check_scratch_array, f32_arg, f32_array, f32_optional
from _pool cimport CE_POOL_MAX_THREADS, ce_pool_attach, ce_pool_for

ce_pool_attach()
cnp.import_array()     # the NumPy C API f32_arg calls


# A layer as the threads of the engine's pool (kernels/_pool.h) take it: planes [lo, hi) per
# piece, each thread through its own buffer, which it zeroes the first time it takes a piece
# (it then sits in that core's cache).
ctypedef struct PlanesJob:
    void* plan
    const float* x
    float* out
    const float* w
    const float* bias
    float* bufs
    Py_ssize_t per_thread
    char zeroed[CE_POOL_MAX_THREADS]


cdef float* own_buffer(PlanesJob* j, int thread) noexcept nogil:
    cdef float* buf = j.bufs + thread * j.per_thread
    if not j.zeroed[thread]:
        memset(buf, 0, j.per_thread * sizeof(float))
        j.zeroed[thread] = 1
    return buf

cdef extern from "_dw_rows.h":
    void ce_dw_band_taps(const float *P, const Py_ssize_t *offs, int ntaps, const float *w,
                         float *acc, Py_ssize_t n, float b, float lo, float hi) noexcept nogil


# floats in the widest vector (AVX-512); band runs are rounded up to whole vectors
cdef enum:
    VEC = 16

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
                     const Py_ssize_t* hi, bint zero_rows, float* buf) noexcept nogil:
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
            if zero_rows:
                for px in range(sw):
                    zero_floats(row + px * PS, L)
            continue
        src = xc + iy * W
        if sw == 1:
            if hi[0] > lo[0]:
                copy_floats(row + lo[0], src + lo[0] - pl, hi[0] - lo[0])
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


cdef void copy_rows(crfloat acc, Py_ssize_t L, rfloat o, Py_ssize_t OW,
                    Py_ssize_t nb) noexcept nogil:
    """The band's rows, acc[r*L : r*L + OW], to their place in the output."""
    cdef Py_ssize_t r
    for r in range(nb):
        copy_floats(o + r * OW, acc + r * L, OW)


# Every band kernel ends with the output step: acc[i] = min(max(sum + b, lo), hi), with
# (lo, hi) = (-inf, inf), (0, inf) or (0, 6) for no activation, relu and relu6 (act_bounds).
# One loop for all three, branch-free; written as max(v, lo), min(v, hi) it compiles to
# vmaxps/vminps with v as the operand returned on NaN, so a NaN stays a NaN.
cdef void f32_dwconv3x3s1(crfloat P, Py_ssize_t L, const float* w, rfloat acc, Py_ssize_t n,
                          float b, float lo, float hi) noexcept nogil:
    """acc[i] = sum over the 3x3 taps of w[u, v] * P[i + u*L + v], then the output step."""
    cdef const float* r0 = P
    cdef const float* r1 = P + L
    cdef const float* r2 = P + 2 * L
    cdef float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4]
    cdef float w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8]
    cdef float v
    cdef Py_ssize_t i
    for i in range(n):
        v = ((w0 * r0[i] + w1 * r0[i + 1] + w2 * r0[i + 2])
             + (w3 * r1[i] + w4 * r1[i + 1] + w5 * r1[i + 2])
             + (w6 * r2[i] + w7 * r2[i + 1] + w8 * r2[i + 2])) + b
        acc[i] = min(max(v, lo), hi)


cdef void f32_dwconv3x3s2(crfloat P, Py_ssize_t PS, Py_ssize_t L, const float* w,
                          rfloat acc, Py_ssize_t n, float b, float lo, float hi) noexcept nogil:
    """Stride 2 on two row-phase planes, even and odd padded rows, of rows 2L long: padded row
    2*oy + u is plane u % 2, row oy + u // 2, and column 2*ox + v of it is at 2*i + v for
    i = oy*L + ox. The stride-2 loads compile to vector permutes."""
    cdef const float* e0 = P             # even padded rows, from row 2*oy
    cdef const float* o0 = P + PS        # odd padded rows, from row 2*oy + 1
    cdef const float* e1 = P + 2 * L     # even padded rows, from row 2*oy + 2
    cdef float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4]
    cdef float w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8]
    cdef float v
    cdef Py_ssize_t i
    for i in range(n):
        v = ((w0 * e0[2 * i] + w1 * e0[2 * i + 1] + w2 * e0[2 * i + 2])
             + (w3 * o0[2 * i] + w4 * o0[2 * i + 1] + w5 * o0[2 * i + 2])
             + (w6 * e1[2 * i] + w7 * e1[2 * i + 1] + w8 * e1[2 * i + 2])) + b
        acc[i] = min(max(v, lo), hi)


ctypedef struct Plan:
    # the layer's geometry and the staging layout, shared read-only by all threads
    Py_ssize_t H, W, OH, OW, pt, pl, band, halo, mult, ntaps
    Py_ssize_t sh, ssw        # row and column phases of the staging
    Py_ssize_t LS, PS         # staged row length and floats per phase plane
    Py_ssize_t L              # row stride of acc
    Py_ssize_t C, K           # input and output channels
    int kind
    float lo_act, hi_act      # the output step's clamp (act_bounds)
    const Py_ssize_t* lo      # phase_range of each column phase
    const Py_ssize_t* hi
    const Py_ssize_t* offs    # where each tap starts in the staged band


cdef void dw_channel(const Plan* q, const float* xc, float* outc, const float* wc,
                     const float* bc, float* P) noexcept nogil:
    """All output planes of one input channel: outc[j] = conv(xc, wc[j]) (+ bc[j]), j < mult.
    P: this thread's staging buffer, its accumulator after the phase planes."""
    cdef Py_ssize_t OH = q.OH, OW = q.OW, L = q.L, oy0 = 0, nb, flat, j, r
    cdef float* accbuf = P + q.sh * q.ssw * q.PS
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
        stage_band(xc, q.H, q.W, oy0 * q.sh, (nb - 1) * q.sh + q.halo, q.pt, q.pl, q.sh, q.ssw,
                   q.LS, q.PS, q.lo, q.hi, q.band < OH, P)
        for j in range(q.mult):
            wk = wc + j * q.ntaps
            o = outc + (j * OH + oy0) * OW
            b = bc[j] if bc != NULL else 0
            # rows of length L == OW are already the output's layout
            acc = o if L == OW else accbuf
            if q.kind == 1 and L != OW:
                # row by row straight into the output: the copy of acc's rows into place was a
                # quarter of a 32ch 112x112 layer's time (0.34 -> 0.27 ms, one thread)
                for r in range(nb):
                    f32_dwconv3x3s1(P + r * L, L, wk, o + r * OW, OW, b, q.lo_act, q.hi_act)
                continue
            if q.kind == 1:
                f32_dwconv3x3s1(P, L, wk, acc, flat, b, q.lo_act, q.hi_act)
            elif q.kind == 2:
                # one lane more: gcc ends a loop of stride-2 loads with scalar iterations
                # ("peeling for gaps"), and this way they run one garbage lane, not a vector
                f32_dwconv3x3s2(P, q.PS, L, wk, acc, flat + 1, b, q.lo_act, q.hi_act)
            else:
                ce_dw_band_taps(P, q.offs, <int>q.ntaps, wk, acc, flat, b, q.lo_act, q.hi_act)
            if L != OW:
                copy_rows(acc, L, o, OW, nb)
        oy0 = oy0 + nb


cdef Py_ssize_t plane_layout(Plan* q, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                             Py_ssize_t OW, int kh, int kw, int sh, int sw, int dh, int dw,
                             Py_ssize_t stage_bytes) noexcept nogil:
    """Fill in q's geometry and staging layout; return the floats of one thread's buffer."""
    q.H, q.W, q.OH, q.OW, q.sh = H, W, OH, OW, sh
    q.kind = 0
    if kh == 3 and kw == 3 and dh == 1 and dw == 1:
        if sh == 1 and sw == 1:
            q.kind = 1
        elif sh == 2 and sw == 2:
            q.kind = 2
    # acc row length: the padded columns the output reads, split into sw phases
    q.L = ceil_div_nonneg((OW - 1) * sw + (kw - 1) * dw + 1, sw)
    # f32_dwconv3x3s2 reads whole padded rows with stride 2; the other kernels staged phases
    q.ssw = 1 if q.kind == 2 else sw
    q.LS = 2 * q.L if q.kind == 2 else q.L
    q.halo = (kh - 1) * dh + 1
    cdef Py_ssize_t halo_rows = ceil_div_nonneg(q.halo, sh)   # phase rows beyond a band's own
    cdef Py_ssize_t nphase = sh * q.ssw
    q.band = max(1, min(OH, (stage_bytes // <Py_ssize_t>sizeof(float)
                             - nphase * halo_rows * q.LS) // (nphase * q.LS + q.L)))
    # floats per phase plane, with room for the over-read of a band rounded up to whole vectors
    # (twice that for the stride-2 loads)
    q.PS = round_up((q.band - 1 + halo_rows) * q.LS + 2 * VEC, VEC)
    # the phase planes, then acc
    return nphase * q.PS + round_up(q.band * q.L + 2 * VEC, VEC)


cdef inline Py_ssize_t table_floats_for(int sw, int kh, int kw) noexcept nogil:
    """Floats of the small tables (lo, hi: sw each; offs: kh*kw) at the start of the buffer."""
    return round_up((2 * sw + kh * kw) * sizeof(Py_ssize_t), sizeof(float) * VEC) // sizeof(float)


def plane_work_floats(Py_ssize_t items, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                      Py_ssize_t OW, int kh, int kw, int sh, int sw, int dh, int dw,
                      Py_ssize_t stage_bytes, int num_threads):
    """Floats of the work buffer f32_conv2d_depthwise needs for these shapes (items: images x
    channels), 64-byte aligned."""
    cdef Plan q
    cdef Py_ssize_t per_thread = plane_layout(&q, H, W, OH, OW, kh, kw, sh, sw, dh, dw,
                                              stage_bytes)
    return table_floats_for(sw, kh, kw) + max(1, min(num_threads, items)) * per_thread


def f32_conv2d_depthwise(x, w2d, bias, out, int kh, int kw, int sh, int sw, int pt, int pl, int dh,
                         int dw, Py_ssize_t stage_bytes, ce_act_t act, int num_threads, work):
    """out = depthwise conv2d(x, w) for w2d[K, kh*kw], K = C * multiplier.

    Output sizes are the caller's (engine.shapes); padding beyond pt/pl is implied by them.
    stage_bytes bounds the per-thread buffer (it sets the band height, never below one row).
    work: plane_work_floats(...) floats from a 64-byte boundary, reused across calls by the
    caller: a fresh allocation above glibc's mmap threshold costs a page fault per 4 KB on every
    call (and zeroing it in one thread moves it between cores).
    """
    cdef f32_array xv = f32_arg(x, 4, "x", False)
    cdef f32_array w2dv = f32_arg(w2d, 2, "w2d", False)
    cdef f32_array outv = f32_arg(out, 4, "out", True)
    cdef f32_array workv = f32_arg(work, 1, "work", True)
    check_act(act, 1)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t K = outv.shape[1], OH = outv.shape[2], OW = outv.shape[3]
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or pt < 0 or pl < 0:
        raise ValueError("kernel sizes, strides and dilations must be positive and pads "
                         "non-negative")
    if outv.shape[0] != N or K < C or K % C:
        raise ValueError(f"out must have shape (N={N}, a multiple of C={C}, OH, OW), "
                         f"got {out.shape}")
    if w2dv.shape[0] != K or w2dv.shape[1] != kh * kw:
        raise ValueError(f"w2d must have shape ({K}, {kh * kw}), got {w2d.shape[:2]}")
    cdef const float* bptr = f32_optional(bias, K, "bias")
    if H == 0 or W == 0:
        raise ValueError(f"x must have non-empty spatial dimensions, got {x.shape}")
    if N == 0 or C == 0 or OH <= 0 or OW <= 0:
        return
    cdef Plan q
    q.pt, q.pl = pt, pl
    q.mult = K // C
    q.ntaps = kh * kw
    act_bounds(act, &q.lo_act, &q.hi_act)
    cdef Py_ssize_t thread_floats = plane_layout(&q, H, W, OH, OW, kh, kw, sh, sw, dh, dw,
                                                 stage_bytes)
    cdef Py_ssize_t items = N * C
    num_threads = <int>max(1, min(num_threads, items))
    # one allocation for the plan's small tables (lo, hi: sw each; offs: kh*kw) and the
    # threads' buffers, zeroed once: staging never writes the padding columns, so they stay
    # zero (numpy arrays for the tables cost about a microsecond each)
    cdef Py_ssize_t table_floats = table_floats_for(sw, kh, kw)
    check_scratch_array(workv, table_floats + num_threads * thread_floats, "work")
    cdef float* bufs = workv.p
    cdef Py_ssize_t* lo = <Py_ssize_t*>bufs
    cdef Py_ssize_t* hi = lo + sw
    cdef Py_ssize_t* offs = hi + sw
    cdef Py_ssize_t px, u, v
    for px in range(q.ssw):
        phase_range(W, pl, q.ssw, px, q.LS, &lo[px], &hi[px])
    for u in range(kh):
        for v in range(kw):
            offs[u * kw + v] = (((u * dh) % sh * sw + (v * dw) % sw) * q.PS
                                + (u * dh) // sh * q.L + (v * dw) // sw)
    q.lo, q.hi, q.offs = lo, hi, offs
    q.C, q.K = C, K
    cdef PlanesJob j
    j.plan, j.x, j.out, j.w, j.bias = &q, xv.p, outv.p, w2dv.p, bptr
    j.bufs, j.per_thread = bufs + table_floats, thread_floats
    memset(j.zeroed, 0, sizeof(j.zeroed))
    with nogil:
        ce_pool_for(num_threads, items, _channel_planes, &j)


cdef void _channel_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef PlanesJob* j = <PlanesJob*>job
    cdef Plan* q = <Plan*>j.plan
    cdef float* mine = own_buffer(j, thread)
    cdef Py_ssize_t it, n, c, k
    for it in range(lo, hi):
        n = it // q.C
        c = it % q.C
        k = c * q.mult
        dw_channel(q, j.x + it * q.H * q.W, j.out + (n * q.K + k) * q.OH * q.OW,
                   j.w + k * q.ntaps, j.bias + k if j.bias != NULL else NULL, mine)


# ---- Rows: 3x3, stride 1 or 2, multiplier 1, large planes (kernels/_dw_rows.h) -------------

cdef extern from "_dw_rows.h":
    Py_ssize_t ce_dw_ring_floats(int OW, int sw, int pl, int W) nogil
    void ce_dw3x3_plane(const float *x, int H, int W, int OH, int OW, int s, int pt, int pl,
                        const float *w9, float b, float lo, float hi, float *out,
                        float *ring) nogil


def rows_work_floats(Py_ssize_t items, Py_ssize_t W, Py_ssize_t OW, int s, int pl,
                     int num_threads):
    """Floats of the work buffer f32_conv2d_depthwise_rows needs (items: images x channels)."""
    return max(1, min(num_threads, items)) * ce_dw_ring_floats(<int>OW, s, pl, <int>W)


def f32_conv2d_depthwise_rows(x, w2d, bias, out, int s, int pt, int pl, ce_act_t act,
                              int num_threads, work):
    """out = depthwise conv2d(x, w) for a 3x3 kernel, stride s (1 or 2) in both directions,
    dilation 1 and multiplier 1, plane by plane and output row by output row (_dw_rows.h).
    w2d[C, 9]; output sizes are the caller's (engine.shapes); work: rows_work_floats(...)
    floats, 64-byte aligned."""
    cdef f32_array xv = f32_arg(x, 4, "x", False)
    cdef f32_array w2dv = f32_arg(w2d, 2, "w2d", False)
    cdef f32_array outv = f32_arg(out, 4, "out", True)
    cdef f32_array workv = f32_arg(work, 1, "work", True)
    check_act(act, 1)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t OH = outv.shape[2], OW = outv.shape[3]
    if s not in (1, 2) or pt < 0 or pl < 0:
        raise ValueError(f"stride must be 1 or 2 and pads non-negative, got {s}, {pt}, {pl}")
    if outv.shape[0] != N or outv.shape[1] != C:
        raise ValueError(f"out must have shape (N={N}, C={C}, OH, OW), got {out.shape}")
    if w2dv.shape[0] != C or w2dv.shape[1] != 9:
        raise ValueError(f"w2d must have shape ({C}, 9), got {w2d.shape[:2]}")
    if H == 0 or W == 0 or OH <= 0 or OW <= 0 or H > 1 << 30 or W > 1 << 30:
        raise ValueError(f"x {x.shape} and out {out.shape} must have non-empty "
                         f"planes")
    cdef const float* bptr = f32_optional(bias, C, "bias")
    if N == 0 or C == 0:
        return
    cdef Py_ssize_t items = N * C
    num_threads = <int>max(1, min(num_threads, items))
    cdef Py_ssize_t per_thread = ce_dw_ring_floats(<int>OW, s, pl, <int>W)
    check_scratch_array(workv, num_threads * per_thread, "work")
    cdef float lo_act, hi_act
    act_bounds(act, &lo_act, &hi_act)
    cdef RowsLayer layer = RowsLayer(C, H, W, OH, OW, s, pt, pl, lo_act, hi_act)
    cdef PlanesJob j
    j.plan, j.x, j.out, j.w, j.bias = &layer, xv.p, outv.p, w2dv.p, bptr
    j.bufs, j.per_thread = workv.p, per_thread
    memset(j.zeroed, 0, sizeof(j.zeroed))
    with nogil:
        ce_pool_for(num_threads, items, _ring_planes, &j)


ctypedef struct RowsLayer:
    Py_ssize_t C, H, W, OH, OW
    int s, pt, pl
    float lo_act, hi_act


cdef void _ring_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef PlanesJob* j = <PlanesJob*>job
    cdef RowsLayer* d = <RowsLayer*>j.plan
    cdef float* ring = own_buffer(j, thread)
    cdef Py_ssize_t it, c
    for it in range(lo, hi):
        c = it % d.C
        ce_dw3x3_plane(j.x + it * d.H * d.W, <int>d.H, <int>d.W, <int>d.OH, <int>d.OW, d.s,
                       d.pt, d.pl, j.w + c * 9, j.bias[c] if j.bias != NULL else 0, d.lo_act,
                       d.hi_act, j.out + it * d.OH * d.OW, ring)
