# The shape checks every kernel on channel-blocked tensors makes before it releases the GIL
# (included by the nchwc*.pyx modules, which declare CE_NC_B first), and the residual's pointer.


cdef int check_blocked(const Py_ssize_t* shape, str name) except -1:
    """shape (of a 5-D typed memoryview: the type fixes the rank) is channel-blocked. Read from
    the view's C shape: a view passed as a Python object would be wrapped anew on every call."""
    if shape[4] != CE_NC_B:
        raise ValueError(f"{name} must be channel-blocked (N, C/{CE_NC_B}, H, W, {CE_NC_B}), got "
                         f"shape {tuple(shape[i] for i in range(5))}")
    return 0


cdef int check_window(Py_ssize_t blocks, Py_ssize_t nbias, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t OH, Py_ssize_t OW, int sh, int sw, int pt, int pl, int dh,
                      int dw) except -1:
    """The checks every windowed blocked kernel makes before its loops: bias length, strides,
    dilations, pads, and a plane of a size the kernels' int arithmetic takes."""
    if nbias != blocks * CE_NC_B:
        raise ValueError(f"bias must hold {blocks * CE_NC_B} floats, got {nbias}")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or pt < 0 or pl < 0:
        raise ValueError("strides and dilations must be positive and pads non-negative")
    if H == 0 or W == 0 or H > 1 << 30 or W > 1 << 30 or OH > 1 << 30 or OW > 1 << 30:
        raise ValueError(f"the input plane {H}x{W} must be non-empty and of sane size")
    return 0


cdef const float* residual_base(residual, const Py_ssize_t* out_shape) except? NULL:
    """The first element of ``residual`` (None, or a blocked array of the shape out_shape
    points at, checked), or NULL. The caller's reference keeps the array, and so the pointer,
    alive. (The shape, not the output's view: a view passed as an object would be wrapped
    anew on every call, a third of a small layer's call.)"""
    cdef const float[:, :, :, :, ::1] r
    if residual is None:
        return NULL
    want = tuple(out_shape[i] for i in range(5))
    if tuple(residual.shape) != want:
        raise ValueError(f"residual must have out's shape {want}, got "
                         f"{tuple(residual.shape)}")
    r = residual
    return &r[0, 0, 0, 0, 0] if r.size else NULL
