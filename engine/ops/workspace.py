"""Scratch buffers for the kernels, reused across calls and layers (one pool per process, free
buffers kept per thread)."""
from __future__ import annotations

import contextlib
import mmap
import threading

import numpy as np

from .._threads import fork_safe


def populated_zeros(count: int, dtype=np.float32) -> np.ndarray:
    """Zeroed memory made present at once (MAP_POPULATE), in small pages, for what is
    allocated once and kept: transformed weights, a plan's activation arena, the kernels'
    scratch buffers. NumPy asks
    the kernel to back large arrays with transparent huge pages; where memory is fragmented
    the kernel then compacts it on the first touch of each 2 MB, which made allocating DRN-C-26's
    326 MB of Winograd weights take 0.8 s instead of 0.15 s and MobileNetV2's first run 28 ms
    instead of 8, with runs no faster after (bench/bench_deploy.py)."""
    nbytes = int(count) * np.dtype(dtype).itemsize
    if nbytes < (1 << 20) or not hasattr(mmap, "MAP_POPULATE"):
        return np.zeros(count, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                    | mmap.MAP_POPULATE)
    return np.frombuffer(buf, dtype, count)


def aligned_zeros(count: int) -> np.ndarray:
    """populated_zeros(count) float32 starting on a 64-byte boundary: for what a kernel reads
    as aligned vectors (the packed GEMM's B panels)."""
    raw = populated_zeros(count + 16)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + count]


class WorkspacePool:
    """Scratch buffers reused across calls and layers.

    A fresh multi-MB buffer per call costs a page fault per 4 KB page on first touch, measured
    at about 40% of a 64->64 56x56 layer's time; the kernel's own malloc/free does the same
    since glibc returns large blocks to the system. Each thread keeps its own free buffers, so
    concurrent calls never share one and taking one needs no lock (a shared locked list cost
    1.3 us a take and give, a fifth of a small layer's Python overhead); at most ``keep`` stay
    per thread, the largest, and buffers above ``max_bytes`` are never kept.
    """

    def __init__(self, keep: int = 4, max_bytes: int = 256 << 20):
        self.keep, self.max_bytes = keep, max_bytes
        self._local = threading.local()
        # threads inside tracking(): while none is, take and give count nothing (a take and
        # give was 1.5 us of a small step's Python, most of it probing for the counters)
        self._tracking = 0
        self._tracking_lock = threading.Lock()
        fork_safe(self)

    def _free(self) -> list:
        try:
            return self._local.free
        except AttributeError:
            free = self._local.free = []
            return free

    @contextlib.contextmanager
    def tracking(self):
        """Within it, ``peak`` (floats) is the most scratch this thread held at once: what
        engine.compare reports as an algorithm's scratch memory."""
        # fresh buffers of the sizes asked for, not larger ones kept from other layers
        saved, self._local.free = self._free(), []
        self._local.held = self._local.peak = 0
        with self._tracking_lock:
            self._tracking += 1
        try:
            yield self
        finally:
            with self._tracking_lock:
                self._tracking -= 1
            self._local.tracked = getattr(self._local, "peak", 0)
            del self._local.held, self._local.peak
            self._local.free = saved

    @property
    def peak(self) -> int:
        return getattr(self._local, "tracked", 0)

    def _count(self, floats: int) -> None:
        if self._tracking and hasattr(self._local, "held"):
            self._local.held += floats
            self._local.peak = max(self._local.peak, self._local.held)

    def take(self, floats: int) -> np.ndarray:
        free = self._free()
        at = -1
        for i, b in enumerate(free):
            if b.size >= floats and (at < 0 or b.size < free[at].size):
                at = i
        if at >= 0:
            best = free.pop(at)
        else:
            # 64-byte aligned start, so the kernel's sub-buffers are aligned too; made
            # present at once, as it is kept and reused
            best = aligned_zeros(floats)
        if self._tracking:
            self._count(best.size)
        return best

    def give(self, buf: np.ndarray) -> None:
        if self._tracking:
            self._count(-buf.size)
        if buf.nbytes > self.max_bytes:
            return
        free = self._free()
        free.append(buf)
        if len(free) > self.keep:
            sizes = [b.size for b in free]
            free.pop(sizes.index(min(sizes)))


workspace = WorkspacePool()
