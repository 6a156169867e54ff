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

import math
import numbers
import operator
from typing import Sequence

# The kernels index with C int: every size, stride, dilation, padding and padded extent must fit
# it, and is checked here, before any nogil code runs.
INDEX_MAX = 2**31 - 1

__all__ = [
    "ntuple", "effective_kernel", "conv_output_size", "same_padding", "resolve_padding",
    "conv_output_shape", "pool_output_size", "conv_transpose_output_size",
    "conv_transpose_output_shape",
    "transpose_output_padding", "receptive_field", "phase_tiles", "pool_output_shape", "unpool_output_size",
    "unpool_output_shape", "interpolate_output_size", "interpolate_output_shape", "INDEX_MAX", "live_taps", "live_window",
    "live_outputs", "tap_rectangles",
    "check_extent",
]


def _as_int(v, name: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an integer or a tuple of integers, got {v!r}") from None


def ntuple(value, n: int, name: str, minimum: int | None = None) -> tuple[int, ...]:
    """An int or a length-n sequence of ints as an n-tuple, checked against ``minimum`` and
    the kernels' index range."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have {n} values, got {len(value)}: {value!r}")
        out = tuple(_as_int(v, name) for v in value)
    else:
        out = (_as_int(value, name),) * n
    if minimum is not None and any(v < minimum for v in out):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if any(abs(v) > INDEX_MAX for v in out):
        raise ValueError(f"{name} must be at most {INDEX_MAX} in magnitude, got {value!r}")
    return out


def check_extent(in_size: Sequence[int], pads: Sequence[tuple[int, int]], kernel: Sequence[int],
                 dilation: Sequence[int], name: str = "padding") -> None:
    """ValueError naming ``name`` unless every padded input extent and dilated kernel fits the
    kernels' index range (the sums the kernels form from them then fit too)."""
    for axis, (i, (pb, pe), k, d) in enumerate(zip(in_size, pads, kernel, dilation)):
        if i + pb + pe > INDEX_MAX or effective_kernel(k, d) > INDEX_MAX:
            raise ValueError(f"{name}: the padded input ({i} + {pb} + {pe}) or the dilated "
                             f"kernel ({effective_kernel(k, d)}) along spatial axis {axis} "
                             f"exceeds the kernels' index range ({INDEX_MAX})")


def effective_kernel(k: int, d: int) -> int:
    return d * (k - 1) + 1


def input_extent(out: int, k: int, s: int, d: int) -> int:
    """Input pixels (padding included) that ``out`` consecutive outputs read along one axis."""
    return (out - 1) * s + effective_kernel(k, d)


def window_pixels(out_size, kernel, stride, dilation) -> int:
    """Input pixels (padding included) of the window an output plane of ``out_size`` reads."""
    n = 1
    for o, k, s, d in zip(out_size, kernel, stride, dilation):
        n *= input_extent(o, k, s, d)
    return n


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
    if any(p > INDEX_MAX for pair in pairs for p in pair):
        raise ValueError(f"padding must be at most {INDEX_MAX}, got {padding!r}")
    return pairs


def conv_output_shape(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      pads: Sequence[tuple[int, int]], dilation: Sequence[int]) -> tuple[int, ...]:
    """Spatial output shape; ValueError if the dilated kernel is larger than the padded input
    or the padded input exceeds the kernels' index range."""
    check_extent(in_size, pads, kernel, dilation)
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


def pool_output_shape(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int],
                      ceil_mode: bool = False) -> tuple[int, ...]:
    """Spatial output shape of max or average pooling with PyTorch's checks: padding at most
    kernel_size // 2 (whatever the dilation), and at least one output along every axis."""
    check_extent(in_size, [(p, p) for p in padding], kernel, dilation)
    out = []
    for axis, (i, k, s, p, d) in enumerate(zip(in_size, kernel, stride, padding, dilation)):
        if p > k // 2:
            raise ValueError(f"padding must be at most half of kernel_size ({k} // 2 = {k // 2})"
                             f" along spatial axis {axis}, got {p}")
        o = pool_output_size(i, k, s, p, d, ceil_mode)
        if o < 1:
            raise ValueError(
                f"kernel_size {k} with dilation {d} (effective {effective_kernel(k, d)}) is larger"
                f" than the padded input ({i} + 2*{p}) along spatial axis {axis}")
        out.append(o)
    return tuple(out)


