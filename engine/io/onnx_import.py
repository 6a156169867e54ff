"""ONNX files to the engine's graph (engine.graph.ir), for opsets 6 to 21.

Every node becomes an IR node with the operator's opset-21 semantics, so nothing after the
import looks at an opset: attributes that later opsets made inputs (Clip's min/max before 11,
Pad's pads before 11, Squeeze/Unsqueeze axes before 13, Slice before 10, Split before 13)
become constant inputs; Upsample and opset-10 Resize become Resize with their asymmetric
coordinates; Softmax before 13 keeps its flatten-to-2-D meaning as ``coerce_2d``; opset-6
arithmetic with ``broadcast``/``axis`` keeps its axis as ``broadcast_axis``. Dropout becomes
Identity. Later opsets (up to the newest the onnx package knows) changed these operators only
by adding element types, which the engine refuses anyway, so they are read the same way.

Operators: every plan class registered in engine/graph/ops (``supported_ops()``; ``convengine
ops`` prints them with the schema versions read). Most are read as they are, attributes and all
(``converter``); the few above, and PRelu, GroupNormalization and Cast, have a converter of
their own. Any other operator, or an attribute a plan does not understand, is an
engine.ModelError naming the node. Float16 and bfloat16 constants are widened to float32.

The ``onnx`` package is needed here only, and imported when an ONNX file is loaded.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ModelError
from ..graph.ir import DTYPES, Graph, Node, TensorSpec
from ..graph.ops import OPS

MIN_OPSET = 6
NEWEST_SEMANTICS = 21


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ModelError("loading an ONNX file needs the onnx package (pip install onnx); "
                         "native .safetensors files load without it") from None
    return onnx


def _text(s) -> str:
    """A protobuf string field; the Python protobuf runtime gives bytes where it is not UTF-8."""
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else s


def _dtype(onnx, elem_type, what):
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        raise ModelError(f"{what} has an unknown element type {elem_type}") from None
    if dtype.name not in DTYPES:
        raise ModelError(f"{what} has element type {dtype.name}, which is not supported "
                         f"(supported: {', '.join(DTYPES)})")
    return dtype.name


# Half-precision element types widened to float32 when a constant is read: the kernels are
# float32, and every half value is exact in float32.
_WIDENED = {10: "float16", 16: "bfloat16"}      # TensorProto.FLOAT16, BFLOAT16


def _array(onnx, tensor, what, base_dir=None, widened=None):
    """The tensor's values; a float16 or bfloat16 one as float32 (its name is appended to
    ``widened``)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL and base_dir is None:
        raise ModelError(f"{what}: the data is stored in an external file; pass base_dir= "
                         f"(the directory it is relative to) to load a ModelProto with external "
                         f"data")
    try:
        value = onnx.numpy_helper.to_array(tensor, base_dir or "")
    except Exception as e:
        raise ModelError(f"{what}: cannot read the tensor data: {e}") from None
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
    (no external data), or an
    onnx.ModelProto (external data only relative to ``base_dir``, never the working
    directory)."""
    onnx = _onnx()
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except Exception as e:
            raise ModelError(f"the bytes given are not an ONNX model: {e}") from None
        source, base_dir = model, None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        base_dir = os.path.dirname(os.path.abspath(path))
        try:
            model = onnx.load(path)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise ModelError(f"{path}: not a readable ONNX file: {e}") from None
    else:
        model = source
        if base_dir is not None:
            base_dir = os.path.abspath(os.fspath(base_dir))
    return _Importer(onnx, model, base_dir).graph


def check(path) -> list:
    """Every problem the importer finds in the ONNX file at ``path``, all at once (each node
    converted on its own), then the graph's node checks; an empty list when the import gets
    through. What only planning finds is for the caller to add (``convengine check``)."""
    onnx = _onnx()
    problems = []
    try:
        model = onnx.load(os.fspath(path))
    except Exception as e:
        return [f"{path}: not a readable ONNX file: {e}"]
    try:
        imp = _Importer(onnx, model, os.path.dirname(os.path.abspath(path)), problems)
    except ModelError as e:
        return problems + [str(e)]
    if problems:
        return problems
    from ..graph.ops import OPS
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


class _Importer:
    def __init__(self, onnx, model, base_dir, problems=None):
        self.onnx = onnx
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
        newest = onnx.defs.onnx_opset_version()
        if self.opset > newest:
            raise ModelError(f"opset {self.opset} is newer than the onnx package knows "
                             f"({newest})")
        self.local_functions = {(f.domain, f.name) for f in model.functions}
        if self.local_functions:
            # model-local functions (torch.onnx's dynamo exporter writes them) become the
            # nodes they stand for
            try:
                from onnx.inliner import inline_local_functions
                model = inline_local_functions(model)
            except Exception as e:
                raise ModelError(f"the model's local functions cannot be inlined: {e}") from None
        g = model.graph
        if len(g.sparse_initializer):
            raise ModelError("sparse initializers are not supported")
        self.constants = {}
        self.widened = []
        for t in g.initializer:
            self.constants[t.name] = _array(onnx, t, f"initializer {t.name!r}", base_dir,
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
        dtype = _dtype(self.onnx, t.tensor_type.elem_type, what) \
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
            if a.type == self.onnx.AttributeProto.UNDEFINED:
                # onnx would read such an attribute as None, silently dropping it
                raise ModelError(f"{what}: attribute {a.name!r} has no type")
            if a.type == self.onnx.AttributeProto.TENSOR:
                out[_text(a.name)] = _array(self.onnx, a.t, f"{what}: attribute {a.name!r}",
                                            self.base_dir, self.widened)
                continue
            if a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS,
                          self.onnx.AttributeProto.SPARSE_TENSOR,
                          self.onnx.AttributeProto.TENSORS,
                          self.onnx.AttributeProto.SPARSE_TENSORS):
                raise ModelError(f"{what}: attribute {a.name!r} of this type is not supported")
            v = self.onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, (list, tuple)):
                v = [e.decode("utf-8", "replace") if isinstance(e, bytes) else e for e in v]
            out[_text(a.name)] = v
        return out

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
                             f"not supported{_hint(domain, _text(node.op_type))}")
        convert = converter(node.op_type)
        if convert is None:
            raise ModelError(f"{what}: operator {node.op_type!r} (opset {self.opset}) is not "
                             f"supported{_hint('', node.op_type)}")
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


# What to do about operators the engine does not read, where there is something to say.
_HINTS = {
    "If": "control flow: export with static shapes (torch.onnx.export(..., dynamo=False) "
          "traces the branch taken away)",
    "Loop": "control flow: unroll it at export (static shapes, dynamo=False)",
    "Scan": "control flow: unroll it at export (static shapes, dynamo=False)",
    "QuantizeLinear": "quantized models are not supported: export the float model",
    "DequantizeLinear": "quantized models are not supported: export the float model",
    "QLinearConv": "quantized models are not supported: export the float model",
}


def _hint(domain, op_type) -> str:
    if domain == "com.microsoft":
        return ("; it is an ONNX Runtime contrib operator, written by ORT's graph optimiser or "
                "a quantisation tool: give the engine the model as exported, before those")
    if domain.startswith("pkg.") or domain.startswith("onnxscript"):
        return ("; it comes from a library's custom domain (torch.onnx's dynamo exporter "
                "writes such nodes when a function is not inlined): export with "
                "torch.onnx.export(..., dynamo=False), or inline the functions first")
    hint = _HINTS.get(op_type)
    return f"; {hint}" if hint else ""


def _same(*known, drop=()):
    """A converter that keeps the operator and the listed attributes as they are."""
    def convert(imp, name, inputs, outputs, attrs):
        imp.emit(op_of[convert], name, inputs, outputs, imp.take(attrs, known, drop))
    return convert


op_of = {}
CONVERTERS = {}


def _register(op, fn):
    op_of[fn] = op
    CONVERTERS[op] = fn


def converter(op_type):
    """How a node of ONNX operator ``op_type`` becomes IR nodes, or None if unsupported: a
    converter written for it, else, for an operator plan whose ONNX form is its own
    (``Op.onnx``), the node as it is with the plan's attributes."""
    convert = CONVERTERS.get(op_type)
    if convert is None:
        cls = OPS.get(op_type)
        if cls is not None and cls.onnx:
            convert = _same(*cls.attributes)
            _register(op_type, convert)
    return convert


