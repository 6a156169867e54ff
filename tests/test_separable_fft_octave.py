"""The separable and fft convolution algorithms, and engine.OctaveConv2d, against the float64
reference conv2d_ref.

Tolerances, |y - ref| <= RTOL * conv(|x|, |w|) + ATOL, as in test_conv2d.py:
- separable 1e-5: each output sums R*(kh + kw) float32 products in two passes, the same order
  of rounding as a direct convolution; the factors come from a float64 SVD, rounded to float32,
  and slices are rank-truncated only below 1e-6 of their largest singular value.
- fft 1e-4 (plus 1e-5 absolute): a float32 FFT spreads rounding over the whole plane, so the
  error scales with the plane's overall magnitude rather than each output's own.
- octave 1e-5: four im2col/Winograd-free small convolutions, a 2x2 mean and a copy.
"""
import numpy as np
import pytest

import engine
from engine import dispatch
from engine._threads import threads_for
from engine.ops.separable import RANK_RTOL, rank1_kernels, separable_factors
from reference import conv2d_ref, same_pads_ref

SOBEL = np.outer([1, 2, 1], [1, 0, -1]).astype(np.float32)
BINOMIAL5 = np.array([1, 4, 6, 4, 1], np.float64) / 16


def _pads(padding, size, kernel, stride=(1, 1), dilation=(1, 1)):
    if padding == "same":
        return same_pads_ref(size, kernel, stride, dilation)
    if isinstance(padding, tuple) and len(padding) == 4:
        return ((padding[0], padding[2]), (padding[1], padding[3]))
    p = padding if isinstance(padding, tuple) else (padding, padding)
    return ((p[0], p[0]), (p[1], p[1]))


def check(y, x, w, b, stride, pads, dilation, groups, rtol, atol=1e-6, activation=None):
    ref = conv2d_ref(x, w, b, stride, pads, dilation, groups)
    mag = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, pads,
                     dilation, groups)
    if activation == "relu":
        ref = np.maximum(ref, 0)
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = rtol * mag + atol
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def _both_threads(layer, x):
    old = engine.get_num_threads()
    try:
        engine.set_num_threads(1)
        y1 = layer(x)
        engine.set_num_threads(2)
        y2 = layer(x)
    finally:
        engine.set_num_threads(old)
    return y1, y2


def _rank1_weight(rng, k, kh, kw):
    col = rng.standard_normal((k, kh))
    row = rng.standard_normal((k, kw))
    return (col[:, :, None] * row[:, None, :])[:, None].astype(np.float32)


# --- separable -----------------------------------------------------------------------------

def test_sobel_on_a_single_channel_image_runs_separable(rng):
    x = rng.integers(0, 256, (1, 1, 37, 41)).astype(np.float32)
    w = SOBEL[None, None]
    layer = engine.Conv2d(w, padding=1, input_size=(37, 41))
    assert layer.algorithm == "separable", layer.explain()
    assert "rank 1" in layer.reason
    check(layer(x), x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, 1e-5)


def test_gaussian_blur_per_channel_runs_separable(rng):
    c = 6
    w = np.tile(np.outer(BINOMIAL5, BINOMIAL5).astype(np.float32), (c, 1, 1, 1))
    x = rng.standard_normal((2, c, 30, 27), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32)
    layer = engine.Conv2d(w, b, padding=2, groups=c, activation="relu")
    assert layer.algorithm == "separable", layer.explain()
    assert layer._impl.rank == 1
    check(layer(x), x, w, b, (1, 1), ((2, 2), (2, 2)), (1, 1), c, 1e-5, activation="relu")
    # a blur of a constant image is the constant away from the borders
    flat = layer(np.full((1, c, 12, 12), 3, np.float32))
    inner = np.broadcast_to(np.maximum(3 + b, 0)[None, :, None, None], (1, c, 8, 8))
    np.testing.assert_allclose(flat[:, :, 2:-2, 2:-2], inner, rtol=1e-6)


def test_rank1_detection():
    assert rank1_kernels(SOBEL[None, None], 1)
    assert rank1_kernels(np.outer(BINOMIAL5, BINOMIAL5).astype(np.float32)[None, None], 1)
    assert rank1_kernels(np.zeros((3, 1, 5, 5)), 3)                # zero slices: rank 0
    assert rank1_kernels(np.ones((2, 1, 1, 7)), 2)                 # 1xk is trivially rank 1
    assert not rank1_kernels(np.eye(3)[None, None], 1)
    assert not rank1_kernels(np.tile(SOBEL, (4, 2, 1, 1)), 2)      # 2 input channels per group
    w = np.stack([SOBEL, SOBEL.T])[:, None]
    assert rank1_kernels(w, 2)
    w[1, 0, 0, 0] += 1e-3                                          # far above RANK_RTOL
    assert not rank1_kernels(w, 2)
    w[1, 0, 0, 0] = SOBEL.T[0, 0] + 1e-9 * 4                       # below it
    assert rank1_kernels(w.astype(np.float64), 2)
    assert RANK_RTOL == 1e-6


