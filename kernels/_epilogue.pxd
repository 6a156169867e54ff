# Output step shared by every convolution kernel: bias, then the fused activation.
# Activation codes match engine/ops/activation.py.

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_RELU6 = 2


# Written with v < 0 and v > 6, both false for NaN, so a NaN stays NaN.
cdef inline float activate(float v, int act) noexcept nogil:
    if act == ACT_RELU:
        return 0 if v < 0 else v
    if act == ACT_RELU6:
        return 0 if v < 0 else (6 if v > 6 else v)
    return v


cdef inline void bias_act_row(float* row, Py_ssize_t n, float b, int act) noexcept nogil:
    """row[i] = act(row[i] + b), written as three separate loops so each vectorises."""
    cdef Py_ssize_t i
    cdef float v
    if act == ACT_NONE:
        for i in range(n):
            row[i] = row[i] + b
    elif act == ACT_RELU:
        for i in range(n):
            v = row[i] + b
            row[i] = 0 if v < 0 else v
    else:
        for i in range(n):
            v = row[i] + b
            row[i] = 0 if v < 0 else (6 if v > 6 else v)
