"""Graph rewrites run once when a model loads, each keeping the outputs' values:

- ``sums_as_adds``: a Sum of two tensors (what older exporters write for a residual) becomes
  an Add, and a Sum of one an Identity, so the passes below see them;
- ``remove_identities``: Identity nodes (Dropout becomes one on import) disappear;
- ``fold_constants``: nodes whose inputs are all constants are computed, and so, when every
  input dimension is declared, is everything that depends on input shapes only (Shape, and the
  Gather/Concat/... chains exporters build on it);
- ``fuse_layer_norm`` and ``fuse_gelu`` (engine/graph/fusions.py): the decomposed LayerNorm
  and erf-form GELU that exporters write at older opsets become one LayerNormalization or
  Gelu node;
- ``fold_batchnorm``: BatchNormalization after a convolution is folded into its weights and
  bias (computed in float64, stored in float32);
- ``fuse_activations``: Relu, Clip, SiLU, HardSwish, Gelu, Sigmoid, Tanh, Softplus, Mish,
  Elu, LeakyRelu, HardSigmoid and PRelu with one slope after a convolution (or a Gemm) become
  its ``activation``, applied in the kernel's output step (the Gemm's step);
- ``fuse_residual``: an Add of a convolution's output and another tensor becomes a fourth
  convolution input, added in the same plan step (followed by a fused activation if any);
- ``fuse_squeeze_excite`` (engine/graph/fusions.py): a squeeze-and-excitation block (pool,
  two 1x1 convolutions, gate, per-channel Mul) becomes one SqueezeExcite step.

Each pass returns how many nodes it changed; ``optimize`` runs them all and records a summary
in ``graph.notes`` for explain().
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelError
from ..ops.activation import canonical
from .fusions import fuse_gelu, fuse_layer_norm, fuse_mish, fuse_squeeze_excite
from .ir import Graph, Node
from .ops import OPS, Info
from .ops.base import NeedsValue
from .plan import evaluate, infer_nodes


def op_class(node):
    cls = OPS.get(node.op)
    if cls is None:
        raise ModelError(f"node {node.name!r}: operator {node.op!r} is not supported")
    return cls


def make_op(node, constants):
    cls = op_class(node)
    try:
        return cls(node, constants)
    except ModelError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as e:
        raise ModelError(f"node {node.name!r} ({node.op}): {type(e).__name__}: {e}") from None


def check_nodes(g: Graph) -> None:
    """Every node's arity and attribute kinds, before any pass reads them (an unknown operator
    is refused by make_op if the passes leave it in the graph)."""
    for node in g.nodes:
        cls = OPS.get(node.op)
        if cls is not None:
            cls.check_node(node)


def sums_as_adds(g: Graph) -> int:
    """Sum of two inputs -> Add, of one -> Identity (the same values: Sum adds its inputs in
    order with the same broadcasting). A Sum of three or more stays one step."""
    count = 0
    for node in g.nodes:
        if node.op == "Sum" and len(node.inputs) <= 2 and all(node.inputs):
            node.op = "Add" if len(node.inputs) == 2 else "Identity"
            count += 1
    return count


def remove_identities(g: Graph) -> int:
    removed = 0
    outputs = g.output_names()
    inputs = {s.name for s in g.inputs}
    for node in list(g.nodes):
        if node.op != "Identity":
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst not in outputs:
            g.nodes.remove(node)
            g.rename_uses(dst, src)
            removed += 1
            continue
        producer = g.producers().get(src)
        # an exported name must survive: let the producer write it, when nothing else
        # (another output, a graph input, a constant) claims the source name
        if producer is not None and src not in outputs and src not in inputs:
            g.nodes.remove(node)
            producer.outputs = [dst if o == src else o for o in producer.outputs]
            g.rename_uses(src, dst)
            removed += 1
    return removed


def fold_constants(g: Graph, input_shapes=None) -> int:
    """Input-independent nodes, then (with ``input_shapes``) shape-only ones."""
    folded = 0
    for node in list(g.nodes):
        if node.inputs and all(not i or i in g.constants for i in node.inputs):
            op = make_op(node, g.constants)
            ins = [Info.of(g.constants[i]) if i else None for i in node.inputs]
            for name, value in zip(node.outputs, evaluate(op, ins)):
                if name:
                    g.constants[name] = value
            g.nodes.remove(node)
            folded += 1
    if input_shapes is not None and any(n.op == "Shape" for n in g.nodes):
        # shape inference alone: no layer is built (no weight transformed) for this
        ops = {n.name: make_op(n, g.constants) for n in g.nodes}
        shape_folded: dict = {}
        try:
            for _ in infer_nodes(g, ops, input_shapes, {}, shape_folded):
                pass
        except NeedsValue:
            pass        # a shape that waits for an input's value: fold what came before it
        for node in list(g.nodes):
            named = [o for o in node.outputs if o]
            if named and all(o in shape_folded for o in named):
                for o in named:
                    g.constants[o] = shape_folded[o]
                g.nodes.remove(node)
                folded += 1
    if folded:
        g.remove_unused()
    return folded


def _single_reader(g: Graph, name: str, users=None):
    """The one node reading ``name`` (once), if ``name`` is not also a graph output."""
    users = g.consumers() if users is None else users
    readers = users.get(name, [])
    if len(readers) != 1 or name in g.output_names():
        return None
    return readers[0]


def _is_plain_conv(node: Node) -> bool:
    return (node.op == "Conv" and not node.attrs.get("activation")
            and not (len(node.inputs) > 3 and node.inputs[3]))


def fold_batchnorm(g: Graph) -> int:
    count = 0
    for conv in list(g.nodes):
        if not _is_plain_conv(conv) or conv not in g.nodes:
            continue
        reader = _single_reader(g, conv.outputs[0])
        if reader is None or reader[0].op != "BatchNormalization" or reader[1] != 0:
            continue
        bn = reader[0]
        if len([o for o in bn.outputs if o]) != 1 or bn.attrs.get("spatial", 1) != 1:
            continue
        names = [conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else ""] + bn.inputs[1:5]
        if any(n and n not in g.constants for n in names) or not all(names[2:]):
            continue
        w = g.constants[names[0]].astype(np.float64)
        b = g.constants[names[1]].astype(np.float64) if names[1] else np.zeros(w.shape[0])
        scale, beta, mean, var = (g.constants[n].astype(np.float64) for n in names[2:])
        if not (scale.shape == beta.shape == mean.shape == var.shape == (w.shape[0],)) \
                or w.dtype.kind != "f" or b.shape != (w.shape[0],):
            continue
        eps = float(bn.attrs.get("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        w_name = g.unique_name(f"{conv.name}.weight_bn")
        g.constants[w_name] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        b_name = g.unique_name(f"{conv.name}.bias_bn")
        g.constants[b_name] = ((b - mean) * s + beta).astype(np.float32)
        conv.inputs = [conv.inputs[0], w_name, b_name]
        conv.outputs = [bn.outputs[0]]
        g.nodes.remove(bn)
        count += 1
    if count:
        g.remove_unused()
    return count


# activation nodes a convolution's output step applies (engine/ops/activation.py), with the
# ONNX defaults of their attributes
_FUSED_ACTIVATIONS = {"Relu": "relu", "SiLU": "silu", "HardSwish": "hardswish",
                      "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
                      "Mish": "mish"}


_NOT_SCALAR = object()


def _scalar_constant(g: Graph, name: str):
    """The float value of a one-element float constant input, None if the input is absent,
    _NOT_SCALAR if it is anything else."""
    if not name:
        return None
    v = g.constants.get(name)
    if v is None or v.size != 1 or v.dtype.kind != "f":
        return _NOT_SCALAR
    return float(v.reshape(()))


def _activation_of(g: Graph, node: Node):
    """The activation a convolution kernel can apply for ``node`` (an engine/ops/activation.py
    spelling), or None (also for parameters it cannot take: the node's own plan then says
    what is wrong with them)."""
    try:
        return _spelling_of(g, node)
    except ValueError:
        return None


def _spelling_of(g: Graph, node: Node):
    attrs = node.attrs
    if node.op in _FUSED_ACTIVATIONS:
        return _FUSED_ACTIVATIONS[node.op]
    if node.op == "Gelu":
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(attrs.get("approximate", "none"))
    if node.op == "LeakyRelu":
        return canonical(f"leaky_relu({float(attrs.get('alpha', 0.01))})")
    if node.op == "Elu":
        return canonical(f"elu({float(attrs.get('alpha', 1.0))})")
    if node.op == "HardSigmoid":
        return canonical(f"hardsigmoid({float(attrs.get('alpha', 0.2))},"
                         f"{float(attrs.get('beta', 0.5))})")
    if node.op == "PRelu" and len(node.inputs) == 2:
        slope = _scalar_constant(g, node.inputs[1])   # one slope for every channel
        if slope is None or slope is _NOT_SCALAR or not math.isfinite(slope):
            return None
        return canonical(f"leaky_relu({slope})")
    if node.op != "Clip" or node.attrs.get("min") is not None or "max" in node.attrs:
        return None
    bounds = [_scalar_constant(g, node.inputs[k] if len(node.inputs) > k else "")
              for k in (1, 2)]
    if any(b is _NOT_SCALAR for b in bounds):
        return None
    lo, hi = (-math.inf if bounds[0] is None else bounds[0],
              math.inf if bounds[1] is None else bounds[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        return None
    return canonical(f"clip({lo},{hi})")


def fuse_activations(g: Graph) -> int:
    """An activation after a Conv, a Gemm, a MatMulBias, or a BatchNormalization left standing,
    moves into that node (its kernel applies it in the same pass, or its step right after)."""
    count = 0
    for conv in list(g.nodes):
        if conv.op not in ("Conv", "BatchNormalization", "MatMulBias", "Gemm") \
                or conv.attrs.get("activation") \
                or conv not in g.nodes:
            continue
        reader = _single_reader(g, conv.outputs[0])
        if reader is None or reader[1] != 0:
            continue
        act = _activation_of(g, reader[0])
        if act is None:
            continue
        conv.attrs = dict(conv.attrs, activation=act)
        conv.outputs = [reader[0].outputs[0]]
        g.nodes.remove(reader[0])
        count += 1
    if count:
        g.remove_unused()
    return count


def fuse_silu(g: Graph) -> int:
    """Mul(x, Sigmoid(x)) (SiLU/Swish as exporters write it, EfficientNet's and RegNetY's
    activation) becomes one SiLU node, when the Sigmoid's output has no other reader."""
    count = 0
    producers = g.producers()
    for mul in list(g.nodes):
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        for k in (0, 1):
            sig = producers.get(mul.inputs[k])
            if (sig is None or sig.op != "Sigmoid" or sig not in g.nodes
                    or sig.inputs[0] != mul.inputs[1 - k]
                    or _single_reader(g, sig.outputs[0]) is None):
                continue
            g.nodes.insert(g.nodes.index(mul), Node("SiLU", mul.name, [sig.inputs[0]],
                                                    list(mul.outputs)))
            g.nodes.remove(mul)
            g.nodes.remove(sig)
            count += 1
            break
    return count


