"""MatMulBias (engine/graph/ops/linalg.py): a MatMul by constant weights, the Add of a constant
bias after it and the activation after that, fused at load (engine/graph/passes.py
fuse_matmul_bias, fuse_activations) into one step of the packed GEMM, as exporters write a
Linear layer on a tensor of more than two dimensions (ConvNeXt's, an MLP block's).

The fused step must give the unfused nodes' values bit for bit: the bias is the last term of
each sum (added after the sum over k, in the output step), which rounds as the Add after the
product does, and the activation is the same vector formula. Against float64 and ONNX
Runtime as in tests/test_onnx_import.py: per element, 1e-5 of the sum of |terms| (and the
activation's own stated error, tests/test_activation_kernels.py, far below it).
"""
import numpy as np
import pytest

import engine
from engine._kernels import conv_pointwise
from engine._threads import threads_for
from engine.ops.activation import float64_activation, kernel_act
from engine.ops.packed_gemm import ConstantRight, pack_panels
from engine.ops.workspace import aligned_zeros

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402


def vi(name, shape=None):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def linear(a_shape, w, bias, act, extra_output=False, opset=17):
    """x -> MatMul(W) -> Add(bias) -> act, erf-form GELU written out as exporters do."""
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"]), h.make_node("Add", ["mm", "B"], ["z"])]
    inits = {"W": w, "B": bias}
    if act == "relu":
        nodes.append(h.make_node("Relu", ["z"], ["y"]))
    elif act == "gelu":
        inits.update(sqrt2=np.array(np.sqrt(2.0), np.float32), one=np.array(1.0, np.float32),
                     half=np.array(0.5, np.float32))
        nodes += [h.make_node("Div", ["z", "sqrt2"], ["d"]), h.make_node("Erf", ["d"], ["e"]),
                  h.make_node("Add", ["e", "one"], ["p"]), h.make_node("Mul", ["z", "p"], ["q"]),
                  h.make_node("Mul", ["q", "half"], ["y"])]
    else:
        nodes.append(h.make_node("Identity", ["z"], ["y"]))
    outputs = [vi("y")] + ([vi("mm")] if extra_output else [])
    g = h.make_graph(nodes, "linear", [vi("x", list(a_shape))], outputs,
                     [nh.from_array(np.asarray(v), k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("a_shape", [(1, 28, 28, 96), (2, 7, 40), (1, 5, 3)])
@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_fused_linear_layer_equals_the_unfused_nodes_bit_for_bit(rng, a_shape, act):
    k, n = a_shape[-1], 70
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal(a_shape).astype(np.float32)
    fused = engine.load(linear(a_shape, w, bias, act))
    ops = [node.op for node in fused.graph.nodes]
    assert ops == ["MatMulBias"], ops
    text = fused.explain()
    if act:
        assert f"+ {act} in the output step" in text, text
    # the MatMul's output is also a graph output: nothing fuses
    unfused = engine.load(linear(a_shape, w, bias, act, extra_output=True))
    assert "MatMulBias" not in [node.op for node in unfused.graph.nodes]
    outs = [fused.run({"x": x}, num_threads=t)["y"] for t in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], unfused.run({"x": x})["y"])
    z = x.astype(np.float64) @ w + bias
    ref = {None: z, "relu": np.maximum(z, 0)}.get(act)
    if act == "gelu":
        ref = float64_activation("gelu", z)
    terms = np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(bias)
    assert np.all(np.abs(outs[0] - ref) <= 1e-5 * terms + 1e-30)


def test_two_threads_share_a_large_fused_layer(rng):
    a_shape, n = (1, 56, 56, 96), 384
    assert threads_for(56 * 56 * 96 * n, 2) == 2
    w = rng.standard_normal((96, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    model = engine.load(linear(a_shape, w, bias, "gelu"))
    x = rng.standard_normal(a_shape).astype(np.float32)
    np.testing.assert_array_equal(model.run({"x": x}, num_threads=1)["y"],
                                  model.run({"x": x}, num_threads=2)["y"])


def test_only_a_constant_vector_of_the_columns_fuses(rng):
    w = rng.standard_normal((8, 6)).astype(np.float32)
    x = rng.standard_normal((2, 20, 8)).astype(np.float32)
    for bias in (np.ones((1, 6), np.float32), np.ones((20, 6), np.float32),
                 np.ones(1, np.float32)):
        model = engine.load(linear(x.shape, w, bias, None))
        assert "MatMulBias" not in [node.op for node in model.graph.nodes]
        np.testing.assert_allclose(model.run({"x": x})["y"],
                                   x @ w + bias, rtol=1e-5, atol=1e-5)


def test_the_kernel_reads_a_in_place_over_every_tail(rng):
    """f32_gemm_rows against float64 for row counts off the 8-row block, columns off the panel,
    K from 1, with and without bias, relu and gelu: per element 1e-5 of the sum of |terms|
    (with the bias) plus GELU's own error; bit-identical at 1 and 2 threads, for either split
    of the work, and for one or two panels a call (a call's run of panels starting past the
    first, ending on the tail)."""
    mr, nr = conv_pointwise.ROW_BLOCK, conv_pointwise.PANEL
    for m, k, n in [(1, 1, 1), (7, 3, 5), (8, 16, nr), (13, 21, nr + 3), (17, 64, 2 * nr - 1),
                    (130, 40, 3 * nr + 7)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        panels = pack_panels(b)
        for with_bias in (False, True):
            cb = np.zeros(-(-n // nr) * nr if with_bias else 0, np.float32)
            if with_bias:
                cb[:n] = bias
            for act in (None, "relu", "gelu"):
                z = a.astype(np.float64) @ b + (bias if with_bias else 0.0)
                want = float64_activation(act, z)
                terms = np.abs(a).astype(np.float64) @ np.abs(b) + (
                    np.abs(bias) if with_bias else 0.0)
                outs = []
                for threads, split_rows, gp in ((1, False, 1), (2, False, 1), (2, True, 1),
                                                (1, True, 2), (2, True, 2)):
                    out = np.full((m, n), np.nan, np.float32)
                    conv_pointwise.f32_gemm_rows(a, panels, cb, out, split_rows, gp,
                                                 kernel_act(act), threads)
                    outs.append(out)
                for out in outs[1:]:
                    np.testing.assert_array_equal(out, outs[0])
                assert np.all(np.abs(outs[0] - want) <= 1e-5 * terms + 1e-6 * np.abs(want)
                              + 1e-30), (m, k, n, with_bias, act)


def test_the_kernel_checks_its_operands(rng):
    nr = conv_pointwise.PANEL
    a = rng.standard_normal((9, 4)).astype(np.float32)
    panels = pack_panels(rng.standard_normal((4, 6)).astype(np.float32))
    out = np.zeros((9, 6), np.float32)
    act = kernel_act(None)
    with pytest.raises(ValueError, match="bpanels"):
        conv_pointwise.f32_gemm_rows(a[:, :3].copy(), panels, np.zeros(0, np.float32), out,
                                     False, 1, act, 1)
    with pytest.raises(ValueError, match="colbias"):
        conv_pointwise.f32_gemm_rows(a, panels, np.zeros(6, np.float32), out, False, 1, act, 1)
    with pytest.raises(ValueError, match="out must have 9 rows"):
        conv_pointwise.f32_gemm_rows(a, panels, np.zeros(nr, np.float32), out[:8], False, 1,
                                     act, 1)
    with pytest.raises(ValueError, match="group_panels"):
        conv_pointwise.f32_gemm_rows(a, panels, np.zeros(0, np.float32), out, False, 0, act, 1)
    shifted = aligned_zeros(panels.size + 1)[1:]        # 4 bytes past a 64-byte boundary
    shifted[:] = panels
    with pytest.raises(ValueError, match="64-byte"):
        conv_pointwise.f32_gemm_rows(a, shifted, np.zeros(0, np.float32), out, False, 1, act, 1)


def test_a_product_over_no_terms_is_its_bias():
    w = np.zeros((0, 5), np.float32)
    bias = np.arange(5, dtype=np.float32) - 2
    gemm = ConstantRight(w, bias, "relu")
    out = np.full((3, 5), np.nan, np.float32)
    gemm.run(np.zeros((3, 0), np.float32), out, 2)
    np.testing.assert_array_equal(out, np.maximum(bias, 0)[None].repeat(3, 0))


def test_a_fused_linear_layer_survives_the_native_file(rng, tmp_path):
    w = rng.standard_normal((32, 24)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    x = rng.standard_normal((1, 9, 9, 32)).astype(np.float32)
    model = engine.load(linear(x.shape, w, bias, "gelu"))
    model.save(tmp_path / "m.safetensors")
    again = engine.load(tmp_path / "m.safetensors")
    assert [node.op for node in again.graph.nodes] == ["MatMulBias"]
    np.testing.assert_array_equal(again.run({"x": x})["y"], model.run({"x": x})["y"])


def test_pack_panels_layout(rng):
    from engine.ops.packed_gemm import PANEL, pack_panels
    for k, n in [(1, 1), (5, PANEL), (7, PANEL + 3), (3, 3 * PANEL - 1)]:
        b = rng.standard_normal((k, n)).astype(np.float32)
        got = pack_panels(b)
        assert got.ctypes.data % 64 == 0
        panels = got.reshape(-1, k, PANEL)
        for col in range(-(-n // PANEL) * PANEL):
            want = b[:, col] if col < n else np.zeros(k, np.float32)
            np.testing.assert_array_equal(panels[col // PANEL, :, col % PANEL], want)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 5, 33), (49, 64, 300), (200, 40, 31),
                                     (9, 300, 64)])
@pytest.mark.parametrize("act", [None, "gelu", "leaky_relu(0.1)"])
@pytest.mark.parametrize("budget", [None, 1])
def test_constant_right_against_float64_at_one_and_two_threads(rng, m, k, n, act, budget,
                                                               monkeypatch):
    """Both thread splits (rows when M > N, else panels), one panel per group (budget 1) or
    as many as fit, tails of rows and columns; per element against float64."""
    from engine.ops import packed_gemm
    if budget is not None:
        monkeypatch.setattr(packed_gemm, "PANELS_BYTES", budget)
        assert packed_gemm.share_split(k + 1, m, n, 2)[1] == 1
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    gemm = packed_gemm.ConstantRight(b, bias, act)
    outs = []
    for threads in (1, 2):
        out = np.full((m, n), np.nan, np.float32)
        gemm.run(a, out, threads)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    z = a.astype(np.float64) @ b + bias
    ref = z if act is None else float64_activation(act, z)
    terms = np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(bias)
    assert np.all(np.abs(outs[0] - ref) <= 1e-5 * terms + 1e-30)


def scaled_linear(w, bias, gamma, through_transpose, extra_reader=False):
    """x (NHWC) -> MatMul(W) -> Add(bias) [-> Transpose to NCHW] -> Mul(gamma): a Linear layer
    and a layer scale, as ConvNeXt's block ends."""
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"]), h.make_node("Add", ["mm", "B"], ["z"])]
    t = "z"
    if through_transpose:
        nodes.append(h.make_node("Transpose", ["z"], ["t"], perm=[0, 3, 1, 2]))
        t = "t"
    nodes.append(h.make_node("Mul", [t, "G"], ["y"]))
    outputs = [vi("y")] + ([vi(t)] if extra_reader else [])
    g = h.make_graph(nodes, "scaled", [vi("x", [2, 5, 7, w.shape[0]])], outputs,
                     [nh.from_array(v, k) for k, v in (("W", w), ("B", bias), ("G", gamma))])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("through_transpose, gamma_shape, folds", [
    (True, (24, 1, 1), True),           # ConvNeXt's layer scale on NCHW
    (True, (1, 24, 1, 1), True),
    (False, (24,), True),               # straight after the product
    (True, (7,), False),                # along the width: not the product's columns
    (False, (1, 1, 24), False),         # could broadcast the rank up: left alone
    (True, (24, 5, 1), False),          # not one value per column
])
def test_a_per_column_scale_folds_into_the_product(rng, through_transpose, gamma_shape,
                                                   folds):
    """engine/graph/passes.py fold_scale_into_matmul_bias: where the Mul's constant scales
    only the product's columns the Mul is gone and B, bias are scaled; elsewhere the nodes
    stay. Either way per element against float64: 1e-5 of the sum of |terms| times |scale|."""
    k, n = 16, 24
    w, bias = f32(rng, k, n), f32(rng, n)
    gamma = (rng.standard_normal(gamma_shape) * 0.1).astype(np.float32)
    x = f32(rng, 2, 5, 7, k)
    model = engine.load(scaled_linear(w, bias, gamma, through_transpose))
    ops = [node.op for node in model.graph.nodes]
    assert ("Mul" not in ops) == folds and "MatMulBias" in ops
    got = model.run({"x": x})["y"]
    z = x.astype(np.float64) @ w + bias
    terms = np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(bias)
    if through_transpose:
        z, terms = z.transpose(0, 3, 1, 2), terms.transpose(0, 3, 1, 2)
    want, bound = z * gamma, 1e-5 * terms * np.abs(gamma) + 1e-30
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound)


def test_a_scale_does_not_fold_past_a_product_read_twice(rng):
    """The Transpose's output also a graph output: it must keep the unscaled values."""
    w, bias, gamma = f32(rng, 16, 24), f32(rng, 24), f32(rng, 24, 1, 1)
    x = f32(rng, 2, 5, 7, 16)
    out = engine.load(scaled_linear(w, bias, gamma, True, extra_reader=True)).run({"x": x})
    want = (x.astype(np.float64) @ w + bias).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out["t"], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["y"], want * gamma, rtol=1e-5, atol=1e-4)
