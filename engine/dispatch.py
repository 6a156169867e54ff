"""Which convolution algorithm runs a layer, and why: one pure function of the layer's
parameters, ordered rules, each returning (algorithm, one-line reason).

Plans call ``choose_conv2d`` once, store the answer and never decide again. ``conv2d_candidates``
lists every algorithm able to run the layer with a rough cost estimate, for ``explain()``.
The cost model is deliberately simple (time = arithmetic / sustained rate + memory traffic /
bandwidth, rates measured on the reference machine with bench/bench_conv2d.py); the rules, not
the estimates, make the choice, and the rules' thresholds come from the same benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Sustained rates on one Zen 4 core, from bench/bench_conv2d.py (GFLOP/s of the arithmetic an
# algorithm really performs, and GB/s for the data it moves besides the GEMM).
_GEMM_GFLOPS = 90.0
_DIRECT_GFLOPS = 1.5
_DEPTHWISE_GFLOPS = 25.0
_MEMORY_GBS = 12.0

# Winograd pays a transform per tile and channel; below this many channels per group the
# transforms cost more than the multiplications they save (bench/bench_conv2d.py, c3 and c16 rows).
WINOGRAD_MIN_CHANNELS = 8


@dataclass(frozen=True)
class ConvParams:
    """What the dispatcher may look at. ``in_size`` is None when the plan is made before the
    input's spatial size is known; rules then assume a size at which every algorithm runs."""
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pads: Optional[tuple[tuple[int, int], tuple[int, int]]] = None
    in_size: Optional[tuple[int, int]] = None
    batch: int = 1

    @property
    def out_size(self) -> tuple[int, int]:
        from .shapes import conv_output_size
        if self.in_size is None or self.pads is None:
            return (56, 56)  # a typical feature map, only for the cost column of explain()
        return tuple(conv_output_size(i, k, s, pb, pe, d) for i, k, s, (pb, pe), d in
                     zip(self.in_size, self.kernel, self.stride, self.pads, self.dilation))

    @property
    def macs(self) -> int:
        """Multiply-adds of the direct convolution."""
        oh, ow = self.out_size
        return (self.batch * self.out_channels * oh * ow * (self.in_channels // self.groups)
                * self.kernel[0] * self.kernel[1])


def _is_depthwise(p: ConvParams) -> bool:
    return p.groups > 1 and p.groups == p.in_channels and p.out_channels % p.groups == 0


def _is_pointwise(p: ConvParams) -> bool:
    return (p.kernel == (1, 1) and p.stride == (1, 1)
            and (p.pads is None or p.pads == ((0, 0), (0, 0))))


def why_not(algorithm: str, p: ConvParams) -> Optional[str]:
    """None if ``algorithm`` can run the layer, else the reason it cannot."""
    if algorithm in ("direct", "im2col"):
        return None
    if algorithm == "pointwise":
        if p.kernel != (1, 1):
            return f"pointwise needs a 1x1 kernel, got {p.kernel[0]}x{p.kernel[1]}"
        if p.stride != (1, 1):
            return f"pointwise needs stride 1, got {p.stride}"
        if p.pads is not None and p.pads != ((0, 0), (0, 0)):
            return "pointwise needs zero padding"
        return None
    if algorithm in ("winograd_f23", "dilated_s2b"):
        if p.kernel != (3, 3):
            return f"{algorithm} needs a 3x3 kernel, got {p.kernel[0]}x{p.kernel[1]}"
        if p.stride != (1, 1):
            return f"{algorithm} needs stride 1, got {p.stride}"
        if algorithm == "winograd_f23" and p.dilation != (1, 1):
            return f"winograd_f23 needs dilation 1, got {p.dilation} (use dilated_s2b)"
        if algorithm == "dilated_s2b" and p.dilation == (1, 1):
            return "dilated_s2b needs a dilation > 1 (use winograd_f23)"
        return None
    if algorithm == "depthwise":
        if not _is_depthwise(p):
            return (f"depthwise needs groups == in_channels > 1 and out_channels a multiple of "
                    f"groups, got groups={p.groups}, in_channels={p.in_channels}, "
                    f"out_channels={p.out_channels}")
        return None
    return f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}"


ALGORITHMS = ("direct", "im2col", "pointwise", "winograd_f23", "depthwise", "dilated_s2b")


def estimated_ms(algorithm: str, p: ConvParams) -> float:
    """Rough time in ms on one core (see the module docstring)."""
    oh, ow = p.out_size
    cg, kg = p.in_channels // p.groups, p.out_channels // p.groups
    kh, kw = p.kernel
    pixels = p.batch * oh * ow
    flops = 2.0 * p.macs
    if algorithm == "direct":
        return flops / _DIRECT_GFLOPS / 1e6
    if algorithm == "im2col":
        col_bytes = 4.0 * p.groups * cg * kh * kw * pixels * 2  # written once, read once
        return flops / _GEMM_GFLOPS / 1e6 + col_bytes / _MEMORY_GBS / 1e6
    if algorithm == "pointwise":
        return flops / _GEMM_GFLOPS / 1e6
    if algorithm in ("winograd_f23", "dilated_s2b"):
        tiles = p.batch * -(-oh // 2) * -(-ow // 2)
        gemm = 2.0 * 16 * p.groups * kg * cg * tiles
        transform_bytes = 4.0 * 16 * tiles * p.groups * (cg + kg) * 2
        return gemm / _GEMM_GFLOPS / 1e6 + transform_bytes / _MEMORY_GBS / 1e6
    if algorithm == "depthwise":
        return flops / _DEPTHWISE_GFLOPS / 1e6
    raise ValueError(f"unknown algorithm {algorithm!r}")


def conv2d_candidates(p: ConvParams) -> list[tuple[str, float]]:
    """Every algorithm that can run the layer, with its estimated time in ms."""
    return [(a, estimated_ms(a, p)) for a in ALGORITHMS if why_not(a, p) is None]


def choose_conv2d(p: ConvParams) -> tuple[str, str]:
    """The ordered rules. The first that matches decides."""
    cg, kg = p.in_channels // p.groups, p.out_channels // p.groups
    if _is_depthwise(p):
        return "depthwise", "groups == in_channels: one small filter per channel, no GEMM to feed"
    if _is_pointwise(p):
        return "pointwise", "1x1 stride-1 unpadded: the convolution is one GEMM on the input"
    if p.kernel == (3, 3) and p.stride == (1, 1) and min(cg, kg) >= WINOGRAD_MIN_CHANNELS:
        if p.dilation == (1, 1):
            return "winograd_f23", ("3x3 stride 1: Winograd F(2x2,3x3) needs 2.25x fewer "
                                    "multiplications than im2col")
        return "dilated_s2b", (f"3x3 stride 1 dilation {p.dilation[0]}x{p.dilation[1]}: the "
                               "phase sub-images take Winograd F(2x2,3x3), 2.25x fewer "
                               "multiplications than im2col")
    if p.kernel == (3, 3) and p.stride == (1, 1):
        return "im2col", (f"3x3 stride 1 but only {min(cg, kg)} channels per group: Winograd's "
                          f"transforms would cost more than they save")
    return "im2col", "general case: im2col + sgemm handles any stride, padding and dilation"
