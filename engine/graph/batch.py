"""Whether a graph computes each image of a batch from that image alone, so that a batch may
run as chunks of images (engine/dispatch/batch.py says when it pays), and the running of the
chunks (``run_chunks``; engine/graph/runner.py makes their plans).

The proof walks the graph with two shape inferences, for the whole batch (n images) and for a
chunk (c != n images), and gives every tensor a kind:

- "batched": axis 0 indexes the images, and row i depends on image i only; its shapes in the
  two inferences are (n, *rest) and (c, *rest);
- "free": independent of the images (a constant, or a shape computation giving the same value
  for both batch sizes);
- "sized": a shape computation whose value depends on the batch size (Shape of a batched
  tensor). It may only feed shape computations and the shape inputs of Reshape, Expand,
  Resize and the like, whose outputs are then checked by their shapes.

A node reading a batched tensor must be one whose ONNX semantics keep images apart given its
attributes (RULES below): elementwise ops whose other operands broadcast along axis 0,
convolutions, pools, normalizations over axes other than 0, products by constant weights,
Concat, Softmax or a reduction along another axis, reshapes that keep axis 0. Anything else
(an unknown op, Concat along axis 0, MaxPool's whole-tensor indices, a reduction over the
batch) means the batch runs whole, as before. Every graph input must be batched and so must
every output.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# ops whose output has its one batched input's shape and is computed elementwise
UNARY = frozenset({
    "Abs", "Cast", "Ceil", "Celu", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Identity", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu",
    "Round", "Selu", "SiLU", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Tanh",
    "ThresholdedRelu", "Clip"})
# broadcasting elementwise ops: any operand may be batched (of the output's rank)
ELEMENTWISE = frozenset({
    "Add", "And", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max",
    "Mean", "Min", "Mul", "Or", "PRelu", "Pow", "Sub", "Sum", "Where", "Xor"})
# ops computing each image from its own rows: the input positions that may be batched (the
# others hold weights or parameters, which must be free)
PER_IMAGE = {
    "Conv": (0, 3), "ConvTranspose": (0,), "DeformConv": (0, 2, 4), "BatchNormalization": (0,),
    "InstanceNormalization": (0,), "GroupNormalization": (0,), "LRN": (0,),
    "SqueezeExcite": (0,), "MaxPool": (0,), "AveragePool": (0,), "LpPool": (0,),
    "GlobalAveragePool": (0,), "GlobalMaxPool": (0,), "GlobalLpPool": (0,),
    "SpaceToDepth": (0,), "DepthToSpace": (0,), "GridSample": (0, 1),
    "LayerNormalization": (0,), "Softmax": (0,), "LogSoftmax": (0,), "Flatten": (0,),
    "Transpose": (0,), "Concat": None, "Split": (0,), "Reshape": (0,), "Expand": (0,),
    "Resize": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Slice": (0,), "Pad": (0,),
    "Tile": (0,), "Gemm": (0,), "MatMul": (0, 1), "MatMulBias": (0,), "Gather": (0, 1),
    "ReduceL1": (0,), "ReduceL2": (0,), "ReduceLogSum": (0,), "ReduceLogSumExp": (0,),
    "ReduceMax": (0,), "ReduceMean": (0,), "ReduceMin": (0,), "ReduceProd": (0,),
    "ReduceSum": (0,), "ReduceSumSquare": (0,), "ArgMax": (0,), "ArgMin": (0,),
    "CumSum": (0,), "Shape": (0,), "Size": (0,),
}
# ops that may read a sized value (as a shape, sizes, starts or ends), their outputs' shapes
# then checked
SHAPE_READERS = frozenset({"Reshape", "Expand", "Resize", "Slice", "Pad", "Tile", "Squeeze",
                           "Unsqueeze", "Split"})
# ops that compute shapes from shapes
SHAPE_OPS = frozenset({
    "Shape", "Size", "Gather", "Concat", "Slice", "Squeeze", "Unsqueeze", "Cast", "Add", "Sub",
    "Mul", "Div", "Reshape", "Identity", "ConstantOfShape", "Range", "Equal", "Where", "Max",
    "Min", "ReduceProd", "Expand", "Tile", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Greater",
    "Less", "Not"})
REDUCTIONS = frozenset(k for k in PER_IMAGE if k.startswith("Reduce"))


def _axis(value, rank) -> int:
    return int(value) + rank if int(value) < 0 else int(value)


class _Walk:
    def __init__(self, graph, infos, values, n, c):
        self.graph, self.infos, self.values, self.n, self.c = graph, infos, values, n, c
        self.kind = {}

    def value(self, name, which=0):
        return self.values[which](name)

    def shape(self, name, which=0):
        return self.infos[which][name].shape

    def axes_of(self, node, k, rank):
        """The axes an input (or, for older forms, the attribute ``axes``) names, resolved;
        None when absent, False when not known while planning."""
        if len(node.inputs) > k and node.inputs[k]:
            v = self.value(node.inputs[k])
            if v is None or self.kind.get(node.inputs[k]) != "free":
                return False
            return {_axis(a, rank) for a in np.asarray(v).ravel()}
        if "axes" in node.attrs:
            return {_axis(a, rank) for a in node.attrs["axes"]}
        return None

    def mixes(self, node) -> str | None:
        """Why the node mixes images (None: it keeps them apart), given its input kinds."""
        op, attrs = node.op, node.attrs
        ins = [(k, name) for k, name in enumerate(node.inputs) if name]
        batched = [k for k, name in ins if self.kind[name] == "batched"]
        sized = [k for k, name in ins if self.kind[name] == "sized"]
        rank = len(self.shape(node.outputs[0]))
        if op in UNARY or op in ELEMENTWISE:
            if sized:
                return "reads a value that depends on the batch size"
            for k, name in ins:
                sh = self.shape(name)
                if self.kind[name] == "batched" and len(sh) != rank:
                    return f"broadcasts input {k} against a higher rank"
                if self.kind[name] == "free" and len(sh) == rank and sh[0] != 1:
                    return f"input {k} has its own axis 0 of {sh[0]}"
            return None
        if op not in PER_IMAGE:
            return f"{op} is not known to keep images apart"
        allowed = PER_IMAGE[op]
        if allowed is not None and any(k not in allowed for k in batched):
            return "reads a computed tensor as a weight"
        if sized and op not in SHAPE_READERS:
            return "reads a value that depends on the batch size"
        x_rank = len(self.shape(node.inputs[0]))
        free = {k: self.shape(name) for k, name in ins if self.kind[name] == "free"}
        axis_default = {"Softmax": -1, "LogSoftmax": -1, "LayerNormalization": -1,
                        "Flatten": 1, "Concat": 0, "Split": 0, "ArgMax": 0, "ArgMin": 0,
                        "Gather": 0}
        axis = _axis(attrs.get("axis", axis_default.get(op, 1)), x_rank)
        if op in ("Softmax", "LogSoftmax", "Concat", "Split", "ArgMax", "ArgMin",
                  "LayerNormalization", "Flatten") and axis == 0:
            return f"{op} along axis 0"
        if op == "Concat" and len(batched) != len(ins):
            return "concatenates a tensor computed without the images"
        if op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
            return "MaxPool's indices count across the batch"
        if op == "Transpose" and list(attrs.get("perm", range(x_rank - 1, -1, -1)))[0] != 0:
            return "Transpose moves axis 0"
        if op in REDUCTIONS or op == "CumSum":
            axes = self.axes_of(node, 1, x_rank)
            if axes is None and (op == "CumSum" or attrs.get("noop_with_empty_axes", 0) != 1):
                return "reduces over every axis"
            if axes is False or (axes and 0 in axes):
                return "reduces over the batch"
        if op in ("Squeeze", "Unsqueeze", "Slice"):
            axes = self.axes_of(node, 3 if op == "Slice" else 1,
                                rank if op == "Unsqueeze" else x_rank)
            if not axes or 0 in axes:
                return f"{op} may act on axis 0"
        if op in ("Pad", "Tile"):
            v = self.value(node.inputs[1]) if self.kind[node.inputs[1]] == "free" else None
            v = None if v is None else np.asarray(v).ravel()
            if v is None or (op == "Pad" and (v[0] != 0 or v[len(v) // 2] != 0
                                             or len(node.inputs) > 3 and node.inputs[3])) \
                    or (op == "Tile" and v[0] != 1):
                return f"{op} not known to leave axis 0 alone"
        if op == "Resize" and attrs.get("coordinate_transformation_mode") == \
                "tf_crop_and_resize":
            return "crops with a region of interest"
        if op == "Gemm" and (attrs.get("transA", 0) or 0 not in batched
                             or 2 in free and len(free[2]) == 2 and free[2][0] != 1):
            return "Gemm with A transposed, A not the images, or C with rows"
        if op in ("MatMul", "MatMulBias"):
            if 0 not in batched or x_rank != rank:
                return "the images are not the product's rows"
            if 1 in batched and rank < 3:
                return "multiplies by a computed matrix"
            if 1 in free and len(free[1]) == rank >= 3 and free[1][0] != 1:
                return "the weights have their own axis 0"
        if op == "Gather" and ((0 in batched) == (1 in batched) or 0 in batched and axis == 0
                               or 1 in batched and axis != 0):
            return "Gather across the batch"
        return None

    def check_batched(self, name) -> str | None:
        (a, b), (n, c) = (self.shape(name, 0), self.shape(name, 1)), (self.n, self.c)
        if len(a) < 1 or a[0] != n or b[0] != c or a[1:] != b[1:]:
            return f"{name!r} has shapes {a} and {b} for {n} and {c} images"
        return None

    def run(self) -> str | None:
        g = self.graph
        for spec in g.inputs:
            self.kind[spec.name] = "batched"
            why = self.check_batched(spec.name)
            if why:
                return f"input {why}"
        for name in g.constants:
            self.kind[name] = "free"
        for node in g.nodes:
            kinds = {self.kind[name] for name in node.inputs if name}
            if "batched" in kinds:
                why = self.mixes(node)
                if why is not None:
                    return f"node {node.name!r} ({node.op}): {why}"
                if node.op not in ("Shape", "Size"):
                    for out in (o for o in node.outputs if o):
                        self.kind[out] = "batched"
                        why = self.check_batched(out)
                        if why is not None:
                            return f"node {node.name!r} ({node.op}): {why}"
                    continue
            elif "sized" in kinds and node.op not in SHAPE_OPS:
                return (f"node {node.name!r} ({node.op}): reads a value that depends on the "
                        f"batch size")
            for out in (o for o in node.outputs if o):      # computed without the images
                a, b = self.value(out, 0), self.value(out, 1)
                same = (a is not None and b is not None and np.shape(a) == np.shape(b)
                        and np.array_equal(a, b))
                self.kind[out] = "free" if same else "sized"
        for spec in g.outputs:
            if self.kind.get(spec.name) != "batched":
                return f"output {spec.name!r} is not computed per image"
        return None


def images_apart(graph, infos, values, n: int, c: int) -> str | None:
    """None when ``graph`` computes each image from that image alone, else why not (the first
    node found mixing them). infos: ({tensor: Info} for n images, the same for c), values:
    (name -> value or None) for each, the values known while planning."""
    if n == c:
        raise ValueError(f"the two inferences must be for different batch sizes, got {n}")
    return _Walk(graph, infos, values, n, c).run()


def graph_flops(graph, ops, infos) -> float:
    """The graph's FLOPs for these shapes (the ops' own counts; an op that cannot count for
    them counts nothing)."""
    total = 0.0
    for node in graph.nodes:
        ins = [infos.get(n) if n else None for n in node.inputs]
        outs = [infos.get(n) for n in node.outputs if n]
        try:
            total += float(ops[node.name].flops(ins, outs))
        except Exception:
            pass
    return total


_CHUNK_POOLS: dict = {}
_CHUNK_POOLS_LOCK = threading.Lock()


def chunk_pool(workers: int) -> ThreadPoolExecutor:
    """The process's threads for running chunks, kept between runs (threads made per run
    started on the caller's core: MobileNetV2 at batch 8, two threads, took 35 ms instead of
    28, A/B of the two in one process), made anew in a forked child, which has none of its
    parent's threads."""
    key = (os.getpid(), workers)
    pool = _CHUNK_POOLS.get(key)
    if pool is None:
        with _CHUNK_POOLS_LOCK:
            pool = _CHUNK_POOLS.get(key)
            if pool is None:
                pool = _CHUNK_POOLS[key] = ThreadPoolExecutor(
                    workers, thread_name_prefix="convengine-chunk")
    return pool


