"""How an ONNX MaxPool, AveragePool or LpPool runs (engine/graph/ops/pool.py), and why:
"direct", the 2-D pooling layers (engine/ops/pool.py; 1-D pools on the H = 1 view) taking the
pads themselves, which they do as PyTorch does (the same padding at both ends of an axis, at
most half the kernel); "padded", the layer run unpadded on an explicitly padded copy of the
input (-inf for max, zeros for average, the divisors then rescaled to ONNX's); "separable",
a 3-D max pool as two 2-D ones (each frame's H x W, then T with W's columns side by side: a
maximum is exact in any order); or "numpy", for what no pooling kernel takes (other 3-D
windows, dilated averages, Lp pooling): NumPy reduces strided views of a padded copy
(engine/ops/pool.py OnnxWindowPool).
"""
from __future__ import annotations

from ..shapes import pool_output_size


def choose_pool_path(in_size, out_size, kernel, stride, dilation, pads,
                     ceil_mode: bool, op: str = "max", indices: bool = False) -> tuple[str, str]:
    """"direct", "padded", "separable" or "numpy", and why. ``op``: "max", "avg" or "lp";
    ``indices``: whether a max pool also gives the argmax's indices; the other arguments per
    spatial axis (1 to 3 of them): ``out_size`` the ONNX output size, ``pads`` (begin, end)
    pairs."""
    numpy = "so NumPy reduces strided views of a padded copy"
    if len(kernel) == 3:
        if op == "max" and not indices:
            # S3D's 3x3x3 stride-1 pools took 59 ms in NumPy at one thread, unthreaded; the
            # model went from 1.03 / 1.20 of ONNX Runtime to 0.96 / 0.97 at one / two threads
            # (bench/bench_zoo.py --models s3d)
            return "separable", ("3-D max: the 2-D pooling kernel over each frame's H x W, "
                                 "then over T (a maximum is the same in any order)")
        return "numpy", f"3-D: the pooling kernels are 2-D, {numpy}"
    if op == "lp":
        return "numpy", f"Lp pooling has no kernel, {numpy}"
    if op == "avg" and any(d != 1 for d in dilation):
        return "numpy", (f"dilations {list(dilation)}: the average pooling kernel has none, "
                         f"{numpy}")
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
