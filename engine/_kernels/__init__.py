"""Compiled kernels (built from kernels/*.pyx)."""
