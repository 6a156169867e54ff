"""Conv3d's "frames" path: a layer of 3x3 frames run as one 2-D convolution per depth tap over
the frames that tap reads, summed in an order fixed by the shapes (engine/ops/convnd.py),
against the float64 reference, vol2col and ONNX Runtime."""
import itertools

import numpy as np
import pytest

import engine
from engine.dispatch.winograd import WINOGRAD_MAX_REL_ERROR
from engine.ops.convnd import Conv3d

from test_convnd import TOL, conv3d_ref, same_pads


def pads_of(padding, size, kernel, stride, dilation):
    if padding == "same":
        return tuple(same_pads(i, k, s, d) for i, k, s, d in zip(size, kernel, stride, dilation))
    if padding == "valid":
        return ((0, 0),) * 3
    if isinstance(padding, tuple):
        return tuple((padding[a], padding[a + 3]) for a in range(3))
    return ((padding, padding),) * 3


@pytest.mark.parametrize("kd,sd,dd", [(1, 1, 1), (2, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2),
                                      (2, 3, 2)])
def test_frames_forced_against_float64(rng, threads, kd, sd, dd):
    """Every depth kernel, stride and dilation with symmetric, asymmetric, "same" and "valid"
    padding, a batch of two, with and without bias, fused ReLU6: per element within the
    float32 tolerance (the taps' 2-D layers of these few channels are not Winograd)."""
    cases = 0
    for size, padding, bias, act in itertools.product(
            ((5, 6, 7), (7, 9, 4)), (1, 0, (2, 1, 0, 0, 0, 1), "same", "valid"), (True, False),
            (None, "relu6")):
        if padding == "same" and sd > 1:
            continue
        pads = pads_of(padding, size, (kd, 3, 3), (sd, 1, 1), (dd, 1, 1))
        if any(i + pb + pe < d * (k - 1) + 1
               for i, (pb, pe), k, d in zip(size, pads, (kd, 3, 3), (dd, 1, 1))):
            continue
        x = rng.standard_normal((2, 5) + size).astype(np.float32)
        w = rng.standard_normal((7, 5, kd, 3, 3)).astype(np.float32)
        b = rng.standard_normal(7).astype(np.float32) if bias else None
        layer = Conv3d(w, b, (sd, 1, 1), padding, (dd, 1, 1), activation=act,
                       algorithm="frames")
        y = layer(x)
        assert layer.algorithm == "frames"
        ref = conv3d_ref(x, w, b, (sd, 1, 1), pads, (dd, 1, 1))
        if act:
            ref = np.clip(ref, 0, 6)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, **TOL, err_msg=f"size={size} p={padding}")
        cases += 1
    assert cases >= 24


def winograd_case(rng, c=64, k=48, size=(4, 28, 28)):
    x = rng.standard_normal((1, c) + size).astype(np.float32)
    w = (rng.standard_normal((k, c, 3, 3, 3)) / np.sqrt(27 * c)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    return x, w, b


def test_auto_takes_frames_where_the_taps_take_winograd(rng):
    """64->48 3x3x3 on 28x28 frames: the taps' 2-D layer is Winograd, so auto runs the frames
    path; per element within Winograd's error budget of the output's range, and close to
    vol2col's result."""
    x, w, b = winograd_case(rng)
    layer = Conv3d(w, b, 1, 1, 1, activation="relu")
    y = layer(x)
    assert layer.algorithm == "frames" and "winograd" in layer.reason
    assert "frames" in layer.explain()
    ref = np.maximum(conv3d_ref(x, w, b, pads=((1, 1),) * 3), 0)
    scale = np.abs(ref).max()
    assert np.all(np.abs(y - ref) <= WINOGRAD_MAX_REL_ERROR * scale)
    vol = Conv3d(w, b, 1, 1, 1, activation="relu", algorithm="im2col")(x)
    assert np.abs(y - vol).max() <= WINOGRAD_MAX_REL_ERROR * scale


def test_auto_keeps_vol2col_for_other_layers(rng):
    """Few channels (the taps' layer is not Winograd), a spatial stride, a 3x1 spatial kernel,
    groups: vol2col, and explain says why."""
    x = rng.standard_normal((1, 4, 4, 9, 9)).astype(np.float32)
    small = Conv3d(rng.standard_normal((4, 4, 3, 3, 3)).astype(np.float32), padding=1)
    small(x)
    assert small.algorithm == "im2col" and "not Winograd" in small.reason
    for kwargs, kernel in [(dict(stride=(1, 2, 2)), (3, 3, 3)), (dict(), (3, 3, 1)),
                           (dict(groups=2), (3, 3, 3))]:
        g = kwargs.get("groups", 1)
        w = rng.standard_normal((4, 4 // g) + kernel).astype(np.float32)
        layer = Conv3d(w, padding=1, **kwargs)
        layer(x)
        assert layer.algorithm == "im2col"
        with pytest.raises(ValueError, match="algorithm='frames' needs"):
            Conv3d(w, padding=1, algorithm="frames", **kwargs)


def test_frames_one_and_two_threads_bit_identical(rng):
    x, w, b = winograd_case(rng)
    old = engine.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            engine.set_num_threads(t)
            layer = Conv3d(w, b, (2, 1, 1), 1, 1, activation="relu")
            outs.append(layer(x))
            assert layer.algorithm == "frames"
    finally:
        engine.set_num_threads(old)
    assert np.array_equal(outs[0], outs[1])


def test_frames_in_an_onnx_graph_against_onnxruntime(rng, tmp_path):
    """A Conv 3-D node with a fused Relu in a model file: the plan runs it as frames, and the
    output agrees with ONNX Runtime within Winograd's budget."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    x, w, b = winograd_case(rng, c=32, k=32, size=(5, 20, 20))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1, 1, 1],
                          kernel_shape=[3, 3, 3]),
         helper.make_node("Relu", ["c"], ["y"])],
        "frames", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = str(tmp_path / "conv3d.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = engine.load(path)
    y = model.run({"x": x})["y"]
    assert "frames" in model.explain()
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(y - want).max() <= WINOGRAD_MAX_REL_ERROR * np.abs(want).max()
