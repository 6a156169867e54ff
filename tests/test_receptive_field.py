"""engine.receptive_field and `convengine receptive-field`.

Expected values are worked out by hand from the layers' geometry (the derivation beside each),
and for whole models measured by brute force: a batch holding one impulse per input pixel runs
through the engine, every intermediate tensor a graph output, and the set of input pixels that
change an output is compared with the reported field. Weights and inputs are positive, so every
tap of a path adds to the output and nothing cancels; an impulse of 1e4 changes a reached output
by at least 1e4 * (smallest weight)^depth > 1e3, while an output it cannot reach may still move
by float32 rounding inside a transform (Winograd tiles mix neighbouring pixels with weights that
cancel exactly only in real arithmetic): |change| > 1 counts as reached, a gap of three orders
of magnitude either way.
"""

import numpy as np
import pytest

import engine
from children import run_python
from engine import shapes



# ============================================================================ layer tuples

def test_api_example_dilated_stack():
    rows = engine.receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4), (3, 1, 8)])
    assert rows[-1]["size"] == 31
    # each 3x3 of rate d adds 2d: 3, 3 + 4, 7 + 8, 15 + 16; unpadded, so the first output's
    # field starts at pixel 0 and its center is half the field further
    assert [r["size"] for r in rows] == [3, 7, 15, 31]
    assert [r["jump"] for r in rows] == [1, 1, 1, 1]
    assert [r["start"] for r in rows] == [1, 3, 7, 15]


def test_resnet_stem():
    # 7x7 s2 p3: output 0 reads pixels -3..3 (center 0); the 3x3 s2 p1 max pool's output 0 reads
    # conv outputs -1..1, i.e. pixels -2*1 - 3 .. 2*1 + 3 = -5..5: 11 pixels centered on 0
    rows = engine.receptive_field([(7, 2, 1, 3), (3, 2, 1, 1)], input_shape=224)
    assert [(r["size"], r["jump"], r["start"]) for r in rows] == [(7, 2, 0), (11, 4, 0)]
    assert [r["output_size"] for r in rows] == [112, 56]
    # unpadded: conv output 0 reads 0..6 (center 3), pool output 0 reads conv outputs 0..2,
    # centered on conv output 1, i.e. pixel 3 + 2
    rows = engine.receptive_field([(7, 2), (3, 2)], input_shape=224)
    assert [(r["size"], r["jump"], r["start"]) for r in rows] == [(7, 2, 3), (11, 4, 5)]
    assert [r["output_size"] for r in rows] == [109, 54]


def test_vgg_like_blocks():
    conv, pool = (3, 1, 1, 1), (2, 2, 1, 0)
    rows = engine.receptive_field([conv, conv, pool, conv, conv, pool], input_shape=32)
    # block 1: 3, 5; the pool joins two neighbours: 6, jump 2, centered between pixels 0 and 1;
    # block 2 adds 2 * jump per conv: 10, 14; the second pool joins two fields 2 apart: 16, and
    # its first output is centered between the first pool's outputs 0 and 1 (0.5 and 2.5)
    assert [r["size"] for r in rows] == [3, 5, 6, 10, 14, 16]
    assert [r["jump"] for r in rows] == [1, 1, 2, 2, 2, 4]
    assert [r["start"] for r in rows] == [0, 0, 0.5, 0.5, 0.5, 1.5]
    assert [r["output_size"] for r in rows] == [32, 32, 16, 16, 16, 8]


def test_agrees_with_shapes_receptive_field():
    rng = np.random.default_rng(0)
    for _ in range(50):
        layers = [tuple(int(v) for v in (rng.integers(1, 6), rng.integers(1, 4),
                                         rng.integers(1, 5))) for _ in range(rng.integers(1, 7))]
        last = engine.receptive_field(layers)[-1]
        assert (last["size"], last["jump"]) == shapes.receptive_field(layers), layers


