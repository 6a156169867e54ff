"""The child process of tests/test_index_safety.py: runs one batch of index-safety cases.

    python tests/index_sweep_child.py BATCH      (repository and tests/ on PYTHONPATH)

Each case runs at 1 and at 2 threads; the 1-thread result is checked against a float64
reference and the 2-thread result must equal it bit for bit. One line per event on stdout,
flushed before the next step, so that after a crash the last CASE line without a result names
the case that was running:
    CASE <i>\t<the call>
    PASS <i> | SKIP <i>\t<why the algorithm refused the layer> | FAIL <i>\t<what went wrong>
    DONE <ran> <skipped>
Scratch buffers are freed after every call (workspace.keep = 0), so that heap damage is found
when glibc checks the damaged block on free, while the case that did it is still running.
"""
import itertools
import sys
from dataclasses import dataclass

import numpy as np

import engine
from engine.ops.workspace import workspace
from reference import conv2d_ref, deform_conv2d_ref, same_pads_ref
from test_conv2d import RTOL
from test_conv_transpose import conv_transpose2d_ref
from test_convnd import conv3d_ref
from test_pool import avg_pool_ref, max_pool_ref, pool_len_ref

# dilation as a function of the input size along an axis: from 1 up to beyond the input, so
# that a tap lands just inside, on the edge or far outside
DILATION_RULES = (lambda n: 1, lambda n: 2, lambda n: 3, lambda n: 7, lambda n: max(1, n - 1),
                  lambda n: n, lambda n: n + 3, lambda n: 3 * n)


def dilations(size):
    return sorted({rule(size) for rule in DILATION_RULES})


# padding as a function of the dilation along an axis: from none up to the dilation
PAD_RULES = {"0": lambda d: 0, "1": lambda d: 1, "d//2": lambda d: d // 2,
             "d-1": lambda d: d - 1, "d": lambda d: d}
PADDINGS = tuple(PAD_RULES) + ("same",)


def axis_pads(padding, size, kernel, stride, dilation):
    """((begin, end), ...) per axis for an int, a per-axis tuple or "same"."""
    if padding == "same":
        return same_pads_ref(size, kernel, stride, dilation)
    p = padding if isinstance(padding, tuple) else (padding,) * len(size)
    return tuple((q, q) for q in p)


def fits(size, kernel, pads, dilation):
    """The dilated kernel fits the padded input along every axis (else the call must raise)."""
    return all(i + b + e >= d * (k - 1) + 1
               for i, k, (b, e), d in zip(size, kernel, pads, dilation))


def sample(cases, n, seed):
    """A deterministic sample of n cases, in their original order."""
    if len(cases) <= n:
        return list(cases)
    keep = np.random.default_rng(seed).choice(len(cases), size=n, replace=False)
    return [cases[i] for i in sorted(keep)]


def check_close(y, ref, mag, rtol, what=""):
    """|y - ref| <= rtol * mag + 1e-6 everywhere; NaN fails."""
    assert y.shape == ref.shape, f"{what}shape {y.shape}, expected {ref.shape}"
    err = np.abs(y.astype(np.float64) - ref)
    bound = rtol * mag + 1e-6
    bad = ~(err <= bound)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err - bound, nan=np.inf),
                                                    -np.inf)), err.shape)
        raise AssertionError(f"{what}{bad.sum()} of {y.size} outputs wrong: y={y[worst]:.6g} "
                             f"ref={ref[worst]:.6g} (bound {bound[worst]:.3g}) at "
                             f"{tuple(map(int, worst))}")


def shape_args(**arrays):
    return ", ".join(f"{k}: {tuple(v)}" if v is not None else f"{k}: None"
                     for k, v in arrays.items())


# -- convolutions (engine.conv1d, engine.conv2d), every algorithm ------------------------------

