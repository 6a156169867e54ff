"""Elementwise math: unary functions and activations beyond elementwise.py's, Pow, and the
variadic Min, Max and Mean.

Float32 in and out (Neg, Abs and Sign also take int64, for shape arithmetic; Min and Max any
number type). Gelu, Elu, Softplus and Mish are one vector pass of the kernels the
convolutions fuse them with (engine/ops/activation.py); the rest are a few NumPy ufunc passes
with ``out=``. NaN and infinities are values, not errors, so the steps that can make them run
with NumPy's warnings off. The formulas are arranged to stay accurate where the textbook form
cancels or overflows (Softplus and Mish for large |x|, Gelu's tails, Elu's expm1). Nodes
whose inputs are all constants are computed while planning by the planner's folding
(plan.infer_nodes), through these same steps.
"""
from __future__ import annotations

import math

import numpy as np

from .base import F32, I64, Info, register
from .elementwise import Binary, Sum, Unary, VectorUnary


def broadcast(op, a, b):
    """Output shape of a two-input elementwise op (B's shape lined up with A's by
    ``op.b_shape``, for Binary's opset < 7 ``broadcast_axis``)."""
    view = op.b_shape(a.shape, b.shape)
    try:
        return np.broadcast_shapes(a.shape, view)
    except ValueError:
        raise op.error(f"shapes {a.shape} and {b.shape} do not broadcast") from None


# ============================================================================ unary

class Math(Unary):
    """One ufunc on float32 (and int64 where ``ints``)."""
    ufunc = None
    ints = False
    quiet = True      # the ufunc can make NaN or inf from finite input: no warnings

    def infer(self, ins):
        x = ins[0]
        if x.dtype != F32 and not (self.ints and x.dtype == I64):
            raise self.error(f"X must be float32{' or int64' if self.ints else ''}, "
                             f"got {x.dtype}")
        return [Info(x.shape, x.dtype)]

    def kernel(self):
        ufunc = self.ufunc
        if not self.quiet:
            return lambda x, out: ufunc(x, out=out)

        def run(x, out):
            with np.errstate(all="ignore"):
                ufunc(x, out=out)
        return run


@register
class Sqrt(Math):
    kind = "Sqrt"
    ufunc = np.sqrt


@register
class Exp(Math):
    kind = "Exp"
    ufunc = np.exp


@register
class Log(Math):
    kind = "Log"
    ufunc = np.log


@register
class Reciprocal(Math):
    kind = "Reciprocal"
    ufunc = np.reciprocal


@register
class Sin(Math):
    kind = "Sin"
    ufunc = np.sin


@register
class Cos(Math):
    kind = "Cos"
    ufunc = np.cos


@register
class Neg(Math):
    kind = "Neg"
    ufunc = np.negative
    ints = True
    quiet = False


@register
class Abs(Math):
    kind = "Abs"
    ufunc = np.absolute
    ints = True
    quiet = False


@register
class Sign(Math):
    kind = "Sign"
    ufunc = np.sign
    ints = True
    quiet = False


@register
class Floor(Math):
    kind = "Floor"
    ufunc = np.floor
    quiet = False


@register
class Ceil(Math):
    kind = "Ceil"
    ufunc = np.ceil
    quiet = False


@register
class Round(Math):
    kind = "Round"
    ufunc = np.rint    # rint: halves to even, as ONNX's Round
    quiet = False


@register
class Erf(Unary):
    kind = "Erf"

    def kernel(self):
        # scipy.special costs 0.2 s to import: only models that use Erf pay it
        from scipy.special import erf
        return lambda x, out: erf(x, out=out)


@register
class Gelu(VectorUnary):
    """Opset 20: ``approximate`` "none", x/2 (1 + erf(x/sqrt 2)), computed as x Phi(x) with
    Phi = erfc(-x / sqrt 2) / 2 (no 1 + erf cancellation for x < 0, where Gelu is tiny but not
    0), or "tanh", x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), computed as x sigmoid(2u)."""
    kind = "Gelu"
    attributes = {"approximate": "str"}
    flops_per_element = 8

    def setup(self, constants):
        self.approximate = self.attr("approximate", "none")
        if self.approximate not in ("none", "tanh"):
            raise self.error(f"approximate must be 'none' or 'tanh', got "
                             f"{self.approximate!r}")

    def activation(self):
        return "gelu" if self.approximate == "none" else "gelu_tanh"


