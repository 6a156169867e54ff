"""Which algorithm runs a 2-D convolution, and why: ordered rules on the layer's parameters, the
first that matches deciding, each returning (algorithm, one-line reason).

Plans call ``choose_conv2d`` once, store the answer and never decide again; ``why_not`` says
whether a forced algorithm can run the layer. ``conv2d_candidates`` lists every algorithm able to
run the layer with a rough cost estimate, for ``explain()``: time = arithmetic / sustained rate +
memory traffic / bandwidth. The rules, not the estimates, make the choice. The thresholds were
measured with bench/bench_dispatch.py (its conv/ groups), which times the algorithms side by
side on the layers around each threshold.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

from .winograd import TILE_ALGORITHMS, rank_winograd_tiles, tile_cost_ms

# Sustained one-core rates, only for ranking the candidates explain() lists (the rules choose);
# bench/bench_conv2d.py --algorithm NAME prints each algorithm's GFLOP/s.
# Environment variable that makes the rules take another vector width than the build's (the
# tests set 16 to check the AVX-512 rules on any machine, their worker processes too).
ASSUME_VECTOR_FLOATS_ENV = "CONVENGINE_ASSUME_VECTOR_FLOATS"


def vector_floats() -> int:
    """Floats per vector register the rules take the kernels to be built for: the build's
    (16 with AVX-512, 8 with AVX2), or CONVENGINE_ASSUME_VECTOR_FLOATS where set."""
    from .._kernels import _info
    assumed = os.environ.get(ASSUME_VECTOR_FLOATS_ENV, "")
    return int(assumed) if assumed.isdigit() else _info.vector_floats()


_GEMM_GFLOPS = 150.0             # the packed GEMM micro-kernel inside whole layers
_DIRECT_GFLOPS = 1.5             # the plain loops
_DEPTHWISE_GFLOPS = 25.0         # the depthwise and separable kernels
_DIRECT_BLOCKED_GFLOPS = 150.0   # register-blocked direct loops, where the rules choose them
_MEMORY_GBS = 12.0               # the data an algorithm moves besides its GEMM
_LAYOUT_GBS = 40.0               # NCHW <-> blocks of a tensor in cache (layout/convert)
_FFT_GFLOPS = 8.0                # scipy.fft real 2-D transforms (2.5 n log2 n), with the copies
_SPECTRAL_MAC_GFLOPS = 40.0      # per-frequency complex products, when not bound by memory

# auto never picks fft for a layer whose weight spectrum is larger (kept per input size, read
# whole at every call); it admits 64->64 15x15 on 128x128 (344 MB; bench_dispatch.py conv/fft).
FFT_MAX_SPECTRUM_BYTES = 512 << 20

# Below this many channels per group Winograd's per-tile transforms cost more than the
# multiplications they save (bench/bench_dispatch.py conv/winograd_min).
WINOGRAD_MIN_CHANNELS = 8
# Undilated 3x3 layers take the tile the cost model of engine/dispatch/winograd.py picks;
# dilated ones F(4x4,3x3) from this many channels per group, where their phase sub-images
# allow (bench/bench_dispatch.py conv/winograd_tile).
F43_MIN_CHANNELS_DILATED = 256
# Dilated 3x3 layers: F(4x4,3x3) needs phase sub-images (output side / dilation) of at least
# this many pixels, any Winograd at least DILATED_MIN_PHASE_SIDE, else im2col is faster
# (bench/bench_dispatch.py conv/dilated_phases: 960->256 14x14 at rates 4-12, 512->256 28x28
# at 4-12).
F43_MIN_PHASE_SIDE = 5
DILATED_MIN_PHASE_SIDE = 1.5

# Where direct_blocked (register-resident sums, no column matrix) beats im2col and Winograd,
# by channels per group and output width (bench/bench_dispatch.py conv/direct_blocked):
# up to 64 input and 128 output channels, beyond which the GEMM's panels are thick enough;
DIRECT_BLOCKED_MAX_IN = 64
DIRECT_BLOCKED_MAX_OUT = 128
# 1x1 (strided) layers only up to 32 channels, where the GEMM's panels are too thin;
DIRECT_BLOCKED_MAX_POINTWISE = 32
# 3x3 stride 1 only while Winograd would have at most 32 channels on one side;
DIRECT_BLOCKED_MAX_WINOGRAD = 32
# outputs from 28 columns (two 16-float vectors, little waste; narrower ones not measured);
DIRECT_BLOCKED_MIN_WIDTH = 28
# with 8-float vectors (AVX2) from 7 columns: on 7- and 14-wide outputs it took half the time
# of Winograd F(2x2) and two thirds of im2col's, grouped (RegNet's 8 channels per group) or
# not (bench/bench_dispatch.py conv/direct_blocked);
DIRECT_BLOCKED_MIN_WIDTH_NARROW = 7
# but there, on 3x3 stride-1 layers Winograd can run, only to outputs this wide, grouped or at
# most 16 channels a side: on 112-wide maps F(2x2) took 2.5 ms against 3.5 (32->32, 16->64)
DIRECT_BLOCKED_NARROW_WINOGRAD_WIDTH = 28
# strided layers with >= 48 input channels only to outputs this wide: narrower, im2col wins.
DIRECT_BLOCKED_STRIDED_WIDTH = 56
# Strided one-group layers that the dense channel-blocked tiles run from NCHW to NCHW
# (16-float builds), from this many input channels (3->64 7x7 took 2.7 ms there against
# direct_blocked's 2.2): band by band (blocked_bands) while the weights, which each band reads
# again, take at most BANDS_MAX_WEIGHT_BYTES and the output rows fill tiles, from
# BANDS_MIN_WIDTH (64->128 3x3 stride 2 on 56x56, 295 KB: 1.05 ms against im2col's 1.20, and
# the whole layer's 1.07); else the whole layer on a padded copy, its tiles across rows
# (blocked_dense; 128->256 on 28x28, 1.2 MB: 1.06 against the bands' 1.12 and im2col's 1.32;
# 256->512 on 14x14, 4.7 MB: 1.05 against 1.27 and 1.47; 96->96 on 28x28: 0.32 against 0.38
# and 0.44) (bench/bench_dispatch.py conv/blocked_bands, one thread).
BANDS_MIN_IN = 16
BANDS_MAX_WEIGHT_BYTES = 1 << 20
BANDS_MIN_WIDTH = 28
# A dilated layer computed tap by tap where each tap reads the input (live_taps) when at most
# this fraction of its tap-output pairs do: it wins from 0.66 (rate 4 on 14x14, rate 8 on
# 28x28) down, and at 0.18 (rate 12 on 14x14, DeepLabV3's ASPP on MobileNetV3) takes a fifth
# of im2col's time; at 0.74 the phase algorithms tie with it (bench/bench_dispatch.py
# conv/live_taps).
LIVE_TAPS_MAX_FRACTION = 0.66
# ... and its live products are at least this many multiply-adds: below, its per-tap set-up
# (a copy and a GEMM call for each of the nine taps) costs more than im2col's waste.
LIVE_TAPS_MIN_MACS = 1 << 20

class ConvParams(NamedTuple):
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
        from ..shapes import conv_output_size
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


def is_depthwise(p: ConvParams) -> bool:
    return p.groups > 1 and p.groups == p.in_channels and p.out_channels % p.groups == 0


def is_pointwise(p: ConvParams) -> bool:
    return (p.kernel == (1, 1) and p.stride == (1, 1)
            and (p.pads is None or p.pads == ((0, 0), (0, 0))))


ALGORITHMS = ("direct", "im2col", "pointwise", "winograd_f23", "winograd_f43", "winograd_f63",
              "depthwise",
              "dilated_s2b", "separable", "fft", "direct_blocked", "live_taps",
              "blocked_bands", "blocked_dense", "blocked_winograd")


def _why_not_blocked_build() -> Optional[str]:
    from .layout import blocked_layout_pays
    pays, why = blocked_layout_pays()
    return None if pays else why


def why_not(algorithm: str, p: ConvParams) -> Optional[str]:
    """None if ``algorithm`` can run the layer, else the reason it cannot."""
    if algorithm in ("direct", "im2col", "live_taps"):
        return None
    if algorithm == "blocked_winograd":
        from .layout import groups_fill_blocks
        if p.kernel != (3, 3) or p.stride != (1, 1):
            return (f"blocked_winograd needs a 3x3 kernel and stride 1, got "
                    f"{p.kernel[0]}x{p.kernel[1]} stride {p.stride}")
        from .._kernels.nchwc import BLOCK
        if p.groups != 1 and not groups_fill_blocks(p):
            return (f"blocked_winograd needs one group or groups of whole channel blocks "
                    f"(multiples of {BLOCK} channels each way), got {p.in_channels}->"
                    f"{p.out_channels} in {p.groups} groups")
        return _why_not_blocked_build()
    if algorithm in ("blocked_bands", "blocked_dense"):
        from .layout import groups_fill_blocks
        grouped = algorithm == "blocked_dense"
        if p.groups != 1 and not (grouped and groups_fill_blocks(p)):
            takes = "one group or groups of whole channel blocks" if grouped else "one group"
            return (f"{algorithm} runs {takes}, got {p.in_channels}->{p.out_channels} in "
                    f"{p.groups} groups")
        return _why_not_blocked_build()
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
    if algorithm in ("winograd_f23", "dilated_s2b", "winograd_f43", "winograd_f63"):
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
        if not is_depthwise(p):
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


# -- cost estimates for explain() -------------------------------------------------------------

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
    layer's weight spectrum (K * Cg complex values per frequency) from memory at batch 1."""
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
    if algorithm in ("winograd_f23", "dilated_s2b", "winograd_f43", "winograd_f63"):
        # the tile cost model of engine/dispatch/winograd.py
        m = {"winograd_f43": 4, "winograd_f63": 6}.get(algorithm, 2)
        return tile_cost_ms(m, cg, kg, p.groups, winograd_tiles(p, m))
    if algorithm == "depthwise":
        return flops / _DEPTHWISE_GFLOPS / 1e6
    if algorithm == "direct_blocked":
        # blocks of output channels and whole vectors of output columns: the partial ones
        # compute zeros at full cost
        from .._kernels.conv_direct_blocked import BLOCK_CHANNELS as kb, VECTOR_FLOATS as vw
        waste = (-(-kg // kb) * kb / kg) * (-(-ow // vw) * vw / ow)
        return flops * waste / _DIRECT_BLOCKED_GFLOPS / 1e6
    if algorithm == "blocked_winograd":
        from .winograd import choose_blocked_tile
        from .._kernels.nchwc_winograd import layer_tiles
        m = choose_blocked_tile(p.in_channels, p.out_channels, p.batch, (oh, ow), p.dilation,
                                p.groups)[0]
        ih, iw = p.in_size or (oh, ow)
        moved = 4.0 * p.batch * (p.in_channels * ih * iw + p.out_channels * oh * ow)
        return (tile_cost_ms(m, cg, kg, p.groups, layer_tiles(p.batch, oh, ow, m, *p.dilation),
                             True) + moved / _LAYOUT_GBS / 1e6)
    if algorithm in ("blocked_bands", "blocked_dense"):
        # output channels in whole blocks; the input and the output change layout once each
        from .._kernels.nchwc import BLOCK
        waste = -(-kg // BLOCK) * BLOCK / kg
        ih, iw = p.in_size or (oh * p.stride[0], ow * p.stride[1])
        moved = 4.0 * p.batch * (p.in_channels * ih * iw + p.out_channels * oh * ow)
        return flops * waste / _DIRECT_BLOCKED_GFLOPS / 1e6 + moved / _LAYOUT_GBS / 1e6
    if algorithm == "separable":
        # R*(kh + kw) instead of kh*kw multiply-adds; a slice that is not rank 1 is taken at
        # full rank, the worst case
        rank = 1 if p.rank1_kernels else min(kh, kw)
        return 2.0 * pixels * p.out_channels * rank * (kh + kw) / _DEPTHWISE_GFLOPS / 1e6
    if algorithm == "fft":
        return _fft_ms(p)
    if algorithm == "live_taps":
        # the live pairs' products, and a copy of the input pixels each tap reads
        live = live_fraction(p)
        moved = 4.0 * p.batch * p.in_channels * kh * kw * oh * ow * live * 2
        return flops * live / _GEMM_GFLOPS / 1e6 + moved / _MEMORY_GBS / 1e6
    raise ValueError(f"unknown algorithm {algorithm!r}")


def conv2d_candidates(p: ConvParams) -> list[tuple[str, float]]:
    """Every algorithm that can run the layer, with its estimated time in ms."""
    return [(a, estimated_ms(a, p)) for a in ALGORITHMS if why_not(a, p) is None]


# -- the rules ---------------------------------------------------------------------------------

def winograd_tiles(p: ConvParams, m: int) -> int:
    """Tiles of m x m outputs over every image and phase sub-image of the layer's output."""
    from ..shapes import phase_tiles
    oh, ow = p.out_size
    return p.batch * sum(phase_tiles(oh, p.dilation[0], m)) * sum(
        phase_tiles(ow, p.dilation[1], m))


def live_fraction(p: ConvParams) -> float:
    """The fraction of a layer's (tap, output) pairs whose input pixel lies inside the map
    (1.0 when the input size is not known)."""
    if p.in_size is None or p.pads is None:
        return 1.0
    from ..shapes import live_outputs
    frac = 1.0
    for i, o, k, s, (pb, _), d in zip(p.in_size, p.out_size, p.kernel, p.stride, p.pads,
                                      p.dilation):
        live = sum(hi - lo for lo, hi in (live_outputs(i, o, s, pb, t * d)
                                          for t in range(k)))
        frac *= live / max(1, k * o)
    return frac


def _blocked_strided(p: ConvParams) -> Optional[str]:
    """Where bench/bench_dispatch.py conv/blocked_bands puts the blocked tiles ahead: strided,
    not 1x1, BANDS_MIN_IN input channels or more; "blocked_bands" for weights of at most
    BANDS_MAX_WEIGHT_BYTES on outputs of BANDS_MIN_WIDTH columns or more, else
    "blocked_dense"; None elsewhere."""
    if not (p.groups == 1 and p.stride != (1, 1) and p.kernel != (1, 1)
            and p.in_size is not None and vector_floats() >= 16
            and p.in_channels >= BANDS_MIN_IN):
        return None
    weight_bytes = 4 * p.in_channels * p.out_channels * p.kernel[0] * p.kernel[1]
    if weight_bytes <= BANDS_MAX_WEIGHT_BYTES and p.out_size[1] >= BANDS_MIN_WIDTH:
        return "blocked_bands"
    return "blocked_dense"


def _direct_blocked_wins(p: ConvParams) -> bool:
    """Where bench/bench_dispatch.py conv/direct_blocked puts direct_blocked ahead. Dilated
    and unsized layers were not measured and keep their algorithms, as do the fft rule's large
    stride-1 kernels."""
    cg, kg = p.in_channels // p.groups, p.out_channels // p.groups
    kh, kw = p.kernel
    if p.in_size is None:
        return False   # the width decides how much of the vectors is waste: not guessed
    wide = vector_floats() >= 16
    min_width = DIRECT_BLOCKED_MIN_WIDTH if wide else DIRECT_BLOCKED_MIN_WIDTH_NARROW
    if p.dilation != (1, 1) or p.out_size[1] < min_width:
        return False
    # blocks of 8 output channels never span groups: fewer than 8 per group leaves lanes idle
    if p.groups > 1 and kg < 8:
        return False
    if cg > DIRECT_BLOCKED_MAX_IN or kg > DIRECT_BLOCKED_MAX_OUT:
        return False
    # 1x1: with 8-float vectors im2col won even 16->32 on 224x224 (0.38 vs 0.50 ms, same bench)
    if p.kernel == (1, 1):
        return wide and max(cg, kg) <= DIRECT_BLOCKED_MAX_POINTWISE
    if p.kernel == (3, 3) and p.stride == (1, 1) and min(cg, kg) >= WINOGRAD_MIN_CHANNELS:
        if not wide and p.out_size[1] > DIRECT_BLOCKED_NARROW_WINOGRAD_WIDTH \
                and p.groups == 1 and max(cg, kg) > 16:
            return False
        return min(cg, kg) <= DIRECT_BLOCKED_MAX_WINOGRAD
    if p.stride == (1, 1) and min(kh, kw) >= 7 and min(cg, kg) >= 8:
        return False   # the fft rule's domain
    if p.stride != (1, 1) and p.out_size[1] < DIRECT_BLOCKED_STRIDED_WIDTH and cg >= 48:
        return False
    return True


def choose_conv2d(p: ConvParams, exclude=frozenset()) -> tuple[str, str]:
    """The ordered rules. The first that matches decides, skipping algorithms in ``exclude``
    (accuracy="strict" keeps engine/dispatch/policy.py STRICT_EXCLUDED out). Never chosen:
    "direct" (the reference loops and the float64 path)."""
    for algorithm, reason in _rules(p, exclude):
        if algorithm not in exclude:
            return algorithm, reason
    return "im2col", "general case: im2col + GEMM handles any stride, padding and dilation"


def choose_nchw_kernels(p: ConvParams, exclude=frozenset()) -> tuple[str, str]:
    """choose_conv2d among the algorithms that run on NCHW itself, without a layout change
    to channel blocks: what a layer would run if it did not run blocked (engine/dispatch/
    layout.py asks it)."""
    return choose_conv2d(p, frozenset(exclude) | BLOCKED_ALGORITHMS)


# The algorithms that change the layout to channel blocks and back around the layer.
BLOCKED_ALGORITHMS = frozenset({"blocked_bands", "blocked_dense", "blocked_winograd"})


def _blocked_dense_on_8_floats(p: ConvParams) -> bool:
    """On 8-float (AVX2) builds, whether a layer runs faster on the dense blocked tiles with a
    layout change each way than by the NCHW algorithms: wherever a graph would give it the
    dense blocked kernel (engine/dispatch/layout.py blocked_kernel). One thread, against ONNX
    Runtime's Conv alone: strided 3x3 layers (16->32 to 512->512) 1.10-1.32x against 1.3-3.3x
    by im2col or direct_blocked, stride-1 3x3 of 8 to 64 channels and 5x5 1.06-1.27x against
    1.33-1.97x, RegNet's and ResNeXt's grouped 3x3 on 14x14 and 7x7 1.07-1.18x against
    1.5-1.8x by direct_blocked (bench/bench_conv2d.py --algorithm)."""
    from .layout import blocked_kernel, blocked_layout_pays
    return (vector_floats() < 16 and p.in_size is not None and p.pads is not None
            and blocked_layout_pays()[0] and blocked_kernel(p)[0] == "dense")


def _rules(p: ConvParams, exclude=frozenset()):
    """(algorithm, reason) of every rule that matches, in order; the last always does. The
    8-float blocked_dense rule, which asks the layout rules (which ask choose_nchw_kernels),
    is skipped when ``exclude`` holds blocked_dense."""
    cg, kg = p.in_channels // p.groups, p.out_channels // p.groups
    kh, kw = p.kernel
    # Rank-1 filters (Gaussian, Sobel, box) on one input channel per group: the two passes beat
    # im2col at any size and the depthwise kernel from 5x5 on; at 3x3 (and 1xk / kx1, nothing
    # to factor) the depthwise kernel is as fast (bench/bench_dispatch.py conv/separable).
    if p.rank1_kernels and cg == 1 and min(kh, kw) >= 2 and (min(kh, kw) >= 5
                                                              or not is_depthwise(p)):
        yield "separable", (f"every {kh}x{kw} slice is rank 1: a {kh}x1 then a 1x{kw} pass, "
                            f"{kh + kw} instead of {kh * kw} multiply-adds per output")
    if is_depthwise(p):
        yield "depthwise", "groups == in_channels: one small filter per channel, no GEMM to feed"
    if is_pointwise(p):
        yield "pointwise", "1x1 stride-1 unpadded: the convolution is one GEMM on the input"
    if p.groups > 1 and p.kernel == (3, 3) and p.stride == (1, 1):
        from .layout import winograd_blocked
        if winograd_blocked(p, alone=True):
            yield "blocked_winograd", (f"3x3 stride 1 in {p.groups} groups of {cg}->{kg} "
                                       f"channels, whole channel blocks: Winograd on blocks, "
                                       f"a group at a time, the layout changed around it")
    if "blocked_dense" not in exclude and _blocked_dense_on_8_floats(p):
        yield "blocked_dense", (f"{cg}->{kg} channels {kh}x{kw} stride {p.stride[0]}x"
                                f"{p.stride[1]} in {p.groups} group(s): the dense "
                                f"channel-blocked tiles (8-float build), the layout changed "
                                f"around them")
    blocked_strided = _blocked_strided(p)
    if blocked_strided == "blocked_bands":
        yield "blocked_bands", (f"{cg}->{kg} channels, stride {p.stride[0]}x{p.stride[1]}: the "
                                f"channel-blocked tiles, each band of rows moved to blocks and "
                                f"back by the thread that computes it")
    elif blocked_strided == "blocked_dense":
        yield "blocked_dense", (f"{cg}->{kg} channels, stride {p.stride[0]}x{p.stride[1]}: the "
                                f"channel-blocked tiles over the whole layer, across its rows "
                                f"(weights past {BANDS_MAX_WEIGHT_BYTES >> 20} MiB or an "
                                f"output under {BANDS_MIN_WIDTH} wide)")
    if _direct_blocked_wins(p):
        yield "direct_blocked", (f"{cg}->{kg} channels on a {p.out_size[1]}-wide output: "
                                 f"direct loops with register-resident sums beat a GEMM "
                                 f"fed by a column matrix as large as its arithmetic")
    # Dilated past most of the map: the taps' live outputs only, one GEMM per tap
    live = live_fraction(p)
    if (p.dilation != (1, 1) and live <= LIVE_TAPS_MAX_FRACTION
            and p.macs * live >= LIVE_TAPS_MIN_MACS):
        yield "live_taps", (f"dilation {p.dilation[0]}x{p.dilation[1]} on a "
                            f"{p.in_size[0]}x{p.in_size[1]} input: {live:.0%} of the tap-output "
                            f"pairs read the input, one GEMM per tap over those")
    # A rate-d layer's phase sub-images are about out/d pixels a side: below one F(4x4) tile
    # and a bit F(4x4,3x3) pads more than it saves, and below 1.5 even F(2x2,3x3)'s do
    # (bench/bench_dispatch.py conv/dilated_phases)
    phase_side = min(o / d for o, d in zip(p.out_size, p.dilation))
    if (p.kernel == (3, 3) and p.stride == (1, 1) and p.dilation != (1, 1)
            and phase_side < DILATED_MIN_PHASE_SIDE):
        yield "im2col", (f"3x3 dilation {p.dilation[0]}x{p.dilation[1]} on a "
                         f"{p.out_size[0]}x{p.out_size[1]} output: phase sub-images of about "
                         f"{phase_side:.1f} pixels a side, where Winograd tiles would be "
                         f"mostly padding")
    if p.kernel == (3, 3) and p.stride == (1, 1) and min(cg, kg) >= WINOGRAD_MIN_CHANNELS:
        if p.dilation == (1, 1):
            # the tile by the cost model of engine/dispatch/winograd.py, cheapest first
            for m, _, reason in rank_winograd_tiles(cg, kg, p.groups,
                                                    lambda m: winograd_tiles(p, m)):
                yield TILE_ALGORITHMS[m], f"3x3 stride 1, {cg}->{kg} channels: {reason}"
        else:
            # F(4x4,3x3) takes any dilation itself, on wide layers with large enough phases
            if min(cg, kg) >= F43_MIN_CHANNELS_DILATED and phase_side >= F43_MIN_PHASE_SIDE:
                yield "winograd_f43", (f"3x3 stride 1 with {cg}->{kg} channels on a "
                                       f"{p.out_size[0]}x{p.out_size[1]} output: Winograd "
                                       f"F(4x4,3x3) on the phase sub-images, with this many "
                                       f"channels its larger transforms cost less than its "
                                       f"1.8x fewer products save")
            yield "dilated_s2b", (f"3x3 stride 1 dilation {p.dilation[0]}x{p.dilation[1]}: the "
                                  "phase sub-images take Winograd F(2x2,3x3), 2.25x fewer "
                                  "multiplications than im2col")
    if p.kernel == (3, 3) and p.stride == (1, 1):
        yield "im2col", (f"3x3 stride 1 but only {min(cg, kg)} channels per group: Winograd's "
                         f"transforms would cost more than they save")
    # FFT from 7x7 with at least 8 channels on each side: with fewer input channels the output
    # planes' transforms dominate, and 5x5 is too close to im2col to call
    # (bench/bench_dispatch.py conv/fft)
    if (p.stride == (1, 1) and p.dilation == (1, 1) and min(kh, kw) >= 7
            and min(cg, kg) >= 8 and fft_spectrum_bytes(p) <= FFT_MAX_SPECTRUM_BYTES):
        yield "fft", (f"{kh}x{kw} stride 1 with {cg}->{kg} channels per group: FFT convolution "
                      f"costs O(log HW) per pixel instead of O({kh * kw})")
    yield "im2col", "general case: im2col + GEMM handles any stride, padding and dilation"


def drop_padding_taps(in_size, kernel, stride, pads, dilation):
    """For one input size: the kernel's rows and columns that can only ever read padding are
    dropped, with the padding shrunk so that the output keeps its size and values. Returns
    ((first row, last row), (first col, last col), new pads, reason), or None when every tap
    may read the input (or when dropping would need negative padding, which no kernel takes)."""
    from ..shapes import live_window
    keep, new_pads = [], []
    for i, k, s, (pb, pe), d in zip(in_size, kernel, stride, pads, dilation):
        first, last, nb, ne = live_window(i, k, s, pb, pe, d)
        keep.append((first, last))
        new_pads.append((nb, ne))
    sizes = tuple(last - first + 1 for first, last in keep)
    if sizes == tuple(kernel):
        return None
    dropped = math.prod(kernel) - math.prod(sizes)
    reason = (f"{dropped} of {math.prod(kernel)} taps read only padding at "
              f"{in_size[0]}x{in_size[1]} with dilation {tuple(dilation)}: run as "
              f"{sizes[0]}x{sizes[1]}")
    return keep[0], keep[1], tuple(new_pads), reason
