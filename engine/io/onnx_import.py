"""ONNX files to the engine's graph (engine.graph.ir), from opset 6 to MAX_OPSET: reading the
file (initializers, graph inputs and outputs, attributes, local functions inlined) here, with
protobuf's runtime (engine/io/onnx_proto.py), each node's conversion in onnx_convert.py.

Every node becomes an IR node with the operator's opset-21 semantics, so nothing after the
import looks at an opset: attributes that later opsets made inputs (Clip's min/max before 11,
Pad's pads before 11, Squeeze/Unsqueeze axes before 13, Slice before 10, Split before 13)
become constant inputs; Upsample and opset-10 Resize become Resize with their asymmetric
coordinates; Softmax before 13 keeps its flatten-to-2-D meaning as ``coerce_2d``; opset-6
arithmetic with ``broadcast``/``axis`` keeps its axis as ``broadcast_axis``. Dropout becomes
Identity. Later opsets (up to MAX_OPSET) changed these operators only by adding element types,
which the engine refuses anyway, so they are read the same way.

Operators: every plan class registered in engine/graph/ops (``supported_ops()``; ``convengine
ops`` prints them with the schema versions read). Most are read as they are, attributes and all
(onnx_convert.converter); the few above, and PRelu, GroupNormalization and Cast, have a
converter of their own. Any other operator, or an attribute a plan does not understand, is an
engine.ModelError naming the node. Float16 and bfloat16 constants are widened to float32.

The ``onnx`` package is imported only for what it alone does: inlining a model's local
functions, and the schema versions of ``operator_table``.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ModelError
from ..graph.ir import DTYPES, Graph, Node, TensorSpec
from ..graph.ops import OPS
from . import onnx_proto
from .onnx_convert import CONVERTERS, converter, hint, supported_ops  # noqa: F401

MIN_OPSET = 6
# The newest opset whose operators the converters were checked against (onnx 1.23's).
MAX_OPSET = 28


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ModelError("inlining a model's local functions, and the operator table, need "
                         "the onnx package (pip install onnx)") from None
    return onnx


def _text(s) -> str:
    """A protobuf string field; the Python protobuf runtime gives bytes where it is not UTF-8."""
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else s


def _dtype(elem_type, what):
    if elem_type not in onnx_proto.DTYPE:
        raise ModelError(f"{what} has element type {elem_type}, which is not supported "
                         f"(supported: {', '.join(DTYPES)})")
    dtype = np.dtype(onnx_proto.DTYPE[elem_type])
    if dtype.name not in DTYPES:
        raise ModelError(f"{what} has element type {dtype.name}, which is not supported "
                         f"(supported: {', '.join(DTYPES)})")
    return dtype.name


# Half-precision element types widened to float32 when a constant is read: the kernels are
# float32, and every half value is exact in float32.
_WIDENED = {10: "float16", 16: "bfloat16"}      # TensorProto.FLOAT16, BFLOAT16


def _array(tensor, what, base_dir=None, widened=None):
    """The tensor's values; a float16 or bfloat16 one as float32 (its name is appended to
    ``widened``)."""
    value = onnx_proto.to_array(tensor, what, base_dir)
    if tensor.data_type in _WIDENED:
        value = value.astype(np.float32)
        if widened is not None:
            widened.append(_WIDENED[tensor.data_type])
    if value.dtype.name not in DTYPES:
        raise ModelError(f"{what} has dtype {value.dtype}, which is not supported "
                         f"(supported: {', '.join(DTYPES)})")
    return np.require(value, requirements="C")


def load(source, base_dir=None) -> Graph:
    """A path to an .onnx file (external data relative to its directory), the file's bytes
    (no external data), or an onnx.ModelProto (external data only relative to ``base_dir``,
    never the working directory)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, "rb") as f:
            data = f.read()
        try:
            model = onnx_proto.parse_model(data)
        except ModelError as e:
            raise ModelError(f"{path}: not a readable ONNX file ({e})") from None
        base_dir = os.path.dirname(os.path.abspath(path))
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data, base_dir = bytes(source), None
        elif hasattr(source, "SerializeToString"):      # an onnx.ModelProto
            data = source.SerializeToString()
            if base_dir is not None:
                base_dir = os.path.abspath(os.fspath(base_dir))
        else:
            raise ModelError(f"expected a path, the bytes of an ONNX file or an "
                             f"onnx.ModelProto, got {type(source).__name__}")
        try:
            model = onnx_proto.parse_model(data)
        except ModelError as e:
            raise ModelError(f"the bytes given are not an ONNX model ({e})") from None
    return _Importer(model, data, base_dir).graph


