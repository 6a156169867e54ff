"""engine/dispatch/ beyond the convolution algorithm (tests/test_conv2d.py and the algorithm
files test that one): the layout's rules, the pool, Gemm and transposed-convolution paths, each
checked against the rule its module documents; explain() showing every choice with its reason;
and engine.load(layout=) forcing the layout. Values are compared with the all-NCHW plan within
float32 rounding, 1e-5 of the output's range (tests/test_nchwc.py's tolerance).
"""
import os

import numpy as np
import pytest

import engine
from engine.ops.blocked import BLOCK, NAME
from engine.dispatch import (ConvParams, blocked_kernel, choose_conv_transpose2d, choose_gemm,
                             choose_layout, choose_matmul, choose_onnx_transpose_path,
                             choose_pool_path,
                             why_not_layout)
from engine.dispatch.layout import pays_alone
from engine.graph import Graph, Model, Node, TensorSpec

DIGITS = os.path.join(os.path.dirname(engine.__file__), "data", "digits_net.safetensors")


def spec(name, shape=None):
    return TensorSpec(name, shape, "float32")


def test_layout_rules():
    pw = ConvParams(32, 64, (1, 1), (1, 1), (1, 1), 1, ((0, 0), (0, 0)), (14, 14))
    kind, why = blocked_kernel(pw)
    assert kind == "pointwise" and why
    # blocked only next to another layer with a blocked kernel, or when forced
    assert choose_layout(kind, why)[0] == "nchw"
    assert choose_layout(kind, why, "depthwise")[0] == "nchwc"
    assert choose_layout(kind, why, None, ["depthwise"])[0] == "nchwc"
    assert choose_layout(kind, why, "depthwise", forced="nchw") == (
        "nchw", "forced by the caller (layout='nchw')")
    assert choose_layout(kind, why, forced="nchwc")[0] == "nchwc"
    # a direct first layer reads NCHW: blocked only where its input is NCHW anyway and a
    # pointwise or depthwise layer reads its output
    first = ConvParams(3, 32, (3, 3), (2, 2), (1, 1), 1, ((1, 1), (1, 1)), (224, 224))
    kind, why = blocked_kernel(first)
    assert kind == "direct"
    assert choose_layout(kind, why, None, ["depthwise"])[0] == "nchwc"
    assert choose_layout(kind, why, "pointwise", ["depthwise"])[0] == "nchw"
    assert choose_layout(kind, why, None, ["direct"])[0] == "nchw"
    # 3x3 stride 1 from 8 input channels: Winograd on blocks (16-float rules), a residual too,
    # dilated too where NCHW's rules would run it by Winograd; fewer channels or groups: not
    square = ConvParams(64, 64, (3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)), (56, 56))
    assert blocked_kernel(square) == ("winograd", "the winograd blocked kernel runs it")
    assert blocked_kernel(square, residual=True)[0] == "winograd" and pays_alone("winograd",
                                                                                 square)
    assert blocked_kernel(square._replace(in_channels=5, out_channels=8))[0] == "dense"
    # an image's channels read as they are up to a 7x7 kernel (ResNet's stem), not 11x11
    stem = ConvParams(3, 64, (7, 7), (2, 2), (1, 1), 1, ((3, 3), (3, 3)), (224, 224))
    assert blocked_kernel(stem)[0] == "direct"
    assert blocked_kernel(stem._replace(kernel=(11, 11), stride=(4, 4)))[0] == "dense"
    # groups of whole blocks from GROUPED_WINOGRAD_MIN_PIXELS outputs; smaller maps, groups
    # within a block and dilated groups: not
    assert blocked_kernel(square._replace(groups=2))[0] == "winograd"
    assert blocked_kernel(square._replace(groups=2, in_size=(14, 14)))[0] != "winograd"
    # groups of half a block (8 channels with 16-float blocks): within blocks
    assert blocked_kernel(square._replace(groups=128 // BLOCK))[0] == "grouped"
    assert blocked_kernel(square._replace(groups=2, dilation=(2, 2),
                                          pads=((2, 2),) * 2))[0] != "winograd"
    assert blocked_kernel(square._replace(dilation=(2, 2), pads=((2, 2),) * 2))[0] == "winograd"
    # a rate past the map, its plane kept: live taps on blocks; the plane shrunk by a row: no
    # blocked kernel (NCHW's live taps), NCHW even when forced
    past = square._replace(dilation=(12, 12), pads=((12, 12),) * 2, in_size=(14, 14))
    assert blocked_kernel(past)[0] == "live_taps"
    kind, why = blocked_kernel(past._replace(pads=((12, 11), (12, 12))))
    assert kind is None and "576 taps" in why
    assert choose_layout(kind, why, "pointwise", forced="nchwc") == ("nchw", why)
    # depthwise with multiplier 1 only; a residual only on pointwise, of the output's shape
    dw = ConvParams(32, 32, (3, 3), (2, 2), (2, 2), 32, ((2, 2), (2, 2)), (14, 14))
    assert blocked_kernel(dw)[0] == "depthwise"
    assert blocked_kernel(ConvParams(32, 64, (3, 3), (1, 1), (1, 1), 32, ((1, 1),) * 2,
                                     (14, 14)))[0] is None
    assert blocked_kernel(dw, residual=True)[0] is None
    assert blocked_kernel(pw, residual=True)[0] == "pointwise"
    assert blocked_kernel(pw, residual=False)[0] is None
    assert blocked_kernel(pw, activation="sigmoid")[0] == "pointwise"
    assert blocked_kernel(pw, activation="swish")[0] is None
    assert why_not_layout("auto") is None and "layout must be one of" in why_not_layout("NCHW")


def test_pool_gemm_and_transposed_rules():
    # the pooling layers take symmetric pads of at most half the kernel
    assert choose_pool_path((8, 8), (4, 4), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)),
                            False)[0] == "direct"
    assert choose_pool_path((8, 8), (8, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)),
                            False)[0] == "direct"
    assert choose_pool_path((8, 8), (5, 4), (3, 3), (2, 2), (1, 1), ((0, 2), (0, 0)),
                            False)[0] == "padded"
    assert choose_pool_path((8, 8), (4, 4), (3, 3), (3, 3), (1, 1), ((2, 2), (2, 2)),
                            False)[0] == "padded"
    # constant B, A not transposed: the dense kernel for one row, the packed one beyond
    assert choose_gemm(1, True, False)[0] == "dense"
    assert choose_gemm(2, True, False)[0] == choose_gemm(300, True, False)[0] == "packed"
    assert choose_gemm(1, False, False)[0] == "matmul"
    assert choose_gemm(1, True, True)[0] == choose_gemm(8, True, True)[0] == "matmul"
    # MatMul by constant float32 weights: packed from one row on
    assert choose_matmul(1, True)[0] == choose_matmul(12, True)[0] == "packed"
    assert choose_matmul(0, True)[0] == choose_matmul(12, False)[0] == "numpy"
    # transposed: col2im always; ONNX pads to the layer unless negative or beyond its reach
    assert choose_conv_transpose2d((2, 2))[0] == choose_conv_transpose2d((1, 1))[0] == "col2im"
    assert choose_onnx_transpose_path(((1, 1), (1, 1)), (1, 0), (2, 2), (1, 1))[0] == "layer"
    assert choose_onnx_transpose_path(((1, -1), (0, 0)), (0, 0), (2, 2), (1, 1))[0] == "window"
    assert choose_onnx_transpose_path(((0, 0), (0, 0)), (0, 2), (2, 2), (1, 1))[0] == "window"
    assert choose_onnx_transpose_path(((0, 0), (0, 0)), (0, 2), (2, 2), (1, 3))[0] == "layer"


