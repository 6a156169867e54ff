"""NaN and infinity in the input: every algorithm puts NaN and +-Inf exactly where the direct sum
does, and the other outputs stay within the algorithm's float32 tolerance.

The direct sum (weights finite): an output is NaN if one of its taps reads a NaN, or an infinity
under a zero weight, or if its infinite products have both signs; +-Inf if they all have one
sign; finite otherwise. The relu and relu6 clamps keep NaN as NaN (IEEE max and min, as NumPy and
torch). The expected values come from the float64 NumPy reference (tests/reference.py), whose
einsum sums the products as they are; finite outputs are checked as in tests/test_conv2d.py,
with the magnitude of the finite inputs.

Each layer runs one batch whose images hold the cases: one NaN, one +Inf, one -Inf, a +Inf and a
-Inf side by side, and a +Inf in the channel whose weights are zero for every third output
channel (besides the random zero weights everywhere), each in the interior, on a border and in a
corner; and two images with a whole plane of NaN and of +Inf. Layers are large enough that two
threads really run (the `threads` fixture runs every test at 1 and 2). Separable on slices of rank > 1
(forced only) included.
"""
import numpy as np
import pytest

import engine
from engine import dispatch
from engine.dispatch.conv import vector_floats
from engine._threads import threads_for
from reference import conv2d_ref
from test_conv2d import RTOL

ZERO_C = 3          # the channel whose weights are zero for every third output channel

# name: (C, K, H, W, kernel, stride, pad, dilation, groups)
LAYERS = {
    "3x3": (32, 32, 28, 28, 3, 1, 1, 1, 1),
    "3x3_d2": (32, 32, 28, 28, 3, 1, 2, 2, 1),
    "3x3_d3_g4": (32, 32, 27, 29, 3, 1, 3, 3, 4),
    "3x3_valid_g2": (32, 16, 27, 26, 3, 1, 0, 1, 2),
    "7x7": (16, 16, 28, 28, 7, 1, 3, 1, 1),
    "5x5_g2": (16, 16, 26, 27, 5, 1, 1, 1, 2),
    "3x3_s2": (32, 32, 28, 28, 3, 2, 1, 1, 1),
    "1x1": (32, 48, 28, 28, 1, 1, 0, 1, 1),
    "dw3x3": (32, 32, 28, 28, 3, 1, 1, 1, 32),
    "dw5x5_x2": (32, 64, 28, 28, 5, 1, 2, 1, 32),
    "dw5x5_rank1": (32, 32, 28, 28, 5, 1, 2, 1, 32),     # separable's layer: rank-1 slices
}
# direct is the slow reference loop: two layers are enough to check it
DIRECT_LAYERS = ("3x3_d3_g4", "dw3x3")


def _params(spec):
    c, k, h, w, ks, s, p, d, g = spec
    return dispatch.ConvParams(c, k, (ks, ks), (s, s), (d, d), g, ((p, p), (p, p)), (h, w))


def _applies(algorithm, name):
    if algorithm == "direct" and name not in DIRECT_LAYERS:
        return False
    return dispatch.why_not(algorithm, _params(LAYERS[name])) is None


CASES = [(a, name) for a in engine.algorithms() for name in LAYERS if _applies(a, name)]


