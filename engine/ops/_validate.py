"""Input checks shared by the plans: every message names the argument and what was expected."""
import numpy as np

_FLOAT_KINDS = (np.float32, np.float64, np.float16)


def as_float_array(a, name: str, ndim: int, dtype=np.float32) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype`` with ``ndim`` dimensions."""
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"{name} must be an array, got {type(a).__name__}: {e}") from None
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.dtype not in _FLOAT_KINDS and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold real numbers (float32 preferred), got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def check_out(out, shape, name: str = "out") -> np.ndarray:
    """A caller-provided output buffer must be float32, C-contiguous and exactly ``shape``."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise ValueError(f"{name} must be a float32 NumPy array, got "
                         f"{getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return out


def check_spatial(x, name: str = "x") -> None:
    """The spatial dimensions (all after N and C) of ``x`` must be non-empty."""
    if any(d < 1 for d in x.shape[2:]):
        raise ValueError(f"{name} must have non-empty spatial dimensions, got shape {x.shape}")


def new_output(shape, dtype, layer, x_shape) -> np.ndarray:
    """np.empty(shape, dtype) for ``layer``'s output, refused first with a ValueError naming
    the layer and x's shape if it exceeds the memory budget (engine/memory.py)."""
    from ..memory import check_output
    check_output(shape, dtype, f"{type(layer).__name__} on x of shape {tuple(x_shape)}")
    return np.empty(shape, dtype)
