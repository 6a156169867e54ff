# Depthwise convolution on blocks of one vector of channels (engine/dispatch/depthwise.py picks
# it for small planes; conv_depthwise.pyx holds the plane and row kernels and the conventions).
from libc.string cimport memcpy, memset

from _epilogue cimport ce_act_t, check_act
from _dw_common cimport act_bounds, copy_floats, crfloat, rfloat, round_up
from _pool cimport CE_POOL_MAX_THREADS, ce_pool_attach, ce_pool_for
from _scratch cimport check_scratch

import numpy as np

ce_pool_attach()

# Channel blocks. A small plane (7 x 7, 14 x 14) gives each channel so little arithmetic that a
# plane's set-up (staging its rows, copying out rows of 7 floats) costs as much as its 441
# multiply-adds. Blocks of CB channels are instead transposed to channels-last, T0[p, c], copied
# row by row into a padded block T whose padding stays zero, computed with one vector of CB
# channels per pixel and tap (no row edges, no garbage lanes) into Y[p, c], and transposed
# back. Work items are the (image, block) pairs, which the threads of the engine's pool
# (kernels/_pool.h) take in ranges. The transposes go 16 pixels at a time, which gcc turns
# into vector loads, in-register permutes and vector stores. Into the planes, a loop over their
# own stride (unknown when compiling) does not vectorise, the stores to the CB planes might
# alias one another, so the way out goes through a CB x 16 tile with fixed strides. Computing on rows W long, border
# columns checked tap by tap, instead of copying T0 into T measured 3-30% slower.
cdef extern from *:
    """
    /* channels per block: one vector of floats (16 with AVX-512; 8 with AVX2, where blocks
       of 16 kept 18 vectors of weights and spilled them: 256ch 14x14 0.060 -> 0.046 ms,
       bench_dispatch.py depthwise/blocks) */
    #if defined(__AVX512F__)
    #define CE_DW_CB 16
    #else
    #define CE_DW_CB 8
    #endif
    """
    enum: CE_DW_CB

cdef enum:
    CB = CE_DW_CB

cdef extern from *:
    """
    typedef float ce_dw_cb_vf __attribute__((vector_size(CE_DW_CB * 4)));
    typedef float ce_dw_cb_vfu __attribute__((vector_size(CE_DW_CB * 4), aligned(4), may_alias));

    /* y[0 .. CE_DW_CB) = min(max(a, lo), hi), a NaN kept (as min and max in Cython) */
    static inline void ce_dw_cb_store(float *y, ce_dw_cb_vf a, float lo, float hi)
    {
        float v[CE_DW_CB];
        __builtin_memcpy(v, &a, sizeof a);
        for (int c = 0; c < CE_DW_CB; c++) {
            float r = lo > v[c] ? lo : v[c];
            y[c] = hi < r ? hi : r;
        }
    }

    /* Y[oy, ox, :] = act(b + the sum over the taps t, in order, of w[t] T[oy*sh, ox*sw]
     * shifted by offs[t]) for any kernel, on the padded channels-last block T (rows WP pixels
     * long): four outputs of a row share each weight vector as it is loaded (with 25 taps
     * the weights do not fit in registers), the row's last two and one. */
    static void ce_dw_cb_taps(const float *T, ptrdiff_t WP, ptrdiff_t sh, ptrdiff_t sw,
                              const ptrdiff_t *offs, int ntaps, const float *w, const float *b,
                              float lo, float hi, float *Y, ptrdiff_t OH, ptrdiff_t OW)
    {
        const ce_dw_cb_vf bv = *(const ce_dw_cb_vfu *)b;
        const ptrdiff_t step = sw * CE_DW_CB;
        for (ptrdiff_t oy = 0; oy < OH; oy++) {
            const float *row = T + oy * sh * WP * CE_DW_CB;
            float *y = Y + oy * OW * CE_DW_CB;
            ptrdiff_t ox = 0;
            for (; ox + 4 <= OW; ox += 4) {
                const float *s = row + ox * step;
                ce_dw_cb_vf a0 = bv, a1 = bv, a2 = bv, a3 = bv;
                for (int t = 0; t < ntaps; t++) {
                    const ce_dw_cb_vf wv = *(const ce_dw_cb_vfu *)(w + t * CE_DW_CB);
                    const float *st = s + offs[t];
                    a0 += wv * *(const ce_dw_cb_vfu *)st;
                    a1 += wv * *(const ce_dw_cb_vfu *)(st + step);
                    a2 += wv * *(const ce_dw_cb_vfu *)(st + 2 * step);
                    a3 += wv * *(const ce_dw_cb_vfu *)(st + 3 * step);
                }
                ce_dw_cb_store(y + ox * CE_DW_CB, a0, lo, hi);
                ce_dw_cb_store(y + (ox + 1) * CE_DW_CB, a1, lo, hi);
                ce_dw_cb_store(y + (ox + 2) * CE_DW_CB, a2, lo, hi);
                ce_dw_cb_store(y + (ox + 3) * CE_DW_CB, a3, lo, hi);
            }
            if (ox + 2 <= OW) {
                const float *s = row + ox * step;
                ce_dw_cb_vf a0 = bv, a1 = bv;
                for (int t = 0; t < ntaps; t++) {
                    const ce_dw_cb_vf wv = *(const ce_dw_cb_vfu *)(w + t * CE_DW_CB);
                    a0 += wv * *(const ce_dw_cb_vfu *)(s + offs[t]);
                    a1 += wv * *(const ce_dw_cb_vfu *)(s + offs[t] + step);
                }
                ce_dw_cb_store(y + ox * CE_DW_CB, a0, lo, hi);
                ce_dw_cb_store(y + (ox + 1) * CE_DW_CB, a1, lo, hi);
                ox += 2;
            }
            if (ox < OW) {
                const float *s = row + ox * step;
                ce_dw_cb_vf a0 = bv;
                for (int t = 0; t < ntaps; t++)
                    a0 += *(const ce_dw_cb_vfu *)(w + t * CE_DW_CB)
                          * *(const ce_dw_cb_vfu *)(s + offs[t]);
                ce_dw_cb_store(y + ox * CE_DW_CB, a0, lo, hi);
            }
        }
    }
    """
    void ce_dw_cb_taps(const float *T, Py_ssize_t WP, Py_ssize_t sh, Py_ssize_t sw,
                       const Py_ssize_t *offs, int ntaps, const float *w, const float *b,
                       float lo, float hi, float *Y, Py_ssize_t OH, Py_ssize_t OW) nogil

