"""Pooling plans on NCHW float32: max and average pooling, max-unpooling and global pooling.

Semantics are torch.nn.functional's: the same defaults (stride=None means stride=kernel_size),
output sizes (engine.shapes), padding limit (at most kernel_size // 2), ceil_mode windows,
average divisors, and max-pooling indices (the flat position iy*W + ix within each (n, c)
plane, the first maximum on ties, a NaN always wins). Max-unpooling also takes ONNX
MaxUnpool's indices, which count over the whole tensor (``max_unpool2d_onnx``).

ONNX pools these layers cannot run as they are (uneven pads, pads over half the kernel, another
output size) run them unpadded on an explicitly padded copy (engine.shapes.onnx_pool_explicit_pads);
``onnx_avgpool_scale`` turns those averages into ONNX's, and ``onnx_max_indices`` turns
MaxPool2d's indices into ONNX MaxPool's, which count over the whole tensor.
"""
from __future__ import annotations

import numpy as np

from .._kernels import pool as _k
from .._threads import resolve_threads, threads_for
from ..shapes import effective_kernel, ntuple, pool_output_shape, unpool_output_shape
from ._validate import as_float_array, check_out, new_output

__all__ = ["MaxPool2d", "AvgPool2d", "MaxUnpool2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
           "max_unpool2d_onnx", "global_avg_pool2d", "global_max_pool2d", "onnx_avgpool_scale",
           "onnx_max_indices"]


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
    bad = _k.f32_unpool_first_bad_index(i2, plane, step, threads)
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
    _k.f32_max_unpool2d(x2, i2, out.reshape(n * c, plane), step, threads)
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
def onnx_avgpool_scale(in_size, out_size, kernel, stride, pads, count_include_pad) -> np.ndarray:
    """(OH, OW) float32 factors that turn AvgPool2d's averages over whole kernels (the layer
    with count_include_pad, run unpadded on the zero-padded copy) into ONNX AveragePool's:
    kernel area / the number of cells ONNX counts, padding up to the padded input's end with
    count_include_pad, only input cells without. ``pads`` are ONNX's ((top, bottom),
    (left, right)); a window with no cell to count gets inf (its output NaN)."""
    counts = []
    for i_, o_, k, s, (pb, pe) in zip(in_size, out_size, kernel, stride, pads):
        start = np.arange(o_) * s - pb
        lo, hi = (-pb, i_ + pe) if count_include_pad else (0, i_)
        counts.append(np.minimum(start + k, hi) - np.maximum(start, lo))
    area = kernel[0] * kernel[1]
    with np.errstate(divide="ignore"):
        return (area / np.outer(counts[0], counts[1]).astype(np.float64)).astype(np.float32)


def onnx_max_indices(x_shape, padding=None, column_major=False):
    """A function ``convert(indices)`` that rewrites, in place, the indices MaxPool2d.run gives
    for x of ``x_shape`` (N, C, H, W), or for its copy padded by ``padding`` ((top, bottom),
    (left, right)), as ONNX MaxPool's: counted over the whole tensor,
    (n*C + c)*H*W + the position in the unpadded plane, row-major (storage_order 0) or
    column-major (1)."""
    n, c, h, w = x_shape
    plane_base = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    if padding is None and not column_major:
        def convert(ind):
            np.add(ind, plane_base, out=ind)
        return convert
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
    return convert


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


def global_avg_pool2d(x):
    """Mean over each (n, c) plane, shape (N, C, 1, 1) (sums in float64)."""
    x = _nchw(x)
    n, c, h, w = x.shape
    out = np.empty((n, c, 1, 1), np.float32)
    _k.f32_global_avgpool(x.reshape(n * c, h * w), out.reshape(n * c),
                          _threads(x.size, None))
    return out


def global_max_pool2d(x):
    """Maximum over each (n, c) plane, shape (N, C, 1, 1); a NaN wins, as in max_pool2d."""
    x = _nchw(x)
    n, c, h, w = x.shape
    out = np.empty((n, c, 1, 1), np.float32)
    _k.f32_global_maxpool(x.reshape(n * c, h * w), out.reshape(n * c),
                          _threads(x.size, None))
    return out
