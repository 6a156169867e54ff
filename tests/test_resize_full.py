"""Resize in full (modes nearest, linear, cubic; antialias; every coordinate_transformation_mode
and nearest_mode; axes and keep_aspect_ratio_policy; any rank) and GridSample (opsets 16 and
20, 1 to 3 spatial axes), against torch.nn.functional.interpolate / grid_sample, ONNX Runtime
and ONNX's reference evaluator; malformed nodes raise engine.ModelError.

Tolerance, per element: |engine - ref| <= RTOL * (|ref| + rms(ref)), RTOL = 1e-5 (~80 eps32),
as in tests/test_onnx_import.py. Every implementation here computes a weighted sum of at most
a few dozen float32 inputs of order 1 with weights summing to 1, the weights themselves
rounded differently (float32 in ONNX Runtime and PyTorch, float64 rounded once to float32
here): the error is a few eps32 of the sum of |terms|, which is of the order of rms(ref), not
of each element; the largest seen is 4e-6 of |ref| + rms(ref). PyTorch's antialiased resize
gets TORCH_AA_RTOL = 3e-5: it places its filters at float32 centres (scale * (i + 0.5)) that
lie a few ulp from the exact ones, ~3e-6 pixel at 40 pixels, and random data has gradients of
order 3 per pixel: 1.1e-5 is the largest seen. Nearest modes copy values: exact, except
where an output's source coordinate is within float32 rounding of a rounding tie (x.5, or an
integer for floor and ceil) without being exactly on it: runtimes that compute it
differently read either neighbour there, so those outputs are left out of the comparison
(``_nearest_ties``, from the exact coordinate computed with Fractions).

Where the references disagree, the engine follows ONNX Runtime and the spec, and each case is
compared with the references that agree (``_reference_agrees``, ``_ort_agrees``):
- Resize align_corners, half_pixel_symmetric and tf_crop_and_resize map coordinates with the
  integer output size (ONNX Runtime, the spec's length_resized) where the reference evaluator
  puts in * scale: they agree when in * scale is an integer or sizes are given;
- pytorch_half_pixel maps a single output to 0 (the spec, ONNX Runtime), the reference to
  -0.5; the reference evaluator also mishandles negative axes;
- ONNX Runtime's antialiased filter takes an axis whose scale is 1 as it is, ignoring its
  tf_crop_and_resize roi (the reference and the engine crop it);
- GridSample cubic with border padding clamps each tap (ONNX Runtime, PyTorch), where the
  reference evaluator clamps the coordinate first; they agree for grids within [-1, 1].
"""
import math
from fractions import Fraction

import numpy as np
import pytest

import engine


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

RTOL = 1e-5
TORCH_AA_RTOL = 3e-5


# ============================================================================ helpers

@pytest.fixture
def rng():
    return np.random.default_rng(11)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got, ref, rtol=RTOL, what=""):
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert got.dtype == np.float32, got.dtype
    if rtol == 0:
        np.testing.assert_array_equal(got, ref, err_msg=str(what))
        return
    ref = np.asarray(ref, np.float64)
    err = np.abs(got.astype(np.float64) - ref)
    bound = rtol * (np.abs(ref) + np.sqrt(np.mean(ref ** 2)))
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), (what, f"error {err[worst]:.3g} > {bound[worst]:.3g} at "
                                        f"{worst}")


