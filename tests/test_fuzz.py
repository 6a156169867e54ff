"""Fuzzing the two model loaders, bounded so the suite stays quick (a few seconds each) and
derandomized so CI sees the same examples every run.

Native file: real native files (small ONNX graphs loaded and saved, and the bundled
digits_net) mutated in the 8-byte header length, the JSON header's bytes, any value of the
graph JSON (huge, negative, 2**31, 2**63, NaN/inf, strings, lists, nulls, nested objects),
deleted and unknown keys, duplicated and dropped nodes, the safetensors dtype/shape/offsets,
tensors rewritten consistently with a new shape and dtype, and truncation. ONNX importer: one
operator per model, with drawn attributes (extreme ints, wrong types and list lengths),
constant inputs, missing/extra/empty inputs and outputs, input shapes and opsets; or a node of
a real graph so edited. The case makers are bench/fuzz_loaders.py's, driven here by
hypothesis, so a failure shrinks to a small mutation; that script runs the same fuzz for
hours in worker processes under a memory limit.

Every example is loaded with engine.load and, if it loads, run once on an input of its
declared shape. Allowed: success, engine.ModelError, or ValueError (a file should give
ModelError: other ValueErrors are reported as warnings naming the place). Any other exception
fails with the mutations that made the case.
"""
import collections
import importlib.util
import os
import traceback
import warnings

import pytest

import engine

pytest.importorskip("hypothesis")
pytest.importorskip("onnx")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "fuzz_loaders", os.path.join(os.path.dirname(__file__), "..", "bench", "fuzz_loaders.py"))
fz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fz)

# NaN and inf weights make NumPy warn while the fuzzed models run: expected, not a finding
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

NATIVE_EXAMPLES = 400
ONNX_EXAMPLES_PER_OP = 12     # x 112 operator specs; bench/fuzz_loaders.py runs long

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

_JSON_LEAVES = (st.integers() | st.sampled_from(fz.EXTREME_INTS + fz.JSON_ONLY_INTS)
                | st.floats() | st.text(max_size=12) | st.sampled_from(fz.STRINGS)
                | st.none() | st.booleans())
JSON_VALUES = st.recursive(_JSON_LEAVES,
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


class HypothesisDriver:
    """The decisions bench/fuzz_loaders.py's case makers ask for, drawn by hypothesis."""

    def __init__(self, data):
        self.data = data

    def choice(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))

    def randint(self, a, b):
        return self.data.draw(st.integers(a, b))

    def chance(self, p):
        # hypothesis favours small integers: scrambled, the draw is near uniform, and it still
        # shrinks towards 0 (True: make the mutation)
        return self.data.draw(st.integers(0, 999)) * 7919 % 1000 < p * 1000

    def int_value(self, json_ok=False):
        if json_ok:
            extremes, anything = fz.EXTREME_INTS + fz.JSON_ONLY_INTS, st.integers()
        else:    # an ONNX attribute holds int64
            extremes, anything = fz.EXTREME_INTS, st.integers(-2**63, 2**63 - 1)
        return self.data.draw(st.integers(-3, 9) | st.sampled_from(extremes) | anything)

    def float_value(self):
        return self.data.draw(st.sampled_from(fz.FLOATS) | st.floats())

    def string_value(self):
        return self.data.draw(st.sampled_from(fz.STRINGS) | st.text(max_size=20))

    def json_value(self, depth=0):
        return self.data.draw(JSON_VALUES)

    def bytes_value(self, n):
        return self.data.draw(st.binary(min_size=n, max_size=n))


KWARGS = fz.load_kwargs()     # max_memory=256 MB where engine.load takes it


def load_and_run(load, log, counts, value_errors):
    """'loaded' or 'refused'; fails the test on any exception but ModelError and ValueError."""
    phase = "load"
    try:
        model = load()
        phase = "run"
        feeds = fz.feeds_for(model)
        if feeds is not None:
            model.run(feeds)
        counts["loaded"] += 1
    except engine.ModelError:
        counts["refused" if phase == "load" else "loaded"] += 1
    except ValueError as e:
        counts["refused" if phase == "load" else "loaded"] += 1
        value_errors.setdefault(fz.engine_frame(e), f"{e} (during {phase}; case: {log})")
    except Exception as e:   # noqa: BLE001 (every other type is the bug this test looks for)
        pytest.fail(f"{type(e).__name__} during {phase} at {fz.engine_frame(e)}: {e}\n"
                    f"case: {log}\n{''.join(traceback.format_exception(e))[-2000:]}",
                    pytrace=False)


def report_value_errors(value_errors, what):
    for frame, message in sorted(value_errors.items()):
        warnings.warn(f"{what} raised a ValueError that is not a ModelError at {frame}: "
                      f"{message[:400]}", stacklevel=1)


@pytest.fixture(scope="module")
def native_seeds(tmp_path_factory):
    directory = tmp_path_factory.mktemp("native-seeds")
    seeds = []
    for path in fz.seed_native_files(str(directory)):
        with open(path, "rb") as f:
            seeds.append(f.read())
    return seeds


def test_the_seeds_load_and_run(native_seeds, tmp_path):
    # the fuzz starts from files the loaders accept: a seed that stopped loading would leave
    # every example refused at the first check
    for k, data in enumerate(native_seeds):
        path = tmp_path / f"seed{k}.safetensors"
        path.write_bytes(data)
        model = engine.load(path, **KWARGS)
        model.run(fz.feeds_for(model))
    for proto in fz.seed_onnx_models().values():
        model = engine.load(proto, **KWARGS)
        model.run(fz.feeds_for(model))


def test_native_file_fuzz(native_seeds, tmp_path):
    counts = collections.Counter()
    value_errors = {}
    path = tmp_path / "case.safetensors"

    @settings(FUZZ, max_examples=NATIVE_EXAMPLES)
    @given(st.data())
    def one(data):
        log = []
        path.write_bytes(fz.native_case(HypothesisDriver(data), native_seeds, log))
        load_and_run(lambda: engine.load(path, **KWARGS), log, counts, value_errors)

    one()
    report_value_errors(value_errors, "a native file")
    # a fuzz that never gets past the first check, or never gets refused, tests nothing
    assert counts["loaded"] > 0 and counts["refused"] > 0, counts


def test_onnx_attribute_fuzz():
    counts = collections.Counter()
    value_errors = {}
    seeds = list(fz.seed_onnx_models().values())

    def fuzz(make):
        @settings(FUZZ, max_examples=ONNX_EXAMPLES_PER_OP)
        @given(st.data())
        def one(data):
            log = []
            proto = make(HypothesisDriver(data), log)
            load_and_run(lambda: engine.load(proto, **KWARGS), log, counts, value_errors)
        one()

    for op in sorted(fz.OP_SPECS):      # every operator, not what sampling happens to reach
        fuzz(lambda d, log: fz.onnx_op_case(d, log, op))
    fuzz(lambda d, log: fz.onnx_edit_case(d, d.choice(seeds), log))
    report_value_errors(value_errors, "an ONNX model")
    assert counts["loaded"] > 0 and counts["refused"] > 0, counts
