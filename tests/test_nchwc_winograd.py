"""Winograd F(2x2), F(4x4) and F(6x6) on channel blocks (kernels/nchwc_winograd.pyx,
_nchwc_winograd.h) and the layers the layout pass gives it: 3x3 stride 1, one group from
WINOGRAD_BLOCKED_MIN_IN input channels, or groups of whole blocks on maps of
GROUPED_WINOGRAD_MIN_PIXELS outputs.

Reference: float64 NumPy (tests/reference.py). Tolerance, per output element: REL[m] times the
largest sum of |terms| (|x| * |w| over a window, plus |bias| and |residual|) among the outputs
of an (m+2) x (m+2) neighbourhood, as the transforms mix a tile's whole patch. The worst
measured on this file's layers, as a fraction of that: 1.4e-7 (F(2x2)), 2.6e-6 (F(4x4)),
3.9e-6 (F(6x6)); the bounds are 4-7x that. 1 and 2 threads must give bit-identical results.
"""
import numpy as np
import pytest
from scipy.ndimage import maximum_filter

import engine
from engine._kernels import nchwc_winograd as nw
from engine.dispatch.layout import GROUPED_WINOGRAD_MIN_PIXELS, WINOGRAD_BLOCKED_MIN_IN
from engine.dispatch.policy import ChoicePolicy
from engine.graph import Graph, Model, Node, TensorSpec
from engine.ops import blocked
from engine.ops.activation import NO_ACT, float64_activation, kernel_act
from reference import conv2d_ref

