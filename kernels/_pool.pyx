"""The process's one fork-join pool (kernels/_pool.h): POOL, which every kernel module that
runs work on it attaches to at import."""

cdef extern from "_pool.h":
    ctypedef struct ce_pool:
        int openmp
    ce_pool* CE_POOL
    object ce_pool_capsule()

POOL = ce_pool_capsule()


def use_openmp_regions(bint on):
    """For bench/bench_pool.py: run the pool's jobs as OpenMP regions, each thread its static
    share and the region's end waiting for every thread (on), or on the pool (off, the
    default). The results are the same either way. No effect in a build without OpenMP; a
    forked child starts with it off (GNU OpenMP's threads do not survive fork)."""
    CE_POOL.openmp = on
