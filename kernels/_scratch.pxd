# The check every kernel makes of the scratch buffer its caller passes (engine/ops/workspace.py
# hands them out 64-byte aligned), before any loop without the GIL relies on it.

cdef inline int check_scratch(float[::1] buf, Py_ssize_t need, str name) except -1:
    """buf must hold `need` floats from a 64-byte boundary: the kernels read their panels and
    staging rows as aligned vectors."""
    if buf.shape[0] < need or <size_t>&buf[0] % 64:
        raise ValueError(f"{name} must hold {need} floats from a 64-byte boundary, got "
                         f"{buf.shape[0]}")
    return 0
