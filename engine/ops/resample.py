"""Resampling plans on NCHW float32: torch.nn.functional.interpolate, modes "nearest" and
"bilinear".

The source tables (which input rows and columns each output pixel reads, and the bilinear
weights) are computed here once per input shape, in float32 with the same operations as
PyTorch's CPU kernels, so the nearest indices match PyTorch's exactly:

  nearest ("legacy" nearest, not "nearest-exact"): src = min(floor(dst * r), in - 1) with
      r = float32(1 / scale_factor) when scale_factor was given (PyTorch's default
      recompute_scale_factor=None keeps it), else float32(in) / float32(out); sizes equal or
      exactly doubled short-cut to dst and dst // 2.
  bilinear, align_corners=True:  src = dst * float32(in - 1) / float32(out - 1) (0 if out == 1);
      scale_factor is ignored.
  bilinear, align_corners=False: src = max(r * (dst + 0.5) - 0.5, 0), r as for nearest.
      Then i0 = min(floor(src), in - 1), i1 = i0 + 1 unless i0 is the last pixel,
      w1 = clip(src - i0, 0, 1), w0 = 1 - w1; equal sizes copy.

ONNX Resize (modes nearest, linear and cubic, with antialias) is computed here too. Where it
equals interpolate (``onnx_as_interpolate``: 4-D input, batch and channels kept; nearest with
asymmetric coordinates and floor rounding, linear with half_pixel or align_corners and no
antialiased shrinking) it runs an Interpolate and so the tables above. Every other case runs
``OnnxResize``: one pass per resized axis, with tables from ``onnx_resize_taps`` (which input
positions each output reads, and their weights) over ``onnx_source``, the one definition of
ONNX's coordinate_transformation_modes, computed in float64 once per shape.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..dispatch.resize import choose_resize_axis_path

from .._kernels import resample as _k
from .._threads import resolve_threads, threads_for
from ..memory import current_max_memory, format_bytes
from ..shapes import interpolate_output_shape
from ._validate import as_float_array, check_out, new_output

__all__ = ["Interpolate", "interpolate", "OnnxResize", "ResizeFilter", "onnx_as_interpolate",
           "onnx_resize_taps", "onnx_source"]

MODES = ("nearest", "bilinear")


def _ratio(in_size: int, out_size: int, scale) -> np.float32:
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(in_size) / np.float32(out_size)


def nearest_source(in_size: int, out_size: int, scale=None) -> np.ndarray:
    """Input index read by each output index along one axis."""
    dst = np.arange(out_size, dtype=np.int64)
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:
        return dst >> 1
    src = np.floor(dst.astype(np.float32) * _ratio(in_size, out_size, scale)).astype(np.int64)
    return np.minimum(src, in_size - 1)


def linear_source(in_size: int, out_size: int, scale=None, align_corners: bool = False):
    """(i0, i1, w0, w1) along one axis: output k = w0[k]*x[i0[k]] + w1[k]*x[i1[k]]."""
    dst = np.arange(out_size, dtype=np.int64)
    if out_size == in_size:
        return dst, dst.copy(), np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    d = dst.astype(np.float32)
    if align_corners:
        r = (np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1
             else np.float32(0))
        src = r * d
    else:
        src = _ratio(in_size, out_size, scale) * (d + np.float32(0.5)) - np.float32(0.5)
        src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0, i1, w0, w1


class Interpolate:
    """torch.nn.functional.interpolate for 4-D input, planned once; tables are made once per
    input shape. Exactly one of ``size`` (int or (H, W)) and ``scale_factor`` (number or pair).
    """

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None, *,
                 num_threads=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "nearest" and align_corners is not None:
            raise ValueError("align_corners can only be set with mode='bilinear' "
                             "(as in torch.nn.functional.interpolate)")
        # size and scale_factor are checked now; a stand-in input large enough that any sane
        # scale_factor leaves an output (whether one does depends on the real input)
        interpolate_output_shape((2 ** 20, 2 ** 20), size, scale_factor)
        self.size, self.scale_factor = size, scale_factor
        self.mode = mode
        self.align_corners = bool(align_corners)
        self.num_threads = num_threads
        self._tables = {}

    def output_shape(self, input_shape) -> tuple[int, int, int, int]:
        n, c, h, w = input_shape
        try:
            (oh, ow), _ = interpolate_output_shape((h, w), self.size, self.scale_factor)
        except ValueError as e:
            raise ValueError(f"x: {e}") from None
        return (n, c, oh, ow)

    def tables(self, input_shape):
        """Source tables for this input's (H, W): (ys, xs) for nearest, the eight bilinear
        arrays (y0, y1, wy0, wy1, x0, x1, wx0, wx1) otherwise."""
        h, w = input_shape[2:]
        t = self._tables.get((h, w))
        if t is None:
            (oh, ow), scales = interpolate_output_shape((h, w), self.size, self.scale_factor)
            sy, sx = scales if scales is not None else (None, None)
            taps = 1 if self.mode == "nearest" else 2
            size = (oh + ow) * taps * TAP_TABLE_BYTES
            if size > current_max_memory():
                raise ValueError(f"the tables of a {oh}x{ow} output would take "
                                 f"{format_bytes(size)} to make, more than the model's memory "
                                 f"budget ({format_bytes(current_max_memory())})")
            if self.mode == "nearest":
                t = (nearest_source(h, oh, sy), nearest_source(w, ow, sx))
            else:
                t = (linear_source(h, oh, sy, self.align_corners)
                     + linear_source(w, ow, sx, self.align_corners))
            if len(self._tables) > 64:
                self._tables.clear()
            self._tables[(h, w)] = t
        return t

    def __call__(self, x, out=None):
        x = as_float_array(x, "x", 4)
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"x must have non-empty spatial dimensions, got shape {x.shape}")
        shape = self.output_shape(x.shape)
        out = new_output(shape, np.float32, self, x.shape) if out is None else \
            check_out(out, shape)
        self.run(x, out)
        return out

    def run(self, x, out, num_threads=None) -> None:
        """Checked arrays in (out of output_shape(x.shape)), no validation."""
        n, c, h, w = x.shape
        oh, ow = out.shape[2:]
        t = self.tables(x.shape)
        taps = 1 if self.mode == "nearest" else 4
        threads = threads_for(n * c * oh * ow * taps,
                              resolve_threads(num_threads or self.num_threads))
        xp, op = x.reshape(n * c, h, w), out.reshape(n * c, oh, ow)
        if self.mode == "nearest":
            _k.f32_resize_nearest2d(xp, op, *t, threads)
        else:
            _k.f32_resize_bilinear2d(xp, op, *t, threads)

    def __repr__(self):
        extra = f", align_corners={self.align_corners}" if self.mode == "bilinear" else ""
        return (f"Interpolate(size={self.size!r}, scale_factor={self.scale_factor!r}, "
                f"mode={self.mode!r}{extra})")


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """torch.nn.functional.interpolate on NCHW float32, modes "nearest" and "bilinear", with
    PyTorch's default recompute_scale_factor=None and antialias=False."""
    return Interpolate(size, scale_factor, mode, align_corners)(x)


