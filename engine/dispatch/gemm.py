"""How an ONNX Gemm and a MatMul run (engine/graph/ops/linalg.py), and why: "packed", the
engine's packed GEMM (engine/ops/packed_gemm.py ConstantRight) on its threads, its constant
weights packed into panels once; or numpy.matmul ("matmul" for a Gemm, "numpy" for a MatMul).

NumPy's matmul packs the weights on every call: from memory, at one thread, 2 rows of a
1280->1000 classifier took 0.61 ms against the packed kernel's 0.24, 12 rows of ConvNeXt's
768->3072 1.66 against 0.66; one row is level (bench/bench_dispatch.py gemm/rows). A
matrix-vector kernel reading each row of the weights in one stream beat the packed kernel on
one row from memory (1280->1000: 0.15-0.19 against 0.21-0.22 ms) but lost from cache (0.10
against 0.08) and from two rows on; inside whole models the packed kernel's one row ran as
fast or faster (MobileNetV3-Small 0.975-0.987 of the time, MobileNetV2, RegNetX-400MF,
MobileNetV3-Large and EfficientNet-B0 0.99-1.00, A/B in one process at one thread), so the
matrix-vector kernel was retired.
"""
from __future__ import annotations


def choose_gemm(rows: int, constant_b: bool, trans_a: bool) -> tuple[str, str]:
    """"packed" or "matmul" for a Gemm with ``rows`` rows of A, and why."""
    if not constant_b:
        return "matmul", "B is computed at run time: numpy.matmul"
    if trans_a:
        return "matmul", "A is transposed (transA): numpy.matmul"
    if rows == 0:
        return "matmul", "no rows of A: numpy.matmul"
    return "packed", (f"{rows} row{'s' if rows != 1 else ''} of A times constant weights: the "
                      f"packed micro-kernel on the engine's threads, the weights packed once")


def choose_matmul(rows: int, constant_b: bool) -> tuple[str, str]:
    """"packed" or "numpy" for a MatMul whose A has ``rows`` rows (its leading dimensions
    flattened); constant_b: B is a constant float32 matrix."""
    if not constant_b:
        return "numpy", "B is not a constant float32 matrix: numpy.matmul"
    if rows == 0:
        return "numpy", "no rows of A: numpy.matmul"
    return "packed", (f"{rows} row{'s' if rows != 1 else ''} of activations times constant "
                      f"weights: the packed micro-kernel on the engine's threads, the same sums "
                      f"at any thread count")


def gemm_columns(columns: int, whole_panels: bool = False) -> int:
    """The columns the packed micro-kernel (kernels/_packed_gemm.h) computes for a GEMM of
    ``columns`` columns: whole panels of two vectors (its panel on AVX2 and AVX-512 builds),
    the last one as whole vectors (or a whole panel). Winograd's tile model and the layout of
    lone 1x1 layers ask it. From the vector width the rules assume (engine/dispatch/conv.py
    vector_floats), so that a build's tests can ask for another width's choices."""
    from .conv import vector_floats
    vector = vector_floats()
    panel = 2 * vector
    full, rest = divmod(columns, panel)
    if rest:
        rest = panel if whole_panels else -(-rest // vector) * vector
    return full * panel + rest
