# Transposed 2-D convolution as GEMM + col2im: the backward-data pass of a convolution.
#
# Input pixel (iy, ix) of channel ci contributes w[ci, co, u, v] * x[ci, iy, ix] to output
# pixel (iy*sh - pt + u*dh, ix*sw - pl + v*dw) of channel co. Per image and group, with the
# weight stored as W_g[Cin_g, Cout_g*kh*kw] (its natural layout), all products are one GEMM
#     cols[(co*kh + u)*kw + v, iy*W + ix] = (W_g^T @ x_g)[...]          (x_g as [Cin_g, H*W])
# and col2im scatter-adds each row of cols, shifted by (u*dh, v*dw), into output plane co.
#
# The GEMM runs on the packed micro-kernel of _packed_gemm.h, with W_g^T packed once by the plan
# per block of output channels. Work items are (image, group, block of output channels); an
# item computes only its block's rows of cols, in chunks of input rows to bound the buffer,
# and is the only writer of its output planes. Every output element
# is therefore accumulated by one thread in one fixed order (chunk, channel, u, v, iy, ix), with
# no atomics, and the block and chunk sizes come from the shapes alone: results are
# bit-identical for any thread count.
from libc.string cimport memset

from _epilogue cimport bias_act_row, ce_act_t, check_act, no_act
from _im2col cimport ceil_div_nonneg
from _packed_gemm cimport CE_PG_MR, CE_PG_NR, ce_pg_block, ce_pg_pack_panels
from _pool cimport ce_pool_attach, ce_pool_for
from _scratch cimport check_scratch

ce_pool_attach()


