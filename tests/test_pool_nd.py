"""ONNX MaxPool (with Indices), AveragePool and LpPool on 1-D, 2-D and 3-D inputs, the global
pools on 1-D to 3-D, and engine.ops.pool.OnnxWindowPool (the NumPy path of 3-D pools, dilated
averages and Lp pooling), against a slow float64 reference written here, torch.nn.functional
and ONNX Runtime.

Error model. Max pooling selects an input value: values must be equal and indices identical.
Averages and Lp norms are float32 sums of at most 27 terms (of |x|**p for Lp) of N(0, 1)
inputs, rounded in a different order than the float64 reference: a few eps32 of the sum of
|terms|, below 1e-6 here, so TOL = 1e-5 relative plus 1e-5 absolute catches any wrong tap or
divisor (off by O(0.1) at least) with a wide margin. Against ONNX Runtime and torch (float32
too) the same TOL.

Where ONNX Runtime is not followed (written out in the tests): a window whose taps all miss the
input gives -inf and index -1 for max (ONNX Runtime: -FLT_MAX and a meaningless index); SAME
auto_pad with dilation pads for the dilated kernel as the ONNX spec says (ONNX Runtime pads for
the undilated one); a NaN wins max pooling, as in PyTorch (ONNX Runtime skips NaNs).
"""
import itertools
import math

import numpy as np
import pytest

import engine
from engine.ops.pool import OnnxWindowPool, onnx_avgpool_divisor

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ reference

def out_len(i, k, s, pb, pe, d, ceil):
    """ONNX Runtime's (and PyTorch's) pooled length: floor, or ceil with ceil_mode, of
    (i + pb + pe - span) / s, plus one; with ceil_mode a last window starting past the input
    and its begin padding is dropped."""
    span = d * (k - 1) + 1
    q = (i + pb + pe - span) / s
    o = (math.ceil(q) if ceil else math.floor(q)) + 1
    if ceil and (o - 1) * s >= i + pb:
        o -= 1
    return o


def auto_pads(mode, size, kernel, strides, dilations):
    """The ONNX spec's auto_pad: output ceil(i / s), total padding for the dilated kernel,
    clamped at 0, the odd cell at the end (SAME_UPPER) or the beginning (SAME_LOWER)."""
    pairs = []
    for i, k, s, d in zip(size, kernel, strides, dilations):
        if mode == "VALID":
            pairs.append((0, 0))
            continue
        total = max(0, (math.ceil(i / s) - 1) * s + d * (k - 1) + 1 - i)
        small, big = total // 2, total - total // 2
        pairs.append((small, big) if mode == "SAME_UPPER" else (big, small))
    return pairs