def resize_model(x_shape, scales=None, sizes=None, roi=None, opset=19, **attrs):
    """One Resize node on input "x" with constant roi, scales or sizes."""
    inits = []
    names = ["x", "", "", ""]
    if roi is not None:
        names[1] = "roi"
        inits.append(nh.from_array(np.asarray(roi, np.float32), "roi"))
    if scales is not None:
        names[2] = "scales"
        inits.append(nh.from_array(np.asarray(scales, np.float32), "scales"))
    if sizes is not None:
        names[3] = "sizes"
        inits.append(nh.from_array(np.asarray(sizes, np.int64), "sizes"))
    while not names[-1]:
        names.pop()
    node = h.make_node("Resize", names, ["y"], name="rs", **attrs)
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def grid_model(x_shape, g_shape, opset=20, grid=None, **attrs):
    """One GridSample node on "x" and "g" (a graph input, or the initializer ``grid``)."""
    inputs = [h.make_tensor_value_info("x", T.FLOAT, x_shape)]
    inits = []
    if grid is None:
        inputs.append(h.make_tensor_value_info("g", T.FLOAT, g_shape))
    else:
        inits.append(nh.from_array(grid, "g"))
    node = h.make_node("GridSample", ["x", "g"], ["y"], name="gs", **attrs)
    g = h.make_graph([node], "g", inputs, [h.make_tensor_value_info("y", T.FLOAT, None)],
                     inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def engine_run(m, feeds):
    return engine.load(m).run(feeds)["y"]


def ort_run(m, feeds):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def reference_run(m, feeds):
    return ReferenceEvaluator(m).run(None, feeds)[0]


# ============================================================================ Resize vs torch

def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("size,scale", [((9, 14), None), ((4, 3), None), ((1, 5), None),
                                        (None, (1.5, 2.5)), (None, (0.75, 0.625))])
def test_cubic_matches_torch_bicubic(rng, align, size, scale):
    torch = _torch()
    x = randn(rng, 2, 3, 6, 8)
    kw = dict(mode="cubic", coordinate_transformation_mode="align_corners" if align
              else "half_pixel")
    if size is not None:
        m = resize_model(x.shape, sizes=[2, 3, *size], **kw)
    else:
        m = resize_model(x.shape, scales=[1, 1, *scale], **kw)
    got = engine_run(m, {"x": x})
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, scale_factor=scale,
                                          mode="bicubic", align_corners=align).numpy()
    assert_close(got, ref)


@pytest.mark.parametrize("mode,torch_mode,a", [("linear", "bilinear", -0.75),
                                                ("cubic", "bicubic", -0.5)])
@pytest.mark.parametrize("size", [(7, 5), (13, 11), (1, 1), (10, 40), (40, 30), (29, 23)])
def test_antialias_matches_torch(rng, mode, torch_mode, a, size):
    """PyTorch's antialias is Pillow's filter: ONNX's with half_pixel, exclude_outside=1 and,
    for bicubic, a = -0.5."""
    torch = _torch()
    x = randn(rng, 2, 3, 29, 23)
    m = resize_model(x.shape, sizes=[2, 3, *size], mode=mode, antialias=1, exclude_outside=1,
                     cubic_coeff_a=a)
    got = engine_run(m, {"x": x})
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=torch_mode,
                                          antialias=True, align_corners=False).numpy()
    assert_close(got, ref, TORCH_AA_RTOL)


# ============================================================================ Resize vs ONNX

COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
          "asymmetric", "tf_crop_and_resize"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
# (scales, sizes) on a (2, 3, 7, 9) input: shrinking, enlarging, mixed, output size 1
GEOMETRIES = [([1, 1, 0.5, 0.4], None), ([1, 1, 1.7, 2.3], None), ([1, 1, 0.6, 1.5], None),
              (None, [2, 3, 1, 4]), (None, [2, 3, 11, 5]), ([1, 1, 0.5, 2.5], None),
              (None, [2, 3, 14, 18]), ([1, 1, 1.25, 0.75], None)]


def _axes_geometry(x_shape, out_shape, scales, sizes, attrs, roi, coord):
    """Per resized axis: (axis, input size, scale, output size, (roi start, end))."""
    rank = len(x_shape)
    axes = [a % rank for a in attrs.get("axes", range(rank))]
    # the scales as float32 values, which is what every runtime computes with
    if scales is not None:
        per = [float(np.float32(v)) for v in scales]
    else:
        per = [float(np.float32(o) / np.float32(x_shape[a])) for a, o in zip(axes, sizes)]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            per = [(min if policy == "not_larger" else max)(per)] * len(per)
    pairs = [(0.0, 1.0)] * len(axes) if roi is None else \
        list(zip(roi[:len(axes)], roi[len(axes):]))
    return [(a, x_shape[a], sc, out_shape[a], r) for a, sc, r in zip(axes, per, pairs)
            if (x_shape[a], sc) != (out_shape[a], 1.0)
            or (coord == "tf_crop_and_resize" and tuple(r) != (0, 1))]


