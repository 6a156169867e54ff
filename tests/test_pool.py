"""engine.max_pool2d / avg_pool2d / max_unpool2d / global pooling against slow NumPy references
and torch.

Tolerances: max pooling, unpooling and global max only move values, so they are compared
exactly (values and int64 indices). Average pooling sums at most 9 float32 terms in [-1, 1]
and divides once: the error is below ~10 eps32 of the window's magnitude, so atol = 2e-6.
The global average sums in float64: rtol 1e-6.
"""
import itertools

import numpy as np
import pytest

import engine
from engine._kernels import pool as kernels
from engine._kernels import unpool
from engine.ops.pool import AvgPool2d, MaxPool2d, max_unpool2d_onnx
from engine.shapes import pool_output_shape, unpool_output_shape, unpool_output_size

AVG_ATOL = 2e-6
SIZES = (1, 5, 11, 53)


# -- slow references (written from the PyTorch docs, no engine code) ------------------------------
def pool_len_ref(i, k, s, p, d, ceil_mode):
    """torch.nn.MaxPool2d's documented size; with ceil_mode the last window must start inside
    the input or its left padding."""
    num = i + 2 * p - d * (k - 1) - 1
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= i + p:
        o -= 1
    return o


def _taps(o, k, s, p, d):
    """(o, k) input coordinates of every tap of every window along one axis."""
    return np.arange(o)[:, None] * s - p + np.arange(k)[None, :] * d


def max_pool_ref(x, k, s, p, d, ceil_mode):
    """Scan each window row by row; a tap replaces the running max if it is larger or NaN.
    The running index starts at the first tap at a non-negative coordinate."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    oh, ow = pool_len_ref(h, k, s, p, d, ceil_mode), pool_len_ref(w, k, s, p, d, ceil_mode)
    ty, tx = _taps(oh, k, s, p, d), _taps(ow, k, s, p, d)
    out = np.full((n, c, oh, ow), -np.inf)
    idx = np.zeros((n, c, oh, ow), np.int64)
    for oy in range(oh):
        y0 = min(t for t in ty[oy] if t >= 0)
        for ox in range(ow):
            x0 = min(t for t in tx[ox] if t >= 0)
            idx[:, :, oy, ox] = y0 * w + x0
            for iy in ty[oy]:
                if not 0 <= iy < h:
                    continue
                for ix in tx[ox]:
                    if not 0 <= ix < w:
                        continue
                    v = x[:, :, iy, ix]
                    take = (v > out[:, :, oy, ox]) | np.isnan(v)
                    out[:, :, oy, ox] = np.where(take, v, out[:, :, oy, ox])
                    idx[:, :, oy, ox] = np.where(take, iy * w + ix, idx[:, :, oy, ox])
    return out, idx


def avg_pool_ref(x, k, s, p, ceil_mode, count_include_pad):
    """Mean of the in-bounds taps; with count_include_pad the divisor counts the taps inside
    the padded input [-p, size + p) (never the ceil_mode overhang beyond it)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    oh, ow = pool_len_ref(h, k, s, p, 1, ceil_mode), pool_len_ref(w, k, s, p, 1, ceil_mode)
    ty, tx = _taps(oh, k, s, p, 1), _taps(ow, k, s, p, 1)
    out = np.zeros((n, c, oh, ow))
    for oy in range(oh):
        ys = [t for t in ty[oy] if 0 <= t < h]
        for ox in range(ow):
            xs = [t for t in tx[ox] if 0 <= t < w]
            if not ys or not xs:
                continue
            if count_include_pad:
                divisor = (sum(-p <= t < h + p for t in ty[oy])
                           * sum(-p <= t < w + p for t in tx[ox]))
            else:
                divisor = len(ys) * len(xs)
            total = sum(x[:, :, iy, ix] for iy in ys for ix in xs)
            out[:, :, oy, ox] = total / divisor
    return out


