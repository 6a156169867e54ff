"""Node plans: one class per operator kind, created once per node when a model loads.

An ``Op`` validates its node's attributes and constant inputs in its constructor (a bad file
fails at load, naming the node), then, for each concrete input shape the model meets:

- ``infer(ins)`` gives every output's shape and dtype (and its value, when the output depends
  only on shapes, like Shape's), raising ModelError for inputs it cannot take;
- ``build(ins, outs, i, o)`` returns the step the runner calls, ``step(env, num_threads)``,
  reading its inputs from ``env[i[k]]`` and writing its outputs to ``env[o[k]]``.

How a step treats its outputs (``storage``) lets the memory planner place them:
"write" steps fill buffers the planner allocated, "view" steps store a reshaped view of their
first input, "alloc" steps store an array they allocated themselves. Elementwise "write" steps
may be told to write over an input that dies with them (``inplace_inputs``).

Elementwise, shape and small tensor operators are NumPy: a ufunc with ``out=`` is their right
implementation. Convolutions, pooling, unpooling, resampling and deformable convolution go to
the engine's planned layers (nodes_spatial.py).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.special

from .._kernels import dense as _dense
from .._threads import threads_for
from .. import shapes
from ..errors import ModelError
from ..memory import current_max_memory, format_bytes
from .ir import DTYPES

F32 = np.dtype(np.float32)
# Largest tensor a model may make, in bytes: a file that asks for more (a ConstantOfShape or an
# Expand to a huge shape, a Resize by a huge factor) is refused while planning, before anything
# is allocated.
MAX_TENSOR_BYTES = 4 << 30


def check_tensor_size(op, shape, dtype, what="output", folding=False) -> None:
    """Before a tensor is made: within the single-tensor cap, and for a value computed while
    inferring (``folding``, before the plan's own budget check can see it) within the model's
    memory budget."""
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise op.error(f"{what} of shape {tuple(shape)} would take {nbytes / 2**30:.1f} GiB, "
                       f"more than the {MAX_TENSOR_BYTES >> 30} GiB the engine allows a tensor")
    budget = current_max_memory()
    if folding and nbytes > budget:
        raise op.error(f"{what} of shape {tuple(shape)} would take {format_bytes(nbytes)}, "
                       f"more than the model's memory budget ({format_bytes(budget)}, "
                       f"engine.load's max_memory)")
I64 = np.dtype(np.int64)
INTEGER_KINDS = "iub"

OPS: dict = {}


def register(cls):
    OPS[cls.kind] = cls
    return cls


class Info:
    """What planning knows about one tensor: shape, dtype, and its value if constant."""
    __slots__ = ("shape", "dtype", "value")

    def __init__(self, shape, dtype, value=None):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.value = value

    @classmethod
    def of(cls, array):
        return cls(array.shape, array.dtype, array)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self):
        return f"Info({self.shape}, {self.dtype}{', const' if self.value is not None else ''})"


# Attribute kinds: how a value from the file must look.
def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v):
    return (_is_int(v) or isinstance(v, (float, np.floating))) and not isinstance(v, bool)


_KINDS = {
    "int": _is_int,
    "float": _is_num,
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, (list, tuple)) and all(_is_int(e) for e in v),
    "floats": lambda v: isinstance(v, (list, tuple)) and all(_is_num(e) for e in v),
    "act": lambda v: v is None or v in ("relu", "relu6"),
    "num": _is_num,
}


class Op:
    """Base class: checks the node's arity and attributes, then calls ``setup``."""
    kind = ""
    n_inputs = (1, 1)          # (min, max); max None for variadic
    n_outputs = (1, 1)
    attributes: dict = {}      # name -> kind in _KINDS
    weights = ()               # input indices that must be constants when the model loads
    storage = "write"

    def __init__(self, node, constants):
        self.node = node
        self.name = node.name
        self.check_node(node)
        for i in self.weights:
            if i < len(node.inputs) and node.inputs[i] and node.inputs[i] not in constants:
                raise self.error(f"input {i} ({node.inputs[i]!r}) must be a constant "
                                 f"(an initializer): the engine transforms weights once, at load")
        self.setup(constants)

    @classmethod
    def check_node(cls, node) -> None:
        """The node's arity and attribute kinds: what the graph passes rely on, so the loader
        runs it on every node before any pass (ModelError naming the node)."""
        def error(message):
            return ModelError(f"node {node.name!r} ({cls.kind}): {message}")
        lo, hi = cls.n_inputs
        n = len(node.inputs)
        while hi is not None and n > lo and not node.inputs[n - 1]:   # absent optional inputs
            n -= 1
        if n < lo or (hi is not None and n > hi):
            raise error(f"takes {lo}" + (f" to {hi}" if hi != lo else "") +
                        f" inputs, got {len(node.inputs)}")
        for i in range(lo if hi is not None else n):   # a variadic op's inputs are all required
            if not node.inputs[i]:
                raise error(f"input {i} is required")
        lo, hi = cls.n_outputs
        if not (lo <= len(node.outputs) <= hi):
            raise error(f"has {lo}" + (f" to {hi}" if hi != lo else "") +
                        f" outputs, got {len(node.outputs)}")
        if not isinstance(node.attrs, dict):
            raise error("attributes must be a mapping")
        for key, value in node.attrs.items():
            kind = cls.attributes.get(key)
            if kind is None:
                raise error(f"unknown attribute {key!r}")
            if not _KINDS[kind](value):
                raise error(f"attribute {key!r} must be {kind}, got {value!r}")

    # -- helpers ------------------------------------------------------------------------------
    def error(self, message) -> ModelError:
        return ModelError(f"node {self.name!r} ({self.kind}): {message}")

    def attr(self, name, default=None):
        return self.node.attrs.get(name, default)

    def input_name(self, i):
        return self.node.inputs[i] if i < len(self.node.inputs) else ""

    def const(self, constants, i, what):
        """A load-time constant input, or None when the input is absent."""
        name = self.input_name(i)
        if not name:
            return None
        value = constants[name]
        if value.dtype.kind not in "fiub":
            raise self.error(f"{what} has unsupported dtype {value.dtype}")
        return value

    def float_in(self, ins, i, what="X", rank=None) -> Info:
        info = ins[i]
        if info.dtype != F32:
            raise self.error(f"{what} must be float32, got {info.dtype}")
        if rank is not None and len(info.shape) not in ((rank,) if isinstance(rank, int)
                                                        else rank):
            raise self.error(f"{what} must be {rank}-D, got shape {info.shape}")
        return info

    def known(self, ins, i, what):
        """An input that must be constant when planning (it decides shapes)."""
        if i >= len(ins) or ins[i] is None:
            return None
        if ins[i].value is None:
            raise self.error(f"{what} must be computable when the model is planned (a constant "
                             f"or a function of input shapes), but depends on input values")
        return ins[i].value

    def ints(self, name, n, default, minimum=None):
        """An ints attribute of length n (default: ``default`` repeated), checked."""
        v = self.attr(name)
        if v is None:
            return (default,) * n
        if len(v) != n:
            raise self.error(f"{name} must have {n} values, got {list(v)}")
        if minimum is not None and any(e < minimum for e in v):
            raise self.error(f"{name} must be >= {minimum}, got {list(v)}")
        if any(abs(e) > shapes.INDEX_MAX for e in v):
            raise self.error(f"{name} must be at most {shapes.INDEX_MAX} in magnitude, "
                             f"got {list(v)}")
        return tuple(int(e) for e in v)

    def axis(self, a, rank, what="axis"):
        if not -rank <= a < rank:
            raise self.error(f"{what} {a} is out of range for rank {rank}")
        return a % rank

    # -- interface ----------------------------------------------------------------------------
    # ``infer`` may keep on the op what ``build`` needs for the same shapes: the planner calls
    # build right after infer for each node, and plans one shape at a time (under a lock).
    def setup(self, constants) -> None:
        pass

    def infer(self, ins) -> list:
        raise NotImplementedError

    def build(self, ins, outs, i, o):
        raise NotImplementedError

    def inplace_inputs(self, ins, outs) -> tuple:
        """Inputs whose buffer output 0 may take over when they die at this node."""
        return ()

    def flops(self, ins, outs) -> float:
        return 0.0

    def describe(self, ins, outs) -> str:
        return ""


def same_shape_inputs(ins, outs, candidates):
    out = outs[0]
    return tuple(k for k in candidates if k < len(ins) and ins[k] is not None
                 and ins[k].shape == out.shape and ins[k].dtype == out.dtype)


# ============================================================================ elementwise, unary

class Unary(Op):
    """One float32 input, one output of the same shape, computed by ``kernel(x, out)``."""
    single_pass = True      # reads x once before writing: may run in place

    def infer(self, ins):
        x = self.float_in(ins, 0)
        return [Info(x.shape, F32)]

    def inplace_inputs(self, ins, outs):
        return same_shape_inputs(ins, outs, (0,)) if self.single_pass else ()

    def flops(self, ins, outs):
        return float(outs[0].size)

    def kernel(self):
        raise NotImplementedError

    def build(self, ins, outs, i, o):
        fn = self.kernel()
        a, b = i[0], o[0]

        def step(env, nt):
            fn(env[a], env[b])
        return step


@register
class Relu(Unary):
    kind = "Relu"

    def build(self, ins, outs, i, o):
        a, b, maximum = i[0], o[0], np.maximum

        def step(env, nt):
            maximum(env[a], 0.0, out=env[b])
        return step


@register
class Sigmoid(Unary):
    kind = "Sigmoid"

    def kernel(self):
        expit = scipy.special.expit
        return lambda x, out: expit(x, out=out)


@register
class Tanh(Unary):
    kind = "Tanh"

    def kernel(self):
        return lambda x, out: np.tanh(x, out=out)


@register
class LeakyRelu(Unary):
    kind = "LeakyRelu"
    attributes = {"alpha": "float"}
    single_pass = False

    def setup(self, constants):
        self.alpha = np.float32(self.attr("alpha", 0.01))

    def kernel(self):
        # x for x >= 0, alpha*x otherwise: the larger of the two when alpha <= 1, the smaller
        # when alpha > 1 (two ufunc passes, no mask)
        alpha = self.alpha
        pick = np.maximum if alpha <= 1 else np.minimum

        def run(x, out):
            np.multiply(x, alpha, out=out)
            pick(x, out, out=out)
        return run


@register
class HardSigmoid(Unary):
    kind = "HardSigmoid"
    attributes = {"alpha": "float", "beta": "float"}

    def setup(self, constants):
        self.alpha = np.float32(self.attr("alpha", 0.2))
        self.beta = np.float32(self.attr("beta", 0.5))

    def kernel(self):
        alpha, beta = self.alpha, self.beta

        def run(x, out):
            np.multiply(x, alpha, out=out)
            np.add(out, beta, out=out)
            np.clip(out, 0.0, 1.0, out=out)
        return run


@register
class HardSwish(Unary):
    kind = "HardSwish"
    single_pass = False

    def kernel(self):
        sixth = np.float32(1 / 6)

        def run(x, out):
            np.multiply(x, sixth, out=out)
            np.add(out, np.float32(0.5), out=out)
            np.clip(out, 0.0, 1.0, out=out)
            np.multiply(out, x, out=out)
        return run


@register
class Clip(Unary):
    """Clip with constant bounds (inputs 1 and 2, as in opset 11+)."""
    kind = "Clip"
    n_inputs = (1, 3)

    def infer(self, ins):
        x = ins[0]
        if x.dtype.kind not in "fi":
            raise self.error(f"input must be a number type, got {x.dtype}")
        lo = self.known(ins, 1, "min")
        hi = self.known(ins, 2, "max")
        for v, what in ((lo, "min"), (hi, "max")):
            if v is not None and v.size != 1:
                raise self.error(f"{what} must be a scalar, got shape {v.shape}")
        self.bounds = (None if lo is None else lo.reshape(()).astype(x.dtype),
                       None if hi is None else hi.reshape(()).astype(x.dtype))
        return [Info(x.shape, x.dtype)]

    def build(self, ins, outs, i, o):
        lo, hi = self.bounds
        a, b = i[0], o[0]
        if lo is not None and hi is not None:
            def step(env, nt):
                out = env[b]
                np.maximum(env[a], lo, out=out)
                np.minimum(out, hi, out=out)
        elif lo is not None:
            def step(env, nt):
                np.maximum(env[a], lo, out=env[b])
        elif hi is not None:
            def step(env, nt):
                np.minimum(env[a], hi, out=env[b])
        else:
            def step(env, nt):
                np.copyto(env[b], env[a])
        return step


@register
class PRelu(Op):
    kind = "PRelu"
    n_inputs = (2, 2)

    def infer(self, ins):
        x = self.float_in(ins, 0)
        s = self.float_in(ins, 1, "slope")
        try:
            shape = np.broadcast_shapes(x.shape, s.shape)
        except ValueError:
            shape = None
        if shape != x.shape:
            raise self.error(f"slope of shape {s.shape} does not broadcast to X {x.shape}")
        return [Info(x.shape, F32)]

    def flops(self, ins, outs):
        return 2.0 * outs[0].size

    def build(self, ins, outs, i, o):
        a, s, b = i[0], i[1], o[0]

        def step(env, nt):
            x, out = env[a], env[b]
            np.multiply(x, env[s], out=out)
            np.copyto(out, x, where=x >= 0)
        return step


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


# ============================================================================ elementwise, binary

def _int_div(a, b, out):
    """ONNX integer Div truncates toward zero, as C does; NumPy's // floors."""
    q = np.abs(a) // np.abs(b)
    np.copyto(out, np.where((a < 0) != (b < 0), -q, q))


class Binary(Op):
    """NumPy-broadcasting elementwise operator; ``broadcast_axis`` is the opset < 7 form
    (B's dimensions line up with A's from that axis on)."""
    n_inputs = (2, 2)
    attributes = {"broadcast_axis": "int"}
    ufunc = None
    commutative = False

    def b_shape(self, a, b):
        axis = self.attr("broadcast_axis")
        if axis is None:
            return b
        if axis < 0:
            axis += len(a)
        if not 0 <= axis <= len(a) - len(b):
            raise self.error(f"broadcast axis {axis} does not fit B of rank {len(b)} in A of "
                             f"rank {len(a)}")
        return (1,) * axis + tuple(b) + (1,) * (len(a) - axis - len(b))

    def infer(self, ins):
        a, b = ins
        if a.dtype != b.dtype:
            raise self.error(f"inputs have different dtypes {a.dtype} and {b.dtype}")
        if a.dtype == np.bool_:
            raise self.error("arithmetic on bool tensors is not supported")
        self.bview = self.b_shape(a.shape, b.shape)
        try:
            shape = np.broadcast_shapes(a.shape, self.bview)
        except ValueError:
            raise self.error(f"shapes {a.shape} and {b.shape} do not broadcast") from None
        return [Info(shape, a.dtype)]

    def inplace_inputs(self, ins, outs):
        if self.bview != ins[1].shape:
            return same_shape_inputs(ins, outs, (0,))
        return same_shape_inputs(ins, outs, (0, 1))

    def flops(self, ins, outs):
        return float(outs[0].size)

    def build(self, ins, outs, i, o):
        fn = self.ufunc
        if self.kind == "Div" and outs[0].dtype.kind in "iu":
            fn = _int_div
        a, b, c = i[0], i[1], o[0]
        if self.bview != ins[1].shape:
            view = self.bview

            def step(env, nt):
                fn(env[a], env[b].reshape(view), out=env[c])
        else:
            def step(env, nt):
                fn(env[a], env[b], out=env[c])
        return step


@register
class Add(Binary):
    kind = "Add"
    ufunc = np.add
    commutative = True


@register
class Sub(Binary):
    kind = "Sub"
    ufunc = np.subtract


@register
class Mul(Binary):
    kind = "Mul"
    ufunc = np.multiply
    commutative = True


@register
class Div(Binary):
    kind = "Div"
    ufunc = np.divide


@register
class Sum(Op):
    kind = "Sum"
    n_inputs = (1, None)

    def infer(self, ins):
        dtypes = {x.dtype for x in ins}
        if len(dtypes) != 1:
            raise self.error(f"inputs have different dtypes {sorted(map(str, dtypes))}")
        try:
            shape = np.broadcast_shapes(*(x.shape for x in ins))
        except ValueError:
            raise self.error(f"shapes {[x.shape for x in ins]} do not broadcast") from None
        return [Info(shape, ins[0].dtype)]

    def inplace_inputs(self, ins, outs):
        # the first add reads inputs 0 and 1 before writing; later inputs are read after it,
        # so a tensor that comes again among them cannot be written over
        first = [k for k in (0, 1)[:len(ins)] if all(x is not ins[k] for x in ins[2:])]
        return same_shape_inputs(ins, outs, first)

    def flops(self, ins, outs):
        return float(outs[0].size * max(len(ins) - 1, 1))

    def build(self, ins, outs, i, o):
        first, rest, c = i[:2], i[2:], o[0]
        if len(i) == 1:
            def step(env, nt):
                np.copyto(env[c], env[first[0]])
            return step

        def step(env, nt):
            out = env[c]
            np.add(env[first[0]], env[first[1]], out=out)
            for k in rest:
                np.add(out, env[k], out=out)
        return step


# ============================================================================ matrix products

def matmul_shape(a, b):
    """numpy.matmul's output shape, or None if the shapes do not fit."""
    if not a or not b:
        return None
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        return None
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        return None
    shape = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return shape


@register
class MatMul(Op):
    kind = "MatMul"
    n_inputs = (2, 2)

    def infer(self, ins):
        a, b = ins
        if a.dtype != b.dtype or a.dtype.kind not in "fiu":
            raise self.error(f"inputs must share a number dtype, got {a.dtype} and {b.dtype}")
        shape = matmul_shape(a.shape, b.shape)
        if shape is None:
            raise self.error(f"shapes {a.shape} and {b.shape} do not fit a matrix product")
        return [Info(shape, a.dtype)]

    def flops(self, ins, outs):
        return 2.0 * outs[0].size * ins[0].shape[-1]

    def build(self, ins, outs, i, o):
        a, b, c = i[0], i[1], o[0]

        def step(env, nt):
            np.matmul(env[a], env[b], out=env[c])
        return step


# Gemm with a constant B and at most this many rows of A runs as matrix-vector products on the
# engine's threads (MobileNetV2's classifier, 1x1280 @ 1280x1000: 0.22 ms with numpy's matmul at
# one thread or two, about half that on two threads with kernels/dense.pyx).
DENSE_MAX_ROWS = 8


@register
class Gemm(Op):
    kind = "Gemm"
    n_inputs = (2, 3)
    attributes = {"alpha": "float", "beta": "float", "transA": "int", "transB": "int"}

    def setup(self, constants):
        self.alpha = np.float32(self.attr("alpha", 1.0))
        self.beta = np.float32(self.attr("beta", 1.0))
        self.ta = bool(self.attr("transA", 0))
        self.tb = bool(self.attr("transB", 0))

    def infer(self, ins):
        a = self.float_in(ins, 0, "A", 2)
        b = self.float_in(ins, 1, "B", 2)
        m, k = a.shape[::-1] if self.ta else a.shape
        k2, n = b.shape[::-1] if self.tb else b.shape
        if k != k2:
            raise self.error(f"A {a.shape} (transA={int(self.ta)}) and B {b.shape} "
                             f"(transB={int(self.tb)}) do not fit a matrix product")
        if len(ins) > 2 and ins[2] is not None:
            c = self.float_in(ins, 2, "C")
            try:
                ok = np.broadcast_shapes(c.shape, (m, n)) == (m, n)
            except ValueError:
                ok = False
            if not ok:
                raise self.error(f"C of shape {c.shape} does not broadcast to ({m}, {n})")
        return [Info((m, n), F32)]

    def flops(self, ins, outs):
        k = ins[0].shape[0 if self.ta else 1]
        return 2.0 * outs[0].size * k

    def build(self, ins, outs, i, o):
        a, b, y = i[0], i[1], o[0]
        c = i[2] if len(i) > 2 and ins[2] is not None else None
        ta, tb, alpha, beta = self.ta, self.tb, self.alpha, self.beta
        cval = ins[2].value if c is not None else None
        if cval is not None:
            cval = (cval * beta).astype(np.float32) if beta != 1 else cval
        rows = ins[0].shape[1 if ta else 0]
        if ins[1].value is not None and not ta and rows <= DENSE_MAX_ROWS:
            # a fully connected layer at small batch: a matrix-vector product that streams
            # the constant weights once, on the engine's threads (see kernels/dense.pyx)
            w = np.ascontiguousarray(ins[1].value if tb else ins[1].value.T, dtype=np.float32)
            work = rows * w.size

            def product(env, nt):
                out = env[y]
                _dense.f32_dense_rows(np.ascontiguousarray(env[a]), w, out,
                                      threads_for(work, nt))
                return out
        else:
            def product(env, nt):
                A, B, out = env[a], env[b], env[y]
                np.matmul(A.T if ta else A, B.T if tb else B, out=out)
                return out

        def step(env, nt):
            out = product(env, nt)
            if alpha != 1:
                np.multiply(out, alpha, out=out)
            if c is not None:
                if cval is not None:
                    np.add(out, cval, out=out)
                elif beta != 1:
                    np.add(out, env[c] * beta, out=out)
                else:
                    np.add(out, env[c], out=out)
        return step


# ============================================================================ shape and copy ops

class View(Op):
    """Operators that only reinterpret the shape of a C-contiguous buffer."""
    storage = "view"

    def out_shape(self, ins):
        raise NotImplementedError

    def infer(self, ins):
        shape = self.out_shape(ins)
        if math.prod(shape) != ins[0].size:
            raise self.error(f"cannot view {ins[0].shape} as {shape}")
        value = None if ins[0].value is None else ins[0].value.reshape(shape)
        return [Info(shape, ins[0].dtype, value)]

    def build(self, ins, outs, i, o):
        a, b, shape = i[0], o[0], outs[0].shape

        def step(env, nt):
            env[b] = env[a].reshape(shape)
        return step


@register
class Identity(View):
    kind = "Identity"

    def out_shape(self, ins):
        return ins[0].shape


@register
class Flatten(View):
    kind = "Flatten"
    attributes = {"axis": "int"}

    def out_shape(self, ins):
        shape = ins[0].shape
        a = self.attr("axis", 1)
        if not -len(shape) <= a <= len(shape):
            raise self.error(f"axis {a} is out of range for rank {len(shape)}")
        if a < 0:
            a += len(shape)
        return (math.prod(shape[:a]), math.prod(shape[a:]))


@register
class Reshape(View):
    kind = "Reshape"
    n_inputs = (2, 2)
    attributes = {"allowzero": "int"}

    def out_shape(self, ins):
        target = self.known(ins, 1, "shape")
        if target.ndim != 1 or target.dtype.kind not in "iu":
            raise self.error(f"shape must be a 1-D integer tensor, got {target.dtype} "
                             f"{target.shape}")
        src = ins[0].shape
        allowzero = bool(self.attr("allowzero", 0))
        shape = []
        for k, d in enumerate(int(v) for v in target):
            if d == 0 and not allowzero:
                if k >= len(src):
                    raise self.error(f"shape {target.tolist()} copies dimension {k} of X "
                                     f"{src}, which has none")
                d = src[k]
            shape.append(d)
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            raise self.error(f"shape {target.tolist()} is not valid")
        if -1 in shape:
            rest = math.prod(d for d in shape if d != -1)
            if rest == 0 or ins[0].size % rest:
                raise self.error(f"cannot reshape X {src} to {target.tolist()}")
            shape[shape.index(-1)] = ins[0].size // rest
        return tuple(shape)


@register
class Squeeze(View):
    kind = "Squeeze"
    n_inputs = (1, 2)

    def out_shape(self, ins):
        shape = ins[0].shape
        axes = self.known(ins, 1, "axes")
        if axes is None:
            return tuple(d for d in shape if d != 1)
        axes = {self.axis(int(a), len(shape), "axes entry") for a in axes.reshape(-1)}
        for a in axes:
            if shape[a] != 1:
                raise self.error(f"cannot squeeze axis {a} of X {shape}: its size is not 1")
        return tuple(d for k, d in enumerate(shape) if k not in axes)


@register
class Unsqueeze(View):
    kind = "Unsqueeze"
    n_inputs = (2, 2)

    def out_shape(self, ins):
        shape = ins[0].shape
        axes = self.known(ins, 1, "axes").reshape(-1)
        rank = len(shape) + len(axes)
        axes = sorted(self.axis(int(a), rank, "axes entry") for a in axes)
        if len(set(axes)) != len(axes):
            raise self.error(f"axes {axes} repeat an axis")
        out = list(shape)
        for a in axes:
            out.insert(a, 1)
        return tuple(out)


@register
class Transpose(Op):
    kind = "Transpose"
    attributes = {"perm": "ints"}

    def infer(self, ins):
        x = ins[0]
        rank = len(x.shape)
        perm = self.attr("perm")
        perm = tuple(range(rank))[::-1] if perm is None else tuple(int(p) for p in perm)
        if sorted(perm) != list(range(rank)):
            raise self.error(f"perm {list(perm)} is not a permutation of the {rank} axes")
        self.perm = perm
        return [Info(tuple(x.shape[p] for p in perm), x.dtype)]

    def build(self, ins, outs, i, o):
        a, b, perm = i[0], o[0], self.perm

        def step(env, nt):
            np.copyto(env[b], env[a].transpose(perm))
        return step


@register
class Concat(Op):
    kind = "Concat"
    n_inputs = (1, None)
    attributes = {"axis": "int"}

    def infer(self, ins):
        rank = len(ins[0].shape)
        if self.attr("axis") is None:
            raise self.error("attribute 'axis' is required")
        ax = self.axis(self.attr("axis"), max(rank, 1))
        dtypes = {x.dtype for x in ins}
        if len(dtypes) != 1:
            raise self.error(f"inputs have different dtypes {sorted(map(str, dtypes))}")
        for x in ins:
            if len(x.shape) != rank or any(a != b for k, (a, b) in
                                           enumerate(zip(x.shape, ins[0].shape)) if k != ax):
                raise self.error(f"input shapes {[x.shape for x in ins]} differ outside axis "
                                 f"{ax}")
        self.ax = ax
        shape = list(ins[0].shape)
        shape[ax] = sum(x.shape[ax] for x in ins)
        return [Info(shape, ins[0].dtype)]

    def build(self, ins, outs, i, o):
        srcs, b, ax = list(i), o[0], self.ax

        def step(env, nt):
            np.concatenate([env[k] for k in srcs], axis=ax, out=env[b])
        return step


@register
class Split(Op):
    kind = "Split"
    n_inputs = (1, 2)
    n_outputs = (1, 1 << 16)
    attributes = {"axis": "int", "num_outputs": "int"}

    def infer(self, ins):
        x = ins[0]
        ax = self.axis(self.attr("axis", 0), len(x.shape))
        n = len(self.node.outputs)
        split = self.known(ins, 1, "split")
        dim = x.shape[ax]
        if split is not None:
            sizes = [int(s) for s in split.reshape(-1)]
            if len(sizes) != n or sum(sizes) != dim or min(sizes) < 0:
                raise self.error(f"split {sizes} does not cut axis {ax} of size {dim} into {n}")
        else:
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - k * chunk) for k in range(n)]
            if min(sizes) < 0 or (self.attr("num_outputs") is None and dim % n):
                raise self.error(f"axis {ax} of size {dim} does not split into {n} outputs")
        self.ax, self.bounds = ax, np.cumsum([0] + sizes).tolist()
        return [Info(x.shape[:ax] + (s,) + x.shape[ax + 1:], x.dtype) for s in sizes]

    def build(self, ins, outs, i, o):
        a, ax = i[0], self.ax
        parts = [(b, (slice(None),) * ax + (slice(lo, hi),))
                 for b, lo, hi in zip(o, self.bounds[:-1], self.bounds[1:])]

        def step(env, nt):
            x = env[a]
            for b, sl in parts:
                np.copyto(env[b], x[sl])
        return step


