# Deformable convolution (DCN v1 and v2) as bilinear im2col + sgemm.
#
# Tap (u, v) of output pixel (oy, ox) reads the input at the fractional position
#     y = oy*sh - pt + u*dh + dy,    x = ox*sw - pl + v*dw + dx
# where (dy, dx) is that tap's learned offset, bilinearly interpolated with zeros outside the
# input, and (v2) scaled by that tap's mask. The sampling position is shared by the channels of
# one offset group, so the input is first copied channels-last with a one-pixel zero border:
# then the four corners of a sample are four contiguous channel vectors at fixed distances
# from one index, every corner of a position in (-1, H) x (-1, W) lies inside the copy, and
# the channel loop is a branch-free, vectorisable axpy of four rows.
# The columns are pixel-major, cols[pixel, (u*kw + v)*Cg + c] (the weights are permuted to
# match once, in the plan), and one GEMM per chunk of output rows gives
#     out[n, g*Kg:(g+1)*Kg, rows] = W_g[Kg, kh*kw*Cg] @ cols[rows*OW, kh*kw*Cg]^T
# Work items are (image, group, chunk); the chunking depends on the shapes only, so every
# output element is computed by the same instructions for any thread count.
from cython.parallel cimport prange, threadid
from libc.math cimport floorf
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _blas cimport sgemm_rm
from _epilogue cimport bias_act_row


cdef void to_padded_channels_last(const float* src, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                  Py_ssize_t r, float* dst) noexcept nogil:
    """Row r of the (H+2, W+2, C) zero-bordered channels-last copy of one (C, H, W) image."""
    cdef Py_ssize_t Wp = W + 2, c, ix
    cdef float* row = dst + r * Wp * C
    if r == 0 or r == H + 1:
        memset(row, 0, Wp * C * sizeof(float))
        return
    memset(row, 0, C * sizeof(float))
    memset(row + (W + 1) * C, 0, C * sizeof(float))
    for c in range(C):
        for ix in range(W):
            row[(ix + 1) * C + c] = src[(c * H + r - 1) * W + ix]


cdef void bilinear_columns(const float* xp, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                           const float* off, const float* msk, Py_ssize_t ostride,
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t OW, Py_ssize_t oy0, Py_ssize_t oy1,
                           Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t cg0, Py_ssize_t Cg,
                           float* cols) noexcept nogil:
    """cols[p, t*Cg + c - cg0] for the channels c0 <= c < c1 of one offset group, every tap t
    and the output pixels p of rows oy0 <= oy < oy1.

    xp: the zero-bordered channels-last image (H+2, W+2, C). off: the offset group's 2*kh*kw
    planes (dy of tap t at plane 2t, dx at 2t + 1), msk: its kh*kw mask planes or NULL; planes
    are ostride floats apart.
    """
    cdef Py_ssize_t Wp = W + 2, kdim = kh * kw * Cg, nc = c1 - c0
    cdef Py_ssize_t t, u, v, oy, ox, c, base
    cdef const float* offy
    cdef const float* offx
    cdef const float* s
    cdef float* dst
    cdef float y, x, fy0, fx0, ly, lx, hy, hx, m, w00, w01, w10, w11
    for oy in range(oy0, oy1):
        for ox in range(OW):
            for t in range(kh * kw):
                u = t // kw
                v = t % kw
                offy = off + 2 * t * ostride + oy * OW + ox
                offx = offy + ostride
                y = <float>(oy * sh - pt + u * dh) + offy[0]
                x = <float>(ox * sw - pl + v * dw) + offx[0]
                dst = cols + ((oy - oy0) * OW + ox) * kdim + t * Cg + c0 - cg0
                # written so that a NaN position also lands here
                if not (y > -1 and y < H and x > -1 and x < W):
                    memset(dst, 0, nc * sizeof(float))
                    continue
                fy0 = floorf(y)
                fx0 = floorf(x)
                ly = y - fy0
                lx = x - fx0
                hy = 1 - ly
                hx = 1 - lx
                m = msk[t * ostride + oy * OW + ox] if msk != NULL else 1
                w00 = hy * hx * m
                w01 = hy * lx * m
                w10 = ly * hx * m
                w11 = ly * lx * m
                # corner (floor y, floor x) sits at row floor(y) + 1, column floor(x) + 1 of xp
                base = ((<Py_ssize_t>fy0 + 1) * Wp + <Py_ssize_t>fx0 + 1) * C
                s = xp + base
                for c in range(c0, c1):
                    dst[c - c0] = (w00 * s[c] + w01 * s[c + C]
                                   + w10 * s[c + Wp * C] + w11 * s[c + Wp * C + C])


