# im2col + GEMM convolution for any kernel size, stride, padding, dilation and groups.
#
# The column matrix of one image and group has Cg*kh*kw rows and OH*OW columns; it is built
# in chunks so the buffer stays bounded (the plan chooses the chunk so that it holds about a
# MB): whole output rows, or, when one row is already too wide (1-D convolutions run as 2-D
# with OH = 1), pieces of a single row. Either way a chunk's outputs are contiguous within
# each output channel, and each chunk is one GEMM
#     out[n, g*Kg:(g+1)*Kg, chunk] = W_g[Kg, Cg*kh*kw] @ cols[Cg*kh*kw, chunk]
# run by the packed micro-kernel of _packed_gemm.h (weights packed once by the plan), whose
# output step adds the bias and applies the activation. The columns are built one input
# channel (kh*kw rows) at a time and copied into the chunk's panels while still in L1, so the
# full column matrix never exists. Work items are (image, group, chunk), which the threads of
# the engine's pool take in pieces (kernels/_pool.h); the chunking depends on the shapes only,
# and every output is summed in one order, so results do not depend on the thread count.
from _im2col cimport im2col_rows

from _epilogue cimport ce_act_t, check_act
from _packed_gemm cimport (CE_PG_MR, CE_PG_NR, ce_pg_act_later, ce_pg_act_rows, ce_pg_block,
                          ce_pg_pack_rows, ce_pg_store_act)
from _pool cimport ce_pool_attach, ce_pool_for
from _scratch cimport check_scratch

ce_pool_attach()


cdef inline Py_ssize_t thread_floats(Py_ssize_t kdim, Py_ssize_t taps,
                                     Py_ssize_t chunk_cols) noexcept nogil:
    """One thread's columns of one input channel (rounded to whole 64-byte lines), then the
    chunk's panels."""
    cdef Py_ssize_t NR = CE_PG_NR
    return (taps * chunk_cols + 15) // 16 * 16 + kdim * ((chunk_cols + NR - 1) // NR * NR)


def work_floats(Py_ssize_t kdim, Py_ssize_t taps, Py_ssize_t chunk_cols, int num_threads):
    """Floats of f32_conv2d_im2col's work buffer (taps: kh * kw; chunk_cols: the columns of
    a chunk)."""
    return max(1, num_threads) * thread_floats(kdim, taps, chunk_cols)


