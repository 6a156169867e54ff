"""What tuning gains over the rules: each model tuned on this machine (engine.tune), then the
rules' plan and the tuned plan timed alternating, run by run, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_tune.py \
        [--models drn_c_26 resnet50 mobilenet_v2] [--threads 1 2] [--repeat 15] [--model-dir DIR]

DRN-C-26 and MobileNetV2 come from tests/torch_models.py, ResNet-50 from torchvision
(tests/zoo.py), random weights, 224x224, batch 1, exported to ONNX (or read from --model-dir as
NAME.onnx). The wisdom is written to a temporary file per thread count. The table gives the
layers tuning changed, both medians and their ratio (tuned / rules: below 1, tuning gained).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import engine  # noqa: E402
from engine.timing import format_table, time_alternating  # noqa: E402

TORCH_MODELS = ("drn_c_26", "mobilenet_v2", "mobilenet_v1")
ZOO_MODELS = ("resnet50", "resnet18")


def model_file(name, directory):
    path = os.path.join(directory, f"{name}.onnx")
    if os.path.exists(path):
        return path
    if name in TORCH_MODELS:
        import torch_models
        torch_models.export_onnx(torch_models.make(name), path)
    else:
        import zoo
        with open(path, "wb") as f:
            f.write(zoo.export(name, 17))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["drn_c_26", "resnet50", "mobilenet_v2"],
                   choices=TORCH_MODELS + ZOO_MODELS)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--tune-repeat", type=int, default=5)
    p.add_argument("--model-dir", default=None)
    args = p.parse_args(argv)
    directory = args.model_dir or tempfile.mkdtemp()
    os.makedirs(directory, exist_ok=True)
    rows = []
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = model_file(name, directory)
            for n in args.threads:
                engine.set_num_threads(n)
                wisdom = os.path.join(tmp, f"{name}_{n}.json")
                result = engine.tune(path, (1, 3, 224, 224), path=wisdom,
                                     repeat=args.tune_repeat)
                changed = sum(v["algorithm"] != v["rule"] for v in result["layers"].values())
                ruled = engine.load(path, wisdom=False)
                tuned = engine.load(path, wisdom=wisdom)
                feeds = {ruled.inputs[0].name: x}
                res = time_alternating({"rules": lambda: ruled.run(feeds),
                                        "tuned": lambda: tuned.run(feeds)},
                                       args.repeat, warmup=2, cpu_runs=0)
                a, b = (float(np.median(res[k]["times"])) for k in ("rules", "tuned"))
                rows.append([name, n, f"{len(result['layers'])}", f"{changed}", f"{a:.2f}",
                             f"{b:.2f}", f"{b / a:.3f}"])
                print(format_table(["model", "threads", "layers", "changed", "rules ms",
                                    "tuned ms", "tuned/rules"], rows[-1:]), flush=True)
    print()
    print(f"convengine {engine.__version__}, medians of {args.repeat} alternating runs")
    print(format_table(["model", "threads", "layers", "changed", "rules ms", "tuned ms",
                        "tuned/rules"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
