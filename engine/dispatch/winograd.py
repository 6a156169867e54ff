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

from typing import NamedTuple

from .gemm import gemm_columns


# A layer's weights are transformed per call when U would take at least this many bytes
# (F(4x4): 9 MiB for 256->256, 36 MiB for 512->512; DRN-C-26's seven 512-channel layers would
# hold 252 MiB), where the memory saved is worth the time a call may cost more (DRN-C-26 on
# AVX2: within 1-4% of U stored at one and two threads; 4-12% a layer on AVX-512) ...
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


# ---- the tile: F(2x2,3x3), F(4x4,3x3) or F(6x6,3x3) -------------------------------------------
#
# A larger tile needs fewer products per output ((m+2)^2 / m^2: 4, 2.25, 1.78), but its tiles
# waste more of a map whose side is not a multiple of m (a 7x7 map is 64% padding in 6x6
# tiles), its transformed weights are (m+2)^2 / 9 times the weights (read once per call), and
# its transforms cost more per tile. The time of a tile choice on one core is estimated as
#     GEMM flops * GEMM cost + U bytes * U cost
#         + tiles * (m+2)^2 * (C * T_in[m] + K * T_out[m]) + (m+2)^2 * T_element,
# the GEMM over the columns the packed micro-kernel computes (gemm_columns), the input and
# output transforms apart (a 128->32 layer is mostly input transform), and a cost per tile
# element and call (its GEMM's work items, whatever their size: what separates the tiles on
# small maps with few output channels). The constants are fitted (non-negative least squares
# on relative error) to one-thread times of the three tiles on 33 layers, 16-512 channels, 7x7
# to 224x224 maps, 18 with as many output as input channels and 15 with 4x fewer or 2-4x more
# (DenseNet's 128->32, Inception's and SqueezeNet's expanding layers), by
# bench/bench_winograd_tiles.py, which also prints each pick's loss against the fastest tile.
class TileModel(NamedTuple):
    gemm_ms_per_gflop: float
    u_ms_per_gb: float
    input_ns: dict
    output_ns: dict
    element_us: float
    whole_panels: bool      # the GEMM's columns rounded up to whole panels, else to vectors
    overlap: bool = False   # the GEMM stage costs the larger of its flops' and U's terms


# Per vector width of the build. 8 floats (AVX2, Zen 3): fitted without the element term and
# with the GEMM's columns rounded up to whole panels; it picks the fastest tile or one within
# 5% of it on every layer, where the earlier model took F(4x4) for DenseNet's 128->32 on 28x28
# (0.88 ms against F(2x2)'s 0.65). 16 floats (AVX-512, Zen 4): the columns rounded up to
# vectors, as the micro-kernel runs a last panel of at most 16 columns as one vector (14x14
# maps: F(4x4)'s 16 tiles fill one). Its pick is the fastest tile on 30 of the 33 layers; the
# other three lose 0.5%, 3.7% (64->64 on 14x14: 0.151 against 0.146 ms) and 15% (256->256 on
# 28x28 takes F(6x6): 4.33 against F(4x4)'s 3.77 ms in that run; 4.50 against 4.62 in a
# rerun, where F(6x6) was the faster: the two are within this machine's noise).
# Without the element term DenseNet's 128->32 on 14x14 took F(4x4), 0.22 ms against F(2x2)'s
# 0.16, in each of its 24 layers.
TILE_MODELS = {
    8: TileModel(10.76, 50.3, {2: 0.655, 4: 2.00, 6: 2.40}, {2: 0.340, 4: 0.642, 6: 0.812},
                 0.0, True),
    16: TileModel(10.9, 20.2, {2: 0.342, 4: 0.683, 6: 0.925}, {2: 0.215, 4: 0.181, 6: 0.258},
                  1.38, False),
}
# The largest error a tile may bring to be picked by auto: max |y - float64 reference| over
# max |reference| on unit-normal data; TILE_REL_ERROR is twice the worst measured on 16-2048
# channel layers (tests/test_winograd.py test_tile_error_is_bounded measures it again).
WINOGRAD_MAX_REL_ERROR = 5e-4
TILE_REL_ERROR = {2: 4e-6, 4: 6e-5, 6: 1.2e-4}
TILE_ALGORITHMS = {2: "winograd_f23", 4: "winograd_f43", 6: "winograd_f63"}


