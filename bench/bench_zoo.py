"""torchvision's model zoo beside ONNX Runtime: does each model load, does it agree, how fast.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_zoo.py \
        [--models resnet18 efficientnet_b0 ...] [--threads 1 2] [--opset 17] [--model-dir DIR]

Each model of tests/zoo.py (random weights and BatchNorm statistics, nothing downloaded) is
exported by torch.onnx (TorchScript exporter, free batch axis) at --opset, or read from
--model-dir as NAME_opOPSET.onnx when present (exports are written there). Batch 1 at the
model's full input size. For every thread count: this engine (engine.load on the file) and ONNX
Runtime (intra_op_num_threads=n, inter_op_num_threads=1) alternate run by run, median of
--repeat runs after warm-up. The table gives the relative error (max |ours - ORT| / max |ORT|),
both medians and the ratio ours / ONNX Runtime (below 1: faster). A model that fails to load
gets its error message instead.

--busy F: a second process keeps the last core busy for F of every 10 ms while the models run,
as another service on a shared machine would: a kernel whose threads all wait for the slowest
one then loses a scheduler slice to each of its calls that the neighbour interrupts.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import engine  # noqa: E402
from engine.cli import format_table, time_alternating  # noqa: E402


def export(name, opset, directory):
    import zoo
    path = os.path.join(directory, f"{name}_op{opset}.onnx")
    if not os.path.exists(path):
        data = zoo.export(name, opset)
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
    return path


NEIGHBOUR = """
import os, sys, time
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
busy = float(sys.argv[1]) * 0.010
while True:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < busy:
        pass
    time.sleep(0.010 - busy)
"""


def start_neighbour(busy: float):
    """A process busy for `busy` of every 10 ms on the last core (None for 0)."""
    if not 0 <= busy < 1:
        raise SystemExit(f"--busy must be in [0, 1), got {busy}")
    return subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(busy)]) if busy else None


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    import zoo
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(zoo.MODELS), choices=list(zoo.MODELS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--repeat", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model-dir", default=None, help="read and write the exports here")
    p.add_argument("--batch", type=int, default=1,
                   help="images per run (the exports' batch dimension is free)")
    p.add_argument("--busy", type=float, default=0.0,
                   help="keep the last core busy this fraction of the time (a shared machine)")
    args = p.parse_args(argv)
    import onnxruntime
    print(f"convengine {engine.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"opset {args.opset}, batch {args.batch}, median of {args.repeat} alternating runs "
          f"after "
          f"{args.warmup} warm-up" + (f", the last core {args.busy:.0%} busy" if args.busy
                                      else ""))
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        print("note: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set; run with env -u ...")
    rows, ratios = [], {n: [] for n in args.threads}
    saved = engine.get_num_threads()
    neighbour = start_neighbour(args.busy)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = args.model_dir or tmp
            os.makedirs(directory, exist_ok=True)
            for name in args.models:
                try:
                    path = export(name, args.opset, directory)
                except Exception as e:     # an export torch cannot do is not the engine's
                    rows.append([name, "export failed", str(e)[:60]] + [""] * 6)
                    continue
                try:
                    model = engine.load(path)
                except ValueError as e:
                    rows.append([name, "no", str(e)[:90]] + [""] * 6)
                    continue
                x = np.random.default_rng(0).standard_normal(zoo.input_shape(name, args.batch),
                                                             np.float32)
                row = [name, "yes"]
                for k, n in enumerate(args.threads):
                    engine.set_num_threads(n)
                    sess = ort_session(path, n)
                    ours = model.run({"x": x})["y"]
                    ref = sess.run(None, {"x": x})[0]
                    if k == 0:
                        err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30)
                        row.append(f"{err:.1e}")
                    res = time_alternating({"ours": lambda: model.run({"x": x}),
                                            "ort": lambda: sess.run(None, {"x": x})},
                                           args.repeat, args.warmup,
                                           progress_label=f"{name} {n}t")
                    ms = {key: float(np.median(v["times"])) for key, v in res.items()}
                    ratios[n].append(ms["ours"] / ms["ort"])
                    row += [f"{ms['ours']:.1f}", f"{ms['ort']:.1f}",
                            f"{ms['ours'] / ms['ort']:.2f}"]
                    del sess
                rows.append(row)
                del model
    finally:
        if neighbour is not None:
            neighbour.kill()
    engine.set_num_threads(saved)
    header = ["model", "loads", "rel. error"]
    for n in args.threads:
        header += [f"ours ms {n}t", f"ORT ms {n}t", f"ratio {n}t"]
    print(format_table(header, rows))
    for n, r in ratios.items():
        if r:
            print(f"{n} thread(s): geometric mean of ours / ONNX Runtime over {len(r)} models: "
                  f"{float(np.exp(np.mean(np.log(r)))):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
