"""Depthwise convolution for engine.ops.conv2d.Conv2d: groups == in_channels, each output channel
k filters input channel k // multiplier with its own kh x kw kernel."""
from __future__ import annotations

from .._kernels import conv_depthwise

# Bound on one thread's staging buffer (a band of padded input rows split into stride phases,
# plus the band's accumulator): well inside L2 (1 MB per core on the reference machine), and
# large enough that every MobileNet plane, up to 112 x 112 at stride 1 (about 100 KB), is one
# band, so no rows are staged twice. Smaller budgets measured no faster.
DEPTHWISE_STAGE_BYTES = 128 << 10


class Depthwise:
    """Padded input bands staged in stride phases, then one band kernel: f32_dwconv3x3s1,
    f32_dwconv3x3s2 (dilation 1, any padding) or four taps a pass for any other shape."""

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

    def run(self, x, out, g, threads):
        L = self.layer
        conv_depthwise.f32_conv2d_depthwise(
            x, self.w2d, L.bias, out, L.kernel_size[0], L.kernel_size[1], L.stride[0],
            L.stride[1], g.pads[0][0], g.pads[1][0], L.dilation[0], L.dilation[1],
            DEPTHWISE_STAGE_BYTES, L.act_code, threads)
