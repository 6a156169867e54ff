"""The Resize node plan (Upsample and opset-10 Resize too, which the importer turns into it):
the node's attributes, scales or sizes and output shape here; the coordinate modes and the
computation in engine/ops/resample.py.
"""
from __future__ import annotations

import math

from ... import shapes
from ...ops.resample import COORDINATE_MODES, NEAREST_MODES, OnnxResize, onnx_as_interpolate
from .base import F32, Info, Op, register


@register
class Resize(Op):
    """Resize, modes nearest and linear. The cases PyTorch's interpolate covers (4-D input,
    batch and channels kept; nearest with asymmetric coordinates and floor rounding; linear
    with half_pixel or align_corners) run engine.ops.resample.Interpolate; the other coordinate
    and rounding modes, and other ranks, run engine.ops.resample.OnnxResize, which gathers with
    index and weight tables computed once per shape, one axis at a time."""
    kind = "Resize"
    n_inputs = (1, 4)
    attributes = {"mode": "str", "coordinate_transformation_mode": "str", "nearest_mode": "str",
                  "extrapolation_value": "float", "axes": "ints",
                  "keep_aspect_ratio_policy": "str", "cubic_coeff_a": "float",
                  "exclude_outside": "int", "antialias": "int"}

    def setup(self, constants):
        self.mode = self.attr("mode", "nearest")
        if self.mode not in ("nearest", "linear"):
            raise self.error(f"mode {self.mode!r} is not supported (nearest and linear are)")
        self.coord = self.attr("coordinate_transformation_mode", "half_pixel")
        if self.coord not in COORDINATE_MODES:
            raise self.error(f"coordinate_transformation_mode {self.coord!r} is unknown")
        self.rounding = self.attr("nearest_mode", "round_prefer_floor")
        if self.rounding not in NEAREST_MODES:
            raise self.error(f"nearest_mode {self.rounding!r} is unknown")
        if self.attr("antialias", 0):
            raise self.error("antialias=1 is not supported")
        self.policy = self.attr("keep_aspect_ratio_policy", "stretch")
        if self.policy not in ("stretch", "not_larger", "not_smaller"):
            raise self.error(f"keep_aspect_ratio_policy {self.policy!r} is unknown")
        self.extrapolation = float(self.attr("extrapolation_value", 0.0))

    def infer(self, ins):
        x = self.float_in(ins, 0)
        rank = len(x.shape)
        axes = self.attr("axes")
        axes = list(range(rank)) if axes is None else [self.axis(a, rank, "axes entry")
                                                       for a in axes]
        roi = self.known(ins, 1, "roi")
        scales = self.known(ins, 2, "scales")
        sizes = self.known(ins, 3, "sizes")
        if scales is not None and scales.size == 0:
            scales = None
        if sizes is not None and sizes.size == 0:
            sizes = None
        if (scales is None) == (sizes is None):
            raise self.error("exactly one of scales and sizes must be given")
        in_size = [x.shape[a] for a in axes]
        if scales is not None:
            sc = [float(v) for v in scales.reshape(-1)]
            if len(sc) != len(axes) or not all(0 < v < math.inf for v in sc):
                raise self.error(f"scales {sc} must be {len(axes)} positive finite numbers")
            out = [shapes.onnx_resize_output_size(i, s) for i, s in zip(in_size, sc)]
        else:
            sz = [int(v) for v in sizes.reshape(-1)]
            if len(sz) != len(axes) or min(sz) < 1:
                raise self.error(f"sizes {sz} must be {len(axes)} positive sizes")
            if self.policy == "stretch":
                out, sc = sz, [o / i for o, i in zip(sz, in_size)]
            else:
                pick = min if self.policy == "not_larger" else max
                s = pick(o / i for o, i in zip(sz, in_size))
                out = [int(math.floor(s * i + 0.5)) for i in in_size]
                sc = [s] * len(axes)
        if min(out) < 1:
            raise self.error(f"the output would be empty: sizes {out}")
        full_scale, full_out = [1.0] * rank, list(x.shape)
        for a, s, o in zip(axes, sc, out):
            full_scale[a], full_out[a] = s, o
        roi_pairs = [(0.0, 1.0)] * rank
        if self.coord == "tf_crop_and_resize":
            if roi is None or roi.size != 2 * len(axes):
                raise self.error(f"roi must hold {2 * len(axes)} values for tf_crop_and_resize")
            r = [float(v) for v in roi.reshape(-1)]
            for k, a in enumerate(axes):
                roi_pairs[a] = (r[k], r[k + len(axes)])
        self.scales, self.out_size, self.roi = full_scale, tuple(full_out), roi_pairs
        self.from_sizes = sizes is not None
        return [Info(self.out_size, F32)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        layer = onnx_as_interpolate(self.mode, self.coord, self.rounding, ins[0].shape,
                                    self.out_size, self.scales, self.from_sizes)
        self.engine_path = layer is not None
        if layer is not None:
            layer.tables(ins[0].shape)     # made now, not by the first run
            run = layer.run

            def step(env, nt):
                run(env[a], env[b], nt)
            return step
        run = OnnxResize(self.mode, self.coord, self.rounding, ins[0].shape, self.out_size,
                         self.scales, self.roi, self.extrapolation).run

        def step(env, nt):
            run(env[a], env[b])
        return step

    def flops(self, ins, outs):
        return float(outs[0].size * (1 if self.mode == "nearest" else 4))

    def describe(self, ins, outs):
        how = ("engine interpolate" if getattr(self, "engine_path", False)
               else "index/weight tables per axis")
        return f"{self.mode}, {self.coord}: {how}"