def fuse_matmul_bias(g: Graph) -> int:
    """MatMul(A, constant matrix B) followed by an Add of a constant vector of B's columns
    (a Linear layer on a tensor of more than two dimensions, as exporters write it) becomes one
    MatMulBias node, when the MatMul's output has no other reader."""
    count = 0
    for mm in list(g.nodes):
        if mm.op != "MatMul" or len(mm.inputs) != 2 or mm.inputs[1] not in g.constants:
            continue
        b = g.constants[mm.inputs[1]]
        reader = _single_reader(g, mm.outputs[0])
        if b.ndim != 2 or b.dtype != np.float32 or reader is None or reader[0].op != "Add":
            continue
        add = reader[0]
        other = add.inputs[1 - reader[1]]
        bias = g.constants.get(other)
        if other == mm.outputs[0] or bias is None or bias.dtype != np.float32 \
                or bias.shape != (b.shape[1],):
            continue
        fused = Node("MatMulBias", mm.name, [mm.inputs[0], mm.inputs[1], other],
                     list(add.outputs))
        g.nodes[g.nodes.index(add)] = fused
        g.nodes.remove(mm)
        count += 1
    return count


def _column_scale(s: np.ndarray, n: int, rank, axis: int):
    """The n values of a constant Mul operand that scales only the given axis of a tensor of
    ``rank`` dimensions (None: a 1-D operand along the last axis), else None."""
    if s.dtype != np.float32 or (rank is None and s.ndim != 1) or (rank and s.ndim > rank):
        return None
    shape = (1,) * ((rank or 1) - s.ndim) + s.shape
    if shape[axis] != n or s.size != n:
        return None
    return s.reshape(n)


