"""Convolution node plans, each running one of the engine's planned layers: Conv (1-D and 2-D
through engine.Conv2d, 3-D through engine.Conv3d), ConvTranspose and DeformConv; and
``Windowed``, the kernel, strides, dilations, pads and auto_pad they share with the pools.

ONNX describes padding as separate begin and end amounts, which the planned layers take for
convolutions. A ConvTranspose's pads follow from its output_shape or auto_pad as
engine.shapes.onnx_transpose_pads computes them; pads its planned layer cannot take run through
engine.ops.conv_transpose.ConvTransposeWindow.
"""
from __future__ import annotations

import math

import numpy as np

from ..._cache import ShapeCache
from ... import shapes
from ...ops.activation import apply_activation
from ...ops.conv2d import TransformedWeights, conv2d_for_size
from .base import F32, Info, Op, register

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _flat(pairs):
    """((b0, e0), (b1, e1), ...) -> (b0, b1, ..., e0, e1, ...), ONNX's order."""
    return tuple(b for b, _ in pairs) + tuple(e for _, e in pairs)


class Windowed(Op):
    """What convolutions and pools share: kernel, strides, dilations, pads and auto_pad."""

    def window(self, nd, kernel):
        self.nd = nd
        self.kernel = tuple(kernel)
        if any(not 1 <= k <= shapes.INDEX_MAX for k in self.kernel):
            raise self.error(f"kernel_shape must be positive and at most {shapes.INDEX_MAX}, "
                             f"got {list(self.kernel)}")
        ks = self.attr("kernel_shape")
        if ks is not None and tuple(ks) != self.kernel:
            raise self.error(f"kernel_shape {list(ks)} does not match the weight's "
                             f"{list(self.kernel)}")
        self.strides = self.ints("strides", nd, 1, minimum=1)
        self.dilations = self.ints("dilations", nd, 1, minimum=1)
        pads = self.ints("pads", 2 * nd, 0)
        self.pad_pairs = tuple((pads[a], pads[a + nd]) for a in range(nd))
        self.auto_pad = self.attr("auto_pad", "NOTSET")
        if self.auto_pad not in AUTO_PADS:
            raise self.error(f"auto_pad must be one of {AUTO_PADS}, got {self.auto_pad!r}")

    def pads_for(self, in_size, negative_ok=False):
        if any(i < 1 for i in in_size):
            raise self.error(f"X has an empty spatial dimension: {tuple(in_size)}")
        if self.auto_pad == "NOTSET":
            if not negative_ok and any(p < 0 for pair in self.pad_pairs for p in pair):
                raise self.error(f"pads must be non-negative, got {_flat(self.pad_pairs)}")
            pads = self.pad_pairs
        else:
            pads = shapes.onnx_auto_pads(self.auto_pad, in_size, self.kernel, self.strides,
                                         self.dilations)
        try:
            shapes.check_extent(in_size, pads, self.kernel, self.dilations, "pads")
        except ValueError as e:
            raise self.error(str(e)) from None
        return pads

    def fix_runtime_weights(self, ins, w_index, b_index):
        """Weights computed at run time: the first plan's W and B (shape and dtype) are checked
        and fix the node's window, group and channels, as constant weights do in setup; a
        later plan must meet the same, so no plan changes what an earlier one planned with."""
        w = self.float_in(ins, w_index, "W")
        b = ins[b_index] if len(ins) > b_index else None
        key = (tuple(w.shape), w.dtype, None if b is None else (tuple(b.shape), b.dtype))
        fixed = getattr(self, "_runtime_weight_key", None)
        if fixed is None:
            self._check_weights(*key)
            self._runtime_weight_key = key
        elif key != fixed:
            raise self.error(f"W {key[0]} and B {key[2] and key[2][0]} differ from the "
                             f"{fixed[0]} and {fixed[2] and fixed[2][0]} this node was "
                             f"planned with: weights computed at run time keep one shape")


