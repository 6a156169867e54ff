"""Model files a careless exporter or an attacker might write: every one is refused at load with
engine.ModelError naming the node or attribute, never another exception type, and nothing is
computed from a value the kernels cannot index."""
import numpy as np
import pytest

import engine

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

BIG = 2**31


def vi(name, shape=None, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


def model(nodes, inits=None, x_shape=(1, 3, 8, 8), outputs=("y",)):
    g = h.make_graph(nodes, "hostile", [vi("x", list(x_shape))], [vi(o) for o in outputs],
                     [nh.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


W = {"w": np.ones((4, 3, 3, 3), np.float32)}

CASES = {
    # attributes beyond the kernels' int range
    "conv stride 2**31": (model([h.make_node("Conv", ["x", "w"], ["y"], strides=[BIG, 1])], W),
                          "strides"),
    "conv stride 2**33": (model([h.make_node("Conv", ["x", "w"], ["y"], strides=[1, 2**33])], W),
                          "strides"),
    "conv dilation 2**31": (model([h.make_node("Conv", ["x", "w"], ["y"], dilations=[BIG, 1])],
                                  W), "dilations"),
    "conv pads 2**31": (model([h.make_node("Conv", ["x", "w"], ["y"], pads=[BIG, 0, 0, 0])], W),
                        "pads"),
    "conv padded extent over 2**31": (
        model([h.make_node("Conv", ["x", "w"], ["y"], pads=[2**30, 0, 2**30, 0])], W), "pads"),
    "maxpool stride 2**31": (model([h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                                strides=[BIG, 1])]), "strides"),
    "averagepool stride 2**31": (model([h.make_node("AveragePool", ["x"], ["y"],
                                                    kernel_shape=[2, 2], strides=[1, BIG])]),
                                 "strides"),
    "maxpool kernel 2**31": (model([h.make_node("MaxPool", ["x"], ["y"],
                                                kernel_shape=[BIG, 2])]), "kernel_shape"),
    # structure the graph passes read before the operators are built
    "identity without inputs": (model([h.make_node("Identity", [], ["y"])]), "Identity"),
    "conv without outputs": (model([h.make_node("Conv", ["x", "w"], []),
                                    h.make_node("Relu", ["x"], ["y"])], W), "Conv"),
    "batchnorm with 3 inputs after a conv": (
        model([h.make_node("Conv", ["x", "w"], ["c"]),
               h.make_node("BatchNormalization", ["c", "s", "b"], ["y"])],
              {**W, "s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}),
        "BatchNormalization"),
    "add with one input": (model([h.make_node("Conv", ["x", "w"], ["c"]),
                                  h.make_node("Add", ["c"], ["y"])], W), "Add"),
    "relu after conv without inputs": (model([h.make_node("Conv", ["x", "w"], ["c"]),
                                              h.make_node("Relu", [], ["y"])], W), "Relu"),
    "concat with an empty input name": (model([h.make_node("Concat", ["x", "", "x"], ["y"],
                                                           axis=1)]), "Concat"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_a_model_error_naming_the_culprit(case):
    m, culprit = CASES[case]
    with pytest.raises(engine.ModelError, match=culprit):
        model_ = engine.load(m)
        model_.run({"x": np.ones((1, 3, 8, 8), np.float32)})


def test_constant_of_shape_with_an_integer_value_runs():
    # an int64 value (ONNX's default dtype for such a tensor made by some exporters) is a valid
    # file: the output takes the value's dtype
    value = h.make_tensor("value", T.INT64, [1], [7])
    shape = {"shape": np.array([2, 3], np.int64)}
    m = model([h.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
               h.make_node("Cast", ["c"], ["c32"], to=T.FLOAT),
               h.make_node("Add", ["x", "c32"], ["y"])], shape, x_shape=(2, 3))
    got = engine.load(m).run({"x": np.zeros((2, 3), np.float32)})["y"]
    np.testing.assert_array_equal(got, np.full((2, 3), 7, np.float32))


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, -2.0, 1e30])
def test_resize_with_a_scale_that_is_not_a_size(scale):
    scales = {"scales": np.array([1, 1, scale, 2], np.float32)}
    m = model([h.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], scales)
    with pytest.raises(engine.ModelError, match="Resize"):
        engine.load(m).run({"x": np.ones((1, 3, 8, 8), np.float32)})


def test_maxunpool_with_constant_indices_out_of_range():
    inits = {"ind": np.full((1, 3, 4, 4), 10**6, np.int64)}
    m = model([h.make_node("MaxUnpool", ["x", "ind"], ["y"], kernel_shape=[2, 2],
                           strides=[2, 2])], inits, x_shape=(1, 3, 4, 4))
    with pytest.raises(engine.ModelError, match="MaxUnpool"):
        engine.load(m).run({"x": np.ones((1, 3, 4, 4), np.float32)})


@pytest.mark.parametrize("call, arg", [
    (lambda x, w: engine.conv2d(x, w, stride=BIG), "stride"),
    (lambda x, w: engine.conv2d(x, w, dilation=(1, BIG)), "dilation"),
    (lambda x, w: engine.conv2d(x, w, padding=BIG), "padding"),
    (lambda x, w: engine.conv2d(x, w, padding=(2**30, 2**30, 2**30, 2**30)), "padding"),
    (lambda x, w: engine.conv1d(x[0], w[:, :, 0], stride=BIG), "stride"),
    (lambda x, w: engine.conv3d(x[:, :, None], w[:, :, None], stride=BIG), "stride"),
    (lambda x, w: engine.avg_pool2d(x, 2, stride=BIG), "stride"),
    (lambda x, w: engine.max_pool2d(x, 2, dilation=BIG), "dilation"),
    (lambda x, w: engine.conv_transpose2d(x, w.transpose(1, 0, 2, 3), stride=BIG), "stride"),
])
def test_functional_arguments_beyond_the_index_range(call, arg):
    x = np.ones((1, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=arg):
        call(x, w)


@pytest.mark.parametrize("call", [
    lambda: engine.conv2d(np.ones((1, 3, 0, 8), np.float32), np.ones((4, 3, 3, 3), np.float32)),
    lambda: engine.conv2d(np.ones((1, 3, 8, 0), np.float32), np.ones((4, 3, 1, 1), np.float32)),
    lambda: engine.conv1d(np.ones((1, 3, 0), np.float32), np.ones((4, 3, 3), np.float32)),
])
def test_empty_spatial_input_names_x(call):
    with pytest.raises(ValueError, match="^x must have non-empty spatial"):
        call()


def test_model_proto_external_data_needs_base_dir(tmp_path, monkeypatch):
    w = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3)
    m = model([h.make_node("Conv", ["x", "w"], ["y"])], {"w": w})
    onnx.save_model(m, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    # the working directory holds the data file too: it must not be read from there
    monkeypatch.chdir(tmp_path)
    with pytest.raises(engine.ModelError, match="base_dir"):
        engine.load(proto)
    x = np.ones((1, 3, 8, 8), np.float32)
    got = engine.load(proto, base_dir=tmp_path)(x)
    np.testing.assert_allclose(got, engine.conv2d(x, w), rtol=1e-6)


def test_maxunpool_folded_at_load_with_indices_out_of_range():
    # both inputs constant: the node is computed at load, where the kernel's check must become
    # a ModelError naming the node
    inits = {"xc": np.ones((1, 3, 4, 4), np.float32),
             "ind": np.full((1, 3, 4, 4), 10**6, np.int64)}
    m = model([h.make_node("MaxUnpool", ["xc", "ind"], ["u"], kernel_shape=[2, 2],
                           strides=[2, 2]), h.make_node("Add", ["x", "u"], ["y"])], inits)
    with pytest.raises(engine.ModelError, match="MaxUnpool"):
        engine.load(m)


def test_planned_layer_output_beyond_the_budget_names_the_layer():
    x = np.ones((1, 64, 8, 8), np.float32)
    layer = engine.Conv2d(np.ones((64, 64, 1, 1), np.float32), padding=65536)
    with pytest.raises(ValueError, match=r"^Conv2d on x of shape \(1, 64, 8, 8\).*budget"):
        layer(x)


def _opset(m, version):
    m.opset_import[0].version = version
    return m


FUZZ_FOUND = {
    # an attribute of type UNDEFINED reads as None in onnx: it must not be silently dropped
    "attribute without a type": (
        lambda: _set_undefined(model([h.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])],
                                     W)), "strides"),
    "old-opset Clip without inputs": (
        lambda: _opset(model([h.make_node("Clip", [], ["y"], min=0.0)]), 6), "Clip"),
    "old-opset Slice with a string": (
        lambda: _opset(model([h.make_node("Slice", ["x"], ["y"], starts=["a"], ends=[1])]), 9),
        "Slice"),
    "Slice with NaN starts": (
        lambda: model([h.make_node("Slice", ["x", "s", "e"], ["y"])],
                      {"s": np.array([np.nan], np.float32), "e": np.array([1], np.int64)}),
        "Slice"),
    "ConstantOfShape with an empty but huge shape": (
        lambda: model([h.make_node("ConstantOfShape", ["s"], ["c"]),
                       h.make_node("Add", ["x", "x"], ["y"])],
                      {"s": np.array([0, 2**62], np.int64)}), "ConstantOfShape"),
    "ConvTranspose on an empty input": (
        lambda: model([h.make_node("ConvTranspose", ["x", "w"], ["y"])],
                      {"w": np.ones((3, 2, 3, 3), np.float32)}, x_shape=(1, 3, 4, 0)),
        "ConvTranspose"),
}


def _set_undefined(m):
    m.graph.node[0].attribute[0].type = onnx.AttributeProto.UNDEFINED
    return m


@pytest.mark.parametrize("case", list(FUZZ_FOUND))
def test_fuzz_findings_are_model_errors(case):
    make, culprit = FUZZ_FOUND[case]
    m = make()
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    with pytest.raises(engine.ModelError, match=culprit):
        engine.load(m).run({"x": np.ones(shape, np.float32)})


def test_trailing_empty_input_name_means_absent():
    m = model([h.make_node("Add", ["x", "x", ""], ["y"])])
    x = np.arange(3 * 64, dtype=np.float32).reshape(1, 3, 8, 8)
    np.testing.assert_array_equal(engine.load(m).run({"x": x})["y"], 2 * x)


def _child_env():
    """The environment of a child Python that imports the engine this test imported."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


def test_an_infinite_weight_does_not_hang_the_load(tmp_path):
    # LAPACK's SVD (the separable algorithm's rank test) never returned on a 3x3 slice with an
    # Inf: loaded in a child so that a hang fails the test instead of the run
    import subprocess
    import sys
    w = np.ones((4, 1, 3, 3), np.float32)
    w[1, 0, 1, 1] = np.inf
    m = model([h.make_node("Conv", ["x", "w"], ["y"])], {"w": w}, x_shape=(1, 1, 8, 8))
    path = tmp_path / "inf.onnx"
    onnx.save(m, str(path))
    code = ("import sys, numpy as np, engine\n"
            "m = engine.load(sys.argv[1])\n"
            "y = m.run({'x': np.ones((1, 1, 8, 8), np.float32)})['y']\n"
            "assert np.isinf(y[0, 1]).all() and np.isfinite(y[0, 0]).all()\n")
    # cwd away from the source tree, whose engine/ would shadow the installed package
    done = subprocess.run([sys.executable, "-c", code, str(path)], timeout=120,
                          capture_output=True, text=True, cwd=tmp_path, env=_child_env())
    assert done.returncode == 0, done.stderr
