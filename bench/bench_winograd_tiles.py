"""Fit the Winograd tile model of engine/dispatch/winograd.py on this machine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_winograd_tiles.py
        [--repeat 9] [--quick]

Times F(2x2,3x3), F(4x4,3x3) and F(6x6,3x3) on one thread over a set of 3x3 stride-1 layers
(square ones from 16 to 512 channels on 7x7 to 224x224 maps, and layers with 4x fewer or 2-4x
more output than input channels: DenseNet's 128->32, SqueezeNet's and Inception's expanding
layers), alternating the three tiles run by run, medians. It then fits the model's constants

    GEMM flops over the columns the micro-kernel computes * G + U bytes * U
        + tiles * (m+2)^2 * (C * In[m] + K * Out[m]) + (m+2)^2 * Call

by non-negative least squares on the relative error, and prints them, the constants in use,
and for each layer the fastest tile, the tile each set of constants picks and the time lost by
that pick. Paste the printed constants into engine/dispatch/winograd.py for this build's
vector width.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import time_alternating  # noqa: E402

import engine  # noqa: E402
from engine.dispatch import winograd as wd  # noqa: E402
from engine.dispatch.conv import vector_floats  # noqa: E402

# (C, K, map side)
SQUARE = [(16, 224), (64, 224), (32, 112), (64, 112), (128, 112), (64, 56), (128, 56),
          (256, 56), (64, 28), (128, 28), (256, 28), (512, 28), (64, 14), (128, 14), (256, 14),
          (512, 14), (256, 7), (512, 7)]
SHAPED = [(128, 32, 56), (128, 32, 28), (128, 32, 14), (128, 32, 7), (16, 64, 55),
          (32, 128, 27), (48, 192, 13), (64, 256, 13), (64, 96, 35), (96, 96, 35),
          (192, 384, 12), (512, 128, 7), (64, 128, 56), (256, 512, 14), (96, 48, 28)]
LAYERS = [(c, c, s) for c, s in SQUARE] + SHAPED
QUICK = [(64, 64, 56), (128, 128, 28), (256, 256, 14), (512, 512, 7), (128, 32, 28),
         (64, 64, 224)]
TILES = (2, 4, 6)


def tiles(m, side):
    return (-(-side // m)) ** 2


def features(m, c, k, side):
    """The model's terms for one layer and tile: [GEMM GFLOP, U GB, then the per-tile input
    and output transform counts of each tile size in turn, then the tile elements (one GEMM
    and its work items each, per call)] (ms = features @ constants)."""
    e, t = (m + 2) ** 2, tiles(m, side)
    row = [2.0 * wd.gemm_columns(t) * e * c * k / 1e9, 4.0 * e * c * k / 1e9]
    for n in TILES:
        row += [t * e * c / 1e6 if n == m else 0.0, t * e * k / 1e6 if n == m else 0.0]
    return row + [e / 1e3]


def measure(layers, repeat):
    engine.set_num_threads(1)
    rng = np.random.default_rng(0)
    times = {}
    for c, k, side in layers:
        x = rng.standard_normal((1, c, side, side), dtype=np.float32)
        w = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        fns = {}
        for m in TILES:
            layer = engine.Conv2d(w, None, 1, 1, algorithm=wd.TILE_ALGORITHMS[m],
                                  input_size=(side, side))
            out = np.empty(layer.output_shape(x.shape), np.float32)
            fns[m] = (lambda layer, out: lambda: layer(x, out=out))(layer, out)
        med = {m: v[0] for m, v in time_alternating(fns, repeat).items()}
        for m in TILES:
            times[(c, k, side, m)] = med[m]
        print(f"# {c}->{k} {side}x{side}: " + ", ".join(f"F({m}) {med[m]:.3f}" for m in TILES),
              flush=True)
    return times


def fit(times):
    from scipy.optimize import nnls
    keys = sorted(times)
    a = np.array([features(m, c, k, s) for c, k, s, m in keys])
    t = np.array([times[key] for key in keys])
    coef, _ = nnls(a / t[:, None], np.ones(len(t)))
    return coef


def picks(coef, c, k, side):
    cost = {m: float(np.dot(features(m, c, k, side), coef)) for m in TILES}
    return min(cost, key=lambda m: (cost[m], m))


def layers_order(layer):
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="six layers only (a smoke run)")
    ap.add_argument("--save", help="write the times to this JSON file")
    ap.add_argument("--load", help="fit the times of an earlier --save instead of measuring")
    args = ap.parse_args(argv)
    layers = QUICK if args.quick else LAYERS
    if args.load:
        with open(args.load) as f:
            times = {tuple(key): ms for key, ms in json.load(f)}
        layers = sorted({key[:3] for key in times}, key=layers_order)
    else:
        times = measure(layers, args.repeat)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(sorted(times.items()), f)
    coef = fit(times)
    print(f"# {vector_floats()}-float build, one thread, median of {args.repeat} alternating "
          f"runs; fitted constants:")
    print(f"GEMM_MS_PER_GFLOP = {coef[0]:.3g}")
    print(f"U_MS_PER_GB = {coef[1]:.3g}")
    print("INPUT_NS = {" + ", ".join(f"{m}: {coef[2 + 2 * i]:.3g}"
                                     for i, m in enumerate(TILES)) + "}")
    print("OUTPUT_NS = {" + ", ".join(f"{m}: {coef[3 + 2 * i]:.3g}"
                                      for i, m in enumerate(TILES)) + "}")
    print(f"ELEMENT_US = {coef[-1]:.3g}")
    print(f"{'layer':>18}  {'F(2) ms':>8} {'F(4) ms':>8} {'F(6) ms':>8}  best  fitted  in use"
          f"  lost by fitted / in use")
    lost_fit, lost_use = [], []
    for c, k, side in layers:
        t = {m: times[(c, k, side, m)] for m in TILES}
        best = min(t, key=t.get)
        mine = picks(coef, c, k, side)
        used = wd.rank_winograd_tiles(c, k, 1, lambda m: tiles(m, side))[0][0]
        lost_fit.append(t[mine] / t[best] - 1)
        lost_use.append(t[used] / t[best] - 1)
        print(f"{f'{c}->{k} {side}x{side}':>18}  {t[2]:8.3f} {t[4]:8.3f} {t[6]:8.3f}  "
              f"F({best})  F({mine})    F({used})    {lost_fit[-1]:6.1%} / {lost_use[-1]:6.1%}")
    print(f"# worst loss: fitted {max(lost_fit):.1%}, in use {max(lost_use):.1%}; mean: fitted "
          f"{np.mean(lost_fit):.1%}, in use {np.mean(lost_use):.1%}")


if __name__ == "__main__":
    main()