def f32_conv2d_im2col(const float[:, :, :, ::1] x, const float[::1] wpack, bias,
                      float[:, :, :, ::1] out,
                      int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                      int groups, int rows_per_chunk, int cols_per_chunk, ce_act_t act,
                      int num_threads, float[::1] work):
    """out = conv2d(x, w) with wpack the weights W[K, Cg*kh*kw] packed per group as
    [ceil(Kg/MR)][Cg*kh*kw][MR]; output sizes are the caller's (engine.shapes). Chunks are
    rows_per_chunk whole rows, or, with rows_per_chunk == 1, cols_per_chunk columns of one
    row; the row chunks split the rows evenly, an even number of them. work:
    work_floats(Cg*kh*kw, chunk columns, num_threads) floats, 64-byte aligned."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    if groups < 1 or C % groups or K % groups or out.shape[0] != N:
        raise ValueError(f"x {tuple(x.shape)[:4]}, out {tuple(out.shape)[:4]} and groups "
                         f"{groups} do not agree")
    if rows_per_chunk < 1 or cols_per_chunk < 1:
        raise ValueError("chunks must have at least one row and column")
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, kdim = Cg * kh * kw
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    cdef Py_ssize_t nmb = (Kg + MR - 1) // MR
    if wpack.shape[0] != groups * nmb * kdim * MR:
        raise ValueError(f"wpack must hold {groups * nmb * kdim * MR} floats, got "
                         f"{wpack.shape[0]}")
    if rows_per_chunk > 1 or cols_per_chunk > OW:
        cols_per_chunk = OW
    cdef Py_ssize_t row_pieces = (OW + cols_per_chunk - 1) // cols_per_chunk
    # whole rows in an even number of chunks, as even as can be: 17 rows of at most 5 as 4, 4,
    # 4 and 5, not 5, 5, 5 and 2, which left two threads 10 rows against 7 (Inception-v3's
    # 17x17 layers); none longer than rows_per_chunk
    cdef Py_ssize_t row_chunks = (OH + rows_per_chunk - 1) // rows_per_chunk
    if row_chunks % 2 and 1 < row_chunks < OH:
        row_chunks += 1
    cdef Py_ssize_t nchunks = row_chunks * row_pieces
    cdef Py_ssize_t items = N * groups * nchunks
    cdef Py_ssize_t chunk_cols = min(rows_per_chunk, OH) * cols_per_chunk
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != K:
            raise ValueError(f"bias must hold {K} values, got {b.shape[0]}")
        bptr = &b[0]
    cdef Py_ssize_t taps = kh * kw
    cdef Py_ssize_t per_thread = thread_floats(kdim, taps, chunk_cols)
    check_scratch(work, max(1, min(num_threads, items)) * per_thread, "work")
    # images and channels may lie apart (views of a larger tensor); rows are whole planes
    if items == 0 or K == 0 or OH * OW == 0:
        return
    cdef const float* xptr = &x[0, 0, 0, 0] if x.shape[1] * H * W else NULL
    cdef Im2colJob j = Im2colJob(xptr, &wpack[0], bptr, &out[0, 0, 0, 0], &work[0],
                                 per_thread, x.strides[0] // 4, x.strides[1] // 4,
                                 out.strides[0] // 4, H, W, OH, OW, kh, kw, sh, sw, pt, pl,
                                 dh, dw, groups, Cg, Kg, kdim, nmb, nchunks, row_chunks,
                                 row_pieces, rows_per_chunk, cols_per_chunk,
                                 ce_pg_act_later(act), ce_pg_store_act(act), act)
    with nogil:
        ce_pool_for(num_threads, items, _im2col_chunks, &j)


ctypedef struct Im2colJob:
    const float* x
    const float* wpack
    const float* bias
    float* out
    float* work
    Py_ssize_t per_thread, x_img, x_chan, out_img, H, W, OH, OW
    int kh, kw, sh, sw, pt, pl, dh, dw
    Py_ssize_t groups, Cg, Kg, kdim, nmb, nchunks, row_chunks, row_pieces, rows_per_chunk
    Py_ssize_t cols_per_chunk
    bint later                  # an activation past the clamps, over each block row at once
    ce_act_t sact, act


cdef void _im2col_chunks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): (image, group, chunk)."""
    cdef Im2colJob* j = <Im2colJob*>job
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, OH = j.OH, OW = j.OW, Kg = j.Kg
    cdef Py_ssize_t kdim = j.kdim, taps = j.kh * j.kw, chunk_cols
    cdef Py_ssize_t it, n, g, ch, oy0, oy1, ox0, ox1, ncols, mb, p, np_, c, pstride
    chunk_cols = min(j.rows_per_chunk, OH) * j.cols_per_chunk
    cdef float* cols = j.work + thread * j.per_thread
    cdef float* panels = cols + (taps * chunk_cols + 15) // 16 * 16    # 64-byte aligned
    cdef float* dst
    for it in range(lo, hi):
        n = it // (j.groups * j.nchunks)
        g = (it // j.nchunks) % j.groups
        ch = it % j.nchunks
        oy0 = (ch // j.row_pieces) * OH // j.row_chunks
        oy1 = (ch // j.row_pieces + 1) * OH // j.row_chunks
        ox0 = (ch % j.row_pieces) * j.cols_per_chunk
        ox1 = min(ox0 + j.cols_per_chunk, OW)
        ncols = (oy1 - oy0) * (ox1 - ox0)
        np_ = (ncols + NR - 1) // NR
        pstride = kdim * NR
        # channel by channel: its kh*kw rows of columns, still in L1, go into the panels
        for c in range(j.Cg):
            im2col_rows(j.x + n * j.x_img + (g * j.Cg + c) * j.x_chan, j.H * j.W, 1, j.H, j.W,
                        j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw, oy0, oy1, ox0, ox1,
                        cols)
            ce_pg_pack_rows(cols, ncols, <int>taps, <int>ncols, panels + c * taps * NR,
                            pstride)
        dst = j.out + n * j.out_img + g * Kg * OH * OW + oy0 * OW + ox0
        for mb in range(j.nmb):
            for p in range(np_):
                ce_pg_block(j.wpack + (g * j.nmb + mb) * kdim * MR, panels + p * kdim * NR,
                            <int>kdim, dst + mb * MR * OH * OW + p * NR, OH * OW, NULL,
                            (j.bias + g * Kg + mb * MR) if j.bias != NULL else NULL, j.sact,
                            <int>min(MR, Kg - mb * MR), <int>min(NR, ncols - p * NR))
            if j.later:
                ce_pg_act_rows(dst + mb * MR * OH * OW, OH * OW, <int>min(MR, Kg - mb * MR),
                               <int>ncols, j.act)
