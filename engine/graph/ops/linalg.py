"""Matrix product node plans: MatMul (numpy.matmul's broadcasting; activations times constant
weights on the engine's packed GEMM) and Gemm, which runs a fully connected layer on the
engine's threads: one row on the matrix-vector kernel (kernels/dense.pyx), more on the packed
GEMM. The choices are engine/dispatch/gemm.py's.
"""
from __future__ import annotations

import math

import numpy as np

from ..._kernels import dense as _dense
from ..._threads import threads_for
from ...dispatch.gemm import choose_gemm, choose_matmul
from ...ops.activation import apply_activation
from ...ops.packed_gemm import ConstantRight
from .base import F32, Info, Op, register


# ============================================================================ matrix products

def matmul_shape(a, b):
    """numpy.matmul's output shape, or None if the shapes do not fit."""
    if not a or not b:
        return None
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        return None
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        return None
    shape = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return shape


def packed_step(gemm: ConstantRight, ins, a, c):
    """The step running ``gemm`` on input slot ``a`` (its leading dimensions flattened into
    rows) into output slot ``c``."""
    k, n = ins[1].shape
    rows = math.prod(ins[0].shape[:-1])
    work = rows * k * n

    def step(env, nt):
        gemm.run(np.ascontiguousarray(env[a]).reshape(rows, k), env[c].reshape(rows, n),
                 threads_for(work, nt))
    return step


@register
class MatMul(Op):
    kind = "MatMul"
    n_inputs = (2, 2)

    def constant_right(self, b, bias=None, activation=None) -> ConstantRight:
        """The packed product by the constant ``b``: its panels made once for the node and
        shared by every plan (the constants and the activation are the node's own)."""
        gemm = self.__dict__.get("_constant_right")
        if gemm is None:
            gemm = self._constant_right = ConstantRight(b, bias, activation)
        return gemm

    def infer(self, ins):
        a, b = ins
        if a.dtype != b.dtype or a.dtype.kind not in "fiu":
            raise self.error(f"inputs must share a number dtype, got {a.dtype} and {b.dtype}")
        shape = matmul_shape(a.shape, b.shape)
        if shape is None:
            raise self.error(f"shapes {a.shape} and {b.shape} do not fit a matrix product")
        return [Info(shape, a.dtype)]

    def flops(self, ins, outs):
        return 2.0 * outs[0].size * ins[0].shape[-1]

    def path(self, ins, outs) -> tuple[str, str]:
        """"packed" or "numpy" for these shapes, and why (engine.dispatch.choose_matmul)."""
        a, b = ins
        return choose_matmul(math.prod(a.shape[:-1]),
                             a.dtype == F32 and b.value is not None and len(b.shape) == 2)

    def describe(self, ins, outs):
        path, reason = self.path(ins, outs)
        return f"{path}: {reason}"

    def build(self, ins, outs, i, o):
        a, b, c = i[0], i[1], o[0]
        if self.path(ins, outs)[0] == "packed":
            return packed_step(self.constant_right(ins[1].value), ins, a, c)

        def step(env, nt):
            np.matmul(env[a], env[b], out=env[c])
        return step


@register
class MatMulBias(MatMul):
    """act(A @ B + bias): a MatMul by a constant matrix B (K, N), the Add of a constant bias of
    N values after it, and an activation (``activation``, any engine/ops/activation.py one) —
    the engine's own node for what exporters write for a Linear layer on a tensor of more than
    two dimensions (engine/graph/passes.py fuse_matmul_bias). On the packed path the bias is
    the last term of each sum and the activation runs in the output step: one pass, the values
    of the unfused nodes."""
    kind = "MatMulBias"
    onnx = False
    n_inputs = (3, 3)
    attributes = {"activation": "act"}

    def setup(self, constants):
        self.activation = self.attr("activation", None)

    def infer(self, ins):
        a, b, bias = ins
        if a.dtype != F32 or b.dtype != F32 or bias.dtype != F32 or len(b.shape) != 2 \
                or bias.shape != (b.shape[1],):
            raise self.error(f"A and B must be float32 with B a matrix and the bias one value "
                             f"per column of B, got {a.shape}, {b.shape} and {bias.shape}")
        return super().infer(ins[:2])

    def flops(self, ins, outs):
        return super().flops(ins, outs) + outs[0].size

    def path(self, ins, outs) -> tuple[str, str]:
        return super().path(ins[:2], outs)

    def describe(self, ins, outs):
        text = super().describe(ins, outs) + " | + bias"
        if self.activation:
            text += f" | + {self.activation} in the output step"
        return text

    def build(self, ins, outs, i, o):
        a, b, bias, c = i[0], i[1], i[2], o[0]
        act = self.activation
        if self.path(ins, outs)[0] == "packed" and ins[2].value is not None:
            return packed_step(self.constant_right(ins[1].value, ins[2].value, act), ins, a, c)

        def step(env, nt):
            out = env[c]
            np.matmul(env[a], env[b], out=out)
            out += env[bias]
            apply_activation(out, act, nt)
        return step


