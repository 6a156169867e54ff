"""Fit the Winograd tile model of engine/dispatch/winograd.py on this machine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_winograd_tiles.py
        [--repeat 9] [--quick] [--blocked]

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

--blocked times and fits the kernel on channel-blocked tensors (kernels/nchwc_winograd.pyx)
instead, whose GEMMs are the pointwise kernel's: its columns are the tiles rounded up to whole
pointwise tiles of six, and U is read once per strip of tiles (BLOCKED_TILE_MODEL).
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


def features(m, c, k, side, blocked=False):
    """The model's terms for one layer and tile: [GEMM GFLOP, U GB, then the per-tile input
    and output transform counts of each tile size in turn, then the tile elements (one GEMM
    and its work items each, per call)] (ms = features @ constants)."""
    e, t = (m + 2) ** 2, tiles(m, side)
    row = [2.0 * wd.tile_columns(t, blocked) * e * c * k / 1e9,
           4.0 * e * c * k * wd.u_passes(m, c, k, t, blocked) / 1e9]
    for n in TILES:
        row += [t * e * c / 1e6 if n == m else 0.0, t * e * k / 1e6 if n == m else 0.0]
    return row + [e / 1e3]


def blocked_runner(x, w, m):
    """A call of the blocked kernel on x (already blocked) with F(m x m), 3x3 padding 1."""
    from engine.ops import blocked
    from engine.ops.activation import kernel_act
    from engine._kernels import nchwc_winograd as nw
    n, k, c, side = x.shape[0], w.shape[0], w.shape[1], x.shape[2]
    xb = blocked.to_blocked(x)
    upack, bias = blocked.pack_winograd(w, None, m)
    out = np.empty(blocked.blocked_shape((n, k, side, side)), np.float32)
    work = np.empty(blocked.winograd_work_floats(n, c, k, (side, side), m) + 16, np.float32)
    work = work[(-work.ctypes.data % 64) // 4:]
    act = kernel_act(None)
    return lambda: nw.f32_winograd_blocked(xb, c, upack, bias, None, out, m, 1, 1, act, 1,
                                           work)


def measure(layers, repeat, blocked=False):
    engine.set_num_threads(1)
    rng = np.random.default_rng(0)
    times = {}
    for c, k, side in layers:
        x = rng.standard_normal((1, c, side, side), dtype=np.float32)
        w = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        fns = {}
        for m in TILES:
            if blocked:
                fns[m] = blocked_runner(x, w, m)
                continue
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


def model_ms(row, coef, blocked=False):
    """A layer's estimated ms from its features: the GEMM and U terms added, or on blocks the
    larger of the two (BLOCKED_TILE_MODEL's overlap)."""
    gemm, u = row[0] * coef[0], row[1] * coef[1]
    return (max(gemm, u) if blocked else gemm + u) + float(np.dot(row[2:], coef[2:]))


def fit(times, blocked=False):
    """The constants, by non-negative least squares on the relative error; on blocks, where
    the GEMM term is max(GFLOP * G, GB * U), with G and U searched on a grid and the rest
    fitted for each (G, U), keeping the pair whose picks lose least."""
    from scipy.optimize import nnls
    keys = sorted(times)
    a = np.array([features(m, c, k, s, blocked) for c, k, s, m in keys])
    t = np.array([times[key] for key in keys])
    if not blocked:
        coef, _ = nnls(a / t[:, None], np.ones(len(t)))
        return coef
    layers = sorted({key[:3] for key in keys})
    best = None
    for g in np.arange(6.0, 12.01, 0.25):
        for u in np.arange(10.0, 80.01, 2.5):
            core = np.maximum(a[:, 0] * g, a[:, 1] * u)[:, None]
            rest, _ = nnls(np.hstack([core, a[:, 2:]]) / t[:, None], np.ones(len(t)))
            coef = np.concatenate([[g * rest[0], u * rest[0]], rest[1:]])
            lost = [lost_by(times, coef, layer, True) for layer in layers]
            key = (max(lost), np.mean(lost))
            if best is None or key < best[0]:
                best = (key, coef)
    return best[1]


def picks(coef, c, k, side, blocked=False):
    cost = {m: model_ms(features(m, c, k, side, blocked), coef, blocked) for m in TILES}
    return min(cost, key=lambda m: (cost[m], m))


def lost_by(times, coef, layer, blocked):
    t = {m: times[layer + (m,)] for m in TILES}
    return t[picks(coef, *layer, blocked)] / min(t.values()) - 1


def layers_order(layer):
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="six layers only (a smoke run)")
    ap.add_argument("--save", help="write the times to this JSON file")
    ap.add_argument("--load", help="fit the times of an earlier --save instead of measuring")
    ap.add_argument("--blocked", action="store_true",
                    help="the kernel on channel-blocked tensors (BLOCKED_TILE_MODEL)")
    args = ap.parse_args(argv)
    layers = QUICK if args.quick else LAYERS
    if args.load:
        with open(args.load) as f:
            times = {tuple(key): ms for key, ms in json.load(f)}
        layers = sorted({key[:3] for key in times}, key=layers_order)
    else:
        times = measure(layers, args.repeat, args.blocked)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(sorted(times.items()), f)
    coef = fit(times, args.blocked)
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
        mine = picks(coef, c, k, side, args.blocked)
        used = wd.rank_winograd_tiles(c, k, 1, lambda m: tiles(m, side), args.blocked)[0][0]
        lost_fit.append(t[mine] / t[best] - 1)
        lost_use.append(t[used] / t[best] - 1)
        print(f"{f'{c}->{k} {side}x{side}':>18}  {t[2]:8.3f} {t[4]:8.3f} {t[6]:8.3f}  "
              f"F({best})  F({mine})    F({used})    {lost_fit[-1]:6.1%} / {lost_use[-1]:6.1%}")
    print(f"# worst loss: fitted {max(lost_fit):.1%}, in use {max(lost_use):.1%}; mean: fitted "
          f"{np.mean(lost_fit):.1%}, in use {np.mean(lost_use):.1%}")


if __name__ == "__main__":
    main()