@register
class Slice(Op):
    kind = "Slice"
    n_inputs = (3, 5)

    def infer(self, ins):
        x = ins[0]
        rank = len(x.shape)
        starts = self.known(ins, 1, "starts").reshape(-1)
        ends = self.known(ins, 2, "ends").reshape(-1)
        axes = self.known(ins, 3, "axes")
        steps = self.known(ins, 4, "steps")
        axes = list(range(len(starts))) if axes is None else [int(a) for a in axes.reshape(-1)]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps.reshape(-1)]
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise self.error("starts, ends, axes and steps must have one length")
        slices = [slice(None)] * rank
        seen = set()
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = self.axis(a, rank, "axes entry")
            if a in seen or st == 0:
                raise self.error("axes repeat an axis or a step is 0")
            seen.add(a)
            big = np.iinfo(np.int64).max
            s, e = int(max(min(s, big), -big)), int(max(min(e, big), -big))
            slices[a] = slice(s, e, st)
        self.slices = tuple(slices)
        shape = tuple(len(range(d)[sl]) for d, sl in zip(x.shape, slices))
        value = None if x.value is None else x.value[self.slices].copy()
        return [Info(shape, x.dtype, value)]

    def build(self, ins, outs, i, o):
        a, b, sl = i[0], o[0], self.slices

        def step(env, nt):
            np.copyto(env[b], env[a][sl])
        return step


