# The packed GEMM micro-kernel of _packed_gemm.h (layouts and the micro-kernel are described
# there), declared once for the kernels that use it: pointwise, im2col, Winograd, transposed,
# 3-D and deformable convolution.
from _epilogue cimport ce_act_t

cdef extern from "_packed_gemm.h":
    int CE_PG_MR, CE_PG_NR
    void ce_pg_pack_panels(const float *B, Py_ssize_t ldb, int K, int ncols,
                           float *panels) nogil
    void ce_pg_pack_rows(const float *B, Py_ssize_t ldb, int K, int ncols, float *panels,
                         Py_ssize_t pstride) nogil
    void ce_pg_block(const float *ap, const float *panel, int K, float *c, Py_ssize_t ldc,
                     const float *res, const float *bias, ce_act_t act, int nm, int ncols) nogil
    void ce_pg_block_rows(const float *a, Py_ssize_t lda, const float *panels, int K,
                          int npanels, float *c, Py_ssize_t ldc, const float *colbias,
                          ce_act_t act, int nm, int ncols) nogil
    bint ce_pg_act_later(ce_act_t act) nogil
    ce_act_t ce_pg_store_act(ce_act_t act) nogil
    void ce_pg_act_rows(float *c, Py_ssize_t ldc, int nm, int ncols, ce_act_t act) nogil
