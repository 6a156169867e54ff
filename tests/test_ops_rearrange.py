"""Rearranging and generating operators (engine/graph/ops/rearrange.py) and Einsum
(engine/graph/ops/einsum.py), each checked against a NumPy reference written here (float64
where arithmetic is involved), ONNX Runtime, and where useful PyTorch or ONNX's
ReferenceEvaluator; then malformed nodes, which must raise engine.ModelError naming the node.

Error model: the copies (DepthToSpace, SpaceToDepth, Tile, Trilu, OneHot) and the generated
integer values must be exact. CumSum and Einsum sum in float32: a sum of k float32 terms
carries an error of at most about k * eps32 times the sum of the terms' magnitudes, so each
output element is checked against TOL_TERMS * (k + 1) * eps32 * (the same sum taken over |x|),
computed in float64 alongside the reference (TOL_TERMS = 2 leaves room for the product's own
rounding). Range's float elements are start + i * delta rounded once to float32: exact against
the float64 formula rounded the same way.
"""
import itertools
import random

import numpy as np
import pytest

import engine

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
TOL_TERMS = 2.0
ELEM = {np.dtype(np.float32): T.FLOAT, np.dtype(np.float64): T.DOUBLE,
        np.dtype(np.int64): T.INT64, np.dtype(np.int32): T.INT32, np.dtype(bool): T.BOOL}


# ============================================================================ helpers

