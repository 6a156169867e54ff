"""Planned 1-D and 3-D convolutions.

Conv1d is a Conv2d on the (N, C, 1, L) view with a (1, k) kernel, so every 2-D algorithm and
the 2-D dispatcher apply to it unchanged. Conv3d runs vol2col and the packed GEMM
(kernels/conv3d.pyx), or a layer of 3x3 frames (spatial stride and dilation 1, one group) as
one 2-D convolution per depth tap over the frames, summed, where the 2-D dispatcher gives
that 2-D layer Winograd ("frames").
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .._cache import ShapeCache
from .._kernels import activation as _act
from .._kernels import conv3d as _c3
from ..dispatch.winograd import TILE_ALGORITHMS
from .._threads import resolve_threads, threads_for
from ..shapes import conv_output_shape, live_outputs, ntuple, resolve_padding
from . import packed_gemm
from ._validate import as_float_array, check_out, new_output
from .activation import canonical, kernel_act
from .conv2d import Conv2d, TransformedWeights
from .workspace import workspace

# Bound on one thread's ring of 2-D column matrices (kernels/conv3d.pyx), and the number of
# work items to aim for so that threads share a single image. Each item rebuilds the columns of
# the input slices it shares with its neighbours, so short runs of slices cost copying, and
# whole output slices make the widest GEMMs. On conv3d_3_c32_16x28 at one thread (ring of 3
# slices x 288 x 784 columns = 2.7 MB), items of slices x rows 2x10 / 6x10 / 4x28 / 8x28 took
# 9.1 / 8.6 / 8.2 / 7.9 ms, and the full vol2col matrix in whole slices 10.4 ms.
VOL2COL_CHUNK_BYTES = 4 << 20
VOL2COL_ITEMS = 4
# The 2-D algorithms for which "auto" runs a 3x3-frames layer as its depth taps' 2-D layers:
# Winograd's, on NCHW or on blocks.
FRAME_ALGORITHMS = frozenset(TILE_ALGORITHMS.values()) | {"blocked_winograd"}


def _check_groups(groups):
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    return int(groups)


def _check_weight(w, groups):
    if min(w.shape) < 1:
        raise ValueError(f"weight must have no empty dimension, got shape {w.shape}")
    if w.shape[0] % groups:
        raise ValueError(f"out_channels ({w.shape[0]}, weight.shape[0]) must be divisible by "
                         f"groups ({groups})")


def _check_padding_arg(padding):
    if isinstance(padding, str) and padding not in ("same", "valid"):
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")


def _check_x(x, ndim, in_channels, cg, groups, dtype=np.float32):
    x = as_float_array(x, "x", ndim, dtype=dtype)
    if x.shape[1] != in_channels:
        raise ValueError(f"x must have {in_channels} channels (weight.shape[1] * groups = "
                         f"{cg} * {groups}), got shape {x.shape}")
    if min(x.shape) < 1:
        raise ValueError(f"x must have no empty dimension, got shape {x.shape}")
    return x


class Conv1d:
    """A 1-D convolution (torch.nn.functional.conv1d semantics) planned once.

    weight: (out_channels, in_channels // groups, k); padding: int, 1-tuple, (begin, end),
    "same" or "valid". Other options as engine.Conv2d, which runs it on the (N, C, 1, L) view.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, algorithm="auto", *, input_size=None, num_threads=None,
                 transforms=None):
        wide = isinstance(weight, np.ndarray) and weight.dtype == np.float64
        w = as_float_array(weight, "weight", 3, dtype=np.float64 if wide else np.float32)
        groups = _check_groups(groups)
        _check_weight(w, groups)
        self.stride = ntuple(stride, 1, "stride", minimum=1)
        self.dilation = ntuple(dilation, 1, "dilation", minimum=1)
        _check_padding_arg(padding)
        self.padding = padding
        self.kernel_size = (w.shape[2],)
        if isinstance(padding, str):
            pad2d = padding
        else:
            (pb, pe), = resolve_padding(padding, (1,), self.kernel_size, self.stride,
                                        self.dilation)
            pad2d = (0, pb, 0, pe)
        if input_size is not None:
            input_size = ntuple(input_size, 1, "input_size", minimum=1)
            self._out_length(input_size[0])
            input_size = (1,) + input_size
        self.layer2d = Conv2d(w[:, :, None, :], bias, stride=(1,) + self.stride, padding=pad2d,
                              dilation=(1,) + self.dilation, groups=groups,
                              activation=activation, algorithm=algorithm,
                              input_size=input_size, num_threads=num_threads,
                              transforms=transforms)
        self.groups = groups
        self.in_channels = self.layer2d.in_channels
        self.out_channels = self.layer2d.out_channels
        self.algorithm, self.reason = self.layer2d.algorithm, self.layer2d.reason

    def _out_length(self, length):
        pads = resolve_padding(self.padding, (length,), self.kernel_size, self.stride,
                               self.dilation)
        try:
            return conv_output_shape((length,), self.kernel_size, self.stride, pads,
                                     self.dilation)[0]
        except ValueError as e:
            raise ValueError(f"x: {e}") from None

    def __call__(self, x, out=None):
        dtype = np.float64 if (self.algorithm == "direct" and getattr(x, "dtype", None)
                               == np.float64) else np.float32
        x = _check_x(x, 3, self.in_channels, self.in_channels // self.groups, self.groups,
                     dtype)
        length = self._out_length(x.shape[2])   # size errors in 1-D terms
        if out is not None:
            check_out(out, (x.shape[0], self.out_channels, length))
        y = self.layer2d(x[:, :, None, :], out=None if out is None else out[:, :, None, :])
        return y[:, :, 0, :] if out is None else out

    def __repr__(self):
        return (f"Conv1d({self.in_channels}->{self.out_channels}, kernel={self.kernel_size[0]}, "
                f"stride={self.stride[0]}, padding={self.padding!r}, "
                f"dilation={self.dilation[0]}, groups={self.groups}, "
                f"algorithm={self.algorithm!r})")

    def explain(self) -> str:
        return f"{self!r}, run on the (N, C, 1, L) view as:\n{self.layer2d.explain()}"


