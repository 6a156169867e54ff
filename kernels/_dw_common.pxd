# Helpers shared by the depthwise kernels (conv_depthwise.pyx: planes and rows;
# conv_depthwise_cb.pyx: channel blocks).
from libc.math cimport INFINITY
from libc.string cimport memset, memcpy

from _epilogue cimport ACT_RELU, ACT_RELU6, ce_act_t

# restrict-qualified pointers: the staged planes, the accumulator and the input never overlap,
# and without the promise gcc re-checks that before every short vectorised loop
cdef extern from *:
    """
    typedef float *__restrict ce_rfloat;
    typedef const float *__restrict ce_crfloat;
    """
    ctypedef float* rfloat "ce_rfloat"
    ctypedef const float* crfloat "ce_crfloat"


cdef inline Py_ssize_t round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


# Short rows (28 x 28 and 14 x 14 planes, staged and copied out row by row) make a call to
# memcpy or memset, or a vectorised loop's scalar remainder, cost more than the row's
# arithmetic. The copies below move a row of n floats as two runs of 4 to 64 floats of a
# constant size, the second overlapping the first instead of stopping short, so nothing outside
# the row is read or written and no scalar loop runs for n >= 4. memcpy/memset of a constant
# size compile to vector moves. Measured on 192ch 28x28, one thread: 73 -> 61 us (stride 1),
# 44 -> 34 us (stride 2) against a library call per row.
cdef inline void copy_floats(rfloat d, crfloat s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    if n >= 128:
        # gcc turns this loop into a call to memmove, worth it only for long rows
        while i + 16 <= n:
            memcpy(d + i, s + i, 64)
            i = i + 16
        if i < n:
            memcpy(d + n - 16, s + n - 16, 64)
    elif n >= 64:
        memcpy(d, s, 256)
        memcpy(d + n - 64, s + n - 64, 256)
    elif n >= 32:
        memcpy(d, s, 128)
        memcpy(d + n - 32, s + n - 32, 128)
    elif n >= 16:
        memcpy(d, s, 64)
        memcpy(d + n - 16, s + n - 16, 64)
    elif n >= 8:
        memcpy(d, s, 32)
        memcpy(d + n - 8, s + n - 8, 32)
    elif n >= 4:
        memcpy(d, s, 16)
        memcpy(d + n - 4, s + n - 4, 16)
    else:
        for i in range(n):
            d[i] = s[i]


cdef inline void zero_floats(rfloat d, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    if n >= 128:
        while i + 16 <= n:
            memset(d + i, 0, 64)
            i = i + 16
        if i < n:
            memset(d + n - 16, 0, 64)
    elif n >= 64:
        memset(d, 0, 256)
        memset(d + n - 64, 0, 256)
    elif n >= 32:
        memset(d, 0, 128)
        memset(d + n - 32, 0, 128)
    elif n >= 16:
        memset(d, 0, 64)
        memset(d + n - 16, 0, 64)
    elif n >= 8:
        memset(d, 0, 32)
        memset(d + n - 8, 0, 32)
    elif n >= 4:
        memset(d, 0, 16)
        memset(d + n - 4, 0, 16)
    else:
        for i in range(n):
            d[i] = 0


cdef inline void act_bounds(ce_act_t act, float* lo, float* hi) noexcept nogil:
    lo[0] = 0 if act.code == ACT_RELU or act.code == ACT_RELU6 else -INFINITY
    hi[0] = 6 if act.code == ACT_RELU6 else INFINITY
