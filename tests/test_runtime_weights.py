"""Weights that are not constants: Conv, ConvTranspose and DeformConv with W and B as graph
inputs or computed in the graph (weight standardisation, hypernetworks), against the same
layer with constant weights and against ONNX Runtime; and 3-D ConvTranspose, which runs as a
stride-1 Conv3d on the stride-spread input (engine/ops/convnd.py), against PyTorch.

Tolerance: 2e-5 * (1 + max |reference|) per element: float32 sums of at most a few hundred
products of unit-normal values, in another order than the reference's."""
import numpy as np
import pytest

import engine

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T, helper as h, numpy_helper as nh  # noqa: E402


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * (1 + np.abs(want).max()))


def model(nodes, inputs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(v, n) for n, v in inits])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


CONV = [  # (op, x shape, W shape, B size, attributes)
    ("Conv", (2, 4, 9, 9), (6, 4, 3, 3), 6, dict(pads=[1, 1, 1, 1])),
    ("Conv", (1, 4, 11, 10), (4, 1, 3, 3), 4, dict(group=4, strides=[2, 1])),
    ("Conv", (2, 6, 12), (4, 3, 5), 4, dict(group=2, dilations=[2], pads=[2, 1])),
    ("Conv", (1, 3, 6, 7, 5), (4, 3, 3, 3, 3), 4, dict(pads=[1] * 6, strides=[1, 2, 1])),
    ("ConvTranspose", (2, 4, 5, 6), (4, 3, 3, 3), 3, dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    ("ConvTranspose", (1, 4, 7), (4, 2, 4), 4, dict(strides=[3], group=2,
                                                    output_padding=[1])),
    ("ConvTranspose", (1, 4, 3, 4, 5), (4, 2, 3, 3, 2), 2, dict(strides=[2, 1, 2],
                                                                pads=[1, 0, 0, 1, 1, 0])),
]


@pytest.mark.parametrize("op,xs,ws,nb,attrs", CONV, ids=[f"{c[0]}-{len(c[1]) - 2}d-{k}"
                                                         for k, c in enumerate(CONV)])
def test_weights_as_graph_inputs(rng, op, xs, ws, nb, attrs):
    ort = pytest.importorskip("onnxruntime")
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(nb).astype(np.float32)
    node = h.make_node(op, ["x", "w", "b"], ["y"], **attrs)
    runtime = model([node], [("x", xs), ("w", ws), ("b", (nb,))])
    constant = model([node], [("x", xs)], [("w", w), ("b", b)])
    m = engine.load(runtime)
    got = m.run({"x": x, "w": w, "b": b})["y"]
    want = engine.load(constant).run({"x": x})["y"]
    close(got, want)
    sess = ort.InferenceSession(runtime.SerializeToString(), providers=["CPUExecutionProvider"])
    close(got, sess.run(None, {"x": x, "w": w, "b": b})[0])
    # new weights on the next run are used, not the first run's
    w2 = -2 * w
    close(m.run({"x": x, "w": w2, "b": b})["y"],
          sess.run(None, {"x": x, "w": w2, "b": b})[0])
    assert "run time" in m.explain()


def test_weight_computed_in_the_graph_with_fused_activation_and_residual(rng):
    """Weight standardisation feeding a Conv whose ReLU and residual add the passes fuse."""
    ort = pytest.importorskip("onnxruntime")
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    nodes = [h.make_node("Mul", ["w_in", "scale"], ["w"]),
             h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Add", ["c", "x"], ["s"]),
             h.make_node("Relu", ["s"], ["y"])]
    m = model(nodes, [("x", x.shape), ("w_in", w.shape)],
              [("scale", np.array(0.5, np.float32))])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = engine.load(m).run({"x": x, "w_in": w})["y"]
    close(got, sess.run(None, {"x": x, "w_in": w})[0])


def test_deform_conv_weights_as_inputs(rng):
    xs, ws = (1, 4, 7, 7), (6, 4, 3, 3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    off = (rng.standard_normal((1, 18, 7, 7)) * 0.7).astype(np.float32)
    node = h.make_node("DeformConv", ["x", "w", "off", "b"], ["y"], pads=[1, 1, 1, 1])
    runtime = model([node], [("x", xs), ("w", ws), ("off", off.shape), ("b", (6,))],
                    opset=19)
    constant = model([node], [("x", xs), ("off", off.shape)], [("w", w), ("b", b)], opset=19)
    got = engine.load(runtime).run({"x": x, "w": w, "off": off, "b": b})["y"]
    want = engine.load(constant).run({"x": x, "off": off})["y"]
    np.testing.assert_array_equal(got, want)


def test_runtime_weight_of_the_wrong_shape_is_refused(rng):
    node = h.make_node("Conv", ["x", "w"], ["y"])
    m = engine.load(model([node], [("x", (1, 3, 5, 5)), ("w", (4, 3, 3, 3))]))
    with pytest.raises(ValueError, match="'w'"):
        m.run({"x": np.zeros((1, 3, 5, 5), np.float32),
               "w": np.zeros((4, 2, 3, 3), np.float32)})
    free = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, (1, 3, 5, 5)),
                                      h.make_tensor_value_info("w", T.FLOAT, (4, None, 3, 3))],
                        [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = engine.load(h.make_model(free, opset_imports=[h.make_opsetid("", 17)]))
    with pytest.raises(engine.ModelError, match="channels"):
        m.run({"x": np.zeros((1, 3, 5, 5), np.float32),
               "w": np.zeros((4, 2, 3, 3), np.float32)})



def test_runtime_weights_keep_the_shape_of_the_first_plan(rng):
    """W's shape fixes the node's window when the first plan is made (as a constant W does at
    load); a later input size is planned with it, and a W of another shape is refused rather
    than re-windowing a node whose earlier plans still run."""
    node = h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, (1, 2, None, None)),
                                   h.make_tensor_value_info("w", T.FLOAT, (3, 2, None, None))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for size in (5, 8, 5):
        x = rng.standard_normal((1, 2, size, size)).astype(np.float32)
        want = engine.load(model([node], [("x", x.shape)], [("w", w)])).run({"x": x})["y"]
        close(m.run({"x": x, "w": w})["y"], want)
    with pytest.raises(engine.ModelError, match="keep one shape"):
        m.run({"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32),
               "w": rng.standard_normal((3, 2, 5, 5)).astype(np.float32)})