def reference(kind, x, kernel, strides, dilations, pads, ceil=False, count_include_pad=False,
              p=2.0, column_major=False):
    """(values float64, whole-tensor indices int64) by loops over output positions and
    window taps (vectorised over N and C only). max: taps in row-major order, the first input
    tap starts the running maximum, a greater one or a NaN takes over; no input tap gives -inf
    and -1. avg: the sum over input taps divided by the taps inside the padded input
    (count_include_pad) or inside the input; none counted gives 0. lp: (sum |x|**p)**(1/p)
    over input taps."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    size = x.shape[2:]
    nd = len(size)
    outs = [out_len(i, k, s, pb, pe, d, ceil)
            for i, k, s, d, (pb, pe) in zip(size, kernel, strides, dilations, pads)]
    y = np.zeros((n, c) + tuple(outs))
    idx = np.full(y.shape, -1, np.int64)
    plane = math.prod(size)
    base = np.arange(n * c).reshape(n, c) * plane
    for o in itertools.product(*map(range, outs)):
        best = bestpos = None
        total = np.zeros((n, c))
        counted = 0
        for u in itertools.product(*map(range, kernel)):
            q = [o[a] * strides[a] - pads[a][0] + u[a] * dilations[a] for a in range(nd)]
            inside = all(0 <= q[a] < size[a] for a in range(nd))
            in_padded = all(-pads[a][0] <= q[a] < size[a] + pads[a][1] for a in range(nd))
            counted += in_padded if count_include_pad else inside
            if not inside:
                continue
            v = x[(slice(None), slice(None)) + tuple(q)]
            pos = np.ravel_multi_index(q, size, order="F" if column_major else "C")
            if kind == "max":
                if best is None:
                    best, bestpos = v.copy(), np.full((n, c), pos)
                else:
                    take = (v > best) | np.isnan(v)
                    best[take] = v[take]
                    bestpos[take] = pos
            elif kind == "avg":
                total += v
            else:
                total += np.abs(v) ** p
        at = (slice(None), slice(None)) + o
        if kind == "max":
            if best is None:
                y[at] = -np.inf
            else:
                y[at], idx[at] = best, bestpos + base
        elif kind == "avg":
            y[at] = total / counted if counted else 0.0
        else:
            y[at] = total ** (1.0 / p)
    return y, idx


# ------------------------------------------------------------------------------ models

def node_model(nodes, x_shape, outputs, opset=19):
    """One input x (float32, declared shape); outputs given as (name, elem type)."""
    g = h.make_graph(nodes, "pool", [h.make_tensor_value_info("x", T.FLOAT, list(x_shape))],
                     [h.make_tensor_value_info(name, elem, None) for name, elem in outputs])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def three_pools(x_shape, kw, count_include_pad, p, storage_order=0, opset=19):
    """MaxPool with Indices, AveragePool and LpPool with the same window attributes."""
    nodes = [h.make_node("MaxPool", ["x"], ["mx", "ix"], storage_order=storage_order, **kw),
             h.make_node("AveragePool", ["x"], ["av"], count_include_pad=count_include_pad,
                         **kw),
             h.make_node("LpPool", ["x"], ["lp"], p=p, **kw)]
    return node_model(nodes, x_shape, [("mx", T.FLOAT), ("ix", T.INT64), ("av", T.FLOAT),
                                       ("lp", T.FLOAT)], opset)


def random_window(rng, nd, auto_pad="NOTSET", max_size=6):
    """A random window on nd axes whose output is not empty: kernel 1-3, stride 1-3, dilation
    1-2 (1 more often), asymmetric pads below the kernel (ONNX Runtime's limit), ceil_mode."""
    while True:
        size = tuple(int(v) for v in rng.integers(1, max_size + 1, nd))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        strides = tuple(int(v) for v in rng.choice([1, 1, 2, 3], nd))
        dilations = tuple(int(v) for v in rng.choice([1, 1, 2], nd))
        ceil = bool(rng.integers(0, 2))
        if auto_pad == "NOTSET":
            pads = [(int(rng.integers(0, k)), int(rng.integers(0, k))) for k in kernel]
        else:
            pads = auto_pads(auto_pad, size, kernel, strides, dilations)
        if all(out_len(i, k, s, pb, pe, d, ceil) >= 1 for i, k, s, d, (pb, pe)
               in zip(size, kernel, strides, dilations, pads)):
            return size, kernel, strides, dilations, pads, ceil


def attrs(kernel, strides, dilations, pads, ceil, auto_pad="NOTSET"):
    kw = dict(kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations),
              ceil_mode=int(ceil))
    if auto_pad == "NOTSET":
        kw["pads"] = [b for b, _ in pads] + [e for _, e in pads]
    else:
        kw["auto_pad"] = auto_pad
    return kw


def has_empty_window(size, kernel, strides, dilations, pads, ceil):
    outs = [out_len(i, k, s, pb, pe, d, ceil)
            for i, k, s, d, (pb, pe) in zip(size, kernel, strides, dilations, pads)]
    return bool((onnx_avgpool_divisor(size, outs, kernel, strides, dilations, pads,
                                      False) == 0).any())