def unpool_output_size(i: int, k: int, s: int, p_begin: int, p_end: int | None = None) -> int:
    """Max-unpooling's default size, the input size of a pooling without ceil_mode that gives
    i outputs: (i - 1)*s - p_begin - p_end + k (PyTorch pads both ends alike; ONNX MaxUnpool's
    pads may differ)."""
    return (i - 1) * s - p_begin - (p_begin if p_end is None else p_end) + k


def unpool_output_shape(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], output_size=None) -> tuple[int, ...]:
    """PyTorch's max_unpool output shape: the default above, or ``output_size`` given as the
    spatial sizes or a full (N, C, ...) shape whose trailing sizes count. A pooling with stride s
    maps s consecutive input sizes to one output size, so an explicit size must lie strictly
    within s of the default."""
    n = len(kernel)
    default = tuple(unpool_output_size(i, k, s, p)
                    for i, k, s, p in zip(in_size, kernel, stride, padding))
    if output_size is None:
        for axis, o in enumerate(default):
            if o < 1:
                raise ValueError(f"the unpooled size along spatial axis {axis} would be {o}: "
                                 f"padding is too large for kernel_size and stride")
        return default
    if not isinstance(output_size, (list, tuple)) or len(output_size) not in (n, n + 2):
        raise ValueError(f"output_size must be a sequence of {n} or {n + 2} integers, "
                         f"got {output_size!r}")
    wanted = tuple(_as_int(o, "output_size") for o in output_size[len(output_size) - n:])
    for axis, (o, dflt, s) in enumerate(zip(wanted, default, stride)):
        if not dflt - s < o < dflt + s or o < 1:
            raise ValueError(f"output_size {tuple(output_size)!r} is impossible: along spatial "
                             f"axis {axis} it must be positive and strictly between "
                             f"{dflt - s} and {dflt + s}")
    return wanted


def interpolate_output_size(i: int, scale: float) -> int:
    """PyTorch's size for a scale_factor: floor(i * scale) in double precision."""
    return int(math.floor(float(i) * scale))


def interpolate_output_shape(in_size: Sequence[int], size=None, scale_factor=None
                             ) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """(output shape, scales) for interpolate from exactly one of ``size`` (an int or one per
    axis) and ``scale_factor`` (a number or one per axis). ``scales`` is the per-axis factor when
    one was given, else None: PyTorch samples with 1/scale_factor rather than in/out then."""
    n = len(in_size)
    if (size is None) == (scale_factor is None):
        raise ValueError("exactly one of size and scale_factor must be given, got "
                         f"size={size!r}, scale_factor={scale_factor!r}")
    if size is not None:
        out = ntuple(size, n, "size")
        if any(o < 1 for o in out):
            raise ValueError(f"size must be positive, got {size!r}")
        return out, None
    factors = scale_factor if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * n
    if len(factors) != n:
        raise ValueError(f"scale_factor must have {n} values, got {len(factors)}: "
                         f"{scale_factor!r}")
    scales = []
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not math.isfinite(f) \
                or f <= 0:
            raise ValueError(f"scale_factor must be positive finite numbers, got {scale_factor!r}")
        scales.append(float(f))
    out = tuple(interpolate_output_size(i, f) for i, f in zip(in_size, scales))
    for axis, (i, o) in enumerate(zip(in_size, out)):
        if o < 1:
            raise ValueError(f"scale_factor {scale_factor!r} leaves no output along spatial "
                             f"axis {axis} (input size {i})")
    return out, tuple(scales)


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