def _spec_source(coord, i, o, s, roi):
    """The spec's source coordinates along one axis (integer output sizes), exactly: as
    Fractions of the float32 scale and roi values the runtimes compute with."""
    s = Fraction(s)
    half = Fraction(1, 2)
    out = []
    for d in range(o):
        if coord == "half_pixel":
            x = (d + half) / s - half
        elif coord == "half_pixel_symmetric":
            x = Fraction(i, 2) * (1 - o / (s * i)) + (d + half) / s - half
        elif coord == "pytorch_half_pixel":
            x = (d + half) / s - half if o > 1 else Fraction(0)
        elif coord == "align_corners":
            x = Fraction(d * (i - 1), o - 1) if o > 1 else Fraction(0)
        elif coord == "asymmetric":
            x = d / s
        else:
            start, end = (Fraction(float(np.float32(v))) for v in roi)
            x = (start * (i - 1) + d * (end - start) * (i - 1) / (o - 1) if o > 1
                 else (start + end) / 2 * (i - 1))
        out.append(x)
    return out


def _nearest_ties(out_shape, geometry, coord, nearest_mode):
    """Outputs whose exact source coordinate lies within float32 rounding of a rounding
    boundary (x.5 for the round modes, an integer for floor and ceil, the input's ends for
    tf_crop_and_resize's extrapolation): which neighbour they read is rounding noise. One
    exactly on a boundary is kept where float arithmetic computes it exactly too (a dyadic
    scale in the plain formulas: 2x shrinking's x.5 in every runtime); half_pixel_symmetric's
    cancels (its offset), tf_crop_and_resize's roi is not dyadic."""
    mask = np.zeros(out_shape, bool)
    for axis, i, s, o, roi in geometry:
        dyadic = (s * 1024).is_integer()
        exact = {"half_pixel_symmetric": dyadic and s * i == o,
                 "tf_crop_and_resize": all((float(np.float32(v)) * 1024).is_integer()
                                           for v in roi),
                 "align_corners": True}.get(coord, dyadic)
        tie = np.zeros(o, bool)
        for k, x in enumerate(_spec_source(coord, i, o, s, roi)):
            frac = x - math.floor(x)
            dist = min(frac, 1 - frac) if nearest_mode in ("floor", "ceil") else \
                abs(frac - Fraction(1, 2))
            if coord == "tf_crop_and_resize":
                dist = min(dist, abs(x), abs(x - (i - 1)))
            tie[k] = (0 < dist or not exact) and dist < 1e-5 * max(1, abs(x))
        shape = [1] * len(out_shape)
        shape[axis] = o
        mask = mask | tie.reshape(shape)
    return mask


def _reference_agrees(coord, geometry, given_scales):
    """Whether ONNX's reference evaluator computes this case as ONNX Runtime does (module
    docstring): it puts in * scale for the output size in align_corners, tf_crop_and_resize
    and half_pixel_symmetric, and maps pytorch_half_pixel's single output to -0.5, not 0."""
    if coord in ("align_corners", "tf_crop_and_resize", "half_pixel_symmetric") and \
            given_scales and not all((i * s).is_integer() for _, i, s, _, _ in geometry):
        return False
    if coord == "pytorch_half_pixel" and any(o == 1 for _, _, _, o, _ in geometry):
        return False
    return True


def _ort_agrees(coord, attrs, geometry):
    """ONNX Runtime's antialiased filter ignores the roi of an axis whose scale is 1."""
    return not (coord == "tf_crop_and_resize" and attrs.get("antialias")
                and any(s == 1.0 for _, _, s, _, _ in geometry))   # an axis kept, cropped


def _compare(got, ref, mode, ties, what) -> bool:
    """Whether there was anything to compare (every output of a nearest resize may be a
    tie, e.g. one row out of seven, from 3.0 exactly or 2.9999998 in float32)."""
    if mode != "nearest":
        assert_close(got, ref, RTOL, what)
        return True
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    np.testing.assert_array_equal(got[~np.broadcast_to(ties, got.shape)],
                                  ref[~np.broadcast_to(ties, ref.shape)], err_msg=what)
    return not ties.all()


