# Max and average pooling on channel-blocked tensors (NCHWc, kernels/_nchwc_block.h): one
# vector of a block's channels per tap, so a pool between blocked layers needs no layout change.
# Windows follow ONNX: taps in the padding or past a ceil-mode end are skipped (max: ONNX's -inf padding;
# average: the caller's divisor per output, engine.ops.pool.onnx_avgpool_divisor). Each output
# takes its taps in row-major order from 0 (average) or -inf (max), as the NCHW kernels of
# kernels/pool.pyx do, so values are theirs (but for a NaN's payload: a maximum over a NaN is
# NaN). Work items are output rows of one block, ordered (image, block, row); every output is
# computed whole by one thread. Columns whose windows lie inside the row go four at a time,
# their maxima or sums side by side: one by one, each output was a chain of dependent steps.
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()

cdef extern from *:
    """
    #include <stddef.h>

    #include "_nchwc_block.h"

    #if defined(__AVX512F__)
    #include <immintrin.h>
    #define CE_NC_MAX(t, m) ((ce_nc_vf)_mm512_max_ps((__m512)(t), (__m512)(m)))
    #elif defined(__AVX__)
    #include <immintrin.h>
    #define CE_NC_MAX(t, m) ((ce_nc_vf)_mm256_max_ps((__m256)(t), (__m256)(m)))
    #else
    /* builds without AVX (CONVENGINE_PORTABLE=1): the same select, m where t is not larger
       (a NaN in either gives m, as maxps does) */
    static inline ce_nc_vf ce_nc_max_select(ce_nc_vf t, ce_nc_vf m)
    {
        ce_nc_vi k = t > m;
        return (ce_nc_vf)(((ce_nc_vi)t & k) | ((ce_nc_vi)m & ~k));
    }
    #define CE_NC_MAX(t, m) ce_nc_max_select(t, m)
    #endif

    /* One output pixel, every tap checked: the maximum (avg == 0) or the sum of the window's
     * taps inside the plane, in row-major order; the maximum takes NaN as the NCHW kernels
     * do (the first NaN met). */
    static inline ce_nc_vf ce_nc_pool_pixel(const float *x, int H, int W, int iy0, int ix0,
                                            int kh, int kw, int dh, int dw, int avg)
    {
        const ptrdiff_t B = CE_NC_B;
        const ce_nc_vf zero = {0};
        ce_nc_vf m = avg ? zero : zero - __builtin_inff();
        for (int u = 0; u < kh; u++) {
            int iy = iy0 + u * dh;
            if (iy < 0 || iy >= H)
                continue;
            const float *row = x + (ptrdiff_t)iy * W * B;
            for (int v = 0; v < kw; v++) {
                int ix = ix0 + v * dw;
                if (ix < 0 || ix >= W)
                    continue;
                ce_nc_vf t = CE_NC_LD(row + (ptrdiff_t)ix * B);
                if (avg) {
                    m += t;
                } else {
                    ce_nc_vi take = (t > m) | (t != t);
                    m = (ce_nc_vf)(((ce_nc_vi)t & take) | ((ce_nc_vi)m & ~take));
                }
            }
        }
        return m;
    }

    /* Four pixels whose windows lie inside the row (at input columns ix, ix + sw, ...), over
     * the nr rows r inside the plane, their maxima or sums side by side. The maximum as
     * max(t, m), which keeps m where t is NaN or equal to it (the first of +0 and -0, as
     * ce_nc_pool_pixel), with the NaNs met noted apart and given back at the end. */
    static inline void ce_nc_pool4(const float *const *r, int nr, int kw, int dw, int sw,
                                   ptrdiff_t ix, int avg, ce_nc_vf *res)
    {
        const ptrdiff_t B = CE_NC_B, st = (ptrdiff_t)sw * B;
        const ce_nc_vf zero = {0};
        ce_nc_vf a0, a1, a2, a3;
        a0 = a1 = a2 = a3 = avg ? zero : zero - __builtin_inff();
        ce_nc_vi n0 = {0}, n1 = {0}, n2 = {0}, n3 = {0};
        for (int k = 0; k < nr; k++) {
            const float *p = r[k] + ix * B;
            for (int v = 0; v < kw; v++, p += (ptrdiff_t)dw * B) {
                ce_nc_vf t0 = CE_NC_LD(p), t1 = CE_NC_LD(p + st), t2 = CE_NC_LD(p + 2 * st),
                         t3 = CE_NC_LD(p + 3 * st);
                if (avg) {
                    a0 += t0; a1 += t1; a2 += t2; a3 += t3;
                } else {
                    a0 = CE_NC_MAX(t0, a0); n0 |= t0 != t0;
                    a1 = CE_NC_MAX(t1, a1); n1 |= t1 != t1;
                    a2 = CE_NC_MAX(t2, a2); n2 |= t2 != t2;
                    a3 = CE_NC_MAX(t3, a3); n3 |= t3 != t3;
                }
            }
        }
        if (!avg) {
            const ce_nc_vi qnan = (ce_nc_vi)(zero + __builtin_nanf(""));
            a0 = (ce_nc_vf)(((ce_nc_vi)a0 & ~n0) | (qnan & n0));
            a1 = (ce_nc_vf)(((ce_nc_vi)a1 & ~n1) | (qnan & n1));
            a2 = (ce_nc_vf)(((ce_nc_vi)a2 & ~n2) | (qnan & n2));
            a3 = (ce_nc_vf)(((ce_nc_vi)a3 & ~n3) | (qnan & n3));
        }
        res[0] = a0; res[1] = a1; res[2] = a2; res[3] = a3;
    }

    /* One output row of one channel block: the maximum (avg == NULL) or the sum divided by
     * avg[ox] (0 where avg[ox] is 0: a window with no tap to count) over the window's taps
     * inside the plane. The columns whose windows lie inside the row four at a time, the
     * others (and any row of a window over 32 rows) tap by tap. */
    static void ce_nc_pool_row(const float *x, int H, int W, int OW, int oy, int sh, int sw,
                               int pt, int pl, int kh, int kw, int dh, int dw,
                               const float *avg, float *out, int OH, int ahead)
    {
        const ptrdiff_t B = CE_NC_B;
        const ce_nc_vf zero = {0};
        const int is_avg = avg != NULL;
        int iy0 = oy * sh - pt;
        /* ox * sw - pl >= 0 and ox * sw - pl + (kw - 1) * dw <= W - 1 */
        int last = W - 1 - (kw - 1) * dw + pl;
        int lo = (pl + sw - 1) / sw, hi = last < 0 ? 0 : last / sw + 1;
        if (hi > OW) hi = OW;
        if (lo > hi || kh > 32) lo = hi = 0;
        hi = lo + (hi - lo) / 4 * 4;
        /* the input rows that the output row ``ahead`` rows on adds to its window, a line at
         * a time: a pool reads its input once, mostly from memory although the layer before
         * just wrote it, and the hardware prefetcher did not keep up with the few rows read
         * side by side */
        for (int u = kh > sh ? kh - sh : 0; u < kh && ahead > 0; u++) {
            int iy = iy0 + ahead * sh + u * dh;
            if (iy >= 0 && iy < H && oy + ahead < OH) {
                const char *p = (const char *)(x + (ptrdiff_t)iy * W * B);
                for (ptrdiff_t at = 0; at < (ptrdiff_t)W * B * 4; at += 64)
                    __builtin_prefetch(p + at, 0, 3);
            }
        }
        const float *r[32];
        int nr = 0;
        for (int u = 0; u < kh && hi > lo; u++) {
            int iy = iy0 + u * dh;
            if (iy >= 0 && iy < H)
                r[nr++] = x + (ptrdiff_t)iy * W * B;
        }
        for (int ox = 0; ox < OW; ox++) {
            ce_nc_vf m[4];
            int n = 1;
            if (ox >= lo && ox < hi) {
                ce_nc_pool4(r, nr, kw, dw, sw, (ptrdiff_t)ox * sw - pl, is_avg, m);
                n = 4;
            } else {
                m[0] = ce_nc_pool_pixel(x, H, W, iy0, ox * sw - pl, kh, kw, dh, dw, is_avg);
            }
            for (int j = 0; j < n; j++) {
                if (avg)
                    m[j] = avg[ox + j] > 0.0f ? m[j] / avg[ox + j] : zero;
                CE_NC_ST(out + (ptrdiff_t)(ox + j) * B, m[j]);
            }
            ox += n - 1;
        }
    }
    """
    int CE_NC_B
    void ce_nc_pool_row(const float *x, int H, int W, int OW, int oy, int sh, int sw, int pt,
                        int pl, int kh, int kw, int dh, int dw, const float *avg,
                        float *out, int OH, int ahead) nogil


