# Winograd convolution for 3x3, stride-1 kernels of any dilation: F(2x2,3x3), F(4x4,3x3) and
# F(6x6,3x3).
#
# A tile of m x m outputs (m = 2, 4 or 6) needs an (m+2) x (m+2) input patch d. With the
# transformed weights U = G g G^T (prepared once by engine/ops/winograd.py, or made per call
# block by block from the weights themselves: gemm_phase_taps) the tile is
#     Y = A^T [ U (.) (B^T d B) ] A,
# and over all channels the element-wise products become E = (m+2)^2 independent GEMMs
#     M[e][k, t] = sum_c U[e][k, c] V[e][c, t],        V[e][c, t] = (B^T d_{c,t} B)[e].
#
# Dilation by space-to-batch, folded into the addressing: a rate-(dh, dw) convolution of the
# zero-padded input equals ordinary convolutions of its phase sub-images xpad[a::dh, b::dw]
# (0 <= a < dh, 0 <= b < dw). A tile is (image n, phases a and b, tile row ti, tile column tj);
# its patch is read from padded rows a + dh*(m*ti + r) and columns b + dw*(m*tj + c), and its
# outputs go to y[n, k, a + dh*(m*ti + r), b + dw*(m*tj + c)]. No sub-image is ever built.
#
# This file holds the padding copy, the three phases of a block of tiles and the entry point;
# the per-tile transforms (input rows, output blocks, their scatter) are _winograd_tiles.pxi.
#
# Layout of the padded copy. The input is copied once per call into a zero-padded buffer so the
# transform loops have no bounds checks. Rows keep their order (hbuf of them); within a row the
# columns are grouped by residue q = (column offset / dw) mod m, then by phase b:
#     element (q*dw + b)*J + j  <->  padded column b + dw*(m*j + q),     j < J,
# with J = (most tiles of any phase) + 1 for every phase. Column c of tile tj of phase b is then
# element (c % m)*dw*J + (b*J + tj) + c // m: for the "position" u = b*J + tj the loads of
# consecutive positions are contiguous, across the phases too, so one vector loop runs over a
# whole row of tiles of every column phase (a "tile row" below). The J - tw_b positions at the
# end of each phase are not tiles; their lanes are computed and dropped. This is the copy that
# padding makes anyway, in another index order; nothing else is copied.
#
# V and M list the tiles of a block tile row after tile row, phase after phase (tile row r of a
# block starts at tile t0 = rows[r, ROW_T0], phase b at t0 + phase_start[b]), without gaps.
#
# Work split, all ranges of outputs that the threads of the engine's pool take in pieces
# (kernels/_pool.h), independent of the thread count:
#   padding copy       over (image, channel) planes
#   input transform    over input channels, writes V for one block of tiles
#   GEMMs              over (group, e, chunk of U's rows, group of tile panels), by the packed
#                      micro-kernel of _packed_gemm.h (U packed once by the plan); with U made
#                      per call, over (group, tile column, chunk of rows, group of panels)
#   output transform   over output channels: A^T M A, bias, activation, only in-range outputs
# so every value is computed by the same instructions for any count: bit-identical results.
# The tables come from engine/ops/winograd.py, which checks that every address they imply lies
# inside the buffers used here.
#
# NaN and infinity. The transforms mix a tile's whole patch: B^T d B takes differences, so one
# +Inf in d gives Inf - Inf = NaN in some elements of V, and A^T M A spreads those to every output
# of the tile, including outputs whose own 3x3 window never sees the Inf. The direct sum puts a
# non-finite value only in the outputs whose window holds one. So the padding copy, which reads
# every input value anyway, first tests its plane for a non-finite value (an integer OR over the
# exponent bits, vectorised; the copy then reads the plane from L1); a plane that has one is
# copied with those values replaced by zeros, and the kernel returns how many planes had one.
# Every output is then the finite convolution of that zeroed input, and
# f32_conv2d_fix_nonfinite (at the end; the fft path uses it too) gives the outputs whose window
# holds a non-finite value the direct sum's NaN or infinity. Weights are assumed finite: the
# fix-up adds the non-finite inputs' products alone, which an infinite weight would not cover.
from libc.string cimport memset, memcpy

import numpy as np

from _epilogue cimport ACT_RELU6, activate, ce_act_row, ce_act_t, check_act, no_act
from _nonfinite cimport any_nonfinite, zero_nonfinite