def _check_resize(x, scales, sizes, coord, roi=None, **attrs):
    """The engine against ONNX Runtime (where it runs the case: it takes linear and cubic on
    some ranks only) and against the reference evaluator, each where it agrees with ONNX
    Runtime's semantics; nearest outputs at a rounding tie are left out. Returns how many of
    the two were compared."""
    m = resize_model(x.shape, scales=scales, sizes=sizes, roi=roi,
                     coordinate_transformation_mode=coord, **attrs)
    got = engine_run(m, {"x": x})
    mode = attrs.get("mode", "nearest")
    geometry = _axes_geometry(x.shape, got.shape, scales, sizes, attrs, roi, coord)
    ties = (_nearest_ties(got.shape, geometry, coord,
                          attrs.get("nearest_mode", "round_prefer_floor"))
            if mode == "nearest" else None)
    checked = 0
    try:
        ref = ort_run(m, {"x": x})
    except ort.capi.onnxruntime_pybind11_state.Fail:
        ref = None
    if ref is not None and _ort_agrees(coord, attrs, geometry):
        checked += _compare(got, ref, mode, ties, "onnxruntime")
    if _reference_agrees(coord, geometry, scales is not None):
        checked += _compare(got, reference_run(m, {"x": x}), mode, ties, "reference")
    return checked


def _roi(coord, rank):
    if coord != "tf_crop_and_resize":
        return None
    # a crop reaching outside the input on the last axis: extrapolated outputs
    return [0] * (rank - 2) + [0.1, -0.2] + [1] * (rank - 2) + [0.8, 1.1]


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest_mode", NEAREST)
def test_nearest_every_mode(rng, coord, nearest_mode):
    x = randn(rng, 2, 3, 7, 9)
    checked = sum(_check_resize(x, scales, sizes, coord, _roi(coord, 4), mode="nearest",
                                nearest_mode=nearest_mode, extrapolation_value=-3.0)
                  for scales, sizes in GEOMETRIES)
    assert checked >= len(GEOMETRIES) - 1      # one row of seven can be all ties


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("mode,a,exclude", [("linear", -0.75, 0), ("cubic", -0.75, 0),
                                            ("cubic", -0.5, 1), ("cubic", -0.6, 0)])
def test_linear_cubic_every_coordinate_mode(rng, coord, mode, a, exclude):
    x = randn(rng, 2, 3, 7, 9)
    checked = sum(_check_resize(x, scales, sizes, coord, _roi(coord, 4), mode=mode,
                                cubic_coeff_a=a, exclude_outside=exclude,
                                extrapolation_value=2.5)
                  for scales, sizes in GEOMETRIES)
    assert checked >= len(GEOMETRIES) + 3