def max_unpool_ref(x, indices, out_hw):
    n, c = x.shape[:2]
    out = np.zeros((n, c, out_hw[0] * out_hw[1]), np.float32)
    for a in range(n):
        for b in range(c):
            for v, i in zip(x[a, b].ravel(), indices[a, b].ravel()):
                out[a, b, i] = v
    return out.reshape(n, c, *out_hw)


# -- configurations ---------------------------------------------------------------------------
def max_configs():
    for size, k, s, d, ceil_mode in itertools.product(SIZES, (1, 2, 3), (1, 2, 3), (1, 2),
                                                      (False, True)):
        for p in range(k // 2 + 1):
            if pool_len_ref(size, k, s, p, d, ceil_mode) >= 1:
                yield size, k, s, p, d, ceil_mode


def avg_configs():
    for size, k, s, ceil_mode, cip in itertools.product(SIZES, (1, 2, 3), (1, 2, 3),
                                                        (False, True), (False, True)):
        for p in range(k // 2 + 1):
            if pool_len_ref(size, k, s, p, 1, ceil_mode) >= 1:
                yield size, k, s, p, ceil_mode, cip


def tied_input(rng, shape):
    """Few distinct values, so that windows hold ties, with some NaN and -inf."""
    x = rng.integers(-3, 4, shape).astype(np.float32)
    x[rng.random(shape) < 0.02] = np.nan
    x[rng.random(shape) < 0.02] = -np.inf
    return x


# -- max pooling --------------------------------------------------------------------------------
def test_max_pool_sweep_matches_reference(rng):
    checked = 0
    for size, k, s, p, d, ceil_mode in max_configs():
        x = tied_input(rng, (2, 3, size, size + 2 * (size > 1)))
        ref, ref_idx = max_pool_ref(x, k, s, p, d, ceil_mode)
        y, idx = engine.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
        assert idx.dtype == np.int64
        assert np.array_equal(y, ref, equal_nan=True), (size, k, s, p, d, ceil_mode)
        assert np.array_equal(idx, ref_idx), (size, k, s, p, d, ceil_mode)
        assert np.array_equal(engine.max_pool2d(x, k, s, p, d, ceil_mode), y, equal_nan=True)
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("s", [1, 2])
def test_max_pool_every_row_width(rng, s):
    """The row passes of the index-free path on every width from 1 to 40 and 111-113 (their
    whole vectors, and tails of every length through the padded last vector), ties, NaN and
    -inf included, against the per-window scan."""
    for width in list(range(1, 41)) + [111, 112, 113]:
        for p in (0, 1):
            x = tied_input(rng, (1, 2, 5, width))
            if pool_len_ref(width, 3, s, p, 1, True) < 1:
                continue
            ref, _ = max_pool_ref(x, 3, s, p, 1, True)
            y = engine.max_pool2d(x, 3, s, p, 1, True)
            assert np.array_equal(y, ref, equal_nan=True), (width, s, p)


def test_max_pool_sweep_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for size, k, s, p, d, ceil_mode in max_configs():
        x = tied_input(rng, (1, 2, size + 1, size))
        ty, ti = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode, return_indices=True)
        y, idx = engine.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
        assert np.array_equal(y, ty.numpy(), equal_nan=True), (size, k, s, p, d, ceil_mode)
        assert np.array_equal(idx, ti.numpy()), (size, k, s, p, d, ceil_mode)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 2), (2, 1), (1, 0), (1, 2)),
    ((2, 3), None, (1, 1), 1),
    (4, 3, 2, 1),
])
def test_max_pool_rectangular_matches_reference(rng, kernel, stride, padding, dilation, threads):
    x = rng.standard_normal((2, 4, 17, 12)).astype(np.float32)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    y, idx = engine.max_pool2d(x, kernel, stride, padding, dilation, return_indices=True)
    # separable check: pooling rows then columns with the 1-D references
    st = stride if stride is not None else kernel
    sh, sw = st if isinstance(st, tuple) else (st, st)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    dh, dw = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    oh, ow = pool_len_ref(17, kh, sh, ph, dh, False), pool_len_ref(12, kw, sw, pw, dw, False)
    assert y.shape == idx.shape == (2, 4, oh, ow)
    flat = x.reshape(2, 4, -1)
    assert np.array_equal(np.take_along_axis(flat, idx.reshape(2, 4, -1), 2).reshape(y.shape), y)
    for oy, ox in itertools.product(range(oh), range(ow)):
        ys = [t for t in _taps(oh, kh, sh, ph, dh)[oy] if 0 <= t < 17]
        xs = [t for t in _taps(ow, kw, sw, pw, dw)[ox] if 0 <= t < 12]
        np.testing.assert_array_equal(y[:, :, oy, ox], x[:, :, ys][:, :, :, xs].max(axis=(2, 3)))


