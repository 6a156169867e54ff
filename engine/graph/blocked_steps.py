"""The steps the layout pass (engine/graph/layout.py) puts in a plan around the convolutions:
layout changes between NCHW and NCHWc, and the pools, batch normalizations, Concats, global
average pools and broadcasts that read and write channel blocks (nchwc.pyx,
nchwc_channels.pyx, pool_nchwc.pyx). The convolutions on blocks are in blocked_conv.py. Each
step is made per plan from the graph's node and its NCHW shapes."""
from __future__ import annotations

import numpy as np

from .._kernels import nchwc, nchwc_channels, pool_nchwc
from ..ops import blocked
from ..ops.activation import kernel_act
from ..ops.pool import onnx_avgpool_divisor
from .ops import F32, Info, Op

# Elements below which a layout change (and the blocked average pool) runs on one thread: a
# second thread pays from about 16K (bench/bench_dispatch.py layout/convert).
MIN_CONVERT_ELEMENTS = 1 << 14


class _Internal(Op):
    """An op the layout pass makes: no attributes of its own, never read from a file."""
    def __init__(self, node):
        super().__init__(node, {})


class _LayoutChange(_Internal):
    """One step that rewrites a tensor in the other layout (``kernel``)."""
    kernel = None

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        kernel = type(self).kernel
        single = outs[0].size < MIN_CONVERT_ELEMENTS

        def step(env, nt):
            kernel(env[a], env[b], 1 if single else nt)
        return step


class BlockedShape(_Internal):
    """Shape or Size of a tensor the plan holds blocked only: the graph's op on the logical
    (NCHW) shape, folded while planning, so that reading a shape needs no layout change."""

    def __init__(self, node, op, logical):
        super().__init__(node)
        self.kind, self.op, self.logical = op.kind, op, logical

    def infer(self, ins):
        return self.op.infer([Info(self.logical.shape, self.logical.dtype)])


class ToBlocked(_LayoutChange):
    kind = "ToBlocked"
    kernel = nchwc.f32_to_blocked

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 4)
        return [Info(blocked.blocked_shape(x.shape), F32)]

    def describe(self, ins, outs):
        return f"layout: NCHW -> {blocked.NAME} for the blocked layers that read it"


class FromBlocked(_LayoutChange):
    kind = "FromBlocked"
    kernel = nchwc.f32_from_blocked

    def __init__(self, node, channels):
        super().__init__(node)
        self.channels = channels

    def infer(self, ins):
        n, _, h, w, _ = self.float_in(ins, 0, "X", 5).shape
        return [Info((n, self.channels, h, w), F32)]

    def describe(self, ins, outs):
        return f"layout: {blocked.NAME} -> NCHW for a reader that needs NCHW"


class BlockedBroadcast(_Internal):
    """A Resize of a 1x1 map (DeepLabV3's image-pooling branch, back to the backbone's size):
    every tap of every output pixel reads the one input pixel, so each block's vector is copied
    to every pixel, blocked in and out. ``shape``: the NCHW output shape."""
    kind = "Resize"

    def __init__(self, node, shape):
        super().__init__(node)
        self.shape = tuple(shape)

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 5)
        want = blocked.blocked_shape(self.shape)
        if x.shape[:2] != want[:2] or x.shape[2:4] != (1, 1):
            raise self.error(f"X must be the 1x1 blocks {want[:2] + (1, 1, want[4])}, got "
                             f"{x.shape}")
        return [Info(want, F32)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]

        def step(env, nt):
            np.copyto(env[b], env[a])          # broadcast along H and W
        return step

    def describe(self, ins, outs):
        return f"a 1x1 map resized on {blocked.NAME}: each block's vector copied to every pixel"


