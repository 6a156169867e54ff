"""A plan: the graph laid out for one set of concrete input shapes.

Made once per input shape (the runner caches a few), it holds
- the steps: one prebound callable per remaining node, ``step(env, num_threads)``, reading and
  writing the slots of ``env``, a flat list of arrays (one slot per tensor);
- the values computable without the inputs' values (Shape and what follows from it, in
  addition to the constants folded at load), computed here once;
- a static memory plan: every intermediate tensor gets an offset in one arena, tensors whose
  lifetimes (producing step to last reading step) do not overlap share bytes (greedy first
  fit, largest first), elementwise steps write over an input that dies with them, views
  (Reshape, Flatten, Squeeze, Unsqueeze) share their input's bytes, and the inputs of a step
  that holds them side by side (a blocked Concat of one image, ``Op.placements``) are written
  where its output keeps them, a buffer living from the first of them to the last reader;
- the memory budget: what the plan makes the model hold (see ``Plan.budget_parts``) is checked
  against ``max_memory`` after the shapes are inferred and the memory laid out, before any
  layer is made, its weights transformed, or an arena allocated (ModelError naming the largest
  tensors); checked again once the layers exist, with their transformed weights measured. Each
  value computed while planning is checked before it is computed.

The budget reaches the planning code that the model's passes run (constant folding, the layout
rewrite) through engine.memory's ``memory_budget(max_memory)``, a context the Model enters while
it loads and plans; code that plans outside one uses engine.memory.default_max_memory().

Each thread that runs the plan gets its own arena and slot list, made on its first run
(threading.local), so concurrent runs never share activation buffers. Outputs are returned in
arrays allocated per call.
"""
from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple

import numpy as np

from .._threads import fork_safe
from ..errors import ModelError
from ..memory import current_max_memory, format_bytes, nbytes
from ..ops.workspace import populated_zeros
from .ir import Node
from .ops import Info, blame, check_tensor_size
from .ops.base import NeedsValue


def shape_text(given) -> str:
    """An input's shape as a plan knows it, with its value for an input planned per value."""
    if isinstance(given, np.ndarray):
        values = given.ravel()[:8].tolist()
        more = ", ..." if given.size > 8 else ""
        return f"{shape_text(given.shape)} = [{', '.join(map(str, values))}{more}]"
    return "x".join("?" if d is None else str(d) for d in given) or "scalar"

ALIGN = 64


class Step:
    __slots__ = ("node", "names", "op", "ins", "outs", "i", "o", "fn", "flops", "detail",
                 "runs")

    def __init__(self, node, names, op, ins, outs, i, o):
        self.node, self.names, self.op, self.ins, self.outs = node, names, op, ins, outs
        self.i, self.o = i, o             # slots of the inputs and outputs
        self.fn, self.flops, self.detail = None, 0.0, ""   # bound once the budget allows
        self.runs = True

    def bind(self):
        with blame(self.op):
            self.fn = self.op.build(self.ins, self.outs, self.i, self.o)
        self.flops = self.op.flops(self.ins, self.outs)
        self.detail = self.op.describe(self.ins, self.outs)


def _tensor_text(name, shape, dtype) -> str:
    dims = "x".join(str(d) for d in shape) or "scalar"
    return f"{name!r} {dims} {np.dtype(dtype).name} ({format_bytes(nbytes(shape, dtype))})"


def largest_tensors(tensors, count=3) -> str:
    """``tensors``: (name, shape, dtype) triples; the ``count`` largest, as text."""
    top = sorted(tensors, key=lambda t: -nbytes(t[1], t[2]))[:count]
    return ", ".join(_tensor_text(*t) for t in top)


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


# What the walk of held_bytes never enters: graph structure and planning records, whose arrays
# are the graph's constants or values the plan accounts for itself.
_NOT_HELD = (Node, Info)


