"""The convengine command: demo, run, explain, bench, and its error handling."""
import os
import re
import time
from importlib import resources

import numpy as np
import pytest

import engine
from engine.cli import Progress, format_table, main, time_alternating
from test_demo_model import reference_correct

# subprocesses start here, not in the checkout, so that `import engine` finds the installed
# package rather than the source tree without its compiled kernels
HERE = os.path.dirname(os.path.abspath(__file__))

DATA = resources.files("engine.data")
DIGITS = str(DATA.joinpath("digits_net.safetensors"))


def _digits_images():
    with np.load(str(DATA.joinpath("digits_test.npz"))) as d:
        return d["images"], d["labels"]


def _tiny_onnx(path, two_outputs=False):
    """Conv 3->4 3x3 pad 1 (+ ReLU) on a 1x3x8x8 input, built by hand with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"])]
    outs = [helper.make_tensor_value_info("relu", TensorProto.FLOAT, [1, 4, 8, 8])]
    if two_outputs:
        outs.append(helper.make_tensor_value_info("conv", TensorProto.FLOAT, [1, 4, 8, 8]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        outs, initializer=[w, b])
    # ONNX Runtime 1.31 reads IR version <= 13; onnx 1.23 would stamp 14
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return str(path), w, b


def _conv_relu_ref(x, w, b):
    from onnx import numpy_helper
    from reference import conv2d_ref
    y = conv2d_ref(x, numpy_helper.to_array(w), numpy_helper.to_array(b), pads=((1, 1), (1, 1)))
    return y, np.maximum(y, 0)


# --------------------------------------------------------------------------- demo


def test_demo_reports_accuracy_speed_and_plan(capsys):
    # the numbers checked come from the float64 reference network (tests/test_demo_model.py),
    # whose predictions the engine's must equal image by image
    correct = reference_correct()
    assert main(["demo", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"accuracy (\d+\.\d+)% \((\d+)/360\), expected (\d+\.\d+)%", out)
    assert m, out
    assert int(m.group(2)) == correct
    assert m.group(1) == m.group(3) == f"{100 * correct / 360:.2f}"
    assert re.search(r"images/s", out)
    assert engine.load(DIGITS).explain().strip().splitlines()[0] in out


def test_demo_runs_without_onnx_torch_or_sklearn():
    import subprocess
    import sys
    # None in sys.modules makes importing these raise ImportError, as in a fresh install
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'torch', 'sklearn'):\n"
            "    sys.modules[m] = None\n"
            "from engine.cli import main\n"
            "sys.exit(main(['demo', '--repeat', '1', '--threads', '1']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr
    correct = reference_correct()
    assert f"accuracy {100 * correct / 360:.2f}% ({correct}/360)" in out.stdout


# --------------------------------------------------------------------------- run


def test_run_writes_the_models_output(tmp_path, capsys):
    images, _ = _digits_images()
    x = images[:5]
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "y.npy"
    assert main(["run", DIGITS, "--input", str(tmp_path / "x.npy"),
                 "--output", str(out_path)]) == 0
    printed = capsys.readouterr().out
    assert "logits: shape (5, 10)" in printed
    y = np.load(out_path)
    np.testing.assert_array_equal(y, engine.load(DIGITS).run({"input": x})["logits"])


def test_run_accepts_float64_npy(tmp_path, capsys):
    images, _ = _digits_images()
    np.save(tmp_path / "x.npy", images[:2].astype(np.float64))
    assert main(["run", DIGITS, "--input", str(tmp_path / "x.npy")]) == 0
    assert "shape (2, 10)" in capsys.readouterr().out


def test_run_several_outputs_go_to_npz(tmp_path, capsys):
    path, w, b = _tiny_onnx(tmp_path / "two.onnx", two_outputs=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", path, "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    printed = capsys.readouterr().out
    assert "relu: shape (1, 4, 8, 8)" in printed and "conv: shape (1, 4, 8, 8)" in printed
    conv, relu = _conv_relu_ref(x, w, b)
    with np.load(tmp_path / "y.npz") as got:
        np.testing.assert_allclose(got["conv"], conv, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["relu"], relu, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- explain


def test_explain_prints_the_plan(capsys):
    assert main(["explain", DIGITS]) == 0
    out = capsys.readouterr().out
    # the batch dimension is free: the plan shown is the one for a batch of 1
    assert out.strip() == engine.load(DIGITS).explain({"input": (1, 1, 16, 16)}).strip()
    assert "1x1x16x16" in out and "depthwise" in out and "dilated" in out
    assert main(["explain", DIGITS, "--shape", "7,1,16,16"]) == 0
    assert "7x1x16x16" in capsys.readouterr().out


# --------------------------------------------------------------------------- bench


def test_bench_tiny_model_against_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path, _, _ = _tiny_onnx(tmp_path / "tiny.onnx")
    assert main(["bench", path, "--repeat", "1", "--warmup", "1", "--threads", "1", "2",
                 "--vs", "onnxruntime,torch"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(r[0], r[1]) for r in rows] == [("1", "convengine"), ("1", "onnxruntime"),
                                            ("2", "convengine"), ("2", "onnxruntime")]
    # the fastest runtime of each thread count has ratio 1.00; every time is positive
    for n in ("1", "2"):
        ratios = [float(r[4]) for r in rows if r[0] == n]
        assert min(ratios) == 1.0 and all(float(r[2]) > 0 for r in rows)
    # the same input gave the same output (the last column: max |difference|)
    assert all(float(r[-1]) < 1e-4 for r in rows if r[1] == "onnxruntime")
    assert "torch: skipped" in out


def test_bench_torch_module(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    src = tmp_path / "tinynet.py"
    src.write_text("import torch\n"
                   "def make():\n"
                   "    torch.manual_seed(0)\n"
                   "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),\n"
                   "                               torch.nn.ReLU())\n")
    assert main(["bench", f"{src}:make", "--shape", "1,3,12,12", "--repeat", "1",
                 "--warmup", "0", "--threads", "1", "--vs", "torch"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("1 ")]
    assert [r[1] for r in rows] == ["convengine", "torch"]
    assert float(rows[1][-1]) < 1e-4


def test_time_alternating_rotates_and_counts():
    calls = []
    res = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                           repeat=3, warmup=1, cpu_runs=0, settle=False)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(v["times"]) for v in res.values()] == [3, 3]
    calls.clear()   # turns of one settling call (a very short settle) and two timed calls
    res = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                           repeat=3, warmup=0, cpu_runs=0, block=2, settle=1e-9)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 2 + ["a"] * 2
    assert [len(v["times"]) for v in res.values()] == [3, 3]
    calls.clear()   # a settle of 20 ms takes untimed calls until it has passed
    res = time_alternating({"a": lambda: (calls.append("a"), time.sleep(0.004)),
                            "b": lambda: (calls.append("b"), time.sleep(0.004))},
                           repeat=1, warmup=0, cpu_runs=0, settle=0.02)
    assert calls.count("a") >= 5 and calls.count("b") >= 5
    assert [len(v["times"]) for v in res.values()] == [1, 1]


def test_progress_bar_counts_to_its_total():
    import io
    s = io.StringIO()
    p = Progress(4, "timing x", stream=s)
    for _ in range(4):
        p.step()
    assert "timing x" in s.getvalue() and p.bar.n == p.bar.total == 4
    p.close()
    quiet = io.StringIO()
    p = Progress(4, "y", enabled=False, stream=quiet)
    p.step()
    p.close()
    assert quiet.getvalue() == ""


def test_format_table_aligns_columns():
    t = format_table(["name", "ms"], [["a", "1.5"], ["long name", "10.25"]]).splitlines()
    assert t[0] == "name          ms" and t[2] == "a            1.5" and len(set(map(len, t))) == 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv_tail, message", [
    (["explain", "MISSING.onnx"], "model file not found"),
    (["run", "MISSING.onnx", "--input", "x.npy"], "model file not found"),
    (["run", DIGITS, "--input", "MISSING.npy"], "input file not found"),
    (["run", DIGITS, "--input", "BAD.npy"], "not a .npy or .npz file"),
    (["run", DIGITS, "--input", "WRONG.npy"], "cannot run"),
    (["run", "BAD.onnx", "--input", "x.npy"], "cannot load model"),
    (["explain", DIGITS, "--shape", "1,3,16,16"], "cannot plan"),
    (["bench", DIGITS, "--vs", "tensorflow"], "--vs takes"),
])
def test_errors_exit_2_with_a_message(tmp_path, monkeypatch, capsys, argv_tail, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD.npy").write_bytes(b"not an array")
    (tmp_path / "BAD.onnx").write_bytes(b"not a model")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 16, 16), np.float32))
    np.save(tmp_path / "WRONG.npy", np.zeros((1, 3, 16, 16), np.float32))   # 3 channels, not 1
    assert main(argv_tail) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith(f"convengine {argv_tail[0]}: error: ")


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", DIGITS, "--threads", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["run", DIGITS])   # --input is required
    assert e.value.code == 2


def test_check_lists_every_problem_at_once(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    w = nh.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             h.make_node("NoSuchOp", ["c"], ["d"], name="mystery"),
             h.make_node("Relu", ["d"], ["e"], name="relu", alpha=1.0),      # no such attribute
             h.make_node("FancyOp", ["e"], ["y"], name="fancy")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [w])
    bad = tmp_path / "bad.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), str(bad))
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "3 problems" in out
    assert "'mystery'" in out and "NoSuchOp" in out and "'fancy'" in out and "'relu'" in out
    good = tmp_path / "good.onnx"
    g = h.make_graph(nodes[:1], "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("c", T.FLOAT, None)], [w])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), str(good))
    assert main(["check", str(good)]) == 0
    assert "loads and plans" in capsys.readouterr().out


def test_ops_table_is_the_readme_table(capsys):
    """The README's operator table is `convengine ops --markdown`, regenerated when the
    registry changes (copy the command's output between the README's ops markers)."""
    pytest.importorskip("onnx")
    assert main(["ops", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    assert "| Conv |" in table and "| ReduceMean |" in table
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    start, end = "<!-- ops: convengine ops --markdown -->", "<!-- /ops -->"
    assert start in readme and end in readme
    assert readme.split(start)[1].split(end)[0].strip() == table
