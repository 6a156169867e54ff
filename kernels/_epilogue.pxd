# Output step shared by every convolution kernel: bias, then the fused activation.
# Activation codes match engine/ops/activation.py and kernels/_vec_act.h, where the vector
# forms live; the scalar kernels here use the same formulas through it.

cdef extern from "_vec_act.h":
    # an activation and its parameters (alpha, beta), passed by value; from Python a dict
    # {"code": ..., "alpha": ..., "beta": ...} (engine/ops/activation.py kernel_act)
    ctypedef struct ce_act_t:
        int code
        float alpha
        float beta
    float ce_act_scalar(float v, ce_act_t act) noexcept nogil
    void ce_act_row(float *row, Py_ssize_t n, float b, ce_act_t act) noexcept nogil

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_RELU6 = 2
    ACT_SILU = 3
    ACT_HARDSWISH = 4
    ACT_GELU = 5
    ACT_COUNT = 15      # codes are 0 .. ACT_COUNT - 1 (_vec_act.h)


# Written with v < 0 and v > 6, both false for NaN, so a NaN stays NaN.
cdef inline ce_act_t no_act() noexcept nogil:
    """No activation (for steps whose output a later step finishes)."""
    cdef ce_act_t a
    a.code = ACT_NONE
    a.alpha = 0
    a.beta = 0
    return a


cdef inline float activate(float v, ce_act_t act) noexcept nogil:
    if act.code == ACT_NONE:
        return v
    if act.code == ACT_RELU:
        return 0 if v < 0 else v
    if act.code == ACT_RELU6:
        return 0 if v < 0 else (6 if v > 6 else v)
    return ce_act_scalar(v, act)


cdef inline int check_act(ce_act_t act, int clamp_only=0) except -1:
    """ValueError unless act is a known code (relu or relu6 at most for clamp-only kernels)."""
    if not 0 <= act.code < (ACT_RELU6 + 1 if clamp_only else ACT_COUNT):
        raise ValueError(f"activation code {act.code} is not one this kernel applies")
    return 0


cdef inline void bias_act_row(float* row, Py_ssize_t n, float b, ce_act_t act) noexcept nogil:
    """row[i] = act(row[i] + b), written as separate loops so each vectorises."""
    cdef Py_ssize_t i
    cdef float v
    if act.code == ACT_NONE:
        for i in range(n):
            row[i] = row[i] + b
    elif act.code == ACT_RELU:
        for i in range(n):
            v = row[i] + b
            row[i] = 0 if v < 0 else v
    elif act.code == ACT_RELU6:
        for i in range(n):
            v = row[i] + b
            row[i] = 0 if v < 0 else (6 if v > 6 else v)
    else:
        ce_act_row(row, n, b, act)