def held_bytes(roots, exclude=()) -> int:
    """Bytes of the NumPy arrays reachable from ``roots`` (operators, planned layers) through
    the attributes of the engine's own objects, dicts, lists and tuples: the packed and
    transformed weights and the per-shape tables the planned layers keep. Each buffer counts
    once (views count their base array), and buffers shared with ``exclude`` (the graph's
    constants) not at all. Scratch buffers (engine/ops/workspace.py) are not held by a layer
    and not counted."""
    skip = {id(_owner(a)) for a in exclude if isinstance(a, np.ndarray)}
    seen, owners = set(), {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = _owner(obj)
            if id(base) not in skip:
                owners[id(base)] = base.nbytes
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif not isinstance(obj, _NOT_HELD) and type(obj).__module__.startswith("engine."):
            stack.extend(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))
    return sum(owners.values())


def _budget_error(what, size, budget) -> str:
    return (f"{what} would take {format_bytes(size)}, more than the model's memory budget "
            f"(max_memory) of {format_bytes(budget)}")


def evaluate(op, ins, max_memory=None, outs=None):
    """Run one node on constant inputs (load-time and plan-time folding); ``outs``: the
    Infos op.infer(ins) just gave, if the caller has them. Each output is checked against the
    single-tensor cap and ``max_memory`` (default: current_max_memory()) before it is
    allocated."""
    budget = current_max_memory() if max_memory is None else max_memory
    if outs is None:
        with blame(op):
            outs = op.infer(ins)
    for k, o in enumerate(outs):
        size = nbytes(o.shape, o.dtype)
        if size > budget:
            raise op.error(_budget_error(f"output {k}, computed while planning, of shape "
                                         f"{o.shape} ({o.dtype})", size, budget))
    if all(o.value is not None for o in outs):
        return [o.value for o in outs]
    for k, o in enumerate(outs):
        check_tensor_size(op, o.shape, o.dtype, f"output {k}")
    n = len(ins)
    env = [None if x is None else x.value for x in ins]
    for o in outs:
        env.append(np.empty(o.shape, o.dtype) if op.storage == "write" else None)
    with blame(op):     # a kernel's check of constant inputs fails: the file's fault
        fn = op.build(ins, outs, list(range(n)), list(range(n, n + len(outs))))
        fn(env, 1)
    return [np.array(v, copy=True) for v in env[n:]]


class Inferred(NamedTuple):
    """What one inference pass over a graph found (the layout pass's, engine/graph/layout.py):
    every tensor's Info, the values folded, and the op of every node."""
    infos: dict
    folded: dict
    ops: dict


