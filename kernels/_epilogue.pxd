# Output step shared by every convolution kernel: bias, then the fused activation.
# Activation codes match engine/ops/activation.py.

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_RELU6 = 2


cdef inline float activate(float v, int act) noexcept nogil:
    if act == ACT_RELU:
        return v if v > 0 else 0
    if act == ACT_RELU6:
        return 0 if v < 0 else (6 if v > 6 else v)
    return v


cdef inline void bias_act_row(float* row, Py_ssize_t n, float b, int act) noexcept nogil:
    """row[i] = act(row[i] + b), written as three separate loops so each vectorises."""
    cdef Py_ssize_t i
    if act == ACT_NONE:
        for i in range(n):
            row[i] = row[i] + b
    elif act == ACT_RELU:
        for i in range(n):
            row[i] = max(row[i] + b, <float>0)
    else:
        for i in range(n):
            row[i] = min(max(row[i] + b, <float>0), <float>6)