def check(path) -> list:
    """Every problem the importer finds in the ONNX file at ``path``, all at once (each node
    converted on its own), then the graph's node checks; an empty list when the import gets
    through. What only planning finds is for the caller to add (``convengine check``)."""
    problems = []
    try:
        with open(os.fspath(path), "rb") as f:
            data = f.read()
        model = onnx_proto.parse_model(data)
    except (OSError, ModelError) as e:
        return [f"{path}: not a readable ONNX file: {e}"]
    try:
        imp = _Importer(model, data, os.path.dirname(os.path.abspath(path)), problems)
    except ModelError as e:
        return problems + [str(e)]
    if problems:
        return problems
    for node in imp.graph.nodes:
        cls = OPS.get(node.op)
        if cls is None:
            problems.append(f"node {node.name!r}: operator {node.op!r} is not supported")
            continue
        try:
            cls.check_node(node)
        except ModelError as e:
            problems.append(str(e))
    return problems


A = onnx_proto.AttributeProto
# how each attribute type the converters read is taken from an AttributeProto
_ATTRIBUTE_VALUE = {A.FLOAT: lambda a: a.f, A.INT: lambda a: a.i, A.STRING: lambda a: a.s,
                    A.FLOATS: lambda a: list(a.floats), A.INTS: lambda a: list(a.ints),
                    A.STRINGS: lambda a: list(a.strings)}


def _inlined(data: bytes):
    """The model in ``data`` with its local functions inlined (by the onnx package)."""
    onnx = _onnx()
    try:
        from onnx.inliner import inline_local_functions
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        data = inline_local_functions(proto).SerializeToString()
    except Exception as e:
        raise ModelError(f"the model's local functions cannot be inlined: {e}") from None
    return onnx_proto.parse_model(data)


