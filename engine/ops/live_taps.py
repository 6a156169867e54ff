"""A dilated convolution whose taps mostly read padding, computed tap by tap where they read the
input: for each tap, the outputs whose input pixel under that tap lies inside the map form one
rectangle, and the tap's contribution there is one GEMM (the pointwise kernel, on a copy of
the input pixels it reads). A 3x3 of rate 12 on a 14x14 map (DeepLabV3's ASPP at 224x224 on
MobileNetV3) has 1764 tap-output pairs of which 324 read the input: im2col multiplies all of
them, this the 324. Taps that never read the input are skipped; taps reaching every output are
a pointwise convolution of a strided view.

Every output is the bias, then each tap's product in row-major tap order, then the
activation: one fixed order whatever the thread count. The choice is engine/dispatch/conv.py's
(live_fraction)."""
from __future__ import annotations

import numpy as np

from .._kernels import conv_pointwise
from .._cache import ShapeCache
from ..shapes import tap_rectangles
from . import packed_gemm
from .activation import NO_ACT
from .workspace import workspace


class LiveTaps:
    """Per-tap GEMMs over each tap's live rectangle of outputs."""

    uses_blas = False
    clamp_only = True       # relu and relu6 here; other activations as a pass after it

    def __init__(self, layer):
        self.layer = layer
        k, cg, kh, kw = layer.weight.shape
        rows = packed_gemm.packed_rows(k // layer.groups) * layer.groups * cg

        def pack():
            packs = [packed_gemm.pack_rows(np.ascontiguousarray(layer.weight[:, :, u, v]),
                                           layer.groups).ravel()
                     for u in range(kh) for v in range(kw)]
            return np.stack(packs)
        self.wpack = layer.transformed("live_taps", pack, (kh * kw, rows))
        self.bias = (layer.bias if layer.bias is not None
                     else np.zeros(layer.out_channels, np.float32))
        self._rects = ShapeCache(16)

    def rectangles(self, g):
        """tap_rectangles for this layer at the geometry ``g``."""
        L = self.layer
        return tap_rectangles(g.in_size, g.out_size, L.kernel_size, L.stride, L.dilation,
                              (g.pads[0][0], g.pads[1][0]))

    def run(self, x, out, g, threads):
        L = self.layer
        n, c = x.shape[:2]
        k = L.out_channels
        sh, sw = L.stride
        out[...] = self.bias.reshape(1, k, 1, 1)
        cg = c // L.groups
        rects = self._rects.get((g.in_size, g.out_size, g.pads), lambda: self.rectangles(g))
        for t, (oy0, oy1), (ox0, ox1), (iy0, ix0) in rects:
            rh, rw = oy1 - oy0, ox1 - ox0
            xs = np.ascontiguousarray(
                x[:, :, iy0:iy0 + (rh - 1) * sh + 1:sh, ix0:ix0 + (rw - 1) * sw + 1:sw])
            part = np.empty((n, k, rh * rw), np.float32)
            split_rows, group_panels = packed_gemm.share_split(cg, k // L.groups, rh * rw,
                                                               threads)
            buf = workspace.take(packed_gemm.panel_floats(threads, cg, group_panels))
            try:
                conv_pointwise.f32_conv2d_pointwise(
                    xs.reshape(n, c, rh * rw), self.wpack[t], None, None, part, buf, L.groups,
                    split_rows, group_panels, NO_ACT, threads)
            finally:
                workspace.give(buf)
            with np.errstate(invalid="ignore", over="ignore"):   # inf - inf: NaN, as summed
                out[:, :, oy0:oy1, ox0:ox1] += part.reshape(n, k, rh, rw)
        if L.activation == "relu":
            np.maximum(out, 0, out=out)
        elif L.activation == "relu6":
            np.clip(out, 0, 6, out=out)
