"""Channel-blocked (NCHWc) kernels (kernels/nchwc.pyx) and the plan-time layout pass that runs
chains of pointwise and depthwise layers on them (engine/graph/layout.py).

References: float64 NumPy (tests/reference.py). Tolerance: max error <= 1e-5 * the largest sum
of |terms| an output adds (pointwise, depthwise), 1e-6 relative for the average pool; layout
changes are exact. 1 and 2 threads must give bit-identical results, whichever way the threads
split the work.
"""
import numpy as np
import pytest

from engine._kernels import dense, nchwc, nchwc_channels, nchwc_window, squeeze_excite
from engine.graph import Graph, Model, Node, TensorSpec
from engine.graph import blocked_conv
from engine.graph import layout
from engine.dispatch import layout as layout_rules
from engine.ops import blocked
from concurrency import run_concurrently
from reference import conv2d_ref

from engine.ops.activation import NO_ACT, apply_activation, float64_activation, kernel_act

B = blocked.BLOCK       # channels per block: 16 with AVX-512, 8 with AVX2
NAME = blocked.NAME

# the output steps' activations (engine/ops/activation.py) and their float64 forms
ACTS = {a: (lambda v, a=a: float64_activation(a, v))
        for a in (None, "relu", "relu6", "silu", "hardswish", "gelu", "sigmoid", "tanh",
                  "mish", "softplus", "elu(0.5)", "leaky_relu(0.1)", "hardsigmoid(0.2,0.5)",
                  "clip(-1,2)")}
BAD_ACT = {"code": 99, "alpha": 0.0, "beta": 0.0}


def at_zero(act):
    """What the output step gives a padding channel: act(0 + 0)."""
    return apply_activation(np.zeros(1, np.float32), act)[0]


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def check_close(got, ref, scale):
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= 1e-5 * scale, f"max error {err:.3g} > 1e-5 * {scale:.3g}"


# ---------------------------------------------------------------------------- layout changes

