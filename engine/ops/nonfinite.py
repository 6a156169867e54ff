"""The direct sum's NaN and infinity, given back to the outputs of the algorithms that compute
with non-finite inputs taken as zeros (kernels/conv_nonfinite.pyx)."""
from .._kernels import conv_nonfinite


def fix_nonfinite(layer, x, out, pads, threads) -> int:
    """Give out the NaNs and infinities of the direct sum, where out holds the layer's output
    (bias and activation included) for x with its NaNs and infinities taken as zeros.

    For finite weights (the plans assume them) the direct sum is non-finite exactly where a
    tap reads a non-finite input: NaN if it reads a NaN, an infinity under a zero weight, or
    infinite products of both signs, else the infinity of their sign; the relu and relu6
    clamps keep NaN as NaN. Used by the paths whose arithmetic would spread a non-finite value
    further (engine/ops/winograd.py, fft.py, separable.py of rank > 1). Returns the number of
    non-finite values in x.
    """
    return conv_nonfinite.f32_conv2d_fix_nonfinite(
        x, layer.weight, out, layer.stride[0], layer.stride[1], pads[0][0], pads[1][0],
        layer.dilation[0], layer.dilation[1], layer.groups, layer.act, threads)
