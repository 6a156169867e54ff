# Deformable convolution (DCN v1 and v2) as bilinear im2col + GEMM on the packed micro-kernel.
#
# Tap (u, v) of output pixel (oy, ox) reads the input at the fractional position
#     y = oy*sh - pt + u*dh + dy,    x = ox*sw - pl + v*dw + dx
# where (dy, dx) is that tap's learned offset, bilinearly interpolated with zeros outside the
# input, and (v2) scaled by that tap's mask. The sampling position is shared by the channels of
# one offset group, so the input is first copied channels-last with a one-pixel zero border:
# then the four corners of a sample are four contiguous channel vectors at fixed distances
# from one index, every corner of a position in (-1, H) x (-1, W) lies inside the copy, and
# the channel loop is a branch-free, vectorisable axpy of four rows.
# The columns are pixel-major, cols[pixel, (u*kw + v)*Cg + c] (the weights are permuted to
# match and packed once, in the plan), and one GEMM per chunk of output rows gives
#     out[n, g*Kg:(g+1)*Kg, rows] = W_g[Kg, kh*kw*Cg] @ cols[rows*OW, kh*kw*Cg]^T
# run by the micro-kernel of _packed_gemm.h, whose output step adds the bias and applies the
# activation; its panels of 32 pixels are the columns transposed 16 x 16 at a time in
# registers (_transpose16.h).
# Work items are (image, group, chunk); the chunking depends on the shapes only, so every
# output element is computed by the same instructions for any thread count.
from libc.math cimport floorf
from libc.string cimport memset

from _epilogue cimport ce_act_t, check_act
from _packed_gemm cimport CE_PG_MR, CE_PG_NR, ce_pg_block
from _pool cimport ce_pool_attach, ce_pool_for
from _scratch cimport check_scratch

ce_pool_attach()


cdef extern from "_transpose16.h":
    void ce_transpose16(const float *src, Py_ssize_t sstride, float *dst,
                        Py_ssize_t dstride) nogil


cdef void pack_transposed(const float* cols, Py_ssize_t ncols, Py_ssize_t kdim,
                          float* panels) noexcept nogil:
    """panels[p][k][j] = cols[p*NR + j, k] (zero beyond ncols): the pixel-major columns as
    the micro-kernel's panels of NR pixels; whole 16 x 16 squares through the register
    transpose, the edges element by element."""
    cdef Py_ssize_t NR = CE_PG_NR, npan = (ncols + NR - 1) // NR
    cdef Py_ssize_t p, j0, k0, k, j, n
    cdef float* panel
    for p in range(npan):
        panel = panels + p * kdim * NR
        j0 = 0
        while j0 < NR:
            n = min(16, ncols - p * NR - j0)        # pixels of this half-panel
            k0 = 0
            if n == 16 and NR % 16 == 0:
                while k0 + 16 <= kdim:
                    ce_transpose16(cols + (p * NR + j0) * kdim + k0, kdim,
                                   panel + k0 * NR + j0, NR)
                    k0 = k0 + 16
            for k in range(k0, kdim):
                for j in range(min(16, NR - j0)):
                    panel[k * NR + j0 + j] = (cols[(p * NR + j0 + j) * kdim + k]
                                              if j < n else 0)
            j0 = j0 + 16


cdef void to_padded_channels_last(const float* src, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                  Py_ssize_t r, float* dst) noexcept nogil:
    """Row r of the (H+2, W+2, C) zero-bordered channels-last copy of one (C, H, W) image."""
    cdef Py_ssize_t Wp = W + 2, c, ix
    cdef float* row = dst + r * Wp * C
    if r == 0 or r == H + 1:
        memset(row, 0, Wp * C * sizeof(float))
        return
    memset(row, 0, C * sizeof(float))
    memset(row + (W + 1) * C, 0, C * sizeof(float))
    for c in range(C):
        for ix in range(W):
            row[(ix + 1) * C + c] = src[(c * H + r - 1) * W + ix]


