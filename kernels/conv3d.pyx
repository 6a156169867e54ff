# vol2col 3-D convolution on the packed GEMM micro-kernel (_packed_gemm.h), for any kernel size,
# stride, padding, dilation and groups.
#
# The full column matrix of one image and group has Cg*kd*kh*kw rows, but its kd blocks of
# Cg*kh*kw rows are the 2-D im2col matrices of input depth slices: depth tap a of output slice
# od reads input slice iz = od*sd - pf + a*dd. So, with W_ga the weights of group g at depth
# tap a (packed once by the plan), each output slice is kd accumulating GEMMs
#     out[n, g*Kg:(g+1)*Kg, od, rows] (+)= W_ga[Kg, Cg*kh*kw] @ cols(iz)[Cg*kh*kw, rows*OW]
# and the 2-D columns of an input slice, built and packed into panels once, serve every output
# slice that reads it (kd of them at depth stride 1): a third of the column traffic of the full
# matrix for a 3x3x3 kernel. Taps that fall in the depth padding are skipped rather than
# multiplied by zeros. A tap's GEMM adds the partial sums of the taps before it through the
# micro-kernel's residual input; the last one adds the bias and applies the activation.
#
# Work items are (image, group, run of output slices, run of output rows). Each keeps the
# panels of the last (kd - 1)*dd + 1 input slices it built in a per-thread ring; a depth tap
# window never spans more, so the slices one output slice needs never evict one another. Item
# sizes depend on the shapes only and every output element is summed by the same GEMMs in the
# same tap order, so results are bit-identical for any thread count.

import numpy as np

from _epilogue cimport activate, ce_act_t, check_act, no_act
from _im2col cimport im2col_rows
from _packed_gemm cimport CE_PG_MR, CE_PG_NR, ce_pg_block, ce_pg_pack_panels
from _pool cimport ce_pool_attach, ce_pool_for
from _scratch cimport check_scratch

ce_pool_attach()

ROW_BLOCK = CE_PG_MR


