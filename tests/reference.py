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


def deform_conv2d_ref(x, offset, w, b=None, stride=(1, 1), pads=((0, 0), (0, 0)),
                      dilation=(1, 1), groups=1, mask=None):
    """Deformable convolution (torchvision.ops.deform_conv2d, ONNX DeformConv) in float64,
    from the definition: tap (u, v) of output (oy, ox) samples channel c at
        y = oy*sh - top + u*dh + dy,  x = ox*sw - left + v*dw + dx
    bilinearly, each of the four corners outside the input counting as zero (so a position
    with y <= -1, y >= H, x <= -1 or x >= W gives 0), times mask; (dy, dx) of tap i = u*kw + v
    in offset group j are offset channels j*2*kh*kw + 2*i and + 1, the mask's is j*kh*kw + i.
    """
    x = np.asarray(x, np.float64)
    offset = np.asarray(offset, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    taps = kh * kw
    og = offset.shape[1] // (2 * taps)
    per_og = c // og
    oh, ow = offset.shape[2:]
    (sh, sw), (dh, dw) = stride, dilation
    top, left = pads[0][0], pads[1][0]
    cols = np.zeros((n, c, taps, oh, ow))
    for b_ in range(n):
        for j in range(og):
            chans = x[b_, j * per_og:(j + 1) * per_og]
            for i in range(taps):
                u, v = divmod(i, kw)
                for oy in range(oh):
                    for ox in range(ow):
                        y = oy * sh - top + u * dh + offset[b_, j * 2 * taps + 2 * i, oy, ox]
                        xx = ox * sw - left + v * dw + offset[b_, j * 2 * taps + 2 * i + 1, oy, ox]
                        m = 1.0 if mask is None else float(mask[b_, j * taps + i, oy, ox])
                        y0, x0 = int(np.floor(y)), int(np.floor(xx))
                        val = np.zeros(per_og)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                                if 0 <= yy < h and 0 <= xc < wd:
                                    val += wy * wx * chans[:, yy, xc]
                        cols[b_, j * per_og:(j + 1) * per_og, i, oy, ox] = m * val
    out = np.zeros((n, k, oh, ow))
    kg = k // groups
    wt = w.reshape(k, cg, taps)
    for g in range(groups):
        out[:, g * kg:(g + 1) * kg] = np.einsum(
            "nctyx,kct->nkyx", cols[:, g * cg:(g + 1) * cg], wt[g * kg:(g + 1) * kg])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out