class Geometry3d(NamedTuple):
    batch: int
    in_size: tuple[int, int, int]
    out_size: tuple[int, int, int]
    pads: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    macs: int


class Conv3d:
    """A 3-D convolution (torch.nn.functional.conv3d semantics, NCDHW) planned once.

    weight: (out_channels, in_channels // groups, kd, kh, kw); padding: int, 3-tuple,
    6-tuple (all begins, then all ends), "same" or "valid". activation: None or a name of
    engine/ops/activation.py. algorithm: "auto", "im2col" (vol2col + packed GEMM) or "frames"
    (3x3 frames, spatial stride and dilation 1, one group: one 2-D convolution per depth tap
    over the frames the tap reads, by the 2-D dispatcher, summed in an order fixed by the
    shapes). "auto" takes
    "frames" for an input size where the 2-D dispatcher gives the taps' layer Winograd, which
    does 2.25-5x fewer multiplications than vol2col's GEMM; else "im2col".
    Float64 input is computed in float32.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, algorithm="auto", *, num_threads=None):
        w = as_float_array(weight, "weight", 5)
        groups = _check_groups(groups)
        _check_weight(w, groups)
        if algorithm not in ("auto", "im2col", "frames"):
            raise ValueError(f"algorithm={algorithm!r} cannot run a 3-D convolution: conv3d "
                             f"has 'auto', 'im2col' (vol2col + packed GEMM) and 'frames'")
        self.stride = ntuple(stride, 3, "stride", minimum=1)
        self.dilation = ntuple(dilation, 3, "dilation", minimum=1)
        _check_padding_arg(padding)
        self.padding = padding
        self.kernel_size = tuple(w.shape[2:])
        if not isinstance(padding, str):
            resolve_padding(padding, (1, 1, 1), self.kernel_size, self.stride, self.dilation)
        self.groups = groups
        self.frames_shaped = (groups == 1 and self.kernel_size[1:] == (3, 3)
                              and self.stride[1:] == (1, 1) and self.dilation[1:] == (1, 1))
        if algorithm == "frames" and not self.frames_shaped:
            raise ValueError(f"algorithm='frames' needs one group and a 3x3 spatial kernel of "
                             f"stride and dilation 1, got groups={groups}, kernel "
                             f"{self.kernel_size}, stride {self.stride}, dilation "
                             f"{self.dilation}")
        self.requested = algorithm
        self.algorithm = "im2col"
        self.reason = ("forced by the caller" if algorithm == "im2col"
                       else "vol2col + packed GEMM")
        self.out_channels = w.shape[0]
        self.in_channels = w.shape[1] * groups
        self.activation = canonical(activation)
        self.act = kernel_act(activation)
        self.weight = w
        if bias is not None:
            b = as_float_array(bias, "bias", 1)
            if b.shape != (self.out_channels,):
                raise ValueError(f"bias must have shape ({self.out_channels},), got {b.shape}")
            self.bias = b
        else:
            self.bias = None
        self.num_threads = num_threads
        self._geometries = ShapeCache(64)
        self._frame_layers = ShapeCache(16)
        # each depth tap's transformed weights, shared by its 2-D layers of every input size
        self._tap_transforms = [TransformedWeights() for _ in range(self.kernel_size[0])]

    @functools.cached_property
    def wpack(self) -> np.ndarray:
        """vol2col's weights, packed when it first runs (a layer the frames path runs never
        needs them): per group and depth tap W_ga[Kg, Cg*kh*kw] for the micro-kernel."""
        w, groups, kd = self.weight, self.groups, self.kernel_size[0]
        taps = w.transpose(2, 0, 1, 3, 4).reshape(kd, groups, w.shape[0] // groups, -1)
        return np.concatenate([packed_gemm.pack_rows(taps[a, g], 1)
                               for g in range(groups) for a in range(kd)])

    def geometry(self, input_shape) -> Geometry3d:
        key = tuple(input_shape)
        return self._geometries.get(key, lambda: self._geometry(key))

    def _geometry(self, key) -> Geometry3d:
        in_size = key[2:]
        pads = resolve_padding(self.padding, in_size, self.kernel_size, self.stride,
                               self.dilation)
        try:
            out_size = conv_output_shape(in_size, self.kernel_size, self.stride, pads,
                                         self.dilation)
        except ValueError as e:
            raise ValueError(f"x: {e}") from None
        macs = key[0] * self.out_channels * int(np.prod(out_size)) * \
            int(np.prod(self.weight.shape[1:]))
        g = Geometry3d(key[0], in_size, out_size, pads, macs)
        self.frame_layers(g)        # the choice for this size, made with the plan
        return g

    def output_shape(self, input_shape):
        g = self.geometry(input_shape)
        return (g.batch, self.out_channels) + g.out_size

    def __call__(self, x, out=None):
        x = _check_x(x, 5, self.in_channels, self.weight.shape[1], self.groups)
        g = self.geometry(x.shape)
        shape = (g.batch, self.out_channels) + g.out_size
        if out is None:
            out = new_output(shape, np.float32, self, x.shape)
        else:
            check_out(out, shape)
        self.run(x, out, g)
        return out

    def run(self, x, out, g: Geometry3d, num_threads=None) -> None:
        """Checked arrays in, no validation."""
        threads = threads_for(g.macs, resolve_threads(num_threads or self.num_threads))
        layers = self.frame_layers(g)
        if layers is not None:
            self._run_frames(x, out, g, layers, threads)
            return
        slices, rows = self.work_split(g)
        (kd, kh, kw), (sd, sh, sw), (dd, dh, dw) = self.kernel_size, self.stride, self.dilation
        kdim2 = self.weight.shape[1] * kh * kw
        work = workspace.take(_c3.work_floats(kdim2, (kd - 1) * dd + 1, rows * g.out_size[2],
                                              threads))
        try:
            _c3.f32_conv3d_vol2col(x, self.wpack, self.bias, out, kd, kh, kw, sd, sh, sw,
                                   g.pads[0][0], g.pads[1][0], g.pads[2][0], dd, dh, dw,
                                   self.groups, slices, rows, self.act, threads, work)
        finally:
            workspace.give(work)

    def frame_layers(self, g: Geometry3d):
        """The 2-D layers of the depth taps (weights w[:, :, a], the frames' spatial padding,
        no bias or activation) for this geometry, or None where vol2col runs it; sets
        algorithm and reason to the choice, made once per geometry (layers vol2col runs are
        not kept)."""
        if not self.frames_shaped or self.requested == "im2col":
            return None

        def tap_layer(a):
            (pt, pb), (pl, pr) = g.pads[1:]
            return Conv2d(np.ascontiguousarray(self.weight[:, :, a]), None, 1, (pt, pl, pb, pr),
                          1, 1, algorithm="auto", input_size=g.in_size[1:],
                          transforms=self._tap_transforms[a])

        def make():
            first = tap_layer(0)
            if self.requested == "auto" and first.algorithm not in FRAME_ALGORITHMS:
                return None, (f"vol2col + packed GEMM: a depth tap's 2-D layer would take "
                              f"{first.algorithm}, not Winograd")
            layers = [first] + [tap_layer(a) for a in range(1, self.kernel_size[0])]
            return layers, (
                f"{self.kernel_size[0]} depth tap(s), each a 2-D {first.algorithm} layer over "
                f"the frames it reads, summed in a fixed order"
                + (", forced by the caller" if self.requested == "frames" else
                   ": Winograd's fewer multiplications than vol2col's GEMM"))

        layers, self.reason = self._frame_layers.get((g.in_size, g.pads), make)
        self.algorithm = "im2col" if layers is None else "frames"
        return layers

    def _run_frames(self, x, out, g: Geometry3d, layers, threads) -> None:
        """The frames of x (N, C, D, H, W) laid out as images (N, D, C, H, W); each depth tap's
        2-D layer run on the frames it reads, for the output frames whose input frame under
        it lies inside the clip (engine.shapes.live_outputs: no frame of padding is convolved),
        and added into their sums; a tap that every output frame reads writes the sums first
        (else they start from zero); bias and activation in one pass, then back to NCDHW.
        The order of the sums is fixed by the shapes."""
        n, c, d, h, w = x.shape
        (p0, _), od, k = g.pads[0], g.out_size[0], self.out_channels
        kd, sd, dd = self.kernel_size[0], self.stride[0], self.dilation[0]
        oh, ow = g.out_size[1:]
        ranges = [live_outputs(d, od, sd, p0, a * dd) for a in range(kd)]
        order = sorted(range(kd), key=lambda a: ranges[a] != (0, od))     # a whole tap first
        nx, ny = n * d * c * h * w, n * od * k * oh * ow
        buf = workspace.take(nx + 2 * ny)
        try:
            frames = buf[:nx].reshape(n, d, c, h, w)
            frames[...] = x.transpose(0, 2, 1, 3, 4)
            acc = buf[nx:nx + ny].reshape(n, od, k, oh, ow)
            whole = ranges[order[0]] == (0, od)
            if not whole:
                acc.fill(0)
            for j, a in enumerate(order):
                lo, hi = ranges[a]
                if lo == hi:
                    continue
                i0 = lo * sd - p0 + a * dd          # the input frame of output frame lo
                sel = np.ascontiguousarray(frames[:, i0:i0 + (hi - lo - 1) * sd + 1:sd])
                sel = sel.reshape(n * (hi - lo), c, h, w)
                first = j == 0 and whole
                dst = acc if first else buf[nx + ny:nx + ny + n * (hi - lo) * k * oh * ow]
                dst = dst.reshape(n * (hi - lo), k, oh, ow)
                layers[a].run(sel, dst, layers[a].geometry(sel.shape), threads)
                if not first:
                    acc[:, lo:hi] += dst.reshape(n, hi - lo, k, oh, ow)
            if self.bias is not None or self.act["code"] != 0:
                flat = acc.reshape(n * od, k, oh * ow)
                shift = self.bias if self.bias is not None else np.zeros(k, np.float32)
                _act.f32_scale_shift(flat, np.ones(k, np.float32), shift, flat, self.act,
                                     threads)
            out[...] = acc.transpose(0, 2, 1, 3, 4)
        finally:
            workspace.give(buf)

    def work_split(self, g: Geometry3d) -> tuple[int, int]:
        """(output slices, output rows) per work item, from the shapes alone: whole slices
        while the ring of column matrices fits VOL2COL_CHUNK_BYTES, then runs of slices
        long enough to reuse columns but leaving about VOL2COL_ITEMS items."""
        od, oh, ow = g.out_size
        ring = (self.kernel_size[0] - 1) * self.dilation[0] + 1
        row_bytes = 4 * ring * (self.in_channels // self.groups) * self.kernel_size[1] \
            * self.kernel_size[2] * ow
        rows = max(1, min(oh, VOL2COL_CHUNK_BYTES // row_bytes))
        rows = -(-oh // -(-oh // rows))   # the same number of runs, evened out
        others = g.batch * self.groups * -(-oh // rows)
        runs = min(od, max(1, -(-VOL2COL_ITEMS // others)))
        return -(-od // runs), rows

    def __repr__(self):
        return (f"Conv3d({self.in_channels}->{self.out_channels}, "
                f"kernel={'x'.join(map(str, self.kernel_size))}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, "
                f"activation={self.activation!r}, algorithm={self.algorithm!r})")

    def explain(self) -> str:
        return f"{self!r}\nalgorithm: {self.algorithm} ({self.reason})"


class ConvTranspose3d:
    """A 3-D transposed convolution planned once, run as the convolution it is the adjoint of:
    the input is spread out by the stride (zeros between samples) and padded by
    dilation * (kernel - 1) less the transposed layer's pads, then convolved at stride 1 with
    the kernel flipped and its input and output channels swapped (per group), on Conv3d's
    vol2col + packed GEMM. The zeros cost stride**3 times the useful work; 3-D transposed
    layers are rare in CNNs, and this reuses one tested kernel for every pad and stride.

    weight: (in_channels, out_channels // groups, kd, kh, kw), ONNX and PyTorch's layout.
    """
    algorithm = "stride-spread + im2col"
    reason = "the only 3-D transposed algorithm: a stride-1 Conv3d on the spread input"

    def __init__(self, weight, bias=None, stride=1, dilation=1, groups=1):
        w = as_float_array(weight, "weight", 5)
        groups = _check_groups(groups)
        if min(w.shape) < 1 or w.shape[0] % groups:
            raise ValueError(f"weight of shape {w.shape} must have no empty dimension and "
                             f"in_channels divisible by groups ({groups})")
        self.stride = ntuple(stride, 3, "stride", minimum=1)
        self.dilation = ntuple(dilation, 3, "dilation", minimum=1)
        self.kernel_size = tuple(w.shape[2:])
        self.groups = groups
        self.in_channels = w.shape[0]
        self.out_channels = w.shape[1] * groups
        cin_g, cout_g = w.shape[0] // groups, w.shape[1]
        flipped = (w.reshape((groups, cin_g, cout_g) + self.kernel_size)
                   .transpose(0, 2, 1, 3, 4, 5)
                   .reshape((self.out_channels, cin_g) + self.kernel_size)[:, :, ::-1, ::-1, ::-1])
        self.conv = Conv3d(np.ascontiguousarray(flipped), bias, 1, 0, self.dilation, groups)

    def run(self, x, out, pads, num_threads=None) -> None:
        """x (N, C, D, H, W) into out, whose spatial size (with the begin pads ``pads[a][0]``)
        fixes what is cropped or zero-extended at the ends (output_padding)."""
        if out.size == 0:
            return
        spread_shape = x.shape[:2]
        src, dst = [slice(None)] * 2, [slice(None)] * 2
        for a in range(3):
            i, s, reach = x.shape[2 + a], self.stride[a], \
                self.dilation[a] * (self.kernel_size[a] - 1)
            length = out.shape[2 + a] + reach      # what a stride-1 valid conv needs
            lead = reach - pads[a][0]              # where input sample 0 lands
            n0 = max(0, -(lead // s)) if lead < 0 else 0
            n1 = min(i, (length - 1 - lead) // s + 1) if length - 1 >= lead else 0
            spread_shape += (length,)
            if n1 > n0:
                src.append(slice(n0, n1))
                dst.append(slice(lead + n0 * s, lead + (n1 - 1) * s + 1, s))
            else:
                src.append(slice(0, 0))
                dst.append(slice(0, 0))
        spread = np.zeros(spread_shape, np.float32)
        spread[tuple(dst)] = x[tuple(src)]
        self.conv.run(spread, out, self.conv.geometry(spread.shape), num_threads)

    def explain(self) -> str:
        return f"ConvTranspose3d: {self.algorithm} ({self.reason})"
