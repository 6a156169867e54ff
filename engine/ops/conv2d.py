"""The planned 2-D convolution: validate and choose once, transform weights once, run many times."""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from .._cache import ShapeCache
from .. import dispatch
from ..dispatch.policy import conv_signature, current_policy
from .._threads import blas_pinned, fork_safe, resolve_threads, threads_for
from ..shapes import conv_output_shape, ntuple, resolve_padding
from ._validate import as_float_array, check_out, new_output
from .activation import CLAMP_ACTIVATIONS, apply_activation, canonical, kernel_act
from .separable import rank1_kernels as _rank1_kernels


class Geometry(NamedTuple):
    """Everything about one input shape that the kernels need, computed once per shape."""
    batch: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]   # ((top, bottom), (left, right))
    macs: int


def _registry():
    # Imported lazily so that engine imports cheaply and each algorithm lives in its own module.
    from . import conv2d_algorithms as algos
    return algos.REGISTRY


# The algorithms engine/ops/winograd.py runs, which take winograd_weights=.
_WINOGRAD = ("winograd_f23", "winograd_f43", "winograd_f63", "dilated_s2b")


class TransformedWeights:
    """The transformed weights of one convolution's algorithms, keyed by algorithm (and, for
    FFT, plane size): shared by the planned layers of one weight, so each transform is made
    once. ``made`` counts the transforms made (what the tests check), ``read`` those taken from
    a native file's stored ones (``preload``)."""

    def __init__(self):
        self._items = {}
        self._preloaded = {}
        self._arranged = set()
        self._lock = threading.Lock()
        fork_safe(self)
        self.made = self.read = 0

    def preload(self, items: dict) -> None:
        """Transformed weights read from a file: each is used instead of making it when an
        algorithm asks for its key with the shape it needs, else ignored."""
        self._preloaded.update(items)

    def get(self, key, make, shape=None):
        """The value of ``key``, made by ``make()`` once. ``shape``: the shape of the array
        (or the tuple of shapes of the arrays, None for an absent one) that make() returns,
        which a preloaded value must have to be used in its place."""
        with self._lock:
            if key in self._items:
                return self._items[key]
            stored = self._preloaded.pop(key, None)
        value = stored if stored is not None and shape is not None and \
            _shapes(stored) == shape else None
        if value is None:
            value = make()
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                if value is stored:
                    self.read += 1
                else:
                    self.made += 1
            return self._items[key]

    def rearrange(self, key, value) -> None:
        """Replace the made value of ``key`` by an equal one placed elsewhere (a plan's blocked
        weights copied side by side into one buffer, engine.ops.blocked.side_by_side)."""
        with self._lock:
            self._items[key] = value
            self._arranged.add(key)

    def arranged(self, key) -> bool:
        return key in self._arranged

    def keys(self) -> list:
        return list(self._items)

    def items(self) -> list:
        with self._lock:
            return list(self._items.items())


def _shapes(value):
    """The shape of a float32 array, or the tuple of those of a tuple of arrays (None for
    None); None for anything else."""
    if isinstance(value, np.ndarray):
        return value.shape if value.dtype == np.float32 and value.flags.c_contiguous else None
    if isinstance(value, tuple):
        shapes = tuple(None if v is None else _shapes(v) for v in value)
        return shapes if all(s is not None for s, v in zip(shapes, value) if v is not None) \
            else None
    return None