class BlockedGlobalAveragePool(_Internal):
    """GlobalAveragePool, or a ReduceMean over H and W (``keepdims`` 0 drops them), reading
    the blocks in place."""
    kind = "GlobalAveragePool"

    def __init__(self, node, channels, keepdims=True):
        super().__init__(node)
        self.channels = channels
        self.keepdims = keepdims

    def infer(self, ins):
        n = self.float_in(ins, 0, "X", 5).shape[0]
        return [Info((n, self.channels) + ((1, 1) if self.keepdims else ()), F32)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        n, c = outs[0].shape[:2]

        single = ins[0].size < MIN_CONVERT_ELEMENTS

        def step(env, nt):
            nchwc_channels.f32_global_avg_blocked(env[a], env[b].reshape(n, c), 1 if single else nt)
        return step

    def flops(self, ins, outs):
        return float(ins[0].size)

    def describe(self, ins, outs):
        return f"on the {blocked.NAME} input in place"


class BlockedPool(_Internal):
    """A 2-D MaxPool (no indices) or AveragePool on blocks (kernels/pool_nchwc.pyx): ``pool``
    is the graph's op, ``x``/``y`` its NCHW Infos for this plan's shapes."""

    def __init__(self, node, pool, x, y):
        super().__init__(node)
        self.kind = node.op
        self.logical = (x, y)
        _, _, window, strides, dilations, pads = pool.views(x.shape, y.shape)
        self.window, self.strides, self.dilations = tuple(window), tuple(strides), tuple(dilations)
        self.pads = tuple(p for p, _ in pads)
        self.divisor = None
        if node.op == "AveragePool":
            self.divisor = onnx_avgpool_divisor(x.shape[2:], y.shape[2:], self.window,
                                                self.strides, self.dilations, pads,
                                                pool.include_pad).astype(np.float32)

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 5)
        if x.shape != blocked.blocked_shape(self.logical[0].shape):
            raise self.error(f"X must have the blocked shape "
                             f"{blocked.blocked_shape(self.logical[0].shape)}, got {x.shape}")
        return [Info(blocked.blocked_shape(self.logical[1].shape), F32)]

    def build(self, ins, outs, i, o):
        a, b, divisor = i[0], o[0], self.divisor
        args = self.window + self.strides + self.pads + self.dilations
        single = outs[0].size < MIN_CONVERT_ELEMENTS
        if divisor is None:
            def step(env, nt):
                pool_nchwc.f32_maxpool_blocked(env[a], env[b], *args, 1 if single else nt)
        else:
            def step(env, nt):
                pool_nchwc.f32_avgpool_blocked(env[a], env[b], divisor, *args,
                                                 1 if single else nt)
        return step

    def flops(self, ins, outs):
        return float(outs[0].size * self.window[0] * self.window[1])

    def describe(self, ins, outs):
        what = "max" if self.divisor is None else "average"
        return (f"{what} pooling on {blocked.NAME}: one vector of {blocked.BLOCK} channels per "
                "tap")


class BlockedBatchNorm(_Internal):
    """An inference BatchNormalization (and its fused activation) on blocks."""
    kind = "BatchNormalization"

    def __init__(self, node, bn, channels):
        super().__init__(node)
        cb = blocked.blocks(channels)
        self.scale = np.zeros(cb * blocked.BLOCK, np.float32)
        self.shift = np.zeros(cb * blocked.BLOCK, np.float32)
        self.scale[:channels], self.shift[:channels] = bn.scale, bn.shift
        self.activation = bn.activation

    def infer(self, ins):
        return [Info(self.float_in(ins, 0, "X", 5).shape, F32)]

    def inplace_inputs(self, ins, outs):
        return (0,)

    def build(self, ins, outs, i, o):
        a, b, s, t = i[0], o[0], self.scale, self.shift
        act = kernel_act(self.activation)
        single = outs[0].size < MIN_CONVERT_ELEMENTS

        def step(env, nt):
            nchwc_channels.f32_scale_shift_blocked(env[a], s, t, env[b], act, 1 if single else nt)
        return step

    def flops(self, ins, outs):
        return 2.0 * outs[0].size

    def describe(self, ins, outs):
        text = f"on {blocked.NAME}: one vector of scales and shifts per block"
        return text + (f" | + {self.activation} in the same pass" if self.activation else "")


class BlockedConcat(_Internal):
    """Concat along the channels of blocked tensors: the blocks one after another. For one
    image each input is one run of the output's bytes, where the memory planner may have it
    written in the first place (``placements``); the step copies the others."""
    kind = "Concat"
    n_inputs = (1, None)

    def __init__(self, node, channels):
        super().__init__(node)
        self.channels = channels
        self.placed_inputs = frozenset()

    def placements(self, ins, outs):
        if outs[0].shape[0] != 1:
            return []
        spots, at = [], 0
        for k, x in enumerate(ins):
            spots.append((k, at))
            at += x.size * x.dtype.itemsize
        return spots

    def infer(self, ins):
        xs = [self.float_in(ins, k, "inputs", 5) for k in range(len(ins))]
        n, _, h, w, b = xs[0].shape
        if any(x.shape[0] != n or x.shape[2:] != (h, w, b) for x in xs):
            raise self.error(f"blocked inputs {[x.shape for x in xs]} differ outside the blocks")
        return [Info((n, blocked.blocks(self.channels), h, w, b), F32)]

    def build(self, ins, outs, i, o):
        b, placed = o[0], self.placed_inputs
        if not placed:
            srcs = list(i)

            def step(env, nt):
                np.concatenate([env[k] for k in srcs], axis=1, out=env[b])
            return step
        copies, at = [], 0
        for k, x in enumerate(ins):
            if k not in placed:
                copies.append((i[k], at, at + x.shape[1]))
            at += x.shape[1]

        def step(env, nt):
            out = env[b]
            for k, lo, hi in copies:
                out[:, lo:hi] = env[k]
        return step

    def describe(self, ins, outs):
        text = f"on {blocked.NAME}: the inputs' blocks one after another"
        if self.placed_inputs:
            text += (f"; {len(self.placed_inputs)} of {len(ins)} written in place by the "
                     f"steps that make them, not copied")
        return text
