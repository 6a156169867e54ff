"""Elementwise node plans: unary activations (Relu, Sigmoid, Tanh, LeakyRelu, HardSigmoid,
HardSwish), Clip and PRelu; binary arithmetic with NumPy broadcasting (Add, Sub, Mul, Div) and
the variadic Sum. The activations the convolutions fuse run as one vector pass of the same
kernels (engine/ops/activation.py); elsewhere a ufunc with ``out=`` is the right
implementation. Steps that read each input once before writing may run in place.
"""
from __future__ import annotations

import math

import numpy as np

from ..._threads import threads_for
from ...ops.activation import canonical, vector_activation
from .base import F32, Info, Op, register, same_shape_inputs


# ============================================================================ elementwise, unary

class Unary(Op):
    """One float32 input, one output of the same shape, computed by ``kernel(x, out)``
    (``kernel(x, out, num_threads)`` where ``threaded``)."""
    single_pass = True      # reads x once before writing: may run in place
    flops_per_element = 1   # for explain()'s GFLOP/s
    threaded = False

    def infer(self, ins):
        x = self.float_in(ins, 0)
        return [Info(x.shape, F32)]

    def inplace_inputs(self, ins, outs):
        return same_shape_inputs(ins, outs, (0,)) if self.single_pass else ()

    def flops(self, ins, outs):
        return float(self.flops_per_element * outs[0].size)

    def kernel(self):
        raise NotImplementedError

    def build(self, ins, outs, i, o):
        fn = self.kernel()
        a, b = i[0], o[0]
        if self.threaded:
            def step(env, nt):
                fn(env[a], env[b], nt)
        else:
            def step(env, nt):
                fn(env[a], env[b])
        return step


@register
class Relu(Unary):
    kind = "Relu"

    def build(self, ins, outs, i, o):
        a, b, maximum = i[0], o[0], np.maximum

        def step(env, nt):
            maximum(env[a], 0.0, out=env[b])
        return step


class VectorUnary(Unary):
    """An activation of engine/ops/activation.py, one vector pass (kernels/activation.pyx):
    ``activation()`` names it, with the node's parameters."""
    threaded = True
    flops_per_element = 4

    def activation(self) -> str:
        raise NotImplementedError

    def kernel(self):
        return vector_activation(canonical(self.activation()))


@register
class Sigmoid(VectorUnary):
    kind = "Sigmoid"

    def activation(self):
        return "sigmoid"


@register
class SiLU(VectorUnary):
    """x * sigmoid(x) (SiLU, Swish), the engine's own node for the Sigmoid + Mul pair that
    exporters write (engine/graph/passes.py fuse_silu): one step and one output instead of two."""
    kind = "SiLU"
    onnx = False
    flops_per_element = 5

    def activation(self):
        return "silu"


@register
class Tanh(VectorUnary):
    kind = "Tanh"

    def activation(self):
        return "tanh"


@register
class LeakyRelu(VectorUnary):
    kind = "LeakyRelu"
    attributes = {"alpha": "float"}
    flops_per_element = 1

    def setup(self, constants):
        self.alpha = self.finite_attr("alpha", 0.01)

    def activation(self):
        return f"leaky_relu({self.alpha})"


@register
class HardSigmoid(VectorUnary):
    kind = "HardSigmoid"
    attributes = {"alpha": "float", "beta": "float"}
    flops_per_element = 2

    def setup(self, constants):
        self.alpha = self.finite_attr("alpha", 0.2)
        self.beta = self.finite_attr("beta", 0.5)

    def activation(self):
        return f"hardsigmoid({self.alpha},{self.beta})"


@register
class HardSwish(VectorUnary):
    """x min(max(x/6 + 1/2, 0), 1)."""
    kind = "HardSwish"

    def activation(self):
        return "hardswish"


