"""convengine: run, inspect and time CNN models on the CPU.

  convengine demo                      the bundled model on its bundled data: accuracy, speed, plan
  convengine demo --layers             the layer benchmark: single convolutions, planned and timed
  convengine run MODEL --input X.npy [--output Y.npy]
  convengine explain MODEL
  convengine check MODEL               every unsupported node and attribute, all at once
  convengine bench MODEL [--threads N ...] [--vs onnxruntime,torch] [--repeat R]
  convengine compare (--layer SPEC | MODEL) [--vs onnxruntime,torch] [--json F] [--plot F.png]
  convengine tune MODEL [--threads N] [--out WISDOM]
  convengine receptive-field MODEL [--input-shape 1,3,224,224] [--plot F.png]

MODEL is an .onnx file or a native file written by model.save. For bench, MODEL may also be
"file.py:factory" or "package.module:factory", a callable returning a torch.nn.Module; it is
exported to ONNX (input shape from --shape) so that all three runtimes run the same network,
e.g. ``convengine bench tests/torch_models.py:mobilenet_v2 --threads 1 2``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from contextlib import ExitStack
from importlib import resources

import numpy as np

from .timing import (Progress, SETTLE_SECONDS, format_table, percentile,  # noqa: F401
                     time_alternating)

EXIT_USAGE = 2


class CLIError(Exception):
    """A problem with the command's arguments or files: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- shared helpers


def _load_model(path):
    import engine
    if not os.path.exists(path):
        raise CLIError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"model path is a directory, expected a file: {path}")
    try:
        load = engine.load
    except AttributeError:
        raise CLIError("this build of convengine has no model loader (engine.load)") from None
    try:
        return load(path)
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot load model {path}: {e}") from None


def input_specs(model):
    """[(name, shape, dtype)] of a model's inputs, shape entries None where free."""
    return _specs(model.inputs)


def output_names(model):
    return [name for name, _, _ in _specs(model.outputs)]


def _specs(items):
    # Accepts the shapes a runner may reasonably use for model.inputs: a dict name -> spec,
    # objects with name/shape/dtype attributes, or (name, shape, dtype) tuples.
    if isinstance(items, dict):
        items = [(k, *(v if isinstance(v, (tuple, list)) else (getattr(v, "shape", None),
                                                               getattr(v, "dtype", None))))
                 for k, v in items.items()]
    out = []
    for it in items:
        if isinstance(it, str):
            out.append((it, None, None))
        elif hasattr(it, "name"):
            out.append((it.name, getattr(it, "shape", None), getattr(it, "dtype", None)))
        else:
            it = tuple(it) + (None, None)
            out.append((it[0], it[1], it[2]))
    return out


def _concrete_shape(shape, override, what):
    """A runnable shape: the override if given, else the model's with free dimensions set to 1."""
    if override is not None:
        return override
    if shape is None:
        raise CLIError(f"{what} has no declared shape: give one with --shape, e.g. 1,3,224,224")
    return tuple(1 if d is None or not isinstance(d, (int, np.integer)) else int(d)
                 for d in shape)


def _parse_shape(text):
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a shape as positive integers separated by commas, e.g. 1,3,224,224; "
            f"got {text!r}")
    return shape


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _nonnegative_int(text):
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def _set_threads(n):
    import engine
    if n is not None:
        engine.set_num_threads(n)


def _threads_text(n):
    return f"{n} thread{'s' if n != 1 else ''}"


# --------------------------------------------------------------------------- demo


def _data_file(name):
    return resources.files("engine.data").joinpath(name)


