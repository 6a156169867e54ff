"""The reductions (engine/graph/ops/reduce.py): Reduce*, ArgMax/ArgMin and TopK, through
ONNX models loaded with engine.load.

Every case is checked per element against a float64 NumPy reference written here, and sweeps
of each operator also against onnx.reference.ReferenceEvaluator and ONNX Runtime.

Error model: float32 results against the float64 reference within rtol 2e-6 (sums are pairwise
or accumulate in float64: a few ulps of the result), plus an atol of 1e-6 times the sum of |x|
where terms cancel; the log-sums and L2 within 1e-5 (an exp, log or sqrt in float32 after the
sum). Max, min, the arg reductions and TopK are exact.
"""
import itertools
import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import engine  # noqa: E402
from engine.graph.ir import Node  # noqa: E402
from engine.graph.ops import OPS, Info  # noqa: E402

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
# the opset where axes became an input, and one before it (axes an attribute)
INPUT_OPSET = {op: 18 for op in REDUCE_OPS} | {"ReduceSum": 13}
ATTR_OPSET = {op: 13 for op in REDUCE_OPS} | {"ReduceSum": 11}


# ============================================================================ helpers

def make_model(op, x, opset, attrs=None, consts=(), outputs=(None,), graph_inputs=()):
    """A one-node model reading graph input "x" (of x's dtype and shape), then the constant
    inputs ``consts`` [(name, value or None for an absent input)] and graph inputs
    ``graph_inputs`` [(name, array)]; outputs y0.. of the given ONNX element types (None: x's)."""
    xt = helper.np_dtype_to_tensor_dtype(x.dtype)
    inputs = [helper.make_tensor_value_info("x", xt, x.shape)]
    inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                             v.shape) for n, v in graph_inputs]
    names = ["x"] + [n if v is not None else "" for n, v in consts] + [n for n, _ in
                                                                         graph_inputs]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in consts if v is not None]
    outs = [f"y{k}" for k in range(len(outputs))]
    attrs = dict(attrs or {})
    empty = [k for k, v in attrs.items() if isinstance(v, list) and not v]
    node = helper.make_node(op, names, outs, name="node",
                            **{k: v for k, v in attrs.items() if k not in empty})
    node.attribute.extend(helper.make_attribute(k, [], attr_type=onnx.AttributeProto.INTS)
                          for k in empty)
    graph = helper.make_graph([node], "g", inputs, [
        helper.make_tensor_value_info(n, xt if t is None else t, None)
        for n, t in zip(outs, outputs)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_engine(model, x, **feeds):
    m = engine.load(model)
    out = m.run({"x": x, **feeds})
    return [out[f"y{k}"] for k in range(len(out))]


def run_reference(model, x):
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, {"x": x})


def run_ort(model, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def reduce_model(op, x, axes, keepdims=None, noop=None, form="input"):
    """``op`` over ``axes`` (None: absent), the axes as input 1 (form "input", the newer
    opset) or as an attribute ("attr", the older one)."""
    attrs = {}
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    consts = ()
    if form == "attr":
        if axes is not None:
            attrs["axes"] = list(axes)
        return make_model(op, x, ATTR_OPSET[op], attrs)
    if axes is not None:
        consts = [("axes", np.array(axes, np.int64))]
    return make_model(op, x, INPUT_OPSET[op], attrs, consts)


def reference_reduce(op, x, axes, keepdims=True, noop=False):
    """ONNX's definition in float64: ``axes`` None or empty reduces all axes, or none with
    ``noop`` (the element-wise steps still run)."""
    x = np.asarray(x, np.float64)
    if not axes:
        axes = () if noop else tuple(range(x.ndim))
    axes = tuple(sorted(a % x.ndim for a in axes))
    kw = dict(axis=axes, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "ReduceSum":
            r = x.sum(**kw)
        elif op == "ReduceMean":
            n = math.prod(x.shape[a] for a in axes)
            r = x.sum(**kw) / n
        elif op == "ReduceMax":
            r = x.max(**kw, initial=-np.inf)
        elif op == "ReduceMin":
            r = x.min(**kw, initial=np.inf)
        elif op == "ReduceProd":
            r = x.prod(**kw)
        elif op == "ReduceL1":
            r = np.abs(x).sum(**kw)
        elif op == "ReduceL2":
            r = np.sqrt((x * x).sum(**kw))
        elif op == "ReduceSumSquare":
            r = (x * x).sum(**kw)
        elif op == "ReduceLogSum":
            r = np.log(x.sum(**kw))
        elif op == "ReduceLogSumExp":
            s = x.max(**kw, initial=-np.inf)
            s = np.where(np.isfinite(s), s, 0)
            r = np.log(np.exp(x - s).sum(**kw)) + s
    if not keepdims:
        r = r.reshape([d for k, d in enumerate(r.shape) if k not in axes])
    return r


def data_for(op, shape, rng):
    """Float32 data in the operator's domain: positive sums for ReduceLogSum, factors near 1
    for ReduceProd."""
    if op == "ReduceLogSum":
        return rng.uniform(0.1, 2.0, shape).astype(np.float32)
    if op == "ReduceProd":
        return rng.uniform(0.6, 1.5, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def check_reduce(op, got, x, axes, keepdims=True, noop=False):
    want = reference_reduce(op, x, axes, keepdims, noop)
    assert got.dtype == x.dtype, (got.dtype, x.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if op in ("ReduceMax", "ReduceMin"):
        np.testing.assert_array_equal(got, want)
        return
    rtol = 1e-5 if op in ("ReduceLogSum", "ReduceLogSumExp", "ReduceL2") else 2e-6
    scale = reference_reduce("ReduceL1", x, axes, keepdims, noop) if x.size else 0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6 * np.max(scale, initial=1.0))


# ============================================================================ Reduce*, sweeps

AXES = [None, [], [0], [-1], [1], [1, 3], [0, 2], [-3, -1], [0, 1, 2, 3], [3, 0]]


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_sweep(op, rng):
    """Every axes set on a 4-D tensor, keepdims 0 and 1, noop_with_empty_axes 0 and 1, both
    opset forms; the same data through every form."""
    x = data_for(op, (2, 3, 4, 5), rng)
    ran = 0
    for axes, keepdims, noop, form in itertools.product(AXES, (0, 1, None), (0, 1),
                                                        ("input", "attr")):
        if form == "attr" and noop:
            continue       # noop_with_empty_axes came with the axes input
        model = reduce_model(op, x, axes, keepdims, noop if form == "input" else None, form)
        got, = run_engine(model, x)
        check_reduce(op, got, x, axes, keepdims != 0, bool(noop))
        ran += 1
    assert ran >= 80


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("shape", [(7,), (3, 1, 6), (1, 4, 1, 1, 5), ()])
def test_reduce_shapes(op, shape, rng):
    """Size-1 axes, 1-D and rank-0 inputs: every subset of the axes."""
    x = data_for(op, shape, rng)
    subsets = [list(c) for r in range(len(shape) + 1)
               for c in itertools.combinations(range(len(shape)), r)]
    for axes, keepdims in itertools.product(subsets, (0, 1)):
        got, = run_engine(reduce_model(op, x, axes, keepdims), x)
        check_reduce(op, got, x, axes, bool(keepdims))


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_matches_reference_and_onnxruntime(op, rng):
    """The engine, ONNX's reference evaluator and ONNX Runtime on the same models."""
    x = data_for(op, (3, 4, 5), rng)
    for axes, keepdims in itertools.product([None, [1], [0, 2], [-1], [0, 1, 2]], (0, 1)):
        model = reduce_model(op, x, axes, keepdims)
        got, = run_engine(model, x)
        for other in (run_reference(model, x)[0], run_ort(model, x)[0]):
            assert got.shape == other.shape and got.dtype == other.dtype
            np.testing.assert_allclose(got, other, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_noop_with_empty_axes(op, rng):
    """Empty or absent axes with noop_with_empty_axes=1: no reduction, the element-wise steps
    still run (ReduceL1 |x|, ReduceSumSquare x², ReduceLogSum log x), as ONNX Runtime does."""
    x = data_for(op, (2, 3), rng)
    if op != "ReduceLogSum":
        x[0, 0] = -abs(x[0, 0])
    for axes in (None, []):
        model = reduce_model(op, x, axes, keepdims=0, noop=1)
        got, = run_engine(model, x)
        check_reduce(op, got, x, axes, noop=True)
        assert got.shape == x.shape
        np.testing.assert_allclose(got, run_ort(model, x)[0], rtol=1e-6)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_empty_set(op):
    """A reduction over no elements gives ONNX's identity; an empty output stays empty."""
    x = np.zeros((2, 0, 3), np.float32)
    want = {"ReduceSum": 0, "ReduceMean": np.nan, "ReduceMax": -np.inf, "ReduceMin": np.inf,
            "ReduceProd": 1, "ReduceL1": 0, "ReduceL2": 0, "ReduceSumSquare": 0,
            "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf}[op]
    got, = run_engine(reduce_model(op, x, [1], keepdims=1), x)
    assert got.shape == (2, 1, 3)
    np.testing.assert_array_equal(got, np.full((2, 1, 3), want, np.float32))
    got, = run_engine(reduce_model(op, x, [1], keepdims=0), x)
    np.testing.assert_array_equal(got, np.full((2, 3), want, np.float32))
    got, = run_engine(reduce_model(op, x, [0, 2], keepdims=1), x)
    assert got.shape == (1, 0, 1)
    got, = run_engine(reduce_model(op, x, None, keepdims=0), x)
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_reduce_empty_set_matches_onnxruntime():
    x = np.zeros((2, 0), np.float32)
    for op in REDUCE_OPS:
        if op == "ReduceMean":
            continue       # undefined by ONNX: the engine gives NaN, ONNX Runtime 0
        model = reduce_model(op, x, [1])
        np.testing.assert_array_equal(run_engine(model, x)[0], run_ort(model, x)[0])


# ============================================================================ accuracy, hot path

@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceL2", "ReduceSumSquare"])
@pytest.mark.parametrize("shape,axes", [((3, 20000), [1]), ((20000, 3), [0]),
                                        ((40, 3, 500), [0, 2]), ((200, 7, 50), [0]),
                                        ((5, 40000), None)])
def test_float32_sums_are_accurate(op, shape, axes, rng):
    """Long sums of same-sign terms (the worst case for a running float32 sum) within a few
    ulps of the float64 value, along the contiguous axis and across it."""
    x = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    got, = run_engine(reduce_model(op, x, axes, keepdims=0), x)
    want = reference_reduce(op, x, axes, keepdims=False)
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=0)


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[2, 3], [-2, -1], [3, 2]])
@pytest.mark.parametrize("shape", [(2, 64, 14, 14), (1, 1, 7, 7), (3, 5, 1, 9), (2, 3, 0, 4)])
def test_global_spatial_mean(shape, axes, keepdims, threads, rng):
    """``x.mean((2, 3))`` as PyTorch exports it (ReduceMean opset 13, axes attribute) and in
    opset 18's form, 1 and 2 threads."""
    x = rng.standard_normal(shape).astype(np.float32)
    for form in ("attr", "input"):
        got, = run_engine(reduce_model("ReduceMean", x, axes, keepdims, form=form), x)
        want = reference_reduce("ReduceMean", x, axes, bool(keepdims))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_non_finite_values():
    """inf and NaN: a NaN wins max and min (as in NumPy and ONNX's reference; ONNX Runtime
    skips it), the log-sum-exp of -inf terms is -inf and of a +inf term +inf (as in ONNX
    Runtime; the reference gives NaN for all -inf)."""
    x = np.array([[1, np.nan, 3], [-np.inf, -np.inf, -np.inf], [np.inf, 0, 1],
                  [-np.inf, 2, 5], [np.inf, -np.inf, 0]], np.float32)
    for op in REDUCE_OPS:
        model = reduce_model(op, x, [1], keepdims=0)
        got, = run_engine(model, x)
        with np.errstate(invalid="ignore"):
            want = reference_reduce(op, x, [1], keepdims=False).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        if op == "ReduceLogSumExp":
            np.testing.assert_array_equal(got, run_ort(model, x)[0])


# ============================================================================ other dtypes

@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                "ReduceProd", "ReduceL1", "ReduceSumSquare"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_reductions(op, dtype, rng):
    """Integer inputs (shape computations): exact, in the input's dtype; the mean truncates
    toward zero, as ONNX Runtime's integer division."""
    # ReduceProd's factors small enough for 24 of them to stay in int32's range
    top = 3 if op == "ReduceProd" else 10
    x = rng.integers(1 - top, top, (3, 4, 2)).astype(dtype)
    for axes, keepdims in itertools.product([None, [1], [0, 2], [-1]], (0, 1)):
        model = reduce_model(op, x, axes, keepdims)
        got, = run_engine(model, x)
        want, = run_ort(model, x)
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_bool_max_min(op, rng):
    x = rng.random((3, 4)) < 0.3
    for axes in ([0], [1], None):
        model = reduce_model(op, x, axes, keepdims=0)
        got, = run_engine(model, x)
        np.testing.assert_array_equal(got, (x.any if op == "ReduceMax" else x.all)(
            axis=None if axes is None else tuple(axes)))
    empty = np.zeros((2, 0), bool)
    got, = run_engine(reduce_model(op, empty, [1]), empty)
    np.testing.assert_array_equal(got, [[op == "ReduceMin"]] * 2)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_float64_input(op, rng):
    x = data_for(op, (3, 4), rng).astype(np.float64)
    got, = run_engine(reduce_model(op, x, [1]), x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference_reduce(op, x, [1]), rtol=1e-12)


def test_folded_when_constant():
    """ReduceProd of Shape(x) (a tensor's element count) is known when planning: infer gives
    its value; so do the other reductions of a constant."""
    node = Node("ReduceProd", "p", ["s"], ["n"], {"keepdims": 0})
    op = OPS["ReduceProd"](node, {})
    shape = np.array([2, 3, 5], np.int64)
    info, = op.infer([Info.of(shape)])
    assert info.value is not None and info.value.dtype == np.int64 and int(info.value) == 30
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for kind in REDUCE_OPS:
        op = OPS[kind](Node(kind, "r", ["x"], ["y"], {"axes": [1], "keepdims": 0}), {})
        info, = op.infer([Info.of(x)])
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(info.value, reference_reduce(kind, x, [1], False),
                                       rtol=1e-6)
    op = OPS["ArgMax"](Node("ArgMax", "a", ["x"], ["y"], {"axis": 1}), {})
    np.testing.assert_array_equal(op.infer([Info.of(x)])[0].value, [[3], [3], [3]])
    op = OPS["TopK"](Node("TopK", "t", ["x", "k"], ["v", "i"], {}), {})
    v, i = op.infer([Info.of(x), Info.of(np.array([2], np.int64))])
    np.testing.assert_array_equal(v.value, x[:, [3, 2]])
    np.testing.assert_array_equal(i.value, [[3, 2]] * 3)


def test_shape_folding_in_a_model():
    """Shape -> ReduceProd -> Reshape: the count folds while planning, so the Reshape's shape
    is known."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ReduceProd", ["s"], ["n"], keepdims=1),
             helper.make_node("Reshape", ["x", "n"], ["y0"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, x.shape)], [helper.make_tensor_value_info(
            "y0", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    got, = run_engine(model, x)
    np.testing.assert_array_equal(got, x.reshape(-1))


def test_describe():
    x = np.zeros((1, 8, 4, 4), np.float32)
    m = engine.load(reduce_model("ReduceMean", x, [2, 3], keepdims=1, form="attr"))
    m.run({"x": x})
    assert "axes=[2, 3] keepdims=1" in m.explain()


# ============================================================================ ArgMax, ArgMin

def reference_arg(op, x, axis, keepdims, last):
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    n = x.shape[-1]
    best = (x.max if op == "ArgMax" else x.min)(axis=-1, keepdims=True)
    hits = np.where(x == best, np.arange(n), -1 if last else n)
    r = hits.max(-1) if last else hits.min(-1)
    return np.expand_dims(r, axis) if keepdims else r


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_arg_sweep(op, dtype, rng):
    """Few distinct values, so ties are everywhere: the first index, or the last with
    select_last_index; against the reference here and ONNX Runtime."""
    x = rng.integers(0, 3, (3, 4, 5)).astype(dtype)
    ran = 0
    for axis, keepdims, last in itertools.product([0, 1, 2, -1, -3, None], (0, 1, None),
                                                  (0, 1, None)):
        attrs = {k: v for k, v in (("axis", axis), ("keepdims", keepdims),
                                   ("select_last_index", last)) if v is not None}
        model = make_model(op, x, 13, attrs, outputs=[TensorProto.INT64])
        got, = run_engine(model, x)
        want = reference_arg(op, x, axis or 0, keepdims != 0, bool(last))
        assert got.dtype == np.int64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if axis in (1, -1):
            np.testing.assert_array_equal(got, run_ort(model, x)[0])
        ran += 1
    assert ran == 54


def test_arg_opset11_form(rng):
    """Opsets 1-11 have no select_last_index."""
    x = rng.standard_normal((4, 6)).astype(np.float32)
    got, = run_engine(make_model("ArgMin", x, 11, {"axis": 1, "keepdims": 0},
                                 outputs=[TensorProto.INT64]), x)
    np.testing.assert_array_equal(got, x.argmin(1))


# ============================================================================ TopK

def reference_topk(x, k, axis, largest):
    """Values and indices, sorted, the lower index first among equal values."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    n = x.shape[-1]
    vals = np.empty(x.shape[:-1] + (k,), x.dtype)
    idx = np.empty(x.shape[:-1] + (k,), np.int64)
    for pos in np.ndindex(x.shape[:-1]):
        row = [float(v) for v in x[pos]]
        order = sorted(range(n), key=lambda j: ((-row[j] if largest else row[j]), j))[:k]
        idx[pos] = order
        vals[pos] = x[pos][order]
    return np.moveaxis(vals, -1, axis), np.moveaxis(idx, -1, axis)


def topk_model(x, k, opset=11, **attrs):
    outs = [None, TensorProto.INT64]
    if opset < 10:    # k an attribute
        return make_model("TopK", x, opset, dict(attrs, k=k), outputs=outs)
    return make_model("TopK", x, opset, attrs, [("k", np.array([k], np.int64))], outs)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_topk_sweep(dtype, rng):
    """largest and smallest, sorted or not, k from 0 to the whole axis, every axis, many ties."""
    x = rng.integers(-3, 4, (3, 5, 4)).astype(dtype)
    ran = 0
    for axis, largest, sort in itertools.product([0, 1, 2, -1, -2, None], (0, 1, None),
                                                 (0, 1, None)):
        ax = -1 if axis is None else axis
        for k in sorted({0, 1, 3, x.shape[ax]}):
            if k > x.shape[ax]:
                continue
            attrs = {n: v for n, v in (("axis", axis), ("largest", largest),
                                       ("sorted", sort)) if v is not None}
            model = topk_model(x, k, **attrs)
            values, indices = run_engine(model, x)
            want_v, want_i = reference_topk(x, k, ax, largest != 0)
            assert values.dtype == x.dtype and indices.dtype == np.int64
            # sorted=0 leaves the order open; the engine sorts all the same
            np.testing.assert_array_equal(values, want_v)
            np.testing.assert_array_equal(indices, want_i)
            if sort != 0 and dtype == np.float32:
                ort_v, ort_i = run_ort(model, x)
                np.testing.assert_array_equal(values, ort_v)
                np.testing.assert_array_equal(indices, ort_i)
            ran += 1
    assert ran >= 150


def test_topk_distinct_and_reference(rng):
    x = rng.standard_normal((2, 1000)).astype(np.float32)
    model = topk_model(x, 5)
    values, indices = run_engine(model, x)
    ref_v, ref_i = run_reference(model, x)
    np.testing.assert_array_equal(values, ref_v)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(indices, np.argsort(-x, axis=1)[:, :5])


def test_topk_attribute_k(rng):
    """Opsets 1-9 give k as an attribute."""
    x = rng.standard_normal((4, 6)).astype(np.float32)
    values, indices = run_engine(topk_model(x, 2, opset=9), x)
    want_v, want_i = reference_topk(x, 2, -1, True)
    np.testing.assert_array_equal(values, want_v)
    np.testing.assert_array_equal(indices, want_i)


def test_topk_nan_counts_as_largest():
    x = np.array([[1, np.nan, 3, 2]], np.float32)
    model = topk_model(x, 2)
    for got, want in zip(run_engine(model, x), run_ort(model, x)):
        np.testing.assert_array_equal(got, want)


# ============================================================================ malformed nodes

def refused(model, x, match=None, **feeds):
    with pytest.raises(engine.ModelError, match=match):
        run_engine(model, x, **feeds)


def computed_input_model(op, x, opset, outputs=(None,)):
    """``op`` whose input 1 is computed from the values of a large graph input z: not known
    when planning. -> (model, feeds)"""
    model = make_model(op, x, opset, outputs=outputs,
                       graph_inputs=[("a", np.zeros(1, np.int64))])
    graph = model.graph
    z = np.zeros(100, np.float32)
    graph.input[1].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, z.shape))
    graph.node.insert(0, helper.make_node("ArgMax", ["z"], ["a"], axis=0, keepdims=1))
    return model, {"z": z}


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_malformed(op):
    x = np.ones((2, 3, 4), np.float32)
    refused(reduce_model(op, x, [3]), x, "out of range")
    refused(reduce_model(op, x, [-4], form="attr"), x, "out of range")
    refused(reduce_model(op, x, [1, -2]), x, "twice")
    refused(reduce_model(op, x, [0, 0], form="attr"), x, "twice")
    refused(reduce_model(op, x, [1], keepdims=2), x, "keepdims")
    refused(reduce_model(op, x, [1], noop=-1), x, "noop_with_empty_axes")
    # the axes twice: as an attribute and as input 1
    refused(make_model(op, x, 13, {"axes": [1]}, [("axes", np.array([1]))]), x, "both")
    # axes computed from input values
    model, feeds = computed_input_model(op, x, INPUT_OPSET[op])
    refused(model, x, "computable", **feeds)
    refused(make_model(op, x, INPUT_OPSET[op], consts=[("a", np.array([1.0]))]), x,
            "integer")
    refused(make_model(op, x, INPUT_OPSET[op], consts=[("a", np.array([[1]]))]), x, "1-D")
    refused(make_model(op, x, INPUT_OPSET[op], {"bogus": 1}), x, "bogus")


def test_reduce_unsupported_dtypes():
    xi = np.ones((2, 3), np.int64)
    for op in ("ReduceL2", "ReduceLogSum", "ReduceLogSumExp"):
        refused(reduce_model(op, xi, [1]), xi, "dtype int64")
    xb = np.ones((2, 3), bool)
    for op in ("ReduceSum", "ReduceMean", "ReduceProd"):
        refused(reduce_model(op, xb, [1]), xb, "dtype bool")
    empty = np.zeros((2, 0), np.int64)
    refused(reduce_model("ReduceMean", empty, [1]), empty, "empty set")


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg_malformed(op):
    x = np.ones((2, 3), np.float32)
    out = [TensorProto.INT64]
    refused(make_model(op, x, 13, {"axis": 2}, outputs=out), x, "out of range")
    refused(make_model(op, x, 13, {"axis": -3}, outputs=out), x, "out of range")
    refused(make_model(op, x, 13, {"axis": 1, "select_last_index": 2}, outputs=out), x,
            "select_last_index")
    refused(make_model(op, x, 13, {"keepdims": -1}, outputs=out), x, "keepdims")
    empty = np.zeros((2, 0), np.float32)
    refused(make_model(op, empty, 13, {"axis": 1}, outputs=out), empty, "empty")
    xb = np.ones((2, 3), bool)
    refused(make_model(op, xb, 13, {"axis": 1}, outputs=out), xb, "dtype bool")


def test_topk_malformed():
    x = np.ones((2, 5), np.float32)
    refused(topk_model(x, -1), x, "outside 0 to 5")
    refused(topk_model(x, 6), x, "outside 0 to 5")
    refused(topk_model(x, 2, axis=2), x, "out of range")
    refused(topk_model(x, 2, largest=2), x, "largest")
    refused(topk_model(x, 2, sorted=-1), x, "sorted")
    outs = [None, TensorProto.INT64]
    # K computed from input values
    model, feeds = computed_input_model("TopK", x, 11, outs)
    refused(model, x, "computable", **feeds)
    refused(make_model("TopK", x, 11, consts=[("k", np.array([2, 3]))], outputs=outs), x,
            "one integer")
    refused(make_model("TopK", x, 11, consts=[("k", np.array([2.0]))], outputs=outs), x,
            "one integer")
    # no k at all, or both forms
    refused(make_model("TopK", x, 9, outputs=outs), x, "given once")
    refused(make_model("TopK", x, 11, {"k": 2}, [("k", np.array([2]))], outs), x,
            "given once")
    xb = np.ones((2, 5), bool)
    refused(topk_model(xb, 2), xb, "dtype bool")
