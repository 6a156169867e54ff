"""The normalisation operators (LayerNormalization, GroupNormalization in its opset-18 and
opset-21 forms, InstanceNormalization, MeanVarianceNormalization, BatchNormalization left
standing) against float64 NumPy references written here and against ONNX Runtime, and the
load-time fusions of engine/graph/fusions.py on graphs torch.onnx exports.

Tolerances, per element:
- against the float64 reference: |got - ref| <= RTOL * (|z * scale| + |bias|) + ATOL, z being
  the exact standardised value. The engine accumulates the statistics in float64 and rounds
  each deviation, the inverse deviation, the products and the sum once in float32: about five
  eps32 of that magnitude, whatever the mean is against the spread. RTOL = 2e-6 (~16 eps32);
  ATOL = 1e-7 covers z = 0 exactly;
- against ONNX Runtime (float32 statistics, a different summation order): RTOL_ORT = 1e-5 of
  |ref| + rms(ref), as in tests/test_onnx_import.py;
- fused graphs against ONNX Runtime running the unfused chain: 1e-5 absolute, on outputs of
  order 1 (the chain's own float32 rounding, a few eps32 per step).
"""
import io
import itertools
import math
import warnings

import numpy as np
import pytest

import engine
from engine.graph import Graph, Model, Node, TensorSpec
from engine.graph.fusions import fuse_gelu, fuse_layer_norm
from engine.graph.ops import OPS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

RTOL, ATOL = 2e-6, 1e-7
RTOL_ORT = 1e-5
FUSED_ATOL = 1e-5


# ============================================================================ helpers

@pytest.fixture
def rng():
    return np.random.default_rng(5)


def randn(rng, *shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def make(op, x_shape, params, attrs=None, outputs=("y",), opset=17, runtime=()):
    """A one-node model: input "x", parameters by name (initializers, or graph inputs for the
    names in ``runtime``; None for an absent optional input)."""
    inputs = [h.make_tensor_value_info("x", T.FLOAT, x_shape)]
    inits, names = [], ["x"]
    for name, value in params:
        if value is None:
            names.append("")
            continue
        names.append(name)
        if name in runtime:
            inputs.append(h.make_tensor_value_info(name, T.FLOAT, value.shape))
        else:
            inits.append(nh.from_array(value, name))
    while names[-1] == "":       # ONNX Runtime crashes on a trailing absent input
        names.pop()
    node = h.make_node(op, names, list(outputs), **(attrs or {}))
    g = h.make_graph([node], "test", inputs,
                     [h.make_tensor_value_info(o, T.FLOAT, None) for o in outputs if o], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def run_engine(m, feeds):
    model = engine.load(m)
    out = model.run(feeds)
    return [out[o.name] for o in m.graph.output]


def run_ort(m, feeds):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def close_ref(got, ref, magnitude):
    ref = np.asarray(ref, np.float64)
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    bound = RTOL * np.asarray(magnitude, np.float64) + ATOL
    if err.size:
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g}"


def close_ort(got, ref):
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, ref.shape)
    if ref.size:
        ref = ref.astype(np.float64)
        bound = RTOL_ORT * (np.abs(ref) + np.sqrt(np.mean(ref ** 2)))
        assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) - bound)