def supported_ops() -> list:
    """Every ONNX operator the importer reads."""
    return sorted(set(CONVERTERS) | {k for k, cls in OPS.items() if cls.onnx})


_WINDOW = ("kernel_shape", "strides", "pads", "dilations", "auto_pad")
for _op, _known in {
        "Conv": _WINDOW + ("group",),
        "ConvTranspose": _WINDOW + ("group", "output_padding", "output_shape"),
        "DeformConv": ("kernel_shape", "strides", "pads", "dilations", "group", "offset_group"),
        "AveragePool": _WINDOW + ("ceil_mode", "count_include_pad"),
        "GlobalAveragePool": (), "GlobalMaxPool": (),
        "MaxUnpool": ("kernel_shape", "strides", "pads"),
        "Relu": (), "Sigmoid": (), "Tanh": (), "HardSwish": (),
        "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
        "LRN": ("alpha", "beta", "bias", "size"),
        "MatMul": (), "Flatten": ("axis",), "Transpose": ("perm",), "Concat": ("axis",),
        "Gather": ("axis",), "Shape": ("start", "end"), "Expand": (), "Sum": (),
        "Identity": ()}.items():
    _register(_op, _same(*_known, drop=("consumed_inputs",)))


def _maxpool(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, _WINDOW + ("ceil_mode", "storage_order"))
    imp.emit("MaxPool", name, inputs, outputs[:2], attrs)


