"""The native file (Model.save / engine.load of a .safetensors file): bit-exact round trips,
loading without onnx, and every kind of bad file refused with engine.ModelError naming what
is wrong."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine.graph import Graph, Model, Node, TensorSpec

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

# subprocesses start here, not in the checkout, so that `import engine` finds the installed
# package rather than the source tree without its compiled kernels
HERE = os.path.dirname(os.path.abspath(__file__))


def net(rng, batch=1):
    """Convolutions with folded BN, fused activations and residual, pooling with indices,
    unpooling, resize, a shape subgraph and a head: most node kinds in one file."""
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    consts = {"w1": f(8, 3, 3, 3), "b1": f(8), "w2": f(8, 8, 3, 3), "s": f(8) + 1,
              "bb": f(8), "m": f(8), "v": np.abs(f(8)) + 0.5, "wt": f(8, 4, 2, 2),
              "scales": np.array([1, 1, 2, 2], np.float32), "fc": f(10, 4),
              "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [
        Node("Conv", "conv1", ["x", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1]}),
        Node("Clip", "relu6", ["c1", "lo", "hi"], ["r1"]),
        Node("Conv", "conv2", ["r1", "w2"], ["c2"], {"pads": [1, 1, 1, 1]}),
        Node("BatchNormalization", "bn", ["c2", "s", "bb", "m", "v"], ["n2"]),
        Node("Add", "res", ["n2", "r1"], ["a2"]),
        Node("Relu", "relu", ["a2"], ["r2"]),
        Node("MaxPool", "pool", ["r2"], ["p", "idx"], {"kernel_shape": [2, 2],
                                                      "strides": [2, 2]}),
        Node("Shape", "shape", ["r2"], ["sh"]),
        Node("MaxUnpool", "unpool", ["p", "idx", "sh"], ["u"], {"kernel_shape": [2, 2],
                                                              "strides": [2, 2]}),
        Node("ConvTranspose", "up", ["p", "wt"], ["t"], {"strides": [2, 2]}),
        Node("Resize", "resize", ["t", "", "scales"], ["z"], {"mode": "linear"}),
        Node("GlobalAveragePool", "gap", ["t"], ["g"]),
        Node("Flatten", "flat", ["g"], ["fl"]),
        Node("Gemm", "fc", ["fl", "fc"], ["y"], {"transB": 1, "alpha": 0.7}),
    ]
    shape = (batch, 3, 10, 10) if batch else (None, 3, 10, 10)
    outs = [TensorSpec(n, None, "float32") for n in ("y", "z", "u")]
    return Model(Graph(nodes, [TensorSpec("x", shape, "float32")], outs, consts))


@pytest.fixture
def rng():
    return np.random.default_rng(5)


@pytest.fixture
def saved(tmp_path, rng):
    model = net(rng)
    path = tmp_path / "net.safetensors"
    model.save(path)
    return model, path


def test_round_trip_is_bit_exact(saved, rng):
    model, path = saved
    loaded = engine.load(path)
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    a, b = model.run({"x": x}), loaded.run({"x": x})
    for name in ("y", "z", "u"):
        np.testing.assert_array_equal(a[name], b[name])
    assert loaded.inputs == model.inputs and loaded.outputs == model.outputs
    assert [n.op for n in loaded.graph.nodes] == [n.op for n in model.graph.nodes]
    assert "BatchNormalization" not in [n.op for n in loaded.graph.nodes]   # stored folded
    assert loaded.graph.notes == model.graph.notes
    # saving the loaded model again stores the same graph and tensors (the bytes may differ:
    # safetensors does not fix the order of metadata keys)
    again = path.parent / "again.safetensors"
    loaded.save(again)
    with safe_open(str(path), framework="numpy") as f, \
            safe_open(str(again), framework="numpy") as g:
        assert json.loads(f.metadata()["graph"]) == json.loads(g.metadata()["graph"])
        assert sorted(f.keys()) == sorted(g.keys())
        for k in f.keys():
            np.testing.assert_array_equal(f.get_tensor(k), g.get_tensor(k))


def test_round_trip_with_free_batch(tmp_path, rng):
    model = net(rng, batch=None)
    path = tmp_path / "free.safetensors"
    model.save(path)
    loaded = engine.load(path)
    assert loaded.inputs[0].shape == (None, 3, 10, 10)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 10, 10)).astype(np.float32)
        np.testing.assert_array_equal(model(x)[0], loaded(x)[0])


def test_loading_does_not_import_onnx(saved, tmp_path):
    _, path = saved
    code = ("import sys, numpy as np, engine; m = engine.load(sys.argv[1]); "
            "m.run({'x': np.zeros((1, 3, 10, 10), np.float32)}); "
            "bad = [k for k in sys.modules if k == 'onnx' or k.startswith(('onnx.', 'torch'))]; "
            "assert not bad, bad; print('ok')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(engine.__file__)), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, env=env, timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_file_layout(saved):
    _, path = saved
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "convengine" and meta["format_version"] == "1"
    graph = json.loads(meta["graph"])
    assert set(graph["constants"]) == keys
    assert {n["op"] for n in graph["nodes"]} >= {"Conv", "MaxPool", "Resize", "Gemm"}
    conv2 = next(n for n in graph["nodes"] if n["name"] == "conv2")
    assert conv2["attrs"]["activation"] == "relu" and conv2["inputs"][3]


# ------------------------------------------------------------------------------ bad files

def rewrite(src, dst, graph=None, tensors=None, meta=None):
    """Copy a native file, editing its graph JSON, tensors or metadata on the way."""
    with safe_open(str(src), framework="numpy") as f:
        md = dict(f.metadata())
        ts = {k: f.get_tensor(k) for k in f.keys()}
    g = json.loads(md["graph"])
    if graph:
        graph(g)
    if tensors:
        tensors(ts, g)
    md["graph"] = json.dumps(g)
    if meta:
        meta(md)
    save_file(ts, str(dst), metadata=md)
    return dst


def node(g, name):
    return next(n for n in g["nodes"] if n["name"] == name)


def first_weight(g):
    return node(g, "conv2")["inputs"][1]


def _swap_shape(ts, g):
    name = first_weight(g)
    ts[name] = np.zeros((8, 8, 3, 2), np.float32)


def _consistent_but_wrong_shape(ts, g):
    name = first_weight(g)
    ts[name] = np.zeros((8, 5, 3, 3), np.float32)
    g["constants"][name]["shape"] = [8, 5, 3, 3]


def _dtype(ts, g):
    name = first_weight(g)
    ts[name] = ts[name].astype(np.float64)


def _cycle(g):
    node(g, "conv1")["inputs"][0] = "y"


def _dangling(g):
    node(g, "gap")["inputs"][0] = "nowhere"


def _unknown_op(g):
    node(g, "relu6" if any(n["name"] == "relu6" for n in g["nodes"]) else "gap")["op"] = "Frob"


def _missing_tensor(ts, g):
    del ts[first_weight(g)]


def _extra_tensor(ts, g):
    ts["stowaway"] = np.zeros(3, np.float32)


def _bad_attr(g):
    node(g, "pool")["attrs"]["strides"] = "two"


def _unknown_attr(g):
    node(g, "pool")["attrs"]["windowing"] = 3


def _bad_structure(g):
    g["nodes"][0]["inputs"] = "x"


def _duplicate_output(g):
    node(g, "gap")["outputs"] = ["t"]


@pytest.mark.parametrize("edit,message", [
    (dict(tensors=_swap_shape), "has shape \\(8, 8, 3, 2\\) in the file, the graph says"),
    (dict(tensors=_consistent_but_wrong_shape), "conv2.*channels"),
    (dict(tensors=_dtype), "has dtype float64 in the file"),
    (dict(graph=_cycle), "cycle"),
    (dict(graph=_dangling), "'gap' \\(GlobalAveragePool\\): input 0 'nowhere'"),
    (dict(graph=_unknown_op), "'Frob' is not supported"),
    (dict(tensors=_missing_tensor), "missing from the file"),
    (dict(tensors=_extra_tensor), "'stowaway' is in the file but not in the graph"),
    (dict(graph=_bad_attr), "'pool'.*strides.*must be ints"),
    (dict(graph=_unknown_attr), "'pool'.*unknown attribute 'windowing'"),
    (dict(graph=_bad_structure), "inputs must be a list"),
    (dict(graph=_duplicate_output), "defined twice"),
    (dict(meta=lambda m: m.update(format="other")), "not a convengine model"),
    (dict(meta=lambda m: m.update(format_version="99")), "format_version '99'"),
    (dict(meta=lambda m: m.update(graph="{not json")), "not valid JSON"),
])
def test_bad_files_raise_model_error(saved, tmp_path, edit, message):
    _, path = saved
    bad = rewrite(path, tmp_path / "bad.safetensors", **edit)
    with pytest.raises(engine.ModelError, match=message):
        engine.load(bad)


@pytest.mark.parametrize("keep", [0.5, 0.99, 12 / 1e9])
def test_truncated_files_raise_model_error(saved, tmp_path, keep):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:max(4, int(len(data) * keep))])
    with pytest.raises(engine.ModelError):
        engine.load(bad)


def test_not_a_model_at_all(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(engine.ModelError):
        engine.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(engine.ModelError, match="not a convengine model"):
        engine.load(plain)
    with pytest.raises(FileNotFoundError):
        engine.load(tmp_path / "nothing.safetensors")


# ------------------------------------------------------- mapped weights, stored transforms

def big_net(rng, c=64, side=24):
    """3x3 layers wide enough for Winograd and a pointwise one, all blocked, and a dilated
    layer whose taps mostly read padding, its output a row shorter than its input: on NCHW
    (live taps)."""
    f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    consts = {"w1": f(c, 3, 3, 3), "w2": f(c, c, 3, 3), "w3": f(c, c, 1, 1), "dw": f(c, 1, 3, 3),
              "w4": f(2 * c, c, 3, 3)}
    nodes = [Node("Conv", "stem", ["x", "w1"], ["a"], {"pads": [1, 1, 1, 1]}),
             Node("Conv", "wino", ["a", "w2"], ["b"], {"pads": [1, 1, 1, 1]}),
             Node("Conv", "point", ["b", "w3"], ["c"]),
             Node("Conv", "depth", ["c", "dw"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node("Conv", "dilated", ["d", "w4"], ["y"], {"pads": [8, 8, 7, 8],
                                                          "dilations": [8, 8]})]
    return Model(Graph(nodes, [TensorSpec("x", (1, 3, side, side), "float32")],
                       [TensorSpec("y", None, "float32")], consts))


def conv_transforms(model):
    return {name: op.transforms for name, op in model._ops.items()
            if hasattr(op, "transforms")}


def test_weights_are_mapped_from_the_file_not_copied(saved, rng):
    model, path = saved
    loaded = engine.load(path)
    mapped = [v for v in loaded.graph.constants.values() if v.size]
    assert mapped and all(not v.flags.writeable and not v.flags.owndata for v in mapped)
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    want, got = model.run({"x": x}), loaded.run({"x": x})
    assert all(np.array_equal(want[k], got[k]) for k in want)


def _mapped_rss_kib(path):
    """KiB of ``path``'s mappings resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(str(path))
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's smaps")
def test_weights_only_a_transform_reads_leave_memory(tmp_path, rng):
    """After planning, the pages of the file that only weight transforms read are given back:
    the Winograd layers' original weights (most of the file) are not resident."""
    c = 256
    f = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)  # noqa: E731
    consts = {f"w{k}": f(c, c, 3, 3) for k in range(3)}
    nodes = [Node("Conv", f"conv{k}", [f"t{k}", f"w{k}"], [f"t{k + 1}"], {"pads": [1, 1, 1, 1]})
             for k in range(3)]
    path = tmp_path / "wide.safetensors"
    Model(Graph(nodes, [TensorSpec("t0", (1, c, 28, 28), "float32")],
                [TensorSpec("t3", None, "float32")], consts)).save(path)
    loaded = engine.load(path)
    assert all(layer.algorithm.startswith("winograd_f") for op in loaded._ops.values()
               for layer in op._layers.values())
    loaded.run({"t0": f(1, c, 28, 28)})
    size_kib = os.path.getsize(path) / 1024
    assert _mapped_rss_kib(path) < 0.1 * size_kib, (_mapped_rss_kib(path), size_kib)


