"""Activations that convolution kernels apply in their output step (codes in kernels/_vec_act.h
and kernels/_epilogue.pxd), and the same activations as one vector pass over a tensor."""
import functools

import numpy as np

# Every code maps 0 to 0, so the zero channels padding a channel block stay zero (NCHW16c).
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4, "gelu": 5}

# What every kernel's output step does, clamp-only ones included (the NCHW depthwise kernels
# and the float64 direct loop); the rest run there as a vector pass after the kernel.
CLAMP_ACTIVATIONS = (None, "relu", "relu6")


def activation_code(activation) -> int:
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {activation!r}")
    return ACTIVATION_CODES[activation]


def apply_activation(y: np.ndarray, activation, num_threads: int = 1) -> np.ndarray:
    """The same activations over a whole tensor, in place, for paths without a fused output
    step: the vector kernels for float32 (the values the fused steps give), NumPy for
    float64."""
    if activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "relu6":
        np.clip(y, 0, 6, out=y)
    elif activation is not None:
        if y.dtype == np.float32:
            vector_activation(activation)(y, y, num_threads)
        else:
            y[...] = _float64_activation(activation, y)
    return y


def _float64_activation(kind, x):
    if kind == "silu":
        return x / (1 + np.exp(-x))
    if kind == "hardswish":
        return x * np.clip(x / 6 + 0.5, 0, 1)
    if kind == "gelu":
        from scipy.special import erf
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))
    raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {kind!r}")


# Multiply-adds a vector activation costs per element, for threads_for: with exp's polynomial
# and a division, about twenty; a second thread pays from about ten thousand elements.
VECTOR_ACTIVATION_WORK = 20


@functools.lru_cache(maxsize=None)   # one runner per kind: steps call it on every run
def vector_activation(kind: str):
    """run(x, out, num_threads) computing "sigmoid", "silu", "gelu" (exact, erf form) or
    "hardswish" elementwise with kernels/activation.pyx: one pass over memory, within a few
    ulp of the float64 value (tests/test_activation_kernels.py states the bounds). ``out`` may
    be ``x``."""
    from .._kernels import activation as _act
    from .._threads import threads_for
    code = {"sigmoid": _act.SIGMOID, "silu": _act.SILU, "gelu": _act.GELU,
            "hardswish": _act.HARDSWISH}[kind]
    work = _act.f32_activation

    def run(x, out, num_threads=1):
        threads = threads_for(x.size * VECTOR_ACTIVATION_WORK, num_threads)
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if out.flags.c_contiguous:
            work(flat, out.reshape(-1), code, threads)
        else:
            tmp = np.empty(out.shape, np.float32)
            work(flat, tmp.reshape(-1), code, threads)
            np.copyto(out, tmp)
    return run
