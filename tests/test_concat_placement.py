"""The memory plan's placement of a blocked Concat's inputs (engine/graph/plan.py
_placements, Op.placements, BlockedConcat): each input written where the Concat's output keeps
it, checked by address and against the same graph run on NCHW, at 1 and 2 threads.
"""
import numpy as np

from engine.graph import Graph, Model, Node, TensorSpec
from engine.ops import blocked

B = blocked.BLOCK       # channels per block: 16 with AVX-512, 8 with AVX2


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def spec(name, shape=None):
    return TensorSpec(name, shape, "float32")


def dense_block_net(rng, c=2 * B, growth=B, layers=3, extra=None):
    """DenseNet's block: each layer a 3x3 conv (relu) on the Concat of the block's input and
    every layer's output before it; the block ends in the Concat of all of them, then a 1x1.
    ``extra``: further nodes (reading the names above) and their outputs. Whole blocks of
    channels, so that the Concats run on blocks with either block size."""
    consts, nodes = {}, [Node("Conv", "stem", ["x", "w0"], ["f0"], {"pads": [1, 1, 1, 1]}),
                         Node("Relu", "r0", ["f0"], ["x0"])]
    consts["w0"] = f32(rng, c, 3, 3, 3) * 0.3
    feats, width = ["x0"], c
    for k in range(1, layers + 1):
        cat = f"cat{k}"
        nodes.append(Node("Concat", cat, list(feats), [cat], {"axis": 1}))
        consts[f"w{k}"] = f32(rng, growth, width, 3, 3) * 0.2
        nodes.append(Node("Conv", f"conv{k}", [cat, f"w{k}"], [f"p{k}"], {"pads": [1, 1, 1, 1]}))
        nodes.append(Node("Relu", f"r{k}", [f"p{k}"], [f"x{k}"]))
        feats.append(f"x{k}")
        width += growth
    nodes.append(Node("Concat", "block", list(feats), ["blk"], {"axis": 1}))
    consts["wt"] = f32(rng, 8, width, 1, 1) * 0.2
    nodes.append(Node("Conv", "trans", ["blk", "wt"], ["y"]))
    outputs = [spec("y")]
    for node, out in (extra or []):
        nodes.append(node)
        outputs.append(spec(out))
    return Graph(nodes, [spec("x", (None, 3, None, None))], outputs, consts)


def concat_steps(model):
    return [s for s in model._last_plan.steps if type(s.op).__name__ == "BlockedConcat"]


def test_a_dense_block_writes_every_feature_once_where_its_concats_keep_it(rng, threads):
    x = f32(rng, 1, 3, 12, 11)
    model = Model(dense_block_net(np.random.default_rng(7)))
    y = model(x)
    ref = Model(dense_block_net(np.random.default_rng(7)), layout="nchw")(x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    cats = concat_steps(model)
    assert len(cats) == 4
    # every input of every Concat is in place: the block's buffer holds them all, and each
    # layer's Concat is its first part
    assert all(s.op.placed_inputs == frozenset(range(len(s.node.inputs))) for s in cats)
    assert "written in place by the steps that make them" in model.explain()
    placed_where_read(model)
    plan = model._last_plan
    roots = {plan.root[s.names[0]] for s in cats}
    assert len(roots) == 1


def placed_where_read(model):
    """For each blocked Concat, that every input it leaves in place is where the output
    holds it (the arrays of the running thread)."""
    plan = model._last_plan
    env = plan.env()
    for s in concat_steps(model):
        out, at = env[s.o[0]], 0
        for k, x in enumerate(s.ins):
            if k in s.op.placed_inputs:
                assert env[s.i[k]].ctypes.data == out[:, at:].ctypes.data
            at += x.shape[1]


def test_concat_inputs_that_cannot_be_placed_are_copied(rng):
    """Concats after the block reading its features again (one of them twice): each tensor
    has one place, so the block's Concats copy what a later one holds; two images (the
    blocks of an input are then not one run of the output's bytes) place nothing."""
    extra = [(Node("Concat", "twice", ["x1", "x1"], ["tw"], {"axis": 1}), "tw"),
             (Node("Concat", "again", ["x2", "x0"], ["ag"], {"axis": 1}), "ag"),
             (Node("Relu", "rx1", ["x1"], ["x1r"]), "x1r")]
    x = f32(rng, 1, 3, 9, 10)
    model = Model(dense_block_net(np.random.default_rng(5), extra=extra))
    got = model(x)
    want = Model(dense_block_net(np.random.default_rng(5), extra=extra), layout="nchw")(x)
    for a, b in zip(got, want):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    placed_where_read(model)
    by_name = {s.node.name: s for s in concat_steps(model)}
    assert len(by_name["twice"].op.placed_inputs) <= 1        # x1 has one place at most
    assert by_name["block"].op.placed_inputs != frozenset(range(4))
    two = Model(dense_block_net(np.random.default_rng(5)))
    x2 = f32(rng, 2, 3, 9, 10)
    y2 = two(x2)
    assert all(not s.op.placed_inputs for s in concat_steps(two))
    want2 = Model(dense_block_net(np.random.default_rng(5)), layout="nchw")(x2)
    assert np.abs(y2 - want2).max() <= 1e-5 * np.abs(want2).max()


def test_a_step_writes_over_a_placed_input_only_where_the_buffer_starts(rng, threads):
    """a and b sit side by side in their Concat's output f; b dies at a Relu after f's last
    reader. The Relu may not take the buffer over from b, which sits past a: its output
    would start where a does and run over b as it reads it."""
    c = B
    consts = {"wa": f32(rng, c, c, 1, 1), "wb": f32(rng, 3 * c, c, 1, 1),
              "wf": f32(rng, c, 4 * c, 1, 1), "wz": f32(rng, c, 3 * c, 1, 1)}

    def graph():
        nodes = [Node("Conv", "ca", ["x", "wa"], ["a"]), Node("Conv", "cb", ["x", "wb"], ["b"]),
                 Node("Concat", "cat", ["a", "b"], ["f"], {"axis": 1}),
                 Node("Conv", "cf", ["f", "wf"], ["g"]),
                 Node("Relu", "rb", ["b"], ["br"]),
                 Node("Conv", "cz", ["br", "wz"], ["z"]),
                 Node("Concat", "out", ["g", "z"], ["y"], {"axis": 1})]
        return Graph(nodes, [spec("x", (1, c, 10, 9))], [spec("y")], consts)
    x = f32(rng, 1, c, 10, 9)
    model = Model(graph())
    got = model(x)
    want = Model(graph(), layout="nchw")(x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    placed_where_read(model)
    assert concat_steps(model)[0].op.placed_inputs == frozenset({0, 1})
    plan = model._last_plan
    assert [s.node.name for s in plan.steps if s.node.op in ("Conv", "Relu")][2:4] == ["cf", "rb"]
    env = plan.env()
    relu = next(s for s in plan.steps if s.node.op == "Relu")
    b, br = env[relu.i[0]], env[relu.o[0]]
    # a separate buffer, or b's own bytes: never the Concat's first bytes, which are a's
    assert not np.shares_memory(b, br) or b.ctypes.data == br.ctypes.data