def test_factors_reconstruct_the_weight(rng):
    w = rng.standard_normal((5, 1, 4, 6))
    col, row = separable_factors(w)
    assert col.shape == (4, 5, 4) and row.shape == (4, 5, 6)       # full rank 4
    np.testing.assert_allclose(np.einsum("rku,rkv->kuv", col, row), w[:, 0], atol=1e-5)
    col, row = separable_factors(_rank1_weight(rng, 3, 5, 5).astype(np.float64))
    assert col.shape[0] == 1


@pytest.mark.parametrize("size, kernel, stride, dilation, padding, c, mult, rank1", [
    ((1, 1), (3, 3), 1, 1, 1, 1, 1, True),
    ((5, 5), (5, 5), 1, 1, "same", 3, 1, True),
    ((11, 11), (3, 3), 2, 1, 0, 4, 2, True),
    ((11, 7), (5, 3), 1, 2, (2, 0, 3, 1), 2, 1, True),
    ((53, 53), (7, 7), 3, 1, 3, 2, 3, True),
    ((11, 11), (3, 3), 1, 3, 3, 4, 1, False),                      # full rank: R = 3 terms
    ((5, 11), (5, 5), 2, 1, 2, 3, 2, False),
    ((7, 7), (1, 1), 1, 1, 0, 2, 1, True),
])
def test_separable_sweep(size, kernel, stride, dilation, padding, c, mult, rank1, rng):
    k = c * mult
    w = (_rank1_weight(rng, k, *kernel) if rank1
         else rng.standard_normal((k, 1) + kernel, dtype=np.float32))
    x = rng.standard_normal((2, c) + size, dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    layer = engine.Conv2d(w, b, stride, padding, dilation, groups=c, algorithm="separable")
    y = layer(x)
    pads = _pads(padding, size, kernel, (stride,) * 2, (dilation,) * 2)
    check(y, x, w, b, (stride,) * 2, pads, (dilation,) * 2, c, 1e-5)


def test_separable_one_and_two_threads_bit_identical(rng):
    w = _rank1_weight(rng, 32, 5, 5)
    layer = engine.Conv2d(w, padding=2, groups=16, algorithm="separable")
    x = rng.standard_normal((1, 16, 48, 40), dtype=np.float32)
    assert threads_for(layer.geometry(x.shape).macs, 2) == 2
    y1, y2 = _both_threads(layer, x)
    assert np.array_equal(y1, y2)
    # a single-channel image is split by row blocks
    single = engine.Conv2d(SOBEL[None, None], padding=1, algorithm="separable")
    x = rng.standard_normal((1, 1, 300, 300), dtype=np.float32)
    y1, y2 = _both_threads(single, x)
    assert np.array_equal(y1, y2)


def test_separable_refuses_dense_multichannel_layers(rng):
    w = np.tile(SOBEL, (4, 3, 1, 1))          # every (out, in) slice is rank 1
    with pytest.raises(ValueError, match="does not factor"):
        engine.Conv2d(w, padding=1, algorithm="separable")
    assert engine.Conv2d(w, padding=1).algorithm != "separable"


def test_separable_dispatch_rules():
    def choose(**kw):
        base = dict(in_channels=32, out_channels=32, kernel=(5, 5), stride=(1, 1),
                    dilation=(1, 1), groups=32, pads=((2, 2), (2, 2)), in_size=(56, 56),
                    rank1_kernels=True)
        base.update(kw)
        return dispatch.choose_conv2d(dispatch.ConvParams(**base))[0]
    assert choose() == "separable"
    assert choose(kernel=(7, 7), pads=((3, 3), (3, 3))) == "separable"
    assert choose(out_channels=64) == "separable"                  # channel multiplier 2
    assert choose(rank1_kernels=False) == "depthwise"
    assert choose(kernel=(3, 3), pads=((1, 1),) * 2) == "depthwise"    # measured faster there
    assert choose(kernel=(1, 5), pads=((0, 0), (2, 2))) == "depthwise"
    assert choose(in_channels=1, out_channels=1, groups=1, kernel=(3, 3)) == "separable"
    p = dispatch.ConvParams(32, 32, (5, 5), (1, 1), (1, 1), 32, rank1_kernels=True)
    names = [a for a, _ in dispatch.conv2d_candidates(p)]
    assert "separable" in names
    assert dispatch.estimated_ms("separable", p) < dispatch.estimated_ms("depthwise", p)


# --- fft -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, kernel, padding, c, k, groups, batch", [
    ((20, 20), (7, 7), 3, 8, 8, 1, 1),
    ((16, 23), (11, 11), "same", 4, 6, 2, 2),
    ((31, 31), (7, 9), 0, 3, 5, 1, 1),
    ((12, 12), (7, 7), (1, 9, 0, 2), 4, 4, 4, 1),     # padding wider than the kernel on one side
    ((9, 9), (15, 15), 7, 2, 3, 1, 2),
    ((5, 5), (3, 3), 1, 2, 2, 1, 1),                  # forced on a small kernel: still correct
])
def test_fft_against_reference(size, kernel, padding, c, k, groups, batch, rng):
    x = rng.standard_normal((batch, c) + size, dtype=np.float32)
    w = rng.standard_normal((k, c // groups) + kernel, dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    layer = engine.Conv2d(w, b, padding=padding, groups=groups, activation="relu",
                          algorithm="fft")
    pads = _pads(padding, size, kernel)
    check(layer(x), x, w, b, (1, 1), pads, (1, 1), groups, 1e-4, 1e-5, activation="relu")


def test_fft_plan_serves_several_sizes(rng):
    w = rng.standard_normal((6, 5, 7, 7), dtype=np.float32)
    layer = engine.Conv2d(w, padding=3, algorithm="fft")
    for size in [(20, 20), (13, 29), (20, 20)]:
        x = rng.standard_normal((1, 5) + size, dtype=np.float32)
        check(layer(x), x, w, None, (1, 1), ((3, 3), (3, 3)), (1, 1), 1, 1e-4, 1e-5)
    assert len(layer._impl._spectra) == 2


def test_fft_one_and_two_threads_bit_identical(rng):
    w = rng.standard_normal((16, 16, 7, 7), dtype=np.float32)
    layer = engine.Conv2d(w, padding=3, algorithm="fft")
    x = rng.standard_normal((2, 16, 40, 40), dtype=np.float32)
    assert threads_for(layer.geometry(x.shape).macs, 2) == 2
    y1, y2 = _both_threads(layer, x)
    assert np.array_equal(y1, y2)


def test_fft_refuses_stride_and_dilation(rng):
    w = rng.standard_normal((4, 4, 7, 7), dtype=np.float32)
    with pytest.raises(ValueError, match="fft needs stride 1"):
        engine.Conv2d(w, stride=2, algorithm="fft")
    with pytest.raises(ValueError, match="fft needs dilation 1"):
        engine.Conv2d(w, dilation=2, algorithm="fft")


def test_fft_dispatch_rule():
    def choose(c=64, k=64, kernel=7, size=64, groups=1):
        p = dispatch.ConvParams(c, k, (kernel, kernel), (1, 1), (1, 1), groups,
                                ((kernel // 2,) * 2,) * 2, (size, size))
        return dispatch.choose_conv2d(p)[0]
    assert choose() == "fft"
    assert choose(c=16, k=16, kernel=11, size=128) == "fft"
    assert choose(groups=4, kernel=9) == "fft"
    assert choose(c=3) == "direct_blocked"         # few input channels: fft measured 4x slower
    assert choose(kernel=5) != "fft"               # too close to call at 5x5
    assert choose(c=512, k=512, size=224) == "im2col"   # weight spectrum over the cap
    p = dispatch.ConvParams(64, 64, (7, 7), (2, 2), (1, 1), 1, ((3, 3),) * 2, (64, 64))
    assert dispatch.choose_conv2d(p)[0] != "fft"


def test_fft_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 6, 25, 21), dtype=np.float32)
    w = rng.standard_normal((8, 3, 11, 11), dtype=np.float32)
    b = rng.standard_normal(8, dtype=np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                     torch.from_numpy(b), padding=5, groups=2).numpy()
    y = engine.conv2d(x, w, b, padding=5, groups=2, algorithm="fft")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# --- octave --------------------------------------------------------------------------------

def _pool_ref(x):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))


