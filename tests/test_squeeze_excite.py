"""Squeeze-and-excitation as one step (engine/graph/fusions.py fuse_squeeze_excite,
engine/graph/ops/se.py, kernels/squeeze_excite.pyx f32_se_gates, kernels/nchwc_channels.pyx
f32_scale_blocked).

The fused step is checked against ONNX Runtime on the unfused graph, per element with
test_onnx_import's bound (1e-5 of |ref| + rms(ref): float32 sums in another order), on NCHW and
on channel blocks; the gate kernel against float64 NumPy with 1e-5 of the sum of |terms|; the
blocked scaling exactly (one product per element). 1 and 2 threads give the same bits.
"""
import numpy as np
import pytest

import engine
from engine._kernels import nchwc_channels, squeeze_excite
from engine.ops import blocked
from engine.ops.activation import float64_activation, kernel_act
from engine.ops.activation import NO_ACT

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper as h  # noqa: E402
from test_onnx_import import make, randn, run_both, vi  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def se_graph(rng, c, r, *, pool="gap", act="relu", gate="Sigmoid", biases=True,
             gate_first=False, before="dw", size=9):
    """x -> [depthwise 3x3 (so the block runs on channel blocks) or nothing] -> squeeze-excite
    -> 1x1 conv; act: the first 1x1's activation ("relu", "silu" as Sigmoid + Mul,
    "hardswish", None)."""
    inits = {"wa": randn(rng, r, c, 1, 1, scale=0.3), "wb": randn(rng, c, r, 1, 1, scale=0.3),
             "wo": randn(rng, 8, c, 1, 1), "wd": randn(rng, c, 1, 3, 3)}
    nodes = []
    x = "x"
    if before == "dw":
        nodes.append(h.make_node("Conv", ["x", "wd"], ["d"], pads=[1, 1, 1, 1], group=c))
        x = "d"
    if pool == "gap":
        nodes.append(h.make_node("GlobalAveragePool", [x], ["p"]))
    else:
        inits["axes"] = np.array([2, 3], np.int64)
        nodes.append(h.make_node("ReduceMean", [x, "axes"], ["p"], keepdims=1))
    ba = ["ba"] if biases else []
    bb = ["bb"] if biases else []
    if biases:
        inits["ba"], inits["bb"] = randn(rng, r), randn(rng, c)
    nodes.append(h.make_node("Conv", ["p", "wa"] + ba, ["a0"]))
    if act == "relu":
        nodes.append(h.make_node("Relu", ["a0"], ["a"]))
    elif act == "silu":
        nodes += [h.make_node("Sigmoid", ["a0"], ["as"]), h.make_node("Mul", ["a0", "as"], ["a"])]
    elif act == "hardswish":
        nodes.append(h.make_node("HardSwish", ["a0"], ["a"]))
    else:
        nodes.append(h.make_node("Identity", ["a0"], ["a"]))
    nodes.append(h.make_node("Conv", ["a", "wb"] + bb, ["b"]))
    if gate == "Sigmoid":
        nodes.append(h.make_node("Sigmoid", ["b"], ["s"]))
    else:
        nodes.append(h.make_node("HardSigmoid", ["b"], ["s"], alpha=1 / 6, beta=0.5))
    nodes.append(h.make_node("Mul", ["s", x] if gate_first else [x, "s"], ["e"]))
    nodes.append(h.make_node("Conv", ["e", "wo"], ["y"]))
    # ReduceMean takes its axes as an input from opset 18
    return make(nodes, [vi("x", [2, c, size, size])], [vi("y")], inits,
                opset=18 if pool == "mean" else 17)