def model(op, feeds, consts=None, out=None, opset=13, name="n", **attrs):
    """One-node model: ``feeds`` (name -> array) are graph inputs, ``consts`` initializers; the
    node reads them in the order given (feeds first, then consts, "" for an absent input).
    Output "y" of element type ``out`` (default: the first input's)."""
    consts = consts or {}
    if out is None:
        out = ELEM[np.asarray(next(iter({**feeds, **consts}.values()))).dtype]
    inputs = [h.make_tensor_value_info(k, ELEM[np.asarray(v).dtype], np.shape(v))
              for k, v in feeds.items()]
    names = list(feeds) + list(consts)
    node = h.make_node(op, [n if not n.startswith("_absent") else "" for n in names],
                       ["y"], name=name, **attrs)
    inits = [nh.from_array(np.asarray(v), k) for k, v in consts.items()
             if not k.startswith("_absent")]
    g = h.make_graph([node], "t", inputs, [h.make_tensor_value_info("y", out, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def run_engine(m, feeds):
    return engine.load(m).run(feeds)["y"]


def run_ort(m, feeds):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def oracle(m, feeds):
    """ONNX Runtime's output, or the ONNX reference's where ONNX Runtime has no kernel for
    these element types."""
    try:
        return run_ort(m, feeds)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        return ReferenceEvaluator(m).run(None, feeds)[0]


def exact(got, want):
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want)


def close(got, ref, bound):
    """|got - ref| <= bound elementwise; ref and bound float64."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound + 1e-30), f"max excess {np.max(err - bound):.3g}"


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def refused(m, match, feeds=None):
    with pytest.raises(engine.ModelError, match=match):
        engine.load(m).run(feeds or {})


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# ============================================================================ DepthToSpace

def depth_to_space_ref(x, bs, mode):
    """Output pixel (h * bs + i, w * bs + j) of channel c, by the spec's index formulas."""
    n, C, H, W = x.shape
    c_out = C // (bs * bs)
    y = np.empty((n, c_out, H * bs, W * bs), x.dtype)
    for c, i, j in itertools.product(range(c_out), range(bs), range(bs)):
        src = (i * bs + j) * c_out + c if mode == "DCR" else c * bs * bs + i * bs + j
        y[:, c, i::bs, j::bs] = x[:, src]
    return y


def space_to_depth_ref(x, bs, mode):
    n, C, H, W = x.shape
    y = np.empty((n, C * bs * bs, H // bs, W // bs), x.dtype)
    for c, i, j in itertools.product(range(C), range(bs), range(bs)):
        dst = (i * bs + j) * C + c if mode == "DCR" else c * bs * bs + i * bs + j
        y[:, dst] = x[:, c, i::bs, j::bs]
    return y


@pytest.fixture(params=["one transposed copy", "block by block", "chosen"])
def block_path(request, monkeypatch):
    """Each of DepthToSpace's and SpaceToDepth's copies, forced, and the one chosen."""
    from engine.graph.ops import rearrange
    if request.param != "chosen":
        monkeypatch.setattr(rearrange, "BLOCK_COPY_MIN", 0 if request.param == "block by block"
                            else float("inf"))
    return request.param


def check_path(m, x, path):
    if path != "chosen":
        assert f"blocksize {m.graph.node[0].attribute[0].i}: {path}" in \
            engine.load(m).explain({"x": x.shape})


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("bs,shape", [(1, (1, 3, 2, 2)), (2, (2, 8, 3, 5)), (3, (1, 18, 4, 1)),
                                      (2, (1, 4, 1, 1)), (4, (2, 32, 2, 3)),
                                      (2, (1, 8, 40, 60))])
def test_depth_to_space(rng, mode, bs, shape, block_path):
    x = randn(rng, *shape)
    m = model("DepthToSpace", {"x": x}, blocksize=bs, mode=mode, opset=13)
    check_path(m, x, block_path)
    got = run_engine(m, {"x": x})
    exact(got, depth_to_space_ref(x, bs, mode))
    exact(got, run_ort(m, {"x": x}))
    if mode == "CRD":      # PyTorch's pixel_shuffle is DepthToSpace CRD
        torch = pytest.importorskip("torch")
        exact(got, torch.nn.functional.pixel_shuffle(torch.from_numpy(x), bs).numpy())


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("bs,shape", [(1, (1, 3, 2, 2)), (2, (2, 3, 4, 6)), (3, (1, 2, 9, 3)),
                                      (2, (1, 1, 2, 2)), (2, (1, 4, 64, 80))])
def test_space_to_depth(rng, mode, bs, shape, block_path):
    x = randn(rng, *shape)
    # SpaceToDepth's mode is opset 28's; earlier opsets are DCR
    m = model("SpaceToDepth", {"x": x}, blocksize=bs, mode=mode, opset=28)
    check_path(m, x, block_path)
    got = run_engine(m, {"x": x})
    exact(got, space_to_depth_ref(x, bs, mode))
    exact(got, ReferenceEvaluator(m).run(None, {"x": x})[0])
    if mode == "DCR":
        m13 = model("SpaceToDepth", {"x": x}, blocksize=bs, opset=13)
        exact(run_engine(m13, {"x": x}), got)
        exact(got, run_ort(m13, {"x": x}))
    else:
        torch = pytest.importorskip("torch")
        exact(got, torch.nn.functional.pixel_unshuffle(torch.from_numpy(x), bs).numpy())
    # the inverse in the same mode gives the input back
    inv = model("DepthToSpace", {"x": got}, blocksize=bs, mode=mode)
    exact(run_engine(inv, {"x": got}), x)


def test_depth_to_space_other_dtypes_and_folding(rng):
    x = rng.integers(-50, 50, (1, 8, 2, 3)).astype(np.int64)
    m = model("DepthToSpace", {"x": x}, blocksize=2, mode="CRD")
    exact(run_engine(m, {"x": x}), depth_to_space_ref(x, 2, "CRD"))
    # a constant input is folded at load: no step is left
    m = model("DepthToSpace", {}, {"x": x}, blocksize=2)
    loaded = engine.load(m)
    assert loaded.graph.nodes == []
    exact(loaded.run({})["y"], depth_to_space_ref(x, 2, "DCR"))


# ============================================================================ Tile

@pytest.mark.parametrize("shape,reps", [((), []), ((3,), [4]), ((2, 3), [1, 1]), ((2, 3), [3, 2]),
                                        ((2, 1, 3), [2, 0, 1]), ((1, 2, 3, 2), [2, 3, 1, 2]),
                                        ((0, 2), [3, 2])])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, bool])
def test_tile(rng, shape, reps, dtype):
    x = np.asarray(rng.standard_normal(shape) * 10).astype(dtype)
    reps = np.array(reps, np.int64)
    m = model("Tile", {"x": x}, {"r": reps})
    got = run_engine(m, {"x": x})
    # np.tile by its definition: output index t * d + i along each axis holds x's index i
    want = x
    for ax, r in enumerate(reps):
        want = np.concatenate([want] * int(r), axis=ax) if r else \
            np.take(want, [], axis=ax)
    exact(got, want.reshape(tuple(d * r for d, r in zip(shape, reps))))
    exact(got, run_ort(m, {"x": x}))


def test_tile_folds(rng):
    x = randn(rng, 2, 3)
    m = model("Tile", {}, {"x": x, "r": np.array([2, 3], np.int64)})
    loaded = engine.load(m)
    assert loaded.graph.nodes == []
    exact(loaded.run({})["y"], np.tile(x, (2, 3)))
    # repeats computed from shapes (Shape) fold while planning
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Tile", ["x", "s"], ["y"])]
    g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=9)
    exact(run_engine(m, {"x": x}), np.tile(x, (2, 3)))


# ============================================================================ Range

def range_ref(start, limit, delta, dtype):
    n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    if np.dtype(dtype).kind == "f":
        return (float(start) + np.arange(n, dtype=np.float64) * float(delta)).astype(dtype)
    return np.array([int(start) + i * int(delta) for i in range(n)], dtype=dtype)


RANGES = [(0, 10, 1), (3, 9, 3), (10, 4, -2), (1, 1, 1), (5, 1, 1), (-7, 8, 4), (2, 3, 5)]
FLOAT_RANGES = [(0.5, 3.2, 0.3), (1.0, -2.0, -0.7), (-1.5, 1e3, 0.37)]


@pytest.mark.parametrize("start,limit,delta,dtype",
                         [r + (t,) for r in RANGES
                          for t in (np.float32, np.float64, np.int32, np.int64)] +
                         [r + (t,) for r in FLOAT_RANGES for t in (np.float32, np.float64)])
def test_range(start, limit, delta, dtype):
    vals = {k: np.array(v, dtype) for k, v in zip("sld", (start, limit, delta))}
    m = model("Range", {}, vals, opset=11)
    loaded = engine.load(m)
    assert loaded.graph.nodes == []          # a value, folded at load
    got = loaded.run({})["y"]
    s, lim, d = (vals[k] for k in "sld")
    exact(got, range_ref(s, lim, d, dtype))
    # ONNX's reference (numpy.arange) steps by (start + delta) - start, a few ulps of the
    # terms away at times; ONNX Runtime adds delta up in the element type: element i carries
    # up to i roundings
    i = np.arange(got.size)
    terms = abs(float(s)) + i * abs(float(d))
    eps = np.finfo(dtype).eps if got.dtype.kind == "f" else 0
    for ref, bound in ((ReferenceEvaluator(m).run(None, {})[0], 4 * eps * terms),
                       (run_ort(m, {}), (i + 1) * eps * terms)):
        assert ref.shape == got.shape and ref.dtype == got.dtype
        close(got, ref.astype(np.float64), bound)


def test_range_and_size_from_shapes(rng):
    """Range over an input's size (Size, known while planning), reshaped like the input and
    added to it: y = x + arange(x.size).reshape(x.shape) * 2; Size of y is 24."""
    nodes = [h.make_node("Size", ["x"], ["n"]),
             h.make_node("Mul", ["n", "two"], ["n2"]),
             h.make_node("Range", ["zero", "n2", "two"], ["r"]),
             h.make_node("Cast", ["r"], ["rf"], to=T.FLOAT),
             h.make_node("Shape", ["x"], ["shape"]),
             h.make_node("Reshape", ["rf", "shape"], ["rs"]),
             h.make_node("Add", ["x", "rs"], ["y"]),
             h.make_node("Size", ["y"], ["count"])]
    inits = [nh.from_array(np.array(0, np.int64), "zero"),
             nh.from_array(np.array(2, np.int64), "two")]
    g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, [2, 3, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, None),
                      h.make_tensor_value_info("count", T.INT64, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=9)
    x = randn(rng, 2, 3, 4)
    loaded = engine.load(m)
    got = loaded.run({"x": x})
    exact(got["y"], x + (np.arange(24, dtype=np.float32) * 2).reshape(2, 3, 4))
    exact(got["count"], np.array(24, np.int64))
    ref = ort.InferenceSession(m.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})
    exact(got["y"], ref[0])
    exact(got["count"], ref[1])
    # everything but the Add was computed while planning
    assert "Add" in loaded.explain() and "Range" not in loaded.explain()


