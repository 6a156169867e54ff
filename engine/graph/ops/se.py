"""Squeeze-and-excitation as one step: the engine's own node for the block MobileNetV3,
EfficientNet, RegNetY and their kin repeat (global average pool -> 1x1 conv -> activation ->
1x1 conv -> sigmoid or hard sigmoid -> per-channel Mul), found at load by
engine/graph/fusions.py fuse_squeeze_excite.

The step reads the feature map twice (the pool, the scaling) and writes it once; between the
two, two matrix-vector products on the pooled channels. On channel-blocked input
(engine/graph/layout.py lets it flow through) it pools and scales the blocks in place.
"""
from __future__ import annotations

import numpy as np

from ..._kernels import nchwc_channels, squeeze_excite
from ...ops import blocked
from ...ops.activation import canonical, kernel_act
from .base import F32, Info, Op, register, same_shape_inputs

# Elements below which the pool and the scaling run on one thread (as the layout changes do,
# bench/bench_dispatch.py layout/convert).
MIN_THREADED_ELEMENTS = 1 << 14
# Fewest weights in each of the gates' products (C x R) for which the threads share them:
# MobileNetV3's 960->240 (225K) gains from a second thread, its 672->168 (110K) loses
# (bench/bench_dispatch.py gemm/se_gates).
MIN_THREADED_GATE_WEIGHTS = 1 << 17


@register
class SqueezeExcite(Op):
    """y = x * gate(W2 act(W1 mean_hw(x) + B1) + B2), per image and channel.

    Inputs: X (N, C, H, W), or its channel blocks (N, ceil(C/16), H, W, 16); W1 (R, C, 1, 1),
    B1 (R,), W2 (C, R, 1, 1), B2 (C,), all constants. ``activation``: the first convolution's
    (any the convolutions fuse, or none); ``gate``: "sigmoid" or "hardsigmoid"
    (max(0, min(1, alpha v + beta))). The activations are the ones the unfused nodes compute
    (the same vector formulas), the products in float32 as the 1x1 convolutions' are."""
    kind = "SqueezeExcite"
    onnx = False
    n_inputs = (5, 5)
    attributes = {"activation": "act", "gate": "str", "alpha": "float", "beta": "float"}
    weights = (1, 2, 3, 4)

    def setup(self, constants):
        w1, b1, w2, b2 = (self.const(constants, k, what)
                          for k, what in ((1, "W1"), (2, "B1"), (3, "W2"), (4, "B2")))
        if any(v.dtype != F32 for v in (w1, b1, w2, b2)):
            raise self.error("W1, B1, W2 and B2 must be float32")
        if w1.ndim != 4 or w1.shape[2:] != (1, 1) or w1.shape[0] < 1 or w1.shape[1] < 1:
            raise self.error(f"W1 must be (R, C, 1, 1), got {w1.shape}")
        r, c = w1.shape[:2]
        if w2.shape != (c, r, 1, 1) or b1.shape != (r,) or b2.shape != (c,):
            raise self.error(f"W2 {w2.shape}, B1 {b1.shape} and B2 {b2.shape} do not fit W1 "
                             f"{w1.shape}: want ({c}, {r}, 1, 1), ({r},), ({c},)")
        self.channels = c
        # (C, R) and (R, C): the products are pooled @ w1t and hidden @ w2t
        self.w1t = np.ascontiguousarray(w1.reshape(r, c).T)
        self.w2t = np.ascontiguousarray(w2.reshape(c, r).T)
        self.b1, self.b2 = b1, b2
        try:
            self.activation = canonical(self.attr("activation"))
        except ValueError as e:
            raise self.error(str(e)) from None
        self.act = kernel_act(self.activation)
        self.gate = self.attr("gate", "sigmoid")
        if self.gate not in ("sigmoid", "hardsigmoid"):
            raise self.error(f"gate must be 'sigmoid' or 'hardsigmoid', got {self.gate!r}")
        self.alpha = np.float32(self.attr("alpha", 0.2))
        self.beta = np.float32(self.attr("beta", 0.5))

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", (4, 5))
        c = self.channels
        if len(x.shape) == 4 and x.shape[1] != c:
            raise self.error(f"X must have {c} channels, got shape {x.shape}")
        if len(x.shape) == 5 and (x.shape[1] != blocked.blocks(c) or x.shape[4] != blocked.BLOCK):
            raise self.error(f"blocked X must have {blocked.blocks(c)} blocks of "
                             f"{blocked.BLOCK}, got shape {x.shape}")
        return [Info(x.shape, F32)]

    def inplace_inputs(self, ins, outs):
        return same_shape_inputs(ins, outs, (0,))     # the pool reads x before any write

    def gate_threads(self, threads: int) -> int:
        return threads if self.w1t.size >= MIN_THREADED_GATE_WEIGHTS else 1

    def gates(self, pooled: np.ndarray, width=None, threads=1) -> np.ndarray:
        """(N, C) channel means -> (N, width) scale factors (width >= C; zeros past C), by
        kernels/squeeze_excite.pyx f32_se_gates: no BLAS call, so no thread pool to pin."""
        out = np.empty((pooled.shape[0], width or self.channels), np.float32)
        squeeze_excite.f32_se_gates(pooled, self.w1t, self.b1, self.w2t, self.b2, self.act,
                                    0 if self.gate == "sigmoid" else 1, self.alpha, self.beta,
                                    out, threads)
        return out

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        shape, c, gates = ins[0].shape, self.channels, self.gates
        n = shape[0]
        single = ins[0].size < MIN_THREADED_ELEMENTS
        if len(shape) == 5:
            cb = shape[1]

            def step(env, nt):
                x, threads = env[a], 1 if single else nt
                pooled = np.empty((n, c), np.float32)
                nchwc_channels.f32_global_avg_blocked(x, pooled, threads)
                nchwc_channels.f32_scale_blocked(x, gates(pooled, cb * blocked.BLOCK,
                                                                   self.gate_threads(nt)),
                                                 env[b], threads)
            return step
        hw = shape[2] * shape[3]
        gate = 0 if self.gate == "sigmoid" else 1

        def step(env, nt):
            squeeze_excite.f32_se_nchw(env[a].reshape(n, c, hw), self.w1t, self.b1, self.w2t,
                                       self.b2, self.act, gate, self.alpha, self.beta,
                                       env[b].reshape(n, c, hw), 1 if single else nt,
                                       self.gate_threads(nt))
        return step

    def flops(self, ins, outs):
        return float(2 * ins[0].size + 4 * self.w1t.size * ins[0].shape[0])

    def describe(self, ins, outs):
        act = f" -> {self.activation}" if self.activation else ""
        where = f"on the {blocked.NAME} input in place" if len(ins[0].shape) == 5 else "on NCHW"
        return (f"squeeze-excite in one step: mean -> 1x1 ({self.w1t.shape[0]}->"
                f"{self.w1t.shape[1]}){act} -> 1x1 -> {self.gate} -> scale, {where}")

