# 1x1, stride-1, unpadded convolution: per image and group one GEMM on the input itself,
#     out[n, g*Kg:(g+1)*Kg, :] = W_g[Kg, Cg] @ x[n, g*Cg:(g+1)*Cg, :]     (pixels flattened)
# computed by the packed micro-kernel of _packed_gemm.h. The weights are packed once by the
# plan; the pixel axis is cut into panels of NR columns.
#
# The work is a range of the panels (all output channels) when the input is the larger operand,
# of the 8-row blocks of weights (all panels) when the weights are; the threads of the engine's
# pool (kernels/_pool.h) take it in pieces, each piece of every image and group. Within a
# piece a thread copies up to group_panels panels at a time into its buffer (sized for L2),
# then runs each of its weight blocks (kept in L1) over them, so output rows are written as 8
# sequential streams and the larger operand is read from memory once. Every output is summed
# over the input channels in order whatever the split, so results do not depend on it or on
# the thread count.
from _epilogue cimport ce_act_t, check_act
from _packed_gemm cimport (CE_PG_MR, CE_PG_NR, ce_pg_act_later, ce_pg_act_rows, ce_pg_block,
                          ce_pg_block_rows, ce_pg_pack_panels, ce_pg_store_act)
cimport numpy as cnp
from _arrays cimport check_scratch_array, f32_arg, f32_array, f32_optional
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()
cnp.import_array()     # the NumPy C API f32_arg calls

ROW_BLOCK = CE_PG_MR      # rows of A per packed block
PANEL = CE_PG_NR          # columns of B per panel


cdef struct Share:
    Py_ssize_t mb_lo, mb_hi, p_lo, p_hi


cdef inline Share share(Py_ssize_t lo, Py_ssize_t hi, bint split_rows, Py_ssize_t nmb,
                        Py_ssize_t npanels) noexcept nogil:
    """The row blocks [mb_lo, mb_hi) and panels [p_lo, p_hi) of units [lo, hi) of the row
    blocks (split_rows) or of the panels: all of the other."""
    cdef Share s
    s.mb_lo, s.mb_hi, s.p_lo, s.p_hi = 0, nmb, 0, npanels
    if split_rows:
        s.mb_lo, s.mb_hi = lo, hi
    else:
        s.p_lo, s.p_hi = lo, hi
    return s


