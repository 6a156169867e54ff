# Kernels on channel-blocked activations, [N][ceil(C / B)][H][W][B] (NCHWc, B = BLOCK: 16 with
# AVX-512, 8 with AVX2; the layout and the micro-kernels are described in _nchwc.h): the layout
# changes to and from NCHW, subsampling, pointwise and dense convolution (per-channel means,
# scaling and batch normalization: nchwc_channels.pyx; depthwise and grouped convolution:
# nchwc_window.pyx). The graph runner keeps chains of these layers in this layout
# (engine/graph/layout.py).
#
# Every kernel checks the shapes it is given against one another before it releases the GIL.
# Results do not depend on the thread count: each output is computed whole by one thread, in an
# order fixed by the shapes.
from libc.string cimport memcpy, memset

from _epilogue cimport ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for


cdef extern from "_nchwc.h":
    int CE_NC_B, CE_NC_TILE_PIXELS, CE_NC_GROUP, CE_NC_DIRECT_BLOCKS, CE_NC_BATCH
    void ce_nc_to_blocked(const float *src, Py_ssize_t ps, Py_ssize_t P, int nc,
                          float *dst) nogil
    void ce_nc_from_blocked(const float *src, Py_ssize_t P, int nc, float *dst,
                            Py_ssize_t ps) nogil
    void ce_nc_pw_units(const float *x, Py_ssize_t P, int Cb, int tail, const float *wpack,
                        int Kb, const float *bias, const float *res, float *out, ce_act_t act,
                        Py_ssize_t N, Py_ssize_t T, Py_ssize_t G, Py_ssize_t xs, Py_ssize_t os,
                        Py_ssize_t chunk, int by_groups, Py_ssize_t lo, Py_ssize_t hi) nogil
    void ce_nc_direct_row(const float *x, int C, int H, int W, int OW, int oy, int sh, int sw,
                          int pt, int pl, int kh, int kw, int dh, int dw, const float *w,
                          Py_ssize_t wstride, const float *bias, float *out,
                          Py_ssize_t ostride, int nk, ce_act_t act) nogil

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


cdef const float* residual_base(residual, const Py_ssize_t* out_shape) except? NULL:
    """The first element of ``residual`` (None, or a blocked array of the shape out_shape
    points at, checked), or NULL. The caller's reference keeps the array, and so the pointer,
    alive. (The shape, not the output's view: a view passed as an object would be wrapped
    anew on every call, a third of a small layer's call.)"""
    cdef const float[:, :, :, :, ::1] r
    if residual is None:
        return NULL
    want = tuple(out_shape[i] for i in range(5))
    if tuple(residual.shape) != want:
        raise ValueError(f"residual must have out's shape {want}, got "
                         f"{tuple(residual.shape)}")
    r = residual
    return &r[0, 0, 0, 0, 0] if r.size else NULL


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


def f32_to_blocked(const float[:, :, :, ::1] x, float[:, :, :, :, ::1] out, int num_threads):
    """out[n, c // B, h, w, c % B] = x[n, c, h, w], zero in the channels beyond C."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2] * x.shape[3]
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B
    if (out.shape[0] != N or out.shape[1] != Cb or out.shape[2] != x.shape[2]
            or out.shape[3] != x.shape[3] or out.shape[4] != CE_NC_B):
        raise ValueError(f"out must have shape ({N}, {Cb}, {x.shape[2]}, {x.shape[3]}, "
                         f"{CE_NC_B}) for x {tuple(x.shape)[:4]}, got {tuple(out.shape)}")
    if N == 0 or Cb == 0 or P == 0:
        return
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0, 0]
    with nogil:
        _layout_change(xp, C, P, op, True, N * Cb, num_threads)


def f32_from_blocked(const float[:, :, :, :, ::1] x, float[:, :, :, ::1] out, int num_threads):
    """out[n, c, h, w] = x[n, c // B, h, w, c % B] for the C channels of out."""
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1], P = out.shape[2] * out.shape[3]
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B
    if (x.shape[0] != N or x.shape[1] != Cb or x.shape[2] != out.shape[2]
            or x.shape[3] != out.shape[3] or x.shape[4] != CE_NC_B):
        raise ValueError(f"x must have shape ({N}, {Cb}, {out.shape[2]}, {out.shape[3]}, "
                         f"{CE_NC_B}) for out {tuple(out.shape)[:4]}, got {tuple(x.shape)}")
    if N == 0 or Cb == 0 or P == 0:
        return
    cdef const float* xp = &x[0, 0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0]
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


