"""engine.deform_conv2d / engine.DeformConv2d against the float64 reference in tests/reference.py.

Tolerance: the kernel computes each sample and each dot product in float32, so the error is
bounded by a multiple of eps32 times the magnitude of the terms, the same convolution run on
|x|, |w| and |mask| (bilinear weights are non-negative, so that bounds every partial sum):
    |y - ref| <= 1e-5 * deform_conv(|x|, |w|, |mask|) + 1e-6
1e-5 is about 80 eps32, as for im2col in test_conv2d.py; positions are rounded to float32
too, which moves a sample by at most eps32 * (its coordinate) pixels, far below that bound for
the sizes used here.
"""
import itertools

import numpy as np
import pytest

import engine
from engine._threads import threads_for
from reference import conv2d_ref, deform_conv2d_ref

RTOL = 1e-5


def _pairs(p):
    p = p if isinstance(p, tuple) else (p, p)
    return ((p[0], p[0]), (p[1], p[1]))


def _out_size(size, kernel, stride, pads, dilation):
    return tuple((i + a + b - d * (k - 1) - 1) // s + 1
                 for i, k, s, (a, b), d in zip(size, kernel, stride, pads, dilation))


def check(y, x, offset, w, b, stride, pads, dilation, groups, mask):
    ref = deform_conv2d_ref(x, offset, w, b, stride, pads, dilation, groups, mask)
    mag = deform_conv2d_ref(np.abs(x), offset, np.abs(w), None if b is None else np.abs(b),
                            stride, pads, dilation, groups,
                            None if mask is None else np.abs(mask))
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = RTOL * mag + 1e-6
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def _offsets(rng, shape, kind):
    if kind == "half":     # multiples of 1/2: samples land exactly on pixels, edges and y = -1
        return (rng.integers(-6, 7, shape) / 2).astype(np.float32)
    return (rng.standard_normal(shape) * 2).astype(np.float32)


def _cases():
    """A deterministic sample of sizes 1, 5, 11 (and non-square), kernels 1x1, 3x3, 2x3, strides
    1-2, paddings 0, 1, (2, 1), dilations 1-2, (groups, offset_groups) pairs that nest both
    ways and cross, batch 1-2, v1 and v2."""
    sizes = [(1, 1), (5, 5), (11, 11), (5, 11)]
    kernels = [(1, 1), (3, 3), (2, 3)]
    channels = [(2, 3, 1, 1), (4, 4, 2, 1), (4, 6, 1, 2), (6, 4, 2, 3), (4, 4, 4, 2),
                (4, 8, 2, 4)]   # (C, K, groups, offset_groups)
    full = list(itertools.product(sizes, kernels, [1, 2], [0, 1, (2, 1)], [1, 2], channels,
                                  [False, True]))
    rng = np.random.default_rng(7)
    out = []
    for i in rng.permutation(len(full)):
        size, kernel, stride, pad, dil, ckgo, masked = full[i]
        if any(s + 2 * p < d * (k - 1) + 1 for s, p, k, d in
               zip(size, pad if isinstance(pad, tuple) else (pad, pad), kernel, (dil, dil))):
            continue
        out.append((size, kernel, stride, pad, dil, ckgo, masked, 1 + len(out) % 2))
        if len(out) == 40:
            return out


