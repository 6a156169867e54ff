"""Which of the depthwise kernels (engine/ops/depthwise.py, kernels/conv_depthwise*.pyx) runs a
depthwise layer on one input size, and why:

- "blocks": one vector of channels at a time (16, or 8 on AVX2 builds), transposed to
  channels-last and computed one vector per pixel (f32_conv2d_depthwise_cb): any kernel,
  multiplier 1, a multiple of that many channels;
- "rows": output row by output row from a ring of three padded rows in L1, outputs stored from
  registers (f32_conv2d_depthwise_rows): 3x3, stride 1 or 2, dilation 1, multiplier 1;
- "planes": padded input bands staged in stride phases, then one band kernel
  (f32_conv2d_depthwise): any kernel, stride, dilation and multiplier.

``choose_depthwise_kernel`` needs the input size (``ConvParams.in_size`` and ``pads``); a plan
asks once per input size. ``why_not_depthwise_kernel`` tells whether a forced kernel can run
the layer at all, whatever its size.
"""
from __future__ import annotations

from typing import Optional

from .._kernels.conv_depthwise_cb import CHANNEL_BLOCK
from .conv import ConvParams, vector_floats

DEPTHWISE_KERNELS = ("blocks", "rows", "planes")

# Largest input plane (pixels) run in channel blocks: they pay two transposes per pixel, the
# plane kernel a staging and a copy per row, so small planes go to channel blocks
# (bench/bench_dispatch.py depthwise/blocks).
CHANNEL_BLOCK_MAX_PIXELS = 24 * 24
# With 8-channel blocks (AVX2 builds) stride 2 stays in blocks up to 56x56 planes: 144ch 56x56
# 0.17 ms against rows' 0.19, 256ch 28x28 0.08 against 0.14 (bench_dispatch.py depthwise/blocks)
CHANNEL_BLOCK_MAX_PIXELS_NARROW_S2 = 56 * 56
# Kernels other than 3x3 (MobileNetV3's, EfficientNet's and MNASNet's 5x5, ConvNeXt's 7x7) have
# no row kernel and their plane kernel stages each band; channel blocks beat it up to 14x14
# planes at stride 1 and 28x28 at stride 2 (5x5 576ch 7x7: 0.076 against 0.108 ms, 7x7 288ch
# 14x14 s2: 0.073 against 0.129; bench/bench_dispatch.py depthwise/wide, AVX2 build).
WIDE_KERNEL_BLOCK_MAX_PIXELS = {1: 14 * 14, 2: 28 * 28}
# Narrowest output run row by row, per stride: on shorter rows the per-row work outweighs the
# staging and copy-out pass it saves (bench/bench_dispatch.py depthwise/rows, AVX-512 build).
# Stride 1 computes two rows at a time and wins from 14-wide outputs on; stride 2 one row.
ROWS_MIN_WIDTH = {1: 14, 2: 56}
# Built for 8-float vectors (AVX2) the plane kernel wins every stride-1 row of that bench
# (0.28 against 0.31-0.37 ms), and rows win stride 2 down to 14-wide outputs: they split each
# input row into even and odd columns once, where the planes read every other column.
ROWS_MIN_WIDTH_NARROW = {1: None, 2: 14}


def why_not_depthwise_kernel(kernel: str, p: ConvParams) -> Optional[str]:
    """None if the depthwise ``kernel`` can run the layer (any input size), else why not."""
    multiplier = p.out_channels // p.in_channels
    if kernel == "planes":
        return None
    if kernel not in DEPTHWISE_KERNELS:
        return (f"unknown depthwise kernel {kernel!r}; known: "
                f"{', '.join(map(repr, DEPTHWISE_KERNELS))}")
    if p.out_channels != p.in_channels:
        return f"the {kernel} kernel needs channel multiplier 1, got {multiplier}"
    if kernel == "blocks":
        if p.in_channels % CHANNEL_BLOCK:
            return (f"the blocks kernel needs a multiple of {CHANNEL_BLOCK} channels, got "
                    f"{p.in_channels}")
        return None
    if p.kernel != (3, 3):
        return f"the {kernel} kernel needs a 3x3 kernel, got {p.kernel[0]}x{p.kernel[1]}"
    if p.dilation != (1, 1):
        return f"the rows kernel needs dilation 1, got {p.dilation}"
    if p.stride not in ((1, 1), (2, 2)):
        return f"the rows kernel needs stride 1 or 2 on both axes, got {p.stride}"
    return None


def choose_depthwise_kernel(p: ConvParams) -> tuple[str, str]:
    """(kernel, reason) for the layer ``p`` on the input size ``p.in_size``."""
    h, w = p.in_size
    ow = p.out_size[1]
    not_blocks = why_not_depthwise_kernel("blocks", p)
    floats = vector_floats()
    max_pixels = CHANNEL_BLOCK_MAX_PIXELS
    if p.kernel != (3, 3):
        max_pixels = WIDE_KERNEL_BLOCK_MAX_PIXELS[1 if p.stride == (1, 1) else 2]
    elif floats < 16 and p.stride == (2, 2):
        max_pixels = CHANNEL_BLOCK_MAX_PIXELS_NARROW_S2
    if not_blocks is None and h * w <= max_pixels:
        return "blocks", (f"{p.in_channels} channels on a {h}x{w} plane (at most "
                          f"{max_pixels} pixels): vectors of {CHANNEL_BLOCK} "
                          f"channels per pixel cost less than staging short rows")
    not_rows = why_not_depthwise_kernel("rows", p)
    min_width = (ROWS_MIN_WIDTH if floats >= 16 else ROWS_MIN_WIDTH_NARROW).get(p.stride[0])
    if not_rows is None and min_width is not None and ow >= min_width:
        return "rows", (f"3x3 stride {p.stride[0]} to a {ow}-wide output (at least "
                        f"{min_width}): row by row from three ring rows, no staging or "
                        f"copy-out pass")
    staged = "staged input bands in stride phases"
    if not_rows is None and min_width is None:
        return "planes", (f"3x3 stride 1 on kernels built for {floats}-float vectors: the "
                          f"plane kernel's bands beat rows at every width: {staged}")
    if not_rows is None:
        large = f" and a {h}x{w} plane too large for blocks" if not_blocks is None else ""
        return "planes", f"a {ow}-wide output is too narrow for rows{large}: {staged}"
    if not_blocks is None:
        return "planes", (f"a {h}x{w} plane is too large for channel blocks ({not_rows}): "
                          f"{staged}")
    return "planes", f"only the plane kernel runs it ({not_rows}): {staged}"