def standardised(x, axes, eps):
    """(x - mean) / sqrt(var + eps) in float64, with the mean and 1/sqrt(var + eps)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    return (x - mean) * inv, mean, inv


def affine_ref(z, scale, bias):
    """(z * scale + bias, its magnitude |z * scale| + |bias|) in float64."""
    zs = z * scale
    b = 0.0 if bias is None else bias.astype(np.float64)
    return zs + b, np.abs(zs) + np.abs(b)


# ============================================================================ LayerNormalization

LN_CASES = [(shape, axis) for shape in [(7,), (3, 11), (2, 5, 6), (2, 3, 4, 5)]
            for axis in range(-len(shape), len(shape))]


@pytest.mark.parametrize("shape,axis", LN_CASES)
def test_layer_norm_axes(rng, shape, axis):
    ran = 0
    x = randn(rng, *shape, scale=2.0, shift=0.5)
    ax = axis % len(shape)
    norm_shape = shape[ax:]
    scale_shapes = {norm_shape, (1,) * len(norm_shape), norm_shape[-1:]}
    for scale_shape, with_bias, eps in itertools.product(sorted(scale_shapes), (True, False),
                                                         (1e-5, 0.1)):
        scale = randn(rng, *scale_shape)
        bias = randn(rng, *norm_shape) if with_bias else None
        m = make("LayerNormalization", shape, [("s", scale), ("b", bias)],
                 {"axis": axis, "epsilon": eps}, outputs=("y", "mean", "inv"))
        y, mean, inv = run_engine(m, {"x": x})
        axes = tuple(range(ax, len(shape)))
        z, mean_ref, inv_ref = standardised(x, axes, eps)
        ref, mag = affine_ref(z, scale, bias)
        close_ref(y, ref, mag)
        close_ref(mean, mean_ref, np.abs(mean_ref))
        close_ref(inv, inv_ref, np.abs(inv_ref))
        for g, r in zip((y, mean, inv), run_ort(m, {"x": x})):
            close_ort(g, r)
        ran += 1
    assert ran >= 8


@pytest.mark.parametrize("outputs", [("y",), ("y", "mean"), ("y", "", "inv"),
                                     ("y", "mean", "inv")])
def test_layer_norm_optional_outputs(rng, outputs):
    x = randn(rng, 4, 3, 8)
    scale, bias = randn(rng, 8), randn(rng, 8)
    m = make("LayerNormalization", x.shape, [("s", scale), ("b", bias)], {},
             outputs=outputs)
    got = run_engine(m, {"x": x})
    ref = run_ort(m, {"x": x})
    assert len(got) == len([o for o in outputs if o])
    assert got[0].shape == x.shape and all(g.shape == (4, 3, 1) for g in got[1:])
    for g, r in zip(got, ref):
        close_ort(g, r)


def test_layer_norm_runtime_parameters(rng):
    """Scale and B read at run time (graph inputs), as ONNX's node tests give them."""
    x = randn(rng, 2, 3, 5)
    scale, bias = randn(rng, 3, 5), randn(rng, 5)
    m = make("LayerNormalization", x.shape, [("s", scale), ("b", bias)], {"axis": 1},
             runtime=("s", "b"))
    model = engine.load(m)
    for _ in range(2):    # new values each run
        scale, bias = randn(rng, 3, 5), randn(rng, 5)
        y = model.run({"x": x, "s": scale, "b": bias})["y"]
        ref, mag = affine_ref(standardised(x, (1, 2), 1e-5)[0], scale, bias)
        close_ref(y, ref, mag)


def test_layer_norm_large_mean_keeps_precision(rng):
    """A mean 1e5 times the spread: float32 sums or one-pass variance lose every digit."""
    x = randn(rng, 6, 4096, scale=1e-2, shift=1000.0)
    m = make("LayerNormalization", x.shape, [("s", np.ones(4096, np.float32))], {},
             outputs=("y", "mean", "inv"))
    y, mean, inv = run_engine(m, {"x": x})
    z, mean_ref, inv_ref = standardised(x, (1,), 1e-5)
    close_ref(y, z, np.abs(z))
    close_ref(mean, mean_ref, np.abs(mean_ref))
    close_ref(inv, inv_ref, np.abs(inv_ref))


def test_layer_norm_kernel_rows_are_thread_independent(rng):
    """ConvNeXt's layer norm (3136 rows of 96 over the last axis, constant Scale and B: the
    row kernel, kernels/layer_norm.pyx) on 1 and 2 threads: bit-identical, and the float64
    reference's values."""
    x = randn(rng, 1, 56, 56, 96, scale=3.0, shift=2.0)
    scale, bias = randn(rng, 96), randn(rng, 96)
    m = make("LayerNormalization", x.shape, [("s", scale), ("b", bias)], {"epsilon": 1e-6},
             outputs=("y", "mean", "inv"))
    model = engine.load(m)
    assert "layer-norm kernel" in model.explain()
    outs = [model.run({"x": x}, num_threads=t) for t in (1, 2)]
    for name in ("y", "mean", "inv"):
        np.testing.assert_array_equal(outs[0][name], outs[1][name])
    z, mean_ref, inv_ref = standardised(x, (3,), 1e-6)
    ref, mag = affine_ref(z, scale, bias)
    close_ref(outs[0]["y"], ref, mag)
    close_ref(outs[0]["mean"], mean_ref, np.abs(mean_ref))
    close_ref(outs[0]["inv"], inv_ref, np.abs(inv_ref))


@pytest.mark.parametrize("op", ["GroupNormalization", "InstanceNormalization",
                                "MeanVarianceNormalization"])
def test_channel_norms_large_mean_keep_precision(rng, op):
    x = randn(rng, 2, 4, 64, 64, scale=1e-2, shift=-500.0)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    params = [] if op.startswith("Mean") else [("s", ones), ("b", zeros)]
    attrs = {"num_groups": 2} if op.startswith("Group") else {}
    y, = run_engine(make(op, x.shape, params, attrs, opset=21), {"x": x})
    if op.startswith("Group"):
        z = standardised(x.reshape(2, 2, -1), (2,), 1e-5)[0].reshape(x.shape)
    elif op.startswith("Instance"):
        z = standardised(x, (2, 3), 1e-5)[0]
    else:
        z = mvn_ref(x, (0, 2, 3))[0]
    close_ref(y, z, np.abs(z))


