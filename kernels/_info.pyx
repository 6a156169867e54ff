# What the compiled kernels were built with, as seen from inside a compiled module.
from _openmp cimport CE_HAVE_OPENMP, ce_omp_max_threads


def openmp_enabled():
    return bool(CE_HAVE_OPENMP)


def openmp_max_threads():
    return ce_omp_max_threads()


cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define CE_INFO_VECTOR_FLOATS 16
    #elif defined(__AVX__)
    #define CE_INFO_VECTOR_FLOATS 8
    #else
    #define CE_INFO_VECTOR_FLOATS 4
    #endif
    """
    int CE_INFO_VECTOR_FLOATS


def vector_floats():
    """Floats per SIMD register the kernels were compiled for: 16 with AVX-512, 8 with AVX,
    else 4 (the portable build)."""
    return CE_INFO_VECTOR_FLOATS