def _octave_ref(x_h, x_l, w, b, alpha_in, alpha_out, stride, pads, activation):
    k, c = w.shape[:2]
    cl, kl = int(alpha_in * c), int(alpha_out * k)
    ch, kh = c - cl, k - kl
    conv = lambda x, ww: conv2d_ref(x, ww, None, (stride,) * 2, pads)   # noqa: E731
    y_h = conv(x_h, w[:kh, :ch])
    if cl:
        y_h += conv(x_l, w[:kh, ch:]).repeat(2, axis=2).repeat(2, axis=3)
    y_l = conv(_pool_ref(x_h), w[kh:, :ch]) if kl else None
    if kl and cl:
        y_l += conv(x_l, w[kh:, ch:])
    if b is not None:
        y_h += b[:kh, None, None]
        if kl:
            y_l += b[kh:, None, None]
    if activation == "relu":
        y_h = np.maximum(y_h, 0)
        y_l = None if y_l is None else np.maximum(y_l, 0)
    return y_h, y_l


@pytest.mark.parametrize("alpha_in, alpha_out, size, kernel, stride, padding, bias, act", [
    (0.5, 0.5, (16, 12), 3, 1, 1, True, None),
    (0.0, 0.25, (10, 10), 3, 1, 1, True, "relu"),      # first layer: no low input
    (0.25, 0.0, (8, 14), 3, 1, 1, False, None),        # last layer: no low output
    (0.0, 0.0, (9, 9), 3, 1, 0, True, None),           # plain convolution
    (0.5, 0.5, (16, 16), 3, 2, 1, False, "relu"),      # strided on both resolutions
    (0.75, 0.5, (12, 12), 1, 1, 0, True, None),
])
def test_octave_against_composition(alpha_in, alpha_out, size, kernel, stride, padding, bias,
                                    act, rng):
    c, k = 8, 8
    w = rng.standard_normal((k, c, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32) if bias else None
    layer = engine.OctaveConv2d(w, alpha_in, alpha_out, b, stride, padding, activation=act)
    cl = int(alpha_in * c)
    x_h = rng.standard_normal((2, c - cl) + size, dtype=np.float32)
    x_l = (rng.standard_normal((2, cl, size[0] // 2, size[1] // 2), dtype=np.float32)
           if cl else None)
    y_h, y_l = layer(x_h, x_l)
    pads = _pads(padding, size, (kernel, kernel))
    r_h, r_l = _octave_ref(x_h, x_l, w, b, alpha_in, alpha_out, stride, pads, act)
    mag = 1e-5 * (np.abs(r_h).max() + 1) * c * kernel * kernel
    np.testing.assert_allclose(y_h, r_h, rtol=0, atol=mag)
    if r_l is None:
        assert y_l is None
    else:
        np.testing.assert_allclose(y_l, r_l, rtol=0, atol=mag)
    assert "OctaveConv2d(8->8" in repr(layer)


@pytest.mark.parametrize("make, call, match", [
    (lambda w: engine.OctaveConv2d(w, 1.0, 0.5), None, "alpha_in"),
    (lambda w: engine.OctaveConv2d(w, 0.5, -0.1), None, "alpha_out"),
    (lambda w: engine.OctaveConv2d(w, 0.5, True), None, "alpha_out"),
    (lambda w: engine.OctaveConv2d(w, 0.5, 0.5, np.zeros(3)), None, "bias"),
    (lambda w: engine.OctaveConv2d(w, 0.5, 0.5, activation="swish"), None, "activation"),
    (lambda w: engine.OctaveConv2d(w[0], 0.5, 0.5), None, "weight must be 4-D"),
    (None, lambda L, xh, xl: L(xh), "x_l is required"),
    (None, lambda L, xh, xl: L(xh, xl[:, :, :3]), "x_l must have shape"),
    (None, lambda L, xh, xl: L(xh[:, :3], xl), "x_h must have 4 channels"),
    (None, lambda L, xh, xl: L(xh[:, :, :7], xl[:, :, :3]), "sizes that halve exactly"),
    (lambda w: engine.OctaveConv2d(w, 0.0, 0.5, padding=1), lambda L, xh, xl: L(xh, xl),
     "x_h must have 8 channels"),
    (lambda w: engine.OctaveConv2d(w, 0.0, 0.5, padding=1),
     lambda L, xh, xl: L(np.concatenate([xh, xh], 1), xl), "x_l must be None"),
])
def test_octave_bad_input_raises_value_error(make, call, match, rng):
    w = rng.standard_normal((8, 8, 3, 3), dtype=np.float32)
    x_h = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    x_l = rng.standard_normal((1, 4, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        layer = (make or (lambda w: engine.OctaveConv2d(w, 0.5, 0.5, padding=1)))(w)
        call(layer, x_h, x_l)
