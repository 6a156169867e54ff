"""Model: a loaded graph, planned once per input shape and run from any number of threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .._threads import blas_pinned, resolve_threads
from . import layout, passes
from .ir import Graph, TensorSpec
from .plan import Plan

# Plans kept for distinct input shapes (least recently used dropped first). Each holds its
# layers' per-shape tables and, per thread that ran it, an arena as large as its memory plan.
MAX_PLANS = 8


def _shape_text(shape):
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


class Model:
    """A CNN ready to run: ``model.run({name: array})`` or ``model(x)``.

    Loading optimises the graph once (constants and BatchNormalization folded, activations and
    residual adds fused) and makes one plan per operator (weights transformed once). Each
    concrete set of input shapes gets a plan of its own: shapes inferred, steps bound, memory
    laid out; with every input dimension declared it is made at load, otherwise on the first
    run with each shape (the last MAX_PLANS are kept).

    num_threads: kernel threads for this model's runs; None follows engine.set_num_threads.
    A Model may be run from many threads at once: each thread has its own activation buffers,
    and the results equal those of serial runs.

    Profiling: ``run(feeds, profile=True)`` times every step of that run (accumulated over
    profiled runs), ``explain()`` then shows the mean time and GFLOP/s per step;
    ``profile(feeds, repeat)`` does both.
    """

    def __init__(self, graph: Graph, *, num_threads=None, optimize=True):
        self.num_threads = num_threads
        graph.check()
        static = self._declared_shapes(graph)
        if optimize:
            passes.optimize(graph, static)
        self.graph = graph
        self._ops = {n.name: passes.make_op(n, graph.constants) for n in graph.nodes}
        self._plans: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._last_plan = None
        self._inputs = list(graph.inputs)
        self._outputs = list(graph.outputs)
        if static is not None:
            plan = self._plan(tuple(static[s.name] for s in self._inputs))
            self._outputs = [TensorSpec(s.name, info.shape, info.dtype.name)
                             for s, info in zip(graph.outputs, plan.output_infos)]

    @staticmethod
    def _declared_shapes(graph):
        if all(d is not None for s in graph.inputs for d in s.shape):
            return {s.name: tuple(int(d) for d in s.shape) for s in graph.inputs}
        return None

    # -- description --------------------------------------------------------------------------
    @property
    def num_threads(self):
        return self._num_threads

    @num_threads.setter
    def num_threads(self, n):
        if n is not None:
            resolve_threads(n)   # validates
            n = int(n)
        self._num_threads = n

    @property
    def inputs(self) -> list:
        """[TensorSpec(name, shape, dtype)], None for a free dimension."""
        return list(self._inputs)

    @property
    def outputs(self) -> list:
        """[TensorSpec(name, shape, dtype)]; shapes as inferred for declared input shapes, else
        as the file declares them (None where unknown)."""
        return list(self._outputs)

    def __repr__(self):
        ins = ", ".join(f"{s.name}: {_shape_text(s.shape)} {s.dtype}" for s in self._inputs)
        outs = ", ".join(s.name for s in self._outputs)
        return f"Model({len(self.graph.nodes)} nodes; inputs {ins}; outputs {outs})"

    # -- running ------------------------------------------------------------------------------
    def _check_feeds(self, feeds):
        if not isinstance(feeds, Mapping):
            raise ValueError(f"feeds must be a dict {{input name: array}}, got "
                             f"{type(feeds).__name__}")
        names = [s.name for s in self._inputs]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise ValueError(f"missing input {missing[0]!r}: the model's inputs are {names}")
        extra = [n for n in feeds if n not in names]
        if extra:
            raise ValueError(f"unknown input {extra[0]!r}: the model's inputs are {names}")
        arrays = []
        for spec in self._inputs:
            x = feeds[spec.name]
            if not isinstance(x, np.ndarray):
                try:
                    x = np.asarray(x)
                except Exception as e:
                    raise ValueError(f"input {spec.name!r} must be an array: {e}") from None
            if x.dtype != np.dtype(spec.dtype):
                raise ValueError(f"input {spec.name!r} must have dtype {spec.dtype}, got "
                                 f"{x.dtype}")
            if x.ndim != len(spec.shape) or any(w is not None and d != w
                                                for d, w in zip(x.shape, spec.shape)):
                raise ValueError(f"input {spec.name!r} must have shape "
                                 f"{_shape_text(spec.shape)} (? is free), got "
                                 f"{_shape_text(x.shape)}")
            arrays.append(np.require(x, requirements="C"))
        return arrays

    def _plan(self, key) -> Plan:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                self._last_plan = plan
                return plan
        with self._build_lock:
            with self._lock:
                plan = self._plans.get(key)
            if plan is None:
                shapes = {s.name: shape for s, shape in zip(self._inputs, key)}
                graph, ops = layout.rewrite(self.graph, self._ops, shapes)
                plan = Plan(graph, ops, shapes)
                with self._lock:
                    self._plans[key] = plan
                    while len(self._plans) > MAX_PLANS:
                        self._plans.popitem(last=False)
            self._last_plan = plan
            return plan

    def run(self, feeds, *, profile=False, num_threads=None) -> dict:
        """Outputs by name for the inputs ``feeds`` ({name: array}; dtype and declared
        dimensions must match). ``profile=True`` times every step, for explain()."""
        arrays = self._check_feeds(feeds)
        plan = self._plan(tuple(x.shape for x in arrays))
        threads = resolve_threads(num_threads if num_threads is not None else self._num_threads)
        with blas_pinned():
            return plan.run(arrays, threads, profile)

    def __call__(self, *args, **kwargs):
        """``model(x)`` for a single-input model: the output array, or a tuple of them in the
        order of model.outputs. ``model(feeds_dict)`` is ``model.run(feeds_dict)``."""
        if len(args) != 1:
            raise ValueError("call a model with one array (or a dict of inputs)")
        if isinstance(args[0], Mapping):
            return self.run(args[0], **kwargs)
        if len(self._inputs) != 1:
            raise ValueError(f"model(x) needs a single-input model; this one has inputs "
                             f"{[s.name for s in self._inputs]}: use model.run({{...}})")
        out = self.run({self._inputs[0].name: args[0]}, **kwargs)
        values = tuple(out[s.name] for s in self._outputs)
        return values[0] if len(values) == 1 else values

    def profile(self, feeds, repeat=3) -> str:
        """Run ``repeat`` profiled times and return explain() with per-step times."""
        for _ in range(max(1, int(repeat))):
            self.run(feeds, profile=True)
        return self.explain()

    # -- explanation ---------------------------------------------------------------------------
    def explain(self, input_shapes=None) -> str:
        """A table per step: op, shapes, algorithm and reason (convolutions), MFLOP, and after
        run(..., profile=True) the mean time and GFLOP/s. For the plan of ``input_shapes``
        (dict, or one shape for a single-input model), else the plan used last."""
        if input_shapes is not None:
            if not isinstance(input_shapes, Mapping):
                input_shapes = {self._inputs[0].name: tuple(input_shapes)}
            plan = self._plan(tuple(tuple(input_shapes[s.name]) for s in self._inputs))
        else:
            plan = self._last_plan
        g = self.graph
        lines = [repr(self)]
        if g.notes:
            lines.append("load-time passes: " + "; ".join(g.notes))
        if plan is None:
            lines.append("no plan yet (free input dimensions): run the model or call "
                         "explain(input_shapes) to see shapes, algorithms and memory")
            for n in g.nodes:
                lines.append(f"  {n.name:<28} {n.op}")
            return "\n".join(lines)
        shapes = ", ".join(f"{k}: {_shape_text(v)}" for k, v in plan.input_shapes.items())
        lines.append(f"plan for {shapes}: {len(plan.steps)} steps "
                     f"({len(plan.run_fns)} run, the rest are views made once)"
                     + (f", {len(plan.folded)} tensors computed while planning"
                        if plan.folded else ""))
        lines.append(f"memory: {plan.buffers} intermediate tensors share one arena of "
                     f"{plan.arena_bytes / 2**20:.3f} MiB per running thread (the peak of the "
                     f"static plan; keeping every intermediate would take "
                     f"{plan.naive_bytes / 2**20:.3f} MiB)")
        runs = plan.profiled_runs
        head = (f"{'#':>3} {'node':<24} {'op':<18} {'input -> output':<34} {'MFLOP':>9}"
                + (f" {'ms':>8} {'GFLOP/s':>8}" if runs else "") + "  algorithm / notes")
        lines += [head, "-" * len(head)]
        total_flops = total_time = 0.0
        for k, s in enumerate(plan.steps):
            data_in = next((x for x in s.ins if x is not None and x.value is None), None)
            io = (f"{_shape_text(data_in.shape) if data_in else '-'} -> "
                  f"{_shape_text(s.outs[0].shape)}")
            name = s.node.name if len(s.node.name) <= 24 else "…" + s.node.name[-23:]
            row = f"{k:>3} {name:<24} {s.node.op[:18]:<18} {io[:34]:<34} " \
                  f"{s.flops / 1e6:9.3f}"
            if runs:
                t = plan.stats[k] / runs
                total_time += t
                rate = s.flops / t / 1e9 if t > 0 else 0.0
                row += f" {t * 1e3:8.3f} {rate:8.2f}" if s.runs else f" {'view':>8} {'':>8}"
            total_flops += s.flops
            detail = s.detail
            if not s.runs:
                detail = (detail + "; " if detail else "") + "a view of its input, no step"
            lines.append(row + ("  " + detail if detail else ""))
        total = f"total: {total_flops / 1e6:.1f} MFLOP"
        if runs:
            total += (f", {total_time * 1e3:.3f} ms per run (mean of {runs} profiled runs), "
                      f"{total_flops / total_time / 1e9 if total_time else 0:.2f} GFLOP/s")
        lines.append(total)
        return "\n".join(lines)

    # -- files ----------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the native file (safetensors + graph JSON); see engine.io.native."""
        from ..io import native
        native.save(self, path)
