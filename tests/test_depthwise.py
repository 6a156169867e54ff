"""The depthwise convolution (engine/ops/depthwise.py, kernels/conv_depthwise.pyx and
conv_depthwise_cb.pyx) against the float64 reference tests/reference.conv2d_ref, torch, and
itself across thread counts.

Tolerance: each output is a sum of at most kh*kw <= 25 float32 products plus the bias, so its
rounding error is below ~30 eps32 (eps32 = 6e-8) of the sum of the magnitudes of its terms,
sum |w| * |x| + |b|. The tests allow 1e-5 of that sum (about 5x the bound) plus 1e-6: a single
wrong or missing tap is an error of the size of a whole term, far above it.
"""
import itertools

import numpy as np
import pytest

import engine
from engine._kernels import conv_depthwise, conv_depthwise_cb
from engine._threads import resolve_threads
from engine.dispatch import why_not_depthwise_kernel
from engine.ops import depthwise as depthwise_mod
from engine.ops.depthwise import Depthwise
from engine.ops.workspace import workspace
from engine.ops.activation import NO_ACT
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


def check_layer(rng, n, c, mult, size, k, s, padding, d, bias, activation, threads=None,
                blocks=None, kernel=None):
    """Run one forced depthwise layer and compare with the reference; returns the output.
    kernel: the depthwise kernel to force where it can run the layer (the plan's
    depthwise_kernel; elsewhere, and for None, the dispatcher chooses); blocks: whether the
    layer must run in channel blocks (None: any kernel)."""
    x = rng.uniform(-1, 1, (n, c) + size).astype(np.float32)
    w = rng.uniform(-1, 1, (c * mult, 1, k, k)).astype(np.float32)
    b = rng.uniform(-1, 1, c * mult).astype(np.float32) if bias else None
    layer = engine.Conv2d(w, b, s, padding, d, groups=c, activation=activation,
                          algorithm="depthwise", num_threads=threads)
    assert layer.algorithm == "depthwise"
    impl = layer._impl
    if kernel is not None and why_not_depthwise_kernel(kernel, layer.params) is None:
        impl = Depthwise(layer, kernel=kernel)
    g = layer.geometry(x.shape)
    if blocks is not None:
        assert (impl.kernel_choice(g)[0] == "blocks") == blocks
    if impl is layer._impl:
        y = layer(x)
    else:   # the forced plan, on all the threads asked for (no work threshold in front)
        y = np.full(layer.output_shape(x.shape), np.nan, np.float32)
        impl.run(x, y, g, resolve_threads(threads))
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
def test_fast_paths_3x3(rng, threads, kernel_path, s, size):
    for i, padding in enumerate(PADDINGS + (2, 4)):
        hw = (size, size + i % 3)    # non-square, odd and even widths (the s2 de-interleave)
        if not _fits(hw, 3, 1, _pads_ref(padding, hw, 3, s, 1)):
            continue
        check_layer(rng, n=1 + 2 * (i % 2), c=16 if size < 53 else 8, mult=1 + i % 2, size=hw,
                    k=3, s=s, padding=padding, d=1, bias=i % 3 != 0,
                    activation=(None, "relu", "relu6")[i % 3], kernel=kernel_path)


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


# -- the two kernels for 3x3 layers: channel blocks on small planes, planes otherwise ------------
@pytest.fixture(params=["planes", "blocks", "rows"])
def kernel_path(request):
    """The kernel to force every 3x3 layer through where it applies: channel blocks (a
    multiple of the block's channels, multiplier 1), rows (stride 1 or 2, dilation 1, multiplier 1),
    planes."""
    return request.param


SMALL_PADDINGS = (0, 1, 2, (0, 1, 2, 0), (2, 0, 1, 2))   # the last two: top, left, bottom, right