# -- ONNX Resize ---------------------------------------------------------------------------------
RESIZE_MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
# "simple" is the nearest rounding of Upsample and of Resize before opset 11, as ONNX Runtime
# runs them: truncation when enlarging, rounding up when shrinking.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


class ResizeFilter(NamedTuple):
    """How ONNX Resize weighs its input along every axis: ``mode`` nearest, linear or cubic
    (Keys' kernel with ``cubic_a``); ``rounding`` (nearest_mode) for nearest; ``exclude_outside``
    drops taps outside the input and renormalises; ``antialias`` widens linear and cubic
    filters by 1 / scale when an axis shrinks."""
    mode: str = "nearest"
    rounding: str = "round_prefer_floor"
    cubic_a: float = -0.75
    exclude_outside: bool = False
    antialias: bool = False


def onnx_source(coord: str, i: int, o: int, scale: float, roi=(0.0, 1.0)) -> np.ndarray:
    """Source coordinates of the o outputs along one axis of size i under ONNX Resize's
    coordinate_transformation_mode ``coord``, with the axis's ``scale`` and, for
    tf_crop_and_resize, its ``roi`` (start, end). Computed in float32 with ONNX Runtime's
    operations, in its order, so that which input a nearest output reads where the exact
    coordinate is a tie mostly follows its rounding (11.5 / 2.3 - 0.5 is 4.5 in float32, a
    tie, and 4.50000010 in float64). Output sizes are the integer ones, as ONNX Runtime has
    them (the reference evaluator puts i * scale in align_corners, half_pixel_symmetric and
    tf_crop_and_resize)."""
    f = np.float32
    d = np.arange(o, dtype=f)
    s, half, c = f(scale), f(0.5), coord
    if c == "half_pixel":
        src = (d + half) / s - half
    elif c == "half_pixel_symmetric":     # the offset in float32, the sum in float64
        adjust = f(o) / (s * f(i))
        offset = f(i) / f(2) * (f(1) - adjust)
        src = (float(offset) + (np.arange(o) + 0.5) / float(s) - 0.5).astype(f)
    elif c == "pytorch_half_pixel":
        src = (d + half) / s - half if o > 1 else np.zeros(o, f)
    elif c == "align_corners":
        src = d * f(i - 1) / f(o - 1) if o > 1 else np.zeros(o, f)
    elif c == "asymmetric":
        src = d / s
    elif c == "tf_half_pixel_for_nn":
        src = (d + half) / s
    else:
        start, end = f(roi[0]), f(roi[1])
        if o > 1:
            src = start * f(i - 1) + d * (end - start) * f(i - 1) / f(o - 1)
        else:
            src = np.full(o, 0.5 * float(start + end) * (i - 1), f)
    return src.astype(np.float64)


