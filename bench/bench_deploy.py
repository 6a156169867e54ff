"""What deploying a model costs: cold start (import + load + first run) and resident memory
after 20 runs, each figure from a fresh process, the engine beside ONNX Runtime.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_deploy.py \\
        --model /path/resnet50.onnx [--model ...] [--repeat 5] [--threads 1]

For each ONNX model the engine runs it from the .onnx file, from the native file
(model.save) and from the native file with its transformed weights (save(transformed=True)),
both written next to a temporary copy first; ONNX Runtime runs the .onnx file. The runtimes
alternate, process after process, and the medians are printed: seconds for import, load,
first run and their sum, and RSS (MB, /proc/self/statm) after 20 runs. Also `import engine`
alone. "idle ms": the CPU time the runtime's own threads use in the 100 ms after a run returns
(their spin-wait; median of 5), worth measuring with --threads 2. Input: unit-normal, the
model's declared shape with a free dimension taken as 1. The engine's bytecode is compiled
first, as installing the package does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, threading, time
t0 = time.perf_counter()
import numpy as np
kind, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "ort":
    import onnxruntime as ort
    t1 = time.perf_counter()
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    run = lambda x: s.run(None, {i.name: x})
else:
    import engine
    t1 = time.perf_counter()
    m = engine.load(path, num_threads=threads)
    i = m.inputs[0]
    shape = [1 if d is None else d for d in i.shape]
    run = lambda x: m.run({i.name: x})
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
run(x)
t3 = time.perf_counter()
for _ in range(20):
    run(x)
rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_ns():   # CPU time of each thread but this one (the caller), from /proc
    me, out = threading.get_native_id(), 0
    for tid in os.listdir("/proc/self/task"):
        try:
            if int(tid) != me:
                out += int(open(f"/proc/self/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return out


idle = []
for _ in range(5):          # what the runtime's own threads burn in the 100 ms after a run
    run(x)
    before = cpu_ns()
    time.sleep(0.1)
    idle.append((cpu_ns() - before) / 1e6)
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, rss, sorted(idle)[2])
"""

IMPORT = "import time; t = time.perf_counter(); import engine; print(time.perf_counter() - t)"


def child(args, env):
    out = subprocess.run([sys.executable, "-c", "import os\n" + CHILD] + args, env=env,
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return [float(v) for v in out.stdout.split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="an .onnx file")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    env = dict(os.environ)
    import engine
    # an installed package has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every module in every child instead
    import compileall
    compileall.compile_dir(os.path.dirname(engine.__file__), quiet=1)
    print(f"engine {engine.__version__}, {args.threads} thread(s), medians of {args.repeat} "
          f"fresh processes; seconds, RSS in MB after 20 runs")
    times = [float(subprocess.run([sys.executable, "-c", IMPORT], env=env, capture_output=True,
                                  text=True, cwd=tempfile.gettempdir()).stdout)
             for _ in range(max(5, args.repeat))]
    print(f"import engine: {statistics.median(times):.3f} s")
    print(f"{'model':<22} {'runtime':<24} {'import':>7} {'load':>7} {'first':>7} {'cold':>7} "
          f"{'RSS':>7} {'idle ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for onnx_path in args.model:
            name = os.path.splitext(os.path.basename(onnx_path))[0]
            native = os.path.join(tmp, name + ".safetensors")
            stored = os.path.join(tmp, name + "_transformed.safetensors")
            model = engine.load(onnx_path)
            model.save(native)
            model.save(stored, transformed=True)
            del model
            runs = {"onnxruntime (onnx)": ("ort", onnx_path),
                    "engine (onnx)": ("engine", onnx_path),
                    "engine (native)": ("engine", native),
                    "engine (native+transf.)": ("engine", stored)}
            rows = {k: [] for k in runs}
            for _ in range(args.repeat):
                for label, (kind, path) in runs.items():
                    rows[label].append(child([kind, path, str(args.threads)], env))
            for label, values in rows.items():
                med = [statistics.median(col) for col in zip(*values)]
                print(f"{name:<22} {label:<24} {med[0]:7.2f} {med[1]:7.2f} {med[2]:7.2f} "
                      f"{med[3]:7.2f} {med[4]:7.0f} {med[5]:8.2f}")


if __name__ == "__main__":
    main()
