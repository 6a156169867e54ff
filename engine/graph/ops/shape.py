"""Shape and copy node plans: the views (Identity, Flatten, Reshape, Squeeze, Unsqueeze), which
share their input's buffer; Transpose, Concat, Split, Slice, Gather, Cast, Expand and Pad,
which copy; Shape and ConstantOfShape, whose values are known when the model is planned.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import DTYPES
from ..._kernels import transpose as _transpose
from .base import F32, I64, Info, Op, check_tensor_size, register


# ============================================================================ shape and copy ops

class View(Op):
    """Operators that only reinterpret the shape of a C-contiguous buffer."""
    storage = "view"

    def out_shape(self, ins):
        raise NotImplementedError

    def infer(self, ins):
        shape = self.out_shape(ins)
        if math.prod(shape) != ins[0].size:
            raise self.error(f"cannot view {ins[0].shape} as {shape}")
        value = None if ins[0].value is None else ins[0].value.reshape(shape)
        return [Info(shape, ins[0].dtype, value)]

    def build(self, ins, outs, i, o):
        a, b, shape = i[0], o[0], outs[0].shape

        def step(env, nt):
            env[b] = env[a].reshape(shape)
        return step


@register
class Identity(View):
    kind = "Identity"

    def out_shape(self, ins):
        return ins[0].shape


@register
class Flatten(View):
    kind = "Flatten"
    attributes = {"axis": "int"}

    def out_shape(self, ins):
        shape = ins[0].shape
        a = self.attr("axis", 1)
        if not -len(shape) <= a <= len(shape):
            raise self.error(f"axis {a} is out of range for rank {len(shape)}")
        if a < 0:
            a += len(shape)
        return (math.prod(shape[:a]), math.prod(shape[a:]))


@register
class Reshape(View):
    kind = "Reshape"
    n_inputs = (2, 2)
    attributes = {"allowzero": "int"}

    def out_shape(self, ins):
        target = self.known(ins, 1, "shape")
        if target.ndim != 1 or target.dtype.kind not in "iu":
            raise self.error(f"shape must be a 1-D integer tensor, got {target.dtype} "
                             f"{target.shape}")
        src = ins[0].shape
        allowzero = bool(self.attr("allowzero", 0))
        shape = []
        for k, d in enumerate(int(v) for v in target):
            if d == 0 and not allowzero:
                if k >= len(src):
                    raise self.error(f"shape {target.tolist()} copies dimension {k} of X "
                                     f"{src}, which has none")
                d = src[k]
            shape.append(d)
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            raise self.error(f"shape {target.tolist()} is not valid")
        if -1 in shape:
            rest = math.prod(d for d in shape if d != -1)
            if rest == 0 or ins[0].size % rest:
                raise self.error(f"cannot reshape X {src} to {target.tolist()}")
            shape[shape.index(-1)] = ins[0].size // rest
        return tuple(shape)


@register
class Squeeze(View):
    kind = "Squeeze"
    n_inputs = (1, 2)

    def out_shape(self, ins):
        shape = ins[0].shape
        axes = self.known(ins, 1, "axes")
        if axes is None:
            return tuple(d for d in shape if d != 1)
        axes = {self.axis(int(a), len(shape), "axes entry") for a in axes.reshape(-1)}
        for a in axes:
            if shape[a] != 1:
                raise self.error(f"cannot squeeze axis {a} of X {shape}: its size is not 1")
        return tuple(d for k, d in enumerate(shape) if k not in axes)


@register
class Unsqueeze(View):
    kind = "Unsqueeze"
    n_inputs = (2, 2)

    def out_shape(self, ins):
        shape = ins[0].shape
        axes = self.known(ins, 1, "axes").reshape(-1)
        rank = len(shape) + len(axes)
        axes = sorted(self.axis(int(a), rank, "axes entry") for a in axes)
        if len(set(axes)) != len(axes):
            raise self.error(f"axes {axes} repeat an axis")
        out = list(shape)
        for a in axes:
            out.insert(a, 1)
        return tuple(out)


@register
class Transpose(Op):
    kind = "Transpose"
    attributes = {"perm": "ints"}

    def perm(self, rank) -> tuple:
        """The permutation for an input of this rank (reversal by default); checked."""
        perm = self.attr("perm")
        perm = tuple(range(rank))[::-1] if perm is None else tuple(int(p) for p in perm)
        if sorted(perm) != list(range(rank)):
            raise self.error(f"perm {list(perm)} is not a permutation of the {rank} axes")
        return perm

    def infer(self, ins):
        x = ins[0]
        return [Info(tuple(x.shape[p] for p in self.perm(len(x.shape))), x.dtype)]

    def build(self, ins, outs, i, o):
        a, b, perm = i[0], o[0], self.perm(len(ins[0].shape))
        batched = swapped_runs(ins[0].shape, perm)
        if ins[0].dtype == F32 and batched is not None and math.prod(batched) >= _TILED_MIN:
            # two runs of axes swapped (NCHW <-> NHWC, a matrix): a batched matrix transpose
            # in 16 x 16 register tiles, at several times numpy's strided copy
            def tiled(env, nt):
                src = env[a]
                if not src.flags.c_contiguous:
                    np.copyto(env[b], src.transpose(perm))
                    return
                bsz, rows, cols = batched
                _transpose.f32_transpose_batched(src.reshape(batched),
                                                 env[b].reshape(bsz, cols, rows), nt)
            return tiled

        def step(env, nt):
            np.copyto(env[b], env[a].transpose(perm))
        return step


# Smallest Transpose (elements) run by the tiled kernel: below, numpy's copy costs as little.
_TILED_MIN = 4096


def swapped_runs(shape, perm):
    """(B, R, C) when ``perm`` keeps the leading axes and swaps the two runs of axes after them
    (perm = 0..p-1, q..n-1, p..q-1): the input is then B matrices R x C and the output their
    transposes. Else None."""
    n = len(perm)
    p = next((k for k in range(n) if perm[k] != k), n)
    if p == n:
        return None
    q = perm[p]
    if tuple(perm[p:]) != tuple(range(q, n)) + tuple(range(p, q)):
        return None
    return (math.prod(shape[:p]), math.prod(shape[p:q]), math.prod(shape[q:]))


@register
class Concat(Op):
    kind = "Concat"
    n_inputs = (1, None)
    attributes = {"axis": "int"}

    def concat_axis(self, rank) -> int:
        if self.attr("axis") is None:
            raise self.error("attribute 'axis' is required")
        return self.axis(self.attr("axis"), max(rank, 1))

    def infer(self, ins):
        rank = len(ins[0].shape)
        ax = self.concat_axis(rank)
        dtypes = {x.dtype for x in ins}
        if len(dtypes) != 1:
            raise self.error(f"inputs have different dtypes {sorted(map(str, dtypes))}")
        for x in ins:
            if len(x.shape) != rank or any(a != b for k, (a, b) in
                                           enumerate(zip(x.shape, ins[0].shape)) if k != ax):
                raise self.error(f"input shapes {[x.shape for x in ins]} differ outside axis "
                                 f"{ax}")
        shape = list(ins[0].shape)
        shape[ax] = sum(x.shape[ax] for x in ins)
        return [Info(shape, ins[0].dtype)]

    def build(self, ins, outs, i, o):
        srcs, b, ax = list(i), o[0], self.concat_axis(len(ins[0].shape))

        def step(env, nt):
            np.concatenate([env[k] for k in srcs], axis=ax, out=env[b])
        return step


@register
class Split(Op):
    kind = "Split"
    n_inputs = (1, 2)
    n_outputs = (1, 1 << 16)
    attributes = {"axis": "int", "num_outputs": "int"}

    def cuts(self, ins) -> tuple:
        """(axis, the output sizes along it); checked."""
        x = ins[0]
        ax = self.axis(self.attr("axis", 0), len(x.shape))
        n = len(self.node.outputs)
        split = self.known(ins, 1, "split")
        dim = x.shape[ax]
        if split is not None:
            sizes = [int(s) for s in split.reshape(-1)]
            if len(sizes) != n or sum(sizes) != dim or min(sizes) < 0:
                raise self.error(f"split {sizes} does not cut axis {ax} of size {dim} into {n}")
        else:
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - k * chunk) for k in range(n)]
            if min(sizes) < 0 or (self.attr("num_outputs") is None and dim % n):
                raise self.error(f"axis {ax} of size {dim} does not split into {n} outputs")
        return ax, sizes

    def infer(self, ins):
        x = ins[0]
        ax, sizes = self.cuts(ins)
        return [Info(x.shape[:ax] + (s,) + x.shape[ax + 1:], x.dtype) for s in sizes]

    def build(self, ins, outs, i, o):
        a = i[0]
        ax, sizes = self.cuts(ins)
        bounds = np.cumsum([0] + sizes).tolist()
        parts = [(b, (slice(None),) * ax + (slice(lo, hi),))
                 for b, lo, hi in zip(o, bounds[:-1], bounds[1:])]

        def step(env, nt):
            x = env[a]
            for b, sl in parts:
                np.copyto(env[b], x[sl])
        return step


@register
class Slice(Op):
    kind = "Slice"
    n_inputs = (3, 5)

    def slices(self, ins) -> tuple:
        """The index of X per axis; checked."""
        rank = len(ins[0].shape)
        starts = self.known(ins, 1, "starts").reshape(-1)
        ends = self.known(ins, 2, "ends").reshape(-1)
        axes = self.known(ins, 3, "axes")
        steps = self.known(ins, 4, "steps")
        axes = list(range(len(starts))) if axes is None else [int(a) for a in axes.reshape(-1)]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps.reshape(-1)]
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise self.error("starts, ends, axes and steps must have one length")
        slices = [slice(None)] * rank
        seen = set()
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = self.axis(a, rank, "axes entry")
            if a in seen or st == 0:
                raise self.error("axes repeat an axis or a step is 0")
            seen.add(a)
            big = np.iinfo(np.int64).max
            s, e = int(max(min(s, big), -big)), int(max(min(e, big), -big))
            slices[a] = slice(s, e, st)
        return tuple(slices)

    def infer(self, ins):
        x = ins[0]
        slices = self.slices(ins)
        shape = tuple(len(range(d)[sl]) for d, sl in zip(x.shape, slices))
        value = None if x.value is None else x.value[slices].copy()
        return [Info(shape, x.dtype, value)]

    def build(self, ins, outs, i, o):
        a, b, sl = i[0], o[0], self.slices(ins)

        def step(env, nt):
            np.copyto(env[b], env[a][sl])
        return step


@register
class Gather(Op):
    kind = "Gather"
    n_inputs = (2, 2)
    attributes = {"axis": "int"}

    def infer(self, ins):
        x, idx = ins
        if idx.dtype.kind not in "iu":
            raise self.error(f"indices must be integers, got {idx.dtype}")
        ax = self.axis(self.attr("axis", 0), max(len(x.shape), 1))
        if idx.value is not None and idx.value.size:
            d = x.shape[ax]
            if idx.value.min() < -d or idx.value.max() >= d:
                raise self.error(f"indices {idx.value.tolist()} out of range for axis {ax} of "
                                 f"size {d}")
        shape = x.shape[:ax] + idx.shape + x.shape[ax + 1:]
        value = None
        if x.value is not None and idx.value is not None:
            check_tensor_size(self, shape, x.dtype, folding=True)
            value = np.take(x.value, idx.value, axis=ax)
        return [Info(shape, x.dtype, value)]

    def build(self, ins, outs, i, o):
        a, k, b = i[0], i[1], o[0]
        ax = self.axis(self.attr("axis", 0), max(len(ins[0].shape), 1))

        def step(env, nt):
            np.take(env[a], env[k], axis=ax, out=env[b])
        return step


@register
class Shape(Op):
    kind = "Shape"
    attributes = {"start": "int", "end": "int"}

    def infer(self, ins):
        shape = ins[0].shape
        start, end = self.attr("start", 0), self.attr("end", len(shape))
        value = np.array(shape[slice(start, end)], dtype=np.int64)
        return [Info(value.shape, I64, value)]


@register
class ConstantOfShape(Op):
    kind = "ConstantOfShape"
    attributes = {"value": "num", "dtype": "str"}

    def setup(self, constants):
        dtype = self.attr("dtype", "float32")
        if dtype not in DTYPES:
            raise self.error(f"dtype {dtype!r} is not supported")
        self.dtype = np.dtype(dtype)

    def infer(self, ins):
        shape = self.known(ins, 0, "input")
        if shape.ndim != 1 or shape.dtype.kind not in "iu" or (shape < 0).any():
            raise self.error(f"input must be a 1-D tensor of non-negative sizes, got "
                             f"{shape.tolist()}")
        check_tensor_size(self, shape.tolist(), self.dtype, folding=True)
        value = np.full(tuple(int(d) for d in shape), self.attr("value", 0), self.dtype)
        return [Info(value.shape, self.dtype, value)]


@register
class Cast(Op):
    kind = "Cast"
    attributes = {"to": "str"}

    def setup(self, constants):
        to = self.attr("to")
        if to not in DTYPES:
            raise self.error(f"cast to {to!r} is not supported")
        self.to = np.dtype(to)

    def infer(self, ins):
        return [Info(ins[0].shape, self.to)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]

        def step(env, nt):
            np.copyto(env[b], env[a], casting="unsafe")
        return step


@register
class Expand(Op):
    kind = "Expand"
    n_inputs = (2, 2)

    def infer(self, ins):
        x = ins[0]
        target = self.known(ins, 1, "shape").reshape(-1)
        try:
            shape = np.broadcast_shapes(x.shape, tuple(int(d) for d in target))
        except ValueError:
            raise self.error(f"X {x.shape} does not broadcast to {target.tolist()}") from None
        return [Info(shape, x.dtype)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]

        def step(env, nt):
            np.copyto(env[b], env[a])
        return step


@register
class Pad(Op):
    """Pad with mode constant, reflect, edge or wrap; negative pads crop."""
    kind = "Pad"
    n_inputs = (2, 4)
    attributes = {"mode": "str"}
    modes = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}

    def setup(self, constants):
        self.mode = self.attr("mode", "constant")
        if self.mode not in self.modes:
            raise self.error(f"mode {self.mode!r} is not one of {list(self.modes)}")

    def padding(self, ins) -> tuple:
        """(crop: X's index, widths: (before, after) per axis, the constant, the output shape)
        for these inputs; checked."""
        x = ins[0]
        rank = len(x.shape)
        pads = self.known(ins, 1, "pads").reshape(-1).astype(np.int64)
        value = self.known(ins, 2, "constant_value")
        axes = self.known(ins, 3, "axes")
        axes = list(range(rank)) if axes is None else [self.axis(int(a), rank, "axes entry")
                                                       for a in axes.reshape(-1)]
        if len(pads) != 2 * len(axes):
            raise self.error(f"pads must have 2 * {len(axes)} entries, got {len(pads)}")
        before, after = [0] * rank, [0] * rank
        for k, a in enumerate(axes):
            before[a], after[a] = int(pads[k]), int(pads[k + len(axes)])
        crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(before, after, x.shape))
        inner = tuple(len(range(d)[c]) for d, c in zip(x.shape, crop))
        if min(inner, default=1) < 0:
            raise self.error(f"pads {pads.tolist()} crop more than X {x.shape} holds")
        widths = tuple((max(b, 0), max(e, 0)) for b, e in zip(before, after))
        for (b, e), d in zip(widths, inner):
            if self.mode == "reflect" and (b or e) and (d < 2 or max(b, e) > d - 1):
                raise self.error(f"reflect padding {b, e} needs more than {max(b, e)} elements "
                                 f"along an axis of size {d}")
            if self.mode in ("edge", "wrap") and (b or e) and d == 0:
                raise self.error(f"{self.mode} padding of an empty axis")
        value = 0 if value is None else value.reshape(-1)[0].item() if value.size else 0
        shape = tuple(d + b + e for d, (b, e) in zip(inner, widths))
        return crop, widths, value, shape

    def infer(self, ins):
        return [Info(self.padding(ins)[3], ins[0].dtype)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        (crop, widths, value, _), mode = self.padding(ins), self.mode
        inner = tuple(slice(lo, lo + (hi_dim - lo - hi)) for (lo, hi), hi_dim
                      in zip(widths, outs[0].shape))
        if mode == "constant":
            def step(env, nt):
                out = env[b]
                out.fill(value)
                out[inner] = env[a][crop]
        else:
            def step(env, nt):
                env[b][...] = np.pad(env[a][crop], widths, mode=mode)
        return step
