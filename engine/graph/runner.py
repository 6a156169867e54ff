"""Model: a loaded graph, planned once per input shape and run from any number of threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .._threads import blas_pinned, fork_safe, resolve_threads
from ..dispatch.batch import choose_batch_chunk
from ..dispatch.layout import canonical_layout, why_not_layout
from ..dispatch.policy import DEFAULT_POLICY, choice_policy
from ..errors import ModelError
from ..memory import format_bytes, memory_budget, release_free_heap, resolve_max_memory
from . import layout, passes
from .batch import graph_flops, images_apart, run_chunks
from .ir import Graph, TensorSpec
from .ops.base import NeedsValue
from .plan import Plan, held_bytes, infer_nodes, largest_tensors, shape_text

# Plans kept for distinct input shapes (least recently used dropped first). Each holds its
# layers' per-shape tables and, per thread that ran it, an arena as large as its memory plan.
MAX_PLANS = 8


# Graph inputs that decide shapes (a Reshape's shape, a Resize's sizes fed at run time) are
# planned per value; larger ones are refused: each value met makes a plan of its own.
MAX_VALUE_INPUT_ELEMENTS = 64


def _shape_text(shape):
    if shape is None:
        return "?"
    return shape_text(shape)


class Model:
    """A CNN ready to run: ``model.run({name: array})`` or ``model(x)``.

    Loading optimises the graph once (constants and BatchNormalization folded, activations and
    residual adds fused) and makes one plan per operator (weights transformed once). Each
    concrete set of input shapes gets a plan of its own: shapes inferred, steps bound, memory
    laid out; with every input dimension declared it is made at load (and for batch 1 when only
    the batch is free), otherwise on the first run with each shape (the last MAX_PLANS are
    kept).

    num_threads: kernel threads for this model's runs; None follows engine.set_num_threads.
    layout: "auto" lets engine/dispatch/layout.py choose which convolutions run in the
    channel-blocked layout (NCHWc: 16 channels a block with AVX-512, 8 with AVX2); "nchw" runs
    every one on NCHW, "nchwc" every one a blocked kernel can run (for comparing the layouts;
    "nchw16c", its earlier name, is taken too).
    max_memory: the bytes a plan may make the model hold (weights, transformed weights, values
    computed while planning, one thread's activation arena, the arrays a run returns; see
    Plan.budget_parts); None for engine.memory.default_max_memory(), half of the RAM. Loading
    and planning check it before allocating: a file whose constants or folded values, or an
    input shape whose plan, would exceed it raises ModelError naming the largest tensors.
    ``memory()`` reports what the model holds.
    A Model may be run from many threads at once: each thread has its own activation buffers,
    and the results equal those of serial runs.

    Profiling: ``run(feeds, profile=True)`` times every step of that run (accumulated over
    profiled runs), ``explain()`` then shows the mean time and GFLOP/s per step;
    ``profile(feeds, repeat)`` does both.
    """

    def __init__(self, graph: Graph, *, num_threads=None, optimize=True, max_memory=None,
                 layout="auto", policy=None):
        self.num_threads = num_threads
        self.max_memory = max_memory
        # measured choices (a wisdom file) and the accuracy level, for every layer planned
        self.policy = DEFAULT_POLICY if policy is None else policy
        reason = why_not_layout(layout)
        if reason is not None:
            raise ValueError(reason)
        self._layout = canonical_layout(layout)
        graph.check()
        static = self._declared_shapes(graph)
        with memory_budget(self.max_memory), choice_policy(self.policy):
            if optimize:
                passes.optimize(graph, static)
            self._check_weights(graph)
            self._ops = {n.name: passes.make_op(n, graph.constants) for n in graph.nodes}
            for name, items in graph.transformed.items():
                transforms = getattr(self._ops.get(name), "transforms", None)
                if transforms is not None:
                    transforms.preload(items)
        self.graph = graph
        self._plans: OrderedDict = OrderedDict()
        # batch shapes -> (images a chunk, why) or None (the batch runs whole)
        self._splits: OrderedDict = OrderedDict()
        self._last_split = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        fork_safe(self)       # a fork while another thread plans must not leave these held
        self._last_plan = None
        self._inputs = list(graph.inputs)
        self._outputs = list(graph.outputs)
        self._value_inputs = set()    # graph inputs planned per value (they decide shapes)
        if static is not None:
            try:
                plan = self._plan(tuple(static[s.name] for s in self._inputs))
            except NeedsValue as e:
                self._learn_value_inputs(e)      # planned at the first run, per value
            else:
                self._outputs = [TensorSpec(s.name, info.shape, info.dtype.name)
                                 for s, info in zip(graph.outputs, plan.output_infos)]
        elif self._batch_free(graph):
            # only the batch is free: plan batch 1 now (the serving case), so that its first
            # run costs what the next do and the weights are transformed at load, as ONNX
            # Runtime prepacks them; a model this plan does not fit plans at its first run
            try:
                self._plan(tuple((1,) + tuple(s.shape[1:]) for s in self._inputs))
            except (NeedsValue, ModelError, ValueError, MemoryError):
                pass

    def _check_weights(self, graph):
        """The constants (as loaded and folded) alone must fit the budget."""
        size = sum(v.nbytes for v in graph.constants.values())
        if size > self.max_memory:
            tensors = [(n, v.shape, v.dtype) for n, v in graph.constants.items()]
            raise ModelError(f"the model's constants take {format_bytes(size)}, more than its "
                             f"memory budget (max_memory) of {format_bytes(self.max_memory)}; "
                             f"the largest: {largest_tensors(tensors)}")

    @staticmethod
    def _batch_free(graph) -> bool:
        """Every input is an image-like tensor (rank 3 or more) with only its batch free."""
        return bool(graph.inputs) and all(
            len(s.shape) >= 3 and s.shape[0] is None and None not in s.shape[1:]
            for s in graph.inputs)

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
    def layout(self) -> str:
        """The layout asked for at load: "auto", "nchw" or "nchwc"."""
        return self._layout

    @property
    def max_memory(self):
        """The budget (bytes) the model's plans are held to; setting it applies to the plans
        made afterwards."""
        return self._max_memory

    @max_memory.setter
    def max_memory(self, value):
        self._max_memory = resolve_max_memory(value)

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

    def _learn_value_inputs(self, e: NeedsValue, arrays=None) -> bool:
        """Mark the graph inputs that the tensor ``e`` names depends on as planned per value;
        False when there are none new (the tensor depends on computed values)."""
        producers = self.graph.producers()
        specs = {s.name: (k, s) for k, s in enumerate(self._inputs)}
        found, stack, seen = set(), [e.tensor], set()
        while stack:
            name = stack.pop()
            info = e.infos.get(name)
            if name in seen or not name or (info is not None and info.value is not None):
                continue            # known while planning: a Shape's output, a constant
            seen.add(name)
            if name in specs:
                found.add(name)
            elif name in producers:
                stack.extend(producers[name].inputs)
        new = found - self._value_inputs
        for name in new:
            k, spec = specs[name]
            size = arrays[k].size if arrays is not None else (
                None if None in spec.shape else int(np.prod(spec.shape)))
            if size is not None and size > MAX_VALUE_INPUT_ELEMENTS:
                raise ModelError(f"{e} (it depends on graph input {name!r}, whose value would "
                                 f"decide the plan; the engine takes that for inputs of at "
                                 f"most {MAX_VALUE_INPUT_ELEMENTS} elements)") from None
        self._value_inputs |= new
        return bool(new)

    def _key(self, arrays) -> tuple:
        """The plan cache's key: input shapes, and the values of inputs planned per value."""
        return tuple((x.shape, x.dtype.str, x.tobytes()) if s.name in self._value_inputs
                     else x.shape for s, x in zip(self._inputs, arrays))

    def _plan_for(self, arrays) -> Plan:
        while True:
            try:
                return self._plan(self._key(arrays), arrays)
            except NeedsValue as e:
                if not self._learn_value_inputs(e, arrays):
                    raise

    def _plan(self, key, arrays=None) -> Plan:
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
                if self._value_inputs:
                    if arrays is None:
                        names = sorted(self._value_inputs)
                        raise ModelError(f"the plan depends on the values of the inputs "
                                         f"{names}, not only on shapes: run the model")
                    for s, x in zip(self._inputs, arrays):
                        if s.name in self._value_inputs:
                            shapes[s.name] = x.copy()
                with memory_budget(self.max_memory), choice_policy(self.policy):
                    graph, ops, layouts, inferred = layout.rewrite(
                        self.graph, self._ops, shapes, self._layout)
                    plan = Plan(graph, ops, shapes, self.max_memory, layouts, inferred)
                self.graph.release_mapped()
                release_free_heap()
                with self._lock:
                    self._plans[key] = plan
                    while len(self._plans) > MAX_PLANS:
                        self._plans.popitem(last=False)
            self._last_plan = plan
            return plan

    # -- batches in chunks ---------------------------------------------------------------------
    def _infer(self, shapes: dict):
        """({tensor: Info}, name -> value known while planning) of the graph for ``shapes``,
        without a plan."""
        infos, folded = {}, {}
        with memory_budget(self.max_memory), choice_policy(self.policy):
            for _ in infer_nodes(self.graph, self._ops, shapes, infos, folded, self.max_memory):
                pass
        constants = self.graph.constants

        def value(name):
            if name in folded:
                return folded[name]
            info = infos.get(name)
            return info.value if info is not None and info.value is not None \
                else constants.get(name)
        return infos, value

    def _flops(self, infos) -> float:
        return graph_flops(self.graph, self._ops, infos)

    def _find_split(self, shapes: tuple):
        """(images a chunk, why) when a batch of these input shapes runs as chunks, else
        None: the graph must keep images apart (engine/graph/batch.py) and the batch be large
        enough (engine/dispatch/batch.py)."""
        names = [s.name for s in self._inputs]

        def at(k):
            return {name: (k,) + tuple(sh[1:]) for name, sh in zip(names, shapes)}
        n = shapes[0][0]
        # an optimisation only: whatever goes wrong here (a graph these shapes do not fit, an
        # operator the proof cannot read), the batch runs whole and reports its own errors
        try:
            one = self._infer(at(1))
            c, why = choose_batch_chunk(n, self._flops(one[0]), sum(
                v.nbytes for v in self.graph.constants.values()))
            if c >= n:
                return None
            whole = self._infer(at(n))
            chunk = one if c == 1 else self._infer(at(c))
            if images_apart(self.graph, (whole[0], chunk[0]), (whole[1], chunk[1]), n, c):
                return None
        except Exception:
            return None
        return c, why

    def _split(self, shapes: tuple):
        """_find_split's answer for these input shapes, found once."""
        if not shapes or self._value_inputs or not all(len(sh) >= 1 for sh in shapes) \
                or shapes[0][0] < 2 or any(sh[0] != shapes[0][0] for sh in shapes):
            return None
        with self._lock:
            if shapes in self._splits:
                return self._splits[shapes]
        with self._build_lock:
            found = self._find_split(shapes)
        with self._lock:
            self._splits[shapes] = found
            while len(self._splits) > 4 * MAX_PLANS:
                self._splits.popitem(last=False)
        return found

    def _run_chunks(self, arrays, per, threads, profile):
        """The batch as chunks of ``per`` images (engine/graph/batch.py run_chunks), or None
        when the chunks' plans do not fit the memory budget even one at a time (the batch then
        runs whole, and its plan says what it needs)."""
        n = arrays[0].shape[0]
        plans = {}
        try:
            for lo in range(0, n, per):
                size = min(per, n - lo)
                if size not in plans:
                    plans[size] = self._plan_for([x[lo:lo + size] for x in arrays])
        except ModelError:
            return None
        self._last_plan = plans[per]
        return run_chunks(plans, per, arrays, threads, profile, self.max_memory)

    def run(self, feeds, *, profile=False, num_threads=None) -> dict:
        """Outputs by name for the inputs ``feeds`` ({name: array}; dtype and declared
        dimensions must match). ``profile=True`` times every step, for explain(). A batch
        of several images may run as chunks of images, each a plan of its own on its own
        thread, when the graph computes each image from that image alone
        (engine/dispatch/batch.py): the same values at any thread count."""
        arrays = self._check_feeds(feeds)
        threads = resolve_threads(num_threads if num_threads is not None else self._num_threads)
        split = self._split(tuple(x.shape for x in arrays))
        if split is not None:
            with blas_pinned():
                out = self._run_chunks(arrays, split[0], threads, profile)
            if out is not None:
                self._last_split = (arrays[0].shape[0],) + split
                return out
        plan = self._plan_for(arrays)
        self._last_split = None
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
    def explain(self, input_shapes=None, *, errors=False, feeds=None) -> str:
        """A table per step: op, shapes, MFLOP, the choices made for the step with their
        reasons (a convolution's algorithm and layout, a blocked kernel's thread split, a
        transposed convolution's pads, a pool's or a Gemm's path), and after
        run(..., profile=True) the mean time and GFLOP/s. For the plan of ``input_shapes``
        (dict, or one shape for a single-input model), else the plan used last.

        errors=True runs the model once (on ``feeds``, else unit-normal inputs of the plan's
        shapes, seed 0) and adds to each 2-D convolution its max error against the float64
        reference computed on the same input, relative to the reference's largest value
        (engine/lab/errors.py)."""
        split = self._last_split
        if feeds is not None:
            arrays = self._check_feeds(feeds)
            split = None
            plan = self._plan_for(arrays)
        elif input_shapes is not None:
            if not isinstance(input_shapes, Mapping):
                input_shapes = {self._inputs[0].name: tuple(input_shapes)}
            shapes = tuple(tuple(input_shapes[s.name]) for s in self._inputs)
            split = self._split(shapes)
            if split is not None:      # the plan of a chunk, as a run would use
                split = (shapes[0][0],) + split
                shapes = tuple((split[1],) + sh[1:] for sh in shapes)
            plan = self._plan(shapes)
        else:
            plan = self._last_plan
        step_errors = {}
        if errors:
            if plan is None:
                raise ValueError("explain(errors=True) needs input shapes: give input_shapes "
                                 "or feeds (the model has free input dimensions)")
            if feeds is None:
                rng = np.random.default_rng(0)
                arrays = [rng.standard_normal(plan.input_shapes[s.name]).astype(s.dtype)
                          for s in self._inputs]
            from ..lab.errors import conv_errors
            with blas_pinned():
                step_errors = conv_errors(plan, arrays, resolve_threads(self._num_threads))
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
        if split is not None:
            lines.append(f"a batch of {split[0]} images runs as {split[2]}: the plan of a "
                         f"chunk follows")
        shapes = ", ".join(f"{k}: {shape_text(v)}" for k, v in plan.input_shapes.items())
        lines.append(f"plan for {shapes}, layout {self._layout}: {len(plan.steps)} steps "
                     f"({len(plan.run_fns)} run, the rest are views made once)"
                     + (f", {len(plan.folded)} tensors computed while planning"
                        if plan.folded else ""))
        lines.append(f"memory: {plan.buffers} intermediate tensors share one arena of "
                     f"{plan.arena_bytes / 2**20:.3f} MiB per running thread (the peak of the "
                     f"static plan; keeping every intermediate would take "
                     f"{plan.naive_bytes / 2**20:.3f} MiB); the plan holds "
                     f"{format_bytes(plan.planned_bytes)} of the "
                     f"{format_bytes(self.max_memory)} budget (max_memory)")
        held = self.memory()
        lines.append(f"weights: {format_bytes(held['weights'])} as loaded"
                     + (" (mapped from the file, resident only while read)"
                        if g.mapped is not None else "")
                     + f", {format_bytes(held['transformed'])} transformed or packed")
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
            if s.node.name in plan.layouts:
                choice, why = plan.layouts[s.node.name]
                detail = (detail + " | " if detail else "") + f"layout {choice}: {why}"
            if not s.runs:
                detail = (detail + "; " if detail else "") + "a view of its input, no step"
            if k in step_errors:
                detail += f" | max relative error vs float64: {step_errors[k]:.2e}"
            lines.append(row + ("  " + detail if detail else ""))
        total = f"total: {total_flops / 1e6:.1f} MFLOP"
        if runs:
            total += (f", {total_time * 1e3:.3f} ms per run (mean of {runs} profiled runs), "
                      f"{total_flops / total_time / 1e9 if total_time else 0:.2f} GFLOP/s")
        lines.append(total)
        return "\n".join(lines)

    # -- memory ---------------------------------------------------------------------------------
    def memory(self) -> dict:
        """Bytes the model holds now:

        - ``weights``: the graph's constants, as loaded (after load-time folding);
        - ``transformed``: the arrays the operators' planned layers keep beyond those (packed
          and transformed weights, per-shape tables), found by walking the layers' attributes,
          for every layer made so far and every cached plan's blocked-layout weights;
        - ``arena_per_thread``: the activation arena of the plan used last (0 before any
          plan): each thread that runs that plan allocates one, on its first run;
        - ``planned``: the last plan's total as checked against the budget (Plan.budget_parts:
          weights, transformed, values computed while planning, arena, the arrays a run
          returns), 0 before any plan;
        - ``max_memory``: the budget;
        - ``arenas``: {input shapes: arena bytes} of every cached plan.
        """
        with self._lock:
            plans = list(self._plans.items())
            last = self._last_plan
        roots = list(self._ops.values()) + [op for _, p in plans for op in p.ops.values()]
        exclude = list(self.graph.constants.values())
        exclude += [v for _, p in plans for v in p.folded.values()]
        return {"weights": sum(v.nbytes for v in self.graph.constants.values()),
                "transformed": held_bytes(roots, exclude),
                "arena_per_thread": last.arena_bytes if last is not None else 0,
                "planned": last.planned_bytes if last is not None else 0,
                "max_memory": self.max_memory,
                "arenas": {key: p.arena_bytes for key, p in plans}}

    # -- files ----------------------------------------------------------------------------------
    def save(self, path, *, transformed=False) -> None:
        """Write the native file (safetensors + graph JSON); see engine.io.native.
        transformed=True adds every convolution's transformed weights (of the plans made so
        far; of one for the declared shape if none was), which a machine with the same CPU
        and engine version then reads instead of transforming at load."""
        from ..io import native
        native.save(self, path, transformed)