def test_zero_spread_and_zero_epsilon_is_nan_without_warnings():
    """ONNX's formula gives 0 * inf there; the engine does not warn about it."""
    m = make("LayerNormalization", (2, 3), [("s", np.ones(3, np.float32))], {"epsilon": 0.0})
    model = engine.load(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = model.run({"x": np.ones((2, 3), np.float32)})["y"]
    assert np.isnan(y).all()


def test_layer_norm_in_place_and_scale_is_x(rng):
    """X dying at the node may be overwritten, but not when X is also the Scale."""
    x = randn(rng, 3, 6)
    for scale_name in ("r", "s"):
        inits = [nh.from_array(randn(rng, 6), "s")]
        nodes = [h.make_node("Relu", ["x"], ["r"]),
                 h.make_node("LayerNormalization", ["r", scale_name], ["y"])]
        g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, x.shape)],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
        close_ort(run_engine(m, {"x": x})[0], run_ort(m, {"x": x})[0])


def test_layer_norm_empty(rng):
    m = make("LayerNormalization", (0, 4), [("s", np.ones(4, np.float32))], {})
    assert run_engine(m, {"x": np.zeros((0, 4), np.float32)})[0].shape == (0, 4)
    m = make("LayerNormalization", (3, 0), [("s", np.ones(1, np.float32))], {},
             outputs=("y", "mean", "inv"))
    y, mean, inv = run_engine(m, {"x": np.zeros((3, 0), np.float32)})
    assert y.shape == (3, 0) and mean.shape == (3, 1) and np.isnan(mean).all()


# ============================================================================ GroupNormalization

GN_CASES = [((2, 6, 4, 5), 1), ((2, 6, 4, 5), 2), ((2, 6, 4, 5), 3), ((2, 6, 4, 5), 6),
            ((3, 8, 7), 4), ((1, 4), 2), ((2, 4, 3, 2, 3), 2), ((2, 12, 1, 1), 4)]


def group_norm_ref(x, groups, scale, bias, eps):
    n, c = x.shape[:2]
    z = standardised(x.reshape(n, groups, -1), (2,), eps)[0].reshape(x.shape)
    if scale.shape[0] != c:            # opset 18: one value per group
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    view = (1, c) + (1,) * (x.ndim - 2)
    return affine_ref(z, scale.reshape(view), bias.reshape(view))


@pytest.mark.parametrize("shape,groups", GN_CASES)
@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(rng, shape, groups, opset):
    ran = 0
    x = randn(rng, *shape, scale=1.5, shift=-0.3)
    n_params = groups if opset == 18 else shape[1]
    for eps, runtime in itertools.product((1e-5, 1e-2), ((), ("s", "b"))):
        scale, bias = randn(rng, n_params), randn(rng, n_params)
        m = make("GroupNormalization", shape, [("s", scale), ("b", bias)],
                 {"num_groups": groups, "epsilon": eps}, opset=opset, runtime=runtime)
        feeds = {"x": x, **({"s": scale, "b": bias} if runtime else {})}
        y, = run_engine(m, feeds)
        close_ref(y, *group_norm_ref(x, groups, scale, bias, eps))
        close_ort(y, run_ort(m, feeds)[0])
        ran += 1
    assert ran == 4


def test_group_norm_forms_told_apart_by_shape(rng):
    """With fewer groups than channels, a (G,) scale is the opset-18 form and a (C,) one the
    opset-21 form, whichever opset the file names; ``group_affine`` (the importer's mark of the
    opset) makes the other shape an error."""
    x = randn(rng, 2, 6, 3)
    for n_params, affine in itertools.product((2, 6), (None, 0, 1)):
        scale, bias = randn(rng, n_params), randn(rng, n_params)
        attrs = {"num_groups": 2} if affine is None else {"num_groups": 2, "group_affine": affine}
        graph = Graph([Node("GroupNormalization", "gn", ["x", "s", "b"], ["y"], attrs)],
                      [TensorSpec("x", x.shape, "float32")],
                      [TensorSpec("y", None, "float32")], {"s": scale, "b": bias})
        if affine is not None and (n_params == 2) != bool(affine):
            with pytest.raises(engine.ModelError, match="gn"):
                Model(graph)
            continue
        y = Model(graph).run({"x": x})["y"]
        close_ref(y, *group_norm_ref(x, 2, scale, bias, 1e-5))


# ============================================================================ InstanceNormalization

@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 4, 5, 6), (1, 3, 2, 3, 4), (3, 1, 1, 1)])
@pytest.mark.parametrize("eps", [1e-5, 0.05])
@pytest.mark.parametrize("runtime", [(), ("s", "b")])
def test_instance_norm(rng, shape, eps, runtime):
    x = randn(rng, *shape, scale=3.0, shift=2.0)
    scale, bias = randn(rng, shape[1]), randn(rng, shape[1])
    m = make("InstanceNormalization", shape, [("s", scale), ("b", bias)], {"epsilon": eps},
             opset=6 if not runtime else 22, runtime=runtime)
    feeds = {"x": x, **({"s": scale, "b": bias} if runtime else {})}
    y, = run_engine(m, feeds)
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    z = standardised(x, tuple(range(2, len(shape))), eps)[0]
    close_ref(y, *affine_ref(z, scale.reshape(view), bias.reshape(view)))
    close_ort(y, run_ort(m, feeds)[0])


