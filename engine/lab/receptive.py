"""engine.receptive_field: which input pixels each layer's outputs can see.

Per spatial axis a layer's field is three numbers, in input pixels (the center of the first
input pixel is 0):
    size    the extent of input one output reads (its field, padding included)
    jump    the distance between the fields of neighbouring outputs (the product of strides)
    start   the center of the first output's field
Output o of the layer then reads input pixels within start + o*jump +- (size - 1)/2. A window of
kernel k, stride s, dilation d and begin padding p (convolution, pooling) maps the field of its
input (size, jump, start) to
    size + (k - 1)*d*jump,   jump*s,   start + ((k - 1)*d/2 - p)*jump.
A transposed convolution is the same window at stride 1/s: output o reads inputs
(o + p - u*d)/s for the taps u, so
    size + (k - 1)*d/s*jump,   jump/s,   start + (p - (k - 1)*d/2)/s*jump,
which may be fractional: the field is then the interval of that length around its center,
which contains every pixel that can reach the output (a given output reads at most
floor((k - 1)*d/s) + 1 of its input positions, depending on its phase).
A global pool, and an operator that normalises over the spatial axes, reads its whole input:
    size + (n - 1)*jump,   n*jump,   start + (n - 1)/2*jump   (n input positions),
and from there on every output may depend on every input pixel (the row's ``whole``); an
operator reading its whole input after that adds nothing more.
Resize samples input position x = a*o + b (its coordinate_transformation_mode) with 1, 2 or 4
taps (nearest, linear, cubic; an antialiased downscale widens them by 1/scale): jump scales by
a = 1/scale, start moves by b, size grows by (taps - 1)*jump; the taps sit up to a layer-input
pixel off x (the rounding of nearest, linear's floor), which the field does not widen for.
Elementwise and other shape-keeping operators pass the field through, the spatial axes followed
through Transpose and the reshapes that keep them (a channel-last block, a channel shuffle).
Where branches meet (Add, Mul, Concat, a Conv with a fused residual) the field is the union of
theirs when they lie on the same grid, else the largest (per axis); the row says which. A
deformable convolution's offsets move its taps anywhere: its row gives the field of the
regular grid. An operator that changes the spatial shape in a way not modelled here is taken
to read its whole input, and its row says so.

The arithmetic is exact (fractions); the values come back as ints where whole, else floats.
"""
from __future__ import annotations

import os
from fractions import Fraction

from .. import shapes

__all__ = ["receptive_field", "format_rows", "plot_rows", "add_command"]