@dataclass(frozen=True)
class Conv:
    x: tuple        # (N, C, L) for conv1d, (N, C, H, W) for conv2d
    w: tuple
    stride: object
    padding: object
    dilation: object
    groups: int
    bias: bool = True

    @property
    def nd(self):
        return len(self.x) - 2

    def axes(self):
        """Per-axis (sizes, kernel, stride, dilation) tuples."""
        t = (lambda v: v if isinstance(v, tuple) else (v,) * self.nd)
        return self.x[2:], self.w[2:], t(self.stride), t(self.dilation)

    def pads(self):
        return axis_pads(self.padding, *self.axes())

    def valid(self):
        size, kernel, _, dil = self.axes()
        return fits(size, kernel, self.pads(), dil)

    def describe(self, algorithm=None):
        return (f"engine.conv{self.nd}d({shape_args(x=self.x, w=self.w)}, "
                f"bias={'(K,)' if self.bias else None}, stride={self.stride!r}, "
                f"padding={self.padding!r}, dilation={self.dilation!r}, groups={self.groups}"
                + (f", algorithm={algorithm!r})" if algorithm else ")"))


def _conv(x, w, stride, pad_rule, dil, groups, bias=True):
    """A Conv with the padding given as a rule of PADDINGS applied to each axis' dilation."""
    nd = len(x) - 2
    if pad_rule == "same":
        padding = "same"
    else:
        dd = dil if isinstance(dil, tuple) else (dil,) * nd
        p = tuple(PAD_RULES[pad_rule](d) for d in dd)
        padding = p[0] if len(set(p)) == 1 else p
    return Conv(x, w, stride, padding, dil, groups, bias)