CHANNEL_BLOCK = CB   # for the plan's weight layout (engine/ops/depthwise.py)


cdef inline void transpose_out(rfloat d, crfloat s) noexcept nogil:
    """d[c, p] = s[p, c] for 16 pixels p of CB channels c: fixed strides, compiled to
    in-register permutes."""
    cdef int c, p
    for c in range(CB):
        for p in range(16):
            d[c * 16 + p] = s[p * CB + c]


cdef inline void transpose_in(rfloat d, crfloat s, Py_ssize_t stride) noexcept nogil:
    """d[p, c] = s[c*stride + p] for 16 pixels p of CB channels c: CB row loads, then the
    permutes."""
    cdef int c, p
    for p in range(16):
        for c in range(CB):
            d[p * CB + c] = s[c * stride + p]


cdef void cb_transpose_in(rfloat t, crfloat x, Py_ssize_t hw, rfloat tile) noexcept nogil:
    """t[p, c] = x[c, p] for CB planes of hw pixels, 16 pixels at a time; the last, partial
    16 through tile[CB, 16] so that nothing beyond the planes is read."""
    cdef Py_ssize_t p0 = 0, n
    cdef int c
    while p0 + 16 <= hw:
        transpose_in(t + p0 * CB, x + p0, hw)
        p0 = p0 + 16
    if p0 < hw:
        n = hw - p0
        for c in range(CB):
            copy_floats(tile + c * 16, x + c * hw + p0, n)
        transpose_in(t + p0 * CB, tile, 16)


cdef void cb_transpose_out(rfloat o, crfloat y, Py_ssize_t hw, rfloat tile) noexcept nogil:
    """o[c, p] = y[p, c] for CB planes of hw pixels, 16 pixels at a time through tile[CB, 16]."""
    cdef Py_ssize_t p0 = 0, n
    cdef int c
    while p0 < hw:
        n = min(16, hw - p0)
        transpose_out(tile, y + p0 * CB)
        if n == 16:     # whole vectors, as transpose_out stored them: forwarded from the stores
            for c in range(CB):
                memcpy(o + c * hw + p0, tile + c * 16, 16 * sizeof(float))
        else:
            for c in range(CB):
                copy_floats(o + c * hw + p0, tile + c * 16, n)
        p0 = p0 + 16