def f32_deform_conv2d(const float[:, :, :, ::1] x, const float[:, :, :, ::1] offset, mask,
                      const float[:, ::1] w2d, bias, float[:, :, :, ::1] out,
                      int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                      int groups, int offset_groups, int rows_per_chunk, int act,
                      int num_threads):
    """out = deform_conv2d(x, offset, w, mask) for w2d[K, kh*kw*Cg] (taps outer, channels
    inner); mask is None (v1) or float32 (N, offset_groups*kh*kw, OH, OW). Shapes are checked
    by the caller (engine.ops.deform)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, taps = kh * kw, kdim = Cg * taps
    cdef Py_ssize_t Co = C // offset_groups
    cdef Py_ssize_t nchunks = (OH + rows_per_chunk - 1) // rows_per_chunk
    cdef Py_ssize_t items = N * groups * nchunks
    cdef Py_ssize_t chunk_cols = rows_per_chunk * OW
    cdef Py_ssize_t ostride = OH * OW
    cdef Py_ssize_t image = (H + 2) * (W + 2) * C
    cdef const float[::1] b
    cdef const float* bptr = NULL
    cdef const float[:, :, :, ::1] mview
    cdef const float* mbase = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if mask is not None:
        mview = mask
        mbase = &mview[0, 0, 0, 0]
    cdef int copy_threads = <int>max(1, min(num_threads, N * (H + 2)))
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef float* xp = <float*>malloc(N * image * sizeof(float))
    cdef float* colbuf = <float*>malloc(num_threads * kdim * chunk_cols * sizeof(float))
    if xp == NULL or colbuf == NULL:
        free(xp)
        free(colbuf)
        raise MemoryError("deformable convolution buffers")
    cdef Py_ssize_t it, n, g, ch, oy0, oy1, ncols, k, og, c0, c1
    cdef float* cols
    cdef float* dst
    cdef const float* msk
    try:
        for it in prange(N * (H + 2), nogil=True, num_threads=copy_threads, schedule="static"):
            n = it // (H + 2)
            to_padded_channels_last(&x[n, 0, 0, 0], C, H, W, it % (H + 2), xp + n * image)
        for it in prange(items, nogil=True, num_threads=num_threads, schedule="static"):
            n = it // (groups * nchunks)
            g = (it // nchunks) % groups
            ch = it % nchunks
            oy0 = ch * rows_per_chunk
            oy1 = min(oy0 + rows_per_chunk, OH)
            ncols = (oy1 - oy0) * OW
            cols = colbuf + threadid() * kdim * chunk_cols
            # the offset groups that share channels with this convolution group
            for og in range((g * Cg) // Co, ((g + 1) * Cg - 1) // Co + 1):
                msk = NULL
                if mbase != NULL:
                    msk = mbase + (n * offset_groups + og) * taps * ostride
                c0 = max(g * Cg, og * Co)
                c1 = min((g + 1) * Cg, (og + 1) * Co)
                bilinear_columns(xp + n * image, C, H, W, &offset[n, og * 2 * taps, 0, 0], msk,
                                 ostride, kh, kw, sh, sw, pt, pl, dh, dw, OW, oy0, oy1,
                                 c0, c1, g * Cg, Cg, cols)
            dst = &out[n, g * Kg, oy0, 0]
            sgemm_rm(False, True, Kg, ncols, kdim, 1.0, &w2d[g * Kg, 0], kdim,
                     cols, kdim, 0.0, dst, OH * OW)
            for k in range(Kg):
                bias_act_row(dst + k * OH * OW, ncols,
                             bptr[g * Kg + k] if bptr != NULL else 0, act)
    finally:
        free(xp)
        free(colbuf)
