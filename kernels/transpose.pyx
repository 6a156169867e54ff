# Batched matrix transpose, dst[b, c, r] = src[b, r, c]: what a Transpose of a float32 tensor
# reduces to when it swaps two runs of adjacent axes (NCHW <-> NHWC around a channels-last
# block, a matrix's two axes). 16 x 16 tiles in registers (_transpose16.h), so every read and
# write is a whole 64-byte row of a tile; the edges one float at a time. Exact copies, split
# over tiles: the result never depends on the thread count.
from cython.parallel cimport prange

cdef extern from "_transpose16.h" nogil:
    void ce_transpose16(const float* src, Py_ssize_t sstride, float* dst, Py_ssize_t dstride)


def f32_transpose_batched(const float[:, :, ::1] src, float[:, :, ::1] dst, int num_threads):
    """dst[b, c, r] = src[b, r, c] for src (B, R, C) and dst (B, C, R)."""
    cdef Py_ssize_t B = src.shape[0], R = src.shape[1], C = src.shape[2]
    if dst.shape[0] != B or dst.shape[1] != C or dst.shape[2] != R:
        raise ValueError(f"dst must have shape ({B}, {C}, {R}), got "
                         f"({dst.shape[0]}, {dst.shape[1]}, {dst.shape[2]})")
    if B == 0 or R == 0 or C == 0:
        return
    cdef Py_ssize_t tr = (R + 15) // 16, tc = (C + 15) // 16, items = B * tr * tc
    cdef Py_ssize_t it, b, i, j, r0, c0, r, c, nr, nc
    cdef const float* s
    cdef float* d
    for it in prange(items, nogil=True, num_threads=<int>max(1, min(num_threads, items)),
                     schedule="static"):
        b = it // (tr * tc)
        i = (it // tc) % tr
        j = it % tc
        r0, c0 = i * 16, j * 16
        s = &src[b, 0, 0] + r0 * C + c0
        d = &dst[b, 0, 0] + c0 * R + r0
        nr, nc = min(16, R - r0), min(16, C - c0)
        if nr == 16 and nc == 16:
            ce_transpose16(s, C, d, R)
        else:
            for r in range(nr):
                for c in range(nc):
                    d[c * R + r] = s[r * C + c]
