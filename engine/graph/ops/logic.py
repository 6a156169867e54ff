"""Comparisons and boolean logic: Equal, Less, Greater (and their -OrEqual forms), Not, And,
Or, Xor, and Where."""
from __future__ import annotations
