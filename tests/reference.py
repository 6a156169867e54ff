"""Slow, obvious float64 NumPy references that the kernels are tested against.

Written independently of engine/ (no shared shape code), so a wrong formula there cannot hide
behind the same formula here.
"""
import numpy as np


def conv2d_ref(x, w, b=None, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    """Cross-correlation as torch.nn.functional.conv2d defines it, in float64.

    pads: ((top, bottom), (left, right)).
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    xp = np.pad(x, ((0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])))
    hp, wp = xp.shape[2:]
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    xg = xp.reshape(n, groups, cg, hp, wp)
    wg = w.reshape(groups, k // groups, cg, kh, kw)
    out = np.zeros((n, groups, k // groups, oh, ow))
    for u in range(kh):
        for v in range(kw):
            patch = xg[:, :, :, u * dh: u * dh + sh * (oh - 1) + 1: sh,
                       v * dw: v * dw + sw * (ow - 1) + 1: sw]
            out += np.einsum("ngchw,gkc->ngkhw", patch, wg[:, :, :, u, v])
    out = out.reshape(n, k, oh, ow)
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def same_pads_ref(size, kernel, stride, dilation):
    """SAME_UPPER padding per axis, from ONNX's definition: output ceil(i / s)."""
    pads = []
    for i, k, s, d in zip(size, kernel, stride, dilation):
        o = -(-i // s)
        total = max(0, (o - 1) * s + (k - 1) * d + 1 - i)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)