CASES = [dict(c=40, r=10), dict(c=16, r=4, pool="mean", act="silu"),
         dict(c=72, r=24, act="hardswish", gate="HardSigmoid", gate_first=True),
         dict(c=20, r=3, act=None, biases=False), dict(c=33, r=8, before=None),
         dict(c=96, r=4, act="silu", size=30)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_block_matches_onnx_runtime(rng, case):
    c = case["c"]
    m = se_graph(rng, **case)
    x = randn(rng, 2, c, case.get("size", 9), case.get("size", 9))
    model, _ = run_both(m, {"x": x})
    ops = [n.op for n in model.graph.nodes]
    assert ops.count("SqueezeExcite") == 1 and "GlobalAveragePool" not in ops \
        and "Mul" not in ops, ops
    text = model.explain()
    assert "fused 1 squeeze-excite blocks into one step each" in text
    # after a blocked depthwise layer it pools and scales the blocks in place
    blocked_input = case.get("before", "dw") == "dw"
    assert ("squeeze-excite in one step" in text
            and (f"on the {blocked.NAME} input in place" in text) == blocked_input), text
    # the same values with the whole graph on NCHW
    nchw = engine.load(m, layout="nchw")
    np.testing.assert_allclose(nchw.run({"x": x})["y"], model.run({"x": x})["y"],
                               rtol=1e-5, atol=1e-5 * float(np.abs(model.run({"x": x})["y"]).max()))


def test_not_fused_where_a_part_has_another_reader(rng):
    m = se_graph(rng, 24, 6)
    m.graph.output.append(vi("p"))             # the pooled tensor is also an output
    model, _ = run_both(m, {"x": randn(rng, 2, 24, 9, 9)})
    assert "SqueezeExcite" not in [n.op for n in model.graph.nodes]


def test_not_fused_when_a_convolution_is_not_a_plain_1x1(rng):
    m = se_graph(rng, 24, 6)
    conv = [n for n in m.graph.node if n.op_type == "Conv" and n.input[0] == "p"][0]
    conv.attribute.append(h.make_attribute("strides", [2, 2]))
    model, _ = run_both(m, {"x": randn(rng, 2, 24, 9, 9)})
    assert "SqueezeExcite" not in [n.op for n in model.graph.nodes]


def test_one_and_two_threads_give_the_same_bits(rng):
    m = se_graph(rng, 96, 24, act="silu", size=40)
    model = engine.load(m)
    assert "SqueezeExcite" in [n.op for n in model.graph.nodes]
    x = randn(rng, 2, 96, 40, 40)
    ys = [model.run({"x": x}, num_threads=t)["y"] for t in (1, 2)]
    np.testing.assert_array_equal(ys[0], ys[1])


def test_native_file_keeps_the_fused_step(rng, tmp_path):
    m = se_graph(rng, 40, 10)
    model = engine.load(m)
    path = tmp_path / "se.safetensors"
    model.save(path)
    again = engine.load(path)
    x = randn(rng, 2, 40, 9, 9)
    assert "SqueezeExcite" in [n.op for n in again.graph.nodes]
    np.testing.assert_array_equal(again.run({"x": x})["y"], model.run({"x": x})["y"])


# ---------------------------------------------------------------------------- the kernels

@pytest.mark.parametrize("act", [None, "relu", "relu6", "silu", "hardswish", "gelu", "tanh",
                                 "leaky_relu(0.1)"])
@pytest.mark.parametrize("gate", [0, 1])
@pytest.mark.parametrize("n,c,r", [(1, 40, 10), (2, 17, 1), (1, 1152, 48), (3, 5, 33),
                                   (2, 130, 70), (1, 960, 240)])
def test_gates_match_float64(rng, act, gate, n, c, r):
    """Also: two threads, sharing ranges of 64 outputs of each product (a tail range of 6 and
    2 hidden values, 960 -> 240 -> 960 in four and fifteen), give the same bits."""
    p = randn(rng, n, c, scale=2)
    w1, b1 = randn(rng, r, c, scale=0.5), randn(rng, r)
    w2, b2 = randn(rng, c, r, scale=0.5), randn(rng, c)
    width = blocked.blocks(c) * blocked.BLOCK
    out = np.full((n, width), np.nan, np.float32)
    squeeze_excite.f32_se_gates(p, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T), b2,
                       kernel_act(act), gate, 1 / 6, 0.5, out)
    two = np.full((n, width), np.nan, np.float32)
    squeeze_excite.f32_se_gates(p, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T),
                                b2, kernel_act(act), gate, 1 / 6, 0.5, two, 2)
    np.testing.assert_array_equal(out, two)
    p64, w164, w264 = p.astype(np.float64), w1.astype(np.float64), w2.astype(np.float64)
    hidden = p64 @ w164.T + b1
    mag1 = np.abs(p64) @ np.abs(w164).T + np.abs(b1)
    if act == "relu":
        hidden = np.maximum(hidden, 0)
    elif act == "relu6":
        hidden = np.clip(hidden, 0, 6)
    elif act is not None:
        hidden = float64_activation(act, hidden)
    pre = hidden @ w264.T + b2
    # the first product's error (1e-5 of its |terms|, grown up to 1.5x by the activation)
    # carried through |W2|, plus the second's own
    mag = (1.5 * 1e-5 * mag1 + 1e-6) @ np.abs(w264).T + 1e-5 * (np.abs(hidden) @ np.abs(w264).T
                                                                 + np.abs(b2))
    with np.errstate(over="ignore"):        # exp(-pre) of a very negative pre: inf, gate 0
        want = 1 / (1 + np.exp(-pre)) if gate == 0 else np.clip(pre / 6 + 0.5, 0, 1)
    # both gates have slopes at most 1/4 and 1/6; 4 ulp for the gate's own rounding
    assert np.all(np.abs(out[:, :c] - want) <= 0.25 * mag + 4 * 2.0 ** -23)
    assert not np.any(out[:, c:])


def test_blocked_scaling_is_exact_and_thread_independent(rng):
    B = blocked.BLOCK
    x = randn(rng, 2, 3, 7, 5, B)
    s = randn(rng, 2, 3 * B)
    outs = []
    for t in (1, 2):
        out = np.empty_like(x)
        nchwc_channels.f32_scale_blocked(x, s, out, t)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], x * s.reshape(2, 3, 1, 1, B))
    y = x.copy()
    nchwc_channels.f32_scale_blocked(y, s, y, 2)            # in place
    np.testing.assert_array_equal(y, outs[0])


def test_kernels_refuse_shapes_that_do_not_fit(rng):
    B = blocked.BLOCK
    x = randn(rng, 1, 2, 4, 4, B)
    with pytest.raises(ValueError):
        nchwc_channels.f32_scale_blocked(x, randn(rng, 1, B), np.empty_like(x), 1)
    with pytest.raises(ValueError):
        nchwc_channels.f32_scale_blocked(x, randn(rng, 1, 2 * B),
                                         np.empty((1, 2, 4, 3, B), np.float32), 1)
    p, w1t, w2t = randn(rng, 1, 8), randn(rng, 8, 2), randn(rng, 2, 8)
    b1, b2 = randn(rng, 2), randn(rng, 8)
    with pytest.raises(ValueError):
        squeeze_excite.f32_se_gates(p, w1t, b1, w2t, randn(rng, 7), NO_ACT, 0, 0.2, 0.5,
                           np.empty((1, 16), np.float32))
    with pytest.raises(ValueError):
        squeeze_excite.f32_se_gates(p, w1t, b1, w2t, b2, NO_ACT, 0, 0.2, 0.5,
                           np.empty((1, 7), np.float32))
    with pytest.raises(ValueError):
        squeeze_excite.f32_se_gates(p, w1t, b1, w2t, b2, {"code": 99, "alpha": 0.0, "beta": 0.0}, 0, 0.2,
                           0.5, np.empty((1, 8), np.float32))
