"""The kernels' thread pool (kernels/_pool.h): pieces taken by whichever thread is free, so the
results must not depend on who took what: the same for every thread count (more threads than
cores included), the same as the static OpenMP split the kernels had before, and the same while
another process keeps a core busy (workers then start late and the caller takes their pieces).
Concurrent callers and forked children: tests/test_graph_runner.py, tests/test_fork.py."""
import subprocess
import sys
import time

import numpy as np
import pytest

from engine._kernels import _pool, nchwc, nchwc_dense
from engine.ops import blocked
from engine.ops.activation import kernel_act
import engine


def _layers(rng):
    """Calls of five pooled kernels (pointwise and dense on blocks, Winograd, im2col and the
    transposed convolution on NCHW) on layers large enough that every thread gets pieces, each
    returning its output."""
    B = nchwc.BLOCK
    c, k, h = 40, 72, 30
    x = rng.standard_normal((2, c, h, h)).astype(np.float32)
    xb = np.zeros((2, -(-c // B), h, h, B), np.float32)
    nchwc.f32_to_blocked(x, xb, 1)
    w1 = (rng.standard_normal((k, c, 1, 1)) * 0.2).astype(np.float32)
    w3 = (rng.standard_normal((k, c, 3, 3)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    wp, bp = blocked.pack_pointwise(w1, bias)
    wd, bd = blocked.pack_dense(w3, bias)
    act = kernel_act("relu")

    def pointwise(t):
        out = np.empty((2, -(-k // B), h, h, B), np.float32)
        nchwc.f32_pointwise_blocked(xb, wp, bp, None, out, act, t, channels=c)
        return out

    def dense(t):
        out = np.empty((2, -(-k // B), h, h, B), np.float32)
        nchwc_dense.f32_conv2d_nchwc(xb, c, wd, bd, None, out, 3, 3, 1, 1, 1, 1, 1, 1, act, t)
        return out

    wt = (rng.standard_normal((c, k, 3, 3)) * 0.1).astype(np.float32)

    def on_threads(t, fn=engine.conv2d, w=w3, **kw):
        old = engine.get_num_threads()
        engine.set_num_threads(t)
        try:
            return fn(x, w, bias, **kw)
        finally:
            engine.set_num_threads(old)

    def winograd(t):
        return on_threads(t, padding=1, algorithm="winograd_f43")

    def im2col(t):
        return on_threads(t, stride=2, padding=1, algorithm="im2col")

    def transposed(t):
        return on_threads(t, engine.conv_transpose2d, wt, stride=2, padding=1)

    return {"pointwise": pointwise, "dense": dense, "winograd": winograd, "im2col": im2col,
            "transposed": transposed}


@pytest.fixture
def openmp_regions():
    yield _pool.use_openmp_regions
    _pool.use_openmp_regions(False)


def test_every_thread_count_and_the_openmp_split_give_the_same_bits(rng, openmp_regions):
    for name, run in _layers(rng).items():
        want = run(1)
        assert np.isfinite(want).all() and np.abs(want).max() > 0, name
        for t in (2, 3, 5, 8):
            np.testing.assert_array_equal(run(t), want, err_msg=f"{name} at {t} threads")
        openmp_regions(True)
        np.testing.assert_array_equal(run(2), want, err_msg=f"{name} in OpenMP regions")
        openmp_regions(False)


NEIGHBOUR = """
import os, time
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
print("busy", flush=True)
while True:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.004:
        pass
    time.sleep(0.003)
"""


def test_a_busy_core_changes_nothing(rng):
    """Workers that another process keeps off their core start late or not at all; the caller
    runs their pieces. Many short calls, so that some land on every case."""
    layers = _layers(rng)
    want = {name: run(1) for name, run in layers.items()}
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], stdout=subprocess.PIPE,
                                 text=True)
    try:
        assert neighbour.stdout.readline().strip() == "busy"
        t_end = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < t_end:
            for name, run in layers.items():
                np.testing.assert_array_equal(run(2), want[name], err_msg=f"{name}, call {i}")
            i += 1
    finally:
        neighbour.kill()
        neighbour.wait()
