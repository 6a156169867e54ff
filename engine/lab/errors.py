"""Per-layer error of a model's convolutions against float64, on the model's own activations:
what ``model.explain(errors=True)`` shows.

The plan runs once; before each convolution step its input (and residual) is kept, after it
its output, and the same layer is computed again in float64 by the reference loops (weights,
bias, residual and activation included). The error of a step is max |output - reference| over
max |reference|: the rounding of the algorithm and kernel that step really ran, on the data
the network really feeds it.
"""
from __future__ import annotations

import numpy as np

from ..ops import blocked
from ..ops.conv2d import Conv2d
from ..ops.activation import float64_activation


def _conv_of(step):
    """The graph Conv ops a convolution step runs, in order (NCHW or blocked; two for a
    pointwise layer fused into the depthwise one after it), and its layout, else None."""
    from ..graph.blocked_conv import BlockedConv, BlockedExpandDepthwise
    from ..graph.ops.conv import Conv
    op = step.op
    if isinstance(op, BlockedConv):
        return [op.conv], op.conv_kind
    if isinstance(op, BlockedExpandDepthwise):
        return [op.pw.conv, op.dw.conv], "pointwise"
    if isinstance(op, Conv) and op.nd == 2 and not op.runtime_weights:
        return [op], None
    return None


def _nchw(value, blocked_kind, channels, is_input):
    if blocked_kind is None or (is_input and blocked_kind == "direct"):
        return np.array(value, np.float64)
    return blocked.from_blocked(value, channels).astype(np.float64)


def conv_errors(plan, feeds: list, num_threads: int = 1) -> dict:
    """{step index: max relative error} for every 2-D convolution step of ``plan`` run on
    ``feeds`` (the plan's input arrays, in order)."""
    index = {id(s): k for k, s in enumerate(plan.steps)}
    kept, errors = {}, {}

    def before(step, env):
        found = _conv_of(step)
        if found is None:
            return
        convs, kind = found
        first, last = convs[0], convs[-1]
        x = _nchw(env[step.i[0]], kind, first.w_shape[1] * first.group, True)
        r = None
        if last.residual and len(step.i) > 3 and step.i[3] >= 0:
            r = _nchw(env[step.i[3]], kind, last.w_shape[0], False)
        kept[id(step)] = (convs, kind, x, r)

    def after(step, env):
        if id(step) not in kept:
            return
        convs, kind, ref, r = kept.pop(id(step))
        y = _nchw(env[step.o[0]], kind, convs[-1].w_shape[0], False)
        for k, conv in enumerate(convs):
            (pt, pb), (pl, pr) = conv.pads_for(ref.shape[2:])
            ref = Conv2d(conv.w.astype(np.float64),
                         None if conv.b is None else conv.b.astype(np.float64), conv.strides,
                         (pt, pl, pb, pr), conv.dilations, conv.group, algorithm="direct")(ref)
            if r is not None and k == len(convs) - 1:
                ref = ref + r
            ref = float64_activation(conv.activation, ref)
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        err = float(np.abs(y - ref).max()) if ref.size else 0.0
        errors[index[id(step)]] = err / scale if scale > 0 else err

    plan.run_observed(feeds, num_threads, before, after)
    return errors
