"""The depthwise convolution (engine/ops/depthwise.py, kernels/conv_depthwise.pyx) against the
float64 reference tests/reference.conv2d_ref, torch, and itself across thread counts.

Tolerance: each output is a sum of at most kh*kw <= 25 float32 products plus the bias, so its
rounding error is below ~30 eps32 (eps32 = 6e-8) of the sum of the magnitudes of its terms,
sum |w| * |x| + |b|. The tests allow 1e-5 of that sum (about 5x the bound) plus 1e-6: a single
wrong or missing tap is an error of the size of a whole term, far above it.
"""
import itertools

import numpy as np
import pytest

import engine
from engine._kernels import conv_depthwise
from engine.ops import depthwise as depthwise_mod
from engine.ops.depthwise import Depthwise
from reference import conv2d_ref, same_pads_ref

RTOL = 1e-5
ATOL = 1e-6
SIZES = (1, 5, 11, 53)


# -- helpers ----------------------------------------------------------------------------------
def _act_ref(y, activation):
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    return y


def _pads_ref(padding, size, k, s, d):
    """((top, bottom), (left, right)) from the engine's padding argument, written out here
    rather than taken from engine.shapes."""
    if padding == "same":
        return same_pads_ref(size, (k, k), (s, s), (d, d))
    if padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, tuple):          # ONNX order: top, left, bottom, right
        t, l, b, r = padding
        return ((t, b), (l, r))
    return ((padding, padding), (padding, padding))


def _fits(size, k, d, pads):
    return all(size[a] + sum(pads[a]) >= d * (k - 1) + 1 for a in range(2))


def check_layer(rng, n, c, mult, size, k, s, padding, d, bias, activation, threads=None):
    """Run one forced depthwise layer and compare with the reference; returns the output."""
    x = rng.uniform(-1, 1, (n, c) + size).astype(np.float32)
    w = rng.uniform(-1, 1, (c * mult, 1, k, k)).astype(np.float32)
    b = rng.uniform(-1, 1, c * mult).astype(np.float32) if bias else None
    layer = engine.Conv2d(w, b, s, padding, d, groups=c, activation=activation,
                          algorithm="depthwise", num_threads=threads)
    assert layer.algorithm == "depthwise"
    y = layer(x)
    pads = _pads_ref(padding, size, k, s, d)
    ref = _act_ref(conv2d_ref(x, w, b, (s, s), pads, (d, d), groups=c), activation)
    scale = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), (s, s), pads,
                       (d, d), groups=c)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == np.float32
    err = np.abs(y - ref)
    bad = err > RTOL * scale + ATOL
    assert not bad.any(), (f"max error {err.max():.3g} at {np.argwhere(bad)[0]}, layer n={n} "
                           f"c={c} mult={mult} size={size} k={k} s={s} padding={padding} d={d}")
    return y


PADDINGS = (0, 1, "same", "valid", (2, 0, 1, 3), (0, 3, 2, 1))


# -- the fast paths: 3x3, stride 1 and 2, dilation 1, every padding -----------------------------
@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_fast_paths_3x3(rng, threads, s, size):
    for i, padding in enumerate(PADDINGS + (2, 4)):
        hw = (size, size + i % 3)    # non-square, odd and even widths (the s2 de-interleave)
        if not _fits(hw, 3, 1, _pads_ref(padding, hw, 3, s, 1)):
            continue
        check_layer(rng, n=1 + 2 * (i % 2), c=16 if size < 53 else 8, mult=1 + i % 2, size=hw,
                    k=3, s=s, padding=padding, d=1, bias=i % 3 != 0,
                    activation=(None, "relu", "relu6")[i % 3])


