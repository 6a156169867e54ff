# Nearest and bilinear resampling of NCHW float32 planes from precomputed source tables.
#
# Which source pixels and weights an output pixel uses is decided in engine/ops/resample.py,
# in NumPy float32 arithmetic written to match PyTorch's (a C compiler is free to fuse
# a*b - c into one rounding, which would move a nearest-neighbour floor across an integer).
# The kernels only apply the tables, one (n, c) plane per work item, which the threads of the
# engine's pool (kernels/_pool.h) take in ranges, so the result does not depend on the thread
# count.
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from _pool cimport ce_pool_attach, ce_pool_for

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
                                 NULL, NULL)
    with nogil:
        ce_pool_for(num_threads, P, _nearest_planes, &j)


cdef void _nearest_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef ResizeJob* j = <ResizeJob*>job
    cdef Py_ssize_t p
    for p in range(lo, hi):
        f32_nearest_plane(j.x + p * j.x_plane, j.W, j.y + p * j.y_plane, j.OH, j.OW, j.y0, j.x0)


cdef void f32_bilinear_plane(const float* x, Py_ssize_t W, float* y, Py_ssize_t OH,
                             Py_ssize_t OW, const int64_t* y0, const int64_t* y1,
                             const float* wy0, const float* wy1, const int64_t* x0,
                             const int64_t* x1, const float* wx0, const float* wx1,
                             float* rows, Py_ssize_t H) noexcept nogil:
    # Rows first blended along x, then the two rows along y: PyTorch's order of operations.
    # With ``rows`` (H * OW floats) every input row is blended along x once, and an output
    # row is two vector streams: an enlarging resize reads each input row for several output
    # rows (DeepLabV3's 8x upsampling of its class scores, bench_zoo.py).
    cdef Py_ssize_t oy, ox, iy
    cdef const float* r0
    cdef const float* r1
    cdef float* dst
    cdef float a, b, t0, t1
    if rows != NULL:
        for iy in range(H):
            r0 = x + iy * W
            dst = rows + iy * OW
            for ox in range(OW):
                dst[ox] = r0[x0[ox]] * wx0[ox] + r0[x1[ox]] * wx1[ox]
        for oy in range(OH):
            r0 = rows + y0[oy] * OW
            r1 = rows + y1[oy] * OW
            a = wy0[oy]
            b = wy1[oy]
            dst = y + oy * OW
            for ox in range(OW):
                dst[ox] = r0[ox] * a + r1[ox] * b
        return
    for oy in range(OH):
        r0 = x + y0[oy] * W
        r1 = x + y1[oy] * W
        a = wy0[oy]
        b = wy1[oy]
        dst = y + oy * OW
        for ox in range(OW):
            t0 = r0[x0[ox]] * wx0[ox] + r0[x1[ox]] * wx1[ox]
            t1 = r1[x0[ox]] * wx0[ox] + r1[x1[ox]] * wx1[ox]
            dst[ox] = t0 * a + t1 * b


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
    cdef ResizeJob j = ResizeJob(&x[0, 0, 0], &y[0, 0, 0], x.strides[0] // 4, y.strides[0] // 4,
                                 x.shape[1], W, OH, OW, &y0[0], &y1[0], &wy0[0], &wy1[0],
                                 &x0[0], &x1[0], &wx0[0], &wx1[0])
    with nogil:
        ce_pool_for(num_threads, P, _bilinear_planes, &j)


cdef void _bilinear_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef ResizeJob* j = <ResizeJob*>job
    cdef Py_ssize_t p
    cdef float* rows = NULL
    if j.OH > j.H:
        # without the memory, the plane is blended straight from the input
        rows = <float*>malloc(j.H * j.OW * sizeof(float))
    for p in range(lo, hi):
        f32_bilinear_plane(j.x + p * j.x_plane, j.W, j.y + p * j.y_plane, j.OH, j.OW, j.y0,
                           j.y1, j.wy0, j.wy1, j.x0, j.x1, j.wx0, j.wx1, rows, j.H)
    free(rows)