REL = {2: 1e-6, 4: 1e-5, 6: 2e-5}
B = blocked.BLOCK
ACTS = (None, "relu", "silu", "hardsigmoid(0.2,0.5)")


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def work_for(xb, k, m, oh, ow, dh=1, dw=1, threads=1, per_call=False, groups=1):
    floats = blocked.winograd_work_floats(xb.shape[0], xb.shape[1] * B, k, (oh, ow), m,
                                          (dh, dw), threads, per_call, groups)
    work = np.full(floats + 32, np.nan, np.float32)
    return work[(-work.ctypes.data % 64) // 4:]


def run(x, wt, b, residual, pads, m, act, threads, garbage=None, dilation=(1, 1),
        per_call=False, groups=1):
    """The kernel on x (NCHW, converted to blocks): (ran, output blocks). garbage: a finite
    value in the padding channels of the input's last block, which must not matter.
    per_call: U made per call from the weights' taps."""
    n, c, h, w = x.shape
    k = wt.shape[0]
    dh, dw = dilation
    oh, ow = h + sum(pads[0]) - 2 * dh, w + sum(pads[1]) - 2 * dw
    xb = blocked.to_blocked(x)
    if garbage is not None and c % B:
        xb[:, -1, :, :, c % B:] = garbage
    if per_call:
        upack, bias = blocked.pack_winograd_taps(wt, b)
    else:
        upack, bias = blocked.pack_winograd(wt, b, m, groups)
    out = np.full(blocked.blocked_shape((n, k, oh, ow)), np.nan, np.float32)
    r = None if residual is None else blocked.to_blocked(residual)
    ran = nw.f32_winograd_blocked(xb, c, upack, bias, r, out, m, pads[0][0], pads[1][0],
                                  kernel_act(act), threads,
                                  work_for(xb, k, m, oh, ow, dh, dw, threads, per_call,
                                           groups),
                                  dh, dw, blocked.winograd_g(m) if per_call else None, groups)
    return ran, out


# (N, C, K, H, W, pads ((top, bottom), (left, right)), dilation): channels off the block size
# and past a batch of 8 input blocks (130), output blocks 1 to 5 (every size of the pointwise
# kernel's last group), maps that end in every tail of a tile, maps smaller than a tile,
# asymmetric and zero pads, two images, a layer of several strips (64 channels on 58x58), and
# dilations: DRN's 2 and 4, unequal ones, phase maps of one or two pixels, a rate past the map
LAYERS = [
    (1, 16, 16, 8, 8, ((1, 1), (1, 1)), (1, 1)),
    (1, 20, 33, 13, 11, ((1, 1), (1, 1)), (1, 1)),
    (2, 5, 7, 9, 10, ((0, 0), (0, 0)), (1, 1)),
    (1, 40, 70, 7, 7, ((2, 0), (1, 2)), (1, 1)),
    (1, 3, 17, 30, 31, ((1, 1), (1, 1)), (1, 1)),
    (1, 130, 48, 6, 5, ((1, 1), (0, 1)), (1, 1)),
    (1, 24, 80, 3, 3, ((1, 1), (1, 1)), (1, 1)),
    (1, 8, 8, 1, 2, ((1, 1), (1, 1)), (1, 1)),
    (1, 64, 24, 58, 58, ((1, 1), (1, 1)), (1, 1)),
    (1, 32, 24, 28, 28, ((2, 2), (2, 2)), (2, 2)),
    (1, 20, 17, 29, 27, ((4, 4), (4, 4)), (4, 4)),
    (2, 8, 9, 13, 15, ((4, 3), (1, 4)), (4, 3)),
    (1, 16, 16, 7, 9, ((5, 5), (5, 5)), (5, 5)),
    (1, 24, 40, 14, 14, ((12, 12), (12, 12)), (12, 12)),
]


@pytest.mark.parametrize("per_call", [False, True], ids=["stored", "per_call"])
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("n,c,k,h,w,pads,d", LAYERS)
def test_winograd_blocked_matches_reference_per_element_and_is_thread_independent(
        rng, n, c, k, h, w, pads, d, m, per_call):
    """U made once (in float64, rounded once) or per call (in float32) from the taps."""
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, 3, 3), f32(rng, k)
    ref = conv2d_ref(x, wt, b, (1, 1), pads, d)
    terms = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), (1, 1), pads, d)
    res = f32(rng, *ref.shape)
    for act in ACTS:
        for r in (None, res):
            ran, got = run(x, wt, b, r, pads, m, act, 1, garbage=3.0, dilation=d,
                           per_call=per_call)
            ran2, got2 = run(x, wt, b, r, pads, m, act, 2, dilation=d, per_call=per_call)
            assert ran and ran2
            np.testing.assert_array_equal(got, got2)
            want = float64_activation(act, ref + (0 if r is None else r))
            # a tile's patch: m + 2 samples d apart each way
            scale = maximum_filter(terms + (0 if r is None else np.abs(r)),
                                   size=(1, 1, (m + 2) * d[0], (m + 2) * d[1]))
            # the activations have slopes up to 1.1 and round within 4 ulp of their own
            bound = 1.1 * REL[m] * scale + 1e-30 + 4 * 2.0 ** -24 * np.abs(want)
            err = np.abs(blocked.from_blocked(got, k).astype(np.float64) - want)
            worst = np.unravel_index(np.argmax(err / bound), err.shape)
            assert np.all(err <= bound), (f"act {act}: error {err[worst]:.3g} at {worst} "
                                          f"over {bound[worst]:.3g}")