# ------------------------------------------------------------------------------ sweeps

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pools_match_reference_sweep(rng, nd):
    """Random windows (asymmetric pads, dilation, ceil_mode, every auto_pad), 1 and 2
    threads, the three pools of one window in one model."""
    ran = 0
    for trial in range(60 if nd < 3 else 50):
        auto_pad = ("NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")[trial % 5]
        size, kernel, strides, dilations, pads, ceil = random_window(
            rng, nd, auto_pad, max_size=8 if nd < 3 else 6)
        cip, p, order = trial % 2, 1 + trial % 3, (trial // 2) % 2
        x = rng.standard_normal((2, 3) + size).astype(np.float32)
        model = engine.load(three_pools(x.shape, attrs(kernel, strides, dilations, pads, ceil,
                                                       auto_pad), cip, p, storage_order=order))
        my, mi = reference("max", x, kernel, strides, dilations, pads, ceil,
                           column_major=bool(order))
        ay, _ = reference("avg", x, kernel, strides, dilations, pads, ceil, bool(cip))
        ly, _ = reference("lp", x, kernel, strides, dilations, pads, ceil, p=p)
        results = [model.run({"x": x}, num_threads=t) for t in (1, 2)]
        for got in results:
            np.testing.assert_array_equal(got["mx"], my.astype(np.float32))
            np.testing.assert_array_equal(got["ix"], mi)
            np.testing.assert_allclose(got["av"], ay, **TOL)
            np.testing.assert_allclose(got["lp"], ly, **TOL)
            assert all(v.dtype == np.float32 for k, v in got.items() if k != "ix")
            assert got["ix"].dtype == np.int64
        for name in results[0]:
            np.testing.assert_array_equal(results[0][name], results[1][name])
        ran += 1
    assert ran >= 50


def test_separable_max_pool_3d_matches_reference_sweep(rng):
    """A 3-D MaxPool without Indices runs as two 2-D pools (frames, then T): random windows
    (asymmetric pads, dilation, ceil_mode, every auto_pad), a NaN in some inputs (it wins,
    as in the reference), values equal to the reference's and to ONNX Runtime's where it
    follows the spec, 1 and 2 threads bit-identical."""
    ort = pytest.importorskip("onnxruntime")
    ran = 0
    for trial in range(60):
        auto_pad = ("NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")[trial % 5]
        size, kernel, strides, dilations, pads, ceil = random_window(rng, 3, auto_pad,
                                                                     max_size=7)
        m = node_model([h.make_node("MaxPool", ["x"], ["y"],
                                    **attrs(kernel, strides, dilations, pads, ceil, auto_pad))],
                       (2, 3) + size, [("y", T.FLOAT)])
        x = rng.standard_normal((2, 3) + size).astype(np.float32)
        if trial % 4 == 0:
            x.reshape(-1)[rng.integers(0, x.size)] = np.nan
        model = engine.load(m)
        assert ", separable:" in model.explain()
        want, _ = reference("max", x, kernel, strides, dilations, pads, ceil)
        one, two = (model.run({"x": x}, num_threads=t)["y"] for t in (1, 2))
        np.testing.assert_array_equal(one, want.astype(np.float32))
        np.testing.assert_array_equal(one, two)
        spec_like = not (auto_pad.startswith("SAME") and (
            any(d > 1 for d in dilations) or any(k < s for k, s in zip(kernel, strides))))
        if spec_like and not np.isnan(x).any() and not has_empty_window(
                size, kernel, strides, dilations, pads, ceil):
            sess = ort.InferenceSession(m.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            np.testing.assert_array_equal(one, sess.run(None, {"x": x})[0])
        ran += 1
    assert ran == 60


def test_pools_match_onnxruntime(rng):
    """Random 1-D to 3-D windows, values and whole-tensor indices (both storage orders) as
    ONNX Runtime computes them; windows that miss the input and SAME with dilation or with a
    kernel below the stride, where ONNX Runtime departs from the spec, are left out."""
    ort = pytest.importorskip("onnxruntime")
    ran = 0
    for trial in range(90):
        nd = 1 + trial % 3
        auto_pad = ("NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")[trial % 5]
        size, kernel, strides, dilations, pads, ceil = random_window(rng, nd, auto_pad)
        if auto_pad.startswith("SAME") and (any(d > 1 for d in dilations)
                                            or any(k < s for k, s in zip(kernel, strides))):
            continue
        if has_empty_window(size, kernel, strides, dilations, pads, ceil):
            continue
        cip, order = trial % 2, (trial // 2) % 2
        m = three_pools((2, 3) + size, attrs(kernel, strides, dilations, pads, ceil, auto_pad),
                        cip, 3, storage_order=order)
        x = rng.standard_normal((2, 3) + size).astype(np.float32)
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        want = dict(zip(["mx", "ix", "av", "lp"], sess.run(None, {"x": x})))
        got = engine.load(m).run({"x": x})
        np.testing.assert_array_equal(got["mx"], want["mx"])
        np.testing.assert_array_equal(got["ix"], want["ix"])
        np.testing.assert_allclose(got["av"], want["av"], **TOL)
        np.testing.assert_allclose(got["lp"], want["lp"], **TOL)
        ran += 1
    assert ran >= 50


def test_dilated_average_pool_2d_matches_onnxruntime(rng):
    """The divisor of dilated windows: taps counted, with ceil_mode windows running past the
    padded input and asymmetric pads."""
    ort = pytest.importorskip("onnxruntime")
    cases = [((7, 8), (3, 2), (2, 1), (2, 3), ((1, 2), (0, 1)), True),
             ((9, 9), (3, 3), (2, 3), (2, 2), ((2, 1), (1, 2)), True),
             ((6, 5), (2, 3), (1, 1), (3, 2), ((1, 0), (2, 2)), False)]
    for size, kernel, strides, dilations, pads, ceil in cases:
        for cip in (0, 1):
            node = h.make_node("AveragePool", ["x"], ["y"], count_include_pad=cip,
                               **attrs(kernel, strides, dilations, pads, ceil))
            m = node_model([node], (1, 2) + size, [("y", T.FLOAT)])
            x = rng.standard_normal((1, 2) + size).astype(np.float32)
            sess = ort.InferenceSession(m.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            got = engine.load(m).run({"x": x})["y"]
            np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], **TOL)
            np.testing.assert_allclose(got, reference("avg", x, kernel, strides, dilations,
                                                      pads, ceil, bool(cip))[0], **TOL)



@pytest.mark.parametrize("layout", ["nchw", "nchwc"])
def test_average_pool_over_the_whole_map_is_a_global_average(rng, layout):
    """A window that is the whole unpadded map (Caffe2's ResNets end on one) runs as a global
    average, on NCHW or on the blocks of the convolution before it, whatever its stride,
    ceil_mode and count_include_pad; with pads, or a window short of the map, it does not."""
    w = (rng.standard_normal((20, 20, 1, 1)) * 0.3).astype(np.float32)
    cases = [((7, 7), (1, 1), False, 0, [0] * 4, True), ((7, 7), (2, 3), True, 1, [0] * 4, True),
             ((5, 7), (5, 7), False, 1, [0] * 4, True), ((7, 7), (1, 1), False, 0, [1, 0, 0, 0],
                                                        False),
             ((6, 7), (1, 1), False, 0, [0] * 4, False)]
    for kernel, strides, ceil, cip, pads, whole in cases:
        size = (kernel[0] + (0 if whole or pads[0] else 1), kernel[1])
        pool = h.make_node("AveragePool", ["c"], ["y"], kernel_shape=list(kernel),
                           strides=list(strides), ceil_mode=int(ceil), count_include_pad=cip,
                           pads=pads)
        conv = h.make_node("Conv", ["x", "w"], ["c"])
        g = h.make_graph([conv, pool], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, 20] + list(size))],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [onnx.numpy_helper.from_array(w, "w")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)
        model = engine.load(m, layout=layout)
        assert ("over the whole map" in model.explain()
                or "AveragePool" in model.explain() and "in place" in model.explain()) == whole
        x = rng.standard_normal((1, 20) + size).astype(np.float32)
        c = np.einsum("oi,nihw->nohw", w[:, :, 0, 0].astype(np.float64), x)
        ref = reference("avg", c, kernel, strides, (1, 1), [(pads[0], pads[2]),
                                                           (pads[1], pads[3])],
                        ceil, bool(cip))[0]
        np.testing.assert_allclose(model.run({"x": x})["y"], ref, **TOL)


