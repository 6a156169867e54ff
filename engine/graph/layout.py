"""The channel-blocked layout in a plan: chains of pointwise and depthwise convolutions run on
channel-blocked activations (NCHW16c, engine/ops/blocked.py), the rest of the graph on NCHW.

In NCHW a pointwise layer has to pack its input into panels and a small depthwise layer has to
transpose its planes; in the blocked layout neither does (kernels/_nchwc.h). A MobileNet runs
blocked from its first layer (few input channels: it reads NCHW and writes blocks directly) to
the global average pool, which reads the blocks in place. Which layers run blocked, and how the
blocked kernels share their work between threads, is engine/dispatch/layout.py's choice; this
module rewrites the graph accordingly.

``rewrite(graph, ops, input_shapes, layout)`` returns the graph the plan runs, the ops for its
nodes, each convolution's layout choice with its reason, and its own inference of the graph
(which the plan reuses for the nodes left alone, so each is inferred once per plan): each blocked convolution becomes a
``BlockedConv`` writing ``<name>#nchw16c``; a ``ToBlocked`` step precedes the first blocked
reader of an NCHW tensor, a ``FromBlocked`` step (writing the original name) the first NCHW
reader of a blocked one; a GlobalAveragePool reading a blocked tensor reads it in place.
Elementwise steps between blocked layers (activations, residual adds, a squeeze-excite's
per-channel scaling, a fused SqueezeExcite step) run on the blocks as they are, so that a layout change is needed only
where a reader needs NCHW; the convolutions' layout choice looks through them. The graph the
model keeps (and saves) is not changed. Channel counts need not be multiples of 16: the
padding channels carry finite values, which the blocked kernels' zero weights cancel.
"""
from __future__ import annotations

import math

import numpy as np

from ..dispatch.conv import ConvParams
from ..dispatch.layout import (POINTWISE_GROUP_SLACK, blocked_kernel,
                               choose_depthwise_blocked_split, choose_layout,
                               choose_pointwise_blocked_split, pays_alone, why_not_layout)
from .._kernels import nchwc, pool_nchw16c
from .._threads import threads_for
from ..ops import blocked
from ..ops.pool import onnx_avgpool_divisor
from ..ops.activation import ACTIVATION_CODES
from .ir import Graph, Node
from .ops import F32, Info, Op
from .plan import Inferred, infer_nodes

SUFFIX = "#nchw16c"
# Multiply-adds per thread of a blocked depthwise step, a quarter of threads_for's default:
# depthwise layers move much more data per multiply-add, so a second thread pays on smaller
# ones (bench/bench_dispatch.py layout/depthwise).
MIN_WORK_DEPTHWISE = 5e4
# Elements below which a layout change (and the blocked average pool) runs on one thread: a
# second thread pays from about 16K (bench/bench_dispatch.py layout/convert).
MIN_CONVERT_ELEMENTS = 1 << 14


# Elementwise operators that may run on channel-blocked tensors unchanged: each maps finite
# numbers to finite numbers, so the padding channels stay finite (see the module docstring).
UNARY_THROUGH = frozenset({"Relu", "Sigmoid", "SiLU", "HardSigmoid", "HardSwish", "Tanh",
                           "LeakyRelu", "Clip", "Elu", "Selu", "Celu", "Gelu", "Softplus",
                           "Mish", "Identity", "Neg", "Abs"})
BINARY_THROUGH = frozenset({"Add", "Sub", "Mul"})


def _per_channel(shape, big) -> bool:
    """A 4-D operand that broadcasts over ``big`` (N, C, H, W) one value per channel."""
    return len(shape) == 4 and shape[1] == big[1] and shape[2:] == (1, 1) \
        and shape[0] in (1, big[0])


