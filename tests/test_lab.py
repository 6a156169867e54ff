"""The algorithm lab: engine.compare, engine.tune and wisdom files, accuracy="strict", and
model.explain(errors=True) (engine/lab/).

Errors the lab reports are checked against an independent float64 computation
(tests/reference.py conv2d_ref) of the same input: they must agree within 1e-12 absolute, the
float64 reference's own rounding. Timings are only checked to exist and be positive.
"""
import json

import numpy as np
import pytest

import engine
from engine.ops import blocked
from engine.dispatch.policy import STRICT_EXCLUDED, STRICT_MAX_REL_ERROR
from engine.lab.compare import compare, parse_layer_spec
from engine.lab.wisdom import WisdomWarning, machine_key, tune
from children import run_python
from reference import conv2d_ref

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

ROW_KEYS = {"algorithm", "ms", "gflops", "real_gflops", "max_abs_err", "max_rel_err",
            "scratch_bytes"}


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def conv_model(rng, path, c=64, size=28, wide=256):
    """stem 3->c, 3x3 c->c, dilated 3x3 c->c, then a 3x3 wide->wide pair (F(4x4,3x3) by the
    rules), written to ``path``."""
    def w(*shape):
        return nh.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
                             .astype(np.float32), f"w{len(inits)}")
    inits = []
    names = []
    for shape in [(c, 3, 3, 3), (c, c, 3, 3), (c, c, 3, 3), (wide, c, 1, 1),
                  (wide, wide, 3, 3)]:
        inits.append(w(*shape))
        names.append(inits[-1].name)
    nodes = [h.make_node("Conv", ["x", names[0]], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["a"], ["ar"]),
             h.make_node("Conv", ["ar", names[1]], ["b"], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["b", names[2]], ["d"], pads=[2, 2, 2, 2], dilations=[2, 2]),
             h.make_node("Conv", ["d", names[3]], ["e"]),
             h.make_node("Conv", ["e", names[4]], ["y"], pads=[1, 1, 1, 1])]
    g = h.make_graph(nodes, "lab", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, size, size])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return str(path)


# ---------------------------------------------------------------------------- compare

def test_spec_parsing_and_its_errors():
    assert parse_layer_spec("c=64,o=128,h=56,w=28,k=3,s=2,p=same,d=2,g=1,n=2") == dict(
        c=64, o=128, h=56, w=28, k=3, s=2, p="same", d=2, g=1, n=2)
    for bad in ["", "c=64", "h=5", "c=64,h=x", "c=4,h=5,q=1", "c=4,h=5,p=full", 7]:
        with pytest.raises(ValueError):
            parse_layer_spec(bad)
    with pytest.raises(ValueError, match="groups"):
        compare("c=6,o=4,h=5,g=4")
    with pytest.raises(ValueError, match="peers"):
        compare("c=4,h=5", peers=("tensorflow",))
    with pytest.raises(ValueError, match="x or an input size|input"):
        compare(engine.Conv2d(np.zeros((4, 4, 3, 3), np.float32)))


@pytest.mark.parametrize("spec", ["c=16,o=24,h=13,k=3,p=1", "c=8,h=15,k=3,p=2,d=2",
                                  "c=12,o=12,h=9,k=1", "c=8,o=8,h=11,k=3,g=8,p=1",
                                  "c=4,o=6,h=12,w=9,k=5,s=2,p=same"])