def test_max_pool_ties_nan_and_inf_hand_checked():
    row = np.array([[[[2, 5, 5, 1, np.nan, 3, np.nan, 7, -np.inf, -np.inf]]]], np.float32)
    y, idx = engine.max_pool2d(row, (1, 2), return_indices=True)
    assert np.array_equal(y, [[[[5, 5, np.nan, np.nan, -np.inf]]]], equal_nan=True)
    # ties keep the first maximum; a NaN wins over anything; an all -inf window reports its
    # first tap
    assert idx.tolist() == [[[[1, 2, 4, 6, 8]]]]
    y, idx = engine.max_pool2d(row, (1, 3), (1, 1), return_indices=True)
    assert idx.tolist() == [[[[1, 1, 4, 4, 6, 6, 6, 7]]]]


def test_max_pool_window_without_taps_follows_torch():
    # kernel 2 dilated by 3 with padding 1 on a 2x2 input: the one window's taps are at -1 and
    # 2, both outside; torch reports -inf and the position of the first tap at >= 0 (2, 2)
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    y, idx = engine.max_pool2d(x, 2, 1, 1, 3, return_indices=True)
    assert y.tolist() == [[[[-np.inf]]]] and idx.tolist() == [[[[2 * 2 + 2]]]]


def test_max_pool_threads_bit_identical(rng):
    x = rng.standard_normal((2, 32, 64, 64)).astype(np.float32)
    outs = []
    for t in (1, 2):
        y, idx = MaxPool2d(3, 2, 1, return_indices=True, num_threads=t)(x)
        outs.append((y, idx))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    # the kernel itself, forced to 2 threads on an odd plane count
    x = rng.standard_normal((7, 9, 10)).astype(np.float32)
    ys = [np.empty((7, 5, 5), np.float32) for _ in range(2)]
    ids = [np.empty((7, 5, 5), np.int64) for _ in range(2)]
    for t in (1, 2):
        kernels.f32_maxpool2d(x, ys[t - 1], ids[t - 1], 3, 3, 2, 2, 1, 1, 1, 1, t)
    assert np.array_equal(ys[0], ys[1]) and np.array_equal(ids[0], ids[1])


# -- average pooling ----------------------------------------------------------------------------
def test_avg_pool_sweep_matches_reference(rng):
    checked = 0
    for size, k, s, p, ceil_mode, cip in avg_configs():
        x = rng.uniform(-1, 1, (2, 3, size, size + 3)).astype(np.float32)
        ref = avg_pool_ref(x, k, s, p, ceil_mode, cip)
        y = engine.avg_pool2d(x, k, s, p, ceil_mode, cip)
        assert y.shape == ref.shape, (size, k, s, p, ceil_mode, cip)
        np.testing.assert_allclose(y, ref, rtol=0, atol=AVG_ATOL,
                                   err_msg=str((size, k, s, p, ceil_mode, cip)))
        checked += 1
    assert checked > 150


def test_avg_pool_sweep_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for size, k, s, p, ceil_mode, cip in avg_configs():
        x = rng.uniform(-1, 1, (1, 2, size + 2, size)).astype(np.float32)
        t = F.avg_pool2d(torch.from_numpy(x), k, s, p, ceil_mode, cip).numpy()
        y = engine.avg_pool2d(x, k, s, p, ceil_mode, cip)
        assert y.shape == t.shape
        np.testing.assert_allclose(y, t, rtol=0, atol=AVG_ATOL)


