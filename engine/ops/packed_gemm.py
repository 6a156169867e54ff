"""Plan-side helpers of the packed GEMM micro-kernel (kernels/_packed_gemm.h), shared by the
pointwise convolution and Winograd's element-wise GEMMs: weight packing and the split into work
items. Results never depend on the split: every output is summed in one fixed order."""
from __future__ import annotations

import numpy as np

from .._kernels import conv_pointwise

ROW_BLOCK = conv_pointwise.ROW_BLOCK     # rows of A per packed block (MR)
PANEL = conv_pointwise.PANEL             # columns of B per panel (NR)
# Panels of one work item, copied contiguous: a quarter of a 1 MB L2, read once per row block.
PANELS_BYTES = 256 << 10
# Work items per GEMM at least (where there are that many row blocks x panel groups), so that
# two threads share even a small one.
MIN_ITEMS = 8


def pack_rows(a: np.ndarray, groups: int) -> np.ndarray:
    """A matrix [groups * Kg, Cg] (groups stacked along the rows) packed for the micro-kernel:
    [groups][ceil(Kg/MR)][Cg][MR], rows beyond Kg zero."""
    mr = ROW_BLOCK
    k, cg = a.shape
    kg = k // groups
    nmb = -(-kg // mr)
    p = np.zeros((groups, nmb * mr, cg), np.float32)
    p[:, :kg] = a.reshape(groups, kg, cg)
    return np.ascontiguousarray(p.reshape(groups, nmb, mr, cg).transpose(0, 1, 3, 2)).reshape(-1)


def split(cg: int, kg: int, columns: int, planes: int) -> tuple[int, int]:
    """(rows of A, panels of B) per work item of `planes` independent [Kg, Cg] @ [Cg, columns]
    GEMMs. The panels of one item fit PANELS_BYTES; the rows are then cut into chunks until
    there are MIN_ITEMS items. Depends on the shapes only."""
    mr, nr = ROW_BLOCK, PANEL
    npanels = -(-columns // nr)
    fit = max(1, PANELS_BYTES // (4 * cg * nr))
    ngroups = -(-npanels // fit)
    group_panels = -(-npanels // ngroups)
    nmb = -(-kg // mr)
    want = -(-MIN_ITEMS // (planes * ngroups))
    nchunks = max(1, min(nmb, want))
    return -(-nmb // nchunks) * mr, group_panels


def panel_floats(threads: int, cg: int, group_panels: int) -> int:
    """Floats of the per-thread panel buffers."""
    return max(1, threads) * group_panels * cg * PANEL