def infer_nodes(graph, ops, input_shapes: dict, infos: dict, folded: dict, max_memory=None,
                prior: Inferred | None = None):
    """Walk the nodes in order, inferring every tensor's Info into ``infos`` (which starts from
    the constants and the inputs). Nodes computable while planning (constant inputs, or outputs
    the op can tell from shapes alone) are evaluated into ``folded``; the others are yielded as
    (node, op, ins, outs, names), their outputs' Infos recorded once the caller is done.

    prior: an earlier pass over a graph this one was rewritten from, for the same input
    shapes. A node with the same op reading the very tensors that pass saw takes that pass's
    outputs (and folded values) instead of being inferred (and evaluated) again; its op still
    holds what that inference computed, as no other inference ran in between.

    The graph's constants and the values folded here must fit ``max_memory`` (default:
    current_max_memory()): a node whose outputs would take them over it is refused before it
    is evaluated."""
    budget = current_max_memory() if max_memory is None else max_memory
    held = sum(v.nbytes for v in graph.constants.values())
    seen = prior.infos if prior is not None else {}
    for name, v in graph.constants.items():
        infos.setdefault(name, seen[name] if name in seen else Info.of(v))
    for spec in graph.inputs:
        given = input_shapes[spec.name]
        infos[spec.name] = seen.get(spec.name) if spec.name in seen else (
            Info.of(given) if isinstance(given, np.ndarray) else Info(given, spec.dtype))
    for node in graph.nodes:
        op = ops[node.name]
        ins = [infos[n] if n else None for n in node.inputs]
        names = [o or f"{node.name}:unused{k}" for k, o in enumerate(node.outputs)]
        if (prior is not None and prior.ops.get(node.name) is op
                and all(n in seen for n in names)
                and all(x is None or seen.get(n) is x for n, x in zip(node.inputs, ins))):
            outs = [seen[n] for n in names]
            if all(n in prior.folded for n in names):
                for n, info in zip(names, outs):
                    infos[n], folded[n] = info, prior.folded[n]
                    held += prior.folded[n].nbytes
                continue
            yield node, op, ins, outs, names
            for name, info in zip(names, outs):
                infos[name] = info
            continue
        try:
            with blame(op):
                outs = op.infer(ins)
        except NeedsValue as e:
            e.tensor, e.infos = node.inputs[e.index], infos
            raise
        if len(outs) != len(node.outputs):
            raise ModelError(f"node {node.name!r} ({node.op}): produces {len(outs)} "
                             f"outputs, the node names {len(node.outputs)}")
        for k, info in enumerate(outs):
            check_tensor_size(op, info.shape, info.dtype, f"output {k}")
        if all(x is None or x.value is not None for x in ins) or \
                all(o.value is not None for o in outs):
            size = sum(nbytes(o.shape, o.dtype) for o in outs)
            if held + size > budget:
                tensors = [(n, folded[n].shape, folded[n].dtype) for n in folded]
                tensors += [(n, v.shape, v.dtype) for n, v in graph.constants.items()]
                tensors += [(n, o.shape, o.dtype) for n, o in zip(names, outs)]
                raise op.error(
                    f"computing {', '.join(repr(n) for n in names)} while planning "
                    f"({format_bytes(size)}) would bring the constants and the values computed "
                    f"while planning to {format_bytes(held + size)}, more than the model's "
                    f"memory budget (max_memory) of {format_bytes(budget)}; the largest: "
                    f"{largest_tensors(tensors)}")
            for name, value in zip(names, evaluate(op, ins, budget, outs)):
                infos[name] = Info.of(value)
                folded[name] = value
                held += value.nbytes
            continue
        yield node, op, ins, outs, names
        for name, info in zip(names, outs):
            infos[name] = info


