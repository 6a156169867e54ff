"""Octave convolution (Chen et al., "Drop an Octave", ICCV 2019), planned once.

The feature maps are split by channel into a high-frequency part at full resolution and a
low-frequency part (a fraction alpha of the channels) at half resolution. One layer is four
ordinary convolutions, the blocks of one (out, in, kh, kw) weight:
    y_h = conv(x_h, W_hh) + upsample2x(conv(x_l, W_lh))
    y_l = conv(avgpool2x2(x_h), W_hl) + conv(x_l, W_ll)
where upsample2x repeats each pixel 2x2 (nearest) and avgpool2x2 averages 2x2 blocks (stride
2). The low part of the input is absent when alpha_in = 0 (a network's first octave layer),
the low part of the output when alpha_out = 0 (its last).
"""
from __future__ import annotations

import numpy as np

from ._validate import as_float_array
from .activation import apply_activation, canonical
from .conv2d import Conv2d


def _avg_pool2x2(x):
    """2x2 average pooling, stride 2, a trailing odd row or column dropped (floor mode)."""
    n, c, h, w = x.shape
    b = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    return np.ascontiguousarray(
        ((b[:, :, :, 0, :, 0] + b[:, :, :, 0, :, 1]) + (b[:, :, :, 1, :, 0] + b[:, :, :, 1, :, 1]))
        * np.float32(0.25))


def _add_upsampled2x(y, low):
    """y += nearest 2x upsampling of low, in place; y has exactly twice low's size."""
    n, k, h, w = low.shape
    y.reshape(n, k, h, 2, w, 2)[...] += low[:, :, :, None, :, None]


def _split(total, alpha, what):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not 0 <= alpha < 1:
        raise ValueError(f"{what} must be a number in [0, 1), got {alpha!r}")
    low = int(alpha * total)
    return total - low, low


class OctaveConv2d:
    """An octave convolution layer; call it as ``y_h, y_l = layer(x_h, x_l)``.

    weight: (out_channels, in_channels, kh, kw) for the whole layer. Of the input channels the
    last int(alpha_in * in_channels) are the low-frequency ones (x_l), the rest the high ones
    (x_h); likewise int(alpha_out * out_channels) for the output, as in the paper's reference
    code. bias: (out_channels,) or None, split the same way. stride, padding and dilation
    apply to each of the four convolutions (a strided octave layer is strided on both
    resolutions; the paper's code average-pools first instead). activation: None or a name
    of engine/ops/activation.py, applied after each output's two paths are added. x_l has
    half x_h's size (floor); x_h's size must make both paths of each output the same size,
    which even sizes with "same"-style padding do.
    """

    def __init__(self, weight, alpha_in, alpha_out, bias=None, stride=1, padding=0,
                 dilation=1, activation=None, *, num_threads=None):
        w = as_float_array(weight, "weight", 4, dtype=np.float64)
        k, c = w.shape[:2]
        self.c_h, self.c_l = _split(c, alpha_in, "alpha_in")
        self.k_h, self.k_l = _split(k, alpha_out, "alpha_out")
        self.alpha_in, self.alpha_out = alpha_in, alpha_out
        if bias is not None:
            bias = as_float_array(bias, "bias", 1, dtype=np.float64)
            if bias.shape != (k,):
                raise ValueError(f"bias must have shape ({k},), got {bias.shape}")
        self.activation = canonical(activation)
        b_h = None if bias is None else bias[:self.k_h]
        b_l = None if bias is None else bias[self.k_h:]
        kw = dict(stride=stride, padding=padding, dilation=dilation, num_threads=num_threads)
        self.hh = Conv2d(w[:self.k_h, :self.c_h], b_h, **kw)
        self.lh = self.hl = self.ll = None
        if self.c_l:
            self.lh = Conv2d(w[:self.k_h, self.c_h:], None, **kw)
        if self.k_l:
            # the low output's bias rides on whichever of its paths always exists
            self.hl = Conv2d(w[self.k_h:, :self.c_h], None if self.c_l else b_l, **kw)
            if self.c_l:
                self.ll = Conv2d(w[self.k_h:, self.c_h:], b_l, **kw)
        self.in_channels, self.out_channels = c, k
        self.kernel_size = tuple(w.shape[2:])

    def __call__(self, x_h, x_l=None):
        x_h = as_float_array(x_h, "x_h", 4)
        n, c, h, w = x_h.shape
        if c != self.c_h:
            raise ValueError(f"x_h must have {self.c_h} channels (the high-frequency part of "
                             f"{self.in_channels} with alpha_in={self.alpha_in}), got shape "
                             f"{x_h.shape}")
        if self.c_l:
            if x_l is None:
                raise ValueError(f"x_l is required: alpha_in={self.alpha_in} gives {self.c_l} "
                                 f"low-frequency input channels")
            x_l = as_float_array(x_l, "x_l", 4)
            want = (n, self.c_l, h // 2, w // 2)
            if x_l.shape != want:
                raise ValueError(f"x_l must have shape {want} (half of x_h's size), got "
                                 f"{x_l.shape}")
        elif x_l is not None:
            raise ValueError(f"x_l must be None: alpha_in={self.alpha_in} gives no "
                             f"low-frequency input channels for {self.in_channels} channels")
        pooled = _avg_pool2x2(x_h) if self.k_l else None
        if pooled is not None and min(pooled.shape[2:]) < 1:
            raise ValueError(f"x_h: a {h}x{w} input has no 2x2-pooled low-frequency path")
        y_h = self.hh(x_h)
        if self.lh is not None:
            low = self.lh(x_l)
            if (2 * low.shape[2], 2 * low.shape[3]) != y_h.shape[2:]:
                raise ValueError(f"x_h: with a {h}x{w} input the high output is "
                                 f"{y_h.shape[2]}x{y_h.shape[3]} but the upsampled low-to-high "
                                 f"path gives {2 * low.shape[2]}x{2 * low.shape[3]}; use sizes "
                                 f"that halve exactly")
            _add_upsampled2x(y_h, low)
        apply_activation(y_h, self.activation)
        y_l = None
        if self.k_l:
            y_l = self.hl(pooled)
            if self.ll is not None:
                y_l += self.ll(x_l)   # same input size, same layer geometry: same shape
            apply_activation(y_l, self.activation)
        return y_h, y_l

    def __repr__(self):
        kh, kw = self.kernel_size
        return (f"OctaveConv2d({self.in_channels}->{self.out_channels}, kernel={kh}x{kw}, "
                f"high {self.c_h}->{self.k_h}, low {self.c_l}->{self.k_l}, "
                f"activation={self.activation!r}, algorithms hh={self.hh.algorithm!r})")
