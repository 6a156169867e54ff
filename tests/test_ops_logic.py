"""Comparisons, boolean logic and Where (engine/graph/ops/logic.py), through ONNX models
loaded with engine.load (and IR graphs where the memory plan, folding or the opset-6
broadcast is the subject).

All results are exact: every comparison is checked per element against Python's own
comparison of the values as Python numbers (.tolist(), so uint64 and int64 extremes compare
exactly and NaN compares false, unequal to itself), the logic against Python's and/or/xor/not,
Where against picking per element; and each also against ONNX Runtime where it has a kernel
for the type. Bool tensors flow through the memory plan (arena slots one byte an element),
Cast to and from float, graph inputs and outputs.
"""
import operator

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

import engine  # noqa: E402
from engine.graph import Graph, Model, Node, TensorSpec  # noqa: E402

COMPARE = {"Equal": operator.eq, "Less": operator.lt, "Greater": operator.gt,
           "LessOrEqual": operator.le, "GreaterOrEqual": operator.ge}
LOGIC = {"And": lambda a, b: a and b, "Or": lambda a, b: a or b,
         "Xor": lambda a, b: a != b}
OPSET = {"Equal": 19, "Less": 13, "Greater": 13, "LessOrEqual": 16, "GreaterOrEqual": 16,
         "And": 7, "Or": 7, "Xor": 7, "Not": 1, "Where": 16}
NUMBER_TYPES = [np.float32, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8,
                np.uint16, np.uint32, np.uint64]


# ============================================================================ helpers

def onnx_model(op, inputs, attrs=None, opset=None, consts=(), out_dtype=np.bool_):
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in inputs]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in consts]
    names = [n for n, _ in inputs] + [n for n, _ in consts]
    node = helper.make_node(op, names, ["y"], name="node", **(attrs or {}))
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(
        np.dtype(out_dtype)), None)
    graph = helper.make_graph([node], "g", vis, [out], inits)
    # Not exists since opset 1, older than the engine reads: use the newest for it
    version = max(opset or OPSET[op], 13)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])


def run_engine(model, feeds):
    return engine.load(model).run(feeds)["y"]


def run_ort(model, feeds):
    """ONNX Runtime's output, or None where it has no kernel for these types."""
    ort = pytest.importorskip("onnxruntime")
    try:
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:   # onnxruntime's NotImplemented: no kernel for the type
        if "NOT_IMPLEMENTED" in str(e):
            return None
        raise
    return sess.run(None, feeds)[0]


def pairwise(fn, a, b):
    """fn over a and b broadcast, on Python numbers."""
    a, b = np.broadcast_arrays(a, b)
    return np.array([fn(u, v) for u, v in zip(a.ravel().tolist(), b.ravel().tolist())],
                    dtype=object).reshape(a.shape)


def values_of(dtype):
    """The extremes and a few small values of dtype (with NaN, +-inf, +-0 for floats)."""
    if np.dtype(dtype).kind == "f":
        info = np.finfo(dtype)
        v = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, info.max, info.min,
             info.tiny, -info.tiny]
    else:
        info = np.iinfo(dtype)
        v = [info.min, info.max, 0, 1, 2, info.max - 1, info.min + 1]
        if info.min < 0:
            v += [-1, -2]
    return np.array(v, dtype)


def against_ort(got, model, feeds, required=True):
    """Equal to ONNX Runtime's output; ``required``: ONNX Runtime must have the kernel (it
    lacks some comparisons of the small integer types)."""
    expected = run_ort(model, feeds)
    if expected is None:
        assert not required, "ONNX Runtime has no kernel for this case"
        return
    assert expected.dtype == got.dtype
    np.testing.assert_array_equal(got, expected)


# ============================================================================ comparisons

