"""Hand-built ONNX graphs, one per feature of the importer and the planner, run by the engine
and by ONNX Runtime.

Tolerance, per element: |engine - onnxruntime| <= RTOL * (|ref| + rms(ref)), ref being ONNX
Runtime's output; integer outputs (indices, shapes) must be equal. Both runtimes compute in
float32 with different summation orders: the error of a sum is a few eps32 of the sum of its
|terms|, which for these random inputs is of the order of the output's root mean square, not of
each element's own size (a sum that cancels to near zero keeps the error of its terms). RTOL =
1e-5 (~80 eps32); the largest error measured is 1.4e-6 of |ref| + rms(ref), in the Gemm with
K = 1000.
"""
import numpy as np
import pytest

import engine
from engine._threads import threads_for

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

RTOL = 1e-5


def vi(name, shape=None, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


def make(nodes, inputs, outputs, inits=None, opset=17):
    g = h.make_graph(nodes, "test", inputs, outputs,
                     [nh.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def assert_close(got, ref, rtol=RTOL):
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    if ref.dtype.kind == "f" and ref.size:
        ref = ref.astype(np.float64)
        err = np.abs(got.astype(np.float64) - ref)
        bound = rtol * (np.abs(ref) + np.sqrt(np.mean(ref ** 2)))
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), (f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at "
                                      f"{worst}")
    else:
        np.testing.assert_array_equal(got, ref)


def run_both(m, feeds, rtol=RTOL):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    model = engine.load(m)
    got = model.run(feeds)
    for out, r in zip(m.graph.output, ref):
        assert_close(got[out.name], r, rtol)
    return model, got


def ops_of(model):
    return [n.op for n in model.graph.nodes]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def bn_params(rng, c, prefix="bn"):
    return {f"{prefix}_s": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_b": randn(rng, c, scale=0.2),
            f"{prefix}_m": randn(rng, c, scale=0.1),
            f"{prefix}_v": rng.uniform(0.5, 1.5, c).astype(np.float32)}


def bn_node(x, y, prefix="bn", **kw):
    return h.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in "sbmv"], [y], **kw)


# ------------------------------------------------------------------------------ convolution

@pytest.mark.parametrize("spatial,kw", [
    ((9, 11), dict(pads=[1, 1, 1, 1])),
    ((9, 11), dict(pads=[0, 2, 1, 0], strides=[2, 1])),
    ((12, 10), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((12, 10), dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    ((12, 10), dict(auto_pad="VALID", dilations=[2, 1])),
    ((9, 11), dict(pads=[2, 2, 2, 2], dilations=[2, 2], group=2)),
    ((17,), dict(pads=[1, 2], strides=[2])),
    ((17,), dict(auto_pad="SAME_UPPER", strides=[3])),
    ((17,), dict(pads=[3, 0], dilations=[3])),
    ((5, 6, 7), dict(pads=[1, 0, 1, 1, 1, 0], strides=[1, 2, 1])),
    ((5, 6, 7), dict(auto_pad="SAME_UPPER", strides=[2, 1, 2])),
])
def test_conv_bn_relu_fuses_into_one_node(rng, spatial, kw):
    nd = len(spatial)
    c_in, c_out = 4, 6
    k = (3,) * nd
    inits = {"W": randn(rng, c_out, c_in // kw.get("group", 1), *k, scale=0.3),
             "B": randn(rng, c_out, scale=0.1), **bn_params(rng, c_out)}
    nodes = [h.make_node("Conv", ["x", "W", "B"], ["c"], **kw), bn_node("c", "n"),
             h.make_node("Relu", ["n"], ["y"])]
    m = make(nodes, [vi("x", [2, c_in, *spatial])], [vi("y")], inits)
    model, got = run_both(m, {"x": randn(rng, 2, c_in, *spatial)})
    assert ops_of(model) == ["Conv"]
    assert model.graph.nodes[0].attrs["activation"] == "relu"
    assert (got["y"] >= 0).all() and (got["y"] > 0).any()


@pytest.mark.parametrize("opset", [6, 11, 13])
def test_clip_relu6_fused_in_every_opset_form(rng, opset):
    inits = {"W": randn(rng, 8, 3, 3, 3)}
    if opset < 11:
        clip = h.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0)
        other = h.make_node("Clip", ["x"], ["z"], min=-0.5, max=0.5)
    else:
        inits.update(lo=np.float32(0), hi=np.float32(6), lo2=np.float32(-0.5))
        clip = h.make_node("Clip", ["c", "lo", "hi"], ["y"])
        other = h.make_node("Clip", ["x", "lo2"], ["z"])     # min only
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), clip, other]
    m = make(nodes, [vi("x", [1, 3, 8, 8])], [vi("y"), vi("z")], inits, opset=opset)
    model, got = run_both(m, {"x": randn(rng, 1, 3, 8, 8, scale=3)})
    conv = [n for n in model.graph.nodes if n.op == "Conv"][0]
    assert conv.attrs["activation"] == "relu6"
    assert ops_of(model).count("Clip") == 1       # the (-0.5, .) one stays a Clip
    assert got["y"].max() == 6.0 and got["y"].min() == 0.0