from _packed_gemm cimport CE_PG_MR, CE_PG_NR, ce_pg_block, ce_pg_pack_panels
from _pool cimport CE_POOL_MAX_THREADS, ce_pool_attach, ce_pool_for

cdef extern from "_winograd_rows.h" nogil:
    int CE_WR_COMPRESS
    void ce_wr_copy_tiles(const float* buf, Py_ssize_t bstride, Py_ssize_t E,
                          unsigned long long mask, float* dst, Py_ssize_t es)
    void ce_wr_interleave(const float* src, Py_ssize_t sstride, int m, Py_ssize_t n, float* dst,
                          float b, ce_act_t act)
cdef extern from "_winograd_taps.h" nogil:
    void ce_wt_column(const float* w, Py_ssize_t n, const float* G, int a, int j, float* u)
from _scratch cimport check_scratch

ce_pool_attach()

cdef enum:
    # Tiles per inner loop: the loop writes a small local buffer (which gcc knows aliases
    # nothing, so it vectorises without run-time overlap checks) that is then copied out.
    # 32 tiles = two AVX-512 vectors; 36 * 32 floats stay in L1.
    STRIP = 32
    # The strip loops run over whole vectors of LANES tiles (the extra lanes read data that
    # exists, the slack after each buffer included, and are dropped): a 28-tile row would
    # otherwise spend half its time in gcc's 8-wide and scalar epilogues.
    LANES = 16
    # Columns of the phase_cols table: the largest tile side
    MAX_M = 6

# Columns of the tile-row table (engine/ops/winograd.py builds it in this order).
cdef enum:
    ROW_N = 0      # image
    ROW_A = 1      # row phase
    ROW_TI = 2     # tile row within the phase sub-image
    ROW_T0 = 3     # its first tile within the block
    ROW_NR = 4     # its output rows that exist (<= m)
    ROW_COLS = 5


