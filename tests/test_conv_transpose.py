"""Transposed convolution (engine.conv_transpose2d / conv_transpose1d / ConvTranspose2d)
against a float64 scatter reference written from the definition, and against torch."""
import itertools

import numpy as np
import pytest

import engine
from engine._kernels import conv_transpose as ct_kernel
from engine.ops import conv_transpose as conv_transpose_mod
from engine.ops.workspace import workspace
from engine.ops.activation import NO_ACT


# Float32 tolerance. Inputs and weights are N(0, 1); where TOL is used each output sums at
# most 96 products (in_channels/groups * kh * kw), whose float32 rounding errors add up to
# about sqrt(96) * 2**-24 * |output| ~ 1e-6 relative, 1e-5 at worst. 1e-4 leaves headroom for
# any summation order and still catches a misplaced tap, which is off by O(1).
TOL = dict(rtol=1e-4, atol=1e-4)
ALGORITHMS = ("col2im", "zero_insert")


def conv_transpose2d_ref(x, w, b=None, stride=(1, 1), pads=((0, 0), (0, 0)),
                         output_padding=(0, 0), dilation=(1, 1), groups=1):
    """From the definition: every input pixel times the (dilated) kernel is added into the
    output at (iy*sh + u*dh, ix*sw + v*dw); then `pads` is cut off each side. output_padding
    extends the uncut output at the bottom/right. pads: ((top, bottom), (left, right))."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, cin, h, wd = x.shape
    _, kg, kh, kw = w.shape
    (sh, sw), (dh, dw), (oph, opw) = stride, dilation, output_padding
    cg = cin // groups
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, groups * kg, full_h, full_w))
    for g in range(groups):
        wg = w[g * cg:(g + 1) * cg]
        for iy in range(h):
            for ix in range(wd):
                patch = np.einsum("nc,ckuv->nkuv", x[:, g * cg:(g + 1) * cg, iy, ix], wg)
                full[:, g * kg:(g + 1) * kg,
                     iy * sh: iy * sh + dh * (kh - 1) + 1: dh,
                     ix * sw: ix * sw + dw * (kw - 1) + 1: dw] += patch
    (pt, pb), (pl, pr) = pads
    out = full[:, :, pt:full_h - pb, pl:full_w - pr]
    if b is not None:
        out = out + np.asarray(b, np.float64)[None, :, None, None]
    return out


def ref_out_size(i, k, s, pb, pe, op, d):
    # written out again here, independently of engine/shapes.py
    return (i - 1) * s + d * (k - 1) + 1 + op - pb - pe


def random_case(rng, n, cin, cout, groups, kh, kw, h, w):
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cin, cout // groups, kh, kw)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, wt, b


# -- sweeps against the reference --------------------------------------------------------------

@pytest.mark.parametrize("stride,dilation,groups",
                         list(itertools.product((1, 2, 3), (1, 2), (1, 2))))
def test_sweep_against_reference(rng, threads, stride, dilation, groups):
    """Sizes 1, 5, 11; kernels 1x1, 3x3, 4x2; paddings 0, 1, 3 and asymmetric; every legal
    output_padding; both algorithms. Configurations whose output would be empty must raise."""
    cin, cout = 2 * groups, 3 * groups
    checked = raised = 0
    for (h, w), (kh, kw), pad in itertools.product(
            ((1, 5), (5, 11), (11, 1)), ((1, 1), (3, 3), (4, 2)), (0, 1, 3, (0, 2, 1, 0))):
        pads = ((pad, pad), (pad, pad)) if isinstance(pad, int) else \
            ((pad[0], pad[2]), (pad[1], pad[3]))
        for op in range(max(stride, dilation)):
            x, wt, b = random_case(rng, 2, cin, cout, groups, kh, kw, h, w)
            oh = ref_out_size(h, kh, stride, *pads[0], op, dilation)
            ow = ref_out_size(w, kw, stride, *pads[1], op, dilation)
            for algo in ALGORITHMS:
                if oh < 1 or ow < 1:
                    with pytest.raises(ValueError, match="empty output"):
                        engine.conv_transpose2d(x, wt, b, stride, pad, op, groups, dilation,
                                                algorithm=algo)
                    raised += 1
                    continue
                ref = conv_transpose2d_ref(x, wt, b, (stride,) * 2, pads, (op, op),
                                           (dilation,) * 2, groups)
                y = engine.conv_transpose2d(x, wt, b, stride, pad, op, groups, dilation,
                                            algorithm=algo)
                assert y.dtype == np.float32 and y.shape == ref.shape
                np.testing.assert_allclose(y, ref, **TOL, err_msg=(
                    f"{algo} h,w={h},{w} k={kh}x{kw} s={stride} p={pad} op={op} "
                    f"d={dilation} g={groups}"))
                checked += 1
    assert checked > 30 and raised > 0


def test_larger_layer_with_chunking(rng, threads, monkeypatch):
    """Small chunk and block limits force several column chunks and channel blocks per image,
    with bias and a fused relu."""
    import engine.ops.conv_transpose as ct
    monkeypatch.setattr(ct, "COL2IM_CHUNK_BYTES", 4096)
    monkeypatch.setattr(ct, "COL2IM_BLOCK_ROWS", 20)
    x, wt, b = random_case(rng, 2, 8, 10, 2, 3, 3, 13, 9)
    layer = engine.ConvTranspose2d(wt, b, stride=2, padding=1, output_padding=1, groups=2,
                                   activation="relu")
    assert layer._impl.co_block == 3  # 20 rows / 9 taps, balanced over 5 channels
    ref = conv_transpose2d_ref(x, wt, b, (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 2)
    np.testing.assert_allclose(layer(x), np.maximum(ref, 0), **TOL)


def test_conv_transpose1d_against_reference(rng, threads):
    for (L, k, s, p, op, d, g) in [(1, 3, 1, 0, 0, 1, 1), (5, 2, 2, 0, 1, 1, 2),
                                   (11, 3, 3, 2, 2, 1, 1), (11, 3, 1, 1, 1, 2, 2),
                                   (7, 4, 2, (0, 3), 0, 3, 1)]:
        x = rng.standard_normal((2, 2 * g, L)).astype(np.float32)
        wt = rng.standard_normal((2 * g, 3, k)).astype(np.float32)
        b = rng.standard_normal(3 * g).astype(np.float32)
        pb, pe = (p, p) if isinstance(p, int) else p
        ref = conv_transpose2d_ref(x[:, :, None, :], wt[:, :, None, :], b, (1, s),
                                   ((0, 0), (pb, pe)), (0, op), (1, d), g)[:, :, 0, :]
        for algo in ALGORITHMS:
            y = engine.conv_transpose1d(x, wt, b, s, p, op, g, d, algorithm=algo)
            np.testing.assert_allclose(y, ref, **TOL)
        # output_size picks the same output_padding where torch's rule can (op < stride)
        if op < s:
            y = engine.conv_transpose1d(x, wt, b, s, p, 0, g, d, output_size=ref.shape[2])
            np.testing.assert_allclose(y, ref, **TOL)
        else:
            with pytest.raises(ValueError, match="output_size"):
                engine.conv_transpose1d(x, wt, b, s, p, 0, g, d, output_size=ref.shape[2])


def test_conv_transpose1d_planned_layer(rng):
    wt = rng.standard_normal((4, 3, 3)).astype(np.float32)
    layer = engine.ConvTranspose1d(wt, stride=2, padding=1, activation="relu")
    assert "ConvTranspose1d" in repr(layer) and "col2im" in layer.explain()
    x = rng.standard_normal((2, 4, 9)).astype(np.float32)
    for size in (None, 18):
        op = 0 if size is None else 1
        ref = np.maximum(conv_transpose2d_ref(x[:, :, None, :], wt[:, :, None, :], None, (1, 2),
                                              ((0, 0), (1, 1)), (0, op))[:, :, 0, :], 0)
        out = np.full(ref.shape, np.nan, np.float32)
        assert layer(x, output_size=size, out=out) is out
        np.testing.assert_allclose(out, ref, **TOL)
        np.testing.assert_allclose(layer(x, output_size=size), ref, **TOL)
    with pytest.raises(ValueError, match="out must have shape"):
        layer(x, out=np.empty((2, 3, 18), np.float32))
    with pytest.raises(ValueError, match="output_size 20 along spatial axis 0"):
        layer(x, output_size=(20,))


# -- output_size -------------------------------------------------------------------------------

def test_output_size_picks_output_padding(rng):
    x, wt, b = random_case(rng, 1, 4, 6, 2, 3, 3, 5, 6)
    # stride 3: sizes 13..15 (H) and 16..18 (W) are all reachable
    for oh, ow in [(13, 16), (14, 18), (15, 17)]:
        ref = conv_transpose2d_ref(x, wt, b, (3, 3), ((1, 1), (1, 1)), (oh - 13, ow - 16),
                                   (1, 1), 2)
        for size in [(oh, ow), [1, 6, oh, ow]]:
            y = engine.conv_transpose2d(x, wt, b, 3, 1, groups=2, output_size=size)
            assert y.shape == (1, 6, oh, ow)
            np.testing.assert_allclose(y, ref, **TOL)
    # output_size overrides output_padding, as in torch's module
    y = engine.conv_transpose2d(x, wt, b, 3, 1, output_padding=2, groups=2,
                                output_size=(13, 16))
    assert y.shape == (1, 6, 13, 16)


@pytest.mark.parametrize("size", [(12, 16), (16, 16), (13, 19), (0, 16)])
def test_impossible_output_size_raises(rng, size):
    x, wt, b = random_case(rng, 1, 4, 6, 2, 3, 3, 5, 6)
    with pytest.raises(ValueError, match="output_size"):
        engine.conv_transpose2d(x, wt, b, 3, 1, groups=2, output_size=size)


def test_output_size_wrong_length_raises(rng):
    x, wt, b = random_case(rng, 1, 4, 6, 2, 3, 3, 5, 6)
    with pytest.raises(ValueError, match="output_size"):
        engine.conv_transpose2d(x, wt, b, 3, 1, groups=2, output_size=(13, 16, 1))


# -- the planned layer -------------------------------------------------------------------------

def test_planned_layer_many_calls_and_out(rng):
    x, wt, b = random_case(rng, 1, 6, 4, 1, 4, 4, 7, 7)
    layer = engine.ConvTranspose2d(wt, b, stride=2, padding=1, activation="relu6")
    assert layer.algorithm == "col2im"
    for h, w, size in [(7, 7, None), (3, 9, None), (7, 7, (15, 15)), (3, 9, (7, 19))]:
        x = rng.standard_normal((2, 6, h, w)).astype(np.float32) * 3
        out_size = size or (2 * h, 2 * w)
        op = (out_size[0] - 2 * h, out_size[1] - 2 * w)
        ref = np.clip(conv_transpose2d_ref(x, wt, b, (2, 2), ((1, 1), (1, 1)), op), 0, 6)
        np.testing.assert_allclose(layer(x, output_size=size), ref, **TOL)
        out = np.full((2, 4) + out_size, np.nan, np.float32)
        assert layer(x, output_size=size, out=out) is out
        np.testing.assert_allclose(out, ref, **TOL)
    with pytest.raises(ValueError, match="out must have shape"):
        layer(x, out=np.empty((2, 4, 5, 5), np.float32))
    text = layer.explain()
    assert "col2im" in text and "zero_insert" in text and "stride" in text


def test_planned_layers_agree_between_algorithms(rng):
    x, wt, b = random_case(rng, 2, 6, 8, 2, 3, 5, 9, 8)
    a = engine.ConvTranspose2d(wt, b, 2, (1, 2), (1, 0), 2, (2, 1), "relu",
                               algorithm="col2im")
    z = engine.ConvTranspose2d(wt, b, 2, (1, 2), (1, 0), 2, (2, 1), "relu",
                               algorithm="zero_insert")
    assert z.algorithm == "zero_insert" and "inner convolution" in z.explain()
    np.testing.assert_allclose(a(x), z(x), **TOL)


# -- threads -----------------------------------------------------------------------------------

def test_kernel_one_and_two_threads_bit_identical(rng, monkeypatch):
    """Several channel blocks (of 2 channels: a partial row block of the packed weights each)
    and row chunks, so the two threads really share the work."""
    monkeypatch.setattr(conv_transpose_mod, "COL2IM_BLOCK_ROWS", 18)
    x, wt, b = random_case(rng, 2, 8, 12, 2, 3, 3, 17, 15)
    layer = engine.ConvTranspose2d(wt, b, stride=2, padding=1, output_padding=1, groups=2,
                                   algorithm="col2im")
    impl = layer._impl
    assert impl.co_block == 2
    oh, ow = (17 - 1) * 2 - 2 + 3 + 1, (15 - 1) * 2 - 2 + 3 + 1
    outs = []
    for t in (1, 2):
        out = np.empty((2, 12, oh, ow), np.float32)
        work = workspace.take(ct_kernel.work_floats(2, 9, 4, 5 * 15, t))
        ct_kernel.f32_conv_transpose2d_col2im(x, impl.wpack, b, out, 3, 3, 2, 2, 1, 1, 1, 1, 2,
                                              2, 5, NO_ACT, t, work)
        workspace.give(work)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    ref = conv_transpose2d_ref(x, wt, b, (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 2)
    np.testing.assert_allclose(outs[0], ref, **TOL)
    # the kernel's guards
    with pytest.raises(ValueError, match="wpack"):
        ct_kernel.f32_conv_transpose2d_col2im(x, impl.wpack[:-1], b, out, 3, 3, 2, 2, 1, 1, 1, 1,
                                              2, 2, 5, NO_ACT, 1, work)
    with pytest.raises(ValueError, match="work"):
        ct_kernel.f32_conv_transpose2d_col2im(x, impl.wpack, b, out, 3, 3, 2, 2, 1, 1, 1, 1, 2,
                                              2, 5, NO_ACT, 1, work[:16])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_public_one_and_two_threads_bit_identical(rng, algorithm):
    x, wt, b = random_case(rng, 2, 32, 24, 1, 4, 4, 20, 20)
    old = engine.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            engine.set_num_threads(t)
            outs.append(engine.conv_transpose2d(x, wt, b, 2, 1, algorithm=algorithm))
    finally:
        engine.set_num_threads(old)
    assert np.array_equal(outs[0], outs[1])


# -- bilinear upsampling kernel ----------------------------------------------------------------

def test_bilinear_kernel_values():
    k2 = engine.bilinear_upsample_kernel(2, 3)
    assert k2.shape == (3, 1, 4, 4) and k2.dtype == np.float32
    tent = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(k2[2, 0], np.outer(tent, tent))
    k3 = engine.bilinear_upsample_kernel(3, 1)
    tent = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(k3[0, 0], np.outer(tent, tent), rtol=1e-6)
    with pytest.raises(ValueError, match="factor"):
        engine.bilinear_upsample_kernel(0, 3)


def _upsample(x, f, algorithm="auto"):
    c = x.shape[1]
    return engine.conv_transpose2d(x, engine.bilinear_upsample_kernel(f, c), stride=f,
                                   padding=-(-(f - 1) // 2), groups=c, algorithm=algorithm)


@pytest.mark.parametrize("f", [2, 3, 4])
def test_bilinear_upsampling_interpolates_interior(rng, f):
    """FCN's layer: output f*H x f*W; away from the border a constant stays constant and a
    linear ramp is sampled at the half-pixel centres (o + 1/2)/f - 1/2."""
    h, w = 6, 7
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    x = np.stack([np.full((h, w), 2.5, np.float32), 3 * yy - 2 * xx + 1])[None]
    y = _upsample(x, f)
    assert y.shape == (1, 2, f * h, f * w)
    inner = (slice(None), slice(f, f * h - f), slice(f, f * w - f))
    np.testing.assert_allclose(y[0, 0][inner[1:]], 2.5, rtol=1e-6)
    oy, ox = np.mgrid[:f * h, :f * w]
    ramp = 3 * ((oy + 0.5) / f - 0.5) - 2 * ((ox + 0.5) / f - 0.5) + 1
    np.testing.assert_allclose(y[0, 1][inner[1:]], ramp[inner[1:]], atol=1e-5)
    # and it is not the identity near the border (the edge sees only part of the kernel)
    assert abs(y[0, 0, 0, 0] - 2.5) > 0.1
    # the depthwise layer through the equivalent convolution
    np.testing.assert_allclose(_upsample(x, f, "zero_insert"), y, **TOL)


def test_bilinear_upsampling_matches_torch_interpolate(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((1, 3, 8, 9)).astype(np.float32)
    for f in (2, 3):
        y = _upsample(x, f)
        t = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=f,
                                            mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(y[..., f:-f, f:-f], t[..., f:-f, f:-f], **TOL)


# -- torch cross-check -------------------------------------------------------------------------

def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cases = [  # cin, cout, groups, k, stride, padding, output_padding, dilation, h, w
        (8, 6, 2, (3, 3), 2, 1, 1, 1, 11, 5), (4, 4, 1, (4, 4), 2, 1, 0, 1, 5, 5),
        (6, 6, 3, (5, 3), (3, 1), (2, 0), (1, 0), 1, 7, 4), (4, 8, 2, (2, 2), 1, 0, 1, 2, 1, 1),
        (3, 2, 1, (3, 3), 3, 4, 2, 2, 11, 11), (64, 32, 1, (4, 4), 2, 1, 0, 1, 14, 14),
    ]
    for cin, cout, g, k, s, p, op, d, h, w in cases:
        x, wt, b = random_case(rng, 2, cin, cout, g, *k, h, w)
        ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(wt),
                                 torch.from_numpy(b), s, p, op, g, d).numpy()
        for algo in ALGORITHMS:
            y = engine.conv_transpose2d(x, wt, b, s, p, op, g, d, algorithm=algo)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)  # up to 64*16 terms


def test_output_size_matches_torch_module(rng):
    torch = pytest.importorskip("torch")
    x, wt, b = random_case(rng, 1, 4, 6, 2, 3, 3, 5, 6)
    m = torch.nn.ConvTranspose2d(4, 6, 3, stride=3, padding=1, groups=2)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(wt))
        m.bias.copy_(torch.from_numpy(b))
        for size in [(13, 16), (15, 18), [1, 6, 14, 17]]:
            ref = m(torch.from_numpy(x), output_size=list(size)).numpy()
            y = engine.conv_transpose2d(x, wt, b, 3, 1, groups=2, output_size=size)
            np.testing.assert_allclose(y, ref, **TOL)
        for size in [(12, 16), (13, 19)]:
            with pytest.raises(ValueError):
                m(torch.from_numpy(x), output_size=list(size))
            with pytest.raises(ValueError, match="output_size"):
                engine.conv_transpose2d(x, wt, b, 3, 1, groups=2, output_size=size)


def test_conv_transpose1d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 4, 50)).astype(np.float32)
    wt = rng.standard_normal((4, 3, 5)).astype(np.float32)
    ref = torch.nn.functional.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(wt),
                                               None, 3, 2, 1, 1, 2).numpy()
    np.testing.assert_allclose(engine.conv_transpose1d(x, wt, None, 3, 2, 1, 1, 2), ref,
                               **TOL)


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=2, output_padding=2), "output_padding"),   # not < stride nor < dilation
    (dict(stride=1, output_padding=1), "output_padding"),
    (dict(output_padding=-1), "output_padding"),
    (dict(stride=0), "stride"),
    (dict(dilation=(1, 0)), "dilation"),
    (dict(padding=-1), "padding"),
    (dict(padding="same"), "padding"),
    (dict(groups=3), "groups"),
    (dict(groups=0), "groups"),
    (dict(bias=np.zeros(5, np.float32)), "bias"),
    (dict(algorithm="winograd_f23"), "algorithm"),
])
def test_bad_arguments_raise(rng, kwargs, match):
    x, wt, b = random_case(rng, 1, 4, 6, 2, 3, 3, 5, 5)
    kwargs = dict(dict(bias=b, groups=2), **kwargs)
    with pytest.raises(ValueError, match=match):
        engine.conv_transpose2d(x, wt, **kwargs)


def test_bad_inputs_raise(rng):
    x, wt, b = random_case(rng, 1, 4, 6, 2, 3, 3, 5, 5)
    with pytest.raises(ValueError, match="x must have 4 channels"):
        engine.conv_transpose2d(x[:, :3], wt, b, groups=2)
    with pytest.raises(ValueError, match="x must be 4-D"):
        engine.conv_transpose2d(x[0], wt, b, groups=2)
    with pytest.raises(ValueError, match="weight must be 4-D"):
        engine.conv_transpose2d(x, wt[0], b, groups=2)
    with pytest.raises(ValueError, match="empty output"):
        engine.conv_transpose2d(x[:, :, :1, :1], wt, b, padding=2, groups=2)
    with pytest.raises(ValueError, match="x must be 3-D"):
        engine.conv_transpose1d(x, wt[:, :, 0], b, groups=2)
    with pytest.raises(ValueError, match="output_padding"):
        engine.conv_transpose1d(x[:, :, 0], wt[:, :, 0], b, stride=2, output_padding=3,
                                groups=2)
