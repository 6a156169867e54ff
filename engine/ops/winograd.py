"""Winograd convolution for 3x3 stride-1 layers, plain and dilated (space-to-batch).

F(m x m, 3x3) computes an m x m output tile from an (m+2) x (m+2) input patch d as
    Y = A^T [ (G g G^T) (.) (B^T d B) ] A
with (m+2)^2 multiplications instead of 9 m^2. The weights are transformed once, here, or for
large layers made block by block inside every call from the weights as given
(engine/dispatch/winograd.py); each call transforms the input, runs (m+2)^2 GEMMs per group
and transforms back, all in kernels/conv_winograd.pyx.

Dilation. A rate-(dh, dw) convolution of the zero-padded input xpad is, for every phase pair
(a, b) with 0 <= a < dh, 0 <= b < dw, an ordinary 3x3 convolution of the sub-image
xpad[a::dh, b::dw] that produces y[a::dh, b::dw]. So "dilated_s2b" (dilation > 1) is the same
kernel as "winograd_f23" (dilation 1) with different addressing: a tile is (image, a, b, tile
row, tile column) and its patch is read at padded rows a + dh*(m*ti + r), columns
b + dw*(m*tj + c). No sub-image is copied out and nothing is rearranged back: the
space-to-batch rearrangement lives only in the transforms' addressing (and in the column order
of the padded copy every call makes anyway), so a chain of same-rate layers pays nothing for it.

Tiles per phase are counted exactly: phase a along an axis of OH outputs holds ceil((OH - a)/dh)
output rows, hence ceil(that / m) tile rows; tiles of empty phases (OH < dh) do not exist.

NaN and infinity (IEEE semantics). The transforms mix a whole input patch into every output of
its tile, so one Inf or NaN would turn outputs that never read it into NaN (and +Inf into NaN
through Inf - Inf). The kernel finds the planes holding one during its padding copy, at no
measurable cost (bench/bench_ieee.py), and computes with those values taken as zeros;
engine/ops/nonfinite.py fix_nonfinite then gives exactly the outputs whose window reads one the value the direct sum
gives them. The weights are assumed finite.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from .nonfinite import fix_nonfinite
from .._cache import ShapeCache
from .._threads import resolve_threads
from ..dispatch.winograd import choose_winograd_weights
from ..shapes import phase_tiles
from .._kernels import conv_winograd, winograd_weights
from . import packed_gemm
from .workspace import populated_zeros, workspace

# Tiles are processed in blocks of whole tile rows; the blocks depend on the shapes alone, so
# the result does not depend on the thread count. A block aims at a V (input transforms) that
# stays in a 1 MB L2 next to the GEMM's packed panels, but has at least MIN_BLOCK_TILES tiles:
# each block reads all of U again, and narrower GEMMs lose speed. Measured on the
# five layers of BENCHMARKS.md (one thread, Zen 5): 64->64 56x56 runs ~20% faster in 4 blocks
# of 196 tiles than in one of 784 or in blocks of 56..126 tiles; the 128-, 256- and
# 512-channel layers run fastest unblocked (196, 49, 196 and 256 tiles).
BLOCK_V_BYTES = 768 << 10
MIN_BLOCK_TILES = 192
# Bound on V + M of one block (a block holds at least one tile row, whatever its size).
WORKSPACE_BYTES = 16 << 20
# Panels one work item copies when U is made per call: those of the m + 2 elements of a tile
# column, kept in L2 while every row block of U passes over them (bench/bench_dispatch.py
# winograd/weights).
TAPS_PANELS_BYTES = 1024 << 10

# Benchmarks only (bench/bench_ieee.py): False skips the non-finite test and fix-up, so that a
# NaN or infinity spreads over whole tiles, as before the test existed.
_CHECK_NONFINITE = True


# ---- transform matrices ------------------------------------------------------------------------
#
# F(2,3): the design's matrices (Lavin & Gray 2016, points 0, 1, -1, infinity).
F23_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
F23_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
F23_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def toom_cook(points, m: int, r: int = 3):
    """(A^T, G, B^T) of F(m, r) for the m + r - 2 finite interpolation points plus infinity.

    Derivation. Linear convolution s = a * g of a (m taps) with g (r taps) is the product of
    polynomials a(x) g(x) of degree n - 1, n = m + r - 1. Evaluate both at the finite points
    p_k and at infinity (the leading coefficient), multiply point-wise, interpolate back:
        s = C [ (E_m a) (.) (E_r g) ],   E_q[k] = (1, p_k, ..., p_k^(q-1)),  E_q[inf] = e_(q-1).
    Interpolation by Lagrange: with the node polynomials N_k(x) = prod_{j != k} (x - p_j) and
    N(x) = prod_j (x - p_j), a degree n-1 polynomial s is sum_k s(p_k) N_k(x) / N_k(p_k)
    + s(inf) N(x); so column k of C holds the coefficients of N_k / N_k(p_k) and the infinity
    column those of N. Correlation (what a convolution layer computes) is the transpose of this
    bilinear map with respect to a (Winograd's nesting):
        y = E_m^T [ (E_r g) (.) (C^T d) ],
    so A^T = E_m^T, G = E_r and B^T = C^T. The scale 1 / N_k(p_k) is moved from B^T into row k
    of G, which leaves B^T with the integer coefficients of N_k and N.
    For points (0, 1, -1, 2, -2) this gives the usual F(4,3) matrices (Lavin & Gray 2016):
        B^T rows: 4 0 -5 0 1 0 | 0 -4 -4 1 1 0 | 0 4 -4 -1 1 0 | 0 -2 -1 2 1 0 |
                  0 2 -1 -2 1 0 | 0 4 0 -5 0 1
        G rows:   1/4 0 0 | -1/6 -1/6 -1/6 | -1/6 1/6 -1/6 | 1/24 1/12 1/6 | 1/24 -1/12 1/6 |
                  0 0 1
        A^T rows: 1 1 1 1 1 0 | 0 1 -1 2 -2 0 | 0 1 1 4 4 0 | 0 1 -1 8 -8 1
    which is what kernels/conv_winograd.pyx hard-codes; tests check the identity numerically.
    """
    pts = [Fraction(p) for p in points]
    n = m + r - 1
    if len(pts) != n - 1 or len(set(pts)) != len(pts):
        raise ValueError(f"F({m},{r}) needs {n - 1} distinct finite points, got {points!r}")

    def poly_from_roots(roots):
        coef = [Fraction(1)]
        for root in roots:  # multiply by (x - root), coefficients in ascending powers
            coef = [Fraction(0)] + coef
            for i in range(len(coef) - 1):
                coef[i] -= root * coef[i + 1]
        return coef

    AT = [[p ** i for p in pts] + [Fraction(1 if i == m - 1 else 0)] for i in range(m)]
    G, BT = [], []
    for k, p in enumerate(pts):
        others = pts[:k] + pts[k + 1:]
        scale = Fraction(1)
        for q in others:
            scale *= p - q
        G.append([p ** i / scale for i in range(r)])
        BT.append(poly_from_roots(others) + [Fraction(0)])
    G.append([Fraction(1 if i == r - 1 else 0) for i in range(r)])
    BT.append(poly_from_roots(pts))
    as_array = lambda rows: np.array([[float(v) for v in row] for row in rows], np.float64)
    return as_array(AT), as_array(G), as_array(BT)


F43_AT, F43_G, F43_BT = toom_cook((0, 1, -1, 2, -2), m=4)


def _f63():
    # points (0, 1, -1, 2, -2, 1/2, -1/2). N_0(0) = -1, so toom_cook's row 0 of B^T (N_0's
    # coefficients) and of G (1 / N_0(0)) come out negated; negating both keeps their product
    # and gives the usual row 1 0 -21/4 0 21/4 0 -1 0 (what kernels/conv_winograd.pyx bt8 uses)
    AT, G, BT = toom_cook((0, 1, -1, 2, -2, 0.5, -0.5), m=6)
    G[0], BT[0] = -G[0], -BT[0]
    return AT, G, BT


F63_AT, F63_G, F63_BT = _f63()

TRANSFORMS = {2: (F23_AT, F23_G, F23_BT), 4: (F43_AT, F43_G, F43_BT),
              6: (F63_AT, F63_G, F63_BT)}
# Columns of TilePlan.phase_cols (kernels/conv_winograd.pyx MAX_M): the largest tile side.
MAX_TILE = 6


def packed_floats(k: int, cg: int, groups: int, m: int) -> int:
    """The length of pack_weights' array for K output and Cg input channels per group."""
    return groups * (m + 2) ** 2 * packed_gemm.packed_rows(k // groups) * cg


def pack_taps(w: np.ndarray, groups: int) -> np.ndarray:
    """The weights as given (float32) in the layout of the per-call transform
    (kernels/conv_winograd.pyx gemm_phase_taps): [groups][ceil(Kg/MR)][9][Cg][MR], rows beyond
    Kg zero."""
    k, cg = w.shape[:2]
    kg, mr = k // groups, packed_gemm.ROW_BLOCK
    nmb = -(-kg // mr)
    rows = np.zeros((groups, nmb * mr, cg, 9), np.float32)
    rows[:, :kg] = w.reshape(groups, kg, cg, 9)
    out = populated_zeros(groups * nmb * 9 * cg * mr)
    out.reshape(groups, nmb, 9, cg, mr)[...] = \
        rows.reshape(groups, nmb, mr, cg, 9).transpose(0, 1, 4, 3, 2)
    return out


def pack_weights(w: np.ndarray, groups: int, m: int, threads: int) -> np.ndarray:
    """U[g, e, Kg, Cg] = (G w[k, c] G^T)[e] in float64, rounded once, packed for the
    micro-kernel (packed_gemm.pack_rows' layout over the groups * (m+2)^2 matrices), made in
    one pass over the weights (float32 or float64)."""
    _, G, _ = TRANSFORMS[m]
    k, cg = w.shape[:2]
    out = populated_zeros(packed_floats(k, cg, groups, m))
    winograd_weights.f32_pack_winograd_weights(w, np.ascontiguousarray(G), groups,
                                            packed_gemm.ROW_BLOCK, out,
                                            threads)
    return out


# ---- tiling ----------------------------------------------------------------------------------

class TilePlan:
    """The addressing tables of one input shape (see kernels/conv_winograd.pyx).

    A tile row is (image n, row phase a, tile row ti) and holds the tiles of every column
    phase b: phase_tiles[b] of them, starting at phase_start[b]."""

    def __init__(self, batch, in_size, out_size, pads, dilation, m, c_in, c_out, groups):
        (h, w), (oh, ow), ((pt, _), (pl, _)), (dh, dw) = in_size, out_size, pads, dilation
        self.m, self.dh, self.dw = m, dh, dw
        th, tw = phase_tiles(oh, dh, m), phase_tiles(ow, dw, m)

        # column phases: tiles, first tile within a tile row, tiles whose output column
        # b + dw*(m*tj + c) exists (c < m)
        self.phase_tiles = np.array(tw, np.intp)
        self.phase_start = np.ascontiguousarray(np.cumsum(tw) - tw, dtype=np.intp)
        self.phase_cols = np.zeros((dw, MAX_TILE), np.intp)
        for b in range(dw):
            for c in range(m):
                self.phase_cols[b, c] = min(max(0, -(-(ow - b - dw * c) // (dw * m))), tw[b])
        per_row = int(sum(tw))

        # the padded copy: J positions per phase and residue (each tile's patch reaches one
        # position further than its own), hbuf rows (tile row ti of phase a reads padded rows
        # a + dh*(m*ti + r), r <= m + 1), and where each source column goes in a padded row;
        # the columns right of the last patch are dropped
        self.J = max(tw) + 1
        self.hbuf = max(a + dh * (m * t + 1) + 1 for a, t in enumerate(th) if t)
        pc = np.arange(w) + pl
        q, j = (pc // dw) % m, pc // dw // m
        self.colmap = np.ascontiguousarray(((q * dw + pc % dw) * self.J + j)[j < self.J],
                                           dtype=np.intp)

        # tile rows (n, a, ti) in blocks of equal shares of whole rows (see BLOCK_V_BYTES)
        rows = np.array([(n, a, ti) for n in range(batch) for a in range(dh)
                         for ti in range(th[a])], np.intp).reshape(-1, 3)
        e = (m + 2) ** 2
        target = max(BLOCK_V_BYTES // (4 * e * c_in), MIN_BLOCK_TILES)
        target = max(1, min(target, WORKSPACE_BYTES // (4 * e * (c_in + c_out))))
        nblocks = max(1, min(len(rows), round(len(rows) * per_row / target)))
        block_of = np.arange(len(rows)) * nblocks // len(rows)
        first = np.flatnonzero(np.diff(block_of, prepend=-1))
        end = np.append(first[1:], len(rows))
        t0 = (np.arange(len(rows)) - np.repeat(first, end - first)) * per_row
        # output rows a + dh*(m*ti + r) that exist, r < m
        nr = np.minimum(-(-(oh - rows[:, 1] - dh * m * rows[:, 2]) // dh), m)
        self.rows = np.ascontiguousarray(np.column_stack([rows, t0, nr]), dtype=np.intp)
        self.blocks = np.ascontiguousarray(
            np.column_stack([first, end, (end - first) * per_row]), dtype=np.intp)
        self.max_tiles = int(self.blocks[:, 2].max())

        self.mchunk, self.group_panels = packed_gemm.split(
            c_in // groups, c_out // groups, self.max_tiles)
        self.groups, self.cg, self.kg = groups, c_in // groups, c_out // groups
        self.weights = None     # Winograd.kernel_choice's answer, once asked
        self.packed = None      # (that form, its packed weights), for the calls
        self._taps_splits = {}
        self._check(h, oh, ow, pt)
        self.work_floats = conv_winograd.workspace_floats(
            batch, c_in, c_out, self.hbuf, self.J, dw, m, self.max_tiles)

    def taps_split(self, threads: int) -> tuple[int, int]:
        """(mchunk, group_panels) with the weights transformed per call: an item copies the
        panels of m + 2 elements (at most TAPS_PANELS_BYTES) and transforms the weights of
        its rows once per group of panels, so as few groups as fit; rows are split only where
        the items would not share evenly between the threads."""
        if threads not in self._taps_splits:
            a, mr, nr = self.m + 2, packed_gemm.ROW_BLOCK, packed_gemm.PANEL
            npanels = -(-self.max_tiles // nr)
            fit = max(1, TAPS_PANELS_BYTES // (4 * a * self.cg * nr))
            group_panels = -(-npanels // -(-npanels // fit))
            items = self.groups * a * -(-npanels // group_panels)
            chunks = 1 if items % threads == 0 or items >= 4 * threads \
                else -(-4 * threads // items)
            rows = -(-self.kg // mr)
            self._taps_splits[threads] = (-(-rows // min(chunks, rows)) * mr, group_panels)
        return self._taps_splits[threads]

    def _check(self, h, oh, ow, pt):
        """Every address the kernel derives from these tables lies inside its buffers."""
        m, dh, dw = self.m, self.dh, self.dw
        n, a, ti, t0, nr = self.rows.T
        tw, ts = self.phase_tiles, self.phase_start
        b = np.arange(dw)
        ok = (np.all(a + dh * (m * ti + m + 1) < self.hbuf)          # patch rows
              and np.all(a + dh * m * ti < oh)                       # first output row exists
              and np.all((nr >= 1) & (nr <= m) & (a + dh * (m * ti + nr - 1) < oh))
              and all(0 <= cnt <= tw[bb] and (cnt == 0 or bb + dw * (m * (cnt - 1) + c) < ow)
                      for bb in range(dw) for c, cnt in enumerate(self.phase_cols[bb, :m]))
              and np.all(tw + 1 <= self.J)                           # patch columns
              and np.all(b[tw > 0] + dw * m * (tw[tw > 0] - 1) < ow)  # first output column
              and np.all(ts + tw <= ts[-1] + tw[-1]) and self.hbuf >= pt + h
              and np.all(self.colmap < m * dw * self.J) and np.all(self.colmap >= 0))
        for r0, r1, tiles in self.blocks:
            ok = ok and 0 < tiles <= self.max_tiles and np.all(t0[r0:r1] + ts[-1] + tw[-1]
                                                                  <= tiles)
        if not ok:  # a bug in this module, never the caller's input
            raise RuntimeError("inconsistent Winograd tile tables")


class Winograd:
    """F(m x m, 3x3) Winograd for 3x3 stride-1 layers of any dilation and group count.

    Registered as "winograd_f23" (m = 2, dilation 1), "dilated_s2b" (m = 2, dilation > 1),
    "winograd_f43" (m = 4, any dilation) and "winograd_f63" (m = 6, any dilation). The transformed weights are made once and kept, or,
    for large layers with enough tiles per call, made block by block inside every call from
    the weights as given (engine/dispatch/winograd.py; ``weights=`` "stored" or "per_call"
    forces it). Weights must be finite; a NaN or infinity in the input gives NaN or infinity
    exactly where the direct sum does (see the module docstring).
    """

    tile = 2
    uses_blas = False
    choice_name = "weights"
    WEIGHTS = ("auto", "stored", "per_call")

    def __init__(self, layer, weights="auto"):
        if layer.kernel_size != (3, 3) or layer.stride != (1, 1):
            raise ValueError(f"Winograd needs a 3x3 stride-1 layer, got kernel "
                             f"{layer.kernel_size} stride {layer.stride}")
        if weights not in self.WEIGHTS:
            raise ValueError(f"winograd_weights must be one of {', '.join(self.WEIGHTS)}, got "
                             f"{weights!r}")
        self.layer, self.forced = layer, weights
        self.u_floats = packed_floats(layer.out_channels, layer.weight.shape[1], layer.groups,
                                      self.tile)
        self.g32 = np.ascontiguousarray(TRANSFORMS[self.tile][1], np.float32)
        self.bias = (layer.bias if layer.bias is not None
                     else np.zeros(layer.out_channels, np.float32))
        self._plans = ShapeCache(64)
        # made now, so that a layer planned for its input size makes nothing at its first call
        size = layer.params.in_size
        if size is not None:
            form = self.kernel_choice(layer.geometry((1, layer.in_channels) + size))[0]
        else:
            form = "stored" if weights == "auto" else weights
        self.weights(form)

    def weights(self, form):
        """The packed weights of ``form`` ("stored": U; "per_call": the taps), made once."""
        L = self.layer
        if form == "stored":
            return L.transformed(
                f"winograd_tile{self.tile}",
                lambda: pack_weights(L.given_weight, L.groups, self.tile,
                                     resolve_threads(L.num_threads)), (self.u_floats,))
        k, cg = L.weight.shape[:2]
        return L.transformed("winograd_taps", lambda: pack_taps(L.weight, L.groups),
                             (L.groups * packed_gemm.packed_rows(k // L.groups) * 9 * cg,))

    def plan(self, g) -> TilePlan:
        L = self.layer
        return self._plans.get(g, lambda: TilePlan(g.batch, g.in_size, g.out_size, g.pads,
                                                   L.dilation, self.tile, L.in_channels,
                                                   L.out_channels, L.groups))

    def kernel_choice(self, g) -> tuple[str, str]:
        """(where U lives, reason) for geometry ``g``: "stored" or "per_call", chosen for one
        image of its size (more images only add tiles to amortise the transform over), so
        each input size uses one form whatever the batch."""
        if self.forced != "auto":
            return self.forced, "forced by the caller"
        p = self.plan(g if g.batch == 1 else g._replace(batch=1))
        if p.weights is None:
            p.weights = choose_winograd_weights(4 * self.u_floats, p.max_tiles)
        return p.weights

    def run(self, x, out, g, threads):
        L = self.layer
        p = self.plan(g)
        if p.packed is None:       # decided and fetched once per input shape, not per call
            form = self.kernel_choice(g)[0]
            p.packed = (form, self.weights(form))
        form, upack = p.packed
        cg = L.in_channels // L.groups
        if form == "stored":
            G, mchunk, group_panels = None, p.mchunk, p.group_panels
            floats = packed_gemm.panel_floats(threads, cg, group_panels)
        else:
            G = self.g32
            mchunk, group_panels = p.taps_split(threads)
            floats = conv_winograd.taps_panel_floats(threads, cg, group_panels, self.tile)
        work = workspace.take(p.work_floats)
        panels = workspace.take(floats)
        try:
            nonfinite = conv_winograd.f32_conv3x3_winograd(
                x, upack, L.groups, self.bias, out, p.rows, p.blocks, p.phase_tiles,
                p.phase_start, p.phase_cols, p.colmap, self.tile, p.J, p.hbuf, p.max_tiles,
                g.pads[0][0], g.pads[1][0], L.dilation[0], L.dilation[1], work, panels,
                mchunk, group_panels, L.act, threads, _CHECK_NONFINITE, G)
        finally:
            workspace.give(panels)
            workspace.give(work)
        if nonfinite:
            fix_nonfinite(L, x, out, g.pads, threads)


class WinogradF23(Winograd):
    tile = 2


class WinogradF43(Winograd):
    tile = 4


class WinogradF63(Winograd):
    tile = 6
