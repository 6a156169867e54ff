# Max and average pooling and global pooling on NCHW float32 planes (max-unpooling:
# kernels/unpool.pyx).
#
# Every kernel treats the input as P = N*C independent planes, which the threads of the
# engine's pool (kernels/_pool.h) take whole, so an output element is always computed by the
# same loop in the same order whatever the thread count. Geometry (output sizes, padding limits, index ranges)
# is checked by engine/ops/pool.py before any of these run.
#
# Window conventions follow PyTorch's CPU kernels, so values and indices match it exactly:
#   max: the scan is row-major over the in-bounds taps; a tap wins if it is greater than the
#        running maximum or is NaN, so the first maximum wins ties and a NaN always wins. The
#        running index starts at the window's first tap at non-negative coordinates, which is
#        what an all -inf window (or, with dilation, one with no tap inside the input) reports.
#   avg: the window is first clipped to the padded input (so a ceil_mode window hanging past
#        the padding does not count the overhang), that size is the count_include_pad divisor;
#        then it is clipped to the input, which gives the other divisor and the taps summed.
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.math cimport INFINITY
from _im2col cimport ceil_div_nonneg
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()


cdef inline Py_ssize_t first_tap(Py_ssize_t start, Py_ssize_t d) noexcept nogil:
    # smallest start + j*d that is >= 0 (start >= -padding, so j is small)
    if start < 0:
        start += ((-start + d - 1) // d) * d
    return start


cdef inline void tap_columns(Py_ssize_t off, Py_ssize_t sw, Py_ssize_t W, Py_ssize_t OW,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # the outputs ox whose tap column ix = ox*sw + off lies in [0, W)
    lo[0] = min(ceil_div_nonneg(-off, sw), OW)
    hi[0] = max(min(ceil_div_nonneg(W - off, sw), OW), lo[0])


cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #endif

    /* one register of floats: 16 with AVX-512, 8 otherwise (16-float vectors on AVX2 went
       through the stack in the column pass: a 64x112x112 3x3 stride-2 pool took 0.97 ms) */
    #if defined(__AVX512F__)
    #define CE_MP_VW 16
    #else
    #define CE_MP_VW 8
    #endif
    typedef float ce_mp_vf __attribute__((vector_size(CE_MP_VW * 4)));
    typedef float ce_mp_vfu __attribute__((vector_size(CE_MP_VW * 4), aligned(4), may_alias));
    typedef int ce_mp_vi __attribute__((vector_size(CE_MP_VW * 4)));

    /* m where v > m or v is NaN takes v: the maximum's update, NaN winning as in the scan;
     * a select on masks, never a branch (on random data a branch mispredicts every other
     * element: the loops' scalar tails made pools of 110 columns 3x slower than of 112) */
    static inline ce_mp_vf ce_mp_take(ce_mp_vf m, ce_mp_vf v)
    {
        ce_mp_vi take = (v > m) | (v != v);
        return (ce_mp_vf)(((ce_mp_vi)v & take) | ((ce_mp_vi)m & ~take));
    }

    #if defined(__AVX2__) && !defined(__AVX512F__)
    #include <immintrin.h>
    #include "_store_part.h"
    /* lanes i < n set, for the masked loads of 8-float vectors */
    static inline __m256i ce_mp_mask(ptrdiff_t n)
    {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    #endif

    /* dst[i] = take(dst[i], src[i]) for the last n < CE_MP_VW elements, by masked moves;
     * dst has room for a whole vector (-inf lanes beyond n leave it as it was) */
    static inline void ce_mp_tail(const float *src, float *dst, ptrdiff_t n)
    {
    #if defined(__AVX512F__)
        __mmask16 k = (__mmask16)((1u << n) - 1);
        ce_mp_vf v = (ce_mp_vf)_mm512_maskz_loadu_ps(k, src);
        ce_mp_vf m = (ce_mp_vf)_mm512_maskz_loadu_ps(k, dst);
        _mm512_mask_storeu_ps(dst, k, (__m512)ce_mp_take(m, v));
    #elif defined(__AVX2__)
        /* masked moves: memcpy of a length unknown to the compiler is a library call, three
           per row, which made a 512x14x14 pool cost 1 us a plane (gcc turns a loop of element
           moves back into the same call) */
        __m256i k = ce_mp_mask(n);
        ce_mp_vf v = (ce_mp_vf)_mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()),
                                               _mm256_maskload_ps(src, k), (__m256)k);
        /* dst by whole vectors (its buffer has the room): a masked load of what a masked
           store just wrote is not forwarded from it, and stalled each row */
        *(ce_mp_vfu *)dst = ce_mp_take(*(ce_mp_vfu *)dst, v);
    #else
        ce_mp_vf v = {0}, m = {0};
        __builtin_memcpy(&v, src, (size_t)n * sizeof(float));
        __builtin_memcpy(&m, dst, (size_t)n * sizeof(float));
        m = ce_mp_take(m, v);
        __builtin_memcpy(dst, &m, (size_t)n * sizeof(float));
    #endif
    }

    /* t[i] = take(t[i], src[i]) for i < n: one input row into the column maxima (stride 1),
     * or one column tap into an output row */
    static void ce_mp_rows(const float *restrict src, ptrdiff_t n, float *restrict t)
    {
        ptrdiff_t i = 0;
        for (; i + CE_MP_VW <= n; i += CE_MP_VW)
            *(ce_mp_vfu *)(t + i) = ce_mp_take(*(ce_mp_vfu *)(t + i), *(const ce_mp_vfu *)(src + i));
        if (i < n)
            ce_mp_tail(src + i, t + i, n - i);
    }

    /* The same for stride 2, split by parity: e[j] takes row[2j], o[j] row[2j + 1], so that
     * the column pass reads both contiguously. Builds without AVX2 only: AVX2 and AVX-512
     * split a window's maximum row once instead (CE_MP_SPLIT_ONCE); gcc vectorises this loop
     * itself. */
    static void ce_mp_rows2(const float *restrict row, ptrdiff_t n, float *restrict e,
                            float *restrict o)
    {
        ptrdiff_t whole = n / 2 / CE_MP_VW * CE_MP_VW, j = 0;
        for (; j < whole; j++) {
            float a = row[2 * j], b = row[2 * j + 1];
            e[j] = (a > e[j] || a != a) ? a : e[j];
            o[j] = (b > o[j] || b != b) ? b : o[j];
        }
        if (2 * j < n) {
            /* the last columns as one vector each, -inf beyond the row (it never wins, so the
               buffer's slack keeps its values): a scalar tail branched on the data, and
               mispredicted, which made 111 columns take 1.8 times as long as 112 */
            ce_mp_vf pe = {0}, po = {0};
            pe -= __builtin_inff();
            po -= __builtin_inff();
            for (ptrdiff_t k = 0; 2 * (j + k) < n; k++) {
                pe[k] = row[2 * (j + k)];
                if (2 * (j + k) + 1 < n)
                    po[k] = row[2 * (j + k) + 1];
            }
            *(ce_mp_vfu *)(e + j) = ce_mp_take(*(ce_mp_vfu *)(e + j), pe);
            *(ce_mp_vfu *)(o + j) = ce_mp_take(*(ce_mp_vfu *)(o + j), po);
        }
    }
    #define CE_MP_BAND 32

    #if defined(__AVX2__) || defined(__AVX512F__)
    /* Stride 2: the maximum over a window's rows first, contiguous, into s (row of W floats,
     * -inf for 32 beyond), then s split once into even and odd columns (splitting every input
     * row, as ce_mp_rows2 does, took three splits and three loads and stores of the halves per
     * output row of a 3x3 pool; on AVX-512 a 64x112x112 3x3 stride-2 pool went from 0.33 to
     * 0.18 ms, with a masked store of each output row's last vector; bench/bench_family.py
     * maxpool3_s2_c64_112). */
    #define CE_MP_SPLIT_ONCE 1
    /* the first n < CE_MP_VW floats at p, -inf in the other lanes (none of them read) */
    static inline ce_mp_vf ce_mp_load_lowest(const float *p, ptrdiff_t n)
    {
    #if defined(__AVX512F__)
        return (ce_mp_vf)_mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()),
                                              (__mmask16)((1u << n) - 1), p);
    #else
        __m256i k = ce_mp_mask(n);
        return (ce_mp_vf)_mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()),
                                          _mm256_maskload_ps(p, k), (__m256)k);
    #endif
    }
    /* s[i] = the maximum of rows r0, r0 + rs, ... (nr >= 1 of them) at column i < n, in
     * registers, one store per vector; -inf in the lanes past n of the last vector (s has the
     * room). Taking each row into s in memory instead stalled every load on forwarding from
     * the previous row's stores. */
    static void ce_mp_vmax(const float *r0, ptrdiff_t rs, int nr, ptrdiff_t n, float *s)
    {
        ptrdiff_t i = 0;
        for (; i + CE_MP_VW <= n; i += CE_MP_VW) {
            ce_mp_vf m = *(const ce_mp_vfu *)(r0 + i);
            for (int r = 1; r < nr; r++)
                m = ce_mp_take(m, *(const ce_mp_vfu *)(r0 + r * rs + i));
            *(ce_mp_vfu *)(s + i) = m;
        }
        if (i < n) {
            ce_mp_vf m = ce_mp_load_lowest(r0 + i, n - i);
            for (int r = 1; r < nr; r++)
                m = ce_mp_take(m, ce_mp_load_lowest(r0 + r * rs + i, n - i));
            *(ce_mp_vfu *)(s + i) = m;
        }
    }
    #if defined(__AVX512F__)
    static void ce_mp_split2(const float *restrict s, ptrdiff_t n, float *restrict e,
                             float *restrict o)
    {
        const ce_mp_vi even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
        const ce_mp_vi odd = even + 1;
        for (ptrdiff_t j = 0; 2 * j < n; j += 16) {
            ce_mp_vf a = *(const ce_mp_vfu *)(s + 2 * j), b = *(const ce_mp_vfu *)(s + 2 * j + 16);
            *(ce_mp_vfu *)(e + j) = __builtin_shuffle(a, b, even);
            *(ce_mp_vfu *)(o + j) = __builtin_shuffle(a, b, odd);
        }
    }
    #else
    /* two in-lane shuffles and a lane permute per 16 columns */
    static void ce_mp_split2(const float *restrict s, ptrdiff_t n, float *restrict e,
                             float *restrict o)
    {
        for (ptrdiff_t j = 0; 2 * j < n; j += 8) {
            __m256 a = _mm256_loadu_ps(s + 2 * j), b = _mm256_loadu_ps(s + 2 * j + 8);
            __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
            __m256 od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
            _mm256_storeu_ps(e + j, (__m256)_mm256_permute4x64_pd((__m256d)ev, 0xd8));
            _mm256_storeu_ps(o + j, (__m256)_mm256_permute4x64_pd((__m256d)od, 0xd8));
        }
    }
    #endif
    #endif

    /* Floats of one row of the band buffer of ce_mp_plane for stride sw (1 or 2): the row of
     * column maxima with -inf padding around it (for stride 2 as two halves, even and odd
     * columns), and 16 floats of slack for the last output vector's loads. */
    static ptrdiff_t ce_mp_row_floats(ptrdiff_t W, ptrdiff_t OW, int kw, int sw, int pw)
    {
        if (sw == 1) {
            ptrdiff_t n = pw + W > OW + kw - 1 ? pw + W : OW + kw - 1;
            return n + 16;
        }
        ptrdiff_t P = pw + (pw & 1);                 /* left padding, even: parity kept */
        ptrdiff_t a = P / 2 + (W + 1) / 2, b = ((2 * (OW - 1) + kw - 1 - pw + P) >> 1) + 1;
        return 2 * ((a > b ? a : b) + 16);
    }

    /* Max pooling of one plane without indices, column stride 1 or 2 and no column dilation
     * (nearly every pool in a CNN), rows first: for a band of output rows, the maximum over
     * each window's kh input rows (one contiguous pass per row) into a buffer row padded with
     * -inf, then for each output the maximum over its kw columns of that row, in registers, one
     * store per vector of outputs. The column pass reads rows written a band earlier, not the
     * stores just made: reading those at shifted offsets stalled every load on store forwarding.
     * Stride 2 keeps even and odd columns apart, so that both passes read contiguously. */
    static void ce_mp_plane(const float *x, ptrdiff_t H, ptrdiff_t W, float *y, ptrdiff_t OH,
                            ptrdiff_t OW, int kh, int kw, int sh, int sw, int ph, int pw,
                            int dh, float *T)
    {
        const ptrdiff_t LT = ce_mp_row_floats(W, OW, kw, sw, pw);
        const ptrdiff_t P = sw == 1 ? pw : pw + (pw & 1), half = LT / 2;
        const ce_mp_vf ninf = {0};
        const ce_mp_vf lowest = ninf - __builtin_inff();
    #ifdef CE_MP_SPLIT_ONCE
        float *srow = T + CE_MP_BAND * LT;         /* W + 32 floats (f32_maxpool2d) */
        for (ptrdiff_t i = W; i < W + 32; i++)
            srow[i] = -__builtin_inff();
    #endif
        for (ptrdiff_t b0 = 0; b0 < OH; b0 += CE_MP_BAND) {
            ptrdiff_t b1 = b0 + CE_MP_BAND < OH ? b0 + CE_MP_BAND : OH;
            for (ptrdiff_t oy = b0; oy < b1; oy++) {
                float *t = T + (oy - b0) * LT;
                for (ptrdiff_t i = 0; i < LT; i++)
                    t[i] = -__builtin_inff();
    #ifdef CE_MP_SPLIT_ONCE
                if (sw == 2) {
                    /* the window's rows inside the input: u in [u0, u1) */
                    ptrdiff_t top = oy * sh - ph, u0 = 0, u1 = kh;
                    while (u0 < u1 && top + u0 * dh < 0)
                        u0++;
                    while (u1 > u0 && top + (u1 - 1) * dh >= H)
                        u1--;
                    if (u1 > u0) {
                        ce_mp_vmax(x + (top + u0 * dh) * W, dh * W, (int)(u1 - u0), W, srow);
                        ce_mp_split2(srow, W, t + P / 2, t + half + P / 2);
                    }
                    continue;
                }
    #endif
                for (int u = 0; u < kh; u++) {
                    ptrdiff_t iy = oy * sh - ph + (ptrdiff_t)u * dh;
                    if (iy < 0 || iy >= H)
                        continue;
                    if (sw == 2)
                        ce_mp_rows2(x + iy * W, W, t + P / 2, t + half + P / 2);
                    else
                        ce_mp_rows(x + iy * W, W, t + P);
                }
            }
            for (ptrdiff_t oy = b0; oy < b1; oy++) {
                const float *t = T + (oy - b0) * LT;
                float *yrow = y + oy * OW;
                for (ptrdiff_t ox = 0; ox < OW; ox += CE_MP_VW) {
                    ce_mp_vf m = lowest;
                    for (int v = 0; v < kw; v++) {
                        ptrdiff_t q = v - pw + P;       /* >= 0: padded column of ox = 0 */
                        const float *src = sw == 1 ? t + q : t + (q & 1 ? half : 0) + (q >> 1);
                        m = ce_mp_take(m, *(const ce_mp_vfu *)(src + ox));
                    }
                    if (ox + CE_MP_VW <= OW) {
                        *(ce_mp_vfu *)(yrow + ox) = m;
                    } else {
    #if defined(__AVX2__) && !defined(__AVX512F__)
                        ce_store_first8(yrow + ox, (__m256)m, (int)(OW - ox));
    #elif defined(__AVX512F__)
                        /* a masked store: a copy of a length unknown to the compiler is a
                           library call, one an output row */
                        _mm512_mask_storeu_ps(yrow + ox, (__mmask16)((1u << (OW - ox)) - 1),
                                              (__m512)m);
    #else
                        float tmp[CE_MP_VW];
                        __builtin_memcpy(tmp, &m, sizeof tmp);
                        __builtin_memcpy(yrow + ox, tmp, (size_t)(OW - ox) * sizeof(float));
    #endif
                    }
                }
            }
        }
    }
    """
    void ce_mp_rows(const float *row, Py_ssize_t n, float *t) noexcept nogil
    void ce_mp_rows2(const float *row, Py_ssize_t n, float *e, float *o) noexcept nogil
    int CE_MP_BAND
    Py_ssize_t ce_mp_row_floats(Py_ssize_t W, Py_ssize_t OW, int kw, int sw, int pw) noexcept nogil
    void ce_mp_plane(const float *x, Py_ssize_t H, Py_ssize_t W, float *y, Py_ssize_t OH,
                     Py_ssize_t OW, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                     float *T) noexcept nogil


cdef void maxpool_rows_first(const float* x, Py_ssize_t H, Py_ssize_t W, float* y,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                             Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                             Py_ssize_t dh, Py_ssize_t dw, float* t,
                             Py_ssize_t* cols) noexcept nogil:
    # Max pooling without indices, any strides and dilations: per output row, the maximum over
    # the window's kh input rows first (contiguous, one vector pass per row into t), then over
    # its kw columns of t (in L1); cols holds each column tap's range of outputs (2 * kw), the
    # same for every row. kh + kw passes instead of kh * kw strided ones. ce_mp_plane is this
    # for column stride 1 or 2 without column dilation, both passes contiguous.
    # NaN wins as in the per-window scan; which of +0 and -0 is kept when both are the maximum
    # may differ from it (they compare equal).
    cdef Py_ssize_t oy, ox, u, v, i, iy, lo, hi
    cdef float* yrow
    cdef const float* src
    cdef float val, m
    for v in range(kw):
        tap_columns(v * dw - pw, sw, W, OW, &cols[2 * v], &cols[2 * v + 1])
    for oy in range(OH):
        yrow = y + oy * OW
        for i in range(W):
            t[i] = -INFINITY
        for u in range(kh):
            iy = oy * sh - ph + u * dh
            if iy < 0 or iy >= H:
                continue
            ce_mp_rows(x + iy * W, W, t)
        for ox in range(OW):
            yrow[ox] = -INFINITY
        for v in range(kw):
            lo, hi = cols[2 * v], cols[2 * v + 1]
            src = t + v * dw - pw
            for ox in range(lo, hi):
                val = src[ox * sw]
                m = yrow[ox]
                yrow[ox] = val if (val > m) | (val != val) else m


# Both pooling kernels work a whole output row at a time: for each tap (u, v) of the window,
# one pass over the row's outputs updates every output that tap reaches. Each output still sees
# its taps in row-major order (u outer, v inner), so maxima, indices and float sums are those of
# the per-window scan, but the inner loop is a branch-free strided sweep the compiler vectorises.
cdef void f32_maxpool2d_plane(const float* x, Py_ssize_t H, Py_ssize_t W,
                              float* y, int64_t* idx, Py_ssize_t OH, Py_ssize_t OW,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                              Py_ssize_t dw, float* t, Py_ssize_t* cols) noexcept nogil:
    # t, cols: the row buffers of ce_mp_plane or maxpool_rows_first (buffer_floats), or NULL: the
    # per-tap loops below, which also give indices, need none
    cdef Py_ssize_t oy, ox, u, v, iy, iy0, off, lo, hi
    cdef float* yrow
    cdef int64_t* irow
    cdef const float* src
    cdef float val, m
    cdef bint take
    if idx == NULL and t != NULL:
        if (sw == 1 or sw == 2) and dw == 1:
            ce_mp_plane(x, H, W, y, OH, OW, <int>kh, <int>kw, <int>sh, <int>sw, <int>ph,
                        <int>pw, <int>dh, t)
        else:
            maxpool_rows_first(x, H, W, y, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, t, cols)
        return
    for oy in range(OH):
        yrow = y + oy * OW
        irow = idx + oy * OW if idx != NULL else NULL
        iy0 = first_tap(oy * sh - ph, dh)
        for ox in range(OW):
            yrow[ox] = -INFINITY
        if irow != NULL:
            for ox in range(OW):
                irow[ox] = iy0 * W + first_tap(ox * sw - pw, dw)
        for u in range(kh):
            iy = oy * sh - ph + u * dh
            if iy < 0 or iy >= H:
                continue
            for v in range(kw):
                off = v * dw - pw
                tap_columns(off, sw, W, OW, &lo, &hi)
                src = x + iy * W + off
                if irow == NULL:
                    for ox in range(lo, hi):
                        val = src[ox * sw]
                        m = yrow[ox]
                        yrow[ox] = val if (val > m) | (val != val) else m
                else:
                    for ox in range(lo, hi):
                        val = src[ox * sw]
                        take = (val > yrow[ox]) | (val != val)
                        yrow[ox] = val if take else yrow[ox]
                        irow[ox] = iy * W + ox * sw + off if take else irow[ox]


def f32_maxpool2d(const float[:, :, ::1] x, float[:, :, ::1] y, int64_t[:, :, ::1] indices,
                  int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                  int num_threads):
    """y[p] = max over each window of x[p] for planes p of (P, H, W) arrays; indices (or None)
    receives the plane-flat position iy*W + ix of each maximum."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef bint want_idx = indices is not None
    cdef Py_ssize_t tfloats = W + 16        # ce_mp_tail's room for a whole vector
    if P == 0:
        return
    if (sw == 1 or sw == 2) and dw == 1 and OW > 0:
        # the band's rows, and a row of W + 32 for the split of stride 2 (CE_MP_SPLIT_ONCE)
        tfloats = CE_MP_BAND * ce_mp_row_floats(W, OW, kw, sw, pw) + W + 32
    cdef int nt = <int>max(1, min(num_threads, P))
    # each thread's row buffers; out of memory, the per-tap loops need none
    cdef int64_t* ip = NULL
    if want_idx:
        ip = &indices[0, 0, 0]
    cdef MaxPoolJob j = MaxPoolJob(&x[0, 0, 0], &y[0, 0, 0], ip, H, W, OH, OW, kh,
                                   kw, sh, sw, ph, pw, dh, dw, NULL, tfloats, NULL, 2 * kw,
                                   x.strides[0] // 4, y.strides[0] // 4,
                                   indices.strides[0] // 8 if want_idx else 0)
    if not want_idx:
        j.rows = <float*>malloc(nt * tfloats * sizeof(float))
        j.cols = <Py_ssize_t*>malloc(nt * 2 * kw * sizeof(Py_ssize_t))
        if j.rows == NULL or j.cols == NULL:
            free(j.rows)
            free(j.cols)
            j.rows, j.cols = NULL, NULL
    try:
        with nogil:
            ce_pool_for(nt, P, _maxpool_planes, &j)
    finally:
        free(j.rows)
        free(j.cols)


ctypedef struct MaxPoolJob:
    const float* x
    float* y
    int64_t* indices
    Py_ssize_t H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw
    float* rows                 # per thread: row_floats floats, or none
    Py_ssize_t row_floats
    Py_ssize_t* cols            # per thread: col_ints
    Py_ssize_t col_ints
    Py_ssize_t x_plane, y_plane, i_plane    # planes may lie apart (views)


cdef void _maxpool_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Planes [lo, hi) (the threads of the engine's pool take them in pieces,
    kernels/_pool.h)."""
    cdef MaxPoolJob* j = <MaxPoolJob*>job
    cdef float* t = (j.rows + thread * j.row_floats) if j.rows != NULL else NULL
    cdef Py_ssize_t* cols = (j.cols + thread * j.col_ints) if j.cols != NULL else NULL
    cdef Py_ssize_t p
    for p in range(lo, hi):
        f32_maxpool2d_plane(j.x + p * j.x_plane, j.H, j.W, j.y + p * j.y_plane,
                            (j.indices + p * j.i_plane) if j.indices != NULL else NULL,
                            j.OH, j.OW, j.kh, j.kw, j.sh, j.sw, j.ph, j.pw, j.dh, j.dw, t,
                            cols)


cdef void f32_avgpool2d_plane(const float* x, Py_ssize_t H, Py_ssize_t W,
                              float* y, Py_ssize_t OH, Py_ssize_t OW,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, bint count_pad) noexcept nogil:
    cdef Py_ssize_t oy, ox, iy, v, iy0, iy1, jy0, jy1, ix0, ix1, jx0, jx1, off, lo, hi
    cdef Py_ssize_t divisor
    cdef float* yrow
    cdef const float* src
    for oy in range(OH):
        yrow = y + oy * OW
        iy0 = oy * sh - ph
        iy1 = min(iy0 + kh, H + ph)
        jy0 = max(iy0, 0)
        jy1 = min(iy1, H)
        for ox in range(OW):
            yrow[ox] = 0
        for iy in range(jy0, jy1):
            for v in range(kw):
                off = v - pw
                tap_columns(off, sw, W, OW, &lo, &hi)
                src = x + iy * W + off
                for ox in range(lo, hi):
                    yrow[ox] = yrow[ox] + src[ox * sw]
        for ox in range(OW):
            ix0 = ox * sw - pw
            ix1 = min(ix0 + kw, W + pw)
            jx0 = max(ix0, 0)
            jx1 = min(ix1, W)
            if jy0 >= jy1 or jx0 >= jx1:
                yrow[ox] = 0           # no tap inside the input
            else:
                if count_pad:
                    divisor = (iy1 - iy0) * (ix1 - ix0)
                else:
                    divisor = (jy1 - jy0) * (jx1 - jx0)
                yrow[ox] = yrow[ox] / <float>divisor


def f32_avgpool2d(const float[:, :, ::1] x, float[:, :, ::1] y,
                  int kh, int kw, int sh, int sw, int ph, int pw, bint count_include_pad,
                  int num_threads):
    """y[p] = mean over each window of x[p] (float32 sum, PyTorch's divisor rules)."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    if P == 0:
        return
    cdef AvgPoolJob j = AvgPoolJob(&x[0, 0, 0], &y[0, 0, 0], H, W, OH, OW, kh, kw, sh, sw, ph,
                                   pw, count_include_pad, x.strides[0] // 4, y.strides[0] // 4)
    with nogil:
        ce_pool_for(num_threads, P, _avgpool_planes, &j)


ctypedef struct AvgPoolJob:
    const float* x
    float* y
    Py_ssize_t H, W, OH, OW, kh, kw, sh, sw, ph, pw
    bint count_include_pad
    Py_ssize_t x_plane, y_plane


cdef void _avgpool_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef AvgPoolJob* j = <AvgPoolJob*>job
    cdef Py_ssize_t p
    for p in range(lo, hi):
        f32_avgpool2d_plane(j.x + p * j.x_plane, j.H, j.W, j.y + p * j.y_plane, j.OH, j.OW,
                            j.kh, j.kw, j.sh, j.sw, j.ph, j.pw, j.count_include_pad)


cdef double sum_f64(const float* a, Py_ssize_t n) noexcept nogil:
    """Sum in float64 over eight interleaved lanes: a single running sum is a chain of
    dependent additions that cannot be vectorised; eight fixed lanes, combined in a fixed
    order, vectorise and give the same result on every run and thread count."""
    cdef double lanes[8]
    cdef Py_ssize_t i, j, n8 = n - n % 8
    cdef double total = 0
    for j in range(8):
        lanes[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            lanes[j] += a[i + j]
    for j in range(8):
        total += lanes[j]
    for i in range(n8, n):
        total += a[i]
    return total


def f32_global_avgpool(const float[:, ::1] x, float[::1] y, int num_threads):
    """y[p] = mean of x[p, :], summed in float64: a whole plane can be thousands of terms."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1]
    if P == 0:
        return
    cdef GlobalJob j = GlobalJob(&x[0, 0], x.strides[0] // 4, L, &y[0])
    with nogil:
        ce_pool_for(num_threads, P, _global_means, &j)


# Rows of x (L values each, rows apart in memory) to one value each
ctypedef struct GlobalJob:
    const float* x
    Py_ssize_t row, L
    float* y


cdef void _global_means(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef GlobalJob* j = <GlobalJob*>job
    cdef Py_ssize_t p
    for p in range(lo, hi):
        j.y[p] = <float>(sum_f64(j.x + p * j.row, j.L) / j.L)


cdef void _global_maxima(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef GlobalJob* j = <GlobalJob*>job
    cdef Py_ssize_t p, i
    cdef float m, v
    for p in range(lo, hi):
        m = -INFINITY
        for i in range(j.L):
            v = j.x[p * j.row + i]
            if v > m or v != v:
                m = v
        j.y[p] = m


def f32_global_maxpool(const float[:, ::1] x, float[::1] y, int num_threads):
    """y[p] = max of x[p, :]; NaN wins, as in max pooling."""
    cdef Py_ssize_t P = x.shape[0], L = x.shape[1]
    if P == 0:
        return
    cdef GlobalJob j = GlobalJob(&x[0, 0], x.strides[0] // 4, L, &y[0])
    with nogil:
        ce_pool_for(num_threads, P, _global_maxima, &j)