# ======================================================================== MeanVarianceNormalization

def mvn_ref(x, axes):
    """ONNX's function: (x - mean) / (sqrt(E[(x - mean)^2]) + 1e-9), in float64."""
    x = x.astype(np.float64)
    d = x - x.mean(axis=axes, keepdims=True)
    y = d / (np.sqrt((d ** 2).mean(axis=axes, keepdims=True)) + 1e-9)
    return y, np.abs(y)


@pytest.mark.parametrize("shape,axes", [
    ((2, 3, 4, 5), None), ((2, 3, 4, 5), [1]), ((2, 3, 4, 5), [-1]), ((2, 3, 4, 5), [0, 1]),
    ((2, 3, 4, 5), [2, 3]), ((2, 3, 4, 5), [-3, 0, 3]), ((3, 5), [1]), ((2, 3, 4), [0, 2]),
    ((2, 3, 2, 2, 3), [0, 2, 3, 4])])
@pytest.mark.parametrize("opset", [9, 13])
def test_mean_variance_normalization(rng, shape, axes, opset):
    x = randn(rng, *shape, scale=2.0, shift=1.0)
    m = make("MeanVarianceNormalization", shape, [], {} if axes is None else {"axes": axes},
             opset=opset)
    y, = run_engine(m, {"x": x})
    close_ref(y, *mvn_ref(x, tuple([0, 2, 3] if axes is None else axes)))
    close_ort(y, run_ort(m, {"x": x})[0])


def test_mean_variance_normalization_constant_input():
    """Zero spread: ONNX's epsilon on the deviation makes the output 0, not NaN."""
    m = make("MeanVarianceNormalization", (2, 3, 2, 2), [])
    y, = run_engine(m, {"x": np.full((2, 3, 2, 2), 4.0, np.float32)})
    assert np.array_equal(y, np.zeros_like(y))


# ============================================================================ BatchNormalization

@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
def test_batchnorm_standing_every_rank(rng, shape):
    """BatchNormalization on the graph input (no convolution to fold it into)."""
    c = shape[1]
    x = randn(rng, *shape)
    s, b, mean = randn(rng, c), randn(rng, c), randn(rng, c, scale=0.3)
    var = rng.uniform(0.2, 2.0, c).astype(np.float32)
    m = make("BatchNormalization", shape, [("s", s), ("b", b), ("m", mean), ("v", var)],
             {"epsilon": 1e-3}, opset=15)
    model = engine.load(m)
    assert [n.op for n in model.graph.nodes] == ["BatchNormalization"]
    y = model.run({"x": x})["y"]
    view = (1, c) + (1,) * (len(shape) - 2)
    z = (x - mean.reshape(view).astype(np.float64)) / np.sqrt(var.reshape(view) + 1e-3)
    # the engine folds the statistics into one scale and shift: x * s' + t'
    mag = np.abs(x * s.reshape(view) / np.sqrt(var.reshape(view) + 1e-3)) + \
        np.abs(b.reshape(view) - mean.reshape(view) * s.reshape(view)
               / np.sqrt(var.reshape(view) + 1e-3))
    close_ref(y, z * s.reshape(view) + b.reshape(view), mag)
    close_ort(y, run_ort(m, {"x": x})[0])


def test_batchnorm_spatial0_rank3(rng):
    """Opset 7's spatial=0: statistics per channel and position."""
    x = randn(rng, 2, 3, 4)
    s, b, mean = randn(rng, 3, 4), randn(rng, 3, 4), randn(rng, 3, 4)
    var = rng.uniform(0.2, 2.0, (3, 4)).astype(np.float32)
    m = make("BatchNormalization", x.shape, [("s", s), ("b", b), ("m", mean), ("v", var)],
             {"spatial": 0}, opset=7)
    y, = run_engine(m, {"x": x})
    sc = s / np.sqrt(var.astype(np.float64) + 1e-5)
    close_ref(y, (x - mean) * sc + b, np.abs(x * sc) + np.abs(b - mean * sc))


