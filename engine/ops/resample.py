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

ONNX Resize (modes nearest and linear) is computed here too. Where it equals interpolate
(``onnx_as_interpolate``: 4-D input, batch and channels kept; nearest with asymmetric
coordinates and floor rounding, linear with half_pixel or align_corners) it runs an Interpolate
and so the tables above. Every other case runs ``OnnxResize``: one gather per resized axis
(two and a blend for linear) with tables from ``onnx_source``, the one definition of ONNX's
coordinate_transformation_modes, computed in float64.
"""
from __future__ import annotations

import numpy as np

from .._kernels import resample as _k
from .._threads import resolve_threads, threads_for
from ..shapes import interpolate_output_shape
from ._validate import as_float_array, check_out, new_output

__all__ = ["Interpolate", "interpolate", "OnnxResize", "onnx_as_interpolate", "onnx_source"]

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
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
# "simple" is the nearest rounding of Upsample and of Resize before opset 11, as ONNX Runtime
# runs them: truncation when enlarging, rounding up when shrinking.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def onnx_source(coord: str, i: int, o: int, scale: float, roi=(0.0, 1.0)) -> np.ndarray:
    """Source coordinates (float64) of the o outputs along one axis of size i under ONNX
    Resize's coordinate_transformation_mode ``coord``, with the axis's ``scale`` and, for
    tf_crop_and_resize, its ``roi`` (start, end)."""
    s = scale
    d = np.arange(o, dtype=np.float64)
    c = coord
    if c == "half_pixel":
        return (d + 0.5) / s - 0.5
    if c == "half_pixel_symmetric":
        adjust = o / (s * i)
        return i / 2 * (1 - adjust) + (d + 0.5) / s - 0.5
    if c == "pytorch_half_pixel":
        return (d + 0.5) / s - 0.5 if o > 1 else np.zeros(o)
    if c == "align_corners":
        return d * (i - 1) / (o - 1) if o > 1 else np.zeros(o)
    if c == "asymmetric":
        return d / s
    if c == "tf_half_pixel_for_nn":
        return (d + 0.5) / s
    start, end = roi
    if o > 1:
        return start * (i - 1) + d * (end - start) * (i - 1) / (o - 1)
    return np.full(o, 0.5 * (start + end) * (i - 1))


def onnx_as_interpolate(mode, coord, rounding, x_shape, out_size, scales, from_sizes):
    """The Interpolate that computes this ONNX Resize, or None where interpolate's semantics
    differ. ``out_size`` and ``scales`` cover every axis of ``x_shape``; ``from_sizes``: the
    node gave sizes rather than scales."""
    if len(x_shape) != 4 or out_size[:2] != tuple(x_shape[:2]):
        return None
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


class OnnxResize:
    """ONNX Resize, modes nearest and linear, for one input shape of any rank: gathers along
    one axis at a time, with index and weight tables computed once, here. ``out_size``,
    ``scales`` and ``roi`` ((start, end) pairs, for tf_crop_and_resize) cover every axis;
    tf_crop_and_resize's outputs outside the input take ``extrapolation``."""

    def __init__(self, mode, coord, rounding, x_shape, out_size, scales, roi,
                 extrapolation=0.0):
        self.mode, self.coord, self.rounding = mode, coord, rounding
        self.out_size, self.scales, self.roi = tuple(out_size), list(scales), list(roi)
        self.fill = np.float32(extrapolation)
        rank = len(x_shape)

        def expand(w, axis):
            return w.reshape((-1,) + (1,) * (rank - 1 - axis))

        self.steps = [(axis, i0, i1, None if w1 is None else expand(w1, axis),
                       None if w1 is None else expand(1 - w1, axis),
                       None if outside is None else
                       (slice(None),) * axis + (outside,))
                      for axis, i0, i1, w1, outside in self.tables(x_shape)]
        # shrinking axes first, growing ones last: the intermediates stay as small as they can
        # (4 -> 524292 channels then 16 -> 8 pixels made 537 MB temporaries for a 134 MB output)
        self.steps.sort(key=lambda step: self.out_size[step[0]] / x_shape[step[0]])

    def tables(self, x_shape):
        """Per resized axis: (axis, i0, i1, w1, outside) for linear, (axis, index, None,
        None, outside) for nearest; ``outside`` marks tf_crop_and_resize extrapolation."""
        out = []
        for axis, (i, o) in enumerate(zip(x_shape, self.out_size)):
            if i == o and self.coord != "tf_crop_and_resize" and self.scales[axis] == 1.0:
                continue
            src = onnx_source(self.coord, i, o, self.scales[axis], self.roi[axis])
            outside = None
            if self.coord == "tf_crop_and_resize":
                outside = (src < 0) | (src > i - 1)
                if not outside.any():
                    outside = None
            if self.mode == "nearest":
                r = self.rounding
                if r == "simple":
                    r = "ceil" if o < i else "floor"
                if r == "round_prefer_floor":
                    idx = np.ceil(src - 0.5)
                elif r == "round_prefer_ceil":
                    idx = np.floor(src + 0.5)
                else:
                    idx = np.floor(src) if r == "floor" else np.ceil(src)
                idx = np.clip(idx, 0, i - 1).astype(np.int64)
                out.append((axis, idx, None, None, outside))
            else:
                src = np.clip(src, 0, i - 1)
                i0 = np.floor(src).astype(np.int64)
                i1 = np.minimum(i0 + 1, i - 1)
                w1 = (src - i0).astype(np.float32)
                out.append((axis, i0, i1, w1, outside))
        return out

    def run(self, x, out) -> None:
        """x of the shape the tables were made for, out of ``out_size``; no validation."""
        y, fill = x, self.fill
        for axis, i0, i1, w1, w0, outside in self.steps:
            if i1 is None:
                y = np.take(y, i0, axis=axis)
            else:
                # in place: two temporaries of the step's output size, not four
                a = np.take(y, i0, axis=axis)
                a *= w0
                b = np.take(y, i1, axis=axis)
                b *= w1
                a += b
                y = a
            if outside is not None:
                y[outside] = fill
        np.copyto(out, y)

    def __repr__(self):
        return (f"OnnxResize(mode={self.mode!r}, coordinate_transformation_mode={self.coord!r}, "
                f"out_size={self.out_size})")
