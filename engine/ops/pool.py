"""Pooling plans on NCHW float32: max and average pooling, max-unpooling and global pooling.

Semantics are torch.nn.functional's: the same defaults (stride=None means stride=kernel_size),
output sizes (engine.shapes), padding limit (at most kernel_size // 2), ceil_mode windows,
average divisors, and max-pooling indices (the flat position iy*W + ix within each (n, c)
plane, the first maximum on ties, a NaN always wins). Max-unpooling also takes ONNX
MaxUnpool's indices, which count over the whole tensor (``max_unpool2d_onnx``).

ONNX pools these layers cannot run as they are (uneven pads, pads over half the kernel, another
output size) run them unpadded on an explicitly padded copy (engine.shapes.onnx_pool_explicit_pads);
``onnx_avgpool_scale`` turns those averages into ONNX's, and ``onnx_max_indices`` turns
MaxPool2d's indices into ONNX MaxPool's, which count over the whole tensor. ONNX pools the
kernels cannot take at all (3-D, dilated averages, Lp pooling) run in NumPy: ``OnnxWindowPool``.
"""
from __future__ import annotations

import numpy as np

from .._kernels import pool as _k
from .._kernels import unpool as _unpool_k
from .._threads import resolve_threads, threads_for
from ..shapes import (effective_kernel, ntuple, onnx_pool_explicit_pads, pool_output_shape,
                      unpool_output_shape)
from ._validate import as_float_array, check_out, new_output

__all__ = ["MaxPool2d", "AvgPool2d", "MaxUnpool2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
           "max_unpool2d_onnx", "global_avg_pool2d", "global_max_pool2d", "global_lp_pool",
           "onnx_avgpool_divisor", "onnx_avgpool_scale", "onnx_max_indices", "OnnxWindowPool"]


def _window(kernel_size, stride, padding, dilation=1):
    kernel = ntuple(kernel_size, 2, "kernel_size", minimum=1)
    # torch treats an empty stride like None
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    else:
        stride = ntuple(stride, 2, "stride", minimum=1)
    return kernel, stride, ntuple(padding, 2, "padding", minimum=0), \
        ntuple(dilation, 2, "dilation", minimum=1)


def _nchw(x, name: str = "x") -> np.ndarray:
    x = as_float_array(x, name, 4)
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name} must have non-empty spatial dimensions, got shape {x.shape}")
    return x