# ------------------------------------------------------------------------------ torch

def torch_pads(pads):
    return tuple(b for b, _ in pads)


@pytest.mark.parametrize("nd", [1, 3])
def test_max_pool_matches_torch(rng, nd):
    """Values and indices (torch's per-plane position plus the plane's base), with NaNs and
    ties in the input; symmetric pads of at most half the kernel, as torch takes them."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fn = F.max_pool1d if nd == 1 else F.max_pool3d
    ran = 0
    for trial in range(25):
        size = tuple(int(v) for v in rng.integers(2, 7, nd))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        strides = tuple(int(v) for v in rng.integers(1, 3, nd))
        dilations = tuple(int(v) for v in rng.integers(1, 3, nd))
        pads = tuple((p, p) for p in (int(rng.integers(0, k // 2 + 1)) for k in kernel))
        ceil = bool(trial % 2)
        if any(out_len(i, k, s, pb, pe, d, ceil) < 1 for i, k, s, d, (pb, pe)
               in zip(size, kernel, strides, dilations, pads)) or \
                has_empty_window(size, kernel, strides, dilations, pads, ceil):
            continue
        # a few values (ties) and NaNs
        x = rng.integers(-3, 4, (2, 3) + size).astype(np.float32)
        x[rng.random(x.shape) < 0.05] = np.nan
        node = h.make_node("MaxPool", ["x"], ["y", "i"], **attrs(kernel, strides, dilations,
                                                                  pads, ceil))
        got = engine.load(node_model([node], x.shape, [("y", T.FLOAT), ("i", T.INT64)])).run(
            {"x": x})
        ty, ti = fn(torch.from_numpy(x), kernel, strides, torch_pads(pads), dilations,
                    ceil_mode=ceil, return_indices=True)
        base = (np.arange(6).reshape((2, 3) + (1,) * nd) * math.prod(size))
        np.testing.assert_array_equal(got["y"], ty.numpy())
        np.testing.assert_array_equal(got["i"], ti.numpy() + base)
        ran += 1
    assert ran >= 12


@pytest.mark.parametrize("nd", [1, 3])
def test_average_pool_matches_torch(rng, nd):
    """ceil_mode windows hanging past the padded input and both count_include_pad."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fn = F.avg_pool1d if nd == 1 else F.avg_pool3d
    ran = 0
    for trial in range(24):
        size = tuple(int(v) for v in rng.integers(2, 8, nd))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        strides = tuple(int(v) for v in rng.integers(1, 4, nd))
        pads = tuple((p, p) for p in (int(rng.integers(0, k // 2 + 1)) for k in kernel))
        ceil, cip = bool(trial % 2), bool(trial // 2 % 2)
        if any(out_len(i, k, s, pb, pe, 1, ceil) < 1 for i, k, s, (pb, pe)
               in zip(size, kernel, strides, pads)):
            continue
        x = rng.standard_normal((2, 3) + size).astype(np.float32)
        node = h.make_node("AveragePool", ["x"], ["y"], count_include_pad=int(cip),
                           **attrs(kernel, strides, (1,) * nd, pads, ceil))
        got = engine.load(node_model([node], x.shape, [("y", T.FLOAT)])).run({"x": x})["y"]
        want = fn(torch.from_numpy(x), kernel, strides, torch_pads(pads), ceil_mode=ceil,
                  count_include_pad=cip).numpy()
        np.testing.assert_allclose(got, want, **TOL)
        ran += 1
    assert ran >= 15


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lp_pool_matches_torch(rng, nd):
    """torch's lp_pool has no padding and powers x itself (not |x|), so positive inputs, and
    no ceil_mode (torch rescales an average whose divisor ceil_mode clips)."""
    torch = pytest.importorskip("torch")
    fn = getattr(torch.nn.functional, f"lp_pool{nd}d")
    for trial in range(8):
        size = tuple(int(v) for v in rng.integers(3, 7, nd))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        strides = tuple(int(v) for v in rng.integers(1, 3, nd))
        p = (1, 2, 3, 4)[trial % 4]
        x = rng.uniform(0.1, 2.0, (2, 3) + size).astype(np.float32)
        node = h.make_node("LpPool", ["x"], ["y"], p=p, kernel_shape=list(kernel),
                           strides=list(strides))
        got = engine.load(node_model([node], x.shape, [("y", T.FLOAT)])).run({"x": x})["y"]
        want = fn(torch.from_numpy(x), float(p), kernel if nd > 1 else kernel[0],
                  strides if nd > 1 else strides[0]).numpy()
        np.testing.assert_allclose(got, want, **TOL)


# ------------------------------------------------------------------------------ paths

@pytest.mark.parametrize("nd", [1, 2])
def test_numpy_path_equals_kernel_paths(rng, nd):
    """OnnxWindowPool forced on windows the 2-D kernels run ("direct" or "padded"): max
    values and indices identical, NaNs and ties included, averages within TOL."""
    ran = 0
    for trial in range(30):
        size, kernel, strides, dilations, pads, ceil = random_window(rng, nd)
        x = rng.integers(-2, 3, (2, 3) + size).astype(np.float32)
        x[rng.random(x.shape) < 0.05] = np.nan
        order = trial % 2
        kw = attrs(kernel, strides, dilations, pads, ceil)
        nodes = [h.make_node("MaxPool", ["x"], ["mx", "ix"], storage_order=order, **kw)]
        if all(d == 1 for d in dilations):
            nodes.append(h.make_node("AveragePool", ["x"], ["av"], count_include_pad=trial % 3
                                     and 1, **kw))
        outputs = [("mx", T.FLOAT), ("ix", T.INT64)] + [("av", T.FLOAT)] * (len(nodes) - 1)
        model = engine.load(node_model(nodes, x.shape, outputs))
        assert "numpy" not in model.explain()
        got = model.run({"x": x})
        outs = tuple(out_len(i, k, s, pb, pe, d, ceil) for i, k, s, d, (pb, pe)
                     in zip(size, kernel, strides, dilations, pads))
        y = np.empty(x.shape[:2] + outs, np.float32)
        i = np.empty(y.shape, np.int64)
        OnnxWindowPool("max", x.shape, outs, kernel, strides, dilations, pads,
                       column_major=bool(order)).run(x, y, i)
        np.testing.assert_array_equal(got["mx"], y)
        np.testing.assert_array_equal(got["ix"], i)
        if "av" in got:
            OnnxWindowPool("avg", x.shape, outs, kernel, strides, dilations, pads,
                           count_include_pad=bool(trial % 3 and 1)).run(np.nan_to_num(x), y)
            got = model.run({"x": np.nan_to_num(x)})
            np.testing.assert_allclose(got["av"], y, **TOL)
        ran += 1
    assert ran == 30


def test_explain_shows_the_path(rng):
    x_shapes = {"x": (1, 2, 6, 7, 8)}
    cases = [  # (op, rank, attributes, path, words in the reason)
        ("MaxPool", 3, dict(kernel_shape=[2, 2, 2]), "separable", "3-D max"),
        ("AveragePool", 3, dict(kernel_shape=[3, 3, 3], pads=[1] * 6), "numpy", "3-D"),
        ("AveragePool", 2, dict(kernel_shape=[2, 2], dilations=[2, 1]), "numpy", "dilations"),
        ("LpPool", 2, dict(kernel_shape=[2, 2], p=2), "numpy", "Lp pooling has no kernel"),
        ("LpPool", 1, dict(kernel_shape=[3], p=3), "numpy", "p=3"),
        ("MaxPool", 1, dict(kernel_shape=[3], pads=[1, 1]), "direct", "symmetric"),
        ("AveragePool", 1, dict(kernel_shape=[3], pads=[0, 2]), "padded", "padded copy"),
        ("AveragePool", 2, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "direct",
         "symmetric"),
    ]
    for op, nd, kw, path, words in cases:
        shape = x_shapes["x"][:2 + nd]
        m = engine.load(node_model([h.make_node(op, ["x"], ["y"], **kw)], shape,
                                   [("y", T.FLOAT)]))
        text = m.explain()
        assert f", {path}:" in text and words in text, text
        m.run({"x": rng.standard_normal(shape).astype(np.float32)})
    # with Indices, a 3-D max pool stays on NumPy's path
    m = engine.load(node_model([h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2] * 3)],
                               x_shapes["x"], [("y", T.FLOAT), ("i", T.INT64)]))
    assert ", numpy: 3-D: the pooling kernels are 2-D" in m.explain()


# ------------------------------------------------------------------------------ hand-checked

def test_divisor_hand_checked():
    # one axis: i = 5, k = 3, s = 2, d = 2, pads (1, 2), ceil_mode: o = ceil((8 - 5)/2) + 1 = 3
    # windows start at -1, 1, 3: taps {-1, 1, 3}, {1, 3, 5}, {3, 5, 7}; the padded input is
    # [-1, 7), the input [0, 5)
    got = onnx_avgpool_divisor((5,), (3,), (3,), (2,), (2,), ((1, 2),), True)
    np.testing.assert_array_equal(got, [3, 3, 2])
    got = onnx_avgpool_divisor((5,), (3,), (3,), (2,), (2,), ((1, 2),), False)
    np.testing.assert_array_equal(got, [2, 2, 1])
    # two axes multiply
    got = onnx_avgpool_divisor((5, 2), (3, 1), (3, 2), (2, 1), (2, 1), ((1, 2), (0, 0)), False)
    np.testing.assert_array_equal(got, [[4], [4], [2]])


def test_max_ties_nans_and_windows_missing_the_input():
    x = np.zeros((1, 1, 2, 2, 2), np.float32)
    x[0, 0, 0, 1, 0] = x[0, 0, 1, 0, 1] = 5.0                 # a tie: the first (flat 2) wins
    node = h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2, 2])
    m = engine.load(node_model([node], x.shape, [("y", T.FLOAT), ("i", T.INT64)]))
    got = m.run({"x": x})
    assert got["y"].ravel().tolist() == [5.0] and got["i"].ravel().tolist() == [2]
    x[0, 0, 0, 0, 1] = x[0, 0, 1, 1, 0] = np.nan               # NaNs win, the last one (6)
    got = m.run({"x": x})
    assert np.isnan(got["y"]).all() and got["i"].ravel().tolist() == [6]
    # an all -inf window reports its first input cell in row-major order (as torch does):
    # output (oh, ow) reads rows {oh - 1, oh} and columns {ow - 1, ow} of a 2x3 plane
    x = np.full((1, 1, 1, 2, 3), -np.inf, np.float32)
    node = h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[1, 2, 2], pads=[0, 1, 1] * 2)
    got = engine.load(node_model([node], x.shape, [("y", T.FLOAT), ("i", T.INT64)])).run(
        {"x": x})
    assert got["i"].ravel().tolist() == [0, 0, 1, 2, 0, 0, 1, 2, 3, 3, 4, 5]
    # i = 1, k = 2, d = 2, pads (1, 1): the taps -1 and 1 both miss the input
    x = np.array([[[[[7.0]]]]], np.float32)
    kw = dict(kernel_shape=[1, 1, 2], dilations=[1, 1, 2], pads=[0, 0, 1, 0, 0, 1])
    nodes = [h.make_node("MaxPool", ["x"], ["y", "i"], **kw),
             h.make_node("AveragePool", ["x"], ["a"], **kw),
             h.make_node("AveragePool", ["x"], ["b"], count_include_pad=1, **kw),
             h.make_node("LpPool", ["x"], ["c"], **kw)]
    got = engine.load(node_model(nodes, x.shape, [("y", T.FLOAT), ("i", T.INT64),
                                                  ("a", T.FLOAT), ("b", T.FLOAT),
                                                  ("c", T.FLOAT)])).run({"x": x})
    assert got["y"].ravel().tolist() == [-np.inf] and got["i"].ravel().tolist() == [-1]
    # ONNX Runtime's 0 where nothing is counted; with count_include_pad both taps count
    assert got["a"].ravel().tolist() == [0.0] and got["b"].ravel().tolist() == [0.0]
    assert got["c"].ravel().tolist() == [0.0]