def conv_transpose_output_shape(in_size: Sequence[int], kernel: Sequence[int],
                                stride: Sequence[int], pads: Sequence[tuple[int, int]],
                                dilation: Sequence[int], output_padding: Sequence[int],
                                output_size=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(spatial output shape, output_padding used) of a transposed convolution. output_size,
    the spatial sizes or a full (N, C, ...) shape whose trailing sizes count, picks
    output_padding as PyTorch's ConvTranspose modules do and then overrides the one given.
    ValueError for an impossible output_size or an empty output."""
    n = len(kernel)
    if output_size is not None:
        if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
            output_size = (output_size,)
        if not isinstance(output_size, (list, tuple)) or len(output_size) not in (n, n + 2):
            raise ValueError(f"output_size must be {n} spatial sizes or a full {n + 2}-D "
                             f"shape, got {output_size!r}")
        wanted = ntuple(tuple(output_size)[-n:], n, "output_size", minimum=1)
        op = tuple(transpose_output_padding(i, k, s, pb, pe, d, o, axis)
                   for axis, (i, k, s, (pb, pe), d, o)
                   in enumerate(zip(in_size, kernel, stride, pads, dilation, wanted)))
        return wanted, op
    out = tuple(conv_transpose_output_size(i, k, s, pb, pe, o, d)
                for i, k, s, (pb, pe), d, o
                in zip(in_size, kernel, stride, pads, dilation, output_padding))
    for axis, o in enumerate(out):
        if o < 1:
            raise ValueError(f"input size {tuple(in_size)} gives an empty output (size {o} "
                             f"along spatial axis {axis}): the padding is too large for this "
                             f"kernel, stride and dilation")
    return out, tuple(output_padding)


def onnx_auto_pads(auto_pad: str, in_size: Sequence[int], kernel: Sequence[int],
                   stride: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Per-axis (begin, end) padding of ONNX's auto_pad for convolution and pooling:
    SAME_UPPER as same_padding (the odd element at the end), SAME_LOWER the mirror image (the
    odd element at the beginning), VALID none."""
    if auto_pad == "VALID":
        return ((0, 0),) * len(kernel)
    pairs = tuple(same_padding(i, k, s, d) for i, k, s, d in zip(in_size, kernel, stride, dilation))
    if auto_pad == "SAME_LOWER":
        return tuple((e, b) for b, e in pairs)
    if auto_pad == "SAME_UPPER":
        return pairs
    raise ValueError(f"auto_pad must be SAME_UPPER, SAME_LOWER or VALID here, got {auto_pad!r}")


def onnx_resize_output_size(i: int, scale: float) -> int:
    """ONNX Resize's size for a scale, floor(i * scale) with the product in float32, as ONNX
    Runtime computes it (10 * 0.7 gives 7 there, 6 in double precision)."""
    import numpy as np
    return int(np.floor(np.float32(i) * np.float32(scale)))


def onnx_pool_output_size(i: int, k: int, s: int, p_begin: int, p_end: int, d: int = 1,
                          ceil_mode: bool = False) -> int:
    """ONNX pooling size with separate begin and end padding. With ceil_mode the last window
    may hang over the end but must start inside the input or its begin padding (PyTorch's rule,
    which ONNX's reference implementation also applies)."""
    span = i + p_begin + p_end - effective_kernel(k, d)
    if ceil_mode:
        o = -(-span // s) + 1
        if (o - 1) * s >= i + p_begin:
            o -= 1
        return o
    return span // s + 1


def onnx_pool_explicit_pads(in_size: Sequence[int], out_size: Sequence[int],
                            kernel: Sequence[int], stride: Sequence[int],
                            dilation: Sequence[int], pads: Sequence[tuple[int, int]]
                            ) -> tuple[tuple[int, int], ...]:
    """Per-axis (begin, end) padding of the copy an ONNX pool runs on when the PyTorch-style
    layers cannot take its pads: the begin padding as given, the end one extended so that all
    ``out_size`` windows (ceil_mode's last one too) lie inside the copy, which the layers then
    pool unpadded."""
    return tuple((pb, max(pe, (o - 1) * s + effective_kernel(k, d) - i - pb))
                 for i, o, k, s, d, (pb, pe) in zip(in_size, out_size, kernel, stride, dilation,
                                                    pads))


def onnx_transpose_pads(i: int, k: int, s: int, d: int, output_padding: int, out: int,
                        auto_pad: str) -> tuple[int, int]:
    """(begin, end) padding of an ONNX ConvTranspose that must produce ``out`` elements (its
    output_shape attribute, or i*s for SAME_*): the total
    s*(i - 1) + output_padding + k_eff - out is split as the operator spec says, the odd
    element at the end for SAME_UPPER and at the beginning otherwise. A negative total means
    extra output at the end."""
    total = s * (i - 1) + output_padding + effective_kernel(k, d) - out
    if total < 0:
        return 0, total
    if auto_pad == "SAME_UPPER":
        return total // 2, total - total // 2
    return total - total // 2, total // 2


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


def live_taps(i: int, k: int, s: int, p_begin: int, p_end: int, d: int) -> tuple[int, int]:
    """(first, last) taps along one axis that read inside the input for at least one output.
    Tap u reads i_in = o*s - p_begin + u*d for the outputs o < n_out, so it is live when
    u*d - p_begin <= i - 1 and (n_out - 1)*s - p_begin + u*d >= 0: an interval of taps. With
    a dilation past the map only the middle tap may be left (DeepLabV3's ASPP rates)."""
    n_out = conv_output_size(i, k, s, p_begin, p_end, d)
    first = max(0, -(-(p_begin - (n_out - 1) * s) // d))
    last = min(k - 1, (i - 1 + p_begin) // d)
    return first, last


def live_outputs(n_in: int, n_out: int, s: int, p_begin: int, offset: int) -> tuple[int, int]:
    """The outputs o in [lo, hi) whose input o * s - p_begin + offset (the tap at ``offset``,
    u * dilation) lies inside [0, n_in) along one axis; lo == hi when there are none."""
    start = offset - p_begin
    lo = min(n_out, max(0, -(start // s)))                 # ceil(-start / s)
    hi = min(n_out, (n_in - 1 - start) // s + 1) if n_in - 1 - start >= 0 else 0
    return lo, max(lo, hi)


def tap_rectangles(in_size, out_size, kernel, stride, dilation, pads_begin):
    """[(tap index, (oy0, oy1), (ox0, ox1), (iy0, ix0))] for the taps of a kernel that read the
    input, in row-major tap order: outputs [oy0, oy1) x [ox0, ox1) read it under the tap, from
    (iy0, ix0) on (every stride pixels). pads_begin: the top and left padding."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    (h, w), (oh, ow), (pt, pl) = in_size, out_size, pads_begin
    out = []
    for u in range(kh):
        oy0, oy1 = live_outputs(h, oh, sh, pt, u * dh)
        if oy0 == oy1:
            continue
        for v in range(kw):
            ox0, ox1 = live_outputs(w, ow, sw, pl, v * dw)
            if ox0 == ox1:
                continue
            out.append((u * kw + v, (oy0, oy1), (ox0, ox1),
                        (oy0 * sh - pt + u * dh, ox0 * sw - pl + v * dw)))
    return out


def live_window(i: int, k: int, s: int, p_begin: int, p_end: int,
                d: int) -> tuple[int, int, int, int]:
    """(first tap, last tap, begin padding, end padding) of the same convolution along one
    axis with the taps outside live_taps dropped: the padding shrinks by the dropped taps'
    span, so the output keeps its size and values. The whole kernel and padding when no tap is
    live or dropping would need negative padding (no kernel takes it)."""
    first, last = live_taps(i, k, s, p_begin, p_end, d)
    nb, ne = p_begin - first * d, p_end - (k - 1 - last) * d
    if first > last or nb < 0 or ne < 0:
        return 0, k - 1, p_begin, p_end
    return first, last, nb, ne


def phase_tiles(out: int, d: int, m: int) -> list[int]:
    """Winograd tiles of m outputs along one axis for each of the d phases of a rate-d
    convolution: phase a holds ceil((out - a) / d) outputs, hence ceil(that / m) tiles."""
    return [-(-max(0, -(-(out - a) // d)) // m) for a in range(d)]
