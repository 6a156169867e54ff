"""Convolutions on channel-blocked activations (NCHWc: [N][ceil(C/B)][H][W][B], B = BLOCK
channels a block, one vector register: 16 with AVX-512, 8 with AVX2; channels beyond C zero
where a tensor is converted, finite after any step), the layout the graph runner keeps chains
of pointwise and depthwise layers in (engine/graph/layout.py). Kernels: kernels/_nchwc.h,
kernels/nchwc.pyx, kernels/nchwc_dense.pyx, kernels/nchwc_window.pyx, kernels/nchwc_winograd.pyx,
kernels/nchwc_taps.pyx.

Weights are rearranged once, here: pointwise weights in groups of up to GROUP output blocks,
each [input channel][output channel of the group]; depthwise weights [block][kh][kw][B]. Padded
input channels get zero weights, so whatever finite values the padding channels carry (an
activation such as sigmoid maps their zeros to 0.5) add nothing; padded output channels get
zero weights and bias.
"""
from __future__ import annotations

import numpy as np

from .._kernels import nchwc

BLOCK = nchwc.BLOCK
GROUP = nchwc.GROUP
NAME = f"NCHW{BLOCK}c"          # the layout's name in explain()
# Boundary the weights of a plan's blocked layers start on: one transparent huge page.
HUGE_PAGE = 2 << 20