def _planes(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) as (N*C, H, W); spelled out so that N*C == 0 works too."""
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


def _threads(work: float, num_threads) -> int:
    return threads_for(work, resolve_threads(num_threads))


class _Pool2d:
    """What max and average pooling share: the window, its checks and the output shape."""

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode, num_threads):
        self.kernel_size, self.stride, self.padding, self.dilation = _window(
            kernel_size, stride, padding, dilation)
        self.ceil_mode = bool(ceil_mode)
        self.num_threads = num_threads
        # The padding limit does not depend on the input: fail at construction. An input as
        # large as the dilated kernel always has an output, so only that limit can fail here.
        reach = tuple(map(effective_kernel, self.kernel_size, self.dilation))
        pool_output_shape(reach, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode)

    def output_shape(self, input_shape) -> tuple[int, int, int, int]:
        n, c, h, w = input_shape
        try:
            oh, ow = pool_output_shape((h, w), self.kernel_size, self.stride, self.padding,
                                       self.dilation, self.ceil_mode)
        except ValueError as e:
            raise ValueError(f"x: {e}") from None
        return (n, c, oh, ow)

    def _work(self, out_shape) -> float:
        n, c, oh, ow = out_shape
        return n * c * oh * ow * self.kernel_size[0] * self.kernel_size[1]


class MaxPool2d(_Pool2d):
    """torch.nn.functional.max_pool2d, planned once; ``return_indices`` adds int64 indices."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False, *, num_threads=None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, num_threads)
        self.return_indices = bool(return_indices)

    def __call__(self, x, out=None):
        x = _nchw(x)
        shape = self.output_shape(x.shape)
        out = new_output(shape, np.float32, self, x.shape) if out is None else \
            check_out(out, shape)
        indices = np.empty(shape, np.int64) if self.return_indices else None
        self.run(x, out, indices)
        return (out, indices) if self.return_indices else out

    def run(self, x, out, indices=None, num_threads=None) -> None:
        """Checked arrays in (x float32 NCHW, out and indices of output_shape), no validation."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        _k.f32_maxpool2d(_planes(x), _planes(out),
                         None if indices is None else _planes(indices),
                         kh, kw, sh, sw, ph, pw, dh, dw,
                         _threads(self._work(out.shape), num_threads or self.num_threads))

    def __repr__(self):
        return (f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode})")


class AvgPool2d(_Pool2d):
    """torch.nn.functional.avg_pool2d, planned once."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, *, num_threads=None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, num_threads)
        self.count_include_pad = bool(count_include_pad)

    def __call__(self, x, out=None):
        x = _nchw(x)
        shape = self.output_shape(x.shape)
        out = new_output(shape, np.float32, self, x.shape) if out is None else \
            check_out(out, shape)
        self.run(x, out)
        return out

    def run(self, x, out, num_threads=None) -> None:
        """Checked arrays in, no validation."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        _k.f32_avgpool2d(_planes(x), _planes(out), kh, kw, sh, sw, ph, pw,
                         self.count_include_pad,
                         _threads(self._work(out.shape), num_threads or self.num_threads))

    def __repr__(self):
        return (f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad})")


# -- max-unpooling ------------------------------------------------------------------------------
def _unpool_indices(indices, x: np.ndarray) -> np.ndarray:
    if not isinstance(indices, np.ndarray):
        indices = np.asarray(indices)
    if not (np.issubdtype(indices.dtype, np.integer) and indices.dtype != np.uint64):
        raise ValueError(f"indices must be an integer array (int64, as max_pool2d returns), got "
                         f"dtype {indices.dtype}")
    if indices.shape != x.shape:
        raise ValueError(f"indices must have the shape of x {x.shape}, got {indices.shape}")
    return np.ascontiguousarray(indices, dtype=np.int64)


def _unpool(x, indices, out_hw, plane_step_is_plane: bool, num_threads) -> np.ndarray:
    """Shared by both index conventions: validate every index, then zero-fill and scatter."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    plane = oh * ow
    step = plane if plane_step_is_plane else 0
    x2 = x.reshape(n * c, h * w)
    i2 = indices.reshape(n * c, h * w)
    threads = _threads(n * c * (plane + h * w), num_threads)
    bad = _unpool_k.f32_unpool_first_bad_index(i2, plane, step, threads)
    if bad >= 0:
        at = np.unravel_index(bad, x.shape)
        value = int(indices.reshape(-1)[bad])
        if step:
            p = bad // (h * w)
            raise ValueError(
                f"indices must count over the whole (N, C, {oh}, {ow}) output and stay in their "
                f"own (n, c) plane, so [{p * plane}, {(p + 1) * plane}) at index "
                f"{tuple(int(i) for i in at)}; got {value}")
        raise ValueError(f"indices must lie in [0, {plane}) (positions in a {oh}x{ow} output "
                         f"plane), got {value} at index {tuple(int(i) for i in at)}")
    out = np.empty((n, c, oh, ow), np.float32)
    _unpool_k.f32_max_unpool2d(x2, i2, out.reshape(n * c, plane), step, threads)
    return out


class MaxUnpool2d:
    """torch.nn.functional.max_unpool2d, planned once: out is zero except that x[n, c, i, j]
    goes to the flat position indices[n, c, i, j] of plane (n, c)."""

    def __init__(self, kernel_size, stride=None, padding=0, *, num_threads=None):
        self.kernel_size, self.stride, self.padding, _ = _window(kernel_size, stride, padding)
        self.num_threads = num_threads

    def output_shape(self, input_shape, output_size=None) -> tuple[int, int, int, int]:
        n, c, h, w = input_shape
        oh, ow = unpool_output_shape((h, w), self.kernel_size, self.stride, self.padding,
                                     output_size)
        return (n, c, oh, ow)

    def __call__(self, x, indices, output_size=None):
        x = _nchw(x)
        indices = _unpool_indices(indices, x)
        shape = self.output_shape(x.shape, output_size)
        return _unpool(x, indices, shape[2:], False, self.num_threads)

    def __repr__(self):
        return (f"MaxUnpool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")


