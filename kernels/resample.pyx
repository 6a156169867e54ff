# Nearest and bilinear resampling of NCHW float32 planes from precomputed source tables.
#
# Which source pixels and weights an output pixel uses is decided in engine/ops/resample.py,
# in NumPy float32 arithmetic written to match PyTorch's (a C compiler is free to fuse
# a*b - c into one rounding, which would move a nearest-neighbour floor across an integer).
# The kernels only apply the tables, one (n, c) plane per work item, which the threads of the
# engine's pool (kernels/_pool.h) take in ranges, so the result does not depend on the thread
# count.
from libc.stdint cimport int64_t

from _pool cimport CE_POOL_MAX_THREADS, ce_pool_attach, ce_pool_for

import numpy as np

ce_pool_attach()


# The planes of x and y (planes may lie apart: views) and the tables
ctypedef struct ResizeJob:
    const float* x
    float* y
    Py_ssize_t x_plane, y_plane, H, W, OH, OW
    const int64_t* y0
    const int64_t* y1
    const float* wy0
    const float* wy1
    const int64_t* x0
    const int64_t* x1
    const float* wx0
    const float* wx1
    float* slots            # bilinear: two blended rows of OW floats per thread



cdef void f32_nearest_plane(const float* x, Py_ssize_t W, float* y, Py_ssize_t OH,
                            Py_ssize_t OW, const int64_t* ys, const int64_t* xs) noexcept nogil:
    cdef Py_ssize_t oy, ox
    cdef const float* row
    cdef float* dst
    for oy in range(OH):
        row = x + ys[oy] * W
        dst = y + oy * OW
        for ox in range(OW):
            dst[ox] = row[xs[ox]]


def f32_resize_nearest2d(const float[:, :, ::1] x, float[:, :, ::1] y,
                         const int64_t[::1] ys, const int64_t[::1] xs, int num_threads):
    """y[p, oy, ox] = x[p, ys[oy], xs[ox]] for (P, H, W) -> (P, OH, OW)."""
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2], OH = y.shape[1], OW = y.shape[2]
    if P == 0 or OH == 0 or OW == 0:
        return
    cdef ResizeJob j = ResizeJob(&x[0, 0, 0], &y[0, 0, 0], x.strides[0] // 4, y.strides[0] // 4,
                                 x.shape[1], W, OH, OW, &ys[0], NULL, NULL, NULL, &xs[0], NULL,
                                 NULL, NULL, NULL)
    with nogil:
        ce_pool_for(num_threads, P, _nearest_planes, &j)


cdef void _nearest_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef ResizeJob* j = <ResizeJob*>job
    cdef Py_ssize_t p
    for p in range(lo, hi):
        f32_nearest_plane(j.x + p * j.x_plane, j.W, j.y + p * j.y_plane, j.OH, j.OW, j.y0, j.x0)


cdef inline float* blended_row(const float* x, Py_ssize_t W, Py_ssize_t OW, Py_ssize_t iy,
                               Py_ssize_t keep, const int64_t* x0, const int64_t* x1,
                               const float* wx0, const float* wx1, float* slots,
                               Py_ssize_t* held) noexcept nogil:
    """Input row iy blended along x, from one of two slots of OW floats (held: the rows they
    hold, -1 none), made in the slot not holding row ``keep`` when neither holds it."""
    cdef Py_ssize_t s, ox
    cdef const float* src
    cdef float* dst
    for s in range(2):
        if held[s] == iy:
            return slots + s * OW
    s = 1 if held[0] == keep else 0
    src = x + iy * W
    dst = slots + s * OW
    for ox in range(OW):
        dst[ox] = src[x0[ox]] * wx0[ox] + src[x1[ox]] * wx1[ox]
    held[s] = iy
    return dst


cdef void f32_bilinear_plane(const float* x, Py_ssize_t W, float* y, Py_ssize_t OH,
                             Py_ssize_t OW, const int64_t* y0, const int64_t* y1,
                             const float* wy0, const float* wy1, const int64_t* x0,
                             const int64_t* x1, const float* wx0, const float* wx1,
                             float* slots) noexcept nogil:
    # Rows first blended along x, then the two rows along y: PyTorch's order of operations.
    # The last two input rows blended are kept (``slots``, 2 * OW floats): an enlarging resize
    # reads each input row for several output rows, and then blends it once, an output row
    # being two vector streams (DeepLabV3's 8x upsampling of its class scores 1.13 -> 0.19 ms,
    # bench_zoo.py's model).
    cdef Py_ssize_t oy, ox
    cdef Py_ssize_t held[2]
    cdef const float* r0
    cdef const float* r1
    cdef float* dst
    cdef float a, b
    held[0] = -1
    held[1] = -1
    for oy in range(OH):
        r0 = blended_row(x, W, OW, y0[oy], -1, x0, x1, wx0, wx1, slots, held)
        r1 = blended_row(x, W, OW, y1[oy], y0[oy], x0, x1, wx0, wx1, slots, held)
        a = wy0[oy]
        b = wy1[oy]
        dst = y + oy * OW
        for ox in range(OW):
            dst[ox] = r0[ox] * a + r1[ox] * b


def f32_resize_bilinear2d(const float[:, :, ::1] x, float[:, :, ::1] y,
                          const int64_t[::1] y0, const int64_t[::1] y1,
                          const float[::1] wy0, const float[::1] wy1,
                          const int64_t[::1] x0, const int64_t[::1] x1,
                          const float[::1] wx0, const float[::1] wx1, int num_threads):
    """y[p, oy, ox] = the two-by-two blend of x[p] at rows y0/y1 (weights wy0/wy1) and
    columns x0/x1 (weights wx0/wx1) for (P, H, W) -> (P, OH, OW)."""
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2], OH = y.shape[1], OW = y.shape[2]
    if P == 0 or OH == 0 or OW == 0:
        return
    cdef int nt = max(1, min(num_threads, CE_POOL_MAX_THREADS))
    cdef float[::1] slots = np.empty(nt * 2 * OW, np.float32)
    cdef ResizeJob j = ResizeJob(&x[0, 0, 0], &y[0, 0, 0], x.strides[0] // 4, y.strides[0] // 4,
                                 x.shape[1], W, OH, OW, &y0[0], &y1[0], &wy0[0], &wy1[0],
                                 &x0[0], &x1[0], &wx0[0], &wx1[0], &slots[0])
    with nogil:
        ce_pool_for(nt, P, _bilinear_planes, &j)


cdef void _bilinear_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef ResizeJob* j = <ResizeJob*>job
    cdef Py_ssize_t p
    cdef float* slots = j.slots + thread * 2 * j.OW
    for p in range(lo, hi):
        f32_bilinear_plane(j.x + p * j.x_plane, j.W, j.y + p * j.y_plane, j.OH, j.OW, j.y0,
                           j.y1, j.wy0, j.wy1, j.x0, j.x1, j.wx0, j.wx1, slots)
