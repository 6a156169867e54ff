"""The channel-blocked layout in a plan: chains of convolutions that have a blocked kernel
run on channel-blocked activations (NCHWc, engine/ops/blocked.py), the rest of the graph
on NCHW.

In NCHW a pointwise layer has to pack its input into panels and a small depthwise layer has to
transpose its planes; in the blocked layout neither does (kernels/_nchwc.h). A MobileNet runs
blocked from its first layer (few input channels: it reads NCHW and writes blocks directly) to
the global average pool, which reads the blocks in place. Which layers run blocked, and how the
blocked kernels share their work between threads, is engine/dispatch/layout.py's choice; this
module rewrites the graph accordingly, with the steps of engine/graph/blocked_conv.py (the
convolutions) and engine/graph/blocked_steps.py (the rest).

``rewrite(graph, ops, input_shapes, layout)`` returns the graph the plan runs, the ops for its
nodes, each convolution's layout choice with its reason, and its own inference of the graph
(which the plan reuses for the nodes left alone, so each is inferred once per plan): each
blocked convolution becomes a ``BlockedConv`` writing ``<name>#nchwc``; a ``ToBlocked`` step
precedes the first blocked reader of an NCHW tensor, a ``FromBlocked`` step (writing the
original name) the first NCHW reader of a blocked one; a GlobalAveragePool reading a blocked
tensor reads it in place. Elementwise steps between blocked layers (activations, residual
adds, a squeeze-excite's per-channel scaling, a fused SqueezeExcite step) run on the blocks as
they are; 2-D max and average pools, batch normalizations left standing and channel Concats
have blocked steps of their own. A layout change is then needed only where a reader needs
NCHW; the convolutions' layout choice looks through all of these. The graph the model keeps
(and saves) is not changed. Channel counts need not be multiples of 16: the padding channels
carry finite values, which the blocked kernels' zero weights cancel.
"""
from __future__ import annotations

import math

import numpy as np

from .._kernels import nchwc_window
from ..dispatch.conv import ConvParams
from ..dispatch.layout import (blocked_kernel, canonical_layout, choose_layout,
                               fuse_expand_depthwise, pays_alone, why_not_layout)
from ..ops import blocked
from .blocked_conv import BlockedConv, BlockedExpandDepthwise
from .blocked_steps import (BlockedBatchNorm, BlockedBroadcast, BlockedConcat,
                            BlockedGlobalAveragePool, BlockedPool, BlockedShape, FromBlocked,
                            ToBlocked)
from .ir import Graph, Node
from .ops import F32
from .plan import Inferred, infer_nodes

SUFFIX = "#nchwc"


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


def _global_mean(node, ops, infos) -> bool:
    """Whether a node averages each whole plane of a 4-D tensor: GlobalAveragePool, a
    ReduceMean over H and W, or an AveragePool whose window is the whole map."""
    if node.op == "AveragePool":
        x = infos.get(node.inputs[0])
        return x is not None and ops[node.name].whole_map(x.shape)
    return node.op == "GlobalAveragePool" or _spatial_mean(node, ops, infos)


def broadcast_resize(node, infos) -> bool:
    """Whether a Resize takes a 4-D 1x1 map to a larger one of the same images and channels:
    every tap then reads the one pixel, in every mode but tf_crop_and_resize (whose region may
    fall outside the input and read the extrapolation value)."""
    if node.op != "Resize" or node.attrs.get("coordinate_transformation_mode") == \
            "tf_crop_and_resize" or node.outputs[0] not in infos:
        return False
    x, y = infos.get(node.inputs[0]), infos[node.outputs[0]]
    return (x is not None and len(x.shape) == 4 and x.shape[2:] == (1, 1) and x.dtype == F32
            and len(y.shape) == 4 and y.shape[:2] == x.shape[:2])


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


def conv_kind(op, ins, blocked_input=False) -> tuple[str | None, str, bool]:
    """The channel-blocked kernel able to run a Conv op inferred on ``ins`` (a kind of
    engine.dispatch.layout.blocked_kernel, or None for it to stay NCHW), why, and whether it
    pays with no blocked neighbour. blocked_input: its input comes blocked."""
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
    kind, why = blocked_kernel(p, op.activation, residual, blocked_input)
    return kind, why, pays_alone(kind, p)