@pytest.mark.parametrize("size, kernel, stride, pad, dil, ckgo, masked, batch", _cases())
def test_sweep_against_reference(size, kernel, stride, pad, dil, ckgo, masked, batch, rng):
    c, k, groups, og = ckgo
    pads = _pairs(pad)
    osz = _out_size(size, kernel, (stride,) * 2, pads, (dil,) * 2)
    taps = kernel[0] * kernel[1]
    x = rng.standard_normal((batch, c) + size, dtype=np.float32)
    w = rng.standard_normal((k, c // groups) + kernel, dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32) if batch == 2 else None
    offset = _offsets(rng, (batch, 2 * og * taps) + osz, "half" if masked else "normal")
    mask = rng.uniform(-1, 2, (batch, og * taps) + osz).astype(np.float32) if masked else None
    y = engine.deform_conv2d(x, offset, w, b, stride, pad, dil, mask, groups=groups)
    check(y, x, offset, w, b, (stride,) * 2, pads, (dil,) * 2, groups, mask)


def test_explicit_offset_groups_and_asymmetric_onnx_pads(rng):
    x = rng.standard_normal((1, 6, 9, 8), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    layer = engine.DeformConv2d(w, None, stride=(2, 1), padding=(0, 2, 1, 1), dilation=(1, 2),
                                groups=2, offset_groups=3)
    n, _, oh, ow = layer.output_shape(x.shape)
    assert (oh, ow) == ((9 + 1 - 3) // 2 + 1, 8 + 3 - 5 + 1)
    offset = _offsets(rng, (1, 54, oh, ow), "normal")
    check(layer(x, offset), x, offset, w, None, (2, 1), ((0, 1), (2, 1)), (1, 2), 2, None)


# --- cases small enough to check by hand ---------------------------------------------------

def test_hand_computed_sample():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    w = np.full((1, 1, 1, 1), 2, np.float32)
    offset = np.zeros((1, 2, 3, 3), np.float32)
    offset[0, 0, 0, 0], offset[0, 1, 0, 0] = 0.25, 0.5      # (dy, dx) at output (0, 0)
    offset[0, 0, 2, 2] = -3.0                               # y = -1: outside, gives 0
    offset[0, 0, 2, 1] = 0.5                                # y = 2.5: half of the last row
    y = engine.deform_conv2d(x, offset, w)
    # (0.25, 0.5): corners 0, 1, 3, 4 with weights .375, .375, .125, .125 -> 1.25, times 2
    expected = 2 * x.copy()
    expected[0, 0, 0, 0] = 2 * 1.25
    expected[0, 0, 2, 2] = 0
    expected[0, 0, 2, 1] = 2 * 0.5 * 7
    np.testing.assert_array_equal(y, expected)


def test_half_pixel_offset_averages_two_pixels(rng):
    x = rng.standard_normal((1, 3, 6, 7), dtype=np.float32)
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    offset = np.zeros((1, 2, 6, 7), np.float32)
    offset[:, 1] = 0.5
    y = engine.deform_conv2d(x, offset, w)
    right = np.concatenate([x[..., 1:], np.zeros_like(x[..., :1])], axis=3)
    np.testing.assert_allclose(y, (x + right) / 2, rtol=1e-6, atol=1e-7)


def test_whole_pixel_offset_is_a_shifted_convolution(rng):
    # dx = +1 everywhere samples column ox - 1 + v + 1: padding (left 0, right 2) in place of 1
    x = rng.standard_normal((2, 5, 12, 10), dtype=np.float32)
    w = rng.standard_normal((7, 5, 3, 3), dtype=np.float32)
    offset = np.zeros((2, 18, 12, 10), np.float32)
    offset[:, 1::2] = 1
    y = engine.deform_conv2d(x, offset, w, padding=1)
    ref = engine.conv2d(x, w, padding=(1, 0, 1, 2), algorithm="im2col")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_zero_offsets_equal_conv2d(rng):
    x = rng.standard_normal((2, 8, 13, 11), dtype=np.float32)
    w = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    kw = dict(stride=2, padding=2, dilation=2)
    osz = engine.Conv2d(w, groups=2, **kw).output_shape(x.shape)[2:]
    offset = np.zeros((2, 18) + osz, np.float32)
    ones = np.ones((2, 9) + osz, np.float32)
    v1 = engine.deform_conv2d(x, offset, w, b, mask=None, groups=2, **kw)
    v2 = engine.deform_conv2d(x, offset, w, b, mask=ones, groups=2, **kw)
    np.testing.assert_array_equal(v1, v2)             # mask 1 multiplies exactly
    ref = conv2d_ref(x, w, b, (2, 2), ((2, 2), (2, 2)), (2, 2), 2)
    mag = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), (2, 2), ((2, 2), (2, 2)), (2, 2), 2)
    assert np.all(np.abs(v1 - ref) <= RTOL * mag + 1e-6)
    np.testing.assert_allclose(v1, engine.conv2d(x, w, b, groups=2, **kw), rtol=1e-5, atol=1e-5)


def test_mask_of_one_half_halves(rng):
    x = rng.standard_normal((1, 4, 9, 9), dtype=np.float32)
    w = rng.standard_normal((5, 4, 3, 3), dtype=np.float32)
    offset = _offsets(rng, (1, 18, 9, 9), "normal")
    full = engine.deform_conv2d(x, offset, w, padding=1)
    half = engine.deform_conv2d(x, offset, w, padding=1, mask=np.full((1, 9, 9, 9), 0.5))
    np.testing.assert_array_equal(half, full / 2)      # scaling by a power of two is exact


def test_far_and_nan_offsets_sample_zero(rng):
    x = rng.standard_normal((1, 2, 5, 5), dtype=np.float32)
    w = rng.standard_normal((3, 2, 3, 3), dtype=np.float32)
    b = rng.standard_normal(3, dtype=np.float32)
    for value in (1e30, -1e30, np.inf, np.nan):
        offset = np.full((1, 18, 3, 3), value, np.float32)
        y = engine.deform_conv2d(x, offset, w, b)
        np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], y.shape))


