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
The operators and attributes are those of engine.graph.ir (ONNX's, opset-21 semantics, plus the
fused Conv's "activation" and residual input).

Loading reads JSON and raw tensors only (no pickle, nothing executed, no onnx import) and
checks everything before use: the format and version, the JSON's structure and types, that
every tensor the JSON lists is in the file with the listed shape and dtype and no other is,
every reference, that the graph is acyclic, and (when the Model is made) every operator and
its attributes. Any failure is an engine.ModelError naming what is wrong.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import ModelError
from ..graph.ir import DTYPES, Graph, Node, TensorSpec

FORMAT = "convengine"
FORMAT_VERSION = 1


def save(model, path) -> None:
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
    save_file(tensors, os.fspath(path), metadata=metadata)


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


def load(path) -> Graph:
    from safetensors import safe_open
    path = os.fspath(path)
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
            tensors = {name: f.get_tensor(name) for name in names}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise _fail(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
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
    unlisted = sorted(set(tensors) - set(listed))
    if unlisted:
        raise _fail(path, f"tensor {unlisted[0]!r} is in the file but not in the graph")
    constants = {name: np.require(tensors[name], requirements="C") for name in listed}
    graph = Graph(nodes, inputs, outputs, constants, name=doc["name"])
    graph.notes = [str(s) for s in doc.get("notes", [])]
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
