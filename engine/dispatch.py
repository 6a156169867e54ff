"""Which convolution algorithm runs a layer, and why: one pure function of the layer's
parameters, ordered rules, each returning (algorithm, one-line reason).

Plans call ``choose_conv2d`` once, store the answer and never decide again. ``conv2d_candidates``
lists every algorithm able to run the layer with a rough cost estimate, for ``explain()``.
The cost model is deliberately simple (time = arithmetic / sustained rate + memory traffic /
bandwidth, rates measured on the reference machine with bench/bench_conv2d.py); the rules, not
the estimates, make the choice, and the rules' thresholds come from the same benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

# Sustained rates on one core, from bench/bench_conv2d.py (GFLOP/s of the arithmetic an
# algorithm really performs, and GB/s for the data it moves besides the GEMM). They only rank
# the candidates that explain() lists; the rules below choose. The GEMM rate is the packed
# micro-kernel's inside whole layers (120-190 GFLOP/s measured on an AVX-512 core).
_GEMM_GFLOPS = 150.0
_DIRECT_GFLOPS = 1.5
_DEPTHWISE_GFLOPS = 25.0
# Register-blocked direct convolution on one Zen 5 core, bench side by side with ONNX Runtime:
# 140-190 GFLOP/s on the layers of the direct_blocked rule's table (choose_conv2d).
_DIRECT_BLOCKED_GFLOPS = 150.0
_MEMORY_GBS = 12.0
# The fft path: scipy.fft real 2-D transforms counted as 2.5*n*log2(n) flops (about 10 GFLOP/s
# measured, 8 with the padding and copies), and the per-frequency complex products, which
# stream the weight spectrum from memory at batch 1 and are arithmetic-bound only for batches.
_FFT_GFLOPS = 8.0
_SPECTRAL_MAC_GFLOPS = 40.0
# Auto never picks fft for a layer whose weight spectrum exceeds this: it is kept per input
# size and read whole at every call. The largest layer measured, 64->64 15x15 on 128x128 (10x
# faster than im2col), needs 344 MB.
FFT_MAX_SPECTRUM_BYTES = 512 << 20

# Winograd pays a transform per tile and channel; below this many channels per group the
# transforms cost more than the multiplications they save (bench/bench_conv2d.py, c3 and c16 rows).
WINOGRAD_MIN_CHANNELS = 8
# From this many channels per group (in and out) F(4x4,3x3) beats F(2x2,3x3) (see the rule).
WINOGRAD_F43_MIN_CHANNELS = 256


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
    # every kernel slice numerically rank 1 (engine.ops.separable.rank1_kernels); only computed,
    # from the weights, for layers with one input channel per group, the ones separable runs
    rank1_kernels: bool = False

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


# Largest number of taps (input channels per group x kernel size) of a dense layer that the graph
# runner lets read NCHW and write channel blocks directly (kernels/_nchwc.h), in place of its
# NCHW algorithm and a layout change: a network's first layer. MobileNet's 3->32 3x3 stride 2 to
# 112x112: 0.10 ms at two threads, against 0.19 ms for direct_blocked plus 0.13 ms for the
# layout change.
BLOCKED_DIRECT_MAX_TAPS = 32


def blocked_kind(p: ConvParams) -> Optional[str]:
    """The channel-blocked kernel (kernels/_nchwc.h) that can run the layer where the graph
    runner keeps its neighbours in the blocked layout (engine/graph/layout.py): "pointwise"
    (the pointwise rule, one group), "depthwise" (multiplier 1, any kernel, stride, dilation,
    padding), "direct" (one group, at most BLOCKED_DIRECT_MAX_TAPS taps), or None."""
    if _is_pointwise(p) and p.groups == 1:
        return "pointwise"
    if _is_depthwise(p) and p.out_channels == p.in_channels:
        return "depthwise"
    if p.groups == 1 and p.in_channels * p.kernel[0] * p.kernel[1] <= BLOCKED_DIRECT_MAX_TAPS:
        return "direct"
    return None


def why_not(algorithm: str, p: ConvParams) -> Optional[str]:
    """None if ``algorithm`` can run the layer, else the reason it cannot."""
    if algorithm in ("direct", "im2col"):
        return None
    if algorithm == "direct_blocked":
        # the tap offsets and stride phases of one row live in fixed arrays in the kernel
        if p.kernel[1] > 64 or p.stride[1] > 64:
            return (f"direct_blocked handles kernel widths and strides up to 64, got "
                    f"{p.kernel[1]} and {p.stride[1]}")
        return None
    if algorithm == "pointwise":
        if p.kernel != (1, 1):
            return f"pointwise needs a 1x1 kernel, got {p.kernel[0]}x{p.kernel[1]}"
        if p.stride != (1, 1):
            return f"pointwise needs stride 1, got {p.stride}"
        if p.pads is not None and p.pads != ((0, 0), (0, 0)):
            return "pointwise needs zero padding"
        return None
    if algorithm in ("winograd_f23", "dilated_s2b", "winograd_f43"):
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
    if algorithm == "separable":
        if p.in_channels // p.groups != 1:
            return (f"separable needs one input channel per group (groups == in_channels), got "
                    f"{p.in_channels // p.groups}: a layer summing over several input channels "
                    f"does not factor into a kx1 and a 1xk convolution even when every slice is "
                    f"rank 1, since each (out, in) pair would need its own intermediate")
        return None
    if algorithm == "fft":
        if p.stride != (1, 1):
            return f"fft needs stride 1, got {p.stride}"
        if p.dilation != (1, 1):
            return f"fft needs dilation 1, got {p.dilation}"
        return None
    return f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}"


ALGORITHMS = ("direct", "im2col", "pointwise", "winograd_f23", "winograd_f43", "depthwise",
              "dilated_s2b", "separable", "fft", "direct_blocked")


def _fft_plane(p: ConvParams) -> tuple[int, int]:
    """The padded input plane the fft path transforms (stride 1, dilation 1)."""
    oh, ow = p.out_size
    return oh + p.kernel[0] - 1, ow + p.kernel[1] - 1


def fft_spectrum_bytes(p: ConvParams) -> int:
    """Size of the fft path's complex64 weight spectrum for this layer and input size."""
    fh, fw = _fft_plane(p)
    return 8 * p.out_channels * (p.in_channels // p.groups) * fh * (fw // 2 + 1)


def _fft_ms(p: ConvParams) -> float:
    """FFT convolution: real FFTs of the padded input planes and of the output planes, plus
    the per-frequency complex multiply-accumulate over input channels, which streams the
    layer's weight spectrum (K * Cg complex values per frequency) from memory."""
    fh, fw = _fft_plane(p)
    plane = fh * fw
    fft_flops = (2.5 * plane * math.log2(max(plane, 2)) * p.batch
                 * (p.in_channels + p.out_channels))
    spectrum_bytes = fft_spectrum_bytes(p)
    mac_flops = p.batch * spectrum_bytes          # 8 flops per complex64 weight and image
    return (fft_flops / _FFT_GFLOPS
            + max(mac_flops / _SPECTRAL_MAC_GFLOPS, spectrum_bytes / _MEMORY_GBS)) / 1e6


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
    if algorithm == "winograd_f43":
        # 36 products per 4x4 tile; each call also streams the 36 transformed weight matrices
        # (each GEMM work item reads them once), which is why it loses to F(2,3) on few channels
        tiles = p.batch * -(-oh // 4) * -(-ow // 4)
        gemm = 2.0 * 36 * p.groups * kg * cg * tiles
        moved = 4.0 * 36 * (tiles * p.groups * (cg + kg) * 2 + p.groups * kg * cg)
        return gemm / _GEMM_GFLOPS / 1e6 + moved / _MEMORY_GBS / 1e6
    if algorithm == "depthwise":
        return flops / _DEPTHWISE_GFLOPS / 1e6
    if algorithm == "direct_blocked":
        # blocks of 8 output channels and whole 16-float vectors of output columns: the partial
        # ones compute zeros at full cost
        waste = (-(-kg // 8) * 8 / kg) * (-(-ow // 16) * 16 / ow)
        return flops * waste / _DIRECT_BLOCKED_GFLOPS / 1e6
    if algorithm == "separable":
        # R*(kh + kw) instead of kh*kw multiply-adds; a slice that is not rank 1 is taken at
        # full rank, the worst case
        rank = 1 if p.rank1_kernels else min(kh, kw)
        return 2.0 * pixels * p.out_channels * rank * (kh + kw) / _DEPTHWISE_GFLOPS / 1e6
    if algorithm == "fft":
        return _fft_ms(p)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def conv2d_candidates(p: ConvParams) -> list[tuple[str, float]]:
    """Every algorithm that can run the layer, with its estimated time in ms."""
    return [(a, estimated_ms(a, p)) for a in ALGORITHMS if why_not(a, p) is None]


# direct_blocked vs the algorithm auto chose before it, and ONNX Runtime for scale: one thread,
# alternating runs, median of 15, batch 1, bias + relu, ms on a loaded 2-core Zen 5 (absolute
# figures drift between runs by up to 1.5x; the ratios within a row hold):
#   layer (out size)           direct_blocked   im2col   winograd_f23   ORT
#   7x7 3->16 224 s1 p3             1.15-1.31  3.8-4.5             -    1.57-2.15
#   3x3 3->16 224                        0.70     1.17          1.53    0.75
#   3x3 16->16 224                  1.50-1.68  4.0-5.0       2.9-3.5    1.74-2.2
#   3x3 32->32 112                  1.21-1.40     2.67          1.64    1.13-1.41
#   3x3 16->64 112                       1.23     1.93          1.77    1.31
#   3x3 64->16 112                       1.38     3.72          1.90    1.71
#   3x3 64->64 56                   1.36-1.64     1.77     0.94-1.14    1.05-1.20   winograd
#   3x3 128->128 28                      1.40     1.60          1.08    1.16        winograd
#   5x5 32->32 56                        0.96     2.02             -    0.94
#   3x3 s2 3->32 224 (112)          0.16-0.25     0.39             -    0.14-0.23
#   3x3 s2 16->32 224 (112)         0.81-1.25  2.1-2.35            -    0.68-1.20
#   3x3 s2 32->64 112 (56)          0.76-1.10  1.28-1.51           -    0.57-0.85
#   3x3 s2 64->128 56 (28)          0.75-1.10     1.04             -    0.54-0.68
#   3x3 s2 128->256 28 (14)              0.83     0.87             -    0.63        (a tie)
#   7x7 s2 3->64 224 (112)               1.38     2.61             -    1.37
#   1x1 s2 16->32 224 (112)         0.22-0.48     0.53             -    0.20-0.48
#   1x1 s2 64->128 56 (28)               0.20     0.14             -    0.11        im2col
#   1x1 s2 256->512 56 (28)              1.86     1.46             -    1.41        im2col
# Hence: any kernel but 1x1 up to 64 input and 128 output channels; 1x1 (strided) only up to
# 32 channels, where the GEMM's panels are too thin; 3x3 stride 1 only while Winograd has at
# most 32 channels on one side. Outputs narrower than 28 columns (two vectors of 16 with little
# waste) and grouped or dilated layers were not measured and keep their algorithms, as do the
# fft rule's large stride-1 kernels.
DIRECT_BLOCKED_MAX_IN = 64
DIRECT_BLOCKED_MAX_OUT = 128
DIRECT_BLOCKED_MAX_POINTWISE = 32
DIRECT_BLOCKED_MAX_WINOGRAD = 32
DIRECT_BLOCKED_MIN_WIDTH = 28
# Strided layers with at least 48 input channels per group and outputs narrower than this go
# to im2col (see _direct_blocked_wins).
DIRECT_BLOCKED_STRIDED_WIDTH = 56


def _direct_blocked_wins(p: ConvParams) -> bool:
    cg, kg = p.in_channels // p.groups, p.out_channels // p.groups
    kh, kw = p.kernel
    if p.in_size is None:
        return False   # the width decides how much of the vectors is waste: not guessed
    if p.dilation != (1, 1) or p.out_size[1] < DIRECT_BLOCKED_MIN_WIDTH:
        return False
    # grouped layers: blocks of 8 output channels never span groups, so fewer than 8 per group
    # leaves lanes idle. group3x3_g8_c128_28 (16 per group), bench/bench_conv2d.py, one thread:
    # direct_blocked 0.31 ms, winograd_f23 0.53, im2col 0.47, ORT 0.29 (2 threads: 0.18, 0.27,
    # 0.25, ORT 0.29)
    if p.groups > 1 and kg < 8:
        return False
    if cg > DIRECT_BLOCKED_MAX_IN or kg > DIRECT_BLOCKED_MAX_OUT:
        return False
    if p.kernel == (1, 1):
        return max(cg, kg) <= DIRECT_BLOCKED_MAX_POINTWISE
    if p.kernel == (3, 3) and p.stride == (1, 1) and min(cg, kg) >= WINOGRAD_MIN_CHANNELS:
        return min(cg, kg) <= DIRECT_BLOCKED_MAX_WINOGRAD
    if p.stride == (1, 1) and min(kh, kw) >= 7 and min(cg, kg) >= 8:
        return False   # the fft rule's domain
    if p.stride != (1, 1) and p.out_size[1] < DIRECT_BLOCKED_STRIDED_WIDTH and cg >= 48:
        # with im2col on the packed GEMM kernel (ms, one thread, alternating, im2col vs
        # direct_blocked): 3x3 s2 64->128 to 28x28 0.97 vs 1.10, 48->96 to 28x28 0.60 vs 0.64;
        # a tie to 56x56 (32->64 1.20 vs 1.18, 64->64 2.29 vs 2.25)
        return False
    return True


def choose_conv2d(p: ConvParams) -> tuple[str, str]:
    """The ordered rules. The first that matches decides."""
    cg, kg = p.in_channels // p.groups, p.out_channels // p.groups
    kh, kw = p.kernel
    # Rank-1 filters (Gaussian, Sobel, box) on one input channel per group, measured one thread
    # on a loaded machine, side by side, best of 5 (ms): single-channel 512x512, 3x3 separable
    # 0.10 vs im2col 1.2, 5x5 0.12 vs 1.9; depthwise 32 channels 112x112, 5x5 0.28 vs the
    # depthwise kernel 0.37-0.52, 7x7 0.33 vs 0.68-0.98, 5x5 multiplier 2 0.31 vs 0.38, but 3x3
    # 0.20 vs 0.17: the depthwise kernel keeps 3x3 (and 1xk / kx1: nothing to factor).
    if p.rank1_kernels and cg == 1 and min(kh, kw) >= 2 and (min(kh, kw) >= 5
                                                              or not _is_depthwise(p)):
        return "separable", (f"every {kh}x{kw} slice is rank 1: a {kh}x1 then a 1x{kw} pass, "
                             f"{kh + kw} instead of {kh * kw} multiply-adds per output")
    if _is_depthwise(p):
        return "depthwise", "groups == in_channels: one small filter per channel, no GEMM to feed"
    if _is_pointwise(p):
        return "pointwise", "1x1 stride-1 unpadded: the convolution is one GEMM on the input"
    if _direct_blocked_wins(p):
        return "direct_blocked", (f"{cg}->{kg} channels on a {p.out_size[1]}-wide output: "
                                  f"direct loops with register-resident sums beat a GEMM "
                                  f"fed by a column matrix as large as its arithmetic")
    if (p.kernel == (3, 3) and p.stride == (1, 1)
            and min(cg, kg) >= WINOGRAD_F43_MIN_CHANNELS):
        # one thread, alternating, ms F(2,3) vs F(4,3), both on the packed GEMM kernel:
        # 512->512 28x28 d1 11.7 vs 9.9, d2 12.7 vs 11.6, d4 15.8 vs 13.2; 256->512 d4 7.8 vs
        # 6.2; 256->256 d2 3.2 vs 2.9; but 128->128 28x28 0.97 vs 0.98, 64->64 56x56 1.1 vs 1.2
        return "winograd_f43", (f"3x3 stride 1 with {cg}->{kg} channels: Winograd F(4x4,3x3) "
                                f"needs 4x fewer multiplications than im2col (1.8x fewer than "
                                f"F(2x2,3x3)), and with this many channels its larger "
                                f"transforms cost less than that saves")
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
    # fft vs im2col, one thread, batch 1, loaded machine, best of 3-5 (time ratio fft/im2col):
    #   7x7:  8->8 64x64 0.50, 8->8 128x128 0.44, 16->16 128x128 0.31, 64->64 64x64 0.47,
    #         64->64 128x128 0.57-0.63, 32->32 56x56 0.20, 64->64 28x28 0.59, 128->128 14x14
    #         0.24, 16->4 128x128 0.78; but 4->32 128x128 1.3 and 3->64 128x128 about 4 (the
    #         output planes' transforms dominate when there are few input channels)
    #   9x9 64->64 groups 4, 64x64: 0.26;  11x11: 0.11-0.18;  15x15: 0.05-0.14
    #   5x5 16->16 64x64 0.92, 64->64 64x64 1.1-1.3: too close to call, left to im2col
    if (p.stride == (1, 1) and p.dilation == (1, 1) and min(kh, kw) >= 7
            and min(cg, kg) >= 8 and fft_spectrum_bytes(p) <= FFT_MAX_SPECTRUM_BYTES):
        return "fft", (f"{kh}x{kw} stride 1 with {cg}->{kg} channels per group: FFT convolution "
                       f"costs O(log HW) per pixel instead of O({kh * kw})")
    return "im2col", "general case: im2col + GEMM handles any stride, padding and dilation"


def choose_conv_transpose2d(stride) -> tuple[str, str]:
    """The rule for algorithm="auto", from side-by-side runs in one process at one thread
    (best of 15, on a shared 2-core Zen 4):
      convT4x4_s2_c64_56 (64->32, 56x56 -> 112x112, k4 s2 p1): col2im 1.66 ms, zero_insert
        9.24 ms (113x113 zero-inserted input, flipped kernel, im2col), ONNX Runtime 1.73 ms;
      3x3 stride 1, 64->64 at 56x56: col2im 2.08 ms, zero_insert 2.09 ms (the inner
        convolution then runs winograd_f23)."""
    if max(stride) > 1:
        return "col2im", (f"stride {tuple(stride)}: col2im multiplies only real input pixels; "
                          f"zero insertion would do {stride[0] * stride[1]}x the arithmetic")
    return "col2im", ("stride 1: as fast as the equivalent convolution and needs no padded copy "
                      "of the input")