# -- the general path: every kernel, stride, dilation and padding --------------------------------
@pytest.mark.parametrize("k,s,d", list(itertools.product([1, 3, 5], [1, 2, 3], [1, 2, 3])))
def test_general_sweep(rng, k, s, d):
    cases = 0
    for i, (size, padding) in enumerate(itertools.product(SIZES, PADDINGS)):
        hw = (size, max(1, size - 2 + i % 4))
        if not _fits(hw, k, d, _pads_ref(padding, hw, k, s, d)):
            continue
        check_layer(rng, n=(1, 3)[i % 2], c=(3, 16)[(i // 2) % 2] if size < 53 else 3,
                    mult=1 + (i // 3) % 2, size=hw, k=k, s=s, padding=padding, d=d,
                    bias=i % 2 == 0, activation=(None, "relu", "relu6")[i % 3])
        cases += 1
    assert cases >= 6  # the sweep must not silently skip everything


def test_rectangular_kernels_and_strides(rng):
    """kh != kw, sh != sw, dh != dw: the phase split and the tap offsets per axis."""
    x = rng.uniform(-1, 1, (2, 5, 13, 17)).astype(np.float32)
    for (kh, kw), (sh, sw), (dh, dw), pads in [((3, 5), (1, 2), (2, 1), (1, 0, 2, 3)),
                                               ((5, 1), (2, 1), (1, 3), (0, 2, 1, 0)),
                                               ((1, 3), (3, 2), (1, 1), (1, 1, 1, 1)),
                                               ((2, 4), (2, 3), (3, 2), (2, 2, 0, 1))]:
        w = rng.uniform(-1, 1, (10, 1, kh, kw)).astype(np.float32)
        b = rng.uniform(-1, 1, 10).astype(np.float32)
        y = engine.conv2d(x, w, b, (sh, sw), pads, (dh, dw), groups=5, algorithm="depthwise")
        ref = conv2d_ref(x, w, b, (sh, sw), ((pads[0], pads[2]), (pads[1], pads[3])), (dh, dw),
                         groups=5)
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)


# -- bands: the staged input split over several bands of output rows ----------------------------
@pytest.mark.parametrize("stage_bytes", [1, 3000])
@pytest.mark.parametrize("k,s,d,padding", [(3, 1, 1, 1), (3, 2, 1, "same"), (5, 1, 2, 3),
                                           (3, 3, 1, (2, 0, 1, 3)), (1, 2, 1, 0)])
def test_bands(rng, monkeypatch, stage_bytes, k, s, d, padding):
    """A budget of 1 byte gives one output row per band; 3000 bytes a few rows per band, with
    the last band shorter. Both must equal the reference (and the default single band)."""
    monkeypatch.setattr(depthwise_mod, "DEPTHWISE_STAGE_BYTES", stage_bytes)
    check_layer(rng, n=2, c=3, mult=2, size=(29, 23), k=k, s=s, padding=padding, d=d,
                bias=True, activation="relu6")


# -- one channel: not depthwise for the dispatcher, but the kernel handles it -------------------
def test_one_channel(rng):
    w = rng.uniform(-1, 1, (2, 1, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="depthwise needs groups == in_channels > 1"):
        engine.Conv2d(w, groups=1, algorithm="depthwise")
    # engine.dispatch.why_not rejects groups == in_channels == 1, so the kernel is reached only
    # through the wrapper here: it must still compute the single-channel case right
    for mult, s, padding in [(1, 1, 1), (2, 2, (0, 1, 2, 0)), (2, 1, "same")]:
        wm = w[:mult]
        layer = engine.Conv2d(wm, None, s, padding, 1, groups=1, algorithm="direct")
        x = rng.uniform(-1, 1, (2, 1, 11, 9)).astype(np.float32)
        g = layer.geometry(x.shape)
        out = np.empty(layer.output_shape(x.shape), np.float32)
        Depthwise(layer).run(x, out, g, 2)
        ref = conv2d_ref(x, wm, None, (s, s), g.pads, (1, 1), groups=1)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


# -- threads: bit-identical ---------------------------------------------------------------------
@pytest.mark.parametrize("k,s,d,padding", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 1, "same"),
                                           (3, 1, 2, 2)])
def test_threads_bit_identical(rng, k, s, d, padding):
    x = rng.standard_normal((2, 24, 37, 41)).astype(np.float32)
    w = rng.standard_normal((48, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    layer = engine.Conv2d(w, b, s, padding, d, groups=24, activation="relu",
                          algorithm="depthwise")
    g = layer.geometry(x.shape)
    outs = []
    for t in (1, 2, 3):
        out = np.full(layer.output_shape(x.shape), np.nan, np.float32)
        layer._impl.run(x, out, g, t)    # the kernel itself, with no work threshold in front
        outs.append(out)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    assert np.isfinite(outs[0]).all()


# -- non-finite input: padding is real zeros, garbage lanes never leak into outputs ---------------
def test_nan_reaches_exactly_its_receptive_field(rng):
    x = rng.uniform(-1, 1, (1, 2, 12, 10)).astype(np.float32)
    x[0, 1, 5, 0] = np.nan          # on the left border: the wrapped-row positions of the staging
    w = rng.uniform(0.5, 1, (2, 1, 3, 3)).astype(np.float32)
    for s, padding in [(1, 1), (2, 1), (1, (0, 2, 1, 0))]:
        y = engine.conv2d(x, w, None, s, padding, 1, groups=2, algorithm="depthwise")
        pads = _pads_ref(padding, (12, 10), 3, s, 1)
        hit = conv2d_ref(np.isnan(x).astype(np.float64), np.ones_like(w), None, (s, s), pads,
                         (1, 1), groups=2) > 0
        assert hit.any()
        assert np.array_equal(np.isnan(y), hit)


# -- out= and the functional API ----------------------------------------------------------------
def test_out_argument_and_functional(rng):
    x = rng.uniform(-1, 1, (1, 6, 20, 20)).astype(np.float32)
    w = rng.uniform(-1, 1, (12, 1, 3, 3)).astype(np.float32)
    layer = engine.Conv2d(w, padding=1, groups=6, algorithm="depthwise")
    out = np.empty((1, 12, 20, 20), np.float32)
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, engine.conv2d(x, w, padding=1, groups=6,
                                                     algorithm="depthwise"))
    np.testing.assert_allclose(out, conv2d_ref(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 6),
                               rtol=0, atol=1e-5)
    # the dispatcher picks depthwise by itself for a depthwise layer with full-rank kernels
    assert engine.Conv2d(w, padding=1, groups=6).algorithm == "depthwise"


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("c,k_out,groups", [(4, 4, 1), (4, 8, 2), (6, 6, 3), (1, 1, 1)])
def test_forced_on_non_depthwise_layer_raises(rng, c, k_out, groups):
    w = rng.uniform(-1, 1, (k_out, c // groups, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="depthwise"):
        engine.Conv2d(w, groups=groups, algorithm="depthwise")
    with pytest.raises(ValueError, match="depthwise"):
        engine.conv2d(np.zeros((1, c, 8, 8), np.float32), w, groups=groups,
                      algorithm="depthwise")


def test_bad_input_raises(rng):
    w = rng.uniform(-1, 1, (8, 1, 3, 3)).astype(np.float32)
    layer = engine.Conv2d(w, padding=1, groups=4, algorithm="depthwise")
    with pytest.raises(ValueError, match="channels"):
        layer(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="out"):
        layer(np.zeros((1, 4, 8, 8), np.float32), out=np.zeros((1, 8, 8, 7), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        engine.Conv2d(w, groups=4, algorithm="depthwise")(np.zeros((1, 4, 2, 8), np.float32))
    # the kernel's own guards, for callers that skip the plan's checks
    x = np.zeros((1, 4, 8, 8), np.float32)
    out = np.zeros((1, 8, 8, 8), np.float32)
    w2d = np.zeros((8, 9), np.float32)
    with pytest.raises(ValueError, match="w2d"):
        conv_depthwise.f32_conv2d_depthwise(x, np.zeros((8, 4), np.float32), None, out, 3, 3, 1, 1, 1, 1, 1, 1,
                                            1 << 16, 0, 1)
    with pytest.raises(ValueError, match="out"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, None, np.zeros((1, 6, 8, 8), np.float32), 3, 3, 1, 1, 1, 1, 1, 1,
                                            1 << 16, 0, 1)
    with pytest.raises(ValueError, match="bias"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, np.zeros(7, np.float32), out, 3, 3, 1, 1,
                                            1, 1, 1, 1, 1 << 16, 0, 1)
    with pytest.raises(ValueError, match="positive"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, None, out, 3, 3, 0, 1, 1, 1, 1, 1,
                                            1 << 16, 0, 1)


# -- torch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,mult,size,k,s,padding,d", [
    (32, 1, (112, 112), 3, 1, 1, 1), (16, 1, (56, 56), 3, 2, 1, 1), (8, 2, (19, 23), 5, 1, 2, 1),
    (12, 3, (30, 31), 3, 1, "same", 2), (5, 1, (14, 9), 7, 2, 3, 1), (6, 2, (17, 17), 3, 3, 0, 3),
])
def test_against_torch(rng, c, mult, size, k, s, padding, d):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, c) + size).astype(np.float32)
    w = rng.standard_normal((c * mult, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32)
    y = engine.conv2d(x, w, b, s, padding, d, groups=c, algorithm="depthwise")
    t = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                   s, padding, d, c).numpy()
    np.testing.assert_allclose(y, t, rtol=1e-5, atol=2e-5)
    layer = engine.Conv2d(w, b, s, padding, d, groups=c, activation="relu6",
                          algorithm="depthwise")
    np.testing.assert_allclose(layer(x), np.clip(t, 0, 6), rtol=1e-5, atol=2e-5)