@pytest.mark.parametrize("dtype", NUMBER_TYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", sorted(COMPARE))
def test_comparisons_all_pairs(op, dtype):
    """Every pair of the type's special values, by broadcasting a column against a row."""
    v = values_of(dtype)
    a, b = v.reshape(-1, 1), v.reshape(1, -1)
    feeds = {"a": a, "b": b}
    model = onnx_model(op, list(feeds.items()))
    got = run_engine(model, feeds)
    assert got.dtype == np.bool_ and got.shape == (len(v), len(v))
    np.testing.assert_array_equal(got, pairwise(COMPARE[op], a, b).astype(bool))
    against_ort(got, model, feeds, required=dtype in (np.float32, np.int64, np.int32))


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_comparisons_broadcast_random(op):
    rng = np.random.default_rng(5)
    for sa, sb in [((2, 3, 4), (4,)), ((3, 1), (2, 1, 5)), ((1,), (2, 2)), ((), (3,)),
                   ((2, 0, 3), (1, 3)), ((), ())]:
        a = np.asarray(rng.integers(-3, 4, sa), np.float32)
        b = np.asarray(rng.integers(-3, 4, sb), np.float32)
        feeds = {"a": a, "b": b}
        model = onnx_model(op, list(feeds.items()))
        got = run_engine(model, feeds)
        np.testing.assert_array_equal(got, pairwise(COMPARE[op], a, b).astype(bool))
        against_ort(got, model, feeds)


def test_equal_on_bool():
    a = np.array([[True], [False]])
    b = np.array([True, False, True])
    model = onnx_model("Equal", [("a", a), ("b", b)])
    got = run_engine(model, {"a": a, "b": b})
    np.testing.assert_array_equal(got, [[True, False, True], [False, True, False]])
    against_ort(got, model, {"a": a, "b": b})


# ============================================================================ logic

@pytest.mark.parametrize("op", sorted(LOGIC))
def test_logic_truth_tables_and_broadcasting(op):
    rng = np.random.default_rng(6)
    for sa, sb in [((2, 2), (2, 2)), ((3, 4, 5), (5,)), ((3, 1, 5), (4, 1)), ((), (2, 3)),
                   ((), ())]:
        a = np.asarray(rng.random(sa) < 0.5)
        b = np.asarray(rng.random(sb) < 0.5)
        if sa == sb == (2, 2):
            a, b = np.array([[True, True], [False, False]]), np.array([[True, False]] * 2)
        feeds = {"a": a, "b": b}
        model = onnx_model(op, list(feeds.items()))
        got = run_engine(model, feeds)
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, pairwise(LOGIC[op], a, b).astype(bool))
        against_ort(got, model, feeds)


def test_not():
    rng = np.random.default_rng(7)
    for shape in [(2, 3, 4), (), (0, 2)]:
        x = np.asarray(rng.random(shape) < 0.5)
        model = onnx_model("Not", [("x", x)])
        got = run_engine(model, {"x": x})
        np.testing.assert_array_equal(got, np.array([not v for v in x.ravel().tolist()],
                                                    bool).reshape(x.shape))
        against_ort(got, model, {"x": x})


# ============================================================================ Where

def where_ref(c, x, y):
    c, x, y = np.broadcast_arrays(c, x, y)
    return np.array([u if k else v for k, u, v in zip(c.ravel().tolist(), x.ravel().tolist(),
                                                      y.ravel().tolist())],
                    dtype=x.dtype).reshape(c.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.uint8, np.float64],
                         ids=lambda d: np.dtype(d).name)
def test_where_three_way_broadcast(dtype):
    rng = np.random.default_rng(8)
    for sc, sx, sy in [((2, 1, 4), (3, 1), (4,)), ((5,), (5,), (5,)), ((3, 1), (), (1, 6)),
                       ((), (2, 3), (2, 1)), ((1, 0), (3, 1), ()), ((), (), ())]:
        c = np.asarray(rng.random(sc) < 0.5)
        x = np.asarray(rng.standard_normal(sx) * 50).astype(dtype)
        y = np.asarray(rng.standard_normal(sy) * 50).astype(dtype)
        if dtype == np.float32 and x.size >= 3:
            x.flat[:3] = [np.nan, np.inf, -0.0]        # carried through as values
        feeds = {"c": c, "p": x, "q": y}
        model = onnx_model("Where", list(feeds.items()), out_dtype=dtype)
        got = run_engine(model, feeds)
        ref = where_ref(c, x, y)
        assert got.dtype == dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        if dtype == np.float32:
            np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))
        against_ort(got, model, feeds, required=dtype != np.bool_)


