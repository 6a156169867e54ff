"""Pooling node plans: MaxPool, AveragePool and LpPool on 1-D, 2-D and 3-D inputs, the global
pools (GlobalLpPool too) and MaxUnpool.

The pooling layers are 2-D and follow PyTorch (symmetric padding of at most half the kernel);
1-D pools run them with H = 1, and ONNX pools outside that range run on an explicitly padded
copy of the input (the choice is engine/dispatch/pool.py's), its pads from engine.shapes, the
average's divisors and MaxPool's whole-tensor indices from engine.ops.pool. A 3-D max pool runs
as two 2-D ones. What no kernel takes (other 3-D pools, dilated averages, Lp pooling) runs in
NumPy (engine.ops.pool.OnnxWindowPool).
"""
from __future__ import annotations

import math

import numpy as np

from ..._cache import ShapeCache
from ... import shapes
from ...dispatch.pool import choose_pool_path
from .base import F32, I64, Info, Op, check_tensor_size, register
from .conv import Windowed


# ============================================================================ pooling

# What a pool may take. Real windows take a few dozen taps per element of X and Y; a window
# many times the input, reaching deep into its padding, takes millions (hours, for a small
# output; the average pooling kernel visits every column of a window, the "padded" and "numpy"
# paths every tap of a padded copy): refused beyond MAX_TAPS_PER_ELEMENT once the taps exceed
# MAX_TAPS. The NumPy path loops in Python over each axis's taps (a strided view each), so an
# axis's kernel is bounded too.
MAX_TAPS = 2**32
MAX_TAPS_PER_ELEMENT = 1024
MAX_NUMPY_AXIS_TAPS = 2**16

class Pool(Windowed):
    """What MaxPool, AveragePool and LpPool share: the window on 1 to 3 spatial axes, ONNX's
    output size and the path a shape runs on."""
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "auto_pad": "str", "ceil_mode": "int"}
    mode = ""          # OnnxWindowPool's name for the reduction

    def setup(self, constants):
        ks = self.attr("kernel_shape")
        if ks is None or len(ks) not in (1, 2, 3):
            raise self.error(f"kernel_shape must give 1 to 3 sizes (1-D to 3-D pooling), "
                             f"got {ks}")
        self.window(len(ks), ks)
        if self.auto_pad == "NOTSET" and any(p >= k for pair, k in zip(self.pad_pairs,
                                                                       self.kernel)
                                             for p in pair):
            # ONNX Runtime's rule: a window would otherwise start in the padding only
            raise self.error(f"pads {list(self.attr('pads'))} must be smaller than "
                             f"kernel_shape {list(self.kernel)}")
        self.ceil = self.attr("ceil_mode", 0)
        if self.ceil not in (0, 1):
            raise self.error(f"ceil_mode must be 0 or 1, got {self.ceil}")
        self.ceil = bool(self.ceil)
        self._layers = ShapeCache(8)

    def geometry(self, ins):
        """(X's Info, output size), checked; pads_for(X's size) gives the pads."""
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
        return x, tuple(size)

    def infer(self, ins):
        x, size = self.geometry(ins)
        self.check_cost(x.shape, x.shape[:2] + size)
        return [Info(x.shape[:2] + size, F32)]

    def check_cost(self, x_shape, out_shape):
        """Refuses, before anything is made, a pool whose taps would take hours or whose
        padded copy (paths other than "direct") would not fit the memory budget (the limits
        above)."""
        taps = math.prod(out_shape) * math.prod(self.kernel)
        elements = math.prod(x_shape) + math.prod(out_shape)
        if taps > MAX_TAPS and taps > MAX_TAPS_PER_ELEMENT * elements:
            raise self.error(f"kernel_shape {list(self.kernel)} on X {tuple(x_shape)} would take "
                             f"{taps:.3g} taps, {taps / elements:.0f} per element of X and Y: "
                             f"the window reaches far into its padding")
        in_size, out_size = x_shape[2:], out_shape[2:]
        pads = self.pads_for(in_size)
        path, _ = choose_pool_path(in_size, out_size, self.kernel, self.strides,
                                   self.dilations, pads, self.ceil, self.mode,
                                   self.wants_indices())
        if path == "direct":
            return
        explicit = shapes.onnx_pool_explicit_pads(in_size, out_size, self.kernel, self.strides,
                                                  self.dilations, pads)
        padded = x_shape[:2] + tuple(i + pb + pe for i, (pb, pe) in zip(in_size, explicit))
        check_tensor_size(self, padded, F32, "the padded copy of X", folding=True)
        if path == "numpy" and max(self.kernel) > MAX_NUMPY_AXIS_TAPS:
            raise self.error(f"kernel_shape {list(self.kernel)}: pooling in NumPy takes at most "
                             f"{MAX_NUMPY_AXIS_TAPS} taps along an axis")

    def wants_indices(self) -> bool:
        """Whether the node's second output (MaxPool's Indices) is asked for."""
        return len(self.node.outputs) > 1 and bool(self.node.outputs[1])

    def path(self, ins, outs) -> tuple[str, str]:
        """"direct", "padded", "separable" or "numpy" for these shapes, and why
        (engine.dispatch.choose_pool_path)."""
        in_size = ins[0].shape[2:]
        return choose_pool_path(in_size, outs[0].shape[2:], self.kernel, self.strides,
                                self.dilations, self.pads_for(in_size), self.ceil, self.mode,
                                self.wants_indices())

    def describe(self, ins, outs):
        if self.mode == "avg" and self.whole_map(ins[0].shape):
            return f"{self.what} over the whole map: a global average"
        path, reason = self.path(ins, outs)
        return f"{self.what}, {path}: {reason}"

    def views(self, x_shape, out_shape):
        """Shapes as the 2-D layers see them (1-D pools run with H = 1)."""
        pads = self.pads_for(x_shape[2:])
        if self.nd == 2:
            return (x_shape, out_shape, self.kernel, self.strides, self.dilations, pads)
        return (x_shape[:2] + (1,) + x_shape[2:], out_shape[:2] + (1,) + out_shape[2:],
                (1,) + self.kernel, (1,) + self.strides, (1,) + self.dilations,
                ((0, 0),) + pads)

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

    def numpy_pool(self, ins, outs, **options):
        """The NumPy pool for these shapes (engine.ops.pool.OnnxWindowPool)."""
        from ...ops.pool import OnnxWindowPool
        x_shape, out_size = ins[0].shape, outs[0].shape[2:]
        key = ("numpy", x_shape, tuple(sorted(options.items())))
        return self.layer(key, lambda: OnnxWindowPool(
            self.mode, x_shape, out_size, self.kernel, self.strides, self.dilations,
            self.pads_for(x_shape[2:]), **options))

    def build_numpy(self, ins, outs, i, o, **options):
        run = self.numpy_pool(ins, outs, **options).run
        a, b = i[0], o[0]

        def step(env, nt):
            run(env[a], env[b])
        return step

    def flops(self, ins, outs):
        return float(outs[0].size * math.prod(self.kernel))


