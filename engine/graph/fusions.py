"""Load-time fusions of operators that older exporters write out op by op:

- ``fuse_layer_norm``: ReduceMean -> Sub -> Pow(2) (or Mul by itself) -> ReduceMean -> Add(eps)
  -> Sqrt -> Div (or Reciprocal and Mul), then an optional Mul by a constant scale and Add of a
  constant bias, over trailing axes: torch.onnx's LayerNorm below opset 17 (also after the
  permute of a channels-first LayerNorm2d), and the same formula written out by hand; one
  LayerNormalization node instead of seven to ten;
- ``fuse_gelu``: x * 0.5 * (1 + erf(x / sqrt(2))) in any association of the product, and with
  x * (1/sqrt(2)) for the division: nn.GELU() as torch.onnx writes it at every opset up to 20;
  one Gelu node (approximate="none") instead of five;
- ``fuse_mish``: x * tanh(softplus(x)): nn.Mish as torch.onnx writes it below opset 18; one
  Mish node instead of three;
- ``fuse_squeeze_excite``: GlobalAveragePool (or ReduceMean over H and W) -> 1x1 Conv (with
  its fused activation) -> 1x1 Conv -> Sigmoid or HardSigmoid -> Mul by the pooled tensor:
  MobileNetV3's, EfficientNet's and RegNetY's squeeze-and-excitation; one SqueezeExcite node
  (engine/graph/ops/se.py) instead of five.

A chain is fused only when every intermediate tensor has no reader outside it and is not a
graph output, and its constants have the values the formula needs (epsilon any positive
number; 0.5, 1 and sqrt(2) within float32 rounding): the fused node computes what the chain
did. Each function returns the number of chains it replaced.
"""
from __future__ import annotations

import math

import numpy as np

from ..ops.activation import parse as parse_activation
from .ir import Graph, Node
from .ops import OPS

# how far a constant of the GELU formula may be from its value: float32 rounding and a little
CONST_RTOL = 1e-6


# ============================================================================ matching helpers

class _Match:
    """The graph's readers, producers and outputs, read once per pass."""

    def __init__(self, g: Graph):
        self.g = g
        self.users = g.consumers()
        self.producers = g.producers()
        self.outputs = g.output_names()

    def only_reader(self, name):
        """The one node reading ``name``, once, when ``name`` is not a graph output."""
        readers = self.users.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        return readers[0][0]

    def made_by(self, name, op):
        node = self.producers.get(name)
        return node if node is not None and node.op == op else None

    def const(self, name, max_ndim=1):
        """A float constant of one element and rank at most ``max_ndim`` (so that it cannot
        broadcast its reader's output to a larger rank), as a Python float; else None."""
        v = self.g.constants.get(name) if name else None
        if v is None or v.size != 1 or v.ndim > max_ndim or v.dtype.kind not in "fiu":
            return None
        return float(v.reshape(()))

    def other(self, node, name):
        """The other operand of a two-input node reading ``name``, or None."""
        if len(node.inputs) != 2 or name not in node.inputs or node.inputs[0] == node.inputs[1]:
            return None
        return node.inputs[1 - node.inputs.index(name)]


def _near(value, target) -> bool:
    return value is not None and abs(value - target) <= CONST_RTOL * abs(target)


def _fuse_each(g: Graph, find, make) -> int:
    """For every node where ``find(match, node)`` finds a chain (its first element the chain's
    nodes), put ``make(found)``'s node in its place; the number of chains replaced."""
    count = 0
    m = _Match(g)
    for node in list(g.nodes):
        if node not in g.nodes:
            continue
        found = find(m, node)
        if found is None:
            continue
        chain = found[0]
        chain.sort(key=g.nodes.index)
        _replace(g, chain, make(found))
        m = _Match(g)
        count += 1
    if count:
        g.remove_unused()
    return count


def _replace(g: Graph, chain, node: Node) -> None:
    """Put ``node`` where the chain's last node ran and drop the chain."""
    g.nodes[g.nodes.index(chain[-1])] = node
    for n in chain[:-1]:
        g.nodes.remove(n)


# ============================================================================ LayerNormalization

def _reduce_axes(g: Graph, node: Node):
    """A keepdims ReduceMean's axes (attribute before opset 18, constant input from 18)."""
    if node.attrs.get("keepdims", 1) != 1:
        return None
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1]:
        v = g.constants.get(node.inputs[1])
        if axes is not None or v is None or v.dtype.kind not in "iu" or v.ndim != 1:
            return None
        axes = v.tolist()
    if not axes:
        return None
    return tuple(int(a) for a in axes)