def test_the_same_window_missing_the_input_in_2d():
    """The 2-D kernel paths give such windows -inf and index -1 too."""
    x = np.array([[[[1.0, 2.0]]]], np.float32)
    node = h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 3], strides=[2, 2],
                       dilations=[2, 1], pads=[1, 1, 1, 2], ceil_mode=1)
    got = engine.load(node_model([node], x.shape, [("y", T.FLOAT), ("i", T.INT64)])).run(
        {"x": x})
    np.testing.assert_array_equal(got["y"], np.full((1, 1, 1, 2), -np.inf, np.float32))
    np.testing.assert_array_equal(got["i"], np.full((1, 1, 1, 2), -1))


def test_threads_bit_identical(rng, threads):
    x = rng.standard_normal((2, 8, 9, 10, 11)).astype(np.float32)
    nodes = [h.make_node("MaxPool", ["x"], ["mx", "ix"], kernel_shape=[3, 3, 3],
                         strides=[2, 2, 2], pads=[1, 0, 1, 1, 2, 1], ceil_mode=1),
             h.make_node("AveragePool", ["x"], ["av"], kernel_shape=[3, 2, 3],
                         dilations=[2, 1, 1], pads=[1, 1, 1, 1, 1, 1]),
             h.make_node("MaxPool", ["x5"], ["m1", "i1"], kernel_shape=[3], strides=[2],
                         pads=[1, 2]),
             h.make_node("Reshape", ["x", "shape"], ["x5"])]
    g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, list(x.shape))],
                     [h.make_tensor_value_info(n, T.FLOAT if n[0] != "i" else T.INT64, None)
                      for n in ("mx", "ix", "av", "m1", "i1")],
                     [onnx.numpy_helper.from_array(np.array([2, 8, -1], np.int64), "shape")])
    model = engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9))
    got = model.run({"x": x})
    other = model.run({"x": x}, num_threads=1 if threads > 1 else 2)
    for name in got:
        np.testing.assert_array_equal(got[name], other[name])