def fold_scale_into_matmul_bias(g: Graph) -> int:
    """A Mul by a constant of one value per column after a MatMulBias, directly or through a
    Transpose that moves the columns' axis (ConvNeXt's layer scale after its block's permute
    back to NCHW), folds into the product: B' = B diag(s), bias' = bias s, one pass over the
    tensor fewer. Each value rounds once where the product and the Mul rounded twice, as a
    folded BatchNormalization does."""
    count, producers = 0, g.producers()
    for mul in list(g.nodes):
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        k = next((k for k in (0, 1) if mul.inputs[k] in g.constants
                  and mul.inputs[1 - k] not in g.constants), None)
        if k is None:
            continue
        t = mul.inputs[1 - k]
        node, tr, rank, axis = producers.get(t), None, None, -1
        if node is not None and node.op == "Transpose" and node.attrs.get("perm") is not None:
            tr, perm = node, list(node.attrs["perm"])
            rank, axis = len(perm), perm.index(len(perm) - 1)
            node = producers.get(tr.inputs[0])
        if node is None or node.op != "MatMulBias" or node.attrs.get("activation") \
                or _single_reader(g, node.outputs[0]) is None \
                or (tr is not None and _single_reader(g, t) is None):
            continue
        b, bias = g.constants.get(node.inputs[1]), g.constants.get(node.inputs[2])
        if b is None or bias is None or b.ndim != 2:
            continue
        v = _column_scale(g.constants[mul.inputs[k]], b.shape[1], rank, axis)
        if v is None:
            continue
        v = v.astype(np.float64)
        w_name = g.unique_name(f"{node.name}.weight_scaled")
        g.constants[w_name] = (b.astype(np.float64) * v).astype(np.float32)
        b_name = g.unique_name(f"{node.name}.bias_scaled")
        g.constants[b_name] = (bias.astype(np.float64) * v).astype(np.float32)
        node.inputs = [node.inputs[0], w_name, b_name]
        (tr or node).outputs = [mul.outputs[0]]
        producers[mul.outputs[0]] = tr or node
        g.nodes.remove(mul)
        count += 1
    if count:
        g.remove_unused()
    return count


