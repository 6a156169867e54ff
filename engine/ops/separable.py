"""Spatially separable convolution: a kh x kw kernel slice of (numerical) rank R runs as R pairs
of a kh x 1 and a 1 x kw pass, R*(kh + kw) multiply-adds per output instead of kh*kw.

Only layers with one input channel per group can use it (depthwise layers with any channel
multiplier, single-channel images): there every output channel reads one input plane through
one slice. A dense layer with several input channels per group does not factor this way even
when every slice has rank 1: output k is sum_c col_kc * (row_kc * x_c), and the intermediate
row_kc * x_c differs for every (k, c) pair, so the first pass alone would cost as much as the
whole convolution.

Numerical rank: singular values sigma_i of a slice with sigma_i <= RANK_RTOL * sigma_1 are
dropped. 1e-6 is about 8 float32 ulps: a kernel built in float32 as an outer product (a
Gaussian or Sobel filter) has sigma_2 / sigma_1 at the float32 rounding level, around 1e-7,
while the dropped part then changes outputs by less than the float32 convolution itself does.
"""
from __future__ import annotations

import numpy as np

from .._kernels import conv_separable

RANK_RTOL = 1e-6
# Output rows per work item: enough items to share a single-channel image between threads.
SEPARABLE_ROWS_PER_BLOCK = 16


def _slice_svd(weight64):
    """Per-slice SVD of a (K, 1, kh, kw) weight: U (K, kh, r), S (K, r), Vh (K, r, kw).
    LAPACK's SVD may never return on a matrix holding an Inf, so those are refused."""
    if not np.isfinite(weight64).all():
        raise ValueError("separable needs finite weights: the weight holds a NaN or Inf")
    return np.linalg.svd(weight64[:, 0], full_matrices=False)


def _kept(s):
    """Which singular values count, per slice: above RANK_RTOL times the slice's largest."""
    return s > RANK_RTOL * s[:, :1]


def rank1_kernels(weight, groups: int) -> bool:
    """True when every kernel slice of a layer with one input channel per group is numerically
    rank 1 (see RANK_RTOL); False for other layers, which separable cannot run whatever their
    slices. Cheap: one small SVD per output channel, and only for those layers."""
    k, cg, kh, kw = weight.shape
    if cg != 1:
        return False
    if kh == 1 or kw == 1:
        return True
    if not np.isfinite(weight).all():
        return False
    _, s, _ = _slice_svd(np.asarray(weight, np.float64))
    return bool(np.all(_kept(s).sum(axis=1) <= 1))


def separable_factors(weight64):
    """(col, row) float32 arrays of shape (R, K, kh) and (R, K, kw) with
    weight[k, 0] ~= sum_r outer(col[r, k], row[r, k]), R the largest numerical rank of a slice
    (at least 1; slices of lower rank get zero terms)."""
    u, s, vh = _slice_svd(weight64)
    kept = _kept(s)
    rank = max(1, int(kept.sum(axis=1).max()))
    scale = np.sqrt(s[:, :rank]) * kept[:, :rank]           # (K, R)
    col = np.transpose(u[:, :, :rank] * scale[:, None, :], (2, 0, 1))
    row = np.transpose(vh[:, :rank, :] * scale[:, :, None], (1, 0, 2))
    return (np.ascontiguousarray(col, dtype=np.float32),
            np.ascontiguousarray(row, dtype=np.float32))


class Separable:
    """The registry wrapper (engine.ops.conv2d_algorithms): factors once, runs both passes."""

    uses_blas = False

    def __init__(self, layer):
        self.layer = layer
        self.col, self.row = layer.transformed("separable",
                                               lambda: separable_factors(layer.weight64))
        self.rank = self.col.shape[0]

    def run(self, x, out, g, threads):
        L = self.layer
        # rank > 1 (forced only): R pairs of passes, each with its own sign for an infinity,
        # would give +Inf - Inf = NaN where the direct sum has an infinity; so non-finite
        # inputs are taken as zeros and the outputs they reach recomputed the direct way
        nonfinite = self.rank > 1 and not np.isfinite(x).all()
        xs = np.where(np.isfinite(x), x, np.float32(0)) if nonfinite else x
        conv_separable.f32_conv2d_separable(
            xs, self.col, self.row, L.bias, out, L.stride[0], L.stride[1], g.pads[0][0],
            g.pads[1][0], L.dilation[0], L.dilation[1], SEPARABLE_ROWS_PER_BLOCK, L.act,
            threads)
        if nonfinite:
            from .nonfinite import fix_nonfinite
            fix_nonfinite(L, x, out, g.pads, threads)
