"""The dense convolution on channel blocks (kernels/_nchwc_conv.h,
nchwc_dense.f32_conv2d_nchwc) and the layers the layout pass gives it: strided 3x3 and 1x1
downsampling, 1xk / kx1, larger kernels, padded 1x1; and the max pool and Concat that keep a
network blocked between them (ResNet's stem, SqueezeNet's and GoogLeNet's fire and inception
modules). Max pooling is exact: the engine's NCHW max pool is its reference.

Reference: float64 NumPy (tests/reference.py). Tolerance, per output element: 1e-6 times the
sum of |terms| that element adds (|x| * |w| over its window, plus |bias| and |residual|), about
eight float32 roundings of the largest partial sum; a whole-output bound would let a wrong
small output through. 1 and 2 threads must give bit-identical results.
"""
import numpy as np
import pytest

import engine
from engine._kernels import _info, nchwc, nchwc_channels, nchwc_dense, pool_nchwc
from engine.graph import Graph, Model, Node, TensorSpec
from engine.ops import blocked
from engine.ops.activation import NO_ACT, apply_activation, float64_activation, kernel_act
from reference import conv2d_ref

ACTS = {a: (lambda v, a=a: float64_activation(a, v))
        for a in (None, "relu", "silu", "mish", "leaky_relu(0.1)", "hardsigmoid(0.2,0.5)")}
