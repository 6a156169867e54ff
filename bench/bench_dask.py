"""Images per second on Dask: one local process against LocalClusters of 1 and 2 workers.

    python bench/bench_dask.py [--images 8192] [--batch-size 256] [--repeat 3] [--model FILE]

The model is the bundled digits network (engine/data, 1x16x16 images) unless --model names a
single-input model file with declared channels, height and width. Every run has 1 kernel thread
per process: "local" is model.run over the batches in this process; "dask, k workers" is
engine.dask.predict on a LocalCluster of k worker processes with 1 thread each, in two forms:

- inputs sent from the client: a NumPy array in this process wrapped by dask.array.from_array,
  so every batch crosses to a worker (what a client holding the data pays on a real cluster);
- inputs made on the workers: each worker builds its own batches (a cheap function of the
  image's position), as workers reading their share of files or of a Zarr store would; only
  predictions return.

The images are that function's for both forms and for the local run (their values do not
change the work).

Times are the median of --repeat computes after one untimed compute that loads the model on
every worker (cluster start-up is not timed). Every result is checked equal to the local run's.
Requires the dask extra (pip install convengine[dask]).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import engine  # noqa: E402
from engine.data import __file__ as _data_init  # noqa: E402

DIGITS_MODEL = os.path.join(os.path.dirname(_data_init), "digits_net.safetensors")


def synthetic_rows(index, shape):
    """Images for positions ``index``: a cheap function of the position, so that a worker can
    make its batches itself and the client the same ones for the reference."""
    size = int(np.prod(shape))
    a = (index[:, None].astype(np.int64) * 7919 + np.arange(size)) % 997
    return (a / np.float32(997)).astype(np.float32).reshape((len(index),) + tuple(shape))


def image_shape(model):
    spec = model.inputs[0]
    if spec.shape is None or any(d is None for d in spec.shape[1:]):
        raise SystemExit(f"--model: input {spec.name!r} must declare C, H and W, got "
                         f"{spec.shape}")
    return tuple(int(d) for d in spec.shape[1:])


def median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", default=DIGITS_MODEL)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)

    import dask.array as da
    import distributed
    import engine.dask as edask

    path = os.path.abspath(args.model)
    model = engine.load(path, num_threads=1)
    shape = image_shape(model)
    x = synthetic_rows(np.arange(args.images), shape)
    name, bs = model.inputs[0].name, args.batch_size
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{os.path.basename(path)}: {args.images} images of {x.shape[1:]}, batches of {bs}, "
          f"1 kernel thread per process; {os.cpu_count()} cores ({cores} usable)")

    def local():
        return np.concatenate([model.run({name: x[i:i + bs]})[model.outputs[0].name]
                               for i in range(0, len(x), bs)])
    ref = local()
    rows = [("local, 1 process", args.images / median_seconds(local, args.repeat))]

    for k in args.workers:
        with distributed.LocalCluster(n_workers=k, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            sent = edask.predict(path, da.from_array(x, chunks=bs), batch_size=bs)
            index = da.arange(args.images, chunks=bs)
            made = index.map_blocks(synthetic_rows, shape, new_axis=[1, 2, 3],
                                    chunks=index.chunks + tuple((d,) for d in shape),
                                    dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32))
            runs = {"inputs sent from the client": sent,
                    "inputs made on the workers": edask.predict(path, made, batch_size=bs)}
            for label, y in runs.items():
                got = y.compute()                 # loads the model on each worker, untimed
                assert np.array_equal(got, ref), f"{label}: predictions differ"
                t = median_seconds(y.compute, args.repeat)
                rows.append((f"dask, {k} worker{'s' if k > 1 else ''}, {label}",
                             args.images / t))
            loads = client.run(edask.process_stats)
            print(f"  {k} worker(s): model loads per worker "
                  f"{sorted(s['loads'] for s in loads.values())}")

    base = rows[0][1]
    width = max(len(r[0]) for r in rows)
    print(f"{'run':<{width}}  {'images/s':>10}  {'vs local':>8}")
    for label, ips in rows:
        print(f"{label:<{width}}  {ips:>10,.0f}  {ips / base:>7.2f}x")


if __name__ == "__main__":
    main()
