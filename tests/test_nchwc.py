"""Channel-blocked (NCHWc) kernels (kernels/nchwc*.pyx); the layout pass that runs graphs on
them and the blocked steps are tests/test_nchwc_graph.py's.

References: float64 NumPy (tests/reference.py). Tolerance: max error <= 1e-5 * the largest sum
of |terms| an output adds (pointwise, depthwise), 1e-6 relative for the average pool; layout
changes are exact. 1 and 2 threads must give bit-identical results, whichever way the threads
split the work.
"""
import numpy as np
import pytest

from engine._kernels import dense, nchwc, nchwc_channels, nchwc_window, squeeze_excite
from engine.ops import blocked
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
# last group (1..4; a group of one block runs its tiles in pairs), pixel counts with every tail
# of a 6-pixel tile, batches; small planes with many output blocks make the threads split the
# groups, large planes the pixels; over 1024 input channels, the partial sums of two passes
POINTWISE = [(1, 16, 16, 4, 4), (1, 3, 5, 1, 1), (2, 24, 144, 9, 7), (1, 17, 70, 5, 13),
             (1, 64, 48, 2, 5), (1, 40, 200, 1, 7), (3, 8, 33, 3, 3), (1, 100, 20, 11, 11),
             (1, 320, 96, 7, 7), (1, 1100, 40, 5, 9)]


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
    nchwc_window.f32_depthwise_blocked(blocked.to_blocked(x), wp, bp, out, stride[0],
                                       stride[1], pt, pl, dilation[0], dilation[1],
                                       kernel_act(act), threads, by_blocks)
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
    nchwc_window.f32_grouped_blocked(blocked.to_blocked(x), wp, bp, out, 1, 1, 1, 1, 1, 1,
                                     NO_ACT, 1)
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
        nchwc_window.f32_grouped_blocked(x, np.zeros((2, 3, 3, 3, B), np.float32), bp, out,
                                         1, 1, 1, 1, 1, 1, NO_ACT, 1)
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
