"""How a transposed convolution runs (engine/ops/conv_transpose.py), and why:

- the algorithm of the planned layer: "col2im" (one GEMM gives every input pixel times the
  kernel, scatter-added into the output) or "zero_insert" (the equivalent convolution on the
  input with zeros between its pixels); ``engine.ConvTranspose2d(..., algorithm=)`` forces one;
- for an ONNX ConvTranspose, whether the planned layer takes the node's pads ("layer") or runs
  unpadded with the window ONNX asks for copied out of its output ("window").
"""
from __future__ import annotations

import math
from typing import Optional

from .conv import _GEMM_GFLOPS, _MEMORY_GBS

TRANSPOSE_ALGORITHMS = ("col2im", "zero_insert")


def why_not_conv_transpose2d(algorithm: str) -> Optional[str]:
    """None if ``algorithm`` can run a transposed convolution (both run every layer)."""
    if algorithm in TRANSPOSE_ALGORITHMS:
        return None
    return (f"known algorithms are 'auto', "
            f"{', '.join(map(repr, TRANSPOSE_ALGORITHMS))}")


def choose_conv_transpose2d(stride) -> tuple[str, str]:
    """col2im for every layer. With stride s zero insertion multiplies s*s times as often,
    mostly by the inserted zeros. At stride 1 it is the equivalent convolution, which can take
    a faster algorithm than col2im's GEMM (Winograd for 3x3: see the 3x3 stride-1 row of
    bench/bench_dispatch.py transposed/col2im); the rule still keeps col2im there, which needs no
    padded copy of the input."""
    if max(stride) > 1:
        return "col2im", (f"stride {tuple(stride)}: col2im multiplies only real input pixels; "
                          f"zero insertion would do {stride[0] * stride[1]}x the arithmetic")
    return "col2im", "stride 1: col2im, which needs no padded copy of the input"


def conv_transpose_estimated_ms(algorithm: str, in_channels: int, out_channels: int,
                                groups: int, kernel, stride, in_size) -> float:
    """Rough time in ms on one core, with the convolution dispatcher's rates (engine/dispatch/
    conv.py), for explain()."""
    pixels = math.prod(in_size)
    kk = math.prod(kernel)
    if algorithm == "col2im":
        flops = 2.0 * in_channels * pixels * (out_channels // groups) * kk
        col_bytes = 4.0 * out_channels * kk * pixels * 2   # cols written, then read
        return flops / _GEMM_GFLOPS / 1e6 + col_bytes / _MEMORY_GBS / 1e6
    if algorithm == "zero_insert":
        # every output pixel takes the whole kernel over the zero-inserted input
        out_pixels = pixels * math.prod(stride)
        flops = 2.0 * out_channels * out_pixels * (in_channels // groups) * kk
        col_bytes = 4.0 * in_channels * kk * out_pixels * 2
        return flops / _GEMM_GFLOPS / 1e6 + col_bytes / _MEMORY_GBS / 1e6
    raise ValueError(f"unknown algorithm {algorithm!r}")


def choose_onnx_transpose_path(pads, output_padding, stride, dilation) -> tuple[str, str]:
    """"layer" when the planned layer can take an ONNX ConvTranspose's pads (all non-negative)
    and the output_padding that its output size implies (torch's rule: below the stride or the
    dilation on every axis), else "window"; and why. All arguments per spatial axis; pads as
    (begin, end) pairs."""
    negative = [p for pair in pads for p in pair if p < 0]
    if negative:
        return "window", (f"negative pads {tuple(negative)} crop the output: the layer runs "
                          f"unpadded and the window ONNX asks for is copied out")
    beyond = [a for a, (p, s, d) in enumerate(zip(output_padding, stride, dilation))
              if not (p < s or p < d)]
    if beyond:
        return "window", (f"the output reaches {tuple(output_padding)} past the layer's size "
                          f"(more than the stride or dilation allows): the layer runs "
                          f"unpadded and the window is copied out, the rest holding the bias")
    return "layer", "the planned layer takes them itself"
