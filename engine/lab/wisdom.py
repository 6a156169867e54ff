"""Tuning and wisdom: the fastest algorithm of every convolution layer of a model, measured on
this machine at the model's shapes and thread count, kept in a JSON file (in the spirit of
FFTW's wisdom) that engine.load applies.

The file: {"format": "convengine-wisdom", "version": 1, "key": {cpu, isa, engine, threads},
"layers": {signature: {"algorithm", "ms", "rule", "rule_ms"}}}, a layer's signature being
engine/dispatch/policy.py conv_signature. A file whose key differs from this machine's (another
CPU or instruction set, another engine version or thread count) or that does not parse is
ignored with a warning: a measured choice is only worth what the machine it was measured on.
The default file is the per-user cache's wisdom.json (platformdirs).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

from .. import _machine, dispatch
from .._threads import get_num_threads, resolve_threads
from ..dispatch.policy import (ChoicePolicy, check_accuracy, check_winograd_weights,
                               conv_signature)
from ..ops.conv2d import Conv2d
from ..timing import Progress, time_alternating

FORMAT, VERSION = "convengine-wisdom", 1
# A measured algorithm replaces the rule's only when faster by this fraction: run-to-run noise
# on a shared machine is a few percent, and a tie should keep the rule's choice.
MIN_GAIN = 0.03
class WisdomWarning(UserWarning):
    """A wisdom file was not used (unreadable, or made for another machine or setting)."""


def machine_key(threads: int) -> dict:
    """What a measurement depends on: the CPU model, its instruction sets, the engine's
    version and the thread count."""
    return dict(_machine.machine_key(), threads=int(threads))


def default_path() -> str:
    """The per-user wisdom file engine.load reads when no other is given."""
    from platformdirs import user_cache_dir
    return os.path.join(user_cache_dir("convengine"), "wisdom.json")


def read(path, threads: int) -> dict:
    """The layers of the wisdom file at ``path`` if it is well formed and its key matches this
    machine at ``threads`` threads; else {} and a WisdomWarning saying why."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        warnings.warn(f"wisdom file {path!r} not used: {e}", WisdomWarning, stacklevel=3)
        return {}
    reason = _why_not_valid(data, machine_key(threads))
    if reason:
        warnings.warn(f"wisdom file {path!r} not used: {reason}", WisdomWarning, stacklevel=3)
        return {}
    return data["layers"]


def _why_not_valid(data, key) -> str | None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "not a convengine wisdom file"
    if data.get("version") != VERSION:
        return f"version {data.get('version')!r}, this engine reads {VERSION}"
    theirs = data.get("key")
    if not isinstance(theirs, dict):
        return "no key"
    for field in ("cpu", "isa", "engine", "threads"):
        if theirs.get(field) != key[field]:
            return (f"made for {field} {theirs.get(field)!r}, this is {key[field]!r} "
                    f"(tune again here)")
    layers = data.get("layers")
    if not isinstance(layers, dict):
        return "no layers"
    for sig, entry in layers.items():
        if not (isinstance(entry, dict) and entry.get("algorithm") in dispatch.ALGORITHMS
                and all(isinstance(entry.get(k), (int, float)) for k in ("ms", "rule_ms"))
                and entry.get("rule") in dispatch.ALGORITHMS):
            return f"malformed entry for {sig!r}"
    return None


def write(path, threads: int, layers: dict) -> str:
    """Write ``layers`` to ``path`` (merged with the entries already there for the same key),
    atomically; returns the path."""
    key = machine_key(threads)
    merged = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if _why_not_valid(old, key) is None:
                merged.update(old["layers"])
        except (OSError, ValueError):
            pass
    merged.update(layers)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "version": VERSION, "key": key, "layers": merged}, f,
                  indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def policy(wisdom, accuracy: str, num_threads, winograd_weights="auto") -> ChoicePolicy:
    """The ChoicePolicy for engine.load's ``wisdom`` (None: the default file if it exists;
    False: none; else a path), ``accuracy`` and ``winograd_weights``."""
    check_accuracy(accuracy)
    check_winograd_weights(winograd_weights)
    threads = resolve_threads(num_threads) if num_threads is not None else get_num_threads()
    layers = {}
    if wisdom is None:
        path = default_path()
        if os.path.exists(path):
            layers = read(path, threads)
    elif wisdom is not False:
        if not isinstance(wisdom, (str, os.PathLike)):
            raise ValueError(f"wisdom must be a path, None or False, got "
                             f"{type(wisdom).__name__}")
        layers = read(os.fspath(wisdom), threads)
    return ChoicePolicy(accuracy=accuracy, wisdom=layers, winograd_weights=winograd_weights)


# ============================================================================ tuning

def conv_layers(model, input_shapes):
    """(node name, signature, planned Conv2d, input shape) of every 2-D convolution with
    constant weights that runs on NCHW in the model's plan for ``input_shapes`` (layers in
    the channel-blocked layout run the blocked kernels, which have no alternative)."""
    from ..graph.ops.conv import Conv
    plan = model._plan(tuple(tuple(input_shapes[s.name]) for s in model.inputs))
    found = []
    for s in plan.steps:
        op = s.op
        if not isinstance(op, Conv) or op.nd != 2 or op.runtime_weights:
            continue
        x_shape = tuple(s.ins[0].shape)
        pads = op.geometry(s.ins)[0]
        layer = op.layer(x_shape[2:], pads, op._residual_in_kernel(s.ins, s.outs))
        sig = conv_signature(op.w_shape, op.strides, pads, op.dilations, op.group,
                             x_shape[2:])
        found.append((s.node.name, sig, layer, x_shape))
    return found


