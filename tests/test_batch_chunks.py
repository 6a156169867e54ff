"""A batch runs as chunks of images, each a plan of its own on its own thread, only when the
graph computes each image from that image alone (engine/graph/batch.py): graphs that keep
images apart split and give the whole batch's values (against onnx.reference, float32, and
bit for bit at 1 and 2 threads); graphs that mix images along the batch run whole, and still
give the right values (against ONNX Runtime; onnx.reference counts MaxPool's indices per
plane, ONNX Runtime and the engine over the whole tensor).

Error model: the graphs are a 3x3 convolution of 8 channels (72 terms) and small heads, float32
sums of N(0, 1) terms against ONNX Runtime's float32 in another order: 1e-5 relative plus
1e-5 absolute covers a few eps32 of the sum of |terms| with a wide margin, and a chunk that
took another image's rows would be off by O(1).
"""
import numpy as np
import pytest

import engine
from engine.dispatch import batch as batch_rules

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper  # noqa: E402

ort = pytest.importorskip("onnxruntime")

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """One image a chunk whatever the graph's work and weights (the tests' graphs are
    small)."""
    monkeypatch.setattr(batch_rules, "MIN_CHUNK_FLOPS", 1.0)
    monkeypatch.setattr(batch_rules, "MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE", 0.0)


