"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, the norms and log-sums,
ArgMax/ArgMin and TopK."""
from __future__ import annotations
