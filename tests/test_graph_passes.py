"""Load-time passes (identity removal, constant folding, BatchNormalization folding,
activation and residual fusion, dead code) and the per-shape plan (shape-only folding, static
memory plan with buffer reuse, in-place steps and views), on graphs built in the engine's IR.

References are float64 NumPy. Tolerance, per element, as in tests/test_conv2d.py (exact where
a pass must not change any arithmetic):
    |got - ref| <= RTOL * magnitude,
the magnitude being the sum of |terms| of the last sum behind the element (a convolution's
conv(|x|, |w|) + |b|, with x the float64 reference's input to it; a BatchNormalization's
|scale| * (its input's magnitude + |mean|) + |shift|; |a| + |b| for an addition). Elementwise
functions after that sum (ReLU, Clip, Sigmoid, Tanh, and sigmoid -> tanh -> square: slopes at
most 1) pass its error on and add rounding of a few eps32 of |output|, so |output| is added.
Errors made before the last sum are of the order of eps32 relative to its inputs in these small
graphs. RTOL = 1e-5 (~80 eps32), the direct and im2col tolerance of tests/test_conv2d.py.
"""
import numpy as np
import pytest

import engine
from engine.graph import Graph, Model, Node, TensorSpec
from engine.graph import passes
from engine.ops import blocked
from reference import conv2d_ref


RTOL = 1e-5


def close(got, ref, magnitude, rtol=RTOL):
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    bound = rtol * np.asarray(magnitude, np.float64)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def conv_ref(x, w, b=None, **kw):
    """(float64 convolution, its magnitude conv(|x|, |w|) + |b|)."""
    return (conv2d_ref(x, w, b, **kw),
            conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw))