# --- cross-checks with ONNX's reference evaluator and ONNX Runtime -------------------------

def _deform_model(x, w, offset, mask, stride, pads, dilation, groups, og, b):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    names = ["X", "W", "offset", "B"] + (["mask"] if mask is not None else [])
    arrays = [x, w, offset, b if b is not None else np.zeros(w.shape[0], np.float32)]
    arrays += [mask] if mask is not None else []
    node = helper.make_node("DeformConv", names, ["Y"], kernel_shape=list(w.shape[2:]),
                            strides=list(stride), dilations=list(dilation), group=groups,
                            offset_group=og, pads=[pads[0][0], pads[1][0], pads[0][1],
                                                   pads[1][1]])
    graph = helper.make_graph([node], "deform", [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in
        zip(names, arrays)], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)],
                              ir_version=9)
    return onnx, model, dict(zip(names, arrays))


ONNX_CASES = [
    # x shape, weight shape, stride, pads, dilation, groups, offset groups, masked
    ((1, 2, 5, 6), (2, 2, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, 1, True),
    ((1, 4, 6, 5), (4, 2, 2, 3), (2, 1), ((0, 1), (2, 0)), (1, 2), 2, 2, True),
    ((2, 2, 4, 4), (3, 2, 1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 2, False),
]


@pytest.mark.parametrize("xs, ws, stride, pads, dilation, groups, og, masked", ONNX_CASES)
def test_onnx_reference_evaluator(xs, ws, stride, pads, dilation, groups, og, masked, rng):
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32)
    osz = _out_size(xs[2:], ws[2:], stride, pads, dilation)
    taps = ws[2] * ws[3]
    offset = _offsets(rng, (xs[0], 2 * og * taps) + osz, "normal")
    mask = rng.random((xs[0], og * taps) + osz, dtype=np.float32) if masked else None
    onnx, model, feeds = _deform_model(x, w, offset, mask, stride, pads, dilation, groups, og, b)
    from onnx.reference import ReferenceEvaluator
    ref = ReferenceEvaluator(model).run(None, feeds)[0]
    flat = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    y = engine.deform_conv2d(x, offset, w, b, stride, flat, dilation, mask, groups=groups)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # and the float64 reference agrees with ONNX's, so the two definitions match
    ours = deform_conv2d_ref(x, offset, w, b, stride, pads, dilation, groups, mask)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_onnxruntime_deformconv(rng):
    ort = pytest.importorskip("onnxruntime")
    x = rng.standard_normal((2, 8, 12, 11), dtype=np.float32)
    w = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    offset = _offsets(rng, (2, 36, 12, 11), "normal")
    mask = rng.random((2, 18, 12, 11), dtype=np.float32)
    _, model, feeds = _deform_model(x, w, offset, mask, (1, 1), ((1, 1), (1, 1)), (1, 1), 2, 2, b)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)[0]
    y = engine.deform_conv2d(x, offset, w, b, padding=1, mask=mask, groups=2)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# --- the planned layer, threads, errors ----------------------------------------------------