def test_every_algorithm_row_and_its_error_against_float64(spec):
    rows = compare(spec, repeat=2)
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    assert sum(r["auto"] for r in rows) == 1
    p = parse_layer_spec(spec)
    params = engine.dispatch.ConvParams(
        p["c"], p.get("o", p["c"]), (p.get("k", 3),) * 2, (p.get("s", 1),) * 2,
        (p.get("d", 1),) * 2, p.get("g", 1), None, None)
    runnable = {a for a in engine.algorithms() if a != "direct"
                and engine.dispatch.why_not(a, params) is None}
    assert {r["algorithm"] for r in rows} == runnable
    # the layer compare made: unit normal weights, bias and input from seed 0
    rng = np.random.default_rng(0)
    c, o, g, k = p["c"], p.get("o", p["c"]), p.get("g", 1), p.get("k", 3)
    w = rng.standard_normal((o, c // g, k, k), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    x = rng.standard_normal((p.get("n", 1), c, p["h"], p.get("w", p["h"])), dtype=np.float32)
    for r in rows:
        layer = engine.Conv2d(w, b, p.get("s", 1), p.get("p", 0), p.get("d", 1), g,
                              algorithm=r["algorithm"], input_size=x.shape[2:])
        y = layer(x)
        pads = layer.geometry(x.shape).pads
        ref = conv2d_ref(x, w, b, (p.get("s", 1),) * 2, pads, (p.get("d", 1),) * 2, g)
        err = float(np.abs(y - ref).max())
        assert abs(r["max_abs_err"] - err) <= 1e-12, r["algorithm"]
        assert abs(r["max_rel_err"] - err / np.abs(ref).max()) <= 1e-12
        assert r["ms"] > 0 and r["gflops"] > 0 and r["real_gflops"] > 0
        assert r["max_rel_err"] < 1e-4


def test_compare_a_planned_layer_and_the_peers(rng):
    w = rng.standard_normal((16, 8, 3, 3), dtype=np.float32)
    layer = engine.Conv2d(w, None, padding=1, activation="relu", input_size=(12, 12))
    peers = tuple(q for q, mod in (("onnxruntime", "onnxruntime"), ("torch", "torch"))
                  if __import__("importlib").util.find_spec(mod))
    rows = compare(layer, repeat=2, peers=peers)
    names = {r["algorithm"] for r in rows}
    assert set(peers) <= names and "im2col" in names
    for r in rows:
        assert r["max_rel_err"] < 1e-5, r
        assert r["peer"] == (r["algorithm"] in peers)


def test_compare_command_writes_json_and_a_real_png(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    out_json, out_png = tmp_path / "rows.json", tmp_path / "rows.png"
    res = run_python(["-m", "engine.cli", "compare", "--layer", "c=8,o=16,h=10,k=3,p=1",
                      "--repeat", "2", "--json", str(out_json), "--plot", str(out_png)],
                     tmp_path)
    assert res.returncode == 0, res.stderr
    assert "winograd_f23" in res.stdout and "max rel err" in res.stdout
    data = json.loads(out_json.read_text())
    assert data[0]["layer"] == "layer" and ROW_KEYS <= set(data[0]["rows"][0])
    img = plt.imread(out_png)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    # two panels of coloured bars: many pixels that are neither white nor grey
    rgb = img[..., :3]
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 0.2
    assert coloured.mean() > 0.01
    bad = run_python(["-m", "engine.cli", "compare", "--layer", "c=8"], tmp_path)
    assert bad.returncode == 2 and "h (height)" in bad.stderr


def test_the_plot_shows_the_rows(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from engine.lab.cli import plot
    results = [(f"layer{i}", "", compare(spec, repeat=1)) for i, spec in
               enumerate(["c=8,o=8,h=9,k=3,p=1", "c=16,o=8,h=7,k=1"])]
    shown = plot(results, tmp_path / "p.png")
    for i, (_, _, rows) in enumerate(results):
        for r in rows:
            assert (i, r["ms"]) in shown["ms"][r["algorithm"]]
            assert (i, max(r["max_rel_err"], 1e-12)) in shown["max_rel_err"][r["algorithm"]]
    assert sum(len(v) for v in shown["ms"].values()) == sum(len(r) for _, _, r in results)
    img = plt.imread(tmp_path / "p.png")
    assert img.ndim == 3 and min(img.shape[:2]) > 300


# ---------------------------------------------------------------------------- tune, wisdom

def test_tune_round_trip_and_refused_files(rng, tmp_path):
    path = conv_model(rng, tmp_path / "m.onnx")
    wisdom = tmp_path / "w.json"
    # on NCHW, where every layer has algorithms to choose from (blocked ones have none)
    result = tune(engine.load(path, layout="nchw", wisdom=False), path=str(wisdom), repeat=2,
                  progress=False)
    data = json.loads(wisdom.read_text())
    assert data["key"] == machine_key(engine.get_num_threads())
    assert len(data["layers"]) == 5 and data["layers"] == result["layers"]
    for entry in data["layers"].values():
        assert entry["ms"] <= entry["rule_ms"]
    x = rng.standard_normal((1, 3, 28, 28), dtype=np.float32)
    ruled = engine.load(path, layout="nchw", wisdom=False)
    tuned = engine.load(path, layout="nchw", wisdom=str(wisdom))
    y0, y1 = ruled(x), tuned(x)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * float(np.abs(y0).max()))
    text = tuned.explain()
    assert text.count("tuned: measured") == 5 and "the rule's choice" in text
    # a layer forced to another algorithm by the file is run with it
    sig, entry = next(iter(data["layers"].items()))
    data["layers"][sig] = dict(entry, algorithm="im2col")
    wisdom.write_text(json.dumps(data))
    assert "im2col: tuned: measured" in engine.load(path, layout="nchw",
                                                    wisdom=str(wisdom)).explain()
    # corrupt, foreign and stale files: a warning, and the rules
    for text_, why in [("{not json", "not used"),
                       (json.dumps(dict(data, key=dict(data["key"], cpu="another CPU"))),
                        "made for cpu"),
                       (json.dumps(dict(data, key=dict(data["key"], threads=99))),
                        "made for threads"),
                       (json.dumps(dict(data, key=dict(data["key"], engine="0.0.1"))),
                        "made for engine"),
                       (json.dumps(dict(data, layers={sig: {"algorithm": "magic"}})),
                        "malformed"),
                       (json.dumps([1, 2]), "not a convengine wisdom file")]:
        wisdom.write_text(text_)
        with pytest.warns(WisdomWarning, match=why):
            m = engine.load(path, layout="nchw", wisdom=str(wisdom))
        assert "tuned" not in m.explain()
        np.testing.assert_array_equal(m(x), y0)
    with pytest.raises(ValueError, match="wisdom"):
        engine.load(path, layout="nchw", wisdom=3)


def test_the_default_wisdom_file_is_the_per_user_one(rng, tmp_path, monkeypatch):
    import engine.lab.wisdom as wmod
    monkeypatch.setattr(wmod, "default_path", lambda: str(tmp_path / "cache" / "wisdom.json"))
    path = conv_model(rng, tmp_path / "m.onnx", c=16, wide=16, size=12)
    tune(engine.load(path, layout="nchw", wisdom=False), repeat=1, progress=False)
    assert (tmp_path / "cache" / "wisdom.json").exists()
    assert "tuned: measured" in engine.load(path, layout="nchw").explain()
    assert "tuned" not in engine.load(path, layout="nchw", wisdom=False).explain()


def test_tune_takes_a_free_batch_as_one_and_refuses_other_free_dimensions(rng, tmp_path):
    w = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)

    def model(shape):
        g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "free",
                         [h.make_tensor_value_info("x", T.FLOAT, shape)],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
        return engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]),
                           wisdom=False)
    result = tune(model(["n", 4, 12, 12]), path=str(tmp_path / "w.json"), repeat=1,
                  progress=False)
    assert list(result["layers"]) == ["conv2d 4->8 3x3 s1x1 p1,1,1,1 d1x1 g1 in12x12"]
    with pytest.raises(ValueError, match="input_shape"):
        tune(model(["n", 4, "h", 12]), path=str(tmp_path / "w.json"), progress=False)
    assert tune(model(["n", 4, "h", 12]), (2, 4, 9, 12), path=str(tmp_path / "w.json"),
                repeat=1, progress=False)["layers"]


