"""engine.conv1d / Conv1d (the 2-D kernels on an (N, C, 1, L) view) and engine.conv3d / Conv3d
(vol2col + packed GEMM) against float64 NumPy references and torch."""
import itertools

import numpy as np
import pytest

import engine
from engine._kernels import conv3d as c3_kernel
from engine.ops.workspace import workspace
from engine.ops.activation import NO_ACT


# Float32 tolerance. Inputs and weights are N(0, 1); where TOL is used a reduction has at most
# in_channels/groups * kernel volume = 4 * 27 terms, whose float32 rounding errors add up to
# about sqrt(108) * 2**-24 * |output|, 1e-5 at worst. 1e-4 leaves room for any summation order
# and still catches a wrong tap, which is off by O(1).
TOL = dict(rtol=1e-4, atol=1e-4)


def conv1d_ref(x, w, b=None, stride=1, pads=(0, 0), dilation=1, groups=1):
    """out[n, k, o] = b[k] + sum_{c, t} w[k, c, t] * xpad[n, g*Cg + c, o*stride + t*dilation],
    by plain loops over output positions, in float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, length = x.shape
    k, cg, kt = w.shape
    kg = k // groups
    xp = np.pad(x, ((0, 0), (0, 0), tuple(pads)))
    span = dilation * (kt - 1) + 1
    out_len = (xp.shape[2] - span) // stride + 1
    out = np.zeros((n, k, out_len))
    for o in range(out_len):
        window = xp[:, :, o * stride: o * stride + span: dilation]   # (n, c, kt)
        for g in range(groups):
            out[:, g * kg:(g + 1) * kg, o] = np.einsum(
                "nct,kct->nk", window[:, g * cg:(g + 1) * cg], w[g * kg:(g + 1) * kg])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None]
    return out


def conv3d_ref(x, w, b=None, stride=(1, 1, 1), pads=((0, 0),) * 3, dilation=(1, 1, 1),
               groups=1):
    """Cross-correlation as torch.nn.functional.conv3d defines it: a sum over kernel offsets
    (a, u, v) of the strided input window at that offset times the weight tap, in float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c = x.shape[:2]
    k, cg, kd, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0)) + tuple(tuple(p) for p in pads))
    sizes = xp.shape[2:]
    out_size = [(i - d * (kk - 1) - 1) // s + 1
                for i, kk, s, d in zip(sizes, (kd, kh, kw), stride, dilation)]
    xg = xp.reshape((n, groups, cg) + sizes)
    wg = w.reshape(groups, k // groups, cg, kd, kh, kw)
    out = np.zeros([n, groups, k // groups] + out_size)
    (sd, sh, sw), (dd, dh, dw) = stride, dilation
    od, oh, ow = out_size
    for a in range(kd):
        for u in range(kh):
            for v in range(kw):
                patch = xg[..., a * dd: a * dd + sd * (od - 1) + 1: sd,
                           u * dh: u * dh + sh * (oh - 1) + 1: sh,
                           v * dw: v * dw + sw * (ow - 1) + 1: sw]
                out += np.einsum("ngcdhw,gkc->ngkdhw", patch, wg[:, :, :, a, u, v])
    out = out.reshape([n, k] + out_size)
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None, None]
    return out


def same_pads(size, k, s, d):
    # SAME_UPPER from its definition (output ceil(i/s)), independent of engine/shapes.py
    o = -(-size // s)
    total = max(0, (o - 1) * s + d * (k - 1) + 1 - size)
    return total // 2, total - total // 2


# -- conv1d ------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2])
def test_conv1d_sweep(rng, threads, groups):
    """Lengths 1..512, kernels 1-3, strides 1-3, dilations 1..64, every padding form."""
    cases = 0
    for length, kt, stride, dilation, padding in itertools.product(
            (1, 5, 11, 512), (1, 2, 3), (1, 2, 3), (1, 2, 8, 64),
            (0, 2, "same", "valid", (1, 3))):
        if padding == "same" and length > 11 and stride > 1:
            continue  # keeps the sweep short; "same" with stride is covered at small lengths
        if dilation > 2 and length < 64:
            continue
        x = rng.standard_normal((1, 2 * groups, length)).astype(np.float32)
        w = rng.standard_normal((3 * groups, 2, kt)).astype(np.float32)
        b = rng.standard_normal(3 * groups).astype(np.float32)
        if padding == "same":
            pads = same_pads(length, kt, stride, dilation)
        elif padding == "valid":
            pads = (0, 0)
        else:
            pads = padding if isinstance(padding, tuple) else (padding, padding)
        if length + sum(pads) < dilation * (kt - 1) + 1:
            with pytest.raises(ValueError, match="x:.*larger than the padded input"):
                engine.conv1d(x, w, b, stride, padding, dilation, groups)
            continue
        ref = conv1d_ref(x, w, b, stride, pads, dilation, groups)
        y = engine.conv1d(x, w, b, stride, padding, dilation, groups)
        assert y.shape == ref.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, **TOL, err_msg=(
            f"L={length} k={kt} s={stride} d={dilation} p={padding}"))
        cases += 1
    assert cases > 100


def test_conv1d_wavenet_stack(rng, threads):
    """A dilated causal stack (k=2, dilation 1..64, left padding d) keeps the length."""
    x = rng.standard_normal((1, 8, 512)).astype(np.float32)
    ref = x.astype(np.float64)
    for d in (1, 2, 4, 8, 16, 32, 64):
        w = rng.standard_normal((8, 8, 2)).astype(np.float32) / 4
        layer = engine.Conv1d(w, padding=(d, 0), dilation=d, input_size=512)
        x = layer(x)
        ref = conv1d_ref(ref, w, pads=(d, 0), dilation=d)
        assert x.shape == (1, 8, 512)
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv1d_forced_algorithms(rng, algorithm):
    x = rng.standard_normal((2, 4, 40)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3)).astype(np.float32)
    ref = conv1d_ref(x, w, None, 2, (4, 4), 4, 2)
    y = engine.conv1d(x, w, None, 2, 4, 4, 2, algorithm=algorithm)
    np.testing.assert_allclose(y, ref, **TOL)


def test_conv1d_pointwise_and_float64_direct(rng):
    x = rng.standard_normal((2, 4, 40))
    w = rng.standard_normal((6, 4, 1))
    layer = engine.Conv1d(w)
    assert layer.algorithm == "pointwise"
    np.testing.assert_allclose(layer(x), conv1d_ref(x, w), **TOL)
    w3 = rng.standard_normal((6, 4, 3))
    y = engine.conv1d(x, w3, padding="same", algorithm="direct")
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, conv1d_ref(x, w3, pads=(1, 1)), rtol=1e-12, atol=1e-12)


