"""What every node plan shares: the ``Op`` base class, ``Info``, the attribute kinds and the
registry ``OPS`` (operator kind -> plan class; ``register`` adds one).

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
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from ... import shapes
from ...errors import ModelError
from ...memory import current_max_memory, format_bytes
from ...ops.activation import is_activation

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)
# Largest tensor a model may make, in bytes: a file that asks for more (a ConstantOfShape or an
# Expand to a huge shape, a Resize by a huge factor) is refused while planning, before anything
# is allocated.
MAX_TENSOR_BYTES = 4 << 30


# NumPy's largest rank (numpy.lib's MAXDIMS in NumPy 2)
MAX_RANK = 32


def check_tensor_size(op, shape, dtype, what="output", folding=False) -> None:
    """Before a tensor is made: every dimension within the kernels' index range (an empty
    tensor may not hide a huge one), within the single-tensor cap, and for a value computed
    while inferring (``folding``, before the plan's own budget check can see it) within the
    model's memory budget."""
    if len(shape) > MAX_RANK:
        raise op.error(f"{what} would have rank {len(shape)}, more than NumPy's {MAX_RANK}")
    if any(not 0 <= int(d) <= shapes.INDEX_MAX for d in shape):
        raise op.error(f"{what} of shape {tuple(shape)} has a dimension outside 0 to "
                       f"{shapes.INDEX_MAX}")
    if 0 in tuple(shape) and math.prod(int(d) for d in shape if d) * \
            np.dtype(dtype).itemsize >= 2**63:
        raise op.error(f"{what} of shape {tuple(shape)} is empty, but NumPy cannot make an "
                       f"array of its other dimensions")
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise op.error(f"{what} of shape {tuple(shape)} would take {nbytes / 2**30:.1f} GiB, "
                       f"more than the {MAX_TENSOR_BYTES >> 30} GiB the engine allows a tensor")
    budget = current_max_memory()
    if folding and nbytes > budget:
        raise op.error(f"{what} of shape {tuple(shape)} would take {format_bytes(nbytes)}, "
                       f"more than the model's memory budget ({format_bytes(budget)}, "
                       f"engine.load's max_memory)")


OPS: dict = {}


class NeedsValue(ModelError):
    """An input that decides shapes (``Op.known``) has no value while planning. The planner
    names the tensor (``tensor``); a model whose graph inputs it depends on plans per value of
    those inputs (engine/graph/runner.py)."""

    def __init__(self, message, index):
        super().__init__(message)
        self.index = index
        self.tensor = None
        self.infos = {}      # what planning knew when it stopped


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
    """An integer in int64's range, as ONNX stores them (a native file's JSON could hold more:
    refused here rather than overflowing NumPy's index arithmetic later)."""
    return (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and -(1 << 63) <= int(v) < (1 << 63))


def _is_num(v):
    return (_is_int(v) or isinstance(v, (float, np.floating))) and not isinstance(v, bool)


_KINDS = {
    "int": _is_int,
    "float": _is_num,
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, (list, tuple)) and all(_is_int(e) for e in v),
    "floats": lambda v: isinstance(v, (list, tuple)) and all(_is_num(e) for e in v),
    "act": lambda v: v is None or (isinstance(v, str) and is_activation(v)),
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
    # Whether ONNX's operator of the same name is this plan with the same attributes, so the
    # importer needs no converter for it (False for the engine's own fused nodes).
    onnx = True

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
            more = " or more" if hi is None else (f" to {hi}" if hi != lo else "")
            raise error(f"takes {lo}{more} inputs, got {len(node.inputs)}")
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
                what = {"act": "an activation of engine/ops/activation.py (as 'relu', "
                               "'leaky_relu(0.1)')"}.get(kind, kind)
                raise error(f"attribute {key!r} must be {what}, got {value!r}")

    # -- helpers ------------------------------------------------------------------------------
    def error(self, message) -> ModelError:
        return ModelError(f"node {self.name!r} ({self.kind}): {message}")

    def attr(self, name, default=None):
        return self.node.attrs.get(name, default)

    def finite_attr(self, name, default: float) -> float:
        """A float attribute, checked finite in float32 (the kernels' precision)."""
        value = float(self.attr(name, default))
        if not math.isfinite(value) or not np.isfinite(np.float32(value)):
            raise self.error(f"{name} must be finite in float32, got {value}")
        return value

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
            raise NeedsValue(f"node {self.name!r} ({self.kind}): {what} must be computable when "
                             f"the model is planned (a constant, a function of input shapes, "
                             f"or a small graph input), but depends on computed values", i)
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

    def placements(self, ins, outs) -> list:
        """(input index, byte offset) of the inputs this step's output 0 holds as they are,
        at that offset: the memory planner may have their makers write them there
        (engine/graph/plan.py), and then tells the step which (``placed_inputs``)."""
        return []

    # True for a step that may take an input's buffer only where no other of its inputs is
    # that buffer: one that reads its other inputs at other positions than it writes (a
    # convolution adding a residual, y = conv(x) + x, would read what it wrote)
    inplace_exclusive = False

    def flops(self, ins, outs) -> float:
        return 0.0

    def describe(self, ins, outs) -> str:
        return ""


def same_shape_inputs(ins, outs, candidates):
    out = outs[0]
    return tuple(k for k in candidates if k < len(ins) and ins[k] is not None
                 and ins[k].shape == out.shape and ins[k].dtype == out.dtype)


@contextlib.contextmanager
def blame(op):
    """Errors of the Python machinery while an operator infers, builds or folds (an index, a
    type, a NaN where an integer belongs: what a malformed node causes) become a ModelError
    naming the node."""
    try:
        yield
    except ModelError:
        raise
    except ValueError as e:
        raise op.error(str(e)) from None
    except (TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError,
            RuntimeError) as e:    # RuntimeError: NumPy's limits, e.g. on rank
        raise op.error(f"{type(e).__name__}: {e}") from None