def test_linear_exclude_outside_against_the_reference(rng):
    """ONNX Runtime refuses exclude_outside=1 for linear without antialias; the reference
    takes it (and linear's taps outside the input are the clamped ones anyway)."""
    x = randn(rng, 1, 2, 6, 5)
    checked = sum(_check_resize(x, scales, sizes, coord, mode="linear", exclude_outside=1)
                  for coord in ("half_pixel", "asymmetric", "pytorch_half_pixel")
                  for scales, sizes in GEOMETRIES)
    assert checked >= 3 * len(GEOMETRIES) - 1   # pytorch_half_pixel to one row: no referee


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude", [0, 1])
def test_antialias_every_coordinate_mode(rng, coord, mode, exclude):
    x = randn(rng, 1, 2, 23, 19)
    geometries = [([1, 1, 0.3, 0.45], None), ([1, 1, 0.6, 1.7], None),
                  (None, [1, 2, 5, 19]), (None, [1, 2, 2, 1])]
    checked = sum(_check_resize(x, scales, sizes, coord, _roi(coord, 4), mode=mode,
                                antialias=1, exclude_outside=exclude)
                  for scales, sizes in geometries)
    assert checked >= len(geometries)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_axes_and_keep_aspect_ratio(rng, mode):
    x = randn(rng, 2, 5, 6, 8)
    cases = [dict(scales=[1.5, 0.5], axes=[3, 1]),
             dict(sizes=[9, 4], axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
             dict(sizes=[9, 4], axes=[3, 2], keep_aspect_ratio_policy="not_smaller"),
             dict(sizes=[3, 10, 4], axes=[3, 1, 2], keep_aspect_ratio_policy="not_larger"),
             dict(sizes=[2, 5, 9, 4], keep_aspect_ratio_policy="stretch")]
    checked = 0
    for kw in cases:
        kw = dict(kw)
        scales, sizes = kw.pop("scales", None), kw.pop("sizes", None)
        checked += _check_resize(x, scales, sizes, "half_pixel", mode=mode, **kw)
    assert checked >= len(cases)
    # negative axes (which the reference evaluator mishandles) are the same axes
    m = resize_model(x.shape, scales=[1.5, 0.5], axes=[-1, -3], mode=mode)
    same = resize_model(x.shape, scales=[1.5, 0.5], axes=[3, 1], mode=mode)
    np.testing.assert_array_equal(engine_run(m, {"x": x}), engine_run(same, {"x": x}))


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_tf_crop_and_resize_with_axes(rng, mode):
    x = randn(rng, 1, 2, 8, 6)
    for roi, axes in [([0.2, -0.3, 0.7, 1.2], [2, 3]), ([-0.3, 0.2, 1.2, 0.7], [3, 2]),
                      ([0.3, 0.3], [2])]:
        assert _check_resize(x, None, [5, 7][:len(axes)], "tf_crop_and_resize", roi,
                             mode=mode, axes=axes, extrapolation_value=9.0) >= 1


@pytest.mark.parametrize("shape,scales", [((11,), [2.5]), ((3, 10, 4), [1, 0.6, 1.5]),
                                          ((1, 2, 4, 6, 5), [1, 1, 1.5, 0.5, 2.0]),
                                          ((2, 8, 3), [0.5, 1, 1]),
                                          ((4, 7, 1), [1, 2.0, 3.0])])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_any_rank(rng, shape, scales, mode):
    x = randn(rng, *shape)
    assert _check_resize(x, scales, None, "half_pixel", mode=mode) >= 1
    assert _check_resize(x, scales, None, "asymmetric", mode=mode) >= 1
    if mode != "nearest":
        assert _check_resize(x, scales, None, "half_pixel", mode=mode, antialias=1) >= 1


@pytest.mark.parametrize("size,innermost", [((1, 2, 40, 200), ("taps", "matrix")),
                                             ((1, 2, 40, 16), ("matrix", "matrix")),
                                             ((1, 2, 9, 700), ("taps", "taps"))])
def test_long_antialias_filters(rng, size, innermost):
    """Strong shrinking: filters of up to 350 taps, on the innermost axis as one dense product
    or as gathers (engine.dispatch.resize.choose_resize_axis_path), on the outer one as
    gathers."""
    x = randn(rng, 1, 2, 120, 1400)
    for mode, path in zip(("linear", "cubic"), innermost):
        m = resize_model(x.shape, sizes=list(size), mode=mode, antialias=1)
        model = engine.load(m)
        assert_close(model.run({"x": x})["y"], ort_run(m, {"x": x}))
        text = model.explain()
        assert f"axis 3 {path}" in text and "axis 2 taps" in text, text


def test_dense_and_gather_paths_agree(rng):
    from engine.dispatch.resize import choose_resize_axis_path
    from engine.ops.resample import OnnxResize, ResizeFilter
    assert choose_resize_axis_path(100, 10, 20, True)[0] == "matrix"
    assert choose_resize_axis_path(100, 10, 20, False)[0] == "taps"
    assert choose_resize_axis_path(100000, 10, 20, True)[0] == "taps"
    assert choose_resize_axis_path(100, 200, 1, True, True)[0] == "take"
    assert choose_resize_axis_path(100, 200, 1, True, False)[0] == "taps"
    x = randn(rng, 3, 50)
    f = ResizeFilter("cubic", antialias=True)
    dense = OnnxResize(f, "half_pixel", x.shape, (3, 12), [1.0, 12 / 50], [(0.0, 1.0)] * 2)
    assert dense.paths[0][1] == "matrix"
    # the same resize along the outer axis runs as gathers
    gathers = OnnxResize(f, "half_pixel", x.T.shape, (12, 3), [12 / 50, 1.0],
                         [(0.0, 1.0)] * 2)
    assert gathers.paths[0][1] == "taps"
    a, b = np.empty((3, 12), np.float32), np.empty((12, 3), np.float32)
    dense.run(x, a)
    gathers.run(np.ascontiguousarray(x.T), b)
    np.testing.assert_allclose(a, b.T, rtol=1e-6, atol=1e-6)


def test_fast_paths_kept(rng):
    """Nearest and linear 2x on NCHW still run the interpolate kernels; antialiased shrinking
    and cubic do not; antialias does not change enlarging."""
    x = randn(rng, 1, 3, 8, 8)
    for attrs, scales, fast in [(dict(mode="nearest", coordinate_transformation_mode=
                                      "asymmetric", nearest_mode="floor"), 2, True),
                                (dict(mode="linear"), 2, True),
                                (dict(mode="linear", antialias=1), 2, True),
                                (dict(mode="linear", antialias=1), 0.5, False),
                                (dict(mode="linear"), 0.5, True),
                                (dict(mode="cubic"), 2, False)]:
        m = resize_model(x.shape, scales=[1, 1, scales, scales], **attrs)
        model = engine.load(m)
        assert ("engine interpolate" in model.explain()) == fast, (attrs, scales)
        assert_close(model.run({"x": x})["y"], ort_run(m, {"x": x}))


def test_upsample_and_resize10_still_work(rng):
    x = randn(rng, 1, 2, 4, 5)
    for opset, op in [(9, "Upsample"), (10, "Resize")]:
        for mode in ("nearest", "linear"):
            node = h.make_node(op, ["x", "s"], ["y"], mode=mode)
            g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, x.shape)],
                             [h.make_tensor_value_info("y", T.FLOAT, None)],
                             [nh.from_array(np.array([1, 1, 2, 1.5], np.float32), "s")])
            m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)
            assert_close(engine_run(m, {"x": x}), ort_run(m, {"x": x}), 0 if
                         mode == "nearest" else RTOL)