def cmd_demo(args) -> int:
    if args.layers:
        return _demo_layers(args)
    import engine
    _set_threads(args.threads)
    names = ("digits_net.safetensors", "digits_test.npz", "digits_net.json")
    with ExitStack() as stack:
        paths = [stack.enter_context(resources.as_file(_data_file(n))) for n in names]
        missing = [str(p) for p in paths if not os.path.exists(p)]
        if missing:
            raise CLIError("the bundled demo files are missing: " + ", ".join(missing))
        model = _load_model(str(paths[0]))
        with np.load(paths[1]) as data:
            images, labels = data["images"], data["labels"]
        with open(paths[2]) as f:
            info = json.load(f)

    in_name = input_specs(model)[0][0]
    out_name = output_names(model)[0]
    print(f"convengine {engine.__version__} demo: {info.get('name', 'model')} on "
          f"{len(labels)} held-out images of scikit-learn's digits "
          f"({'x'.join(map(str, images.shape[1:]))}), {_threads_text(engine.get_num_threads())}")
    logits = model.run({in_name: images})[out_name]
    pred = logits.argmax(axis=1)
    correct = int((pred == labels).sum())
    acc = correct / len(labels)
    expected = info.get("test_accuracy")
    exp_text = f", expected {100 * expected:.2f}%" if expected is not None else ""
    print(f"accuracy {100 * acc:.2f}% ({correct}/{len(labels)}){exp_text}")
    wrong = np.flatnonzero(pred != labels)
    if len(wrong):
        shown = ", ".join(f"#{i}: {labels[i]} read as {pred[i]}" for i in wrong[:8])
        print(f"misread: {shown}{' ...' if len(wrong) > 8 else ''}")

    one = images[:1]
    timing = time_alternating(
        {"batch": lambda: model.run({in_name: images}),
         "single": lambda: model.run({in_name: one})},
        repeat=args.repeat, warmup=1, cpu_runs=0)
    b_ms = float(np.median(timing["batch"]["times"]))
    s_ms = float(np.median(timing["single"]["times"]))
    print(f"speed (median of {args.repeat}): batch of {len(images)}: {b_ms:.2f} ms, "
          f"{len(images) / b_ms * 1e3:,.0f} images/s; batch of 1: {s_ms:.3f} ms, "
          f"{1e3 / s_ms:,.0f} images/s")
    print()
    # the plan of the whole batch, with per-layer times from profiled runs when available
    profile = getattr(model, "profile", None)
    print(profile({in_name: images}, repeat=2) if profile else model.explain())
    if expected is not None and abs(acc - expected) > 0.005:
        print(f"convengine: accuracy {acc:.4f} differs from the expected {expected:.4f}",
              file=sys.stderr)
        return 1
    return 0


def _demo_layers(args) -> int:
    """Single convolutions, each planned once, checked against im2col and timed."""
    import engine
    _set_threads(args.threads)
    rng = np.random.default_rng(0)
    layers = [
        ("conv3x3 64->64 56x56", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
        ("conv3x3 s2 64->128 56x56", (1, 64, 56, 56), (128, 64, 3, 3), dict(padding=1, stride=2)),
        ("pw1x1 24->144 56x56", (1, 24, 56, 56), (144, 24, 1, 1), {}),
        ("conv3x3 d2 128->128 28x28", (1, 128, 28, 28), (128, 128, 3, 3),
         dict(padding=2, dilation=2)),
    ]
    print(f"convengine {engine.__version__}, {_threads_text(engine.get_num_threads())}")
    rows = []
    for name, xs, ws, kw in layers:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32) * 0.1
        layer = engine.Conv2d(w, input_size=xs[2:], **kw)
        y = layer(x)
        ref = engine.Conv2d(w, algorithm="im2col", **kw)(x)
        ms = float(np.median(time_alternating({"l": lambda: layer(x)}, args.repeat, cpu_runs=0)["l"]["times"]))
        flops = 2.0 * y.size * ws[1] * ws[2] * ws[3]
        rows.append([name, layer.algorithm, f"{ms:.3f}", f"{flops / ms / 1e6:.1f}",
                     f"{float(np.abs(y - ref).max()):.2e}"])
    print(format_table(["layer", "algorithm", "ms", "GFLOP/s", "max err vs im2col"], rows,
                       ["<", "<", ">", ">", ">"]))
    return 0


# --------------------------------------------------------------------------- run, explain


