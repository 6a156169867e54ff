"""The planned deformable convolution (DCN v1, and v2 with a modulation mask).

Semantics are torchvision.ops.deform_conv2d's, which ONNX DeformConv (opset 19) shares:
tap (u, v) of output pixel (oy, ox) samples the input at
    y = oy*stride_h - pad_top + u*dilation_h + dy,   x = ox*stride_w - pad_left + v*dilation_w + dx
with bilinear interpolation and zeros outside the input, multiplied by the tap's mask (v2).
offset has 2*offset_groups*kh*kw channels: within offset group j, tap i = u*kw + v has dy at
channel j*2*kh*kw + 2*i and dx at the next one; mask has offset_groups*kh*kw channels, tap i
of group j at channel j*kh*kw + i. Input channel c uses offset group c // (C / offset_groups).
"""
from __future__ import annotations

import numpy as np

from .._kernels import deform as _deform
from .._threads import resolve_threads, threads_for
from ..shapes import conv_output_shape, ntuple, resolve_padding
from . import packed_gemm
from ._validate import as_float_array, check_out, new_output
from .activation import canonical, kernel_act
from .workspace import workspace

# Bound on one thread's column buffer. Larger than im2col's: on the deform3x3_c64_56 layer
# 2 MB chunks (16 output rows) ran 2.2 ms against 3.4 ms for 256 KB ones (one thread, loaded
# machine, best of 41); the GEMM on wider column blocks is the gain.
DEFORM_CHUNK_BYTES = 1 << 21
# At least this many chunks when the output has the rows, so that two threads share the
# (image, group, chunk) items evenly on batch-1, single-group layers.
DEFORM_MIN_CHUNKS = 4


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