def _conv_geometry(op, ins, rank) -> tuple:
    """(pads, output shape) of a convolution op (Conv, DeformConv) on X = ins[0] of ``rank``
    dimensions, checked against the op's weights and window."""
    x = op.float_in(ins, 0, "X", rank)
    channels = op.w_shape[1] * op.group
    if x.shape[1] != channels:
        raise op.error(f"X must have {channels} channels (W.shape[1] * group = "
                       f"{op.w_shape[1]} * {op.group}), got shape {x.shape}")
    pads = op.pads_for(x.shape[2:])
    try:
        size = shapes.conv_output_shape(x.shape[2:], op.kernel, op.strides, pads, op.dilations)
    except ValueError as e:
        raise op.error(f"X {x.shape}: {e}") from None
    return pads, (x.shape[0], op.w_shape[0]) + size


def _activate(out, activation):
    if activation is not None:
        apply_activation(out, activation)


# ============================================================================ convolution

@register
class Conv(Windowed):
    """Conv, with two fusions the passes may add: ``activation`` (any of
    engine/ops/activation.py) runs in the kernel's output step, and a fourth input is a
    residual added to the convolution's output.
    Where the layer's algorithm adds a residual in its output step (pointwise; see
    Conv2d.fuses_residual) and the residual has the output's shape, the kernel does the add and
    the activation after it; otherwise the add is fused at plan level: the kernel writes the
    step's output buffer, then the add and the activation run in place on it within the step.

    The planned layer (engine.Conv2d; Conv1d's 2-D layer; Conv3d) is made per input size, so
    the dispatcher chooses with the real size: a model with a declared input shape transforms
    each weight once; free spatial dimensions make one layer per size met (the last 8 kept)."""
    kind = "Conv"
    n_inputs = (2, 4)
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "group": "int", "auto_pad": "str", "activation": "act"}
    weights = ()        # W and B may be constants (transformed once) or come at run time

    def setup(self, constants):
        self.runtime_weights = any(self.input_name(k) and self.input_name(k) not in constants
                                   for k in (1, 2))
        self.w = self.b = None
        if not self.runtime_weights:
            self.w, self.b = self.const(constants, 1, "W"), self.const(constants, 2, "B")
            self._check_weights(self.w.shape, self.w.dtype,
                                None if self.b is None else (self.b.shape, self.b.dtype))
        elif self.attr("kernel_shape") is not None:
            ks = self.attr("kernel_shape")
            self.window(len(ks), ks)
        self.activation = self.attr("activation")
        self.residual = bool(self.input_name(3))
        # every algorithm's transformed weights, made once for all the layers below (and per
        # kernel trimmed of taps that read only padding, engine.ops.conv2d.conv2d_for_size)
        self.transforms = TransformedWeights()
        self.trimmed_transforms = {}
        # planned layers per input size: one for a declared shape, the last 8 for free ones
        self._layers = ShapeCache(8)

    def _check_weights(self, w_shape, w_dtype, bias):
        """W's shape and dtype, and B's ((shape, dtype) or None); sets the window and group."""
        if w_dtype != F32 or len(w_shape) not in (3, 4, 5):
            raise self.error(f"W must be a float32 tensor of rank 3 to 5, got {w_dtype} "
                             f"{w_shape}")
        if bias is not None and (bias[1] != F32 or bias[0] != (w_shape[0],)):
            raise self.error(f"B must be float32 of shape ({w_shape[0]},), got {bias[1]} "
                             f"{bias[0]}")
        self.window(len(w_shape) - 2, w_shape[2:])
        self.group = self.attr("group", 1)
        if self.group < 1 or w_shape[0] % self.group:
            raise self.error(f"group {self.group} must be positive and divide the "
                             f"{w_shape[0]} output channels")
        if min(w_shape) < 1:
            raise self.error(f"W has an empty dimension: {w_shape}")
        self.w_shape = tuple(w_shape)

    def set_weights(self, w, b):
        """For passes that fold into this convolution (BatchNormalization)."""
        self.w, self.b = w, b
        self._layers.clear()
        self.transforms = TransformedWeights()
        self.trimmed_transforms = {}

    def infer(self, ins):
        if self.runtime_weights:
            self.fix_runtime_weights(ins, 1, 2)
        _, shape = self.geometry(ins)
        if self.residual:
            r = self.float_in(ins, 3, "residual")
            try:
                shape = np.broadcast_shapes(shape, r.shape)
            except ValueError:
                raise self.error(f"residual {r.shape} does not broadcast with the "
                                 f"convolution's output {shape}") from None
        return [Info(shape, F32)]

    def geometry(self, ins) -> tuple:
        """(pads, the convolution's output shape) for these inputs, checked: what infer, build
        and the layout pass need of a shape, computed from the inputs each time rather than
        kept on the op."""
        return _conv_geometry(self, ins, self.nd + 2)

    def layer(self, in_size, pads, residual_in_kernel=False):
        """The planned layer for this input size. residual_in_kernel: the residual has the
        output's shape, so an algorithm that adds it in its output step may, and then also
        applies the activation after it."""
        def make():
            layer = self._make_layer(in_size, pads, None if self.residual else self.activation)
            if residual_in_kernel and layer.fuses_residual and self.activation:
                layer = self._make_layer(in_size, pads, self.activation, layer.algorithm)
            return layer
        return self._layers.get((tuple(in_size), pads, residual_in_kernel), make)

    def _make_layer(self, in_size, pads, act, algorithm="auto", weights=None):
        """The planned layer; ``weights`` (W, B) given at run time are transformed for it
        alone, constant ones once for every layer of this node."""
        w, b = weights if weights is not None else (self.w, self.b)
        shared = weights is None
        try:
            if self.nd == 3:
                from ...ops.convnd import Conv3d
                return Conv3d(w, b, self.strides, _flat(pads), self.dilations,
                              self.group, activation=act)
            if self.nd == 2:
                return conv2d_for_size(w, b, self.strides, _flat(pads),
                                       self.dilations, self.group, activation=act,
                                       algorithm=algorithm, input_size=in_size,
                                       transforms=self.transforms if shared else None,
                                       trimmed_transforms=(self.trimmed_transforms if shared
                                                           else None))
            # engine.Conv1d runs a Conv2d on the (N, C, 1, L) view: run that
            from ...ops.convnd import Conv1d
            return Conv1d(w, b, self.strides, pads[0], self.dilations, self.group,
                          activation=act, algorithm=algorithm, input_size=in_size,
                          transforms=self.transforms if shared else None).layer2d
        except ValueError as e:
            raise self.error(str(e)) from None

    def _residual_in_kernel(self, ins, outs):
        return (self.residual and self.nd != 3
                and tuple(ins[3].shape) == tuple(outs[0].shape) == self.geometry(ins)[1])

    def build(self, ins, outs, i, o):
        if self.runtime_weights:
            return self._build_runtime(ins, outs, i, o)
        x_shape = ins[0].shape
        pads, conv_shape = self.geometry(ins)
        in_kernel = self._residual_in_kernel(ins, outs)
        layer = self.layer(x_shape[2:], pads, in_kernel)
        x_view, o_view = self._views(ins)
        g = layer.geometry(x_view)
        run = layer.run
        a, b = i[0], o[0]
        if not self.residual:
            if self.nd == 1:
                def step(env, nt):
                    run(env[a].reshape(x_view), env[b].reshape(o_view), g, nt)
            else:
                def step(env, nt):
                    run(env[a], env[b], g, nt)
            return step
        r, act = i[3], self.activation
        if in_kernel and layer.fuses_residual:
            def step(env, nt):   # the kernel adds the residual (and applies act) itself
                run(env[a].reshape(x_view), env[b].reshape(o_view), g, nt,
                    residual=env[r].reshape(o_view))
        elif outs[0].shape == conv_shape:
            def step(env, nt):
                out = env[b]
                run(env[a].reshape(x_view), out.reshape(o_view), g, nt)
                np.add(out, env[r], out=out)
                _activate(out, act)
        else:   # the residual is the larger operand: convolve into a scratch buffer
            def step(env, nt):
                tmp = np.empty(o_view, np.float32)
                run(env[a].reshape(x_view), tmp, g, nt)
                out = env[b]
                np.add(tmp.reshape(conv_shape), env[r], out=out)
                _activate(out, act)
        return step

    def _views(self, ins):
        """The shapes the planned layer sees: a 1-D convolution runs on (N, C, 1, L)."""
        x_shape, conv_shape = ins[0].shape, self.geometry(ins)[1]
        if self.nd == 1:
            return x_shape[:2] + (1,) + x_shape[2:], conv_shape[:2] + (1,) + conv_shape[2:]
        return x_shape, conv_shape

    def _build_runtime(self, ins, outs, i, o):
        """W (or B) is computed at run time: the layer is planned, and its weights
        transformed, on every run; the residual and activation follow it at plan level."""
        x_view, o_view = self._views(ins)
        in_size, (pads, conv_shape) = ins[0].shape[2:], self.geometry(ins)
        a, wi, y = i[0], i[1], o[0]
        bi = i[2] if len(i) > 2 and ins[2] is not None else None
        r = i[3] if self.residual else None
        act, make = self.activation, self._make_layer

        def step(env, nt):
            layer = make(in_size, pads, None if r is not None else act,
                         weights=(env[wi], None if bi is None else env[bi]))
            out = env[y]
            if r is None:
                layer.run(env[a].reshape(x_view), out.reshape(o_view),
                          layer.geometry(x_view), nt)
                return
            tmp = out if out.shape == conv_shape else np.empty(conv_shape, np.float32)
            layer.run(env[a].reshape(x_view), tmp.reshape(o_view), layer.geometry(x_view), nt)
            np.add(tmp, env[r], out=out)
            _activate(out, act)
        return step

    def flops(self, ins, outs):
        per_output = 2 * (self.w_shape[1]) * math.prod(self.kernel)
        extra = outs[0].size if self.residual else 0
        return float(math.prod(self.geometry(ins)[1]) * per_output + extra)

    def describe(self, ins, outs):
        if self.runtime_weights:
            return ("weights computed at run time: the layer is planned and its weights "
                    "transformed on every run")
        in_kernel = self._residual_in_kernel(ins, outs)
        layer = self.layer(ins[0].shape[2:], self.geometry(ins)[0], in_kernel)
        text = f"{layer.algorithm}: {layer.reason}"
        x = ins[0].shape
        sub = getattr(layer, "kernel_choice", None)
        sub = sub and sub(layer.geometry(x[:2] + (1,) + x[2:] if self.nd == 1 else x))
        if sub:
            text += f" | {layer.algorithm} {layer.choice_name} {sub[0]}: {sub[1]}"
        if self.residual:
            text += " | + residual add" + (f" + {self.activation}" if self.activation else "")
            text += (" in the kernel's output step" if in_kernel and layer.fuses_residual
                     else " (plan level, in place after the kernel)")
        elif self.activation:
            text += f" | + {self.activation} in the kernel's output step"
        return text


