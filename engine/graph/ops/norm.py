"""Normalisation node plans: Softmax, BatchNormalization left standing after the passes (one
not after a convolution) and local response normalisation (LRN).
"""
from __future__ import annotations

import math

import numpy as np

from .base import F32, Info, Op, register, same_shape_inputs


# ============================================================================ softmax, batch norm

@register
class Softmax(Op):
    """Softmax over ``axis`` (opset 13); ``coerce_2d`` = 1 gives the opset 1-12 operator, which
    normalises over all axes from ``axis`` on."""
    kind = "Softmax"
    attributes = {"axis": "int", "coerce_2d": "int"}

    def setup(self, constants):
        self.coerce = bool(self.attr("coerce_2d", 0))
        self.axis_attr = self.attr("axis", 1 if self.coerce else -1)

    def infer(self, ins):
        x = self.float_in(ins, 0)
        rank = max(len(x.shape), 1)
        self.ax = self.axis(self.axis_attr, rank)
        return [Info(x.shape, F32)]

    def flops(self, ins, outs):
        return 4.0 * outs[0].size

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        shape = outs[0].shape
        if self.coerce:
            view = (math.prod(shape[:self.ax]), math.prod(shape[self.ax:]))
            axis = 1
        else:
            view, axis = shape, self.ax

        def step(env, nt):
            x = env[a].reshape(view)
            out = env[b].reshape(view)
            np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
            np.exp(out, out=out)
            np.divide(out, out.sum(axis=axis, keepdims=True), out=out)
        return step


@register
class BatchNormalization(Op):
    """Inference BatchNormalization left standing (one not after a convolution): the
    per-channel scale and shift are computed once, in float64. ``spatial`` = 0 (opset < 9)
    takes statistics per channel and position."""
    kind = "BatchNormalization"
    n_inputs = (5, 5)
    attributes = {"epsilon": "float", "spatial": "int"}
    weights = (1, 2, 3, 4)

    def setup(self, constants):
        eps = float(self.attr("epsilon", 1e-5))
        params = [self.const(constants, k, w).astype(np.float64)
                  for k, w in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
        shape = params[0].shape
        if any(p.shape != shape for p in params) or len(shape) < 1:
            raise self.error(f"scale, B, mean and var must have one common shape, got "
                             f"{[p.shape for p in params]}")
        self.spatial = bool(self.attr("spatial", 1))
        if self.spatial and len(shape) != 1:
            raise self.error(f"scale, B, mean and var must be 1-D (C,), got {shape}")
        scale, bias, mean, var = params
        if np.any(var + eps < 0):
            raise self.error("var + epsilon has negative entries")
        s = scale / np.sqrt(var + eps)
        self.scale = s.astype(np.float32)
        self.shift = (bias - mean * s).astype(np.float32)

    def infer(self, ins):
        x = self.float_in(ins, 0)
        if len(x.shape) < 2:
            raise self.error(f"X must have a channel axis, got shape {x.shape}")
        if self.spatial:
            if x.shape[1] != self.scale.shape[0]:
                raise self.error(f"X has {x.shape[1]} channels, the statistics "
                                 f"{self.scale.shape[0]}")
            self.view = (1, x.shape[1]) + (1,) * (len(x.shape) - 2)
        else:
            if x.shape[1:] != self.scale.shape:
                raise self.error(f"statistics of shape {self.scale.shape} do not match X "
                                 f"{x.shape} (spatial=0 takes one per channel and position)")
            self.view = (1,) + self.scale.shape
        return [Info(x.shape, F32)]

    def inplace_inputs(self, ins, outs):
        return same_shape_inputs(ins, outs, (0,))

    def flops(self, ins, outs):
        return 2.0 * outs[0].size

    def build(self, ins, outs, i, o):
        s, t = self.scale.reshape(self.view), self.shift.reshape(self.view)
        a, b = i[0], o[0]

        def step(env, nt):
            out = env[b]
            np.multiply(env[a], s, out=out)
            np.add(out, t, out=out)
        return step


# ============================================================================ local response norm

@register
class LRN(Op):
    """Local response normalisation across channels (ONNX's formula):
    y = x / (bias + alpha/size * sum of x^2 over the window)^beta, the window covering channels
    c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    kind = "LRN"
    attributes = {"alpha": "float", "beta": "float", "bias": "float", "size": "int"}

    def setup(self, constants):
        self.size = self.attr("size")
        if self.size is None or self.size < 1:
            raise self.error(f"size must be a positive integer, got {self.size!r}")
        self.alpha = float(self.attr("alpha", 1e-4))
        self.beta = float(self.attr("beta", 0.75))
        self.bias = float(self.attr("bias", 1.0))

    def infer(self, ins):
        x = self.float_in(ins, 0, rank=(3, 4, 5))
        return [Info(x.shape, F32)]

    def flops(self, ins, outs):
        return float(outs[0].size * (self.size + 4))

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        c = outs[0].shape[1]
        lo, hi = (self.size - 1) // 2, -(-(self.size - 1) // 2)
        scale, beta, bias = self.alpha / self.size, self.beta, self.bias

        def step(env, nt):
            x = env[a]
            sq = np.square(x, dtype=np.float64)
            csum = np.zeros((x.shape[0], c + 1) + x.shape[2:], np.float64)
            np.cumsum(sq, axis=1, out=csum[:, 1:])
            top = np.minimum(np.arange(c) + hi + 1, c)
            bottom = np.maximum(np.arange(c) - lo, 0)
            window = csum[:, top] - csum[:, bottom]
            np.divide(x, (bias + scale * window) ** beta, out=env[b], casting="unsafe")
        return step
