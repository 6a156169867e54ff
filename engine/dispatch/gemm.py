"""How an ONNX Gemm and a MatMul run (engine/graph/ops/linalg.py), and why. Gemm: "dense",
the matrix-vector kernel on the engine's threads (kernels/dense.pyx), which streams constant
weights once per call; or "matmul", numpy.matmul. MatMul by constant weights: "packed", the
engine's packed GEMM on its threads (engine/ops/packed_gemm.py ConstantRight); or "numpy".
"""
from __future__ import annotations

# Most rows of A the dense kernel takes: a dot product per row and output, bound by reading
# the weights, which pays at a batch of a few rows; beyond, numpy's GEMM reuses each weight from
# cache across rows (bench/bench_dispatch.py gemm/dense times both at 1, 8 and 32 rows).
DENSE_MAX_ROWS = 8


def choose_gemm(rows: int, constant_b: bool, trans_a: bool) -> tuple[str, str]:
    """"dense" or "matmul" for a Gemm with ``rows`` rows of A, and why."""
    if not constant_b:
        return "matmul", "B is computed at run time: numpy.matmul"
    if trans_a:
        return "matmul", "A is transposed (transA): numpy.matmul"
    if rows > DENSE_MAX_ROWS:
        return "matmul", (f"{rows} rows of A (more than {DENSE_MAX_ROWS}): numpy.matmul, "
                          f"whose GEMM reuses each weight across rows")
    return "dense", (f"{rows} row{'s' if rows > 1 else ''} of A times constant weights: "
                     f"matrix-vector products on the engine's threads, the weights read once")


# Fewest rows of A for which a MatMul by constant weights runs on the packed micro-kernel
# rather than numpy.matmul (bench/bench_dispatch.py gemm/matmul).
PACKED_MIN_ROWS = 16


def choose_matmul(rows: int, constant_b: bool) -> tuple[str, str]:
    """"packed" or "numpy" for a MatMul whose A has ``rows`` rows (its leading dimensions
    flattened); constant_b: B is a constant float32 matrix."""
    if not constant_b:
        return "numpy", "B is not a constant float32 matrix: numpy.matmul"
    if rows < PACKED_MIN_ROWS:
        return "numpy", f"{rows} rows of A (fewer than {PACKED_MIN_ROWS}): numpy.matmul"
    return "packed", (f"{rows} rows of activations times constant weights: the packed "
                      f"micro-kernel on the engine's threads, the same sums at any thread count")


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
