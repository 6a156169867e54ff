# Kernels on channel-blocked activations, [N][ceil(C / B)][H][W][B] (NCHWc, B = BLOCK: 16 with
# AVX-512, 8 with AVX2; the layout and the micro-kernels are described in _nchwc.h): the layout
# changes to and from NCHW, subsampling, pointwise convolution and the direct stem
# (_nchwc_direct.h; dense convolution: nchwc_dense.pyx; per-channel means, scaling and batch
# normalization: nchwc_channels.pyx; depthwise and grouped convolution: nchwc_window.pyx). The
# graph runner keeps chains of these layers in this layout (engine/graph/layout.py).
#
# Every kernel checks the shapes it is given against one another before it releases the GIL.
# Results do not depend on the thread count: each output is computed whole by one thread, in an
# order fixed by the shapes.
from libc.string cimport memcpy, memset

from _epilogue cimport ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for


cdef extern from "_nchwc_direct.h":
    int CE_NC_DIRECT_BLOCKS
    void ce_nc_direct_row(const float *x, int C, int H, int W, int OW, int oy, int sh, int sw,
                          int pt, int pl, int kh, int kw, int dh, int dw, const float *w,
                          Py_ssize_t wstride, const float *bias, float *out,
                          Py_ssize_t ostride, int nk, ce_act_t act) nogil

cdef extern from "_nchwc.h":
    int CE_NC_B, CE_NC_TILE_PIXELS, CE_NC_GROUP, CE_NC_BATCH
    void ce_nc_to_blocked(const float *src, Py_ssize_t ps, Py_ssize_t P, int nc,
                          float *dst) nogil
    void ce_nc_from_blocked(const float *src, Py_ssize_t P, int nc, float *dst,
                            Py_ssize_t ps) nogil
    void ce_nc_pw_units(const float *x, Py_ssize_t P, int Cb, int tail, const float *wpack,
                        int Kb, const float *bias, const float *res, float *out, ce_act_t act,
                        Py_ssize_t N, Py_ssize_t T, Py_ssize_t G, Py_ssize_t xs, Py_ssize_t os,
                        Py_ssize_t chunk, int by_groups, Py_ssize_t lo, Py_ssize_t hi) nogil

ce_pool_attach()

BLOCK = CE_NC_B                 # channels per block
TILE_PIXELS = CE_NC_TILE_PIXELS # pixels per pointwise tile
GROUP = CE_NC_GROUP             # output blocks per pointwise tile
BATCH = CE_NC_BATCH             # input blocks a pointwise pass sums before storing
# Bytes of input one pointwise chunk of tiles reads, kept in L2 while every group of output
# blocks passes over it. Every chunk streams all the weights once, so chunks are large.
# Measured one thread, ms, chunks of 96 KB / 256 KB / 1 MB (with batches of 8 input blocks):
# 512->512 14x14 0.72 / 0.65 / 0.64, 1024->1024 7x7 0.99 / 0.79 / 0.74; ResNeXt-50 with
# chunks of 128 KB to 2 MB alike.
CHUNK_BYTES = 1024 << 10


def blocks(Py_ssize_t channels):
    """Channel blocks holding `channels` channels."""
    return (channels + CE_NC_B - 1) // CE_NC_B


include "_nchwc_checks.pxi"


# Each kernel's work is a range of items that the threads of the engine's pool take in pieces
# (kernels/_pool.h): a function of (job, thread, lo, hi), its job a struct of the arguments.

ctypedef struct LayoutJob:
    const float* src
    Py_ssize_t C, P
    float* dst
    bint to_blocked