def test_two_dimensional_tuples():
    rows = engine.receptive_field([((3, 5), (1, 2), 1, (1, 2)), ((3, 3), (2, 1), (2, 1), 0)],
                                  input_shape=(20, 21))
    # H: 3x s1 p1: 3, 1, 0; then k3 s2 d2 p0: 3 + 2*2*1 = 7, jump 2, start 0 + (2 - 0)*1 = 2
    # W: 5 s2 p2: 5, 2, 0; then k3 s1 d1 p0: 5 + 2*2 = 9, jump 2, start 0 + (1 - 0)*2 = 2
    assert rows[0]["size"] == (3, 5) and rows[0]["jump"] == (1, 2) and rows[0]["start"] == (0, 0)
    assert rows[1]["size"] == (7, 9) and rows[1]["jump"] == (2, 2) and rows[1]["start"] == (2, 2)
    assert rows[0]["output_size"] == (20, 11)
    assert rows[1]["output_size"] == (8, 9)     # (20 - 5)//2 + 1, 11 - 3 + 1
    assert rows[1]["kernel"] == (3, 3) and rows[1]["dilation"] == (2, 1)
    # each axis is the 1-D computation of that axis's numbers
    for a, layers in enumerate([[(3, 1, 1, 1), (3, 2, 2, 0)], [(5, 2, 1, 2), (3, 1, 1, 0)]]):
        one = engine.receptive_field(layers)
        assert [r["size"][a] for r in rows] == [r["size"] for r in one]
        assert [r["start"][a] for r in rows] == [r["start"] for r in one]


@pytest.mark.parametrize("layers, input_shape, named", [
    ([], None, "model_or_layers"),
    (42, None, "model_or_layers"),
    ("not a model file.onnx", None, "not a model file"),
    ([(3,)], None, "layers[0]"),
    ([(3, 1), (0, 1)], None, "layers[1] kernel"),
    ([(3, 0)], None, "layers[0] stride"),
    ([(3, 1, 0)], None, "layers[0] dilation"),
    ([(3, 1, 1, -1)], None, "layers[0] padding"),
    ([(3, 1.5)], None, "layers[0] stride"),
    ([("3", 1)], None, "layers[0] kernel"),
    ([((3, 3), 1), ((3, 3, 3), 1)], None, "layers[1]"),
    ([(3, 1)], 0, "input_shape"),
    ([(3, 1)], (5, 5), "input_shape"),
    ([(5, 1)], 3, "input_shape"),
])
def test_bad_layers_raise_value_error(layers, input_shape, named):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        engine.receptive_field(layers, input_shape=input_shape)
    assert named in str(e.value)


# ============================================================================ models

# the model tests build their graphs with onnx (and test_onnx_import needs onnxruntime);
# without them only the layer-tuple tests above run
try:
    import onnx
    from onnx import helper as h
    from test_onnx_import import make, vi
except (ImportError, pytest.skip.Exception):
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="needs onnx and onnxruntime")


def _weights(rng, *shape):
    return rng.uniform(0.5, 1.0, shape).astype(np.float32)


