"""Output-size, padding and receptive-field arithmetic: the only place it is computed.

The seed formulas, per spatial axis, with input size i, kernel k, stride s, dilation d and
padding p_begin + p_end:
    effective kernel     k_eff = d*(k - 1) + 1
    convolution output   o = floor((i + p_begin + p_end - k_eff) / s) + 1
    transposed output    o = (i - 1)*s - p_begin - p_end + k_eff + output_padding
"same" padding follows ONNX SAME_UPPER (TensorFlow's rule): the total padding
max((ceil(i/s) - 1)*s + k_eff - i, 0) is split with the odd element at the end. For stride 1
this is also what PyTorch's padding="same" does.
"""
from __future__ import annotations

import operator
from typing import Sequence

__all__ = [
    "ntuple", "effective_kernel", "conv_output_size", "same_padding", "resolve_padding",
    "conv_output_shape", "pool_output_size", "conv_transpose_output_size",
    "transpose_output_padding", "receptive_field",
]


def _as_int(v, name: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an integer or a tuple of integers, got {v!r}") from None


def ntuple(value, n: int, name: str, minimum: int | None = None) -> tuple[int, ...]:
    """An int or a length-n sequence of ints as an n-tuple, checked against ``minimum``."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have {n} values, got {len(value)}: {value!r}")
        out = tuple(_as_int(v, name) for v in value)
    else:
        out = (_as_int(value, name),) * n
    if minimum is not None and any(v < minimum for v in out):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return out


def effective_kernel(k: int, d: int) -> int:
    return d * (k - 1) + 1


def conv_output_size(i: int, k: int, s: int, p_begin: int, p_end: int, d: int) -> int:
    return (i + p_begin + p_end - effective_kernel(k, d)) // s + 1


def same_padding(i: int, k: int, s: int, d: int) -> tuple[int, int]:
    """(begin, end) padding so that the output has ceil(i/s) elements (SAME_UPPER)."""
    out = -(-i // s)
    total = max((out - 1) * s + effective_kernel(k, d) - i, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, in_size: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Per-axis (begin, end) padding from an int, an n-tuple, a 2n-tuple of (begin, end) pairs
    flattened as ONNX orders them (all begins, then all ends), "same" or "valid"."""
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            return tuple(same_padding(i, k, s, d)
                         for i, k, s, d in zip(in_size, kernel, stride, dilation))
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    if isinstance(padding, (list, tuple)) and len(padding) == 2 * n:
        pads = tuple(_as_int(p, "padding") for p in padding)
        pairs = tuple((pads[a], pads[a + n]) for a in range(n))
    else:
        pairs = tuple((p, p) for p in ntuple(padding, n, "padding"))
    if any(p < 0 for pair in pairs for p in pair):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pairs


def conv_output_shape(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      pads: Sequence[tuple[int, int]], dilation: Sequence[int]) -> tuple[int, ...]:
    """Spatial output shape; ValueError if the dilated kernel is larger than the padded input."""
    out = []
    for axis, (i, k, s, (pb, pe), d) in enumerate(zip(in_size, kernel, stride, pads, dilation)):
        if i + pb + pe < effective_kernel(k, d):
            raise ValueError(
                f"kernel size {k} with dilation {d} (effective {effective_kernel(k, d)}) is larger "
                f"than the padded input ({i} + {pb + pe}) along spatial axis {axis}")
        out.append(conv_output_size(i, k, s, pb, pe, d))
    return tuple(out)


def pool_output_size(i: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False) -> int:
    """PyTorch's pooling size: with ceil_mode the last window may hang over the end, but must
    start inside the input or its left padding."""
    span = i + 2 * p - effective_kernel(k, d)
    if ceil_mode:
        o = -(-span // s) + 1
        if (o - 1) * s >= i + p:
            o -= 1
    else:
        o = span // s + 1
    return o


def conv_transpose_output_size(i: int, k: int, s: int, p_begin: int, p_end: int,
                               output_padding: int, d: int) -> int:
    return (i - 1) * s - p_begin - p_end + effective_kernel(k, d) + output_padding


def transpose_output_padding(i: int, k: int, s: int, p_begin: int, p_end: int, d: int,
                             wanted: int, axis: int) -> int:
    """output_padding that makes a transposed convolution produce ``wanted`` elements, as
    PyTorch's ConvTranspose does for ``output_size``; ValueError if none can."""
    smallest = conv_transpose_output_size(i, k, s, p_begin, p_end, 0, d)
    largest = smallest + s - 1
    if not smallest <= wanted <= largest:
        raise ValueError(f"output_size {wanted} along spatial axis {axis} is impossible: "
                         f"this transposed convolution gives {smallest} to {largest}")
    return wanted - smallest


def receptive_field(layers: Sequence[Sequence[int]]) -> tuple[int, int]:
    """Receptive field and jump (input pixels between adjacent outputs) of a stack of layers,
    each given as (kernel, stride) or (kernel, stride, dilation), first layer first:
        rf_l = rf_{l-1} + d_l*(k_l - 1)*jump_{l-1},   jump_l = jump_{l-1}*s_l."""
    rf, jump = 1, 1
    for layer in layers:
        k, s, d = (tuple(layer) + (1,))[:3] if len(layer) == 2 else tuple(layer)
        rf += d * (k - 1) * jump
        jump *= s
    return rf, jump