def rewrite(graph: Graph, ops: dict, input_shapes: dict, layout: str = "auto"):
    """(graph, ops, choices, inferred) to plan for ``input_shapes``: graph and ops the same
    objects when nothing is blocked; choices {node name: (layout, reason)} for every
    convolution whose input is not computed while planning; inferred: what this pass's
    inference found, which the plan reuses for every node it did not change. layout: "auto",
    or "nchw" / "nchwc" to force one
    (engine.dispatch.layout)."""
    reason = why_not_layout(layout)
    if reason is not None:
        raise ValueError(reason)
    layout = canonical_layout(layout)
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

    # a layer of few taps whose input comes from one with a blocked kernel: the dense kernel,
    # which reads blocks, instead of the direct one, which reads NCHW
    for name, (kind, why, alone, ins, outs) in list(found.items()):
        src = source_conv(by_name[name].inputs[0])
        if kind == "direct" and src is not None and found.get(src.name, (None,))[0]:
            found[name] = conv_kind(ops[name], ins, blocked_input=True) + (ins, outs)
    keep = set()
    for name, (kind, why, alone, _, _) in found.items():
        node = by_name[name]
        src = source_conv(node.inputs[0])
        producer_kind = found[src.name][0] if src is not None and src.name in found else None
        reader_kinds = [found[r.name][0] for r in reader_convs(node.outputs[0])
                        if found[r.name][0] is not None]
        choices[name] = choose_layout(kind, why, producer_kind, reader_kinds, layout, alone)
        if choices[name][0] == "nchwc":
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
            node = Node("ToBlocked", fresh(name + ":to_nchwc"), [name], [blocked_name[name]])
            add(node, ToBlocked(node))
        return blocked_name[name]

    def as_nchw(name):
        if name not in nchw_ready:            # a blocked tensor an NCHW reader needs
            nchw_ready.add(name)
            node = Node("FromBlocked", fresh(name + ":from_nchwc"), [blocked_name[name]],
                        [name])
            add(node, FromBlocked(node, infos[name].shape[1]))
        return name

    def add_blocked(node, inputs, make, attrs=None):
        """``node`` reading ``inputs`` and writing its output blocked, run by ``make(new
        node)`` (an op of this module, or with ``attrs`` the graph's own op); the output is
        then native blocked."""
        out = node.outputs[0]
        blocked_name[out] = fresh(out + SUFFIX)
        nchw_ready.discard(out)
        native.add(out)
        new = Node(node.op, node.name, inputs, [blocked_name[out]], dict(attrs or {}))
        add(new, make(new))

    graph_outputs = {spec.name for spec in graph.outputs}

    def read_as_blocks(name):
        """Whether the readers of ``name`` all read blocks: blocked convolutions other than
        direct ones, and concats."""
        rs = readers.get(name, [])
        return bool(rs) and name not in graph_outputs and all(
            r.name in concats or (r.name in keep and k == 0 and found[r.name][0] != "direct")
            for r, k in rs)

    for node in graph.nodes:
        if node.name in keep:
            kind, _, _, ins, outs = found[node.name]
            x = node.inputs[0]
            inputs = [as_nchw(x) if kind == "direct" else as_blocked(x)] + node.inputs[1:3]
            if len(node.inputs) > 3 and node.inputs[3]:
                inputs.append(as_blocked(node.inputs[3]))
            new = Node(node.op, node.name, inputs, [blocked_name[node.outputs[0]]])
            add(new, BlockedConv(new, ops[node.name], kind, ins, outs))
        elif (node.op in ("GlobalAveragePool", "ReduceMean", "AveragePool")
              and node.inputs[0] in blocked_name and node.inputs[0] not in nchw_ready
              and _global_mean(node, ops, infos)):
            new = Node(node.op, node.name, [blocked_name[node.inputs[0]]], list(node.outputs))
            keepdims = len(infos[node.outputs[0]].shape) == 4
            add(new, BlockedGlobalAveragePool(new, infos[node.inputs[0]].shape[1], keepdims))
        # a pool (or a batch normalization) reads blocks where its input is written blocked,
        # or converted for another reader while the pool's own readers read blocks:
        # Inception's branch pools beside 1x1 layers (Mixed_5b's on NCHW planes took 1.2 ms,
        # 0.15 on blocks)
        elif node.name in pools and (node.inputs[0] in native or (
                node.inputs[0] in blocked_name and read_as_blocks(node.outputs[0]))):
            add_blocked(node, [blocked_name[node.inputs[0]]], lambda new: BlockedPool(
                new, ops[node.name], infos[node.inputs[0]], infos[node.outputs[0]]))
        elif (node.inputs[0] in native and broadcast_resize(node, infos)
              and read_as_blocks(node.outputs[0])):
            # DeepLabV3's pooled branch back to the map's size, for the Concat that reads blocks
            add_blocked(node, [blocked_name[node.inputs[0]]], lambda new: BlockedBroadcast(
                new, infos[node.outputs[0]].shape))
        elif node.name in norms and (node.inputs[0] in native or (      # as pools
                node.inputs[0] in blocked_name and read_as_blocks(node.outputs[0]))):
            add_blocked(node, [blocked_name[node.inputs[0]]], lambda new: BlockedBatchNorm(
                new, ops[node.name], infos[node.outputs[0]].shape[1]))
        elif node.name in concats and any(n in native for n in node.inputs):
            add_blocked(node, [as_blocked(n) for n in node.inputs],
                        lambda new: BlockedConcat(new, infos[node.outputs[0]].shape[1]))
        elif (through[node.name] is not None and node.name not in pools | norms
              and node.inputs[through[node.name]] in native):
            weights = getattr(ops[node.name], "weights", ())    # a SqueezeExcite's 1x1s
            inputs = [as_blocked(n) if n and n in infos and len(infos[n].shape) == 4
                      and k not in weights else n
                      for k, n in enumerate(node.inputs)]
            add_blocked(node, inputs, lambda new: ops[node.name], node.attrs)
        elif (node.op in ("Shape", "Size") and node.inputs[0] in blocked_name
              and node.inputs[0] not in nchw_ready):
            # the shape alone, known while planning: no layout change for it (DeepLabV3's
            # pooling branch takes its Resize size from the backbone's output, whose NCHW
            # copy nothing else read)
            x = node.inputs[0]
            new = Node(node.op, node.name, [blocked_name[x]], list(node.outputs))
            add(new, BlockedShape(new, ops[node.name], infos[x]))
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
    new_nodes = _fuse_expand_depthwise(new_nodes, new_ops, graph_outputs)
    out = Graph(new_nodes, graph.inputs, graph.outputs, graph.constants, graph.name)
    return out, new_ops, choices, prior


