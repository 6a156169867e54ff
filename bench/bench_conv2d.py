"""The 2-D convolution rows of the layer suite (shared/BENCHMARKS.md): the planned engine layer
next to ONNX Runtime and PyTorch, 1 and 2 threads.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_conv2d.py [--threads 1 2]
        [--repeat 15] [--only conv3x3] [--algorithm winograd_f23]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import Case, geomean, onnx_single_node, run_cases  # noqa: E402

import engine  # noqa: E402

# name: (C, K, H, W, kernel, stride, pad, dilation, groups)
LAYERS = {
    "conv3x3_c64_56": (64, 64, 56, 56, 3, 1, 1, 1, 1),
    "conv3x3_c128_28": (128, 128, 28, 28, 3, 1, 1, 1, 1),
    "conv3x3_c256_14": (256, 256, 14, 14, 3, 1, 1, 1, 1),
    "conv3x3_d2_c256_28": (256, 256, 28, 28, 3, 1, 2, 2, 1),
    "conv3x3_d4_c512_28": (512, 512, 28, 28, 3, 1, 4, 4, 1),
    "conv3x3_s2_c64_56": (64, 128, 56, 56, 3, 2, 1, 1, 1),
    "conv7x7_s2_c3_224": (3, 64, 224, 224, 7, 2, 3, 1, 1),
    "dw3x3_c144_56": (144, 144, 56, 56, 3, 1, 1, 1, 144),
    "dw3x3_s2_c96_112": (96, 96, 112, 112, 3, 2, 1, 1, 96),
    "pw1x1_c24_144_56": (24, 144, 56, 56, 1, 1, 0, 1, 1),
    "group3x3_g8_c128_28": (128, 128, 28, 28, 3, 1, 1, 1, 8),
}
# The five 3x3 stride-1 layers whose geometric-mean ratio to ONNX Runtime is the target.
TARGET_SET = ["conv3x3_c64_56", "conv3x3_c128_28", "conv3x3_c256_14", "conv3x3_d2_c256_28",
              "conv3x3_d4_c512_28"]


def make_case(name, spec, algorithm="auto"):
    c, k, h, w, ks, s, p, d, g = spec
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    wt = (rng.standard_normal((k, c // g, ks, ks)) / np.sqrt(c // g * ks * ks)).astype(np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    layer = engine.Conv2d(wt, b, s, p, d, g, input_size=(h, w), algorithm=algorithm)
    oh, ow = layer.output_shape(x.shape)[2:]
    flops = 2.0 * k * oh * ow * (c // g) * ks * ks
    out = np.empty(layer.output_shape(x.shape), np.float32)

    model, feeds = onnx_single_node(
        "Conv", [("x", x)], [("w", wt), ("b", b)],
        dict(kernel_shape=[ks, ks], strides=[s, s], pads=[p] * 4, dilations=[d, d], group=g))

    def make_torch():
        import torch
        tx, tw, tb = map(torch.from_numpy, (x, wt, b))
        fn = torch.nn.functional.conv2d

        def run():
            with torch.no_grad():
                return fn(tx, tw, tb, s, p, d, g)
        return run

    return Case(name, flops, lambda: (lambda: layer(x, out=out)), model, feeds, make_torch,
                note=layer.algorithm)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", default="", help="substring of the layer names to run")
    ap.add_argument("--algorithm", default="auto", help="force one algorithm where it applies")
    args = ap.parse_args(argv)
    cases = []
    for name, spec in LAYERS.items():
        if args.only and args.only not in name:
            continue
        try:
            cases.append(make_case(name, spec, args.algorithm))
        except ValueError as e:
            print(f"# {name}: {e}")
    results = run_cases(cases, args.threads, args.repeat)
    for t in args.threads:
        rows = {r["case"]: r for r in results if r["threads"] == t}
        ort = [rows[n]["engine_ms"] / rows[n]["onnxruntime"] for n in TARGET_SET
               if n in rows and "onnxruntime" in rows[n]]
        if len(ort) == len(TARGET_SET):
            print(f"# {t} thread(s): geomean engine/ONNX Runtime over the five 3x3 stride-1 "
                  f"layers: {geomean(ort):.3f}")
        worst = max((r["engine_ms"] / r["onnxruntime"], r["case"]) for r in rows.values()
                    if "onnxruntime" in r) if rows else None
        if worst:
            print(f"# {t} thread(s): worst layer vs ONNX Runtime: {worst[1]} {worst[0]:.2f}x")


if __name__ == "__main__":
    main()
