"""Tensors rearranged or generated: DepthToSpace, SpaceToDepth, Tile, Trilu, CumSum, OneHot
(copies of their input, rearranged or masked), and Range, Size, EyeLike, whose values are known
when the model is planned.

The rearranging copies write the output buffer through views, with no Python loop over
elements: DepthToSpace and SpaceToDepth copy between 6-D views of input and output, in one copy
or block by block; Tile broadcasts the input into the output viewed as (repeat, size) pairs of
axes. Where the inputs are constants, ``infer`` gives the output's value with the same function
the step runs.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import DTYPES
from .base import I64, Info, Op, check_tensor_size, register


def _fold(op, shape, dtype, fill, *args):
    """The output's value, computed by ``fill(*args, out)`` when every argument is a constant
    (None otherwise), checked against the size caps before it is allocated."""
    if any(a is None for a in args):
        return None
    check_tensor_size(op, shape, dtype, folding=True)
    out = np.empty(shape, dtype)
    fill(*args, out)
    return out


def _view(out, shape):
    # a step writes the planner's buffer through this view: a copy would be written and lost
    return out.reshape(shape, copy=False)


class _Fill(Op):
    """An operator whose step is one function ``fill(*inputs, out)``: ``fill_for(ins)`` gives
    the output Infos (folded where the inputs are constant) and that function for these
    shapes, and infer and build each ask it, so nothing per shape stays on the op."""
    reads = (0,)     # the inputs fill takes, in order

    def fill_for(self, ins) -> tuple:
        raise NotImplementedError

    def infer(self, ins):
        return self.fill_for(ins)[0]

    def build(self, ins, outs, i, o):
        fill, b = self.fill_for(ins)[1], o[0]
        if self.reads == (0,):
            a = i[0]

            def step(env, nt):
                fill(env[a], env[b])
        else:
            srcs = [i[k] for k in self.reads]

            def step(env, nt):
                fill(*[env[k] for k in srcs], env[b])
        return step


def _scalar(op, value, what, kinds):
    """The one element of a plan-time input (ONNX: a scalar, or a 1-element tensor)."""
    if value.size != 1 or value.dtype.kind not in kinds:
        raise op.error(f"{what} must be a single {'integer' if kinds == 'iu' else 'number'}, "
                       f"got {value.dtype} of shape {value.shape}")
    return value.reshape(()).item()


# ============================================================================ blocks and depth

# Elements per block from which DepthToSpace and SpaceToDepth copy block by block (bs * bs
# copies whose inner loops run along image rows) rather than in one copy of a 6-D transposed
# view (whose inner loop is a block row, bs elements): each call then moves 16 KiB or more,
# which pays its overhead (bench: a 1x256x56x56 pixel shuffle, 1.9 -> 0.45 ms).
BLOCK_COPY_MIN = 4096
# Blocks a block-by-block copy loops over in Python, at most (a declared shape may hold a
# blocksize in the tens of thousands): beyond, one transposed copy
MAX_BLOCKS = 4096


class _Blocks(_Fill):
    """DepthToSpace and SpaceToDepth. With c channels on the space side and an h x w grid of
    bs x bs blocks, both sides are viewed 6-D: the space side as (n, c, h, bs, w, bs), the
    depth side as (n, bs, bs, c, h, w) (DCR) or (n, c, bs, bs, h, w) (CRD); block (i, j) of
    the space side is [:, :, :, i, :, j], of the depth side [:, i, j] or [:, :, i, j]."""
    attributes = {"blocksize": "int", "mode": "str"}
    to_depth = False

    def setup(self, constants):
        bs = self.attr("blocksize")
        if bs is None:
            raise self.error("attribute 'blocksize' is required")
        if bs < 1:
            raise self.error(f"blocksize must be at least 1, got {bs}")
        self.bs = bs
        self.mode = self.attr("mode", "DCR")
        if self.mode not in ("DCR", "CRD"):
            raise self.error(f"mode {self.mode!r} is not 'DCR' or 'CRD'")

    def grid(self, shape):
        """(n, c, h, w) of the space side, and the output shape."""
        raise NotImplementedError

    def per_block(self, x) -> bool:
        n, c, h, w = self.grid(x.shape)[0]
        return n * c * h * w >= BLOCK_COPY_MIN and self.bs * self.bs <= MAX_BLOCKS

    def fill_for(self, ins):
        x = ins[0]
        if len(x.shape) != 4:
            raise self.error(f"input must be 4-D (NCHW), got shape {x.shape}")
        (n, c, h, w), shape = self.grid(x.shape)
        # an empty side leaves blocksize unchecked by the divisibility: bs * bs blocks of
        # nothing, or a huge output
        check_tensor_size(self, shape, x.dtype)
        bs, dcr, every = self.bs, self.mode == "DCR", slice(None)
        space = (n, c, h, bs, w, bs)
        depth = (n, bs, bs, c, h, w) if dcr else (n, c, bs, bs, h, w)
        perm = (0, 3, 4, 1, 5, 2) if dcr else (0, 1, 4, 2, 5, 3)    # depth view -> space view
        if self.to_depth:
            src, dst, perm = space, depth, tuple(np.argsort(perm))
        else:
            src, dst = depth, space

        if self.per_block(x):
            blocks = [((every,) * 3 + (i, every, j),
                       (every, i, j) if dcr else (every, every, i, j))
                      for i in range(bs) for j in range(bs)]
            if self.to_depth:
                blocks = [(d, s) for s, d in blocks]

            def fill(x, out):
                x, out = x.reshape(src), _view(out, dst)
                for to, of in blocks:
                    np.copyto(out[to], x[of])
        else:
            def fill(x, out):
                np.copyto(_view(out, dst), x.reshape(src).transpose(perm))
        return [Info(shape, x.dtype, _fold(self, shape, x.dtype, fill, x.value))], fill

    def describe(self, ins, outs):
        how = "block by block" if self.per_block(ins[0]) else "one transposed copy"
        return f"{self.mode}, blocksize {self.bs}: {how}"


@register
class DepthToSpace(_Blocks):
    """Channel c * bs * bs + i * bs + j (CRD; PyTorch's pixel_shuffle) or (i * bs + j) * C + c
    (DCR) of the input becomes pixel (h * bs + i, w * bs + j) of channel c."""
    kind = "DepthToSpace"

    def grid(self, shape):
        n, c, h, w = shape
        bs = self.bs
        if c % (bs * bs):
            raise self.error(f"{c} channels do not divide into blocks of {bs}x{bs}")
        c //= bs * bs
        return (n, c, h, w), (n, c, h * bs, w * bs)


@register
class SpaceToDepth(_Blocks):
    """The inverse of DepthToSpace in the same mode (mode is opset 28's; earlier opsets are
    DCR)."""
    kind = "SpaceToDepth"
    to_depth = True

    def grid(self, shape):
        n, c, h, w = shape
        bs = self.bs
        if h % bs or w % bs:
            raise self.error(f"spatial size {h}x{w} does not divide into blocks of {bs}x{bs}")
        return (n, c, h // bs, w // bs), (n, c * bs * bs, h // bs, w // bs)


# ============================================================================ tiling

@register
class Tile(_Fill):
    """NumPy's tile without broadcasting: one repeat count per axis (input 1, known when the
    model is planned)."""
    kind = "Tile"
    n_inputs = (2, 2)

    def fill_for(self, ins):
        x = ins[0]
        reps = self.known(ins, 1, "repeats")
        if reps.ndim != 1 or reps.dtype.kind not in "iu":
            raise self.error(f"repeats must be a 1-D integer tensor, got {reps.dtype} of shape "
                             f"{reps.shape}")
        reps = [int(r) for r in reps]
        if len(reps) != len(x.shape) or any(r < 0 for r in reps):
            raise self.error(f"repeats {reps} must be {len(x.shape)} counts >= 0, one per axis "
                             f"of the input {x.shape}")
        shape = tuple(r * d for r, d in zip(reps, x.shape))
        check_tensor_size(self, shape, x.dtype)
        # the output seen as (repeat, size) axis pairs; the input broadcast along the repeats
        src = sum(((1, d) for d in x.shape), ())
        dst = sum(((r, d) for r, d in zip(reps, x.shape)), ())

        def fill(x, out):
            np.copyto(_view(out, dst), x.reshape(src))
        return [Info(shape, x.dtype, _fold(self, shape, x.dtype, fill, x.value))], fill


# ============================================================================ generated values

RANGE_DTYPES = ("float32", "float64", "int16", "int32", "int64")


@register
class Range(Op):
    """start, start + delta, ... up to limit (excluded): max(ceil((limit - start) / delta), 0)
    elements, element i computed as start + i * delta (not by repeated addition). All three
    inputs are known when the model is planned, so the output is a value."""
    kind = "Range"
    n_inputs = (3, 3)
    # stash_type: the precision float16 and bfloat16 ranges are computed in; the engine has
    # neither type, and computes float ranges in float64
    attributes = {"stash_type": "int"}

    def infer(self, ins):
        names = ("start", "limit", "delta")
        vals = [self.known(ins, k, what) for k, what in enumerate(names)]
        dtypes = {v.dtype for v in vals}
        if len(dtypes) != 1 or vals[0].dtype.name not in RANGE_DTYPES:
            raise self.error(f"start, limit and delta must share one of the types "
                             f"{', '.join(RANGE_DTYPES)}, got {[v.dtype.name for v in vals]}")
        dtype = vals[0].dtype
        start, limit, delta = (_scalar(self, v, what, "fiu") for v, what in zip(vals, names))
        if not all(math.isfinite(v) for v in (start, limit, delta)):
            raise self.error(f"start {start}, limit {limit} and delta {delta} must be finite")
        if delta == 0:
            raise self.error("delta must not be 0")
        if dtype.kind == "f":
            n = max(math.ceil((limit - start) / delta), 0)
        else:      # exact in Python's integers: ceil(a / b) = -(-a // b)
            n = max(-((start - limit) // delta), 0)
        # computed in float64 or int64, then cast: that array is what must fit
        work = np.dtype(np.float64 if dtype.kind == "f" else np.int64)
        check_tensor_size(self, (n,), work, f"output (computed in {work.name})", folding=True)
        if dtype.kind == "f":
            value = (start + np.arange(n, dtype=np.float64) * delta).astype(dtype)
        else:      # every element lies between start and limit: no overflow
            value = (start + np.arange(n, dtype=np.int64) * delta).astype(dtype)
        return [Info((n,), dtype, value)]


@register
class Size(Op):
    """The number of elements of the input, an int64 scalar known from its shape."""
    kind = "Size"

    def infer(self, ins):
        return [Info((), I64, np.array(ins[0].size, np.int64))]


# TensorProto's element type codes, for EyeLike's dtype attribute
_TENSOR_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                 7: "int64", 9: "bool", 11: "float64", 12: "uint32", 13: "uint64"}


@register
class EyeLike(Op):
    """A 2-D tensor of the input's shape: ones on diagonal k (column - row = k), zeros elsewhere,
    of type dtype (default: the input's). Known from the input's shape alone."""
    kind = "EyeLike"
    attributes = {"dtype": "int", "k": "int"}

    def setup(self, constants):
        code = self.attr("dtype")
        self.dtype = None
        if code is not None:
            if _TENSOR_TYPES.get(code) not in DTYPES:
                raise self.error(f"dtype {code} is not a supported element type")
            self.dtype = np.dtype(_TENSOR_TYPES[code])
        self.k = self.attr("k", 0)

    def infer(self, ins):
        x = ins[0]
        if len(x.shape) != 2:
            raise self.error(f"input must be 2-D, got shape {x.shape}")
        dtype = self.dtype or x.dtype
        n, m = x.shape
        check_tensor_size(self, x.shape, dtype, folding=True)
        # a diagonal outside the matrix is all zeros; clamping keeps np.eye's arithmetic small
        value = np.eye(n, m, k=max(min(self.k, m), -n), dtype=dtype)
        return [Info(x.shape, dtype, value)]


# ============================================================================ masks and sums

@register
class Trilu(_Fill):
    """The upper (column - row >= k) or lower (column - row <= k) triangle of the last two
    axes, zeros elsewhere; k is input 1 (default 0), known when the model is planned."""
    kind = "Trilu"
    n_inputs = (1, 2)
    attributes = {"upper": "int"}

    def setup(self, constants):
        self.upper = bool(self.attr("upper", 1))

    def fill_for(self, ins):
        x = ins[0]
        if len(x.shape) < 2:
            raise self.error(f"input must have at least 2 axes, got shape {x.shape}")
        k = self.known(ins, 1, "k")
        k = 0 if k is None else _scalar(self, k, "k", "iu")
        n, m = x.shape[-2:]
        # the (n, m) mask is made now, before the plan's budget sees the output
        check_tensor_size(self, (n, m), np.bool_, "the mask of the last two axes", folding=True)
        k = max(min(k, m), -n)    # beyond the matrix every entry is kept or every one dropped
        # np.tri(n, m, k): column - row <= k
        mask = ~np.tri(n, m, k - 1, dtype=bool) if self.upper else np.tri(n, m, k, dtype=bool)

        def fill(x, out):
            out.fill(0)
            np.copyto(out, x, where=mask)   # not a product: NaN and inf outside become zeros
        return [Info(x.shape, x.dtype, _fold(self, x.shape, x.dtype, fill, x.value))], fill


CUMSUM_DTYPES = ("float32", "float64", "int32", "int64", "uint32", "uint64")


@register
class CumSum(_Fill):
    """Running sums along the axis given by input 1 (known when the model is planned), from the
    end with ``reverse``, each excluding its own element with ``exclusive``; summed in the
    input's type, element after element."""
    kind = "CumSum"
    n_inputs = (2, 2)
    attributes = {"exclusive": "int", "reverse": "int"}

    def setup(self, constants):
        self.exclusive = bool(self.attr("exclusive", 0))
        self.reverse = bool(self.attr("reverse", 0))

    def fill_for(self, ins):
        x = ins[0]
        if x.dtype.name not in CUMSUM_DTYPES:
            raise self.error(f"input must be one of {', '.join(CUMSUM_DTYPES)}, got {x.dtype}")
        ax = self.axis(_scalar(self, self.known(ins, 1, "axis"), "axis", "iu"), len(x.shape))
        before = (slice(None),) * ax
        # exclusive: sum 0 is 0, sum j (j >= 1) the inclusive sum j - 1
        head, tail, lead = (before + (slice(0, 1),), before + (slice(1, None),),
                            before + (slice(0, -1),))
        reverse, exclusive = self.reverse, self.exclusive

        def fill(x, out):
            if reverse:
                x, out = np.flip(x, ax), np.flip(out, ax)
            if exclusive:
                out[head] = 0
                x, out = x[lead], out[tail]
            np.add.accumulate(x, axis=ax, dtype=x.dtype, out=out)
        return [Info(x.shape, x.dtype, _fold(self, x.shape, x.dtype, fill, x.value))], fill


@register
class OneHot(_Fill):
    """Output[..., j, ...] (j on the new axis ``axis``) = values[1] where the index equals j,
    values[0] elsewhere; indices in [-depth, 0) count from the end, others match nothing.
    Float indices are truncated to integers. depth (input 1) is known when the model is
    planned; values (input 2, [off, on]) is read when the step runs."""
    kind = "OneHot"
    n_inputs = (3, 3)
    attributes = {"axis": "int"}
    reads = (0, 2)

    def fill_for(self, ins):
        idx, values = ins[0], ins[2]
        if idx.dtype.kind not in "fiu":
            raise self.error(f"indices must be numbers, got {idx.dtype}")
        depth = _scalar(self, self.known(ins, 1, "depth"), "depth", "fiu")
        if not math.isfinite(depth) or depth < 0:
            raise self.error(f"depth must be a finite count >= 0, got {depth}")
        depth = int(depth)
        if values.size != 2:
            raise self.error(f"values must hold 2 elements [off, on], got shape {values.shape}")
        rank = len(idx.shape)
        ax = self.axis(self.attr("axis", -1), rank + 1)
        shape = idx.shape[:ax] + (depth,) + idx.shape[ax:]
        # against the budget too: the depth table below is made before the plan checks it
        check_tensor_size(self, shape, values.dtype, folding=True)
        if math.prod(shape) == 0:
            # no indices (or depth 0): nothing to write, and no table of a depth that may be
            # anything up to the index range
            def nothing(idx, values, out):
                pass
            return [Info(shape, values.dtype, _fold(self, shape, values.dtype, nothing,
                                                    idx.value, values.value))], nothing
        expanded = idx.shape[:ax] + (1,) + idx.shape[ax:]
        targets = np.arange(depth, dtype=np.int64).reshape((1,) * ax + (depth,) +
                                                           (1,) * (rank - ax))

        def fill(idx, values, out):
            with np.errstate(invalid="ignore"):    # NaN indices match nothing
                idx = idx.astype(np.int64)
            idx = np.where(idx < 0, idx + depth, idx).reshape(expanded)
            off, on = values.reshape(-1)
            out.fill(off)
            np.copyto(out, on, where=idx == targets)
        return [Info(shape, values.dtype, _fold(self, shape, values.dtype, fill, idx.value,
                                                values.value))], fill