def _fuse_expand_depthwise(nodes, ops, graph_outputs):
    """``nodes`` with each blocked pointwise layer (stride 1, no residual) whose output only
    a blocked depthwise layer reads, and that engine.dispatch.layout.fuse_expand_depthwise
    takes, run together with it as one BlockedExpandDepthwise step (named as the depthwise
    layer, in its place); ``ops`` updated to match."""
    readers: dict = {}
    for n in nodes:
        for name in n.inputs:
            if name:
                readers.setdefault(name, []).append(n)
    fused = {}
    for n in nodes:
        pw = ops[n.name]
        if not (isinstance(pw, BlockedConv) and pw.conv_kind == "pointwise"
                and tuple(pw.conv.strides) == (1, 1) and not any(n.inputs[3:])):
            continue
        rs = readers.get(n.outputs[0], [])
        if len(rs) != 1 or n.outputs[0] in graph_outputs:
            continue
        r, dw = rs[0], ops[rs[0].name]
        if not (isinstance(dw, BlockedConv) and dw.conv_kind == "depthwise"
                and r.inputs[0] == n.outputs[0] and not any(r.inputs[3:])):
            continue
        kh, kw = dw.conv.w.shape[2:]
        ring = nchwc_window.expand_depthwise_scratch(
            blocked.blocks(pw.conv_shape[1]), pw.conv_shape[3], dw.conv_shape[3],
            dw.conv.strides[1], kh, kw, dw.pads[1][0], 1)
        ok, why = fuse_expand_depthwise(pw.conv_shape[1], pw.conv_shape[2:], (kh, kw),
                                        dw.conv.strides, dw.conv.dilations, ring,
                                        bool(np.isfinite(dw.conv.w).all()))
        if ok:
            fused[r.name] = (n, why)
    if not fused:
        return nodes
    dropped = {pw.name for pw, _ in fused.values()}
    out = []
    for n in nodes:
        if n.name in dropped:
            continue
        if n.name in fused:
            pw, why = fused[n.name]
            new = Node(n.op, n.name, [pw.inputs[0]], list(n.outputs))
            ops[n.name] = BlockedExpandDepthwise(new, ops[pw.name], ops[n.name], why)
            n = new
        out.append(n)
    for name in dropped:
        del ops[name]
    return out

