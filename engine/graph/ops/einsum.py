"""Einsum, in the forms CNN exports use."""
from __future__ import annotations
