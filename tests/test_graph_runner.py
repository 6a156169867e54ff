"""engine.Model: feeds validation, free dimensions and the plan cache, explain/profile, thread
counts, concurrent runs from many Python threads, and buffer reuse along a chain of
elementwise steps (whose per-node cost bench/bench_overhead.py measures: a test does not time).

Graphs are built in the engine's IR directly (no onnx needed); references are float64 NumPy
(tests/reference.py). Tolerance, per element, as in tests/test_conv2d.py:
    |got - ref| <= RTOL * magnitude,
the magnitude being the sum of |terms| of the last sum behind each output: for small_net's
Gemm, |f| @ |fc|.T with f the float64 reference's features. Every feature is an average of
ReLU outputs (non-negative, no cancellation), so the errors made before the Gemm are of the
order of eps32 relative to f, as is the Gemm's own rounding relative to that sum. RTOL = 1e-5
(~80 eps32), the tolerance of the direct and im2col convolutions in tests/test_conv2d.py; the
errors measured are about 1 eps32 of the magnitude, which is 4 to 5 times max |output|.
"""
import collections
import os
import threading
import time

import numpy as np
import pytest

import engine
from engine._threads import threads_for
from engine.graph import Graph, Model, Node, TensorSpec
from concurrency import run_concurrently
from reference import conv2d_ref

RTOL = 1e-5


