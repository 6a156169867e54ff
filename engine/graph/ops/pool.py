"""Pooling node plans: MaxPool and AveragePool on 1-D (as H = 1) and 2-D inputs, the global
pools and MaxUnpool.

The pooling layers follow PyTorch (symmetric padding of at most half the kernel); ONNX pools
outside that range run on an explicitly padded copy of the input (the choice is
engine/dispatch/pool.py's), its pads from engine.shapes, the average's divisors and MaxPool's
whole-tensor indices from engine.ops.pool.
"""
from __future__ import annotations

import math

import numpy as np

from ..._cache import ShapeCache
from ... import shapes
from ...dispatch.pool import choose_pool_path
from .base import F32, I64, Info, Op, register
from .conv import Windowed


# ============================================================================ pooling

class Pool(Windowed):
    """MaxPool and AveragePool on 1-D (as H = 1) and 2-D inputs."""
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "auto_pad": "str", "ceil_mode": "int",
                  "storage_order": "int", "count_include_pad": "int"}

    def setup(self, constants):
        ks = self.attr("kernel_shape")
        if ks is None or len(ks) not in (1, 2) or min(ks) < 1:
            raise self.error(f"kernel_shape must give 1 or 2 positive sizes (3-D pooling is "
                             f"not supported), got {ks}")
        self.window(len(ks), ks)
        self.ceil = bool(self.attr("ceil_mode", 0))
        self._layers = ShapeCache(8)

    def geometry(self, ins):
        x = self.float_in(ins, 0, "X", self.nd + 2)
        pads = self.pads_for(x.shape[2:])
        size = []
        for i, k, s, d, (pb, pe) in zip(x.shape[2:], self.kernel, self.strides,
                                        self.dilations, pads):
            o = shapes.onnx_pool_output_size(i, k, s, pb, pe, d, self.ceil)
            if o < 1:
                raise self.error(f"X {x.shape}: the window ({k}, dilation {d}) is larger than "
                                 f"the padded input")
            size.append(o)
        self.plan_pads = pads
        return x, tuple(size)

    def path(self, ins, outs) -> tuple[str, str]:
        """"direct" or "padded" for these shapes, and why (engine.dispatch.choose_pool_path)."""
        in_size = ins[0].shape[2:]
        return choose_pool_path(in_size, outs[0].shape[2:], self.kernel, self.strides,
                                self.dilations, self.pads_for(in_size), self.ceil)

    def describe(self, ins, outs):
        path, reason = self.path(ins, outs)
        return f"{self.what}, {path}: {reason}"

    def views(self, x_shape, out_shape):
        """Shapes as the 2-D layers see them (1-D pools run with H = 1)."""
        if self.nd == 2:
            return (x_shape, out_shape, self.kernel, self.strides, self.dilations,
                    self.plan_pads)
        return (x_shape[:2] + (1,) + x_shape[2:], out_shape[:2] + (1,) + out_shape[2:],
                (1,) + self.kernel, (1,) + self.strides, (1,) + self.dilations,
                ((0, 0),) + self.plan_pads)

    def padded_widths(self, x4, o4, kernel, stride, dil, pads):
        """np.pad widths of the explicitly padded copy."""
        return ((0, 0), (0, 0)) + shapes.onnx_pool_explicit_pads(x4[2:], o4[2:], kernel, stride,
                                                                 dil, pads)

    def layer(self, key, make):
        def checked():
            try:
                return make()
            except ValueError as e:
                raise self.error(str(e)) from None
        return self._layers.get(key, checked)

    def flops(self, ins, outs):
        return float(outs[0].size * math.prod(self.kernel))


@register
class MaxPool(Pool):
    kind = "MaxPool"
    what = "max pooling"
    n_outputs = (1, 2)

    def setup(self, constants):
        super().setup(constants)
        self.storage_order = self.attr("storage_order", 0)
        if self.storage_order not in (0, 1):
            raise self.error(f"storage_order must be 0 or 1, got {self.storage_order}")
        if self.attr("count_include_pad") is not None:
            raise self.error("unknown attribute 'count_include_pad'")

    def infer(self, ins):
        x, size = self.geometry(ins)
        shape = x.shape[:2] + size
        outs = [Info(shape, F32)]
        if len(self.node.outputs) > 1:
            outs.append(Info(shape, I64))
        return outs

    def build(self, ins, outs, i, o):
        from ...ops.pool import MaxPool2d, onnx_max_indices
        x4, o4, kernel, stride, dil, pads = self.views(ins[0].shape, outs[0].shape)
        a, b = i[0], o[0]
        want_idx = len(o) > 1 and bool(self.node.outputs[1])
        idx = o[1] if want_idx else None
        if self.path(ins, outs)[0] == "direct":
            pad = tuple(p for p, _ in pads)
            layer = self.layer(("direct", pad), lambda: MaxPool2d(
                kernel, stride, pad, dil, self.ceil, return_indices=want_idx))
            widths = None
        else:
            widths = self.padded_widths(x4, o4, kernel, stride, dil, pads)
            layer = self.layer(("padded",), lambda: MaxPool2d(kernel, stride, 0, dil, False,
                                                            return_indices=want_idx))
        run = layer.run
        if not want_idx:
            if widths is None:
                def step(env, nt):
                    run(env[a].reshape(x4), env[b].reshape(o4), None, nt)
            else:
                def step(env, nt):
                    xp = np.pad(env[a].reshape(x4), widths, constant_values=-np.inf)
                    run(xp, env[b].reshape(o4), None, nt)
            return step
        # ONNX counts indices over the whole tensor, in the unpadded planes
        convert = onnx_max_indices(x4, None if widths is None else widths[2:],
                                   column_major=self.storage_order == 1)

        def step(env, nt):
            xv = env[a].reshape(x4)
            if widths is not None:
                xv = np.pad(xv, widths, constant_values=-np.inf)
            ind = env[idx].reshape(o4)
            run(xv, env[b].reshape(o4), ind, nt)
            convert(ind)
        return step


