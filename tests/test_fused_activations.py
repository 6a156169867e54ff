"""Activation nodes after a convolution move into its output step (engine/graph/passes.py
fuse_activations): every ONNX activation the kernels apply, with its attributes, on NCHW and on
channel blocks (20 channels: the last block is padded), against float64, ONNX Runtime, and the
same activation run as a step of its own.

Error model, per element: the first layer's sum within 1e-5 of the sum of its |terms|, grown by
the activation's slope (below 1.5 for every one here) plus its own rounding (4 ulp, see
tests/test_activation_kernels.py), then carried through the second layer's |weights| together
with that layer's own 1e-5 of its |terms|.
"""
import numpy as np
import pytest

import engine
from engine.ops.activation import float64_activation
from reference import conv2d_ref

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

# ONNX node, its attributes, its constant inputs, the activation it becomes
CASES = {
    "Relu": ("Relu", {}, [], "relu"),
    "Clip": ("Clip", {}, [-1.0, 2.0], "clip(-1,2)"),
    "ClipRelu6": ("Clip", {}, [0.0, 6.0], "relu6"),
    "Sigmoid": ("Sigmoid", {}, [], "sigmoid"),
    "Tanh": ("Tanh", {}, [], "tanh"),
    "LeakyRelu": ("LeakyRelu", {"alpha": 0.1}, [], "leaky_relu(0.1)"),
    "LeakyReluDefault": ("LeakyRelu", {}, [], "leaky_relu(0.01)"),
    "PReluScalar": ("PRelu", {}, [np.float32([0.25])], "leaky_relu(0.25)"),
    "Elu": ("Elu", {"alpha": 0.5}, [], "elu(0.5)"),
    "HardSigmoid": ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, [], "hardsigmoid(0.2,0.5)"),
    "HardSwish": ("HardSwish", {}, [], "hardswish"),
    "Softplus": ("Softplus", {}, [], "softplus"),
    "Mish": ("Mish", {}, [], "mish"),
    "Gelu": ("Gelu", {}, [], "gelu"),
    "GeluTanh": ("Gelu", {"approximate": "tanh"}, [], "gelu_tanh"),
}


def two_layers(rng, case, c_in=24, c_mid=20, size=40, conv_output=False):
    """x -> 1x1 conv -> activation -> 3x3 conv (stride 2, pad 1) -> y; with ``conv_output``
    the first conv's output is a graph output too (so the activation stays a step)."""
    op, attrs, extra, _ = CASES[case]
    w1 = (rng.standard_normal((c_mid, c_in, 1, 1)) / 4).astype(np.float32)
    b1 = rng.standard_normal(c_mid).astype(np.float32)
    w2 = (rng.standard_normal((16, c_mid, 3, 3)) / 8).astype(np.float32)
    b2 = rng.standard_normal(16).astype(np.float32)
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    names = []
    for k, v in enumerate(extra):
        inits[f"p{k}"] = np.asarray(v, np.float32)
        names.append(f"p{k}")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1"),
             helper.make_node(op, ["c"] + names, ["a"], name="act", **attrs),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="conv2", pads=[1] * 4,
                              strides=[2, 2])]
    outs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]
    if conv_output:
        outs.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                   (1, c_in, size, size))],
        outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), inits


def reference(x, inits, activation):
    """(y in float64, its per-element error bound)."""
    w1, b1, w2, b2 = (inits[k].astype(np.float64) for k in ("w1", "b1", "w2", "b2"))
    pads = ((1, 1), (1, 1))
    c = conv2d_ref(x, w1, b1)
    a = float64_activation(activation, c)
    e1 = 1.5 * 1e-5 * (conv2d_ref(np.abs(x), np.abs(w1), np.abs(b1))) + 4 * 2.0 ** -23 * np.abs(a)
    y = conv2d_ref(a, w2, b2, (2, 2), pads)
    bound = (conv2d_ref(e1, np.abs(w2), None, (2, 2), pads)
             + 1e-5 * conv2d_ref(np.abs(a), np.abs(w2), np.abs(b2), (2, 2), pads) + 1e-6)
    return y, bound