def run_chunks(plans: dict, per: int, arrays: list, threads: int, profile: bool,
               max_memory: int):
    """The batch ``arrays`` as chunks of ``per`` images, run by ``plans`` ({images: plan}),
    each chunk on one of up to ``threads`` threads (its kernels on the rest), outputs written
    into the batch's; as many chunks at once as the memory budget holds (the same plans, so
    the same values); None when even one at a time does not fit it."""
    n = arrays[0].shape[0]
    bounds = [(lo, min(lo + per, n)) for lo in range(0, n, per)]
    plan = plans[per]
    outputs = {name: ((n,) + info.shape[1:], info.dtype)
               for name, info in zip(plan.outputs, plan.output_infos)}
    whole = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in outputs.values())
    parts = plan.budget_parts()
    workers = min(threads, len(bounds))
    while workers > 1 and (plan.planned_bytes + whole + (workers - 1) * (
            parts["arena"] + parts["per_run"]) > max_memory):
        workers -= 1
    if plan.planned_bytes + whole > max_memory:
        return None
    inner = max(1, threads // workers)
    result = {name: np.empty(shape, dtype) for name, (shape, dtype) in outputs.items()}

    def run(k):
        lo, hi = bounds[k]
        for name, value in plans[hi - lo].run([x[lo:hi] for x in arrays], inner,
                                              profile).items():
            result[name][lo:hi] = value
    if workers == 1:
        for k in range(len(bounds)):
            run(k)
    else:
        list(chunk_pool(workers).map(run, range(len(bounds))))
    return result
