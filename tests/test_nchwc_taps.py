"""Live taps on channel blocks (kernels/nchwc_taps.pyx, _nchwc_taps.h) and the layers the
layout pass gives it: stride 1, one group, the output plane the input's, where NCHW's rules
run the layer tap by tap or its taps past the map leave a 1x1 (DeepLabV3's ASPP).

Reference: float64 NumPy (tests/reference.py). Tolerance, per output element: the bound of
a recursive float32 sum of n terms, (n + 2) * 2^-24 times the sum of |terms| (|x| * |w| over
the live taps, plus |bias|), then the activation's slope (at most 1.1) and 4 ulp of its own
rounding. 1 and 2 threads must give bit-identical results.
"""
import numpy as np
import pytest

from engine._kernels import nchwc_taps
from engine.dispatch.conv import ConvParams
from engine.dispatch.conv import vector_floats
from engine.dispatch.layout import live_taps_blocked
from engine.graph import Graph, Model, Node, TensorSpec
from engine.ops import blocked
from engine.ops.activation import float64_activation, kernel_act
from engine.shapes import tap_rectangles
from reference import conv2d_ref

B = blocked.BLOCK
ACTS = (None, "relu", "silu")
EPS = 2.0 ** -24


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def table(h, w, kernel, dilation, pads):
    rects = tap_rectangles((h, w), (h, w), kernel, (1, 1), dilation,
                           (pads[0][0], pads[1][0]))
    taps = [t for t, *_ in rects]
    rows = np.array([(k, *oy, *ox, *iy) for k, (_, oy, ox, iy) in enumerate(rects)],
                    np.int32).reshape(-1, 7)
    return taps, rows


def run(x, wt, b, pads, dilation, act, threads, garbage=None):
    """The kernel on x (NCHW, converted to blocks), with the output's plane x's. garbage: a
    finite value in the padding channels of the input's last block, which must not matter."""
    n, c, h, w = x.shape
    k = wt.shape[0]
    taps, rows = table(h, w, wt.shape[2:], dilation, pads)
    wtaps, bias = blocked.pack_live_taps(wt, taps, b)
    xb = blocked.to_blocked(x)
    if garbage is not None and c % B:
        xb[:, -1, :, :, c % B:] = garbage
    out = np.full(blocked.blocked_shape((n, k, h, w)), np.nan, np.float32)
    nchwc_taps.f32_live_taps_blocked(xb, c, wtaps, bias, rows, out, kernel_act(act), threads)
    return out


# (N, C, K, H, W, kernel, pads ((top, bottom), (left, right)), dilation), every output plane
# the input's: DeepLabV3's rates 12 and 24 on 14x14 (five taps live, one), channels off the
# block size and past a batch of 8 input blocks (130), output blocks 1 to 5 (every size of the
# pointwise tile's last group), two images, asymmetric pads, unequal dilations, a 3x5 kernel,
# rows shorter than a tile of six pixels
LAYERS = [
    (1, 20, 33, 14, 14, (3, 3), ((12, 12), (12, 12)), (12, 12)),
    (1, 16, 16, 14, 14, (3, 3), ((24, 24), (24, 24)), (24, 24)),
    (2, 40, 70, 9, 11, (3, 3), ((4, 4), (4, 4)), (4, 4)),
    (1, 130, 48, 10, 10, (3, 3), ((6, 6), (6, 6)), (6, 6)),
    (1, 24, 80, 8, 13, (3, 3), ((5, 7), (8, 4)), (6, 6)),
    (1, 8, 5, 12, 9, (3, 5), ((7, 7), (6, 6)), (7, 3)),
    (1, 3, 17, 4, 5, (3, 3), ((3, 3), (3, 3)), (3, 3)),
    (1, 64, 24, 28, 28, (3, 3), ((12, 12), (12, 12)), (12, 12)),
]


@pytest.mark.parametrize("n,c,k,h,w,kernel,pads,d", LAYERS)
def test_live_taps_blocked_matches_reference_per_element_and_is_thread_independent(
        rng, n, c, k, h, w, kernel, pads, d):
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, *kernel), f32(rng, k)
    ref = conv2d_ref(x, wt, b, (1, 1), pads, d)
    assert ref.shape[2:] == (h, w)
    terms = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), (1, 1), pads, d)
    n_terms = c * kernel[0] * kernel[1] + 2
    for act in ACTS:
        got = run(x, wt, b, pads, d, act, 1, garbage=3.0)
        np.testing.assert_array_equal(got, run(x, wt, b, pads, d, act, 2))
        want = float64_activation(act, ref)
        bound = 1.1 * n_terms * EPS * terms + 1e-30 + 4 * EPS * np.abs(want)
        err = np.abs(blocked.from_blocked(got, k).astype(np.float64) - want)
        worst = np.unravel_index(np.argmax(err / bound), err.shape)
        assert np.all(err <= bound), (f"act {act}: error {err[worst]:.3g} at {worst} over "
                                      f"{bound[worst]:.3g}")


def test_two_threads_split_an_aspp_layer_bit_identically(rng):
    """DeepLabV3's rate-12 layer on 14x14 at 512->256 (four groups of output blocks) and a
    single group split into bands of rows."""
    for c, k in ((512, 256), (64, 16)):
        x, wt = f32(rng, 1, c, 14, 14), f32(rng, k, c, 3, 3)
        pads = ((12, 12), (12, 12))
        one = run(x, wt, None, pads, (12, 12), "relu", 1)
        np.testing.assert_array_equal(one, run(x, wt, None, pads, (12, 12), "relu", 2))


