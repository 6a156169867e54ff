# What the compiled kernels were built with, as seen from inside a compiled module.
from _openmp cimport CE_HAVE_OPENMP, ce_omp_max_threads


def openmp_enabled():
    return bool(CE_HAVE_OPENMP)


def openmp_max_threads():
    return ce_omp_max_threads()
