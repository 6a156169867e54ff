"""What a model asks of the convolution choices beyond the rules: measured choices from a wisdom
file (engine/lab/wisdom.py writes and checks them) and the accuracy level.

A Model enters ``choice_policy(policy)`` while it loads and plans, as it does its memory budget;
engine/ops/conv2d.py conv2d_for_size reads ``current_policy()`` when it plans a layer with
algorithm="auto". Layers made outside a model (engine.Conv2d, the functional API) see the
default: the rules alone, accuracy "fast".
"""
from __future__ import annotations

import contextlib
import contextvars
from types import MappingProxyType
from typing import Mapping, NamedTuple

ACCURACY_LEVELS = ("fast", "strict")

# The largest error "strict" accepts from an algorithm: max |y - float64 reference| over
# max |reference|, on unit-normal inputs and weights. Measured with engine.compare on the
# layers of bench/bench_conv2d.py (README, "The algorithm lab"): at most 2.8e-6 for the
# GEMM-based and direct algorithms (a 512-channel sum), 5.8e-7 for Winograd F(2x2,3x3), 9.9e-7
# for dilated_s2b, 2.8e-7 for FFT, below 2e-7 for depthwise and separable; Winograd
# F(4x4,3x3) 3.6e-6 to 1.6e-5, above the budget from 64 channels on; F(6x6,3x3) up to 6e-5.
STRICT_MAX_REL_ERROR = 5e-6
# Algorithms whose measured error exceeds STRICT_MAX_REL_ERROR on some measured layer.
STRICT_EXCLUDED = frozenset({"winograd_f43", "winograd_f63"})


WINOGRAD_WEIGHTS = ("auto", "stored", "per_call")


class ChoicePolicy(NamedTuple):
    """accuracy: "fast" (the rules) or "strict" (no algorithm of STRICT_EXCLUDED); wisdom:
    {layer signature: entry} of measured choices (engine/lab/wisdom.py), or empty;
    winograd_weights: "auto" (engine/dispatch/winograd.py decides per layer), or "stored" /
    "per_call" for every Winograd layer of the model."""
    accuracy: str = "fast"
    wisdom: Mapping = MappingProxyType({})
    winograd_weights: str = "auto"

    @property
    def excluded(self) -> frozenset:
        return STRICT_EXCLUDED if self.accuracy == "strict" else frozenset()


DEFAULT_POLICY = ChoicePolicy()
_current = contextvars.ContextVar("engine_choice_policy", default=DEFAULT_POLICY)


def check_winograd_weights(value) -> str:
    if value not in WINOGRAD_WEIGHTS:
        raise ValueError(f"winograd_weights must be one of {', '.join(WINOGRAD_WEIGHTS)}, got "
                         f"{value!r}")
    return value


def check_accuracy(accuracy) -> str:
    if accuracy not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy must be one of {list(ACCURACY_LEVELS)}, got {accuracy!r}")
    return accuracy


@contextlib.contextmanager
def choice_policy(policy: ChoicePolicy):
    token = _current.set(policy)
    try:
        yield policy
    finally:
        _current.reset(token)


def current_policy() -> ChoicePolicy:
    return _current.get()


def conv_signature(weight_shape, stride, pads, dilation, groups, in_size) -> str:
    """The key of a 2-D convolution layer in a wisdom file: its weights' shape, stride,
    padding ((top, bottom), (left, right)), dilation, groups and input size."""
    k, cg, kh, kw = (int(v) for v in weight_shape)
    (pt, pb), (pl, pr) = pads
    return (f"conv2d {cg * groups}->{k} {kh}x{kw} s{stride[0]}x{stride[1]} "
            f"p{pt},{pb},{pl},{pr} d{dilation[0]}x{dilation[1]} g{groups} "
            f"in{in_size[0]}x{in_size[1]}")