@register
class Clip(Unary):
    """Clip with constant bounds (inputs 1 and 2, as in opset 11+)."""
    kind = "Clip"
    n_inputs = (1, 3)

    def bounds(self, ins):
        """(min, max) as scalars of X's dtype, None where absent; checked."""
        x = ins[0]
        if x.dtype.kind not in "fi":
            raise self.error(f"input must be a number type, got {x.dtype}")
        lo = self.known(ins, 1, "min")
        hi = self.known(ins, 2, "max")
        for v, what in ((lo, "min"), (hi, "max")):
            if v is not None and v.size != 1:
                raise self.error(f"{what} must be a scalar, got shape {v.shape}")
        return (None if lo is None else lo.reshape(()).astype(x.dtype),
                None if hi is None else hi.reshape(()).astype(x.dtype))

    def infer(self, ins):
        self.bounds(ins)
        return [Info(ins[0].shape, ins[0].dtype)]

    def build(self, ins, outs, i, o):
        lo, hi = self.bounds(ins)
        a, b = i[0], o[0]
        if lo is not None and hi is not None:
            def step(env, nt):
                out = env[b]
                np.maximum(env[a], lo, out=out)
                np.minimum(out, hi, out=out)
        elif lo is not None:
            def step(env, nt):
                np.maximum(env[a], lo, out=env[b])
        elif hi is not None:
            def step(env, nt):
                np.minimum(env[a], hi, out=env[b])
        else:
            def step(env, nt):
                np.copyto(env[b], env[a])
        return step


@register
class PRelu(Op):
    """PRelu; ``channel_slope`` = 1 is the opset 1-6 form, whose 1-D slope of C values runs
    along X's channel axis (1) instead of broadcasting from the last."""
    kind = "PRelu"
    n_inputs = (2, 2)
    attributes = {"channel_slope": "int"}

    def slope_view(self, ins) -> tuple:
        """The shape the slope is read as (its own, or along X's channel axis)."""
        x, s = ins[0], ins[1]
        if self.attr("channel_slope", 0) and len(s.shape) == 1 and len(x.shape) >= 2 \
                and s.shape[0] == x.shape[1]:
            return s.shape + (1,) * (len(x.shape) - 2)
        return s.shape

    def infer(self, ins):
        x = self.float_in(ins, 0)
        s = self.float_in(ins, 1, "slope")
        slope = self.slope_view(ins)
        try:
            shape = np.broadcast_shapes(x.shape, slope)
        except ValueError:
            shape = None
        if shape != x.shape:
            raise self.error(f"slope of shape {s.shape} does not broadcast to X {x.shape}")
        return [Info(x.shape, F32)]

    def flops(self, ins, outs):
        return 2.0 * outs[0].size

    def build(self, ins, outs, i, o):
        a, s, b, view = i[0], i[1], o[0], self.slope_view(ins)
        shape = outs[0].shape
        full = (1,) * (len(shape) - len(view)) + tuple(view)
        if len(shape) >= 3 and full == (1, shape[1]) + (1,) * (len(shape) - 2):
            # one slope per channel (face-recognition ResNets' PReLU): one vector pass
            from ..._kernels.activation import f32_prelu_planes
            planes = (shape[0], shape[1], math.prod(shape[2:]))
            size = math.prod(shape)

            def step(env, nt):
                x, out = env[a], env[b]
                if x.flags.c_contiguous and out.flags.c_contiguous:
                    f32_prelu_planes(x.reshape(planes), env[s].reshape(-1), out.reshape(planes),
                                     threads_for(size, nt))
                else:
                    np.multiply(x, env[s].reshape(view), out=out)
                    np.copyto(out, x, where=x >= 0)
            return step

        def step(env, nt):
            x, out = env[a], env[b]
            np.multiply(x, env[s].reshape(view), out=out)
            np.copyto(out, x, where=x >= 0)
        return step


# ============================================================================ elementwise, binary

def _int_div(a, b, out):
    """ONNX integer Div truncates toward zero, as C does; NumPy's // floors."""
    q = np.abs(a) // np.abs(b)
    np.copyto(out, np.where((a < 0) != (b < 0), -q, q))