@pytest.mark.parametrize("s", [1, 2])
def test_small_planes_sweep(rng, kernel_path, s):
    """Every size 1..20 (square and not), strides 1 and 2, paddings 0-2 and asymmetric, with
    and without bias, no activation, relu and relu6, through the forced kernel."""
    cases = 0
    for size in range(1, 21):
        for i, padding in enumerate(SMALL_PADDINGS):
            hw = (size, max(1, size + (i % 3) - 1))
            if not _fits(hw, 3, 1, _pads_ref(padding, hw, 3, s, 1)):
                continue
            check_layer(rng, n=1 + (size + i) % 2, c=32 if (size + i) % 4 == 0 else 16, mult=1,
                        size=hw, k=3, s=s, padding=padding, d=1, bias=i % 2 == 0,
                        activation=(None, "relu", "relu6")[(size + i) % 3],
                        blocks=kernel_path == "blocks", kernel=kernel_path)
            cases += 1
    assert cases >= 80


def test_channel_blocks_dilation_and_mixed_strides(rng):
    """The channel blocks take any stride and dilation of a 3x3 kernel."""
    for (sh, sw), (dh, dw), pads, size in [((1, 2), (1, 1), (1, 1, 1, 1), (9, 12)),
                                             ((2, 1), (2, 3), (2, 3, 2, 3), (13, 10)),
                                             ((3, 3), (1, 2), (0, 2, 1, 0), (17, 19)),
                                             ((1, 1), (2, 2), (2, 2, 2, 2), (6, 7))]:
        x = rng.uniform(-1, 1, (2, 16) + size).astype(np.float32)
        w = rng.uniform(-1, 1, (16, 1, 3, 3)).astype(np.float32)
        b = rng.uniform(-1, 1, 16).astype(np.float32)
        layer = engine.Conv2d(w, b, (sh, sw), pads, (dh, dw), groups=16, activation="relu6",
                              algorithm="depthwise")
        assert layer._impl.kernel_choice(layer.geometry(x.shape))[0] == "blocks"
        ref = conv2d_ref(x, w, b, (sh, sw), ((pads[0], pads[2]), (pads[1], pads[3])), (dh, dw),
                         groups=16)
        np.testing.assert_allclose(layer(x), np.clip(ref, 0, 6), rtol=0, atol=1e-5)


def test_channel_blocks_any_kernel(rng):
    """Kernels other than 3x3 in channel blocks (four outputs a step, then two, then one):
    1x1 to 7x7 and rectangular kernels, strides 1-3, dilations, symmetric and asymmetric
    padding, output widths 1-13 (every tail), against the float64 reference, per element."""
    block = conv_depthwise_cb.CHANNEL_BLOCK
    cases = 0
    for i, ((kh, kw), (sh, sw), (dh, dw), pads, size) in enumerate([
            ((5, 5), (1, 1), (1, 1), (2, 2, 2, 2), (7, 7)),
            ((5, 5), (2, 2), (1, 1), (2, 2, 2, 2), (14, 13)),
            ((7, 7), (1, 1), (1, 1), (3, 3, 3, 3), (9, 11)),
            ((7, 7), (2, 2), (1, 1), (3, 3, 3, 3), (12, 12)),
            ((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (5, 6)),
            ((2, 2), (1, 1), (1, 1), (0, 1, 1, 0), (6, 5)),
            ((3, 5), (1, 2), (2, 1), (1, 0, 2, 3), (10, 13)),
            ((5, 1), (3, 1), (1, 2), (0, 2, 1, 0), (11, 4)),
            ((5, 5), (1, 1), (2, 2), (4, 4, 4, 4), (8, 8)),
            ((4, 4), (3, 3), (1, 1), (0, 3, 2, 1), (13, 16)),
            ((5, 5), (1, 1), (1, 1), (0, 0, 0, 0), (5, 5)),
            ((7, 7), (1, 1), (1, 1), (3, 3, 3, 3), (1, 3))]):
        c = block * (1 + i % 3)
        x = rng.uniform(-1, 1, (1 + i % 2, c) + size).astype(np.float32)
        w = rng.uniform(-1, 1, (c, 1, kh, kw)).astype(np.float32)
        b = rng.uniform(-1, 1, c).astype(np.float32) if i % 2 else None
        act = (None, "relu", "relu6")[i % 3]
        layer = engine.Conv2d(w, b, (sh, sw), pads, (dh, dw), groups=c, activation=act,
                              algorithm="depthwise")
        impl = Depthwise(layer, kernel="blocks")
        g = layer.geometry(x.shape)
        ref = _act_ref(conv2d_ref(x, w, b, (sh, sw), ((pads[0], pads[2]), (pads[1], pads[3])),
                                  (dh, dw), groups=c), act)
        scale = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), (sh, sw),
                           ((pads[0], pads[2]), (pads[1], pads[3])), (dh, dw), groups=c)
        ys = []
        for threads in (1, 2):
            y = np.full(ref.shape, np.nan, np.float32)
            impl.run(x, y, g, threads)
            ys.append(y)
        bad = np.abs(ys[0] - ref) > RTOL * scale + ATOL
        assert not bad.any(), (kh, kw, sh, sw, dh, dw, pads, size, np.argwhere(bad)[0])
        np.testing.assert_array_equal(ys[0], ys[1])
        cases += 1
    assert cases == 12