def test_live_taps_blocked_refuses_inconsistent_arguments(rng):
    x, wt = f32(rng, 1, 20, 14, 14), f32(rng, 16, 20, 3, 3)
    pads = ((12, 12), (12, 12))
    taps, rows = table(14, 14, (3, 3), (12, 12), pads)
    wtaps, bias = blocked.pack_live_taps(wt, taps, None)
    xb = blocked.to_blocked(x)
    out = np.zeros(blocked.blocked_shape((1, 16, 14, 14)), np.float32)

    def call(**kw):
        args = dict(x=xb, channels=20, wtaps=wtaps, bias=bias, rects=rows, out=out,
                    act=kernel_act(None), num_threads=1)
        args.update(kw)
        nchwc_taps.f32_live_taps_blocked(*args.values())

    call()
    for r, bad in ((0, (0, 0, 15, 0, 14, 0, 0)), (1, (0, 2, 14, 0, 14, 3, 0)),
                   (2, (len(taps), 0, 1, 0, 1, 0, 0)), (0, (0, 3, 3, 0, 14, 0, 0)),
                   (3, (0, 0, 1, 0, 4, 0, 11))):
        wrong = rows.copy()
        wrong[r] = bad
        with pytest.raises(ValueError, match="rects row"):
            call(rects=wrong)
    with pytest.raises(ValueError, match="channels"):
        call(channels=40)
    with pytest.raises(ValueError, match="plane"):
        call(out=np.zeros(blocked.blocked_shape((1, 16, 14, 13)), np.float32))
    with pytest.raises(ValueError, match="bias"):
        call(bias=bias[:-1])
    with pytest.raises(ValueError, match="wtaps"):
        call(wtaps=np.ascontiguousarray(wtaps[:, :-B]))
    # no tap reads the input: the bias everywhere
    none, bias0 = blocked.pack_live_taps(wt, [], np.arange(16, dtype=np.float32))
    call(wtaps=none, bias=bias0, rects=np.zeros((0, 7), np.int32))
    np.testing.assert_array_equal(blocked.from_blocked(out, 16)[0, :, 3, 5], np.arange(16))


def test_the_rule_takes_mostly_dead_taps_with_the_plane_kept():
    def p(size=14, rate=12, stride=1, groups=1, pads=None):
        pad = rate if pads is None else pads
        return ConvParams(960, 256, (3, 3), (stride, stride), (rate, rate), groups,
                          ((pad, pad), (pad, pad)), (size, size))
    if vector_floats() < 16:
        assert not live_taps_blocked(p())
        return
    assert live_taps_blocked(p())                   # five taps live
    assert live_taps_blocked(p(rate=36))            # the centre tap alone
    assert not live_taps_blocked(p(stride=2))
    assert not live_taps_blocked(p(groups=2))
    assert not live_taps_blocked(p(pads=0))         # a smaller output plane
    assert not live_taps_blocked(p(size=112, rate=2))   # most taps read the input


# ------------------------------------------------------------------------- in a model's plan

def aspp_net(rng, c, k, rate):
    """x -> 1x1 c->c (relu) -> 3x3 rate ``rate`` c->k (relu): an ASPP branch after a layer
    that writes blocks."""
    w1 = f32(rng, c, c, 1, 1) / np.float32(np.sqrt(c))
    w2 = f32(rng, k, c, 3, 3) / np.float32(np.sqrt(9 * c))
    b2 = f32(rng, k)
    nodes = [Node("Conv", "c1", ["x", "w1"], ["a"], {}),
             Node("Relu", "r1", ["a"], ["ar"]),
             Node("Conv", "c2", ["ar", "w2", "b2"], ["b"],
                  {"pads": [rate] * 4, "dilations": [rate, rate]}),
             Node("Relu", "r2", ["b"], ["y"])]
    g = Graph(nodes, [TensorSpec("x", (1, c, 14, 14), "float32")],
              [TensorSpec("y", None, "float32")],
              {"w1": w1, "w2": w2, "b2": b2})
    return g, (w1, w2, b2)


@pytest.mark.parametrize("rate,live", [(12, 9), (24, 1)])
def test_an_aspp_branch_runs_its_live_taps_on_blocks(rng, rate, live, threads):
    c, k, size = 96, 48, 14
    g, (w1, w2, b2) = aspp_net(rng, c, k, rate)
    net = Model(g)
    x = f32(rng, 1, c, size, size)
    got = net({"x": x})["y"]
    a = np.maximum(conv2d_ref(x, w1), 0)
    ref = np.maximum(conv2d_ref(a, w2, b2, (1, 1), ((rate, rate), (rate, rate)),
                                (rate, rate)), 0)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    if blocked.BLOCK < 16:
        return
    text = net.explain()
    assert f"live taps on {blocked.NAME}: {live} of 9 taps read the input" in text
    assert "FromBlocked" in text and text.count("ToBlocked") == 1
    nchw = Model(g, layout="nchw")
    assert "live taps on" not in nchw.explain()
    assert np.abs(got - nchw({"x": x})["y"]).max() <= 1e-5 * np.abs(ref).max()
