"""Tensors rearranged or generated: DepthToSpace, SpaceToDepth, Tile, Range."""
from __future__ import annotations
