"""Plan-side helpers of the packed GEMM micro-kernel (kernels/_packed_gemm.h), shared by the
pointwise, im2col and Winograd convolutions: weight packing, and how the work is split (into
one share per thread for pointwise, share_split; into work items for Winograd's many
element-wise GEMMs, split). Results never depend on the split: every output is summed in one
fixed order."""
from __future__ import annotations

import numpy as np

from .._kernels import conv_pointwise

ROW_BLOCK = conv_pointwise.ROW_BLOCK     # rows of A per packed block (MR)
PANEL = conv_pointwise.PANEL             # columns of B per panel (NR)
# Panels of one work item, copied contiguous: a quarter of a 1 MB L2, read once per row block.
PANELS_BYTES = 256 << 10
# Work items per thread at least, where the GEMM has that many row blocks x panel groups, so
# that threads share even a small GEMM evenly.
ITEMS_PER_THREAD = 4


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


def split(cg: int, kg: int, columns: int, planes: int, threads: int = 1) -> tuple[int, int]:
    """(rows of A, panels of B) per work item of `planes` independent [Kg, Cg] @ [Cg, columns]
    GEMMs, for `threads` threads.

    An item copies its panels (at most PANELS_BYTES) and runs every row block of its chunk of
    A over them, so A is read once per group of panels and B once per chunk of rows. The split
    reads the fewest bytes among those with at least ITEMS_PER_THREAD items per thread (where
    the GEMM has that many), e.g. a 32->64 112x112 layer (A 8 KB, B 1.6 MB) cuts B into groups
    and never A, a 1024->1024 7x7 one (A 4 MB, B 200 KB) the other way round. Results do not
    depend on the split (every output is summed in one order), so it may follow the thread
    count."""
    mr, nr = ROW_BLOCK, PANEL
    npanels = -(-columns // nr)
    nmb = -(-kg // mr)
    fit = max(1, PANELS_BYTES // (4 * cg * nr))
    min_groups = -(-npanels // fit)
    want = 1 if threads <= 1 else ITEMS_PER_THREAD * threads
    a_bytes, b_bytes = kg * cg, cg * columns
    best = None
    for tried in range(min_groups, npanels + 1):
        group_panels = -(-npanels // tried)
        ngroups = -(-npanels // group_panels)            # the groups this size really makes
        rows, nchunks = _chunks(nmb, mr, -(-want // (planes * ngroups)), planes * ngroups,
                                threads)
        cost = ngroups * a_bytes + nchunks * b_bytes
        if best is None or cost < best[0]:
            best = (cost, rows, group_panels)
        if planes * ngroups >= want:
            break                                        # more groups only read A more often
    return best[1], best[2]


def _chunks(nmb: int, mr: int, wanted: int, per_chunk: int, threads: int) -> tuple[int, int]:
    """(rows, chunks) cutting nmb row blocks into at least `wanted` chunks of whole blocks, if
    there are that many, preferring a count whose items (per_chunk each) the threads share
    evenly: 7 items on 2 threads keep one thread busy 14% longer than 8 would."""
    first = max(1, min(nmb, wanted))
    for n in range(first, min(nmb, 2 * first) + 1):
        rows = -(-nmb // n) * mr
        real = -(-nmb * mr // rows)
        if (real * per_chunk) % max(1, threads) == 0:
            return rows, real
    rows = -(-nmb // first) * mr
    return rows, -(-nmb * mr // rows)


def share_split(cg: int, kg: int, columns: int, threads: int) -> tuple[bool, int]:
    """(split_rows, group_panels) for a GEMM run as one share per thread (the pointwise
    kernel): the threads share the rows of A when A is the larger operand (each then reads all
    of B, the smaller), else the panels of B; a thread copies at most PANELS_BYTES of panels
    at a time."""
    npanels = -(-columns // PANEL)
    split_rows = kg > columns
    mine = npanels if split_rows else -(-npanels // max(1, threads))
    fit = max(1, PANELS_BYTES // (4 * cg * PANEL))
    return split_rows, max(1, min(fit, mine))


def panel_floats(threads: int, cg: int, group_panels: int) -> int:
    """Floats of the per-thread panel buffers."""
    return max(1, threads) * group_panels * cg * PANEL
