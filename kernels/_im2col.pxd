# Shared by the kernels that unfold an input into GEMM columns (conv_im2col, conv3d) and by
# those that need the same clipped index arithmetic.
from libc.string cimport memset, memcpy

cdef extern from *:
    """
    /* dst[i] = src[2 * i] for i < n, a vector at a time through even-lane shuffles; reads no
     * further than src[2 * (n - 1)]. */
    typedef float ce_ic_vf __attribute__((vector_size(64)));
    typedef float ce_ic_vfu __attribute__((vector_size(64), aligned(4), may_alias));
    typedef int ce_ic_vi __attribute__((vector_size(64)));
    #if !defined(__AVX512F__) && defined(__AVX2__)
    #include <immintrin.h>
    #endif
    static inline void ce_im2col_even(const float *src, float *dst, Py_ssize_t n)
    {
        Py_ssize_t i = 0;
    #if defined(__AVX512F__)
        const ce_ic_vi even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
        for (; i + 16 < n; i += 16) {
            ce_ic_vf a = *(const ce_ic_vfu *)(src + 2 * i);
            ce_ic_vf b = *(const ce_ic_vfu *)(src + 2 * i + 16);
            *(ce_ic_vfu *)(dst + i) = __builtin_shuffle(a, b, even);
        }
    #elif defined(__AVX2__)
        /* without AVX-512 the 16-lane shuffle above compiles to element moves; eight at a
           time here, an in-lane shuffle and a lane permute */
        for (; i + 8 < n; i += 8) {
            __m256 a = _mm256_loadu_ps(src + 2 * i), b = _mm256_loadu_ps(src + 2 * i + 8);
            __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
            _mm256_storeu_ps(dst + i, (__m256)_mm256_permute4x64_pd((__m256d)e, 0xd8));
        }
    #endif
        for (; i < n; i++)
            dst[i] = src[2 * i];
    }
    """
    void ce_im2col_even(const float *src, float *dst, Py_ssize_t n) nogil


cdef inline Py_ssize_t ceil_div_nonneg(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for b > 0, clamped at 0 for negative a
    if a <= 0:
        return 0
    return (a + b - 1) // b


cdef inline void im2col_rows(const float* xg, Py_ssize_t cstride, Py_ssize_t Cg,
                             Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t oy0, Py_ssize_t oy1, Py_ssize_t ox0, Py_ssize_t ox1,
                      float* cols) noexcept nogil:
    """Fill cols[(c*kh + u)*kw + v, (oy - oy0)*cw + ox - ox0] for output rows oy0 <= oy < oy1
    and columns ox0 <= ox < ox1 (cw = ox1 - ox0); input channel c is the H x W plane at
    xg + c*cstride."""
    cdef Py_ssize_t cw = ox1 - ox0
    cdef Py_ssize_t ncols = (oy1 - oy0) * cw
    cdef Py_ssize_t c, u, v, oy, ox, iy, ix0, lo, hi, r
    cdef float* dst
    cdef const float* src
    for c in range(Cg):
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                # output columns ox whose input column ix = ox*sw - pl + v*dw lies in [0, W),
                # clamped so that ox0 <= lo <= hi <= ox1 even when a tap's valid range lies
                # wholly left or right of this piece (every write then stays in the piece)
                ix0 = v * dw - pl
                lo = min(max(ceil_div_nonneg(-ix0, sw), ox0), ox1)
                hi = max(min(ceil_div_nonneg(W - ix0, sw), ox1), lo)
                for oy in range(oy0, oy1):
                    # dst and src are indexed by the output column ox
                    dst = cols + r * ncols + (oy - oy0) * cw - ox0
                    iy = oy * sh - pt + u * dh
                    if iy < 0 or iy >= H:
                        memset(dst + ox0, 0, cw * sizeof(float))
                        continue
                    src = xg + c * cstride + iy * W + ix0
                    if lo > ox0:
                        memset(dst + ox0, 0, (lo - ox0) * sizeof(float))
                    if sw == 1:
                        if hi > lo:
                            memcpy(dst + lo, src + lo, (hi - lo) * sizeof(float))
                    elif sw == 2:
                        if hi > lo:
                            ce_im2col_even(src + 2 * lo, dst + lo, hi - lo)
                    else:
                        for ox in range(lo, hi):
                            dst[ox] = src[ox * sw]
                    if hi < ox1:
                        memset(dst + hi, 0, (ox1 - hi) * sizeof(float))
