"""The torch.nn.functional-style API: thin wrappers that validate, plan and run."""
from __future__ import annotations

from .ops._validate import as_float_array, check_spatial
from .ops.conv2d import Conv2d, conv2d_for_size  # noqa: F401
from .ops.pool import avg_pool2d, global_avg_pool2d, global_max_pool2d, max_pool2d
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
    check_spatial(x, "x")
    layer = conv2d_for_size(weight, bias, stride, padding, dilation, groups,
                            algorithm=algorithm, input_size=x.shape[2:],
                            drop_taps=algorithm == "auto")
    _check_output("conv2d", layer.output_shape, x.shape, padding=padding, stride=stride,
                  dilation=dilation)
    return layer(x)


__all__ += ["conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d"]


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto"):
    """torch.nn.functional.conv1d on NCL float32 arrays, run as a 2-D convolution on the
    (N, C, 1, L) view so every 2-D algorithm applies; see engine.Conv1d for the options."""
    if getattr(x, "ndim", None) != 3:
        x = as_float_array(x, "x", 3)
    check_spatial(x, "x")
    layer = Conv1d(weight, bias, stride, padding, dilation, groups, algorithm=algorithm,
                   input_size=x.shape[2:])
    _check_output("conv1d", _on_1d_view(layer.layer2d.output_shape), x.shape,
                  padding=padding, stride=stride, dilation=dilation)
    return layer(x)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto"):
    """torch.nn.functional.conv3d on NCDHW float32 arrays (vol2col + packed GEMM); padding may be
    an int, a 3-tuple, "same" or "valid". See engine.Conv3d."""
    layer = Conv3d(weight, bias, stride, padding, dilation, groups, algorithm=algorithm)
    _check_output("conv3d", layer.output_shape, _shape(x), padding=padding, stride=stride,
                  dilation=dilation)
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
    _check_output("conv_transpose2d", lambda shape: layer.output_shape(shape, output_size),
                  _shape(x), stride=stride, padding=padding, output_padding=output_padding,
                  dilation=dilation, output_size=output_size)
    return layer(x, output_size=output_size)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, algorithm="auto"):
    """torch.nn.functional.conv_transpose1d on NCL arrays; weight (in_channels,
    out_channels // groups, k). output_size: L, (L,) or (N, C, L), as for conv_transpose2d."""
    layer = ConvTranspose1d(weight, bias, stride, padding, output_padding, groups, dilation,
                            algorithm=algorithm)
    # the shape without output_size, which adds less than a stride to the length
    _check_output("conv_transpose1d", _on_1d_view(layer.layer2d.output_shape), _shape(x),
                  stride=stride, padding=padding, output_padding=output_padding,
                  dilation=dilation)
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
    _check_output("deform_conv2d", layer.output_shape, _shape(x), padding=padding,
                  stride=stride, dilation=dilation)
    return layer(x, offset, mask)


# -- the memory budget ------------------------------------------------------------------------
# A call whose output the budget (engine/memory.py: half the RAM) cannot hold is refused before
# anything is allocated, with a ValueError naming the arguments that size the output, instead
# of NumPy's MemoryError or, where the system overcommits, the OOM killer. interpolate and
# max_unpool2d (engine/ops' functional forms plus this check) are defined here for it.
import numpy as _np  # noqa: E402

from .memory import check_output as _check_size  # noqa: E402
from .ops.pool import MaxUnpool2d as _MaxUnpool2d  # noqa: E402
from .ops.resample import Interpolate as _Interpolate  # noqa: E402


def _shape(x) -> tuple:
    return tuple(x.shape) if isinstance(x, _np.ndarray) else _np.shape(x)


def _on_1d_view(output_shape_2d):
    """The output_shape of a 2-D layer run on the (N, C, 1, L) view, in 1-D terms."""
    def output_shape(shape):
        n, c, length = shape
        y = output_shape_2d((n, c, 1, length))
        return y[:2] + y[3:]
    return output_shape


def _check_output(call, output_shape, input_shape, **sizing) -> None:
    """ValueError when ``output_shape(input_shape)`` (a planned layer's) exceeds the budget;
    an input the layer cannot take is left to the layer's own checks."""
    try:
        shape = output_shape(tuple(input_shape))
    except (ValueError, TypeError):
        return
    args = ", ".join(f"{k}={v!r}" for k, v in sizing.items())
    _check_size(shape, _np.float32, f"{call}: x of shape {tuple(input_shape)} with {args}")


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """torch.nn.functional.interpolate on NCHW float32, modes "nearest" and "bilinear", with
    PyTorch's default recompute_scale_factor=None and antialias=False."""
    layer = _Interpolate(size, scale_factor, mode, align_corners)
    _check_output("interpolate", layer.output_shape, _shape(x), size=size,
                  scale_factor=scale_factor)
    return layer(x)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """torch.nn.functional.max_unpool2d on NCHW float32 with the indices max_pool2d returns.
    output_size: (H, W) or (N, C, H, W), within one stride of (H_in - 1)*stride - 2*padding
    + kernel_size."""
    layer = _MaxUnpool2d(kernel_size, stride, padding)
    _check_output("max_unpool2d", lambda shape: layer.output_shape(shape, output_size),
                  _shape(x), kernel_size=kernel_size, stride=stride, padding=padding,
                  output_size=output_size)
    return layer(x, indices, output_size)
