# The one place that calls BLAS. scipy's cython_blas exposes Fortran (column-major) sgemm;
# a row-major C = A @ B is the column-major C^T = B^T @ A^T, so the operands are swapped.
from scipy.linalg.cython_blas cimport sgemm


cdef inline void sgemm_rm(bint trans_a, bint trans_b, int m, int n, int k,
                          float alpha, const float* a, int lda,
                          const float* b, int ldb,
                          float beta, float* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, single call to sgemm."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