@pytest.mark.parametrize("order", ["conv_first", "conv_second"])
@pytest.mark.parametrize("act", ["Relu", None])
def test_residual_add_fused_into_the_conv_step(rng, order, act):
    inits = {"W1": randn(rng, 8, 8, 3, 3, scale=0.2), "W2": randn(rng, 8, 8, 1, 1, scale=0.3),
             "B2": randn(rng, 8), **bn_params(rng, 8)}
    add_in = ["c2", "r1"] if order == "conv_first" else ["r1", "c2"]
    nodes = [h.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "W2", "B2"], ["c2"]), bn_node("c2", "c2b"),
             h.make_node("Add", [add_in[0].replace("c2", "c2b"), add_in[1].replace("c2", "c2b")],
                         ["s"])]
    out = "s"
    if act:
        nodes.append(h.make_node(act, ["s"], ["y"]))
        out = "y"
    m = make(nodes, [vi("x", [1, 8, 10, 10])], [vi(out)], inits)
    model, _ = run_both(m, {"x": randn(rng, 1, 8, 10, 10)})
    assert ops_of(model) == ["Conv", "Conv"]
    fused = model.graph.nodes[1]
    assert fused.inputs[3] == "r1" or fused.inputs[3] == model.graph.nodes[0].outputs[0]
    assert fused.attrs.get("activation") == ("relu" if act else None)
    assert "residual" in model.explain()


def test_residual_that_broadcasts_and_one_that_is_larger(rng):
    inits = {"W": randn(rng, 4, 4, 1, 1), "bias": randn(rng, 1, 4, 1, 1),
             "W2": randn(rng, 4, 4, 3, 3), "big": randn(rng, 2, 4, 6, 6)}
    nodes = [h.make_node("Conv", ["x", "W"], ["c"]), h.make_node("Add", ["c", "bias"], ["y"]),
             h.make_node("Conv", ["x", "W2"], ["c2"], pads=[1, 1, 1, 1]),
             h.make_node("Add", ["c2", "big"], ["z"])]
    m = make(nodes, [vi("x", [1, 4, 6, 6])], [vi("y"), vi("z")], inits)
    model, got = run_both(m, {"x": randn(rng, 1, 4, 6, 6)})
    assert ops_of(model) == ["Conv", "Conv"]
    assert got["z"].shape == (2, 4, 6, 6)


@pytest.mark.parametrize("residual_shape", [(1, 8, 6, 6), (1, 8, 1, 1), (3, 8, 6, 6)])
@pytest.mark.parametrize("act", ["Relu", "Clip", None])
def test_pointwise_residual_then_activation(rng, residual_shape, act):
    # a residual of the output's shape is added in the pointwise kernel's output step, which
    # then applies the activation; one that broadcasts (smaller or larger) is added after it
    inits = {"W": randn(rng, 8, 4, 1, 1), "B": randn(rng, 8), "r": randn(rng, *residual_shape),
             "lo": np.float32(0), "hi": np.float32(6)}
    nodes = [h.make_node("Conv", ["x", "W", "B"], ["c"]), h.make_node("Add", ["c", "r"], ["s"])]
    if act == "Relu":
        nodes.append(h.make_node("Relu", ["s"], ["y"]))
    elif act == "Clip":
        nodes.append(h.make_node("Clip", ["s", "lo", "hi"], ["y"]))
    else:
        nodes.append(h.make_node("Identity", ["s"], ["y"]))
    m = make(nodes, [vi("x", [1, 4, 6, 6])], [vi("y")], inits)
    model, _ = run_both(m, {"x": randn(rng, 1, 4, 6, 6, scale=3)})
    assert ops_of(model) == ["Conv"]
    in_kernel = residual_shape == (1, 8, 6, 6)
    assert ("in the kernel's output step" in model.explain()) == in_kernel


def test_conv_output_read_twice_is_not_fused(rng):
    inits = {"W": randn(rng, 4, 4, 3, 3)}
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["y"]), h.make_node("Sigmoid", ["c"], ["z"])]
    m = make(nodes, [vi("x", [1, 4, 5, 5])], [vi("y"), vi("z")], inits)
    model, _ = run_both(m, {"x": randn(rng, 1, 4, 5, 5)})
    assert ops_of(model) == ["Conv", "Relu", "Sigmoid"]


@pytest.mark.parametrize("kw", [
    dict(strides=[2, 2]),
    dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(strides=[3, 2], pads=[0, 1, 2, 0]),
    dict(strides=[2, 2], output_shape=[15, 16]),
    dict(strides=[2, 2], output_shape=[16, 18]),         # beyond the kernels' reach: bias only
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[1, 1], dilations=[2, 2], group=2, pads=[1, 1, 1, 1]),
    dict(strides=[2, 2], pads=[0, 0, 0, 0], output_padding=[1, 1]),
])
def test_conv_transpose(rng, kw):
    inits = {"W": randn(rng, 4, 3, 3, 3, scale=0.3), "B": randn(rng, 3 * kw.get("group", 1))}
    m = make([h.make_node("ConvTranspose", ["x", "W", "B"], ["y"], **kw)],
             [vi("x", [2, 4, 7, 8])], [vi("y")], inits)
    run_both(m, {"x": randn(rng, 2, 4, 7, 8)})


