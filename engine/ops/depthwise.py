"""Depthwise convolution for engine.ops.conv2d.Conv2d: groups == in_channels, each output channel
k filters input channel k // multiplier with its own kh x kw kernel."""
from __future__ import annotations


import numpy as np

from .._cache import ShapeCache
from ..dispatch.depthwise import choose_depthwise_kernel, why_not_depthwise_kernel
from .._kernels import conv_depthwise, conv_depthwise_cb
from .workspace import workspace

# Bound on one thread's staging buffer (a band of padded input rows split into stride phases,
# plus the band's accumulator): well inside L2 (1 MB per core on the reference machine), and
# large enough that every MobileNet plane, up to 112 x 112 at stride 1 (about 100 KB), is one
# band, so no rows are staged twice. Smaller budgets measured no faster.
DEPTHWISE_STAGE_BYTES = 128 << 10

# Channels per block of the channel-blocked kernel (one AVX-512 vector of floats).
CHANNEL_BLOCK = conv_depthwise_cb.CHANNEL_BLOCK


def channel_blocks(weight: np.ndarray) -> np.ndarray:
    """(C, 1, kh, kw) weights as the channel-blocked kernel reads them:
    [C // CB, kh * kw, CB]."""
    c, taps = weight.shape[0], weight.shape[2] * weight.shape[3]
    return np.ascontiguousarray(
        weight.reshape(c // CHANNEL_BLOCK, CHANNEL_BLOCK, taps).transpose(0, 2, 1), np.float32)


class Depthwise:
    """Three kernels (engine/dispatch/depthwise.py says which runs a layer on each input size,
    and why): channel blocks, rows, and planes (padded input bands staged in stride phases,
    then f32_dwconv3x3s1, f32_dwconv3x3s2 or four taps a pass for any other shape).

    kernel: "auto", or one of engine.dispatch.DEPTHWISE_KERNELS to run every input size with
    it (ValueError if it cannot run the layer)."""

    uses_blas = False
    clamp_only = True       # the output steps clamp (relu, relu6) and apply nothing else

    def __init__(self, layer, kernel="auto"):
        c, k = layer.in_channels, layer.out_channels
        if not (layer.groups == c and layer.weight.shape[1] == 1 and k % c == 0):
            raise ValueError(f"depthwise needs groups == in_channels and out_channels a multiple "
                             f"of in_channels, got groups={layer.groups}, in_channels={c}, "
                             f"out_channels={k}")
        self.layer = layer
        if kernel != "auto":
            reason = why_not_depthwise_kernel(kernel, layer.params)
            if reason is not None:
                raise ValueError(f"depthwise kernel {kernel!r} cannot run this layer: {reason}")
        self.forced = kernel
        kh, kw = layer.kernel_size
        self.w2d = layer.weight.reshape(k, kh * kw)
        self._choices = ShapeCache(64)
        self._work = ShapeCache(64)
        self.wcb = None
        if kernel in ("auto", "blocks") and why_not_depthwise_kernel("blocks",
                                                                    layer.params) is None:
            self.wcb = layer.transformed("depthwise_blocks", lambda: channel_blocks(layer.weight))

    def kernel_choice(self, g) -> tuple[str, str]:
        """(kernel, reason): the kernel that runs the geometry ``g``, chosen once per input
        size by engine.dispatch.choose_depthwise_kernel unless forced."""
        if self.forced != "auto":
            return self.forced, "forced by the caller"

        def choose():
            p = self.layer.params._replace(in_size=g.in_size, pads=g.pads, batch=g.batch)
            return choose_depthwise_kernel(p)
        return self._choices.get(g, choose)

    def run(self, x, out, g, threads):
        L = self.layer
        n, c, h, w = x.shape
        (oh, ow), (kh, kw) = g.out_size, L.kernel_size
        (sh, sw), (dh, dw) = L.stride, L.dilation
        pt, pl = g.pads[0][0], g.pads[1][0]
        def work_plan():
            kind = self.kernel_choice(g)[0]
            if kind == "blocks":
                floats = conv_depthwise_cb.cb_work_floats(n * c // CHANNEL_BLOCK, h, w, oh,
                                                          ow, kh, kw, sh, sw, dh, dw, threads)
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
                conv_depthwise_cb.f32_conv2d_depthwise_cb(
                    x, self.wcb, L.bias, out, kh, kw, sh, sw, pt, pl, dh, dw, L.act, threads,
                    work)
            elif kind == "rows":
                conv_depthwise.f32_conv2d_depthwise_rows(
                    x, self.w2d, L.bias, out, sh, pt, pl, L.act, threads, work)
            else:
                conv_depthwise.f32_conv2d_depthwise(
                    x, self.w2d, L.bias, out, kh, kw, sh, sw, pt, pl, dh, dw,
                    DEPTHWISE_STAGE_BYTES, L.act, threads, work)
        finally:
            workspace.give(work)
