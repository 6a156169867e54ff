"""Elementwise math (engine/graph/ops/mathops.py): the unary functions and activations, Pow,
and the variadic Min, Max and Mean, through ONNX models loaded with engine.load (and IR graphs
where the memory plan or the opset-6 broadcast is the subject).

Every operator is checked per element against a float64 NumPy reference written here, on the
float32 inputs, and against ONNX Runtime. Inputs: magnitudes log-uniform over 1e-6..1e3 of
both signs, normal values, and the special ones (NaN, +-inf, +-0, subnormals, halves for Round,
the edges of exp's range, 1e4 and 3e38 for Softplus and Mish).

Error model, against the float64 reference: NaN exactly where the reference is NaN; +-inf
exactly where the reference rounded to float32 is (overflow included); +-0 exactly where the
reference is (IEEE's signed zeros: Neg(0), Gelu(-0), pow(-0, 0.5) = +0); elsewhere
    |got - ref| <= rtol * |ref| + 1e-36,
the 1e-36 for results within ~100x of float32's smallest normal, made of subnormal
intermediates (exp(x) for x < -87). rtol, in units of eps32 = 2^-24, about twice the worst
measured (over ~1M inputs):
- exact: Neg, Abs, Floor, Ceil, Round, Sign, ThresholdedRelu (and zeros' signs agree);
- Sqrt, Reciprocal, Erf: 2 (measured 1.0); Exp 6 (3.1); Log 8 (3.9); Softsign 4 (2.0);
  Elu, Selu, Celu 8 (4.2); Softplus 8 (4.5); Mish 8 (4.4); Celu with alpha < 0:
  8 + 2 x/alpha where x/alpha > 0 (expm1(t) magnifies the rounding of t = x/alpha by t);
- Sin, Cos: 4 relative plus 3 eps32 absolute (measured 1.2 absolute: near their zeros the
  relative error is unbounded);
- Gelu: 4 (1 + x^2) (measured 1.9 (1 + x^2)): erfc(t) magnifies the rounding of t = -x/sqrt 2
  by 2t^2 in the tail; tanh form: 6 (1 + |z|), z = 2 sqrt(2/pi) (x + 0.044715 x^3) (measured
  3.2 (1 + |z|)): sigmoid(z) magnifies the rounding of z by |z|. The references use the
  spec's formulas in their exact rearrangements 1 + erf(t) = erfc(-t) and
  1 + tanh(u) = 2 sigmoid(2u) (float64's 1 + erf and 1 + tanh cancel for x << 0 too);
- Pow, against C99's pow (math.pow, with its poles and overflows): 4 for float32 exponents
  (powf; measured 1.7), 1 for integer and float64 ones (computed in float64, then rounded);
- Min, Max exact; Mean: (n + 1) eps32 times the mean of |inputs|.
ONNX Runtime evaluates several of these with its own approximations (and exp(x) - 1 where
expm1 belongs): within 1e-5 relative plus 1e-6 absolute of the engine (measured: 2e-7
relative beyond the 1e-6), with NaN and inf in the same places.
"""
import math


import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402
from scipy.special import erf, erfc  # noqa: E402

import engine  # noqa: E402
from engine.graph import Graph, Model, Node, TensorSpec  # noqa: E402
from children import run_python  # noqa: E402

EPS = 2.0 ** -24
ATOL = 1e-36

SPECIAL = np.array([
    np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1e-38, -1e-38, 1e-30,
    -1e-30, 1e-8, -1e-8, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, 1.0, -1.0, 20.0, -20.0, 87.0,
    -87.0, 88.7, 89.0, -89.0, 100.0, -100.0, -104.0, 1e4, -1e4, 1e30, -1e30, 3e38, -3e38],
    np.float32)


def sample(rng, n=3000):
    mag = np.exp(rng.uniform(math.log(1e-6), math.log(1e3), n))
    wide = mag * rng.choice([-1.0, 1.0], n)
    return np.concatenate([SPECIAL, wide, 3 * rng.standard_normal(n)]).astype(np.float32)


# ============================================================================ helpers