def close(got, ref, magnitude, rtol=RTOL):
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    bound = rtol * magnitude
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def small_net(rng, batch=1, spatial=(12, 12), free=False, layout="auto"):
    """conv(relu) -> conv + residual (relu) -> maxpool -> concat with avgpool -> flatten -> gemm.
    Returns (model, reference): reference(x) is (float64 output, its magnitude)."""
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    fc = (rng.standard_normal((5, 16)) * 0.3).astype(np.float32)
    consts = {"w1": w1, "b1": b1, "w2": w2, "fc": fc}
    nodes = [
        Node("Conv", "conv1", ["x", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1]}),
        Node("Relu", "relu1", ["c1"], ["r1"]),
        Node("Conv", "conv2", ["r1", "w2"], ["c2"], {"pads": [1, 1, 1, 1]}),
        Node("Add", "add", ["c2", "r1"], ["s"]),
        Node("Relu", "relu2", ["s"], ["r2"]),
        Node("MaxPool", "maxpool", ["r2"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Node("AveragePool", "avgpool", ["r1"], ["q"], {"kernel_shape": [2, 2],
                                                        "strides": [2, 2]}),
        Node("Concat", "concat", ["p", "q"], ["cat"], {"axis": 1}),
        Node("GlobalAveragePool", "gap", ["cat"], ["g"]),
        Node("Flatten", "flatten", ["g"], ["f"], {"axis": 1}),
        Node("Gemm", "fc", ["f", "fc"], ["y"], {"transB": 1}),
    ]
    shape = (None, 3, None, None) if free else (batch, 3) + tuple(spatial)
    g = Graph(nodes, [TensorSpec("x", shape, "float32")], [TensorSpec("y", None, "float32")],
              consts)

    def reference(x):
        """(float64 output, its magnitude: the Gemm's sum of |terms|, |f| @ |fc|.T)."""
        r1 = np.maximum(conv2d_ref(x, w1, b1, pads=((1, 1), (1, 1))), 0)
        r2 = np.maximum(conv2d_ref(r1, w2, pads=((1, 1), (1, 1))) + r1, 0)
        n, c, hh, ww = r2.shape
        hh2, ww2 = hh // 2, ww // 2
        p = r2[:, :, :hh2 * 2, :ww2 * 2].reshape(n, c, hh2, 2, ww2, 2).max(axis=(3, 5))
        q = r1[:, :, :hh2 * 2, :ww2 * 2].reshape(n, c, hh2, 2, ww2, 2).mean(axis=(3, 5))
        f = np.concatenate([p, q], axis=1).mean(axis=(2, 3))     # >= 0: no cancellation
        fc64 = fc.astype(np.float64)
        return f @ fc64.T, f @ np.abs(fc64).T

    return Model(g, layout=layout), reference


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def x_of(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------ basics

def test_run_call_inputs_outputs(rng):
    model, ref = small_net(rng, batch=2)
    x = x_of(rng, 2, 3, 12, 12)
    out = model.run({"x": x})
    assert list(out) == ["y"]
    close(out["y"], *ref(x))
    np.testing.assert_array_equal(model(x), out["y"])
    np.testing.assert_array_equal(model({"x": x})["y"], out["y"])
    assert model.inputs == [TensorSpec("x", (2, 3, 12, 12), "float32")]
    assert model.outputs == [TensorSpec("y", (2, 5), "float32")]
    assert [n.op for n in model.graph.nodes].count("Conv") == 2
    assert len(model.graph.nodes) == 8     # relus and the add fused into the convolutions


def test_outputs_are_fresh_arrays(rng):
    model, _ = small_net(rng)
    x = x_of(rng, 1, 3, 12, 12)
    a = model(x)
    b = model(x + 1)
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, model(x))


@pytest.mark.parametrize("feeds,message", [
    ({}, "missing input 'x'"),
    ({"x": np.zeros((1, 3, 12, 12), np.float32), "z": 1}, "unknown input 'z'"),
    ({"x": np.zeros((1, 3, 12, 12), np.float64)}, "input 'x' must have dtype float32"),
    ({"x": np.zeros((3, 12, 12), np.float32)}, "input 'x' must have shape 1x3x12x12"),
    ({"x": np.zeros((1, 4, 12, 12), np.float32)}, "input 'x' must have shape"),
    ({"x": np.zeros((2, 3, 12, 12), np.float32)}, "input 'x' must have shape"),
    ({"x": [[1.0]]}, "input 'x' must have dtype float32"),
    ([np.zeros((1, 3, 12, 12), np.float32)], "feeds must be a dict"),
])
def test_bad_feeds_raise_value_error_naming_the_input(rng, feeds, message):
    model, _ = small_net(rng)
    with pytest.raises(ValueError, match=message):
        model.run(feeds)


def test_call_shorthand_errors_and_tuple_outputs(rng):
    g = Graph([Node("Relu", "r", ["a"], ["y"]), Node("Add", "s", ["a", "b"], ["z"])],
              [TensorSpec("a", (2,), "float32"), TensorSpec("b", (2,), "float32")],
              [TensorSpec("y", None, "float32"), TensorSpec("z", None, "float32")], {})
    model = Model(g)
    with pytest.raises(ValueError, match="single-input"):
        model(np.zeros(2, np.float32))
    g = Graph([Node("Relu", "r", ["a"], ["y"]), Node("TfIdfVectorizer", "n", ["a"], ["z"])],
              [TensorSpec("a", (2,), "float32")],
              [TensorSpec("y", None, "float32"), TensorSpec("z", None, "float32")], {})
    with pytest.raises(engine.ModelError, match="'n'.*'TfIdfVectorizer' is not supported"):
        Model(g)
    g = Graph([Node("Relu", "r", ["a"], ["y"]), Node("Sigmoid", "n", ["a"], ["z"])],
              [TensorSpec("a", (2,), "float32")],
              [TensorSpec("y", None, "float32"), TensorSpec("z", None, "float32")], {})
    y, z = Model(g)(np.array([-1, 1], np.float32))
    np.testing.assert_array_equal(y, [0, 1])


def test_runtime_error_names_the_node():
    g = Graph([Node("Gather", "pick", ["a", "i"], ["y"], {"axis": 0})],
              [TensorSpec("a", (3,), "float32"), TensorSpec("i", (1,), "int64")],
              [TensorSpec("y", None, "float32")], {})
    model = Model(g)
    np.testing.assert_array_equal(
        model.run({"a": np.arange(3, dtype=np.float32), "i": np.array([2])})["y"], [2])
    with pytest.raises(engine.ModelError, match="'pick' \\(Gather\\)"):
        model.run({"a": np.arange(3, dtype=np.float32), "i": np.array([7])})


# ------------------------------------------------------------------------------ free dims

def test_free_dimensions_plan_per_shape_with_a_bounded_cache(rng):
    model, ref = small_net(rng, free=True)
    assert model.inputs[0].shape == (None, 3, None, None)
    assert "no plan yet" in model.explain()
    shapes = [(1, 3, 8, 8), (2, 3, 10, 6), (1, 3, 9, 13)] + \
        [(1, 3, 4 + k, 4) for k in range(8)]
    results = {}
    for s in shapes:
        x = x_of(np.random.default_rng(sum(s)), *s)
        results[s] = model(x)
        close(results[s], *ref(x))
    assert len(model._plans) == engine.graph.runner.MAX_PLANS
    # an evicted shape is planned again and gives the same numbers
    s = shapes[0]
    assert s not in [k[0] for k in model._plans]
    x = x_of(np.random.default_rng(sum(s)), *s)
    np.testing.assert_array_equal(model(x), results[s])
    text = model.explain(input_shapes=(2, 3, 10, 6))
    assert "plan for x: 2x3x10x6" in text


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's statm")
def test_shapes_in_rotation_keep_memory_flat(rng):
    """30 input shapes in rotation, 6 times over: every plan beyond MAX_PLANS is evicted with
    its arenas and per-shape tables, so the process's resident memory does not grow after
    the first rotations (a leak of each evicted plan would add its 0.8-1 MB arena
    and tables 30 times per rotation)."""
    model, _ = small_net(rng, free=True)
    shapes = [(1, 3, 128 + 2 * k, 96) for k in range(30)]
    xs = {s: x_of(np.random.default_rng(sum(s)), *s) for s in shapes}
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    after = []
    for _ in range(6):
        for s in shapes:
            model(xs[s])
            assert len(model._plans) <= engine.graph.runner.MAX_PLANS
        after.append(rss())
    assert all(len(op._layers) <= 8 for op in model._ops.values() if hasattr(op, "_layers"))
    assert after[-1] - after[1] < 16 << 20, [a >> 20 for a in after]


def test_each_node_inferred_and_folded_once_per_plan(rng, monkeypatch):
    """The layout pass's inference serves the plan: a node the pass leaves alone is inferred
    once per plan, and a value computed while planning is computed once."""
    from engine.graph import plan as plan_module
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    consts = {"w": w, "zero": np.array(0, np.int64), "minus": np.array([-1], np.int64),
              "axes": np.array([0], np.int64)}
    nodes = [Node("Conv", "conv", ["x", "w"], ["c"], {"pads": [1, 1, 1, 1]}),
             Node("Shape", "shape", ["c"], ["s"]),                   # computed while planning
             Node("Gather", "batch", ["s", "zero"], ["n"], {"axis": 0}),
             Node("Unsqueeze", "n1", ["n", "axes"], ["n1"]),
             Node("Concat", "to", ["n1", "minus"], ["to"], {"axis": 0}),
             Node("Reshape", "flat", ["c", "to"], ["y"])]
    model = Model(Graph(nodes, [TensorSpec("x", (None, 3, None, None), "float32")],
                        [TensorSpec("y", None, "float32")], consts))
    # the batch-chunk check infers the graph on its own, once per batch shape
    # (tests/test_batch_chunks.py); counted here: the plan's inference alone
    monkeypatch.setattr(model, "_split", lambda shapes: None)
    calls, evaluated = collections.Counter(), collections.Counter()
    for op in model._ops.values():
        real = op.infer
        monkeypatch.setattr(op, "infer", lambda ins, real=real, op=op:
                            calls.update([op.name]) or real(ins))
    real_eval = plan_module.evaluate
    monkeypatch.setattr(plan_module, "evaluate", lambda op, *a, **k:
                        evaluated.update([op.name]) or real_eval(op, *a, **k))
    x = x_of(rng, 2, 3, 12, 12)
    want = conv2d_ref(x, w, pads=((1, 1), (1, 1))).reshape(2, -1)
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    assert set(calls) == set(model._ops) and max(calls.values()) == 1, calls
    assert evaluated and max(evaluated.values()) == 1, evaluated


# ------------------------------------------------------------------------------ explain

def test_explain_and_profile(rng):
    model, _ = small_net(rng, layout="nchw")       # NCHW: the convolutions name an algorithm
    text = model.explain()
    for word in ("Conv", "MaxPool", "Gemm", "MFLOP", "memory:", "MiB", "im2col",
                 "residual", "relu in the kernel's output step", "load-time passes"):
        assert word in text, word
    assert "GFLOP/s" not in text
    x = x_of(rng, 1, 3, 12, 12)
    text = model.profile({"x": x}, repeat=2)
    assert "GFLOP/s" in text and "mean of 2 profiled runs" in text
    conv_line = next(line for line in text.splitlines() if " conv1 " in line)
    ms = float(conv_line.split()[7])
    assert ms > 0


# ------------------------------------------------------------------------------ threads

def test_thread_counts_give_identical_results(rng):
    size = 64
    # both convolutions (3->8 and 8->8, 3x3) are past the engine's work threshold for 2 threads
    assert all(threads_for(8 * size * size * c_in * 9, 2) == 2 for c_in in (3, 8))
    model, _ = small_net(rng, spatial=(size, size))
    x = x_of(rng, 1, 3, size, size)
    one = model.run({"x": x}, num_threads=1)["y"]
    two = model.run({"x": x}, num_threads=2)["y"]
    np.testing.assert_array_equal(one, two)
    model.num_threads = 2
    np.testing.assert_array_equal(model(x), one)
    with pytest.raises(ValueError):
        model.num_threads = 0


def _cpu_ns_by_thread():
    """{native thread id: nanoseconds spent on a CPU} for every thread of this process, from
    Linux's /proc/self/task/<tid>/schedstat; None where that is not available."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass   # a thread that ended meanwhile
    return out or None


def _wait_until_other_threads_idle(me, timeout=5.0):
    """Threads busy with earlier work stop on their own: OpenBLAS's workers spin for about
    0.1 s (2**28 cycles) after a call, OpenMP's for a moment after a parallel region."""
    deadline = time.monotonic() + timeout
    while True:
        before = _cpu_ns_by_thread()
        time.sleep(0.05)
        after = _cpu_ns_by_thread()
        busy = max((ns - before.get(t, 0) for t, ns in after.items() if t != me), default=0)
        if busy < 1_000_000:     # under 1 ms of CPU in 50 ms
            return
        assert time.monotonic() < deadline, f"another thread stays busy: {busy} ns in 50 ms"


def test_set_num_threads_is_followed(rng, threads):
    """engine.set_num_threads(n) reaches the kernels. Results do not depend on the thread count
    (by design), so the test watches the threads: over a few runs, at 2 a second thread of this
    process does a share of the CPU work, at 1 no other thread does any. On a quiet machine the
    share is about half; the kernels' pool gives the calling thread the pieces of a worker that
    another process keeps off its core, so a busy machine moves work to the caller, and the
    bound is well below half."""
    size = 128
    # precondition: by the engine's own work threshold, both convolutions (3->8 and 8->8, 3x3,
    # multiply-adds counted from the shapes) take two threads when given two
    assert all(threads_for(8 * size * size * c_in * 9, 2) == 2 for c_in in (3, 8))
    model, ref = small_net(rng, spatial=(size, size))
    x = x_of(rng, 1, 3, size, size)
    close(model(x), *ref(x))    # plans for this shape, and gives the right numbers
    if _cpu_ns_by_thread() is None:
        pytest.skip("per-thread CPU time needs Linux's /proc/self/task/*/schedstat")
    me = threading.get_native_id()
    _wait_until_other_threads_idle(me)
    before = _cpu_ns_by_thread()
    for _ in range(10):
        model(x)
    after = _cpu_ns_by_thread()
    spent = {t: ns - before.get(t, 0) for t, ns in after.items()}
    helper = max((ns for t, ns in spent.items() if t != me), default=0)
    share = helper / sum(spent.values())
    if threads == 2:
        assert share > 0.05, (share, spent)
    else:
        assert share < 0.02, (share, spent)


def test_eight_python_threads_match_serial_runs(rng):
    model, _ = small_net(rng, batch=2, spatial=(24, 24))
    inputs = [x_of(np.random.default_rng(k), 2, 3, 24, 24) for k in range(8)]
    serial = [model(x) for x in inputs]
    results, errors = run_concurrently(model, inputs, 15)
    assert not errors, errors
    for k in range(8):
        assert len(results[k]) == 15
        for r in results[k]:
            np.testing.assert_array_equal(r, serial[k])


def test_elementwise_chain_runs_in_one_buffer():
    """A chain of 200 Relu/Add nodes on a 1x1x1x1 tensor (bench/bench_overhead.py times a
    chain like it): right value, and every step writes over the input that dies with it."""
    nodes, prev = [], "x"
    for k in range(200):
        out = f"t{k}"
        nodes.append(Node("Relu", f"n{k}", [prev], [out]) if k % 2 == 0 else
                     Node("Add", f"n{k}", [prev, "x"], [out]))
        prev = out
    model = Model(Graph(nodes, [TensorSpec("x", (1, 1, 1, 1), "float32")],
                        [TensorSpec(prev, None, "float32")], {}))
    feeds = {"x": np.ones((1, 1, 1, 1), np.float32)}
    assert model.run(feeds)[prev].item() == 101.0
    plan = model._last_plan
    assert plan.buffers == 1      # every step writes over the input that dies with it


def test_graph_input_that_decides_shapes_is_planned_per_value():
    """A Reshape whose shape is computed from a graph input: each value gets its own plan."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h
    g = h.make_graph([h.make_node("Add", ["s", "zero"], ["s2"]),
                      h.make_node("Reshape", ["x", "s2"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, (2, 6)),
                      h.make_tensor_value_info("s", T.INT64, (2,))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [h.make_tensor("zero", T.INT64, (1,), [0])])
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    for shape in ([3, 4], [4, 3], [-1, 2], [3, 4]):
        y = model.run({"x": x, "s": np.array(shape)})["y"]
        np.testing.assert_array_equal(y, x.reshape(shape))
    assert "s: 2 = [-1, 2]" in model.explain() or "s: 2 = [3, 4]" in model.explain()
    with pytest.raises(ValueError, match="Reshape"):
        model.run({"x": x, "s": np.array([5, 5])})
    # a shape computed from a large input's values is refused at load, naming the node
    g = h.make_graph([h.make_node("Cast", ["v"], ["vi"], to=T.INT64),
                      h.make_node("Reshape", ["x", "vi"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, (2, 6)),
                      h.make_tensor_value_info("v", T.FLOAT, (100,))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(engine.ModelError, match="Reshape.*'v'"):
        engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))


def test_ops_keep_no_per_shape_state():
    """An op is made once per node and planned for many shapes: what infer, build, describe
    and flops work out for one shape is returned or recomputed from the inputs, never kept on
    the op, where a later plan's inference would overwrite what an earlier plan's steps and
    explain() read."""
    import ast
    import inspect
    import textwrap

    from engine.graph import layout
    from engine.graph.ops import OPS
    classes = set(OPS.values()) | {c for c in vars(layout).values()
                                   if inspect.isclass(c) and c.__module__ == layout.__name__}
    found = []
    for cls in classes:
        for klass in cls.__mro__:
            for name in ("infer", "build", "describe", "flops"):
                fn = vars(klass).get(name)
                if fn is None:
                    continue
                tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
                for node in ast.walk(tree):
                    targets = (node.targets if isinstance(node, ast.Assign) else
                               [node.target] if isinstance(node, (ast.AugAssign,
                                                                  ast.AnnAssign)) else [])
                    for t in targets:
                        for e in ast.walk(t):
                            if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) \
                                    and e.value.id == "self":
                                found.append(f"{klass.__name__}.{name} sets self.{e.attr}")
    assert len(classes) > 80
    assert not sorted(set(found)), sorted(set(found))


def test_free_batch_is_planned_at_load_for_batch_one():
    """Only the batch free: batch 1 is planned (weights transformed) at load, so its first
    run makes nothing; other batches plan at their first run and share the transforms."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    g = Graph([Node("Conv", "c", ["x", "w"], ["y"], {"pads": [1, 1, 1, 1]})],
              [TensorSpec("x", (None, 8, 20, 20), "float32")], [TensorSpec("y", None, "float32")],
              {"w": w})
    model = Model(g)
    op = model._ops["c"]
    made = op.transforms.made
    assert made >= 1 and len(model._plans) == 1
    x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
    y1 = model(x)
    assert op.transforms.made == made and len(model._plans) == 1
    y2 = model(np.concatenate([x, x]))
    assert len(model._plans) == 2
    np.testing.assert_array_equal(y2[1], y1[0])
    # a free spatial size is not guessed
    free = Model(Graph([Node("Relu", "r", ["x"], ["y"])],
                       [TensorSpec("x", (1, 8, None, None), "float32")],
                       [TensorSpec("y", None, "float32")], {}))
    assert len(free._plans) == 0