def model(tail, extra_inits=(), x_shape=("N", 8, 10, 10), out_rank=None):
    """x -> Conv 8->8 3x3 (pad 1) -> c, then the ``tail`` nodes, reading c, ending in y."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(
        (rng.standard_normal((8, 8, 3, 3)) / 4).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in extra_inits]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])] + tail
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, list(x_shape))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=9)


def i64(*v):
    return np.array(v, np.int64)


# graphs whose every image is computed from itself: (tail nodes, extra constants)
APART = {
    "flatten_gemm_softmax": (
        [h.make_node("Flatten", ["c"], ["f"]),
         h.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1),
         h.make_node("Softmax", ["g"], ["y"], axis=1)],
        [("gw", np.random.default_rng(1).standard_normal((5, 800)).astype(np.float32) / 30),
         ("gb", np.arange(5, dtype=np.float32))]),
    "reshape_from_shape": (     # x.reshape(x.shape[0], -1), as exporters write it
        [h.make_node("Shape", ["c"], ["s"]),
         h.make_node("Gather", ["s", "scalar0"], ["n"], axis=0),
         h.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
         h.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
         h.make_node("Reshape", ["c", "shape"], ["r"]),
         h.make_node("ReduceMean", ["r", "one"], ["y"], keepdims=0)],
        [("scalar0", np.array(0, np.int64)), ("zero", i64(0)), ("minus1", i64(-1)),
         ("one", i64(1))]),
    "pool_concat_transpose": (
        [h.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         h.make_node("GlobalAveragePool", ["c"], ["gp"]),
         h.make_node("Expand", ["gp", "shp"], ["ge"]),
         h.make_node("Concat", ["p", "ge"], ["cc"], axis=1),
         h.make_node("Transpose", ["cc"], ["y"], perm=[0, 2, 3, 1])],
        [("shp", i64(1, 8, 5, 5))]),
    "broadcast_constants": (
        [h.make_node("Mul", ["c", "scale"], ["m"]),
         h.make_node("Add", ["m", "bias"], ["a"]),
         h.make_node("Relu", ["a"], ["y"])],
        [("scale", np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(8, 1, 1)),
         ("bias", np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8, 1, 1))]),
}

# graphs that mix images along the batch: (tail nodes, extra constants)
MIXED = {
    "concat_axis0": ([h.make_node("Concat", ["c", "c"], ["y"], axis=0)], []),
    "softmax_axis0": ([h.make_node("Softmax", ["c"], ["y"], axis=0)], []),
    "reduce_over_batch": ([h.make_node("ReduceMean", ["c", "zero"], ["y"])],
                          [("zero", i64(0))]),
    "transpose_batch": ([h.make_node("Transpose", ["c"], ["y"], perm=[1, 0, 2, 3])], []),
    "reverse_batch": ([h.make_node("Slice", ["c", "st", "en", "zero", "step"], ["y"])],
                      [("st", i64(-1)), ("en", i64(-100)), ("zero", i64(0)),
                       ("step", i64(-1))]),
    "gather_images": ([h.make_node("Gather", ["c", "idx"], ["y"], axis=0)],
                      [("idx", i64(0))]),
    "constant_rows": ([h.make_node("Add", ["c", "rows"], ["y"])],
                      [("rows", np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))]),
    "batch_size_as_data": (
        [h.make_node("Shape", ["c"], ["s"]),
         h.make_node("Gather", ["s", "scalar0"], ["n"], axis=0),
         h.make_node("Cast", ["n"], ["nf"], to=T.FLOAT),
         h.make_node("Mul", ["c", "nf"], ["y"])],
        [("scalar0", np.array(0, np.int64))]),
    "fixed_reshape": ([h.make_node("Reshape", ["c", "shape"], ["y"])],
                      [("shape", i64(2, -1))]),
    "cumsum_batch": ([h.make_node("CumSum", ["c", "scalar0"], ["y"])],
                     [("scalar0", np.array(0, np.int64))]),
    "layer_norm_batch": ([h.make_node("LayerNormalization", ["c", "g"], ["y"], axis=0)],
                         [("g", np.ones((4, 8, 10, 10), np.float32))]),
    "flatten_axis0": ([h.make_node("Flatten", ["c"], ["y"], axis=0)], []),
    "maxpool_indices": ([h.make_node("MaxPool", ["c"], ["p", "ind"], kernel_shape=[2, 2]),
                         h.make_node("Cast", ["ind"], ["y"], to=T.FLOAT)], []),
    "gram_of_rows": ([h.make_node("Flatten", ["c"], ["f"]),
                      h.make_node("Transpose", ["f"], ["ft"], perm=[1, 0]),
                      h.make_node("MatMul", ["f", "ft"], ["y"])], []),
}


def reference(m, x):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def run_both(m, x):
    want = reference(m, x)
    model = engine.load(m)
    got = {nt: model.run({"x": x}, num_threads=nt)["y"] for nt in (1, 2)}
    return model, want, got


@pytest.mark.parametrize("case", sorted(APART))
def test_graphs_that_keep_images_apart_run_in_chunks(case):
    m = model(*APART[case])
    x = np.random.default_rng(2).standard_normal((4, 8, 10, 10)).astype(np.float32)
    model_, want, got = run_both(m, x)
    assert model_._split(((4, 8, 10, 10),)) is not None
    assert model_._last_split == (4, 1, model_._split(((4, 8, 10, 10),))[1])
    assert "a batch of 4 images runs as 4 chunks of 1 image" in model_.explain()
    np.testing.assert_allclose(got[1], want, **TOL)
    np.testing.assert_array_equal(got[1], got[2])


@pytest.mark.parametrize("case", sorted(MIXED))
def test_graphs_that_mix_images_run_whole(case):
    m = model(*MIXED[case])
    x = np.random.default_rng(2).standard_normal((4, 8, 10, 10)).astype(np.float32)
    model_, want, got = run_both(m, x)
    assert model_._split(((4, 8, 10, 10),)) is None
    assert model_._last_split is None
    if case == "gram_of_rows":
        # a sum of 800 products: each element's error bound scales with the sum of their
        # magnitudes, at most sqrt(G_ii G_jj) (Cauchy-Schwarz), not with the element itself
        scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
        assert np.all(np.abs(got[1] - want) <= 1e-6 * scale)
    else:
        np.testing.assert_allclose(got[1], want, **TOL)
    np.testing.assert_array_equal(got[1], got[2])


def test_uneven_chunks_and_a_batch_too_small_to_split(monkeypatch):
    """5 images in chunks of 2 (2 + 2 + 1, two plans); a batch whose work fits one chunk
    runs whole."""
    m = model(*APART["flatten_gemm_softmax"])
    model_ = engine.load(m)
    x = np.random.default_rng(3).standard_normal((5, 8, 10, 10)).astype(np.float32)
    flops = model_._flops(model_._infer({"x": (1, 8, 10, 10)})[0])
    monkeypatch.setattr(batch_rules, "MIN_CHUNK_FLOPS", 1.5 * flops)
    got = model_.run({"x": x}, num_threads=2)["y"]
    assert model_._last_split[:2] == (5, 2)
    np.testing.assert_allclose(got, reference(m, x), **TOL)
    np.testing.assert_array_equal(got, model_.run({"x": x}, num_threads=1)["y"])
    monkeypatch.setattr(batch_rules, "MIN_CHUNK_FLOPS", 10 * flops)
    again = engine.load(m)
    again.run({"x": x})
    assert again._last_split is None


def test_chunk_rule(monkeypatch):
    monkeypatch.setattr(batch_rules, "MIN_CHUNK_FLOPS", 1e9)
    monkeypatch.setattr(batch_rules, "MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE", 40.0)
    choose = batch_rules.choose_batch_chunk
    assert choose(1, 1e6)[0] == 1
    assert choose(32, 0.6e9)[0] == choose(8, 0.6e9, 14e6)[0] == 2      # MobileNetV2
    assert choose(8, 8e9)[0] == choose(8, 8.2e9, 102e6)[0] == 1         # ResNet-50
    assert choose(8, 1e6)[0] == 8
    # AlexNet: 1.4 GFLOP and 244 MB of weights an image, which every chunk reads again
    assert choose(3, 1.43e9, 244e6)[0] == 3
    assert choose(8, 1.43e9, 244e6) == (4, choose(8, 1.43e9, 244e6)[1])
    assert "2 chunks of 4 images" in choose(8, 1.43e9, 244e6)[1]
    # chunks as even as their count allows: 7 images needing 3 a chunk run 3 + 3 + 1 ...
    assert choose(7, 0.4e9)[0] == 3
    # ... and 5 needing 3 run 3 + 2, not 4 + 1
    assert choose(5, 0.34e9)[0] == 3 and "2 chunks" in choose(5, 0.34e9)[1]
    assert choose(9, 0.2e9)[0] == 5 and "2 chunks" in choose(9, 0.2e9)[1]


def test_chunked_runs_from_several_threads_at_once():
    """Runs from four Python threads share the chunks' threads and give the serial values."""
    from concurrent.futures import ThreadPoolExecutor
    model_ = engine.load(model(*APART["pool_concat_transpose"]))
    xs = [np.random.default_rng(k).standard_normal((3, 8, 10, 10)).astype(np.float32)
          for k in range(8)]
    want = [model_.run({"x": x}, num_threads=1)["y"] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: model_.run({"x": x}, num_threads=2)["y"], xs))
    assert model_._last_split is not None
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