@pytest.mark.parametrize("act", ["Relu", "Clip6", "HardSwish", "Sigmoid*"])
def test_batchnorm_then_activation_is_one_pass(rng, act):
    """DenseNet's pre-activation: a standing BatchNormalization and the activation after it
    run as one step (scale, shift and activation in one pass, engine/_kernels/activation.pyx
    f32_scale_shift), equal to the two steps within 2 ulp of the value per element, NaN kept,
    bit-identical for 1 and 2 threads on a tensor large enough that both run. Per element
    the fused x * s + t may round once (a fused multiply-add) where the two steps round twice:
    the bound is 4 ulp of |x * s| + |t|, the size of what is summed (the activations'
    slopes are at most 1.1)."""
    from engine.ops.activation import apply_activation
    c, shape = 24, (2, 24, 40, 40)
    x = randn(rng, *shape)
    x[0, 3, 5, 5] = np.nan
    s, b, mean = randn(rng, c), randn(rng, c), randn(rng, c, scale=0.3)
    var = rng.uniform(0.2, 2.0, c).astype(np.float32)
    inits = {"s": s, "b": b, "m": mean, "v": var}
    nodes = [h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"])]
    if act == "Clip6":
        inits.update(lo=np.array(0, np.float32), hi=np.array(6, np.float32))
        nodes.append(h.make_node("Clip", ["n", "lo", "hi"], ["y"]))
    elif act == "Sigmoid*":      # SiLU as exporters write it
        nodes += [h.make_node("Sigmoid", ["n"], ["g"]), h.make_node("Mul", ["n", "g"], ["y"])]
    else:
        nodes.append(h.make_node(act, ["n"], ["y"]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(v, k) for k, v in inits.items()])
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    assert [n.op for n in model.graph.nodes] == ["BatchNormalization"], model.graph.nodes
    name = {"Relu": "relu", "Clip6": "relu6", "HardSwish": "hardswish", "Sigmoid*": "silu"}[act]
    assert model.graph.nodes[0].attrs["activation"] == name
    assert "fused 1 activations into batch normalizations" in model.explain()
    got = [model.run({"x": x}, num_threads=t)["y"] for t in (1, 2)]
    assert np.array_equal(got[0], got[1], equal_nan=True)
    # the two steps: scale and shift as the op computes them, then the activation
    op = model._ops[model.graph.nodes[0].name]
    view = (1, c, 1, 1)
    scaled = x * op.scale.reshape(view)
    want = scaled + op.shift.reshape(view)
    bound = 4 * np.spacing(np.abs(scaled) + np.abs(op.shift.reshape(view)))
    apply_activation(want, name)
    assert np.isnan(got[0][0, 3, 5, 5]) and np.isnan(want[0, 3, 5, 5])
    ok = ~np.isnan(want)
    np.testing.assert_array_less(np.abs(got[0] - want)[ok], bound[ok])
    close_ort(np.nan_to_num(got[0]), np.nan_to_num(run_ort(h.make_model(
        g, opset_imports=[h.make_opsetid("", 17)]), {"x": x})[0]))


# ============================================================================ malformed nodes

MALFORMED = [
    ("LayerNormalization", (2, 3), [("s", np.ones(3, np.float32))], {"axis": 2}, "axis 2"),
    ("LayerNormalization", (2, 3), [("s", np.ones(3, np.float32))], {"axis": -3}, "axis -3"),
    ("LayerNormalization", (2, 3), [("s", np.ones(2, np.float32))], {}, "Scale"),
    ("LayerNormalization", (2, 3), [("s", np.ones((2, 2, 3), np.float32))], {}, "Scale"),
    ("LayerNormalization", (2, 3), [("s", np.ones(3, np.float32)),
                                    ("b", np.ones(4, np.float32))], {}, "B of shape"),
    ("LayerNormalization", (2, 3), [("s", np.ones(3, np.float32))], {"epsilon": -1.0},
     "epsilon"),
    ("LayerNormalization", (2, 3), [("s", np.ones(3, np.float32))], {"stash_type": 0},
     "stash_type"),
    ("LayerNormalization", (2, 3), [("s", np.ones(3))], {}, "float32"),
    ("GroupNormalization", (2, 6, 3), [("s", np.ones(4, np.float32)),
                                       ("b", np.ones(4, np.float32))], {"num_groups": 4},
     "groups"),
    ("GroupNormalization", (2, 6, 3), [("s", np.ones(3, np.float32)),
                                       ("b", np.ones(3, np.float32))], {"num_groups": 2},
     "scale must have shape"),
    ("GroupNormalization", (2, 6, 3), [("s", np.ones(2, np.float32)),
                                       ("b", np.ones(6, np.float32))], {"num_groups": 2},
     "scale must have shape"),      # opset 21: per channel, so a per-group scale is wrong
    ("GroupNormalization", (2, 6, 3), [("s", np.ones((2, 1), np.float32)),
                                       ("b", np.ones((2, 1), np.float32))], {"num_groups": 2},
     "scale must have shape"),
    ("GroupNormalization", (2, 6, 3), [("s", np.ones(6, np.float32)),
                                       ("b", np.ones(6, np.float32))], {"num_groups": 0},
     "num_groups"),
    ("GroupNormalization", (2, 6, 3), [("s", np.ones(6, np.float32)),
                                       ("b", np.ones(6, np.float32))], {}, "num_groups"),
    ("GroupNormalization", (6,), [("s", np.ones(6, np.float32)),
                                  ("b", np.ones(6, np.float32))], {"num_groups": 2}, "rank"),
    ("InstanceNormalization", (2, 3), [("s", np.ones(3, np.float32)),
                                       ("b", np.ones(3, np.float32))], {}, "rank 3"),
    ("InstanceNormalization", (2, 3, 4), [("s", np.ones(4, np.float32)),
                                          ("b", np.ones(3, np.float32))], {}, "scale must"),
    ("InstanceNormalization", (2, 3, 4), [("s", np.ones(3, np.float32)),
                                          ("b", np.ones((1, 3), np.float32))], {}, "B must"),
    ("InstanceNormalization", (2, 3, 4), [("s", np.ones(3, np.float32)),
                                          ("b", np.ones(3, np.float32))],
     {"epsilon": float("nan")}, "epsilon"),
    ("MeanVarianceNormalization", (2, 3, 4), [], {}, "axes entry 3"),
    ("MeanVarianceNormalization", (2, 3, 4), [], {"axes": [1, -2]}, "twice"),
    ("MeanVarianceNormalization", (2, 3, 4), [], {"axes": [5]}, "axes entry 5"),
]


@pytest.mark.parametrize("op,shape,params,attrs,match", MALFORMED,
                         ids=[f"{c[0]}-{c[4]}" for c in MALFORMED])
def test_malformed_nodes(op, shape, params, attrs, match):
    opset = 21 if op == "GroupNormalization" else 17
    m = make(op, shape, params, attrs, opset=opset)
    with pytest.raises(engine.ModelError, match=match):
        model = engine.load(m)
        model.run({"x": np.zeros(shape, np.float32)})


def test_layer_norm_float64_stash_without_statistics(rng):
    """stash_type 11 (float64) only sets the precision: accepted when no statistics are
    asked for, refused with them (ONNX's Mean and InvStdDev are float32 or bfloat16)."""
    x = randn(rng, 2, 5)
    m = make("LayerNormalization", x.shape, [("s", np.ones(5, np.float32))],
             {"stash_type": 11})
    close_ref(run_engine(m, {"x": x})[0], *affine_ref(standardised(x, (1,), 1e-5)[0], 1.0,
                                                       None))
    m = make("LayerNormalization", x.shape, [("s", np.ones(5, np.float32))],
             {"stash_type": 11}, outputs=("y", "mean"))
    with pytest.raises(engine.ModelError, match="stash_type"):
        engine.load(m)


# ============================================================================ fusions

def ir_graph(m):
    """The engine's IR for an ONNX model, node for node (no operator needs a plan here, so
    the decomposed chains stay as exported whatever operators the engine has)."""
    consts = {t.name: nh.to_array(t) for t in m.graph.initializer}
    nodes = []
    for k, n in enumerate(m.graph.node):
        attrs = {}
        for a in n.attribute:
            v = h.get_attribute_value(a)
            attrs[a.name] = nh.to_array(v) if isinstance(v, onnx.TensorProto) else \
                v.decode() if isinstance(v, bytes) else v
        if n.op_type == "Constant":
            consts[n.output[0]] = np.asarray(attrs["value"])
            continue
        nodes.append(Node(n.op_type, n.name or f"{n.op_type}_{k}", list(n.input),
                          list(n.output), attrs))
    shape = lambda vi: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)  # noqa: E731
    inputs = [TensorSpec(vi.name, shape(vi), "float32") for vi in m.graph.input
              if vi.name not in consts]
    outputs = [TensorSpec(vi.name, None, "float32") for vi in m.graph.output]
    return Graph(nodes, inputs, outputs, consts)


