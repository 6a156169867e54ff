# Live taps on channel-blocked tensors: a stride-1 convolution whose output plane is its input
# plane's size, computed tap by tap over the rectangle of outputs where each tap reads the
# input (kernels/_nchwc_taps.h). The rectangles come from engine/ops/live_taps.py; every one
# is checked against both planes here before the GIL is released.
from _epilogue cimport ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for

cdef extern from "_nchwc_taps.h" nogil:
    int CE_NC_B, CE_NC_GROUP
    ctypedef struct ce_nt_rect:
        int tap, oy0, oy1, ox0, ox1, iy0, ix0
    ctypedef struct ce_nt_job:
        const float *x
        int Cb, tail, H, W, Kb
        const float *w
        Py_ssize_t tap_floats
        const ce_nt_rect *rects
        int nrects
        const float *bias
        ce_act_t act
        float *out
        int G, bands
    void ce_nt_unit(const ce_nt_job *j, Py_ssize_t u)

ce_pool_attach()

include "_nchwc_checks.pxi"


cdef void _units(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t u
    for u in range(lo, hi):
        ce_nt_unit(<ce_nt_job*>job, u)


def f32_live_taps_blocked(x, Py_ssize_t channels, wtaps, bias, const int[:, ::1] rects, out,
                          ce_act_t act, int num_threads):
    """out = act(bias + the sum over rects of each tap's pointwise product), all on blocks;
    out's plane is x's.
    channels: x's real channels; wtaps: one row per tap of the kernel, its (K, C) weights
    packed by engine.ops.blocked.pack_pointwise; bias: out's blocks x BLOCK values; rects: one
    row per live tap, (tap, oy0, oy1, ox0, ox1, iy0, ix0): outputs [oy0, oy1) x [ox0, ox1)
    read x from (iy0, ix0) on. The threads share (image, group of output blocks, band of rows)
    units; each output's sums run in one order whatever their number."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array wtapsv = f32_arg(wtaps, 2, "wtaps", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    check_act(act)
    check_blocked(xv.shape, "x")
    check_blocked(outv.shape, "out")
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Kb = outv.shape[1]
    if outv.shape[0] != N or outv.shape[2] != H or outv.shape[3] != W:
        raise ValueError(f"out {out.shape[:5]} must have x's images and plane "
                         f"{(N, H, W)}")
    if Cb == 0 or not (Cb - 1) * CE_NC_B < channels <= Cb * CE_NC_B:
        raise ValueError(f"channels must be in ({(Cb - 1) * CE_NC_B}, {Cb * CE_NC_B}] for "
                         f"{Cb} blocks, got {channels}")
    if H > 1 << 30 or W > 1 << 30:
        raise ValueError(f"the plane {H}x{W} is larger than the kernel's int arithmetic takes")
    if biasv.shape[0] != Kb * CE_NC_B:
        raise ValueError(f"bias must hold {Kb * CE_NC_B} floats, got {bias.shape[0]}")
    cdef Py_ssize_t tap_floats = Cb * CE_NC_B * Kb * CE_NC_B
    if wtapsv.shape[1] != tap_floats:
        raise ValueError(f"wtaps rows must hold {tap_floats} floats, got {wtaps.shape[1]}")
    if rects.shape[1] != 7:
        raise ValueError(f"rects must have 7 columns, got {rects.shape[1]}")
    cdef Py_ssize_t r, tap, oy0, oy1, ox0, ox1, iy0, ix0
    for r in range(rects.shape[0]):     # typed reads: no Python work per call and rectangle
        tap, oy0, oy1, ox0, ox1 = rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3], rects[r, 4]
        iy0, ix0 = rects[r, 5], rects[r, 6]
        if not (0 <= tap < wtapsv.shape[0] and 0 <= oy0 < oy1 <= H and 0 <= ox0 < ox1 <= W
                and 0 <= iy0 and iy0 + oy1 - oy0 <= H and 0 <= ix0 and ix0 + ox1 - ox0 <= W):
            raise ValueError(f"rects row {r} {tuple(rects[r, k] for k in range(7))} reads or "
                             f"writes outside the {H}x{W} planes or names no tap")
    if N == 0 or Kb == 0 or H == 0 or W == 0:
        return
    cdef Py_ssize_t G = (Kb + CE_NC_GROUP - 1) // CE_NC_GROUP
    cdef int nt = max(1, num_threads)
    # rows in bands only when the groups are too few to keep the threads busy (each band
    # reads all of its group's weights again)
    cdef Py_ssize_t bands = 1
    if N * G < 2 * nt:
        bands = min(H, (2 * nt + N * G - 1) // (N * G))
    cdef Py_ssize_t units = N * G * bands
    cdef ce_nt_job j
    j.x = xv.p
    j.Cb, j.tail, j.H, j.W, j.Kb = Cb, channels - (Cb - 1) * CE_NC_B, H, W, Kb
    j.w, j.tap_floats = (wtapsv.p if wtapsv.shape[0] else NULL), tap_floats
    j.rects = <const ce_nt_rect*>&rects[0, 0] if rects.shape[0] else NULL
    j.nrects = rects.shape[0]
    j.bias, j.act, j.out = biasv.p, act, outv.p
    j.G, j.bands = G, bands
    with nogil:
        ce_pool_for(min(nt, units), units, _units, &j)