cdef inline Py_ssize_t ceil_div_nonneg(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for b > 0, clamped at 0 for negative a
    if a <= 0:
        return 0
    return (a + b - 1) // b


cdef inline Py_ssize_t whole_vectors(Py_ssize_t n) noexcept nogil:
    return (n + LANES - 1) // LANES * LANES


include "_winograd_tiles.pxi"


# ---- padding copy ----------------------------------------------------------------------------

cdef bint pad_plane(const float* src, Py_ssize_t H, Py_ssize_t W, float* dst, Py_ssize_t hbuf,
                    Py_ssize_t J, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dw, Py_ssize_t m,
                    const Py_ssize_t* colmap, Py_ssize_t wused, bint check) noexcept nogil:
    """One channel into the padded, residue/phase-ordered layout (see the header): source
    column col of a row goes to element colmap[col] of its padded row, for col < wused (the
    columns further right are read by no tile). With check, the NaNs and infinities of the
    plane are zeros in the copy, and the return value says whether it had any."""
    cdef Py_ssize_t lrow = m * dw * J, R, sr, j, jlo = 0, jhi = 0, c
    cdef float* drow
    cdef const float* srow
    cdef const float* s
    if dw == 1:
        # tiles j in [jlo, jhi) read only source columns: m*j + q - pl in [0, W) for all q
        jlo = min(ceil_div_nonneg(pl, m), J)
        jhi = max(min((W + pl) // m, J), jlo)
    for R in range(hbuf):
        drow = dst + R * lrow
        memset(drow, 0, lrow * sizeof(float))
        sr = R - pt
        if sr < 0 or sr >= H:
            continue
        srow = src + sr * W
        if dw == 1:
            s = srow - pl
            if m == 2:      # de-interleave with a constant stride: vectorised
                for j in range(jlo, jhi):
                    drow[j] = s[2 * j]
                    drow[J + j] = s[2 * j + 1]
            elif m == 4:
                for j in range(jlo, jhi):
                    drow[j] = s[4 * j]
                    drow[J + j] = s[4 * j + 1]
                    drow[2 * J + j] = s[4 * j + 2]
                    drow[3 * J + j] = s[4 * j + 3]
            else:
                for j in range(jlo, jhi):
                    drow[j] = s[6 * j]
                    drow[J + j] = s[6 * j + 1]
                    drow[2 * J + j] = s[6 * j + 2]
                    drow[3 * J + j] = s[6 * j + 3]
                    drow[4 * J + j] = s[6 * j + 4]
                    drow[5 * J + j] = s[6 * j + 5]
            for c in range(min(m * jlo - pl, wused)):          # columns left of them ...
                drow[colmap[c]] = srow[c]
            for c in range(max(m * jhi - pl, 0), wused):       # ... and right of them
                drow[colmap[c]] = srow[c]
        else:
            for c in range(wused):
                drow[colmap[c]] = srow[c]
    # the copy just written, still in L1, in one run (row by row the loop's set-up cost as much
    # as its vectors; a pass over the source before the copy cost 0.5-2% of a 64->64 56x56 layer)
    if check and any_nonfinite(dst, hbuf * lrow):
        zero_nonfinite(dst, hbuf * lrow)
        return True
    return False


# ---- the kernel ------------------------------------------------------------------------------

cdef inline Py_ssize_t padded(Py_ssize_t n) noexcept nogil:
    # buffers inside the workspace start at multiples of 16 floats: 64-byte aligned when it is
    return (n + 15) // 16 * 16


def workspace_floats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t K, Py_ssize_t hbuf, Py_ssize_t J,
                     Py_ssize_t dw, Py_ssize_t m, Py_ssize_t max_tiles):
    """Floats of scratch f32_conv3x3_winograd needs: the padded input, V and M of one block,
    and a STRIP after the input and M that the unused lanes of the last strips may read."""
    cdef Py_ssize_t E = (m + 2) * (m + 2)
    return (padded(N * C * hbuf * m * dw * J + STRIP) + padded(E * C * (max_tiles + STRIP))
            + E * K * max_tiles + STRIP)


def taps_panel_floats(int threads, Py_ssize_t cg, Py_ssize_t group_panels, int m):
    """Floats of f32_conv3x3_winograd's panels with the weights transformed per call: per
    thread, group_panels panels of tiles and one U block (Cg x MR) for each of the m + 2
    elements of one column of the tile (see gemm_phase_taps)."""
    return max(1, threads) * padded((m + 2) * (group_panels * cg * CE_PG_NR + cg * CE_PG_MR))


def f32_conv3x3_winograd(const float[:, :, :, ::1] x, const float[::1] upack, int groups,
                         const float[::1] bias, float[:, :, :, ::1] out,
                         const Py_ssize_t[:, ::1] rows, const Py_ssize_t[:, ::1] blocks,
                         const Py_ssize_t[::1] phase_tiles, const Py_ssize_t[::1] phase_start,
                         const Py_ssize_t[:, ::1] phase_cols, const Py_ssize_t[::1] colmap,
                         int m, int J, int hbuf, int max_tiles, int pt, int pl, int dh, int dw,
                         float[::1] work, float[::1] panels, int mchunk, int group_panels,
                         ce_act_t act, int num_threads, bint check_nonfinite=True,
                         const float[:, ::1] G=None):
    """out = conv3x3(x) by Winograd F(m x m, 3x3), stride 1, dilation (dh, dw).

    Returns the number of (image, channel) planes of x that hold a NaN or an infinity; their
    non-finite values were taken as zeros, and the caller gives the outputs that read them
    their direct-sum values with f32_conv2d_fix_nonfinite. check_nonfinite=False skips the test
    (for benchmarks only: a non-finite input then spreads over whole tiles).

    upack: the transformed weights U[groups, (m+2)^2, K/groups, C/groups] packed for the
    micro-kernel as [groups * (m+2)^2][ceil(Kg/MR)][Cg][MR]. rows[:, ROW_COLS]: the tile
    rows; blocks[:, 3]: (first row, end row, tiles) per block of at most max_tiles tiles;
    phase_tiles[b], phase_start[b]: tiles of column phase b in every tile row and the first of
    them; phase_cols[b, c]: how many of them have an output column c (c < m); J, hbuf, colmap:
    the padded layout (see the header and pad_plane). work: scratch of workspace_floats(...)
    floats, reused by the caller across calls (fresh multi-MB buffers would cost a page fault
    per 4 KB on every call). mchunk (a multiple of MR) and group_panels: rows of U[g, e] and
    panels of tiles per GEMM work item; panels: num_threads * group_panels * Cg * NR floats,
    64-byte aligned, for the items' panel copies.

    Weights transformed per call: with G (the (m+2) x 3 matrix of U = G g G^T) given, upack
    holds the weights themselves, packed as [groups][ceil(Kg/MR)][9][Cg][MR] (tap = 3 * kernel
    row + kernel column), and each GEMM work item computes the U blocks it multiplies, in
    float32 (see gemm_phase_taps); panels then holds taps_panel_floats(...) floats per thread.
    """
    check_act(act)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t E = (m + 2) * (m + 2)
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    if m not in (2, 4, 6):
        raise ValueError(f"m must be 2, 4 or 6, got {m}")
    if groups < 1 or C % groups or K % groups:
        raise ValueError(f"groups ({groups}) must divide the {C} input and {K} output channels")
    cdef Py_ssize_t Kg = K // groups, Cg = C // groups
    cdef Py_ssize_t nmb = (Kg + MR - 1) // MR
    cdef Py_ssize_t nblocks = blocks.shape[0]
    cdef bint taps = G is not None
    cdef Py_ssize_t per_weight = 9 if taps else E
    if taps and (G.shape[0] != m + 2 or G.shape[1] != 3):
        raise ValueError(f"G must have shape ({m + 2}, 3), got ({G.shape[0]}, {G.shape[1]})")
    if upack.shape[0] != groups * per_weight * nmb * Cg * MR:
        raise ValueError(f"upack must hold {groups * per_weight * nmb * Cg * MR} floats, got "
                         f"{upack.shape[0]}")
    if out.shape[0] != N or bias.shape[0] != K:
        raise ValueError("x, bias and out shapes do not agree")
    if rows.shape[1] != ROW_COLS or blocks.shape[1] != 3 or phase_tiles.shape[0] != dw \
            or phase_start.shape[0] != dw or colmap.shape[0] > W \
            or phase_cols.shape[0] != dw or phase_cols.shape[1] != MAX_M:
        raise ValueError("malformed tile tables")
    if rows.shape[0] == 0 or nblocks == 0 or N == 0 or C == 0 or K == 0:
        return 0
    if work.shape[0] < workspace_floats(N, C, K, hbuf, J, dw, m, max_tiles):
        raise ValueError(f"work must hold {workspace_floats(N, C, K, hbuf, J, dw, m, max_tiles)}"
                         f" floats, got {work.shape[0]}")

    cdef Py_ssize_t lrow = <Py_ssize_t>m * dw * J, plane = hbuf * lrow
    cdef Py_ssize_t ntiles = phase_start[dw - 1] + phase_tiles[dw - 1]   # per tile row
    cdef float* xpad = &work[0]
    # V rows (one per element and channel) hold a block's tiles plus STRIP floats of slack for
    # the input transform's whole-strip copies; the GEMMs read only the first T of each row
    cdef float* V = xpad + padded(N * C * plane + STRIP)
    cdef float* M = V + padded(E * C * (<Py_ssize_t>max_tiles + STRIP))
    cdef TileTables tt
    tt.rows = &rows[0, 0]
    tt.tw = &phase_tiles[0]
    tt.ts = &phase_start[0]
    tt.tc = &phase_cols[0, 0]
    tt.ntiles = ntiles
    cdef const Py_ssize_t* cmap = &colmap[0] if colmap.shape[0] else NULL
    cdef const float* xptr = &x[0, 0, 0, 0]
    if mchunk < MR or mchunk % MR or group_panels < 1:
        raise ValueError(f"mchunk must be a positive multiple of {MR} and group_panels "
                         f"positive, got {mchunk} and {group_panels}")
    cdef GemmShape gs
    gs.groups, gs.E, gs.K, gs.Kg, gs.C, gs.Cg, gs.nmb = groups, E, K, Kg, C, Cg, nmb
    gs.mchunk, gs.GP = mchunk, group_panels
    gs.per_thread = (taps_panel_floats(1, Cg, group_panels, m) if taps
                     else group_panels * Cg * NR)
    check_scratch(panels, max(1, num_threads) * gs.per_thread, "panels")
    cdef const float* gptr = &G[0, 0] if taps else NULL
    cdef Py_ssize_t blk, it, r0, r1, T
    cdef Py_ssize_t nonfinite[CE_POOL_MAX_THREADS]
    cdef PadJob pj = PadJob(xptr, H, W, xpad, plane, hbuf, J, pt, pl, dw, m, cmap,
                            colmap.shape[0], check_nonfinite, &nonfinite[0])
    memset(nonfinite, 0, sizeof(nonfinite))
    with nogil:
        memset(xpad + N * C * plane, 0, STRIP * sizeof(float))
        memset(M + E * K * <Py_ssize_t>max_tiles, 0, STRIP * sizeof(float))
        ce_pool_for(num_threads, N * C, _pad_planes, &pj)
        for blk in range(nblocks):
            r0, r1, T = blocks[blk, 0], blocks[blk, 1], blocks[blk, 2]
            input_phase(xpad, plane, lrow, C, m, dh, dw, J, &tt, r0, r1, T, V, num_threads)
            if taps:
                gemm_phase_taps(&upack[0], gptr, m + 2, V, T + STRIP, T, M, &gs, &panels[0],
                                num_threads)
            else:
                gemm_phase(&upack[0], V, T + STRIP, T, M, &gs, &panels[0], num_threads)
            output_phase(M, T, K, m, &tt, r0, &out[0, 0, 0, 0], OH, OW, dh, dw, &bias[0], act,
                         num_threads)
    for it in range(1, CE_POOL_MAX_THREADS):
        nonfinite[0] += nonfinite[it]
    return nonfinite[0]


ctypedef struct PadJob:
    const float* x
    Py_ssize_t H, W
    float* xpad
    Py_ssize_t plane, hbuf, J, pt, pl, dw, m
    const Py_ssize_t* colmap
    Py_ssize_t wused
    bint check
    Py_ssize_t* nonfinite       # per thread: planes with a NaN or infinity


cdef void _pad_planes(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """(image, channel) planes [lo, hi) into the padded layout."""
    cdef PadJob* j = <PadJob*>job
    cdef Py_ssize_t it
    for it in range(lo, hi):
        j.nonfinite[thread] += pad_plane(j.x + it * j.H * j.W, j.H, j.W, j.xpad + it * j.plane,
                                         j.hbuf, j.J, j.pt, j.pl, j.dw, j.m, j.colmap, j.wused,
                                         j.check)


# ---- The three phases of one block of tiles --------------------------------------------------

cdef struct TileTables:
    const Py_ssize_t* rows      # the tile rows, ROW_COLS values each
    const Py_ssize_t* tw        # tiles of each column phase per tile row
    const Py_ssize_t* ts        # the first tile of each column phase
    const Py_ssize_t* tc        # per phase, how many tiles have an output column c
    Py_ssize_t ntiles           # tiles per tile row


cdef struct GemmShape:
    Py_ssize_t groups, E, K, Kg, C, Cg, nmb, mchunk, GP, per_thread


cdef void input_phase(const float* xpad, Py_ssize_t plane, Py_ssize_t lrow, Py_ssize_t C, int m,
                      int dh, int dw, int J, const TileTables* tt, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t T, float* V, int num_threads) noexcept nogil:
    """V[e][c, t] for the tile rows [r0, r1): each channel's rows of tiles, transformed, one
    thread per channel (its V rows are its own); rows of V are T + STRIP floats apart."""
    cdef InputJob j = InputJob(xpad, plane, lrow, C, m, dh, dw, J, tt, r0, r1, T, V)
    ce_pool_for(num_threads, C, _input_channels, &j)


ctypedef struct InputJob:
    const float* xpad
    Py_ssize_t plane, lrow, C
    int m, dh, dw, J
    const TileTables* tt
    Py_ssize_t r0, r1, T
    float* V


cdef void _input_channels(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef InputJob* jb = <InputJob*>job
    cdef const float* xpad = jb.xpad
    cdef Py_ssize_t plane = jb.plane, lrow = jb.lrow, C = jb.C, ldv = jb.T + STRIP, c, r
    cdef int m = jb.m, dh = jb.dh, dw = jb.dw, J = jb.J
    cdef const TileTables* tt = jb.tt
    cdef float* V = jb.V
    cdef const Py_ssize_t* row
    cdef const float* xrow
    for c in range(lo, hi):
        for r in range(jb.r0, jb.r1):
            row = tt.rows + r * ROW_COLS
            xrow = xpad + (row[ROW_N] * C + c) * plane + (row[ROW_A] + dh * m * row[ROW_TI]) * lrow
            if m == 2:
                f23_input_row(xrow, dh * lrow, J, dw, tt.tw, tt.ts, V + c * ldv + row[ROW_T0],
                              C * ldv)
            elif m == 4:
                f43_input_row(xrow, dh * lrow, J, dw, tt.tw, tt.ts, V + c * ldv + row[ROW_T0],
                              C * ldv)
            else:
                f63_input_row(xrow, dh * lrow, J, dw, tt.tw, tt.ts, V + c * ldv + row[ROW_T0],
                              C * ldv)


cdef void gemm_phase(const float* uptr, const float* V, Py_ssize_t ldv, Py_ssize_t T, float* M,
                     const GemmShape* s, float* pbase, int num_threads) noexcept nogil:
    """M[e][g*Kg + k, t] = sum_c U[g, e][k, c] V[e][g*Cg + c, t]: work items of mchunk rows of
    U by GP panels of tiles, each packing its panels into its thread's part of pbase."""
    cdef GemmJob j = GemmJob(uptr, NULL, 0, V, ldv, T, M, s, pbase)
    cdef Py_ssize_t npanels = (T + CE_PG_NR - 1) // CE_PG_NR
    cdef Py_ssize_t nchunks = (s.Kg + s.mchunk - 1) // s.mchunk
    ce_pool_for(num_threads, s.groups * s.E * nchunks * ((npanels + s.GP - 1) // s.GP),
                _gemm_items, &j)


ctypedef struct GemmJob:
    const float* w              # U packed, or with G the weights' taps
    const float* G
    Py_ssize_t a
    const float* V
    Py_ssize_t ldv, T
    float* M
    const GemmShape* s
    float* pbase


cdef void _gemm_items(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef GemmJob* jb = <GemmJob*>job
    cdef const GemmShape* s = jb.s
    cdef const float* uptr = jb.w
    cdef const float* V = jb.V
    cdef float* M = jb.M
    cdef Py_ssize_t ldv = jb.ldv, T = jb.T
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    cdef Py_ssize_t npanels = (T + NR - 1) // NR
    cdef Py_ssize_t npg = (npanels + s.GP - 1) // s.GP
    cdef Py_ssize_t nchunks = (s.Kg + s.mchunk - 1) // s.mchunk
    cdef Py_ssize_t it, pg, ch, e, g, pa, pb, p, p0, mb
    cdef float* buf = jb.pbase + thread * s.per_thread
    for it in range(lo, hi):
        pg = it % npg
        ch = (it // npg) % nchunks
        e = (it // (npg * nchunks)) % s.E
        g = it // (npg * nchunks * s.E)
        pa = pg * s.GP
        pb = min(npanels, pa + s.GP)
        ce_pg_pack_panels(V + (e * s.C + g * s.Cg) * ldv + pa * NR, ldv, <int>s.Cg,
                          <int>min(T - pa * NR, s.GP * NR), buf)
        for mb in range(ch * s.mchunk // MR, min(s.nmb, (ch + 1) * s.mchunk // MR)):
            for p in range(pa, pb):
                p0 = p * NR
                ce_pg_block(uptr + ((g * s.E + e) * s.nmb + mb) * s.Cg * MR,
                            buf + (p - pa) * s.Cg * NR, <int>s.Cg,
                            M + (e * s.K + g * s.Kg + mb * MR) * T + p0, T, NULL, NULL,
                            no_act(), <int>min(MR, s.Kg - mb * MR), <int>min(NR, T - p0))


cdef void gemm_phase_taps(const float* wtaps, const float* G, Py_ssize_t a, const float* V,
                          Py_ssize_t ldv, Py_ssize_t T, float* M, const GemmShape* s,
                          float* pbase, int num_threads) noexcept nogil:
    """gemm_phase with U computed from the weights as it is used: a work item takes one
    column j of the a x a tile elements, a chunk of U's row blocks and a group of tile panels;
    it copies the panels of the a elements (i, j), then for each row block makes the blocks
    U[i * a + j] of every i from the block's nine taps (_winograd_taps.h) and runs them over
    the panels. Per weight and tile column this is 3 (a + 3) multiply-adds against the GEMMs'
    2 a T (T tiles), and 9 floats read from memory instead of a^2."""
    cdef GemmJob jb = GemmJob(wtaps, G, a, V, ldv, T, M, s, pbase)
    cdef Py_ssize_t npanels = (T + CE_PG_NR - 1) // CE_PG_NR
    cdef Py_ssize_t nchunks = (s.Kg + s.mchunk - 1) // s.mchunk
    ce_pool_for(num_threads, s.groups * a * nchunks * ((npanels + s.GP - 1) // s.GP),
                _gemm_taps_items, &jb)


cdef void _gemm_taps_items(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef GemmJob* jb = <GemmJob*>job
    cdef const GemmShape* s = jb.s
    cdef const float* wtaps = jb.w
    cdef const float* G = jb.G
    cdef const float* V = jb.V
    cdef float* M = jb.M
    cdef Py_ssize_t a = jb.a, ldv = jb.ldv, T = jb.T
    cdef Py_ssize_t MR = CE_PG_MR, NR = CE_PG_NR
    cdef Py_ssize_t npanels = (T + NR - 1) // NR
    cdef Py_ssize_t npg = (npanels + s.GP - 1) // s.GP
    cdef Py_ssize_t nchunks = (s.Kg + s.mchunk - 1) // s.mchunk
    cdef Py_ssize_t blk = s.Cg * MR, pe = s.GP * s.Cg * NR
    cdef Py_ssize_t it, pg, ch, j, i, e, g, pa, pb, p, p0, mb
    cdef float* buf = jb.pbase + thread * s.per_thread
    cdef float* ub = buf + a * pe
    for it in range(lo, hi):
        pg = it % npg
        ch = (it // npg) % nchunks
        j = (it // (npg * nchunks)) % a
        g = it // (npg * nchunks * a)
        pa = pg * s.GP
        pb = min(npanels, pa + s.GP)
        for i in range(a):
            e = i * a + j
            ce_pg_pack_panels(V + (e * s.C + g * s.Cg) * ldv + pa * NR, ldv, <int>s.Cg,
                              <int>min(T - pa * NR, s.GP * NR), buf + i * pe)
        for mb in range(ch * s.mchunk // MR, min(s.nmb, (ch + 1) * s.mchunk // MR)):
            ce_wt_column(wtaps + (g * s.nmb + mb) * 9 * blk, blk, G, <int>a, <int>j, ub)
            for i in range(a):
                e = i * a + j
                for p in range(pa, pb):
                    p0 = p * NR
                    ce_pg_block(ub + i * blk, buf + i * pe + (p - pa) * s.Cg * NR, <int>s.Cg,
                                M + (e * s.K + g * s.Kg + mb * MR) * T + p0, T, NULL, NULL,
                                no_act(), <int>min(MR, s.Kg - mb * MR), <int>min(NR, T - p0))


cdef void output_phase(const float* M, Py_ssize_t T, Py_ssize_t K, int m, const TileTables* tt,
                       Py_ssize_t r0, float* yptr, Py_ssize_t OH, Py_ssize_t OW, int dh, int dw,
                       const float* bptr, ce_act_t act, int num_threads) noexcept nogil:
    """The output transform, bias and activation of the block's tiles, one thread per output
    channel."""
    cdef OutputJob j = OutputJob(M, T, K, m, tt, r0, yptr, OH, OW, dh, dw, bptr, act)
    ce_pool_for(num_threads, K, _output_channels, &j)


ctypedef struct OutputJob:
    const float* M
    Py_ssize_t T, K
    int m
    const TileTables* tt
    Py_ssize_t r0
    float* y
    Py_ssize_t OH, OW
    int dh, dw
    const float* bias
    ce_act_t act


cdef void _output_channels(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef OutputJob* jb = <OutputJob*>job
    cdef const float* M = jb.M
    cdef Py_ssize_t T = jb.T, K = jb.K, r0 = jb.r0, OH = jb.OH, OW = jb.OW, k
    cdef int m = jb.m, dh = jb.dh, dw = jb.dw
    cdef const TileTables* tt = jb.tt
    cdef float* yptr = jb.y
    cdef const float* bptr = jb.bias
    cdef ce_act_t act = jb.act
    for k in range(lo, hi):
        if m == 2:
            f23_output_block(M + k * T, K * T, T, tt.rows + r0 * ROW_COLS, tt.ntiles,
                             yptr + k * OH * OW, K * OH * OW, OW, dh, dw, tt.tw, tt.ts, tt.tc,
                             bptr[k], act)
        elif m == 4:
            f43_output_block(M + k * T, K * T, T, tt.rows + r0 * ROW_COLS, tt.ntiles,
                             yptr + k * OH * OW, K * OH * OW, OW, dh, dw, tt.tw, tt.ts, tt.tc,
                             bptr[k], act)
        else:
            f63_output_block(M + k * T, K * T, T, tt.rows + r0 * ROW_COLS, tt.ntiles,
                             yptr + k * OH * OW, K * OH * OW, OW, dh, dw, tt.tw, tt.ts, tt.tc,
                             bptr[k], act)

