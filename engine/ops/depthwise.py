"""Depthwise convolution for engine.ops.conv2d.Conv2d: groups == in_channels, each output channel
k filters input channel k // multiplier with its own kh x kw kernel."""
from __future__ import annotations

import numpy as np

from .._cache import ShapeCache
from .._kernels import conv_depthwise
from .workspace import workspace

# Bound on one thread's staging buffer (a band of padded input rows split into stride phases,
# plus the band's accumulator): well inside L2 (1 MB per core on the reference machine), and
# large enough that every MobileNet plane, up to 112 x 112 at stride 1 (about 100 KB), is one
# band, so no rows are staged twice. Smaller budgets measured no faster.
DEPTHWISE_STAGE_BYTES = 128 << 10

# Channels per block of the channel-blocked kernel (one AVX-512 vector of floats).
CHANNEL_BLOCK = conv_depthwise.CHANNEL_BLOCK
# Largest input plane (pixels) run in channel blocks. The plane kernel pays per row (staging,
# copying out rows of 7 or 14 floats), the channel blocks per pixel (two transposes), so small
# planes go to channel blocks. Measured one thread, 256 channels, 3x3 relu6, loaded machine,
# alternating (time of channel blocks / plane kernel):
#   stride 1: 12x12 0.56, 14x14 0.72, 16x16 0.70, 18x18 0.71, 20x20 0.82, 22x22 0.89,
#             24x24 0.92, 28x28 1.06
#   stride 2: 12x12 0.43, 14x14 0.55, 16x16 0.50, 18x18 0.59, 20x20 0.66, 22x22 0.67,
#             24x24 0.78, 28x28 0.98
# Against ONNX Runtime's single-node Conv, alternating, one thread (MobileNet layers, us, ours
# vs ORT): 960ch 7x7 34 vs 39, 384ch 14x14 35 vs 53, 576ch 14x14 stride 2 35 vs 41, where the
# plane kernel, before this kernel existed, took 315, 115 and 209.
CHANNEL_BLOCK_MAX_PIXELS = 24 * 24
# Narrowest output run row by row (kernels/_dw_rows.h: three ring rows in L1, outputs stored
# straight from registers) rather than in staged bands with a copy-out pass. Measured one
# thread, alternating, ms plane kernel vs rows: 32ch 112x112 s1 0.254 vs 0.173, 96ch 112x112 s2
# 0.366 vs 0.300, 144ch 56x56 s1 0.277 vs 0.254, 128ch 56x56 s1 0.236 vs 0.229; but 144ch
# 56x56 s2 (28 wide) 0.119 vs 0.141 and 256ch 28x28 s1 0.102 vs 0.161: the per-row work
# outweighs the saved pass on short rows.
ROWS_MIN_WIDTH = 56


def channel_blocks(weight: np.ndarray) -> np.ndarray:
    """(C, 1, 3, 3) weights as the channel-blocked kernel reads them: [C // CB, 9, CB]."""
    c = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(c // CHANNEL_BLOCK, CHANNEL_BLOCK, 9).transpose(0, 2, 1), np.float32)


class Depthwise:
    """Three kernels. Rows: 3x3, stride 1 or 2, dilation 1, multiplier 1 on outputs at least
    ROWS_MIN_WIDTH wide, output row by output row from a ring of three padded rows. Planes:
    padded input bands staged in stride phases, then one band kernel:
    f32_dwconv3x3s1, f32_dwconv3x3s2 (dilation 1, any padding) or four taps a pass for any
    other shape. Channel blocks: 3x3 kernels, multiplier 1 and a multiple of CHANNEL_BLOCK
    channels on small planes (CHANNEL_BLOCK_MAX_PIXELS), CHANNEL_BLOCK channels at a time
    transposed to channels-last and computed one vector per pixel (they take precedence).
    kernel_for(geometry) says which runs."""

    uses_blas = False

    def __init__(self, layer):
        c, k = layer.in_channels, layer.out_channels
        if not (layer.groups == c and layer.weight.shape[1] == 1 and k % c == 0):
            raise ValueError(f"depthwise needs groups == in_channels and out_channels a multiple "
                             f"of in_channels, got groups={layer.groups}, in_channels={c}, "
                             f"out_channels={k}")
        self.layer = layer
        kh, kw = layer.kernel_size
        self.w2d = layer.weight.reshape(k, kh * kw)
        self._work = ShapeCache(64)
        self.rows_ok = (k == c and (kh, kw) == (3, 3) and layer.dilation == (1, 1))
        self.wcb = None
        if k == c and c % CHANNEL_BLOCK == 0 and (kh, kw) == (3, 3):
            self.wcb = channel_blocks(layer.weight)

    def uses_channel_blocks(self, in_size) -> bool:
        """Whether inputs of this spatial size run in channel blocks (a function of the shape)."""
        return self.wcb is not None and in_size[0] * in_size[1] <= CHANNEL_BLOCK_MAX_PIXELS

    def kernel_for(self, g) -> str:
        """"blocks", "rows" or "planes": the kernel that runs this geometry."""
        L = self.layer
        if self.uses_channel_blocks(g.in_size):
            return "blocks"
        if (self.rows_ok and L.stride in ((1, 1), (2, 2))
                and g.out_size[1] >= ROWS_MIN_WIDTH):
            return "rows"
        return "planes"

    def run(self, x, out, g, threads):
        L = self.layer
        n, c, h, w = x.shape
        (oh, ow), (kh, kw) = g.out_size, L.kernel_size
        (sh, sw), (dh, dw) = L.stride, L.dilation
        pt, pl = g.pads[0][0], g.pads[1][0]
        def work_plan():
            kind = self.kernel_for(g)
            if kind == "blocks":
                floats = conv_depthwise.cb_work_floats(n * c // CHANNEL_BLOCK, h, w, oh, ow,
                                                       sh, sw, dh, dw, threads)
            elif kind == "rows":
                floats = conv_depthwise.rows_work_floats(n * c, w, ow, sh, pl, threads)
            else:
                floats = conv_depthwise.plane_work_floats(n * c, h, w, oh, ow, kh, kw, sh, sw,
                                                          dh, dw, DEPTHWISE_STAGE_BYTES,
                                                          threads)
            return kind, floats
        kind, floats = self._work.get((g, threads), work_plan)
        work = workspace.take(floats)
        try:
            if kind == "blocks":
                conv_depthwise.f32_conv2d_depthwise_cb(
                    x, self.wcb, L.bias, out, sh, sw, pt, pl, dh, dw, L.act_code, threads, work)
            elif kind == "rows":
                conv_depthwise.f32_conv2d_depthwise_rows(
                    x, self.w2d, L.bias, out, sh, pt, pl, L.act_code, threads, work)
            else:
                conv_depthwise.f32_conv2d_depthwise(
                    x, self.w2d, L.bias, out, kh, kw, sh, sw, pt, pl, dh, dw,
                    DEPTHWISE_STAGE_BYTES, L.act_code, threads, work)
        finally:
            workspace.give(work)