cdef void col2im_rows(const float* cols, Py_ssize_t nco, Py_ssize_t W,
                      Py_ssize_t iy0, Py_ssize_t iy1,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                      float* outp, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """outp[co, oy, ox] += cols[(co*kh + u)*kw + v, (iy - iy0)*W + ix] for input rows
    iy0 <= iy < iy1, where oy = iy*sh - pt + u*dh, ox = ix*sw - pl + v*dw."""
    cdef Py_ssize_t ncols = (iy1 - iy0) * W
    cdef Py_ssize_t co, u, v, r, iy, oy, ox0, lo, hi, j, n
    cdef const float* src
    cdef float* dst
    cdef float* plane
    for co in range(nco):
        plane = outp + co * OH * OW
        for u in range(kh):
            for v in range(kw):
                r = (co * kh + u) * kw + v
                # input columns ix whose output column ox = ix*sw + ox0 lies in [0, OW)
                ox0 = v * dw - pl
                lo = ceil_div_nonneg(-ox0, sw)
                hi = ceil_div_nonneg(OW - ox0, sw)
                if hi > W:
                    hi = W
                if lo >= hi:
                    continue
                n = hi - lo
                for iy in range(iy0, iy1):
                    oy = iy * sh - pt + u * dh
                    if oy < 0 or oy >= OH:
                        continue
                    src = cols + r * ncols + (iy - iy0) * W + lo
                    dst = plane + oy * OW + lo * sw + ox0
                    if sw == 1:
                        for j in range(n):
                            dst[j] = dst[j] + src[j]
                    elif sw == 2:
                        for j in range(n):
                            dst[2 * j] = dst[2 * j] + src[j]
                    else:
                        for j in range(n):
                            dst[j * sw] = dst[j * sw] + src[j]


cdef inline Py_ssize_t thread_floats(Py_ssize_t rows_a, Py_ssize_t Cg,
                                     Py_ssize_t ncols) noexcept nogil:
    """One thread's cols (rows_a x ncols, rounded to whole 64-byte lines), then its panels."""
    cdef Py_ssize_t NR = CE_PG_NR
    return (rows_a * ncols + 15) // 16 * 16 + Cg * ((ncols + NR - 1) // NR * NR)


def work_floats(Py_ssize_t co_block, Py_ssize_t kk, Py_ssize_t Cg, Py_ssize_t chunk_cols,
                int num_threads):
    """Floats of f32_conv_transpose2d_col2im's work buffer (chunk_cols: input pixels per
    chunk)."""
    return max(1, num_threads) * thread_floats(co_block * kk, Cg, chunk_cols)


def f32_conv_transpose2d_col2im(const float[:, :, :, ::1] x, const float[::1] wpack, bias,
                                float[:, :, :, ::1] out,
                                int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                                int groups, int co_block, int rows_per_chunk, ce_act_t act,
                                int num_threads, float[::1] work):
    """out = conv_transpose2d(x, w) for the torch weight (Cin, Cout_g, kh, kw); wpack: per
    group and block of co_block output channels, the block's rows of W_g^T (Cout_g*kh*kw x
    Cin_g, zero rows past the last channel) packed as [ceil(co_block*kh*kw/MR)][Cin_g][MR].
    Output sizes are the caller's (engine.shapes). work: work_floats(...) floats, 64-byte
    aligned."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    if groups < 1 or C % groups or K % groups or out.shape[0] != N:
        raise ValueError(f"x {tuple(x.shape)[:4]}, out {tuple(out.shape)[:4]} and groups "
                         f"{groups} do not agree")
    if co_block < 1 or rows_per_chunk < 1:
        raise ValueError("co_block and rows_per_chunk must be positive")
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, kk = kh * kw
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    cdef Py_ssize_t nblocks = (Kg + co_block - 1) // co_block
    cdef Py_ssize_t nmb = (co_block * kk + MR - 1) // MR      # packed row blocks per block
    if wpack.shape[0] != groups * nblocks * nmb * Cg * MR:
        raise ValueError(f"wpack must hold {groups * nblocks * nmb * Cg * MR} floats, got "
                         f"{wpack.shape[0]}")
    cdef Py_ssize_t nchunks = (H + rows_per_chunk - 1) // rows_per_chunk
    cdef Py_ssize_t items = N * groups * nblocks
    cdef Py_ssize_t chunk_cols = min(rows_per_chunk, H) * W
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != K:
            raise ValueError(f"bias must hold {K} values, got {b.shape[0]}")
        bptr = &b[0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef Py_ssize_t per_thread = thread_floats(co_block * kk, Cg, chunk_cols)
    cdef Py_ssize_t cols_floats = (co_block * kk * chunk_cols + 15) // 16 * 16
    check_scratch(work, num_threads * per_thread, "work")
    if items == 0:
        return
    # images may lie apart (views); channels are whole planes
    cdef Col2imJob j = Col2imJob(&x[0, 0, 0, 0], x.strides[0] // 4, &wpack[0], bptr,
                                 &out[0, 0, 0, 0], out.strides[0] // 4, &work[0], per_thread,
                                 cols_floats, H, W, OH, OW, Cg, Kg, groups, nblocks, nmb,
                                 co_block, nchunks, rows_per_chunk, kh, kw, sh, sw, pt, pl, dh,
                                 dw, act)
    with nogil:
        ce_pool_for(num_threads, items, _col2im_blocks, &j)


ctypedef struct Col2imJob:
    const float* x
    Py_ssize_t x_img
    const float* wpack
    const float* bias
    float* out
    Py_ssize_t out_img
    float* work
    Py_ssize_t per_thread, cols_floats, H, W, OH, OW, Cg, Kg, groups, nblocks, nmb, co_block
    Py_ssize_t nchunks, rows_per_chunk
    int kh, kw, sh, sw, pt, pl, dh, dw
    ce_act_t act


cdef void _col2im_blocks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): blocks of co_block output channels, ordered (image, group, block)."""
    cdef Col2imJob* j = <Col2imJob*>job
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, H = j.H, W = j.W, OH = j.OH, OW = j.OW
    cdef Py_ssize_t Cg = j.Cg, kk = j.kh * j.kw
    cdef Py_ssize_t it, n, g, blk, c0, nco, ch, iy0, iy1, ncols, k, rows_a, mb, p
    cdef float* cols = j.work + thread * j.per_thread
    cdef float* panels = cols + j.cols_floats
    cdef float* outp
    cdef const float* ablk
    for it in range(lo, hi):
        n = it // (j.groups * j.nblocks)
        g = (it // j.nblocks) % j.groups
        blk = it % j.nblocks
        c0 = blk * j.co_block
        nco = min(j.co_block, j.Kg - c0)
        rows_a = nco * kk
        ablk = j.wpack + (g * j.nblocks + blk) * j.nmb * Cg * MR
        outp = j.out + n * j.out_img + (g * j.Kg + c0) * OH * OW
        memset(outp, 0, nco * OH * OW * sizeof(float))
        for ch in range(j.nchunks):
            iy0 = ch * j.rows_per_chunk
            iy1 = min(iy0 + j.rows_per_chunk, H)
            ncols = (iy1 - iy0) * W
            # cols[nco*kk, ncols] = W_g^T[c0*kk:(c0+nco)*kk, :] @ x_g[:, iy0*W:iy1*W]
            ce_pg_pack_panels(j.x + n * j.x_img + g * Cg * H * W + iy0 * W, H * W, <int>Cg,
                              <int>ncols, panels)
            for mb in range((rows_a + MR - 1) // MR):
                for p in range((ncols + NR - 1) // NR):
                    ce_pg_block(ablk + mb * Cg * MR, panels + p * Cg * NR, <int>Cg,
                                cols + mb * MR * ncols + p * NR, ncols, NULL, NULL, no_act(),
                                <int>min(MR, rows_a - mb * MR), <int>min(NR, ncols - p * NR))
            col2im_rows(cols, nco, W, iy0, iy1, j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw,
                        outp, OH, OW)
        for k in range(nco):
            bias_act_row(outp + k * OH * OW, OH * OW,
                         j.bias[g * j.Kg + c0 + k] if j.bias != NULL else 0, j.act)
