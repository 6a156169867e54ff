"""How an ONNX Gemm and a MatMul run (engine/graph/ops/linalg.py), and why. Gemm: "dense",
the matrix-vector kernel on the engine's threads (kernels/dense.pyx), which streams constant
weights once per call; "packed", the engine's packed GEMM (engine/ops/packed_gemm.py
ConstantRight), its weights packed into panels once; or "matmul", numpy.matmul. MatMul by
constant weights: "packed", or "numpy".
"""
from __future__ import annotations

# Most rows of A the dense kernel takes: one. It reads the weights where they were loaded; the
# packed kernel holds a second, packed copy of them (VGG-16 at batch 1: 762 MiB transformed or
# packed against 290, MobileNetV3-Small 11.8 against 5.6), for no gain at one row: inside
# whole models the two ran within 0.975-1.00 of each other (A/B in one process at one
# thread), alone from memory the dense kernel's single stream through the weights won
# (1280->1000: 0.18 vs 0.22 ms), from cache it lost (0.10 vs 0.08). From two rows on the packed
# kernel won (two rows 0.20 vs 0.31 ms, eight 0.30 vs 0.66, 768->3072 and 3072->768 alike), and
# NumPy's matmul, which packs the weights on every call, lost to both at every row count up to
# 32, from memory or from cache (bench/bench_dispatch.py gemm/dense).
DENSE_MAX_ROWS = 1


def choose_gemm(rows: int, constant_b: bool, trans_a: bool) -> tuple[str, str]:
    """"dense", "packed" or "matmul" for a Gemm with ``rows`` rows of A, and why."""
    if not constant_b:
        return "matmul", "B is computed at run time: numpy.matmul"
    if trans_a:
        return "matmul", "A is transposed (transA): numpy.matmul"
    if rows <= DENSE_MAX_ROWS:
        return "dense", ("1 row of A times constant weights: matrix-vector products on the "
                         "engine's threads, the weights read once")
    return "packed", (f"{rows} rows of A times constant weights: the packed micro-kernel on "
                      f"the engine's threads, the weights packed once")


def choose_matmul(rows: int, constant_b: bool) -> tuple[str, str]:
    """"packed" or "numpy" for a MatMul whose A has ``rows`` rows (its leading dimensions
    flattened); constant_b: B is a constant float32 matrix. The packed micro-kernel beat
    numpy.matmul from one row on (see DENSE_MAX_ROWS)."""
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
