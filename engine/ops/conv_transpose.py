"""The planned transposed convolution (torch's ConvTranspose1d/2d): validate, choose and
transform weights once, run many times.

A transposed convolution is the backward-data pass of a convolution: every input pixel,
times the kernel, is scattered into the output. Two algorithms run it:

- ``col2im``: one GEMM per image, group and block of output channels gives every
  input-pixel-times-kernel product (W_g^T @ x_g), and col2im scatter-adds them into the output
  (kernels/conv_transpose.pyx). It does exactly the useful multiplications.
- ``zero_insert``: the equivalent ordinary convolution: insert stride-1 zeros between input
  pixels, pad by dilation*(k - 1) - padding, and convolve with the spatially flipped,
  in/out-swapped kernel (an engine.Conv2d, so every 2-D algorithm applies). For stride s it
  multiplies s*s times more often than col2im, mostly by the inserted zeros.

ONNX ConvTranspose allows pads these layers cannot take (negative ones, which cut the output,
or an output_shape beyond the layer's reach): ``ConvTransposeWindow`` runs the unpadded layer
and copies out the window ONNX asks for.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._cache import ShapeCache
from ..dispatch.transposed import (TRANSPOSE_ALGORITHMS, choose_conv_transpose2d,
                                   conv_transpose_estimated_ms, why_not_conv_transpose2d)
from .._kernels import conv_transpose as _ct
from .._threads import resolve_threads, threads_for
from ..shapes import conv_transpose_output_shape, effective_kernel, ntuple, resolve_padding
from . import packed_gemm
from ._validate import as_float_array, check_out, new_output
from .activation import canonical, kernel_act
from .conv2d import Conv2d
from .workspace import workspace

# Bound on one thread's column buffer (rows of W_g^T @ x_g awaiting col2im): large enough for
# efficient GEMMs, small enough to stay in L2 next to the output planes being accumulated.
COL2IM_CHUNK_BYTES = 1 << 20
# Rows of W_g^T (output channels x kernel taps) one work item multiplies at a time. Each item
# packs the whole input of its group for its GEMM, so blocks of few rows pay that packing too
# often: on convT4x4_s2_c64_56 at one thread, blocks of 16/32/64/128/256/512 rows took about
# 2.9/2.3/1.85/1.64/1.6/1.7 ms. 128 is as fast as 256 and leaves 4 work items there for threads.
COL2IM_BLOCK_ROWS = 128


class Geometry(NamedTuple):
    """Everything about one input shape (and requested output size) that the kernels need."""
    batch: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    output_padding: tuple[int, ...]
    macs: int


def check_output_padding(output_padding, stride, dilation, n):
    """torch's rule: along each axis output_padding < stride or output_padding < dilation.
    output_padding only tells which of the input sizes that a strided (or dilated) convolution
    maps to the same output size to restore; larger values would invent output."""
    op = ntuple(output_padding, n, "output_padding", minimum=0)
    for axis, (o, s, d) in enumerate(zip(op, stride, dilation)):
        if not (o < s or o < d):
            raise ValueError(f"output_padding must be smaller than stride or dilation along "
                             f"every axis, got output_padding={op}, stride={tuple(stride)}, "
                             f"dilation={tuple(dilation)} (spatial axis {axis})")
    return op


def transpose_geometry(in_size, kernel, stride, pads, dilation, output_padding, output_size):
    """engine.shapes.conv_transpose_output_shape, with size errors blamed on x unless they
    come from output_size."""
    try:
        return conv_transpose_output_shape(in_size, kernel, stride, pads, dilation,
                                           output_padding, output_size)
    except ValueError as e:
        if output_size is None:
            raise ValueError(f"x: {e}") from None
        raise  # the message already names output_size


def resolve_transpose_padding(padding, n):
    """int, n-tuple or 2n-tuple (all begins, then all ends, as ONNX orders pads) -> pairs.
    Strings are refused: a transposed convolution has no 'same' in torch."""
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for a transposed convolution, "
                         f"got {padding!r}")
    return resolve_padding(padding, (1,) * n, (1,) * n, (1,) * n, (1,) * n)


def bilinear_upsample_kernel(factor, channels):
    """FCN's fixed bilinear upsampling kernel, weight (channels, 1, k, k) with k = 2f - f % 2,
    for a depthwise transposed convolution (groups=channels) with stride f and padding
    ceil((f - 1) / 2). That layer maps H x W to fH x fW and, away from the border, equals
    bilinear interpolation with half-pixel centres (interpolate(align_corners=False)).

    The taps are the 1-D tent 1 - |i - c| / f along both axes, centred at c = f - 1 for odd f
    (odd k) and c = f - 1/2 for even f: each output then takes its two nearest input pixels
    with the linear weights of its half-pixel position.
    """
    factor = ntuple(factor, 1, "factor", minimum=1)[0]
    channels = ntuple(channels, 1, "channels", minimum=1)[0]
    k = 2 * factor - factor % 2
    centre = factor - 1 if factor % 2 else factor - 0.5
    tent = 1 - np.abs(np.arange(k) - centre) / factor
    kernel = np.outer(tent, tent).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(kernel, (channels, 1, k, k)))


class ConvTranspose2d:
    """A 2-D transposed convolution planned once (torch.nn.ConvTranspose2d semantics).

    weight: (in_channels, out_channels // groups, kh, kw) as torch stores it; bias:
    (out_channels,) or None. stride, padding, output_padding, groups and dilation follow
    torch.nn.functional.conv_transpose2d; padding may also be a 4-tuple
    (top, left, bottom, right) as ONNX orders pads. activation: None or a name of
    engine/ops/activation.py, applied with the bias in the output step. algorithm: "auto",
    "col2im" or "zero_insert".

    Call as ``layer(x, output_size=None, out=None)``; output_size, (H, W) or a full NCHW
    shape, picks output_padding as torch's ConvTranspose2d does and overrides the
    output_padding given here. Float64 input is computed in float32.
    """

    ndim = 2

    def __init__(self, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                 dilation=1, activation=None, algorithm="auto", *, num_threads=None):
        n = self.ndim
        w = as_float_array(weight, "weight", 2 + n, dtype=np.float32)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        groups = int(groups)
        if min(w.shape) < 1:
            raise ValueError(f"weight must have no empty dimension, got shape {w.shape}")
        c_in, kg = w.shape[:2]
        if c_in % groups:
            raise ValueError(f"in_channels ({c_in}, weight.shape[0]) must be divisible by "
                             f"groups ({groups})")
        self.stride = ntuple(stride, n, "stride", minimum=1)
        self.dilation = ntuple(dilation, n, "dilation", minimum=1)
        self.padding = padding
        self.pads = resolve_transpose_padding(padding, n)
        self.output_padding = check_output_padding(output_padding, self.stride,
                                                   self.dilation, n)
        self.groups = groups
        self.in_channels = c_in
        self.out_channels = kg * groups
        self.kernel_size = tuple(w.shape[2:])
        self.activation = canonical(activation)
        self.act = kernel_act(activation)
        self.weight = w
        if bias is not None:
            b = as_float_array(bias, "bias", 1)
            if b.shape != (self.out_channels,):
                raise ValueError(f"bias must have shape ({self.out_channels},) (weight.shape[1] "
                                 f"* groups), got {b.shape}")
            self.bias = b
        else:
            self.bias = None
        self.num_threads = num_threads
        if algorithm == "auto":
            self.algorithm, self.reason = choose_conv_transpose2d(self.stride)
        else:
            reason = why_not_conv_transpose2d(algorithm)
            if reason is not None:
                raise ValueError(f"algorithm={algorithm!r} cannot run a transposed "
                                 f"convolution: {reason}")
            self.algorithm, self.reason = algorithm, "forced by the caller"
        self._impl = (Col2im if self.algorithm == "col2im" else ZeroInsert)(self)
        self._geometries = ShapeCache(64)

    # -- per-shape set-up -------------------------------------------------------------------
    def geometry(self, input_shape, output_size=None) -> Geometry:
        size_key = tuple(output_size) if isinstance(output_size, list) else output_size
        key = (tuple(input_shape), size_key)
        try:
            hash(key)
        except TypeError:  # an unhashable output_size: checked (and refused) below
            return self._geometry(input_shape, output_size)
        return self._geometries.get(key, lambda: self._geometry(input_shape, output_size))

    def _geometry(self, shape, output_size) -> Geometry:
        in_size = tuple(shape[2:])
        out_size, op = transpose_geometry(in_size, self.kernel_size, self.stride, self.pads,
                                          self.dilation, self.output_padding, output_size)
        macs = (shape[0] * self.in_channels * int(np.prod(in_size))
                * (self.out_channels // self.groups) * int(np.prod(self.kernel_size)))
        return Geometry(shape[0], in_size, out_size, self.pads, op, macs)

    def output_shape(self, input_shape, output_size=None) -> tuple[int, ...]:
        g = self.geometry(input_shape, output_size)
        return (g.batch, self.out_channels) + g.out_size

    # -- running ------------------------------------------------------------------------------
    def check_input(self, x) -> np.ndarray:
        x = as_float_array(x, "x", 2 + self.ndim)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (weight.shape[0]), got "
                             f"shape {x.shape}")
        if min(x.shape) < 1:
            raise ValueError(f"x must have no empty dimension, got shape {x.shape}")
        return x

    def __call__(self, x, output_size=None, out=None):
        x = self.check_input(x)
        g = self.geometry(x.shape, output_size)
        shape = (g.batch, self.out_channels) + g.out_size
        if out is None:
            out = new_output(shape, np.float32, self, x.shape)
        else:
            check_out(out, shape)
        self.run(x, out, g)
        return out

    def run(self, x: np.ndarray, out: np.ndarray, g: Geometry, num_threads=None) -> None:
        """Checked arrays in, no validation: for callers that did it once."""
        threads = threads_for(g.macs, resolve_threads(num_threads or self.num_threads))
        self._impl.run(x, out, g, threads)

    # -- reporting ----------------------------------------------------------------------------
    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}->{self.out_channels}, "
                f"kernel={'x'.join(map(str, self.kernel_size))}, stride={self.stride}, "
                f"padding={self.padding!r}, output_padding={self.output_padding}, "
                f"dilation={self.dilation}, groups={self.groups}, "
                f"activation={self.activation!r}, algorithm={self.algorithm!r})")

    def estimated_ms(self, algorithm: str, in_size=None) -> float:
        """Rough time on one core (engine.dispatch.transposed), for a 56x56 input if no size
        is given."""
        return conv_transpose_estimated_ms(algorithm, self.in_channels, self.out_channels,
                                           self.groups, self.kernel_size, self.stride,
                                           in_size or (56,) * self.ndim)

    def explain(self) -> str:
        side = "x".join(["56"] * self.ndim)
        lines = [repr(self), f"algorithm: {self.algorithm} ({self.reason})",
                 f"candidates (estimated ms on one core, for a {side} input):"]
        for name in sorted(TRANSPOSE_ALGORITHMS, key=self.estimated_ms):
            mark = "*" if name == self.algorithm else " "
            lines.append(f"  {mark} {name:<14} {self.estimated_ms(name):9.3f}")
        if self.algorithm == "zero_insert":
            lines.append("inner convolution: " + self._impl.conv.explain().replace("\n", "\n  "))
        return "\n".join(lines)


class Col2im:
    """GEMM + col2im (kernels/conv_transpose.pyx): W_g^T packed once per block of output
    channels for the packed GEMM micro-kernel."""

    def __init__(self, layer):
        self.layer = layer
        groups, cg = layer.groups, layer.in_channels // layer.groups
        kg = layer.out_channels // groups
        kk = int(np.prod(layer.kernel_size))
        self.kk = kk
        # Output-channel blocks depend on the weight's shape only, never on the thread count.
        block = min(kg, max(1, -(-COL2IM_BLOCK_ROWS // kk)))
        nblocks = -(-kg // block)
        self.co_block = -(-kg // nblocks)
        self.block_bytes = 4 * self.co_block * kk
        # W_g^T [Kg*kk, Cg] per group, each block's rows padded to co_block*kk
        wt = layer.weight.reshape(groups, cg, kg * kk).transpose(0, 2, 1)
        rows = nblocks * self.co_block * kk
        padded = np.zeros((groups, rows, cg), np.float32)
        padded[:, :kg * kk] = wt
        self.wpack = packed_gemm.pack_rows(padded.reshape(-1, cg), groups * nblocks)

    def run(self, x, out, g, threads):
        L = self.layer
        (kh, kw), (sh, sw), (dh, dw) = L.kernel_size, L.stride, L.dilation
        h, w = g.in_size
        rows = max(1, min(h, COL2IM_CHUNK_BYTES // (self.block_bytes * w)))
        work = workspace.take(_ct.work_floats(self.co_block, self.kk,
                                              L.in_channels // L.groups, rows * w, threads))
        try:
            _ct.f32_conv_transpose2d_col2im(x, self.wpack, L.bias, out, kh, kw, sh, sw,
                                            g.pads[0][0], g.pads[1][0], dh, dw, L.groups,
                                            self.co_block, rows, L.act, threads, work)
        finally:
            workspace.give(work)


class ZeroInsert:
    """The equivalent convolution on the zero-inserted, padded input (an engine.Conv2d)."""

    def __init__(self, layer):
        self.layer = layer
        gr = layer.groups
        c_in, kg, kh, kw = layer.weight.shape
        # conv weight[g*Kg + co, ci, u, v] = weight[g*Cg + ci, co, kh-1-u, kw-1-v]
        w = layer.weight.reshape(gr, c_in // gr, kg, kh, kw).transpose(0, 2, 1, 3, 4)
        w = w[..., ::-1, ::-1].reshape(gr * kg, c_in // gr, kh, kw)
        self.conv = Conv2d(w, layer.bias, stride=1, padding=0, dilation=layer.dilation,
                           groups=gr, activation=layer.activation)

    def zero_inserted(self, x, g):
        """x with stride-1 zeros between pixels, padded by d*(k-1) - p at the start and
        d*(k-1) - p + output_padding at the end of each axis (negative pads crop)."""
        L = self.layer
        n, c, h, w = x.shape
        sizes, slices_dst, slices_src = [], [], []
        for i, k, s, d, (pb, pe), op in zip((h, w), L.kernel_size, L.stride, L.dilation,
                                             g.pads, g.output_padding):
            reach = effective_kernel(k, d) - 1
            begin, end = reach - pb, reach - pe + op
            size = (i - 1) * s + 1 + begin + end
            # input i lands at begin + i*s; keep those inside [0, size)
            first = -(-max(0, -begin) // s)
            last = min(i - 1, (size - 1 - begin) // s)
            sizes.append(size)
            slices_dst.append(slice(begin + first * s, begin + last * s + 1, s))
            slices_src.append(slice(first, last + 1))
        buf = np.zeros((n, c) + tuple(sizes), dtype=np.float32)
        if all(sl.stop > sl.start for sl in slices_src):
            buf[:, :, slices_dst[0], slices_dst[1]] = x[:, :, slices_src[0], slices_src[1]]
        return buf

    def run(self, x, out, g, threads):
        xz = self.zero_inserted(x, g)
        self.conv.run(xz, out, self.conv.geometry(xz.shape), num_threads=threads)


class ConvTranspose1d:
    """A 1-D transposed convolution (NCL, weight (in_channels, out_channels // groups, k)),
    run as a ConvTranspose2d on the (N, C, 1, L) view; same options as ConvTranspose2d.
    padding: int, 1-tuple or (begin, end)."""

    def __init__(self, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                 dilation=1, activation=None, algorithm="auto", *, num_threads=None):
        w = as_float_array(weight, "weight", 3)
        self.stride = ntuple(stride, 1, "stride", minimum=1)
        self.dilation = ntuple(dilation, 1, "dilation", minimum=1)
        self.pads = resolve_transpose_padding(padding, 1)
        self.output_padding = check_output_padding(output_padding, self.stride,
                                                   self.dilation, 1)
        (pb, pe), = self.pads
        self.layer2d = ConvTranspose2d(
            w[:, :, None, :], bias, stride=(1,) + self.stride, padding=(0, pb, 0, pe),
            output_padding=(0,) + self.output_padding, groups=groups,
            dilation=(1,) + self.dilation, activation=activation, algorithm=algorithm,
            num_threads=num_threads)
        self.padding = padding
        self.in_channels = self.layer2d.in_channels
        self.out_channels = self.layer2d.out_channels
        self.groups = self.layer2d.groups
        self.kernel_size = (w.shape[2],)
        self.algorithm, self.reason = self.layer2d.algorithm, self.layer2d.reason

    def __call__(self, x, output_size=None, out=None):
        x = as_float_array(x, "x", 3)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (weight.shape[0]), got "
                             f"shape {x.shape}")
        if min(x.shape) < 1:
            raise ValueError(f"x must have no empty dimension, got shape {x.shape}")
        # sizes checked in 1-D so that messages name the axis the caller knows
        (length,), _ = transpose_geometry(x.shape[2:], self.kernel_size, self.stride,
                                          self.pads, self.dilation, self.output_padding,
                                          output_size)
        if out is not None:
            check_out(out, (x.shape[0], self.out_channels, length))
        y = self.layer2d(x[:, :, None, :], out=None if out is None else out[:, :, None, :],
                         output_size=None if output_size is None else (1, length))
        return y[:, :, 0, :] if out is None else out

    def __repr__(self):
        return (f"ConvTranspose1d({self.in_channels}->{self.out_channels}, "
                f"kernel={self.kernel_size[0]}, stride={self.stride[0]}, "
                f"padding={self.padding!r}, output_padding={self.output_padding[0]}, "
                f"dilation={self.dilation[0]}, groups={self.groups}, "
                f"algorithm={self.algorithm!r})")

    def explain(self) -> str:
        return f"1-D, run on the (N, C, 1, L) view:\n{self.layer2d.explain()}"


class ConvTransposeWindow:
    """An ONNX ConvTranspose whose pads its planned layer cannot take, for one input and output
    shape: ``layer``, the unpadded and bias-free ConvTranspose2d, runs into a scratch buffer
    and the window ONNX asks for is added to the bias; outputs no tap reaches hold the bias.
    ``pads`` are ONNX's ((top, bottom), (left, right)), negative ones included: output index
    j reads the unpadded output's j + top."""

    def __init__(self, layer, bias, x_shape, out_shape, pads):
        self.layer = layer
        self.g = layer.geometry(x_shape)
        self.full = (x_shape[0], out_shape[1]) + tuple(self.g.out_size)
        src, dst = [slice(None)] * 2, [slice(None)] * 2
        for ax in range(2):
            begin = pads[ax][0]
            lo = max(0, -begin)                       # first output index with a source
            hi = min(out_shape[2 + ax], self.full[2 + ax] - begin)
            dst.append(slice(lo, max(lo, hi)))
            src.append(slice(lo + begin, max(lo, hi) + begin))
        self.src, self.dst = tuple(src), tuple(dst)
        self.bias = (np.zeros((1, out_shape[1], 1, 1), np.float32) if bias is None
                     else bias.reshape(1, -1, 1, 1))

    def run(self, x, out, num_threads=None) -> None:
        """Checked arrays in (x of x_shape, out of out_shape), no validation."""
        tmp = np.empty(self.full, np.float32)
        self.layer.run(x, tmp, self.g, num_threads)
        out[...] = self.bias
        out[self.dst] += tmp[self.src]
