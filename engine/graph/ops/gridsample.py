"""The GridSample node plan (opsets 16 and 20): attributes and shapes here, the sampling in
engine/ops/grid_sample.py.
"""
from __future__ import annotations

from ...ops.grid_sample import GRID_MODES, PADDING_MODES, GridTables
from .base import F32, Info, Op, check_tensor_size, register

# Spatial axes the plan takes: ONNX Runtime runs 2 and 3; cubic's 4**r taps grow fast beyond
MAX_SPATIAL_AXES = 3


@register
class GridSample(Op):
    """GridSample: X (N, C, D1, ..., Dr) sampled at grid (N, O1, ..., Or, r), r = 1 to 3 (the
    opset-16 operator is r = 2); modes linear/bilinear, nearest, cubic/bicubic (opset 20's
    and opset 16's names both), padding_mode zeros, border, reflection, align_corners. The grid
    is usually computed in the graph: its tap tables are made by each run, or once here when
    the grid is a constant."""
    kind = "GridSample"
    n_inputs = (2, 2)
    attributes = {"mode": "str", "padding_mode": "str", "align_corners": "int"}

    def setup(self, constants):
        mode = self.attr("mode", "linear")
        if mode not in GRID_MODES:
            raise self.error(f"mode {mode!r} is unknown (linear, nearest and cubic; bilinear "
                             f"and bicubic in opset 16)")
        self.mode = GRID_MODES[mode]
        self.padding = self.attr("padding_mode", "zeros")
        if self.padding not in PADDING_MODES:
            raise self.error(f"padding_mode {self.padding!r} is unknown (zeros, border and "
                             f"reflection)")
        align = self.attr("align_corners", 0)
        if align not in (0, 1):
            raise self.error(f"align_corners must be 0 or 1, got {align}")
        self.align = bool(align)

    def infer(self, ins):
        x = self.float_in(ins, 0, "X")
        g = self.float_in(ins, 1, "grid")
        r = len(x.shape) - 2
        if not 1 <= r <= MAX_SPATIAL_AXES:
            raise self.error(f"X must be (N, C) and 1 to {MAX_SPATIAL_AXES} spatial axes, "
                             f"got shape {x.shape}")
        if len(g.shape) != r + 2 or g.shape[0] != x.shape[0] or g.shape[-1] != r:
            raise self.error(f"grid must have shape (N={x.shape[0]}, {r} output sizes, {r}) "
                             f"for X of shape {x.shape}, got {g.shape}")
        if min(x.shape[2:]) < 1:
            raise self.error(f"X {x.shape} has an empty spatial axis: there is nothing to "
                             f"sample")
        shape = x.shape[:2] + g.shape[1:-1]
        check_tensor_size(self, shape, F32)
        return [Info(shape, F32)]

    def build(self, ins, outs, i, o):
        a, gi, b = i[0], i[1], o[0]
        spatial = ins[0].shape[2:]
        mode, padding, align = self.mode, self.padding, self.align
        if ins[1].value is not None:
            tables = GridTables(ins[1].value, spatial, mode, padding, align)

            def step(env, nt):
                tables.apply(env[a], env[b])
            return step

        def step(env, nt):
            GridTables(env[gi], spatial, mode, padding, align).apply(env[a], env[b])
        return step

    def flops(self, ins, outs):
        taps = {"nearest": 1, "linear": 2, "cubic": 4}[self.mode] ** (len(ins[0].shape) - 2)
        return 2.0 * taps * outs[0].size

    def describe(self, ins, outs):
        how = "constant grid, tables made once" if ins[1].value is not None else \
            "tables made per run"
        return (f"{self.mode}, padding {self.padding}, align_corners={int(self.align)}: "
                f"{how}")