@register
class Gather(Op):
    kind = "Gather"
    n_inputs = (2, 2)
    attributes = {"axis": "int"}

    def infer(self, ins):
        x, idx = ins
        if idx.dtype.kind not in "iu":
            raise self.error(f"indices must be integers, got {idx.dtype}")
        ax = self.axis(self.attr("axis", 0), max(len(x.shape), 1))
        if idx.value is not None and idx.value.size:
            d = x.shape[ax]
            if idx.value.min() < -d or idx.value.max() >= d:
                raise self.error(f"indices {idx.value.tolist()} out of range for axis {ax} of "
                                 f"size {d}")
        self.ax = ax
        shape = x.shape[:ax] + idx.shape + x.shape[ax + 1:]
        value = None
        if x.value is not None and idx.value is not None:
            check_tensor_size(self, shape, x.dtype, folding=True)
            value = np.take(x.value, idx.value, axis=ax)
        return [Info(shape, x.dtype, value)]

    def build(self, ins, outs, i, o):
        a, k, b, ax = i[0], i[1], o[0], self.ax

        def step(env, nt):
            np.take(env[a], env[k], axis=ax, out=env[b])
        return step


@register
class Shape(Op):
    kind = "Shape"
    attributes = {"start": "int", "end": "int"}

    def infer(self, ins):
        shape = ins[0].shape
        start, end = self.attr("start", 0), self.attr("end", len(shape))
        value = np.array(shape[slice(start, end)], dtype=np.int64)
        return [Info(value.shape, I64, value)]


