"""Normalisation node plans: Softmax, BatchNormalization left standing after the passes (one
not after a convolution), local response normalisation (LRN), and the normalisations that take
their statistics from the input itself: LayerNormalization, GroupNormalization,
InstanceNormalization and MeanVarianceNormalization.

Their statistics take two passes over X (``standardize``: a mean, then the deviations from it,
their mean and mean square), which keeps the precision however large the mean is against the
spread; the deviations are stored in float32 in the output buffer and scaled there.
"""
from __future__ import annotations

import math

import numpy as np

from ..._kernels.activation import f32_scale_shift
from ..._kernels.layer_norm import f32_layer_norm_rows
from ..._threads import threads_for
from ...ops.activation import apply_activation, canonical, kernel_act
from .base import F32, Info, Op, register, same_shape_inputs

# the stash_type values taken (ONNX element types float32 and float64): the statistics here are
# within a few eps32, all that the float32 output can carry either way
STASH_FLOAT, STASH_DOUBLE = 1, 11


# ============================================================================ softmax, batch norm

@register
class Softmax(Op):
    """Softmax over ``axis`` (opset 13); ``coerce_2d`` = 1 gives the opset 1-12 operator, which
    normalises over all axes from ``axis`` on."""
    kind = "Softmax"
    attributes = {"axis": "int", "coerce_2d": "int"}

    def setup(self, constants):
        self.coerce = bool(self.attr("coerce_2d", 0))
        self.axis_attr = self.attr("axis", 1 if self.coerce else -1)

    def infer(self, ins):
        x = ins[0]
        if x.dtype not in (F32, np.dtype(np.float64)):     # float64 in attention graphs
            raise self.error(f"X must be float32 or float64, got {x.dtype}")
        self.axis(self.axis_attr, max(len(x.shape), 1))
        return [Info(x.shape, x.dtype)]

    def flops(self, ins, outs):
        return 4.0 * outs[0].size

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        shape = outs[0].shape
        ax = self.axis(self.axis_attr, max(len(shape), 1))
        if self.coerce:
            view = (math.prod(shape[:ax]), math.prod(shape[ax:]))
            axis = 1
        else:
            view, axis = shape, ax

        normalise = self.normalise
        if math.prod(shape) == 0:       # nothing to normalise (max of an empty axis fails)
            return lambda env, nt: None

        def step(env, nt):
            x = env[a].reshape(view)
            out = env[b].reshape(view)
            np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
            normalise(out, axis)
        return step

    @staticmethod
    def normalise(shifted, axis):
        """From x - max(x) (in ``shifted``) to the result, in place."""
        np.exp(shifted, out=shifted)
        np.divide(shifted, shifted.sum(axis=axis, keepdims=True), out=shifted)


@register
class LogSoftmax(Softmax):
    """log(softmax(x)) as x - max - log(sum(exp(x - max))): no exp of a large number, no log
    of 0 for the largest entries."""
    kind = "LogSoftmax"

    @staticmethod
    def normalise(shifted, axis):
        shifted -= np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@register