IDLE_CHILD = r"""
import os, sys, threading, time
import numpy as np
import engine
rng = np.random.default_rng(0)
w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
layer = engine.Conv2d(w, None, 1, 1, num_threads=2)
x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
me = threading.get_native_id()

def others_ns():
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            if int(tid) != me:
                total += int(open(f"/proc/self/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return total

during = []
idle = []
for _ in range(5):
    before = others_ns()
    for _ in range(20):
        layer(x)
    during.append(others_ns() - before)
    before = others_ns()
    time.sleep(0.1)
    idle.append(others_ns() - before)
print(os.environ.get("GOMP_SPINCOUNT"), min(during), sorted(idle)[2])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_worker_threads_sleep_soon_after_a_call():
    """After a call returns, the kernels' workers stop polling for work within about 0.1 ms
    (the engine's pool, kernels/_pool.h CE_POOL_SPIN_NS; for the kernels still on OpenMP,
    engine/_kernels/__init__.py sets the spin count unless the user did): in the 100 ms after
    a call they use under 2 ms of CPU (libgomp's default polling used about 9 ms here), while
    during the calls they did work (so the measurement sees it)."""
    import subprocess
    import sys
    import tempfile
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    # from a neutral directory: `python -c` puts the working directory first on sys.path, and
    # a checkout's engine/ (without built kernels) must not shadow the installed package
    out = subprocess.run([sys.executable, "-c", IDLE_CHILD], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    spin, during, idle = out.stdout.split()
    assert spin == "3000"
    assert int(during) > 2_000_000, "the second thread did no work during the calls"
    assert int(idle) < 2_000_000, f"{int(idle) / 1e6:.2f} ms of CPU in the 100 ms after a call"