def torch_export(module, x, opset):
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(x),), buf, opset_version=opset,
                          dynamo=False, input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


def fused_run(m, fuse, x):
    """(ops of the fused graph, its output, ONNX Runtime's output of the unfused model)."""
    g = ir_graph(m)
    n = fuse(g)
    ops = [node.op for node in g.nodes]
    y = Model(g).run({"x": x})["y"] if n else None
    return n, ops, y, run_ort(m, {"x": x})[0]


def torch_layer_norms():
    torch = pytest.importorskip("torch")

    class LayerNorm2d(torch.nn.Module):
        """torchvision's channels-first LayerNorm: permute, LayerNorm, permute back."""

        def __init__(self, c):
            super().__init__()
            self.ln = torch.nn.LayerNorm(c, eps=1e-6)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    nets = {"ln": torch.nn.LayerNorm(8), "ln_plain": torch.nn.LayerNorm(8,
                                                                        elementwise_affine=False),
            "ln_2axes": torch.nn.LayerNorm((3, 8)), "ln2d": LayerNorm2d(8)}
    for net in nets.values():
        for p in net.parameters():
            torch.nn.init.normal_(p)
    return nets


@pytest.mark.parametrize("name", ["ln", "ln_plain", "ln_2axes", "ln2d"])
@pytest.mark.parametrize("opset", [11, 13])
def test_fuse_layer_norm_torch_exports(rng, name, opset):
    net = torch_layer_norms()[name]
    x = randn(rng, 2, 8, 4, 3) if name == "ln2d" else randn(rng, 2, 3, 8, shift=3.0)
    n, ops, y, ref = fused_run(torch_export(net, x, opset), fuse_layer_norm, x)
    assert n == 1
    expect = ["Transpose", "LayerNormalization", "Transpose"] if name == "ln2d" \
        else ["LayerNormalization"]
    assert ops == expect
    np.testing.assert_allclose(y, ref, rtol=0, atol=FUSED_ATOL)