def small_graph(rng, rows):
    """A pointwise layer, two ConvTransposes (pads the layer takes, negative pads), a depthwise
    layer, a max pool the layer pads, an average pool that needs a padded copy, and a Gemm
    with ``rows`` rows."""
    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    consts = {"w1": f(32, 16, 1, 1), "wt": f(32, 8, 4, 4), "wd": f(8, 1, 3, 3),
              "g": f(10, 8 * 8 * 8)}
    nodes = [Node("Conv", "pw", ["x", "w1"], ["a"]),
             Node("ConvTranspose", "up", ["a", "wt"], ["b"],
                  {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
             Node("ConvTranspose", "crop", ["a", "wt"], ["b2"],
                  {"strides": [2, 2], "pads": [-1, 0, 2, 1]}),
             Node("Conv", "dw", ["b", "wd"], ["c"], {"group": 8, "pads": [1, 1, 1, 1]}),
             Node("MaxPool", "mp", ["c"], ["d"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
             Node("AveragePool", "ap", ["d"], ["e"],
                  {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 2, 2]}),
             Node("Flatten", "fl", ["e"], ["h"]),
             Node("Gemm", "fc", ["h", "g"], ["y"], {"transB": 1})]
    return Model(Graph(nodes, [spec("x", (rows, 16, 16, 16))], [spec("y"), spec("b2")],
                       consts))


@pytest.mark.parametrize("rows", [1, 9])
def test_explain_shows_every_choice(rng, rows):
    text = small_graph(rng, rows).explain()
    assert "pads: layer, the planned layer takes them itself" in text
    assert "pads: window, negative pads (-1,) crop the output" in text
    assert "max pooling, direct: symmetric pads" in text
    assert "average pooling, padded: pads ((0, 2), (0, 2)) differ" in text
    assert ("dense: 1 row of A" if rows == 1 else "packed: 9 rows of A") in text
    assert text.count("layout nchw: ") == 2            # pw and dw: no neighbour is blocked
    assert "col2im: stride (2, 2)" in text


def test_gemm_paths_agree(rng):
    """The dense kernel (1 row per image) and the packed one (9 rows) on the same weights."""
    x = rng.standard_normal((9, 16, 16, 16)).astype(np.float32)
    one, many = small_graph(np.random.default_rng(5), 1), small_graph(np.random.default_rng(5), 9)
    y9 = many.run({"x": x})["y"]
    y1 = np.concatenate([one.run({"x": x[i:i + 1]})["y"] for i in range(9)])
    scale = np.abs(y9).max()
    assert np.abs(y1 - y9).max() <= 1e-5 * scale


def test_narrow_vectors_keep_every_layer_on_nchw(rng, monkeypatch):
    """Kernels built for vectors narrower than a channel block would spill the blocked
    kernels' tiles: auto then keeps every layer on NCHW and says why, a forced layout still
    holds, and the results agree."""
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV
    from engine.dispatch.layout import blocked_layout_pays
    pw = ConvParams(32, 64, (1, 1), (1, 1), (1, 1), 1, ((0, 0), (0, 0)), (14, 14))
    kind, why = blocked_kernel(pw)
    assert choose_layout(kind, why, "depthwise")[0] == "nchwc"
    assert blocked_layout_pays() == (True, "")
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, str(BLOCK // 2))
    pays, reason = blocked_layout_pays()
    assert not pays and f"{BLOCK // 2}-float vectors" in reason
    assert choose_layout(kind, why, "depthwise") == ("nchw", reason)
    assert choose_layout(kind, why, "depthwise", forced="nchwc")[0] == "nchwc"
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    auto = engine.load(DIGITS)
    text = auto.explain()
    assert NAME not in text and f"{BLOCK // 2}-float vectors" in text
    ref = engine.load(DIGITS, layout="nchw16c")(x)
    assert np.abs(auto(x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_the_kernels_report_their_vector_width():
    from engine._kernels import _info
    floats = _info.vector_floats()
    assert floats in (4, 8, 16) and engine.build_info()["vector_floats"] == floats
    if "-march=native" in (engine.build_info()["compile_args"] or []) and os.path.exists(
            "/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read()
        assert floats == (16 if " avx512f" in flags else 8 if " avx" in flags else 4)


def test_load_forces_the_layout(rng):
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    auto = engine.load(DIGITS)
    nchw = engine.load(DIGITS, layout="nchw")
    blocked = engine.load(DIGITS, layout="nchwc")
    earlier = engine.load(DIGITS, layout="nchw16c")     # the earlier name
    ref = nchw(x)
    for model in (auto, blocked, earlier):
        assert np.abs(model(x) - ref).max() <= 1e-5 * np.abs(ref).max()
    text = auto.explain()
    assert "layout nchwc: " in text and NAME in text and "layout auto" in text
    text = nchw.explain()
    assert "layout nchwc" not in text and NAME not in text
    assert "forced by the caller (layout='nchw')" in text
    assert "forced by the caller (layout='nchwc')" in blocked.explain()
    assert "forced by the caller (layout='nchwc')" in earlier.explain()
    assert auto.layout == "auto" and nchw.layout == "nchw" and earlier.layout == "nchwc"
    with pytest.raises(ValueError, match="layout must be one of"):   # before the file is read
        engine.load("no such file", layout="blocked")


def test_a_lone_pointwise_layer_runs_blocked_on_a_small_map(rng):
    """A 1x1 layer with no blocked neighbour runs blocked where the NCHW GEMM computes many
    columns for nothing (49 pixels take 64) and its weights pay the two layout changes; on
    larger maps, or with few weights, it stays NCHW. The values are the NCHW plan's."""

    def params(c, k, size):
        return ConvParams(c, k, (1, 1), (1, 1), (1, 1), 1, ((0, 0), (0, 0)), (size, size))
    assert pays_alone("pointwise", params(512, 2048, 7))
    assert pays_alone("pointwise", params(2048, 512, 7))
    assert not pays_alone("pointwise", params(512, 2048, 28))    # 784 columns: no waste
    assert not pays_alone("pointwise", params(64, 256, 7))       # weights too few to pay
    assert not pays_alone("pointwise", ConvParams(512, 2048, (1, 1), (1, 1), (1, 1), 1,
                                                  ((0, 0), (0, 0))))      # size unknown
    w = rng.standard_normal((512, 384, 1, 1)).astype(np.float32)
    nodes = [Node("Conv", "c", ["x", "w"], ["y"], {})]
    graph = lambda: Graph(nodes, [TensorSpec("x", (1, 384, 7, 7), "float32")],  # noqa: E731
                          [TensorSpec("y", None, "float32")], {"w": w})
    model, plain = Model(graph()), Model(graph(), layout="nchw")
    assert "layout nchwc" in model.explain() and "alone" in model.explain()
    assert "layout nchwc" not in plain.explain()
    x = rng.standard_normal((1, 384, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], plain.run({"x": x})["y"],
                               rtol=1e-5, atol=1e-5)


def test_a_lone_depthwise_layer_of_many_taps_runs_blocked(rng):
    """A 5x5 or 7x7 depthwise layer with no blocked neighbour (ConvNeXt's, between residual
    Adds and a channels-last LayerNorm) runs blocked with a layout change each way; a 3x3 one
    stays NCHW. Per element the blocked plan agrees with the NCHW one and both with the float64
    reference within 1e-5 of the sum of |terms| (a depthwise output's at most 49 products)."""
    def params(k, groups=96):
        return ConvParams(96, 96, (k, k), (1, 1), (1, 1), groups, ((k // 2,) * 2,) * 2, (28, 28))
    assert pays_alone("depthwise", params(7)) and pays_alone("depthwise", params(5))
    assert not pays_alone("depthwise", params(3))
    for k, blocked in ((7, True), (3, False)):
        w = rng.standard_normal((96, 1, k, k)).astype(np.float32)
        nodes = [Node("Conv", "c", ["x", "w"], ["y"], {"group": 96, "pads": [k // 2] * 4})]
        graph = Graph(nodes, [TensorSpec("x", (1, 96, 28, 28), "float32")],
                      [TensorSpec("y", None, "float32")], {"w": w})
        model, plain = Model(graph), Model(graph, layout="nchw")
        assert ("layout nchwc" in model.explain()) == blocked
        x = rng.standard_normal((1, 96, 28, 28)).astype(np.float32)
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (k // 2,) * 2, (k // 2,) * 2))
        ref = np.zeros((1, 96, 28, 28))
        terms = np.zeros_like(ref)
        for i in range(k):
            for j in range(k):
                tap = xp[:, :, i:i + 28, j:j + 28] * w[:, 0, i, j][None, :, None, None]
                ref += tap
                terms += np.abs(tap)
        for y in (model.run({"x": x})["y"], plain.run({"x": x})["y"]):
            assert np.all(np.abs(y - ref) <= 1e-5 * terms + 1e-30)
