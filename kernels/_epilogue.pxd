# Output step shared by every convolution kernel: bias, then the fused activation.
# Activation codes match engine/ops/activation.py and kernels/_vec_act.h, where the vector
# forms live; the scalar kernels here use the same formulas through it.

cdef extern from "_vec_act.h":
    float ce_act_scalar(float v, int act) noexcept nogil
    void ce_act_row(float *row, Py_ssize_t n, float b, int act) noexcept nogil

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_RELU6 = 2
    ACT_SILU = 3
    ACT_HARDSWISH = 4
    ACT_GELU = 5


# Written with v < 0 and v > 6, both false for NaN, so a NaN stays NaN.
cdef inline float activate(float v, int act) noexcept nogil:
    if act == ACT_NONE:
        return v
    if act == ACT_RELU:
        return 0 if v < 0 else v
    if act == ACT_RELU6:
        return 0 if v < 0 else (6 if v > 6 else v)
    return ce_act_scalar(v, act)


cdef inline void bias_act_row(float* row, Py_ssize_t n, float b, int act) noexcept nogil:
    """row[i] = act(row[i] + b), written as separate loops so each vectorises."""
    cdef Py_ssize_t i
    cdef float v
    if act == ACT_NONE:
        for i in range(n):
            row[i] = row[i] + b
    elif act == ACT_RELU:
        for i in range(n):
            v = row[i] + b
            row[i] = 0 if v < 0 else v
    elif act == ACT_RELU6:
        for i in range(n):
            v = row[i] + b
            row[i] = 0 if v < 0 else (6 if v > 6 else v)
    else:
        ce_act_row(row, n, b, act)