def onnx_model(op, inputs, attrs=None, opset=20, consts=(), out_type=None):
    """A one-node model: graph inputs ``inputs`` [(name, array)], initializers ``consts``
    [(name, array)], read in that order; output "y" (of the first input's type by default)."""
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in inputs]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in consts]
    names = [n for n, _ in inputs] + [n for n, _ in consts]
    first = (list(inputs) + list(consts))[0][1]
    elem = out_type or helper.np_dtype_to_tensor_dtype(first.dtype)
    node = helper.make_node(op, names, ["y"], name="node", **(attrs or {}))
    graph = helper.make_graph([node], "g", vis, [helper.make_tensor_value_info("y", elem, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_engine(model, feeds):
    return engine.load(model).run(feeds)["y"]


def run_ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def check(got, ref, rtol, atol=ATOL):
    """The error model above; ``rtol`` and ``atol`` may be arrays (per element)."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        ref32 = ref.astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg="NaN where the reference has none"
                                  " or the other way")
    inf = np.isinf(ref32)
    np.testing.assert_array_equal(got[inf], ref32[inf], err_msg="infinities differ")
    zero = ref == 0
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(ref[zero]),
                                  err_msg="zeros' signs differ")
    fin = ~nan & ~inf
    g = got.astype(np.float64)
    with np.errstate(invalid="ignore"):      # the bound of non-finite elements is not used
        bound = np.broadcast_to(rtol * np.abs(ref) + atol, ref.shape)
        bad = fin & ~(np.abs(g - ref) <= bound)
    if bad.any():
        k = np.flatnonzero(bad)[0]
        raise AssertionError(f"{bad.sum()} elements out of tolerance, first at {k}: got "
                             f"{g.flat[k]!r}, reference {ref.flat[k]!r}, bound "
                             f"{bound.flat[k]:.3g}")


def check_exact(got, ref):
    ref32 = np.asarray(ref).astype(got.dtype)
    np.testing.assert_array_equal(got, ref32)
    if got.dtype.kind == "f":
        zero = ref32 == 0
        np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(ref32[zero]))


def check_ort(got, expected):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    inf = np.isinf(expected)
    np.testing.assert_array_equal(got[inf], expected[inf])
    ok = ~np.isnan(expected) & ~inf
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-5, atol=1e-6)


@pytest.fixture
def rng():
    return np.random.default_rng(20)


# ============================================================================ unary

C = math.sqrt(2 / math.pi)
f64 = np.float64


def _selu(v, alpha=f64(np.float32(1.67326319217681884765625)),
          gamma=f64(np.float32(1.05070102214813232421875))):
    return gamma * np.where(v > 0, v, alpha * np.expm1(v))


def _celu(v, alpha):
    """max(0, x) + min(0, alpha expm1(x / alpha)): one term or the other is 0, for alpha of
    either sign (written as a choice, so that Celu(-0) is expm1's -0)."""
    a = f64(np.float32(alpha))
    return np.where(v > 0, v, a * np.expm1(v / a))


def _gelu_tanh_z(v):
    return 2 * C * (v + 0.044715 * v ** 3)


# name: (op, attrs, float64 reference, rtol (scalar or function of x), exact)
UNARY = {
    "Sqrt": ("Sqrt", {}, np.sqrt, 2 * EPS),
    "Exp": ("Exp", {}, np.exp, 6 * EPS),
    "Log": ("Log", {}, np.log, 8 * EPS),
    "Reciprocal": ("Reciprocal", {}, lambda v: 1 / v, 2 * EPS),
    "Erf": ("Erf", {}, erf, 2 * EPS),
    "Sin": ("Sin", {}, np.sin, 4 * EPS),
    "Cos": ("Cos", {}, np.cos, 4 * EPS),
    "Softsign": ("Softsign", {}, lambda v: v / (1 + np.abs(v)), 4 * EPS),
    "Softplus": ("Softplus", {}, lambda v: np.logaddexp(v, 0), 8 * EPS),
    "Mish": ("Mish", {}, lambda v: v * np.tanh(np.logaddexp(v, 0)), 8 * EPS),
    "Elu": ("Elu", {}, lambda v: np.where(v > 0, v, np.expm1(v)), 8 * EPS),
    "Elu_alpha": ("Elu", {"alpha": 0.3},
                  lambda v: np.where(v > 0, v, f64(np.float32(0.3)) * np.expm1(v)),
                  8 * EPS),
    "Selu": ("Selu", {}, _selu, 8 * EPS),
    "Selu_attrs": ("Selu", {"alpha": 2.0, "gamma": 0.5},
                   lambda v: _selu(v, 2.0, 0.5), 8 * EPS),
    "Celu": ("Celu", {}, lambda v: _celu(v, 1.0), 8 * EPS),
    "Celu_alpha": ("Celu", {"alpha": 1.7}, lambda v: _celu(v, 1.7), 8 * EPS),
    # alpha < 0: expm1(t) for t = x/alpha > 0 magnifies the rounding of t by t
    "Celu_negative_alpha": ("Celu", {"alpha": -0.6}, lambda v: _celu(v, -0.6),
                            lambda v: EPS * (8 + 2 * np.maximum(v / -0.6, 0))),
    "Gelu": ("Gelu", {}, lambda v: 0.5 * v * erfc(-v / math.sqrt(2)),
             lambda v: 4 * EPS * (1 + v * v)),
    "Gelu_none": ("Gelu", {"approximate": "none"}, lambda v: 0.5 * v * erfc(-v / math.sqrt(2)),
                  lambda v: 4 * EPS * (1 + v * v)),
    "Gelu_tanh": ("Gelu", {"approximate": "tanh"}, lambda v: v / (1 + np.exp(-_gelu_tanh_z(v))),
                  lambda v: 6 * EPS * (1 + np.abs(_gelu_tanh_z(v)))),
}
EXACT = {
    "Neg": ("Neg", {}, np.negative),
    "Abs": ("Abs", {}, np.abs),
    "Floor": ("Floor", {}, np.floor),
    "Ceil": ("Ceil", {}, np.ceil),
    "Round": ("Round", {}, np.rint),
    "Sign": ("Sign", {}, np.sign),
    "ThresholdedRelu": ("ThresholdedRelu", {}, lambda v: np.where(v > 1.0, v, 0.0)),
    "ThresholdedRelu_alpha": ("ThresholdedRelu", {"alpha": -0.5},
                              lambda v: np.where(v > -0.5, v, 0.0)),
}
OPSET = {"Gelu": 20, "Celu": 12, "Mish": 18, "ThresholdedRelu": 10}


def _reference(fn, x):
    with np.errstate(all="ignore"):
        return fn(x.astype(np.float64))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_against_float64(name, rng):
    op, attrs, fn, rtol = UNARY[name]
    x = sample(rng)
    if op in ("Sin", "Cos"):   # the far range, where float32 sin/cos reduce arguments
        x = np.concatenate([x, np.linspace(-1e6, 1e6, 2001, dtype=np.float32)])
    model = onnx_model(op, [("x", x)], attrs, OPSET.get(op, 13))
    got = run_engine(model, {"x": x})
    ref = _reference(fn, x)
    tol = rtol(x.astype(np.float64)) if callable(rtol) else rtol
    check(got, ref, tol, ATOL + (3 * EPS if op in ("Sin", "Cos") else 0))
    check_ort(got, run_ort(model, {"x": x}))


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_unary(name, rng):
    op, attrs, fn = EXACT[name]
    x = np.concatenate([sample(rng), np.float32([0.49999997, -0.49999997, 4.5, -4.5, 5.5,
                                                 8e6 + 1])])
    model = onnx_model(op, [("x", x)], attrs, OPSET.get(op, 13))
    got = run_engine(model, {"x": x})
    check_exact(got, _reference(fn, x))
    np.testing.assert_array_equal(got, run_ort(model, {"x": x}))


def test_unary_keeps_shape_and_runs_in_place(rng):
    """A 4-D tensor through a chain whose intermediates die at each op: the single-pass ops
    write over their input (the memory plan says so), the others get a buffer of their own;
    every value as the reference."""
    x = sample(rng, 500)[:1000].reshape(2, 5, 4, 25)
    names = sorted(UNARY) + sorted(EXACT)
    for name in names:
        op, attrs, fn = (UNARY.get(name) or EXACT[name])[:3]
        nodes = [Node("Neg", "pre", ["x"], ["a"]), Node(op, "op", ["a"], ["b"], dict(attrs)),
                 Node("Neg", "post", ["b"], ["y"])]
        model = Model(Graph(nodes, [TensorSpec("x", x.shape, "float32")],
                            [TensorSpec("y", None, "float32")], {}))
        got = model(x)
        ref = -_reference(fn, -x.astype(np.float64))
        if name in EXACT:
            check_exact(got, ref)
        else:
            rtol = UNARY[name][3]
            tol = rtol(-x.astype(np.float64)) if callable(rtol) else rtol
            check(got, ref, tol, ATOL + (3 * EPS if op in ("Sin", "Cos") else 0))
        plan = model._last_plan
        in_place = plan.root["b"] == plan.root["a"]
        single_pass = op in ("Sqrt", "Exp", "Log", "Reciprocal", "Erf", "Sin", "Cos", "Neg",
                             "Abs", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu",
                             "Elu", "Softplus", "Mish", "Gelu")   # the vector kernels
        assert in_place == single_pass, name


def test_unary_on_scalars(rng):
    """Rank-0 tensors (NumPy gives scalars, not arrays, for some operations on them)."""
    values = np.float32([-0.7, 0.0, 2.5, np.nan, -np.inf])
    for name in sorted(UNARY) + sorted(EXACT):
        op, attrs, fn = (UNARY.get(name) or EXACT[name])[:3]
        nodes = [Node("Neg", "pre", ["x"], ["a"]), Node(op, "op", ["a"], ["b"], dict(attrs)),
                 Node("Neg", "post", ["b"], ["y"])]
        model = Model(Graph(nodes, [TensorSpec("x", (), "float32")],
                            [TensorSpec("y", None, "float32")], {}))
        got = np.array([model(np.array(v)) for v in values])
        ref = -_reference(fn, -values.astype(np.float64))
        if name in EXACT:
            check_exact(got, ref)
        else:
            rtol = UNARY[name][3]
            check(got, ref, rtol(-values.astype(np.float64)) if callable(rtol) else rtol,
                  ATOL + (3 * EPS if op in ("Sin", "Cos") else 0))


@pytest.mark.parametrize("op", ["Neg", "Abs", "Sign"])
def test_int64_unary(op):
    values = [0, 1, -1, 7, -7, 1 << 40, -(1 << 40), (1 << 63) - 1, -(1 << 63) + 1]
    x = np.array(values, np.int64).reshape(3, 3)
    ref = {"Neg": lambda v: -v, "Abs": abs, "Sign": lambda v: (v > 0) - (v < 0)}[op]
    model = onnx_model(op, [("x", x)])
    got = run_engine(model, {"x": x})
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.array([[ref(v) for v in row] for row in
                                                  x.tolist()], np.int64))
    np.testing.assert_array_equal(got, run_ort(model, {"x": x}))


def test_large_inputs_do_not_overflow():
    """Softplus, Mish and Gelu are x for large x (no inf from exp(x) or x^3), and vanish far
    below (Softplus(-100) is e^-100, a subnormal); Exp overflows to inf exactly past
    log(float32 max)."""
    x = np.float32([100, 1e4, 1e20, 3e38, -100, -1e4, -3e38])
    for op, attrs in (("Softplus", {}), ("Mish", {}), ("Gelu", {}),
                      ("Gelu", {"approximate": "tanh"})):
        got = run_engine(onnx_model(op, [("x", x)], attrs), {"x": x})
        np.testing.assert_array_equal(got[:4], x[:4])
        assert np.all(np.abs(got[4:]) < 1e-40), (op, got[4:])
    e = np.float32([88.72283, 88.72284, -103.97, -104.0])
    got = run_engine(onnx_model("Exp", [("x", e)], opset=13), {"x": e})
    assert np.isfinite(got[0]) and got[1] == np.inf and got[2] > 0 and got[3] == 0


def test_scipy_is_imported_only_by_models_that_need_it(tmp_path):
    code = ("import sys, engine; from engine.graph import Graph, Model, Node, TensorSpec; "
            "Model(Graph([Node('Gelu', 'g', ['x'], ['y'], {'approximate': 'tanh'})], "
            "[TensorSpec('x', (2,), 'float32')], [TensorSpec('y', None, 'float32')], {})); "
            "print('scipy.special' in sys.modules)")
    out = run_python(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_import_engine_loads_only_the_functional_core(tmp_path):
    # the graph runner, the lab, scipy, onnx, dask and matplotlib load when first used
    code = ("import sys, engine; print(' '.join(m for m in ('engine.graph', 'engine.lab', "
            "'scipy', 'onnx', 'dask', 'matplotlib', 'torch') if m in sys.modules)); "
            "print(engine.Model.__name__, engine.compare.__name__)")
    out = run_python(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["", "Model compare"]


# ============================================================================ Pow

BASES = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, 0.5, -0.5, 1.0, -1.0, 2.0,
                    -2.0, 3.7, -3.7, 1e20, -1e20])
EXPONENTS = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0,
                        3.0, 2.5, -3.0, 40.0, 1e-7])


def _c_pow(a, b):
    """C99's pow (Annex F), as ONNX Runtime computes it; NumPy's float64 power is sqrt for an
    exponent of 0.5, NaN at -inf."""
    odd = math.isfinite(b) and float(b).is_integer() and int(b) % 2 == 1
    if a == 0 and b < 0:         # a pole, where math.pow raises
        return math.copysign(math.inf, a) if odd else math.inf
    try:
        return math.pow(a, b)
    except ValueError:           # a negative base to a non-integer power
        return math.nan
    except OverflowError:
        return -math.inf if a < 0 and odd else math.inf


def pow_ref(x, y):
    x, y = np.broadcast_arrays(x.astype(np.float64), y.astype(np.float64))
    return np.array([_c_pow(a, b) for a, b in zip(x.flat, y.flat)]).reshape(x.shape)


def test_pow_float_exponent_grid_and_broadcasting(rng):
    """Every pair of special bases and exponents (C99's pow table: pow(-1, inf) = 1,
    pow(x, +-0) = 1 even for NaN, pow(-0, -odd) = -inf, ...), then random values over a
    3-way broadcast."""
    x, y = BASES.reshape(-1, 1), EXPONENTS.reshape(1, -1)
    model = onnx_model("Pow", [("x", x), ("e", y)], opset=15)
    got = run_engine(model, {"x": x, "e": y})
    check(got, pow_ref(x, y), 4 * EPS)
    check_ort(got, run_ort(model, {"x": x, "e": y}))
    x = np.abs(rng.standard_normal((2, 1, 5)) * 4).astype(np.float32)
    y = (rng.standard_normal((3, 1)) * 3).astype(np.float32)
    model = onnx_model("Pow", [("x", x), ("e", y)], opset=13)
    got = run_engine(model, {"x": x, "e": y})
    assert got.shape == (2, 3, 5)
    check(got, pow_ref(x, y), 4 * EPS)
    check_ort(got, run_ort(model, {"x": x, "e": y}))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.uint64, np.float64])