def test_which_kernel(rng):
    """The shape rule of engine/dispatch/depthwise.py: channel blocks for multiplier 1, a
    multiple of the block's channels (16, or 8 on AVX2 builds) and a small input plane (smaller
    still for kernels other than 3x3 at stride 1); rows for 3x3 stride 1 or 2,
    multiplier 1, on wide outputs; planes for the rest. A plan states its choice with a
    reason, and a forced kernel that cannot run the layer is refused."""
    def kernel(c, mult, k, size, s=1):
        layer = engine.Conv2d(rng.standard_normal((c * mult, 1, k, k), dtype=np.float32),
                              stride=s, padding=k // 2, groups=c, algorithm="depthwise")
        kind, reason = layer._impl.kernel_choice(layer.geometry((1, c) + size))
        assert reason
        return kind
    assert kernel(16, 1, 3, (14, 14)) == "blocks"
    assert kernel(960, 1, 3, (7, 7)) == "blocks"
    assert kernel(32, 1, 3, (24, 24)) == "blocks"
    assert kernel(32, 1, 3, (25, 24)) != "blocks"
    assert kernel(192, 1, 3, (28, 28)) != "blocks"
    assert kernel(576, 1, 3, (14, 14), s=2) == "blocks"
    assert kernel(32, 1, 3, (12, 48), s=2) == "blocks"
    assert kernel(192, 1, 3, (28, 28), s=2) != "blocks"
    cb = conv_depthwise_cb.CHANNEL_BLOCK                 # 16 with AVX-512, 8 with AVX2
    assert kernel(cb + 8 if cb == 16 else 12, 1, 3, (7, 7)) != "blocks"   # not a multiple
    assert kernel(16, 2, 3, (7, 7)) != "blocks"      # multiplier 2
    assert kernel(16, 1, 5, (7, 7)) == "blocks"      # 5x5 on a small plane
    assert kernel(16, 1, 7, (14, 14)) == "blocks"
    assert kernel(16, 1, 5, (15, 14)) == "planes"
    assert kernel(16, 1, 5, (28, 28), s=2) == "blocks"
    assert kernel(16, 1, 7, (29, 28), s=2) == "planes"
    assert kernel(32, 1, 3, (112, 112)) == "rows"
    assert kernel(96, 1, 3, (112, 112), s=2) == "rows"              # 56 wide
    assert kernel(144, 1, 3, (56, 56), s=2) == "planes"             # 28 wide
    assert kernel(192, 1, 3, (28, 28)) == "rows"                    # 28 wide, two rows a time
    assert kernel(64, 1, 3, (60, 14)) == "rows"
    assert kernel(64, 1, 3, (60, 13)) == "planes"                   # 13 wide: too narrow
    assert kernel(32, 2, 3, (112, 112)) == "planes"                 # multiplier 2
    assert kernel(32, 1, 5, (112, 112)) == "planes"                 # 5x5
    assert kernel(32, 1, 3, (112, 112), s=3) == "planes"
    assert kernel(32, 1, 3, (14, 14)) == "blocks"

    w = rng.standard_normal((32, 1, 3, 3), dtype=np.float32)
    for forced, layer in [("rows", engine.Conv2d(w, stride=3, groups=32, algorithm="depthwise")),
                          ("rows", engine.Conv2d(w, groups=16, algorithm="depthwise")),
                          ("blocks", engine.Conv2d(w[:12], groups=12, algorithm="depthwise")),
                          ("fast", engine.Conv2d(w, groups=32, algorithm="depthwise"))]:
        with pytest.raises(ValueError, match=f"depthwise kernel '{forced}' cannot run"):
            Depthwise(layer, kernel=forced)
    layer = engine.Conv2d(w, padding=1, groups=32, algorithm="depthwise")
    assert Depthwise(layer, kernel="planes").kernel_choice(layer.geometry((1, 32, 14, 14))) \
        == ("planes", "forced by the caller")


def test_which_kernel_on_8_float_builds(rng, monkeypatch):
    """Built for 8-float vectors (AVX2) the rule changes: stride 1 always on planes, stride 2
    on rows from 14-wide outputs, each with its reason; blocks as before."""
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")

    def kernel(c, size, s):
        layer = engine.Conv2d(rng.standard_normal((c, 1, 3, 3), dtype=np.float32), stride=s,
                              padding=1, groups=c, algorithm="depthwise")
        return layer._impl.kernel_choice(layer.geometry((1, c) + size))
    kind, reason = kernel(32, (112, 112), 1)
    assert kind == "planes" and "8-float" in reason
    assert kernel(96, (112, 112), 2)[0] == "rows"
    assert kernel(196, (28, 28), 2)[0] == "rows"          # 14 wide, not in blocks
    assert kernel(12, (26, 26), 2)[0] == "planes"         # 13 wide, 12 channels
    assert kernel(144, (56, 56), 2)[0] == "blocks"        # 8-channel blocks to 56x56 at s2
    assert kernel(144, (58, 58), 2)[0] == "rows"
    assert kernel(960, (7, 7), 1)[0] == "blocks"


@pytest.mark.parametrize("kernel", ["planes", "rows"])
@pytest.mark.parametrize("s", [1, 2])
def test_plane_rows_of_every_copy_width(rng, s, kernel):
    """Rows of 1 to 200 floats: every branch of the short-row copies (below 4, 4-7, 8-15,
    16-31, 32-63, 64-127 and the loop from 128 on), for staging and for the output rows, and
    the row kernel on the same widths."""
    for i, width in enumerate((1, 2, 3, 5, 7, 9, 15, 17, 31, 33, 63, 65, 127, 129, 200)):
        check_layer(rng, n=1, c=16, mult=1, size=(3 + i % 3, width), k=3, s=s,
                    padding=(1, 1, i % 2, 2) if width > 2 else 1, d=1, bias=True,
                    activation=("relu6", None)[i % 2], blocks=False, kernel=kernel)


def _relu6_layer_at_thread_counts(rng, shape, s, kernel):
    """A 3x3 depthwise relu6 layer with bias on a random input of ``shape``, run by the
    expected ``kernel`` at 1, 2 and 3 threads: (x, w, b, output), the outputs checked equal."""
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    layer = engine.Conv2d(w, b, s, 1, groups=c, activation="relu6", algorithm="depthwise")
    g = layer.geometry(x.shape)
    assert layer._impl.kernel_choice(g)[0] == kernel
    outs = []
    for t in (1, 2, 3):
        out = np.full(layer.output_shape(x.shape), np.nan, np.float32)
        layer._impl.run(x, out, g, t)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    return x, w, b, outs[0]


@pytest.mark.parametrize("s", [1, 2])
def test_channel_blocks_threads_bit_identical(rng, s):
    y = _relu6_layer_at_thread_counts(rng, (2, 64, 14, 13), s, "blocks")[3]
    assert np.isfinite(y).all()


@pytest.mark.parametrize("s, size", [(1, (57, 56)), (1, (56, 30)), (2, (112, 113))])
def test_rows_threads_bit_identical(rng, s, size):
    """The row kernel (two output rows at a time at stride 1, odd and even output heights; the
    split tap rows at stride 2) on planes large enough for both threads to run: the same bits
    at 1, 2 and 3 threads, within the reference's bounds."""
    x, w, b, y = _relu6_layer_at_thread_counts(rng, (1, 48) + size, s, "rows")
    ref = np.clip(conv2d_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                             (s, s), ((1, 1), (1, 1)), (1, 1), groups=48), 0, 6)
    # nine products and the bias in float32: a few ulp of the sum of their magnitudes
    mag = conv2d_ref(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                     np.abs(b).astype(np.float64), (s, s), ((1, 1), (1, 1)), (1, 1), groups=48)
    assert np.all(np.abs(y - ref) <= 1e-6 * mag + 1e-7)


