# Fully connected layers at small batch: out[m, n] = dot(a[m, :], w[n, :]) for a few rows m,
# with w[N, K] in rows (ONNX Gemm's B with transB=1, or its transpose made once by the plan).
# The product is a matrix-vector one, bound by reading w: each thread takes a range of output
# columns n and streams their rows of w once for all m. A dot product runs on four vector
# accumulators reduced in a fixed order, so every output has one value whatever the thread
# count.
from cython.parallel cimport prange

cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define CE_DN_VW 16
    #elif defined(__AVX__)
    #define CE_DN_VW 8
    #else
    #define CE_DN_VW 4
    #endif
    typedef float ce_dn_vf __attribute__((vector_size(CE_DN_VW * 4)));
    typedef float ce_dn_vfu __attribute__((vector_size(CE_DN_VW * 4), aligned(4), may_alias));

    static float ce_dn_dot(const float *a, const float *w, long K)
    {
        ce_dn_vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        long k = 0;
        for (; k + 4 * CE_DN_VW <= K; k += 4 * CE_DN_VW) {
            s0 += *(const ce_dn_vfu *)(a + k) * *(const ce_dn_vfu *)(w + k);
            s1 += *(const ce_dn_vfu *)(a + k + CE_DN_VW) * *(const ce_dn_vfu *)(w + k + CE_DN_VW);
            s2 += *(const ce_dn_vfu *)(a + k + 2 * CE_DN_VW)
                  * *(const ce_dn_vfu *)(w + k + 2 * CE_DN_VW);
            s3 += *(const ce_dn_vfu *)(a + k + 3 * CE_DN_VW)
                  * *(const ce_dn_vfu *)(w + k + 3 * CE_DN_VW);
        }
        ce_dn_vf s = (s0 + s1) + (s2 + s3);
        float lanes[CE_DN_VW];
        __builtin_memcpy(lanes, &s, sizeof lanes);
        float t = 0.0f;
        for (int i = 0; i < CE_DN_VW; i++)
            t += lanes[i];
        for (; k < K; k++)
            t += a[k] * w[k];
        return t;
    }
    """
    float ce_dn_dot(const float *a, const float *w, long K) nogil


def f32_dense_rows(const float[:, ::1] a, const float[:, ::1] w, float[:, ::1] out,
                   int num_threads):
    """out[M, N] = a[M, K] @ w[N, K].T."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = w.shape[0]
    if w.shape[1] != K or out.shape[0] != M or out.shape[1] != N:
        raise ValueError(f"a {tuple(a.shape)[:2]}, w {tuple(w.shape)[:2]} and out "
                         f"{tuple(out.shape)[:2]} do not fit out = a @ w.T")
    if M == 0 or N == 0:
        return
    if K == 0:
        out[:, :] = 0
        return
    num_threads = <int>max(1, min(num_threads, N))
    cdef Py_ssize_t n, m
    for n in prange(N, nogil=True, num_threads=num_threads, schedule="static"):
        for m in range(M):
            out[m, n] = ce_dn_dot(&a[m, 0], &w[n, 0], K)
