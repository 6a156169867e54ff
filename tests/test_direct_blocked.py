"""The register-blocked direct convolution (engine.ops.direct_blocked) against the float64
reference, on the shapes its blocking makes special: output channels not a multiple of the
register block (8), output widths not a multiple of the vector (16 floats with AVX-512, 8 or
4 otherwise) nor of the two-vector strip, odd row counts (a last row without a partner),
strides 1-3 (phase-split buffer rows), dilations 1-3, asymmetric padding, kernels 1, 3, 7 and
non-square, groups, batch > 1, bias and the fused activations.

Tolerance as in test_conv2d.py: the same products summed in another order, so
|y - ref| <= 1e-5 * conv(|x|, |w|) + 1e-6.
"""
import itertools

import numpy as np
import pytest

import engine
from engine import dispatch
from engine._kernels import conv_direct_blocked as kernel
from engine.ops.direct_blocked import rows_per_block
from engine.ops.activation import NO_ACT
from reference import conv2d_ref

RTOL = 1e-5


def _check(x, w, b, stride, pads, dilation, groups=1, activation=None):
    """Run direct_blocked and compare with the reference; pads ((top, bottom), (left, right))
    are given to the engine in ONNX order (begins, then ends)."""
    padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    y = engine.Conv2d(w, b, stride, padding, dilation, groups, activation=activation,
                      algorithm="direct_blocked")(x)
    ref = conv2d_ref(x, w, b, stride, pads, dilation, groups)
    mag = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, pads,
                     dilation, groups)
    if activation == "relu":
        ref = np.maximum(ref, 0)
    elif activation == "relu6":
        ref = np.clip(ref, 0, 6)
    assert y.shape == ref.shape and y.dtype == np.float32
    err = np.abs(y - ref)
    bound = RTOL * mag + 1e-6
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"error {err[worst]:.3g} > {bound[worst]:.3g} at {worst} "
                                  f"for w {w.shape}, stride {stride}, pads {pads}, "
                                  f"dilation {dilation}")
    return y


# (out_channels, output width) pairs around the block sizes: 8 channels per register block,
# 16-float vectors in pairs (a partner row or the next vector of the same row)
@pytest.mark.parametrize("k", [1, 7, 8, 9, 17, 24])
@pytest.mark.parametrize("width", [1, 5, 15, 16, 17, 31, 33, 40])
def test_channel_and_width_remainders(k, width, rng):
    x = rng.standard_normal((1, 3, 5, width), dtype=np.float32)
    w = rng.standard_normal((k, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    _check(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1))


@pytest.mark.parametrize("stride, dilation", list(itertools.product([1, 2, 3], [1, 2, 3])))
@pytest.mark.parametrize("ksize", [1, 3, 7])
def test_strides_dilations_kernels(stride, dilation, ksize, rng):
    x = rng.standard_normal((2, 5, 23, 37), dtype=np.float32)
    w = rng.standard_normal((10, 5, ksize, ksize), dtype=np.float32)
    b = rng.standard_normal(10, dtype=np.float32) if stride != dilation else None
    p = ksize // 2 * dilation
    _check(x, w, b, (stride, stride), ((p, p), (p, p)), (dilation, dilation))


@pytest.mark.parametrize("pads", [((0, 0), (0, 0)), ((2, 0), (0, 3)), ((0, 4), (5, 1)),
                                  ((3, 3), (0, 0)), ((1, 2), (2, 1))])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 3), (3, 2)])
def test_asymmetric_padding_and_strides(pads, stride, rng):
    x = rng.standard_normal((1, 4, 19, 26), dtype=np.float32)
    w = rng.standard_normal((12, 4, 3, 5), dtype=np.float32)
    _check(x, w, rng.standard_normal(12, dtype=np.float32), stride, pads, (1, 2))


def test_padding_larger_than_kernel(rng):
    # rows and columns of pure padding: whole buffer rows and phases of zeros
    x = rng.standard_normal((1, 3, 6, 7), dtype=np.float32)
    w = rng.standard_normal((9, 3, 3, 3), dtype=np.float32)
    _check(x, w, None, (2, 2), ((5, 4), (6, 3)), (1, 1))


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_bias_and_activation(activation, rng):
    x = rng.standard_normal((2, 6, 33, 35), dtype=np.float32) * 2
    w = rng.standard_normal((13, 6, 3, 3), dtype=np.float32)
    b = rng.standard_normal(13, dtype=np.float32) * 3
    y = _check(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1), activation=activation)
    assert (y == 0).any() and (activation != "relu6" or (y == 6).any())


@pytest.mark.parametrize("groups, cg, kg", [(2, 3, 5), (3, 4, 8), (4, 2, 9)])
def test_groups(groups, cg, kg, rng):
    x = rng.standard_normal((2, groups * cg, 17, 21), dtype=np.float32)
    w = rng.standard_normal((groups * kg, cg, 3, 3), dtype=np.float32)
    _check(x, w, rng.standard_normal(groups * kg, dtype=np.float32), (2, 1),
           ((1, 1), (1, 1)), (1, 2), groups)