@pytest.fixture
def stored(tmp_path, rng):
    """(model, input, its output, the native file saved with transformed weights)."""
    model = big_net(rng)
    x = rng.standard_normal((1, 3, 24, 24)).astype(np.float32)
    want = model.run({"x": x})["y"]
    path = tmp_path / "t.safetensors"
    model.save(path, transformed=True)
    return model, x, want, path


def test_stored_transforms_are_read_instead_of_made(tmp_path, stored):
    model, x, want, path = stored
    model.save(tmp_path / "p.safetensors")
    plain = engine.load(tmp_path / "p.safetensors")
    loaded = engine.load(path)
    tw = conv_transforms(loaded)
    assert sum(t.read for t in tw.values()) >= 5 and sum(t.made for t in tw.values()) == 0
    keys = {k for t in tw.values() for k in t.keys()}
    assert "live_taps" in keys and any(k.startswith("nchw") for k in keys)
    assert "read the transformed weights of" in loaded.explain()
    assert np.array_equal(loaded.run({"x": x})["y"], want)
    # the file without them makes them, and computes the same
    assert sum(t.made for t in conv_transforms(plain).values()) >= 5
    assert np.array_equal(plain.run({"x": x})["y"], want)


def _retag(ts, meta, edit):
    doc = json.loads(meta["transformed"])
    edit(doc, ts)
    meta["transformed"] = json.dumps(doc)