def test_avg_pool_divisors_hand_checked():
    x = np.ones((1, 1, 3, 3), np.float32)
    # padding 1: the corner window holds 4 real taps of 9
    y = engine.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
    assert np.allclose(y, 4 / 9)
    assert np.allclose(engine.avg_pool2d(x, 3, 2, 1, count_include_pad=False), 1)
    # ceil_mode on 5 wide, kernel 2, stride 2: the last window hangs one past the end, and
    # that overhang is not padding, so it is not counted even with count_include_pad
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    y = engine.avg_pool2d(x, (1, 2), (1, 2), ceil_mode=True, count_include_pad=True)
    assert y.tolist() == [[[[0.5, 2.5, 4.0]]]]


def test_avg_pool_threads_bit_identical(rng):
    x = rng.standard_normal((2, 32, 56, 56)).astype(np.float32)
    a = AvgPool2d(3, 1, 1, num_threads=1)(x)
    b = AvgPool2d(3, 1, 1, num_threads=2)(x)
    assert np.array_equal(a, b)


# -- global pooling -----------------------------------------------------------------------------
def test_global_pools(rng, threads):
    x = rng.standard_normal((3, 70, 23, 31)).astype(np.float32)
    avg, mx = engine.global_avg_pool2d(x), engine.global_max_pool2d(x)
    assert avg.shape == mx.shape == (3, 70, 1, 1)
    np.testing.assert_allclose(avg[..., 0, 0], x.astype(np.float64).mean(axis=(2, 3)),
                               rtol=1e-6, atol=1e-7)
    assert np.array_equal(mx[..., 0, 0], x.max(axis=(2, 3)))
    x[1, 2, 5, 7] = np.nan
    assert np.isnan(engine.global_max_pool2d(x)[1, 2, 0, 0])
    assert not np.isnan(np.delete(engine.global_max_pool2d(x).ravel(), 1 * 70 + 2)).any()


# -- max-unpooling ------------------------------------------------------------------------------
HAND_X = np.array([[1, 9, 2, 0],
                   [3, 4, 8, 7],
                   [0, 5, 6, 1],
                   [2, 1, 3, 9]], np.float32).reshape(1, 1, 4, 4)


def test_unpool_hand_checked_4x4():
    y, idx = engine.max_pool2d(HAND_X, 2, return_indices=True)
    assert y.tolist() == [[[[9, 8], [5, 9]]]]
    assert idx.tolist() == [[[[1, 6], [9, 15]]]]
    u = engine.max_unpool2d(y, idx, 2)
    assert u.tolist() == [[[[0, 9, 0, 0],
                            [0, 0, 8, 0],
                            [0, 5, 0, 0],
                            [0, 0, 0, 9]]]]
    # the same flat indices read in a 5x5 plane land elsewhere: 1 -> (0, 1), 6 -> (1, 1),
    # 9 -> (1, 4), 15 -> (3, 0)
    u5 = engine.max_unpool2d(y, idx, 2, output_size=(5, 5))
    assert u5.tolist() == [[[[0, 9, 0, 0, 0],
                             [0, 8, 0, 0, 5],
                             [0, 0, 0, 0, 0],
                             [9, 0, 0, 0, 0],
                             [0, 0, 0, 0, 0]]]]
    # a repeated index keeps the last value
    dup = engine.max_unpool2d(y, np.array([[[[3, 3], [0, 3]]]]), 2)
    assert dup.ravel().tolist() == [5, 0, 0, 9] + [0] * 12


