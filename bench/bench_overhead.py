"""Per-node cost of the graph runner: the time of one Model.run divided by its steps, on chains
of layers so small that their kernels take a fraction of a microsecond, so what is measured is
the runner's own work per node (the step's Python call, argument checks in the Cython kernel,
starting its parallel region). The target is under 5 us per node.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_overhead.py [--threads 1 2]

Chains: depthwise 3x3 and pointwise layers alternating on 16 channels of 2x2 (run in the
channel-blocked layout), the same with the layout off (NCHW algorithms), and Relu/Add
elementwise steps on 64 floats.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from engine.graph import Graph, Model, Node, TensorSpec


def separable_chain(layers: int, c: int = 16):
    rng = np.random.default_rng(0)
    nodes, consts, prev = [], {}, "x"
    for i in range(layers):
        w = f"w{i}"
        if i % 2 == 0:
            consts[w] = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
            nodes.append(Node("Conv", f"dw{i}", [prev, w], [f"t{i}"],
                              {"pads": [1, 1, 1, 1], "group": c}))
        else:
            consts[w] = (rng.standard_normal((c, c, 1, 1)) * 0.2).astype(np.float32)
            nodes.append(Node("Conv", f"pw{i}", [prev, w], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(Node("GlobalAveragePool", "gap", [prev], ["y"]))
    return Graph(nodes, [TensorSpec("x", (1, c, 2, 2), "float32")],
                 [TensorSpec("y", None, "float32")], consts), (1, c, 2, 2)


def elementwise_chain(layers: int):
    nodes, prev = [], "x"
    for i in range(layers):
        op = "Relu" if i % 2 == 0 else "Add"
        ins = [prev] if op == "Relu" else [prev, "x"]
        nodes.append(Node(op, f"n{i}", ins, [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(Node("Identity", "out", [prev], ["y"]))
    return Graph(nodes, [TensorSpec("x", (64,), "float32")],
                 [TensorSpec("y", None, "float32")], {}), (64,)


def per_node_us(model: Model, shape, threads: int, repeat: int) -> float:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    feeds = {"x": x}
    model.num_threads = threads
    for _ in range(200):
        model.run(feeds)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.run(feeds)
        times.append(time.perf_counter() - t0)
    steps = len(model._last_plan.run_fns)
    return statistics.median(times) / steps * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--layers", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    rows = []
    graph, shape = separable_chain(args.layers)
    blocked = Model(graph)
    nchw = Model(separable_chain(args.layers)[0], layout="nchw")
    elem_graph, elem_shape = elementwise_chain(args.layers)
    elem = Model(elem_graph)
    for t in args.threads:
        rows.append(("dw/pw chain, NCHWc", t, per_node_us(blocked, shape, t, args.repeat)))
        rows.append(("dw/pw chain, NCHW", t, per_node_us(nchw, shape, t, args.repeat)))
        rows.append(("Relu/Add chain", t, per_node_us(elem, elem_shape, t, args.repeat)))
    print(f"{'chain':<24} {'threads':>7} {'us per node':>12}")
    for name, t, us in rows:
        print(f"{name:<24} {t:>7} {us:>12.2f}")


if __name__ == "__main__":
    main()
