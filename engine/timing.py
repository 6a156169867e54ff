"""Timing helpers shared by ``convengine bench``, the algorithm lab and the bench/ scripts:
alternating runs of several runtimes, medians, a progress bar and plain text tables."""
from __future__ import annotations

import sys
import time

import numpy as np


def percentile(times, q):
    return float(np.percentile(np.asarray(times), q))


class Progress:
    """A progress bar on stderr (tqdm's), shown only for runs long enough to need it."""

    def __init__(self, total, label, enabled=True, stream=None):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=label, disable=not (enabled and total > 0),
                        file=stream or sys.stderr, leave=False, dynamic_ncols=True)

    def step(self, n=1):
        self.bar.update(n)

    def close(self):
        self.bar.close()


# Untimed calls open each turn when runtimes alternate, for at least this long. After a
# two-thread run ONNX Runtime's pool keeps a second core busy for 50-60 ms (process CPU time in
# 10 ms slices after one ResNet-18 run); OpenMP pools spin a few ms. With turns opening on 50 ms
# of untimed calls, convengine's two-thread ResNet-18 took 25.0 ms against 21.4 ms with 200 ms
# (21.7 ms alone); idling through the spin instead leaves the next runs slow from the cold
# start.
SETTLE_SECONDS = 0.2


def time_alternating(runners, repeat, warmup=1, progress_label=None, min_progress_seconds=2.0,
                     cpu_runs=2, block=1, settle=SETTLE_SECONDS):
    """Time each callable in ``runners`` (dict name -> fn) ``repeat`` times, interleaved.

    Each round gives every runner a turn, in an order rotated by one each round, so slow drifts
    of the machine (other load, clock changes) fall on all runners alike. A turn starts with
    untimed calls for at least ``settle`` seconds (one at least; none with 0 or a single
    runner), long enough for the previous runtime's idle worker threads (OpenMP, ONNX Runtime's
    pool) to stop spinning on the cores, which no user running only one of them would see; then
    ``block`` timed calls. Returns
    {name: {"times": [ms, ...], "cpu": process CPU time / wall time}}. The CPU ratio, about the
    number of cores a runner keeps busy, is measured in ``cpu_runs`` extra runs of each runner
    alone after a pause: during the interleaved rounds another runtime's idle worker threads
    may still be spinning and would be counted. A progress bar goes to stderr when the timed
    part is expected to take longer than ``min_progress_seconds``.
    """
    names = list(runners)
    t0 = time.perf_counter()
    for _ in range(warmup):
        for name in names:
            runners[name]()
    per_round = (time.perf_counter() - t0) / max(warmup, 1)
    long_run = warmup > 0 and per_round * repeat > min_progress_seconds
    rounds = -(-repeat // block)
    settle = settle if len(names) > 1 else 0
    progress = Progress(rounds * len(names), progress_label or "timing",
                        enabled=bool(progress_label) and long_run)
    result = {name: {"times": [], "cpu": float("nan")} for name in names}
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if settle:
                    t_end = time.perf_counter() + settle
                    runners[name]()
                    while time.perf_counter() < t_end:
                        runners[name]()
                for _ in range(min(block, repeat - r * block)):
                    t = time.perf_counter()
                    runners[name]()
                    result[name]["times"].append((time.perf_counter() - t) * 1e3)
                progress.step()
    finally:
        progress.close()
    for name in names if cpu_runs > 0 else ():
        time.sleep(0.05)   # longer than the spin-wait of OpenMP and ONNX Runtime thread pools
        c, t = time.process_time(), time.perf_counter()
        for _ in range(cpu_runs):
            runners[name]()
        wall = time.perf_counter() - t
        result[name]["cpu"] = (time.process_time() - c) / wall if wall > 0 else float("nan")
    return result


def format_table(headers, rows, aligns=None):
    """Plain text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
