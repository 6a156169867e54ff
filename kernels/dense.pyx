# Fully connected layers at small batch: out[m, n] = dot(a[m, :], w[n, :]) for a few rows m,
# with w[N, K] in rows (ONNX Gemm's B with transB=1, or its transpose made once by the plan).
# The product is a matrix-vector one, bound by reading w: the threads of the engine's pool
# (kernels/_pool.h) take ranges of output columns n. For several rows of a, eight rows of w
# are read side by side, so that each load of a serves eight of them; for one row of a (batch
# 1) the rows of w are read one after another, one stream through the matrix that the
# hardware prefetcher follows, where eight side by side are eight short streams (a row of 400
# floats is 25 lines): weights from memory, one thread, RegNetX's 400->1000 classifier 0.161
# -> 0.065 ms, MobileNetV3's 1280->1000 0.260 -> 0.167 (bench/bench_dispatch.py gemm/dense).
# Every dot product runs the same operations in the same order whether its row is one of
# eight or alone (two vector accumulators, then a fixed tree over the lanes), so an output has
# one value whatever the thread count, the rows of a and wherever a thread's range begins.
cimport numpy as cnp
from _arrays cimport f32_arg, f32_array
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()
cnp.import_array()     # the NumPy C API f32_arg calls

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
    #define CE_DN_LD(p) (*(const ce_dn_vfu *)(p))

    /* the lanes of s summed by halving: one fixed tree */
    static inline float ce_dn_hsum(ce_dn_vf s)
    {
        float lanes[CE_DN_VW];
        __builtin_memcpy(lanes, &s, sizeof lanes);
        for (int width = CE_DN_VW / 2; width >= 1; width /= 2)
            for (int i = 0; i < width; i++)
                lanes[i] += lanes[i + width];
        return lanes[0];
    }

    /* dot(a, w_r) for R <= 8 rows w_r = w + r * ldw: each row's sums as for R = 1 */
    static inline __attribute__((always_inline)) void
    ce_dn_dots(const float *a, const float *w, long ldw, long K, const int R, float *out)
    {
        ce_dn_vf s0[8] = {{0}}, s1[8] = {{0}};
        long k = 0;
        for (; k + 2 * CE_DN_VW <= K; k += 2 * CE_DN_VW) {
            ce_dn_vf a0 = CE_DN_LD(a + k), a1 = CE_DN_LD(a + k + CE_DN_VW);
    #pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                s0[r] += a0 * CE_DN_LD(w + r * ldw + k);
                s1[r] += a1 * CE_DN_LD(w + r * ldw + k + CE_DN_VW);
            }
        }
    #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float t = ce_dn_hsum(s0[r] + s1[r]);
            for (long j = k; j < K; j++)
                t += a[j] * w[r * ldw + j];
            out[r] = t;
        }
    }

    /* out[m * ldo + n] for n in [n0, n1), m < M; rows of w ``together`` (8 or 1) at a time */
    static void ce_dn_rows(const float *a, long M, long K, const float *w, long n0, long n1,
                           float *out, long ldo, int together)
    {
        float t[8];
        long n = n0;
        for (; together == 8 && n + 8 <= n1; n += 8)
            for (long m = 0; m < M; m++) {
                ce_dn_dots(a + m * K, w + n * K, K, K, 8, t);
                for (int r = 0; r < 8; r++)
                    out[m * ldo + n + r] = t[r];
            }
        for (; n < n1; n++)
            for (long m = 0; m < M; m++) {
                ce_dn_dots(a + m * K, w + n * K, K, K, 1, t);
                out[m * ldo + n] = t[0];
            }
    }
    """
    void ce_dn_rows(const float *a, long M, long K, const float *w, long n0, long n1,
                    float *out, long ldo, int together) nogil


# Most rows of a for which the rows of w are read one after another (see above).
SINGLE_ROW_MAX_M = 1


def f32_dense_rows(a, w, out, int num_threads, int together=0):
    """out[M, N] = a[M, K] @ w[N, K].T. together: rows of w read side by side, 1 or 8 (0:
    1 up to SINGLE_ROW_MAX_M rows of a, else 8); the values are the same either way."""
    cdef f32_array av = f32_arg(a, 2, "a", False)
    cdef f32_array wv = f32_arg(w, 2, "w", False)
    cdef f32_array outv = f32_arg(out, 2, "out", True)
    cdef Py_ssize_t M = av.shape[0], K = av.shape[1], N = wv.shape[0]
    if wv.shape[1] != K or outv.shape[0] != M or outv.shape[1] != N:
        raise ValueError(f"a {a.shape[:2]}, w {w.shape[:2]} and out "
                         f"{out.shape[:2]} do not fit out = a @ w.T")
    if M == 0 or N == 0:
        return
    if K == 0:
        out[:, :] = 0
        return
    if together == 0:
        together = 1 if M <= SINGLE_ROW_MAX_M else 8
    if together not in (1, 8):
        raise ValueError(f"together must be 0, 1 or 8, got {together}")
    cdef DenseJob j = DenseJob(av.p, M, K, wv.p, outv.p, N, together)
    with nogil:
        ce_pool_for(num_threads, N, _dense_columns, &j)


ctypedef struct DenseJob:
    const float* a
    Py_ssize_t M, K
    const float* w
    float* out
    Py_ssize_t ldo
    int together


cdef void _dense_columns(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef DenseJob* j = <DenseJob*>job
    ce_dn_rows(j.a, j.M, j.K, j.w, lo, hi, j.out, j.ldo, j.together)
