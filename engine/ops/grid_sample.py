"""ONNX GridSample (torch.nn.functional.grid_sample) on float32, for 1 to 3 spatial axes.

``x`` is (N, C, D1, ..., Dr), ``grid`` (N, O1, ..., Or, r) with the r coordinates of every
output listed innermost axis first (x, y, z), normalised to [-1, 1]; the output is
(N, C, O1, ..., Or). Per axis of size d, in float32 as ONNX Runtime and PyTorch compute it:

  unnormalise: align_corners  u = (g + 1) / 2 * (d - 1)    (-1 and 1: the corner centres)
               otherwise      u = ((g + 1) * d - 1) / 2    (-1 and 1: the corner edges)
  padding of the coordinate, where u lies outside [lo, hi] ([0, d - 1] with align_corners,
      [-0.5, d - 0.5] without): border clamps it to [0, d - 1] (nearest and linear only),
      reflection reflects it about lo and hi until it lies inside, zeros leaves it;
  then the taps: nearest reads round-half-even(u) (rounded before the padding, as ONNX
      Runtime does), linear floor(u) and floor(u) + 1 weighted 1 - t and t, cubic floor(u) - 1
      to floor(u) + 2 with Keys' kernel (a = -0.75) at t = u - floor(u);
  padding of each tap: zeros reads 0 outside the input, border the nearest edge, reflection
      the reflected position.

This is ONNX Runtime's GridSample, and PyTorch's: in cubic mode with border padding both clamp
the taps only, where ONNX's reference evaluator clamps the coordinate first (the two differ
for grid values outside [-1, 1]; reflection is symmetric, so reflecting the coordinate first
changes nothing). A grid coordinate that is not finite gives NaN outputs.

The taps are tables: per tap combination (2**r for linear, 4**r for cubic) a flat input index
and a weight per output position; ``GridTables`` makes them from a grid (once, at plan time,
when the grid is a constant) and ``apply`` gathers with them.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["GRID_MODES", "PADDING_MODES", "GridTables"]

# ONNX's names: opset 16 says bilinear and bicubic, opset 20 linear and cubic
GRID_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest",
              "bicubic": "cubic", "cubic": "cubic"}
PADDING_MODES = ("zeros", "border", "reflection")
CUBIC_A = np.float32(-0.75)
# Coordinates are kept within this many pixels of the input before they become integers: any
# tap of a point further out is outside anyway (cubic reaches 2), and int64 stays safe.
_MARGIN = 8


def _reflect(u, lo: float, hi: float):
    """``u`` reflected about ``lo`` and ``hi`` until inside [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return np.full_like(u, lo)
    below, above = u < lo, u > hi
    dist = np.where(below, lo - u, np.where(above, u - hi, 0)).astype(u.dtype)
    flips = np.trunc(dist / span)
    rest = dist - flips * span
    odd = (flips % 2) == 1
    from_lo = np.where(odd, hi - rest, lo + rest)       # reflected off the low end
    from_hi = np.where(odd, lo + rest, hi - rest)
    return np.where(below, from_lo, np.where(above, from_hi, u)).astype(u.dtype)


def _cubic_weights(t):
    """Keys' weights of the taps at -1, 0, 1, 2 for fractional position ``t`` in [0, 1)."""
    a = CUBIC_A
    one = np.float32(1)

    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + one

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return far(t + one), near(t), near(one - t), far((one - t) + one)   # PyTorch's forms


class GridTables:
    """The gather tables of one grid: ``taps``, a list of (index, weight) with ``index``
    (N, Q) int64 positions in each (N, C, P) input plane, P the input's spatial size (index
    P reads a zero appended there, for zeros padding), and ``weight`` (N, Q) float32 or None
    (one nearest tap); ``reads_zero`` whether any index is P; ``bad`` the (N, Q) mask of
    grid points whose coordinates are not finite once unnormalised, or None."""

    def __init__(self, grid, spatial, mode: str, padding: str, align_corners: bool):
        n = grid.shape[0]
        r = len(spatial)
        g = grid.reshape(n, -1, r)
        q = g.shape[1]
        self.spatial, self.q = tuple(spatial), q
        self.zero_index = math.prod(spatial)
        self.bad = None
        per_axis = []                 # per spatial axis: [(index, weight or None, inside)]
        for k, d in enumerate(spatial):
            u = np.ascontiguousarray(g[:, :, r - 1 - k], dtype=np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                u = self._unnormalise(u, d, align_corners)
            finite = np.isfinite(u)       # a grid value too large to unnormalise too
            if not finite.all():
                self.bad = ~finite if self.bad is None else self.bad | ~finite
                u = np.where(finite, u, np.float32(0))
            per_axis.append(self._axis_taps(u, d, mode, padding, align_corners))
        strides = [math.prod(spatial[k + 1:]) for k in range(r)]
        self.taps, self.reads_zero = [], False
        for combo in itertools.product(*per_axis):
            index = np.zeros((n, q), np.int64)
            weight, inside = None, None
            for (idx, w, ok), stride in zip(combo, strides):
                index += idx * stride
                if w is not None:
                    weight = w if weight is None else weight * w
                if ok is not None:
                    inside = ok if inside is None else inside & ok
            if inside is not None and not inside.all():
                index[~inside] = self.zero_index
                self.reads_zero = True
            self.taps.append((index, weight))

    @staticmethod
    def _unnormalise(g, d: int, align: bool):
        f32 = np.float32
        if align:
            return (g + f32(1)) / f32(2) * f32(d - 1)
        return ((g + f32(1)) * f32(d) - f32(1)) / f32(2)

    @staticmethod
    def _axis_taps(u, d: int, mode: str, padding: str, align: bool):
        """Per tap along one axis of size d, for unnormalised coordinates u: (index, weight
        or None, inside or None)."""
        f32 = np.float32
        lo, hi = (0.0, float(d - 1)) if align else (-0.5, d - 0.5)
        if mode == "nearest":
            u = np.rint(u)
        if padding == "border" and mode != "cubic":
            u = np.where((u < lo) | (u > hi), np.clip(u, f32(0), f32(d - 1)), u)
        elif padding == "reflection":
            u = _reflect(u, f32(lo), f32(hi))
        u = np.clip(u, f32(-_MARGIN), f32(d - 1 + _MARGIN))
        if mode == "nearest":
            offsets, weights = (0,), (None,)
            base = u
        else:
            base = np.floor(u)
            t = (u - base).astype(f32)
            if mode == "linear":
                offsets, weights = (0, 1), (f32(1) - t, t)
            else:
                offsets, weights = (-1, 0, 1, 2), _cubic_weights(t)
        base = base.astype(np.int64)
        taps = []
        for off, w in zip(offsets, weights):
            j = base + off
            inside = None
            if padding == "zeros":
                inside = (j >= 0) & (j < d)
            elif padding == "reflection":
                j = _reflect(j.astype(np.float64), lo, hi).astype(np.int64)
            j = np.clip(j, 0, d - 1)
            taps.append((j, None if w is None else w.astype(f32), inside))
        return taps

    def apply(self, x, out) -> None:
        """out (N, C, O1, ..., Or) from x (N, C, D1, ..., Dr); no validation."""
        n, c = x.shape[:2]
        p = self.zero_index
        planes = x.reshape(n, c, p)
        if self.reads_zero:
            padded = np.zeros((n, c, p + 1), np.float32)      # a zero to read outside
            padded[:, :, :p] = planes
            planes = padded
        dest = out.reshape(n, c, self.q)
        with np.errstate(invalid="ignore", over="ignore"):    # inf and NaN inputs propagate
            self._gather(planes, dest)

    def _gather(self, planes, dest):
        for b in range(dest.shape[0]):
            acc = dest[b]
            for k, (idx, w) in enumerate(self.taps):
                if k == 0:
                    np.take(planes[b], idx[b], axis=1, out=acc)
                    if w is not None:
                        acc *= w[b]
                    continue
                v = np.take(planes[b], idx[b], axis=1)
                v *= w[b]
                acc += v
            if self.bad is not None:
                acc[:, self.bad[b]] = np.nan