def _batchnorm(imp, name, inputs, outputs, attrs):
    if attrs.get("training_mode", 0):
        raise ModelError("training_mode=1 is not supported (inference only)")
    if imp.opset < 7 and not attrs.get("is_test", 1):
        pass   # is_test=0 asks for running-statistics updates: outputs 1-4, refused if read
    attrs = imp.take(attrs, ("epsilon", "spatial"),
                     drop=("momentum", "is_test", "consumed_inputs", "training_mode"))
    if imp.opset >= 9:
        attrs.pop("spatial", None)
    for extra in outputs[1:]:
        if extra:
            imp.unusable[extra] = (f"it is a training output of BatchNormalization {name!r}, "
                                   f"which inference does not compute")
    imp.emit("BatchNormalization", name, inputs[:5], outputs[:1], attrs)


def _prelu(imp, name, inputs, outputs, attrs):
    imp.take(attrs, (), drop=("consumed_inputs",))
    imp.emit("PRelu", name, inputs, outputs, {"channel_slope": 1} if imp.opset < 7 else {})


def _groupnorm(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("num_groups", "epsilon", "stash_type"))
    attrs["group_affine"] = int(imp.opset < 21)   # opsets 18-20: scale and bias per group
    imp.emit("GroupNormalization", name, inputs, outputs, attrs)


def _clip(imp, name, inputs, outputs, attrs):
    if imp.opset < 11:
        attrs = imp.take(attrs, ("min", "max"), drop=("consumed_inputs",))
        ins = [inputs[0]]
        for key in ("min", "max"):
            ins.append(imp.const(f"{name}.{key}", np.array(attrs[key], np.float32))
                       if key in attrs else "")
        inputs = ins
    else:
        imp.take(attrs, ())
    imp.emit("Clip", name, inputs, outputs)


def _binary(op):
    def convert(imp, name, inputs, outputs, attrs):
        attrs = imp.take(attrs, ("broadcast", "axis"), drop=("consumed_inputs",))
        ir = {}
        if imp.opset < 7 and attrs.get("broadcast", 0) and "axis" in attrs:
            ir["broadcast_axis"] = attrs["axis"]
        imp.emit(op, name, inputs, outputs, ir)
    return convert


for _op in ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "And", "Or", "Xor"):
    CONVERTERS[_op] = _binary(_op)


def _gemm(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("alpha", "beta", "transA", "transB"), drop=("broadcast",))
    imp.emit("Gemm", name, inputs, outputs, attrs)


def _reshape(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("allowzero",), drop=("consumed_inputs",))
    imp.emit("Reshape", name, inputs, outputs, attrs)


def _axes_op(op):
    def convert(imp, name, inputs, outputs, attrs):
        attrs = imp.take(attrs, ("axes",))
        if imp.opset < 13 and "axes" in attrs:
            inputs = [inputs[0], imp.const(f"{name}.axes", np.array(attrs["axes"], np.int64))]
        elif op == "Unsqueeze" and imp.opset < 13:
            raise ModelError("Unsqueeze needs axes")
        imp.emit(op, name, inputs, outputs)
    return convert


CONVERTERS["Squeeze"] = _axes_op("Squeeze")
CONVERTERS["Unsqueeze"] = _axes_op("Unsqueeze")


def _pad(imp, name, inputs, outputs, attrs):
    if imp.opset < 11:
        attrs = imp.take(attrs, ("pads", "mode", "value"))
        if "pads" not in attrs:
            raise ModelError("pads is required")
        inputs = [inputs[0], imp.const(f"{name}.pads", np.array(attrs["pads"], np.int64)),
                  imp.const(f"{name}.value", np.array(attrs.get("value", 0.0), np.float32))]
        attrs = {"mode": attrs.get("mode")}
    else:
        attrs = imp.take(attrs, ("mode",))
    imp.emit("Pad", name, inputs, outputs, attrs)


def _resize(imp, name, inputs, outputs, attrs):
    if imp.opset < 11:   # Resize-10: X and scales; asymmetric coordinates as Upsample
        attrs = imp.take(attrs, ("mode",))
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="simple")
        inputs = [inputs[0], "", inputs[1]]
    else:
        attrs = imp.take(attrs, ("mode", "coordinate_transformation_mode", "nearest_mode",
                                 "extrapolation_value", "axes", "keep_aspect_ratio_policy",
                                 "cubic_coeff_a", "exclude_outside", "antialias"))
    imp.emit("Resize", name, inputs, outputs, attrs)