class BatchNormalization(Op):
    """Inference BatchNormalization left standing (one not after a convolution): the
    per-channel scale and shift are computed once, in float64, from constant statistics, or
    on every run from statistics computed at run time. ``spatial`` = 0 (opset < 9) takes
    statistics per channel and position. ``activation`` (the engine's fusion of a Relu, SiLU,
    HardSwish, Gelu or clip after it) is applied in the same pass over X."""
    kind = "BatchNormalization"
    n_inputs = (5, 5)
    attributes = {"epsilon": "float", "spatial": "int", "activation": "str"}

    def setup(self, constants):
        try:
            self.activation = canonical(self.attr("activation"))
        except ValueError as e:
            raise self.error(str(e)) from None
        self.eps = float(self.attr("epsilon", 1e-5))
        self.spatial = bool(self.attr("spatial", 1))
        self.runtime = any(self.input_name(k) not in constants for k in range(1, 5))
        if not self.runtime:
            params = [self.const(constants, k, w)
                      for k, w in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
            self.stat_shape = self._check_shapes([p.shape for p in params])
            self.scale, self.shift = self._scale_shift(*params)

    def _check_shapes(self, shapes):
        shape = shapes[0]
        if any(p != shape for p in shapes) or len(shape) < 1:
            raise self.error(f"scale, B, mean and var must have one common shape, got "
                             f"{list(shapes)}")
        if self.spatial and len(shape) != 1:
            raise self.error(f"scale, B, mean and var must be 1-D (C,), got {shape}")
        return tuple(shape)

    def _scale_shift(self, scale, bias, mean, var):
        scale, bias, mean, var = (np.asarray(p, np.float64) for p in (scale, bias, mean, var))
        if np.any(var + self.eps < 0):
            raise self.error("var + epsilon has negative entries")
        s = scale / np.sqrt(var + self.eps)
        return s.astype(np.float32), (bias - mean * s).astype(np.float32)

    def stats_view(self, ins) -> tuple:
        """The shape the per-channel (or, spatial=0, per-position) statistics are read as
        against X; checked."""
        x = self.float_in(ins, 0)
        if self.runtime:
            for k, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")):
                self.float_in(ins, k, what)
            stat_shape = self._check_shapes([ins[k].shape for k in range(1, 5)])
        else:
            stat_shape = self.stat_shape
        if len(x.shape) < 2:
            raise self.error(f"X must have a channel axis, got shape {x.shape}")
        if self.spatial:
            if x.shape[1] != stat_shape[0]:
                raise self.error(f"X has {x.shape[1]} channels, the statistics "
                                 f"{stat_shape[0]}")
            return (1, x.shape[1]) + (1,) * (len(x.shape) - 2)
        if x.shape[1:] != stat_shape:
            raise self.error(f"statistics of shape {stat_shape} do not match X "
                             f"{x.shape} (spatial=0 takes one per channel and position)")
        return (1,) + stat_shape

    def infer(self, ins):
        self.stats_view(ins)
        return [Info(ins[0].shape, F32)]

    def inplace_inputs(self, ins, outs):
        return same_shape_inputs(ins, outs, (0,))

    def flops(self, ins, outs):
        return 2.0 * outs[0].size

    def build(self, ins, outs, i, o):
        a, b, view = i[0], o[0], self.stats_view(ins)
        act = self.activation
        if self.spatial:
            # one pass over X, (N, C, positions) as the kernel sees it
            shape = outs[0].shape
            planes = shape[:2] + (math.prod(shape[2:]),)
            code, size = kernel_act(act), math.prod(shape)

            def affine(x, out, s, t, nt):
                f32_scale_shift(x.reshape(planes), s, t, out.reshape(planes), code,
                                threads_for(size, nt))
        else:
            def affine(x, out, s, t, nt):
                np.multiply(x, s.reshape(view), out=out)
                np.add(out, t.reshape(view), out=out)
                if act is not None:
                    apply_activation(out, act)
        if self.runtime:
            params, scale_shift = i[1:5], self._scale_shift

            def step(env, nt):      # statistics computed at run time
                s, t = scale_shift(*(env[k] for k in params))
                affine(env[a], env[b], s, t, nt)
            return step
        s, t = self.scale, self.shift

        def step(env, nt):
            affine(env[a], env[b], s, t, nt)
        return step

    def describe(self, ins, outs):
        text = "statistics computed at run time: scale and shift made on every run" \
            if self.runtime else ""
        if self.activation:
            text += (" | " if text else "") + f"+ {self.activation} in the same pass"
        return text


# ============================================================================ local response norm

@register
class LRN(Op):
    """Local response normalisation across channels (ONNX's formula):
    y = x / (bias + alpha/size * sum of x^2 over the window)^beta, the window covering channels
    c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    kind = "LRN"
    attributes = {"alpha": "float", "beta": "float", "bias": "float", "size": "int"}

    def setup(self, constants):
        self.size = self.attr("size")
        if self.size is None or self.size < 1:
            raise self.error(f"size must be a positive integer, got {self.size!r}")
        self.alpha = float(self.attr("alpha", 1e-4))
        self.beta = float(self.attr("beta", 0.75))
        self.bias = float(self.attr("bias", 1.0))

    def infer(self, ins):
        x = self.float_in(ins, 0, rank=(3, 4, 5))
        return [Info(x.shape, F32)]

    def flops(self, ins, outs):
        return float(outs[0].size * (self.size + 4))

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        c = outs[0].shape[1]
        # a window wider than the channels covers them all: clamped, so that a huge size
        # cannot overflow the index arithmetic below
        lo, hi = min((self.size - 1) // 2, c), min(-(-(self.size - 1) // 2), c)
        scale, beta, bias = self.alpha / self.size, self.beta, self.bias

        def step(env, nt):
            x = env[a]
            sq = np.square(x, dtype=np.float64)
            csum = np.zeros((x.shape[0], c + 1) + x.shape[2:], np.float64)
            np.cumsum(sq, axis=1, out=csum[:, 1:])
            top = np.minimum(np.arange(c) + hi + 1, c)
            bottom = np.maximum(np.arange(c) - lo, 0)
            window = csum[:, top] - csum[:, bottom]
            np.divide(x, (bias + scale * window) ** beta, out=env[b], casting="unsafe")
        return step


# ============================================================================ statistics from X

def standardize(x, d, axis, dtype=np.float32):
    """Writes x - m into ``d`` (x's shape; may be x itself), m a first estimate of the mean,
    and returns (mean, variance, c): the mean and variance over ``axis`` (an int or a tuple;
    float64, reduced dimensions kept) and c = mean - m, what is left to take from ``d``.

    Sums accumulate in ``dtype``: float32 where the summed elements are contiguous rows
    (NumPy sums those pairwise, within a few eps32 of the sum of |terms|), float64 for strided
    ones. The second pass corrects the first (Chan, Golub and LeVeque's two-pass variance):
    d = x - m rounds relative to d itself, and mean(d) recovers m's error, so the result keeps
    its precision however large the mean is against the spread."""
    m = x.mean(axis=axis, dtype=dtype, keepdims=True).astype(np.float32)
    np.subtract(x, m, out=d)
    c = d.mean(axis=axis, dtype=dtype, keepdims=True).astype(np.float64)
    var = np.square(d).mean(axis=axis, dtype=dtype, keepdims=True) - c * c
    return m + c, np.maximum(var, 0.0), c


def broadcasts_to(shape, target) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without changing it (ONNX's unidirectional
    broadcasting)."""
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def parameter(ins, i, k, prepare):
    """``env -> array`` for input k, passed through ``prepare``: a constant is prepared once,
    when the plan is built; a tensor computed at run time, on each run."""
    if ins[k].value is not None:
        fixed = np.ascontiguousarray(prepare(ins[k].value.astype(np.float32, copy=False)))
        return lambda env: fixed
    slot = i[k]
    return lambda env: prepare(env[slot])


class Normalization(Op):
    """What the four share: epsilon and stash_type (checked once), the float32 inputs, and
    running in place over X (read whole for the mean before the first write)."""
    eps_default = 1e-5

    def setup(self, constants):
        self.eps = float(self.attr("epsilon", self.eps_default))
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise self.error(f"epsilon must be a finite number >= 0, got {self.eps}")
        self.stash = self.attr("stash_type", STASH_FLOAT)
        if self.stash not in (STASH_FLOAT, STASH_DOUBLE):
            raise self.error(f"stash_type {self.stash} is not supported (1, float32, or 11, "
                             f"float64)")

    def inputs(self, ins, names):
        """The float32 inputs that are present, X first."""
        return [self.float_in(ins, k, what) if k < len(ins) and ins[k] is not None else None
                for k, what in enumerate(names)]

    def inplace_inputs(self, ins, outs):
        # a parameter that is X itself must survive X's overwriting
        if any(x is ins[0] for x in ins[1:]):
            return ()
        return same_shape_inputs(ins, outs, (0,))

    def flops(self, ins, outs):
        return 8.0 * outs[0].size


@register
class LayerNormalization(Normalization):
    """Normalisation over the axes from ``axis`` on (opset 17), then Y = normalised * Scale + B,
    Scale and B broadcasting to X; the optional outputs Mean and InvStdDev (float32, X's shape
    with the normalised axes kept as 1) are computed when the node names them."""
    kind = "LayerNormalization"
    n_inputs = (2, 3)
    n_outputs = (1, 3)
    attributes = {"axis": "int", "epsilon": "float", "stash_type": "int"}

    def setup(self, constants):
        super().setup(constants)
        if self.stash != STASH_FLOAT and any(self.node.outputs[1:]):
            raise self.error("Mean and InvStdDev in float64 (stash_type 11) are not supported")

    def infer(self, ins):
        x, scale, bias = self.inputs(ins, ("X", "Scale", "B"))
        rank = len(x.shape)
        ax = self.first_axis(x.shape)
        for p, what in ((scale, "Scale"), (bias, "B")):
            if p is not None and not broadcasts_to(p.shape, x.shape):
                raise self.error(f"{what} of shape {p.shape} does not broadcast to X {x.shape}")
        stats = x.shape[:ax] + (1,) * (rank - ax)
        return [Info(x.shape, F32)] + [Info(stats, F32) for _ in self.node.outputs[1:]]

    def first_axis(self, shape) -> int:
        """The first normalised axis of a tensor of this shape."""
        return self.axis(self.attr("axis", -1), len(shape))

    def describe(self, ins, outs):
        text = f"over axes {self.first_axis(outs[0].shape)}..{len(outs[0].shape) - 1}"
        if self.row_vectors(ins) is not None:
            text += ": one pass per row (the layer-norm kernel)"
        return text

    def row_vectors(self, ins):
        """(scale, bias or None) as one float32 value per normalised element when both are
        constants that vary over the normalised axes only (the kernel's case), else None."""
        x, params = ins[0], [p for p in ins[1:3] if p is not None]
        ax = self.first_axis(x.shape)
        tail = x.shape[ax:]
        out = []
        for p in params:
            if p.value is None or len(p.shape) > len(x.shape):
                return None
            lead = len(p.shape) - len(tail)
            if lead > 0 and any(d != 1 for d in p.shape[:lead]):
                return None
            v = p.value.reshape(p.shape[max(lead, 0):]).astype(np.float32, copy=False)
            out.append(np.ascontiguousarray(np.broadcast_to(v, tail)).reshape(-1))
        return out[0], (out[1] if len(out) > 1 else None)

    def build(self, ins, outs, i, o):
        shape = outs[0].shape
        ax = self.first_axis(shape)
        view = (math.prod(shape[:ax]), math.prod(shape[ax:]))
        vectors = self.row_vectors(ins) if view[1] > 0 else None
        if vectors is not None:
            return self._kernel_step(outs, i, o, view, vectors)
        stats = outs[1].shape if len(outs) > 1 else None
        wanted = [k for k in (1, 2) if k < len(o) and self.node.outputs[k]]
        a, y, eps = i[0], o[0], self.eps
        scale = parameter(ins, i, 1, lambda v: v)
        bias = parameter(ins, i, 2, lambda v: v) if len(ins) > 2 and ins[2] is not None \
            else None

        def step(env, nt):
            out = env[y]
            if view[1] == 0:        # nothing to normalise: statistics of no elements
                for k in wanted:
                    env[o[k]].fill(np.nan)
                return
            d = out.reshape(view)
            mean, var, c = standardize(env[a].reshape(view), d, 1)
            d -= c.astype(np.float32)
            # epsilon 0 and no spread: 0 * inf, NaN, as ONNX's formula gives
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / np.sqrt(var + eps)
                d *= inv.astype(np.float32)
            out *= scale(env)
            if bias is not None:
                out += bias(env)
            if 1 in wanted:
                env[o[1]][...] = mean.reshape(stats)
            if 2 in wanted:
                env[o[2]][...] = inv.reshape(stats)
        return step


    def _kernel_step(self, outs, i, o, view, vectors):
        scale, bias = vectors
        a, y, eps = i[0], o[0], float(self.eps)
        wanted = {k: o[k] for k in (1, 2) if k < len(o) and self.node.outputs[k]}
        work = view[0] * view[1] * 4

        def step(env, nt):
            stats = [env[wanted[k]].reshape(-1) if k in wanted else None for k in (1, 2)]
            f32_layer_norm_rows(np.ascontiguousarray(env[a]).reshape(view),
                                scale, bias, env[y].reshape(view), eps, stats[0], stats[1],
                                threads_for(work, nt))
        return step


class ChannelNormalization(Normalization):
    """Statistics per sample over groups of channels and the spatial positions, then a scale
    and bias per channel: y = d * f + (bias - c * f), with d and c from ``standardize`` and
    f = inv_std * scale, f and the shift taken per sample and channel on the small side."""
    n_inputs = (3, 3)

    def per_channel(self, ins):
        """The function making the scale or bias input into the (C, 1) the step applies."""
        raise NotImplementedError

    def group_count(self, shape) -> int:
        """Groups of channels the statistics are taken over, for X of this shape."""
        raise NotImplementedError

    def build(self, ins, outs, i, o):
        shape = outs[0].shape
        n, c = shape[:2]
        groups = self.group_count(shape)
        stats_view = (n * groups, math.prod(shape[1:]) // groups if groups else 0)
        affine_view = (n, c, math.prod(shape[2:]))
        a, y, eps = i[0], o[0], self.eps
        prepare = self.per_channel(ins)
        scale = parameter(ins, i, 1, prepare)
        bias = parameter(ins, i, 2, prepare)
        per_group = c // groups if groups else 0

        def step(env, nt):
            if env[y].size == 0:
                return
            _, var, c = standardize(env[a].reshape(stats_view), env[y].reshape(stats_view), 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                per_sample = np.stack([1.0 / np.sqrt(var + eps), c]).reshape(2, n, groups)
                inv, c = np.repeat(per_sample, per_group, axis=2)[..., None]
                f = inv * scale(env)
                d = env[y].reshape(affine_view)
                d *= f.astype(np.float32)
                d += (bias(env) - c * f).astype(np.float32)
        return step


@register
class InstanceNormalization(ChannelNormalization):
    """Normalisation per sample and channel over the spatial positions (X of rank >= 3),
    then scale and B per channel."""
    kind = "InstanceNormalization"
    attributes = {"epsilon": "float"}

    def infer(self, ins):
        x, scale, bias = self.inputs(ins, ("input", "scale", "B"))
        if len(x.shape) < 3:
            raise self.error(f"input must be (N, C, D1, ...), of rank 3 or more, got shape "
                             f"{x.shape}")
        c = x.shape[1]
        for p, what in ((scale, "scale"), (bias, "B")):
            if p.shape != (c,):
                raise self.error(f"{what} must have shape ({c},), one per channel of the "
                                 f"input {x.shape}, got {p.shape}")
        return [Info(x.shape, F32)]

    def group_count(self, shape) -> int:
        return shape[1]

    def per_channel(self, ins):
        return lambda v: v.reshape(-1, 1)


@register
class GroupNormalization(ChannelNormalization):
    """Normalisation per sample over ``num_groups`` groups of consecutive channels and the
    spatial positions (X of rank >= 2). Scale and bias are per channel (C,) in opset 21 and per
    group (num_groups,) in opsets 18-20; the shapes tell which, and where they agree (as many
    groups as channels) so do the two forms. ``group_affine`` (1: per group, 0: per channel),
    when given, says which the node's opset meant, so a shape of the other form is refused."""
    kind = "GroupNormalization"
    attributes = {"num_groups": "int", "epsilon": "float", "stash_type": "int",
                  "group_affine": "int"}

    def setup(self, constants):
        super().setup(constants)
        self.num_groups = self.attr("num_groups")
        if self.num_groups is None or self.num_groups < 1:
            raise self.error(f"num_groups must be a positive integer, got {self.num_groups!r}")
        self.form = self.attr("group_affine")
        if self.form not in (None, 0, 1):
            raise self.error(f"group_affine must be 0 or 1, got {self.form}")

    def infer(self, ins):
        x, scale, bias = self.inputs(ins, ("X", "scale", "bias"))
        if len(x.shape) < 2:
            raise self.error(f"X must be (N, C, ...), of rank 2 or more, got shape {x.shape}")
        c, g = x.shape[1], self.num_groups
        if c % g:
            raise self.error(f"X's {c} channels do not split into num_groups={g} groups")
        shapes = {0: (c,), 1: (g,)} if self.form is None else {self.form: ((c,), (g,))[self.form]}
        for p, what in ((scale, "scale"), (bias, "bias")):
            if p.shape not in shapes.values():
                raise self.error(f"{what} must have shape "
                                 f"{' or '.join(map(str, sorted(set(shapes.values()))))} "
                                 f"(per channel of X {x.shape} or per group), got {p.shape}")
        if scale.shape != bias.shape:
            raise self.error(f"scale {scale.shape} and bias {bias.shape} must have one shape")
        return [Info(x.shape, F32)]

    def group_count(self, shape) -> int:
        return self.num_groups

    @staticmethod
    def per_group_params(ins) -> bool:
        """Scale and bias given per group (opsets 18-20), not per channel."""
        return ins[1].shape != (ins[0].shape[1],)

    def describe(self, ins, outs):
        return (f"{self.num_groups} groups, scale and bias per "
                f"{'group' if self.per_group_params(ins) else 'channel'}")

    def per_channel(self, ins):
        if self.per_group_params(ins):
            k = ins[0].shape[1] // self.num_groups
            return lambda v: np.repeat(v, k).reshape(-1, 1)
        return lambda v: v.reshape(-1, 1)


@register
class MeanVarianceNormalization(Normalization):
    """(X - mean) / (std + 1e-9) over ``axes`` (default 0, 2, 3; opsets 9 and 13): ONNX's
    function adds its epsilon to the standard deviation, not to the variance. Empty axes, as
    its ReduceMean reads them, take the statistics over every axis."""
    kind = "MeanVarianceNormalization"
    attributes = {"axes": "ints"}
    eps_default = 1e-9

    def norm_axes(self, rank) -> tuple:
        """The axes normalised over, for X of this rank; checked."""
        axes = self.attr("axes", (0, 2, 3))
        axes = tuple(self.axis(k, rank, "axes entry") for k in axes) or tuple(range(rank))
        if len(set(axes)) != len(axes):
            raise self.error(f"axes {list(self.attr('axes'))} name an axis twice")
        return tuple(sorted(axes))

    def infer(self, ins):
        x, = self.inputs(ins, ("X",))
        self.norm_axes(len(x.shape))
        return [Info(x.shape, F32)]

    def build(self, ins, outs, i, o):
        a, y, eps, axes = i[0], o[0], self.eps, self.norm_axes(len(outs[0].shape))

        def step(env, nt):
            if env[y].size == 0:
                return
            d = env[y]
            # float64 sums: the reduced axes need not be contiguous
            _, var, c = standardize(env[a], d, axes, np.float64)
            f = 1.0 / (np.sqrt(var) + eps)
            d *= f.astype(np.float32)
            d -= (c * f).astype(np.float32)
        return step