def test_conv_transpose_1d(rng):
    inits = {"W": randn(rng, 3, 2, 4)}
    m = make([h.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2], pads=[1, 2])],
             [vi("x", [1, 3, 9])], [vi("y")], inits)
    run_both(m, {"x": randn(rng, 1, 3, 9)})


@pytest.mark.parametrize("with_mask", [False, True])
def test_deform_conv_opset19(rng, with_mask):
    inits = {"W": randn(rng, 6, 2, 3, 3, scale=0.3), "B": randn(rng, 6)}
    ins = ["x", "W", "off", "B"] + (["mask"] if with_mask else [])
    node = h.make_node("DeformConv", ins, ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                       group=2, offset_group=2)
    inputs = [vi("x", [1, 4, 7, 7]), vi("off", [1, 36, 7, 7])]
    feeds = {"x": randn(rng, 1, 4, 7, 7), "off": randn(rng, 1, 36, 7, 7, scale=1.5)}
    if with_mask:
        inputs.append(vi("mask", [1, 18, 7, 7]))
        feeds["mask"] = rng.uniform(0, 1, (1, 18, 7, 7)).astype(np.float32)
    run_both(make([node], inputs, [vi("y")], inits, opset=19), feeds)


# ------------------------------------------------------------------------------ pooling

@pytest.mark.parametrize("kw,size", [
    (dict(kernel_shape=[2, 2], strides=[2, 2]), (8, 8)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (9, 9)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), (10, 9)),
    (dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0], strides=[1, 2]), (7, 8)),
    (dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]), (9, 9)),
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]), (8, 8)),
    (dict(kernel_shape=[2, 2], storage_order=1, strides=[2, 2]), (6, 8)),
    (dict(kernel_shape=[3, 3], pads=[2, 2, 2, 2]), (6, 6)),
])
def test_maxpool_with_indices(rng, kw, size):
    m = make([h.make_node("MaxPool", ["x"], ["y", "i"], **kw)], [vi("x", [2, 3, *size])],
             [vi("y"), vi("i", elem=T.INT64)], opset=12)
    run_both(m, {"x": randn(rng, 2, 3, *size)})


def unpool_net(opset=11):
    """The SegNet pairing: MaxPool with Indices (over the whole tensor), then MaxUnpool into
    the shape of the pooling's input, given by a Shape node; and without output_shape."""
    nodes = [h.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Relu", ["p"], ["r"]),
             h.make_node("Shape", ["x"], ["s"]),
             h.make_node("MaxUnpool", ["r", "i", "s"], ["y"], kernel_shape=[2, 2],
                         strides=[2, 2]),
             h.make_node("MaxUnpool", ["r", "i"], ["z"], kernel_shape=[2, 2], strides=[2, 2])]
    return nodes, [vi("y"), vi("z")]


def test_maxpool_indices_to_maxunpool_with_output_shape(rng):
    nodes, outs = unpool_net()
    m = make(nodes, [vi("x", [2, 3, 8, 10])], outs, opset=11)
    x = randn(rng, 2, 3, 8, 10)
    model, got = run_both(m, {"x": x})
    kept = got["y"] != 0
    assert kept.sum() > 0
    np.testing.assert_array_equal(got["y"][kept], x[kept])


def test_maxunpool_into_an_odd_output_shape(rng):
    """Pooling a 9x7 input drops the last row and column; unpooling with the input's shape
    puts every maximum back where it was (ONNX Runtime refuses this case: it bounds the
    indices by the default 8x6 output, so the check is against the input itself)."""
    nodes, outs = unpool_net()
    m = make(nodes[:-1], [vi("x", [2, 3, 9, 7])], outs[:1], opset=11)
    x = randn(rng, 2, 3, 9, 7)
    y = engine.load(m).run({"x": x})["y"]
    assert y.shape == x.shape
    windows = x[:, :, :8, :6].reshape(2, 3, 4, 2, 3, 2)
    maxima = np.maximum(windows.max(axis=(3, 5)), 0)
    np.testing.assert_array_equal(np.sort(y.reshape(2, 3, -1), axis=2)[:, :, -12:],
                                  np.sort(maxima.reshape(2, 3, -1), axis=2))
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])


@pytest.mark.parametrize("kw,size", [
    (dict(kernel_shape=[2, 2], strides=[2, 2]), (8, 8)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (9, 9)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
     (9, 9)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), (10, 9)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1],
          count_include_pad=1), (10, 9)),
    (dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0], strides=[1, 2]), (7, 8)),
    (dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0], strides=[1, 2], count_include_pad=1),
     (7, 8)),
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]), (8, 7)),
    (dict(kernel_shape=[3], pads=[1, 1], strides=[2]), (11,)),
])
def test_average_pool(rng, kw, size):
    m = make([h.make_node("AveragePool", ["x"], ["y"], **kw)], [vi("x", [2, 3, *size])],
             [vi("y")], opset=11)
    run_both(m, {"x": randn(rng, 2, 3, *size)})