class _Importer:
    def __init__(self, model, data, base_dir, problems=None):
        self.base_dir = base_dir
        self.opset = None
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        if self.opset is None:
            raise ModelError("the model imports no version of the default ONNX operator set")
        if self.opset < MIN_OPSET:
            raise ModelError(f"opset {self.opset} is older than the oldest supported "
                             f"({MIN_OPSET})")
        if self.opset > MAX_OPSET:
            raise ModelError(f"opset {self.opset} is newer than this engine reads "
                             f"({MAX_OPSET})")
        self.local_functions = {(f.domain, f.name) for f in model.functions}
        if self.local_functions:
            # model-local functions (torch.onnx's dynamo exporter writes them) become the
            # nodes they stand for
            model = _inlined(data)
        g = model.graph
        if len(g.sparse_initializer):
            raise ModelError("sparse initializers are not supported")
        self.constants = {}
        self.widened = []
        for t in g.initializer:
            self.constants[t.name] = _array(t, f"initializer {t.name!r}", base_dir,
                                            self.widened)
        inputs = []
        for vi in g.input:
            if vi.name in self.constants:
                continue   # IR < 4 lists initializers as inputs too: they are constants here
            inputs.append(self._spec(vi, f"graph input {vi.name!r}", require_shape=True))
        self.nodes = []
        self.names = set()
        self.unusable = {}      # tensor name -> why nothing may read it
        for k, node in enumerate(g.node):
            if problems is None:
                self._convert(node, k)
                continue
            try:           # convengine check: every node's problem, not the first only
                self._convert(node, k)
            except ModelError as e:
                problems.append(str(e))
        if problems:
            return
        outputs = [self._spec(vi, f"graph output {vi.name!r}") for vi in g.output]
        used = {i for n in self.nodes for i in n.inputs} | {o.name for o in outputs}
        for name, why in self.unusable.items():
            if name in used:
                raise ModelError(f"tensor {name!r} is read, but {why}")
        self.graph = Graph(self.nodes, inputs, outputs, self.constants, name=g.name)
        if self.widened:
            kinds = " and ".join(sorted(set(self.widened)))
            self.graph.notes.append(f"{len(self.widened)} {kinds} constants widened to float32")

    # -- helpers ------------------------------------------------------------------------------
    def _spec(self, vi, what, require_shape=False):
        t = vi.type
        if not require_shape and t.WhichOneof("value") is None:
            return TensorSpec(vi.name, None, "float32")   # an output declared by name only
        if t.WhichOneof("value") != "tensor_type":
            raise ModelError(f"{what} is not a tensor")
        dtype = _dtype(t.tensor_type.elem_type, what) \
            if t.tensor_type.elem_type else "float32"
        shape = None
        if t.tensor_type.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None
                          for d in t.tensor_type.shape.dim)
        elif require_shape:
            raise ModelError(f"{what} declares no shape: the rank at least must be known")
        return TensorSpec(vi.name, shape, dtype)

    def const(self, base, value):
        name, k = base, 1
        while name in self.constants:
            name, k = f"{base}_{k}", k + 1
        self.constants[name] = np.require(value, requirements="C")
        return name

    def emit(self, op, name, inputs, outputs, attrs=None):
        self.nodes.append(Node(op, name, list(inputs), list(outputs),
                               {k: v for k, v in (attrs or {}).items() if v is not None}))

    def attrs(self, node, what):
        out = {}
        for a in node.attribute:
            if a.ref_attr_name:
                raise ModelError(f"{what}: attribute references are not supported")
            kind = a.type
            if kind == A.UNDEFINED:
                # onnx would read such an attribute as None, silently dropping it
                raise ModelError(f"{what}: attribute {a.name!r} has no type")
            if kind == A.TENSOR:
                out[_text(a.name)] = _array(a.t, f"{what}: attribute {a.name!r}",
                                            self.base_dir, self.widened)
                continue
            if kind not in _ATTRIBUTE_VALUE:
                raise ModelError(f"{what}: attribute {a.name!r} of this type is not supported")
            v = _ATTRIBUTE_VALUE[kind](a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, list):
                v = [e.decode("utf-8", "replace") if isinstance(e, bytes) else e for e in v]
            out[_text(a.name)] = v
        return out

    def dtype(self, elem_type, what):
        """The NumPy dtype name of an ONNX element type (for converters)."""
        return _dtype(elem_type, what)

    # -- nodes ----------------------------------------------------------------------------------
    def _convert(self, node, index):
        name = _text(node.name) or f"{_text(node.op_type)}_{index}"
        base, k = name, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        what = f"node {name!r} ({node.op_type})"
        domain = _text(node.domain)
        if domain not in ("", "ai.onnx"):
            raise ModelError(f"{what}: operator {node.op_type!r} of domain {domain!r} is "
                             f"not supported{hint(domain, _text(node.op_type))}")
        convert = converter(node.op_type)
        if convert is None:
            raise ModelError(f"{what}: operator {node.op_type!r} (opset {self.opset}) is not "
                             f"supported{hint('', node.op_type)}")
        attrs = self.attrs(node, what)
        inputs, outputs = list(node.input), list(node.output)
        try:
            convert(self, name, inputs, outputs, attrs)
        except ModelError as e:
            if name in str(e):
                raise
            raise ModelError(f"{what}: {e}") from None
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as e:
            # a converter reads attributes and inputs as the operator's spec lays them out;
            # a node that does not (a missing input, a string or NaN where a number belongs)
            # is malformed
            raise ModelError(f"{what}: malformed node ({type(e).__name__}: {e})") from None

    def take(self, attrs, known, drop=(), name=""):
        """The attributes an IR node keeps; ModelError for any not understood."""
        out = {}
        for k, v in attrs.items():
            if k in drop:
                continue
            if k not in known:
                raise ModelError(f"attribute {k!r} is not supported")
            out[k] = v
        return out


def operator_table() -> list:
    """[(operator, ONNX versions read, note)] for every supported operator, from the
    registry: the versions are the operator's schema versions from opset MIN_OPSET on (the
    importer reads each; needs the onnx package), the note the first sentence of the plan's
    or the converter's docstring."""
    onnx = _onnx()
    rows = []
    for op in supported_ops():
        versions = set()
        for v in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1):
            try:
                since = onnx.defs.get_schema(op, v, "").since_version
            except Exception:      # not defined at that opset (yet)
                continue
            versions.add(max(since, MIN_OPSET))     # older forms are read from opset 6 on
        cls = OPS.get(op)
        doc = ((cls.__doc__ if cls is not None and cls.__doc__ and cls.onnx else None)
               or (CONVERTERS[op].__doc__ if op in CONVERTERS else None) or "")
        note = " ".join(doc.split()).split(". ")[0].rstrip(".").replace("|", "/")
        if len(note) > 110:
            note = note[:note.rfind(" ", 0, 107)] + " ..."
        rows.append((op, ", ".join(str(v) for v in sorted(versions)), note))
    return rows
