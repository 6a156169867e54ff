"""Whole-model benchmark: MobileNetV1, MobileNetV2, DRN-C-26 and ResNet-50 at 224x224, batch 1.

Run it with the OpenBLAS tuning variables unset (they slow a current OpenBLAS), alone on the
machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_models.py [--threads 1 2]

Each model comes from tests/torch_models.py (random weights, random BatchNorm statistics),
exported to ONNX in a temporary directory (or taken from --model-dir), and run by this engine
(engine.load on the ONNX file), ONNX Runtime (intra_op_num_threads=n, inter_op_num_threads=1)
and PyTorch eager (torch.set_num_threads(n)) on the same input, alternating run by run, median
of --repeat runs after warm-up. The table gives milliseconds, the ratio of this engine's time
to the best peer's (below 1: faster than every peer), the model's GFLOP (direct-convolution
count) and this engine's effective GFLOP/s and CPU/wall ratio (about n for n busy threads).

ResNet-50 is the file the onnx package ships in its test data (light_resnet50.onnx: Caffe2's
ResNet-50 at opset 9, BatchNormalization and Sum nodes, weights made by ConstantOfShape), run
by this engine and ONNX Runtime only.

Peers are optional: a missing torch or onnxruntime is reported as missing. Without torch the
models cannot be built: give --model-dir with NAME.onnx files written earlier by --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import engine  # noqa: E402
from engine.cli import format_table, time_alternating  # noqa: E402

MODELS = ["mobilenet_v1", "mobilenet_v2", "drn_c_26", "resnet50_onnx"]
TITLES = {"mobilenet_v1": "MobileNetV1", "mobilenet_v2": "MobileNetV2",
          "drn_c_26": "DRN-C-26", "resnet50_onnx": "ResNet-50 (onnx test data)"}


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def conv_gflop(path):
    """Direct-convolution GFLOP of an ONNX file's Conv nodes, from ONNX's shape inference."""
    import onnx
    m = onnx.shape_inference.infer_shapes(onnx.load(path))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    dims.update({t.name: list(t.dims) for t in m.graph.initializer})
    total = 0
    for node in m.graph.node:
        if node.op_type == "Conv" and node.output[0] in dims and node.input[1] in dims:
            w = dims[node.input[1]]
            total += 2 * np.prod(dims[node.output[0]]) * np.prod(w[1:])
    return total / 1e9


def prepare(name, directory, size, keep_dir):
    """(onnx path, GFLOP or None, torch module or None) for one model, or a reason it is absent."""
    if name == "resnet50_onnx":
        onnx = optional("onnx")
        if onnx is None:
            return "onnx is missing"
        path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                            "light_resnet50.onnx")
        if size != 224:
            return "a fixed 224x224 input"
        return (path, conv_gflop(path), None) if os.path.exists(path) else f"{path} is missing"
    torch_models = optional("torch_models") if optional("torch") else None
    cached = os.path.join(keep_dir, f"{name}.onnx") if keep_dir else None
    if torch_models is None:
        if cached and os.path.exists(cached):
            meta = cached[:-5] + ".json"
            gflop = json.load(open(meta))["gflop"] if os.path.exists(meta) else None
            return cached, gflop, None
        return "torch is missing: cannot build the model (see --model-dir)"
    module = torch_models.make(name, seed=0)
    gflop = torch_models.conv_flops(module, size) / 1e9
    path = cached if cached else os.path.join(directory, f"{name}.onnx")
    if not (cached and os.path.exists(cached)):
        torch_models.export_onnx(module, path, size)
        if cached:
            with open(cached[:-5] + ".json", "w") as f:
                json.dump({"gflop": gflop, "size": size}, f)
    return path, gflop, module


def peers_for(onnx_path, module, n):
    """{peer: run(x)} for the installed peers at n threads, and {peer: reason} for the rest."""
    peers, missing = {}, {}
    ort = optional("onnxruntime")
    if ort is None:
        missing["onnxruntime"] = "missing"
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        peers["onnxruntime"] = lambda x: sess.run(None, {in_name: x})[0]
    torch = optional("torch")
    if torch is None:
        missing["torch"] = "missing"
    elif module is None:
        missing["torch"] = "no module"
    else:
        torch.set_num_threads(n)

        def run_torch(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()
        peers["torch"] = run_torch
    return peers, missing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeat", type=int, default=11)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--layout", default="auto", choices=["auto", "nchw", "nchwc", "nchw16c"],
                   help="engine.load's layout: the blocked layout where it pays, or forced")
    p.add_argument("--model-dir", default=None,
                   help="take NAME.onnx from here if present; with --keep, write exports here")
    p.add_argument("--keep", action="store_true", help="keep the ONNX exports in --model-dir")
    args = p.parse_args(argv)
    if args.keep and not args.model_dir:
        p.error("--keep needs --model-dir")
    if args.model_dir:
        os.makedirs(args.model_dir, exist_ok=True)

    info = engine.build_info()
    print(f"convengine {info['version']}, OpenMP {'on' if info['openmp'] else 'off'}, "
          f"BLAS {(info.get('blas') or {}).get('internal_api', 'unknown')}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    for peer in ("onnxruntime", "torch"):
        mod = optional(peer)
        print(f"{peer}: {getattr(mod, '__version__', '?') if mod else 'missing'}")
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        print("note: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set and slow OpenBLAS down; run "
              "with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")
    print(f"batch 1, {args.size}x{args.size}, median of {args.repeat} alternating runs after "
          f"{args.warmup} warm-up\n")

    rows, notes = [], []
    saved = engine.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            got = prepare(name, tmp, args.size, args.model_dir if args.model_dir else None)
            if isinstance(got, str):
                notes.append(f"{TITLES[name]}: {got}")
                continue
            onnx_path, gflop, module = got
            try:
                model = engine.load(onnx_path, layout=args.layout)
            except ValueError as e:   # engine.ModelError included: an op it cannot run yet
                notes.append(f"{TITLES[name]}: convengine cannot load it: {e}")
                continue
            x = np.random.default_rng(0).standard_normal(
                (1, 3, args.size, args.size), dtype=np.float32)
            feed = {model.inputs[0].name: x}
            for n in args.threads:
                engine.set_num_threads(n)
                peers, missing = peers_for(onnx_path, module, n)
                ours = next(iter(model.run(feed).values()))
                for peer, fn in peers.items():
                    ref = fn(x)
                    err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
                    if err > 1e-3:
                        notes.append(f"{TITLES[name]} {n}t: output differs from {peer} "
                                     f"(max error {err:.1e} of the output's range)")
                runners = {"convengine": lambda: model.run(feed)}
                runners.update({k: (lambda fn=fn: fn(x)) for k, fn in peers.items()})
                res = time_alternating(runners, args.repeat, args.warmup,
                                       progress_label=f"{TITLES[name]} {n}t")
                med = {k: float(np.median(v["times"])) for k, v in res.items()}
                best_peer = min((med[k] for k in peers), default=None)

                def cell(k):
                    return f"{med[k]:.2f}" if k in med else missing.get(k, "")
                rows.append([
                    TITLES[name], n, cell("convengine"), cell("onnxruntime"), cell("torch"),
                    f"{med['convengine'] / best_peer:.2f}" if best_peer else "n/a",
                    f"{gflop:.2f}" if gflop else "?",
                    f"{gflop / med['convengine'] * 1e3:.1f}" if gflop else "?",
                    f"{res['convengine']['cpu']:.2f}",
                ])
            del model
    engine.set_num_threads(saved)
    print(format_table(["model", "threads", "convengine ms", "onnxruntime ms", "torch ms",
                        "ours / best peer", "GFLOP", "ours GFLOP/s", "ours cpu/wall"], rows))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