# ============================================================================ Size, EyeLike

@pytest.mark.parametrize("shape", [(), (0, 3), (2, 3, 4), (7,)])
def test_size(rng, shape):
    x = randn(rng, *shape)
    m = model("Size", {"x": x}, out=T.INT64)
    got = run_engine(m, {"x": x})
    exact(got, np.array(int(np.prod(shape)), np.int64))
    exact(got, run_ort(m, {"x": x}))


def eye_ref(n, m, k, dtype):
    y = np.zeros((n, m), dtype)
    for i in range(n):
        if 0 <= i + k < m:
            y[i, i + k] = 1
    return y


@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (5, 2), (1, 1), (0, 3)])
@pytest.mark.parametrize("k", [0, 1, -1, 2, -3, 7, -9, 2**62])
@pytest.mark.parametrize("dtype", [None, T.INT64, T.FLOAT, T.BOOL, T.DOUBLE])
def test_eyelike(shape, k, dtype):
    x = np.ones(shape, np.int32)
    npdt = {None: np.int32, T.INT64: np.int64, T.FLOAT: np.float32, T.BOOL: bool,
            T.DOUBLE: np.float64}[dtype]
    attrs = {} if dtype is None else {"dtype": dtype}
    m = model("EyeLike", {"x": x}, out=ELEM.get(np.dtype(npdt), T.INT32), k=k, **attrs)
    got = run_engine(m, {"x": x})
    exact(got, eye_ref(*shape, k, npdt))
    if abs(k) < 2**31:
        exact(got, oracle(m, {"x": x}))


# ============================================================================ Trilu

@pytest.mark.parametrize("shape", [(4, 5), (5, 4), (3, 3), (2, 3, 1, 4), (1, 6), (0, 2)])
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 1, -1, 3, -4, 100, -100, 2**62])
def test_trilu(rng, shape, upper, k):
    x = randn(rng, *shape)
    x.reshape(-1)[::7] = np.nan          # NaN outside the triangle becomes 0, not NaN
    consts = {} if k is None else {"k": np.array(k, np.int64)}
    m = model("Trilu", {"x": x}, consts, opset=14, upper=upper)
    got = run_engine(m, {"x": x})
    kk = 0 if k is None else k
    rows, cols = np.indices(shape[-2:])
    keep = (cols - rows >= kk) if upper else (cols - rows <= kk)
    exact(got, np.where(keep, x, np.float32(0)))
    if k is None or abs(k) < 2**31:
        exact(got, run_ort(m, {"x": x}))


def test_trilu_int_and_folding():
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    m = model("Trilu", {}, {"x": x, "k": np.array(1, np.int64)}, opset=14, upper=0)
    loaded = engine.load(m)
    assert loaded.graph.nodes == []
    exact(loaded.run({})["y"], np.tril(x, 1))


# ============================================================================ CumSum