def test_where_writes_over_y_when_it_dies():
    """Y is copied first, then X written where the condition holds: the plan lets the output
    take Y's buffer, and only Y's."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    c = rng.random((3, 4)) < 0.5
    for order in (["c", "a", "b"], ["c", "b", "a"], ["c", "a", "a"]):
        nodes = [Node("Neg", "na", ["x"], ["a"]), Node("Abs", "nb", ["x"], ["b"]),
                 Node("Where", "w", order, ["w"]), Node("Neg", "out", ["w"], ["y"])]
        model = Model(Graph(nodes, [TensorSpec("x", x.shape, "float32")],
                            [TensorSpec("y", None, "float32")], {"c": c}))
        vals = {"a": -x, "b": np.abs(x), "c": c}
        np.testing.assert_array_equal(model(x), -where_ref(*(vals[k] for k in order)))
        plan = model._last_plan
        assert plan.root["w"] == plan.root[order[2]]


# ============================================================================ bool in the plan

def test_bool_tensors_flow_through_the_plan():
    """Masks as arena tensors, Cast to and from bool, a bool graph input and output: y =
    x * (x < 0 or not (x > -1)) and m = that mask, xor the input flags."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    flags = rng.random((4, 6)) < 0.5
    zero, minus1 = np.array(0, np.float32), np.array(-1, np.float32)
    nodes = [Node("Less", "lt", ["x", "zero"], ["neg"]),
             Node("Greater", "gt", ["x", "minus1"], ["above"]),
             Node("Not", "not", ["above"], ["below"]),
             Node("Or", "or", ["neg", "below"], ["mask"]),
             Node("Cast", "tofloat", ["mask"], ["maskf"], {"to": "float32"}),
             Node("Mul", "mul", ["x", "maskf"], ["y"]),
             Node("Cast", "tobool", ["maskf"], ["back"], {"to": "bool"}),
             Node("Xor", "xor", ["back", "flags"], ["m"])]
    model = Model(Graph(nodes, [TensorSpec("x", x.shape, "float32"),
                                TensorSpec("flags", x.shape, "bool")],
                        [TensorSpec("y", None, "float32"), TensorSpec("m", None, "bool")],
                        {"zero": zero, "minus1": minus1}))
    out = model.run({"x": x, "flags": flags})
    mask = np.array([v < 0 or not v > -1 for v in x.ravel().tolist()]).reshape(x.shape)
    np.testing.assert_array_equal(out["y"], x * mask)
    assert out["m"].dtype == np.bool_
    np.testing.assert_array_equal(out["m"], mask != flags)
    plan = model._last_plan
    assert plan.kind[plan.root["mask"]] == "arena"
    assert model.outputs[1].dtype == "bool"


# ============================================================================ folding

def test_masks_from_shapes_fold_while_planning():
    """What exporters write: a reshape target chosen by comparing the input's batch size (a
    free dimension) with constants. All of it is computed while planning; the Reshape is the
    only step left."""
    c = {"i0": np.array(0, np.int64), "five": np.array(5, np.int64),
         "zero": np.array(0, np.int64), "big": np.array(100, np.int64),
         "flat": np.int64([15, 1])}
    nodes = [Node("Shape", "shape", ["x"], ["s"]),
             Node("Gather", "batch", ["s", "i0"], ["n"]),
             Node("Equal", "eq", ["n", "five"], ["e"]),
             Node("Less", "lt", ["n", "zero"], ["neg"]),
             Node("Not", "not", ["neg"], ["pos"]),
             Node("And", "and", ["e", "pos"], ["both"]),
             Node("LessOrEqual", "le", ["n", "big"], ["small"]),
             Node("And", "and2", ["both", "small"], ["m"]),
             Node("Where", "where", ["m", "flat", "s"], ["t"]),
             Node("Reshape", "reshape", ["x", "t"], ["y"])]
    model = Model(Graph(nodes, [TensorSpec("x", (None, 3), "float32")],
                        [TensorSpec("y", None, "float32")], c))
    for n in (5, 2):
        x = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
        got = model(x)
        assert got.shape == ((15, 1) if n == 5 else (2, 3))
        np.testing.assert_array_equal(got.ravel(), x.ravel())
        plan = model._last_plan
        assert "t" in plan.folded and len(plan.run_fns) <= 1


