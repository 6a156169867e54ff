"""Activations that convolution kernels apply in their output step (codes in kernels/_epilogue.pxd)."""
import numpy as np

ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2}


def activation_code(activation) -> int:
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {activation!r}")
    return ACTIVATION_CODES[activation]


def apply_activation(y: np.ndarray, activation) -> np.ndarray:
    """The same activations in NumPy, in place, for paths without a fused output step."""
    if activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "relu6":
        np.clip(y, 0, 6, out=y)
    return y
