"""Comparisons and boolean logic: Equal, Less, Greater (and their -OrEqual forms), Not, And,
Or, Xor, and Where.

Bool tensors are NumPy bool arrays (one byte an element), planned like any other tensor. The
masks exporters build from shapes (Equal on a Shape, Where choosing dimensions) have constant
inputs and are computed while planning by the planner's folding (plan.infer_nodes), through
these same steps.
"""
from __future__ import annotations

import numpy as np

from .base import Info, Op, register, same_shape_inputs
from .elementwise import Binary
from .mathops import broadcast

BOOL = np.dtype(np.bool_)


# ============================================================================ comparisons

class Compare(Binary):
    """A comparison of two inputs of one number type (and bool for Equal), broadcasting, to
    bool. IEEE: NaN compares false, and unequal to itself."""
    kinds, takes = "iuf", "a number type"

    def infer(self, ins):
        a, b = ins
        if a.dtype != b.dtype:
            raise self.error(f"inputs have different dtypes {a.dtype} and {b.dtype}")
        if a.dtype.kind not in self.kinds:
            raise self.error(f"inputs must be {self.takes}, got {a.dtype}")
        return [Info(broadcast(self, a, b), BOOL)]


@register
class Equal(Compare):
    kind = "Equal"
    ufunc = np.equal
    commutative = True
    kinds, takes = "iufb", "bool or a number type"


@register
class Less(Compare):
    kind = "Less"
    ufunc = np.less


@register
class Greater(Compare):
    kind = "Greater"
    ufunc = np.greater


@register
class LessOrEqual(Compare):
    kind = "LessOrEqual"
    ufunc = np.less_equal


@register
class GreaterOrEqual(Compare):
    kind = "GreaterOrEqual"
    ufunc = np.greater_equal


# ============================================================================ boolean logic

class Logical(Compare):
    """Two bool inputs, broadcasting, to bool; in place as the arithmetic operators."""
    commutative = True
    kinds, takes = "b", "bool"


@register
class And(Logical):
    kind = "And"
    ufunc = np.logical_and


@register
class Or(Logical):
    kind = "Or"
    ufunc = np.logical_or


@register
class Xor(Logical):
    kind = "Xor"
    ufunc = np.logical_xor


@register
class Not(Op):
    kind = "Not"

    def infer(self, ins):
        x = ins[0]
        if x.dtype != BOOL:
            raise self.error(f"X must be bool, got {x.dtype}")
        return [Info(x.shape, BOOL)]

    def inplace_inputs(self, ins, outs):
        return same_shape_inputs(ins, outs, (0,))

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]

        def step(env, nt):
            np.logical_not(env[a], out=env[b])
        return step


# ============================================================================ Where

@register
class Where(Op):
    """X where the condition holds, Y elsewhere; the three broadcast together."""
    kind = "Where"
    n_inputs = (3, 3)

    def infer(self, ins):
        cond, x, y = ins
        if cond.dtype != BOOL:
            raise self.error(f"condition must be bool, got {cond.dtype}")
        if x.dtype != y.dtype:
            raise self.error(f"X and Y have different dtypes {x.dtype} and {y.dtype}")
        try:
            shape = np.broadcast_shapes(cond.shape, x.shape, y.shape)
        except ValueError:
            raise self.error(f"shapes {cond.shape}, {x.shape} and {y.shape} do not "
                             f"broadcast") from None
        return [Info(shape, x.dtype)]

    def inplace_inputs(self, ins, outs):
        # Y is copied first, then X is written where the condition holds: only Y's buffer
        # may be the output's (each element is read before it is written)
        return same_shape_inputs(ins, outs, (2,))

    def flops(self, ins, outs):
        return float(outs[0].size)

    def build(self, ins, outs, i, o):
        c, a, b, d = i[0], i[1], i[2], o[0]

        def step(env, nt):
            out = env[d]
            np.copyto(out, env[b])
            np.copyto(out, env[a], where=env[c])
        return step