@register
class Elu(VectorUnary):
    """x for x > 0, alpha (exp(x) - 1) otherwise (expm1: exact near 0)."""
    kind = "Elu"
    attributes = {"alpha": "float"}

    def setup(self, constants):
        self.alpha = self.finite_attr("alpha", 1.0)

    def activation(self):
        return f"elu({self.alpha})"


def exponential_linear(alpha, gamma=1, divisor=1):
    """gamma x for x > 0, gamma alpha expm1(x / divisor) otherwise: Elu, Selu and Celu
    (divisor alpha). Where x > 0 the expm1 branch (inf, perhaps) is written over; NaN stays
    NaN (x > 0 is false, and expm1 keeps it)."""
    coeff = np.float32(gamma * alpha)
    gamma, divisor = np.float32(gamma), np.float32(divisor)

    def run(x, out):
        with np.errstate(all="ignore"):
            if divisor != 1:
                np.divide(x, divisor, out=out)
                np.expm1(out, out=out)
            else:
                np.expm1(x, out=out)
            out *= coeff
            if gamma == 1:
                np.copyto(out, x, where=x > 0)
            else:
                np.multiply(x, gamma, out=out, where=x > 0)
    return run


@register
class Selu(Unary):
    kind = "Selu"
    attributes = {"alpha": "float", "gamma": "float"}
    single_pass = False

    def setup(self, constants):
        # ONNX's defaults, the float32 values of the SELU paper's constants
        self.alpha = np.float32(self.attr("alpha", 1.67326319217681884765625))
        self.gamma = np.float32(self.attr("gamma", 1.05070102214813232421875))

    flops_per_element = 4

    def kernel(self):
        return exponential_linear(self.alpha, self.gamma)


@register
class Celu(Unary):
    """max(0, x) + min(0, alpha (exp(x/alpha) - 1)); for alpha of either sign the second term
    is 0 for x > 0 and alpha expm1(x/alpha) otherwise."""
    kind = "Celu"
    attributes = {"alpha": "float"}
    single_pass = False

    def setup(self, constants):
        alpha = self.attr("alpha", 1.0)
        if not math.isfinite(alpha) or np.float32(alpha) == 0:
            raise self.error(f"alpha must be finite and nonzero (Celu divides by it), "
                             f"got {alpha!r}")
        self.alpha = np.float32(alpha)

    flops_per_element = 5

    def kernel(self):
        return exponential_linear(self.alpha, divisor=self.alpha)


@register
class Softplus(VectorUnary):
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): exp never overflows, and the small
    values of x << 0 stay exact."""
    kind = "Softplus"

    def activation(self):
        return "softplus"


@register
class Mish(VectorUnary):
    """x tanh(softplus(x)), as x n (n + 2) / (n (n + 2) + 2) with n = exp(x)."""
    kind = "Mish"
    flops_per_element = 7

    def activation(self):
        return "mish"


@register
class Softsign(Unary):
    """x / (1 + |x|)."""
    kind = "Softsign"
    single_pass = False

    flops_per_element = 3

    def kernel(self):
        def softsign(x, out):
            np.absolute(x, out=out)
            out += np.float32(1)
            with np.errstate(invalid="ignore"):   # inf / inf is NaN, as in the formula
                np.divide(x, out, out=out)
        return softsign


@register
class ThresholdedRelu(Unary):
    """x for x > alpha, 0 otherwise (NaN too: it is not > alpha)."""
    kind = "ThresholdedRelu"
    attributes = {"alpha": "float"}

    def setup(self, constants):
        self.alpha = np.float32(self.attr("alpha", 1.0))

    def kernel(self):
        alpha = self.alpha

        def run(x, out):
            keep = x > alpha        # read before out is written: may run in place
            np.copyto(out, x)
            np.copyto(out, np.float32(0), where=~keep)
        return run


# ============================================================================ Pow

def _copy(x, out):
    np.copyto(out, x)


def _square(x, out):
    with np.errstate(over="ignore"):
        np.square(x, out=out)


def _cube(x, out):
    # reads x after writing out: never in place (Pow.inplace_inputs)
    with np.errstate(over="ignore"):
        np.multiply(x, x, out=out)
        out *= x


def _root(x, out):
    """pow(x, 0.5) is sqrt(x) but for pow's +0 at -0 and +inf at -inf (IEEE 754)."""
    minus_inf = np.equal(x, -np.inf)      # read before out is written: may run in place
    with np.errstate(invalid="ignore"):
        np.sqrt(x, out=out)
    out += np.float32(0)                  # -0 + 0 is +0
    np.copyto(out, np.float32(np.inf), where=minus_inf)