def test_global_pools_and_lrn(rng):
    nodes = [h.make_node("LRN", ["x"], ["l3"], size=3, alpha=1e-3, beta=0.75, bias=1.0),
             h.make_node("LRN", ["x"], ["l4"], size=5, alpha=2e-2, beta=0.5, bias=2.0),
             h.make_node("GlobalAveragePool", ["l3"], ["ga"]),
             h.make_node("GlobalMaxPool", ["l4"], ["gm"])]
    m = make(nodes, [vi("x", [2, 7, 5, 6])], [vi("l3"), vi("l4"), vi("ga"), vi("gm")])
    run_both(m, {"x": randn(rng, 2, 7, 5, 6, scale=3)})


# ------------------------------------------------------------------------------ Pad, Resize

@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("opset", [7, 11, 18])
def test_pad_modes(rng, mode, opset):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if opset < 11:
        node = h.make_node("Pad", ["x"], ["y"], mode=mode, pads=pads, value=1.5)
        inits = {}
    elif opset < 18:
        node = h.make_node("Pad", ["x", "p", "v"], ["y"], mode=mode)
        inits = {"p": np.array(pads, np.int64), "v": np.float32(1.5)}
    else:   # opset 18: pads for the listed axes only
        node = h.make_node("Pad", ["x", "p", "v", "ax"], ["y"], mode=mode)
        inits = {"p": np.array([1, 2, 2, 1], np.int64), "v": np.float32(1.5),
                 "ax": np.array([2, -1], np.int64)}
    inits = {k: v for k, v in inits.items() if not (mode != "constant" and k == "v")} \
        if opset < 11 else inits
    if mode != "constant" and opset >= 11:
        node.input[2] = ""
    m = make([node], [vi("x", [1, 2, 4, 5])], [vi("y")], inits, opset=opset)
    model, got = run_both(m, {"x": randn(rng, 1, 2, 4, 5)})
    assert got["y"].shape == (1, 2, 7, 8)


def test_pad_negative_crops(rng):
    m = make([h.make_node("Pad", ["x", "p"], ["y"])], [vi("x", [1, 2, 6, 6])], [vi("y")],
             {"p": np.array([0, 0, -1, 2, 0, 0, 1, -2], np.int64)}, opset=13)
    run_both(m, {"x": randn(rng, 1, 2, 6, 6)})


RESIZE_CASES = [
    # (mode, coordinate_transformation_mode, nearest_mode, scales or None, sizes or None, engine?)
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2], None, True),
    ("nearest", "asymmetric", "floor", None, [1, 3, 13, 7], True),
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 1.5, 2.5], None, False),
    ("nearest", "align_corners", "round_prefer_ceil", None, [1, 3, 11, 4], False),
    ("nearest", "tf_half_pixel_for_nn", "ceil", [1, 1, 0.5, 0.8], None, False),
    ("linear", "half_pixel", None, [1, 1, 2, 2], None, True),
    ("linear", "half_pixel", None, None, [1, 3, 5, 13], True),
    ("linear", "pytorch_half_pixel", None, None, [1, 3, 4, 9], True),
    ("linear", "align_corners", None, None, [1, 3, 12, 9], True),
    ("linear", "asymmetric", None, [1, 1, 1.7, 0.6], None, False),
    ("linear", "half_pixel", None, [1, 1, 0.5, 0.5], None, True),
]


@pytest.mark.parametrize("mode,coord,nearest,scales,sizes,engine_path", RESIZE_CASES)
def test_resize_modes(rng, mode, coord, nearest, scales, sizes, engine_path):
    kw = dict(mode=mode, coordinate_transformation_mode=coord)
    if nearest:
        kw["nearest_mode"] = nearest
    inits = {"roi": np.zeros(0, np.float32)}
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        node = h.make_node("Resize", ["x", "roi", "scales"], ["y"], **kw)
    else:
        inits["sizes"] = np.array(sizes, np.int64)
        node = h.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], **kw)
    m = make([node], [vi("x", [1, 3, 6, 8])], [vi("y")], inits, opset=13)
    model, _ = run_both(m, {"x": randn(rng, 1, 3, 6, 8)})
    assert ("engine interpolate" in model.explain()) == engine_path


@pytest.mark.parametrize("opset", [7, 9, 10])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_and_resize10(rng, opset, mode):
    scales = np.array([1, 1, 2, 3], np.float32)
    if opset == 7:
        node = h.make_node("Upsample", ["x"], ["y"], mode=mode, scales=scales.tolist())
        inits = {}
    else:
        node = h.make_node("Upsample" if opset == 9 else "Resize", ["x", "s"], ["y"], mode=mode)
        inits = {"s": scales}
    m = make([node], [vi("x", [1, 2, 4, 5])], [vi("y")], inits, opset=opset)
    run_both(m, {"x": randn(rng, 1, 2, 4, 5)})


def test_resize10_nearest_downsampling(rng):
    m = make([h.make_node("Resize", ["x", "s"], ["y"], mode="nearest")],
             [vi("x", [1, 2, 9, 10])], [vi("y")], {"s": np.array([1, 1, 0.5, 0.7], np.float32)},
             opset=10)
    run_both(m, {"x": randn(rng, 1, 2, 9, 10)})


# ------------------------------------------------------------------------------ tensor ops