cdef void bilinear_columns(const float* xp, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                           const float* off, const float* msk, Py_ssize_t ostride,
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t OW, Py_ssize_t oy0, Py_ssize_t oy1,
                           Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t cg0, Py_ssize_t Cg,
                           float* cols) noexcept nogil:
    """cols[p, t*Cg + c - cg0] for the channels c0 <= c < c1 of one offset group, every tap t
    and the output pixels p of rows oy0 <= oy < oy1.

    xp: the zero-bordered channels-last image (H+2, W+2, C). off: the offset group's 2*kh*kw
    planes (dy of tap t at plane 2t, dx at 2t + 1), msk: its kh*kw mask planes or NULL; planes
    are ostride floats apart.
    """
    cdef Py_ssize_t Wp = W + 2, kdim = kh * kw * Cg, nc = c1 - c0
    cdef Py_ssize_t t, u, v, oy, ox, c, base
    cdef const float* offy
    cdef const float* offx
    cdef const float* s
    cdef float* dst
    cdef float y, x, fy0, fx0, ly, lx, hy, hx, m, w00, w01, w10, w11
    for oy in range(oy0, oy1):
        for ox in range(OW):
            for t in range(kh * kw):
                u = t // kw
                v = t % kw
                offy = off + 2 * t * ostride + oy * OW + ox
                offx = offy + ostride
                y = <float>(oy * sh - pt + u * dh) + offy[0]
                x = <float>(ox * sw - pl + v * dw) + offx[0]
                dst = cols + ((oy - oy0) * OW + ox) * kdim + t * Cg + c0 - cg0
                # written so that a NaN position also lands here
                if not (y > -1 and y < H and x > -1 and x < W):
                    memset(dst, 0, nc * sizeof(float))
                    continue
                fy0 = floorf(y)
                fx0 = floorf(x)
                ly = y - fy0
                lx = x - fx0
                hy = 1 - ly
                hx = 1 - lx
                m = msk[t * ostride + oy * OW + ox] if msk != NULL else 1
                w00 = hy * hx * m
                w01 = hy * lx * m
                w10 = ly * hx * m
                w11 = ly * lx * m
                # corner (floor y, floor x) sits at row floor(y) + 1, column floor(x) + 1 of xp
                base = ((<Py_ssize_t>fy0 + 1) * Wp + <Py_ssize_t>fx0 + 1) * C
                s = xp + base
                for c in range(c0, c1):
                    dst[c - c0] = (w00 * s[c] + w01 * s[c + C]
                                   + w10 * s[c + Wp * C] + w11 * s[c + Wp * C + C])


cdef inline Py_ssize_t thread_floats(Py_ssize_t kdim, Py_ssize_t chunk_cols) noexcept nogil:
    """One thread's pixel-major columns (whole 64-byte lines), then the chunk's panels."""
    cdef Py_ssize_t NR = CE_PG_NR
    return (kdim * chunk_cols + 15) // 16 * 16 + kdim * ((chunk_cols + NR - 1) // NR * NR)


def work_floats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kdim,
                Py_ssize_t chunk_cols, int num_threads):
    """Floats of f32_deform_conv2d's work buffer: the zero-bordered channels-last copy of the
    input (whole 64-byte lines), then each thread's columns and panels."""
    return ((N * (H + 2) * (W + 2) * C + 15) // 16 * 16
            + max(1, num_threads) * thread_floats(kdim, chunk_cols))


