"""The graph the engine plans and runs, independent of the file it came from.

Operators are ONNX's, with their newest semantics (opset 21): the ONNX importer rewrites older
forms (attributes that later became inputs, Upsample, legacy broadcasting) into these, so
nothing downstream looks at an opset. Fusion passes add a few attributes of the engine's own
(a Conv's ``activation``; a fourth Conv input, the residual added before the activation).

Tensor names are strings; "" in a node's inputs marks an absent optional input, as in ONNX.
Constants (initializers and folded subgraphs) are NumPy arrays held by the graph.
"""
from __future__ import annotations

import mmap
from typing import NamedTuple, Optional

import numpy as np

from ..errors import ModelError
from ..shapes import INDEX_MAX

# Element types a graph may hold. Compute operators take float32; the integer types carry
# shapes, indices and axes; bool holds comparisons' results (masks for Where, And, ...).
DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
          "uint8", "bool")


class TensorSpec(NamedTuple):
    """A graph input or output: its name, shape (None for a free dimension; the whole shape is
    None when even the rank is unknown) and NumPy dtype name."""
    name: str
    shape: Optional[tuple]
    dtype: str


class Node:
    """One operator application: op, a unique name, input and output tensor names ("" for an
    absent optional input) and attributes."""
    __slots__ = ("op", "name", "inputs", "outputs", "attrs")

    def __init__(self, op: str, name: str, inputs: list, outputs: list, attrs=None):
        self.op, self.name, self.inputs, self.outputs = op, name, inputs, outputs
        self.attrs = {} if attrs is None else attrs

    def __repr__(self):
        return f"{self.op}({self.name!r}: {self.inputs} -> {self.outputs})"