# Operators whose every output reads all of its input's spatial positions, though they keep
# the spatial shape (statistics over the spatial axes; sampling at data-dependent points).
_READS_WHOLE = {"InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization",
                "GridSample"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_WINDOWED = {"Conv", "DeformConv", "ConvTranspose", "MaxUnpool", "MaxPool", "AveragePool",
             "LpPool"}
_RESIZE_TAPS = {"nearest": 1, "linear": 2, "cubic": 4}


# ============================================================================ arithmetic

def _window(f, k, s, d, p):
    size, jump, start = f
    return size + (k - 1) * d * jump, jump * s, start + (Fraction((k - 1) * d, 2) - p) * jump


def _transposed(f, k, s, d, p):
    size, jump, start = f
    reach = Fraction((k - 1) * d)
    return size + reach / s * jump, jump / s, start + (p - reach / 2) / s * jump


def _whole(f, n):
    size, jump, start = f
    return size + (n - 1) * jump, jump * n, start + Fraction(n - 1, 2) * jump


def _union(fields):
    """One field holding every given field of the same grid (same jump)."""
    lo = min(st - (sz - 1) / 2 for sz, _, st in fields)
    hi = max(st + (sz - 1) / 2 for sz, _, st in fields)
    return hi - lo + 1, fields[0][1], (lo + hi) / 2


def _plain(v):
    v = Fraction(v)
    return int(v) if v.denominator == 1 else float(v)


# ============================================================================ layer tuples

def _layer_rows(layers, input_shape):
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ValueError(f"model_or_layers must be a Model, a model file or a sequence of "
                         f"(kernel, stride, dilation[, padding]) tuples, got "
                         f"{type(layers).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("model_or_layers: the sequence of layers is empty")
    axes = None
    for k, layer in enumerate(layers):
        if isinstance(layer, (str, bytes)) or not isinstance(layer, (tuple, list)) \
                or not 2 <= len(layer) <= 4:
            raise ValueError(f"layers[{k}] must be a tuple (kernel, stride[, dilation"
                             f"[, padding]]), got {layer!r}")
        for v in layer:
            if isinstance(v, (tuple, list)):
                if axes is not None and len(v) != axes:
                    raise ValueError(f"layers[{k}]: {v!r} has {len(v)} axes, an earlier "
                                     f"entry has {axes}")
                axes = len(v)
    per_axis = axes is not None
    n = 1 if axes is None else axes
    if n < 1:
        raise ValueError("model_or_layers: a per-axis entry must have at least one value")
    sizes = None
    if input_shape is not None:
        sizes = shapes.ntuple(input_shape, n, "input_shape", minimum=1)
    field = [(Fraction(1), Fraction(1), Fraction(0))] * n
    rows = []
    for k, layer in enumerate(layers):
        kernel, stride, dilation, padding = (tuple(layer) + (1, 0))[:4] if len(layer) == 2 \
            else (tuple(layer) + (0,))[:4]
        kernel = shapes.ntuple(kernel, n, f"layers[{k}] kernel", minimum=1)
        stride = shapes.ntuple(stride, n, f"layers[{k}] stride", minimum=1)
        dilation = shapes.ntuple(dilation, n, f"layers[{k}] dilation", minimum=1)
        padding = shapes.ntuple(padding, n, f"layers[{k}] padding", minimum=0)
        field = [_window(f, *w) for f, w in zip(field, zip(kernel, stride, dilation, padding))]
        if sizes is not None:
            sizes = tuple(shapes.conv_output_size(i, kk, s, p, p, d) for i, kk, s, p, d
                          in zip(sizes, kernel, stride, padding, dilation))
            if min(sizes) < 1:
                raise ValueError(f"input_shape {input_shape!r}: layers[{k}] would give an "
                                 f"empty output ({sizes})")

        def out(values):
            values = tuple(values)
            return values if per_axis else values[0]
        rows.append({"name": f"layer{k + 1}", "op": "conv", "kernel": out(kernel),
                     "stride": out(stride), "dilation": out(dilation),
                     "padding": out(padding),
                     "size": out(_plain(f[0]) for f in field),
                     "jump": out(_plain(f[1]) for f in field),
                     "start": out(_plain(f[2]) for f in field),
                     "output_size": None if sizes is None else out(sizes), "whole": False,
                     "note": ""})
    return rows


# ============================================================================ models

def _spatial(shape, axes):
    """The sizes of a tensor along its spatial axes (``axes``: their positions), else None."""
    return None if axes is None else tuple(shape[a] for a in axes)


def _locate(in_shape, in_axes, out_shape):
    """Where the spatial axes of an input sit in an output that keeps them: the same sizes at
    the same distance from the last axis (an elementwise broadcast, a Reshape or Unsqueeze that
    splits or adds axes in front, as a channel shuffle does; a product over an NHWC tensor's
    channels); an input may be 1 along an axis it broadcasts. None when the output does not
    keep them."""
    shift = len(out_shape) - len(in_shape)
    if min(in_axes) + shift < 0:
        return None
    # an operator that drops axes (Flatten, a Reshape, Squeeze) keeps the spatial ones only if
    # everything from the first of them on is unchanged
    for k in (in_axes if shift >= 0 else range(min(in_axes), len(in_shape))):
        if in_shape[k] != out_shape[k + shift] and not (shift >= 0 and in_shape[k] == 1):
            return None
    return tuple(a + shift for a in in_axes)


def _merge(candidates, out_sp):
    """The field of an output fed by several fields: [(field per axis, the input's spatial
    shape or None)]. Returns (field, note)."""
    nd = len(candidates[0][0])
    merged, largest = [], False
    for a in range(nd):
        full, spread = [], []
        for f, in_sp in candidates:
            broadcast = in_sp is not None and out_sp is not None and \
                in_sp[a] == 1 != out_sp[a]
            (spread if broadcast else full).append(f[a])
        if not full:
            full, spread = spread[:1], spread[1:]
        if len({f[1] for f in full}) == 1:
            field = _union(full)
        else:
            field, largest = max(full, key=lambda f: f[0]), True
        if spread and max(f[0] for f in spread) > field[0]:
            # a broadcast operand's field is the same for every output: keep the grid of the
            # full-size operands, widen to the largest
            field, largest = (max(f[0] for f in spread), field[1], field[2]), True
        merged.append(field)
    if len(candidates) < 2:
        return tuple(merged), ""
    how = "the largest field taken (unlike grids or a broadcast operand)" if largest \
        else "the union of their fields"
    return tuple(merged), f"{len(candidates)} branches merge: {how}"


def _resize_axis(op, sampling, f, in_n, out_n, tensor_axis):
    """Resize along one spatial axis: the sampling position x = a*o + b, the taps;
    ``sampling``: op.sampling(ins)."""
    scales, _, roi, _ = sampling
    scale = Fraction(scales[tensor_axis])
    if in_n == out_n and scale == 1:
        return f
    coord = op.coord
    if coord == "asymmetric":
        a, b = 1 / scale, Fraction(0)
    elif coord == "align_corners":
        a, b = (Fraction(in_n - 1, out_n - 1) if out_n > 1 else Fraction(0)), Fraction(0)
    elif coord == "tf_half_pixel_for_nn":
        a, b = 1 / scale, 1 / (2 * scale)
    elif coord == "tf_crop_and_resize":
        lo, hi = (Fraction(v) for v in roi[tensor_axis])
        a = (hi - lo) * (in_n - 1) / (out_n - 1) if out_n > 1 else Fraction(0)
        b = lo * (in_n - 1) if out_n > 1 else (lo + hi) * (in_n - 1) / 2
    elif coord == "pytorch_half_pixel" and out_n == 1:
        a, b = Fraction(0), Fraction(0)
    else:   # half_pixel, pytorch_half_pixel, half_pixel_symmetric
        a, b = 1 / scale, 1 / (2 * scale) - Fraction(1, 2)
        if coord == "half_pixel_symmetric":
            adjust = Fraction(out_n) / (scale * in_n)
            b += Fraction(in_n, 2) * (1 - adjust)
    taps = Fraction(_RESIZE_TAPS[op.filter.mode])
    if op.filter.antialias and scale < 1 and taps > 1:
        taps = taps / scale
    size, jump, start = f
    return size + (taps - 1) * jump, jump * a, start + b * jump


def _node_field(node, op, ins, outs, fields, nd):
    """(field per axis, where the output's spatial axes are or None, note, window, whole) of a
    node on the data path; ``fields``: {tensor: (field, axes, whole)}; window is (kernel,
    stride, dilation, padding) for the windowed operators, else None; whole: every output may
    depend on every input pixel."""
    # once every output sees every input pixel, reading the whole of it again adds nothing
    already = any(fields[name][2] for name in node.inputs if name in fields)
    spread = []

    def whole(f, n):
        if n > 1:
            spread.append(n)
        return f if already else _whole(f, n)
    parts = _node_field_parts(node, op, ins, outs, fields, nd, whole)
    return parts + (already or bool(spread),)


def _node_field_parts(node, op, ins, outs, fields, nd, whole):
    kind = node.op
    out_shape = outs[0].shape
    carried = []
    for k, name in enumerate(node.inputs):
        if name in fields and name not in [node.inputs[j] for j in carried]:
            carried.append(k)
    x_field, x_axes, _ = fields.get(node.inputs[0], (None, None, None))
    x_shape = ins[0].shape if x_field is not None else None
    x_sp = _spatial(x_shape, x_axes) if x_field is not None else None
    nchw = tuple(range(2, nd + 2))
    standard = x_field is not None and x_axes == nchw and len(x_shape) == nd + 2

    if kind in _WINDOWED and standard and getattr(op, "nd", nd) == nd:
        kernel, stride = op.kernel, op.strides
        dilation = getattr(op, "dilations", (1,) * nd)
        if kind == "ConvTranspose":
            pads = op.geometry(ins)[0]
        elif kind == "MaxUnpool":
            pads = op.pad_pairs
        else:
            pads = op.pads_for(x_sp)
        step = _transposed if kind in ("ConvTranspose", "MaxUnpool") else _window
        field = tuple(step(f, k, s, d, p[0]) for f, k, s, d, p
                      in zip(x_field, kernel, stride, dilation, pads))
        window = (tuple(kernel), tuple(stride), tuple(dilation), tuple(tuple(p) for p in pads))
        note = ""
        if kind in ("ConvTranspose", "MaxUnpool"):
            note = "transposed: jump divided by the stride"
        if kind == "DeformConv":
            note = "offsets move the taps: the field of the regular grid"
        residual = node.inputs[3] if kind == "Conv" and len(node.inputs) > 3 else ""
        if getattr(op, "residual", False) and residual in fields:
            r_field, r_axes, _ = fields[residual]
            field, merge_note = _merge([(field, _spatial(out_shape, nchw)),
                                        (r_field, _spatial(ins[3].shape, r_axes))],
                                       _spatial(out_shape, nchw))
            note = "fused residual add: " + merge_note
        return field, nchw, note, window

    if kind in ("SpaceToDepth", "DepthToSpace") and standard:
        bs = op.bs
        step = _window if kind == "SpaceToDepth" else _transposed
        field = tuple(step(f, bs, bs, 1, 0) for f in x_field)
        return field, nchw, f"blocks of {bs}", ((bs,) * nd, (bs,) * nd, (1,) * nd,
                                                ((0, 0),) * nd)

    if (kind in _GLOBAL_POOLS or kind in _READS_WHOLE) and x_sp is not None:
        field = tuple(whole(f, n) for f, n in zip(x_field, x_sp))
        axes = x_axes if len(out_shape) == len(x_shape) else None
        return field, axes, "" if kind in _GLOBAL_POOLS else "reads its whole input", None

    if kind == "SqueezeExcite" and standard:
        pooled = tuple(whole(f, n) for f, n in zip(x_field, x_sp))
        field, _ = _merge([(x_field, x_sp), (pooled, (1,) * nd)], x_sp)
        return field, nchw, "a global pool scales every position: the largest field taken", \
            None

    if kind == "Transpose" and x_sp is not None and carried == [0]:
        perm = node.attrs.get("perm") or list(range(len(x_shape)))[::-1]
        return x_field, tuple(list(perm).index(a) for a in x_axes), "", None

    if kind == "Resize" and x_sp is not None and carried == [0] and \
            len(out_shape) == len(x_shape):
        sampling = op.sampling(ins)
        field = tuple(_resize_axis(op, sampling, f, x_shape[ax], out_shape[ax], ax)
                      for f, ax in zip(x_field, x_axes))
        return field, x_axes, f"{op.filter.mode}, {op.coord}: jump scaled by 1/scale", None

    if kind == "Pad" and x_sp is not None and carried == [0]:
        field = []
        crop, widths, _, _ = op.padding(ins)
        for f, ax in zip(x_field, x_axes):
            before = widths[ax][0] - (crop[ax].start or 0)
            field.append((f[0], f[1], f[2] - before * f[1]))
        note = "" if op.mode == "constant" else \
            f"{op.mode} padding: border outputs also read mirrored or repeated pixels"
        return tuple(field), x_axes, note, None

    # along the axes a softmax or layer normalisation covers, each output reads all inputs
    over = set()
    if kind in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization") and x_sp is not None:
        rank = len(x_shape)
        axis = node.attrs.get("axis", -1) % rank
        over = set(range(axis, rank)) if kind == "LayerNormalization" else {axis}
    if kind == "MatMul" and x_sp is not None and len(x_shape) - 1 in x_axes:
        over = {len(x_shape) - 1}        # the product sums over A's last axis

    located, candidates = [], []
    for k in carried:
        f, axes, _ = fields[node.inputs[k]]
        candidates.append((f, axes, ins[k].shape))
        located.append(None if axes is None else _locate(ins[k].shape, axes, out_shape))
    if all(c[1] is None for c in candidates):     # spatial axes already gone: pass it on
        field, note = _merge([(f, None) for f, _, _ in candidates], None)
        return field, None, note, None
    if all(loc is not None for loc in located) and len(set(located)) == 1:
        out_axes = located[0]
        out_sp = _spatial(out_shape, out_axes)
        field, note = _merge([(f, _spatial(shape, axes)) for f, axes, shape in candidates],
                             out_sp)
        if over & set(out_axes):
            field = tuple(whole(f, n) if ax in over else f
                          for f, n, ax in zip(field, out_sp, out_axes))
            note = "normalises over spatial axes: reads them whole"
        return field, out_axes, note, None
    # the spatial shape changes in a way not modelled (or a reduction to one position): every
    # output may read every position of its input
    spread = []
    for f, axes, shape in candidates:
        sp = _spatial(shape, axes)
        spread.append((tuple(whole(fa, n) for fa, n in zip(f, sp)) if sp else f, None))
    field, note = _merge(spread, None)
    axes = candidates[0][1] if len(out_shape) == len(candidates[0][2]) else None
    out_sp = _spatial(out_shape, axes)
    point = all(c[1] is None or all(n == 1 for n in _spatial(c[2], c[1])) for c in candidates) \
        or (out_sp is not None and all(n == 1 for n in out_sp))
    if not point:
        note = (note + "; " if note else "") + \
            f"{kind} changes the spatial shape: taken to read its whole input"
    return field, axes, note, None


def _model_input_shapes(model, input_shape, input_name):
    """(the traced input's spec, {input name: shape}) with input_shape applied and a free batch
    dimension taken as 1; ValueError naming the argument for what does not fit."""
    specs = list(model.inputs)
    names = [s.name for s in specs]
    if input_name is None:
        traced = specs[0]
    elif input_name in names:
        traced = specs[names.index(input_name)]
    else:
        raise ValueError(f"input_name {input_name!r} is not an input of the model: {names}")
    given = {}
    for spec in specs:
        shape = spec.shape
        if spec is traced and input_shape is not None:
            if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__"):
                raise ValueError(f"input_shape must be a sequence of sizes, e.g. "
                                 f"(1, 3, 224, 224), got {input_shape!r}")
            got = shapes.ntuple(tuple(input_shape), len(input_shape), "input_shape", minimum=1)
            if len(got) != len(shape) or any(w is not None and g != w
                                              for g, w in zip(got, shape)):
                raise ValueError(f"input_shape {got} does not fit input {spec.name!r} "
                                 f"declared as {tuple('?' if d is None else d for d in shape)}")
            shape = got
        if shape and shape[0] is None:
            shape = (1,) + tuple(shape[1:])     # fields do not depend on the batch
        if any(d is None for d in shape):
            raise ValueError(f"input_shape: input {spec.name!r} has free dimensions "
                             f"{tuple('?' if d is None else d for d in spec.shape)}; give "
                             + ("input_shape= (--input-shape on the command line)"
                                if spec is traced else
                                "input_shape= for the traced input, and declare the others"))
        given[spec.name] = tuple(int(d) for d in shape)
    return traced, given


def _model_rows(model, input_shape, input_name):
    from ..graph.ops.base import NeedsValue
    from ..graph.plan import infer_nodes
    from ..memory import memory_budget

    traced, given = _model_input_shapes(model, input_shape, input_name)
    nd = len(given[traced.name]) - 2
    if nd < 1:
        raise ValueError(f"input {traced.name!r} of shape {given[traced.name]} has no spatial "
                         f"axes (want N, C and at least one more)")
    unit = tuple((Fraction(1), Fraction(1), Fraction(0)) for _ in range(nd))
    fields = {traced.name: (unit, tuple(range(2, nd + 2)), False)}
    rows = []
    infos, folded = {}, {}
    # inferring sets per-shape attributes on the operators: not while the model plans
    with model._build_lock, memory_budget(model.max_memory):
        try:
            for node, op, ins, outs, out_names in infer_nodes(model.graph, model._ops, given,
                                                              infos, folded):
                if not any(name in fields for name in node.inputs):
                    continue
                field, axes, note, window, sees_all = _node_field(node, op, ins, outs, fields,
                                                                  nd)
                for name in out_names:
                    fields[name] = (field, axes, sees_all)
                kernel, stride, dilation, padding = window or (None,) * 4
                rows.append({"name": node.name, "op": node.op, "tensor": out_names[0],
                             "kernel": kernel, "stride": stride, "dilation": dilation,
                             "padding": padding,
                             "size": tuple(_plain(f[0]) for f in field),
                             "jump": tuple(_plain(f[1]) for f in field),
                             "start": tuple(_plain(f[2]) for f in field),
                             "output_size": _spatial(outs[0].shape, axes),
                             "whole": sees_all, "note": note})
        except NeedsValue as e:
            raise ValueError(f"the model's shapes depend on the values of its inputs, not "
                             f"only their shapes: {e}") from None
    return rows


# ============================================================================ entry point

def receptive_field(model_or_layers, *, input_shape=None, input_name=None) -> list:
    """The receptive field of every layer: a list of dicts, first layer first, with the keys
    name, op, kernel, stride, dilation, padding, size, jump, start, output_size, whole (every
    output may depend on every input pixel) and note; a model's rows also give the tensor the
    layer writes. The arithmetic and the conventions are in this module's docstring.

    model_or_layers: a Model (engine.load's), a model file, or a sequence of layers
    (kernel, stride[, dilation[, padding]]), first layer first, e.g.
    ``receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4), (3, 1, 8)])[-1]["size"] == 31``.
    A layer's entries are ints (one axis; the results are numbers) or tuples with one value
    per axis (the results are tuples); padding (default 0) is the same at both ends.

    For a model the rows follow the graph, from the input ``input_name`` (default: the first),
    through every node its data reaches, with per-axis tuples and, for windowed operators,
    padding as (begin, end) per axis. Sizes come from ``input_shape`` (the whole input shape,
    e.g. (1, 3, 224, 224)) or the model's declared shape (a free batch dimension taken as 1).
    For layer tuples ``input_shape`` is the spatial size (an int, or one per axis) and gives
    each layer's output_size.

    Bad arguments raise ValueError naming them."""
    from ..graph.runner import Model
    if isinstance(model_or_layers, (str, os.PathLike)):
        from ..io import load
        model_or_layers = load(os.fspath(model_or_layers))
    if isinstance(model_or_layers, Model):
        return _model_rows(model_or_layers, input_shape, input_name)
    if input_name is not None:
        raise ValueError("input_name applies to a model, not to a sequence of layers")
    return _layer_rows(model_or_layers, input_shape)


# ============================================================================ output

def _text(value):
    if value is None:
        return "-"
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):    # (begin, end)s
        return _text(tuple(f"{b}" if b == e else f"{b}/{e}" for b, e in value))
    if isinstance(value, tuple):
        if len(set(value)) == 1:
            return _text(value[0])
        return "x".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_rows(rows) -> str:
    """The rows as a text table (kernel, stride, dilation, padding, sizes per axis joined with
    "x" where the axes differ; padding "begin/end" where the two differ)."""
    from ..timing import format_table
    head = ["#", "node", "op", "kernel", "stride", "dilation", "padding", "output", "size",
            "jump", "start", "all", "note"]
    body = [[k, r["name"], r["op"], _text(r["kernel"]), _text(r["stride"]),
             _text(r["dilation"]), _text(r["padding"]),
             "x".join(map(str, r["output_size"])) if isinstance(r["output_size"], tuple)
             else _text(r["output_size"]),
             _text(r["size"]), _text(r["jump"]), _text(r["start"]),
             "yes" if r.get("whole") else "", r["note"]]
            for k, r in enumerate(rows)]
    return format_table(head, body, [">", "<", "<"] + [">"] * 8 + ["<", "<"])


def plot_rows(rows, path, title="") -> None:
    """Field size per layer (one line per axis) into the PNG ``path``; needs matplotlib (the
    extra ``plot``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install convengine[plot]") from None
    sizes = [r["size"] if isinstance(r["size"], tuple) else (r["size"],) for r in rows]
    axes = len(sizes[0])
    labels = "HW" if axes == 2 else ("DHW" if axes == 3 else "L")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 3), 4.5))
    x = list(range(len(rows)))
    same = all(len(set(s)) == 1 for s in sizes)
    for a in range(1 if same else axes):
        ax.plot(x, [float(s[a]) for s in sizes], marker="o",
                label="size" if same else f"size ({labels[a]})")
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], rotation=70, fontsize=7, ha="right")
    ax.set_ylabel("receptive field (input pixels)")
    ax.set_title(title or "receptive field per layer")
    ax.grid(True, alpha=0.3)
    if not same:
        ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise ValueError(f"--plot: cannot write {path}: {e}") from None
    finally:
        plt.close(fig)


def add_command(sub, parse_shape, load_model, cli_error) -> None:
    """Register ``convengine receptive-field`` on the main parser's subcommands, with the
    command line's own shape parser, model loader and error class (passed in: under
    ``python -m engine.cli`` that module is __main__, not engine.cli)."""
    r = sub.add_parser("receptive-field", help="each layer's receptive field: size, jump "
                                               "(product of strides), start, output size")
    r.add_argument("model")
    r.add_argument("--input-shape", type=parse_shape, default=None,
                   help="input shape, e.g. 1,3,224,224 (default: the model's)")
    r.add_argument("--plot", help="draw the field size per layer into this PNG (matplotlib)")

    def run(args):
        try:
            return cmd_receptive_field(args, load_model(args.model))
        except ValueError as e:
            raise cli_error(str(e)) from None
    r.set_defaults(func=run)


def cmd_receptive_field(args, model) -> int:
    """Print the table for ``model`` (loaded from args.model), and plot it with --plot;
    ValueError for bad arguments."""
    rows = receptive_field(model, input_shape=args.input_shape)
    if not rows:
        raise ValueError(f"no layer of {args.model} reads the input")
    spec, given = _model_input_shapes(model, args.input_shape, None)
    shape = given[spec.name]
    last = rows[-1]
    seen = "may depend on every input pixel, their field" if last["whole"] else "see"
    print(f"receptive field of {os.path.basename(args.model)} from input {spec.name!r} "
          f"{'x'.join(map(str, shape))}: the last layer's outputs each {seen} "
          f"{_text(last['size'])} input pixels, {_text(last['jump'])} apart")
    print("size: input pixels one output sees; jump: input pixels between neighbouring "
          "outputs; start: the first output's field center (input pixel 0 is the first); "
          "all: every output may depend on every input pixel")
    print(format_rows(rows))
    if args.plot:
        plot_rows(rows, args.plot, f"receptive field: {os.path.basename(args.model)}")
        print(f"wrote {args.plot}")
    return 0
