# Winograd F(m x m, 3x3) convolution on channel-blocked tensors (m = 2, 4, 6; stride 1, any
# dilation, groups of whole blocks): the transforms on vectors of channels, the GEMMs by the
# pointwise kernel. The method, the strips and the handling of non-finite inputs are described
# in _nchwc_winograd.h; the weights are transformed and packed by engine.ops.blocked.
#
# The shapes are checked against one another before the GIL is released; every load of the
# input is bounds-checked in the kernel (a tile's taps outside the plane read zeros).
from _epilogue cimport ce_act_t, check_act
from _pool cimport CE_POOL_MAX_THREADS, ce_pool_attach

cdef extern from "_nchwc_winograd.h" nogil:
    int CE_NC_B, CE_NC_GROUP, CE_NC_PW_PAIR
    ctypedef struct ce_nw_job:
        const float *x
        int Cb, tail, H, W, pt, pl
        int A, TH, TW, OH, OW, Kb
        int dh, dw
        const float *u
        Py_ssize_t ue
        const float *taps
        const float *gm
        int C
        float *ubuf
        Py_ssize_t ubuf_floats
        const float *zero
        const float *bias
        const float *res
        float *out
        Py_ssize_t x_img, o_img
        int groups, last_tail
        ce_act_t act
        float *V
        float *M
        Py_ssize_t s0, S
    int ce_nw_run(ce_nw_job *j, Py_ssize_t N, Py_ssize_t S, int nt, int by_strips)

ce_pool_attach()

BLOCK = CE_NC_B
# Bytes of V and M (the transformed inputs and the GEMMs' outputs) of one strip of tiles, kept
# in L2 between the three phases; a strip takes at least MIN_STRIP_TILES tiles, over which the
# GEMMs stream all of U once (bench/bench_winograd_tiles.py --blocked).
STRIP_BYTES = 768 << 10
MIN_STRIP_TILES = 48
# With U made per call, each strip makes it again: strips of up to this many bytes (in L3),
# one for DRN-C-26's 512-channel layers on 28x28.
PER_CALL_STRIP_BYTES = 16 << 20
# A layer of at least this many strips per thread gives each thread whole strips (its own V
# and M, no waits between the phases). DRN-C-26's 16->16 on 224x224 (15 strips): 1.54 ms at
# one thread, 1.23 at two sharing each phase, 0.62 by whole strips; ResNet-50's Winograd
# layers alike with 1 or 2 here (bench/bench_models.py and bench/bench_zoo.py profiles).
STRIPS_PER_THREAD = 2

include "_nchwc_checks.pxi"