def test_pow_other_exponent_types(dtype, rng):
    x = np.concatenate([BASES, (rng.standard_normal(20) * 2).astype(np.float32)]).reshape(-1, 1)
    ints = [0, 1, 2, 3, 5, 11] + ([-1, -2, -3] if np.dtype(dtype).kind != "u" else [])
    y = np.array(ints + ([0.5, -1.5] if np.dtype(dtype).kind == "f" else []), dtype)
    y = y.reshape(1, -1)
    model = onnx_model("Pow", [("x", x), ("e", y)], opset=15)
    got = run_engine(model, {"x": x, "e": y})
    check(got, pow_ref(x, y), EPS)
    if np.dtype(dtype).kind != "u":      # ONNX Runtime has no Pow for unsigned exponents
        check_ort(got, run_ort(model, {"x": x, "e": y}))


@pytest.mark.parametrize("value,dtype,path", [
    (2.0, np.float32, "x*x"), (2, np.int64, "x*x"), (3.0, np.float32, "x*x*x"),
    (3, np.int64, "x*x*x"), (0.5, np.float32, "sqrt"), (1.0, np.float32, "a copy"),
    (1, np.int32, "a copy"), (4.0, np.float32, None), (0.0, np.float32, None),
    (-0.5, np.float32, None)])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1)])