@pytest.mark.parametrize("layout", ["nchw", "nchwc"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_against_float64_and_threads(rng, case, layout):
    model, inits = two_layers(rng, case)
    x = (rng.standard_normal((1, 24, 40, 40)) * 3).astype(np.float32)
    runs = []
    for threads in (1, 2):
        m = engine.load(model, num_threads=threads, layout=layout)
        assert [n.op for n in m.graph.nodes] == ["Conv", "Conv"], case
        assert m.graph.nodes[0].attrs["activation"] == CASES[case][3]
        runs.append(m.run({"x": x})["y"])
    np.testing.assert_array_equal(runs[0], runs[1])
    want, bound = reference(x, inits, CASES[case][3])
    err = np.abs(runs[0] - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"{err[worst]:.3g} > {bound[worst]:.3g} at {worst}"
    if layout == "nchwc":
        assert "nchwc" in m.explain()


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_matches_onnxruntime(rng, case):
    ort = pytest.importorskip("onnxruntime")
    model, inits = two_layers(rng, case)
    x = (rng.standard_normal((1, 24, 40, 40)) * 3).astype(np.float32)
    got = engine.load(model).run({"x": x})["y"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {"x": x})[0]
    _, bound = reference(x, inits, CASES[case][3])
    assert np.all(np.abs(got - theirs) <= 2 * bound)


@pytest.mark.parametrize("layout", ["nchw", "nchwc"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_step_gives_the_bits_of_the_separate_step(rng, case, layout):
    """On extreme values (NaN, infinities, +-1e30, +-100: exp's overflow and underflow) the
    activation in the conv's output step and the same activation as a step of its own (the
    conv's output also being a graph output keeps it unfused) agree bit for bit."""
    x = (rng.standard_normal((1, 24, 40, 40))).astype(np.float32)
    x[0, :, 3, 5] = np.nan
    x[0, :, 20, 7] = np.inf
    x[0, :, 30, 30] = -np.inf
    x[0, :4, 10:14, 10:30] *= 1e29
    x[0, 4:8, 25:29] *= 60
    fused_model, _ = two_layers(np.random.default_rng(0), case)
    separate_model, _ = two_layers(np.random.default_rng(0), case, conv_output=True)
    fused = engine.load(fused_model, layout=layout)
    separate = engine.load(separate_model, layout=layout)
    assert [n.op for n in separate.graph.nodes][:2] == ["Conv", CASES[case][0]]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(fused.run({"x": x})["y"], separate.run({"x": x})["y"])


def test_prelu_per_channel_and_runtime_clip_stay_steps(rng):
    """A PRelu with one slope per channel and a Clip whose bound is a graph input are not
    fused (the output step takes scalar parameters); their results are still right."""
    model, inits = two_layers(rng, "PReluScalar")
    model.graph.initializer[4].CopyFrom(numpy_helper.from_array(
        (rng.uniform(0, 0.5, (20, 1, 1))).astype(np.float32), "p0"))
    m = engine.load(model)
    assert [n.op for n in m.graph.nodes] == ["Conv", "PRelu", "Conv"]


@pytest.mark.parametrize("shape", [(2, 20, 33, 17), (1, 64, 56, 56), (3, 5, 7)])
def test_prelu_per_channel_is_one_vector_pass(rng, shape):
    """PRelu with a slope per channel (kernels/activation.pyx f32_prelu_planes): exact (one
    product), NaN and infinities as the formula gives them, 1 and 2 threads alike."""
    from engine._kernels.activation import f32_prelu_planes
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    slope = rng.uniform(-0.5, 0.5, shape[1]).astype(np.float32)
    planes = (shape[0], shape[1], int(np.prod(shape[2:])))
    want = np.where(x < 0, x * slope.reshape((-1,) + (1,) * (len(shape) - 2)), x)
    outs = []
    for threads in (1, 2):
        out = np.empty_like(x)
        f32_prelu_planes(x.reshape(planes), slope, out.reshape(planes), threads)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], want)
    with pytest.raises(ValueError, match="do not match"):
        f32_prelu_planes(x.reshape(planes), slope[:-1], out.reshape(planes), 1)
    # in a graph, beside ONNX's reference formula
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(slope.reshape((-1,) + (1,) * (len(shape) - 2)), "s")])
    m = engine.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]))
    np.testing.assert_array_equal(m.run({"x": x})["y"], want)


@pytest.mark.parametrize("case", ["LeakyRelu", "HardSigmoid", "Clip", "Elu", "GeluTanh"])
def test_fused_activation_survives_the_native_file(rng, case, tmp_path):
    model, _ = two_layers(rng, case)
    m = engine.load(model)
    m.save(tmp_path / "m.safetensors")
    again = engine.load(tmp_path / "m.safetensors")
    assert again.graph.nodes[0].attrs["activation"] == CASES[case][3]
    x = rng.standard_normal((1, 24, 40, 40)).astype(np.float32)
    np.testing.assert_array_equal(again.run({"x": x})["y"], m.run({"x": x})["y"])