def _upsample(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("mode", "scales", "height_scale", "width_scale"))
    mode = attrs.get("mode", "nearest")
    if mode in ("bilinear", "linear"):
        mode = "linear"
    elif mode != "nearest":
        raise ModelError(f"mode {mode!r} is not supported")
    if imp.opset < 9:
        if "scales" not in attrs:
            raise ModelError("scales is required")
        scales = imp.const(f"{name}.scales", np.array(attrs["scales"], np.float32))
    else:
        if len(inputs) < 2:
            raise ModelError("the scales input is required")
        scales = inputs[1]
    imp.emit("Resize", name, [inputs[0], "", scales], outputs,
             {"mode": mode, "coordinate_transformation_mode": "asymmetric",
              "nearest_mode": "simple"})


def _softmax(op):
    def convert(imp, name, inputs, outputs, attrs):
        attrs = imp.take(attrs, ("axis",))
        if imp.opset < 13:
            attrs = {"axis": attrs.get("axis", 1), "coerce_2d": 1}
        imp.emit(op, name, inputs, outputs, attrs)
    return convert


def _dropout(imp, name, inputs, outputs, attrs):
    imp.take(attrs, ("ratio", "seed", "is_test"), drop=("consumed_inputs",))
    if len(inputs) > 2 and inputs[2]:
        mode = imp.constants.get(inputs[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            raise ModelError("training_mode must be a constant false (inference only)")
    imp.emit("Identity", name, inputs[:1], outputs[:1])
    if len(outputs) > 1 and outputs[1]:
        # at inference every element is kept: the mask is all true
        shape = f"{name}.shape"
        imp.emit("Shape", f"{name}/mask_shape", inputs[:1], [shape])
        imp.emit("ConstantOfShape", f"{name}/mask", [shape], outputs[1:2],
                 {"value": 1, "dtype": "bool"})


def _constant(imp, name, inputs, outputs, attrs):
    if len(attrs) != 1:
        raise ModelError(f"needs exactly one value attribute, got {sorted(attrs)}")
    key, v = next(iter(attrs.items()))
    if key == "value":
        if not isinstance(v, np.ndarray):
            raise ModelError(f"attribute 'value' must be a tensor, got {type(v).__name__}")
        value = v
    elif key in ("value_float", "value_floats"):
        value = np.array(v, np.float32)
    elif key in ("value_int", "value_ints"):
        value = np.array(v, np.int64)
    else:
        raise ModelError(f"attribute {key!r} is not supported")
    if outputs[0] in imp.constants:
        raise ModelError(f"tensor {outputs[0]!r} is defined twice")
    imp.constants[outputs[0]] = np.require(value, requirements="C")


def _constant_of_shape(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("value",))
    ir = {}
    if "value" in attrs:
        v = attrs["value"]
        if not isinstance(v, np.ndarray) or v.size != 1:
            raise ModelError(f"attribute 'value' must be a tensor of one element, got {v!r}")
        ir = {"value": v.reshape(-1)[0].item(), "dtype": v.dtype.name}
    imp.emit("ConstantOfShape", name, inputs, outputs, ir)


def _slice(imp, name, inputs, outputs, attrs):
    if imp.opset < 10:
        attrs = imp.take(attrs, ("starts", "ends", "axes"))
        ins = [inputs[0]]
        for key in ("starts", "ends", "axes"):
            ins.append(imp.const(f"{name}.{key}", np.array(attrs[key], np.int64))
                       if key in attrs else "")
        inputs = ins
    else:
        imp.take(attrs, ())
    imp.emit("Slice", name, inputs, outputs)


def _split(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("axis", "split", "num_outputs"))
    if "split" in attrs:
        inputs = [inputs[0], imp.const(f"{name}.split", np.array(attrs.pop("split"), np.int64))]
    imp.emit("Split", name, inputs, outputs, attrs)


def _cast(imp, name, inputs, outputs, attrs):
    attrs = imp.take(attrs, ("to", "saturate", "round_mode"))
    to = attrs.get("to")
    if isinstance(to, str):   # opset 6 allowed the type's name
        to = getattr(imp.onnx.TensorProto, to.upper(), None)
    imp.emit("Cast", name, inputs, outputs,
             {"to": _dtype(imp.onnx, to, f"Cast {name!r} target")})


for _op, _fn in {"MaxPool": _maxpool, "PRelu": _prelu, "GroupNormalization": _groupnorm, "BatchNormalization": _batchnorm, "Clip": _clip,
                 "Gemm": _gemm, "Reshape": _reshape, "Pad": _pad, "Resize": _resize,
                 "Upsample": _upsample, "Softmax": _softmax("Softmax"),
                 "LogSoftmax": _softmax("LogSoftmax"), "Dropout": _dropout,
                 "Constant": _constant, "ConstantOfShape": _constant_of_shape,
                 "Slice": _slice, "Split": _split, "Cast": _cast}.items():
    CONVERTERS[_op] = _fn


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