def test_pow_constant_exponent(value, dtype, path, shape, rng):
    """A constant scalar exponent of 2, 3, 0.5 or 1 takes the cheap path, with pow's values
    (pow(-0, 0.5) = +0, pow(-inf, 0.5) = +inf); the exponent's rank broadcasts X up. The
    input dies at Pow, so the plan may write over it (not for x*x*x, which reads x last)."""
    x = np.concatenate([BASES, (rng.standard_normal(24) * 3).astype(np.float32)]).reshape(4, 10)
    e = np.full(shape, value, dtype)
    nodes = [Node("Abs", "pre", ["x"], ["a"]), Node("Neg", "neg", ["a"], ["b"]),
             Node("Pow", "pow", ["b", "e"], ["y"]), Node("Neg", "post", ["y"], ["z"])]
    model = Model(Graph(nodes, [TensorSpec("x", x.shape, "float32")],
                        [TensorSpec("z", None, "float32")], {"e": e}))
    b = -np.abs(x)
    got = model(x)
    ref = -pow_ref(b, e)
    assert got.shape == ref.shape
    check(got, ref, 4 * EPS)
    explained = model.explain()
    assert (f": {path}" in explained) == (path is not None)
    plan = model._last_plan
    assert (plan.root["y"] == plan.root["b"]) == (path != "x*x*x" and ref.shape == b.shape)
    onnx_m = onnx_model("Pow", [("x", b)], consts=[("e", e)], opset=15)
    check_ort(run_engine(onnx_m, {"x": b}), run_ort(onnx_m, {"x": b}))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_pow_run_time_scalar_exponent(dtype, rng):
    """A one-element exponent fed when the model runs: pow's values for every exponent,
    0.5 included (NumPy's power takes that for sqrt: NaN at -inf)."""
    x = np.concatenate([BASES, (rng.standard_normal(24) * 3).astype(np.float32)])
    for shape in [(), (1, 1)]:
        model = onnx_model("Pow", [("x", x), ("e", np.zeros(shape, dtype))], opset=15)
        m = engine.load(model)
        values = [0.5, 2.0, 3.0, -0.5, 1.0, 0.0, -1.0] if dtype != np.int64 else [2, 3, -1, 0]
        for value in values:
            e = np.full(shape, value, dtype)
            got = m.run({"x": x, "e": e})["y"]
            check(got, pow_ref(x, e), EPS if dtype != np.float32 else 4 * EPS)
            check_ort(got, run_ort(model, {"x": x, "e": e}))


