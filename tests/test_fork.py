"""Forked children (gunicorn's workers, multiprocessing's default start method on Linux) run the
engine: after the parent ran kernels on two threads (the kernels' pool starts anew in the
child, with threads of its own), and while another of the parent's threads was inside
Model.run holding the engine's locks.

Each child gets a deadline: a child still running after it is killed and the test fails, so a
hang cannot stall the run."""
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import engine

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DEADLINE = 60.0


def _in_child(fn) -> None:
    """Run fn() in a forked child; fail unless it exits 0 within DEADLINE seconds."""
    pid = os.fork()
    if pid == 0:    # the child: no pytest machinery from here on
        code = 1
        try:
            code = 0 if fn() else 3
        except BaseException:
            import traceback
            traceback.print_exc()
        os._exit(code)
    t_end = time.monotonic() + DEADLINE
    while time.monotonic() < t_end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the child failed (see its stderr)"
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish within {DEADLINE:.0f} s (a hang)")


def _layer_and_input():
    rng = np.random.default_rng(5)
    # 64->64 3x3 on 56x56: far above the work at which two threads run
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    return w, x


def test_child_runs_after_parent_used_two_threads():
    w, x = _layer_and_input()
    old = engine.get_num_threads()
    engine.set_num_threads(2)
    try:
        want = engine.conv2d(x, w, padding=1, algorithm="im2col")   # on two threads
        _in_child(lambda: np.array_equal(engine.conv2d(x, w, padding=1, algorithm="im2col"),
                                         want))
    finally:
        engine.set_num_threads(old)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_child_keeps_its_threads():
    """The child runs two-thread kernels on two threads: it starts a worker of its own (a
    thread more after the call; other libraries may have started threads of their own in the
    child before), and the bits are the parent's."""
    w, x = _layer_and_input()
    old = engine.get_num_threads()
    engine.set_num_threads(2)
    try:
        want = engine.conv2d(x, w, padding=1, algorithm="im2col")

        def child():
            before = len(os.listdir("/proc/self/task"))
            same = np.array_equal(engine.conv2d(x, w, padding=1, algorithm="im2col"), want)
            after = len(os.listdir("/proc/self/task"))
            print(f"threads before {before}, after {after}, same bits {same}, "
                  f"num_threads {engine.get_num_threads()}", file=sys.stderr)
            return after > before and same and engine.get_num_threads() == 2
        _in_child(child)
    finally:
        engine.set_num_threads(old)


def test_child_runs_while_parent_thread_is_inside_run():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    w, x = _layer_and_input()
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                      h.make_node("Relu", ["c"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [None, 64, 56, 56])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9),
                        num_threads=2)
    want = model.run({"x": x})["y"]
    stop = threading.Event()

    def busy():
        batch = 1
        while not stop.is_set():     # new batch sizes: planning (the build lock) as well
            batch = batch % 3 + 1
            model.run({"x": np.repeat(x, batch, axis=0)})

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        time.sleep(0.2)
        for _ in range(3):
            _in_child(lambda: np.array_equal(model.run({"x": x})["y"], want))
    finally:
        stop.set()
        worker.join()


def test_child_runs_when_fork_came_while_the_locks_were_held():
    # Deterministic form of the test above: the parent holds the plan cache's and the planner's
    # locks at the moment of the fork, and the child plans a new shape (both locks needed).
    w, x = _layer_and_input()
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [None, 64, 56, 56])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9))
    want = model.run({"x": np.repeat(x, 2, axis=0)})["y"]
    with model._build_lock, model._lock:
        _in_child(lambda: np.array_equal(model.run({"x": np.repeat(x, 2, axis=0)})["y"], want)
                  and model.run({"x": x})["y"].shape == (1, 64, 56, 56))


# multiprocessing's "fork" start method: the workers inherit this module's state, so the model
# the parent loaded (and ran on two threads) is the one they run
_SHARED = {}


def _run_shared(batch):
    model, x = _SHARED["model"], _SHARED["x"]
    return model.run({"x": np.repeat(x, batch, axis=0)})["y"]


def _conv_model(w):
    pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [None, 64, 56, 56])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    return engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9),
                       num_threads=2)


def test_multiprocessing_fork_pool_and_process():
    """A pool of forked workers and a single forked Process, after the parent ran the model on
    two threads: each gives the parent's result (batch 1 planned in the parent, batches 2 and
    3 planned in the workers), within a deadline."""
    import multiprocessing
    w, x = _layer_and_input()
    model = _conv_model(w)
    want = model.run({"x": x})["y"]
    _SHARED.update(model=model, x=x)
    ctx = multiprocessing.get_context("fork")
    try:
        with ctx.Pool(2) as pool:
            got = pool.map_async(_run_shared, [1, 2, 3, 1]).get(timeout=DEADLINE)
        for batch, y in zip([1, 2, 3, 1], got):
            assert np.array_equal(y, np.repeat(want, batch, axis=0))
        queue = ctx.Queue()
        proc = ctx.Process(target=lambda: queue.put(np.array_equal(_run_shared(1), want)))
        proc.start()
        try:
            assert queue.get(timeout=DEADLINE) is True
        finally:
            proc.join(DEADLINE)
            if proc.is_alive():
                proc.kill()
                pytest.fail("the forked Process did not finish (a hang)")
    finally:
        _SHARED.clear()