def test_unpool_onnx_whole_tensor_indices_hand_checked():
    x2 = np.concatenate([HAND_X, HAND_X[:, :, ::-1]], axis=1)      # (1, 2, 4, 4)
    y, idx = engine.max_pool2d(x2, 2, return_indices=True)
    assert idx[0, 1].tolist() == [[5, 3], [13, 10]]
    whole = idx + np.array([0, 16]).reshape(1, 2, 1, 1)            # n*C*H*W + c*H*W + flat
    u = max_unpool2d_onnx(y, whole, (1, 2, 4, 4))
    assert np.array_equal(u, engine.max_unpool2d(y, idx, 2))
    assert u[0, 1].tolist() == [[0, 0, 0, 9],
                                [0, 5, 0, 0],
                                [0, 0, 8, 0],
                                [0, 9, 0, 0]]
    assert np.array_equal(max_unpool2d_onnx(y, whole, (4, 4)), u)
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d_onnx(y, idx, (1, 2, 4, 4))            # plane 1's indices point into plane 0
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d_onnx(y, whole + 16, (1, 2, 4, 4))
    with pytest.raises(ValueError, match="output_shape"):
        max_unpool2d_onnx(y, whole, (1, 3, 4, 4))
    with pytest.raises(ValueError, match="output_shape"):
        max_unpool2d_onnx(y, whole, (4,))


@pytest.mark.parametrize("size,k,s,p", [(5, 2, 2, 0), (11, 3, 2, 1), (53, 2, 2, 1),
                                        (11, 3, 1, 1), (5, 1, 3, 0), (53, 3, 3, 0)])
def test_unpool_round_trip(rng, size, k, s, p, threads):
    x = rng.permutation(2 * 3 * size * (size + 1)).astype(np.float32).reshape(2, 3, size, -1)
    y, idx = engine.max_pool2d(x, k, s, p, return_indices=True)
    out_hw = x.shape[2:]
    u = engine.max_unpool2d(y, idx, k, s, p, output_size=x.shape)
    assert u.shape == x.shape
    assert np.array_equal(u, max_unpool_ref(y, idx, out_hw))
    # every maximum is back where it came from, and everything else is zero
    kept = np.zeros(x.shape, bool).reshape(2, 3, -1)
    np.put_along_axis(kept, idx.reshape(2, 3, -1), True, 2)
    kept = kept.reshape(x.shape)
    assert np.array_equal(u[kept], x[kept]) and not u[~kept].any()


def test_unpool_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for size, k, s, p in itertools.product((5, 11, 53), (1, 2, 3), (1, 2, 3), (0, 1)):
        if p > k // 2:
            continue
        x = rng.standard_normal((2, 3, size, size + 2)).astype(np.float32)
        y, idx = engine.max_pool2d(x, k, s, p, return_indices=True)
        ty, ti = torch.from_numpy(y), torch.from_numpy(idx)
        for output_size in (None, x.shape, x.shape[2:]):
            try:
                t = F.max_unpool2d(ty, ti, k, s, p, output_size=output_size).numpy()
            except (ValueError, RuntimeError):
                with pytest.raises(ValueError):
                    engine.max_unpool2d(y, idx, k, s, p, output_size=output_size)
                continue
            assert np.array_equal(engine.max_unpool2d(y, idx, k, s, p, output_size), t), \
                (size, k, s, p, output_size)


def test_unpool_output_size_variants():
    y, idx = engine.max_pool2d(HAND_X, 2, return_indices=True)
    # default 4, stride 2: any size strictly between 2 and 6 (index 0 exists in all of them)
    zeros = np.zeros_like(idx)
    for o in (3, 4, 5):
        assert engine.max_unpool2d(y, zeros, 2, output_size=[o, 5]).shape == (1, 1, o, 5)
        assert engine.max_unpool2d(y, zeros, 2, output_size=(1, 1, 5, o)).shape == (1, 1, 5, o)
    for bad in ((2, 4), (4, 6), (4,), (1, 4, 4), 4, (-4, 4)):
        with pytest.raises(ValueError, match="output_size"):
            engine.max_unpool2d(y, idx, 2, output_size=bad)
    assert unpool_output_shape((112, 112), (2, 2), (2, 2), (0, 0)) == (224, 224)
    assert unpool_output_shape((5, 7), (3, 3), (2, 2), (1, 1)) == (9, 13)
    assert unpool_output_size(112, 2, 2, 0, 1) == 223      # ONNX pads may differ per end


