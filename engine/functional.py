"""The torch.nn.functional-style API: thin wrappers that validate, plan and run."""
from __future__ import annotations

from .ops._validate import as_float_array
from .ops.conv2d import Conv2d

__all__ = ["conv2d"]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto"):
    """torch.nn.functional.conv2d on NCHW float32 arrays; see engine.Conv2d for the options.

    Plans the layer for this call (weights transformed, algorithm chosen for x's size) and runs
    it once; to run a layer many times, make an engine.Conv2d and call it.
    """
    if getattr(x, "ndim", None) != 4:
        x = as_float_array(x, "x", 4)
    layer = Conv2d(weight, bias, stride, padding, dilation, groups, algorithm=algorithm,
                   input_size=x.shape[2:])
    return layer(x)
