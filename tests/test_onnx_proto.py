"""The ONNX reader without the onnx package (engine/io/onnx_proto.py): every element type and
storage form decodes as onnx.numpy_helper does, external data stays inside the model's
directory, and loading an .onnx file never imports onnx."""

import numpy as np
import pytest

import engine
from engine.errors import ModelError
from engine.io import onnx_proto

from children import run_python

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402


def ours(tensor, base_dir=None):
    """The tensor read back through our schema: serialized inside a model's graph."""
    g = h.make_graph([], "g", [], [], [tensor])
    m = onnx_proto.parse_model(h.make_model(g).SerializeToString())
    return onnx_proto.to_array(m.graph.initializer[0], "t", base_dir)


ARRAYS = [(np.arange(12) * 7 - (0 if np.dtype(d).kind == "u" else 40)).astype(d).reshape(3, 4)
          for d in (np.float32, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8,
                    np.uint16, np.uint32, np.uint64, np.float16)] + [
    np.array([True, False, True]), np.array(2.5, np.float32), np.zeros((0, 3), np.float32),
    np.array([1 + 2j, -3j], np.complex64), np.array([np.nan, np.inf, -0.0], np.float32)]


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("raw", [True, False])
def test_decodes_like_numpy_helper(a, raw):
    if raw:
        t = nh.from_array(a, "t")
    else:       # the typed repeated fields, as make_tensor writes them
        t = h.make_tensor("t", h.np_dtype_to_tensor_dtype(a.dtype), a.shape,
                          a.ravel().tolist() if a.dtype != np.float16 else a.ravel(),
                          raw=False)
    want, got = nh.to_array(t), ours(t)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_bfloat16_is_widened_to_float32():
    values = np.array([1.0, -2.5, 3.140625, np.inf], np.float32)
    t = h.make_tensor("t", T.BFLOAT16, [4], values.tolist())
    np.testing.assert_array_equal(ours(t), values)


def tensor(data_type, dims, **fields):
    """A TensorProto as a file may hold it, unchecked."""
    t = T(name="t", data_type=data_type, dims=dims)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(t, k).extend(v)
        else:
            setattr(t, k, v)
    return t


@pytest.mark.parametrize("t,message", [
    (tensor(T.FLOAT, [2, 3], float_data=[1.0] * 5), "5 values for shape"),
    (tensor(T.FLOAT, [2, 3], raw_data=b"\0" * 20), "20 bytes of data"),
    (tensor(T.FLOAT, [2, -3], raw_data=b""), "negative dimension"),
    (tensor(T.STRING, [1], string_data=[b"a"]), "string tensors"),
    (tensor(T.FLOAT8E4M3FN, [1], raw_data=b"\0"), "element type 17"),
    (tensor(T.COMPLEX64, [2], float_data=[1.0] * 3), "3 values for 2 complex"),
])
def test_bad_tensors_raise_model_error(t, message):
    with pytest.raises(ModelError, match=message):
        ours(t)


def _external(tmp_path, location, offset=0, length=None):
    (tmp_path / "w.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    t = tensor(T.FLOAT, [4], data_location=T.EXTERNAL)
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def test_external_data_at_an_offset(tmp_path):
    got = ours(_external(tmp_path, "w.bin", offset=8, length=16), str(tmp_path))
    np.testing.assert_array_equal(got, [2, 3, 4, 5])


@pytest.mark.parametrize("location,kw,message", [
    ("../w.bin", {}, "outside the model's directory"),
    ("/etc/passwd", {}, "must be a relative path"),
    ("w.bin", dict(offset=24, length=16), "holds 8 bytes at offset 24"),
    ("w.bin", dict(offset=-4), "negative"),
    ("missing.bin", {}, "cannot read external data"),
])
def test_bad_external_data(tmp_path, location, kw, message):
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "w.bin").write_bytes(b"\0" * 32)
    with pytest.raises(ModelError, match=message):
        ours(_external(inner, location, **kw), str(inner))


def test_loading_an_onnx_file_does_not_import_onnx(tmp_path):
    w = np.ones((4, 3, 3, 3), np.float32)
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    code = ("import sys, numpy as np, engine\n"
            f"m = engine.load({str(path)!r})\n"
            "y = m.run({'x': np.ones((1, 3, 8, 8), np.float32)})['y']\n"
            "assert np.allclose(y, 27), y\n"
            "print('onnx' in sys.modules)")
    out = run_python(["-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_local_functions_are_inlined(tmp_path):
    """A model-local function (the onnx package inlines it) runs as its nodes."""
    f = h.make_function("local", "Twice", ["a"], ["b"], [h.make_node("Add", ["a", "a"], ["b"])],
                        [h.make_opsetid("", 17)])
    g = h.make_graph([h.make_node("Twice", ["x"], ["y"], domain="local")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = h.make_model(g, functions=[f], opset_imports=[h.make_opsetid("", 17),
                                                      h.make_opsetid("local", 1)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(engine.load(m).run({"x": x})["y"], 2 * x)


def test_not_a_model():
    with pytest.raises(ModelError, match="not an ONNX model"):
        engine.load(b"\x0a\xff\xff\xff\xff\x0f")
    with pytest.raises(ModelError, match="expected a path"):
        from engine.io import onnx_import
        onnx_import.load(3.5)