@pytest.mark.parametrize("attrs,inputs,match", [
    (dict(mode="lanczos"), {}, "mode"),
    (dict(mode="bicubic"), {}, "mode"),
    (dict(coordinate_transformation_mode="corners"), {}, "coordinate_transformation_mode"),
    (dict(nearest_mode="nearest"), {}, "nearest_mode"),
    (dict(mode="linear", antialias=2), {}, "antialias"),
    (dict(mode="nearest", antialias=1), {}, "antialias"),
    (dict(mode="cubic", exclude_outside=-1), {}, "exclude_outside"),
    (dict(mode="cubic", cubic_coeff_a=float("nan")), {}, "cubic_coeff_a"),
    (dict(keep_aspect_ratio_policy="fit"), {}, "keep_aspect_ratio_policy"),
    (dict(axes=[2, -2]), dict(scales=[2, 2]), "repeat"),
    (dict(axes=[4]), dict(scales=[2]), "axes"),
    (dict(), dict(scales=[1, 1, 2]), "scales"),
    (dict(), dict(scales=[1, 1, 2, float("nan")]), "scales"),
    (dict(), dict(sizes=[1, 3, 0, 4]), "sizes"),
    (dict(), dict(scales=[1, 1, 2, 2], sizes=[1, 3, 8, 8]), "exactly one"),
    (dict(coordinate_transformation_mode="tf_crop_and_resize"),
     dict(scales=[1, 1, 2, 2], roi=[0, 0, 1, 1]), "roi"),
    (dict(coordinate_transformation_mode="tf_crop_and_resize"),
     dict(scales=[1, 1, 2, 2]), "roi"),
    (dict(coordinate_transformation_mode="tf_crop_and_resize", axes=[2, 3]),
     dict(scales=[2, 2], roi=[0, 0, 0, 0, 1, 1, 1, 1]), "roi"),
    (dict(coordinate_transformation_mode="tf_crop_and_resize"),
     dict(scales=[1, 1, 2, 2], roi=[0, 0, 0, float("inf"), 1, 1, 1, 1]), "roi"),
    (dict(mode="cubic", extrapolation_value="x"), {}, "extrapolation_value"),
])
def test_malformed_resize(attrs, inputs, match):
    inputs = inputs or dict(scales=[1, 1, 2, 2])
    m = resize_model((1, 3, 4, 4), **inputs, **attrs)
    with pytest.raises(engine.ModelError, match=rf"'rs' \(Resize\).*{match}"):
        engine.load(m).run({"x": np.ones((1, 3, 4, 4), np.float32)})


