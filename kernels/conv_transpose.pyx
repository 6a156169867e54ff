# Transposed 2-D convolution as GEMM + col2im: the backward-data pass of a convolution.
#
# Input pixel (iy, ix) of channel ci contributes w[ci, co, u, v] * x[ci, iy, ix] to output
# pixel (iy*sh - pt + u*dh, ix*sw - pl + v*dw) of channel co. Per image and group, with the
# weight stored as W_g[Cin_g, Cout_g*kh*kw] (its natural layout), all products are one GEMM
#     cols[(co*kh + u)*kw + v, iy*W + ix] = (W_g^T @ x_g)[...]          (x_g as [Cin_g, H*W])
# and col2im scatter-adds each row of cols, shifted by (u*dh, v*dw), into output plane co.
#
# Work items are (image, group, block of output channels). A block's rows of W_g^T are
# contiguous columns of W_g, so an item computes only its own rows of cols, in chunks of input
# rows to bound the buffer, and is the only writer of its output planes. Every output element
# is therefore accumulated by one thread in one fixed order (chunk, channel, u, v, iy, ix), with
# no atomics, and the block and chunk sizes come from the shapes alone: results are
# bit-identical for any thread count.
from cython.parallel cimport prange, threadid
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _blas cimport sgemm_rm
from _epilogue cimport bias_act_row
from _im2col cimport ceil_div_nonneg


cdef void col2im_rows(const float* cols, Py_ssize_t nco, Py_ssize_t W,
                      Py_ssize_t iy0, Py_ssize_t iy1,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      float* outp, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """outp[co, oy, ox] += cols[(co*kh + u)*kw + v, (iy - iy0)*W + ix] for input rows
    iy0 <= iy < iy1, where oy = iy*sh - pt + u*dh, ox = ix*sw - pl + v*dw."""
    cdef Py_ssize_t ncols = (iy1 - iy0) * W
    cdef Py_ssize_t co, u, v, r, iy, oy, ox0, lo, hi, j, n
    cdef const float* src
    cdef float* dst
    cdef float* plane
    for co in range(nco):
        plane = outp + co * OH * OW
        for u in range(kh):
            for v in range(kw):
                r = (co * kh + u) * kw + v
                # input columns ix whose output column ox = ix*sw + ox0 lies in [0, OW)
                ox0 = v * dw - pl
                lo = ceil_div_nonneg(-ox0, sw)
                hi = ceil_div_nonneg(OW - ox0, sw)
                if hi > W:
                    hi = W
                if lo >= hi:
                    continue
                n = hi - lo
                for iy in range(iy0, iy1):
                    oy = iy * sh - pt + u * dh
                    if oy < 0 or oy >= OH:
                        continue
                    src = cols + r * ncols + (iy - iy0) * W + lo
                    dst = plane + oy * OW + lo * sw + ox0
                    if sw == 1:
                        for j in range(n):
                            dst[j] = dst[j] + src[j]
                    elif sw == 2:
                        for j in range(n):
                            dst[2 * j] = dst[2 * j] + src[j]
                    else:
                        for j in range(n):
                            dst[j * sw] = dst[j * sw] + src[j]


def f32_conv_transpose2d_col2im(const float[:, :, :, ::1] x, const float[:, ::1] w2d, bias,
                                float[:, :, :, ::1] out,
                                int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                                int groups, int co_block, int rows_per_chunk, int act,
                                int num_threads):
    """out = conv_transpose2d(x, w) for w2d[Cin, Cout_g*kh*kw] (the torch weight
    (Cin, Cout_g, kh, kw) flattened); shapes are checked by the caller (engine.ops)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, kk = kh * kw
    cdef Py_ssize_t ldw = Kg * kk
    cdef Py_ssize_t nblocks = (Kg + co_block - 1) // co_block
    cdef Py_ssize_t nchunks = (H + rows_per_chunk - 1) // rows_per_chunk
    cdef Py_ssize_t items = N * groups * nblocks
    cdef Py_ssize_t buf_floats = co_block * kk * rows_per_chunk * W
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef float* buf = <float*>malloc(num_threads * buf_floats * sizeof(float))
    if buf == NULL:
        raise MemoryError("col2im column buffer")
    cdef Py_ssize_t it, n, g, blk, c0, nco, ch, iy0, iy1, ncols, k
    cdef float* cols
    cdef float* outp
    try:
        for it in prange(items, nogil=True, num_threads=num_threads, schedule="static"):
            n = it // (groups * nblocks)
            g = (it // nblocks) % groups
            blk = it % nblocks
            c0 = blk * co_block
            nco = min(co_block, Kg - c0)
            cols = buf + threadid() * buf_floats
            outp = &out[n, g * Kg + c0, 0, 0]
            memset(outp, 0, nco * OH * OW * sizeof(float))
            for ch in range(nchunks):
                iy0 = ch * rows_per_chunk
                iy1 = min(iy0 + rows_per_chunk, H)
                ncols = (iy1 - iy0) * W
                # cols[nco*kk, ncols] = W_g[:, c0*kk:(c0+nco)*kk]^T @ x_g[:, iy0*W:iy1*W]
                sgemm_rm(True, False, nco * kk, ncols, Cg, 1.0, &w2d[g * Cg, c0 * kk], ldw,
                         &x[n, g * Cg, iy0, 0], H * W, 0.0, cols, ncols)
                col2im_rows(cols, nco, W, iy0, iy1, kh, kw, sh, sw, pt, pl, dh, dw,
                            outp, OH, OW)
            for k in range(nco):
                bias_act_row(outp + k * OH * OW, OH * OW,
                             bptr[g * Kg + c0 + k] if bptr != NULL else 0, act)
    finally:
        free(buf)
