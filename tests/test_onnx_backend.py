"""ONNX's own node test cases (onnx.backend.test.case.node) for every operator the importer
supports, run through tests/onnx_backend.py.

Every case whose graph uses supported operators only is run. Expected outputs are ONNX's
(its reference implementation), compared with the case's own rtol/atol (ONNX's defaults
1e-3 / 1e-7, at least 1e-4 / 1e-6 here: float32 kernels with a different summation order),
and the dtype must match. Cases outside what the engine supports must fail cleanly with
engine.ModelError at load (REFUSED, with the reason); where ONNX Runtime and the reference
disagree, the engine follows ONNX Runtime (FOLLOWS_ONNXRUNTIME).
"""
import re
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import engine  # noqa: E402
from engine.io.onnx_import import MAX_OPSET, supported_ops  # noqa: E402

from onnx_backend import EngineBackend  # noqa: E402

REFUSED = [  # (pattern on the case name, why the engine refuses it)
    (r"FLOAT16|BFLOAT16|FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2|_e8m0|b?float16|fp16",
     "element types float16, bfloat16, float8, 4-bit and 2-bit are not supported (float16 "
     "and bfloat16 constants are widened to float32 at load; inputs and outputs are not)"),
    (r"^test_cast.*(STRING|string)|^test_equal_string", "string tensors are not supported"),
    (r"^test_not_[234]d$",
     "the case's model declares opset 1, older than the oldest the importer reads (6)"),
    (r"^test_pow_types_int", "Pow takes a float32 base only"),
    (r"^test_maxpool_2d_uint8", "pooling runs on float32 only"),
    (r"training", "training mode (BatchNormalization statistics, Dropout) is not supported"),
    (r"^test_identity_(sequence|opt)", "sequence and optional values are not tensors"),
]

FOLLOWS_ONNXRUNTIME = {
    "test_maxunpool_export_with_output_shape":
        "the reference scatters into the default size and pads to output_shape; ONNX Runtime "
        "scatters the flat indices into output_shape",
    "test_resize_downsample_scales_cubic_align_corners":
        "the reference maps align_corners coordinates with the scale; ONNX Runtime with the "
        "output size",
    "test_resize_downsample_scales_linear_align_corners":
        "the reference maps align_corners coordinates with the scale; ONNX Runtime with the "
        "output size",
}


SUPPORTED = set(supported_ops())


def _cases():
    from onnx.backend.test.case import node
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    return [c for c in cases if c.kind == "node"
            and all(n.op_type in SUPPORTED and n.domain in ("", "ai.onnx")
                    for n in c.model.graph.node)]


CASES = _cases()


def refusal(case):
    for pattern, reason in REFUSED:
        if re.search(pattern, case.name):
            return reason
    opset = max((o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if opset > MAX_OPSET:      # an onnx package newer than the engine
        return f"opset {opset} is newer than this engine reads ({MAX_OPSET})"
    return None


def _array(v):
    return onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v


def test_cases_were_collected():
    ops = {n.op_type for c in CASES for n in c.model.graph.node}
    # the node tests exist for nearly every supported operator
    assert len(CASES) > 300
    assert len(ops) >= 40, sorted(SUPPORTED - ops)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    reason = refusal(case)
    if reason is not None:
        with pytest.raises(engine.ModelError):
            rep = EngineBackend.prepare(case.model)
            for inputs, _ in case.data_sets:
                rep.run(inputs)
        pytest.xfail(f"refused with ModelError, as expected: {reason}")   # listed by -ra
    rep = EngineBackend.prepare(case.model)
    for inputs, expected in case.data_sets:
        if case.name in FOLLOWS_ONNXRUNTIME:
            ort = pytest.importorskip("onnxruntime")
            sess = ort.InferenceSession(case.model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            names = [i.name for i in case.model.graph.input]
            expected = sess.run(None, dict(zip(names, map(_array, inputs))))
        got = rep.run(inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            e = _array(e)
            assert g.dtype == e.dtype, (g.dtype, e.dtype)
            assert g.shape == e.shape, (g.shape, e.shape)
            np.testing.assert_allclose(g, e, rtol=max(case.rtol, 1e-4),
                                       atol=max(case.atol, 1e-6))


# ------------------------------------------------------------------ ONNX's model-level sets
# pytorch-converted and pytorch-operator: whole small models (torch.nn layers and functional
# operators exported by an early PyTorch, opsets 6-9), each with its inputs and expected
# outputs as protobuf files. Weights are initializers or graph inputs, as ONNX ships them.

def _model_cases():
    import glob
    import os
    import onnx.backend.test as onnx_tests
    root = os.path.join(os.path.dirname(onnx_tests.__file__), "data")
    found = []
    for kind in ("pytorch-converted", "pytorch-operator"):
        found += sorted(glob.glob(os.path.join(root, kind, "test_*")))
    return found


MODEL_CASES = _model_cases()


def _unsupported(model):
    return sorted({n.op_type for n in model.graph.node if n.op_type not in SUPPORTED})


def test_model_cases_were_collected():
    assert len(MODEL_CASES) > 100


@pytest.mark.parametrize("path", MODEL_CASES, ids=[p.rsplit("/", 1)[-1] for p in MODEL_CASES])
def test_model_case(path):
    import glob
    import os
    model = onnx.load(os.path.join(path, "model.onnx"))
    missing = _unsupported(model)
    if missing:
        with pytest.raises(engine.ModelError):
            EngineBackend.prepare(model).run([])
        pytest.skip(f"operators not supported: {', '.join(missing)}")
    rep = EngineBackend.prepare(model)
    sets = sorted(glob.glob(os.path.join(path, "test_data_set_*")))
    assert sets
    for data in sets:
        def read(pattern):
            return [onnx.numpy_helper.to_array(onnx.load_tensor(f))
                    for f in sorted(glob.glob(os.path.join(data, pattern)))]
        got = rep.run(read("input_*.pb"))
        expected = read("output_*.pb")
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
            # early PyTorch computed these in float32 too: ONNX's own tolerance for the sets
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-7)