def layer_tiles(Py_ssize_t N, Py_ssize_t OH, Py_ssize_t OW, int m, int dh=1, int dw=1):
    """Tiles of a layer of N images of OH x OW outputs: each of the dh x dw phases covered by
    m x m tiles."""
    cdef Py_ssize_t rows = ((OH + dh - 1) // dh + m - 1) // m
    cdef Py_ssize_t cols = ((OW + dw - 1) // dw + m - 1) // m
    return N * dh * dw * rows * cols


def strip_tiles(Py_ssize_t in_blocks, Py_ssize_t out_blocks, int m, Py_ssize_t tiles,
                bint per_call=False):
    """Tiles per strip for a layer of ``tiles`` tiles in all: a multiple of the pointwise
    kernel's six pixels, V and M of a strip about STRIP_BYTES (PER_CALL_STRIP_BYTES with U
    made per call)."""
    cdef Py_ssize_t a = m + 2
    cdef Py_ssize_t per_tile = a * a * (in_blocks + out_blocks) * CE_NC_B * 4
    cdef Py_ssize_t limit = PER_CALL_STRIP_BYTES if per_call else STRIP_BYTES
    cdef Py_ssize_t s = max(MIN_STRIP_TILES, limit // max(1, per_tile)) // 6 * 6
    return max(1, min(s, tiles))


def by_strips(Py_ssize_t tiles, Py_ssize_t strip, int threads, bint per_call=False,
              Py_ssize_t groups=1):
    """Whether each thread takes whole (group, strip) units (stored U, at least
    STRIPS_PER_THREAD of them a thread), rather than sharing each phase of every strip."""
    return (not per_call and threads > 1
            and groups * ((tiles + strip - 1) // strip) >= STRIPS_PER_THREAD * threads)


def work_floats(Py_ssize_t in_blocks, Py_ssize_t out_blocks, int m, Py_ssize_t strip,
                int per_call_threads=0, int strip_threads=1):
    """Floats of the work buffer f32_winograd_blocked needs: V and M of a strip (for each of
    strip_threads threads where they take whole strips: by_strips), a zero bias for the
    GEMMs, and with U made per call a buffer for each of per_call_threads threads."""
    cdef Py_ssize_t a = m + 2
    return (max(1, strip_threads) * a * a * (in_blocks + out_blocks) * strip * CE_NC_B
            + out_blocks * CE_NC_B + per_call_threads * u_buffer_floats(in_blocks, m))


cdef Py_ssize_t u_buffer_floats(Py_ssize_t in_blocks, int m):
    # U[i][j] of one unit's groups of output blocks for every row i
    return (m + 2) * in_blocks * CE_NC_B * CE_NC_GROUP * CE_NC_PW_PAIR * CE_NC_B


def f32_winograd_blocked(x, Py_ssize_t channels, upack, bias, residual, out, int m, int pt, int pl,
                         ce_act_t act, int num_threads, work, int dh=1, int dw=1, g=None,
                         int groups=1):
    """out = act(conv3x3(x, W) + bias (+ residual)), stride 1, dilation (dh, dw), pads pt
    (top) and pl (left), the bottom and right ones implied by out's size, by F(m x m, 3x3) on
    blocks.
    channels: x's real channels; upack: the a^2 = (m + 2)^2 elements' weights U[e], each packed
    as engine.ops.blocked.pack_pointwise packs a 1x1 layer's (per group, one group after
    another); or with g (G, a x 3) given, the weights' taps as
    engine.ops.blocked.pack_winograd_taps arranges them, U made per call (one group only);
    bias: out's blocks x BLOCK values; residual: None or an array of out's shape; groups: each
    takes x's blocks / groups blocks in turn and makes out's blocks / groups, all full but the
    last input block; work: work_floats(...) floats of one group's blocks and the strip
    strip_tiles(...) gives (with per_call_threads = num_threads if U is made per call,
    strip_threads = num_threads if by_strips(...)), from a 64-byte boundary.

    Returns False, having written any part of out, if an input is not finite (its caller runs
    the layer by a kernel whose sums follow the direct convolution's), else True."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array upackv = f32_arg(upack, 1, "upack", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    cdef f32_array workv = f32_arg(work, 1, "work", True)
    cdef f32_array gv
    if g is not None:
        gv = f32_arg(g, 2, "g", False)
    check_act(act)
    check_blocked(xv.shape, "x")
    check_blocked(outv.shape, "out")
    if m not in (2, 4, 6):
        raise ValueError(f"m must be 2, 4 or 6, got {m}")
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Kb = outv.shape[1], OH = outv.shape[2], OW = outv.shape[3]
    if outv.shape[0] != N:
        raise ValueError(f"out holds {out.shape[0]} images, x {N}")
    if Cb == 0 or not (Cb - 1) * CE_NC_B < channels <= Cb * CE_NC_B:
        raise ValueError(f"channels must be in ({(Cb - 1) * CE_NC_B}, {Cb * CE_NC_B}] for "
                         f"{Cb} blocks, got {channels}")
    cdef bint per_call = g is not None
    if groups < 1 or Cb % groups or Kb % groups or (groups > 1 and per_call):
        raise ValueError(f"groups ({groups}) must split x's {Cb} and out's {Kb} blocks evenly, "
                         f"and with U made per call be 1")
    check_window(Kb, biasv.shape[0], H, W, OH, OW, 1, 1, pt, pl, dh, dw)
    if dh > 1 << 27 or dw > 1 << 27 or pt > 1 << 30 or pl > 1 << 30:
        # a patch's last row, iy0 + 7 dh, must fit the kernel's int arithmetic
        raise ValueError(f"dilations ({dh}, {dw}) and pads ({pt}, {pl}) must be at most 2^27 "
                         f"and 2^30")
    cdef Py_ssize_t Cg = Cb // groups, Kg = Kb // groups
    cdef Py_ssize_t a = m + 2, ue = Cg * CE_NC_B * Kg * CE_NC_B
    cdef Py_ssize_t want = Kb * CE_NC_B * channels * 9 if per_call else groups * a * a * ue
    if upackv.shape[0] != want:
        raise ValueError(f"upack must hold {want} floats, got {upack.shape[0]}")
    if per_call and (gv.shape[0] != a or gv.shape[1] != 3):
        raise ValueError(f"g must be G of F({m},3), {a} x 3, got {g.shape[:2]}")
    cdef const float* rbase = residual_base(residual, outv.shape)
    if N == 0 or Kb == 0 or OH == 0 or OW == 0:
        return True
    cdef Py_ssize_t TH = ((OH + dh - 1) // dh + m - 1) // m    # tiles per phase
    cdef Py_ssize_t TW = ((OW + dw - 1) // dw + m - 1) // m
    cdef Py_ssize_t tiles = layer_tiles(N, OH, OW, m, dh, dw)
    cdef Py_ssize_t S = strip_tiles(Cg, Kg, m, tiles, per_call)
    cdef int nt = max(1, min(num_threads, CE_POOL_MAX_THREADS)), bad
    cdef bint strips = by_strips(tiles, S, nt, per_call, groups)
    cdef Py_ssize_t need = work_floats(Cg, Kg, m, S, nt if per_call else 0, nt if strips else 1)
    if workv.shape[0] < need or <size_t>workv.p % 64:
        raise ValueError(f"work must hold {need} floats from a 64-byte boundary, got "
                         f"{workv.shape[0]}")
    cdef float gm[8 * 3]
    cdef Py_ssize_t r_, c_
    if per_call:
        for r_ in range(a):
            for c_ in range(3):
                gm[r_ * 3 + c_] = g[r_, c_]
    cdef float* wp = workv.p
    cdef Py_ssize_t vfloats = a * a * Cg * S * CE_NC_B, mfloats = a * a * Kg * S * CE_NC_B
    if strips:      # V and M of each thread side by side, then the zero bias
        vfloats, mfloats = nt * (vfloats + mfloats) - mfloats, mfloats
    cdef Py_ssize_t i
    for i in range(Kg * CE_NC_B):
        wp[vfloats + mfloats + i] = 0.0
    cdef ce_nw_job j
    j.x = xv.p
    j.Cb, j.tail, j.H, j.W, j.pt, j.pl = Cg, CE_NC_B, H, W, pt, pl
    j.last_tail = channels - (Cb - 1) * CE_NC_B
    j.A, j.TH, j.TW, j.OH, j.OW, j.Kb = a, TH, TW, OH, OW, Kg
    j.dh, j.dw = dh, dw
    j.u, j.ue = (NULL if per_call else upackv.p), ue
    j.taps, j.gm, j.C = upackv.p, gm, channels
    j.ubuf = wp + vfloats + mfloats + Kg * CE_NC_B
    j.ubuf_floats = u_buffer_floats(Cg, m)
    j.zero = wp + vfloats + mfloats
    j.bias, j.res, j.out, j.act = biasv.p, rbase, outv.p, act
    j.x_img, j.o_img = Cb * H * W * CE_NC_B, Kb * OH * OW * CE_NC_B
    j.groups = <int>groups
    j.V, j.M = wp, wp + vfloats
    with nogil:
        bad = ce_nw_run(&j, N, S, nt, strips)
    return not bad
