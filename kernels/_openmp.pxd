# OpenMP queries that also compile without OpenMP (the build then runs single-threaded).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CE_HAVE_OPENMP 1
    static int ce_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define CE_HAVE_OPENMP 0
    static int ce_omp_max_threads(void) { return 1; }
    #endif
    """
    int CE_HAVE_OPENMP
    int ce_omp_max_threads() nogil
