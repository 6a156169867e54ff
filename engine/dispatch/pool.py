"""How an ONNX MaxPool or AveragePool runs (engine/graph/ops/pool.py), and why: "direct", the
pooling layers (engine/ops/pool.py) taking the pads themselves, which they do as PyTorch does
(the same padding at both ends of an axis, at most half the kernel); or "padded", the layer run
unpadded on an explicitly padded copy of the input (-inf for max, zeros for average, the
divisors then rescaled to ONNX's).
"""
from __future__ import annotations

from ..shapes import pool_output_size


def choose_pool_path(in_size, out_size, kernel, stride, dilation, pads,
                     ceil_mode: bool) -> tuple[str, str]:
    """"direct" or "padded", and why. All arguments per spatial axis: ``out_size`` the ONNX
    output size, ``pads`` (begin, end) pairs."""
    for i, o, k, s, d, (pb, pe) in zip(in_size, out_size, kernel, stride, dilation, pads):
        if pb != pe:
            return "padded", (f"pads {tuple(pads)} differ between the ends of an axis: the "
                              f"pooling layer pads symmetrically, so it runs on a padded copy")
        if pb > k // 2:
            return "padded", (f"pad {pb} exceeds half the kernel ({k}): the pooling layer "
                              f"takes at most that, so it runs on a padded copy")
        if pool_output_size(i, k, s, pb, d, ceil_mode) != o:
            return "padded", ("the pooling layer's output size differs from ONNX's: it runs "
                              "on a padded copy")
    return "direct", "symmetric pads of at most half the kernel: the pooling layer takes them"
