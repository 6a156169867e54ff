# im2col + sgemm convolution for any kernel size, stride, padding, dilation and groups.
#
# The column matrix of one image and group has Cg*kh*kw rows and OH*OW columns; it is built
# in chunks so the buffer stays bounded (the plan chooses the chunk so that it holds about a
# MB): whole output rows, or, when one row is already too wide (1-D convolutions run as 2-D
# with OH = 1), pieces of a single row. Either way a chunk's outputs are contiguous within
# each output channel, and each chunk is one GEMM
#     out[n, g*Kg:(g+1)*Kg, chunk] = W_g[Kg, Cg*kh*kw] @ cols[Cg*kh*kw, chunk]
# followed by the bias/activation output step on the same, still cached, rows.
# Work items are (image, group, chunk); the chunking depends on the shapes only, never on the
# thread count, so every output element is computed by the same sgemm call for any count.
from cython.parallel cimport prange, threadid
from libc.stdlib cimport malloc, free

from _blas cimport sgemm_rm
from _epilogue cimport bias_act_row
from _im2col cimport im2col_rows


def f32_conv2d_im2col(const float[:, :, :, ::1] x, const float[:, ::1] w2d, bias,
                      float[:, :, :, ::1] out,
                      int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                      int groups, int rows_per_chunk, int cols_per_chunk, int act,
                      int num_threads):
    """out = conv2d(x, w) for w2d[K, Cg*kh*kw]; shapes are checked by the caller (engine.ops).
    Chunks are rows_per_chunk whole rows, or, with rows_per_chunk == 1, cols_per_chunk
    columns of one row."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, kdim = Cg * kh * kw
    if rows_per_chunk > 1 or cols_per_chunk > OW:
        cols_per_chunk = OW
    cdef Py_ssize_t row_pieces = (OW + cols_per_chunk - 1) // cols_per_chunk
    cdef Py_ssize_t nchunks = (OH + rows_per_chunk - 1) // rows_per_chunk * row_pieces
    cdef Py_ssize_t items = N * groups * nchunks
    cdef Py_ssize_t chunk_cols = rows_per_chunk * cols_per_chunk
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef float* buf = <float*>malloc(num_threads * kdim * chunk_cols * sizeof(float))
    if buf == NULL:
        raise MemoryError("im2col column buffer")
    cdef Py_ssize_t it, n, g, ch, oy0, oy1, ox0, ox1, ncols, k
    cdef float* cols
    cdef float* dst
    try:
        for it in prange(items, nogil=True, num_threads=num_threads, schedule="static"):
            n = it // (groups * nchunks)
            g = (it // nchunks) % groups
            ch = it % nchunks
            oy0 = (ch // row_pieces) * rows_per_chunk
            oy1 = min(oy0 + rows_per_chunk, OH)
            ox0 = (ch % row_pieces) * cols_per_chunk
            ox1 = min(ox0 + cols_per_chunk, OW)
            ncols = (oy1 - oy0) * (ox1 - ox0)
            cols = buf + threadid() * kdim * chunk_cols
            im2col_rows(&x[n, g * Cg, 0, 0], H * W, Cg, H, W, kh, kw, sh, sw, pt, pl, dh, dw,
                        oy0, oy1, ox0, ox1, cols)
            dst = &out[n, g * Kg, oy0, ox0]
            sgemm_rm(False, False, Kg, ncols, kdim, 1.0, &w2d[g * Kg, 0], kdim,
                     cols, ncols, 0.0, dst, OH * OW)
            for k in range(Kg):
                bias_act_row(dst + k * OH * OW, ncols,
                             bptr[g * Kg + k] if bptr != NULL else 0, act)
    finally:
        free(buf)
