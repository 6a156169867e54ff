# Max and average pooling and global pooling on NCHW float32 planes (max-unpooling:
# kernels/unpool.pyx; the vector passes of max pooling without indices: _maxpool_rows.h).
#
# Every kernel treats the input as P = N*C independent planes, which the threads of the
# engine's pool (kernels/_pool.h) take whole, so an output element is always computed by the
# same loop in the same order whatever the thread count. Geometry (output sizes, padding
# limits, index ranges) is checked by engine/ops/pool.py before any of these run.
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


cdef extern from "_maxpool_rows.h":
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
