"""Register-blocked direct convolution (kernels/conv_direct_blocked.pyx): no GEMM, no column
matrix, for layers with few channels on large images, where im2col's column matrix is as large
as its arithmetic and Winograd's transforms outweigh what they save."""
from __future__ import annotations

import numpy as np

from .._kernels import conv_direct_blocked as _k
from .workspace import workspace

# Bound on one thread's zero-padded copy of the input rows of a block of output rows: it is
# read kh*kw times per block of output channels, so it should stay in the 1 MB L2 next to the
# weights.
BLOCK_BUFFER_BYTES = 256 << 10
# Work items (images x groups x row blocks) at least, when the rows allow, so that two threads
# share a layer; a grouped layer has items enough without cutting its rows: RegNetX's 25
# groups on 7x7 maps in blocks of 2 rows copied each block's halo and paid a buffer fill per 2
# rows (400ch 7x7 g25 0.23 -> 0.19 ms, one thread). With more threads, MIN_ITEMS_PER_THREAD a
# thread: the 7x7 stride-2 stem (3->64 on 224x224) in 4 blocks ran 1.22-1.28x ONNX Runtime's
# time at two threads, in 8 blocks 0.95-1.11, in 16 0.95-1.07 (alternating, one process).
# The split never changes a sum: each output is summed in one order whatever its block.
MIN_BLOCKS = 4
MIN_ITEMS_PER_THREAD = 4


def rows_per_block(in_channels_per_group: int, kernel, stride, dilation, out_size,
                   items: int = 1, threads: int = 1) -> int:
    """Output rows per work item: as many as keep the input-row buffer within
    BLOCK_BUFFER_BYTES (the halo of (kh-1)*dh rows is paid once per block), but blocks enough
    that the ``items`` (images x groups) give MIN_BLOCKS work items, and MIN_ITEMS_PER_THREAD
    for each of ``threads`` past one, the blocks as even as possible."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = out_size
    row_floats = sw * _k.phase_length(ow, kw, sw, dw)
    fit_rows = BLOCK_BUFFER_BYTES // (4 * in_channels_per_group * row_floats)
    rows = max(1, (fit_rows - (kh - 1) * dh - 1) // sh + 1)
    least = max(MIN_BLOCKS, MIN_ITEMS_PER_THREAD * threads if threads > 1 else 0)
    nblocks = max(-(-oh // rows), min(oh, -(-least // max(1, items))))
    return -(-oh // nblocks)


class DirectBlocked:
    """Direct convolution, KB output channels x one or two vectors of output columns held in
    registers; weights packed once as [groups][ceil(Kg/KB)][Cg][kh][kw][KB], zero beyond Kg."""

    uses_blas = False

    def __init__(self, layer):
        self.layer = layer
        kb = _k.BLOCK_CHANNELS
        groups, k = layer.groups, layer.out_channels
        kg = k // groups
        cg, kh, kw = layer.weight.shape[1:]
        if kw > _k.MAX_KERNEL_WIDTH or layer.stride[1] > _k.MAX_KERNEL_WIDTH:
            raise ValueError(f"direct_blocked handles kernel widths and strides up to "
                             f"{_k.MAX_KERNEL_WIDTH}, got {kw} and {layer.stride[1]}")
        nkb = -(-kg // kb)

        def make():
            w = np.zeros((groups, nkb * kb, cg, kh, kw), np.float32)
            w[:, :kg] = layer.weight.reshape(groups, kg, cg, kh, kw)
            return np.ascontiguousarray(
                w.reshape(groups, nkb, kb, cg, kh, kw).transpose(0, 1, 3, 4, 5, 2)).reshape(-1)
        self.wpack = layer.transformed("direct_blocked", make,
                                       (groups * nkb * kb * cg * kh * kw,))

    def run(self, x, out, g, threads):
        L = self.layer
        (kh, kw), (sh, sw), (dh, dw) = L.kernel_size, L.stride, L.dilation
        cg = L.in_channels // L.groups
        rows = rows_per_block(cg, (kh, kw), (sh, sw), (dh, dw), g.out_size,
                              g.batch * L.groups, threads)
        nblocks = -(-g.out_size[0] // rows)
        threads = max(1, min(threads, g.batch * L.groups * nblocks))
        per_thread = (cg * _k.buffer_rows(rows, kh, sh, dh)
                      * sw * _k.phase_length(g.out_size[1], kw, sw, dw))
        buf = workspace.take(threads * per_thread)
        try:
            _k.f32_conv2d_direct_blocked(x, self.wpack, L.bias, out, buf, kh, kw, sh, sw,
                                         g.pads[0][0], g.pads[1][0], dh, dw, L.groups, rows,
                                         L.act, threads)
        finally:
            workspace.give(buf)