def keys_cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d`` >= 0 (zero from 2 on)."""
    d2, d3 = d * d, d * d * d
    near = (a + 2) * d3 - (a + 3) * d2 + 1
    far = a * d3 - 5 * a * d2 + 8 * a * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def onnx_resize_tap_count(f: ResizeFilter, scale: float) -> int:
    """Taps per output ``onnx_resize_taps`` computes along an axis of this scale (before the
    all-zero rims are dropped): 1 for nearest, 2 * ceil(r / s) for linear (r = 1) and cubic
    (r = 2), s = min(scale, 1) with antialias and 1 without."""
    if f.mode == "nearest":
        return 1
    radius = 1 if f.mode == "linear" else 2
    s = min(scale, 1.0) if f.antialias else 1.0
    return 2 * math.ceil(radius / s)


# Bytes made while one axis's tables are computed, per (output, tap) entry: onnx_resize_taps's
# float64 arrays of that shape (window positions, distances, the cubic's powers, weights,
# indices) peak at 8.4 of them; a dense matrix takes 12 bytes (float64, then float32) per
# (output, input) pair. Interpolate's tables (fewer arrays) are held to the same bound.
TAP_TABLE_BYTES = 9 * 8
MATRIX_TABLE_BYTES = 12


def onnx_resize_taps(f: ResizeFilter, coord: str, i: int, o: int, scale: float,
                     roi=(0.0, 1.0)):
    """The taps of one axis: (index, weight, outside) with ``index`` (o, taps) int64 input
    positions, already clamped (edge replication, as the spec's padded neighbourhood reads),
    ``weight`` (o, taps) float64 or None for nearest, and ``outside`` the (o,) mask of
    tf_crop_and_resize outputs that take the extrapolation value, or None.

    Linear and cubic read every input j with |j - src| * s < r, weighted by the filter (the
    triangle, r = 1, or Keys' cubic, r = 2) at (j - src) * s, where s = min(scale, 1) with
    antialias (the filter widened by 1 / scale when shrinking, then normalised to sum 1) and
    s = 1 without; that is 2 * ceil(r / s) taps from floor(src) - ceil(r / s) + 1."""
    src = onnx_source(coord, i, o, scale, roi)
    outside = None
    if coord == "tf_crop_and_resize":
        outside = (src < 0) | (src > i - 1)
        if not outside.any():
            outside = None
        src = np.where(outside if outside is not None else False, 0.0, src)
    if f.mode == "nearest":
        r = f.rounding
        if r == "simple":
            r = "ceil" if o < i else "floor"
        if r == "round_prefer_floor":
            idx = np.ceil(src - 0.5)
        elif r == "round_prefer_ceil":
            idx = np.floor(src + 0.5)
        else:
            idx = np.floor(src) if r == "floor" else np.ceil(src)
        return np.clip(idx, 0, i - 1).astype(np.int64)[:, None], None, outside
    reach = onnx_resize_tap_count(f, scale) // 2
    s = min(scale, 1.0) if f.antialias else 1.0
    j = np.floor(src)[:, None] + np.arange(1 - reach, reach + 1, dtype=np.float64)
    dist = np.abs(j - src[:, None]) * s
    w = np.maximum(1 - dist, 0.0) if f.mode == "linear" else keys_cubic(dist, f.cubic_a)
    if f.antialias:
        w /= w.sum(axis=1, keepdims=True)
    if f.exclude_outside:
        w = np.where((j >= 0) & (j <= i - 1), w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        w /= np.where(total == 0, 1.0, total)      # nothing inside: 0, as the reference has it
    idx = np.clip(j, 0, i - 1).astype(np.int64)
    keep = np.any(w != 0, axis=0)                  # the window's rims are often all zero
    keep[np.argmax(keep)] = True                   # one tap stays (if all weigh 0: zeros)
    if not keep.all():
        idx, w = idx[:, keep], w[:, keep]
    return idx, w, outside


class OnnxResize:
    """ONNX Resize for one input shape of any rank: one pass per resized axis, with index
    and weight tables computed once, here. ``out_size``, ``scales`` and ``roi`` ((start, end)
    pairs, for tf_crop_and_resize) cover every axis; tf_crop_and_resize's outputs outside the
    input take ``extrapolation``."""

    def __init__(self, filt: ResizeFilter, coord, x_shape, out_size, scales, roi,
                 extrapolation=0.0):
        self.filter, self.coord = filt, coord
        self.out_size, self.scales, self.roi = tuple(out_size), list(scales), list(roi)
        self.fill = np.float32(extrapolation)
        rank = len(x_shape)
        # an axis kept as it is needs no pass (tf_crop_and_resize's only with roi (0, 1))
        axes = [a for a, (i, o) in enumerate(zip(x_shape, self.out_size))
                if not (i == o and self.scales[a] == 1.0 and (
                    coord != "tf_crop_and_resize" or tuple(self.roi[a]) == (0.0, 1.0)))]
        # shrinking axes first, growing ones last: the intermediates stay as small as they can
        # (4 -> 524292 channels then 16 -> 8 pixels made 537 MB temporaries for a 134 MB output)
        axes.sort(key=lambda a: self.out_size[a] / x_shape[a])
        shape = list(x_shape)
        self.steps, self.paths = [], []
        budget = current_max_memory()
        for axis in axes:
            i, o = shape[axis], self.out_size[axis]
            innermost = math.prod(shape[axis + 1:]) == 1
            # the tables' size comes from the scale alone (a small input resized by a huge
            # factor): checked before they are made
            taps = onnx_resize_tap_count(filt, self.scales[axis])
            size = o * taps * TAP_TABLE_BYTES
            if choose_resize_axis_path(i, o, taps, innermost)[0] == "matrix":
                size = max(size, o * i * MATRIX_TABLE_BYTES)
            if size > budget:
                raise ValueError(f"the tables of axis {axis} ({o} outputs of {taps} taps over "
                                 f"{i} inputs) would take {format_bytes(size)} to make, more "
                                 f"than the model's memory budget ({format_bytes(budget)})")
            idx, w, outside = onnx_resize_taps(filt, coord, i, o, self.scales[axis],
                                               self.roi[axis])
            unit = w is None or bool(np.all(w == 1))
            path, reason = choose_resize_axis_path(i, o, idx.shape[1], innermost, unit)
            if path == "take":
                table = np.ascontiguousarray(idx[:, 0])
            elif path == "taps":
                expand = (-1,) + (1,) * (rank - 1 - axis)
                table = [(np.ascontiguousarray(idx[:, t]),
                          w[:, t].astype(np.float32).reshape(expand))
                         for t in range(idx.shape[1])]
            else:
                m = np.zeros((o, i), np.float64)
                np.add.at(m, (np.repeat(np.arange(o), idx.shape[1]), idx.ravel()), w.ravel())
                table = np.ascontiguousarray(m.T, dtype=np.float32)    # y @ table
            mask = None if outside is None else (slice(None),) * axis + (outside,)
            shape[axis] = o
            self.steps.append((path, axis, table, mask, tuple(shape)))
            self.paths.append((axis, path, reason))

    def run(self, x, out) -> None:
        """x of the shape the tables were made for, out of ``out_size``; no validation."""
        with np.errstate(invalid="ignore", over="ignore"):     # inf * a zero weight: NaN
            self._run(x, out)

    def _run(self, x, out) -> None:
        y = x
        last = len(self.steps) - 1
        for k, (path, axis, table, mask, shape) in enumerate(self.steps):
            dest = out if k == last else None
            if path == "take":
                y = np.take(y, table, axis=axis, out=dest)
            elif path == "taps":
                # in place: one temporary of the step's output size besides the result
                (i0, w0), rest = table[0], table[1:]
                acc = np.take(y, i0, axis=axis, out=dest)
                acc *= w0
                for it, wt in rest:
                    b = np.take(y, it, axis=axis)
                    b *= wt
                    acc += b
                y = acc
            else:       # the axis is innermost (later axes, if any, of size 1)
                i, o = table.shape
                if dest is None:
                    dest = np.empty(shape, np.float32)
                np.matmul(y.reshape(-1, i), table, out=dest.reshape(-1, o))
                y = dest
            if mask is not None:
                y[mask] = self.fill
        if not self.steps:
            np.copyto(out, y)

    def describe(self) -> str:
        """The passes in their order, e.g. "axis 3 matrix, then axis 2 taps"."""
        return ", then ".join(f"axis {a} {p}" for a, p, _ in self.paths) or "a copy"

    def __repr__(self):
        return (f"OnnxResize(mode={self.filter.mode!r}, "
                f"coordinate_transformation_mode={self.coord!r}, out_size={self.out_size})")


def onnx_as_interpolate(filt: ResizeFilter, coord, x_shape, out_size, scales, from_sizes):
    """The Interpolate that computes this ONNX Resize, or None where interpolate's semantics
    differ. ``out_size`` and ``scales`` cover every axis of ``x_shape``; ``from_sizes``: the
    node gave sizes rather than scales."""
    if len(x_shape) != 4 or out_size[:2] != tuple(x_shape[:2]):
        return None
    mode, rounding = filt.mode, filt.rounding
    if mode == "cubic" or (mode == "linear" and filt.exclude_outside):
        return None
    if filt.antialias and any(s < 1 for s in scales[2:]):
        return None     # antialias changes linear only where an axis shrinks
    if mode == "nearest":
        enlarging = all(o >= i for o, i in zip(out_size[2:], x_shape[2:]))
        if coord != "asymmetric" or not (
                rounding == "floor" or (rounding == "simple" and enlarging)):
            return None
        mode, align = "nearest", None
    elif coord == "align_corners":
        mode, align = "bilinear", True
    elif coord == "half_pixel" or (coord == "pytorch_half_pixel" and min(out_size[2:]) > 1):
        mode, align = "bilinear", False
    else:
        return None
    if from_sizes:
        layer = Interpolate(size=out_size[2:], mode=mode, align_corners=align)
    else:
        layer = Interpolate(scale_factor=tuple(scales[2:]), mode=mode, align_corners=align)
    if layer.output_shape(x_shape) != tuple(out_size):
        return None
    return layer
