"""Where Winograd's transformed weights live, and why:

- "stored": U = G g G^T for the (m+2)^2 tile elements, made once when the layer is created
  and kept: (m+2)^2 / 9 times the weights' memory (4x for F(4x4,3x3));
- "per_call": the weights are kept as given and every GEMM work item computes the blocks of U
  it multiplies, in L1, as it uses them (kernels/conv_winograd.pyx gemm_phase_taps). That
  costs about 3 (m+5) multiply-adds per weight against the GEMMs' 2 (m+2) T per weight and
  tile column (T tiles per call), and reads 9 floats per weight from memory instead of
  (m+2)^2.

``choose_winograd_weights`` decides per input size; a layer run at sizes with both answers
keeps both forms.
"""
from __future__ import annotations

# A layer's weights are transformed per call when U would take at least this many bytes
# (F(4x4): 9 MiB for 256->256, 36 MiB for 512->512; DRN-C-26's seven 512-channel layers would
# hold 252 MiB), where the memory saved is worth the 4-12% a call costs more ...
PER_CALL_MIN_BYTES = 16 << 20
# ... and each call has at least this many tiles to amortise the transform over
# (bench/bench_dispatch.py winograd/weights).
PER_CALL_MIN_TILES = 48


def choose_winograd_weights(u_bytes: int, tiles: int) -> tuple[str, str]:
    """("stored" or "per_call", reason) for a layer whose transformed weights take u_bytes and
    whose calls have ``tiles`` tiles (the most in one block of the plan)."""
    mb = u_bytes / 2**20
    if u_bytes < PER_CALL_MIN_BYTES:
        return "stored", f"U takes {mb:.1f} MiB (under {PER_CALL_MIN_BYTES >> 20} MiB): made once"
    if tiles < PER_CALL_MIN_TILES:
        return "stored", (f"U takes {mb:.1f} MiB, but {tiles} tiles per block (under "
                          f"{PER_CALL_MIN_TILES}) would not amortise transforming it per call")
    return "per_call", (f"U would take {mb:.1f} MiB: the weights are kept as given and each "
                        f"block of U is computed where it is used ({tiles} tiles per block "
                        f"amortise it)")