def _read_inputs(path, specs):
    if not os.path.exists(path):
        raise CLIError(f"input file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04":
        raise CLIError(f"{path} is not a .npy or .npz file (no NumPy or zip header)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CLIError(f"cannot read {path} as a .npy or .npz file: {e}") from None
    names = [n for n, _, _ in specs]
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            missing = [n for n in names if n not in loaded.files]
            if missing:
                raise CLIError(f"{path} has arrays {loaded.files}; the model needs {names}")
            arrays = {n: loaded[n] for n in names}
    else:
        if len(names) != 1:
            raise CLIError(f"the model has {len(names)} inputs ({', '.join(names)}): give them "
                           f"as one .npz file with an array per input name")
        arrays = {names[0]: loaded}
    for name, _, dtype in specs:
        a = arrays[name]
        if a.dtype == np.float64 and (dtype is None or np.dtype(dtype) == np.float32):
            arrays[name] = a.astype(np.float32)   # .npy files from NumPy default to float64
        elif a.dtype.kind not in "fiub":
            raise CLIError(f"input {name!r} in {path} has dtype {a.dtype}, expected numbers")
    return arrays


def cmd_run(args) -> int:
    if os.path.isdir(args.input):   # a folder of images: batches on Dask, see engine/dask/folder.py
        from .dask import run_folder_command
        try:
            return run_folder_command(args)
        except (ValueError, ImportError, OSError) as e:
            raise CLIError(str(e)) from None
    if args.scheduler or args.batch_size or args.skip_bad:
        raise CLIError("--scheduler, --batch-size and --skip-bad apply to a folder --input")
    _set_threads(args.threads)
    model = _load_model(args.model)
    specs = input_specs(model)
    inputs = _read_inputs(args.input, specs)
    try:
        outputs = model.run(inputs)
    except ValueError as e:
        raise CLIError(f"cannot run {args.model} on {args.input}: {e}") from None
    for name, a in outputs.items():
        a = np.asarray(a)
        print(f"{name}: shape {tuple(a.shape)}, dtype {a.dtype}, "
              f"min {a.min():.6g}, max {a.max():.6g}" if a.size else
              f"{name}: shape {tuple(a.shape)}, dtype {a.dtype}")
    if args.output:
        out = args.output
        try:
            if len(outputs) == 1:
                np.save(out, np.asarray(next(iter(outputs.values()))))
                written = out if out.endswith(".npy") else out + ".npy"
            else:
                base = out[:-4] if out.endswith(".npy") else out
                written = base if base.endswith(".npz") else base + ".npz"
                np.savez(written, **{k: np.asarray(v) for k, v in outputs.items()})
        except OSError as e:
            raise CLIError(f"cannot write {out}: {e}") from None
        print(f"wrote {written}")
    return 0


def cmd_explain(args) -> int:
    model = _load_model(args.model)
    specs = input_specs(model)
    if len(specs) == 1 and (args.shape or specs[0][1] is not None):
        # a plan exists per input shape: show the one for --shape, or free dimensions as 1
        shape = _concrete_shape(specs[0][1], args.shape, f"input {specs[0][0]!r}")
        try:
            text = model.explain({specs[0][0]: shape})
        except ValueError as e:
            raise CLIError(f"cannot plan {args.model} for input shape {shape}: {e}") from None
    else:
        text = model.explain()
    print(text)
    return 0


def cmd_check(args) -> int:
    """Every unsupported node and attribute of an ONNX file at once (each node read on its
    own), then what loading and planning find; exit 1 if there is anything."""
    import engine
    path = args.model
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
    problems = []
    from .io import _is_native
    if not _is_native(path):
        try:
            from .io import onnx_import
            problems = onnx_import.check(path)
        except ImportError as e:
            raise CLIError(str(e)) from None
    if not problems:
        try:
            model = engine.load(path)
        except (ValueError, OSError) as e:
            problems = [str(e)]
        else:
            nodes = len(model.graph.nodes)
            print(f"{path}: loads and plans ({nodes} nodes after the load-time passes)")
            return 0
    print(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    for p in problems:
        print(f"  - {p}")
    return 1


# --------------------------------------------------------------------------- bench


def _load_torch_module(spec):
    """'file.py:factory' or 'package.module:factory' -> the nn.Module factory() returns."""
    target, _, attr = spec.rpartition(":")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CLIError(f"{spec} names a torch module, but torch is not installed") from None
    try:
        if target.endswith(".py"):
            if not os.path.exists(target):
                raise CLIError(f"file not found: {target}")
            name = "_convengine_bench_" + os.path.splitext(os.path.basename(target))[0]
            mod_spec = importlib.util.spec_from_file_location(name, target)
            module = importlib.util.module_from_spec(mod_spec)
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            try:
                mod_spec.loader.exec_module(module)
            finally:
                sys.path.pop(0)
        else:
            module = importlib.import_module(target)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise CLIError(f"cannot import {spec}: {e}") from None
    model = factory()
    return model.eval()


def _export_torch(module, shape, directory):
    import torch
    path = os.path.join(directory, "model.onnx")
    x = torch.zeros(shape)
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=17)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # "legacy exporter": on purpose
        try:
            torch.onnx.export(module, (x,), path, dynamo=False, **kwargs)
        except TypeError:   # torch < 2.5: no dynamo= argument
            torch.onnx.export(module, (x,), path, **kwargs)
    return path


def _peer_sessions(wanted, onnx_path, torch_module, notes):
    """{peer name: factory(n_threads) -> (run(x) callable)}, and notes for skipped peers."""
    peers = {}
    if "onnxruntime" in wanted:
        if onnx_path is None:
            notes.append("onnxruntime: skipped (MODEL is not an .onnx file)")
        else:
            try:
                import onnxruntime as ort
            except ImportError:
                notes.append("onnxruntime: missing (not installed)")
            else:
                def make_ort(n, ort=ort):
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = n
                    opts.inter_op_num_threads = 1
                    sess = ort.InferenceSession(onnx_path, opts,
                                                providers=["CPUExecutionProvider"])
                    name = sess.get_inputs()[0].name
                    return lambda x: sess.run(None, {name: x})[0]
                peers["onnxruntime"] = make_ort
    if "torch" in wanted:
        if torch_module is None:
            notes.append("torch: skipped (MODEL is a file, not a torch module; "
                         "give MODEL as file.py:factory to compare)")
        else:
            import torch

            def make_torch(n):
                # the caller restores the thread count (see cmd_bench)
                torch.set_num_threads(n)

                def run(x):
                    with torch.inference_mode():
                        return torch_module(torch.from_numpy(x)).numpy()
                return run
            peers["torch"] = make_torch
    return peers


def cmd_ops(args) -> int:
    """The ONNX operators the engine reads, with the schema versions and a note."""
    try:
        from .io.onnx_import import operator_table
        rows = operator_table()
    except ImportError as e:
        raise CLIError(str(e)) from None
    if args.markdown:
        print("| operator | ONNX versions | notes |\n|---|---|---|")
        for op, versions, note in rows:
            print(f"| {op} | {versions} | {note} |")
    else:
        print(format_table(["operator", "ONNX versions", "notes"],
                           [[op, v, n[:70]] for op, v, n in rows]))
    return 0


def cmd_bench(args) -> int:
    import engine
    wanted = [w.strip() for w in args.vs.split(",") if w.strip() and w.strip() != "none"]
    unknown = [w for w in wanted if w not in ("onnxruntime", "torch")]
    if unknown:
        raise CLIError(f"--vs takes onnxruntime and/or torch (or none), got {', '.join(unknown)}")
    threads = args.threads or [engine.get_num_threads()]
    notes = []
    torch_module = None
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model
        if not os.path.exists(spec) and ":" in spec:
            torch_module = _load_torch_module(spec)
            shape = args.shape or (1, 3, 224, 224)
            model_path = _export_torch(torch_module, shape, tmp)
        else:
            model_path = spec
        model = _load_model(model_path)
        onnx_path = model_path if model_path.lower().endswith(".onnx") else None
        specs = input_specs(model)
        if len(specs) != 1:
            raise CLIError(f"bench times single-input models; {spec} has {len(specs)} inputs")
        in_name, in_shape, _ = specs[0]
        shape = _concrete_shape(in_shape, args.shape, f"input {in_name!r}")
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        out_name = output_names(model)[0]
        peers = _peer_sessions(wanted, onnx_path, torch_module, notes)

        print(f"convengine {engine.__version__} bench: {spec}, input {in_name} "
              f"{'x'.join(map(str, shape))}, median of {args.repeat} alternating runs "
              f"after {args.warmup} warm-up")
        saved_threads = engine.get_num_threads()
        saved_torch = sys.modules["torch"].get_num_threads() if "torch" in peers else None
        rows = []
        try:
            for n in threads:
                engine.set_num_threads(n)
                runners = {"convengine": lambda: model.run({in_name: x})}
                ref = np.asarray(model.run({in_name: x})[out_name])
                diffs = {}
                for peer, make in peers.items():
                    fn = make(n)
                    diffs[peer] = float(np.abs(np.asarray(fn(x)).reshape(ref.shape) - ref).max())
                    runners[peer] = (lambda fn=fn: fn(x))
                res = time_alternating(runners, args.repeat, args.warmup,
                                       progress_label=_threads_text(n))
                medians = {k: float(np.median(v["times"])) for k, v in res.items()}
                best = min(medians.values())
                for k, v in res.items():
                    rows.append([n, k, f"{medians[k]:.3f}", f"{percentile(v['times'], 90):.3f}",
                                 f"{medians[k] / best:.2f}", f"{v['cpu']:.2f}",
                                 "" if k == "convengine" else f"{diffs[k]:.1e}"])
        finally:
            engine.set_num_threads(saved_threads)
            if saved_torch is not None:
                sys.modules["torch"].set_num_threads(saved_torch)
    print(format_table(["threads", "runtime", "median ms", "p90 ms", "x fastest", "cpu/wall",
                        "max |diff|"], rows))
    for note in notes:
        print(note)
    return 0


# --------------------------------------------------------------------------- entry point


def _parser():
    import engine
    p = argparse.ArgumentParser(prog="convengine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"convengine {engine.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the bundled digits model on its test split")
    d.add_argument("--layers", action="store_true",
                   help="time single convolution layers instead")
    d.add_argument("--threads", type=_positive_int, default=None)
    d.add_argument("--repeat", type=_positive_int, default=5, help="timed runs (default 5)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="run a model on an input array")
    r.add_argument("model")
    r.add_argument("--input", required=True,
                   help=".npy for a single-input model, .npz with one array per input name, "
                        "or a folder of .npy/PNG/JPEG images run in batches on Dask")
    r.add_argument("--output", help=".npy for one output; several outputs are written as .npz")
    r.add_argument("--threads", type=_positive_int, default=None)
    r.add_argument("--scheduler", default=None,
                   help="folder input: Dask scheduler address (default: a LocalCluster)")
    r.add_argument("--batch-size", type=_positive_int, default=None,
                   help="folder input: images per batch (default 32)")
    r.add_argument("--skip-bad", action="store_true",
                   help="folder input: skip unreadable images (listed) instead of failing")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("explain", help="the per-layer plan of a model")
    e.add_argument("model")
    e.add_argument("--shape", type=_parse_shape, default=None,
                   help="input shape to plan for (default: the model's, free dims 1)")
    e.set_defaults(func=cmd_explain)

    c = sub.add_parser("check", help="every unsupported node and attribute of a model, at once")
    c.add_argument("model")
    c.set_defaults(func=cmd_check)

    o = sub.add_parser("ops", help="the ONNX operators the engine reads")
    o.add_argument("--markdown", action="store_true", help="as the README's table")
    o.set_defaults(func=cmd_ops)

    b = sub.add_parser("bench", help="time a model, side by side with other runtimes")
    b.add_argument("model", help="model file, or file.py:factory / module:factory (torch)")
    b.add_argument("--threads", type=_positive_int, nargs="+", default=None,
                   help="thread counts to time (default: the current setting)")
    b.add_argument("--vs", default="onnxruntime,torch",
                   help="peers: onnxruntime, torch, both comma-separated, or none")
    b.add_argument("--repeat", type=_positive_int, default=11, help="timed runs (default 11)")
    b.add_argument("--warmup", type=_nonnegative_int, default=2, help="untimed runs first (default 2)")
    b.add_argument("--shape", type=_parse_shape, default=None,
                   help="input shape, e.g. 1,3,224,224 (default: the model's, free dims 1)")
    b.set_defaults(func=cmd_bench)

    from .lab.cli import add_commands as lab_commands   # compare, tune
    lab_commands(sub, _positive_int, CLIError)
    from .lab.receptive import add_command as receptive_command   # receptive-field
    receptive_command(sub, _parse_shape, _load_model, CLIError)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"convengine {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:   # output piped into head and the like: stop quietly
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
