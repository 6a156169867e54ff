"""Node plans for the spatial operators, each running one of the engine's planned layers:
convolution (1-D and 2-D through engine.Conv2d, 3-D through engine.Conv3d), transposed and
deformable convolution, max and average pooling, global pooling, max-unpooling and Resize.

ONNX describes padding as separate begin and end amounts, which the planned layers take for
convolutions. The pooling layers follow PyTorch (symmetric padding of at most half the
kernel); ONNX pools outside that range are run on an explicitly padded copy of the input.
"""
from __future__ import annotations

import math

import numpy as np

from .. import shapes
from ..ops.activation import apply_activation
from ..ops.conv2d import Conv2d
from .nodes import F32, I64, Info, Op, register

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


def _activate(out, activation):
    if activation is not None:
        apply_activation(out, activation)


# ============================================================================ convolution

@register
class Conv(Windowed):
    """Conv, with two fusions the passes may add: ``activation`` ("relu" or "relu6") runs in the
    kernel's output step, and a fourth input is a residual added to the convolution's output.
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
    weights = (1, 2)

    def setup(self, constants):
        w = self.const(constants, 1, "W")
        if w.dtype != F32 or w.ndim not in (3, 4, 5):
            raise self.error(f"W must be a float32 tensor of rank 3 to 5, got {w.dtype} "
                             f"{w.shape}")
        b = self.const(constants, 2, "B")
        if b is not None and (b.dtype != F32 or b.shape != (w.shape[0],)):
            raise self.error(f"B must be float32 of shape ({w.shape[0]},), got {b.dtype} "
                             f"{b.shape}")
        self.window(w.ndim - 2, w.shape[2:])
        self.group = self.attr("group", 1)
        if self.group < 1 or w.shape[0] % self.group:
            raise self.error(f"group {self.group} must be positive and divide the "
                             f"{w.shape[0]} output channels")
        if min(w.shape) < 1:
            raise self.error(f"W has an empty dimension: {w.shape}")
        self.w, self.b = w, b
        self.activation = self.attr("activation")
        self.residual = bool(self.input_name(3))
        self._layers = {}

    def set_weights(self, w, b):
        """For passes that fold into this convolution (BatchNormalization)."""
        self.w, self.b = w, b
        self._layers.clear()

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", self.nd + 2)
        channels = self.w.shape[1] * self.group
        if x.shape[1] != channels:
            raise self.error(f"X must have {channels} channels (W.shape[1] * group = "
                             f"{self.w.shape[1]} * {self.group}), got shape {x.shape}")
        pads = self.pads_for(x.shape[2:])
        try:
            size = shapes.conv_output_shape(x.shape[2:], self.kernel, self.strides, pads,
                                            self.dilations)
        except ValueError as e:
            raise self.error(f"X {x.shape}: {e}") from None
        self.conv_shape = (x.shape[0], self.w.shape[0]) + size
        self.plan_pads = pads
        shape = self.conv_shape
        if self.residual:
            r = self.float_in(ins, 3, "residual")
            try:
                shape = np.broadcast_shapes(shape, r.shape)
            except ValueError:
                raise self.error(f"residual {r.shape} does not broadcast with the "
                                 f"convolution's output {shape}") from None
        return [Info(shape, F32)]

    def layer(self, in_size, pads, residual_in_kernel=False):
        """The planned layer for this input size. residual_in_kernel: the residual has the
        output's shape, so an algorithm that adds it in its output step may, and then also
        applies the activation after it."""
        key = (tuple(in_size), pads, residual_in_kernel)
        layer = self._layers.get(key)
        if layer is None:
            layer = self._make_layer(in_size, pads, None if self.residual else self.activation)
            if residual_in_kernel and layer.fuses_residual and self.activation:
                layer = self._make_layer(in_size, pads, self.activation, layer.algorithm)
            if len(self._layers) >= 8:
                self._layers.pop(next(iter(self._layers)))
            self._layers[key] = layer
        return layer

    def _make_layer(self, in_size, pads, act, algorithm="auto"):
        try:
            if self.nd == 3:
                from ..ops.convnd import Conv3d
                return Conv3d(self.w, self.b, self.strides, _flat(pads), self.dilations,
                              self.group, activation=act)
            if self.nd == 2:
                return Conv2d(self.w, self.b, self.strides, _flat(pads), self.dilations,
                              self.group, activation=act, algorithm=algorithm,
                              input_size=in_size)
            # engine.Conv1d runs a Conv2d on the (N, C, 1, L) view: run that
            from ..ops.convnd import Conv1d
            return Conv1d(self.w, self.b, self.strides, pads[0], self.dilations, self.group,
                          activation=act, algorithm=algorithm, input_size=in_size).layer2d
        except ValueError as e:
            raise self.error(str(e)) from None

    def _residual_in_kernel(self, ins, outs):
        return (self.residual and self.nd != 3
                and tuple(ins[3].shape) == tuple(outs[0].shape) == tuple(self.conv_shape))

    def build(self, ins, outs, i, o):
        x_shape = ins[0].shape
        in_kernel = self._residual_in_kernel(ins, outs)
        layer = self.layer(x_shape[2:], self.plan_pads, in_kernel)
        self.last_layer = layer
        conv_shape = self.conv_shape
        if self.nd == 1:
            x_view = x_shape[:2] + (1,) + x_shape[2:]
            o_view = conv_shape[:2] + (1,) + conv_shape[2:]
        else:
            x_view, o_view = x_shape, conv_shape
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

    def flops(self, ins, outs):
        per_output = 2 * (self.w.shape[1]) * math.prod(self.kernel)
        extra = outs[0].size if self.residual else 0
        return float(math.prod(self.conv_shape) * per_output + extra)

    def describe(self, ins, outs):
        in_kernel = self._residual_in_kernel(ins, outs)
        layer = self.layer(ins[0].shape[2:], self.plan_pads, in_kernel)
        text = f"{layer.algorithm}: {layer.reason}"
        if self.residual:
            text += " | + residual add" + (f" + {self.activation}" if self.activation else "")
            text += (" in the kernel's output step" if in_kernel and layer.fuses_residual
                     else " (plan level, in place after the kernel)")
        elif self.activation:
            text += f" | + {self.activation} in the kernel's output step"
        return text


@register
class ConvTranspose(Windowed):
    kind = "ConvTranspose"
    n_inputs = (2, 3)
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "group": "int", "auto_pad": "str",
                  "output_padding": "ints", "output_shape": "ints"}
    weights = (1, 2)

    def setup(self, constants):
        w = self.const(constants, 1, "W")
        if w.dtype != F32 or w.ndim not in (3, 4):
            raise self.error(f"W must be float32 of rank 3 or 4 (1-D or 2-D; 3-D transposed "
                             f"convolution is not supported), got {w.dtype} {w.shape}")
        self.group = self.attr("group", 1)
        if self.group < 1 or w.shape[0] % self.group:
            raise self.error(f"group {self.group} must be positive and divide the "
                             f"{w.shape[0]} input channels")
        out_channels = w.shape[1] * self.group
        b = self.const(constants, 2, "B")
        if b is not None and (b.dtype != F32 or b.shape != (out_channels,)):
            raise self.error(f"B must be float32 of shape ({out_channels},), got {b.dtype} "
                             f"{b.shape}")
        self.window(w.ndim - 2, w.shape[2:])
        self.output_padding = self.ints("output_padding", self.nd, 0, minimum=0)
        self.output_shape = self.attr("output_shape")
        if self.output_shape is not None and len(self.output_shape) not in (self.nd,
                                                                            self.nd + 2):
            raise self.error(f"output_shape must have {self.nd} values, got "
                             f"{self.output_shape}")
        # the planned layers are 2-D: a 1-D layer runs on the (N, C, 1, L) view
        self.w4 = w if self.nd == 2 else w[:, :, None, :]
        self.b = b
        self.out_channels = out_channels
        self._layers = {}

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", self.nd + 2)
        if x.shape[1] != self.w4.shape[0]:
            raise self.error(f"X must have {self.w4.shape[0]} channels (W.shape[0]), got "
                             f"shape {x.shape}")
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
        self.plan_pads = tuple(pads)
        return [Info((x.shape[0], self.out_channels) + tuple(size), F32)]

    def _layer(self, key, *args):
        layer = self._layers.get(key)
        if layer is None:
            from ..ops.conv_transpose import ConvTranspose2d
            try:
                layer = ConvTranspose2d(*args)
            except ValueError as e:
                raise self.error(str(e)) from None
            self._layers[key] = layer
        return layer

    def build(self, ins, outs, i, o):
        nd, pads = self.nd, self.plan_pads
        pairs = pads if nd == 2 else ((0, 0),) + pads
        stride = self.strides if nd == 2 else (1,) + self.strides
        dil = self.dilations if nd == 2 else (1,) + self.dilations
        x_shape, out_shape = ins[0].shape, outs[0].shape
        x4 = x_shape if nd == 2 else x_shape[:2] + (1,) + x_shape[2:]
        o4 = out_shape if nd == 2 else out_shape[:2] + (1,) + out_shape[2:]
        op = tuple(o4[2 + a] - shapes.conv_transpose_output_size(
            x4[2 + a], self.w4.shape[2 + a], stride[a], pairs[a][0], pairs[a][1], 0, dil[a])
            for a in range(2))
        a, b = i[0], o[0]
        direct = (all(p >= 0 for pair in pairs for p in pair)
                  and all(p < s or p < d for p, s, d in zip(op, stride, dil)))
        if direct:
            layer = self._layer(("direct", pairs, op), self.w4, self.b, stride, _flat(pairs),
                                op, self.group, dil)
            self.last_layer = layer
            g = layer.geometry(x4)
            if tuple(g.out_size) != o4[2:]:
                raise self.error(f"internal size mismatch {g.out_size} vs {o4[2:]}")
            run = layer.run

            def step(env, nt):
                run(env[a].reshape(x4), env[b].reshape(o4), g, nt)
            return step
        # Pads the planned layer cannot take (negative, or output beyond its reach): run it
        # unpadded and copy the window ONNX asks for; outputs no tap reaches hold the bias.
        layer = self._layer(("full",), self.w4, None, stride, 0, 0, self.group, dil)
        self.last_layer = layer
        g = layer.geometry(x4)
        full = (x4[0], self.out_channels) + tuple(g.out_size)
        src, dst = [slice(None)] * 2, [slice(None)] * 2
        for ax in range(2):
            begin = pairs[ax][0]
            lo = max(0, -begin)                       # first output index with a source
            hi = min(o4[2 + ax], full[2 + ax] - begin)
            dst.append(slice(lo, max(lo, hi)))
            src.append(slice(lo + begin, max(lo, hi) + begin))
        src, dst = tuple(src), tuple(dst)
        bias = (np.zeros((1, self.out_channels, 1, 1), np.float32) if self.b is None
                else self.b.reshape(1, -1, 1, 1))
        run = layer.run

        def step(env, nt):
            tmp = np.empty(full, np.float32)
            run(env[a].reshape(x4), tmp, g, nt)
            out = env[b].reshape(o4)
            out[...] = bias
            out[dst] += tmp[src]
        return step

    def flops(self, ins, outs):
        x = ins[0]
        return 2.0 * x.size * (self.out_channels // self.group) * math.prod(self.kernel)

    def describe(self, ins, outs):
        layer = getattr(self, "last_layer", None)
        return f"{layer.algorithm}: {layer.reason}" if layer is not None else ""


@register
class DeformConv(Windowed):
    kind = "DeformConv"
    n_inputs = (3, 5)
    attributes = {"kernel_shape": "ints", "strides": "ints", "pads": "ints",
                  "dilations": "ints", "group": "int", "offset_group": "int"}
    weights = (1, 3)

    def setup(self, constants):
        w = self.const(constants, 1, "W")
        if w.dtype != F32 or w.ndim != 4:
            raise self.error(f"W must be float32 of rank 4 (2-D deformable convolution), got "
                             f"{w.dtype} {w.shape}")
        b = self.const(constants, 3, "B")
        if b is not None and (b.dtype != F32 or b.shape != (w.shape[0],)):
            raise self.error(f"B must be float32 of shape ({w.shape[0]},), got {b.dtype} "
                             f"{b.shape}")
        self.window(2, w.shape[2:])
        self.group = self.attr("group", 1)
        self.offset_group = self.attr("offset_group", 1)
        if self.group < 1 or self.offset_group < 1:
            raise self.error("group and offset_group must be positive")
        from ..ops.deform import DeformConv2d
        try:
            self.layer = DeformConv2d(w, b, self.strides, _flat(self.pad_pairs), self.dilations,
                                      self.group, self.offset_group)
        except ValueError as e:
            raise self.error(str(e)) from None
        self.w = w

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 4)
        if x.shape[1] != self.layer.in_channels:
            raise self.error(f"X must have {self.layer.in_channels} channels, got {x.shape}")
        pads = self.pads_for(x.shape[2:])
        try:
            size = shapes.conv_output_shape(x.shape[2:], self.kernel, self.strides, pads,
                                            self.dilations)
        except ValueError as e:
            raise self.error(f"X {x.shape}: {e}") from None
        self.plan_pads = pads
        taps = math.prod(self.kernel)
        n = x.shape[0]
        off = self.float_in(ins, 2, "offset", 4)
        want = (n, 2 * self.offset_group * taps) + size
        if off.shape != want:
            raise self.error(f"offset must have shape {want}, got {off.shape}")
        if len(ins) > 4 and ins[4] is not None:
            m = self.float_in(ins, 4, "mask", 4)
            want = (n, self.offset_group * taps) + size
            if m.shape != want:
                raise self.error(f"mask must have shape {want}, got {m.shape}")
        return [Info((n, self.w.shape[0]) + size, F32)]

    def build(self, ins, outs, i, o):
        a, off, b = i[0], i[2], o[0]
        m = i[4] if len(i) > 4 and ins[4] is not None else None
        run, pads, og = self.layer.run, self.plan_pads, self.offset_group

        def step(env, nt):
            run(env[a], env[off], None if m is None else env[m], env[b], pads, og, nt)
        return step

    def flops(self, ins, outs):
        return 2.0 * outs[0].size * self.w.shape[1] * math.prod(self.kernel)

    def describe(self, ins, outs):
        return "deformable im2col + packed GEMM (bilinear sampling per tap)"


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
        self._layers = {}

    def geometry(self, ins):
        x = self.float_in(ins, 0, "X", self.nd + 2)
        pads = self.pads_for(x.shape[2:])
        size, direct = [], True
        for i, k, s, d, (pb, pe) in zip(x.shape[2:], self.kernel, self.strides,
                                        self.dilations, pads):
            o = shapes.onnx_pool_output_size(i, k, s, pb, pe, d, self.ceil)
            if o < 1:
                raise self.error(f"X {x.shape}: the window ({k}, dilation {d}) is larger than "
                                 f"the padded input")
            size.append(o)
            direct = direct and pb == pe and pb <= k // 2 and \
                shapes.pool_output_size(i, k, s, pb, d, self.ceil) == o
        self.plan_pads, self.direct = pads, direct
        return x, tuple(size)

    def views(self, x_shape, out_shape):
        """Shapes as the 2-D layers see them (1-D pools run with H = 1)."""
        if self.nd == 2:
            return (x_shape, out_shape, self.kernel, self.strides, self.dilations,
                    self.plan_pads)
        return (x_shape[:2] + (1,) + x_shape[2:], out_shape[:2] + (1,) + out_shape[2:],
                (1,) + self.kernel, (1,) + self.strides, (1,) + self.dilations,
                ((0, 0),) + self.plan_pads)

    def padded_geometry(self, x4, o4, kernel, stride, dil, pads):
        """For the explicitly padded path: (pad widths, the pooling windows' span)."""
        widths = [(0, 0), (0, 0)]
        for ax in range(2):
            i, o = x4[2 + ax], o4[2 + ax]
            pb, pe = pads[ax]
            need = (o - 1) * stride[ax] + shapes.effective_kernel(kernel[ax], dil[ax])
            widths.append((pb, max(pe, need - i - pb)))
        return tuple(widths)

    def layer(self, key, make):
        layer = self._layers.get(key)
        if layer is None:
            try:
                layer = self._layers[key] = make()
            except ValueError as e:
                raise self.error(str(e)) from None
        return layer

    def flops(self, ins, outs):
        return float(outs[0].size * math.prod(self.kernel))


@register
class MaxPool(Pool):
    kind = "MaxPool"
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
        from ..ops.pool import MaxPool2d
        x4, o4, kernel, stride, dil, pads = self.views(ins[0].shape, outs[0].shape)
        a, b = i[0], o[0]
        want_idx = len(o) > 1 and bool(self.node.outputs[1])
        idx = o[1] if want_idx else None
        if self.direct:
            pad = tuple(p for p, _ in pads)
            layer = self.layer(("direct", pad), lambda: MaxPool2d(
                kernel, stride, pad, dil, self.ceil, return_indices=want_idx))
            widths = None
        else:
            widths = self.padded_geometry(x4, o4, kernel, stride, dil, pads)
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
        # ONNX counts indices over the whole tensor: (n*C + c)*H*W + position in the plane,
        # the position row-major (storage_order 0) or column-major (1), unpadded.
        n, c, h, w = x4
        plane_base = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
        row_w = w if widths is None else w + widths[3][0] + widths[3][1]
        top, left = (0, 0) if widths is None else (widths[2][0], widths[3][0])
        column_major = self.storage_order == 1
        simple = widths is None and not column_major

        def step(env, nt):
            xv = env[a].reshape(x4)
            if widths is not None:
                xv = np.pad(xv, widths, constant_values=-np.inf)
            ind = env[idx].reshape(o4)
            run(xv, env[b].reshape(o4), ind, nt)
            if simple:
                np.add(ind, plane_base, out=ind)
                return
            r, q = np.divmod(ind, row_w)
            r -= top
            q -= left
            if column_major:
                np.multiply(q, h, out=ind)
                ind += r
            else:
                np.multiply(r, w, out=ind)
                ind += q
            ind += plane_base
        return step

    def describe(self, ins, outs):
        return "max pooling" + ("" if self.direct else " (explicitly padded copy)")


@register
class AveragePool(Pool):
    kind = "AveragePool"

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
        from ..ops.pool import AvgPool2d
        x4, o4, kernel, stride, dil, pads = self.views(ins[0].shape, outs[0].shape)
        a, b = i[0], o[0]
        if self.direct:
            pad = tuple(p for p, _ in pads)
            run = self.layer(("direct", pad), lambda: AvgPool2d(
                kernel, stride, pad, self.ceil, self.include_pad)).run

            def step(env, nt):
                run(env[a].reshape(x4), env[b].reshape(o4), nt)
            return step
        # Zero-padded copy, every window averaged over the whole kernel, then rescaled by
        # kernel area / the number of cells ONNX counts: padding up to the padded input's
        # end with count_include_pad, only input cells without.
        widths = self.padded_geometry(x4, o4, kernel, stride, dil, pads)
        run = self.layer(("padded",), lambda: AvgPool2d(kernel, stride, 0, False, True)).run
        counts = []
        for ax in range(2):
            i_, o_, k, s = x4[2 + ax], o4[2 + ax], kernel[ax], stride[ax]
            pb, pe = pads[ax]
            start = np.arange(o_) * s - pb
            lo, hi = (-pb, i_ + pe) if self.include_pad else (0, i_)
            counts.append(np.minimum(start + k, hi) - np.maximum(start, lo))
        area = kernel[0] * kernel[1]
        with np.errstate(divide="ignore"):
            factor = (area / np.outer(counts[0], counts[1]).astype(np.float64)).astype(
                np.float32)

        def step(env, nt):
            xp = np.pad(env[a].reshape(x4), widths)
            out = env[b].reshape(o4)
            run(xp, out, nt)
            np.multiply(out, factor, out=out)
        return step

    def describe(self, ins, outs):
        return "average pooling" + ("" if self.direct else " (explicitly padded copy)")


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
        from ..ops import pool
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
        from ..ops.pool import max_unpool2d_onnx
        a, k, b, shape = i[0], i[1], o[0], outs[0].shape

        def step(env, nt):
            env[b] = max_unpool2d_onnx(env[a], env[k], shape, nt)
        return step

    def flops(self, ins, outs):
        return float(outs[0].size)


# ============================================================================ Resize

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
# "simple" is the nearest rounding of Upsample and of Resize before opset 11, as ONNX Runtime
# runs them: truncation when enlarging, rounding up when shrinking.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


@register
class Resize(Op):
    """Resize, modes nearest and linear. The cases PyTorch's interpolate covers (4-D input,
    batch and channels kept; nearest with asymmetric coordinates and floor rounding; linear
    with half_pixel or align_corners) run engine.ops.resample.Interpolate; the other coordinate
    and rounding modes, and other ranks, gather with index and weight tables computed once
    per shape, one axis at a time."""
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

    # -- the engine path ------------------------------------------------------------------------
    def interpolate_layer(self, x_shape):
        if len(x_shape) != 4 or self.out_size[:2] != tuple(x_shape[:2]):
            return None
        if self.mode == "nearest":
            enlarging = all(o >= i for o, i in zip(self.out_size[2:], x_shape[2:]))
            if self.coord != "asymmetric" or not (
                    self.rounding == "floor" or (self.rounding == "simple" and enlarging)):
                return None
            mode, align = "nearest", None
        elif self.coord == "align_corners":
            mode, align = "bilinear", True
        elif self.coord == "half_pixel" or (self.coord == "pytorch_half_pixel"
                                            and min(self.out_size[2:]) > 1):
            mode, align = "bilinear", False
        else:
            return None
        from ..ops.resample import Interpolate
        if self.from_sizes:
            layer = Interpolate(size=self.out_size[2:], mode=mode, align_corners=align)
        else:
            layer = Interpolate(scale_factor=tuple(self.scales[2:]), mode=mode,
                                align_corners=align)
        if layer.output_shape(x_shape) != self.out_size:
            return None
        return layer

    # -- the table path -------------------------------------------------------------------------
    def source(self, axis, i, o):
        """Source coordinates (float64) of the o outputs along one axis of size i."""
        s = self.scales[axis]
        d = np.arange(o, dtype=np.float64)
        c = self.coord
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
        start, end = self.roi[axis]
        if o > 1:
            return start * (i - 1) + d * (end - start) * (i - 1) / (o - 1)
        return np.full(o, 0.5 * (start + end) * (i - 1))

    def tables(self, x_shape):
        """Per resized axis: (axis, i0, i1, w1, outside) for linear, (axis, index, None,
        None, outside) for nearest; ``outside`` marks tf_crop_and_resize extrapolation."""
        out = []
        for axis, (i, o) in enumerate(zip(x_shape, self.out_size)):
            if i == o and self.coord != "tf_crop_and_resize" and self.scales[axis] == 1.0:
                continue
            src = self.source(axis, i, o)
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

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        layer = self.interpolate_layer(ins[0].shape)
        self.engine_path = layer is not None
        if layer is not None:
            layer.tables(ins[0].shape)     # made now, not by the first run
            run = layer.run

            def step(env, nt):
                run(env[a], env[b], nt)
            return step
        rank = len(ins[0].shape)
        tables = self.tables(ins[0].shape)
        fill = np.float32(self.extrapolation)

        def expand(w, axis):
            return w.reshape((-1,) + (1,) * (rank - 1 - axis))

        prepared = [(axis, i0, i1, None if w1 is None else expand(w1, axis),
                     None if w1 is None else expand(1 - w1, axis),
                     None if outside is None else
                     (slice(None),) * axis + (outside,))
                    for axis, i0, i1, w1, outside in tables]

        def step(env, nt):
            y = env[a]
            for axis, i0, i1, w1, w0, outside in prepared:
                if i1 is None:
                    y = np.take(y, i0, axis=axis)
                else:
                    y = np.take(y, i0, axis=axis) * w0 + np.take(y, i1, axis=axis) * w1
                if outside is not None:
                    y[outside] = fill
            np.copyto(env[b], y)
        return step

    def flops(self, ins, outs):
        return float(outs[0].size * (1 if self.mode == "nearest" else 4))

    def describe(self, ins, outs):
        how = ("engine interpolate" if getattr(self, "engine_path", False)
               else "index/weight tables per axis")
        return f"{self.mode}, {self.coord}: {how}"
