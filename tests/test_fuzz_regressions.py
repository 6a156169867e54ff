"""Cases bench/fuzz_loaders.py found (or probing around them found) that escaped the loader's
contract: a malformed model gives engine.ModelError naming the node, at load or while planning,
and never allocates past the memory budget or runs for hours. Each is a small hand-built ONNX
model; each test checks the refusal comes before anything large is made (the test runs in
milliseconds and within a few MB), and where a neighbouring sane model exists, that it still
runs.
"""
import resource

import numpy as np
import pytest

import engine

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T, helper as h, numpy_helper as nh  # noqa: E402

BUDGET = 256 << 20       # the fuzzer's max_memory


def model(op, x_shape, inits=None, inputs=("x",), opset=18, x_type=T.FLOAT, **attrs):
    node = h.make_node(op, list(inputs), ["y"], name="n", **attrs)
    graph_inputs = [] if x_shape is None else [h.make_tensor_value_info("x", x_type, x_shape)]
    g = h.make_graph([node], "g", graph_inputs, [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def refused(proto, *words, feeds=None):
    """engine.ModelError naming node 'n' and the words, at load or at the first run, without
    the process growing by more than 100 MB on the way."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(engine.ModelError) as info:
        m = engine.load(proto, max_memory=BUDGET)
        if feeds is not None:
            m.run(feeds)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    message = str(info.value)
    assert "'n'" in message, message
    for w in words:
        assert w in message, message
    assert grown < 100, f"grew {grown:.0f} MB before refusing"
    return message


def ones(*shape):
    return np.ones(shape, np.float32)


# ---------------------------------------------------------------------------- pooling
# A window far larger than the input, its pads just under the kernel (ONNX Runtime's only
# rule), gives a small output: the padded copy the "padded" and "numpy" paths pool was
# allocated whole (MemoryError, or 2.4 GB of RSS for a 1x3x8 input), and their taps were
# visited one by one (hours; the NumPy path built a Python list of a slice per tap first).

@pytest.mark.parametrize("op, nd", [("MaxPool", 1), ("AveragePool", 2), ("LpPool", 1),
                                    ("MaxPool", 3), ("LpPool", 3), ("AveragePool", 3)])
def test_pool_padded_copy_beyond_the_budget(op, nd):
    # few taps (2 outputs an axis), but a padded copy of 0.4 GB or more
    k = {1: 10**8, 2: 3000, 3: 200}[nd]
    proto = model(op, [1, 3] + [8] * nd, kernel_shape=[k] * nd, pads=[k - 1] * (2 * nd),
                  strides=[k] * nd)
    refused(proto, "padded copy of X")


def test_pool_with_indices_padded_copy_beyond_the_budget():
    k = 10**8
    node = h.make_node("MaxPool", ["x"], ["y", "i"], name="n", kernel_shape=[k],
                       pads=[k - 1, k - 1], strides=[k])
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, None),
                      h.make_tensor_value_info("i", T.INT64, None)])
    refused(h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=9),
            "padded copy of X")


def test_pool_taps_far_into_the_padding():
    # the padded copy (120 MB) fits; 5e6 taps for each of 3e7 outputs would take hours
    k = 5 * 10**6
    refused(model("AveragePool", [1, 3, 8], kernel_shape=[k], pads=[k - 1, k - 1]),
            "taps", "per element")


def test_pool_average_kernel_columns_far_into_the_padding():
    # the "direct" path: the average pooling kernel visits every column of each window (1e10
    # of them for a 1x1 output here), so it timed out too
    k = 10**7
    refused(model("AveragePool", [1, 3, 1024, 6], kernel_shape=[k, k], strides=[k, k],
                  auto_pad="SAME_LOWER", opset=17), "taps", "per element")


def test_pool_numpy_axis_taps():
    # Lp pooling runs in NumPy, looping over each axis's taps in Python
    k = 10**6
    refused(model("LpPool", [1, 3, 8], kernel_shape=[k], pads=[k - 1, k - 1], strides=[k]),
            "65536 taps")


def test_pool_large_windows_that_real_models_use_still_run():
    # SAME_UPPER with a kernel the size of the map: the padded path, 3136 taps per output
    x = np.arange(3 * 56 * 56, dtype=np.float32).reshape(1, 3, 56, 56) % 7
    m = engine.load(model("AveragePool", [1, 3, 56, 56], kernel_shape=[56, 56],
                          auto_pad="SAME_UPPER", opset=11), max_memory=BUDGET)
    y = m.run({"x": x})["y"]
    # count_include_pad=0: the mean of the input cells each window covers
    c = np.pad(np.cumsum(np.cumsum(x.astype(np.float64), 2), 3), ((0, 0), (0, 0), (1, 0),
                                                                    (1, 0)))
    lo, hi = np.maximum(np.arange(56) - 27, 0), np.minimum(np.arange(56) + 29, 56)
    sums = (c[:, :, hi][:, :, :, hi] - c[:, :, lo][:, :, :, hi] - c[:, :, hi][:, :, :, lo]
            + c[:, :, lo][:, :, :, lo])
    counts = np.outer(hi - lo, hi - lo)
    np.testing.assert_allclose(y, sums / counts, rtol=1e-5)
    # and a 1-D Lp pool whose kernel exceeds its input, over its padding
    m = engine.load(model("LpPool", [1, 2, 8], kernel_shape=[20], pads=[19, 19], strides=[7]),
                    max_memory=BUDGET)
    y = m.run({"x": np.ones((1, 2, 8), np.float32)})["y"]
    # windows [-19, 0], [-12, 7], [-5, 14], [2, 21] cover 1, 8, 8 and 6 input cells
    np.testing.assert_allclose(y, np.broadcast_to(np.sqrt([1, 8, 8, 6]), (1, 2, 4)), rtol=1e-6)


# ---------------------------------------------------------------------------- Resize
# A small input resized by a huge factor: the output fits the budget, but the tap tables
# (several float64 (outputs, taps) arrays while they are made) took over 1 GB.

def test_resize_cubic_tables_beyond_the_budget():
    scales = np.array([1, 1, 1, 1e6], np.float32)
    refused(model("Resize", [1, 2, 4, 4], {"s": scales}, ["x", "", "s"], mode="cubic"),
            "tables of axis 3")


def test_resize_nearest_tables_beyond_the_budget():
    # the engine's interpolate path (4-D, asymmetric, floor): its tables too
    scales = np.array([1, 1, 1.5e7, 1], np.float32)
    refused(model("Resize", [1, 1, 4, 1], {"s": scales}, ["x", "", "s"], mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
            "tables of a 60000000x1 output")


def test_resize_by_a_large_factor_still_runs():
    scales = np.array([1, 1, 1, 1e5], np.float32)
    m = engine.load(model("Resize", [1, 2, 4, 4], {"s": scales}, ["x", "", "s"],
                          mode="cubic"), max_memory=BUDGET)
    y = m.run({"x": ones(1, 2, 4, 4)})["y"]
    assert y.shape == (1, 2, 4, 400000)
    np.testing.assert_allclose(y, 1, rtol=1e-5)      # Keys' weights sum to 1


# ---------------------------------------------------------------------------- rearranging

@pytest.mark.parametrize("op, shape", [("DepthToSpace", [1, 0, 2, 2]),
                                       ("SpaceToDepth", [1, 3, 0, 0])])
def test_blocks_of_an_empty_input(op, shape):
    # an empty side passes the divisibility check for any blocksize: bs * bs block slices
    # were listed (2**40 of them for 2**20: a hang, then MemoryError), and the output's size
    # went unchecked
    refused(model(op, shape, opset=13, blocksize=2**40), "outside 0 to")
    bs = 2**20 if op == "DepthToSpace" else 2**10
    m = engine.load(model(op, shape, opset=13, blocksize=bs), max_memory=BUDGET)
    y = m.run({"x": np.zeros(shape, np.float32)})["y"]
    assert y.shape == ((1, 0, 2 * bs, 2 * bs) if op == "DepthToSpace" else (1, 3 * bs * bs, 0, 0))


def test_trilu_mask_beyond_the_budget():
    # the mask of the last two axes is made when the model is planned, before the plan's
    # budget sees the output: it was an int64 table of the matrix's size (2.6 GB here)
    refused(model("Trilu", [1, 16385, 16384], opset=14), "mask of the last two axes")


def test_range_work_array_beyond_the_budget():
    # 4e7 float32 values fit 256 MB, but are computed in float64 first
    start, limit, delta = (np.array(v, np.float32) for v in (0, 4e7, 1))
    refused(model("Range", None, {"s": start, "l": limit, "d": delta}, ["s", "l", "d"],
                  opset=11), "computed in float64")


def test_onehot_beyond_the_budget_before_its_table():
    # the int64 table of the depth (240 MB) was made before the plan refused the output
    refused(model("OneHot", [2, 3], {"d": np.array(3 * 10**7, np.int64),
                                     "v": np.array([0, 1], np.float32)}, ["x", "d", "v"],
                  opset=11, x_type=T.INT64), "memory budget")


# ---------------------------------------------------------------------------- empty tensors

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape", [[2, 0], [0, 3], [2, 0, 3]])
def test_softmax_of_an_empty_tensor(op, shape):
    # NumPy's max over an empty axis raised while the model ran
    m = engine.load(model(op, shape, opset=13, axis=-1), max_memory=BUDGET)
    y = m.run({"x": np.zeros(shape, np.float32)})["y"]
    assert y.shape == tuple(shape)


# ---------------------------------------------------------------------------- import

def test_a_domain_that_is_not_utf8():
    # a byte flip in a node's domain: the unsupported-domain message failed with TypeError
    node = h.make_node("Relu", ["x"], ["y"], name="n", domain="zzzzdomain")
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("zzzzdomain", 1)],
                     ir_version=9)
    data = m.SerializeToString().replace(b"zzzzdomain", b"\xff\xfezzdomain")
    refused(onnx.ModelProto.FromString(data), "domain")


def test_onehot_of_no_indices_with_a_huge_depth():
    # the output is empty, so no size check stopped the int64 table of 2**31 - 1 depths
    # (MemoryError)
    m = engine.load(model("OneHot", [0, 3], {"d": np.array(2**31 - 1, np.int64),
                                             "v": np.array([0, 1], np.float32)},
                          ["x", "d", "v"], opset=11, x_type=T.INT64), max_memory=BUDGET)
    y = m.run({"x": np.zeros((0, 3), np.int64)})["y"]
    assert y.shape == (0, 3, 2**31 - 1)


@pytest.mark.parametrize("op, x_shape, shape", [
    ("Expand", [1, 1, 1, 1], [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]),
    ("Tile", [1, 1, 1, 1], [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]),
    ("Pad", [1, 2, 4, 4], [-2**31, 30000000, 0, 2, -1, 8, 32768, 30000000])])
def test_an_empty_output_whose_other_dimensions_overflow(op, x_shape, shape):
    # each dimension is within the index range and the output is empty, but NumPy refuses to
    # make it (ValueError "array is too big") when the plan allocates it
    refused(model(op, x_shape, {"s": np.array(shape, np.int64)}, ["x", "s"], opset=17),
            feeds={"x": np.ones(x_shape, np.float32)})


def test_integer_attributes_beyond_int64_are_refused(tmp_path):
    # a native file's JSON may hold any integer; LRN's size of 1e30 overflowed at run time
    x = np.ones((1, 3, 4, 4), np.float32)
    m = engine.load(model("LRN", [1, 3, 4, 4], size=3))
    path = tmp_path / "lrn.safetensors"
    m.save(path)
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert '"size":3' in meta["graph"]
    meta["graph"] = meta["graph"].replace('"size":3', '"size":' + str(10 ** 30))
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(engine.ModelError, match="size"):
        engine.load(bad).run({"x": x})
    # a window far wider than the channels is one over all of them
    size = 2 ** 40
    wide = engine.load(model("LRN", [1, 3, 4, 4], size=size, alpha=1.0, beta=0.5, bias=2.0))
    ref = x / np.sqrt(2.0 + 1.0 / size * np.sum(x.astype(np.float64) ** 2, axis=1,
                                                keepdims=True))
    np.testing.assert_allclose(wide.run({"x": x})["y"], ref, rtol=1e-6)


def test_integer_mean_over_more_elements_than_the_type_holds():
    # ReduceMean of uint8 over 1584 elements: the count does not fit uint8
    x = np.full((33, 3, 4, 4), 7, np.uint8)
    m = engine.load(model("ReduceMean", [33, 3, 4, 4], {"axes": np.array([1, 2], np.int64)},
                          inputs=("x", "axes"), x_type=T.UINT8, opset=21))
    y = m.run({"x": x})["y"]
    ref = (x.astype(np.int64).sum(axis=(1, 2), keepdims=True) % 256) // 12
    np.testing.assert_array_equal(y, ref.astype(np.uint8))
    x8 = np.full((1, 300), -100, np.int8)
    m8 = engine.load(model("ReduceMean", [1, 300], {"axes": np.array([1], np.int64)},
                           inputs=("x", "axes"), x_type=T.INT8, opset=21))
    s = np.int8(x8.astype(np.int64).sum() % 256 - 256 if x8.astype(np.int64).sum() % 256 > 127
                else x8.astype(np.int64).sum() % 256)
    assert m8.run({"x": x8})["y"].item() == int(np.trunc(int(s) / 300))
