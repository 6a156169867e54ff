"""Winograd F(2x2,3x3) ("winograd_f23", "dilated_s2b"), F(4x4,3x3) ("winograd_f43") and
F(6x6,3x3) ("winograd_f63") against the float64 reference, with the algorithm forced so the
kernel under test is what runs.

Tolerances, relative to the output's magnitude: |y - ref| <= RTOL * (1 + max |ref|).
  F(2,3): 1e-5. Float32 direct sums of up to 9*Cg products are off by a few 1e-7 of the
          output's scale; B^T, G and A^T hold only 0, +-1/2, +-1, so the transforms add a
          few roundings of values at most 4x the inputs (observed: <= 5e-7).
  F(4,3): 1e-4. B^T has entries up to 5 and A^T up to 8, so intermediate values reach ~100x
          the inputs before they cancel, and the rounding error grows with them (observed:
          <= 6e-6 here, 1e-5 on 512 channels).
  F(6,3): 2e-4. Points +-1/2 as well: B^T has entries up to 21/4 and A^T up to 32
          (observed: <= 1e-5 here, 3e-5 on 512 channels).
A wrong address, phase or transform coefficient gives errors of order 1, far above both.
"""
import threading

import numpy as np
import pytest

import engine
from engine import shapes
from engine.ops import packed_gemm, winograd
from engine.shapes import resolve_padding

from conftest import torch_or_skip
from reference import conv2d_ref

RTOL = {"winograd_f23": 1e-5, "dilated_s2b": 1e-5, "winograd_f43": 1e-4, "winograd_f63": 2e-4}


def assert_close(y, ref, algorithm):
    err = np.abs(y - ref).max()
    bound = RTOL[algorithm] * (1 + np.abs(ref).max())
    assert err <= bound, f"{algorithm}: max error {err:.3g} > {bound:.3g}"


def reference(x, w, b, pads, dilation, groups, activation):
    ref = conv2d_ref(x, w, b, (1, 1), pads, dilation, groups)
    if activation == "relu":
        ref = np.maximum(ref, 0)
    elif activation == "relu6":
        ref = np.clip(ref, 0, 6)
    return ref


# Where U lives (engine/dispatch/winograd.py): kept, or made block by block in every call.
WEIGHTS = ["stored", "per_call"]


def run_case(rng, algorithm, n, c, k, h, w, padding=1, dilation=1, groups=1, bias=True,
             activation=None, num_threads=None, weights="auto"):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    layer = engine.Conv2d(wt, b, 1, padding, dilation, groups, activation=activation,
                          algorithm=algorithm, num_threads=num_threads,
                          winograd_weights=weights)
    assert layer.algorithm == algorithm
    y = layer(x)
    dil = (dilation, dilation) if isinstance(dilation, int) else dilation
    pads = resolve_padding(padding, (h, w), (3, 3), (1, 1), dil)
    ref = reference(x, wt, b, pads, dil, groups, activation)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert_close(y, ref, algorithm)
    return layer, x, y


def fits(size, pads, dilation):
    return size + sum(pads) >= 2 * dilation + 1


# ---- the transforms themselves ------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 4, 6])
def test_transform_matrices_compute_correlation(m, rng):
    """A^T [(G g) (.) (B^T d)] is the valid correlation of d with g, in 1-D and in 2-D."""
    AT, G, BT = winograd.TRANSFORMS[m]
    for _ in range(20):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), np.correlate(d, g, "valid"),
                                   rtol=0, atol=1e-12)
        d2, g2 = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
        y = AT @ ((G @ g2 @ G.T) * (BT @ d2 @ BT.T)) @ AT.T
        ref = np.array([[np.sum(d2[i:i + 3, j:j + 3] * g2) for j in range(m)] for i in range(m)])
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)


