"""Activations: their names, the parameters some take, the codes the kernels' output steps apply
(kernels/_vec_act.h), and the same activations as one vector pass over a tensor.

An activation is named by a string: a bare name ("relu", "silu", "leaky_relu") or a name with
its parameters ("leaky_relu(0.1)", "elu(0.5)", "hardsigmoid(0.2,0.5)", "clip(-1,1)"). A bare
name takes PyTorch's defaults. ``canonical`` gives each activation one spelling (clip(0,6) is
relu6), which the graph stores in a fused node's attributes and explain() shows.
"""
from __future__ import annotations

import functools
import math
import re
from typing import NamedTuple

import numpy as np


class _Kind(NamedTuple):
    code: int               # kernels/_vec_act.h CE_ACT_CODE_*
    params: tuple = ()      # parameter names, in the order the spelling gives them
    defaults: tuple = ()


# codes as in kernels/_vec_act.h; parameters: PyTorch's defaults (hardsigmoid is x/6 + 1/2)
KINDS = {
    "relu": _Kind(1), "relu6": _Kind(2), "silu": _Kind(3), "hardswish": _Kind(4),
    "gelu": _Kind(5), "sigmoid": _Kind(6), "tanh": _Kind(7), "gelu_tanh": _Kind(8),
    "softplus": _Kind(9), "mish": _Kind(10),
    "elu": _Kind(11, ("alpha",), (1.0,)),
    "leaky_relu": _Kind(12, ("alpha",), (0.01,)),
    "hardsigmoid": _Kind(13, ("alpha", "beta"), (1 / 6, 0.5)),
    "clip": _Kind(14, ("min", "max"), (-math.inf, math.inf)),
}

# What every kernel's output step does, clamp-only ones included (the NCHW depthwise kernels
# and the float64 direct loop); the rest run there as a vector pass after the kernel.
CLAMP_ACTIVATIONS = (None, "relu", "relu6")

_SPELLING = re.compile(r"^\s*([a-z_0-9]+)\s*(?:\((.*)\))?\s*$")


def _number(v: float) -> str:
    """The shortest spelling of v's float32 value that reads back to it."""
    return np.format_float_positional(np.float32(v), unique=True, trim="-")


class Activation(NamedTuple):
    kind: str
    alpha: float = 0.0
    beta: float = 0.0

    @property
    def code(self) -> int:
        return KINDS[self.kind].code

    @property
    def name(self) -> str:
        if not KINDS[self.kind].params:
            return self.kind
        return f"{self.kind}({_number(self.alpha)},{_number(self.beta)})" \
            if len(KINDS[self.kind].params) == 2 else f"{self.kind}({_number(self.alpha)})"


@functools.lru_cache(maxsize=256)
def parse(activation) -> Activation | None:
    """The Activation a spelling names (None for None); ValueError naming what is wrong."""
    if activation is None:
        return None
    if isinstance(activation, Activation):
        return activation
    m = _SPELLING.match(activation) if isinstance(activation, str) else None
    kind = m.group(1) if m else None
    if kind not in KINDS:
        raise ValueError(f"activation must be None or one of {list(KINDS)} (with parameters "
                         f"as in 'leaky_relu(0.1)'), got {activation!r}")
    spec = KINDS[kind]
    given = [] if m.group(2) is None or not m.group(2).strip() else m.group(2).split(",")
    if len(given) > len(spec.params):
        raise ValueError(f"activation {kind!r} takes {len(spec.params)} parameter(s) "
                         f"{spec.params}, got {activation!r}")
    try:
        values = [float(v) for v in given]
    except ValueError:
        raise ValueError(f"activation parameters must be numbers, got {activation!r}") from None
    values += spec.defaults[len(values):]
    values = [float(np.float32(v)) for v in values]
    if any(math.isnan(v) for v in values) \
            or (kind != "clip" and any(math.isinf(v) for v in values)):
        raise ValueError(f"activation parameters must be finite, got {activation!r}")
    if kind == "clip":
        lo, hi = values
        if lo > hi:
            raise ValueError(f"clip's min must not exceed its max, got {activation!r}")
        if lo == 0 and hi in (6, math.inf):
            return Activation("relu6" if hi == 6 else "relu")
    return Activation(kind, *values)