@register
class Gemm(Op):
    kind = "Gemm"
    n_inputs = (2, 3)
    # activation: the engine's fusion (engine/graph/passes.py), run on the output in the step
    attributes = {"alpha": "float", "beta": "float", "transA": "int", "transB": "int",
                  "activation": "act"}

    def setup(self, constants):
        self.activation = self.attr("activation", None)
        self.alpha = np.float32(self.attr("alpha", 1.0))
        self.beta = np.float32(self.attr("beta", 1.0))
        self.ta = bool(self.attr("transA", 0))
        self.tb = bool(self.attr("transB", 0))

    def infer(self, ins):
        a = self.float_in(ins, 0, "A", 2)
        b = self.float_in(ins, 1, "B", 2)
        m, k = a.shape[::-1] if self.ta else a.shape
        k2, n = b.shape[::-1] if self.tb else b.shape
        if k != k2:
            raise self.error(f"A {a.shape} (transA={int(self.ta)}) and B {b.shape} "
                             f"(transB={int(self.tb)}) do not fit a matrix product")
        if len(ins) > 2 and ins[2] is not None:
            c = self.float_in(ins, 2, "C")
            try:
                ok = np.broadcast_shapes(c.shape, (m, n)) == (m, n)
            except ValueError:
                ok = False
            if not ok:
                raise self.error(f"C of shape {c.shape} does not broadcast to ({m}, {n})")
        return [Info((m, n), F32)]

    def flops(self, ins, outs):
        k = ins[0].shape[0 if self.ta else 1]
        return 2.0 * outs[0].size * k

    def path(self, ins, outs) -> tuple[str, str]:
        """"dense", "packed" or "matmul" for these shapes, and why
        (engine.dispatch.choose_gemm)."""
        return choose_gemm(outs[0].shape[0], ins[1].value is not None, self.ta)

    def constant_right(self, b, bias, activation) -> ConstantRight:
        """The packed product by the constant B (K, N) as the node holds it, made once for
        the node and shared by every plan; with the bias and activation where they fuse."""
        key = (None if bias is None else bias.tobytes(), activation)
        cached = self.__dict__.get("_constant_right")
        if cached is None or cached[0] != key:
            value = np.ascontiguousarray(b.T if self.tb else b, dtype=np.float32)
            cached = self._constant_right = (key, ConstantRight(value, bias, activation))
        return cached[1]

    def describe(self, ins, outs):
        path, reason = self.path(ins, outs)
        return f"{path}: {reason}" + (f" | + {self.activation} in the same step"
                                      if self.activation else "")

    def build(self, ins, outs, i, o):
        a, b, y = i[0], i[1], o[0]
        act = self.activation
        c = i[2] if len(i) > 2 and ins[2] is not None else None
        ta, tb, alpha, beta = self.ta, self.tb, self.alpha, self.beta
        cval = ins[2].value if c is not None else None
        if cval is not None:
            cval = (cval * beta).astype(np.float32) if beta != 1 else cval
        rows = ins[0].shape[1 if ta else 0]
        path = self.path(ins, outs)[0]
        n = outs[0].shape[1]
        if path == "packed":
            # the bias and the activation in the packed kernel's output step where they fit it
            fused = alpha == 1 and (c is None or (cval is not None and cval.size == n
                                                  and cval.shape[-1:] == (n,)))
            gemm = self.constant_right(ins[1].value,
                                       cval.reshape(n) if fused and c is not None else None,
                                       act if fused else None)
            work = rows * ins[0].shape[1] * n

            def product(env, nt):
                out = env[y]
                gemm.run(np.ascontiguousarray(env[a]), out, threads_for(work, nt))
                return out
            if fused:
                return product
        elif path == "dense":
            w = np.ascontiguousarray(ins[1].value if tb else ins[1].value.T, dtype=np.float32)
            work = rows * w.size

            def product(env, nt):
                out = env[y]
                _dense.f32_dense_rows(np.ascontiguousarray(env[a]), w, out,
                                      threads_for(work, nt))
                return out
        else:
            def product(env, nt):
                A, B, out = env[a], env[b], env[y]
                np.matmul(A.T if ta else A, B.T if tb else B, out=out)
                return out

        def step(env, nt):
            out = product(env, nt)
            if alpha != 1:
                np.multiply(out, alpha, out=out)
            if c is not None:
                if cval is not None:
                    np.add(out, cval, out=out)
                elif beta != 1:
                    np.add(out, env[c] * beta, out=out)
                else:
                    np.add(out, env[c], out=out)
            if act is not None:
                apply_activation(out, act, nt)
        return step
