"""engine.conv2d / engine.Conv2d: every algorithm against the float64 reference.

Tolerance: float32 accumulation error is bounded by a multiple of eps32 times the sum of
|w|*|x| over the taps of each output (the "magnitude" below), so the check is
    |y - ref| <= RTOL[algorithm] * conv(|x|, |w|) + 1e-6.
Direct, im2col, pointwise and depthwise sum the same products in some order: 1e-5 (~80 eps32,
covering reductions of a few hundred terms). Winograd adds the transforms' rounding, a few times
larger for F(2x2,3x3): 1e-4; F(4x4,3x3) has larger transform constants: 1e-3; F(6x6,3x3)
larger still: 2e-3. Winograd's transforms mix the outputs of a tile, so for those an output's
magnitude is the largest over the outputs that may share a tile with it (m - 1 tile steps,
dilation apart, each way).
Against PyTorch (float32 too, its magnitude computed by torch on |x|, |w|, |b|), the bound is
the algorithm's plus im2col's, for torch's own rounding.
"""
import itertools

import numpy as np
import pytest
from scipy.ndimage import maximum_filter

import engine
from engine import dispatch
from engine.dispatch.conv import vector_floats
from engine._threads import threads_for
from engine.ops.activation import NO_ACT, apply_activation, float64_activation
from reference import conv2d_ref, same_pads_ref

RTOL = {"direct": 1e-5, "im2col": 1e-5, "pointwise": 1e-5, "depthwise": 1e-5,
        "winograd_f23": 1e-4, "dilated_s2b": 1e-4, "winograd_f43": 1e-3, "winograd_f63": 2e-3,
        "separable": 1e-5,
        "fft": 1e-4, "direct_blocked": 1e-5, "live_taps": 1e-5, "blocked_bands": 1e-5,
        "blocked_dense": 1e-5, "blocked_winograd": 2e-3}
# blocked_winograd's tile is chosen per shape: the largest one's bound
TILE = {"winograd_f23": 2, "dilated_s2b": 2, "winograd_f43": 4, "winograd_f63": 6,
        "blocked_winograd": 6}


def _pads(padding, size, kernel, stride, dilation):
    if padding == "same":
        return same_pads_ref(size, kernel, stride, dilation)
    if padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, tuple) and len(padding) == 4:   # ONNX order: begins, then ends
        return ((padding[0], padding[2]), (padding[1], padding[3]))
    p = padding if isinstance(padding, tuple) else (padding, padding)
    return ((p[0], p[0]), (p[1], p[1]))


def check_against_reference(y, x, w, b, stride, pads, dilation, groups, algorithm,
                            activation=None):
    ref = conv2d_ref(x, w, b, stride, pads, dilation, groups)
    mag = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, pads,
                     dilation, groups)
    m = TILE.get(algorithm)
    if m:   # see the module docstring
        dh, dw = dilation
        mag = maximum_filter(mag, size=(1, 1, 2 * (m - 1) * dh + 1, 2 * (m - 1) * dw + 1),
                             mode="constant")
    slope, own = 1.0, 0.0
    if activation == "relu":
        ref = np.maximum(ref, 0)
    elif activation == "relu6":
        ref = np.clip(ref, 0, 6)
    elif activation is not None:
        # every activation has slopes below 1.5 (so the convolution's error grows at most that
        # much) and rounds within 4 ulp of its own (tests/test_activation_kernels)
        ref = float64_activation(activation, ref)
        slope, own = 1.5, 4 * 2.0 ** -23
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = slope * (RTOL[algorithm] * mag + 1e-6) + own * np.abs(ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{algorithm}: error {err[worst]:.3g} > bound {bound[worst]:.3g}"
                                  f" at {worst}")


def _cases():
    """A deterministic sample of the sweep: sizes 1, 5, 11, 53; kernels 1, 3, 5; strides 1-3;
    dilations 1-4; paddings 0, 1, 2, same, asymmetric; groups 1, 2, depthwise with channel
    multipliers 1 and 2; batch 1 and 3."""
    sizes = [(1, 1), (5, 5), (11, 11), (53, 53), (5, 11), (11, 53)]
    kernels = [(1, 1), (3, 3), (5, 5), (3, 1), (1, 3)]
    paddings = [0, 1, 2, "same", "valid", (1, 0, 2, 1)]
    channels = [(4, 6, 1), (4, 6, 2), (4, 4, 4), (4, 8, 4), (1, 3, 1), (9, 10, 1), (16, 16, 2)]
    full = list(itertools.product(sizes, kernels, [1, 2, 3], [1, 2, 3, 4], paddings, channels))
    rng = np.random.default_rng(0)
    picked = [full[i] for i in rng.choice(len(full), size=700, replace=False)]
    # every stride-1 3x3 combination, the shapes Winograd and its dilated form take
    picked += [c for c in full if c[1] == (3, 3) and c[2] == 1]
    out = []
    for i, (size, kernel, stride, dil, pad, (c, k, g)) in enumerate(picked):
        pads = _pads(pad, size, kernel, (stride, stride), (dil, dil))
        if any(i + sum(p) < d * (kk - 1) + 1 for i, p, kk, d in zip(size, pads, kernel, (dil, dil))):
            continue   # kernel larger than the padded input: an error case, tested below
        out.append((size, kernel, stride, dil, pad, (c, k, g), 3 if i % 4 == 0 else 1))
    return out