def rewrite_transformed(src, dst, edit):
    with safe_open(str(src), framework="numpy") as f:
        md = dict(f.metadata())
        ts = {k: f.get_tensor(k) for k in f.keys()}
    _retag(ts, md, edit)
    save_file(ts, str(dst), metadata=md)
    return dst


def _other_cpu(doc, ts):
    doc["made_for"]["cpu"] = "another CPU"


def _wrong_shape(doc, ts):
    for keys in doc["layers"].values():
        for names in keys.values():
            for n in (names if isinstance(names, list) else [names]):
                if n is not None:
                    ts[n] = ts[n].reshape(-1)[:-16].copy()


def test_stored_transforms_for_another_machine_or_of_wrong_shape_are_made_again(tmp_path,
                                                                              stored):
    _, x, want, path = stored
    other = engine.load(rewrite_transformed(path, tmp_path / "o.safetensors", _other_cpu))
    assert "made for another machine or engine (cpu 'another CPU')" in other.explain()
    assert sum(t.read for t in conv_transforms(other).values()) == 0
    assert np.array_equal(other.run({"x": x})["y"], want)
    cut = engine.load(rewrite_transformed(path, tmp_path / "c.safetensors", _wrong_shape))
    assert sum(t.read for t in conv_transforms(cut).values()) == 0
    assert np.array_equal(cut.run({"x": x})["y"], want)


