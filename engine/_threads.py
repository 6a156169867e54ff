"""Thread settings shared by every kernel.

Kernels take their thread count explicitly (``num_threads``), split work over outputs and never
over a reduction, so a result does not depend on the count. None of them calls a BLAS; the few
ops that call np.matmul or scipy do, so the BLAS libraries (numpy's and scipy's OpenBLAS) are
held at one thread while a plan or a layer that may reach them runs: ``blas_pinned()``. Their
idle threads would otherwise spin beside the kernels' OpenMP threads.
"""
import os
import threading


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()


def set_num_threads(n: int) -> None:
    """Number of threads the kernels use from now on (process-wide)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise ValueError(f"num_threads must be a positive integer, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"num_threads must be a positive integer, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads


def resolve_threads(num_threads=None) -> int:
    """An explicit per-call count, or the process-wide one."""
    if num_threads is None:
        return _num_threads
    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads}")
    return int(num_threads)


def threads_for(work: float, num_threads: int, min_work_per_thread: float = 2e5) -> int:
    """Stay single-threaded below a work threshold (in multiply-adds), as MLAS does: starting a
    parallel region costs a few microseconds, more than a tiny layer's whole run."""
    if work < min_work_per_thread:
        return 1
    return max(1, min(num_threads, int(work // min_work_per_thread)))


class _BlasPin:
    """Hold every loaded BLAS at one thread while any kernel that calls one runs.

    A process-wide count, so concurrent callers (a Model run from many threads) never restore
    the BLAS thread count under one another's feet.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None
        self._libs = None

    def _controllers(self):
        if self._libs is None:
            import scipy.linalg.cython_blas  # noqa: F401  (make sure scipy's BLAS is loaded)
            from threadpoolctl import ThreadpoolController
            self._libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        return self._libs

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                libs = self._controllers()
                self._saved = [c.num_threads for c in libs]
                for c in libs:
                    if c.num_threads != 1:
                        c.set_num_threads(1)
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for c, n in zip(self._libs, self._saved):
                    if n != 1:
                        c.set_num_threads(n)


_pin = _BlasPin()


def blas_pinned():
    """Context manager: BLAS runs single-threaded inside it (re-entrant, thread-safe)."""
    return _pin