@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (2, 5, 3, 7), (1, 33, 1, 1), (1, 40, 17, 2)])
def test_to_and_from_blocked_are_exact_and_pad_with_zeros(rng, shape):
    x = f32(rng, *shape)
    n, c, h, w = shape
    ref = np.zeros((n, -(-c // B) * B, h, w), np.float32)
    ref[:, :c] = x
    for t in (1, 2):        # one thread runs without a parallel region, two with one
        xb = blocked.to_blocked(x, t)
        assert xb.shape == (n, -(-c // B), h, w, B)
        np.testing.assert_array_equal(xb, ref.reshape(n, -1, B, h, w).transpose(0, 1, 3, 4, 2))
        np.testing.assert_array_equal(blocked.from_blocked(xb, c, t), x)


def test_layout_changes_refuse_mismatched_shapes():
    x = np.zeros((1, 20, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out must have shape"):
        nchwc.f32_to_blocked(x, np.zeros((1, 1, 4, 4, B), np.float32), 1)
    with pytest.raises(ValueError, match="x must have shape"):
        nchwc.f32_from_blocked(np.zeros((1, 3, 4, 3, B), np.float32), x, 1)


@pytest.mark.parametrize("shape, strides", [((1, 20, 9, 7), (2, 2)), ((2, 8, 5, 6), (3, 1)),
                                            ((1, 33, 1, 4), (1, 2)), ((1, 16, 28, 28), (2, 2))])
def test_subsample_takes_every_stride_pixel(rng, shape, strides):
    xb = blocked.to_blocked(f32(rng, *shape))
    want = xb[:, :, ::strides[0], ::strides[1]]
    for t in (1, 2):
        out = np.full(want.shape, np.nan, np.float32)
        nchwc.f32_subsample_blocked(xb, out, *strides, t)
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="taken every"):
        nchwc.f32_subsample_blocked(xb, np.zeros(want.shape[:3] + (want.shape[3] + 1, B),
                                                  np.float32), *strides, 1)
    with pytest.raises(ValueError, match="strides"):
        nchwc.f32_subsample_blocked(xb, want.copy(), 0, 1, 1)


# -------------------------------------------------------------------------------- pointwise

def run_pointwise(x, w, b, residual, act, threads, group_slack=1.0):
    n, c, h, wd = x.shape
    k = w.shape[0]
    wp, bp = blocked.pack_pointwise(w, b)
    out = np.full(blocked.blocked_shape((n, k, h, wd)), np.nan, np.float32)
    r = None if residual is None else blocked.to_blocked(residual)
    nchwc.f32_pointwise_blocked(blocked.to_blocked(x), wp, bp, r, out, kernel_act(act), threads,
                                group_slack)
    return out


# (N, C, K, H, W): channel counts off the block size, every number of output blocks in the
# last group (1..4), pixel counts with every tail of a 6-pixel tile, batches; small planes with
# many output blocks make the threads split the groups, large planes the pixels
POINTWISE = [(1, 16, 16, 4, 4), (1, 3, 5, 1, 1), (2, 24, 144, 9, 7), (1, 17, 70, 5, 13),
             (1, 64, 48, 2, 5), (1, 40, 200, 1, 7), (3, 8, 33, 3, 3), (1, 100, 20, 11, 11),
             (1, 320, 96, 7, 7)]


@pytest.mark.parametrize("n,c,k,h,w", POINTWISE)
def test_pointwise_matches_reference_and_is_thread_independent(rng, n, c, k, h, w):
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, 1, 1), f32(rng, k)
    res = f32(rng, n, k, h, w)
    scale = float((np.abs(x).max(axis=1).max() * np.abs(wt).sum(axis=1).max()) + 10)
    for act in ACTS:
        for r in (None, res):
            got = run_pointwise(x, wt, b, r, act, 1)
            for slack in (1.0, 0.0, 1e9):      # either split: pixels, groups of blocks
                np.testing.assert_array_equal(got, run_pointwise(x, wt, b, r, act, 2, slack))
            # the padding channels of the output hold act(0): zero, or finite (sigmoid's 0.5)
            pad = got.reshape(n, -1, h, w, B).transpose(0, 1, 4, 2, 3).reshape(n, -1, h, w)
            assert np.all(pad[:, k:] == at_zero(act))
            ref = conv2d_ref(x, wt, b) + (0 if r is None else r)
            check_close(blocked.from_blocked(got, k), ACTS[act](ref), scale)


def test_pointwise_refuses_inconsistent_arguments(rng):
    x = blocked.to_blocked(f32(rng, 1, 20, 3, 3))
    wp, bp = blocked.pack_pointwise(f32(rng, 40, 20, 1, 1), f32(rng, 40))
    out = np.zeros((1, blocked.blocks(40), 3, 3, B), np.float32)
    with pytest.raises(ValueError, match="wpack"):
        nchwc.f32_pointwise_blocked(x, wp[:-1], bp, None, out, NO_ACT, 1)
    with pytest.raises(ValueError, match="bias"):
        nchwc.f32_pointwise_blocked(x, wp, bp[:B], None, out, NO_ACT, 1)
    with pytest.raises(ValueError, match="residual"):
        nchwc.f32_pointwise_blocked(x, wp, bp, np.zeros(out.shape[:3] + (2, B), np.float32), out,
                                    NO_ACT, 1)
    with pytest.raises(ValueError, match="out"):
        nchwc.f32_pointwise_blocked(x, wp, bp, None, np.zeros(out.shape[:3] + (4, B), np.float32),
                                    NO_ACT, 1)
    with pytest.raises(ValueError, match="channel-blocked"):
        nchwc.f32_pointwise_blocked(x, wp, bp, None,
                                    np.zeros(out.shape[:4] + (B // 2,), np.float32),
                                    NO_ACT, 1)
    for bad in (x.shape[1] * B - B, x.shape[1] * B + 1, -1):   # too few or many for x's blocks
        with pytest.raises(ValueError, match="channels"):
            nchwc.f32_pointwise_blocked(x, wp, bp, None, out, NO_ACT, 1, 1.0, bad)


def _bad_arrays(a: np.ndarray):
    """Versions of ``a`` a kernel must refuse (name, array), each with the same shape where it
    can have it: another dtype, byte order or rank, a strided view, not an array at all."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
    return [("float64", a.astype(np.float64)), ("big-endian", a.astype(">f4")),
            ("rank", a.reshape((1,) + a.shape)), ("strided", wide[..., ::2]),
            ("list", a.tolist()), ("None", None)]


def test_kernels_take_only_contiguous_native_float32_arrays(rng):
    """The blocked kernels read their arrays through NumPy's C API: every other kind of
    argument gets a ValueError naming it, an output must be writable, and a read-only input
    is read."""
    x = blocked.to_blocked(f32(rng, 1, 16, 3, 3))
    wp, bp = blocked.pack_pointwise(f32(rng, 16, 16, 1, 1), f32(rng, 16))
    out = np.zeros(x.shape, np.float32)
    args = {"x": x, "wpack": wp, "bias": bp, "out": out}

    def call(**kw):
        a = dict(args, **kw)
        nchwc.f32_pointwise_blocked(a["x"], a["wpack"], a["bias"], None, a["out"], NO_ACT, 1)

    for name in args:
        for kind, bad in _bad_arrays(args[name]):
            with pytest.raises(ValueError, match=name):
                call(**{name: bad})
    frozen = out.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        call(out=frozen)
    ro = x.copy()
    ro.flags.writeable = False
    call(x=ro)
    want = out.copy()
    call()
    np.testing.assert_array_equal(out, want)
    # the depthwise, squeeze-excite and dense-row kernels check the same way
    wd = np.ascontiguousarray(f32(rng, 2, 3, 3, B))
    for kind, bad in _bad_arrays(wd):
        with pytest.raises(ValueError, match="w"):
            nchwc_window.f32_depthwise_blocked(x, bad, bp, out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    pooled = np.zeros((1, 16), np.float32)
    for kind, bad in _bad_arrays(pooled):
        with pytest.raises(ValueError, match="pooled"):
            squeeze_excite.f32_se_gates(bad, f32(rng, 16, 4), f32(rng, 4), f32(rng, 4, 16),
                                        f32(rng, 16), NO_ACT, 0, 0.0, 0.0, pooled.copy())
    for kind, bad in _bad_arrays(pooled):
        with pytest.raises(ValueError, match="out"):
            dense.f32_dense_rows(pooled, f32(rng, 16, 16), bad, 1)


@pytest.mark.parametrize("c", [20, 24, 33, 47])
def test_pointwise_skips_the_padding_channels_it_is_told_of(rng, c):
    """With x's real channel count given, the padding lanes of its last block are never read:
    NaN there changes nothing (without it, NaN * 0 would spread), at 1 and 2 threads."""
    x = f32(rng, 2, c, 13, 11)
    w, b = f32(rng, 40, c, 1, 1), f32(rng, 40)
    wp, bp = blocked.pack_pointwise(w, b)
    xb = blocked.to_blocked(x)
    xb[:, -1, :, :, c % B or B:] = np.nan
    outs = []
    for threads in (1, 2):
        out = np.empty((2, blocked.blocks(40), 13, 11, B), np.float32)
        nchwc.f32_pointwise_blocked(xb, wp, bp, None, out, NO_ACT, threads, 1.0, c)
        outs.append(blocked.from_blocked(out, 40))
    np.testing.assert_array_equal(outs[0], outs[1])
    ref = conv2d_ref(x, w, b)
    scale = float(np.abs(x).max() * np.abs(w).sum(axis=1).max() + 10)
    check_close(outs[0], ref, scale)


# -------------------------------------------------------------------------------- depthwise

def run_depthwise(x, w, b, stride, pads, dilation, act, threads, by_blocks=False):
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    (pt, pb), (pl, pr) = pads
    oh = (h + pt + pb - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pl + pr - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    wp, bp = blocked.pack_depthwise(w, b)
    out = np.full((n, blocked.blocks(c), oh, ow, B), np.nan, np.float32)
    nchwc_window.f32_depthwise_blocked(blocked.to_blocked(x), wp, bp, out, stride[0], stride[1], pt, pl,
                                dilation[0], dilation[1], kernel_act(act), threads, by_blocks)
    return blocked.from_blocked(out, c)


# (N, C, H, W, kernel, stride, pads ((top, bottom), (left, right)), dilation)
DEPTHWISE = [
    (1, 32, 12, 12, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 40, 13, 9, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (2, 20, 7, 10, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    (1, 16, 5, 5, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    (1, 16, 1, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 17, 2, 3, (3, 3), (2, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 33, 8, 8, (3, 3), (1, 1), ((0, 1), (1, 0)), (1, 1)),
    (1, 16, 9, 11, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1)),
    (1, 24, 6, 9, (1, 3), (1, 3), ((0, 0), (1, 1)), (1, 1)),
    (1, 16, 10, 10, (3, 3), (3, 3), ((1, 1), (1, 1)), (1, 2)),
    # other kernels' unchecked columns, four pixels a time and the tail: ConvNeXt's 7x7,
    # MobileNetV3's 5x5, dilated, 7x1, strided 5x3
    (1, 20, 11, 23, (7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1)),
    (1, 18, 9, 17, (5, 5), (1, 1), ((4, 4), (4, 4)), (2, 2)),
    (1, 16, 12, 6, (7, 1), (1, 1), ((3, 3), (0, 0)), (1, 1)),
    (2, 32, 10, 19, (5, 3), (2, 2), ((2, 1), (1, 0)), (1, 1)),
    (1, 16, 70, 9, (66, 1), (1, 1), ((1, 1), (0, 0)), (1, 1)),    # past the row tables: checked
    # 5x5 stride 1: eight columns a time, masked where they leave the plane (MobileNetV3's and
    # EfficientNet's 7x7 and 14x14 maps, a map narrower than the kernel, a 12-column group
    # ending on the edge, a wide row of whole groups and a tail, asymmetric and deep pads)
    (1, 40, 7, 7, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    (2, 24, 14, 14, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    (1, 16, 3, 2, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    (1, 17, 5, 12, (5, 5), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    (1, 16, 6, 37, (5, 5), (1, 1), ((1, 3), (3, 1)), (1, 1)),
    (1, 20, 4, 9, (5, 5), (1, 1), ((4, 4), (4, 4)), (1, 1)),
    # the planes above fit the zero-bordered buffer (ce_nc_dw_plane, 16 rows or fewer); these
    # do not (too large, stride 3, more than 16 kernel rows) and run row by row, the edge
    # columns of kernels wider than 3 four at a time with checked taps; and a strided, dilated,
    # asymmetric one that does
    (1, 16, 50, 45, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    (1, 20, 60, 37, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 16, 61, 58, (7, 7), (2, 2), ((3, 2), (3, 2)), (1, 1)),
    (1, 16, 13, 14, (5, 5), (3, 3), ((2, 2), (2, 2)), (1, 1)),
    (1, 16, 20, 8, (17, 3), (1, 1), ((8, 8), (1, 1)), (1, 1)),
    (1, 20, 12, 11, (3, 3), (2, 2), ((1, 2), (2, 1)), (2, 2)),
]


@pytest.mark.parametrize("n,c,h,w,kernel,stride,pads,dilation", DEPTHWISE)
def test_depthwise_matches_reference_and_is_thread_independent(rng, n, c, h, w, kernel, stride,
                                                               pads, dilation):
    x, wt, b = f32(rng, n, c, h, w), f32(rng, c, 1, *kernel), f32(rng, c)
    ref = conv2d_ref(x, wt, b, stride, pads, dilation, groups=c)
    scale = float(np.abs(x).max() * np.abs(wt).sum(axis=(1, 2, 3)).max() + np.abs(b).max())
    for act in (None, "relu6", "silu", "hardswish", "gelu", "tanh", "leaky_relu(0.1)"):
        got = run_depthwise(x, wt, b, stride, pads, dilation, act, 1)
        for threads, by_blocks in ((2, False), (2, True), (1, True)):   # either work order
            np.testing.assert_array_equal(
                got, run_depthwise(x, wt, b, stride, pads, dilation, act, threads, by_blocks))
        check_close(got, ACTS[act](ref), scale)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_depthwise_skips_padding_taps_of_an_infinite_weight(rng, k):
    """A tap in the padding is skipped, not multiplied by zero: an infinite weight makes NaN or
    inf only where its tap reads the input; elsewhere the output is what it is with that
    weight at zero (per element, within float32 rounding: a plane whose weights are all finite
    may take another path, which sums in another order)."""
    c, h, p = 20, 9, k // 2
    x, wt, b = f32(rng, 1, c, h, h), f32(rng, c, 1, k, k), f32(rng, c)
    inf = wt.copy()
    inf[:, 0, 0, 0] = np.inf
    zero = wt.copy()
    zero[:, 0, 0, 0] = 0
    pads = ((p, p), (p, p))
    got = run_depthwise(x, inf, b, (1, 1), pads, (1, 1), None, 1)
    want = conv2d_ref(x, zero, b, (1, 1), pads, (1, 1), groups=c)
    padded = np.zeros((h, h), bool)      # outputs whose tap (0, 0) reads padding
    padded[:p, :] = padded[:, :p] = True
    magnitude = conv2d_ref(np.abs(x), np.abs(zero), np.abs(b), (1, 1), pads, (1, 1), groups=c)
    err = np.abs(got[:, :, padded] - want[:, :, padded])
    assert np.all(err <= 1e-6 * magnitude[:, :, padded]), f"max error {np.nanmax(err):.3g}"
    assert not np.isfinite(got[:, :, ~padded]).any()


def test_depthwise_refuses_inconsistent_arguments(rng):
    x = blocked.to_blocked(f32(rng, 1, 20, 6, 6))
    wp, bp = blocked.pack_depthwise(f32(rng, 20, 1, 3, 3), f32(rng, 20))
    out = np.zeros((1, blocked.blocks(20), 6, 6, B), np.float32)
    with pytest.raises(ValueError, match="w must have shape"):
        nchwc_window.f32_depthwise_blocked(x, wp[:1], bp, out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="bias"):
        nchwc_window.f32_depthwise_blocked(x, wp, bp[:20], out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="strides"):
        nchwc_window.f32_depthwise_blocked(x, wp, bp, out, 0, 1, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="blocks"):
        nchwc_window.f32_depthwise_blocked(x, wp, bp, np.zeros((1, 9, 6, 6, B), np.float32), 1, 1,
                                    1, 1, 1, 1, NO_ACT, 1)


# ------------------------------------------------------- pointwise fused into depthwise

def run_expand_depthwise(x, w1, b1, pact, wd, bd, stride, pads, dact, threads, scratch=None):
    """The fused pair on blocks: depthwise(pointwise(x)), NCHW in and out."""
    n, c, h, wdt = x.shape
    e, _, kh, kw = wd.shape
    (pt, pb), (pl, pr) = pads
    oh = (h + pt + pb - kh) // stride[0] + 1
    ow = (wdt + pl + pr - kw) // stride[1] + 1
    wp, bp = blocked.pack_pointwise(w1, b1)
    wdp, bdp = blocked.pack_depthwise(wd, bd)
    out = np.full((n, blocked.blocks(e), oh, ow, B), np.nan, np.float32)
    nchwc_window.f32_expand_depthwise_blocked(blocked.to_blocked(x), wp, bp, kernel_act(pact), c,
                                              wdp, bdp, out, stride[0], stride[1], pt, pl,
                                              kernel_act(dact), threads, scratch)
    return blocked.from_blocked(out, e)


# (N, C, E, H, W, kernel, stride, pads): channels off the block size, one-pixel and narrow
# maps, rows of one tile and of several with a short last one, 3x3 / 5x5 / 7x1 / 1x3, strides
# 1 and 2 (3 down the rows), asymmetric, zero and deep pads, and more input channels than
# one batch of the pointwise kernel (64 blocks): partial sums stored in the ring and resumed
EXPAND_DEPTHWISE = [
    (1, 16, 32, 12, 12, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 5, 20, 9, 13, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (1, 24, 72, 11, 37, (5, 5), (2, 2), ((2, 2), (2, 2))),
    (1, 17, 36, 7, 7, (3, 3), (1, 1), ((0, 1), (1, 0))),
    (1, 8, 16, 1, 1, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 12, 24, 2, 3, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (1, 20, 40, 10, 19, (7, 1), (1, 1), ((3, 3), (0, 0))),
    (1, 20, 24, 6, 25, (1, 3), (3, 2), ((0, 0), (1, 1))),
    (1, 16, 16, 8, 8, (3, 3), (1, 1), ((0, 0), (0, 0))),
    (1, 16, 20, 6, 9, (5, 5), (1, 1), ((4, 4), (4, 4))),
    (1, 64 * B + 3, 24, 3, 7, (3, 3), (1, 1), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("n,c,e,h,w,kernel,stride,pads", EXPAND_DEPTHWISE)
def test_expand_depthwise_matches_reference_and_is_thread_independent(rng, n, c, e, h, w,
                                                                      kernel, stride, pads):
    x, w1, b1 = f32(rng, n, c, h, w), f32(rng, e, c, 1, 1) * 0.3, f32(rng, e)
    wd, bd = f32(rng, e, 1, *kernel) * 0.3, f32(rng, e)
    mid = conv2d_ref(x, w1, b1)
    scale = (float(np.abs(x).max() * np.abs(w1).sum(axis=1).max() + np.abs(b1).max() + 1)
             * float(np.abs(wd).sum(axis=(1, 2, 3)).max() + 1) + float(np.abs(bd).max()))
    for pact, dact in ((None, None), ("relu6", "relu6"), ("hardswish", "hardswish"),
                       ("silu", None), ("relu", "gelu")):
        ref = ACTS[dact](conv2d_ref(ACTS[pact](mid), wd, bd, stride, pads, groups=e))
        got = run_expand_depthwise(x, w1, b1, pact, wd, bd, stride, pads, dact, 1)
        check_close(got, ref, scale)
        for threads in (2, 3):      # each range expands the rows of its first window itself
            np.testing.assert_array_equal(
                got, run_expand_depthwise(x, w1, b1, pact, wd, bd, stride, pads, dact, threads))


def test_expand_depthwise_takes_a_kept_scratch_buffer(rng):
    x, w1, b1 = f32(rng, 1, 16, 9, 11), f32(rng, 24, 16, 1, 1), f32(rng, 24)
    wd, bd = f32(rng, 24, 1, 3, 3), f32(rng, 24)
    pads = ((1, 1), (1, 1))
    floats = nchwc_window.expand_depthwise_scratch(blocked.blocks(24), 11, 11, 1, 3, 3, 1, 2)
    scratch = np.full(floats, np.nan, np.float32)     # the kernel zeroes what it reads
    np.testing.assert_array_equal(
        run_expand_depthwise(x, w1, b1, "relu", wd, bd, (1, 1), pads, None, 2, scratch),
        run_expand_depthwise(x, w1, b1, "relu", wd, bd, (1, 1), pads, None, 2))


def test_expand_depthwise_refuses_inconsistent_arguments(rng):
    x = blocked.to_blocked(f32(rng, 1, 20, 6, 6))
    wp, bp = blocked.pack_pointwise(f32(rng, 24, 20, 1, 1), f32(rng, 24))
    wd, bd = blocked.pack_depthwise(f32(rng, 24, 1, 3, 3), f32(rng, 24))
    out = np.zeros((1, blocked.blocks(24), 6, 6, B), np.float32)

    def run(**kw):
        a = dict(x=x, wpack=wp, pbias=bp, pact=NO_ACT, channels=20, wd=wd, dbias=bd, out=out,
                 sh=1, sw=1, pt=1, pl=1, dact=NO_ACT, num_threads=1)
        a.update(kw)
        nchwc_window.f32_expand_depthwise_blocked(*a.values())

    run()
    with pytest.raises(ValueError, match="wpack"):
        run(wpack=wp[:-1])
    with pytest.raises(ValueError, match="pbias"):
        run(pbias=bp[:3])
    with pytest.raises(ValueError, match="wd must have shape"):
        run(wd=wd[:1])
    with pytest.raises(ValueError, match="bias must hold"):
        run(dbias=bd[:3])
    with pytest.raises(ValueError, match="sw must be 1 or 2"):
        run(sw=3)
    with pytest.raises(ValueError, match="channels"):
        run(channels=B * blocked.blocks(20) + 1)
    with pytest.raises(ValueError, match="images"):
        run(out=np.zeros((2, blocked.blocks(24), 6, 6, B), np.float32))
    with pytest.raises(ValueError, match="code"):
        run(dact=BAD_ACT)


def expand_net(c, e, k=3, stride=2, finite=True, second_reader=False):
    """pw (relu6) -> dw k x k (relu6) -> pw, MobileNetV2's inverted bottleneck; optionally a
    non-finite depthwise weight or a second reader of the expanded map."""
    rng = np.random.default_rng(3)
    consts = {"w1": f32(rng, e, c, 1, 1) * 0.3, "w2": f32(rng, e, 1, k, k) * 0.3,
              "w3": f32(rng, c, e, 1, 1) * 0.3, "lo": np.array(0, np.float32),
              "hi": np.array(6, np.float32)}
    if not finite:
        consts["w2"][0, 0, 0, 0] = np.inf
    p = k // 2
    nodes = [Node("Conv", "expand", ["x", "w1"], ["p"]),
             Node("Clip", "c1", ["p", "lo", "hi"], ["pr"]),
             Node("Conv", "dw", ["pr", "w2"], ["d"],
                  {"pads": [p, p, p, p], "group": e, "strides": [stride, stride]}),
             Node("Clip", "c2", ["d", "lo", "hi"], ["dr"]),
             Node("Conv", "project", ["dr", "w3"], ["y"])]
    outputs = [spec("y")]
    if second_reader:
        nodes.append(Node("Conv", "other", ["pr", "w3"], ["y2"]))
        outputs.append(spec("y2"))
    return Graph(nodes, [spec("x", (None, c, None, None))], outputs, consts)


def test_a_large_expanded_map_is_never_stored(rng, threads):
    c, e, hw = 16, 96, 56          # 96 x 56 x 56 floats: over EXPAND_DEPTHWISE_MIN_FLOATS
    assert e * hw * hw >= layout_rules.EXPAND_DEPTHWISE_MIN_FLOATS
    x = f32(rng, 2, c, hw, hw)
    model = Model(expand_net(c, e))
    y = model(x)
    kinds = [k for _, k in steps_of(model)]
    assert "BlockedExpandDepthwise" in kinds and kinds.count("BlockedConv") == 1
    assert "in one pass" in model.explain() and "is never stored" in model.explain()
    ref = Model(expand_net(c, e), layout="nchw")(x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    # explain(errors=True) measures the fused step against both layers in float64
    from engine.lab.errors import conv_errors
    plan = model._last_plan
    errors = conv_errors(plan, [x])
    fused = [k for k, s in enumerate(plan.steps)
             if type(s.op).__name__ == "BlockedExpandDepthwise"]
    assert fused and all(0 < errors[k] < 1e-5 for k in fused)
    # a small map, a non-finite depthwise weight or a second reader keep the two steps
    small = Model(expand_net(c, e))
    small(x[:, :, :14, :14])
    assert "BlockedExpandDepthwise" not in [k for _, k in steps_of(small)]
    for net in (expand_net(c, e, finite=False), expand_net(c, e, second_reader=True)):
        m = Model(net)
        m(x)
        assert "BlockedExpandDepthwise" not in [k for _, k in steps_of(m)]


def test_expand_depthwise_rule():
    ok, why = layout_rules.fuse_expand_depthwise(96, (112, 112), (3, 3), (2, 2), (1, 1), 30000,
                                                 True)
    assert ok and "never stored" in why
    for args, words in [(((3, 3), (1, 1), (2, 2), 30000, True), "undilated"),
                        (((3, 3), (1, 3), (1, 1), 30000, True), "stride 1 or 2"),
                        (((3, 3), (1, 1), (1, 1), 30000, False), "non-finite"),
                        (((3, 3), (1, 1), (1, 1), 1 << 20, True), "would not stay in L2")]:
        ok, why = layout_rules.fuse_expand_depthwise(96, (112, 112), *args)
        assert not ok and words in why
    ok, why = layout_rules.fuse_expand_depthwise(96, (14, 14), (3, 3), (1, 1), (1, 1), 3000, True)
    assert not ok and "stays in cache" in why


# (N, C, K, H, W, kernel, stride, pad, dilation): a network's first layer and its variants
DIRECT = [(1, 3, 32, 30, 30, 3, 2, 1, 1), (2, 3, 20, 9, 13, 3, 1, 1, 1),
          (1, 1, 33, 10, 10, 5, 2, 2, 1), (1, 2, 16, 7, 7, 3, 1, 2, 2),
          (1, 1, 16, 1, 1, 3, 1, 1, 1),
          (1, 3, 16, 5, 30, 3, 3, 0, 1), (1, 3, 8, 17, 40, 3, 1, 1, 1),
          # four blocks at a time on AVX-512 (six pixels a chunk), then the rest as a pair and
          # one: ResNet's 7x7 stride-2 stem on a small image, 5, 7 and 8 blocks
          (1, 3, 64, 23, 29, 7, 2, 3, 1), (2, 3, 70, 11, 14, 3, 1, 1, 1),
          (1, 4, 100, 9, 20, 5, 2, 2, 2), (1, 3, 128, 6, 13, 3, 1, 1, 1),
          # the usual stem with its geometry as constants (two blocks, kernels/_nchwc.h
          # ce_nc_stem3_row): odd sizes, a partial block, two images, a map of edges only
          (2, 3, 24, 17, 21, 3, 2, 1, 1), (1, 3, 2 * B, 2, 3, 3, 2, 1, 1),
          (1, 3, 2 * B, 33, 40, 3, 2, 1, 1),
          # rows long enough for unchecked chunks at strides 1, 2 and 3, of one block (twice
          # the pixels), a partial block and four blocks: the last chunk ending at the row's
          # end over the pixels before it (no right padding needed), or a checked one
          (1, 3, B, 9, 70, 3, 2, 1, 1), (1, 3, 8, 6, 67, 3, 2, 0, 1),
          (1, 3, B, 5, 45, 3, 1, 1, 1), (1, 2, B, 9, 50, 3, 1, 2, 2),
          (1, 3, B, 8, 100, 3, 3, 1, 1), (1, 3, 4 * B, 9, 64, 3, 2, 1, 1),
          (2, 3, 3 * B, 7, 58, 5, 2, 2, 1)]


@pytest.mark.parametrize("n,c,k,h,w,kk,s,p,d", DIRECT)
def test_direct_to_blocked_matches_reference_and_is_thread_independent(rng, n, c, k, h, w, kk,
                                                                       s, p, d):
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, kk, kk), f32(rng, k)
    ref = conv2d_ref(x, wt, b, (s, s), ((p, p), (p, p)), (d, d))
    scale = float(np.abs(x).max() * np.abs(wt).sum(axis=(1, 2, 3)).max() + np.abs(b).max())
    wp, bp = blocked.pack_direct(wt, b)
    for act in (None, "relu", "relu6", "silu", "hardswish", "elu(0.5)"):
        outs = []
        for t in (1, 2):
            out = np.full((n, blocked.blocks(k)) + ref.shape[2:] + (B,), np.nan, np.float32)
            nchwc.f32_direct_to_blocked(x, wp, bp, out, s, s, p, p, d, d, kernel_act(act), t)
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1])
        check_close(blocked.from_blocked(outs[0], k), ACTS[act](ref), scale)


# (N, C, group width, H, W, kernel, stride, pad, dilation): RegNet's widths 16 and 8 (16 where
# a block holds 16), ResNeXt's 4, widths 2 and 1, channel counts off the block size (8-wide
# groups in a half-filled last block), strides, dilations, rows whose last pixels are fewer
# than four
GROUPED = [(1, 160, B, 14, 14, 3, 1, 1, 1), (2, 40, 8, 9, 13, 3, 2, 1, 1),
           (1, 32, B, 7, 7, 3, 1, 2, 2), (1, 64, B, 28, 28, 3, 2, 1, 1),
           (1, 48, 8, 5, 5, 1, 1, 0, 1), (1, 16, B, 3, 2, 5, 1, 2, 1),
           (1, 44, 4, 6, 6, 3, 1, 1, 1),
           (1, 128, 4, 17, 15, 3, 1, 1, 1), (2, 36, 4, 11, 10, 3, 2, 1, 1),
           (1, 24, 2, 9, 7, 3, 1, 2, 2), (1, 20, 1, 6, 9, 3, 1, 1, 1),
           # widths 4 and 2 at unit stride: rows of eight pixels inside the row, each input
           # shuffled once for its three taps (with the rest of the row by four)
           (1, 32, 2, 9, 21, 3, 1, 1, 1), (1, 48, 4, 3, 30, 3, 1, 0, 1),
           (2, 64, 4, 5, 19, 3, 1, 1, 1)]


@pytest.mark.parametrize("n,c,g,h,w,kk,s,p,d", GROUPED)
def test_grouped_blocked_matches_reference_and_is_thread_independent(rng, n, c, g, h, w, kk,
                                                                     s, p, d):
    x, wt, b = f32(rng, n, c, h, w), f32(rng, c, g, kk, kk), f32(rng, c)
    ref = conv2d_ref(x, wt, b, (s, s), ((p, p), (p, p)), (d, d), c // g)
    scale = float(np.abs(x).max() * np.abs(wt).sum(axis=(1, 2, 3)).max() + np.abs(b).max())
    wp, bp = blocked.pack_grouped(wt, g, b)
    for act in (None, "relu", "silu", "sigmoid"):
        outs = []
        for t in (1, 2):
            out = np.full((n, blocked.blocks(c)) + ref.shape[2:] + (B,), np.nan, np.float32)
            nchwc_window.f32_grouped_blocked(blocked.to_blocked(x), wp, bp, out, s, s, p, p, d, d,
                                      kernel_act(act), t)
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1])
        assert not np.any(np.isnan(outs[0]))
        check_close(blocked.from_blocked(outs[0], c), ACTS[act](ref), scale)


@pytest.mark.parametrize("kind, shape", [("grouped", (40, g, 3, 3)) for g in sorted({2, 4, 8, B})]
                         + [("pointwise", (40, 24, 1, 1)), ("depthwise", (40, 1, 5, 5)),
                            ("dense", (40, 24, 3, 3)), ("direct", (40, 3, 7, 7))])
def test_packed_shapes_are_what_the_packing_makes(rng, kind, shape):
    """A native file's stored packs are used only where their shapes are these."""
    w, b = f32(rng, *shape), f32(rng, shape[0])
    made = (blocked.pack_grouped(w, shape[1], b) if kind == "grouped"
            else getattr(blocked, f"pack_{kind}")(w, b))
    assert tuple(a.shape for a in made) == blocked.packed_shapes(kind, shape)


@pytest.mark.parametrize("g", sorted({4, 8, B}))
def test_grouped_blocked_keeps_a_nan_in_its_group(rng, g):
    """A NaN in one input channel reaches only the outputs of its group (the taps of other
    groups never read its lane), as in the direct sum."""
    c = 32
    x, wt = f32(rng, 1, c, 6, 6), f32(rng, c, g, 3, 3)
    x[0, 5, 2, 3] = np.nan
    wp, bp = blocked.pack_grouped(wt, g, None)
    out = np.zeros((1, blocked.blocks(c), 6, 6, B), np.float32)
    nchwc_window.f32_grouped_blocked(blocked.to_blocked(x), wp, bp, out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    y = blocked.from_blocked(out, c)
    with np.errstate(invalid="ignore"):
        ref = conv2d_ref(x, wt, None, (1, 1), ((1, 1), (1, 1)), (1, 1), c // g)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y[0, 5 // g * g:(5 // g + 1) * g]).any()


def test_grouped_blocked_refuses_inconsistent_arguments(rng):
    x = f32(rng, 1, 2, 5, 5, B)
    wp, bp = blocked.pack_grouped(f32(rng, 2 * B, B, 3, 3), B, None)
    out = np.zeros((1, 2, 5, 5, B), np.float32)
    with pytest.raises(ValueError, match="w must"):
        nchwc_window.f32_grouped_blocked(x, wp[:1], bp, out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="g dividing"):    # groups of 3 do not tile a block
        nchwc_window.f32_grouped_blocked(x, np.zeros((2, 3, 3, 3, B), np.float32), bp, out, 1, 1, 1,
                                  1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="bias"):
        nchwc_window.f32_grouped_blocked(x, wp, bp[:B], out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="act"):
        nchwc_window.f32_grouped_blocked(x, wp, bp, out, 1, 1, 1, 1, 1, 1, BAD_ACT, 1)
    with pytest.raises(ValueError, match="out"):
        nchwc_window.f32_grouped_blocked(x, wp, bp, np.zeros((1, 3, 5, 5, B), np.float32), 1, 1, 1,
                                  1, 1, 1, NO_ACT, 1)


def test_direct_to_blocked_refuses_inconsistent_arguments(rng):
    x = f32(rng, 1, 3, 8, 8)
    wp, bp = blocked.pack_direct(f32(rng, 20, 3, 3, 3), f32(rng, 20))
    out = np.zeros((1, blocked.blocks(20), 8, 8, B), np.float32)
    with pytest.raises(ValueError, match="w must have shape"):
        nchwc.f32_direct_to_blocked(f32(rng, 1, 4, 8, 8), wp, bp, out, 1, 1, 1, 1, 1, 1, NO_ACT,
                                    1)
    with pytest.raises(ValueError, match="bias"):
        nchwc.f32_direct_to_blocked(x, wp, bp[:B], out, 1, 1, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="strides"):
        nchwc.f32_direct_to_blocked(x, wp, bp, out, 1, 0, 1, 1, 1, 1, NO_ACT, 1)
    with pytest.raises(ValueError, match="images"):
        nchwc.f32_direct_to_blocked(x, wp, bp, np.zeros((2,) + out.shape[1:], np.float32), 1, 1, 1,
                                    1, 1, 1, NO_ACT, 1)


def test_global_average_pool_on_blocks(rng):
    x = f32(rng, 2, 40, 7, 5)
    out = np.empty((2, 40), np.float32)
    nchwc_channels.f32_global_avg_blocked(blocked.to_blocked(x), out)
    ref = x.astype(np.float64).mean(axis=(2, 3))
    assert np.abs(out - ref).max() <= 1e-6 * np.abs(x).max()
    out2 = np.empty((2, 40), np.float32)
    nchwc_channels.f32_global_avg_blocked(blocked.to_blocked(x), out2, 2)
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(ValueError, match="does not fit"):
        nchwc_channels.f32_global_avg_blocked(blocked.to_blocked(x), np.empty((2, 50), np.float32))


# ------------------------------------------------------------------------------ layout pass

def spec(name, shape=None):
    return TensorSpec(name, shape, "float32")


def separable_net(rng, c=24, e=40):
    """stem 3x3 -> dw 3x3 (relu6) -> pw (relu6) -> pw + residual -> dw s2 -> GAP -> Gemm, with
    channel counts off the block size."""
    consts = {"w0": f32(rng, c, 3, 3, 3) * 0.3, "w1": f32(rng, c, 1, 3, 3) * 0.3,
              "w2": f32(rng, e, c, 1, 1) * 0.3, "w3": f32(rng, c, e, 1, 1) * 0.3,
              "w4": f32(rng, c, 1, 3, 3) * 0.3, "b4": f32(rng, c), "fw": f32(rng, 10, c),
              "fb": f32(rng, 10), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [Node("Conv", "stem", ["x", "w0"], ["s"], {"pads": [1, 1, 1, 1]}),
             Node("Relu", "r0", ["s"], ["a"]),
             Node("Conv", "dw1", ["a", "w1"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node("Clip", "c1", ["d", "lo", "hi"], ["dr"]),
             Node("Conv", "pw2", ["dr", "w2"], ["p"]),
             Node("Relu", "r2", ["p"], ["pr"]),
             Node("Conv", "pw3", ["pr", "w3"], ["q"]),
             Node("Add", "add", ["q", "a"], ["sum"]),
             Node("Conv", "dw4", ["sum", "w4", "b4"], ["z"],
                  {"pads": [1, 1, 1, 1], "group": c, "strides": [2, 2]}),
             Node("GlobalAveragePool", "gap", ["z"], ["g"]),
             Node("Flatten", "flat", ["g"], ["f"]),
             Node("Gemm", "fc", ["f", "fw", "fb"], ["y"], {"transB": 1})]
    return nodes, consts


def separable_ref(x, k):
    p1 = ((1, 1), (1, 1))
    c = k["w1"].shape[0]
    a = np.maximum(conv2d_ref(x, k["w0"], pads=p1), 0)
    d = np.clip(conv2d_ref(a, k["w1"], pads=p1, groups=c), 0, 6)
    p = np.maximum(conv2d_ref(d, k["w2"]), 0)
    s = conv2d_ref(p, k["w3"]) + a
    z = conv2d_ref(s, k["w4"], k["b4"], (2, 2), p1, groups=c)
    return z.mean(axis=(2, 3)) @ k["fw"].T.astype(np.float64) + k["fb"]


def steps_of(model):
    return [(s.node.op, type(s.op).__name__) for s in model._last_plan.steps]


def test_layout_pass_blocks_the_separable_chain(rng, threads):
    nodes, consts = separable_net(rng)
    model = Model(Graph(nodes, [spec("x", (2, 3, 11, 10))], [spec("y")], consts))
    x = f32(rng, 2, 3, 11, 10)
    y = model(x)
    ref = separable_ref(x, consts)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    kinds = [k for _, k in steps_of(model)]
    assert kinds == ["BlockedConv"] * 5 + ["BlockedGlobalAveragePool", "Flatten", "Gemm"]
    assert [s.op.conv_kind for s in model._last_plan.steps[:5]] == [
        "direct", "depthwise", "pointwise", "pointwise", "depthwise"]
    assert NAME in model.explain()
    # the graph the model keeps and saves is untouched
    assert all(n.op != "ToBlocked" for n in model.graph.nodes)


def test_layout_pass_can_be_turned_off_and_gives_the_same_values(rng):
    nodes, consts = separable_net(rng)
    x = f32(rng, 1, 3, 9, 9)
    on = Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts))
    nodes, _ = separable_net(np.random.default_rng(0))
    off = Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts), layout="nchw")
    assert "BlockedConv" not in [k for _, k in steps_of(off)]
    assert "layout nchw: forced by the caller (layout='nchw')" in off.explain()
    with pytest.raises(ValueError, match="layout must be one of"):
        Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts), layout="NCHW")
    a, b = on(x), off(x)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_blocked_tensors_read_in_nchw_are_converted_back(rng):
    """A blocked layer's output that is also a graph output gets one FromBlocked step; the
    Sigmoid between two pointwise layers runs on the blocks, so the third layer runs blocked
    too and its output (a graph output) is converted back once."""
    c = 20
    consts = {"w1": f32(rng, c, 1, 3, 3), "w2": f32(rng, c, c, 1, 1), "w3": f32(rng, 8, c, 1, 1)}
    nodes = [Node("Conv", "dw", ["x", "w1"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node("Conv", "pw", ["d", "w2"], ["p"]),
             Node("Sigmoid", "sig", ["p"], ["s"]),
             Node("Conv", "lone", ["s", "w3"], ["y2"])]
    model = Model(Graph(nodes, [spec("x", (1, c, 6, 7))], [spec("p"), spec("y2")], consts))
    x = f32(rng, 1, c, 6, 7)
    p_out, y2 = model(x)
    p = conv2d_ref(conv2d_ref(x, consts["w1"], pads=((1, 1), (1, 1)), groups=c), consts["w2"])
    assert np.abs(p_out - p).max() <= 1e-4 * np.abs(p).max()
    ref2 = conv2d_ref(1 / (1 + np.exp(-p)), consts["w3"])
    assert np.abs(y2 - ref2).max() <= 1e-4 * np.abs(ref2).max()
    kinds = steps_of(model)
    assert [k for _, k in kinds].count("FromBlocked") == 2
    assert ("Sigmoid", "Sigmoid") in kinds
    assert [k for _, k in kinds].count("BlockedConv") == 3


def test_conv_kind_rules(rng):
    """Which blocked kernel takes a layer (engine.dispatch.layout.blocked_kernel): pointwise,
    depthwise with multiplier 1, grouped within blocks, direct for few taps, dense for the
    other one-group layers but Winograd's 3x3 stride 1."""
    def kind(w, attrs, shape, act=None):
        node = Node("Conv", "c", ["x", "w"], ["y"], dict(attrs, **({"activation": act}
                                                                   if act else {})))
        from engine.graph.passes import make_op
        from engine.graph.ops import Info
        op = make_op(node, {"w": w})
        ins = [Info(shape, np.float32), Info(w.shape, np.float32, w)]
        op.infer(ins)
        kind, reason, alone = layout.conv_kind(op, ins)
        assert reason and (not alone or kind in ("dense", "pointwise", "winograd"))
        return kind
    assert kind(f32(rng, 8, 4, 1, 1), {}, (1, 4, 5, 5)) == "pointwise"
    assert kind(f32(rng, 8, 4, 1, 1), {}, (1, 4, 5, 5), "relu6") == "pointwise"
    # a strided 1x1: the pointwise kernel on the input taken every stride pixels
    assert kind(f32(rng, 8, 40, 1, 1), {"strides": [2, 2]}, (1, 40, 5, 5)) == "pointwise"
    assert kind(f32(rng, 8, 40, 1, 1), {"pads": [1, 1, 1, 1]}, (1, 40, 5, 5)) == "dense"
    assert kind(f32(rng, 8, 40, 1, 7), {"pads": [0, 3, 0, 3]}, (1, 40, 5, 9)) == "dense"
    assert kind(f32(rng, 8, 40, 3, 3), {"strides": [2, 2]}, (1, 40, 9, 9)) == "dense"
    assert kind(f32(rng, 8, 40, 3, 3), {"dilations": [2, 2]}, (1, 40, 9, 9)) == "winograd"
    # a rate past the map: most taps read padding, NCHW's live taps
    assert kind(f32(rng, 8, 40, 3, 3), {"dilations": [12, 12], "pads": [12] * 4},
                (1, 40, 14, 14)) is None
    assert kind(f32(rng, 8, 4, 1, 1), {"strides": [2, 2]}, (1, 4, 5, 5)) == "direct"
    assert kind(f32(rng, 8, 2, 1, 1), {"group": 2}, (1, 4, 5, 5)) is None
    assert kind(f32(rng, 4, 1, 3, 3), {"group": 4, "dilations": [2, 2]},
                (1, 4, 9, 9)) == "depthwise"
    assert kind(f32(rng, 8, 1, 3, 3), {"group": 4}, (1, 4, 9, 9)) is None   # multiplier 2
    assert kind(f32(rng, 8, 3, 3, 3), {"strides": [2, 2]}, (1, 3, 9, 9)) == "direct"
    # 3x3 stride 1: Winograd on blocks from 8 input channels, dense below
    assert kind(f32(rng, 8, 5, 3, 3), {}, (1, 5, 9, 9)) == "dense"       # 45 taps, 5 channels
    assert kind(f32(rng, 256, 256, 3, 3), {"pads": [1] * 4}, (1, 256, 14, 14)) == "winograd"
    # groups inside blocks: 16 (where a block holds 16), 8 or 4 channels each way
    assert kind(f32(rng, 64, B, 3, 3), {"group": 64 // B}, (1, 64, 9, 9)) == "grouped"
    assert kind(f32(rng, 24, 8, 3, 3), {"group": 3}, (1, 24, 9, 9)) == "grouped"
    assert kind(f32(rng, 32, 4, 3, 3), {"group": 8}, (1, 32, 9, 9)) == "grouped"
    assert kind(f32(rng, 32, 2, 3, 3), {"group": 16}, (1, 32, 9, 9)) == "grouped"
    assert kind(f32(rng, 36, 3, 3, 3), {"group": 12}, (1, 36, 9, 9)) is None  # 16 % 3
    assert kind(f32(rng, 48, 12, 3, 3), {"group": 4}, (1, 48, 9, 9)) is None  # 16 % 12
    # 8 in, 16 out: whole blocks each way where a block holds 8 (the dense kernel group by
    # group), else neither in one block nor in whole ones
    assert kind(f32(rng, 64, 8, 3, 3), {"group": 4}, (1, 32, 9, 9)) == (
        "dense" if 8 % B == 0 else None)


def test_eight_python_threads_running_blocked_layers_match_serial_runs(rng):
    """Each call gets its own activation buffers, blocked ones included."""
    nodes, consts = separable_net(rng)
    model = Model(Graph(nodes, [spec("x", (2, 3, 12, 12))], [spec("y")], consts))
    assert "BlockedConv" in [k for _, k in steps_of(model)]
    inputs = [f32(np.random.default_rng(k), 2, 3, 12, 12) for k in range(8)]
    serial = [model(x) for x in inputs]
    results, errors = run_concurrently(model, inputs, 10)
    assert not errors
    for k in range(8):
        for r in results[k]:
            np.testing.assert_array_equal(r, serial[k])


def test_blocked_weights_sit_side_by_side_in_one_buffer(rng):
    """A plan's packed weights are copied, in order, into one buffer starting on a huge-page
    boundary, each 64-byte aligned, values and shapes unchanged."""
    arrays = [f32(rng, 5), f32(rng, 2, 3, 3, B), f32(rng, 33)]
    views = blocked.side_by_side(arrays)
    for a, v in zip(arrays, views):
        np.testing.assert_array_equal(v, a)
        assert v.shape == a.shape and v.ctypes.data % 64 == 0
    assert views[0].ctypes.data % blocked.HUGE_PAGE == 0
    assert views[0].base is views[1].base is views[2].base
    assert views[0].ctypes.data < views[1].ctypes.data < views[2].ctypes.data
    nodes, consts = separable_net(rng)
    model = Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts))
    ws = [s.op.w for s in model._last_plan.steps if type(s.op).__name__ == "BlockedConv"]
    assert len(ws) == 5 and all(w.base is ws[0].base for w in ws)


def random_graph(rng, steps=10):
    """A random chain of pointwise, depthwise (strides 1-2), dense 3x3, direct-eligible,
    Relu, Sigmoid, HardSwish, Add, Concat, squeeze-excite (global pool, two 1x1 layers, a
    per-channel Mul) and per-channel or scalar arithmetic nodes on channel counts off the block
    size, each node reading the newest tensor and sometimes an older one of the same shape,
    with a random output set."""
    consts, nodes = {}, []
    shapes = {"x": (1, 3, 11, 9)}
    order = ["x"]
    for i in range(steps):
        src = order[-1]
        n, c, h, w = shapes[src]
        kind = rng.choice(["pw", "pw", "dw", "dw", "dense", "relu", "sigmoid", "add", "concat",
                           "hardswish", "se", "channel_sub", "scale"])
        out = f"t{i}"
        if kind == "pw":
            k = int(rng.integers(1, 40))
            consts[f"w{i}"] = f32(rng, k, c, 1, 1) * 0.3
            consts[f"b{i}"] = f32(rng, k)
            nodes.append(Node("Conv", f"n{i}", [src, f"w{i}", f"b{i}"], [out],
                              {"activation": str(rng.choice(["relu", "relu6", "silu", "hardswish"]))}
                              if rng.random() < 0.5 else {}))
            shapes[out] = (n, k, h, w)
        elif kind == "dw":
            s = int(rng.integers(1, 3))
            consts[f"w{i}"] = f32(rng, c, 1, 3, 3) * 0.3
            nodes.append(Node("Conv", f"n{i}", [src, f"w{i}"], [out],
                              {"pads": [1, 1, 1, 1], "group": c, "strides": [s, s]}))
            shapes[out] = (n, c, (h - 1) // s + 1, (w - 1) // s + 1)
        elif kind == "dense":
            k = int(rng.integers(1, 20))
            consts[f"w{i}"] = f32(rng, k, c, 3, 3) * 0.2
            nodes.append(Node("Conv", f"n{i}", [src, f"w{i}"], [out], {"pads": [1, 1, 1, 1]}))
            shapes[out] = (n, k, h, w)
        elif kind in ("relu", "sigmoid", "hardswish"):
            op = {"relu": "Relu", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}[kind]
            nodes.append(Node(op, f"n{i}", [src], [out]))
            shapes[out] = shapes[src]
        elif kind == "se":
            r = max(1, c // 4)
            consts[f"w{i}a"] = f32(rng, r, c, 1, 1) * 0.3
            consts[f"w{i}b"] = f32(rng, c, r, 1, 1) * 0.3
            nodes += [Node("GlobalAveragePool", f"n{i}g", [src], [f"{out}g"]),
                      Node("Conv", f"n{i}a", [f"{out}g", f"w{i}a"], [f"{out}a"],
                           {"activation": "relu"}),
                      Node("Conv", f"n{i}b", [f"{out}a", f"w{i}b"], [f"{out}b"]),
                      Node("HardSigmoid", f"n{i}h", [f"{out}b"], [f"{out}h"]),
                      Node("Mul", f"n{i}", [src, f"{out}h"] if rng.random() < 0.5
                           else [f"{out}h", src], [out])]
            shapes[out] = shapes[src]
        elif kind == "channel_sub":
            consts[f"v{i}"] = f32(rng, 1, c, 1, 1)
            nodes.append(Node("Sub", f"n{i}", [src, f"v{i}"], [out]))
            shapes[out] = shapes[src]
        elif kind == "scale":
            consts[f"v{i}"] = np.array(rng.uniform(0.5, 2), np.float32)
            nodes.append(Node("Mul", f"n{i}", [f"v{i}", src], [out]))
            shapes[out] = shapes[src]
        else:
            same = [t for t in order[:-1] if shapes[t] == shapes[src]]
            other = str(rng.choice(same)) if same else src
            if kind == "add":
                nodes.append(Node("Add", f"n{i}", [src, other], [out]))
                shapes[out] = shapes[src]
            else:
                nodes.append(Node("Concat", f"n{i}", [src, other], [out], {"axis": 1}))
                shapes[out] = (n, 2 * c, h, w)
        order.append(out)
    outs = [order[-1]] + [t for t in order[1:-1] if rng.random() < 0.2]
    return nodes, consts, outs


@pytest.mark.parametrize("seed", range(24))
def test_random_graphs_give_the_same_values_with_and_without_the_layout(seed):
    """The layout pass changes how tensors are stored, never what a model computes: random
    graphs agree with the all-NCHW plan within float32 rounding (1e-5 of the output's range),
    and some of their layers do run blocked (all it can when forced)."""
    rng = np.random.default_rng(100 + seed)
    nodes, consts, outs = random_graph(rng)
    x = f32(rng, 1, 3, 11, 9)

    def build(layout):
        return Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                            for n in nodes], [spec("x", (1, 3, 11, 9))],
                           [spec(o) for o in outs], consts), layout=layout)
    blocked_model = build("auto")
    got = blocked_model.run({"x": x})
    ref = build("nchw").run({"x": x})
    # every layer a blocked kernel can run, blocked, neighbours or not
    everywhere = build("nchwc")
    n_blocked = [k for _, k in steps_of(everywhere)].count("BlockedConv")
    assert n_blocked >= max(1, [k for _, k in steps_of(blocked_model)].count("BlockedConv"))
    forced = everywhere.run({"x": x})
    for name in outs:
        scale = max(1.0, float(np.abs(ref[name]).max()))
        assert got[name].shape == ref[name].shape
        assert np.abs(got[name] - ref[name]).max() <= 1e-5 * scale, name
        assert np.abs(forced[name] - ref[name]).max() <= 1e-5 * scale, name


def test_explain_says_when_a_depthwise_layer_goes_by_whole_planes(rng):
    """pw -> 5x5 depthwise on 7x7 -> pw: the depthwise step says it takes each block's plane
    whole (ce_nc_dw_plane), and on 28x28 says so only on 8-float builds (16-float builds take
    planes of at most 16 rows); values as the NCHW plan's either way."""
    c = 3 * B
    w = {"a": f32(rng, c, 16, 1, 1) * 0.3, "d": f32(rng, c, 1, 5, 5) * 0.3,
         "p": f32(rng, 16, c, 1, 1) * 0.3}
    for size, planes in ((7, True), (28, B == 8)):
        g = Graph([Node("Conv", "pa", ["x", "a"], ["ya"], {"activation": "relu"}),
                   Node("Conv", "dw", ["ya", "d"], ["yd"], {"pads": [2, 2, 2, 2], "group": c}),
                   Node("Conv", "pb", ["yd", "p"], ["y"])],
                  [TensorSpec("x", (1, 16, size, size), "float32")],
                  [TensorSpec("y", None, "float32")], w)
        model = Model(g)
        text = model.explain()
        assert f"depthwise on {NAME}" in text, text
        assert ("plane whole through a zero-bordered copy" in text) == planes, text
        x = f32(rng, 1, 16, size, size)
        got = model.run({"x": x})["y"]
        np.testing.assert_allclose(got, Model(g, layout="nchw").run({"x": x})["y"], rtol=0,
                                   atol=1e-5 * float(np.abs(got).max()))


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
def test_elementwise_steps_and_squeeze_excite_run_on_the_blocks(rng, pool):
    """pw -> HardSwish -> dw -> squeeze-excite (GAP, 1x1, 1x1, HardSigmoid, per-channel Mul)
    -> pw, on 40 channels: the activation and the squeeze-excite run on the blocks."""
    c, r = 40, 10
    consts = {"w0": f32(rng, c, 8, 1, 1) * 0.3, "w1": f32(rng, c, 1, 3, 3) * 0.3,
              "wa": f32(rng, r, c, 1, 1) * 0.3, "wb": f32(rng, c, r, 1, 1) * 0.3,
              "w2": f32(rng, 16, c, 1, 1) * 0.3}
    nodes = [Node("Conv", "pw0", ["x", "w0"], ["p"]),
             Node("HardSwish", "hs", ["p"], ["ph"]),
             Node("Conv", "dw", ["ph", "w1"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node(pool, "gap", ["d"], ["g"], {"axes": [-1, 2]} if pool == "ReduceMean" else {}),
             Node("Conv", "fc1", ["g", "wa"], ["a"], {"activation": "relu"}),
             Node("Conv", "fc2", ["a", "wb"], ["b"]),
             Node("HardSigmoid", "hsig", ["b"], ["s"]),
             Node("Mul", "scale", ["d", "s"], ["e"]),
             Node("Conv", "pw2", ["e", "w2"], ["y"])]
    x = f32(rng, 1, 8, 14, 14)
    ref = Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                       for n in nodes], [spec("x", x.shape)], [spec("y")], consts),
                layout="nchw")
    model = Model(Graph(nodes, [spec("x", x.shape)], [spec("y")], consts))
    got, want = model(x), ref(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    ops = [op for op, _ in steps_of(model)]
    # the only layout changes: the stem's input and the output; the HardSwish runs in the
    # blocked pointwise kernel's output step, the squeeze-excite as one step on the blocks
    assert ops == ["ToBlocked", "Conv", "Conv", "SqueezeExcite", "Conv", "FromBlocked"], ops
    text = model.explain()
    assert "+ hardswish in the kernel's output step" in text
    assert f"-> relu -> 1x1 -> hardsigmoid -> scale, on the {NAME} input in place" in text


def test_a_regnet_block_stays_blocked_through_its_grouped_layer(rng):
    """pw -> grouped 3x3 (a block's channels a group) -> pw + residual: the body blocked, no
    layout change around the grouped layer, the values those of the all-NCHW plan."""
    c = 64
    consts = {"wa": f32(rng, c, 24, 1, 1) * 0.3, "wg": f32(rng, c, B, 3, 3) * 0.3,
              "wb": f32(rng, c, c, 1, 1) * 0.3, "wr": f32(rng, c, 24, 1, 1) * 0.3}
    nodes = [Node("Conv", "a", ["x", "wa"], ["pa"], {"activation": "relu"}),
             Node("Conv", "g", ["pa", "wg"], ["pg"], {"pads": [1, 1, 1, 1], "group": c // B,
                                                       "activation": "relu"}),
             Node("Conv", "b", ["pg", "wb"], ["pb"]),
             Node("Conv", "r", ["x", "wr"], ["pr"]),
             Node("Add", "add", ["pb", "pr"], ["y"])]

    def build(layout):
        return Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                            for n in nodes], [spec("x", (1, 24, 14, 14))], [spec("y")], consts),
                     layout=layout)
    x = f32(rng, 1, 24, 14, 14)
    model, ref = build("auto"), build("nchw")
    got, want = model(x), ref(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert f"grouped on {NAME}" in model.explain()
    kinds = {s.node.name: type(s.op).__name__ for s in model._last_plan.steps}
    assert kinds["a"] == kinds["g"] == kinds["b"] == "BlockedConv", kinds


def test_pointwise_threads_share_groups_only_when_even():
    """Two threads take groups of output blocks only when that leaves neither much more than
    half: two and nine whole groups yes; a group and a block no (on AVX-512's groups of 4: 5
    blocks, as 4 against 1), nor 25 blocks on a 7x7 map; a slack of 0 never; one thread
    never."""
    from engine._kernels.nchwc import pointwise_by_groups
    group = 4 if B == 16 else 2
    assert pointwise_by_groups(1, 196, 2 * group, 2, 1.15)
    assert pointwise_by_groups(1, 196, 9 * group, 2, 1.15)
    assert not pointwise_by_groups(1, 196, group + 1, 2, 1.15)
    if group == 4:
        assert not pointwise_by_groups(1, 49, 25, 2, 1.15)     # RegNet-X's 400 channels
    assert not pointwise_by_groups(1, 196, 2 * group, 2, 0.0)
    assert not pointwise_by_groups(1, 196, 2 * group, 1, 1.15)


def residual_graph(c, own_input=False):
    """t = relu(conv1x1(x)); y = relu(conv1x1(t) + x), or relu(conv1x1(x) + x): x (blocked)
    dies at the second convolution, which adds it."""
    rng = np.random.default_rng(5)
    w1, w2 = (f32(rng, c, c, 1, 1) / np.float32(np.sqrt(c)) for _ in range(2))
    nodes = [Node("Relu", "r0", ["x0"], ["x"]),
             Node("Conv", "c1", ["x", "w1"], ["a"]), Node("Relu", "r1", ["a"], ["t"]),
             Node("Conv", "c2", ["x" if own_input else "t", "w2"], ["b"]),
             Node("Add", "add", ["b", "x"], ["s"]), Node("Relu", "r2", ["s"], ["y"])]
    graph = Graph(nodes, [TensorSpec("x0", (1, c, 10, 12), "float32")],
                  [TensorSpec("y", None, "float32")], {"w1": w1, "w2": w2})
    return Model(graph, layout="nchwc"), (w1, w2)


def arena_tensors(model, shape):
    return int(model.explain({"x0": shape}).split("memory: ")[1].split()[0])


@pytest.mark.parametrize("c", [4 * B, nchwc.BATCH * B, nchwc.BATCH * B + 3])
def test_a_pointwise_layer_takes_over_its_dying_residual(rng, c, monkeypatch):
    """The 1x1 layer with a residual add writes into the residual's buffer when the residual
    dies there and the kernel sums each output whole before storing it (at most nchwc.BATCH
    input blocks): one buffer fewer, the same values bit for bit as a plan that keeps them
    apart, within 1e-5 of the sum of |terms| of float64, at 1 and 2 threads. With more input
    blocks, or where the layer reads the residual as its own input, it does not take it."""
    x0 = f32(rng, 1, c, 10, 12)
    taking, (w1, w2) = residual_graph(c)
    n_taking = arena_tensors(taking, x0.shape)
    outs = {t: taking.run({"x0": x0}, num_threads=t)["y"] for t in (1, 2)}
    monkeypatch.setattr(blocked_conv.BlockedConv, "inplace_inputs", lambda *a: ())
    apart, _ = residual_graph(c)
    takes = blocked.blocks(c) <= nchwc.BATCH
    assert n_taking == arena_tensors(apart, x0.shape) - (1 if takes else 0)
    x = np.maximum(x0.astype(np.float64), 0)
    t = np.maximum(conv2d_ref(x, w1), 0)
    z, terms = conv2d_ref(t, w2) + x, conv2d_ref(t, np.abs(w2)) + x
    for threads, y in outs.items():
        np.testing.assert_array_equal(y, apart.run({"x0": x0}, num_threads=threads)["y"])
        assert np.all(np.abs(y - np.maximum(z, 0)) <= 1e-5 * terms + 1e-30)
    monkeypatch.undo()
    own, _ = residual_graph(c, own_input=True)
    y = own.run({"x0": x0})["y"]
    want = np.maximum(conv2d_ref(x, w2) + x, 0)
    assert np.all(np.abs(y - want) <= 1e-5 * (conv2d_ref(x, np.abs(w2)) + x) + 1e-30)


def test_the_pointwise_kernel_refuses_a_residual_it_would_overwrite(rng):
    c = (nchwc.BATCH + 1) * B
    w = f32(rng, c, c, 1, 1)
    wp, bp = blocked.pack_pointwise(w, np.zeros(c, np.float32))
    x = blocked.to_blocked(f32(rng, 1, c, 4, 4))
    out = np.zeros_like(x)
    with pytest.raises(ValueError, match="residual may be out"):
        nchwc.f32_pointwise_blocked(x, wp, bp, out, out, kernel_act(None), 1)


def test_reading_the_shape_of_a_blocked_tensor_needs_no_layout_change(rng):
    """Shape and Size of a tensor the plan holds only blocked give its NCHW shape, folded
    while planning: no FromBlocked for them, so the global average pool beside them reads the
    blocks in place (DeepLabV3's pooling branch takes its Resize size from the backbone's
    output)."""
    w = f32(rng, 40, 24, 1, 1)
    nodes = [Node("Conv", "c", ["x", "w"], ["y"]), Node("Shape", "s", ["y"], ["s"], {"start": 1}),
             Node("Size", "n", ["y"], ["n"]), Node("GlobalAveragePool", "g", ["y"], ["g"])]
    graph = Graph(nodes, [TensorSpec("x", (None, 24, 7, 9), "float32")],   # a free batch
                  [TensorSpec(o, None, None) for o in ("g", "s", "n")], {"w": w})
    model = Model(graph, layout="nchwc")
    text = model.explain({"x": (2, 24, 7, 9)})
    assert "FromBlocked" not in text and f"on the {blocked.NAME} input in place" in text
    x = f32(rng, 2, 24, 7, 9)
    out = model.run({"x": x})
    np.testing.assert_array_equal(out["s"], [40, 7, 9])
    assert int(out["n"]) == 2 * 40 * 7 * 9
    want = conv2d_ref(x, w).mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(out["g"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, transform, blocked_resize", [
    ("linear", "half_pixel", True), ("nearest", "asymmetric", True),
    ("cubic", "align_corners", True), ("linear", "tf_crop_and_resize", False)])
def test_a_pooled_branch_resized_back_stays_blocked(rng, mode, transform, blocked_resize):
    """DeepLabV3's image pooling: GlobalAveragePool -> 1x1 -> Resize back to the map's size
    (sizes from the map's Shape) -> Concat with the map -> 1x1. A 1x1 map resized reads its
    one pixel at every tap: copied to every pixel on blocks, no layout change; but not a
    crop-and-resize, whose region may fall outside the input (extrapolation value 0 here).
    32 channels: a blocked Concat takes whole blocks but for its last input."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    c = 32
    inits = {"w": f32(rng, c, 8, 3, 3) * 0.3, "wp": f32(rng, c, c, 1, 1) * 0.3,
             "wo": f32(rng, 16, 2 * c, 1, 1) * 0.3, "two": np.array([2], np.int64),
             "four": np.array([4], np.int64), "zero": np.array([0], np.int64),
             "roi": np.array([0, 0, -0.5, -0.5, 1, 1, 1.5, 1.5], np.float32)}
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    nodes = [h.make_node("Conv", ["x", "w"], ["m"], pads=[1, 1, 1, 1]),
             h.make_node("GlobalAveragePool", ["m"], ["g"]),
             h.make_node("Conv", ["g", "wp"], ["p"]),
             h.make_node("Shape", ["m"], ["s"]),
             h.make_node("Slice", ["s", "two", "four", "zero"], ["hw"]),
             h.make_node("Slice", ["s", "zero", "two", "zero"], ["nc"]),
             h.make_node("Concat", ["nc", "hw"], ["size"], axis=0),
             h.make_node("Resize", ["p", "roi" if transform == "tf_crop_and_resize" else "",
                                    "", "size"], ["r"], **attrs),
             h.make_node("Concat", ["m", "r"], ["cat"], axis=1),
             h.make_node("Conv", ["cat", "wo"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 8, 9, 11])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)
    from engine import load
    model = load(m, layout="nchwc")
    text = model.explain()
    assert ("a 1x1 map resized on" in text) == blocked_resize, text
    x = f32(rng, 1, 8, 9, 11)
    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ Concat inputs written in place

def dense_block_net(rng, c=2 * B, growth=B, layers=3, extra=None):
    """DenseNet's block: each layer a 3x3 conv (relu) on the Concat of the block's input and
    every layer's output before it; the block ends in the Concat of all of them, then a 1x1.
    ``extra``: further nodes (reading the names above) and their outputs. Whole blocks of
    channels, so that the Concats run on blocks with either block size."""
    consts, nodes = {}, [Node("Conv", "stem", ["x", "w0"], ["f0"], {"pads": [1, 1, 1, 1]}),
                         Node("Relu", "r0", ["f0"], ["x0"])]
    consts["w0"] = f32(rng, c, 3, 3, 3) * 0.3
    feats, width = ["x0"], c
    for k in range(1, layers + 1):
        cat = f"cat{k}"
        nodes.append(Node("Concat", cat, list(feats), [cat], {"axis": 1}))
        consts[f"w{k}"] = f32(rng, growth, width, 3, 3) * 0.2
        nodes.append(Node("Conv", f"conv{k}", [cat, f"w{k}"], [f"p{k}"], {"pads": [1, 1, 1, 1]}))
        nodes.append(Node("Relu", f"r{k}", [f"p{k}"], [f"x{k}"]))
        feats.append(f"x{k}")
        width += growth
    nodes.append(Node("Concat", "block", list(feats), ["blk"], {"axis": 1}))
    consts["wt"] = f32(rng, 8, width, 1, 1) * 0.2
    nodes.append(Node("Conv", "trans", ["blk", "wt"], ["y"]))
    outputs = [spec("y")]
    for node, out in (extra or []):
        nodes.append(node)
        outputs.append(spec(out))
    return Graph(nodes, [spec("x", (None, 3, None, None))], outputs, consts)


def concat_steps(model):
    return [s for s in model._last_plan.steps if type(s.op).__name__ == "BlockedConcat"]


def test_a_dense_block_writes_every_feature_once_where_its_concats_keep_it(rng, threads):
    x = f32(rng, 1, 3, 12, 11)
    model = Model(dense_block_net(np.random.default_rng(7)))
    y = model(x)
    ref = Model(dense_block_net(np.random.default_rng(7)), layout="nchw")(x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    cats = concat_steps(model)
    assert len(cats) == 4
    # every input of every Concat is in place: the block's buffer holds them all, and each
    # layer's Concat is its first part
    assert all(s.op.placed_inputs == frozenset(range(len(s.node.inputs))) for s in cats)
    assert "written in place by the steps that make them" in model.explain()
    placed_where_read(model)
    plan = model._last_plan
    roots = {plan.root[s.names[0]] for s in cats}
    assert len(roots) == 1


def placed_where_read(model):
    """For each blocked Concat, that every input it leaves in place is where the output
    holds it (the arrays of the running thread)."""
    plan = model._last_plan
    env = plan.env()
    for s in concat_steps(model):
        out, at = env[s.o[0]], 0
        for k, x in enumerate(s.ins):
            if k in s.op.placed_inputs:
                assert env[s.i[k]].ctypes.data == out[:, at:].ctypes.data
            at += x.shape[1]


def test_concat_inputs_that_cannot_be_placed_are_copied(rng):
    """Concats after the block reading its features again (one of them twice): each tensor
    has one place, so the block's Concats copy what a later one holds; two images (the
    blocks of an input are then not one run of the output's bytes) place nothing."""
    extra = [(Node("Concat", "twice", ["x1", "x1"], ["tw"], {"axis": 1}), "tw"),
             (Node("Concat", "again", ["x2", "x0"], ["ag"], {"axis": 1}), "ag"),
             (Node("Relu", "rx1", ["x1"], ["x1r"]), "x1r")]
    x = f32(rng, 1, 3, 9, 10)
    model = Model(dense_block_net(np.random.default_rng(5), extra=extra))
    got = model(x)
    want = Model(dense_block_net(np.random.default_rng(5), extra=extra), layout="nchw")(x)
    for a, b in zip(got, want):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    placed_where_read(model)
    by_name = {s.node.name: s for s in concat_steps(model)}
    assert len(by_name["twice"].op.placed_inputs) <= 1        # x1 has one place at most
    assert by_name["block"].op.placed_inputs != frozenset(range(4))
    two = Model(dense_block_net(np.random.default_rng(5)))
    x2 = f32(rng, 2, 3, 9, 10)
    y2 = two(x2)
    assert all(not s.op.placed_inputs for s in concat_steps(two))
    want2 = Model(dense_block_net(np.random.default_rng(5)), layout="nchw")(x2)
    assert np.abs(y2 - want2).max() <= 1e-5 * np.abs(want2).max()


def test_a_step_writes_over_a_placed_input_only_where_the_buffer_starts(rng, threads):
    """a and b sit side by side in their Concat's output f; b dies at a Relu after f's last
    reader. The Relu may not take the buffer over from b, which sits past a: its output
    would start where a does and run over b as it reads it."""
    c = B
    consts = {"wa": f32(rng, c, c, 1, 1), "wb": f32(rng, 3 * c, c, 1, 1),
              "wf": f32(rng, c, 4 * c, 1, 1), "wz": f32(rng, c, 3 * c, 1, 1)}

    def graph():
        nodes = [Node("Conv", "ca", ["x", "wa"], ["a"]), Node("Conv", "cb", ["x", "wb"], ["b"]),
                 Node("Concat", "cat", ["a", "b"], ["f"], {"axis": 1}),
                 Node("Conv", "cf", ["f", "wf"], ["g"]),
                 Node("Relu", "rb", ["b"], ["br"]),
                 Node("Conv", "cz", ["br", "wz"], ["z"]),
                 Node("Concat", "out", ["g", "z"], ["y"], {"axis": 1})]
        return Graph(nodes, [spec("x", (1, c, 10, 9))], [spec("y")], consts)
    x = f32(rng, 1, c, 10, 9)
    model = Model(graph())
    got = model(x)
    want = Model(graph(), layout="nchw")(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    placed_where_read(model)
    assert concat_steps(model)[0].op.placed_inputs == frozenset({0, 1})
    plan = model._last_plan
    assert [s.node.name for s in plan.steps if s.node.op in ("Conv", "Relu")][2:4] == ["cf", "rb"]
    env = plan.env()
    relu = next(s for s in plan.steps if s.node.op == "Relu")
    b, br = env[relu.i[0]], env[relu.o[0]]
    # a separate buffer, or b's own bytes: never the Concat's first bytes, which are a's
    assert not np.shares_memory(b, br) or b.ctypes.data == br.ctypes.data