@register
class ConvTranspose(Windowed):
    """ConvTranspose in 1-D and 2-D on engine.ConvTranspose2d (1-D on the (N, C, 1, L) view),
    3-D on engine.ops.convnd.ConvTranspose3d. W and B may be constants (the layers are made
    once per shape from them) or computed at run time (the layer is made on every run)."""
    kind = "ConvTranspose"
    n_inputs = (2, 3)
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "group": "int", "auto_pad": "str",
                  "output_padding": "ints", "output_shape": "ints"}
    weights = ()

    def setup(self, constants):
        self.runtime_weights = any(self.input_name(k) and self.input_name(k) not in constants
                                   for k in (1, 2))
        self.w4 = self.b = None
        if not self.runtime_weights:
            w, b = self.const(constants, 1, "W"), self.const(constants, 2, "B")
            self._check_weights(w.shape, w.dtype, None if b is None else (b.shape, b.dtype))
            # the 2-D layers run a 1-D layer on the (N, C, 1, L) view
            self.w4 = w[:, :, None, :] if self.nd == 1 else w
            self.b = b
        self._layers = ShapeCache(8)

    def _check_weights(self, w_shape, w_dtype, bias):
        """W's shape and dtype, and B's ((shape, dtype) or None); sets the window, group,
        output padding and channels."""
        if w_dtype != F32 or len(w_shape) not in (3, 4, 5):
            raise self.error(f"W must be float32 of rank 3 to 5, got {w_dtype} {w_shape}")
        self.group = self.attr("group", 1)
        if self.group < 1 or w_shape[0] % self.group:
            raise self.error(f"group {self.group} must be positive and divide the "
                             f"{w_shape[0]} input channels")
        if min(w_shape) < 1:
            raise self.error(f"W has an empty dimension: {w_shape}")
        out_channels = w_shape[1] * self.group
        if bias is not None and (bias[1] != F32 or bias[0] != (out_channels,)):
            raise self.error(f"B must be float32 of shape ({out_channels},), got {bias[1]} "
                             f"{bias[0]}")
        self.window(len(w_shape) - 2, w_shape[2:])
        self.output_padding = self.ints("output_padding", self.nd, 0, minimum=0)
        self.output_shape = self.attr("output_shape")
        if self.output_shape is not None and len(self.output_shape) not in (self.nd,
                                                                            self.nd + 2):
            raise self.error(f"output_shape must have {self.nd} values, got "
                             f"{self.output_shape}")
        self.in_channels, self.out_channels = w_shape[0], out_channels

    def infer(self, ins):
        if self.runtime_weights:
            self.fix_runtime_weights(ins, 1, 2)
        return [Info(self.geometry(ins)[1], F32)]

    def geometry(self, ins) -> tuple:
        """(pads, output shape) for these inputs, checked, computed each time (as Conv's)."""
        x = self.float_in(ins, 0, "X", self.nd + 2)
        if x.shape[1] != self.in_channels:
            raise self.error(f"X must have {self.in_channels} channels (W.shape[0]), got "
                             f"shape {x.shape}")
        if min(x.shape[2:]) < 1:
            raise self.error(f"X has an empty spatial dimension: {x.shape}")
        pads, size = [], []
        for a, i in enumerate(x.shape[2:]):
            k, s, d, op = self.kernel[a], self.strides[a], self.dilations[a], \
                self.output_padding[a]
            if self.output_shape is not None or self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = (self.output_shape[-self.nd:][a] if self.output_shape is not None
                       else i * s)
                pb, pe = shapes.onnx_transpose_pads(i, k, s, d, op, out, self.auto_pad)
            else:
                pb, pe = self.pad_pairs[a] if self.auto_pad == "NOTSET" else (0, 0)
                out = shapes.conv_transpose_output_size(i, k, s, pb, pe, op, d)
            if out < 1:
                raise self.error(f"X {x.shape} gives an empty output along spatial axis {a}")
            pads.append((pb, pe))
            size.append(out)
        return tuple(pads), (x.shape[0], self.out_channels) + tuple(size)

    def _layer(self, key, cls, *args):
        """A planned layer made from constant weights (key: cached per shape), or from weights
        given at run time (key None: made for this call alone)."""
        def make():
            try:
                return cls(*args)
            except ValueError as e:
                raise self.error(str(e)) from None
        return make() if key is None else self._layers.get(key, make)

    def _planned(self, ins, outs, weights=None):
        """The 2-D view of this node for these shapes, the path engine.dispatch chose for its
        pads (with the reason) and the planned layer that runs it; ``weights`` (W as 4-D, B)
        when they come at run time."""
        from ...dispatch.transposed import choose_onnx_transpose_path
        from ...ops.conv_transpose import ConvTranspose2d
        w4, b = weights if weights is not None else (self.w4, self.b)
        nd, pads = self.nd, self.geometry(ins)[0]
        pairs = pads if nd == 2 else ((0, 0),) + pads
        stride = self.strides if nd == 2 else (1,) + self.strides
        dil = self.dilations if nd == 2 else (1,) + self.dilations
        kernel = self.kernel if nd == 2 else (1,) + self.kernel
        x_shape, out_shape = ins[0].shape, outs[0].shape
        x4 = x_shape if nd == 2 else x_shape[:2] + (1,) + x_shape[2:]
        o4 = out_shape if nd == 2 else out_shape[:2] + (1,) + out_shape[2:]
        op = tuple(o4[2 + a] - shapes.conv_transpose_output_size(
            x4[2 + a], kernel[a], stride[a], pairs[a][0], pairs[a][1], 0, dil[a])
            for a in range(2))
        path, reason = choose_onnx_transpose_path(pairs, op, stride, dil)
        keyed = weights is None
        if path == "layer":
            layer = self._layer(("layer", pairs, op) if keyed else None, ConvTranspose2d, w4, b,
                                stride, _flat(pairs), op, self.group, dil)
        else:
            layer = self._layer(("window",) if keyed else None, ConvTranspose2d, w4, None,
                                stride, 0, 0, self.group, dil)
        return x4, o4, pairs, path, reason, layer

    def _runner(self, ins, outs, weights=None):
        """run(x, out, num_threads) for these shapes."""
        if self.nd == 3:
            from ...ops.convnd import ConvTranspose3d
            w, b = weights if weights is not None else (self.w4, self.b)
            layer = self._layer(("3d",) if weights is None else None, ConvTranspose3d, w, b,
                                self.strides, self.dilations, self.group)
            pads = self.geometry(ins)[0]
            return lambda x, out, nt: layer.run(x, out, pads, nt)
        x4, o4, pairs, path, _, layer = self._planned(ins, outs, weights)
        if path == "layer":
            g = layer.geometry(x4)
            if tuple(g.out_size) != o4[2:]:
                raise self.error(f"internal size mismatch {g.out_size} vs {o4[2:]}")
            return lambda x, out, nt: layer.run(x.reshape(x4), out.reshape(o4), g, nt)
        from ...ops.conv_transpose import ConvTransposeWindow
        window = ConvTransposeWindow(layer, weights[1] if weights is not None else self.b,
                                     x4, o4, pairs)
        return lambda x, out, nt: window.run(x.reshape(x4), out.reshape(o4), nt)

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        if not self.runtime_weights:
            run = self._runner(ins, outs)

            def step(env, nt):
                run(env[a], env[b], nt)
            return step
        wi = i[1]
        bi = i[2] if len(i) > 2 and ins[2] is not None else None
        nd, runner = self.nd, self._runner

        def step(env, nt):     # weights computed at run time: plan the layer for this run
            w = env[wi]
            w = w[:, :, None, :] if nd == 1 else w
            runner(ins, outs, (w, None if bi is None else env[bi]))(env[a], env[b], nt)
        return step

    def flops(self, ins, outs):
        x = ins[0]
        return 2.0 * x.size * (self.out_channels // self.group) * math.prod(self.kernel)

    def describe(self, ins, outs):
        if self.runtime_weights:
            return ("weights computed at run time: the layer is planned and its weights "
                    "transformed on every run")
        if self.nd == 3:
            from ...ops.convnd import ConvTranspose3d
            return f"{ConvTranspose3d.algorithm}: {ConvTranspose3d.reason}"
        *_, path, reason, layer = self._planned(ins, outs)
        return f"{layer.algorithm}: {layer.reason} | pads: {path}, {reason}"


@register
class DeformConv(Windowed):
    """DeformConv on engine.ops.deform.DeformConv2d, made once from constant weights or on
    every run from weights computed at run time."""
    kind = "DeformConv"
    n_inputs = (3, 5)
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "group": "int", "offset_group": "int"}
    weights = ()

    def setup(self, constants):
        self.runtime_weights = any(self.input_name(k) and self.input_name(k) not in constants
                                   for k in (1, 3))
        self.layer = None
        if not self.runtime_weights:
            w, b = self.const(constants, 1, "W"), self.const(constants, 3, "B")
            self._check_weights(w.shape, w.dtype, None if b is None else (b.shape, b.dtype))
            self.layer = self._make(w, b)

    def _check_weights(self, w_shape, w_dtype, bias):
        if w_dtype != F32 or len(w_shape) != 4:
            raise self.error(f"W must be float32 of rank 4 (2-D deformable convolution), got "
                             f"{w_dtype} {w_shape}")
        if bias is not None and (bias[1] != F32 or bias[0] != (w_shape[0],)):
            raise self.error(f"B must be float32 of shape ({w_shape[0]},), got {bias[1]} "
                             f"{bias[0]}")
        self.window(2, w_shape[2:])
        self.group = self.attr("group", 1)
        self.offset_group = self.attr("offset_group", 1)
        if self.group < 1 or self.offset_group < 1:
            raise self.error("group and offset_group must be positive")
        if min(w_shape) < 1 or w_shape[0] % self.group:
            raise self.error(f"W {w_shape} must have no empty dimension and output channels "
                             f"divisible by group {self.group}")
        self.w_shape = tuple(w_shape)

    def _make(self, w, b):
        from ...ops.deform import DeformConv2d
        try:
            return DeformConv2d(w, b, self.strides, _flat(self.pad_pairs), self.dilations,
                                self.group, self.offset_group)
        except ValueError as e:
            raise self.error(str(e)) from None

    def infer(self, ins):
        if self.runtime_weights:
            self.fix_runtime_weights(ins, 1, 3)
        _, shape = self.geometry(ins)
        n, size = shape[0], shape[2:]
        taps = math.prod(self.kernel)
        off = self.float_in(ins, 2, "offset", 4)
        want = (n, 2 * self.offset_group * taps) + size
        if off.shape != want:
            raise self.error(f"offset must have shape {want}, got {off.shape}")
        if len(ins) > 4 and ins[4] is not None:
            m = self.float_in(ins, 4, "mask", 4)
            want = (n, self.offset_group * taps) + size
            if m.shape != want:
                raise self.error(f"mask must have shape {want}, got {m.shape}")
        return [Info(shape, F32)]

    def geometry(self, ins) -> tuple:
        """(pads, output shape) for these inputs, checked, computed each time (as Conv's)."""
        return _conv_geometry(self, ins, 4)

    def build(self, ins, outs, i, o):
        a, off, b = i[0], i[2], o[0]
        m = i[4] if len(i) > 4 and ins[4] is not None else None
        pads, og = self.geometry(ins)[0], self.offset_group
        if not self.runtime_weights:
            run = self.layer.run

            def step(env, nt):
                run(env[a], env[off], None if m is None else env[m], env[b], pads, og, nt)
            return step
        wi, bi, make = i[1], (i[3] if len(i) > 3 and ins[3] is not None else None), self._make

        def step(env, nt):     # weights computed at run time: plan the layer for this run
            layer = make(env[wi], None if bi is None else env[bi])
            layer.run(env[a], env[off], None if m is None else env[m], env[b], pads, og, nt)
        return step

    def flops(self, ins, outs):
        return 2.0 * outs[0].size * self.w_shape[1] * math.prod(self.kernel)

    def describe(self, ins, outs):
        text = "deformable im2col + packed GEMM (bilinear sampling per tap)"
        if self.runtime_weights:
            text += " | weights computed at run time: the layer is planned on every run"
        return text