# ------------------------------------------------------------------------------ global pools

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_pools(rng, nd):
    shape = (2, 3) + (4, 5, 3)[:nd]
    x = rng.standard_normal(shape).astype(np.float32)
    nodes = [h.make_node("GlobalAveragePool", ["x"], ["a"]),
             h.make_node("GlobalMaxPool", ["x"], ["m"]),
             h.make_node("GlobalLpPool", ["x"], ["l2"]),
             h.make_node("GlobalLpPool", ["x"], ["l3"], p=3)]
    got = engine.load(node_model(nodes, shape, [(n, T.FLOAT) for n in ("a", "m", "l2", "l3")])
                      ).run({"x": x})
    axes = tuple(range(2, 2 + nd))
    x64 = x.astype(np.float64)
    for name, want in [("a", x64.mean(axis=axes, keepdims=True)),
                       ("m", x64.max(axis=axes, keepdims=True)),
                       ("l2", np.sqrt((x64 ** 2).sum(axis=axes, keepdims=True))),
                       ("l3", (np.abs(x64) ** 3).sum(axis=axes, keepdims=True) ** (1 / 3))]:
        assert got[name].shape == (2, 3) + (1,) * nd and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want, **TOL)


# ------------------------------------------------------------------------------ opsets

@pytest.mark.parametrize("op,opset,kw", [
    ("AveragePool", 7, dict(kernel_shape=[3, 2, 2], pads=[1, 0, 1, 0, 1, 1],
                            count_include_pad=1)),
    ("AveragePool", 10, dict(kernel_shape=[3, 3, 2], strides=[2, 2, 2], ceil_mode=1)),
    ("AveragePool", 11, dict(kernel_shape=[2, 2, 2], auto_pad="SAME_LOWER")),
    ("AveragePool", 19, dict(kernel_shape=[2, 2, 2], dilations=[2, 1, 2], ceil_mode=1)),
    ("MaxPool", 8, dict(kernel_shape=[2, 3, 2], storage_order=1)),
    ("MaxPool", 10, dict(kernel_shape=[3, 3, 3], strides=[2, 2, 2], ceil_mode=1,
                         dilations=[1, 2, 1])),
    ("MaxPool", 12, dict(kernel_shape=[2, 2, 2], pads=[1, 1, 1, 0, 0, 0])),
    ("LpPool", 7, dict(kernel_shape=[2, 2, 2], p=3, pads=[1, 0, 0, 0, 1, 1])),
    ("LpPool", 11, dict(kernel_shape=[2, 3, 2], auto_pad="SAME_UPPER", strides=[2, 2, 2])),
    ("LpPool", 18, dict(kernel_shape=[2, 2, 2], dilations=[2, 2, 1], ceil_mode=1,
                        strides=[2, 2, 2])),
])
def test_opset_forms_3d_match_onnxruntime(rng, op, opset, kw):
    ort = pytest.importorskip("onnxruntime")
    outs = [("y", T.FLOAT)] + ([("i", T.INT64)] if op == "MaxPool" and opset >= 8 else [])
    m = node_model([h.make_node(op, ["x"], [n for n, _ in outs], **kw)], (2, 3, 6, 7, 5),
                   outs, opset=opset)
    x = rng.standard_normal((2, 3, 6, 7, 5)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})
    got = engine.load(m).run({"x": x})
    for (name, _), w in zip(outs, want):
        assert got[name].dtype == w.dtype and got[name].shape == w.shape
        np.testing.assert_allclose(got[name], w, **TOL)