def test_channel_shuffle_concat_transpose(rng):
    """ShuffleNet's channel shuffle: concat two branches, reshape to (N, g, C/g, H, W),
    swap the group axes, reshape back."""
    inits = {"W1": randn(rng, 4, 4, 1, 1), "W2": randn(rng, 4, 4, 3, 3, scale=0.3),
             "s1": np.array([1, 2, 4, 5, 5], np.int64), "s2": np.array([0, -1, 5, 5], np.int64)}
    nodes = [h.make_node("Conv", ["x", "W1"], ["a"]),
             h.make_node("Conv", ["x", "W2"], ["b"], pads=[1, 1, 1, 1]),
             h.make_node("Concat", ["a", "b"], ["c"], axis=1),
             h.make_node("Reshape", ["c", "s1"], ["r"]),
             h.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             h.make_node("Reshape", ["t", "s2"], ["y"])]
    m = make(nodes, [vi("x", [1, 4, 5, 5])], [vi("y")], inits)
    model, got = run_both(m, {"x": randn(rng, 1, 4, 5, 5)})
    assert got["y"].shape == (1, 8, 5, 5)


@pytest.mark.parametrize("opset", [9, 13])
def test_gemm_flatten_softmax_head(rng, opset):
    inits = {"W": randn(rng, 10, 6), "b": randn(rng, 10), "M": randn(rng, 10, 3),
             "c": randn(rng, 3)}
    nodes = [h.make_node("GlobalAveragePool", ["x"], ["g"]),
             h.make_node("Flatten", ["g"], ["f"], axis=1),
             h.make_node("Gemm", ["f", "W", "b"], ["z"], transB=1, alpha=0.5, beta=2.0),
             h.make_node("Softmax", ["z"], ["p"], axis=1),
             h.make_node("MatMul", ["z", "M"], ["mm"]),
             h.make_node("Add", ["mm", "c"], ["q"])]
    m = make(nodes, [vi("x", [2, 6, 4, 4])], [vi("p"), vi("q")], inits, opset=opset)
    model, got = run_both(m, {"x": randn(rng, 2, 6, 4, 4)})
    np.testing.assert_allclose(got["p"].sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_legacy_coercion(rng, opset):
    m = make([h.make_node("Softmax", ["x"], ["y"], axis=1)], [vi("x", [2, 3, 4])], [vi("y")],
             opset=opset)
    model, got = run_both(m, {"x": randn(rng, 2, 3, 4)})
    axes = (1, 2) if opset < 13 else (1,)
    np.testing.assert_allclose(got["y"].sum(axis=axes), 1, rtol=1e-5)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(rng, opset):
    if opset < 13:
        nodes = [h.make_node("Unsqueeze", ["x"], ["u"], axes=[0, -1]),
                 h.make_node("Squeeze", ["u"], ["y"], axes=[0]),
                 h.make_node("Squeeze", ["x"], ["z"])]
        inits = {}
    else:
        nodes = [h.make_node("Unsqueeze", ["x", "a"], ["u"]),
                 h.make_node("Squeeze", ["u", "a0"], ["y"]),
                 h.make_node("Squeeze", ["x"], ["z"])]
        inits = {"a": np.array([0, -1], np.int64), "a0": np.array([0], np.int64)}
    m = make(nodes, [vi("x", [3, 1, 4])], [vi("y"), vi("z")], inits, opset=opset)
    model, got = run_both(m, {"x": randn(rng, 3, 1, 4)})
    assert got["y"].shape == (3, 1, 4, 1) and got["z"].shape == (3, 4)


@pytest.mark.parametrize("opset", [9, 13])
def test_slice_forms(rng, opset):
    if opset < 10:
        nodes = [h.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[1000, -1],
                             axes=[1, 3])]
        inits = {}
    else:
        nodes = [h.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])]
        inits = {"st": np.array([1, -1], np.int64), "en": np.array([1000, -1000], np.int64),
                 "ax": np.array([1, 3], np.int64), "sp": np.array([2, -2], np.int64)}
    m = make(nodes, [vi("x", [2, 5, 3, 6])], [vi("y")], inits, opset=opset)
    run_both(m, {"x": randn(rng, 2, 5, 3, 6)})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_forms(rng, opset):
    if opset == 11:
        node = h.make_node("Split", ["x"], ["a", "b", "c"], axis=1, split=[1, 2, 3])
        inits = {}
    elif opset == 13:
        node = h.make_node("Split", ["x", "sp"], ["a", "b", "c"], axis=1)
        inits = {"sp": np.array([1, 2, 3], np.int64)}
    else:
        node = h.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
        inits = {}
    m = make([node], [vi("x", [2, 6, 3])], [vi("a"), vi("b"), vi("c")], inits, opset=opset)
    run_both(m, {"x": randn(rng, 2, 6, 3)})