def through_input(node, infos) -> int | None:
    """The input of an elementwise ``node`` that a blocked tensor may flow through (its other
    operands being of the same shape, one value per channel, or one value), else None."""
    if len(node.outputs) != 1 or node.outputs[0] not in infos:
        return None
    out = infos[node.outputs[0]].shape
    if len(out) != 4:
        return None
    if node.op == "SqueezeExcite":      # its other inputs are its weights
        return 0 if infos[node.inputs[0]].shape == out else None
    if node.op in UNARY_THROUGH:
        extra = [n for n in node.inputs[1:] if n]
        ok = all(n in infos and infos[n].value is not None and infos[n].size == 1
                 for n in extra)
        return 0 if ok and node.inputs and infos[node.inputs[0]].shape == out else None
    if node.op not in BINARY_THROUGH or len(node.inputs) != 2:
        return None
    shapes = [infos[n].shape for n in node.inputs]
    for k in (0, 1):
        other = shapes[1 - k]
        if shapes[k] == out and (other == out or _per_channel(other, out)
                                 or math.prod(other) == 1 and len(other) <= 4):
            return k
    return None


def _spatial_mean(node, ops, infos) -> bool:
    """Whether a ReduceMean node averages a 4-D tensor over H and W exactly (what
    ``x.mean((2, 3))`` exports to)."""
    ins = [infos.get(n) if n else None for n in node.inputs]
    if ins[0] is None or len(ins[0].shape) != 4:
        return False
    try:
        return ops[node.name].axes_of(ins) == (2, 3)
    except ValueError:
        return False


def blocked_pool(node, ops, infos) -> bool:
    """Whether a MaxPool or AveragePool can run on blocks: 2-D, without MaxPool's indices."""
    op = ops.get(node.name)
    if node.op not in ("MaxPool", "AveragePool") or getattr(op, "nd", 0) != 2 \
            or any(node.outputs[1:]):
        return False
    x = infos.get(node.inputs[0])
    return x is not None and len(x.shape) == 4 and node.outputs[0] in infos


def blocked_batch_norm(node, ops, infos) -> bool:
    """Whether a BatchNormalization left standing (constant statistics, one per channel) can
    run on blocks: its per-channel scale and shift, padded with zeros, keep the padding
    channels at zero through every activation it fuses."""
    op = ops.get(node.name)
    if node.op != "BatchNormalization" or op is None or op.runtime or not op.spatial \
            or any(node.outputs[1:]):
        return False
    x = infos.get(node.inputs[0])
    return x is not None and len(x.shape) == 4 and x.dtype == F32


def blocked_concat(node, ops, infos) -> bool:
    """Whether a Concat can run on blocks: of 4-D float32 tensors along the channels, every
    input but the last a whole number of blocks (the last one's padding lanes then end the
    result, where they belong)."""
    if node.op != "Concat" or node.outputs[0] not in infos or not node.inputs:
        return False
    shapes = [infos[n].shape if n in infos else None for n in node.inputs]
    if any(sh is None or len(sh) != 4 for sh in shapes) or any(not n for n in node.inputs):
        return False
    if ops[node.name].concat_axis(4) != 1 or infos[node.outputs[0]].dtype != F32:
        return False
    return all(sh[1] % blocked.BLOCK == 0 for sh in shapes[:-1])


def conv_kind(op, ins) -> tuple[str | None, str, bool]:
    """The channel-blocked kernel able to run a Conv op inferred on ``ins`` (a kind of
    engine.dispatch.layout.blocked_kernel, or None for it to stay NCHW), why, and whether it
    pays with no blocked neighbour."""
    if op.nd != 2:
        return None, f"{op.nd}-D: the channel-blocked kernels are 2-D", False
    if op.runtime_weights:
        return (None, "weights computed at run time: the blocked kernels pack them at load",
                False)
    pads, conv_shape = op.geometry(ins)
    residual = None
    if op.residual:
        residual = tuple(ins[3].shape) == conv_shape
    k, cg = op.w.shape[:2]
    p = ConvParams(cg * op.group, k, tuple(op.kernel), tuple(op.strides), tuple(op.dilations),
                   op.group, tuple(pads), tuple(ins[0].shape[2:]), ins[0].shape[0])
    kind, why = blocked_kernel(p, op.activation, residual)
    return kind, why, pays_alone(kind, p)


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


