# Windowed kernels on channel-blocked activations (NCHWc, _nchwc.h): depthwise convolution
# (_nchwc_dw.h), grouped convolution with groups inside blocks (_nchwc_grouped.h), and a
# pointwise layer fused into the depthwise one that reads it (_nchwc_expand.h). The dense
# and pointwise kernels and the layout changes are in nchwc.pyx.
#
# Every kernel checks the shapes it is given against one another before it releases the GIL.
# Results do not depend on the thread count: each output is computed whole by one thread, in an
# order fixed by the shapes.
from libc.stdlib cimport free, malloc

from _epilogue cimport ce_act_t, check_act
from _pool cimport ce_pool_attach, ce_pool_for, ce_pool_run

ce_pool_attach()


cdef extern from "_nchwc.h":
    int CE_NC_B

include "_nchwc_checks.pxi"


cdef int check_same_blocks(const Py_ssize_t* x, const Py_ssize_t* out) except -1:
    """x and out (shapes) channel-blocked, with the same images and blocks (a layer from blocks
    to blocks of as many channels)."""
    check_blocked(x, "x")
    check_blocked(out, "out")
    if out[0] != x[0] or out[1] != x[1]:
        raise ValueError(f"out {tuple(out[i] for i in range(5))} must have x's images and "
                         f"blocks {(x[0], x[1])}")
    return 0


cdef extern from "_nchwc_dw.h":
    void ce_nc_dw_row(const float *x, int H, int W, int OW, int oy, int sh, int sw, int pt,
                      int pl, int kh, int kw, int dh, int dw, const float *w,
                      const float *bias, float *out, ce_act_t act) nogil
    int CE_NC_DW_PLANE_VECS
    bint ce_nc_dw_plane_fits(int H, int W, int OW, int sw, int kh, int kw, int dw) nogil
    void ce_nc_dw_plane(const float *x, int H, int W, int OH, int OW, int sh, int sw, int pt,
                        int pl, int kh, int kw, int dh, int dw, const float *w,
                        const float *bias, float *out, ce_act_t act, float *buf) nogil


# A layer, the job of the engine's pool (kernels/_pool.h) in either of the functions below.
ctypedef struct DwLayer:
    const float* x
    int H, W, OH, OW, sh, sw, pt, pl, kh, kw, dh, dw
    const float* w
    const float* bias
    float* out
    ce_act_t act
    Py_ssize_t Cb
    bint by_blocks
    float* bufs                 # planes: each thread's buffer, per_thread floats apart
    Py_ssize_t per_thread