# A constant scalar exponent of these values takes cheaper passes than powf (square 4x, sqrt
# 2x, cube 6x faster on a 1.2M-element tensor); ONNX Runtime does the same for 2 and 3.
_FAST_POW = {1.0: ("a copy", _copy), 2.0: ("x*x", _square), 3.0: ("x*x*x", _cube),
             0.5: ("sqrt", _root)}


@register
class Pow(Binary):
    """X (float32) to the power Y (any number type, broadcasting): powf for a float32 Y; an
    integer or float64 Y is computed in float64 and rounded."""
    kind = "Pow"

    def infer(self, ins):
        x = self.float_in(ins, 0)
        y = ins[1]
        if y.dtype.kind not in "iuf":
            raise self.error(f"Y must be a number type, got {y.dtype}")
        return [Info(broadcast(self, x, y), F32)]

    @staticmethod
    def fast_path(ins):
        """(description, function) of _FAST_POW for a constant scalar exponent, else None."""
        y = ins[1]
        if y.value is not None and y.value.size == 1:
            return _FAST_POW.get(float(y.value.reshape(-1)[0]))
        return None

    def inplace_inputs(self, ins, outs):
        fast = self.fast_path(ins)
        if fast is not None and fast[1] is _cube:
            return ()
        return super().inplace_inputs(ins, outs)

    def describe(self, ins, outs):
        fast = self.fast_path(ins)
        if fast is None:
            return ""
        return f"constant exponent {float(ins[1].value.reshape(-1)[0]):g}: {fast[0]}"

    def build(self, ins, outs, i, o):
        a, b, c = i[0], i[1], o[0]
        fast = self.fast_path(ins)
        if fast is not None:
            run = fast[1]

            def step(env, nt):
                run(env[a], env[c])
            return step
        view = self.b_shape(ins[0].shape, ins[1].shape)

        def power(x, y, out):
            with np.errstate(all="ignore"):
                np.power(x, y.reshape(view), out=out)

        if ins[1].size != 1:
            return lambda env, nt: power(env[a], env[b], env[c])

        # NumPy's power takes a one-element exponent of 0.5 for sqrt (NaN at -inf, -0 at -0),
        # so a scalar exponent known only when the model runs is looked at then
        def step(env, nt):
            y = env[b]
            if y.reshape(-1)[0] == 0.5:
                _root(env[a], env[c])
            else:
                power(env[a], y, env[c])
        return step


# ============================================================================ variadic

class Extreme(Sum):
    """Min or Max of one or more inputs of one number type, broadcasting; NaN wins, as in ONNX
    Runtime (np.minimum and np.maximum propagate it). In place as Sum."""
    ufunc = None

    def infer(self, ins):
        out = super().infer(ins)
        if out[0].dtype.kind not in "iuf":
            raise self.error(f"inputs must be a number type, got {out[0].dtype}")
        return out

    def build(self, ins, outs, i, o):
        ufunc, first, rest, c = self.ufunc, i[:2], i[2:], o[0]
        if len(i) == 1:
            def step(env, nt):
                np.copyto(env[c], env[first[0]])
            return step

        def step(env, nt):
            out = env[c]
            ufunc(env[first[0]], env[first[1]], out=out)
            for k in rest:
                ufunc(out, env[k], out=out)
        return step


@register
class Min(Extreme):
    kind = "Min"
    ufunc = np.minimum


@register
class Max(Extreme):
    kind = "Max"
    ufunc = np.maximum


@register
class Mean(Sum):
    """The Sum of float inputs, divided by their number."""
    kind = "Mean"

    def infer(self, ins):
        out = super().infer(ins)
        if out[0].dtype.kind != "f":
            raise self.error(f"inputs must be float, got {out[0].dtype}")
        return out

    def flops(self, ins, outs):
        return float(outs[0].size * len(ins))

    def build(self, ins, outs, i, o):
        total = super().build(ins, outs, i, o)
        n, c = len(i), o[0]
        if n == 1:
            return total

        def step(env, nt):
            total(env, nt)
            out = env[c]
            np.divide(out, out.dtype.type(n), out=out)
        return step

