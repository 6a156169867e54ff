"""The ``convengine`` command."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _median_ms(fn, repeat=7):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def cmd_demo(args) -> int:
    """A built-in layer benchmark: each layer planned once, checked, timed."""
    import engine
    rng = np.random.default_rng(0)
    layers = [
        ("conv3x3 64->64 56x56", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
        ("conv3x3 s2 64->128 56x56", (1, 64, 56, 56), (128, 64, 3, 3), dict(padding=1, stride=2)),
        ("pw1x1 24->144 56x56", (1, 24, 56, 56), (144, 24, 1, 1), {}),
        ("conv3x3 d2 128->128 28x28", (1, 128, 28, 28), (128, 128, 3, 3),
         dict(padding=2, dilation=2)),
    ]
    print(f"convengine {engine.__version__}, {engine.get_num_threads()} threads")
    print(f"{'layer':<28} {'algorithm':<14} {'ms':>8} {'GFLOP/s':>8} {'max err vs direct':>18}")
    for name, xs, ws, kw in layers:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32) * 0.1
        layer = engine.Conv2d(w, input_size=xs[2:], **kw)
        y = layer(x)
        ref = engine.Conv2d(w, algorithm="im2col", **kw)(x)
        ms = _median_ms(lambda: layer(x))
        flops = 2.0 * y.size * ws[1] * ws[2] * ws[3]
        print(f"{name:<28} {layer.algorithm:<14} {ms:8.3f} {flops / ms / 1e6:8.1f} "
              f"{float(np.abs(y - ref).max()):18.2e}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the built-in demo")
    args = parser.parse_args(argv)
    return {"demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