def test_reshape_zero_and_minus_one_with_free_batch(rng):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, the exporters' flatten with a free
    batch: planned per batch size, shape subgraph computed while planning."""
    inits = {"zero": np.array(0, np.int64), "minus": np.array([-1], np.int64),
             "s0": np.array([0, -1], np.int64)}
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             h.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
             h.make_node("Concat", ["n1", "minus"], ["shape"], axis=0),
             h.make_node("Reshape", ["x", "shape"], ["y"]),
             h.make_node("Reshape", ["x", "s0"], ["z"])]
    m = make(nodes, [vi("x", ["batch", 3, 4, 5])], [vi("y"), vi("z")], inits, opset=11)
    for batch in (1, 3):
        model, got = run_both(m, {"x": randn(rng, batch, 3, 4, 5)})
        assert got["y"].shape == (batch, 60)
    assert model.inputs[0].shape == (None, 3, 4, 5)


@pytest.mark.parametrize("op,extra", [
    ("LeakyRelu", dict(alpha=0.2)), ("LeakyRelu", dict(alpha=1.5)), ("Sigmoid", {}),
    ("HardSigmoid", dict(alpha=0.3, beta=0.4)), ("HardSwish", {}), ("Tanh", {}), ("Relu", {}),
])
def test_unary_activations(rng, op, extra):
    opset = 14 if op == "HardSwish" else 13
    m = make([h.make_node(op, ["x"], ["y"], **extra)], [vi("x", [2, 3, 4, 5])], [vi("y")],
             opset=opset)
    run_both(m, {"x": randn(rng, 2, 3, 4, 5, scale=4)})


def test_binary_ops_broadcast_and_prelu(rng):
    inits = {"slope": randn(rng, 3, 1, 1), "k": randn(rng, 5),
             "d": rng.uniform(1, 2, (1, 3, 1, 1)).astype(np.float32)}
    nodes = [h.make_node("PRelu", ["x", "slope"], ["p"]),
             h.make_node("Sub", ["p", "k"], ["s"]),
             h.make_node("Mul", ["s", "x2"], ["m"]),
             h.make_node("Div", ["m", "d"], ["q"]),
             h.make_node("Sum", ["q", "x", "x2"], ["y"])]
    m = make(nodes, [vi("x", [2, 3, 4, 5]), vi("x2", [1, 4, 5])], [vi("y")], inits)
    run_both(m, {"x": randn(rng, 2, 3, 4, 5), "x2": randn(rng, 1, 4, 5)})


def test_opset6_legacy_broadcast_axis(rng):
    inits = {"b": randn(rng, 3)}
    m = make([h.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
             [vi("x", [2, 3, 4, 5])], [vi("y")], inits, opset=6)
    model = engine.load(m)
    x = randn(rng, 2, 3, 4, 5)
    np.testing.assert_array_equal(model(x), x + inits["b"].reshape(1, 3, 1, 1))


def test_standalone_batchnorm_and_opset7_spatial0(rng):
    params = bn_params(rng, 3)
    nodes = [h.make_node("Sigmoid", ["x"], ["s"]), bn_node("s", "y")]
    m = make(nodes, [vi("x", [2, 3, 4, 4])], [vi("y")], params, opset=9)
    model, _ = run_both(m, {"x": randn(rng, 2, 3, 4, 4)})
    assert "BatchNormalization" in ops_of(model)
    # spatial=0 (opset 7): one statistic per channel and position
    rng2 = np.random.default_rng(1)
    params = {k: rng2.uniform(0.5, 1.5, (3, 4, 4)).astype(np.float32) for k in
              ("bn_s", "bn_b", "bn_m", "bn_v")}
    x = randn(rng, 2, 3, 4, 4)
    want = (x - params["bn_m"]) / np.sqrt(params["bn_v"] + 1e-5) * params["bn_s"] + params["bn_b"]
    for opset, extra in ((6, dict(is_test=1)), (7, {})):
        m = make([bn_node("x", "y", spatial=0, **extra)], [vi("x", [2, 3, 4, 4])], [vi("y")],
                 params, opset=opset)
        assert_close(engine.load(m)(x), want.astype(np.float32))


def test_dropout_identity_and_constants(rng):
    nodes = [h.make_node("Dropout", ["x"], ["d", "mask"]),
             h.make_node("Identity", ["d"], ["i"]),
             h.make_node("Constant", [], ["c"], value=nh.from_array(np.float32(2.0))),
             h.make_node("ConstantOfShape", ["shp"], ["ones"],
                         value=nh.from_array(np.array([1.0], np.float32))),
             h.make_node("Mul", ["i", "c"], ["m"]),
             h.make_node("Add", ["m", "ones"], ["y"])]
    m = make(nodes, [vi("x", [2, 3])], [vi("y"), vi("mask", elem=T.BOOL)],
             {"shp": np.array([2, 3], np.int64)}, opset=13)
    model, got = run_both(m, {"x": randn(rng, 2, 3)})
    assert ops_of(model) == ["Mul", "Add"]


def test_unsupported_operator_names_node_and_op():
    m = make([h.make_node("Relu", ["x"], ["r"], name="first"),
              h.make_node("TfIdfVectorizer", ["r"], ["y"], name="the_tfidf", mode="TF")],
             [vi("x", [2, 2])], [vi("y")])
    with pytest.raises(engine.ModelError, match=r"the_tfidf.*TfIdfVectorizer"):
        engine.load(m)


def test_unsupported_attribute_value_is_a_model_error(rng):
    m = make([h.make_node("Resize", ["x", "", "s"], ["y"], mode="quintic", name="r")],
             [vi("x", [1, 2, 5, 5])], [vi("y")], {"s": np.array([1, 1, 2, 2], np.float32)})
    with pytest.raises(engine.ModelError, match=r"'r' \(Resize\).*quintic"):
        engine.load(m)


def test_file_path_and_external_data(tmp_path, rng):
    inits = {"W": randn(rng, 4, 3, 3, 3)}
    m = make([h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
             [vi("x", [1, 3, 6, 6])], [vi("y")], inits)
    x = randn(rng, 1, 3, 6, 6)
    want = engine.load(m)(x)
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    np.testing.assert_array_equal(engine.load(path)(x), want)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    with pytest.raises(engine.ModelError):
        engine.load(bad)


# (alpha, beta, C's shape with m for the rows): a scaled product and bias, run after the
# product; a plain bias of one row or none, which the packed kernel adds itself; a C per row
GEMM_FORMS = [(0.5, 2.0, ("n",)), (1.0, 1.0, (1, "n")), (1.0, 1.0, None), (1.0, 0.5, ("m", "n"))]


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 20])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta,c_shape", GEMM_FORMS)
def test_gemm_with_constant_weights(rng, rows, trans_b, alpha, beta, c_shape):
    # one row: the engine's matrix-vector kernel (K = 1000: four-vector steps and a tail;
    # large enough for two threads); more: the packed micro-kernel. Both against ONNX Runtime
    # and float64, and 1 vs 2 threads bit-identical.
    k, n = 1000, 401
    assert threads_for(k * n, 2) == 2
    w = randn(rng, n, k) if trans_b else randn(rng, k, n)
    inits = {"W": w}
    inputs = ["x", "W"]
    if c_shape is not None:
        inits["C"] = randn(rng, *[{"m": rows, "n": n}.get(d, d) for d in c_shape])
        inputs.append("C")
    m = make([h.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta)],
             [vi("x", [rows, k])], [vi("y")], inits)
    feeds = {"x": randn(rng, rows, k)}
    model, got = run_both(m, feeds)
    assert ("dense: 1 row" if rows == 1 else f"packed: {rows} rows") in model.explain()
    outs = [model.run(feeds, num_threads=t)["y"] for t in (1, 2)]
    assert np.array_equal(outs[0], outs[1])
    if rows == 1 and trans_b:
        # one row reads the weights where they were loaded: no second, packed copy
        assert model._last_plan.transformed_bytes < w.nbytes // 2
    x64 = feeds["x"].astype(np.float64)
    ref = alpha * (x64 @ (w.T if trans_b else w))
    if c_shape is not None:
        ref = ref + beta * inits["C"]
    mag = np.abs(x64) @ np.abs(w.T if trans_b else w)
    assert np.all(np.abs(outs[0] - ref) <= 1e-5 * mag + 1e-4)


@pytest.mark.parametrize("a_shape", [(2, 28, 28, 96), (1, 196, 77), (3, 5), (1, 2, 7, 40)])
def test_matmul_by_constant_weights(rng, a_shape):
    # activations (rows: the leading dimensions flattened) times a constant matrix run on the
    # packed GEMM (ConvNeXt's Linear layers, of 12 rows on a 97x131 image's last stage).
    # Against ONNX Runtime and float64 (1e-5 of the sum of |terms|), 1 vs 2 threads
    # bit-identical.
    k, n = a_shape[-1], 131
    w = randn(rng, k, n)
    m = make([h.make_node("MatMul", ["x", "W"], ["y"])], [vi("x", list(a_shape))], [vi("y")],
             {"W": w})
    x = randn(rng, *a_shape)
    model, _ = run_both(m, {"x": x})
    rows = int(np.prod(a_shape[:-1]))
    assert "packed: " in model.explain(a_shape)
    if rows * k * n >= 2e6:
        assert threads_for(rows * k * n, 2) == 2
    outs = [model.run({"x": x}, num_threads=t)["y"] for t in (1, 2)]
    assert np.array_equal(outs[0], outs[1])
    ref = x.astype(np.float64) @ w
    mag = np.abs(x).astype(np.float64) @ np.abs(w)
    assert np.all(np.abs(outs[0] - ref) <= 1e-5 * mag + 1e-6)


@pytest.mark.parametrize("m_,k", [(1, 1), (1, 31), (1, 32), (2, 33), (1, 1000), (3, 1024)])
def test_dense_kernel_against_float64_and_row_grouping(rng, m_, k):
    """The matrix-vector kernel takes rows of w eight at a time and the rest one at a time (all
    one at a time for one row of a): each output within 1e-6 of the sum of |terms| of
    float64's, and the same bits whether its row is in a group of eight, alone, or in another
    thread's range."""
    from engine._kernels import dense
    for n in (1, 7, 8, 9, 17, 403):
        a, w = randn(rng, m_, k), randn(rng, n, k)
        out = np.empty((m_, n), np.float32)
        dense.f32_dense_rows(a, w, out, 1)
        ref = a.astype(np.float64) @ w.T.astype(np.float64)
        mag = np.abs(a).astype(np.float64) @ np.abs(w).T
        assert np.all(np.abs(out - ref) <= 1e-6 * mag + 1e-30)
        for threads in (2, 3):
            other = np.empty_like(out)
            dense.f32_dense_rows(a, w, other, threads)
            np.testing.assert_array_equal(out, other)
        for together in (1, 8):
            other = np.empty_like(out)
            dense.f32_dense_rows(a, w, other, 2, together)
            np.testing.assert_array_equal(out, other)
        if n > 5:
            tail = np.empty((m_, n - 5), np.float32)
            dense.f32_dense_rows(a, np.ascontiguousarray(w[5:]), tail, 1)
            np.testing.assert_array_equal(out[:, 5:], tail)