THREAD_LAYERS = [
    ((1, 16, 40, 40), (16, 16, 3, 3), dict(padding=1), 1),
    ((2, 16, 33, 29), (24, 8, 3, 3), dict(padding=2, dilation=2, stride=2, groups=2), 4),
]


@pytest.mark.parametrize("xs, ws, kw, og", THREAD_LAYERS)
def test_one_and_two_threads_bit_identical(xs, ws, kw, og, rng):
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32)
    layer = engine.DeformConv2d(w, b, offset_groups=og, activation="relu", **kw)
    shape = layer.output_shape(xs)
    assert threads_for(np.prod(shape) * np.prod(ws[1:]), 2) == 2, "too small for 2 threads"
    taps = ws[2] * ws[3]
    offset = _offsets(rng, (xs[0], 2 * og * taps) + shape[2:], "normal")
    mask = rng.random((xs[0], og * taps) + shape[2:], dtype=np.float32)
    old = engine.get_num_threads()
    try:
        engine.set_num_threads(1)
        y1 = layer(x, offset, mask)
        engine.set_num_threads(2)
        y2 = layer(x, offset, mask)
    finally:
        engine.set_num_threads(old)
    assert np.array_equal(y1, y2)
    ref = np.maximum(deform_conv2d_ref(x, offset, w, b, (kw.get("stride", 1),) * 2,
                                       _pairs(kw["padding"]), (kw.get("dilation", 1),) * 2,
                                       kw.get("groups", 1), mask), 0)
    np.testing.assert_allclose(y1, ref, rtol=1e-4, atol=1e-4)


def test_planned_layer_runs_many_sizes_and_fills_out(rng):
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    layer = engine.DeformConv2d(w, padding=1)
    assert "DeformConv2d(3->4" in repr(layer)
    for size in [(6, 6), (9, 4)]:
        x = rng.standard_normal((1, 3) + size)          # float64 is computed in float32
        offset = _offsets(rng, (1, 18) + size, "normal")
        out = np.full((1, 4) + size, np.nan, np.float32)
        assert layer(x, offset, out=out) is out
        check(out, x, offset, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, None)


@pytest.mark.parametrize("call, match", [
    (lambda x, o, w, m: engine.deform_conv2d(x, o[:, :17], w), "offset.*multiple of 18"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o[:, :, :4], w), r"offset must have shape"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o[:1], w), r"offset must have shape"),
    (lambda x, o, w, m: engine.deform_conv2d(x, np.concatenate([o, o, o]), w),
     r"offset must have shape"),
    (lambda x, o, w, m: engine.deform_conv2d(x, np.concatenate([o] * 3, 1), w),
     "offset.*3 offset groups.*do not divide"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, offset_groups=2), "offset must have shape"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, offset_groups=3), "offset_groups"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, offset_groups=0), "offset_groups"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o[0], w), "offset must be 4-D"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, mask=m[:, :8]), "mask must have shape"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, mask=m[:, :, 1:]), "mask must have shape"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, mask=m[0]), "mask must be 4-D"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, mask=m.astype(complex)), "mask.*real"),
    (lambda x, o, w, m: engine.deform_conv2d(x[:, :3], o, w), "x must have 4 channels"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, groups=4), "divisible by groups"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w[:, :2]), "x must have 2 channels"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w[0]), "weight must be 4-D"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, np.zeros(5)), "bias"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, stride=0), "stride"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, padding=-1), "padding"),
    (lambda x, o, w, m: engine.deform_conv2d(x, o, w, dilation=9), "larger than the padded"),
    (lambda x, o, w, m: engine.deform_conv2d(x[:, :, :0], o, w), "x must have no empty"),
])
def test_bad_input_raises_value_error(call, match, rng):
    x = rng.standard_normal((2, 4, 7, 7), dtype=np.float32)
    w = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)
    offset = rng.standard_normal((2, 18, 5, 5), dtype=np.float32)
    mask = rng.random((2, 9, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        call(x, offset, w, mask)
