# Dense convolution on channel-blocked activations (NCHWc, _nchwc.h): the pointwise tile with
# taps of _nchwc_conv.h over bands of output rows, on the input as it is (taps checked) or on
# a copy with its padding as zeros; and its NCHW form, each band of rows turned to blocks and
# back by the thread that computes it (the blocked_bands and blocked_dense algorithms,
# engine/ops/conv2d_algorithms.py).
#
# Every kernel checks the shapes it is given against one another before it releases the GIL.
# Results do not depend on the thread count: each output is computed whole by one thread, in an
# order fixed by the shapes.
from libc.string cimport memcpy, memset

from _epilogue cimport ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for

cdef extern from "_nchwc.h":
    int CE_NC_B, CE_NC_TILE_PIXELS, CE_NC_GROUP, CE_NC_PW_PAIR

ce_pool_attach()

include "_nchwc_checks.pxi"


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
    void ce_nc_convp_groups(const float *xpad, int C, int Hp, int Wp, int Kb, int OH, int OW,
                            int g_lo, int g_hi, Py_ssize_t t0, Py_ssize_t t1, int sh, int sw,
                            int kh, int kw, int dh, int dw, const float *w, const float *bias,
                            const float *res, float *out, ce_act_t act, int batch) nogil


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
    # items (image, group, tiles' groups, band): G tiles' groups, gstep of them an item (two
    # on a padded input, which the quad of kernels/_nchwc_conv.h runs together), GI items;
    # a band: `unit` rows (or tiles) of `units`
    Py_ssize_t G, gstep, GI, groups, nbands, unit, units
    Py_ssize_t x_img, x_grp, per_group, o_img, o_grp


