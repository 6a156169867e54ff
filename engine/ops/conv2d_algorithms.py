"""The algorithms behind engine.ops.conv2d.Conv2d: each prepares its weights once from the layer
and runs one kernel from engine._kernels. Their ``run`` takes checked arrays and never decides."""
from __future__ import annotations

import math

import numpy as np

from .._cache import ShapeCache
from ..dispatch.layout import dense_copy_floats, dense_padded
from ..shapes import window_pixels
from .._kernels import (conv_direct, conv_im2col, conv_pointwise, nchwc, nchwc_dense,
                        nchwc_winograd)
from . import blocked, packed_gemm
from .depthwise import Depthwise
from .direct_blocked import DirectBlocked
from .live_taps import LiveTaps
from .separable import Separable
from .winograd import WinogradF23, WinogradF43, WinogradF63
from .workspace import workspace

# Bound on the im2col column buffer of one thread: large enough for efficient GEMMs, small
# enough that it and its copy in panels stay in L2 next to the weights. Measured on 64->128
# 3x3 stride 2, 56x56, one thread (ms): 128 KB 1.08, 256 KB 0.96, 512 KB 0.94, 1 MB 0.99.
IM2COL_CHUNK_BYTES = 512 << 10


def im2col_chunk(kdim: int, out_size) -> tuple[int, int]:
    """(rows, columns) of output per im2col chunk: as many whole rows as fit the column
    buffer bound, else pieces of one row; and at least two chunks for layers of more than one
    row's worth of columns, so two threads share an image. Rows are cut into an even number of
    pieces, so that two threads get equal shares (a 1-D layer of 4096 columns had 7 pieces,
    4 against 3: 0.53 ms at two threads, 0.44 with 8); whole rows go in an even number of
    chunks of even length too (the kernel's). Depends on the shape only."""
    oh, ow = out_size
    budget = max(16, IM2COL_CHUNK_BYTES // (4 * kdim))      # output pixels per chunk
    if ow <= budget:
        rows = max(1, min(budget // ow, -(-oh // 2)))
        return rows, ow
    pieces = -(-ow // budget)
    pieces += pieces % 2
    return 1, -(-ow // pieces)


class Direct:
    """The reference loops; float64 input is computed in float64."""

    uses_blas = False
    clamp_only = True       # its output step applies relu and relu6 only

    def __init__(self, layer):
        self.layer = layer
        k = layer.out_channels
        self.b32 = layer.bias if layer.bias is not None else np.zeros(k, np.float32)
        self.b64 = layer.bias64 if layer.bias64 is not None else np.zeros(k, np.float64)

    def run(self, x, out, g, threads):
        L = self.layer
        if x.dtype == np.float64:
            w, b = L.transformed("direct_float64", lambda: L.weight64), self.b64
        else:
            w, b = L.weight, self.b32
        conv_direct.conv2d_direct(x, w, b, out, L.stride[0], L.stride[1], g.pads[0][0],
                                  g.pads[1][0], L.dilation[0], L.dilation[1], L.groups,
                                  L.act, threads)


def _packed_rows_shape(layer):
    """The shape of packed_gemm.pack_rows' array of the layer's weights."""
    g, (k, cols) = layer.groups, layer.weight.reshape(layer.out_channels, -1).shape
    return (g * packed_gemm.packed_rows(k // g) * cols,)


class Im2col:
    """im2col in bounded chunks of output rows, each chunk one GEMM on the packed micro-kernel
    (kernels/_packed_gemm.h); weights packed once."""

    uses_blas = False

    def __init__(self, layer):
        self.layer = layer
        w2d = layer.weight.reshape(layer.out_channels, -1)
        self.kdim = w2d.shape[1]
        # the same rows as the pointwise GEMM's: one pack serves both
        self.wpack = layer.transformed("packed_rows",
                                       lambda: packed_gemm.pack_rows(w2d, layer.groups),
                                       _packed_rows_shape(layer))

    def run(self, x, out, g, threads):
        L = self.layer
        rows, cols = im2col_chunk(self.kdim, g.out_size)
        chunk_cols = min(rows, g.out_size[0]) * min(cols, g.out_size[1])
        kh, kw = L.kernel_size
        work = workspace.take(conv_im2col.work_floats(self.kdim, kh * kw, chunk_cols,
                                                      threads))
        try:
            conv_im2col.f32_conv2d_im2col(
                x, self.wpack, L.bias, out, kh, kw, L.stride[0],
                L.stride[1], g.pads[0][0], g.pads[1][0], L.dilation[0], L.dilation[1],
                L.groups, rows, cols, L.act, threads, work)
        finally:
            workspace.give(work)


class Pointwise:
    """1x1 stride 1: per image and group one GEMM straight on the input, by the packed
    micro-kernel of kernels/_packed_gemm.h; weights packed once as [g][Kg/MR][Cg][MR]. Its
    output step can add a residual tensor before the activation."""

    uses_blas = False
    fuses_residual = True

    def __init__(self, layer):
        self.layer = layer
        self.wpack = layer.transformed("packed_rows", lambda: packed_gemm.pack_rows(
            layer.weight.reshape(layer.out_channels, -1), layer.groups),
            _packed_rows_shape(layer))
        self._splits = ShapeCache(64)
        self._by_rows = None

    def one_pixel(self) -> packed_gemm.ConstantRight:
        """The layer as a product of each image's one pixel (a row of channels) by the
        transposed weights, packed when first asked for: on a map of one pixel (after a
        global pool: DeepLabV3's image pooling, LR-ASPP's scale branch) the GEMM on panels
        of pixels computes 32 columns for one: 2048->256 0.16 ms against 0.03, 960->128
        0.043 against 0.011, one thread (bench/bench_dispatch.py conv/one_pixel)."""
        if self._by_rows is None:
            L = self.layer
            self._by_rows = packed_gemm.ConstantRight(
                L.weight.reshape(L.out_channels, -1).T, L.bias,
                L.activation if L.post_activation is None else None)
        return self._by_rows

    def run(self, x, out, g, threads, residual=None):
        n, c, h, w = x.shape
        if h * w == 1 and self.layer.groups == 1 and residual is None:
            self.one_pixel().run(x.reshape(n, c), out.reshape(n, -1), threads)
        else:
            self.run_panels(x, out, threads, residual)

    def run_panels(self, x, out, threads, residual=None):
        """The GEMM on panels of pixels, for any map."""
        L = self.layer
        n, c, h, w = x.shape
        pixels = h * w
        cg = c // L.groups
        split_rows, group_panels = self._splits.get(
            (n, pixels, threads),
            lambda: packed_gemm.share_split(cg, L.out_channels // L.groups, pixels, threads))
        buf = workspace.take(packed_gemm.panel_floats(threads, cg, group_panels))
        try:
            conv_pointwise.f32_conv2d_pointwise(
                x.reshape(n, c, pixels), self.wpack, L.bias,
                None if residual is None else residual.reshape(n, L.out_channels, pixels),
                out.reshape(n, L.out_channels, pixels), buf, L.groups, split_rows,
                group_panels, L.act, threads)
        finally:
            workspace.give(buf)


# Bound on one band's input rows and outputs in blocks (BlockedBands), kept in L2 beside the
# packed weights; and bands at least, where the rows allow, so that two threads share an image.
# 64->128 3x3 stride 2 on 56x56 (bench/bench_dispatch.py conv/blocked_bands).
BAND_BYTES = 256 << 10
MIN_BANDS = 4


def band_rows(c: int, k: int, in_width: int, out_size, kernel_h: int, stride_h: int,
              dilation_h: int) -> int:
    """Output rows a band: as many as keep its input rows and outputs within BAND_BYTES, in
    at least MIN_BANDS bands of near-equal size. Depends on the shape only."""
    oh, ow = out_size
    cb, kb = blocked.blocks(c) * blocked.BLOCK, blocked.blocks(k) * blocked.BLOCK
    per_row = 4 * (cb * in_width * stride_h + kb * ow)
    halo = 4 * cb * in_width * max(0, (kernel_h - 1) * dilation_h + 1 - stride_h)
    rows = max(1, (BAND_BYTES - halo) // per_row)
    nbands = max(-(-oh // rows), min(oh, MIN_BANDS))
    return -(-oh // nbands)


class BlockedBands:
    """A one-group layer from NCHW to NCHW on the dense channel-blocked kernel
    (kernels/_nchwc_conv.h), band by band of output rows: each band's input rows go to blocks
    and its outputs back to planes in the thread that computes it; weights packed once as
    engine.ops.blocked.pack_dense packs them."""

    uses_blas = False

    def __init__(self, layer):
        self.layer = layer
        self.wpack = layer.transformed(
            "blocked_dense", lambda: blocked.pack_dense(layer.weight, None, layer.groups)[0],
            blocked.packed_shapes("dense", layer.weight.shape)[0])
        self.bias = blocked.padded_bias(layer.bias, layer.out_channels)

    def run(self, x, out, g, threads):
        L = self.layer
        (kh, kw), (sh, sw), (dh, dw) = L.kernel_size, L.stride, L.dilation
        rows = band_rows(L.in_channels, L.out_channels, x.shape[3], g.out_size, kh, sh, dh)
        work = workspace.take(nchwc_dense.nchw_band_floats(L.in_channels, L.out_channels,
                                                           x.shape[2], x.shape[3], g.out_size[1],
                                                           rows, kh, sh, dh, threads))
        try:
            nchwc_dense.f32_conv2d_nchw_bands(x, self.wpack, self.bias, out, kh, kw, sh, sw,
                                              g.pads[0][0], g.pads[1][0], dh, dw, L.act, rows,
                                              threads, work)
        finally:
            workspace.give(work)


class BlockedDense(BlockedBands):
    """The same kernel and weights over the whole layer: the input converted to blocks, copied
    with its padding as zeros where engine/dispatch/layout.py dense_padded says (``alone``) so
    that the tiles run across output rows (a 7x7 output fills whole 6-pixel tiles), and the
    output converted back. For layers of large weights, which each band would read again, and
    narrow outputs."""

    def __init__(self, layer):
        super().__init__(layer)
        self.finite = bool(np.isfinite(layer.weight).all())

    def run(self, x, out, g, threads):
        L = self.layer
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = L.kernel_size, L.stride, L.dilation
        xshape = blocked.blocked_shape(x.shape)
        oshape = blocked.blocked_shape((n, L.out_channels) + tuple(g.out_size))
        pad_floats = dense_copy_floats(n, c, (h, w), g.out_size, L.kernel_size, L.stride,
                                       L.dilation, (g.pads[0][0], g.pads[1][0]))
        padded = dense_padded(L.groups, self.finite, 4 * pad_floats,
                              window_pixels(g.out_size, L.kernel_size, L.stride, L.dilation),
                              alone=True)[0]
        pad_floats = pad_floats if padded else 0
        bufs = [workspace.take(math.prod(xshape)), workspace.take(math.prod(oshape)),
                workspace.take(max(1, pad_floats))]
        try:
            xb = bufs[0][:math.prod(xshape)].reshape(xshape)
            ob = bufs[1][:math.prod(oshape)].reshape(oshape)
            nchwc.f32_to_blocked(x, xb, threads)
            nchwc_dense.f32_conv2d_nchwc(xb, c, self.wpack, self.bias, None, ob, kh, kw, sh, sw,
                                         g.pads[0][0], g.pads[1][0], dh, dw, L.act, threads,
                                         L.groups, bufs[2] if padded else None)
            nchwc.f32_from_blocked(ob, out, threads)
        finally:
            for buf in reversed(bufs):
                workspace.give(buf)


class BlockedWinograd:
    """Winograd F(m x m, 3x3) on channel blocks (kernels/nchwc_winograd.pyx), one group or
    groups of whole blocks, the input converted to blocks and the output back around it; the
    tile by engine/dispatch/winograd.py's blocked model per input shape, U packed once per
    tile. An input with a non-finite value runs the dense blocked kernel, whose sums follow
    the direct convolution's."""

    uses_blas = False

    def __init__(self, layer):
        self.layer = layer
        self.bias = blocked.padded_bias(layer.bias, layer.out_channels)
        self._tiles = ShapeCache(16)

    def tile(self, batch: int, out_size) -> int:
        from ..dispatch.winograd import choose_blocked_tile
        L = self.layer
        return self._tiles.get((batch, tuple(out_size)), lambda: choose_blocked_tile(
            L.in_channels, L.out_channels, batch, out_size, L.dilation, L.groups)[0])

    def run(self, x, out, g, threads):
        L = self.layer
        n, c, h, w = x.shape
        k, (oh, ow), (dh, dw) = L.out_channels, g.out_size, L.dilation
        m = self.tile(n, (oh, ow))
        up = L.transformed(f"blocked_winograd{m}",
                           lambda: blocked.pack_winograd(L.weight, None, m, L.groups)[0],
                           blocked.packed_shapes(f"winograd{m}", L.weight.shape)[0])
        xshape, oshape = blocked.blocked_shape(x.shape), blocked.blocked_shape((n, k, oh, ow))
        xb = workspace.take(math.prod(xshape))
        ob = workspace.take(math.prod(oshape))
        work = workspace.take(blocked.winograd_work_floats(n, c, k, (oh, ow), m, (dh, dw),
                                                           threads, False, L.groups))
        try:
            xbv = xb[:math.prod(xshape)].reshape(xshape)
            obv = ob[:math.prod(oshape)].reshape(oshape)
            nchwc.f32_to_blocked(x, xbv, threads)
            pt, pl = g.pads[0][0], g.pads[1][0]
            if not nchwc_winograd.f32_winograd_blocked(xbv, c, up, self.bias, None, obv, m, pt,
                                                       pl, L.act, threads, work, dh, dw, None,
                                                       L.groups):
                wd = L.transformed("blocked_dense", lambda: blocked.pack_dense(
                    L.weight, None, L.groups)[0], blocked.packed_shapes("dense",
                                                                        L.weight.shape)[0])
                nchwc_dense.f32_conv2d_nchwc(xbv, c, wd, self.bias, None, obv, 3, 3, 1, 1, pt, pl,
                                             dh, dw, L.act, threads, L.groups)
            nchwc.f32_from_blocked(obv, out, threads)
        finally:
            for buf in (work, ob, xb):
                workspace.give(buf)


def _fft(layer, **options):
    """The FFT algorithm, imported by the first layer that runs it: scipy.fft takes a quarter
    of a second to import, which a model without such a layer should not pay."""
    from .fft import FFT
    return FFT(layer, **options)


REGISTRY = {
    "direct": Direct,
    "im2col": Im2col,
    "pointwise": Pointwise,
    "depthwise": Depthwise,
    "separable": Separable,
    "fft": _fft,
    "direct_blocked": DirectBlocked,
    "winograd_f23": WinogradF23,   # dilation 1
    "dilated_s2b": WinogradF23,    # the same kernel, phase sub-images in its addressing
    "winograd_f43": WinogradF43,   # any dilation (engine/dispatch/conv.py: >= 256 channels)
    "winograd_f63": WinogradF63,   # any dilation
    "live_taps": LiveTaps,         # dilated layers whose taps mostly read padding
    "blocked_bands": BlockedBands, # one group, 16-float builds: the blocked tiles, NCHW kept
    "blocked_dense": BlockedDense,         # one group, 16 floats: blocks, whole layer
    "blocked_winograd": BlockedWinograd,   # 3x3 stride 1, groups of whole blocks, 16 floats
}