@register
class ConstantOfShape(Op):
    kind = "ConstantOfShape"
    attributes = {"value": "num", "dtype": "str"}

    def setup(self, constants):
        dtype = self.attr("dtype", "float32")
        if dtype not in DTYPES:
            raise self.error(f"dtype {dtype!r} is not supported")
        self.dtype = np.dtype(dtype)

    def infer(self, ins):
        shape = self.known(ins, 0, "input")
        if shape.ndim != 1 or shape.dtype.kind not in "iu" or (shape < 0).any():
            raise self.error(f"input must be a 1-D tensor of non-negative sizes, got "
                             f"{shape.tolist()}")
        check_tensor_size(self, shape.tolist(), self.dtype, folding=True)
        value = np.full(tuple(int(d) for d in shape), self.attr("value", 0), self.dtype)
        return [Info(value.shape, self.dtype, value)]


@register
class Cast(Op):
    kind = "Cast"
    attributes = {"to": "str"}

    def setup(self, constants):
        to = self.attr("to")
        if to not in DTYPES:
            raise self.error(f"cast to {to!r} is not supported")
        self.to = np.dtype(to)

    def infer(self, ins):
        return [Info(ins[0].shape, self.to)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]

        def step(env, nt):
            np.copyto(env[b], env[a], casting="unsafe")
        return step