def test_first_layers_of_cnns(rng):
    # the shapes the dispatcher sends here, at a reduced size: a 7x7 stem, a 3x3 stride-2
    # first layer, a strided 1x1 shortcut, a few-channel 3x3 stride 1
    x = rng.standard_normal((1, 3, 64, 72), dtype=np.float32)
    _check(x, rng.standard_normal((16, 3, 7, 7), dtype=np.float32), None, (1, 1),
           ((3, 3), (3, 3)), (1, 1))
    _check(x, rng.standard_normal((32, 3, 3, 3), dtype=np.float32), None, (2, 2),
           ((1, 1), (1, 1)), (1, 1))
    x = rng.standard_normal((1, 16, 48, 50), dtype=np.float32)
    _check(x, rng.standard_normal((32, 16, 1, 1), dtype=np.float32), None, (2, 2),
           ((0, 0), (0, 0)), (1, 1))
    _check(x, rng.standard_normal((16, 16, 3, 3), dtype=np.float32), None, (1, 1),
           ((1, 1), (1, 1)), (1, 1))


def test_many_row_blocks(rng):
    # tall image with many channels: several row blocks per image, each with its halo
    x = rng.standard_normal((1, 64, 70, 40), dtype=np.float32)
    w = rng.standard_normal((8, 64, 3, 3), dtype=np.float32)
    rows = rows_per_block(64, (3, 3), (1, 1), (1, 1), (70, 40))
    assert rows < 70 // 2
    _check(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1))


def test_row_blocks_follow_the_work_items(rng):
    """A grouped layer's groups are work items already: its rows stay whole unless the images
    and groups give fewer than MIN_BLOCKS items (RegNetX's 25 groups on 7x7 maps)."""
    from engine.ops.direct_blocked import MIN_BLOCKS
    assert rows_per_block(16, (3, 3), (1, 1), (1, 1), (7, 7)) == 2         # 4 blocks of one image
    assert rows_per_block(16, (3, 3), (1, 1), (1, 1), (7, 7), items=25) == 7
    assert rows_per_block(16, (3, 3), (1, 1), (1, 1), (7, 7), items=2) == 4
    assert rows_per_block(16, (3, 3), (1, 1), (1, 1), (7, 7), items=MIN_BLOCKS) == 7
    # and the grouped layer on whole rows agrees with the reference at 1 and 2 threads
    x = rng.standard_normal((1, 400, 7, 7), dtype=np.float32)
    w = rng.standard_normal((400, 16, 3, 3), dtype=np.float32)
    b = rng.standard_normal(400, dtype=np.float32)
    ys = [engine.Conv2d(w, b, 1, 1, 1, 25, "relu", "direct_blocked", num_threads=t)(x)
          for t in (1, 2)]
    ref = np.maximum(conv2d_ref(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1), groups=25), 0)
    np.testing.assert_allclose(ys[0], ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ys[0], ys[1])


def test_more_threads_cut_more_row_blocks_without_changing_a_value(rng):
    """From two threads on, MIN_ITEMS_PER_THREAD items a thread (a 7x7 stride-2 stem's 112
    rows in 8 blocks, not 4): the blocks differ between thread counts, the sums do not."""
    from engine.ops.direct_blocked import MIN_ITEMS_PER_THREAD
    stem = (3, (7, 7), (2, 2), (1, 1), (112, 112))
    assert -(-112 // rows_per_block(*stem)) == 4
    assert -(-112 // rows_per_block(*stem, threads=2)) == 2 * MIN_ITEMS_PER_THREAD
    assert rows_per_block(16, (3, 3), (1, 1), (1, 1), (7, 7), items=25, threads=2) == 7
    x = rng.standard_normal((1, 3, 61, 67), dtype=np.float32)
    w = rng.standard_normal((20, 3, 7, 7), dtype=np.float32)
    b = rng.standard_normal(20, dtype=np.float32)
    ys = [engine.Conv2d(w, b, 2, 3, algorithm="direct_blocked", num_threads=t)(x)
          for t in (1, 2, 3)]
    ref = conv2d_ref(x, w, b, (2, 2), ((3, 3), (3, 3)), (1, 1))
    np.testing.assert_allclose(ys[0], ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


def test_torch_cross_check(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 6, 29, 41), dtype=np.float32)
    for ws, kw in [((11, 6, 3, 3), dict(padding=1)), ((16, 6, 7, 7), dict(stride=2, padding=3)),
                   ((10, 3, 3, 3), dict(groups=2, dilation=2, padding=2)),
                   ((20, 6, 1, 1), dict(stride=3))]:
        w = rng.standard_normal(ws, dtype=np.float32)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                         torch.from_numpy(b), **kw).numpy()
        y = engine.conv2d(x, w, b, algorithm="direct_blocked", **kw)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("shape, wshape, kw", [
    ((2, 16, 64, 70), (24, 16, 3, 3), dict(padding=1)),
    ((1, 3, 90, 96), (16, 3, 7, 7), dict(padding=3, stride=2)),
    ((1, 8, 61, 53), (12, 4, 3, 3), dict(padding=2, dilation=2, groups=2)),
    ((1, 440, 7, 7), (440, 8, 3, 3), dict(padding=1, groups=55)),        # RegNet's 7x7 stage
])
def test_thread_count_does_not_change_result(shape, wshape, kw, rng, threads):
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal(wshape, dtype=np.float32)
    b = rng.standard_normal(wshape[0], dtype=np.float32)
    layer = engine.Conv2d(w, b, algorithm="direct_blocked", **kw)
    y = layer(x)
    y1 = engine.Conv2d(w, b, algorithm="direct_blocked", num_threads=1, **kw)(x)
    assert np.array_equal(y, y1)


def test_out_buffer_and_repeated_calls(rng):
    x = rng.standard_normal((1, 5, 30, 34), dtype=np.float32)
    w = rng.standard_normal((9, 5, 3, 3), dtype=np.float32)
    layer = engine.Conv2d(w, padding=1, algorithm="direct_blocked")
    out = np.full((1, 9, 30, 34), np.nan, np.float32)
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, layer(x))
    # a smaller input after a larger one reuses the workspace: nothing stale may leak in
    small = layer(x[:, :, :7, :9])
    np.testing.assert_allclose(small, conv2d_ref(x[:, :, :7, :9], w, None, (1, 1),
                                                 ((1, 1), (1, 1))), rtol=1e-5, atol=1e-5)


