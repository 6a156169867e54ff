"""The memory budget: how many bytes one model may plan, and one functional call may allocate.

A model's budget is ``engine.load(..., max_memory=bytes)``; by default it, and the budget of
every functional call (engine.conv2d, engine.interpolate, ...), is ``default_max_memory()``:
RAM_FRACTION of the memory this process may use: the machine's physical RAM, or where lower
the container's limit (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``) or the process's
address-space limit (``ulimit -v``, RLIMIT_AS); FALLBACK_BYTES where none can be read. It is
read once, on first use. Sizes are checked against it before anything is allocated, so a file
or an argument that asks for too much is refused with a ValueError (a ModelError for models)
instead of a MemoryError, a swapping machine or the OOM killer.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os

import numpy as np

# Half: a budget bounds what the engine plans (a model's weights, arena and outputs), not the
# process's peak, which adds the caller's inputs, the kernels' scratch and the interpreter;
# the rest of the machine keeps the other half.
RAM_FRACTION = 0.5
# Where the RAM size cannot be read (no os.sysconf, as on Windows): the engine's single-tensor
# cap (engine/graph/ops/base.py MAX_TENSOR_BYTES).
FALLBACK_BYTES = 4 << 30

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@functools.lru_cache(maxsize=1)
def usable_bytes() -> int:
    """Physical RAM, or the cgroup's memory limit or RLIMIT_AS when lower; FALLBACK_BYTES if
    none is known."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            sizes.append(soft)
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():       # "max" (v2) means no limit; v1 writes a huge number
            sizes.append(int(text))
    sizes = [s for s in sizes if s > 0]
    return min(sizes) if sizes else FALLBACK_BYTES


def default_max_memory() -> int:
    """The budget of a model loaded without max_memory, and of every functional call."""
    return int(usable_bytes() * RAM_FRACTION)


# The budget of the model being loaded or planned, for code that runs inside its planning (the
# graph passes, the operators' shape inference) without a model at hand.
_model_budget = contextvars.ContextVar("engine_max_memory", default=None)


@contextlib.contextmanager
def memory_budget(max_memory):
    """Within this context current_max_memory() is ``max_memory``: a Model enters it while it
    loads and plans."""
    token = _model_budget.set(max_memory)
    try:
        yield
    finally:
        _model_budget.reset(token)


def current_max_memory():
    """The budget of the innermost memory_budget context, else default_max_memory()."""
    budget = _model_budget.get()
    return default_max_memory() if budget is None else budget


def resolve_max_memory(value) -> int:
    """``max_memory`` as given to engine.load: None for the default, else a positive number of
    bytes (math.inf: no budget beyond the single-tensor cap)."""
    if value is None:
        return default_max_memory()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"max_memory must be a number of bytes (or None for the default, "
                         f"{format_bytes(default_max_memory())}), got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {value!r}")
    return value if math.isinf(value) else int(value)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    try:
        return ctypes.CDLL(None).malloc_trim      # glibc's
    except (OSError, AttributeError):
        return None


def release_free_heap() -> None:
    """Give the C heap's free memory back to the operating system. Loading and planning free
    many buffers of a few MB (the file's bytes, weights before folding and packing); glibc
    keeps those below its mmap threshold in its heap, 13-46 MB of RSS on MobileNetV2 and
    DRN-C-26 after an ONNX load (bench/bench_deploy.py), until asked to trim it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def format_bytes(n) -> str:
    if math.isinf(n):
        return "unlimited"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"


def nbytes(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python integers: never overflows)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def check_output(shape, dtype, what: str, budget=None) -> None:
    """Refuse, with a ValueError starting with ``what`` (the call and the arguments that size
    the output), an output of ``shape`` larger than ``budget`` (default: default_max_memory())."""
    why = ""
    if budget is None:
        budget = default_max_memory()
        why = f" ({RAM_FRACTION:g} of the RAM: engine.memory.default_max_memory())"
    size = nbytes(shape, dtype)
    if size > budget:
        raise ValueError(f"{what}: the output, of shape {tuple(int(d) for d in shape)}, would "
                         f"take {format_bytes(size)}, more than the memory budget of "
                         f"{format_bytes(budget)}{why}")
