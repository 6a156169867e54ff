"""engine.interpolate ("nearest", "bilinear") against slow references and torch.

Which source pixel an output reads is defined by PyTorch's float32 arithmetic, so the
references below repeat that arithmetic with NumPy float32 scalars, one output index at a time,
and blend in float64. Tolerances: nearest only copies values, so it must match exactly (also
against torch). Bilinear blends four float32 values in [-1, 1] with a few roundings: atol 1e-6
against the float64 blend. Against torch, 4e-6: for small outputs PyTorch's CPU kernel takes a
separable path that derives the same weights by another formula, a few ulp apart.
"""
import itertools
import math
import warnings

import numpy as np
import pytest

import engine
from engine.ops.resample import Interpolate
from engine.shapes import interpolate_output_shape

BILINEAR_ATOL = 1e-6
TORCH_BILINEAR_ATOL = 4e-6
SIZES = (1, 5, 11, 53)
SCALES = (0.5, 1.5, 2.0, 3.0, 0.7, 1 / 3, 2.5)


# -- slow references ----------------------------------------------------------------------------
def out_len_ref(i, size, scale):
    return size if size is not None else int(math.floor(i * scale))


def _ratio_ref(i, o, scale):
    # PyTorch samples with 1/scale_factor when one was given, else with in/out, in float32
    return np.float32(1.0 / scale) if scale is not None else np.float32(i) / np.float32(o)


def nearest_src_ref(i, o, scale):
    src = []
    for d in range(o):
        if o == i:
            src.append(d)
        elif o == 2 * i:
            src.append(d // 2)
        else:
            src.append(min(math.floor(np.float32(d) * _ratio_ref(i, o, scale)), i - 1))
    return src


def linear_taps_ref(i, o, scale, align_corners):
    """[((i0, w0), (i1, w1)) per output index] along one axis."""
    taps = []
    for d in range(o):
        if o == i:
            taps.append(((d, 1.0), (d, 0.0)))
            continue
        if align_corners:
            r = np.float32(i - 1) / np.float32(o - 1) if o > 1 else np.float32(0)
            src = r * np.float32(d)
        else:
            src = _ratio_ref(i, o, scale) * (np.float32(d) + np.float32(0.5)) - np.float32(0.5)
            src = max(src, np.float32(0))        # half-pixel source clamped at 0
        i0 = min(math.floor(src), i - 1)
        w1 = min(max(float(src - np.float32(i0)), 0.0), 1.0)
        taps.append(((i0, 1.0 - w1), (min(i0 + 1, i - 1), w1)))
    return taps


def interpolate_ref(x, size=None, scale=None, mode="nearest", align_corners=False):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    size = (None, None) if size is None else (size, size) if np.isscalar(size) else size
    scale = (None, None) if scale is None else (scale, scale) if np.isscalar(scale) else scale
    oh, ow = out_len_ref(h, size[0], scale[0]), out_len_ref(w, size[1], scale[1])
    if mode == "nearest":
        ys, xs = nearest_src_ref(h, oh, scale[0]), nearest_src_ref(w, ow, scale[1])
        return x[:, :, ys][:, :, :, xs]
    ty, tx = linear_taps_ref(h, oh, scale[0], align_corners), \
        linear_taps_ref(w, ow, scale[1], align_corners)
    out = np.zeros((n, c, oh, ow))
    for oy, ox in itertools.product(range(oh), range(ow)):
        for (iy, wy), (ix, wx) in itertools.product(ty[oy], tx[ox]):
            out[:, :, oy, ox] += wy * wx * x[:, :, iy, ix]
    return out


# -- configurations ---------------------------------------------------------------------------
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]