cdef void cb_conv3x3(crfloat T, Py_ssize_t WP, Py_ssize_t sh, Py_ssize_t sw,
                     const Py_ssize_t* offs, crfloat w, crfloat b, float lo, float hi,
                     rfloat Y, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Y[oy, ox, c] = act(sum over the taps t of w[t, c] * T[oy*sh, ox*sw, c] shifted by
    offs[t], + b[c]) on the padded channels-last block T (rows WP pixels long)."""
    cdef Py_ssize_t oy, ox, o0 = offs[0], o1 = offs[1], o2 = offs[2], o3 = offs[3]
    cdef Py_ssize_t o4 = offs[4], o5 = offs[5], o6 = offs[6], o7 = offs[7], o8 = offs[8]
    cdef const float* s
    cdef float* y
    cdef float v
    cdef int c
    for oy in range(OH):
        for ox in range(OW):
            s = T + (oy * sh * WP + ox * sw) * CB
            y = Y + (oy * OW + ox) * CB
            for c in range(CB):
                v = ((w[c] * s[o0 + c] + w[CB + c] * s[o1 + c] + w[2 * CB + c] * s[o2 + c])
                     + (w[3 * CB + c] * s[o3 + c] + w[4 * CB + c] * s[o4 + c]
                        + w[5 * CB + c] * s[o5 + c])
                     + (w[6 * CB + c] * s[o6 + c] + w[7 * CB + c] * s[o7 + c]
                        + w[8 * CB + c] * s[o8 + c])) + b[c]
                y[c] = min(max(v, lo), hi)


cdef Py_ssize_t cb_thread_floats(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                                 int kh, int kw, int sh, int sw, int dh,
                                 int dw) noexcept nogil:
    """Floats of one thread's buffer in f32_conv2d_depthwise_cb: T0, T, Y and a tile."""
    cdef Py_ssize_t HP = (OH - 1) * sh + (kh - 1) * dh + 1
    cdef Py_ssize_t WP = (OW - 1) * sw + (kw - 1) * dw + 1
    return (round_up(H * W, 16) * CB + HP * WP * CB + round_up(OH * OW, 16) * CB + 16 * CB)


def cb_work_floats(Py_ssize_t items, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                   int kh, int kw, int sh, int sw, int dh, int dw, int num_threads):
    """Floats of the work buffer f32_conv2d_depthwise_cb needs (items: images x channel
    blocks), 64-byte aligned."""
    return max(1, min(num_threads, items)) * cb_thread_floats(H, W, OH, OW, kh, kw, sh, sw, dh,
                                                              dw)


def f32_conv2d_depthwise_cb(const float[:, :, :, ::1] x, const float[:, :, ::1] wcb, bias,
                            float[:, :, :, ::1] out, int kh, int kw, int sh, int sw, int pt,
                            int pl, int dh, int dw, ce_act_t act, int num_threads,
                            float[::1] work):
    """out = depthwise conv2d(x, w) for a kh x kw kernel, multiplier 1 and C a multiple of
    CB, in blocks of CB channels: wcb[C // CB, kh*kw, CB] holds w[cb*CB + c, 0, u, v] at
    [cb, u*kw + v, c] (channel_blocks in engine/ops/depthwise.py). 3x3 kernels keep their
    nine weight vectors in registers; others run four outputs per weight load.

    Output sizes are the caller's (engine.shapes); padding beyond pt/pl is implied by them.
    work: cb_work_floats(...) floats from a 64-byte boundary (see f32_conv2d_depthwise).
    """
    check_act(act, 1)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or kh < 1 or kw < 1 or pt < 0 or pl < 0:
        raise ValueError("kernel sizes, strides and dilations must be positive and pads "
                         "non-negative")
    if C % CB:
        raise ValueError(f"x must have a multiple of {CB} channels, got {C}")
    if out.shape[0] != N or out.shape[1] != C:
        raise ValueError(f"out must have shape (N={N}, C={C}, OH, OW), got {tuple(out.shape)}")
    cdef int ntaps = kh * kw
    if wcb.shape[0] != C // CB or wcb.shape[1] != ntaps or wcb.shape[2] != CB:
        raise ValueError(f"wcb must have shape ({C // CB}, {ntaps}, {CB}), got "
                         f"{tuple(wcb.shape)[:3]}")
    cdef const float[::1] b
    cdef float zeros[CB]
    memset(zeros, 0, sizeof(zeros))
    # without a bias every block reads the same CB zeros: bstep 0
    cdef const float* bptr = zeros
    cdef Py_ssize_t bstep = 0
    if bias is not None:
        b = bias
        if b.shape[0] != C:
            raise ValueError(f"bias must have {C} values, got {b.shape[0]}")
        bstep = CB
        bptr = &b[0]
    if H == 0 or W == 0:
        raise ValueError(f"x must have non-empty spatial dimensions, got {tuple(x.shape)}")
    if N == 0 or C == 0 or OH <= 0 or OW <= 0:
        return
    cdef float lo_act, hi_act
    act_bounds(act, &lo_act, &hi_act)
    # the padded block the output reads, and its rows [ra, rb) and columns [ca, cb) inside x
    cdef Py_ssize_t HP = (OH - 1) * sh + (kh - 1) * dh + 1
    cdef Py_ssize_t WP = (OW - 1) * sw + (kw - 1) * dw + 1
    cdef Py_ssize_t ra = min(pt, HP), rb = max(ra, min(HP, pt + H))
    cdef Py_ssize_t ca = min(pl, WP), cb_ = max(ca, min(WP, pl + W))
    offs_array = np.empty(ntaps, np.intp)
    cdef Py_ssize_t[::1] offs = offs_array
    cdef Py_ssize_t u, v
    for u in range(kh):
        for v in range(kw):
            offs[u * kw + v] = (u * dh * WP + v * dw) * CB
    # T0: the block channels-last, T: padded, Y: the output channels-last, then a transpose
    # tile; T0 and Y rounded up to whole tiles of 16 pixels
    cdef Py_ssize_t t0_floats = round_up(H * W, 16) * CB, t_floats = HP * WP * CB
    cdef Py_ssize_t y_floats = round_up(OH * OW, 16) * CB
    cdef Py_ssize_t thread_floats = cb_thread_floats(H, W, OH, OW, kh, kw, sh, sw, dh, dw)
    cdef Py_ssize_t nblocks = C // CB, items = N * nblocks
    check_scratch(work, max(1, min(num_threads, items)) * thread_floats, "work")
    cdef BlocksJob j
    j.x, j.out, j.w, j.bias, j.bstep = &x[0, 0, 0, 0], &out[0, 0, 0, 0], &wcb[0, 0, 0], bptr, bstep
    j.offs, j.bufs, j.thread_floats = &offs[0], &work[0], thread_floats
    j.t0_floats, j.t_floats, j.y_floats = t0_floats, t_floats, y_floats
    j.H, j.W, j.OH, j.OW, j.WP, j.nblocks = H, W, OH, OW, WP, nblocks
    j.ra, j.rb, j.ca, j.cb, j.pt, j.pl = ra, rb, ca, cb_, pt, pl
    j.sh, j.sw, j.kw, j.ntaps = sh, sw, kw, ntaps
    j.lo_act, j.hi_act = lo_act, hi_act
    memset(j.zeroed, 0, sizeof(j.zeroed))
    with nogil:
        ce_pool_for(num_threads, items, _channel_blocks, &j)


ctypedef struct BlocksJob:
    const float* x
    float* out
    const float* w
    const float* bias
    Py_ssize_t bstep
    const Py_ssize_t* offs
    float* bufs
    Py_ssize_t thread_floats, t0_floats, t_floats, y_floats
    Py_ssize_t H, W, OH, OW, WP, nblocks, ra, rb, ca, cb, pt, pl
    int sh, sw, kw, ntaps
    float lo_act, hi_act
    char zeroed[CE_POOL_MAX_THREADS]


cdef void _channel_blocks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Blocks [lo, hi) of CB channels of all images. Each thread zeroes its buffer the first
    time it takes a piece (it then sits in its own core's cache; zeroed by the calling thread,
    two threads' buffers took as long as the 576ch 14x14 layer); blocks write only the inside
    of T, so its padding stays zero."""
    cdef BlocksJob* j = <BlocksJob*>job
    cdef float* T0 = j.bufs + thread * j.thread_floats
    cdef float* T = T0 + j.t0_floats
    cdef float* Y = T + j.t_floats
    cdef Py_ssize_t it, r, H = j.H, W = j.W, OH = j.OH, OW = j.OW, WP = j.WP, nb = j.nblocks
    if not j.zeroed[thread]:
        memset(T0, 0, j.thread_floats * sizeof(float))
        j.zeroed[thread] = 1
    for it in range(lo, hi):
        cb_transpose_in(T0, j.x + it * CB * H * W, H * W, Y + j.y_floats)
        if j.cb > j.ca:
            for r in range(j.ra, j.rb):
                copy_floats(T + (r * WP + j.ca) * CB,
                            T0 + ((r - j.pt) * W + j.ca - j.pl) * CB, (j.cb - j.ca) * CB)
        if j.ntaps == 9 and j.kw == 3:
            cb_conv3x3(T, WP, j.sh, j.sw, j.offs, j.w + (it % nb) * 9 * CB,
                       j.bias + (it % nb) * j.bstep, j.lo_act, j.hi_act, Y, OH, OW)
        else:
            ce_dw_cb_taps(T, WP, j.sh, j.sw, j.offs, j.ntaps, j.w + (it % nb) * j.ntaps * CB,
                          j.bias + (it % nb) * j.bstep, j.lo_act, j.hi_act, Y, OH, OW)
        cb_transpose_out(j.out + it * CB * OH * OW, Y, OH * OW, Y + j.y_floats)