def test_pow_opset6_broadcast_axis(rng):
    """The IR's opset < 7 form: B lined up with A from ``broadcast_axis`` on."""
    x = np.abs(rng.standard_normal((2, 3, 4))).astype(np.float32)
    e = np.float32([1.0, 2.0, 0.5])
    model = Model(Graph([Node("Pow", "p", ["x", "e"], ["y"], {"broadcast_axis": 1})],
                        [TensorSpec("x", x.shape, "float32")],
                        [TensorSpec("y", None, "float32")], {"e": e}))
    check(model(x), pow_ref(x, e.reshape(1, 3, 1)), 4 * EPS)


# ============================================================================ Min, Max, Mean

SHAPES = [(2, 3, 4), (3, 1), (1, 4), (2, 1, 4)]


@pytest.mark.parametrize("op", ["Min", "Max", "Mean"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_variadic_float(op, n, rng):
    xs = [(rng.standard_normal(s) * 10).astype(np.float32) for s in SHAPES[:n]]
    xs[0].flat[[0, 5]] = np.nan                  # NaN wins
    xs[-1].flat[1] = np.inf
    xs[-1].flat[2] = -np.inf
    feeds = {f"x{k}": v for k, v in enumerate(xs)}
    model = onnx_model(op, list(feeds.items()), opset=13)
    got = run_engine(model, feeds)
    stacked = np.stack(np.broadcast_arrays(*[v.astype(np.float64) for v in xs]))
    if op == "Mean":
        with np.errstate(invalid="ignore"):
            ref = stacked.mean(axis=0)
            magnitude = np.abs(stacked).mean(axis=0)
        check(got, ref, 0, (n + 1) * EPS * np.where(np.isfinite(magnitude), magnitude, 0))
    else:
        ufunc = np.minimum if op == "Min" else np.maximum
        check_exact(got, ufunc.reduce(stacked, axis=0))
    check_ort(got, run_ort(model, feeds))


@pytest.mark.parametrize("op", ["Min", "Max"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8, np.uint64,
                                   np.float64])
def test_min_max_other_types(op, dtype, rng):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    a = np.array([info.min, info.max, 0, 1, 5, 3], dtype).reshape(2, 3)
    b = np.array([info.max, info.min, 1, 0], dtype).reshape(4, 1, 1)[:, :, :1]
    feeds = {"a": a, "b": b}
    model = onnx_model(op, list(feeds.items()), opset=13)
    got = run_engine(model, feeds)
    pick = min if op == "Min" else max
    ref = [[[pick(u, v) for u in row] for row in a.tolist()] for v in b.reshape(-1).tolist()]
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.array(ref, dtype))
    np.testing.assert_array_equal(got, run_ort(model, feeds))


@pytest.mark.parametrize("op", ["Min", "Max", "Mean", "Sum"])
def test_variadic_repeated_input_in_place(op, rng):
    """Op(a, a, b) and Op(b, a, a) with a dying at the node: the in-place choice must not
    write over a tensor read again."""
    x = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    for order in (["a", "a", "b"], ["b", "a", "a"], ["a", "b", "a"]):
        nodes = [Node("Neg", "neg", ["x"], ["a"]), Node(op, "op", order, ["y"])]
        model = Model(Graph(nodes, [TensorSpec("x", x.shape, "float32")],
                            [TensorSpec("y", None, "float32")], {"b": b}))
        vals = {"a": -x.astype(np.float64), "b": b.astype(np.float64)}
        stacked = np.stack([vals[k] for k in order])
        ref = {"Min": stacked.min(0), "Max": stacked.max(0), "Mean": stacked.mean(0),
               "Sum": stacked.sum(0)}[op]
        check(model(x), ref, 4 * EPS, 4 * EPS)


# ============================================================================ folding

def test_constant_math_folds_at_load():
    """Nodes whose inputs are all constants are computed once, at load."""
    c = {"a": np.float32([4.0, 9.0]), "two": np.array(2.0, np.float32),
         "b": np.float32([-1.0, 5.0])}
    nodes = [Node("Sqrt", "sqrt", ["a"], ["s"]), Node("Pow", "pow", ["s", "two"], ["p"]),
             Node("Max", "max", ["p", "b"], ["m"]), Node("Gelu", "gelu", ["m"], ["g"]),
             Node("Add", "add", ["x", "g"], ["y"])]
    model = Model(Graph(nodes, [TensorSpec("x", (2,), "float32")],
                        [TensorSpec("y", None, "float32")], c))
    assert [n.op for n in model.graph.nodes] == ["Add"]
    g = 0.5 * np.float64([4, 9]) * erfc(-np.float64([4, 9]) / math.sqrt(2))
    check(model.graph.constants["g"], g, 4 * EPS)


def test_shape_arithmetic_folds_while_planning():
    """Int64 Neg, Abs, Max and Min on a Shape (free batch dimension): computed while
    planning, leaving the Reshape the only step."""
    c = {"one": np.int64([1, 1]), "cap": np.int64([100, 100])}
    nodes = [Node("Shape", "shape", ["x"], ["s"]), Node("Neg", "neg", ["s"], ["n"]),
             Node("Abs", "abs", ["n"], ["a"]), Node("Max", "max", ["a", "one"], ["m"]),
             Node("Min", "min", ["m", "cap"], ["t"]), Node("Sign", "sign", ["t"], ["u"]),
             Node("Mul", "mul", ["t", "u"], ["v"]), Node("Reshape", "r", ["x", "v"], ["y"])]
    model = Model(Graph(nodes, [TensorSpec("x", (None, 6), "float32")],
                        [TensorSpec("y", None, "float32")], c))
    x = np.arange(18, dtype=np.float32).reshape(3, 6)
    np.testing.assert_array_equal(model(x), x)
    plan = model._last_plan
    assert len(plan.run_fns) <= 1 and "v" in plan.folded


# ============================================================================ malformed

def _ir(op, inputs, attrs=None, dtypes=None, consts=None):
    dtypes = dtypes or ["float32"] * len(inputs)
    specs = [TensorSpec(n, (2, 3), d) for n, d in zip(inputs, dtypes) if n not in (consts or {})]
    return Graph([Node(op, "bad", list(inputs), ["y"], attrs or {})], specs,
                 [TensorSpec("y", None, "float32")], consts or {})


@pytest.mark.parametrize("op,inputs,attrs,dtypes,consts,match", [
    ("Sqrt", ["x"], {}, ["int64"], None, "float32, got int64"),
    ("Exp", ["x"], {}, ["float64"], None, "float32, got float64"),
    ("Neg", ["x"], {}, ["int32"], None, "float32 or int64, got int32"),
    ("Sign", ["x"], {}, ["bool"], None, "got bool"),
    ("Gelu", ["x"], {"approximate": "fast"}, None, None, "approximate"),
    ("Gelu", ["x"], {"approximate": 1}, None, None, "must be str"),
    ("Celu", ["x"], {"alpha": 0.0}, None, None, "nonzero"),
    ("Celu", ["x"], {"alpha": float("nan")}, None, None, "finite"),
    ("Elu", ["x"], {"beta": 1.0}, None, None, "unknown attribute"),
    ("Erf", ["x", "x2"], {}, None, None, "takes 1 inputs"),
    ("Pow", ["x"], {}, None, None, "takes 2 inputs"),
    ("Pow", ["x", "e"], {}, ["int64", "int64"], None, "float32, got int64"),
    ("Pow", ["x", "e"], {}, ["float32", "bool"], None, "number type, got bool"),
    ("Pow", ["x", "e"], {}, None, {"e": np.ones((4,), np.float32)}, "do not broadcast"),
    ("Pow", ["x", "e"], {"broadcast_axis": 2}, None, {"e": np.ones((3,), np.float32)},
     "broadcast axis"),
    ("Min", ["x", "z"], {}, ["float32", "int64"], None, "different dtypes"),
    ("Max", ["x", "z"], {}, None, {"z": np.ones((4,), np.float32)}, "do not broadcast"),
    ("Max", ["x", "z"], {}, ["bool", "bool"], None, "number type, got bool"),
    ("Mean", ["x", "z"], {}, ["int64", "int64"], None, "float, got int64"),
    ("Min", [], {}, None, None, "takes 1"),
])
def test_malformed_nodes_raise_model_error(op, inputs, attrs, dtypes, consts, match):
    with pytest.raises(engine.ModelError, match=match) as e:
        Model(_ir(op, inputs, attrs, dtypes, consts))
    assert "'bad'" in str(e.value)


def test_malformed_onnx_node_raises_model_error():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(engine.ModelError, match="Gelu"):
        engine.load(onnx_model("Gelu", [("x", x)], {"approximate": "erf"}))
    with pytest.raises(engine.ModelError, match="Sqrt"):
        engine.load(onnx_model("Sqrt", [("x", x.astype(np.float64))], opset=13))