# ------------------------------------------------------------------------------ malformed

@pytest.mark.parametrize("op,shape,kw,match", [
    ("MaxPool", (1, 1, 3, 3, 3), dict(kernel_shape=[4, 2, 2]), "larger than the padded"),
    ("AveragePool", (1, 1, 2), dict(kernel_shape=[2], dilations=[3]), "larger than the padded"),
    ("LpPool", (1, 1, 3, 3), dict(kernel_shape=[2, 6], pads=[0, 1, 0, 1]),
     "larger than the padded"),
    ("MaxPool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], pads=[2, 0, 0, 0, 0, 0]),
     "smaller than kernel_shape"),
    ("AveragePool", (1, 1, 6), dict(kernel_shape=[3], pads=[0, 3], dilations=[2]),
     "smaller than kernel_shape"),
    ("LpPool", (1, 1, 6, 6), dict(kernel_shape=[2, 2], pads=[1, 1, 1, 2]),
     "smaller than kernel_shape"),
    ("LpPool", (1, 1, 6, 6), dict(kernel_shape=[2, 2], p=0), "p must be"),
    ("LpPool", (1, 1, 6, 6), dict(kernel_shape=[2, 2], p=-2), "p must be"),
    ("GlobalLpPool", (1, 1, 6, 6), dict(p=0), "p must be"),
    ("LpPool", (1, 1, 6, 6), dict(kernel_shape=[2, 2], p=2.5), "'p' must be int"),
    ("MaxPool", (1, 1, 6, 6, 6, 6), dict(kernel_shape=[2, 2, 2, 2]), "1 to 3 sizes"),
    ("AveragePool", (1, 1, 6), dict(), "1 to 3 sizes"),
    ("MaxPool", (1, 1, 6, 6), dict(kernel_shape=[2, 2, 2]), "must be 5-D"),
    ("LpPool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 0, 2]), "kernel_shape must be positive"),
    ("AveragePool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], strides=[1, 0, 1]),
     "strides must be >= 1"),
    ("MaxPool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], dilations=[1, 1]),
     "dilations must have 3 values"),
    ("MaxPool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], storage_order=2),
     "storage_order"),
    ("AveragePool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], ceil_mode=3), "ceil_mode"),
    ("AveragePool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], count_include_pad=2),
     "count_include_pad"),
    ("AveragePool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], auto_pad="SAME"),
     "auto_pad"),
    ("LpPool", (1, 1, 6, 6, 6), dict(kernel_shape=[2, 2, 2], pads=[-1, 0, 0, 0, 0, 0]),
     "non-negative"),
])
def test_malformed_nodes_raise_model_error(rng, op, shape, kw, match):
    with pytest.raises(engine.ModelError, match=match):
        m = engine.load(node_model([h.make_node(op, ["x"], ["y"], **kw)], shape,
                                   [("y", T.FLOAT)], opset=19))
        m.run({"x": rng.standard_normal(shape).astype(np.float32)})


def test_unknown_attributes_are_refused(rng):
    for op, kw in [("MaxPool", dict(count_include_pad=1)), ("AveragePool", dict(storage_order=1)),
                   ("LpPool", dict(count_include_pad=1))]:
        node = h.make_node(op, ["x"], ["y"], kernel_shape=[2, 2, 2], **kw)
        with pytest.raises(engine.ModelError):
            engine.load(node_model([node], (1, 1, 4, 4, 4), [("y", T.FLOAT)], opset=19)).run(
                {"x": np.zeros((1, 1, 4, 4, 4), np.float32)})


def test_non_float_input_is_refused():
    node = h.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2, 2])
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.DOUBLE, [1, 1, 4, 4, 4])],
                     [h.make_tensor_value_info("y", T.DOUBLE, None)])
    with pytest.raises(engine.ModelError):
        engine.load(h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)).run(
            {"x": np.zeros((1, 1, 4, 4, 4))})