def test_conv1d_planned_layer(rng):
    w = rng.standard_normal((6, 4, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    layer = engine.Conv1d(w, b, padding="same", dilation=3, activation="relu")
    assert "Conv1d" in layer.explain() and "kernel=1x3" in layer.explain()
    for length in (7, 30):
        x = rng.standard_normal((2, 4, length)).astype(np.float32)
        ref = np.maximum(conv1d_ref(x, w, b, 1, same_pads(length, 3, 1, 3), 3), 0)
        out = np.full((2, 6, length), np.nan, np.float32)
        assert layer(x, out=out) is out
        np.testing.assert_allclose(out, ref, **TOL)
    with pytest.raises(ValueError, match="out must have shape"):
        layer(x, out=np.empty((2, 6, 29), np.float32))


def test_conv1d_one_and_two_threads_bit_identical(rng):
    x = rng.standard_normal((2, 32, 700)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3)).astype(np.float32)
    old = engine.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            engine.set_num_threads(t)
            outs.append(engine.conv1d(x, w, None, 1, 8, 8, 2))
    finally:
        engine.set_num_threads(old)
    assert np.array_equal(outs[0], outs[1])


def test_conv1d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for (c, k, length, kt, s, p, d, g) in [(8, 8, 512, 2, 1, 64, 64, 1),
                                           (8, 12, 300, 3, 2, 5, 3, 4),
                                           (64, 64, 1024, 3, 1, 8, 8, 1)]:
        x = rng.standard_normal((2, c, length)).astype(np.float32)
        w = rng.standard_normal((k, c // g, kt)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        ref = F.conv1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), s, p, d,
                       g).numpy()
        np.testing.assert_allclose(engine.conv1d(x, w, b, s, p, d, g), ref,
                                   rtol=1e-4, atol=1e-3)   # up to 192-term sums
    x = rng.standard_normal((1, 4, 100)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    ref = F.conv1d(torch.from_numpy(x), torch.from_numpy(w), padding="same", dilation=16)
    np.testing.assert_allclose(engine.conv1d(x, w, padding="same", dilation=16), ref.numpy(),
                               **TOL)


def test_conv1d_bad_input(rng):
    x = rng.standard_normal((1, 4, 10)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3)).astype(np.float32)
    for kwargs, match in [(dict(groups=2, stride=0), "stride"), (dict(groups=2, dilation=0),
                                                                 "dilation"),
                          (dict(groups=2, padding="full"), "padding"),
                          (dict(groups=2, padding=-1), "padding"), (dict(groups=4), "groups"),
                          (dict(groups=3), "x must have 6 channels"),
                          (dict(groups=2, stride=(1, 1)), "stride"),
                          (dict(groups=2, algorithm="nope"), "algorithm"),
                          (dict(groups=2, bias=np.zeros(5)), "bias")]:
        with pytest.raises(ValueError, match=match):
            engine.conv1d(x, w, **kwargs)
    with pytest.raises(ValueError, match="weight must be 3-D"):
        engine.conv1d(x, w[..., None], groups=2)
    with pytest.raises(ValueError, match="x must be 3-D"):
        engine.conv1d(x[0], w, groups=2)
    with pytest.raises(ValueError, match="x: .*spatial axis 0"):
        engine.conv1d(x[..., :4], w, groups=2, dilation=3)


# -- conv3d ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2), ((1, 2, 3), (2, 1, 1))])
def test_conv3d_sweep(rng, threads, stride, dilation):
    st = stride if isinstance(stride, tuple) else (stride,) * 3
    dl = dilation if isinstance(dilation, tuple) else (dilation,) * 3
    cases = 0
    for size, kernel, padding, groups in itertools.product(
            ((1, 5, 5), (5, 11, 1), (6, 5, 11)), ((1, 1, 1), (3, 3, 3), (2, 3, 1)),
            (0, 1, "same", "valid", (1, 0, 2, 0, 1, 1)), (1, 2)):
        if padding == "same" and max(st) > 1 and size != (5, 11, 1):
            continue
        x = rng.standard_normal((2, 2 * groups) + size).astype(np.float32)
        w = rng.standard_normal((3 * groups, 2) + kernel).astype(np.float32)
        b = rng.standard_normal(3 * groups).astype(np.float32)
        if padding == "same":
            pads = tuple(same_pads(i, k, s, d) for i, k, s, d in zip(size, kernel, st, dl))
        elif padding == "valid":
            pads = ((0, 0),) * 3
        elif isinstance(padding, tuple):
            pads = tuple((padding[a], padding[a + 3]) for a in range(3))
        else:
            pads = ((padding, padding),) * 3
        if any(i + pb + pe < d * (k - 1) + 1
               for i, (pb, pe), k, d in zip(size, pads, kernel, dl)):
            with pytest.raises(ValueError, match="x:.*larger than the padded input"):
                engine.conv3d(x, w, b, stride, padding, dilation, groups)
            continue
        ref = conv3d_ref(x, w, b, st, pads, dl, groups)
        y = engine.conv3d(x, w, b, stride, padding, dilation, groups)
        assert y.shape == ref.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, **TOL, err_msg=(
            f"size={size} k={kernel} p={padding} g={groups}"))
        cases += 1
    assert cases > 40


def test_conv3d_chunks_within_depth_slices(rng, threads, monkeypatch):
    """A tiny chunk limit splits depth slices into single output rows; relu fused."""
    import engine.ops.convnd as convnd
    monkeypatch.setattr(convnd, "VOL2COL_CHUNK_BYTES", 256)
    x = rng.standard_normal((2, 4, 6, 7, 9)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    layer = engine.Conv3d(w, b, padding=1, groups=2, activation="relu")
    ref = np.maximum(conv3d_ref(x, w, b, pads=((1, 1),) * 3, groups=2), 0)
    np.testing.assert_allclose(layer(x), ref, **TOL)


def test_conv3d_planned_layer_and_out(rng):
    w = rng.standard_normal((5, 3, 3, 1, 3)).astype(np.float32)
    layer = engine.Conv3d(w, padding="same", activation="relu6")
    assert layer.algorithm == "im2col" and "vol2col" in layer.explain()
    for size in [(4, 4, 4), (1, 9, 2)]:
        x = rng.standard_normal((1, 3) + size).astype(np.float32) * 3
        pads = tuple(same_pads(i, k, 1, 1) for i, k in zip(size, (3, 1, 3)))
        ref = np.clip(conv3d_ref(x, w, pads=pads), 0, 6)
        out = np.full((1, 5) + size, np.nan, np.float32)
        assert layer(x, out=out) is out
        np.testing.assert_allclose(out, ref, **TOL)


def test_conv3d_kernel_one_and_two_threads_bit_identical(rng):
    """Several chunks per image, so both threads get work."""
    x = rng.standard_normal((2, 6, 7, 9, 10)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 2, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    wpack = engine.Conv3d(w, groups=2).wpack        # packed per group and depth tap
    outs = []
    for t in (1, 2):
        out = np.empty((2, 8, 4, 5, 10), np.float32)
        # stride (2, 2, 1), padding 1, groups 2, items of 2 slices x 3 rows
        work = workspace.take(c3_kernel.work_floats(3 * 2 * 3, 3, 3 * 10, t))
        c3_kernel.f32_conv3d_vol2col(x, wpack, b, out, 3, 2, 3, 2, 2, 1, 1, 1, 1,
                                     1, 1, 1, 2, 2, 3, NO_ACT, t, work)
        workspace.give(work)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    ref = conv3d_ref(x, w, b, (2, 2, 1), ((1, 1),) * 3, groups=2)
    np.testing.assert_allclose(outs[0], ref, **TOL)


def test_conv3d_kernel_checks_weights_and_scratch(rng):
    """The kernel refuses packed weights of the wrong size and a short or misaligned work
    buffer before it runs without the GIL."""
    x = rng.standard_normal((1, 2, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3, 3)).astype(np.float32)
    wpack = engine.Conv3d(w).wpack
    out = np.empty((1, 3, 2, 3, 4), np.float32)
    need = c3_kernel.work_floats(2 * 9, 3, 3 * 4, 1)
    args = (3, 3, 3, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 2, 3, NO_ACT, 1)
    with pytest.raises(ValueError, match="wpack"):
        c3_kernel.f32_conv3d_vol2col(x, wpack[:-1], None, out, *args, np.zeros(need, np.float32))
    raw = np.zeros(need + 32, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    with pytest.raises(ValueError, match="work"):
        c3_kernel.f32_conv3d_vol2col(x, wpack, None, out, *args, raw[start:start + need - 1])
    with pytest.raises(ValueError, match="64-byte"):
        c3_kernel.f32_conv3d_vol2col(x, wpack, None, out, *args, raw[start + 1:start + 1 + need])
    c3_kernel.f32_conv3d_vol2col(x, wpack, None, out, *args, raw[start:start + need])
    np.testing.assert_allclose(out, conv3d_ref(x, w), **TOL)


def test_conv3d_public_one_and_two_threads_bit_identical(rng):
    x = rng.standard_normal((1, 16, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3, 3)).astype(np.float32)
    old = engine.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            engine.set_num_threads(t)
            outs.append(engine.conv3d(x, w, padding=1))
    finally:
        engine.set_num_threads(old)
    assert np.array_equal(outs[0], outs[1])


def test_conv3d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for (c, k, size, kernel, s, p, d, g) in [
            (4, 6, (5, 6, 7), (3, 3, 3), 1, 1, 1, 1), (6, 4, (8, 9, 7), (3, 2, 3), (2, 1, 2),
                                                       (1, 0, 2), (1, 2, 1), 2),
            (8, 8, (4, 10, 10), (1, 3, 3), 1, "same", 2, 1)]:
        x = rng.standard_normal((2, c) + size).astype(np.float32)
        w = rng.standard_normal((k, c // g) + kernel).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        ref = F.conv3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), s, p, d,
                       g).numpy()
        np.testing.assert_allclose(engine.conv3d(x, w, b, s, p, d, g), ref, **TOL)


def test_conv3d_bad_input(rng):
    x = rng.standard_normal((1, 4, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3, 3)).astype(np.float32)
    for kwargs, match in [(dict(groups=2, stride=(1, 1)), "stride"),
                          (dict(groups=2, dilation=-1), "dilation"),
                          (dict(groups=2, padding="full"), "padding"),
                          (dict(groups=2, padding=(1, 1)), "padding"),
                          (dict(groups=5), "groups"), (dict(groups=1), "x must have 2 channels"),
                          (dict(groups=2, algorithm="winograd_f23"), "algorithm"),
                          (dict(groups=2, bias=np.zeros(2)), "bias")]:
        with pytest.raises(ValueError, match=match):
            engine.conv3d(x, w, **kwargs)
    with pytest.raises(ValueError, match="weight must be 5-D"):
        engine.conv3d(x, w[0], groups=2)
    with pytest.raises(ValueError, match="x must be 5-D"):
        engine.conv3d(x[0], w, groups=2)
    with pytest.raises(ValueError, match="x: .*spatial axis 0"):
        engine.conv3d(x, w, groups=2, dilation=2)