def spec(name, shape=None, dtype="float32"):
    return TensorSpec(name, shape, dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def bn_consts(rng, c):
    return {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": f32(rng, c, scale=0.3),
            "m": f32(rng, c, scale=0.2), "v": rng.uniform(0.3, 2.0, c).astype(np.float32)}


def bn_ref(y, magnitude, c, eps=1e-5):
    """(BatchNormalization of y in float64, its magnitude given y's)."""
    shape = (1, -1, 1, 1)
    m, shift = c["m"].reshape(shape), c["b"].reshape(shape)
    scale = c["s"].reshape(shape) / np.sqrt(c["v"].reshape(shape).astype(np.float64) + eps)
    return (y - m) * scale + shift, np.abs(scale) * (magnitude + np.abs(m)) + np.abs(shift)


# ------------------------------------------------------------------------------ BN folding

def test_batchnorm_folds_into_the_conv_weights(rng):
    w, b = f32(rng, 6, 4, 3, 3), f32(rng, 6)
    bn = bn_consts(rng, 6)
    g = Graph([Node("Conv", "conv", ["x", "w", "cb"], ["c"], {"pads": [1, 1, 1, 1]}),
               Node("BatchNormalization", "bn", ["c", "s", "b", "m", "v"], ["y"],
                    {"epsilon": 1e-3})],
              [spec("x", (1, 4, 7, 7))], [spec("y")], dict(w=w, cb=b, **bn))
    model = Model(g)
    assert [n.op for n in model.graph.nodes] == ["Conv"]
    conv = model.graph.nodes[0]
    s = bn["s"].astype(np.float64) / np.sqrt(bn["v"].astype(np.float64) + 1e-3)
    np.testing.assert_array_equal(model.graph.constants[conv.inputs[1]],
                                  (w * s.reshape(-1, 1, 1, 1)).astype(np.float32))
    np.testing.assert_array_equal(model.graph.constants[conv.inputs[2]],
                                  ((b - bn["m"].astype(np.float64)) * s + bn["b"])
                                  .astype(np.float32))
    x = f32(rng, 1, 4, 7, 7)
    close(model(x), *bn_ref(*conv_ref(x, w, b, pads=((1, 1), (1, 1))), bn, eps=1e-3))
    assert "folded 1 BatchNormalization" in model.explain()


def test_batchnorm_stays_when_the_conv_output_is_read_twice(rng):
    w = f32(rng, 3, 3, 1, 1)
    bn = bn_consts(rng, 3)
    g = Graph([Node("Conv", "conv", ["x", "w"], ["c"]),
               Node("BatchNormalization", "bn", ["c", "s", "b", "m", "v"], ["y"]),
               Node("Relu", "r", ["c"], ["z"])],
              [spec("x", (2, 3, 4, 4))], [spec("y"), spec("z")], dict(w=w, **bn))
    model = Model(g)
    assert sorted(n.op for n in model.graph.nodes) == ["BatchNormalization", "Conv", "Relu"]
    x = f32(rng, 2, 3, 4, 4)
    out = model.run({"x": x})
    c, magnitude = conv_ref(x, w)
    close(out["y"], *bn_ref(c, magnitude, bn))
    close(out["z"], np.maximum(c, 0), magnitude)


# ------------------------------------------------------------------------------ fusion

@pytest.mark.parametrize("act,lo,hi", [("Relu", None, None), ("Clip", 0.0, 6.0),
                                       ("Clip", 0.0, None), ("Clip", -1.0, 6.0),
                                       ("Clip", -1.0, -0.5), ("Clip", "x", None)])
def test_activation_fusion_for_constant_clips(rng, act, lo, hi):
    consts = {"w": f32(rng, 4, 2, 3, 3, scale=2)}
    ins = ["c"]
    inputs = [spec("x", (1, 2, 6, 6))]
    if act == "Clip":
        if lo == "x":       # a bound given at run time: not fused
            inputs.append(spec("lo", ()))
        else:
            consts["lo"] = np.array(lo, np.float32)
        ins.append("lo")
        if hi is not None:
            consts["hi"] = np.array(hi, np.float32)
            ins.append("hi")
    g = Graph([Node("Conv", "conv", ["x", "w"], ["c"]), Node(act, "act", ins, ["y"])],
              inputs, [spec("y")], consts)
    model = Model(g)
    fused = lo != "x"
    assert len(model.graph.nodes) == (1 if fused else 2)
    x = f32(rng, 1, 2, 6, 6)
    c, magnitude = conv_ref(x, consts["w"])
    feeds = {"x": x}
    if lo == "x":
        lo = -0.25
        feeds["lo"] = np.float32(lo)
    want = np.clip(c, 0 if lo is None else lo, np.inf if hi is None else hi)
    close(model.run(feeds)["y"], want, magnitude)


def test_residual_fusion_keeps_both_operands_alive(rng):
    """x -> conv1 -> relu = r; r -> conv2 -> conv3; conv3 + r -> relu: r must survive two
    convolutions in the arena."""
    w1, w2, w3 = (f32(rng, 4, 4, 3, 3, scale=0.3) for _ in range(3))
    nodes = [Node("Conv", "c1", ["x", "w1"], ["a"], {"pads": [1, 1, 1, 1]}),
             Node("Relu", "r1", ["a"], ["r"]),
             Node("Conv", "c2", ["r", "w2"], ["b"], {"pads": [1, 1, 1, 1]}),
             Node("Conv", "c3", ["b", "w3"], ["c"], {"pads": [1, 1, 1, 1]}),
             Node("Add", "add", ["r", "c"], ["s"]),
             Node("Relu", "r2", ["s"], ["y"])]
    model = Model(Graph(nodes, [spec("x", (1, 4, 9, 9))], [spec("y")],
                        {"w1": w1, "w2": w2, "w3": w3}), layout="nchw")   # no layout changes
    assert [n.op for n in model.graph.nodes] == ["Conv"] * 3
    assert model.graph.nodes[2].inputs[3] == "r"
    x = f32(rng, 1, 4, 9, 9)
    p = ((1, 1), (1, 1))
    r = np.maximum(conv2d_ref(x, w1, pads=p), 0)
    c, magnitude = conv_ref(conv2d_ref(r, w2, pads=p), w3, pads=p)
    close(model(x), np.maximum(c + r, 0), magnitude + np.abs(r))
    plan = model._last_plan      # r and b are live together; y is the caller's array
    assert plan.buffers == 2 and plan.arena_bytes == 2 * 1344   # 1296 bytes, 64-aligned



@pytest.mark.parametrize("layout", ["nchw", "nchwc"])
def test_sum_of_two_is_a_fused_residual(rng, layout):
    """Caffe2's ResNets add residuals with Sum (opset <= 12 exports): read as Add, the Sum and
    its Relu run in the convolution's step; a Sum of one is an Identity and of three stays."""
    w1, w2 = f32(rng, 32, 32, 3, 3, scale=0.1), f32(rng, 32, 32, 1, 1, scale=0.3)
    nodes = [Node("Conv", "c1", ["x", "w1"], ["a"], {"pads": [1, 1, 1, 1]}),
             Node("Sum", "one", ["a"], ["a1"]),
             Node("Conv", "c2", ["a1", "w2"], ["b"]),
             Node("Sum", "two", ["b", "x"], ["s"]),
             Node("Relu", "r", ["s"], ["t"]),
             Node("Sum", "three", ["t", "x", "a"], ["y"])]
    model = Model(Graph(nodes, [spec("x", (1, 32, 12, 12))], [spec("y")],
                        {"w1": w1, "w2": w2}), layout=layout)
    assert [n.op for n in model.graph.nodes] == ["Conv", "Conv", "Sum"]
    assert "read 2 Sum nodes" in model.explain()
    x = f32(rng, 1, 32, 12, 12)
    a, ma = conv_ref(x, w1, pads=((1, 1), (1, 1)))
    b, mb = conv_ref(a, w2)
    mb = conv2d_ref(ma, np.abs(w2))
    t = np.maximum(b + x, 0)
    close(model(x), t + x + a, mb + 2 * np.abs(x) + ma)


# ------------------------------------------------------------------------------ folding

def test_identities_removed_and_exported_names_kept(rng):
    nodes = [Node("Identity", "i0", ["x"], ["a"]), Node("Relu", "r", ["a"], ["b"]),
             Node("Identity", "i1", ["b"], ["y"]), Node("Identity", "i2", ["x"], ["z"])]
    model = Model(Graph(nodes, [spec("x", (3,))], [spec("y"), spec("z")], {}))
    assert [n.op for n in model.graph.nodes] == ["Relu", "Identity"]
    x = np.array([-1, 0, 2], np.float32)
    out = model.run({"x": x})
    np.testing.assert_array_equal(out["y"], [0, 0, 2])
    np.testing.assert_array_equal(out["z"], x)
    assert not np.shares_memory(out["z"], x)


def test_constant_subgraphs_fold_at_load(rng):
    consts = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([3.0, 4.0], np.float32),
              "shape": np.array([2, 2], np.int64)}
    nodes = [Node("Mul", "m", ["a", "b"], ["ab"]),
             Node("ConstantOfShape", "ones", ["shape"], ["o"], {"value": 1.0}),
             Node("Add", "add", ["x", "ab"], ["s"]),
             Node("Add", "add2", ["s", "o"], ["y"]),
             Node("Relu", "unused", ["x"], ["dead"])]
    model = Model(Graph(nodes, [spec("x", (2, 2))], [spec("y")], consts))
    assert [n.name for n in model.graph.nodes] == ["add", "add2"]
    np.testing.assert_array_equal(model.graph.constants["ab"], [3, 8])
    np.testing.assert_array_equal(model.graph.constants["o"], np.ones((2, 2)))
    x = f32(rng, 2, 2)
    np.testing.assert_array_equal(model(x), x + np.float32([3, 8]) + 1)
    assert "folded 2 nodes into constants" in model.explain()


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand"])
def test_huge_tensors_are_refused_before_allocation(op):
    """A file asking for a 16 GiB tensor gets a ModelError naming the node, not a MemoryError."""
    consts = {"shape": np.array([1 << 16, 1 << 16], np.int64), "one": np.ones(1, np.float32)}
    ins = ["shape"] if op == "ConstantOfShape" else ["one", "shape"]
    nodes = [Node(op, "big", ins, ["o"], {"value": 1.0} if op == "ConstantOfShape" else {}),
             Node("Add", "add", ["x", "o"], ["y"])]
    with pytest.raises(engine.ModelError, match="'big'.*GiB"):
        Model(Graph(nodes, [spec("x", (1,))], [spec("y")], consts))