# ---------------------------------------------------------------------------- accuracy

def test_strict_accuracy_keeps_the_large_tile_off_and_its_bound_holds(rng, tmp_path):
    path = conv_model(rng, tmp_path / "m.onnx")
    fast = engine.load(path, wisdom=False)
    strict = engine.load(path, wisdom=False, accuracy="strict")
    fast_text, strict_text = fast.explain(errors=True), strict.explain(errors=True)
    assert any(a in fast_text for a in STRICT_EXCLUDED)   # the 256-channel layer, by the rules
    assert not any(a in strict_text for a in STRICT_EXCLUDED)
    errors = [float(line.rsplit("max relative error vs float64: ", 1)[1])
              for line in strict_text.splitlines() if "max relative error" in line]
    assert len(errors) == 5 and max(errors) <= STRICT_MAX_REL_ERROR
    with pytest.raises(ValueError, match="accuracy"):
        engine.load(path, accuracy="exact")


def test_explain_errors_match_an_independent_float64_computation(rng, tmp_path):
    c = 8
    w = (rng.standard_normal((c, c, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    g = h.make_graph([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "one",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, c, 9, 9])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(w, "w"), nh.from_array(b, "b")])
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), wisdom=False)
    x = rng.standard_normal((1, c, 9, 9)).astype(np.float32)
    text = model.explain(errors=True, feeds={"x": x})
    got = float(text.rsplit("max relative error vs float64: ", 1)[1].split()[0])
    ref = conv2d_ref(x, w, b, (1, 1), ((1, 1), (1, 1)))
    want = np.abs(model(x) - ref).max() / np.abs(ref).max()
    assert abs(got - want) <= 0.01 * want + 1e-12     # printed with three digits
    free = engine.load(h.make_model(h.make_graph(
        [h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "free",
        [h.make_tensor_value_info("x", T.FLOAT, ["n", c, "h", "w"])],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
        [nh.from_array(w, "w"), nh.from_array(b, "b")]),
        opset_imports=[h.make_opsetid("", 17)]), wisdom=False)
    with pytest.raises(ValueError, match="input shapes"):
        free.explain(errors=True)
    assert "max relative error" in free.explain((2, c, 5, 7), errors=True)


def test_explain_errors_on_blocked_layers_with_a_residual(rng):
    # pw -> dw -> pw (+ the input): channel-blocked steps, read back through the layout
    c = 24
    inits = [nh.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("a", (48, c, 1, 1)), ("d", (48, 1, 3, 3)), ("b", (c, 48, 1, 1)))]
    nodes = [h.make_node("Conv", ["x", "a"], ["p"]), h.make_node("Relu", ["p"], ["pr"]),
             h.make_node("Conv", ["pr", "d"], ["q"], pads=[1, 1, 1, 1], group=48),
             h.make_node("HardSwish", ["q"], ["qh"]),
             h.make_node("Conv", ["qh", "b"], ["r"]), h.make_node("Add", ["r", "x"], ["y"])]
    g = h.make_graph(nodes, "mb", [h.make_tensor_value_info("x", T.FLOAT, [1, c, 17, 17])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), wisdom=False)
    text = model.explain(errors=True)
    lines = [line for line in text.splitlines() if "max relative error vs float64" in line]
    assert len(lines) == 3 and all(blocked.NAME in line for line in lines), text
    assert max(float(line.rsplit(": ", 1)[1]) for line in lines) < 1e-5


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "drn_c_26"])
def test_strict_bound_holds_on_every_layer_of_real_models(name, tmp_path):
    """accuracy="strict" on DRN-C-26, ResNet-50 and MobileNetV2 (random weights, 224x224):
    every convolution within STRICT_MAX_REL_ERROR of float64 on the model's own activations
    (about a minute each: the reference is the float64 direct loops)."""
    pytest.importorskip("torch")
    path = tmp_path / f"{name}.onnx"
    if name == "resnet50":
        import zoo
        path.write_bytes(zoo.export(name, 17))
    else:
        import torch_models
        torch_models.export_onnx(torch_models.make(name), str(path))
    strict = engine.load(str(path), wisdom=False, accuracy="strict")
    text = strict.explain((1, 3, 224, 224), errors=True)
    errors = [float(line.rsplit("float64: ", 1)[1]) for line in text.splitlines()
              if "float64: " in line]
    assert len(errors) > 20 and max(errors) <= STRICT_MAX_REL_ERROR
    assert not any(a in text for a in STRICT_EXCLUDED)