def conv_cases():
    out, seen = [], set()

    def add(cases):
        for c in cases:
            if c.valid() and c not in seen:
                out.append(c)
                seen.add(c)

    # The case of the im2col bug (kernels/_im2col.pxd, im2col_rows): rows cut into pieces, and
    # a right tap valid only left of the last piece wrote zeros before the column buffer.
    add([Conv((1, 64, 8192), (16, 64, 3), 1, 7000, 7000, 1, False)])

    # 1-D rows long enough that im2col cuts them into pieces: it does when a row has more than
    # IM2COL_CHUNK_BYTES / (4 * Cg * k) = 131072 / (Cg * k) output columns (682 here).
    L = 2048
    add(_conv((1, 64, L), (8, 64, 3), s, p, d, 1, bias=(d % 2 == 0))
        for d, p, s in itertools.product(dilations(L), PADDINGS, (1, 2)))
    add(_conv((1, 64, L), (8, 64, 3), 3, p, d, 1) for d, p in [(7, "d"), (L + 3, "d-1"),
                                                                 (L, "same"), (1, "0")])
    # 1x1 (2048 columns per piece), 1x2 (1024), 1x5 (409)
    add(_conv((1, 64, 4096), (8, 64, 1), s, p, d, 1)
        for d, p, s in itertools.product((1, 4099), ("0", "1", "same"), (1, 2)))
    add(_conv((1, 64, L), (8, 64, 2), s, p, d, 1)
        for d, p, s in itertools.product((3, L - 1, L + 3), ("d//2", "d-1", "d", "same"), (1, 3)))
    add(_conv((1, 64, L), (8, 64, 5), s, p, d, 1)
        for d, p, s in itertools.product((2, 7, 1023, 2047, L, 3 * L), ("d-1", "d", "same"),
                                         (1, 2)))
    # grouped (Cg 16: 2730 columns per piece) and depthwise (Cg 1: 43690 columns per piece)
    L = 3072
    add(_conv((1, 64, L), (16, 16, 3), s, p, d, 4)
        for d, p, s in itertools.product((1, 7, L - 1, L + 3), ("0", "d-1", "d", "same"), (1, 2)))
    L = 45000
    add(_conv((1, 4, L), (4 * s, 1, 3), s, p, d, 4)
        for d, p, s in itertools.product((1, 7, L - 1, L + 3), ("d-1", "d", "same"), (1, 2)))

    # small 1-D: lengths 1-40, kernels 1, 2, 3, 5, dense, grouped and depthwise (multipliers
    # 1 and 2)
    channels = [(4, 6, 1), (4, 4, 2), (4, 4, 4), (4, 8, 4)]
    small = [_conv((1 + (L % 2), c, L), (k, c // g, kt), s, p, d, g)
             for L, kt, (c, k, g), s in itertools.product((1, 5, 11, 40), (1, 2, 3, 5), channels,
                                                          (1, 2, 3))
             for d in dilations(L) for p in PADDINGS]
    add(sample([c for c in small if c.valid()], 140, seed=1))

    # small 2-D maps: dilations along one axis or both, up to several times the map
    maps = [(5, 5), (11, 13), (3, 40), (7, 9)]
    kernels = [(1, 1), (2, 2), (3, 3), (5, 5), (3, 1), (1, 5)]
    channels = [(4, 6, 1), (4, 4, 2), (4, 4, 4), (4, 8, 4)]
    two_d = []
    for (h, w), kern, (c, k, g), s in itertools.product(maps, kernels, channels, (1, 2, 3)):
        for rule in DILATION_RULES:
            dh, dw = rule(h), rule(w)
            for dil in {(dh, dw), (1, dw), (dh, 1)}:
                for p in PADDINGS:
                    case = _conv((1 + (h % 2), c, h, w), (k, c // g) + kern, s, p,
                                 dil if dil[0] != dil[1] else dil[0], g)
                    if case.valid():
                        two_d.append(case)
    # 3x3 and 1x1 at stride 1 take Winograd (and its dilated form) and pointwise: more of them,
    # and every undilated 3x3 one (the only layers winograd_f23 takes)
    favoured = [c for c in two_d if c.stride == 1 and c.w[2:] in ((3, 3), (1, 1))]
    add(c for c in favoured if c.w[2:] == (3, 3) and c.dilation == 1)
    add(sample(favoured, 80, seed=2))
    favoured = set(favoured)
    add(sample([c for c in two_d if c not in favoured], 140, seed=3))

    # 2-D rows long enough for im2col to cut (Cg 16, 3x3: 910 columns per piece)
    W = 2048
    add(_conv((1, 16, 3, W), (8, 16, 3, 3), s, p, (dh, dw), 1)
        for (dh, dw), p, s in itertools.product(((1, 1), (2, 7), (1, W - 1), (3, W + 3),
                                                 (2, 3 * W)), ("d-1", "d", "same"), (1, 2)))
    # maps large enough that two threads share the work
    add(sample([_conv((2, 16, 24, 40), (k, 16 // g, kt, kt), s, p, (dh, dw), g)
                for (k, g), kt, s, p, (dh, dw) in itertools.product(
                    ((16, 1), (32, 4), (16, 16)), (1, 3, 5), (1, 2), PADDINGS,
                    ((1, 1), (2, 2), (7, 7), (23, 39), (24, 40), (27, 43), (72, 120)))
                if _conv((2, 16, 24, 40), (k, 16 // g, kt, kt), s, p, (dh, dw), g).valid()],
               40, seed=4))
    return out


def run_conv(case, algorithm, rng):
    x = rng.standard_normal(case.x, dtype=np.float32)
    w = rng.standard_normal(case.w, dtype=np.float32)
    b = rng.standard_normal(case.w[0], dtype=np.float32) if case.bias else None
    fn = engine.conv1d if case.nd == 1 else engine.conv2d

    def call():
        return (fn(x, w, b, case.stride, case.padding, case.dilation, case.groups,
                   algorithm=algorithm),)

    def check(y):
        _, _, stride, dil = case.axes()
        pads = case.pads()
        x2, w2 = x, w
        if case.nd == 1:    # as 2-D with height 1
            x2, w2 = x[:, :, None], w[:, :, None]
            stride, dil, pads = (1,) + stride, (1,) + dil, ((0, 0),) + pads
        ref = conv2d_ref(x2, w2, b, stride, pads, dil, case.groups)
        mag = conv2d_ref(np.abs(x2), np.abs(w2), None if b is None else np.abs(b), stride,
                         pads, dil, case.groups)
        if case.nd == 1:
            ref, mag = ref[:, :, 0], mag[:, :, 0]
        check_close(y, ref, mag, RTOL[algorithm])
    return call, check


# -- engine.conv_transpose2d (col2im, zero_insert) ---------------------------------------------

@dataclass(frozen=True)
class ConvT:
    x: tuple
    w: tuple        # (C_in, K // groups, kh, kw)
    stride: int
    padding: int
    output_padding: int
    dilation: int
    groups: int

    def out_size(self):
        return tuple((i - 1) * self.stride + self.dilation * (k - 1) + 1 + self.output_padding
                     - 2 * self.padding for i, k in zip(self.x[2:], self.w[2:]))

    def describe(self, algorithm):
        return (f"engine.conv_transpose2d({shape_args(x=self.x, w=self.w)}, bias=(K,), "
                f"stride={self.stride}, padding={self.padding}, "
                f"output_padding={self.output_padding}, groups={self.groups}, "
                f"dilation={self.dilation}, algorithm={algorithm!r})")


def conv_transpose_cases():
    cases = []
    channels = [(8, 6, 1), (8, 8, 2), (8, 8, 8), (8, 16, 8)]    # (C_in, K, groups)
    for (h, w), kt, (c, k, g), s in itertools.product(((5, 7), (11, 13), (1, 6)), (1, 2, 3),
                                                      channels, (1, 2, 3)):
        for d in dilations(min(h, w)):
            for p in sorted({0, 1, d // 2, d - 1, d}):
                for op in sorted({0, max(s, d) - 1}):
                    case = ConvT((1 + h % 2, c, h, w), (c, k // g, kt, kt), s, p, op, d, g)
                    if min(case.out_size()) >= 1:
                        cases.append(case)
    cases = sample(cases, 60, seed=5)
    # inputs large enough for col2im to take the rows in several chunks, at two threads
    cases += [ConvT((1, 8, 12, 400), (8, 8, 3, 3), s, p, 0, d, 1)
              for s, d, p in [(1, 1, 0), (2, 7, 7), (3, 13, 12), (1, 401, 400)]]
    return cases


def run_conv_transpose(case, algorithm, rng):
    x = rng.standard_normal(case.x, dtype=np.float32)
    w = rng.standard_normal(case.w, dtype=np.float32)
    b = rng.standard_normal(case.w[1] * case.groups, dtype=np.float32)
    kw = dict(stride=case.stride, padding=case.padding, output_padding=case.output_padding,
              groups=case.groups, dilation=case.dilation)

    def call():
        return (engine.conv_transpose2d(x, w, b, **kw, algorithm=algorithm),)

    def check(y):
        args = ((case.stride,) * 2, ((case.padding,) * 2,) * 2, (case.output_padding,) * 2,
                (case.dilation,) * 2, case.groups)
        ref = conv_transpose2d_ref(x, w, b, *args)
        mag = conv_transpose2d_ref(np.abs(x), np.abs(w), np.abs(b), *args)
        if algorithm == "col2im":   # GEMM sums then scatter-adds: as im2col
            rtol = RTOL["im2col"]
        else:                       # the equivalent convolution, run by the algorithm auto chose
            layer = engine.ConvTranspose2d(w, b, **kw, algorithm=algorithm)
            rtol = RTOL[layer._impl.conv.algorithm]
        check_close(y, ref, mag, rtol)
    return call, check


# -- engine.max_pool2d, engine.avg_pool2d --------------------------------------------------------

@dataclass(frozen=True)
class Pool:
    x: tuple
    kernel: int
    stride: int
    padding: int
    dilation: int
    ceil_mode: bool
    count_include_pad: bool = True

    def describe(self, op):
        if op == "max_pool2d":
            return (f"engine.max_pool2d({shape_args(x=self.x)}, {self.kernel}, "
                    f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                    f"ceil_mode={self.ceil_mode}, return_indices=True)")
        return (f"engine.avg_pool2d({shape_args(x=self.x)}, {self.kernel}, stride={self.stride},"
                f" padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad})")


def pool_cases(op):
    cases = []
    maps = ((1, 1), (5, 5), (7, 13), (24, 40))
    kernels = (1, 2, 3) if op == "max_pool2d" else (1, 2, 3, 5)
    for (h, w), k, s, ceil_mode in itertools.product(maps, kernels, (1, 2, 3), (False, True)):
        for p in range(k // 2 + 1):
            dils = dilations(min(h, w)) if op == "max_pool2d" else [1]
            for d, cip in itertools.product(dils, (True, False) if op == "avg_pool2d" else (True,)):
                if all(i + 2 * p >= d * (k - 1) + 1 and pool_len_ref(i, k, s, p, d, ceil_mode)
                       >= 1 for i in (h, w)):
                    # 128 planes, so that two threads share them on the larger maps
                    cases.append(Pool((4, 32, h, w), k, s, p, d, ceil_mode, cip))
    return sample(cases, 40, seed=6)


def run_max_pool(case, _, rng):
    x = rng.standard_normal(case.x, dtype=np.float32)

    def call():
        return engine.max_pool2d(x, case.kernel, case.stride, case.padding, case.dilation,
                                 case.ceil_mode, return_indices=True)

    def check(y, idx):
        # max pooling only moves values: exact, indices included
        ref, ref_idx = max_pool_ref(x, case.kernel, case.stride, case.padding, case.dilation,
                                    case.ceil_mode)
        for got, want, what in ((y, ref, "values"), (idx, ref_idx, "indices")):
            bad = got != want
            assert not bad.any(), (f"{bad.sum()} of {got.size} {what} wrong, first at "
                                   f"{tuple(map(int, np.argwhere(bad)[0]))}: {got[bad][0]}, "
                                   f"expected {want[bad][0]}")
    return call, check


def run_avg_pool(case, _, rng):
    x = rng.uniform(-1, 1, case.x).astype(np.float32)

    def call():
        return (engine.avg_pool2d(x, case.kernel, case.stride, case.padding, case.ceil_mode,
                                  case.count_include_pad),)

    def check(y):
        args = (case.kernel, case.stride, case.padding, case.ceil_mode, case.count_include_pad)
        # float32 sums of at most 25 terms and one division: as im2col's 1e-5
        check_close(y, avg_pool_ref(x, *args), avg_pool_ref(np.abs(x), *args), 1e-5)
    return call, check


# -- engine.conv3d ------------------------------------------------------------------------------

def conv3d_cases():
    cases = []
    channels = [(4, 6, 1), (4, 4, 2), (4, 8, 4)]
    for size, kt, (c, k, g), s in itertools.product(((3, 5, 7), (5, 4, 6)), (1, 2, 3), channels,
                                                    (1, 2)):
        for d in dilations(min(size)):
            for p in PADDINGS:
                case = _conv((1, c) + size, (k, c // g, kt, kt, kt), s, p, d, g)
                if case.valid():
                    cases.append(case)
    cases = sample(cases, 40, seed=7)
    # a depth dilation large enough that vol2col takes the output rows in several runs
    cases += [_conv((1, 8, 4, 6, 300), (8, 8, 3, 3, 3), s, p, d, 1)
              for s, p, d in [(1, "d", (7, 1, 1)), (1, "d-1", (7, 6, 301)), (2, "same", (9, 2, 3))]]
    return cases


def run_conv3d(case, _, rng):
    x = rng.standard_normal(case.x, dtype=np.float32)
    w = rng.standard_normal(case.w, dtype=np.float32)
    b = rng.standard_normal(case.w[0], dtype=np.float32)

    def call():
        return (engine.conv3d(x, w, b, case.stride, case.padding, case.dilation, case.groups),)

    def check(y):
        _, _, stride, dil = case.axes()
        args = (stride, case.pads(), dil, case.groups)
        check_close(y, conv3d_ref(x, w, b, *args),
                    conv3d_ref(np.abs(x), np.abs(w), np.abs(b), *args), RTOL["im2col"])
    return call, check


# -- engine.deform_conv2d -------------------------------------------------------------------------

@dataclass(frozen=True)
class Deform:
    x: tuple
    w: tuple
    stride: int
    padding: tuple
    dilation: tuple
    groups: int
    offset_groups: int
    masked: bool

    def out_size(self):
        return tuple((i + 2 * p - d * (k - 1) - 1) // self.stride + 1 for i, k, p, d in
                     zip(self.x[2:], self.w[2:], self.padding, self.dilation))

    def offset_shape(self):
        return (self.x[0], 2 * self.offset_groups * self.w[2] * self.w[3]) + self.out_size()

    def describe(self, _):
        taps = self.w[2] * self.w[3]
        mask = (self.x[0], self.offset_groups * taps) + self.out_size() if self.masked else None
        return (f"engine.deform_conv2d({shape_args(x=self.x, offset=self.offset_shape(), w=self.w)}"
                f", bias=(K,), stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, {shape_args(mask=mask)}, groups={self.groups}, "
                f"offset_groups={self.offset_groups})")


def deform_cases():
    cases = []
    for (h, w), kern, (c, k, g, og), s in itertools.product(
            ((5, 5), (4, 7)), ((3, 3), (2, 3)), ((4, 4, 1, 1), (4, 8, 2, 2), (8, 8, 1, 2)),
            (1, 2)):
        for dil in ((1, 1), (2, 3), (h, w), (h + 3, 1), (3 * h, 3 * w)):
            for rule in ("d-1", "d"):
                pad = tuple(PAD_RULES[rule](d) for d in dil)
                case = Deform((1, c, h, w), (k, c // g) + kern, s, pad, dil, g, og,
                              masked=(len(cases) % 2 == 1))
                if min(case.out_size()) >= 1:
                    cases.append(case)
    cases = sample(cases, 20, seed=8)
    # large enough for two threads
    cases += [Deform((1, 32, 8, 10), (32, 32, 3, 3), 1, (d, e), (d, e), 1, 2, m)
              for d, e, m in [(1, 1, False), (8, 10, True), (11, 13, False)]]
    return cases


def run_deform(case, _, rng):
    x = rng.standard_normal(case.x, dtype=np.float32)
    w = rng.standard_normal(case.w, dtype=np.float32)
    b = rng.standard_normal(case.w[0], dtype=np.float32)
    oshape = case.offset_shape()
    # multiples of 1/2 (samples exactly on pixels and edges) or spread over a few pixels
    offset = (rng.integers(-6, 7, oshape) / 2 if case.masked else
              rng.standard_normal(oshape) * 2).astype(np.float32)
    mask = (rng.uniform(-1, 2, (oshape[0], oshape[1] // 2) + oshape[2:]).astype(np.float32)
            if case.masked else None)
    pads = tuple((p, p) for p in case.padding)

    def call():
        return (engine.deform_conv2d(x, offset, w, b, case.stride, case.padding, case.dilation,
                                     mask, groups=case.groups,
                                     offset_groups=case.offset_groups),)

    def check(y):
        args = ((case.stride,) * 2, pads, case.dilation, case.groups)
        ref = deform_conv2d_ref(x, offset, w, b, *args, mask)
        mag = deform_conv2d_ref(np.abs(x), offset, np.abs(w), np.abs(b), *args,
                                None if mask is None else np.abs(mask))
        check_close(y, ref, mag, 1e-5)    # as tests/test_deform.py
    return call, check


# -- batches -----------------------------------------------------------------------------------

# name: (cases, the option passed to run and describe, run). A batch must run at least
# MIN_RAN cases: a sweep that skips everything fails.
BATCHES = {f"conv-{a}": (conv_cases, a, run_conv) for a in engine.algorithms()}
BATCHES.update({
    "conv_transpose2d-col2im": (conv_transpose_cases, "col2im", run_conv_transpose),
    "conv_transpose2d-zero_insert": (conv_transpose_cases, "zero_insert", run_conv_transpose),
    "max_pool2d": (lambda: pool_cases("max_pool2d"), "max_pool2d", run_max_pool),
    "avg_pool2d": (lambda: pool_cases("avg_pool2d"), "avg_pool2d", run_avg_pool),
    "conv3d": (conv3d_cases, None, run_conv3d),
    "deform_conv2d": (deform_cases, None, run_deform),
})
MIN_RAN = 20


def one_line(text):
    return " | ".join(line.strip() for line in str(text).strip().splitlines())


def main(batch):
    make_cases, option, run = BATCHES[batch]
    workspace.keep = 0      # free every scratch buffer on return (see the module docstring)
    ran = skipped = 0
    for i, case in enumerate(make_cases()):
        print(f"CASE {i}\t{case.describe(option)}", flush=True)
        call, check = run(case, option, np.random.default_rng(i))
        outs = []
        try:
            for threads in (1, 2):
                engine.set_num_threads(threads)
                outs.append(call())
            check(*outs[0])
            for a, b in zip(*outs):
                assert np.array_equal(a, b), (
                    f"1 and 2 threads differ at {(a != b).sum()} of {a.size} outputs")
            result = "PASS"
        except AssertionError as e:
            result = f"FAIL\t{one_line(e)}"
        except Exception as e:
            if (isinstance(e, ValueError) and run is run_conv and not outs
                    and "cannot run this layer" in str(e)):
                print(f"SKIP {i}\t{one_line(e)}", flush=True)
                skipped += 1
                continue
            result = f"FAIL\tat {threads} thread(s): {type(e).__name__}: {one_line(e)}"
        ran += 1
        word, tab, text = result.partition("\t")
        print(f"{word} {i}{tab}{text}", flush=True)
    print(f"DONE {ran} {skipped}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