# The kernel on channel-blocked tensors (kernels/nchwc_winograd.pyx), fitted on a 16-float
# build and used on 8-float ones too: refitted on the AVX2 machine, a model picked tiles that
# lost 5.0% on average against this one's 3.5% (bench_winograd_tiles.py --blocked). Its
# GEMMs are the pointwise kernel's over the tiles, which read U once per strip of tiles and
# overlap that read with their multiply-adds, so the GEMM stage costs the larger of the two
# (512->512 on 7x7: F(2x2)'s GEMMs are bound by their flops, F(4x4)'s by U's 38 MB). Fitted by
# bench/bench_winograd_tiles.py --blocked on the same 33 layers: its pick is the fastest tile
# on 26, within 2.1% on four more, and 4.4-6.6% slower on three (64->128 on 56x56, 128->32 on
# 14x14, 16->16 on 224x224).
BLOCKED_TILE_MODEL = TileModel(7.94, 46.3, {2: 0.211, 4: 0.31, 6: 0.291},
                               {2: 0.149, 4: 0.245, 6: 0.328}, 0.0, False, overlap=True)


def tile_model(blocked: bool = False) -> TileModel:
    from .conv import vector_floats
    if blocked:
        return BLOCKED_TILE_MODEL
    return TILE_MODELS[16 if vector_floats() >= 16 else 8]


def tile_columns(tiles: int, blocked: bool = False) -> int:
    """The GEMM columns the kernel computes for ``tiles`` tiles: the packed micro-kernel's
    (gemm_columns), or on blocks the tiles (the pointwise kernel's tiles end with them)."""
    if blocked:
        return tiles
    return gemm_columns(tiles, tile_model().whole_panels)


def u_passes(m: int, cg: int, kg: int, tiles: int, blocked: bool = False) -> int:
    """How many times a call reads U: once, or on blocks once per strip of tiles."""
    if not blocked:
        return 1
    from .._kernels.nchwc_winograd import BLOCK, strip_tiles
    cb, kb = -(-cg // BLOCK), -(-kg // BLOCK)
    return -(-tiles // strip_tiles(cb, kb, m, tiles))


def tile_cost_ms(m: int, cg: int, kg: int, groups: int, tiles: int,
                 blocked: bool = False) -> float:
    """Estimated one-core time of F(m x m, 3x3) on ``tiles`` tiles (all images and phases),
    on NCHW or on blocks."""
    model = tile_model(blocked)
    e = (m + 2) ** 2
    u = 4.0 * e * cg * kg * groups * u_passes(m, cg, kg, tiles, blocked)
    gemm = 2.0 * tile_columns(tiles, blocked) * e * cg * kg * groups
    transforms = tiles * e * groups * (cg * model.input_ns[m] + kg * model.output_ns[m])
    gemm_ms, u_ms = gemm / 1e9 * model.gemm_ms_per_gflop, u / 1e9 * model.u_ms_per_gb
    core = max(gemm_ms, u_ms) if model.overlap else gemm_ms + u_ms
    return core + transforms / 1e6 + e * model.element_us / 1e3


def choose_blocked_tile(c: int, k: int, batch: int, out_size,
                        dilation=(1, 1), groups: int = 1) -> tuple[int, str]:
    """(m, reason): the tile of the Winograd kernel on blocks for a C->K 3x3 layer of this
    output size, dilation and groups, by BLOCKED_TILE_MODEL, among those the policy allows."""
    from .._kernels.nchwc_winograd import layer_tiles
    from .policy import current_policy
    excluded = current_policy().excluded
    ranked = [(m, why) for m, _, why in rank_winograd_tiles(
        c // groups, k // groups, groups, lambda m: layer_tiles(batch, *out_size, m, *dilation),
        blocked=True)
        if TILE_ALGORITHMS[m] not in excluded]
    return ranked[0]


def rank_winograd_tiles(cg: int, kg: int, groups: int, tiles_of,
                        blocked: bool = False) -> list[tuple[int, float, str]]:
    """(m, estimated ms, reason) for the tiles whose error is within WINOGRAD_MAX_REL_ERROR,
    cheapest first; tiles_of(m): the layer's tiles of side m; blocked: the kernel on blocks."""
    costs = {m: tile_cost_ms(m, cg, kg, groups, tiles_of(m), blocked) for m in TILE_ALGORITHMS
             if TILE_REL_ERROR[m] <= WINOGRAD_MAX_REL_ERROR}
    ranked = sorted(costs, key=lambda m: (costs[m], m))
    others = ", ".join(f"F({m}x{m}) {costs[m]:.2f}" for m in ranked[1:])
    return [(m, costs[m], f"Winograd F({m}x{m},3x3): {tiles_of(m)} tiles, estimated "
                          f"{costs[m]:.2f} ms" + (f" (vs {others} ms)" if i == 0 and others
                                                  else ""))
            for i, m in enumerate(ranked)]