def test_constant_logic_folds_at_load():
    c = {"a": np.array([1, 5, 3], np.int64), "b": np.array([2, 5, 1], np.int64),
         "p": np.float32([1, 2, 3]), "q": np.float32([-1, -2, -3])}
    nodes = [Node("GreaterOrEqual", "ge", ["a", "b"], ["ge"]),
             Node("Xor", "xor", ["ge", "ge"], ["none"]), Node("Not", "not", ["none"], ["all"]),
             Node("And", "and", ["ge", "all"], ["m"]),
             Node("Where", "where", ["m", "p", "q"], ["w"]),
             Node("Add", "add", ["x", "w"], ["y"])]
    model = Model(Graph(nodes, [TensorSpec("x", (3,), "float32")],
                        [TensorSpec("y", None, "float32")], c))
    assert [n.op for n in model.graph.nodes] == ["Add"]
    np.testing.assert_array_equal(model.graph.constants["w"], [-1, 2, 3])


def test_opset6_broadcast_axis():
    """The IR's opset < 7 form: B lined up with A from ``broadcast_axis`` on."""
    a = np.arange(24, dtype=np.int64).reshape(2, 3, 4) % 5
    b = np.int64([1, 2, 3])
    model = Model(Graph([Node("Equal", "e", ["a", "b"], ["y"], {"broadcast_axis": 1})],
                        [TensorSpec("a", a.shape, "int64")], [TensorSpec("y", None, "bool")],
                        {"b": b}))
    np.testing.assert_array_equal(model(a), a == b.reshape(1, 3, 1))
    m = np.array([True, False, True])
    model = Model(Graph([Node("And", "e", ["p", "m"], ["y"], {"broadcast_axis": -2})],
                        [TensorSpec("p", (2, 3, 1), "bool")], [TensorSpec("y", None, "bool")],
                        {"m": m.reshape(3, 1)}))
    p = np.random.default_rng(11).random((2, 3, 1)) < 0.5
    np.testing.assert_array_equal(model(p), p & m.reshape(1, 3, 1))


# ============================================================================ malformed

def _ir(op, inputs, dtypes, attrs=None, shapes=None, consts=None):
    shapes = shapes or [(2, 3)] * len(inputs)
    specs = [TensorSpec(n, s, d) for n, s, d in zip(inputs, shapes, dtypes)]
    return Graph([Node(op, "bad", list(inputs), ["y"], attrs or {})], specs,
                 [TensorSpec("y", None, "bool")], consts or {})


@pytest.mark.parametrize("op,inputs,dtypes,attrs,shapes,match", [
    ("Equal", ["a", "b"], ["float32", "int64"], None, None, "different dtypes"),
    ("Less", ["a", "b"], ["bool", "bool"], None, None, "a number type, got bool"),
    ("Greater", ["a", "b"], ["float32", "float32"], None, [(2, 3), (4,)], "do not broadcast"),
    ("Equal", ["a"], ["float32"], None, None, "takes 2 inputs"),
    ("LessOrEqual", ["a", "b"], ["int64", "int64"], {"axis": 0}, None, "unknown attribute"),
    ("And", ["a", "b"], ["float32", "float32"], None, None, "bool, got float32"),
    ("Or", ["a", "b"], ["bool", "int64"], None, None, "different dtypes"),
    ("Xor", ["a", "b"], ["bool", "bool"], None, [(2, 3), (2,)], "do not broadcast"),
    ("Not", ["a"], ["float32"], None, None, "must be bool, got float32"),
    ("Not", ["a", "b"], ["bool", "bool"], None, None, "takes 1 inputs"),
    ("Where", ["c", "x", "y0"], ["float32", "float32", "float32"], None, None,
     "condition must be bool"),
    ("Where", ["c", "x", "y0"], ["bool", "float32", "int64"], None, None, "different dtypes"),
    ("Where", ["c", "x", "y0"], ["bool", "float32", "float32"], None, [(2, 3), (3,), (2,)],
     "do not broadcast"),
    ("Where", ["c", "x"], ["bool", "float32"], None, None, "takes 3 inputs"),
])
def test_malformed_nodes_raise_model_error(op, inputs, dtypes, attrs, shapes, match):
    with pytest.raises(engine.ModelError, match=match) as e:
        Model(_ir(op, inputs, dtypes, attrs, shapes))
    assert "'bad'" in str(e.value)