def f32_deform_conv2d(const float[:, :, :, ::1] x, const float[:, :, :, ::1] offset, mask,
                      const float[::1] wpack, bias, float[:, :, :, ::1] out,
                      int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                      int groups, int offset_groups, int rows_per_chunk, ce_act_t act,
                      int num_threads, float[::1] work):
    """out = deform_conv2d(x, offset, w, mask) for wpack the weights W[K, kh*kw*Cg] (taps
    outer, channels inner) packed per group as [ceil(Kg/MR)][kh*kw*Cg][MR]; mask is None (v1)
    or float32 (N, offset_groups*kh*kw, OH, OW). Shapes are checked by the caller
    (engine.ops.deform); the packed weights' size and the work buffer here. work:
    work_floats(N, C, H, W, kh*kw*Cg, rows_per_chunk * OW, num_threads) floats, 64-byte
    aligned."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, taps = kh * kw, kdim = Cg * taps
    cdef Py_ssize_t Co = C // offset_groups
    cdef Py_ssize_t nchunks = (OH + rows_per_chunk - 1) // rows_per_chunk
    cdef Py_ssize_t items = N * groups * nchunks
    cdef Py_ssize_t chunk_cols = rows_per_chunk * OW
    cdef Py_ssize_t ostride = OH * OW
    cdef Py_ssize_t image = (H + 2) * (W + 2) * C
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, nmb = (Kg + MR - 1) // MR
    if wpack.shape[0] != groups * nmb * kdim * MR:
        raise ValueError(f"wpack must hold {groups * nmb * kdim * MR} floats, got "
                         f"{wpack.shape[0]}")
    # per thread: the pixel-major columns of a chunk, then its panels (64-byte aligned)
    cdef Py_ssize_t cols_floats = (kdim * chunk_cols + 15) // 16 * 16
    cdef Py_ssize_t per_thread = thread_floats(kdim, chunk_cols)
    cdef Py_ssize_t xp_floats = (N * image + 15) // 16 * 16
    cdef const float[::1] b
    cdef const float* bptr = NULL
    cdef const float[:, :, :, ::1] mview
    cdef const float* mbase = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if mask is not None:
        mview = mask
        mbase = &mview[0, 0, 0, 0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    check_scratch(work, xp_floats + max(1, num_threads) * per_thread, "work")
    if items == 0 or K == 0:
        return
    # images may lie apart (views); within one, channels and rows are whole
    cdef DeformJob j = DeformJob(&x[0, 0, 0, 0], x.strides[0] // 4, &offset[0, 0, 0, 0],
                                 offset.strides[0] // 4, offset.strides[1] // 4, mbase,
                                 &wpack[0], bptr, &out[0, 0, 0, 0], out.strides[0] // 4,
                                 &work[0], xp_floats, per_thread, cols_floats, image, C, H, W,
                                 OH, OW, Cg, Kg, Co, kdim, taps, nchunks, rows_per_chunk,
                                 groups, offset_groups, ostride, nmb, kh, kw, sh, sw, pt, pl,
                                 dh, dw, act)
    with nogil:
        ce_pool_for(num_threads, N * (H + 2), _padded_rows, &j)
        ce_pool_for(num_threads, items, _deform_chunks, &j)


ctypedef struct DeformJob:
    const float* x
    Py_ssize_t x_img
    const float* offset
    Py_ssize_t off_img, off_chan
    const float* mask           # or NULL; (N, offset_groups * taps, OH, OW), contiguous
    const float* wpack
    const float* bias
    float* out
    Py_ssize_t out_img
    float* work                 # the padded channels-last copy, then each thread's buffers
    Py_ssize_t xp_floats, per_thread, cols_floats, image, C, H, W, OH, OW, Cg, Kg, Co, kdim
    Py_ssize_t taps, nchunks, rows_per_chunk, groups, offset_groups, ostride, nmb
    int kh, kw, sh, sw, pt, pl, dh, dw
    ce_act_t act


cdef void _padded_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Rows [lo, hi) of the padded channels-last copy, H + 2 of each image."""
    cdef DeformJob* j = <DeformJob*>job
    cdef Py_ssize_t it, n
    for it in range(lo, hi):
        n = it // (j.H + 2)
        to_padded_channels_last(j.x + n * j.x_img, j.C, j.H, j.W, it % (j.H + 2),
                                j.work + n * j.image)


cdef void _deform_chunks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): chunks of output rows, ordered (image, group, chunk)."""
    cdef DeformJob* j = <DeformJob*>job
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, Cg = j.Cg, Kg = j.Kg, Co = j.Co
    cdef Py_ssize_t kdim = j.kdim, taps = j.taps, OW = j.OW, ostride = j.ostride, nmb = j.nmb
    cdef Py_ssize_t it, n, g, ch, oy0, oy1, ncols, og, c0, c1, mb, p, np_
    cdef float* cols = j.work + j.xp_floats + thread * j.per_thread
    cdef float* panels = cols + j.cols_floats
    cdef float* dst
    cdef const float* msk
    for it in range(lo, hi):
        n = it // (j.groups * j.nchunks)
        g = (it // j.nchunks) % j.groups
        ch = it % j.nchunks
        oy0 = ch * j.rows_per_chunk
        oy1 = min(oy0 + j.rows_per_chunk, j.OH)
        ncols = (oy1 - oy0) * OW
        # the offset groups that share channels with this convolution group
        for og in range((g * Cg) // Co, ((g + 1) * Cg - 1) // Co + 1):
            msk = NULL
            if j.mask != NULL:
                msk = j.mask + (n * j.offset_groups + og) * taps * ostride
            c0 = max(g * Cg, og * Co)
            c1 = min((g + 1) * Cg, (og + 1) * Co)
            bilinear_columns(j.work + n * j.image, j.C, j.H, j.W,
                             j.offset + n * j.off_img + og * 2 * taps * j.off_chan, msk,
                             ostride, j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw, OW, oy0,
                             oy1, c0, c1, g * Cg, Cg, cols)
        pack_transposed(cols, ncols, kdim, panels)
        np_ = (ncols + NR - 1) // NR
        dst = j.out + n * j.out_img + g * Kg * ostride + oy0 * OW
        for mb in range(nmb):
            for p in range(np_):
                ce_pg_block(j.wpack + (g * nmb + mb) * kdim * MR, panels + p * kdim * NR,
                            <int>kdim, dst + mb * MR * ostride + p * NR, ostride, NULL,
                            (j.bias + g * Kg + mb * MR) if j.bias != NULL else NULL, j.act,
                            <int>min(MR, Kg - mb * MR), <int>min(NR, ncols - p * NR))