def measure_layer(layer: Conv2d, x_shape, threads: int, repeat: int, exclude=frozenset()):
    """{algorithm: median ms} of every algorithm (but the reference loops) that can run the
    planned layer, on a unit-normal input, alternating run by run."""
    x = np.random.default_rng(0).standard_normal(x_shape, dtype=np.float32)
    runners = {}
    for a in dispatch.ALGORITHMS:
        if a == "direct" or a in exclude or dispatch.why_not(a, layer.params) is not None:
            continue
        try:
            cand = Conv2d(layer.weight, layer.bias, layer.stride, layer.padding,
                          layer.dilation, layer.groups, layer.activation, a,
                          input_size=x_shape[2:])
        except ValueError:
            continue
        out = np.empty(cand.output_shape(x_shape), np.float32)
        g = cand.geometry(x_shape)
        runners[a] = lambda c=cand, o=out, gg=g: c.run(x, o, gg, threads)
    times = time_alternating(runners, repeat, warmup=1, cpu_runs=0, settle=0)
    return {a: float(np.median(t["times"])) for a, t in times.items()}


def tune(model, input_shape=None, path=None, *, repeat=5, accuracy="fast",
         progress=True, verify=True) -> dict:
    """Measure every candidate algorithm of every convolution layer of ``model`` (a Model or
    a model file) at its input shape (declared, a free batch taken as 1, or ``input_shape``
    for a single-input model)
    and the model's thread count, and write the fastest per layer to the wisdom file ``path``
    (default: the per-user file engine.load reads). Returns {"path", "key", "layers"}; a layer
    keeps the rule's algorithm unless another is faster by MIN_GAIN. verify: the whole model
    is then timed with the measured choices and with the rules, alternating, and the choices
    are kept only if it runs faster with them (tuning never makes a model slower)."""
    from ..graph import Model
    if not isinstance(model, Model):
        from ..io import load
        model = load(model, wisdom=False, accuracy=accuracy)
    shapes = _input_shapes(model, input_shape)
    threads = resolve_threads(model.num_threads) if model.num_threads else get_num_threads()
    exclude = model.policy.excluded
    layers = {}
    found = conv_layers(model, shapes)
    bar = Progress(len(found), "tuning", enabled=progress and len(found) > 1)
    try:
        for _, sig, layer, x_shape in found:
            if sig in layers:
                bar.step()
                continue
            ms = measure_layer(layer, x_shape, threads, repeat, exclude)
            rule, _ = dispatch.choose_conv2d(layer.params, exclude)
            rule = rule if rule in ms else min(ms, key=ms.get)
            best = min(ms, key=ms.get)
            if ms[best] > (1 - MIN_GAIN) * ms[rule]:
                best = rule
            layers[sig] = {"algorithm": best, "ms": ms[best], "rule": rule,
                           "rule_ms": ms[rule]}
            bar.step()
    finally:
        bar.close()
    if verify and any(v["algorithm"] != v["rule"] for v in layers.values()):
        layers = _verified(model, shapes, layers, threads, max(7, 2 * repeat))
    path = write(path or default_path(), threads, layers)
    return {"path": path, "key": machine_key(threads), "layers": layers}


def _verified(model, shapes, layers, threads, repeat) -> dict:
    """The layers' choices if the whole model runs faster with them than with the rules
    (alternating runs, medians); else every layer back to the rule's choice. Layers measured
    alone can mislead: in the model their inputs come from other layers' cache lines and the
    blocked layout's neighbours."""
    from ..graph import Model
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(shapes[s.name]).astype(np.float32)
             for s in model.inputs}
    accuracy = model.policy.accuracy
    # the model's graph is already optimised: two models on it, one per set of choices
    tuned, ruled = (Model(model.graph, num_threads=threads, optimize=False,
                          layout=model.layout, policy=ChoicePolicy(accuracy, choices))
                    for choices in (layers, {}))
    times = time_alternating({"rules": lambda: ruled.run(feeds),
                              "tuned": lambda: tuned.run(feeds)},
                             repeat, warmup=2, cpu_runs=0, settle=0)
    rules_ms, tuned_ms = (float(np.median(times[k]["times"])) for k in ("rules", "tuned"))
    if tuned_ms < rules_ms:
        return layers
    return {sig: dict(v, algorithm=v["rule"], ms=v["rule_ms"]) for sig, v in layers.items()}


def _input_shapes(model, input_shape) -> dict:
    if input_shape is not None:
        if len(model.inputs) != 1:
            raise ValueError("input_shape is for a single-input model; this one has inputs "
                             f"{[s.name for s in model.inputs]}")
        shape = tuple(input_shape)
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise ValueError(f"input_shape must be positive integers, got {input_shape!r}")
        return {model.inputs[0].name: shape}
    # a free batch dimension is tuned at batch 1 (a service's usual case); any other free
    # dimension decides the layers' sizes, which only the caller knows
    if any(d is None for s in model.inputs for d in s.shape[1:]):
        raise ValueError("the model has free input dimensions besides the batch: give "
                         "input_shape")
    return {s.name: (1 if s.shape[0] is None else s.shape[0],) + tuple(s.shape[1:])
            for s in model.inputs}
