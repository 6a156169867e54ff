"""The plan-time layout pass that runs chains of layers on channel blocks (NCHWc,
engine/graph/layout.py), the blocked steps (engine/graph/blocked_conv.py, blocked_steps.py)
and the memory plan's placement of Concat inputs (engine/graph/plan.py); the kernels
themselves are tests/test_nchwc.py's.

References: float64 NumPy (tests/reference.py) or the same graph run on NCHW. 1 and 2 threads
must give bit-identical results.
"""
import numpy as np
import pytest

from engine._kernels import nchwc
from engine.graph import Graph, Model, Node, TensorSpec
from engine.graph import blocked_conv
from engine.graph import layout
from engine.dispatch import layout as layout_rules
from engine.ops import blocked
from concurrency import run_concurrently
from reference import conv2d_ref

from engine.ops.activation import kernel_act

B = blocked.BLOCK       # channels per block: 16 with AVX-512, 8 with AVX2
NAME = blocked.NAME


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------ layout pass

def spec(name, shape=None):
    return TensorSpec(name, shape, "float32")


def separable_net(rng, c=24, e=40):
    """stem 3x3 -> dw 3x3 (relu6) -> pw (relu6) -> pw + residual -> dw s2 -> GAP -> Gemm, with
    channel counts off the block size."""
    consts = {"w0": f32(rng, c, 3, 3, 3) * 0.3, "w1": f32(rng, c, 1, 3, 3) * 0.3,
              "w2": f32(rng, e, c, 1, 1) * 0.3, "w3": f32(rng, c, e, 1, 1) * 0.3,
              "w4": f32(rng, c, 1, 3, 3) * 0.3, "b4": f32(rng, c), "fw": f32(rng, 10, c),
              "fb": f32(rng, 10), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [Node("Conv", "stem", ["x", "w0"], ["s"], {"pads": [1, 1, 1, 1]}),
             Node("Relu", "r0", ["s"], ["a"]),
             Node("Conv", "dw1", ["a", "w1"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node("Clip", "c1", ["d", "lo", "hi"], ["dr"]),
             Node("Conv", "pw2", ["dr", "w2"], ["p"]),
             Node("Relu", "r2", ["p"], ["pr"]),
             Node("Conv", "pw3", ["pr", "w3"], ["q"]),
             Node("Add", "add", ["q", "a"], ["sum"]),
             Node("Conv", "dw4", ["sum", "w4", "b4"], ["z"],
                  {"pads": [1, 1, 1, 1], "group": c, "strides": [2, 2]}),
             Node("GlobalAveragePool", "gap", ["z"], ["g"]),
             Node("Flatten", "flat", ["g"], ["f"]),
             Node("Gemm", "fc", ["f", "fw", "fb"], ["y"], {"transB": 1})]
    return nodes, consts


def separable_ref(x, k):
    p1 = ((1, 1), (1, 1))
    c = k["w1"].shape[0]
    a = np.maximum(conv2d_ref(x, k["w0"], pads=p1), 0)
    d = np.clip(conv2d_ref(a, k["w1"], pads=p1, groups=c), 0, 6)
    p = np.maximum(conv2d_ref(d, k["w2"]), 0)
    s = conv2d_ref(p, k["w3"]) + a
    z = conv2d_ref(s, k["w4"], k["b4"], (2, 2), p1, groups=c)
    return z.mean(axis=(2, 3)) @ k["fw"].T.astype(np.float64) + k["fb"]


def steps_of(model):
    return [(s.node.op, type(s.op).__name__) for s in model._last_plan.steps]


def test_layout_pass_blocks_the_separable_chain(rng, threads):
    nodes, consts = separable_net(rng)
    model = Model(Graph(nodes, [spec("x", (2, 3, 11, 10))], [spec("y")], consts))
    x = f32(rng, 2, 3, 11, 10)
    y = model(x)
    ref = separable_ref(x, consts)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    kinds = [k for _, k in steps_of(model)]
    assert kinds == ["BlockedConv"] * 5 + ["BlockedGlobalAveragePool", "Flatten", "Gemm"]
    assert [s.op.conv_kind for s in model._last_plan.steps[:5]] == [
        "direct", "depthwise", "pointwise", "pointwise", "depthwise"]
    assert NAME in model.explain()
    # the graph the model keeps and saves is untouched
    assert all(n.op != "ToBlocked" for n in model.graph.nodes)


def test_layout_pass_can_be_turned_off_and_gives_the_same_values(rng):
    nodes, consts = separable_net(rng)
    x = f32(rng, 1, 3, 9, 9)
    on = Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts))
    nodes, _ = separable_net(np.random.default_rng(0))
    off = Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts), layout="nchw")
    assert "BlockedConv" not in [k for _, k in steps_of(off)]
    assert "layout nchw: forced by the caller (layout='nchw')" in off.explain()
    with pytest.raises(ValueError, match="layout must be one of"):
        Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts), layout="NCHW")
    a, b = on(x), off(x)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_blocked_tensors_read_in_nchw_are_converted_back(rng):
    """A blocked layer's output that is also a graph output gets one FromBlocked step; the
    Sigmoid between two pointwise layers runs on the blocks, so the third layer runs blocked
    too and its output (a graph output) is converted back once."""
    c = 20
    consts = {"w1": f32(rng, c, 1, 3, 3), "w2": f32(rng, c, c, 1, 1), "w3": f32(rng, 8, c, 1, 1)}
    nodes = [Node("Conv", "dw", ["x", "w1"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node("Conv", "pw", ["d", "w2"], ["p"]),
             Node("Sigmoid", "sig", ["p"], ["s"]),
             Node("Conv", "lone", ["s", "w3"], ["y2"])]
    model = Model(Graph(nodes, [spec("x", (1, c, 6, 7))], [spec("p"), spec("y2")], consts))
    x = f32(rng, 1, c, 6, 7)
    p_out, y2 = model(x)
    p = conv2d_ref(conv2d_ref(x, consts["w1"], pads=((1, 1), (1, 1)), groups=c), consts["w2"])
    assert np.abs(p_out - p).max() <= 1e-4 * np.abs(p).max()
    ref2 = conv2d_ref(1 / (1 + np.exp(-p)), consts["w3"])
    assert np.abs(y2 - ref2).max() <= 1e-4 * np.abs(ref2).max()
    kinds = steps_of(model)
    assert [k for _, k in kinds].count("FromBlocked") == 2
    assert ("Sigmoid", "Sigmoid") in kinds
    assert [k for _, k in kinds].count("BlockedConv") == 3


def test_conv_kind_rules(rng):
    """Which blocked kernel takes a layer (engine.dispatch.layout.blocked_kernel): pointwise,
    depthwise with multiplier 1, grouped within blocks, direct for few taps, dense for the
    other one-group layers but Winograd's 3x3 stride 1."""
    def kind(w, attrs, shape, act=None):
        node = Node("Conv", "c", ["x", "w"], ["y"], dict(attrs, **({"activation": act}
                                                                   if act else {})))
        from engine.graph.passes import make_op
        from engine.graph.ops import Info
        op = make_op(node, {"w": w})
        ins = [Info(shape, np.float32), Info(w.shape, np.float32, w)]
        op.infer(ins)
        kind, reason, alone = layout.conv_kind(op, ins)
        assert reason and (not alone or kind in ("dense", "pointwise", "winograd"))
        return kind
    assert kind(f32(rng, 8, 4, 1, 1), {}, (1, 4, 5, 5)) == "pointwise"
    assert kind(f32(rng, 8, 4, 1, 1), {}, (1, 4, 5, 5), "relu6") == "pointwise"
    # a strided 1x1: the pointwise kernel on the input taken every stride pixels
    assert kind(f32(rng, 8, 40, 1, 1), {"strides": [2, 2]}, (1, 40, 5, 5)) == "pointwise"
    assert kind(f32(rng, 8, 40, 1, 1), {"pads": [1, 1, 1, 1]}, (1, 40, 5, 5)) == "dense"
    assert kind(f32(rng, 8, 40, 1, 7), {"pads": [0, 3, 0, 3]}, (1, 40, 5, 9)) == "dense"
    assert kind(f32(rng, 8, 40, 3, 3), {"strides": [2, 2]}, (1, 40, 9, 9)) == "dense"
    assert kind(f32(rng, 8, 40, 3, 3), {"dilations": [2, 2]}, (1, 40, 9, 9)) == "winograd"
    # a rate past the map: most taps read padding, NCHW's live taps
    assert kind(f32(rng, 8, 40, 3, 3), {"dilations": [12, 12], "pads": [12] * 4},
                (1, 40, 14, 14)) is None
    assert kind(f32(rng, 8, 4, 1, 1), {"strides": [2, 2]}, (1, 4, 5, 5)) == "direct"
    assert kind(f32(rng, 8, 2, 1, 1), {"group": 2}, (1, 4, 5, 5)) is None
    assert kind(f32(rng, 4, 1, 3, 3), {"group": 4, "dilations": [2, 2]},
                (1, 4, 9, 9)) == "depthwise"
    assert kind(f32(rng, 8, 1, 3, 3), {"group": 4}, (1, 4, 9, 9)) is None   # multiplier 2
    assert kind(f32(rng, 8, 3, 3, 3), {"strides": [2, 2]}, (1, 3, 9, 9)) == "direct"
    # 3x3 stride 1: Winograd on blocks from 8 input channels, dense below
    assert kind(f32(rng, 8, 5, 3, 3), {}, (1, 5, 9, 9)) == "dense"       # 45 taps, 5 channels
    assert kind(f32(rng, 256, 256, 3, 3), {"pads": [1] * 4}, (1, 256, 14, 14)) == "winograd"
    # groups inside blocks: 16 (where a block holds 16), 8 or 4 channels each way
    assert kind(f32(rng, 64, B, 3, 3), {"group": 64 // B}, (1, 64, 9, 9)) == "grouped"
    assert kind(f32(rng, 24, 8, 3, 3), {"group": 3}, (1, 24, 9, 9)) == "grouped"
    assert kind(f32(rng, 32, 4, 3, 3), {"group": 8}, (1, 32, 9, 9)) == "grouped"
    assert kind(f32(rng, 32, 2, 3, 3), {"group": 16}, (1, 32, 9, 9)) == "grouped"
    assert kind(f32(rng, 36, 3, 3, 3), {"group": 12}, (1, 36, 9, 9)) is None  # 16 % 3
    assert kind(f32(rng, 48, 12, 3, 3), {"group": 4}, (1, 48, 9, 9)) is None  # 16 % 12
    # 8 in, 16 out: whole blocks each way where a block holds 8 (the dense kernel group by
    # group), else neither in one block nor in whole ones
    assert kind(f32(rng, 64, 8, 3, 3), {"group": 4}, (1, 32, 9, 9)) == (
        "dense" if 8 % B == 0 else None)


def test_eight_python_threads_running_blocked_layers_match_serial_runs(rng):
    """Each call gets its own activation buffers, blocked ones included."""
    nodes, consts = separable_net(rng)
    model = Model(Graph(nodes, [spec("x", (2, 3, 12, 12))], [spec("y")], consts))
    assert "BlockedConv" in [k for _, k in steps_of(model)]
    inputs = [f32(np.random.default_rng(k), 2, 3, 12, 12) for k in range(8)]
    serial = [model(x) for x in inputs]
    results, errors = run_concurrently(model, inputs, 10)
    assert not errors
    for k in range(8):
        for r in results[k]:
            np.testing.assert_array_equal(r, serial[k])


def test_blocked_weights_sit_side_by_side_in_one_buffer(rng):
    """A plan's packed weights are copied, in order, into one buffer starting on a huge-page
    boundary, each 64-byte aligned, values and shapes unchanged."""
    arrays = [f32(rng, 5), f32(rng, 2, 3, 3, B), f32(rng, 33)]
    views = blocked.side_by_side(arrays)
    for a, v in zip(arrays, views):
        np.testing.assert_array_equal(v, a)
        assert v.shape == a.shape and v.ctypes.data % 64 == 0
    assert views[0].ctypes.data % blocked.HUGE_PAGE == 0
    assert views[0].base is views[1].base is views[2].base
    assert views[0].ctypes.data < views[1].ctypes.data < views[2].ctypes.data
    nodes, consts = separable_net(rng)
    model = Model(Graph(nodes, [spec("x", (1, 3, 9, 9))], [spec("y")], consts))
    ws = [s.op.w for s in model._last_plan.steps if type(s.op).__name__ == "BlockedConv"]
    assert len(ws) == 5 and all(w.base is ws[0].base for w in ws)


def random_graph(rng, steps=10):
    """A random chain of pointwise, depthwise (strides 1-2), dense 3x3, direct-eligible,
    Relu, Sigmoid, HardSwish, Add, Concat, squeeze-excite (global pool, two 1x1 layers, a
    per-channel Mul) and per-channel or scalar arithmetic nodes on channel counts off the block
    size, each node reading the newest tensor and sometimes an older one of the same shape,
    with a random output set."""
    consts, nodes = {}, []
    shapes = {"x": (1, 3, 11, 9)}
    order = ["x"]
    for i in range(steps):
        src = order[-1]
        n, c, h, w = shapes[src]
        kind = rng.choice(["pw", "pw", "dw", "dw", "dense", "relu", "sigmoid", "add", "concat",
                           "hardswish", "se", "channel_sub", "scale"])
        out = f"t{i}"
        if kind == "pw":
            k = int(rng.integers(1, 40))
            consts[f"w{i}"] = f32(rng, k, c, 1, 1) * 0.3
            consts[f"b{i}"] = f32(rng, k)
            nodes.append(Node("Conv", f"n{i}", [src, f"w{i}", f"b{i}"], [out],
                              {"activation": str(rng.choice(["relu", "relu6", "silu", "hardswish"]))}
                              if rng.random() < 0.5 else {}))
            shapes[out] = (n, k, h, w)
        elif kind == "dw":
            s = int(rng.integers(1, 3))
            consts[f"w{i}"] = f32(rng, c, 1, 3, 3) * 0.3
            nodes.append(Node("Conv", f"n{i}", [src, f"w{i}"], [out],
                              {"pads": [1, 1, 1, 1], "group": c, "strides": [s, s]}))
            shapes[out] = (n, c, (h - 1) // s + 1, (w - 1) // s + 1)
        elif kind == "dense":
            k = int(rng.integers(1, 20))
            consts[f"w{i}"] = f32(rng, k, c, 3, 3) * 0.2
            nodes.append(Node("Conv", f"n{i}", [src, f"w{i}"], [out], {"pads": [1, 1, 1, 1]}))
            shapes[out] = (n, k, h, w)
        elif kind in ("relu", "sigmoid", "hardswish"):
            op = {"relu": "Relu", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}[kind]
            nodes.append(Node(op, f"n{i}", [src], [out]))
            shapes[out] = shapes[src]
        elif kind == "se":
            r = max(1, c // 4)
            consts[f"w{i}a"] = f32(rng, r, c, 1, 1) * 0.3
            consts[f"w{i}b"] = f32(rng, c, r, 1, 1) * 0.3
            nodes += [Node("GlobalAveragePool", f"n{i}g", [src], [f"{out}g"]),
                      Node("Conv", f"n{i}a", [f"{out}g", f"w{i}a"], [f"{out}a"],
                           {"activation": "relu"}),
                      Node("Conv", f"n{i}b", [f"{out}a", f"w{i}b"], [f"{out}b"]),
                      Node("HardSigmoid", f"n{i}h", [f"{out}b"], [f"{out}h"]),
                      Node("Mul", f"n{i}", [src, f"{out}h"] if rng.random() < 0.5
                           else [f"{out}h", src], [out])]
            shapes[out] = shapes[src]
        elif kind == "channel_sub":
            consts[f"v{i}"] = f32(rng, 1, c, 1, 1)
            nodes.append(Node("Sub", f"n{i}", [src, f"v{i}"], [out]))
            shapes[out] = shapes[src]
        elif kind == "scale":
            consts[f"v{i}"] = np.array(rng.uniform(0.5, 2), np.float32)
            nodes.append(Node("Mul", f"n{i}", [f"v{i}", src], [out]))
            shapes[out] = shapes[src]
        else:
            same = [t for t in order[:-1] if shapes[t] == shapes[src]]
            other = str(rng.choice(same)) if same else src
            if kind == "add":
                nodes.append(Node("Add", f"n{i}", [src, other], [out]))
                shapes[out] = shapes[src]
            else:
                nodes.append(Node("Concat", f"n{i}", [src, other], [out], {"axis": 1}))
                shapes[out] = (n, 2 * c, h, w)
        order.append(out)
    outs = [order[-1]] + [t for t in order[1:-1] if rng.random() < 0.2]
    return nodes, consts, outs


@pytest.mark.parametrize("seed", range(24))
def test_random_graphs_give_the_same_values_with_and_without_the_layout(seed):
    """The layout pass changes how tensors are stored, never what a model computes: random
    graphs agree with the all-NCHW plan within float32 rounding (1e-5 of the output's range),
    and some of their layers do run blocked (all it can when forced)."""
    rng = np.random.default_rng(100 + seed)
    nodes, consts, outs = random_graph(rng)
    x = f32(rng, 1, 3, 11, 9)

    def build(layout):
        return Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                            for n in nodes], [spec("x", (1, 3, 11, 9))],
                           [spec(o) for o in outs], consts), layout=layout)
    blocked_model = build("auto")
    got = blocked_model.run({"x": x})
    ref = build("nchw").run({"x": x})
    # every layer a blocked kernel can run, blocked, neighbours or not
    everywhere = build("nchwc")
    n_blocked = [k for _, k in steps_of(everywhere)].count("BlockedConv")
    assert n_blocked >= max(1, [k for _, k in steps_of(blocked_model)].count("BlockedConv"))
    forced = everywhere.run({"x": x})
    for name in outs:
        scale = max(1.0, float(np.abs(ref[name]).max()))
        assert got[name].shape == ref[name].shape
        assert np.abs(got[name] - ref[name]).max() <= 1e-5 * scale, name
        assert np.abs(forced[name] - ref[name]).max() <= 1e-5 * scale, name


def test_explain_says_when_a_depthwise_layer_goes_by_whole_planes(rng):
    """pw -> 5x5 depthwise on 7x7 -> pw: the depthwise step says it takes each block's plane
    whole (ce_nc_dw_plane), and on 28x28 says so only on 8-float builds (16-float builds take
    planes of at most 16 rows); values as the NCHW plan's either way."""
    c = 3 * B
    w = {"a": f32(rng, c, 16, 1, 1) * 0.3, "d": f32(rng, c, 1, 5, 5) * 0.3,
         "p": f32(rng, 16, c, 1, 1) * 0.3}
    for size, planes in ((7, True), (28, B == 8)):
        g = Graph([Node("Conv", "pa", ["x", "a"], ["ya"], {"activation": "relu"}),
                   Node("Conv", "dw", ["ya", "d"], ["yd"], {"pads": [2, 2, 2, 2], "group": c}),
                   Node("Conv", "pb", ["yd", "p"], ["y"])],
                  [TensorSpec("x", (1, 16, size, size), "float32")],
                  [TensorSpec("y", None, "float32")], w)
        model = Model(g)
        text = model.explain()
        assert f"depthwise on {NAME}" in text, text
        assert ("plane whole through a zero-bordered copy" in text) == planes, text
        x = f32(rng, 1, 16, size, size)
        got = model.run({"x": x})["y"]
        np.testing.assert_allclose(got, Model(g, layout="nchw").run({"x": x})["y"], rtol=0,
                                   atol=1e-5 * float(np.abs(got).max()))


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
def test_elementwise_steps_and_squeeze_excite_run_on_the_blocks(rng, pool):
    """pw -> HardSwish -> dw -> squeeze-excite (GAP, 1x1, 1x1, HardSigmoid, per-channel Mul)
    -> pw, on 40 channels: the activation and the squeeze-excite run on the blocks."""
    c, r = 40, 10
    consts = {"w0": f32(rng, c, 8, 1, 1) * 0.3, "w1": f32(rng, c, 1, 3, 3) * 0.3,
              "wa": f32(rng, r, c, 1, 1) * 0.3, "wb": f32(rng, c, r, 1, 1) * 0.3,
              "w2": f32(rng, 16, c, 1, 1) * 0.3}
    nodes = [Node("Conv", "pw0", ["x", "w0"], ["p"]),
             Node("HardSwish", "hs", ["p"], ["ph"]),
             Node("Conv", "dw", ["ph", "w1"], ["d"], {"pads": [1, 1, 1, 1], "group": c}),
             Node(pool, "gap", ["d"], ["g"], {"axes": [-1, 2]} if pool == "ReduceMean" else {}),
             Node("Conv", "fc1", ["g", "wa"], ["a"], {"activation": "relu"}),
             Node("Conv", "fc2", ["a", "wb"], ["b"]),
             Node("HardSigmoid", "hsig", ["b"], ["s"]),
             Node("Mul", "scale", ["d", "s"], ["e"]),
             Node("Conv", "pw2", ["e", "w2"], ["y"])]
    x = f32(rng, 1, 8, 14, 14)
    ref = Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                       for n in nodes], [spec("x", x.shape)], [spec("y")], consts),
                layout="nchw")
    model = Model(Graph(nodes, [spec("x", x.shape)], [spec("y")], consts))
    got, want = model(x), ref(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    ops = [op for op, _ in steps_of(model)]
    # the only layout changes: the stem's input and the output; the HardSwish runs in the
    # blocked pointwise kernel's output step, the squeeze-excite as one step on the blocks
    assert ops == ["ToBlocked", "Conv", "Conv", "SqueezeExcite", "Conv", "FromBlocked"], ops
    text = model.explain()
    assert "+ hardswish in the kernel's output step" in text
    assert f"-> relu -> 1x1 -> hardsigmoid -> scale, on the {NAME} input in place" in text


def test_a_regnet_block_stays_blocked_through_its_grouped_layer(rng):
    """pw -> grouped 3x3 (a block's channels a group) -> pw + residual: the body blocked, no
    layout change around the grouped layer, the values those of the all-NCHW plan."""
    c = 64
    consts = {"wa": f32(rng, c, 24, 1, 1) * 0.3, "wg": f32(rng, c, B, 3, 3) * 0.3,
              "wb": f32(rng, c, c, 1, 1) * 0.3, "wr": f32(rng, c, 24, 1, 1) * 0.3}
    nodes = [Node("Conv", "a", ["x", "wa"], ["pa"], {"activation": "relu"}),
             Node("Conv", "g", ["pa", "wg"], ["pg"], {"pads": [1, 1, 1, 1], "group": c // B,
                                                       "activation": "relu"}),
             Node("Conv", "b", ["pg", "wb"], ["pb"]),
             Node("Conv", "r", ["x", "wr"], ["pr"]),
             Node("Add", "add", ["pb", "pr"], ["y"])]

    def build(layout):
        return Model(Graph([Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
                            for n in nodes], [spec("x", (1, 24, 14, 14))], [spec("y")], consts),
                     layout=layout)
    x = f32(rng, 1, 24, 14, 14)
    model, ref = build("auto"), build("nchw")
    got, want = model(x), ref(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert f"grouped on {NAME}" in model.explain()
    kinds = {s.node.name: type(s.op).__name__ for s in model._last_plan.steps}
    assert kinds["a"] == kinds["g"] == kinds["b"] == "BlockedConv", kinds


def test_pointwise_threads_share_groups_only_when_even():
    """Two threads take groups of output blocks only when that leaves neither much more than
    half: two and nine whole groups yes; a group and a block no (on AVX-512's groups of 4: 5
    blocks, as 4 against 1), nor 25 blocks on a 7x7 map; a slack of 0 never; one thread
    never."""
    from engine._kernels.nchwc import pointwise_by_groups
    group = 4 if B == 16 else 2
    assert pointwise_by_groups(1, 196, 2 * group, 2, 1.15)
    assert pointwise_by_groups(1, 196, 9 * group, 2, 1.15)
    assert not pointwise_by_groups(1, 196, group + 1, 2, 1.15)
    if group == 4:
        assert not pointwise_by_groups(1, 49, 25, 2, 1.15)     # RegNet-X's 400 channels
    assert not pointwise_by_groups(1, 196, 2 * group, 2, 0.0)
    assert not pointwise_by_groups(1, 196, 2 * group, 1, 1.15)


def residual_graph(c, own_input=False):
    """t = relu(conv1x1(x)); y = relu(conv1x1(t) + x), or relu(conv1x1(x) + x): x (blocked)
    dies at the second convolution, which adds it."""
    rng = np.random.default_rng(5)
    w1, w2 = (f32(rng, c, c, 1, 1) / np.float32(np.sqrt(c)) for _ in range(2))
    nodes = [Node("Relu", "r0", ["x0"], ["x"]),
             Node("Conv", "c1", ["x", "w1"], ["a"]), Node("Relu", "r1", ["a"], ["t"]),
             Node("Conv", "c2", ["x" if own_input else "t", "w2"], ["b"]),
             Node("Add", "add", ["b", "x"], ["s"]), Node("Relu", "r2", ["s"], ["y"])]
    graph = Graph(nodes, [TensorSpec("x0", (1, c, 10, 12), "float32")],
                  [TensorSpec("y", None, "float32")], {"w1": w1, "w2": w2})
    return Model(graph, layout="nchwc"), (w1, w2)


def arena_tensors(model, shape):
    return int(model.explain({"x0": shape}).split("memory: ")[1].split()[0])


@pytest.mark.parametrize("c", [4 * B, nchwc.BATCH * B, nchwc.BATCH * B + 3])
def test_a_pointwise_layer_takes_over_its_dying_residual(rng, c, monkeypatch):
    """The 1x1 layer with a residual add writes into the residual's buffer when the residual
    dies there and the kernel sums each output whole before storing it (at most nchwc.BATCH
    input blocks): one buffer fewer, the same values bit for bit as a plan that keeps them
    apart, within 1e-5 of the sum of |terms| of float64, at 1 and 2 threads. With more input
    blocks, or where the layer reads the residual as its own input, it does not take it."""
    x0 = f32(rng, 1, c, 10, 12)
    taking, (w1, w2) = residual_graph(c)
    n_taking = arena_tensors(taking, x0.shape)
    outs = {t: taking.run({"x0": x0}, num_threads=t)["y"] for t in (1, 2)}
    monkeypatch.setattr(blocked_conv.BlockedConv, "inplace_inputs", lambda *a: ())
    apart, _ = residual_graph(c)
    takes = blocked.blocks(c) <= nchwc.BATCH
    assert n_taking == arena_tensors(apart, x0.shape) - (1 if takes else 0)
    x = np.maximum(x0.astype(np.float64), 0)
    t = np.maximum(conv2d_ref(x, w1), 0)
    z, terms = conv2d_ref(t, w2) + x, conv2d_ref(t, np.abs(w2)) + x
    for threads, y in outs.items():
        np.testing.assert_array_equal(y, apart.run({"x0": x0}, num_threads=threads)["y"])
        assert np.all(np.abs(y - np.maximum(z, 0)) <= 1e-5 * terms + 1e-30)
    monkeypatch.undo()
    own, _ = residual_graph(c, own_input=True)
    y = own.run({"x0": x0})["y"]
    want = np.maximum(conv2d_ref(x, w2) + x, 0)
    assert np.all(np.abs(y - want) <= 1e-5 * (conv2d_ref(x, np.abs(w2)) + x) + 1e-30)


def test_the_pointwise_kernel_refuses_a_residual_it_would_overwrite(rng):
    c = (nchwc.BATCH + 1) * B
    w = f32(rng, c, c, 1, 1)
    wp, bp = blocked.pack_pointwise(w, np.zeros(c, np.float32))
    x = blocked.to_blocked(f32(rng, 1, c, 4, 4))
    out = np.zeros_like(x)
    with pytest.raises(ValueError, match="residual may be out"):
        nchwc.f32_pointwise_blocked(x, wp, bp, out, out, kernel_act(None), 1)


def test_reading_the_shape_of_a_blocked_tensor_needs_no_layout_change(rng):
    """Shape and Size of a tensor the plan holds only blocked give its NCHW shape, folded
    while planning: no FromBlocked for them, so the global average pool beside them reads the
    blocks in place (DeepLabV3's pooling branch takes its Resize size from the backbone's
    output)."""
    w = f32(rng, 40, 24, 1, 1)
    nodes = [Node("Conv", "c", ["x", "w"], ["y"]), Node("Shape", "s", ["y"], ["s"], {"start": 1}),
             Node("Size", "n", ["y"], ["n"]), Node("GlobalAveragePool", "g", ["y"], ["g"])]
    graph = Graph(nodes, [TensorSpec("x", (None, 24, 7, 9), "float32")],   # a free batch
                  [TensorSpec(o, None, None) for o in ("g", "s", "n")], {"w": w})
    model = Model(graph, layout="nchwc")
    text = model.explain({"x": (2, 24, 7, 9)})
    assert "FromBlocked" not in text and f"on the {blocked.NAME} input in place" in text
    x = f32(rng, 2, 24, 7, 9)
    out = model.run({"x": x})
    np.testing.assert_array_equal(out["s"], [40, 7, 9])
    assert int(out["n"]) == 2 * 40 * 7 * 9
    want = conv2d_ref(x, w).mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(out["g"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, transform, blocked_resize", [
    ("linear", "half_pixel", True), ("nearest", "asymmetric", True),
    ("cubic", "align_corners", True), ("linear", "tf_crop_and_resize", False)])
def test_a_pooled_branch_resized_back_stays_blocked(rng, mode, transform, blocked_resize):
    """DeepLabV3's image pooling: GlobalAveragePool -> 1x1 -> Resize back to the map's size
    (sizes from the map's Shape) -> Concat with the map -> 1x1. A 1x1 map resized reads its
    one pixel at every tap: copied to every pixel on blocks, no layout change; but not a
    crop-and-resize, whose region may fall outside the input (extrapolation value 0 here).
    32 channels: a blocked Concat takes whole blocks but for its last input."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    c = 32
    inits = {"w": f32(rng, c, 8, 3, 3) * 0.3, "wp": f32(rng, c, c, 1, 1) * 0.3,
             "wo": f32(rng, 16, 2 * c, 1, 1) * 0.3, "two": np.array([2], np.int64),
             "four": np.array([4], np.int64), "zero": np.array([0], np.int64),
             "roi": np.array([0, 0, -0.5, -0.5, 1, 1, 1.5, 1.5], np.float32)}
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    nodes = [h.make_node("Conv", ["x", "w"], ["m"], pads=[1, 1, 1, 1]),
             h.make_node("GlobalAveragePool", ["m"], ["g"]),
             h.make_node("Conv", ["g", "wp"], ["p"]),
             h.make_node("Shape", ["m"], ["s"]),
             h.make_node("Slice", ["s", "two", "four", "zero"], ["hw"]),
             h.make_node("Slice", ["s", "zero", "two", "zero"], ["nc"]),
             h.make_node("Concat", ["nc", "hw"], ["size"], axis=0),
             h.make_node("Resize", ["p", "roi" if transform == "tf_crop_and_resize" else "",
                                    "", "size"], ["r"], **attrs),
             h.make_node("Concat", ["m", "r"], ["cat"], axis=1),
             h.make_node("Conv", ["cat", "wo"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 8, 9, 11])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)
    from engine import load
    model = load(m, layout="nchwc")
    text = model.explain()
    assert ("a 1x1 map resized on" in text) == blocked_resize, text
    x = f32(rng, 1, 8, 9, 11)
    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------- a pointwise layer fused into its depthwise reader

def expand_net(c, e, k=3, stride=2, finite=True, second_reader=False):
    """pw (relu6) -> dw k x k (relu6) -> pw, MobileNetV2's inverted bottleneck; optionally a
    non-finite depthwise weight or a second reader of the expanded map."""
    rng = np.random.default_rng(3)
    consts = {"w1": f32(rng, e, c, 1, 1) * 0.3, "w2": f32(rng, e, 1, k, k) * 0.3,
              "w3": f32(rng, c, e, 1, 1) * 0.3, "lo": np.array(0, np.float32),
              "hi": np.array(6, np.float32)}
    if not finite:
        consts["w2"][0, 0, 0, 0] = np.inf
    p = k // 2
    nodes = [Node("Conv", "expand", ["x", "w1"], ["p"]),
             Node("Clip", "c1", ["p", "lo", "hi"], ["pr"]),
             Node("Conv", "dw", ["pr", "w2"], ["d"],
                  {"pads": [p, p, p, p], "group": e, "strides": [stride, stride]}),
             Node("Clip", "c2", ["d", "lo", "hi"], ["dr"]),
             Node("Conv", "project", ["dr", "w3"], ["y"])]
    outputs = [spec("y")]
    if second_reader:
        nodes.append(Node("Conv", "other", ["pr", "w3"], ["y2"]))
        outputs.append(spec("y2"))
    return Graph(nodes, [spec("x", (None, c, None, None))], outputs, consts)


def test_a_large_expanded_map_is_never_stored(rng, threads):
    c, e, hw = 16, 96, 56          # 96 x 56 x 56 floats: over EXPAND_DEPTHWISE_MIN_FLOATS
    assert e * hw * hw >= layout_rules.EXPAND_DEPTHWISE_MIN_FLOATS
    x = f32(rng, 2, c, hw, hw)
    model = Model(expand_net(c, e))
    y = model(x)
    kinds = [k for _, k in steps_of(model)]
    assert "BlockedExpandDepthwise" in kinds and kinds.count("BlockedConv") == 1
    assert "in one pass" in model.explain() and "is never stored" in model.explain()
    ref = Model(expand_net(c, e), layout="nchw")(x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    # explain(errors=True) measures the fused step against both layers in float64
    from engine.lab.errors import conv_errors
    plan = model._last_plan
    errors = conv_errors(plan, [x])
    fused = [k for k, s in enumerate(plan.steps)
             if type(s.op).__name__ == "BlockedExpandDepthwise"]
    assert fused and all(0 < errors[k] < 1e-5 for k in fused)
    # a small map, a non-finite depthwise weight or a second reader keep the two steps
    small = Model(expand_net(c, e))
    small(x[:, :, :14, :14])
    assert "BlockedExpandDepthwise" not in [k for _, k in steps_of(small)]
    for net in (expand_net(c, e, finite=False), expand_net(c, e, second_reader=True)):
        m = Model(net)
        m(x)
        assert "BlockedExpandDepthwise" not in [k for _, k in steps_of(m)]


def test_expand_depthwise_rule():
    ok, why = layout_rules.fuse_expand_depthwise(96, (112, 112), (3, 3), (2, 2), (1, 1), 30000,
                                                 True)
    assert ok and "never stored" in why
    for args, words in [(((3, 3), (1, 1), (2, 2), 30000, True), "undilated"),
                        (((3, 3), (1, 3), (1, 1), 30000, True), "stride 1 or 2"),
                        (((3, 3), (1, 1), (1, 1), 30000, False), "non-finite"),
                        (((3, 3), (1, 1), (1, 1), 1 << 20, True), "would not stay in L2")]:
        ok, why = layout_rules.fuse_expand_depthwise(96, (112, 112), *args)
        assert not ok and words in why
    ok, why = layout_rules.fuse_expand_depthwise(96, (14, 14), (3, 3), (1, 1), (1, 1), 3000, True)
    assert not ok and "stays in cache" in why


# (N, C, K, H, W, kernel, stride, pad, dilation): a network's first layer and its variants
