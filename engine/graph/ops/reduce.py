"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, the norms and log-sums,
ArgMax/ArgMin and TopK.

A reduction views its input with the reduced and the kept axes each merged into runs (size-1
axes dropped), so ``x.mean((2, 3))`` on NCHW is a mean over the last axis of an (N*C, H*W)
view, written straight into the output buffer. Float32 sums are accurate to a few ulps: along
the contiguous last axis NumPy sums pairwise (the mean runs the global average pool's float64
kernel), and a sum over other axes of more than ``SEQUENTIAL_TERMS`` terms accumulates in
float64, since NumPy adds those one slab at a time.

An empty set of axes reduces over every axis, or over none with ``noop_with_empty_axes`` (then
ReduceL1 is |x|, ReduceSumSquare x², ReduceLogSum log x: the element-wise steps still run). A
reduction over an empty set gives ONNX's identity: 0 for the sums, 1 for the product, -inf for
ReduceMax and the log-sums, +inf for ReduceMin (the dtype's extremes for integers), NaN for the
mean.
"""
from __future__ import annotations

import math

import numpy as np

from ..._kernels import pool as pool_kernels
from ..._threads import threads_for
from .base import F32, I64, Info, Op, register

# Float32 terms a sum may add one after another (error bound about n/2 ulps); longer ones
# accumulate in float64, pairwise sums along the contiguous axis excepted.
SEQUENTIAL_TERMS = 32


def _flag(op, name, default):
    """A 0/1 attribute (ONNX Runtime reads only 1 as true, the reference any nonzero value:
    other values are refused rather than read one way)."""
    v = op.attr(name, default)
    if v not in (0, 1):
        raise op.error(f"{name} must be 0 or 1, got {v}")
    return bool(v)


def _collapse(shape, axes):
    """``shape`` without its size-1 axes, each run of adjacent axes that are all reduced or all
    kept merged into one: (sizes, positions of the reduced runs)."""
    sizes, reduced, prev = [], [], None
    for k, d in enumerate(shape):
        if d == 1:
            continue
        r = k in axes
        if r == prev:
            sizes[-1] *= d
        else:
            sizes.append(d)
            if r:
                reduced.append(len(sizes) - 1)
            prev = r
    return tuple(sizes), tuple(reduced)


def _sum_into(x, red, m, out):
    """out = sum of x over the axes ``red`` (m terms each)."""
    if not red:
        np.copyto(out, x)
    elif x.dtype == F32 and red != (x.ndim - 1,) and m > SEQUENTIAL_TERMS:
        # with a float32 ``out`` NumPy would round the float64 partial sums between buffers
        np.copyto(out, np.add.reduce(x, axis=red, dtype=np.float64))
    else:
        np.add.reduce(x, axis=red, out=out)


# ============================================================================ Reduce*

class Reduce(Op):
    """Reduction over ``axes`` (an attribute before opset 18, ReduceSum's before 13; input 1
    from then on), keeping the reduced axes as size 1 with ``keepdims``."""
    n_inputs = (1, 2)
    attributes = {"axes": "ints", "keepdims": "int", "noop_with_empty_axes": "int"}
    kinds = "fiu"            # dtype kinds taken: float, signed, unsigned (b: bool)

    def setup(self, constants):
        self.keepdims = _flag(self, "keepdims", 1)
        self.noop = _flag(self, "noop_with_empty_axes", 0)
        if self.attr("axes") is not None and self.input_name(1):
            raise self.error("axes is given both as an attribute and as input 1")

    def axes_of(self, ins) -> tuple:
        """The reduced axes, sorted and non-negative; () for none."""
        rank = len(ins[0].shape)
        axes = self.attr("axes")
        if axes is None:
            given = self.known(ins, 1, "axes")
            if given is not None:
                if given.ndim > 1 or given.dtype.kind not in "iu":
                    raise self.error(f"axes must be a 1-D integer tensor, got {given.dtype} "
                                     f"of shape {given.shape}")
                axes = [int(a) for a in given.reshape(-1)]
        if not axes:
            return () if self.noop else tuple(range(rank))
        normal = sorted(self.axis(int(a), rank, "axes entry") for a in axes)
        if len(set(normal)) != len(normal):
            raise self.error(f"axes {list(axes)} name an axis twice")
        return tuple(normal)

    def check_dtype(self, dtype):
        if dtype.kind not in self.kinds or dtype.kind == "f" and dtype not in (F32, np.float64):
            raise self.error(f"input of dtype {dtype} is not supported")

    def infer(self, ins):
        x = ins[0]
        self.check_dtype(x.dtype)
        axes = self.axes_of(ins)
        if self.keepdims:
            shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape))
        else:
            shape = tuple(d for k, d in enumerate(x.shape) if k not in axes)
        value = None
        if x.value is not None:
            value = np.empty(shape, x.dtype)
            self.runner(x.shape, x.dtype, axes)(x.value, value, 1)
        return [Info(shape, x.dtype, value)]

    def flops(self, ins, outs):
        return float(ins[0].size)

    def describe(self, ins, outs):
        return f"axes={list(self.axes_of(ins))} keepdims={int(self.keepdims)}"

    def build(self, ins, outs, i, o):
        run = self.runner(ins[0].shape, ins[0].dtype, self.axes_of(ins))
        a, b = i[0], o[0]

        def step(env, nt):
            run(env[a], env[b], nt)
        return step

    def runner(self, shape, dtype, axes):
        """run(x, out, num_threads) for inputs of this shape and dtype."""
        m = math.prod(shape[k] for k in axes)
        if math.prod(shape) == 0:
            if m != 0 or math.prod(d for k, d in enumerate(shape) if k not in axes) == 0:
                return lambda x, out, nt: None      # the output is empty
            fill = self.empty_value(dtype)
            return lambda x, out, nt: out.fill(fill)
        view, red = _collapse(shape, axes)
        out_view = tuple(d for k, d in enumerate(view) if k not in red)
        reduce = self.reduce

        def run(x, out, nt):
            # inf - inf, log 0, overflow: IEEE results, as ONNX Runtime gives them, unwarned
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                reduce(x.reshape(view), out.reshape(out_view), red, m, nt)
        return run

    def empty_value(self, dtype):
        """The result of a reduction over no elements."""
        return 0

    def reduce(self, x, out, red, m, nt):
        """out = the reduction of x over its axes ``red`` (m elements each, m >= 1)."""
        raise NotImplementedError


@register
class ReduceSum(Reduce):
    kind = "ReduceSum"

    def reduce(self, x, out, red, m, nt):
        _sum_into(x, red, m, out)


@register
class ReduceMean(Reduce):
    kind = "ReduceMean"

    def infer(self, ins):
        x = ins[0]
        axes = self.axes_of(ins)
        if x.dtype.kind != "f" and math.prod(x.shape[k] for k in axes) == 0 and \
                math.prod(d for k, d in enumerate(x.shape) if k not in axes):
            raise self.error("the mean of an empty set of integers is undefined")
        return super().infer(ins)

    def empty_value(self, dtype):
        return np.nan

    def reduce(self, x, out, red, m, nt):
        if x.dtype == F32 and red == (x.ndim - 1,):
            # the global average pool's kernel: float64 sums, rows split between threads
            pool_kernels.f32_global_avgpool(np.ascontiguousarray(x).reshape(out.size, m),
                                            out.reshape(out.size), threads_for(x.size, nt))
            return
        _sum_into(x, red, m, out)
        if m == 1:
            return
        if out.dtype.kind == "f":
            np.divide(out, m, out=out)
        else:
            # integer means truncate toward zero, as ONNX Runtime's integer division does; in
            # 64 bits, since the count may not fit the element type (1584 uint8 values)
            wide = out.astype(np.uint64 if out.dtype == np.uint64 else np.int64)
            q = np.abs(wide) // m
            np.copyto(out, np.where(wide < 0, -q, q), casting="unsafe")


@register
class ReduceSumSquare(Reduce):
    kind = "ReduceSumSquare"

    def reduce(self, x, out, red, m, nt):
        _sum_into(np.square(x), red, m, out)


@register
class ReduceL1(Reduce):
    kind = "ReduceL1"

    def reduce(self, x, out, red, m, nt):
        _sum_into(np.abs(x), red, m, out)


@register
class ReduceL2(Reduce):
    kind = "ReduceL2"
    kinds = "f"

    def reduce(self, x, out, red, m, nt):
        # squares in float64: x² leaves float32's range (above 1.8e19, below 1e-23) where the
        # norm does not
        sq = np.square(x, dtype=np.float64)
        acc = np.empty(out.shape, np.float64)
        _sum_into(sq, red, m, acc)
        np.sqrt(acc, out=acc)
        np.copyto(out, acc, casting="same_kind")


@register
class ReduceLogSum(Reduce):
    kind = "ReduceLogSum"
    kinds = "f"

    def empty_value(self, dtype):
        return -np.inf

    def reduce(self, x, out, red, m, nt):
        _sum_into(x, red, m, out)
        np.log(out, out=out)


@register
class ReduceLogSumExp(Reduce):
    kind = "ReduceLogSumExp"
    kinds = "f"

    def empty_value(self, dtype):
        return -np.inf

    def reduce(self, x, out, red, m, nt):
        # log(sum(exp(x - s))) + s with s the largest element, so exp cannot overflow; s = 0
        # where it is infinite or NaN (all -inf gives log 0 = -inf, a +inf gives +inf)
        s = np.maximum.reduce(x, axis=red, keepdims=True)
        s = np.where(np.isfinite(s), s, 0)
        _sum_into(np.exp(x - s), red, m, out)
        np.log(out, out=out)
        out += s.reshape(out.shape)


@register
class ReduceProd(Reduce):
    kind = "ReduceProd"

    def empty_value(self, dtype):
        return 1

    def reduce(self, x, out, red, m, nt):
        if x.dtype == F32 and red:
            # float64 products: float32 partial products can overflow or underflow where the
            # whole product does not
            np.copyto(out, np.multiply.reduce(x, axis=red, dtype=np.float64),
                      casting="same_kind")
        else:
            np.multiply.reduce(x, axis=red, out=out)


@register
class ReduceMax(Reduce):
    kind = "ReduceMax"
    kinds = "fiub"

    def empty_value(self, dtype):
        if dtype.kind == "b":
            return False
        return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf

    def reduce(self, x, out, red, m, nt):
        np.maximum.reduce(x, axis=red, out=out)    # a NaN wins


@register
class ReduceMin(Reduce):
    kind = "ReduceMin"
    kinds = "fiub"

    def empty_value(self, dtype):
        if dtype.kind == "b":
            return True
        return np.iinfo(dtype).max if dtype.kind in "iu" else np.inf

    def reduce(self, x, out, red, m, nt):
        np.minimum.reduce(x, axis=red, out=out)    # a NaN wins


# ============================================================================ ArgMax, ArgMin, TopK

def _along(shape, ax):
    """(before, size, after): ``shape`` viewed as three axes around ``ax``."""
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:])


def _numeric(op, dtype):
    if dtype.kind not in "fiu" or dtype.kind == "f" and dtype not in (F32, np.float64):
        raise op.error(f"input of dtype {dtype} is not supported")


class ArgReduce(Op):
    """Index (int64) of the first largest or smallest element along ``axis``, or the last with
    ``select_last_index``; a NaN counts as the extreme."""
    attributes = {"axis": "int", "keepdims": "int", "select_last_index": "int"}
    function = None

    def setup(self, constants):
        self.keepdims = _flag(self, "keepdims", 1)
        self.last = _flag(self, "select_last_index", 0)

    def infer(self, ins):
        x = ins[0]
        _numeric(self, x.dtype)
        ax = self.axis(self.attr("axis", 0), len(x.shape))
        before, n, after = _along(x.shape, ax)
        if self.keepdims:
            shape = x.shape[:ax] + (1,) + x.shape[ax + 1:]
        else:
            shape = x.shape[:ax] + x.shape[ax + 1:]
        if n == 0 and before * after:
            raise self.error(f"axis {ax} of X {x.shape} is empty: there is no index to return")
        value = None
        if x.value is not None:
            value = np.empty(shape, I64)
            self.runner(x.shape, ax)(x.value, value)
        return [Info(shape, I64, value)]

    def flops(self, ins, outs):
        return float(ins[0].size)

    def describe(self, ins, outs):
        return (f"axis={self.attr('axis', 0)} keepdims={int(self.keepdims)} "
                f"select_last_index={int(self.last)}")

    def build(self, ins, outs, i, o):
        run = self.runner(ins[0].shape, self.axis(self.attr("axis", 0), len(ins[0].shape)))
        a, b = i[0], o[0]

        def step(env, nt):
            run(env[a], env[b])
        return step

    def runner(self, shape, ax):
        before, n, after = _along(shape, ax)
        if before * after == 0:
            return lambda x, out: None
        fn, last = self.function, self.last

        def run(x, out):
            x3 = x.reshape(before, n, after)
            o2 = out.reshape(before, after)
            if last:
                # the first extreme of the reversed axis is the last one of the axis
                fn(x3[:, ::-1], axis=1, out=o2)
                np.subtract(n - 1, o2, out=o2)
            else:
                fn(x3, axis=1, out=o2)
        return run


@register
class ArgMax(ArgReduce):
    kind = "ArgMax"
    function = staticmethod(np.argmax)


@register
class ArgMin(ArgReduce):
    kind = "ArgMin"
    function = staticmethod(np.argmin)


@register
class TopK(Op):
    """The k largest (or smallest) elements along ``axis`` and their int64 indices, sorted, the
    lower index first among equal values; k is input 1 (the attribute ``k`` before opset 10)
    and must be known when planning. A NaN counts as the largest value. ``sorted`` = 0 leaves
    the order to the engine: it sorts all the same."""
    kind = "TopK"
    n_inputs = (1, 2)
    n_outputs = (2, 2)
    attributes = {"axis": "int", "largest": "int", "sorted": "int", "k": "int"}

    def setup(self, constants):
        self.largest = _flag(self, "largest", 1)
        self.sorted = _flag(self, "sorted", 1)
        if (self.attr("k") is None) == (not self.input_name(1)):
            raise self.error("k must be given once: as input 1 (opset 10 on) or as the "
                             "attribute k (opset 1)")

    def k_of(self, ins, n):
        k = self.attr("k")
        if k is None:
            given = self.known(ins, 1, "K")
            if given.size != 1 or given.dtype.kind not in "iu":
                raise self.error(f"K must hold one integer, got {given.dtype} of shape "
                                 f"{given.shape}")
            k = int(given.reshape(-1)[0])
        if not 0 <= k <= n:
            raise self.error(f"k = {k} is outside 0 to {n}, the size of the axis")
        return k

    def infer(self, ins):
        x = ins[0]
        _numeric(self, x.dtype)
        ax = self.axis(self.attr("axis", -1), len(x.shape))
        k = self.k_of(ins, x.shape[ax])
        shape = x.shape[:ax] + (k,) + x.shape[ax + 1:]
        values = indices = None
        if x.value is not None:
            values, indices = np.empty(shape, x.dtype), np.empty(shape, I64)
            self.runner(x.shape, ax, k)(x.value, values, indices)
        return [Info(shape, x.dtype, values), Info(shape, I64, indices)]

    def flops(self, ins, outs):
        n = ins[0].shape[self.axis(self.attr("axis", -1), len(ins[0].shape))]
        return float(ins[0].size * max(1.0, math.log2(max(n, 1))))

    def describe(self, ins, outs):
        ax = self.axis(self.attr("axis", -1), len(ins[0].shape))
        return (f"axis={self.attr('axis', -1)} k={outs[0].shape[ax]} "
                f"largest={int(self.largest)} sorted={int(self.sorted)}")

    def build(self, ins, outs, i, o):
        ax = self.axis(self.attr("axis", -1), len(ins[0].shape))
        run = self.runner(ins[0].shape, ax, outs[0].shape[ax])
        a, v, t = i[0], o[0], o[1]

        def step(env, nt):
            run(env[a], env[v], env[t])
        return step

    def runner(self, shape, ax, k):
        before, n, after = _along(shape, ax)
        if before * k * after == 0:
            return lambda x, values, indices: None
        largest = self.largest

        def run(x, values, indices):
            x3 = x.reshape(before, n, after)
            idx = indices.reshape(before, k, after)
            if largest:
                # a stable ascending sort of the reversed axis, read backwards: descending
                # values, equal ones in increasing index order
                order = np.argsort(x3[:, ::-1], axis=1, kind="stable")
                np.subtract(n - 1, order[:, :-k - 1:-1], out=idx)
            else:
                np.copyto(idx, np.argsort(x3, axis=1, kind="stable")[:, :k])
            np.copyto(values.reshape(before, k, after), np.take_along_axis(x3, idx, axis=1))
        return run
