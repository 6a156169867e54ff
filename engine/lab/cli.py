"""The lab's commands: ``convengine compare`` and ``convengine tune`` (registered on the main
parser by engine/cli.py)."""
from __future__ import annotations

import json
import sys

import numpy as np


def add_commands(sub, positive_int, cli_error):
    c = sub.add_parser("compare", help="every algorithm on a layer or a model's layers: time, "
                                       "GFLOP/s, error vs float64")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("model", nargs="?", help="a model file: every 2-D convolution layer")
    what.add_argument("--layer", help='a layer spec, e.g. "c=64,o=128,h=56,k=3,s=1,p=same,d=2"')
    c.add_argument("--vs", default="", help="peers on the same layer: onnxruntime, torch "
                                            "(comma-separated)")
    c.add_argument("--repeat", type=positive_int, default=None,
                   help="timed runs per algorithm (default 7)")
    c.add_argument("--threads", type=positive_int, default=None)
    c.add_argument("--json", help="write the rows as JSON here")
    c.add_argument("--plot", help="draw time and error per algorithm into this PNG (matplotlib)")
    c.set_defaults(func=lambda args: _run(cmd_compare, args, cli_error))

    t = sub.add_parser("tune", help="measure every layer's algorithms, write a wisdom file")
    t.add_argument("model")
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--out", help="wisdom file (default: the per-user file engine.load reads)")
    t.add_argument("--repeat", type=positive_int, default=5)
    t.add_argument("--shape", default=None, help="input shape, e.g. 1,3,224,224")
    t.set_defaults(func=lambda args: _run(cmd_tune, args, cli_error))


def _run(cmd, args, cli_error):
    try:
        return cmd(args)
    except (ValueError, FileNotFoundError) as e:
        raise cli_error(str(e)) from None


def _peers(text):
    peers = tuple(p.strip() for p in (text or "").split(",") if p.strip() and p != "none")
    from .compare import PEERS
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise ValueError(f"--vs: unknown {bad}; known: {', '.join(PEERS)}")
    return peers


def cmd_compare(args) -> int:
    import engine
    from .compare import compare, format_rows, layer_text
    from .wisdom import conv_layers, _input_shapes
    if args.threads:
        engine.set_num_threads(args.threads)
    peers = _peers(args.vs)
    results = []     # (layer name, description, rows)
    if args.layer:
        rows = compare(args.layer, repeat=args.repeat, peers=peers, progress=True)
        results.append(("layer", layer_text(args.layer), rows))
    else:
        model = engine.load(args.model, wisdom=False)
        shapes = _input_shapes(model, None if all(d is not None for s in model.inputs
                                                  for d in s.shape)
                               else tuple(1 if d is None else d for d in model.inputs[0].shape))
        from ..timing import Progress
        layers = conv_layers(model, shapes)
        bar = Progress(len(layers), "compare", enabled=len(layers) > 1)
        try:
            for name, _, layer, x_shape in layers:
                x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
                rows = compare(layer, x, repeat=args.repeat, peers=peers)
                results.append((name, layer_text(layer, x), rows))
                bar.step()
        finally:
            bar.close()
        if not results:
            print("the model has no 2-D convolution on NCHW to compare (layers in the "
                  "channel-blocked layout run the blocked kernels)")
    for name, text, rows in results:
        print(f"{name}: {text} ({rows[0]['threads']} thread(s), * = the rules' choice)")
        print(format_rows(rows))
        print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([{"layer": name, "description": text, "rows": rows}
                       for name, text, rows in results], f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


def plot(results, path) -> dict:
    """Two panels: median ms and max relative error (log scale) per algorithm, one group of
    bars per layer. Returns what the panels show: {"ms": {algorithm: [(layer index, value),
    ...]}, "max_rel_err": {...}}."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install convengine[plot]") from None
    names = sorted({r["algorithm"] for _, _, rows in results for r in rows})
    fig, (ax_t, ax_e) = plt.subplots(2, 1, figsize=(max(6, 1.2 * len(results) + 4), 7))
    width = 0.8 / max(1, len(names))
    shown = {"ms": {}, "max_rel_err": {}}
    for k, a in enumerate(names):
        xs, ms, err, layers = [], [], [], []
        for i, (_, _, rows) in enumerate(results):
            row = next((r for r in rows if r["algorithm"] == a), None)
            if row is not None:
                xs.append(i + k * width)
                layers.append(i)
                ms.append(row["ms"])
                err.append(max(row["max_rel_err"], 1e-12))
        ax_t.bar(xs, ms, width, label=a)
        ax_e.bar(xs, err, width, label=a)
        shown["ms"][a] = list(zip(layers, ms))
        shown["max_rel_err"][a] = list(zip(layers, err))
    ticks = [i + 0.4 - width / 2 for i in range(len(results))]
    for ax in (ax_t, ax_e):
        ax.set_xticks(ticks)
        ax.set_xticklabels([name for name, _, _ in results], rotation=30, ha="right",
                           fontsize=7)
    ax_t.set_ylabel("median ms")
    ax_e.set_ylabel("max relative error vs float64")
    ax_e.set_yscale("log")
    ax_t.legend(fontsize=7, ncol=2)
    ax_t.set_title("convengine compare")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return shown


def cmd_tune(args) -> int:
    import engine
    from .wisdom import tune
    if args.threads:
        engine.set_num_threads(args.threads)
    shape = None
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.split(","))
        except ValueError:
            raise ValueError(f"--shape must be integers separated by commas, got "
                             f"{args.shape!r}") from None
    result = tune(args.model, shape, args.out, repeat=args.repeat)
    changed = {k: v for k, v in result["layers"].items() if v["algorithm"] != v["rule"]}
    print(f"tuned {len(result['layers'])} layer(s) at {result['key']['threads']} thread(s); "
          f"{len(changed)} differ from the rules; wisdom written to {result['path']}")
    for sig, v in changed.items():
        print(f"  {sig}: {v['algorithm']} {v['ms']:.3f} ms (the rule's {v['rule']} "
              f"{v['rule_ms']:.3f} ms)")
    sys.stdout.flush()
    return 0