def test_f43_matrices_are_the_standard_ones():
    AT, G, BT = winograd.TRANSFORMS[4]
    np.testing.assert_array_equal(BT, [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                                       [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                                       [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
    np.testing.assert_allclose(G, [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                                   [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                                   [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], rtol=1e-15)
    np.testing.assert_array_equal(AT, [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                                       [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


def test_f63_matrices_are_the_standard_ones():
    AT, G, BT = winograd.TRANSFORMS[6]
    np.testing.assert_array_equal(BT, [[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0],
                                       [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
                                       [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
                                       [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
                                       [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0],
                                       [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                                       [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0],
                                       [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]])
    np.testing.assert_allclose(G[0], [1, 0, 0])
    np.testing.assert_allclose(G[1], [-2 / 9] * 3, rtol=1e-15)
    np.testing.assert_allclose(AT[5], [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1])


def test_toom_cook_rejects_wrong_points():
    with pytest.raises(ValueError):
        winograd.toom_cook((0, 1, 1, 2, -2), m=4)
    with pytest.raises(ValueError):
        winograd.toom_cook((0, 1), m=4)


# ---- against the reference ------------------------------------------------------------------

SIZES = [1, 5, 11, 53]
PADDINGS = [0, 1, 2, (2, 0, 1, 3), "same"]   # 4-tuple: ONNX order (top, left, bottom, right)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("algorithm", ["winograd_f23", "winograd_f43", "winograd_f63"])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_sizes_and_paddings(algorithm, padding, weights, rng):
    for h in SIZES:
        for w in SIZES:
            pads = resolve_padding(padding, (h, w), (3, 3), (1, 1), (1, 1))
            if not (fits(h, pads[0], 1) and fits(w, pads[1], 1)):
                with pytest.raises(ValueError):
                    run_case(rng, algorithm, 1, 5, 7, h, w, padding, weights=weights)
                continue
            run_case(rng, algorithm, 1, 5, 7, h, w, padding, weights=weights)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("algorithm", ["dilated_s2b", "winograd_f43", "winograd_f63"])
@pytest.mark.parametrize("dilation", [2, 3, 4, (2, 3), (4, 1)], ids=str)
def test_dilations(algorithm, dilation, weights, rng):
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    # (1, 3), (2, 1): fewer outputs than phases, so some phases hold no tile at all; (7, 140):
    # rows of tiles over several strips of 32, each packing the tiles of several phases
    for h, w in [(5, 5), (11, 53), (53, 11), (13, 8), (1, 3), (2, 1), (7, 140)]:
        for padding in [0, d[0], "same", (1, 4, 0, 2)]:
            pads = resolve_padding(padding, (h, w), (3, 3), (1, 1), d)
            if fits(h, pads[0], d[0]) and fits(w, pads[1], d[1]):
                run_case(rng, algorithm, 1, 6, 5, h, w, padding, dilation, weights=weights)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("algorithm", ["winograd_f23", "dilated_s2b", "winograd_f43",
                                       "winograd_f63"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groups_batch_bias_activation(algorithm, groups, weights, rng):
    dilation = 2 if algorithm == "dilated_s2b" else 1
    for n, bias, activation in [(1, True, None), (3, False, "relu"), (3, True, "relu6"),
                                (1, False, None)]:
        run_case(rng, algorithm, n, 3 * groups, 5 * groups, 11, 9, padding=dilation,
                 dilation=dilation, groups=groups, bias=bias, activation=activation,
                 weights=weights)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("algorithm", ["winograd_f23", "dilated_s2b", "winograd_f43",
                                       "winograd_f63"])
def test_many_channels(algorithm, weights, rng):
    """Long dot products (9 * 128 terms), where float32 error accumulates most; output
    channels off the 8-row block of U."""
    dilation = 2 if algorithm == "dilated_s2b" else 1
    run_case(rng, algorithm, 1, 128, 43, 14, 15, padding=dilation, dilation=dilation,
             weights=weights)


def fuzz_case(rng, algorithm, weights="auto"):
    """One random layer; out sits between NaN guards that must stay untouched."""
    groups = int(rng.choice([1, 2, 3]))
    c, k = groups * int(rng.integers(1, 6)), groups * int(rng.integers(1, 6))
    d = (1, 1) if algorithm == "winograd_f23" else tuple(int(v) for v in rng.integers(1, 6, 2))
    if algorithm == "dilated_s2b" and d == (1, 1):
        d = (1, 2)
    n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 30)), int(rng.integers(1, 30))
    pads = tuple(int(v) for v in rng.integers(0, 6, 4))      # (top, left, bottom, right)
    if h + pads[0] + pads[2] < 2 * d[0] + 1 or w + pads[1] + pads[3] < 2 * d[1] + 1:
        return
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    layer = engine.Conv2d(wt, b, 1, pads, d, groups, activation="relu6", algorithm=algorithm,
                          winograd_weights=weights)
    shape = layer.output_shape(x.shape)
    size = int(np.prod(shape))
    buf = np.full(size + 64, np.nan, np.float32)
    out = buf[32:32 + size].reshape(shape)
    layer(x, out=out)
    assert np.isnan(buf[:32]).all() and np.isnan(buf[32 + size:]).all()
    ref = reference(x, wt, b, ((pads[0], pads[2]), (pads[1], pads[3])), d, groups, "relu6")
    assert_close(out, ref, algorithm)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("algorithm", ["winograd_f23", "dilated_s2b", "winograd_f43",
                                       "winograd_f63"])
def test_random_layers_write_only_their_output(algorithm, weights):
    rng = np.random.default_rng(7)
    for _ in range(40):
        fuzz_case(rng, algorithm, weights)


def test_blocks_and_split_gemms(rng, monkeypatch):
    """Tiny blocks (one tile row each) and GEMM work items of one 8-row block of U and one tile
    panel give the same result as the reference: the multi-block and multi-item paths."""
    monkeypatch.setattr(winograd, "MIN_BLOCK_TILES", 1)
    monkeypatch.setattr(winograd, "BLOCK_V_BYTES", 1)
    monkeypatch.setattr(packed_gemm, "split", lambda cg, kg, columns: (packed_gemm.ROW_BLOCK, 1))
    monkeypatch.setattr(winograd, "TAPS_PANELS_BYTES", 1)
    for algorithm, dilation in [("winograd_f23", 1), ("dilated_s2b", 3), ("winograd_f43", 2),
                                ("winograd_f63", 1), ("winograd_f63", 2)]:
        for weights in WEIGHTS:
            layer, x, y = run_case(rng, algorithm, 2, 18, 9, 17, 12, padding=dilation,
                                   dilation=dilation, groups=3, weights=weights)
            plan = layer._impl.plan(layer.geometry(x.shape))
            assert len(plan.blocks) == len(plan.rows) > 1
            assert (plan.mchunk, plan.group_panels) == (packed_gemm.ROW_BLOCK, 1)
            assert plan.taps_split(1)[1] == 1


def test_gemm_split():
    mr, nr = packed_gemm.ROW_BLOCK, packed_gemm.PANEL
    budget = packed_gemm.PANELS_BYTES
    # 512 x 512 on 196 columns: the panels exceed the budget (with AVX-512, 7 panels of
    # 64 KB), so as few groups as fit it, and all of A per item
    rows, gp = packed_gemm.split(512, 512, 196)
    npanels, fit = -(-196 // nr), budget // (4 * 512 * nr)
    assert rows == -(-512 // mr) * mr and gp <= fit and -(-npanels // gp) == -(-npanels // fit)
    # few columns: one group; rows rounded up to whole blocks
    assert packed_gemm.split(4, 3, 10) == (mr, -(-10 // nr))
    # pointwise shares: the threads split the larger operand
    assert packed_gemm.share_split(64, 1024, 49, 2)[0]             # weights larger: rows
    split_rows, gp = packed_gemm.share_split(32, 64, 12544, 2)
    assert not split_rows and gp * 32 * nr * 4 <= budget


def test_pack_rows_layout():
    a = np.arange(2 * 10 * 3, dtype=np.float32).reshape(20, 3)     # 2 groups of 10 rows
    p = packed_gemm.pack_rows(a, 2).reshape(2, 2, 3, packed_gemm.ROW_BLOCK)
    mr = packed_gemm.ROW_BLOCK
    for g in range(2):
        for r in range(10):
            assert np.array_equal(p[g, r // mr, :, r % mr], a[g * 10 + r])
    assert np.all(p[:, 1, :, 10 - mr:] == 0)       # rows beyond 10: zero


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("k, c, groups", [(64, 64, 1), (17, 5, 1), (30, 12, 3), (16, 1, 16),
                                          (40, 24, 2)])
def test_packed_weight_transform(m, k, c, groups, rng):
    """The one-pass transform and pack equals G w G^T in float64 packed by pack_rows, within
    one float32 rounding of each element (it sums in another order), from float32 and float64
    weights alike, bit-identical for 1 and 2 threads."""
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    G = winograd.TRANSFORMS[m][1]
    u = np.einsum("ir,kcrs,js->kcij", G, w.astype(np.float64), G)    # G w G^T per (k, c)
    u = np.ascontiguousarray(u.reshape(groups, k // groups, c, -1).transpose(0, 3, 1, 2),
                             dtype=np.float32)                         # [g, e, Kg, Cg]
    want = packed_gemm.pack_rows(u.reshape(-1, u.shape[3]), u.shape[0] * u.shape[1])
    got = [winograd.pack_weights(w, groups, m, t) for t in (1, 2)]
    assert got[0].shape == want.shape
    np.testing.assert_allclose(got[0], want, rtol=2 ** -23, atol=1e-12)
    assert np.array_equal(got[0], got[1])
    assert np.array_equal(winograd.pack_weights(w.astype(np.float64), groups, m, 2), got[0])


def test_block_sizes_follow_the_cache_rule():
    # 64 -> 64 channels on 56x56: 784 tiles in 4 blocks of 196 (measured best)
    plan = winograd.TilePlan(1, (56, 56), (56, 56), ((1, 1), (1, 1)), (1, 1), 2, 64, 64, 1)
    assert plan.blocks[:, 2].tolist() == [196] * 4
    # 256 -> 256 on 14x14: one block of all 49 tiles
    plan = winograd.TilePlan(1, (14, 14), (14, 14), ((1, 1), (1, 1)), (1, 1), 2, 256, 256, 1)
    assert plan.blocks[:, 2].tolist() == [49]


def test_phase_tiles_are_exact():
    # 7 output columns at dilation 4: phases 0..2 hold 2 columns (1 tile), phase 3 holds 1
    assert shapes.phase_tiles(7, 4, 2) == [1, 1, 1, 1]
    assert shapes.phase_tiles(9, 4, 2) == [2, 1, 1, 1]
    assert shapes.phase_tiles(3, 4, 2) == [1, 1, 1, 0]
    assert shapes.phase_tiles(28, 4, 4) == [2, 2, 2, 2]


def test_reuse_across_shapes_and_out(rng):
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    layer = engine.Conv2d(w, None, 1, 2, 2, algorithm="dilated_s2b")
    for shape in [(1, 8, 9, 9), (2, 8, 30, 17), (1, 8, 9, 9)]:
        x = rng.standard_normal(shape).astype(np.float32)
        out = np.full((shape[0], 8) + shape[2:], np.nan, np.float32)
        assert layer(x, out=out) is out
        assert_close(out, conv2d_ref(x, w, None, (1, 1), ((2, 2), (2, 2)), (2, 2)),
                     "dilated_s2b")


# ---- threads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("algorithm", ["winograd_f23", "dilated_s2b", "winograd_f43",
                                       "winograd_f63"])
def test_one_and_two_threads_bit_identical(algorithm, weights, rng):
    dilation = 2 if algorithm == "dilated_s2b" else 1
    x = rng.standard_normal((2, 24, 40, 33)).astype(np.float32)
    w = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    ys = []
    for threads in (1, 2):
        layer = engine.Conv2d(w, b, 1, dilation, dilation, groups=2, activation="relu",
                              algorithm=algorithm, num_threads=threads,
                              winograd_weights=weights)
        ys.append(layer(x))
    assert engine.Conv2d(w, b, 1, dilation, dilation, 2).geometry(x.shape).macs > 8e5
    assert np.array_equal(ys[0], ys[1])


def test_with_the_threads_fixture(threads, rng):
    run_case(rng, "winograd_f23", 1, 16, 16, 30, 30)
    run_case(rng, "dilated_s2b", 1, 16, 16, 30, 30, padding=2, dilation=2)


def test_concurrent_calls_match_serial(rng):
    """Calls from several Python threads at once (each takes its own workspace)."""
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    layer = engine.Conv2d(w, None, 1, 2, 2, algorithm="dilated_s2b", num_threads=1)
    xs = [rng.standard_normal((1, 16, 20 + i, 24)).astype(np.float32) for i in range(6)]
    serial = [layer(x) for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(5):
            results[i] = layer(xs[i])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for a, b in zip(serial, results):
        assert np.array_equal(a, b)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,kwargs,message", [
    ("winograd_f23", dict(kernel=5), "3x3"),
    ("winograd_f23", dict(stride=2), "stride 1"),
    ("winograd_f23", dict(dilation=2), "dilation 1"),
    ("dilated_s2b", dict(dilation=1), "dilation > 1"),
    ("dilated_s2b", dict(kernel=5, dilation=2), "3x3"),
    ("winograd_f43", dict(stride=(1, 2)), "stride 1"),
    ("winograd_f43", dict(kernel=1), "3x3"),
])
def test_forcing_on_a_layer_it_cannot_run_raises(algorithm, kwargs, message, rng):
    k = kwargs.get("kernel", 3)
    w = rng.standard_normal((8, 8, k, k)).astype(np.float32)
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        engine.Conv2d(w, None, kwargs.get("stride", 1), 1, kwargs.get("dilation", 1),
                      algorithm=algorithm)
    with pytest.raises(ValueError, match=message):
        engine.conv2d(x, w, None, kwargs.get("stride", 1), 1, kwargs.get("dilation", 1),
                      algorithm=algorithm)


def test_bad_input_raises(rng):
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    layer = engine.Conv2d(w, None, 1, 0, 2, algorithm="dilated_s2b")
    with pytest.raises(ValueError, match="channels"):
        layer(np.zeros((1, 5, 9, 9), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        layer(np.zeros((1, 4, 4, 9), np.float32))
    with pytest.raises(ValueError, match="out"):
        layer(np.zeros((1, 4, 9, 9), np.float32), out=np.zeros((1, 8, 4, 4), np.float32))


def test_dispatcher_routes_here():
    w = np.zeros((16, 16, 3, 3), np.float32)
    # the tile depends on the cost model (engine/dispatch/winograd.py); any is Winograd
    assert engine.Conv2d(w, None, 1, 1).algorithm.startswith("winograd_f")
    assert engine.Conv2d(w, None, 1, 2, 2).algorithm == "dilated_s2b"
    assert "winograd_f43" in engine.algorithms()


# ---- torch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["winograd_f23", "dilated_s2b", "winograd_f43",
                                       "winograd_f63"])
def test_against_torch(algorithm, rng):
    torch = torch_or_skip()
    dilation = (2, 3) if algorithm == "dilated_s2b" else 1
    x = rng.standard_normal((2, 12, 23, 19)).astype(np.float32)
    w = rng.standard_normal((10, 6, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    y = engine.conv2d(x, w, b, 1, "same", dilation, 2, algorithm=algorithm)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                     torch.from_numpy(b).double(), 1, "same", dilation,
                                     2).numpy()
    assert_close(y, ref, algorithm)


@pytest.mark.parametrize("algorithm, dilation", [("winograd_f23", 1), ("winograd_f43", 1),
                                                 ("dilated_s2b", 2), ("winograd_f43", 3),
                                                 ("winograd_f63", 1), ("winograd_f63", 2)])
def test_fused_exp_activations_equal_the_separate_pass(algorithm, dilation, rng):
    """SiLU, GELU and HardSwish run as one vector pass over each block of output tiles (not a
    whole vector per output): the values of the convolution without activation followed by
    the activation's own vector pass, bit for bit, with partial strips of tiles (a 27x23
    output), at 1 and 2 threads."""
    from engine.ops.activation import apply_activation
    x = rng.standard_normal((2, 24, 27, 23)).astype(np.float32)
    w = (rng.standard_normal((40, 24, 3, 3)) * 0.2).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    plain = engine.Conv2d(w, b, padding=dilation, dilation=dilation, algorithm=algorithm)
    for act in ("silu", "gelu", "hardswish"):
        fused = engine.Conv2d(w, b, padding=dilation, dilation=dilation, algorithm=algorithm,
                              activation=act)
        want = apply_activation(plain(x), act)
        for t in (1, 2):
            out = np.empty_like(want)
            fused.run(x, out, fused.geometry(x.shape), num_threads=t)
            np.testing.assert_array_equal(out, want)


# ---- U made per call (engine/dispatch/winograd.py) ----------------------------------------------

def test_pack_taps_layout(rng):
    k, cg, groups, mr = 19, 5, 2, packed_gemm.ROW_BLOCK
    w = rng.standard_normal((k * groups, cg, 3, 3)).astype(np.float32)
    got = winograd.pack_taps(w, groups)
    nmb = -(-k // mr)
    packed = got.reshape(groups, nmb, 9, cg, mr)
    for g in range(groups):
        for kk in range(nmb * mr):
            for c in range(cg):
                want = w[g * k + kk, c].ravel() if kk < k else np.zeros(9, np.float32)
                assert np.array_equal(packed[g, kk // mr, :, c, kk % mr], want)


def test_auto_keeps_u_only_where_it_is_small_or_tiles_are_few(rng):
    from engine.dispatch import choose_winograd_weights
    from engine.dispatch.winograd import PER_CALL_MIN_BYTES, PER_CALL_MIN_TILES
    assert choose_winograd_weights(PER_CALL_MIN_BYTES - 1, 10**6)[0] == "stored"
    assert choose_winograd_weights(PER_CALL_MIN_BYTES, PER_CALL_MIN_TILES - 1)[0] == "stored"
    form, reason = choose_winograd_weights(PER_CALL_MIN_BYTES, PER_CALL_MIN_TILES)
    assert form == "per_call" and "MiB" in reason
    # a 512 -> 256 layer (U: 18 MiB) on a 28x28 map (49 tiles of F(4x4)) and a 14x14 one (16)
    w = rng.standard_normal((256, 512, 3, 3)).astype(np.float32)
    assert 4 * winograd.packed_floats(256, 512, 1, 4) >= PER_CALL_MIN_BYTES
    layer = engine.Conv2d(w, None, 1, 1, algorithm="winograd_f43", num_threads=1)
    assert layer.choice_name == "weights"
    for side, form in [(28, "per_call"), (14, "stored")]:
        x = rng.standard_normal((1, 512, side, side)).astype(np.float32)
        assert layer.kernel_choice(layer.geometry(x.shape))[0] == form
        y = layer(x)
        assert_close(y, reference(x, w, None, ((1, 1), (1, 1)), (1, 1), 1, None),
                     "winograd_f43")
    # each form made once, and each only when a call needed it
    assert sorted(layer.transforms._items) == ["winograd_taps", "winograd_tile4"]
    assert layer.transforms.made == 2
    small = engine.Conv2d(w, None, 1, 1, algorithm="winograd_f43", num_threads=1,
                          winograd_weights="per_call")
    small(rng.standard_normal((1, 512, 8, 8)).astype(np.float32))
    assert list(small.transforms._items) == ["winograd_taps"]


@pytest.mark.parametrize("algorithm, uneven", [("winograd_f23", 3), ("winograd_f43", 4),
                                               ("winograd_f63", 3)])
def test_per_call_thread_counts_and_row_chunks_bit_identical(algorithm, uneven, rng):
    """Work items split by rows of U (the 4 or 6 items of whole tile columns do not share
    evenly between `uneven` threads) give the same bits as 1 and 2 threads."""
    x = rng.standard_normal((1, 64, 40, 36)).astype(np.float32)
    w = rng.standard_normal((60, 64, 3, 3)).astype(np.float32)
    b = rng.standard_normal(60).astype(np.float32)
    layer = engine.Conv2d(w, b, 1, 1, algorithm=algorithm, winograd_weights="per_call")
    g = layer.geometry(x.shape)
    plan = layer._impl.plan(g)
    assert plan.taps_split(uneven)[0] < packed_gemm.packed_rows(60)
    assert plan.taps_split(2)[0] == packed_gemm.packed_rows(60)
    ys = []
    for threads in (1, 2, uneven):
        y = np.empty(layer.output_shape(x.shape), np.float32)
        layer.run(x, y, g, threads)
        ys.append(y)
    assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2])
    assert_close(ys[0], reference(x, w, b, ((1, 1), (1, 1)), (1, 1), 1, None), algorithm)


def test_winograd_weights_argument_is_checked(rng):
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="winograd_weights must be one of"):
        engine.Conv2d(w, None, 1, 1, algorithm="winograd_f43", winograd_weights="lazy")
    with pytest.raises(ValueError, match="winograd_weights='per_call' needs a Winograd"):
        engine.Conv2d(w, None, 1, 1, algorithm="im2col", winograd_weights="per_call")


def test_kernel_checks_the_per_call_operands(rng):
    """The kernel refuses a G of the wrong shape and weights of the wrong length before it
    runs (a bad size would read past the array)."""
    from engine._kernels import conv_winograd
    from engine.ops.workspace import workspace
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    layer = engine.Conv2d(w, None, 1, 1, algorithm="winograd_f43", winograd_weights="per_call")
    g = layer.geometry(x.shape)
    impl, p = layer._impl, layer._impl.plan(g)
    out = np.empty(layer.output_shape(x.shape), np.float32)
    mchunk, gp = p.taps_split(1)
    work = workspace.take(p.work_floats)                 # 64-byte aligned, as the kernel needs
    panels = workspace.take(conv_winograd.taps_panel_floats(1, 16, gp, 4))
    taps = impl.weights("per_call")

    def call(upack, G):
        return conv_winograd.f32_conv3x3_winograd(
            x, upack, 1, impl.bias, out, p.rows, p.blocks, p.phase_tiles, p.phase_start,
            p.phase_cols, p.colmap, 4, p.J, p.hbuf, p.max_tiles, 1, 1, 1, 1, work, panels,
            mchunk, gp, layer.act, 1, True, G)
    call(taps, impl.g32)
    assert_close(out, reference(x, w, None, ((1, 1), (1, 1)), (1, 1), 1, None), "winograd_f43")
    with pytest.raises(ValueError, match="G must have shape"):
        call(taps, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="upack must hold"):
        call(taps[:-8], impl.g32)
    with pytest.raises(ValueError, match="panels"):
        conv_winograd.f32_conv3x3_winograd(
            x, taps, 1, impl.bias, out, p.rows, p.blocks, p.phase_tiles, p.phase_start,
            p.phase_cols, p.colmap, 4, p.J, p.hbuf, p.max_tiles, 1, 1, 1, 1, work,
            panels[:16], mchunk, gp, layer.act, 1, True, impl.g32)
    workspace.give(panels)
    workspace.give(work)


def test_a_model_chooses_the_form_for_all_its_winograd_layers(rng):
    """engine.load(..., winograd_weights=) decides for every Winograd layer of the model;
    "auto" leaves it to the rule; a bad value is refused naming the argument."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    # dilation 2: Winograd F(4x4,3x3) on the phase sub-images, 64 tiles, U of 18 MiB
    w = (rng.standard_normal((256, 512, 3, 3)) * 0.02).astype(np.float32)
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[2, 2, 2, 2],
                                  dilations=[2, 2])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 512, 28, 28])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    x = rng.standard_normal((1, 512, 28, 28)).astype(np.float32)
    ys = {}
    for form in ("auto", "stored", "per_call"):
        model = engine.load(m, winograd_weights=form)
        text = model.explain()
        want = "per_call" if form == "auto" else form
        assert f"weights {want}" in text, text
        assert ("forced by the caller" in text) == (form != "auto")
        ys[form] = model.run({"x": x})["y"]
    ref = reference(x, w, None, ((2, 2), (2, 2)), (2, 2), 1, None)
    for y in ys.values():
        assert_close(y, ref, "winograd_f43")
    np.testing.assert_array_equal(ys["auto"], ys["per_call"])
    with pytest.raises(ValueError, match="winograd_weights must be one of"):
        engine.load(m, winograd_weights="never")


# ---- the tile (engine/dispatch/winograd.py) -----------------------------------------------------

@pytest.mark.parametrize("c, side", [(16, 30), (512, 14), (2048, 8)])
def test_tile_error_is_bounded(c, side):
    """Each tile's error on unit-normal data, max |y - float64 reference| / max |reference|,
    stays within the figure the dispatcher holds for it (TILE_REL_ERROR), and auto only ranks
    tiles within WINOGRAD_MAX_REL_ERROR; a tile claiming a larger error is never ranked."""
    from engine.dispatch import winograd as wd
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, c, side, side)).astype(np.float32)
    w = rng.standard_normal((32, c, 3, 3)).astype(np.float32)
    ref = conv2d_ref(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1))
    errors = {}
    for m, algorithm in wd.TILE_ALGORITHMS.items():
        y = engine.Conv2d(w, None, 1, 1, algorithm=algorithm, num_threads=1)(x)
        errors[m] = np.abs(y - ref).max() / np.abs(ref).max()
        assert errors[m] <= wd.TILE_REL_ERROR[m], (algorithm, errors[m])
    assert errors[2] < min(errors[4], errors[6])    # F(2x2)'s transforms hold only 0, +-1/2, +-1
    ranked = [m for m, _, _ in wd.rank_winograd_tiles(64, 64, 1, lambda m: 100)]
    assert sorted(ranked) == [m for m in wd.TILE_ALGORITHMS
                              if wd.TILE_REL_ERROR[m] <= wd.WINOGRAD_MAX_REL_ERROR]


def test_tile_over_the_error_bound_is_never_ranked(monkeypatch):
    from engine.dispatch import winograd as wd
    monkeypatch.setitem(wd.TILE_REL_ERROR, 6, 2 * wd.WINOGRAD_MAX_REL_ERROR)
    tiles = lambda m: (-(-224 // m)) ** 2
    assert [m for m, _, _ in wd.rank_winograd_tiles(64, 64, 1, tiles)][0] == 4
    monkeypatch.undo()
    assert [m for m, _, _ in wd.rank_winograd_tiles(64, 64, 1, tiles)][0] == 6


def test_tile_cost_follows_waste_and_weights():
    """The cost model's shape: on a 7x7 map a 6x6 tile wastes 64% of its outputs and F(2x2)
    wins; on 224x224 with few channels the products dominate and F(6x6) wins; the estimate
    grows with the tiles and with the transformed weights' size."""
    from engine.dispatch import winograd as wd
    first = lambda c, side: wd.rank_winograd_tiles(c, c, 1, lambda m: (-(-side // m)) ** 2)[0][0]
    assert first(512, 7) == 2 and first(64, 224) == 6 and first(64, 56) == 4
    assert wd.tile_cost_ms(6, 64, 64, 1, 200) > wd.tile_cost_ms(6, 64, 64, 1, 100)
    assert wd.tile_cost_ms(4, 512, 512, 1, 1) > 36 * 512 * 512 * 4 / 1e9 * wd.TILE_MODELS[16].u_ms_per_gb


def test_tile_model_of_8_float_builds(monkeypatch):
    """On 8-float builds the model splits the input and output transforms and rounds the
    tiles up to whole GEMM panels: DenseNet's 128->32 layers take F(2x2) on 28x28 (F(4x4) was
    25% slower there), ResNet's 56x56 and 28x28 layers F(4x4), few channels on 224x224 F(6x6),
    7x7 maps F(2x2); the estimate grows with the tiles and with the weights' size."""
    from engine.dispatch import winograd as wd
    from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV
    monkeypatch.setenv(ASSUME_VECTOR_FLOATS_ENV, "8")
    first = lambda c, k, side: wd.rank_winograd_tiles(c, k, 1,
                                                      lambda m: (-(-side // m)) ** 2)[0][0]
    assert first(128, 32, 28) == 2 and first(128, 32, 7) == 2 and first(512, 128, 7) == 2
    assert first(256, 256, 56) == 4 and first(512, 512, 28) == 4 and first(64, 128, 56) == 4
    assert first(64, 64, 224) == 6 and first(128, 128, 112) == 6
    assert wd.tile_cost_ms(4, 64, 64, 1, 200) > wd.tile_cost_ms(4, 64, 64, 1, 100)
    assert wd.tile_cost_ms(4, 512, 512, 1, 1) > 36 * 512 * 512 * 4 / 1e9 * wd.TILE_MODELS[8].u_ms_per_gb
