"""ONNX's protobuf messages, read by the protobuf runtime without the onnx package.

Importing onnx costs 0.7-1 s (its helpers pull ml_dtypes and more), several times what loading
a model takes otherwise; reading a model needs only the message schema. The messages the
importer reads are declared here with ONNX's field numbers (onnx/onnx.proto, proto2) in a
descriptor pool of their own, so they never clash with onnx's classes when both are loaded;
fields not declared are kept as unknown fields and never read. ``to_array`` is the tensor
decoding (typed fields, raw little-endian data, external data files) that onnx.numpy_helper
would do.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ModelError

# TensorProto.DataType -> NumPy dtype; bfloat16 (16) and the 8-, 4- and 2-bit floats and
# integers have no NumPy dtype: bfloat16 is widened by the importer, the rest refused.
DTYPE = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
         7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
         13: np.uint64, 14: np.complex64, 15: np.complex128}
STRING, BFLOAT16 = 8, 16
TYPE_NAMES = {"FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6,
              "INT64": 7, "STRING": 8, "BOOL": 9, "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12,
              "UINT64": 13, "COMPLEX64": 14, "COMPLEX128": 15, "BFLOAT16": 16}


class TensorProto:
    DEFAULT, EXTERNAL = 0, 1


class AttributeProto:
    UNDEFINED, FLOAT, INT, STRING, TENSOR, GRAPH = 0, 1, 2, 3, 4, 5
    FLOATS, INTS, STRINGS, TENSORS, GRAPHS = 6, 7, 8, 9, 10
    SPARSE_TENSOR, SPARSE_TENSORS, TYPE_PROTO, TYPE_PROTOS = 11, 12, 13, 14


# message -> [(field, number, type, label, message type)]; type: protobuf's scalar type name
# or "message"; label "1" optional, "*" repeated. Oneofs: (message, oneof) -> fields.
_MESSAGES = {
    "ModelProto": [("ir_version", 1, "int64", "1", None),
                   ("opset_import", 8, "message", "*", "OperatorSetIdProto"),
                   ("graph", 7, "message", "1", "GraphProto"),
                   ("functions", 25, "message", "*", "FunctionProto")],
    "OperatorSetIdProto": [("domain", 1, "string", "1", None),
                           ("version", 2, "int64", "1", None)],
    "FunctionProto": [("name", 1, "string", "1", None), ("domain", 10, "string", "1", None)],
    "GraphProto": [("node", 1, "message", "*", "NodeProto"),
                   ("name", 2, "string", "1", None),
                   ("initializer", 5, "message", "*", "TensorProto"),
                   ("sparse_initializer", 15, "message", "*", "SparseTensorProto"),
                   ("input", 11, "message", "*", "ValueInfoProto"),
                   ("output", 12, "message", "*", "ValueInfoProto")],
    "SparseTensorProto": [],
    "NodeProto": [("input", 1, "string", "*", None), ("output", 2, "string", "*", None),
                  ("name", 3, "string", "1", None), ("op_type", 4, "string", "1", None),
                  ("domain", 7, "string", "1", None),
                  ("attribute", 5, "message", "*", "AttributeProto")],
    "AttributeProto": [("name", 1, "string", "1", None),
                       ("ref_attr_name", 21, "string", "1", None),
                       ("type", 20, "int32", "1", None),
                       ("f", 2, "float", "1", None), ("i", 3, "int64", "1", None),
                       ("s", 4, "bytes", "1", None),
                       ("t", 5, "message", "1", "TensorProto"),
                       ("floats", 7, "float", "*", None), ("ints", 8, "int64", "*", None),
                       ("strings", 9, "bytes", "*", None)],
    "ValueInfoProto": [("name", 1, "string", "1", None),
                       ("type", 2, "message", "1", "TypeProto")],
    "TypeProto": [("tensor_type", 1, "message", "1", "TypeProto.Tensor"),
                  ("sequence_type", 4, "message", "1", "SparseTensorProto"),
                  ("map_type", 5, "message", "1", "SparseTensorProto"),
                  ("opaque_type", 7, "message", "1", "SparseTensorProto"),
                  ("sparse_tensor_type", 8, "message", "1", "SparseTensorProto"),
                  ("optional_type", 9, "message", "1", "SparseTensorProto")],
    "TypeProto.Tensor": [("elem_type", 1, "int32", "1", None),
                         ("shape", 2, "message", "1", "TensorShapeProto")],
    "TensorShapeProto": [("dim", 1, "message", "*", "TensorShapeProto.Dimension")],
    "TensorShapeProto.Dimension": [("dim_value", 1, "int64", "1", None),
                                   ("dim_param", 2, "string", "1", None)],
    "TensorProto": [("dims", 1, "int64", "*", None), ("data_type", 2, "int32", "1", None),
                    ("float_data", 4, "float", "*", None),
                    ("int32_data", 5, "int32", "*", None),
                    ("string_data", 6, "bytes", "*", None),
                    ("int64_data", 7, "int64", "*", None), ("name", 8, "string", "1", None),
                    ("raw_data", 9, "bytes", "1", None),
                    ("double_data", 10, "double", "*", None),
                    ("uint64_data", 11, "uint64", "*", None),
                    ("external_data", 13, "message", "*", "StringStringEntryProto"),
                    ("data_location", 14, "int32", "1", None)],
    "StringStringEntryProto": [("key", 1, "string", "1", None),
                               ("value", 2, "string", "1", None)],
}
_ONEOFS = {"TypeProto": ("value", ["tensor_type", "sequence_type", "map_type", "opaque_type",
                                   "sparse_tensor_type", "optional_type"]),
           "TensorShapeProto.Dimension": ("value", ["dim_value", "dim_param"])}
_PACKAGE = "convengine.onnx"
_classes = None


def _build():
    """The message classes, made once, in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    kinds = {"int64": F.TYPE_INT64, "int32": F.TYPE_INT32, "uint64": F.TYPE_UINT64,
             "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE, "string": F.TYPE_STRING,
             "bytes": F.TYPE_BYTES, "message": F.TYPE_MESSAGE}
    fd = descriptor_pb2.FileDescriptorProto(name="convengine_onnx.proto", package=_PACKAGE,
                                            syntax="proto2")
    made = {}
    for full in _MESSAGES:                     # outer messages first, nested ones inside them
        outer, _, inner = full.partition(".")
        if inner:
            msg = made[outer].nested_type.add(name=inner)
        else:
            msg = fd.message_type.add(name=outer)
        made[full] = msg
    for full, fields in _MESSAGES.items():
        msg = made[full]
        oneof = _ONEOFS.get(full)
        if oneof:
            msg.oneof_decl.add(name=oneof[0])
        for name, number, kind, label, type_name in fields:
            f = msg.field.add(name=name, number=number, type=kinds[kind],
                              label=F.LABEL_REPEATED if label == "*" else F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
            if oneof and name in oneof[1]:
                f.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    make = getattr(message_factory, "GetMessageClass", None)      # protobuf >= 4.22
    if make is None:
        make = message_factory.MessageFactory(pool).GetPrototype
    return {full: make(pool.FindMessageTypeByName(f"{_PACKAGE}.{full}")) for full in _MESSAGES}


def parse_model(data: bytes):
    """The ModelProto in ``data`` (ModelError if it is not one)."""
    global _classes
    if _classes is None:
        try:
            _classes = _build()
        except ImportError:
            raise ModelError("loading an ONNX file needs the protobuf package (pip install "
                             "'convengine[onnx]'); native .safetensors files load without "
                             "it") from None
    model = _classes["ModelProto"]()
    try:
        model.ParseFromString(data)
    except Exception as e:       # protobuf's DecodeError, or a RuntimeError from upb
        raise ModelError(f"not an ONNX model: {e}") from None
    return model


def _external(tensor, base_dir, what) -> bytes:
    """The bytes of an external-data tensor: a file inside ``base_dir``, at offset/length."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location or os.path.isabs(location):
        raise ModelError(f"{what}: external data location {location!r} must be a relative path")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ModelError(f"{what}: external data location {location!r} lies outside the "
                         f"model's directory")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelError(f"{what}: external data offset/length must be integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{what}: negative external data offset or length")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
    except OSError as e:
        raise ModelError(f"{what}: cannot read external data {location!r}: {e}") from None
    if length is not None and len(data) != length:
        raise ModelError(f"{what}: external data {location!r} holds {len(data)} bytes at "
                         f"offset {offset}, {length} expected")
    return data


def to_array(tensor, what, base_dir=None) -> np.ndarray:
    """The values of a TensorProto as a C-ordered array (float16 as float16, bfloat16 as
    float32). External data is read relative to ``base_dir``."""
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{what}: negative dimension in {dims}")
    count = 1
    for d in dims:
        count *= d
    kind = tensor.data_type
    if kind == STRING:
        raise ModelError(f"{what}: string tensors are not supported")
    if kind != BFLOAT16 and kind not in DTYPE:
        raise ModelError(f"{what} has an unknown or unsupported element type {kind}")
    dtype = np.dtype(np.uint16 if kind == BFLOAT16 else DTYPE[kind])
    if tensor.data_location == TensorProto.EXTERNAL:
        if base_dir is None:
            raise ModelError(f"{what}: the data is stored in an external file; pass base_dir= "
                             f"(the directory it is relative to) to load a ModelProto with "
                             f"external data")
        raw = _external(tensor, base_dir, what)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        raw = None
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ModelError(f"{what}: {len(raw)} bytes of data for shape {dims} of "
                             f"{dtype.name}")
        values = np.frombuffer(raw, dtype.newbyteorder("<"), count).astype(dtype)
    else:
        values = _typed(tensor, kind, dtype, count, what)
    if kind == BFLOAT16:          # the high half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return np.require(values.reshape(dims), requirements="C")


def _typed(tensor, kind, dtype, count, what):
    """Values from the typed repeated fields, as onnx.proto lays them out per element type."""
    if kind in (1, 14):                                   # float, complex64
        src = np.array(tensor.float_data, np.float32)
    elif kind in (11, 15):                                # double, complex128
        src = np.array(tensor.double_data, np.float64)
    elif kind == 7:
        src = np.array(tensor.int64_data, np.int64)
    elif kind in (12, 13):
        src = np.array(tensor.uint64_data, np.uint64)
    else:                   # int32, int16, int8, uint16, uint8, bool, float16/bfloat16 bits
        src = np.array(tensor.int32_data, np.int64)
    if kind in (14, 15):
        if src.size != 2 * count:
            raise ModelError(f"{what}: {src.size} values for {count} complex elements")
        return src.view(dtype) if src.size else np.zeros(0, dtype)
    if src.size != count:
        raise ModelError(f"{what}: {src.size} values for shape of {count} elements")
    if kind in (10, BFLOAT16):                            # the bits, in the low 16
        return (src & 0xFFFF).astype(np.uint16).view(np.float16) if kind == 10 \
            else (src & 0xFFFF).astype(np.uint16)
    if kind == 9:
        return src != 0
    return src.astype(dtype)
