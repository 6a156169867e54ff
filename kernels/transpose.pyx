# Batched matrix transpose, dst[b, c, r] = src[b, r, c]: what a Transpose of a float32 tensor
# reduces to when it swaps two runs of adjacent axes (NCHW <-> NHWC around a channels-last
# block, a matrix's two axes). Square tiles in registers (_transpose16.h), a tile row one
# vector register (16 x 16 with AVX-512, 8 x 8 with AVX2: 24 against 12 GB/s for the 16 x 16
# tile there), so every read and write is a whole register; the edges one float at a time.
# Exact copies, split over tiles (the threads of the engine's pool, kernels/_pool.h, take them
# in ranges): the result never depends on the thread count.
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()

cdef extern from *:
    """
    #include "_transpose16.h"
    /* a 16-float row is two registers without AVX-512, and the 16 x 16 tile spilled */
    #if defined(__AVX512F__)
    #define CE_TT 16
    #define ce_transpose_tile ce_transpose16
    #else
    #define CE_TT 8
    #define ce_transpose_tile ce_transpose8
    #endif
    """
    int CE_TT
    void ce_transpose_tile(const float* src, Py_ssize_t sstride, float* dst,
                           Py_ssize_t dstride) nogil


def f32_transpose_batched(const float[:, :, ::1] src, float[:, :, ::1] dst, int num_threads):
    """dst[b, c, r] = src[b, r, c] for src (B, R, C) and dst (B, C, R)."""
    cdef Py_ssize_t B = src.shape[0], R = src.shape[1], C = src.shape[2]
    if dst.shape[0] != B or dst.shape[1] != C or dst.shape[2] != R:
        raise ValueError(f"dst must have shape ({B}, {C}, {R}), got "
                         f"({dst.shape[0]}, {dst.shape[1]}, {dst.shape[2]})")
    if B == 0 or R == 0 or C == 0:
        return
    # matrices may lie apart (views); rows within one are whole
    cdef TransposeJob j = TransposeJob(&src[0, 0, 0], src.strides[0] // 4, &dst[0, 0, 0],
                                       dst.strides[0] // 4, R, C, (R + CE_TT - 1) // CE_TT,
                                       (C + CE_TT - 1) // CE_TT)
    with nogil:
        ce_pool_for(num_threads, B * j.tr * j.tc, _transpose_tiles, &j)


ctypedef struct TransposeJob:
    const float* src
    Py_ssize_t src_mat
    float* dst
    Py_ssize_t dst_mat, R, C, tr, tc


cdef void _transpose_tiles(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Tiles [lo, hi), ordered (matrix, tile row, tile column)."""
    cdef TransposeJob* jb = <TransposeJob*>job
    cdef Py_ssize_t R = jb.R, C = jb.C, tr = jb.tr, tc = jb.tc
    cdef Py_ssize_t it, b, i, j, r0, c0, r, c, nr, nc
    cdef const float* s
    cdef float* d
    for it in range(lo, hi):
        b = it // (tr * tc)
        i = (it // tc) % tr
        j = it % tc
        r0, c0 = i * CE_TT, j * CE_TT
        s = jb.src + b * jb.src_mat + r0 * C + c0
        d = jb.dst + b * jb.dst_mat + c0 * R + r0
        nr, nc = min(CE_TT, R - r0), min(CE_TT, C - c0)
        if nr == CE_TT and nc == CE_TT:
            ce_transpose_tile(s, C, d, R)
        else:
            for r in range(nr):
                for c in range(nc):
                    d[c * R + r] = s[r * C + c]
