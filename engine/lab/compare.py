"""engine.compare: every algorithm that can run a convolution layer, timed side by side on this
CPU and checked against the float64 reference on the same input, optionally beside ONNX
Runtime and PyTorch on the same layer.

A layer is given as an engine.Conv2d (its input size from ``x`` or the size it was planned
for), a dict of parameters, or the command line's spec string
"c=64,o=128,h=56,w=56,k=3,s=1,p=same,d=2,g=1,n=1" (in and out channels, height, width,
kernel, stride, padding, dilation, groups, batch; omitted keys take torch's defaults, o
defaults to c and w to h). Weights and input made from a spec are unit normal (seed 0).
"""
from __future__ import annotations

import math

import numpy as np

from .. import dispatch
from .._threads import get_num_threads
from ..ops.activation import float64_activation
from ..ops.conv2d import Conv2d
from ..ops.workspace import workspace
from ..timing import time_alternating

PEERS = ("onnxruntime", "torch")
DEFAULT_REPEAT = 7
_SPEC_KEYS = {"c": "in_channels", "o": "out_channels", "h": "height", "w": "width",
              "k": "kernel", "s": "stride", "p": "padding", "d": "dilation", "g": "groups",
              "n": "batch"}


# ============================================================================ the layer

def parse_layer_spec(spec: str) -> dict:
    """"c=64,o=128,h=56,k=3,p=same" -> parameters (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"layer spec must be a string like 'c=64,h=56,k=3', got {spec!r}")
    params = {}
    for part in spec.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in _SPEC_KEYS:
            raise ValueError(f"layer spec: {part.strip()!r} is not key=value with a key of "
                             f"{', '.join(_SPEC_KEYS)}")
        if key == "p" and value in ("same", "valid"):
            params[key] = value
            continue
        try:
            params[key] = int(value)
        except ValueError:
            raise ValueError(f"layer spec: {key}={value!r} must be an integer"
                             + (" (or same/valid)" if key == "p" else "")) from None
    if "c" not in params or "h" not in params:
        raise ValueError(f"layer spec needs at least c (in channels) and h (height): {spec!r}")
    return params


def _layer_from_params(params: dict, activation=None):
    """(weight, bias, stride, padding, dilation, groups, activation, x) from parameters."""
    unknown = set(params) - set(_SPEC_KEYS)
    if unknown:
        raise ValueError(f"layer parameters: unknown keys {sorted(unknown)}; known: "
                         f"{', '.join(_SPEC_KEYS)}")
    c = params["c"]
    o, g, k = params.get("o", c), params.get("g", 1), params.get("k", 3)
    h = params["h"]
    w_ = params.get("w", h)
    for key, v in (("c", c), ("o", o), ("g", g), ("k", k), ("h", h), ("w", w_),
                   ("n", params.get("n", 1)), ("s", params.get("s", 1)),
                   ("d", params.get("d", 1))):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"layer parameter {key} must be a positive integer, got {v!r}")
    if c % g or o % g:
        raise ValueError(f"layer parameters: groups g={g} must divide c={c} and o={o}")
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((o, c // g, k, k), dtype=np.float32)
    bias = rng.standard_normal(o, dtype=np.float32)
    x = rng.standard_normal((params.get("n", 1), c, h, w_), dtype=np.float32)
    return (weight, bias, params.get("s", 1), params.get("p", 0), params.get("d", 1), g,
            activation, x)


def _as_layer(layer_or_params, x):
    if isinstance(layer_or_params, str):
        layer_or_params = parse_layer_spec(layer_or_params)
    if isinstance(layer_or_params, dict):
        w, b, s, p, d, g, act, made = _layer_from_params(layer_or_params)
        return w, b, s, p, d, g, act, made if x is None else _check_x(x, w.shape[1] * g)
    if isinstance(layer_or_params, Conv2d):
        L = layer_or_params
        if x is None:
            if L.params.in_size is None:
                raise ValueError("x: give an input, or a layer planned with input_size, to "
                                 "compare on")
            x = np.random.default_rng(0).standard_normal(
                (1, L.in_channels) + tuple(L.params.in_size), dtype=np.float32)
        return (L.weight, L.bias, L.stride, L.padding, L.dilation, L.groups, L.activation,
                _check_x(x, L.in_channels))
    raise ValueError(f"layer_or_params must be an engine.Conv2d, a dict of layer parameters "
                     f"or a spec string, got {type(layer_or_params).__name__}")


def _check_x(x, channels):
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != channels or min(x.shape) < 1:
        raise ValueError(f"x must be (N, {channels}, H, W) and not empty, got shape {x.shape}")
    return np.ascontiguousarray(x, np.float32)


# ============================================================================ measuring

def real_flops(algorithm: str, layer: Conv2d, g) -> float:
    """Floating-point operations the algorithm really performs for geometry ``g``, counted on
    its main stage: the direct count for the GEMM-based and direct algorithms, the element-wise
    GEMMs of Winograd ((m+2)^2 products per m x m tile), kh + kw taps per output for the
    separable passes, and FFT's spectral products (8 real flops per complex multiply-add over
    the half-spectrum) plus its transforms (5 N log2 N per plane)."""
    direct = 2.0 * g.macs
    (oh, ow), (kh, kw) = g.out_size, layer.kernel_size
    cg, k, n = layer.weight.shape[1], layer.out_channels, g.batch
    if algorithm in ("winograd_f23", "winograd_f43", "winograd_f63", "dilated_s2b"):
        m = {"winograd_f43": 4, "winograd_f63": 6}.get(algorithm, 2)
        tiles = n * math.ceil(oh / m) * math.ceil(ow / m)
        return 2.0 * tiles * (m + 2) ** 2 * cg * k
    if algorithm == "separable":
        return 2.0 * n * k * oh * ow * (kh + kw)
    if algorithm == "fft":
        (h, w) = g.in_size
        ph, pw = h + sum(g.pads[0]), w + sum(g.pads[1])
        bins = ph * (pw // 2 + 1)
        planes = n * (layer.in_channels + k)
        return 8.0 * n * bins * cg * k + planes * 5.0 * ph * pw * math.log2(max(2, ph * pw))
    return direct


def _weight_bytes(layer: Conv2d) -> int:
    total = 0
    for key in layer.transforms.keys():
        value = layer.transforms.get(key, lambda: None)
        for a in value if isinstance(value, (tuple, list)) else (value,):
            total += getattr(a, "nbytes", 0)
    return total


def _errors(y, ref):
    err = float(np.max(np.abs(y.astype(np.float64) - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return err, err / scale if scale > 0 else err


def _peer_runner(peer, x, w, b, stride, pads, dilation, groups, threads):
    (pt, pb), (pl, pr) = pads
    if peer == "torch":
        try:
            import torch
        except ImportError:
            raise ValueError("peers: 'torch' needs PyTorch installed") from None
        torch.set_num_threads(threads)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tb = torch.from_numpy(b) if b is not None else None

        def run():
            with torch.no_grad():
                xp = torch.nn.functional.pad(tx, (pl, pr, pt, pb)) if (pt, pb, pl, pr) != (0,) * 4 \
                    else tx
                return torch.nn.functional.conv2d(xp, tw, tb, stride, 0, dilation, groups).numpy()
        return run
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ValueError("peers: 'onnxruntime' needs the onnx and onnxruntime packages "
                         "(pip install convengine[bench])") from None
    inits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")]
                                                  if b is not None else [])
    node = helper.make_node("Conv", ["x", "W"] + (["B"] if b is not None else []), ["y"],
                            strides=list(stride), dilations=list(dilation), group=groups,
                            pads=[pt, pl, pb, pr], kernel_shape=list(w.shape[2:]))
    graph = helper.make_graph([node], "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


def compare(layer_or_params, x=None, algorithms="all", repeat=None, peers=(), *,
            num_threads=None, progress=False) -> list[dict]:
    """Every algorithm that can run the layer (or those named in ``algorithms``), each planned
    for the input's size and timed on it, alternating run by run: a list of rows, fastest
    first, each a dict with

    algorithm, ms (median of ``repeat`` runs), gflops (the direct count of flops per second),
    real_gflops (the flops the algorithm performs, see real_flops), max_abs_err and max_rel_err
    (against the float64 direct convolution of the same input and weights, relative to the
    largest |reference|), scratch_bytes (the most scratch memory one call held),
    weight_bytes (its transformed weights), auto (whether the rules choose it), threads.

    peers: "onnxruntime" and/or "torch" add rows of those names for the same layer (the
    convolution and bias only; their errors against the reference before any activation).
    The "direct" algorithm (reference loops) is timed only when named in ``algorithms``."""
    w, b, stride, padding, dilation, groups, activation, x = _as_layer(layer_or_params, x)
    threads = num_threads or get_num_threads()
    size = x.shape[2:]
    base = Conv2d(w, b, stride, padding, dilation, groups, activation, input_size=size)
    g = base.geometry(x.shape)
    if algorithms == "all":
        names = [a for a in dispatch.ALGORITHMS if a != "direct"]
    else:
        names = list(algorithms) if not isinstance(algorithms, str) else [algorithms]
        bad = [a for a in names if a not in dispatch.ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms: unknown {bad}; known: {list(dispatch.ALGORITHMS)}")
    p = base.params
    names = [a for a in names if dispatch.why_not(a, p) is None]
    layers = {}
    for a in names:
        try:
            layers[a] = Conv2d(w, b, stride, padding, dilation, groups, activation, a,
                               input_size=size)
        except ValueError:
            continue    # not built on this machine
    peers = tuple(peers)
    bad = [q for q in peers if q not in PEERS]
    if bad:
        raise ValueError(f"peers: unknown {bad}; known: {list(PEERS)}")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    (pt, pb), (pl, pr) = g.pads      # ONNX order below: begins, then ends
    ref_pre = Conv2d(w64, b64, stride, (pt, pl, pb, pr), dilation, groups,
                     algorithm="direct")(x64)
    ref = ref_pre if activation is None else float64_activation(activation, ref_pre)
    rows, runners, outs = [], {}, {}
    for a, layer in layers.items():
        out = np.empty(layer.output_shape(x.shape), np.float32)
        geom = layer.geometry(x.shape)
        runners[a] = (lambda L=layer, o=out, gg=geom: L.run(x, o, gg, threads))
        outs[a] = out
    for q in peers:
        runners[q] = _peer_runner(q, x, w, b, base.stride, g.pads, base.dilation, groups,
                                  threads)
    # one checked call each, scratch tracked, before timing
    scratch = {}
    for a, run in runners.items():
        with workspace.tracking():
            result = run()
        scratch[a] = workspace.peak * 4
        if a in peers:
            outs[a] = result
    times = time_alternating(runners, repeat or DEFAULT_REPEAT, warmup=1, cpu_runs=0,
                             settle=0.02 if peers else 0,
                             progress_label="compare" if progress else None)
    auto = base.algorithm
    flops = 2.0 * g.macs
    for a, t in times.items():
        ms = float(np.median(t["times"]))
        peer = a in peers
        err_abs, err_rel = _errors(outs[a], ref_pre if peer else ref)
        real = flops if peer else real_flops(a, layers[a], g)
        rows.append({"algorithm": a, "ms": ms, "gflops": flops / ms / 1e6,
                     "real_gflops": real / ms / 1e6, "max_abs_err": err_abs,
                     "max_rel_err": err_rel, "scratch_bytes": 0 if peer else scratch[a],
                     "weight_bytes": 0 if peer else _weight_bytes(layers[a]),
                     "auto": a == auto, "peer": peer, "threads": threads})
    rows.sort(key=lambda r: r["ms"])
    return rows



def layer_text(layer_or_params, x=None) -> str:
    """A short description of the layer compared: channels, kernel, stride, dilation, input."""
    w, _, stride, padding, dilation, groups, activation, x = _as_layer(layer_or_params, x)
    k, cg, kh, kw = w.shape
    return (f"{cg * groups}->{k} {kh}x{kw} stride {stride} padding {padding!r} dilation "
            f"{dilation} groups {groups}" + (f" {activation}" if activation else "")
            + f" on {'x'.join(map(str, x.shape))}")


def format_rows(rows) -> str:
    from ..timing import format_table
    body = [[r["algorithm"] + (" *" if r.get("auto") else ""), f"{r['ms']:.3f}",
             f"{r['gflops']:.1f}", f"{r['real_gflops']:.1f}", f"{r['max_abs_err']:.2e}",
             f"{r['max_rel_err']:.2e}", f"{r['scratch_bytes'] / 2**20:.2f}"] for r in rows]
    return format_table(["algorithm", "ms", "GFLOP/s", "real GFLOP/s", "max abs err",
                         "max rel err", "scratch MiB"], body)