# Output rows ahead whose new input rows a row prefetches (0: none). 3x3 stride-2 max pools
# with their input from memory, one / two threads: 96 channels on 109x109 0.90 / 0.91 of
# the time without, 64 on 112x112 0.91 / 0.94, 256 on 54x54 0.73 / 0.74; 4 and 8 rows ahead
# were no better (bench/bench_dispatch.py would not show it: its inputs are warm).
PREFETCH_ROWS = 2


ctypedef struct PoolJob:
    const float* x
    Py_ssize_t H, W, OH, OW
    int sh, sw, pt, pl, kh, kw, dh, dw
    const float* avg
    float* out
    int ahead


cdef void _pool_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Output rows [lo, hi) of all images' blocks (the threads of the engine's pool take them
    in pieces, kernels/_pool.h)."""
    cdef PoolJob* j = <PoolJob*>job
    cdef Py_ssize_t it, plane, oy
    for it in range(lo, hi):
        plane = it // j.OH
        oy = it % j.OH
        ce_nc_pool_row(j.x + plane * j.H * j.W * CE_NC_B, <int>j.H, <int>j.W, <int>j.OW, <int>oy,
                       j.sh, j.sw, j.pt, j.pl, j.kh, j.kw, j.dh, j.dw,
                       (j.avg + oy * j.OW) if j.avg != NULL else NULL,
                       j.out + (plane * j.OH + oy) * j.OW * CE_NC_B, <int>j.OH, j.ahead)


cdef int run_pool(const float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] out, const float* avg,
                  int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                  int num_threads) except -1:
    cdef Py_ssize_t N = x.shape[0], Cb = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    if x.shape[4] != CE_NC_B or out.shape[4] != CE_NC_B or out.shape[0] != N \
            or out.shape[1] != Cb:
        raise ValueError(f"x {tuple(x.shape)} and out {tuple(out.shape)} must be blocked with "
                         f"the same images and blocks")
    if kh < 1 or kw < 1:
        raise ValueError(f"the window must be at least 1x1, got {kh}x{kw}")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or pt < 0 or pl < 0:
        raise ValueError("strides and dilations must be positive and pads non-negative")
    if H > 1 << 30 or W > 1 << 30 or OH > 1 << 30 or OW > 1 << 30:
        raise ValueError(f"the planes {H}x{W} and {OH}x{OW} must be of sane size")
    if N == 0 or Cb == 0 or OH == 0 or OW == 0:
        return 0
    cdef PoolJob j = PoolJob(&x[0, 0, 0, 0, 0], H, W, OH, OW, sh, sw, pt, pl, kh, kw, dh, dw,
                             avg, &out[0, 0, 0, 0, 0], <int>max(0, PREFETCH_ROWS))
    with nogil:
        ce_pool_for(num_threads, N * Cb * OH, _pool_rows, &j)
    return 0


def f32_maxpool_blocked(const float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] out, int kh,
                        int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                        int num_threads):
    """Max pooling on blocks (no indices): out[n, cb, oy, ox] = the maximum over the window's
    taps inside the plane, -inf for a window with none. Output sizes are the caller's."""
    run_pool(x, out, NULL, kh, kw, sh, sw, pt, pl, dh, dw, num_threads)


def f32_avgpool_blocked(const float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] out,
                        const float[:, ::1] divisor, int kh, int kw, int sh, int sw, int pt,
                        int pl, int dh, int dw, int num_threads):
    """Average pooling on blocks: out[n, cb, oy, ox] = the sum over the window's taps inside
    the plane / divisor[oy, ox] (ONNX's count, with or without the padding; 0 gives 0)."""
    if divisor.shape[0] != out.shape[2] or divisor.shape[1] != out.shape[3]:
        raise ValueError(f"divisor must have the output plane's shape "
                         f"{tuple(out.shape)[2:4]}, got {tuple(divisor.shape)[:2]}")
    run_pool(x, out, &divisor[0, 0] if divisor.size else NULL, kh, kw, sh, sw, pt, pl, dh, dw,
             num_threads)