def configs():
    """(input (H, W), size, scale_factor) with at least one output pixel per axis."""
    for h, w in ((1, 5), (5, 11), (11, 1), (53, 11)):
        for o in SIZES:
            yield (h, w), (o, SIZES[(SIZES.index(o) + 1) % 4]), None
        for s in SCALES:
            if math.floor(h * s) >= 1 and math.floor(w * s) >= 1:
                yield (h, w), None, s
        yield (h, w), None, (2.0, 0.5) if w >= 2 else (0.5, 3.0) if h >= 2 else (3.0, 1.5)


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,align_corners", MODES)
def test_interpolate_sweep_matches_reference(rng, mode, align_corners):
    checked = 0
    for (h, w), size, scale in configs():
        x = rng.uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
        y = engine.interpolate(x, size, scale, mode, align_corners)
        ref = interpolate_ref(x, size, scale, mode, bool(align_corners))
        assert y.shape == ref.shape, ((h, w), size, scale)
        if mode == "nearest":
            assert np.array_equal(y, ref), ((h, w), size, scale)
        else:
            np.testing.assert_allclose(y, ref, rtol=0, atol=BILINEAR_ATOL,
                                       err_msg=str(((h, w), size, scale)))
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("mode,align_corners", MODES)
def test_interpolate_sweep_matches_torch(rng, mode, align_corners):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for (h, w), size, scale in configs():
        x = rng.uniform(-1, 1, (1, 2, h, w)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = F.interpolate(torch.from_numpy(x), size, scale, mode, align_corners).numpy()
        y = engine.interpolate(x, size, scale, mode, align_corners)
        assert y.shape == t.shape, ((h, w), size, scale)
        if mode == "nearest":
            assert np.array_equal(y, t), ((h, w), size, scale)
        else:
            np.testing.assert_allclose(y, t, rtol=0, atol=TORCH_BILINEAR_ATOL,
                                       err_msg=str(((h, w), size, scale)))


def test_nearest_indices_match_torch_on_awkward_ratios():
    # ratios whose float32 products land next to integers, where the rounding order matters
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for i, o in itertools.product((3, 7, 10, 33, 49, 100), (6, 7, 21, 99, 150, 301)):
        x = np.arange(i, dtype=np.float32).reshape(1, 1, 1, i)
        assert np.array_equal(engine.interpolate(x, (1, o)),
                              F.interpolate(torch.from_numpy(x), (1, o)).numpy()), (i, o)
    for i, s in itertools.product((3, 7, 10, 33, 49), (1.1, 1.5, 2.2, 0.3, 0.7, 3.7, 1 / 3)):
        if math.floor(i * s) < 1:
            continue
        x = np.arange(i, dtype=np.float32).reshape(1, 1, i, 1)
        assert np.array_equal(engine.interpolate(x, scale_factor=(s, 1.0)),
                              F.interpolate(torch.from_numpy(x), scale_factor=(s, 1.0)).numpy()), \
            (i, s)


def test_scale_factor_and_size_sample_differently():
    # 4 * 1.7 = 6.8: 6 outputs either way, but scale_factor samples with 1/1.7 and size with
    # 4/6, as PyTorch does (recompute_scale_factor=None)
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
    assert engine.interpolate(x, scale_factor=(1, 1.7)).ravel().tolist() == [0, 0, 1, 1, 2, 2]
    assert engine.interpolate(x, (1, 6)).ravel().tolist() == [0, 0, 1, 2, 2, 3]
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    assert engine.interpolate(x, (1, 7)).ravel().tolist() == [0, 0, 1, 2, 2, 3, 4]


def test_hand_checked_cases():
    x = np.array([[0, 1], [2, 3]], np.float32).reshape(1, 1, 2, 2)
    assert engine.interpolate(x, scale_factor=2).tolist() == [[[[0, 0, 1, 1],
                                                                [0, 0, 1, 1],
                                                                [2, 2, 3, 3],
                                                                [2, 2, 3, 3]]]]
    y = engine.interpolate(x, size=3, mode="bilinear", align_corners=True)
    assert y.tolist() == [[[[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]]]]
    # half-pixel: output 0 of 4 maps to source -0.25, clamped to 0; output 1 to 0.25
    y = engine.interpolate(x, size=4, mode="bilinear")
    assert y[0, 0, 0].tolist() == [0, 0.25, 0.75, 1]
    assert y[0, 0, :, 0].tolist() == [0, 0.5, 1.5, 2]
    # downscaling by 0.5 half-pixel: output 0 reads source 0.5, the mean of the first two
    z = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert engine.interpolate(z, scale_factor=0.5, mode="bilinear").tolist() == \
        [[[[2.5, 4.5], [10.5, 12.5]]]]
    assert engine.interpolate(z, scale_factor=0.5).tolist() == [[[[0, 2], [8, 10]]]]
    # equal sizes copy
    assert np.array_equal(engine.interpolate(z, size=(4, 4), mode="bilinear"), z)


def test_threads_bit_identical(rng):
    # large enough that threads_for grants both threads to every mode
    x = rng.standard_normal((2, 32, 64, 48)).astype(np.float32)
    for mode, ac in MODES:
        for kw in (dict(size=(127, 96)), dict(scale_factor=1.5)):
            a = Interpolate(mode=mode, align_corners=ac, num_threads=1, **kw)(x)
            b = Interpolate(mode=mode, align_corners=ac, num_threads=2, **kw)(x)
            assert np.array_equal(a, b), (mode, ac, kw)


def test_plan_reuses_tables_per_shape(rng):
    plan = Interpolate(scale_factor=2.0, mode="bilinear")
    a = rng.standard_normal((1, 2, 5, 7)).astype(np.float32)
    b = rng.standard_normal((1, 2, 6, 3)).astype(np.float32)
    assert plan(a).shape == (1, 2, 10, 14) and plan(b).shape == (1, 2, 12, 6)
    assert np.array_equal(plan(a), engine.interpolate(a, scale_factor=2.0, mode="bilinear"))
    assert len(plan._tables) == 2


def test_bad_input_raises_value_error():
    x = np.zeros((1, 2, 4, 4), np.float32)
    cases = [
        (lambda: engine.interpolate(x[0], size=2), "x"),
        (lambda: engine.interpolate(x, size=2, scale_factor=2.0), "size"),
        (lambda: engine.interpolate(x), "scale_factor"),
        (lambda: engine.interpolate(x, size=2, align_corners=True), "align_corners"),
        (lambda: engine.interpolate(x, size=2, align_corners=False), "align_corners"),
        (lambda: engine.interpolate(x, size=2, mode="bicubic"), "mode"),
        (lambda: engine.interpolate(x, size=0), "size"),
        (lambda: engine.interpolate(x, size=(2, -1)), "size"),
        (lambda: engine.interpolate(x, size=(2, 2, 2)), "size"),
        (lambda: engine.interpolate(x, size=2.5), "size"),
        (lambda: engine.interpolate(x, scale_factor=0.0), "scale_factor"),
        (lambda: engine.interpolate(x, scale_factor=-2.0), "scale_factor"),
        (lambda: engine.interpolate(x, scale_factor=float("nan")), "scale_factor"),
        (lambda: engine.interpolate(x, scale_factor=(2.0,)), "scale_factor"),
        (lambda: engine.interpolate(x, scale_factor=0.2), "scale_factor"),   # 4 * 0.2 < 1
        (lambda: engine.interpolate(np.zeros((1, 1, 0, 3)), size=2), "x"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_output_shape_helper():
    assert interpolate_output_shape((5, 7), size=3) == ((3, 3), None)
    assert interpolate_output_shape((5, 7), scale_factor=(1.5, 0.5)) == ((7, 3), (1.5, 0.5))
    assert interpolate_output_shape((10, 10), scale_factor=0.29) == ((2, 2), (0.29, 0.29))