class Graph:
    """Nodes, graph inputs and outputs, and constants. ``check`` validates references and puts
    the nodes in topological order; every pass keeps the graph checked."""

    def __init__(self, nodes, inputs, outputs, constants, name=""):
        self.nodes: list[Node] = list(nodes)
        self.inputs: list[TensorSpec] = list(inputs)
        self.outputs: list[TensorSpec] = list(outputs)
        self.constants: dict[str, np.ndarray] = dict(constants)
        self.name = name
        self.notes: list[str] = []     # what the passes did, for explain()
        # the memory map of the file the constants are views of (engine.io.native), if any,
        # and the transformed weights that file carried: {node: {key: value}}
        self.mapped = None
        self.transformed: dict = {}

    def release_mapped(self) -> None:
        """Let the operating system drop the pages of the mapped file that the process has
        read so far: once the layers have transformed their weights, most constants are not
        read again, and a page that is gets read back (from the page cache) when it is."""
        if self.mapped is not None and hasattr(self.mapped, "madvise"):
            self.mapped.madvise(mmap.MADV_DONTNEED)

    # -- structure ----------------------------------------------------------------------------
    def producers(self) -> dict:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict:
        """Tensor name -> list of (node, input index), in node order."""
        users: dict = {}
        for n in self.nodes:
            for i, name in enumerate(n.inputs):
                if name:
                    users.setdefault(name, []).append((n, i))
        return users

    def output_names(self) -> set:
        return {o.name for o in self.outputs}

    def check(self) -> None:
        """Raise ModelError for a dangling reference, a tensor defined twice, a cycle, a bad
        name or dtype; otherwise sort the nodes topologically (stable for a sorted graph)."""
        defined: dict = {}

        def define(name, what):
            if not isinstance(name, str) or not name:
                raise ModelError(f"{what} has an empty or non-string tensor name {name!r}")
            if name in defined:
                raise ModelError(f"tensor {name!r} is defined twice: by {defined[name]} and "
                                 f"by {what}")
            defined[name] = what

        for spec in self.inputs:
            define(spec.name, f"graph input {spec.name!r}")
            if spec.dtype not in DTYPES:
                raise ModelError(f"graph input {spec.name!r} has dtype {spec.dtype!r}; "
                                 f"supported: {', '.join(DTYPES)}")
            if spec.shape is None:
                raise ModelError(f"graph input {spec.name!r} has no shape: the rank at least "
                                 f"must be declared")
            for d in spec.shape:
                if d is not None and (not isinstance(d, (int, np.integer)) or
                                      not 0 <= d <= INDEX_MAX):
                    raise ModelError(f"graph input {spec.name!r} has a bad dimension {d!r} in "
                                     f"shape {spec.shape} (0 to {INDEX_MAX}, or free)")
        for name, value in self.constants.items():
            define(name, f"constant {name!r}")
            if not isinstance(value, np.ndarray):
                raise ModelError(f"constant {name!r} must be a NumPy array, got "
                                 f"{type(value).__name__}")
            if value.dtype.name not in DTYPES:
                raise ModelError(f"constant {name!r} has dtype {value.dtype}; supported: "
                                 f"{', '.join(DTYPES)}")
        names = set()
        for n in self.nodes:
            if not isinstance(n.name, str) or not n.name:
                raise ModelError(f"a {n.op} node has an empty name")
            if n.name in names:
                raise ModelError(f"two nodes are named {n.name!r}")
            names.add(n.name)
            if not isinstance(n.inputs, list) or not isinstance(n.outputs, list):
                raise ModelError(f"node {n.name!r}: inputs and outputs must be lists")
            while n.inputs and n.inputs[-1] == "":   # trailing absent optional inputs
                n.inputs.pop()
            for o in n.outputs:
                if o:
                    define(o, f"node {n.name!r} ({n.op})")
        for n in self.nodes:
            for i, name in enumerate(n.inputs):
                if not isinstance(name, str):
                    raise ModelError(f"node {n.name!r} ({n.op}): input {i} is not a tensor name: "
                                     f"{name!r}")
                if name and name not in defined:
                    raise ModelError(f"node {n.name!r} ({n.op}): input {i} {name!r} is not a "
                                     f"graph input, a constant or any node's output")
        for spec in self.outputs:
            if spec.name not in defined:
                raise ModelError(f"graph output {spec.name!r} is not produced by any node, nor "
                                 f"a graph input or constant")
        self.nodes = _topological(self.nodes, set(defined) - set(self.producers()))

    # -- editing helpers for passes -------------------------------------------------------------
    def rename_uses(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new`` instead (graph outputs excepted)."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]

    def unique_name(self, base: str) -> str:
        taken = set(self.constants) | {s.name for s in self.inputs} | set(self.producers())
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def remove_unused(self) -> int:
        """Drop nodes none of whose outputs are read or exported, then unread constants.
        Returns the number of nodes removed."""
        removed = 0
        while True:
            users = self.consumers()
            wanted = self.output_names()
            keep = [n for n in self.nodes if any(o in users or o in wanted for o in n.outputs if o)]
            if len(keep) == len(self.nodes):
                break
            removed += len(self.nodes) - len(keep)
            self.nodes = keep
        users = self.consumers()
        wanted = self.output_names()
        self.constants = {k: v for k, v in self.constants.items() if k in users or k in wanted}
        return removed


def _topological(nodes: list, available: set) -> list:
    """Kahn's algorithm, taking ready nodes in their original order."""
    ready_names = set(available)
    pending = list(nodes)
    ordered = []
    while pending:
        progress = []
        rest = []
        for n in pending:
            if all(not i or i in ready_names for i in n.inputs):
                progress.append(n)
                ready_names.update(o for o in n.outputs if o)
            else:
                rest.append(n)
        if not progress:
            cycle = ", ".join(f"{n.name!r} ({n.op})" for n in rest[:8])
            more = f" and {len(rest) - 8} more" if len(rest) > 8 else ""
            raise ModelError(f"the graph has a cycle: these nodes wait on each other: "
                             f"{cycle}{more}")
        ordered.extend(progress)
        pending = rest
    return ordered