def test_channel_blocks_nan_reaches_exactly_its_receptive_field(rng):
    x = rng.uniform(-1, 1, (1, 16, 9, 8)).astype(np.float32)
    x[0, 3, 4, 0] = np.nan           # left border
    x[0, 9, 8, 7] = np.inf           # bottom right corner: inf * w, never inf * 0
    w = rng.uniform(0.5, 1, (16, 1, 3, 3)).astype(np.float32)
    for s, padding in [(1, 1), (2, 1), (1, (0, 2, 1, 0))]:
        layer = engine.Conv2d(w, None, s, padding, groups=16, algorithm="depthwise")
        assert layer._impl.kernel_choice(layer.geometry(x.shape))[0] == "blocks"
        y = layer(x)
        pads = _pads_ref(padding, (9, 8), 3, s, 1)
        for bad, check in [(np.isnan(x), np.isnan), (np.isinf(x), np.isinf)]:
            hit = conv2d_ref(bad.astype(np.float64), np.ones_like(w), None, (s, s), pads,
                             (1, 1), groups=16) > 0
            assert np.array_equal(check(y), hit)


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


@pytest.mark.parametrize("s,padding", [(1, 1), (2, 2), (1, (2, 1, 2, 0))])
def test_bands_row_widths(rng, monkeypatch, s, padding):
    """One output row per band on rows of 1 to 140 floats: the padding rows re-zeroed
    between bands go through every branch of the row zeroing (and of the copies)."""
    monkeypatch.setattr(depthwise_mod, "DEPTHWISE_STAGE_BYTES", 1)
    cases = 0
    for size in [(5, 1), (6, 4), (6, 10), (5, 20), (6, 40), (7, 70), (5, 140)]:
        if _fits(size, 3, 1, _pads_ref(padding, size, 3, s, 1)):
            check_layer(rng, n=1, c=3, mult=1, size=size, k=3, s=s, padding=padding, d=1,
                        bias=True, activation=None, blocks=False)
            cases += 1
    assert cases >= 6


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
    work = workspace.take(1 << 16)
    x = np.zeros((1, 4, 8, 8), np.float32)
    out = np.zeros((1, 8, 8, 8), np.float32)
    w2d = np.zeros((8, 9), np.float32)
    with pytest.raises(ValueError, match="w2d"):
        conv_depthwise.f32_conv2d_depthwise(x, np.zeros((8, 4), np.float32), None, out, 3, 3, 1, 1, 1, 1, 1, 1,
                                            1 << 16, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="out"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, None, np.zeros((1, 6, 8, 8), np.float32), 3, 3, 1, 1, 1, 1, 1, 1,
                                            1 << 16, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="bias"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, np.zeros(7, np.float32), out, 3, 3, 1, 1,
                                            1, 1, 1, 1, 1 << 16, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="positive"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, None, out, 3, 3, 0, 1, 1, 1, 1, 1,
                                            1 << 16, NO_ACT, 1, work)
    # the channel-blocked kernel's guards
    block = conv_depthwise_cb.CHANNEL_BLOCK
    x16 = np.zeros((1, 16, 8, 8), np.float32)
    out16 = np.zeros((1, 16, 8, 8), np.float32)
    wcb = np.zeros((16 // block, 9, block), np.float32)
    cb = conv_depthwise_cb.f32_conv2d_depthwise_cb
    with pytest.raises(ValueError, match=f"multiple of {block}"):
        cb(np.zeros((1, 4, 8, 8), np.float32), wcb, None, np.zeros((1, 4, 8, 8), np.float32),
           3, 3, 1, 1, 1, 1, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="wcb"):
        cb(x16, np.zeros((1, 9, 4), np.float32), None, out16, 3, 3, 1, 1, 1, 1, 1, 1, NO_ACT, 1,
           work)
    with pytest.raises(ValueError, match="out"):
        cb(x16, wcb, None, np.zeros((1, 32, 8, 8), np.float32), 3, 3, 1, 1, 1, 1, 1, 1, NO_ACT,
           1, work)
    with pytest.raises(ValueError, match="bias"):
        cb(x16, wcb, np.zeros(15, np.float32), out16, 3, 3, 1, 1, 1, 1, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="positive"):
        cb(x16, wcb, None, out16, 3, 3, 0, 1, 1, 1, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="positive"):
        cb(x16, wcb, None, out16, 3, 0, 1, 1, 1, 1, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="wcb"):
        cb(x16, wcb, None, out16, 5, 5, 1, 1, 1, 1, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="non-negative"):
        cb(x16, wcb, None, out16, 3, 3, 1, 1, -1, 1, 1, 1, NO_ACT, 1, work)
    # the row kernel's guards, and every kernel's check of its scratch buffer
    rows = conv_depthwise.f32_conv2d_depthwise_rows
    with pytest.raises(ValueError, match="stride"):
        rows(x16, np.zeros((16, 9), np.float32), None, out16, 3, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="w2d"):
        rows(x16, np.zeros((16, 4), np.float32), None, out16, 1, 1, 1, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="work"):
        rows(x16, np.zeros((16, 9), np.float32), None, out16, 1, 1, 1, NO_ACT, 1, work[:8])
    with pytest.raises(ValueError, match="64-byte"):
        rows(x16, np.zeros((16, 9), np.float32), None, out16, 1, 1, 1, NO_ACT, 1, work[1:])
    with pytest.raises(ValueError, match="work"):
        cb(x16, wcb, None, out16, 3, 3, 1, 1, 1, 1, 1, 1, NO_ACT, 1, work[:8])
    with pytest.raises(ValueError, match="work"):
        conv_depthwise.f32_conv2d_depthwise(x, w2d, None, out, 3, 3, 1, 1, 1, 1, 1, 1,
                                            1 << 16, NO_ACT, 1, work[:8])
    workspace.give(work)


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


@pytest.mark.parametrize("c", [48, 96])
def test_channel_blocks_without_bias(rng, threads, c):
    """Every channel block past the first read its bias from beyond a 16-float stack array when
    the layer had none (found by AddressSanitizer): many blocks, no bias, against the reference."""
    check_layer(rng, n=2, c=c, mult=1, size=(7, 7), k=3, s=1, padding=1, d=1, bias=False,
                activation=None, threads=threads, blocks=True)
