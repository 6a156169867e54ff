# 1x1, stride-1, unpadded convolution: for each image and group one GEMM on the input itself
#     out[n, g*Kg:(g+1)*Kg, :] = W_g[Kg, Cg] @ x[n, g*Cg:(g+1)*Cg, :]     (pixels flattened)
# The pixel axis is cut into fixed-width column blocks (independent of the thread count) so
# two threads share one image and results stay bit-identical.
from cython.parallel cimport prange

from _blas cimport sgemm_rm
from _epilogue cimport bias_act_row


def f32_conv2d_pointwise(const float[:, :, ::1] x, const float[:, ::1] w2d, bias,
                         float[:, :, ::1] out, int groups, int block, int act, int num_threads):
    """x[N, C, P] -> out[N, K, P] with w2d[K, C/groups]; shapes checked by the caller."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], K = out.shape[1]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups
    cdef Py_ssize_t nblocks = (P + block - 1) // block
    cdef Py_ssize_t items = N * groups * nblocks
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef Py_ssize_t it, n, g, p0, ncols, k
    cdef float* dst
    for it in prange(items, nogil=True, num_threads=num_threads, schedule="static"):
        n = it // (groups * nblocks)
        g = (it // nblocks) % groups
        p0 = (it % nblocks) * block
        ncols = min(block, P - p0)
        dst = &out[n, g * Kg, p0]
        sgemm_rm(False, False, Kg, ncols, Cg, 1.0, &w2d[g * Kg, 0], Cg,
                 &x[n, g * Cg, p0], P, 0.0, dst, P)
        for k in range(Kg):
            bias_act_row(dst + k * P, ncols, bptr[g * Kg + k] if bptr != NULL else 0, act)