cdef inline Py_ssize_t thread_floats(Py_ssize_t kdim2, Py_ssize_t ring,
                                     Py_ssize_t item_cols) noexcept nogil:
    """One thread's column buffer (whole 64-byte lines), then its ring of packed slices."""
    cdef Py_ssize_t NR = CE_PG_NR
    return ((kdim2 * item_cols + 15) // 16 * 16
            + ring * kdim2 * ((item_cols + NR - 1) // NR * NR))


def work_floats(Py_ssize_t kdim2, Py_ssize_t ring, Py_ssize_t item_cols, int num_threads):
    """Floats of f32_conv3d_vol2col's work buffer (item_cols: rows_per_item * OW)."""
    return max(1, num_threads) * thread_floats(kdim2, ring, item_cols)


def f32_conv3d_vol2col(const float[:, :, :, :, ::1] x, const float[::1] wpack, bias,
                       float[:, :, :, :, ::1] out,
                       int kd, int kh, int kw, int sd, int sh, int sw,
                       int pf, int pt, int pl, int dd, int dh, int dw,
                       int groups, int slices_per_item, int rows_per_item, ce_act_t act,
                       int num_threads, float[::1] work):
    """out = conv3d(x, w) with wpack the weight (K, Cg, kd, kh, kw) packed per group and depth
    tap as [groups][kd][ceil(Kg/MR)][Cg*kh*kw][MR]; output sizes are the caller's. work:
    work_floats(Cg*kh*kw, (kd-1)*dd + 1, rows_per_item * OW, num_threads) floats, 64-byte
    aligned."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t D = x.shape[2], H = x.shape[3], W = x.shape[4]
    cdef Py_ssize_t K = out.shape[1], OD = out.shape[2], OH = out.shape[3], OW = out.shape[4]
    if (groups < 1 or C % groups or K % groups or out.shape[0] != N or kd < 1 or dd < 1
            or slices_per_item < 1 or rows_per_item < 1):
        raise ValueError(f"x {tuple(x.shape)[:5]}, out {tuple(out.shape)[:5]}, groups {groups} "
                         f"and the work split do not agree")
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, kdim2 = Cg * kh * kw
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    cdef Py_ssize_t nmb = (Kg + MR - 1) // MR
    if wpack.shape[0] != groups * kd * nmb * kdim2 * MR:
        raise ValueError(f"wpack must hold {groups * kd * nmb * kdim2 * MR} floats, got "
                         f"{wpack.shape[0]}")
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != K:
            raise ValueError(f"bias must hold {K} values, got {b.shape[0]}")
        bptr = &b[0]
    cdef Py_ssize_t opix = OD * OH * OW
    cdef Py_ssize_t ring = (kd - 1) * dd + 1
    rows_per_item = <int>min(rows_per_item, max(1, OH))
    cdef Py_ssize_t nd = (OD + slices_per_item - 1) // slices_per_item
    cdef Py_ssize_t nr = (OH + rows_per_item - 1) // rows_per_item
    cdef Py_ssize_t items = N * groups * nd * nr
    if items == 0 or K == 0:
        return
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef Py_ssize_t item_cols = rows_per_item * OW
    cdef Py_ssize_t cols_floats = (kdim2 * item_cols + 15) // 16 * 16
    cdef Py_ssize_t slot_floats = kdim2 * ((item_cols + NR - 1) // NR * NR)
    cdef Py_ssize_t per_thread = thread_floats(kdim2, ring, item_cols)
    check_scratch(work, num_threads * per_thread, "work")
    # which input slice each ring slot of each thread holds
    cdef Py_ssize_t[::1] tags = np.empty(num_threads * ring, dtype=np.intp)
    # images may lie apart (views); channels are whole volumes
    cdef Vol2colJob j = Vol2colJob(&x[0, 0, 0, 0, 0], x.strides[0] // 4, &wpack[0], bptr,
                                   &out[0, 0, 0, 0, 0], out.strides[0] // 4, &work[0],
                                   per_thread, &tags[0], ring, cols_floats, slot_floats, D, H,
                                   W, OD, OH, OW, Cg, Kg, kdim2, nmb, groups, nd, nr,
                                   slices_per_item, rows_per_item, kd, kh, kw, sd, sh, sw, pf,
                                   pt, pl, dd, dh, dw, act)
    with nogil:
        ce_pool_for(num_threads, items, _vol2col_items, &j)


ctypedef struct Vol2colJob:
    const float* x
    Py_ssize_t x_img
    const float* wpack
    const float* bias
    float* out
    Py_ssize_t out_img
    float* work
    Py_ssize_t per_thread
    Py_ssize_t* tags            # per thread: ring slots' input slices
    Py_ssize_t ring, cols_floats, slot_floats, D, H, W, OD, OH, OW, Cg, Kg, kdim2, nmb, groups
    Py_ssize_t nd, nr, slices_per_item, rows_per_item
    int kd, kh, kw, sd, sh, sw, pf, pt, pl, dd, dh, dw
    ce_act_t act


cdef void _vol2col_items(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): slices_per_item output slices by rows_per_item rows, ordered (image,
    group, slices, rows)."""
    cdef Vol2colJob* j = <Vol2colJob*>job
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, D = j.D, H = j.H, W = j.W, OH = j.OH
    cdef Py_ssize_t OW = j.OW, Cg = j.Cg, Kg = j.Kg, kdim2 = j.kdim2, nmb = j.nmb
    cdef Py_ssize_t groups = j.groups, nd = j.nd, nr = j.nr, ring = j.ring
    cdef Py_ssize_t opix = j.OD * OH * OW
    cdef int kd = j.kd, sd = j.sd, pf = j.pf, dd = j.dd
    cdef const float* bptr = j.bias
    cdef ce_act_t act = j.act
    cdef Py_ssize_t it, n, g, rest, od0, od1, oy0, oy1, ncols, od, a, iz, i, k, slot
    cdef Py_ssize_t taps, done, mb, p, np_
    cdef float* cols = j.work + thread * j.per_thread
    cdef Py_ssize_t* tag = j.tags + thread * ring
    cdef float* panels
    cdef float* dst
    cdef float* c
    cdef float bk
    for it in range(lo, hi):
        n = it // (groups * nd * nr)
        rest = it % (groups * nd * nr)
        g = rest // (nd * nr)
        rest = rest % (nd * nr)
        od0 = (rest // nr) * j.slices_per_item
        od1 = min(od0 + j.slices_per_item, j.OD)
        oy0 = (rest % nr) * j.rows_per_item
        oy1 = min(oy0 + j.rows_per_item, OH)
        ncols = (oy1 - oy0) * OW
        np_ = (ncols + NR - 1) // NR
        for i in range(ring):
            tag[i] = -1
        for od in range(od0, od1):
            dst = j.out + n * j.out_img + g * Kg * opix + od * OH * OW + oy0 * OW
            taps = 0
            for a in range(kd):
                iz = od * sd - pf + a * dd
                if iz >= 0 and iz < D:
                    taps = taps + 1
            if taps == 0:   # the whole slice lies in the depth padding: act(bias)
                for k in range(Kg):
                    bk = activate(bptr[g * Kg + k] if bptr != NULL else 0, act)
                    for i in range(ncols):
                        dst[k * opix + i] = bk
                continue
            done = 0
            for a in range(kd):
                iz = od * sd - pf + a * dd
                if iz < 0 or iz >= D:
                    continue
                slot = iz % ring
                panels = cols + j.cols_floats + slot * j.slot_floats
                if tag[slot] != iz:
                    im2col_rows(j.x + n * j.x_img + g * Cg * D * H * W + iz * H * W, D * H * W,
                                Cg, H, W, j.kh, j.kw, j.sh, j.sw, j.pt, j.pl, j.dh, j.dw, oy0,
                                oy1, 0, OW, cols)
                    ce_pg_pack_panels(cols, ncols, <int>kdim2, <int>ncols, panels)
                    tag[slot] = iz
                done = done + 1
                for mb in range(nmb):
                    for p in range(np_):
                        c = dst + mb * MR * opix + p * NR
                        # partial sums of the earlier taps come in as the residual; the last
                        # tap adds the bias and applies the activation
                        ce_pg_block(j.wpack + ((g * kd + a) * nmb + mb) * kdim2 * MR,
                                    panels + p * kdim2 * NR, <int>kdim2, c, opix,
                                    c if done > 1 else NULL,
                                    (bptr + g * Kg + mb * MR)
                                    if (bptr != NULL and done == taps) else NULL,
                                    act if done == taps else no_act(),
                                    <int>min(MR, Kg - mb * MR), <int>min(NR, ncols - p * NR))