TRANSPOSED_3D = [  # (stride, dilation, padding, output_padding, groups)
    (1, 1, 0, 0, 1), (2, 1, 1, 1, 1), (3, 2, (2, 1, 0), (2, 1, 0), 2), (1, 1, 0, 0, 4),
    ((1, 2, 3), (2, 1, 1), (0, 1, 2), (0, 1, 2), 1), (2, 1, 2, 0, 2),
]


@pytest.mark.parametrize("stride,dilation,padding,output_padding,groups", TRANSPOSED_3D)
def test_conv_transpose3d_against_torch(rng, threads, stride, dilation, padding,
                                        output_padding, groups):
    torch = pytest.importorskip("torch")
    from engine.ops.convnd import ConvTranspose3d
    x = rng.standard_normal((2, 4, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3 * groups).astype(np.float32)
    want = torch.nn.functional.conv_transpose3d(
        torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
        torch.tensor(b, dtype=torch.float64), stride, padding, output_padding, groups,
        dilation).numpy()
    layer = ConvTranspose3d(w, b, stride, dilation, groups)
    pads = (padding,) * 3 if isinstance(padding, int) else padding
    got = np.empty(want.shape, np.float32)
    layer.run(x, got, [(p, p) for p in pads])
    close(got, want)
    again = np.empty_like(got)
    layer.run(x, again, [(p, p) for p in pads], 3 - threads)   # the other thread count
    np.testing.assert_array_equal(got, again)
