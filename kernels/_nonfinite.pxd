# NaN and infinity tests on float32 bit patterns, shared by the kernels that must keep IEEE
# semantics (conv_winograd's padding copy, conv_nonfinite's fix-up).
from libc.stdint cimport uint32_t

# A float32 is NaN or infinite exactly when its 8 exponent bits are all ones.

cdef enum:
    EXPONENT = 0x7f800000
    EXPONENT_UNIT = 0x00800000


cdef inline bint is_nonfinite(float v) noexcept nogil:
    return ((<uint32_t*>&v)[0] & <uint32_t>EXPONENT) == <uint32_t>EXPONENT


cdef inline bint any_nonfinite(const float* p, Py_ssize_t n) noexcept nogil:
    """Whether p[0:n] holds a NaN or an infinity. Adding one exponent unit to the exponent
    field carries into the sign bit only from all ones, so one OR over the run answers: no
    branch and no early exit, a loop gcc vectorises (a few instructions per 16 floats)."""
    cdef const uint32_t* bits = <const uint32_t*>p
    cdef uint32_t acc = 0
    cdef Py_ssize_t i
    for i in range(n):
        acc |= (bits[i] & <uint32_t>EXPONENT) + <uint32_t>EXPONENT_UNIT
    return (acc >> 31) != 0


cdef inline void zero_nonfinite(float* p, Py_ssize_t n) noexcept nogil:
    cdef uint32_t* bits = <uint32_t*>p
    cdef Py_ssize_t i
    for i in range(n):
        if (bits[i] & <uint32_t>EXPONENT) == <uint32_t>EXPONENT:
            bits[i] = 0
