"""The vector activations of kernels/activation.pyx (the formulas the convolutions' fused output
steps use, kernels/_vexp.h and _vec_act.h) against float64, over the whole float range.

Error model, in units of the float32 spacing (ulp) of the float64 value rounded to float32,
on outputs in the normal range: exp (AVX-512's table form, or the degree-7 polynomial) stays
within 2 ulp (measured 1.06), and the division and products add about one each.
- Sigmoid: 3 ulp (measured 2.7). Tanh: 3 ulp (measured 2.5), through expm1, exact near 0.
- Softplus: 4 ulp (measured 3.4). Elu: 2 ulp (measured 1.4), expm1 again.
- SiLU and Mish: 4 and 5 ulp where x > -87; below, sigmoid (or e^x) is a denormal with fewer
  significant bits: 64 ulp (measured 46).
- HardSwish: 3 + 1 / |x/6 + 1/2| ulp: x/6 + 1/2 is rounded at the scale of 1/2, which near
  x = -3, where it cancels, is many ulp of the result (NumPy's formula does the same).
- GELU: 8 + 2 x^2 ulp (measured 5 near 0 and 1.55 x^2 in the tail): erfc's argument z = -x / sqrt 2
  enters as e^(-z^2), which magnifies the rounding of z^2 by z^2. GELU's tanh form: 6 + 3|2u|
  ulp (measured 2.3|2u|), the rounding of its sigmoid's argument 2u magnified the same way.
- LeakyRelu, HardSigmoid: one rounding (half an ulp); Relu, Relu6, Clip: exact.
Outputs below the normal range are within 2 * FLT_MIN of the value; non-finite ones (and NaN
in, NaN out) are exact. Results do not depend on the thread count: each thread takes whole
vectors.
"""
import numpy as np
import pytest

from engine._build_config import PORTABLE
from engine._kernels import activation as act
from engine.ops.activation import KINDS, float64_activation, kernel_act, parse

pytest.importorskip("scipy.special")

TINY = np.finfo(np.float32).tiny

# every kind, the ones with parameters at PyTorch's defaults and at others
NAMES = [k for k in KINDS] + ["elu(0.3)", "elu(-1.5)", "leaky_relu(0.2)", "leaky_relu(-0.5)",
                              "leaky_relu(3)", "hardsigmoid(0.2,0.5)", "clip(-1,2.5)",
                              "clip(-inf,0.5)"]


def inputs():
    rng = np.random.default_rng(3)
    return np.concatenate([rng.standard_normal(200_000) * 8, rng.standard_normal(50_000) / 2,
                           np.linspace(-110, 95, 100_001), np.linspace(-1e-3, 1e-3, 2001),
                           [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38,
                            1e-44, -1e-44]]).astype(np.float32)


def bound_ulp(name, x):
    kind = parse(name).kind
    x = x.astype(np.float64)
    if kind in ("relu", "relu6", "clip"):
        return np.zeros(x.shape)
    if kind == "hardsigmoid" and PORTABLE:
        # no FMA in a portable x86-64 build: alpha x rounds before beta is added, an error
        # large against the result near its zero (x = -beta / alpha), as for hardswish
        a = parse(name)
        return 1 + np.abs(a.alpha * x) / np.maximum(np.abs(a.alpha * x + a.beta), 1e-30)
    if kind in ("leaky_relu", "hardsigmoid"):
        return np.full(x.shape, 0.5)
    if kind in ("sigmoid", "tanh"):
        return np.full(x.shape, 3.0)
    if kind in ("softplus", "elu"):
        return np.full(x.shape, 4.0 if kind == "softplus" else 2.0)
    if kind in ("silu", "mish"):
        return np.where(x > -87, 4.0 if kind == "silu" else 5.0, 64.0)
    if kind == "hardswish":       # x/6 + 1/2 cancels near x = -3: its rounding, relative
        return 3 + 1 / np.abs(x / 6 + 0.5)
    if kind == "gelu_tanh":
        return 6 + 3 * np.abs(2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))
    return 8 + 2 * x * x


