"""The Resize node plan (Upsample and opset-10 Resize too, which the importer turns into it):
the node's attributes, scales or sizes and output shape here; the coordinate modes and the
computation in engine/ops/resample.py.
"""
from __future__ import annotations

import math

import numpy as np

from ... import shapes
from ..._cache import ShapeCache
from ...ops.resample import (COORDINATE_MODES, NEAREST_MODES, RESIZE_MODES, OnnxResize,
                             ResizeFilter, onnx_as_interpolate)
from .base import F32, Info, Op, check_tensor_size, register


@register
class Resize(Op):
    """Resize, modes nearest, linear and cubic (cubic_coeff_a, exclude_outside), antialias for
    linear and cubic, on any rank, every coordinate_transformation_mode and nearest_mode, with
    axes and keep_aspect_ratio_policy (opset 18). The cases PyTorch's interpolate covers (4-D
    input, batch and channels kept; nearest with asymmetric coordinates and floor rounding;
    linear with half_pixel or align_corners) run engine.ops.resample.Interpolate; the others
    run engine.ops.resample.OnnxResize, one pass per resized axis with index and weight tables
    computed once per shape."""
    kind = "Resize"
    n_inputs = (1, 4)
    attributes = {"mode": "str", "coordinate_transformation_mode": "str", "nearest_mode": "str",
                  "extrapolation_value": "float", "axes": "ints",
                  "keep_aspect_ratio_policy": "str", "cubic_coeff_a": "float",
                  "exclude_outside": "int", "antialias": "int"}

    def setup(self, constants):
        mode = self.attr("mode", "nearest")
        if mode not in RESIZE_MODES:
            raise self.error(f"mode {mode!r} is unknown (nearest, linear and cubic are ONNX's)")
        self.coord = self.attr("coordinate_transformation_mode", "half_pixel")
        if self.coord not in COORDINATE_MODES:
            raise self.error(f"coordinate_transformation_mode {self.coord!r} is unknown")
        rounding = self.attr("nearest_mode", "round_prefer_floor")
        if rounding not in NEAREST_MODES:
            raise self.error(f"nearest_mode {rounding!r} is unknown")
        flags = {}
        for name in ("antialias", "exclude_outside"):
            flags[name] = self.attr(name, 0)
            if flags[name] not in (0, 1):
                raise self.error(f"{name} must be 0 or 1, got {flags[name]}")
        if flags["antialias"] and mode == "nearest":
            # ONNX Runtime and the reference evaluator refuse it too: the spec defines it for
            # linear and cubic only
            raise self.error("antialias=1 applies to modes linear and cubic, not nearest")
        a = float(self.attr("cubic_coeff_a", -0.75))
        if not math.isfinite(a):
            raise self.error(f"cubic_coeff_a must be finite, got {a}")
        self.filter = ResizeFilter(mode, rounding, a, bool(flags["exclude_outside"]),
                                   bool(flags["antialias"]))
        self.policy = self.attr("keep_aspect_ratio_policy", "stretch")
        if self.policy not in ("stretch", "not_larger", "not_smaller"):
            raise self.error(f"keep_aspect_ratio_policy {self.policy!r} is unknown")
        self.extrapolation = float(self.attr("extrapolation_value", 0.0))
        self._resamplers = ShapeCache(8)

    def sampling(self, ins) -> tuple:
        """(scales, output shape, roi pairs, from_sizes) for these inputs, over every axis;
        checked. from_sizes: interpolate's size= samples with in / out, the node's scales
        when it stretched to the sizes given."""
        x = self.float_in(ins, 0)
        rank = len(x.shape)
        if rank < 1:
            raise self.error("X must have at least one axis")
        axes = self.attr("axes")
        axes = list(range(rank)) if axes is None else [self.axis(a, rank, "axes entry")
                                                       for a in axes]
        if len(set(axes)) != len(axes):
            raise self.error(f"axes {self.attr('axes')} repeat an axis")
        roi = self.known(ins, 1, "roi") if self.coord == "tf_crop_and_resize" else None
        scales = self.known(ins, 2, "scales")
        sizes = self.known(ins, 3, "sizes")
        if scales is not None and scales.size == 0:
            scales = None
        if sizes is not None and sizes.size == 0:
            sizes = None
        if (scales is None) == (sizes is None):
            raise self.error("exactly one of scales and sizes must be given")
        in_size = [x.shape[a] for a in axes]
        if min(in_size, default=1) < 1:
            raise self.error(f"X {x.shape} is empty along a resized axis")
        if scales is not None:
            sc = [float(v) for v in scales.reshape(-1)]
            if len(sc) != len(axes) or not all(0 < v < math.inf for v in sc):
                raise self.error(f"scales {sc} must be {len(axes)} positive finite numbers")
            out = [shapes.onnx_resize_output_size(i, s) for i, s in zip(in_size, sc)]
        else:
            sz = [int(v) for v in sizes.reshape(-1)]
            if len(sz) != len(axes) or min(sz) < 1:
                raise self.error(f"sizes {sz} must be {len(axes)} positive sizes")
            # the scales in float32, as ONNX Runtime derives them (the coordinates' ties
            # round as there)
            ratios = [np.float32(o) / np.float32(i) for o, i in zip(sz, in_size)]
            if self.policy == "stretch":
                out, sc = sz, [float(r) for r in ratios]
            else:
                s = (min if self.policy == "not_larger" else max)(ratios)
                out = [int(np.floor(s * np.float32(i) + np.float32(0.5))) for i in in_size]
                sc = [float(s)] * len(axes)
        if min(out) < 1:
            raise self.error(f"the output would be empty: sizes {out}")
        full_scale, full_out = [1.0] * rank, list(x.shape)
        for a, s, o in zip(axes, sc, out):
            full_scale[a], full_out[a] = s, o
        check_tensor_size(self, full_out, F32)
        roi_pairs = [(0.0, 1.0)] * rank
        if self.coord == "tf_crop_and_resize":
            # roi matters in this mode only (ONNX Runtime ignores it in the others)
            if roi is None or roi.size != 2 * len(axes):
                raise self.error(f"roi must hold {2 * len(axes)} values (a start and an end "
                                 f"per resized axis) for tf_crop_and_resize, got "
                                 f"{None if roi is None else roi.size}")
            r = [float(v) for v in roi.reshape(-1)]
            if not all(math.isfinite(v) for v in r):
                raise self.error(f"roi {r} must be finite")
            for k, a in enumerate(axes):
                roi_pairs[a] = (r[k], r[k + len(axes)])
        return full_scale, tuple(full_out), roi_pairs, sizes is not None and \
            self.policy == "stretch"

    def infer(self, ins):
        return [Info(self.sampling(ins)[1], F32)]

    def resampler(self, ins):
        """The layer that runs this node for these inputs: the engine's interpolate where it
        computes the same (its run takes the thread count), else OnnxResize; made once per
        input shape and sampling."""
        scales, out_size, roi, from_sizes = self.sampling(ins)
        x_shape = ins[0].shape

        def make():
            layer = onnx_as_interpolate(self.filter, self.coord, x_shape, out_size, scales,
                                        from_sizes)
            if layer is not None:
                layer.tables(x_shape)     # made now, not by the first run
                return layer
            return OnnxResize(self.filter, self.coord, x_shape, out_size, scales, roi,
                              self.extrapolation)
        return self._resamplers.get((x_shape, tuple(scales), out_size, tuple(roi), from_sizes),
                                    make)

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        layer = self.resampler(ins)
        run = layer.run
        if not isinstance(layer, OnnxResize):
            def step(env, nt):
                run(env[a], env[b], nt)
            return step

        def step(env, nt):
            run(env[a], env[b])
        return step

    def flops(self, ins, outs):
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[self.filter.mode]
        scales = self.sampling(ins)[0]
        return float(outs[0].size * taps * max(1, sum(s != 1 for s in scales)))

    def describe(self, ins, outs):
        f = self.filter
        extra = (" antialias" if f.antialias else "") + (
            " exclude_outside" if f.exclude_outside else "")
        layer = self.resampler(ins)
        how = layer.describe() if isinstance(layer, OnnxResize) else "engine interpolate"
        return f"{f.mode}{extra}, {self.coord}: {how}"