BAD_ACT = {"code": 99, "alpha": 0.0, "beta": 0.0}
REL = 1e-6
B = blocked.BLOCK       # channels per block: 16 with AVX-512, 8 with AVX2
NAME = blocked.NAME


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def run_dense(x, wt, b, residual, stride, pads, dilation, act, threads, garbage=None,
              padded=False):
    """The kernel on x (NCHW, converted to blocks), back in NCHW. garbage: a finite value
    written into the padding channels of the input's last block, which must not matter.
    padded: on a copy of the input with its padding as zeros (the kernel's scratch, given
    from an odd float so that the kernel's own 64-byte alignment is needed)."""
    n, c = x.shape[:2]
    k, _, kh, kw = wt.shape
    oh = (x.shape[2] + sum(pads[0]) - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[3] + sum(pads[1]) - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    xb = blocked.to_blocked(x)
    if garbage is not None and c % B:
        xb[:, -1, :, :, c % B:] = garbage
    wp, bp = blocked.pack_dense(wt, b)
    out = np.full(blocked.blocked_shape((n, k, oh, ow)), np.nan, np.float32)
    r = None if residual is None else blocked.to_blocked(residual)
    scratch = None
    if padded:
        floats = nchwc_dense.dense_padded_floats(n, blocked.blocks(c), oh, ow, kh, kw, *stride,
                                                 *dilation)
        scratch = np.full(floats + 1, np.nan, np.float32)[1:]
    nchwc_dense.f32_conv2d_nchwc(xb, c, wp, bp, r, out, kh, kw, stride[0], stride[1], pads[0][0],
                             pads[1][0], dilation[0], dilation[1], kernel_act(act), threads,
                             1, scratch)
    return out


# (N, C, K, H, W, kernel, stride, pads ((top, bottom), (left, right)), dilation):
# channel counts off the block size and past one batch of input blocks (600), every number of
# output blocks in the last group (K of 1, 2, 3, 4 and 5 blocks), output widths with every
# tail of a 6-pixel tile, strides 1-3, dilations, asymmetric and zero pads, ResNet's
# downsampling layers, Inception's 1x7 / 7x1, a stem-like 7x7 on 3 channels
DENSE = [
    (1, 16, 16, 7, 7, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (2, 40, 70, 14, 13, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (1, 64, 128, 28, 28, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    (1, 17, 33, 9, 17, (1, 7), (1, 1), ((0, 0), (3, 3)), (1, 1)),
    (1, 33, 18, 17, 9, (7, 1), (1, 1), ((3, 3), (0, 0)), (1, 1)),
    (1, 20, 36, 13, 16, (3, 3), (1, 2), ((0, 2), (1, 0)), (2, 1)),
    (1, 600, 20, 9, 9, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (1, 8, 9, 23, 23, (5, 5), (3, 3), ((4, 1), (0, 3)), (2, 2)),
    (1, 3, 64, 30, 29, (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    (1, 24, 50, 5, 11, (1, 1), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 5, 5, 1, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 48, 40, 6, 6, (5, 5), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    # no padding: the unchecked tiles read the input in place (ConvNeXt's 2x2 stride 2), on
    # planes wider and taller than the windows reach; a bottom and right pad still copies
    (1, 24, 48, 14, 14, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    (1, 16, 40, 15, 13, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    (2, 16, 16, 7, 7, (2, 2), (2, 2), ((0, 1), (0, 1)), (1, 1)),
]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("n,c,k,h,w,kk,s,p,d", DENSE)
def test_dense_matches_reference_per_element_and_is_thread_independent(rng, n, c, k, h, w, kk,
                                                                       s, p, d, padded):
    """Both forms: taps checked on the input, or unchecked on a padded copy whose tiles run
    across output rows."""
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, *kk), f32(rng, k)
    ref = conv2d_ref(x, wt, b, s, p, d)
    terms = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), s, p, d)
    res = f32(rng, *ref.shape)
    for act in ACTS:
        for r in (None, res):
            got = run_dense(x, wt, b, r, s, p, d, act, 1, garbage=3.0, padded=padded)
            np.testing.assert_array_equal(got, run_dense(x, wt, b, r, s, p, d, act, 2,
                                                         padded=padded))
            # the padding channels of the output hold act(0): zero, or finite (0.5 here)
            kb = blocked.blocks(k)
            pad = got.reshape(n, kb, -1, B)[:, -1, :, k - (kb - 1) * B:]
            assert np.all(pad == apply_activation(np.zeros(1, np.float32), act)[0])
            want = ACTS[act](ref + (0 if r is None else r))
            # the activations have slopes up to 1.1 and round within 4 ulp of their own
            bound = (1.1 * REL * (terms + (0 if r is None else np.abs(r))) + 1e-30
                     + 4 * 2.0 ** -24 * np.abs(want))
            err = np.abs(blocked.from_blocked(got, k).astype(np.float64) - want)
            worst = np.unravel_index(np.argmax(err / bound), err.shape)
            assert np.all(err <= bound), (f"act {act}: error {err[worst]:.3g} at {worst} "
                                          f"over {bound[worst]:.3g}")


def run_bands(x, wt, b, stride, pads, dilation, act, threads, rows):
    """f32_conv2d_nchw_bands on x (NCHW in and out), bands of ``rows`` output rows, its work
    buffer given from an odd float and full of NaN."""
    n, c = x.shape[:2]
    k, _, kh, kw = wt.shape
    oh = (x.shape[2] + sum(pads[0]) - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[3] + sum(pads[1]) - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    wp, bp = blocked.pack_dense(wt, b)
    out = np.full((n, k, oh, ow), np.nan, np.float32)
    floats = nchwc_dense.nchw_band_floats(c, k, x.shape[2], x.shape[3], ow, min(rows, oh), kh,
                                          stride[0], dilation[0], threads)
    work = np.full(floats + 1, np.nan, np.float32)[1:]
    nchwc_dense.f32_conv2d_nchw_bands(x, wp, bp, out, kh, kw, stride[0], stride[1], pads[0][0],
                                      pads[1][0], dilation[0], dilation[1], kernel_act(act), rows,
                                      threads, work)
    return out


@pytest.mark.parametrize("n,c,k,h,w,kk,s,p,d", DENSE)
def test_dense_by_bands_from_nchw_is_the_dense_kernel_bit_for_bit(rng, n, c, k, h, w, kk, s, p,
                                                                  d):
    """NCHW in and out, each band of output rows converted to blocks and back by its thread:
    the dense kernel's sums, bit for bit, for bands of one row, of several (with a short last
    band), and of the whole map, at 1 and 2 threads; so within the reference bound above."""
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, *kk), f32(rng, k)
    for act in (None, "silu"):
        want = blocked.from_blocked(run_dense(x, wt, b, None, s, p, d, act, 1), k)
        for rows in (1, 3, 1 << 20):
            for threads in (1, 2):
                got = run_bands(x, wt, b, s, p, d, act, threads, rows)
                np.testing.assert_array_equal(got, want, err_msg=f"rows {rows}, {threads}t")


def test_dense_by_bands_reads_only_padding_in_some_bands(rng):
    """Pads larger than the map: a band whose rows read no input row gets bias and
    activation alone; the others their sums. Against float64 per element."""
    x, wt, b = f32(rng, 1, 20, 5, 6), f32(rng, 24, 20, 3, 3), f32(rng, 24)
    pads = ((6, 7), (2, 1))
    got = run_bands(x, wt, b, (2, 1), pads, (1, 1), "relu", 2, 2)
    ref = np.maximum(conv2d_ref(x, wt, b, (2, 1), pads), 0)
    scale = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), (2, 1), pads)
    assert np.all(np.abs(got - ref) <= REL * scale + 1e-30)


def test_dense_by_bands_with_a_dilation_past_the_map_buffers_the_map_at_most(rng):
    """A band's input rows are its window's or the plane's, whichever are fewer: a dilation of
    4096 rows on a 9-row map needs no more scratch than the map, and gives the reference."""
    x, wt, b = f32(rng, 1, 20, 9, 9), f32(rng, 24, 20, 3, 3), f32(rng, 24)
    d, pads = (1 << 12, 1), ((1 << 12, 1 << 12), (1, 1))
    floats = nchwc_dense.nchw_band_floats(20, 24, 9, 9, 5, 2, 3, 2, d[0], 1)
    assert floats <= 2 * (blocked.blocks(20) * B * 9 * 9 + blocked.blocks(24) * B * 2 * 5) + 64
    got = run_bands(x, wt, b, (2, 2), pads, d, None, 2, 2)
    ref = conv2d_ref(x, wt, b, (2, 2), pads, d)
    scale = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), (2, 2), pads, d)
    assert np.all(np.abs(got - ref) <= REL * scale + 1e-30)


def test_dense_by_bands_refuses_inconsistent_arguments(rng):
    x, wt, b = f32(rng, 1, 30, 8, 8), f32(rng, 20, 30, 3, 3), f32(rng, 20)
    wp, bp = blocked.pack_dense(wt, b)
    out = np.zeros((1, 20, 8, 8), np.float32)
    work = np.zeros(nchwc_dense.nchw_band_floats(30, 20, 8, 8, 8, 2, 3, 1, 1, 1), np.float32)

    def call(x=x, wp=wp, bp=bp, out=out, rows=2, work=work, threads=1):
        nchwc_dense.f32_conv2d_nchw_bands(x, wp, bp, out, 3, 3, 1, 1, 1, 1, 1, 1, NO_ACT, rows,
                                          threads, work)
    call()
    with pytest.raises(ValueError, match="wpack"):
        call(wp=wp[:-1])
    with pytest.raises(ValueError, match="bias"):
        call(bp=bp[:B])
    with pytest.raises(ValueError, match="images"):
        call(out=np.zeros((2, 20, 8, 8), np.float32))
    with pytest.raises(ValueError, match="rows"):
        call(rows=0)
    with pytest.raises(ValueError, match="work"):
        call(work=work[:-20])
    with pytest.raises(ValueError, match="work"):        # two threads need two bands' room
        call(threads=2)
    with pytest.raises(ValueError):
        call(x=np.zeros((1, 30, 8, 8), np.float32)[:, :, :, ::2])
    with pytest.raises(ValueError, match="positive"):
        nchwc_dense.nchw_band_floats(30, 20, 8, 8, 8, 0, 3, 1, 1, 1)


def test_dense_two_threads_split_a_layer_that_has_work_for_both(rng):
    """A downsampling layer of ResNet's size: the two threads take different bands and
    groups, and the result is the one thread's, bit for bit."""
    x, wt = f32(rng, 1, 128, 28, 28), f32(rng, 256, 128, 3, 3)
    pads = ((1, 1), (1, 1))
    one = run_dense(x, wt, None, None, (2, 2), pads, (1, 1), "relu", 1)
    np.testing.assert_array_equal(one, run_dense(x, wt, None, None, (2, 2), pads, (1, 1), "relu",
                                                  2))
    ref = np.maximum(conv2d_ref(x, wt, None, (2, 2), pads), 0)
    scale = conv2d_ref(np.abs(x), np.abs(wt), None, (2, 2), pads)
    assert np.all(np.abs(blocked.from_blocked(one, 256) - ref) <= REL * scale + 1e-30)


def test_dense_nonfinite_inputs_spread_like_the_direct_sum(rng):
    """An Inf or NaN in the input reaches the outputs whose window holds it, as the direct sum
    takes it; padding is read as zeros, never as the neighbouring values."""
    x, wt = f32(rng, 1, 16, 8, 8), f32(rng, 16, 16, 3, 3)
    x[0, 3, 0, 0] = np.inf
    x[0, 5, 7, 7] = np.nan
    got = blocked.from_blocked(run_dense(x, wt, None, None, (2, 2), ((1, 1), (1, 1)), (1, 1),
                                         None, 1), 16)
    with np.errstate(invalid="ignore"):
        ref = conv2d_ref(x, wt, None, (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


def test_dense_refuses_inconsistent_arguments(rng):
    x = f32(rng, 1, blocked.blocks(30), 6, 6, B)
    wp, bp = blocked.pack_dense(f32(rng, 20, 30, 3, 3), f32(rng, 20))
    out = np.zeros((1, blocked.blocks(20), 3, 3, B), np.float32)

    def call(x=x, channels=30, wp=wp, bp=bp, res=None, out=out, kh=3, sh=2, act=NO_ACT):
        nchwc_dense.f32_conv2d_nchwc(x, channels, wp, bp, res, out, kh, 3, sh, 2, 1, 1, 1, 1,
                                     act, 1)
    call()
    with pytest.raises(ValueError, match="channels"):
        call(channels=33)
    with pytest.raises(ValueError, match="channels"):
        call(channels=(x.shape[1] - 1) * B)
    with pytest.raises(ValueError, match="wpack"):
        call(wp=wp[:-1])
    with pytest.raises(ValueError, match="wpack"):
        call(kh=5)
    with pytest.raises(ValueError, match="bias"):
        call(bp=bp[:B])
    with pytest.raises(ValueError, match="act"):
        call(act=BAD_ACT)
    with pytest.raises(ValueError, match="strides"):
        call(sh=0)
    with pytest.raises(ValueError, match="residual"):
        call(res=np.zeros(out.shape[:3] + (4, B), np.float32))
    with pytest.raises(ValueError, match="images"):
        call(out=np.zeros((2,) + out.shape[1:], np.float32))
    with pytest.raises(ValueError, match="blocked"):
        call(x=np.zeros(x.shape[:4] + (B // 2,), np.float32))


# ------------------------------------------------------------------------- in a model's plan

def bottleneck(rng, c=64, mid=32, out=128):
    """A ResNet downsampling block after a 1x1 layer: 1x1 -> relu -> 3x3 stride 2 -> relu ->
    1x1, plus a 1x1 stride-2 shortcut, added, relu."""
    w = {"w0": f32(rng, c, c, 1, 1) * 0.2, "w1": f32(rng, mid, c, 1, 1) * 0.2,
         "w2": f32(rng, mid, mid, 3, 3) * 0.1,
         "w3": f32(rng, out, mid, 1, 1) * 0.2, "wd": f32(rng, out, c, 1, 1) * 0.2}
    nodes = [Node("Conv", "c0", ["x", "w0"], ["x0"]),
             Node("Conv", "c1", ["x0", "w1"], ["a1"]), Node("Relu", "r1", ["a1"], ["b1"]),
             Node("Conv", "c2", ["b1", "w2"], ["a2"], {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
             Node("Relu", "r2", ["a2"], ["b2"]),
             Node("Conv", "c3", ["b2", "w3"], ["a3"]),
             Node("Conv", "cd", ["x0", "wd"], ["d"], {"strides": [2, 2]}),
             Node("Add", "add", ["a3", "d"], ["s"]), Node("Relu", "r3", ["s"], ["y"])]
    return Graph(nodes, [TensorSpec("x", (1, c, 28, 28), "float32")],
                 [TensorSpec("y", None, "float32")], w)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_downsampling_block_runs_blocked_through_its_strided_layers(rng, threads):
    g = bottleneck(rng)
    x = f32(rng, 1, 64, 28, 28)
    saved = engine.get_num_threads()
    try:
        engine.set_num_threads(threads)
        blocked_model, nchw_model = Model(g), Model(g, layout="nchw")
        got = blocked_model({"x": x})["y"]
        text = blocked_model.explain()
        # the 3x3 stride 2 on the dense kernel, the 1x1 stride-2 shortcut on the pointwise one
        assert text.count(f"dense on {NAME}") == 1, text
        assert text.count("on the input taken every 2x2 pixels") == 1, text
        np.testing.assert_allclose(got, nchw_model({"x": x})["y"], rtol=0,
                                   atol=1e-5 * float(np.abs(got).max()))
        engine.set_num_threads(1)
        np.testing.assert_array_equal(got, Model(g)({"x": x})["y"])
    finally:
        engine.set_num_threads(saved)


@pytest.mark.parametrize("residual", [False, True])
def test_a_narrow_strided_shortcut_after_a_blocked_layer_stays_blocked(rng, residual):
    """RegNet's first shortcut: a 1x1 stride-2 layer of 32 taps reading a blocked layer's
    output (and with the block's sum added to it) runs on the pointwise blocked kernel (on the
    input taken every other pixel), not on the direct one that reads NCHW and would need a
    layout change before it; reading NCHW with no residual, the direct one."""
    from engine.dispatch import ConvParams
    from engine.dispatch.layout import blocked_kernel
    p = ConvParams(32, 32, (1, 1), (2, 2), (1, 1), 1, ((0, 0), (0, 0)), (28, 28))
    assert blocked_kernel(p)[0] == "direct"
    assert blocked_kernel(p, blocked_input=True)[0] == "pointwise"
    assert blocked_kernel(p, residual=True)[0] == "pointwise"
    w = {"w0": f32(rng, 32, 32, 1, 1) * 0.2, "w1": f32(rng, 32, 32, 1, 1) * 0.2,
         "wd": f32(rng, 32, 32, 1, 1) * 0.2, "w2": f32(rng, 32, 32, 3, 3) * 0.1}
    nodes = [Node("Conv", "c0", ["x", "w0"], ["x0"]), Node("Relu", "r0", ["x0"], ["b0"]),
             Node("Conv", "cd", ["b0", "wd"], ["d"], {"strides": [2, 2]})]
    if residual:
        nodes += [Node("Conv", "c2", ["b0", "w2"], ["a2"],
                       {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
                  Node("Add", "add", ["a2", "d"], ["s"]), Node("Relu", "r", ["s"], ["y"])]
    else:
        nodes += [Node("Conv", "c1", ["d", "w1"], ["y"])]
    g = Graph(nodes, [TensorSpec("x", (1, 32, 28, 28), "float32")],
              [TensorSpec("y", None, "float32")], w)
    model = Model(g)
    line = [t for t in model.explain().splitlines() if " cd " in t or "…cd" in t or " cd" in t]
    assert line and "on the input taken every 2x2 pixels" in line[0], model.explain()
    x = f32(rng, 1, 32, 28, 28)
    got = model({"x": x})["y"]
    np.testing.assert_allclose(got, Model(g, layout="nchw")({"x": x})["y"], rtol=0,
                               atol=1e-5 * float(np.abs(got).max()))


def test_a_lone_dense_layer_is_blocked_only_when_its_taps_pay_for_two_layout_changes(rng):
    def model(c):
        g = Graph([Node("Conv", "c", ["x", "w"], ["y"], {"pads": [0, 3, 0, 3]})],
                  [TensorSpec("x", (1, c, 17, 17), "float32")], [TensorSpec("y", None, "float32")],
                  {"w": f32(rng, 32, c, 1, 7)})
        return Model(g)
    wide, narrow = model(64), model(8)              # 448 and 56 taps
    x = f32(rng, 1, 64, 17, 17)
    assert f"dense on {NAME}" in wide.explain()
    assert f"dense on {NAME}" not in narrow.explain()
    np.testing.assert_allclose(wide({"x": x})["y"],
                               Model(wide.graph, layout="nchw")({"x": x})["y"],
                               rtol=0, atol=1e-5 * 64)


# ------------------------------------------------------------------------ max pool and Concat

# (N, C, H, W, kernel, stride, pads (top, left), dilation, ceil): ResNet's stem pool,
# SqueezeNet's ceil-mode pools, GoogLeNet's 3x3 stride 1, asymmetric windows, dilation
POOLS = [(1, 64, 112, 112, (3, 3), (2, 2), (1, 1), (1, 1), False),
         (1, 20, 111, 37, (3, 3), (2, 2), (0, 0), (1, 1), True),
         (2, 33, 13, 13, (3, 3), (1, 1), (1, 1), (1, 1), False),
         (1, 16, 9, 14, (2, 3), (2, 1), (1, 0), (1, 2), True),
         (1, 8, 5, 5, (5, 5), (3, 3), (2, 2), (1, 1), True),
         (1, 16, 40, 41, (33, 2), (1, 1), (0, 0), (1, 1), False)]   # past the row table


@pytest.mark.parametrize("n,c,h,w,kernel,stride,pads,dilation,ceil", POOLS)
def test_max_pool_on_blocks_is_the_nchw_max_pool(rng, n, c, h, w, kernel, stride, pads,
                                                 dilation, ceil):
    x = f32(rng, n, c, h, w)
    x[rng.random(x.shape) < 0.01] = np.nan
    x[rng.random(x.shape) < 0.01] = -np.inf
    ref = engine.max_pool2d(x, kernel, stride, pads, dilation, ceil_mode=ceil)
    outs = []
    for t in (1, 2):
        out = np.full(blocked.blocked_shape(ref.shape), 7.0, np.float32)
        pool_nchwc.f32_maxpool_blocked(blocked.to_blocked(x), out, *kernel, *stride, *pads,
                                         *dilation, t)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(blocked.from_blocked(outs[0], c), ref)


def test_max_pool_on_blocks_refuses_inconsistent_arguments(rng):
    x = f32(rng, 1, 2, 8, 8, B)

    def call(out_blocks=2, kh=3, sh=2):
        out = np.zeros((1, out_blocks, 4, 4, B), np.float32)
        pool_nchwc.f32_maxpool_blocked(x, out, kh, 3, sh, 2, 1, 1, 1, 1, 1)
    call()
    with pytest.raises(ValueError, match="images and blocks"):
        call(out_blocks=3)
    with pytest.raises(ValueError, match="window"):
        call(kh=0)
    with pytest.raises(ValueError, match="strides"):
        call(sh=0)


def fire_net(rng, squeeze=16, expand=32, first=48):
    """A SqueezeNet-like net: a 3x3 stride-2 stem, a ceil-mode max pool, two fire modules
    (1x1 squeeze, then 1x1 and 3x3 expands concatenated), a max pool with indices' sibling
    absent, and a pointwise head; ``first`` the stem's channels (off the block size or not)."""
    w = {"w0": f32(rng, first, 3, 3, 3) * 0.3}
    nodes = [Node("Conv", "stem", ["x", "w0"], ["s"], {"strides": [2, 2], "activation": "relu"}),
             Node("MaxPool", "pool1", ["s"], ["p"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                     "ceil_mode": 1})]
    src, c = "p", first
    for i in range(2):
        w[f"sq{i}"] = f32(rng, squeeze, c, 1, 1) * 0.3
        w[f"e1{i}"] = f32(rng, expand, squeeze, 1, 1) * 0.3
        w[f"e3{i}"] = f32(rng, expand, squeeze, 3, 3) * 0.2
        nodes += [Node("Conv", f"sq{i}", [src, f"sq{i}"], [f"q{i}"], {"activation": "relu"}),
                  Node("Conv", f"e1{i}", [f"q{i}", f"e1{i}"], [f"a{i}"], {"activation": "relu"}),
                  Node("Conv", f"e3{i}", [f"q{i}", f"e3{i}"], [f"b{i}"],
                       {"pads": [1, 1, 1, 1], "activation": "relu"}),
                  Node("Concat", f"cat{i}", [f"a{i}", f"b{i}"], [f"f{i}"], {"axis": 1})]
        src, c = f"f{i}", 2 * expand
    w["head"] = f32(rng, 10, c, 1, 1) * 0.3
    nodes += [Node("MaxPool", "pool2", [src], ["m"], {"kernel_shape": [3, 3],
                                                       "strides": [1, 1], "pads": [1, 1, 1, 1]}),
              Node("Conv", "head", ["m", "head"], ["y"])]
    return Graph(nodes, [TensorSpec("x", (1, 3, 37, 37), "float32")],
                 [TensorSpec("y", None, "float32")], w)


@pytest.mark.parametrize("first", [48, 40])
def test_a_fire_net_stays_blocked_through_its_pools_and_concats(rng, first):
    g = fire_net(rng, first=first)
    x = f32(rng, 1, 3, 37, 37)
    model, nchw = Model(g), Model(g, layout="nchw")
    text = model.explain()
    assert text.count(f"max pooling on {NAME}") == 2, text
    assert text.count(f"on {NAME}: the inputs' blocks one after another") == 2, text
    got = model.run({"x": x})["y"]
    np.testing.assert_allclose(got, nchw.run({"x": x})["y"], rtol=0,
                               atol=1e-5 * float(np.abs(got).max()))
    np.testing.assert_array_equal(got, model.run({"x": x}, num_threads=2)["y"])


def test_a_concat_of_channels_off_the_block_size_stays_nchw(rng):
    """Blocks of a tensor whose channels stop mid-block cannot be followed by another's."""
    w = {"a": f32(rng, 20, 16, 1, 1), "b": f32(rng, 16, 16, 1, 1), "c": f32(rng, 8, 36, 1, 1)}
    g = Graph([Node("Conv", "ca", ["x", "a"], ["ya"]), Node("Conv", "cb", ["x", "b"], ["yb"]),
               Node("Concat", "cat", ["ya", "yb"], ["z"], {"axis": 1}),
               Node("Conv", "cc", ["z", "c"], ["y"])],
              [TensorSpec("x", (1, 16, 9, 9), "float32")], [TensorSpec("y", None, "float32")], w)
    x = f32(rng, 1, 16, 9, 9)
    model = Model(g)
    assert "the inputs' blocks one after another" not in model.explain()
    ref = conv2d_ref(np.concatenate([conv2d_ref(x, w["a"]), conv2d_ref(x, w["b"])], axis=1),
                     w["c"])
    np.testing.assert_allclose(model.run({"x": x})["y"], ref, rtol=1e-5, atol=1e-4)


# (N, C, H, W, kernel, stride, pads ((t, b), (l, r)), dilation, ceil, count_include_pad):
# Inception's 3x3 stride-1 branch pool both ways, DenseNet's 2x2 transitions, ceil mode
AVG_POOLS = [(1, 40, 17, 17, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False, True),
             (1, 40, 17, 17, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False, False),
             (2, 32, 14, 15, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1), True, False),
             (1, 16, 9, 11, (3, 2), (2, 3), ((1, 0), (0, 1)), (2, 1), True, True)]


@pytest.mark.parametrize("n,c,h,w,kernel,stride,pads,dilation,ceil,include", AVG_POOLS)
def test_average_pool_on_blocks_matches_reference(rng, n, c, h, w, kernel, stride, pads,
                                                   dilation, ceil, include):
    from engine.ops.pool import onnx_avgpool_divisor
    from engine.shapes import onnx_pool_output_size
    x = f32(rng, n, c, h, w)
    out_size = tuple(onnx_pool_output_size(i, k, s, pb, pe, d, ceil) for i, k, s, (pb, pe), d
                     in zip((h, w), kernel, stride, pads, dilation))
    div = onnx_avgpool_divisor((h, w), out_size, kernel, stride, dilation, pads, include)
    ref = np.zeros((n, c) + out_size)
    mag = np.zeros_like(ref)
    for oy, ox in np.ndindex(*out_size):
        for u, v in np.ndindex(*kernel):
            iy = oy * stride[0] - pads[0][0] + u * dilation[0]
            ix = ox * stride[1] - pads[1][0] + v * dilation[1]
            if 0 <= iy < h and 0 <= ix < w:
                ref[:, :, oy, ox] += x[:, :, iy, ix]
                mag[:, :, oy, ox] += np.abs(x[:, :, iy, ix])
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(div > 0, ref / div, 0.0)
        mag = np.where(div > 0, mag / div, 0.0)
    outs = []
    for t in (1, 2):
        out = np.full(blocked.blocked_shape(ref.shape), 7.0, np.float32)
        pool_nchwc.f32_avgpool_blocked(blocked.to_blocked(x), out, div.astype(np.float32),
                                         *kernel, *stride, pads[0][0], pads[1][0], *dilation, t)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    got = blocked.from_blocked(outs[0], c)
    assert np.all(np.abs(got - ref) <= 1e-6 * mag + 1e-30)


def test_an_inception_branch_pool_runs_on_blocks(rng):
    """A pointwise layer, a 3x3 stride-1 average pool (count_include_pad 0 and 1), a pointwise
    layer: the pool reads and writes blocks, the values are the NCHW plan's."""
    for include in (0, 1):
        w = {"a": f32(rng, 32, 24, 1, 1) * 0.3, "b": f32(rng, 20, 32, 1, 1) * 0.3}
        g = Graph([Node("Conv", "ca", ["x", "a"], ["ya"], {"activation": "relu"}),
                   Node("AveragePool", "pool", ["ya"], ["p"],
                        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                         "count_include_pad": include}),
                   Node("Conv", "cb", ["p", "b"], ["y"])],
                  [TensorSpec("x", (1, 24, 13, 13), "float32")],
                  [TensorSpec("y", None, "float32")], w)
        x = f32(rng, 1, 24, 13, 13)
        model = Model(g)
        assert f"average pooling on {NAME}" in model.explain()
        got = model.run({"x": x})["y"]
        np.testing.assert_allclose(got, Model(g, layout="nchw").run({"x": x})["y"], rtol=0,
                                   atol=1e-5 * float(np.abs(got).max()))


def test_a_pool_reads_the_blocks_made_for_its_neighbour(rng):
    """An NCHW tensor read by a blocked pointwise layer and by a pool whose reader is blocked
    too: the pool reads the blocks made for the pointwise layer (Inception's branch pools
    beside its 1x1 branches), with no layout change before or after it; a pool whose reader
    runs on NCHW stays there. Values as the NCHW plan's."""
    def graph(blocked_reader):
        w = {"a": f32(rng, 32, 24, 1, 1) * 0.3, "b": f32(rng, 16, 24, 1, 1) * 0.3,
             "d": f32(rng, 32, 1, 3, 3) * 0.3, "e": f32(rng, 16, 1, 3, 3) * 0.3}
        branch = ([Node("Conv", "cb", ["p", "b"], ["yb0"], {"activation": "relu"}),
                   Node("Conv", "ce", ["yb0", "e"], ["yb"], {"pads": [1, 1, 1, 1],
                                                            "group": 16})]
                  if blocked_reader else
                  [Node("Conv", "cb", ["p", "b"], ["yb"], {"activation": "relu"})])
        return Graph([Node("Conv", "ca", ["x", "a"], ["ya0"], {"activation": "relu"}),
                      Node("Conv", "cd", ["ya0", "d"], ["ya"], {"pads": [1, 1, 1, 1],
                                                              "group": 32}),
                      Node("AveragePool", "pool", ["x"], ["p"],
                           {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})] + branch
                     + [Node("Concat", "cat", ["ya", "yb"], ["y"], {"axis": 1})],
                     [TensorSpec("x", (1, 24, 13, 13), "float32")],
                     [TensorSpec("y", None, "float32")], w)
    x = f32(rng, 1, 24, 13, 13)
    for blocked_reader in (True, False):
        g = graph(blocked_reader)
        model = Model(g)
        text = model.explain()
        assert (f"average pooling on {NAME}" in text) == blocked_reader, text
        if blocked_reader:      # x's blocks, shared by ca and the pool; y's NCHW
            assert text.count("ToBlocked") == 1 and text.count("FromBlocked") == 1, text
        got = model.run({"x": x})["y"]
        np.testing.assert_allclose(got, Model(g, layout="nchw").run({"x": x})["y"], rtol=0,
                                   atol=1e-5 * float(np.abs(got).max()))


def test_batch_norm_on_blocks(rng):
    """An inference BatchNormalization on blocks: x * scale + shift per channel, the fused
    activation after it, padding channels kept at zero; 1 and 2 threads alike."""
    c = 36                              # 4 channels in the last block
    x = f32(rng, 2, c, 9, 11)
    s, t = f32(rng, c), f32(rng, c)
    sp, tp = (np.zeros(blocked.blocks(c) * B, np.float32) for _ in range(2))
    sp[:c], tp[:c] = s, t
    xb = blocked.to_blocked(x)
    xb[:, -1, :, :, c % B:] = 5.0       # finite garbage in the padding lanes
    for act, f in ((NO_ACT, lambda v: v), (kernel_act("relu"), lambda v: np.maximum(v, 0)),
                   (kernel_act("relu6"), lambda v: np.clip(v, 0, 6))):
        outs = []
        for threads in (1, 2):
            out = np.full_like(xb, np.nan)
            nchwc_channels.f32_scale_shift_blocked(xb, sp, tp, out, act, threads)
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1])
        # float64 reference; the kernel's multiply-add rounds once (per element: 1 ulp of the
        # larger term)
        prod = x.astype(np.float64) * s.reshape(1, -1, 1, 1)
        want = f(prod + t.reshape(1, -1, 1, 1))
        bound = 2.0 ** -23 * (np.abs(prod) + np.abs(t).reshape(1, -1, 1, 1))
        assert np.all(np.abs(blocked.from_blocked(outs[0], c) - want) <= bound)
        assert not np.any(outs[0][:, -1, :, :, c % B:])
    with pytest.raises(ValueError, match="do not fit"):
        nchwc_channels.f32_scale_shift_blocked(xb, sp[:c], tp, xb.copy(), NO_ACT, 1)
    with pytest.raises(ValueError, match="act"):
        nchwc_channels.f32_scale_shift_blocked(xb, sp, tp, xb.copy(), BAD_ACT, 1)


def test_a_densenet_layer_stays_blocked_through_its_batch_norms(rng):
    """Concat -> BN + ReLU -> 1x1 -> BN + ReLU -> 3x3 -> Concat, DenseNet's layer: the batch
    norms run on the blocks between the blocked layers; values are the NCHW plan's."""
    c, g = 64, 32
    w = {"w0": f32(rng, c, 3, 3, 3) * 0.3, "w1": f32(rng, 4 * g, c, 1, 1) * 0.2,
         "w2": f32(rng, g, 4 * g, 3, 3) * 0.1}
    for k, ch in (("a", c), ("b", 4 * g)):
        w.update({f"{k}s": rng.uniform(0.5, 1.5, ch).astype(np.float32),
                  f"{k}b": f32(rng, ch), f"{k}m": f32(rng, ch) * 0.1,
                  f"{k}v": rng.uniform(0.5, 1.5, ch).astype(np.float32)})
    nodes = [Node("Conv", "stem", ["x", "w0"], ["s0"],
                  {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
             Node("MaxPool", "pool", ["s0"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
             Node("BatchNormalization", "bn1", ["p", "as", "ab", "am", "av"], ["n1"]),
             Node("Relu", "r1", ["n1"], ["a1"]),
             Node("Conv", "c1", ["a1", "w1"], ["y1"]),
             Node("BatchNormalization", "bn2", ["y1", "bs", "bb", "bm", "bv"], ["n2"]),
             Node("Relu", "r2", ["n2"], ["a2"]),
             Node("Conv", "c2", ["a2", "w2"], ["y2"], {"pads": [1, 1, 1, 1]}),
             Node("Concat", "cat", ["p", "y2"], ["y"], {"axis": 1})]
    graph = Graph(nodes, [TensorSpec("x", (1, 3, 32, 32), "float32")],
                  [TensorSpec("y", None, "float32")], w)
    x = f32(rng, 1, 3, 32, 32)
    model = Model(graph)
    text = model.explain()
    assert text.count("one vector of scales and shifts per block") >= 1, text
    got = model.run({"x": x})["y"]
    np.testing.assert_allclose(got, Model(graph, layout="nchw").run({"x": x})["y"], rtol=0,
                               atol=1e-5 * float(np.abs(got).max()))


def test_eight_float_builds_keep_wide_and_stem_dense_layers_on_nchw(monkeypatch):
    """Built for 8-float vectors, the dense blocked kernel takes neither layers of over
    DENSE_8F_MAX_TAPS taps that it would read without its padded copy of the input, nor stems
    of fewer input channels than DENSE_8F_MIN_IN_CHANNELS (it ran them slower than NCHW), and
    says why; narrower layers, and wide ones with the copy, it takes; 16-float builds take all
    of them."""
    from engine.dispatch import ConvParams
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV
    from engine.dispatch.layout import DENSE_8F_MAX_TAPS, blocked_kernel, padded_copy_fits
    pads = ((1, 1), (1, 1))
    wide = ConvParams(256, 256, (3, 3), (2, 2), (1, 1), 1, pads, (14, 14))
    huge = wide._replace(in_size=(400, 400))        # a 165 MB copy
    stem = ConvParams(3, 64, (7, 7), (2, 2), (1, 1), 1, ((3, 3), (3, 3)), (224, 224))
    narrow = ConvParams(64, 64, (3, 3), (2, 2), (1, 1), 1, pads, (28, 28))
    assert 64 * 9 <= DENSE_8F_MAX_TAPS < 256 * 9
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "16")
    assert [blocked_kernel(p, blocked_input=True)[0] for p in (wide, stem, narrow)] == [
        "dense"] * 3
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")
    # past DENSE_8F_MAX_TAPS only with the padded copy of its input: not on a map whose copy
    # is over DENSE_PADDED_MAX_BYTES, nor of an unknown size
    assert padded_copy_fits(wide) and not padded_copy_fits(huge)
    for p in (huge, wide._replace(in_size=None), stem):
        kind, why = blocked_kernel(p, blocked_input=True)
        assert kind is None and "8-float vectors" in why, why
    for p in (narrow, wide):
        assert blocked_kernel(p, blocked_input=True)[0] == "dense"


def test_eight_float_builds_take_small_layers_on_small_maps_whatever_their_taps(monkeypatch):
    """8-float builds: a layer with at most DENSE_8F_SMALL_MAP_PIXELS output pixels and
    DENSE_8F_SMALL_WEIGHT_BYTES of weights runs on the dense blocked kernel past
    DENSE_8F_MAX_TAPS (a strided 128->32), as do larger ones whose padded copy fits; of an
    unknown size, NCHW. 3x3 stride-1 layers run by Winograd
    on blocks (SqueezeNet's 64->256 on 13x13, DenseNet's 128->32 on 14x14), but for those of
    fewer than WINOGRAD_BLOCKED_8F_MIN_OUT output channels on maps of under
    WINOGRAD_BLOCKED_8F_MIN_PIXELS outputs (DenseNet's 128->32 on 7x7): the dense kernel,
    small as they are, or NCHW."""
    from engine.dispatch import ConvParams, choose_conv2d
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV, choose_nchw_kernels
    from engine.dispatch.layout import (DENSE_8F_MAX_TAPS, DENSE_8F_SMALL_MAP_PIXELS,
                                        DENSE_8F_SMALL_WEIGHT_BYTES,
                                        WINOGRAD_BLOCKED_8F_MIN_OUT,
                                        WINOGRAD_BLOCKED_8F_MIN_PIXELS, blocked_kernel)
    pads = ((1, 1), (1, 1))
    small = ConvParams(128, 32, (3, 3), (1, 1), (1, 1), 1, pads, (14, 14))
    seven = small._replace(in_size=(7, 7))
    expand = ConvParams(64, 256, (3, 3), (1, 1), (1, 1), 1, pads, (13, 13))
    strided = ConvParams(128, 32, (3, 3), (2, 2), (1, 1), 1, pads, (28, 28))
    assert 128 * 9 > DENSE_8F_MAX_TAPS and 14 * 14 <= DENSE_8F_SMALL_MAP_PIXELS < 28 * 28
    assert 4 * 64 * 256 * 9 <= DENSE_8F_SMALL_WEIGHT_BYTES < 4 * 256 * 128 * 9
    assert 32 < WINOGRAD_BLOCKED_8F_MIN_OUT and 49 < WINOGRAD_BLOCKED_8F_MIN_PIXELS <= 14 * 14
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")
    if _info.vector_floats() == 8:     # the NCHW tile model counts the build's GEMM panels
        assert choose_nchw_kernels(expand)[0] == "winograd_f43"
        assert choose_conv2d(expand)[0] == "winograd_f43"   # alone, NCHW in and out
    for p in (seven, strided, strided._replace(in_size=(27, 27))):
        assert blocked_kernel(p, blocked_input=True)[0] == "dense"
    for p in (small, expand, small._replace(in_size=(28, 28)), seven._replace(out_channels=64),
              small._replace(in_size=None)):
        assert blocked_kernel(p, blocked_input=True)[0] == "winograd"
    # larger: the padded copy's form (padded_copy_fits) or, of an unknown size, NCHW
    for p in (strided._replace(in_size=(56, 56)), strided._replace(out_channels=256)):
        assert blocked_kernel(p, blocked_input=True)[0] == "dense"
    assert blocked_kernel(strided._replace(in_size=None), blocked_input=True)[0] is None
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "16")
    assert blocked_kernel(seven, blocked_input=True)[0] == "winograd"


def test_the_padded_input_form_is_taken_where_it_was_measured(monkeypatch, rng):
    """dense_padded: on 8-float builds, finite weights, a copy of at most
    DENSE_PADDED_MAX_BYTES and, grouped, planes of at most GROUPED_PADDED_MAX_PIXELS in it;
    explain() says which form a blocked dense layer takes (a model
    with an infinite weight keeps the checked form: padding adds weight x 0 in the other),
    and the padded form's values are the NCHW plan's."""
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV
    from engine.dispatch.layout import (DENSE_PADDED_MAX_BYTES, GROUPED_PADDED_MAX_PIXELS,
                                        dense_padded)
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")
    big = GROUPED_PADDED_MAX_PIXELS + 1
    assert dense_padded(1, True, 1 << 20, big)[0]
    assert dense_padded(25, True, 1 << 20, 81)[0]
    for args in ((2, True, 1 << 20, big), (1, False, 1 << 20, 49),
                 (1, True, DENSE_PADDED_MAX_BYTES + 1, 49)):
        assert not dense_padded(*args)[0]
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "16")
    assert not dense_padded(1, True, 1 << 20, 49)[0]
    # a layer alone (engine.Conv2d's blocked_dense) takes the copy on any build, by the same
    # limits
    assert dense_padded(1, True, 1 << 20, 49, alone=True)[0]
    for args in ((2, True, 1 << 20, big), (1, False, 1 << 20, 49),
                 (1, True, DENSE_PADDED_MAX_BYTES + 1, 49)):
        assert not dense_padded(*args, alone=True)[0]
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")

    def graph(w3):
        w = {"a": f32(rng, 32, 16, 1, 1) * 0.3, "b": w3, "c": f32(rng, 16, 32, 1, 1) * 0.3}
        return Graph([Node("Conv", "pa", ["x", "a"], ["ya"], {"activation": "relu"}),
                      Node("Conv", "d3", ["ya", "b"], ["yb"], {"pads": [1, 1, 1, 1],
                                                              "activation": "relu"}),
                      Node("Conv", "pc", ["yb", "c"], ["y"])],
                     [TensorSpec("x", (1, 16, 9, 9), "float32")],
                     [TensorSpec("y", None, "float32")], w)
    if _info.vector_floats() != 8:
        return      # the rest needs 8-float kernels: with 16-float blocks the layout is NCHW
    x = f32(rng, 1, 16, 9, 9)
    w3 = f32(rng, 32, 32, 3, 3) * 0.1
    for weights, form in ((w3, "the input copied with its padding"),
                          (np.where(np.arange(w3.size).reshape(w3.shape) == 7, np.inf, w3)
                           .astype(np.float32), "a weight is not finite")):
        g = graph(weights)
        model = Model(g)
        text = model.explain()
        assert f"dense on {NAME}" in text and form in text, text
        if weights is w3:
            got = model.run({"x": x})["y"]
            want = Model(g, layout="nchw").run({"x": x})["y"]
            np.testing.assert_allclose(got, want, rtol=0,
                                       atol=1e-5 * float(np.abs(want).max()))


def test_eight_float_builds_run_one_block_groups_on_the_dense_kernel(monkeypatch):
    """Groups of exactly one block: the grouped kernel on 16-float builds, the dense one group
    by group on 8-float builds (its six pixels' sums hide the latency four could not)."""
    from engine.dispatch import ConvParams
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV
    from engine.dispatch.layout import blocked_kernel
    p = ConvParams(8 * B, 8 * B, (3, 3), (1, 1), (1, 1), 8, ((1, 1), (1, 1)), (14, 14))
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "16")
    assert blocked_kernel(p, blocked_input=True)[0] == "grouped"
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")
    assert blocked_kernel(p, blocked_input=True)[0] == "dense"


# (N, groups, input and output blocks per group, H, W, kernel, stride, pad): RegNet's
# 16-channel groups (two blocks where a block holds 8), groups of several blocks, more output
# than input blocks, strides and a 1x1
GROUPS_OF_BLOCKS = [(1, 5, 2, 2, 14, 14, 3, 1, 1), (2, 3, 1, 2, 9, 11, 3, 2, 1),
                    (1, 2, 3, 1, 7, 7, 3, 1, 1), (1, 4, 1, 1, 5, 6, 1, 1, 0)]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("n,groups,cbg,kbg,h,w,kk,s,p", GROUPS_OF_BLOCKS)
def test_dense_runs_groups_of_whole_blocks(rng, n, groups, cbg, kbg, h, w, kk, s, p, padded):
    """Each group of whole input and output blocks is the dense convolution of its blocks:
    per element within REL of the sum of |terms| (the direct sum of tests/reference.py), with
    a residual and an activation, 1 and 2 threads bit-identical; on the input (taps checked)
    and on a padded copy of it (scratch given NaN-filled and off 64-byte alignment)."""
    c, k = groups * cbg * B, groups * kbg * B
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c // groups, kk, kk), f32(rng, k)
    pads = ((p, p), (p, p))
    ref = conv2d_ref(x, wt, b, (s, s), pads, (1, 1), groups)
    terms = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), (s, s), pads, (1, 1), groups)
    res = f32(rng, *ref.shape)
    wp, bp = blocked.pack_dense(wt, b, groups)
    assert (wp.shape, bp.shape) == blocked.packed_shapes("dense", wt.shape)
    scratch = None
    if padded:
        floats = nchwc_dense.dense_padded_floats(n, c // B, *ref.shape[2:], kk, kk, s, s, 1, 1)
        scratch = np.full(floats + 1, np.nan, np.float32)[1:]
    outs = []
    for t in (1, 2):
        out = np.full(blocked.blocked_shape(ref.shape), np.nan, np.float32)
        nchwc_dense.f32_conv2d_nchwc(blocked.to_blocked(x), c, wp, bp, blocked.to_blocked(res),
                                     out, kk, kk, s, s, p, p, 1, 1, kernel_act("relu"), t,
                                     groups, scratch)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    want = np.maximum(ref + res, 0)
    err = np.abs(blocked.from_blocked(outs[0], k).astype(np.float64) - want)
    assert np.all(err <= REL * (terms + np.abs(res)) + 1e-30)
    with pytest.raises(ValueError, match="groups"):      # groups must split whole blocks
        nchwc_dense.f32_conv2d_nchwc(blocked.to_blocked(x), c, wp, bp, None, outs[0], kk, kk, s, s,
                                 p, p, 1, 1, NO_ACT, 1, groups * cbg * 2)


def test_a_grouped_layer_of_whole_block_groups_runs_dense_and_blocked(rng):
    """Groups of two blocks each way (RegNet-X's 16-channel groups on 8-channel blocks) run
    on the dense blocked kernel between blocked layers, values those of the NCHW plan."""
    from engine.dispatch import ConvParams
    from engine.dispatch.layout import blocked_kernel
    c = 6 * B
    p = ConvParams(c, c, (3, 3), (2, 2), (1, 1), 3, ((1, 1), (1, 1)), (14, 14))
    assert blocked_kernel(p, blocked_input=True)[0] == "dense"
    w = {"wa": f32(rng, c, 24, 1, 1) * 0.3, "wg": f32(rng, c, 2 * B, 3, 3) * 0.2,
         "wb": f32(rng, c, c, 1, 1) * 0.2}
    g = Graph([Node("Conv", "a", ["x", "wa"], ["pa"], {"activation": "relu"}),
               Node("Conv", "g", ["pa", "wg"], ["pg"], {"pads": [1, 1, 1, 1], "group": 3,
                                                         "strides": [2, 2]}),
               Node("Relu", "r", ["pg"], ["rg"]), Node("Conv", "b", ["rg", "wb"], ["y"])],
              [TensorSpec("x", (1, 24, 14, 14), "float32")], [TensorSpec("y", None, "float32")],
              w)
    x = f32(rng, 1, 24, 14, 14)
    model = Model(g)
    got = model({"x": x})["y"]
    np.testing.assert_allclose(got, Model(g, layout="nchw")({"x": x})["y"], rtol=0,
                               atol=1e-5 * float(np.abs(got).max()))
    assert "each of its 3 groups on its own blocks" in model.explain()
