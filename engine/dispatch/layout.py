"""Which convolutions the graph runner keeps in the channel-blocked layout (NCHWc,
kernels/_nchwc.h), and how the blocked kernels split their work between threads. The graph
rewriting (layout changes, blocked steps) is engine/graph/layout.py's; the choices are here.

A layer can run blocked when a channel-blocked kernel computes it (``blocked_kernel``), and
does when a neighbour does too (``choose_layout``): converting costs a pass over the tensor,
which only a neighbour that reads or writes blocks saves. A caller may force a layout for a
whole model: ``engine.load(path, layout="nchw")`` runs everything on NCHW, ``"nchwc"`` every
layer a blocked kernel can run, neighbours or not.
"""
from __future__ import annotations

from typing import Optional

from .._kernels import nchwc_dense
from ..ops.activation import is_activation
from ..ops.blocked import BLOCK
from ..shapes import input_extent, window_pixels
from .conv import ConvParams, choose_nchw_kernels, drop_padding_taps, is_depthwise, vector_floats
from .gemm import gemm_columns
from .policy import current_policy

LAYOUTS = ("auto", "nchw", "nchwc")
# The blocked layout's earlier name, from when its blocks always held 16 channels: still taken.
ALIASES = {"nchw16c": "nchwc"}

# Largest number of taps (input channels per group x kernel size) of a dense layer that reads
# NCHW and writes channel blocks directly: a network's first layer, for which that beats its
# NCHW algorithm plus a layout change (bench/bench_models.py, MobileNetV1's first layer); and
# an image's channels at most, with kernels up to 7x7: a 7x7 stride-2 stem on 224x224 took
# 2.40 / 1.20 ms (1 / 2 threads) against 2.43 / 1.43 for a layout change and the dense
# kernel; in the model (A/B in one process) SqueezeNet 1.0 1.4% / 5.5% faster, GoogLeNet 1% /
# 2%, ResNet-50 alike; AlexNet's 11x11 stride 4 3% slower at one thread, so not it.
BLOCKED_DIRECT_MAX_TAPS = 32
BLOCKED_DIRECT_IMAGE_CHANNELS = 4
BLOCKED_DIRECT_IMAGE_KERNEL = 49
# Largest input plane a blocked depthwise layer splits between threads by channel blocks
# rather than by bands of rows: the pointwise layer before it wrote the plane by blocks up to
# this size, so each thread reads what it wrote (bench/bench_models.py, MobileNetV1 and V2).
DEPTHWISE_BLOCK_ORDER_PIXELS = 28 * 28
# Largest output plane a blocked pointwise layer splits by groups of output blocks (each thread
# reads part of the weights, and writes whole blocks as the depthwise layer after it reads
# them) rather than by pixels (bench/bench_models.py, MobileNetV1 and V2) ...
POINTWISE_GROUP_MAX_PIXELS = 28 * 28
# ... unless that leaves the busiest thread more than this times the work of a pixel split.
POINTWISE_GROUP_SLACK = 1.15
# Fewest channels per group the blocked grouped kernel takes: a tap costs it g shuffles and g
# multiply-adds per pixel. 128 channels on 56x56 in groups of 2 or 4 take it 0.55 and 0.66 ms
# against im2col's 1.26 and 1.27 on NCHW (bench/bench_dispatch.py layout/grouped); width 1 is
# the depthwise kernel's.
GROUPED_MIN_WIDTH = 2
# Fewest output pixels of a 3x3 stride-1 layer in groups of whole blocks that Winograd runs on
# blocks. U is up to four times the weights and comes from memory on every call: in RegNet-X
# (one thread, weights cold) F(6x6) took 0.114 ms against the grouped kernel's 0.148 on 28x28,
# but on 14x14 and 7x7 both took 0.10-0.11, as on ResNeXt-50's 14x14 layers (0.34-0.37);
# alone, weights warm, it led on every map (bench/bench_dispatch.py layout/grouped_winograd).
GROUPED_WINOGRAD_MIN_PIXELS = 28 * 28
# On 8-float builds, Winograd on blocks runs one-group 3x3 layers too, but for those of fewer
# than WINOGRAD_BLOCKED_8F_MIN_OUT output channels on maps under WINOGRAD_BLOCKED_8F_MIN_PIXELS
# outputs, where its transforms outweigh what it saves: alone, one thread, against ONNX
# Runtime's Conv, 128->32 on 7x7 1.61x against the dense blocked kernel's 1.33x, but on 14x14
# 1.13x against 1.29x, 16->32 on 28x28 1.06x against 1.20x, 512->512 on 7x7 0.75x against
# 1.01x, SqueezeNet's 48->192 on 13x13 0.97x against 1.38x (bench/bench_conv2d.py
# --algorithm); in the models (A/B in one process, one thread) ResNet-18 0.85 of its time,
# ResNet-50 0.93, DenseNet-121 0.79, GoogLeNet 0.90, Inception-v3 0.90, SqueezeNet 1.0 and
# 1.1 0.80 and 0.86, VGG-11 0.85, FCN-ResNet50 0.83 (bench/bench_zoo.py models).
WINOGRAD_BLOCKED_8F_MIN_OUT = 64
WINOGRAD_BLOCKED_8F_MIN_PIXELS = 14 * 14
# Fewest input channels of a 3x3 stride-1 layer that Winograd runs on blocks
# (kernels/nchwc_winograd.pyx); below it the dense blocked kernel does. A 16-float build, one
# group, no dilation, one thread, ms, Winograd on blocks / dense blocked / NCHW's algorithm:
# 8->8 56x56 0.071 / 0.082 / 0.054 (direct loops), 16->16 56x56 0.084 / 0.142 / 0.173, 64->64
# 56x56 0.72 / 1.99 / 1.03, 256->256 14x14 0.77 / 2.40 / 1.13, 512->512 7x7 1.28 / 2.43 /
# 1.60 (bench/bench_dispatch.py layout/winograd).
WINOGRAD_BLOCKED_MIN_IN = 8
# On 8-float builds, most input channels per group of a 3x3 layer that NCHW would run by
# F(2x2,3x3) and that runs on the dense blocked kernel instead: one thread, ms, F(2x2) / dense
# blocked: 32->128 on 27x27 0.47 / 0.48, 48->192 13x13 0.30 / 0.25, 64->256 13x13 0.45 / 0.45, but 256->256 14x14
# 1.44 / 2.02 (bench/bench_dispatch.py layout/winograd), and blocked it needs no layout change.
WINOGRAD_BLOCKED_MAX_IN = 64
# Fewest taps (input channels x kernel size) of a layer that the dense blocked kernel runs even
# with no blocked neighbour, paying a layout change each way: from about here its lead over the
# NCHW algorithms outweighs two passes over the tensors. A 1x1 layer never pays that alone: its
# input is as large as its work per tap (bench/bench_dispatch.py layout/dense).
DENSE_ALONE_MIN_TAPS = 256
# A 1x1 layer runs blocked with no blocked neighbour when the NCHW GEMM over its map computes at
# least this many times its pixels (a 7x7 map's 49 columns take 64: the blocked kernel cuts the
# map into even tiles), and its weights are large enough to pay the two layout changes:
# ResNet-50's last 512->2048 on 7x7, 1.21 ms on NCHW against 0.96 blocked with both changes;
# 256->1024 on 14x14 (208 columns for 196) 1.01 against 0.98 (bench/bench_dispatch.py
# layout/pointwise).
POINTWISE_ALONE_MIN_WASTE = 1.25
# Fewest taps of a depthwise layer that runs blocked with no blocked neighbour: 5x5 and 7x7
# (ConvNeXt's, EfficientNet's and MnasNet's) take 0.65-0.93 of their NCHW time blocked with a
# layout change each way, at 1 and 2 threads; a 3x3 layer ties (bench/bench_dispatch.py
# layout/depthwise_alone).
DEPTHWISE_ALONE_MIN_TAPS = 25
POINTWISE_ALONE_MIN_WEIGHTS = 1 << 17
# On 8-float builds (AVX2, tiles of 6 pixels x 2 blocks), most taps of a layer the dense
# blocked kernel runs reading its input as it is (taps checked), and fewest input channels.
# Read unchecked from a padded copy of the input (dense_padded) it takes any number of taps:
# against ONNX Runtime's Conv alone, one thread, 192->192 1x7 on 17x17 1.01x (im2col and the
# packed GEMM 1.48x, checked taps 1.61x), 128->128 3x3 stride 2 on 56x56 1.21x (1.54x,
# 1.88x); Inception-v3 0.87 of its time at one and two threads, AlexNet 0.93, ResNet-18
# 0.97-0.99, ResNet-50 0.99-1.00 (A/B in one process, bench/bench_zoo.py models). The 7x7
# stride-2 stems on 3 channels, whose tile does a tap's pointer work for 3 channels, ran
# 4.3 ms against 3.1 (ResNet-50).
DENSE_8F_MAX_TAPS = 1024
DENSE_8F_MIN_IN_CHANNELS = 8
# On 8-float builds, layers on small maps with small weights run on the dense blocked kernel
# whatever their taps, Winograd's layers included: with at most this many output pixels and
# weights of at most 640 KiB (Winograd's transformed weights, 1.8-4x larger, come from beyond
# L2 in a model), DenseNet's 128->32 3x3 layers ran 0.20 against 0.24 ms (14x14) and 0.07
# against 0.17 (7x7) by F(2x2,3x3), and SqueezeNet 1.1 1.7% faster at one thread, 8.8% at two
# with its 13x13 expand layers (48->192 0.30 against 0.34 ms by F(4x4,3x3), 64->256 a tie
# alone), GoogLeNet 2.9%. Alone, 590 KiB layers on 14x14 still ran faster by F(2x2,3x3)
# (128->128 and 256->64: 0.52-0.55 against 0.61-0.62 ms), which no zoo model has; with
# 2.3 MiB of weights (256->256 on 7x7) F(2x2,3x3) stays ahead (bench/bench_dispatch.py
# layout/winograd; models A/B in one process, bench/bench_zoo.py).
DENSE_8F_SMALL_MAP_PIXELS = 196
DENSE_8F_SMALL_WEIGHT_BYTES = 640 * 1024
# Most bytes of the input copy (with its padding as zeros) the dense blocked kernel reads on
# 8-float builds; larger inputs run on the original with checked taps. The copy made every
# dense layer measured faster: SqueezeNet's 48->192 3x3 on 13x13 0.52 -> 0.31 ms, DenseNet's
# 128->32 on 7x7 0.080 -> 0.046, 16->64 on 55x55 0.69 -> 0.63 (bench/bench_dispatch.py
# layout/dense_padded).
DENSE_PADDED_MAX_BYTES = 16 << 20
# Grouped layers (whole blocks per group: RegNet's 16-channel groups) take the copy where its
# planes have at most this many pixels, where rows are short and tiles across rows pay most:
# RegNetX's 400-channel 3x3 on 7x7 0.131 -> 0.074 ms, 160 channels on 14x14 0.126 -> 0.111;
# past it their few multiply-adds per copied value did not pay for the copy, 64 channels on
# 56x56 stride 2 0.184 -> 0.196 (bench/bench_dispatch.py layout/dense_padded).
GROUPED_PADDED_MAX_PIXELS = 1024


