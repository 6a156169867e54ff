# The shape checks every kernel on channel-blocked tensors makes before it releases the GIL
# (included by the nchwc*.pyx modules, which declare CE_NC_B first), and the residual's pointer.
cimport numpy as cnp
from _arrays cimport f32_arg, f32_array

cnp.import_array()     # the NumPy C API f32_arg calls, once per module


cdef int check_blocked(const Py_ssize_t* shape, str name) except -1:
    """shape (a 5-D array's, from f32_arg or a typed memoryview, which fixed the rank) is
    channel-blocked."""
    if shape[4] != CE_NC_B:
        raise ValueError(f"{name} must be channel-blocked (N, C/{CE_NC_B}, H, W, {CE_NC_B}), got "
                         f"shape {tuple(shape[i] for i in range(5))}")
    return 0


cdef int check_blocked_io(const Py_ssize_t* x, const Py_ssize_t* out) except -1:
    """x and out (shapes) channel-blocked, with the same images: a layer from blocks to
    blocks."""
    check_blocked(x, "x")
    check_blocked(out, "out")
    if out[0] != x[0]:
        raise ValueError(f"out {tuple(out[i] for i in range(5))} must have x's {x[0]} images")
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
    alive."""
    if residual is None:
        return NULL
    cdef f32_array r = f32_arg(residual, 5, "residual", False)
    for i in range(5):
        if r.shape[i] != out_shape[i]:
            raise ValueError(f"residual must have out's shape "
                             f"{tuple(out_shape[j] for j in range(5))}, got {residual.shape}")
    return r.p


cdef Py_ssize_t real_channels(Py_ssize_t Cb, Py_ssize_t channels) except -1:
    """The real channels of an input of Cb blocks: ``channels``, 0 meaning all of its blocks';
    the padding ones after them, whose weights are zero, the pointwise tiles skip."""
    if Cb == 0:
        raise ValueError("x must have at least one channel")
    if channels == 0:
        channels = Cb * CE_NC_B
    if not (Cb - 1) * CE_NC_B < channels <= Cb * CE_NC_B:
        raise ValueError(f"channels must be in ({(Cb - 1) * CE_NC_B}, {Cb * CE_NC_B}] for "
                         f"{Cb} blocks, got {channels}")
    return channels


cdef int check_pointwise_pack(Py_ssize_t Cb, Py_ssize_t Kb, Py_ssize_t wfloats,
                              Py_ssize_t bfloats, str wname, str bname) except -1:
    """Packed pointwise weights (pack_pointwise) for Cb input and Kb output blocks."""
    if wfloats != Cb * CE_NC_B * Kb * CE_NC_B:
        raise ValueError(f"{wname} must hold {Cb * CE_NC_B * Kb * CE_NC_B} floats, got "
                         f"{wfloats}")
    if bfloats != Kb * CE_NC_B:
        raise ValueError(f"{bname} must hold {Kb * CE_NC_B} floats, got {bfloats}")
    return 0
