"""Taps that can only read padding are dropped at plan time (a rate-24 3x3 on a 14x14 map is a
1x1): the outputs must equal the full convolution's, and the taps kept must be exactly the ones
that read the input for some output, counted here by brute force. Layers whose taps mostly read
padding but not only (a rate-12 3x3 on 14x14) run live_taps, each tap's GEMM over the outputs
it reads the input for; their rectangles are checked by brute force too.

Tolerance as in tests/test_conv2d.py: |y - ref| <= RTOL[algorithm] * conv(|x|, |w|) + 1e-6 per
element, the reference being the float64 convolution with the whole kernel."""
import itertools

import numpy as np
import pytest

import engine
from engine.ops.conv2d import conv2d_for_size
from engine.shapes import conv_output_size, resolve_padding
from reference import conv2d_ref
from test_conv2d import RTOL


def live_by_brute_force(i, k, s, pb, pe, d):
    n_out = conv_output_size(i, k, s, pb, pe, d)
    return [u for u in range(k) if any(0 <= o * s - pb + u * d < i for o in range(n_out))]


CASES = [  # (size, kernel, stride, dilation, padding)
    ((14, 14), 3, 1, 24, 24), ((14, 14), 3, 1, 12, 12), ((14, 14), 3, 1, 36, 36),
    ((28, 28), 3, 1, 36, 36), ((7, 9), 3, 1, 8, "same"), ((9, 7), 5, 1, 4, "same"),
    ((6, 6), 3, 2, 7, "same"), ((10, 13), 3, 1, 11, (11, 11, 11, 3)),   # asymmetric, ONNX order
    ((5, 5), 3, 1, 5, (5, 5, 1, 1)), ((4, 12), 3, 1, (6, 2), (6, 2)), ((8, 8), 7, 1, 3, 9),
    ((3, 3), 3, 1, 3, 3), ((12, 12), 3, 3, 13, 13), ((1, 20), 3, 1, (5, 5), (5, 5)),
]


@pytest.mark.parametrize("size, k, s, d, padding", CASES)
def test_dropped_taps_keep_the_output(rng, threads, size, k, s, d, padding):
    c, kout = 8, 6
    x = rng.standard_normal((2, c) + size).astype(np.float32)
    w = rng.standard_normal((kout, c, k, k)).astype(np.float32)
    b = rng.standard_normal(kout).astype(np.float32)
    layer = conv2d_for_size(w, b, s, padding, d, 1, input_size=size)
    y = layer(x)
    dd = (d, d) if isinstance(d, int) else d
    pads = resolve_padding(padding, size, (k, k), (s, s), dd)
    ref = conv2d_ref(x, w, b, (s, s), pads, dd, 1)
    mag = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), (s, s), pads, dd, 1)
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= RTOL[layer.algorithm] * mag + 1e-6), err.max()
    # the kernel kept: exactly the live taps, when the padding allows dropping them
    live = [live_by_brute_force(i, k, s, pb, pe, dl)
            for i, (pb, pe), dl in zip(size, pads, dd)]
    want = []
    for taps, (pb, pe), dl in zip(live, pads, dd):
        first, last = taps[0], taps[-1]
        if first * dl > pb or (k - 1 - last) * dl > pe:
            first, last = 0, k - 1        # dropping would need negative padding
        want.append(last - first + 1)
    assert layer.kernel_size == tuple(want)
    assert ("read only padding" in layer.reason) == (tuple(want) != (k, k))


