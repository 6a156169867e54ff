"""The native model file: one safetensors file.

Tensors: every constant of the optimised graph, under its own name. Weights are stored as the
engine runs them: BatchNormalization already folded into the convolutions (float32), other
constants folded, so loading does no arithmetic on weights and a saved model reproduces the
original model's outputs bit for bit.

Metadata (safetensors ``__metadata__``, string values):
  "format": "convengine", "format_version": "1",
  "graph": JSON {"name", "inputs": [{"name", "shape" (ints, null for a free dimension),
          "dtype"}], "outputs": [same; "shape" may be null], "nodes": [{"name", "op",
          "inputs" (tensor names, "" for an absent optional input), "outputs", "attrs"}],
          "constants": {name: {"shape", "dtype"}}, "notes": [what the load-time passes did]}.
  "transformed" (written by model.save(path, transformed=True)): JSON {"made_for": {"cpu",
          "isa", "engine"} (engine/_machine.py), "layers": {node: {key: tensor name, or a list
          of names (null for an absent array)}}}: every convolution's transformed weights (as
          TransformedWeights holds them), stored as tensors beside the constants. A machine
          whose "made_for" is the same reads them instead of transforming (each is used only
          if its shape is the one the algorithm needs); any other transforms as usual.
The operators and attributes are those of engine.graph.ir (ONNX's, opset-21 semantics, plus the
fused Conv's "activation" and residual input).

Tensors are not copied: they are views of a read-only memory map of the file (read_tensors),
and after planning the pages read so far are given back to the operating system
(Graph.release_mapped), so weights that only a transform reads do not stay in memory.

Loading reads JSON and raw tensors only (no pickle, nothing executed, no onnx import) and
checks everything before use: the format and version, the JSON's structure and types, that
every tensor the JSON lists is in the file with the listed shape and dtype and no other is,
every reference, that the graph is acyclic, and (when the Model is made) every operator and
its attributes. Any failure is an engine.ModelError naming what is wrong.
"""
from __future__ import annotations

import json
import math
import mmap
import os

import numpy as np

from .._machine import machine_key
from ..errors import ModelError
from ..shapes import INDEX_MAX
from ..graph.ir import DTYPES, Graph, Node, TensorSpec

FORMAT = "convengine"
FORMAT_VERSION = 1


def save(model, path, transformed=False) -> None:
    from safetensors.numpy import save_file
    g = model.graph
    tensors = {name: np.require(v, requirements="C") for name, v in g.constants.items()}
    graph = {
        "name": g.name,
        "inputs": [_spec_json(s) for s in model.inputs],
        "outputs": [_spec_json(s) for s in model.outputs],
        "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs),
                   "outputs": list(n.outputs), "attrs": _attrs_json(n.attrs)}
                  for n in g.nodes],
        "constants": {name: {"shape": list(v.shape), "dtype": v.dtype.name}
                      for name, v in tensors.items()},
        "notes": list(g.notes),
    }
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "graph": json.dumps(graph, separators=(",", ":"))}
    if transformed:
        extra = {}
        stored = _stored_transforms(model, tensors, extra)
        metadata["transformed"] = json.dumps({"made_for": machine_key(), "layers": stored},
                                             separators=(",", ":"))
        tensors.update(extra)
    # a new file renamed over the old one: a model loaded from the old file maps it, and
    # rewriting a mapped file in place would change (or cut short) what that model reads
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _stored_transforms(model, tensors, extra) -> dict:
    """Every convolution's transformed weights, put in ``extra`` under names not in
    ``tensors``; returns {node: {key: tensor name,
    or a list of names (None for an absent array)}}. Planned first for the declared input
    shape (a free batch dimension taken as 1) if the model has no plan yet."""
    from ..ops.conv2d import TransformedWeights, _shapes
    if not model._plans:
        shapes = [s.shape for s in model.inputs]
        if not all(all(d is not None for d in shape[1:]) for shape in shapes):
            raise ValueError("save(transformed=True) needs the transformed weights of a plan: "
                             "run the model once first (its inputs have free dimensions "
                             "besides the batch)")
        model._plan(tuple(tuple(1 if d is None else d for d in shape) for shape in shapes))
    layers = {}
    for name, op in model._ops.items():
        tw = getattr(op, "transforms", None)
        if not isinstance(tw, TransformedWeights):
            continue
        for key, value in tw.items():
            if not isinstance(key, str) or _shapes(value) is None:
                continue
            arrays = value if isinstance(value, tuple) else (value,)
            names = []
            for k, a in enumerate(arrays):
                if a is None:
                    names.append(None)
                    continue
                t = f"transformed/{name}/{key}/{k}"
                while t in tensors:
                    t += "_"
                extra[t] = a
                names.append(t)
            layers.setdefault(name, {})[key] = names if isinstance(value, tuple) else names[0]
    return layers