class ToBlocked(_LayoutChange):
    kind = "ToBlocked"
    kernel = nchwc.f32_to_blocked

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 4)
        return [Info(blocked.blocked_shape(x.shape), F32)]

    def describe(self, ins, outs):
        return "layout: NCHW -> NCHW16c for the blocked layers that read it"


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
        return "layout: NCHW16c -> NCHW for a reader that needs NCHW"


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
            nchwc.f32_global_avg_blocked(env[a], env[b].reshape(n, c), 1 if single else nt)
        return step

    def flops(self, ins, outs):
        return float(ins[0].size)

    def describe(self, ins, outs):
        return "on the NCHW16c input in place"


class BlockedPool(_Internal):
    """A 2-D MaxPool (no indices) or AveragePool on blocks (kernels/pool_nchw16c.pyx): ``pool``
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
                pool_nchw16c.f32_maxpool_blocked(env[a], env[b], *args, 1 if single else nt)
        else:
            def step(env, nt):
                pool_nchw16c.f32_avgpool_blocked(env[a], env[b], divisor, *args,
                                                 1 if single else nt)
        return step

    def flops(self, ins, outs):
        return float(outs[0].size * self.window[0] * self.window[1])

    def describe(self, ins, outs):
        what = "max" if self.divisor is None else "average"
        return f"{what} pooling on NCHW16c: one vector of 16 channels per tap"


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
        act = ACTIVATION_CODES[self.activation]
        single = outs[0].size < MIN_CONVERT_ELEMENTS

        def step(env, nt):
            nchwc.f32_scale_shift_blocked(env[a], s, t, env[b], act, 1 if single else nt)
        return step

    def flops(self, ins, outs):
        return 2.0 * outs[0].size

    def describe(self, ins, outs):
        text = "on NCHW16c: one vector of scales and shifts per block"
        return text + (f" | + {self.activation} in the same pass" if self.activation else "")


class BlockedConcat(_Internal):
    """Concat along the channels of blocked tensors: the blocks one after another."""
    kind = "Concat"
    n_inputs = (1, None)

    def __init__(self, node, channels):
        super().__init__(node)
        self.channels = channels

    def infer(self, ins):
        xs = [self.float_in(ins, k, "inputs", 5) for k in range(len(ins))]
        n, _, h, w, b = xs[0].shape
        if any(x.shape[0] != n or x.shape[2:] != (h, w, b) for x in xs):
            raise self.error(f"blocked inputs {[x.shape for x in xs]} differ outside the blocks")
        return [Info((n, blocked.blocks(self.channels), h, w, b), F32)]

    def build(self, ins, outs, i, o):
        srcs, b = list(i), o[0]

        def step(env, nt):
            np.concatenate([env[k] for k in srcs], axis=1, out=env[b])
        return step

    def describe(self, ins, outs):
        return "on NCHW16c: the inputs' blocks one after another"


class BlockedConv(_Internal):
    """A Conv on blocked tensors (any kind of engine.dispatch.layout.blocked_kernel). Made per plan: ``conv`` is the graph's
    Conv op, ``ins``/``outs`` its NCHW Infos for this plan's shapes. Inputs: X, W, B as the
    Conv's (W and B unread: the weights are packed here), and the residual, blocked."""
    kind = "Conv"
    n_inputs = (1, 4)

    def __init__(self, node, conv, kind, ins, outs):
        super().__init__(node)
        self.conv, self.conv_kind = conv, kind
        self.logical_ins, self.logical_outs = ins, outs
        self.pads, self.conv_shape = conv.geometry(ins)
        self.act = ACTIVATION_CODES[conv.activation]
        self.macs = math.prod(self.conv_shape) * math.prod(conv.w.shape[1:])
        self._flops = conv.flops(ins, outs)
        # packed once per Conv, shared by every plan (see rewrite's side_by_side)
        self.pack_key = f"nchw16c_{kind}"
        if kind == "grouped":
            def pack():
                return blocked.pack_grouped(conv.w, conv.w.shape[1], conv.b)
        else:
            def pack():
                return {"pointwise": blocked.pack_pointwise,
                        "depthwise": blocked.pack_depthwise,
                        "direct": blocked.pack_direct,
                        "dense": blocked.pack_dense}[kind](conv.w, conv.b)
        self.w, self.b = conv.transforms.get(self.pack_key, pack,
                                             blocked.packed_shapes(kind, conv.w.shape))
        # how the kernel's threads share the layer (engine.dispatch.layout), None for direct
        self.split = None
        if kind == "pointwise":
            self.split = choose_pointwise_blocked_split(self.conv_shape[2:])
        elif kind == "depthwise":
            self.split = choose_depthwise_blocked_split(ins[0].shape[2:])

    def infer(self, ins):
        if self.conv_kind == "direct":
            x = self.float_in(ins, 0, "X", 4)
            want = self.logical_ins[0].shape
        else:
            x = self.float_in(ins, 0, "X", 5)
            want = blocked.blocked_shape(self.logical_ins[0].shape)
        if x.shape != want:
            raise self.error(f"X must have the blocked shape {want}, got {x.shape}")
        return [Info(blocked.blocked_shape(self.conv_shape), F32)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        w, bias, act, macs = self.w, self.b, self.act, self.macs
        if self.conv_kind == "pointwise":
            r = i[3] if len(i) > 3 and i[3] >= 0 else -1

            slack = POINTWISE_GROUP_SLACK if self.split[0] == "groups" else 0.0

            def step(env, nt):
                nchwc.f32_pointwise_blocked(env[a], w, bias, env[r] if r >= 0 else None,
                                            env[b], act, threads_for(macs, nt), slack)
            return step
        (sh, sw), (dh, dw) = self.conv.strides, self.conv.dilations
        pt, pl = self.pads[0][0], self.pads[1][0]
        if self.conv_kind == "dense":
            r = i[3] if len(i) > 3 and i[3] >= 0 else -1
            channels = self.logical_ins[0].shape[1]
            kh, kw = self.conv.w.shape[2:]

            def step(env, nt):
                nchwc.f32_conv2d_nchw16c(env[a], channels, w, bias, env[r] if r >= 0 else None,
                                         env[b], kh, kw, sh, sw, pt, pl, dh, dw, act,
                                         threads_for(macs, nt))
            return step
        if self.conv_kind == "direct":
            def step(env, nt):
                nchwc.f32_direct_to_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh, dw,
                                            act, threads_for(macs, nt))
            return step

        if self.conv_kind == "grouped":
            def step(env, nt):
                nchwc.f32_grouped_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh, dw,
                                          act, threads_for(macs, nt))
            return step

        by_blocks = self.split[0] == "blocks"

        def step(env, nt):
            nchwc.f32_depthwise_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh, dw, act,
                                        threads_for(macs, nt, MIN_WORK_DEPTHWISE), by_blocks)
        return step

    def flops(self, ins, outs):
        return self._flops

    def describe(self, ins, outs):
        text = {"pointwise": "pointwise on NCHW16c: one broadcast-FMA GEMM over the input's "
                             "channel blocks, no packing",
                "depthwise": "depthwise on NCHW16c: one vector of 16 channels per pixel and "
                             "tap, no transposes",
                "direct": "direct NCHW -> NCHW16c: few input channels, eight output pixels a "
                          "time, and the layers after it read blocks",
                "grouped": "grouped on NCHW16c: each output block from its input block, four "
                           "pixels a time",
                "dense": "dense on NCHW16c: the pointwise tile with taps, six pixels of a row "
                         "by four output blocks, padding read as zeros, no column matrix"
                }[self.conv_kind]
        if self.split is not None:
            text += f" | threads by {self.split[0]}: {self.split[1]}"
        if self.conv.residual:
            text += " | + residual add"
        if self.conv.activation:
            text += f" | + {self.conv.activation} in the kernel's output step"
        return text