def max_unpool2d_onnx(x, indices, output_shape, num_threads=None) -> np.ndarray:
    """ONNX MaxUnpool for 4-D input: ``indices`` count over the whole output tensor
    ((n*C + c)*H*W + iy*W + ix, as ONNX MaxPool returns them). ``output_shape`` is the full
    (N, C, H, W), or just (H, W); the graph runner computes it from the node's output_shape
    input or from kernel_shape, strides and pads (engine.shapes.unpool_output_size).

    Unlike ONNX Runtime, an index that points into another (n, c) plane is refused
    (ValueError): MaxPool never produces one, and the planes are filled in parallel."""
    x = _nchw(x)
    indices = _unpool_indices(indices, x)
    if not isinstance(output_shape, (list, tuple, np.ndarray)) or len(output_shape) not in (2, 4):
        raise ValueError(f"output_shape must be (N, C, H, W) or (H, W), got {output_shape!r}")
    shape = tuple(int(v) for v in output_shape)
    if len(shape) == 4 and shape[:2] != x.shape[:2]:
        raise ValueError(f"output_shape must keep x's batch and channels {x.shape[:2]}, "
                         f"got {shape}")
    oh, ow = shape[-2:]
    if oh < 1 or ow < 1:
        raise ValueError(f"output_shape must be positive, got {shape}")
    return _unpool(x, indices, (oh, ow), True, num_threads)


