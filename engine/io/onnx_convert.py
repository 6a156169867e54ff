"""How each ONNX node becomes IR nodes (engine/io/onnx_import.py reads the file and calls
these): a converter per operator whose attributes or inputs changed between opsets, and, for
an operator whose ONNX form is its plan's own (``Op.onnx``), the node as it is. A converter
``convert(imp, name, inputs, outputs, attrs)`` emits IR nodes and constants through the
importer ``imp`` (``emit``, ``const``, ``take``, ``opset``, ``dtype``); ModelErrors it raises
are given the node's name.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph.ops import OPS
from .onnx_proto import TYPE_NAMES

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


def hint(domain, op_type) -> str:
    """"; what to do" about an unsupported operator, or "" when there is nothing to say."""
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
        to = TYPE_NAMES.get(to.upper())
    imp.emit("Cast", name, inputs, outputs,
             {"to": imp.dtype(to, f"Cast {name!r} target")})


for _op, _fn in {"MaxPool": _maxpool, "PRelu": _prelu, "GroupNormalization": _groupnorm, "BatchNormalization": _batchnorm, "Clip": _clip,
                 "Gemm": _gemm, "Reshape": _reshape, "Pad": _pad, "Resize": _resize,
                 "Upsample": _upsample, "Softmax": _softmax("Softmax"),
                 "LogSoftmax": _softmax("LogSoftmax"), "Dropout": _dropout,
                 "Constant": _constant, "ConstantOfShape": _constant_of_shape,
                 "Slice": _slice, "Split": _split, "Cast": _cast}.items():
    CONVERTERS[_op] = _fn