def test_functional_and_forced_algorithms(rng):
    x = rng.standard_normal((1, 16, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    ref = conv2d_ref(x, w, None, (1, 1), ((24, 24), (24, 24)), (24, 24), 1)
    mag = conv2d_ref(np.abs(x), np.abs(w), None, (1, 1), ((24, 24), (24, 24)), (24, 24), 1)
    for algorithm in ("auto", "im2col", "direct"):
        y = engine.conv2d(x, w, padding=24, dilation=24, algorithm=algorithm)
        assert np.all(np.abs(y - ref) <= 1e-5 * mag + 1e-6)


def test_model_explain_names_the_dropped_taps(rng):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    w = rng.standard_normal((32, 64, 3, 3)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[24] * 4, dilations=[24, 24]),
             h.make_node("Relu", ["c"], ["y"])]
    g = h.make_graph(nodes, "aspp", [h.make_tensor_value_info("x", T.FLOAT, [1, 64, 14, 14])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    m = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9))
    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    ref = np.maximum(conv2d_ref(x, w, None, (1, 1), ((24, 24), (24, 24)), (24, 24), 1), 0)
    mag = conv2d_ref(np.abs(x), np.abs(w), None, (1, 1), ((24, 24), (24, 24)), (24, 24), 1)
    assert np.all(np.abs(m(x) - ref) <= 1e-5 * mag + 1e-6)
    assert "8 of 9 taps read only padding" in m.explain()


@pytest.mark.parametrize("size, d, want", [
    (14, 3, "dilated_s2b"), (14, 4, "live_taps"), (14, 12, "live_taps"), (28, 4, "winograd_f43"),
    (28, 6, "dilated_s2b"),
])
def test_phase_size_picks_the_dilated_algorithm(size, d, want):
    """live_taps where at most two thirds of the tap-output pairs read the input, else
    Winograd on the phase sub-images while they hold whole tiles (measured in
    bench/bench_dispatch.py conv/live_taps and conv/dilated_phases); the choice is a function
    of the parameters."""
    from engine import dispatch
    p = dispatch.ConvParams(in_channels=256, out_channels=256, kernel=(3, 3), stride=(1, 1),
                            dilation=(d, d), groups=1, pads=((d, d), (d, d)),
                            in_size=(size, size))
    assert dispatch.choose_conv2d(p)[0] == want


# ---------------------------------------------------------------------------------- live taps

LIVE_CASES = [  # (batch, C, K, size, kernel, stride, dilation, pads ((t, b), (l, r)), groups)
    (1, 48, 20, (14, 14), (3, 3), (1, 1), (12, 12), ((12, 12), (12, 12)), 1),
    (2, 16, 24, (9, 13), (3, 3), (1, 1), (6, 8), ((6, 2), (8, 0)), 1),
    (1, 12, 18, (11, 11), (3, 3), (2, 2), (9, 9), ((9, 9), (9, 9)), 3),
    (1, 8, 8, (10, 7), (5, 3), (3, 1), (4, 5), ((8, 0), (5, 5)), 2),
    (1, 5, 7, (6, 6), (3, 3), (1, 1), (7, 7), ((7, 7), (7, 7)), 1),      # only the centre live
    (1, 4, 6, (1, 9), (3, 3), (1, 2), (3, 4), ((3, 3), (4, 4)), 1),
]


def live_pairs_by_brute_force(size, kernel, stride, dilation, pads, out_size):
    """{tap: set of outputs (oy, ox) whose input under that tap lies inside the map}."""
    live = {}
    for u, v in itertools.product(range(kernel[0]), range(kernel[1])):
        for oy, ox in itertools.product(range(out_size[0]), range(out_size[1])):
            iy = oy * stride[0] - pads[0][0] + u * dilation[0]
            ix = ox * stride[1] - pads[1][0] + v * dilation[1]
            if 0 <= iy < size[0] and 0 <= ix < size[1]:
                live.setdefault(u * kernel[1] + v, set()).add((oy, ox))
    return live


@pytest.mark.parametrize("n, c, k, size, kernel, stride, dilation, pads, groups", LIVE_CASES)
def test_live_taps_match_the_full_convolution(rng, n, c, k, size, kernel, stride, dilation, pads,
                                              groups):
    from engine.ops.live_taps import LiveTaps
    x = rng.standard_normal((n, c) + size).astype(np.float32)
    w = rng.standard_normal((k, c // groups) + kernel).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    onnx_pads = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    ref = conv2d_ref(x, w, b, stride, pads, dilation, groups)
    mag = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), stride, pads, dilation, groups)
    for act, f in ((None, lambda v: v), ("relu6", lambda v: np.clip(v, 0, 6)),
                   ("silu", lambda v: v / (1 + np.exp(-v)))):
        layer = engine.Conv2d(w, b, stride, onnx_pads, dilation, groups, act,
                              algorithm="live_taps")
        y = layer(x)
        err = np.abs(y.astype(np.float64) - f(ref))
        assert np.all(err <= RTOL["live_taps"] * (mag + np.abs(ref)) + 1e-6), (act, err.max())
    # each tap's rectangle is exactly its live outputs
    g = layer.geometry(x.shape)
    rects = LiveTaps(layer).rectangles(g)
    want = live_pairs_by_brute_force(size, kernel, stride, dilation, pads, g.out_size)
    got = {t: {(oy, ox) for oy in range(*ry) for ox in range(*rx)} for t, ry, rx, _ in rects}
    assert got == want


def test_live_taps_are_thread_independent_and_chosen_where_they_pay(rng):
    """DeepLabV3's rate-12 ASPP layer on MobileNetV3's 14x14 map: 18% of its tap-output pairs
    read the input; auto picks live_taps at that size, and 1 and 2 threads agree bit for bit."""
    from engine import dispatch
    x = rng.standard_normal((1, 960, 14, 14)).astype(np.float32)
    w = rng.standard_normal((64, 960, 3, 3)).astype(np.float32)
    layer = conv2d_for_size(w, None, 1, 12, 12, 1, "relu", input_size=(14, 14))
    assert layer.algorithm == "live_taps" and "18% of the tap-output pairs" in layer.reason
    outs = []
    for t in (1, 2):
        out = np.empty((1, 64, 14, 14), np.float32)
        layer.run(x, out, layer.geometry(x.shape), num_threads=t)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    ref = np.maximum(conv2d_ref(x, w, None, (1, 1), ((12, 12),) * 2, (12, 12), 1), 0)
    mag = conv2d_ref(np.abs(x), np.abs(w), None, (1, 1), ((12, 12),) * 2, (12, 12), 1)
    assert np.all(np.abs(outs[0] - ref) <= RTOL["live_taps"] * mag + 1e-6)
    # rate 2 on 28x28: 90% of the pairs are live, Winograd's phases keep it; a small layer too
    p = dispatch.ConvParams(960, 64, (3, 3), (1, 1), (2, 2), 1, ((2, 2),) * 2, (28, 28))
    assert dispatch.choose_conv2d(p)[0] != "live_taps"
    p = dispatch.ConvParams(8, 8, (3, 3), (1, 1), (12, 12), 1, ((12, 12),) * 2, (14, 14))
    assert dispatch.choose_conv2d(p)[0] != "live_taps"