class Plan:
    def __init__(self, graph, ops, input_shapes: dict, max_memory=None, layouts=None,
                 prior: Inferred | None = None):
        """layouts: {node name: (layout, reason)}, the layout pass's choices, for explain();
        prior: that pass's inference (infer_nodes), reused for the nodes it left alone."""
        self.input_shapes = dict(input_shapes)
        self.layouts = dict(layouts or {})
        self.max_memory = current_max_memory() if max_memory is None else max_memory
        infos: dict = {}
        self.folded: dict = {}        # tensor name -> value computed while planning
        slots: dict = {}

        def slot(name):
            if name not in slots:
                slots[name] = len(slots)
            return slots[name]

        # shapes first, steps bound (layers made, weights transformed) once the budget allows:
        # each op keeps what its build needs from its own infer, so the two may be apart
        steps = []
        for node, op, ins, outs, names in infer_nodes(graph, ops, input_shapes, infos,
                                                      self.folded, self.max_memory, prior):
            i = [slot(n) if n else -1 for n in node.inputs]
            o = [slot(n) for n in names]
            steps.append(Step(node, names, op, ins, outs, i, o))
        for name in [spec.name for spec in graph.outputs]:
            slot(name)     # an output may be a graph input or a constant no step reads
        self.steps = steps
        self.infos = infos
        self.slots = slots
        self.outputs = [spec.name for spec in graph.outputs]
        self.output_infos = [infos[name] for name in self.outputs]
        self.inputs = [spec.name for spec in graph.inputs]
        self.ops = ops
        self._plan_memory(graph)
        self.weight_bytes = sum(v.nbytes for v in graph.constants.values())
        held = list(graph.constants.values()) + list(self.folded.values())
        self.transformed_bytes = held_bytes(ops.values(), held)   # the layers made so far
        self._check_budget(graph)
        for s in steps:
            s.bind()
        self.transformed_bytes = held_bytes(ops.values(), held)
        self._check_budget(graph)
        self.run_fns = [s.fn for s in steps if s.runs]
        self.run_steps = [s for s in steps if s.runs]
        self._local = threading.local()
        self.stats = [0.0] * len(self.steps)
        self.profiled_runs = 0
        self._stats_lock = threading.Lock()
        fork_safe(self)

    # -- the budget ---------------------------------------------------------------------------
    def budget_parts(self) -> dict:
        """Bytes the model holds for this plan, by kind: the graph's constants ("weights"), the
        arrays its layers keep beyond them ("transformed": packed weights, per-shape tables;
        the model's, shared by its plans, and this plan's blocked-layout weights), values
        computed while planning ("folded"), the activation arena of one running thread
        ("arena"; each further thread running at once adds one), and the arrays a run
        allocates: the outputs it returns and the tensors of steps that allocate their own
        ("per_run"). Kernel scratch (chunked) and NumPy temporaries inside steps are not
        counted."""
        per_run = {name: self.infos[name] for name in self.outputs}
        per_run.update((n, self.infos[n]) for n, k in self.kind.items() if k == "alloc")
        return {"weights": self.weight_bytes, "transformed": self.transformed_bytes,
                "folded": sum(v.nbytes for v in self.folded.values()),
                "arena": self.arena_bytes,
                "per_run": sum(nbytes(i.shape, i.dtype) for i in per_run.values())}

    @property
    def planned_bytes(self) -> int:
        return sum(self.budget_parts().values())

    def _check_budget(self, graph):
        parts = self.budget_parts()
        total = sum(parts.values())
        if total <= self.max_memory:
            return
        names = set(self.outputs) | {n for n, k in self.kind.items()
                                     if k in ("arena", "alloc")} | set(self.folded)
        tensors = [(n, self.infos[n].shape, self.infos[n].dtype) for n in names]
        tensors += [(n, v.shape, v.dtype) for n, v in graph.constants.items()]
        shapes = ", ".join(f"{k}: {shape_text(v)}" for k, v in self.input_shapes.items())
        labels = {"weights": "weights", "transformed": "transformed weights",
                  "folded": "values computed while planning", "arena": "arena per thread",
                  "per_run": "outputs a run returns"}
        detail = ", ".join(f"{labels[k]} {format_bytes(v)}" for k, v in parts.items() if v)
        raise ModelError(f"the plan for input shapes {shapes or '(none)'} needs "
                         f"{format_bytes(total)} ({detail}), more than the model's memory "
                         f"budget (max_memory) of {format_bytes(self.max_memory)}; the largest "
                         f"tensors: {largest_tensors(tensors)}")

    # -- memory -----------------------------------------------------------------------------
    def _plan_memory(self, graph):
        steps, slots, infos = self.steps, self.slots, self.infos
        end = len(steps)
        last = {}
        for t, s in enumerate(steps):
            for n in s.node.inputs:
                if n:
                    last[n] = t
        for name in self.outputs:
            last[name] = end
        root, kind, members = {}, {}, {}
        for name in self.inputs:
            root[name], kind[name] = name, "input"
        for name in slots:
            if name in self.folded or name in graph.constants:
                root[name], kind[name] = name, "const"
        outputs = set(self.outputs)
        produced_at = {n: t for t, s in enumerate(steps) for n in s.names}
        # tensors a Concat holds, written where its output keeps them (a byte offset in it)
        sub = {}
        for name, (r, offset) in self._placements(steps, outputs).items():
            if r not in root:
                root[r], kind[r] = r, "arena"
                members.setdefault(r, [r])
            root[name], sub[name] = r, offset
            members[r].append(name)
        for t, s in enumerate(steps):
            storage = s.op.storage
            for k, (name, info) in enumerate(zip(s.names, s.outs)):
                last.setdefault(name, t)
                if name in root:        # placed in a Concat's output
                    continue
                if storage == "view" and k == 0:
                    r = root[s.node.inputs[0]]
                    root[name] = r
                    sub[name] = sub.get(s.node.inputs[0], 0)
                    members.setdefault(r, [r]).append(name)
                    continue
                if storage == "alloc":
                    root[name], kind[name] = name, "alloc"
                    continue
                if name in outputs:
                    root[name], kind[name] = name, "fresh"
                    continue
                taken = None
                if k == 0:
                    for c in s.op.inplace_inputs(s.ins, s.outs):
                        r = root[s.node.inputs[c]]
                        # not a buffer another input reads too, for a step that reads it
                        # elsewhere than it writes (Op.inplace_exclusive)
                        shared = s.op.inplace_exclusive and any(
                            root.get(n) == r for j, n in enumerate(s.node.inputs)
                            if j != c and n)
                        # (and one where the buffer starts: a Concat's later inputs sit
                        # further in, where the output would not fall on them)
                        if (kind[r] == "arena" and not shared
                                and sub.get(s.node.inputs[c], 0) == 0
                                and max(last[m] for m in members[r]) == t):
                            taken = r
                            break
                if taken is not None:
                    root[name] = taken
                    members[taken].append(name)
                else:
                    root[name], kind[name] = name, "arena"
                    members[name] = [name]
        # lifetimes and sizes of the arena buffers
        blocks = []
        naive = 0
        for r, k in kind.items():
            if k != "arena":
                continue
            info = infos[r]
            nbytes = info.size * info.dtype.itemsize
            naive += nbytes
            start = min(produced_at[m] for m in members[r])
            stop = max(last[m] for m in members[r])
            blocks.append([r, start, max(start, stop), -(-nbytes // ALIGN) * ALIGN, 0])
        placed = []
        for block in sorted(blocks, key=lambda b: (-b[3], b[1])):
            _, start, stop, size, _ = block
            overlapping = sorted((b[4], b[4] + b[3]) for b in placed
                                 if b[1] <= stop and start <= b[2])
            offset = 0
            for lo, hi in overlapping:
                if offset + size <= lo:
                    break
                offset = max(offset, hi)
            block[4] = offset
            placed.append(block)
        self.arena_bytes = max((b[4] + b[3] for b in placed), default=0)
        self.naive_bytes = naive
        self.buffers = len(placed)
        offsets = {b[0]: b[4] for b in placed}
        # what each thread's slot list starts with, and what a run sets
        self.layout = []          # (slot, offset, shape, dtype) of arena-backed tensors
        for name, r in root.items():
            if name in slots and kind.get(r) == "arena":
                info = infos[name]
                self.layout.append((slots[name], offsets[r] + sub.get(name, 0), info.shape,
                                    info.dtype))
        self.template = [None] * len(slots)
        for name, s in slots.items():
            if name in self.folded:
                self.template[s] = self.folded[name]
            elif name in graph.constants:
                self.template[s] = graph.constants[name]
        for s in steps:   # views of arena tensors are made once per thread, not per run
            if s.op.storage == "view" and kind.get(root[s.node.inputs[0]]) == "arena":
                s.runs = False
        self.input_slots = [slots.get(n, -1) for n in self.inputs]
        self.fresh = [(slots[n], infos[n].shape, infos[n].dtype) for n, k in kind.items()
                      if k == "fresh"]
        self.clear_slots = [slots[n] for n, k in kind.items()
                            if k in ("alloc", "input", "fresh") and n in slots]
        self.clear_slots += [slots[n] for n, r in root.items()
                             if n in slots and n != r and kind.get(r) != "arena"]
        # how each graph output is handed back: its fresh array, or a copy
        self.output_plan = []
        for name in self.outputs:
            if name in self.folded or name in graph.constants:
                value = self.folded.get(name, graph.constants.get(name))
                self.output_plan.append((name, -1, value))
            else:
                own = kind.get(root[name]) == "fresh" and root[name] == name
                self.output_plan.append((name, slots[name], "own" if own else "copy"))
        self.kind, self.root = kind, root

    def _placements(self, steps, outputs) -> dict:
        """{tensor: (buffer, byte offset)}: the inputs of a step that keeps them side by side
        in its output (``Op.placements``, a blocked Concat of one image) written there by the
        steps that make them, so that the Concat copies nothing. Concats are taken last
        first: DenseNet's block ends in a Concat of all its layers' outputs, and each layer's
        own Concat of those before it is then a first part of that one, placed too.

        A tensor is placed once: one written by a "write" step (not a view, an input, a
        constant or a graph output) and in no other Concat's place; the others are copied.
        A placed tensor lives as long as its buffer, so no step takes it over in place."""
        producer = {n: s for s in steps for n in s.names[:1]}
        place = {}

        def placeable(name):
            s = producer.get(name)
            return (s is not None and s.op.storage == "write" and name not in outputs
                    and name not in place)

        for s in reversed(steps):
            spots = s.op.placements(s.ins, s.outs)
            c = s.names[0] if s.names else None
            if not spots or c in outputs:
                continue
            if c not in place:
                got = [place.get(s.node.inputs[k]) for k, _ in spots]
                if all(g is not None for g in got):
                    r, base = got[0][0], got[0][1] - spots[0][1]
                    if all(g == (r, base + off) for g, (_, off) in zip(got, spots)):
                        place[c] = (r, base)     # a first part of a later Concat's output
                        continue
                r, base = c, 0
            else:
                r, base = place[c]
            for k, off in spots:
                name = s.node.inputs[k]
                if name and placeable(name) and name != r:
                    place[name] = (r, base + off)
        for s in steps:     # what each Concat then finds in place
            spots = s.op.placements(s.ins, s.outs)
            if spots and s.names[0] not in outputs:
                r, base = place.get(s.names[0], (s.names[0], 0))
                s.op.placed_inputs = frozenset(
                    k for k, off in spots if place.get(s.node.inputs[k]) == (r, base + off)
                    and s.node.inputs.index(s.node.inputs[k]) == k)
        return place

    def env(self) -> list:
        env = getattr(self._local, "env", None)
        if env is None:
            env = list(self.template)
            arena = populated_zeros(self.arena_bytes, np.uint8)
            for s, offset, shape, dtype in self.layout:
                nbytes = math.prod(shape) * dtype.itemsize
                env[s] = arena[offset:offset + nbytes].view(dtype).reshape(shape)
            self._local.env = env
        return env

    # -- running ----------------------------------------------------------------------------
    def _start(self, feeds: list) -> list:
        """This thread's values by slot, the inputs and the fresh output buffers in place."""
        env = self.env()
        for s, x in zip(self.input_slots, feeds):
            if s >= 0:
                env[s] = x
        for s, shape, dtype in self.fresh:
            env[s] = np.empty(shape, dtype)
        return env

    def run(self, feeds: list, num_threads: int, profile: bool = False) -> dict:
        env = self._start(feeds)
        f = None
        try:
            if profile:
                self._run_profiled(env, num_threads)
            else:
                for f in self.run_fns:
                    f(env, num_threads)
            result = {}
            for name, s, how in self.output_plan:
                if s < 0:
                    result[name] = np.array(how, copy=True)
                elif how == "own":
                    result[name] = env[s]
                else:
                    result[name] = np.array(env[s], copy=True)
        except ModelError:
            raise
        except (ValueError, IndexError, TypeError, FloatingPointError) as e:
            raise ModelError(f"running node {self._failed(f)}: {e}") from e
        finally:
            for s in self.clear_slots:
                env[s] = None
        return result

    def run_observed(self, feeds: list, num_threads: int, before, after) -> None:
        """Run once, calling ``before(step, env)`` and ``after(step, env)`` around every
        step (env: the values by slot), for tools that read intermediate values
        (explain(errors=True)); the outputs are not returned."""
        env = self._start(feeds)
        try:
            for s in self.run_steps:
                before(s, env)
                s.fn(env, num_threads)
                after(s, env)
        finally:
            for s in self.clear_slots:
                env[s] = None

    def _failed(self, fn):
        for s in self.run_steps:
            if s.fn is fn:
                return f"{s.node.name!r} ({s.node.op})"
        return "?"

    def _run_profiled(self, env, num_threads):
        clock = time.perf_counter
        times = []
        for s in self.run_steps:
            t = clock()
            try:
                s.fn(env, num_threads)
            except ModelError:
                raise
            except (ValueError, IndexError, TypeError, FloatingPointError) as e:
                raise ModelError(f"running node {s.node.name!r} ({s.node.op}): {e}") from e
            times.append(clock() - t)
        with self._stats_lock:
            k = 0
            for idx, s in enumerate(self.steps):
                if s.runs:
                    self.stats[idx] += times[k]
                    k += 1
            self.profiled_runs += 1