cdef void _dense_bands(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi) of a dense blocked layer, ordered (image, group, tiles' group, band)."""
    cdef const DenseBands* d = <const DenseBands*>job
    cdef Py_ssize_t it, b, g, q, n, a0, a1, o
    for it in range(lo, hi):
        b = it % d.nbands
        g = (it // d.nbands) % d.GI * d.gstep
        q = (it // (d.nbands * d.GI)) % d.groups
        n = it // (d.nbands * d.GI * d.groups)
        a0 = b * d.unit
        a1 = min(d.units, (b + 1) * d.unit)
        o = n * d.o_img + q * d.o_grp
        if d.padded:
            ce_nc_convp_groups(d.x + n * d.x_img + q * d.x_grp, d.C, d.H, d.W, d.Kb, d.OH,
                               d.OW, <int>g, <int>min(g + d.gstep, d.G), a0, a1, d.sh, d.sw,
                               d.kh, d.kw, d.dh, d.dw, d.w + q * d.per_group,
                               d.bias + q * d.Kb * CE_NC_B,
                               (d.res + o) if d.res != NULL else NULL, d.out + o, d.act,
                               d.batch)
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


def f32_conv2d_nchwc(x, Py_ssize_t channels, wpack, bias, residual, out, int kh, int kw, int sh,
                     int sw, int pt, int pl, int dh, int dw, ce_act_t act, int num_threads,
                     int groups=1, scratch=None):
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
    padding then adds products of a weight and zero, so the weights must be finite. Where the
    windows need no padding (no pad on the top and left, every window inside the plane) the
    tiles read the input itself and scratch (any size) is unused: a copy took 10% of a 2x2
    stride-2 layer's time (ConvNeXt's 96->192 on 56x56)."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array wpackv = f32_arg(wpack, 1, "wpack", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    cdef f32_array scratchv
    if scratch is not None:
        scratchv = f32_arg(scratch, 1, "scratch", True)
    check_act(act)
    check_blocked_io(xv.shape, outv.shape)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Kb = outv.shape[1], OH = outv.shape[2], OW = outv.shape[3]
    if not (Cb - 1) * CE_NC_B < channels <= Cb * CE_NC_B:
        raise ValueError(f"channels ({channels}) must fill x's {Cb} blocks")
    if groups < 1 or (groups > 1 and (channels != Cb * CE_NC_B or Cb % groups or Kb % groups)):
        raise ValueError(f"groups ({groups}) must split x's {Cb} full blocks and out's {Kb} "
                         f"blocks evenly")
    if kh < 1 or kw < 1:
        raise ValueError(f"the kernel must be at least 1x1, got {kh}x{kw}")
    cdef Py_ssize_t Cg = Cb // groups, Kg = Kb // groups
    cdef Py_ssize_t per_group = dense_pack_floats(Cg, Kg, kh, kw)
    if wpackv.shape[0] != groups * per_group:
        raise ValueError(f"wpack must hold {groups * per_group} floats, got {wpack.shape[0]}")
    check_window(Kb, biasv.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    cdef const float* rbase = residual_base(residual, &outv.shape[0])
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
    cdef const float* xp = xv.p
    cdef float* op = outv.p
    cdef const float* wp = wpackv.p
    cdef const float* bp = biasv.p
    cdef Py_ssize_t xs = Cb * H * W * CE_NC_B, os = Kb * OH * OW * CE_NC_B
    cdef Py_ssize_t xg = Cg * H * W * CE_NC_B, og = Kg * OH * OW * CE_NC_B
    cdef Py_ssize_t hp = (OH - 1) * sh + (kh - 1) * dh + 1, wpd = (OW - 1) * sw + (kw - 1) * dw + 1
    cdef Py_ssize_t ps = hp * wpd * CE_NC_B, tb, tiles, rows, unit, units
    cdef Py_ssize_t x_img, x_grp, x_row, x_col
    cdef float* xpad
    cdef const float* xsrc
    cdef int padded
    cdef Py_ssize_t gstep = 1
    cdef PadJob pj
    if scratch is not None and pt == 0 and pl == 0 and hp <= H and wpd <= W:
        # the unchecked tiles on the input itself, its planes H x W
        hp, wpd, ps = H, W, H * W * CE_NC_B
        xpad = <float*>xp
    elif scratch is not None:
        if scratchv.shape[0] < dense_padded_floats(N, Cb, OH, OW, kh, kw, sh, sw, dh, dw):
            raise ValueError(f"scratch must hold "
                             f"{dense_padded_floats(N, Cb, OH, OW, kh, kw, sh, sw, dh, dw)} "
                             f"floats, got {scratch.shape[0]}")
        xpad = scratchv.p
        xpad = xpad + (16 - (<size_t>xpad // sizeof(float)) % 16) % 16
        # padded row r holds input row r - pt, its column c input column c - pl
        pj = PadJob(xp, H, W, pt, pl, hp, wpd, xpad)
        with nogil:
            ce_pool_for(num_threads, N * Cb * hp, _pad_rows, &pj)
    if scratch is not None:
        # bands of whole tiles on the plane's grid of tiles (ce_nc_tile_start), which the
        # thread count leaves as it is: a pixel's tile, and so its sums, never depend on it
        tb = max(1, band * OW // CE_NC_TILE_PIXELS)
        tiles = (OH * OW + CE_NC_TILE_PIXELS - 1) // CE_NC_TILE_PIXELS
        nbands = (tiles + tb - 1) // tb
        gstep = CE_NC_PW_PAIR
        items = N * groups * ((G + gstep - 1) // gstep) * nbands
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
                                   dh, dw, wp, bp, rbase, op, act, batch, padded, G, gstep,
                                   (G + gstep - 1) // gstep, groups, nbands, unit, units, x_img,
                                   x_grp, per_group, os, og)
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


def f32_conv2d_nchw_bands(x, wpack, bias, out, int kh, int kw, int sh, int sw, int pt, int pl,
                          int dh, int dw, ce_act_t act, int rows, int num_threads, work):
    """A dense one-group convolution from NCHW to NCHW by the dense blocked kernel, band by
    band (ce_nc_conv_nchw_band): out = act(conv(x) + bias). wpack, bias: as
    engine.ops.blocked.pack_dense makes them; rows: output rows a band; work:
    nchw_band_floats(...) floats. Output sizes are the caller's (engine.shapes). Work items are
    (image, band); the sums are f32_conv2d_nchwc's, whatever the bands and threads."""
    cdef f32_array xv = f32_arg(x, 4, "x", False)
    cdef f32_array wpackv = f32_arg(wpack, 1, "wpack", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 4, "out", True)
    cdef f32_array workv = f32_arg(work, 1, "work", True)
    check_act(act)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t K = outv.shape[1], OH = outv.shape[2], OW = outv.shape[3]
    if outv.shape[0] != N:
        raise ValueError(f"out {out.shape[:4]} must have x's {N} images")
    if kh < 1 or kw < 1 or rows < 1 or C < 1 or K < 1:
        raise ValueError(f"the kernel ({kh}x{kw}), rows a band ({rows}) and channels "
                         f"({C} -> {K}) must be positive")
    cdef Py_ssize_t Cb = (C + CE_NC_B - 1) // CE_NC_B, Kb = (K + CE_NC_B - 1) // CE_NC_B
    if wpackv.shape[0] != dense_pack_floats(Cb, Kb, kh, kw):
        raise ValueError(f"wpack must hold {dense_pack_floats(Cb, Kb, kh, kw)} floats, got "
                         f"{wpack.shape[0]}")
    check_window(Kb, biasv.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    if N == 0 or OH <= 0 or OW <= 0:
        return
    rows = <int>min(rows, OH)
    cdef Py_ssize_t nbands = (OH + rows - 1) // rows
    cdef int nt = <int>max(1, min(num_threads, N * nbands))
    cdef Py_ssize_t per = ce_nc_band_floats(<int>C, <int>K, <int>H, <int>W, <int>OW, rows, kh,
                                            sh, dh)
    if workv.shape[0] < nt * per + 16:
        raise ValueError(f"work must hold {nt * per + 16} floats, got {work.shape[0]}")
    cdef float* wp = workv.p
    wp = wp + (16 - (<size_t>wp // sizeof(float)) % 16) % 16
    cdef NchwBands d = NchwBands(xv.p, outv.p, wpackv.p, biasv.p, wp,
                                 per, C * H * W, K * OH * OW, nbands, <int>C, <int>H, <int>W,
                                 <int>K, <int>OH, <int>OW, rows, sh, sw, pt, pl, kh, kw, dh,
                                 dw, dense_batch(Cb, kh, kw),
                                 act)
    with nogil:
        ce_pool_for(nt, N * nbands, _nchw_bands, &d)
