# The engine's fork-join pool (kernels/_pool.h). A module that runs work on it calls
# ce_pool_attach() once at import.
cdef extern from "_pool.h":
    enum: CE_POOL_MAX_THREADS
    ctypedef void (*ce_pool_fn)(void *ctx, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    void ce_pool_for(int nt, Py_ssize_t items, ce_pool_fn fn, void *ctx) noexcept nogil
    void ce_pool_run(int nt, Py_ssize_t items, Py_ssize_t pieces, ce_pool_fn fn,
                     void *ctx) noexcept nogil
    int ce_pool_attach() except -1