def test_mish_written_out_becomes_one_fused_activation(rng):
    """x * tanh(softplus(x)), nn.Mish as torch.onnx writes it below opset 18, after a Conv:
    one Mish node, then the convolution's activation; a chain whose Softplus output is read
    elsewhere too stays as it is."""
    w = (rng.standard_normal((8, 4, 3, 3)) / 4).astype(np.float32)
    x = (rng.standard_normal((1, 4, 12, 12)) * 3).astype(np.float32)

    def model(extra_output):
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                 helper.make_node("Softplus", ["c"], ["s"]),
                 helper.make_node("Tanh", ["s"], ["t"]),
                 helper.make_node("Mul", ["c", "t"], ["y"])]
        outs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                for n in (["y", "s"] if extra_output else ["y"])]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
            outs, [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    m = engine.load(model(False))
    assert [n.op for n in m.graph.nodes] == ["Conv"]
    assert m.graph.nodes[0].attrs["activation"] == "mish"
    c = conv2d_ref(x, w, None, (1, 1), ((1, 1), (1, 1)))
    want = float64_activation("mish", c)
    bound = 1.5 * 1e-5 * conv2d_ref(np.abs(x), np.abs(w), None, (1, 1), ((1, 1), (1, 1))) \
        + 8 * 2.0 ** -24 * np.abs(want) + 1e-7
    assert np.all(np.abs(m.run({"x": x})["y"] - want) <= bound)
    kept = engine.load(model(True))
    assert [n.op for n in kept.graph.nodes] == ["Conv", "Softplus", "Tanh", "Mul"]
    np.testing.assert_allclose(kept.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,attrs", [("LeakyRelu", {"alpha": float("nan")}),
                                      ("Elu", {"alpha": float("inf")}),
                                      ("HardSigmoid", {"beta": 1e39}),
                                      ("Gelu", {"approximate": "fast"})])
def test_bad_activation_parameters_are_a_model_error_naming_the_node(op, attrs):
    """Parameters no kernel can take (not finite in float32) are not fused, and the node's own
    plan refuses them: engine.ModelError naming it, not another exception."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node(op, ["c"], ["y"], name="bad_act", **attrs)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (1, 2, 4, 4))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")])
    with pytest.raises(engine.ModelError, match="bad_act"):
        engine.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


def classifier(rng, case, rows, gemm_output=False):
    """x (rows x 40) -> Gemm (transB, bias, alpha 0.5) -> activation -> y; with
    ``gemm_output`` the Gemm's output is a graph output too (the activation stays a step)."""
    op, attrs, extra, _ = CASES[case]
    inits = {"w": (rng.standard_normal((30, 40)) / 4).astype(np.float32),
             "b": rng.standard_normal(30).astype(np.float32)}
    names = []
    for k, v in enumerate(extra):
        inits[f"p{k}"] = np.asarray(v, np.float32)
        names.append(f"p{k}")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc", transB=1, alpha=0.5),
             helper.make_node(op, ["g"] + names, ["y"], name="act", **attrs)]
    outs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]
    if gemm_output:
        outs.append(helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (rows, 40))],
        outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), inits


@pytest.mark.parametrize("rows", [1, 20])     # the dense kernel, numpy's matmul
@pytest.mark.parametrize("case", sorted(CASES))
def test_activation_fused_into_a_gemm(rng, case, rows):
    """A classifier's activation (MobileNetV3's HardSwish) runs in the Gemm's step: against
    float64, and bit for bit the separate step's values on extreme inputs."""
    fused = engine.load(classifier(np.random.default_rng(0), case, rows)[0])
    model, inits = classifier(np.random.default_rng(0), case, rows, gemm_output=True)
    separate = engine.load(model)
    assert [n.op for n in fused.graph.nodes] == ["Gemm"]
    assert fused.graph.nodes[0].attrs["activation"] == CASES[case][3]
    assert "fused 1 activations into matrix products" in fused.explain()
    assert [n.op for n in separate.graph.nodes] == ["Gemm", CASES[case][0]]
    x = rng.standard_normal((rows, 40)).astype(np.float32)
    w, b = inits["w"].astype(np.float64), inits["b"].astype(np.float64)
    g = 0.5 * x @ w.T + b
    want = float64_activation(CASES[case][3], g)
    bound = 1.5e-5 * (0.5 * np.abs(x) @ np.abs(w).T + np.abs(b)) + 4 * 2.0 ** -23 * np.abs(want)
    got = fused.run({"x": x})["y"]
    assert np.all(np.abs(got - want) <= bound + 1e-30)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    x[-1] *= 1e30
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(fused.run({"x": x})["y"], separate.run({"x": x})["y"])