def test_dispatch_and_limits():
    p = dispatch.ConvParams(3, 16, (7, 7), (1, 1), (1, 1), 1, ((3, 3), (3, 3)), (224, 224))
    assert dispatch.choose_conv2d(p)[0] == "direct_blocked"
    assert dispatch.estimated_ms("direct_blocked", p) > 0
    # without the input size the width (vector waste) is unknown: the rule stays out
    unsized = dispatch.ConvParams(16, 16, (3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)))
    assert dispatch.choose_conv2d(unsized)[0].startswith("winograd_f")
    assert "direct_blocked" in dict(dispatch.conv2d_candidates(p))
    wide = dispatch.ConvParams(3, 16, (1, 65), (1, 1), (1, 1), 1, ((0, 0), (0, 0)), (8, 80))
    assert "64" in dispatch.why_not("direct_blocked", wide)
    with pytest.raises(ValueError, match="direct_blocked' cannot run"):
        engine.Conv2d(np.ones((2, 1, 1, 65), np.float32), algorithm="direct_blocked")


def test_dispatch_on_8_float_builds(monkeypatch):
    """With 8-float vectors (AVX2) direct_blocked takes outputs from 7 columns (grouped
    RegNet layers, small maps), but leaves 3x3 stride-1 layers on wide maps with more than 16
    channels a side to Winograd; the AVX-512 rule keeps its 28 columns. These are the rules
    among the NCHW kernels (a layer alone may go to channel blocks before them: tests/
    test_conv2d.py test_eight_float_builds_run_layers_alone_on_blocks)."""
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV, choose_nchw_kernels

    def choice(c, k, size, stride=1, groups=1):
        return choose_nchw_kernels(dispatch.ConvParams(
            c, k, (3, 3), (stride, stride), (1, 1), groups, ((1, 1), (1, 1)), (size, size)))[0]
    grouped = (208, 208, 14, 1, 26)
    assert choice(*grouped) != "direct_blocked"                       # 16-float rules
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")
    assert choice(*grouped) == "direct_blocked"
    assert choice(440, 440, 7, 1, 55) == "direct_blocked"
    assert choice(208, 208, 28, 2, 26) == "direct_blocked"
    assert choice(32, 32, 14) == "direct_blocked"
    assert choice(32, 32, 112).startswith("winograd")
    assert choice(16, 64, 112).startswith("winograd")
    assert choice(16, 16, 224) == "direct_blocked"
    strided_1x1 = dispatch.ConvParams(16, 32, (1, 1), (2, 2), (1, 1), 1, ((0, 0), (0, 0)),
                                      (224, 224))
    assert choose_nchw_kernels(strided_1x1)[0] == "im2col"


def test_kernel_rejects_bad_arguments(rng):
    x = rng.standard_normal((1, 4, 10, 10), dtype=np.float32)
    out = np.empty((1, 8, 10, 10), np.float32)
    wpack = np.zeros(8 * 4 * 9, np.float32)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 1, 10, NO_ACT, 1)
    with pytest.raises(ValueError, match="work"):
        kernel.f32_conv2d_direct_blocked(x, wpack, None, out, np.empty(10, np.float32), *args)
    work = np.empty(1 << 16, np.float32)
    with pytest.raises(ValueError, match="wpack"):
        kernel.f32_conv2d_direct_blocked(x, wpack[:-1], None, out, work, *args)
    with pytest.raises(ValueError, match="bias"):
        kernel.f32_conv2d_direct_blocked(x, wpack, np.zeros(3, np.float32), out, work, *args)
    kernel.f32_conv2d_direct_blocked(x, wpack, None, out, work, *args)
    assert not out.any()