def dense_copy_floats(batch: int, in_channels: int, in_size, out_size, kernel, stride,
                      dilation, pads_begin) -> int:
    """Floats of the dense blocked kernel's padded copy of its input (kernels/nchwc_dense.pyx
    dense_padded_floats); 0 where the windows need no padding, no pad before either axis and
    every window inside the plane (ConvNeXt's 2x2 stride-2 layers, Inception's unpadded 3x3
    ones): the kernel's unchecked tiles then read the input itself."""
    if all(p == 0 and input_extent(o, k, s, d) <= i for i, o, k, s, d, p
           in zip(in_size, out_size, kernel, stride, dilation, pads_begin)):
        return 0
    return nchwc_dense.dense_padded_floats(batch, -(-in_channels // BLOCK), *out_size,
                                           *kernel, *stride, *dilation)


def dense_padded(groups: int, finite_weights: bool, copy_bytes: int,
                 copy_pixels: int, alone: bool = False) -> tuple[bool, str]:
    """Whether the dense blocked kernel reads a copy of its input with the padding as zeros
    (its tiles then run unchecked and across output rows), and why not: 8-float builds (or a
    layer ``alone``, NCHW in and out: engine.ops.conv2d_algorithms.BlockedDense), finite
    weights (padding adds weight x 0, which is NaN for an infinite weight), a copy of at most
    DENSE_PADDED_MAX_BYTES, and for more than one group planes of at most
    GROUPED_PADDED_MAX_PIXELS pixels in the copy. copy_bytes 0: the windows need no padding
    and the unchecked tiles read the input itself (dense_copy_floats)."""
    if vector_floats() >= 16 and not alone:
        # the copy won 14-37% on single 7x7-14x14 layers (bench/bench_dispatch.py
        # layout/dense_padded) but nothing beyond noise in ResNet-50, ResNeXt-50, GoogLeNet
        # and ResNet-18 (A/B in one process)
        return False, "the tiles check their taps (AVX-512 builds: no gain in the models)"
    if not finite_weights:
        return False, "the tiles check their taps (a weight is not finite)"
    if copy_bytes > DENSE_PADDED_MAX_BYTES:
        return False, f"the tiles check their taps (a padded copy of {copy_bytes >> 20} MiB)"
    if groups > 1 and copy_pixels > GROUPED_PADDED_MAX_PIXELS:
        return False, f"the tiles check their taps (grouped, padded planes of {copy_pixels} pixels)"
    if copy_bytes == 0:
        return True, ("the input read in place (no padding to add), tiles unchecked and "
                      "across rows")
    return True, "the input copied with its padding, tiles unchecked and across rows"


def blocked_layout_pays() -> tuple[bool, str]:
    """Whether the kernels were built with vectors as wide as a channel block (BLOCK: 16
    floats with AVX-512, 8 with AVX2), and why not: the blocked kernels keep tiles of one
    vector per pixel and block in registers, which would spill with narrower vectors."""
    floats = vector_floats()
    if floats >= BLOCK:
        return True, ""
    return False, (f"the kernels were built for {floats}-float vectors: the channel-blocked "
                   f"kernels' {BLOCK}-float tiles would spill from registers")


def grouped_in_blocks(p: ConvParams) -> bool:
    """A grouped layer whose groups each have as many output as input channels, a divisor of
    the block size of at least GROUPED_MIN_WIDTH: its groups lie within channel blocks, so
    each output block reads one input block (RegNet's group widths of 8 and 16)."""
    cg = p.in_channels // p.groups
    return (p.groups > 1 and p.out_channels == p.in_channels and BLOCK % cg == 0
            and cg >= GROUPED_MIN_WIDTH)


def canonical_layout(layout: str) -> str:
    """``layout`` with an alias replaced by its name (checked by why_not_layout first)."""
    return ALIASES.get(layout, layout)


def groups_fill_blocks(p: ConvParams) -> bool:
    """A grouped layer whose groups each take and make whole channel blocks (RegNet's group
    width of 16 where a block holds 8): the dense blocked kernel runs each group on its own
    blocks. On 8-float builds it also takes groups of exactly one block from the grouped
    kernel, whose four pixels' sums are too few to hide the multiply-add's latency: RegNet-Y's
    3x3 layers in 8-channel groups, one thread, 0.07-0.16 ms against 0.10-0.24 (104 to 440
    channels on 7x7 to 28x28; 48 channels on 56x56 0.24 against 0.26)."""
    return (p.groups > 1 and p.in_channels % p.groups == 0 and p.out_channels % p.groups == 0
            and (p.in_channels // p.groups) % BLOCK == 0
            and (p.out_channels // p.groups) % BLOCK == 0)


def why_not_layout(layout) -> Optional[str]:
    if layout in LAYOUTS or layout in ALIASES:
        return None
    return f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}"


def winograd_blocked(p: ConvParams, alone: bool = False) -> bool:
    """A 3x3 stride-1 layer of at least WINOGRAD_BLOCKED_MIN_IN input channels, with a
    Winograd tile the policy allows, of one group or (16-float builds) undilated with groups of
    whole blocks, and if dilated one that NCHW's rules give Winograd or space-to-batch (not
    live taps or taps dropped past the map: most of its taps read padding): the Winograd
    kernel on blocks runs it, on the phase sub-images, a group's blocks at a time. Grouped,
    only on maps of GROUPED_WINOGRAD_MIN_PIXELS outputs or more, and on 8-float builds only a
    layer ``alone`` (NCHW in and out: 0.67-0.90x ONNX Runtime's Conv on 28x28 and 56x56, where
    in RegNet-X and ResNeXt-50 it took 1.01-1.11 of the dense kernel's time); on 8-float
    builds not a layer of few output channels on a small map (WINOGRAD_BLOCKED_8F_MIN_OUT)."""
    from .winograd import TILE_ALGORITHMS
    wide = vector_floats() >= 16
    outputs = p.out_size[0] * p.out_size[1]
    one_group_ok = p.groups == 1 and (wide or not (p.out_channels < WINOGRAD_BLOCKED_8F_MIN_OUT
                                                   and outputs < WINOGRAD_BLOCKED_8F_MIN_PIXELS))
    grouped_ok = ((wide or alone) and groups_fill_blocks(p) and p.dilation == (1, 1)
                  and p.in_size is not None and p.pads is not None
                  and outputs >= GROUPED_WINOGRAD_MIN_PIXELS)
    if not ((one_group_ok or grouped_ok) and p.kernel == (3, 3) and p.stride == (1, 1)
            and p.in_channels // p.groups >= WINOGRAD_BLOCKED_MIN_IN
            and not set(TILE_ALGORITHMS.values()) <= set(current_policy().excluded)):
        return False
    if p.dilation == (1, 1):
        return True
    if p.in_size is None or p.pads is None:
        return False
    algorithm, _ = choose_nchw_kernels(p, current_policy().excluded)
    return algorithm in set(TILE_ALGORITHMS.values()) | {"dilated_s2b"}


def live_taps_blocked(p: ConvParams) -> bool:
    """A one-group stride-1 layer of a known input size, its output plane the input's, that
    NCHW's rules run tap by tap (live_taps), or whose taps past the map leave a 1x1
    (drop_padding_taps): the live-taps kernel on blocks runs each tap that reads the input as
    a pointwise pass over its rectangle of outputs (kernels/_nchwc_taps.h). On DeepLabV3's
    ASPP layers it ties with NCHW's live taps at one thread or beats them (960->256 at rate 12
    on 14x14: 1.68 against 2.28 ms, a 16-float build) and leads at two, where those split
    each tap's small GEMM (0.81 against 1.71 ms); where most taps are live it loses to
    Winograd (bench/bench_dispatch.py layout/live_taps). On an 8-float build DeepLabV3 with
    MobileNetV3 took 0.96 of its time at one thread, 0.85 at two; with ResNet-50 0.98 and
    1.00 (A/B in one process, bench/bench_zoo.py models)."""
    if not (p.groups == 1 and p.stride == (1, 1) and p.kernel != (1, 1)
            and p.in_size is not None and p.pads is not None
            and tuple(p.out_size) == tuple(p.in_size)):
        return False
    dropped = drop_padding_taps(p.in_size, p.kernel, p.stride, p.pads, p.dilation)
    if dropped is not None and all(first == last for first, last in dropped[:2]):
        return True
    return choose_nchw_kernels(p, current_policy().excluded)[0] == "live_taps"


def winograd_shaped(p: ConvParams) -> bool:
    """3x3 stride 1 layers that the NCHW rules give Winograd F(4x4,3x3), or F(2x2,3x3) with
    more than WINOGRAD_BLOCKED_MAX_IN input channels per group, but not small ones on small maps
    (small_dense); and dilated ones (phases, live taps, taps dropped past the map): those run
    faster on NCHW than any blocked kernel. The others (few channels: direct loops, im2col, a narrow F(2x2,3x3)) the dense blocked kernel
    runs as fast or faster, and without layout changes (bench/bench_zoo.py, SqueezeNet's
    expand layers; bench/bench_dispatch.py layout/winograd)."""
    if p.kernel != (3, 3) or p.stride != (1, 1):
        return False
    if p.dilation != (1, 1):      # phases, live taps, taps dropped past the map: NCHW's own
        return True
    algorithm, _ = choose_nchw_kernels(p, current_policy().excluded)   # as the NCHW plan would
    return (algorithm in ("winograd_f43", "winograd_f63") or (
        algorithm == "winograd_f23" and p.in_channels // p.groups > WINOGRAD_BLOCKED_MAX_IN)
    ) and not small_dense(p)


def padded_copy_fits(p: ConvParams) -> bool:
    """Whether the dense blocked kernel is known to read its input from its padded copy
    (dense_padded, the weights taken as finite), of the size the kernel counts."""
    if p.in_size is None or p.pads is None:
        return False
    copy_floats = dense_copy_floats(p.batch, p.in_channels, p.in_size, p.out_size, p.kernel,
                                    p.stride, p.dilation, [b for b, _ in p.pads])
    plane = window_pixels(p.out_size, p.kernel, p.stride, p.dilation)
    return dense_padded(p.groups, True, 4 * copy_floats, plane)[0]


def small_dense(p: ConvParams) -> bool:
    """On 8-float builds, a one-group layer of a known input size with at most
    DENSE_8F_SMALL_MAP_PIXELS output pixels and DENSE_8F_SMALL_WEIGHT_BYTES of weights: the
    dense blocked kernel runs it faster than NCHW's algorithms, however many taps it has."""
    if vector_floats() >= 16 or p.groups != 1 or p.in_size is None or p.pads is None:
        return False
    oh, ow = p.out_size
    weight_bytes = 4 * p.out_channels * p.in_channels * p.kernel[0] * p.kernel[1]
    return (oh * ow <= DENSE_8F_SMALL_MAP_PIXELS
            and weight_bytes <= DENSE_8F_SMALL_WEIGHT_BYTES)


def blocked_kernel(p: ConvParams, activation=None, residual: Optional[bool] = None,
                   blocked_input: bool = False) -> tuple[Optional[str], str]:
    """The channel-blocked kernel able to run the layer, and why: "winograd"
    (winograd_blocked), "pointwise" (1x1 unpadded,
    one group; with strides the input is subsampled first), "depthwise" (multiplier 1, any
    kernel, stride, dilation, padding), "grouped" (groups of GROUPED_MIN_WIDTH to BLOCK
    channels each way, within blocks), "direct"
    (one group, at most BLOCKED_DIRECT_MAX_TAPS taps, NCHW in), "dense" (one group, any other
    kernel but Winograd's 3x3 stride 1; or groups of whole blocks each way), "live_taps"
    (live_taps_blocked), or None.
    activation: the fused one (any of engine/ops/activation.py); residual: None
    without one, True if it has the output's shape (the pointwise and dense kernels add one),
    False if it broadcasts. A layer of few taps takes the dense kernel (blocks in, adds a
    residual) rather than the direct one (NCHW in, no residual) when it has a residual or
    ``blocked_input`` (its input comes from a layer that runs blocked: the direct kernel would
    need a layout change first; RegNet's 32-channel 1x1 stride-2 shortcut)."""
    if not is_activation(activation):
        return None, f"no channel-blocked kernel applies the activation {activation!r}"
    if residual is False:
        return None, ("the residual broadcasts: the blocked kernels add only one of the "
                      "output's shape")
    taps = p.in_channels // p.groups * p.kernel[0] * p.kernel[1]
    direct = (p.groups == 1 and (taps <= BLOCKED_DIRECT_MAX_TAPS
                                 or p.in_channels <= BLOCKED_DIRECT_IMAGE_CHANNELS
                                 and p.kernel[0] * p.kernel[1] <= BLOCKED_DIRECT_IMAGE_KERNEL)
              and (winograd_shaped(p) or not blocked_input and residual is None))
    if p.kernel == (1, 1) and p.groups == 1 and (
            p.pads is None or p.pads == ((0, 0), (0, 0))) and (
            p.stride == (1, 1) or not direct):
        kind = "pointwise"      # with strides, on the input taken every stride pixels
    elif is_depthwise(p) and p.out_channels == p.in_channels:
        kind = "depthwise"
    elif direct:
        kind = "direct"
    elif winograd_blocked(p):
        kind = "winograd"
    elif grouped_in_blocks(p) and not (groups_fill_blocks(p) and vector_floats() < 16):
        kind = "grouped"
    elif live_taps_blocked(p):
        kind = "live_taps"
    elif (p.groups == 1 or groups_fill_blocks(p)) and not winograd_shaped(p):
        kind = "dense"      # a grouped one group after another
    else:
        return None, (f"no channel-blocked kernel for {p.kernel[0]}x{p.kernel[1]} "
                      f"stride {p.stride[0]}x{p.stride[1]} {p.in_channels}->{p.out_channels} "
                      f"groups {p.groups} ({taps} taps)")
    if kind == "dense" and vector_floats() < 16 and (
            taps > DENSE_8F_MAX_TAPS and not small_dense(p) and not padded_copy_fits(p)
            or p.in_channels < DENSE_8F_MIN_IN_CHANNELS):
        return None, (f"{p.in_channels}->{p.out_channels} {p.kernel[0]}x{p.kernel[1]} ({taps} "
                      f"taps): built for {vector_floats()}-float vectors, the dense blocked "
                      f"kernel runs layers of over {DENSE_8F_MAX_TAPS} taps without its padded "
                      f"copy of the input (but small ones on small maps) or under "
                      f"{DENSE_8F_MIN_IN_CHANNELS} input channels slower than NCHW")
    if residual is not None and kind not in ("pointwise", "dense", "winograd"):
        return None, ("a residual add, which only the pointwise, dense and Winograd blocked "
                      "kernels make")
    return kind, f"the {kind} blocked kernel runs it"


def pays_alone(kind: Optional[str], p: ConvParams) -> bool:
    """Whether a layer whose blocked kernel is ``kind`` runs blocked with no blocked neighbour:
    a dense or Winograd one, not 1x1, of at least DENSE_ALONE_MIN_TAPS taps; a depthwise one
    of at least DEPTHWISE_ALONE_MIN_TAPS taps; or a 1x1 layer on a map whose NCHW GEMM computes
    many columns for nothing (see POINTWISE_ALONE_MIN_WASTE)."""
    if kind == "pointwise":
        if p.in_size is None or p.groups != 1:
            return False
        oh, ow = p.out_size
        pixels = oh * ow
        return (pixels > 0 and gemm_columns(pixels) >= POINTWISE_ALONE_MIN_WASTE * pixels
                and p.in_channels * p.out_channels >= POINTWISE_ALONE_MIN_WEIGHTS)
    if kind == "depthwise":
        return p.kernel[0] * p.kernel[1] >= DEPTHWISE_ALONE_MIN_TAPS
    return (kind in ("dense", "winograd") and p.kernel != (1, 1)
            and p.in_channels // p.groups * p.kernel[0] * p.kernel[1] >= DENSE_ALONE_MIN_TAPS)


def choose_layout(kind: Optional[str], why: str, producer_kind: Optional[str] = None,
                  reader_kinds=(), forced: str = "auto", alone: bool = False) -> tuple[str, str]:
    """"nchwc" or "nchw" for a convolution, and why. kind, why: blocked_kernel's answer;
    producer_kind: the blocked kernel able to run the layer that writes its input (None if
    none); reader_kinds: the blocked kernels able to run the layers that read its output as
    their input; forced: the caller's layout ("auto" to let the rules choose); alone: whether
    the kernel pays with no blocked neighbour (``pays_alone``)."""
    if kind is None:
        return "nchw", why
    if forced == "nchw":
        return "nchw", "forced by the caller (layout='nchw')"
    if forced == "nchwc":
        return "nchwc", f"{why}; forced by the caller (layout='nchwc')"
    pays, why_not_blocked = blocked_layout_pays()
    if not pays:
        return "nchw", why_not_blocked
    if kind == "direct":
        if producer_kind is not None:
            return "nchw", ("its input comes from a layer with a blocked kernel, and the direct "
                            "blocked kernel reads NCHW")
        wanted = sorted({k for k in reader_kinds if k != "direct"})
        if not wanted:
            return "nchw", "no pointwise or depthwise layer reads its output"
        return "nchwc", (f"reads NCHW and writes the blocks its {' and '.join(wanted)} "
                         f"reader takes, instead of a layout change")
    if producer_kind is not None:
        return "nchwc", (f"{kind} after a {producer_kind} layer: no layout change between "
                         f"them, no packing or transposes")
    if reader_kinds:
        return "nchwc", (f"{kind} before a {reader_kinds[0]} layer: no layout change between "
                         f"them, no packing or transposes")
    if alone:
        return "nchwc", (f"{why}: alone it beats the NCHW algorithms by more than a layout "
                         f"change each way costs ({'a small map' if kind == 'pointwise' else 'this many taps'})")
    return "nchw", (f"{kind}, but no neighbour has a blocked kernel: a layout change each way "
                    f"would cost more than the blocked kernel saves")


def choose_depthwise_blocked_split(in_size) -> tuple[str, str]:
    """How the threads of a blocked depthwise layer share it: "blocks" (each a range of
    channel blocks) or "bands" (rows across all blocks), and why."""
    h, w = in_size
    if h * w <= DEPTHWISE_BLOCK_ORDER_PIXELS:
        return "blocks", (f"a {h}x{w} input (at most {DEPTHWISE_BLOCK_ORDER_PIXELS} pixels), "
                          f"as the pointwise layer before it wrote it")
    return "bands", f"a {h}x{w} input (over {DEPTHWISE_BLOCK_ORDER_PIXELS} pixels)"


def choose_pointwise_blocked_split(out_size) -> tuple[str, str]:
    """How the threads of a blocked pointwise layer share it: "groups" of output blocks
    (unless that is more than POINTWISE_GROUP_SLACK times as uneven as a pixel split, decided
    by the kernel for its thread count) or "pixels", and why."""
    h, w = out_size
    if h * w <= POINTWISE_GROUP_MAX_PIXELS:
        return "groups", (f"a {h}x{w} output (at most {POINTWISE_GROUP_MAX_PIXELS} pixels): "
                          f"each thread reads part of the weights and writes whole blocks; "
                          f"by pixels if that is over {POINTWISE_GROUP_SLACK}x as uneven")
    return "pixels", f"a {h}x{w} output (over {POINTWISE_GROUP_MAX_PIXELS} pixels)"


# Smallest expanded map (floats per image, 1 MiB) whose pointwise layer runs fused into the
# depthwise layer that reads it. With a 32 MB L3 the unfused pair costs little more: A/B in
# one process (AVX2), MobileNetV3-Large 0.97-1.00 of its time at batch 1, MobileNetV2 and V3
# 0.96-0.98 at batch 8 (two threads), and each thread's arena 20-48% smaller (MobileNetV2 5.7
# -> 3.8 MiB); fusing the smaller maps too (14x14, 28x28) was 3-13% slower, their rows too
# short for whole pointwise tiles (bench/bench_zoo.py models).
EXPAND_DEPTHWISE_MIN_FLOATS = 1 << 18
# Most floats a thread's ring of expanded rows may take: half of a 512 KB L2.
EXPAND_DEPTHWISE_MAX_RING_FLOATS = 64 << 10


def fuse_expand_depthwise(expanded, size, kernel, strides, dilations, ring_floats,
                          finite) -> tuple[bool, str]:
    """Whether a pointwise layer (stride 1) of ``expanded`` output channels on a map of
    ``size`` runs in one pass with the depthwise layer that alone reads its output
    (kernel, strides, dilations: the depthwise layer's; ring_floats: a thread's ring of its
    rows, nchwc_window.expand_depthwise_scratch for one thread; finite: its weights are), and
    why. The expanded map is then never stored whole (kernels/_nchwc_expand.h)."""
    h, w = size
    if tuple(dilations) != (1, 1) or strides[1] not in (1, 2) or kernel[0] > 16:
        return False, ("the fused kernel takes undilated depthwise layers of stride 1 or 2 "
                       "across, at most 16 rows tall")
    if not finite:
        return False, "a non-finite depthwise weight: the fused kernel reads padding as zeros"
    floats = expanded * h * w
    if floats < EXPAND_DEPTHWISE_MIN_FLOATS:
        return False, (f"the expanded map ({floats * 4 >> 10} KiB an image) stays in cache "
                       f"between the two layers")
    if ring_floats > EXPAND_DEPTHWISE_MAX_RING_FLOATS:
        return False, (f"a thread's ring of {kernel[0]} expanded rows ({ring_floats * 4 >> 10} "
                       f"KiB) would not stay in L2")
    return True, (f"the expanded map ({floats * 4 >> 10} KiB an image) is never stored: each "
                  f"thread expands rows into a ring of {kernel[0]} "
                  f"({ring_floats * 4 >> 10} KiB) that the depthwise layer reads")
