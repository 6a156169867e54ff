"""How each resized axis of an ONNX Resize runs (engine/ops/resample.py OnnxResize), and why:
a gather, a gather and multiply-add per filter tap, or one dense matrix product.
"""
from __future__ import annotations

# An axis whose filter has more taps than this, and lies innermost, runs as one dense matrix
# product when its input is at most DENSE_MAX_INPUT_PER_TAP times the taps: BLAS makes up for
# the zeros there, while one np.take along the innermost axis per tap costs a strided pass each
# (on (1, 32, 256, i) inputs the two are level for i between 64 and 128 times the taps). Outer
# axes always gather: a take there copies contiguous rows, and matmul would batch small GEMMs.
DENSE_MIN_TAPS = 2
DENSE_MAX_INPUT_PER_TAP = 64


def choose_resize_axis_path(i: int, o: int, taps: int, innermost: bool,
                            unit_weights: bool = False) -> tuple[str, str]:
    """How one resized axis runs, and why: "take" (one tap of weight 1: a gather), "taps" (a
    gather and a multiply-add per tap) or "matrix" (one dense (o, i) matrix product)."""
    if taps == 1 and unit_weights:
        return "take", "one tap of weight 1: a gather"
    if not innermost:
        return "taps", "an outer axis: each tap gathers whole contiguous rows"
    if taps <= DENSE_MIN_TAPS:
        return "taps", f"{taps} taps: a gather per tap beats a dense product"
    if i > DENSE_MAX_INPUT_PER_TAP * taps:
        return "taps", (f"input {i} > {DENSE_MAX_INPUT_PER_TAP} x {taps} taps: the dense "
                        f"matrix would be mostly zeros")
    return "matrix", (f"innermost axis, {taps} taps over {i} inputs: one dense matrix product")
