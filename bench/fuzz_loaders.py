"""Long fuzz runs of the two model loaders: the native file (engine.io.native) and the ONNX
importer (engine.io.onnx_import), each followed by a first run of whatever loads.

    python bench/fuzz_loaders.py --loader native|onnx|both --cases 100000 [--seed S]
                                 [--workers 2] [--timeout 20] [--mem-limit-mb 3072]
                                 [--rss-budget-mb 1024] [--out /tmp/fuzz-findings]
                                 [--engine auto|atheris|random]
    python bench/fuzz_loaders.py --replay /tmp/fuzz-findings/some-case.onnx   # one case, here

What a case is:
  native  the bytes of a .safetensors file, grown from real native files (small ONNX graphs
          loaded and saved with Model.save, and the bundled digits_net): the 8-byte header
          length, bytes of the JSON header, values anywhere in the graph JSON (huge and
          negative ints, 2**31, 2**63, NaN/inf, strings, lists, nulls, nested objects), deleted
          and unknown keys, duplicated and dropped nodes, tensor dtype/shape/data_offsets,
          tensors rewritten consistently with a new shape and dtype, truncation, byte flips,
          inserts, deletes and splices of two files. Loaded with engine.load(path).
  onnx    a serialized ModelProto: a single operator (Conv, ConvTranspose, DeformConv,
          MaxPool, AveragePool and LpPool on 1-D to 3-D, the global pools, MaxUnpool, LRN,
          Resize on 3-D to 5-D, Upsample, GridSample on 1-D to 3-D, Pad, Slice, Gather,
          Concat, Reshape, Transpose, Split, Softmax, Gemm, the normalisations, Clip,
          ConstantOfShape, Expand, the reductions and ArgMax/ArgMin/TopK, unary math, Pow,
          Min/Max/Mean, comparisons, logic, Where, DepthToSpace, SpaceToDepth, Tile, Range,
          Size, EyeLike, Trilu, CumSum, OneHot, Einsum, ...) with drawn attributes (extreme
          and large-but-plausible ints, wrong types, wrong list lengths, NaN/inf and large
          floats, unknown names, malformed Einsum equations, windows far larger than the
          input), inputs of other element types, constant inputs (hostile values, lengths,
          dtypes and shapes: a scale or bias for another channel count, a grid of another
          rank, all NaN), constant inputs made graph inputs (weights, shapes, repeats, sizes:
          fed at run time from the case's metadata_props, with a declared shape that may leave
          every dimension free, so a wrong shape reaches the operator only then; sometimes a
          second run with another value), missing/extra/empty inputs and outputs, input shapes
          (up to 2**31 declared) and opsets; a third of them "calm" (good-looking attributes
          and arity, hostile values) to reach planning and running; or a node of a real seed
          graph so edited (the seeds chain the operators above too); or a seed file's bytes
          mutated. Loaded with engine.load(proto), a tenth of them with engine.load(path).
  Either way a model that loads is then run on inputs of their declared shapes (free
  dimensions 2, or the values the case gives) when each has at most 2**20 elements.

Allowed outcomes: success, engine.ModelError, ValueError. Counted apart: every other exception
type, MemoryError (the address-space limit was hit), crashes (the worker died of a signal or
exited), timeouts, and cases after which the worker's peak RSS exceeded --rss-budget-mb.

How it runs: each worker is a subprocess of this script under RLIMIT_AS (--mem-limit-mb, set
by the parent before exec) and one kernel thread. A worker makes and runs cases itself; before
each case it writes the case to a file and tells the parent, after it reports the outcome. The
parent kills a worker whose case runs past --timeout, notices one that dies, saves the case
that was running to --out and starts a new worker. Cases that raise a type other than
ModelError, non-ModelError ValueErrors, MemoryErrors and over-budget cases are saved by the
worker (the first few of each kind and place). Each saved case has a .json beside it: the
outcome, the traceback's last engine frame, and the mutations that made it.

Engines: with atheris installed (``pip install atheris``) each worker is a libFuzzer loop,
coverage-guided over the engine's Python code (atheris.instrument_imports), with this script's
structured mutations as libFuzzer's custom mutator next to libFuzzer's own byte mutations; its
corpus is kept in --out/corpus-LOADER, so restarted workers keep the coverage found so far.
Without atheris (or with --engine random) each worker runs a seeded loop of the same
mutations over the seeds and the cases whose outcome was new (exception type, engine frame and
message shape); with --workers 1 and no crash that run is reproducible from --seed.

At the end it prints, per loader: cases, successes, ModelError, ValueError, each other type
(count and one message), crashes, timeouts, memory-limit hits, over-budget cases, the peak RSS,
and writes the same as JSON to --out/summary-LOADER.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- value vocabulary
# Values a hostile or careless writer puts where the loader expects something sensible.
EXTREME_INTS = [0, 1, 2, 3, -1, -2, 7, 255, 2**15, 2**31 - 1, 2**31, -2**31, 2**32, 2**53 + 1,
                2**62, 2**63 - 1, -2**63]
JSON_ONLY_INTS = [2**63, 2**64, -2**64 - 1, 10**30]      # beyond int64: JSON can say them
# Large but not absurd: sizes, repeats, lengths and windows that pass a range check and still
# ask for gigabytes or hours
MID_INTS = [100, 1000, 4096, 10**5, 10**6, 2**24, 3 * 10**7, 10**9]
MID_FLOATS = [1e3, 1e5, 1e7, 3e7, 1e-7]
FLOATS = [0.0, -0.0, 0.5, 1.5, -1.0, 1e-45, 1e30, -1e30, 3.4e38, float("nan"), float("inf"),
          float("-inf")]
STRINGS = ["", "x", "input", "relu", "relu6", "nearest", "linear", "cubic", "asymmetric",
           "SAME_UPPER", "VALID", "NOTSET", "constant", "reflect", "float32", "int64", "bool",
           "float16", "\x00", "\u00e9\u00e9", "a" * 300]


class RandomDriver:
    """The decisions of a case, from a seeded random.Random (the test drives the same case
    makers from hypothesis instead)."""

    def __init__(self, seed):
        self.r = random.Random(seed)

    def choice(self, seq):
        return self.r.choice(list(seq))

    def randint(self, a, b):
        return self.r.randint(a, b)

    def chance(self, p):
        return self.r.random() < p

    def int_value(self, json_ok=False):
        if self.chance(0.4):
            return self.r.randint(-3, 9)
        if self.chance(0.2):
            return self.choice(MID_INTS)
        return self.choice(EXTREME_INTS + (JSON_ONLY_INTS if json_ok else []))

    def float_value(self):
        if self.chance(0.1):
            return self.choice(MID_FLOATS)
        return self.choice(FLOATS) if self.chance(0.7) else self.r.uniform(-10, 10)

    def string_value(self):
        return self.choice(STRINGS)

    def json_value(self, depth=0):
        """Any JSON value, hostile ones first."""
        kind = self.randint(0, 9 if depth < 2 else 5)
        if kind <= 1:
            return self.int_value(json_ok=True)
        if kind == 2:
            return self.float_value()
        if kind == 3:
            return self.string_value()
        if kind == 4:
            return self.choice([None, True, False])
        if kind == 5:
            return [self.int_value(json_ok=True) for _ in range(self.randint(0, 5))]
        if kind in (6, 7):
            return [self.json_value(depth + 1) for _ in range(self.randint(0, 4))]
        return {self.string_value(): self.json_value(depth + 1)
                for _ in range(self.randint(0, 3))}

    def bytes_value(self, n):
        return bytes(self.r.randrange(256) for _ in range(n))


# ----------------------------------------------------------------------------- seed models
def seed_onnx_models():
    """Small real graphs (ir_version 9, opset 17) that load and run: the starting points."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.2

    def make(name, nodes, inits, x_shape, outputs=("y",), opset=17):
        inputs = [h.make_tensor_value_info("x", T.FLOAT, list(x_shape))]
        outs = [h.make_tensor_value_info(o, T.FLOAT, None) for o in outputs]
        g = h.make_graph(nodes, name, inputs, outs,
                         [nh.from_array(np.asarray(v), k) for k, v in inits.items()])
        return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)

    n = h.make_node
    models = {}
    models["cnn"] = make("cnn", [
        n("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        n("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          name="conv2"),
        n("Add", ["c2", "p1"], ["a2"], name="add2"),
        n("Relu", ["a2"], ["r2"], name="relu2"),
        n("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        n("Flatten", ["g"], ["f"], axis=1, name="flat"),
        n("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc")],
        {"w1": w(8, 3, 3, 3), "b1": w(8), "w2": w(8, 8, 3, 3), "b2": w(8), "wf": w(10, 8),
         "bf": w(10)}, (1, 3, 16, 16))
    models["resize"] = make("resize", [
        n("Resize", ["x", "", "scales"], ["u"], mode="nearest", name="up"),
        n("Conv", ["u", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
        n("Resize", ["c", "", "", "sizes"], ["y"], mode="linear",
          coordinate_transformation_mode="half_pixel", name="down")],
        {"scales": np.array([1, 1, 2, 2], np.float32), "w": w(4, 4, 3, 3), "b": w(4),
         "sizes": np.array([1, 4, 8, 8], np.int64)}, (1, 4, 8, 8))
    models["concat"] = make("concat", [
        n("Conv", ["x", "wa"], ["a"], kernel_shape=[1, 1], name="conva"),
        n("Conv", ["x", "wb", "bb"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          group=3, name="convb"),
        n("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
        n("BatchNormalization", ["cat", "s", "o", "m", "v"], ["bn"], epsilon=1e-5, name="bn"),
        n("AveragePool", ["bn"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="avg"),
        n("Clip", ["ap", "lo", "hi"], ["y"], name="clip")],
        {"wa": w(4, 3, 1, 1), "wb": w(6, 1, 3, 3), "bb": w(6), "s": 1 + w(10), "o": w(10),
         "m": w(10), "v": 1 + np.abs(w(10)), "lo": np.array(0, np.float32),
         "hi": np.array(6, np.float32)}, ("N", 3, 8, 8))
    models["misc"] = make("misc", [
        n("Pad", ["x", "pads"], ["p"], mode="constant", name="pad"),
        n("ConvTranspose", ["p", "wt", "bt"], ["t"], kernel_shape=[3, 3], strides=[2, 2],
          name="deconv"),
        n("Slice", ["t", "starts", "ends", "axes"], ["s"], name="slice"),
        n("Split", ["s", "split"], ["s1", "s2"], axis=1, name="split"),
        n("Mul", ["s1", "s2"], ["m"], name="mul"),
        n("Transpose", ["m"], ["tr"], perm=[0, 1, 3, 2], name="transpose"),
        n("Reshape", ["tr", "shape"], ["rs"], name="reshape"),
        n("Softmax", ["rs"], ["y"], axis=-1, name="softmax")],
        {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "wt": w(3, 4, 3, 3),
         "bt": w(4), "starts": np.array([1, 1], np.int64), "ends": np.array([9, 9], np.int64),
         "axes": np.array([2, 3], np.int64), "split": np.array([2, 2], np.int64),
         "shape": np.array([1, -1], np.int64)}, (1, 3, 4, 4))
    models["shapes"] = make("shapes", [
        n("Shape", ["x"], ["sh"], name="shape"),
        n("Gather", ["sh", "idx"], ["hw"], axis=0, name="gather"),
        n("Concat", ["one", "hw"], ["newshape"], axis=0, name="concat"),
        n("Reshape", ["x", "newshape"], ["r"], name="reshape"),
        n("MaxPool", ["x"], ["mp", "ind"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        n("MaxUnpool", ["mp", "ind"], ["un"], kernel_shape=[2, 2], strides=[2, 2],
          name="unpool"),
        n("LRN", ["un"], ["l"], size=3, name="lrn"),
        n("Sub", ["l", "r"], ["y"], name="sub")],
        {"idx": np.array([1, 2, 3], np.int64), "one": np.array([1], np.int64)}, (1, 2, 6, 6))
    # the operators of the reduce, mathops, logic, einsum and norm families, as attention
    # blocks chain them
    models["attention"] = make("attention", [
        n("LayerNormalization", ["x", "ls", "lb"], ["ln"], axis=-1, name="ln"),
        n("Einsum", ["ln", "ln"], ["att"], equation="bij,bkj->bik", name="scores"),
        n("ReduceMax", ["att", "last"], ["mx"], keepdims=1, name="rmax"),
        n("Sub", ["att", "mx"], ["sh"], name="shift"),
        n("Exp", ["sh"], ["e"], name="exp"),
        n("ReduceSum", ["e", "last"], ["se"], keepdims=1, name="rsum"),
        n("Div", ["e", "se"], ["p"], name="norm"),
        n("Einsum", ["p", "ln"], ["ctx"], equation="bik,bkj->bij", name="mix"),
        n("Greater", ["ctx", "zero"], ["pos"], name="gt"),
        n("Pow", ["ctx", "two"], ["sq"], name="pow"),
        n("Where", ["pos", "ctx", "sq"], ["w"], name="where"),
        n("Erf", ["w"], ["er"], name="erf"),
        n("Max", ["er", "ctx"], ["mm"], name="max"),
        n("ReduceMean", ["mm", "mid"], ["y"], keepdims=0, name="rmean")],
        {"ls": 1 + w(8), "lb": w(8), "last": np.array([-1], np.int64),
         "mid": np.array([1], np.int64), "zero": np.array(0, np.float32),
         "two": np.array(2, np.float32)}, (1, 4, 8), opset=18)
    # norm, resize, gridsample, rearrange and pool: the spatial ones
    models["spatial"] = make("spatial", [
        n("Resize", ["x", "", "scales"], ["up"], mode="cubic", antialias=1, name="up"),
        n("GridSample", ["up", "grid"], ["gs"], mode="linear", padding_mode="reflection",
          name="sample"),
        n("GroupNormalization", ["gs", "gsc", "gb"], ["gn"], num_groups=2, epsilon=1e-5,
          name="gn"),
        n("InstanceNormalization", ["gn", "isc", "ib"], ["inn"], name="inorm"),
        n("DepthToSpace", ["inn"], ["d2s"], blocksize=2, mode="CRD", name="d2s"),
        n("SpaceToDepth", ["d2s"], ["s2d"], blocksize=2, name="s2d"),
        n("LpPool", ["s2d"], ["lp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], p=2, name="lp"),
        n("MeanVarianceNormalization", ["lp"], ["mvn"], name="mvn"),
        n("GlobalLpPool", ["mvn"], ["y"], p=3, name="glp")],
        {"scales": np.array([1, 1, 0.75, 1.5], np.float32),
         "grid": np.clip(w(1, 5, 5, 2) * 4, -1.2, 1.2),
         "gsc": 1 + w(4), "gb": w(4), "isc": 1 + w(4), "ib": w(4)}, (1, 4, 8, 4), opset=21)
    # values generated from shapes: Shape, Range, OneHot, Trilu, CumSum, Tile, Size, EyeLike
    models["generated"] = make("generated", [
        n("Shape", ["x"], ["sh"], name="shape"),
        n("Gather", ["sh", "two"], ["h"], axis=0, name="height"),
        n("Range", ["zero", "h", "one"], ["r"], name="range"),
        n("OneHot", ["r", "h", "onoff"], ["eye"], axis=-1, name="onehot"),
        n("Trilu", ["eye", "k"], ["tri"], upper=0, name="trilu"),
        n("Einsum", ["x", "tri"], ["e"], equation="nchw,wv->nchv", name="einsum"),
        n("CumSum", ["e", "axis"], ["cs"], reverse=1, name="cumsum"),
        n("Tile", ["cs", "reps"], ["t"], name="tile"),
        n("Size", ["t"], ["sz"], name="size"),
        n("Cast", ["sz"], ["szf"], to=1, name="cast"),
        n("Div", ["t", "szf"], ["y"], name="div")],
        {"two": np.array(3, np.int64), "zero": np.array(0, np.int64),
         "one": np.array(1, np.int64), "onoff": np.array([0, 1], np.float32),
         "k": np.array(1, np.int64), "axis": np.array(2, np.int64),
         "reps": np.array([1, 2, 1, 1], np.int64)}, (1, 2, 6, 6), opset=14)
    return models


def seed_native_files(directory):
    """Native files saved from the ONNX seeds (each also with its transformed weights, whose
    metadata and tensors mutate too), and the bundled digits_net: their paths."""
    import engine
    paths = []
    for name, proto in seed_onnx_models().items():
        model = engine.load(proto)
        for suffix, transformed in (("", False), ("_transformed", True)):
            path = os.path.join(directory, f"{name}{suffix}.safetensors")
            try:
                model.save(path, transformed=transformed)
            except ValueError:           # free dimensions besides the batch: not planned
                continue
            paths.append(path)
    paths.append(os.path.join(REPO, "engine", "data", "digits_net.safetensors"))
    return paths


# ----------------------------------------------------------------------------- native cases
def split_safetensors(data):
    """(header dict, data section) of a safetensors file, or None if it does not parse."""
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    return header, data[8 + n:]


def join_safetensors(header, body):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)       # safetensors pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + body


def _graph_of(header):
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get("graph"), str):
        return None
    try:
        return json.loads(meta["graph"])
    except ValueError:
        return None


def _paths(value, prefix=()):
    """Every (path) to a value inside nested dicts and lists."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _set(doc, path, value):
    _get(doc, path[:-1])[path[-1]] = value


SAFETENSORS_DTYPES = ["F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32",
                      "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "X", "f32", ""]
_NP_OF = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
          "U8": np.uint8, "BOOL": np.bool_}


def _graph_mutation(d, graph, log):
    """One edit of the graph JSON (in place)."""
    paths = [p for p in _paths(graph) if p]
    if not isinstance(graph, dict) or not paths:
        return
    attr_paths = [p for p in paths if "attrs" in p]
    shape_paths = [p for p in paths if "shape" in p or "dtype" in p]
    what = d.choice([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9])   # 8 keeps the JSON's types
    if what <= 3:
        pool = (attr_paths if what == 0 and attr_paths else
                shape_paths if what == 1 and shape_paths else paths)
        p = d.choice(pool)
        v = d.json_value()
        _set(graph, p, v)
        log.append(f"graph{list(p)} = {v!r}"[:200])
    elif what == 4:
        dicts = [p for p in _paths(graph) if isinstance(_get(graph, p), dict) and _get(graph, p)]
        if not dicts:
            return
        p = d.choice(dicts)
        key = d.choice(sorted(_get(graph, p)))
        del _get(graph, p)[key]
        log.append(f"del graph{list(p)}[{key!r}]")
    elif what == 5:
        dicts = [p for p in _paths(graph) if isinstance(_get(graph, p), dict)]
        p = d.choice(dicts)
        key = d.choice(["extra", "attrs", "shape", "op", "activation", "group", "pads"])
        v = d.json_value()
        _get(graph, p)[key] = v
        log.append(f"graph{list(p)}[{key!r}] = {v!r}"[:200])
    elif what == 6 and isinstance(graph.get("nodes"), list) and graph["nodes"]:
        nodes = graph["nodes"]
        k = d.randint(0, len(nodes) - 1)
        how = d.choice(["duplicate", "drop", "reverse", "move"])
        if how == "duplicate":
            nodes.insert(d.randint(0, len(nodes)), copy.deepcopy(nodes[k]))
        elif how == "drop":
            del nodes[k]
        elif how == "reverse":
            nodes.reverse()
        else:
            nodes.insert(d.randint(0, len(nodes)), nodes.pop(k))
        log.append(f"nodes: {how} {k}")
    elif what == 7:
        # copy one string (a tensor name, an op, a mode) over another: dangling references,
        # cycles, ops swapped
        strs = [p for p in paths if isinstance(_get(graph, p), str)]
        if len(strs) >= 2:
            a, b = d.choice(strs), d.choice(strs)
            _set(graph, b, _get(graph, a))
            log.append(f"graph{list(b)} = graph{list(a)} ({_get(graph, a)!r})"[:200])
    elif what == 8:
        # an attribute of the right kind but another value: the loader accepts the types and
        # the operator must check the values
        nodes = graph.get("nodes") if isinstance(graph.get("nodes"), list) else []
        nodes = [n for n in nodes if isinstance(n, dict)
                 and isinstance(n.get("attrs"), dict) and n["attrs"]]
        if nodes:
            n = d.choice(nodes)
            key = d.choice(sorted(n["attrs"]))
            old = n["attrs"][key]
            if isinstance(old, list):
                v = [d.int_value() for _ in range(d.choice([len(old)] * 3 + [0, 1, 3, 6]))]
            elif isinstance(old, bool) or not isinstance(old, (int, float)):
                v = d.string_value() if isinstance(old, str) else d.json_value()
            elif isinstance(old, int):
                v = d.int_value()
            else:
                v = d.float_value()
            n["attrs"][key] = v
            log.append(f"{n.get('name')!r}.{key} = {v!r}"[:200])
    else:
        inputs = graph.get("inputs")
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            shape = [d.choice([None, 0, 1, 2, 3, 5, 16, 2**31, 2**40, -1])
                     for _ in range(d.choice([0, 1, 2, 3, 4, 4, 4, 5]))]
            inputs[0]["shape"] = shape
            log.append(f"inputs[0].shape = {shape}")


def _retensor(d, header, body, graph, log):
    """Replace one tensor, in the safetensors header, the data and the graph's constants alike,
    by one of another shape and dtype: the file stays consistent and the operator sees it."""
    names = sorted(k for k in header if k != "__metadata__")
    if not names or not isinstance(graph, dict) or not isinstance(graph.get("constants"), dict):
        return body
    name = d.choice(names)
    dtype = d.choice(["F32", "F32", "F32", "I64", "I32", "F64", "U8", "BOOL", "I8"])
    old = header[name].get("shape") if isinstance(header[name], dict) else None
    if isinstance(old, list) and d.chance(0.5) and all(
            isinstance(e, int) and 0 <= e <= 4096 for e in old):
        shape = list(old)
        if shape and d.chance(0.7):
            shape[d.randint(0, len(shape) - 1)] = d.choice([0, 1, 2, 3, 5, 7])
        else:
            shape = shape + [d.choice([1, 2])] if d.chance(0.5) else shape[:-1]
    else:
        shape = [d.choice([0, 1, 2, 3, 4]) for _ in range(d.randint(0, 5))]
    size = math.prod(shape)
    if size > 4096:
        return body
    fill = d.choice([0, 1, -1, 7, 2**31 - 1, -2**31, float("nan"), float("inf"), 0.5])
    np_dtype = np.dtype(_NP_OF[dtype])
    with np.errstate(all="ignore"):
        try:
            value = np.full(shape, fill).astype(np_dtype)
        except (OverflowError, ValueError):
            value = np.zeros(shape, np_dtype)
    tensors = {}
    for k in names:
        desc = header[k]
        try:
            a, b = desc["data_offsets"]
            tensors[k] = (desc, body[a:b])
        except Exception:
            return body
    tensors[name] = ({"dtype": dtype, "shape": shape}, value.tobytes())
    new_body = b""
    for k in names:
        desc, raw = tensors[k]
        header[k] = dict(desc, data_offsets=[len(new_body), len(new_body) + len(raw)])
        new_body += raw
    graph["constants"][name] = {"shape": shape, "dtype": np_dtype.name}
    log.append(f"tensor {name!r} := {np_dtype.name}{shape} filled with {fill!r}")
    return new_body


def _tensor_header_mutation(d, header, body, log):
    names = sorted(k for k in header if k != "__metadata__")
    if not names:
        return
    name = d.choice(names)
    desc = header[name]
    if not isinstance(desc, dict):
        return
    field = d.choice(["dtype", "shape", "data_offsets", "data_offsets", "drop", "add", "whole"])
    if field == "dtype":
        desc["dtype"] = d.choice(SAFETENSORS_DTYPES)
    elif field == "shape":
        desc["shape"] = d.choice([[], [0], [-1], [2**31, 2**31], [2**63], [1] * 9,
                                  [d.int_value() for _ in range(d.randint(0, 4))],
                                  list(reversed(desc.get("shape") or []))])
    elif field == "data_offsets":
        n = len(body)
        desc["data_offsets"] = d.choice([[0, 0], [0, n], [n, n + 4], [4, 0], [0, 2**63],
                                         [-1, 4], [1, 5], [0], [0, 4, 8], "0",
                                         [d.int_value(), d.int_value()]])
    elif field == "drop":
        del header[name]
    elif field == "add":
        header[d.choice(["extra", name + "_", ""])] = copy.deepcopy(desc)
    else:
        header[name] = d.json_value()
    log.append(f"tensor {name!r}: {field} -> {header.get(name, '<deleted>')!r}"[:200])


def _byte_mutation(d, data, others, header_only_end=None):
    """Flip, set, insert, delete or splice bytes (inside the JSON header when its end is
    given and a coin says so)."""
    data = bytearray(data)
    end = len(data)
    if header_only_end and d.chance(0.7):
        end = min(end, header_only_end)
    if not data:
        return bytes(d.bytes_value(d.randint(0, 16))), "random bytes"
    how = d.choice(["flip", "set", "insert", "delete", "splice", "repeat"])
    k = d.randint(0, max(0, end - 1))
    if how == "flip":
        data[k] ^= 1 << d.randint(0, 7)
    elif how == "set":
        data[k] = d.choice(b'{}[]",:-0123456789 \x00\xffeE.n')
    elif how == "insert":
        data[k:k] = d.choice([b"{", b"}", b"[", b'"', b",", b"0", b"-", b"999999999999",
                              b"NaN", b"\x00", d.bytes_value(d.randint(1, 8))])
    elif how == "delete":
        del data[k:k + d.randint(1, 16)]
    elif how == "splice":
        other = d.choice(others) if others else bytes(data)
        j = d.randint(0, max(0, len(other) - 1))
        data[k:] = other[j:j + d.randint(1, 4096)] + data[k:]
    else:
        data[k:k] = data[k:k + d.randint(1, 32)] * d.randint(2, 64)
    return bytes(data), f"bytes: {how} at {k}"


def native_case(d, seeds, log):
    """A mutated native file from one of ``seeds`` (file contents): 1 to 3 mutations."""
    data = d.choice(seeds)
    for _ in range(d.choice([1, 1, 1, 1, 1, 1, 2, 2, 2, 3])):
        parsed = split_safetensors(data)
        what = d.randint(0, 19)
        if parsed is None or what >= 18:
            how = d.randint(0, 5)
            if how == 0:
                cut = d.randint(0, len(data))
                data = data[:cut]
                log.append(f"truncate at {cut}")
            elif how == 1 and len(data) >= 8:
                n = struct.unpack("<Q", data[:8])[0]
                v = d.choice([0, 1, 7, 8, n - 1, n + 1, n + 8, len(data) - 8, len(data),
                              2**31, 2**32, 2**63, 2**64 - 1, d.randint(0, 2**64 - 1)])
                data = struct.pack("<Q", max(0, v) % 2**64) + data[8:]
                log.append(f"header length := {v}")
            else:
                end = 8 + struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else None
                data, how = _byte_mutation(d, data, seeds, end)
                log.append(how)
            continue
        header, body = parsed
        graph = _graph_of(header)
        if graph is not None and what <= 11:
            _graph_mutation(d, graph, log)
        elif graph is not None and what <= 14:
            body = _retensor(d, header, body, graph, log)
        elif what <= 16:
            _tensor_header_mutation(d, header, body, log)
        else:
            meta = header.get("__metadata__")
            if isinstance(meta, dict) and isinstance(meta.get("transformed"), str) \
                    and d.chance(0.5):
                _transformed_mutation(d, meta, header, log)
            elif isinstance(meta, dict):
                key = d.choice(["format", "format_version", "graph", "transformed", "other"])
                v = d.choice([None, "", "convengine", "1", "2", "{}", "[]", "null", "{",
                              d.json_value()])
                if v is None:
                    meta.pop(key, None)
                else:
                    meta[key] = v
                log.append(f"metadata[{key!r}] = {v!r}"[:200])
        if graph is not None and isinstance(header.get("__metadata__"), dict):
            header["__metadata__"]["graph"] = json.dumps(graph, separators=(",", ":"))
        data = join_safetensors(header, body)
    return data


def _transformed_mutation(d, meta, header, log):
    """Edit the stored transformed weights' listing: another machine, a key or node that
    does not exist, a name pointing at another tensor or nowhere, a value of the wrong type."""
    try:
        doc = json.loads(meta["transformed"])
        layers = doc["layers"]
        node = d.choice(sorted(layers))
        key = d.choice(sorted(layers[node]))
        value = layers[node][key]
    except Exception:      # noqa: BLE001 (already mangled, or nothing listed)
        return
    if not isinstance(layers[node], dict):       # mangled by an earlier mutation
        return
    names = sorted(k for k in header if k != "__metadata__")
    kind = d.randint(0, 5)
    if kind == 0:
        doc["made_for"] = d.json_value()
    elif kind == 1:
        layers[node][key] = d.choice(names + ["nowhere", None, 3, [None], []])
    elif kind == 2:
        layers[d.string_value()] = {key: value}
    elif kind == 3:
        layers[node][d.choice(["winograd_tile4", "packed_rows", "nchw16c_direct",
                               d.string_value()])] = value
    elif kind == 4:
        doc["layers"] = d.json_value()
    else:
        doc[d.choice(["made_for", "layers"])] = d.json_value()
    meta["transformed"] = json.dumps(doc)
    log.append(f"transformed mutation {kind} on {node!r} {key!r}")


# ----------------------------------------------------------------------------- ONNX cases
# Per operator: default input shape of x, extra inputs (name, maker), attributes to draw
# (name -> kind: "int", "ints:N", "float", "floats:N", "str:a|b|c", "tensor"), outputs, opsets
# to draw from (the first is the usual one).
_AUTO_PAD = "str:NOTSET|SAME_UPPER|SAME_LOWER|VALID|same"
_WINDOW = {"kernel_shape": "ints:2", "strides": "ints:2", "pads": "ints:4",
           "dilations": "ints:2", "auto_pad": _AUTO_PAD}


def _f32(*shape):
    return lambda: (np.arange(math.prod(shape), dtype=np.float32).reshape(shape) % 5) * 0.25


def _i64(*values):
    return lambda: np.array(values, np.int64)


def _unpool_indices():
    h, w = np.meshgrid(np.arange(3) * 2, np.arange(3) * 2, indexing="ij")
    return np.broadcast_to((h * 6 + w)[None, None], (1, 3, 3, 3)).astype(np.int64).copy()


def _scalar(value, dtype):
    return lambda: np.array(value, dtype)


def _bool(*shape):
    return lambda: (np.arange(math.prod(shape)).reshape(shape) % 3 == 1)


def _grid(*shape):
    """Sampling positions in [-1.2, 1.2], a little outside the image."""
    return lambda: (np.linspace(-1.2, 1.2, math.prod(shape), dtype=np.float32)
                    .reshape(shape)[..., ::-1].copy())


def _window(n):
    return {"kernel_shape": f"ints:{n}", "strides": f"ints:{n}", "pads": f"ints:{2 * n}",
            "dilations": f"ints:{n}", "auto_pad": _AUTO_PAD}


# Einsum equations: the forms exporters write, then malformed ones
EINSUM_EQUATIONS = [
    "ij,jk->ik", "ij,jk", "ij->ji", "ij->", "ij", "ii->i", "ii", "ij,ij->ij", "ij,kj->ik",
    "ji,jk->ki", "bij,bjk->bik", "...ij,...jk->...ik", "...j,jk->...k", "i...,j...->ij...",
    "ij,jk,kl->il", "i,j->ij", "ij,i->j", "ij,jk->ijk", "IJ,JK->IK", "ij , jk -> ik",
    "", "->", ",", "ij,", ",jk", "ij,jk->ikk", "ij,jk->iz", "ij->i->j", "i.j,jk", "......",
    "...i...,jk", "ij;jk", "ij,,jk", "ij-jk", "ij,jk->...", "...->...", "a...,...b->ab",
    "\u00e9j,jk", "0j,jk", "ij,jk->ik,", "-", ">", "ij,jk>ik", "i" * 40 + ",jk",
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ,jk", "ij,jk->" + "k" * 3,
]


OP_SPECS = {
    "Conv": dict(x=(1, 3, 6, 6), inputs=[("w", _f32(4, 3, 3, 3)), ("b", _f32(4))],
                 attrs=dict(_WINDOW, group="int"), required={"kernel_shape": [3, 3]}),
    "ConvTranspose": dict(x=(1, 3, 4, 4), inputs=[("w", _f32(3, 4, 3, 3)), ("b", _f32(4))],
                          attrs=dict(_WINDOW, group="int", output_padding="ints:2",
                                     output_shape="ints:2"), required={"kernel_shape": [3, 3]}),
    "DeformConv": dict(x=(1, 3, 6, 6), inputs=[("w", _f32(4, 3, 3, 3)),
                                               ("offset", _f32(1, 18, 4, 4)), ("b", _f32(4)),
                                               ("mask", _f32(1, 9, 4, 4))],
                       attrs={"kernel_shape": "ints:2", "strides": "ints:2", "pads": "ints:4",
                              "dilations": "ints:2", "group": "int", "offset_group": "int"},
                       opsets=(19, 20, 21), required={"kernel_shape": [3, 3]}),
    "MaxPool": dict(x=(1, 3, 6, 6), attrs=dict(_WINDOW, ceil_mode="int", storage_order="int"),
                    required={"kernel_shape": [2, 2]}, outputs=(1, 2)),
    "AveragePool": dict(x=(1, 3, 6, 6), attrs=dict(_WINDOW, ceil_mode="int",
                                                   count_include_pad="int"),
                        required={"kernel_shape": [2, 2]}, opsets=(17, 11, 7, 19)),
    "MaxUnpool": dict(x=(1, 3, 3, 3), inputs=[("i", _unpool_indices), ("s", _i64(1, 3, 6, 6))],
                      attrs={"kernel_shape": "ints:2", "strides": "ints:2", "pads": "ints:4"},
                      required={"kernel_shape": [2, 2], "strides": [2, 2]}),
    "LRN": dict(x=(1, 3, 4, 4), attrs={"alpha": "float", "beta": "float", "bias": "float",
                                       "size": "int"}, required={"size": 3}),
    "GlobalAveragePool": dict(x=(1, 3, 4, 4), attrs={}),
    "Resize": dict(x=(1, 2, 4, 4), inputs=[("roi", None),
                                           ("scales", lambda: np.array([1, 1, 2, 2],
                                                                       np.float32))],
                   attrs={"mode": "str:nearest|linear|cubic|bilinear",
                          "coordinate_transformation_mode":
                              "str:half_pixel|asymmetric|align_corners|pytorch_half_pixel|"
                              "tf_crop_and_resize|half_pixel_symmetric",
                          "nearest_mode": "str:round_prefer_floor|round_prefer_ceil|floor|ceil",
                          "extrapolation_value": "float", "axes": "ints:2",
                          "keep_aspect_ratio_policy": "str:stretch|not_larger|not_smaller",
                          "cubic_coeff_a": "float", "exclude_outside": "int",
                          "antialias": "int"}, opsets=(19, 13, 11, 10, 18)),
    "Upsample": dict(x=(1, 2, 4, 4), inputs=[("scales", lambda: np.array([1, 1, 2, 2],
                                                                         np.float32))],
                     attrs={"mode": "str:nearest|linear|bilinear", "scales": "floats:4",
                            "height_scale": "float", "width_scale": "float"},
                     opsets=(9, 7, 8)),
    "Pad": dict(x=(1, 2, 4, 4), inputs=[("pads", _i64(0, 0, 1, 1, 0, 0, 1, 1)),
                                        ("value", lambda: np.array(0.5, np.float32))],
                attrs={"mode": "str:constant|reflect|edge|wrap", "pads": "ints:8",
                       "value": "float"}, opsets=(17, 11, 19, 2, 9)),
    "Slice": dict(x=(1, 2, 6, 6), inputs=[("starts", _i64(1, 1)), ("ends", _i64(5, 5)),
                                          ("axes", _i64(2, 3)), ("steps", _i64(1, 2))],
                  attrs={"starts": "ints:2", "ends": "ints:2", "axes": "ints:2"},
                  opsets=(17, 10, 9, 13)),
    "Gather": dict(x=(1, 3, 4, 4), inputs=[("i", _i64(0, 2, -1))], attrs={"axis": "int"}),
    "Concat": dict(x=(1, 2, 4, 4), inputs=[("x", None), ("c", _f32(1, 2, 4, 4))],
                   attrs={"axis": "int"}, required={"axis": 1}),
    "Reshape": dict(x=(1, 2, 4, 4), inputs=[("shape", _i64(1, -1, 4))],
                    attrs={"allowzero": "int", "shape": "ints:2"}),
    "Transpose": dict(x=(1, 2, 3, 4), attrs={"perm": "ints:4"}),
    "Split": dict(x=(1, 4, 4, 4), inputs=[("split", _i64(1, 3))],
                  attrs={"axis": "int", "split": "ints:2", "num_outputs": "int"},
                  outputs=(2, 1, 3), opsets=(17, 18, 11)),
    "Softmax": dict(x=(2, 5), attrs={"axis": "int"}, opsets=(17, 11)),
    "Gemm": dict(x=(2, 5), inputs=[("w", _f32(3, 5)), ("c", _f32(3))],
                 attrs={"alpha": "float", "beta": "float", "transA": "int", "transB": "int"},
                 required={"transB": 1}),
    "BatchNormalization": dict(x=(1, 3, 4, 4), inputs=[("s", _f32(3)), ("o", _f32(3)),
                                                       ("m", _f32(3)),
                                                       ("v", lambda: np.ones(3, np.float32))],
                               attrs={"epsilon": "float", "momentum": "float",
                                      "training_mode": "int", "spatial": "int"},
                               outputs=(1, 3, 5), opsets=(15, 9, 7)),
    "Clip": dict(x=(1, 3, 4, 4), inputs=[("lo", lambda: np.array(0, np.float32)),
                                         ("hi", lambda: np.array(6, np.float32))],
                 attrs={"min": "float", "max": "float"}, opsets=(13, 6, 11)),
    "ConstantOfShape": dict(x=None, inputs=[("shape", _i64(2, 3))], attrs={"value": "tensor"}),
    "Expand": dict(x=(1, 3, 1, 4), inputs=[("shape", _i64(2, 3, 4, 4))], attrs={}),
    "Flatten": dict(x=(1, 2, 3, 4), attrs={"axis": "int"}),
    "Squeeze": dict(x=(1, 2, 1, 4), inputs=[("axes", _i64(0, 2))], attrs={"axes": "ints:2"},
                    opsets=(13, 11)),
    "Unsqueeze": dict(x=(2, 4), inputs=[("axes", _i64(0, 3))], attrs={"axes": "ints:2"},
                      opsets=(13, 11)),
    "Cast": dict(x=(2, 4), attrs={"to": "int"}, required={"to": 7}),
    "Shape": dict(x=(1, 2, 3, 4), attrs={"start": "int", "end": "int"}),
    "LeakyRelu": dict(x=(2, 4), attrs={"alpha": "float"}),
    "HardSigmoid": dict(x=(2, 4), attrs={"alpha": "float", "beta": "float"}),
    "PRelu": dict(x=(1, 3, 2, 2), inputs=[("slope", _f32(3, 1, 1))], attrs={}),
    "Dropout": dict(x=(2, 4), inputs=[("ratio", lambda: np.array(0.5, np.float32)),
                                      ("training", lambda: np.array(False))],
                    attrs={"ratio": "float", "seed": "int", "is_test": "int"}, outputs=(1, 2)),
    "Add": dict(x=(1, 3, 2, 2), inputs=[("b", _f32(3))], attrs={"broadcast": "int",
                                                                  "axis": "int"},
                opsets=(17, 6)),
    "MatMul": dict(x=(2, 5), inputs=[("w", _f32(5, 3))], attrs={}),
    "Constant": dict(x=None, inputs=[], attrs={"value": "tensor", "value_float": "float",
                                               "value_ints": "ints:2"}),
}

# The operators of engine/graph/ops' reduce, mathops, logic, rearrange, einsum, norm, pool (1-D,
# 3-D, Lp), resize (ranks, cubic, antialias) and gridsample families. Keys with a "/" are
# variants of the operator ``op`` (another rank, another input type).
_REDUCE = dict(x=(1, 3, 4, 4), inputs=[("axes", _i64(1, 2))],
               attrs={"axes": "ints:2", "keepdims": "int", "noop_with_empty_axes": "int"},
               opsets=(18, 13, 11), x_types=("float32", "int64", "int32", "float64", "bool",
                                             "uint8"))
for _op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
            "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    OP_SPECS[_op] = _REDUCE
for _op in ("ArgMax", "ArgMin"):
    OP_SPECS[_op] = dict(x=(2, 3, 4), attrs={"axis": "int", "keepdims": "int",
                                             "select_last_index": "int"},
                         opsets=(13, 11, 12), x_types=("float32", "int64", "float64", "bool"))
OP_SPECS["TopK"] = dict(x=(2, 5), inputs=[("k", _i64(3))],
                        attrs={"axis": "int", "largest": "int", "sorted": "int", "k": "int"},
                        outputs=(2, 2, 2, 1, 3), opsets=(11, 10, 1),
                        x_types=("float32", "int64", "float64", "bool"))
for _op in ("Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
            "Erf", "Sin", "Cos", "Softplus", "Softsign"):
    OP_SPECS[_op] = dict(x=(2, 4), attrs={}, opsets=(13, 6, 1),
                         x_types=("float32", "float64", "int64", "int32", "bool"))
OP_SPECS["Mish"] = dict(x=(2, 4), attrs={}, opsets=(18, 22), x_types=("float32", "float64"))
OP_SPECS["Gelu"] = dict(x=(2, 4), attrs={"approximate": "str:none|tanh|Tanh|erf"},
                        opsets=(20,), x_types=("float32", "float64"))
for _op in ("Elu", "Celu", "ThresholdedRelu"):
    OP_SPECS[_op] = dict(x=(2, 4), attrs={"alpha": "float"}, opsets=(22, 12, 6, 10),
                         x_types=("float32", "float64"))
OP_SPECS["Selu"] = dict(x=(2, 4), attrs={"alpha": "float", "gamma": "float"},
                        opsets=(6, 22), x_types=("float32", "float64"))
OP_SPECS["Pow"] = dict(x=(2, 4), inputs=[("e", _scalar(2.0, np.float32))],
                       attrs={"broadcast": "int", "axis": "int"}, opsets=(15, 12, 7, 6),
                       x_types=("float32", "int64", "int32", "float64"))
for _op in ("Min", "Max", "Mean"):
    OP_SPECS[_op] = dict(x=(1, 3, 2, 2), inputs=[("b", _f32(3, 1, 1)), ("c", _f32(2))],
                         attrs={}, opsets=(13, 8, 6), x_types=("float32", "int64", "float64"))
for _op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
    OP_SPECS[_op] = dict(x=(2, 3), inputs=[("b", _f32(3))], attrs={"broadcast": "int",
                                                                  "axis": "int"},
                         opsets=(13, 16, 11, 7, 1),
                         x_types=("float32", "int64", "bool", "float64"))
for _op in ("And", "Or", "Xor"):
    OP_SPECS[_op] = dict(x=(2, 3), inputs=[("b", _bool(3))], attrs={"broadcast": "int",
                                                                   "axis": "int"},
                         opsets=(7, 1), x_types=("bool", "float32", "int64"))
OP_SPECS["Not"] = dict(x=(2, 3), attrs={}, opsets=(1,), x_types=("bool", "float32"))
OP_SPECS["Where"] = dict(x=(2, 3), inputs=[("a", _f32(2, 3)), ("b", _f32(3))], attrs={},
                         opsets=(16, 9), x_types=("bool", "float32", "int64"))
OP_SPECS["DepthToSpace"] = dict(x=(1, 8, 2, 3), attrs={"blocksize": "int",
                                                       "mode": "str:DCR|CRD|dcr"},
                                required={"blocksize": 2}, opsets=(13, 11, 1))
OP_SPECS["SpaceToDepth"] = dict(x=(1, 2, 4, 6), attrs={"blocksize": "int",
                                                       "mode": "str:DCR|CRD"},
                                required={"blocksize": 2}, opsets=(13, 1))
OP_SPECS["Tile"] = dict(x=(2, 3), inputs=[("repeats", _i64(2, 3))], attrs={},
                        opsets=(13, 6), x_types=("float32", "int64", "bool"))
OP_SPECS["Range"] = dict(x=None, inputs=[("start", _scalar(0.5, np.float32)),
                                         ("limit", _scalar(5.0, np.float32)),
                                         ("delta", _scalar(1.5, np.float32))],
                         attrs={"stash_type": "int"}, opsets=(11,), runtime=0.3)
OP_SPECS["Range/int"] = dict(OP_SPECS["Range"], op="Range",
                             inputs=[("start", _scalar(-3, np.int64)),
                                     ("limit", _scalar(9, np.int64)),
                                     ("delta", _scalar(2, np.int64))])
OP_SPECS["Size"] = dict(x=(2, 3), attrs={}, opsets=(13, 1),
                        x_types=("float32", "int64", "bool"))
OP_SPECS["EyeLike"] = dict(x=(3, 4), attrs={"dtype": "int", "k": "int"}, opsets=(9, 22),
                           x_types=("float32", "int64", "bool", "int32"))
OP_SPECS["Trilu"] = dict(x=(2, 3, 4), inputs=[("k", _scalar(1, np.int64))],
                         attrs={"upper": "int"}, opsets=(14,),
                         x_types=("float32", "int64", "bool"))
OP_SPECS["CumSum"] = dict(x=(2, 3), inputs=[("axis", _scalar(1, np.int64))],
                          attrs={"exclusive": "int", "reverse": "int"}, opsets=(14, 11),
                          x_types=("float32", "int64", "int32", "float64", "bool"))
OP_SPECS["OneHot"] = dict(x=(2, 3), inputs=[("depth", _scalar(4, np.int64)),
                                            ("values", lambda: np.array([0, 1], np.float32))],
                          attrs={"axis": "int"}, opsets=(11, 9),
                          x_types=("int64", "float32", "int32", "bool"))
OP_SPECS["Einsum"] = dict(x=(2, 3), inputs=[("w", _f32(3, 4))], attrs={"equation": "einsum"},
                          required={"equation": "ij,jk->ik"}, opsets=(12,),
                          x_types=("float32", "int64", "float64"))
OP_SPECS["LayerNormalization"] = dict(x=(2, 3, 4), inputs=[("scale", _f32(4)),
                                                           ("bias", _f32(4))],
                                      attrs={"axis": "int", "epsilon": "float",
                                             "stash_type": "int"},
                                      outputs=(1, 3, 2), opsets=(17,))
OP_SPECS["GroupNormalization"] = dict(x=(1, 4, 2, 2), inputs=[("scale", _f32(2)),
                                                              ("bias", _f32(2))],
                                      attrs={"num_groups": "int", "epsilon": "float",
                                             "stash_type": "int"},
                                      required={"num_groups": 2}, opsets=(18, 21))
OP_SPECS["InstanceNormalization"] = dict(x=(1, 3, 4, 4), inputs=[("scale", _f32(3)),
                                                                 ("bias", _f32(3))],
                                         attrs={"epsilon": "float"}, opsets=(6, 1))
OP_SPECS["MeanVarianceNormalization"] = dict(x=(1, 3, 4, 4), attrs={"axes": "ints:3"},
                                             opsets=(13, 9))
for _op, _attrs in (("MaxPool", {"ceil_mode": "int", "storage_order": "int"}),
                    ("AveragePool", {"ceil_mode": "int", "count_include_pad": "int"}),
                    ("LpPool", {"ceil_mode": "int", "p": "int"})):
    _opsets = (18, 11, 2) if _op == "LpPool" else (17, 11, 19)
    OP_SPECS[f"{_op}/1d"] = dict(op=_op, x=(1, 3, 8), attrs=dict(_window(1), **_attrs),
                                 required={"kernel_shape": [2]}, opsets=_opsets,
                                 outputs=(1, 2) if _op == "MaxPool" else (1,))
    OP_SPECS[f"{_op}/3d"] = dict(op=_op, x=(1, 2, 4, 4, 4), attrs=dict(_window(3), **_attrs),
                                 required={"kernel_shape": [2, 2, 2]}, opsets=_opsets,
                                 outputs=(1, 2) if _op == "MaxPool" else (1,))
OP_SPECS["LpPool"] = dict(x=(1, 3, 6, 6), attrs=dict(_WINDOW, ceil_mode="int", p="int"),
                          required={"kernel_shape": [2, 2]}, opsets=(18, 11, 2))
OP_SPECS["GlobalLpPool"] = dict(x=(1, 3, 4, 4), attrs={"p": "int"}, opsets=(2, 1))
OP_SPECS["GlobalMaxPool"] = dict(x=(1, 3, 4, 4), attrs={})
_RESIZE_ATTRS = dict(OP_SPECS["Resize"]["attrs"],
                     mode="str:nearest|linear|cubic|bilinear|bicubic|area|",
                     axes="ints:1")
OP_SPECS["Resize/3d"] = dict(op="Resize", x=(1, 2, 5),
                             inputs=[("roi", _f32(6), 0.7),
                                     ("scales", lambda: np.array([1, 1, 0.4], np.float32))],
                             attrs=_RESIZE_ATTRS, opsets=(19, 18, 13, 11))
OP_SPECS["Resize/5d"] = dict(op="Resize", x=(1, 1, 2, 3, 4),
                             inputs=[("roi", None),
                                     ("scales", lambda: np.array([1, 1, 2, 1.5, 0.5],
                                                                 np.float32))],
                             attrs=dict(_RESIZE_ATTRS, axes="ints:3"), opsets=(19, 18, 13))
OP_SPECS["GridSample"] = dict(x=(1, 2, 4, 4), inputs=[("grid", _grid(1, 3, 3, 2))],
                              attrs={"mode": "str:bilinear|nearest|bicubic|linear|cubic|area",
                                     "padding_mode": "str:zeros|border|reflection|mirror",
                                     "align_corners": "int"}, opsets=(16, 20, 22))
OP_SPECS["GridSample/1d"] = dict(OP_SPECS["GridSample"], op="GridSample", x=(1, 2, 5),
                                 inputs=[("grid", _grid(1, 4, 1))], opsets=(20, 22))
OP_SPECS["GridSample/3d"] = dict(OP_SPECS["GridSample"], op="GridSample", x=(1, 2, 3, 3, 3),
                                 inputs=[("grid", _grid(1, 2, 2, 2, 3))], opsets=(20, 22))
# weights as graph inputs: more often for the operators that take them at run time
for _op in ("Conv", "ConvTranspose", "DeformConv", "BatchNormalization", "GridSample",
            "LayerNormalization", "GroupNormalization", "InstanceNormalization", "Tile",
            "OneHot", "Trilu", "CumSum", "TopK", "Resize", "Resize/3d", "Resize/5d", "Range/int",
            "Reshape", "Expand", "Slice", "Pad", "ConstantOfShape", "GridSample/3d"):
    OP_SPECS[_op] = dict(OP_SPECS[_op], runtime=0.35)


def _attr_value(d, kind, calm=False):
    """A value for an attribute of ``kind``: a good one, or a hostile one (rarely, if
    ``calm``)."""
    base, _, arg = kind.partition(":")
    if base == "einsum":
        if d.chance(0.7):
            return d.choice(EINSUM_EQUATIONS[:20] if calm else EINSUM_EQUATIONS)
        # letters, commas, arrows and dots thrown together
        return "".join(d.choice(["i", "j", "k", "b", ",", "->", "...", ".", " ", "-", "Z"])
                       for _ in range(d.randint(0, 12)))
    if d.chance(0.9 if calm else 0.35):       # valid-looking
        if base == "int":
            return d.randint(0, 3)
        if base == "ints":
            return [d.randint(0, 3) for _ in range(int(arg))]
        if base == "float":
            return d.choice([0.5, 1.0, 1e-5, 2.0])
        if base == "floats":
            return [d.choice([1.0, 2.0]) for _ in range(int(arg))]
        if base == "str":
            return d.choice(arg.split("|"))
        if base == "tensor":
            return d.choice([np.array([1.5], np.float32), np.array([3], np.int64)])
    hostile = d.randint(0, 9)
    if hostile <= 3 and base in ("int", "ints"):
        if base == "int":
            return d.int_value()
        n = int(arg)
        length = d.choice([n, n, n, 0, 1, n - 1, n + 1, 2 * n, 9])
        return [d.int_value() for _ in range(max(0, length))]
    if hostile <= 3 and base in ("float", "floats"):
        if base == "float":
            return d.float_value()
        return [d.float_value() for _ in range(d.choice([int(arg), 0, 1, 5]))]
    if hostile <= 3 and base == "tensor":
        return d.choice([np.zeros((0,), np.float32), np.ones((2, 2), np.float32),
                         np.array([1], np.float16), np.array(["a"], object),
                         np.array([2**62], np.int64), np.array([np.nan], np.float32),
                         np.array(True)])
    # the wrong type altogether
    return d.choice([d.int_value(), d.float_value(), d.string_value(), [d.int_value()],
                     [d.float_value(), d.float_value()], ["a", "b"], [],
                     np.array([1.0], np.float32), b"\xff\xfe"])


def _make_attribute(name, value):
    from onnx import AttributeProto, helper as h, numpy_helper as nh
    if isinstance(value, np.ndarray):
        return h.make_attribute(name, nh.from_array(value) if value.dtype != object
                                else h.make_tensor(name, 8, value.shape, [b"a"]))
    if isinstance(value, list) and not value:
        return h.make_attribute(name, [], attr_type=AttributeProto.INTS)
    return h.make_attribute(name, value)


def _const_input(d, value):
    """An initializer value: as specified, or with hostile values, length or dtype."""
    if value.dtype == np.int64 and d.chance(0.5):
        n = d.choice([value.size] * 3 + [0, 1, value.size + 1, 2 * value.size])
        value = np.array([d.int_value() for _ in range(n)], np.int64)
        if d.chance(0.1):
            value = value.reshape(1, -1) if value.size else value.reshape(0, 1)
    elif value.dtype == np.float32 and d.chance(0.3):
        value = value.copy()
        with np.errstate(all="ignore"):
            if value.size:
                value.reshape(-1)[d.randint(0, value.size - 1)] = d.float_value()
            elif d.chance(0.5):
                value = np.array([d.float_value()], np.float32)
    if d.chance(0.1):
        with np.errstate(all="ignore"):
            value = value.astype(d.choice([np.float32, np.int32, np.int64, np.float64,
                                           np.uint8, np.bool_, np.float16]))
    if d.chance(0.08):
        shape = [d.choice([0, 1, 2, 3]) for _ in range(d.randint(0, 4))]
        value = np.zeros(shape, value.dtype)
    elif d.chance(0.08) and value.dtype.kind in "fb":
        # another shape, one dimension off or one more or fewer (a scale or bias for another
        # number of channels, a grid of another rank), filled as the original was
        shape = list(value.shape)
        how = d.choice(["dim", "dim", "rank+", "rank-"])
        if how == "dim" and shape:
            shape[d.randint(0, len(shape) - 1)] = d.choice([0, 1, 2, 3, 5, 9])
        elif how == "rank+":
            shape.insert(d.randint(0, len(shape)), d.choice([1, 2]))
        elif shape:
            shape.pop(d.randint(0, len(shape) - 1))
        flat = value.reshape(-1)
        value = (np.resize(flat, math.prod(shape)) if flat.size else
                 np.zeros(math.prod(shape), value.dtype)).reshape(shape)
    if d.chance(0.04) and value.dtype.kind == "f":
        with np.errstate(all="ignore"):
            value = np.full(value.shape, d.float_value(), value.dtype)   # all NaN, all inf
    return value


def _declared_dims(d, value, feed):
    """The shape a graph input declares for the value ``feed`` that replaced the constant
    ``value``: the feed's own, with a dimension left free, or every one free (then the feed may
    have any shape of that rank: wrong shapes reach the operator only at run time)."""
    how = d.choice(["exact", "exact", "exact", "one free", "all free"])
    dims = list(feed.shape)
    if how == "one free" and dims:
        dims[d.randint(0, len(dims) - 1)] = d.choice(["N", None])
    elif how == "all free":
        dims = [None] * len(dims)
    return dims, how


def _as_graph_input(d, name, make, value, log):
    """A constant input made a graph input: (declared dims, feeds of its one or two runs)."""
    feed = value
    dims, how = _declared_dims(d, value, feed)
    if how == "all free" and d.chance(0.5):
        other = _const_input(d, make())
        if other.ndim == feed.ndim and other.dtype == feed.dtype:
            feed = other
    feeds = [feed]
    if d.chance(0.25):
        # a second run with another value: plans per value, or the same plan for new weights
        second = _const_input(d, make())
        if second.dtype == feed.dtype and second.ndim == len(dims) and all(
                w is None or isinstance(w, str) or w == n for n, w in zip(second.shape, dims)):
            feeds.append(second)
    log.append(f"  {name} is a graph input {feed.dtype}{dims}, fed "
               + "; ".join(f"{f.dtype}{list(f.shape)} {f.reshape(-1)[:8].tolist()}"
                           for f in feeds)[:240])
    return dims, feeds


# the element types a graph input may have (engine.graph.ir.DTYPES)
GRAPH_INPUT_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint64",
                      "uint32", "uint16", "uint8", "bool")
FEED_KEY = "fuzz_feed:"      # metadata_props key prefix: the value fed to a graph input


def _encode_feed(values):
    return json.dumps([{"dtype": v.dtype.name, "shape": list(v.shape),
                        "data": v.reshape(-1).tolist()} for v in values])


def given_feeds(data):
    """The runs a case asks for, from its metadata: [{graph input: array}] (values for the
    inputs fuzz_feed names; the others get feeds_for's), [{}] for one run of defaults."""
    try:
        from onnx import ModelProto
        proto = ModelProto.FromString(data)
        props = {p.key: p.value for p in proto.metadata_props if p.key.startswith(FEED_KEY)}
    except Exception:     # noqa: BLE001 (not a protobuf: one run of the defaults)
        return [{}]
    runs = [{}]
    for key, text in props.items():
        try:
            values = [np.array(v["data"], v["dtype"]).reshape(v["shape"])
                      for v in json.loads(text)]
        except Exception:     # noqa: BLE001 (metadata mangled by a byte mutation)
            continue
        for k, v in enumerate(values[:2]):
            if k == len(runs):
                runs.append({})
            runs[k][key[len(FEED_KEY):]] = v
    return runs


def onnx_op_case(d, log, op=None):
    """A one-operator model with drawn attributes, inputs, outputs, input shape and opset."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    key = op or d.choice(sorted(OP_SPECS))
    spec = OP_SPECS[key]
    op = spec.get("op", key)
    opsets = spec.get("opsets", (17,))
    # a calm case draws good-looking attributes, inputs and outputs (the values of inputs
    # are drawn all the same), so that more cases reach shapes and running
    calm = d.chance(0.3)
    opset = opsets[0] if calm or d.chance(0.6) else d.choice(list(opsets) + [6, 13, 21])
    attrs = dict(spec.get("required", {}))
    for name, kind in spec["attrs"].items():
        if d.chance(0.35):
            attrs[name] = _attr_value(d, kind, calm)
    if not calm and d.chance(0.1):
        attrs[d.choice(["foo", "", "activation", "axis", "kernel_shape"])] = \
            _attr_value(d, d.choice(["int", "ints:2", "float", "str:a"]))
    if not calm and d.chance(0.1) and attrs:
        del attrs[d.choice(sorted(attrs))]
    kernel = spec["attrs"].get("kernel_shape", "")
    if kernel.startswith("ints:") and d.chance(0.08):
        # a window far larger than the input that still gives a small output: pads just
        # under the kernel, strides as large or 1
        n, k = int(kernel[5:]), d.choice([64, 1000, 10**5, 10**7, 2**30])
        attrs["kernel_shape"] = [k] * n
        attrs["pads"] = [d.choice([k - 1, k // 2, 0]) for _ in range(2 * n)]
        attrs["strides"] = [d.choice([1, k, k // 2]) for _ in range(n)]
        if d.chance(0.3):
            attrs["dilations"] = [d.choice([1, 2, k]) for _ in range(n)]
        log.append(f"  a huge window: {k}")
    inits, inputs = {}, []
    if spec["x"] is not None:
        shape = list(spec["x"])
        if d.chance(0.25):
            how = d.choice(["dim", "dim", "free", "rank+", "rank-"])
            if how == "dim":
                shape[d.randint(0, len(shape) - 1)] = d.choice([0, 1, 2, 7, 33, 33, 1024,
                                                                65536, 2**20, 2**31])
            elif how == "free":
                shape[d.randint(0, len(shape) - 1)] = d.choice(["N", None])
            elif how == "rank+":
                shape.append(d.choice([1, 2, 3]))
            elif shape:
                shape.pop()
        inputs.append("x")
    else:
        shape = None
    runtime = {}           # graph inputs standing for a constant: name -> (dims, feeds)
    for name, make, *absent in spec.get("inputs", []):
        if make is None or absent and d.chance(absent[0]):
            if name == "x":
                inputs.append("x")
            else:
                inputs.append("")
            continue
        value = _const_input(d, make())
        if d.chance(spec.get("runtime", 0.1)) and value.dtype.name in GRAPH_INPUT_DTYPES:
            runtime[name] = _as_graph_input(d, name, make, value, log)
        else:
            inits[name] = value
        inputs.append(name)
    if op == "Resize" and d.chance(0.3):      # sizes instead of scales
        inputs[2:] = ["", "sizes"]
        inits["sizes"] = _const_input(d, np.array([1, 2, 8, 8], np.int64))
    if not calm and d.chance(0.3) and len(inputs) > 1:
        k = d.randint(1, len(inputs) - 1)
        inputs = inputs[:k] if d.chance(0.5) else inputs[:k] + [""] + inputs[k + 1:]
    if not calm and d.chance(0.1):
        inputs.append(d.choice(["x", "", "missing"]))
    if not calm and d.chance(0.05) and inputs:
        inputs[0] = d.choice(["", "missing"])
    if opset < 10 and op in ("Slice", "Clip", "Pad") and d.chance(0.6):
        inputs = inputs[:1]      # older opsets took these as attributes
    n_out = spec.get("outputs", (1,))[0] if calm else d.choice(spec.get("outputs", (1,)))
    outputs = ["y"] + [f"y{k}" for k in range(1, n_out)]
    if not calm and d.chance(0.05):
        outputs[d.randint(0, len(outputs) - 1)] = d.choice(["", "x", "y"])
    node = h.make_node(op, inputs, outputs, name=d.choice(["n", "n", "n", ""]))
    for k, v in attrs.items():
        try:
            node.attribute.append(_make_attribute(k, v))
        except Exception:        # a value ONNX itself cannot hold (e.g. beyond int64)
            continue
    shown = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in attrs.items()}
    log.append(f"{op} opset {opset} inputs {inputs} outputs {outputs} x {shape} attrs "
               f"{shown}"[:400])
    for k, v in inits.items():
        log.append(f"  {k} = {v.dtype}{list(v.shape)} {v.reshape(-1)[:8].tolist()}"[:200])
    x_types = spec.get("x_types", ("float32", "int64") if op == "Cast" else ("float32",))
    x_type = x_types[0] if d.chance(0.7) else d.choice(x_types)
    if x_type != "float32":
        log.append(f"  x is {x_type}")
    graph_inputs = [] if shape is None else [
        h.make_tensor_value_info("x", h.np_dtype_to_tensor_dtype(np.dtype(x_type)), shape)]
    for name, (dims, feeds) in runtime.items():
        graph_inputs.append(h.make_tensor_value_info(
            name, h.np_dtype_to_tensor_dtype(feeds[0].dtype), dims))
    tensors = []
    for k, v in inits.items():
        try:
            tensors.append(nh.from_array(v, k))
        except Exception:
            continue
    g = h.make_graph([node], "fuzz", graph_inputs,
                     [h.make_tensor_value_info(o or "y", T.FLOAT, None) for o in outputs[:1]]
                     + [h.make_tensor_value_info(o, T.FLOAT, None) for o in outputs[1:] if o],
                     tensors)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)
    for name, (dims, feeds) in runtime.items():
        m.metadata_props.add(key=FEED_KEY + name, value=_encode_feed(feeds))
    return m


def onnx_edit_case(d, proto, log):
    """A seed graph with one node's attributes, inputs or op edited, or an initializer or the
    graph input changed."""
    from onnx import TensorProto as T, numpy_helper as nh
    m = copy.deepcopy(proto)
    g = m.graph
    if not g.node:
        return onnx_op_case(d, log)
    what = d.randint(0, 9)
    node = d.choice(list(g.node))
    if what <= 3:
        kinds = ["int", "ints:2", "ints:4", "float", "str:x", "tensor"]
        names = [a.name for a in node.attribute] + ["kernel_shape", "pads", "strides", "axis",
                                                    "group", "mode", "perm", "dilations",
                                                    "axes", "keepdims", "equation", "p"]
        name = d.choice(names)
        value = _attr_value(d, "einsum" if name == "equation" and d.chance(0.7)
                            else d.choice(kinds))
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep)
        try:
            node.attribute.append(_make_attribute(name, value))
        except Exception:
            pass
        log.append(f"{node.name}.{name} = {value!r}"[:300])
    elif what == 4 and node.attribute:
        victim = d.choice([a.name for a in node.attribute])
        keep = [a for a in node.attribute if a.name != victim]
        del node.attribute[:]
        node.attribute.extend(keep)
        log.append(f"del {node.name}.{victim}")
    elif what == 5:
        # a name that is not UTF-8 (a corpus case's byte edits) reads as bytes: left out
        names = [t for n in g.node for t in n.output if isinstance(t, str) and t.isprintable()]
        names += ["x", "", "nope"]
        ins = [t for t in node.input if isinstance(t, str)]
        how = d.choice(["drop", "add", "replace"])
        if how == "drop" and ins:
            del ins[d.randint(0, len(ins) - 1)]
        elif how == "add":
            ins.append(d.choice(names))
        elif ins:
            ins[d.randint(0, len(ins) - 1)] = d.choice(names)
        del node.input[:]
        node.input.extend(ins)
        log.append(f"{node.name}.inputs = {ins}")
    elif what == 6:
        node.op_type = d.choice(sorted({s.get("op", k) for k, s in OP_SPECS.items()}) +
                                ["Einsum", ""])
        log.append(f"{node.name}.op_type = {node.op_type}")
    elif what == 7 and g.initializer:
        t = d.choice(list(g.initializer))
        try:
            value = _const_input(d, nh.to_array(t))
            t.CopyFrom(nh.from_array(value, t.name))
        except Exception:     # noqa: BLE001 (a corpus case's tensor ONNX cannot read: kept)
            return m
        log.append(f"initializer {t.name} = {value.dtype}{list(value.shape)}")
    elif what == 8 and g.input and g.input[0].type.tensor_type.shape.dim:
        dims = g.input[0].type.tensor_type.shape.dim
        k = d.randint(0, len(dims) - 1)
        v = d.choice([0, 1, 2, 3, 64, 2**31, -1, None])
        if v is None:
            dims[k].dim_param = "N"
        else:
            dims[k].dim_value = v
        log.append(f"x.shape[{k}] = {v}")
    elif g.input and m.opset_import:
        m.opset_import[0].version = d.choice([1, 5, 6, 9, 10, 11, 13, 18, 21, 22, 99])
        g.input[0].type.tensor_type.elem_type = d.choice([T.FLOAT, T.FLOAT, T.DOUBLE,
                                                          T.FLOAT16, T.INT64, 0, 77])
        log.append(f"opset {m.opset_import[0].version} x elem "
                   f"{g.input[0].type.tensor_type.elem_type}")
    return m


def onnx_case(d, seeds, corpus, log, corpus_share=0.5):
    """Serialized ModelProto bytes: a fresh one-operator model, an edited seed graph, or a
    byte-mutated seed file."""
    what = d.randint(0, 9)
    if what <= 5:
        return onnx_op_case(d, log).SerializeToString()
    if what <= 8:
        from onnx import ModelProto
        base = d.choice(seeds)
        if corpus and d.chance(corpus_share):
            try:
                base = ModelProto.FromString(d.choice(corpus))
            except Exception:
                pass
        return onnx_edit_case(d, base, log).SerializeToString()
    data = d.choice(seeds).SerializeToString()
    for _ in range(d.randint(1, 4)):
        data, how = _byte_mutation(d, data, [])
        log.append(how)
    return data


# ----------------------------------------------------------------------------- one case
def load_kwargs():
    """max_memory=256 MB where engine.load takes it."""
    import inspect
    import engine
    try:
        params = inspect.signature(engine.load).parameters
    except (TypeError, ValueError):
        return {}
    return {"max_memory": 256 << 20} if "max_memory" in params else {}


def feeds_for(model, limit=1 << 20, given=None):
    """An input of the declared shape (free dimensions 2), or None if it would be large; the
    arrays ``given`` ({name: array}) as they are."""
    feeds = {}
    for spec in model.inputs:
        x = (given or {}).get(spec.name)
        # a value the input takes (a byte edit may have changed the declaration), else the
        # default: the runner's ValueError for a mismatched feed tests nothing of the model
        if x is not None and x.dtype == np.dtype(spec.dtype) and x.ndim == len(spec.shape) \
                and all(w is None or w == n for n, w in zip(x.shape, spec.shape)):
            feeds[spec.name] = x
            continue
        shape = [2 if d is None else int(d) for d in spec.shape]
        if math.prod(shape) > limit or any(d > limit for d in shape):
            return None
        dtype = np.dtype(spec.dtype)
        x = (np.arange(math.prod(shape)) % 7 - 3).reshape(shape)
        if dtype.kind == "f":
            feeds[spec.name] = (x * 0.25).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = x > 0
        elif dtype.kind == "i":
            feeds[spec.name] = x.astype(dtype)
        else:
            feeds[spec.name] = np.abs(x).astype(dtype)
    return feeds


def onnx_loads_from_path(data):
    """One ONNX case in ten (by its bytes' hash, so a replay repeats it), and every case that
    is not a protobuf, goes through engine.load(path)."""
    import zlib
    return zlib.crc32(data) % 10 == 0


def execute(loader, data, path, kwargs):
    """Load (and run) one case. Returns (outcome, exception or None, phase): outcome is
    "success", "ModelError", "ValueError" or the exception's type name."""
    import engine
    phase = "load"
    try:
        if loader == "native":
            model = engine.load(path, **kwargs)
        else:
            from onnx import ModelProto
            proto = None
            if not onnx_loads_from_path(data):
                try:
                    proto = ModelProto.FromString(data)
                except Exception:
                    proto = None
            model = engine.load(proto if proto is not None else path, **kwargs)
        phase = "run"
        for given in (given_feeds(data) if loader == "onnx" else [{}]):
            feeds = feeds_for(model, given=given)
            if feeds is not None:
                model.run(feeds)
        return "success", None, phase
    except engine.ModelError as e:
        return "ModelError", e, phase
    except ValueError as e:
        return "ValueError", e, phase
    except Exception as e:   # noqa: BLE001 (every other type is what this run looks for)
        return type(e).__name__, e, phase


def engine_frame(exc):
    """'engine/…py:LINE (function)' of the traceback's last frame in the engine (the last
    frame at all if none is)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if f"{os.sep}engine{os.sep}" in f.filename]
    f = (mine or frames or [None])[-1]
    if f is None:
        return "?"
    name = f.filename
    if name.startswith(REPO + os.sep):
        name = name[len(REPO) + 1:]
    return f"{name}:{f.lineno} ({f.name})"


def signature(outcome, exc):
    """What makes two outcomes the same finding: type, engine frame, message shape."""
    if exc is None:
        return outcome
    msg = re.sub(r"'[^']*'", "'…'", str(exc))
    msg = re.sub(r"\d+", "N", msg)[:80]
    return f"{outcome} @ {engine_frame(exc)}: {msg}"


# ----------------------------------------------------------------------------- worker
SAVE_PER_SIGNATURE = 3


def _save(out_dir, loader, tag, data, info):
    import hashlib
    os.makedirs(out_dir, exist_ok=True)
    key = hashlib.sha1(info.get("signature", tag).encode()).hexdigest()[:10]
    suffix = ".safetensors" if loader == "native" else ".onnx"
    for k in range(SAVE_PER_SIGNATURE):
        path = os.path.join(out_dir, f"{loader}-{tag}-{key}-{k}{suffix}")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
            with open(path + ".json", "w") as f:
                json.dump(dict(info, loader=loader), f, indent=1, default=str)
            return path
    return None


class Worker:
    """The child's side: make cases, run them, report each to the parent as a JSON line on
    the stdout it was started with."""

    def __init__(self, args):
        self.args = args
        self.loader = args.worker
        self.work = os.path.join(args.out, f"work-{os.getpid()}")   # the parent removes it
        os.makedirs(self.work)
        self.current = os.path.join(self.work, "case.safetensors" if self.loader == "native"
                                    else "case.onnx")
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)          # anything else printed goes to the log, not the protocol
        self.budget_kb = args.rss_budget_mb * 1024
        self.seen = set()
        self.kwargs = {}

    def report(self, **msg):
        self.out.write(json.dumps(msg) + "\n")

    def setup(self):
        import engine
        engine.set_num_threads(1)
        self.kwargs = load_kwargs()
        if self.loader == "native":
            seed_dir = os.path.join(self.work, "seeds")
            os.makedirs(seed_dir)
            self.seeds = []
            for p in seed_native_files(seed_dir):
                with open(p, "rb") as f:
                    self.seeds.append(f.read())
        else:
            self.seeds = list(seed_onnx_models().values())
        self.corpus = []

    def one(self, data, log):
        import resource
        with open(self.current, "wb") as f:
            f.write(data)
        self.report(event="start", path=self.current)
        t0 = time.perf_counter()
        outcome, exc, phase = execute(self.loader, data, self.current, self.kwargs)
        seconds = time.perf_counter() - t0
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sig = signature(outcome, exc)
        info = {"outcome": outcome, "phase": phase, "signature": sig,
                "message": str(exc)[:500] if exc else "",
                "frame": engine_frame(exc) if exc else "", "seconds": seconds,
                "rss_mb": rss_kb / 1024, "mutations": log}
        saved = None
        over = rss_kb > self.budget_kb
        if exc is not None and outcome != "ModelError":
            info["traceback"] = "".join(traceback.format_exception(exc))[-3000:]
            saved = _save(self.args.out, self.loader, outcome, data, info)
        if over:
            saved = _save(self.args.out, self.loader, "over-budget", data,
                          dict(info, signature="over-budget " + sig)) or saved
        self.report(event="done", outcome=outcome, phase=phase, signature=sig,
                    message=info["message"][:300], frame=info["frame"], rss_kb=rss_kb,
                    over_budget=over, saved=saved, seconds=seconds)
        if sig not in self.seen:
            self.seen.add(sig)
            if len(self.corpus) < 2000:
                self.corpus.append(data)
        if over:
            self.out.flush()
            os._exit(0)      # a fresh worker measures the next cases

    def make_case(self, d, log):
        """A new case; a failure here is this script's bug: reported, never counted."""
        try:
            if self.loader == "native":
                seeds = self.seeds + (self.corpus if d.chance(0.5) else [])
                return native_case(d, seeds, log)
            return onnx_case(d, self.seeds, self.corpus, log)
        except Exception:    # noqa: BLE001
            traceback.print_exc()
            self.report(event="generator-error", message=traceback.format_exc()[-300:])
            return None

    def random_loop(self):
        d = RandomDriver(self.args.seed)
        while True:
            log = []
            data = self.make_case(d, log)
            if data is not None:
                self.one(data, log)

    def atheris_loop(self):
        import atheris
        corpus_dir = os.path.join(self.args.out, f"corpus-{self.loader}")
        os.makedirs(corpus_dir, exist_ok=True)
        for k, s in enumerate(self.seeds):
            path = os.path.join(corpus_dir, f"seed-{k}")
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(s if isinstance(s, bytes) else s.SerializeToString())
        onnx_seeds = [] if self.loader == "native" else self.seeds
        last_log = []

        def mutator(data, max_size, seed):
            d = RandomDriver(seed)
            last_log.clear()
            try:
                return structured(d, data, max_size)[:max_size]
            except Exception:    # noqa: BLE001 (this script's bug: logged, case still made)
                traceback.print_exc()
                self.report(event="generator-error", message=traceback.format_exc()[-300:])
                last_log.append("libFuzzer mutation")
                return atheris.Mutate(data, max_size)

        def structured(d, data, max_size):
            if d.chance(0.3):
                end = None
                if self.loader == "native" and len(data) >= 8:
                    end = 8 + struct.unpack("<Q", data[:8])[0]
                if end and end < len(data) and d.chance(0.7):
                    # libFuzzer's byte mutations on the JSON header only, the length prefix
                    # kept or made to fit
                    head = atheris.Mutate(data[8:end], max(2 * end, 64))
                    prefix = data[:8] if d.chance(0.3) else struct.pack("<Q", len(head))
                    last_log.append("libFuzzer mutation of the header")
                    return prefix + head + data[end:]
                last_log.append("libFuzzer mutation")
                return atheris.Mutate(data, max_size)
            if self.loader == "native":
                # a corpus file the structured edits cannot parse gets byte edits only: half
                # the time start again from a seed instead
                base = [data] if data and (split_safetensors(data) or d.chance(0.5)) \
                    else self.seeds
                return native_case(d, base, last_log)
            return onnx_case(d, onnx_seeds, [data] if data else [], last_log, corpus_share=0.9)

        def test_one_input(data):
            self.one(data, list(last_log))

        # the parent enforces --timeout; atheris reads -timeout=0 as one second, so give
        # libFuzzer a day, and keep its artifacts (it writes the input of anything it calls a
        # crash) in --out
        argv = [sys.argv[0], corpus_dir, f"-seed={self.args.seed}", "-timeout=86400",
                "-artifact_prefix=" + os.path.join(self.args.out, "libfuzzer-"),
                "-rss_limit_mb=0", "-malloc_limit_mb=0", "-max_len=600000",
                "-runs=1000000000", "-print_final_stats=0", "-reload=60"]
        atheris.Setup(argv, test_one_input, custom_mutator=mutator)
        atheris.Fuzz()


def worker_main(args):
    w = Worker(args)
    if args.engine == "atheris":
        import atheris
        with atheris.instrument_imports(include=["engine"]):
            import engine  # noqa: F401
            import engine.io.native  # noqa: F401
            import engine.io.onnx_import  # noqa: F401
            import engine.graph  # noqa: F401
        w.setup()
        w.atheris_loop()
    else:
        w.setup()
        w.random_loop()


# ----------------------------------------------------------------------------- parent
def _limit_memory(limit_bytes):
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        os.setsid()
    return apply


class Tally:
    def __init__(self, loader):
        self.loader = loader
        self.cases = 0
        self.counts = {}
        self.examples = {}            # outcome -> {signature: [count, message, frame, saved]}
        self.crashes = []
        self.timeouts = []
        self.over_budget = []
        self.peak_rss_kb = 0
        self.restarts = 0
        self.generator_errors = []    # this script's own bugs, not the engine's
        self.stalls = 0               # workers silent outside a case: killed and restarted

    def add(self, msg):
        self.cases += 1
        o = msg["outcome"]
        self.counts[o] = self.counts.get(o, 0) + 1
        self.peak_rss_kb = max(self.peak_rss_kb, msg["rss_kb"])
        if o not in ("success", "ModelError"):
            ex = self.examples.setdefault(o, {}).setdefault(
                msg["signature"], [0, msg["message"], msg["frame"], msg["saved"]])
            ex[0] += 1
            ex[3] = ex[3] or msg["saved"]
        if msg["over_budget"]:
            self.over_budget.append((msg["signature"], msg["saved"], msg["rss_kb"]))

    def table(self):
        lines = [f"loader {self.loader}: {self.cases} cases"]
        order = ["success", "ModelError", "ValueError"]
        for k in order + sorted(set(self.counts) - set(order)):
            lines.append(f"  {k:<32} {self.counts.get(k, 0):>8}")
        lines.append(f"  {'crashes':<32} {len(self.crashes):>8}")
        lines.append(f"  {'timeouts':<32} {len(self.timeouts):>8}")
        lines.append(f"  {'memory-limit hits (MemoryError)':<32} "
                     f"{self.counts.get('MemoryError', 0):>8}")
        lines.append(f"  {'over the RSS budget':<32} {len(self.over_budget):>8}")
        lines.append(f"  {'peak RSS of a worker':<32} {self.peak_rss_kb / 1024:>6.0f} MB")
        lines.append(f"  {'worker restarts':<32} {self.restarts:>8}")
        if self.stalls:
            lines.append(f"  {'workers stalled outside a case':<32} {self.stalls:>8}")
        if self.generator_errors:
            lines.append(f"  {'fuzzer bugs (cases not made)':<32} "
                         f"{len(self.generator_errors):>8}: {self.generator_errors[0]!r}")
        for outcome, sigs in sorted(self.examples.items()):
            lines.append(f"  {outcome} (not success or ModelError), by place:")
            for sig, (count, message, frame, saved) in sorted(sigs.items(),
                                                              key=lambda kv: -kv[1][0]):
                lines.append(f"    {count:>6}  {frame}: {message[:160]}")
                if saved:
                    lines.append(f"            e.g. {saved}")
        for what, items in (("crash", self.crashes), ("timeout", self.timeouts)):
            for detail, saved in items[:20]:
                lines.append(f"  {what}: {detail}  case {saved}")
        for sig, saved, rss in self.over_budget[:20]:
            lines.append(f"  over budget ({rss / 1024:.0f} MB): {sig[:160]}  case {saved}")
        return "\n".join(lines)

    def as_json(self):
        return {"loader": self.loader, "cases": self.cases, "counts": self.counts,
                "other": {o: {s: v for s, v in sigs.items()}
                          for o, sigs in self.examples.items()},
                "crashes": self.crashes, "timeouts": self.timeouts,
                "over_budget": self.over_budget, "peak_rss_mb": self.peak_rss_kb / 1024,
                "restarts": self.restarts, "stalls": self.stalls,
                "generator_errors": self.generator_errors[:20]}


class Child:
    def __init__(self, args, loader, index, generation):
        self.loader = loader
        self.index = index
        self.out = args.out
        os.makedirs(args.out, exist_ok=True)
        self.log = open(os.path.join(args.out, f"worker-{loader}-{index}.log"), "ab")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep +
                   os.environ.get("PYTHONPATH", ""))
        seed = (args.seed * 1000003 + index * 7919 + generation) % 2**31
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", loader, "--seed",
               str(seed), "--out", args.out, "--rss-budget-mb", str(args.rss_budget_mb),
               "--engine", args.engine]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, cwd=args.out,
                                     preexec_fn=_limit_memory(args.mem_limit_mb << 20))
        self.buf = b""
        self.started = None        # (time, path) of the case running
        self.ready_at = self.last_report = time.time()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        shutil.rmtree(os.path.join(self.out, f"work-{self.proc.pid}"), ignore_errors=True)


def _save_running(args, loader, child, tag, detail):
    path = child.started[1] if child.started else None
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    return _save(args.out, loader, tag, data, {"signature": f"{tag} {detail}",
                                               "outcome": tag, "message": detail})


def _read_reports(child, tally, limit):
    """Read what the child has written (one read) and count finished cases; False at EOF."""
    chunk = os.read(child.proc.stdout.fileno(), 65536)
    child.buf += chunk
    child.last_report = time.time()
    while b"\n" in child.buf and tally.cases < limit:
        line, child.buf = child.buf.split(b"\n", 1)
        msg = json.loads(line)
        if msg["event"] == "start":
            child.started = (time.time(), msg["path"])
        elif msg["event"] == "generator-error":
            tally.generator_errors.append(msg["message"])
        else:
            child.started = None
            tally.add(msg)
    return bool(chunk)


def run_loader(args, loader):
    tally = Tally(loader)
    generation = 0
    children = [Child(args, loader, k, generation) for k in range(args.workers)]
    t0 = last_print = time.time()
    try:
        while tally.cases < args.cases:
            fds = {c.proc.stdout.fileno(): c for c in children}
            ready, _, _ = select.select(list(fds), [], [], 0.5)
            now = time.time()
            for fd in ready:
                _read_reports(fds[fd], tally, args.cases)
            for k, c in enumerate(children):
                dead = c.proc.poll() is not None
                if dead:               # what it wrote before dying counts first
                    while _read_reports(c, tally, args.cases):
                        pass
                late = c.started and now - c.started[0] > args.timeout
                # silent outside a case (making one, or starting up) for far too long
                stalled = not c.started and now - c.last_report > max(120, 3 * args.timeout)
                if not dead and not late and not stalled:
                    continue
                if stalled and not dead:
                    tally.stalls += 1
                    c.kill()
                elif late and not dead:
                    saved = _save_running(args, loader, c, "timeout",
                                          f"over {args.timeout} s")
                    tally.timeouts.append((f"over {args.timeout} s", saved))
                    tally.cases += 1
                    c.kill()
                else:
                    c.proc.wait()
                    rc = c.proc.returncode
                    if c.started:
                        detail = (f"signal {signal.Signals(-rc).name}" if rc < 0
                                  else f"exit status {rc}")
                        saved = _save_running(args, loader, c, "crash", detail)
                        tally.crashes.append((detail, saved))
                        tally.cases += 1
                    elif rc != 0 or now - c.ready_at < 5:
                        if now - c.ready_at < 5 and tally.cases == 0:
                            c.kill()
                            raise SystemExit(f"worker {k} exited at start (status {rc}); "
                                             f"see {c.log.name}")
                    c.kill()
                generation += 1
                tally.restarts += 1
                children[k] = Child(args, loader, k, generation)
            if now - last_print > 30:
                last_print = now
                rate = tally.cases / (now - t0)
                print(f"[{loader}] {tally.cases}/{args.cases} cases, {rate:.1f}/s, "
                      f"{dict(sorted(tally.counts.items()))}", file=sys.stderr, flush=True)
    finally:
        for c in children:
            c.kill()
    elapsed = time.time() - t0
    summary = tally.as_json()
    summary.update(seconds=elapsed, rate=tally.cases / elapsed, seed=args.seed,
                   workers=args.workers, engine=args.engine)
    with open(os.path.join(args.out, f"summary-{loader}.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(tally.table())
    print(f"  {elapsed:.0f} s, {tally.cases / elapsed:.1f} cases/s, engine {args.engine}, "
          f"seed {args.seed}, {args.workers} workers")
    return tally


def replay(path, limit_mb):
    """Run one saved case here and print its outcome and traceback."""
    import resource
    if limit_mb:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    loader = "onnx" if path.endswith(".onnx") else "native"
    with open(path, "rb") as f:
        data = f.read()
    import engine
    engine.set_num_threads(1)
    outcome, exc, phase = execute(loader, data, path, load_kwargs())
    print(f"{loader}: {outcome} during {phase}")
    if exc is not None:
        traceback.print_exception(exc)
    return outcome


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loader", choices=["native", "onnx", "both"], default="both")
    p.add_argument("--cases", type=int, default=100_000, help="per loader")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    p.add_argument("--mem-limit-mb", type=int, default=3072, help="RLIMIT_AS of a worker")
    p.add_argument("--rss-budget-mb", type=int, default=1024,
                   help="a case after which the worker's peak RSS is above this is reported")
    p.add_argument("--out", default="/tmp/fuzz-findings")
    p.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    p.add_argument("--replay", metavar="CASE", help="run one saved case in this process")
    p.add_argument("--worker", choices=["native", "onnx"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.replay:
        replay(args.replay, args.mem_limit_mb)
        return 0
    if args.engine == "auto":
        try:
            import atheris  # noqa: F401
            args.engine = "atheris"
        except ImportError:
            args.engine = "random"
    if args.worker:
        worker_main(args)
        return 0
    loaders = ["native", "onnx"] if args.loader == "both" else [args.loader]
    tallies = [run_loader(args, loader) for loader in loaders]
    bad = sum(len(t.crashes) + len(t.timeouts) + len(t.over_budget) +
              sum(n for o, n in t.counts.items() if o not in ("success", "ModelError",
                                                              "ValueError"))
              for t in tallies)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
