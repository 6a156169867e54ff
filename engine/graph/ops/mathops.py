"""Elementwise math: unary functions and activations beyond elementwise.py's, Pow, and the
variadic Min, Max and Mean."""
from __future__ import annotations