def blocks(channels: int) -> int:
    return -(-channels // BLOCK)


def blocked_shape(shape) -> tuple:
    """(N, C, H, W) -> the blocked array's shape (N, ceil(C/B), H, W, B)."""
    n, c, h, w = shape
    return (n, blocks(c), h, w, BLOCK)


def to_blocked(x: np.ndarray, num_threads: int = 1) -> np.ndarray:
    out = np.empty(blocked_shape(x.shape), np.float32)
    nchwc.f32_to_blocked(np.ascontiguousarray(x, np.float32), out, num_threads)
    return out


def from_blocked(xb: np.ndarray, channels: int, num_threads: int = 1) -> np.ndarray:
    n, _, h, w, _ = xb.shape
    out = np.empty((n, channels, h, w), np.float32)
    nchwc.f32_from_blocked(xb, out, num_threads)
    return out


def padded_bias(bias, channels):
    b = np.zeros(blocks(channels) * BLOCK, np.float32)
    if bias is not None:
        b[:channels] = bias
    return b


def packed_shapes(kind: str, weight_shape) -> tuple:
    """The shapes of the (weights, bias) arrays pack_<kind> makes of weights of this shape."""
    k, c, kh, kw = weight_shape
    bias = (blocks(k) * BLOCK,)
    if kind == "pointwise":
        return (blocks(k) * BLOCK * blocks(c) * BLOCK,), bias
    if kind == "depthwise":
        return (blocks(k), kh, kw, BLOCK), bias
    if kind == "grouped":
        return (blocks(k), kh, kw, c, BLOCK), bias
    if kind == "dense":
        return (blocks(k) * blocks(c) * kh * kw * BLOCK * BLOCK,), bias
    if kind.startswith("live_taps"):      # "live_taps<n>": the n taps that read the input
        return (int(kind[len("live_taps"):]), blocks(k) * BLOCK * blocks(c) * BLOCK), bias
    if kind == "winograd_taps":
        return (blocks(k) * BLOCK * c * 9,), bias
    if kind.startswith("winograd"):         # "winograd2", "winograd4", "winograd6"
        a = int(kind[len("winograd"):]) + 2     # c: a group's channels, whole blocks if many
        return (a * a * blocks(k) * BLOCK * blocks(c) * BLOCK,), bias
    return (blocks(k), c, kh, kw, BLOCK), bias


def pack_pointwise(weight: np.ndarray, bias=None):
    """(K, C, 1, 1) weights and K biases -> (wpack, bias) as f32_pointwise_blocked reads them."""
    k, c = weight.shape[:2]
    kb, cb = blocks(k), blocks(c)
    w = np.zeros((kb * BLOCK, cb * BLOCK), np.float32)
    w[:k, :c] = weight.reshape(k, c)
    parts = [np.ascontiguousarray(w[g * BLOCK:min(kb, g + GROUP) * BLOCK].T).ravel()
             for g in range(0, kb, GROUP)]
    return np.concatenate(parts), padded_bias(bias, k)


def pack_dense(weight: np.ndarray, bias=None, groups: int = 1):
    """(K, C, kh, kw) weights and K biases -> (wpack, bias) as f32_conv2d_nchwc reads them:
    groups of up to GROUP output blocks, each [input block][kh][kw][B][blocks * B] (input
    channel within its block, output channel of the group). The pointwise packing is the
    1x1 case of this one. With ``groups`` > 1 (each group's K / groups output channels
    filling whole blocks), each group's packing in turn."""
    if groups > 1:
        kg = weight.shape[0] // groups
        parts = [pack_dense(weight[q * kg:(q + 1) * kg])[0] for q in range(groups)]
        return np.concatenate(parts), padded_bias(bias, weight.shape[0])
    k, c, kh, kw = weight.shape
    kb, cb = blocks(k), blocks(c)
    w = np.zeros((kb * BLOCK, cb * BLOCK, kh, kw), np.float32)
    w[:k, :c] = weight
    # -> [input block][kh][kw][input lane][output channel]
    w = w.reshape(kb * BLOCK, cb, BLOCK, kh, kw).transpose(1, 3, 4, 2, 0)
    parts = [np.ascontiguousarray(w[..., g * BLOCK:min(kb, g + GROUP) * BLOCK]).ravel()
             for g in range(0, kb, GROUP)]
    return np.concatenate(parts), padded_bias(bias, k)


def pack_depthwise(weight: np.ndarray, bias=None):
    """(C, 1, kh, kw) weights and C biases -> (w[Cb, kh, kw, 16], bias)."""
    c, _, kh, kw = weight.shape
    cb = blocks(c)
    w = np.zeros((cb * BLOCK, kh, kw), np.float32)
    w[:c] = weight[:, 0]
    return (np.ascontiguousarray(w.reshape(cb, BLOCK, kh, kw).transpose(0, 2, 3, 1)),
            padded_bias(bias, c))


def pack_grouped(weight: np.ndarray, groups: int, bias=None):
    """(K, g, kh, kw) weights of a grouped convolution with g input and g output channels per
    group (16 % g == 0) and K biases -> (w[Kb, kh, kw, g, 16], bias) as f32_grouped_blocked
    reads them: per block, tap and j < g, each output lane's weight for its group's input
    channel j."""
    k, g, kh, kw = weight.shape
    kb = blocks(k)
    w = np.zeros((kb * BLOCK, g, kh, kw), np.float32)          # [out channel][j]
    w[:k] = weight
    # -> [block][kh][kw][j][out lane]
    return (np.ascontiguousarray(w.reshape(kb, BLOCK, g, kh, kw).transpose(0, 3, 4, 2, 1)),
            padded_bias(bias, k))


def pack_winograd(weight: np.ndarray, bias=None, m: int = 4, groups: int = 1):
    """(K, C / groups, 3, 3) weights and K biases -> (upack, bias) as f32_winograd_blocked
    reads them: for each of the (m + 2)^2 elements e of F(m x m, 3x3), U[e] = (G g G^T)[e]
    (computed in float64, rounded once) packed as pack_pointwise packs a 1x1 layer's; with
    ``groups`` > 1 (each group's channels filling whole blocks), each group's packing in
    turn."""
    from .winograd import TRANSFORMS
    if groups > 1:
        kg = weight.shape[0] // groups
        parts = [pack_winograd(weight[q * kg:(q + 1) * kg], None, m)[0] for q in range(groups)]
        return np.concatenate(parts), padded_bias(bias, weight.shape[0])
    k, c = weight.shape[:2]
    g = TRANSFORMS[m][1]
    u = np.einsum("ia,kcab,jb->ijkc", g, weight.astype(np.float64), g)
    a = m + 2
    parts = [pack_pointwise(u[e // a, e % a].astype(np.float32)[:, :, None, None])[0]
             for e in range(a * a)]
    return np.concatenate(parts), padded_bias(bias, k)


def pack_winograd_taps(weight: np.ndarray, bias=None):
    """(K, C, 3, 3) weights and K biases -> (taps, bias) for f32_winograd_blocked with U made
    per call: per group of up to GROUP output blocks, [C][9][the group's blocks * B], the
    padded output channels zero."""
    k, c = weight.shape[:2]
    kb = blocks(k)
    w = np.zeros((kb * BLOCK, c, 9), np.float32)
    w[:k] = weight.reshape(k, c, 9)
    parts = [np.ascontiguousarray(w[g * BLOCK:min(kb, g + GROUP) * BLOCK].transpose(1, 2, 0))
             .ravel() for g in range(0, kb, GROUP)]
    return np.concatenate(parts), padded_bias(bias, k)


def pack_live_taps(weight: np.ndarray, taps, bias=None):
    """(K, C, kh, kw) weights, the row-major indices of the taps that read the input, and K
    biases -> (wtaps, bias) as f32_live_taps_blocked reads them: one row per tap in ``taps``,
    its (K, C) weights packed by pack_pointwise."""
    k, c, _, kw = weight.shape
    rows = [pack_pointwise(weight[:, :, t // kw, t % kw, None, None])[0] for t in taps]
    if not rows:
        return np.zeros((0, blocks(k) * BLOCK * blocks(c) * BLOCK), np.float32), \
            padded_bias(bias, k)
    return np.stack(rows), padded_bias(bias, k)


def winograd_work_floats(n: int, c: int, k: int, out_size, m: int, dilation=(1, 1),
                         threads: int = 1, per_call: bool = False, groups: int = 1) -> int:
    """Floats of the work buffer f32_winograd_blocked needs for this layer (n images, c -> k
    channels in ``groups`` groups of whole blocks, out_size outputs) at this thread count."""
    from .._kernels import nchwc_winograd as nw
    cb, kb = blocks(c) // groups, blocks(k) // groups
    tiles = nw.layer_tiles(n, *out_size, m, *dilation)
    strip = nw.strip_tiles(cb, kb, m, tiles, per_call)
    return nw.work_floats(cb, kb, m, strip, threads if per_call else 0,
                          threads if nw.by_strips(tiles, strip, threads, per_call, groups)
                          else 1)


def winograd_g(m: int) -> np.ndarray:
    """G of F(m, 3) (engine/ops/winograd.py), float32, for U made per call."""
    from .winograd import TRANSFORMS
    return np.ascontiguousarray(TRANSFORMS[m][1], np.float32)


def pack_direct(weight: np.ndarray, bias=None):
    """(K, C, kh, kw) weights and K biases -> (w[Kb, C, kh, kw, 16], bias) as
    f32_direct_to_blocked reads them."""
    k, c, kh, kw = weight.shape
    kb = blocks(k)
    w = np.zeros((kb * BLOCK, c, kh, kw), np.float32)
    w[:k] = weight
    return (np.ascontiguousarray(w.reshape(kb, BLOCK, c, kh, kw).transpose(0, 2, 3, 4, 1)),
            padded_bias(bias, k))


def side_by_side(arrays: list) -> list:
    """Copies of float32 ``arrays``, in order, in one buffer that starts on a HUGE_PAGE
    boundary, each on a 64-byte boundary.

    A plan's packed weights are read once per run, layer after layer, mostly from memory. In
    one buffer of a few MB, which numpy asks the kernel to back with huge pages, they take few
    TLB entries and one run of pages the hardware prefetcher can follow (it stops at 4 KB
    page boundaries). Measured alternating, ms, separate arrays / side by side: MobileNetV1
    9.67 / 9.13 and MobileNetV2 6.58 / 6.17 at one thread, MobileNetV2 3.77 / 3.70 at two."""
    sizes = [-(-a.size // 16) * 16 for a in arrays]
    buf = np.empty(sum(sizes) + HUGE_PAGE // 4, np.float32)
    at = (-buf.ctypes.data % HUGE_PAGE) // 4
    out = []
    for a, n in zip(arrays, sizes):
        view = buf[at:at + a.size].reshape(a.shape)
        view[...] = a
        out.append(view)
        at += n
    return out