def test_dense_kernel_checks_shapes():
    from engine._kernels import dense
    with pytest.raises(ValueError, match="do not fit"):
        dense.f32_dense_rows(np.zeros((2, 5), np.float32), np.zeros((3, 4), np.float32),
                             np.zeros((2, 3), np.float32), 1)
    with pytest.raises(ValueError, match="together"):
        dense.f32_dense_rows(np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32),
                             np.zeros((2, 3), np.float32), 1, 4)


def test_each_conv_weight_transformed_once(rng):
    """The shape-folding pass and the plan, and a pointwise layer made again to take its
    residual and activation in the kernel, share one transformed weight per Conv node and
    algorithm: each is made once while the model loads and plans, and again for nothing at a
    second run."""
    c = 24
    inits = {"w1": randn(rng, c, c, 1, 1), "w2": randn(rng, c, c, 3, 3),
             "one": np.array([1], np.int64), "minus": np.array([-1], np.int64)}
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"]),                 # pointwise
             h.make_node("Add", ["a", "x"], ["s"]),                   # residual, in the kernel
             h.make_node("Relu", ["s"], ["r"]),                       # then its activation
             h.make_node("Conv", ["r", "w2"], ["b"], pads=[1, 1, 1, 1]),
             h.make_node("Shape", ["b"], ["shape"]),                  # folded while loading
             h.make_node("Gather", ["shape", "one"], ["ch"], axis=0),
             h.make_node("Concat", ["one", "ch", "minus"], ["to"], axis=0),
             h.make_node("Reshape", ["b", "to"], ["y"])]
    m = make(nodes, [vi("x", [1, c, 20, 20])], [vi("y")], inits)
    model = engine.load(m, layout="nchw")     # the planned NCHW layers (blocked steps pack anew)
    convs = [op for op in model._ops.values() if hasattr(op, "transforms")]
    made = [op.transforms.made for op in convs]
    assert len(convs) == 2 and all(made)
    x = randn(rng, 1, c, 20, 20)
    model.run({"x": x})
    model.run({"x": x})
    algorithms = sorted(layer.algorithm for op in convs for layer in op._layers.values())
    assert "pointwise" in algorithms, algorithms
    assert [op.transforms.made for op in convs] == made
    assert all(op.transforms.made == len(op.transforms.keys()) for op in convs)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    # the 3x3 layer may run Winograd F(4x4,3x3): its error is stated relative to the largest
    # output (engine/dispatch/winograd.py TILE_REL_ERROR)
    np.testing.assert_allclose(model.run({"x": x})["y"], ref, rtol=0,
                               atol=1e-4 * np.abs(ref).max())