# -- ONNX pooling on an explicitly padded copy --------------------------------------------------
def onnx_avgpool_divisor(in_size, out_size, kernel, stride, dilation, pads,
                         count_include_pad) -> np.ndarray:
    """float64 array of ``out_size``: the number of cells ONNX AveragePool (as ONNX Runtime
    computes it) divides each window's sum by. A tap o*s - pb + u*d counts if it lies inside
    the padded input [-pb, i + pe) with count_include_pad, inside the input [0, i) without;
    ceil_mode's taps past the padded end never count. Windows are products of per-axis tap
    sets, so the count is the outer product of per-axis counts. ``pads`` are (begin, end)
    pairs per axis."""
    total = np.ones((), np.float64)
    for i, o, k, s, d, (pb, pe) in zip(in_size, out_size, kernel, stride, dilation, pads):
        start = np.arange(o, dtype=np.int64) * s - pb
        lo, hi = (-pb, i + pe) if count_include_pad else (0, i)
        # taps u with lo <= start + u*d < hi: ceil((lo - start)/d) <= u < ceil((hi - start)/d)
        first = np.clip(-((start - lo) // d), 0, k)
        stop = np.clip(-((start - hi) // d), 0, k)
        total = np.multiply.outer(total, np.maximum(stop - first, 0))
    return total


def onnx_avgpool_scale(in_size, out_size, kernel, stride, pads, count_include_pad) -> np.ndarray:
    """(OH, OW) float32 factors that turn AvgPool2d's averages over whole kernels (the layer
    with count_include_pad, run unpadded on the zero-padded copy) into ONNX AveragePool's:
    kernel area / onnx_avgpool_divisor. ``pads`` are ONNX's ((top, bottom), (left, right)).
    A window with no cell to count gets 0, as in ONNX Runtime (only a dilated window can
    skip over the whole input, and AvgPool2d has no dilation)."""
    divisor = onnx_avgpool_divisor(in_size, out_size, kernel, stride, (1,) * len(kernel), pads,
                                   count_include_pad)
    area = float(np.prod(kernel))
    with np.errstate(divide="ignore"):
        return np.where(divisor > 0, area / divisor, 0.0).astype(np.float32)


def onnx_max_indices(x_shape, padding=None, column_major=False, empty=None):
    """A function ``convert(indices)`` that rewrites, in place, the indices MaxPool2d.run gives
    for x of ``x_shape`` (N, C, H, W), or for its copy padded by ``padding`` ((top, bottom),
    (left, right)), as ONNX MaxPool's: counted over the whole tensor,
    (n*C + c)*H*W + the position in the unpadded plane, row-major (storage_order 0) or
    column-major (1). ``empty``, a boolean (OH, OW) mask of the windows whose taps all miss
    the input (only a dilated window can), gives those -1, as OnnxWindowPool does: the
    kernel's position for them lies outside the plane."""
    n, c, h, w = x_shape
    plane_base = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    if padding is None and not column_major:
        def convert(ind):
            np.add(ind, plane_base, out=ind)
    else:
        (top, _), (left, right) = padding if padding is not None else ((0, 0), (0, 0))
        row_w = w + left + right

        def convert(ind):
            r, q = np.divmod(ind, row_w)
            r -= top
            q -= left
            if column_major:
                np.multiply(q, h, out=ind)
                ind += r
            else:
                np.multiply(r, w, out=ind)
                ind += q
            ind += plane_base
    if empty is None or not empty.any():
        return convert
    plain = convert

    def convert(ind):
        plain(ind)
        np.copyto(ind, -1, where=empty)
    return convert


class OnnxWindowPool:
    """ONNX MaxPool (and its Indices), AveragePool or LpPool for one input shape
    (N, C, *spatial), any number of spatial axes, in NumPy: what the 2-D kernels cannot run
    (3-D pools, dilated averages, Lp pooling).

    The input is copied once with its pads and the ceil_mode overhang (-inf for max, zero
    otherwise; Lp pools |x|**p). A window is the product of per-axis tap sets, so it is reduced
    one axis at a time, last axis first: along an axis, tap u of every output is one strided
    view, and k views are combined (maximum or sum), shrinking that axis to the output size.
    Python loops only over the taps of each axis, never over outputs; NumPy runs on one thread,
    so the result cannot depend on a thread count.

    ``mode`` is "max", "avg" or "lp"; ``pads`` (begin, end) per axis; averages divide by
    onnx_avgpool_divisor (0 where a window counts no cell, as ONNX Runtime gives). Max follows
    the 2-D kernel (and PyTorch): in the window's row-major order the first maximum wins ties
    and a NaN always takes over (so the last NaN wins); a window whose taps all miss the input
    (a dilated one can) gives -inf and index -1. Indices count over the whole tensor,
    row-major or, with ``column_major`` (storage_order 1), column-major within each plane, as
    ONNX Runtime numbers them."""

    def __init__(self, mode, x_shape, out_size, kernel, stride, dilation, pads, *,
                 count_include_pad=False, p=2.0, column_major=False):
        if mode not in ("max", "avg", "lp"):
            raise ValueError(f"mode must be 'max', 'avg' or 'lp', got {mode!r}")
        self.mode = mode
        self.x_shape = tuple(x_shape)
        spatial = self.x_shape[2:]
        self.out_shape = self.x_shape[:2] + tuple(out_size)
        self.p = float(p)
        self.column_major = bool(column_major)
        self.nd = len(spatial)
        explicit = onnx_pool_explicit_pads(spatial, out_size, kernel, stride, dilation, pads)
        self.widths = ((0, 0), (0, 0)) + explicit
        # (array axis, the view of each tap along it), last spatial axis first
        self.passes = [(2 + a, [slice(u * d, u * d + (o - 1) * s + 1, s) for u in range(k)])
                       for a, (o, k, s, d) in reversed(list(enumerate(
                           zip(out_size, kernel, stride, dilation))))]
        # first input position of each output's window, per axis (for the indices)
        self.starts = [np.arange(o, dtype=np.int64) * s - pb
                       for o, s, (pb, _) in zip(out_size, stride, pads)]
        self.dilation = tuple(dilation)
        # which cells of the padded copy are input, one boolean plane shared by all (n, c)
        self.real = np.pad(np.ones(spatial, bool), explicit).reshape((1, 1) + tuple(
            i + pb + pe for i, (pb, pe) in zip(spatial, explicit)))
        self.divisor = None
        if mode == "avg":
            divisor = onnx_avgpool_divisor(spatial, out_size, kernel, stride, dilation, pads,
                                           count_include_pad)
            # a window that counts nothing has a zero sum: divide by 1 to give ONNX Runtime's 0
            self.divisor = np.maximum(divisor, 1).astype(np.float32).reshape(
                (1, 1) + tuple(out_size))

    def _padded(self, x):
        if self.mode == "max":
            return np.pad(x, self.widths, constant_values=-np.inf)
        if self.mode == "lp":
            x = np.abs(x)
            np.power(x, np.float32(self.p), out=x)
        return np.pad(x, self.widths)

    def run(self, x, out, indices=None, num_threads=None) -> None:
        """x float32 of x_shape, out float32 (and indices int64) of out_shape; no validation."""
        cur = self._padded(x)
        if indices is not None:
            self._max_with_taps(cur, out, indices)
            return
        combine = np.maximum if self.mode == "max" else np.add
        for n, (axis, taps) in enumerate(self.passes):
            def tap(u):
                return cur[(slice(None),) * axis + (taps[u],)]
            acc = out if n == len(self.passes) - 1 else np.empty_like(tap(0))
            np.copyto(acc, tap(0))
            for u in range(1, len(taps)):
                combine(acc, tap(u), out=acc)
            cur = acc
        if self.mode == "avg":
            np.divide(out, self.divisor, out=out)
        elif self.mode == "lp" and self.p != 1.0:
            np.power(out, np.float32(1.0 / self.p), out=out)

    def _max_with_taps(self, cur, out, indices) -> None:
        """Max pooling that also tracks, per output, the winning tap along every axis: a tap
        takes over when it is an input cell (padding never beats one, even -inf) and is
        greater, or NaN, or the first input cell seen."""
        real = self.real
        won = []                    # winning tap per axis reduced so far, last axis first
        for n, (axis, taps) in enumerate(self.passes):
            def at(a, u):
                return a[(slice(None),) * axis + (taps[u],)]
            best = out if n == len(self.passes) - 1 else np.empty_like(at(cur, 0))
            np.copyto(best, at(cur, 0))
            seen = at(real, 0).copy()
            tap = np.zeros(best.shape, np.int32)
            carried = [at(w, 0).copy() for w in won]
            for u in range(1, len(taps)):
                v, r = at(cur, u), at(real, u)
                take = (v > best) | np.isnan(v)
                take |= ~seen
                take &= r
                np.copyto(best, v, where=take)
                tap[take] = u
                for c, w in zip(carried, won):
                    np.copyto(c, at(w, u), where=take)
                seen |= r
            cur, real = best, seen
            won = [tap] + carried
        # won[a] is now spatial axis a's winning tap: its input position, then the flat index
        spatial = self.x_shape[2:]
        order = range(self.nd) if self.column_major else reversed(range(self.nd))
        step, steps = 1, [0] * self.nd
        for a in order:
            steps[a] = step
            step *= spatial[a]
        shape = (1, 1) + (1,) * self.nd
        planes = np.arange(self.x_shape[0] * self.x_shape[1], dtype=np.int64) * step
        np.copyto(indices, planes.reshape(self.x_shape[:2] + (1,) * self.nd))
        for a in range(self.nd):
            view = list(shape)
            view[2 + a] = -1
            indices += won[a].astype(np.int64) * (self.dilation[a] * steps[a])
            indices += (self.starts[a] * steps[a]).reshape(view)
        np.copyto(indices, -1, where=~real)


def global_lp_pool(x, p) -> np.ndarray:
    """ONNX GlobalLpPool: (sum of |x|**p over each (n, c) plane)**(1/p), shape (N, C, 1, ...)
    (sums in float64); ``x`` float32 of rank >= 3."""
    n, c = x.shape[:2]
    a = np.abs(x.reshape(n, c, -1), dtype=np.float64)
    total = np.power(a, float(p)).sum(axis=2)
    return np.power(total, 1.0 / float(p)).astype(np.float32).reshape(
        (n, c) + (1,) * (x.ndim - 2))


# -- functional forms ---------------------------------------------------------------------------
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """torch.nn.functional.max_pool2d on NCHW float32; indices are int64, the flat position
    iy*W + ix of each maximum within its (n, c) plane."""
    return MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode, return_indices)(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """torch.nn.functional.avg_pool2d on NCHW float32 (divisor_override is not supported)."""
    return AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad)(x)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """torch.nn.functional.max_unpool2d on NCHW float32 with the indices max_pool2d returns.
    output_size: (H, W) or (N, C, H, W), within one stride of (H_in - 1)*stride - 2*padding
    + kernel_size."""
    return MaxUnpool2d(kernel_size, stride, padding)(x, indices, output_size)


def global_avg_pool2d(x, out=None, num_threads=None):
    """Mean over each (n, c) plane, shape (N, C, 1, 1) (sums in float64), into ``out`` if
    given (float32, C-contiguous, that shape)."""
    x = _nchw(x)
    n, c, h, w = x.shape
    if out is None:
        out = np.empty((n, c, 1, 1), np.float32)
    elif out.shape != (n, c, 1, 1) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, c, 1, 1)}, "
                         f"got {out.dtype} {out.shape}")
    _k.f32_global_avgpool(x.reshape(n * c, h * w), out.reshape(n * c),
                          _threads(x.size, num_threads))
    return out


def global_max_pool2d(x):
    """Maximum over each (n, c) plane, shape (N, C, 1, 1); a NaN wins, as in max_pool2d."""
    x = _nchw(x)
    n, c, h, w = x.shape
    out = np.empty((n, c, 1, 1), np.float32)
    _k.f32_global_maxpool(x.reshape(n * c, h * w), out.reshape(n * c),
                          _threads(x.size, None))
    return out