class Binary(Op):
    """NumPy-broadcasting elementwise operator; ``broadcast_axis`` is the opset < 7 form
    (B's dimensions line up with A's from that axis on)."""
    n_inputs = (2, 2)
    attributes = {"broadcast_axis": "int"}
    ufunc = None
    commutative = False

    def b_shape(self, a, b):
        axis = self.attr("broadcast_axis")
        if axis is None:
            return b
        if axis < 0:
            axis += len(a)
        if not 0 <= axis <= len(a) - len(b):
            raise self.error(f"broadcast axis {axis} does not fit B of rank {len(b)} in A of "
                             f"rank {len(a)}")
        return (1,) * axis + tuple(b) + (1,) * (len(a) - axis - len(b))

    def infer(self, ins):
        a, b = ins
        if a.dtype != b.dtype:
            raise self.error(f"inputs have different dtypes {a.dtype} and {b.dtype}")
        if a.dtype == np.bool_:
            raise self.error("arithmetic on bool tensors is not supported")
        view = self.b_shape(a.shape, b.shape)
        try:
            shape = np.broadcast_shapes(a.shape, view)
        except ValueError:
            raise self.error(f"shapes {a.shape} and {b.shape} do not broadcast") from None
        return [Info(shape, a.dtype)]

    def inplace_inputs(self, ins, outs):
        if self.b_shape(ins[0].shape, ins[1].shape) != ins[1].shape:
            return same_shape_inputs(ins, outs, (0,))
        return same_shape_inputs(ins, outs, (0, 1))

    def flops(self, ins, outs):
        return float(outs[0].size)

    def build(self, ins, outs, i, o):
        fn = self.ufunc
        if self.kind == "Div" and outs[0].dtype.kind in "iu":
            fn = _int_div
        a, b, c = i[0], i[1], o[0]
        view = self.b_shape(ins[0].shape, ins[1].shape)
        if view != ins[1].shape:

            def step(env, nt):
                fn(env[a], env[b].reshape(view), out=env[c])
        else:
            def step(env, nt):
                fn(env[a], env[b], out=env[c])
        return step


@register
class Add(Binary):
    kind = "Add"
    ufunc = np.add
    commutative = True


@register
class Sub(Binary):
    kind = "Sub"
    ufunc = np.subtract


@register
class Mul(Binary):
    kind = "Mul"
    ufunc = np.multiply
    commutative = True


@register
class Div(Binary):
    kind = "Div"
    ufunc = np.divide


@register
class Sum(Op):
    kind = "Sum"
    n_inputs = (1, None)

    def infer(self, ins):
        dtypes = {x.dtype for x in ins}
        if len(dtypes) != 1:
            raise self.error(f"inputs have different dtypes {sorted(map(str, dtypes))}")
        try:
            shape = np.broadcast_shapes(*(x.shape for x in ins))
        except ValueError:
            raise self.error(f"shapes {[x.shape for x in ins]} do not broadcast") from None
        return [Info(shape, ins[0].dtype)]

    def inplace_inputs(self, ins, outs):
        # the first add reads inputs 0 and 1 before writing; later inputs are read after it,
        # so a tensor that comes again among them cannot be written over
        first = [k for k in (0, 1)[:len(ins)] if all(x is not ins[k] for x in ins[2:])]
        return same_shape_inputs(ins, outs, first)

    def flops(self, ins, outs):
        return float(outs[0].size * max(len(ins) - 1, 1))

    def build(self, ins, outs, i, o):
        first, rest, c = i[:2], i[2:], o[0]
        if len(i) == 1:
            def step(env, nt):
                np.copyto(env[c], env[first[0]])
            return step

        def step(env, nt):
            out = env[c]
            np.add(env[first[0]], env[first[1]], out=out)
            for k in rest:
                np.add(out, env[k], out=out)
        return step
