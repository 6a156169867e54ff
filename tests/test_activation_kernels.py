"""The vector activations of kernels/activation.pyx (Sigmoid, SiLU, exact GELU) against float64.

Error model, in units of the float32 spacing (ulp) of the float64 value rounded to float32,
on outputs in the normal range: exp's range reduction and degree-7 polynomial stay within
2 ulp, and the division and products add about one each.
- Sigmoid: 3 ulp (measured 2.7).
- SiLU: 4 ulp where x sigmoid(x) is normal and sigmoid(x) is too (x > -87); below, sigmoid is a
  denormal with fewer significant bits: 64 ulp (measured 46).
- HardSwish: 3 + 1 / |x/6 + 1/2| ulp: x/6 + 1/2 is rounded at the scale of 1/2, which near
  x = -3, where it cancels, is many ulp of the result (NumPy's formula does the same).
- GELU: 8 + 2 x^2 ulp (measured 5 near 0 and 1.55 x^2 in the tail): erfc's argument z = -x / sqrt 2
  enters as e^(-z^2), which magnifies the rounding of z^2 by z^2.
Results do not depend on the thread count: each thread takes whole vectors.
"""
import numpy as np
import pytest

from engine._kernels import activation as act

scipy_special = pytest.importorskip("scipy.special")

TINY = np.finfo(np.float32).tiny


def inputs():
    rng = np.random.default_rng(3)
    return np.concatenate([rng.standard_normal(200_000) * 8, np.linspace(-110, 95, 100_001),
                           np.linspace(-1e-3, 1e-3, 2001),
                           [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38,
                            1e-44, -1e-44]]).astype(np.float32)


def reference(kind, x):
    v = x.astype(np.float64)
    with np.errstate(all="ignore"):
        sig = 1 / (1 + np.exp(-v))
        if kind == act.SIGMOID:
            return sig
        if kind == act.SILU:
            return v * sig
        if kind == act.HARDSWISH:
            return v * np.clip(v / 6 + 0.5, 0, 1)
        return v * 0.5 * scipy_special.erfc(-v / np.sqrt(2))


def bound_ulp(kind, x):
    x = x.astype(np.float64)
    if kind == act.SIGMOID:
        return np.full(x.shape, 3.0)
    if kind == act.SILU:
        return np.where(x > -87, 4.0, 64.0)
    if kind == act.HARDSWISH:       # x/6 + 1/2 cancels near x = -3: its rounding, relative
        return 3 + 1 / np.abs(x / 6 + 0.5)
    return 8 + 2 * x * x


KINDS = [act.SIGMOID, act.SILU, act.GELU, act.HARDSWISH]
NAMES = ["sigmoid", "silu", "gelu", "hardswish"]


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_against_float64(kind):
    x = inputs()
    y = np.empty_like(x)
    act.f32_activation(x, y, kind, 1)
    want = reference(kind, x)
    w32 = want.astype(np.float32)
    normal = np.isfinite(w32) & (np.abs(w32) >= TINY)
    spacing = np.spacing(np.abs(w32[normal])).astype(np.float64)
    err = np.abs(y[normal].astype(np.float64) - want[normal]) / spacing
    bad = err > bound_ulp(kind, x[normal])
    assert not bad.any(), (x[normal][bad][:5], err[bad][:5])
    # non-finite results and results below the normal range: exact or NaN where the formula is
    special = ~np.isfinite(w32)
    np.testing.assert_array_equal(y[special], w32[special])
    assert np.all(np.abs(y[~normal & ~special] - want[~normal & ~special]) <= 2 * TINY)


def test_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    y = np.empty_like(x)
    act.f32_activation(x, y, act.SIGMOID, 1)
    np.testing.assert_array_equal(y, [np.nan, 1, 0, 0.5, 0.5])
    act.f32_activation(x, y, act.SILU, 1)
    np.testing.assert_array_equal(y, [np.nan, np.inf, np.nan, 0, 0])    # -inf * 0: NaN
    act.f32_activation(x, y, act.GELU, 1)
    np.testing.assert_array_equal(y, [np.nan, np.inf, np.nan, 0, 0])
    act.f32_activation(x, y, act.HARDSWISH, 1)
    np.testing.assert_array_equal(y, [np.nan, np.inf, np.nan, 0, 0])

@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 16384 * 3 + 5])
@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_lengths_threads_and_in_place(kind, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    one = np.empty_like(x)
    act.f32_activation(x, one, kind, 1)
    two = np.empty_like(x)
    act.f32_activation(x, two, kind, 2)
    np.testing.assert_array_equal(one, two)
    inplace = x.copy()
    act.f32_activation(inplace, inplace, kind, 2)
    np.testing.assert_array_equal(inplace, one)
    if n:      # the padded last vector agrees with the whole-vector path
        whole = np.empty(n + 16, np.float32)
        act.f32_activation(np.concatenate([x, np.zeros(16, np.float32)]), whole, kind, 1)
        np.testing.assert_array_equal(whole[:n], one)