def canonical(activation) -> str | None:
    """The one spelling of an activation (ValueError if it names none)."""
    act = parse(activation)
    return None if act is None else act.name


def is_activation(activation) -> bool:
    try:
        parse(activation)
    except (ValueError, TypeError):
        return False
    return True


def kernel_act(activation) -> dict:
    """The activation as the kernels take it (ce_act_t of kernels/_vec_act.h)."""
    act = parse(activation)
    if act is None:
        return dict(NO_ACT)
    return {"code": act.code, "alpha": act.alpha, "beta": act.beta}


NO_ACT = {"code": 0, "alpha": 0.0, "beta": 0.0}   # kernel_act(None)


def apply_activation(y: np.ndarray, activation, num_threads: int = 1) -> np.ndarray:
    """The same activations over a whole tensor, in place, for paths without a fused output
    step: the vector kernels for float32 (the values the fused steps give), NumPy for
    float64."""
    act = parse(activation)
    if act is None:
        return y
    if act.kind == "relu":
        np.maximum(y, 0, out=y)
    elif act.kind == "relu6":
        np.clip(y, 0, 6, out=y)
    elif y.dtype == np.float32:
        vector_activation(act.name)(y, y, num_threads)
    else:
        y[...] = float64_activation(act, y)
    return y


def float64_activation(activation, x: np.ndarray) -> np.ndarray:
    """The textbook formula in float64 (the reference the tests measure the kernels against,
    and the float64 paths' activation); None: x as it is."""
    act = parse(activation)
    x = np.asarray(x, np.float64)
    if act is None:
        return x
    a, b = act.alpha, act.beta
    with np.errstate(all="ignore"):
        if act.kind == "relu":
            return np.where(x < 0, 0.0, x)
        if act.kind == "relu6":
            return np.where(x < 0, 0.0, np.where(x > 6, 6.0, x))
        if act.kind == "sigmoid":
            return 1 / (1 + np.exp(-x))
        if act.kind == "silu":
            return x / (1 + np.exp(-x))
        if act.kind == "hardswish":
            return x * np.clip(x / 6 + 0.5, 0, 1)
        if act.kind == "gelu":
            from scipy.special import erfc
            return x * 0.5 * erfc(-x / np.sqrt(2))
        if act.kind == "gelu_tanh":   # x (1 + tanh u) / 2 = x sigmoid(2u): no cancellation
            return x / (1 + np.exp(-2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        if act.kind == "tanh":
            return np.tanh(x)
        if act.kind == "softplus":
            return np.logaddexp(x, 0)
        if act.kind == "mish":
            return x * np.tanh(np.logaddexp(x, 0))
        if act.kind == "elu":
            return np.where(x > 0, x, a * np.expm1(x))
        if act.kind == "leaky_relu":
            return np.where(x < 0, a * x, x)
        if act.kind == "hardsigmoid":
            return np.clip(a * x + b, 0, 1)
        return np.clip(x, a, b)


# Multiply-adds a vector activation costs per element, for threads_for: with exp's polynomial
# and a division, about twenty; a second thread pays from about ten thousand elements.
VECTOR_ACTIVATION_WORK = 20


@functools.lru_cache(maxsize=None)   # one runner per activation: steps call it on every run
def vector_activation(activation: str):
    """run(x, out, num_threads) computing the activation elementwise with
    kernels/activation.pyx: one pass over memory, within a few ulp of the float64 value
    (tests/test_activation_kernels.py states the bounds). ``out`` may be ``x``."""
    from .._kernels import activation as _act
    from .._threads import threads_for
    arg = kernel_act(activation)
    work = _act.f32_activation

    def run(x, out, num_threads=1):
        threads = threads_for(x.size * VECTOR_ACTIVATION_WORK, num_threads)
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if out.flags.c_contiguous:
            work(flat, out.reshape(-1), arg, threads)
        else:
            tmp = np.empty(out.shape, np.float32)
            work(flat, tmp.reshape(-1), arg, threads)
            np.copyto(out, tmp)
    return run