def f32_subsample_blocked(const float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] out, int sh,
                          int sw, int num_threads):
    """out[n, cb, oy, ox] = x[n, cb, oy * sh, ox * sw] (one vector per pixel): the input of a
    1x1 convolution with strides and no padding, which the pointwise kernel then runs on whole
    tiles of pixels. The threads take ranges of output rows."""
    check_blocked(x.shape, "x")
    check_blocked(out.shape, "out")
    cdef Py_ssize_t N = x.shape[0], Cb = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    if sh < 1 or sw < 1:
        raise ValueError(f"strides must be positive, got {sh}x{sw}")
    if out.shape[0] != N or out.shape[1] != Cb or OH != (H + sh - 1) // sh or OW != (W + sw - 1) // sw:
        raise ValueError(f"out {tuple(out.shape)} must be x {tuple(x.shape)} taken every "
                         f"{sh}x{sw} pixels")
    if N == 0 or Cb == 0 or OH == 0 or OW == 0:
        return
    cdef SubsampleJob j = SubsampleJob(&x[0, 0, 0, 0, 0], &out[0, 0, 0, 0, 0], H, W, OH, OW,
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


def f32_pointwise_blocked(const float[:, :, :, :, ::1] x, const float[::1] wpack,
                          const float[::1] bias, residual, float[:, :, :, :, ::1] out, ce_act_t act,
                          int num_threads, double group_slack=1.0, Py_ssize_t channels=0):
    """out = act(W @ x + bias (+ residual)) per pixel, all in blocks. wpack: the weights packed
    by engine.ops.blocked.pack_pointwise, groups of up to GROUP output blocks, each
    [Cb * B][blocks * B]; bias: Kb * B values (zero beyond K); residual: None or an array
    of out's shape. channels: x's real channels (0: all of its blocks'); the padding ones after
    them, whose weights are zero, are skipped.

    The threads share either the tiles of pixels (all output channels each) or the groups of
    output blocks (all pixels each): the groups when that leaves the busiest thread less than
    group_slack times what the pixel split would (1: whichever is less; 0: always pixels)."""
    check_act(act)
    check_blocked(x.shape, "x")
    check_blocked(out.shape, "out")
    cdef Py_ssize_t N = x.shape[0], Cb = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Kb = out.shape[1], P = H * W
    if out.shape[0] != N or out.shape[2] != H or out.shape[3] != W:
        raise ValueError(f"out {tuple(out.shape)} must match x {tuple(x.shape)} but in channels")
    if wpack.shape[0] != Cb * CE_NC_B * Kb * CE_NC_B:
        raise ValueError(f"wpack must hold {Cb * CE_NC_B * Kb * CE_NC_B} floats, got "
                         f"{wpack.shape[0]}")
    if bias.shape[0] != Kb * CE_NC_B:
        raise ValueError(f"bias must hold {Kb * CE_NC_B} floats, got {bias.shape[0]}")
    cdef const float* rbase = residual_base(residual, &out.shape[0])
    # the residual may be out itself (its buffer taken over, engine/graph/blocked_steps.py):
    # each output then reads its residual where it is stored, once its sum is whole; with
    # more than BATCH input blocks the partial sums stored between passes would overwrite it
    if rbase == &out[0, 0, 0, 0, 0] and rbase != NULL and Cb > CE_NC_BATCH:
        raise ValueError(f"residual may be out only for at most {CE_NC_BATCH} input blocks, "
                         f"got {Cb}")
    if N == 0 or Kb == 0 or P == 0:
        return
    if Cb == 0:
        raise ValueError("x must have at least one channel")
    if channels == 0:
        channels = Cb * CE_NC_B
    if not (Cb - 1) * CE_NC_B < channels <= Cb * CE_NC_B:
        raise ValueError(f"channels must be in ({(Cb - 1) * CE_NC_B}, {Cb * CE_NC_B}] for "
                         f"{Cb} blocks, got {channels}")
    cdef int tail = <int>(channels - (Cb - 1) * CE_NC_B)
    cdef Py_ssize_t T = (P + CE_NC_TILE_PIXELS - 1) // CE_NC_TILE_PIXELS
    cdef Py_ssize_t G = (Kb + CE_NC_GROUP - 1) // CE_NC_GROUP
    cdef int nt = <int>max(1, num_threads)
    cdef bint split_groups = pointwise_by_groups(N, P, Kb, nt, group_slack)
    cdef Py_ssize_t units = G if split_groups else N * T
    nt = <int>min(nt, units)
    cdef Py_ssize_t chunk = max(1, CHUNK_BYTES // (CE_NC_TILE_PIXELS * Cb * CE_NC_B * 4))
    cdef const float* xp = &x[0, 0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0, 0]
    cdef const float* wp = &wpack[0]
    cdef const float* bp = &bias[0]
    cdef Py_ssize_t xs = Cb * P * CE_NC_B, os = Kb * P * CE_NC_B
    cdef PointwiseJob a = PointwiseJob(xp, P, <int>Cb, tail, wp, <int>Kb, bp, rbase, op, act, N, T, G, xs,
                             os, chunk, split_groups)
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


def f32_direct_to_blocked(const float[:, :, :, ::1] x, const float[:, :, :, :, ::1] w,
                          const float[::1] bias, float[:, :, :, :, ::1] out, int sh, int sw,
                          int pt, int pl, int dh, int dw, ce_act_t act, int num_threads):
    """A dense convolution (one group) from NCHW x to channel-blocked out, for layers with few
    input channels: w[Kb, C, kh, kw, B] holds output channel kb*B + j's weights at [kb, ..., j]
    (zero beyond K); bias: Kb * B values. Output sizes are the caller's (engine.shapes).
    Work items are output rows of a set of blocks (four with AVX-512, else two; the input
    values loaded once for the set), ordered (image, row, set): bands of rows."""
    check_act(act)
    check_blocked(out.shape, "out")
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Kb = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    if out.shape[0] != N:
        raise ValueError(f"out {tuple(out.shape)} must have x's {N} images")
    if (w.shape[0] != Kb or w.shape[1] != C or w.shape[4] != CE_NC_B or w.shape[2] < 1
            or w.shape[3] < 1):
        raise ValueError(f"w must have shape ({Kb}, {C}, kh, kw, {CE_NC_B}), got "
                         f"{tuple(w.shape)}")
    check_window(Kb, bias.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    if N == 0 or Kb == 0 or OH <= 0 or OW <= 0:
        return
    if C == 0:
        raise ValueError("x must have at least one channel")
    cdef DirectJob j = DirectJob(&x[0, 0, 0, 0], C, H, W, Kb, OH, OW, sh, sw, pt, pl,
                                 <int>w.shape[2], <int>w.shape[3], dh, dw, &w[0, 0, 0, 0, 0],
                                 &bias[0], &out[0, 0, 0, 0, 0], act)
    with nogil:
        ce_pool_for(num_threads, N * OH * ((Kb + CE_NC_DIRECT_BLOCKS - 1)
                                           // CE_NC_DIRECT_BLOCKS), _direct_rows, &j)


cdef extern from "_nchwc_conv.h":
    void ce_nc_conv_band(const float *x, int C, int H, int W, int Kb, int OH, int OW, int g,
                         int oy0, int oy1, int sh, int sw, int pt, int pl, int kh, int kw,
                         int dh, int dw, const float *w, const float *bias, const float *res,
                         float *out, ce_act_t act, int batch) nogil
    Py_ssize_t ce_nc_band_floats(int C, int K, int H, int W, int OW, int rows, int kh, int sh,
                                 int dh) nogil
    void ce_nc_conv_nchw_band(const float *x, int C, int H, int W, int K, int OH, int OW,
                              int oy0, int oy1, int sh, int sw, int pt, int pl, int kh, int kw,
                              int dh, int dw, const float *w, const float *bias, float *out,
                              ce_act_t act, int batch, float *scratch) nogil
    void ce_nc_convp_band(const float *xpad, int C, int Hp, int Wp, int Kb, int OH, int OW,
                          int g, Py_ssize_t t0, Py_ssize_t t1, int sh, int sw, int kh, int kw,
                          int dh, int dw, const float *w, const float *bias, const float *res,
                          float *out, ce_act_t act, int batch) nogil


ctypedef struct PadJob:
    const float* x
    Py_ssize_t H, W, pt, pl, hp, wpd
    float* xpad


cdef void _pad_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Rows [lo, hi) of the padded copy (hp x wpd planes): padded row r holds input row
    r - pt, its column c input column c - pl, zeros elsewhere."""
    cdef PadJob* j = <PadJob*>job
    cdef const float* xp = j.x
    cdef float* xpad = j.xpad
    cdef Py_ssize_t H = j.H, W = j.W, pt = j.pt, pl = j.pl, hp = j.hp, wpd = j.wpd
    cdef Py_ssize_t a = min(max(pl, 0), wpd), b = min(max(pl + W, a), wpd), it, iy
    for it in range(lo, hi):
        iy = it % hp - pt
        if iy < 0 or iy >= H:
            memset(xpad + it * wpd * CE_NC_B, 0, wpd * CE_NC_B * sizeof(float))
        else:
            memset(xpad + it * wpd * CE_NC_B, 0, a * CE_NC_B * sizeof(float))
            memcpy(xpad + (it * wpd + a) * CE_NC_B,
                   xp + ((it // hp) * H * W + iy * W + (a - pl)) * CE_NC_B,
                   (b - a) * CE_NC_B * sizeof(float))
            memset(xpad + (it * wpd + b) * CE_NC_B, 0, (wpd - b) * CE_NC_B * sizeof(float))


ctypedef struct DenseBands:
    # the input (or its padded copy) and the layer, as ce_nc_conv_band / ce_nc_convp_band take
    const float* x
    int C, H, W, Kb, OH, OW, sh, sw, pt, pl, kh, kw, dh, dw
    const float* w
    const float* bias
    const float* res
    float* out
    ce_act_t act
    int batch, padded
    # items (image, group, tiles' group, band); a band: `unit` rows (or tiles) of `units`
    Py_ssize_t G, groups, nbands, unit, units
    Py_ssize_t x_img, x_grp, per_group, o_img, o_grp


cdef void _dense_bands(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi) of a dense blocked layer, ordered (image, group, tiles' group, band)."""
    cdef const DenseBands* d = <const DenseBands*>job
    cdef Py_ssize_t it, b, g, q, n, a0, a1, o
    for it in range(lo, hi):
        b = it % d.nbands
        g = (it // d.nbands) % d.G
        q = (it // (d.nbands * d.G)) % d.groups
        n = it // (d.nbands * d.G * d.groups)
        a0 = b * d.unit
        a1 = min(d.units, (b + 1) * d.unit)
        o = n * d.o_img + q * d.o_grp
        if d.padded:
            ce_nc_convp_band(d.x + n * d.x_img + q * d.x_grp, d.C, d.H, d.W, d.Kb, d.OH, d.OW,
                             <int>g, a0, a1, d.sh, d.sw, d.kh, d.kw, d.dh, d.dw,
                             d.w + q * d.per_group, d.bias + q * d.Kb * CE_NC_B,
                             (d.res + o) if d.res != NULL else NULL, d.out + o, d.act, d.batch)
        else:
            ce_nc_conv_band(d.x + n * d.x_img + q * d.x_grp, d.C, d.H, d.W, d.Kb, d.OH, d.OW,
                            <int>g, <int>a0, <int>a1, d.sh, d.sw, d.pt, d.pl, d.kh, d.kw, d.dh,
                            d.dw, d.w + q * d.per_group, d.bias + q * d.Kb * CE_NC_B,
                            (d.res + o) if d.res != NULL else NULL, d.out + o, d.act, d.batch)


def dense_padded_floats(Py_ssize_t N, Py_ssize_t Cb, Py_ssize_t OH, Py_ssize_t OW, int kh,
                        int kw, int sh, int sw, int dh, int dw):
    """Floats of f32_conv2d_nchwc's scratch for its padded input (scratch=)."""
    cdef Py_ssize_t hp = (OH - 1) * sh + (kh - 1) * dh + 1, wp = (OW - 1) * sw + (kw - 1) * dw + 1
    return N * Cb * hp * wp * CE_NC_B + 16          # + 64-byte alignment

# Bytes of packed weights per batch of input blocks, kept in L2 while a band of output rows
# passes over them; and bytes of output sums per band, kept there between batches
# (bench/bench_dispatch.py layout/dense).
DENSE_BATCH_BYTES = 256 << 10
DENSE_BAND_BYTES = 64 << 10


cdef inline int dense_batch(Py_ssize_t in_blocks, int kh, int kw) noexcept:
    """Input blocks a batch of the dense kernel: their weights for one group of output blocks
    within DENSE_BATCH_BYTES."""
    cdef Py_ssize_t block_bytes = kh * kw * CE_NC_B * CE_NC_GROUP * CE_NC_B * 4
    return <int>max(1, min(in_blocks, DENSE_BATCH_BYTES // block_bytes))


def dense_pack_floats(Py_ssize_t in_blocks, Py_ssize_t out_blocks, int kh, int kw):
    """Floats of the packed dense weights."""
    return in_blocks * out_blocks * kh * kw * CE_NC_B * CE_NC_B


def f32_conv2d_nchwc(const float[:, :, :, :, ::1] x, Py_ssize_t channels,
                       const float[::1] wpack, const float[::1] bias, residual,
                       float[:, :, :, :, ::1] out, int kh, int kw, int sh, int sw, int pt,
                       int pl, int dh, int dw, ce_act_t act, int num_threads, int groups=1,
                       float[::1] scratch=None):
    """A dense convolution from blocks to blocks: out = act(conv(x) + bias (+ residual)).
    x holds ``channels`` channels in its blocks; wpack: the weights packed by
    engine.ops.blocked.pack_dense (groups of up to GROUP output blocks, each
    [Cb][kh][kw][B][blocks * B]); bias: Kb * B values; residual: None or an array of out's
    shape. ``groups`` > 1: a grouped convolution whose groups each fill whole blocks in and
    out (RegNet's 16-channel groups in 8-channel blocks), each group the dense one of its
    blocks, its packs one after another. Output sizes are the caller's (engine.shapes). Work
    items are bands of output rows of one group of output blocks, ordered (image, group,
    band). With scratch (dense_padded_floats of it) the input is first copied with
    its padding as zeros and the tiles run on it unchecked, across rows (ce_nc_convp_band):
    padding then adds products of a weight and zero, so the weights must be finite."""
    check_act(act)
    check_blocked(x.shape, "x")
    check_blocked(out.shape, "out")
    cdef Py_ssize_t N = x.shape[0], Cb = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Kb = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    if out.shape[0] != N:
        raise ValueError(f"out {tuple(out.shape)} must have x's {N} images")
    if not (Cb - 1) * CE_NC_B < channels <= Cb * CE_NC_B:
        raise ValueError(f"channels ({channels}) must fill x's {Cb} blocks")
    if groups < 1 or (groups > 1 and (channels != Cb * CE_NC_B or Cb % groups or Kb % groups)):
        raise ValueError(f"groups ({groups}) must split x's {Cb} full blocks and out's {Kb} "
                         f"blocks evenly")
    if kh < 1 or kw < 1:
        raise ValueError(f"the kernel must be at least 1x1, got {kh}x{kw}")
    cdef Py_ssize_t Cg = Cb // groups, Kg = Kb // groups
    cdef Py_ssize_t per_group = dense_pack_floats(Cg, Kg, kh, kw)
    if wpack.shape[0] != groups * per_group:
        raise ValueError(f"wpack must hold {groups * per_group} floats, got {wpack.shape[0]}")
    check_window(Kb, bias.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    cdef const float* rbase = residual_base(residual, &out.shape[0])
    if N == 0 or Kb == 0 or OH <= 0 or OW <= 0:
        return
    cdef int cg = <int>(channels if groups == 1 else Cg * CE_NC_B)
    cdef Py_ssize_t G = (Kg + CE_NC_GROUP - 1) // CE_NC_GROUP      # tiles' groups of blocks
    cdef int nt = <int>max(1, num_threads)
    cdef int batch = dense_batch(Cg, kh, kw)
    cdef Py_ssize_t band = max(1, min(OH, DENSE_BAND_BYTES // (OW * CE_NC_GROUP * CE_NC_B * 4)))
    # at least two items per thread, for balance
    while band > 1 and N * groups * G * ((OH + band - 1) // band) < 2 * nt:
        band = (band + 1) // 2
    cdef Py_ssize_t nbands = (OH + band - 1) // band
    cdef Py_ssize_t items = N * groups * G * nbands, it
    nt = <int>min(nt, items)
    cdef const float* xp = &x[0, 0, 0, 0, 0]
    cdef float* op = &out[0, 0, 0, 0, 0]
    cdef const float* wp = &wpack[0]
    cdef const float* bp = &bias[0]
    cdef Py_ssize_t xs = Cb * H * W * CE_NC_B, os = Kb * OH * OW * CE_NC_B
    cdef Py_ssize_t xg = Cg * H * W * CE_NC_B, og = Kg * OH * OW * CE_NC_B
    cdef Py_ssize_t hp = (OH - 1) * sh + (kh - 1) * dh + 1, wpd = (OW - 1) * sw + (kw - 1) * dw + 1
    cdef Py_ssize_t ps = hp * wpd * CE_NC_B, tb, tiles, rows, unit, units
    cdef Py_ssize_t x_img, x_grp, x_row, x_col
    cdef float* xpad
    cdef const float* xsrc
    cdef int padded
    cdef PadJob pj
    if scratch is not None:
        if scratch.shape[0] < dense_padded_floats(N, Cb, OH, OW, kh, kw, sh, sw, dh, dw):
            raise ValueError(f"scratch must hold "
                             f"{dense_padded_floats(N, Cb, OH, OW, kh, kw, sh, sw, dh, dw)} "
                             f"floats, got {scratch.shape[0]}")
        xpad = &scratch[0]
        xpad = xpad + (16 - (<size_t>xpad // sizeof(float)) % 16) % 16
        # padded row r holds input row r - pt, its column c input column c - pl
        pj = PadJob(xp, H, W, pt, pl, hp, wpd, xpad)
        with nogil:
            ce_pool_for(num_threads, N * Cb * hp, _pad_rows, &pj)
        # bands of whole tiles on the plane's grid of tiles (ce_nc_tile_start), which the
        # thread count leaves as it is: a pixel's tile, and so its sums, never depend on it
        tb = max(1, band * OW // CE_NC_TILE_PIXELS)
        tiles = (OH * OW + CE_NC_TILE_PIXELS - 1) // CE_NC_TILE_PIXELS
        nbands = (tiles + tb - 1) // tb
        items = N * groups * G * nbands
        x_img, x_grp, x_row, x_col = Cb * ps, Cg * ps, hp, wpd
        unit, units = tb, tiles
        xsrc = xpad
        padded = 1
    else:
        x_img, x_grp, x_row, x_col = xs, xg, H, W
        unit, units = band, OH
        xsrc = xp
        padded = 0
    cdef DenseBands d = DenseBands(xsrc, cg, x_row, x_col, Kg, OH, OW, sh, sw, pt, pl, kh, kw,
                                   dh, dw, wp, bp, rbase, op, act, batch, padded, G, groups,
                                   nbands, unit, units, x_img, x_grp, per_group, os, og)
    with nogil:
        ce_pool_for(num_threads, items, _dense_bands, &d)


def nchw_band_floats(Py_ssize_t C, Py_ssize_t K, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW,
                     int rows, int kh, int sh, int dh, int num_threads):
    """Floats of f32_conv2d_nchw_bands' work buffer: each thread's band of input rows (at most
    the input's H) and of outputs in blocks (bands of ``rows`` output rows), and 64-byte
    alignment."""
    if min(C, K, H, W, OW, rows, kh, sh, dh) < 1 or max(C, K, H, W, OW) > 1 << 30:
        raise ValueError("channels, sizes, rows, kernel, stride and dilation must be positive")
    return max(1, num_threads) * ce_nc_band_floats(<int>C, <int>K, <int>H, <int>W, <int>OW,
                                                   rows, kh, sh, dh) + 16


ctypedef struct NchwBands:
    const float* x
    float* out
    const float* w
    const float* bias
    float* work
    Py_ssize_t per_thread, x_img, o_img, nbands
    int C, H, W, K, OH, OW, rows, sh, sw, pt, pl, kh, kw, dh, dw, batch
    ce_act_t act


cdef void _nchw_bands(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): (image, band of output rows)."""
    cdef const NchwBands* d = <const NchwBands*>job
    cdef Py_ssize_t it, n, oy0
    for it in range(lo, hi):
        n = it // d.nbands
        oy0 = (it % d.nbands) * d.rows
        ce_nc_conv_nchw_band(d.x + n * d.x_img, d.C, d.H, d.W, d.K, d.OH, d.OW, <int>oy0,
                             <int>min(oy0 + d.rows, d.OH), d.sh, d.sw, d.pt, d.pl, d.kh, d.kw,
                             d.dh, d.dw, d.w, d.bias, d.out + n * d.o_img, d.act, d.batch,
                             d.work + thread * d.per_thread)


def f32_conv2d_nchw_bands(const float[:, :, :, ::1] x, const float[::1] wpack,
                          const float[::1] bias, float[:, :, :, ::1] out, int kh, int kw,
                          int sh, int sw, int pt, int pl, int dh, int dw, ce_act_t act,
                          int rows, int num_threads, float[::1] work):
    """A dense one-group convolution from NCHW to NCHW by the dense blocked kernel, band by
    band (ce_nc_conv_nchw_band): out = act(conv(x) + bias). wpack, bias: as
    engine.ops.blocked.pack_dense makes them; rows: output rows a band; work:
    nchw_band_floats(...) floats. Output sizes are the caller's (engine.shapes). Work items are
    (image, band); the sums are f32_conv2d_nchwc's, whatever the bands and threads."""
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    if out.shape[0] != N:
        raise ValueError(f"out {tuple(out.shape)[:4]} must have x's {N} images")
    if kh < 1 or kw < 1 or rows < 1 or C < 1 or K < 1:
        raise ValueError(f"the kernel ({kh}x{kw}), rows a band ({rows}) and channels "
                         f"({C} -> {K}) must be positive")
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B, Kb = (K + CE_NC_B - 1) // CE_NC_B
    if wpack.shape[0] != dense_pack_floats(Cb, Kb, kh, kw):
        raise ValueError(f"wpack must hold {dense_pack_floats(Cb, Kb, kh, kw)} floats, got "
                         f"{wpack.shape[0]}")
    check_window(Kb, bias.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    if N == 0 or OH <= 0 or OW <= 0:
        return
    rows = <int>min(rows, OH)
    cdef Py_ssize_t nbands = (OH + rows - 1) // rows
    cdef int nt = <int>max(1, min(num_threads, N * nbands))
    cdef Py_ssize_t per = ce_nc_band_floats(<int>C, <int>K, <int>H, <int>W, <int>OW, rows, kh,
                                            sh, dh)
    if work.shape[0] < nt * per + 16:
        raise ValueError(f"work must hold {nt * per + 16} floats, got {work.shape[0]}")
    cdef float* wp = &work[0]
    wp = wp + (16 - (<size_t>wp // sizeof(float)) % 16) % 16
    cdef NchwBands d = NchwBands(&x[0, 0, 0, 0], &out[0, 0, 0, 0], &wpack[0], &bias[0], wp,
                                 per, C * H * W, K * OH * OW, nbands, <int>C, <int>H, <int>W,
                                 <int>K, <int>OH, <int>OW, rows, sh, sw, pt, pl, kh, kw, dh,
                                 dw, dense_batch(Cb, kh, kw),
                                 act)
    with nogil:
        ce_pool_for(nt, N * nbands, _nchw_bands, &d)