class Conv2d:
    """A 2-D convolution layer planned once.

    weight: (out_channels, in_channels // groups, kh, kw); bias: (out_channels,) or None.
    stride, padding, dilation, groups follow torch.nn.functional.conv2d; padding may also be
    "same" (SAME_UPPER for stride > 1) or "valid". activation: None or a name of
    engine/ops/activation.py ("relu", "relu6", "silu", "gelu", "tanh", "leaky_relu(0.1)",
    "hardsigmoid", "clip(-1,1)", ...), applied in the kernel's output step together with the
    bias (by the kernels that only clamp, as one vector pass right after them). algorithm:
    "auto" or a name from ``engine.algorithms()``. input_size: the (H, W) the layer will see, if known, so the
    dispatcher can weigh it. Float64 input is converted to float32 except with
    algorithm="direct", which computes and returns float64.

    depthwise_kernel ("auto", "blocks", "rows", "planes") forces the depthwise algorithm's
    kernel; winograd_weights ("auto", "stored", "per_call") whether a Winograd algorithm keeps
    its transformed weights or makes them in every call (engine/dispatch/winograd.py).

    transforms: a TransformedWeights shared by layers made from the same weight, bias, stride,
    dilation and groups (a graph's Conv node makes one layer per input size and activation):
    each algorithm's transformed weights are then made once and shared by all of them.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, algorithm="auto", *, input_size=None, num_threads=None,
                 transforms=None, depthwise_kernel="auto", winograd_weights="auto"):
        # float32 weights are used as given (no copy); float64 ones are kept for the float64
        # path and rounded once for the float32 kernels
        given = weight if isinstance(weight, np.ndarray) else None
        w = as_float_array(weight, "weight", 4,
                           dtype=np.float64 if given is not None and given.dtype == np.float64
                           else np.float32)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        groups = int(groups)
        k_out, cg, kh, kw = w.shape
        if min(w.shape) < 1:
            raise ValueError(f"weight must have no empty dimension, got shape {w.shape}")
        if k_out % groups:
            raise ValueError(f"out_channels ({k_out}, weight.shape[0]) must be divisible by "
                             f"groups ({groups})")
        self.stride = ntuple(stride, 2, "stride", minimum=1)
        self.dilation = ntuple(dilation, 2, "dilation", minimum=1)
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        self.padding = padding
        # padding that does not depend on the input size is resolved now
        self._static_pads = None
        if not (isinstance(padding, str) and padding == "same" and self.stride != (1, 1)):
            self._static_pads = resolve_padding(padding, (1, 1), (kh, kw), self.stride,
                                                self.dilation)
        self.groups = groups
        self.in_channels = cg * groups
        self.out_channels = k_out
        self.kernel_size = (kh, kw)
        self.activation = canonical(activation)
        self.act = kernel_act(activation)
        self._weight64 = w if w.dtype == np.float64 else None
        self.weight = np.ascontiguousarray(w, dtype=np.float32)
        self.transforms = TransformedWeights() if transforms is None else transforms
        if bias is not None:
            b = as_float_array(bias, "bias", 1, dtype=np.float64)
            if b.shape != (k_out,):
                raise ValueError(f"bias must have shape ({k_out},), got {b.shape}")
            self.bias64 = b
            self.bias = b.astype(np.float32)
        else:
            self.bias64 = self.bias = None
        self.num_threads = num_threads
        if input_size is not None:
            input_size = ntuple(input_size, 2, "input_size", minimum=1)
        self.params = dispatch.ConvParams(
            in_channels=self.in_channels, out_channels=k_out, kernel=(kh, kw),
            stride=self.stride, dilation=self.dilation, groups=groups, pads=self._static_pads,
            in_size=input_size, rank1_kernels=_rank1_kernels(w, groups))
        if input_size is not None:
            # fail early, with the same message a call would give
            self._geometry((1, self.in_channels) + input_size)
        if algorithm == "auto":
            self.algorithm, self.reason = dispatch.choose_conv2d(
                self.params, current_policy().excluded)
        else:
            reason = dispatch.why_not(algorithm, self.params)
            if reason is None and algorithm not in _registry():
                reason = f"algorithm {algorithm!r} is not built"
            if reason is not None:
                raise ValueError(f"algorithm={algorithm!r} cannot run this layer: {reason}")
            self.algorithm, self.reason = algorithm, "forced by the caller"
        if depthwise_kernel != "auto" and self.algorithm != "depthwise":
            raise ValueError(f"depthwise_kernel={depthwise_kernel!r} needs the depthwise "
                             f"algorithm, got {self.algorithm!r}")
        if winograd_weights != "auto" and self.algorithm not in _WINOGRAD:
            raise ValueError(f"winograd_weights={winograd_weights!r} needs a Winograd "
                             f"algorithm, got {self.algorithm!r}")
        if winograd_weights == "auto":     # a model's own choice (engine.load) for its layers
            winograd_weights = current_policy().winograd_weights
        options = ({"kernel": depthwise_kernel} if self.algorithm == "depthwise"
                   else {"weights": winograd_weights} if self.algorithm in _WINOGRAD else {})
        self._geometries = ShapeCache(64)
        self._impl = _registry()[self.algorithm](self, **options)
        # an activation the kernel's output step cannot apply runs as one vector pass after it
        self.post_activation = None
        if getattr(self._impl, "clamp_only", False) \
                and self.activation not in CLAMP_ACTIVATIONS:
            self.act, self.post_activation = kernel_act(None), self.activation

    @property
    def weight64(self) -> np.ndarray:
        """The weights in float64 (for weight transforms and the float64 path), made when
        asked for instead of kept beside the float32 ones."""
        if self._weight64 is not None:
            return self._weight64
        return self.weight.astype(np.float64)

    @property
    def given_weight(self) -> np.ndarray:
        """The weights as given: float64 where they were, else the float32 ones (no copy)."""
        return self._weight64 if self._weight64 is not None else self.weight

    def transformed(self, key, make, shape=None):
        """The transformed weights ``key`` (an algorithm's name and what else they depend
        on), made by ``make()`` once for every layer sharing ``transforms``; ``shape`` (that
        of make()'s array) lets a native file's stored copy stand in for it."""
        return self.transforms.get(key, make, shape)

    # -- per-shape set-up -------------------------------------------------------------------
    def _geometry(self, shape) -> Geometry:
        n, _, h, w = shape
        pads = self._static_pads or resolve_padding(self.padding, (h, w), self.kernel_size,
                                                    self.stride, self.dilation)
        try:
            out_size = conv_output_shape((h, w), self.kernel_size, self.stride, pads,
                                         self.dilation)
        except ValueError as e:
            raise ValueError(f"x: {e}") from None
        macs = (n * self.out_channels * out_size[0] * out_size[1] * self.weight.shape[1]
                * self.kernel_size[0] * self.kernel_size[1])
        return Geometry(n, (h, w), out_size, pads, macs)

    def output_shape(self, input_shape) -> tuple[int, int, int, int]:
        g = self.geometry(input_shape)
        return (g.batch, self.out_channels) + g.out_size

    def geometry(self, input_shape) -> Geometry:
        key = tuple(input_shape)
        return self._geometries.get(key, lambda: self._geometry(key))

    # -- running ------------------------------------------------------------------------------
    def __call__(self, x, out=None):
        dtype = np.float64 if (self.algorithm == "direct" and getattr(x, "dtype", None)
                               == np.float64) else np.float32
        x = as_float_array(x, "x", 4, dtype=dtype)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (weight.shape[1] * groups "
                             f"= {self.weight.shape[1]} * {self.groups}), got shape {x.shape}")
        if min(x.shape) < 1:
            raise ValueError(f"x must have no empty dimension, got shape {x.shape}")
        g = self.geometry(x.shape)
        shape = (g.batch, self.out_channels) + g.out_size
        if out is None:
            out = new_output(shape, dtype, self, x.shape)
        elif dtype == np.float32:
            check_out(out, shape)
        else:
            raise ValueError("out= is only supported for float32 input")
        self.run(x, out, g)
        return out

    @property
    def fuses_residual(self) -> bool:
        """Whether run() can add a residual tensor in the kernel's output step (before the
        activation): true for the algorithms whose output step takes one."""
        return getattr(self._impl, "fuses_residual", False)

    def run(self, x: np.ndarray, out: np.ndarray, g: Geometry, num_threads=None,
            residual=None) -> None:
        """Checked arrays in, no validation: for callers (the graph runner) that did it once.
        residual: None, or a C-contiguous float32 array of out's shape added before the
        activation; only where fuses_residual."""
        threads = threads_for(g.macs, resolve_threads(num_threads or self.num_threads))
        if residual is not None:
            self._impl.run(x, out, g, threads, residual=residual)
        elif getattr(self._impl, "uses_blas", True):
            with blas_pinned():
                self._impl.run(x, out, g, threads)
        else:   # pinning costs a few microseconds: a 14x14 depthwise layer's tenth
            self._impl.run(x, out, g, threads)
        if self.post_activation is not None:
            apply_activation(out, self.post_activation, threads)

    # -- reporting ----------------------------------------------------------------------------
    def kernel_choice(self, g):
        """(kernel, reason) for geometry ``g`` where the algorithm has several kernels
        (depthwise: engine/dispatch/depthwise.py) or forms of its weights (Winograd:
        engine/dispatch/winograd.py), else None."""
        choose = getattr(self._impl, "kernel_choice", None)
        return None if choose is None else choose(g)

    @property
    def choice_name(self) -> str:
        """What kernel_choice chooses, in words: "kernel", or "weights" for Winograd."""
        return getattr(self._impl, "choice_name", "kernel")

    def __repr__(self):
        kh, kw = self.kernel_size
        return (f"Conv2d({self.in_channels}->{self.out_channels}, kernel={kh}x{kw}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"groups={self.groups}, activation={self.activation!r}, "
                f"algorithm={self.algorithm!r})")

    def explain(self) -> str:
        lines = [repr(self), f"algorithm: {self.algorithm} ({self.reason})",
                 "candidates (estimated ms on one core"
                 + ("" if self.params.in_size else ", for a 56x56 output") + "):"]
        for name, ms in sorted(dispatch.conv2d_candidates(self.params), key=lambda t: t[1]):
            mark = "*" if name == self.algorithm else " "
            lines.append(f"  {mark} {name:<14} {ms:9.3f}")
        return "\n".join(lines)


def conv2d_for_size(weight, bias, stride, padding, dilation, groups, activation=None,
                    algorithm="auto", *, input_size, transforms=None, drop_taps=True,
                    trimmed_transforms=None, _tuned_by=None):
    """A Conv2d planned for one input size, with the kernel's rows and columns that read only
    padding at that size dropped first (engine/dispatch/conv.py drop_padding_taps): a 3x3 of
    rate 24 on a 14x14 map is a 1x1. The output keeps its size and values; the layer's reason
    says what was dropped. drop_taps=False keeps the whole kernel (a forced algorithm runs the
    layer as given). transforms serves the whole kernel; trimmed_transforms (a dict) holds a
    TransformedWeights per trimmed kernel."""
    w = as_float_array(weight, "weight", 4,
                       dtype=np.float64 if getattr(weight, "dtype", None) == np.float64
                       else np.float32)
    kernel = w.shape[2:]
    s = ntuple(stride, 2, "stride", minimum=1)
    d = ntuple(dilation, 2, "dilation", minimum=1)
    size = ntuple(input_size, 2, "input_size", minimum=1)
    pads = resolve_padding(padding, size, kernel, s, d)
    tuned = None
    if algorithm == "auto":
        # a measured choice for this layer (engine.tune's wisdom) replaces the rules' one,
        # unless the accuracy asked for keeps its algorithm out
        policy = current_policy()
        tuned = policy.wisdom.get(conv_signature(w.shape, s, pads, d, groups, size))
        if tuned is not None and tuned["algorithm"] not in policy.excluded:
            try:
                return conv2d_for_size(weight, bias, stride, padding, dilation, groups,
                                       activation, tuned["algorithm"], input_size=size,
                                       transforms=transforms, drop_taps=drop_taps,
                                       trimmed_transforms=trimmed_transforms, _tuned_by=tuned)
            except ValueError:
                pass    # the file was made for another layer with this signature: the rules
    tuned = _tuned_by
    trim = None
    if drop_taps and d != (1, 1):
        trim = dispatch.drop_padding_taps(size, kernel, s, pads, d)
    if trim is None:
        layer = Conv2d(weight, bias, stride, padding, dilation, groups, activation, algorithm,
                       input_size=size, transforms=transforms)
        return _tuned(layer, tuned)
    (r0, r1), (c0, c1), ((pt, pb), (pl, pr)), reason = trim
    if trimmed_transforms is not None:
        transforms = trimmed_transforms.setdefault((r0, r1, c0, c1), TransformedWeights())
    else:
        transforms = None
    layer = Conv2d(np.ascontiguousarray(w[:, :, r0:r1 + 1, c0:c1 + 1]), bias, stride,
                   (pt, pl, pb, pr), dilation, groups, activation, algorithm,
                   input_size=size, transforms=transforms)
    layer.reason = f"{reason}; {layer.reason}"
    layer.dropped_taps = reason
    return _tuned(layer, tuned)


def _tuned(layer, entry):
    """The layer, its reason the measurement that chose its algorithm when it was tuned."""
    if entry is not None:
        layer.reason = (f"tuned: measured {entry['ms']:.3f} ms, the rule's choice "
                        f"{entry['rule']} {entry['rule_ms']:.3f} ms")
    return layer