@register
class Expand(Op):
    kind = "Expand"
    n_inputs = (2, 2)

    def infer(self, ins):
        x = ins[0]
        target = self.known(ins, 1, "shape").reshape(-1)
        try:
            shape = np.broadcast_shapes(x.shape, tuple(int(d) for d in target))
        except ValueError:
            raise self.error(f"X {x.shape} does not broadcast to {target.tolist()}") from None
        return [Info(shape, x.dtype)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]

        def step(env, nt):
            np.copyto(env[b], env[a])
        return step


@register
class Pad(Op):
    """Pad with mode constant, reflect, edge or wrap; negative pads crop."""
    kind = "Pad"
    n_inputs = (2, 4)
    attributes = {"mode": "str"}
    modes = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}

    def setup(self, constants):
        self.mode = self.attr("mode", "constant")
        if self.mode not in self.modes:
            raise self.error(f"mode {self.mode!r} is not one of {list(self.modes)}")

    def infer(self, ins):
        x = ins[0]
        rank = len(x.shape)
        pads = self.known(ins, 1, "pads").reshape(-1).astype(np.int64)
        value = self.known(ins, 2, "constant_value")
        axes = self.known(ins, 3, "axes")
        axes = list(range(rank)) if axes is None else [self.axis(int(a), rank, "axes entry")
                                                       for a in axes.reshape(-1)]
        if len(pads) != 2 * len(axes):
            raise self.error(f"pads must have 2 * {len(axes)} entries, got {len(pads)}")
        before, after = [0] * rank, [0] * rank
        for k, a in enumerate(axes):
            before[a], after[a] = int(pads[k]), int(pads[k + len(axes)])
        crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(before, after, x.shape))
        inner = tuple(len(range(d)[c]) for d, c in zip(x.shape, crop))
        if min(inner, default=1) < 0:
            raise self.error(f"pads {pads.tolist()} crop more than X {x.shape} holds")
        self.crop = crop
        self.widths = tuple((max(b, 0), max(e, 0)) for b, e in zip(before, after))
        for (b, e), d in zip(self.widths, inner):
            if self.mode == "reflect" and (b or e) and (d < 2 or max(b, e) > d - 1):
                raise self.error(f"reflect padding {b, e} needs more than {max(b, e)} elements "
                                 f"along an axis of size {d}")
            if self.mode in ("edge", "wrap") and (b or e) and d == 0:
                raise self.error(f"{self.mode} padding of an empty axis")
        self.value = 0 if value is None else value.reshape(-1)[0].item() if value.size else 0
        shape = tuple(d + b + e for d, (b, e) in zip(inner, self.widths))
        return [Info(shape, x.dtype)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        crop, widths, value, mode = self.crop, self.widths, self.value, self.mode
        inner = tuple(slice(lo, lo + (hi_dim - lo - hi)) for (lo, hi), hi_dim
                      in zip(widths, outs[0].shape))
        if mode == "constant":
            def step(env, nt):
                out = env[b]
                out.fill(value)
                out[inner] = env[a][crop]
        else:
            def step(env, nt):
                env[b][...] = np.pad(env[a][crop], widths, mode=mode)
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