def run(name, x, threads=1):
    y = np.empty_like(x)
    act.f32_activation(x, y, kernel_act(name), threads)
    return y


@pytest.mark.parametrize("name", NAMES)
def test_against_float64(name):
    x = inputs()
    y = run(name, x)
    want = float64_activation(name, x)
    with np.errstate(over="ignore"):     # leaky_relu(3) of -3e38: -inf, as in float32
        w32 = want.astype(np.float32)
    normal = np.isfinite(w32) & (np.abs(w32) >= TINY)
    spacing = np.spacing(np.abs(w32[normal])).astype(np.float64)
    err = np.abs(y[normal].astype(np.float64) - want[normal]) / spacing
    bad = err > bound_ulp(name, x[normal])
    assert not bad.any(), (x[normal][bad][:5], err[bad][:5])
    # non-finite results, NaN included, exactly as the formula
    special = ~np.isfinite(w32)
    np.testing.assert_array_equal(y[special], w32[special])
    tiny = ~normal & ~special
    assert np.all(np.abs(y[tiny] - want[tiny]) <= 2 * TINY)
    # zeros: the sign the formula gives (tanh(-0) = -0, elu(-0) = -0, ...)
    z = np.float32([0.0, -0.0])
    np.testing.assert_array_equal(np.signbit(run(name, z)),
                                  np.signbit(float64_activation(name, z)))


def test_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    cases = {"sigmoid": [np.nan, 1, 0, 0.5, 0.5],
             "silu": [np.nan, np.inf, np.nan, 0, 0],            # -inf * 0: NaN
             "gelu": [np.nan, np.inf, np.nan, 0, 0],
             "hardswish": [np.nan, np.inf, np.nan, 0, 0],
             "tanh": [np.nan, 1, -1, 0, -0.0],
             "softplus": [np.nan, np.inf, 0, np.log(2), np.log(2)],
             "mish": [np.nan, np.inf, np.nan, 0, 0],
             "elu": [np.nan, np.inf, -1, 0, -0.0],
             "leaky_relu(0.1)": [np.nan, np.inf, -np.inf, 0, -0.0],
             "hardsigmoid": [np.nan, 1, 0, 0.5, 0.5],
             "clip(-1,2)": [np.nan, 2, -1, 0, -0.0]}
    for name, want in cases.items():
        np.testing.assert_array_equal(run(name, x), np.float32(want), err_msg=name)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 16384 * 3 + 5])
@pytest.mark.parametrize("name", ["sigmoid", "silu", "gelu", "tanh", "mish", "elu(0.5)",
                                  "hardsigmoid"])
def test_lengths_threads_and_in_place(name, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    one = run(name, x, 1)
    np.testing.assert_array_equal(run(name, x, 2), one)
    inplace = x.copy()
    act.f32_activation(inplace, inplace, kernel_act(name), 2)
    np.testing.assert_array_equal(inplace, one)
    if n:      # the padded last vector agrees with the whole-vector path
        whole = run(name, np.concatenate([x, np.zeros(16, np.float32)]))
        np.testing.assert_array_equal(whole[:n], one)


def test_spellings():
    assert parse("leaky_relu").alpha == np.float32(0.01)
    assert parse("clip(0,6)").kind == "relu6" and parse("clip(0, inf)").kind == "relu"
    assert parse("hardsigmoid").name == "hardsigmoid(0.16666667,0.5)"
    assert parse(" elu( 0.5 ) ").name == "elu(0.5)"
    for bad in ["swish", "relu(1)", "elu(1,2)", "elu(nan)", "leaky_relu(inf)", "clip(2,1)",
                "elu(x)", 3, "clip(nan,1)"]:
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(ValueError, match="code"):
        act.f32_activation(np.zeros(4, np.float32), np.zeros(4, np.float32),
                           {"code": 99, "alpha": 0.0, "beta": 0.0}, 1)
