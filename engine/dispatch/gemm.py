"""How an ONNX Gemm runs (engine/graph/ops/linalg.py), and why: "dense", the matrix-vector
kernel on the engine's threads (kernels/dense.pyx), which streams constant weights once per
call; or "matmul", numpy.matmul.
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