def _read_transforms(path, text, tensors) -> tuple[dict, str, set]:
    """({node: {key: array or tuple}}, a note for explain, the tensor names it lists) from
    the "transformed" metadata: the stored transformed weights if they were made for this
    engine and CPU, else none."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError) as e:
        raise _fail(path, f"the transformed metadata is not valid JSON: {e}") from None
    check = _Checker(path)
    check.dict(doc, "transformed", {"made_for": dict, "layers": dict})
    out, count, names_used = {}, 0, set()
    for node, keys in doc["layers"].items():
        if not isinstance(keys, dict):
            raise _fail(path, f"transformed.layers[{node!r}] must be a JSON object")
        for key, names in keys.items():
            listed = names if isinstance(names, list) else [names]
            if not (isinstance(names, (str, list))
                    and all(n is None or (isinstance(n, str) and n in tensors) for n in listed)):
                raise _fail(path, f"transformed weights {key!r} of node {node!r} name a tensor "
                                  f"that is not in the file")
            if any(n is not None and tensors[n].dtype != np.float32 for n in listed):
                raise _fail(path, f"transformed weights {key!r} of node {node!r} must be "
                                  f"float32")
            names_used.update(n for n in listed if n is not None)
            arrays = tuple(None if n is None else tensors[n] for n in listed)
            out.setdefault(node, {})[key] = arrays if isinstance(names, list) else arrays[0]
            count += 1
    here = machine_key()
    if doc["made_for"] != here:
        made_for = ", ".join(f"{k} {doc['made_for'].get(k)!r}" for k in here
                             if doc["made_for"].get(k) != here[k])
        return {}, (f"the file's transformed weights were made for another machine or "
                    f"engine ({made_for}): transformed again here"), names_used
    return (out, f"read the transformed weights of {len(out)} layers ({count} arrays) from the "
                 f"file", names_used)


def _spec_json(s):
    shape = None if s.shape is None else [None if d is None else int(d) for d in s.shape]
    return {"name": s.name, "shape": shape, "dtype": s.dtype}


def _attrs_json(attrs):
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            v = [e.item() if isinstance(e, np.generic) else e for e in v]
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# ---------------------------------------------------------------------------------- loading

def _fail(path, message):
    return ModelError(f"{path}: {message}")


# safetensors' element types, as NumPy names (those the engine's graphs use)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "I64": "int64", "I32": "int32",
              "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
              "U8": "uint8", "BOOL": "bool"}
_MAX_HEADER = 100 << 20      # safetensors' own limit on the JSON header


def read_tensors(path) -> tuple[dict, dict, object]:
    """(metadata, {name: array}, the map) of a safetensors file without copying its data: the
    arrays are read-only views of a shared read-only memory map of the file, so a page is read
    when something uses it, and the operating system may drop it again (Graph.release_mapped:
    weights that only a transform reads leave the process's memory once transformed). The file
    must not be changed in place while they live; replacing it is safe (model.save writes a
    new file and renames it over the old one).

    The header is checked as safetensors does (sizes, element types, offsets inside the data,
    each tensor's bytes matching its shape, no overlaps); ModelError names what is wrong."""
    try:
        return _read_tensors(path)
    except (FileNotFoundError, ModelError):
        raise
    except OSError as e:      # a directory, a device, no permission: not a model file
        raise _fail(path, f"not a readable safetensors file ({e})") from None


def _read_tensors(path):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, "not a readable safetensors file (shorter than its header size)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise _fail(path, f"not a readable safetensors file (header of {n} bytes in a file "
                              f"of {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise _fail(path, f"not a readable safetensors file (header: {e})") from None
        base = 8 + n
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > base else b""
    if not isinstance(header, dict):
        raise _fail(path, "not a readable safetensors file (the header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise _fail(path, "not a readable safetensors file (__metadata__ must map names to "
                          "strings)")
    tensors, spans = {}, []
    for name, d in header.items():
        what = f"tensor {name!r}"
        if not (isinstance(d, dict) and set(d) == {"dtype", "shape", "data_offsets"}):
            raise _fail(path, f"{what}: the header entry must have dtype, shape and "
                              f"data_offsets")
        dtype, shape, offsets = d["dtype"], d["shape"], d["data_offsets"]
        if dtype not in _ST_DTYPES:
            raise _fail(path, f"{what} has element type {dtype!r}, which is not supported")
        if not (isinstance(shape, list) and len(shape) <= 32
                and all(type(v) is int and 0 <= v <= INDEX_MAX for v in shape)):
            raise _fail(path, f"{what}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int for v in offsets)
                and 0 <= offsets[0] <= offsets[1] <= size - base):
            raise _fail(path, f"{what}: data_offsets {offsets!r} lie outside the file's "
                              f"{size - base} bytes of data")
        dt = np.dtype(_ST_DTYPES[dtype])
        count = math.prod(shape)
        begin, end = offsets
        if end - begin != count * dt.itemsize:
            raise _fail(path, f"{what}: {end - begin} bytes for shape {shape} of {dt.name}")
        spans.append((begin, end, name))
        if count == 0:
            # an empty tensor whose other dimensions NumPy could not address is refused
            if math.prod(d for d in shape if d) * dt.itemsize > 2**62:
                raise _fail(path, f"{what}: shape {shape} is too large to address")
            tensors[name] = np.zeros(shape, dt)
        elif (base + begin) % dt.itemsize:   # unaligned: a copy, which NumPy aligns
            tensors[name] = np.frombuffer(data, dt, count, base + begin).reshape(shape).copy()
        else:
            tensors[name] = np.frombuffer(data, dt, count, base + begin).reshape(shape)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise _fail(path, f"tensors {first!r} and {second!r} overlap in the file")
    return metadata, tensors, data


def load(path) -> Graph:
    path = os.fspath(path)
    metadata, tensors, mapped = read_tensors(path)
    if metadata.get("format") != FORMAT:
        raise _fail(path, f"metadata 'format' is {metadata.get('format')!r}, expected "
                          f"{FORMAT!r}: not a convengine model")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise _fail(path, f"format_version {metadata.get('format_version')!r} is not "
                          f"supported (this engine reads {FORMAT_VERSION})")
    try:
        doc = json.loads(metadata.get("graph", ""))
    except (ValueError, TypeError) as e:
        raise _fail(path, f"the graph metadata is not valid JSON: {e}") from None
    check = _Checker(path)
    check.dict(doc, "graph", {"name": str, "inputs": list, "outputs": list, "nodes": list,
                              "constants": dict}, optional={"notes": list})
    inputs = [check.spec(s, f"inputs[{k}]", shape_required=True)
              for k, s in enumerate(doc["inputs"])]
    outputs = [check.spec(s, f"outputs[{k}]", shape_required=False)
               for k, s in enumerate(doc["outputs"])]
    nodes = []
    for k, n in enumerate(doc["nodes"]):
        where = f"nodes[{k}]"
        check.dict(n, where, {"name": str, "op": str, "inputs": list, "outputs": list,
                              "attrs": dict})
        for key in ("inputs", "outputs"):
            if not all(isinstance(t, str) for t in n[key]):
                raise _fail(path, f"{where} ({n['name']!r}): {key} must be tensor names")
        for a, v in n["attrs"].items():
            if not _attr_ok(v):
                raise _fail(path, f"{where} ({n['name']!r}): attribute {a!r} has a value of "
                                  f"an unsupported type: {v!r}")
        nodes.append(Node(n["op"], n["name"], list(n["inputs"]), list(n["outputs"]),
                          dict(n["attrs"])))
    listed = doc["constants"]
    for name, desc in listed.items():
        check.dict(desc, f"constants[{name!r}]", {"shape": list, "dtype": str})
        if name not in tensors:
            raise _fail(path, f"constant {name!r} is listed in the graph but missing from the "
                              f"file")
        value = tensors[name]
        shape = desc["shape"]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _fail(path, f"constant {name!r}: bad shape {shape!r}")
        if tuple(shape) != value.shape:
            raise _fail(path, f"constant {name!r} has shape {value.shape} in the file, the "
                              f"graph says {tuple(shape)}")
        if desc["dtype"] not in DTYPES or value.dtype.name != desc["dtype"]:
            raise _fail(path, f"constant {name!r} has dtype {value.dtype} in the file, the "
                              f"graph says {desc['dtype']!r}")
    transformed, note, stored = {}, None, set()
    if "transformed" in metadata:
        transformed, note, stored = _read_transforms(path, metadata["transformed"], tensors)
    unlisted = sorted(set(tensors) - set(listed) - stored)
    if unlisted:
        raise _fail(path, f"tensor {unlisted[0]!r} is in the file but not in the graph")
    constants = {name: np.require(tensors[name], requirements="C") for name in listed}
    graph = Graph(nodes, inputs, outputs, constants, name=doc["name"])
    graph.notes = [str(s) for s in doc.get("notes", [])]
    graph.mapped = mapped if isinstance(mapped, mmap.mmap) else None
    graph.transformed = transformed
    if note:
        graph.notes.append(note)
    try:
        graph.check()
    except ModelError as e:
        raise _fail(path, str(e)) from None
    return graph


def _attr_ok(v):
    if v is None or isinstance(v, (str, int, float)):
        return True
    return isinstance(v, list) and all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                       for e in v)


class _Checker:
    def __init__(self, path):
        self.path = path

    def dict(self, value, where, required, optional=None):
        if not isinstance(value, dict):
            raise _fail(self.path, f"{where} must be a JSON object, got "
                                   f"{type(value).__name__}")
        allowed = dict(required, **(optional or {}))
        for key, kind in allowed.items():
            if key not in value:
                if key in required:
                    raise _fail(self.path, f"{where} lacks {key!r}")
                continue
            if not isinstance(value[key], kind) or isinstance(value[key], bool):
                names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple)
                                                         else (kind,)))
                raise _fail(self.path, f"{where}.{key} must be a {names}, got "
                                       f"{type(value[key]).__name__}")
        extra = sorted(set(value) - set(allowed))
        if extra:
            raise _fail(self.path, f"{where} has an unknown field {extra[0]!r}")

    def spec(self, s, where, shape_required):
        self.dict(s, where, {"name": str, "dtype": str}, optional={"shape": (list, type(None))})
        shape = s.get("shape")
        if shape is None:
            if shape_required:
                raise _fail(self.path, f"{where} ({s['name']!r}) needs a shape")
        elif not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                     for d in shape):
            raise _fail(self.path, f"{where} ({s['name']!r}): bad shape {shape!r}")
        if s["dtype"] not in DTYPES:
            raise _fail(self.path, f"{where} ({s['name']!r}): dtype {s['dtype']!r} is not one "
                                   f"of {', '.join(DTYPES)}")
        return TensorSpec(s["name"], None if shape is None else tuple(shape), s["dtype"])