def _rank(m: _Match, name):
    """The rank of tensor ``name`` where the graph alone tells it: a graph input with a
    declared shape, a constant, or a Transpose's output (its perm's length)."""
    for spec in m.g.inputs:
        if spec.name == name and spec.shape is not None:
            return len(spec.shape)
    if name in m.g.constants:
        return m.g.constants[name].ndim
    node = m.made_by(name, "Transpose")
    if node is not None and node.attrs.get("perm") is not None:
        return len(node.attrs["perm"])
    return None


def _trailing(m: _Match, x, axes):
    """How many trailing axes of ``x`` the reduction covers, if it covers exactly a run of
    trailing axes (LayerNormalization's ``axis`` = minus that); else None."""
    k = len(axes)
    if len(set(axes)) != k:
        return None
    if any(a >= 0 for a in axes):
        rank = _rank(m, x)
        if rank is None or not all(-rank <= a < rank for a in axes):
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    return k if sorted(axes) == list(range(-k, 0)) else None


def _layer_norm_at(m: _Match, sub: Node):
    """The decomposed LayerNorm whose Sub(x, mean) is ``sub``: (chain of nodes in order, x,
    number of normalised trailing axes, epsilon, scale name, bias name), or None."""
    g = m.g
    if sub.op != "Sub" or len(sub.inputs) != 2 or sub.attrs:
        return None
    x, mean = sub.inputs
    rm1 = m.made_by(mean, "ReduceMean")
    if rm1 is None or rm1.inputs[0] != x or m.only_reader(mean) is not sub:
        return None
    axes = _reduce_axes(g, rm1)
    if axes is None:
        return None
    k = _trailing(m, x, axes)
    if k is None:
        return None
    d = sub.outputs[0]
    readers = m.users.get(d, [])
    if d in m.outputs or len({id(n) for n, _ in readers}) != 2:
        return None
    # one reader squares d (Pow(d, 2) or Mul(d, d)); the other divides it by the deviation
    square = next((n for n, _ in readers if n.op == "Pow" and n.inputs[0] == d
                   and len(n.inputs) == 2 and m.const(n.inputs[1]) == 2.0
                   or n.op == "Mul" and n.inputs == [d, d]), None)
    if square is None or len(readers) != (3 if square.op == "Mul" else 2):
        return None
    norm = next(n for n, _ in readers if n is not square)
    if square.attrs or norm.attrs:
        return None
    rm2 = m.only_reader(square.outputs[0])
    if rm2 is None or rm2.op != "ReduceMean" or rm2.inputs[0] != square.outputs[0] \
            or _reduce_axes(g, rm2) != axes:
        return None
    add = m.only_reader(rm2.outputs[0])
    if add is None or add.op != "Add" or add.attrs:
        return None
    eps = m.const(m.other(add, rm2.outputs[0]) or "", max_ndim=max(k, 1))
    if eps is None or not (eps > 0 and math.isfinite(eps)):
        return None
    sqrt = m.only_reader(add.outputs[0])
    if sqrt is None or sqrt.op != "Sqrt":
        return None
    chain = [rm1, sub, square, rm2, add, sqrt]
    after = m.only_reader(sqrt.outputs[0])
    if after is norm and norm.op == "Div" and norm.inputs == [d, sqrt.outputs[0]]:
        chain.append(norm)
    elif after is not None and after.op == "Reciprocal" and norm.op == "Mul" \
            and m.only_reader(after.outputs[0]) is norm \
            and m.other(norm, d) == after.outputs[0]:
        chain += [after, norm]
    else:
        return None
    scale = bias = None
    for op in ("Mul", "Add"):      # the affine step: optional scale, then optional bias
        out = chain[-1].outputs[0]
        nxt = m.only_reader(out)
        if nxt is None or nxt.op != op or nxt.attrs:
            continue
        param = m.other(nxt, out)
        v = g.constants.get(param) if param else None
        if v is None or v.dtype != np.float32 or v.ndim > k:
            continue
        chain.append(nxt)
        if op == "Mul":
            scale = param
        else:
            bias = param
    return chain, x, k, eps, scale, bias