@register
class MaxPool(Pool):
    kind = "MaxPool"
    what = "max pooling"
    mode = "max"
    n_outputs = (1, 2)
    attributes = {**Pool.attributes, "storage_order": "int"}

    def setup(self, constants):
        super().setup(constants)
        self.storage_order = self.attr("storage_order", 0)
        if self.storage_order not in (0, 1):
            raise self.error(f"storage_order must be 0 or 1, got {self.storage_order}")

    def infer(self, ins):
        outs = super().infer(ins)
        if len(self.node.outputs) > 1:
            outs.append(Info(outs[0].shape, I64))
        return outs

    def max2d(self, key, x4, o4, kernel, stride, dil, pads, indices=False):
        """(run, widths) of a 2-D max pool of these 4-D shapes: the layer's run(x, out,
        indices, threads), taking the pads itself (widths None) or run on a copy of x padded
        with -inf by np.pad ``widths`` (engine.dispatch.choose_pool_path). ``key`` names the
        layers made for it among the node's."""
        from ...ops.pool import MaxPool2d
        path, _ = choose_pool_path(x4[2:], o4[2:], kernel, stride, dil, pads, self.ceil)
        if path == "direct":
            pad = tuple(p for p, _ in pads)
            return self.layer(key + ("direct", pad), lambda: MaxPool2d(
                kernel, stride, pad, dil, self.ceil, return_indices=indices)).run, None
        widths = self.padded_widths(x4, o4, kernel, stride, dil, pads)
        return self.layer(key + ("padded",), lambda: MaxPool2d(
            kernel, stride, 0, dil, False, return_indices=indices)).run, widths

    def max2d_values(self, key, x4, o4, kernel, stride, dil, pads):
        """pool(x, out, threads): max2d's layer without indices, the padding done."""
        run, widths = self.max2d(key, x4, o4, kernel, stride, dil, pads)
        if widths is None:
            return lambda x, out, nt: run(x, out, None, nt)
        return lambda x, out, nt: run(np.pad(x, widths, constant_values=-np.inf), out, None, nt)

    def build_separable(self, ins, outs, i, o):
        """A 3-D max pool as two 2-D ones: each frame's H x W into a buffer, then T with the
        frame's pooled pixels as the columns of a (T, OH * OW) plane (skipped for a window of
        one frame, stride 1, no padding along T)."""
        from ...ops.workspace import workspace
        n, c, t, h, w = ins[0].shape
        ot, oh, ow = outs[0].shape[2:]
        (kt, kh, kw), (st, sh, sw), (dt, dh, dw) = self.kernel, self.strides, self.dilations
        pads = self.pads_for((t, h, w))
        p, a, b = n * c, i[0], o[0]
        frames = self.max2d_values(("frames",), (p, t, h, w), (p, t, oh, ow), (kh, kw),
                                   (sh, sw), (dh, dw), pads[1:])
        if (kt, st) == (1, 1) and pads[0] == (0, 0):
            def step(env, nt):
                frames(env[a].reshape(p, t, h, w), env[b].reshape(p, t, oh, ow), nt)
            return step
        frames_t = self.max2d_values(("time",), (p, 1, t, oh * ow), (p, 1, ot, oh * ow),
                                     (kt, 1), (st, 1), (dt, 1), (pads[0], (0, 0)))
        size = p * t * oh * ow

        def step(env, nt):
            buf = workspace.take(size)
            try:
                mid = buf[:size]
                frames(env[a].reshape(p, t, h, w), mid.reshape(p, t, oh, ow), nt)
                frames_t(mid.reshape(p, 1, t, oh * ow), env[b].reshape(p, 1, ot, oh * ow), nt)
            finally:
                workspace.give(buf)
        return step

    def build(self, ins, outs, i, o):
        from ...ops.pool import onnx_avgpool_divisor, onnx_max_indices
        want_idx = self.wants_indices()
        path = self.path(ins, outs)[0]
        if path == "separable":
            return self.build_separable(ins, outs, i, o)
        if path == "numpy":
            if not want_idx:
                return self.build_numpy(ins, outs, i, o)
            run = self.numpy_pool(ins, outs, column_major=self.storage_order == 1).run
            a, b, idx = i[0], o[0], o[1]

            def step(env, nt):
                run(env[a], env[b], env[idx])
            return step
        x4, o4, kernel, stride, dil, pads = self.views(ins[0].shape, outs[0].shape)
        a, b = i[0], o[0]
        if not want_idx:
            pool = self.max2d_values((), x4, o4, kernel, stride, dil, pads)

            def step(env, nt):
                pool(env[a].reshape(x4), env[b].reshape(o4), nt)
            return step
        idx = o[1]
        run, widths = self.max2d((), x4, o4, kernel, stride, dil, pads, indices=True)
        # ONNX counts indices over the whole tensor, in the unpadded planes
        empty = onnx_avgpool_divisor(x4[2:], o4[2:], kernel, stride, dil, pads, False) == 0
        convert = onnx_max_indices(x4, None if widths is None else widths[2:],
                                   column_major=self.storage_order == 1, empty=empty)

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
    mode = "avg"
    attributes = {**Pool.attributes, "count_include_pad": "int"}

    def setup(self, constants):
        super().setup(constants)
        self.include_pad = self.attr("count_include_pad", 0)
        if self.include_pad not in (0, 1):
            raise self.error(f"count_include_pad must be 0 or 1, got {self.include_pad}")
        self.include_pad = bool(self.include_pad)

    def whole_map(self, x_shape) -> bool:
        """Whether the window is the whole unpadded 2-D map (ResNets exported from Caffe2
        end on a 7x7 AveragePool): a global average then, whatever the stride or
        count_include_pad."""
        return (self.nd == 2 and len(x_shape) == 4 and tuple(self.kernel) == tuple(x_shape[2:])
                and all(d == 1 for d in self.dilations)
                and all(p == 0 for pair in self.pads_for(x_shape[2:]) for p in pair))

    def build(self, ins, outs, i, o):
        from ...ops.pool import AvgPool2d, global_avg_pool2d, onnx_avgpool_scale
        if self.whole_map(ins[0].shape):
            a, b = i[0], o[0]

            def step(env, nt):
                global_avg_pool2d(env[a], out=env[b], num_threads=nt)
            return step
        path = self.path(ins, outs)[0]
        if path == "numpy":
            return self.build_numpy(ins, outs, i, o, count_include_pad=self.include_pad)
        x4, o4, kernel, stride, dil, pads = self.views(ins[0].shape, outs[0].shape)
        a, b = i[0], o[0]
        if path == "direct":
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