def test_roi_ignored_outside_tf_crop_and_resize(rng):
    """roi takes effect in tf_crop_and_resize only (ONNX Runtime ignores it elsewhere too)."""
    x = randn(rng, 1, 2, 6, 5)
    m = resize_model(x.shape, scales=[1, 1, 2, 2], roi=[0, 0, 1], mode="linear")
    assert_close(engine_run(m, {"x": x}), ort_run(m, {"x": x}))


# ============================================================================ GridSample

GRID_MODES = [("linear", "bilinear"), ("nearest", "nearest"), ("cubic", "bicubic")]
PADDINGS = ["zeros", "border", "reflection"]


def _grid(rng, shape, spread):
    return rng.uniform(-spread, spread, shape).astype(np.float32)


@pytest.mark.parametrize("mode,torch_mode", GRID_MODES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d_against_torch_and_ort(rng, mode, torch_mode, padding, align):
    torch = _torch()
    x = randn(rng, 2, 3, 5, 7)
    g = _grid(rng, (2, 6, 9, 2), 1.6)   # a third of the points outside [-1, 1]
    m = grid_model(x.shape, g.shape, mode=mode, padding_mode=padding, align_corners=align)
    got = engine_run(m, {"x": x, "g": g})
    ref = torch.nn.functional.grid_sample(torch.from_numpy(x), torch.from_numpy(g),
                                          mode=torch_mode, padding_mode=padding,
                                          align_corners=bool(align)).numpy()
    rtol = 0 if mode == "nearest" else RTOL
    assert_close(got, ref, rtol, "torch")
    assert_close(got, ort_run(m, {"x": x, "g": g}), rtol, "onnxruntime")


@pytest.mark.parametrize("mode,torch_mode", GRID_MODES[:2])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_3d_against_torch_and_ort(rng, mode, torch_mode, padding, align):
    torch = _torch()
    x = randn(rng, 2, 2, 4, 5, 6)
    g = _grid(rng, (2, 3, 4, 5, 3), 1.4)
    m = grid_model(x.shape, g.shape, mode=mode, padding_mode=padding, align_corners=align)
    got = engine_run(m, {"x": x, "g": g})
    ref = torch.nn.functional.grid_sample(torch.from_numpy(x), torch.from_numpy(g),
                                          mode=torch_mode, padding_mode=padding,
                                          align_corners=bool(align)).numpy()
    rtol = 0 if mode == "nearest" else RTOL
    assert_close(got, ref, rtol, "torch")
    assert_close(got, ort_run(m, {"x": x, "g": g}), rtol, "onnxruntime")


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("spatial", [(9,), (4, 5), (3, 4, 3)])
def test_grid_sample_against_the_reference(rng, mode, padding, spatial):
    """Every rank the engine takes, cubic 3-D and 1-D included (neither PyTorch nor ONNX
    Runtime run those); cubic with border padding within [-1, 1] only (module docstring)."""
    r = len(spatial)
    x = randn(rng, 1, 2, *spatial)
    spread = 1.0 if (mode, padding) == ("cubic", "border") else 1.5
    out = {1: (7,), 2: (3, 4), 3: (2, 3, 2)}[r]
    for align in (0, 1):
        g = _grid(rng, (1, *out, r), spread)
        m = grid_model(x.shape, g.shape, mode=mode, padding_mode=padding, align_corners=align)
        assert_close(engine_run(m, {"x": x, "g": g}), reference_run(m, {"x": x, "g": g}),
                     0 if mode == "nearest" else RTOL, (align,))


@pytest.mark.parametrize("mode16,mode20", [("bilinear", "linear"), ("bicubic", "cubic"),
                                           ("nearest", "nearest")])
def test_grid_sample_opset16_names(rng, mode16, mode20):
    x = randn(rng, 1, 2, 5, 6)
    g = _grid(rng, (1, 4, 3, 2), 1.2)
    m16 = grid_model(x.shape, g.shape, opset=16, mode=mode16)
    m20 = grid_model(x.shape, g.shape, opset=20, mode=mode20)
    got = engine_run(m16, {"x": x, "g": g})
    np.testing.assert_array_equal(got, engine_run(m20, {"x": x, "g": g}))
    assert_close(got, ort_run(m16, {"x": x, "g": g}), 0 if mode20 == "nearest" else RTOL)


def test_grid_sample_defaults_and_constant_grid(rng):
    """Defaults (linear, zeros, align_corners=0); a constant grid makes its tables at load
    and gives the same result as the same grid fed at run time."""
    x = randn(rng, 2, 3, 6, 5)
    g = _grid(rng, (2, 4, 7, 2), 1.3)
    m = grid_model(x.shape, g.shape)
    got = engine_run(m, {"x": x, "g": g})
    assert_close(got, ort_run(m, {"x": x, "g": g}))
    const = engine.load(grid_model(x.shape, g.shape, grid=g, mode="linear"))
    assert "once" in const.explain()
    np.testing.assert_array_equal(const.run({"x": x})["y"], got)
    np.testing.assert_array_equal(const.run({"x": x})["y"], got)   # tables reused


def test_grid_sample_non_finite(rng):
    """A non-finite grid point gives NaN; values outside the input never reach a zeros-padded
    output (an inf pixel only spoils the points that read it)."""
    x = randn(rng, 1, 2, 8, 8)
    x[0, :, 0, 0] = np.inf
    g = np.array([[[[np.nan, 0], [0, np.inf], [0.0, 0.0], [5.0, 5.0], [1e30, -1e30],
                    [-0.999, -0.999]]]], np.float32)
    for padding in PADDINGS:
        for mode in ("linear", "nearest", "cubic"):
            m = grid_model(x.shape, g.shape, mode=mode, padding_mode=padding)
            y = engine_run(m, {"x": x, "g": g})
            assert np.isnan(y[0, :, 0, :2]).all()
            assert np.isfinite(y[0, :, 0, 2]).all()
            if padding == "zeros":
                np.testing.assert_array_equal(y[0, :, 0, 3:5], 0)
            assert np.isinf(y[0, :, 0, 5]).all() or np.isnan(y[0, :, 0, 5]).all()


def test_grid_sample_empty_output(rng):
    x = randn(rng, 2, 3, 4, 4)
    g = np.zeros((2, 0, 5, 2), np.float32)
    y = engine_run(grid_model(x.shape, g.shape), {"x": x, "g": g})
    assert y.shape == (2, 3, 0, 5)


@pytest.mark.parametrize("x_shape,g_shape,attrs,match", [
    ((1, 2, 4, 4), (1, 3, 3, 2), dict(mode="area"), "mode"),
    ((1, 2, 4, 4), (1, 3, 3, 2), dict(padding_mode="wrap"), "padding_mode"),
    ((1, 2, 4, 4), (1, 3, 3, 2), dict(align_corners=2), "align_corners"),
    ((1, 2, 4, 4), (1, 3, 3, 3), {}, "grid"),
    ((1, 2, 4, 4), (2, 3, 3, 2), {}, "grid"),
    ((1, 2, 4, 4), (1, 3, 2), {}, "grid"),
    ((1, 2, 4, 4, 4), (1, 3, 3, 2), {}, "grid"),
    ((1, 2), (1, 2), {}, "spatial"),
    ((1, 2, 2, 2, 2, 2), (1, 2, 2, 2, 2, 4), {}, "spatial"),
    ((1, 2, 0, 4), (1, 3, 3, 2), {}, "empty"),
])
def test_malformed_grid_sample(x_shape, g_shape, attrs, match):
    m = grid_model(x_shape, g_shape, **attrs)
    with pytest.raises(engine.ModelError, match=rf"'gs' \(GridSample\).*{match}"):
        engine.load(m).run({"x": np.zeros(x_shape, np.float32),
                            "g": np.zeros(g_shape, np.float32)})


def test_grid_sample_integer_grid_refused():
    node = h.make_node("GridSample", ["x", "g"], ["y"], name="gs")
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, (1, 1, 3, 3)),
                                   h.make_tensor_value_info("g", T.INT64, (1, 2, 2, 2))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 20)], ir_version=9)
    with pytest.raises(engine.ModelError, match="GridSample"):
        engine.load(m).run({"x": np.zeros((1, 1, 3, 3), np.float32),
                            "g": np.zeros((1, 2, 2, 2), np.int64)})