def test_unpool_threads_bit_identical(rng):
    x = rng.standard_normal((2, 16, 40, 40)).astype(np.float32)
    y, idx = engine.max_pool2d(x, 3, 1, 1, return_indices=True)     # overlapping: duplicates
    outs = []
    for t in (1, 2):
        y2, i2 = y.reshape(32, -1), idx.reshape(32, -1)
        out = np.empty((32, 1600), np.float32)
        unpool.f32_max_unpool2d(y2, i2, out, 0, t)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[0].reshape(x.shape), max_unpool_ref(y, idx, (40, 40)))


# -- bad input ----------------------------------------------------------------------------------
def test_pool_bad_input_raises_value_error():
    x = np.zeros((1, 2, 6, 6), np.float32)
    cases = [
        (lambda: engine.max_pool2d(x[0], 2), "x"),                          # wrong rank
        (lambda: engine.avg_pool2d(x[None], 2), "x"),
        (lambda: engine.max_pool2d(x, 7), "kernel_size"),                  # larger than input
        (lambda: engine.max_pool2d(x, 4, dilation=2), "kernel_size"),
        (lambda: engine.avg_pool2d(x, (1, 9)), "kernel_size"),
        (lambda: engine.max_pool2d(x, 3, padding=2), "padding"),           # > kernel_size // 2
        (lambda: engine.avg_pool2d(x, 2, padding=(0, 2)), "padding"),
        (lambda: engine.max_pool2d(x, 2, padding=-1), "padding"),
        (lambda: engine.max_pool2d(x, 0), "kernel_size"),
        (lambda: engine.max_pool2d(x, -2), "kernel_size"),
        (lambda: engine.max_pool2d(x, 2, stride=0), "stride"),
        (lambda: engine.max_pool2d(x, 2, dilation=0), "dilation"),
        (lambda: engine.max_pool2d(x, (2, 2, 2)), "kernel_size"),
        (lambda: engine.max_pool2d(np.zeros((1, 1, 0, 4)), 1), "x"),
        (lambda: engine.global_avg_pool2d(x[0]), "x"),
        (lambda: engine.global_max_pool2d(np.zeros((1, 1, 3, 0))), "x"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_unpool_bad_input_raises_value_error():
    y, idx = engine.max_pool2d(HAND_X, 2, return_indices=True)
    cases = [
        (lambda: engine.max_unpool2d(y[0], idx[0], 2), "x"),
        (lambda: engine.max_unpool2d(y, idx[0], 2), "indices"),
        (lambda: engine.max_unpool2d(y, idx[:, :, :1], 2), "indices"),
        (lambda: engine.max_unpool2d(y, idx.astype(np.float32), 2), "indices"),
        (lambda: engine.max_unpool2d(y, idx + 16, 2), "indices"),          # past the plane
        (lambda: engine.max_unpool2d(y, idx - 2, 2), "indices"),           # negative
        (lambda: engine.max_unpool2d(y, idx, 2, output_size=(3, 3)), "indices"),
        (lambda: engine.max_unpool2d(y, idx, 2, padding=3), "padding"),    # size would be <= 0
        (lambda: engine.max_unpool2d(y, idx, 0), "kernel_size"),
        (lambda: engine.max_unpool2d(y, idx, 2, stride=-1), "stride"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()
    # the message says which index and what was allowed
    bad = idx.copy()
    bad[0, 0, 1, 0] = 99
    with pytest.raises(ValueError, match=r"\[0, 16\).*99.*\(0, 0, 1, 0\)"):
        engine.max_unpool2d(y, bad, 2)


def test_pool_shapes_helpers():
    assert pool_output_shape((112, 112), (3, 3), (2, 2), (1, 1), (1, 1)) == (56, 56)
    assert pool_output_shape((5, 5), (2, 2), (2, 2), (0, 0), (1, 1), True) == (3, 3)
    # ceil_mode: the last window must start inside the input or its left padding
    assert pool_output_shape((4, 4), (2, 2), (2, 2), (1, 1), (1, 1), True) == (3, 3)
    with pytest.raises(ValueError, match="padding"):
        pool_output_shape((8, 8), (2, 2), (1, 1), (2, 0), (1, 1))