def _lp_order(op, p):
    """p of LpPool and GlobalLpPool, a positive int (a float only before opset 2, which the
    importer does not read)."""
    if p is None:
        return 2
    if p < 1:
        raise op.error(f"p must be a positive integer, got {p}")
    return p


@register
class LpPool(Pool):
    kind = "LpPool"
    what = "Lp pooling"
    mode = "lp"
    attributes = {**Pool.attributes, "p": "int"}

    def setup(self, constants):
        super().setup(constants)
        self.p = _lp_order(self, self.attr("p"))

    def build(self, ins, outs, i, o):
        return self.build_numpy(ins, outs, i, o, p=self.p)

    def describe(self, ins, outs):
        return f"p={self.p}, " + super().describe(ins, outs)


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
class GlobalLpPool(GlobalPool):
    """(sum of |x|**p over each plane)**(1/p), in NumPy."""
    kind = "GlobalLpPool"
    attributes = {"p": "int"}

    def setup(self, constants):
        self.p = _lp_order(self, self.attr("p"))

    def build(self, ins, outs, i, o):
        from ...ops.pool import global_lp_pool
        a, b, p = i[0], o[0], self.p

        def step(env, nt):
            env[b] = global_lp_pool(env[a], p)
        return step

    def describe(self, ins, outs):
        return f"p={self.p}"


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