def fuse_layer_norm(g: Graph) -> int:
    """Each decomposed LayerNorm over trailing axes becomes one LayerNormalization node (its
    scale and bias constants of rank at most the number of normalised axes; a missing scale
    becomes a constant 1). The reduced axes must be negative, or the input's rank known from
    the graph (a declared graph input, a Transpose), to tell that they are the trailing ones."""
    def make(found):
        chain, x, k, eps, scale, bias = found
        if scale is None:
            scale = g.unique_name(f"{chain[-1].name}.scale")
            g.constants[scale] = np.ones(1, np.float32)
        return Node("LayerNormalization", chain[-1].name,
                    [x, scale] + ([bias] if bias else []), [chain[-1].outputs[0]],
                    {"axis": -k, "epsilon": eps})
    return _fuse_each(g, _layer_norm_at, make)


# ============================================================================ GELU

def _gelu_at(m: _Match, erf: Node):
    """The exact GELU around ``erf``: (chain of nodes in order, x), or None."""
    if erf.op != "Erf":
        return None
    u = erf.inputs[0]
    scale = m.producers.get(u)
    if scale is None or m.only_reader(u) is not erf or scale.attrs:
        return None
    if scale.op == "Div" and len(scale.inputs) == 2 and _near(m.const(scale.inputs[1]),
                                                              math.sqrt(2)):
        x = scale.inputs[0]
    elif scale.op == "Mul" and len(scale.inputs) == 2:
        x = next((a for a, b in (scale.inputs, scale.inputs[::-1])
                  if _near(m.const(b), math.sqrt(0.5))), None)
        if x is None:
            return None
    else:
        return None
    add = m.only_reader(erf.outputs[0])
    if add is None or add.op != "Add" or add.attrs \
            or not _near(m.const(m.other(add, erf.outputs[0]) or ""), 1.0):
        return None
    chain = [scale, erf, add]
    mul = m.only_reader(add.outputs[0])
    if mul is None or mul.op != "Mul" or mul.attrs:
        return None
    o = m.other(mul, add.outputs[0])
    if o is None:
        return None
    half = m.made_by(o, "Mul")
    if o == x:                                   # (x * (1 + erf)) * 0.5
        last = m.only_reader(mul.outputs[0])
        if last is None or last.op != "Mul" or last.attrs \
                or not _near(m.const(m.other(last, mul.outputs[0]) or ""), 0.5):
            return None
        return chain + [mul, last], x
    if _near(m.const(o), 0.5):                   # ((1 + erf) * 0.5) * x
        last = m.only_reader(mul.outputs[0])
        if last is None or last.op != "Mul" or last.attrs \
                or m.other(last, mul.outputs[0]) != x:
            return None
        return chain + [mul, last], x
    if half is not None and not half.attrs and m.only_reader(o) is mul \
            and m.other(half, x) is not None \
            and _near(m.const(m.other(half, x)), 0.5):   # (x * 0.5) * (1 + erf)
        return [half] + chain + [mul], x
    return None


def fuse_gelu(g: Graph) -> int:
    """Each exact GELU written with Erf becomes one Gelu node, when the engine has a Gelu
    plan."""
    if "Gelu" not in OPS:
        return 0
    return _fuse_each(g, _gelu_at, lambda found: Node(
        "Gelu", found[0][-1].name, [found[1]], [found[0][-1].outputs[0]],
        {"approximate": "none"}))


# ============================================================================ Mish

def _mish_at(m: _Match, softplus: Node):
    """Mul(x, Tanh(Softplus(x))) around ``softplus``: (chain in order, x), or None."""
    if softplus.op != "Softplus" or len(softplus.inputs) != 1:
        return None
    x = softplus.inputs[0]
    tanh = m.only_reader(softplus.outputs[0])
    if tanh is None or tanh.op != "Tanh":
        return None
    mul = m.only_reader(tanh.outputs[0])
    if mul is None or mul.op != "Mul" or mul.attrs or m.other(mul, tanh.outputs[0]) != x:
        return None
    return [softplus, tanh, mul], x


def fuse_mish(g: Graph) -> int:
    """Each x * tanh(softplus(x)) becomes one Mish node (which a convolution before it then
    applies in its output step)."""
    return _fuse_each(g, _mish_at, lambda found: Node(
        "Mish", found[0][-1].name, [found[1]], [found[0][-1].outputs[0]]))


# ============================================================================ squeeze-excite