def fuse_residual(g: Graph) -> int:
    count = 0
    for conv in list(g.nodes):
        if not _is_plain_conv(conv) or conv not in g.nodes:
            continue
        y = conv.outputs[0]
        reader = _single_reader(g, y)
        if reader is None or reader[0].op != "Add" or reader[0].attrs:
            continue
        add = reader[0]
        other = add.inputs[1 - reader[1]]
        if other == y:
            continue
        inputs = list(conv.inputs) + [""] * (3 - len(conv.inputs))
        conv.inputs = inputs[:3] + [other]
        conv.outputs = [add.outputs[0]]
        # the fused step runs where the Add ran: both operands exist there
        g.nodes.remove(conv)
        g.nodes[g.nodes.index(add)] = conv
        count += 1
    return count


def optimize(g: Graph, input_shapes=None) -> None:
    """All passes, in order; ``input_shapes`` when every input dimension is declared."""
    g.check()
    check_nodes(g)
    notes = []
    n = sums_as_adds(g)
    if n:
        notes.append(f"read {n} Sum nodes of one or two inputs as Identity or Add")
    n = remove_identities(g)
    if n:
        notes.append(f"removed {n} Identity/Dropout nodes")
    n = fold_constants(g, input_shapes)
    if n:
        notes.append(f"folded {n} nodes into constants")
    n = fuse_layer_norm(g)
    if n:
        notes.append(f"fused {n} decomposed LayerNorms into LayerNormalization")
    n = fuse_gelu(g)
    if n:
        notes.append(f"fused {n} erf-form GELUs into Gelu")
    n = fuse_mish(g)
    if n:
        notes.append(f"fused {n} Softplus + Tanh + Mul chains into Mish")
    n = fold_batchnorm(g)
    if n:
        notes.append(f"folded {n} BatchNormalization nodes into convolution weights")
    n_mm = fuse_matmul_bias(g)
    if n_mm:
        notes.append(f"fused {n_mm} MatMul + bias Add pairs into MatMulBias")
    n = fold_scale_into_matmul_bias(g)
    if n:
        notes.append(f"folded {n} per-column scales (Mul) into MatMulBias weights")
    n_silu = fuse_silu(g)
    if n_silu:
        notes.append(f"fused {n_silu} Sigmoid + Mul pairs into SiLU")
    def fused(*ops):
        return sum(1 for node in g.nodes if node.op in ops and node.attrs.get("activation"))
    n_bn, n_mm = -fused("BatchNormalization"), -fused("MatMulBias", "Gemm")
    n = fuse_activations(g)
    n_res = fuse_residual(g)
    n += fuse_activations(g)
    n_bn += fused("BatchNormalization")
    n_mm += fused("MatMulBias", "Gemm")
    if n - n_bn - n_mm:
        notes.append(f"fused {n - n_bn - n_mm} activations into convolutions")
    if n_bn:
        notes.append(f"fused {n_bn} activations into batch normalizations")
    if n_mm:
        notes.append(f"fused {n_mm} activations into matrix products")
    if n_res:
        notes.append(f"fused {n_res} residual Adds into convolution steps")
    n = fuse_squeeze_excite(g)
    if n:
        notes.append(f"fused {n} squeeze-excite blocks into one step each")
    n = g.remove_unused()
    if n:
        notes.append(f"removed {n} nodes whose outputs nothing reads")
    g.check()
    g.notes = list(g.notes) + notes     # a native file brings the notes of its first load