def rewrite(graph: Graph, ops: dict, input_shapes: dict, layout: str = "auto"):
    """(graph, ops, choices, inferred) to plan for ``input_shapes``: graph and ops the same
    objects when nothing is blocked; choices {node name: (layout, reason)} for every
    convolution whose input is not computed while planning; inferred: what this pass's
    inference found, which the plan reuses for every node it did not change. layout: "auto",
    or "nchw" / "nchw16c" to force one
    (engine.dispatch.layout)."""
    reason = why_not_layout(layout)
    if reason is not None:
        raise ValueError(reason)
    infos, folded, found, choices = {}, {}, {}, {}
    for node, op, ins, outs, names in infer_nodes(graph, ops, input_shapes, infos, folded):
        if getattr(op, "kind", "") != "Conv" or any(i in folded for i in node.inputs[:1]):
            continue
        found[node.name] = conv_kind(op, ins) + (ins, outs)
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    readers: dict = {}
    for n in graph.nodes:
        for k, name in enumerate(n.inputs):
            if name:
                readers.setdefault(name, []).append((n, k))
    by_name = {n.name: n for n in graph.nodes}
    through = {n.name: through_input(n, infos) for n in graph.nodes}
    pools = {n.name for n in graph.nodes if blocked_pool(n, ops, infos)}
    concats = {n.name for n in graph.nodes if blocked_concat(n, ops, infos)}
    norms = {n.name for n in graph.nodes if blocked_batch_norm(n, ops, infos)}
    for name in pools | norms:
        through[name] = 0

    def source_conv(name):
        """The convolution that writes ``name``, through elementwise steps, pools and (by
        their first input) concats."""
        node = producers.get(name)
        while node is not None and node.name not in found and (
                through[node.name] is not None or node.name in concats):
            node = producers.get(node.inputs[through[node.name] or 0])
        return node

    def reader_convs(name):
        """The convolutions that read ``name`` as their input, through elementwise steps,
        pools and concats."""
        out, stack, seen = [], [name], set()
        while stack:
            for r, k in readers.get(stack.pop(), []):
                if r.name in found and k == 0:
                    out.append(r)
                elif (through[r.name] == k or r.name in concats) and r.name not in seen:
                    seen.add(r.name)
                    stack.append(r.outputs[0])
        return out

    keep = set()
    for name, (kind, why, alone, _, _) in found.items():
        node = by_name[name]
        src = source_conv(node.inputs[0])
        producer_kind = found[src.name][0] if src is not None and src.name in found else None
        reader_kinds = [found[r.name][0] for r in reader_convs(node.outputs[0])
                        if found[r.name][0] is not None]
        choices[name] = choose_layout(kind, why, producer_kind, reader_kinds, layout, alone)
        if choices[name][0] == "nchw16c":
            keep.add(name)
    prior = Inferred(infos, folded, ops)
    if not keep:
        return graph, ops, choices, prior
    taken = set(infos) | set(graph.constants)
    blocked_name, nchw_ready = {}, set(taken)

    def fresh(base):
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    native = set()      # tensors written blocked (not converted from NCHW)
    for node in graph.nodes:
        if node.name in keep:
            out = node.outputs[0]
            blocked_name[out] = fresh(out + SUFFIX)
            nchw_ready.discard(out)
            native.add(out)
    new_nodes, new_ops = [], dict(ops)

    def add(node, op):
        new_nodes.append(node)
        new_ops[node.name] = op

    def as_blocked(name):
        if name not in blocked_name:          # an NCHW tensor a blocked layer reads
            blocked_name[name] = fresh(name + SUFFIX)
            node = Node("ToBlocked", fresh(name + ":to_nchw16c"), [name], [blocked_name[name]])
            add(node, ToBlocked(node))
        return blocked_name[name]

    def as_nchw(name):
        if name not in nchw_ready:            # a blocked tensor an NCHW reader needs
            nchw_ready.add(name)
            node = Node("FromBlocked", fresh(name + ":from_nchw16c"), [blocked_name[name]],
                        [name])
            add(node, FromBlocked(node, infos[name].shape[1]))
        return name

    for node in graph.nodes:
        if node.name in keep:
            kind, _, _, ins, outs = found[node.name]
            x = node.inputs[0]
            inputs = [as_nchw(x) if kind == "direct" else as_blocked(x)] + node.inputs[1:3]
            if len(node.inputs) > 3 and node.inputs[3]:
                inputs.append(as_blocked(node.inputs[3]))
            new = Node(node.op, node.name, inputs, [blocked_name[node.outputs[0]]])
            add(new, BlockedConv(new, ops[node.name], kind, ins, outs))
        elif (node.op in ("GlobalAveragePool", "ReduceMean")
              and node.inputs[0] in blocked_name and node.inputs[0] not in nchw_ready
              and (node.op == "GlobalAveragePool" or _spatial_mean(node, ops, infos))):
            new = Node(node.op, node.name, [blocked_name[node.inputs[0]]], list(node.outputs))
            keepdims = len(infos[node.outputs[0]].shape) == 4
            add(new, BlockedGlobalAveragePool(new, infos[node.inputs[0]].shape[1], keepdims))
        elif node.name in pools and node.inputs[0] in native:
            out = node.outputs[0]
            blocked_name[out] = fresh(out + SUFFIX)
            nchw_ready.discard(out)
            native.add(out)
            new = Node(node.op, node.name, [blocked_name[node.inputs[0]]], [blocked_name[out]])
            add(new, BlockedPool(new, ops[node.name], infos[node.inputs[0]], infos[out]))
        elif node.name in norms and node.inputs[0] in native:
            out = node.outputs[0]
            blocked_name[out] = fresh(out + SUFFIX)
            nchw_ready.discard(out)
            native.add(out)
            new = Node(node.op, node.name, [blocked_name[node.inputs[0]]], [blocked_name[out]])
            add(new, BlockedBatchNorm(new, ops[node.name], infos[out].shape[1]))
        elif node.name in concats and any(n in native for n in node.inputs):
            out = node.outputs[0]
            inputs = [as_blocked(n) for n in node.inputs]
            blocked_name[out] = fresh(out + SUFFIX)
            nchw_ready.discard(out)
            native.add(out)
            new = Node(node.op, node.name, inputs, [blocked_name[out]])
            add(new, BlockedConcat(new, infos[out].shape[1]))
        elif (through[node.name] is not None and node.name not in pools | norms
              and node.inputs[through[node.name]] in native):
            out = node.outputs[0]
            weights = getattr(ops[node.name], "weights", ())    # a SqueezeExcite's 1x1s
            inputs = [as_blocked(n) if n and n in infos and len(infos[n].shape) == 4
                      and k not in weights else n
                      for k, n in enumerate(node.inputs)]
            blocked_name[out] = fresh(out + SUFFIX)
            nchw_ready.discard(out)
            native.add(out)
            new = Node(node.op, node.name, inputs, [blocked_name[out]], dict(node.attrs))
            add(new, ops[node.name])
        else:
            for name in node.inputs:
                if name and name in blocked_name and name not in nchw_ready:
                    as_nchw(name)
            add(node, ops[node.name])
    for spec in graph.outputs:
        if spec.name in blocked_name and spec.name not in nchw_ready:
            as_nchw(spec.name)
    # weights packed for this plan go side by side into one buffer, which later plans share
    loose = [op for op in new_ops.values()
             if isinstance(op, BlockedConv) and not op.conv.transforms.arranged(op.pack_key)]
    for op, w in zip(loose, blocked.side_by_side([op.w for op in loose])):
        op.w = w
        op.conv.transforms.rearrange(op.pack_key, (w, op.b))
    out = Graph(new_nodes, graph.inputs, graph.outputs, graph.constants, graph.name)
    return out, new_ops, choices, prior

