"""A batch run whole against the same batch in chunks of 1, 2 and 4 images, beside ONNX Runtime
(engine/dispatch/batch.py MIN_CHUNK_FLOPS and MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE: which chunk the
engine picks).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_batch.py \
        [--models mobilenet_v2 resnet50] [--batch 8 32] [--threads 2] [--model-dir DIR]

Models as bench/bench_zoo.py makes them (NAME_op17.onnx read from --model-dir when there).
Each chunk size is a model of its own, loaded with MIN_CHUNK_FLOPS set so that it picks that
size; they and ONNX Runtime alternate run by run, median of --repeat runs after warm-up, in
milliseconds. "auto" is the engine's own choice.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import engine  # noqa: E402
from engine.cli import format_table, time_alternating  # noqa: E402
from engine.dispatch import batch as batch_rules  # noqa: E402
from bench_zoo import export  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    p.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--threads", nargs="+", type=int, default=[2])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model-dir", default=None)
    args = p.parse_args(argv)
    import onnxruntime as ort
    rows = []
    auto = batch_rules.MIN_CHUNK_FLOPS
    auto_bytes = batch_rules.MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = export(name, 17, args.model_dir or tmp)
            for n in args.batch:
                for nt in args.threads:
                    models = {}
                    for label, per in (("whole", None), ("1", 1), ("2", 2), ("4", 4),
                                       ("auto", 0)):
                        model = engine.load(path, num_threads=nt)
                        flops = model._flops(model._infer(
                            {model.inputs[0].name: (1,) + tuple(model.inputs[0].shape[1:])})[0])
                        batch_rules.MIN_CHUNK_FLOPS = (
                            auto if per == 0 else 1e30 if per is None else per * flops * 0.999)
                        batch_rules.MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE = auto_bytes if per == 0 \
                            else 0.0
                        shape = (n,) + tuple(model.inputs[0].shape[1:])
                        model._split((shape,))       # decided now, with this threshold
                        models[label] = model
                    batch_rules.MIN_CHUNK_FLOPS = auto
                    batch_rules.MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE = auto_bytes
                    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
                    feed = {models["whole"].inputs[0].name: x}
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads, opts.inter_op_num_threads = nt, 1
                    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                    fns = {k: (lambda m=m: m.run(feed)) for k, m in models.items()}
                    fns["onnxruntime"] = lambda: sess.run(None, feed)
                    res = time_alternating(fns, args.repeat, args.warmup,
                                           progress_label=f"{name} batch {n} {nt}t")
                    med = {k: float(np.median(v["times"])) for k, v in res.items()}
                    split = models["auto"]._last_split
                    rows.append([name, n, nt] + [f"{med[k]:.1f}" for k in
                                                 ("whole", "1", "2", "4", "auto",
                                                  "onnxruntime")]
                                + [split[1] if split else "whole",
                                   f"{med['auto'] / med['onnxruntime']:.2f}"])
    print(format_table(["model", "batch", "threads", "whole ms", "chunks of 1", "of 2", "of 4",
                        "auto", "onnxruntime", "auto picks", "auto / ORT"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
