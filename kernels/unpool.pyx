# Max-unpooling on NCHW planes (MaxUnpool, PyTorch's max_unpool2d), the inverse of
# kernels/pool.pyx's max pooling with indices. The threads of the engine's pool
# (kernels/_pool.h) take ranges of planes.
import numpy as np
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()


# Max-unpooling. One kernel serves two index conventions through plane_step:
#   plane_step = 0          PyTorch: indices count within each (n, c) plane of the output
#   plane_step = OH*OW      ONNX MaxUnpool: indices count over the whole output tensor, so
#                           plane p's indices lie in [p*OH*OW, (p+1)*OH*OW)
# Element i of plane p goes to out[p, indices[p, i] - p*plane_step]. An index that points into
# another plane is rejected rather than followed: planes run in parallel, and writing across
# them would make the result depend on the schedule.
#
# The output is mostly zeros (3 of 4 elements for 2x2 pooling) and is the bulk of the memory
# traffic, so each plane is zero-filled and scattered into while it is still in cache, instead
# of a whole-tensor fill followed by a scatter that brings every line in a second time.

cdef inline int64_t first_out_of_range(const int64_t* idx, Py_ssize_t L, int64_t off,
                                       Py_ssize_t out_plane) noexcept nogil:
    # One unsigned compare catches both idx < off and idx >= off + out_plane. The scan is in
    # blocks with a branch-free OR inside, so the common all-valid case vectorises.
    cdef Py_ssize_t i, j, b, n
    cdef uint64_t limit = <uint64_t>out_plane
    cdef int any_bad
    for b in range(0, L, 256):
        n = min(L - b, 256)
        any_bad = 0
        for j in range(n):
            any_bad = any_bad | (<uint64_t>(idx[b + j] - off) >= limit)
        if any_bad:
            for j in range(n):
                if <uint64_t>(idx[b + j] - off) >= limit:
                    return b + j
    return -1


def f32_unpool_first_bad_index(const int64_t[:, ::1] indices, Py_ssize_t out_plane,
                               Py_ssize_t plane_step, int num_threads):
    """Flat position in ``indices`` of the first element outside its output plane, or -1."""
    cdef Py_ssize_t P = indices.shape[0], L = indices.shape[1], p, first = -1
    cdef int64_t[::1] bad
    if P == 0 or L == 0:
        return -1
    bad = np.full(P, -1, dtype=np.int64)
    cdef UnpoolJob j = UnpoolJob(NULL, &indices[0, 0], indices.strides[0] // 8, L, NULL, 0,
                                 out_plane, plane_step, &bad[0], 0)
    with nogil:
        ce_pool_for(num_threads, P, _check_planes, &j)
    for p in range(P):
        if bad[p] >= 0:
            first = p * L + bad[p]
            break
    return first


def f32_max_unpool2d(const float[:, ::1] x, const int64_t[:, ::1] indices,
                     float[:, ::1] out, Py_ssize_t plane_step, int num_threads):
    """out[p] = zeros, then out[p, indices[p, i] - p*plane_step] = x[p, i] in order of i
    (a repeated index keeps the last value, as PyTorch's serial loop does).

    x and indices are (P, L), out is (P, OH*OW); every index must already have been checked
    with f32_unpool_first_bad_index."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1], OL = out.shape[1]
    if P == 0 or OL == 0:
        return
    # rows of x, indices and out may lie apart (views); L == 0 reads neither
    cdef UnpoolJob j = UnpoolJob(&x[0, 0], &indices[0, 0], indices.strides[0] // 8, L,
                                 &out[0, 0], out.strides[0] // 4, OL, plane_step, NULL,
                                 x.strides[0] // 4)
    with nogil:
        ce_pool_for(num_threads, P, _scatter_planes, &j)


ctypedef struct UnpoolJob:
    const float* x
    const int64_t* indices
    Py_ssize_t i_row, L
    float* out
    Py_ssize_t out_row, out_plane, plane_step
    int64_t* bad                # per plane: the first index outside it, or -1
    Py_ssize_t x_row


cdef void _check_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef UnpoolJob* j = <UnpoolJob*>job
    cdef Py_ssize_t p
    for p in range(lo, hi):
        j.bad[p] = first_out_of_range(j.indices + p * j.i_row, j.L, p * j.plane_step,
                                      j.out_plane)


cdef void _scatter_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef UnpoolJob* j = <UnpoolJob*>job
    cdef Py_ssize_t p, i
    cdef float* o
    cdef const float* xp
    cdef const int64_t* ip
    cdef int64_t off
    for p in range(lo, hi):
        o = j.out + p * j.out_row
        memset(o, 0, j.out_plane * sizeof(float))
        xp = j.x + p * j.x_row
        ip = j.indices + p * j.i_row
        off = p * j.plane_step
        for i in range(j.L):
            o[ip[i] - off] = xp[i]
