# Array arguments for the kernels a graph step calls on every run. A typed memoryview argument
# costs about 0.45 us to make (buffer request, format check, view object), five of them a
# small layer's whole kernel call; here the array is checked with NumPy's C API instead (0.03
# us) and the kernel reads its data pointer and shape (bench/bench_overhead.py). The caller's
# reference keeps the array, and so the pointer, alive for the call.
# A module that cimports f32_arg calls cnp.import_array() once at import (a .pxd runs no code).
cimport numpy as cnp

ctypedef struct f32_array:
    float* p                    # the first element (NULL for an empty array)
    Py_ssize_t shape[5]
    Py_ssize_t size


cdef inline f32_array f32_arg(object a, int ndim, str name, bint writable) except *:
    """a as a C-contiguous, aligned, native-order float32 ndarray of ``ndim`` <= 5
    dimensions (writable if asked), else a ValueError naming the argument."""
    cdef f32_array v
    cdef cnp.ndarray arr
    cdef int i
    if not cnp.PyArray_Check(a):
        raise ValueError(f"{name} must be a float32 numpy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISNOTSWAPPED(arr)
            or not cnp.PyArray_ISALIGNED(arr)):
        raise ValueError(f"{name} must be native-order, aligned float32, got {a.dtype}")
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writable")
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    for i in range(ndim):
        v.shape[i] = dims[i]
    for i in range(ndim, 5):
        v.shape[i] = 1
    v.size = cnp.PyArray_SIZE(arr)
    v.p = <float*>cnp.PyArray_DATA(arr) if v.size else NULL
    return v


cdef inline int check_scratch_array(f32_array v, Py_ssize_t need, str name) except -1:
    """A scratch buffer (1-D, from f32_arg) holds ``need`` floats from a 64-byte boundary: the
    kernels read their panels and staging rows as aligned vectors."""
    if v.shape[0] < need or <size_t>v.p % 64:
        raise ValueError(f"{name} must hold {need} floats from a 64-byte boundary, got "
                         f"{v.shape[0]}")
    return 0


cdef inline const float* f32_optional(object a, Py_ssize_t n, str name) except? NULL:
    """None, or a float32 vector of n values (checked as f32_arg does): its first element."""
    if a is None:
        return NULL
    cdef f32_array v = f32_arg(a, 1, name, False)
    if v.shape[0] != n:
        raise ValueError(f"{name} must hold {n} values, got {v.shape[0]}")
    return v.p