cdef void _layout_items(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Blocks [lo, hi) of all images between NCHW planes and channel blocks, either way."""
    cdef LayoutJob* j = <LayoutJob*>job
    cdef const float* src = j.src
    cdef float* dst = j.dst
    cdef Py_ssize_t C = j.C, P = j.P
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B, it, cb, planes, block
    for it in range(lo, hi):
        cb = it % Cb
        planes = ((it // Cb) * C + cb * CE_NC_B) * P
        block = it * P * CE_NC_B
        if j.to_blocked:
            ce_nc_to_blocked(src + planes, P, P, <int>min(CE_NC_B, C - cb * CE_NC_B),
                             dst + block)
        else:
            ce_nc_from_blocked(src + block, P, <int>min(CE_NC_B, C - cb * CE_NC_B),
                               dst + planes, P)


cdef void _layout_change(const float* src, Py_ssize_t C, Py_ssize_t P, float* dst,
                         bint to_blocked, Py_ssize_t items, int num_threads) noexcept nogil:
    cdef LayoutJob j = LayoutJob(src, C, P, dst, to_blocked)
    ce_pool_for(num_threads, items, _layout_items, &j)


def f32_to_blocked(x, out, int num_threads):
    """out[n, c // B, h, w, c % B] = x[n, c, h, w], zero in the channels beyond C."""
    cdef f32_array xv = f32_arg(x, 4, "x", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], P = xv.shape[2] * xv.shape[3]
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B
    if (outv.shape[0] != N or outv.shape[1] != Cb or outv.shape[2] != xv.shape[2]
            or outv.shape[3] != xv.shape[3] or outv.shape[4] != CE_NC_B):
        raise ValueError(f"out must have shape ({N}, {Cb}, {x.shape[2]}, {x.shape[3]}, "
                         f"{CE_NC_B}) for x {x.shape[:4]}, got {out.shape}")
    if N == 0 or Cb == 0 or P == 0:
        return
    cdef const float* xp = xv.p
    cdef float* op = outv.p
    with nogil:
        _layout_change(xp, C, P, op, True, N * Cb, num_threads)


def f32_from_blocked(x, out, int num_threads):
    """out[n, c, h, w] = x[n, c // B, h, w, c % B] for the C channels of out."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array outv = f32_arg(out, 4, "out", True)
    cdef Py_ssize_t N = outv.shape[0], C = outv.shape[1], P = outv.shape[2] * outv.shape[3]
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B
    if (xv.shape[0] != N or xv.shape[1] != Cb or xv.shape[2] != outv.shape[2]
            or xv.shape[3] != outv.shape[3] or xv.shape[4] != CE_NC_B):
        raise ValueError(f"x must have shape ({N}, {Cb}, {out.shape[2]}, {out.shape[3]}, "
                         f"{CE_NC_B}) for out {out.shape[:4]}, got {x.shape}")
    if N == 0 or Cb == 0 or P == 0:
        return
    cdef const float* xp = xv.p
    cdef float* op = outv.p
    with nogil:
        _layout_change(xp, C, P, op, False, N * Cb, num_threads)


ctypedef struct SubsampleJob:
    const float* x
    float* out
    Py_ssize_t H, W, OH, OW, sh, sw


cdef void _subsample_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Output rows [lo, hi) of all images' blocks."""
    cdef SubsampleJob* j = <SubsampleJob*>job
    cdef Py_ssize_t it, ox
    cdef const float* src
    cdef float* dst
    for it in range(lo, hi):
        src = j.x + ((it // j.OH) * j.H + (it % j.OH) * j.sh) * j.W * CE_NC_B
        dst = j.out + it * j.OW * CE_NC_B
        for ox in range(j.OW):
            memcpy(dst + ox * CE_NC_B, src + ox * j.sw * CE_NC_B, CE_NC_B * sizeof(float))


def f32_subsample_blocked(x, out, int sh, int sw, int num_threads):
    """out[n, cb, oy, ox] = x[n, cb, oy * sh, ox * sw] (one vector per pixel): the input of a
    1x1 convolution with strides and no padding, which the pointwise kernel then runs on whole
    tiles of pixels. The threads take ranges of output rows."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    check_blocked(xv.shape, "x")
    check_blocked(outv.shape, "out")
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t OH = outv.shape[2], OW = outv.shape[3]
    if sh < 1 or sw < 1:
        raise ValueError(f"strides must be positive, got {sh}x{sw}")
    if outv.shape[0] != N or outv.shape[1] != Cb or OH != (H + sh - 1) // sh or OW != (W + sw - 1) // sw:
        raise ValueError(f"out {out.shape} must be x {x.shape} taken every "
                         f"{sh}x{sw} pixels")
    if N == 0 or Cb == 0 or OH == 0 or OW == 0:
        return
    cdef SubsampleJob j = SubsampleJob(xv.p, outv.p, H, W, OH, OW,
                                       sh, sw)
    with nogil:
        ce_pool_for(num_threads, N * Cb * OH, _subsample_rows, &j)


def pointwise_pack_floats(Py_ssize_t in_blocks, Py_ssize_t out_blocks):
    """Floats of the packed pointwise weights."""
    return in_blocks * CE_NC_B * out_blocks * CE_NC_B


ctypedef struct PointwiseJob:
    # ce_nc_pw_units's arguments but the range
    const float* x
    Py_ssize_t P
    int Cb, tail
    const float* w
    int Kb
    const float* bias
    const float* res
    float* out
    ce_act_t act
    Py_ssize_t N, T, G, xs, os, chunk
    int by_groups


cdef void _pointwise_units(void* ctx, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef PointwiseJob* a = <PointwiseJob*>ctx
    ce_nc_pw_units(a.x, a.P, a.Cb, a.tail, a.w, a.Kb, a.bias, a.res, a.out, a.act, a.N, a.T, a.G,
                   a.xs, a.os, a.chunk, a.by_groups, lo, hi)


cpdef bint pointwise_by_groups(Py_ssize_t N, Py_ssize_t P, Py_ssize_t Kb, int nt,
                               double group_slack):
    """Whether f32_pointwise_blocked's threads share the groups of output blocks rather than
    the tiles of pixels, for N images of P pixels and Kb output blocks: when the busiest
    thread's tiles x blocks are under group_slack times the pixel split's."""
    cdef Py_ssize_t T = (P + CE_NC_TILE_PIXELS - 1) // CE_NC_TILE_PIXELS
    cdef Py_ssize_t G = (Kb + CE_NC_GROUP - 1) // CE_NC_GROUP
    # a thread dealt whole groups may hold only full ones (5 blocks in groups of 4 and 1 are 4
    # against 1)
    cdef Py_ssize_t by_pixels = (N * T + nt - 1) // nt * Kb
    cdef Py_ssize_t by_groups = (G + nt - 1) // nt * min(Kb, <Py_ssize_t>CE_NC_GROUP) * N * T
    return nt > 1 and by_groups < by_pixels * group_slack


def f32_pointwise_blocked(x, wpack, bias, residual, out, ce_act_t act, int num_threads,
                          double group_slack=1.0, Py_ssize_t channels=0):
    """out = act(W @ x + bias (+ residual)) per pixel, all in blocks (float32 arrays). wpack:
    the weights packed by engine.ops.blocked.pack_pointwise, groups of up to GROUP output
    blocks, each [Cb * B][blocks * B]; bias: Kb * B values (zero beyond K); residual: None or
    an array of out's shape. channels: x's real channels (0: all of its blocks'); the padding
    ones after them, whose weights are zero, are skipped.

    The threads share either the tiles of pixels (all output channels each) or the groups of
    output blocks (all pixels each): the groups when that leaves the busiest thread less than
    group_slack times what the pixel split would (1: whichever is less; 0: always pixels)."""
    check_act(act)
    cdef f32_array xv = f32_arg(x, 5, "x", False), ov = f32_arg(out, 5, "out", True)
    cdef f32_array wv = f32_arg(wpack, 1, "wpack", False), bv = f32_arg(bias, 1, "bias", False)
    check_blocked(xv.shape, "x")
    check_blocked(ov.shape, "out")
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Kb = ov.shape[1], P = H * W
    if ov.shape[0] != N or ov.shape[2] != H or ov.shape[3] != W:
        raise ValueError(f"out {out.shape} must match x {x.shape} but in channels")
    check_pointwise_pack(Cb, Kb, wv.size, bv.size, "wpack", "bias")
    cdef const float* rbase = residual_base(residual, ov.shape)
    # the residual may be out itself (its buffer taken over, engine/graph/blocked_steps.py):
    # each output then reads its residual where it is stored, once its sum is whole; with
    # more than BATCH input blocks the partial sums stored between passes would overwrite it
    if rbase == ov.p and rbase != NULL and Cb > CE_NC_BATCH:
        raise ValueError(f"residual may be out only for at most {CE_NC_BATCH} input blocks, "
                         f"got {Cb}")
    if N == 0 or Kb == 0 or P == 0:
        return
    channels = real_channels(Cb, channels)
    cdef int tail = <int>(channels - (Cb - 1) * CE_NC_B)
    cdef Py_ssize_t T = (P + CE_NC_TILE_PIXELS - 1) // CE_NC_TILE_PIXELS
    cdef Py_ssize_t G = (Kb + CE_NC_GROUP - 1) // CE_NC_GROUP
    cdef int nt = <int>max(1, num_threads)
    cdef bint split_groups = pointwise_by_groups(N, P, Kb, nt, group_slack)
    cdef Py_ssize_t units = G if split_groups else N * T
    nt = <int>min(nt, units)
    cdef Py_ssize_t chunk = max(1, CHUNK_BYTES // (CE_NC_TILE_PIXELS * Cb * CE_NC_B * 4))
    cdef Py_ssize_t xs = Cb * P * CE_NC_B, os = Kb * P * CE_NC_B
    cdef PointwiseJob a = PointwiseJob(xv.p, P, <int>Cb, tail, wv.p, <int>Kb, bv.p, rbase, ov.p,
                                       act, N, T, G, xs, os, chunk, split_groups)
    with nogil:
        ce_pool_for(nt, units, _pointwise_units, &a)


ctypedef struct DirectJob:
    const float* x
    Py_ssize_t C, H, W, Kb, OH, OW
    int sh, sw, pt, pl, kh, kw, dh, dw
    const float* w
    const float* bias
    float* out
    ce_act_t act


cdef void _direct_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): output rows of a set of CE_NC_DIRECT_BLOCKS blocks, ordered (image,
    row, set)."""
    cdef DirectJob* j = <DirectJob*>job
    cdef Py_ssize_t wblock = j.C * j.kh * j.kw * CE_NC_B, S = CE_NC_DIRECT_BLOCKS
    cdef Py_ssize_t sets = (j.Kb + S - 1) // S
    cdef Py_ssize_t it, n, oy, kb
    for it in range(lo, hi):
        kb = S * (it % sets)
        oy = (it // sets) % j.OH
        n = it // (sets * j.OH)
        ce_nc_direct_row(j.x + n * j.C * j.H * j.W, <int>j.C, <int>j.H, <int>j.W, <int>j.OW,
                         <int>oy, j.sh, j.sw, j.pt, j.pl, j.kh, j.kw, j.dh, j.dw,
                         j.w + kb * wblock, wblock, j.bias + kb * CE_NC_B,
                         j.out + ((n * j.Kb + kb) * j.OH + oy) * j.OW * CE_NC_B,
                         j.OH * j.OW * CE_NC_B, <int>min(S, j.Kb - kb), j.act)


def f32_direct_to_blocked(x, w, bias, out, int sh, int sw, int pt, int pl, int dh, int dw,
                          ce_act_t act, int num_threads):
    """A dense convolution (one group) from NCHW x to channel-blocked out, for layers with few
    input channels: w[Kb, C, kh, kw, B] holds output channel kb*B + j's weights at [kb, ..., j]
    (zero beyond K); bias: Kb * B values. Output sizes are the caller's (engine.shapes).
    Work items are output rows of a set of blocks (four with AVX-512, else two; the input
    values loaded once for the set), ordered (image, row, set): bands of rows."""
    cdef f32_array xv = f32_arg(x, 4, "x", False)
    cdef f32_array wv = f32_arg(w, 5, "w", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    check_act(act)
    check_blocked(outv.shape, "out")
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Kb = outv.shape[1], OH = outv.shape[2], OW = outv.shape[3]
    if outv.shape[0] != N:
        raise ValueError(f"out {out.shape} must have x's {N} images")
    if (wv.shape[0] != Kb or wv.shape[1] != C or wv.shape[4] != CE_NC_B or wv.shape[2] < 1
            or wv.shape[3] < 1):
        raise ValueError(f"w must have shape ({Kb}, {C}, kh, kw, {CE_NC_B}), got "
                         f"{w.shape}")
    check_window(Kb, biasv.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    if N == 0 or Kb == 0 or OH <= 0 or OW <= 0:
        return
    if C == 0:
        raise ValueError("x must have at least one channel")
    cdef DirectJob j = DirectJob(xv.p, C, H, W, Kb, OH, OW, sh, sw, pt, pl,
                                 <int>wv.shape[2], <int>wv.shape[3], dh, dw, wv.p,
                                 biasv.p, outv.p, act)
    with nogil:
        ce_pool_for(num_threads, N * OH * ((Kb + CE_NC_DIRECT_BLOCKS - 1)
                                           // CE_NC_DIRECT_BLOCKS), _direct_rows, &j)