cdef void _dw_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Planes [lo, hi) of all images' blocks, each whole through the thread's buffer."""
    cdef const DwLayer* d = <const DwLayer*>job
    cdef float* buf = d.bufs + thread * d.per_thread
    cdef Py_ssize_t it, cb
    for it in range(lo, hi):
        cb = it % d.Cb
        ce_nc_dw_plane(d.x + it * d.H * d.W * CE_NC_B, d.H, d.W, d.OH, d.OW, d.sh, d.sw, d.pt,
                       d.pl, d.kh, d.kw, d.dh, d.dw, d.w + cb * d.kh * d.kw * CE_NC_B,
                       d.bias + cb * CE_NC_B, d.out + it * d.OH * d.OW * CE_NC_B, d.act, buf)


cdef void _dw_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Units [lo, hi) row by row: (image, block) planes with by_blocks, else (image, row)
    pairs, every block of each, plane by plane."""
    cdef const DwLayer* d = <const DwLayer*>job
    cdef Py_ssize_t Cb = d.Cb, OH = d.OH, taps = d.kh * d.kw, u, n, cb, oy, y0, y1
    cdef Py_ssize_t plane_in = d.H * d.W * CE_NC_B
    if d.by_blocks:
        for u in range(lo, hi):
            cb = u % Cb
            for oy in range(OH):
                ce_nc_dw_row(d.x + u * plane_in, d.H, d.W, d.OW, <int>oy, d.sh, d.sw, d.pt,
                             d.pl, d.kh, d.kw, d.dh, d.dw, d.w + cb * taps * CE_NC_B,
                             d.bias + cb * CE_NC_B, d.out + (u * OH + oy) * d.OW * CE_NC_B,
                             d.act)
        return
    for n in range(lo // OH, (hi + OH - 1) // OH):
        y0 = max(lo - n * OH, 0)
        y1 = min(hi - n * OH, OH)
        for cb in range(Cb):
            for oy in range(y0, y1):
                ce_nc_dw_row(d.x + (n * Cb + cb) * plane_in, d.H, d.W, d.OW, <int>oy, d.sh,
                             d.sw, d.pt, d.pl, d.kh, d.kw, d.dh, d.dw,
                             d.w + cb * taps * CE_NC_B, d.bias + cb * CE_NC_B,
                             d.out + ((n * Cb + cb) * OH + oy) * d.OW * CE_NC_B, d.act)


def depthwise_plane_scratch(int num_threads):
    """Floats of f32_depthwise_blocked's scratch for small planes at num_threads."""
    return max(1, num_threads) * CE_NC_DW_PLANE_VECS * CE_NC_B + 16   # + 64-byte alignment


def depthwise_plane_fits(int H, int W, int OW, int sw, int kh, int kw, int dw):
    """Whether f32_depthwise_blocked takes each block's plane whole, through a zero-bordered
    copy (kernels 3 wide or more, stride 1 or 2, small planes: _nchwc_dw.h)."""
    return bool(ce_nc_dw_plane_fits(H, W, OW, sw, kh, kw, dw))


def f32_depthwise_blocked(x, w, bias, out, int sh, int sw, int pt, int pl, int dh, int dw,
                          ce_act_t act, int num_threads, bint by_blocks=False, bint planes=True,
                          scratch=None):
    """Depthwise convolution (multiplier 1) in blocks: w[Cb, kh, kw, B] holds channel
    cb*B + j's tap (u, v) at [cb, u, v, j] (zero beyond C); bias: Cb * B values. Output
    sizes are the caller's (engine.shapes); padding beyond pt / pl is implied by them.

    The threads take ranges of (image, row) pairs, every block of each: the pixels a pointwise
    layer next to it, split by pixels, also gives a thread; or with by_blocks ranges of
    (image, block) planes, whole. Either way it goes plane by plane and row by row within a plane
    (row by row across the blocks jumped between planes: 2.8 against 1.9 ms for 144 channels
    on 56x56 at batch 8, one thread). Small planes (depthwise_plane_fits) are work items of
    their own, unless planes is False; each thread then copies them into its part of scratch
    (depthwise_plane_scratch(num_threads) floats; allocated here if None: a buffer the caller
    keeps is already present in memory and cache)."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array wv = f32_arg(w, 4, "w", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    cdef f32_array scratchv
    if scratch is not None:
        scratchv = f32_arg(scratch, 1, "scratch", True)
    check_act(act)
    check_same_blocks(xv.shape, outv.shape)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t OH = outv.shape[2], OW = outv.shape[3]
    if wv.shape[0] != Cb or wv.shape[3] != CE_NC_B or wv.shape[1] < 1 or wv.shape[2] < 1:
        raise ValueError(f"w must have shape ({Cb}, kh, kw, {CE_NC_B}), got {w.shape}")
    check_window(Cb, biasv.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    cdef int kh = <int>wv.shape[1], kw = <int>wv.shape[2]
    if N == 0 or Cb == 0 or OH <= 0 or OW <= 0:
        return
    cdef const float* xp = xv.p
    cdef float* op = outv.p
    cdef const float* wp = wv.p
    cdef const float* bp = biasv.p
    cdef Py_ssize_t per_thread = CE_NC_DW_PLANE_VECS * CE_NC_B
    cdef DwLayer d = DwLayer(xp, H, W, OH, OW, sh, sw, pt, pl, kh, kw, dh, dw, wp, bp, op, act,
                             Cb, by_blocks, NULL, per_thread)
    cdef float* bufs = NULL
    cdef float* owned = NULL
    if planes and ce_nc_dw_plane_fits(<int>H, <int>W, <int>OW, sw, kh, kw, dw):
        num_threads = <int>max(1, num_threads)
        # each thread's zero-bordered plane: 64 or 128 KB, too much for the stacks of a
        # service's threads
        if scratch is not None and scratchv.shape[0] >= num_threads * per_thread + 16:
            bufs = scratchv.p
        else:
            owned = bufs = <float*>malloc((num_threads * per_thread + 16) * sizeof(float))
            if bufs == NULL:
                raise MemoryError("no memory for the depthwise planes' buffers")
        # from a 64-byte boundary: vectors split across cache lines cost 20-30%
        d.bufs = bufs + (16 - (<size_t>bufs // sizeof(float)) % 16) % 16
        try:
            with nogil:
                ce_pool_for(num_threads, N * Cb, _dw_planes, &d)
        finally:
            free(owned)
        return
    # units of (image, row) pairs, or (image, block) planes
    with nogil:
        ce_pool_for(num_threads, N * Cb if by_blocks else N * OH, _dw_rows, &d)


cdef extern from "_nchwc_grouped.h":
    void ce_nc_group_row(const float *x, int H, int W, int OW, int oy, int sh, int sw, int pt,
                         int pl, int kh, int kw, int dh, int dw, const float *w, int g,
                         const float *bias, float *out, ce_act_t act) nogil


ctypedef struct GroupJob:
    const float* x
    Py_ssize_t Cb, H, W, OH, OW
    int sh, sw, pt, pl, kh, kw, dh, dw
    const float* w
    int g
    const float* bias
    float* out
    ce_act_t act


cdef void _group_rows(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Items [lo, hi): output rows of one block, ordered (image, row, block)."""
    cdef GroupJob* j = <GroupJob*>job
    cdef Py_ssize_t wblock = j.kh * j.kw * j.g * CE_NC_B, it, n, oy, cb
    for it in range(lo, hi):
        cb = it % j.Cb
        oy = (it // j.Cb) % j.OH
        n = it // (j.Cb * j.OH)
        ce_nc_group_row(j.x + (n * j.Cb + cb) * j.H * j.W * CE_NC_B, <int>j.H, <int>j.W,
                        <int>j.OW, <int>oy, j.sh, j.sw, j.pt, j.pl, j.kh, j.kw, j.dh, j.dw,
                        j.w + cb * wblock, j.g, j.bias + cb * CE_NC_B,
                        j.out + ((n * j.Cb + cb) * j.OH + oy) * j.OW * CE_NC_B, j.act)


def f32_grouped_blocked(x, w, bias, out, int sh, int sw, int pt, int pl, int dh, int dw,
                        ce_act_t act, int num_threads):
    """A grouped convolution whose groups lie within blocks (B / g groups of g input and g
    output channels to a block, g dividing B): w[Cb, kh, kw, g, B] holds, for block cb and
    tap (u, v), each output lane's weight for its group's input channel j (engine/ops/
    blocked.py pack_grouped); bias: Cb * B values. Output sizes are the caller's. Work items
    are output rows of one block, ordered (image, row, block)."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array wv = f32_arg(w, 5, "w", False)
    cdef f32_array biasv = f32_arg(bias, 1, "bias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    check_act(act)
    check_same_blocks(xv.shape, outv.shape)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t OH = outv.shape[2], OW = outv.shape[3]
    if (wv.shape[0] != Cb or wv.shape[3] < 1 or CE_NC_B % wv.shape[3] or wv.shape[4] != CE_NC_B
            or wv.shape[1] < 1 or wv.shape[2] < 1):
        raise ValueError(f"w must have shape ({Cb}, kh, kw, g, {CE_NC_B}) with g dividing "
                         f"{CE_NC_B}, got {w.shape}")
    check_window(Cb, biasv.shape[0], H, W, OH, OW, sh, sw, pt, pl, dh, dw)
    cdef int kh = <int>wv.shape[1], kw = <int>wv.shape[2], g = <int>wv.shape[3]
    if N == 0 or Cb == 0 or OH <= 0 or OW <= 0:
        return
    cdef GroupJob j = GroupJob(xv.p, Cb, H, W, OH, OW, sh, sw, pt, pl, kh, kw, dh,
                               dw, wv.p, g, biasv.p, outv.p, act)
    with nogil:
        ce_pool_for(num_threads, N * OH * Cb, _group_rows, &j)


cdef extern from "_nchwc_expand.h":
    ctypedef struct ce_nc_xdw_job:
        const float *x
        int Cb, tail
        const float *wp
        const float *bp
        ce_act_t pact
        int Kb
        int H, W, OH, OW, sh, sw, pt, pl, kh, kw
        const float *wd
        const float *bd
        ce_act_t dact
        float *out
        int cols
        float *bufs
        Py_ssize_t per_thread
    int ce_nc_xdw_cols(int W, int OW, int sw, int kw, int pl) nogil
    Py_ssize_t ce_nc_xdw_ring_floats(int Kb, int kh, int cols) nogil
    void ce_nc_xdw_units(const ce_nc_xdw_job *j, float *ring, Py_ssize_t lo,
                         Py_ssize_t hi) nogil


cdef void _xdw_units(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const ce_nc_xdw_job* j = <const ce_nc_xdw_job*>job
    ce_nc_xdw_units(j, j.bufs + thread * j.per_thread, lo, hi)


def expand_depthwise_scratch(Py_ssize_t expanded_blocks, int W, int OW, int sw, int kh, int kw,
                             int pl, int num_threads):
    """Floats of f32_expand_depthwise_blocked's scratch: each thread's ring of kh rows of
    every expanded block, from a 64-byte boundary."""
    cdef Py_ssize_t ring = ce_nc_xdw_ring_floats(<int>expanded_blocks, kh,
                                                 ce_nc_xdw_cols(W, OW, sw, kw, pl))
    ring = (ring + 15) // 16 * 16
    return max(1, num_threads) * ring + 16


def f32_expand_depthwise_blocked(x, wpack, pbias, ce_act_t pact, Py_ssize_t channels, wd, dbias,
                                 out, int sh, int sw, int pt, int pl, ce_act_t dact,
                                 int num_threads, scratch=None):
    """A pointwise layer (wpack, pbias, pact: as nchwc.f32_pointwise_blocked's, ``channels``
    of x's real) and the depthwise layer that reads its output (wd[Kb, kh, kw, B], dbias,
    dact: as f32_depthwise_blocked's, stride sh x sw with sw 1 or 2, no dilation), in one
    pass: out = depthwise(pointwise(x)) without the expanded map (_nchwc_expand.h). The
    depthwise weights must be finite (the kernel reads the padding as zeros).

    The threads take one range of (image, output row) pairs each; a range expands the rows
    of its first window again. scratch: expand_depthwise_scratch(...) floats, or None to
    allocate them here."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array wpackv = f32_arg(wpack, 1, "wpack", False)
    cdef f32_array pbiasv = f32_arg(pbias, 1, "pbias", False)
    cdef f32_array wdv = f32_arg(wd, 4, "wd", False)
    cdef f32_array dbiasv = f32_arg(dbias, 1, "dbias", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    cdef f32_array scratchv
    if scratch is not None:
        scratchv = f32_arg(scratch, 1, "scratch", True)
    check_act(pact)
    check_act(dact)
    check_blocked_io(xv.shape, outv.shape)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Kb = outv.shape[1], OH = outv.shape[2], OW = outv.shape[3]
    check_pointwise_pack(Cb, Kb, wpackv.shape[0], pbiasv.shape[0], "wpack", "pbias")
    if wdv.shape[0] != Kb or wdv.shape[3] != CE_NC_B or not 1 <= wdv.shape[1] <= 16 \
            or wdv.shape[2] < 1:
        raise ValueError(f"wd must have shape ({Kb}, kh <= 16, kw, {CE_NC_B}), got "
                         f"{wd.shape}")
    if sw not in (1, 2):
        raise ValueError(f"sw must be 1 or 2, got {sw}")
    check_window(Kb, dbiasv.shape[0], H, W, OH, OW, sh, sw, pt, pl, 1, 1)
    if N == 0 or Kb == 0 or OH <= 0 or OW <= 0:
        return
    channels = real_channels(Cb, channels)
    cdef int kh = <int>wdv.shape[1], kw = <int>wdv.shape[2]
    cdef int cols = ce_nc_xdw_cols(<int>W, <int>OW, sw, kw, pl)
    cdef Py_ssize_t ring = (ce_nc_xdw_ring_floats(<int>Kb, kh, cols) + 15) // 16 * 16
    cdef int nt = <int>min(max(1, num_threads), N * OH)
    cdef Py_ssize_t need = nt * ring + 16
    cdef float* bufs = NULL
    cdef float* owned = NULL
    if scratch is not None and scratchv.shape[0] >= need:
        bufs = scratchv.p
    else:
        owned = bufs = <float*>malloc(need * sizeof(float))
        if bufs == NULL:
            raise MemoryError("no memory for the expanded rows' rings")
    cdef ce_nc_xdw_job j
    j.x = xv.p
    j.Cb = <int>Cb
    j.tail = <int>(channels - (Cb - 1) * CE_NC_B)
    j.wp = wpackv.p
    j.bp = pbiasv.p
    j.pact = pact
    j.Kb = <int>Kb
    j.H, j.W, j.OH, j.OW = <int>H, <int>W, <int>OH, <int>OW
    j.sh, j.sw, j.pt, j.pl, j.kh, j.kw = sh, sw, pt, pl, kh, kw
    j.wd = wdv.p
    j.bd = dbiasv.p
    j.dact = dact
    j.out = outv.p
    j.cols = cols
    # from a 64-byte boundary: vectors split across cache lines cost 20-30%
    j.bufs = bufs + (16 - (<size_t>bufs // sizeof(float)) % 16) % 16
    j.per_thread = ring
    try:
        with nogil:
            ce_pool_run(nt, N * OH, nt, _xdw_units, &j)
    finally:
        free(owned)