@register
class AveragePool(Pool):
    kind = "AveragePool"
    what = "average pooling"

    def setup(self, constants):
        super().setup(constants)
        if any(d != 1 for d in self.dilations):
            raise self.error(f"dilations {list(self.dilations)} are not supported for "
                             f"average pooling")
        self.include_pad = bool(self.attr("count_include_pad", 0))
        if self.attr("storage_order") is not None:
            raise self.error("unknown attribute 'storage_order'")

    def infer(self, ins):
        x, size = self.geometry(ins)
        return [Info(x.shape[:2] + size, F32)]

    def build(self, ins, outs, i, o):
        from ...ops.pool import AvgPool2d, onnx_avgpool_scale
        x4, o4, kernel, stride, dil, pads = self.views(ins[0].shape, outs[0].shape)
        a, b = i[0], o[0]
        if self.path(ins, outs)[0] == "direct":
            pad = tuple(p for p, _ in pads)
            run = self.layer(("direct", pad), lambda: AvgPool2d(
                kernel, stride, pad, self.ceil, self.include_pad)).run

            def step(env, nt):
                run(env[a].reshape(x4), env[b].reshape(o4), nt)
            return step
        # Zero-padded copy, every window averaged over the whole kernel, then rescaled to the
        # divisor ONNX uses
        widths = self.padded_widths(x4, o4, kernel, stride, dil, pads)
        run = self.layer(("padded",), lambda: AvgPool2d(kernel, stride, 0, False, True)).run
        factor = onnx_avgpool_scale(x4[2:], o4[2:], kernel, stride, pads, self.include_pad)

        def step(env, nt):
            xp = np.pad(env[a].reshape(x4), widths)
            out = env[b].reshape(o4)
            run(xp, out, nt)
            np.multiply(out, factor, out=out)
        return step


class GlobalPool(Op):
    storage = "alloc"

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", (3, 4, 5))
        if math.prod(x.shape[2:]) < 1:
            raise self.error(f"X has no spatial elements: {x.shape}")
        return [Info(x.shape[:2] + (1,) * (len(x.shape) - 2), F32)]

    def flops(self, ins, outs):
        return float(ins[0].size)

    def build(self, ins, outs, i, o):
        from ...ops import pool
        fn = getattr(pool, self.function)
        n, c = ins[0].shape[:2]
        view = (n, c, math.prod(ins[0].shape[2:]), 1)
        shape = outs[0].shape
        a, b = i[0], o[0]

        def step(env, nt):
            env[b] = fn(env[a].reshape(view)).reshape(shape)
        return step


@register
class GlobalAveragePool(GlobalPool):
    kind = "GlobalAveragePool"
    function = "global_avg_pool2d"


@register
class GlobalMaxPool(GlobalPool):
    kind = "GlobalMaxPool"
    function = "global_max_pool2d"


@register
class MaxUnpool(Op):
    """MaxUnpool with ONNX's whole-tensor indices (as MaxPool returns them)."""
    kind = "MaxUnpool"
    n_inputs = (2, 3)
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints"}
    storage = "alloc"

    def setup(self, constants):
        ks = self.attr("kernel_shape")
        if ks is None or len(ks) != 2 or min(ks) < 1:
            raise self.error(f"kernel_shape must give 2 positive sizes (2-D unpooling), got "
                             f"{ks}")
        self.kernel = tuple(ks)
        self.strides = self.ints("strides", 2, 1, minimum=1)
        pads = self.ints("pads", 4, 0, minimum=0)
        self.pad_pairs = ((pads[0], pads[2]), (pads[1], pads[3]))

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 4)
        idx = ins[1]
        if idx.shape != x.shape or idx.dtype.kind not in "iu":
            raise self.error(f"I must be integer indices of X's shape {x.shape}, got "
                             f"{idx.dtype} {idx.shape}")
        shape = self.known(ins, 2, "output_shape")
        if shape is not None:
            shape = tuple(int(d) for d in shape.reshape(-1))
            if len(shape) != 4 or shape[:2] != x.shape[:2] or min(shape) < 1:
                raise self.error(f"output_shape {list(shape)} must be (N, C, H, W) with X's N "
                                 f"and C {x.shape[:2]}")
        else:
            size = tuple(shapes.conv_transpose_output_size(i, k, s, pb, pe, 0, 1)
                         for i, k, s, (pb, pe) in zip(x.shape[2:], self.kernel, self.strides,
                                                      self.pad_pairs))
            if min(size) < 1:
                raise self.error(f"X {x.shape} gives an empty output")
            shape = x.shape[:2] + size
        return [Info(shape, F32)]

    def build(self, ins, outs, i, o):
        from ...ops.pool import max_unpool2d_onnx
        a, k, b, shape = i[0], i[1], o[0], outs[0].shape

        def step(env, nt):
            env[b] = max_unpool2d_onnx(env[a], env[k], shape, nt)
        return step

    def flops(self, ins, outs):
        return float(outs[0].size)
