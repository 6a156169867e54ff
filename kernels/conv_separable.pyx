# Spatially separable convolution for layers with one input channel per group (depthwise
# layers, with any channel multiplier, and single-channel images).
#
# A kh x kw kernel slice of rank R is a sum of R outer products, w = sum_r col_r row_r^T
# (the plan gets them from an SVD). For each term, the kh x 1 pass
#     t[j] = sum_u col_r[u] * x[iy(u), j - pl]          (one row, horizontally padded)
# is followed by the 1 x kw pass
#     out[oy, ox] += sum_v row_r[v] * t[ox*sw + v*dw]
# so an output costs R*(kh + kw) multiply-adds instead of kh*kw: 2.5x fewer for a rank-1 5x5.
# The intermediate is one padded row per thread, kept in L1. Work items are blocks of output
# rows of one (image, channel) plane; every output row is computed by the same instructions
# whatever the blocking, so results do not depend on the thread count.
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _epilogue cimport bias_act_row, ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()


cdef inline void axpy_taps(float* y, const float* x, Py_ssize_t step, const float* c,
                           Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """y[j] += sum_{i < m} c[i] * x[j + i*step] for 1 <= m <= 4: four taps per pass over y, so
    the accumulator row is loaded and stored once per four taps instead of once per tap."""
    cdef Py_ssize_t j
    cdef float c0 = c[0], c1 = c[1] if m > 1 else 0
    cdef float c2 = c[2] if m > 2 else 0, c3 = c[3] if m > 3 else 0
    if m == 4:
        for j in range(n):
            y[j] = y[j] + (c0 * x[j] + c1 * x[j + step] + c2 * x[j + 2 * step]
                           + c3 * x[j + 3 * step])
    elif m == 3:
        for j in range(n):
            y[j] = y[j] + (c0 * x[j] + c1 * x[j + step] + c2 * x[j + 2 * step])
    elif m == 2:
        for j in range(n):
            y[j] = y[j] + (c0 * x[j] + c1 * x[j + step])
    else:
        for j in range(n):
            y[j] = y[j] + c0 * x[j]


cdef void separable_row(const float* plane, Py_ssize_t H, Py_ssize_t W,
                        const float* colw, const float* roww, Py_ssize_t R, Py_ssize_t K,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t k, Py_ssize_t oy,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t OW, Py_ssize_t span,
                        float* t, float* orow) noexcept nogil:
    """orow[ox] = sum over the R terms of output channel k, for output row oy."""
    cdef Py_ssize_t r, u, v, ox
    # t[j] holds input column j - pl; only [j0, j0 + n) overlaps the input
    cdef Py_ssize_t j0 = min(pl, span), j1 = min(pl + W, span)
    cdef Py_ssize_t n = j1 - j0 if j1 > j0 else 0
    # the taps u0 <= u < u1 read rows iy0 + u*dh inside the input (a contiguous range)
    cdef Py_ssize_t iy0 = oy * sh - pt
    cdef Py_ssize_t u0 = 0 if iy0 >= 0 else (-iy0 + dh - 1) // dh
    cdef Py_ssize_t u1 = 0 if H - 1 - iy0 < 0 else min(kh, (H - 1 - iy0) // dh + 1)
    cdef float rv
    cdef const float* cw
    cdef const float* tv
    memset(t, 0, j0 * sizeof(float))
    memset(t + j0 + n, 0, (span - j0 - n) * sizeof(float))
    memset(orow, 0, OW * sizeof(float))
    for r in range(R):
        # the kh x 1 pass into t
        memset(t + j0, 0, n * sizeof(float))
        cw = colw + (r * K + k) * kh
        for u in range(u0, u1, 4):
            axpy_taps(t + j0, plane + (iy0 + u * dh) * W + j0 - pl, dh * W, cw + u,
                      min(4, u1 - u), n)
        # the 1 x kw pass from t into the output row
        cw = roww + (r * K + k) * kw
        if sw == 1:
            for v in range(0, kw, 4):
                axpy_taps(orow, t + v * dw, dw, cw + v, min(4, kw - v), OW)
        else:
            for v in range(kw):
                rv = cw[v]
                tv = t + v * dw
                for ox in range(OW):
                    orow[ox] = orow[ox] + rv * tv[ox * sw]


def f32_conv2d_separable(const float[:, :, :, ::1] x, const float[:, :, ::1] colw,
                         const float[:, :, ::1] roww, bias, float[:, :, :, ::1] out,
                         int sh, int sw, int pt, int pl, int dh, int dw, int rows_per_block,
                         ce_act_t act, int num_threads):
    """out = conv2d(x, w, groups=C) with w[k, 0] = sum_r outer(colw[r, k], roww[r, k]);
    colw (R, K, kh), roww (R, K, kw), K a multiple of C. Shapes are checked by the caller."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t R = colw.shape[0], kh = colw.shape[2], kw = roww.shape[2]
    cdef Py_ssize_t M = K // C
    # columns of the padded row the horizontal pass reads
    cdef Py_ssize_t span = (OW - 1) * sw + (kw - 1) * dw + 1
    cdef Py_ssize_t nblocks = (OH + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t items = N * K * nblocks
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef float* buf = <float*>malloc(num_threads * span * sizeof(float))
    if buf == NULL:
        raise MemoryError("separable row buffer")
    # images and channels may lie apart (views); rows are whole planes
    cdef SeparableJob j = SeparableJob(&x[0, 0, 0, 0], x.strides[0] // 4, x.strides[1] // 4,
                                       &colw[0, 0, 0], &roww[0, 0, 0], bptr, &out[0, 0, 0, 0],
                                       out.strides[0] // 4, out.strides[1] // 4, buf, span, H,
                                       W, OH, OW, R, K, M, kh, kw, nblocks, rows_per_block, sh,
                                       sw, pt, pl, dh, dw, act)
    try:
        with nogil:
            ce_pool_for(num_threads, items, _separable_rows, &j)
    finally:
        free(buf)


ctypedef struct SeparableJob:
    const float* x
    Py_ssize_t x_img, x_chan
    const float* colw
    const float* roww
    const float* bias
    float* out
    Py_ssize_t out_img, out_chan
    float* bufs                 # per thread: span floats
    Py_ssize_t span, H, W, OH, OW, R, K, M, kh, kw, nblocks, rows_per_block
    Py_ssize_t sh, sw, pt, pl, dh, dw
    ce_act_t act


cdef void _separable_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): blocks of output rows of one channel, ordered (image, channel, block)."""
    cdef SeparableJob* j = <SeparableJob*>job
    cdef Py_ssize_t it, n, k, blk, oy
    cdef float* orow
    for it in range(lo, hi):
        n = it // (j.K * j.nblocks)
        k = (it // j.nblocks) % j.K
        blk = it % j.nblocks
        for oy in range(blk * j.rows_per_block, min((blk + 1) * j.rows_per_block, j.OH)):
            orow = j.out + n * j.out_img + k * j.out_chan + oy * j.OW
            separable_row(j.x + n * j.x_img + (k // j.M) * j.x_chan, j.H, j.W, j.colw, j.roww,
                          j.R, j.K, j.kh, j.kw, k, oy, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw, j.OW,
                          j.span, j.bufs + thread * j.span, orow)
            bias_act_row(orow, j.OW, j.bias[k] if j.bias != NULL else 0, j.act)
