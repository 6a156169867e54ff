"""Plan-side helpers of the packed GEMM micro-kernel (kernels/_packed_gemm.h), used by the
pointwise, im2col, Winograd, transposed, 3-D and deformable convolutions: weight packing
(pack_rows), and how pointwise and Winograd split their GEMMs (share_split: one share per
thread; split: work items of Winograd's many element-wise GEMMs). The others cut their own
chunks. Results never depend on the split: every output is summed in one fixed order."""
from __future__ import annotations

import numpy as np

from .._kernels import conv_pointwise
from .activation import apply_activation, kernel_act
from .workspace import aligned_zeros, populated_zeros

ROW_BLOCK = conv_pointwise.ROW_BLOCK     # rows of A per packed block (MR)
PANEL = conv_pointwise.PANEL             # columns of B per panel (NR)
# Panels of one work item, copied contiguous: a quarter of a 1 MB L2, read once per row block.
PANELS_BYTES = 256 << 10


def packed_rows(kg: int) -> int:
    """Rows of a packed [Kg, Cg] matrix: Kg rounded up to whole blocks of MR."""
    return -(-kg // ROW_BLOCK) * ROW_BLOCK


def pack_rows(a: np.ndarray, groups: int) -> np.ndarray:
    """A matrix [groups * Kg, Cg] (groups stacked along the rows) packed for the micro-kernel:
    [groups][ceil(Kg/MR)][Cg][MR], rows beyond Kg zero."""
    mr = ROW_BLOCK
    k, cg = a.shape
    kg = k // groups
    nmb = -(-kg // mr)
    out = populated_zeros(groups * nmb * mr * cg)
    packed = out.reshape(groups, nmb, cg, mr)
    full = kg // mr                          # whole blocks of MR rows, then the rest
    rows = a.reshape(groups, kg, cg)
    packed[:, :full] = rows[:, :full * mr].reshape(groups, full, mr, cg).transpose(0, 1, 3, 2)
    if kg > full * mr:
        packed[:, full, :, :kg - full * mr] = rows[:, full * mr:].transpose(0, 2, 1)
    return out


def split(cg: int, kg: int, columns: int) -> tuple[int, int]:
    """(rows of A, panels of B) per work item of independent [Kg, Cg] @ [Cg, columns] GEMMs
    (Winograd's element-wise ones: 16 or 36 of them, enough items for the threads already).
    An item copies its panels (at most PANELS_BYTES) and runs every row block of A over them,
    so A is read once per group of panels: all of A, and as few groups as fit."""
    npanels = -(-columns // PANEL)
    fit = max(1, PANELS_BYTES // (4 * cg * PANEL))
    ngroups = -(-npanels // fit)
    return -(-kg // ROW_BLOCK) * ROW_BLOCK, -(-npanels // ngroups)


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


def pack_panels(b: np.ndarray) -> np.ndarray:
    """A constant B [K, N] as the micro-kernel's panels: [ceil(N/NR)][K][NR], columns beyond N
    zero, so that a product by it copies nothing per call."""
    k, n = b.shape
    npanels = -(-n // PANEL)
    out = aligned_zeros(npanels * k * PANEL)      # the kernel reads panels as aligned vectors
    view = out.reshape(npanels, k, PANEL)
    full = n // PANEL
    view[:full] = b[:, :full * PANEL].reshape(k, full, PANEL).transpose(1, 0, 2)
    if n > full * PANEL:
        view[full, :, :n - full * PANEL] = b[:, full * PANEL:]
    return out


class ConstantRight:
    """out[M, N] = act(a[M, K] @ b[K, N] (+ bias[N])) for a constant b and an a computed at run
    time (a MatMul of activations by weights: a transformer-style block's Linear layers, a
    ConvNeXt block's MLP), on the engine's threads with the micro-kernel: b is packed into
    panels once, here, and a is read in place. The bias is added after each output's sum over
    k, the value an Add after the product gives, and the activation
    (engine/ops/activation.py) runs in the output step. Every output is summed over k in
    order, whatever the thread count."""

    def __init__(self, b: np.ndarray, bias=None, activation=None):
        self.k, self.n = b.shape
        self.panels = pack_panels(np.asarray(b, np.float32))
        self.bias = np.zeros(0 if bias is None else -(-self.n // PANEL) * PANEL, np.float32)
        if bias is not None:
            self.bias[:self.n] = np.asarray(bias, np.float32).reshape(self.n)
        self.act, self.activation = kernel_act(activation), activation

    def run(self, a: np.ndarray, out: np.ndarray, threads: int) -> None:
        """a: C-contiguous float32 (M, K); out: C-contiguous float32 (M, N)."""
        m, k = a.shape
        if k == 0:                          # empty sums: the bias alone
            out[...] = self.bias[:self.n] if self.bias.size else 0.0
            apply_activation(out, self.activation, threads)
            return
        split_rows, group_panels = share_split(k, m, self.n, threads)
        conv_pointwise.f32_gemm_rows(a, self.panels, self.bias, out, split_rows, group_panels,
                                     self.act, threads)