def test_shape_subgraph_folds_at_load_when_shapes_are_declared(rng):
    consts = {"i": np.array(0, np.int64), "m1": np.array([-1], np.int64)}
    nodes = [Node("Shape", "shape", ["x"], ["s"]), Node("Gather", "g", ["s", "i"], ["n"]),
             Node("Unsqueeze", "u", ["n", "zero_axis"], ["n1"]),
             Node("Concat", "cat", ["n1", "m1"], ["t"], {"axis": 0}),
             Node("Reshape", "reshape", ["x", "t"], ["y"])]
    consts["zero_axis"] = np.array([0], np.int64)
    static = Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                          for n in nodes], [spec("x", (2, 3, 4))], [spec("y")], dict(consts)))
    assert [n.op for n in static.graph.nodes] == ["Reshape"]
    free = Model(Graph(nodes, [spec("x", (None, 3, 4))], [spec("y")], consts))
    assert len(free.graph.nodes) == 5
    x = f32(rng, 5, 3, 4)
    np.testing.assert_array_equal(free(x), x.reshape(5, 12))
    plan = free._last_plan
    assert len(plan.run_fns) == 1 and len(plan.folded) >= 4


def test_dead_nodes_are_dropped():
    nodes = [Node("Relu", "keep", ["x"], ["y"]), Node("Sigmoid", "dead", ["x"], ["unused"]),
             Node("Tanh", "dead2", ["unused"], ["unused2"])]
    model = Model(Graph(nodes, [spec("x", (2,))], [spec("y")], {"w": np.zeros(3, np.float32)}))
    assert [n.name for n in model.graph.nodes] == ["keep"]
    assert model.graph.constants == {}


