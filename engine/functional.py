"""The torch.nn.functional-style API: thin wrappers that validate, plan and run."""
from __future__ import annotations

from .ops._validate import as_float_array
from .ops.conv2d import Conv2d
from .ops.pool import (avg_pool2d, global_avg_pool2d, global_max_pool2d, max_pool2d,
                       max_unpool2d)
from .ops.resample import interpolate
from .ops.conv_transpose import ConvTranspose1d, ConvTranspose2d
from .ops.convnd import Conv1d, Conv3d

__all__ = ["conv2d"]
__all__ += ["max_pool2d", "avg_pool2d", "max_unpool2d", "global_avg_pool2d", "global_max_pool2d",
            "interpolate"]


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


__all__ += ["conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d"]


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto"):
    """torch.nn.functional.conv1d on NCL float32 arrays, run as a 2-D convolution on the
    (N, C, 1, L) view so every 2-D algorithm applies; see engine.Conv1d for the options."""
    if getattr(x, "ndim", None) != 3:
        x = as_float_array(x, "x", 3)
    layer = Conv1d(weight, bias, stride, padding, dilation, groups, algorithm=algorithm,
                   input_size=x.shape[2:])
    return layer(x)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto"):
    """torch.nn.functional.conv3d on NCDHW float32 arrays (vol2col + packed GEMM); padding may be
    an int, a 3-tuple, "same" or "valid". See engine.Conv3d."""
    layer = Conv3d(weight, bias, stride, padding, dilation, groups, algorithm=algorithm)
    return layer(x)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, algorithm="auto"):
    """torch.nn.functional.conv_transpose2d; weight (in_channels, out_channels // groups, kh, kw).

    output_size ((H, W) or a full NCHW shape) picks output_padding as torch's ConvTranspose2d
    module does, overriding the output_padding argument, and raises ValueError for a size this
    layer cannot produce. See engine.ConvTranspose2d.
    """
    layer = ConvTranspose2d(weight, bias, stride, padding, output_padding, groups, dilation,
                            algorithm=algorithm)
    return layer(x, output_size=output_size)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, algorithm="auto"):
    """torch.nn.functional.conv_transpose1d on NCL arrays; weight (in_channels,
    out_channels // groups, k). output_size: L, (L,) or (N, C, L), as for conv_transpose2d."""
    layer = ConvTranspose1d(weight, bias, stride, padding, output_padding, groups, dilation,
                            algorithm=algorithm)
    return layer(x, output_size=output_size)


__all__ += ["deform_conv2d"]


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None, *,
                  groups=1, offset_groups=None):
    """torchvision.ops.deform_conv2d (ONNX DeformConv): DCN v1, or v2 with ``mask``.

    offset: (N, 2*offset_groups*kh*kw, OH, OW), (dy, dx) of tap i = u*kw + v at channels 2i,
    2i + 1 of each offset group; mask: (N, offset_groups*kh*kw, OH, OW). offset_groups is
    inferred from offset when None. Unlike torchvision, groups is not inferred from the
    weight: pass it (as for conv2d). See engine.DeformConv2d.
    """
    from .ops.deform import DeformConv2d
    layer = DeformConv2d(weight, bias, stride, padding, dilation, groups, offset_groups)
    return layer(x, offset, mask)
