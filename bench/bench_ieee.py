"""What IEEE NaN/Inf semantics cost on finite inputs: the Winograd and fft paths with their
non-finite test (the default) against the same kernels with the test bypassed (the private
switches engine.ops.winograd._CHECK_NONFINITE and engine.ops.fft._CHECK_NONFINITE), in one
process, taking turns (the order swapped every round), median of --repeat runs each, in wall
time and in the calling thread's CPU time (at one thread the kernels run on that thread, and its
CPU time is what other load on the machine disturbs least). For scale: NumPy's
np.isfinite(x).all() on the same input, and a call whose input holds one +Inf (the test, the
zeroed copy of its plane and the fix-up).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_ieee.py [--repeat 31]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import engine  # noqa: E402
from engine.ops import fft, winograd  # noqa: E402

# name: (C, K, H, W, kernel, pad, dilation, algorithm); "auto" rows show what auto picks
LAYERS = [
    ("conv3x3_c64_56", (64, 64, 56, 56, 3, 1, 1, "auto")),
    ("conv3x3_c256_14", (256, 256, 14, 14, 3, 1, 1, "auto")),
    ("conv3x3_c256_14", (256, 256, 14, 14, 3, 1, 1, "winograd_f23")),
    ("conv3x3_d2_c256_28", (256, 256, 28, 28, 3, 2, 2, "auto")),
    ("conv3x3_d2_c256_28", (256, 256, 28, 28, 3, 2, 2, "dilated_s2b")),
    ("conv7x7_c64_56", (64, 64, 56, 56, 7, 3, 1, "auto")),
]


def _switch(on):
    winograd._CHECK_NONFINITE = fft._CHECK_NONFINITE = on


def _alternate(fns, repeat):
    """{name: (median wall ms, median thread CPU ms)}, the callables taking turns."""
    names = list(fns)
    for name in names:
        fns[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeat):
        for name in (names if r % 2 == 0 else names[::-1]):
            t, c = time.perf_counter(), time.thread_time()
            fns[name]()
            cpu[name].append(time.thread_time() - c)
            wall[name].append(time.perf_counter() - t)
    return {name: (statistics.median(wall[name]) * 1e3, statistics.median(cpu[name]) * 1e3)
            for name in names}


def _call(layer, x, out, check):
    def run():
        _switch(check)
        layer(x, out=out)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=31)
    args = ap.parse_args()
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if any(env.values()):
        print(f"# warning: {env} set; unset them for benchmarks")
    engine.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"1 thread, median of {args.repeat} alternating runs, ms (wall / thread CPU)")
    print(f"{'layer':<19} {'algorithm':<13} {'checked':>15} {'bypassed':>15} {'ratio':>11} "
          f"{'one +Inf':>9} {'isfinite':>8}")
    try:
        for name, (c, k, h, w, ks, pad, dil, algorithm) in LAYERS:
            x = rng.standard_normal((1, c, h, w), dtype=np.float32)
            wt = (rng.standard_normal((k, c, ks, ks)) / np.sqrt(c * ks * ks)).astype(np.float32)
            b = rng.standard_normal(k).astype(np.float32)
            layer = engine.Conv2d(wt, b, padding=pad, dilation=dil, activation="relu",
                                  algorithm=algorithm, input_size=(h, w))
            out = np.empty(layer.output_shape(x.shape), np.float32)
            r = _alternate({"checked": _call(layer, x, out, True),
                            "bypassed": _call(layer, x, out, False)}, args.repeat)
            x_inf = x.copy()
            x_inf[0, c // 2, h // 2, w // 2] = np.inf
            inf_ms = _alternate({"inf": _call(layer, x_inf, out, True)}, 11)["inf"][0]
            np_ms = _alternate({"np": lambda: np.isfinite(x).all()}, 101)["np"][0]
            (cw, cc), (bw, bc) = r["checked"], r["bypassed"]
            print(f"{name:<19} {layer.algorithm:<13} {cw:7.3f}/{cc:7.3f} {bw:7.3f}/{bc:7.3f} "
                  f"{cw / bw:5.3f}/{cc / bc:5.3f} {inf_ms:9.3f} {np_ms:8.3f}")
    finally:
        _switch(True)


if __name__ == "__main__":
    main()