def _dangling_name(doc, ts):
    node = next(iter(doc["layers"].values()))
    key = next(iter(node))
    for name in (node[key] if isinstance(node[key], list) else [node[key]]):
        ts.pop(name, None)
    node[key] = "nowhere"


def _float64(doc, ts):
    node = next(iter(doc["layers"].values()))
    name = node[next(iter(node))]
    name = name[0] if isinstance(name, list) else name
    ts[name] = ts[name].astype(np.float64)


@pytest.mark.parametrize("edit,message", [
    (_dangling_name, "name a tensor that is not in the file"),
    (_float64, "must be float32"),
    (lambda doc, ts: doc.update(layers=[1]), "transformed.layers must be a dict"),
    (lambda doc, ts: doc.pop("made_for"), "transformed lacks 'made_for'"),
    (lambda doc, ts: doc["layers"].update(bad=3), "must be a JSON object"),
])
def test_bad_stored_transforms_raise_model_error(tmp_path, stored, edit, message):
    path = stored[3]
    with pytest.raises(engine.ModelError, match=message):
        engine.load(rewrite_transformed(path, tmp_path / "bad.safetensors", edit))


def test_save_transformed_plans_a_free_batch_as_one(tmp_path, rng):
    model = net(rng, batch=None)
    path = tmp_path / "free.safetensors"
    model.save(path, transformed=True)
    loaded = engine.load(path)
    x = rng.standard_normal((3, 3, 10, 10)).astype(np.float32)
    want, got = model.run({"x": x}), loaded.run({"x": x})      # planned here, for batch 3
    assert all(np.array_equal(want[k], got[k]) for k in want)
    assert sum(t.read for t in conv_transforms(loaded).values()) >= 1


def test_saving_over_the_file_a_model_maps(saved, rng):
    """save writes a new file and renames it: a model loaded from the old one still reads
    its own weights."""
    model, path = saved
    loaded = engine.load(path)
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    want = model.run({"x": x})
    net(np.random.default_rng(99)).save(path)
    got = loaded.run({"x": x})
    assert all(np.array_equal(want[k], got[k]) for k in want)
    assert not np.array_equal(engine.load(path).run({"x": x})["y"], want["y"])


def _header_file(tmp_path, header, data=b"\0" * 64):
    text = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


@pytest.mark.parametrize("header,message", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "overlap"),
    ({"a": {"dtype": "F32", "shape": [40], "data_offsets": [0, 160]}}, "lie outside"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, "16 bytes for shape"),
    ({"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, "'C64'"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}}, "bad shape"),
    ({"a": {"dtype": "F32", "shape": [2, 2**31 - 1, 0, 2**32], "data_offsets": [0, 0]}},
     "bad shape"),                                            # found by fuzz_loaders.py
    ({"a": {"dtype": "F32", "shape": [0] + [2**31 - 1] * 3, "data_offsets": [0, 0]}},
     "too large to address"),
    ({"a": {"dtype": "F32", "shape": [4]}}, "must have dtype, shape and data_offsets"),
    ({"__metadata__": {"format": 3}}, "__metadata__ must map names to strings"),
    ([1, 2], "not a JSON object"),
])
def test_bad_headers_raise_model_error(tmp_path, header, message):
    with pytest.raises(engine.ModelError, match=message):
        engine.load(_header_file(tmp_path, header))


def test_unaligned_tensors_are_copied(tmp_path):
    """A tensor at an offset its element size does not divide is read into aligned memory."""
    header = {"__metadata__": {"format": "other"},
              "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "a": {"dtype": "F32", "shape": [4], "data_offsets": [1, 17]}}
    from engine.io.native import read_tensors
    data = b"\x07" + np.arange(4, dtype=np.float32).tobytes()
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "u.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    _, tensors, _ = read_tensors(path)
    assert tensors["a"].flags.aligned and np.array_equal(tensors["a"], np.arange(4))
    assert tensors["b"][0] == 7
