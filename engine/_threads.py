"""Thread settings shared by every kernel.

Kernels take their thread count explicitly (``num_threads``), split work over outputs and never
over a reduction, so a result does not depend on the count. None of them calls a BLAS; the few
ops that call np.matmul do, so the BLAS libraries loaded (numpy's OpenBLAS) are held at one
thread while a plan or a layer that may reach them runs: ``blas_pinned()``. Their idle threads
would otherwise spin beside the kernels' threads.
"""
import os
import threading
import weakref


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
    """An explicit per-call count, or the process-wide one. A forked child keeps it: the
    kernels' pool (kernels/_pool.h) starts new workers there."""
    if num_threads is None:
        n = _num_threads
    elif int(num_threads) < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads}")
    else:
        n = int(num_threads)
    return n


# Objects whose locks another thread may hold at the moment of a fork: in the child that thread
# does not exist, so the locks are made anew there (fork_safe registers an object).
_lock_holders = weakref.WeakSet()
# The lock types and how to make one: the types themselves cannot be instantiated.
_LOCK_FACTORIES = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


def fork_safe(obj):
    """Register ``obj``: in a forked child, every lock among its attributes is replaced by a
    new, unheld one. Returns obj."""
    _lock_holders.add(obj)
    return obj


def _after_fork_in_child() -> None:
    for obj in list(_lock_holders):
        for name, value in list(vars(obj).items()):
            make = _LOCK_FACTORIES.get(type(value))
            if make is not None:
                setattr(obj, name, make())
    _pin._depth, _pin._saved = 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        fork_safe(self)
        self._depth = 0
        self._saved = None
        self._libs = None

    def _controllers(self):
        if self._libs is None:
            # the BLAS libraries loaded now: numpy's, which the ops' np.matmul calls use (the
            # engine calls no scipy routine that uses BLAS, so scipy.linalg, a third of a
            # second to import, is not loaded for it)
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