def f32_conv2d_pointwise(x, apack, bias, residual, out, work, int groups, bint split_rows,
                         int group_panels, ce_act_t act, int num_threads):
    """x[N, C, P] -> out[N, K, P] (+ residual[N, K, P]) with apack the weights packed per
    group as [ceil(Kg/MR)][Cg][MR]. split_rows: the threads share the weight blocks (else the
    panels); group_panels: panels copied at a time; work: num_threads * group_panels * Cg * NR
    floats, 64-byte aligned."""
    cdef f32_array xv = f32_arg(x, 3, "x", False)
    cdef f32_array apackv = f32_arg(apack, 1, "apack", False)
    cdef f32_array outv = f32_arg(out, 3, "out", True)
    cdef f32_array workv = f32_arg(work, 1, "work", True)
    check_act(act)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], P = xv.shape[2], K = outv.shape[1]
    if groups < 1 or C % groups or K % groups or outv.shape[0] != N or outv.shape[2] != P:
        raise ValueError(f"x {x.shape[:3]}, out {out.shape[:3]} and groups "
                         f"{groups} do not agree")
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    cdef Py_ssize_t nmb = (Kg + MR - 1) // MR            # packed row blocks per group
    cdef Py_ssize_t npanels = (P + NR - 1) // NR
    cdef Py_ssize_t GP = group_panels
    if bias is not None and len(bias) != K:
        raise ValueError(f"bias must hold {K} values, got {len(bias)}")
    if residual is not None and residual.shape != out.shape:
        raise ValueError(f"residual must have the output's shape {out.shape[:3]}, got "
                         f"{tuple(residual.shape)}")
    if GP < 1:
        raise ValueError(f"group_panels must be positive, got {GP}")
    if apackv.shape[0] != groups * nmb * Cg * MR:
        raise ValueError(f"apack holds {apack.shape[0]} floats, expected {groups * nmb * Cg * MR}")
    if N == 0 or P == 0 or K == 0:
        return
    cdef Py_ssize_t per_thread = GP * Cg * NR
    check_scratch_array(workv, max(1, num_threads) * per_thread, "work")
    cdef const float* bptr = f32_optional(bias, K, "bias")
    cdef f32_array r
    cdef const float* rptr = NULL
    if residual is not None:
        r = f32_arg(residual, 3, "residual", False)
        rptr = r.p
    # an activation past the clamps runs over each block row's panels at once, not per block
    # images may lie apart (views of a larger tensor); channels are P floats apart, as the
    # micro-kernel's row strides take them
    cdef PointwiseJob j = PointwiseJob(xv.p, apackv.p, bptr, rptr, outv.p,
                                       workv.p, per_thread, N, groups, Cg, Kg, K, P, nmb,
                                       npanels, GP, split_rows, ce_pg_act_later(act),
                                       ce_pg_store_act(act), act, x.strides[0] // 4,
                                       out.strides[0] // 4,
                                       residual.strides[0] // 4 if rptr != NULL else 0)
    with nogil:
        ce_pool_for(num_threads, nmb if split_rows else npanels, _pointwise_units, &j)


ctypedef struct PointwiseJob:
    const float* x
    const float* apack
    const float* bias
    const float* res
    float* out
    float* work
    Py_ssize_t per_thread, N, groups, Cg, Kg, K, P, nmb, npanels, GP
    bint split_rows, later
    ce_act_t sact, act
    Py_ssize_t x_img, out_img, res_img


cdef void _pointwise_units(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Units [lo, hi) of the row blocks or the panels, of every image and group."""
    cdef PointwiseJob* j = <PointwiseJob*>job
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, P = j.P, Cg = j.Cg, Kg = j.Kg
    cdef Py_ssize_t plane, n, g, pa, pb, p, p0, mb, m0
    cdef Share sh = share(lo, hi, j.split_rows, j.nmb, j.npanels)
    cdef float* buf = j.work + thread * j.per_thread
    cdef const float* res
    for plane in range(j.N * j.groups):
        n = plane // j.groups
        g = plane % j.groups
        pa = sh.p_lo
        while pa < sh.p_hi:
            pb = min(sh.p_hi, pa + j.GP)
            ce_pg_pack_panels(j.x + n * j.x_img + g * Cg * P + pa * NR, P, <int>Cg,
                              <int>min(P - pa * NR, (pb - pa) * NR), buf)
            for mb in range(sh.mb_lo, sh.mb_hi):
                m0 = g * Kg + mb * MR
                for p in range(pa, pb):
                    p0 = p * NR
                    res = NULL
                    if j.res != NULL:
                        res = j.res + n * j.res_img + m0 * P + p0
                    ce_pg_block(j.apack + (g * j.nmb + mb) * Cg * MR, buf + (p - pa) * Cg * NR,
                                <int>Cg, j.out + n * j.out_img + m0 * P + p0, P, res,
                                (j.bias + m0) if j.bias != NULL else NULL, j.sact,
                                <int>min(MR, Kg - mb * MR), <int>min(NR, P - p0))
                if j.later:
                    ce_pg_act_rows(j.out + n * j.out_img + m0 * P + pa * NR, P,
                                   <int>min(MR, Kg - mb * MR),
                                   <int>min(P - pa * NR, (pb - pa) * NR), j.act)
            pa = pb


def f32_gemm_rows(a, bpanels, colbias, out, bint split_rows, int group_panels, ce_act_t act,
                  int num_threads):
    """out[M, N] = act(a @ B (+ colbias)) with a [M, K] read in place (a matrix computed at run
    time: a MatMul's activations) and B a constant packed once as bpanels [ceil(N/NR)][K][NR]
    (engine/ops/packed_gemm.py ConstantRight). colbias: N biases padded with zeros to whole
    panels, or empty for none; each is added after its output's sum. The threads share the row
    blocks (split_rows) or the panels, as f32_conv2d_pointwise does, and each takes its panels
    group_panels at a time (a group stays in L2 while its row blocks pass over it); every
    output is summed over k in order whatever the split."""
    cdef f32_array av = f32_arg(a, 2, "a", False)
    cdef f32_array bpanelsv = f32_arg(bpanels, 1, "bpanels", False)
    cdef f32_array colbiasv = f32_arg(colbias, 1, "colbias", False)
    cdef f32_array outv = f32_arg(out, 2, "out", True)
    check_act(act)
    cdef Py_ssize_t M = av.shape[0], K = av.shape[1], N = outv.shape[1], NR = CE_PG_NR
    cdef Py_ssize_t nmb = (M + CE_PG_MR - 1) // CE_PG_MR, npanels = (N + NR - 1) // NR
    if outv.shape[0] != M:
        raise ValueError(f"out must have {M} rows (those of a), got {out.shape[0]}")
    if group_panels < 1:
        raise ValueError(f"group_panels must be positive, got {group_panels}")
    if bpanelsv.shape[0] != npanels * K * NR or <size_t>bpanelsv.p % 64:
        raise ValueError(f"bpanels must hold {npanels * K * NR} floats from a 64-byte "
                         f"boundary, got {bpanels.shape[0]}")
    if colbiasv.shape[0] not in (0, npanels * NR):
        raise ValueError(f"colbias must hold 0 or {npanels * NR} floats, got "
                         f"{colbias.shape[0]}")
    if K == 0:
        raise ValueError("a must have at least one column")
    if M == 0 or N == 0:
        return
    # an activation past the clamps over a row block's panels at once, as in
    # f32_conv2d_pointwise: block by block, the map's setup came every 16 columns (ConvNeXt's
    # GELU on 3136 x 384 outputs, 1.5x its cost over whole rows)
    cdef const float* cb = NULL
    if colbiasv.shape[0]:
        cb = colbiasv.p
    cdef GemmJob j = GemmJob(av.p, bpanelsv.p, cb, outv.p, M, N, K, nmb, npanels,
                             group_panels, split_rows, act)
    with nogil:
        ce_pool_for(num_threads, nmb if split_rows else npanels, _gemm_units, &j)


ctypedef struct GemmJob:
    const float* a
    const float* bpanels
    const float* colbias
    float* out
    Py_ssize_t M, N, K, nmb, npanels, GP
    bint split_rows
    ce_act_t act


cdef void _gemm_units(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Units [lo, hi) of the row blocks or the panels."""
    cdef GemmJob* j = <GemmJob*>job
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR, M = j.M, N = j.N, K = j.K, pa, pb, mb
    cdef Share sh = share(lo, hi, j.split_rows, j.nmb, j.npanels)
    pa = sh.p_lo
    while pa < sh.p_hi:
        pb = min(sh.p_hi, pa + j.GP)
        for mb in range(sh.mb_lo, sh.mb_hi):
            ce_pg_block_rows(j.a + mb * MR * K, K, j.bpanels + pa * K * NR, <int>K,
                             <int>(pb - pa), j.out + mb * MR * N + pa * NR, N,
                             j.colbias + pa * NR if j.colbias != NULL else NULL, j.act,
                             <int>min(MR, M - mb * MR), <int>(min(N, pb * NR) - pa * NR))
        pa = pb