def _pointwise_weights(m: _Match, conv: Node):
    """(W, B) names of a Conv that is a plain 1x1 (stride 1, no padding, one group, constant
    float32 weights, no residual), B "" when absent; else None."""
    a = conv.attrs
    if (len(conv.inputs) > 3 and conv.inputs[3]) or a.get("group", 1) != 1 \
            or any(v != 1 for v in a.get("strides", ())) or any(a.get("pads", ())):
        return None
    w = m.g.constants.get(conv.inputs[1])
    b = conv.inputs[2] if len(conv.inputs) > 2 else ""
    if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[2:] != (1, 1):
        return None
    if b and (b not in m.g.constants or m.g.constants[b].dtype != np.float32):
        return None
    return conv.inputs[1], b


def _squeeze_excite_at(m: _Match, mul: Node):
    """The squeeze-excite block whose final Mul is ``mul``: (chain in order, x, W1, B1, W2,
    B2, attributes of the fused node), or None."""
    if mul.op != "Mul" or len(mul.inputs) != 2 or mul.inputs[0] == mul.inputs[1]:
        return None
    for k in (0, 1):
        x, s = mul.inputs[1 - k], mul.inputs[k]
        found = _se_gate(m, s, mul)
        if found is None:
            continue
        gate_nodes, fc2, attrs = found
        fc1 = m.made_by(fc2.inputs[0], "Conv")
        if fc1 is None or m.only_reader(fc1.outputs[0]) is not fc2:
            continue
        pool = m.producers.get(fc1.inputs[0])
        if pool is None or pool.inputs[0] != x or m.only_reader(pool.outputs[0]) is not fc1:
            continue
        if pool.op == "ReduceMean":
            # the 1x1 convolution after it takes 4-D input: x is 4-D too (keepdims)
            axes = _reduce_axes(m.g, pool)
            if axes is None or sorted(a % 4 for a in axes if -4 <= a < 4) != [2, 3]:
                continue
        elif pool.op != "GlobalAveragePool":
            continue
        first, second = _pointwise_weights(m, fc1), _pointwise_weights(m, fc2)
        if first is None or second is None:
            continue
        (r, c), (c2, r2) = (m.g.constants[first[0]].shape[:2],
                            m.g.constants[second[0]].shape[:2])
        if (c2, r2) != (c, r):
            continue
        if fc1.attrs.get("activation"):
            attrs["activation"] = fc1.attrs["activation"]
        return [pool, fc1, fc2] + gate_nodes + [mul], x, first, second, attrs
    return None


def _se_gate(m: _Match, s: str, mul: Node):
    """The gate of a squeeze-excite whose per-channel factors ``s`` the Mul reads: a Sigmoid or
    HardSigmoid after the second 1x1 convolution, or fused into it as its activation. Returns
    (gate nodes to remove besides the convolution, that convolution, the SqueezeExcite
    attributes for the gate), or None."""
    node = m.producers.get(s)
    if node is None or m.only_reader(s) is not mul:
        return None
    if node.op in ("Sigmoid", "HardSigmoid"):
        fc2 = m.made_by(node.inputs[0], "Conv")
        if fc2 is None or fc2.attrs.get("activation") \
                or m.only_reader(fc2.outputs[0]) is not node:
            return None
        attrs = {"gate": node.op.lower()}
        if node.op == "HardSigmoid":
            attrs["alpha"] = float(node.attrs.get("alpha", 0.2))
            attrs["beta"] = float(node.attrs.get("beta", 0.5))
        return [node], fc2, attrs
    if node.op != "Conv" or not node.attrs.get("activation"):
        return None
    act = parse_activation(node.attrs["activation"])
    if act.kind == "sigmoid":
        return [], node, {"gate": "sigmoid"}
    if act.kind == "hardsigmoid":
        return [], node, {"gate": "hardsigmoid", "alpha": act.alpha, "beta": act.beta}
    return None


def fuse_squeeze_excite(g: Graph) -> int:
    """Each squeeze-and-excitation block becomes one SqueezeExcite node (absent biases become
    zero constants). Run after the activations are fused into the convolutions: the first 1x1
    convolution's activation is then an attribute, whichever node the exporter wrote."""
    def make(found):
        chain, x, (w1, b1), (w2, b2), attrs = found
        mul = chain[-1]
        biases = []
        for w, b in ((w1, b1), (w2, b2)):
            if not b:
                b = g.unique_name(f"{mul.name}.zero_bias")
                g.constants[b] = np.zeros(g.constants[w].shape[0], np.float32)
            biases.append(b)
        return Node("SqueezeExcite", mul.name, [x, w1, biases[0], w2, biases[1]],
                    [mul.outputs[0]], attrs)
    return _fuse_each(g, _squeeze_excite_at, make)