def cumsum_ref(x, axis, exclusive, reverse):
    """Float64 running sums, each with its bound: TOL_TERMS * (k + 1) eps32 times the running
    sum of |x| (k: the number of terms)."""
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    n = x.shape[-1]
    y, mag = np.zeros_like(x), np.zeros_like(x)
    for j in range(n):
        terms = range(j + 1, n) if reverse else range(j)
        if not exclusive:
            terms = list(terms) + [j]
        for t in terms:
            y[..., j] += x[..., t]
            mag[..., j] += np.abs(x[..., t])
        mag[..., j] *= TOL_TERMS * (len(terms) + 1) * EPS32
    return np.moveaxis(y, -1, axis), np.moveaxis(mag, -1, axis)


@pytest.mark.parametrize("shape,axis", [((7,), 0), ((3, 5), 1), ((3, 5), 0), ((3, 5), -1),
                                        ((2, 3, 4), -2), ((2, 0, 3), 1), ((1, 40), 1)])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(rng, shape, axis, exclusive, reverse):
    x = randn(rng, *shape)
    m = model("CumSum", {"x": x}, {"axis": np.array(axis, np.int32)}, opset=14,
              exclusive=exclusive, reverse=reverse)
    got = run_engine(m, {"x": x})
    ref, bound = cumsum_ref(x, axis, exclusive, reverse)
    assert got.dtype == np.float32
    close(got, ref, bound)
    close(got, run_ort(m, {"x": x}).astype(np.float64), 2 * bound)
    xi = rng.integers(-100, 100, shape).astype(np.int64)
    mi = model("CumSum", {"x": xi}, {"axis": np.array([axis], np.int64)}, opset=14,
               exclusive=exclusive, reverse=reverse)
    exact(run_engine(mi, {"x": xi}), cumsum_ref(xi, axis, exclusive, reverse)[0].astype(np.int64))


# ============================================================================ OneHot

def one_hot_ref(idx, depth, axis, off, on):
    idx = np.asarray(idx).astype(np.int64)
    rank = idx.ndim
    axis = axis % (rank + 1)
    out = np.full(idx.shape[:axis] + (depth,) + idx.shape[axis:], off)
    for pos in np.ndindex(*idx.shape):
        v = idx[pos]
        v = v + depth if v < 0 else v
        if 0 <= v < depth:
            out[pos[:axis] + (v,) + pos[axis:]] = on
    return out


@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2, 2])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32, np.float32])
def test_one_hot(rng, axis, idx_dtype):
    idx = rng.integers(-7, 7, (2, 3)).astype(idx_dtype)     # some out of [-5, 5)
    values = np.array([-1.5, 4.0], np.float32)
    attrs = {} if axis is None else {"axis": axis}
    m = model("OneHot", {"idx": idx}, {"depth": np.array(5, np.int64), "values": values},
              out=T.FLOAT, opset=11, **attrs)
    got = run_engine(m, {"idx": idx})
    exact(got, one_hot_ref(idx, 5, -1 if axis is None else axis, np.float32(-1.5),
                           np.float32(4.0)))
    exact(got, oracle(m, {"idx": idx}))


def test_one_hot_values_at_run_time_and_int_output(rng):
    idx = np.array([[0, 2], [1, -1]], np.int64)
    vals = np.array([3, 9], np.int64)
    m = model("OneHot", {"idx": idx, "values": vals}, {"depth": np.array(3.0, np.float32)},
              out=T.INT64, opset=11)
    # the node reads (idx, values, depth) in that order here: put depth second
    m.graph.node[0].input[:] = ["idx", "depth", "values"]
    got = run_engine(m, {"idx": idx, "values": vals})
    exact(got, one_hot_ref(idx, 3, -1, 3, 9))
    exact(got, oracle(m, {"idx": idx, "values": vals}))


# ============================================================================ Einsum

def einsum_check(got, eq, xs):
    """got against float64 numpy.einsum, within TOL_TERMS * (k + operands) eps32 times the same
    contraction of |x| (k: the number of products summed into each element, itself the
    contraction of arrays of ones)."""
    ref = np.einsum(eq, *[x.astype(np.float64) for x in xs])
    count = np.einsum(eq, *[np.ones(x.shape) for x in xs])
    mag = np.einsum(eq, *[np.abs(x.astype(np.float64)) for x in xs])
    assert got.dtype == xs[0].dtype
    close(got, ref, TOL_TERMS * (count + len(xs)) * EPS32 * mag)