def _branch_model(rng, outputs=("y",), shape=(1, 2, 16, 16)):
    """Conv 3x3 s2 p1, then two branches on its output, added: a Conv 3x3 padded only at the
    bottom and right (pads 0, 0, 2, 2) and a 3x3 max pool (pads 1); a 1x1 conv after them."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["c1", "wa"], ["a"], pads=[0, 0, 2, 2]),
             h.make_node("MaxPool", ["c1"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("Add", ["a", "b"], ["s"]),
             h.make_node("Conv", ["s", "w2"], ["y"])]
    inits = {"w1": _weights(rng, 2, 2, 3, 3), "wa": _weights(rng, 2, 2, 3, 3),
             "w2": _weights(rng, 2, 2, 1, 1)}
    return make(nodes, [vi("x", list(shape))], [vi(o) for o in outputs], inits)


def _rows_by_tensor(rows):
    return {r["tensor"]: r for r in rows}


@needs_onnx
def test_model_fields_by_hand_with_a_branch_merge():
    rng = np.random.default_rng(1)
    m = _branch_model(rng)
    nodes = m.graph.node
    nodes.extend([h.make_node("GlobalAveragePool", ["y"], ["g"]),
                  h.make_node("Flatten", ["g"], ["f"])])
    m.graph.output[0].CopyFrom(vi("f"))
    model = engine.load(m)
    rows = _rows_by_tensor(engine.receptive_field(model))
    # c1: 3x3 s2 p1 -> size 3, jump 2, centered on pixel 0; 8x8
    assert (rows["c1"]["size"], rows["c1"]["jump"], rows["c1"]["start"]) == ((3, 3), (2, 2),
                                                                             (0, 0))
    assert rows["c1"]["output_size"] == (8, 8)
    # max pool 3x3 p1 at jump 2: 3 + 2*2 = 7, centered on 0 -> pixels -3..3
    assert rows["b"]["size"] == (7, 7) and rows["b"]["start"] == (0, 0)
    # the Add fuses into the conv of branch a (its residual). Branch a: 3x3 with no begin
    # padding reads c1 outputs 0..2, centered on c1 output 1 = pixel 2: pixels -1..5. The union
    # with the pool's -3..3 is -3..5: 9 pixels centered on 1
    merged = [r for r in rows.values() if "merge" in r["note"]]
    assert len(merged) == 1 and "union" in merged[0]["note"]
    assert merged[0]["size"] == (9, 9) and merged[0]["start"] == (1, 1)
    assert merged[0]["padding"] == ((0, 2), (0, 2))
    # the 1x1 conv keeps it; the global pool over 8 positions 2 apart adds 7*2: 23, centered 7
    # jumps of 2 / 2 further: 1 + 7 = 8; Flatten of a 1x1 map passes it on
    assert rows["y"]["size"] == (9, 9)
    assert (rows["g"]["size"], rows["g"]["jump"], rows["g"]["start"]) == ((23, 23), (16, 16),
                                                                          (8, 8))
    assert rows["f"]["size"] == (23, 23) and rows["f"]["output_size"] is None


@needs_onnx
def test_model_input_shape_and_names():
    rng = np.random.default_rng(2)
    m = _branch_model(rng, shape=["n", 2, "h", "w"])
    model = engine.load(m)
    with pytest.raises(ValueError, match="input_shape"):
        engine.receptive_field(model)
    rows = engine.receptive_field(model, input_shape=(1, 2, 20, 13))
    assert rows[0]["output_size"] == (10, 7)
    assert rows[-1]["size"] == (9, 9) and rows[-1]["output_size"] == (10, 7)
    with pytest.raises(ValueError, match="input_shape"):
        engine.receptive_field(model, input_shape=(1, 3, 20, 13))   # the channels are declared
    with pytest.raises(ValueError, match="input_shape"):
        engine.receptive_field(model, input_shape=(1, 2, 20))
    with pytest.raises(ValueError, match="input_name"):
        engine.receptive_field(model, input_shape=(1, 2, 8, 8), input_name="nope")
    with pytest.raises(ValueError, match="input_name"):
        engine.receptive_field([(3, 1)], input_name="x")


@needs_onnx
def test_transposed_convolution_and_resize_by_hand():
    rng = np.random.default_rng(3)
    nodes = [h.make_node("ConvTranspose", ["x", "wt"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("Resize", ["x", "", "sc"], ["n"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             h.make_node("Resize", ["x", "", "sc"], ["l"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
             h.make_node("Pad", ["x", "pads"], ["p"], mode="reflect")]
    m = make(nodes, [vi("x", [1, 1, 6, 6])], [vi("t"), vi("n"), vi("l"), vi("p")],
             {"wt": _weights(rng, 1, 1, 4, 4),
              "sc": np.array([1, 1, 2, 2], np.float32),
              "pads": np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)}, opset=13)
    rows = _rows_by_tensor(engine.receptive_field(engine.load(m)))
    # 4x4 s2 p1 transposed: output o reads inputs (o + 1 - u)/2 for taps u = 0..3, for o = 0
    # the interval [-1, 0.5] (center -0.25, length 1.5): a field of 2.5 pixels, jump 1/2
    t = rows["t"]
    assert t["size"] == (2.5, 2.5) and t["jump"] == (0.5, 0.5) and t["start"] == (-0.25, -0.25)
    assert t["output_size"] == (12, 12) and "stride" in t["note"]
    # nearest, asymmetric: output o samples o/2, one tap
    n = rows["n"]
    assert (n["size"], n["jump"], n["start"]) == ((1, 1), (0.5, 0.5), (0, 0))
    # linear, half_pixel: output o samples (o + 0.5)/2 - 0.5, two taps
    lin = rows["l"]
    assert (lin["size"], lin["jump"], lin["start"]) == ((2, 2), (0.5, 0.5), (-0.25, -0.25))
    # padding 2 rows above and 1 column left: output (0, 0) is input (-2, -1)
    p = rows["p"]
    assert (p["size"], p["jump"], p["start"], p["output_size"]) == ((1, 1), (1, 1), (-2, -1),
                                                                     (9, 10))
    assert "reflect" in p["note"]


@needs_onnx
def test_channel_last_block_and_global_dependence():
    rng = np.random.default_rng(9)
    nodes = [h.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             h.make_node("MatMul", ["t", "wm"], ["mm"]),            # over the channels
             h.make_node("Transpose", ["mm"], ["u"], perm=[0, 3, 1, 2]),
             h.make_node("Conv", ["u", "w2"], ["d"], strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("GlobalAveragePool", ["d"], ["g"]),
             h.make_node("Mul", ["d", "g"], ["m"]),
             h.make_node("InstanceNormalization", ["m", "sc", "bi"], ["n"]),
             h.make_node("Conv", ["n", "w3"], ["e"], pads=[1, 1, 1, 1]),
             h.make_node("Slice", ["e", "st", "en", "ax"], ["s"])]
    inits = {"w1": _weights(rng, 4, 4, 3, 3), "wm": _weights(rng, 4, 8),
             "w2": _weights(rng, 2, 8, 3, 3), "w3": _weights(rng, 2, 2, 3, 3),
             "sc": np.ones(2, np.float32), "bi": np.zeros(2, np.float32),
             "st": np.array([1]), "en": np.array([4]), "ax": np.array([3])}
    names = ["c", "t", "mm", "u", "d", "g", "m", "n", "e", "s"]
    m = make(nodes, [vi("x", [1, 4, 12, 12])], [vi(n) for n in names], inits)
    rows = _rows_by_tensor(engine.receptive_field(engine.load(m)))
    # the spatial axes are followed through the channel-last MatMul: nothing changes there
    for name in ("c", "t", "mm", "u"):
        r = rows[name]
        assert (r["size"], r["jump"], r["start"], r["output_size"], r["whole"]) == \
            ((3, 3), (1, 1), (0, 0), (12, 12), False), name
    assert rows["d"]["size"] == (5, 5) and rows["d"]["jump"] == (2, 2)
    # the global pool over 6 positions 2 apart: 5 + 5*2 = 15, centered 2.5 jumps in
    g = rows["g"]
    assert (g["size"], g["jump"], g["start"], g["whole"]) == ((15, 15), (12, 12), (5, 5), True)
    # d * g: the broadcast operand's field is the larger: taken, on d's grid
    mul = rows["m"]
    assert (mul["size"], mul["jump"], mul["start"], mul["whole"]) == ((15, 15), (2, 2), (0, 0),
                                                                      True)
    assert "largest" in mul["note"]
    # every output already sees every pixel: normalising over the map adds nothing
    assert rows["n"]["size"] == (15, 15) and rows["n"]["whole"]
    assert rows["e"]["size"] == (19, 19) and rows["e"]["whole"]
    # a Slice along W is not modelled: the row says so
    assert "changes the spatial shape" in rows["s"]["note"] and rows["s"]["whole"]


# ---------------------------------------------------------------------------- brute force

def _impulse_reach(model, shape, names):
    """{tensor: bool array (input pixel y, x, output y, x)}: which outputs (any channel) an
    impulse at each input pixel changes, the whole batch one impulse per image."""
    n, c, hh, ww = shape
    assert n == hh * ww
    base = np.ones((1, c, hh, ww), np.float32)
    x = np.repeat(base, n, axis=0)
    for p in range(n):
        x[p, :, p // ww, p % ww] += 1e4
    outs = model.run({"x": x})
    ref = model.run({"x": np.repeat(base, n, axis=0)})
    reach = {}
    for name in names:
        change = np.abs(outs[name].astype(np.float64) - ref[name]).max(axis=1)   # over channels
        reach[name] = (change > 1.0).reshape(hh, ww, *change.shape[1:])
    return reach


def _check_against_reach(rows, reach, in_size, exact=True):
    """Every reached input pixel lies in the reported field of its output; with ``exact``, the
    reached pixels also touch both ends of the field, clipped to the image, on each axis."""
    checked = 0
    for name, seen in reach.items():
        r = rows[name]
        out_h, out_w = seen.shape[2:]
        assert r["output_size"] == (out_h, out_w), name
        for oy in range(out_h):
            for ox in range(out_w):
                pixels = np.argwhere(seen[:, :, oy, ox])
                assert len(pixels), (name, oy, ox)
                for a, o in enumerate((oy, ox)):
                    center = r["start"][a] + o * r["jump"][a]
                    half = (r["size"][a] - 1) / 2
                    lo, hi = pixels[:, a].min(), pixels[:, a].max()
                    assert center - half <= lo and hi <= center + half, (name, oy, ox, a)
                    if exact:
                        assert lo == max(0, center - half), (name, oy, ox, a, lo, center, half)
                        assert hi == min(in_size[a] - 1, center + half), (name, oy, ox, a, hi)
                checked += 1
    return checked


@needs_onnx
def test_fields_match_brute_force_on_every_layer_of_a_conv_model():
    rng = np.random.default_rng(4)
    hh, ww = 13, 15
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["c1", "w2"], ["c2"], strides=[2, 2], dilations=[2, 2],
                         pads=[1, 0, 2, 1]),
             h.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2]),
             h.make_node("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], strides=[1, 2],
                         pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["q", "w3"], ["c3"], strides=[1, 2])]
    names = ["c1", "c2", "p", "q", "c3"]
    m = make(nodes, [vi("x", [hh * ww, 1, hh, ww])], [vi(n) for n in names],
             {"w1": _weights(rng, 2, 1, 3, 3), "w2": _weights(rng, 2, 2, 3, 3),
              "w3": _weights(rng, 2, 2, 3, 2)})
    model = engine.load(m)
    rows = _rows_by_tensor(engine.receptive_field(model))
    assert sorted(rows) == sorted(names)
    reach = _impulse_reach(model, (hh * ww, 1, hh, ww), names)
    assert _check_against_reach(rows, reach, (hh, ww)) >= 100


@needs_onnx
def test_branch_merge_matches_brute_force():
    rng = np.random.default_rng(5)
    names = ["c1", "a", "b", "s", "y"]
    hh, ww = 16, 16
    model = engine.load(_branch_model(rng, names, shape=(hh * ww, 2, hh, ww)))
    rows = _rows_by_tensor(engine.receptive_field(model))
    assert "union" in rows["s"]["note"] and rows["s"]["size"] == (9, 9)
    reach = _impulse_reach(model, (hh * ww, 2, hh, ww), names)
    assert _check_against_reach(rows, reach, (hh, ww)) >= 100


@needs_onnx
def test_transposed_field_holds_what_reaches_it():
    rng = np.random.default_rng(6)
    hh, ww = 7, 6
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2]),
             h.make_node("ConvTranspose", ["c1", "wt"], ["t"], strides=[2, 3],
                         pads=[1, 0, 1, 2]),
             h.make_node("Conv", ["t", "w2"], ["c2"], pads=[1, 1, 1, 1])]
    names = ["c1", "t", "c2"]
    m = make(nodes, [vi("x", [hh * ww, 1, hh, ww])], [vi(n) for n in names],
             {"w1": _weights(rng, 2, 1, 3, 3), "wt": _weights(rng, 2, 2, 4, 5),
              "w2": _weights(rng, 2, 2, 3, 3)})
    model = engine.load(m)
    rows = _rows_by_tensor(engine.receptive_field(model))
    reach = _impulse_reach(model, (hh * ww, 1, hh, ww), names)
    # a transposed field is an interval that holds every reaching pixel; which of its pixels
    # reach a given output depends on the output's phase
    assert _check_against_reach(rows, reach, (hh, ww), exact=False) >= 50


# ============================================================================ command line

def _cli(args, tmp_path, code=None):
    return run_python((["-m", "engine.cli"] if code is None else ["-c", code]) + args,
                      tmp_path, timeout=120)


@needs_onnx
def test_cli_prints_the_table_and_plots(tmp_path):
    rng = np.random.default_rng(7)
    onnx.save(_branch_model(rng, shape=["n", 2, "h", "w"]), str(tmp_path / "m.onnx"))
    out = _cli(["receptive-field", "m.onnx", "--input-shape", "1,2,20,16", "--plot", "rf.png"],
               tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "each see 9 input pixels, 2 apart" in lines[0]
    head = next(k for k, line in enumerate(lines) if line.split()[:3] == ["#", "node", "op"])
    table = [line.split() for line in lines[head + 2:head + 2 + 4]]
    # conv, pool, the conv with the fused Add, the 1x1 conv: size and jump columns
    assert [row[2] for row in table] == ["Conv", "MaxPool", "Conv", "Conv"]
    assert [row[7] for row in table] == ["10x8"] * 4
    assert [row[8:11] for row in table] == [["3", "2", "0"], ["7", "2", "0"], ["9", "2", "1"],
                                            ["9", "2", "1"]]
    assert "wrote rf.png" in out.stdout
    image = pytest.importorskip("matplotlib.image").imread(str(tmp_path / "rf.png"))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0      # something was drawn


@needs_onnx
def test_cli_errors_and_missing_matplotlib(tmp_path):
    rng = np.random.default_rng(8)
    onnx.save(_branch_model(rng, shape=["n", 2, "h", "w"]), str(tmp_path / "m.onnx"))
    out = _cli(["receptive-field", "m.onnx"], tmp_path)
    assert out.returncode == 2 and "input_shape" in out.stderr
    out = _cli(["receptive-field", "missing.onnx"], tmp_path)
    assert out.returncode == 2 and "not found" in out.stderr
    # a fresh install without the extra: importing matplotlib fails
    code = ("import sys\nsys.modules['matplotlib'] = None\nfrom engine.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = _cli(["receptive-field", "m.onnx", "--input-shape", "1,2,8,8", "--plot", "rf.png"],
               tmp_path, code)
    assert out.returncode == 2 and "convengine[plot]" in out.stderr
    assert not (tmp_path / "rf.png").exists()
