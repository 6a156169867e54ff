"""Side-by-side timing: this engine and each installed peer on the same inputs, in one process,
taking turns in short blocks so that machine noise hits all of them alike.

Run benchmarks with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they slow a current OpenBLAS):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_conv2d.py
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import engine
from engine.cli import time_alternating as _time_turns


@dataclass
class Case:
    name: str
    flops: float                                   # direct-convolution FLOPs (2 per multiply-add)
    make_engine: Callable[[], Callable[[], object]]  # planned once, returns the timed call
    onnx_model: Optional[object] = None            # onnx ModelProto for ONNX Runtime
    onnx_feeds: dict = field(default_factory=dict)
    make_torch: Optional[Callable[[], Callable[[], object]]] = None
    note: str = ""                                  # e.g. the engine's chosen algorithm


def _ort_runner(model, feeds, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def available_peers(wanted=("onnxruntime", "torch")):
    peers = {}
    for name in wanted:
        try:
            __import__(name)
            peers[name] = True
        except ImportError:
            peers[name] = False
    return peers


def time_alternating(fns: dict, repeat: int, warmup: int = 2, block: int = 3) -> dict:
    """Median ms and CPU time / wall time of each callable, timed in turns of one untimed call
    and ``block`` timed ones (engine.cli.time_alternating says why)."""
    res = _time_turns(fns, repeat, warmup=warmup, block=block, cpu_runs=2)
    return {k: (statistics.median(v["times"]), v["cpu"]) for k, v in res.items()}


def run_cases(cases, threads_list=(1, 2), repeat=15, peers=("onnxruntime", "torch"), out=print):
    have = available_peers(peers)
    for name, ok in have.items():
        if not ok:
            out(f"# {name}: not installed (reported as missing)")
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if any(env.values()):
        out(f"# warning: {env} set; unset them for benchmarks")
    results = []
    for threads in threads_list:
        engine.set_num_threads(threads)
        if have.get("torch"):
            import torch
            torch.set_num_threads(threads)
        out(f"\n## {threads} thread{'s' if threads > 1 else ''}")
        head = f"{'layer':<24} {'engine ms':>9} {'GFLOP/s':>8} {'cpu/wall':>8}"
        for p in peers:
            head += f" {p[:11] + ' ms':>14}"
        head += f" {'ratio':>6}  algorithm"
        out(head)
        for case in cases:
            fns = {"engine": case.make_engine()}
            if have.get("onnxruntime") and case.onnx_model is not None:
                fns["onnxruntime"] = _ort_runner(case.onnx_model, case.onnx_feeds, threads)
            if have.get("torch") and case.make_torch is not None:
                fns["torch"] = case.make_torch()
            r = time_alternating(fns, repeat)
            ms, cpu_ratio = r["engine"]
            line = f"{case.name:<24} {ms:9.3f} {case.flops / ms / 1e6:8.1f} {cpu_ratio:8.2f}"
            peer_ms = []
            for p in peers:
                if p in r:
                    peer_ms.append(r[p][0])
                    line += f" {r[p][0]:14.3f}"
                else:
                    line += f" {'-':>14}"
            ratio = ms / min(peer_ms) if peer_ms else float("nan")
            line += f" {ratio:6.2f}  {case.note}"
            out(line)
            results.append({"case": case.name, "threads": threads, "engine_ms": ms,
                            **{p: r[p][0] for p in peers if p in r}, "ratio": ratio,
                            "note": case.note})
    return results


def geomean(values):
    values = [v for v in values if v == v]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def onnx_single_node(op, inputs, initializers, attrs, out_name="y", opset=17, domain=""):
    """A one-node ONNX model: ``inputs`` are (name, array) fed at run time, ``initializers``
    (name, array) constants. IR version 9 so that ONNX Runtime 1.31 accepts it."""
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node(op, [n for n, _ in inputs] + [n for n, _ in initializers],
                            [out_name], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], f"{op.lower()}_bench",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)],
                              ir_version=9)
    return model, {n: a for n, a in inputs}