def einsum_model(eq, shapes, elem=T.FLOAT, name="n", opset=12):
    ins = [h.make_tensor_value_info(f"x{k}", elem, s) for k, s in enumerate(shapes)]
    node = h.make_node("Einsum", [f"x{k}" for k in range(len(shapes))], ["y"], name=name,
                       equation=eq)
    g = h.make_graph([node], "t", ins, [h.make_tensor_value_info("y", elem, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


EINSUMS = [
    ("ij,jk->ik", [(5, 7), (7, 3)]),
    ("bij,bjk->bik", [(2, 5, 7), (2, 7, 3)]),
    ("bhwc,cd->bhwd", [(2, 3, 4, 8), (8, 6)]),
    ("nchw,oc->nohw", [(2, 8, 3, 5), (6, 8)]),
    ("bchw,bkhw->bkc", [(2, 6, 4, 3), (2, 5, 4, 3)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 8), (2, 3, 6, 8)]),       # attention's scores
    ("bhqk,bhkd->bhqd", [(2, 3, 5, 6), (2, 3, 6, 8)]),       # ... and values
    ("b i d, b j d -> b i j", [(2, 4, 8), (2, 5, 8)]),
    ("ik,kj->ji", [(4, 6), (6, 3)]),
    ("ijk->kji", [(2, 3, 4)]),
    ("ijk->jik", [(2, 3, 4)]),
    ("ij->i", [(3, 40)]),
    ("ij->", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("...ii->...i", [(3, 5, 5)]),
    ("iij->j", [(3, 3, 2)]),
    ("i,i", [(50,), (50,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij,jk->ik", [(2, 1), (3, 4)]),                           # size 1 broadcast against 3
    ("bij,bjk->bik", [(1, 2, 3), (5, 3, 4)]),
    ("...ij,...jk->...ik", [(1, 2, 3), (5, 3, 4)]),
    ("...ij,jk", [(2, 6, 2, 3), (3, 4)]),
    ("i...,i...->...", [(4, 2, 3), (4, 2, 3)]),
    ("abc,cd->dba", [(2, 3, 4), (4, 5)]),
    ("ij,kl->iklj", [(2, 3), (4, 5)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),            # three operands
    ("->", [()]),
    ("Ab,bC->CA", [(2, 3), (3, 4)]),
    ("ab,b->a", [(3, 0), (0,)]),
]


@pytest.mark.parametrize("eq,shapes", EINSUMS, ids=[e for e, _ in EINSUMS])
def test_einsum(rng, eq, shapes):
    xs = [randn(rng, *s) for s in shapes]
    m = einsum_model(eq, shapes)
    feeds = {f"x{k}": x for k, x in enumerate(xs)}
    got = run_engine(m, feeds)
    einsum_check(got, eq, xs)
    ref = run_ort(m, feeds)
    assert ref.shape == got.shape
    einsum_check(ref, eq, xs)       # both within the bound of the float64 value


@pytest.mark.parametrize("dtype,elem", [(np.float64, T.DOUBLE), (np.int64, T.INT64),
                                        (np.int32, T.INT32)])
def test_einsum_other_dtypes(rng, dtype, elem):
    for eq, shapes in [("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij->j", [(3, 4)]),
                       ("i,i", [(5,), (5,)]), ("ii->i", [(3, 3)])]:
        xs = [(rng.standard_normal(s) * 10).astype(dtype) for s in shapes]
        got = run_engine(einsum_model(eq, shapes, elem), {f"x{k}": x for k, x in enumerate(xs)})
        want = np.einsum(eq, *xs)
        assert got.dtype == dtype
        if dtype == np.float64:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        else:
            exact(got, np.asarray(want).astype(dtype))


def test_einsum_random_equations():
    """Random equations over 1 to 3 operands: repeated labels, ellipses, implicit outputs,
    size-1 broadcasting; the engine and NumPy accept and refuse the same ones."""
    rnd = random.Random(5)
    rng = np.random.default_rng(5)
    ran = refused_both = 0
    for _ in range(300):
        size = {c: rnd.choice([1, 2, 3, 4]) for c in "abcdeB"}
        ell = [rnd.choice([1, 2, 3]) for _ in range(rnd.choice([0, 1, 2]))]
        terms, shapes = [], []
        for _ in range(rnd.choice([1, 2, 2, 2, 3])):
            t = rnd.sample("abcdeB", rnd.randint(0, 4))
            if t and rnd.random() < 0.15:
                t.insert(rnd.randint(0, len(t)), t[0])
            s = [size[c] for c in t]
            if ell and rnd.random() < 0.5:
                k = rnd.randint(0, len(t))
                t, s = t[:k] + ["..."] + t[k:], s[:k] + ell + s[k:]
            terms.append("".join(t))
            shapes.append(tuple(1 if rnd.random() < 0.1 else d for d in s))
        eq = ",".join(terms)
        if rnd.random() < 0.7:
            used = sorted({c for t in terms for c in t if c != "."})
            out = rnd.sample(used, rnd.randint(0, len(used)))
            if "..." in eq:
                out.insert(rnd.randint(0, len(out)), "...")
            eq += "->" + "".join(out)
        xs = [randn(rng, *s) for s in shapes]
        try:
            np.einsum(eq, *xs)
        except ValueError:
            with pytest.raises(engine.ModelError):
                run_engine(einsum_model(eq, shapes), {f"x{k}": x for k, x in enumerate(xs)})
            refused_both += 1
            continue
        got = run_engine(einsum_model(eq, shapes), {f"x{k}": x for k, x in enumerate(xs)})
        einsum_check(got, eq, xs)
        ran += 1
    assert ran >= 200 and refused_both >= 5, (ran, refused_both)


def test_steps_keep_their_shapes(rng):
    """A model planned for two input shapes keeps each plan's own step (the ops are inferred
    again for the second shape)."""
    nodes = [h.make_node("DepthToSpace", ["x"], ["d"], blocksize=2),
             h.make_node("Einsum", ["d", "w"], ["e"], equation="nchw,oc->nohw"),
             h.make_node("Tile", ["e", "r"], ["t"]),
             h.make_node("CumSum", ["t", "ax"], ["y"], exclusive=1)]
    w = randn(rng, 3, 2)
    inits = [nh.from_array(w, "w"), nh.from_array(np.array([1, 2, 1, 3], np.int64), "r"),
             nh.from_array(np.array(-1, np.int64), "ax")]
    g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, [None, 8, None, None])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=9)
    loaded = engine.load(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 8, 2, 3), (2, 8, 4, 1), (1, 8, 2, 3)]:
        x = randn(rng, *shape)
        got = loaded.run({"x": x})["y"]
        d = depth_to_space_ref(x, 2, "DCR").astype(np.float64)
        ref = np.cumsum(np.tile(np.einsum("nchw,oc->nohw", d, w), (1, 2, 1, 3)), axis=-1)
        ref = np.concatenate([np.zeros(ref.shape[:-1] + (1,)), ref[..., :-1]], axis=-1)
        mag = np.cumsum(np.tile(np.einsum("nchw,oc->nohw", np.abs(d), np.abs(w)),
                                (1, 2, 1, 3)), axis=-1)
        close(got, ref, 2 * TOL_TERMS * (2 + shape[3] * 6) * EPS32 * mag)
        close(got, sess.run(None, {"x": x})[0].astype(np.float64),
              4 * TOL_TERMS * (2 + shape[3] * 6) * EPS32 * mag)


# ============================================================================ malformed nodes

def one(op, x, consts=None, **attrs):
    return model(op, {"x": x}, consts, name="bad", **attrs)


NODE = r"'bad' \(%s\)"


@pytest.mark.parametrize("op,shape,attrs,match", [
    ("DepthToSpace", (1, 8, 2, 2), {"blocksize": 3}, "8 channels do not divide"),
    ("DepthToSpace", (1, 8, 2, 2), {}, "blocksize.*required"),
    ("DepthToSpace", (1, 8, 2, 2), {"blocksize": 0}, "at least 1"),
    ("DepthToSpace", (1, 8, 2, 2), {"blocksize": 2, "mode": "RCD"}, "mode 'RCD'"),
    ("DepthToSpace", (8, 2, 2), {"blocksize": 2}, "4-D"),
    ("DepthToSpace", (1, 4, 2, 2), {"blocksize": 2**31}, "do not divide"),
    ("SpaceToDepth", (1, 2, 4, 5), {"blocksize": 2}, "4x5 does not divide"),
    ("SpaceToDepth", (1, 2, 4, 4), {"blocksize": -2}, "at least 1"),
])
def test_malformed_blocks(op, shape, attrs, match):
    x = np.zeros(shape, np.float32)
    refused(one(op, x, **attrs), f"{NODE % op}.*(?:{match})", {"x": x})


@pytest.mark.parametrize("reps,match", [
    (np.array([2], np.int64), r"repeats \[2\] must be 2 counts"),
    (np.array([2, 3, 1], np.int64), "must be 2 counts"),
    (np.array([2, -1], np.int64), "must be 2 counts >= 0"),
    (np.array([2.0, 1.0], np.float32), "1-D integer"),
    (np.array([[2, 1]], np.int64), "1-D integer"),
    (np.array([2**40, 2**40], np.int64), "outside 0 to|GiB"),     # the size cap
    (np.array([2**27, 4], np.int64), "GiB|budget"),
])
def test_malformed_tile(reps, match):
    x = np.zeros((2, 3), np.float32)
    refused(one("Tile", x, {"r": reps}), f"{NODE % 'Tile'}.*(?:{match})", {"x": x})


def value_decided(op, feeds, small, **attrs):
    """Op reading ``feeds`` (graph inputs) where one plan-time input is Slice(big)[:len(small)]:
    a graph input of 100 elements, too large to plan per value."""
    big = np.zeros(100, small.dtype)
    big[:len(small)] = small
    slice_ = h.make_node("Slice", ["big", "s0", "s1"], ["p"])
    node = h.make_node(op, [k if k != "p" else "p" for k in feeds], ["y"], name="bad", **attrs)
    ins = [h.make_tensor_value_info(k, ELEM[v.dtype], v.shape) for k, v in feeds.items()
           if k != "p"]
    ins.append(h.make_tensor_value_info("big", ELEM[big.dtype], big.shape))
    inits = [nh.from_array(np.array([0], np.int64), "s0"),
             nh.from_array(np.array([len(small)], np.int64), "s1")]
    g = h.make_graph([slice_, node], "t", ins, [h.make_tensor_value_info("y", T.FLOAT, None)],
                     inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=9)
    return m, {**{k: v for k, v in feeds.items() if k != "p"}, "big": big}


def test_tile_repeats_must_be_known(rng):
    x = randn(rng, 2, 3)
    r = np.array([1, 2], np.int64)
    # a small graph input is planned per value
    m = model("Tile", {"x": x, "r": r})
    exact(run_engine(m, {"x": x, "r": r}), np.tile(x, (1, 2)))
    # a value computed from a large one cannot be
    m, feeds = value_decided("Tile", {"x": x, "p": r}, r)
    refused(m, f"{NODE % 'Tile'}.*repeats must be computable", feeds)


@pytest.mark.parametrize("vals,match", [
    ((np.int64(0), np.int64(10), np.int64(0)), "delta must not be 0"),
    ((np.float32(0), np.float32(1), np.float32(0)), "delta must not be 0"),
    ((np.int64(0), np.int64(2**62), np.int64(1)), "outside 0 to|GiB|budget"),
    ((np.int64(0), np.int64(2**30), np.int64(1)), "GiB|budget"),
    ((np.float32(0), np.float32(3e38), np.float32(1e-30)), "outside 0 to|GiB"),
    ((np.float32(0), np.float32(np.inf), np.float32(1)), "finite"),
    ((np.float32(np.nan), np.float32(1), np.float32(1)), "finite"),
    ((np.int64(0), np.int32(5), np.int64(1)), "share one of the types"),
    ((np.uint8(0), np.uint8(5), np.uint8(1)), "share one of the types"),
    ((np.array([0, 1], np.int64), np.int64(5), np.int64(1)), "single"),
])
def test_malformed_range(vals, match):
    consts = {k: np.asarray(v) for k, v in zip("sld", vals)}
    refused(model("Range", {}, consts, out=T.INT64, name="bad"), f"{NODE % 'Range'}.*(?:{match})")


def test_range_inputs_must_be_known():
    start, limit, delta = (np.array(v, np.int64) for v in (2, 9, 3))
    m = model("Range", {"s": start}, {"l": limit, "d": delta})
    exact(run_engine(m, {"s": start}), np.array([2, 5, 8], np.int64))
    m, feeds = value_decided("Range", {"p": start, "l": limit, "d": delta}, start.reshape(1))
    g = m.graph
    g.initializer.extend([nh.from_array(limit, "l"), nh.from_array(delta, "d")])
    keep = [vi for vi in g.input if vi.name not in ("l", "d")]
    del g.input[:]
    g.input.extend(keep)
    refused(m, f"{NODE % 'Range'}.*start must be computable",
            {k: v for k, v in feeds.items() if k not in ("l", "d")})


@pytest.mark.parametrize("op,x,consts,attrs,match", [
    ("EyeLike", np.zeros((2, 2, 2), np.float32), None, {}, "2-D"),
    ("EyeLike", np.zeros((2, 2), np.float32), None, {"dtype": T.STRING}, "dtype 8"),
    ("EyeLike", np.zeros((2, 2), np.float32), None, {"dtype": T.FLOAT16}, "dtype 10"),
    ("Trilu", np.zeros((3,), np.float32), None, {}, "at least 2 axes"),
    ("Trilu", np.zeros((3, 3), np.float32), {"k": np.array([1, 2], np.int64)}, {},
     "k must be a single integer"),
    ("Trilu", np.zeros((3, 3), np.float32), {"k": np.array(1.0, np.float32)}, {},
     "k must be a single integer"),
    ("CumSum", np.zeros((3, 3), np.float32), {"a": np.array(2, np.int64)}, {},
     "axis 2 is out of range"),
    ("CumSum", np.zeros((3, 3), np.float32), {"a": np.array(-3, np.int64)}, {},
     "axis -3 is out of range"),
    ("CumSum", np.zeros((3, 3), np.float32), {"a": np.array([0, 1], np.int64)}, {},
     "axis must be a single integer"),
    ("CumSum", np.zeros((3, 3), bool), {"a": np.array(0, np.int64)}, {}, "must be one of"),
    ("OneHot", np.zeros((3,), np.int64),
     {"d": np.array(-1, np.int64), "v": np.array([0, 1], np.float32)}, {}, "depth must be"),
    ("OneHot", np.zeros((3,), np.int64),
     {"d": np.array(np.nan, np.float32), "v": np.array([0, 1], np.float32)}, {},
     "depth must be"),
    ("OneHot", np.zeros((3,), np.int64),
     {"d": np.array(4, np.int64), "v": np.array([0, 1, 2], np.float32)}, {}, "2 elements"),
    ("OneHot", np.zeros((3,), np.int64),
     {"d": np.array(4, np.int64), "v": np.array([0, 1], np.float32)}, {"axis": 2},
     "axis 2 is out of range"),
    ("OneHot", np.zeros((3,), bool),
     {"d": np.array(4, np.int64), "v": np.array([0, 1], np.float32)}, {}, "numbers"),
    ("OneHot", np.zeros((3,), np.int64),
     {"d": np.array(2**40, np.int64), "v": np.array([0, 1], np.float32)}, {},
     "outside 0 to|GiB"),
])
def test_malformed_others(op, x, consts, attrs, match):
    opset = {"EyeLike": 9, "Trilu": 14, "CumSum": 14, "OneHot": 11}[op]
    m = model(op, {"x": x}, consts, out=T.FLOAT, name="bad", opset=opset, **attrs)
    refused(m, f"{NODE % op}.*(?:{match})", {"x": x})


@pytest.mark.parametrize("eq,shapes,match", [
    ("ij,jk->i$", [(2, 3), (3, 4)], "holds '\\$'"),
    ("ij,jk->ik", [(2, 3)], "2 input terms for 1 inputs"),
    ("ij->ji", [(2, 3), (3, 4)], "1 input terms for 2 inputs"),
    ("ij,jk->ik", [(2, 3), (4, 5)], "label 'j' has sizes 3 and 4"),
    ("ij->iz", [(2, 3)], "'z' are in no input term"),
    ("ij->ii", [(2, 2)], "repeats a label"),
    ("...i...->i", [(2, 2)], "more than one ellipsis"),
    ("i.j->ij", [(2, 2)], "holds '.'"),
    ("ij->->ij", [(2, 2)], "more than one '->'"),
    ("ij-ji", [(2, 2)], "holds '-'"),
    ("ijk->ij", [(2, 3)], "labels 3 axes of an input of shape"),
    ("...ij,...jk->...ik", [(2, 3), (5, 3, 4)], "do not stand for one number of axes"),
    ("...ij->ij", [(5, 2, 3)], "leaves out"),
    ("ii->i", [(2, 3)], "is repeated in the term"),
    ("...ij->...", [(2,)], "do not stand for one number of axes"),
    ("", [(2,)], "labels 0 axes"),
    ("ij,jk->ik", [(2, 3), (3, 4)], "share a number dtype"),
])
def test_malformed_einsum(eq, shapes, match):
    m = einsum_model(eq, shapes, name="bad")
    if match == "share a number dtype":
        m.graph.input[1].type.tensor_type.elem_type = T.INT64
    feeds = {vi.name: np.zeros(s, np.float32 if vi.type.tensor_type.elem_type == T.FLOAT
                               else np.int64) for vi, s in zip(m.graph.input, shapes)}
    refused(m, f"{NODE % 'Einsum'}.*(?:{match})", feeds)


def test_einsum_without_equation():
    m = einsum_model("ij->ji", [(2, 2)], name="bad")
    del m.graph.node[0].attribute[:]
    refused(m, f"{NODE % 'Einsum'}.*'equation' is required", {"x0": np.zeros((2, 2), np.float32)})


# ============================================================================ Transpose

@pytest.mark.parametrize("shape, perm", [
    ((1, 96, 56, 56), (0, 2, 3, 1)),      # NCHW -> NHWC: the tiled kernel, B = 1
    ((2, 56, 57, 42), (0, 3, 1, 2)),      # NHWC -> NCHW, edges off the 8 and 16 tiles
    ((70, 90), (1, 0)),                   # a matrix
    ((3, 5, 40, 33), (0, 1, 3, 2)),       # the last two axes, B = 15
    ((4, 30, 50, 6), (0, 2, 1, 3)),       # not two swapped runs: numpy's copy
    ((2, 3, 4, 5), (0, 2, 3, 1)),         # too small for the kernel
])
def test_transpose_float32_exact_at_one_and_two_threads(shape, perm):
    from engine.graph.ops.shape import _TILED_MIN, swapped_runs
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    m = model("Transpose", {"x": x}, perm=list(perm))
    loaded = engine.load(m)
    outs = [loaded.run({"x": x}, num_threads=t)["y"] for t in (1, 2)]
    want = x.transpose(perm)
    exact(outs[0], want)
    exact(outs[1], want)
    runs = swapped_runs(shape, perm)
    assert (runs is not None and np.prod(runs) >= _TILED_MIN) == (
        perm != (0, 2, 1, 3) and x.size >= _TILED_MIN)


def test_transpose_of_other_element_types_and_swapped_runs():
    from engine.graph.ops.shape import swapped_runs
    assert swapped_runs((2, 3, 4, 5), (0, 2, 3, 1)) == (2, 3, 20)
    assert swapped_runs((2, 3, 4, 5), (0, 3, 1, 2)) == (2, 12, 5)
    assert swapped_runs((2, 3, 4, 5), (3, 2, 1, 0)) is None
    assert swapped_runs((2, 3), (0, 1)) is None
    x = np.arange(2 * 96 * 70, dtype=np.int64).reshape(2, 96, 70)
    exact(run_engine(model("Transpose", {"x": x}, perm=[0, 2, 1]), {"x": x}),
          x.transpose(0, 2, 1))


@pytest.mark.parametrize("shape", [(1, 3136, 96), (2, 131, 77), (3, 13, 1000), (1, 200, 9),
                                   (1, 1, 40), (2, 8, 8)])
def test_transpose_kernel_tiles_and_edges_exact_at_one_and_two_threads(shape):
    """The tiled kernel alone: edge tiles either way, a single row, several matrices; exact
    at 1 and 2 threads."""
    from engine._kernels import transpose as tk
    src = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    for threads in (1, 2):
        dst = np.full((shape[0], shape[2], shape[1]), np.nan, np.float32)
        tk.f32_transpose_batched(src, dst, threads)
        exact(dst, src.transpose(0, 2, 1))


def test_transpose_kernel_checks_shapes():
    from engine._kernels import transpose as tk
    with pytest.raises(ValueError, match="dst must have shape"):
        tk.f32_transpose_batched(np.zeros((1, 4, 5), np.float32),
                                 np.zeros((1, 4, 5), np.float32), 1)