class ShapeCacheView(dict):
    """An empty stand-in for ops without planned layers."""


@pytest.mark.parametrize("order", ["x_first", "sigmoid_first"])
def test_sigmoid_times_input_fuses_into_silu(rng, order):
    inits = {"W": randn(rng, 16, 8, 3, 3)}
    mul_in = ["c", "s"] if order == "x_first" else ["s", "c"]
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Sigmoid", ["c"], ["s"]),
             h.make_node("Mul", mul_in, ["m"]),
             h.make_node("Sigmoid", ["m"], ["t"]),          # read twice: stays a Sigmoid
             h.make_node("Mul", ["t", "t"], ["y"])]
    m = make(nodes, [vi("x", [2, 8, 12, 12])], [vi("y")], inits)
    x = randn(rng, 2, 8, 12, 12) * 4
    # rtol for a Winograd F(4x4,3x3) convolution (engine/dispatch/winograd.py TILE_REL_ERROR)
    model, got = run_both(m, {"x": x}, rtol=1e-4)
    # the SiLU then runs in the convolution's output step
    assert ops_of(model).count("SiLU") == 0 and ops_of(model).count("Sigmoid") == 1
    assert "fused 1 Sigmoid + Mul pairs into SiLU" in model.explain()
    assert "+ silu in the kernel's output step" in model.explain()


def test_local_functions_are_inlined_and_refusals_name_opset_and_hint():
    f = h.make_function("local", "Swish", ["x"], ["y"],
                        [h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["x", "s"], ["y"])],
                        [h.make_opsetid("", 17)])
    g = h.make_graph([h.make_node("Swish", ["x"], ["y"], domain="local")], "g",
                     [vi("x", [2, 3])], [vi("y")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("local", 1)],
                     functions=[f])
    x = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(engine.load(m).run({"x": x})["y"], x / (1 + np.exp(-x)),
                               rtol=1e-6, atol=1e-7)
    g = h.make_graph([h.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft")], "g",
                     [vi("x", [2, 3])], [vi("y")])
    with pytest.raises(engine.ModelError, match="FusedConv.*com.microsoft.*contrib"):
        engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17),
                                                   h.make_opsetid("com.microsoft", 1)]))
    m = make([h.make_node("Loop", ["x"], ["y"], name="the_loop")], [vi("x", [2, 3])], [vi("y")])
    with pytest.raises(engine.ModelError, match=r"the_loop.*'Loop' \(opset \d+\).*unroll"):
        engine.load(m)
