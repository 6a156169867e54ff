"""The memory budget: a model may plan at most ``max_memory`` bytes (engine.load's argument,
default engine.memory.default_max_memory()), checked before anything that size is allocated;
the functional API refuses outputs beyond the default budget with a ValueError naming the
argument that sizes them.

Expected sizes are computed here from the shapes (bytes = elements * 4), not read back from
the engine. The cases that would allocate gigabytes if unchecked run in a child process whose
address space is limited (RLIMIT_AS), so an allocation attempt fails loudly there instead of
passing unnoticed (NumPy's empty arrays are not touched, so resident size would not show it).
"""
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine
from engine.memory import default_max_memory, resolve_max_memory
from reference import conv2d_ref

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RNG = np.random.default_rng(7)
W8 = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)


def onnx_model(nodes, inits, x_shape, outputs=("y",)):
    g = h.make_graph(nodes, "budget", [h.make_tensor_value_info("x", T.FLOAT, list(x_shape))],
                     [h.make_tensor_value_info(o, T.FLOAT, None) for o in outputs],
                     [nh.from_array(np.asarray(v), k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def conv_softsign(batch="N", w=W8):
    """x (batch, 1, 16, 16) -> Conv 3x3 pad 1 -> c -> Softsign -> y: c lives in the arena (a
    Softsign is not fused), y is returned; each is batch * channels * 16 * 16 * 4 bytes."""
    return onnx_model([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                       h.make_node("Softsign", ["c"], ["y"], name="softsign")],
                      {"w": w}, (batch, 1, 16, 16))


def activation_bytes(batch, channels=8):
    return batch * channels * 16 * 16 * 4


# ------------------------------------------------------------------------------ models, in process

def test_free_batch_model_runs_under_a_generous_budget_and_reports_its_memory():
    model = engine.load(conv_softsign(), max_memory=64 * MiB)
    before = model.memory()      # batch 1 is planned at load (only the batch is free)
    assert before["weights"] == W8.nbytes and before["arena_per_thread"] == activation_bytes(1)
    assert before["max_memory"] == 64 * MiB
    assert before["arenas"] == {((1, 1, 16, 16),): activation_bytes(1)}
    x = RNG.standard_normal((3, 1, 16, 16)).astype(np.float32)
    y = model(x)
    c = conv2d_ref(x, W8, pads=((1, 1), (1, 1)))
    expected = c / (1 + np.abs(c))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    mem = model.memory()
    assert mem["weights"] == W8.nbytes
    assert mem["transformed"] > 0            # the planned layer's packed weights
    assert mem["arena_per_thread"] == activation_bytes(3) == model._last_plan.arena_bytes
    assert mem["arenas"] == {((1, 1, 16, 16),): activation_bytes(1),
                             ((3, 1, 16, 16),): activation_bytes(3)}
    # weights, transformed, the arena and the returned y: nothing computed while planning
    assert mem["planned"] == (W8.nbytes + mem["transformed"] + activation_bytes(3)
                              + activation_bytes(3))
    assert mem["planned"] <= mem["max_memory"]
    model(x[:1])
    assert model.memory()["arena_per_thread"] == activation_bytes(1)
    assert "64.0 MiB budget" in model.explain()


def test_a_run_beyond_the_budget_is_refused_naming_the_input_and_tensors():
    budget = 3 * activation_bytes(8)       # a batch of 8 fits (2 activations + weights)
    model = engine.load(conv_softsign(), max_memory=budget)
    with pytest.raises(engine.ModelError) as e:
        model.run({"x": np.zeros((64, 1, 16, 16), np.float32)})
    text = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "x: 64x1x16x16" in text and "max_memory" in text and "192.0 KiB" in text
    assert "'c' 64x8x16x16 float32 (512.0 KiB)" in text and "'y' 64x8x16x16" in text
    # the refused plan is not kept (batch 1's, made at load, is)
    assert model.memory()["arenas"] == {((1, 1, 16, 16),): activation_bytes(1)}
    assert model(np.zeros((8, 1, 16, 16), np.float32)).shape == (8, 8, 16, 16)


def test_a_declared_shape_beyond_the_budget_is_refused_at_load():
    with pytest.raises(engine.ModelError, match=r"x: 64x1x16x16.*max_memory.*'c' 64x8x16x16"):
        engine.load(conv_softsign(batch=64), max_memory=256 * KiB)
    assert engine.load(conv_softsign(batch=64), max_memory=2 * MiB).memory()["planned"] > 0


def test_conv_pads_beyond_the_budget_are_refused_at_load():
    # pads 65536 above and below: output (1, 16, 131078, 6), 48 MiB
    w = np.ones((16, 1, 3, 3), np.float32)
    m = onnx_model([h.make_node("Conv", ["x", "w"], ["y"], pads=[65536, 0, 65536, 0])],
                   {"w": w}, (1, 1, 8, 8))
    with pytest.raises(engine.ModelError, match=r"'y' 1x16x131078x6 float32 \(48.0 MiB\)"):
        engine.load(m, max_memory=16 * MiB)


def constant_of_shape(name="fill"):
    """A ConstantOfShape of ones writing ``name``, its shape read from ``<name>_shape``."""
    value = h.make_tensor("value", T.FLOAT, [1], [1.0])
    return h.make_node("ConstantOfShape", [f"{name}_shape"], [name], value=value, name=name)


def test_a_constant_of_shape_beyond_the_budget_is_refused():
    # 1 x 1024 x 1024 float32: 4 MiB, folded at load
    m = onnx_model([constant_of_shape(), h.make_node("Add", ["x", "fill"], ["y"])],
                   {"fill_shape": np.array([1, 1024, 1024], np.int64)}, (1,))
    with pytest.raises(engine.ModelError, match=r"'fill'.*4.0 MiB.*1.0 MiB.*max_memory"):
        engine.load(m, max_memory=1 * MiB)
    assert engine.load(m, max_memory=64 * MiB)(np.ones(1, np.float32)).shape == (1, 1024, 1024)


def test_folded_constants_are_held_to_the_budget_together():
    # three 512 KiB fills, each within a 1 MiB budget, 1.5 MiB together
    nodes = [constant_of_shape(f"f{k}") for k in range(3)]
    nodes += [h.make_node("Add", ["x", "f0"], ["a"]), h.make_node("Add", ["a", "f1"], ["b"]),
              h.make_node("Add", ["b", "f2"], ["y"])]
    shapes = {f"f{k}_shape": np.array([128, 1024], np.int64) for k in range(3)}
    with pytest.raises(engine.ModelError, match=r"constants take 1.5 MiB.*max_memory"):
        engine.load(onnx_model(nodes, shapes, (1,)), max_memory=1 * MiB)


def test_a_value_computed_while_planning_is_refused_before_it_is_computed():
    # y = x + Expand(1, Shape(x)): the Expand is folded when each batch is planned
    m = onnx_model([h.make_node("Shape", ["x"], ["s"]),
                    h.make_node("Expand", ["one", "s"], ["e"], name="expand"),
                    h.make_node("Add", ["x", "e"], ["y"])],
                   {"one": np.ones(1, np.float32)}, ("N", 1024))
    model = engine.load(m, max_memory=1 * MiB)
    assert model.run({"x": np.zeros((4, 1024), np.float32)})["y"].sum() == 4 * 1024
    with pytest.raises(engine.ModelError, match=r"'expand' \(Expand\).*'e'.*max_memory"):
        model.run({"x": np.zeros((512, 1024), np.float32)})


def test_the_default_budget_is_half_the_usable_memory():
    assert default_max_memory() == int(engine.memory.usable_bytes() * engine.memory.RAM_FRACTION)
    assert default_max_memory() > 0
    model = engine.load(conv_softsign())
    assert model.memory()["max_memory"] == default_max_memory()


@pytest.mark.parametrize("bad", [0, -1, "1GB", True, float("nan"), [1]])
def test_a_bad_max_memory_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="max_memory"):
        engine.load(conv_softsign(), max_memory=bad)


def test_an_infinite_budget_is_accepted():
    assert resolve_max_memory(math.inf) == math.inf
    assert engine.load(conv_softsign(batch=2), max_memory=math.inf).memory()["planned"] > 0


# ------------------------------------------------------------------------------ functional API

X4 = np.ones((1, 1, 4, 4), np.float32)
W3 = np.ones((1, 1, 3, 3), np.float32)

FUNCTIONAL = {
    "conv2d padding": (lambda: engine.conv2d(X4, W3, padding=65536), "padding=65536"),
    "conv1d padding": (lambda: engine.conv1d(np.ones((64, 64, 4), np.float32),
                                             np.ones((64, 64, 3), np.float32), padding=2**25),
                       r"x of shape \(64, 64, 4\) with padding=33554432.*output, of shape "
                       r"\(64, 64, 67108866\)"),
    "conv3d padding": (lambda: engine.conv3d(X4[None], W3[None], padding=4096), "padding=4096"),
    "conv_transpose2d stride": (lambda: engine.conv_transpose2d(X4, W3, stride=65536),
                                "stride=65536"),
    "conv_transpose1d stride": (lambda: engine.conv_transpose1d(
        np.ones((64, 64, 4), np.float32), np.ones((64, 64, 3), np.float32), stride=2**25),
        r"x of shape \(64, 64, 4\) with stride=33554432.*output, of shape "
        r"\(64, 64, 100663299\)"),
    "deform_conv2d padding": (lambda: engine.deform_conv2d(
        X4, np.zeros((1, 18, 1, 1), np.float32), W3, padding=65536),
        "padding=65536"),
    "interpolate scale_factor": (lambda: engine.interpolate(X4, scale_factor=1e5),
                                 "scale_factor=100000.0"),
    "interpolate size": (lambda: engine.interpolate(X4, size=(100000, 100000)),
                         r"size=\(100000, 100000\)"),
    "max_unpool2d stride": (lambda: engine.max_unpool2d(X4, np.zeros((1, 1, 4, 4), np.int64), 2,
                                                        stride=65536), "stride=65536"),
}


@pytest.mark.parametrize("case", list(FUNCTIONAL))
def test_the_functional_api_refuses_outputs_beyond_the_budget(case):
    call, argument = FUNCTIONAL[case]
    with pytest.raises(ValueError, match=rf"{argument}.*iB, more than the memory budget"):
        call()


def test_the_functional_api_still_runs_what_fits():
    y = engine.conv2d(X4, W3, padding=1)
    np.testing.assert_allclose(y, conv2d_ref(X4, W3, pads=((1, 1), (1, 1))), rtol=1e-6)


# ------------------------------------------------------------------------------ under RLIMIT_AS

CHILD = textwrap.dedent("""
    import json, os, resource, sys
    import numpy as np
    import onnx
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
    import engine
    MiB = 1 << 20

    def model(nodes, inits, x_shape):
        g = h.make_graph(nodes, "m", [h.make_tensor_value_info("x", T.FLOAT, list(x_shape))],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [nh.from_array(np.asarray(v), k) for k, v in inits.items()])
        return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)

    fill = h.make_tensor("value", T.FLOAT, [1], [1.0])
    cases = {
        # 65536 x 16 x 16 x 16 float32 activations: 1 GiB each, 2 GiB planned
        "native batch 65536": lambda: engine.load(sys.argv[1], max_memory=256 * MiB),
        "native batch 65536, default budget": lambda: engine.load(sys.argv[1]),
        "free batch run of 65536": lambda: engine.load(sys.argv[2]).run(
            {"x": np.zeros((65536, 1, 16, 16), np.float32)}),
        # output (1, 512, 131078, 6): 1.5 GiB
        "conv pads 65536": lambda: engine.load(model(
            [h.make_node("Conv", ["x", "w"], ["y"], pads=[65536, 0, 65536, 0])],
            {"w": np.ones((512, 1, 3, 3), np.float32)}, (1, 1, 8, 8))),
        # 3 GiB, under the 4 GiB single-tensor cap
        "expand to 3 GiB": lambda: engine.load(model(
            [h.make_node("Expand", ["one", "s"], ["e"]), h.make_node("Add", ["x", "e"], ["y"])],
            {"one": np.ones(1, np.float32), "s": np.array([3, 1 << 28], np.int64)}, (1,)),
            max_memory=256 * MiB),
        "constant of shape 3 GiB": lambda: engine.load(model(
            [h.make_node("ConstantOfShape", ["s"], ["c"], value=fill),
             h.make_node("Add", ["x", "c"], ["y"])],
            {"s": np.array([3, 1 << 28], np.int64)}, (1,)), max_memory=256 * MiB),
    }
    results = {}
    for name, case in cases.items():
        try:
            case()
            results[name] = ["ok", ""]
        except BaseException as e:
            results[name] = [type(e).__name__, str(e)]
    print(json.dumps(results))
""")


def native_file_with_batch(path, batch):
    """A native file of conv_softsign (16 channels) whose graph JSON declares ``batch``."""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    w16 = np.ones((16, 1, 3, 3), np.float32)
    free = os.path.join(path, "free.safetensors")
    engine.load(conv_softsign(w=w16)).save(free)
    with safe_open(free, framework="numpy") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    graph = json.loads(metadata["graph"])
    graph["inputs"][0]["shape"][0] = batch
    metadata["graph"] = json.dumps(graph)
    fixed = os.path.join(path, f"batch{batch}.safetensors")
    save_file(tensors, fixed, metadata=metadata)
    return fixed, free


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs Linux's /proc to size the address-space limit")
    path = str(tmp_path_factory.mktemp("budget"))
    fixed, free = native_file_with_batch(path, 65536)
    root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    # cwd away from the source tree, whose engine/ (without built kernels) would shadow the
    # installed package
    out = subprocess.run([sys.executable, "-c", CHILD, fixed, free], capture_output=True,
                         text=True, env=env, timeout=120, cwd=path)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case, pattern", [
    ("native batch 65536", r"x: 65536x1x16x16 needs 2.0 GiB.*256.0 MiB.*'c' 65536x16x16x16"),
    ("native batch 65536, default budget", r"x: 65536x1x16x16 needs 2.0 GiB"),
    ("free batch run of 65536", r"x: 65536x1x16x16 needs 2.0 GiB"),
    ("conv pads 65536", r"needs 1.5 GiB.*'y' 1x512x131078x6"),
    ("expand to 3 GiB", r"3.0 GiB.*max_memory.*256.0 MiB"),
])
def test_refused_under_an_address_space_limit_without_allocating(limited, case, pattern):
    kind, message = limited[case]
    assert kind == "ModelError", message
    assert re.search(pattern, message), message


def test_constant_of_shape_refused_under_an_address_space_limit(limited):
    kind, message = limited["constant of shape 3 GiB"]
    assert kind == "ModelError", f"{kind}: {message}"