def _places(h, w):
    return {"interior": (h // 2, w // 2 + 1), "border": (h // 2 - 1, 0),
            "corner": (h - 1, w - 1)}


def _inputs(spec, rng):
    """The batch of cases described at the top, and each image's description."""
    c, k, h, w, ks, s, p, d, g = spec
    images, names = [], []
    kinds = ["nan", "+inf", "-inf", "+inf -inf", "+inf on zero weights"]
    for kind in kinds:
        for place, (py, px) in _places(h, w).items():
            x = rng.standard_normal((c, h, w), dtype=np.float32)
            ch = ZERO_C if kind == "+inf on zero weights" else len(images) % c
            if kind == "nan":
                x[ch, py, px] = np.nan
            elif kind == "-inf":
                x[ch, py, px] = -np.inf
            else:
                x[ch, py, px] = np.inf
            if kind == "+inf -inf":
                x[ch, py, px - 1 if px else px + 1] = -np.inf
            images.append(x)
            names.append(f"{kind} at the {place} of channel {ch}")
    for value in (np.nan, np.inf):
        x = rng.standard_normal((c, h, w), dtype=np.float32)
        x[1] = value
        images.append(x)
        names.append(f"channel 1 all {value}")
    return np.stack(images), names


def _weights(name, spec, rng):
    c, k, h, w, ks, s, p, d, g = spec
    if name.endswith("rank1"):   # outer products, a fifth of their factors zero
        col = rng.standard_normal((k, c // g, ks, 1))
        row = rng.standard_normal((k, c // g, 1, ks))
        col[rng.random(col.shape) < 0.2] = 0
        row[rng.random(row.shape) < 0.2] = 0
        wt = (col * row).astype(np.float32)
    else:
        wt = rng.standard_normal((k, c // g, ks, ks), dtype=np.float32)
        wt[rng.random(wt.shape) < 0.2] = 0
    kg, cg = k // g, c // g
    grp = ZERO_C // cg
    for kk in range(grp * kg, (grp + 1) * kg, 3):
        wt[kk, ZERO_C - grp * cg] = 0
    return wt, rng.standard_normal(k, dtype=np.float32)


_REFERENCES = {}


def _reference(name, spec, activation, rng):
    """(x, w, b, expected, magnitude), computed once per layer and activation."""
    key = (name, activation)
    if key not in _REFERENCES:
        c, k, h, w, ks, s, p, d, g = spec
        x, names = _inputs(spec, rng)
        wt, b = _weights(name, spec, rng)
        args = ((s, s), ((p, p), (p, p)), (d, d), g)
        with np.errstate(invalid="ignore"):
            ref = conv2d_ref(x, wt, b, *args)
        finite_x = np.where(np.isfinite(x), np.abs(x), 0)
        mag = conv2d_ref(finite_x, np.abs(wt), np.abs(b), *args)
        if activation == "relu":
            ref = np.maximum(ref, 0)
        elif activation == "relu6":
            ref = np.clip(ref, 0, 6)
        _REFERENCES[key] = (x, wt, b, ref, mag, names)
    return _REFERENCES[key]


def check_ieee(y, ref, mag, algorithm, names):
    assert y.shape == ref.shape
    for i, case in enumerate(names):
        yi, ri = y[i], ref[i]
        for what, mask in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
            got, want = mask(yi), mask(ri)
            assert np.array_equal(got, want), (
                f"{algorithm}, {case}: {what} at {np.argwhere(got & ~want)[:4].tolist()} "
                f"(not in the direct sum), missing at {np.argwhere(want & ~got)[:4].tolist()}")
        fin = np.isfinite(ri)
        err = np.abs(yi[fin].astype(np.float64) - ri[fin])
        bound = RTOL[algorithm] * mag[i][fin] + 1e-6
        assert np.all(err <= bound), (f"{algorithm}, {case}: finite outputs off by up to "
                                      f"{np.max(err - bound):.3g} beyond the tolerance")




@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("algorithm, name", CASES)
def test_nonfinite_where_the_direct_sum_has_them(algorithm, name, activation, threads, request):
    spec = LAYERS[name]
    x, wt, b, ref, mag, names = _reference(name, spec, activation, np.random.default_rng(7))
    c, k, h, w, ks, s, p, d, g = spec
    layer = engine.Conv2d(wt, b, s, p, d, g, activation=activation, algorithm=algorithm)
    assert threads_for(layer.geometry(x.shape).macs, 2) == 2, "layer too small for 2 threads"
    check_ieee(layer(x), ref, mag, algorithm, names)


def test_every_algorithm_is_covered():
    tested = {a for a, _ in CASES}
    assert tested == set(engine.algorithms())
    assert len(CASES) >= 25


@pytest.mark.parametrize("spec, expected", [
    ((64, 64, 7, 7, 3, 1, 1, 1, 1), "winograd_f23"),
    ((64, 64, 56, 56, 3, 1, 1, 1, 1), "winograd_f43"),
    ((256, 256, 7, 7, 3, 1, 1, 1, 1), "winograd_f23"),
    ((128, 128, 28, 28, 3, 1, 2, 2, 1), "dilated_s2b"),
    ((256, 256, 28, 28, 3, 1, 2, 2, 1), "winograd_f43"),
    ((32, 32, 56, 56, 7, 1, 3, 1, 1), "fft"),
    ((64, 128, 56, 56, 3, 2, 1, 1, 1), "blocked_bands"),
    ((256, 512, 14, 14, 3, 2, 1, 1, 1), "blocked_dense"),
    ((64, 128, 28, 28, 1, 2, 0, 1, 1), "im2col"),
    ((128, 128, 28, 28, 3, 1, 1, 1, 8), "blocked_winograd"),
    ((24, 144, 56, 56, 1, 1, 0, 1, 1), "pointwise"),
    ((144, 144, 56, 56, 3, 1, 1, 1, 144), "depthwise"),
    ((32, 32, 56, 56, 5, 1, 2, 1, 32), "separable"),
    ((16, 16, 112, 112, 3, 1, 1, 1, 1), "direct_blocked"),
])
def test_auto_choices_are_among_those_tested(spec, expected):
    if expected.startswith("blocked_") and vector_floats() < 16:
        pytest.skip("the channel-blocked algorithms run on 16-float builds")
    c, k, h, w, ks, s, p, d, g = spec
    rng = np.random.default_rng(0)
    wt = rng.standard_normal((k, c // g, ks, ks), dtype=np.float32)
    if expected == "separable":
        wt = wt[..., :1] * wt[..., :1, :]       # rank-1 slices
    layer = engine.Conv2d(wt, None, s, p, d, g, input_size=(h, w))
    assert layer.algorithm == expected
    assert any(a == expected for a, _ in CASES), f"no layer of this file runs {expected}"


@pytest.mark.parametrize("algorithm, name", [(a, n) for a, n in CASES if a in (
    "winograd_f23", "winograd_f43", "dilated_s2b")])
def test_winograd_weights_made_per_call(algorithm, name, threads):
    """The same per-element bounds and IEEE results with U made inside every call."""
    spec = LAYERS[name]
    x, wt, b, ref, mag, names = _reference(name, spec, "relu", np.random.default_rng(7))
    c, k, h, w, ks, s, p, d, g = spec
    layer = engine.Conv2d(wt, b, s, p, d, g, activation="relu", algorithm=algorithm,
                          winograd_weights="per_call")
    check_ieee(layer(x), ref, mag, algorithm, names)


@pytest.mark.parametrize("algorithm, name", [(a, n) for a, n in CASES if a in (
    "winograd_f23", "winograd_f43", "dilated_s2b", "fft")])
def test_nonfinite_results_do_not_depend_on_threads(algorithm, name):
    spec = LAYERS[name]
    x, wt, b, ref, mag, names = _reference(name, spec, "relu", np.random.default_rng(7))
    c, k, h, w, ks, s, p, d, g = spec
    layer = engine.Conv2d(wt, b, s, p, d, g, activation="relu", algorithm=algorithm)
    y1 = np.empty(layer.output_shape(x.shape), np.float32)
    y2 = np.empty_like(y1)
    layer.run(x, y1, layer.geometry(x.shape), 1)
    layer.run(x, y2, layer.geometry(x.shape), 2)
    assert np.array_equal(y1, y2, equal_nan=True)


def test_fix_up_touches_only_outputs_that_read_a_nonfinite_value(rng):
    # out holds a marker; the fix-up must leave every output whose window is finite alone
    from engine.ops.winograd import fix_nonfinite
    x = rng.standard_normal((2, 8, 13, 11), dtype=np.float32)
    x[0, 2, 4, 5] = np.inf
    x[1, 7, 0, 10] = np.nan
    x[1, 6, 12, 0] = -np.inf
    wt = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)
    layer = engine.Conv2d(wt, None, stride=(2, 1), padding=2, dilation=(1, 2), groups=2)
    g = layer.geometry(x.shape)
    out = np.full(layer.output_shape(x.shape), 5.0, np.float32)
    assert fix_nonfinite(layer, x, out, g.pads, 2) == 3
    with np.errstate(invalid="ignore"):
        ref = conv2d_ref(x, wt, None, (2, 1), ((2, 2), (2, 2)), (1, 2), 2)
    assert np.array_equal(np.isfinite(out), np.isfinite(ref))
    assert np.all(out[np.isfinite(out)] == 5.0)
    assert np.array_equal(out[~np.isfinite(ref)], ref[~np.isfinite(ref)], equal_nan=True)
