"""The kernels' thread pool against OpenMP regions, on a quiet machine and beside a busy one.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_pool.py \
        [--models mobilenet_v2 resnet50 ...] [--threads 2] [--busy 0 0.3] [--model-dir DIR]

For each model of tests/zoo.py (exported as bench/bench_zoo.py does) and each --busy fraction
(a second process keeps the last core busy that fraction of every 10 ms, bench_zoo.py's
neighbour), three runners take turns in one process: the engine with its pool
(kernels/_pool.h), the engine with every pooled job run as an OpenMP region instead (each
thread its static share; the region ends when the last thread does,
engine._kernels._pool.use_openmp_regions), and ONNX Runtime. Medians and ratios to ONNX
Runtime; the results are the same bits either way (tests/test_thread_pool.py).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import engine  # noqa: E402
from bench_zoo import export, ort_session, start_neighbour  # noqa: E402
from engine._kernels import _pool  # noqa: E402
from engine.timing import format_table, time_alternating  # noqa: E402


def main(argv=None) -> int:
    import zoo
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(zoo.MODELS),
                   default=["mobilenet_v2", "efficientnet_b0", "regnet_x_400mf", "resnet50"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", type=float, nargs="+", default=[0.0, 0.3])
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--model-dir", required=True, help="read and write the exports here")
    args = p.parse_args(argv)
    rows = []
    os.makedirs(args.model_dir, exist_ok=True)
    for name in args.models:
        path = export(name, 17, args.model_dir)
        model = engine.load(path, num_threads=args.threads)
        sess = ort_session(path, args.threads)
        x = np.random.default_rng(0).standard_normal(zoo.input_shape(name, 1), np.float32)

        def ours(openmp):
            def run():
                _pool.use_openmp_regions(openmp)
                model.run({"x": x})
            return run

        for busy in args.busy:
            neighbour = start_neighbour(busy)
            try:
                res = time_alternating({"pool": ours(False), "openmp": ours(True),
                                        "ort": lambda: sess.run(None, {"x": x})},
                                       args.repeat, 2, progress_label=f"{name} {busy:.0%}",
                                       cpu_runs=0, block=3)
            finally:
                _pool.use_openmp_regions(False)
                if neighbour is not None:
                    neighbour.kill()
            ms = {k: float(np.median(v["times"])) for k, v in res.items()}
            rows.append([name, f"{busy:.0%}", f"{ms['pool']:.2f}", f"{ms['openmp']:.2f}",
                         f"{ms['ort']:.2f}", f"{ms['pool'] / ms['ort']:.2f}",
                         f"{ms['openmp'] / ms['ort']:.2f}"])
    print(f"{args.threads} threads, medians of {args.repeat} runs in turns")
    print(format_table(["model", "busy", "pool ms", "OpenMP ms", "ORT ms", "pool / ORT",
                        "OpenMP / ORT"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