@pytest.mark.parametrize("opset", [13, 18])
def test_fuse_layer_norm_after_the_importer(rng, opset):
    """The chain as engine/io/onnx_import.py hands it over (when the engine reads its
    operators), fused, computes what ONNX Runtime computes unfused."""
    from engine.io import onnx_import
    m = decomposed_ln("plain", opset=opset)
    if any(onnx_import.converter(n.op_type) is None for n in m.graph.node):
        pytest.skip("the engine does not read every operator of the chain")
    x = randn(rng, 2, 3, 8)
    unfused = run_ort(m, {"x": x})[0]
    g = onnx_import.load(m)
    assert fuse_layer_norm(g) == 1 and [n.op for n in g.nodes] == ["LayerNormalization"]
    np.testing.assert_allclose(Model(g).run({"x": x})["y"], unfused, rtol=0, atol=FUSED_ATOL)


def decomposed_ln(variant, axes=(-1,), eps=1e-5, shape=(2, 3, 8), opset=13, extra_output=None):
    """A decomposed LayerNorm written by hand in one of the orders exporters use."""
    c = shape[-1]
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(eps, np.float32),
             "w": np.linspace(0.5, 1.5, c).astype(np.float32),
             "bias": np.linspace(-1, 1, c).astype(np.float32)}
    if opset >= 18:
        inits["axes"] = np.array(axes, np.int64)
        rm = lambda i, o: h.make_node("ReduceMean", [i, "axes"], [o])  # noqa: E731
    else:
        rm = lambda i, o: h.make_node("ReduceMean", [i], [o], axes=list(axes))  # noqa: E731
    square = h.make_node("Mul", ["d", "d"], ["sq"]) if "muld" in variant \
        else h.make_node("Pow", ["d", "two"], ["sq"])
    add = h.make_node("Add", ["eps", "var"], ["ve"]) if "eps_first" in variant \
        else h.make_node("Add", ["var", "eps"], ["ve"])
    if "recip" in variant:
        divide = [h.make_node("Reciprocal", ["std"], ["r"]), h.make_node("Mul", ["r", "d"],
                                                                         ["n"])]
    else:
        divide = [h.make_node("Div", ["d", "std"], ["n"])]
    affine = [h.make_node("Mul", ["w", "n"], ["ns"]), h.make_node("Add", ["bias", "ns"], ["y"])]
    if "bias_only" in variant:
        affine = [h.make_node("Add", ["n", "bias"], ["y"])]
    nodes = [rm("x", "mean"), h.make_node("Sub", ["x", "mean"], ["d"]), square,
             rm("sq", "var"), add, h.make_node("Sqrt", ["ve"], ["std"])] + divide + affine
    outs = [h.make_tensor_value_info("y", T.FLOAT, None)]
    if extra_output:
        outs.append(h.make_tensor_value_info(extra_output, T.FLOAT, None))
    g = h.make_graph(nodes, "ln", [h.make_tensor_value_info("x", T.FLOAT, shape)], outs,
                     [nh.from_array(v, k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


@pytest.mark.parametrize("variant", ["plain", "muld", "eps_first", "recip", "muld_recip",
                                     "bias_only"])
@pytest.mark.parametrize("opset", [13, 18])
def test_fuse_layer_norm_orders(rng, variant, opset):
    x = randn(rng, 2, 3, 8, scale=2.0)
    n, ops, y, ref = fused_run(decomposed_ln(variant, opset=opset), fuse_layer_norm, x)
    assert (n, ops) == (1, ["LayerNormalization"])
    np.testing.assert_allclose(y, ref, rtol=0, atol=FUSED_ATOL)


@pytest.mark.parametrize("axes,fused", [((2,), True), ((-2, -1), True), ((1, 2), True),
                                        ((1,), False), ((0, 2), False), ((-1, 2), False)])
def test_fuse_layer_norm_axes(rng, axes, fused):
    """Positive axes count from the declared input rank (3); only trailing runs fuse."""
    x = randn(rng, 2, 3, 8)
    n, ops, y, ref = fused_run(decomposed_ln("plain", axes=axes), fuse_layer_norm, x)
    assert n == int(fused)
    if fused:
        assert ops == ["LayerNormalization"]
        np.testing.assert_allclose(y, ref, rtol=0, atol=FUSED_ATOL)


@pytest.mark.parametrize("change", ["mean_out", "d_out", "std_out", "eps0", "eps_neg",
                                    "eps_vector", "pow3"])
def test_fuse_layer_norm_refuses(change):
    kw = {"mean_out": dict(extra_output="mean"), "d_out": dict(extra_output="d"),
          "std_out": dict(extra_output="std"), "eps0": dict(eps=0.0),
          "eps_neg": dict(eps=-1e-5)}.get(change, {})
    m = decomposed_ln("plain", **kw)
    if change == "eps_vector":
        m.graph.initializer[1].CopyFrom(nh.from_array(np.full(8, 1e-5, np.float32), "eps"))
    if change == "pow3":
        m.graph.initializer[0].CopyFrom(nh.from_array(np.array(3.0, np.float32), "two"))
    g = ir_graph(m)
    before = [n.op for n in g.nodes]
    assert fuse_layer_norm(g) == 0
    assert [n.op for n in g.nodes] == before


gelu_needed = pytest.mark.skipif("Gelu" not in OPS, reason="no Gelu plan in this tree yet")


@gelu_needed
@pytest.mark.parametrize("opset", [11, 13, 17])
def test_fuse_gelu_torch_export(rng, opset):
    torch = pytest.importorskip("torch")
    x = randn(rng, 2, 3, 8, scale=2.0)
    n, ops, y, ref = fused_run(torch_export(torch.nn.GELU(), x, opset), fuse_gelu, x)
    assert (n, ops) == (1, ["Gelu"])
    np.testing.assert_allclose(y, ref, rtol=0, atol=FUSED_ATOL)


def decomposed_gelu(order, half=0.5, one=1.0, root=math.sqrt(2), extra_output=None):
    inits = {"half": np.array(half, np.float32), "one": np.array(one, np.float32),
             "root": np.array(root, np.float32),
             "inv_root": np.array(1 / root, np.float32)}
    scale = h.make_node("Mul", ["inv_root", "x"], ["u"]) if "mul_root" in order \
        else h.make_node("Div", ["x", "root"], ["u"])
    nodes = [scale, h.make_node("Erf", ["u"], ["e"]), h.make_node("Add", ["one", "e"], ["a"])]
    if order.startswith("x_half"):       # (x * 0.5) * (1 + erf)
        nodes += [h.make_node("Mul", ["x", "half"], ["xh"]),
                  h.make_node("Mul", ["a", "xh"], ["y"])]
    elif order.startswith("a_half"):     # ((1 + erf) * 0.5) * x
        nodes += [h.make_node("Mul", ["half", "a"], ["ah"]),
                  h.make_node("Mul", ["x", "ah"], ["y"])]
    else:                                # (x * (1 + erf)) * 0.5
        nodes += [h.make_node("Mul", ["a", "x"], ["xa"]),
                  h.make_node("Mul", ["half", "xa"], ["y"])]
    outs = [h.make_tensor_value_info("y", T.FLOAT, None)]
    if extra_output:
        outs.append(h.make_tensor_value_info(extra_output, T.FLOAT, None))
    g = h.make_graph(nodes, "gelu", [h.make_tensor_value_info("x", T.FLOAT, (2, 3, 8))], outs,
                     [nh.from_array(v, k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=9)


@gelu_needed
def test_fuse_gelu_after_the_importer(rng):
    from engine.io import onnx_import
    torch = pytest.importorskip("torch")
    x = randn(rng, 2, 3, 8)
    m = torch_export(torch.nn.GELU(), x, 13)
    if any(onnx_import.converter(n.op_type) is None for n in m.graph.node):
        pytest.skip("the engine does not read every operator of the chain")
    unfused = run_ort(m, {"x": x})[0]
    g = onnx_import.load(m)
    assert fuse_gelu(g) == 1 and [n.op for n in g.nodes] == ["Gelu"]
    np.testing.assert_allclose(Model(g).run({"x": x})["y"], unfused, rtol=0, atol=FUSED_ATOL)


@gelu_needed
@pytest.mark.parametrize("order", ["x_a", "x_half", "a_half", "x_a_mul_root",
                                   "x_half_mul_root"])
def test_fuse_gelu_orders(rng, order):
    x = randn(rng, 2, 3, 8, scale=2.0)
    n, ops, y, ref = fused_run(decomposed_gelu(order), fuse_gelu, x)
    assert (n, ops) == (1, ["Gelu"])
    np.testing.assert_allclose(y, ref, rtol=0, atol=FUSED_ATOL)


@gelu_needed
@pytest.mark.parametrize("change", [dict(half=0.6), dict(one=1.001), dict(root=1.5),
                                    dict(extra_output="e"), dict(extra_output="a"),
                                    dict(extra_output="u")])
def test_fuse_gelu_refuses(change):
    g = ir_graph(decomposed_gelu("x_a", **change))
    before = [n.op for n in g.nodes]
    assert fuse_gelu(g) == 0
    assert [n.op for n in g.nodes] == before