# ------------------------------------------------------------------------------ memory plan

def test_conv_chain_ping_pongs_two_buffers(rng):
    consts = {f"w{k}": f32(rng, 8, 8, 3, 3, scale=0.2) for k in range(6)}
    nodes, prev = [], "x"
    for k in range(6):
        nodes.append(Node("Conv", f"c{k}", [prev, f"w{k}"], [f"t{k}"], {"pads": [1, 1, 1, 1]}))
        prev = f"t{k}"
    nodes.append(Node("Softsign", "out", [prev], ["y"]))     # a step of its own (not fused)
    # on NCHW: a blocked chain would add its layout changes' buffers
    model = Model(Graph(nodes, [spec("x", (1, 8, 16, 16))], [spec("y")], consts),
                  layout="nchw")
    plan = model._last_plan
    tensor = 8 * 16 * 16 * 4
    assert plan.buffers == 6 and plan.arena_bytes == 2 * tensor
    assert plan.naive_bytes == 6 * tensor
    assert "keeping every intermediate would take" in model.explain()
    x = f32(rng, 1, 8, 16, 16)
    ref = x
    for k in range(6):
        ref, magnitude = conv_ref(ref, consts[f"w{k}"], pads=((1, 1), (1, 1)))
    y = ref / (1 + np.abs(ref))
    close(model(x), y, magnitude + np.abs(y))


def test_elementwise_steps_run_in_place_and_views_cost_nothing(rng):
    consts = {"w": f32(rng, 4, 4, 1, 1), "shape": np.array([1, -1], np.int64)}
    nodes = [Node("Conv", "c", ["x", "w"], ["a"]),
             Node("Sigmoid", "s", ["a"], ["b"]),    # fused into the Conv
             Node("Tanh", "t", ["b"], ["d"]),
             Node("Reshape", "flat", ["d", "shape"], ["e"]),
             Node("Mul", "sq", ["e", "e"], ["y"])]
    model = Model(Graph(nodes, [spec("x", (1, 4, 5, 5))], [spec("y")], consts))
    plan = model._last_plan
    assert plan.buffers == 1
    assert [s.runs for s in plan.steps] == [True, True, False, True]
    x = f32(rng, 1, 4, 5, 5)
    c, magnitude = conv_ref(x, consts["w"])
    ref = np.tanh(1 / (1 + np.exp(-c))).reshape(1, -1) ** 2
    close(model(x), ref, magnitude.reshape(1, -1) + ref)