# (N, groups, C / groups, K / groups, H, W, pads): whole blocks a group, one or two each way,
# RegNet's maps, a small map of one strip, two images, asymmetric pads
GROUPED = [
    (1, 8, B, B, 28, 28, ((1, 1), (1, 1))),
    (1, 3, 2 * B, B, 13, 9, ((1, 1), (1, 1))),
    (2, 4, B, 2 * B, 11, 17, ((2, 0), (1, 1))),
    (1, 25, B, B, 7, 7, ((1, 1), (1, 1))),
    (1, 2, B, B, 58, 58, ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("n,groups,cg,kg,h,w,pads", GROUPED)
def test_grouped_winograd_blocked_matches_reference_per_element(rng, n, groups, cg, kg, h, w,
                                                                pads, m):
    """Each group a layer of its own blocks, U packed group after group: against float64 per
    element (the bound of the one-group sweep above), with a residual and activations, and
    bit-identical at 1 and 2 threads (whole (group, strip) units or shared phases)."""
    c, k = groups * cg, groups * kg
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, cg, 3, 3), f32(rng, k)
    ref = conv2d_ref(x, wt, b, (1, 1), pads, groups=groups)
    terms = conv2d_ref(np.abs(x), np.abs(wt), np.abs(b), (1, 1), pads, groups=groups)
    res = f32(rng, *ref.shape)
    for act, r in ((None, None), ("relu", res), ("silu", None)):
        ran, got = run(x, wt, b, r, pads, m, act, 1, groups=groups)
        ran2, got2 = run(x, wt, b, r, pads, m, act, 2, groups=groups)
        assert ran and ran2
        np.testing.assert_array_equal(got, got2)
        want = float64_activation(act, ref + (0 if r is None else r))
        scale = maximum_filter(terms + (0 if r is None else np.abs(r)),
                               size=(1, 1, m + 2, m + 2))
        bound = 1.1 * REL[m] * scale + 1e-30 + 4 * 2.0 ** -24 * np.abs(want)
        err = np.abs(blocked.from_blocked(got, k).astype(np.float64) - want)
        assert np.all(err <= bound), f"act {act}: worst {np.max(err / bound):.3g} of the bound"


def test_two_threads_split_a_layer_of_several_strips(rng):
    """ResNet's 256->256 on 14x14 and a map of several strips: bit-identical at 1 and 2
    threads, each tile size."""
    for c, size in ((256, 14), (64, 56)):
        x, wt = f32(rng, 1, c, size, size), f32(rng, c, c, 3, 3)
        for m in (2, 4, 6):
            for per_call in (False, True):
                one = run(x, wt, None, None, ((1, 1), (1, 1)), m, "relu", 1,
                          per_call=per_call)[1]
                two = run(x, wt, None, None, ((1, 1), (1, 1)), m, "relu", 2,
                          per_call=per_call)[1]
                np.testing.assert_array_equal(one, two)


def test_a_nonfinite_input_is_reported_and_not_spread(rng):
    """The kernel says so when an input is not finite, wherever it lies (a later strip
    too); the graph step then runs the dense blocked kernel, whose NaN and Inf reach only the
    outputs whose window holds them."""
    x, wt = f32(rng, 1, 64, 58, 58), f32(rng, 16, 64, 3, 3)
    assert run(x, wt, None, None, ((1, 1), (1, 1)), 4, None, 1)[0]
    for y, xx, v in ((0, 0, np.inf), (57, 57, np.nan), (30, 2, -np.inf)):
        bad = x.copy()
        bad[0, 5, y, xx] = v
        assert not run(bad, wt, None, None, ((1, 1), (1, 1)), 4, None, 2)[0]
    x = f32(rng, 1, 32, 12, 12)
    x[0, 3, 0, 0] = np.inf
    x[0, 7, 6, 6] = np.nan
    g, (w1, _, _) = conv_net(rng, 32, 32, 12)
    g.nodes = g.nodes[:1]
    g.outputs = [TensorSpec("a", None, "float32")]
    net = Model(g)
    assert "winograd_f" in net.explain()
    got = net({"x": x})["a"]
    with np.errstate(invalid="ignore"):
        ref = conv2d_ref(x, w1, None, (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    assert np.allclose(got[fin], ref[fin], rtol=1e-4, atol=1e-4 * np.abs(ref[fin]).max())


def test_winograd_blocked_refuses_inconsistent_arguments(rng):
    x = blocked.to_blocked(f32(rng, 1, 30, 8, 8))
    upack, bias = blocked.pack_winograd(f32(rng, 20, 30, 3, 3), f32(rng, 20), 4)
    out = np.zeros(blocked.blocked_shape((1, 20, 8, 8)), np.float32)
    work = work_for(x, 20, 4, 8, 8)

    def call(x=x, channels=30, up=upack, bp=bias, res=None, out=out, m=4, pt=1, act=NO_ACT,
             work=work):
        return nw.f32_winograd_blocked(x, channels, up, bp, res, out, m, pt, 1, act, 1, work)
    assert call()
    with pytest.raises(ValueError, match="channels"):
        call(channels=33)
    with pytest.raises(ValueError, match="upack"):
        call(up=upack[:-1])
    with pytest.raises(ValueError, match="upack"):
        call(m=2)
    with pytest.raises(ValueError, match="m must be"):
        call(m=3)
    taps, _ = blocked.pack_winograd_taps(f32(rng, 20, 30, 3, 3))
    with pytest.raises(ValueError, match="g must be"):
        nw.f32_winograd_blocked(x, 30, taps, bias, None, out, 4, 1, 1, NO_ACT, 1,
                                work_for(x, 20, 4, 8, 8, per_call=True), 1, 1,
                                blocked.winograd_g(2))
    with pytest.raises(ValueError, match="work"):       # no room for the U buffers
        nw.f32_winograd_blocked(x, 30, taps, bias, None, out, 4, 1, 1, NO_ACT, 1, work, 1, 1,
                                blocked.winograd_g(4))
    with pytest.raises(ValueError, match="bias"):
        call(bp=bias[:B])
    with pytest.raises(ValueError, match="pads"):
        call(pt=-1)
    with pytest.raises(ValueError, match="residual"):
        call(res=np.zeros(out.shape[:3] + (4, B), np.float32))
    with pytest.raises(ValueError, match="images"):
        call(out=np.zeros((2,) + out.shape[1:], np.float32))
    with pytest.raises(ValueError, match="work"):
        call(work=work[:100])
    with pytest.raises(ValueError, match="work"):
        call(work=work[1:])
    with pytest.raises(ValueError, match="blocked"):
        call(x=np.zeros(x.shape[:4] + (B // 2,), np.float32))
    # groups must split the blocks both ways, and U made per call takes one group
    x2 = blocked.to_blocked(f32(rng, 1, 2 * B, 8, 8))
    up2, b2 = blocked.pack_winograd(f32(rng, 3 * B, B, 3, 3), None, 4, 2)
    out3 = np.zeros(blocked.blocked_shape((1, 3 * B, 8, 8)), np.float32)
    with pytest.raises(ValueError, match="groups"):
        nw.f32_winograd_blocked(x2, 2 * B, up2, b2, None, out3, 4, 1, 1, NO_ACT, 1,
                                work_for(x2, 3 * B, 4, 8, 8, groups=1), groups=2)
    with pytest.raises(ValueError, match="groups"):
        nw.f32_winograd_blocked(x2, 2 * B, taps[:0], b2, None, out3[:, :2], 4, 1, 1, NO_ACT,
                                1, work_for(x2, 2 * B, 4, 8, 8, per_call=True), 1, 1,
                                blocked.winograd_g(4), 2)


# ------------------------------------------------------------------------- in a model's plan

def conv_net(rng, c, k, size=None):
    """x -> 3x3 c->k (relu) -> 3x3 k->k (+ x's first conv's output as residual, relu)."""
    w1 = f32(rng, k, c, 3, 3) / np.float32(np.sqrt(9 * c))
    w2 = f32(rng, k, k, 3, 3) / np.float32(np.sqrt(9 * k))
    b2 = f32(rng, k)
    nodes = [Node("Conv", "c1", ["x", "w1"], ["a"], {"pads": [1, 1, 1, 1]}),
             Node("Relu", "r1", ["a"], ["ar"]),
             Node("Conv", "c2", ["ar", "w2", "b2"], ["b"], {"pads": [1, 1, 1, 1]}),
             Node("Add", "add", ["b", "ar"], ["s"]),
             Node("Relu", "r2", ["s"], ["y"])]
    g = Graph(nodes, [TensorSpec("x", (1, c, size, size) if size else None, "float32")],
              [TensorSpec("y", None, "float32")], {"w1": w1, "w2": w2, "b2": b2})
    return g, (w1, w2, b2)


@pytest.mark.parametrize("c,k,size", [(32, 32, 12), (64, 48, 28), (WINOGRAD_BLOCKED_MIN_IN,
                                                                     20, 9)])
def test_a_residual_pair_runs_on_blocks_by_winograd(rng, c, k, size, threads):
    """Both 3x3 layers by Winograd on blocks, the second with its residual add and relu
    fused, no layout change between them; the values are the NCHW plan's."""
    g, (w1, w2, b2) = conv_net(rng, c, k, size)
    net = Model(g)
    x = f32(rng, 1, c, size, size)
    text = net.explain()
    assert text.count(f"on {blocked.NAME}: the transforms") == 2 and "+ residual add" in text
    assert text.count("ToBlocked") == 1
    a = np.maximum(conv2d_ref(x, w1, None, (1, 1), ((1, 1), (1, 1))), 0)
    ref = np.maximum(conv2d_ref(a, w2, b2, (1, 1), ((1, 1), (1, 1))) + a, 0)
    got = net({"x": x})["y"]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    nchw = Model(g, layout="nchw")
    assert f"on {blocked.NAME}" not in nchw.explain()
    assert np.abs(got - nchw({"x": x})["y"]).max() <= 1e-4 * np.abs(ref).max()


def test_strict_accuracy_keeps_the_large_tiles_off_the_blocked_layers(rng):
    g, _ = conv_net(rng, 64, 64, 28)
    strict = Model(g, policy=ChoicePolicy(accuracy="strict"))
    text = strict.explain()
    assert "winograd_f23 on" in text and "winograd_f43" not in text and \
        "winograd_f63" not in text


def grouped_net(rng, c, groups, size):
    """x -> 1x1 c->c (relu) -> 3x3 grouped c->c (relu): RegNet-X's body, its groups of whole
    blocks."""
    w1 = f32(rng, c, c, 1, 1) / np.float32(np.sqrt(c))
    w2 = f32(rng, c, c // groups, 3, 3) / np.float32(np.sqrt(9 * c / groups))
    b2 = f32(rng, c)
    nodes = [Node("Conv", "c1", ["x", "w1"], ["a"]),
             Node("Relu", "r1", ["a"], ["ar"]),
             Node("Conv", "c2", ["ar", "w2", "b2"], ["b"],
                  {"pads": [1, 1, 1, 1], "group": groups}),
             Node("Relu", "r2", ["b"], ["y"])]
    g = Graph(nodes, [TensorSpec("x", (1, c, size, size), "float32")],
              [TensorSpec("y", None, "float32")], {"w1": w1, "w2": w2, "b2": b2})
    return g, (w1, w2, b2)


@pytest.mark.skipif(B != 16, reason="Winograd on blocks runs on 16-float builds")
def test_grouped_layers_of_whole_blocks_run_by_winograd_on_large_maps(rng):
    """On a map of GROUPED_WINOGRAD_MIN_PIXELS outputs the grouped 3x3 runs by Winograd on
    blocks (the values the NCHW plan's, to the Winograd bound); on a smaller one the grouped
    kernel keeps it, its U would come from memory on every call. A non-finite input takes the
    dense kernel's grouped sums."""
    side = int(np.sqrt(GROUPED_WINOGRAD_MIN_PIXELS))
    for size, winograd in ((side, True), (side // 2, False)):
        g, (w1, w2, b2) = grouped_net(rng, 8 * B, 8, size)
        net = Model(g)
        text = net.explain()
        assert ("winograd_f" in text) == winograd, text
        x = f32(rng, 1, 8 * B, size, size)
        a = np.maximum(conv2d_ref(x, w1), 0)
        ref = np.maximum(conv2d_ref(a, w2, b2, (1, 1), ((1, 1), (1, 1)), groups=8), 0)
        got = net({"x": x})["y"]
        assert np.abs(got - ref).max() <= 2e-5 * np.abs(ref).max()
        if winograd:
            x[0, 3, 5, 5] = np.inf
            with np.errstate(invalid="ignore"):
                a = np.maximum(conv2d_ref(x, w1), 0)
                ref = np.maximum(conv2d_ref(a, w2, b2, (1, 1), ((1, 1), (1, 1)), groups=8), 0)
            got = net({"x": x})["y"]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
            fin = np.isfinite(ref)
            assert np.abs(got[fin] - ref[fin]).max() <= 1e-4 * np.abs(ref[fin]).max()
