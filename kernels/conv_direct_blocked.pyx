# Register-blocked direct convolution for layers with few channels and large images.
#
# With 16-32 output channels, im2col + GEMM moves a column matrix as large as its arithmetic
# and Winograd's transforms outweigh the products they save. Here the arithmetic reads the
# input in place: for a strip of output columns of one output row, KB output channels (8; 4
# with AVX2, two vectors each) keep their partial sums in vector registers (KB x NV vectors)
# while the loop runs over input channels c and taps (u, v); each step loads NV input vectors
# and does KB x NV fused multiply-adds with broadcast weights, packed once by the plan as
# [g][K/KB][Cg][kh][kw][KB].
#
# Every tap load is one contiguous vector load from a per-thread copy of the input rows a
# block of output rows needs: zero-padded at the borders, and each row split into its sw
# phases (padded column j*sw + p stored at p*PL + j), so that for any stride and dilation tap
# v of output column ox reads phase (v*dw) % sw at index ox + (v*dw) // sw. The copy costs one
# pass over the input per block (plus the (kh-1)*dh halo rows) and is shared by all the output
# channel blocks of the work item.
#
# Work items are (image, group, block of output rows); the row blocks depend on the shapes
# only, and each output is summed in the same order (c, u, v) whatever the split, so the
# result does not depend on the thread count.
from libc.string cimport memcpy, memset

from _epilogue cimport bias_act_row, ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()

cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    #include "_store_part.h"
    /* One vector per register: 16 floats with AVX-512, 8 with AVX, 4 otherwise (SSE/NEON),
       so the accumulators fit the register file on every target. */
    #if defined(__AVX512F__)
    #define CE_DB_VW 16
    #define CE_DB_NV 2
    #define CE_DB_KB 8
    #elif defined(__AVX2__)
    /* 4 channels x 2 vectors: 4 broadcasts and 2 loads per 8 multiply-adds, where 8 x 1 took
       8 broadcasts (the inner loop alone: 1.30 against 1.77 ns per 8 multiply-adds) */
    #define CE_DB_VW 8
    #define CE_DB_NV 2
    #define CE_DB_KB 4
    #elif defined(__AVX__)
    #define CE_DB_VW 8
    #define CE_DB_NV 1
    #define CE_DB_KB 8
    #else
    #define CE_DB_VW 4
    #define CE_DB_NV 1
    #define CE_DB_KB 8
    #endif
    typedef float ce_db_vf __attribute__((vector_size(CE_DB_VW * 4)));
    /* the same vector for unaligned loads and stores */
    typedef float ce_db_vfu __attribute__((vector_size(CE_DB_VW * 4), aligned(4), may_alias));

    #define CE_DB_LD(p) (*(const ce_db_vfu *)(p))

    /* Store KB accumulators of one vector: whole vectors straight to out, a partial one (n
       valid columns) through a buffer; only the first nk channels exist. */
    static inline void ce_db_store(const ce_db_vf *acc, float *out, ptrdiff_t kstride, int nk,
                                   int n)
    {
        for (int k = 0; k < nk; k++) {
            if (n == CE_DB_VW) {
                *(ce_db_vfu *)(out + k * kstride) = acc[k];
            } else {
                float tmp[CE_DB_VW];
                memcpy(tmp, &acc[k], sizeof tmp);
                memcpy(out + k * kstride, tmp, n * sizeof(float));
            }
        }
    }

    #if defined(__AVX2__) && !defined(__AVX512F__)
    #include <immintrin.h>
    /* d[j] = src[j - pl] for lo <= j < hi, 0 for the rest of j < PL, by 8-float vectors: a
       masked load at the row's edges (lanes outside [lo, hi) are not read), and the last
       vector's first floats stored as 4 + 2 + 1. The memset, memcpy, memset per row it
       replaces were library calls on a few floats each. */
    #define CE_DB_COPY_ROW 1
    static inline __m256i ce_db_lanes_below(int n)
    {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static void ce_db_copy_row(float *d, const float *src, int pl, int lo, int hi, int PL)
    {
        for (int j = 0; j < PL; j += 8) {
            int a = lo - j, b = hi - j;
            a = a < 0 ? 0 : (a > 8 ? 8 : a);
            b = b < a ? a : (b > 8 ? 8 : b);
            __m256 v = _mm256_setzero_ps();
            if (a == 0 && b == 8)
                v = _mm256_loadu_ps(src + (j - pl));
            else if (a < b)
                v = _mm256_maskload_ps(src + (j - pl), _mm256_andnot_si256(ce_db_lanes_below(a),
                                                                           ce_db_lanes_below(b)));
            if (j + 8 <= PL)
                _mm256_storeu_ps(d + j, v);
            else
                ce_store_first8(d + j, v, PL - j);
        }
    }
    #endif

    #define CE_DB_FMA1(k) a##k += x0 * wk[k];
    #define CE_DB_FMA2(k) a##k += x0 * wk[k]; b##k += x1 * wk[k];
    #if CE_DB_KB == 8
    #define CE_DB_ALL(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
    #else
    #define CE_DB_ALL(M) M(0) M(1) M(2) M(3)
    #endif

    /* Two vectors x KB channels: the vector at in/out and the one at in + in2/out + out2 (the
       next vector of the same row, or the same columns of the next output row), n0 and n1
       valid columns. in: the buffer row of tap row 0 for channel 0; cstride: floats between
       channels in the buffer; rstride: floats between tap rows (dh buffer rows); voff[v]: the
       offset of tap v. */
    static void ce_db_strip2(const float *in, ptrdiff_t in2, ptrdiff_t cstride,
                             ptrdiff_t rstride, const ptrdiff_t *voff, int C, int kh, int kw,
                             const float *w, float *out, ptrdiff_t out2, ptrdiff_t kstride,
                             int nk, int n0, int n1)
    {
    #if CE_DB_NV == 2
        ce_db_vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
        ce_db_vf b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}, b4 = {0}, b5 = {0}, b6 = {0}, b7 = {0};
        const float *wk = w;
        for (int c = 0; c < C; c++) {
            const float *row = in + c * cstride;
            for (int u = 0; u < kh; u++, row += rstride) {
                for (int v = 0; v < kw; v++, wk += CE_DB_KB) {
                    const float *p = row + voff[v];
                    ce_db_vf x0 = CE_DB_LD(p), x1 = CE_DB_LD(p + in2);
                    CE_DB_ALL(CE_DB_FMA2)
                }
            }
        }
        ce_db_vf acc0[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
        ce_db_vf acc1[8] = {b0, b1, b2, b3, b4, b5, b6, b7};
        (void)a4; (void)a5; (void)a6; (void)a7; (void)b4; (void)b5; (void)b6; (void)b7;
        ce_db_store(acc0, out, kstride, nk, n0);
        ce_db_store(acc1, out + out2, kstride, nk, n1);
    #else
        (void)in; (void)in2; (void)cstride; (void)rstride; (void)voff; (void)C; (void)kh;
        (void)kw; (void)w; (void)out; (void)out2; (void)kstride; (void)nk; (void)n0; (void)n1;
    #endif
    }

    static void ce_db_strip1(const float *in, ptrdiff_t cstride, ptrdiff_t rstride,
                             const ptrdiff_t *voff, int C, int kh, int kw, const float *w,
                             float *out, ptrdiff_t kstride, int nk, int n0)
    {
        ce_db_vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
        const float *wk = w;
        for (int c = 0; c < C; c++) {
            const float *row = in + c * cstride;
            for (int u = 0; u < kh; u++, row += rstride) {
                for (int v = 0; v < kw; v++, wk += CE_DB_KB) {
                    ce_db_vf x0 = CE_DB_LD(row + voff[v]);
                    CE_DB_ALL(CE_DB_FMA1)
                }
            }
        }
        ce_db_vf acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
        ce_db_store(acc, out, kstride, nk, n0);
    }

    /* nrows output rows of KB channels. Pairs of rows go two vectors at a time, one per row,
       so that any width wastes at most one partial vector per row; a last odd row pairs
       neighbouring vectors of itself. instep: floats between the buffer rows of consecutive
       output rows (sh buffer rows). */
    static void ce_db_rows(const float *in, ptrdiff_t instep, ptrdiff_t cstride,
                           ptrdiff_t rstride, const ptrdiff_t *voff, int C, int kh, int kw,
                           const float *w, float *out, ptrdiff_t kstride, int nk, int OW,
                           int nrows)
    {
        int r = 0;
        const int vw = CE_DB_VW;
        if (CE_DB_NV == 2) {
            for (; r + 2 <= nrows; r += 2) {
                const float *ip = in + r * instep;
                float *op = out + (ptrdiff_t)r * OW;
                for (int ox = 0; ox < OW; ox += vw) {
                    int n = OW - ox < vw ? OW - ox : vw;
                    ce_db_strip2(ip + ox, instep, cstride, rstride, voff, C, kh, kw, w,
                                 op + ox, OW, kstride, nk, n, n);
                }
            }
        }
        for (; r < nrows; r++) {
            const float *ip = in + r * instep;
            float *op = out + (ptrdiff_t)r * OW;
            int ox = 0;
            if (CE_DB_NV == 2)
                for (; ox + vw < OW; ox += 2 * vw) {
                    int n1 = OW - ox - vw < vw ? OW - ox - vw : vw;
                    ce_db_strip2(ip + ox, vw, cstride, rstride, voff, C, kh, kw, w, op + ox, vw,
                                 kstride, nk, vw, n1);
                }
            for (; ox < OW; ox += vw)
                ce_db_strip1(ip + ox, cstride, rstride, voff, C, kh, kw, w, op + ox, kstride,
                             nk, OW - ox < vw ? OW - ox : vw);
        }
    }

    /* Copy input rows iy0 .. iy0+nrows-1 of C channels (plane stride HW) into buf, zero
       outside the image, each row as s phases of PL floats: padded column j*s + p at p*PL + j,
       input column j*s + p - pl. Only the phases some tap reads (used[p]) are written. */
    static void ce_db_fill(const float *x, ptrdiff_t HW, int C, int H, int W, int iy0,
                           int nrows, int s, int pl, int PL, const unsigned char *used,
                           float *buf)
    {
        ptrdiff_t row_len = (ptrdiff_t)s * PL;
        for (int c = 0; c < C; c++) {
            for (int r = 0; r < nrows; r++) {
                float *dst = buf + ((ptrdiff_t)c * nrows + r) * row_len;
                int iy = iy0 + r;
                if (iy < 0 || iy >= H) {
                    memset(dst, 0, row_len * sizeof(float));
                    continue;
                }
                const float *src = x + c * HW + (ptrdiff_t)iy * W;
                for (int p = 0; p < s; p++) {
                    if (!used[p])
                        continue;
                    float *d = dst + (ptrdiff_t)p * PL;
                    /* j*s + p - pl in [0, W) */
                    int lo = pl - p > 0 ? (pl - p + s - 1) / s : 0;
                    int hi = W - 1 + pl - p >= 0 ? (W - 1 + pl - p) / s + 1 : 0;
                    if (lo > PL) lo = PL;
                    if (hi > PL) hi = PL;
                    if (hi < lo) hi = lo;
    #ifdef CE_DB_COPY_ROW
                    if (s == 1) {
                        ce_db_copy_row(d, src, pl, lo, hi, PL);
                        continue;
                    }
    #endif
                    memset(d, 0, lo * sizeof(float));
                    if (s == 1) {
                        memcpy(d + lo, src + lo - pl, (hi - lo) * sizeof(float));
                    } else if (s == 2) {
                        /* a constant stride the compiler turns into vector permutes */
                        const float *restrict sp = src + (ptrdiff_t)lo * 2 + p - pl;
                        float *restrict dp = d + lo;
                        ptrdiff_t m = hi - lo;
                        for (ptrdiff_t j = 0; j < m; j++)
                            dp[j] = sp[2 * j];
                    } else {
                        const float *sp = src + (ptrdiff_t)lo * s + p - pl;
                        for (int j = lo; j < hi; j++, sp += s)
                            d[j] = *sp;
                    }
                    memset(d + hi, 0, (PL - hi) * sizeof(float));
                }
            }
        }
    }
    """
    int CE_DB_VW
    int CE_DB_NV
    int CE_DB_KB
    void ce_db_rows(const float* inp, Py_ssize_t instep, Py_ssize_t cstride,
                    Py_ssize_t rstride, const Py_ssize_t* voff, int C, int kh, int kw,
                    const float* w, float* out, Py_ssize_t kstride, int nk, int OW,
                    int nrows) noexcept nogil
    void ce_db_fill(const float* x, Py_ssize_t HW, int C, int H, int W, int iy0, int nrows,
                    int s, int pl, int PL, const unsigned char* used,
                    float* buf) noexcept nogil

# Output channels per register block; the plan packs weights in blocks of this many.
BLOCK_CHANNELS = CE_DB_KB
# Floats per vector and vectors per strip of this build (AVX-512: 16 and 2).
VECTOR_FLOATS = CE_DB_VW
STRIP_VECTORS = CE_DB_NV
# Taps per row (and stride phases) the kernel handles: their offsets live on the stack.
cdef enum:
    _MAX_WIDTH = 64
MAX_KERNEL_WIDTH = _MAX_WIDTH


cdef inline Py_ssize_t _phase_length(Py_ssize_t OW, int kw, int sw, int dw) noexcept nogil:
    cdef Py_ssize_t owr = (OW + CE_DB_VW - 1) // CE_DB_VW * CE_DB_VW
    return owr + (kw - 1) * dw // sw + 1


cdef inline Py_ssize_t _buffer_rows(Py_ssize_t rows, int kh, int sh, int dh) noexcept nogil:
    return (rows - 1) * sh + (kh - 1) * dh + 1


def phase_length(Py_ssize_t OW, int kw, int sw, int dw):
    """Floats per phase of a buffer row: the output columns rounded up to whole vectors, plus
    the furthest tap's offset within its phase (so no vector load leaves the row)."""
    return _phase_length(OW, kw, sw, dw)


def buffer_rows(Py_ssize_t rows, int kh, int sh, int dh):
    """Input rows a block of ``rows`` output rows reads."""
    return _buffer_rows(rows, kh, sh, dh)


def f32_conv2d_direct_blocked(const float[:, :, :, ::1] x, const float[::1] wpack, bias,
                              float[:, :, :, ::1] out, float[::1] work,
                              int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                              int groups, int rows_per_block, ce_act_t act, int num_threads):
    """out = conv2d(x, w) with wpack the weights as [groups][ceil(Kg/KB)][Cg][kh][kw][KB],
    zero beyond Kg; work holds num_threads buffers of Cg * buffer_rows * sw * phase_length
    floats. Shapes are checked by the caller (engine.ops.direct_blocked), and again here
    where a wrong size would write out of bounds."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups
    cdef Py_ssize_t nkb = (Kg + CE_DB_KB - 1) // CE_DB_KB
    cdef Py_ssize_t wblock = Cg * kh * kw * CE_DB_KB
    if kw > MAX_KERNEL_WIDTH:
        raise ValueError(f"kernel width must be at most {MAX_KERNEL_WIDTH}, got {kw}")
    if rows_per_block < 1:
        raise ValueError(f"rows_per_block must be positive, got {rows_per_block}")
    if wpack.shape[0] != groups * nkb * wblock:
        raise ValueError(f"wpack must hold {groups * nkb * wblock} floats, got {wpack.shape[0]}")
    if sw > MAX_KERNEL_WIDTH:
        raise ValueError(f"stride must be at most {MAX_KERNEL_WIDTH}, got {sw}")
    cdef int PL = <int>_phase_length(OW, kw, sw, dw)
    cdef Py_ssize_t nrows = _buffer_rows(rows_per_block, kh, sh, dh)
    cdef Py_ssize_t row_len = sw * PL
    cdef Py_ssize_t per_thread = Cg * nrows * row_len
    cdef Py_ssize_t nblocks = (OH + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t items = N * groups * nblocks
    if num_threads > items:
        num_threads = <int>max(1, items)
    if num_threads < 1:
        num_threads = 1
    if work.shape[0] < num_threads * per_thread:
        raise ValueError(f"work must hold {num_threads * per_thread} floats, "
                         f"got {work.shape[0]}")
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != K:
            raise ValueError(f"bias must have {K} values, got {b.shape[0]}")
        bptr = &b[0]
    cdef Py_ssize_t voff[_MAX_WIDTH]
    cdef unsigned char used[_MAX_WIDTH]
    cdef Py_ssize_t v, p
    for p in range(sw):
        used[p] = 0
    for v in range(kw):
        voff[v] = (v * dw) % sw * PL + (v * dw) // sw
        used[(v * dw) % sw] = 1

    # images and channels may lie apart (views of a larger tensor); rows are whole planes
    cdef DirectJob j = DirectJob(&x[0, 0, 0, 0], x.strides[0] // 4, x.strides[1] // 4,
                                 &wpack[0], bptr, &out[0, 0, 0, 0], out.strides[0] // 4,
                                 &work[0], per_thread, &voff[0], &used[0], H, W, OH, OW, Cg, Kg,
                                 groups, nblocks, nkb, wblock, rows_per_block, row_len, PL, kh,
                                 kw, sh, sw, pt, pl, dh, act)
    with nogil:
        ce_pool_for(num_threads, items, _direct_blocks, &j)


ctypedef struct DirectJob:
    const float* x
    Py_ssize_t x_img, x_chan
    const float* wpack
    const float* bias
    float* out
    Py_ssize_t out_img
    float* work
    Py_ssize_t per_thread
    const Py_ssize_t* voff
    const unsigned char* used
    Py_ssize_t H, W, OH, OW, Cg, Kg, groups, nblocks, nkb, wblock, rows_per_block, row_len, PL
    int kh, kw, sh, sw, pt, pl, dh
    ce_act_t act


cdef void _direct_blocks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): blocks of output rows, ordered (image, group, block)."""
    cdef DirectJob* j = <DirectJob*>job
    cdef Py_ssize_t it, n, g, blk, oy0, oy1, kb, k0, nk, k, OH = j.OH, OW = j.OW
    cdef Py_ssize_t row_len = j.row_len
    cdef float* buf = j.work + thread * j.per_thread
    cdef float* orow
    cdef const float* wk
    for it in range(lo, hi):
        n = it // (j.groups * j.nblocks)
        g = (it // j.nblocks) % j.groups
        blk = it % j.nblocks
        oy0 = blk * j.rows_per_block
        oy1 = min(oy0 + j.rows_per_block, OH)
        ce_db_fill(j.x + n * j.x_img + g * j.Cg * j.x_chan, j.H * j.W, <int>j.Cg, <int>j.H,
                   <int>j.W, <int>(oy0 * j.sh - j.pt),
                   <int>_buffer_rows(oy1 - oy0, j.kh, j.sh, j.dh), j.sw, j.pl, j.PL, j.used,
                   buf)
        for kb in range(j.nkb):
            k0 = kb * CE_DB_KB
            nk = min(CE_DB_KB, j.Kg - k0)
            wk = j.wpack + (g * j.nkb + kb) * j.wblock
            orow = j.out + n * j.out_img + (g * j.Kg + k0) * OH * OW + oy0 * OW
            ce_db_rows(buf, j.sh * row_len, _buffer_rows(oy1 - oy0, j.kh, j.sh, j.dh) * row_len,
                       j.dh * row_len, j.voff, <int>j.Cg, j.kh, j.kw, wk, orow, OH * OW,
                       <int>nk, <int>OW, <int>(oy1 - oy0))
            for k in range(nk):
                bias_act_row(orow + k * OH * OW, (oy1 - oy0) * OW,
                             j.bias[g * j.Kg + k0 + k] if j.bias != NULL else 0, j.act)