def test_in_place_sum_does_not_write_over_an_operand_read_later(rng):
    # a is read again later, so only b could take the output: but b is added twice
    nodes = [Node("Sigmoid", "a", ["x"], ["a"]), Node("Tanh", "b", ["x"], ["b"]),
             Node("Sum", "sum", ["a", "b", "b"], ["y"]), Node("Add", "r", ["y", "a"], ["z"])]
    model = Model(Graph(nodes, [spec("x", (4,))], [spec("z")], {}))
    x = np.array([-2, -0.5, 0.5, 2], np.float32)
    a, b = 1 / (1 + np.exp(-x.astype(np.float64))), np.tanh(x.astype(np.float64))
    close(model(x), 2 * a + 2 * b, 2 * np.abs(a) + 2 * np.abs(b))


def test_view_of_a_graph_input_and_output_of_a_view(rng):
    consts = {"shape": np.array([-1], np.int64)}
    nodes = [Node("Reshape", "flat", ["x", "shape"], ["f"]),
             Node("Relu", "r", ["f"], ["g"]),
             Node("Flatten", "y_is_a_view", ["g"], ["y"], {"axis": 0})]
    model = Model(Graph(nodes, [spec("x", (2, 3))], [spec("y")], consts))
    x = f32(rng, 2, 3)
    y = model(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0).reshape(1, 6))
    y2 = model(-x)
    np.testing.assert_array_equal(y, np.maximum(x, 0).reshape(1, 6))   # not overwritten
    assert not np.shares_memory(y, y2)


# ------------------------------------------------------------------------------ graph checks

@pytest.mark.parametrize("nodes,message", [
    ([Node("Relu", "a", ["x"], ["y"]), Node("Relu", "b", ["x"], ["y"])], "defined twice"),
    ([Node("Relu", "a", ["q"], ["y"])], "'a' \\(Relu\\): input 0 'q' is not"),
    ([Node("Add", "a", ["x", "t"], ["u"]), Node("Relu", "b", ["u"], ["t"]),
      Node("Relu", "c", ["u"], ["y"])], "cycle"),
    ([Node("Relu", "a", ["x"], ["u"]), Node("Relu", "a", ["u"], ["y"])], "two nodes"),
])
def test_bad_graphs_are_model_errors(nodes, message):
    with pytest.raises(engine.ModelError, match=message):
        Model(Graph(nodes, [spec("x", (2,))], [spec("y")], {}))


def test_optimize_is_idempotent(rng):
    w = f32(rng, 4, 4, 3, 3)
    bn = bn_consts(rng, 4)
    nodes = [Node("Conv", "c", ["x", "w"], ["a"], {"pads": [1, 1, 1, 1]}),
             Node("BatchNormalization", "bn", ["a", "s", "b", "m", "v"], ["n"]),
             Node("Add", "add", ["n", "x"], ["p"]), Node("Relu", "r", ["p"], ["y"])]
    g = Graph(nodes, [spec("x", (1, 4, 6, 6))], [spec("y")], dict(w=w, **bn))
    passes.optimize(g)
    before = [(n.op, n.inputs, n.outputs, dict(n.attrs)) for n in g.nodes]
    passes.optimize(g)
    assert before == [(n.op, n.inputs, n.outputs, dict(n.attrs)) for n in g.nodes]
    assert len(before) == 1 and before[0][3] == {"pads": [1, 1, 1, 1], "activation": "relu"}


def test_onnx_test_data_resnet50_stays_blocked_end_to_end():
    """The ResNet-50 the onnx package ships (Caffe2's, opset 9: Sum residuals, a 7x7
    AveragePool) runs blocked from stem to pool, with no layout change, and gives the file's
    expected output."""
    onnx = pytest.importorskip("onnx")
    import os
    from onnx import numpy_helper
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        "light_resnet50.onnx")
    if not os.path.exists(path):
        pytest.skip("this onnx package has no light test models")
    model = engine.load(path)
    text = model.explain()
    assert "read 16 Sum nodes" in text and "fused 16 residual Adds" in text, text
    assert "FromBlocked" not in text and "ToBlocked" not in text, text    # no layout change
    assert "im2col" not in text, text
    block = blocked.BLOCK
    assert f"AveragePool        1x{2048 // block}x7x7x{block} -> 1x2048x1x1" in text, text
    want = numpy_helper.to_array(onnx.load_tensor(path[:-5] + "_output_0.pb"))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(model.run({model.inputs[0].name: x})[model.outputs[0].name],
                               want, rtol=1e-5, atol=1e-7)