CASES = _cases()


def _params(size, kernel, stride, dil, pad, ckg):
    c, k, g = ckg
    pads = _pads(pad, size, kernel, (stride, stride), (dil, dil))
    return dispatch.ConvParams(c, k, kernel, (stride, stride), (dil, dil), g, pads, size)


@pytest.mark.parametrize("algorithm", engine.algorithms())
def test_sweep_against_reference(algorithm, rng):
    ran = 0
    for size, kernel, stride, dil, pad, (c, k, g), batch in CASES:
        if dispatch.why_not(algorithm, _params(size, kernel, stride, dil, pad, (c, k, g))):
            continue
        x = rng.standard_normal((batch, c) + size, dtype=np.float32)
        w = rng.standard_normal((k, c // g) + kernel, dtype=np.float32)
        b = rng.standard_normal(k, dtype=np.float32) if ran % 2 else None
        y = engine.conv2d(x, w, b, stride, pad, dil, g, algorithm=algorithm)
        pads = _pads(pad, size, kernel, (stride, stride), (dil, dil))
        check_against_reference(y, x, w, b, (stride, stride), pads, (dil, dil), g, algorithm)
        ran += 1
    assert ran >= 20, f"only {ran} sweep cases apply to {algorithm}"


FUSED_ACTIVATIONS = ["relu", "relu6", "silu", "hardswish", "gelu", "sigmoid", "tanh",
                     "gelu_tanh", "softplus", "mish", "elu(0.7)", "leaky_relu(0.1)",
                     "hardsigmoid(0.2,0.5)", "clip(-1,2)"]


@pytest.mark.parametrize("algorithm", engine.algorithms())
@pytest.mark.parametrize("activation", FUSED_ACTIVATIONS)
def test_fused_activation(algorithm, activation, rng):
    for size, kernel, stride, dil, pad, ckg, batch in CASES[::7]:
        if dispatch.why_not(algorithm, _params(size, kernel, stride, dil, pad, ckg)) is None:
            break
    else:
        pytest.skip(f"no sampled case applies to {algorithm}")
    c, k, g = ckg
    x = rng.standard_normal((batch, c) + size, dtype=np.float32) * 3
    w = rng.standard_normal((k, c // g) + kernel, dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    layer = engine.Conv2d(w, b, stride, pad, dil, g, activation=activation, algorithm=algorithm)
    y = layer(x)
    pads = _pads(pad, size, kernel, (stride, stride), (dil, dil))
    check_against_reference(y, x, w, b, (stride, stride), pads, (dil, dil), g, algorithm,
                            activation)
    # the fused output step gives what the activation gives after the plain layer: the same
    # formulas, so within 2 ulp (where a kernel's output step cannot apply it, the layer
    # applies it after the kernel: the same pass)
    plain = engine.Conv2d(w, b, stride, pad, dil, g, algorithm=algorithm)(x)
    np.testing.assert_array_max_ulp(y, apply_activation(plain, activation), maxulp=2)


@pytest.mark.parametrize("algorithm", engine.algorithms())
@pytest.mark.parametrize("activation", FUSED_ACTIVATIONS[2:])
def test_fused_activation_on_extreme_outputs(algorithm, activation, rng):
    # outputs near +-1e30, +-100 (exp's overflow and underflow), NaN and +-Inf from the input:
    # the fused step agrees with the activation applied after the plain layer, NaN for NaN,
    # and 1 and 2 threads give the same bits
    x = rng.standard_normal((1, 16, 40, 40), dtype=np.float32)
    x[0, :, 3, 5] = np.nan
    x[0, :, 20, 7] = np.inf
    x[0, :, 30, 30] = -np.inf
    x[0, :4, 10:14, 10:30] *= 1e29
    x[0, 4:8, 25:29] *= 60
    for k, kernel, dil, ckg in [(24, 3, 1, (16, 24, 1)), (16, 3, 1, (16, 16, 16)),
                                (24, 1, 1, (16, 24, 1)), (24, 3, 2, (16, 24, 1))]:
        pad = dil * (kernel // 2)
        if dispatch.why_not(algorithm, _params((40, 40), (kernel,) * 2, 1, dil, pad, ckg)) is None:
            break
    else:
        pytest.skip(f"{algorithm} runs no sample layer")
    w = rng.standard_normal((k, 16 // ckg[2], kernel, kernel), dtype=np.float32)
    kw = dict(padding=pad, dilation=dil, groups=ckg[2])
    layer = engine.Conv2d(w, None, activation=activation, algorithm=algorithm, **kw)
    plain = engine.Conv2d(w, None, algorithm=algorithm, **kw)
    y = run_at_one_and_two_threads(layer, x, layer.geometry(x.shape))
    want = apply_activation(plain(x), activation)
    assert np.array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_max_ulp(np.nan_to_num(y), np.nan_to_num(want), maxulp=2)


def run_at_one_and_two_threads(layer, x, g):
    """The layer's output at one thread, after checking that two give the same bits."""
    ys = []
    for threads in (1, 2):
        y = np.empty(layer.output_shape(x.shape), np.float32)
        layer.run(x, y, g, threads)
        ys.append(y)
    np.testing.assert_array_equal(ys[0], ys[1])
    return ys[0]


# Layers big enough that the kernels really use two threads (threads_for checks the work).
THREAD_LAYERS = [
    ((2, 16, 40, 40), (16, 16, 3, 3), dict(padding=1)),
    ((1, 16, 40, 36), (32, 8, 3, 3), dict(padding=2, dilation=2, groups=2)),
    ((1, 16, 41, 41), (24, 16, 3, 3), dict(padding=1, stride=2)),
    ((1, 32, 40, 40), (48, 32, 1, 1), {}),
    ((1, 32, 40, 40), (64, 1, 3, 3), dict(padding=1, groups=32)),
    ((1, 16, 40, 40), (16, 16, 5, 5), dict(padding="same", dilation=3)),
]


@pytest.mark.parametrize("algorithm", engine.algorithms())
def test_one_and_two_threads_bit_identical(algorithm, rng):
    ran = 0
    for xs, ws, kw in THREAD_LAYERS:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        try:
            layer = engine.Conv2d(w, b, algorithm=algorithm, **kw)
        except ValueError:
            continue   # this algorithm cannot run this layer
        assert threads_for(layer.geometry(xs).macs, 2) == 2, "layer too small to use 2 threads"
        old = engine.get_num_threads()
        try:
            engine.set_num_threads(1)
            y1 = layer(x)
            engine.set_num_threads(2)
            y2 = layer(x)
        finally:
            engine.set_num_threads(old)
        assert np.array_equal(y1, y2), f"{algorithm} differs between 1 and 2 threads on {ws} {kw}"
        ran += 1
    assert ran >= 1


@pytest.mark.parametrize("shape", [
    (1, 4, 1, 1, 3),        # one pixel, fewer output channels than a row block
    (2, 13, 7, 7, 21),      # partial vectors, partial panels and a partial row block
    (1, 64, 56, 56, 136),   # several panel groups and channel chunks: two threads share it
    (1, 512, 14, 14, 64),
    (2, 40, 5, 5, 100),     # more output channels than pixels: the threads share the weights
])
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_pointwise_residual_in_output_step(shape, activation, rng):
    # act(conv(x) + b + r), the residual added by the kernel before the activation
    n, c, h, w_, k = shape
    x = rng.standard_normal((n, c, h, w_), dtype=np.float32)
    w = rng.standard_normal((k, c, 1, 1), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    r = rng.standard_normal((n, k, h, w_), dtype=np.float32) * 4
    layer = engine.Conv2d(w, b, activation=activation, algorithm="pointwise")
    assert layer.fuses_residual
    g = layer.geometry(x.shape)
    outs = []
    for threads in (1, 2):
        y = np.full((n, k, h, w_), np.nan, np.float32)
        layer.run(x, y, g, threads, residual=r)
        outs.append(y)
    assert np.array_equal(outs[0], outs[1])
    ref = conv2d_ref(x, w, b, (1, 1), ((0, 0), (0, 0)), (1, 1), 1) + r
    ref = {None: ref, "relu": np.maximum(ref, 0), "relu6": np.clip(ref, 0, 6)}[activation]
    mag = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    assert np.all(np.abs(outs[0] - ref) <= RTOL["pointwise"] * (mag + np.abs(r)) + 1e-6)


@pytest.mark.parametrize("n,c,k", [(1, 960, 128), (3, 2048, 256), (2, 5, 3), (1, 1, 40)])
@pytest.mark.parametrize("activation", [None, "relu", "hardsigmoid", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_on_one_pixel_is_a_product_by_the_transposed_weights(n, c, k, activation, bias,
                                                                       rng):
    # on a 1x1 map each image's pixel times the transposed weights (the packed GEMM by rows):
    # against float64 per element, 1 vs 2 threads bit-identical; two groups and a residual
    # keep the GEMM on panels of pixels, with the same values within the bound
    x = rng.standard_normal((n, c, 1, 1), dtype=np.float32)
    w = rng.standard_normal((k, c, 1, 1), dtype=np.float32) / np.float32(np.sqrt(c))
    b = rng.standard_normal(k, dtype=np.float32) if bias else None
    layer = engine.Conv2d(w, b, activation=activation, algorithm="pointwise")
    g = layer.geometry(x.shape)
    outs = []
    for threads in (1, 2):
        y = np.full((n, k, 1, 1), np.nan, np.float32)
        layer.run(x, y, g, threads)
        outs.append(y)
    assert np.array_equal(outs[0], outs[1])
    assert layer._impl._by_rows is not None
    pre = conv2d_ref(x, w, b, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    mag = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), (1, 1),
                     ((0, 0), (0, 0)), (1, 1), 1)
    ref = float64_activation(activation, pre)
    # the activations' slopes are at most 1: the product's error passes through unscaled
    assert np.all(np.abs(outs[0] - ref) <= RTOL["pointwise"] * mag + 1e-6)
    panels = np.empty_like(outs[0])
    layer._impl.run_panels(x, panels, 1)
    assert np.all(np.abs(panels - ref) <= RTOL["pointwise"] * mag + 1e-6)
    if c % 2 == 0 and k % 2 == 0:
        grouped = engine.Conv2d(w[:, : c // 2], b, groups=2, activation=activation,
                                algorithm="pointwise")
        ref2 = float64_activation(activation, conv2d_ref(x, w[:, : c // 2], b, (1, 1),
                                                         ((0, 0), (0, 0)), (1, 1), 2))
        assert np.allclose(grouped(x), ref2, rtol=1e-4, atol=1e-5)
        assert grouped._impl._by_rows is None


def test_pointwise_residual_of_another_shape_is_refused(rng):
    layer = engine.Conv2d(rng.standard_normal((8, 4, 1, 1), dtype=np.float32),
                          algorithm="pointwise")
    x = rng.standard_normal((1, 4, 5, 5), dtype=np.float32)
    y = np.empty((1, 8, 5, 5), np.float32)
    with pytest.raises(ValueError):
        layer.run(x, y, layer.geometry(x.shape), 1, residual=np.zeros((1, 8, 5, 4), np.float32))
    # the kernel itself checks before it runs without the GIL
    from engine._kernels import conv_pointwise
    with pytest.raises(ValueError, match="residual"):
        conv_pointwise.f32_conv2d_pointwise(
            x.reshape(1, 4, 25), layer._impl.wpack, None, np.zeros((1, 8, 24), np.float32),
            y.reshape(1, 8, 25), np.zeros(4096, np.float32), 1, False, 1, NO_ACT, 1)
    raw = np.zeros(4096 + 32, np.float32)
    start = (-raw.ctypes.data % 64) // 4 + 1                 # 4 bytes past a 64-byte boundary
    with pytest.raises(ValueError, match="64-byte"):
        conv_pointwise.f32_conv2d_pointwise(
            x.reshape(1, 4, 25), layer._impl.wpack, None, None, y.reshape(1, 8, 25),
            raw[start:start + 4096], 1, False, 1, NO_ACT, 1)


def test_auto_matches_reference_and_explains(rng):
    x = rng.standard_normal((1, 16, 20, 20), dtype=np.float32)
    for ws, kw in [((16, 16, 3, 3), dict(padding=1)), ((32, 16, 1, 1), {}),
                   ((16, 1, 3, 3), dict(padding=1, groups=16)),
                   ((16, 16, 3, 3), dict(padding=2, dilation=2)),
                   ((8, 16, 3, 3), dict(stride=2))]:
        w = rng.standard_normal(ws, dtype=np.float32)
        layer = engine.Conv2d(w, input_size=(20, 20), **kw)
        y = layer(x)
        pads = _pads(kw.get("padding", 0), (20, 20), ws[2:], (kw.get("stride", 1),) * 2,
                     (kw.get("dilation", 1),) * 2)
        check_against_reference(y, x, w, None, (kw.get("stride", 1),) * 2, pads,
                                (kw.get("dilation", 1),) * 2, kw.get("groups", 1),
                                layer.algorithm)
        text = layer.explain()
        assert layer.algorithm in repr(layer) and layer.reason in text
        assert f"* {layer.algorithm}" in text


@pytest.mark.parametrize("algorithm", ["blocked_bands", "blocked_dense"])
def test_blocked_strided_layers_with_a_dilation_past_the_map(algorithm, rng):
    """A rate of 4096 rows on a 9-row map: a band buffers the map's rows at most, and the
    padded copy (8201 rows, 23 MB) is skipped past DENSE_PADDED_MAX_BYTES for checked taps;
    the values are the reference's."""
    p = dispatch.ConvParams(20, 24, (3, 3), (2, 2), (1 << 12, 1), 1,
                            ((1 << 12, 1 << 12), (1, 1)), (9, 9))
    if dispatch.why_not(algorithm, p):
        pytest.skip(dispatch.why_not(algorithm, p))
    x = rng.standard_normal((2, 20, 9, 9), dtype=np.float32)
    w = rng.standard_normal((24, 20, 3, 3), dtype=np.float32)
    y = engine.conv2d(x, w, None, 2, (1 << 12, 1), (1 << 12, 1),
                      algorithm=algorithm)
    check_against_reference(y, x, w, None, (2, 2), ((1 << 12, 1 << 12), (1, 1)),
                            (1 << 12, 1), 1, algorithm)


@pytest.mark.parametrize("kernel,stride,dil,pad", [
    ((3, 3), 1, 1, 1), ((3, 3), 2, 1, 1), ((5, 5), 1, 2, "same"), ((1, 3), 1, 1, (0, 1, 0, 2)),
    ((3, 3), 3, 1, 0), ((1, 1), 2, 1, 0)])
def test_blocked_dense_runs_groups_of_whole_blocks(kernel, stride, dil, pad, rng):
    """blocked_dense takes groups whose channels fill whole blocks each way (16 a group: one
    or two blocks), each group on its own blocks: the reference's values, and 1 and 2 threads
    bit-identical on a layer large enough for two."""
    for size, groups, batch in [((7, 9), 2, 3), ((40, 40), 4, 1), ((1, 1), 2, 1)]:
        c = k = 16 * groups
        x = rng.standard_normal((batch, c) + size, dtype=np.float32)
        w = rng.standard_normal((k, 16) + kernel, dtype=np.float32)
        b = rng.standard_normal(k, dtype=np.float32)
        try:
            layer = engine.Conv2d(w, b, stride, pad, dil, groups, algorithm="blocked_dense")
            g = layer.geometry(x.shape)
        except ValueError as e:
            assert "larger than" in str(e) or "kernel" in str(e)
            continue
        y = run_at_one_and_two_threads(layer, x, g)
        check_against_reference(y, x, w, b, (stride, stride), g.pads, (dil, dil), groups,
                                "blocked_dense")
        if size == (40, 40):
            assert threads_for(g.macs, 2) == 2
    p = dispatch.ConvParams(24, 24, (3, 3), (1, 1), (1, 1), 2, ((1, 1), (1, 1)), (8, 8))
    assert "whole channel blocks" in dispatch.why_not("blocked_dense", p)   # 12 a group
    assert "runs one group," in dispatch.why_not("blocked_bands", p._replace(
        in_channels=32, out_channels=32))


def test_eight_float_builds_run_layers_alone_on_blocks(monkeypatch):
    """On 8-float builds the NCHW rules give a layer alone the dense blocked tiles, a layout
    change each way, wherever a graph would give it the dense blocked kernel (strided 3x3,
    3x3 of few channels, 5x5), and Winograd on blocks to 3x3 layers in groups of whole
    blocks on maps of 28x28 and more; Winograd-shaped layers keep NCHW Winograd and the
    3-channel stem direct_blocked (bench/bench_conv2d.py --algorithm)."""
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV, choose_nchw_kernels
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")

    def choose(**kw):
        base = dict(in_channels=64, out_channels=128, kernel=(3, 3), stride=(2, 2),
                    dilation=(1, 1), groups=1, pads=((1, 1), (1, 1)), in_size=(56, 56))
        base.update(kw)
        p = dispatch.ConvParams(**base)
        return dispatch.choose_conv2d(p)[0], choose_nchw_kernels(p)[0]
    assert choose() == ("blocked_dense", "im2col")
    assert choose(in_channels=16, out_channels=32, in_size=(112, 112)) == (
        "blocked_dense", "direct_blocked")
    assert choose(in_channels=32, out_channels=32, stride=(1, 1), kernel=(5, 5),
                  pads=((2, 2), (2, 2)), in_size=(28, 28))[0] == "blocked_dense"
    grouped = dict(in_channels=128, out_channels=128, stride=(1, 1), groups=8)
    assert choose(**grouped, in_size=(28, 28))[0] == "blocked_winograd"
    # alone only: in a graph the dense kernel keeps it (engine/dispatch/layout.py)
    from engine.dispatch.layout import blocked_kernel, winograd_blocked
    p28 = dispatch.ConvParams(128, 128, (3, 3), (1, 1), (1, 1), 8, ((1, 1), (1, 1)), (28, 28))
    assert winograd_blocked(p28, alone=True) and not winograd_blocked(p28)
    assert blocked_kernel(p28)[0] == "dense"
    assert choose(**grouped, in_size=(14, 14))[0] == "blocked_dense"
    assert choose(**dict(grouped, groups=32), in_size=(14, 14))[0] != "blocked_dense"  # 4 a group
    assert choose(in_channels=256, out_channels=256, stride=(1, 1))[0] == "winograd_f43"
    assert choose(in_channels=3, out_channels=64, kernel=(7, 7), pads=((3, 3), (3, 3)),
                  in_size=(224, 224))[0] == "direct_blocked"
    assert choose(kernel=(1, 1), stride=(1, 1), pads=((0, 0), (0, 0)))[0] == "pointwise"
    assert choose(in_size=None)[0] not in dispatch.conv.BLOCKED_ALGORITHMS
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "16")
    assert choose()[0] == "blocked_bands"


def test_dispatcher_rules():
    def choose(**kw):
        base = dict(in_channels=64, out_channels=64, kernel=(3, 3), stride=(1, 1),
                    dilation=(1, 1), groups=1, pads=((1, 1), (1, 1)), in_size=(56, 56))
        base.update(kw)
        return dispatch.choose_conv2d(dispatch.ConvParams(**base))[0]
    assert choose(kernel=(1, 1), pads=((0, 0), (0, 0))) == "pointwise"
    assert choose(groups=64) == "depthwise"
    # strided: the blocked tiles on 16-float builds from 16 input channels, by bands while the
    # weights take at most 1 MiB and the output is 28 wide, over the whole layer else;
    # elsewhere direct_blocked on narrow layers, im2col on wide ones
    wide = vector_floats() >= 16
    assert choose(stride=(2, 2)) == ("blocked_bands" if wide else "im2col")  # 64 in, 28 wide
    assert choose(stride=(2, 2), in_channels=32, in_size=(112, 112)) == (
        "blocked_bands" if wide else "direct_blocked")
    assert choose(stride=(2, 2), in_channels=8, in_size=(112, 112)) == "direct_blocked"
    assert choose(stride=(2, 2), in_channels=256, out_channels=512) == (
        "blocked_dense" if wide else "im2col")
    assert choose(stride=(2, 2), in_channels=128, out_channels=128) == (
        "blocked_bands" if wide else "im2col")
    if wide:
        assert choose(stride=(2, 2), in_channels=96, out_channels=96,
                      in_size=(28, 28)) == "blocked_dense"
    assert choose(kernel=(7, 7), in_channels=3) == "direct_blocked"
    assert choose(in_channels=3) == "direct_blocked"    # too few channels for Winograd
    assert choose(in_channels=3, in_size=(12, 12)) == "im2col"     # too narrow for vectors
    assert choose(in_channels=16, out_channels=16) == "direct_blocked"
    assert choose(kernel=(1, 1), stride=(2, 2), pads=((0, 0), (0, 0))) == "im2col"
    # the tile by the cost model (engine/dispatch/winograd.py): F(4x4,3x3) on ResNet's 56x56
    # and 28x28 maps, F(2x2,3x3) on 7x7 (too few 4x4 tiles for 36 GEMMs), F(6x6,3x3) on VGG's
    # 224x224 and 112x112 ones (bench/bench_winograd_tiles.py); on 14x14, F(4x4)'s 16 tiles
    # fill one vector of GEMM columns of a 16-float build, but only half a panel of 8-float one
    assert choose() == "winograd_f43"
    wide = "winograd_f43" if vector_floats() >= 16 else "winograd_f23"
    assert choose(in_channels=256, out_channels=256, in_size=(14, 14)) == wide
    assert choose(in_size=(224, 224)) == "winograd_f63"
    assert choose(in_channels=128, out_channels=128, in_size=(112, 112)) == "winograd_f63"
    assert dispatch.choose_conv2d(dispatch.ConvParams(
        64, 64, (3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)), (224, 224)),
        frozenset({"winograd_f63"}))[0] == "winograd_f43"      # the next cheapest
    assert choose(in_channels=512, out_channels=512, in_size=(7, 7)) == "winograd_f23"
    # 128->512 on 28x28: F(6x6) 4.2 ms against F(4x4)'s 4.7 on one AVX-512 core
    assert choose(in_channels=128, out_channels=512, in_size=(28, 28)) == (
        "winograd_f63" if vector_floats() >= 16 else "winograd_f43")
    # dilated: from 256 channels with phase sub-images large enough, else dilated_s2b
    assert choose(dilation=(2, 2), pads=((2, 2), (2, 2))) == "dilated_s2b"
    wide = dict(in_channels=256, out_channels=512, in_size=(28, 28))
    # 256->512 on 28x28: F(6x6) 7.4 ms against F(4x4)'s 8.0 on one AVX-512 core
    assert choose(**wide) == ("winograd_f63" if vector_floats() >= 16 else "winograd_f43")
    assert choose(dilation=(4, 4), pads=((4, 4), (4, 4)), **wide) == "winograd_f43"
    assert choose(dilation=(4, 4), pads=((4, 4), (4, 4)), in_channels=128,
                  in_size=(28, 28)) == "dilated_s2b"


def test_torch_cross_check(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 12, 17, 19), dtype=np.float32)

    def torch_conv(kw, *arrays):
        return torch.nn.functional.conv2d(*map(torch.from_numpy, arrays), **kw).numpy()

    for ws, kw in [((12, 12, 3, 3), dict(padding=1)), ((24, 4, 3, 3), dict(padding=2, dilation=2, groups=3)),
                   ((12, 1, 3, 3), dict(padding=1, groups=12, stride=2)), ((6, 12, 1, 1), {}),
                   ((8, 12, 5, 5), dict(padding="same", dilation=2)), ((8, 12, 7, 7), dict(stride=3))]:
        w = rng.standard_normal(ws, dtype=np.float32)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        ref = torch_conv(kw, x, w, b)
        mag = torch_conv(kw, np.abs(x), np.abs(w), np.abs(b)).astype(np.float64)
        y = engine.conv2d(x, w, b, **kw)
        algorithm = engine.Conv2d(w, b, **kw, input_size=x.shape[2:]).algorithm
        # per element, as check_against_reference; torch's float32 error adds im2col's bound
        err = np.abs(y.astype(np.float64) - ref)
        bound = (RTOL[algorithm] + RTOL["im2col"]) * mag + 1e-6
        assert np.all(err <= bound), (algorithm, kw, float((err / bound).max()))


def test_same_padding_with_stride_is_same_upper(rng):
    # stride 2 on an even size: total padding 1 goes to the end (SAME_UPPER), as ONNX
    x = rng.standard_normal((1, 3, 8, 8), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    y = engine.conv2d(x, w, stride=2, padding="same")
    assert y.shape == (1, 4, 4, 4)
    check_against_reference(y, x, w, None, (2, 2), ((0, 1), (0, 1)), (1, 1), 1, "im2col")


def test_noncontiguous_and_float64_input(rng):
    base = rng.standard_normal((1, 8, 30, 30))
    x = base[:, :, ::2, 1::2]                         # float64, non-contiguous view
    w = rng.standard_normal((8, 8, 3, 3))
    y = engine.conv2d(x, w, padding=1)
    assert y.dtype == np.float32
    check_against_reference(y, x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "winograd_f23")
    y64 = engine.conv2d(x, w, padding=1, algorithm="direct")   # the float64 path
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, conv2d_ref(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1)),
                               rtol=1e-12, atol=1e-12)


def test_out_buffer_is_used(rng):
    x = rng.standard_normal((1, 4, 9, 9), dtype=np.float32)
    w = rng.standard_normal((5, 4, 3, 3), dtype=np.float32)
    layer = engine.Conv2d(w, padding=1)
    out = np.full((1, 5, 9, 9), np.nan, np.float32)
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, layer(x))
    with pytest.raises(ValueError, match="out"):
        layer(x, out=np.empty((1, 5, 9, 8), np.float32))
    with pytest.raises(ValueError, match="out"):
        layer(x, out=np.empty((1, 5, 9, 9), np.float64))


@pytest.mark.parametrize("call, match", [
    (lambda x, w: engine.conv2d(x[0], w), "x must be 4-D"),
    (lambda x, w: engine.conv2d(x, w[0]), "weight must be 4-D"),
    (lambda x, w: engine.conv2d(x, w[:, :3]), "channels"),
    (lambda x, w: engine.conv2d(x, w, groups=3), "divisible by groups|channels"),
    (lambda x, w: engine.conv2d(x, w, groups=0), "groups"),
    (lambda x, w: engine.conv2d(x, w, stride=0), "stride"),
    (lambda x, w: engine.conv2d(x, w, stride=-1), "stride"),
    (lambda x, w: engine.conv2d(x, w, padding=-1), "padding"),
    (lambda x, w: engine.conv2d(x, w, padding="full"), "padding"),
    (lambda x, w: engine.conv2d(x, w, dilation=0), "dilation"),
    (lambda x, w: engine.conv2d(x, w, stride=(1, 1, 1)), "stride"),
    (lambda x, w: engine.conv2d(x[:, :, :2, :2], w), "larger than the padded input"),
    (lambda x, w: engine.conv2d(x, w, dilation=4), "larger than the padded input"),
    (lambda x, w: engine.conv2d(x, w, algorithm="magic"), "unknown algorithm"),
    (lambda x, w: engine.conv2d(x, w, stride=2, algorithm="winograd_f23"), "stride 1"),
    (lambda x, w: engine.conv2d(x, w, algorithm="pointwise"), "1x1"),
    (lambda x, w: engine.conv2d(x, w, algorithm="depthwise"), "groups"),
    (lambda x, w: engine.conv2d(x, w, bias=np.zeros(3)), "bias"),
    (lambda x, w: engine.conv2d(x.astype(np.complex64), w), "real numbers"),
    (lambda x, w: engine.conv2d(x, w, padding=1.5), "padding"),
    (lambda x, w: engine.Conv2d(w, activation="swish"), "activation"),
    (lambda x, w: engine.Conv2d(w, activation="leaky_relu(nan)"), "activation"),
])
def test_bad_input_raises_value_error(call, match, rng):
    x = rng.standard_normal((1, 4, 6, 6), dtype=np.float32)
    w = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        call(x, w)


def test_thread_setting_is_validated():
    with pytest.raises(ValueError, match="num_threads"):
        engine.set_num_threads(0)


def test_build_info():
    info = engine.build_info()
    assert info["version"] == engine.__version__
    assert isinstance(info["openmp"], bool)
    assert set(engine.algorithms()) >= {"direct", "im2col", "pointwise"}


@pytest.mark.parametrize("kdim,ow", [(192, 4096), (27, 100000), (576, 3000)])
def test_im2col_cuts_long_rows_into_an_even_number_of_bounded_pieces(kdim, ow):
    """Two threads get equal shares of a row too long for one chunk, and no chunk's column
    buffer exceeds the bound."""
    from engine.ops.conv2d_algorithms import IM2COL_CHUNK_BYTES, im2col_chunk
    rows, cols = im2col_chunk(kdim, (1, ow))
    assert rows == 1
    assert -(-ow // cols) % 2 == 0
    assert cols * kdim * 4 <= IM2COL_CHUNK_BYTES


@pytest.mark.parametrize("oh,rows", [(17, 5), (9, 2), (7, 3), (10, 10), (13, 1)])
def test_im2col_row_chunks_split_the_rows_evenly(oh, rows):
    """Whole rows in an even number of chunks of even length (17 rows of at most 5 as 4, 4, 4
    and 5): every output row is written (the output starts as NaN) and matches the float64
    reference per element, with the same bits at one and two threads."""
    from engine._kernels import conv_im2col
    from engine.ops import packed_gemm
    rng = np.random.default_rng(oh)
    c, k, h = 6, 13, oh + 2
    x = rng.standard_normal((2, c, h, 11)).astype(np.float32)
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    wpack = packed_gemm.pack_rows(w.reshape(k, -1), 1)
    want = conv2d_ref(x, w, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    got = {}
    for nt in (1, 2):
        out = np.full((2, k, oh, 9), np.nan, np.float32)
        work = np.zeros(conv_im2col.work_floats(c * 9, 9, rows * 9, nt) + 16, np.float32)
        start = (-work.ctypes.data % 64) // 4
        conv_im2col.f32_conv2d_im2col(x, wpack, None, out, 3, 3, 1, 1, 0, 0, 1, 1, 1, rows, 9,
                                      NO_ACT, nt, work[start:start + work.size - 16])
        got[nt] = out
    # each output sums 54 products of unit normals in float32
    bound = 54 * 2.0 ** -23 * np.abs(x).max() * np.abs(w).max() * 4
    assert np.all(np.abs(got[1] - want) <= bound)
    np.testing.assert_array_equal(got[1], got[2])
