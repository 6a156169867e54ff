"""convengine: a CPU inference engine for convolutional networks.

Every convolution algorithm worth having (im2col + GEMM, pointwise GEMM, Winograd, depthwise,
dilated convolution by space-to-batch, direct loops) behind one dispatcher that says why it
chose each one.
"""
from ._threads import get_num_threads, set_num_threads
from .dispatch import ALGORITHMS as _ALGORITHMS
from .errors import ModelError
from .functional import conv2d
from .ops.conv2d import Conv2d
from .functional import deform_conv2d
from .ops.deform import DeformConv2d
from .ops.octave import OctaveConv2d
from .functional import (avg_pool2d, global_avg_pool2d, global_max_pool2d, interpolate,
                         max_pool2d, max_unpool2d)
from .functional import conv1d, conv3d, conv_transpose1d, conv_transpose2d
from .ops.conv_transpose import ConvTranspose1d, ConvTranspose2d, bilinear_upsample_kernel
from .ops.convnd import Conv1d, Conv3d
from .io import export, load

__version__ = "0.1.0"


def algorithms() -> list[str]:
    """Names accepted by ``algorithm=`` (besides "auto")."""
    from .ops.conv2d_algorithms import REGISTRY
    return [a for a in _ALGORITHMS if a in REGISTRY]


def build_info() -> dict:
    """How this installation was built and what it runs with."""
    from ._kernels import _info
    try:
        from . import _build_config as cfg
        flags = {"compile_args": list(cfg.COMPILE_ARGS), "link_args": list(cfg.LINK_ARGS),
                 "compiler": cfg.COMPILER, "portable": cfg.PORTABLE,
                 "sanitize": getattr(cfg, "SANITIZE", None)}
    except ImportError:
        flags = {"compile_args": None, "link_args": None, "compiler": None, "portable": None,
                 "sanitize": None}
    blas = None
    try:
        from threadpoolctl import threadpool_info
        import scipy.linalg.cython_blas  # noqa: F401
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        scipy_libs = [i for i in libs if "scipy" in i.get("filepath", "")
                      and "64_" not in i.get("filepath", "")]
        blas = (scipy_libs or libs or [None])[0]
    except Exception:  # threadpoolctl can fail on exotic platforms; the info is optional
        pass
    return {"version": __version__, **flags, "openmp": _info.openmp_enabled(),
            "openmp_max_threads": _info.openmp_max_threads(), "num_threads": get_num_threads(),
            "vector_floats": _info.vector_floats(),
            "blas": blas, "algorithms": algorithms()}


# The graph runner (with its operator catalog), the algorithm lab and the Dask integration load
# on first use (engine.load imports the runner): ``import engine`` stays cheap and needs
# neither matplotlib nor dask.
_LAZY = {"Model": ("engine.graph", "Model"),
         "compare": ("engine.lab.compare", "compare"), "tune": ("engine.lab.wisdom", "tune"),
         "receptive_field": ("engine.lab.receptive", "receptive_field"),
         "dask": ("engine.dask", None)}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


__all__ = ["conv2d", "Conv2d", "conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "bilinear_upsample_kernel",
           "ModelError", "algorithms", "build_info", "set_num_threads",
           "get_num_threads", "__version__"]
__all__ += ["deform_conv2d", "DeformConv2d", "OctaveConv2d"]
__all__ += ["max_pool2d", "avg_pool2d", "max_unpool2d", "global_avg_pool2d", "global_max_pool2d",
            "interpolate"]
__all__ += ["load", "Model", "export", "compare", "tune", "receptive_field"]