class DeformConv2d:
    """A deformable 2-D convolution layer planned once; call it as ``layer(x, offset, mask)``.

    weight: (out_channels, in_channels // groups, kh, kw); bias: (out_channels,) or None.
    stride, padding, dilation and groups as for engine.Conv2d (padding may also be "same",
    "valid" or ONNX's (top, left, bottom, right)). offset_groups: the number of offset groups,
    or None to infer it from the offset's channel count at each call. activation: None or
    a name of engine/ops/activation.py, applied with the bias. Float64 input is computed in float32.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 offset_groups=None, activation=None, *, num_threads=None):
        w = as_float_array(weight, "weight", 4)
        if min(w.shape) < 1:
            raise ValueError(f"weight must have no empty dimension, got shape {w.shape}")
        self.groups = _positive_int(groups, "groups")
        k_out, cg, kh, kw = w.shape
        if k_out % self.groups:
            raise ValueError(f"out_channels ({k_out}, weight.shape[0]) must be divisible by "
                             f"groups ({self.groups})")
        self.in_channels = cg * self.groups
        self.out_channels = k_out
        self.kernel_size = (kh, kw)
        self.offset_groups = None
        if offset_groups is not None:
            self.offset_groups = _positive_int(offset_groups, "offset_groups")
            if self.in_channels % self.offset_groups:
                raise ValueError(f"offset_groups ({self.offset_groups}) must divide the input "
                                 f"channels ({self.in_channels})")
        self.stride = ntuple(stride, 2, "stride", minimum=1)
        self.dilation = ntuple(dilation, 2, "dilation", minimum=1)
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        resolve_padding(padding, (1, 1), (kh, kw), self.stride, self.dilation)  # check it now
        self.padding = padding
        self.activation = canonical(activation)
        self.act = kernel_act(activation)
        self.weight = w
        # taps outer, channels inner: the column layout of kernels/deform.pyx
        # taps outer, channels inner, as the kernel's columns; packed for the micro-kernel
        w2d = w.transpose(0, 2, 3, 1).reshape(k_out, -1)
        self.kdim = w2d.shape[1]
        self.wpack = packed_gemm.pack_rows(w2d, self.groups)
        self.bias = None
        if bias is not None:
            self.bias = as_float_array(bias, "bias", 1)
            if self.bias.shape != (k_out,):
                raise ValueError(f"bias must have shape ({k_out},), got {self.bias.shape}")
        self.num_threads = num_threads

    def _offset_groups(self, offset_channels):
        taps = self.kernel_size[0] * self.kernel_size[1]
        if self.offset_groups is not None:
            return self.offset_groups
        if offset_channels % (2 * taps) or offset_channels == 0:
            raise ValueError(f"offset must have 2*offset_groups*kh*kw channels, a multiple of "
                             f"{2 * taps} for a {self.kernel_size[0]}x{self.kernel_size[1]} "
                             f"kernel, got {offset_channels}")
        og = offset_channels // (2 * taps)
        if self.in_channels % og:
            raise ValueError(f"offset has {offset_channels} channels, i.e. {og} offset groups, "
                             f"which do not divide the input channels ({self.in_channels})")
        return og

    def output_shape(self, input_shape) -> tuple[int, int, int, int]:
        n, _, h, w = input_shape
        pads = resolve_padding(self.padding, (h, w), self.kernel_size, self.stride,
                               self.dilation)
        try:
            size = conv_output_shape((h, w), self.kernel_size, self.stride, pads, self.dilation)
        except ValueError as e:
            raise ValueError(f"x: {e}") from None
        return (n, self.out_channels) + size

    def __call__(self, x, offset, mask=None, out=None):
        x = as_float_array(x, "x", 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (weight.shape[1] * groups "
                             f"= {self.weight.shape[1]} * {self.groups}), got shape {x.shape}")
        if min(x.shape) < 1:
            raise ValueError(f"x must have no empty dimension, got shape {x.shape}")
        if x.shape[2] * x.shape[3] >= 2 ** 31:
            raise ValueError(f"x: a plane of {x.shape[2]}x{x.shape[3]} is too large")
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        taps = kh * kw
        pads = resolve_padding(self.padding, (h, w), self.kernel_size, self.stride,
                               self.dilation)
        shape = self.output_shape(x.shape)
        oh, ow = shape[2:]
        offset = as_float_array(offset, "offset", 4)
        og = self._offset_groups(offset.shape[1])
        want = (n, 2 * og * taps, oh, ow)
        if offset.shape != want:
            raise ValueError(f"offset must have shape (N, 2*offset_groups*kh*kw, OH, OW) = "
                             f"{want}, got {offset.shape}")
        if mask is not None:
            mask = as_float_array(mask, "mask", 4)
            want = (n, og * taps, oh, ow)
            if mask.shape != want:
                raise ValueError(f"mask must have shape (N, offset_groups*kh*kw, OH, OW) = "
                                 f"{want}, got {mask.shape}")
        if out is None:
            out = new_output(shape, np.float32, self, x.shape)
        else:
            check_out(out, shape)
        self.run(x, offset, mask, out, pads, og)
        return out

    def run(self, x, offset, mask, out, pads, offset_groups, num_threads=None) -> None:
        """Checked float32 arrays in, no validation: for callers that did it once."""
        kh, kw = self.kernel_size
        kdim = self.kdim
        oh, ow = out.shape[2:]
        rows = max(1, min(-(-oh // DEFORM_MIN_CHUNKS), DEFORM_CHUNK_BYTES // (4 * kdim * ow)))
        macs = out.size * kdim
        threads = threads_for(macs, resolve_threads(num_threads or self.num_threads))
        n, c, h, w = x.shape
        work = workspace.take(_deform.work_floats(n, c, h, w, kdim, rows * ow, threads))
        try:
            _deform.f32_deform_conv2d(x, offset, mask, self.wpack, self.bias, out, kh, kw,
                                      self.stride[0], self.stride[1], pads[0][0], pads[1][0],
                                      self.dilation[0], self.dilation[1], self.groups,
                                      offset_groups, rows, self.act, threads, work)
        finally:
            workspace.give(work)

    def __repr__(self):
        kh, kw = self.kernel_size
        return (f"DeformConv2d({self.in_channels}->{self.out_channels}, kernel={kh}x{kw}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"groups={self.groups}, offset_groups={self.offset_groups}, "
                f"activation={self.activation!r})")
